//! `blockyard bake`: the pipeline file, checked end to end through the binary.

mod common;

use std::path::PathBuf;

use common::Fixture;
use serde_json::Value;

/// The path of a sample in examples/nightly, the folder the README points to.
fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/nightly");
    path.join(name).to_str().expect("utf-8 path").to_owned()
}

#[test]
fn the_example_pipeline_file_passes_check_with_its_config_file() {
    let fx = Fixture::new();
    let (config, pipelines) = (example("blockyard.toml"), example("pipeline.toml"));

    let file = fx.json(&["--config", &config, "bake", &pipelines, "--check"]);

    let names: Vec<&str> = file["pipelines"]
        .as_array()
        .expect("a list of pipelines")
        .iter()
        .map(|p| p["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["adas", "adas-builder"]);
    let adas = &file["pipelines"][0];
    assert_eq!(adas["regions"], serde_json::json!(["eu", "us"]));
    assert_eq!(adas["retention"]["keep_within"], Value::from(14 * 86_400));
    assert_eq!(file["pipelines"][1]["volume"], "qcow2");
}

#[test]
fn bake_without_check_says_running_is_not_built_and_a_missing_store_names_its_line() {
    let fx = Fixture::new();
    let config = example("blockyard.toml");
    let pipelines = example("pipeline.toml");

    let refused = fx.fails(&["--config", &config, "bake", &pipelines]);
    assert!(refused.contains("not built yet"), "{refused}");

    // Without the config file, its store names mean nothing: the first home is line 14.
    let missing = fx.fails(&["bake", &pipelines, "--check"]);
    assert!(missing.contains("pipeline.toml:14:8: "), "{missing}");
    assert!(missing.contains("no stores"), "{missing}");
}

//! `blockyard bake`: the pipeline file, checked, and the nightly job run end to end through
//! the binary: two nights, three regions one of which is down on the first try, a resumed
//! run, and runners that pull the result.

mod common;

use std::path::{Path, PathBuf};

use common::Fixture;
use serde_json::Value;

/// The path of a sample in examples/nightly, the folder the README points to.
fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/nightly")
        .join(name)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Makes stores `names` beside the fixture's (which is `home`), alike in block size, and
/// writes the config file naming all of them; `down` names stores whose every request fails.
fn stores(fx: &Fixture, names: &[&str], down: &[&str]) {
    for name in names {
        let store = fx.path(name);
        if !store.exists() {
            fx.ok(&[
                "store",
                "init",
                path_str(&store),
                "--like",
                path_str(&fx.store()),
            ]);
        }
    }
    config(fx, names, down);
}

fn config(fx: &Fixture, names: &[&str], down: &[&str]) {
    let mut text = format!("[stores.home]\nurl = \"{}\"\n\n", fx.store().display());
    for name in names {
        text.push_str(&format!(
            "[stores.{name}]\nurl = \"{}\"\n",
            fx.path(name).display()
        ));
        if down.contains(name) {
            text.push_str("options = { inject_down = \"true\" }\n");
        }
        text.push('\n');
    }
    std::fs::write(fx.path("blockyard.toml"), text).expect("config file");
}

/// Runs `blockyard --json bake ARGS` for night `night`; returns whether it succeeded and the
/// run report it printed.
fn bake(fx: &Fixture, night: u32, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["--json", "bake"];
    all.extend_from_slice(args);
    let output = fx
        .command(&all)
        .env("NIGHT", night.to_string())
        .output()
        .expect("run blockyard bake");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "bake printed no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

/// The report of the one region `store` in a pipeline's report.
fn region<'a>(pipeline: &'a Value, store: &str) -> &'a Value {
    pipeline["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["store"] == store)
        .unwrap_or_else(|| panic!("no region {store} in {pipeline}"))
}

/// The phases of a pipeline's report named `name` that ran against `store`.
fn phases<'a>(pipeline: &'a Value, name: &str, store: &str) -> Vec<&'a Value> {
    pipeline["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter(|p| p["name"] == name && p["store"] == store)
        .collect()
}

fn assert_same_bytes(a: &Path, b: &Path) {
    let (left, right) = (
        std::fs::read(a).expect("read image"),
        std::fs::read(b).expect("read image"),
    );
    assert_eq!(
        left.len(),
        right.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    assert!(left == right, "{} and {} differ", a.display(), b.display());
}

/// The command of the CI pipeline: the example's update script, and then a copy of the
/// volume it produced aside, to compare what runners pull against.
const UPDATE: &str = concat!(
    r#"command = ["sh", "-c", "echo ran >> runs.txt && sh update.sh \"$BLOCKYARD_VOLUME\""#,
    r#" && cp --sparse=always \"$BLOCKYARD_VOLUME\" produced-$NIGHT.img"]"#
);

#[test]
fn the_example_pipeline_file_passes_check_with_its_config_file() {
    let fx = Fixture::new();
    let (config, pipelines) = (example("blockyard.toml"), example("pipeline.toml"));

    let file = fx.json(&[
        "--config",
        path_str(&config),
        "bake",
        path_str(&pipelines),
        "--check",
    ]);

    let names: Vec<&str> = file["pipelines"]
        .as_array()
        .expect("a list of pipelines")
        .iter()
        .map(|p| p["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["ci", "ci-tools"]);
    let ci = &file["pipelines"][0];
    assert_eq!(ci["regions"], serde_json::json!(["eu", "us", "ap"]));
    assert_eq!(ci["retention"]["keep_within"], Value::from(14 * 86_400));
    assert_eq!(file["pipelines"][1]["volume"], "qcow2");

    // Without the config file, its store names mean nothing: the first home is line 15.
    let missing = fx.fails(&["bake", path_str(&pipelines), "--check"]);
    assert!(missing.contains("pipeline.toml:15:8: "), "{missing}");
    assert!(missing.contains("no stores"), "{missing}");
}

#[test]
fn two_nights_reach_three_regions_one_after_a_resume_and_runners_pull_only_what_changed() {
    let fx = Fixture::new();
    fx.init();
    stores(&fx, &["eu", "us", "ap"], &["ap"]);
    fx.ext4_image("base.img", 64, 5);
    std::fs::copy(example("update.sh"), fx.path("update.sh")).expect("update script");
    let pipeline = format!(
        "[[pipeline]]\nname = \"ci\"\nfamily = \"ci\"\nbase = \"ci@latest\"\n\
         first_import = {{ from = \"base.img\", format = \"raw\" }}\n{UPDATE}\n\
         home = \"home\"\nregions = [\"eu\", \"us\", \"ap\"]\n\n\
         [pipeline.retention]\nkeep_last = 2\n"
    );
    std::fs::write(fx.path("pipeline.toml"), pipeline).expect("pipeline file");

    // Night 1, with region ap down: eu and us get the image, nobody sees it as latest.
    let (ok, first) = bake(&fx, 1, &["pipeline.toml"]);
    assert!(!ok, "a run with a region down must fail: {first}");
    let ci = &first["pipelines"][0];
    assert_eq!(ci["status"], "failed", "{ci}");
    assert_eq!(region(ci, "eu")["status"], "succeeded", "{ci}");
    assert_eq!(region(ci, "us")["status"], "succeeded", "{ci}");
    assert_eq!(region(ci, "ap")["status"], "failed", "{ci}");
    assert_eq!(ci["promoted"], false, "{ci}");
    assert!(
        ci["image"].is_string(),
        "the image is registered at home: {ci}"
    );
    let run = first["run"].as_str().expect("a run id");
    let error = ci["error"].as_str().expect("an error");
    assert!(
        error.contains("ap") && error.contains("--resume"),
        "{error}"
    );
    for store in ["home", "eu", "us"] {
        let refused = fx.fails(&["pull", "ci@latest", "early.img", "--from", store]);
        assert!(refused.contains("ci"), "{store}: {refused}");
    }

    // The region is back: the resumed run copies to it alone, then promotes everywhere.
    config(&fx, &["eu", "us", "ap"], &[]);
    let (ok, resumed) = bake(&fx, 1, &["pipeline.toml", "--resume", run]);
    assert!(ok, "the resumed run must succeed: {resumed}");
    assert_eq!(resumed["run"], run);
    let ci = &resumed["pipelines"][0];
    assert_eq!(ci["status"], "succeeded", "{ci}");
    assert_eq!(ci["promoted"], true, "{ci}");
    for store in ["eu", "us", "ap"] {
        let r = region(ci, store);
        assert_eq!(r["status"], "succeeded", "{store}: {r}");
        assert_eq!(r["promoted"], true, "{store}: {r}");
        assert!(r["image"].is_string(), "{store}: {r}");
    }
    assert_eq!(
        phases(ci, "copy", "eu").len(),
        1,
        "eu was copied once: {ci}"
    );
    assert_eq!(
        phases(ci, "copy", "ap").len(),
        2,
        "ap was tried twice: {ci}"
    );
    assert_eq!(phases(ci, "update", "home").len(), 1, "{ci}");
    let runs = std::fs::read_to_string(fx.path("runs.txt")).expect("runs.txt");
    assert_eq!(runs.lines().count(), 1, "the update command ran once");

    // A runner pulls night 1 from the region that came late.
    fx.ok(&["pull", "ci@latest", "runner.img", "--from", "ap"]);
    assert_same_bytes(&fx.path("runner.img"), &fx.path("produced-1.img"));
    std::fs::copy(fx.path("runner.img"), fx.path("night1.img")).expect("copy");

    // Night 2: every region up, only the changed blocks move.
    let (ok, second) = bake(&fx, 2, &["pipeline.toml"]);
    assert!(ok, "night 2 must succeed: {second}");
    let (ci1, ci2) = (&resumed["pipelines"][0], &second["pipelines"][0]);
    let snapshot = &ci2["snapshot"];
    let size = snapshot["size"].as_u64().expect("size");
    let changed = snapshot["bytes_changed"].as_u64().expect("bytes changed");
    assert!(changed > 0 && changed < size / 4, "{snapshot}");
    assert_eq!(ci2["volume"]["made_by"], "moved", "{ci2}");
    assert_eq!(ci2["volume"]["bytes_fetched"], 0, "{ci2}");
    for store in ["eu", "us", "ap"] {
        let moved1 = region(ci1, store)["bytes_moved"].as_u64().expect("bytes");
        let moved2 = region(ci2, store)["bytes_moved"].as_u64().expect("bytes");
        assert!(
            moved2 > 0 && moved2 < moved1,
            "{store}: {moved2} after {moved1}"
        );
        // What moves is what is new at home, no more.
        let copied = region(ci2, store)["blocks_copied"]
            .as_u64()
            .expect("blocks");
        assert!(
            copied <= snapshot["blocks_new"].as_u64().expect("blocks"),
            "{ci2}"
        );
        assert!(region(ci2, store)["blocks_present"].as_u64() > Some(0));
    }
    assert!(ci2["dedup"]["blocks_avoided"].as_u64() > Some(0), "{ci2}");
    assert!(ci2["cost"]["total"].as_f64() > Some(0.0), "{ci2}");
    assert_ne!(ci2["image"], ci1["image"]);

    // Runners pull night 2: one with night 1 as a seed, one over its night 1 image.
    let pulled = fx.json(&[
        "pull",
        "ci@latest",
        "seeded.img",
        "--from",
        "us",
        "--seed",
        "night1.img",
    ]);
    assert_same_bytes(&fx.path("seeded.img"), &fx.path("produced-2.img"));
    let fetched = pulled["bytes_fetched"].as_u64().expect("bytes fetched");
    let moved = region(ci2, "us")["bytes_moved"]
        .as_u64()
        .expect("bytes moved");
    assert!(
        fetched <= moved,
        "fetched {fetched}, but only {moved} changed"
    );
    fx.ok(&["pull", "ci@latest", "runner.img", "--from", "eu"]);
    assert_same_bytes(&fx.path("runner.img"), &fx.path("produced-2.img"));

    // The run reports are where the report said.
    for report in [&resumed, &second] {
        let run = report["run"].as_str().expect("run");
        let saved = fx.path(&format!(".bake/runs/{run}.json"));
        let saved: Value =
            serde_json::from_slice(&std::fs::read(&saved).expect("saved report")).expect("json");
        assert_eq!(&saved, report);
    }
}

#[test]
fn a_failed_update_registers_nothing_reports_its_status_and_output_and_is_resumed() {
    let fx = Fixture::new();
    fx.init();
    stores(&fx, &["eu"], &[]);
    fx.ext4_image("base.img", 32, 9);
    let pipeline = "[[pipeline]]\nname = \"ci\"\nfamily = \"ci\"\nbase = \"ci@latest\"\n\
         first_import = { from = \"base.img\" }\n\
         command = [\"sh\", \"-c\", \"echo installing; \
         printf half-written | dd of={volume} bs=1 seek=512 conv=notrunc; \
         echo disk full >&2; exit 3\"]\n\
         home = \"home\"\nregions = [\"eu\"]\n";
    std::fs::write(fx.path("pipeline.toml"), pipeline).expect("pipeline file");

    let (ok, report) = bake(&fx, 1, &["pipeline.toml"]);

    assert!(!ok);
    let ci = &report["pipelines"][0];
    assert_eq!(ci["status"], "failed", "{ci}");
    assert_eq!(ci["update"]["exit_code"], 3, "{ci}");
    let tail = ci["update"]["tail"].as_str().expect("tail");
    assert!(
        tail.contains("installing") && tail.contains("disk full"),
        "{tail}"
    );
    let error = ci["error"].as_str().expect("error");
    assert!(
        error.contains("exit status 3") && error.contains("disk full"),
        "{error}"
    );
    assert!(ci["snapshot"].is_null() && ci["image"].is_null(), "{ci}");
    let log = fx.dir.path().join(ci["log"].as_str().expect("log path"));
    let log = std::fs::read_to_string(log).expect("log");
    assert!(log.contains("disk full"), "{log}");
    for store in [fx.store(), fx.path("eu")] {
        let listed = fx.ok_at(&store, &["--json", "image", "list"]);
        let listed: Value = serde_json::from_str(&listed).expect("json");
        let images = listed["images"].as_array().expect("images");
        assert!(images.is_empty(), "{} holds {listed}", store.display());
    }
    fx.fails(&["pull", "ci@latest", "x.img"]);

    // Fixed and resumed, without the file the base came from: the volume is pulled again,
    // with the half-written one as a seed, so only the block it spoilt is fetched.
    std::fs::remove_file(fx.path("base.img")).expect("remove base.img");
    let fixed = pipeline.replace(
        &pipeline[pipeline.find("command").expect("command")..pipeline.find("home").expect("home")],
        "command = [\"true\"]\n",
    );
    std::fs::write(fx.path("pipeline.toml"), fixed).expect("pipeline file");
    let run = report["run"].as_str().expect("run");
    let (ok, resumed) = bake(&fx, 1, &["pipeline.toml", "--resume", run]);
    assert!(ok, "{resumed}");
    let ci = &resumed["pipelines"][0];
    assert_eq!(ci["volume"]["made_by"], "pull", "{ci}");
    let fetched = ci["volume"]["bytes_fetched"]
        .as_u64()
        .expect("bytes fetched");
    assert!(
        fetched > 0 && fetched <= 64 << 10,
        "fetched {fetched}: {ci}"
    );
    assert!(ci["image"].is_string(), "{ci}");
    assert_eq!(phases(ci, "update", "home").len(), 2, "{ci}");
}

#[test]
fn an_overlay_pipeline_reads_only_what_its_command_wrote() {
    let fx = Fixture::new();
    fx.init();
    stores(&fx, &["eu"], &[]);
    fx.ext4_image("base.img", 32, 11);
    let pipeline = "[[pipeline]]\nname = \"ci\"\nfamily = \"ci\"\nbase = \"ci@latest\"\n\
         first_import = { from = \"base.img\", format = \"raw\" }\n\
         command = [\"true\"]\nhome = \"home\"\nregions = [\"eu\"]\n\n\
         [[pipeline]]\nname = \"tools\"\nfamily = \"tools\"\nbase = \"ci@latest\"\n\
         volume = \"qcow2\"\n\
         command = [\"sh\", \"-c\", \"qemu-io -f qcow2 -c 'write -P 7 8M 256k' {volume} && \
         qemu-img convert -O raw {volume} tools.img\"]\n\
         home = \"home\"\nregions = [\"eu\"]\n";
    std::fs::write(fx.path("pipeline.toml"), pipeline).expect("pipeline file");

    let (ok, report) = bake(&fx, 1, &["pipeline.toml"]);

    assert!(ok, "{report}");
    let tools = &report["pipelines"][1];
    assert_eq!(tools["volume"]["kind"], "qcow2", "{tools}");
    assert_eq!(tools["volume"]["bytes_fetched"], 0, "{tools}");
    let snapshot = &tools["snapshot"];
    // 256 KiB in 64 KiB blocks: four blocks changed, and only they were read.
    assert_eq!(snapshot["blocks_changed"], 4, "{snapshot}");
    assert!(
        snapshot["bytes_read"].as_u64() <= Some(256 << 10),
        "{snapshot}"
    );
    fx.ok(&["pull", "tools@latest", "pulled.img", "--from", "eu"]);
    assert_same_bytes(&fx.path("pulled.img"), &fx.path("tools.img"));
}

#[test]
fn a_second_bake_in_the_same_work_folder_is_refused_while_the_first_runs() {
    let fx = Fixture::new();
    fx.init();
    stores(&fx, &["eu"], &[]);
    fx.ext4_image("base.img", 16, 13);
    let pipeline = "[[pipeline]]\nname = \"ci\"\nfamily = \"ci\"\nbase = \"ci@latest\"\n\
         first_import = { from = \"base.img\" }\n\
         command = [\"sh\", \"-c\", \"touch started; while [ ! -e go ]; do sleep 0.1; done\"]\n\
         home = \"home\"\nregions = [\"eu\"]\n";
    std::fs::write(fx.path("pipeline.toml"), pipeline).expect("pipeline file");
    let mut first = fx
        .command(&["--quiet", "bake", "pipeline.toml"])
        .spawn()
        .expect("start the first bake");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fx.path("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first bake never ran its command"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let refused = fx.fails(&["bake", "pipeline.toml"]);

    assert!(refused.contains("another bake"), "{refused}");
    assert!(refused.contains("--work"), "{refused}");
    std::fs::write(fx.path("go"), "").expect("let the first bake finish");
    assert!(first.wait().expect("wait").success());
    // Once it is done, the folder is free again.
    let (ok, report) = bake(&fx, 2, &["pipeline.toml"]);
    assert!(ok, "{report}");
}

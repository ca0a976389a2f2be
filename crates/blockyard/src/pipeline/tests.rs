//! The pipeline file's parsing and checks, one mistake at a known line each.

use super::*;
use crate::settings::StoreEntry;

fn config(names: &[&str]) -> ConfigFile {
    let mut config = ConfigFile::default();
    for name in names {
        let entry = StoreEntry {
            url: format!("/srv/{name}"),
            ..StoreEntry::default()
        };
        config.stores.insert((*name).to_owned(), entry);
    }
    config
}

fn parse_text(text: &str) -> Result<PipelineFile, PipelineError> {
    parse(
        Path::new("nightly.toml"),
        text,
        &config(&["home", "eu", "us"]),
    )
}

const TWO: &str = r#"
[[pipeline]]
name = "adas"
family = "adas"
base = "adas@latest"
first_import = { from = "images/base.qcow2", format = "qcow2" }
command = ["ansible-playbook", "-i", "{volume},", "update.yml"]
home = "home"
regions = ["eu", "us"]

[pipeline.retention]
keep_last = 3
keep_within = "14d"

[[pipeline]]
name = "builder"
family = "builder"
base = "adas@latest"
command = ["sh", "-c", "apt-get upgrade -y"]
volume = "qcow2"
home = "eu"
regions = ["us"]
prices = { per_gb_moved = 0.09 }
"#;

/// The text with one line replaced, to make a mistake at a known line.
fn with_line(line: usize, replacement: &str) -> String {
    let mut lines: Vec<&str> = TWO.lines().collect();
    lines[line - 1] = replacement;
    lines.join("\n")
}

#[test]
fn a_file_with_two_pipelines_parses_with_defaults_filled_in() {
    let file = parse_text(TWO).expect("valid");

    assert_eq!(file.pipelines.len(), 2);
    let adas = &file.pipelines[0];
    assert_eq!(adas.base.family, "adas");
    let import = adas.base.first_import.as_ref().expect("first import");
    assert_eq!(import.from, "images/base.qcow2");
    assert_eq!(import.format.as_deref(), Some("qcow2"));
    assert_eq!(adas.command[2], "{volume},");
    assert_eq!(adas.volume, VolumeKind::Raw);
    assert_eq!(adas.regions, ["eu", "us"]);
    assert_eq!(adas.retention.keep_last, 3);
    assert_eq!(
        adas.retention.keep_within,
        Some(Duration::from_secs(14 * 86_400))
    );
    assert_eq!(adas.prices.per_gb_stored, DEFAULT_PER_GB_STORED);

    let builder = &file.pipelines[1];
    assert!(builder.base.first_import.is_none());
    assert_eq!(builder.volume, VolumeKind::Qcow2);
    assert_eq!(builder.retention.keep_last, DEFAULT_KEEP_LAST);
    assert_eq!(builder.prices.per_gb_moved, 0.09);
    assert_eq!(builder.prices.per_1000_requests, DEFAULT_PER_1000_REQUESTS);
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = with_line(9, r#"regoins = ["eu"]"#);

    let error = parse_text(&text).expect_err("unknown key");

    assert_eq!((error.line, error.column), (9, 1), "{error}");
    assert!(
        error
            .message
            .starts_with("in pipeline \"adas\": unknown key \"regoins\""),
        "{error}"
    );
    assert!(error.message.contains("; known keys: \"name\""), "{error}");
    assert!(error.message.contains("\"regions\""), "{error}");
    assert!(
        error.to_string().starts_with("nightly.toml:9:1: "),
        "{error}"
    );
}

#[test]
fn a_store_the_config_file_lacks_is_named_with_its_line() {
    let text = with_line(9, r#"regions = ["eu", "frankfurt"]"#);

    let error = parse_text(&text).expect_err("missing store");

    assert_eq!((error.line, error.column), (9, 18), "{error}");
    assert!(error.message.contains("\"frankfurt\""), "{error}");
    assert!(
        error
            .message
            .ends_with("the config file names eu, home, us"),
        "{error}"
    );
}

#[test]
fn a_region_listed_twice_is_refused() {
    let text = with_line(9, r#"regions = ["eu", "us", "eu"]"#);

    let error = parse_text(&text).expect_err("duplicate region");

    assert_eq!(error.line, 9, "{error}");
    assert!(error.message.contains("listed twice"), "{error}");
}

#[test]
fn the_home_store_cannot_be_a_region() {
    let text = with_line(9, r#"regions = ["home"]"#);

    let error = parse_text(&text).expect_err("home among regions");

    assert!(error.message.contains("is the home store"), "{error}");
}

#[test]
fn a_bad_duration_is_named_with_its_line() {
    let text = with_line(13, r#"keep_within = "two weeks""#);

    let error = parse_text(&text).expect_err("bad duration");

    assert_eq!((error.line, error.column), (13, 15), "{error}");
    assert!(error.message.contains("keep_within"), "{error}");
}

#[test]
fn pipeline_names_must_differ() {
    let text = with_line(16, r#"name = "adas""#);

    let error = parse_text(&text).expect_err("duplicate name");

    assert_eq!(error.line, 16, "{error}");
}

#[test]
fn base_must_be_a_family_latest() {
    let text = with_line(5, r#"base = "adas@3""#);

    let error = parse_text(&text).expect_err("pinned base");

    assert_eq!(error.line, 5, "{error}");
    assert!(error.message.contains("FAMILY@latest"), "{error}");
}

#[test]
fn empty_commands_regions_and_keep_last_zero_are_refused() {
    for (line, replacement) in [
        (7, "command = []"),
        (9, "regions = []"),
        (12, "keep_last = 0"),
    ] {
        let error = parse_text(&with_line(line, replacement)).expect_err(replacement);
        assert_eq!(error.line, line, "{replacement}: {error}");
    }
}

#[test]
fn an_unknown_key_in_the_second_pipeline_names_that_pipeline() {
    let text = with_line(20, r#"volumes = "qcow2""#);

    let error = parse_text(&text).expect_err("unknown key");

    assert_eq!(error.line, 20, "{error}");
    assert!(
        error.message.starts_with("in pipeline \"builder\": "),
        "{error}"
    );
}

#[test]
fn an_unknown_image_format_is_refused_and_a_known_one_made_canonical() {
    let refused = with_line(
        6,
        r#"first_import = { from = "base.img", format = "qcow3" }"#,
    );
    let error = parse_text(&refused).expect_err("unknown format");
    assert_eq!((error.line, error.column), (6, 46), "{error}");

    let accepted = with_line(6, r#"first_import = { from = "base.img", format = "VPC" }"#);
    let file = parse_text(&accepted).expect("vpc is VHD");
    let import = file.pipelines[0]
        .base
        .first_import
        .as_ref()
        .expect("an import");
    assert_eq!(import.format.as_deref(), Some("vhd"));
}

#[test]
fn a_value_of_the_wrong_type_is_named_with_its_line_and_pipeline() {
    let text = with_line(12, r#"keep_last = "3""#);

    let error = parse_text(&text).expect_err("a string for a number");

    assert_eq!((error.line, error.column), (12, 13), "{error}");
    assert!(
        error
            .message
            .starts_with("in pipeline \"adas\": invalid type"),
        "{error}"
    );
    assert!(error.message.contains("expected usize"), "{error}");
}

#[test]
fn a_negative_price_is_refused() {
    let text = with_line(23, "prices = { per_gb_moved = -1.0 }");

    let error = parse_text(&text).expect_err("negative price");

    assert!(error.message.contains("per_gb_moved"), "{error}");
}

#[test]
fn line_and_column_count_characters_not_bytes() {
    assert_eq!(line_and_column("ab\ncé\nx", 0), (1, 1));
    assert_eq!(line_and_column("ab\ncé\nx", 3), (2, 1));
    assert_eq!(line_and_column("ab\ncé\nx", 7), (3, 1));
    assert_eq!(line_and_column("ab\ncé\nx", 6), (2, 3));
}

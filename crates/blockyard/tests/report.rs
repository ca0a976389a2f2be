//! `blockyard report`: a bake run's report read back, printed, and drawn as an HTML page that
//! a headless Chromium lays out and photographs.
//!
//! The report is tests/fixtures/run-report.json, written by hand: one run of two pipelines
//! with three regions each, the second of which failed to copy to ap-south.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Fixture;

/// The longest a headless Chromium may take to load and lay out the page.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);
/// The screenshot's size in CSS pixels, as `--window-size` takes it.
const SHOT_WIDTH: u32 = 1200;
const SHOT_HEIGHT: u32 = 1600;
/// A blank 1200×1600 PNG compresses to a few kilobytes; the page's text and charts take
/// several times this.
const SHOT_MIN_BYTES: u64 = 40_000;

fn fixture_report() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-report.json");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn report_prints_the_run_as_text_or_as_the_json_it_read() {
    let fx = Fixture::new();
    let report = fixture_report();

    let text = fx.ok(&["report", &report]);
    let json = fx.json(&["report", &report]);

    assert!(
        text.contains("run 20261204T193012Z-3f9a FAILED in 2613.00 s"),
        "{text}"
    );
    assert!(text.contains("adas-builder (FAILED)"), "{text}");
    assert!(
        text.contains("region    ap-south: failed (attempt 1)"),
        "{text}"
    );
    assert!(text.contains("--resume 20261204T193012Z-3f9a"), "{text}");
    assert_eq!(json["run"], "20261204T193012Z-3f9a");
    assert_eq!(json["pipelines"][1]["phases"][7]["status"], "failed");
    assert_eq!(json["pipelines"][0]["dedup"]["blocks_avoided"], 69_768);
}

#[test]
fn report_names_a_missing_file_and_refuses_a_file_that_is_no_run_report() {
    let fx = Fixture::new();
    std::fs::write(fx.path("pipeline.toml"), "[[pipeline]]\nname = \"adas\"\n").expect("write");
    std::fs::write(fx.path("other.json"), "{\"kept\": 7}").expect("write");

    let missing = fx.fails(&["report", "runs/nothing.json"]);
    let toml = fx.fails(&["report", "pipeline.toml"]);
    let other = fx.fails(&["report", "other.json", "--html", "out.html"]);

    assert!(
        missing.contains("there is no run report runs/nothing.json"),
        "{missing}"
    );
    assert!(missing.contains("runs/RUN.json"), "{missing}");
    assert!(
        toml.contains("pipeline.toml is no bake run report"),
        "{toml}"
    );
    assert!(
        other.contains("other.json is no bake run report"),
        "{other}"
    );
    assert!(other.contains("missing field"), "{other}");
    assert!(
        !fx.path("out.html").exists(),
        "no page for a file that is no report"
    );
}

#[test]
fn the_html_page_lays_out_in_headless_chromium() {
    let fx = Fixture::new();
    let page = fx.path("run.html");

    let printed = fx.ok(&["report", &fixture_report(), "--html", "run.html"]);
    let dom = chromium(&fx, &page, &["--dump-dom"]);
    let shot = fx.path("shot.png");
    let window = format!("--window-size={SHOT_WIDTH},{SHOT_HEIGHT}");
    let screenshot = format!("--screenshot={}", shot.display());
    chromium(&fx, &page, &[&screenshot, &window]);

    assert_eq!(printed.trim(), "run.html");
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "the page's layout check did not pass: {}",
        body_tag(&dom)
    );
    assert_eq!(dom.matches("<svg class=\"chart timeline\"").count(), 2);
    assert_eq!(dom.matches("<svg class=\"chart bytes\"").count(), 2);
    // 16 + 8 phases on the timelines, home and three regions on each bytes chart.
    assert_eq!(dom.matches("class=\"bar\"").count(), 24 + 8);
    assert_eq!(
        dom.matches("class=\"mark\"").count(),
        1,
        "the failed copy's mark"
    );
    for text in [
        "20261204T193012Z-3f9a",
        "adas-builder",
        "eu-west",
        "us-east",
        "ap-south",
        "img-0193a4f7c8d9eafb0c1d2e3f4a5b6c7d",
        "139,350",
        "1.5 GiB",
        "$0.29",
        "connection reset by peer",
    ] {
        assert!(dom.contains(text), "the page lacks {text:?}");
    }
    // The update's output reached the page as text, not as markup.
    assert!(dom.contains("warning: &lt;stdin&gt;: line 3"));
    assert!(!dom.contains("<stdin>"));

    assert_screenshot(&shot);
}

/// Runs headless Chromium on `page` with `extra` arguments and returns its standard output.
/// A missing Chromium fails the test: the page's layout is part of what it checks.
fn chromium(fx: &Fixture, page: &Path, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("tempdir");
    let stdout = fx.path("chromium.out");
    let stderr = fx.path("chromium.err");
    let url = format!(
        "file://{}",
        page.canonicalize().expect("the page").display()
    );
    let spawned = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url)
        .current_dir(fx.dir.path())
        .env("HOME", profile.path())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("chromium.out"))
        .stderr(File::create(&stderr).expect("chromium.err"))
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "chromium is not installed, and this test renders the report page in it: install \
             it with `apt-get install chromium` (scripts/test.sh and .ci/run do)"
        ),
        Err(e) => panic!("cannot start chromium: {e}"),
    };

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took over {CHROMIUM_TIMEOUT:?} on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let errors = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        status.success(),
        "chromium {extra:?} failed ({status}): {errors}"
    );
    std::fs::read_to_string(&stdout).expect("chromium's output")
}

/// The `<body>` tag of a dumped page, which carries the layout check's verdict.
fn body_tag(dom: &str) -> &str {
    let Some(start) = dom.find("<body") else {
        return "no <body> in the dump";
    };
    let end = dom[start..].find('>').map_or(dom.len(), |e| start + e + 1);
    &dom[start..end]
}

/// The screenshot is a PNG of the window's size with more in it than a blank page.
fn assert_screenshot(shot: &Path) {
    let bytes = std::fs::read(shot).expect("chromium wrote the screenshot");
    // PNG signature, then the IHDR chunk: length (4), type (4), width (4), height (4).
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let field = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (width, height) = (field(16), field(20));
    assert_eq!((width, height), (SHOT_WIDTH, SHOT_HEIGHT));
    let size = bytes.len() as u64;
    assert!(
        size > SHOT_MIN_BYTES,
        "a {size}-byte screenshot is too small to hold the page"
    );
}

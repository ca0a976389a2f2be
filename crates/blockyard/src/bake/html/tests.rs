//! The page drawn from reports made to test it: hostile names, an empty run, phases that
//! took no time, and a run whose numbers must all reach the page.

use std::path::PathBuf;

use blockyard_store::RequestTotals;
use chrono::{TimeZone, Utc};

use super::*;
use crate::bake::report::{
    BaseUsed, Cost, Dedup, Phase, RegionRun, SnapshotMade, UpdateOutcome, VolumeUsed,
};

const HOSTILE: &str = "<script>alert(1)</script>";

fn phase(name: &str, store: &str, start: f64, end: f64, status: Status) -> Phase {
    Phase {
        name: name.to_owned(),
        store: store.to_owned(),
        start,
        end,
        status,
    }
}

fn region(store: &str, status: Status, bytes_moved: u64) -> RegionRun {
    RegionRun {
        store: store.to_owned(),
        status,
        error: (status == Status::Failed).then(|| "connection reset".to_owned()),
        attempts: 1,
        image: (status == Status::Succeeded).then(|| {
            "img-0193a1b2c3d4e5f60718293a4b5c6d7e"
                .parse()
                .expect("image id")
        }),
        mode: Some("verbatim".to_owned()),
        blocks_copied: bytes_moved / 524_288,
        blocks_present: 3_000,
        bytes_moved,
        requests: RequestTotals {
            total: 1_234,
            ..RequestTotals::default()
        },
        promoted: status == Status::Succeeded,
    }
}

/// A pipeline that got as far as copying to two regions, one of which failed.
fn pipeline(name: &str) -> PipelineRun {
    PipelineRun {
        name: name.to_owned(),
        family: "adas".to_owned(),
        status: Status::Failed,
        error: Some("the image reached 1 of 2 regions".to_owned()),
        home: "home".to_owned(),
        base: Some(BaseUsed {
            image: None,
            snapshot: "snap-0193a1b2c3d4e5f60718293a4b5c6d7e".parse().expect("id"),
            imported_from: Some("images/base.qcow2".to_owned()),
        }),
        volume: Some(VolumeUsed {
            path: PathBuf::from(".bake/volumes/adas/volume.raw"),
            kind: "raw".to_owned(),
            made_by: "reflink".to_owned(),
            bytes_fetched: 0,
        }),
        log: PathBuf::from(".bake/runs/r/adas.log"),
        update: Some(UpdateOutcome {
            exit_code: Some(0),
            signal: None,
            tail: "ok\n".to_owned(),
        }),
        snapshot: Some(SnapshotMade {
            id: "snap-0193a1b2c3d4e5f60718293a4b5c6d7f".parse().expect("id"),
            size: 8 << 30,
            block_size: 524_288,
            blocks_changed: 2_048,
            bytes_changed: 1 << 30,
            bytes_read: 8 << 30,
            blocks_new: 1_900,
            blocks_reused: 14_484,
            bytes_stored: 612_368_384,
            requests: 2_100,
        }),
        image: Some(
            "img-0193a1b2c3d4e5f60718293a4b5c6d7e"
                .parse()
                .expect("image id"),
        ),
        regions: vec![
            region("eu-west", Status::Succeeded, 598_736_896),
            region("us-east", Status::Failed, 104_857_600),
        ],
        promoted: false,
        retention: Vec::new(),
        phases: vec![
            phase("base", "home", 0.0, 0.4, Status::Succeeded),
            phase("volume", "home", 0.4, 2.1, Status::Succeeded),
            phase("update", "home", 2.1, 301.7, Status::Succeeded),
            phase("snapshot", "home", 301.7, 388.2, Status::Succeeded),
            phase("register", "home", 388.2, 388.2, Status::Succeeded),
            phase("copy", "eu-west", 388.3, 512.9, Status::Succeeded),
            phase("copy", "us-east", 388.3, 430.0, Status::Failed),
        ],
        dedup: Dedup {
            blocks_reused_at_home: 14_484,
            blocks_present_in_regions: 6_000,
            blocks_avoided: 20_484,
        },
        cost: Cost {
            bytes_stored: 1_315_962_880,
            bytes_moved: 703_594_496,
            requests: 4_568,
            storage_per_month: 0.0303,
            transfer: 0.0141,
            request_charges: 0.0228,
            total: 0.0672,
        },
    }
}

fn report(pipelines: Vec<PipelineRun>) -> RunReport {
    let started = Utc
        .with_ymd_and_hms(2026, 12, 4, 19, 30, 12)
        .single()
        .expect("a time");
    RunReport {
        version: 1,
        run: "20261204T193012Z-3f9a".to_owned(),
        pipeline_file: PathBuf::from("nightly/pipeline.toml"),
        started,
        finished: Some(started + chrono::Duration::milliseconds(512_900)),
        seconds: 512.9,
        resumed: Vec::new(),
        status: Status::Failed,
        pipelines,
    }
}

/// Every number the charts place things with, parsed: none may be NaN, infinite or
/// negative.
fn placements(page: &str) -> Vec<f64> {
    let mut found = Vec::new();
    for name in ["x", "y", "x1", "x2", "y1", "y2", "width", "height"] {
        let opening = format!(" {name}=\"");
        for (at, _) in page.match_indices(&opening) {
            let rest = &page[at + opening.len()..];
            let value = &rest[..rest.find('"').expect("a closing quote")];
            found.push(value.parse::<f64>().unwrap_or(f64::NAN));
        }
    }
    found
}

fn assert_placed_sanely(page: &str) {
    let placements = placements(page);
    assert!(
        placements.iter().all(|v| v.is_finite() && *v >= 0.0),
        "{placements:?}"
    );
    assert!(!page.contains("NaN") && !page.contains("inf\""), "{page}");
}

#[test]
fn a_hostile_pipeline_name_is_escaped_wherever_it_shows() {
    let mut hostile = pipeline(HOSTILE);
    hostile.home = HOSTILE.to_owned();
    hostile.error = Some(format!("failed: {HOSTILE}"));
    hostile.regions[1].store = HOSTILE.to_owned();
    hostile.phases[6].store = HOSTILE.to_owned();
    hostile.update.as_mut().expect("an update").tail = format!("{HOSTILE}\n\"quoted\"");

    let page = render(&report(vec![hostile]));

    assert_eq!(
        page.matches("<script>").count(),
        1,
        "only the page's own script"
    );
    assert!(!page.contains("alert(1)</script>"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&quot;quoted&quot;"));
    assert_placed_sanely(&page);
}

#[test]
fn an_empty_report_is_a_page_without_charts() {
    let mut empty = report(Vec::new());
    empty.seconds = 0.0;
    empty.finished = None;
    empty.status = Status::Pending;

    let page = render(&empty);

    assert!(page.contains("data-charts=\"0\""));
    assert!(page.contains("The run has no pipelines."));
    assert!(!page.contains("<svg"));
    assert!(page.contains("$0.00"));
    assert!(page.ends_with("</html>\n"));
    assert_placed_sanely(&page);
}

#[test]
fn a_pipeline_that_stopped_before_its_first_phase_draws_no_chart() {
    let mut stopped = pipeline("adas");
    stopped.phases.clear();
    stopped.regions = vec![region("eu-west", Status::Pending, 0)];
    stopped.snapshot = None;
    stopped.image = None;
    stopped.cost = Cost::default();
    stopped.dedup = Dedup::default();
    let mut run = report(vec![stopped]);
    run.seconds = 0.0;

    let page = render(&run);

    assert!(page.contains("data-charts=\"0\""));
    assert!(page.contains("No phase ran: the pipeline stopped first."));
    assert!(page.contains("Nothing was stored at home or moved to a region."));
    assert_placed_sanely(&page);
}

#[test]
fn phases_that_took_no_time_still_show_as_thin_bars() {
    let mut instant = pipeline("adas");
    for phase in &mut instant.phases {
        phase.start = 0.0;
        phase.end = 0.0;
    }
    let mut run = report(vec![instant]);
    run.seconds = 0.0;

    let page = render(&run);

    assert!(page.contains("data-charts=\"2\""));
    assert_eq!(page.matches("class=\"bar\" data-phase=").count(), 7);
    assert!(page.contains("width=\"2.0\""), "the narrowest bar");
    assert_placed_sanely(&page);
}

#[test]
fn the_page_carries_the_reports_numbers() {
    let page = render(&report(vec![pipeline("adas"), pipeline("adas-builder")]));

    for expected in [
        "20261204T193012Z-3f9a",
        "2026-12-04T19:30:12Z",
        "2026-12-04T19:38:44Z",
        "512.9 s (8 min 33 s)",
        "$0.13",
        "$0.07",
        "1.0 GiB",
        "584.0 MiB",
        "571.0 MiB",
        "20,484",
        "img-0193a1b2c3d4e5f60718293a4b5c6d7e",
        "eu-west",
        "us-east",
        "connection reset",
    ] {
        assert!(page.contains(expected), "no {expected:?} on the page");
    }
    assert!(page.contains("data-charts=\"4\""));
    assert_eq!(page.matches("<svg class=\"chart timeline\"").count(), 2);
    assert_eq!(page.matches("<svg class=\"chart bytes\"").count(), 2);
    assert_eq!(
        page.matches("<tr class=\"failed\">").count(),
        4,
        "a phase, a region"
    );
    assert_placed_sanely(&page);
}

#[test]
fn a_resume_is_a_dashed_line_on_the_timeline_and_stretches_its_axis() {
    let mut run = report(vec![pipeline("adas")]);
    run.resumed = vec![run.started + chrono::Duration::seconds(600)];

    let page = render(&run);

    assert_eq!(page.matches("<g class=\"resume\">").count(), 1);
    assert!(page.contains("resumed 10 min 00 s after the start"));
    assert!(page.contains("Resumed</th><td>1 time: 2026-12-04T19:40:12Z"));
    assert!(page.contains(">600</text>"), "the axis reaches the resume");
    assert_placed_sanely(&page);
}

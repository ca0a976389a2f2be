//! The run report as one HTML page that needs nothing from elsewhere: no scripts, fonts or
//! style sheets to fetch, and charts drawn as inline SVG, so the page reads the same with
//! scripts off, as a mail attachment, or as a CI artifact opened months later.
//!
//! ```text
//! header      run id, status, pipeline file, start, end, total time, resumes, cost
//! overview    one row per pipeline: status, image, bytes changed, stored, moved, cost
//! per pipeline
//!   facts     base, volume, update, snapshot, bytes changed and stored, image, dedup
//!   phases    one row per phase: store, start, end, length, status
//!   regions   one row per region: status, attempts, image id, blocks and bytes moved
//!   cost      storage, transfer and requests, and their total
//!   timeline  one row per store (home first), a bar per phase placed by its start and end
//!   bytes     bytes stored at home and bytes moved to each region
//!   output    the update command's last lines, when the pipeline failed
//! ```
//!
//! Every string from the report (names, paths, errors, command output) is escaped: a run
//! report holds whatever an update command printed. The one script on the page is fixed
//! text. It checks that the browser laid the charts out and says so in `data-rendered` on
//! the body (`ok`, or `failed: REASON`), which the tests read back from a headless browser.

mod chart;
mod text;

use std::fmt::{self, Display, Write as _};

use self::text::{Esc, dollars, duration, grouped, seconds, status_word, time};
use super::report::{PipelineRun, RunReport, Status};
use crate::units;

/// The page for `report`.
pub(crate) fn render(report: &RunReport) -> String {
    let mut page = String::new();
    write_page(&mut page, report).expect("formatting into a String does not fail");
    page
}

fn write_page(page: &mut String, report: &RunReport) -> fmt::Result {
    // The body is made first: the script must know how many charts it drew.
    let mut body = String::new();
    header(&mut body, report)?;
    let axis = chart::Axis {
        end: timeline_end(report),
        resumes: resume_offsets(report),
    };
    let mut charts = 0;
    if report.pipelines.is_empty() {
        writeln!(body, "<p class=\"empty\">The run has no pipelines.</p>")?;
    } else {
        overview(&mut body, report)?;
    }
    for (index, pipeline) in report.pipelines.iter().enumerate() {
        charts += section(&mut body, pipeline, index, &axis)?;
    }

    writeln!(page, "<!DOCTYPE html>")?;
    writeln!(page, "<html lang=\"en\">")?;
    writeln!(page, "<head>")?;
    writeln!(page, "<meta charset=\"utf-8\">")?;
    writeln!(
        page,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    writeln!(page, "<title>bake run {}</title>", Esc(&report.run))?;
    writeln!(page, "<style>{STYLE}</style>")?;
    writeln!(page, "</head>")?;
    writeln!(
        page,
        "<body data-charts=\"{charts}\" data-rendered=\"pending\">"
    )?;
    page.push_str(&body);
    writeln!(page, "<script>{LAYOUT_CHECK}</script>")?;
    writeln!(page, "</body>")?;
    writeln!(page, "</html>")
}

/// Run-wide facts: which run, from which file, when, how it ended, and what it cost.
fn header(out: &mut String, report: &RunReport) -> fmt::Result {
    writeln!(out, "<header>")?;
    writeln!(
        out,
        "<h1>Bake run <code>{}</code> {}</h1>",
        Esc(&report.run),
        badge(report.status)
    )?;
    writeln!(out, "<table class=\"facts\">")?;
    let file = report.pipeline_file.display().to_string();
    fact(
        out,
        "Pipeline file",
        format_args!("<code>{}</code>", Esc(&file)),
    )?;
    fact(out, "Started", time(report.started))?;
    match report.finished {
        Some(finished) => fact(out, "Finished", time(finished))?,
        None => fact(
            out,
            "Finished",
            "not yet: the run is under way, or stopped short",
        )?,
    }
    fact(
        out,
        "Total time",
        format_args!(
            "{} s ({}), resumes and the gaps between them included",
            seconds(report.seconds),
            duration(report.seconds)
        ),
    )?;
    if !report.resumed.is_empty() {
        let times: Vec<String> = report.resumed.iter().map(|t| time(*t)).collect();
        fact(
            out,
            "Resumed",
            format_args!(
                "{}: {}",
                count(report.resumed.len(), "time"),
                times.join(", ")
            ),
        )?;
    }
    let with_status = |status: Status| {
        let n = report
            .pipelines
            .iter()
            .filter(|p| p.status == status)
            .count();
        format!("{n} {}", status_word(status))
    };
    fact(
        out,
        "Pipelines",
        format_args!(
            "{}: {}, {}, {}",
            report.pipelines.len(),
            with_status(Status::Succeeded),
            with_status(Status::Failed),
            with_status(Status::Pending)
        ),
    )?;
    let total: f64 = report.pipelines.iter().map(|p| p.cost.total).sum();
    fact(
        out,
        "Cost",
        format_args!(
            "<strong>{}</strong> at the pipelines' prices",
            dollars(total)
        ),
    )?;
    writeln!(out, "</table>")?;
    writeln!(out, "</header>")
}

/// A row per pipeline, linking to its section.
fn overview(out: &mut String, report: &RunReport) -> fmt::Result {
    writeln!(out, "<table class=\"grid overview\">")?;
    writeln!(
        out,
        "<tr><th>Pipeline</th><th>Status</th><th>Image</th><th class=\"n\">Changed</th>\
         <th class=\"n\">Stored at home</th><th class=\"n\">Moved to regions</th>\
         <th class=\"n\">Blocks avoided</th><th class=\"n\">Cost</th></tr>"
    )?;
    for (index, p) in report.pipelines.iter().enumerate() {
        let image = match &p.image {
            Some(image) => format!("<code>{image}</code>"),
            None => "none".to_owned(),
        };
        let changed = p.snapshot.as_ref().map_or(0, |s| s.bytes_changed);
        let stored = p.snapshot.as_ref().map_or(0, |s| s.bytes_stored);
        writeln!(
            out,
            "<tr><td><a href=\"#pipeline-{index}\">{}</a></td><td>{}</td><td>{image}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            Esc(&p.name),
            badge(p.status),
            units::bytes(changed),
            units::bytes(stored),
            units::bytes(p.cost.bytes_moved),
            grouped(p.dedup.blocks_avoided),
            dollars(p.cost.total)
        )?;
    }
    writeln!(out, "</table>")
}

/// One pipeline's section; returns how many charts it drew.
fn section(
    out: &mut String,
    pipeline: &PipelineRun,
    index: usize,
    axis: &chart::Axis,
) -> Result<usize, fmt::Error> {
    writeln!(out, "<section class=\"pipeline\" id=\"pipeline-{index}\">")?;
    writeln!(
        out,
        "<h2>{} {}</h2>",
        Esc(&pipeline.name),
        badge(pipeline.status)
    )?;
    if let Some(error) = &pipeline.error {
        writeln!(out, "<p class=\"error\">{}</p>", Esc(error))?;
    }
    facts(out, pipeline)?;
    phases(out, pipeline)?;
    regions(out, pipeline)?;
    cost(out, pipeline)?;

    let mut charts = 0;
    if !pipeline.phases.is_empty() {
        writeln!(out, "<h3>Timeline</h3>")?;
        chart::timeline(out, pipeline, axis)?;
        charts += 1;
    }
    writeln!(out, "<h3>Bytes per store</h3>")?;
    if chart::bytes(out, pipeline)? {
        charts += 1;
    } else {
        writeln!(
            out,
            "<p class=\"empty\">Nothing was stored at home or moved to a region.</p>"
        )?;
    }

    if pipeline.status == Status::Failed
        && let Some(update) = &pipeline.update
        && !update.tail.is_empty()
    {
        writeln!(
            out,
            "<h3>Update output, last lines ({})</h3>",
            update.describe()
        )?;
        writeln!(out, "<pre class=\"tail\">{}</pre>", Esc(&update.tail))?;
    }
    writeln!(out, "</section>")?;
    Ok(charts)
}

/// What the pipeline started from, what it made, and what it kept.
fn facts(out: &mut String, p: &PipelineRun) -> fmt::Result {
    writeln!(out, "<table class=\"facts\">")?;
    fact(out, "Family", Esc(&p.family))?;
    fact(out, "Home store", Esc(&p.home))?;
    match &p.base {
        Some(base) => {
            let from = match (&base.image, &base.imported_from) {
                (Some(image), _) => format!("image <code>{image}</code>"),
                (None, Some(file)) => format!("imported from <code>{}</code>", Esc(file)),
                (None, None) => "a snapshot".to_owned(),
            };
            let snapshot = base.snapshot;
            fact(
                out,
                "Base",
                format_args!("{from}, snapshot <code>{snapshot}</code>"),
            )?;
        }
        None => fact(out, "Base", "none chosen")?,
    }
    if let Some(volume) = &p.volume {
        let path = volume.path.display().to_string();
        fact(
            out,
            "Volume",
            format_args!(
                "{}, {}, {} fetched from home: <code>{}</code>",
                Esc(&volume.kind),
                Esc(volume.how()),
                units::bytes(volume.bytes_fetched),
                Esc(&path)
            ),
        )?;
    }
    if let Some(update) = &p.update {
        fact(out, "Update", update.describe())?;
    }
    let log = p.log.display().to_string();
    fact(
        out,
        "Update log",
        format_args!("<code>{}</code>", Esc(&log)),
    )?;
    match &p.snapshot {
        Some(s) => {
            fact(
                out,
                "Snapshot",
                format_args!(
                    "<code>{}</code> of {} in blocks of {}",
                    s.id,
                    units::bytes(s.size),
                    units::bytes(s.block_size)
                ),
            )?;
            fact(
                out,
                "Bytes changed",
                format_args!(
                    "{} ({} blocks differ from the base); {} read",
                    units::bytes(s.bytes_changed),
                    grouped(s.blocks_changed),
                    units::bytes(s.bytes_read)
                ),
            )?;
            fact(
                out,
                "Bytes stored",
                format_args!(
                    "{} at home ({} new blocks, compressed and sealed)",
                    units::bytes(s.bytes_stored),
                    grouped(s.blocks_new)
                ),
            )?;
        }
        None => fact(out, "Snapshot", "none taken")?,
    }
    match &p.image {
        Some(image) => {
            let promoted = if p.promoted {
                "the family's latest everywhere"
            } else {
                "not promoted everywhere"
            };
            fact(
                out,
                "Image",
                format_args!("<code>{image}</code>, {promoted}"),
            )?;
        }
        None => fact(out, "Image", "none registered")?,
    }
    let dedup = &p.dedup;
    fact(
        out,
        "Dedup",
        format_args!(
            "<strong>{}</strong> blocks avoided: {} reused at home, {} already in regions",
            grouped(dedup.blocks_avoided),
            grouped(dedup.blocks_reused_at_home),
            grouped(dedup.blocks_present_in_regions)
        ),
    )?;
    for kept in &p.retention {
        fact(
            out,
            "Retention",
            format_args!(
                "{}: kept {}, deregistered {}, deleted {}",
                Esc(&kept.store),
                count(kept.kept, "image"),
                kept.deregistered.len(),
                count(kept.snapshots_deleted, "snapshot")
            ),
        )?;
    }
    writeln!(out, "</table>")
}

/// A row per phase, in the order they ran.
fn phases(out: &mut String, p: &PipelineRun) -> fmt::Result {
    writeln!(out, "<h3>Phases</h3>")?;
    if p.phases.is_empty() {
        let why = match p.status {
            Status::Pending => "No phase has run yet.",
            Status::Succeeded | Status::Failed => "No phase ran: the pipeline stopped first.",
        };
        return writeln!(out, "<p class=\"empty\">{why}</p>");
    }
    writeln!(out, "<table class=\"grid phases\">")?;
    writeln!(
        out,
        "<tr><th>Phase</th><th>Store</th><th class=\"n\">Start, s</th>\
         <th class=\"n\">End, s</th><th class=\"n\">Took</th><th>Status</th></tr>"
    )?;
    for phase in &p.phases {
        let class = if phase.status == Status::Failed {
            " class=\"failed\""
        } else {
            ""
        };
        writeln!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            Esc(&phase.name),
            Esc(&phase.store),
            seconds(phase.start),
            seconds(phase.end),
            duration((phase.end - phase.start).max(0.0)),
            badge(phase.status)
        )?;
    }
    writeln!(out, "</table>")
}

/// A row per region.
fn regions(out: &mut String, p: &PipelineRun) -> fmt::Result {
    writeln!(out, "<h3>Regions</h3>")?;
    if p.regions.is_empty() {
        return writeln!(out, "<p class=\"empty\">The pipeline has no regions.</p>");
    }
    writeln!(out, "<table class=\"grid regions\">")?;
    writeln!(
        out,
        "<tr><th>Region</th><th>Status</th><th>Image</th><th>Mode</th>\
         <th class=\"n\">Tries</th><th class=\"n\">Blocks copied</th>\
         <th class=\"n\">Already there</th><th class=\"n\">Bytes moved</th>\
         <th class=\"n\">Requests</th><th>Latest</th></tr>"
    )?;
    for region in &p.regions {
        let image = match &region.image {
            Some(image) => format!("<code>{image}</code>"),
            None => "none".to_owned(),
        };
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{image}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            Esc(&region.store),
            badge(region.status),
            Esc(region.mode.as_deref().unwrap_or("")),
            region.attempts,
            grouped(region.blocks_copied),
            grouped(region.blocks_present),
            units::bytes(region.bytes_moved),
            grouped(region.requests.total),
            if region.promoted { "yes" } else { "no" },
        )?;
        // The error gets a row of its own: it is often a sentence or two long.
        if let Some(error) = &region.error {
            writeln!(
                out,
                "<tr class=\"failed\"><td></td><td colspan=\"9\" class=\"error\">{}</td></tr>",
                Esc(error)
            )?;
        }
    }
    writeln!(out, "</table>")
}

/// The cost, item by item, with the quantity each item is charged on.
fn cost(out: &mut String, p: &PipelineRun) -> fmt::Result {
    let c = &p.cost;
    writeln!(out, "<h3>Cost</h3>")?;
    writeln!(out, "<table class=\"grid cost\">")?;
    writeln!(
        out,
        "<tr><th>Item</th><th>Charged on</th><th class=\"n\">Dollars</th></tr>"
    )?;
    let rows = [
        (
            "Storage, one month",
            format!(
                "{} new, at home and in the regions",
                units::bytes(c.bytes_stored)
            ),
            c.storage_per_month,
        ),
        (
            "Transfer",
            format!("{} moved to the regions", units::bytes(c.bytes_moved)),
            c.transfer,
        ),
        (
            "Requests",
            format!("{} requests", grouped(c.requests)),
            c.request_charges,
        ),
    ];
    for (item, quantity, charge) in rows {
        writeln!(
            out,
            "<tr><td>{item}</td><td>{quantity}</td><td class=\"n\">{}</td></tr>",
            dollars(charge)
        )?;
    }
    writeln!(
        out,
        "<tr class=\"total\"><td>Total</td><td></td><td class=\"n\">{}</td></tr>",
        dollars(c.total)
    )?;
    writeln!(out, "</table>")
}

/// One row of a two-column table; `value` is markup, already escaped where it needs to be.
fn fact(out: &mut String, name: &str, value: impl Display) -> fmt::Result {
    writeln!(out, "<tr><th>{name}</th><td>{value}</td></tr>")
}

/// `n` things, the noun in the plural unless there is one.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A status as a coloured word.
fn badge(status: Status) -> String {
    let word = status_word(status);
    format!("<span class=\"status {word}\">{word}</span>")
}

/// Where the timelines end, in seconds since the run started: the run's length, or a later
/// phase or resume if the report has one (a report written mid-run). Never 0, so that a
/// run that took no time still has an axis to place its phases on.
fn timeline_end(report: &RunReport) -> f64 {
    let phases = report.pipelines.iter().flat_map(|p| &p.phases);
    let latest = phases
        .flat_map(|phase| [phase.start, phase.end])
        .chain(resume_offsets(report))
        .fold(report.seconds, f64::max);
    if latest > 0.0 { latest } else { 1.0 }
}

/// When each resume picked the run up, in seconds since the run started.
fn resume_offsets(report: &RunReport) -> Vec<f64> {
    // Milliseconds of any real run fit an f64 exactly; the cast only rounds past 2^53.
    let offset = |t: &chrono::DateTime<chrono::Utc>| {
        (*t - report.started).num_milliseconds() as f64 / 1000.0
    };
    report.resumed.iter().map(offset).collect()
}

/// The page's looks. System fonts only: the page fetches nothing.
const STYLE: &str = "
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1f2328;
  margin: 24px auto; max-width: 1140px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 10px; }
h1 code { font-size: 20px; }
h2 { font-size: 18px; margin-top: 36px; border-top: 2px solid #d0d7de; padding-top: 16px; }
h3 { font-size: 15px; margin: 22px 0 6px; color: #424a53; }
a { color: #0969da; }
code, pre { font-family: ui-monospace, 'SFMono-Regular', Menlo, monospace; font-size: 12.5px; }
table { border-collapse: collapse; margin: 6px 0; }
table.facts th { text-align: left; font-weight: 600; padding: 2px 18px 2px 0;
  vertical-align: top; white-space: nowrap; color: #424a53; }
table.facts td { padding: 2px 0; }
table.grid td code { white-space: nowrap; }
table.grid td:first-child { min-width: 7em; overflow-wrap: anywhere; }
table.grid th, table.grid td { border-bottom: 1px solid #d8dee4; padding: 4px 7px;
  text-align: left; }
table.grid th { background: #f6f8fa; font-weight: 600; border-bottom: 1px solid #d0d7de;
  white-space: nowrap; }
table.grid .n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.grid tr.failed td { background: #fff5f5; }
tr.total td { font-weight: 600; border-top: 2px solid #d0d7de; }
.status { display: inline-block; font-size: 11.5px; font-weight: 600; padding: 0 8px;
  border-radius: 9px; line-height: 18px; vertical-align: 2px; }
h1 .status, h2 .status { font-size: 12px; vertical-align: 3px; margin-left: 6px; }
.status.succeeded { background: #dafbe1; color: #116329; }
.status.failed { background: #ffebe9; color: #a40e26; }
.status.pending { background: #eaeef2; color: #57606a; }
p.error, td.error { color: #a40e26; white-space: pre-wrap; }
p.error { background: #fff5f5; border-left: 3px solid #cf222e; padding: 6px 10px; }
p.empty { color: #57606a; font-style: italic; }
pre.tail { background: #f6f8fa; border: 1px solid #d0d7de; padding: 8px; overflow-x: auto;
  white-space: pre-wrap; max-height: 480px; }
svg.chart { display: block; max-width: 100%; height: auto; margin-top: 4px; }
svg.chart text { font: 12px system-ui, -apple-system, 'Segoe UI', sans-serif; fill: #1f2328; }
svg.chart text.home { font-weight: 600; }
svg.chart text.axis { fill: #57606a; font-size: 11px; }
svg.chart text.mark { fill: #cf222e; font-weight: 700; }
svg.chart text.inside { fill: #ffffff; font-size: 11px; pointer-events: none; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 0 170px; font-size: 12px;
  color: #424a53; }
ul.legend li { display: inline-block; margin-right: 14px; }
ul.legend .swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  vertical-align: -2px; border-radius: 2px; }
";

/// Checks that the browser laid out what the page drew: as many charts as the body says,
/// each taking room, with as many bars as it says, each with a size and inside the chart.
/// The verdict goes into `data-rendered` on the body. It runs as the last thing in the
/// body, when every chart above it is parsed; asking for a size lays the page out.
const LAYOUT_CHECK: &str = r#"
(function () {
  "use strict";
  function check() {
    var expected = Number(document.body.getAttribute("data-charts"));
    var charts = document.querySelectorAll("svg.chart");
    if (charts.length !== expected) {
      return "failed: found " + charts.length + " of " + expected + " charts";
    }
    for (var i = 0; i < charts.length; i++) {
      var size = charts[i].getBoundingClientRect();
      if (!(size.width > 0 && size.height > 0)) {
        return "failed: chart " + i + " takes no room";
      }
      var width = charts[i].viewBox.baseVal.width;
      var bars = charts[i].querySelectorAll(".bar");
      if (bars.length !== Number(charts[i].getAttribute("data-bars"))) {
        return "failed: chart " + i + " has " + bars.length + " bars";
      }
      for (var j = 0; j < bars.length; j++) {
        var box = bars[j].getBBox();
        if (!(box.width > 0 && box.height > 0) || box.x < 0 || box.x + box.width > width) {
          return "failed: bar " + j + " of chart " + i + " is empty or outside its chart";
        }
      }
    }
    return "ok";
  }
  var verdict;
  try {
    verdict = check();
  } catch (error) {
    verdict = "failed: " + error;
  }
  document.body.dataset.rendered = verdict;
})();
"#;

#[cfg(test)]
mod tests;

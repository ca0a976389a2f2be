//! A pipeline's two charts, drawn as inline SVG so they show without a script. Each bar
//! carries a `<title>`, which browsers show as its tooltip.
//!
//! ```text
//!                                   resumed
//!   home      [base][update.......][snapshot]:
//!   eu-west                         [copy]   :
//!   us-east                         [copy]x  :  [copy]      x: failed, then resumed
//!             |         |         |         |         |
//!             0        600      1200      1800      2400
//!                      seconds since the run started
//! ```
//!
//! Every timeline of a page shares one axis, the run's, so pipelines compare at a glance.

use std::fmt::{self, Display, Write as _};

use super::text::{Esc, duration, grouped, seconds, status_word};
use crate::bake::report::{Phase, PipelineRun, Status};
use crate::units;

/// Width of every chart in SVG units: CSS pixels, until the page is narrower.
const WIDTH: f64 = 960.0;
/// Room left of the plot for the row labels.
const LABEL_WIDTH: f64 = 170.0;
/// Room right of a timeline's plot for its last tick label and a failed phase's mark.
const TIMELINE_RIGHT: f64 = 40.0;
/// Room right of the bytes chart's plot for the count printed after the longest bar.
const BYTES_RIGHT: f64 = 110.0;
/// Room above a timeline's first row for the label of a resume's line.
const TIMELINE_TOP: f64 = 20.0;
/// Room above the bytes chart's first row.
const BYTES_TOP: f64 = 6.0;
const ROW_HEIGHT: f64 = 28.0;
const BAR_HEIGHT: f64 = 18.0;
/// Room below a timeline's last row for the tick labels and the axis title.
const AXIS_HEIGHT: f64 = 44.0;
/// The narrowest bar drawn, so that a phase that took no measurable time, or a region that
/// took a few bytes beside one that took gigabytes, still shows.
const MIN_BAR_WIDTH: f64 = 2.0;
/// What one character of a name inside a bar takes at most, in SVG units, for 11 px text;
/// a name is drawn inside its bar only when it fits.
const INSIDE_CHAR_WIDTH: f64 = 7.0;
/// Room between a bar's left edge and the name inside it.
const INSIDE_PADDING: f64 = 5.0;
/// Row labels longer than this many characters are cut; their tooltip has them whole.
const MAX_LABEL_CHARS: usize = 22;
/// The time axis aims at about this many intervals.
const TARGET_TICKS: f64 = 6.0;
/// The most ticks an axis gets, whatever rounding does to the step.
const MAX_TICKS: u32 = 20;

/// Failed work: a failed phase's outline and mark, a failed region's bar.
const FAILED_COLOR: &str = "#cf222e";
const HOME_COLOR: &str = "#0969da";
const REGION_COLOR: &str = "#1a7f37";
const PENDING_COLOR: &str = "#8c959f";
/// Colours for phase names the page does not know, picked by the name's bytes.
const OTHER_PHASE_COLORS: [&str; 4] = ["#bf3989", "#953800", "#4d2d00", "#0550ae"];

/// The time axis every timeline of a page shares.
pub(super) struct Axis {
    /// The last second on the axis, the run's end; a value of 0 or below counts as 1.
    pub(super) end: f64,
    /// When the run was resumed, in seconds since it started.
    pub(super) resumes: Vec<f64>,
}

/// Draws the timeline of `pipeline`'s phases on `axis`, with a dashed line at each of the
/// run's resumes, and a legend under it.
pub(super) fn timeline(out: &mut String, pipeline: &PipelineRun, axis: &Axis) -> fmt::Result {
    let stores = stores(pipeline);
    let scale = Scale {
        end: if axis.end > 0.0 { axis.end } else { 1.0 },
        left: LABEL_WIDTH,
        width: WIDTH - LABEL_WIDTH - TIMELINE_RIGHT,
    };
    let bottom = row_top(TIMELINE_TOP, stores.len());
    let title = format!(
        "Phases of {} per store, in seconds since the run started",
        pipeline.name
    );
    open(
        out,
        "timeline",
        bottom + AXIS_HEIGHT,
        pipeline.phases.len(),
        &title,
    )?;
    for (row, store) in stores.iter().enumerate() {
        row_label(out, row_top(TIMELINE_TOP, row), row, store)?;
    }

    let (step, ticks) = ticks(scale.end);
    for tick in ticks {
        let x = scale.x(tick);
        writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{TIMELINE_TOP}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" \
             stroke=\"#d0d7de\"/>"
        )?;
        writeln!(
            out,
            "<text class=\"axis\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 16.0,
            seconds_label(tick, step)
        )?;
    }
    writeln!(
        out,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the \
         run started</text>",
        scale.left + scale.width / 2.0,
        bottom + 36.0
    )?;

    for phase in &pipeline.phases {
        let row = stores
            .iter()
            .position(|store| *store == phase.store)
            .expect("every phase's store has a row");
        phase_bar(out, phase, row, &scale)?;
    }

    for offset in &axis.resumes {
        let x = scale.x(*offset);
        writeln!(
            out,
            "<g class=\"resume\"><title>resumed {} after the start</title>\
             <line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#57606a\" \
             stroke-dasharray=\"4 3\"/><text class=\"axis\" x=\"{x:.1}\" y=\"{:.1}\" \
             text-anchor=\"middle\">resumed</text></g>",
            duration(*offset),
            TIMELINE_TOP - 4.0,
            TIMELINE_TOP - 7.0
        )?;
    }
    writeln!(out, "</svg>")?;
    phase_legend(out, pipeline, !axis.resumes.is_empty())
}

/// Draws the bytes each store took: stored at home, moved to each region. Returns false,
/// drawing nothing, when every count is 0.
pub(super) fn bytes(out: &mut String, pipeline: &PipelineRun) -> Result<bool, fmt::Error> {
    let mut rows = Vec::with_capacity(1 + pipeline.regions.len());
    let stored = pipeline.snapshot.as_ref().map_or(0, |s| s.bytes_stored);
    let new_blocks = pipeline.snapshot.as_ref().map_or(0, |s| s.blocks_new);
    rows.push(BytesRow {
        store: pipeline.home.clone(),
        bytes: stored,
        color: HOME_COLOR,
        tooltip: format!(
            "{} stored at home in {}: {} new blocks, compressed and sealed",
            units::bytes(stored),
            pipeline.home,
            grouped(new_blocks)
        ),
    });
    for region in &pipeline.regions {
        rows.push(BytesRow {
            store: region.store.clone(),
            bytes: region.bytes_moved,
            color: match region.status {
                Status::Succeeded => REGION_COLOR,
                Status::Failed => FAILED_COLOR,
                Status::Pending => PENDING_COLOR,
            },
            tooltip: format!(
                "{} moved to {} ({}): {} blocks copied, {} already there, {} requests",
                units::bytes(region.bytes_moved),
                region.store,
                status_word(region.status),
                grouped(region.blocks_copied),
                grouped(region.blocks_present),
                grouped(region.requests.total)
            ),
        });
    }
    let most = rows.iter().map(|row| row.bytes).max().unwrap_or(0);
    if most == 0 {
        return Ok(false);
    }

    let left = LABEL_WIDTH;
    let width = WIDTH - LABEL_WIDTH - BYTES_RIGHT;
    let bars = rows.iter().filter(|row| row.bytes > 0).count();
    let height = row_top(BYTES_TOP, rows.len()) + BYTES_TOP;
    let title = format!("Bytes stored and moved by {}", pipeline.name);
    open(out, "bytes", height, bars, &title)?;
    for (row, line) in rows.iter().enumerate() {
        let top = row_top(BYTES_TOP, row);
        row_label(out, top, row, &line.store)?;
        let drawn = if line.bytes > 0 {
            let share = line.bytes as f64 / most as f64;
            let w = (share * width).max(MIN_BAR_WIDTH);
            writeln!(
                out,
                "<rect class=\"bar\" data-store=\"{}\" x=\"{left:.1}\" y=\"{:.1}\" \
                 width=\"{w:.1}\" height=\"{BAR_HEIGHT}\" rx=\"2\" fill=\"{}\">\
                 <title>{}</title></rect>",
                Esc(&line.store),
                bar_top(top),
                line.color,
                Esc(&line.tooltip)
            )?;
            w
        } else {
            0.0
        };
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + drawn + 6.0,
            text_baseline(top),
            units::bytes(line.bytes)
        )?;
    }
    writeln!(out, "</svg>")?;

    let mut legend = vec![
        (HOME_COLOR, "stored at home (compressed and sealed)"),
        (REGION_COLOR, "moved to a region"),
    ];
    let statuses = || pipeline.regions.iter().map(|r| r.status);
    if statuses().any(|s| s == Status::Failed) {
        legend.push((FAILED_COLOR, "moved to a region that failed"));
    }
    if statuses().any(|s| s == Status::Pending) {
        legend.push((PENDING_COLOR, "moved to a region not done yet"));
    }
    write_legend(out, legend)?;
    Ok(true)
}

/// One row of the bytes chart.
struct BytesRow {
    store: String,
    bytes: u64,
    color: &'static str,
    tooltip: String,
}

/// Seconds since the run started, placed on a plot's width.
struct Scale {
    /// The last second on the axis; above 0.
    end: f64,
    left: f64,
    width: f64,
}

impl Scale {
    fn x(&self, seconds: f64) -> f64 {
        self.left + seconds.clamp(0.0, self.end) / self.end * self.width
    }

    fn right(&self) -> f64 {
        self.left + self.width
    }
}

/// A phase's bar in its store's row, with a mark after it when it failed.
fn phase_bar(out: &mut String, phase: &Phase, row: usize, scale: &Scale) -> fmt::Result {
    // A phase that ended before it started (a clock stepped back) is drawn as an instant.
    let start = scale.x(phase.start);
    let width = (scale.x(phase.end) - start).max(MIN_BAR_WIDTH);
    let x = start.min(scale.right() - width);
    let top = bar_top(row_top(TIMELINE_TOP, row));
    let look = match phase.status {
        Status::Succeeded => String::new(),
        Status::Failed => format!(" stroke=\"{FAILED_COLOR}\" stroke-width=\"2\""),
        Status::Pending => {
            " fill-opacity=\"0.45\" stroke=\"#57606a\" stroke-dasharray=\"3 2\"".to_owned()
        }
    };
    writeln!(
        out,
        "<rect class=\"bar\" data-phase=\"{}\" data-store=\"{}\" x=\"{x:.1}\" y=\"{top:.1}\" \
         width=\"{width:.1}\" height=\"{BAR_HEIGHT}\" rx=\"2\" fill=\"{}\"{look}>\
         <title>{} at {}: {}, from {} s to {} s, {}</title></rect>",
        Esc(&phase.name),
        Esc(&phase.store),
        phase_color(&phase.name),
        Esc(&phase.name),
        Esc(&phase.store),
        duration((phase.end - phase.start).max(0.0)),
        seconds(phase.start),
        seconds(phase.end),
        status_word(phase.status)
    )?;
    // The name inside the bar when it fits; the legend and the tooltip say it otherwise.
    let fits = phase.name.chars().count() as f64 * INSIDE_CHAR_WIDTH + 2.0 * INSIDE_PADDING;
    if width >= fits {
        writeln!(
            out,
            "<text class=\"inside\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + INSIDE_PADDING,
            text_baseline(row_top(TIMELINE_TOP, row)),
            Esc(&phase.name)
        )?;
    }
    // The page's style sheet colours the mark: a text's fill attribute loses to it.
    if phase.status == Status::Failed {
        writeln!(
            out,
            "<text class=\"mark\" x=\"{:.1}\" y=\"{:.1}\">\u{2715}</text>",
            x + width + 3.0,
            text_baseline(row_top(TIMELINE_TOP, row))
        )?;
    }
    Ok(())
}

/// The timeline's rows: home first, then the regions in the pipeline's order, then any
/// other store a phase ran in.
fn stores(pipeline: &PipelineRun) -> Vec<&str> {
    let mut stores = vec![pipeline.home.as_str()];
    let named = pipeline.regions.iter().map(|r| r.store.as_str());
    for store in named.chain(pipeline.phases.iter().map(|p| p.store.as_str())) {
        if !stores.contains(&store) {
            stores.push(store);
        }
    }
    stores
}

/// The opening of a chart's `<svg>`, with its size, its bar count for the page's layout
/// check, and its title.
fn open(out: &mut String, kind: &str, height: f64, bars: usize, title: &str) -> fmt::Result {
    writeln!(
        out,
        "<svg class=\"chart {kind}\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" \
         width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" \
         data-bars=\"{bars}\" aria-label=\"{0}\"><title>{0}</title>",
        Esc(title)
    )
}

/// A row's label, cut to fit, and a light band behind every other row. The first row of
/// every chart is the home store's, and its label is bold.
fn row_label(out: &mut String, top: f64, row: usize, store: &str) -> fmt::Result {
    if row % 2 == 1 {
        writeln!(
            out,
            "<rect x=\"0\" y=\"{top:.1}\" width=\"{WIDTH}\" height=\"{ROW_HEIGHT}\" \
             fill=\"#f6f8fa\"/>"
        )?;
    }
    let shown = if store.chars().count() > MAX_LABEL_CHARS {
        let cut: String = store.chars().take(MAX_LABEL_CHARS - 1).collect();
        format!("{cut}\u{2026}")
    } else {
        store.to_owned()
    };
    let (class, tooltip) = if row == 0 {
        ("label home", format!("{store}, the home store"))
    } else {
        ("label", store.to_owned())
    };
    writeln!(
        out,
        "<text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}\
         <title>{}</title></text>",
        LABEL_WIDTH - 8.0,
        text_baseline(top),
        Esc(&shown),
        Esc(&tooltip)
    )
}

/// The phase names of the timeline with their colours, and what the marks mean.
fn phase_legend(out: &mut String, pipeline: &PipelineRun, resumed: bool) -> fmt::Result {
    let mut names: Vec<&str> = Vec::new();
    for phase in &pipeline.phases {
        if !names.contains(&phase.name.as_str()) {
            names.push(&phase.name);
        }
    }
    writeln!(out, "<ul class=\"legend\">")?;
    for name in names {
        swatch(out, phase_color(name), Esc(name))?;
    }
    let statuses = || pipeline.phases.iter().map(|p| p.status);
    if statuses().any(|s| s == Status::Failed) {
        writeln!(
            out,
            "<li><span style=\"color:{FAILED_COLOR};font-weight:bold\">\u{2715}</span> failed \
             (outlined)</li>"
        )?;
    }
    if statuses().any(|s| s == Status::Pending) {
        writeln!(out, "<li>faded: under way when the report was written</li>")?;
    }
    if resumed {
        writeln!(out, "<li>dashed line: the run was resumed</li>")?;
    }
    writeln!(out, "</ul>")
}

fn write_legend(out: &mut String, entries: Vec<(&str, &str)>) -> fmt::Result {
    writeln!(out, "<ul class=\"legend\">")?;
    for (color, meaning) in entries {
        swatch(out, color, meaning)?;
    }
    writeln!(out, "</ul>")
}

fn swatch(out: &mut String, color: &str, meaning: impl Display) -> fmt::Result {
    writeln!(
        out,
        "<li><span class=\"swatch\" style=\"background:{color}\"></span>{meaning}</li>"
    )
}

/// A phase's colour: fixed for the phases bake runs, so pages compare across runs.
fn phase_color(name: &str) -> &'static str {
    match name {
        "base" => "#8a6a2b",
        "volume" => "#8250df",
        "update" => "#e16f24",
        "snapshot" => "#2da44e",
        "register" => "#218bff",
        "copy" => "#1b9aaa",
        "promote" => "#a475f9",
        "retention" => "#6e7781",
        other => {
            let sum = other
                .bytes()
                .fold(0usize, |sum, b| sum.wrapping_add(usize::from(b)));
            OTHER_PHASE_COLORS[sum % OTHER_PHASE_COLORS.len()]
        }
    }
}

fn row_top(first: f64, row: usize) -> f64 {
    // Row counts are small; the conversion is exact.
    first + ROW_HEIGHT * row as f64
}

fn bar_top(row_top: f64) -> f64 {
    row_top + (ROW_HEIGHT - BAR_HEIGHT) / 2.0
}

/// Where a row's text sits: 12 px text centred on the row.
fn text_baseline(row_top: f64) -> f64 {
    row_top + ROW_HEIGHT / 2.0 + 4.0
}

/// Ticks for an axis from 0 to `end` (above 0): the step, a round number (1, 2 or 5 times a
/// power of ten) that gives about `TARGET_TICKS` intervals, and the ticks up to `end`.
fn ticks(end: f64) -> (f64, Vec<f64>) {
    let rough = end / TARGET_TICKS;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power);
    let ticks = (0..MAX_TICKS)
        .map(|i| f64::from(i) * step)
        // The last tick may land a rounding error past the end; near f64::MAX it overflows.
        .take_while(|tick| tick.is_finite() && *tick <= end + end * 1e-9)
        .collect();
    (step, ticks)
}

/// A tick's label: as many decimals as the step needs, or an exponent for huge values.
fn seconds_label(tick: f64, step: f64) -> String {
    if tick >= 1e9 {
        return format!("{tick:e}");
    }
    let mut decimals = 0;
    let mut scaled = step;
    while scaled.fract().abs() > 1e-6 && decimals < 9 {
        scaled *= 10.0;
        decimals += 1;
    }
    format!("{tick:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_that_reach_the_end() {
        assert_eq!(
            ticks(100.0),
            (20.0, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0])
        );
        assert_eq!(ticks(7.0), (2.0, vec![0.0, 2.0, 4.0, 6.0]));
        assert_eq!(ticks(3600.0).0, 1000.0);

        let (step, small) = ticks(1.0);
        assert!((step - 0.2).abs() < 1e-12, "{step}");
        assert_eq!(small.len(), 6);
    }

    #[test]
    fn extreme_axes_keep_a_few_ticks() {
        for end in [1e-9, 0.5, 1e15, f64::MAX] {
            let (step, ticks) = ticks(end);
            assert!(step.is_finite() && step > 0.0, "{end}: {step}");
            assert!((2..=11).contains(&ticks.len()), "{end}: {ticks:?}");
            assert!(
                ticks.iter().all(|t| t.is_finite() && *t <= end),
                "{end}: {ticks:?}"
            );
        }
    }

    #[test]
    fn tick_labels_have_the_decimals_the_step_needs() {
        assert_eq!(seconds_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(seconds_label(1200.0, 200.0), "1200");
        assert_eq!(seconds_label(0.05, 0.05), "0.05");
        assert_eq!(seconds_label(2e15, 1e15), "2e15");
    }

    #[test]
    fn unknown_phase_names_still_get_a_colour() {
        assert_eq!(phase_color("copy"), "#1b9aaa");
        assert!(OTHER_PHASE_COLORS.contains(&phase_color("warm-cache")));
    }
}

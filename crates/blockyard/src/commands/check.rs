//! `blockyard check`.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use blockyard_store::{CheckOptions, Store, check};

use crate::cli::CheckArgs;
use crate::output::{Output, Unit};

pub(crate) async fn run(args: &CheckArgs, store: &Store, out: Output) -> Result<()> {
    let options = CheckOptions {
        read_data: args.read_data,
        sample_percent: args.sample,
    };
    let bar = out.progress("check", Unit::Items);
    let report = check(store, options, bar.clone()).await?;
    bar.finish();
    out.emit(&report, || {
        let mut text = format!(
            "{} snapshots, {} segments, {} blocks referenced, {} read and verified, {} \
             unreferenced",
            report.snapshots,
            report.segments,
            report.blocks_referenced,
            report.blocks_read,
            report.blocks_unreferenced
        );
        for problem in &report.problems {
            let _ = write!(text, "\nproblem: {}: {}", problem.object, problem.error);
        }
        for id in &report.damaged_snapshots {
            let _ = write!(text, "\ndamaged: {id}");
        }
        if report.problems.is_empty() {
            text.push_str("\nno problems found");
        }
        text
    })?;
    if !report.problems.is_empty() {
        bail!(
            "the store has {} problems; {} snapshots are damaged",
            report.problems.len(),
            report.damaged_snapshots.len()
        );
    }
    Ok(())
}

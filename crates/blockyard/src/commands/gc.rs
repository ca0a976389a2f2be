//! `blockyard gc`.

use std::sync::Arc;

use anyhow::Result;
use blockyard_store::{GcOptions, Store, collect_garbage};

use crate::cli::GcArgs;
use crate::output::{Output, Unit};

pub(crate) async fn run(args: &GcArgs, store: &Store, out: Output) -> Result<()> {
    let options = GcOptions {
        grace: args.grace,
        dry_run: args.dry_run,
        wait: !args.no_wait,
        session_timeout: args.session_timeout,
        concurrency: args.concurrency.max(1),
        ..GcOptions::default()
    };
    let bar = out.progress("deleting", Unit::Items);
    let report = collect_garbage(store, &options, Arc::clone(&bar) as _).await?;
    bar.finish();
    out.emit(&report, || {
        let mut lines = vec![format!(
            "{} snapshot record(s) reach {} segment(s) and {} block(s); the store holds {} \
             segment(s) and {} block(s)",
            report.snapshots,
            report.segments_referenced,
            report.blocks_referenced,
            report.segments_listed,
            report.blocks_listed
        )];
        if report.dry_run {
            lines.push(format!(
                "would condemn {} segment(s) and {} block(s) ({} bytes); {} unreferenced \
                 object(s) are younger than the grace",
                report.segments_condemned,
                report.blocks_condemned,
                report.bytes_condemned,
                report.too_young
            ));
            return lines.join("\n");
        }
        for run in &report.resumed {
            lines.push(format!("finished the earlier run {run}"));
        }
        if let Some(run) = &report.run {
            lines.push(format!(
                "run {run} condemned {} segment(s) and {} block(s) ({} bytes)",
                report.segments_condemned, report.blocks_condemned, report.bytes_condemned
            ));
        }
        lines.push(format!(
            "deleted {} segment(s), {} block(s), {} copy map(s) and {} orphan ref(s); spared \
             {} condemned object(s) that writers used again; {} too young to condemn",
            report.segments_deleted,
            report.blocks_deleted,
            report.copy_maps_deleted,
            report.refs_deleted,
            report.spared,
            report.too_young
        ));
        for session in &report.sessions_expired {
            lines.push(format!(
                "session {session} missed its heartbeats: taken for dead"
            ));
        }
        for run in &report.pending {
            lines.push(format!(
                "run {run} waits for older writer sessions or the grace; the next gc finishes it"
            ));
        }
        lines.join("\n")
    })?;
    Ok(())
}

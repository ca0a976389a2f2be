//! `blockyard restore`.

use std::time::Instant;

use anyhow::{Context, Result};
use blockyard_store::{RestoreOptions, Store, restore};
use serde_json::json;

use super::resolve_snapshot;
use crate::cli::RestoreArgs;
use crate::output::{Output, Unit};
use crate::units::bytes;

pub(crate) async fn run(args: &RestoreArgs, store: &Store, out: Output) -> Result<()> {
    let started = Instant::now();
    let id = resolve_snapshot(store, &args.snapshot).await?;
    let bar = out.progress("restore", Unit::Bytes);
    let summary = restore(
        store,
        &id,
        &args.output,
        RestoreOptions {
            overwrite: args.force,
        },
        bar.clone(),
    )
    .await
    .with_context(|| format!("cannot restore {id} to {}", args.output.display()))?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    out.emit(
        &json!({
            "snapshot": id.to_string(),
            "output": args.output.display().to_string(),
            "size": summary.size,
            "blocks": { "data": summary.blocks_data, "zero": summary.blocks_zero },
            "bytes_written": summary.bytes_written,
            "seconds": seconds,
        }),
        || {
            format!(
                "restored {id} to {} in {seconds:.2} s: {} written, {} blocks of {} left sparse",
                args.output.display(),
                bytes(summary.bytes_written),
                summary.blocks_zero,
                summary.blocks_data + summary.blocks_zero,
            )
        },
    )?;
    Ok(())
}

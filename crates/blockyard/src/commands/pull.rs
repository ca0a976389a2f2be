//! `blockyard pull IMAGE OUTPUT [--seed FILE]... [--cache DIR]`.
//!
//! The image is written to a temporary file beside OUTPUT and renamed over it only once
//! every block is written and synced, so OUTPUT is the old image or the new one, never a
//! mix, and the old one can be read for reusable blocks while the new one is written. A pull
//! that fails removes its temporary file; one killed outright leaves it behind, hidden as
//! `.OUTPUT.pull-PID`, until removed by hand (the next pull does not look for it).
//!
//! Known shortcoming: every data block is written, even one the old OUTPUT already holds
//! at its place, so an unchanged image costs a full local write (and twice its space while
//! the pull runs). Updating OUTPUT in place, or a reflinked copy of it, would write only
//! the changed blocks; that needs a crash-safe way to tell a half-updated OUTPUT apart.

use std::fs::{File, Metadata};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blockyard_formats::export::{BlockFeed, ExportLayout, ImageIdentity, write_raw};
use blockyard_formats::qcow2::{self, Qcow2WriteOptions};
use blockyard_formats::{FileSink, Format, FormatError};
use blockyard_store::{BlockCache, PullOptions, Store, pull};
use serde_json::json;

use super::resolve_snapshot;
use crate::cli::PullArgs;
use crate::output::{Output, Unit};
use crate::units::bytes;

pub(crate) async fn run(args: &PullArgs, store: &Store, out: Output) -> Result<()> {
    let started = Instant::now();
    if !matches!(args.format, Format::Raw | Format::Qcow2) {
        bail!(
            "pull writes raw or qcow2; pull to raw and convert, or use `blockyard export` for {}",
            args.format
        );
    }
    let id = resolve_snapshot(store, &args.snapshot).await?;
    let output = &args.output;
    let existing = check_output(output)?;
    for seed in &args.seeds {
        if !seed.is_file() {
            bail!(
                "seed {} is not a file; give raw disk images as seeds",
                seed.display()
            );
        }
    }
    let cache = args
        .cache
        .as_deref()
        .map(|dir| BlockCache::open(dir, args.cache_size))
        .transpose()?;
    let options = PullOptions {
        // An existing qcow2 output is not read: its blocks are not at their disk offsets.
        previous: (existing.is_some() && args.format == Format::Raw).then(|| output.clone()),
        seeds: args.seeds.clone(),
        cache,
    };

    let temporary = temporary_path(output)?;
    let sink = FileSink::create(&temporary)
        .with_context(|| format!("cannot create a file beside {}", output.display()))?;
    let format = args.format;
    let identity = ImageIdentity {
        unique_id: ulid::Ulid::new().to_bytes(),
        created_unix: u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0),
    };
    let write = move |layout: &ExportLayout, feed: &mut dyn BlockFeed| -> Result<(), FormatError> {
        let mut sink = sink;
        match format {
            Format::Qcow2 => qcow2::write(
                layout,
                feed,
                &mut sink,
                &Qcow2WriteOptions::default(),
                &identity,
            ),
            _ => write_raw(layout, feed, &mut sink),
        }
    };
    let bar = out.progress("pull", Unit::Bytes);
    let pulled = pull(store, &id, options, write, bar.clone()).await;
    bar.finish();
    let summary = match pulled.and_then(|summary| {
        replace(&temporary, output, existing.as_ref())?;
        Ok(summary)
    }) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(e).with_context(|| format!("cannot pull {id} to {}", output.display()));
        }
    };

    let seconds = started.elapsed().as_secs_f64();
    let reused = summary.blocks_from_output
        + summary.blocks_from_seeds_by_position
        + summary.blocks_from_seeds_by_content
        + summary.blocks_from_cache;
    out.emit(
        &json!({
            "snapshot": id.to_string(),
            "output": output.display().to_string(),
            "format": format.name(),
            "size": summary.size,
            "blocks_data": summary.blocks_data,
            "blocks_zero": summary.blocks_zero,
            "blocks_fetched": summary.blocks_fetched,
            "bytes_fetched": summary.bytes_fetched,
            "blocks_from_output": summary.blocks_from_output,
            "blocks_from_seeds": {
                "by_position": summary.blocks_from_seeds_by_position,
                "by_content": summary.blocks_from_seeds_by_content,
            },
            "blocks_from_cache": summary.blocks_from_cache,
            "cache": summary.cache,
            "seconds": seconds,
        }),
        || {
            format!(
                "pulled {id} to {} in {seconds:.2} s: {} of {} data blocks reused ({} from the \
                 output, {} from seeds, {} from the cache), {} fetched",
                output.display(),
                reused,
                summary.blocks_data,
                summary.blocks_from_output,
                summary.blocks_from_seeds_by_position + summary.blocks_from_seeds_by_content,
                summary.blocks_from_cache,
                bytes(summary.bytes_fetched),
            )
        },
    )?;
    Ok(())
}

/// OUTPUT's metadata when it exists as a regular file; refuses anything else that is there.
fn check_output(output: &Path) -> Result<Option<Metadata>> {
    match std::fs::metadata(output) {
        Ok(meta) if meta.is_file() => Ok(Some(meta)),
        Ok(meta) if meta.is_dir() => {
            bail!(
                "{} is a directory; give a file name to pull into",
                output.display()
            )
        }
        Ok(meta) if meta.file_type().is_block_device() => bail!(
            "{} is a block device; pull writes files, `blockyard restore` writes devices",
            output.display()
        ),
        Ok(_) => bail!(
            "{} is not a regular file; give a file name to pull into",
            output.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", output.display())),
    }
}

/// A name beside `output` for the image being written.
fn temporary_path(output: &Path) -> Result<PathBuf> {
    let Some(name) = output.file_name() else {
        bail!(
            "{} names no file; give a file name to pull into",
            output.display()
        );
    };
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".pull-{}", std::process::id()));
    Ok(output.with_file_name(temporary))
}

/// Renames the finished (and synced) image over `output`, with the permissions of the file
/// it replaces, and syncs the folder, so the rename survives a crash.
fn replace(
    temporary: &Path,
    output: &Path,
    replaced: Option<&Metadata>,
) -> Result<(), blockyard_store::StoreError> {
    let io_error = |op: &'static str| {
        let path = output.display().to_string();
        move |source| blockyard_store::StoreError::Io { op, path, source }
    };
    if let Some(meta) = replaced {
        std::fs::set_permissions(temporary, meta.permissions())
            .map_err(io_error("set the permissions of the new"))?;
    }
    std::fs::rename(temporary, output).map_err(io_error("replace"))?;
    let folder = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("sync the folder of"))
}

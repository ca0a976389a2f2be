//! `blockyard snapshot create|list|show|blocks|diff|delete`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use std::sync::Arc;

use blockyard_formats::Format;
use blockyard_store::{
    CreateOptions, SnapshotReader, SnapshotRecord, Store, create_snapshot, diff,
};
use serde_json::json;

use super::{resolve_snapshot, snapshot_id};
use crate::cli::{CreateArgs, SnapshotCommand};
use crate::image::{Backing, Disk, open_image};
use crate::output::{Output, Unit};
use crate::settings::ConfigFile;
use crate::units::bytes;

pub(crate) async fn run(
    command: &SnapshotCommand,
    store: &Store,
    out: Output,
    config: &ConfigFile,
) -> Result<()> {
    match command {
        SnapshotCommand::Create(args) => create(args, store, out, config).await,
        SnapshotCommand::List => {
            // One damaged record must not hide the others: list it with its error.
            let mut rows = Vec::new();
            let mut text = String::new();
            for id in store.snapshot_ids().await? {
                match store.snapshot(&id).await {
                    Ok(r) => {
                        rows.push(summary(&r));
                        let _ = writeln!(
                            text,
                            "{}  {}  {:>10}  {:>10} data  {}",
                            r.id,
                            r.created.format("%Y-%m-%d %H:%M:%S"),
                            bytes(r.size),
                            bytes(r.blocks.data * r.block_size),
                            r.description
                        );
                    }
                    Err(e) => {
                        rows.push(json!({ "snapshot": id.to_string(), "error": e.to_string() }));
                        let _ = writeln!(text, "{id}  damaged: {e}");
                    }
                }
            }
            out.emit(&json!({ "snapshots": rows }), || text)?;
            Ok(())
        }
        SnapshotCommand::Show { snapshot } => {
            let record = store
                .snapshot(&resolve_snapshot(store, snapshot).await?)
                .await?;
            out.emit(&record, || {
                let tags: Vec<String> = record
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(
                    "snapshot:    {}\ncreated:     {}\nsize:        {} ({} bytes)\n\
                     blocks:      {} total, {} data, {} zero, {} each\nparent:      {}\n\
                     description: {}\ntags:        {}\nwritten:     {} new, {} reused, \
                     {} stored\nsegments:    {}",
                    record.id,
                    record.created.to_rfc3339(),
                    bytes(record.size),
                    record.size,
                    record.blocks.total,
                    record.blocks.data,
                    record.blocks.zero,
                    bytes(record.block_size),
                    record
                        .parent
                        .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    record.description,
                    tags.join(" "),
                    record.stats.blocks_new,
                    record.stats.blocks_reused,
                    bytes(record.stats.bytes_stored),
                    record.segments.len(),
                )
            })?;
            Ok(())
        }
        SnapshotCommand::Blocks { snapshot } => {
            let reader =
                SnapshotReader::open(store, &resolve_snapshot(store, snapshot).await?).await?;
            let blocks = reader.data_blocks().await?;
            let rows: Vec<_> = blocks
                .iter()
                .map(|(index, id)| json!({ "index": index, "block": id.to_string() }))
                .collect();
            out.emit(
                &json!({
                    "snapshot": reader.record().id.to_string(),
                    "block_size": reader.record().block_size,
                    "volume_size": reader.record().size,
                    "blocks": rows,
                }),
                || {
                    blocks.iter().fold(String::new(), |mut text, (index, _)| {
                        let _ = writeln!(text, "{index}");
                        text
                    })
                },
            )?;
            Ok(())
        }
        SnapshotCommand::Diff { first, second } => {
            let a = SnapshotReader::open(store, &resolve_snapshot(store, first).await?).await?;
            let b = SnapshotReader::open(store, &resolve_snapshot(store, second).await?).await?;
            let changed = diff(&a, &b).await?;
            let rows: Vec<_> = changed
                .iter()
                .map(|c| {
                    json!({
                        "index": c.index,
                        "first": c.first.map(|id| id.to_string()),
                        "second": c.second.map(|id| id.to_string()),
                    })
                })
                .collect();
            out.emit(
                &json!({
                    "first": a.record().id.to_string(),
                    "second": b.record().id.to_string(),
                    "block_size": a.record().block_size,
                    "changed": rows,
                }),
                || {
                    changed.iter().fold(String::new(), |mut text, c| {
                        let _ = writeln!(text, "{}", c.index);
                        text
                    })
                },
            )?;
            Ok(())
        }
        SnapshotCommand::Delete { snapshot } => {
            let id = snapshot_id(snapshot)?;
            // An image is only as whole as its snapshots: one in use stays.
            let users: Vec<String> = blockyard_store::images(store)
                .await?
                .iter()
                .filter(|image| image.devices.iter().any(|d| d.snapshot == id))
                .map(|image| image.id.to_string())
                .collect();
            if !users.is_empty() {
                anyhow::bail!(
                    "snapshot {id} is a disk of image {}; deregister the image first",
                    users.join(", ")
                );
            }
            blockyard_store::recycle(store, &id.to_string()).await?;
            out.emit(
                &json!({ "deleted": id.to_string(), "recycled": true }),
                || {
                    format!(
                        "deleted {id} into the recycle bin (`recycle restore {id}` brings it back)"
                    )
                },
            )?;
            Ok(())
        }
    }
}

async fn create(args: &CreateArgs, store: &Store, out: Output, config: &ConfigFile) -> Result<()> {
    let started = Instant::now();
    let parent = match args.parent.as_deref() {
        Some(text) => Some(resolve_snapshot(store, text).await?),
        None => None,
    };
    let parent_reader = match &parent {
        Some(id) => Some(Arc::new(SnapshotReader::open(store, id).await?)),
        None => None,
    };
    // An overlay's unallocated clusters are its parent's blocks: read only what it stores.
    let backing = parent_reader
        .clone()
        .map_or(Backing::Files, Backing::Parent);
    let image = open_image(&args.source, args.format, backing, config).await?;
    let format = image.format;
    let Ok([disk]) = <[Disk; 1]>::try_from(image.disks) else {
        bail!(
            "{} holds several disks; import it with `blockyard import`, which makes one \
             snapshot per disk",
            args.source
        );
    };
    let options = CreateOptions {
        parent,
        description: args.description.clone(),
        tags: args.tags.iter().cloned().collect::<BTreeMap<_, _>>(),
        concurrency: 0,
        changes_only: parent.is_some() && format != Format::Raw,
    };
    let bar = out.progress("snapshot", Unit::Bytes);
    let record = create_snapshot(store, disk.reader, options, bar.clone())
        .await
        .with_context(|| format!("cannot snapshot {}", args.source))?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();

    let mut document = summary(&record);
    document["seconds"] = json!(seconds);
    document["source"] = json!(args.source);
    document["format"] = json!(format.name());
    out.emit(&document, || {
        format!(
            "{} committed in {seconds:.2} s\n  disk   {} in {} blocks: {} data, {} zero\n  \
             blocks {} new, {} already stored\n  bytes  {} read, {} stored",
            record.id,
            bytes(record.size),
            record.blocks.total,
            record.blocks.data,
            record.blocks.zero,
            record.stats.blocks_new,
            record.stats.blocks_reused,
            bytes(record.stats.bytes_read),
            bytes(record.stats.bytes_stored),
        )
    })?;
    Ok(())
}

/// The JSON summary of a snapshot, shared by `create` and `list`.
pub(crate) fn summary(record: &SnapshotRecord) -> serde_json::Value {
    json!({
        "snapshot": record.id.to_string(),
        "created": record.created.to_rfc3339(),
        "size": record.size,
        "block_size": record.block_size,
        "parent": record.parent.map(|p| p.to_string()),
        "description": record.description,
        "tags": record.tags,
        "blocks": {
            "total": record.blocks.total,
            "data": record.blocks.data,
            "zero": record.blocks.zero,
            "new": record.stats.blocks_new,
            "reused": record.stats.blocks_reused,
        },
        "bytes_read": record.stats.bytes_read,
        "bytes_stored": record.stats.bytes_stored,
    })
}

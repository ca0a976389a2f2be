//! `blockyard import`: a disk image in any format, from a file or an s3:// URL, into one
//! snapshot per disk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use blockyard_store::{
    CreateOptions, Device, NewImage, SnapshotReader, Store, create_snapshot, register_image,
};
use serde_json::json;

use super::snapshot::summary;
use crate::cli::ImportArgs;
use crate::image::{Backing, open_image};
use crate::output::{Output, Unit};
use crate::settings::ConfigFile;
use crate::units::bytes;

pub(crate) async fn run(
    args: &ImportArgs,
    store: &Store,
    out: Output,
    config: &ConfigFile,
) -> Result<()> {
    let started = Instant::now();
    let backing = match &args.backing_snapshot {
        Some(text) => {
            let id = super::resolve_snapshot(store, text).await?;
            Backing::WhenMissing(Arc::new(SnapshotReader::open(store, &id).await?))
        }
        None => Backing::Files,
    };
    let image = open_image(&args.source, args.format, backing, config).await?;
    let format = image.format;
    let disk_count = image.disks.len();
    tracing::debug!(source = %args.source, %format, disks = disk_count, "importing");

    let mut snapshots = Vec::with_capacity(disk_count);
    let mut devices = Vec::with_capacity(disk_count);
    let mut text = String::new();
    for disk in image.disks {
        let mut tags: BTreeMap<String, String> = args.tags.iter().cloned().collect();
        tags.insert("image-name".into(), args.name.clone());
        if let Some(family) = &args.family {
            tags.insert("image-family".into(), family.clone());
        }
        tags.insert("device".into(), disk.device.clone());
        let description = if args.description.is_empty() {
            format!("{} ({format}, {})", args.name, disk.device)
        } else {
            args.description.clone()
        };
        let options = CreateOptions {
            parent: None,
            description,
            tags,
            concurrency: 0,
            changes_only: false,
        };
        let bar = out.progress("import", Unit::Bytes);
        let record = create_snapshot(store, disk.reader, options, bar.clone())
            .await
            .with_context(|| format!("cannot import {} of {}", disk.device, args.source))?;
        bar.finish();
        let _ = writeln!(
            text,
            "  {}  {}  {}: {} blocks with data, {} new, {} already stored, {} stored",
            disk.device,
            record.id,
            bytes(record.size),
            record.blocks.data,
            record.stats.blocks_new,
            record.stats.blocks_reused,
            bytes(record.stats.bytes_stored),
        );
        let mut entry = summary(&record);
        entry["device"] = json!(disk.device);
        snapshots.push(entry);
        devices.push(Device {
            name: disk.device.clone(),
            snapshot: record.id,
        });
    }

    // The image records the disks in the order the source lists them (OVF order for an
    // OVA); it is registered, not promoted: promotion is the pipeline's decision.
    let image = register_image(
        store,
        NewImage {
            name: args.name.clone(),
            family: args.family.clone(),
            devices,
            architecture: args.arch,
            boot_mode: args.boot_mode,
            description: args.description.clone(),
            tags: args.tags.iter().cloned().collect(),
        },
    )
    .await
    .context("the snapshots are stored, but their image could not be registered")?;
    let seconds = started.elapsed().as_secs_f64();

    let document = json!({
        "name": args.name,
        "family": args.family,
        "source": args.source,
        "format": format.name(),
        "image": image.id,
        "snapshots": snapshots,
        "seconds": seconds,
    });
    out.emit(&document, || {
        format!(
            "imported {} as {} ({format}, {disk_count} disk{}) in {seconds:.2} s\n{text}",
            args.name,
            image.id,
            if disk_count == 1 { "" } else { "s" },
        )
    })?;
    Ok(())
}

//! One module per command group; each turns parsed options into store calls and output.

mod bake;
mod check;
pub(crate) mod copy;
mod export;
mod gc;
mod image;
mod import;
mod key;
mod pull;
mod recycle;
mod report;
mod restore;
mod snapshot;
mod store;

use anyhow::{Context, Result};
use blockyard_store::{SnapshotId, Store};

use crate::cli::{Cli, Command};
use crate::output::Output;
use crate::settings::{ConfigFile, StoreChoice, master_key};

/// Runs the command the user asked for.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    let config = ConfigFile::load(cli.global.config.as_deref())?;
    let out = Output {
        json: cli.global.json,
        quiet: cli.global.quiet,
    };
    match &cli.command {
        Command::Store(command) => store::run(command, &config, &cli.global, out).await,
        Command::Snapshot(command) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            snapshot::run(command, &store, out, &config).await
        }
        Command::Restore(args) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            restore::run(args, &store, out).await
        }
        Command::Pull(args) => {
            let store = open(&config.choose(&cli.global, args.from.as_deref())?).await?;
            pull::run(args, &store, out).await
        }
        Command::Import(args) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            import::run(args, &store, out, &config).await
        }
        Command::Export(args) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            export::run(args, &store, out, &config).await
        }
        Command::Check(args) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            check::run(args, &store, out).await
        }
        Command::Copy(args) => copy::run(args, &config, &cli.global, out).await,
        Command::Image(command) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            image::run(command, &store, out).await
        }
        Command::Retain(args) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            let policy = blockyard_store::RetentionPolicy {
                keep_last: args.keep_last,
                keep_within: args.keep_within,
                dry_run: args.dry_run,
            };
            let report = blockyard_store::retain(&store, &args.family, policy).await?;
            let verb = if report.dry_run {
                "would deregister"
            } else {
                "deregistered"
            };
            out.emit(&report, || {
                format!(
                    "kept {} image(s) of {}; {verb} {} and deleted {} snapshot(s) no image \
                     uses (into the recycle bin)",
                    report.kept.len(),
                    args.family,
                    report.deregistered.len(),
                    report.snapshots_deleted.len()
                )
            })?;
            Ok(())
        }
        Command::Gc(args) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            gc::run(args, &store, out).await
        }
        Command::Recycle(command) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            recycle::run(command, &store, out).await
        }
        Command::Bake(args) => bake::run(args, &config, out).await,
        Command::Report(args) => report::run(args, out),
        Command::Key(command) => {
            let store = open(&config.choose(&cli.global, None)?).await?;
            key::run(command, &store, out).await
        }
    }
}

/// Opens the chosen store with its master key, if it has one.
pub(crate) async fn open(choice: &StoreChoice) -> Result<Store> {
    let key = master_key(&choice.key)?;
    Ok(Store::open(&choice.location, key.as_ref()).await?)
}

/// Parses a snapshot id given on the command line.
fn snapshot_id(text: &str) -> Result<SnapshotId> {
    text.parse()
        .context("give a snapshot id as printed by `blockyard snapshot list`")
}

/// Resolves what the command line names as a disk: a snapshot id, or an image (`img-…`,
/// `FAMILY@latest`, `FAMILY@N`) with one device, or `IMAGE:DEVICE` for one of several.
async fn resolve_snapshot(store: &Store, text: &str) -> Result<SnapshotId> {
    if text.starts_with("snap-") {
        return snapshot_id(text);
    }
    let (reference, device) = match text.split_once(':') {
        Some((reference, device)) => (reference, Some(device)),
        None => (text, None),
    };
    let image = blockyard_store::resolve_image(store, reference)
        .await
        .with_context(|| format!("{text:?} names neither a snapshot nor an image"))?;
    let names = || {
        image
            .devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (device, image.devices.as_slice()) {
        (None, [only]) => Ok(only.snapshot),
        (None, _) => anyhow::bail!(
            "image {} has {} devices ({}); name one as {reference}:DEVICE",
            image.id,
            image.devices.len(),
            names()
        ),
        (Some(device), devices) => match devices.iter().find(|d| d.name == device) {
            Some(found) => Ok(found.snapshot),
            None => anyhow::bail!(
                "image {} has no device {device}; it has {}",
                image.id,
                names()
            ),
        },
    }
}

//! `blockyard copy SNAP --from STORE --to STORE[,STORE...]`.
//!
//! Every store is first opened without keys. A destination in the source's key domain
//! receives sealed objects verbatim and never needs a key; only a destination in another
//! domain makes this command read the master keys of the source and of that destination.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use blockyard_store::{
    CopyMode, CopyOptions, CopyProgress, DestinationReport, Endpoint, ImageId, Location, RawStore,
    SnapshotId, Store, copy_snapshot, image, image_snapshots, put_image, resolve_image,
};
use bytes::Bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{CopyArgs, Global, KeyArgs};
use crate::output::Output;
use crate::settings::{ConfigFile, StoreChoice};
use crate::units::bytes;

/// One destination in the output: its report, or why it could not even be opened.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Outcome {
    Copied(DestinationReport),
    Image {
        store: String,
        /// The image record is at the destination: every snapshot landed first.
        image_copied: bool,
        /// One report per snapshot of the image, in device order.
        snapshots: Vec<DestinationReport>,
        error: Option<String>,
    },
    Unreachable {
        store: String,
        error: String,
    },
}

impl Outcome {
    fn error(&self) -> Option<&str> {
        match self {
            Self::Copied(report) => report.error.as_deref(),
            Self::Image { error, .. } => error.as_deref(),
            Self::Unreachable { error, .. } => Some(error),
        }
    }

    fn store(&self) -> &str {
        match self {
            Self::Copied(report) => &report.store,
            Self::Image { store, .. } | Self::Unreachable { store, .. } => store,
        }
    }
}

/// What a copy moves: one snapshot, or an image's snapshots and then its record.
enum Target {
    Snapshot(SnapshotId),
    Image {
        id: ImageId,
        /// The source's sealed image record, moved verbatim within a key domain.
        envelope: Bytes,
        snapshots: Vec<SnapshotId>,
    },
}

impl Target {
    /// Resolves what the command line names. An `img-` id needs no key (the record lists its
    /// snapshots in the clear); `FAMILY@latest` reads records, so it needs the source's key.
    async fn resolve(text: &str, choice: &StoreChoice, raw: &RawStore) -> Result<Self> {
        if text.starts_with("snap-") {
            let id = super::snapshot_id(text)?;
            if !raw.has_snapshot(&id).await? {
                bail!("{} has no snapshot {id}", choice.location);
            }
            return Ok(Self::Snapshot(id));
        }
        let id = match text.parse::<ImageId>() {
            Ok(id) => id,
            Err(_) => {
                let store = super::open(choice).await.with_context(|| {
                    format!("{text} is resolved from image records, which need the source's key")
                })?;
                resolve_image(&store, text).await?.id
            }
        };
        let envelope = raw.image_envelope(&id).await?;
        let snapshots = image_snapshots(&id, &envelope)?;
        Ok(Self::Image {
            id,
            envelope,
            snapshots,
        })
    }

    fn snapshots(&self) -> Vec<SnapshotId> {
        match self {
            Self::Snapshot(id) => vec![*id],
            Self::Image { snapshots, .. } => snapshots.clone(),
        }
    }
}

pub(crate) async fn run(
    args: &CopyArgs,
    config: &ConfigFile,
    global: &Global,
    out: Output,
) -> Result<()> {
    let source_choice = config.choose(global, args.from.as_deref())?;
    let source_raw = RawStore::open(&source_choice.location).await?;
    let target = Target::resolve(&args.snapshot, &source_choice, &source_raw).await?;

    // Open every destination without keys; one that cannot be reached is reported, and the
    // others still receive the copy.
    let mut outcomes: Vec<Option<Outcome>> = Vec::new();
    let mut endpoints = Vec::new();
    let mut slots = Vec::new();
    let mut source_keyed: Option<Result<Store, String>> = None;
    for name in &args.to {
        let opened = open_destination(
            config,
            name,
            &args.to_key.to_key_args(),
            &source_choice,
            &source_raw,
            &mut source_keyed,
        )
        .await;
        match opened {
            Ok(endpoint) => {
                slots.push(outcomes.len());
                outcomes.push(None);
                endpoints.push(endpoint);
            }
            Err((store, error)) => outcomes.push(Some(Outcome::Unreachable { store, error })),
        }
    }
    let source = match source_keyed {
        Some(Ok(store)) => Endpoint::with_keys(store),
        _ => Endpoint::keyless(source_raw),
    };

    let options = CopyOptions {
        concurrency: args.concurrency,
        bandwidth: args.bandwidth,
    };
    // Snapshots one after another, each to every destination at once.
    let mut per_destination: Vec<Vec<DestinationReport>> = vec![Vec::new(); endpoints.len()];
    for id in target.snapshots() {
        let bars = Arc::new(Bars::new(&endpoints, out));
        let progress: Arc<dyn CopyProgress> = Arc::clone(&bars) as Arc<dyn CopyProgress>;
        let reports = copy_snapshot(&source, &id, &endpoints, &options, progress).await?;
        bars.clear();
        for (all, report) in per_destination.iter_mut().zip(reports) {
            all.push(report);
        }
    }

    for ((slot, endpoint), mut reports) in slots.into_iter().zip(&endpoints).zip(per_destination) {
        outcomes[slot] = Some(match &target {
            Target::Snapshot(_) => Outcome::Copied(reports.remove(0)),
            Target::Image { id, envelope, .. } => {
                let store = endpoint.raw().location().to_string();
                let failed = reports.iter().find_map(|r| r.error.clone());
                let error = match failed {
                    Some(error) => Some(error),
                    None => copy_image_record(&source, endpoint, id, envelope)
                        .await
                        .err()
                        .map(|e| format!("the snapshots landed, the image record did not: {e:#}")),
                };
                Outcome::Image {
                    store,
                    image_copied: error.is_none(),
                    snapshots: reports,
                    error,
                }
            }
        });
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();

    let (what, name) = match &target {
        Target::Snapshot(id) => ("snapshot", id.to_string()),
        Target::Image { id, .. } => ("image", id.to_string()),
    };
    out.emit(
        &serde_json::json!({
            what: name,
            "snapshots": target.snapshots().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "source": source_choice.location.to_string(),
            "destinations": &outcomes,
        }),
        || outcomes.iter().map(describe).collect::<Vec<_>>().join("\n"),
    )?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.store(), o.error()?)))
        .collect();
    if !failed.is_empty() {
        bail!(
            "the copy failed at {} of {} destinations; {}",
            failed.len(),
            outcomes.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// Opens destination `name`: without keys when it shares the source's key domain, else
/// with its key and with the source's (opened once, on first need).
pub(crate) async fn open_destination(
    config: &ConfigFile,
    name: &str,
    to_key: &KeyArgs,
    source_choice: &StoreChoice,
    source_raw: &RawStore,
    source_keyed: &mut Option<Result<Store, String>>,
) -> std::result::Result<Endpoint, (String, String)> {
    let failed = |store: &str, error: anyhow::Error| (store.to_owned(), format!("{error:#}"));
    let choice = config
        .choose_with_key(name, to_key)
        .map_err(|e| failed(name, e))?;
    let store_name = choice.location.to_string();
    if same_location(&choice.location, &source_choice.location) {
        return Err(failed(
            &store_name,
            anyhow::anyhow!("it is the source store itself"),
        ));
    }
    let raw = RawStore::open(&choice.location)
        .await
        .map_err(|e| failed(&store_name, e.into()))?;
    if CopyMode::between(source_raw, &raw) == CopyMode::Verbatim {
        return Ok(Endpoint::keyless(raw));
    }

    // Another key domain: blocks are opened and sealed again, which needs both keys.
    if source_keyed.is_none() {
        *source_keyed = Some(
            super::open(source_choice)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
    if let Some(Err(error)) = source_keyed {
        return Err((
            store_name,
            format!(
                "it is in another key domain, so the copy needs the source's key, and the \
                 source does not open: {error}"
            ),
        ));
    }
    let store = super::open(&choice).await.map_err(|e| {
        failed(
            &store_name,
            e.context("it is in another key domain, so the copy needs its key"),
        )
    })?;
    Ok(Endpoint::with_keys(store))
}

/// Stores an image's record at a destination that holds all its snapshots: the sealed
/// bytes as they are within a key domain, else the record sealed again with its keys.
pub(crate) async fn copy_image_record(
    source: &Endpoint,
    destination: &Endpoint,
    id: &ImageId,
    envelope: &Bytes,
) -> Result<()> {
    if CopyMode::between(source.raw(), destination.raw()) == CopyMode::Verbatim {
        destination
            .raw()
            .put_image_envelope(id, envelope.clone())
            .await?;
        return Ok(());
    }
    let (Some(from), Some(to)) = (source.store(), destination.store()) else {
        bail!("a copy into another key domain needs the keys of both stores");
    };
    let record = image(from, id).await?;
    put_image(to, &record).await?;
    Ok(())
}

/// Whether two locations name the same store, comparing local folders by their real path.
fn same_location(a: &Location, b: &Location) -> bool {
    match (a.local_path(), b.local_path()) {
        (Some(a), Some(b)) => match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        },
        // Every memory:// location is a store of its own, faults or not.
        _ => a.to_string() == b.to_string() && a.to_string() != Location::Memory.to_string(),
    }
}

/// One line per destination for people.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unreachable { store, error } => format!("{store}: failed: {error}"),
        Outcome::Image {
            store,
            snapshots,
            error,
            ..
        } => {
            let blocks: u64 = snapshots.iter().map(|r| r.blocks_copied).sum();
            let moved: u64 = snapshots.iter().map(|r| r.bytes_moved).sum();
            match error {
                Some(error) => format!("{store}: failed: {error}"),
                None => format!(
                    "{store}: image and {} snapshots, {blocks} blocks copied, {} moved",
                    snapshots.len(),
                    bytes(moved)
                ),
            }
        }
        Outcome::Copied(report) => {
            let what = if report.already_present {
                "already held the snapshot".to_owned()
            } else {
                let mode = match report.mode {
                    CopyMode::Verbatim => "verbatim",
                    CopyMode::Reseal => "resealed",
                };
                format!(
                    "{} blocks copied ({mode}), {} already present, {} moved in {:.2} s, \
                     {} requests",
                    report.blocks_copied,
                    report.blocks_present,
                    bytes(report.bytes_moved),
                    report.seconds,
                    report.requests.total
                )
            };
            match &report.error {
                Some(error) => format!("{}: failed after {what}: {error}", report.store),
                None => format!("{}: {what}", report.store),
            }
        }
    }
}

/// One progress bar per destination: blocks planned and stored, bytes moved, ETA.
pub(crate) struct Bars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
    moved: Vec<AtomicU64>,
}

impl Bars {
    pub(crate) fn new(destinations: &[Endpoint], out: Output) -> Self {
        let visible = !out.quiet && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>24} [{bar:25}] {pos}/{len} blocks {msg} eta {eta}",
        )
        .map(|style| style.progress_chars("=> "));
        let bars = destinations
            .iter()
            .map(|destination| {
                let bar = multi.add(ProgressBar::new(0));
                if let Ok(style) = &style {
                    bar.set_style(style.clone());
                }
                bar.set_prefix(destination.raw().location().to_string());
                bar
            })
            .collect();
        Self {
            _multi: multi,
            moved: destinations.iter().map(|_| AtomicU64::new(0)).collect(),
            bars,
        }
    }

    pub(crate) fn clear(&self) {
        for bar in &self.bars {
            bar.finish_and_clear();
        }
    }
}

impl CopyProgress for Bars {
    fn planned(&self, destination: usize, blocks: u64) {
        if let Some(bar) = self.bars.get(destination) {
            bar.set_length(blocks);
        }
    }

    fn moved(&self, destination: usize, moved: u64) {
        if let (Some(bar), Some(total)) = (self.bars.get(destination), self.moved.get(destination))
        {
            let total = total.fetch_add(moved, Ordering::Relaxed) + moved;
            bar.inc(1);
            bar.set_message(bytes(total));
        }
    }

    fn finished(&self, destination: usize, error: Option<&str>) {
        if let Some(bar) = self.bars.get(destination) {
            match error {
                Some(_) => bar.abandon_with_message("failed"),
                None => bar.finish(),
            }
        }
    }
}

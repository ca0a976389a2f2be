//! `blockyard copy SNAP --from STORE --to STORE[,STORE...]`.
//!
//! Every store is first opened without keys. A destination in the source's key domain
//! receives sealed objects verbatim and never needs a key; only a destination in another
//! domain makes this command read the master keys of the source and of that destination.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use blockyard_store::{
    CopyMode, CopyOptions, CopyProgress, DestinationReport, Endpoint, Location, RawStore, Store,
    copy_snapshot,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{CopyArgs, Global};
use crate::output::Output;
use crate::settings::{ConfigFile, StoreChoice};
use crate::units::bytes;

/// One destination in the output: its report, or why it could not even be opened.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Outcome {
    Copied(DestinationReport),
    Unreachable { store: String, error: String },
}

impl Outcome {
    fn error(&self) -> Option<&str> {
        match self {
            Self::Copied(report) => report.error.as_deref(),
            Self::Unreachable { error, .. } => Some(error),
        }
    }

    fn store(&self) -> &str {
        match self {
            Self::Copied(report) => &report.store,
            Self::Unreachable { store, .. } => store,
        }
    }
}

pub(crate) async fn run(
    args: &CopyArgs,
    config: &ConfigFile,
    global: &Global,
    out: Output,
) -> Result<()> {
    let id = super::snapshot_id(&args.snapshot)?;
    let source_choice = config.choose(global, args.from.as_deref())?;
    let source_raw = RawStore::open(&source_choice.location).await?;
    if !source_raw.has_snapshot(&id).await? {
        bail!("{} has no snapshot {id}", source_choice.location);
    }

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
            args,
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
    let bars = Arc::new(Bars::new(&endpoints, out));
    let progress: Arc<dyn CopyProgress> = Arc::clone(&bars) as Arc<dyn CopyProgress>;
    let reports = copy_snapshot(&source, &id, &endpoints, &options, progress).await?;
    bars.clear();
    for (slot, report) in slots.into_iter().zip(reports) {
        outcomes[slot] = Some(Outcome::Copied(report));
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();

    out.emit(
        &serde_json::json!({
            "snapshot": id.to_string(),
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
async fn open_destination(
    config: &ConfigFile,
    name: &str,
    args: &CopyArgs,
    source_choice: &StoreChoice,
    source_raw: &RawStore,
    source_keyed: &mut Option<Result<Store, String>>,
) -> std::result::Result<Endpoint, (String, String)> {
    let failed = |store: &str, error: anyhow::Error| (store.to_owned(), format!("{error:#}"));
    let choice = config
        .choose_with_key(name, &args.to_key.to_key_args())
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
struct Bars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
    moved: Vec<AtomicU64>,
}

impl Bars {
    fn new(destinations: &[Endpoint], out: Output) -> Self {
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

    fn clear(&self) {
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

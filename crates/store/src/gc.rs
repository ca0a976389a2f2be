//! Garbage collection: deleting the blocks and segments nothing references, while other
//! machines keep writing, with no lock.
//!
//! One run goes through these steps, each safe to stop after (see [`condemned`] for the
//! objects and `docs/architecture.md` for why it is safe):
//!
//! 1. **Mark.** Read every commit record, live and in the recycle bin, and every segment
//!    they name; list the segments and blocks in the store. Those no record reaches and
//!    older than the grace by the store's clock are condemned: written as lists, then
//!    `marked`, whose store time *M* is the run's mark.
//! 2. **Wait** until the store's clock passes *M* plus the grace and every session that
//!    started before *M* has ended, or has missed heartbeats for the session timeout and
//!    been given a tombstone (then it cannot commit).
//! 3. **Re-mark** against the records written meanwhile, and spare what they reach.
//! 4. **Sweep.** Write `sweeping`, then spare everything a session has revived; delete the
//!    copy maps that lead to condemned segments, then the segments, then the blocks, in
//!    parallel batches, refreshing `sweeping` and re-reading the revived markers as it goes.
//! 5. **Done.** Write `done`, then clear the run away.
//!
//! A run killed before `marked` left lists nobody reads; a later run removes them. A run
//! killed after it is resumed by the next `gc` from step 2.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockyard_crypto::ObjectId;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use serde::Serialize;

use crate::condemned::{self, Condemned, IDS_PER_LIST, Kind};
use crate::error::{Result, StoreError};
use crate::layout;
use crate::progress::Progress;
use crate::raw::{RawStore, store_second};
use crate::recycle::store_time;
use crate::session::{self, DEFAULT_SESSION_TIMEOUT, HEARTBEAT};
use crate::snapshot::SnapshotId;
use crate::store::Store;
use crate::writer::unique;

/// The grace when none is given: objects younger than this are never condemned.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// Deletes in flight at once.
pub const DEFAULT_DELETE_CONCURRENCY: usize = 32;

/// Deletes between two looks at the revived markers, at most.
const DELETE_BATCH: usize = 1024;

/// Store clocks are compared across objects, and a store may run several nodes whose
/// clocks differ a little: a session that started this close after a mark is waited for as
/// if it had started before it.
pub const DEFAULT_CLOCK_SLACK: Duration = Duration::from_secs(5);

/// What a run does.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Objects younger than this are not condemned, and condemned objects are not deleted
    /// before this has passed since the mark.
    pub grace: Duration,
    /// Report what would be condemned; write nothing (but the clock object).
    pub dry_run: bool,
    /// Wait for older sessions and the grace; without it a run that must wait is left for
    /// the next `gc` to finish.
    pub wait: bool,
    /// A session whose heartbeat is this old by the store's clock is taken for dead.
    pub session_timeout: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
    /// Deletes in flight at once.
    pub concurrency: usize,
    /// Sessions that started up to this long after a mark are waited for too.
    pub clock_slack: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            dry_run: false,
            wait: true,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            poll: Duration::from_secs(1),
            concurrency: DEFAULT_DELETE_CONCURRENCY,
            clock_slack: DEFAULT_CLOCK_SLACK,
        }
    }
}

/// What a gc did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// The run this gc started, if it condemned anything.
    pub run: Option<String>,
    /// Earlier runs this gc finished.
    pub resumed: Vec<String>,
    /// Runs left waiting for sessions or the grace (only without `wait`).
    pub pending: Vec<String>,
    /// Commit records read, live and binned.
    pub snapshots: u64,
    /// Segments the records reach.
    pub segments_referenced: u64,
    /// Blocks the records reach.
    pub blocks_referenced: u64,
    /// Segments and blocks in the store when they were listed.
    pub segments_listed: u64,
    /// Blocks in the store when they were listed.
    pub blocks_listed: u64,
    /// Unreferenced but younger than the grace, so kept.
    pub too_young: u64,
    /// Segments condemned by this gc's own run.
    pub segments_condemned: u64,
    /// Blocks condemned by this gc's own run.
    pub blocks_condemned: u64,
    /// Bytes of the blocks condemned by this gc's own run.
    pub bytes_condemned: u64,
    /// Condemned objects spared because a commit reached them or a writer revived them.
    pub spared: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Blocks deleted.
    pub blocks_deleted: u64,
    /// Copy maps deleted because the segment they lead to was.
    pub copy_maps_deleted: u64,
    /// Sessions found dead and given a tombstone.
    pub sessions_expired: Vec<String>,
    /// Promotion refs removed because their image is gone (not even in the bin).
    pub refs_deleted: u64,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// Collects garbage; see the module docs.
pub async fn collect_garbage(
    store: &Store,
    options: &GcOptions,
    progress: Arc<dyn Progress>,
) -> Result<GcReport> {
    if options.session_timeout < HEARTBEAT * 3 {
        tracing::warn!(
            "a session timeout under three heartbeats ({HEARTBEAT:?} each) may take live \
             writers for dead"
        );
    }
    let raw = store.raw();
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let start = store_time(store).await?;

    if !options.dry_run {
        for (run, state) in condemned::run_states(&raw).await? {
            let stale = state
                .newest
                .is_none_or(|newest| start - newest > chrono_duration(options.session_timeout));
            if state.done || (state.marked.is_none() && stale) {
                // Finished, or abandoned before it was marked: nobody reads it.
                clear_run(&raw, &run, options.concurrency).await?;
            } else if let Some(mark) = state.marked {
                let condemned = condemned::read_condemned(&raw, &run, state.lists).await?;
                let run_state = Run {
                    name: run.clone(),
                    mark,
                    condemned,
                    seen: None,
                };
                if finish(store, run_state, options, &progress, &mut report).await? {
                    report.resumed.push(run);
                } else {
                    report.pending.push(run);
                }
            }
        }
    }

    let marking = mark(store, &HashSet::new(), &[], &[]).await?;
    report.snapshots = marking.records.len() as u64;
    report.segments_referenced = marking.segments.len() as u64;
    report.blocks_referenced = marking.blocks.len() as u64;
    let cutoff = start - chrono_duration(options.grace);

    let mut condemned = Condemned::default();
    let mut listing = raw.list_stream(&Path::from("manifests"));
    while let Some(meta) = listing.try_next().await? {
        let Some(id) = layout::id_of(&meta.location) else {
            continue;
        };
        report.segments_listed += 1;
        if marking.segments.binary_search(&id).is_err() {
            if store_second(meta.last_modified) < cutoff {
                condemned.segments.push(id);
            } else {
                report.too_young += 1;
            }
        }
    }
    let mut listing = raw.list_stream(&layout::blocks());
    while let Some(meta) = listing.try_next().await? {
        let Some(id) = layout::id_of(&meta.location) else {
            continue;
        };
        report.blocks_listed += 1;
        if marking.blocks.binary_search(&id).is_err() {
            if store_second(meta.last_modified) < cutoff {
                condemned.blocks.push(id);
                report.bytes_condemned += meta.size;
            } else {
                report.too_young += 1;
            }
        }
    }
    drop(listing);
    report.segments_condemned = condemned.segments.len() as u64;
    report.blocks_condemned = condemned.blocks.len() as u64;

    if !options.dry_run {
        report.refs_deleted = remove_orphan_refs(&raw, cutoff).await?;
    }
    if options.dry_run || condemned.is_empty() {
        return Ok(report);
    }

    // Sorted for the lists and for lookups.
    condemned.blocks.sort_unstable();
    condemned.segments.sort_unstable();
    let name = format!("gc-{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut number = 0;
    for (kind, ids) in [
        (Kind::Segment, &condemned.segments),
        (Kind::Block, &condemned.blocks),
    ] {
        for chunk in ids.chunks(IDS_PER_LIST) {
            raw.put(
                &condemned::list_path(&name, number),
                condemned::encode_list(kind, chunk),
            )
            .await?;
            number += 1;
        }
    }
    raw.sync().await?;
    let marked = condemned::marked_path(&name);
    raw.put(&marked, Bytes::from(format!("{number} lists\n")))
        .await?;
    let mark_time = raw.last_modified(&marked).await?;
    tracing::info!(
        run = %name,
        blocks = condemned.blocks.len(),
        segments = condemned.segments.len(),
        "condemned"
    );
    report.run = Some(name.clone());

    let run = Run {
        name: name.clone(),
        mark: mark_time,
        condemned,
        seen: Some(marking),
    };
    if !finish(store, run, options, &progress, &mut report).await? {
        report.pending.push(name);
    }
    Ok(report)
}

/// A marked run being finished.
struct Run {
    name: String,
    mark: DateTime<Utc>,
    condemned: Condemned,
    /// What the mark of this gc found, when this gc made the run; a resumed run re-marks
    /// from nothing.
    seen: Option<Marking>,
}

/// Waits, re-marks and sweeps a marked run. `false` when it must wait and may not.
async fn finish(
    store: &Store,
    mut run: Run,
    options: &GcOptions,
    progress: &Arc<dyn Progress>,
    report: &mut GcReport,
) -> Result<bool> {
    let raw = store.raw();
    let grace = chrono_duration(options.grace);
    let timeout = chrono_duration(options.session_timeout);
    let mut noted = String::new();
    loop {
        let now = store_time(store).await?;
        let mut blockers = Vec::new();
        for session in session::list_sessions(&raw).await? {
            if session.started > run.mark + chrono_duration(options.clock_slack) {
                continue;
            }
            if raw.exists(&condemned::expired_path(&session.id)).await? {
                continue;
            }
            if now - session.last_beat > timeout && expire(&raw, &session.id, now, timeout).await? {
                report.sessions_expired.push(session.id);
                continue;
            }
            blockers.push(session);
        }
        let grace_left = run.mark + grace - now;
        if blockers.is_empty() && grace_left <= chrono::Duration::zero() {
            break;
        }
        if !options.wait {
            return Ok(false);
        }
        let waiting_for: Vec<String> = blockers
            .iter()
            .map(|s| format!("{} ({})", s.id, s.purpose))
            .collect();
        let note = if waiting_for.is_empty() {
            format!(
                "run {}: waiting out the grace until {} (store clock)",
                run.name,
                run.mark + grace
            )
        } else {
            format!(
                "run {}: waiting for {} older writer session(s) to end: {}",
                run.name,
                waiting_for.len(),
                waiting_for.join(", ")
            )
        };
        if note != noted {
            tracing::info!("{note}");
            progress.note(&note);
            noted = note;
        }
        tokio::time::sleep(options.poll).await;
    }

    // Re-mark: what the records written since reach is spared.
    let (skip, known_segments, known_blocks) = match &run.seen {
        Some(seen) => (
            seen.records.iter().copied().collect::<HashSet<_>>(),
            seen.segments.as_slice(),
            seen.blocks.as_slice(),
        ),
        None => (HashSet::new(), &[][..], &[][..]),
    };
    let again = mark(store, &skip, known_segments, known_blocks).await?;
    run.seen = None;
    let before = run.condemned.blocks.len() + run.condemned.segments.len();
    run.condemned
        .segments
        .retain(|id| again.segments.binary_search(id).is_err());
    run.condemned
        .blocks
        .retain(|id| again.blocks.binary_search(id).is_err());
    drop(again);

    // Sweep.
    let sweeping = condemned::sweeping_path(&run.name);
    raw.put(&sweeping, Bytes::from_static(b"sweeping\n"))
        .await?;
    let mut refreshed = Instant::now();
    spare_revived(store, &run.name, &mut run.condemned).await?;
    report.spared += (before - run.condemned.blocks.len() - run.condemned.segments.len()) as u64;

    let doomed_segments: HashSet<ObjectId> = run.condemned.segments.iter().copied().collect();
    report.copy_maps_deleted +=
        delete_copy_maps(store, &doomed_segments, options.concurrency).await?;
    drop(doomed_segments);

    progress.start((run.condemned.segments.len() + run.condemned.blocks.len()) as u64);
    for kind in [Kind::Segment, Kind::Block] {
        // Sparing removes entries, so the place is kept as the last id deleted.
        let mut after: Option<ObjectId> = None;
        loop {
            if refreshed.elapsed() >= HEARTBEAT {
                raw.put(&sweeping, Bytes::from_static(b"sweeping\n"))
                    .await?;
                refreshed = Instant::now();
                let left = run.condemned.blocks.len() + run.condemned.segments.len();
                spare_revived(store, &run.name, &mut run.condemned).await?;
                report.spared +=
                    (left - run.condemned.blocks.len() - run.condemned.segments.len()) as u64;
            }
            let ids = match kind {
                Kind::Segment => &run.condemned.segments,
                Kind::Block => &run.condemned.blocks,
            };
            let from = after.map_or(0, |last| ids.partition_point(|id| *id <= last));
            let batch = &ids[from..(from + DELETE_BATCH).min(ids.len())];
            let Some(last) = batch.last().copied() else {
                break;
            };
            let paths: Vec<Path> = batch
                .iter()
                .map(|id| match kind {
                    Kind::Segment => layout::segment(id),
                    Kind::Block => layout::block(id),
                })
                .collect();
            let deleted = raw.delete_all(paths, options.concurrency).await?;
            match kind {
                Kind::Segment => report.segments_deleted += deleted,
                Kind::Block => report.blocks_deleted += deleted,
            }
            progress.advance(deleted);
            after = Some(last);
        }
    }

    raw.put(
        &condemned::done_path(&run.name),
        Bytes::from_static(b"done\n"),
    )
    .await?;
    clear_run(&raw, &run.name, options.concurrency).await?;
    Ok(true)
}

/// Removes from `condemned` every object a session has revived, and the blocks of every
/// revived segment: whoever relies on a segment relies on its blocks.
async fn spare_revived(store: &Store, run: &str, condemned: &mut Condemned) -> Result<()> {
    let revived = condemned::revived(&store.raw(), run).await?;
    if revived.is_empty() {
        return Ok(());
    }
    let mut blocks: HashSet<ObjectId> = revived
        .iter()
        .filter(|(kind, _)| *kind == Kind::Block)
        .map(|(_, id)| *id)
        .collect();
    let segments: HashSet<ObjectId> = revived
        .iter()
        .filter(|(kind, _)| *kind == Kind::Segment)
        .map(|(_, id)| *id)
        .collect();
    for id in &segments {
        match store.read_segment(id).await {
            Ok(segment) => blocks.extend(segment.entries().iter().flatten().copied()),
            // Deleted before the writer revived it: the writer stores it again, with its
            // blocks, and revives those one by one.
            Err(StoreError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    condemned.blocks.retain(|id| !blocks.contains(id));
    condemned.segments.retain(|id| !segments.contains(id));
    Ok(())
}

/// Gives a session that missed its heartbeats a tombstone, then looks at its heartbeat
/// again: a session that beat in between is alive after all. `true` when it is dead.
async fn expire(
    raw: &RawStore,
    session: &str,
    now: DateTime<Utc>,
    timeout: chrono::Duration,
) -> Result<bool> {
    let tombstone = condemned::expired_path(session);
    raw.put(&tombstone, Bytes::from_static(b"expired\n"))
        .await?;
    let path = Path::from(format!("sessions/{session}"));
    match raw.last_modified_if_any(&path).await? {
        Some(beat) if now - beat <= timeout => {
            // It beat after all; it will see the tombstone when it commits, so the
            // tombstone cannot stay. Take it back while the session is seen alive.
            raw.delete(&tombstone).await?;
            Ok(false)
        }
        _ => {
            raw.delete(&path).await?;
            tracing::info!(session, "session missed its heartbeats; taken for dead");
            Ok(true)
        }
    }
}

/// Deletes every object of a run, `done` last.
async fn clear_run(raw: &RawStore, run: &str, concurrency: usize) -> Result<()> {
    let done = condemned::done_path(run);
    let paths: Vec<Path> = raw
        .list(&Path::from(format!("gc/runs/{run}")))
        .await?
        .into_iter()
        .map(|meta| meta.location)
        .filter(|path| *path != done)
        .collect();
    raw.delete_all(paths, concurrency).await?;
    raw.delete(&done).await
}

/// What the records reach.
struct Marking {
    records: Vec<SnapshotId>,
    /// Sorted.
    segments: Vec<ObjectId>,
    /// Sorted.
    blocks: Vec<ObjectId>,
}

/// Reads every record (live and binned) not in `skip`, and the segments they name that are
/// not in `known_segments`; returns what they reach, `known_*` included. A record that
/// cannot be read stops the run: what it references is unknown.
async fn mark(
    store: &Store,
    skip: &HashSet<SnapshotId>,
    known_segments: &[ObjectId],
    known_blocks: &[ObjectId],
) -> Result<Marking> {
    let raw = store.raw();
    let mut records = Vec::new();
    let mut segments: Vec<ObjectId> = known_segments.to_vec();
    for folder in [layout::snapshots(), layout::binned_snapshots()] {
        for meta in raw.list(&folder).await? {
            let Some(id) = layout::snapshot_of(&meta.location) else {
                continue;
            };
            records.push(id);
            if skip.contains(&id) {
                continue;
            }
            let Some(sealed) = raw.get(&meta.location).await? else {
                // Moved between the bin and its place since the listing: read it there.
                let other = if folder == layout::snapshots() {
                    layout::binned_snapshots().child(id.to_string())
                } else {
                    layout::snapshot(&id)
                };
                if let Some(sealed) = raw.get(&other).await? {
                    segments.extend(store.open_record(&id, &sealed)?.segments);
                }
                continue;
            };
            segments.extend(store.open_record(&id, &sealed)?.segments);
        }
    }
    segments.sort_unstable();
    segments.dedup();

    let mut blocks: Vec<ObjectId> = known_blocks.to_vec();
    let mut compacted = blocks.len();
    let new_segments: Vec<ObjectId> = unique(&segments)
        .into_iter()
        .filter(|id| known_segments.binary_search(id).is_err())
        .collect();
    let mut reads = stream::iter(new_segments)
        .map(|id| async move { store.read_segment(&id).await })
        .buffer_unordered(16);
    while let Some(segment) = reads.next().await {
        blocks.extend(segment?.entries().iter().flatten().copied());
        // Segments of related snapshots share most blocks: keep the list compact.
        if blocks.len() > 2 * compacted.max(1 << 16) {
            blocks.sort_unstable();
            blocks.dedup();
            compacted = blocks.len();
        }
    }
    blocks.sort_unstable();
    blocks.dedup();
    records.sort_unstable();
    Ok(Marking {
        records,
        segments,
        blocks,
    })
}

/// Deletes the copy maps that lead to a segment about to be deleted: a copy trusts the
/// segment a map names to be there.
async fn delete_copy_maps(
    store: &Store,
    doomed: &HashSet<ObjectId>,
    concurrency: usize,
) -> Result<u64> {
    if doomed.is_empty() {
        return Ok(0);
    }
    let raw = store.raw();
    let mut stale = Vec::new();
    for meta in raw.list(&Path::from("copymaps")).await? {
        let mut parts = meta.location.parts();
        let (Some(_), Some(domain), Some(_), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(segment) = name.as_ref().parse::<ObjectId>() else {
            continue;
        };
        let keep = matches!(
            store.copy_map(domain.as_ref(), &segment).await,
            Ok(Some(ours)) if !doomed.contains(&ours)
        );
        // Doomed, gone meanwhile, or unreadable: a map is only a shortcut.
        if !keep {
            stale.push(meta.location.clone());
        }
    }
    raw.delete_all(stale, concurrency).await
}

/// Removes refs older than `cutoff` whose image is neither registered nor in the bin.
async fn remove_orphan_refs(raw: &RawStore, cutoff: DateTime<Utc>) -> Result<u64> {
    let mut gone = 0;
    let mut known: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for meta in raw.list(&Path::from("refs")).await? {
        if store_second(meta.last_modified) >= cutoff {
            continue;
        }
        let Some(image) = meta
            .location
            .filename()
            .and_then(crate::family::ref_image)
            .map(|id| id.to_string())
        else {
            continue;
        };
        let exists = match known.get(&image) {
            Some(exists) => *exists,
            None => {
                let exists = raw.exists(&Path::from(format!("images/{image}"))).await?
                    || raw
                        .exists(&Path::from(format!("recycle/images/{image}")))
                        .await?;
                known.insert(image, exists);
                exists
            }
        };
        if !exists {
            raw.delete(&meta.location).await?;
            gone += 1;
        }
    }
    Ok(gone)
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

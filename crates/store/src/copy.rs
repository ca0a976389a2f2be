//! Copying a snapshot to other stores, moving only the blocks each one lacks.
//!
//! Blocks are named by their content, so a destination that holds a block from any
//! snapshot, of any lineage, already has it. A copy runs in three phases:
//!
//! ```text
//!  plan      per destination, concurrently: is the snapshot there already? which of its
//!            segments are missing? which blocks of those segments are missing (known from
//!            the destination's own manifests first, then one HEAD each)?
//!  move      one reader fetches each needed block from the source once and hands it to
//!            every destination that needs it; each destination uploads with its own
//!            concurrency and bandwidth limit
//!  commit    per destination: segments, a sync, then the commit record, last
//! ```
//!
//! **Within a key domain** (same domain id, encryption and block size) every object is
//! sealed to the same bytes in both stores, so the copy moves envelopes verbatim and needs
//! no key: what a snapshot references is in the clear parts of its commit record and
//! segments (see [`RawStore`]).
//!
//! **Across key domains** (including to or from an unencrypted store) each missing block is
//! opened with the source's keys, named and sealed with the destination's, and segments and
//! the record are rebuilt. To stay incremental, the destination keeps a *copy map* per
//! source segment (`copymaps/<source domain>/…`: the id of the destination segment that
//! translates it). A later copy reuses mapped segments outright, and for a changed segment
//! pairs the source's and destination's segments of an earlier copied snapshot position by
//! position, which translates every block that did not change without reading it.
//!
//! A destination that fails is reported and the others carry on. Nothing is committed at a
//! destination until all its blocks and segments are stored, so a copy killed at any point
//! leaves no half snapshot, and running it again moves only what had not landed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use blockyard_crypto::ObjectId;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tracing::debug;

use crate::condemned::Kind;
use crate::error::{Result, StoreError};
use crate::raw::{RawStore, record_segments, segment_of};
use crate::resilient::{AttemptCounts, RequestCounts};
use crate::segment::Segment;
use crate::session::Session;
use crate::snapshot::{SnapshotId, SnapshotRecord};
use crate::store::Store;

/// Blocks in flight from the source, and uploads in flight per destination, by default.
pub const DEFAULT_COPY_CONCURRENCY: usize = 16;

/// Snapshots of the destination (newest first) whose segments are looked at to learn which
/// blocks it already holds, or, across domains, which earlier copies to translate through.
/// Bounded so that planning costs a few requests whatever the store holds.
const REFERENCE_PROBES: usize = 8;

/// Blocks queued per destination beyond its uploads in flight, as a multiple of the
/// concurrency. A destination whose queue is full is handed the block's id instead and reads
/// it from the source itself, so a slow destination never holds the others back.
const QUEUE_FACTOR: usize = 2;

/// How long the reader waits for a destination whose queue is full before it marks it as
/// lagging and hands it only ids from then on.
const LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// Options for [`copy_snapshot`].
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Blocks read from the source at once, and uploads in flight per destination.
    pub concurrency: usize,
    /// Upload rate limit per destination, in bytes per second; `None` for no limit.
    pub bandwidth: Option<u64>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_COPY_CONCURRENCY,
            bandwidth: None,
        }
    }
}

/// One side of a copy: a store's objects, and the open store when its key is at hand.
#[derive(Debug, Clone)]
pub struct Endpoint {
    raw: RawStore,
    store: Option<Store>,
}

impl Endpoint {
    /// A store reached without keys: enough for either side of a copy within a key domain.
    pub fn keyless(raw: RawStore) -> Self {
        Self { raw, store: None }
    }

    /// A store opened with its key: needed on both sides of a copy across key domains.
    pub fn with_keys(store: Store) -> Self {
        Self {
            raw: store.raw(),
            store: Some(store),
        }
    }

    /// The store's objects.
    pub fn raw(&self) -> &RawStore {
        &self.raw
    }

    /// The store opened with its key, when it was.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    fn name(&self) -> String {
        self.raw.location().to_string()
    }
}

/// How a destination receives a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Same key domain: envelopes move as they are, no key needed.
    Verbatim,
    /// Another key domain: blocks are opened, renamed and sealed again.
    Reseal,
}

impl CopyMode {
    /// How `source` copies to `destination`.
    pub fn between(source: &RawStore, destination: &RawStore) -> Self {
        let (a, b) = (source.config(), destination.config());
        let same_domain = a.key_domain.id == b.key_domain.id
            && a.key_domain.encrypted == b.key_domain.encrypted
            && a.block_size == b.block_size
            && a.segment_blocks == b.segment_blocks;
        if same_domain {
            Self::Verbatim
        } else {
            Self::Reseal
        }
    }
}

/// What a copy did at one destination.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationReport {
    /// The destination store.
    pub store: String,
    /// How it received the copy.
    pub mode: CopyMode,
    /// The snapshot, under the same id as at the source.
    pub snapshot: SnapshotId,
    /// The destination held the snapshot before this copy; nothing was moved.
    pub already_present: bool,
    /// Distinct segments the snapshot has.
    pub segments: u64,
    /// Of those, segments the destination already held (with all their blocks).
    pub segments_present: u64,
    /// Segments stored at the destination by this copy.
    pub segments_copied: u64,
    /// Distinct data blocks in the segments the destination lacked.
    pub blocks_checked: u64,
    /// Of those, blocks it already held.
    pub blocks_present: u64,
    /// Blocks stored at the destination by this copy.
    pub blocks_copied: u64,
    /// Bytes uploaded to the destination: blocks, segments, maps and the record.
    pub bytes_moved: u64,
    /// Wall time from the start of the copy to this destination's end, in seconds.
    pub seconds: f64,
    /// Requests this copy made of the destination, by kind, retries included.
    pub requests: RequestTotals,
    /// Why this destination failed; `None` when it holds the snapshot now.
    pub error: Option<String>,
}

/// Requests made of one store, as attempts of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTotals {
    /// Object reads.
    pub get: u64,
    /// Existence checks.
    pub head: u64,
    /// Object writes.
    pub put: u64,
    /// Listings.
    pub list: u64,
    /// Deletions.
    pub delete: u64,
    /// Anything else.
    pub other: u64,
    /// Attempts that repeated a request after a transient failure (counted above too).
    pub retries: u64,
    /// Every attempt.
    pub total: u64,
}

impl std::ops::AddAssign for RequestTotals {
    fn add_assign(&mut self, more: Self) {
        self.get += more.get;
        self.head += more.head;
        self.put += more.put;
        self.list += more.list;
        self.delete += more.delete;
        self.other += more.other;
        self.retries += more.retries;
        self.total += more.total;
    }
}

impl RequestTotals {
    /// The requests counted between `before` and `after` of one store.
    pub fn between(before: &RequestCounts, after: &RequestCounts) -> Self {
        let kind = |a: AttemptCounts, b: AttemptCounts| b.total().saturating_sub(a.total());
        Self {
            get: kind(before.get, after.get),
            head: kind(before.head, after.head),
            put: kind(before.put, after.put),
            list: kind(before.list, after.list),
            delete: kind(before.delete, after.delete),
            other: kind(before.other, after.other),
            retries: after.retries.saturating_sub(before.retries),
            total: after.total().saturating_sub(before.total()),
        }
    }
}

/// Receives progress from a copy. Called from async tasks; must be cheap.
pub trait CopyProgress: Send + Sync {
    /// Destination `destination` will receive `blocks` blocks.
    fn planned(&self, destination: usize, blocks: u64) {
        let _ = (destination, blocks);
    }

    /// Destination `destination` stored one more block of `bytes` bytes.
    fn moved(&self, destination: usize, bytes: u64) {
        let _ = (destination, bytes);
    }

    /// Destination `destination` is done; `error` says why it failed.
    fn finished(&self, destination: usize, error: Option<&str>) {
        let _ = (destination, error);
    }
}

impl CopyProgress for crate::NoProgress {}

/// Copies snapshot `id` from `source` to every destination, each receiving only what it
/// lacks. Returns one report per destination, in order; a destination's failure is in its
/// report, and only a failure to read the source is an error of the whole copy.
pub async fn copy_snapshot(
    source: &Endpoint,
    id: &SnapshotId,
    destinations: &[Endpoint],
    options: &CopyOptions,
    progress: Arc<dyn CopyProgress>,
) -> Result<Vec<DestinationReport>> {
    let started = Instant::now();
    let concurrency = options.concurrency.max(1);
    let before: Vec<RequestCounts> = destinations.iter().map(|d| d.raw.requests()).collect();
    let envelope = source.raw.record_envelope(id).await?;
    let record = match &source.store {
        Some(store) => Some(store.snapshot(id).await?),
        None => None,
    };
    let segments = match &record {
        Some(record) => record.segments.clone(),
        None => record_segments(id, &envelope)?,
    };
    let shared = Arc::new(Shared {
        source: source.clone(),
        id: *id,
        envelope,
        record,
        segments,
        cache: SegmentCache::default(),
        concurrency,
    });
    for segment in &shared.segments {
        shared.cache.slot(segment);
    }

    // Plan every destination at once; one that cannot be planned is reported and left out.
    let plans: Vec<Result<Plan>> = futures::future::join_all(
        destinations
            .iter()
            .map(|destination| plan(Arc::clone(&shared), destination.clone())),
    )
    .await;

    let mut reports = Vec::with_capacity(destinations.len());
    let mut workers = Vec::new();
    let mut wanted: HashMap<ObjectId, Vec<usize>> = HashMap::new();
    for (index, (destination, plan)) in destinations.iter().zip(plans).enumerate() {
        let mut report = DestinationReport {
            store: destination.name(),
            mode: CopyMode::between(&source.raw, &destination.raw),
            snapshot: *id,
            already_present: false,
            segments: distinct(&shared.segments).len() as u64,
            segments_present: 0,
            segments_copied: 0,
            blocks_checked: 0,
            blocks_present: 0,
            blocks_copied: 0,
            bytes_moved: 0,
            seconds: 0.0,
            requests: RequestTotals::default(),
            error: None,
        };
        match plan {
            Err(error) => {
                report.error = Some(error_text(&error));
                report.seconds = started.elapsed().as_secs_f64();
                progress.finished(index, report.error.as_deref());
            }
            Ok(plan) => {
                report.already_present = plan.already_present;
                report.segments_present = report.segments - plan.missing_segments.len() as u64;
                report.blocks_checked = plan.blocks_checked;
                report.blocks_present = plan.blocks_checked - plan.needed.len() as u64;
                progress.planned(index, plan.needed.len() as u64);
                for block in &plan.needed {
                    wanted.entry(*block).or_default().push(index);
                }
                workers.push(Worker::start(
                    index,
                    destination.clone(),
                    plan,
                    Arc::clone(&shared),
                    options.bandwidth,
                    Arc::clone(&progress),
                ));
            }
        }
        reports.push(report);
    }

    // Move: each needed block is read once and offered to every destination that needs it.
    let senders: HashMap<usize, Senders> = workers
        .iter()
        .map(|worker| (worker.index, worker.senders.clone()))
        .collect();
    let read = stream::iter(wanted)
        .map(|(block, targets)| {
            let raw = shared.source.raw.clone();
            async move {
                let sealed = raw.block_envelope(&block).await?;
                Ok::<_, StoreError>((block, sealed, targets))
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|(block, sealed, targets)| {
            let senders = &senders;
            async move {
                for target in targets {
                    if let Some(senders) = senders.get(&target) {
                        senders.offer(block, sealed.clone()).await;
                    }
                }
                Ok(())
            }
        })
        .await;
    drop(senders);
    // When the source failed, no destination may commit: each reports the source's error.
    let read_error = read.err().map(|error| error_text(&error));

    let outcomes = futures::future::join_all(
        workers
            .into_iter()
            .map(|worker| worker.finish(read_error.clone())),
    )
    .await;
    for (index, outcome) in outcomes {
        let report = &mut reports[index];
        match outcome {
            Ok(done) => {
                report.segments_copied = done.segments_copied;
                report.blocks_copied = done.blocks_copied;
                report.bytes_moved = done.bytes_moved;
            }
            Err((error, done)) => {
                report.blocks_copied = done.blocks_copied;
                report.bytes_moved = done.bytes_moved;
                report.error = Some(error);
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        progress.finished(index, report.error.as_deref());
    }
    for ((report, destination), before) in reports.iter_mut().zip(destinations).zip(&before) {
        report.requests = RequestTotals::between(before, &destination.raw.requests());
    }
    if let Some(error) = read_error {
        debug!(%error, "copy stopped: the source failed");
    }
    Ok(reports)
}

/// What every destination's tasks share.
struct Shared {
    source: Endpoint,
    id: SnapshotId,
    /// The source's sealed commit record.
    envelope: Bytes,
    /// The source's commit record, when its key is at hand.
    record: Option<SnapshotRecord>,
    /// The snapshot's segment ids in order.
    segments: Vec<ObjectId>,
    cache: SegmentCache,
    concurrency: usize,
}

impl Shared {
    /// A source segment, read once for every destination that needs it.
    async fn segment(&self, id: &ObjectId) -> Result<Arc<SourceSegment>> {
        let slot = self.cache.slot(id);
        let segment = slot
            .get_or_try_init(|| async {
                let sealed = self.source.raw.segment_envelope(id).await?;
                let segment = match &self.source.store {
                    Some(store) => store.open_segment(id, &sealed)?,
                    None => segment_of(id, &sealed)?,
                };
                Ok::<_, StoreError>(Arc::new(SourceSegment { sealed, segment }))
            })
            .await?;
        Ok(Arc::clone(segment))
    }
}

/// A source segment: its sealed bytes and what they say.
struct SourceSegment {
    sealed: Bytes,
    segment: Segment,
}

#[derive(Default)]
struct SegmentCache {
    slots: Mutex<HashMap<ObjectId, Arc<OnceCell<Arc<SourceSegment>>>>>,
}

impl SegmentCache {
    fn slot(&self, id: &ObjectId) -> Arc<OnceCell<Arc<SourceSegment>>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(*id).or_default())
    }
}

/// What one destination must receive.
struct Plan {
    already_present: bool,
    /// Distinct source segments the destination lacks, in first-use order.
    missing_segments: Vec<ObjectId>,
    /// Distinct data blocks in those segments.
    blocks_checked: u64,
    /// Source block ids to send.
    needed: HashSet<ObjectId>,
    /// Across domains: what is known of the translation so far.
    reseal: Option<ResealPlan>,
    /// The destination's writer session, so that its garbage collection spares what this
    /// copy relies on; `None` when the snapshot is there already.
    session: Option<Session>,
}

/// Across key domains: the translation of the source's ids into the destination's.
struct ResealPlan {
    source: Store,
    destination: Store,
    /// The source's key domain, naming the destination's copy maps.
    source_domain: String,
    /// Destination segment for every source segment already translated.
    segments: HashMap<ObjectId, ObjectId>,
    /// Destination block id for every source block translated without reading it.
    blocks: HashMap<ObjectId, ObjectId>,
}

async fn plan(shared: Arc<Shared>, destination: Endpoint) -> Result<Plan> {
    if destination.raw.has_snapshot(&shared.id).await? {
        return Ok(Plan {
            already_present: true,
            missing_segments: Vec::new(),
            blocks_checked: 0,
            needed: HashSet::new(),
            reseal: None,
            session: None,
        });
    }
    // The session starts before anything at the destination is looked at.
    let session = Session::begin(&destination.raw, "copy").await?;
    let mut plan = match CopyMode::between(&shared.source.raw, &destination.raw) {
        CopyMode::Verbatim => plan_verbatim(&shared, &destination, &session).await?,
        CopyMode::Reseal => plan_reseal(&shared, &destination, &session).await?,
    };
    plan.session = Some(session);
    Ok(plan)
}

async fn plan_verbatim(shared: &Shared, destination: &Endpoint, session: &Session) -> Result<Plan> {
    let raw = &destination.raw;
    let segments = distinct(&shared.segments);
    let present: Vec<bool> = stream::iter(segments.iter().map(|id| async move {
        session.protect(Kind::Segment, id).await?;
        raw.has_segment(id).await
    }))
    .buffered(shared.concurrency)
    .try_collect()
    .await?;
    let missing: Vec<ObjectId> = segments
        .iter()
        .zip(present)
        .filter_map(|(id, present)| (!present).then_some(*id))
        .collect();

    let mut candidates = HashSet::new();
    for id in &missing {
        let segment = shared.segment(id).await?;
        candidates.extend(segment.segment.entries().iter().flatten().copied());
    }
    let blocks_checked = candidates.len() as u64;

    // Blocks the destination's own manifests vouch for need no request: a segment is
    // stored only after its blocks are.
    let missing_indexes: Vec<usize> = (0..shared.segments.len())
        .filter(|i| missing.contains(&shared.segments[*i]))
        .collect();
    if !candidates.is_empty()
        && let Some(reference) = reference_segments(raw, &shared.id, shared.segments.len()).await?
    {
        for index in missing_indexes {
            let Some(theirs) = reference.get(index) else {
                continue;
            };
            if session.is_condemned(Kind::Segment, theirs) {
                continue;
            }
            let sealed = match raw.segment_envelope(theirs).await {
                Ok(sealed) => sealed,
                Err(StoreError::Missing { .. }) => continue,
                Err(error) => return Err(error),
            };
            for block in segment_of(theirs, &sealed)?.entries().iter().flatten() {
                candidates.remove(block);
            }
        }
    }

    let checks: Vec<(ObjectId, bool)> = stream::iter(candidates)
        .map(|block| async move {
            session.protect(Kind::Block, &block).await?;
            Ok::<_, StoreError>((block, raw.has_block(&block).await?))
        })
        .buffer_unordered(shared.concurrency)
        .try_collect()
        .await?;
    let needed = checks
        .into_iter()
        .filter_map(|(block, present)| (!present).then_some(block))
        .collect();
    Ok(Plan {
        already_present: false,
        missing_segments: missing,
        blocks_checked,
        needed,
        reseal: None,
        session: None,
    })
}

/// The segments of the destination's newest snapshot of the same length (else its newest),
/// looked at among the newest [`REFERENCE_PROBES`]; `None` when it has none but `id`.
async fn reference_segments(
    raw: &RawStore,
    id: &SnapshotId,
    length: usize,
) -> Result<Option<Vec<ObjectId>>> {
    let ids = raw.snapshot_ids().await?;
    let mut fallback = None;
    for candidate in ids.iter().rev().filter(|c| *c != id).take(REFERENCE_PROBES) {
        let envelope = match raw.record_envelope(candidate).await {
            Ok(envelope) => envelope,
            Err(StoreError::SnapshotNotFound { .. }) => continue,
            Err(error) => return Err(error),
        };
        let Ok(segments) = record_segments(candidate, &envelope) else {
            continue;
        };
        if segments.len() == length {
            return Ok(Some(segments));
        }
        fallback.get_or_insert(segments);
    }
    Ok(fallback)
}

async fn plan_reseal(shared: &Shared, destination: &Endpoint, session: &Session) -> Result<Plan> {
    let (Some(source), Some(record), Some(target)) = (
        shared.source.store.clone(),
        shared.record.as_ref(),
        destination.store.clone(),
    ) else {
        return Err(StoreError::InvalidArgument(format!(
            "{} and {} are in different key domains, so the copy must open and seal blocks \
             again: it needs the keys of both stores",
            shared.source.name(),
            destination.name()
        )));
    };
    if source.block_size() != target.block_size() {
        return Err(StoreError::InvalidArgument(format!(
            "{} keeps {}-byte blocks and {} keeps {}-byte blocks; a copy cannot cut blocks \
             anew",
            shared.source.name(),
            source.block_size(),
            destination.name(),
            target.block_size()
        )));
    }
    let source_domain = source.keys().domain_id().to_string();

    // Segments an earlier copy translated, and still at the destination.
    let segments = distinct(&record.segments);
    let mut translated = HashMap::new();
    let mut missing = Vec::new();
    for id in &segments {
        let ours = target.copy_map(&source_domain, id).await?;
        if let Some(ours) = ours {
            session.protect(Kind::Segment, &ours).await?;
            if target.raw().has_segment(&ours).await? {
                translated.insert(*id, ours);
                continue;
            }
        }
        missing.push(*id);
    }

    // For the rest, pair positions with an earlier copied snapshot: the source's parent
    // when the destination holds it, else the source's newest that it holds.
    let mut blocks = HashMap::new();
    if !missing.is_empty()
        && let Some(earlier) = copied_reference(&source, &target, record).await?
    {
        let (theirs, ours) = earlier;
        for (index, id) in record.segments.iter().enumerate() {
            if !missing.contains(id) {
                continue;
            }
            let (Some(their), Some(our)) = (theirs.segments.get(index), ours.segments.get(index))
            else {
                continue;
            };
            let (their, our) = match (
                source.read_segment(their).await,
                target.read_segment(our).await,
            ) {
                (Ok(their), Ok(our)) => (their, our),
                (Err(StoreError::Missing { .. }), _) | (_, Err(StoreError::Missing { .. })) => {
                    continue;
                }
                (Err(error), _) | (_, Err(error)) => return Err(error),
            };
            for (from, to) in their.entries().iter().zip(our.entries()) {
                if let (Some(from), Some(to)) = (from, to) {
                    blocks.insert(*from, *to);
                }
            }
        }
    }

    let mut checked = HashSet::new();
    let mut needed = HashSet::new();
    for id in &missing {
        let segment = shared.segment(id).await?;
        for block in segment.segment.entries().iter().flatten() {
            checked.insert(*block);
            if !blocks.contains_key(block) {
                needed.insert(*block);
            }
        }
    }
    Ok(Plan {
        already_present: false,
        missing_segments: missing,
        blocks_checked: checked.len() as u64,
        needed,
        reseal: Some(ResealPlan {
            source,
            destination: target,
            source_domain,
            segments: translated,
            blocks,
        }),
        session: None,
    })
}

/// An earlier snapshot both stores hold, as each store records it.
async fn copied_reference(
    source: &Store,
    target: &Store,
    record: &SnapshotRecord,
) -> Result<Option<(SnapshotRecord, SnapshotRecord)>> {
    let mut candidates: Vec<SnapshotId> = record.parent.into_iter().collect();
    let ids = source.raw().snapshot_ids().await?;
    candidates.extend(
        ids.iter()
            .rev()
            .filter(|c| **c < record.id && Some(**c) != record.parent)
            .take(REFERENCE_PROBES),
    );
    for candidate in candidates {
        if !target.raw().has_snapshot(&candidate).await? {
            continue;
        }
        match (
            source.snapshot(&candidate).await,
            target.snapshot(&candidate).await,
        ) {
            (Ok(theirs), Ok(ours)) => return Ok(Some((theirs, ours))),
            (Err(StoreError::SnapshotNotFound { .. }), _)
            | (_, Err(StoreError::SnapshotNotFound { .. })) => continue,
            (Err(error), _) | (_, Err(error)) => return Err(error),
        }
    }
    Ok(None)
}

/// A destination's queues: blocks handed over, and ids of blocks it must read itself.
#[derive(Clone)]
struct Senders {
    blocks: mpsc::Sender<(ObjectId, Bytes)>,
    fetch: mpsc::UnboundedSender<ObjectId>,
    /// Set once the destination kept its queue full for [`LAG_TIMEOUT`]: from then on it
    /// is handed ids only, so that it cannot hold back the reader and the others.
    lagging: Arc<AtomicBool>,
}

impl Senders {
    /// Hands a block to the destination, waiting while its queue is full, or only the id
    /// once it lags. A destination that has stopped is skipped.
    async fn offer(&self, block: ObjectId, sealed: Bytes) {
        if self.lagging.load(Ordering::Relaxed) {
            let _ = self.fetch.send(block);
            return;
        }
        match self.blocks.send_timeout((block, sealed), LAG_TIMEOUT).await {
            Ok(()) | Err(mpsc::error::SendTimeoutError::Closed(_)) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                debug!("a destination lags; it reads the rest of its blocks itself");
                self.lagging.store(true, Ordering::Relaxed);
                let _ = self.fetch.send(block);
            }
        }
    }
}

/// What a destination stored.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    segments_copied: u64,
    blocks_copied: u64,
    bytes_moved: u64,
}

/// What a destination's task ends with: what it stored, and the error that stopped it.
type Outcome = std::result::Result<Done, (String, Done)>;

/// One destination's upload task.
struct Worker {
    index: usize,
    senders: Senders,
    /// Tells the task, once the reader is done, whether every block reached it.
    fed: oneshot::Sender<bool>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Worker {
    fn start(
        index: usize,
        destination: Endpoint,
        plan: Plan,
        shared: Arc<Shared>,
        bandwidth: Option<u64>,
        progress: Arc<dyn CopyProgress>,
    ) -> Self {
        let (blocks_tx, blocks_rx) = mpsc::channel(shared.concurrency * QUEUE_FACTOR);
        let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
        let (fed_tx, fed_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let upload = Upload {
                index,
                destination,
                shared,
                throttle: bandwidth.map(Throttle::new),
                progress,
                translated: Mutex::new(HashMap::new()),
                counts: Mutex::new(Done::default()),
            };
            let result = upload.run(plan, blocks_rx, fetch_rx, fed_rx).await;
            let done = *upload.counts.lock().unwrap_or_else(PoisonError::into_inner);
            result.map(|()| done).map_err(|e| (e, done))
        });
        Self {
            index,
            senders: Senders {
                blocks: blocks_tx,
                fetch: fetch_tx,
                lagging: Arc::new(AtomicBool::new(false)),
            },
            fed: fed_tx,
            task,
        }
    }

    /// Closes the destination's queues, tells it whether the source gave every block
    /// (`source_error` is `None`), and waits for it to commit or fail.
    async fn finish(self, source_error: Option<String>) -> (usize, Outcome) {
        drop(self.senders);
        let _ = self.fed.send(source_error.is_none());
        let outcome = match self.task.await {
            Ok(outcome) => outcome,
            Err(error) => Err((format!("the copy task failed: {error}"), Done::default())),
        };
        let outcome = match (outcome, source_error) {
            (Ok(done), Some(error)) => Err((format!("the source failed: {error}"), done)),
            (Err((_, done)), Some(source)) => Err((format!("the source failed: {source}"), done)),
            (outcome, _) => outcome,
        };
        (self.index, outcome)
    }
}
/// The state of one destination's upload.
struct Upload {
    index: usize,
    destination: Endpoint,
    shared: Arc<Shared>,
    throttle: Option<Throttle>,
    progress: Arc<dyn CopyProgress>,
    /// Across domains: destination block id of each source block this copy translated.
    translated: Mutex<HashMap<ObjectId, ObjectId>>,
    counts: Mutex<Done>,
}

impl Upload {
    async fn run(
        &self,
        plan: Plan,
        blocks: mpsc::Receiver<(ObjectId, Bytes)>,
        fetch: mpsc::UnboundedReceiver<ObjectId>,
        fed: oneshot::Receiver<bool>,
    ) -> std::result::Result<(), String> {
        if plan.already_present {
            return Ok(());
        }
        let handed = receiver_stream(blocks).map(|(id, sealed)| Job::Handed(id, sealed));
        let fetched = unbounded_receiver_stream(fetch).map(Job::Fetch);
        stream::select(handed, fetched)
            .map(|job| self.store_block(job, &plan))
            .buffer_unordered(self.shared.concurrency)
            .try_for_each(|()| futures::future::ready(Ok(())))
            .await
            .map_err(|e| error_text(&e))?;

        // The queues end when the reader is done, whether or not it read every block; only
        // a reader that did lets this destination commit.
        if !fed.await.unwrap_or(false) {
            return Err("the source did not give every block".to_owned());
        }
        self.commit(plan).await.map_err(|e| error_text(&e))
    }

    async fn store_block(&self, job: Job, plan: &Plan) -> Result<()> {
        let (id, sealed) = match job {
            Job::Handed(id, sealed) => (id, sealed),
            Job::Fetch(id) => (id, self.shared.source.raw.block_envelope(&id).await?),
        };
        let Some(reseal) = &plan.reseal else {
            let len = sealed.len() as u64;
            self.throttle(len).await;
            self.destination.raw.put_block_envelope(&id, sealed).await?;
            self.count_block(len);
            return Ok(());
        };

        // Open with the source's keys, name and seal with the destination's: CPU work.
        let (source, target) = (reseal.source.clone(), reseal.destination.clone());
        let (ours, data) = tokio::task::spawn_blocking(move || {
            let data = source.decode_block(&id, &sealed)?;
            Ok::<_, StoreError>((target.block_id(&data), data))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(session) = &plan.session {
            session.protect(Kind::Block, &ours).await?;
        }
        if !reseal.destination.has_block(&ours).await? {
            let target = reseal.destination.clone();
            let sealed = tokio::task::spawn_blocking(move || target.encode_block(&ours, &data))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?;
            let len = sealed.len() as u64;
            self.throttle(len).await;
            reseal.destination.put_block(&ours, sealed).await?;
            self.count_block(len);
        }
        self.translated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, ours);
        Ok(())
    }

    async fn commit(&self, plan: Plan) -> Result<()> {
        let raw = &self.destination.raw;
        let session = plan.session.clone().ok_or_else(|| {
            StoreError::Task("a copy to commit has no session at its destination".into())
        })?;
        match &plan.reseal {
            None => {
                for id in &plan.missing_segments {
                    let segment = self.shared.segment(id).await?;
                    let len = segment.sealed.len() as u64;
                    raw.put_segment_envelope(id, segment.sealed.clone()).await?;
                    self.count_bytes(len, true);
                }
                raw.sync().await?;
                session.confirm().await?;
                let len = self.shared.envelope.len() as u64;
                raw.put_record_envelope(&self.shared.id, self.shared.envelope.clone())
                    .await?;
                self.count_bytes(len, false);
            }
            Some(reseal) => self.commit_resealed(&plan, reseal, &session).await?,
        }
        session.end().await?;
        debug!(store = %raw.location(), snapshot = %self.shared.id, "copy committed");
        Ok(())
    }

    async fn commit_resealed(
        &self,
        plan: &Plan,
        reseal: &ResealPlan,
        session: &Session,
    ) -> Result<()> {
        let target = &reseal.destination;
        let mut segments = reseal.segments.clone();
        let translated = self
            .translated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for id in &plan.missing_segments {
            let source = self.shared.segment(id).await?;
            let mut ours = Segment::zeroed(u32::try_from(source.segment.len()).unwrap_or(0));
            for (position, block) in source.segment.entries().iter().enumerate() {
                let Some(block) = block else { continue };
                let mapped = reseal
                    .blocks
                    .get(block)
                    .or_else(|| translated.get(block))
                    .ok_or_else(|| {
                        StoreError::Task(format!(
                            "block {} of segment {} was never translated",
                            block.to_hex(),
                            id.to_hex()
                        ))
                    })?;
                ours.set(position, Some(*mapped));
            }
            let (our_id, len) = target.put_segment(&ours, session).await?;
            self.count_bytes(len, len > 0);
            target
                .put_copy_map(&reseal.source_domain, id, &our_id)
                .await?;
            segments.insert(*id, our_id);
        }

        let record =
            self.shared.record.as_ref().ok_or_else(|| {
                StoreError::Task("a reseal copy without the source record".into())
            })?;
        let mut copy = record.clone();
        copy.segments = record
            .segments
            .iter()
            .map(|id| {
                segments.get(id).copied().ok_or_else(|| {
                    StoreError::Task(format!("segment {} was never translated", id.to_hex()))
                })
            })
            .collect::<Result<_>>()?;
        target.sync().await?;
        session.confirm().await?;
        target.put_record(&copy).await
    }

    async fn throttle(&self, bytes: u64) {
        if let Some(throttle) = &self.throttle {
            throttle.wait(bytes).await;
        }
    }

    fn count_block(&self, bytes: u64) {
        {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts.blocks_copied += 1;
            counts.bytes_moved += bytes;
        }
        self.progress.moved(self.index, bytes);
    }

    fn count_bytes(&self, bytes: u64, segment: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.bytes_moved += bytes;
        if segment {
            counts.segments_copied += 1;
        }
    }
}

/// A block for a destination to store.
enum Job {
    /// Read by the shared reader.
    Handed(ObjectId, Bytes),
    /// To be read from the source by the destination itself.
    Fetch(ObjectId),
}

fn receiver_stream<T: Send + 'static>(
    mut receiver: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn unbounded_receiver_stream<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Paces uploads to a byte rate: each upload waits for its share of the timeline, so the
/// uploads started in any window of time add up to at most the rate (plus one upload).
struct Throttle {
    bytes_per_second: u64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Throttle {
    fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// The ids in `ids` without repeats, in first-seen order.
fn distinct(ids: &[ObjectId]) -> Vec<ObjectId> {
    let mut seen = HashSet::new();
    ids.iter().filter(|id| seen.insert(**id)).copied().collect()
}

/// An error and its causes on one line.
fn error_text(error: &StoreError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_throttle_spaces_uploads_by_their_size_over_the_rate() {
        let throttle = Throttle::new(1000);
        let start = tokio::time::Instant::now();

        // Five uploads of 500 bytes at 1000 bytes a second: the fifth may start after 2 s.
        for _ in 0..5 {
            throttle.wait(500).await;
        }

        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_throttle_does_not_bank_time_for_a_burst() {
        let throttle = Throttle::new(1000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = tokio::time::Instant::now();

        throttle.wait(1000).await;
        throttle.wait(1000).await;

        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}

//! Writing a snapshot: blocks in any order, then one commit.
//!
//! A [`SnapshotWriter`] serves three kinds of producers:
//!
//! - a full image read front to back (`snapshot create`, `import`): every position is put,
//!   positions never put read as zero ([`Fill::Zero`]), and finished segments are sealed as
//!   the stream advances so that memory does not grow with the disk;
//! - a client putting changed blocks in any order on top of a parent (the EBS direct API,
//!   a dirty-tracking volume, a qcow2 overlay): positions never put keep the parent's block
//!   ([`Fill::Parent`]), and segments nobody touched are reused from the parent as they are;
//! - many tasks at once: every method takes `&self`.
//!
//! Nothing is visible to readers until [`SnapshotWriter::commit`] writes the commit record.
//! A writer dropped before that leaves only blocks and segments, which the next writer of
//! the same data reuses and garbage collection removes otherwise.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use blockyard_crypto::ObjectId;
use chrono::Utc;
use tokio::sync::Semaphore;

use crate::Store;
use crate::condemned::Kind;
use crate::error::{Result, StoreError};
use crate::segment::Segment;
use crate::session::Session;
use crate::snapshot::{BlockCounts, SnapshotId, SnapshotRecord, WriteStats};

/// Bytes uploaded between background flushes of a local store: enough that a flush has real
/// work, few enough that the final sync before the commit is short.
const FLUSH_EVERY: u64 = 64 << 20;

/// What positions that were never put read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fill {
    /// Zero: the producer puts every position that holds data.
    #[default]
    Zero,
    /// The parent's block at the same position: the producer puts only what changed.
    Parent,
}

/// How to start a snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// The disk's size in bytes.
    pub size: u64,
    /// The snapshot this one follows. With [`Fill::Zero`] it only makes deduplication
    /// cheaper; with [`Fill::Parent`] it supplies every position not put.
    pub parent: Option<SnapshotId>,
    /// What unput positions read as.
    pub fill: Fill,
    /// Free text for the record.
    pub description: String,
    /// User tags for the record.
    pub tags: BTreeMap<String, String>,
}

/// What happened to one block put into a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The block was all zero and is not stored.
    Zero,
    /// The store lacked the block; it was uploaded.
    New {
        /// Bytes uploaded.
        stored: u64,
    },
    /// The store already had the block.
    Reused,
}

/// An open snapshot. See the module docs.
#[derive(Debug)]
pub struct SnapshotWriter {
    store: Store,
    id: SnapshotId,
    options: SnapshotOptions,
    parent: Option<SnapshotRecord>,
    block_count: u64,
    /// Keeps garbage collection away from what this snapshot relies on.
    session: Session,
    /// Data positions of each parent segment, counted when `begin` read them.
    parent_data: HashMap<ObjectId, u64>,
    /// Blocks known to be in the store or being uploaded by this writer: the parent's, and
    /// every block put so far. A hit here skips even the existence check.
    known: Mutex<HashSet<ObjectId>>,
    /// Blocks whose upload failed and has not succeeded since. Another put of the same
    /// content may have been answered "reused" while the failed upload was in flight, so
    /// commit refuses while any are left.
    unsettled: Mutex<HashSet<ObjectId>>,
    /// Positions put and not yet folded into a sealed segment.
    pending: Mutex<BTreeMap<u64, Option<ObjectId>>>,
    /// Set once `commit` starts: no more puts. Cleared again if the commit fails early.
    committing: AtomicBool,
    /// Set once the commit record is written.
    committed: AtomicBool,
    /// Every position below this lies in a sealed segment and can no longer be put.
    sealed_below: AtomicU64,
    /// Segments already sealed, by segment number, with their data-position count.
    sealed: tokio::sync::Mutex<BTreeMap<u64, (ObjectId, u64)>>,
    /// Bounds CPU-heavy work (compression, sealing) to the number of cores.
    cpu: Arc<Semaphore>,
    blocks_new: AtomicU64,
    blocks_reused: AtomicU64,
    bytes_read: AtomicU64,
    bytes_stored: AtomicU64,
}

impl SnapshotWriter {
    /// Opens a new snapshot in `store`. With a parent, its block list is loaded so that
    /// unchanged blocks are recognised without asking the store.
    pub async fn begin(store: &Store, options: SnapshotOptions) -> Result<Self> {
        let block_size = store.block_size();
        let block_count = options.size.div_ceil(block_size);
        if options.size == 0 {
            return Err(StoreError::InvalidArgument(
                "a snapshot's size must not be zero".into(),
            ));
        }
        if options.fill == Fill::Parent && options.parent.is_none() {
            return Err(StoreError::InvalidArgument(
                "a snapshot that keeps its parent's blocks needs a parent".into(),
            ));
        }

        // The session starts before anything in the store is looked at.
        let session = Session::begin(&store.raw(), "snapshot").await?;
        let mut known = HashSet::new();
        let mut parent_data = HashMap::new();
        let parent = match &options.parent {
            Some(id) => {
                let record = store.snapshot(id).await?;
                if record.block_size != block_size {
                    return Err(StoreError::InvalidArgument(format!(
                        "parent {id} has {}-byte blocks; this store uses {block_size}",
                        record.block_size
                    )));
                }
                for segment_id in unique(&record.segments) {
                    let segment = store.read_segment(&segment_id).await?;
                    // A condemned block is looked at again before it is reused.
                    known.extend(
                        segment
                            .entries()
                            .iter()
                            .flatten()
                            .filter(|id| !session.is_condemned(Kind::Block, id))
                            .copied(),
                    );
                    parent_data.insert(segment_id, segment.data_count() as u64);
                }
                Some(record)
            }
            None => None,
        };

        if let (Some(parent), Fill::Parent) = (&parent, options.fill) {
            // Segments are inherited by number, so they must cover the same positions.
            let segment_blocks = store.config().segment_blocks;
            if parent.segment_blocks != segment_blocks {
                return Err(StoreError::InvalidArgument(format!(
                    "{} has manifest segments of {} positions and this store writes {}; a \
                     snapshot that keeps its blocks cannot be cut from it",
                    parent.id, parent.segment_blocks, segment_blocks
                )));
            }
            // Inherited blocks keep their length, so an edge block of another length than
            // the new size needs would make the snapshot unreadable.
            let aligned = |size: u64| size.is_multiple_of(block_size);
            if parent.size != options.size && !(aligned(parent.size) && aligned(options.size)) {
                return Err(StoreError::InvalidArgument(format!(
                    "a snapshot that keeps the blocks of {} ({} bytes) must have its size, or \
                     both sizes must be multiples of the {block_size}-byte block",
                    parent.id, parent.size
                )));
            }
        }

        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Ok(Self {
            store: store.clone(),
            id: SnapshotId::generate(),
            options,
            parent,
            block_count,
            session,
            parent_data,
            known: Mutex::new(known),
            unsettled: Mutex::new(HashSet::new()),
            pending: Mutex::new(BTreeMap::new()),
            committing: AtomicBool::new(false),
            committed: AtomicBool::new(false),
            sealed_below: AtomicU64::new(0),
            sealed: tokio::sync::Mutex::new(BTreeMap::new()),
            cpu: Arc::new(Semaphore::new(cores)),
            blocks_new: AtomicU64::new(0),
            blocks_reused: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
        })
    }

    /// The id the snapshot will have once committed.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// Blocks the snapshot has.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.options.size
    }

    /// The length of block `index`: the block size, or less for a short last block.
    pub fn block_len(&self, index: u64) -> u64 {
        let block_size = self.store.block_size();
        self.options
            .size
            .saturating_sub(index.saturating_mul(block_size))
            .min(block_size)
    }

    /// Puts a block's bytes at `index`, hashing them on the blocking pool.
    pub async fn put_block(&self, index: u64, data: Vec<u8>) -> Result<PutOutcome> {
        self.check_block(index, data.len())?;
        if blockyard_formats::is_zero(&data) {
            self.put_zero(index)?;
            return Ok(PutOutcome::Zero);
        }
        self.put_nonzero(index, data).await
    }

    /// Puts a block the caller knows is not all zero.
    pub(crate) async fn put_nonzero(&self, index: u64, data: Vec<u8>) -> Result<PutOutcome> {
        let store = self.store.clone();
        let (id, data) = tokio::task::spawn_blocking(move || (store.block_id(&data), data))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        self.put_identified(index, id, data).await
    }

    /// Puts a block already hashed with [`Store::block_id`]; the block is not all zero.
    async fn put_identified(&self, index: u64, id: ObjectId, data: Vec<u8>) -> Result<PutOutcome> {
        self.check_block(index, data.len())?;
        self.bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);

        let outcome = match self.store_block(id, data).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // Forget the claim, so that a retry of this block uploads it again.
                lock(&self.known).remove(&id);
                lock(&self.unsettled).insert(id);
                return Err(e);
            }
        };
        match outcome {
            PutOutcome::New { stored } => {
                self.blocks_new.fetch_add(1, Ordering::Relaxed);
                let before = self.bytes_stored.fetch_add(stored, Ordering::Relaxed);
                if before / FLUSH_EVERY != (before + stored) / FLUSH_EVERY {
                    self.store.flush_in_background();
                }
            }
            _ => {
                self.blocks_reused.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.record(index, Some(id))?;
        Ok(outcome)
    }

    /// Marks the block at `index` as reading zero.
    pub fn put_zero(&self, index: u64) -> Result<()> {
        self.check_index(index)?;
        self.record(index, None)
    }

    /// Records what position `index` holds. The checks are repeated under the lock that
    /// sealing and committing read `pending` under, so a put that raced with either is
    /// refused rather than silently left out of the manifest.
    fn record(&self, index: u64, entry: Option<ObjectId>) -> Result<()> {
        let mut pending = lock(&self.pending);
        self.check_index(index)?;
        pending.insert(index, entry);
        Ok(())
    }

    /// Seals and uploads every segment whose positions all lie below `index`: a producer
    /// writing front to back calls this as it goes so that memory stays bounded. Only for
    /// [`Fill::Zero`] writers, whose earlier positions can no longer change.
    pub async fn seal_segments_below(&self, index: u64) -> Result<()> {
        if self.options.fill != Fill::Zero {
            return Ok(());
        }
        let per = u64::from(self.store.config().segment_blocks);
        let complete = index.min(self.block_count) / per;
        // Refuse later puts into these segments before sealing them, so that none slips in
        // between and is lost.
        self.sealed_below
            .fetch_max(complete * per, Ordering::SeqCst);
        drop(self.seal_segments(complete).await?);
        Ok(())
    }

    /// Writes the remaining segments and the commit record. The snapshot exists from the
    /// moment this returns `Ok`; if it fails or the process dies first, it does not.
    pub async fn commit(&self) -> Result<SnapshotRecord> {
        if self.committed.load(Ordering::SeqCst) || self.committing.swap(true, Ordering::SeqCst) {
            return Err(StoreError::InvalidArgument(format!(
                "snapshot {} is already committed or being committed",
                self.id
            )));
        }
        let result = self.commit_now().await;
        match &result {
            Ok(_) => self.committed.store(true, Ordering::SeqCst),
            // A failed commit leaves the writer open: the caller may put again and retry.
            Err(_) => self.committing.store(false, Ordering::SeqCst),
        }
        result
    }

    async fn commit_now(&self) -> Result<SnapshotRecord> {
        let unsettled = lock(&self.unsettled).len();
        if unsettled > 0 {
            return Err(StoreError::InvalidArgument(format!(
                "{unsettled} blocks failed to upload and were not put again; put them again \
                 before committing"
            )));
        }
        let per = u64::from(self.store.config().segment_blocks);
        let sealed = self.seal_segments(self.block_count.div_ceil(per)).await?;
        let segments: Vec<ObjectId> = sealed.values().map(|(id, _)| *id).collect();
        let data: u64 = sealed.values().map(|(_, data)| *data).sum();
        drop(sealed);

        let record = SnapshotRecord {
            id: self.id,
            created: Utc::now(),
            size: self.options.size,
            block_size: self.store.block_size(),
            segment_blocks: self.store.config().segment_blocks,
            parent: self.options.parent,
            description: self.options.description.clone(),
            tags: self.options.tags.clone(),
            blocks: BlockCounts {
                total: self.block_count,
                data,
                zero: self.block_count - data,
            },
            stats: WriteStats {
                blocks_new: self.blocks_new.load(Ordering::Relaxed),
                blocks_reused: self.blocks_reused.load(Ordering::Relaxed),
                bytes_read: self.bytes_read.load(Ordering::Relaxed),
                bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
            },
            segments,
        };
        record.validate()?;

        // Every block and segment must be durable before the record that points at them.
        self.store.sync().await?;
        self.session.confirm().await?;
        self.store.put_record(&record).await?;
        if let Err(e) = self.session.end().await {
            // The snapshot is committed; a session object left behind only expires.
            tracing::warn!("could not end the writer session: {e}");
        }
        tracing::debug!(snapshot = %record.id, blocks = record.blocks.total, "committed");
        Ok(record)
    }

    /// Seals every segment numbered below `count` that is not sealed yet.
    async fn seal_segments(
        &self,
        count: u64,
    ) -> Result<tokio::sync::MutexGuard<'_, BTreeMap<u64, (ObjectId, u64)>>> {
        let mut sealed = self.sealed.lock().await;
        for segment_no in 0..count {
            if let Entry::Vacant(slot) = sealed.entry(segment_no) {
                slot.insert(self.build_segment(segment_no).await?);
            }
        }
        Ok(sealed)
    }

    /// Uploads a block unless the store has it.
    async fn store_block(&self, id: ObjectId, data: Vec<u8>) -> Result<PutOutcome> {
        let claimed = lock(&self.known).insert(id);
        if !claimed {
            return Ok(PutOutcome::Reused);
        }
        self.session.protect(Kind::Block, &id).await?;
        if self.store.has_block(&id).await? {
            lock(&self.unsettled).remove(&id);
            return Ok(PutOutcome::Reused);
        }

        let permit = Arc::clone(&self.cpu)
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let store = self.store.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let sealed = store.encode_block(&id, &data);
            drop(permit);
            sealed
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        let stored = sealed.len() as u64;
        self.store.put_block(&id, sealed).await?;
        lock(&self.unsettled).remove(&id);
        Ok(PutOutcome::New { stored })
    }

    /// Builds segment `segment_no` from the base (zero or the parent's) and the positions
    /// put, uploads it if the store lacks it, and returns its id and data count.
    async fn build_segment(&self, segment_no: u64) -> Result<(ObjectId, u64)> {
        let per = u64::from(self.store.config().segment_blocks);
        let start = segment_no * per;
        let end = (start + per).min(self.block_count);
        let positions = u32::try_from(end - start).unwrap_or(u32::MAX);
        // Positions leave `pending` only once their segment is stored, so a failed upload
        // loses nothing and a later seal or commit builds the segment again.
        let puts: Vec<(u64, Option<ObjectId>)> = lock(&self.pending)
            .range(start..end)
            .map(|(i, e)| (*i, *e))
            .collect();

        let parent_segment = match (&self.parent, self.options.fill) {
            (Some(parent), Fill::Parent) => usize::try_from(segment_no).ok().and_then(|s| {
                parent
                    .segments
                    .get(s)
                    .map(|id| (*id, parent.positions_in_segment(s)))
            }),
            _ => None,
        };
        let mut segment = match parent_segment {
            // An untouched stretch of the parent is shared, not rewritten.
            Some((id, parent_positions))
                if puts.is_empty()
                    && parent_positions == positions
                    && !self.session.is_condemned(Kind::Segment, &id) =>
            {
                // `begin` read and counted every parent segment; no second fetch.
                let data = self.parent_data.get(&id).copied().ok_or_else(|| {
                    StoreError::Task(format!("parent segment {id} was not counted"))
                })?;
                return Ok((id, data));
            }
            Some((id, _)) => {
                let base = self.store.read_segment(&id).await?;
                let mut segment = Segment::zeroed(positions);
                for (i, entry) in base.entries().iter().enumerate().take(positions as usize) {
                    segment.set(i, *entry);
                }
                segment
            }
            None => Segment::zeroed(positions),
        };
        for (index, entry) in &puts {
            segment.set(usize::try_from(index - start).unwrap_or(usize::MAX), *entry);
        }

        let (id, stored) = self.store.put_segment(&segment, &self.session).await?;
        self.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        let mut pending = lock(&self.pending);
        for (index, _) in &puts {
            pending.remove(index);
        }
        Ok((id, segment.data_count() as u64))
    }

    fn check_index(&self, index: u64) -> Result<()> {
        if self.committing.load(Ordering::SeqCst) {
            return Err(StoreError::InvalidArgument(format!(
                "snapshot {} is being committed or is committed; it takes no more blocks",
                self.id
            )));
        }
        if index >= self.block_count {
            return Err(StoreError::BlockOutOfRange {
                index,
                blocks: self.block_count,
            });
        }
        if index < self.sealed_below.load(Ordering::SeqCst) {
            return Err(StoreError::InvalidArgument(format!(
                "block {index} lies in a manifest segment that is already sealed"
            )));
        }
        Ok(())
    }

    fn check_block(&self, index: u64, len: usize) -> Result<()> {
        self.check_index(index)?;
        let expected = self.block_len(index);
        if len as u64 == expected {
            Ok(())
        } else {
            Err(StoreError::InvalidArgument(format!(
                "block {index} has {len} bytes; it must have {expected}"
            )))
        }
    }
}

/// Each id once, in first-seen order.
pub(crate) fn unique(ids: &[ObjectId]) -> Vec<ObjectId> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, never a broken
    // invariant, so a poisoned lock is still safe to use.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

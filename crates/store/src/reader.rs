//! Reading a snapshot: one block by index, the blocks with data, and what changed between
//! two snapshots, all from manifests alone until block bytes are asked for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use blockyard_crypto::ObjectId;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::segment::Segment;
use crate::snapshot::{SnapshotId, SnapshotRecord};

/// Segments a reader keeps decoded. A segment of 4096 positions is at most 130 KiB, so this
/// holds 32 GiB of disk's worth of block ids in about 4 MiB.
const SEGMENT_CACHE: usize = 16;

/// A committed snapshot opened for reading. Safe to share between tasks.
#[derive(Debug)]
pub struct SnapshotReader {
    store: Store,
    record: SnapshotRecord,
    cache: Mutex<HashMap<usize, Arc<Segment>>>,
}

impl SnapshotReader {
    /// Opens a committed snapshot.
    pub async fn open(store: &Store, id: &SnapshotId) -> Result<Self> {
        let record = store.snapshot(id).await?;
        Ok(Self {
            store: store.clone(),
            record,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The snapshot's commit record.
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// Segment `number` of the snapshot, decoded.
    pub async fn segment(&self, number: usize) -> Result<Arc<Segment>> {
        if let Some(segment) = self.cache_lock().get(&number) {
            return Ok(Arc::clone(segment));
        }
        let id = self
            .record
            .segments
            .get(number)
            .ok_or(StoreError::BlockOutOfRange {
                index: number as u64 * u64::from(self.record.segment_blocks),
                blocks: self.record.block_count(),
            })?;
        let segment = self.store.read_segment(id).await?;
        let expected = self.record.positions_in_segment(number) as usize;
        if segment.len() != expected {
            return Err(StoreError::Corrupt {
                what: "manifest segment",
                name: id.to_hex(),
                reason: format!(
                    "it has {} positions where the snapshot needs {expected}",
                    segment.len()
                ),
            });
        }
        let segment = Arc::new(segment);
        let mut cache = self.cache_lock();
        if cache.len() >= SEGMENT_CACHE {
            cache.clear();
        }
        cache.insert(number, Arc::clone(&segment));
        Ok(segment)
    }

    /// The id of the block at `index`, or `None` when it reads as zero.
    pub async fn block_id(&self, index: u64) -> Result<Option<ObjectId>> {
        let (number, position) = self.locate(index)?;
        Ok(self.segment(number).await?.get(position))
    }

    /// The bytes of the block at `index`, or `None` when it reads as zero. The last block of
    /// a disk whose size is not a multiple of the block size is shorter.
    pub async fn read_block(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let Some(id) = self.block_id(index).await? else {
            return Ok(None);
        };
        let data = self.store.read_block(&id).await?;
        let expected = self.block_len(index);
        if data.len() as u64 != expected {
            return Err(StoreError::Corrupt {
                what: "block",
                name: id.to_hex(),
                reason: format!(
                    "it has {} bytes where block {index} needs {expected}",
                    data.len()
                ),
            });
        }
        Ok(Some(data))
    }

    /// The length of block `index`: the block size, or less for a short last block.
    pub fn block_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(self.record.block_size);
        self.record
            .size
            .saturating_sub(start)
            .min(self.record.block_size)
    }

    /// Every block index that holds data, with its block id, in order (the EBS
    /// ListSnapshotBlocks answer).
    pub async fn data_blocks(&self) -> Result<Vec<(u64, ObjectId)>> {
        let mut out = Vec::new();
        let per = u64::from(self.record.segment_blocks);
        for number in 0..self.record.segments.len() {
            let segment = self.segment(number).await?;
            let base = number as u64 * per;
            for (position, entry) in segment.entries().iter().enumerate() {
                if let Some(id) = entry {
                    out.push((base + position as u64, *id));
                }
            }
        }
        Ok(out)
    }

    fn locate(&self, index: u64) -> Result<(usize, usize)> {
        if index >= self.record.block_count() {
            return Err(StoreError::BlockOutOfRange {
                index,
                blocks: self.record.block_count(),
            });
        }
        let per = u64::from(self.record.segment_blocks);
        let number = usize::try_from(index / per).unwrap_or(usize::MAX);
        let position = usize::try_from(index % per).unwrap_or(usize::MAX);
        Ok((number, position))
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<Segment>>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One block that differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedBlock {
    /// The block index.
    pub index: u64,
    /// The block in the first snapshot; `None` when it reads as zero there.
    pub first: Option<ObjectId>,
    /// The block in the second snapshot; `None` when it reads as zero there.
    pub second: Option<ObjectId>,
}

/// The blocks whose content differs between `first` and `second` (the EBS
/// ListChangedBlocks answer), found from manifests alone: segments with the same id are
/// skipped whole, and no block is read. Past the end of the shorter snapshot, every block
/// with data in the longer one counts as changed.
pub async fn diff(first: &SnapshotReader, second: &SnapshotReader) -> Result<Vec<ChangedBlock>> {
    let (a, b) = (first.record(), second.record());
    if a.block_size != b.block_size || a.segment_blocks != b.segment_blocks {
        return Err(StoreError::InvalidArgument(format!(
            "{} and {} were cut into different blocks and cannot be compared block by block",
            a.id, b.id
        )));
    }
    let per = u64::from(a.segment_blocks);
    let mut changed = Vec::new();
    for number in 0..a.segments.len().max(b.segments.len()) {
        let (ida, idb) = (a.segments.get(number), b.segments.get(number));
        if ida.is_some() && ida == idb {
            continue;
        }
        let sa = match ida {
            Some(_) => Some(first.segment(number).await?),
            None => None,
        };
        let sb = match idb {
            Some(_) => Some(second.segment(number).await?),
            None => None,
        };
        let len = sa
            .as_ref()
            .map_or(0, |s| s.len())
            .max(sb.as_ref().map_or(0, |s| s.len()));
        let base = number as u64 * per;
        for position in 0..len {
            let ea = sa.as_ref().and_then(|s| s.get(position));
            let eb = sb.as_ref().and_then(|s| s.get(position));
            if ea != eb {
                changed.push(ChangedBlock {
                    index: base + position as u64,
                    first: ea,
                    second: eb,
                });
            }
        }
    }
    Ok(changed)
}

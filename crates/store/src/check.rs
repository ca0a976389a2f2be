//! Verifying a store: structure from manifests, and optionally every block's bytes.
//!
//! Structure: every commit record opens and is consistent, every segment it names opens and
//! hashes to its id, every block a segment names exists. With data reading: every referenced
//! block (or a random sample) is fetched, its authentication tag checked, decompressed and
//! re-hashed to its id. Each problem names the snapshots it damages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use blockyard_crypto::ObjectId;
use futures::StreamExt;
use serde::Serialize;

use crate::Store;
use crate::error::Result;
use crate::progress::Progress;
use crate::snapshot::SnapshotId;
use crate::writer::unique;

/// Blocks read at once with `read_data`.
const READ_CONCURRENCY: usize = 16;

/// What to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Read and verify block contents, not only their presence.
    pub read_data: bool,
    /// With `read_data`, the percentage of blocks to read, chosen at random; 100 when `None`.
    pub sample_percent: Option<f64>,
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object at fault: `snapshot snap-…`, `segment <id>`, `block <id>`.
    pub object: String,
    /// What is wrong with it.
    pub error: String,
    /// The snapshots that cannot be restored because of it.
    pub snapshots: Vec<SnapshotId>,
}

/// What a check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Commit records read.
    pub snapshots: u64,
    /// Distinct segments read.
    pub segments: u64,
    /// Distinct blocks the snapshots reference.
    pub blocks_referenced: u64,
    /// Blocks whose contents were read and verified.
    pub blocks_read: u64,
    /// Blocks in the store that no snapshot references, live or in the recycle bin: what
    /// garbage collection removes.
    pub blocks_unreferenced: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
    /// Every snapshot damaged by some problem.
    pub damaged_snapshots: BTreeSet<SnapshotId>,
}

/// Checks the whole store.
pub async fn check(
    store: &Store,
    options: CheckOptions,
    progress: Arc<dyn Progress>,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let stored: HashSet<ObjectId> = store.block_ids().await?.into_iter().collect();

    // Which snapshots reference each block and segment, to name the damage.
    let mut block_users: HashMap<ObjectId, Vec<SnapshotId>> = HashMap::new();
    let mut segment_users: HashMap<ObjectId, Vec<SnapshotId>> = HashMap::new();
    for id in store.snapshot_ids().await? {
        report.snapshots += 1;
        match store.snapshot(&id).await {
            Ok(record) => {
                for segment in unique(&record.segments) {
                    segment_users.entry(segment).or_default().push(id);
                }
            }
            Err(e) => report.problems.push(Problem {
                object: format!("snapshot {id}"),
                error: e.to_string(),
                snapshots: vec![id],
            }),
        }
    }

    let segment_users: BTreeMap<_, _> = segment_users.into_iter().collect();
    for (segment_id, users) in &segment_users {
        report.segments += 1;
        match store.read_segment(segment_id).await {
            Ok(segment) => {
                for block in segment.entries().iter().flatten() {
                    let list = block_users.entry(*block).or_default();
                    for user in users {
                        if !list.contains(user) {
                            list.push(*user);
                        }
                    }
                }
            }
            Err(e) => report.problems.push(Problem {
                object: format!("segment {segment_id}"),
                error: e.to_string(),
                snapshots: users.clone(),
            }),
        }
    }

    report.blocks_referenced = block_users.len() as u64;
    // Snapshots in the recycle bin keep their blocks until they are purged.
    let binned = binned_blocks(store).await?;
    report.blocks_unreferenced = stored
        .iter()
        .filter(|id| !block_users.contains_key(id) && !binned.contains(id))
        .count() as u64;
    let mut present = Vec::new();
    for (block, users) in &block_users {
        if stored.contains(block) {
            present.push(*block);
        } else {
            report.problems.push(Problem {
                object: format!("block {block}"),
                error: "missing from the store".to_owned(),
                snapshots: users.clone(),
            });
        }
    }

    if options.read_data {
        let fraction = options.sample_percent.unwrap_or(100.0).clamp(0.0, 100.0) / 100.0;
        if fraction < 1.0 {
            present.retain(|_| rand::random::<f64>() < fraction);
        }
        progress.start(present.len() as u64);
        let mut reads = futures::stream::iter(present)
            .map(|id| async move { (id, store.read_block_verified(&id).await) })
            .buffer_unordered(READ_CONCURRENCY);
        while let Some((id, result)) = reads.next().await {
            report.blocks_read += 1;
            progress.advance(1);
            if let Err(e) = result {
                report.problems.push(Problem {
                    object: format!("block {id}"),
                    error: e.to_string(),
                    snapshots: block_users.get(&id).cloned().unwrap_or_default(),
                });
            }
        }
    }

    report.damaged_snapshots = report
        .problems
        .iter()
        .flat_map(|p| p.snapshots.iter().copied())
        .collect();
    Ok(report)
}

/// The blocks that snapshots in the recycle bin reference. A binned record or segment that
/// cannot be read is left out: it damages no live snapshot.
async fn binned_blocks(store: &Store) -> Result<HashSet<ObjectId>> {
    let raw = store.raw();
    let mut segments = BTreeSet::new();
    for meta in raw.list(&crate::layout::binned_snapshots()).await? {
        let Some(id) = crate::layout::snapshot_of(&meta.location) else {
            continue;
        };
        let Some(sealed) = raw.get(&meta.location).await? else {
            continue;
        };
        if let Ok(record) = store.open_record(&id, &sealed) {
            segments.extend(record.segments);
        }
    }
    let mut blocks = HashSet::new();
    for id in segments {
        if let Ok(segment) = store.read_segment(&id).await {
            blocks.extend(segment.entries().iter().flatten().copied());
        }
    }
    Ok(blocks)
}

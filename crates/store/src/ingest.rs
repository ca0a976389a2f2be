//! The snapshot pipeline: a disk image in, a committed snapshot out.
//!
//! ```text
//!  reader thread          async tasks (bounded)                         blocking pool
//!  read, zero-check  ──→  hash ───────────────────────────────────────→ keyed BLAKE3
//!                         known? exists? ─ no ─→ upload ←───────────── compress + seal
//!                                └─ yes → record the id only
//! ```
//!
//! The reader thread only reads and skips zeros; hashing, compression and sealing run on
//! the blocking pool, so every core works whether a night is mostly new blocks (compression
//! dominates) or mostly known ones (hashing dominates). At most `concurrency` blocks are in
//! flight, which bounds memory whatever the image size: with 512 KiB blocks and the default
//! of 32, about 40 MiB.

use std::collections::BTreeSet;
use std::sync::Arc;

use blockyard_formats::{Block, Blocks, DiskReader};
use futures::StreamExt;

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::snapshot::SnapshotRecord;
use crate::writer::{Fill, SnapshotOptions, SnapshotWriter};
use crate::{SnapshotId, Store};

/// Default number of blocks in flight between reading and uploading.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Options for [`create_snapshot`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// A snapshot that probably shares blocks with this one; makes the check cheaper.
    pub parent: Option<SnapshotId>,
    /// Free text for the record.
    pub description: String,
    /// User tags for the record.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Blocks in flight at once; [`DEFAULT_CONCURRENCY`] when zero.
    pub concurrency: usize,
    /// Read only what the image's top layer stores and take every other block from
    /// `parent`: the image is a copy-on-write overlay (qcow2) whose backing disk holds the
    /// parent's content. The reader must resolve backing reads to the parent's blocks.
    pub changes_only: bool,
}

enum Item {
    Zero(u64),
    Data(u64, Vec<u8>),
    Unchanged(u64),
}

/// Reads a whole disk and commits it as a snapshot of `store`.
pub async fn create_snapshot<R>(
    store: &Store,
    reader: R,
    options: CreateOptions,
    progress: Arc<dyn Progress>,
) -> Result<SnapshotRecord>
where
    R: DiskReader + 'static,
{
    let size = reader.size();
    let block_size = store.block_size();
    let (blocks, fill) = if options.changes_only {
        if options.parent.is_none() {
            return Err(StoreError::InvalidArgument(
                "a snapshot of an overlay's changes needs the parent it was made on".into(),
            ));
        }
        (Blocks::changes(reader, block_size)?, Fill::Parent)
    } else {
        (Blocks::new(reader, block_size)?, Fill::Zero)
    };
    let writer = SnapshotWriter::begin(
        store,
        SnapshotOptions {
            size,
            parent: options.parent,
            fill,
            description: options.description,
            tags: options.tags,
        },
    )
    .await?;
    tracing::debug!(snapshot = %writer.id(), size, "reading the source");
    progress.start(size);

    let concurrency = if options.concurrency == 0 {
        DEFAULT_CONCURRENCY
    } else {
        options.concurrency
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Item>>(concurrency);
    let read_thread = std::thread::Builder::new()
        .name("blockyard-read".into())
        .spawn(move || {
            for block in blocks {
                let item = block
                    .map_err(StoreError::from)
                    .map(|(index, block)| match block {
                        Block::Zero => Item::Zero(index),
                        Block::Data(data) => Item::Data(index, data),
                        Block::Unchanged => Item::Unchanged(index),
                    });
                let failed = item.is_err();
                // A closed channel means the consumer gave up; stop reading.
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
            }
        })
        .map_err(|e| StoreError::Task(format!("cannot start the reader thread: {e}")))?;

    {
        let per = u64::from(store.config().segment_blocks);
        let writer_ref = &writer;
        let results = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .map(|item| async move {
            match item? {
                Item::Zero(index) => writer_ref.put_zero(index).map(|()| index),
                Item::Data(index, data) => writer_ref.put_nonzero(index, data).await.map(|_| index),
                Item::Unchanged(index) => Ok(index),
            }
        })
        .buffer_unordered(concurrency);
        let mut results = std::pin::pin!(results);

        // Track the lowest index not yet done, so that finished segments can be sealed early.
        let mut done_above = BTreeSet::new();
        let mut watermark = 0u64;
        let mut sealed_segments = 0u64;
        while let Some(result) = results.next().await {
            let index = result?;
            progress.advance(writer.block_len(index));
            done_above.insert(index);
            while done_above.remove(&watermark) {
                watermark += 1;
            }
            if watermark / per > sealed_segments {
                sealed_segments = watermark / per;
                writer.seal_segments_below(watermark).await?;
            }
        }
    }
    read_thread
        .join()
        .map_err(|_| StoreError::Task("the reader thread panicked".into()))?;

    writer.commit().await
}

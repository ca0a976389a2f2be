//! Writing a snapshot out in an image format.
//!
//! The layout (which blocks hold data) comes from the manifests alone, so a format writer
//! can lay out its tables before any block is fetched. Blocks are then fetched and decoded
//! in parallel, in order, and handed to the writer on a thread of its own, which writes the
//! image front to back: to a file, a pipe or an upload.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use blockyard_formats::FormatError;
use blockyard_formats::export::{BlockFeed, ExportLayout};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::reader::SnapshotReader;
use crate::{SnapshotId, Store};

/// Blocks fetched ahead of the writer.
const READ_AHEAD: usize = 16;

/// What an export did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExportSummary {
    /// The disk's size.
    pub size: u64,
    /// Blocks with data handed to the writer.
    pub blocks_data: u64,
    /// Bytes of those blocks.
    pub bytes_data: u64,
}

/// Feeds the writer thread from the fetch loop.
struct ChannelFeed {
    blocks: Receiver<(u64, Vec<u8>)>,
}

impl BlockFeed for ChannelFeed {
    fn next_block(&mut self) -> Result<Option<(u64, Vec<u8>)>, FormatError> {
        // A closed channel is the end of the feed; if the fetch loop failed, its error is
        // the one reported.
        Ok(self.blocks.recv().ok())
    }
}

/// Opens snapshot `id` for writing out: its reader, its data blocks with their ids, and
/// the layout a format writer needs.
pub(crate) async fn open_layout(
    store: &Store,
    id: &SnapshotId,
) -> Result<(
    SnapshotReader,
    Vec<(u64, blockyard_crypto::ObjectId)>,
    ExportLayout,
)> {
    let reader = SnapshotReader::open(store, id).await?;
    let data_blocks = reader.data_blocks().await?;
    let layout = ExportLayout {
        size: reader.record().size,
        block_size: reader.record().block_size,
        data_blocks: data_blocks.iter().map(|(index, _)| *index).collect(),
    };
    Ok((reader, data_blocks, layout))
}

/// Exports snapshot `id`: computes its layout, then runs `write` on a thread of its own
/// with the layout and the data blocks in order. `write` is a format writer with its sink.
pub async fn export<W>(
    store: &Store,
    id: &SnapshotId,
    write: W,
    progress: Arc<dyn Progress>,
) -> Result<ExportSummary>
where
    W: FnOnce(&ExportLayout, &mut dyn BlockFeed) -> Result<(), FormatError> + Send + 'static,
{
    let (reader, data_blocks, layout) = open_layout(store, id).await?;
    let record = reader.record().clone();
    progress.start(record.size);

    let reader = &reader;
    let mut summary = ExportSummary {
        size: record.size,
        blocks_data: 0,
        bytes_data: 0,
    };
    let blocks = futures::stream::iter(data_blocks)
        .map(|(index, _)| async move {
            let data = reader
                .read_block(index)
                .await?
                .ok_or_else(|| StoreError::Corrupt {
                    what: "manifest segment",
                    name: format!("block {index}"),
                    reason: "a block listed with data reads as zero".into(),
                })?;
            Ok::<_, StoreError>((index, data))
        })
        .buffered(READ_AHEAD)
        .map_ok(|(index, data)| {
            summary.blocks_data += 1;
            summary.bytes_data += data.len() as u64;
            (index, data)
        });
    write_blocks(&layout, blocks, write, progress.as_ref()).await?;
    Ok(summary)
}

/// Runs `write` on a thread of its own with `layout` and the data blocks `blocks` yields,
/// which must be the layout's, in order. Reports progress by the disk's bytes covered.
pub(crate) async fn write_blocks<W, S>(
    layout: &ExportLayout,
    blocks: S,
    write: W,
    progress: &dyn Progress,
) -> Result<()>
where
    W: FnOnce(&ExportLayout, &mut dyn BlockFeed) -> Result<(), FormatError> + Send + 'static,
    S: Stream<Item = Result<(u64, Vec<u8>)>>,
{
    let (tx, rx): (SyncSender<(u64, Vec<u8>)>, _) = std::sync::mpsc::sync_channel(READ_AHEAD);
    let writer_layout = layout.clone();
    let writer = std::thread::Builder::new()
        .name("blockyard-export".into())
        .spawn(move || {
            let mut feed = ChannelFeed { blocks: rx };
            write(&writer_layout, &mut feed)
        })
        .map_err(|e| StoreError::Task(format!("cannot start the export thread: {e}")))?;

    let mut blocks = std::pin::pin!(blocks);
    let mut covered = 0u64;
    let fetched: Result<()> = async {
        while let Some((index, data)) = blocks.try_next().await? {
            let end = index * layout.block_size + data.len() as u64;
            // The writer stopped early; its own error says why.
            if tx.send((index, data)).is_err() {
                break;
            }
            progress.advance(end - covered);
            covered = end;
        }
        Ok(())
    }
    .await;
    drop(tx);

    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| StoreError::Task(format!("the export thread failed: {e}")))?
        .map_err(|_| StoreError::Task("the export thread panicked".into()))?;
    fetched?;
    written.map_err(StoreError::Output)?;
    progress.advance(layout.size - covered);
    Ok(())
}

//! Writing a snapshot back out as a raw disk.
//!
//! Blocks are fetched and decoded in parallel but written by one thread in order: the
//! kernel serialises writes to one file, and two writers were measured slower and noisier
//! than one. Zero blocks are skipped in a regular file, which stays sparse; on a block
//! device they are written, because the device's old contents must not show through.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::reader::SnapshotReader;
use crate::{SnapshotId, Store};

/// Blocks fetched ahead of the writer.
const READ_AHEAD: usize = 16;

/// Bytes written between background flushes of the output.
const FLUSH_EVERY: u64 = 64 << 20;

/// Options for [`restore`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Replace an existing regular file. Block devices are always written in place.
    pub overwrite: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RestoreSummary {
    /// The disk's size.
    pub size: u64,
    /// Blocks written with data.
    pub blocks_data: u64,
    /// Blocks left as holes, or zeroed on a device.
    pub blocks_zero: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
}

/// Restores snapshot `id` into `output`: a new sparse file, or an existing block device at
/// least as large as the snapshot.
pub async fn restore(
    store: &Store,
    id: &SnapshotId,
    output: &Path,
    options: RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary> {
    let reader = SnapshotReader::open(store, id).await?;
    let record = reader.record().clone();
    let (file, is_device) = open_output(output, record.size, options)?;
    progress.start(record.size);

    let io_error = |op: &'static str| {
        let path = output.display().to_string();
        move |source| StoreError::Io { op, path, source }
    };
    // A second thread flushes what has been written every FLUSH_EVERY bytes, so that the
    // disk writes back while blocks are still being decoded, and the final sync is short.
    // It shares the file description, so an error it meets is returned from it, not lost.
    let flush_file = file.try_clone().map_err(io_error("open"))?;
    let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let flusher = std::thread::Builder::new()
        .name("blockyard-flush".into())
        .spawn(move || -> std::io::Result<()> {
            for () in flush_rx {
                flush_file.sync_data()?;
            }
            Ok(())
        })
        .map_err(io_error("start a flush thread for"))?;

    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(READ_AHEAD);
    let writer = std::thread::Builder::new()
        .name("blockyard-write".into())
        .spawn(move || -> std::io::Result<File> {
            let mut written = 0u64;
            for (offset, data) in rx {
                file.write_all_at(&data, offset)?;
                let before = written;
                written += data.len() as u64;
                if before / FLUSH_EVERY != written / FLUSH_EVERY {
                    // A flush already queued covers this one too.
                    let _ = flush_tx.try_send(());
                }
            }
            Ok(file)
        })
        .map_err(io_error("start a writer thread for"))?;

    let reader = &reader;
    let block_size = record.block_size;
    let zero_block = vec![0u8; usize::try_from(block_size).unwrap_or(0)];
    let zero_block = &zero_block;
    let mut summary = RestoreSummary {
        size: record.size,
        blocks_data: 0,
        blocks_zero: 0,
        bytes_written: 0,
    };
    let mut blocks = futures::stream::iter(0..record.block_count())
        .map(|index| async move { Ok::<_, StoreError>((index, reader.read_block(index).await?)) })
        .buffered(READ_AHEAD);
    let mut send_failed = false;
    while let Some((index, data)) = blocks.try_next().await? {
        let len = reader.block_len(index);
        let data = match data {
            Some(data) => {
                summary.blocks_data += 1;
                Some(data)
            }
            None => {
                summary.blocks_zero += 1;
                is_device.then(|| zero_block[..usize::try_from(len).unwrap_or(0)].to_vec())
            }
        };
        if let Some(data) = data {
            summary.bytes_written += data.len() as u64;
            if tx.send((index * block_size, data)).is_err() {
                send_failed = true;
                break;
            }
        }
        progress.advance(len);
    }
    drop(tx);

    let file = writer
        .join()
        .map_err(|_| StoreError::Task("the writer thread panicked".into()))?
        .map_err(io_error("write"))?;
    flusher
        .join()
        .map_err(|_| StoreError::Task("the flush thread panicked".into()))?
        .map_err(io_error("flush"))?;
    if send_failed {
        return Err(StoreError::Task("the writer thread stopped early".into()));
    }
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(io_error("flush"))?;
    Ok(summary)
}

/// Opens the output: a block device as it is, or a regular file created at the snapshot's
/// size (all hole).
fn open_output(path: &Path, size: u64, options: RestoreOptions) -> Result<(File, bool)> {
    let io_error = |op: &'static str| {
        let path = path.display().to_string();
        move |source| StoreError::Io { op, path, source }
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let mut file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error("open"))?;
            let device_size = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                .map_err(io_error("size"))?;
            if device_size < size {
                return Err(StoreError::InvalidArgument(format!(
                    "{} holds {device_size} bytes, less than the snapshot's {size}",
                    path.display()
                )));
            }
            return Ok((file, true));
        }
        Ok(meta) if meta.is_dir() => {
            return Err(StoreError::InvalidArgument(format!(
                "{} is a directory; give a file name to restore into",
                path.display()
            )));
        }
        Ok(meta) if meta.is_file() && !options.overwrite => {
            return Err(StoreError::InvalidArgument(format!(
                "{} already exists; remove it or pass --force to replace it",
                path.display()
            )));
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("create"))?;
    file.set_len(size).map_err(io_error("size"))?;
    Ok((file, false))
}

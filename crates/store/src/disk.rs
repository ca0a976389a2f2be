//! A committed snapshot seen as a disk by the format readers.
//!
//! Format readers are blocking code on a reader thread; a snapshot is read with async store
//! calls. [`SnapshotDisk`] bridges the two with a runtime handle, so that a snapshot can be
//! the backing disk of a qcow2 overlay (an incremental snapshot reads the overlay's clusters
//! and takes the rest of each touched block from the parent) or stand in for the bottom of
//! an imported image's backing chain.

use std::sync::Arc;

use blockyard_formats::{DiskReader, Extent, ExtentKind, FormatError};
use tokio::runtime::Handle;

use crate::reader::SnapshotReader;

/// Blocks kept decoded: a qcow2 overlay reads its backing disk cluster by cluster, so the
/// same block is asked for once per cluster the overlay did not write in it.
const BLOCK_CACHE: usize = 4;

/// A snapshot as a [`DiskReader`]. Its methods block on the runtime and must be called from
/// a thread that is not running async tasks (a reader thread, `spawn_blocking`).
#[derive(Debug)]
pub struct SnapshotDisk {
    reader: Arc<SnapshotReader>,
    handle: Handle,
    name: String,
    /// Recently read blocks, newest last.
    cache: Vec<(u64, Option<Arc<Vec<u8>>>)>,
}

impl SnapshotDisk {
    /// The snapshot `reader` reads, with async calls run on `handle`.
    pub fn new(reader: Arc<SnapshotReader>, handle: Handle) -> Self {
        let name = format!("snapshot {}", reader.record().id);
        Self {
            reader,
            handle,
            name,
            cache: Vec::with_capacity(BLOCK_CACHE),
        }
    }

    fn error(&self, offset: u64, source: crate::StoreError) -> FormatError {
        FormatError::SourceRead {
            name: self.name.clone(),
            offset,
            source: Box::new(source),
        }
    }

    fn block(&mut self, index: u64) -> Result<Option<Arc<Vec<u8>>>, FormatError> {
        if let Some(at) = self.cache.iter().position(|(i, _)| *i == index) {
            let entry = self.cache.remove(at);
            let data = entry.1.clone();
            self.cache.push(entry);
            return Ok(data);
        }
        let offset = index.saturating_mul(self.reader.record().block_size);
        let data = self
            .handle
            .block_on(self.reader.read_block(index))
            .map_err(|e| self.error(offset, e))?
            .map(Arc::new);
        if self.cache.len() >= BLOCK_CACHE {
            self.cache.remove(0);
        }
        self.cache.push((index, data.clone()));
        Ok(data)
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), FormatError> {
        let size = self.size();
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size,
            });
        }
        Ok(())
    }
}

impl DiskReader for SnapshotDisk {
    fn size(&self) -> u64 {
        self.reader.record().size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.check_range(offset, 1)?;
        let block_size = self.reader.record().block_size;
        let index = offset / block_size;
        let id = self
            .handle
            .block_on(self.reader.block_id(index))
            .map_err(|e| self.error(offset, e))?;
        let end = (index + 1).saturating_mul(block_size).min(self.size());
        Ok(Extent {
            offset,
            length: end - offset,
            kind: if id.is_some() {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            },
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.check_range(offset, buf.len() as u64)?;
        let block_size = self.reader.record().block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = at / block_size;
            let within = usize::try_from(at % block_size).unwrap_or(0);
            let block_len = usize::try_from(self.reader.block_len(index)).unwrap_or(0);
            let n = (block_len - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.block(index)? {
                Some(data) => out.copy_from_slice(&data[within..within + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}

//! The disk under a copy-on-write layer.

use crate::{DiskReader, Extent, ExtentKind, FormatError};

/// What a copy-on-write image (qcow2, differencing VHD) reads where it stores nothing: its
/// backing disk, or zeros when it has none. A backing disk shorter than the image reads as
/// zeros past its end, as qemu does.
#[derive(Debug, Default)]
pub struct BackingDisk {
    disk: Option<Box<dyn DiskReader>>,
}

impl std::fmt::Debug for dyn DiskReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReader")
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

impl BackingDisk {
    /// A backing disk, or none (the layer's unallocated regions read as zeros).
    pub fn new(disk: Option<Box<dyn DiskReader>>) -> Self {
        Self { disk }
    }

    /// True when there is a disk below.
    pub fn is_present(&self) -> bool {
        self.disk.is_some()
    }

    /// The extent of the backing disk at `offset`, cut to at most `max_len` bytes. Past
    /// the backing disk's end, and with no backing disk, everything is zero.
    pub fn extent_at(&mut self, offset: u64, max_len: u64) -> Result<Extent, FormatError> {
        let zero = Extent {
            offset,
            length: max_len,
            kind: ExtentKind::Zero,
        };
        let Some(disk) = self.disk.as_mut() else {
            return Ok(zero);
        };
        if offset >= disk.size() {
            return Ok(zero);
        }
        let extent = disk.extent_at(offset)?;
        let end = extent.end().min(offset.saturating_add(max_len));
        Ok(Extent {
            offset,
            length: end.saturating_sub(offset).max(1),
            kind: extent.kind,
        })
    }

    /// Fills `buf` with the backing disk's bytes at `offset`, zeros past its end.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let Some(disk) = self.disk.as_mut() else {
            buf.fill(0);
            return Ok(());
        };
        let size = disk.size();
        let inside = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(inside);
        if !head.is_empty() {
            disk.read_at(offset, head)?;
        }
        tail.fill(0);
        Ok(())
    }
}

//! A raw disk image on local disk that a pull may take blocks from, read around its holes.
//!
//! Seeds and previous outputs are sparse files, often far larger than the data they hold:
//! a 4 GiB image of an 800 MiB file system is mostly hole. Reading a hole makes the kernel
//! zero pages and copy them out, and hashing them finds nothing (a snapshot records an
//! all-zero block as zero, never as data), so holes are never read:
//!
//! ```text
//!  offset  0        B        2B       3B       4B       5B   len
//!          |--------|--------|--------|--------|--------|--|
//!  file    | data ##|####    |        |        |   ###  |##|   (blank: hole)
//!  blocks  |   0    |   1    |        |        |   4    |5 |   those that meet data
//! ```
//!
//! `SEEK_DATA` and `SEEK_HOLE` find the runs of data. A block that meets data anywhere is
//! read whole; the last block of a file whose length is not a multiple of the block size
//! is short. Where the file system cannot report holes, every block counts as data.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::SeekFrom as RawSeek;
use rustix::io::Errno;

use crate::error::{Result, StoreError};

/// A local file blocks may be taken from. Shared between threads: every read is positional.
#[derive(Debug)]
pub(super) struct LocalFile {
    file: File,
    name: String,
    /// The length when opened; a file that grows later is read only this far.
    len: u64,
    /// False once the file system has said it cannot report holes: every block is read.
    seek_holes: AtomicBool,
}

impl LocalFile {
    /// Opens `path`; `role` (seed, previous output) names it in messages.
    pub(super) fn open(path: &Path, role: &str) -> Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| StoreError::Io {
            op: "open",
            path: format!("the {role} {name}"),
            source,
        })?;
        let meta = file.metadata().map_err(|source| StoreError::Io {
            op: "inspect",
            path: name.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(StoreError::InvalidArgument(format!(
                "{name} is not a regular file; a {role} must be a raw disk image file"
            )));
        }
        Ok(Self {
            file,
            name,
            len: meta.len(),
            seek_holes: AtomicBool::new(true),
        })
    }

    /// The file's length when it was opened.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The first byte at or after `offset` that the file system does not report as hole,
    /// or `None` when only hole lies between `offset` and the end.
    fn data_from(&self, offset: u64) -> Option<u64> {
        if offset >= self.len {
            return None;
        }
        if !self.seek_holes.load(Ordering::Relaxed) {
            return Some(offset);
        }
        match rustix::fs::seek(&self.file, RawSeek::Data(offset)) {
            Ok(start) => Some(start).filter(|&start| start < self.len),
            // Only hole from `offset` on, or the file shrank below it since it was opened.
            Err(Errno::NXIO) => None,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                self.seek_holes.store(false, Ordering::Relaxed);
                Some(offset)
            }
            // Taken as data: the read that follows meets the same trouble and reports it.
            Err(_) => Some(offset),
        }
    }

    /// Where the run of data holding `offset` ends: at the next hole, or at the end.
    fn data_end(&self, offset: u64) -> u64 {
        if !self.seek_holes.load(Ordering::Relaxed) {
            return self.len;
        }
        match rustix::fs::seek(&self.file, RawSeek::Hole(offset)) {
            Ok(end) => end.clamp(offset + 1, self.len),
            Err(_) => self.len,
        }
    }

    /// Whether the `len` bytes at `offset` may hold data: false only when the file system
    /// reports them all as hole, or the file ends before them. One `lseek`.
    pub(super) fn may_hold_data(&self, offset: u64, len: u64) -> bool {
        self.data_from(offset)
            .is_some_and(|start| start < offset.saturating_add(len))
    }

    /// The numbers of the `block_size` blocks that meet the file's data, in order. Costs
    /// two `lseek` calls per run of data, whatever the file's length.
    pub(super) fn data_blocks(&self, block_size: u64) -> Vec<u64> {
        let mut blocks: Vec<u64> = Vec::new();
        let mut at = 0;
        while let Some(start) = self.data_from(at) {
            let end = self.data_end(start);
            // A block that two runs share is listed once.
            let first = (start / block_size).max(blocks.last().map_or(0, |&last| last + 1));
            blocks.extend(first..end.div_ceil(block_size));
            at = end;
        }
        blocks
    }

    /// The `len` bytes at `offset` when they may hold data, or `None` when they lie wholly
    /// in a hole or the file ends before them.
    pub(super) fn read_data(&self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if !self.may_hold_data(offset, len) {
            return Ok(None);
        }
        self.read(offset, len)
    }

    /// The `len` bytes at `offset`, or `None` when the file ends before them.
    pub(super) fn read(&self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        Ok(self.read_into(offset, &mut data)?.then_some(data))
    }

    /// Fills `buf` with the bytes at `offset`; false when the file ends before they do.
    pub(super) fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Ok(false);
        }
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(true),
            // The file shrank since it was opened.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(source) => Err(StoreError::Io {
                op: "read",
                path: self.name.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of 64 KiB: a multiple of every file system's allocation unit, so that data
    /// written at a block boundary starts an extent there.
    const BLOCK: u64 = 64 << 10;

    /// A file of `len` bytes with `runs` of data, each (offset, length), filled with 0x5a;
    /// the rest is hole. `None` where the file system cannot report holes, as the test
    /// would then check nothing.
    fn sparse_file(len: u64, runs: &[(u64, u64)]) -> Option<(tempfile::TempDir, LocalFile)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.img");
        let file = File::create(&path).expect("create");
        file.set_len(len).expect("set_len");
        for &(offset, length) in runs {
            let data = vec![0x5au8; usize::try_from(length).expect("length")];
            file.write_all_at(&data, offset).expect("write");
        }
        file.sync_all().expect("sync");
        let local = LocalFile::open(&path, "seed").expect("open");
        if local.data_from(0) == Some(0) && runs.first().is_none_or(|&(start, _)| start > 0) {
            eprintln!(
                "the file system of {} reports no holes",
                dir.path().display()
            );
            return None;
        }
        Some((dir, local))
    }

    #[test]
    fn only_blocks_that_meet_data_are_listed() {
        // Data wholly inside block 1, and a run from the middle of block 4 into block 6.
        let runs = [(BLOCK, 4096), (4 * BLOCK + BLOCK / 2, 2 * BLOCK)];
        let Some((_dir, seed)) = sparse_file(10 * BLOCK, &runs) else {
            return;
        };

        assert_eq!(seed.data_blocks(BLOCK), vec![1, 4, 5, 6]);
    }

    #[test]
    fn a_block_two_runs_share_is_listed_once() {
        // Two runs in block 2 with a hole between them, the second running into block 3.
        let runs = [(2 * BLOCK, 4096), (2 * BLOCK + 3 * 4096, BLOCK)];
        let Some((_dir, seed)) = sparse_file(8 * BLOCK, &runs) else {
            return;
        };

        assert_eq!(seed.data_blocks(BLOCK), vec![2, 3]);
    }

    #[test]
    fn a_short_last_block_with_data_is_listed_and_read_short() {
        // 3.5 blocks; data in the last half block only.
        let len = 3 * BLOCK + BLOCK / 2;
        let Some((_dir, seed)) = sparse_file(len, &[(3 * BLOCK, 4096)]) else {
            return;
        };

        assert_eq!(seed.data_blocks(BLOCK), vec![3]);
        let short = seed.read_data(3 * BLOCK, BLOCK / 2).expect("read");
        assert_eq!(short.map(|data| data[..4096] == [0x5a; 4096]), Some(true));
        assert_eq!(
            seed.read_data(3 * BLOCK, BLOCK).expect("read"),
            None,
            "past the end"
        );
    }

    #[test]
    fn a_file_of_only_hole_lists_no_blocks() {
        let Some((_dir, seed)) = sparse_file(5 * BLOCK + 100, &[]) else {
            return;
        };

        assert!(seed.data_blocks(BLOCK).is_empty());
    }

    #[test]
    fn a_block_in_a_hole_is_not_read_and_one_meeting_data_is() {
        let Some((_dir, seed)) = sparse_file(4 * BLOCK, &[(2 * BLOCK + BLOCK - 4096, 4096)]) else {
            return;
        };

        assert!(!seed.may_hold_data(0, BLOCK));
        assert_eq!(seed.read_data(BLOCK, BLOCK).expect("read"), None);
        assert!(
            seed.may_hold_data(2 * BLOCK, BLOCK),
            "data in its last page"
        );
        let data = seed
            .read_data(2 * BLOCK, BLOCK)
            .expect("read")
            .expect("data");
        assert_eq!(data.last(), Some(&0x5a));
        assert!(!seed.may_hold_data(3 * BLOCK, BLOCK), "hole to the end");
        assert!(!seed.may_hold_data(4 * BLOCK, BLOCK), "past the end");
    }

    #[test]
    fn a_file_written_whole_is_one_run_of_data() {
        // No hole at all: every block, the short last one included.
        let len = 3 * BLOCK + 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("full.img");
        std::fs::write(&path, vec![1u8; usize::try_from(len).expect("len")]).expect("write");
        let seed = LocalFile::open(&path, "seed").expect("open");

        assert_eq!(seed.data_blocks(BLOCK), vec![0, 1, 2, 3]);
    }
}

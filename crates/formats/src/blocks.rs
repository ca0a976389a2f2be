//! Cutting a virtual disk into fixed-size blocks.

use crate::{DiskReader, Extent, ExtentKind, FormatError};

/// Smallest block size a store may use: one page.
pub const MIN_BLOCK_SIZE: u64 = 4 << 10;
/// Largest block size a store may use; a block is held in memory whole.
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;

/// One fixed-size block of a virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// The block reads as zeros: a hole, an unallocated region, or data that is all zero.
    Zero,
    /// The block's bytes. The last block of a disk whose size is not a multiple of the
    /// block size is shorter.
    Data(Vec<u8>),
    /// The image's top layer stores nothing in this block: it is what the backing disk
    /// holds. Only [`Blocks::changes`] yields this.
    Unchanged,
}

/// True when every byte of `bytes` is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed 64-byte chunks lets the compiler vectorise; this runs on every block.
    let mut chunks = bytes.chunks_exact(64);
    let body_zero = chunks
        .by_ref()
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0);
    body_zero && chunks.remainder().iter().all(|&b| b == 0)
}

/// An iterator over the blocks of a disk, in order: `(index, block)`.
///
/// Regions the reader reports as zero are never read. Data regions are read and checked, and
/// a block that holds only zeros is yielded as [`Block::Zero`].
#[derive(Debug)]
pub struct Blocks<R> {
    reader: R,
    block_size: u64,
    size: u64,
    next_index: u64,
    /// The last extent the reader reported, so that a long hole costs one query, not one
    /// per block.
    last_extent: Option<Extent>,
    /// Whether blocks the top layer leaves to its backing disk are skipped.
    changes_only: bool,
}

impl<R: DiskReader> Blocks<R> {
    /// Cuts `reader`'s disk into blocks of `block_size` bytes.
    pub fn new(reader: R, block_size: u64) -> Result<Self, FormatError> {
        let valid =
            block_size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size);
        if !valid {
            return Err(FormatError::BadBlockSize(block_size));
        }
        let size = reader.size();
        Ok(Self {
            reader,
            block_size,
            size,
            next_index: 0,
            last_extent: None,
            changes_only: false,
        })
    }

    /// Cuts only what `reader`'s top layer stores: a block the layer leaves wholly to its
    /// backing disk is yielded as [`Block::Unchanged`] without reading it, and any other
    /// block is read whole, backing parts included. For a copy-on-write overlay whose
    /// backing disk is the parent snapshot, this reads the overlay's writes and no more.
    pub fn changes(reader: R, block_size: u64) -> Result<Self, FormatError> {
        let mut blocks = Self::new(reader, block_size)?;
        blocks.changes_only = true;
        Ok(blocks)
    }

    /// How many blocks the disk has, counting a short last block.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// The reader the blocks come from.
    pub fn reader_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    fn read_block(&mut self, index: u64) -> Result<Block, FormatError> {
        let start = index * self.block_size;
        let end = (start + self.block_size).min(self.size);

        // Skip the whole block if the reader knows it is zero (or, for changes, untouched);
        // otherwise read it whole, as a block that is partly data is stored whole.
        let mut offset = start;
        let mut seen_zero = false;
        let mut seen_backing = false;
        let mut must_read = false;
        while offset < end {
            let extent = match self.last_extent {
                Some(e) if e.offset <= offset && offset < e.end() => e,
                _ => {
                    let e = if self.changes_only {
                        self.reader.layer_extent_at(offset)?
                    } else {
                        self.reader.extent_at(offset)?
                    };
                    self.last_extent = Some(e);
                    e
                }
            };
            match extent.kind {
                ExtentKind::Data => must_read = true,
                ExtentKind::Zero => seen_zero = true,
                ExtentKind::Backing => seen_backing = true,
            }
            // Zero beside backing bytes must be read too: the backing part may hold data.
            if must_read || (seen_zero && seen_backing) {
                must_read = true;
                break;
            }
            offset = extent.end().max(offset + 1);
        }
        if !must_read {
            return Ok(if seen_backing {
                Block::Unchanged
            } else {
                Block::Zero
            });
        }

        let len =
            usize::try_from(end - start).map_err(|_| FormatError::BadBlockSize(end - start))?;
        let buf = self.reader.read_vec(start, len)?;
        if is_zero(&buf) {
            Ok(Block::Zero)
        } else {
            Ok(Block::Data(buf))
        }
    }
}

impl<R: DiskReader> Iterator for Blocks<R> {
    type Item = Result<(u64, Block), FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next_index;
        if index >= self.block_count() {
            return None;
        }
        self.next_index += 1;
        Some(self.read_block(index).map(|block| (index, block)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_of_any_length_are_zero() {
        // Empty, shorter than one 64-byte chunk, chunk edges, and a remainder after chunks.
        for len in [0, 1, 63, 64, 65, 128, 4096 + 13] {
            assert!(is_zero(&vec![0u8; len]), "{len} zero bytes");
        }
    }

    #[test]
    fn one_set_bit_anywhere_is_not_zero() {
        // Three 64-byte chunks and a remainder of 8: every byte of both parts is tried.
        let len = 3 * 64 + 8;
        for at in 0..len {
            for bit in [0x01, 0x80] {
                let mut bytes = vec![0u8; len];
                bytes[at] = bit;
                assert!(!is_zero(&bytes), "byte {at} set to {bit:#x}");
            }
        }
    }
}

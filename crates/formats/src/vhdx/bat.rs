//! The block allocation table: one 64-bit entry per payload block, with a sector bitmap
//! entry after every chunk ratio of them ([MS-VHDX] §2.5).
//!
//! ```text
//!  BAT entry (u64, little-endian)
//!  bits 0..3    state       payload: NOT_PRESENT 0, UNDEFINED 1, ZERO 2, UNMAPPED 3,
//!                            FULLY_PRESENT 6, PARTIALLY_PRESENT 7
//!                            sector bitmap: NOT_PRESENT 0, PRESENT 6
//!  bits 3..20   reserved
//!  bits 20..64  FileOffsetMB, the block's file offset in MiB
//!
//!  chunk ratio 4:  P0 P1 P2 P3 SB0 P4 P5 P6 P7 SB1 ...
//! ```
//!
//! The table is read a page at a time and a few pages are kept, so a 64 TiB disk of 1 MiB
//! blocks (512 MiB of table) costs a few MiB of memory and one read per 128 GiB of disk.

use crate::{ByteSource, FormatError};

use super::MIB;

/// Payload block states (§2.5.1.1).
pub(crate) const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
pub(crate) const PAYLOAD_BLOCK_UNDEFINED: u64 = 1;
pub(crate) const PAYLOAD_BLOCK_ZERO: u64 = 2;
pub(crate) const PAYLOAD_BLOCK_UNMAPPED: u64 = 3;
/// The value draft 0.95 of the specification gave PAYLOAD_BLOCK_UNMAPPED, which images made
/// by early Windows 8 builds still carry; qemu reads it the same way.
pub(crate) const PAYLOAD_BLOCK_UNMAPPED_DRAFT: u64 = 5;
pub(crate) const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
pub(crate) const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block state for a block present in the file (§2.5.1.2).
pub(crate) const SB_BLOCK_PRESENT: u64 = 6;

/// Bytes of a BAT entry.
pub(crate) const BAT_ENTRY_LEN: u64 = 8;
/// The state bits of an entry.
const STATE_MASK: u64 = 0b111;
/// FileOffsetMB starts at bit 20.
const FILE_OFFSET_SHIFT: u32 = 20;
/// Entries read and cached together: 1 MiB of table, which maps 128 GiB of disk in 1 MiB
/// blocks, or 4 TiB in 32 MiB blocks.
const PAGE_ENTRIES: u64 = MIB / BAT_ENTRY_LEN;
/// Pages kept, in pages of 1 MiB: enough for a sequential pass and a few random lookups.
const MAX_CACHED_PAGES: usize = 8;

/// A decoded BAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatEntry {
    /// The state bits.
    pub(crate) state: u64,
    /// The file offset FileOffsetMB names, in bytes.
    pub(crate) file_offset: u64,
}

impl BatEntry {
    /// Decodes an entry as stored.
    pub(crate) fn decode(raw: u64) -> Self {
        Self {
            state: raw & STATE_MASK,
            file_offset: (raw >> FILE_OFFSET_SHIFT) << FILE_OFFSET_SHIFT,
        }
    }

    /// Encodes an entry; `file_offset` must be a multiple of 1 MiB.
    pub(crate) fn encode(state: u64, file_offset: u64) -> u64 {
        (file_offset & !(MIB - 1)) | (state & STATE_MASK)
    }
}

#[derive(Debug)]
struct Page {
    /// Index of the page's first entry.
    first: u64,
    entries: Vec<u64>,
    /// When the page was last used, for eviction.
    used: u64,
}

/// The BAT, read lazily in pages.
#[derive(Debug)]
pub(crate) struct Bat {
    /// File offset of the table.
    offset: u64,
    /// How many entries the disk's geometry needs.
    entries: u64,
    pages: Vec<Page>,
    clock: u64,
}

impl Bat {
    /// The table of `entries` entries at file offset `offset`. The caller has checked that
    /// they fit in the BAT region and that the region lies in the file.
    pub(crate) fn new(offset: u64, entries: u64) -> Self {
        Self {
            offset,
            entries,
            pages: Vec::new(),
            clock: 0,
        }
    }

    /// The file offset of entry `index`, for messages.
    pub(crate) fn entry_offset(&self, index: u64) -> u64 {
        self.offset
            .saturating_add(index.saturating_mul(BAT_ENTRY_LEN))
    }

    /// Entry `index`, which must be below the entry count.
    pub(crate) fn entry(
        &mut self,
        source: &dyn ByteSource,
        index: u64,
    ) -> Result<BatEntry, FormatError> {
        if index >= self.entries {
            return Err(FormatError::OutOfRange {
                offset: index,
                length: 1,
                size: self.entries,
            });
        }
        self.clock += 1;
        let first = index - index % PAGE_ENTRIES;
        let slot = match self.pages.iter().position(|page| page.first == first) {
            Some(slot) => slot,
            None => self.load(source, first)?,
        };
        let page = &mut self.pages[slot];
        page.used = self.clock;
        // Page entries are read up to the table's end, which `index` is below.
        let raw = page
            .entries
            .get(usize::try_from(index - first).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(0);
        Ok(BatEntry::decode(raw))
    }

    /// Reads the page starting at entry `first` and returns its slot.
    fn load(&mut self, source: &dyn ByteSource, first: u64) -> Result<usize, FormatError> {
        let count = (self.entries - first).min(PAGE_ENTRIES);
        // At most PAGE_ENTRIES entries of 8 bytes: 1 MiB.
        let len = usize::try_from(count * BAT_ENTRY_LEN).unwrap_or(0);
        let bytes = source.read_vec(self.entry_offset(first), len)?;
        let entries = bytes
            .chunks_exact(8)
            .map(|raw| {
                let mut array = [0u8; 8];
                array.copy_from_slice(raw);
                u64::from_le_bytes(array)
            })
            .collect();
        let page = Page {
            first,
            entries,
            used: self.clock,
        };
        if self.pages.len() < MAX_CACHED_PAGES {
            self.pages.push(page);
            return Ok(self.pages.len() - 1);
        }
        let oldest = self
            .pages
            .iter()
            .enumerate()
            .min_by_key(|(_, page)| page.used)
            .map_or(0, |(slot, _)| slot);
        self.pages[oldest] = page;
        Ok(oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_state_and_offset() {
        let entry = BatEntry::decode(0x0000_0000_0080_0006);
        assert_eq!(entry.state, PAYLOAD_BLOCK_FULLY_PRESENT);
        assert_eq!(entry.file_offset, 8 * MIB);
        assert_eq!(BatEntry::encode(6, 8 * MIB), 0x0000_0000_0080_0006);
        // Reserved bits 3..20 are not part of the offset.
        assert_eq!(BatEntry::decode(0xF_FFF8).file_offset, 0);
    }
}

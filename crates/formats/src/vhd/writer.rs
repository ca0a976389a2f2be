//! Writing fixed and dynamic disks, strictly front to back.
//!
//! A fixed disk is the disk's bytes (zero runs left as holes on a file) and the footer. A
//! dynamic disk is laid out from the export's layout before any data arrives:
//!
//! ```text
//!  0     footer copy
//!  512   dynamic disk header: 2 MiB blocks, table at 1536
//!  1536  block allocation table, one entry per 2 MiB of disk, padded with 0xFF
//!        zeros up to the first block, placed so that block data starts on 4 KiB
//!  ...   each block holding any data, in disk order: bitmap of all ones, 2 MiB of data
//!  end   footer
//! ```
//!
//! Blocks without data stay unallocated. A block is allocated whole: the parts of it that
//! the export has no data for are written as zeros (holes on a file) and marked stored
//! in its bitmap, as qemu does.
//!
//! The size written is the export's size rounded up to whole sectors. The footer records
//! it exactly as "current size", with the geometry the spec's CHS algorithm gives, which may
//! cover a little less. The creator application is `qem2`, the code qemu writes for images
//! whose current size is exact: it makes qemu read the current size rather than the
//! geometry, as Hyper-V, Windows and VirtualBox always do.

use super::footer::{Footer, Geometry, NO_DATA_OFFSET, VhdDiskType, vhd_timestamp};
use super::header::{DynamicHeader, PARENT_NAME_LEN};
use super::reader::UNUSED_ENTRY;
use super::{MAX_WRITE_SIZE, SECTOR};
use crate::FormatError;
use crate::ImageSink;
use crate::export::{BlockFeed, ExportLayout, FeedCursor, ImageIdentity};

/// How the exported VHD stores its disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VhdSubformat {
    /// Every byte of the disk in place, then the footer: as large as the disk, readable by
    /// anything that reads raw images, the form Azure takes.
    Fixed,
    /// Only the 2 MiB blocks that hold data, found through a table.
    #[default]
    Dynamic,
}

/// Choices for [`write`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhdWriteOptions {
    /// Fixed or dynamic.
    pub subformat: VhdSubformat,
}

/// Bytes of disk in each block of a dynamic disk written: the spec's default, and what
/// qemu and Hyper-V write.
const BLOCK_SIZE: u64 = 2 << 20;
/// Bytes of a 2 MiB block's sector bitmap: 4096 sectors at a bit each, a whole sector.
const BITMAP_LEN: usize = 512;
/// The bitmap written in front of every block: every sector stored.
const FULL_BITMAP: [u8; BITMAP_LEN] = [0xff; BITMAP_LEN];
/// Where the dynamic disk header is written: right after the footer copy.
const HEADER_OFFSET: u64 = 512;
/// Where the block allocation table is written: right after the header.
const TABLE_OFFSET: u64 = 1536;
/// Block data starts on multiples of this many bytes, a page, so that a block's zero
/// parts are whole holes in the file and reads of the data are aligned.
const DATA_ALIGN: u64 = 4096;

/// Footer field "Creator Application": see the module docs.
const CREATOR_APPLICATION: [u8; 4] = *b"qem2";
/// Footer field "Creator Version": version 1.0 of this writer's layout.
const CREATOR_VERSION: u32 = 0x0001_0000;
/// Footer field "Creator Host OS": "Wi2k", what every writer but Virtual PC for Mac uses.
const CREATOR_HOST_OS: [u8; 4] = *b"Wi2k";

/// Pieces written through [`Output`] are gathered into writes of up to this many bytes.
const GATHER_LEN: usize = 2 << 20;
/// Pieces at least this long are written as they are, without a copy.
const DIRECT_WRITE_LEN: usize = 256 << 10;

/// Writes the export described by `layout`, with the data blocks from `feed`, to `sink` as
/// a VHD. The output is written front to back and never rewritten, so `sink` may be a
/// pipe or an upload.
pub fn write(
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
    options: &VhdWriteOptions,
    identity: &ImageIdentity,
) -> Result<(), FormatError> {
    layout.validate()?;
    let size = layout
        .size
        .checked_next_multiple_of(SECTOR)
        .filter(|&size| size <= MAX_WRITE_SIZE)
        .ok_or_else(|| FormatError::CannotWrite {
            format: "VHD",
            problem: format!(
                "a disk of {} bytes is larger than the {MAX_WRITE_SIZE} bytes (2040 GiB) a VHD \
                 holds; export it as VHDX or qcow2",
                layout.size
            ),
        })?;
    let disk_type = match options.subformat {
        VhdSubformat::Fixed => VhdDiskType::Fixed,
        VhdSubformat::Dynamic => VhdDiskType::Dynamic,
    };
    let footer = Footer {
        data_offset: match disk_type {
            VhdDiskType::Fixed => NO_DATA_OFFSET,
            _ => HEADER_OFFSET,
        },
        timestamp: vhd_timestamp(identity.created_unix),
        creator_application: CREATOR_APPLICATION,
        creator_version: CREATOR_VERSION,
        creator_host_os: CREATOR_HOST_OS,
        original_size: size,
        current_size: size,
        geometry: Geometry::for_sectors(size / SECTOR),
        disk_type,
        unique_id: identity.unique_id,
    }
    .encode();

    let mut cursor = FeedCursor::new(feed, layout, "VHD");
    let mut out = Output::new(sink);
    match options.subformat {
        VhdSubformat::Fixed => write_fixed_data(layout, &mut cursor, &mut out, size)?,
        VhdSubformat::Dynamic => {
            write_dynamic_data(layout, &mut cursor, &mut out, size, &footer)?;
        }
    }
    cursor.finish()?;
    out.bytes(&footer)?;
    out.flush()?;
    out.sink.finish()
}

/// The disk's bytes in place, up to `size`.
fn write_fixed_data(
    layout: &ExportLayout,
    cursor: &mut FeedCursor<'_, dyn BlockFeed + '_>,
    out: &mut Output<'_>,
    size: u64,
) -> Result<(), FormatError> {
    for &index in &layout.data_blocks {
        out.zeros(index * layout.block_size - out.position())?;
        let data = cursor.next_expected(index)?;
        out.bytes(&data)?;
    }
    out.zeros(size - out.position())
}

/// The footer copy, header, table and allocated blocks of a dynamic disk of `size` bytes.
fn write_dynamic_data(
    layout: &ExportLayout,
    cursor: &mut FeedCursor<'_, dyn BlockFeed + '_>,
    out: &mut Output<'_>,
    size: u64,
    footer: &[u8],
) -> Result<(), FormatError> {
    let blocks = size.div_ceil(BLOCK_SIZE);
    let allocated = allocated_blocks(layout);
    let table_len = (blocks * 4).next_multiple_of(SECTOR);
    let first_block = (TABLE_OFFSET + table_len + BITMAP_LEN as u64).next_multiple_of(DATA_ALIGN)
        - BITMAP_LEN as u64;
    let span = BITMAP_LEN as u64 + BLOCK_SIZE;

    // The table: every entry unused but those of the allocated blocks, in disk order.
    let too_large = || FormatError::CannotWrite {
        format: "VHD",
        problem: "the image would pass the 2 TiB its block table can address; export it as \
                  VHDX or qcow2"
            .to_owned(),
    };
    let mut table = vec![0xffu8; usize::try_from(table_len).map_err(|_| too_large())?];
    for (rank, &block) in allocated.iter().enumerate() {
        let at = first_block + rank as u64 * span;
        let sector = u32::try_from(at / SECTOR)
            .ok()
            .filter(|&sector| sector != UNUSED_ENTRY)
            .ok_or_else(too_large)?;
        let entry = usize::try_from(block * 4).map_err(|_| too_large())?;
        table[entry..entry + 4].copy_from_slice(&sector.to_be_bytes());
    }
    let header = DynamicHeader {
        table_offset: TABLE_OFFSET,
        max_table_entries: u32::try_from(blocks).map_err(|_| too_large())?,
        block_size: u32::try_from(BLOCK_SIZE).map_err(|_| too_large())?,
        parent_unique_id: [0; 16],
        parent_timestamp: 0,
        parent_name: [0; PARENT_NAME_LEN],
        locators: Vec::new(),
    };
    out.bytes(footer)?;
    out.bytes(&header.encode())?;
    out.bytes(&table)?;
    out.zeros(first_block - out.position())?;

    // Each allocated block's part of the data blocks, which may be smaller than a VHD
    // block (several to a block) or larger (one held across several blocks).
    let mut next = 0;
    let mut held: Option<(u64, Vec<u8>)> = None;
    for &block in &allocated {
        out.bytes(&FULL_BITMAP)?;
        let start = block * BLOCK_SIZE;
        let end = (start + BLOCK_SIZE).min(layout.size);
        let mut written_to = start;
        while let Some(&index) = layout.data_blocks.get(next) {
            let data_start = index * layout.block_size;
            if data_start >= end {
                break;
            }
            let data_end = data_start + layout.block_len(index);
            let data = match held.take() {
                Some((held_index, data)) if held_index == index => data,
                _ => cursor.next_expected(index)?,
            };
            let from = data_start.max(start);
            let to = data_end.min(end);
            out.zeros(from - written_to)?;
            out.bytes(slice(&data, from - data_start, to - data_start))?;
            written_to = to;
            if data_end > end {
                held = Some((index, data));
                break;
            }
            next += 1;
        }
        out.zeros(start + BLOCK_SIZE - written_to)?;
    }
    Ok(())
}

/// The VHD blocks any data block overlaps, ascending.
fn allocated_blocks(layout: &ExportLayout) -> Vec<u64> {
    let mut allocated: Vec<u64> = Vec::new();
    for &index in &layout.data_blocks {
        let start = index * layout.block_size;
        let end = start + layout.block_len(index).max(1);
        for block in start / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE {
            if allocated.last().is_none_or(|&last| last < block) {
                allocated.push(block);
            }
        }
    }
    allocated
}

/// `data[from..to]`; the bounds come from a block's own range, so they fit.
fn slice(data: &[u8], from: u64, to: u64) -> &[u8] {
    let from = usize::try_from(from).unwrap_or(data.len()).min(data.len());
    let to = usize::try_from(to)
        .unwrap_or(data.len())
        .clamp(from, data.len());
    &data[from..to]
}

/// A sink that gathers small pieces into large writes and leaves zero runs to the sink
/// (holes on a file).
struct Output<'a> {
    sink: &'a mut dyn ImageSink,
    pending: Vec<u8>,
}

impl<'a> Output<'a> {
    fn new(sink: &'a mut dyn ImageSink) -> Self {
        Self {
            sink,
            pending: Vec::with_capacity(GATHER_LEN),
        }
    }

    /// Bytes written so far, gathered ones included.
    fn position(&self) -> u64 {
        self.sink.position() + self.pending.len() as u64
    }

    fn bytes(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        if bytes.len() >= DIRECT_WRITE_LEN {
            self.flush()?;
            return self.sink.write_all(bytes);
        }
        if self.pending.len() + bytes.len() > GATHER_LEN {
            self.flush()?;
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), FormatError> {
        if len == 0 {
            return Ok(());
        }
        self.flush()?;
        self.sink.write_zeros(len)
    }

    fn flush(&mut self) -> Result<(), FormatError> {
        if !self.pending.is_empty() {
            self.sink.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_blocks_allocate_every_vhd_block_they_touch() {
        // 512 KiB data blocks: 0 and 3 share VHD block 0, 9 lies in VHD block 2.
        let small = ExportLayout {
            size: 12 << 20,
            block_size: 512 << 10,
            data_blocks: vec![0, 3, 9],
        };
        assert_eq!(allocated_blocks(&small), vec![0, 2]);
        // 8 MiB data blocks: block 1 spans VHD blocks 4..8; the last one is short.
        let large = ExportLayout {
            size: (16 << 20) + 4096,
            block_size: 8 << 20,
            data_blocks: vec![1, 2],
        };
        assert_eq!(allocated_blocks(&large), vec![4, 5, 6, 7, 8]);
    }
}

//! Writing an export as a dynamic VHDX, strictly front to back.
//!
//! ```text
//!  0        file type identifier, creator "blockyard <version>"
//!  64 KiB   header 1 (sequence 0)       both headers say the same: no log to replay
//!  128 KiB  header 2 (sequence 1)
//!  192 KiB  region table 1               BAT and metadata, both required
//!  256 KiB  region table 2
//!  1 MiB    log, 1 MiB, empty            a hole on a file
//!  2 MiB    metadata, 1 MiB              table, then the five system items at 64 KiB
//!  3 MiB    BAT, rounded up to 1 MiB     computed from the layout before any data
//!  ...      payload blocks               one per block that overlaps a data block, in
//!                                        disk order; zero parts are holes on a file
//! ```
//!
//! Blocks that overlap no data block are PAYLOAD_BLOCK_ZERO, which promises zeros, where
//! NOT_PRESENT would leave a dynamic disk's contents undefined ([MS-VHDX] §2.5.1.1); qemu-img
//! writes the same. VHDX headers hold no time stamp, so `ImageIdentity::created_unix` is not
//! recorded; the unique id becomes the virtual disk id (Page 83 Data) and seeds the file and
//! data write GUIDs.

use crate::export::{BlockFeed, ExportLayout, FeedCursor, ImageIdentity};
use crate::{FormatError, ImageSink};

use super::bat::{BAT_ENTRY_LEN, BatEntry, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_ZERO};
use super::crc::crc32c;
use super::guid::Guid;
use super::header::{
    BAT_REGION, FILE_IDENTIFIER_SIGNATURE, HEADER_OFFSETS, HEADER_SIZE, HEADER_VERSION,
    LOG_VERSION, METADATA_REGION, REGION_ALIGNMENT, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE,
};
use super::metadata::{
    FILE_PARAMETERS, FLAG_IS_REQUIRED, FLAG_IS_VIRTUAL_DISK, LOGICAL_SECTOR_SIZE, MAX_DISK_SIZE,
    MAX_PAYLOAD_BLOCK_SIZE, METADATA_SIGNATURE, METADATA_TABLE_SIZE, MIN_PAYLOAD_BLOCK_SIZE,
    PAGE_83_DATA, PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_SIZE,
};
use super::{FORMAT, HEADER_AREA, MIB, SECTORS_PER_BITMAP_BLOCK};

/// The payload block size exports use unless told otherwise: 1 MiB, the smallest VHDX
/// allows. A block is allocated whole as soon as any store block in it holds data, so the
/// smallest block keeps the most of the snapshot's holes as unallocated blocks, and the
/// table stays small (8 bytes per MiB of disk: 800 KiB for 100 GiB). Hyper-V's 32 MiB
/// default would mark a whole 32 MiB present for one 512 KiB store block.
pub const DEFAULT_BLOCK_SIZE: u64 = MIB;

/// Where the empty log lies, and its length: the smallest log the format allows.
const LOG_OFFSET: u64 = HEADER_AREA;
const LOG_LENGTH: u64 = MIB;
/// Where the metadata region lies, and its length: the smallest region the format allows.
const METADATA_OFFSET: u64 = LOG_OFFSET + LOG_LENGTH;
const METADATA_LENGTH: u64 = MIB;
/// Where the BAT region starts.
const BAT_OFFSET: u64 = METADATA_OFFSET + METADATA_LENGTH;
/// The sector sizes written: 512-byte logical sectors, which every guest and tool reads,
/// on 4 KiB physical sectors, as qemu-img and Hyper-V write by default.
const LOGICAL_SECTOR: u64 = 512;
const PHYSICAL_SECTOR: u64 = 4096;
/// The table is written in pieces of this many bytes, so that a 64 TiB disk's 512 MiB
/// table is never held whole.
const BAT_WRITE_LEN: usize = 1 << 20;
/// The system items written to the metadata table.
const ITEM_COUNT: u16 = 5;
/// Bytes of the first part of the file built in memory: identifier, headers, region tables.
const HEAD_LEN: usize = 320 << 10;

/// How a VHDX export is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxWriteOptions {
    /// Bytes of a payload block: a power of two from 1 MiB to 256 MiB. See
    /// [`DEFAULT_BLOCK_SIZE`].
    pub block_size: u64,
}

impl Default for VhdxWriteOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Writes the export described by `layout`, with the data blocks from `feed`, to `sink` as
/// a dynamic VHDX. Every table comes before the data it describes and nothing is rewritten,
/// so `sink` may be a pipe or an upload.
///
/// The disk's size must be a multiple of 512 bytes (VHDX sizes are whole logical sectors)
/// and at most 64 TiB.
pub fn write(
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
    options: &VhdxWriteOptions,
    identity: &ImageIdentity,
) -> Result<(), FormatError> {
    layout.validate()?;
    let cannot = |problem: String| FormatError::CannotWrite {
        format: FORMAT,
        problem,
    };
    let block_size = options.block_size;
    if !block_size.is_power_of_two()
        || !(MIN_PAYLOAD_BLOCK_SIZE..=MAX_PAYLOAD_BLOCK_SIZE).contains(&block_size)
    {
        return Err(cannot(format!(
            "a block size of {block_size} bytes is not a power of two from 1 MiB to 256 MiB"
        )));
    }
    let size = layout.size;
    if !size.is_multiple_of(LOGICAL_SECTOR) {
        return Err(cannot(format!(
            "a disk of {size} bytes is not a whole number of 512-byte sectors; export it as \
             raw or qcow2"
        )));
    }
    if size > MAX_DISK_SIZE {
        return Err(cannot(format!(
            "a disk of {size} bytes is larger than the 64 TiB a VHDX holds; export it as qcow2 \
             or raw"
        )));
    }

    let plan = Plan::new(size, block_size);
    let guids = Guids::from(identity);
    let mut head = vec![0u8; HEAD_LEN];
    put_identifier(&mut head);
    for (sequence, &offset) in HEADER_OFFSETS.iter().enumerate() {
        put_header(&mut head, offset, sequence as u64, &guids);
    }
    // 64 TiB in 1 MiB blocks needs 512 MiB of table, well within the 32-bit Length field.
    for &offset in &REGION_TABLE_OFFSETS {
        put_region_table(&mut head, offset, plan.bat_length);
    }
    sink.write_all(&head)?;
    sink.write_zeros(HEADER_AREA - HEAD_LEN as u64)?;
    sink.write_zeros(LOG_LENGTH)?;

    let metadata = metadata_table(size, block_size, &guids);
    sink.write_all(&metadata)?;
    sink.write_zeros(METADATA_LENGTH - metadata.len() as u64)?;

    write_bat(layout, &plan, sink)?;
    write_payload(layout, &plan, feed, sink)?;
    sink.finish()
}

/// The numbers of the layout.
#[derive(Debug, Clone, Copy)]
struct Plan {
    size: u64,
    block_size: u64,
    payload_blocks: u64,
    /// Payload blocks per sector bitmap entry.
    chunk_ratio: u64,
    bat_entries: u64,
    /// Bytes of the BAT region: the entries, rounded up to 1 MiB.
    bat_length: u64,
}

impl Plan {
    fn new(size: u64, block_size: u64) -> Self {
        let payload_blocks = size.div_ceil(block_size);
        let chunk_ratio = SECTORS_PER_BITMAP_BLOCK * LOGICAL_SECTOR / block_size;
        // §2.5: a fixed or dynamic disk's table ends with the last payload block's entry.
        let bat_entries = match payload_blocks {
            0 => 0,
            blocks => blocks + (blocks - 1) / chunk_ratio,
        };
        let bat_length = (bat_entries * BAT_ENTRY_LEN)
            .next_multiple_of(REGION_ALIGNMENT)
            .max(REGION_ALIGNMENT);
        Self {
            size,
            block_size,
            payload_blocks,
            chunk_ratio,
            bat_entries,
            bat_length,
        }
    }

    /// The disk's byte range of payload block `index`.
    fn block_range(&self, index: u64) -> (u64, u64) {
        let start = index * self.block_size;
        (start, (start + self.block_size).min(self.size))
    }
}

/// The ids written: the file and data write GUIDs, and the virtual disk id.
#[derive(Debug, Clone, Copy)]
struct Guids {
    file_write: Guid,
    data_write: Guid,
    virtual_disk: Guid,
}

impl From<&ImageIdentity> for Guids {
    fn from(identity: &ImageIdentity) -> Self {
        // Distinct ids from one random id: the write GUIDs differ from it in one byte.
        let derived = |salt: u8| {
            let mut bytes = identity.unique_id;
            bytes[15] ^= salt;
            Guid(bytes)
        };
        Self {
            file_write: derived(0x01),
            data_write: derived(0x02),
            virtual_disk: Guid(identity.unique_id),
        }
    }
}

/// The little-endian bytes of a 32-bit field holding `value`, which the writer has
/// bounded (sizes of at most 256 MiB, offsets within the first megabytes).
fn u32_field(value: u64) -> [u8; 4] {
    u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes()
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The file type identifier (§2.2.1): signature and the creator in UTF-16LE.
fn put_identifier(head: &mut [u8]) {
    put(head, 0, &FILE_IDENTIFIER_SIGNATURE);
    let creator = concat!("blockyard ", env!("CARGO_PKG_VERSION"));
    for (index, unit) in creator.encode_utf16().enumerate() {
        put(head, 8 + 2 * index, &unit.to_le_bytes());
    }
}

/// A header (§2.2.2) with no log to replay.
fn put_header(head: &mut [u8], offset: u64, sequence: u64, guids: &Guids) {
    let at = usize::try_from(offset).unwrap_or(0);
    let header = &mut head[at..at + HEADER_SIZE];
    put(header, 0, b"head");
    put(header, 8, &sequence.to_le_bytes());
    put(header, 16, &guids.file_write.0);
    put(header, 32, &guids.data_write.0);
    // LogGuid (48..64) stays zero: the log is empty.
    put(header, 64, &LOG_VERSION.to_le_bytes());
    put(header, 66, &HEADER_VERSION.to_le_bytes());
    put(header, 68, &u32_field(LOG_LENGTH));
    put(header, 72, &LOG_OFFSET.to_le_bytes());
    let checksum = crc32c(header);
    put(header, 4, &checksum.to_le_bytes());
}

/// A region table (§2.2.3) naming the BAT and the metadata, both required.
fn put_region_table(head: &mut [u8], offset: u64, bat_length: u64) {
    let at = usize::try_from(offset).unwrap_or(0);
    let table = &mut head[at..at + REGION_TABLE_SIZE];
    put(table, 0, b"regi");
    put(table, 8, &2u32.to_le_bytes());
    let regions = [
        (BAT_REGION, BAT_OFFSET, bat_length),
        (METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH),
    ];
    for (index, (guid, file_offset, length)) in regions.into_iter().enumerate() {
        let entry = 16 + 32 * index;
        put(table, entry, &guid.0);
        put(table, entry + 16, &file_offset.to_le_bytes());
        put(table, entry + 24, &u32_field(length));
        put(table, entry + 28, &1u32.to_le_bytes());
    }
    let checksum = crc32c(table);
    put(table, 4, &checksum.to_le_bytes());
}

/// The metadata table and its five items (§2.6), items from 64 KiB.
fn metadata_table(size: u64, block_size: u64, guids: &Guids) -> Vec<u8> {
    let disk_item = FLAG_IS_VIRTUAL_DISK | FLAG_IS_REQUIRED;
    let mut file_parameters = Vec::with_capacity(8);
    // BlockSize, then flags: LeaveBlockAllocated and HasParent both clear.
    file_parameters.extend_from_slice(&u32_field(block_size));
    file_parameters.extend_from_slice(&0u32.to_le_bytes());
    let items: [(Guid, u32, Vec<u8>); ITEM_COUNT as usize] = [
        (FILE_PARAMETERS, FLAG_IS_REQUIRED, file_parameters),
        (VIRTUAL_DISK_SIZE, disk_item, size.to_le_bytes().to_vec()),
        (PAGE_83_DATA, disk_item, guids.virtual_disk.0.to_vec()),
        (
            LOGICAL_SECTOR_SIZE,
            disk_item,
            u32_field(LOGICAL_SECTOR).to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            disk_item,
            u32_field(PHYSICAL_SECTOR).to_vec(),
        ),
    ];

    let mut bytes = vec![0u8; METADATA_TABLE_SIZE];
    put(&mut bytes, 0, &METADATA_SIGNATURE);
    put(&mut bytes, 10, &ITEM_COUNT.to_le_bytes());
    for (index, (guid, flags, item)) in items.iter().enumerate() {
        let entry = 32 + 32 * index;
        let offset = bytes.len();
        put(&mut bytes, entry, &guid.0);
        put(&mut bytes, entry + 16, &u32_field(offset as u64));
        put(&mut bytes, entry + 20, &u32_field(item.len() as u64));
        put(&mut bytes, entry + 24, &flags.to_le_bytes());
        bytes.extend_from_slice(item);
    }
    bytes
}

/// Writes the BAT: FULLY_PRESENT at consecutive offsets after the table for every block that
/// overlaps a data block, ZERO for the others, and an absent sector bitmap entry after each
/// chunk.
fn write_bat(
    layout: &ExportLayout,
    plan: &Plan,
    sink: &mut dyn ImageSink,
) -> Result<(), FormatError> {
    let mut next_block_at = BAT_OFFSET + plan.bat_length;
    let mut piece = Vec::with_capacity(BAT_WRITE_LEN);
    for index in 0..plan.payload_blocks {
        let (start, end) = plan.block_range(index);
        let entry = if layout.has_data_in(start, end) {
            let entry = BatEntry::encode(PAYLOAD_BLOCK_FULLY_PRESENT, next_block_at);
            next_block_at += plan.block_size;
            entry
        } else {
            BatEntry::encode(PAYLOAD_BLOCK_ZERO, 0)
        };
        piece.extend_from_slice(&entry.to_le_bytes());
        if (index + 1) % plan.chunk_ratio == 0 && index + 1 < plan.payload_blocks {
            // SB_BLOCK_NOT_PRESENT: a dynamic disk has no sector bitmaps.
            piece.extend_from_slice(&0u64.to_le_bytes());
        }
        if piece.len() >= BAT_WRITE_LEN {
            sink.write_all(&piece)?;
            piece.clear();
        }
    }
    sink.write_all(&piece)?;
    sink.write_zeros(plan.bat_length - plan.bat_entries * BAT_ENTRY_LEN)
}

/// Writes every allocated payload block in disk order: the data blocks' bytes, and zeros
/// (holes on a file) for the parts that no data block covers.
fn write_payload(
    layout: &ExportLayout,
    plan: &Plan,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
) -> Result<(), FormatError> {
    let mut cursor = FeedCursor::new(feed, layout, FORMAT);
    let store_block = layout.block_size;
    // The data block last taken from the feed, which may span several payload blocks.
    let mut current: Option<(u64, Vec<u8>)> = None;
    // Index into the layout's data blocks of the first one not yet passed.
    let mut next_data = 0;
    for index in 0..plan.payload_blocks {
        let (start, end) = plan.block_range(index);
        if !layout.has_data_in(start, end) {
            continue;
        }
        let mut position = start;
        while position < end {
            let store_index = position / store_block;
            while layout
                .data_blocks
                .get(next_data)
                .is_some_and(|&data| data < store_index)
            {
                next_data += 1;
            }
            match layout.data_blocks.get(next_data) {
                Some(&data) if data == store_index => {
                    if current.as_ref().is_none_or(|(held, _)| *held != data) {
                        current = Some((data, cursor.next_expected(data)?));
                    }
                    let piece_end = ((data + 1) * store_block).min(end);
                    if let Some((_, bytes)) = &current {
                        let from = usize::try_from(position - data * store_block).unwrap_or(0);
                        let to = usize::try_from(piece_end - data * store_block).unwrap_or(0);
                        sink.write_all(&bytes[from..to])?;
                    }
                    position = piece_end;
                }
                next => {
                    let zeros_end = next.map_or(end, |&data| (data * store_block).min(end));
                    sink.write_zeros(zeros_end - position)?;
                    position = zeros_end;
                }
            }
        }
        sink.write_zeros(plan.block_size - (end - start))?;
    }
    cursor.finish()
}

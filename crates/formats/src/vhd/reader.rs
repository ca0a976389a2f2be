//! Reading fixed, dynamic and differencing disks.

use std::collections::VecDeque;
use std::sync::Arc;

use super::footer::{FOOTER_LEN, Footer, NO_DATA_OFFSET, VhdDiskType};
use super::header::{DynamicHeader, HEADER_LEN};
use super::{MAX_BAT_ENTRIES, MAX_CACHED_BITMAPS, MAX_DISK_SIZE, SECTOR, parent};
use crate::fields::{Fields, bounded_len};
use crate::raw::RawReader;
use crate::{BackingDisk, ByteSource, DiskReader, Extent, ExtentKind, FormatError, OpenContext};

/// A block allocation table entry for a block that is not allocated.
pub(super) const UNUSED_ENTRY: u32 = u32::MAX;

/// A VHD read as a virtual disk.
#[derive(Debug)]
pub struct VhdReader {
    disk_type: VhdDiskType,
    size: u64,
    body: Body,
}

/// Where the disk's bytes are.
#[derive(Debug)]
enum Body {
    /// A fixed disk in a local file, whose holes the raw reader finds.
    LocalFixed(RawReader),
    /// A fixed disk in any other source: its first `size` bytes.
    Fixed(Arc<dyn ByteSource>),
    /// A dynamic or differencing disk.
    Sparse(Box<Sparse>),
}

/// The tables of a dynamic or differencing disk.
struct Sparse {
    source: Arc<dyn ByteSource>,
    /// Bytes of disk a block holds.
    block_size: u64,
    /// Bytes of the sector bitmap in front of each block's data.
    bitmap_len: usize,
    /// The block allocation table: a sector offset per block, [`UNUSED_ENTRY`] for none.
    /// Exactly as many entries as the disk has blocks.
    bat: Vec<u32>,
    bitmaps: BitmapCache,
    /// The parent of a differencing disk; `None` for a dynamic disk.
    parent: Option<BackingDisk>,
}

impl std::fmt::Debug for Sparse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sparse")
            .field("source", &self.source.name())
            .field("block_size", &self.block_size)
            .field("blocks", &self.bat.len())
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

/// A run of the disk that lies wholly in this image's data or wholly outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// `length` bytes stored contiguously in the file from `file_offset`.
    Stored { file_offset: u64, length: u64 },
    /// `length` bytes this image does not store: zeros, or the parent's bytes.
    Absent { length: u64 },
}

/// The footer found, where, and where the file's structures end.
struct FoundFooter {
    footer: Footer,
    /// The footer's offset in the file.
    offset: u64,
    /// Where the data, tables and locators must end: the trailing footer, or the end of
    /// the file when only the copy at the start could be read.
    data_end: u64,
}

impl VhdReader {
    /// Opens the VHD in `source`. A differencing disk's parent is opened through
    /// `context`.
    ///
    /// The footer at the end of the file is read first. When it is damaged (a wrong cookie
    /// or checksum) and the file starts with a good copy of a dynamic or differencing
    /// disk's footer, that copy is used: the spec keeps it "for redundancy", and a file cut
    /// short by a crash while growing still has it. qemu reads the copy at the start first
    /// and fails if it is damaged, even when the one at the end is good.
    pub fn open(
        source: Arc<dyn ByteSource>,
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let found = read_footer(&*source)?;
        let footer = &found.footer;
        let name = source.name();
        let size = footer.current_size;
        if size > MAX_DISK_SIZE {
            return Err(FormatError::Corrupt {
                format: "VHD",
                name: name.to_owned(),
                field: "current size",
                offset: found.offset + 48,
                problem: format!("{size} bytes is above the limit of {MAX_DISK_SIZE}"),
            });
        }

        let body = match footer.disk_type {
            VhdDiskType::Fixed => {
                if size > found.data_end {
                    return Err(FormatError::Corrupt {
                        format: "VHD",
                        name: name.to_owned(),
                        field: "current size",
                        offset: found.offset + 48,
                        problem: format!(
                            "a fixed disk of {size} bytes does not fit in the {} bytes before \
                             its footer",
                            found.data_end
                        ),
                    });
                }
                match source.local_path() {
                    Some(path) => Body::LocalFixed(RawReader::open(path)?),
                    None => Body::Fixed(source),
                }
            }
            VhdDiskType::Dynamic | VhdDiskType::Differencing => {
                Body::Sparse(Box::new(Sparse::open(source, &found, context)?))
            }
        };
        Ok(Self {
            disk_type: footer.disk_type,
            size,
            body,
        })
    }

    /// Whether the disk is fixed, dynamic or differencing.
    pub fn disk_type(&self) -> VhdDiskType {
        self.disk_type
    }

    /// Bytes of disk in each block of a dynamic or differencing disk; `None` for a fixed
    /// disk.
    pub fn block_size(&self) -> Option<u64> {
        match &self.body {
            Body::Sparse(sparse) => Some(sparse.block_size),
            Body::LocalFixed(_) | Body::Fixed(_) => None,
        }
    }

    /// Refuses a range that does not lie within the disk. An extent is asked for by an
    /// offset, which must be inside the disk: a range of length zero at `offset` is checked
    /// as one byte.
    fn check_range(&self, offset: u64, length: u64) -> Result<(), FormatError> {
        let inside = offset
            .checked_add(length.max(1))
            .is_some_and(|end| end <= self.size);
        if !inside {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The extent at `offset`, with regions this image does not store reported as
    /// `absent` (zero, or backing) and not looked up in the parent.
    fn own_extent(&mut self, offset: u64) -> Result<(Extent, bool), FormatError> {
        self.check_range(offset, 0)?;
        let size = self.size;
        let (length, kind, absent) = match &mut self.body {
            Body::LocalFixed(raw) => {
                let extent = raw.extent_at(offset)?;
                let end = extent.end().min(size).max(offset + 1);
                (end - offset, extent.kind, false)
            }
            Body::Fixed(_) => (size - offset, ExtentKind::Data, false),
            Body::Sparse(sparse) => match sparse.run_at(offset, size - offset, size)? {
                Run::Stored { length, .. } => (length, ExtentKind::Data, false),
                Run::Absent { length } => (length, ExtentKind::Zero, true),
            },
        };
        Ok((
            Extent {
                offset,
                length,
                kind,
            },
            absent,
        ))
    }
}

impl DiskReader for VhdReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        let (extent, absent) = self.own_extent(offset)?;
        let parent = match &mut self.body {
            Body::Sparse(sparse) if absent => sparse.parent.as_mut(),
            _ => None,
        };
        let Some(parent) = parent else {
            return Ok(extent);
        };
        let below = parent.extent_at(offset, extent.length)?;
        Ok(Extent {
            offset,
            length: below.length.clamp(1, extent.length),
            kind: below.kind,
        })
    }

    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        let (mut extent, absent) = self.own_extent(offset)?;
        if let Body::Sparse(sparse) = &self.body
            && absent
            && sparse.parent.is_some()
        {
            extent.kind = ExtentKind::Backing;
        }
        Ok(extent)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.check_range(offset, buf.len() as u64)?;
        let size = self.size;
        match &mut self.body {
            Body::LocalFixed(raw) => raw.read_at(offset, buf),
            Body::Fixed(source) => source.read_exact_at(offset, buf),
            Body::Sparse(sparse) => sparse.read_at(offset, buf, size),
        }
    }

    fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        self.check_range(offset, len as u64)?;
        match &mut self.body {
            Body::LocalFixed(raw) => raw.read_vec(offset, len),
            Body::Fixed(source) => source.read_vec(offset, len),
            Body::Sparse(_) => {
                let mut buf = vec![0u8; len];
                self.read_at(offset, &mut buf)?;
                Ok(buf)
            }
        }
    }
}

/// Finds a good footer: the one at the end, or else the copy at the start.
fn read_footer(source: &dyn ByteSource) -> Result<FoundFooter, FormatError> {
    let name = source.name();
    let len = source.len();
    let footer_len = FOOTER_LEN as u64;
    if len < footer_len {
        return Err(FormatError::Corrupt {
            format: "VHD",
            name: name.to_owned(),
            field: "hard disk footer",
            offset: 0,
            problem: format!("the file holds {len} bytes, fewer than a footer's {FOOTER_LEN}"),
        });
    }
    let tail_at = len - footer_len;
    let tail = source.read_vec(tail_at, FOOTER_LEN)?;
    let tail_error = match Footer::parse(&tail, name, tail_at) {
        Ok(footer) => {
            return Ok(FoundFooter {
                footer,
                offset: tail_at,
                data_end: tail_at,
            });
        }
        Err(err) => err,
    };

    // Only dynamic and differencing disks keep a copy at the start; a fixed disk's first
    // sector is the disk's own, which may well hold a VHD.
    if tail_at > 0 {
        let head = source.read_vec(0, FOOTER_LEN)?;
        if let Ok(footer) = Footer::parse(&head, name, 0)
            && footer.disk_type != VhdDiskType::Fixed
        {
            return Ok(FoundFooter {
                footer,
                offset: 0,
                data_end: len,
            });
        }
    }
    Err(tail_error)
}

impl Sparse {
    /// Reads and checks the dynamic header and the block allocation table, and opens the
    /// parent of a differencing disk.
    fn open(
        source: Arc<dyn ByteSource>,
        found: &FoundFooter,
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let name = source.name();
        let footer = &found.footer;
        let footer_fields = Fields::new(&[], "VHD", name, found.offset);
        let size = footer.current_size;
        let data_end = found.data_end;
        let footer_copy = 0..FOOTER_LEN as u64;

        // The header lies after the footer's copy at the start and before the data's end.
        let header_at = footer.data_offset;
        let header_end = header_at.checked_add(HEADER_LEN as u64);
        if header_at == NO_DATA_OFFSET
            || header_at < footer_copy.end
            || header_end.is_none_or(|end| end > data_end)
        {
            return Err(footer_fields.corrupt(
                "data offset",
                16,
                format!(
                    "a dynamic disk header at {header_at} does not lie between the footer's \
                     copy and the data's end at {data_end}"
                ),
            ));
        }
        let header_range = header_at..header_at + HEADER_LEN as u64;
        let header_bytes = source.read_vec(header_at, HEADER_LEN)?;
        let header = DynamicHeader::parse(&header_bytes, name, header_at)?;
        let header_fields = Fields::new(&header_bytes, "VHD", name, header_at);

        // The table must cover the disk; only the entries that do are read.
        let block_size = u64::from(header.block_size);
        let blocks = size.div_ceil(block_size);
        if blocks > u64::from(header.max_table_entries) {
            return Err(header_fields.corrupt(
                "max table entries",
                28,
                format!(
                    "{} blocks of {block_size} bytes cover less than the disk's {size} bytes",
                    header.max_table_entries
                ),
            ));
        }
        let blocks = bounded_len(
            &header_fields,
            "max table entries",
            28,
            blocks,
            MAX_BAT_ENTRIES,
        )?;
        let table_len = blocks * 4;
        let table_at = header.table_offset;
        let table_range = table_at..table_at.saturating_add(table_len as u64);
        let table_misplaced = table_at.checked_add(table_len as u64).is_none()
            || table_range.end > data_end
            || (table_len > 0
                && (overlaps(&table_range, &footer_copy) || overlaps(&table_range, &header_range)));
        if table_misplaced {
            return Err(header_fields.corrupt(
                "table offset",
                16,
                format!(
                    "a table of {blocks} entries at {table_at} overlaps the footer's copy or \
                     the header, or passes the data's end at {data_end}"
                ),
            ));
        }
        let table = source.read_vec(table_at, table_len)?;
        let bat: Vec<u32> = table
            .chunks_exact(4)
            .map(|e| u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
            .collect();

        // Each block: its sector bitmap, padded to whole sectors, then its data.
        let bitmap_len = (block_size / SECTOR).div_ceil(8).next_multiple_of(SECTOR);
        let span = bitmap_len + block_size;
        check_blocks(
            &bat,
            span,
            data_end,
            &[footer_copy, header_range, table_range],
            |index| Fields::new(&[], "VHD", name, table_at.saturating_add(4 * index as u64)),
        )?;

        let parent = if footer.disk_type == VhdDiskType::Differencing {
            let names = parent::parent_names(&*source, &header, header_at, data_end)?;
            Some(BackingDisk::new(Some(parent::open_parent(
                name, &names, context,
            )?)))
        } else {
            None
        };
        Ok(Self {
            bitmap_len: usize::try_from(bitmap_len).unwrap_or(usize::MAX),
            source,
            block_size,
            bat,
            bitmaps: BitmapCache::default(),
            parent,
        })
    }

    /// The run of the disk from `offset`, at most `max_len` bytes and never past one
    /// allocated block. Runs of unallocated blocks are joined.
    fn run_at(&mut self, offset: u64, max_len: u64, size: u64) -> Result<Run, FormatError> {
        let limit = offset.saturating_add(max_len).min(size);
        let within = offset % self.block_size;
        let block_start = offset - within;
        let block_end = block_start.saturating_add(self.block_size).min(size);
        let index = usize::try_from(offset / self.block_size).unwrap_or(usize::MAX);
        // The table has an entry for every block of the disk, and offset is inside it.
        let entry = self.bat.get(index).copied().unwrap_or(UNUSED_ENTRY);

        if entry == UNUSED_ENTRY {
            let mut end = block_end;
            let mut next = index + 1;
            while end < limit && self.bat.get(next) == Some(&UNUSED_ENTRY) {
                end = end.saturating_add(self.block_size).min(size);
                next += 1;
            }
            return Ok(Run::Absent {
                length: end.min(limit) - offset,
            });
        }

        let block_at = u64::from(entry) * SECTOR;
        let bitmap = self
            .bitmaps
            .get(&*self.source, index, block_at, self.bitmap_len)?;
        let sectors = (block_end - block_start).div_ceil(SECTOR);
        let (stored, end_sector) = bit_run(bitmap, within / SECTOR, sectors);
        let end = block_start
            .saturating_add(end_sector * SECTOR)
            .min(block_end)
            .min(limit);
        let length = end - offset;
        Ok(if stored {
            Run::Stored {
                file_offset: block_at + self.bitmap_len as u64 + within,
                length,
            }
        } else {
            Run::Absent { length }
        })
    }

    /// Fills `buf` from `offset`: stored runs in one source read each, the rest as zeros or
    /// from the parent.
    fn read_at(&mut self, offset: u64, buf: &mut [u8], size: u64) -> Result<(), FormatError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let left = (buf.len() - done) as u64;
            let run = self.run_at(at, left, size)?;
            let length = match run {
                Run::Stored { length, .. } | Run::Absent { length } => length,
            };
            // A run is at most `left` bytes, which fits in usize.
            let length = usize::try_from(length)
                .unwrap_or(0)
                .clamp(1, buf.len() - done);
            let piece = &mut buf[done..done + length];
            match (run, self.parent.as_mut()) {
                (Run::Stored { file_offset, .. }, _) => {
                    self.source.read_exact_at(file_offset, piece)?;
                }
                (Run::Absent { .. }, Some(parent)) => parent.read_at(at, piece)?,
                (Run::Absent { .. }, None) => piece.fill(0),
            }
            done += length;
        }
        Ok(())
    }
}

/// Whether two byte ranges share a byte.
fn overlaps(a: &std::ops::Range<u64>, b: &std::ops::Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Checks that every allocated block (`span` bytes from its entry's sector) lies before
/// `data_end`, clear of the `metadata` ranges and of every other block. `entry_fields`
/// gives the fields for the error about entry `index`.
fn check_blocks<'a>(
    bat: &[u32],
    span: u64,
    data_end: u64,
    metadata: &[std::ops::Range<u64>],
    entry_fields: impl Fn(usize) -> Fields<'a>,
) -> Result<(), FormatError> {
    let entry_error = |index: usize, problem: String| {
        entry_fields(index).corrupt("block allocation table entry", 0, problem)
    };
    for (index, &entry) in bat.iter().enumerate() {
        if entry == UNUSED_ENTRY {
            continue;
        }
        let start = u64::from(entry) * SECTOR;
        let block = start..start + span;
        if block.end > data_end {
            return Err(entry_error(
                index,
                format!(
                    "block {index} at {start}..{} passes the data's end at {data_end}",
                    block.end
                ),
            ));
        }
        if metadata.iter().any(|m| overlaps(&block, m)) {
            return Err(entry_error(
                index,
                format!(
                    "block {index} at {start}..{} overlaps the footer's copy, the header \
                     or the table",
                    block.end
                ),
            ));
        }
    }

    // Two blocks overlap when, in file order, one starts before the previous one ends.
    let mut starts: Vec<u32> = bat.iter().copied().filter(|&e| e != UNUSED_ENTRY).collect();
    starts.sort_unstable();
    let span_sectors = span / SECTOR;
    if let Some(pair) = starts
        .windows(2)
        .find(|pair| u64::from(pair[1]) - u64::from(pair[0]) < span_sectors)
    {
        let index = bat.iter().position(|&e| e == pair[1]).unwrap_or(0);
        let other = bat
            .iter()
            .enumerate()
            .position(|(i, &e)| e == pair[0] && i != index)
            .unwrap_or(0);
        return Err(entry_error(
            index,
            format!(
                "block {index} at sector {} overlaps block {other} at sector {}",
                pair[1], pair[0]
            ),
        ));
    }
    Ok(())
}

/// The value of bit `first` of a sector bitmap (most significant bit first, 1 = stored in
/// the block) and the first sector before `count` where the value changes, or `count`.
fn bit_run(bitmap: &[u8], first: u64, count: u64) -> (bool, u64) {
    let bit = |sector: u64| {
        let byte = usize::try_from(sector / 8)
            .ok()
            .and_then(|i| bitmap.get(i))
            .copied()
            .unwrap_or(0);
        byte >> (7 - sector % 8) & 1 == 1
    };
    let value = bit(first);
    let whole = if value { 0xff } else { 0x00 };
    let mut sector = first + 1;
    while sector < count {
        // Whole bytes of the same value go eight sectors at a time.
        if sector.is_multiple_of(8) && sector + 8 <= count {
            let byte = usize::try_from(sector / 8).ok().and_then(|i| bitmap.get(i));
            if byte == Some(&whole) {
                sector += 8;
                continue;
            }
        }
        if bit(sector) != value {
            break;
        }
        sector += 1;
    }
    (value, sector.min(count).max(first + 1))
}

/// The sector bitmaps of recently read blocks, oldest first. A sequential read uses one
/// block's bitmap for several extents and reads in a row, then moves on.
#[derive(Debug, Default)]
struct BitmapCache {
    entries: VecDeque<(usize, Vec<u8>)>,
}

impl BitmapCache {
    /// The bitmap of block `index`, read from `at` in `source` unless cached.
    fn get(
        &mut self,
        source: &dyn ByteSource,
        index: usize,
        at: u64,
        len: usize,
    ) -> Result<&[u8], FormatError> {
        if let Some(found) = self.entries.iter().position(|(i, _)| *i == index) {
            return Ok(&self.entries[found].1);
        }
        let bitmap = source.read_vec(at, len)?;
        if self.entries.len() >= MAX_CACHED_BITMAPS {
            self.entries.pop_front();
        }
        self.entries.push_back((index, bitmap));
        Ok(self
            .entries
            .back()
            .map(|(_, bitmap)| bitmap.as_slice())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_runs_follow_the_most_significant_bit_first() {
        // Sectors 0..3 stored, 3..8 not, 8..24 stored, 24.. not.
        let bitmap = [0b1110_0000, 0xff, 0xff, 0x00];
        assert_eq!(bit_run(&bitmap, 0, 32), (true, 3));
        assert_eq!(bit_run(&bitmap, 3, 32), (false, 8));
        assert_eq!(bit_run(&bitmap, 8, 32), (true, 24));
        assert_eq!(bit_run(&bitmap, 9, 20), (true, 20));
        assert_eq!(bit_run(&bitmap, 24, 32), (false, 32));
    }

    #[test]
    fn overlapping_blocks_are_found_in_any_table_order() {
        let fields = |_| Fields::new(&[], "VHD", "d.vhd", 1536);
        // Blocks of 4 sectors: sectors 20..24 and 22..26 overlap.
        let err = check_blocks(
            &[30, 22, UNUSED_ENTRY, 20],
            4 * SECTOR,
            1 << 20,
            &[],
            fields,
        )
        .expect_err("overlap");
        let text = err.to_string();
        assert!(
            text.contains("block 1") && text.contains("block 3"),
            "{text}"
        );
        check_blocks(
            &[30, 24, UNUSED_ENTRY, 20],
            4 * SECTOR,
            1 << 20,
            &[],
            fields,
        )
        .expect("adjacent blocks do not overlap");
    }
}

//! Reading a VHDX file as a virtual disk.

use std::sync::Arc;

use crate::{
    BackingDisk, ByteSource, DiskReader, Extent, ExtentKind, Format, FormatError, OpenContext,
};

use super::bat::{
    Bat, BatEntry, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT, PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_UNMAPPED,
    PAYLOAD_BLOCK_UNMAPPED_DRAFT, PAYLOAD_BLOCK_ZERO, SB_BLOCK_PRESENT,
};
use super::header::{
    HEAD_READ_LEN, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, Region, check_identifier,
    current_header, parse_region_tables,
};
use super::metadata::{self, Metadata, ParentLocator};
use super::{HEADER_AREA, SECTOR_BITMAP_BLOCK_SIZE, SECTORS_PER_BITMAP_BLOCK, corrupt, log};

/// Most payload blocks one extent query looks at, in blocks: a run of like blocks is
/// reported as one extent up to this length (8 GiB of 1 MiB blocks), which keeps each
/// query's cost bounded while sparing callers one query per block.
const MAX_EXTENT_BLOCKS: u64 = 8192;
/// Sector bitmaps of partially present blocks kept in memory, in blocks. One is at most
/// 64 KiB (a 256 MiB block of 512-byte sectors), so the cache stays under 1 MiB.
const MAX_CACHED_BITMAPS: usize = 16;

/// Where one payload block's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockMap {
    /// The block reads as zeros.
    Zero,
    /// The whole block is in the file at this offset.
    Data(u64),
    /// The image stores nothing: the block is the parent's.
    Backing,
    /// Some sectors are in the file at `data`, the others are the parent's, as the bitmap
    /// at file offset `bitmap` says.
    Partial { data: u64, bitmap: u64 },
}

impl BlockMap {
    /// The kind a whole block of this map has; partial blocks have none.
    fn kind(self) -> Option<ExtentKind> {
        match self {
            BlockMap::Zero => Some(ExtentKind::Zero),
            BlockMap::Data(_) => Some(ExtentKind::Data),
            BlockMap::Backing => Some(ExtentKind::Backing),
            BlockMap::Partial { .. } => None,
        }
    }
}

/// A differencing disk's parent and the sector bitmaps read so far.
#[derive(Debug)]
struct Parent {
    disk: BackingDisk,
    /// (block index, the block's bitmap), most recently read last.
    bitmaps: Vec<(u64, Vec<u8>)>,
}

/// A VHDX image: fixed, dynamic, or differencing on a parent opened through the resolver.
///
/// A log left by a writer that did not close the file is replayed in memory when the image
/// is opened; the file itself is never written.
#[derive(Debug)]
pub struct VhdxReader {
    /// The file, with the log's writes laid over it when there was a log to replay.
    source: Arc<dyn ByteSource>,
    name: String,
    size: u64,
    block_size: u64,
    logical_sector_size: u64,
    physical_sector_size: u64,
    /// Payload blocks per sector bitmap block (§2.4.1).
    chunk_ratio: u64,
    virtual_disk_id: [u8; 16],
    bat: Bat,
    /// Ranges of the file that hold metadata, which no payload block may overlap.
    reserved: Vec<(u64, u64, &'static str)>,
    parent: Option<Parent>,
    replayed_log_entries: usize,
}

impl VhdxReader {
    /// Opens the VHDX image in `source`, and its parent through `context` if it is a
    /// differencing disk.
    pub fn open(
        source: Arc<dyn ByteSource>,
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let name = source.name().to_owned();
        let head_len = usize::try_from(source.len().min(HEAD_READ_LEN as u64)).unwrap_or(0);
        let head = source.read_vec(0, head_len)?;
        check_identifier(&head, &name)?;
        let header = current_header(&head, &name)?;

        // Everything after the headers is read as the log says it should be.
        let replayed = if header.log_guid.is_zero() {
            None
        } else {
            log::replay(&source, &header, &name)?
        };
        let replayed_log_entries = replayed.as_ref().map_or(0, log::ReplayedSource::entries);
        let tables_at = REGION_TABLE_OFFSETS[0];
        let (source, tables): (Arc<dyn ByteSource>, _) = match replayed {
            Some(replayed) => {
                let tables = replayed.read_vec(tables_at, 2 * REGION_TABLE_SIZE)?;
                (Arc::new(replayed), tables)
            }
            None => {
                let start = usize::try_from(tables_at).unwrap_or(usize::MAX);
                let tables = match head.get(start..start + 2 * REGION_TABLE_SIZE) {
                    Some(tables) => tables.to_vec(),
                    None => source.read_vec(tables_at, 2 * REGION_TABLE_SIZE)?,
                };
                (source, tables)
            }
        };
        let regions = parse_region_tables(&tables, &name)?;
        let mut reserved = vec![(0, HEADER_AREA, "the headers")];
        if header.log_length > 0 {
            let end = header.log_offset + u64::from(header.log_length);
            reserved.push((header.log_offset, end, "the log"));
        }
        for (region, what) in [(regions.bat, "the BAT"), (regions.metadata, "the metadata")] {
            check_region(&*source, &reserved, region, what, &name)?;
            reserved.push((region.offset, region.end(), what));
        }

        let metadata = metadata::parse(&*source, regions.metadata, &name)?;
        let geometry = Geometry::of(&metadata);
        let bat_bytes = geometry.bat_entries * super::bat::BAT_ENTRY_LEN;
        if bat_bytes > regions.bat.length {
            return Err(corrupt(
                &name,
                "region table entry Length",
                regions.bat.table_entry + 24,
                format!(
                    "the BAT region of {} bytes cannot hold the {} entries of a {}-byte disk in \
                     {}-byte blocks",
                    regions.bat.length,
                    geometry.bat_entries,
                    metadata.virtual_disk_size,
                    metadata.block_size
                ),
            ));
        }

        let parent = match &metadata.parent_locator {
            Some(locator) => Some(Parent {
                disk: BackingDisk::new(Some(open_parent(locator, &name, context)?)),
                bitmaps: Vec::new(),
            }),
            None => None,
        };

        Ok(Self {
            source,
            name,
            size: metadata.virtual_disk_size,
            block_size: metadata.block_size,
            logical_sector_size: metadata.logical_sector_size,
            physical_sector_size: metadata.physical_sector_size,
            chunk_ratio: geometry.chunk_ratio,
            virtual_disk_id: metadata.virtual_disk_id.0,
            bat: Bat::new(regions.bat.offset, geometry.bat_entries),
            reserved,
            parent,
            replayed_log_entries,
        })
    }

    /// Bytes of a payload block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes of a sector as the guest sees it: 512 or 4096.
    pub fn logical_sector_size(&self) -> u64 {
        self.logical_sector_size
    }

    /// Bytes of a sector of the disk the image was made for: 512 or 4096.
    pub fn physical_sector_size(&self) -> u64 {
        self.physical_sector_size
    }

    /// The virtual disk's id (the Page 83 Data item), as stored.
    pub fn virtual_disk_id(&self) -> [u8; 16] {
        self.virtual_disk_id
    }

    /// Whether the image is a differencing disk on a parent.
    pub fn has_parent(&self) -> bool {
        self.parent.is_some()
    }

    /// How many log entries were replayed in memory when the image was opened: zero for an
    /// image that was closed cleanly.
    pub fn replayed_log_entries(&self) -> usize {
        self.replayed_log_entries
    }

    /// Where payload block `index` comes from, after checking its BAT entry.
    fn block(&mut self, index: u64) -> Result<BlockMap, FormatError> {
        let bat_index = index + index / self.chunk_ratio;
        let entry = self.bat.entry(&*self.source, bat_index)?;
        match entry.state {
            PAYLOAD_BLOCK_NOT_PRESENT if self.parent.is_some() => Ok(BlockMap::Backing),
            PAYLOAD_BLOCK_NOT_PRESENT
            | PAYLOAD_BLOCK_UNDEFINED
            | PAYLOAD_BLOCK_ZERO
            | PAYLOAD_BLOCK_UNMAPPED
            | PAYLOAD_BLOCK_UNMAPPED_DRAFT => Ok(BlockMap::Zero),
            PAYLOAD_BLOCK_FULLY_PRESENT => {
                let used = self.block_size.min(self.size - index * self.block_size);
                self.check_placement(bat_index, entry, self.block_size, used, "payload")?;
                Ok(BlockMap::Data(entry.file_offset))
            }
            PAYLOAD_BLOCK_PARTIALLY_PRESENT if self.parent.is_some() => {
                let used = self.block_size.min(self.size - index * self.block_size);
                self.check_placement(bat_index, entry, self.block_size, used, "payload")?;
                let bitmap = self.bitmap_offset(index)?;
                Ok(BlockMap::Partial {
                    data: entry.file_offset,
                    bitmap,
                })
            }
            state => Err(corrupt(
                &self.name,
                "BAT entry",
                self.bat.entry_offset(bat_index),
                format!(
                    "payload block {index} has state {state}, which a {} disk cannot have",
                    if self.parent.is_some() {
                        "differencing"
                    } else {
                        "fixed or dynamic"
                    }
                ),
            )),
        }
    }

    /// Checks that a block of `length` bytes at the entry's offset lies past the headers,
    /// clear of the metadata, and within the file for its first `used` bytes.
    fn check_placement(
        &self,
        bat_index: u64,
        entry: BatEntry,
        length: u64,
        used: u64,
        what: &str,
    ) -> Result<(), FormatError> {
        let start = entry.file_offset;
        let bad = |problem: String| {
            corrupt(
                &self.name,
                "BAT entry",
                self.bat.entry_offset(bat_index),
                problem,
            )
        };
        let (Some(end), Some(used_end)) = (start.checked_add(length), start.checked_add(used))
        else {
            return Err(bad(format!(
                "the {what} block at {start} ends past 2^64 bytes"
            )));
        };
        if let Some(&(_, _, region)) = self
            .reserved
            .iter()
            .find(|&&(lo, hi, _)| start < hi && lo < end)
        {
            return Err(bad(format!(
                "the {what} block at {start}..{end} overlaps {region}"
            )));
        }
        if used_end > self.source.len() {
            return Err(bad(format!(
                "the {what} block at {start}..{used_end} lies past the end of the file at {}",
                self.source.len()
            )));
        }
        Ok(())
    }

    /// The file offset of the part of a sector bitmap block that covers payload block
    /// `index`, which is partially present.
    fn bitmap_offset(&mut self, index: u64) -> Result<u64, FormatError> {
        let chunk = index / self.chunk_ratio;
        let bat_index = chunk * (self.chunk_ratio + 1) + self.chunk_ratio;
        let entry = self.bat.entry(&*self.source, bat_index)?;
        if entry.state != SB_BLOCK_PRESENT {
            return Err(corrupt(
                &self.name,
                "BAT entry",
                self.bat.entry_offset(bat_index),
                format!(
                    "payload block {index} is partially present but the sector bitmap block of \
                     its chunk has state {}",
                    entry.state
                ),
            ));
        }
        let size = SECTOR_BITMAP_BLOCK_SIZE;
        self.check_placement(bat_index, entry, size, size, "sector bitmap")?;
        let sectors_per_block = self.block_size / self.logical_sector_size;
        Ok(entry.file_offset + (index % self.chunk_ratio) * sectors_per_block / 8)
    }

    /// The sector bitmap of partially present block `index`, from the cache or the file.
    fn bitmap(&mut self, index: u64, offset: u64) -> Result<&[u8], FormatError> {
        let len = usize::try_from(self.block_size / self.logical_sector_size / 8).unwrap_or(0);
        let Some(parent) = self.parent.as_mut() else {
            return Ok(&[]);
        };
        let slot = match parent.bitmaps.iter().position(|(at, _)| *at == index) {
            Some(slot) => slot,
            None => {
                let bytes = self.source.read_vec(offset, len)?;
                if parent.bitmaps.len() == MAX_CACHED_BITMAPS {
                    parent.bitmaps.remove(0);
                }
                parent.bitmaps.push((index, bytes));
                parent.bitmaps.len() - 1
            }
        };
        Ok(&parent.bitmaps[slot].1)
    }

    /// In a partially present block at `block_start`, the run of sectors from the one
    /// holding `offset` that are all present or all absent, cut at `limit`: whether they
    /// are present, and where the run ends.
    fn sector_run(
        &mut self,
        index: u64,
        bitmap_offset: u64,
        offset: u64,
        limit: u64,
    ) -> Result<(bool, u64), FormatError> {
        let sector_size = self.logical_sector_size;
        let block_start = index * self.block_size;
        let bitmap = self.bitmap(index, bitmap_offset)?;
        let bit = |sector: u64| {
            let byte = usize::try_from(sector / 8).unwrap_or(usize::MAX);
            bitmap
                .get(byte)
                .is_some_and(|&value| value & (1 << (sector % 8)) != 0)
        };
        let first = (offset - block_start) / sector_size;
        let present = bit(first);
        let mut end_sector = first + 1;
        while block_start + end_sector * sector_size < limit && bit(end_sector) == present {
            end_sector += 1;
        }
        Ok((present, (block_start + end_sector * sector_size).min(limit)))
    }

    /// The end of the run of blocks from `index` that map like `kind`, starting from the
    /// end of block `index`, within MAX_EXTENT_BLOCKS.
    fn run_end(&mut self, index: u64, kind: ExtentKind) -> u64 {
        let mut next = index + 1;
        let last = index.saturating_add(MAX_EXTENT_BLOCKS);
        while next < last && next * self.block_size < self.size {
            // A block whose entry is bad ends the run; reading it reports the problem.
            match self.block(next) {
                Ok(map) if map.kind() == Some(kind) => next += 1,
                _ => break,
            }
        }
        (next * self.block_size).min(self.size)
    }

    fn extent(&mut self, offset: u64, layer: bool) -> Result<Extent, FormatError> {
        if offset >= self.size {
            return Err(FormatError::OutOfRange {
                offset,
                length: 1,
                size: self.size,
            });
        }
        let index = offset / self.block_size;
        let block_end = ((index + 1) * self.block_size).min(self.size);
        let (kind, end) = match self.block(index)? {
            BlockMap::Zero => (ExtentKind::Zero, self.run_end(index, ExtentKind::Zero)),
            BlockMap::Data(_) => (ExtentKind::Data, self.run_end(index, ExtentKind::Data)),
            BlockMap::Backing => (
                ExtentKind::Backing,
                self.run_end(index, ExtentKind::Backing),
            ),
            BlockMap::Partial { bitmap, .. } => {
                let (present, end) = self.sector_run(index, bitmap, offset, block_end)?;
                let kind = if present {
                    ExtentKind::Data
                } else {
                    ExtentKind::Backing
                };
                (kind, end)
            }
        };
        if kind == ExtentKind::Backing
            && !layer
            && let Some(parent) = self.parent.as_mut()
        {
            return parent.disk.extent_at(offset, end - offset);
        }
        Ok(Extent {
            offset,
            length: end - offset,
            kind,
        })
    }

    /// Fills `buf` from the parent at `offset`.
    fn read_parent(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        match self.parent.as_mut() {
            Some(parent) => parent.disk.read_at(offset, buf),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

/// Checks that a region lies within the file and clear of those already placed.
fn check_region(
    source: &dyn ByteSource,
    placed: &[(u64, u64, &'static str)],
    region: Region,
    what: &str,
    name: &str,
) -> Result<(), FormatError> {
    if region.end() > source.len() {
        return Err(corrupt(
            name,
            "region table entry FileOffset",
            region.table_entry + 16,
            format!(
                "{what} region at {}..{} lies past the end of the file at {}",
                region.offset,
                region.end(),
                source.len()
            ),
        ));
    }
    if let Some(&(_, _, other)) = placed.iter().find(|&&(lo, hi, _)| region.overlaps(lo, hi)) {
        return Err(corrupt(
            name,
            "region table entry FileOffset",
            region.table_entry + 16,
            format!(
                "{what} region at {}..{} overlaps {other}",
                region.offset,
                region.end()
            ),
        ));
    }
    Ok(())
}

/// The numbers the metadata implies (§2.4, §2.5).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    chunk_ratio: u64,
    bat_entries: u64,
}

impl Geometry {
    fn of(metadata: &Metadata) -> Self {
        // 2^23 sectors of at most 4096 bytes over blocks of 1 to 256 MiB: 16 to 32768.
        let chunk_ratio =
            SECTORS_PER_BITMAP_BLOCK * metadata.logical_sector_size / metadata.block_size;
        let payload_blocks = metadata.virtual_disk_size.div_ceil(metadata.block_size);
        let bat_entries = if metadata.has_parent {
            payload_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else if payload_blocks == 0 {
            0
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        Self {
            chunk_ratio,
            bat_entries,
        }
    }
}

/// Opens a differencing disk's parent by the paths its locator gives (§2.6.2.6.2): the
/// relative path first, then the absolute and volume paths. Windows separators become
/// slashes. The parent's DataWriteGuid is not compared with parent_linkage, because the
/// resolver hands back a disk, not a VHDX header.
fn open_parent(
    locator: &ParentLocator,
    name: &str,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let mut first_error = None;
    for key in ["relative_path", "absolute_win32_path", "volume_path"] {
        let Some(path) = locator.get(key) else {
            continue;
        };
        let path = path.replace('\\', "/");
        let path = path.strip_prefix("./").unwrap_or(&path);
        match context.open_backing(name, path, Some(Format::Vhdx)) {
            Ok(disk) => return Ok(disk),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        corrupt(
            name,
            "parent locator",
            0,
            "the locator has none of relative_path, absolute_win32_path and volume_path",
        )
    }))
}

impl DiskReader for VhdxReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent(offset, false)
    }

    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent(offset, true)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let length = buf.len() as u64;
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size: self.size,
            });
        }

        let mut done = 0usize;
        while done < buf.len() {
            let position = offset + done as u64;
            let index = position / self.block_size;
            let block_start = index * self.block_size;
            let block_end = (block_start + self.block_size).min(self.size);
            let end = block_end.min(offset + length);
            // Bytes of `buf` from `done` to the end of this block or of the request.
            let mut take = usize::try_from(end - position).unwrap_or(usize::MAX);

            match self.block(index)? {
                BlockMap::Zero => buf[done..done + take].fill(0),
                BlockMap::Data(file_offset) => {
                    // Blocks that follow each other in the file are read in one go.
                    let mut next_file_offset = file_offset + self.block_size;
                    let mut next = index + 1;
                    while done + take < buf.len()
                        && self.block(next)? == BlockMap::Data(next_file_offset)
                    {
                        let next_end = ((next + 1) * self.block_size).min(offset + length);
                        take += usize::try_from(next_end - next * self.block_size)
                            .unwrap_or(usize::MAX);
                        next += 1;
                        next_file_offset += self.block_size;
                    }
                    let physical = file_offset + (position - block_start);
                    self.source
                        .read_exact_at(physical, &mut buf[done..done + take])?;
                }
                BlockMap::Backing => {
                    let mut next = index + 1;
                    while done + take < buf.len() && self.block(next)? == BlockMap::Backing {
                        let next_end = ((next + 1) * self.block_size).min(offset + length);
                        take += usize::try_from(next_end - next * self.block_size)
                            .unwrap_or(usize::MAX);
                        next += 1;
                    }
                    self.read_parent(position, &mut buf[done..done + take])?;
                }
                BlockMap::Partial { data, bitmap } => {
                    let (present, run_end) = self.sector_run(index, bitmap, position, end)?;
                    take = usize::try_from(run_end - position).unwrap_or(usize::MAX);
                    let part = &mut buf[done..done + take];
                    if present {
                        self.source
                            .read_exact_at(data + (position - block_start), part)?;
                    } else {
                        self.read_parent(position, part)?;
                    }
                }
            }
            done += take;
        }
        Ok(())
    }
}

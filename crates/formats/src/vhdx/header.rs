//! The first megabyte: file type identifier, the two headers and the two region tables.

use crate::FormatError;
use crate::fields::Fields;

use super::crc::crc32c_without_field;
use super::guid::Guid;
use super::{FORMAT, HEADER_AREA, MIB, corrupt};

/// "vhdxfile", the file type identifier's signature ([MS-VHDX] §2.2.1).
pub(crate) const FILE_IDENTIFIER_SIGNATURE: [u8; 8] = *b"vhdxfile";
/// File offsets of header 1 and header 2, each in its own 64 KiB slot (§2.2.2).
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// Bytes of a header, the span its checksum covers (§2.2.2).
pub(crate) const HEADER_SIZE: usize = 4096;
/// "head", a header's signature (§2.2.2).
const HEADER_SIGNATURE: [u8; 4] = *b"head";
/// The only header version the specification defines (§2.2.2, Version).
pub(crate) const HEADER_VERSION: u16 = 1;
/// The only log format the specification defines (§2.2.2, LogVersion).
pub(crate) const LOG_VERSION: u16 = 0;
/// File offsets of region table 1 and its copy, region table 2 (§2.2.3).
pub(crate) const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// Bytes of a region table, the span its checksum covers (§2.2.3).
pub(crate) const REGION_TABLE_SIZE: usize = 64 << 10;
/// "regi", a region table's signature (§2.2.3.1).
const REGION_TABLE_SIGNATURE: [u8; 4] = *b"regi";
/// Most entries a region table may hold, in entries: the specification's cap (§2.2.3.1),
/// which is also what fits in 64 KiB after the 16-byte table header.
pub(crate) const MAX_REGION_ENTRIES: u32 = 2047;
/// Bytes of a region table's header and of each of its entries (§2.2.3.1, §2.2.3.2).
const REGION_HEADER_LEN: usize = 16;
const REGION_ENTRY_LEN: usize = 32;
/// Regions start and end on 1 MiB boundaries (§2.2.3.2, FileOffset and Length).
pub(crate) const REGION_ALIGNMENT: u64 = MIB;

/// The BAT region's GUID (§2.2.3.2).
pub(crate) const BAT_REGION: Guid = Guid::new(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// The metadata region's GUID (§2.2.3.2).
pub(crate) const METADATA_REGION: Guid = Guid::new(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// Bytes read from the start of the file in one go: the file type identifier, both headers
/// and both region tables.
pub(crate) const HEAD_READ_LEN: usize = 320 << 10;

/// The fields of the current header that reading needs (§2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Which header slot (0 or 1) it came from.
    pub(crate) slot: usize,
    /// Higher wins between the two headers.
    pub(crate) sequence: u64,
    /// Changed on every open for writing.
    pub(crate) file_write_guid: Guid,
    /// Changed whenever the virtual disk's contents change; a child names its parent's.
    pub(crate) data_write_guid: Guid,
    /// Not zero while the log holds entries that must be replayed.
    pub(crate) log_guid: Guid,
    /// The log's format; 0 is the only one defined.
    pub(crate) log_version: u16,
    /// The file's format; 1 is the only one defined.
    pub(crate) version: u16,
    /// Bytes of the log region, a multiple of 1 MiB.
    pub(crate) log_length: u32,
    /// File offset of the log region, a multiple of 1 MiB.
    pub(crate) log_offset: u64,
}

/// Checks the file type identifier at the start of `head` (§2.2.1).
pub(crate) fn check_identifier(head: &[u8], name: &str) -> Result<(), FormatError> {
    if head.get(..8) != Some(&FILE_IDENTIFIER_SIGNATURE[..]) {
        return Err(corrupt(
            name,
            "file type identifier Signature",
            0,
            "the file does not start with \"vhdxfile\"",
        ));
    }
    Ok(())
}

/// Picks the current header from the start of the file: the valid one (signature and
/// checksum) with the higher sequence number (§2.2.2), then checks its fields.
pub(crate) fn current_header(head: &[u8], name: &str) -> Result<Header, FormatError> {
    let mut valid = [None, None];
    for (slot, &offset) in HEADER_OFFSETS.iter().enumerate() {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let Some(bytes) = start
            .checked_add(HEADER_SIZE)
            .and_then(|end| head.get(start..end))
        else {
            return Err(corrupt(
                name,
                "header",
                offset,
                "the file ends inside the header",
            ));
        };
        valid[slot] = parse_header(bytes, slot, name)?.map(|header| (header, bytes));
    }
    let (header, _) = match valid {
        [Some(one), Some(two)] => match one.0.sequence.cmp(&two.0.sequence) {
            std::cmp::Ordering::Greater => one,
            std::cmp::Ordering::Less => two,
            // Two valid headers with one sequence number leave no current header unless they
            // say the same thing, in which case either will do.
            std::cmp::Ordering::Equal if one.1 == two.1 => one,
            std::cmp::Ordering::Equal => {
                return Err(corrupt(
                    name,
                    "header SequenceNumber",
                    HEADER_OFFSETS[1] + 8,
                    format!(
                        "both headers are valid, differ, and have the same sequence number {}",
                        one.0.sequence
                    ),
                ));
            }
        },
        [Some(one), None] => one,
        [None, Some(two)] => two,
        [None, None] => {
            return Err(corrupt(
                name,
                "header Checksum",
                HEADER_OFFSETS[0] + 4,
                "neither header has a valid signature and CRC-32C",
            ));
        }
    };
    check_header(&header, name)?;
    Ok(header)
}

/// The header in `bytes` (4 KiB from slot `slot`), or `None` when its signature or checksum
/// is wrong: such a header is simply not current.
fn parse_header(bytes: &[u8], slot: usize, name: &str) -> Result<Option<Header>, FormatError> {
    let fields = Fields::new(bytes, FORMAT, name, HEADER_OFFSETS[slot]);
    if fields.array::<4>("header Signature", 0)? != HEADER_SIGNATURE {
        return Ok(None);
    }
    if fields.u32_le("header Checksum", 4)? != crc32c_without_field(bytes, 4) {
        return Ok(None);
    }
    Ok(Some(Header {
        slot,
        sequence: fields.u64_le("header SequenceNumber", 8)?,
        file_write_guid: Guid(fields.array("header FileWriteGuid", 16)?),
        data_write_guid: Guid(fields.array("header DataWriteGuid", 32)?),
        log_guid: Guid(fields.array("header LogGuid", 48)?),
        log_version: fields.u16_le("header LogVersion", 64)?,
        version: fields.u16_le("header Version", 66)?,
        log_length: fields.u32_le("header LogLength", 68)?,
        log_offset: fields.u64_le("header LogOffset", 72)?,
    }))
}

/// Checks the versions and the log location of the current header (§2.2.2).
fn check_header(header: &Header, name: &str) -> Result<(), FormatError> {
    let base = HEADER_OFFSETS[header.slot];
    if header.version != HEADER_VERSION {
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!(
                "header Version {} (only version 1 is defined)",
                header.version
            ),
            advice: "convert the image to raw or VHD with the tool that made it",
        });
    }
    if header.log_version != LOG_VERSION {
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!(
                "header LogVersion {} (only version 0 is defined)",
                header.log_version
            ),
            advice: "open the image in Hyper-V once so that it replays its log, then retry",
        });
    }
    let log_length = u64::from(header.log_length);
    if !log_length.is_multiple_of(REGION_ALIGNMENT) {
        return Err(corrupt(
            name,
            "header LogLength",
            base + 68,
            format!("{log_length} is not a multiple of 1 MiB"),
        ));
    }
    if log_length == 0 {
        if !header.log_guid.is_zero() {
            return Err(corrupt(
                name,
                "header LogGuid",
                base + 48,
                "the header names a log to replay but the log is empty (LogLength 0)",
            ));
        }
        return Ok(());
    }
    if !header.log_offset.is_multiple_of(REGION_ALIGNMENT) || header.log_offset < HEADER_AREA {
        return Err(corrupt(
            name,
            "header LogOffset",
            base + 72,
            format!(
                "{} is not a multiple of 1 MiB past the first megabyte",
                header.log_offset
            ),
        ));
    }
    if header.log_offset.checked_add(log_length).is_none() {
        return Err(corrupt(
            name,
            "header LogOffset",
            base + 72,
            "the log would end past 2^64 bytes",
        ));
    }
    Ok(())
}

/// A region of the file named by the region table (§2.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    /// File offset, a multiple of 1 MiB.
    pub(crate) offset: u64,
    /// Bytes, a multiple of 1 MiB.
    pub(crate) length: u64,
    /// File offset of the region table entry that names it, for messages.
    pub(crate) table_entry: u64,
}

impl Region {
    /// The offset just past the region.
    pub(crate) fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// Whether the region shares a byte with `start..end`.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end() && self.offset < end
    }
}

/// The two regions every VHDX file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Regions {
    /// The block allocation table.
    pub(crate) bat: Region,
    /// The metadata table and its items.
    pub(crate) metadata: Region,
}

/// Parses the region tables from `tables`, the 128 KiB at 192 KiB: table 1, or its copy when
/// table 1 fails its signature or checksum (§2.2.3).
pub(crate) fn parse_region_tables(tables: &[u8], name: &str) -> Result<Regions, FormatError> {
    for (index, &offset) in REGION_TABLE_OFFSETS.iter().enumerate() {
        let start = index * REGION_TABLE_SIZE;
        let Some(bytes) = tables.get(start..start + REGION_TABLE_SIZE) else {
            break;
        };
        if let Some(regions) = parse_region_table(bytes, offset, name)? {
            return Ok(regions);
        }
    }
    Err(corrupt(
        name,
        "region table Checksum",
        REGION_TABLE_OFFSETS[0] + 4,
        "neither region table has a valid signature and CRC-32C",
    ))
}

/// One region table, or `None` when its signature or checksum is wrong.
fn parse_region_table(bytes: &[u8], base: u64, name: &str) -> Result<Option<Regions>, FormatError> {
    let fields = Fields::new(bytes, FORMAT, name, base);
    if fields.array::<4>("region table Signature", 0)? != REGION_TABLE_SIGNATURE {
        return Ok(None);
    }
    if fields.u32_le("region table Checksum", 4)? != crc32c_without_field(bytes, 4) {
        return Ok(None);
    }
    let count = fields.u32_le("region table EntryCount", 8)?;
    if count > MAX_REGION_ENTRIES {
        return Err(fields.corrupt(
            "region table EntryCount",
            8,
            format!("{count} entries is above the limit of {MAX_REGION_ENTRIES}"),
        ));
    }

    let mut bat = None;
    let mut metadata = None;
    let mut seen: Vec<Guid> = Vec::new();
    for index in 0..count as usize {
        let at = REGION_HEADER_LEN + index * REGION_ENTRY_LEN;
        let guid = Guid(fields.array("region table entry Guid", at)?);
        let offset = fields.u64_le("region table entry FileOffset", at + 16)?;
        let length = u64::from(fields.u32_le("region table entry Length", at + 24)?);
        let required = fields.u32_le("region table entry Required", at + 28)? & 1 != 0;
        if seen.contains(&guid) {
            return Err(fields.corrupt(
                "region table entry Guid",
                at,
                format!("region {guid} is listed twice"),
            ));
        }
        seen.push(guid);

        let slot = if guid == BAT_REGION {
            &mut bat
        } else if guid == METADATA_REGION {
            &mut metadata
        } else if required {
            return Err(FormatError::Unsupported {
                format: FORMAT,
                name: name.to_owned(),
                feature: format!("the required region {guid}"),
                advice: "convert the image to raw or VHD with the tool that made it",
            });
        } else {
            // An optional region this reader does not know: the specification allows
            // ignoring it.
            continue;
        };
        if !offset.is_multiple_of(REGION_ALIGNMENT) || offset < HEADER_AREA {
            return Err(fields.corrupt(
                "region table entry FileOffset",
                at + 16,
                format!(
                    "region {guid} at {offset} is not on a 1 MiB boundary past the first \
                     megabyte"
                ),
            ));
        }
        if length == 0 || !length.is_multiple_of(REGION_ALIGNMENT) {
            return Err(fields.corrupt(
                "region table entry Length",
                at + 24,
                format!("region {guid} of {length} bytes is not a positive multiple of 1 MiB"),
            ));
        }
        if offset.checked_add(length).is_none() {
            return Err(fields.corrupt(
                "region table entry FileOffset",
                at + 16,
                format!("region {guid} would end past 2^64 bytes"),
            ));
        }
        *slot = Some(Region {
            offset,
            length,
            table_entry: fields.offset_of(at),
        });
    }

    let missing =
        |what: &str| fields.corrupt("region table", 8, format!("the table has no {what} region"));
    Ok(Some(Regions {
        bat: bat.ok_or_else(|| missing("BAT"))?,
        metadata: metadata.ok_or_else(|| missing("metadata"))?,
    }))
}

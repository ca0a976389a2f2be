//! The metadata region: its table and the system items a reader needs ([MS-VHDX] §2.6).
//!
//! ```text
//!  metadata region (a multiple of 1 MiB)
//!  +-------------------------------------------+---------------------------------------+
//!  | table, 64 KiB: "metadata", EntryCount,    | items, anywhere past the table:       |
//!  | then 32-byte entries: item GUID, offset   | file parameters, virtual disk size,   |
//!  | and length in the region, flags (IsUser,  | page 83 data, logical and physical    |
//!  | IsVirtualDisk, IsRequired)                | sector sizes, parent locator          |
//!  +-------------------------------------------+---------------------------------------+
//! ```

use crate::fields::Fields;
use crate::{ByteSource, FormatError};

use super::guid::Guid;
use super::header::Region;
use super::{FORMAT, MIB, corrupt};

/// Bytes of the metadata table at the start of the region (§2.6.1).
pub(crate) const METADATA_TABLE_SIZE: usize = 64 << 10;
/// "metadata", the table's signature (§2.6.1.1).
pub(crate) const METADATA_SIGNATURE: [u8; 8] = *b"metadata";
/// Most entries the table may hold, in entries: the specification's cap (§2.6.1.1), which
/// is also what fits in 64 KiB after the 32-byte table header.
pub(crate) const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest item, in bytes (§2.6.1.2, Length).
pub(crate) const MAX_ITEM_LEN: u32 = 1 << 20;
/// Bytes of the table header and of each entry (§2.6.1.1, §2.6.1.2).
const TABLE_HEADER_LEN: usize = 32;
const ENTRY_LEN: usize = 32;
/// Bytes read from the start of the region in one go: the 64 KiB table and, in the images
/// of qemu-img and Hyper-V, all the items, which they put right after it. Items further out
/// are read one by one.
const READ_AHEAD: u64 = 256 << 10;

/// Entry flag bits (§2.6.1.2).
pub(crate) const FLAG_IS_USER: u32 = 1;
pub(crate) const FLAG_IS_VIRTUAL_DISK: u32 = 1 << 1;
pub(crate) const FLAG_IS_REQUIRED: u32 = 1 << 2;

/// File Parameters: block size and flags (§2.6.2.1).
pub(crate) const FILE_PARAMETERS: Guid = Guid::new(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Virtual Disk Size (§2.6.2.2).
pub(crate) const VIRTUAL_DISK_SIZE: Guid = Guid::new(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Page 83 Data: the virtual disk's id (§2.6.2.3).
pub(crate) const PAGE_83_DATA: Guid = Guid::new(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Logical Sector Size (§2.6.2.4).
pub(crate) const LOGICAL_SECTOR_SIZE: Guid = Guid::new(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Physical Sector Size (§2.6.2.5).
pub(crate) const PHYSICAL_SECTOR_SIZE: Guid = Guid::new(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Parent Locator, present in differencing disks (§2.6.2.6).
pub(crate) const PARENT_LOCATOR: Guid = Guid::new(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// The locator type of a VHDX parent, the only one defined (§2.6.2.6.1).
pub(crate) const VHDX_PARENT_LOCATOR_TYPE: Guid = Guid::new(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// Smallest and largest payload block, in bytes (§2.6.2.1, BlockSize).
pub(crate) const MIN_PAYLOAD_BLOCK_SIZE: u64 = MIB;
pub(crate) const MAX_PAYLOAD_BLOCK_SIZE: u64 = 256 * MIB;
/// Largest virtual disk, in bytes (§2.6.2.2: "MUST be ... at most 64 TB").
pub(crate) const MAX_DISK_SIZE: u64 = 64 << 40;
/// Bytes of the parent locator header and of each of its key-value entries (§2.6.2.6.1,
/// §2.6.2.6.2).
const LOCATOR_HEADER_LEN: usize = 20;
const LOCATOR_ENTRY_LEN: usize = 12;

/// The system metadata a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    /// Bytes of a payload block: a power of two from 1 to 256 MiB.
    pub(crate) block_size: u64,
    /// Whether blocks stay allocated once written (fixed disks set it).
    pub(crate) leave_block_allocated: bool,
    /// A differencing disk: regions it does not store come from its parent.
    pub(crate) has_parent: bool,
    /// Bytes of the virtual disk.
    pub(crate) virtual_disk_size: u64,
    /// The virtual disk's id, reported to the guest as SCSI page 83 data.
    pub(crate) virtual_disk_id: Guid,
    /// 512 or 4096.
    pub(crate) logical_sector_size: u64,
    /// 512 or 4096.
    pub(crate) physical_sector_size: u64,
    /// Where the parent lies, for a differencing disk.
    pub(crate) parent_locator: Option<ParentLocator>,
}

/// A VHDX parent locator's key-value pairs (§2.6.2.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParentLocator {
    pub(crate) entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`, if the locator has it.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Where an item lies, once its table entry has been checked.
#[derive(Debug, Clone, Copy)]
struct ItemPlace {
    /// Offset in the region.
    offset: u64,
    length: u64,
    /// File offset of the table entry, for messages.
    entry_at: u64,
}

/// Reads and checks the metadata table and the system items of the region.
pub(crate) fn parse(
    source: &dyn ByteSource,
    region: Region,
    name: &str,
) -> Result<Metadata, FormatError> {
    let prefix_len = usize::try_from(region.length.min(READ_AHEAD)).unwrap_or(0);
    let prefix = source.read_vec(region.offset, prefix_len)?;
    let table = Fields::new(&prefix, FORMAT, name, region.offset);
    if table.array::<8>("metadata table Signature", 0)? != METADATA_SIGNATURE {
        return Err(table.corrupt(
            "metadata table Signature",
            0,
            "the metadata region does not start with \"metadata\"",
        ));
    }
    let count = table.u16_le("metadata table EntryCount", 10)?;
    if count > MAX_METADATA_ENTRIES {
        return Err(table.corrupt(
            "metadata table EntryCount",
            10,
            format!("{count} entries is above the limit of {MAX_METADATA_ENTRIES}"),
        ));
    }

    let known = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        PAGE_83_DATA,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PARENT_LOCATOR,
    ];
    let mut places: [Option<ItemPlace>; 6] = [None; 6];
    let mut seen: Vec<(Guid, bool)> = Vec::new();
    for index in 0..usize::from(count) {
        let at = TABLE_HEADER_LEN + index * ENTRY_LEN;
        let guid = Guid(table.array("metadata table entry ItemId", at)?);
        let offset = u64::from(table.u32_le("metadata table entry Offset", at + 16)?);
        let length = table.u32_le("metadata table entry Length", at + 20)?;
        let flags = table.u32_le("metadata table entry flags", at + 24)?;
        let is_user = flags & FLAG_IS_USER != 0;
        if seen.contains(&(guid, is_user)) {
            return Err(table.corrupt(
                "metadata table entry ItemId",
                at,
                format!("item {guid} is listed twice"),
            ));
        }
        seen.push((guid, is_user));

        if length > MAX_ITEM_LEN {
            return Err(table.corrupt(
                "metadata table entry Length",
                at + 20,
                format!("item {guid} of {length} bytes is above the limit of {MAX_ITEM_LEN}"),
            ));
        }
        let length = u64::from(length);
        let placed = if length == 0 {
            offset == 0
        } else {
            offset >= METADATA_TABLE_SIZE as u64 && offset + length <= region.length
        };
        if !placed {
            return Err(table.corrupt(
                "metadata table entry Offset",
                at + 16,
                format!(
                    "item {guid} at {offset} of {length} bytes does not lie between the table \
                     and the end of the {} byte region",
                    region.length
                ),
            ));
        }

        let slot = known.iter().position(|&id| id == guid).filter(|_| !is_user);
        match slot {
            Some(slot) => {
                places[slot] = Some(ItemPlace {
                    offset,
                    length,
                    entry_at: table.offset_of(at),
                });
            }
            None if flags & FLAG_IS_REQUIRED != 0 => {
                return Err(FormatError::Unsupported {
                    format: FORMAT,
                    name: name.to_owned(),
                    feature: format!(
                        "the required {} metadata item {guid}",
                        if is_user { "user" } else { "system" }
                    ),
                    advice: "convert the image to raw or VHD with the tool that made it",
                });
            }
            // Optional items this reader does not use: user metadata, newer system items.
            None => {}
        }
    }

    let reader = ItemReader {
        source,
        region,
        prefix: &prefix,
        name,
    };
    let file_parameters = reader.item(places[0], "File Parameters", 8)?;
    let size = reader.item(places[1], "Virtual Disk Size", 8)?;
    let page_83 = reader.item(places[2], "Page 83 Data", 16)?;
    let logical = reader.item(places[3], "Logical Sector Size", 4)?;
    let physical = reader.item(places[4], "Physical Sector Size", 4)?;

    let block_size = u64::from(file_parameters.u32_le("File Parameters BlockSize", 0)?);
    if !block_size.is_power_of_two()
        || !(MIN_PAYLOAD_BLOCK_SIZE..=MAX_PAYLOAD_BLOCK_SIZE).contains(&block_size)
    {
        return Err(file_parameters.corrupt(
            "File Parameters BlockSize",
            0,
            format!("{block_size} is not a power of two from 1 MiB to 256 MiB"),
        ));
    }
    let flags = file_parameters.u32_le("File Parameters flags", 4)?;
    let leave_block_allocated = flags & 1 != 0;
    let has_parent = flags & 2 != 0;

    let logical_sector_size = u64::from(logical.u32_le("LogicalSectorSize", 0)?);
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(logical.corrupt(
            "LogicalSectorSize",
            0,
            format!("{logical_sector_size} is neither 512 nor 4096"),
        ));
    }
    let physical_sector_size = u64::from(physical.u32_le("PhysicalSectorSize", 0)?);
    if physical_sector_size != 512 && physical_sector_size != 4096 {
        return Err(physical.corrupt(
            "PhysicalSectorSize",
            0,
            format!("{physical_sector_size} is neither 512 nor 4096"),
        ));
    }
    let virtual_disk_size = size.u64_le("VirtualDiskSize", 0)?;
    if virtual_disk_size > MAX_DISK_SIZE || virtual_disk_size % logical_sector_size != 0 {
        return Err(size.corrupt(
            "VirtualDiskSize",
            0,
            format!(
                "{virtual_disk_size} is not a multiple of the {logical_sector_size}-byte \
                 logical sector of at most 64 TiB"
            ),
        ));
    }
    let virtual_disk_id = Guid(page_83.array("Page 83 Data", 0)?);

    let parent_locator = if has_parent {
        let place = places[5].ok_or_else(|| {
            corrupt(
                name,
                "File Parameters HasParent",
                region.offset,
                "the disk has a parent but no parent locator item",
            )
        })?;
        let bytes = reader.bytes(place)?;
        let fields = Fields::new(&bytes, FORMAT, name, region.offset + place.offset);
        Some(parse_parent_locator(&fields, name)?)
    } else {
        None
    };

    Ok(Metadata {
        block_size,
        leave_block_allocated,
        has_parent,
        virtual_disk_size,
        virtual_disk_id,
        logical_sector_size,
        physical_sector_size,
        parent_locator,
    })
}

/// Reads items from the prefix already in memory, or from the source.
struct ItemReader<'a> {
    source: &'a dyn ByteSource,
    region: Region,
    prefix: &'a [u8],
    name: &'a str,
}

impl ItemReader<'_> {
    fn bytes(&self, place: ItemPlace) -> Result<Vec<u8>, FormatError> {
        // Bounded: the table entry was checked against MAX_ITEM_LEN.
        let length = usize::try_from(place.length).unwrap_or(0);
        let start = usize::try_from(place.offset).unwrap_or(usize::MAX);
        match start
            .checked_add(length)
            .and_then(|end| self.prefix.get(start..end))
        {
            Some(bytes) => Ok(bytes.to_vec()),
            None => self
                .source
                .read_vec(self.region.offset + place.offset, length),
        }
    }

    /// A required fixed-size item, as fields at its file offset.
    fn item(
        &self,
        place: Option<ItemPlace>,
        what: &'static str,
        length: u64,
    ) -> Result<OwnedFields<'_>, FormatError> {
        let place = place.ok_or_else(|| {
            corrupt(
                self.name,
                "metadata table",
                self.region.offset,
                format!("the required item {what} is missing"),
            )
        })?;
        if place.length != length {
            return Err(corrupt(
                self.name,
                "metadata table entry Length",
                place.entry_at + 20,
                format!("the {what} item has {} bytes, not {length}", place.length),
            ));
        }
        Ok(OwnedFields {
            bytes: self.bytes(place)?,
            base: self.region.offset + place.offset,
            name: self.name,
        })
    }
}

/// An item's bytes with the [`Fields`] accessors.
struct OwnedFields<'a> {
    bytes: Vec<u8>,
    base: u64,
    name: &'a str,
}

impl OwnedFields<'_> {
    fn fields(&self) -> Fields<'_> {
        Fields::new(&self.bytes, FORMAT, self.name, self.base)
    }

    fn u32_le(&self, field: &'static str, at: usize) -> Result<u32, FormatError> {
        self.fields().u32_le(field, at)
    }

    fn u64_le(&self, field: &'static str, at: usize) -> Result<u64, FormatError> {
        self.fields().u64_le(field, at)
    }

    fn array<const N: usize>(
        &self,
        field: &'static str,
        at: usize,
    ) -> Result<[u8; N], FormatError> {
        self.fields().array(field, at)
    }

    fn corrupt(&self, field: &'static str, at: usize, problem: String) -> FormatError {
        self.fields().corrupt(field, at, problem)
    }
}

/// Parses a parent locator item (§2.6.2.6): a locator type, then key-value pairs of
/// UTF-16LE strings placed anywhere in the item.
fn parse_parent_locator(fields: &Fields<'_>, name: &str) -> Result<ParentLocator, FormatError> {
    let locator_type = Guid(fields.array("parent locator LocatorType", 0)?);
    if locator_type != VHDX_PARENT_LOCATOR_TYPE {
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!("a parent locator of type {locator_type}"),
            advice: "merge the differencing disk into its parent with the tool that made it",
        });
    }
    let count = usize::from(fields.u16_le("parent locator KeyValueCount", 18)?);
    let item_len = fields.bytes().len();
    if LOCATOR_HEADER_LEN + count * LOCATOR_ENTRY_LEN > item_len {
        return Err(fields.corrupt(
            "parent locator KeyValueCount",
            18,
            format!("{count} entries do not fit in the {item_len} byte item"),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for index in 0..count {
        let at = LOCATOR_HEADER_LEN + index * LOCATOR_ENTRY_LEN;
        let key_offset = fields.u32_le("parent locator entry KeyOffset", at)?;
        let value_offset = fields.u32_le("parent locator entry ValueOffset", at + 4)?;
        let key_len = fields.u16_le("parent locator entry KeyLength", at + 8)?;
        let value_len = fields.u16_le("parent locator entry ValueLength", at + 10)?;
        let key = utf16_at(
            fields,
            "parent locator entry KeyOffset",
            at,
            key_offset,
            key_len,
        )?;
        let value = utf16_at(
            fields,
            "parent locator entry ValueOffset",
            at + 4,
            value_offset,
            value_len,
        )?;
        if entries.iter().any(|(k, _): &(String, String)| *k == key) {
            return Err(fields.corrupt(
                "parent locator entry KeyOffset",
                at,
                format!("the key {key:?} appears twice"),
            ));
        }
        entries.push((key, value));
    }
    Ok(ParentLocator { entries })
}

/// The UTF-16LE string of `len` bytes at `offset` of the item.
fn utf16_at(
    fields: &Fields<'_>,
    field: &'static str,
    entry_at: usize,
    offset: u32,
    len: u16,
) -> Result<String, FormatError> {
    let bad = |problem: String| fields.corrupt(field, entry_at, problem);
    if len == 0 || !len.is_multiple_of(2) {
        return Err(bad(format!("a string of {len} bytes is not whole UTF-16")));
    }
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let bytes = start
        .checked_add(usize::from(len))
        .and_then(|end| fields.bytes().get(start..end))
        .ok_or_else(|| bad(format!("{len} bytes at {offset} lie outside the item")))?;
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| bad(format!("the string at {offset} is not UTF-16")))
}

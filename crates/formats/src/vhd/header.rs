//! The dynamic disk header of dynamic and differencing disks (spec "Dynamic Disk Header
//! Format").
//!
//! ```text
//! offset size field
//!      0    8 cookie "cxsparse"
//!      8    8 data offset: unused, all ones
//!     16    8 table offset: the block allocation table's byte offset in the file
//!     24    4 header version 0x0001_0000
//!     28    4 max table entries: BAT entries, at least the disk's blocks
//!     32    4 block size in bytes: a power of two, 2 MiB by default
//!     36    4 checksum, as the footer's
//!     40   16 parent unique id (differencing)
//!     56    4 parent time stamp (differencing)
//!     60    4 reserved
//!     64  512 parent unicode name: UTF-16 big-endian, NUL padded (differencing)
//!    576  192 parent locator entries, 8 of 24 bytes:
//!               0 4 platform code ("W2ru", "W2ku", "Wi2r", "Wi2k", "Mac ", "MacX")
//!               4 4 platform data space (sectors by the spec, bytes by some writers)
//!               8 4 platform data length in bytes
//!              12 4 reserved
//!              16 8 platform data offset in the file
//!    768  256 reserved, zero
//! ```

use super::footer::{FORMAT_VERSION, checksum};
use super::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::FormatError;
use crate::fields::Fields;

/// Bytes in a dynamic disk header.
pub(super) const HEADER_LEN: usize = 1024;
/// Dynamic header field "Cookie".
const COOKIE: &[u8; 8] = b"cxsparse";
/// Where the checksum field lies in the header.
const CHECKSUM_AT: usize = 36;
/// Where the parent unicode name starts, and its length in bytes.
const PARENT_NAME_AT: usize = 64;
pub(super) const PARENT_NAME_LEN: usize = 512;
/// Where the eight parent locator entries start, and the size of one.
const LOCATORS_AT: usize = 576;
const LOCATOR_LEN: usize = 24;
/// Parent locator entries a header holds.
const LOCATOR_COUNT: usize = 8;

/// A parent locator entry that names a platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ParentLocator {
    /// Which of the eight entries this is.
    pub(super) slot: usize,
    /// The platform code: how the data names the parent.
    pub(super) code: [u8; 4],
    /// Bytes of locator data.
    pub(super) data_length: u32,
    /// Where the data lies in the file.
    pub(super) data_offset: u64,
}

impl ParentLocator {
    /// The header offset of this entry's field at `at` within the entry.
    pub(super) fn field_at(&self, at: usize) -> usize {
        LOCATORS_AT + self.slot * LOCATOR_LEN + at
    }
}

/// A dynamic disk header, checked on its own (its fit with the footer and the file is the
/// reader's to check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DynamicHeader {
    /// Byte offset of the block allocation table.
    pub(super) table_offset: u64,
    /// Entries in the block allocation table.
    pub(super) max_table_entries: u32,
    /// Bytes of disk each block holds: a power of two.
    pub(super) block_size: u32,
    pub(super) parent_unique_id: [u8; 16],
    pub(super) parent_timestamp: u32,
    /// The parent unicode name field as stored: UTF-16 big-endian, NUL padded.
    pub(super) parent_name: [u8; PARENT_NAME_LEN],
    /// The locator entries whose platform code is not zero.
    pub(super) locators: Vec<ParentLocator>,
}

impl DynamicHeader {
    /// Parses and checks the header in `bytes` (at least [`HEADER_LEN`] long), read from
    /// offset `base` of the image `name`.
    pub(super) fn parse(bytes: &[u8], name: &str, base: u64) -> Result<Self, FormatError> {
        let fields = Fields::new(bytes, "VHD", name, base);
        let bytes = fields.slice("dynamic disk header", 0, HEADER_LEN)?;

        let cookie: [u8; 8] = fields.array("dynamic header cookie", 0)?;
        if &cookie != COOKIE {
            return Err(fields.corrupt(
                "dynamic header cookie",
                0,
                format!("{:?} is not \"cxsparse\"", String::from_utf8_lossy(&cookie)),
            ));
        }
        let stored = fields.u32_be("dynamic header checksum", CHECKSUM_AT)?;
        let computed = checksum(bytes, CHECKSUM_AT);
        if stored != computed {
            return Err(fields.corrupt(
                "dynamic header checksum",
                CHECKSUM_AT,
                format!("{stored:#010x} where the header's bytes sum to {computed:#010x}"),
            ));
        }
        let version = fields.u32_be("header version", 24)?;
        if version >> 16 != FORMAT_VERSION >> 16 {
            return Err(FormatError::Unsupported {
                format: "VHD",
                name: name.to_owned(),
                feature: format!("dynamic header version {version:#010x}"),
                advice: "only version 1.0 is specified; convert the image with the tool that \
                         made it",
            });
        }
        let block_size = fields.u32_be("block size", 32)?;
        let valid = block_size.is_power_of_two()
            && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&u64::from(block_size));
        if !valid {
            return Err(fields.corrupt(
                "block size",
                32,
                format!(
                    "{block_size} is not a power of two from {MIN_BLOCK_SIZE} to \
                     {MAX_BLOCK_SIZE} bytes"
                ),
            ));
        }

        let mut locators = Vec::new();
        for slot in 0..LOCATOR_COUNT {
            let at = LOCATORS_AT + slot * LOCATOR_LEN;
            let code: [u8; 4] = fields.array("platform code", at)?;
            if code == [0; 4] {
                continue;
            }
            locators.push(ParentLocator {
                slot,
                code,
                data_length: fields.u32_be("platform data length", at + 8)?,
                data_offset: fields.u64_be("platform data offset", at + 16)?,
            });
        }

        Ok(Self {
            table_offset: fields.u64_be("table offset", 16)?,
            max_table_entries: fields.u32_be("max table entries", 28)?,
            block_size,
            parent_unique_id: fields.array("parent unique id", 40)?,
            parent_timestamp: fields.u32_be("parent time stamp", 56)?,
            parent_name: fields.array("parent unicode name", PARENT_NAME_AT)?,
            locators,
        })
    }

    /// The header's 1024 bytes, checksum included. Locator entries are written as given;
    /// their platform data space is the data's length rounded up to whole sectors, counted
    /// in sectors as the spec says.
    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(COOKIE);
        out[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        out[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        out[24..28].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        out[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        out[40..56].copy_from_slice(&self.parent_unique_id);
        out[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        out[PARENT_NAME_AT..PARENT_NAME_AT + PARENT_NAME_LEN].copy_from_slice(&self.parent_name);
        for locator in self.locators.iter().filter(|l| l.slot < LOCATOR_COUNT) {
            let at = locator.field_at(0);
            out[at..at + 4].copy_from_slice(&locator.code);
            let space = locator.data_length.div_ceil(512);
            out[at + 4..at + 8].copy_from_slice(&space.to_be_bytes());
            out[at + 8..at + 12].copy_from_slice(&locator.data_length.to_be_bytes());
            out[at + 16..at + 24].copy_from_slice(&locator.data_offset.to_be_bytes());
        }
        let sum = checksum(&out, CHECKSUM_AT);
        out[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> DynamicHeader {
        DynamicHeader {
            table_offset: 1536,
            max_table_entries: 6,
            block_size: 2 << 20,
            parent_unique_id: [3; 16],
            parent_timestamp: 99,
            parent_name: [0; PARENT_NAME_LEN],
            locators: vec![ParentLocator {
                slot: 2,
                code: *b"W2ru",
                data_length: 24,
                data_offset: 4096,
            }],
        }
    }

    #[test]
    fn a_header_survives_encoding_and_parsing() {
        let header = header();
        let parsed = DynamicHeader::parse(&header.encode(), "d.vhd", 512).expect("parses");
        assert_eq!(parsed, header);
    }

    #[test]
    fn a_block_size_that_is_not_a_power_of_two_is_refused() {
        let mut header = header();
        header.block_size = 3 << 20;
        let err = DynamicHeader::parse(&header.encode(), "d.vhd", 512).expect_err("refused");
        assert!(
            matches!(
                err,
                FormatError::Corrupt {
                    field: "block size",
                    offset: 544,
                    ..
                }
            ),
            "{err}"
        );
    }
}

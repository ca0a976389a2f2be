//! VHDX images, Hyper-V's virtual disk format ([MS-VHDX], version 6.0 and later; section
//! numbers below refer to it).
//!
//! ```text
//!  file offset
//!  0        +---------------------------+
//!           | file type identifier      |  "vhdxfile", creator in UTF-16       §2.2.1
//!  64 KiB   +---------------------------+
//!           | header 1 (4 KiB used)     |  sequence number, log GUID and place,  §2.2.2
//!  128 KiB  +---------------------------+  CRC-32C; the valid header with the
//!           | header 2                  |  higher sequence number is current
//!  192 KiB  +---------------------------+
//!           | region table 1            |  GUID -> offset, length: BAT, metadata §2.2.3
//!  256 KiB  +---------------------------+
//!           | region table 2            |  its copy, used when table 1 fails its CRC
//!  320 KiB  +---------------------------+
//!           | reserved                  |
//!  1 MiB    +---------------------------+  everything below is 1 MiB aligned, in any order
//!           | log                       |  circular; replayed in memory when the current
//!           |                           |  header's LogGuid is not zero          §2.3
//!           +---------------------------+
//!           | metadata region           |  table + items: block size, disk size,  §2.6
//!           |                           |  sector sizes, page 83 id, parent locator
//!           +---------------------------+
//!           | BAT                       |  a u64 per payload block, a sector      §2.5
//!           |                           |  bitmap entry after every chunk of them
//!           +---------------------------+
//!           | payload blocks            |  BlockSize each (1 to 256 MiB)          §2.4
//!           | sector bitmap blocks      |  1 MiB each, differencing disks only
//!           +---------------------------+
//! ```
//!
//! Every integer is little-endian. A payload block is FULLY_PRESENT (its data is in the file),
//! one of the zero states (NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED: reported as zero), or, in
//! a differencing disk, NOT_PRESENT (the parent's) or PARTIALLY_PRESENT (a sector bitmap
//! says which sectors are here and which are the parent's).
//!
//! [`VhdxReader`] reads fixed, dynamic and differencing disks; a differencing disk's parent
//! is opened through the resolver by the paths of its parent locator. A log left by a
//! writer that did not close the file is replayed in memory (see `log.rs`); the file is never
//! written. [`write`] writes dynamic disks.

use std::sync::Arc;

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

mod bat;
mod crc;
mod guid;
mod header;
mod log;
mod metadata;
mod reader;
mod writer;

pub use crc::crc32c;
pub use reader::VhdxReader;
pub use writer::{DEFAULT_BLOCK_SIZE, VhdxWriteOptions, write};

/// The format's name in messages.
const FORMAT: &str = "VHDX";
/// One mebibyte, the unit of the format's alignment rules.
const MIB: u64 = 1 << 20;
/// The first megabyte holds the identifier, headers and region tables; no region or block
/// may lie in it (§2.1).
const HEADER_AREA: u64 = MIB;
/// Logical sectors described by one sector bitmap block, whose 1 MiB holds one bit per
/// sector (§2.4.1): the chunk size is this many sectors.
const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;
/// Bytes of a sector bitmap block (§2.4.1).
const SECTOR_BITMAP_BLOCK_SIZE: u64 = MIB;

/// Opens a VHDX image: fixed, dynamic or differencing, replaying its log in memory if it
/// was not closed cleanly.
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    Ok(Box::new(VhdxReader::open(source, context)?))
}

/// A [`FormatError::Corrupt`] for `field` at file offset `offset` of the image `name`.
fn corrupt(
    name: &str,
    field: &'static str,
    offset: u64,
    problem: impl Into<String>,
) -> FormatError {
    FormatError::Corrupt {
        format: FORMAT,
        name: name.to_owned(),
        field,
        offset,
        problem: problem.into(),
    }
}

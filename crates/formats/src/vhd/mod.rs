//! VHD images: Microsoft's "Virtual Hard Disk Image Format Specification" version 1.0,
//! also called VPC (qemu's `vpc` driver). Fixed, dynamic and differencing disks are read;
//! fixed and dynamic disks are written.
//!
//! ```text
//!  fixed disk                       dynamic or differencing disk
//!  +--------------------+ 0         +-------------------------------+ 0
//!  | disk sector 0      |           | copy of the footer (512 B)    |
//!  | disk sector 1      |           +-------------------------------+ footer "data offset"
//!  | ...                |           | dynamic disk header (1024 B)  | block size, table
//!  |                    |           |  parent name, 8 locators      | offset, parent
//!  +--------------------+ size      +-------------------------------+ header "table offset"
//!  | footer (512 B)     |           | block allocation table (BAT): | u32 sector offsets,
//!  +--------------------+           |  one entry a block, padded to | big-endian;
//!                                   |  whole sectors                | 0xFFFFFFFF = none
//!                                   +-------------------------------+ BAT[i] * 512
//!                                   | block i: sector bitmap, 1 bit | most significant
//!                                   |  a sector, padded to 512 B    | bit first;
//!                                   |  data: block size bytes       | 1 = stored here
//!                                   +-------------------------------+
//!                                   | more blocks, in any order;    |
//!                                   | parent locator data           |
//!                                   +-------------------------------+
//!                                   | footer (512 B)                |
//!                                   +-------------------------------+
//! ```
//!
//! Spec sections: "Hard Disk Footer Format" (`footer.rs`), "Dynamic Disk Header Format"
//! (`header.rs`), "Block Allocation Table and Data Blocks" (`reader.rs`, `writer.rs`),
//! "Implementing a Differencing Hard Disk" (`parent.rs`), "Appendix: CHS Calculation".
//!
//! **Size.** The disk's size is the footer's "current size", the field Hyper-V, Windows and
//! VirtualBox read. Virtual PC, and qemu for images whose creator application is `vpc ` or
//! `qemu`, read the cylinders × heads × sectors of the geometry instead, which the spec's
//! CHS algorithm rounds down. For images qemu-img makes the two agree: without
//! `force_size` it rounds the size up to a whole geometry and writes that as the current
//! size; with `force_size=on` it writes the exact size, the creator `qem2` and the largest
//! geometry, which tell qemu to read the current size. qemu's `force_size_calc` open option
//! picks either reading by hand.
//!
//! **Sector bitmaps.** In a dynamic disk a sector whose bit is clear reads as zeros, in a
//! differencing disk it reads from the parent; qemu ignores the bitmap of a dynamic disk
//! and reads the block. An unallocated block is zero, or the parent's.
//!
//! **Footers.** The footer at the end of the file is read; when it is damaged, the copy
//! a dynamic disk keeps at its start is used instead (see [`VhdReader::open`]).

mod footer;
mod header;
mod parent;
mod reader;
mod writer;

use std::sync::Arc;

pub use footer::VhdDiskType;
pub use reader::VhdReader;
pub use writer::{VhdSubformat, VhdWriteOptions, write};

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// Bytes in a sector, the unit of the sector bitmaps and the table's offsets.
const SECTOR: u64 = 512;

/// The largest disk read, in bytes. The spec's limit is 2040 GiB, and Hyper-V and qemu
/// create no larger VHD; other tools have written larger fixed disks, so reading allows
/// twice the spec's limit. It keeps a hostile footer from making a disk of exabytes.
pub const MAX_DISK_SIZE: u64 = 4 << 40;

/// The largest disk written, in bytes: the spec's 2040 GiB, which Hyper-V enforces.
pub const MAX_WRITE_SIZE: u64 = 2040 << 30;

/// Most block allocation table entries read, held in memory at 4 bytes each (32 MiB). It
/// covers [`MAX_DISK_SIZE`] in blocks of 512 KiB, the smallest block size Hyper-V makes.
const MAX_BAT_ENTRIES: u64 = 8 << 20;

/// Smallest block size read, in bytes: one sector. Real images use 512 KiB or 2 MiB.
const MIN_BLOCK_SIZE: u64 = SECTOR;

/// Largest block size read, in bytes. A block's sector bitmap is read whole, 64 KiB at this
/// size; no tool makes blocks larger than 2 MiB.
const MAX_BLOCK_SIZE: u64 = 256 << 20;

/// Most bytes of parent locator data read: a Windows path of 32767 UTF-16 units.
const MAX_LOCATOR_LEN: u64 = 64 << 10;

/// Sector bitmaps kept in memory, at most 64 KiB each. A sequential read needs one at a
/// time; a few more serve reads that go back and forth.
const MAX_CACHED_BITMAPS: usize = 16;

/// Opens the VHD in `source` as a disk; see [`VhdReader::open`].
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    Ok(Box::new(VhdReader::open(source, context)?))
}

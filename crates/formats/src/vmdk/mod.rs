//! VMware VMDK images: hosted sparse and stream-optimized extents, and text descriptors
//! naming sparse, flat and zero extents.
//!
//! Specifications: VMware's "Virtual Disk Format 1.1" (descriptor, hosted sparse extents,
//! stream-optimized extents) and "Virtual Disk Format 5.0" (zeroed-grain entries). All
//! numbers are little-endian; offsets and sizes are in 512-byte sectors.
//!
//! A disk is a descriptor (text) and the extents it lists, laid end to end. The descriptor
//! is a file of its own (`monolithicFlat`, `twoGbMaxExtentSparse`, `twoGbMaxExtentFlat`,
//! `vmfs`) or lies inside the one extent file (`monolithicSparse`, `streamOptimized`):
//!
//! ```text
//! disk.vmdk (descriptor)        disk-s001.vmdk          disk-s002.vmdk
//! RW 4192256 SPARSE "..s001" -> sparse extent: 2 GiB -> sparse extent: 2 GiB -> ...
//! RW 4192256 SPARSE "..s002" ----------------------------^
//! ```
//!
//! A hosted sparse extent (§"Hosted Sparse Extents") maps the disk in grains (usually
//! 64 KiB) through two levels of tables:
//!
//! ```text
//! sector 0            SparseExtentHeader, 512 bytes
//!   0 magicNumber "KDMV"   4 version (1..3)   8 flags      12 capacity
//!  20 grainSize            28 descriptorOffset            36 descriptorSize
//!  44 numGTEsPerGT (512)   48 rgdOffset       56 gdOffset  64 overHead
//!  72 uncleanShutdown      73 "\n \r\n" (newline test)    77 compressAlgorithm
//! descriptorOffset    embedded descriptor, NUL-padded
//! rgdOffset           redundant grain directory and grain tables (not read)
//! gdOffset            grain directory: u32 sector of each grain table, 0 = none
//!                     grain tables: numGTEsPerGT u32 sectors of grains,
//!                       0 = unallocated (zeros, or the parent's bytes in a delta disk),
//!                       1 = zeroed grain
//! overHead            grains
//! ```
//!
//! A stream-optimized extent (§"Stream-Optimized Compressed Sparse Extents") is written
//! front to back, so its tables follow the grains they map; `gdOffset` in the header is
//! `GD_AT_END` and the real one is in the footer:
//!
//! ```text
//! sector 0    header (gdOffset = 0xffff_ffff_ffff_ffff, or a real one from qemu)
//! 1..         descriptor
//!             grain:      lba u64 | size u32 | zlib stream ........ | pad to sector
//!             GT marker:  numSectors u64 | 0 u32 | type 1 u32 | pad; then the table
//!             ...
//!             GD marker (type 2) + grain directory
//! last - 3    footer marker (type 3)
//! last - 2    footer: the header again, with the real gdOffset
//! last - 1    end-of-stream marker (type 0)
//! ```
//!
//! Grains are found through the tables, never by walking the stream, so any byte of a
//! stream-optimized disk costs one table read and one grain read.
//!
//! A delta disk (`parentCID` other than `ffffffff`, with `parentFileNameHint`) opens its
//! parent through the resolver; its unallocated grains read from the parent and show as
//! [`crate::ExtentKind::Backing`] in [`crate::DiskReader::layer_extent_at`]. The parent's
//! content id is not compared with `parentCID`.
//!
//! Not read: ESX sparse extents ("COWD", `VMFSSPARSE`), SE sparse extents, raw device
//! mappings, and extents marked `NOACCESS`; each is refused as unsupported.

mod descriptor;
mod header;
mod reader;
mod sparse;
mod writer;

use std::sync::Arc;

pub use reader::VmdkReader;
pub use writer::{VmdkSubformat, VmdkWriteOptions, write};

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// Opens a VMDK image: a sparse or stream-optimized extent file, or a descriptor whose
/// extent files (and parent disk, for a delta) are opened through `context`.
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    Ok(Box::new(VmdkReader::open(source, context)?))
}

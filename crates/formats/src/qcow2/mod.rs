//! qcow2 images, versions 2 and 3: reading them, and writing version 3.
//!
//! The format is QEMU's, described in `docs/interop/qcow2.txt` of the QEMU sources (the
//! section names quoted in this module are that file's). A qcow2 file is cut into clusters
//! of one size, a power of two from 512 bytes to 2 MiB. The virtual disk is cut into guest
//! clusters of the same size, each found through a two-level table:
//!
//! ```text
//!  file offset 0                                            one cluster each
//!  +--------------------+------------------+----------+   +----------+   +--------------+
//!  | header (72 or 104+ | header           | backing  |   | L1 table |   | refcount     |
//!  | bytes, "QFI\xfb")  | extensions,      | file     |   | (l1_size |   | table and    |
//!  |                    | ended by type 0  | name     |   | x u64)   |   | blocks (not  |
//!  +--------------------+------------------+----------+   +----+-----+   | read here)   |
//!  '----------------- the first cluster ---------------'       |         +--------------+
//!                                                              v
//!                     L1 entry: bits 9-55 = offset of an L2 table, 0 = none
//!                                                              |
//!                          +-----------------------------------+
//!                          v
//!  +--------------------------------------------------+
//!  | L2 table: one cluster of u64 entries, or of      |    guest cluster n lies in
//!  | (u64 entry, u64 subcluster bitmap) pairs with    |    L1[n / l2_entries],
//!  | extended L2 entries                              |    L2[n % l2_entries]
//!  +--------------------------------------------------+
//!   L2 entry: bit 63 = refcount is one, bit 62 = compressed,
//!     standard:   bits 9-55 = host cluster offset (0 = unallocated), bit 0 = reads as zeros
//!     compressed: low bits = host byte offset, then the count of extra 512-byte sectors
//!   bitmap (extended L2): bits 0-31 = subcluster allocated, bits 32-63 = subcluster zero
//! ```
//!
//! A guest cluster is unallocated (read from the backing file, or zeros without one), zero
//! (v3 zero flag or a subcluster's zero bit), a normal cluster (its bytes in one host
//! cluster, of the image or of an external data file), or compressed (deflate or zstd,
//! decompressing to exactly one cluster).
//!
//! Reading is refcount-free: refcount tables matter only to writers, so they are not read,
//! and a dirty image (lazy refcounts left behind) reads like any other. Every table entry
//! is checked as it is used: offsets aligned and inside the file, external data offsets
//! equal to the guest offset, subcluster bitmaps consistent. Bits the specification
//! reserves in L1 and L2 entries are ignored, as QEMU ignores them when it reads. Internal
//! snapshots and bitmaps are ignored; the reader sees the active L1 table.
//!
//! Images with the corrupt bit set are refused: QEMU sets it when it found metadata that
//! contradicts itself, and a copy made from such an image could be silently wrong;
//! `qemu-img check -r all` repairs them. Encrypted images are refused too.

use std::sync::Arc;

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

mod compress;
mod compressed_writer;
mod header;
mod l2;
mod layout;
mod reader;
mod writer;

pub use reader::Qcow2Reader;
pub use writer::{Qcow2WriteOptions, write};

/// The format's name in messages.
const FORMAT: &str = "qcow2";

/// The largest virtual disk read or written, in bytes: 64 PiB. The specification's L1 and
/// L2 entries hold host offsets below 2^56, and no real disk comes near.
pub const MAX_DISK_SIZE: u64 = 1 << 56;

/// The largest active L1 table, in bytes: QEMU's implementation limit (32 MiB), which no
/// image QEMU can open exceeds. The table is held in memory whole.
pub const MAX_L1_BYTES: u64 = 32 << 20;

/// Smallest cluster: 512 bytes (spec "Header", cluster_bits must be at least 9).
pub const MIN_CLUSTER_SIZE: u64 = 1 << 9;

/// Largest cluster: 2 MiB, QEMU's implementation limit. Every buffer a cluster needs
/// (an L2 table, a decompressed cluster) is bounded by it.
pub const MAX_CLUSTER_SIZE: u64 = 1 << 21;

/// Opens a qcow2 image. Its backing file is opened through `context` at once, and so is
/// its external data file.
///
/// Fails with [`FormatError::Unsupported`] for encrypted images, images with the corrupt
/// bit set and images using features this reader does not know, and with
/// [`FormatError::Corrupt`] naming the field for anything the specification forbids.
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    Ok(Box::new(Qcow2Reader::open(source, context)?))
}

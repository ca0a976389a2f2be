//! Disk image formats for blockyard.
//!
//! A format reader turns an image file into a virtual disk that can be asked two things:
//! where its data lies ([`DiskReader::extent_at`]) and what the bytes are
//! ([`DiskReader::read_at`]). Regions a format knows to be unallocated or zero are reported
//! as [`ExtentKind::Zero`] so that nobody reads or stores them. [`Blocks`] cuts any reader
//! into the fixed-size blocks a store keeps.
//!
//! This crate does no storage and runs no async runtime: readers are plain blocking code
//! over `std::fs`, which is what a reader thread in a pipeline wants.
//!
//! ```
//! use blockyard_formats::{Block, Blocks, raw::RawReader};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.img");
//! let file = std::fs::File::create(&path)?;
//! file.set_len(3 * 4096)?; // a sparse file: three blocks of hole
//! std::os::unix::fs::FileExt::write_all_at(&file, b"hello", 4096)?;
//!
//! let reader = RawReader::open(&path)?;
//! let mut data_blocks = Vec::new();
//! for block in Blocks::new(reader, 4096)? {
//!     let (index, block) = block?;
//!     if let Block::Data(bytes) = block {
//!         data_blocks.push((index, bytes[..5].to_vec()));
//!     }
//! }
//! assert_eq!(data_blocks, vec![(1, b"hello".to_vec())]);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod backing;
mod blocks;
mod error;
pub mod export;
pub mod fields;
mod open;
pub mod ova;
pub mod qcow2;
pub mod raw;
mod sink;
mod source;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use backing::BackingDisk;
pub use blocks::{Block, Blocks, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, is_zero};
pub use error::FormatError;
pub use open::{
    FileResolver, Format, MAX_BACKING_DEPTH, OpenContext, Resolver, detect, open, open_at_depth,
    open_backing_file,
};
pub use sink::{FileSink, ImageSink, StreamSink};
pub use source::{ByteSource, FileSource, MemorySource, SliceSource};

/// What a region of a virtual disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// The region may hold data and must be read.
    Data,
    /// The region reads as zeros and need not be read (a hole, an unallocated cluster).
    Zero,
    /// The image stores nothing here: the region reads from its backing disk. Only
    /// [`DiskReader::layer_extent_at`] reports this kind.
    Backing,
}

/// A contiguous region of a virtual disk whose bytes are all of one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset of the region in the virtual disk.
    pub offset: u64,
    /// Length of the region in bytes; never zero.
    pub length: u64,
    /// Whether the region must be read.
    pub kind: ExtentKind,
}

impl Extent {
    /// The byte offset just past the region.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// A virtual disk read from an image.
///
/// Implementations are used from one thread at a time (`&mut self`) but may be moved between
/// threads. Offsets are in bytes of the virtual disk, not of the image file.
pub trait DiskReader: Send {
    /// The size of the virtual disk in bytes.
    fn size(&self) -> u64;

    /// The extent that contains `offset`, which must be below [`DiskReader::size`]. The
    /// extent may start before `offset` and never ends past the disk's size. A reader may
    /// report `Data` for a region that turns out to hold zeros; it must never report
    /// `Zero` for a region that holds anything else.
    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError>;

    /// The extent at `offset` as this image alone stores it: like
    /// [`DiskReader::extent_at`], except that a region the image leaves to its backing disk
    /// is reported as [`ExtentKind::Backing`] instead of being looked up there. This is how
    /// a snapshot of a copy-on-write overlay reads only what the overlay changed. Images
    /// without a backing disk store every byte themselves, which the default says.
    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent_at(offset)
    }

    /// Fills `buf` with the disk's bytes starting at `offset`. The range must lie within the
    /// disk; zero regions read as zeros.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError>;

    /// Reads `len` bytes at `offset` into a new buffer. Readers that can fill a buffer
    /// without zeroing it first override this; the block cutter calls it for every block.
    fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        let mut buf = vec![0u8; len];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}

impl<R: DiskReader + ?Sized> DiskReader for Box<R> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        (**self).extent_at(offset)
    }

    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        (**self).layer_extent_at(offset)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        (**self).read_at(offset, buf)
    }

    fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        (**self).read_vec(offset, len)
    }
}

//! The one error type of the formats crate.

use std::io;
use std::path::PathBuf;

/// Why an image could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The image could not be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The image's path.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The path names something that is not an image: a directory, a socket, a pipe.
    #[error("{} is a {what}, not a disk image or block device", path.display())]
    NotAnImage {
        /// The path given.
        path: PathBuf,
        /// What the path turned out to be.
        what: &'static str,
    },
    /// Reading the image failed at an offset.
    #[error("cannot read {} at byte {offset}", path.display())]
    Read {
        /// The image's path.
        path: PathBuf,
        /// The offset in the image file where the read failed.
        offset: u64,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The image ended before the data its size promises.
    #[error("{} ends at byte {end}, before byte {wanted} it should hold", path.display())]
    Truncated {
        /// The image's path.
        path: PathBuf,
        /// Where the file ended.
        end: u64,
        /// The offset that was wanted.
        wanted: u64,
    },
    /// A caller asked for bytes outside the virtual disk.
    #[error("range {offset}+{length} lies outside the disk of {size} bytes")]
    OutOfRange {
        /// Start of the range asked for.
        offset: u64,
        /// Length of the range asked for.
        length: u64,
        /// The disk's size.
        size: u64,
    },
    /// A block size that cannot be used.
    #[error("block size {0} is not a power of two between 4 KiB and 64 MiB")]
    BadBlockSize(u64),
}

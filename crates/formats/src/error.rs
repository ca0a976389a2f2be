//! The one error type of the formats crate.

use std::io;
use std::path::PathBuf;

/// Why an image could not be opened, read or written.
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
    /// Reading a byte source that is not a local file (an object, an archive member) failed.
    #[error("cannot read {name} at byte {offset}")]
    SourceRead {
        /// The source's name: a path or URL.
        name: String,
        /// The offset in the source where the read failed.
        offset: u64,
        /// What the layer below said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The image ended before the data its size or its tables promise.
    #[error("{name} ends at byte {end}, before byte {wanted} it should hold")]
    Truncated {
        /// The image's path or URL.
        name: String,
        /// Where the file ended.
        end: u64,
        /// The offset that was wanted.
        wanted: u64,
    },
    /// A field of an image's metadata holds a value the format does not allow.
    #[error("{format} image {name}: {field} at byte {offset}: {problem}")]
    Corrupt {
        /// The format, as users know it: "qcow2", "VMDK", "VHD", "VHDX", "OVA".
        format: &'static str,
        /// The image's path or URL.
        name: String,
        /// The field or structure at fault, named as the format's specification names it.
        field: &'static str,
        /// The byte offset of the field in the image file.
        offset: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// The image uses a feature blockyard does not read, such as encryption.
    #[error("{format} image {name}: {feature} is not supported; {advice}")]
    Unsupported {
        /// The format.
        format: &'static str,
        /// The image's path or URL.
        name: String,
        /// The feature, in words.
        feature: String,
        /// What the user can do instead.
        advice: &'static str,
    },
    /// A backing file, parent disk or extent file named by an image could not be opened.
    #[error("{name} refers to {target}, which cannot be opened")]
    Reference {
        /// The image that names the other file.
        name: String,
        /// The name as written in the image.
        target: String,
        /// Why it could not be opened.
        #[source]
        source: Box<FormatError>,
    },
    /// A chain of backing files is longer than any real one, or loops.
    #[error("{name}: the chain of backing files is deeper than {limit}; it probably loops")]
    BackingTooDeep {
        /// The image at which the limit was reached.
        name: String,
        /// The limit.
        limit: usize,
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
    /// Writing an image failed.
    #[error("cannot write {name} at byte {offset}")]
    Write {
        /// The output's path or URL.
        name: String,
        /// The offset in the output where the write failed.
        offset: u64,
        /// What the layer below said.
        #[source]
        source: io::Error,
    },
    /// An export was asked for something the chosen format or output cannot hold.
    #[error("cannot write {format}: {problem}")]
    CannotWrite {
        /// The format being written.
        format: &'static str,
        /// What stands in the way, and what to do instead.
        problem: String,
    },
    /// The blocks handed to a writer did not follow its layout.
    #[error("export of {format}: {problem}")]
    Feed {
        /// The format being written.
        format: &'static str,
        /// What went wrong.
        problem: String,
    },
    /// The source of blocks for an export failed; the message says why.
    #[error("cannot read the blocks to export")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

//! Recognising an image's format and opening it, with the files it names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::source::FileSource;
use crate::{ByteSource, DiskReader, FormatError};

/// The deepest chain of backing files a reader follows. Real chains are a few images deep;
/// a longer one almost certainly loops back on itself.
pub const MAX_BACKING_DEPTH: usize = 32;

/// An image format blockyard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The disk's bytes, nothing else.
    Raw,
    /// QEMU copy-on-write, versions 2 and 3.
    Qcow2,
    /// VMware's formats: sparse, stream-optimised, or a descriptor naming extent files.
    Vmdk,
    /// Virtual PC / Hyper-V version 1: fixed, dynamic or differencing.
    Vhd,
    /// Hyper-V version 2.
    Vhdx,
    /// A tar archive holding an OVF descriptor and its disks.
    Ova,
}

impl Format {
    /// Every format, in the order detection tries them.
    pub const ALL: [Format; 6] = [
        Format::Qcow2,
        Format::Vhdx,
        Format::Vmdk,
        Format::Ova,
        Format::Vhd,
        Format::Raw,
    ];

    /// The format's name as users type it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Ova => "ova",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            // "vpc" is what qemu-img calls VHD.
            "vpc" => return Ok(Format::Vhd),
            "img" | "bin" => return Ok(Format::Raw),
            _ => {}
        }
        Format::ALL
            .into_iter()
            .find(|format| format.name() == lower)
            .ok_or_else(|| {
                format!(
                    "unknown image format {text:?}; expected raw, qcow2, vmdk, vhd, vhdx or ova"
                )
            })
    }
}

/// Bytes read from the start of an image to recognise its format: enough for a tar header's
/// `ustar` magic at 257 and a VMDK text descriptor's first line.
const SNIFF_LEN: usize = 1024;
/// Bytes at the end of a VHD: the footer, which fixed disks have only there.
const VHD_FOOTER_LEN: u64 = 512;

/// Recognises an image's format from its magic numbers. Anything unrecognised is raw.
pub fn detect(source: &dyn ByteSource) -> Result<Format, FormatError> {
    let len = source.len();
    let head_len = usize::try_from(len.min(SNIFF_LEN as u64)).unwrap_or(SNIFF_LEN);
    let head = source.read_vec(0, head_len)?;

    // qcow2 §"Header": "QFI\xfb". VHDX §2.2.1 file type identifier: "vhdxfile".
    // VMDK sparse extent header: "KDMV" (little-endian 'VMDK'); a descriptor file starts
    // with a comment line. VHD §"Hard Disk Footer Format": cookie "conectix", at the start
    // of dynamic disks and always in the last 512 bytes. POSIX tar: "ustar" at 257.
    if head.starts_with(b"QFI\xfb") {
        return Ok(Format::Qcow2);
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(Format::Vhdx);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Ok(Format::Vmdk);
    }
    if head.get(257..262) == Some(b"ustar") {
        return Ok(Format::Ova);
    }
    if head.starts_with(b"conectix") {
        return Ok(Format::Vhd);
    }
    if len >= VHD_FOOTER_LEN {
        let mut cookie = [0u8; 8];
        source.read_exact_at(len - VHD_FOOTER_LEN, &mut cookie)?;
        if &cookie == b"conectix" {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

/// Opens the files an image names: backing files, parent disks, extent files.
///
/// Format readers never open files on their own, so the same reader works on local files,
/// on objects in a store and inside archives, and the caller decides what a name means (a
/// blockyard snapshot may stand in for a backing file that is not on this machine).
pub trait Resolver: Send + Sync {
    /// Opens the file `name`, as written in the image `from` (a path or URL). Relative names
    /// are relative to the directory holding `from`.
    fn open_file(&self, from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError>;

    /// Opens the backing disk `name` that the image `from` sits on, as a complete disk with
    /// its own backing chain. `format` is the format the image names for it, if any; `depth`
    /// is how many backing links lie above it. [`open_backing_file`] does this for a
    /// resolver whose backing disks are all files.
    fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError>;
}

/// Opens a backing disk as a file found by `resolver`, detecting its format unless the
/// image named one, and follows that file's own backing chain through `resolver`.
pub fn open_backing_file(
    resolver: &dyn Resolver,
    from: &str,
    name: &str,
    format: Option<Format>,
    depth: usize,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let source = resolver.open_file(from, name)?;
    open_at_depth(source, format, resolver, depth)
}

/// Resolves names as local paths, relative to the directory of the image naming them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileResolver;

impl FileResolver {
    /// The path `name` means when written in the image at path `from`.
    pub fn path_for(from: &str, name: &str) -> PathBuf {
        let name = Path::new(name);
        if name.is_absolute() {
            return name.to_owned();
        }
        Path::new(from)
            .parent()
            .map_or_else(|| name.to_owned(), |dir| dir.join(name))
    }
}

impl Resolver for FileResolver {
    fn open_file(&self, from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        let source = FileSource::open(&Self::path_for(from, name))?;
        Ok(Arc::new(source))
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        open_backing_file(self, from, name, format, depth)
    }
}

/// Opens `source` as a disk: in `format`, or in the format its magic numbers say. Files the
/// image names are opened through `resolver`.
///
/// An OVA archive holds several disks and is opened with [`crate::ova::open`] instead; here
/// it is accepted only when it holds exactly one disk.
pub fn open(
    source: Arc<dyn ByteSource>,
    format: Option<Format>,
    resolver: &dyn Resolver,
) -> Result<Box<dyn DiskReader>, FormatError> {
    open_at_depth(source, format, resolver, 0)
}

/// [`open`] for a backing disk `depth` links below the image the user named.
pub fn open_at_depth(
    source: Arc<dyn ByteSource>,
    format: Option<Format>,
    resolver: &dyn Resolver,
    depth: usize,
) -> Result<Box<dyn DiskReader>, FormatError> {
    if depth > MAX_BACKING_DEPTH {
        return Err(FormatError::BackingTooDeep {
            name: source.name().to_owned(),
            limit: MAX_BACKING_DEPTH,
        });
    }
    let format = match format {
        Some(format) => format,
        None => detect(&*source)?,
    };
    let context = OpenContext { resolver, depth };
    match format {
        Format::Raw => Ok(match source.local_path() {
            // A local file can tell its holes apart from its data.
            Some(path) => Box::new(crate::raw::RawReader::open(path)?),
            None => Box::new(crate::raw::RawSourceReader::new(source)),
        }),
        Format::Qcow2 => crate::qcow2::open(source, &context),
        Format::Vmdk => crate::vmdk::open(source, &context),
        Format::Vhd => crate::vhd::open(source, &context),
        Format::Vhdx => crate::vhdx::open(source, &context),
        Format::Ova => crate::ova::open_single(source, &context),
    }
}

/// What a format reader needs to open the files its image names.
#[derive(Clone, Copy)]
pub struct OpenContext<'a> {
    /// Opens backing files and extent files.
    pub resolver: &'a dyn Resolver,
    /// How many backing links lie above the image being opened.
    pub depth: usize,
}

impl std::fmt::Debug for OpenContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenContext")
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl OpenContext<'_> {
    /// Opens the backing disk `name` of the image `from`, one link deeper, turning a failure
    /// into a [`FormatError::Reference`] that names both.
    pub fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        self.resolver
            .open_backing(from, name, format, self.depth + 1)
            .map_err(|source| reference_error(from, name, source))
    }

    /// Opens the file `name` (an extent file, a parent disk's file) named by `from`.
    pub fn open_file(&self, from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        self.resolver
            .open_file(from, name)
            .map_err(|source| reference_error(from, name, source))
    }
}

fn reference_error(from: &str, name: &str, source: FormatError) -> FormatError {
    // A loop shows as a chain of nested references; report the limit once, not 32 times.
    if matches!(source, FormatError::BackingTooDeep { .. }) {
        return source;
    }
    FormatError::Reference {
        name: from.to_owned(),
        target: name.to_owned(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;

    fn detect_bytes(bytes: Vec<u8>) -> Format {
        detect(&MemorySource::new("image", bytes)).expect("detect")
    }

    #[test]
    fn detection_recognises_each_magic_number() {
        let mut qcow2 = b"QFI\xfb".to_vec();
        qcow2.resize(4096, 0);
        assert_eq!(detect_bytes(qcow2), Format::Qcow2);
        assert_eq!(detect_bytes(b"vhdxfile".to_vec()), Format::Vhdx);
        assert_eq!(detect_bytes(b"KDMV\x01\0\0\0".to_vec()), Format::Vmdk);
        assert_eq!(
            detect_bytes(b"# Disk DescriptorFile\nversion=1\n".to_vec()),
            Format::Vmdk
        );
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect_bytes(tar), Format::Ova);
        let mut fixed_vhd = vec![0u8; 4096];
        fixed_vhd[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(fixed_vhd), Format::Vhd);
        assert_eq!(detect_bytes(vec![0u8; 4096]), Format::Raw);
        assert_eq!(detect_bytes(Vec::new()), Format::Raw);
    }

    #[test]
    fn format_names_parse_as_users_type_them() {
        assert_eq!("QCOW2".parse::<Format>(), Ok(Format::Qcow2));
        assert_eq!("vpc".parse::<Format>(), Ok(Format::Vhd));
        assert!("iso".parse::<Format>().is_err());
    }

    #[test]
    fn relative_names_resolve_beside_the_naming_image() {
        assert_eq!(
            FileResolver::path_for("/a/b/top.qcow2", "base.raw"),
            Path::new("/a/b/base.raw")
        );
        assert_eq!(
            FileResolver::path_for("/a/b/top.qcow2", "/c/base.raw"),
            Path::new("/c/base.raw")
        );
        assert_eq!(
            FileResolver::path_for("top.qcow2", "base.raw"),
            Path::new("base.raw")
        );
    }
}

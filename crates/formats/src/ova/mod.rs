//! OVA packages: a tar archive of an OVF descriptor, an optional manifest and the disks.
//!
//! An OVA (DMTF DSP0243 "Open Virtualization Format Specification" §5.3 "Distribution as a
//! single file") is a plain tar archive. The descriptor comes first, the manifest and
//! certificate may follow, then the files the descriptor's `References` lists:
//!
//! ```text
//!   byte 0                                                                     end
//!   +------+----------+------+--------+------+-----------------+-----+---------+
//!   | hdr  | vm.ovf   | hdr  | vm.mf  | hdr  | disk1.vmdk      | ... | 2 zero  |
//!   | 512  | XML, pad | 512  | SHA    | 512  | a disk image in |     | blocks  |
//!   |      | to 512   |      | digests|      | its own format  |     |         |
//!   +------+----------+------+--------+------+-----------------+-----+---------+
//!           ^ DiskSection/Disk --fileRef--> References/File --href--> member
//! ```
//!
//! [`open`] walks the tar headers (see `tar.rs` for the header layout) without reading any
//! member's data, reads and parses the descriptor (`descriptor.rs`), checks it against the
//! manifest when there is one (`manifest.rs`), and gives back each disk as a window of the
//! archive ([`SliceSource`]) to open in its own format. Nothing is extracted or copied:
//! over object storage, reading a disk is ranged reads of the archive.
//!
//! What is checked: member names may not be absolute, climb out with `..`, hold a NUL or
//! repeat; a disk's file must be a member of the archive (no URLs, no paths outside it), of
//! the size the descriptor says, neither compressed nor split into chunks (both are
//! refused as unsupported, with advice). The descriptor is taken wherever it lies in the
//! archive, not only first as DSP0243 asks, and must be the only `.ovf` member.
//!
//! Not checked: the manifest's digests of the disks (checking them means reading every
//! byte of every disk before the import starts; the descriptor's digest is checked) and the
//! certificate's signature. A package whose disks were altered after it was signed reads
//! without complaint.

mod descriptor;
mod manifest;
mod tar;

use std::collections::HashMap;
use std::sync::Arc;

pub use descriptor::{MAX_CAPACITY, MAX_DESCRIPTOR_LEN, MAX_DISKS, MAX_FILES};
pub use manifest::MAX_MANIFEST_LEN;
pub use tar::{MAX_ENTRIES, MAX_EXTENDED_HEADER_LEN, MemberKind, OvaMember};

use self::descriptor::{DiskEntry, FileEntry};
use self::tar::Window;
use crate::{
    ByteSource, DiskReader, Extent, ExtentKind, Format, FormatError, MemorySource, OpenContext,
    Resolver, SliceSource, detect, open_at_depth,
};

/// The format's name in errors.
const FORMAT: &str = "OVA";

/// An OVA package, listed: its members and its disks.
#[derive(Debug)]
pub struct OvaArchive {
    /// The descriptor's member name (`*.ovf`).
    pub descriptor_name: String,
    /// The manifest's member name (`*.mf`), when the package has one. The descriptor's
    /// digest in it has been checked.
    pub manifest_name: Option<String>,
    /// Every member other than directories, in archive order.
    pub members: Vec<OvaMember>,
    /// The disks, in the order of the `Disk` elements in the descriptor's disk section
    /// (which is the order hypervisors attach them in, not the order of the archive).
    pub disks: Vec<OvaDisk>,
}

/// One disk of an OVA package.
#[derive(Debug, Clone)]
pub struct OvaDisk {
    /// The disk's `ovf:diskId`, which the virtual hardware refers to.
    pub disk_id: String,
    /// The `ovf:id` of the `File` holding the disk; `None` for a blank disk, which the
    /// descriptor declares with a capacity and no file.
    pub file_id: Option<String>,
    /// The file's `ovf:href`, as written; empty for a blank disk.
    pub href: String,
    /// The format the descriptor's `ovf:format` URL names, or `None` when it names none
    /// blockyard knows, in which case [`OvaDisk::open`] detects it.
    pub format: Option<Format>,
    /// The capacity the descriptor declares, in bytes; `None` when it leaves it to a
    /// deployment property. The disk image's own size is what [`OvaDisk::open`] reads.
    pub capacity: Option<u64>,
    /// The member's bytes: a window of the archive, named `<archive>:<member>`. Empty for a
    /// blank disk.
    pub source: Arc<dyn ByteSource>,
    archive: Arc<ArchiveIndex>,
}

impl OvaDisk {
    /// True when the descriptor declares the disk with no file: it reads as zeros.
    pub fn is_blank(&self) -> bool {
        self.file_id.is_none()
    }

    /// Opens the disk in its format. Files the disk names (a backing file, extent files)
    /// are looked up among the archive's members first, relative to the disk's member,
    /// and otherwise through `resolver`.
    ///
    /// The format comes from the disk's own magic number when it has one, since some
    /// writers label every disk as VMDK whatever it holds; otherwise from the descriptor,
    /// otherwise raw. A disk that is itself an OVA is refused.
    pub fn open(&self, resolver: &dyn Resolver) -> Result<Box<dyn DiskReader>, FormatError> {
        self.open_at(resolver, 0)
    }

    fn open_at(
        &self,
        resolver: &dyn Resolver,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        if self.is_blank() {
            return Ok(Box::new(BlankDisk {
                size: self.capacity.unwrap_or(0),
            }));
        }
        let format = match detect(&*self.source)? {
            Format::Ova => {
                return Err(FormatError::Unsupported {
                    format: FORMAT,
                    name: self.source.name().to_owned(),
                    feature: "an OVA archive inside an OVA archive".into(),
                    advice: "extract the inner archive with tar and import it on its own",
                });
            }
            Format::Raw => self.format.unwrap_or(Format::Raw),
            detected => detected,
        };
        let resolver = MemberResolver {
            index: &self.archive,
            outer: resolver,
        };
        open_at_depth(self.source.clone(), Some(format), &resolver, depth)
    }
}

/// Lists the OVA archive `source` and reads its descriptor, without reading any disk.
///
/// ```no_run
/// use std::sync::Arc;
/// use blockyard_formats::{FileResolver, FileSource, ova};
/// # fn main() -> Result<(), blockyard_formats::FormatError> {
/// let source = Arc::new(FileSource::open("appliance.ova".as_ref())?);
/// let archive = ova::open(source)?;
/// for disk in &archive.disks {
///     let reader = disk.open(&FileResolver)?;
///     println!("{} ({}): {} bytes", disk.disk_id, disk.href, reader.size());
/// }
/// # Ok(())
/// # }
/// ```
pub fn open(source: Arc<dyn ByteSource>) -> Result<OvaArchive, FormatError> {
    let archive_name = source.name().to_owned();
    let mut window = Window::new(&*source);
    let members = tar::list(&mut window)?;

    let descriptor_member = only_member(&members, ".ovf", "descriptor", &archive_name)?
        .ok_or_else(|| FormatError::Corrupt {
            format: FORMAT,
            name: archive_name.clone(),
            field: "descriptor",
            offset: 0,
            problem: format!(
                "the archive holds no .ovf descriptor; its members are {}",
                member_list(&members)
            ),
        })?;
    let manifest_member = only_member(&members, ".mf", "manifest", &archive_name)?;

    let descriptor_bytes = read_member(
        &mut window,
        &archive_name,
        descriptor_member,
        MAX_DESCRIPTOR_LEN,
        "descriptor",
    )?;
    if let Some(manifest_member) = manifest_member {
        let manifest_bytes = read_member(
            &mut window,
            &archive_name,
            manifest_member,
            MAX_MANIFEST_LEN,
            "manifest",
        )?;
        manifest::verify_descriptor(
            &manifest_bytes,
            &manifest_member.name,
            &archive_name,
            manifest_member.data_offset,
            &descriptor_bytes,
            &descriptor_member.name,
        )?;
    }
    let descriptor = descriptor::parse(
        &descriptor_bytes,
        &archive_name,
        &descriptor_member.name,
        descriptor_member.data_offset,
    )?;
    drop(window);

    let descriptor_name = descriptor_member.name.clone();
    let manifest_name = manifest_member.map(|member| member.name.clone());
    let index = Arc::new(ArchiveIndex {
        source,
        by_name: members
            .iter()
            .map(|member| (member.name.clone(), member.clone()))
            .collect(),
    });
    let disks = descriptor
        .disks
        .iter()
        .map(|disk| resolve_disk(disk, &descriptor.files, &index))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OvaArchive {
        descriptor_name,
        manifest_name,
        members,
        disks,
    })
}

/// Opens an OVA archive that holds exactly one disk, as that disk. The dispatcher
/// ([`crate::open`]) comes here; archives of several disks are refused, since each disk is a
/// snapshot of its own.
pub fn open_single(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let name = source.name().to_owned();
    let archive = open(source)?;
    match archive.disks.as_slice() {
        [disk] => disk.open_at(context.resolver, context.depth),
        [] => Err(FormatError::Corrupt {
            format: FORMAT,
            name,
            field: "DiskSection",
            offset: archive
                .members
                .iter()
                .find(|member| member.name == archive.descriptor_name)
                .map_or(0, |member| member.data_offset),
            problem: format!("the descriptor {} lists no disk", archive.descriptor_name),
        }),
        disks => Err(FormatError::Unsupported {
            format: FORMAT,
            name,
            feature: format!(
                "opening an archive of {} disks as a single disk",
                disks.len()
            ),
            advice: "import it with the OVA importer, which makes one snapshot per disk",
        }),
    }
}

/// The file member whose name ends with `suffix` (ASCII case ignored), refused when there
/// are several.
fn only_member<'a>(
    members: &'a [OvaMember],
    suffix: &str,
    field: &'static str,
    archive: &str,
) -> Result<Option<&'a OvaMember>, FormatError> {
    let mut matching = members.iter().filter(|member| {
        member.kind == MemberKind::File
            && member.name.len() >= suffix.len()
            && member.name.as_bytes()[member.name.len() - suffix.len()..]
                .eq_ignore_ascii_case(suffix.as_bytes())
    });
    let first = matching.next();
    if let (Some(first), Some(second)) = (first, matching.next()) {
        return Err(FormatError::Corrupt {
            format: FORMAT,
            name: archive.to_owned(),
            field,
            offset: second.header_offset,
            problem: format!(
                "the archive holds two {field}s, {} and {}; which one describes the package \
                 is ambiguous",
                first.name, second.name
            ),
        });
    }
    Ok(first)
}

/// The bytes of a small member (descriptor, manifest), refused above `limit` bytes.
fn read_member(
    window: &mut Window<'_>,
    archive: &str,
    member: &OvaMember,
    limit: u64,
    field: &'static str,
) -> Result<Vec<u8>, FormatError> {
    let too_big = || FormatError::Corrupt {
        format: FORMAT,
        name: archive.to_owned(),
        field,
        offset: member.header_offset.saturating_add(124),
        problem: format!(
            "{} is {} bytes, above the limit of {limit}",
            member.name, member.size
        ),
    };
    if member.size > limit {
        return Err(too_big());
    }
    let len = usize::try_from(member.size).map_err(|_| too_big())?;
    Ok(window.get(member.data_offset, len)?.to_vec())
}

fn member_list(members: &[OvaMember]) -> String {
    /// Members named in an error before the list is cut short.
    const SHOWN: usize = 8;
    if members.is_empty() {
        return "none".into();
    }
    let mut names: Vec<&str> = members
        .iter()
        .take(SHOWN)
        .map(|m| m.name.as_str())
        .collect();
    if members.len() > SHOWN {
        names.push("...");
    }
    names.join(", ")
}

/// The disk format an `ovf:format` URL names. Writers use the URLs of the formats'
/// specifications: VMware's `.../vmdk.html#streamOptimized`, the qcow URL
/// `.../qcow-image-format.html`, Microsoft's VHD specification (`bb676673`, `vhdspec`).
fn format_from_url(url: &str) -> Option<Format> {
    let url = url.to_ascii_lowercase();
    if url.contains("vmdk") {
        Some(Format::Vmdk)
    } else if url.contains("qcow") {
        Some(Format::Qcow2)
    } else if url.contains("vhdx") {
        Some(Format::Vhdx)
    } else if url.contains("vhd") || url.contains("bb676673") {
        Some(Format::Vhd)
    } else {
        None
    }
}

/// Matches a `Disk` to its `File` and its file to a member of the archive.
fn resolve_disk(
    disk: &DiskEntry,
    files: &[FileEntry],
    index: &Arc<ArchiveIndex>,
) -> Result<OvaDisk, FormatError> {
    let archive_name = index.source.name();
    let corrupt = |field: &'static str, offset: u64, problem: String| FormatError::Corrupt {
        format: FORMAT,
        name: archive_name.to_owned(),
        field,
        offset,
        problem,
    };
    let unsupported = |feature: String, advice: &'static str| FormatError::Unsupported {
        format: FORMAT,
        name: archive_name.to_owned(),
        feature,
        advice,
    };
    let id = &disk.disk_id;

    let Some(file_ref) = &disk.file_ref else {
        // DSP0243 §9.1: a disk without a file is blank, of its declared capacity.
        if disk.capacity.is_none() {
            let problem = format!("disk {id:?} has no file and no capacity in bytes");
            return Err(corrupt("Disk ovf:capacity", disk.offset, problem));
        }
        return Ok(OvaDisk {
            disk_id: id.clone(),
            file_id: None,
            href: String::new(),
            format: None,
            capacity: disk.capacity,
            source: Arc::new(MemorySource::new(
                format!("{archive_name}:{id}"),
                Vec::new(),
            )),
            archive: index.clone(),
        });
    };
    let Some(file) = files.iter().find(|file| &file.id == file_ref) else {
        let problem = format!("disk {id:?} names file {file_ref:?}, which References lacks");
        return Err(corrupt("Disk ovf:fileRef", disk.offset, problem));
    };
    let href = &file.href;

    if let Some(chunk_size) = &file.chunk_size {
        return Err(unsupported(
            format!("disk {id:?} split into chunks of {chunk_size} bytes (ovf:chunkSize)"),
            "re-export the appliance without chunking, or join the chunks into one file and \
             import that disk image",
        ));
    }
    if let Some(compression) = file
        .compression
        .as_deref()
        .filter(|method| !method.eq_ignore_ascii_case("identity"))
    {
        return Err(unsupported(
            format!("disk {id:?} compressed with {compression} (ovf:compression)"),
            "extract the archive with tar, decompress the disk file (gunzip) and import that \
             disk image",
        ));
    }
    let lower = href.to_ascii_lowercase();
    if lower.contains("://") || lower.starts_with("file:") {
        return Err(unsupported(
            format!("disk {id:?} stored outside the archive, at {href:?}"),
            "download the disk file and import it as a disk image",
        ));
    }

    let name = tar::normalize(href).map_err(|problem| {
        corrupt(
            "File ovf:href",
            file.offset,
            format!("file {:?}: {problem}", file.id),
        )
    })?;
    // DSP0243 hrefs are URL references, so spaces and the like may be percent-encoded.
    let decoded = percent_decode(href).and_then(|text| tar::normalize(&text).ok());
    let member = index
        .by_name
        .get(&name)
        .or_else(|| decoded.and_then(|decoded| index.by_name.get(&decoded)))
        .ok_or_else(|| {
            let problem = format!(
                "file {:?} is {href:?}, which is not in the archive",
                file.id
            );
            corrupt("File ovf:href", file.offset, problem)
        })?;
    if member.kind != MemberKind::File {
        let problem = format!("{href:?} is a {:?} member, not a file", member.kind);
        return Err(corrupt("File ovf:href", file.offset, problem));
    }
    if let Some(size) = file.size.filter(|&size| size != member.size) {
        let problem = format!(
            "file {href:?} is {size} bytes by the descriptor, {} in the archive",
            member.size
        );
        return Err(corrupt("File ovf:size", file.offset, problem));
    }

    Ok(OvaDisk {
        disk_id: id.clone(),
        file_id: Some(file.id.clone()),
        href: href.clone(),
        format: disk.format_url.as_deref().and_then(format_from_url),
        capacity: disk.capacity,
        source: index.member_source(member)?,
        archive: index.clone(),
    })
}

/// `%XX` escapes decoded; `None` when there are none, an escape is malformed, or the result
/// is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes.get(at + 1..at + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The archive and its members by name, shared by its disks to open what they name.
#[derive(Debug)]
struct ArchiveIndex {
    source: Arc<dyn ByteSource>,
    by_name: HashMap<String, OvaMember>,
}

impl ArchiveIndex {
    fn member_source(&self, member: &OvaMember) -> Result<Arc<dyn ByteSource>, FormatError> {
        let name = format!("{}:{}", self.source.name(), member.name);
        let slice = SliceSource::new(self.source.clone(), name, member.data_offset, member.size)?;
        Ok(Arc::new(slice))
    }

    /// The file member `name` means when written in the image `from`: relative to `from`'s
    /// directory when `from` is a member of this archive.
    fn lookup(&self, from: &str, name: &str) -> Option<&OvaMember> {
        let member = from
            .strip_prefix(self.source.name())
            .and_then(|rest| rest.strip_prefix(':'))?;
        let joined = match member.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_owned(),
        };
        let key = tar::normalize(&joined).ok()?;
        self.by_name
            .get(&key)
            .filter(|member| member.kind == MemberKind::File)
    }
}

/// Resolves the names a disk member writes to the archive's other members first.
struct MemberResolver<'a> {
    index: &'a ArchiveIndex,
    outer: &'a dyn Resolver,
}

impl Resolver for MemberResolver<'_> {
    fn open_file(&self, from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        match self.index.lookup(from, name) {
            Some(member) => self.index.member_source(member),
            None => self.outer.open_file(from, name),
        }
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        match self.index.lookup(from, name) {
            Some(member) => open_at_depth(self.index.member_source(member)?, format, self, depth),
            None => self.outer.open_backing(from, name, format, depth),
        }
    }
}

/// A disk the descriptor declares with no file: zeros of its capacity.
#[derive(Debug)]
struct BlankDisk {
    size: u64,
}

impl DiskReader for BlankDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        if offset >= self.size {
            return Err(FormatError::OutOfRange {
                offset,
                length: 0,
                size: self.size,
            });
        }
        Ok(Extent {
            offset,
            length: self.size - offset,
            kind: ExtentKind::Zero,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let length = buf.len() as u64;
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size: self.size,
            });
        }
        buf.fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_urls_name_the_formats_writers_use() {
        let vmdk = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
        assert_eq!(format_from_url(vmdk), Some(Format::Vmdk));
        let qcow = "http://www.gnome.org/~markmc/qcow-image-format.html";
        assert_eq!(format_from_url(qcow), Some(Format::Qcow2));
        let vhd = "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx";
        assert_eq!(format_from_url(vhd), Some(Format::Vhd));
        assert_eq!(format_from_url("urn:example:vhdx"), Some(Format::Vhdx));
        assert_eq!(format_from_url("http://example.com/raw"), None);
    }

    #[test]
    fn percent_escapes_decode_and_malformed_ones_do_not() {
        assert_eq!(
            percent_decode("disk%201.vmdk").as_deref(),
            Some("disk 1.vmdk")
        );
        assert_eq!(percent_decode("plain.vmdk"), None);
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn blank_disks_read_as_zeros_of_their_capacity() {
        let mut disk = BlankDisk { size: 8192 };
        let extent = disk.extent_at(100).expect("inside");
        assert_eq!((extent.offset, extent.length), (100, 8092));
        assert_eq!(extent.kind, ExtentKind::Zero);
        let mut buf = [1u8; 16];
        disk.read_at(8176, &mut buf).expect("inside");
        assert_eq!(buf, [0u8; 16]);
        assert!(disk.read_at(8180, &mut buf).is_err());
        assert!(disk.extent_at(8192).is_err());
    }
}

//! The OVF descriptor: which files the package holds and which of them are disks.
//!
//! Only two sections matter for reading disks (DSP0243 §7 "Envelope element", §9.1 "Disk
//! section"):
//!
//! ```text
//!   <Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="...same...">
//!     <References>
//!       <File ovf:id="file1" ovf:href="disk1.vmdk" ovf:size="68608"
//!             [ovf:compression="gzip"] [ovf:chunkSize="..."]/>
//!     </References>
//!     <DiskSection>
//!       <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="16"
//!             ovf:capacityAllocationUnits="byte * 2^30"
//!             ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#..."/>
//!     </DiskSection>
//!     <VirtualSystem> ... hardware, not read here ... </VirtualSystem>
//!   </Envelope>
//! ```
//!
//! Elements are matched by local name whatever their namespace, so OVF 0.9, 1.x and 2.x
//! descriptors all read; OVF 0.9's `<Section xsi:type="ovf:DiskSection_Type">` counts as a
//! disk section. Attributes are taken in the envelope's namespace first, then without one.

use std::collections::HashSet;

use roxmltree::{Document, Node, ParsingOptions};

use crate::FormatError;

/// Bytes of descriptor read into memory and parsed. Descriptors are a few KiB to a few
/// hundred KiB even for appliances with many disks and long EULAs.
pub const MAX_DESCRIPTOR_LEN: u64 = 8 * 1024 * 1024;
/// XML nodes (elements, attributes' text, text runs) parsed. Bounds memory for a descriptor
/// within [`MAX_DESCRIPTOR_LEN`] that is all tiny elements; real ones hold a few thousand.
const MAX_XML_NODES: u32 = 200_000;
/// `File` elements in `References`. Packages carry their disks, ISO images and NVRAM.
pub const MAX_FILES: usize = 1024;
/// `Disk` elements in the disk section. Hypervisors attach a few dozen disks at most.
pub const MAX_DISKS: usize = 256;
/// The largest disk capacity accepted, in bytes (2^56, 64 PiB). Far past any disk format
/// blockyard reads (VHDX stops at 64 TiB), and small enough that offsets within such a disk
/// never overflow.
pub const MAX_CAPACITY: u64 = 1 << 56;

/// The format's name in errors.
const FORMAT: &str = "OVA";
/// XML Schema instance namespace, for OVF 0.9's `xsi:type` section markers.
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// A `References/File` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileEntry {
    pub(super) id: String,
    pub(super) href: String,
    pub(super) size: Option<u64>,
    pub(super) compression: Option<String>,
    pub(super) chunk_size: Option<String>,
    /// Offset of the element in the archive, for errors.
    pub(super) offset: u64,
}

/// A `DiskSection/Disk` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DiskEntry {
    pub(super) disk_id: String,
    pub(super) file_ref: Option<String>,
    /// In bytes; `None` when the descriptor leaves it to a property (`${name}`) or omits it.
    pub(super) capacity: Option<u64>,
    pub(super) format_url: Option<String>,
    /// Offset of the element in the archive, for errors.
    pub(super) offset: u64,
}

/// What the descriptor says about files and disks, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Descriptor {
    pub(super) files: Vec<FileEntry>,
    pub(super) disks: Vec<DiskEntry>,
}

/// Where errors about the descriptor point: the archive, the member, and its offset.
struct Place<'a> {
    archive: &'a str,
    member: &'a str,
    base: u64,
}

impl Place<'_> {
    fn corrupt(&self, field: &'static str, at: usize, problem: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            format: FORMAT,
            name: self.archive.to_owned(),
            field,
            offset: self.base.saturating_add(at as u64),
            problem: format!("descriptor {}: {}", self.member, problem.into()),
        }
    }
}

/// Parses the descriptor `bytes`, the member `member` at offset `base` of `archive`.
pub(super) fn parse(
    bytes: &[u8],
    archive: &str,
    member: &str,
    base: u64,
) -> Result<Descriptor, FormatError> {
    let place = Place {
        archive,
        member,
        base,
    };
    // DSP0243 §5 requires UTF-8; a byte order mark is allowed and skipped.
    let (bytes, bom) = match bytes.strip_prefix(b"\xef\xbb\xbf") {
        Some(rest) => (rest, 3),
        None => (bytes, 0),
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| place.corrupt("descriptor", bom + e.valid_up_to(), "the XML is not UTF-8"))?;
    // No DTD: entity definitions are how XML documents blow up in memory.
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
    };
    let document = Document::parse_with_options(text, options)
        .map_err(|e| place.corrupt("descriptor", 0, format!("the XML does not parse: {e}")))?;
    let at = |node: Node<'_, '_>| bom + node.range().start;

    let root = document.root_element();
    if root.tag_name().name() != "Envelope" {
        return Err(place.corrupt(
            "Envelope",
            at(root),
            format!(
                "the root element is <{}>, not <Envelope>",
                root.tag_name().name()
            ),
        ));
    }
    let ovf = root.tag_name().namespace();

    let mut files = Vec::new();
    let mut disks = Vec::new();
    for section in root.children().filter(Node::is_element) {
        let name = section.tag_name().name();
        let disk_section = name == "DiskSection"
            || (name == "Section"
                && section
                    .attribute((XSI, "type"))
                    .is_some_and(|kind| kind.ends_with("DiskSection_Type")));
        if name == "References" {
            for file in element_children(section, "File") {
                if files.len() == MAX_FILES {
                    let problem = format!("References lists more than {MAX_FILES} files");
                    return Err(place.corrupt("References", at(section), problem));
                }
                files.push(file_entry(file, ovf, &place, at(file))?);
            }
        } else if disk_section {
            for disk in element_children(section, "Disk") {
                if disks.len() == MAX_DISKS {
                    let problem = format!("the disk section lists more than {MAX_DISKS} disks");
                    return Err(place.corrupt("DiskSection", at(section), problem));
                }
                disks.push(disk_entry(disk, ovf, &place, at(disk))?);
            }
        }
    }

    let mut ids = HashSet::new();
    for file in &files {
        if !ids.insert(file.id.as_str()) {
            let problem = format!("two File elements have the id {:?}", file.id);
            return Err(place.corrupt("File ovf:id", rel(&place, file.offset), problem));
        }
    }
    let mut ids = HashSet::new();
    for disk in &disks {
        if !ids.insert(disk.disk_id.as_str()) {
            let problem = format!("two Disk elements have the id {:?}", disk.disk_id);
            return Err(place.corrupt("Disk ovf:diskId", rel(&place, disk.offset), problem));
        }
    }
    Ok(Descriptor { files, disks })
}

/// An archive offset back as an offset within the descriptor, for [`Place::corrupt`].
fn rel(place: &Place<'_>, offset: u64) -> usize {
    usize::try_from(offset.saturating_sub(place.base)).unwrap_or(usize::MAX)
}

fn element_children<'a, 'input>(
    node: Node<'a, 'input>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children()
        .filter(move |child| child.is_element() && child.tag_name().name() == name)
}

/// An attribute in the OVF namespace, or without a namespace as some writers put them.
fn attribute<'a>(node: Node<'a, '_>, ovf: Option<&str>, name: &str) -> Option<&'a str> {
    ovf.and_then(|ns| node.attribute((ns, name)))
        .or_else(|| node.attribute(name))
}

fn file_entry(
    node: Node<'_, '_>,
    ovf: Option<&str>,
    place: &Place<'_>,
    at: usize,
) -> Result<FileEntry, FormatError> {
    let required = |field: &'static str, name: &str| {
        attribute(node, ovf, name)
            .map(str::to_owned)
            .ok_or_else(|| place.corrupt(field, at, "the File element lacks it"))
    };
    let id = required("File ovf:id", "id")?;
    let href = required("File ovf:href", "href")?;
    let size = attribute(node, ovf, "size")
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| {
                let problem = format!("file {id:?}: size {text:?} is not a whole number");
                place.corrupt("File ovf:size", at, problem)
            })
        })
        .transpose()?;
    Ok(FileEntry {
        size,
        compression: attribute(node, ovf, "compression").map(str::to_owned),
        chunk_size: attribute(node, ovf, "chunkSize").map(str::to_owned),
        offset: place.base.saturating_add(at as u64),
        id,
        href,
    })
}

fn disk_entry(
    node: Node<'_, '_>,
    ovf: Option<&str>,
    place: &Place<'_>,
    at: usize,
) -> Result<DiskEntry, FormatError> {
    let disk_id = attribute(node, ovf, "diskId")
        .map(str::to_owned)
        .ok_or_else(|| place.corrupt("Disk ovf:diskId", at, "the Disk element lacks it"))?;
    let units = attribute(node, ovf, "capacityAllocationUnits");
    let capacity = match attribute(node, ovf, "capacity") {
        None => None,
        // DSP0243 §9.1: a capacity may name a property set at deployment.
        Some(text) if text.trim_start().starts_with("${") => None,
        Some(text) => Some(capacity(text, units).map_err(|problem| {
            place.corrupt(
                "Disk ovf:capacity",
                at,
                format!("disk {disk_id:?}: {problem}"),
            )
        })?),
    };
    Ok(DiskEntry {
        file_ref: attribute(node, ovf, "fileRef").map(str::to_owned),
        format_url: attribute(node, ovf, "format").map(str::to_owned),
        offset: place.base.saturating_add(at as u64),
        capacity,
        disk_id,
    })
}

/// A capacity in bytes from `ovf:capacity` and `ovf:capacityAllocationUnits` (bytes when
/// absent), refused above [`MAX_CAPACITY`].
pub(super) fn capacity(value: &str, units: Option<&str>) -> Result<u64, String> {
    let count = value
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{value:?} is not a whole number"))?;
    let unit = units.map_or(Ok(1), allocation_unit)?;
    count
        .checked_mul(unit)
        .filter(|&bytes| bytes <= MAX_CAPACITY)
        .ok_or_else(|| {
            let units = units.unwrap_or("byte");
            format!("{count} × {units:?} is above the limit of {MAX_CAPACITY} bytes")
        })
}

/// Bytes in one allocation unit, written as a DSP0004 (CIM) programmatic unit: `byte`
/// times any number of factors, each a whole number or a power such as `2^30` or `10^9`.
pub(super) fn allocation_unit(text: &str) -> Result<u64, String> {
    let unknown = || format!("allocation units {text:?} are not bytes times whole numbers");
    let mut terms = text.split('*').map(str::trim);
    let base = terms.next().unwrap_or_default();
    if !base.eq_ignore_ascii_case("byte") && !base.eq_ignore_ascii_case("bytes") {
        return Err(unknown());
    }
    terms.try_fold(1u64, |unit, term| {
        let factor = match term.split_once('^') {
            Some((radix, exponent)) => {
                let radix = radix.trim().parse::<u64>().map_err(|_| unknown())?;
                let exponent = exponent.trim().parse::<u32>().map_err(|_| unknown())?;
                radix.checked_pow(exponent).ok_or_else(unknown)?
            }
            None => term.parse::<u64>().map_err(|_| unknown())?,
        };
        unit.checked_mul(factor).ok_or_else(unknown)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_units_read_powers_and_plain_factors() {
        assert_eq!(allocation_unit("byte"), Ok(1));
        assert_eq!(allocation_unit("byte * 2^30"), Ok(1 << 30));
        assert_eq!(allocation_unit("Bytes*10^6"), Ok(1_000_000));
        assert_eq!(allocation_unit("byte * 512"), Ok(512));
        assert!(allocation_unit("MegaBytes").is_err());
        assert!(allocation_unit("byte * 2^99").is_err());
        assert!(allocation_unit("byte * x").is_err());
    }

    #[test]
    fn capacity_multiplies_units_and_refuses_huge_disks() {
        assert_eq!(capacity("16", Some("byte * 2^30")), Ok(16 << 30));
        assert_eq!(capacity(" 1048576 ", None), Ok(1 << 20));
        assert!(capacity("1", Some("byte * 2^60")).is_err());
        assert!(capacity("-1", None).is_err());
    }

    #[test]
    fn descriptor_lists_files_and_disks_in_document_order() {
        let xml = br#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="f1" ovf:href="a.vmdk" ovf:size="10"/>
    <File ovf:id="f2" ovf:href="b.img"/>
  </References>
  <DiskSection>
    <Info>disks</Info>
    <Disk ovf:diskId="d2" ovf:fileRef="f2" ovf:capacity="${size}"/>
    <Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="2"
          ovf:capacityAllocationUnits="byte * 2^20"/>
  </DiskSection>
</Envelope>"#;
        let descriptor = parse(xml, "x.ova", "x.ovf", 512).expect("valid");
        let ids: Vec<_> = descriptor
            .disks
            .iter()
            .map(|d| d.disk_id.as_str())
            .collect();
        assert_eq!(ids, ["d2", "d1"]);
        assert_eq!(descriptor.disks[0].capacity, None);
        assert_eq!(descriptor.disks[1].capacity, Some(2 << 20));
        assert_eq!(descriptor.files[0].size, Some(10));
        assert_eq!(descriptor.files[1].href, "b.img");
    }

    #[test]
    fn descriptor_refuses_a_dtd_and_a_foreign_root() {
        let dtd = br#"<!DOCTYPE x [<!ENTITY a "aaaa">]><Envelope>&a;</Envelope>"#;
        let err = parse(dtd, "x.ova", "x.ovf", 0).expect_err("DTD");
        assert!(err.to_string().contains("descriptor"), "{err}");
        let err = parse(b"<Other/>", "x.ova", "x.ovf", 0).expect_err("root");
        assert!(err.to_string().contains("Envelope"), "{err}");
    }
}

//! The text descriptor: which files hold the disk, and what kind of disk it is.
//!
//! Virtual Disk Format 1.1 §"The Descriptor File". A descriptor is lines of text:
//!
//! ```text
//! # Disk DescriptorFile                   comment
//! version=1
//! CID=fffffffe                            content id, 8 hex digits
//! parentCID=ffffffff                      ffffffff: no parent; else a delta (child) disk
//! createType="twoGbMaxExtentSparse"
//! parentFileNameHint="base.vmdk"          delta disks only
//!
//! RW 4192256 SPARSE "disk-s001.vmdk"      access, sectors, type, file
//! RW 4192256 FLAT "disk-f002.vmdk" 0      flat extents add a sector offset in the file
//! RW 2048 ZERO                            zero extents name no file
//!
//! ddb.adapterType = "lsilogic"            disk database: geometry, adapter, uuid
//! ```
//!
//! The extents, in order, make the disk. The descriptor is a file of its own, or is
//! embedded in a monolithic sparse or stream-optimized extent at `descriptorOffset`.

use crate::FormatError;
use crate::vmdk::header::{FORMAT, SECTOR};

/// Largest descriptor, in bytes, whether a file of its own or embedded. A descriptor of a
/// 2 TiB disk cut into 2 GiB extents is about 50 KiB; 1 MiB leaves room for larger ones.
pub(crate) const MAX_DESCRIPTOR_LEN: u64 = 1 << 20;

/// Most extents a disk may have: one per 2 GiB of a 62 TB disk, the largest VMware makes.
/// Each one is an open file.
pub(crate) const MAX_EXTENTS: usize = 32 << 10;

/// Longest file name an extent line or `parentFileNameHint` may give, in bytes: Linux's
/// `PATH_MAX`.
pub(crate) const MAX_NAME_LEN: usize = 4096;

/// The content id meaning "no parent".
pub(crate) const NO_PARENT_CID: u32 = 0xffff_ffff;

/// How an extent stores its sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtentType {
    /// A hosted sparse or stream-optimized extent file ("SPARSE").
    Sparse,
    /// The sectors lie as they are in a file, from an offset ("FLAT", and ESX's "VMFS").
    Flat,
    /// The sectors read as zeros and are stored nowhere ("ZERO").
    Zero,
    /// Any other type: ESX delta extents, raw device mappings. The text as written.
    Other(String),
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtentLine {
    /// The access word: "RW", "RDONLY" or "NOACCESS".
    pub(crate) access: String,
    /// The extent's size in sectors.
    pub(crate) sectors: u64,
    /// Its type.
    pub(crate) kind: ExtentType,
    /// The file holding it, as written (relative to the descriptor); none for ZERO.
    pub(crate) file: Option<String>,
    /// For flat extents, the sector in the file where the extent starts.
    pub(crate) file_offset_sectors: u64,
    /// Byte offset of the line in the image file, for errors.
    pub(crate) at: u64,
}

/// What a descriptor says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// `createType`, unquoted.
    pub(crate) create_type: Option<String>,
    /// Byte offset of the `createType` line in the image file, for errors.
    pub(crate) create_type_at: u64,
    /// `parentCID`.
    pub(crate) parent_cid: Option<u32>,
    /// `parentFileNameHint`.
    pub(crate) parent_hint: Option<String>,
    /// Byte offset of the `parentCID` or hint line in the image file, for errors.
    pub(crate) parent_at: u64,
    /// The extent lines, in order.
    pub(crate) extents: Vec<ExtentLine>,
}

impl Descriptor {
    /// Whether the disk is a delta (child) of another, whose unallocated grains read from
    /// the parent.
    pub(crate) fn is_delta(&self) -> bool {
        self.parent_hint.is_some() || self.parent_cid.is_some_and(|cid| cid != NO_PARENT_CID)
    }

    /// Parses descriptor text. `bytes` came from offset `base` of the image `name`; an
    /// embedded descriptor ends at its first NUL byte.
    pub(crate) fn parse(bytes: &[u8], name: &str, base: u64) -> Result<Self, FormatError> {
        let corrupt = |field: &'static str, at: usize, problem: String| FormatError::Corrupt {
            format: FORMAT,
            name: name.to_owned(),
            field,
            offset: base.saturating_add(at as u64),
            problem,
        };
        if bytes.len() as u64 > MAX_DESCRIPTOR_LEN {
            return Err(corrupt(
                "descriptor",
                0,
                format!(
                    "{} bytes of text is above the limit of {MAX_DESCRIPTOR_LEN}",
                    bytes.len()
                ),
            ));
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| {
            corrupt(
                "descriptor",
                e.valid_up_to(),
                "the text is not UTF-8".to_owned(),
            )
        })?;

        let mut descriptor = Self::default();
        let mut line_start = 0usize;
        for raw_line in text.split('\n') {
            let at = line_start;
            line_start += raw_line.len() + 1;
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line_at = base.saturating_add(at as u64);
            if let Some(extent) = parse_extent_line(line, line_at, &corrupt, at)? {
                if descriptor.extents.len() >= MAX_EXTENTS {
                    return Err(corrupt(
                        "extent line",
                        at,
                        format!("more than {MAX_EXTENTS} extents"),
                    ));
                }
                descriptor.extents.push(extent);
                continue;
            }
            // Anything else is `key = value`; lines of neither kind are ignored, as VMware
            // and qemu ignore them.
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let value = unquote(value.trim());
            if key.eq_ignore_ascii_case("createType") {
                descriptor.create_type = Some(value.to_owned());
                descriptor.create_type_at = line_at;
            } else if key.eq_ignore_ascii_case("parentCID") {
                let cid = u32::from_str_radix(value, 16).map_err(|_| {
                    corrupt("parentCID", at, format!("{value:?} is not 8 hex digits"))
                })?;
                descriptor.parent_cid = Some(cid);
                descriptor.parent_at = line_at;
            } else if key.eq_ignore_ascii_case("parentFileNameHint") {
                if value.len() > MAX_NAME_LEN {
                    return Err(corrupt(
                        "parentFileNameHint",
                        at,
                        format!(
                            "a name of {} bytes is above the limit of {MAX_NAME_LEN}",
                            value.len()
                        ),
                    ));
                }
                descriptor.parent_hint = Some(value.to_owned());
                descriptor.parent_at = line_at;
            }
        }
        Ok(descriptor)
    }
}

/// Parses `line` as an extent line, or returns `None` when it is not one (it does not
/// start with an access word).
fn parse_extent_line(
    line: &str,
    line_at: u64,
    corrupt: &dyn Fn(&'static str, usize, String) -> FormatError,
    at: usize,
) -> Result<Option<ExtentLine>, FormatError> {
    let mut words = line.splitn(2, char::is_whitespace);
    let access = words.next().unwrap_or_default();
    if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
        return Ok(None);
    }
    let rest = words.next().unwrap_or_default().trim_start();
    let (sectors_text, rest) = split_word(rest);
    let (type_text, rest) = split_word(rest);
    let sectors: u64 = sectors_text.parse().map_err(|_| {
        corrupt(
            "extent line",
            at,
            format!("the size {sectors_text:?} is not a number of sectors"),
        )
    })?;
    if sectors.checked_mul(SECTOR).is_none() {
        return Err(corrupt(
            "extent line",
            at,
            format!("{sectors} sectors overflow a byte count"),
        ));
    }
    let kind = match type_text.to_ascii_uppercase().as_str() {
        "SPARSE" => ExtentType::Sparse,
        "FLAT" | "VMFS" => ExtentType::Flat,
        "ZERO" => ExtentType::Zero,
        "" => {
            return Err(corrupt(
                "extent line",
                at,
                "the line names no extent type".to_owned(),
            ));
        }
        _ => ExtentType::Other(type_text.to_owned()),
    };

    let rest = rest.trim_start();
    let (file, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let Some(close) = quoted.find('"') else {
            return Err(corrupt(
                "extent line",
                at,
                "the file name has no closing quote".to_owned(),
            ));
        };
        let name = &quoted[..close];
        if name.len() > MAX_NAME_LEN {
            return Err(corrupt(
                "extent line",
                at,
                format!(
                    "a file name of {} bytes is above the limit of {MAX_NAME_LEN}",
                    name.len()
                ),
            ));
        }
        (Some(name.to_owned()), &quoted[close + 1..])
    } else {
        (None, rest)
    };
    let (offset_text, rest) = split_word(rest.trim_start());
    let file_offset_sectors = if offset_text.is_empty() {
        0
    } else {
        let offset: u64 = offset_text.parse().map_err(|_| {
            corrupt(
                "extent line",
                at,
                format!("the file offset {offset_text:?} is not a number of sectors"),
            )
        })?;
        if offset.checked_mul(SECTOR).is_none() {
            return Err(corrupt(
                "extent line",
                at,
                format!("a file offset of {offset} sectors overflows a byte count"),
            ));
        }
        offset
    };
    if !rest.trim().is_empty() {
        return Err(corrupt(
            "extent line",
            at,
            format!("unexpected text {:?} after the extent", rest.trim()),
        ));
    }
    if file.is_none() && kind != ExtentType::Zero {
        return Err(corrupt(
            "extent line",
            at,
            format!("a {type_text} extent names no file"),
        ));
    }
    Ok(Some(ExtentLine {
        access: access.to_owned(),
        sectors,
        kind,
        file,
        file_offset_sectors,
        at: line_at,
    }))
}

/// The first whitespace-separated word of `text` and what follows it.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], &text[end..]),
        None => (text, ""),
    }
}

/// `value` without one pair of surrounding double quotes.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// What a written descriptor says about its disk.
#[derive(Debug, Clone)]
pub(crate) struct DescriptorText<'a> {
    /// `createType`: "monolithicSparse" or "streamOptimized".
    pub(crate) create_type: &'a str,
    /// The content id.
    pub(crate) cid: u32,
    /// The disk's size in sectors.
    pub(crate) sectors: u64,
    /// The name of the file the one extent line names: the image itself.
    pub(crate) file_name: &'a str,
    /// The disk's 16-byte uuid.
    pub(crate) uuid: [u8; 16],
}

/// Heads of the geometry written for an LSI Logic SCSI disk, as VMware writes it.
const SCSI_HEADS: u64 = 255;
/// Sectors per track of that geometry.
const SCSI_SECTORS_PER_TRACK: u64 = 63;

impl DescriptorText<'_> {
    /// The descriptor text of a one-extent sparse disk on an LSI Logic SCSI adapter.
    pub(crate) fn render(&self) -> String {
        let cylinders = (self.sectors / (SCSI_HEADS * SCSI_SECTORS_PER_TRACK)).max(1);
        let uuid = self
            .uuid
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let separator = match i {
                    0 => "",
                    8 => "-",
                    _ => " ",
                };
                format!("{separator}{b:02x}")
            })
            .collect::<String>();
        format!(
            "# Disk DescriptorFile\n\
             version=1\n\
             encoding=\"UTF-8\"\n\
             CID={cid:08x}\n\
             parentCID=ffffffff\n\
             createType=\"{create_type}\"\n\
             \n\
             # Extent description\n\
             RW {sectors} SPARSE \"{file}\"\n\
             \n\
             # The Disk Data Base\n\
             #DDB\n\
             \n\
             ddb.virtualHWVersion = \"4\"\n\
             ddb.adapterType = \"lsilogic\"\n\
             ddb.geometry.cylinders = \"{cylinders}\"\n\
             ddb.geometry.heads = \"{SCSI_HEADS}\"\n\
             ddb.geometry.sectors = \"{SCSI_SECTORS_PER_TRACK}\"\n\
             ddb.uuid = \"{uuid}\"\n",
            cid = self.cid,
            create_type = self.create_type,
            sectors = self.sectors,
            file = self.file_name,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Descriptor, FormatError> {
        Descriptor::parse(text.as_bytes(), "d.vmdk", 0)
    }

    #[test]
    fn extent_lines_of_every_kind_parse() {
        let descriptor = parse(
            "# Disk DescriptorFile\r\nversion=1\r\nCID=12345678\r\nparentCID=ffffffff\r\n\
             createType=\"twoGbMaxExtentFlat\"\r\n\
             RW 100 FLAT \"a b-f001.vmdk\" 7\r\n\
             RDONLY 50 SPARSE \"c.vmdk\"\r\n\
             RW 8 ZERO\r\n\
             NOACCESS 1 VMFSSPARSE \"d.vmdk\"\r\n",
        )
        .expect("valid");
        assert_eq!(
            descriptor.create_type.as_deref(),
            Some("twoGbMaxExtentFlat")
        );
        assert!(!descriptor.is_delta());
        let kinds: Vec<_> = descriptor.extents.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                ExtentType::Flat,
                ExtentType::Sparse,
                ExtentType::Zero,
                ExtentType::Other("VMFSSPARSE".into())
            ]
        );
        let flat = &descriptor.extents[0];
        assert_eq!(flat.file.as_deref(), Some("a b-f001.vmdk"));
        assert_eq!((flat.sectors, flat.file_offset_sectors), (100, 7));
        assert_eq!(descriptor.extents[2].file, None);
    }

    #[test]
    fn an_unquoted_create_type_and_a_parent_are_read() {
        let descriptor = parse(
            "createType=streamOptimized\nparentCID=0000abcd\nparentFileNameHint=\"p.vmdk\"\n",
        )
        .expect("valid");
        assert_eq!(descriptor.create_type.as_deref(), Some("streamOptimized"));
        assert_eq!(descriptor.parent_cid, Some(0xabcd));
        assert!(descriptor.is_delta());
    }

    #[test]
    fn an_embedded_descriptor_ends_at_its_first_nul() {
        let mut bytes = b"createType=\"monolithicSparse\"\n".to_vec();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(b"RW 1 FLAT \"x\"\n");
        let descriptor = Descriptor::parse(&bytes, "d", 512).expect("valid");
        assert!(descriptor.extents.is_empty());
    }

    #[test]
    fn malformed_extent_lines_are_refused_with_their_offset() {
        for (text, problem) in [
            ("RW x SPARSE \"a\"\n", "not a number"),
            ("RW 36028797018963968 FLAT \"a\"\n", "overflow"),
            ("RW 1 FLAT \"a\n", "closing quote"),
            ("RW 1 FLAT\n", "names no file"),
            ("RW 1 FLAT \"a\" 1 2\n", "unexpected text"),
            ("RW 1\n", "no extent type"),
        ] {
            let text = format!("version=1\n{text}");
            let err = parse(&text).expect_err(text.as_str());
            let message = err.to_string();
            assert!(
                message.contains("extent line") && message.contains(problem),
                "{message}"
            );
            assert!(
                matches!(err, FormatError::Corrupt { offset: 10, .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn too_many_extents_are_refused() {
        let text = "RW 1 ZERO\n".repeat(MAX_EXTENTS + 1);
        let err = parse(&text).expect_err("too many");
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn rendered_descriptors_parse_back() {
        let text = DescriptorText {
            create_type: "streamOptimized",
            cid: 0x0102_0304,
            sectors: 4096,
            file_name: "out.vmdk",
            uuid: [0xab; 16],
        }
        .render();
        let descriptor = parse(&text).expect("valid");
        assert_eq!(descriptor.create_type.as_deref(), Some("streamOptimized"));
        assert_eq!(descriptor.extents.len(), 1);
        assert_eq!(descriptor.extents[0].sectors, 4096);
        assert!(text.contains("CID=01020304"));
        assert!(text.contains("ddb.uuid = \"ab ab ab ab ab ab ab ab-ab ab"));
    }
}

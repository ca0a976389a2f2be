//! Listing a tar archive: where each member's bytes lie, found from its headers alone.
//!
//! Headers are parsed from 512-byte slices; member data is never read except for the small
//! metadata members (pax extended headers, GNU long names) that describe the next member.
//! Reads go through a [`Window`] that fetches [`READ_AHEAD`] bytes at a time, so the
//! descriptor, the manifest and their headers at the front of an OVA come in one read.
//!
//! Three dialects are read (POSIX.1-1988 ustar, GNU, POSIX.1-2001 pax), and the old v7
//! header they all extend:
//!
//! ```text
//!   offset  size  field      notes
//!        0   100  name       NUL-terminated unless all 100 bytes are used
//!      100     8  mode       ignored
//!      108    16  uid, gid   ignored
//!      124    12  size       octal, or base-256 when the first byte has its top bit set
//!      136    12  mtime      ignored
//!      148     8  chksum     octal sum of the header's bytes, this field counted as spaces
//!      156     1  typeflag   '0'/NUL file, '1'/'2' link, '5' directory, 'x'/'g' pax,
//!                            'L'/'K' GNU long name/link, 'S' GNU sparse, 'M' continuation
//!      157   100  linkname   ignored
//!      257     8  magic      "ustar\0" + "00" (POSIX) or "ustar  \0" (GNU)
//!      345   155  prefix     POSIX only: directory part of a long name
//! ```

use std::collections::HashMap;

use crate::fields::Fields;
use crate::{ByteSource, FormatError};

/// Bytes in a tar header and the unit member data is padded to (POSIX.1 "ustar Interchange
/// Format": the archive is a series of 512-byte blocks).
pub(super) const BLOCK: u64 = BLOCK_LEN as u64;
/// [`BLOCK`] as a buffer length.
const BLOCK_LEN: usize = 512;
/// Bytes read at a time while walking headers. One read takes in the first member's header,
/// a typical descriptor (tens of KiB) and the manifest after it; over object storage one
/// 64 KiB request costs the same as a 512-byte one.
pub(super) const READ_AHEAD: usize = 64 * 1024;
/// Headers walked, counting pax and GNU metadata entries. An OVA holds a descriptor, a
/// manifest, a certificate and a few disks; each header costs a ranged read, so thousands
/// of them only make opening slow.
pub const MAX_ENTRIES: usize = 4096;
/// Bytes of a pax extended header or a GNU long name, which are read into memory. Real
/// ones hold a path and a few numbers, well under 1 KiB.
pub const MAX_EXTENDED_HEADER_LEN: u64 = 64 * 1024;

/// The format's name in errors.
const FORMAT: &str = "OVA";

/// What a member of the archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file: its bytes follow its header.
    File,
    /// A hard or symbolic link, which holds no bytes of its own.
    Link,
    /// Anything else that is not a directory: a device, a FIFO, an unknown type.
    Other,
}

/// A member of an OVA archive: a name and the window of the archive holding its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaMember {
    /// The member's path in the archive, with `./` prefixes and empty components removed.
    pub name: String,
    /// Offset in the archive of the member's own header (after any pax or GNU header).
    pub header_offset: u64,
    /// Offset in the archive of the member's first byte.
    pub data_offset: u64,
    /// The member's length in bytes.
    pub size: u64,
    /// What the member is; only [`MemberKind::File`] members can be disks.
    pub kind: MemberKind,
}

/// Reads of the archive, served from the last [`READ_AHEAD`]-byte window where they fit.
#[derive(Debug)]
pub(super) struct Window<'a> {
    source: &'a dyn ByteSource,
    start: u64,
    bytes: Vec<u8>,
}

impl<'a> Window<'a> {
    pub(super) fn new(source: &'a dyn ByteSource) -> Self {
        Self {
            source,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// The `len` bytes at `offset`, which the caller has checked lie within the source.
    pub(super) fn get(&mut self, offset: u64, len: usize) -> Result<&[u8], FormatError> {
        let cached_end = self.start.saturating_add(self.bytes.len() as u64);
        let fits = offset >= self.start && offset.saturating_add(len as u64) <= cached_end;
        if !fits {
            let left = self.source.len().saturating_sub(offset);
            let ahead = usize::try_from(left).unwrap_or(usize::MAX).min(READ_AHEAD);
            self.bytes = self.source.read_vec(offset, len.max(ahead))?;
            self.start = offset;
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        self.bytes
            .get(from..from.saturating_add(len))
            .ok_or_else(|| FormatError::Truncated {
                name: self.source.name().to_owned(),
                end: cached_end,
                wanted: offset.saturating_add(len as u64),
            })
    }
}

/// What a header's typeflag says the entry is.
enum EntryType {
    Member(MemberKind),
    Directory,
    PaxLocal,
    PaxGlobal,
    GnuLongName,
    GnuLongLink,
}

/// Names and sizes that pax and GNU headers set for the member after them.
#[derive(Default)]
struct Pending {
    pax_path: Option<String>,
    pax_size: Option<u64>,
    long_name: Option<String>,
}

/// Lists every member of the tar archive `source`, in archive order. Directories are left
/// out. Fails on a damaged header, a member running past the end of the archive, an unsafe
/// or repeated name, or a feature that would make the offsets wrong (GNU sparse files,
/// multi-volume archives).
pub(super) fn list(window: &mut Window<'_>) -> Result<Vec<OvaMember>, FormatError> {
    let source = window.source;
    let name = source.name().to_owned();
    let len = source.len();
    let mut members = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut pending = Pending::default();
    let mut offset = 0u64;
    let mut entries = 0usize;

    loop {
        // An archive that stops at a block boundary without its two zero blocks is taken as
        // ended: some writers leave them out. A partial block is damage.
        if offset >= len {
            return Ok(members);
        }
        if len - offset < BLOCK {
            let tail = Fields::new(&[], FORMAT, &name, offset);
            return Err(tail.corrupt(
                "header",
                0,
                format!("the archive ends {} bytes into a tar header", len - offset),
            ));
        }
        let mut block = [0u8; BLOCK_LEN];
        block.copy_from_slice(window.get(offset, BLOCK_LEN)?);
        if block.iter().all(|&b| b == 0) {
            return Ok(members);
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            let at_limit = Fields::new(&[], FORMAT, &name, offset);
            return Err(at_limit.corrupt(
                "header",
                0,
                format!("the archive holds more than {MAX_ENTRIES} entries"),
            ));
        }

        let header = Fields::new(&block, FORMAT, &name, offset);
        check_checksum(&header)?;
        let entry = entry_type(&header, &name)?;
        let header_size = number(&header, "size", 124, 12)?;
        let data_offset = offset + BLOCK;

        // Metadata entries describe the member after them and are read here.
        let size = match entry {
            EntryType::Member(_) | EntryType::Directory => {
                pending.pax_size.take().unwrap_or(header_size)
            }
            _ => header_size,
        };
        let data_end = data_offset.checked_add(size).filter(|&end| end <= len);
        let Some(data_end) = data_end else {
            return Err(header.corrupt(
                "size",
                124,
                format!(
                    "a member of {size} bytes from byte {data_offset} runs past the end of \
                     the archive at byte {len}; the archive is truncated or damaged"
                ),
            ));
        };
        let extended = matches!(
            entry,
            EntryType::PaxLocal | EntryType::PaxGlobal | EntryType::GnuLongName
        );
        if extended && size > MAX_EXTENDED_HEADER_LEN {
            return Err(header.corrupt(
                "size",
                124,
                format!(
                    "an extended header of {size} bytes is above the limit of \
                     {MAX_EXTENDED_HEADER_LEN}"
                ),
            ));
        }
        let data = |window: &mut Window<'_>| -> Result<Vec<u8>, FormatError> {
            // size is at most MAX_EXTENDED_HEADER_LEN here, checked above.
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            Ok(window.get(data_offset, size)?.to_vec())
        };
        match entry {
            EntryType::PaxLocal => {
                let records = data(window)?;
                parse_pax(&records, &header, &name, &mut pending)?;
            }
            EntryType::GnuLongName => {
                let text = data(window)?;
                pending.long_name = Some(long_name(&text, &header)?);
            }
            // A global header sets defaults for every later member; the keys that matter
            // here (path, size) make no sense globally, and pax readers ignore them there.
            EntryType::PaxGlobal | EntryType::GnuLongLink => {}
            EntryType::Directory => pending = Pending::default(),
            EntryType::Member(mut kind) => {
                let raw = match (pending.pax_path.take(), pending.long_name.take()) {
                    (Some(path), _) | (None, Some(path)) => path,
                    (None, None) => header_name(&header)?,
                };
                // v7 archives mark directories by a trailing slash on a file entry.
                if kind == MemberKind::File && raw.ends_with('/') && size == 0 {
                    kind = MemberKind::Other;
                }
                let member_name =
                    normalize(&raw).map_err(|problem| header.corrupt("name", 0, problem))?;
                if member_name.is_empty() {
                    if kind == MemberKind::File {
                        return Err(header.corrupt("name", 0, "a file member has no name"));
                    }
                } else {
                    if let Some(first) = seen.insert(member_name.clone(), offset) {
                        return Err(header.corrupt(
                            "name",
                            0,
                            format!(
                                "member {member_name:?} appears twice, also at byte {first}; \
                                 which copy is meant is ambiguous"
                            ),
                        ));
                    }
                    members.push(OvaMember {
                        name: member_name,
                        header_offset: offset,
                        data_offset,
                        size,
                        kind,
                    });
                }
            }
        }

        // The next header follows the data, padded to a whole block. Padding missing at the
        // very end leaves the offset past the end, which ends the walk above.
        offset = data_end.checked_next_multiple_of(BLOCK).unwrap_or(u64::MAX);
    }
}

/// Checks the header checksum: the sum of its bytes with the checksum field read as eight
/// spaces. Historic writers summed signed bytes; either sum is accepted.
fn check_checksum(header: &Fields<'_>) -> Result<(), FormatError> {
    let stored = number(header, "chksum", 148, 8)?;
    let bytes = header.bytes();
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (at, &byte) in bytes.iter().enumerate() {
        let byte = if (148..156).contains(&at) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(byte.cast_signed());
    }
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(header.corrupt(
            "chksum",
            148,
            format!(
                "the header's bytes sum to {unsigned}, not {stored}; this is not a tar \
                 header, or it is damaged"
            ),
        ));
    }
    Ok(())
}

fn entry_type(header: &Fields<'_>, archive: &str) -> Result<EntryType, FormatError> {
    let flag = header.array::<1>("typeflag", 156)?[0];
    Ok(match flag {
        // '7' is a contiguous file, which POSIX says to read as a regular file.
        b'0' | 0 | b'7' => EntryType::Member(MemberKind::File),
        b'1' | b'2' => EntryType::Member(MemberKind::Link),
        b'5' => EntryType::Directory,
        b'x' => EntryType::PaxLocal,
        b'g' => EntryType::PaxGlobal,
        b'L' => EntryType::GnuLongName,
        b'K' => EntryType::GnuLongLink,
        b'S' => return Err(unsupported(archive, header, "a GNU sparse member")),
        b'M' => {
            let feature = "a member continued from another volume";
            return Err(unsupported(archive, header, feature));
        }
        _ => EntryType::Member(MemberKind::Other),
    })
}

fn unsupported(archive: &str, header: &Fields<'_>, feature: &str) -> FormatError {
    FormatError::Unsupported {
        format: FORMAT,
        name: archive.to_owned(),
        feature: format!(
            "{feature} ({:?}, header at byte {})",
            header_name(header).unwrap_or_default(),
            header.offset_of(0)
        ),
        advice: "re-create the archive with plain `tar --format=ustar -cf`, without --sparse \
                 or --multi-volume",
    }
}

/// A numeric header field: octal digits padded with spaces or NULs, or GNU's base-256 form
/// (first byte 0x80, the rest a big-endian number) for values octal cannot hold.
fn number(
    header: &Fields<'_>,
    field: &'static str,
    at: usize,
    len: usize,
) -> Result<u64, FormatError> {
    let bytes = header.slice(field, at, len)?;
    let first = bytes.first().copied().unwrap_or(0);
    if first & 0x80 != 0 {
        if first != 0x80 {
            return Err(header.corrupt(field, at, "a negative or oversized base-256 number"));
        }
        return bytes[1..]
            .iter()
            .try_fold(0u64, |value, &byte| {
                value.checked_mul(256)?.checked_add(u64::from(byte))
            })
            .ok_or_else(|| header.corrupt(field, at, "the base-256 number is above 2^64"));
    }

    let text = bytes.trim_ascii_start();
    let digits = text
        .iter()
        .take_while(|b| (b'0'..=b'7').contains(b))
        .count();
    if text[digits..].iter().any(|&b| b != 0 && b != b' ') {
        let shown = String::from_utf8_lossy(bytes);
        return Err(header.corrupt(field, at, format!("{shown:?} is not an octal number")));
    }
    text[..digits]
        .iter()
        .try_fold(0u64, |value, &digit| {
            value.checked_mul(8)?.checked_add(u64::from(digit - b'0'))
        })
        .ok_or_else(|| header.corrupt(field, at, "the octal number is above 2^64"))
}

/// The name from the header itself: POSIX ustar headers split long names into a prefix
/// (bytes 345..500) and the name (bytes 0..100); GNU and v7 headers use the name alone.
fn header_name(header: &Fields<'_>) -> Result<String, FormatError> {
    let name = until_nul(header.slice("name", 0, 100)?);
    let posix = header.slice("magic", 257, 8)? == b"ustar\x0000";
    let prefix = until_nul(header.slice("prefix", 345, 155)?);
    let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
    if posix && !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    Ok(String::from_utf8_lossy(&full).into_owned())
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// A GNU long name: the name, a NUL, and block padding. A NUL inside the name would hide
/// its end from tools that read it as a C string, so it is refused.
fn long_name(text: &[u8], header: &Fields<'_>) -> Result<String, FormatError> {
    let name = until_nul(text);
    if text[name.len()..].iter().any(|&b| b != 0) {
        return Err(header.corrupt(
            "name",
            0,
            format!(
                "the GNU long name {:?} holds a NUL byte",
                String::from_utf8_lossy(text)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// Reads the records of a pax extended header (POSIX.1-2001 "pax Extended Header"): each is
/// `"<length> <key>=<value>\n"`, the length counting the whole record in decimal.
fn parse_pax(
    records: &[u8],
    header: &Fields<'_>,
    archive: &str,
    pending: &mut Pending,
) -> Result<(), FormatError> {
    let bad = |problem: String| header.corrupt("pax extended header", 512, problem);
    let mut rest = records;
    while !rest.is_empty() {
        // Some writers pad the data with NULs; nothing follows them.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("a record has no length".into()))?;
        let length = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|digits| digits.parse::<usize>().ok())
            .filter(|&length| length > space + 1 && length <= rest.len())
            .ok_or_else(|| {
                let shown = String::from_utf8_lossy(&rest[..space]);
                bad(format!("record length {shown:?} does not fit the header"))
            })?;
        let record = &rest[space + 1..length];
        rest = &rest[length..];

        let Some(body) = record.strip_suffix(b"\n") else {
            return Err(bad("a record does not end with a newline".into()));
        };
        let equals = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("a record has no '='".into()))?;
        let (key, value) = (&body[..equals], &body[equals + 1..]);
        match key {
            b"path" => {
                if value.contains(&0) {
                    let shown = String::from_utf8_lossy(value);
                    return Err(header.corrupt(
                        "name",
                        0,
                        format!("the pax path {shown:?} holds a NUL byte"),
                    ));
                }
                pending.pax_path = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|digits| digits.parse::<u64>().ok())
                    .ok_or_else(|| {
                        let shown = String::from_utf8_lossy(value);
                        bad(format!("size {shown:?} is not a decimal number"))
                    })?;
                pending.pax_size = Some(size);
            }
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(unsupported(
                    archive,
                    header,
                    "a GNU sparse member (pax format)",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A member name made canonical: `./` and empty components dropped. Absolute names, `..`
/// components and NUL bytes are refused, since tools extracting the archive would write
/// outside the directory they extract into, or read a different name than this code does.
/// Backslashes count as separators for the `..` check, as Windows tools read them so.
pub(super) fn normalize(raw: &str) -> Result<String, String> {
    if raw.contains('\0') {
        return Err(format!("member name {raw:?} holds a NUL byte"));
    }
    let bytes = raw.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if raw.starts_with('/') || raw.starts_with('\\') || drive {
        return Err(format!("member name {raw:?} is an absolute path"));
    }
    if raw.split(['/', '\\']).any(|part| part == "..") {
        return Err(format!(
            "member name {raw:?} climbs out of the archive with '..'"
        ));
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_dot_prefixes_and_refuse_escapes() {
        assert_eq!(normalize("./a//b/./c.vmdk").as_deref(), Ok("a/b/c.vmdk"));
        assert_eq!(normalize("./").as_deref(), Ok(""));
        assert!(normalize("../x").is_err());
        assert!(normalize("a/../../x").is_err());
        assert!(normalize("a\\..\\x").is_err());
        assert!(normalize("/etc/passwd").is_err());
        assert!(normalize("C:\\x").is_err());
        assert!(normalize("a\0b").is_err());
    }

    #[test]
    fn numbers_read_octal_with_padding_and_base_256() {
        let mut block = [0u8; 24];
        block[..12].copy_from_slice(b" 0000017777\0");
        block[12] = 0x80;
        block[23] = 0x05;
        block[22] = 0x01;
        let fields = Fields::new(&block, FORMAT, "t", 0);
        assert_eq!(number(&fields, "size", 0, 12).expect("octal"), 0o17777);
        assert_eq!(number(&fields, "size", 12, 12).expect("base-256"), 0x105);

        let bad = *b"12345678x\0\0\0";
        let fields = Fields::new(&bad, FORMAT, "t", 0);
        let err = number(&fields, "size", 0, 12).expect_err("not octal");
        assert!(err.to_string().contains("size"), "{err}");
    }

    #[test]
    fn pax_records_set_path_and_size_and_refuse_bad_lengths() {
        let header = [0u8; 512];
        let fields = Fields::new(&header, FORMAT, "t", 0);
        let mut pending = Pending::default();
        parse_pax(
            b"17 path=a/b.vmdk\n12 size=100\n",
            &fields,
            "t",
            &mut pending,
        )
        .expect("valid");
        assert_eq!(pending.pax_path.as_deref(), Some("a/b.vmdk"));
        assert_eq!(pending.pax_size, Some(100));

        for bad in [
            &b"99 path=x\n"[..],
            b"3 path=x\n",
            b"nolength",
            b"9 path=x\0",
        ] {
            let err = parse_pax(bad, &fields, "t", &mut Pending::default()).expect_err("bad");
            assert!(err.to_string().contains("pax"), "{err}");
        }
    }
}

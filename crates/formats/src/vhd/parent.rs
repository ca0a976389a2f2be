//! Finding the parent of a differencing disk (spec "Implementing a Differencing Hard Disk").
//!
//! A differencing disk names its parent up to nine ways: eight parent locator entries, each
//! pointing at data elsewhere in the file, and the parent unicode name in the dynamic
//! header. The names are tried in this order, and the first that opens is the parent:
//!
//! 1. `W2ru`: a Windows path relative to the child, UTF-16 little-endian;
//! 2. `Wi2r`: the same, in the deprecated single-byte form;
//! 3. `W2ku`: an absolute Windows path, UTF-16 little-endian;
//! 4. `Wi2k`: the same, deprecated single-byte form;
//! 5. the parent unicode name, UTF-16 big-endian;
//! 6. the last component of each absolute name, beside the child.
//!
//! Backslashes become slashes, so `.\base.vhd` opens `base.vhd` beside the child. An
//! absolute name (`C:\VMs\base.vhd`) rarely exists on the machine reading the image; the
//! last step finds a parent copied beside its child. Only a name that cannot be opened
//! moves on to the next: a parent that opens but is corrupt is an error, not a reason to
//! try another file.
//!
//! Mac locators (`Mac `, `MacX`) are skipped. The parent's unique id and time stamp, which
//! the header records, are not compared with the parent found, because the resolver may
//! hand back any disk (a snapshot standing in for the file); a wrong parent with the right
//! name reads as that parent.

use super::MAX_LOCATOR_LEN;
use super::header::{DynamicHeader, PARENT_NAME_LEN, ParentLocator};
use crate::fields::Fields;
use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// How a locator's data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf16Le,
    SingleByte,
}

/// The platform codes read, in the order they are tried, with whether each is absolute.
const PLATFORMS: [(&[u8; 4], Encoding, bool); 4] = [
    (b"W2ru", Encoding::Utf16Le, false),
    (b"Wi2r", Encoding::SingleByte, false),
    (b"W2ku", Encoding::Utf16Le, true),
    (b"Wi2k", Encoding::SingleByte, true),
];

/// The names the differencing disk `source` gives its parent, most trusted first, without
/// repeats. `data_end` is where the file's structures end (the trailing footer).
pub(super) fn parent_names(
    source: &dyn ByteSource,
    header: &DynamicHeader,
    header_offset: u64,
    data_end: u64,
) -> Result<Vec<String>, FormatError> {
    let name = source.name();
    let header_fields = Fields::new(&[], "VHD", name, header_offset);
    let mut names: Vec<String> = Vec::new();
    let mut absolute: Vec<String> = Vec::new();

    for (code, encoding, is_absolute) in PLATFORMS {
        for locator in header.locators.iter().filter(|l| &l.code == code) {
            let Some(text) = read_locator(source, &header_fields, locator, encoding, data_end)?
            else {
                continue;
            };
            let path = windows_to_slashes(&text);
            if is_absolute {
                absolute.push(path.clone());
            }
            push_unique(&mut names, path);
        }
    }

    let parent_name = decode_parent_name(&header.parent_name).ok_or_else(|| {
        header_fields.corrupt(
            "parent unicode name",
            64,
            "not UTF-16 big-endian text".to_owned(),
        )
    })?;
    if !parent_name.is_empty() {
        let path = windows_to_slashes(&parent_name);
        absolute.push(path.clone());
        push_unique(&mut names, path);
    }
    for path in absolute {
        if let Some(last) = path.rsplit('/').next().filter(|last| !last.is_empty()) {
            push_unique(&mut names, last.to_owned());
        }
    }
    Ok(names)
}

/// Opens the first of `names` that can be opened, as the parent of `from`.
pub(super) fn open_parent(
    from: &str,
    names: &[String],
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let mut first_error = None;
    for name in names {
        match context.open_backing(from, name, None) {
            Ok(disk) => return Ok(disk),
            Err(err) if cannot_be_found(&err) => {
                first_error.get_or_insert(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(first_error.unwrap_or_else(|| FormatError::Unsupported {
        format: "VHD",
        name: from.to_owned(),
        feature: "a differencing disk whose parent is named only by Mac locators, or not \
                  at all"
            .to_owned(),
        advice: "merge it into its parent with the tool that made it, or convert it to raw",
    }))
}

/// Whether opening a parent failed because the file is not there (or cannot be opened),
/// so that the next name is worth a try.
fn cannot_be_found(err: &FormatError) -> bool {
    match err {
        FormatError::Reference { source, .. } => {
            matches!(
                **source,
                FormatError::Open { .. } | FormatError::NotAnImage { .. }
            )
        }
        FormatError::Open { .. } | FormatError::NotAnImage { .. } => true,
        _ => false,
    }
}

/// Reads and decodes the data of one locator; `None` when it is empty.
fn read_locator(
    source: &dyn ByteSource,
    header_fields: &Fields<'_>,
    locator: &ParentLocator,
    encoding: Encoding,
    data_end: u64,
) -> Result<Option<String>, FormatError> {
    let length = u64::from(locator.data_length);
    if length == 0 {
        return Ok(None);
    }
    if length > MAX_LOCATOR_LEN {
        return Err(header_fields.corrupt(
            "platform data length",
            locator.field_at(8),
            format!("{length} bytes is above the limit of {MAX_LOCATOR_LEN}"),
        ));
    }
    let end = locator.data_offset.checked_add(length);
    if end.is_none_or(|end| end > data_end) {
        return Err(header_fields.corrupt(
            "platform data offset",
            locator.field_at(16),
            format!(
                "{length} bytes at {} lie past the image's data, which ends at {data_end}",
                locator.data_offset
            ),
        ));
    }
    // The length is at most MAX_LOCATOR_LEN, checked above.
    let len = usize::try_from(length).unwrap_or(0);
    let data = source.read_vec(locator.data_offset, len)?;
    let text = match encoding {
        Encoding::Utf16Le => {
            if data.len() % 2 != 0 {
                return Err(header_fields.corrupt(
                    "platform data length",
                    locator.field_at(8),
                    format!("{length} bytes cannot hold UTF-16 text"),
                ));
            }
            let units = data
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]));
            decode_utf16(units)
        }
        Encoding::SingleByte => {
            let text = data.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8(text.to_vec()).ok()
        }
    };
    let text = text.ok_or_else(|| {
        header_fields.corrupt(
            "platform data offset",
            locator.field_at(16),
            format!("the locator's data at {} is not text", locator.data_offset),
        )
    })?;
    Ok(Some(text).filter(|t| !t.is_empty()))
}

/// The parent unicode name field as text, up to its first NUL; `None` when it is not
/// UTF-16 big-endian.
fn decode_parent_name(field: &[u8; PARENT_NAME_LEN]) -> Option<String> {
    decode_utf16(
        field
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]])),
    )
}

/// UTF-16 code units up to the first NUL as text; `None` on an unpaired surrogate.
fn decode_utf16(units: impl Iterator<Item = u16>) -> Option<String> {
    char::decode_utf16(units.take_while(|&u| u != 0))
        .collect::<Result<String, _>>()
        .ok()
}

/// A Windows path with its separators turned into slashes.
fn windows_to_slashes(path: &str) -> String {
    path.replace('\\', "/")
}

fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_separators_become_slashes() {
        assert_eq!(windows_to_slashes(r".\base.vhd"), "./base.vhd");
        assert_eq!(windows_to_slashes(r"C:\VMs\base.vhd"), "C:/VMs/base.vhd");
    }

    #[test]
    fn the_parent_name_stops_at_its_first_nul() {
        let mut field = [0u8; PARENT_NAME_LEN];
        for (i, unit) in "base.vhd".encode_utf16().enumerate() {
            field[2 * i..2 * i + 2].copy_from_slice(&unit.to_be_bytes());
        }
        field[40] = 0x41; // stray bytes after the NUL do not count
        assert_eq!(decode_parent_name(&field).as_deref(), Some("base.vhd"));
    }

    #[test]
    fn an_unpaired_surrogate_is_not_a_name() {
        let mut field = [0u8; PARENT_NAME_LEN];
        field[0..2].copy_from_slice(&0xd800u16.to_be_bytes());
        field[2..4].copy_from_slice(&0x0041u16.to_be_bytes());
        assert_eq!(decode_parent_name(&field), None);
    }
}

//! Reading fixed-layout metadata out of byte slices, with errors that name the field.
//!
//! Every format reader parses headers and tables from a slice it has already read, never by
//! reading field by field from the file. [`Fields`] wraps such a slice with the format's
//! name, the image's name and the slice's offset in the file, so that a bad value becomes a
//! [`FormatError::Corrupt`] that says where it is.

use crate::FormatError;

/// A slice of an image's metadata and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    bytes: &'a [u8],
    format: &'static str,
    name: &'a str,
    /// Offset of `bytes[0]` in the image file.
    base: u64,
}

impl<'a> Fields<'a> {
    /// Wraps `bytes`, read from offset `base` of the image `name` in `format`.
    pub fn new(bytes: &'a [u8], format: &'static str, name: &'a str, base: u64) -> Self {
        Self {
            bytes,
            format,
            name,
            base,
        }
    }

    /// The wrapped bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The file offset of byte `at` of the slice.
    pub fn offset_of(&self, at: usize) -> u64 {
        self.base.saturating_add(at as u64)
    }

    /// A [`FormatError::Corrupt`] for `field` at byte `at` of the slice.
    pub fn corrupt(
        &self,
        field: &'static str,
        at: usize,
        problem: impl Into<String>,
    ) -> FormatError {
        FormatError::Corrupt {
            format: self.format,
            name: self.name.to_owned(),
            field,
            offset: self.offset_of(at),
            problem: problem.into(),
        }
    }

    /// The `N` bytes of `field` at `at`.
    pub fn array<const N: usize>(
        &self,
        field: &'static str,
        at: usize,
    ) -> Result<[u8; N], FormatError> {
        at.checked_add(N)
            .and_then(|end| self.bytes.get(at..end))
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .ok_or_else(|| {
                self.corrupt(
                    field,
                    at,
                    format!("the structure ends before its {N} bytes"),
                )
            })
    }

    /// The `len` bytes of `field` at `at`.
    pub fn slice(
        &self,
        field: &'static str,
        at: usize,
        len: usize,
    ) -> Result<&'a [u8], FormatError> {
        at.checked_add(len)
            .and_then(|end| self.bytes.get(at..end))
            .ok_or_else(|| {
                self.corrupt(
                    field,
                    at,
                    format!("the structure ends before its {len} bytes"),
                )
            })
    }

    /// A big-endian `u16`.
    pub fn u16_be(&self, field: &'static str, at: usize) -> Result<u16, FormatError> {
        self.array(field, at).map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub fn u32_be(&self, field: &'static str, at: usize) -> Result<u32, FormatError> {
        self.array(field, at).map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub fn u64_be(&self, field: &'static str, at: usize) -> Result<u64, FormatError> {
        self.array(field, at).map(u64::from_be_bytes)
    }

    /// A little-endian `u16`.
    pub fn u16_le(&self, field: &'static str, at: usize) -> Result<u16, FormatError> {
        self.array(field, at).map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32_le(&self, field: &'static str, at: usize) -> Result<u32, FormatError> {
        self.array(field, at).map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64_le(&self, field: &'static str, at: usize) -> Result<u64, FormatError> {
        self.array(field, at).map(u64::from_le_bytes)
    }
}

/// `value` as a `usize` for an allocation, refused above `limit` (a named constant of the
/// caller, in bytes or entries) so that no header can make a reader allocate without bound.
pub fn bounded_len(
    fields: &Fields<'_>,
    field: &'static str,
    at: usize,
    value: u64,
    limit: u64,
) -> Result<usize, FormatError> {
    if value > limit {
        return Err(fields.corrupt(field, at, format!("{value} is above the limit of {limit}")));
    }
    usize::try_from(value).map_err(|_| fields.corrupt(field, at, format!("{value} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_both_byte_orders_and_name_the_field_when_short() {
        let bytes = [0x12, 0x34, 0x56, 0x78];
        let fields = Fields::new(&bytes, "qcow2", "a.qcow2", 100);
        assert_eq!(fields.u32_be("magic", 0).expect("fits"), 0x1234_5678);
        assert_eq!(fields.u16_le("version", 2).expect("fits"), 0x7856);
        let err = fields.u32_be("size", 2).expect_err("short");
        let text = err.to_string();
        assert!(
            text.contains("qcow2") && text.contains("size") && text.contains("102"),
            "{text}"
        );
        assert!(fields.u64_le("huge", usize::MAX).is_err());
    }

    #[test]
    fn bounded_len_refuses_values_above_the_limit() {
        let fields = Fields::new(&[], "VHD", "d.vhd", 0);
        assert_eq!(
            bounded_len(&fields, "entries", 0, 10, 10).expect("at the limit"),
            10
        );
        assert!(bounded_len(&fields, "entries", 0, 11, 10).is_err());
    }
}

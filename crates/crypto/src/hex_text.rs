//! Lowercase hex as the one text form of ids, shared by their `Display`, `FromStr` and serde
//! impls.
//!
//! Only lowercase is accepted when parsing, so that every id has exactly one text form: the
//! store uses these strings as object names, and two spellings of one id would name two
//! objects.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Visitor};

use crate::CryptoError;

/// Decodes exactly `2 * N` lowercase hex digits, or returns `None`.
pub(crate) fn decode_lower<const N: usize>(text: &str) -> Option<[u8; N]> {
    let is_lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if text.len() != 2 * N || !text.as_bytes().iter().all(is_lower_hex) {
        return None;
    }

    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Writes `bytes` as lowercase hex without allocating.
pub(crate) fn write_lower(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    // Ids are at most 32 bytes; a chunk of 32 keeps the stack buffer small for any input.
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        let text = &mut buf[..2 * chunk.len()];
        hex::encode_to_slice(chunk, text).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

/// A serde visitor that accepts a string and parses it with `T::from_str`.
pub(crate) struct HexVisitor<T> {
    expecting: &'static str,
    parsed: PhantomData<T>,
}

impl<T> HexVisitor<T> {
    /// A visitor whose errors say that `expecting` was wanted.
    pub(crate) fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            parsed: PhantomData,
        }
    }
}

impl<T: FromStr<Err = CryptoError>> Visitor<'_> for HexVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_lower_accepts_only_lowercase_of_the_exact_length() {
        assert_eq!(decode_lower::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(decode_lower::<2>("0AFF"), None);
        assert_eq!(decode_lower::<2>("0af"), None);
        assert_eq!(decode_lower::<2>("0aff0"), None);
        assert_eq!(decode_lower::<2>("0afg"), None);
        assert_eq!(decode_lower::<2>("+aff"), None);
    }
}

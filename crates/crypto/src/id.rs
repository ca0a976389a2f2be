//! Object ids and object kinds.
//!
//! An [`ObjectId`] is the 32-byte keyed BLAKE3 hash of an object's plaintext, keyed per kind
//! by the store's key domain (see [`KeyDomain::object_id`](crate::KeyDomain::object_id)).
//! Its text form is 64 lowercase hex digits, which is also how it is serialized.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CryptoError;
use crate::error::bad_id;
use crate::hex_text::{self, HexVisitor};

/// The length of an [`ObjectId`] in bytes.
const OBJECT_ID_LEN: usize = 32;

/// A 32-byte object id: the keyed BLAKE3 hash of an object's plaintext.
///
/// Ids order by their bytes. `Display` and `Debug` both print 64 lowercase hex digits;
/// `FromStr` and deserialization accept exactly that form and nothing else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// Wraps 32 bytes as an id. The bytes are not checked: any 32 bytes are a valid id.
    pub fn from_bytes(bytes: [u8; OBJECT_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; OBJECT_ID_LEN] {
        &self.0
    }

    /// The id as 64 lowercase hex digits, the same as its `Display` form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_text::write_lower(&self.0, f)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_text::write_lower(&self.0, f)
    }
}

impl FromStr for ObjectId {
    type Err = CryptoError;

    /// Parses exactly 64 lowercase hex digits; anything else is [`CryptoError::BadId`].
    fn from_str(text: &str) -> Result<Self, CryptoError> {
        hex_text::decode_lower(text)
            .map(Self)
            .ok_or_else(|| bad_id(text))
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(HexVisitor::new("an object id of 64 lowercase hex digits"))
    }
}

/// What an object is.
///
/// The discriminant is part of the key that derives an object's id, so a block and a
/// snapshot with the same bytes get different ids, and it is byte 5 of the object's
/// envelope, so an object cannot be opened as another kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum ObjectKind {
    /// A fixed-size slice of a volume.
    Block = 1,
    /// A manifest segment: a run of block positions.
    Segment = 2,
    /// A snapshot's commit record.
    Snapshot = 3,
    /// An image record.
    Image = 4,
}

impl ObjectKind {
    /// Every kind, in discriminant order.
    pub const ALL: [ObjectKind; 4] = [Self::Block, Self::Segment, Self::Snapshot, Self::Image];

    /// The kind with discriminant `value`, or `None` if there is none.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_u8() == value)
    }

    /// The kind's discriminant, as written in envelopes.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The kind as a lowercase word, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Segment => "segment",
            Self::Snapshot => "snapshot",
            Self::Image => "image",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn object_id_prints_as_lowercase_hex_in_display_and_debug() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0xab;
        bytes[31] = 0x01;
        let id = ObjectId::from_bytes(bytes);

        let expected = format!("ab{}01", "0".repeat(60));
        assert_eq!(id.to_string(), expected);
        assert_eq!(format!("{id:?}"), expected);
        assert_eq!(id.to_hex(), expected);
    }

    #[test]
    fn object_id_rejects_text_that_is_not_64_lowercase_hex_digits() {
        let good = "ab".repeat(32);
        let cases = [
            String::new(),
            good[..63].to_owned(),
            format!("{good}0"),
            good.to_uppercase(),
            format!("{}zz", &good[..62]),
            format!(" {}", &good[..63]),
        ];

        for case in cases {
            let result = case.parse::<ObjectId>();
            assert!(
                matches!(result, Err(CryptoError::BadId { .. })),
                "{case:?} parsed"
            );
        }
    }

    #[test]
    fn object_id_deserialization_rejects_bad_hex_and_non_strings() {
        assert!(serde_json::from_str::<ObjectId>("\"abc\"").is_err());
        assert!(serde_json::from_str::<ObjectId>("42").is_err());
    }

    #[test]
    fn object_kind_round_trips_through_its_discriminant() {
        for kind in ObjectKind::ALL {
            assert_eq!(ObjectKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(ObjectKind::from_u8(0), None);
        assert_eq!(ObjectKind::from_u8(5), None);
    }

    proptest! {
        #[test]
        fn object_id_round_trips_through_hex_and_serde(bytes in any::<[u8; 32]>()) {
            let id = ObjectId::from_bytes(bytes);

            let parsed: ObjectId = id.to_hex().parse().expect("own hex parses");
            let json = serde_json::to_string(&id).expect("serializes");
            let from_json: ObjectId = serde_json::from_str(&json).expect("deserializes");

            prop_assert_eq!(parsed, id);
            prop_assert_eq!(json, format!("\"{}\"", id.to_hex()));
            prop_assert_eq!(from_json, id);
            prop_assert_eq!(id.as_bytes(), &bytes);
        }
    }
}

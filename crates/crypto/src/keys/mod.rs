//! The key hierarchy of a store.
//!
//! ```text
//!  master key (key file, key command, or passphrase)
//!    │  one KeySlot per master key: the slot's KDF turns the master key into a wrapping
//!    │  key, which unwraps the domain secret (AES-256-GCM-SIV)
//!    ▼
//!  domain secret (32 random bytes, one per key domain)
//!    │  BLAKE3 derive_key
//!    ├──► id key per object kind   "blockyard 2026-12 object id"  (secret ‖ kind)
//!    └──► data key n, n = 1, 2, …  "blockyard 2026-12 data key"   (secret ‖ n as u32 LE)
//! ```
//!
//! Stores that share a key domain (a [`DomainId`] and its [`DomainSecret`]) give the same
//! object the same id and the same sealed bytes, so ciphertext can be copied between them
//! verbatim. A store may have many slots, one per master key; rotating a master key rewrites
//! only its slot. A new data key can be made current without touching old objects, because
//! every envelope names the data key that sealed it.
//!
//! Every type here that holds key material zeroizes it on drop and prints nothing of it in
//! `Debug`.

mod domain;
mod slot;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;
use crate::error::{bad_id, bad_slot};
use crate::hex_text::{self, HexVisitor};

pub use domain::{KeyDomain, Opened};
pub use slot::{KeySlot, SlotKdf};

/// The length of a [`DomainId`] in bytes.
const DOMAIN_ID_LEN: usize = 16;

/// The length of a [`DomainSecret`] in bytes.
pub(crate) const DOMAIN_SECRET_LEN: usize = 32;

/// The shortest raw master key accepted, in bytes: 128 bits, the least that is not
/// guessable. Key files made by `head -c 32 /dev/urandom` have 32.
const MIN_RAW_KEY_LEN: usize = 16;

/// The shortest passphrase accepted, in bytes. Argon2id makes guessing expensive but cannot
/// help an empty passphrase; the binary is expected to warn about short ones.
const MIN_PASSPHRASE_LEN: usize = 1;

/// 16 random bytes that name a key domain. Public: it is stored in the clear and bound into
/// every key slot of the domain.
///
/// `Display`, `Debug` and serialization use 32 lowercase hex digits; `FromStr` and
/// deserialization accept exactly that form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId([u8; DOMAIN_ID_LEN]);

impl DomainId {
    /// A new, random domain id from the thread-local CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; DOMAIN_ID_LEN];
        rand::fill(&mut bytes);
        Self(bytes)
    }

    /// Wraps 16 bytes as a domain id.
    pub fn from_bytes(bytes: [u8; DOMAIN_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; DOMAIN_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_text::write_lower(&self.0, f)
    }
}

impl fmt::Debug for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DomainId(")?;
        hex_text::write_lower(&self.0, f)?;
        f.write_str(")")
    }
}

impl FromStr for DomainId {
    type Err = CryptoError;

    /// Parses exactly 32 lowercase hex digits; anything else is [`CryptoError::BadId`].
    fn from_str(text: &str) -> Result<Self, CryptoError> {
        hex_text::decode_lower(text)
            .map(Self)
            .ok_or_else(|| bad_id(text))
    }
}

impl Serialize for DomainId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(HexVisitor::new("a domain id of 32 lowercase hex digits"))
    }
}

/// The 32 random secret bytes of a key domain, from which its id key and data keys derive.
///
/// Zeroized on drop, clones included. `Debug` prints `DomainSecret(..)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DomainSecret {
    bytes: [u8; DOMAIN_SECRET_LEN],
}

impl DomainSecret {
    /// A new, random secret from the thread-local CSPRNG (ChaCha12 seeded from the operating
    /// system).
    pub fn generate() -> Self {
        let mut secret = Self {
            bytes: [0u8; DOMAIN_SECRET_LEN],
        };
        rand::fill(&mut secret.bytes);
        secret
    }

    /// The secret as 64 lowercase hex digits, for unencrypted stores, which keep their
    /// secret in the clear next to the data it keys.
    ///
    /// The returned string is not zeroized; callers that care should wrap it in
    /// `zeroize::Zeroizing`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// Parses 64 hex digits (either case) as written by [`DomainSecret::to_hex`].
    ///
    /// Anything else is [`CryptoError::BadSlot`], whose reason never repeats the input.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let mut secret = Self {
            bytes: [0u8; DOMAIN_SECRET_LEN],
        };
        // On failure `secret` may hold part of the decoded input; dropping it zeroizes it.
        hex::decode_to_slice(text, &mut secret.bytes).map_err(|_| {
            bad_slot(format!(
                "the domain secret is not {} hex digits",
                2 * DOMAIN_SECRET_LEN
            ))
        })?;
        Ok(secret)
    }

    /// Wraps bytes unwrapped from a key slot.
    pub(crate) fn from_bytes(bytes: &[u8; DOMAIN_SECRET_LEN]) -> Self {
        Self { bytes: *bytes }
    }

    /// The secret's bytes, for deriving keys.
    pub(crate) fn as_bytes(&self) -> &[u8; DOMAIN_SECRET_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for DomainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DomainSecret(..)")
    }
}

/// Key material supplied by the user: the bytes of a key file or of a key command's
/// output, or a passphrase.
///
/// Zeroized on drop. `Debug` says which kind of key it is and nothing else.
pub struct MasterKey {
    material: Zeroizing<Vec<u8>>,
    is_passphrase: bool,
}

impl MasterKey {
    /// A raw key: the bytes of a key file or a key command's standard output, used exactly
    /// as given (a trailing newline is part of the key, so callers reading text decide
    /// whether to trim it). Slots it makes use a fast BLAKE3 KDF, as the key is assumed to
    /// be random.
    ///
    /// Fewer than 16 bytes is [`CryptoError::KeyTooShort`].
    pub fn from_key_bytes(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        let material = Zeroizing::new(bytes);
        if material.len() < MIN_RAW_KEY_LEN {
            return Err(CryptoError::KeyTooShort {
                len: material.len(),
                min: MIN_RAW_KEY_LEN,
            });
        }
        Ok(Self {
            material,
            is_passphrase: false,
        })
    }

    /// A passphrase, stretched with Argon2id whenever a slot is made or opened with it.
    ///
    /// An empty passphrase is [`CryptoError::KeyTooShort`].
    pub fn from_passphrase(passphrase: String) -> Result<Self, CryptoError> {
        let material = Zeroizing::new(passphrase.into_bytes());
        if material.len() < MIN_PASSPHRASE_LEN {
            return Err(CryptoError::KeyTooShort {
                len: material.len(),
                min: MIN_PASSPHRASE_LEN,
            });
        }
        Ok(Self {
            material,
            is_passphrase: true,
        })
    }

    /// Whether the key is a passphrase (Argon2id slots) rather than raw bytes (BLAKE3 slots).
    pub fn is_passphrase(&self) -> bool {
        self.is_passphrase
    }

    /// The key's bytes, for the slot KDF.
    pub(crate) fn material(&self) -> &[u8] {
        &self.material
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_passphrase {
            "passphrase"
        } else {
            "raw key"
        };
        write!(f, "MasterKey({kind}, ..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_master_key_needs_sixteen_bytes() {
        let short = MasterKey::from_key_bytes(vec![7; 15]);
        let enough = MasterKey::from_key_bytes(vec![7; 16]).expect("16 bytes is enough");

        assert!(matches!(
            short,
            Err(CryptoError::KeyTooShort { len: 15, min: 16 })
        ));
        assert!(!enough.is_passphrase());
    }

    #[test]
    fn empty_passphrase_is_too_short() {
        let empty = MasterKey::from_passphrase(String::new());
        let one = MasterKey::from_passphrase("x".to_owned()).expect("one byte is enough");

        assert!(matches!(
            empty,
            Err(CryptoError::KeyTooShort { len: 0, .. })
        ));
        assert!(one.is_passphrase());
    }

    #[test]
    fn debug_of_key_material_shows_no_key_bytes() {
        let secret = DomainSecret::generate();
        let passphrase = "correct horse battery staple";
        let raw = MasterKey::from_key_bytes(b"0123456789abcdefXYZ".to_vec()).expect("long");
        let phrase = MasterKey::from_passphrase(passphrase.to_owned()).expect("non-empty");

        let secret_debug = format!("{secret:?}");
        let raw_debug = format!("{raw:?}");
        let phrase_debug = format!("{phrase:?}");

        assert_eq!(secret_debug, "DomainSecret(..)");
        assert!(!secret_debug.contains(&secret.to_hex()));
        assert!(!raw_debug.contains("0123456789abcdef"));
        assert!(!raw_debug.contains(&hex::encode(b"0123456789abcdef")));
        assert!(!phrase_debug.contains("horse"));
    }

    #[test]
    fn domain_secret_round_trips_through_hex() {
        let secret = DomainSecret::generate();

        let parsed = DomainSecret::from_hex(&secret.to_hex()).expect("own hex parses");

        assert_eq!(parsed.as_bytes(), secret.as_bytes());
    }

    #[test]
    fn malformed_domain_secret_hex_is_a_bad_slot_that_does_not_echo_the_input() {
        let almost = "ab".repeat(31) + "zz";

        for text in ["", "abcd", almost.as_str()] {
            let error = DomainSecret::from_hex(text).expect_err("malformed");
            assert!(matches!(error, CryptoError::BadSlot { .. }));
            if !text.is_empty() {
                assert!(!error.to_string().contains(text));
            }
        }
    }

    #[test]
    fn domain_ids_are_random_and_round_trip_through_hex_and_serde() {
        let id = DomainId::generate();
        let other = DomainId::generate();

        let text = id.to_string();
        let json = serde_json::to_string(&id).expect("serializes");

        assert_ne!(id, other);
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<DomainId>().expect("parses"), id);
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<DomainId>(&json).expect("deserializes"),
            id
        );
        assert!(matches!(
            text.to_uppercase().parse::<DomainId>(),
            Err(CryptoError::BadId { .. })
        ));
        assert!(matches!(
            text[..30].parse::<DomainId>(),
            Err(CryptoError::BadId { .. })
        ));
    }
}

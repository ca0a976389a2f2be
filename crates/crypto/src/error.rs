//! The one error type of the crypto crate.

use crate::id::ObjectKind;

/// Why a key could not be used, an id could not be parsed or an object could not be opened.
///
/// No variant ever carries secret bytes: a malformed secret or slot is described, never
/// echoed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The master key failed to unwrap a key slot: the slot's tag did not match, or the
    /// slot was made for the other kind of master key (passphrase or raw key).
    #[error("the master key does not open any key slot of this store (wrong key?)")]
    WrongKey,

    /// The master key material is too short to be a key.
    #[error(
        "the master key is {len} bytes long, shorter than the minimum of {min}; use a longer \
         key file or a non-empty passphrase"
    )]
    KeyTooShort {
        /// How many bytes were supplied.
        len: usize,
        /// How many bytes are required.
        min: usize,
    },

    /// A key slot, or a stored domain secret, is malformed: bad hex, wrong lengths, an
    /// unknown version or key derivation parameters outside the accepted bounds.
    #[error("the key slot is malformed: {reason}")]
    BadSlot {
        /// What is wrong with it.
        reason: String,
    },

    /// A string is not the hex form of an object id or a domain id.
    #[error(
        "`{input}` is not an id: expected 64 lowercase hex digits for an object id or 32 for \
         a domain id"
    )]
    BadId {
        /// The string given, shortened if it was long.
        input: String,
    },

    /// An envelope's header is short or garbled, or names another kind of object.
    #[error("the object envelope is malformed: {reason}")]
    BadEnvelope {
        /// What is wrong with it.
        reason: String,
    },

    /// An envelope's authentication tag (encrypted) or checksum (plaintext) does not match
    /// its contents.
    #[error(
        "the contents of {kind} {name} do not match its authentication tag: the object is \
         damaged, was tampered with, or was sealed by another key domain"
    )]
    Tampered {
        /// The kind of object that was opened.
        kind: ObjectKind,
        /// The object's name: as text when it is printable UTF-8, else as hex.
        name: String,
    },

    /// The envelope's encrypted flag differs from whether the key domain encrypts.
    #[error("{}", describe_mismatch(*envelope_encrypted))]
    EncryptedMismatch {
        /// Whether the envelope says it is encrypted.
        envelope_encrypted: bool,
    },

    /// Deriving a key from a passphrase failed.
    #[error("key derivation failed: {reason}")]
    Kdf {
        /// What the key derivation function reported.
        reason: String,
    },

    /// An encrypted envelope names a data key that cannot exist.
    #[error("the object was sealed with data key {key_id}, but data keys are numbered from 1")]
    UnknownKeyId {
        /// The key id found in the envelope.
        key_id: u32,
    },
}

fn describe_mismatch(envelope_encrypted: bool) -> &'static str {
    if envelope_encrypted {
        "the object is encrypted but this store's key domain is not; was it copied from an \
         encrypted store?"
    } else {
        "the object is not encrypted but this store's key domain is; was it copied from an \
         unencrypted store?"
    }
}

/// Longest input echoed back in [`CryptoError::BadId`], in characters; longer inputs are
/// cut so that a hostile or mistaken megabyte-long string does not fill a terminal.
const MAX_ECHOED_INPUT_CHARS: usize = 80;

/// Builds a [`CryptoError::BadId`], shortening a long input.
pub(crate) fn bad_id(input: &str) -> CryptoError {
    let input = match input.char_indices().nth(MAX_ECHOED_INPUT_CHARS) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    };
    CryptoError::BadId { input }
}

/// Builds a [`CryptoError::BadSlot`].
pub(crate) fn bad_slot(reason: impl Into<String>) -> CryptoError {
    CryptoError::BadSlot {
        reason: reason.into(),
    }
}

/// Builds a [`CryptoError::BadEnvelope`].
pub(crate) fn bad_envelope(reason: impl Into<String>) -> CryptoError {
    CryptoError::BadEnvelope {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_id_shortens_long_input() {
        let long = "x".repeat(10_000);

        let message = bad_id(&long).to_string();

        assert!(message.len() < 300, "message is {} bytes", message.len());
        assert!(message.contains('…'));
    }

    #[test]
    fn encrypted_mismatch_says_which_side_is_encrypted() {
        let encrypted = CryptoError::EncryptedMismatch {
            envelope_encrypted: true,
        }
        .to_string();
        let plain = CryptoError::EncryptedMismatch {
            envelope_encrypted: false,
        }
        .to_string();

        assert!(encrypted.starts_with("the object is encrypted"));
        assert!(plain.starts_with("the object is not encrypted"));
    }
}

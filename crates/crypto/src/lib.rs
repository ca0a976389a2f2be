//! Key hierarchy, keyed object ids and sealed envelopes for blockyard.
//!
//! Every store belongs to a *key domain*: a public [`DomainId`] and a secret
//! [`DomainSecret`]. The secret is kept in the store wrapped in one [`KeySlot`] per
//! [`MasterKey`] (a key file, a key command's output, or a passphrase). Unwrapped, it
//! becomes a [`KeyDomain`], which
//!
//! - names objects: [`KeyDomain::object_id`] is the keyed BLAKE3 hash of an object's
//!   plaintext, so ids reveal nothing about contents to someone without the secret, and
//!   equal contents deduplicate within a domain;
//! - seals objects: [`KeyDomain::seal`] frames a payload in an [`Envelope`], encrypted with
//!   AES-256-GCM-SIV or, for unencrypted stores, checksummed with BLAKE3.
//!
//! Sealing is deterministic, so two stores of one domain hold identical bytes for an object
//! and a copy between them moves ciphertext without a key. The byte layout of an envelope is
//! drawn in [`envelope`], the key hierarchy in [`keys`].
//!
//! The crate does no I/O: it parses slices and returns bytes.
//!
//! ```
//! use blockyard_crypto::{DomainId, DomainSecret, KeyDomain, KeySlot, MasterKey, ObjectKind};
//! # fn main() -> Result<(), blockyard_crypto::CryptoError> {
//! // Creating a store: a new domain, its secret wrapped by the user's key.
//! let domain = DomainId::generate();
//! let secret = DomainSecret::generate();
//! let master = MasterKey::from_key_bytes(b"32 bytes of a key file, say.....".to_vec())?;
//! let slot = KeySlot::wrap(&master, &secret, domain, "default")?;
//!
//! // Opening it later: unwrap the secret, derive the keys, seal and open a block.
//! let secret = slot.unwrap(&master, domain, "default")?;
//! let keys = KeyDomain::new(domain, &secret, true, 1);
//! let block = b"some block contents";
//! let id = keys.object_id(ObjectKind::Block, block);
//! let sealed = keys.seal(ObjectKind::Block, id.as_bytes(), block, false);
//! let (opened, compressed) = keys.open(ObjectKind::Block, id.as_bytes(), &sealed)?;
//! assert_eq!((opened.as_slice(), compressed), (&block[..], false));
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod envelope;
mod error;
mod hex_text;
pub mod id;
pub mod keys;

pub use envelope::{ENVELOPE_HEADER_LEN, Envelope};
pub use error::CryptoError;
pub use id::{ObjectId, ObjectKind};
pub use keys::{DomainId, DomainSecret, KeyDomain, KeySlot, MasterKey, Opened, SlotKdf};

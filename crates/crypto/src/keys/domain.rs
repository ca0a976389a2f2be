//! The derived keys of one key domain, and the operations that use them.

use std::fmt;

use aes_gcm_siv::Aes256GcmSiv;
use aes_gcm_siv::aead::KeyInit;
use zeroize::Zeroizing;

use super::{DOMAIN_SECRET_LEN, DomainId, DomainSecret};
use crate::CryptoError;
use crate::envelope::{self, Bound, ENVELOPE_HEADER_LEN, Envelope, NONCE_LEN};
use crate::error::bad_envelope;
use crate::id::{ObjectId, ObjectKind};

/// BLAKE3 `derive_key` context for the id key of each object kind.
const OBJECT_ID_CONTEXT: &str = "blockyard 2026-12 object id";

/// BLAKE3 `derive_key` context for the numbered data keys.
const DATA_KEY_CONTEXT: &str = "blockyard 2026-12 data key";

/// The keys a store derives from its domain secret: one id key per object kind and the
/// numbered data keys that seal envelopes.
///
/// Cheap to share between threads (`Send + Sync`) and to clone. Key material is zeroized on
/// drop and `Debug` shows only the domain id and flags.
///
/// Known shortcoming: the AES key schedule inside each `Aes256GcmSiv` is not zeroized on
/// drop, because that needs the `zeroize` feature of the `aes` crate, which this crate does
/// not depend on directly. A process memory dump taken after a `KeyDomain` is dropped could
/// still show a data key's round keys. The fix is a direct `aes` dependency with that
/// feature enabled.
#[derive(Clone)]
pub struct KeyDomain {
    domain: DomainId,
    encrypted: bool,
    current_key_id: u32,
    /// Kept to derive data keys other than the current one when opening old envelopes.
    secret: Zeroizing<[u8; DOMAIN_SECRET_LEN]>,
    /// Indexed by `ObjectKind as usize - 1`.
    id_keys: Zeroizing<[[u8; 32]; ObjectKind::ALL.len()]>,
    /// The current data key; `None` for an unencrypted domain.
    current: Option<DataKey>,
}

impl KeyDomain {
    /// Derives the keys of `domain` from `secret`.
    ///
    /// With `encrypted` false, ids are still keyed but envelopes are only checksummed, and
    /// `current_key_id` is only remembered. With `encrypted` true, `current_key_id` names
    /// the data key that seals new envelopes; older envelopes name their own key id and any
    /// id from 1 up can be opened.
    ///
    /// # Panics
    ///
    /// If `encrypted` is true and `current_key_id` is 0: data keys are numbered from 1, and
    /// the caller is expected to have checked the number it read from the store's config.
    pub fn new(
        domain: DomainId,
        secret: &DomainSecret,
        encrypted: bool,
        current_key_id: u32,
    ) -> Self {
        assert!(
            !encrypted || current_key_id >= 1,
            "the current data key id of an encrypted domain must be at least 1"
        );
        let secret = Zeroizing::new(*secret.as_bytes());

        let mut id_keys = Zeroizing::new([[0u8; 32]; ObjectKind::ALL.len()]);
        for (key, kind) in id_keys.iter_mut().zip(ObjectKind::ALL) {
            let mut hasher = blake3::Hasher::new_derive_key(OBJECT_ID_CONTEXT);
            hasher.update(secret.as_slice());
            hasher.update(&[kind.as_u8()]);
            *key = *hasher.finalize().as_bytes();
        }
        let current = encrypted.then(|| DataKey::derive(&secret, current_key_id));

        Self {
            domain,
            encrypted,
            current_key_id,
            secret,
            id_keys,
            current,
        }
    }

    /// The domain's public id.
    pub fn domain_id(&self) -> DomainId {
        self.domain
    }

    /// Whether envelopes sealed by this domain are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The domain's secret: to wrap in a new key slot, or to give a new store of the same
    /// domain. Zeroized when dropped.
    pub fn secret(&self) -> DomainSecret {
        DomainSecret::from_bytes(&self.secret)
    }

    /// The data key id that new envelopes are sealed with.
    pub fn current_key_id(&self) -> u32 {
        self.current_key_id
    }

    /// The id of an object of `kind` whose plaintext is `data`: BLAKE3 keyed with the
    /// domain's id key for that kind. The same bytes get the same id in every store of the
    /// domain, and different ids in other domains or as another kind.
    pub fn object_id(&self, kind: ObjectKind, data: &[u8]) -> ObjectId {
        let key = &self.id_keys[usize::from(kind.as_u8() - 1)];
        ObjectId::from_bytes(*blake3::keyed_hash(key, data).as_bytes())
    }

    /// Seals `payload` in an envelope for the object `name` of kind `kind`. The name is
    /// what the caller stores the object under: a block or segment id's bytes, or a
    /// snapshot id's text; it is bound into the envelope but not stored in it.
    ///
    /// Encrypted domains encrypt with the current data key and a nonce derived from the
    /// kind and name; plaintext domains append a checksum. Either way, sealing the same
    /// object twice gives identical bytes. `compressed` is carried for the caller, who
    /// compresses and decompresses; this crate does neither.
    ///
    /// # Panics
    ///
    /// If `payload` is longer than 64 GiB, the most AES-GCM-SIV can seal.
    pub fn seal(&self, kind: ObjectKind, name: &[u8], payload: &[u8], compressed: bool) -> Vec<u8> {
        self.seal_bound(kind, Bound { name, clear: None }, payload, compressed)
    }

    /// Seals like [`seal`](Self::seal), with a clear part: `clear` is stored readable by
    /// anyone (see [`Envelope::clear`]) and authenticated with the payload, so that opening
    /// fails if either was changed.
    ///
    /// # Panics
    ///
    /// As [`seal`](Self::seal), and if `clear` is 4 GiB or longer.
    pub fn seal_with_clear(
        &self,
        kind: ObjectKind,
        name: &[u8],
        clear: &[u8],
        payload: &[u8],
        compressed: bool,
    ) -> Vec<u8> {
        let bound = Bound {
            name,
            clear: Some(clear),
        };
        self.seal_bound(kind, bound, payload, compressed)
    }

    fn seal_bound(
        &self,
        kind: ObjectKind,
        bound: Bound<'_>,
        payload: &[u8],
        compressed: bool,
    ) -> Vec<u8> {
        match &self.current {
            Some(key) => envelope::seal_encrypted(
                &key.cipher,
                key.id,
                key.nonce(kind, bound.name),
                kind,
                bound,
                payload,
                compressed,
            ),
            None => envelope::seal_plain(kind, bound, payload, compressed),
        }
    }

    /// Checks and opens an envelope sealed for the object `name` of kind `kind`, returning
    /// its payload and whether the caller had compressed it.
    ///
    /// Errors, in the order checked: [`CryptoError::BadEnvelope`] for a malformed header or
    /// an envelope of another kind; [`CryptoError::EncryptedMismatch`] when the envelope is
    /// encrypted and the domain is not, or the reverse; [`CryptoError::UnknownKeyId`] for
    /// an encrypted envelope naming key 0; [`CryptoError::Tampered`] when the tag or
    /// checksum does not match, which covers damage, tampering, another name, and another
    /// key domain.
    pub fn open(
        &self,
        kind: ObjectKind,
        name: &[u8],
        envelope: &[u8],
    ) -> Result<(Vec<u8>, bool), CryptoError> {
        let opened = self.open_with_clear(kind, name, envelope)?;
        Ok((opened.payload, opened.compressed))
    }

    /// Opens like [`open`](Self::open) and also returns the envelope's clear part, now
    /// authenticated (empty when it has none).
    pub fn open_with_clear(
        &self,
        kind: ObjectKind,
        name: &[u8],
        envelope: &[u8],
    ) -> Result<Opened, CryptoError> {
        let parsed = Envelope::parse(envelope)?;
        let header = envelope
            .first_chunk::<ENVELOPE_HEADER_LEN>()
            .ok_or_else(|| bad_envelope("it is shorter than its header"))?;
        if parsed.kind != kind {
            return Err(bad_envelope(format!(
                "it holds a {} where a {kind} was expected",
                parsed.kind
            )));
        }
        if parsed.encrypted != self.encrypted {
            return Err(CryptoError::EncryptedMismatch {
                envelope_encrypted: parsed.encrypted,
            });
        }

        let payload = match &self.current {
            None => envelope::open_plain(&parsed, header, name)?,
            Some(_) if parsed.key_id == 0 => {
                return Err(CryptoError::UnknownKeyId {
                    key_id: parsed.key_id,
                });
            }
            Some(current) if current.id == parsed.key_id => {
                envelope::open_encrypted(&current.cipher, &parsed, header, name)?
            }
            // An older (or newer) data key: derive it for this one envelope. That costs a
            // BLAKE3 call and an AES key expansion, small next to decrypting a block.
            Some(_) => {
                let key = DataKey::derive(&self.secret, parsed.key_id);
                envelope::open_encrypted(&key.cipher, &parsed, header, name)?
            }
        };
        Ok(Opened {
            clear: parsed.clear.to_vec(),
            payload,
            compressed: parsed.compressed,
        })
    }
}

/// An opened envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The clear part, authenticated; empty when the envelope has none.
    pub clear: Vec<u8>,
    /// The payload, decrypted.
    pub payload: Vec<u8>,
    /// Whether the caller had compressed the payload.
    pub compressed: bool,
}

impl fmt::Debug for KeyDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDomain")
            .field("domain", &self.domain)
            .field("encrypted", &self.encrypted)
            .field("current_key_id", &self.current_key_id)
            .finish_non_exhaustive()
    }
}

/// One numbered data key, ready to seal and open.
#[derive(Clone)]
struct DataKey {
    id: u32,
    /// Also keys the BLAKE3 hash that derives nonces.
    key: Zeroizing<[u8; 32]>,
    cipher: Aes256GcmSiv,
}

impl DataKey {
    /// Data key `id`: `derive_key("blockyard 2026-12 data key", secret ‖ id as u32 LE)`.
    fn derive(secret: &[u8; DOMAIN_SECRET_LEN], id: u32) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(DATA_KEY_CONTEXT);
        hasher.update(secret);
        hasher.update(&id.to_le_bytes());
        let key = Zeroizing::new(*hasher.finalize().as_bytes());

        let cipher = Aes256GcmSiv::new(key.as_ref().into());
        Self { id, key, cipher }
    }

    /// The deterministic nonce for the object `name` of kind `kind`: the first 12 bytes of
    /// BLAKE3 keyed with this data key over `kind ‖ name`.
    fn nonce(&self, kind: ObjectKind, name: &[u8]) -> [u8; NONCE_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&[kind.as_u8()]);
        hasher.update(name);

        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&hasher.finalize().as_bytes()[..NONCE_LEN]);
        nonce
    }
}

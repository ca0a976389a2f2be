//! Key slots: the domain secret wrapped by one master key.
//!
//! A slot is stored as JSON, for example:
//!
//! ```text
//! { "version": 1,
//!   "kdf": { "kdf": "argon2id", "m_cost_kib": 19456, "t_cost": 2, "p_cost": 1,
//!            "salt": "<32 hex digits>" },
//!   "nonce": "<24 hex digits>",
//!   "wrapped": "<96 hex digits: 32 bytes of encrypted secret, then the 16-byte tag>" }
//! ```
//!
//! The wrapping key comes from the slot's KDF: Argon2id over a passphrase, or BLAKE3
//! `derive_key` over salt ‖ key bytes for a raw key, which is already random and needs no
//! stretching. The secret is sealed with AES-256-GCM-SIV under a random nonce, with
//! associated data `"blockyard key slot v1" ‖ domain id (16 bytes) ‖ slot name`, so a slot
//! copied to another domain or renamed no longer opens.

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{DOMAIN_SECRET_LEN, DomainId, DomainSecret, MasterKey};
use crate::CryptoError;
use crate::error::bad_slot;

/// The slot format written by this code.
const SLOT_VERSION: u32 = 1;

/// BLAKE3 `derive_key` context for the wrapping key of a raw-key slot.
const RAW_KEY_WRAP_CONTEXT: &str = "blockyard 2026-12 key slot wrap";

/// First part of the associated data of every slot; the domain id and slot name follow.
const SLOT_AAD_PREFIX: &[u8] = b"blockyard key slot v1";

/// Length of a slot's KDF salt, in bytes.
const SALT_LEN: usize = 16;

/// Length of an AES-GCM-SIV nonce, in bytes (RFC 8452 section 4).
const NONCE_LEN: usize = 12;

/// Length of an AES-GCM-SIV tag, in bytes (RFC 8452 section 4).
const TAG_LEN: usize = 16;

/// Length of a wrapping key, in bytes: an AES-256 key.
const WRAPPING_KEY_LEN: usize = 32;

/// Argon2id memory for new slots, in KiB (19 MiB), with [`ARGON2_T_COST`] passes and
/// [`ARGON2_P_COST`] lane: the OWASP password storage recommendation for Argon2id. It costs
/// about 50 ms per slot opened, once per command.
const ARGON2_M_COST_KIB: u32 = 19 * 1024;

/// Argon2id passes for new slots; see [`ARGON2_M_COST_KIB`].
const ARGON2_T_COST: u32 = 2;

/// Argon2id lanes for new slots; see [`ARGON2_M_COST_KIB`].
const ARGON2_P_COST: u32 = 1;

/// The most Argon2id memory a slot may ask for, in KiB (4 GiB). A slot is read from the
/// store before anything is authenticated, so its parameters are hostile until proven
/// otherwise; beyond this a slot is refused rather than allowed to exhaust memory.
const MAX_ARGON2_M_COST_KIB: u32 = 4 * 1024 * 1024;

/// The most Argon2id passes a slot may ask for, bounding the time a hostile slot can take.
const MAX_ARGON2_T_COST: u32 = 64;

/// The most Argon2id lanes a slot may ask for, bounding the time a hostile slot can take
/// (this Argon2 implementation runs lanes one after another).
const MAX_ARGON2_P_COST: u32 = 64;

/// How a slot turns the master key into the key that wraps the domain secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kdf", rename_all = "kebab-case")]
pub enum SlotKdf {
    /// For raw keys: BLAKE3 `derive_key("blockyard 2026-12 key slot wrap", salt ‖ key)`.
    Blake3 {
        /// 16 random bytes as 32 hex digits.
        salt: String,
    },
    /// For passphrases: Argon2id (version 0x13) with a 32-byte output.
    Argon2id {
        /// Memory, in KiB; at most 4 GiB worth is accepted.
        m_cost_kib: u32,
        /// Passes over the memory; at most 64 is accepted.
        t_cost: u32,
        /// Lanes; at most 64 is accepted.
        p_cost: u32,
        /// 16 random bytes as 32 hex digits.
        salt: String,
    },
}

/// The domain secret wrapped by one master key. The store keeps it as JSON at
/// `keys/slots/<slot-name>`; the slot name is bound into the wrapping, so a slot only opens
/// under the name it was made for.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeySlot {
    /// The slot format; 1.
    pub version: u32,
    /// How the master key becomes the wrapping key.
    pub kdf: SlotKdf,
    /// The AES-GCM-SIV nonce: 12 bytes as 24 hex digits.
    pub nonce: String,
    /// The encrypted domain secret followed by its 16-byte tag, as 96 hex digits.
    pub wrapped: String,
}

impl KeySlot {
    /// Wraps `secret` under `master` for the slot `slot_name` of domain `domain`.
    ///
    /// A passphrase is stretched with Argon2id (19 MiB, 2 passes, 1 lane); a raw key goes
    /// through BLAKE3 `derive_key`. Salt and nonce are fresh random bytes, so wrapping the
    /// same secret twice gives two different slots.
    pub fn wrap(
        master: &MasterKey,
        secret: &DomainSecret,
        domain: DomainId,
        slot_name: &str,
    ) -> Result<Self, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        rand::fill(&mut salt);
        let salt = hex::encode(salt);
        let kdf = if master.is_passphrase() {
            SlotKdf::Argon2id {
                m_cost_kib: ARGON2_M_COST_KIB,
                t_cost: ARGON2_T_COST,
                p_cost: ARGON2_P_COST,
                salt,
            }
        } else {
            SlotKdf::Blake3 { salt }
        };
        let wrapping_key = kdf.wrapping_key(master)?;

        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        // Encrypted in place: the buffer holds the secret until the cipher overwrites it.
        let mut buffer = Zeroizing::new(*secret.as_bytes());
        let tag = cipher(&wrapping_key)
            .encrypt_in_place_detached(
                &Nonce::from(nonce),
                &slot_aad(domain, slot_name),
                buffer.as_mut_slice(),
            )
            .map_err(|_| CryptoError::Kdf {
                reason: "aes-gcm-siv refused to wrap a 32-byte secret".to_owned(),
            })?;

        let mut wrapped = Vec::with_capacity(DOMAIN_SECRET_LEN + TAG_LEN);
        wrapped.extend_from_slice(buffer.as_slice());
        wrapped.extend_from_slice(&tag);
        Ok(Self {
            version: SLOT_VERSION,
            kdf,
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        })
    }

    /// Unwraps the domain secret with `master`, for the slot `slot_name` of domain `domain`.
    ///
    /// The slot is checked before any key derivation runs: an unknown version, malformed
    /// hex, wrong lengths or Argon2 parameters beyond the bounds (4 GiB, 64 passes,
    /// 64 lanes) are [`CryptoError::BadSlot`]. A master key of the other kind than the slot
    /// was made for (passphrase against a BLAKE3 slot, raw key against an Argon2id slot),
    /// or one whose wrapping key fails the tag, is [`CryptoError::WrongKey`]; so is a slot
    /// presented under another domain or slot name than it was made for.
    pub fn unwrap(
        &self,
        master: &MasterKey,
        domain: DomainId,
        slot_name: &str,
    ) -> Result<DomainSecret, CryptoError> {
        if self.version != SLOT_VERSION {
            return Err(bad_slot(format!(
                "version {} is not supported; this blockyard reads version {SLOT_VERSION}",
                self.version
            )));
        }
        let nonce: [u8; NONCE_LEN] = decode_field("nonce", &self.nonce)?;
        let wrapped: [u8; DOMAIN_SECRET_LEN + TAG_LEN] = decode_field("wrapped", &self.wrapped)?;
        let wrapping_key = self.kdf.wrapping_key(master)?;

        let mut buffer = Zeroizing::new([0u8; DOMAIN_SECRET_LEN]);
        buffer.copy_from_slice(&wrapped[..DOMAIN_SECRET_LEN]);
        let tag: [u8; TAG_LEN] = wrapped[DOMAIN_SECRET_LEN..]
            .try_into()
            .map_err(|_| bad_slot("the wrapped secret has no room for its tag"))?;
        cipher(&wrapping_key)
            .decrypt_in_place_detached(
                &Nonce::from(nonce),
                &slot_aad(domain, slot_name),
                buffer.as_mut_slice(),
                &Tag::from(tag),
            )
            .map_err(|_| CryptoError::WrongKey)?;
        Ok(DomainSecret::from_bytes(&buffer))
    }
}

impl SlotKdf {
    /// Checks the KDF's fields, then derives the wrapping key from `master`.
    fn wrapping_key(
        &self,
        master: &MasterKey,
    ) -> Result<Zeroizing<[u8; WRAPPING_KEY_LEN]>, CryptoError> {
        match self {
            SlotKdf::Blake3 { salt } => {
                let salt: [u8; SALT_LEN] = decode_field("salt", salt)?;
                if master.is_passphrase() {
                    return Err(CryptoError::WrongKey);
                }

                let mut hasher = blake3::Hasher::new_derive_key(RAW_KEY_WRAP_CONTEXT);
                hasher.update(&salt);
                hasher.update(master.material());
                Ok(Zeroizing::new(*hasher.finalize().as_bytes()))
            }
            SlotKdf::Argon2id {
                m_cost_kib,
                t_cost,
                p_cost,
                salt,
            } => {
                let salt: [u8; SALT_LEN] = decode_field("salt", salt)?;
                let params = argon2_params(*m_cost_kib, *t_cost, *p_cost)?;
                if !master.is_passphrase() {
                    return Err(CryptoError::WrongKey);
                }

                let mut key = Zeroizing::new([0u8; WRAPPING_KEY_LEN]);
                Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                    .hash_password_into(master.material(), &salt, key.as_mut_slice())
                    .map_err(|error| CryptoError::Kdf {
                        reason: error.to_string(),
                    })?;
                Ok(key)
            }
        }
    }
}

/// Checks Argon2id parameters against this crate's bounds and Argon2's own rules.
fn argon2_params(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<Params, CryptoError> {
    if m_cost_kib > MAX_ARGON2_M_COST_KIB {
        return Err(bad_slot(format!(
            "argon2 memory of {m_cost_kib} KiB exceeds the limit of {MAX_ARGON2_M_COST_KIB} KiB"
        )));
    }
    if t_cost > MAX_ARGON2_T_COST {
        return Err(bad_slot(format!(
            "argon2 pass count {t_cost} exceeds the limit of {MAX_ARGON2_T_COST}"
        )));
    }
    if p_cost > MAX_ARGON2_P_COST {
        return Err(bad_slot(format!(
            "argon2 lane count {p_cost} exceeds the limit of {MAX_ARGON2_P_COST}"
        )));
    }

    Params::new(m_cost_kib, t_cost, p_cost, Some(WRAPPING_KEY_LEN)).map_err(|error| {
        bad_slot(format!(
            "argon2 parameters m={m_cost_kib} KiB, t={t_cost}, p={p_cost} are invalid: {error}"
        ))
    })
}

/// Decodes a hex field of exactly `N` bytes (either case), or says which field is wrong.
fn decode_field<const N: usize>(field: &str, text: &str) -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| bad_slot(format!("the {field} is not {} hex digits", 2 * N)))?;
    Ok(out)
}

/// The associated data that binds a slot to its domain and name. The domain id has a fixed
/// length and the name comes last, so no two (domain, name) pairs give the same bytes.
fn slot_aad(domain: DomainId, slot_name: &str) -> Vec<u8> {
    [SLOT_AAD_PREFIX, domain.as_bytes(), slot_name.as_bytes()].concat()
}

fn cipher(key: &[u8; WRAPPING_KEY_LEN]) -> Aes256GcmSiv {
    Aes256GcmSiv::new(key.into())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn raw_key(byte: u8) -> MasterKey {
        MasterKey::from_key_bytes(vec![byte; 32]).expect("32 bytes is long enough")
    }

    fn passphrase(text: &str) -> MasterKey {
        MasterKey::from_passphrase(text.to_owned()).expect("non-empty")
    }

    fn raw_slot(domain: DomainId, secret: &DomainSecret) -> KeySlot {
        KeySlot::wrap(&raw_key(1), secret, domain, "default").expect("wraps")
    }

    #[test]
    fn raw_key_slot_round_trips_and_uses_blake3() {
        let domain = DomainId::generate();
        let secret = DomainSecret::generate();

        let slot = raw_slot(domain, &secret);
        let opened = slot
            .unwrap(&raw_key(1), domain, "default")
            .expect("right key opens");

        assert!(matches!(slot.kdf, SlotKdf::Blake3 { .. }));
        assert_eq!(opened.as_bytes(), secret.as_bytes());
    }

    #[test]
    fn raw_key_slot_refuses_a_wrong_key() {
        let domain = DomainId::generate();
        let slot = raw_slot(domain, &DomainSecret::generate());

        let result = slot.unwrap(&raw_key(2), domain, "default");

        assert!(matches!(result, Err(CryptoError::WrongKey)));
    }

    #[test]
    fn slot_opens_only_under_its_own_domain_and_name() {
        let domain = DomainId::generate();
        let slot = raw_slot(domain, &DomainSecret::generate());

        let other_domain = slot.unwrap(&raw_key(1), DomainId::generate(), "default");
        let other_name = slot.unwrap(&raw_key(1), domain, "default2");

        assert!(matches!(other_domain, Err(CryptoError::WrongKey)));
        assert!(matches!(other_name, Err(CryptoError::WrongKey)));
    }

    #[test]
    fn wrapping_twice_gives_different_slots() {
        let domain = DomainId::generate();
        let secret = DomainSecret::generate();

        let first = raw_slot(domain, &secret);
        let second = raw_slot(domain, &secret);

        assert_ne!(first.kdf, second.kdf);
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.wrapped, second.wrapped);
    }

    #[test]
    fn passphrase_slot_opens_with_its_passphrase_only() {
        let domain = DomainId::generate();
        let secret = DomainSecret::generate();
        let slot = KeySlot::wrap(&passphrase("hunter2 but longer"), &secret, domain, "ops")
            .expect("wraps");

        let opened = slot.unwrap(&passphrase("hunter2 but longer"), domain, "ops");
        let wrong = slot.unwrap(&passphrase("hunter3 but longer"), domain, "ops");
        let raw = slot.unwrap(&raw_key(1), domain, "ops");

        assert!(matches!(
            slot.kdf,
            SlotKdf::Argon2id {
                m_cost_kib: 19456,
                t_cost: 2,
                p_cost: 1,
                ..
            }
        ));
        assert_eq!(
            opened.expect("right passphrase opens").as_bytes(),
            secret.as_bytes()
        );
        assert!(matches!(wrong, Err(CryptoError::WrongKey)));
        assert!(matches!(raw, Err(CryptoError::WrongKey)));
    }

    #[test]
    fn passphrase_against_a_raw_key_slot_is_a_wrong_key() {
        let domain = DomainId::generate();
        let slot = raw_slot(domain, &DomainSecret::generate());

        let result = slot.unwrap(&passphrase("anything"), domain, "default");

        assert!(matches!(result, Err(CryptoError::WrongKey)));
    }

    #[test]
    fn hostile_argon2_parameters_are_refused_before_running() {
        let domain = DomainId::generate();
        let salt = "00".repeat(SALT_LEN);
        let template = raw_slot(domain, &DomainSecret::generate());
        let hostile = [
            (u32::MAX, 1, 1),
            (MAX_ARGON2_M_COST_KIB + 1, 1, 1),
            (64, u32::MAX, 1),
            (64, MAX_ARGON2_T_COST + 1, 1),
            (1024, 1, MAX_ARGON2_P_COST + 1),
            // Within the bounds but below Argon2's minimum of 8 KiB per lane.
            (1, 1, 1),
            (64, 0, 1),
            (64, 1, 0),
        ];

        for (m_cost_kib, t_cost, p_cost) in hostile {
            let slot = KeySlot {
                kdf: SlotKdf::Argon2id {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    salt: salt.clone(),
                },
                ..template.clone()
            };

            let started = Instant::now();
            let result = slot.unwrap(&passphrase("x"), domain, "default");

            assert!(
                matches!(result, Err(CryptoError::BadSlot { .. })),
                "m={m_cost_kib} t={t_cost} p={p_cost} gave {result:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }

    #[test]
    fn malformed_slots_are_bad_slots() {
        let domain = DomainId::generate();
        let good = raw_slot(domain, &DomainSecret::generate());
        let malformed = [
            KeySlot {
                version: 2,
                ..good.clone()
            },
            KeySlot {
                nonce: "00".repeat(11),
                ..good.clone()
            },
            KeySlot {
                nonce: "zz".repeat(12),
                ..good.clone()
            },
            KeySlot {
                wrapped: good.wrapped[..94].to_owned(),
                ..good.clone()
            },
            KeySlot {
                wrapped: format!("{}00", good.wrapped),
                ..good.clone()
            },
            KeySlot {
                kdf: SlotKdf::Blake3 {
                    salt: "00".repeat(15),
                },
                ..good.clone()
            },
            KeySlot {
                kdf: SlotKdf::Blake3 {
                    salt: "0".repeat(31),
                },
                ..good.clone()
            },
        ];

        for slot in malformed {
            let result = slot.unwrap(&raw_key(1), domain, "default");
            assert!(
                matches!(result, Err(CryptoError::BadSlot { .. })),
                "{slot:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn slot_json_names_its_kdf_and_round_trips() {
        let domain = DomainId::generate();
        let secret = DomainSecret::generate();
        let slot = raw_slot(domain, &secret);

        let json = serde_json::to_value(&slot).expect("serializes");
        let back: KeySlot = serde_json::from_value(json.clone()).expect("deserializes");

        assert_eq!(json["version"], 1);
        assert_eq!(json["kdf"]["kdf"], "blake3");
        assert_eq!(json["wrapped"].as_str().map(str::len), Some(96));
        let opened = back
            .unwrap(&raw_key(1), domain, "default")
            .expect("opens after json");
        assert_eq!(opened.as_bytes(), secret.as_bytes());
    }

    #[test]
    fn argon2_kdf_serializes_with_its_parameters() {
        let kdf = SlotKdf::Argon2id {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
            salt: "ab".into(),
        };

        let json = serde_json::to_value(&kdf).expect("serializes");

        assert_eq!(
            json,
            serde_json::json!({
                "kdf": "argon2id", "m_cost_kib": 8, "t_cost": 1, "p_cost": 1, "salt": "ab"
            })
        );
    }
}

//! The envelope: how every stored object is framed, checked and (usually) encrypted.
//!
//! An envelope is a 24-byte header followed by a body. All integers are little-endian.
//!
//! ```text
//!  offset  size  field
//!  ──────  ────  ───────────────────────────────────────────────────────────────────────
//!       0     4  magic "BYO1"
//!       4     1  version, 1
//!       5     1  object kind (ObjectKind: 1 block, 2 segment, 3 snapshot, 4 image)
//!       6     1  flags: bit 0 encrypted, bit 1 compressed, bit 2 clear part;
//!                  bits 3..8 must be 0
//!       7     1  reserved, must be 0
//!       8     4  data key id, u32; 0 when not encrypted, ≥ 1 when encrypted
//!      12    12  AES-GCM-SIV nonce; all zero when not encrypted
//!      24     …  body
//!
//!  clear part (flag bit 2 only), at the start of the body:
//!                   clear length (u32) ‖ clear bytes
//!  encrypted body:  [clear part] ‖ ciphertext (payload length) ‖ 16-byte AES-GCM-SIV tag
//!                   AAD = header[0..24] ‖ name length (u32) ‖ name ‖ [clear part]
//!  plaintext body:  [clear part] ‖ payload ‖ 32-byte BLAKE3 hash of
//!                   header[0..24] ‖ name length (u32) ‖ name ‖ [clear part] ‖ payload
//! ```
//!
//! The *clear part* is readable without any key and authenticated with the rest. It holds
//! what a process without keys must see to copy an object's references verbatim between
//! stores of one key domain: a commit record's segment ids, a segment's block ids. An
//! envelope without the flag has no clear part and the same bytes it had before the flag
//! existed.
//!
//! The object's *name* (its id, or a snapshot id's text) is not stored in the envelope but is
//! bound into the tag or checksum, so an envelope renamed, or stored under another kind,
//! fails to open. The name is preceded by its length so that name and payload cannot trade
//! bytes.
//!
//! The nonce of an encrypted envelope is deterministic: the first 12 bytes of
//! `BLAKE3-keyed(data key, kind ‖ name)`. Sealing the same object twice therefore gives the
//! same bytes, which lets stores of one key domain agree on ciphertext. AES-GCM-SIV
//! (RFC 8452) is built for this: reusing a nonce reveals only whether two plaintexts are
//! equal, never the plaintexts or the key.
//!
//! The compressed flag is the caller's: this crate does not compress, it only carries the
//! bit, authenticated, so that the caller knows how to read the payload back.

use aes_gcm_siv::aead::AeadInPlace;
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};

use crate::CryptoError;
use crate::error::bad_envelope;
use crate::id::ObjectKind;

/// Length of an envelope's header, in bytes; the body starts here.
pub const ENVELOPE_HEADER_LEN: usize = 24;

/// Bytes 0..4: marks a blockyard object, version 1 of the family.
const MAGIC: [u8; 4] = *b"BYO1";

/// Offset of the one-byte envelope version.
const VERSION_OFFSET: usize = 4;

/// The envelope version written and read by this code.
const VERSION: u8 = 1;

/// Offset of the one-byte object kind.
const KIND_OFFSET: usize = 5;

/// Offset of the one-byte flags.
const FLAGS_OFFSET: usize = 6;

/// Flag bit: the body is AES-256-GCM-SIV ciphertext and tag.
const FLAG_ENCRYPTED: u8 = 0b01;

/// Flag bit: the payload was compressed by the caller.
const FLAG_COMPRESSED: u8 = 0b10;

/// Flag bit: the body starts with a clear part (its length, then its bytes).
const FLAG_CLEAR: u8 = 0b100;

/// Every flag bit this version knows; others must be 0.
const KNOWN_FLAGS: u8 = FLAG_ENCRYPTED | FLAG_COMPRESSED | FLAG_CLEAR;

/// Length of the clear part's length field, in bytes.
const CLEAR_LEN_LEN: usize = 4;

/// Offset of the reserved byte, which must be 0.
const RESERVED_OFFSET: usize = 7;

/// Offset of the little-endian u32 data key id.
const KEY_ID_OFFSET: usize = 8;

/// Offset of the 12-byte nonce; it runs to the end of the header.
const NONCE_OFFSET: usize = 12;

/// Length of an AES-GCM-SIV nonce, in bytes (RFC 8452 section 4).
pub(crate) const NONCE_LEN: usize = 12;

/// Length of the AES-GCM-SIV tag that ends an encrypted body, in bytes (RFC 8452 section 4).
const TAG_LEN: usize = 16;

/// Length of the BLAKE3 checksum that ends a plaintext body, in bytes.
const CHECKSUM_LEN: usize = 32;

/// A parsed envelope header and its body, borrowed from the envelope's bytes.
///
/// Parsing checks the header's form only; nothing is authenticated until the envelope is
/// opened with [`KeyDomain::open`](crate::KeyDomain::open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// What kind of object the envelope holds.
    pub kind: ObjectKind,
    /// Whether the body is encrypted.
    pub encrypted: bool,
    /// Whether the caller compressed the payload before sealing it.
    pub compressed: bool,
    /// The data key that sealed the body; 0 when not encrypted.
    pub key_id: u32,
    /// The AES-GCM-SIV nonce; all zero when not encrypted.
    pub nonce: [u8; NONCE_LEN],
    /// The clear part: readable without a key, authenticated with the rest once the
    /// envelope is opened. Empty when the envelope has none.
    pub clear: &'a [u8],
    /// Whether the envelope has a clear part (which may be empty).
    pub has_clear: bool,
    /// Everything after the header and the clear part: ciphertext and tag, or payload and
    /// checksum. Parsing guarantees it is at least as long as the tag or checksum.
    pub body: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the header of `bytes`, without I/O and without panicking on any input.
    ///
    /// [`CryptoError::BadEnvelope`] if the input is shorter than the header, the magic or
    /// version is wrong, the kind is unknown, unknown flag bits or the reserved byte are set,
    /// a plaintext envelope has a key id or nonce, or the body is too short to hold its tag
    /// or checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CryptoError> {
        let Some((header, body)) = bytes.split_first_chunk::<ENVELOPE_HEADER_LEN>() else {
            return Err(bad_envelope(format!(
                "it is {} bytes long, shorter than its {ENVELOPE_HEADER_LEN}-byte header",
                bytes.len()
            )));
        };

        if header[..VERSION_OFFSET] != MAGIC {
            return Err(bad_envelope(format!(
                "it starts with bytes {} instead of the magic \"BYO1\"; it is not a blockyard \
                 object",
                hex::encode(&header[..VERSION_OFFSET])
            )));
        }
        let version = header[VERSION_OFFSET];
        if version != VERSION {
            return Err(bad_envelope(format!(
                "version {version} is not supported; this blockyard reads version {VERSION}"
            )));
        }
        let kind = ObjectKind::from_u8(header[KIND_OFFSET]).ok_or_else(|| {
            bad_envelope(format!("object kind {} is unknown", header[KIND_OFFSET]))
        })?;
        let flags = header[FLAGS_OFFSET];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(bad_envelope(format!(
                "flags {flags:#04x} have unknown bits set"
            )));
        }
        let reserved = header[RESERVED_OFFSET];
        if reserved != 0 {
            return Err(bad_envelope(format!(
                "reserved byte 7 is {reserved} instead of 0"
            )));
        }

        let key_id = u32::from_le_bytes([
            header[KEY_ID_OFFSET],
            header[KEY_ID_OFFSET + 1],
            header[KEY_ID_OFFSET + 2],
            header[KEY_ID_OFFSET + 3],
        ]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[NONCE_OFFSET..]);
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        if !encrypted && key_id != 0 {
            return Err(bad_envelope(format!(
                "it is not encrypted but names data key {key_id}"
            )));
        }
        if !encrypted && nonce != [0u8; NONCE_LEN] {
            return Err(bad_envelope("it is not encrypted but has a non-zero nonce"));
        }

        let (trailer_len, trailer) = if encrypted {
            (TAG_LEN, "tag")
        } else {
            (CHECKSUM_LEN, "checksum")
        };
        let has_clear = flags & FLAG_CLEAR != 0;
        let (clear, body) = if has_clear {
            split_clear(body, trailer_len)?
        } else {
            (&body[..0], body)
        };
        if body.len() < trailer_len {
            return Err(bad_envelope(format!(
                "its body is {} bytes long, shorter than its {trailer_len}-byte {trailer}",
                body.len()
            )));
        }

        Ok(Self {
            kind,
            encrypted,
            compressed: flags & FLAG_COMPRESSED != 0,
            key_id,
            nonce,
            clear,
            has_clear,
            body,
        })
    }
}

/// Splits a body flagged as having a clear part into that part and the rest, leaving at
/// least `trailer_len` bytes in the rest.
fn split_clear(body: &[u8], trailer_len: usize) -> Result<(&[u8], &[u8]), CryptoError> {
    let Some((len, rest)) = body.split_first_chunk::<CLEAR_LEN_LEN>() else {
        return Err(bad_envelope(format!(
            "its body is {} bytes long, too short for the length of its clear part",
            body.len()
        )));
    };
    let len = u32::from_le_bytes(*len);
    let room = rest.len().saturating_sub(trailer_len);
    match usize::try_from(len) {
        Ok(len) if len <= room => Ok(rest.split_at(len)),
        _ => Err(bad_envelope(format!(
            "its clear part claims {len} bytes at offset {} where only {room} fit before the \
             trailer",
            ENVELOPE_HEADER_LEN + CLEAR_LEN_LEN
        ))),
    }
}

/// What sealing binds besides the payload: the object's name and its clear part, if any.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) clear: Option<&'a [u8]>,
}

/// Seals `payload` as an encrypted envelope under `cipher`, the data key numbered `key_id`.
///
/// # Panics
///
/// If `payload` is longer than 64 GiB, the most AES-GCM-SIV can seal (RFC 8452 section 6).
pub(crate) fn seal_encrypted(
    cipher: &Aes256GcmSiv,
    key_id: u32,
    nonce: [u8; NONCE_LEN],
    kind: ObjectKind,
    bound: Bound<'_>,
    payload: &[u8],
    compressed: bool,
) -> Vec<u8> {
    let header = header(kind, true, compressed, bound.clear.is_some(), key_id, nonce);

    // Encrypt in place after the header, then append the tag: one allocation, one copy.
    let clear = clear_part(bound.clear);
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + clear.len() + payload.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&clear);
    let start = out.len();
    out.extend_from_slice(payload);
    let tag = cipher
        .encrypt_in_place_detached(
            &Nonce::from(nonce),
            &associated_data(&header, bound.name, &clear),
            &mut out[start..],
        )
        .expect("aes-gcm-siv seals any payload up to 64 GiB");
    out.extend_from_slice(&tag);
    out
}

/// Seals `payload` as a plaintext envelope with a BLAKE3 checksum.
pub(crate) fn seal_plain(
    kind: ObjectKind,
    bound: Bound<'_>,
    payload: &[u8],
    compressed: bool,
) -> Vec<u8> {
    let header = header(
        kind,
        false,
        compressed,
        bound.clear.is_some(),
        0,
        [0u8; NONCE_LEN],
    );
    let clear = clear_part(bound.clear);
    let checksum = checksum(&header, bound.name, &clear, payload);

    let mut out =
        Vec::with_capacity(ENVELOPE_HEADER_LEN + clear.len() + payload.len() + CHECKSUM_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&clear);
    out.extend_from_slice(payload);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Decrypts the body of an encrypted `envelope` whose header bytes are `header`.
///
/// [`CryptoError::Tampered`] if the tag does not match.
pub(crate) fn open_encrypted(
    cipher: &Aes256GcmSiv,
    envelope: &Envelope<'_>,
    header: &[u8; ENVELOPE_HEADER_LEN],
    name: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (ciphertext, tag) = split_trailer::<TAG_LEN>(envelope.body)?;

    let mut payload = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            &Nonce::from(envelope.nonce),
            &associated_data(header, name, &clear_part_of(envelope)),
            &mut payload,
            &Tag::from(*tag),
        )
        .map_err(|_| tampered(envelope.kind, name))?;
    Ok(payload)
}

/// Checks the body of a plaintext `envelope` whose header bytes are `header`.
///
/// [`CryptoError::Tampered`] if the checksum does not match.
pub(crate) fn open_plain(
    envelope: &Envelope<'_>,
    header: &[u8; ENVELOPE_HEADER_LEN],
    name: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (payload, stored) = split_trailer::<CHECKSUM_LEN>(envelope.body)?;

    // `blake3::Hash` compares in constant time; not needed for a checksum, but harmless.
    let clear = clear_part_of(envelope);
    if checksum(header, name, &clear, payload) != blake3::Hash::from_bytes(*stored) {
        return Err(tampered(envelope.kind, name));
    }
    Ok(payload.to_vec())
}

/// The header of a new envelope.
fn header(
    kind: ObjectKind,
    encrypted: bool,
    compressed: bool,
    clear: bool,
    key_id: u32,
    nonce: [u8; NONCE_LEN],
) -> [u8; ENVELOPE_HEADER_LEN] {
    let mut flags = 0;
    if encrypted {
        flags |= FLAG_ENCRYPTED;
    }
    if compressed {
        flags |= FLAG_COMPRESSED;
    }
    if clear {
        flags |= FLAG_CLEAR;
    }

    let mut header = [0u8; ENVELOPE_HEADER_LEN];
    header[..VERSION_OFFSET].copy_from_slice(&MAGIC);
    header[VERSION_OFFSET] = VERSION;
    header[KIND_OFFSET] = kind.as_u8();
    header[FLAGS_OFFSET] = flags;
    header[RESERVED_OFFSET] = 0;
    header[KEY_ID_OFFSET..NONCE_OFFSET].copy_from_slice(&key_id.to_le_bytes());
    header[NONCE_OFFSET..].copy_from_slice(&nonce);
    header
}

/// The clear part as stored: its length and bytes, or nothing for an envelope without one.
///
/// # Panics
///
/// If `clear` is 4 GiB or longer; clear parts hold ids and are a few MiB at most.
fn clear_part(clear: Option<&[u8]>) -> Vec<u8> {
    let Some(clear) = clear else {
        return Vec::new();
    };
    let len = u32::try_from(clear.len()).expect("a clear part is shorter than 4 GiB");
    [len.to_le_bytes().as_slice(), clear].concat()
}

/// The stored clear part of a parsed envelope.
fn clear_part_of(envelope: &Envelope<'_>) -> Vec<u8> {
    clear_part(envelope.has_clear.then_some(envelope.clear))
}

/// The AES-GCM-SIV associated data of an encrypted envelope.
fn associated_data(header: &[u8; ENVELOPE_HEADER_LEN], name: &[u8], clear: &[u8]) -> Vec<u8> {
    [header.as_slice(), &name_len(name), name, clear].concat()
}

/// The checksum that ends a plaintext envelope.
fn checksum(
    header: &[u8; ENVELOPE_HEADER_LEN],
    name: &[u8],
    clear: &[u8],
    payload: &[u8],
) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header);
    hasher.update(&name_len(name));
    hasher.update(name);
    hasher.update(clear);
    hasher.update(payload);
    hasher.finalize()
}

/// A name's length as u32 LE. Names are ids of at most a few dozen bytes; a name of 4 GiB
/// or more would be recorded as `u32::MAX`, which only weakens the separation between such
/// a name and its payload.
fn name_len(name: &[u8]) -> [u8; 4] {
    u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes()
}

/// Splits `body` into its contents and its last `N` bytes.
fn split_trailer<const N: usize>(body: &[u8]) -> Result<(&[u8], &[u8; N]), CryptoError> {
    body.split_last_chunk::<N>()
        .ok_or_else(|| bad_envelope(format!("its body is shorter than its {N}-byte trailer")))
}

/// A [`CryptoError::Tampered`] naming the object: its name as text when that is printable
/// UTF-8 (snapshot ids), else as hex (block and segment ids).
fn tampered(kind: ObjectKind, name: &[u8]) -> CryptoError {
    let name = match std::str::from_utf8(name) {
        _ if name.is_empty() => "with an empty name".to_owned(),
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => hex::encode(name),
    };
    CryptoError::Tampered { kind, name }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plaintext block envelope built byte by byte, with an empty payload.
    fn plaintext_fixture() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"BYO1"); // 0..4 magic
        bytes.push(1); // 4 version
        bytes.push(1); // 5 kind: block
        bytes.push(0b10); // 6 flags: compressed, not encrypted
        bytes.push(0); // 7 reserved
        bytes.extend_from_slice(&0u32.to_le_bytes()); // 8..12 key id: none
        bytes.extend_from_slice(&[0; 12]); // 12..24 nonce: none
        let header: [u8; 24] = bytes.clone().try_into().expect("24 bytes");
        bytes.extend_from_slice(checksum(&header, b"name", b"", b"").as_bytes()); // 24..56 checksum
        bytes
    }

    #[test]
    fn parse_reads_every_header_field() {
        let bytes = plaintext_fixture();

        let envelope = Envelope::parse(&bytes).expect("parses");

        assert_eq!(envelope.kind, ObjectKind::Block);
        assert!(!envelope.encrypted);
        assert!(envelope.compressed);
        assert_eq!(envelope.key_id, 0);
        assert_eq!(envelope.nonce, [0; 12]);
        assert_eq!(envelope.body.len(), 32);
    }

    #[test]
    fn seal_plain_writes_the_documented_layout() {
        let bound = Bound {
            name: b"name",
            clear: None,
        };
        let sealed = seal_plain(ObjectKind::Block, bound, b"", true);

        assert_eq!(sealed, plaintext_fixture());
    }

    #[test]
    fn parse_rejects_every_truncated_header_without_panicking() {
        let bytes = plaintext_fixture();

        for len in 0..ENVELOPE_HEADER_LEN {
            let result = Envelope::parse(&bytes[..len]);
            assert!(
                matches!(result, Err(CryptoError::BadEnvelope { .. })),
                "length {len}"
            );
        }
    }

    #[test]
    fn parse_rejects_a_body_too_short_for_its_checksum_or_tag() {
        let mut encrypted = plaintext_fixture();
        encrypted[FLAGS_OFFSET] = FLAG_ENCRYPTED;
        encrypted[KEY_ID_OFFSET] = 1;
        let plain = plaintext_fixture();

        let short_plain = Envelope::parse(&plain[..ENVELOPE_HEADER_LEN + CHECKSUM_LEN - 1]);
        let short_encrypted = Envelope::parse(&encrypted[..ENVELOPE_HEADER_LEN + TAG_LEN - 1]);
        let just_a_tag = Envelope::parse(&encrypted[..ENVELOPE_HEADER_LEN + TAG_LEN]);

        assert!(matches!(short_plain, Err(CryptoError::BadEnvelope { .. })));
        assert!(matches!(
            short_encrypted,
            Err(CryptoError::BadEnvelope { .. })
        ));
        assert_eq!(
            just_a_tag.expect("an empty ciphertext is fine").body.len(),
            TAG_LEN
        );
    }

    #[test]
    fn parse_rejects_garbled_headers() {
        let cases: [(usize, u8, &str); 9] = [
            (0, b'X', "magic"),
            (VERSION_OFFSET, 2, "version"),
            (KIND_OFFSET, 0, "kind 0"),
            (KIND_OFFSET, 5, "kind 5"),
            (FLAGS_OFFSET, 0b1010, "unknown flag"),
            (FLAGS_OFFSET, 0x80, "high flag"),
            (RESERVED_OFFSET, 1, "reserved"),
            (KEY_ID_OFFSET, 1, "key id without encryption"),
            (NONCE_OFFSET + 11, 1, "nonce without encryption"),
        ];

        for (offset, value, what) in cases {
            let mut bytes = plaintext_fixture();
            bytes[offset] = value;
            let result = Envelope::parse(&bytes);
            assert!(
                matches!(result, Err(CryptoError::BadEnvelope { .. })),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn tampered_names_objects_as_text_or_hex() {
        let text = tampered(ObjectKind::Snapshot, b"snap-0123").to_string();
        let binary = tampered(ObjectKind::Block, &[0, 1, 0xff]).to_string();

        assert!(text.contains("snapshot snap-0123"), "{text}");
        assert!(binary.contains("block 0001ff"), "{binary}");
    }
}

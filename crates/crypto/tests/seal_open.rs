//! Behaviour of key domains: ids, sealing and opening, through the public API only.

use blockyard_crypto::{
    CryptoError, DomainId, DomainSecret, ENVELOPE_HEADER_LEN, Envelope, KeyDomain, ObjectKind,
};
use proptest::prelude::*;

fn encrypted_domain() -> KeyDomain {
    KeyDomain::new(DomainId::generate(), &DomainSecret::generate(), true, 1)
}

fn plaintext_domain() -> KeyDomain {
    KeyDomain::new(DomainId::generate(), &DomainSecret::generate(), false, 1)
}

fn both_domains() -> [KeyDomain; 2] {
    [encrypted_domain(), plaintext_domain()]
}

fn kind_strategy() -> impl Strategy<Value = ObjectKind> {
    prop::sample::select(ObjectKind::ALL.to_vec())
}

proptest! {
    #[test]
    fn encrypted_seal_then_open_returns_payload_and_compressed_flag(
        kind in kind_strategy(),
        name in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..64 * 1024),
        compressed in any::<bool>(),
    ) {
        let keys = encrypted_domain();

        let sealed = keys.seal(kind, &name, &payload, compressed);
        let (opened, was_compressed) = keys.open(kind, &name, &sealed).expect("opens");

        prop_assert_eq!(sealed.len(), ENVELOPE_HEADER_LEN + payload.len() + 16);
        prop_assert_eq!(opened, payload);
        prop_assert_eq!(was_compressed, compressed);
    }

    #[test]
    fn plaintext_seal_then_open_returns_payload_and_compressed_flag(
        kind in kind_strategy(),
        name in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..64 * 1024),
        compressed in any::<bool>(),
    ) {
        let keys = plaintext_domain();

        let sealed = keys.seal(kind, &name, &payload, compressed);
        let (opened, was_compressed) = keys.open(kind, &name, &sealed).expect("opens");

        prop_assert_eq!(sealed.len(), ENVELOPE_HEADER_LEN + payload.len() + 32);
        prop_assert_eq!(&sealed[ENVELOPE_HEADER_LEN..][..payload.len()], &payload[..]);
        prop_assert_eq!(opened, payload);
        prop_assert_eq!(was_compressed, compressed);
    }

    #[test]
    fn flipping_any_single_byte_makes_open_fail(
        encrypted in any::<bool>(),
        kind in kind_strategy(),
        name in prop::collection::vec(any::<u8>(), 0..40),
        payload in prop::collection::vec(any::<u8>(), 0..256),
        compressed in any::<bool>(),
        index in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let keys = if encrypted { encrypted_domain() } else { plaintext_domain() };
        let mut sealed = keys.seal(kind, &name, &payload, compressed);
        let at = index.index(sealed.len());

        sealed[at] ^= mask;
        let result = keys.open(kind, &name, &sealed);

        prop_assert!(result.is_err(), "flipping byte {} with {:#04x} still opened", at, mask);
    }

    #[test]
    fn envelope_parse_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let _ = Envelope::parse(&bytes);
    }
}

#[test]
fn sealing_twice_gives_identical_bytes() {
    for keys in both_domains() {
        let first = keys.seal(ObjectKind::Block, b"name", b"payload", true);
        let second = keys.seal(ObjectKind::Block, b"name", b"payload", true);

        assert_eq!(first, second, "encrypted: {}", keys.is_encrypted());
    }
}

#[test]
fn two_handles_on_one_domain_seal_identically_and_open_each_others_envelopes() {
    let domain = DomainId::generate();
    let secret = DomainSecret::generate();
    let here = KeyDomain::new(domain, &secret, true, 1);
    let there = KeyDomain::new(domain, &secret, true, 1);

    let sealed = here.seal(ObjectKind::Segment, b"segment", b"positions", false);

    assert_eq!(
        sealed,
        there.seal(ObjectKind::Segment, b"segment", b"positions", false)
    );
    assert_eq!(
        there
            .open(ObjectKind::Segment, b"segment", &sealed)
            .expect("opens")
            .0,
        b"positions"
    );
}

#[test]
fn encrypted_envelopes_do_not_show_their_payload() {
    let keys = encrypted_domain();
    let payload = b"a recognisable plaintext that must not appear in the sealed bytes";

    let sealed = keys.seal(ObjectKind::Image, b"img-1", payload, false);
    let envelope = Envelope::parse(&sealed).expect("parses");

    assert!(!sealed.windows(16).any(|window| window == &payload[..16]));
    assert!(envelope.encrypted);
    assert_eq!(envelope.key_id, 1);
    assert_ne!(envelope.nonce, [0; 12]);
}

#[test]
fn opening_under_another_name_is_tampered() {
    for keys in both_domains() {
        let sealed = keys.seal(ObjectKind::Snapshot, b"snap-01", b"record", false);

        let result = keys.open(ObjectKind::Snapshot, b"snap-02", &sealed);

        assert!(matches!(
            &result,
            Err(CryptoError::Tampered { kind: ObjectKind::Snapshot, name }) if name == "snap-02"
        ));
    }
}

#[test]
fn a_name_and_payload_cannot_trade_bytes() {
    for keys in both_domains() {
        let sealed = keys.seal(ObjectKind::Block, b"ab", b"cd", false);

        let result = keys.open(ObjectKind::Block, b"abc", &sealed);

        assert!(
            matches!(result, Err(CryptoError::Tampered { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn opening_as_another_kind_is_a_bad_envelope() {
    for keys in both_domains() {
        let sealed = keys.seal(ObjectKind::Block, b"name", b"payload", false);

        let result = keys.open(ObjectKind::Segment, b"name", &sealed);

        assert!(
            matches!(result, Err(CryptoError::BadEnvelope { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn another_domain_secret_cannot_open_an_encrypted_envelope() {
    let domain = DomainId::generate();
    let ours = KeyDomain::new(domain, &DomainSecret::generate(), true, 1);
    let theirs = KeyDomain::new(domain, &DomainSecret::generate(), true, 1);
    let sealed = ours.seal(ObjectKind::Block, &[7; 32], b"payload", true);

    let result = theirs.open(ObjectKind::Block, &[7; 32], &sealed);

    let error = result.expect_err("another secret must not open it");
    assert!(
        matches!(&error, CryptoError::Tampered { kind: ObjectKind::Block, name }
        if *name == "07".repeat(32))
    );
    assert!(
        error
            .to_string()
            .contains("do not match its authentication tag"),
        "{error}"
    );
}

#[test]
fn encrypted_and_plaintext_domains_refuse_each_others_envelopes() {
    let domain = DomainId::generate();
    let secret = DomainSecret::generate();
    let encrypted = KeyDomain::new(domain, &secret, true, 1);
    let plaintext = KeyDomain::new(domain, &secret, false, 1);
    let sealed_encrypted = encrypted.seal(ObjectKind::Block, b"n", b"p", false);
    let sealed_plain = plaintext.seal(ObjectKind::Block, b"n", b"p", false);

    let in_plaintext = plaintext.open(ObjectKind::Block, b"n", &sealed_encrypted);
    let in_encrypted = encrypted.open(ObjectKind::Block, b"n", &sealed_plain);

    assert!(matches!(
        in_plaintext,
        Err(CryptoError::EncryptedMismatch {
            envelope_encrypted: true
        })
    ));
    assert!(matches!(
        in_encrypted,
        Err(CryptoError::EncryptedMismatch {
            envelope_encrypted: false
        })
    ));
}

#[test]
fn envelopes_of_an_older_data_key_still_open_after_rotation() {
    let domain = DomainId::generate();
    let secret = DomainSecret::generate();
    let before = KeyDomain::new(domain, &secret, true, 1);
    let after = KeyDomain::new(domain, &secret, true, 2);
    let old = before.seal(ObjectKind::Block, b"name", b"old payload", false);

    let new = after.seal(ObjectKind::Block, b"name", b"old payload", false);
    let opened_old = after
        .open(ObjectKind::Block, b"name", &old)
        .expect("old key derives");
    let opened_new = before
        .open(ObjectKind::Block, b"name", &new)
        .expect("new key derives");

    assert_eq!(Envelope::parse(&new).expect("parses").key_id, 2);
    assert_ne!(old, new);
    assert_eq!(opened_old.0, b"old payload");
    assert_eq!(opened_new.0, b"old payload");
}

#[test]
fn an_encrypted_envelope_naming_key_zero_is_an_unknown_key_id() {
    let keys = encrypted_domain();
    let mut sealed = keys.seal(ObjectKind::Block, b"name", b"payload", false);
    sealed[8..12].copy_from_slice(&0u32.to_le_bytes());

    let result = keys.open(ObjectKind::Block, b"name", &sealed);

    assert!(matches!(
        result,
        Err(CryptoError::UnknownKeyId { key_id: 0 })
    ));
}

#[test]
fn an_envelope_naming_another_data_key_is_tampered() {
    let keys = encrypted_domain();
    let mut sealed = keys.seal(ObjectKind::Block, b"name", b"payload", false);
    sealed[8..12].copy_from_slice(&7u32.to_le_bytes());

    let result = keys.open(ObjectKind::Block, b"name", &sealed);

    assert!(
        matches!(result, Err(CryptoError::Tampered { .. })),
        "{result:?}"
    );
}

#[test]
fn truncated_envelopes_fail_to_open_without_panicking() {
    for keys in both_domains() {
        let sealed = keys.seal(ObjectKind::Block, b"name", b"payload", false);

        for len in 0..sealed.len() {
            assert!(
                keys.open(ObjectKind::Block, b"name", &sealed[..len])
                    .is_err(),
                "len {len}"
            );
        }
    }
}

#[test]
fn object_ids_differ_per_kind() {
    let keys = encrypted_domain();

    let ids: Vec<_> = ObjectKind::ALL
        .iter()
        .map(|&kind| keys.object_id(kind, b"data"))
        .collect();

    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn object_ids_differ_per_domain_secret_and_agree_within_one() {
    let domain = DomainId::generate();
    let secret = DomainSecret::generate();
    let ours = KeyDomain::new(domain, &secret, true, 1);
    let ours_again = KeyDomain::new(domain, &secret, false, 3);
    let theirs = KeyDomain::new(domain, &DomainSecret::generate(), true, 1);

    let id = ours.object_id(ObjectKind::Block, b"data");

    assert_eq!(id, ours_again.object_id(ObjectKind::Block, b"data"));
    assert_ne!(id, theirs.object_id(ObjectKind::Block, b"data"));
    assert_ne!(id, ours.object_id(ObjectKind::Block, b"datb"));
    assert_ne!(id.as_bytes(), blake3::hash(b"data").as_bytes());
}

#[test]
fn key_domain_debug_shows_no_key_material() {
    let domain = DomainId::generate();
    let secret = DomainSecret::generate();
    let keys = KeyDomain::new(domain, &secret, true, 1);

    let debug = format!("{keys:?}");

    assert!(debug.contains(&domain.to_string()), "{debug}");
    assert!(!debug.contains(&secret.to_hex()), "{debug}");
    assert!(!debug.contains(&secret.to_hex()[..16]), "{debug}");
}

#[test]
fn key_domain_reports_what_it_was_built_with() {
    let domain = DomainId::generate();
    let keys = KeyDomain::new(domain, &DomainSecret::generate(), true, 5);

    assert_eq!(keys.domain_id(), domain);
    assert!(keys.is_encrypted());
    assert_eq!(keys.current_key_id(), 5);
}

#[test]
#[should_panic(expected = "must be at least 1")]
fn an_encrypted_domain_refuses_data_key_zero() {
    let _ = KeyDomain::new(DomainId::generate(), &DomainSecret::generate(), true, 0);
}

#[test]
fn key_domain_can_be_shared_between_threads() {
    fn assert_shareable<T: Send + Sync + Clone>() {}
    assert_shareable::<KeyDomain>();
}

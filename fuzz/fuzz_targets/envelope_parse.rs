//! `Envelope::parse` over arbitrary bytes: never panics, and an accepted envelope keeps the
//! promises its docs make about the header and body.

#![no_main]

use blockyard_crypto::{ENVELOPE_HEADER_LEN, Envelope};
use libfuzzer_sys::fuzz_target;

/// Length of an encrypted body's AES-GCM-SIV tag, in bytes (RFC 8452 section 4).
const TAG_LEN: usize = 16;

/// Length of a plaintext body's BLAKE3 checksum, in bytes.
const CHECKSUM_LEN: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::parse(data) else {
        return;
    };

    let rest = &data[ENVELOPE_HEADER_LEN..];
    if envelope.has_clear {
        let clear_end = 4 + envelope.clear.len();
        assert_eq!(&rest[4..clear_end], envelope.clear, "the clear part is misplaced");
        assert_eq!(envelope.body, &rest[clear_end..], "the body is not the rest");
    } else {
        assert!(envelope.clear.is_empty(), "a clear part without the flag");
        assert_eq!(envelope.body, rest, "the body is not the rest");
    }
    if envelope.encrypted {
        assert!(envelope.body.len() >= TAG_LEN, "no room for the tag");
    } else {
        assert!(
            envelope.body.len() >= CHECKSUM_LEN,
            "no room for the checksum"
        );
        assert_eq!(envelope.key_id, 0, "a plaintext envelope names a data key");
        assert_eq!(envelope.nonce, [0; 12], "a plaintext envelope has a nonce");
    }
});

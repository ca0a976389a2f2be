//! `Segment::decode` over arbitrary bytes: never panics, and what it accepts is canonical.
//!
//! The segment's id is the keyed hash of its bytes, so two encodings of one segment would be
//! two objects where deduplication expects one. Decoding therefore must accept only the
//! bytes `encode` writes: the round trip is checked byte for byte, not just for equality.

#![no_main]

use blockyard_store::Segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(segment) = Segment::decode(data) else {
        return;
    };

    let encoded = segment.encode();
    assert_eq!(encoded, data, "decode accepted a non-canonical encoding");
    assert_eq!(Segment::decode(&encoded).as_ref(), Ok(&segment));
    assert!(
        !segment.is_empty(),
        "decode accepted a segment without positions"
    );
});

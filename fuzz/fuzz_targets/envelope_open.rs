//! `KeyDomain::open` with a fixed domain, over arbitrary kinds, names and envelopes.
//!
//! The input layout is drawn on `blockyard_fuzz::OpenInput`. Opening must never panic.
//! Sealing is deterministic, so an envelope that opens must be exactly what sealing its
//! payload again gives: with the data key it names, its kind, its name and its compressed
//! bit. Anything else would mean the envelope carries bytes that nothing authenticates.
//!
//! Forging a tag or checksum is out of the fuzzer's reach, so the Ok path is reached from
//! the valid envelopes among the seeds. To exercise sealing on arbitrary payloads too, the
//! input's envelope bytes are also sealed as a payload and must open back unchanged.

#![no_main]

use blockyard_crypto::{Envelope, KeyDomain};
use blockyard_fuzz::OpenInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = OpenInput::split(data) else {
        return;
    };
    let keys = blockyard_fuzz::key_domain(input.encrypted);

    if let Ok(opened) = keys.open_with_clear(input.kind, input.name, input.envelope) {
        let parsed = Envelope::parse(input.envelope).expect("an opened envelope parses");
        let sealer = if parsed.encrypted && parsed.key_id != keys.current_key_id() {
            KeyDomain::new(
                keys.domain_id(),
                &blockyard_fuzz::secret(),
                true,
                parsed.key_id,
            )
        } else {
            keys.clone()
        };
        let resealed = if parsed.has_clear {
            sealer.seal_with_clear(
                input.kind,
                input.name,
                &opened.clear,
                &opened.payload,
                opened.compressed,
            )
        } else {
            sealer.seal(input.kind, input.name, &opened.payload, opened.compressed)
        };
        assert_eq!(
            resealed, input.envelope,
            "an opened envelope is not its own re-seal"
        );
    }

    let sealed = keys.seal(input.kind, input.name, input.envelope, input.compressed);
    let opened = keys
        .open(input.kind, input.name, &sealed)
        .expect("a fresh seal opens");
    assert_eq!(opened, (input.envelope.to_vec(), input.compressed));
});

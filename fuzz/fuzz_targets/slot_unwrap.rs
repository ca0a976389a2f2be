//! A key slot as the store reads it: JSON from `keys/slots/<name>`, then `KeySlot::unwrap`
//! with the fixed raw master key. Never panics; a slot that unwraps must give the fixed
//! secret, since only the fixed master key could have wrapped one for this domain and name.
//!
//! Passphrases are left out on purpose: a slot may ask Argon2id for up to 4 GiB and
//! 64 passes (`MAX_ARGON2_M_COST_KIB` in `keys/slot.rs`), a bound chosen above libFuzzer's
//! 2 GiB memory limit, so every such input would be reported as a crash the code intends.

#![no_main]

use blockyard_crypto::KeySlot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(slot) = serde_json::from_slice::<KeySlot>(data) else {
        return;
    };
    let master = blockyard_fuzz::master_key();

    if let Ok(secret) = slot.unwrap(
        &master,
        blockyard_fuzz::domain_id(),
        blockyard_fuzz::SLOT_NAME,
    ) {
        assert_eq!(
            secret.to_hex(),
            blockyard_fuzz::SECRET_HEX,
            "a slot unwrapped to a stranger"
        );
    }
});

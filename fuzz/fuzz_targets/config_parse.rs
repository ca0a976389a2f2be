//! A store's `config` object, read through `Store::open_on`: the parser itself is private
//! to the store crate. The input becomes the config of an in-memory store that also holds a
//! key slot of the fixed domain, and the store is opened with the slot's master key, so an
//! encrypted config naming the fixed domain goes all the way to deriving keys.
//!
//! Opening must return, Ok or Err, without panicking; a config that opens must hold the
//! values the parser promises to have checked.

#![no_main]

use std::sync::Arc;

use blockyard_formats::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use blockyard_store::{Location, Store};
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;

fuzz_target!(|data: &[u8]| {
    let runtime = blockyard_fuzz::runtime();
    let master = blockyard_fuzz::master_key();

    let opened = runtime.block_on(async {
        let objects = InMemory::new();
        let slot_path = format!("keys/slots/{}", blockyard_fuzz::SLOT_NAME);
        blockyard_fuzz::put(&objects, &slot_path, slot()).await;
        blockyard_fuzz::put(&objects, "config", data.to_vec()).await;
        Store::open_on(Arc::new(objects), Location::Memory, Some(&master)).await
    });

    let Ok(store) = opened else {
        return;
    };
    let config = store.config();
    assert!(config.block_size.is_power_of_two());
    assert!((MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&config.block_size));
    assert!((1..=1 << 20).contains(&config.segment_blocks));
    assert_eq!(store.keys().is_encrypted(), config.key_domain.encrypted);
    assert!(!config.key_domain.encrypted || config.key_domain.current_key_id >= 1);
});

/// The fixed slot, wrapped once per process: wrapping draws a random salt and nonce.
fn slot() -> Vec<u8> {
    static SLOT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SLOT.get_or_init(blockyard_fuzz::slot_json).clone()
}

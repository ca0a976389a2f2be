//! `Store::decode_block`: opening, decompressing and checking a stored block.
//!
//! A block's envelope is checksummed, so raw bytes would stop at the checksum. Instead the
//! input is sealed as the block's payload with the store's keys, and zstd gets to chew on it:
//!
//! ```text
//! offset  size  field
//! 0       1     bit 0: mark the payload compressed; bit 1: name the block by the hash of
//!               the payload, so that an uncompressed one passes the final id check
//! 1       rest  the payload
//! ```
//!
//! Decoding must never panic and never allocate past the store's 4 KiB block size, however
//! large a frame claims to decompress to; a block it accepts is at most one block long. An
//! uncompressed payload of at most a block must come back as it went in. Whether a block
//! hashes to its id is not `decode_block`'s to check (the id is bound into the envelope;
//! `verify_block_id` re-hashes for `check --read-data`), so it is checked here only to agree
//! with `verify_block_id`.

#![no_main]

use std::sync::OnceLock;

use blockyard_crypto::{ObjectId, ObjectKind};
use blockyard_store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let store = store();
    let compressed = selector & 0b01 != 0;
    let id = if selector & 0b10 != 0 {
        store.block_id(payload)
    } else {
        ObjectId::from_bytes([0x5a; 32])
    };
    let sealed = store
        .keys()
        .seal(ObjectKind::Block, id.as_bytes(), payload, compressed);

    let decoded = store.decode_block(&id, &sealed);

    if let Ok(block) = &decoded {
        assert!(
            block.len() as u64 <= store.block_size(),
            "a block longer than the block size"
        );
        let hashes_to_id = store.block_id(block) == id;
        assert_eq!(store.verify_block_id(&id, block).is_ok(), hashes_to_id);
    }
    if !compressed && payload.len() as u64 <= store.block_size() {
        let block = decoded.expect("an uncompressed block of at most a block decodes");
        assert_eq!(block, payload, "an uncompressed block came back changed");
    }
});

/// The store, opened once per process.
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        blockyard_fuzz::runtime()
            .block_on(blockyard_fuzz::plain_store())
            .1
    })
}

//! Shared helpers: deterministic block contents, snapshot writing and reading.

use std::collections::HashMap;
use std::sync::Arc;

use blockyard_crypto::{MasterKey, ObjectId};
use blockyard_store::{
    CheckOptions, InitOptions, NoProgress, SnapshotId, SnapshotOptions, SnapshotReader,
    SnapshotRecord, SnapshotWriter, Store,
};

/// The block size of every store in the suite: small, so that tests stay fast.
pub(crate) const BLOCK_SIZE: u64 = 64 << 10;

/// [`BLOCK_SIZE`] as a buffer length.
pub(crate) const BLOCK: usize = 64 << 10;

/// A disk of 600 MiB in 64 KiB blocks has 9600 positions: three manifest segments of
/// 4096, 4096 and 1408 positions.
pub(crate) const THREE_SEGMENT_DISK: u64 = 600 << 20;

/// A raw master key: 32 bytes, as a key file would hold.
pub(crate) const KEY: [u8; 32] = [0x42; 32];

pub(crate) fn small_blocks(master_key: Option<MasterKey>) -> InitOptions {
    InitOptions {
        block_size: Some(BLOCK_SIZE),
        master_key,
    }
}

pub(crate) fn raw_key(bytes: [u8; 32]) -> MasterKey {
    MasterKey::from_key_bytes(bytes.to_vec()).expect("a 32-byte key is long enough")
}

pub(crate) fn passphrase(text: &str) -> MasterKey {
    MasterKey::from_passphrase(text.to_owned()).expect("a non-empty passphrase")
}

/// `len` pseudo-random bytes from `seed`: incompressible, and different for every seed.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64*, seeded through a multiply so that small seeds differ from the start.
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn block_path(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("blocks/{}/{hex}", &hex[..3])
}

pub(crate) fn zero_fill(size: u64) -> SnapshotOptions {
    SnapshotOptions {
        size,
        ..SnapshotOptions::default()
    }
}

/// Begins a snapshot with `options`, puts `blocks` in the order given and commits.
pub(crate) async fn write_snapshot(
    store: &Store,
    options: SnapshotOptions,
    blocks: &[(u64, Vec<u8>)],
) -> SnapshotRecord {
    let writer = SnapshotWriter::begin(store, options).await.expect("begin");
    for (index, data) in blocks {
        writer.put_block(*index, data.clone()).await.expect("put");
    }
    writer.commit().await.expect("commit")
}

/// Every block of a snapshot, `None` where it reads as zero.
pub(crate) async fn read_every_block(store: &Store, id: &SnapshotId) -> Vec<Option<Vec<u8>>> {
    let reader = SnapshotReader::open(store, id).await.expect("open reader");
    let mut blocks = Vec::new();
    for index in 0..reader.record().block_count() {
        blocks.push(reader.read_block(index).await.expect("read block"));
    }
    blocks
}

/// What [`read_every_block`] should give for a disk of `count` blocks holding `blocks`.
pub(crate) fn expected_blocks(count: u64, blocks: &[(u64, Vec<u8>)]) -> Vec<Option<Vec<u8>>> {
    let by_index: HashMap<u64, &Vec<u8>> = blocks.iter().map(|(i, d)| (*i, d)).collect();
    (0..count)
        .map(|index| by_index.get(&index).map(|data| (*data).clone()))
        .collect()
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

pub(crate) fn progress() -> Arc<NoProgress> {
    Arc::new(NoProgress)
}

pub(crate) fn full_check() -> CheckOptions {
    CheckOptions {
        read_data: true,
        sample_percent: None,
    }
}

/// A disk of 6 blocks whose last is 1000 bytes long, put out of order: data at 4, 0, 5
/// and 2; block 1 put as all-zero bytes; block 3 never put.
pub(crate) fn out_of_order_disk() -> (u64, Vec<(u64, Vec<u8>)>) {
    let size = 5 * BLOCK_SIZE + 1000;
    let blocks = vec![
        (4, noise(4, BLOCK)),
        (0, noise(0, BLOCK)),
        (5, noise(5, 1000)),
        (1, vec![0; BLOCK]),
        (2, noise(2, BLOCK)),
    ];
    (size, blocks)
}

/// Two snapshots: `a` holds blocks seeded 1 and 2, `b` holds 2 and 3, so block 1 is `a`'s
/// alone and block 2 is shared.
pub(crate) async fn two_snapshots(store: &Store) -> (SnapshotRecord, SnapshotRecord) {
    let a = write_snapshot(
        store,
        zero_fill(4 * BLOCK_SIZE),
        &[(0, noise(1, BLOCK)), (1, noise(2, BLOCK))],
    )
    .await;
    let b = write_snapshot(
        store,
        zero_fill(4 * BLOCK_SIZE),
        &[(2, noise(2, BLOCK)), (3, noise(3, BLOCK))],
    )
    .await;
    (a, b)
}

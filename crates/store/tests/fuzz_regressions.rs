//! Inputs the fuzz targets in `fuzz/` found wrong, kept as tests: one per finding, each
//! feeding the exact bytes saved under `fuzz/regressions/<target>/`.
//!
//! The `record_parse` target reads records from a store it builds once (`RecordFixture` in
//! `fuzz/src/lib.rs`): a fixed key domain, 4 KiB blocks, segments of four positions. A saved
//! record names that store's segments by id, and ids are keyed hashes, so the store below
//! rebuilds exactly the objects a saved record needs, under the same fixed secret. Each test
//! first checks that its record reads, so that drift between the two cannot turn a test into
//! one that passes without reaching the code it is about.

use std::sync::Arc;

use blockyard_crypto::ObjectKind;
use blockyard_store::{
    Fill, Location, Segment, Session, SnapshotId, SnapshotOptions, SnapshotReader, SnapshotWriter,
    Store,
};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;

/// The config of the fuzz fixture's store: unencrypted, domain "blockyard-fuzz!!" with the
/// fixed secret 00 01 02 … 1f, 4 KiB blocks, four positions per segment.
const FUZZ_STORE_CONFIG: &str = r#"{
  "format": "blockyard",
  "version": 1,
  "required_features": ["blake3-keyed-ids", "zstd"],
  "block_size": 4096,
  "segment_blocks": 4,
  "key_domain": {
    "id": "626c6f636b796172642d66757a7a2121",
    "encrypted": false,
    "current_key_id": 1,
    "plaintext_secret": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
  },
  "compression_level": 1
}"#;

/// Block size of the fuzz fixture's store, in bytes.
const BLOCK: usize = 4096;

/// The bytes of a fuzz fixture block: the same formula as `pattern` in `fuzz/src/lib.rs`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 7).to_le_bytes()[0]).wrapping_mul(31))
        .collect()
}

/// The fuzz fixture's store, opened over memory, and a handle on its objects.
async fn fuzz_store() -> (Store, Arc<InMemory>) {
    let objects = Arc::new(InMemory::new());
    objects
        .put(
            &Path::from("config"),
            FUZZ_STORE_CONFIG.as_bytes().to_vec().into(),
        )
        .await
        .expect("put the config");
    let store = Store::open_on(Arc::clone(&objects) as _, Location::Memory, None)
        .await
        .expect("the fuzz store's config opens");
    (store, objects)
}

/// Stores `data` as a block and returns its id.
async fn put_block(store: &Store, data: &[u8]) -> blockyard_crypto::ObjectId {
    let id = store.block_id(data);
    store
        .put_block(&id, store.encode_block(&id, data))
        .await
        .expect("put a block");
    id
}

/// Seals `json` as the commit record of `id` and stores it, as the `record_parse` target
/// does with its input.
async fn put_record(store: &Store, objects: &InMemory, id: SnapshotId, json: &[u8]) {
    let name = id.to_string();
    let sealed = store
        .keys()
        .seal(ObjectKind::Snapshot, name.as_bytes(), json, false);
    objects
        .put(&Path::from(format!("snapshots/{name}")), sealed.into())
        .await
        .expect("put the record");
}

/// `SnapshotWriter` with `Fill::Parent` used to number the parent's segments by the store's
/// segment size, not by the parent record's own `segment_blocks`, which readers honour.
/// This record is the fixture's ten-block base snapshot cut into segments of eight. Its
/// child, cut into fours, took positions 4..8 from the parent's second segment (positions
/// 8..10) and found no third one: it named the parent's 100-byte block 9 at position 5 and
/// read block 9 as zeros, and committed without an error. The child must either be refused
/// or read as its parent.
#[tokio::test]
async fn a_fill_parent_child_of_a_record_with_other_segment_sizes_reads_as_its_parent() {
    let (store, objects) = fuzz_store().await;
    let blocks = [
        put_block(&store, &pattern(1, BLOCK)).await,
        put_block(&store, &pattern(2, BLOCK)).await,
        put_block(&store, &pattern(3, BLOCK)).await,
        put_block(&store, &pattern(4, 100)).await,
    ];
    // Eight positions with data at 0, 1 and 5, then the two last positions with data at 9.
    let mut first = Segment::zeroed(8);
    first.set(0, Some(blocks[0]));
    first.set(1, Some(blocks[1]));
    first.set(5, Some(blocks[2]));
    let mut second = Segment::zeroed(2);
    second.set(1, Some(blocks[3]));
    let session = Session::begin(&store.raw(), "test")
        .await
        .expect("a session");
    store
        .put_segment(&first, &session)
        .await
        .expect("put a segment");
    store
        .put_segment(&second, &session)
        .await
        .expect("put a segment");
    session.end().await.expect("end the session");
    let id: SnapshotId = "snap-0000000000000000000000000f0220ed"
        .parse()
        .expect("the fuzz snapshot id");
    let input = include_bytes!(
        "../../../fuzz/regressions/record_parse/fill_parent_child_of_a_record_with_8_block_segments"
    );
    put_record(&store, &objects, id, input).await;
    let parent = SnapshotReader::open(&store, &id)
        .await
        .expect("the saved record reads in the rebuilt store");
    let mut in_parent = Vec::new();
    for index in 0..parent.record().block_count() {
        in_parent.push(
            parent
                .block_id(index)
                .await
                .expect("every parent block id reads"),
        );
    }
    assert_eq!(
        in_parent.iter().flatten().count(),
        4,
        "the rebuilt store drifted"
    );

    let options = SnapshotOptions {
        size: parent.record().size,
        parent: Some(id),
        fill: Fill::Parent,
        ..SnapshotOptions::default()
    };
    let child = match SnapshotWriter::begin(&store, options).await {
        Ok(writer) => writer.commit().await,
        Err(refused) => Err(refused),
    };

    let Ok(child) = child else {
        return;
    };
    let child = SnapshotReader::open(&store, &child.id)
        .await
        .expect("a committed child opens");
    for (index, expected) in (0..).zip(&in_parent) {
        let found = child.block_id(index).await.expect("child block id");
        assert_eq!(found, *expected, "block {index}");
    }
}

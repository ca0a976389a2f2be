//! A snapshot's commit record, read through the public API: the record parser is private to
//! the store crate.
//!
//! Records are sealed, so raw bytes would only ever reach the envelope check. Instead the
//! input is sealed as the record's JSON payload with the store's own keys and stored under
//! `snapshots/<SNAPSHOT_ID>`. Then everything that consumes a record runs on it:
//!
//! - `Store::snapshot`, and a `SnapshotReader`: the first and last block, every data block,
//!   and a diff against the fixture's base snapshot;
//! - `check`, which reads every record and segment in the store;
//! - a `Fill::Parent` child of the record that puts nothing. It must read block for block
//!   as the record does: a child that keeps its parent's blocks and changes none is a copy.
//!
//! The store (see `RecordFixture`) holds real segments and blocks that a record can name, so
//! the reader goes past "segment not found". Every call must return, Ok or Err, without
//! panicking and without allocating beyond what the input justifies (libFuzzer's
//! `-rss_limit_mb` catches the rest).

#![no_main]

use std::sync::{Arc, OnceLock};

use blockyard_crypto::{ObjectId, ObjectKind};
use blockyard_fuzz::RecordFixture;
use blockyard_store::{
    CheckOptions, Fill, NoProgress, SnapshotId, SnapshotOptions, SnapshotReader, SnapshotWriter,
    Store, check, diff, record_references,
};
use libfuzzer_sys::fuzz_target;

/// Blocks of the record compared with its child's, from the first: enough to cross several
/// segments of any size a fuzzed record can name, few enough to keep inputs fast.
const COMPARED_BLOCKS: u64 = 64;

fuzz_target!(|data: &[u8]| {
    let runtime = blockyard_fuzz::runtime();
    let fixture = fixture();
    let id = blockyard_fuzz::snapshot_id();
    let name = id.to_string();
    // The clear part repeats the record's segments; take them from the JSON when it has
    // them, so that the reader gets past the comparison of the two.
    let segments: Vec<ObjectId> = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|json| serde_json::from_value(json.get("segments")?.clone()).ok())
        .unwrap_or_default();
    let sealed = fixture.store.keys().seal_with_clear(
        ObjectKind::Snapshot,
        name.as_bytes(),
        &record_references(&segments),
        data,
        false,
    );

    runtime.block_on(async {
        blockyard_fuzz::put(&fixture.objects, &format!("snapshots/{name}"), sealed).await;
        let record = fixture.store.snapshot(&id).await;
        let _ = check(
            &fixture.store,
            CheckOptions::default(),
            Arc::new(NoProgress),
        )
        .await;
        let Ok(reader) = SnapshotReader::open(&fixture.store, &id).await else {
            assert!(
                record.is_err(),
                "the record reads but the reader refuses it"
            );
            return;
        };

        let blocks = reader.record().block_count();
        for index in [0, blocks.saturating_sub(1)] {
            if let Ok(Some(block)) = reader.read_block(index).await {
                assert_eq!(block.len() as u64, reader.block_len(index));
            }
        }
        if let Ok(data_blocks) = reader.data_blocks().await {
            assert!(data_blocks.iter().all(|(index, _)| *index < blocks));
        }
        let base = SnapshotReader::open(&fixture.store, &fixture.base.id)
            .await
            .expect("the base snapshot opens");
        let _ = diff(&base, &reader).await;

        compare_with_a_child(&fixture.store, &reader).await;
    });
});

/// Commits a child of `parent` that keeps all its blocks and puts none, checks that it
/// names the same block at every position the parent can read, and deletes it again so that
/// the store does not grow with every input.
async fn compare_with_a_child(store: &Store, parent: &SnapshotReader) {
    let options = SnapshotOptions {
        size: parent.record().size,
        parent: Some(parent.record().id),
        fill: Fill::Parent,
        ..SnapshotOptions::default()
    };
    let Ok(writer) = SnapshotWriter::begin(store, options).await else {
        return;
    };
    let Ok(child) = writer.commit().await else {
        return;
    };

    let same = same_blocks(store, parent, child.id).await;
    store
        .delete_snapshot(&child.id)
        .await
        .expect("the child is deleted");
    if let Err(message) = same {
        panic!("{message}");
    }
}

/// The first position where `child` names another block than `parent`, as a message.
async fn same_blocks(
    store: &Store,
    parent: &SnapshotReader,
    child: SnapshotId,
) -> Result<(), String> {
    let child = SnapshotReader::open(store, &child)
        .await
        .expect("a child just committed opens");
    let blocks = parent.record().block_count().min(COMPARED_BLOCKS);
    for index in 0..blocks {
        let Ok(in_parent) = parent.block_id(index).await else {
            continue;
        };
        let in_child = child.block_id(index).await;
        if in_child.as_ref().ok() != Some(&in_parent) {
            return Err(format!(
                "a Fill::Parent child that puts nothing reads block {index} as {in_child:?} \
                 where its parent has {in_parent:?} (parent segment size {}, store's {})",
                parent.record().segment_blocks,
                store.config().segment_blocks
            ));
        }
    }
    Ok(())
}

/// The store and its snapshots, built once per process.
fn fixture() -> &'static RecordFixture {
    static FIXTURE: OnceLock<RecordFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| blockyard_fuzz::runtime().block_on(RecordFixture::build()))
}

//! Regression tests, one per bug the suite found. Each case states the contract the store
//! keeps.

use blockyard_store::{
    Fill, SnapshotOptions, SnapshotReader, SnapshotRecord, SnapshotWriter, Store, StoreError,
};

use crate::Backend;
use crate::support::{
    BLOCK, BLOCK_SIZE, noise, read_every_block, two_snapshots, write_snapshot, zero_fill,
};

/// A put below `seal_segments_below`'s mark used to answer `Ok(New)` while the block never
/// reached the manifest; it must be refused or kept.
pub(crate) async fn a_put_below_sealed_segments_is_refused_or_kept(backend: &Backend) {
    let store = backend.plain_store().await;
    let writer = SnapshotWriter::begin(&store, zero_fill(2 * 4096 * BLOCK_SIZE))
        .await
        .expect("begin");
    writer.seal_segments_below(4096).await.expect("seal");
    let data = noise(5, BLOCK);

    let put = writer.put_block(5, data.clone()).await;
    let record = writer.commit().await.expect("commit");

    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    let kept = reader.read_block(5).await.expect("read");
    assert!(
        put.is_err() || kept == Some(data),
        "put answered {put:?}, yet block 5 reads as {:?}",
        kept.map(|block| block.len())
    );
}

/// Commits a [`Fill::Parent`] child of `size` on `parent` with nothing put, or returns the
/// refusal.
async fn resized_child(
    store: &Store,
    parent: &SnapshotRecord,
    size: u64,
) -> Result<SnapshotRecord, StoreError> {
    let options = SnapshotOptions {
        size,
        parent: Some(parent.id),
        fill: Fill::Parent,
        ..SnapshotOptions::default()
    };
    SnapshotWriter::begin(store, options).await?.commit().await
}

/// A child larger than a parent with a short last block used to inherit that short block
/// where it needs a full one, and commit a snapshot that could not be restored.
pub(crate) async fn a_grown_fill_parent_child_is_refused_or_reads_as_the_grown_parent(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let tail = noise(2, 100);
    let blocks = [(0, noise(0, BLOCK)), (2, tail.clone())];
    let parent = write_snapshot(&store, zero_fill(2 * BLOCK_SIZE + 100), &blocks).await;

    let child = resized_child(&store, &parent, 4 * BLOCK_SIZE).await;

    // Refusing to resize is one right answer; a committed snapshot that cannot be read is not.
    let Ok(child) = child else { return };
    let mut grown_tail = tail;
    grown_tail.resize(BLOCK, 0);
    let expected = [Some(noise(0, BLOCK)), None, Some(grown_tail), None];
    assert_eq!(read_every_block(&store, &child.id).await, expected);
}

/// The same the other way: a smaller child must not keep the parent's full block where its
/// own last block is 10 bytes long.
pub(crate) async fn a_shrunk_fill_parent_child_is_refused_or_reads_as_the_cut_parent(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let blocks = [(0, noise(0, BLOCK)), (1, noise(1, BLOCK))];
    let parent = write_snapshot(&store, zero_fill(3 * BLOCK_SIZE), &blocks).await;

    let child = resized_child(&store, &parent, BLOCK_SIZE + 10).await;

    let Ok(child) = child else { return };
    let expected = [Some(noise(0, BLOCK)), Some(noise(1, 10))];
    assert_eq!(read_every_block(&store, &child.id).await, expected);
}

/// `delete_snapshot` used to read the record first and so failed on a damaged one: the
/// snapshot `check` names as damaged must stay deletable.
pub(crate) async fn a_snapshot_with_a_damaged_commit_record_can_be_deleted(backend: &Backend) {
    let store = backend.plain_store().await;
    let (a, b) = two_snapshots(&store).await;
    backend
        .write_object(&format!("snapshots/{}", a.id), noise(9, 100))
        .await;

    let result = store.delete_snapshot(&a.id).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(store.snapshot_ids().await.expect("list"), [b.id]);
}

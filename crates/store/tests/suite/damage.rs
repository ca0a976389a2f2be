//! Damaged and missing objects: how reads fail and what `check` reports.

use std::collections::BTreeSet;

use blockyard_store::{
    CheckOptions, SnapshotId, SnapshotReader, SnapshotWriter, StoreError, check,
};

use crate::Backend;
use crate::support::{
    BLOCK, BLOCK_SIZE, block_path, full_check, noise, progress, two_snapshots, write_snapshot,
    zero_fill,
};

pub(crate) async fn a_block_object_overwritten_with_garbage_reads_as_corrupt(backend: &Backend) {
    let store = backend.plain_store().await;
    let block = noise(1, BLOCK);
    let record = write_snapshot(&store, zero_fill(BLOCK_SIZE), &[(0, block.clone())]).await;
    let id = store.block_id(&block);
    backend
        .write_object(&block_path(&id), noise(99, 5000))
        .await;

    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    let result = reader.read_block(0).await;

    let Err(StoreError::Corrupt { what, name, .. }) = &result else {
        panic!("not Corrupt: {result:?}");
    };
    assert_eq!((*what, name.as_str()), ("block", id.to_hex().as_str()));
}

pub(crate) async fn a_block_object_with_any_one_byte_flipped_reads_as_corrupt(backend: &Backend) {
    let store = backend.plain_store().await;
    let block = noise(1, BLOCK);
    let record = write_snapshot(&store, zero_fill(BLOCK_SIZE), &[(0, block.clone())]).await;
    let path = block_path(&store.block_id(&block));
    let sealed = backend.read_object(&path).await;
    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    // Every header byte, and the start, middle and end of the body.
    let len = sealed.len();
    let offsets: Vec<usize> = (0..24).chain([24, len / 2, len - 1]).collect();

    for offset in offsets {
        let mut flipped = sealed.clone();
        flipped[offset] ^= 0xff;
        backend.write_object(&path, flipped).await;

        let result = reader.read_block(0).await;

        assert!(
            matches!(result, Err(StoreError::Corrupt { what: "block", .. })),
            "byte {offset} flipped: {result:?}"
        );
    }
    backend.write_object(&path, sealed).await;
    assert_eq!(reader.read_block(0).await.expect("read"), Some(block));
}

pub(crate) async fn a_deleted_block_object_reads_as_missing(backend: &Backend) {
    let store = backend.plain_store().await;
    let block = noise(1, BLOCK);
    let record = write_snapshot(&store, zero_fill(BLOCK_SIZE), &[(0, block.clone())]).await;
    backend
        .delete_object(&block_path(&store.block_id(&block)))
        .await;

    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    let result = reader.read_block(0).await;

    assert!(
        matches!(result, Err(StoreError::Missing { what: "block", .. })),
        "{result:?}"
    );
}

pub(crate) async fn check_passes_a_healthy_store_reading_every_block(backend: &Backend) {
    let store = backend.plain_store().await;
    two_snapshots(&store).await;

    let report = check(&store, full_check(), progress())
        .await
        .expect("check");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.damaged_snapshots.is_empty());
    assert_eq!(report.snapshots, 2);
    assert_eq!(report.blocks_referenced, 3);
    assert_eq!(report.blocks_read, 3);
    assert_eq!(report.blocks_unreferenced, 0);
}

pub(crate) async fn check_with_read_data_reports_a_damaged_block_naming_its_snapshot(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, _) = two_snapshots(&store).await;
    let damaged = store.block_id(&noise(1, BLOCK));
    backend
        .write_object(&block_path(&damaged), noise(99, 5000))
        .await;

    let report = check(&store, full_check(), progress())
        .await
        .expect("check");

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.object, format!("block {damaged}"));
    assert_eq!(problem.snapshots, [a.id]);
    assert!(problem.error.contains("damaged"), "{}", problem.error);
    assert_eq!(report.damaged_snapshots, BTreeSet::from([a.id]));
}

pub(crate) async fn check_names_every_snapshot_that_shares_a_damaged_block(backend: &Backend) {
    let store = backend.plain_store().await;
    let (a, b) = two_snapshots(&store).await;
    let shared = store.block_id(&noise(2, BLOCK));
    let path = block_path(&shared);
    let mut sealed = backend.read_object(&path).await;
    let middle = sealed.len() / 2;
    sealed[middle] ^= 1;
    backend.write_object(&path, sealed).await;

    let report = check(&store, full_check(), progress())
        .await
        .expect("check");

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let named: BTreeSet<SnapshotId> = report.problems[0].snapshots.iter().copied().collect();
    assert_eq!(named, BTreeSet::from([a.id, b.id]));
    assert_eq!(report.damaged_snapshots, BTreeSet::from([a.id, b.id]));
}

pub(crate) async fn check_without_read_data_passes_a_damaged_block_that_is_present(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    two_snapshots(&store).await;
    let damaged = store.block_id(&noise(1, BLOCK));
    backend
        .write_object(&block_path(&damaged), noise(99, 5000))
        .await;

    let report = check(&store, CheckOptions::default(), progress())
        .await
        .expect("check");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.blocks_referenced, 3);
    assert_eq!(report.blocks_read, 0);
}

pub(crate) async fn check_reports_a_deleted_block_as_missing_naming_its_snapshot(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, _) = two_snapshots(&store).await;
    let deleted = store.block_id(&noise(1, BLOCK));
    backend.delete_object(&block_path(&deleted)).await;

    let report = check(&store, CheckOptions::default(), progress())
        .await
        .expect("check");

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.object, format!("block {deleted}"));
    assert!(problem.error.contains("missing"), "{}", problem.error);
    assert_eq!(problem.snapshots, [a.id]);
    assert_eq!(report.damaged_snapshots, BTreeSet::from([a.id]));
}

pub(crate) async fn a_block_object_replaced_by_another_valid_block_reads_as_corrupt(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, _) = two_snapshots(&store).await;
    let own = block_path(&store.block_id(&noise(1, BLOCK)));
    let other = backend
        .read_object(&block_path(&store.block_id(&noise(2, BLOCK))))
        .await;
    backend.write_object(&own, other).await;

    let reader = SnapshotReader::open(&store, &a.id).await.expect("open");
    let result = reader.read_block(0).await;

    assert!(
        matches!(result, Err(StoreError::Corrupt { what: "block", .. })),
        "{result:?}"
    );
}

pub(crate) async fn a_commit_record_copied_under_another_snapshots_name_is_refused(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, b) = two_snapshots(&store).await;
    let record_of_a = backend.read_object(&format!("snapshots/{}", a.id)).await;
    backend
        .write_object(&format!("snapshots/{}", b.id), record_of_a)
        .await;

    let result = store.snapshot(&b.id).await;
    let report = check(&store, CheckOptions::default(), progress())
        .await
        .expect("check");

    assert!(
        matches!(
            result,
            Err(StoreError::Corrupt {
                what: "snapshot record",
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(report.damaged_snapshots, BTreeSet::from([b.id]));
}

pub(crate) async fn check_reports_a_damaged_manifest_segment_naming_its_snapshots(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, _) = two_snapshots(&store).await;
    let segment = a.segments[0];
    let hex = segment.to_hex();
    let path = format!("manifests/{}/{hex}", &hex[..3]);
    backend.write_object(&path, noise(5, 300)).await;

    let report = check(&store, CheckOptions::default(), progress())
        .await
        .expect("check");
    let reader = SnapshotReader::open(&store, &a.id).await.expect("open");
    let read = reader.read_block(0).await;

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].object, format!("segment {segment}"));
    assert_eq!(report.problems[0].snapshots, [a.id]);
    assert_eq!(report.damaged_snapshots, BTreeSet::from([a.id]));
    assert!(
        matches!(
            read,
            Err(StoreError::Corrupt {
                what: "manifest segment",
                ..
            })
        ),
        "{read:?}"
    );
}

pub(crate) async fn check_counts_the_blocks_of_an_abandoned_writer_as_unreferenced(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    write_snapshot(&store, zero_fill(BLOCK_SIZE), &[(0, noise(1, BLOCK))]).await;
    let abandoned = SnapshotWriter::begin(&store, zero_fill(2 * BLOCK_SIZE))
        .await
        .expect("begin");
    abandoned.put_block(0, noise(2, BLOCK)).await.expect("put");
    abandoned.put_block(1, noise(3, BLOCK)).await.expect("put");
    drop(abandoned);

    let report = check(&store, full_check(), progress())
        .await
        .expect("check");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.blocks_referenced, 1);
    assert_eq!(report.blocks_read, 1);
    assert_eq!(report.blocks_unreferenced, 2);
}

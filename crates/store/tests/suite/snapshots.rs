//! Writing and reading snapshots: order, deduplication, parents, writer errors, deletion.

use std::collections::BTreeMap;
use std::sync::Arc;

use blockyard_store::{
    BlockCounts, Fill, PutOutcome, SnapshotId, SnapshotOptions, SnapshotReader, SnapshotRecord,
    SnapshotWriter, Store, StoreError, diff,
};

use crate::Backend;
use crate::support::{
    BLOCK, BLOCK_SIZE, THREE_SEGMENT_DISK, expected_blocks, noise, out_of_order_disk,
    read_every_block, two_snapshots, write_snapshot, zero_fill,
};

/// A parent spanning three segments with data in each, and a [`Fill::Parent`] child that
/// changes block 5000 and writes block 6000 (zero in the parent), both in segment 1.
struct Family {
    parent: SnapshotRecord,
    child: SnapshotRecord,
    /// The child's expected contents: index to bytes, for blocks with data.
    child_blocks: BTreeMap<u64, Vec<u8>>,
    /// The parent's contents.
    parent_blocks: BTreeMap<u64, Vec<u8>>,
}

const CHANGED: [u64; 2] = [5000, 6000];

async fn family(store: &Store) -> Family {
    let parent_blocks: BTreeMap<u64, Vec<u8>> = [3, 4095, 4096, 5000, 8191, 8192, 9599]
        .into_iter()
        .map(|index| (index, noise(index, BLOCK)))
        .collect();
    let puts: Vec<(u64, Vec<u8>)> = parent_blocks.clone().into_iter().collect();
    let parent = write_snapshot(store, zero_fill(THREE_SEGMENT_DISK), &puts).await;

    let mut child_blocks = parent_blocks.clone();
    let writer = SnapshotWriter::begin(
        store,
        SnapshotOptions {
            size: THREE_SEGMENT_DISK,
            parent: Some(parent.id),
            fill: Fill::Parent,
            ..SnapshotOptions::default()
        },
    )
    .await
    .expect("begin child");
    for index in CHANGED {
        let data = noise(index + 1_000_000, BLOCK);
        writer.put_block(index, data.clone()).await.expect("put");
        child_blocks.insert(index, data);
    }
    let child = writer.commit().await.expect("commit child");
    Family {
        parent,
        child,
        child_blocks,
        parent_blocks,
    }
}

pub(crate) async fn a_snapshot_written_out_of_order_reads_back_block_for_block(backend: &Backend) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();

    let record = write_snapshot(&store, zero_fill(size), &blocks).await;

    let read = read_every_block(&store, &record.id).await;
    let mut expected = expected_blocks(6, &blocks);
    expected[1] = None; // put as zero bytes, which are not stored
    assert_eq!(read.len(), expected.len());
    for (index, (read, expected)) in read.iter().zip(&expected).enumerate() {
        assert!(read == expected, "block {index} differs");
    }
    assert_eq!(read[5].as_ref().map(Vec::len), Some(1000));
}

pub(crate) async fn data_blocks_and_record_counts_name_exactly_the_blocks_with_data(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();

    let record = write_snapshot(&store, zero_fill(size), &blocks).await;

    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    let data_blocks = reader.data_blocks().await.expect("data blocks");
    let indexes: Vec<u64> = data_blocks.iter().map(|(index, _)| *index).collect();
    assert_eq!(indexes, [0, 2, 4, 5]);
    for (index, id) in &data_blocks {
        let (_, data) = blocks.iter().find(|(i, _)| i == index).expect("put");
        assert_eq!(*id, store.block_id(data), "block {index}");
    }
    let counts = BlockCounts {
        total: 6,
        data: 4,
        zero: 2,
    };
    assert_eq!(record.blocks, counts);
    assert_eq!(record.size, size);
    assert_eq!(
        store.snapshot(&record.id).await.expect("record").blocks,
        counts
    );
}

pub(crate) async fn a_second_snapshot_of_identical_data_uploads_nothing_without_a_parent(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let first = write_snapshot(&store, zero_fill(size), &blocks).await;
    let stored_before = store.block_ids().await.expect("list").len();

    let second = write_snapshot(&store, zero_fill(size), &blocks).await;

    assert_eq!(
        first.stats.blocks_new, 4,
        "the first snapshot uploads its blocks"
    );
    assert_eq!(second.parent, None);
    assert_eq!(second.stats.blocks_new, 0);
    assert_eq!(second.stats.blocks_reused, second.blocks.data);
    assert_eq!(second.segments, first.segments);
    assert_eq!(store.block_ids().await.expect("list").len(), stored_before);
}

pub(crate) async fn a_second_snapshot_of_identical_data_naming_its_parent_uploads_nothing(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let first = write_snapshot(&store, zero_fill(size), &blocks).await;
    let stored_before = store.block_ids().await.expect("list").len();

    let options = SnapshotOptions {
        parent: Some(first.id),
        ..zero_fill(size)
    };
    let second = write_snapshot(&store, options, &blocks).await;

    assert_eq!(second.parent, Some(first.id));
    assert_eq!(second.stats.blocks_new, 0);
    assert_eq!(second.stats.blocks_reused, 4);
    assert_eq!(second.blocks, first.blocks);
    assert_eq!(second.segments, first.segments);
    assert_eq!(store.block_ids().await.expect("list").len(), stored_before);
}

pub(crate) async fn a_fill_parent_child_shares_the_segments_it_did_not_touch(backend: &Backend) {
    let store = backend.plain_store().await;

    let Family { parent, child, .. } = family(&store).await;

    assert_eq!(parent.segments.len(), 3);
    assert_eq!(child.segments.len(), 3);
    assert_eq!(child.segments[0], parent.segments[0]);
    assert_ne!(child.segments[1], parent.segments[1]);
    assert_eq!(child.segments[2], parent.segments[2]);
    assert_eq!(child.stats.blocks_new, 2);
    let counts = BlockCounts {
        total: 9600,
        data: 8,
        zero: 9592,
    };
    assert_eq!(child.blocks, counts);
}

pub(crate) async fn a_fill_parent_child_reads_as_its_parent_except_the_changed_blocks(
    backend: &Backend,
) {
    let store = backend.plain_store().await;

    let family = family(&store).await;

    let child = read_every_block(&store, &family.child.id).await;
    let parent = read_every_block(&store, &family.parent.id).await;
    for (index, block) in (0u64..).zip(&child) {
        assert!(
            block.as_ref() == family.child_blocks.get(&index),
            "child block {index} differs"
        );
    }
    for (index, block) in (0u64..).zip(&parent) {
        assert!(
            block.as_ref() == family.parent_blocks.get(&index),
            "parent block {index} differs"
        );
    }
}

pub(crate) async fn diff_of_parent_and_fill_parent_child_lists_exactly_the_changed_blocks(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let family = family(&store).await;
    let parent = SnapshotReader::open(&store, &family.parent.id)
        .await
        .expect("open");
    let child = SnapshotReader::open(&store, &family.child.id)
        .await
        .expect("open");

    let changed = diff(&parent, &child).await.expect("diff");

    let indexes: Vec<u64> = changed.iter().map(|c| c.index).collect();
    assert_eq!(indexes, CHANGED);
    let old_5000 = store.block_id(&family.parent_blocks[&5000]);
    assert_eq!(changed[0].first, Some(old_5000));
    assert_eq!(
        changed[0].second,
        Some(store.block_id(&family.child_blocks[&5000]))
    );
    assert_eq!(changed[1].first, None);
    assert_eq!(
        changed[1].second,
        Some(store.block_id(&family.child_blocks[&6000]))
    );
}

pub(crate) async fn a_fill_parent_child_can_zero_a_block_its_parent_holds(backend: &Backend) {
    let store = backend.plain_store().await;
    let blocks = [(1, noise(1, BLOCK)), (2, noise(2, BLOCK))];
    let parent = write_snapshot(&store, zero_fill(4 * BLOCK_SIZE), &blocks).await;
    let writer = SnapshotWriter::begin(
        &store,
        SnapshotOptions {
            size: 4 * BLOCK_SIZE,
            parent: Some(parent.id),
            fill: Fill::Parent,
            ..SnapshotOptions::default()
        },
    )
    .await
    .expect("begin");

    writer.put_zero(1).expect("put zero");
    let child = writer.commit().await.expect("commit");

    assert_eq!(
        read_every_block(&store, &child.id).await,
        expected_blocks(4, &blocks[1..])
    );
    assert_eq!(child.blocks.data, 1);
    let parent = SnapshotReader::open(&store, &parent.id)
        .await
        .expect("open");
    let child = SnapshotReader::open(&store, &child.id).await.expect("open");
    let changed = diff(&parent, &child).await.expect("diff");
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].index, changed[0].second), (1, None));
}

pub(crate) async fn putting_the_same_block_twice_stores_it_once(backend: &Backend) {
    let store = backend.plain_store().await;
    let writer = SnapshotWriter::begin(&store, zero_fill(2 * BLOCK_SIZE))
        .await
        .expect("begin");
    let block = noise(1, BLOCK);

    let first = writer.put_block(1, block.clone()).await.expect("put");
    let second = writer.put_block(1, block.clone()).await.expect("put again");
    let record = writer.commit().await.expect("commit");

    assert!(matches!(first, PutOutcome::New { .. }), "{first:?}");
    assert_eq!(second, PutOutcome::Reused);
    assert_eq!(
        (record.stats.blocks_new, record.stats.blocks_reused),
        (1, 1)
    );
    assert_eq!(record.blocks.data, 1);
    assert_eq!(store.block_ids().await.expect("list").len(), 1);
    assert_eq!(
        read_every_block(&store, &record.id).await,
        [None, Some(block)]
    );
}

pub(crate) async fn concurrent_puts_of_one_block_from_many_tasks_upload_it_once(backend: &Backend) {
    let store = backend.plain_store().await;
    let writer = SnapshotWriter::begin(&store, zero_fill(4 * BLOCK_SIZE))
        .await
        .expect("begin");
    let writer = Arc::new(writer);
    let block = noise(1, BLOCK);

    // 32 tasks, eight on each of the four positions, all with the same bytes.
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let writer = Arc::clone(&writer);
            let block = block.clone();
            tokio::spawn(async move { writer.put_block(task % 4, block).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task finished").expect("put"));
    }
    let writer = Arc::into_inner(writer).expect("every task is done");
    let record = writer.commit().await.expect("commit");

    let uploads = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, PutOutcome::New { .. }))
        .count();
    assert_eq!(uploads, 1);
    assert_eq!(record.stats.blocks_new, 1);
    assert_eq!(record.stats.blocks_reused, 31);
    assert_eq!(record.blocks.data, 4);
    assert_eq!(store.block_ids().await.expect("list").len(), 1);
    let expected = vec![Some(block); 4];
    assert_eq!(read_every_block(&store, &record.id).await, expected);
}

pub(crate) async fn a_block_of_the_wrong_length_is_refused_and_leaves_no_trace(backend: &Backend) {
    let store = backend.plain_store().await;
    let writer = SnapshotWriter::begin(&store, zero_fill(2 * BLOCK_SIZE + 100))
        .await
        .expect("begin");

    let short = writer.put_block(0, noise(1, BLOCK - 1)).await;
    let long = writer.put_block(1, noise(2, BLOCK + 1)).await;
    let full_last = writer.put_block(2, noise(3, BLOCK)).await;
    let record = writer.commit().await.expect("commit");

    for (what, result) in [("short", short), ("long", long), ("full last", full_last)] {
        assert!(
            matches!(result, Err(StoreError::InvalidArgument(_))),
            "{what}: {result:?}"
        );
    }
    assert_eq!(record.blocks.data, 0);
    assert_eq!(record.stats.bytes_read, 0);
    assert!(store.block_ids().await.expect("list").is_empty());
}

pub(crate) async fn a_block_index_past_the_end_is_refused_and_leaves_no_trace(backend: &Backend) {
    let store = backend.plain_store().await;
    let writer = SnapshotWriter::begin(&store, zero_fill(2 * BLOCK_SIZE + 100))
        .await
        .expect("begin");

    let data = writer.put_block(3, noise(1, 100)).await;
    let far = writer.put_block(u64::MAX, noise(1, 100)).await;
    let zero = writer.put_zero(3);
    let record = writer.commit().await.expect("commit");

    assert!(
        matches!(
            data,
            Err(StoreError::BlockOutOfRange {
                index: 3,
                blocks: 3
            })
        ),
        "{data:?}"
    );
    assert!(
        matches!(far, Err(StoreError::BlockOutOfRange { .. })),
        "{far:?}"
    );
    assert!(
        matches!(zero, Err(StoreError::BlockOutOfRange { .. })),
        "{zero:?}"
    );
    assert_eq!(record.blocks.total, 3);
    assert_eq!(record.blocks.data, 0);
    assert!(store.block_ids().await.expect("list").is_empty());
}

pub(crate) async fn a_writer_dropped_without_commit_leaves_no_snapshot(backend: &Backend) {
    let store = backend.plain_store().await;
    let writer = SnapshotWriter::begin(&store, zero_fill(4 * BLOCK_SIZE))
        .await
        .expect("begin");
    writer.put_block(0, noise(1, BLOCK)).await.expect("put");
    let id = writer.id();

    drop(writer);

    assert!(store.snapshot_ids().await.expect("list").is_empty());
    assert!(
        matches!(
            store.snapshot(&id).await,
            Err(StoreError::SnapshotNotFound { .. })
        ),
        "the abandoned snapshot exists"
    );
}

pub(crate) async fn a_rerun_after_an_abandoned_writer_reuses_its_uploaded_blocks(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let blocks: Vec<(u64, Vec<u8>)> = (0..4).map(|i| (i, noise(i, BLOCK))).collect();
    let killed = SnapshotWriter::begin(&store, zero_fill(4 * BLOCK_SIZE))
        .await
        .expect("begin");
    for (index, data) in &blocks {
        killed.put_block(*index, data.clone()).await.expect("put");
    }
    drop(killed);

    let rerun = write_snapshot(&store, zero_fill(4 * BLOCK_SIZE), &blocks).await;

    assert_eq!(rerun.stats.blocks_new, 0);
    assert_eq!(rerun.stats.blocks_reused, 4);
    assert_eq!(store.snapshot_ids().await.expect("list"), [rerun.id]);
    assert_eq!(
        read_every_block(&store, &rerun.id).await,
        expected_blocks(4, &blocks)
    );
}

pub(crate) async fn a_deleted_snapshot_is_gone_while_others_sharing_its_blocks_still_read(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, b) = two_snapshots(&store).await;

    store.delete_snapshot(&a.id).await.expect("delete");

    assert_eq!(store.snapshot_ids().await.expect("list"), [b.id]);
    let gone = store.snapshot(&a.id).await;
    assert!(
        matches!(&gone, Err(StoreError::SnapshotNotFound { id }) if *id == a.id.to_string()),
        "{gone:?}"
    );
    assert!(matches!(
        SnapshotReader::open(&store, &a.id).await,
        Err(StoreError::SnapshotNotFound { .. })
    ));
    assert!(matches!(
        store.delete_snapshot(&a.id).await,
        Err(StoreError::SnapshotNotFound { .. })
    ));
    let expected = expected_blocks(4, &[(2, noise(2, BLOCK)), (3, noise(3, BLOCK))]);
    assert_eq!(read_every_block(&store, &b.id).await, expected);
}

pub(crate) async fn begin_refuses_an_empty_disk_and_a_fill_parent_writer_without_a_parent(
    backend: &Backend,
) {
    let store = backend.plain_store().await;

    let empty = SnapshotWriter::begin(&store, zero_fill(0)).await;
    let orphan = SnapshotWriter::begin(
        &store,
        SnapshotOptions {
            fill: Fill::Parent,
            ..zero_fill(BLOCK_SIZE)
        },
    )
    .await;
    let unknown_parent = SnapshotWriter::begin(
        &store,
        SnapshotOptions {
            parent: Some(SnapshotId::generate()),
            ..zero_fill(BLOCK_SIZE)
        },
    )
    .await;

    assert!(
        matches!(empty, Err(StoreError::InvalidArgument(_))),
        "{empty:?}"
    );
    assert!(
        matches!(orphan, Err(StoreError::InvalidArgument(_))),
        "{orphan:?}"
    );
    assert!(
        matches!(unknown_parent, Err(StoreError::SnapshotNotFound { .. })),
        "{unknown_parent:?}"
    );
}

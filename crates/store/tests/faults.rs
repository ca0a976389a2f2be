//! How the store behaves when its object store fails: uploads that fail or are held in
//! flight, a full disk, unreadable objects. Every case runs on [`FaultyStore`], an in-memory
//! backend whose puts and gets fail on command, path prefix by path prefix.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use blockyard_crypto::ObjectId;
use blockyard_formats::raw::RawReader;
use blockyard_store::{
    CheckOptions, CreateOptions, Location, NoProgress, PutOutcome, RestoreOptions, SnapshotId,
    SnapshotOptions, SnapshotReader, SnapshotRecord, SnapshotWriter, Store, StoreError, check,
    create_snapshot, restore,
};
use object_store::ObjectStore;

// Kept under `faults/` and named by `#[path]`: Cargo would build a file directly under
// `tests/` as a test binary of its own.
#[path = "faults/faulty.rs"]
mod faulty;

use faulty::{Failure, FaultyStore};

/// Small blocks keep every case fast.
const BLOCK_SIZE: u64 = 64 << 10;

/// [`BLOCK_SIZE`] as a buffer length.
const BLOCK: usize = 64 << 10;

/// A fault-free store of [`BLOCK_SIZE`] blocks, and the handle that arms its faults.
async fn faulty_store() -> (Arc<FaultyStore>, Store) {
    let faulty = Arc::new(FaultyStore::new());
    let objects: Arc<dyn ObjectStore> = faulty.clone();
    let store = Store::init_on(objects, Location::Memory, BLOCK_SIZE, None)
        .await
        .expect("init");
    (faulty, store)
}

/// `len` bytes that no other seed gives and zstd cannot shrink (splitmix64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Where the store keeps block `id`: `blocks/<first three hex digits>/<id>`.
fn block_path(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("blocks/{}/{hex}", &hex[..3])
}

/// A writer for a disk of `blocks` whole blocks, positions never put reading as zero.
async fn begin(store: &Store, blocks: u64) -> SnapshotWriter {
    let options = SnapshotOptions {
        size: blocks * BLOCK_SIZE,
        ..SnapshotOptions::default()
    };
    SnapshotWriter::begin(store, options).await.expect("begin")
}

/// Writes a disk of `count` blocks holding `blocks` with a new writer; returns the writer's
/// snapshot id and what its commit gave.
async fn try_snapshot(
    store: &Store,
    count: u64,
    blocks: &[(u64, Vec<u8>)],
) -> (SnapshotId, Result<SnapshotRecord, StoreError>) {
    let writer = begin(store, count).await;
    let id = writer.id();
    for (index, data) in blocks {
        writer.put_block(*index, data.clone()).await.expect("put");
    }
    (id, writer.commit().await)
}

/// Every block of a snapshot, `None` where it reads as zero.
async fn read_back(store: &Store, id: &SnapshotId) -> Vec<Option<Vec<u8>>> {
    let reader = SnapshotReader::open(store, id).await.expect("open reader");
    let mut blocks = Vec::new();
    for index in 0..reader.record().block_count() {
        blocks.push(reader.read_block(index).await.expect("read block"));
    }
    blocks
}

async fn snapshot_ids(store: &Store) -> Vec<SnapshotId> {
    store.snapshot_ids().await.expect("list snapshots")
}

/// The operation and object path of a backend error, or a panic naming what came instead.
fn backend_failure<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> (&'static str, &str) {
    match result {
        Err(StoreError::Backend { op, path, .. }) => (*op, path.as_str()),
        other => panic!("not a backend error: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Block uploads
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_block_upload_names_the_block_and_a_retried_put_commits() {
    let (faulty, store) = faulty_store().await;
    let data = noise(1, BLOCK);
    let path = block_path(&store.block_id(&data));
    let writer = begin(&store, 2).await;
    faulty.fail_puts("blocks/", 1, Failure::Unavailable);

    let failed = writer.put_block(0, data.clone()).await;
    let retried = writer.put_block(0, data.clone()).await;
    let record = writer.commit().await.expect("commit");

    assert_eq!(backend_failure(&failed), ("write", path.as_str()));
    let error = failed.expect_err("the upload failed");
    assert!(error.to_string().contains(&path), "{error}");
    assert!(
        !error.is_disk_full(),
        "a plain backend error is not a full disk"
    );
    assert!(matches!(retried, Ok(PutOutcome::New { .. })), "{retried:?}");
    assert_eq!(record.stats.blocks_new, 1);
    assert_eq!(read_back(&store, &record.id).await, [Some(data), None]);
    assert_eq!(faulty.puts_stored("blocks/"), 1);
}

/// Puts `data` at indexes 0 and 1 of `writer` so that the second put arrives while the
/// first one's upload is held in flight, then fails that upload. Returns both outcomes and
/// the path the held upload was writing.
async fn race_a_failing_upload(
    faulty: &FaultyStore,
    writer: &SnapshotWriter,
    data: &[u8],
) -> (
    Result<PutOutcome, StoreError>,
    Result<PutOutcome, StoreError>,
    String,
) {
    let mut held = faulty.hold_next_put("blocks/");
    let first = writer.put_block(0, data.to_vec());
    let second = async {
        let path = held.arrival().await;
        let outcome = writer.put_block(1, data.to_vec()).await;
        held.fail(Failure::Unavailable);
        (outcome, path.to_string())
    };
    let (first, (second, path)) = tokio::join!(first, second);
    (first, second, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_put_during_an_upload_is_answered_reused_and_shares_the_upload() {
    let (faulty, store) = faulty_store().await;
    let data = noise(2, BLOCK);
    let writer = begin(&store, 2).await;
    let mut held = faulty.hold_next_put("blocks/");

    let first = writer.put_block(0, data.clone());
    let second = async {
        held.arrival().await;
        let outcome = writer.put_block(1, data.clone()).await;
        held.proceed();
        outcome
    };
    let (first, second) = tokio::join!(first, second);
    let record = writer.commit().await.expect("commit");

    assert!(matches!(first, Ok(PutOutcome::New { .. })), "{first:?}");
    assert!(matches!(second, Ok(PutOutcome::Reused)), "{second:?}");
    assert_eq!(faulty.puts_stored("blocks/"), 1);
    let expected = vec![Some(data); 2];
    assert_eq!(read_back(&store, &record.id).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_refuses_when_an_upload_a_reused_put_relied_on_failed() {
    let (faulty, store) = faulty_store().await;
    let data = noise(3, BLOCK);
    let id = store.block_id(&data);
    let writer = begin(&store, 2).await;

    let (first, second, held_path) = race_a_failing_upload(&faulty, &writer, &data).await;
    let committed = writer.commit().await;

    assert_eq!(held_path, block_path(&id));
    assert_eq!(backend_failure(&first), ("write", block_path(&id).as_str()));
    assert!(matches!(second, Ok(PutOutcome::Reused)), "{second:?}");
    let error = committed.expect_err("block 1 points at a block that was never stored");
    assert!(matches!(error, StoreError::InvalidArgument(_)), "{error:?}");
    assert!(error.to_string().contains("were not put again"), "{error}");
    assert!(!store.has_block(&id).await.expect("head"));
    assert_eq!(snapshot_ids(&store).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_refused_commit_putting_the_failed_block_again_lets_the_writer_commit() {
    let (faulty, store) = faulty_store().await;
    let data = noise(4, BLOCK);
    let writer = begin(&store, 2).await;
    let (first, second, _) = race_a_failing_upload(&faulty, &writer, &data).await;
    assert!(first.is_err() && second.is_ok(), "{first:?} / {second:?}");

    let refused = writer.commit().await;
    let again = writer.put_block(0, data.clone()).await;
    let record = writer.commit().await.expect("commit");

    assert!(
        refused.is_err(),
        "the first commit must refuse: {refused:?}"
    );
    assert!(matches!(again, Ok(PutOutcome::New { .. })), "{again:?}");
    assert_eq!(faulty.puts_stored("blocks/"), 1);
    let expected = vec![Some(data); 2];
    assert_eq!(read_back(&store, &record.id).await, expected);
}

// ---------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_under_put_block_is_reported_as_disk_full_and_commits_nothing() {
    let (faulty, store) = faulty_store().await;
    let data = noise(5, BLOCK);
    let writer = begin(&store, 1).await;
    faulty.fail_puts("blocks/", usize::MAX, Failure::DiskFull);

    let put = writer.put_block(0, data.clone()).await;
    let committed = writer.commit().await;

    let path = block_path(&store.block_id(&data));
    assert_eq!(backend_failure(&put), ("write", path.as_str()));
    let error = put.expect_err("the disk is full");
    assert!(error.is_disk_full(), "{error:?}");
    assert!(committed.is_err(), "{committed:?}");
    assert_eq!(snapshot_ids(&store).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_in_any_phase_of_create_snapshot_is_disk_full_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let image = dir.path().join("disk.raw");
    let file = std::fs::File::create(&image).expect("create image");
    file.set_len(8 * BLOCK_SIZE).expect("size image");
    for index in [0, 3, 7] {
        file.write_all_at(&noise(index, BLOCK), index * BLOCK_SIZE)
            .expect("write image");
    }

    // Blocks fill the disk first, then the manifest segment, then the commit record.
    for prefix in ["blocks/", "manifests/", "snapshots/"] {
        let (faulty, store) = faulty_store().await;
        faulty.fail_puts(prefix, usize::MAX, Failure::DiskFull);
        let reader = RawReader::open(&image).expect("open image");

        let result = create_snapshot(
            &store,
            reader,
            CreateOptions::default(),
            Arc::new(NoProgress),
        )
        .await;

        let (op, path) = backend_failure(&result);
        assert_eq!(op, "write", "{prefix}");
        assert!(path.starts_with(prefix), "{prefix}: failed at {path}");
        let error = result.expect_err("the disk is full");
        assert!(error.is_disk_full(), "{prefix}: {error:?}");
        assert_eq!(snapshot_ids(&store).await, [], "{prefix}");
    }
}

// ---------------------------------------------------------------------------------------
// Commit
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_record_leaves_no_snapshot_and_a_rerun_uploads_no_blocks() {
    let (faulty, store) = faulty_store().await;
    let blocks = [(0, noise(6, BLOCK)), (2, noise(7, BLOCK))];
    faulty.fail_puts("snapshots/", 1, Failure::Unavailable);

    let (failed_id, failed) = try_snapshot(&store, 3, &blocks).await;
    let after_failure = snapshot_ids(&store).await;
    let blocks_after_failure = faulty.puts_stored("blocks/");
    let (_, rerun) = try_snapshot(&store, 3, &blocks).await;
    let rerun = rerun.expect("the rerun commits");

    let record_path = format!("snapshots/{failed_id}");
    assert_eq!(backend_failure(&failed), ("write", record_path.as_str()));
    assert_eq!(after_failure, []);
    assert_eq!(blocks_after_failure, 2);
    assert_eq!(
        faulty.puts_stored("blocks/"),
        2,
        "the rerun uploaded blocks"
    );
    assert_eq!(rerun.stats.blocks_new, 0);
    assert_eq!(rerun.stats.blocks_reused, 2);
    assert_eq!(snapshot_ids(&store).await, [rerun.id]);
    let [(_, zeroth), (_, second)] = blocks;
    assert_eq!(
        read_back(&store, &rerun.id).await,
        [Some(zeroth), None, Some(second)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_segment_upload_fails_commit_before_any_record_is_written() {
    let (faulty, store) = faulty_store().await;
    let blocks = [(1, noise(8, BLOCK))];
    faulty.fail_puts("manifests/", 1, Failure::Unavailable);

    let (_, failed) = try_snapshot(&store, 2, &blocks).await;
    let after_failure = snapshot_ids(&store).await;
    let (_, rerun) = try_snapshot(&store, 2, &blocks).await;
    let rerun = rerun.expect("the rerun commits");

    let (op, path) = backend_failure(&failed);
    assert_eq!(op, "write");
    assert!(path.starts_with("manifests/"), "failed at {path}");
    assert_eq!(after_failure, []);
    assert_eq!(
        faulty.puts_stored("snapshots/"),
        1,
        "only the rerun wrote a record"
    );
    assert_eq!(
        read_back(&store, &rerun.id).await,
        [None, Some(noise(8, BLOCK))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segment_whose_early_upload_failed_keeps_its_blocks_or_refuses_to_commit() {
    let (faulty, store) = faulty_store().await;
    let per = u64::from(store.config().segment_blocks);
    let writer = begin(&store, per + 1).await;
    let data = noise(9, BLOCK);
    writer.put_block(5, data.clone()).await.expect("put");
    faulty.fail_puts("manifests/", 1, Failure::Unavailable);

    let sealed = writer.seal_segments_below(per).await;
    let committed = writer.commit().await;

    assert!(
        sealed.is_err(),
        "the segment upload was made to fail: {sealed:?}"
    );
    let kept = match &committed {
        Ok(record) => SnapshotReader::open(&store, &record.id)
            .await
            .expect("open reader")
            .read_block(5)
            .await
            .expect("read block"),
        Err(_) => None,
    };
    assert!(
        committed.is_err() || kept.as_ref() == Some(&data),
        "commit answered {:?}, yet block 5 reads as {:?}",
        committed.map(|record| record.id),
        kept.map(|block| block.len())
    );
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// A committed snapshot of two data blocks whose second block can no longer be read; the
/// id of that block.
async fn snapshot_with_an_unreadable_block() -> (Store, SnapshotRecord, ObjectId) {
    let (faulty, store) = faulty_store().await;
    let blocks = [(0, noise(10, BLOCK)), (1, noise(11, BLOCK))];
    let (_, record) = try_snapshot(&store, 2, &blocks).await;
    let unreadable = store.block_id(&blocks[1].1);
    faulty.fail_gets(&block_path(&unreadable), Failure::Unavailable);
    (store, record.expect("commit"), unreadable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_fails_naming_a_block_the_backend_cannot_read() {
    let (store, record, unreadable) = snapshot_with_an_unreadable_block().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = dir.path().join("disk.raw");

    let result = restore(
        &store,
        &record.id,
        &output,
        RestoreOptions::default(),
        Arc::new(NoProgress),
    )
    .await;

    let path = block_path(&unreadable);
    assert_eq!(backend_failure(&result), ("read", path.as_str()));
    let error = result.expect_err("block 1 cannot be read");
    assert!(error.to_string().contains(&unreadable.to_hex()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_with_read_data_reports_an_unreadable_block_naming_its_snapshot() {
    let (store, record, unreadable) = snapshot_with_an_unreadable_block().await;
    let options = CheckOptions {
        read_data: true,
        sample_percent: None,
    };

    let report = check(&store, options, Arc::new(NoProgress))
        .await
        .expect("check runs to the end");

    assert_eq!(report.blocks_read, 2);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.object, format!("block {unreadable}"));
    assert!(problem.error.contains("cannot read"), "{}", problem.error);
    assert_eq!(problem.snapshots, [record.id]);
    assert_eq!(report.damaged_snapshots, BTreeSet::from([record.id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_reports_a_config_the_backend_cannot_read_as_a_backend_error() {
    let (faulty, _) = faulty_store().await;
    let objects: Arc<dyn ObjectStore> = faulty.clone();
    faulty.fail_gets("config", Failure::Unavailable);

    let result = Store::open_on(objects, Location::Memory, None).await;

    assert_eq!(backend_failure(&result), ("read", "config"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_writer_takes_no_more_blocks_and_no_second_commit() {
    let (_faulty, store) = faulty_store().await;
    let writer = begin(&store, 2).await;
    writer.put_block(0, noise(11, BLOCK)).await.expect("put");
    writer.commit().await.expect("commit");

    let late_put = writer.put_block(1, noise(12, BLOCK)).await;
    let second_commit = writer.commit().await;

    assert!(late_put.is_err_and(|e| e.to_string().contains("no more blocks")));
    assert!(second_commit.is_err_and(|e| e.to_string().contains("already committed")));
    assert_eq!(snapshot_ids(&store).await.len(), 1);
}

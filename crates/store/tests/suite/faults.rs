//! Stores whose backend fails on purpose: retries hide transient failures, and a backend
//! that stays down fails the work cleanly, after a bounded number of attempts.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blockyard_formats::raw::RawReader;
use blockyard_store::{
    CreateOptions, FaultInjector, FaultPlan, RETRY_MAX_ATTEMPTS, RestoreOptions, Store,
    create_snapshot, restore,
};
use object_store::ObjectStore;
use tempfile::TempDir;

use crate::support::{
    BLOCK, BLOCK_SIZE, expected_blocks, noise, progress, read_every_block, small_blocks,
    write_snapshot, zero_fill,
};
use crate::{Access, Backend};

/// Blocks of the image the cases snapshot: 24 positions, 8 of them with data.
const IMAGE_BLOCKS: u64 = 24;

/// A raw image of [`IMAGE_BLOCKS`] blocks in `dir`, data at every third position and the
/// rest holes; its path and bytes.
fn image(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.path().join("disk.raw");
    let file = std::fs::File::create(&path).expect("create image");
    file.set_len(IMAGE_BLOCKS * BLOCK_SIZE).expect("size image");
    let mut bytes = vec![0u8; usize::try_from(IMAGE_BLOCKS * BLOCK_SIZE).expect("image size")];
    for index in (0..IMAGE_BLOCKS).step_by(3) {
        let data = noise(100 + index, BLOCK);
        file.write_all_at(&data, index * BLOCK_SIZE)
            .expect("write image");
        let start = usize::try_from(index).expect("index") * BLOCK;
        bytes[start..start + BLOCK].copy_from_slice(&data);
    }
    (path, bytes)
}

/// Every message of an error's chain, joined as the command line prints them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(error) = source {
        messages.push(error.to_string());
        source = error.source();
    }
    messages.join(": ")
}

/// A new store of 64 KiB blocks, reached through faults injected as `plan` says: by the
/// location's `inject_*` options where the backend is reached by location, as the command
/// line does, else by wrapping the backend's shared objects.
async fn faulty_store(backend: &Backend, plan: &FaultPlan) -> Store {
    match backend.access {
        Access::ByLocation => {
            let options = [
                ("inject_error_rate", plan.error_rate.to_string()),
                ("inject_delay_ms", plan.delay.as_millis().to_string()),
                ("inject_seed", plan.seed.to_string()),
                ("inject_down", plan.down.to_string()),
            ];
            let mut location = backend.location.clone();
            for (key, value) in &options {
                location = location.with_option(key, value).expect("fault option");
            }
            Store::init(&location, small_blocks(None))
                .await
                .expect("init")
        }
        Access::Shared => {
            let faults = FaultInjector::new(Arc::clone(&backend.objects), *plan).expect("plan");
            Store::init_on(Arc::new(faults), backend.location.clone(), BLOCK_SIZE, None)
                .await
                .expect("init")
        }
    }
}

pub(crate) async fn a_store_failing_one_request_in_five_snapshots_and_restores_intact(
    backend: &Backend,
) {
    let plan = FaultPlan {
        error_rate: 0.2,
        delay: Duration::from_millis(1),
        seed: 20,
        ..FaultPlan::default()
    };
    let store = faulty_store(backend, &plan).await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let (source, bytes) = image(&dir);
    let output = dir.path().join("restored.raw");

    let reader = RawReader::open(&source).expect("open image");
    let record = create_snapshot(&store, reader, CreateOptions::default(), progress())
        .await
        .expect("snapshot");
    restore(
        &store,
        &record.id,
        &output,
        RestoreOptions::default(),
        progress(),
    )
    .await
    .expect("restore");

    assert!(
        std::fs::read(&output).expect("read output") == bytes,
        "restored bytes differ"
    );
    assert_eq!(record.blocks.data, 8);
    let requests = store.requests();
    assert!(requests.retries > 0, "no request was retried: {requests:?}");
    let kinds = [
        requests.get,
        requests.head,
        requests.put,
        requests.list,
        requests.delete,
        requests.other,
    ];
    let failed: u64 = kinds.iter().map(|kind| kind.failed).sum();
    assert!(
        failed >= requests.retries,
        "every retry follows a failure: {requests:?}"
    );
    let fault_free = backend.open(None).await.expect("open without faults");
    let blocks = read_every_block(&fault_free, &record.id).await;
    assert_eq!(blocks.iter().filter(|block| block.is_some()).count(), 8);
}

pub(crate) async fn a_store_that_is_down_fails_a_snapshot_after_its_attempts_and_commits_nothing(
    backend: &Backend,
) {
    // One snapshot from before the outage, written without faults.
    let store = backend.plain_store().await;
    let earlier_blocks = [(0, noise(1, BLOCK)), (2, noise(2, BLOCK))];
    let earlier = write_snapshot(&store, zero_fill(4 * BLOCK_SIZE), &earlier_blocks).await;
    // The same objects with faults between, up while the store opens, then down.
    let faults = Arc::new(
        FaultInjector::new(Arc::clone(&backend.objects), FaultPlan::default()).expect("plan"),
    );
    let objects: Arc<dyn ObjectStore> = faults.clone();
    let faulty = Store::open_on(objects, backend.location.clone(), None)
        .await
        .expect("open while the backend is up");
    let dir = tempfile::tempdir().expect("temporary folder");
    let (source, _) = image(&dir);
    let down = FaultPlan {
        down: true,
        ..FaultPlan::default()
    };
    faults.set_plan(down).expect("plan");

    let reader = RawReader::open(&source).expect("open image");
    let result = create_snapshot(&faulty, reader, CreateOptions::default(), progress()).await;

    let error = result.expect_err("the backend is down");
    let message = chain(&error);
    let attempts = format!("gave up after {RETRY_MAX_ATTEMPTS} attempts");
    assert!(message.contains(&attempts), "{message}");
    assert!(message.contains("injected fault"), "{message}");
    let requests = faulty.requests();
    assert!(
        requests.retries >= u64::from(RETRY_MAX_ATTEMPTS - 1),
        "{requests:?}"
    );
    // Without the faults, the store holds the earlier snapshot only, whole.
    let reopened = backend.open(None).await.expect("open without faults");
    assert_eq!(
        reopened.snapshot_ids().await.expect("list snapshots"),
        [earlier.id]
    );
    assert_eq!(
        read_every_block(&reopened, &earlier.id).await,
        expected_blocks(4, &earlier_blocks)
    );
}

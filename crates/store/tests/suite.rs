//! The store's behaviour, as one suite that every backend runs.
//!
//! Each case is an `async fn` taking a [`Backend`]: a place to make stores plus a raw handle
//! on the objects behind them, for the cases that tamper with stored bytes. The
//! `backend_tests!` macro turns every case into one `#[tokio::test]` per backend, named
//! `<backend>::<case>`.
//!
//! Adding a backend is one factory and one line: an `async fn` returning a [`Backend`] (or
//! an `Option` of one, `None` where the backend is out of reach), then
//! `backend_tests!(factory);`.
//!
//! The `s3` cases run on the Garage server that `scripts/test.sh` starts, reached through the
//! `AWS_*` variables and `BLOCKYARD_TEST_S3_BUCKET` in the env file `scripts/garage.sh`
//! writes. Without that bucket they are skipped with a note, unless `BLOCKYARD_REQUIRE_S3=1`
//! (set by `scripts/test.sh`), when they fail: CI can never skip them silently.

use std::collections::BTreeMap;
use std::sync::Arc;

use blockyard_crypto::MasterKey;
use blockyard_store::{DEFAULT_BLOCK_SIZE, InitOptions, Location, Store, StoreError};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use tempfile::TempDir;

// The cases live in `suite/`; `#[path]` keeps them out of Cargo's sight, which would
// otherwise build every file directly under `tests/` as a test binary of its own.
#[path = "suite/catalog.rs"]
mod catalog;
#[path = "suite/damage.rs"]
mod damage;
#[path = "suite/families.rs"]
mod families;
#[path = "suite/faults.rs"]
mod faults;
#[path = "suite/gc.rs"]
mod gc;
#[path = "suite/images.rs"]
mod images;
#[path = "suite/regressions.rs"]
mod regressions;
#[path = "suite/restore.rs"]
mod restore;
#[path = "suite/snapshots.rs"]
mod snapshots;
#[path = "suite/stores.rs"]
mod stores;
#[path = "suite/support.rs"]
mod support;

// `backend_tests!` reaches every case through these imports.
use catalog::*;
use damage::*;
use faults::*;
use gc::*;
use images::*;
use regressions::*;
use restore::*;
use snapshots::*;
use stores::*;
use support::{KEY, raw_key, small_blocks};

/// How the suite reaches a backend's stores.
enum Access {
    /// `Store::init_on` / `Store::open_on` over one shared object store: the only way to
    /// open an in-memory store twice.
    Shared,
    /// `Store::init` / `Store::open` with the location, as the command line does.
    ByLocation,
}

/// A place to make stores in, and a second handle on the objects stored there.
struct Backend {
    location: Location,
    /// Reaches the same objects as the stores do, bypassing them.
    objects: Arc<dyn ObjectStore>,
    access: Access,
    /// Keeps a local store's folder alive for the test's length.
    _dir: Option<TempDir>,
}

async fn memory() -> Backend {
    Backend {
        location: Location::Memory,
        objects: Arc::new(InMemory::new()),
        access: Access::Shared,
        _dir: None,
    }
}

async fn local() -> Backend {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("store");
    // The raw handle needs the folder to exist; `init` accepts an existing empty folder.
    std::fs::create_dir(&path).expect("store folder");
    let objects = LocalFileSystem::new_with_prefix(&path).expect("local object store");
    Backend {
        location: Location::Local(path),
        objects: Arc::new(objects),
        access: Access::ByLocation,
        _dir: Some(dir),
    }
}

/// A fresh prefix in the S3 test bucket, or `None` when no server is configured and none is
/// required.
async fn s3() -> Option<Backend> {
    let bucket = match std::env::var("BLOCKYARD_TEST_S3_BUCKET") {
        Ok(bucket) if !bucket.is_empty() => bucket,
        _ => {
            assert!(
                std::env::var("BLOCKYARD_REQUIRE_S3").as_deref() != Ok("1"),
                "BLOCKYARD_REQUIRE_S3=1 but BLOCKYARD_TEST_S3_BUCKET is unset: Garage is not \
                 running (scripts/test.sh starts it; or source the env of scripts/garage.sh)"
            );
            eprintln!("no S3 server configured (BLOCKYARD_TEST_S3_BUCKET); skipping");
            return None;
        }
    };

    // A prefix per case keeps the cases, which run in parallel on one bucket, apart, and
    // keeps every run clear of the objects that earlier runs left behind.
    let prefix = format!("suite-{}", ulid::Ulid::new());
    // The same AWS_* variables that the stores read give the endpoint and credentials.
    let client = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .build()
        .expect("an S3 client from the AWS_* variables");
    Some(Backend {
        location: Location::S3 {
            bucket,
            prefix: prefix.clone(),
            options: BTreeMap::new(),
        },
        objects: Arc::new(PrefixStore::new(client, prefix.as_str())),
        access: Access::ByLocation,
        _dir: None,
    })
}

impl Backend {
    async fn init(&self, options: InitOptions) -> Result<Store, StoreError> {
        match self.access {
            Access::Shared => {
                let block_size = options.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
                let objects = Arc::clone(&self.objects);
                Store::init_on(
                    objects,
                    self.location.clone(),
                    block_size,
                    options.master_key,
                )
                .await
            }
            Access::ByLocation => Store::init(&self.location, options).await,
        }
    }

    async fn open(&self, master_key: Option<&MasterKey>) -> Result<Store, StoreError> {
        match self.access {
            Access::Shared => {
                let objects = Arc::clone(&self.objects);
                Store::open_on(objects, self.location.clone(), master_key).await
            }
            Access::ByLocation => Store::open(&self.location, master_key).await,
        }
    }

    /// A new unencrypted store of 64 KiB blocks.
    async fn plain_store(&self) -> Store {
        self.init(small_blocks(None)).await.expect("init")
    }

    /// A new store of 64 KiB blocks encrypted under [`KEY`].
    async fn encrypted_store(&self) -> Store {
        self.init(small_blocks(Some(raw_key(KEY))))
            .await
            .expect("init")
    }

    async fn read_object(&self, path: &str) -> Vec<u8> {
        let result = self.objects.get(&Path::from(path)).await.expect("get");
        result.bytes().await.expect("object bytes").to_vec()
    }

    async fn write_object(&self, path: &str, bytes: Vec<u8>) {
        let path = Path::from(path);
        self.objects.put(&path, bytes.into()).await.expect("put");
    }

    async fn delete_object(&self, path: &str) {
        self.objects
            .delete(&Path::from(path))
            .await
            .expect("delete");
    }

    /// The bytes of every object in the store, by path.
    async fn all_objects(&self) -> BTreeMap<String, Vec<u8>> {
        let metas: Vec<_> = self.objects.list(None).try_collect().await.expect("list");
        let mut objects = BTreeMap::new();
        for meta in metas {
            let path = meta.location.to_string();
            let bytes = self.read_object(&path).await;
            objects.insert(path, bytes);
        }
        objects
    }

    /// Rewrites the store's config with `edit` applied to its JSON.
    async fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut config: serde_json::Value =
            serde_json::from_slice(&self.read_object("config").await).expect("config is JSON");
        edit(&mut config);
        let bytes = serde_json::to_vec_pretty(&config).expect("JSON");
        self.write_object("config", bytes).await;
    }
}

/// Generates one `#[tokio::test]` per case for the backend that `$backend()` makes.
macro_rules! backend_tests {
    ($backend:ident) => {
        mod $backend {
            backend_tests!(@cases $backend:
                // catalog.rs
                family_latest_resolves_with_one_listing_and_follows_promotions,

                // gc.rs
                gc_deletes_what_no_record_reaches_and_keeps_shared_and_binned_blocks,
                gc_keeps_what_is_younger_than_the_grace_and_a_dry_run_changes_nothing,
                a_run_waits_for_an_older_session_and_the_next_gc_finishes_it,
                a_writer_that_starts_after_the_mark_keeps_the_condemned_blocks_it_reuses,
                a_session_that_misses_its_heartbeats_is_taken_for_dead_and_cannot_commit,
                a_gc_killed_at_any_point_leaves_the_store_whole_and_the_next_one_finishes,
                gc_racing_writers_never_loses_a_block_a_committed_snapshot_names,
                gc_removes_the_refs_of_images_gone_from_the_store_and_the_bin,
                a_writer_that_meets_a_sweep_under_way_waits_for_it_to_finish,

                // stores.rs
                init_then_open_gives_the_same_block_size_and_key_domain,
                init_on_an_existing_store_fails_with_already_exists_and_changes_nothing,
                opening_an_empty_location_fails_with_not_a_store_that_says_to_run_init,
                an_encrypted_store_refuses_to_open_without_a_key,
                an_encrypted_store_refuses_a_wrong_key,
                an_encrypted_store_opens_with_its_key_and_reads_its_snapshots,
                a_passphrase_store_opens_with_the_passphrase_only,
                a_config_of_a_newer_format_version_is_refused_with_upgrade_advice,
                a_config_requiring_an_unknown_feature_is_refused_naming_the_feature,
                an_unencrypted_store_keeps_incompressible_blocks_as_they_are,
                an_encrypted_store_holds_no_plaintext_of_blocks_or_descriptions,

                // snapshots.rs
                a_snapshot_written_out_of_order_reads_back_block_for_block,
                data_blocks_and_record_counts_name_exactly_the_blocks_with_data,
                a_second_snapshot_of_identical_data_uploads_nothing_without_a_parent,
                a_second_snapshot_of_identical_data_naming_its_parent_uploads_nothing,
                a_fill_parent_child_shares_the_segments_it_did_not_touch,
                a_fill_parent_child_reads_as_its_parent_except_the_changed_blocks,
                diff_of_parent_and_fill_parent_child_lists_exactly_the_changed_blocks,
                a_fill_parent_child_can_zero_a_block_its_parent_holds,
                putting_the_same_block_twice_stores_it_once,
                concurrent_puts_of_one_block_from_many_tasks_upload_it_once,
                a_block_of_the_wrong_length_is_refused_and_leaves_no_trace,
                a_block_index_past_the_end_is_refused_and_leaves_no_trace,
                a_writer_dropped_without_commit_leaves_no_snapshot,
                a_rerun_after_an_abandoned_writer_reuses_its_uploaded_blocks,
                a_deleted_snapshot_is_gone_while_others_sharing_its_blocks_still_read,
                begin_refuses_an_empty_disk_and_a_fill_parent_writer_without_a_parent,

                // damage.rs
                a_block_object_overwritten_with_garbage_reads_as_corrupt,
                a_block_object_with_any_one_byte_flipped_reads_as_corrupt,
                a_deleted_block_object_reads_as_missing,
                check_passes_a_healthy_store_reading_every_block,
                check_with_read_data_reports_a_damaged_block_naming_its_snapshot,
                check_names_every_snapshot_that_shares_a_damaged_block,
                check_without_read_data_passes_a_damaged_block_that_is_present,
                check_reports_a_deleted_block_as_missing_naming_its_snapshot,
                a_block_object_replaced_by_another_valid_block_reads_as_corrupt,
                a_commit_record_copied_under_another_snapshots_name_is_refused,
                check_reports_a_damaged_manifest_segment_naming_its_snapshots,
                check_counts_the_blocks_of_an_abandoned_writer_as_unreferenced,

                // restore.rs
                restore_reproduces_the_snapshot_byte_for_byte,
                restore_leaves_zero_blocks_as_holes,
                restore_refuses_to_overwrite_an_existing_file,
                restore_with_overwrite_replaces_an_existing_larger_file,
                create_snapshot_from_a_sparse_raw_image_round_trips,
                create_snapshot_of_a_disk_spanning_three_segments_keeps_every_block,

                // images.rs
                a_snapshot_read_as_a_disk_gives_its_blocks_and_zero_extents,
                an_image_in_an_object_is_read_with_ranged_reads_and_its_names_resolve,
                an_upload_becomes_visible_only_when_completed,
                export_hands_the_writer_the_layout_then_every_data_block_in_order,
                an_export_whose_writer_fails_reports_the_writers_error,
                a_snapshot_of_an_overlays_changes_reads_only_the_changed_blocks,
                changes_cutting_of_a_disk_without_backing_reads_every_data_block,

                // regressions.rs
                a_put_below_sealed_segments_is_refused_or_kept,
                a_grown_fill_parent_child_is_refused_or_reads_as_the_grown_parent,
                a_shrunk_fill_parent_child_is_refused_or_reads_as_the_cut_parent,
                a_snapshot_with_a_damaged_commit_record_can_be_deleted,

                // faults.rs
                a_store_failing_one_request_in_five_snapshots_and_restores_intact,
                a_store_that_is_down_fails_a_snapshot_after_its_attempts_and_commits_nothing,
            );
        }
    };
    (@cases $backend:ident: $($(#[$attr:meta])* $case:ident),* $(,)?) => {
        $(
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                // A factory gives a `Backend`, or an `Option` of one that is `None` when the
                // backend is out of reach here: the case then passes without running.
                let Some(backend) = Option::from(super::$backend().await) else {
                    return;
                };
                super::$case(&backend).await;
            }
        )*
    };
}

backend_tests!(memory);
backend_tests!(local);
backend_tests!(s3);

// ---------------------------------------------------------------------------------------
// Large families: memory and local disk, as the S3 run would spend minutes writing them
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_latest_of_a_large_family_reads_one_page_of_refs() {
    let pages = families::PageCounter::new(Arc::new(InMemory::new()));
    let backend = Backend {
        objects: Arc::clone(&pages) as Arc<dyn ObjectStore>,
        ..memory().await
    };

    latest_of_a_large_family_reads_one_page_of_refs(&backend, Some(pages.as_ref())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_latest_of_a_large_family_reads_one_page_of_refs() {
    latest_of_a_large_family_reads_one_page_of_refs(&local().await, None).await;
}

// ---------------------------------------------------------------------------------------
// Local disk only
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn opening_a_local_folder_that_does_not_exist_fails_with_not_a_store() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let location = Location::Local(dir.path().join("nothing-here"));

    let result = Store::open(&location, None).await;

    assert!(
        matches!(result, Err(StoreError::NotAStore { .. })),
        "{result:?}"
    );
    assert!(
        !dir.path().join("nothing-here").exists(),
        "open created the folder"
    );
}

// ---------------------------------------------------------------------------------------
// Backends that enforce conditional PUT (memory and local disk; Garage ignores it)
// ---------------------------------------------------------------------------------------

/// Two `init`s racing on one location: the loser finds the winner's key slot already
/// written after its own existence check. It must report that the store exists, not replace
/// the slot and leave a config that no slot opens.
#[tokio::test]
async fn an_init_that_loses_a_race_reports_the_store_exists_and_replaces_nothing() {
    for backend in [memory().await, local().await] {
        let winner_slot = bytes::Bytes::from_static(b"{\"the winner's\": \"slot\"}");
        let slot = Path::from("keys/slots/slot-0");
        backend
            .objects
            .put(&slot, winner_slot.clone().into())
            .await
            .expect("the winner's slot");

        let loser = backend.init(small_blocks(Some(raw_key(KEY)))).await;

        assert!(
            matches!(loser, Err(StoreError::AlreadyExists { .. })),
            "{loser:?}"
        );
        let kept = backend
            .objects
            .get(&slot)
            .await
            .expect("slot")
            .bytes()
            .await;
        assert_eq!(kept.expect("slot bytes"), winner_slot);
    }
}

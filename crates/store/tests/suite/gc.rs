//! Garbage collection on every backend: what it deletes and keeps, how it waits for older
//! writers, spares what newer ones revive, survives being killed, and never loses a block
//! that a committed snapshot names while writers race it.

use std::sync::Arc;
use std::time::Duration;

use blockyard_store::{
    FaultInjector, FaultPlan, GcOptions, GcReport, NoProgress, Session, SnapshotId, SnapshotRecord,
    SnapshotWriter, Store, StoreError, check, collect_garbage, purge_recycled, recycle,
};
use object_store::ObjectStore;

use super::support::{
    BLOCK, BLOCK_SIZE, expected_blocks, full_check, noise, progress, read_every_block,
    write_snapshot, zero_fill,
};
use super::{Access, Backend};

/// A committed snapshot and the blocks put into it.
type Written = (SnapshotRecord, Vec<(u64, Vec<u8>)>);

/// A run that never waits for the grace and looks again often.
fn quick() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        poll: Duration::from_millis(20),
        clock_slack: Duration::ZERO,
        session_timeout: Duration::from_secs(60),
        ..GcOptions::default()
    }
}

async fn gc(store: &Store, options: &GcOptions) -> GcReport {
    collect_garbage(store, options, Arc::new(NoProgress))
        .await
        .expect("gc")
}

/// Lets the store's clock pass the second in which the objects so far were written: gc
/// compares store times to the whole second, and condemns only what is older than the
/// second it started in.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// Options for a run that leaves what it must wait for to the next gc.
fn no_wait() -> GcOptions {
    GcOptions {
        wait: false,
        ..quick()
    }
}

/// A session, and a run it holds back: marked, its deleting left to a later gc.
async fn held_back_run(store: &Store) -> (Session, GcReport) {
    let older = Session::begin(&store.raw(), "test").await.expect("session");
    let report = gc(store, &no_wait()).await;
    assert!(report.run.is_some(), "nothing was condemned: {report:?}");
    (older, report)
}

/// Deletes a snapshot into the bin and purges the bin, as retention and `recycle purge` do.
async fn forget(store: &Store, id: &SnapshotId) {
    recycle(store, &id.to_string()).await.expect("recycle");
    purge_recycled(store, Duration::ZERO).await.expect("purge");
}

async fn assert_intact(store: &Store, live: &[Written]) {
    let report = check(store, full_check(), progress()).await.expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for (record, blocks) in live {
        assert_eq!(
            read_every_block(store, &record.id).await,
            expected_blocks(record.blocks.total, blocks),
            "{} reads back",
            record.id
        );
    }
}

/// A (blocks 1, 2), B (blocks 2, 3) sharing block 2, and C (block 4).
async fn three_snapshots(store: &Store) -> [Written; 3] {
    three_snapshots_from(store, 0).await
}

/// [`three_snapshots`] with block contents of their own for each `base`.
async fn three_snapshots_from(store: &Store, base: u64) -> [Written; 3] {
    let a_blocks = vec![(0, noise(base + 1, BLOCK)), (1, noise(base + 2, BLOCK))];
    let b_blocks = vec![(2, noise(base + 2, BLOCK)), (3, noise(base + 3, BLOCK))];
    let c_blocks = vec![(1, noise(base + 4, BLOCK))];
    let a = write_snapshot(store, zero_fill(4 * BLOCK_SIZE), &a_blocks).await;
    let b = write_snapshot(store, zero_fill(4 * BLOCK_SIZE), &b_blocks).await;
    let c = write_snapshot(store, zero_fill(4 * BLOCK_SIZE), &c_blocks).await;
    [(a, a_blocks), (b, b_blocks), (c, c_blocks)]
}

pub(crate) async fn gc_deletes_what_no_record_reaches_and_keeps_shared_and_binned_blocks(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let [(a, _), b, c] = three_snapshots(&store).await;
    forget(&store, &a.id).await;
    recycle(&store, &c.0.id.to_string()).await.expect("recycle");
    settle().await;
    // A segment and a block of A's are A's alone; block 2 is B's too; C is in the bin.
    let report = gc(&store, &quick()).await;
    assert_eq!(report.blocks_deleted, 1, "{report:?}");
    assert_eq!(report.segments_deleted, 1, "{report:?}");
    assert_eq!(report.snapshots, 2, "B live and C binned: {report:?}");
    assert!(
        report.run.is_some() && report.pending.is_empty(),
        "{report:?}"
    );

    blockyard_store::restore_recycled(&store, &c.0.id.to_string())
        .await
        .expect("C comes back from the bin whole");
    assert_intact(&store, &[b, c]).await;
    let again = gc(&store, &quick()).await;
    assert_eq!(
        again.blocks_deleted + again.segments_deleted,
        0,
        "{again:?}"
    );
    assert!(again.run.is_none(), "nothing left to condemn: {again:?}");
    // Nothing of gc's own stays behind once its run is done.
    let objects = backend.all_objects().await;
    assert!(
        !objects
            .keys()
            .any(|path| path.starts_with("gc/runs/") || path.starts_with("sessions/")),
        "{:?}",
        objects.keys().collect::<Vec<_>>()
    );
}

pub(crate) async fn gc_keeps_what_is_younger_than_the_grace_and_a_dry_run_changes_nothing(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let [(a, _), b, _] = three_snapshots(&store).await;
    forget(&store, &a.id).await;
    settle().await;

    let before = backend.all_objects().await;
    let dry = gc(
        &store,
        &GcOptions {
            dry_run: true,
            ..quick()
        },
    )
    .await;
    assert_eq!(
        (dry.blocks_condemned, dry.segments_condemned),
        (1, 1),
        "{dry:?}"
    );
    let mut after = backend.all_objects().await;
    after.remove("clock");
    let mut before_without_clock = before;
    before_without_clock.remove("clock");
    assert_eq!(
        before_without_clock.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );

    let young = gc(
        &store,
        &GcOptions {
            grace: Duration::from_secs(3600),
            ..quick()
        },
    )
    .await;
    assert_eq!(
        young.blocks_deleted + young.segments_deleted,
        0,
        "{young:?}"
    );
    assert_eq!(young.too_young, 2, "{young:?}");
    assert_intact(&store, &[b]).await;
}

pub(crate) async fn a_run_waits_for_an_older_session_and_the_next_gc_finishes_it(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let [(a, _), b, _] = three_snapshots(&store).await;
    forget(&store, &a.id).await;
    settle().await;

    let (older, first) = held_back_run(&store).await;
    let run = first.run.clone().expect("a run");
    assert_eq!(first.pending, std::slice::from_ref(&run), "{first:?}");
    assert_eq!(
        first.blocks_deleted + first.segments_deleted,
        0,
        "{first:?}"
    );

    older.end().await.expect("end");
    let second = gc(&store, &no_wait()).await;
    assert_eq!(second.resumed, [run], "{second:?}");
    assert_eq!(
        (second.blocks_deleted, second.segments_deleted),
        (1, 1),
        "{second:?}"
    );
    assert_intact(&store, &[b]).await;
}

pub(crate) async fn a_writer_that_starts_after_the_mark_keeps_the_condemned_blocks_it_reuses(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let [(a, a_blocks), b, _] = three_snapshots(&store).await;
    forget(&store, &a.id).await;
    settle().await;

    // A run is marked and held back by an older session.
    let (older, first) = held_back_run(&store).await;
    let run = first.run.expect("a run");
    // The writer must start in a later second than the mark.
    settle().await;

    // A writer starts after the mark and puts A's blocks again; it commits only after the
    // run has swept, so nothing but its revived markers can save them.
    let writer = SnapshotWriter::begin(&store, zero_fill(4 * BLOCK_SIZE))
        .await
        .expect("begin");
    for (index, data) in &a_blocks {
        writer.put_block(*index, data.clone()).await.expect("put");
    }
    older.end().await.expect("end");
    let swept = gc(&store, &no_wait()).await;
    assert_eq!(swept.resumed, [run], "{swept:?}");
    assert!(swept.spared >= 1, "{swept:?}");
    assert_eq!(swept.blocks_deleted, 0, "{swept:?}");

    let d = writer.commit().await.expect("commit after the sweep");
    assert_intact(&store, &[b, (d, a_blocks)]).await;
}

pub(crate) async fn a_session_that_misses_its_heartbeats_is_taken_for_dead_and_cannot_commit(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let [(a, _), b, _] = three_snapshots(&store).await;
    forget(&store, &a.id).await;
    settle().await;

    // A writer whose heartbeat (every 20 s) is older than gc's one-second timeout.
    let writer = SnapshotWriter::begin(&store, zero_fill(4 * BLOCK_SIZE))
        .await
        .expect("begin");
    writer.put_block(0, noise(9, BLOCK)).await.expect("put");
    let report = gc(
        &store,
        &GcOptions {
            session_timeout: Duration::from_secs(1),
            ..quick()
        },
    )
    .await;
    assert_eq!(report.sessions_expired.len(), 1, "{report:?}");
    assert_eq!(
        (report.blocks_deleted, report.segments_deleted),
        (1, 1),
        "{report:?}"
    );

    let error = writer
        .commit()
        .await
        .expect_err("an expired session cannot commit");
    assert!(
        matches!(error, StoreError::SessionExpired { .. }),
        "{error}"
    );
    assert_intact(&store, &[b]).await;
}

pub(crate) async fn a_gc_killed_at_any_point_leaves_the_store_whole_and_the_next_one_finishes(
    backend: &Backend,
) {
    // Each request through the slow handle takes a few milliseconds, so that killing the
    // run after 0, 4, 8, … ms lands in every phase in turn.
    let slow = FaultPlan {
        delay: Duration::from_millis(2),
        ..FaultPlan::default()
    };
    let kills = if matches!(backend.access, Access::Shared) {
        12
    } else {
        6
    };
    let store = backend.plain_store().await;
    let mut live = Vec::new();
    let mut phases = std::collections::BTreeSet::new();
    for kill in 0..kills {
        let [(a, _), b, c] = three_snapshots_from(&store, 10 * kill).await;
        forget(&store, &a.id).await;
        forget(&store, &c.0.id).await;
        live.push(b);
        settle().await;

        let faults: Arc<dyn ObjectStore> =
            Arc::new(FaultInjector::new(Arc::clone(&backend.objects), slow).expect("plan"));
        let slow_store = Store::open_on(faults, backend.location.clone(), None)
            .await
            .expect("open");
        let task = tokio::spawn(async move { gc(&slow_store, &quick()).await });
        tokio::time::sleep(Duration::from_millis(5 * kill)).await;
        task.abort();
        let finished = task.await.is_ok();
        phases.insert(finished);

        assert_intact(&store, &live).await;
        let next = gc(&store, &quick()).await;
        let report = check(&store, full_check(), progress())
            .await
            .expect("check");
        assert_eq!(
            report.blocks_unreferenced,
            0,
            "kill after {} ms: the next gc left garbage: {next:?}",
            5 * kill
        );
        assert_intact(&store, &live).await;
    }
    assert!(phases.contains(&false), "no kill landed inside a run");
}

/// Writers commit snapshots drawn from a small pool of blocks (so they keep reusing the
/// blocks of snapshots just forgotten) and forget some of their own, while gc runs again and
/// again with no grace. Every snapshot still live at the end must read back exactly, and
/// the store must check clean with every block read.
pub(crate) async fn gc_racing_writers_never_loses_a_block_a_committed_snapshot_names(
    backend: &Backend,
) {
    let rounds: u64 = std::env::var("BLOCKYARD_GC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if matches!(backend.access, Access::Shared) {
            6
        } else {
            3
        });
    let seed: u64 = std::env::var("BLOCKYARD_GC_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("gc race: seed {seed} (BLOCKYARD_GC_SEED={seed} repeats it), {rounds} rounds");
    // Rounds share the store, so that each races the garbage the ones before left.
    let store = backend.plain_store().await;
    let mut live = Vec::new();
    for round in 0..rounds {
        race_once(&store, seed.wrapping_add(round), round, &mut live).await;
    }
}

async fn race_once(store: &Store, seed: u64, round: u64, live: &mut Vec<Written>) {
    const WRITERS: u64 = 3;
    const SNAPSHOTS: u64 = 14;
    const POOL: u64 = 24;
    const DISK: u64 = 8;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let collector = {
        let store = store.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut runs = 0u64;
            let (mut deleted, mut spared) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // A second of grace holds each run open after its mark, so that writers
                // starting meanwhile meet its condemned lists and revive what they reuse.
                let options = GcOptions {
                    grace: Duration::from_secs(1),
                    ..quick()
                };
                let report = collect_garbage(&store, &options, Arc::new(NoProgress)).await?;
                runs += 1;
                deleted += report.blocks_deleted + report.segments_deleted;
                spared += report.spared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("gc race: {runs} runs deleted {deleted} objects and spared {spared}");
            Ok::<_, StoreError>(runs)
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (writer + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut live: Vec<Written> = Vec::new();
            for _ in 0..SNAPSHOTS {
                let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
                for index in 0..DISK {
                    if !rng.next().is_multiple_of(3) {
                        blocks.push((index, noise(rng.next() % POOL + 1, BLOCK)));
                    }
                }
                let record = write_snapshot(&store, zero_fill(DISK * BLOCK_SIZE), &blocks).await;
                live.push((record, blocks));
                // Forget one snapshot in two, so its blocks are doomed while the others
                // keep drawing from the same pool.
                if rng.next().is_multiple_of(2) && !live.is_empty() {
                    let index = usize::try_from(rng.next() % live.len() as u64).unwrap_or(0);
                    let (gone, _) = live.remove(index);
                    forget(&store, &gone.id).await;
                }
                // gc condemns only what is a whole second old: the round must last a few
                // seconds for doomed blocks to be condemned while writers still reuse them.
                tokio::time::sleep(Duration::from_millis(150 + rng.next() % 150)).await;
            }
            live
        }));
    }
    for writer in writers {
        live.extend(writer.await.expect("writer task"));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = collector
        .await
        .expect("gc task")
        .unwrap_or_else(|e| panic!("seed {seed} round {round}: gc failed: {e}"));
    assert!(runs >= 1, "seed {seed} round {round}: gc never ran");
    // One more run with nothing racing it.
    settle().await;
    gc(store, &quick()).await;

    let report = check(store, full_check(), progress()).await.expect("check");
    assert!(
        report.problems.is_empty(),
        "seed {seed} round {round}: {:?}",
        report.problems
    );
    for (record, blocks) in live.iter() {
        assert_eq!(
            read_every_block(store, &record.id).await,
            expected_blocks(record.blocks.total, blocks),
            "seed {seed} round {round}: {} reads back",
            record.id
        );
    }
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

pub(crate) async fn gc_removes_the_refs_of_images_gone_from_the_store_and_the_bin(
    backend: &Backend,
) {
    use blockyard_store::{
        Architecture, BootMode, Device, NewImage, deregister_image, promote, register_image,
        resolve_image,
    };
    let store = backend.plain_store().await;
    let [(a, _), (b, _), _] = three_snapshots(&store).await;
    let mut images = Vec::new();
    for (name, snapshot) in [("old", a.id), ("new", b.id)] {
        let image = register_image(
            &store,
            NewImage {
                name: name.to_owned(),
                family: Some("ci".to_owned()),
                devices: vec![Device {
                    name: "/dev/xvda".to_owned(),
                    snapshot,
                }],
                architecture: Architecture::X86_64,
                boot_mode: BootMode::Uefi,
                description: String::new(),
                tags: Default::default(),
            },
        )
        .await
        .expect("register");
        promote(&store, &image.id).await.expect("promote");
        images.push(image.id);
    }
    let refs = |objects: &std::collections::BTreeMap<String, Vec<u8>>| {
        objects.keys().filter(|p| p.starts_with("refs/")).count()
    };

    // Binned, the old image keeps its ref: it may still be restored.
    deregister_image(&store, &images[0])
        .await
        .expect("deregister");
    settle().await;
    assert_eq!(gc(&store, &quick()).await.refs_deleted, 0);
    assert_eq!(refs(&backend.all_objects().await), 2);

    purge_recycled(&store, Duration::ZERO).await.expect("purge");
    settle().await;
    let report = gc(&store, &quick()).await;
    assert_eq!(report.refs_deleted, 1, "{report:?}");
    assert_eq!(refs(&backend.all_objects().await), 1);
    let latest = resolve_image(&store, "ci@latest").await.expect("latest");
    assert_eq!(latest.id, images[1]);
}

pub(crate) async fn a_writer_that_meets_a_sweep_under_way_waits_for_it_to_finish(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let [(a, a_blocks), b, _] = three_snapshots(&store).await;
    forget(&store, &a.id).await;
    settle().await;
    let (older, first) = held_back_run(&store).await;
    let run = first.run.expect("a run");
    settle().await;
    // As if the run had begun deleting.
    backend
        .write_object(&format!("gc/runs/{run}/sweeping"), b"sweeping\n".to_vec())
        .await;

    let writer = SnapshotWriter::begin(&store, zero_fill(4 * BLOCK_SIZE))
        .await
        .expect("begin");
    let finish = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        backend
            .write_object(&format!("gc/runs/{run}/done"), b"done\n".to_vec())
            .await;
    };
    let started = std::time::Instant::now();
    let (put, ()) = tokio::join!(writer.put_block(0, a_blocks[0].1.clone()), finish);
    put.expect("put");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the put went ahead during the sweep"
    );
    let objects = backend.all_objects().await;
    assert!(
        objects
            .keys()
            .any(|path| path.starts_with(&format!("gc/runs/{run}/revived/b-"))),
        "no revived marker: {:?}",
        objects.keys().collect::<Vec<_>>()
    );
    let d = writer.commit().await.expect("commit");
    older.end().await.expect("end");
    gc(&store, &quick()).await;
    assert_intact(&store, &[b, (d, vec![(0, a_blocks[0].1.clone())])]).await;
}

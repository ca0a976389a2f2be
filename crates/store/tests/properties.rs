//! Properties of whole snapshots over random sparse disks: a snapshot restores to the exact
//! bytes it was made from, and `diff` names exactly the blocks whose bytes differ.
//!
//! Disks are small (at most 40 blocks of 4 KiB, the last one short) and mix holes, blocks
//! written as zeros, contents that repeat across the disk, and contents of their own, so
//! that zero detection, deduplication and short last blocks are all in play.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use blockyard_formats::raw::RawReader;
use blockyard_store::{
    CreateOptions, Fill, InitOptions, Location, NoProgress, RestoreOptions, SnapshotOptions,
    SnapshotReader, SnapshotRecord, SnapshotWriter, Store, create_snapshot, diff, restore,
};
use proptest::prelude::*;

/// The block size of the stores here: the smallest a store accepts, to keep disks small.
const BLOCK_SIZE: u64 = 4096;

/// [`BLOCK_SIZE`] as a buffer length.
const BLOCK: usize = 4096;

/// Most blocks in a generated disk.
const MAX_BLOCKS: usize = 40;

/// Cases per property: each builds a store and writes one or two disks, so a few dozen keep
/// the suite fast while still mixing every kind of block.
const CASES: u32 = 24;

/// What one block of a generated disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Never written: a hole in an image file, a position never put into a writer.
    Hole,
    /// Written, but all zero bytes.
    Zeros,
    /// One of three contents shared across the disk, so that blocks deduplicate.
    Repeated(u8),
    /// Contents of its own.
    Unique(u64),
}

/// A generated disk: its size and the kind of each block.
#[derive(Debug, Clone)]
struct Disk {
    size: u64,
    kinds: Vec<Kind>,
}

impl Disk {
    fn block_len(&self, index: usize) -> usize {
        let start = index * BLOCK;
        let size = usize::try_from(self.size).expect("small disk");
        (size - start).min(BLOCK)
    }

    /// The bytes of block `index`; the last block may be short.
    fn block(&self, index: usize) -> Vec<u8> {
        let len = self.block_len(index);
        match self.kinds[index] {
            Kind::Hole | Kind::Zeros => vec![0; len],
            Kind::Repeated(which) => noise(u64::MAX - u64::from(which), len),
            Kind::Unique(seed) => noise(seed, len),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        (0..self.kinds.len())
            .flat_map(|index| self.block(index))
            .collect()
    }

    fn data_blocks(&self) -> u64 {
        (0..self.kinds.len())
            .filter(|index| self.block(*index).iter().any(|b| *b != 0))
            .count() as u64
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
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

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Hole),
        1 => Just(Kind::Zeros),
        2 => (0u8..3).prop_map(Kind::Repeated),
        3 => any::<u64>().prop_map(Kind::Unique),
    ]
}

fn disk() -> impl Strategy<Value = Disk> {
    (1..=MAX_BLOCKS, 1..=BLOCK).prop_flat_map(|(count, tail)| {
        prop::collection::vec(kind(), count).prop_map(move |kinds| Disk {
            size: ((count - 1) * BLOCK + tail) as u64,
            kinds,
        })
    })
}

/// A disk, and the blocks a second disk of the same size rewrites (`None`: kept).
fn disk_and_changes() -> impl Strategy<Value = (Disk, Vec<Option<Kind>>)> {
    disk().prop_flat_map(|first| {
        let count = first.kinds.len();
        let changes = prop::collection::vec(prop::option::weighted(0.4, kind()), count);
        (Just(first), changes)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn memory_store() -> Store {
    let options = InitOptions {
        block_size: Some(BLOCK_SIZE),
        master_key: None,
    };
    Store::init(&Location::Memory, options).await.expect("init")
}

/// Writes `disk` as a sparse image file: holes stay holes, every other block is written.
fn write_image(disk: &Disk, path: &Path) {
    let file = std::fs::File::create(path).expect("create image");
    file.set_len(disk.size).expect("set length");
    for (index, kind) in disk.kinds.iter().enumerate() {
        if *kind != Kind::Hole {
            let offset = (index * BLOCK) as u64;
            file.write_all_at(&disk.block(index), offset)
                .expect("write");
        }
    }
}

/// Snapshots `disk` with a writer, putting its blocks last to first; holes are never put.
async fn write_with_writer(store: &Store, disk: &Disk) -> SnapshotRecord {
    let options = SnapshotOptions {
        size: disk.size,
        ..SnapshotOptions::default()
    };
    let writer = SnapshotWriter::begin(store, options).await.expect("begin");
    for (index, kind) in disk.kinds.iter().enumerate().rev() {
        if *kind != Kind::Hole {
            writer
                .put_block(index as u64, disk.block(index))
                .await
                .expect("put");
        }
    }
    writer.commit().await.expect("commit")
}

/// Snapshots `second` as a [`Fill::Parent`] child of `parent`, putting only `changes`.
async fn write_changes(
    store: &Store,
    parent: &SnapshotRecord,
    second: &Disk,
    changes: &[Option<Kind>],
) -> SnapshotRecord {
    let options = SnapshotOptions {
        size: second.size,
        parent: Some(parent.id),
        fill: Fill::Parent,
        ..SnapshotOptions::default()
    };
    let writer = SnapshotWriter::begin(store, options).await.expect("begin");
    for (index, change) in changes.iter().enumerate() {
        if change.is_some() {
            writer
                .put_block(index as u64, second.block(index))
                .await
                .expect("put");
        }
    }
    writer.commit().await.expect("commit")
}

/// Every block of a snapshot, zero blocks as zero bytes, joined into the disk's bytes.
async fn read_disk(store: &Store, record: &SnapshotRecord) -> Vec<u8> {
    let reader = SnapshotReader::open(store, &record.id).await.expect("open");
    let mut bytes = Vec::new();
    for index in 0..record.block_count() {
        match reader.read_block(index).await.expect("read") {
            Some(data) => bytes.extend_from_slice(&data),
            None => {
                let len = usize::try_from(reader.block_len(index)).expect("small block");
                bytes.resize(bytes.len() + len, 0);
            }
        }
    }
    bytes
}

async fn changed_indexes(
    store: &Store,
    first: &SnapshotRecord,
    second: &SnapshotRecord,
) -> Vec<u64> {
    let first = SnapshotReader::open(store, &first.id).await.expect("open");
    let second = SnapshotReader::open(store, &second.id).await.expect("open");
    let changed = diff(&first, &second).await.expect("diff");
    changed.iter().map(|block| block.index).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn a_sparse_image_restores_to_its_exact_bytes(disk in disk(), concurrency in 1usize..8) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let image = dir.path().join("source.raw");
        let output = dir.path().join("restored.raw");
        write_image(&disk, &image);

        let record = runtime().block_on(async {
            let store = memory_store().await;
            let reader = RawReader::open(&image).expect("open image");
            let options = CreateOptions { concurrency, ..CreateOptions::default() };
            let record = create_snapshot(&store, reader, options, Arc::new(NoProgress))
                .await
                .expect("snapshot");
            restore(&store, &record.id, &output, RestoreOptions::default(), Arc::new(NoProgress))
                .await
                .expect("restore");
            record
        });

        let restored = std::fs::read(&output).expect("read output");
        prop_assert!(restored == disk.bytes(), "restored bytes differ");
        prop_assert_eq!(record.size, disk.size);
        prop_assert_eq!(record.blocks.total, disk.kinds.len() as u64);
        prop_assert_eq!(record.blocks.data, disk.data_blocks());
    }

    #[test]
    fn diff_names_exactly_the_blocks_whose_bytes_differ(
        (first, changes) in disk_and_changes(),
    ) {
        let kinds = first.kinds.iter().zip(&changes).map(|(kept, new)| new.unwrap_or(*kept));
        let second = Disk { size: first.size, kinds: kinds.collect() };
        let expected: Vec<u64> = (0..first.kinds.len())
            .filter(|index| first.block(*index) != second.block(*index))
            .map(|index| index as u64)
            .collect();

        let (forward, backward, second_read) = runtime().block_on(async {
            let store = memory_store().await;
            let a = write_with_writer(&store, &first).await;
            let b = write_changes(&store, &a, &second, &changes).await;
            (
                changed_indexes(&store, &a, &b).await,
                changed_indexes(&store, &b, &a).await,
                read_disk(&store, &b).await,
            )
        });

        prop_assert_eq!(forward, expected.clone());
        prop_assert_eq!(backward, expected);
        prop_assert!(second_read == second.bytes(), "the child reads differently");
    }
}

//! Restoring snapshots to files, and snapshots made from raw images.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use blockyard_formats::raw::RawReader;
use blockyard_store::{
    BlockCounts, CreateOptions, RestoreOptions, SnapshotReader, StoreError, create_snapshot,
    restore,
};
use tempfile::TempDir;

use crate::Backend;
use crate::support::{
    BLOCK, BLOCK_SIZE, THREE_SEGMENT_DISK, noise, out_of_order_disk, progress, write_snapshot,
    zero_fill,
};

/// A folder for restore outputs.
fn output_dir() -> TempDir {
    tempfile::tempdir().expect("temporary folder")
}

/// The bytes a disk of `size` holding `blocks` consists of.
pub(crate) fn disk_bytes(size: u64, blocks: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(size).expect("size fits in memory")];
    for (index, data) in blocks {
        let start = usize::try_from(*index).expect("index") * BLOCK;
        bytes[start..start + data.len()].copy_from_slice(data);
    }
    bytes
}

pub(crate) async fn restore_reproduces_the_snapshot_byte_for_byte(backend: &Backend) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;
    let dir = output_dir();
    let output = dir.path().join("disk.raw");

    let summary = restore(
        &store,
        &record.id,
        &output,
        RestoreOptions::default(),
        progress(),
    )
    .await
    .expect("restore");

    let restored = std::fs::read(&output).expect("read output");
    assert_eq!(restored.len() as u64, size);
    assert!(
        restored == disk_bytes(size, &blocks),
        "restored bytes differ"
    );
    assert_eq!((summary.blocks_data, summary.blocks_zero), (4, 2));
    assert_eq!(summary.size, size);
}

pub(crate) async fn restore_leaves_zero_blocks_as_holes(backend: &Backend) {
    let store = backend.plain_store().await;
    let size = 256 * BLOCK_SIZE;
    let blocks = [(7, noise(7, BLOCK)), (200, noise(200, BLOCK))];
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;
    let dir = output_dir();
    let output = dir.path().join("disk.raw");

    restore(
        &store,
        &record.id,
        &output,
        RestoreOptions::default(),
        progress(),
    )
    .await
    .expect("restore");

    let meta = std::fs::metadata(&output).expect("metadata");
    assert_eq!(meta.len(), size);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < size / 8,
        "{allocated} bytes allocated for 2 data blocks of a {size}-byte disk"
    );
    let restored = std::fs::read(&output).expect("read output");
    assert!(
        restored == disk_bytes(size, &blocks),
        "restored bytes differ"
    );
}

pub(crate) async fn restore_refuses_to_overwrite_an_existing_file(backend: &Backend) {
    let store = backend.plain_store().await;
    let record = write_snapshot(&store, zero_fill(BLOCK_SIZE), &[(0, noise(1, BLOCK))]).await;
    let dir = output_dir();
    let output = dir.path().join("disk.raw");
    std::fs::write(&output, b"precious").expect("write");

    let result = restore(
        &store,
        &record.id,
        &output,
        RestoreOptions::default(),
        progress(),
    )
    .await;

    let error = result.expect_err("the file exists");
    assert!(matches!(error, StoreError::InvalidArgument(_)), "{error:?}");
    assert!(error.to_string().contains("already exists"), "{error}");
    assert_eq!(std::fs::read(&output).expect("read"), b"precious");
}

pub(crate) async fn restore_with_overwrite_replaces_an_existing_larger_file(backend: &Backend) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;
    let dir = output_dir();
    let output = dir.path().join("disk.raw");
    let junk_len = usize::try_from(size).expect("size") + 3 * BLOCK;
    std::fs::write(&output, vec![0xaa; junk_len]).expect("write");

    let options = RestoreOptions { overwrite: true };
    restore(&store, &record.id, &output, options, progress())
        .await
        .expect("restore");

    let restored = std::fs::read(&output).expect("read output");
    assert_eq!(restored.len() as u64, size);
    assert!(
        restored == disk_bytes(size, &blocks),
        "restored bytes differ"
    );
}

/// A sparse raw image of 3 MiB and 5000 bytes (49 blocks, the last short): noise in block 0,
/// a run crossing from block 16 into 17, zeros written (allocated) over block 30, and noise
/// in the short last block.
fn sparse_image(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let size = 3 * (1 << 20) + 5000;
    let path = dir.path().join("source.raw");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(size).expect("set length");
    let mut expected = vec![0u8; usize::try_from(size).expect("size")];
    let writes = [
        (0, noise(1, BLOCK)),
        (16 * BLOCK + 100, noise(2, BLOCK)),
        (30 * BLOCK, vec![0; BLOCK]),
        (48 * BLOCK, noise(3, 5000)),
    ];
    for (offset, data) in writes {
        file.write_all_at(&data, offset as u64).expect("write");
        expected[offset..offset + data.len()].copy_from_slice(&data);
    }
    (path, expected)
}

pub(crate) async fn create_snapshot_from_a_sparse_raw_image_round_trips(backend: &Backend) {
    let store = backend.plain_store().await;
    let dir = output_dir();
    let (source, expected) = sparse_image(&dir);
    let reader = RawReader::open(&source).expect("open image");

    let record = create_snapshot(&store, reader, CreateOptions::default(), progress())
        .await
        .expect("snapshot");

    assert_eq!(record.size, expected.len() as u64);
    let counts = BlockCounts {
        total: 49,
        data: 4,
        zero: 45,
    };
    assert_eq!(record.blocks, counts);
    assert_eq!(record.stats.blocks_new, 4);
    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    let indexes: Vec<u64> = reader
        .data_blocks()
        .await
        .expect("data blocks")
        .iter()
        .map(|(index, _)| *index)
        .collect();
    assert_eq!(indexes, [0, 16, 17, 48]);
    let output = dir.path().join("restored.raw");
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
        std::fs::read(&output).expect("read output") == expected,
        "restored bytes differ"
    );
}

pub(crate) async fn create_snapshot_of_a_disk_spanning_three_segments_keeps_every_block(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let dir = output_dir();
    let source = dir.path().join("source.raw");
    let file = std::fs::File::create(&source).expect("create");
    file.set_len(THREE_SEGMENT_DISK).expect("set length");
    let indexes = [1, 4095, 4096, 8200, 9599];
    for index in indexes {
        file.write_all_at(&noise(index, BLOCK), index * BLOCK_SIZE)
            .expect("write");
    }
    let reader = RawReader::open(&source).expect("open image");

    let record = create_snapshot(&store, reader, CreateOptions::default(), progress())
        .await
        .expect("snapshot");

    assert_eq!(record.segments.len(), 3);
    let counts = BlockCounts {
        total: 9600,
        data: 5,
        zero: 9595,
    };
    assert_eq!(record.blocks, counts);
    let reader = SnapshotReader::open(&store, &record.id)
        .await
        .expect("open");
    let data_blocks = reader.data_blocks().await.expect("data blocks");
    let found: Vec<u64> = data_blocks.iter().map(|(index, _)| *index).collect();
    assert_eq!(found, indexes);
    for index in indexes {
        let block = reader.read_block(index).await.expect("read");
        assert!(block == Some(noise(index, BLOCK)), "block {index} differs");
    }
}

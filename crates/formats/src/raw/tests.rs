use std::os::unix::fs::FileExt;

use super::*;
use crate::{Block, Blocks};

const BLOCK: u64 = 64 << 10;

fn sparse_image(dir: &Path, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
    let path = dir.join("disk.img");
    let file = File::create(&path).expect("create image");
    file.set_len(size).expect("size image");
    for (offset, bytes) in writes {
        file.write_all_at(bytes, *offset).expect("write image");
    }
    path
}

fn collect(path: &Path) -> Vec<(u64, Block)> {
    let reader = RawReader::open(path).expect("open");
    Blocks::new(reader, BLOCK)
        .expect("blocks")
        .map(|b| b.expect("block"))
        .collect()
}

#[test]
fn holes_and_zero_data_become_zero_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zeros = vec![0u8; 1000];
    let path = sparse_image(
        dir.path(),
        4 * BLOCK,
        &[(BLOCK + 7, b"data"), (3 * BLOCK, &zeros)],
    );

    let blocks = collect(&path);

    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0].1, Block::Zero);
    let Block::Data(bytes) = &blocks[1].1 else {
        panic!("block 1 should hold data")
    };
    assert_eq!(&bytes[7..11], b"data");
    assert_eq!(bytes.len() as u64, BLOCK);
    assert_eq!(blocks[2].1, Block::Zero);
    assert_eq!(blocks[3].1, Block::Zero, "written zeros are not data");
}

#[test]
fn short_last_block_is_yielded_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_image(dir.path(), BLOCK + 100, &[(BLOCK + 99, b"x")]);

    let blocks = collect(&path);

    assert_eq!(blocks.len(), 2);
    let Block::Data(bytes) = &blocks[1].1 else {
        panic!("last block should hold data")
    };
    assert_eq!(bytes.len(), 100);
}

#[test]
fn extents_report_holes_without_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_image(dir.path(), 64 << 20, &[(32 << 20, &[1u8; 4096])]);
    let mut reader = RawReader::open(&path).expect("open");

    let first = reader.extent_at(0).expect("extent");

    // Some file systems report holes with coarser granularity, but a 32 MiB hole at the start
    // of a file is visible on every one that supports SEEK_HOLE at all.
    if first.kind == ExtentKind::Zero {
        assert!(first.length >= 16 << 20, "hole too short: {first:?}");
        let data = reader.extent_at(32 << 20).expect("extent");
        assert_eq!(data.kind, ExtentKind::Data);
    }
}

#[test]
fn directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");

    let err = RawReader::open(dir.path()).expect_err("a directory is not an image");

    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let err = RawReader::open(Path::new("/nonexistent/disk.img")).expect_err("missing");

    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
}

#[test]
fn reads_past_the_end_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_image(dir.path(), 4096, &[]);
    let mut reader = RawReader::open(&path).expect("open");

    let err = reader
        .read_at(4000, &mut [0u8; 200])
        .expect_err("out of range");

    assert!(matches!(err, FormatError::OutOfRange { .. }), "{err}");
}

#[test]
fn bad_block_sizes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_image(dir.path(), 4096, &[]);
    for size in [0, 1000, 2048, 3 << 20, 128 << 20] {
        let reader = RawReader::open(&path).expect("open");
        assert!(
            Blocks::new(reader, size).is_err(),
            "block size {size} accepted"
        );
    }
}

#[test]
fn an_image_that_shrinks_while_read_is_reported_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_image(
        dir.path(),
        4 * BLOCK,
        &[(0, &[1u8; 100]), (3 * BLOCK, &[2u8; 100])],
    );
    let reader = RawReader::open(&path).expect("open");
    File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(BLOCK / 2)
        .expect("shrink");

    let results: Vec<_> = Blocks::new(reader, BLOCK).expect("blocks").collect();

    let error = results.into_iter().find_map(Result::err).expect("an error");
    assert!(matches!(error, FormatError::Truncated { .. }), "{error}");
    assert!(error.to_string().contains("ends at byte"), "{error}");
}

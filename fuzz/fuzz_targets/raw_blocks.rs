//! A raw image cut into 4 KiB blocks by `Blocks::new(RawReader::open(path), 4096)`.
//!
//! ```text
//! offset  size  field
//! 0       8     shape, u64 little-endian: with bit 63 set the file is left as written;
//!               otherwise it is cut or extended (sparsely) to shape % (64 MiB + 1) bytes
//! 8       rest  the file's first bytes
//! ```
//!
//! Inputs shorter than 8 bytes are written as they are. The iterator must never panic, and
//! what it yields is checked against the file: one block per 4 KiB (the last one short),
//! in order, data blocks holding exactly the file's bytes, zero blocks covering only zeros.

#![no_main]

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use blockyard_formats::raw::RawReader;
use blockyard_formats::{Block, Blocks, is_zero};
use libfuzzer_sys::fuzz_target;
use tempfile::TempDir;

/// Block size the image is cut into, in bytes.
const BLOCK_SIZE: u64 = 4096;

/// Largest file the shape may ask for, in bytes: larger than the 4 KiB libFuzzer inputs
/// default to, so that long holes and many blocks are covered, yet quick to walk.
const MAX_IMAGE_LEN: u64 = 64 << 20;

/// Shape bit that leaves the file as written.
const KEEP_AS_WRITTEN: u64 = 1 << 63;

fuzz_target!(|data: &[u8]| {
    let (contents, size) = match data.split_first_chunk::<8>() {
        Some((shape, rest)) => {
            let shape = u64::from_le_bytes(*shape);
            let size = if shape & KEEP_AS_WRITTEN != 0 {
                rest.len() as u64
            } else {
                shape % (MAX_IMAGE_LEN + 1)
            };
            (rest, size)
        }
        None => (data, data.len() as u64),
    };
    let path = image_path();
    let mut file = File::create(&path).expect("create the image");
    file.write_all(contents).expect("write the image");
    file.set_len(size).expect("size the image");
    drop(file);

    // The input's bytes that land in `offset..offset + len`; the rest of that range is zero.
    // Compared in place: a 64 MiB image has 16384 blocks, and a copy of each would cost more
    // than reading them.
    let written_in = |offset: u64, len: usize| -> &[u8] {
        let start = usize::try_from(offset).map_or(contents.len(), |o| o.min(contents.len()));
        let end = start.saturating_add(len).min(contents.len());
        &contents[start..end]
    };

    let reader = RawReader::open(&path).expect("open the image");
    let blocks = Blocks::new(reader, BLOCK_SIZE).expect("4 KiB is a valid block size");
    assert_eq!(blocks.block_count(), size.div_ceil(BLOCK_SIZE));
    let mut next = 0;
    for block in blocks {
        let (index, block) = block.expect("a file nobody changes reads without error");
        assert_eq!(index, next, "blocks out of order");
        next += 1;
        let offset = index * BLOCK_SIZE;
        let len = usize::try_from((size - offset).min(BLOCK_SIZE)).expect("at most 4 KiB");
        let written = written_in(offset, len);
        match block {
            Block::Data(bytes) => {
                assert_eq!(bytes.len(), len, "block {index} has the wrong length");
                let (head, tail) = bytes.split_at(written.len());
                assert_eq!(head, written, "block {index} holds other bytes");
                assert!(
                    is_zero(tail),
                    "block {index} holds bytes past the written ones"
                );
                assert!(
                    !is_zero(&bytes),
                    "an all-zero block {index} was yielded as data"
                );
            }
            Block::Zero => assert!(is_zero(written), "block {index} lost data"),
            // Only `Blocks::changes` yields it, for a layer over a backing disk; a raw file
            // has no backing disk.
            Block::Unchanged => panic!("block {index} of a raw file was yielded as unchanged"),
        }
    }
    assert_eq!(next, size.div_ceil(BLOCK_SIZE), "blocks missing at the end");
});

/// Where the image is written: one file in a folder made once per process.
fn image_path() -> PathBuf {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
        .path()
        .join("image.raw")
}

//! A qcow2 image opened from memory by `qcow2::open`, its extents walked and its bytes read.
//!
//! The input is the whole image file. Whatever backing file it names, it gets a 1 MiB
//! in-memory raw disk of patterned bytes; whatever external data file it names, it gets
//! the same bytes as a file. Opening may fail, but never panic, and an image that opens
//! must keep these promises, checked over at most `MAX_EXTENTS` extents:
//!
//! - every extent starts where asked, is at least a byte long and ends within the disk,
//!   from both `extent_at` and `layer_extent_at`, and only the layer reports `Backing`;
//! - a zero extent reads as zeros, and a backing extent reads as the backing disk's bytes;
//! - a read across two extents equals the two reads on either side of their boundary, so
//!   coalesced reads of neighbouring clusters agree with reads of each.

#![no_main]

use std::sync::{Arc, OnceLock};

use blockyard_formats::raw::RawSourceReader;
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, Format, FormatError, MemorySource, OpenContext, Resolver,
    qcow2,
};
use libfuzzer_sys::fuzz_target;

/// Bytes of the backing disk and of the external data file: 1 MiB, so that images both
/// shorter and longer than their backing disk are reached.
const BACKING_LEN: usize = 1 << 20;

/// Extents walked per input: enough for every cluster of a small fuzzed image, few enough
/// that a disk of 2^56 bytes with alternating clusters stays quick.
const MAX_EXTENTS: usize = 2048;

/// Bytes read from the start of each extent: several 512-byte clusters, so that reads
/// coalesce.
const MAX_READ: u64 = 16 << 10;

/// Bytes read on each side of an extent boundary.
const BOUNDARY_READ: u64 = 1024;

/// The backing disk's bytes: never zero, different at every offset modulo 251.
fn backing_bytes() -> &'static Arc<[u8]> {
    static BACKING: OnceLock<Arc<[u8]>> = OnceLock::new();
    BACKING.get_or_init(|| (0..BACKING_LEN).map(|i| (i % 251) as u8 + 1).collect())
}

/// Serves the patterned bytes for every name: as a raw disk for a backing file, as a file
/// for an external data file.
struct PatternResolver;

impl Resolver for PatternResolver {
    fn open_file(&self, _from: &str, _name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        Ok(Arc::new(MemorySource::new("data", Arc::clone(backing_bytes()))))
    }

    fn open_backing(
        &self,
        _from: &str,
        _name: &str,
        _format: Option<Format>,
        _depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        let source = MemorySource::new("backing", Arc::clone(backing_bytes()));
        Ok(Box::new(RawSourceReader::new(Arc::new(source))))
    }
}

fuzz_target!(|data: &[u8]| {
    let source = Arc::new(MemorySource::new("fuzz.qcow2", data.to_vec()));
    let context = OpenContext {
        resolver: &PatternResolver,
        depth: 0,
    };
    let Ok(mut disk) = qcow2::open(source, &context) else {
        return;
    };
    let size = disk.size();

    let mut offset = 0;
    for _ in 0..MAX_EXTENTS {
        if offset >= size {
            break;
        }
        let Ok(extent) = disk.extent_at(offset) else {
            return;
        };
        assert_eq!(extent.offset, offset);
        assert!(
            extent.length > 0 && extent.end() <= size,
            "{extent:?} of {size}"
        );
        assert_ne!(extent.kind, ExtentKind::Backing);
        let Ok(layer) = disk.layer_extent_at(offset) else {
            return;
        };
        assert_eq!(layer.offset, offset);
        assert!(
            layer.length > 0 && layer.end() <= size,
            "{layer:?} of {size}"
        );

        let len = extent.length.min(layer.length).min(MAX_READ);
        let Ok(bytes) = disk.read_vec(offset, len as usize) else {
            return;
        };
        assert_eq!(bytes.len() as u64, len);
        if extent.kind == ExtentKind::Zero {
            assert!(
                bytes.iter().all(|&b| b == 0),
                "zero extent {extent:?} holds data"
            );
        }
        if layer.kind == ExtentKind::Backing {
            let backing = backing_bytes();
            for (i, &byte) in bytes.iter().enumerate() {
                let at = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .saturating_add(i);
                assert_eq!(
                    Some(&byte),
                    backing.get(at),
                    "backing byte {at} of {layer:?}"
                );
            }
        }

        let end = extent.end();
        if end < size {
            let before = (end - offset).min(BOUNDARY_READ);
            let after = (size - end).min(BOUNDARY_READ);
            let start = end - before;
            if let (Ok(whole), Ok(head), Ok(tail)) = (
                disk.read_vec(start, (before + after) as usize),
                disk.read_vec(start, before as usize),
                disk.read_vec(end, after as usize),
            ) {
                assert_eq!(
                    whole,
                    [head, tail].concat(),
                    "reads across byte {end} differ"
                );
            }
        }
        offset = end;
    }
});

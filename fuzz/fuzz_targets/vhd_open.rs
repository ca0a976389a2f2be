//! A VHD opened from memory by `vhd::open`, its extents walked and its bytes read.
//!
//! The input is the whole image file. A differencing disk gets a 1 MiB in-memory raw parent
//! of patterned bytes whatever name it gives; every other file is refused. Opening may
//! fail, but never panic, and an image that opens must keep these promises, checked over at
//! most `MAX_EXTENTS` extents:
//!
//! - every extent starts where asked, is at least a byte long and ends within the disk,
//!   from both `extent_at` and `layer_extent_at`, and only the layer reports `Backing`;
//! - a zero extent reads as zeros, and a backing extent reads as the parent's bytes;
//! - a read across two extents equals the two reads on either side of their boundary.

#![no_main]

use std::io;
use std::sync::{Arc, OnceLock};

use blockyard_formats::raw::RawSourceReader;
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, Format, FormatError, MemorySource, OpenContext, Resolver,
    vhd,
};
use libfuzzer_sys::fuzz_target;

/// Bytes of the parent a differencing disk is given: 1 MiB, so that disks both shorter and
/// longer than their parent are reached.
const PARENT_LEN: usize = 1 << 20;

/// Extents walked per input: enough to pass every block of a fuzzed image, few enough that
/// a 4 TiB disk of alternating bitmap bits stays quick.
const MAX_EXTENTS: usize = 2048;

/// Bytes read from the start of each extent.
const MAX_READ: u64 = 16 << 10;

/// The parent's bytes: never zero, different at every offset modulo 251.
fn parent_bytes() -> &'static Arc<[u8]> {
    static PARENT: OnceLock<Arc<[u8]>> = OnceLock::new();
    PARENT.get_or_init(|| (0..PARENT_LEN).map(|i| (i % 251) as u8 + 1).collect())
}

/// Serves the in-memory parent for every backing name and refuses every other file.
struct ParentResolver;

impl Resolver for ParentResolver {
    fn open_file(&self, _from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        Err(FormatError::Open {
            path: name.into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    fn open_backing(
        &self,
        _from: &str,
        _name: &str,
        _format: Option<Format>,
        _depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        let source = MemorySource::new("parent", Arc::clone(parent_bytes()));
        Ok(Box::new(RawSourceReader::new(Arc::new(source))))
    }
}

fuzz_target!(|data: &[u8]| {
    let source = Arc::new(MemorySource::new("fuzz.vhd", data.to_vec()));
    let context = OpenContext {
        resolver: &ParentResolver,
        depth: 0,
    };
    let Ok(mut disk) = vhd::open(source, &context) else {
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
            let parent = parent_bytes();
            for (i, &byte) in bytes.iter().enumerate() {
                let at = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .saturating_add(i);
                assert_eq!(
                    byte,
                    parent.get(at).copied().unwrap_or(0),
                    "backing byte {at}"
                );
            }
        }

        // Across the boundary with the next extent: one read equals two.
        let end = extent.end();
        if end < size {
            let before = (end - offset).min(512);
            let after = (size - end).min(512);
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

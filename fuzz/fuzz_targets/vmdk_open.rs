//! A VMDK opened from memory by `vmdk::open`, its extents walked and its bytes read.
//!
//! ```text
//! offset  size  field
//! 0       4     length N of the image file, u32 little-endian (cut to what the input holds)
//! 4       N     the image file: a sparse or stream-optimized extent, or a text descriptor
//! 4 + N   rest  the file every extent line names, whatever name it gives
//! ```
//!
//! Inputs shorter than 4 bytes are the image file alone. A delta disk gets a 1 MiB
//! in-memory raw parent of patterned bytes whatever name it gives. Opening may fail, but
//! never panic, and a disk that opens must keep these promises, checked over at most
//! `MAX_EXTENTS` extents:
//!
//! - every extent starts where asked, is at least a byte long and ends within the disk,
//!   from both `extent_at` and `layer_extent_at`, and only the layer reports `Backing`;
//! - a zero extent reads as zeros, and a backing extent reads as the parent's bytes;
//! - a read across two extents equals the two reads on either side of their boundary.

#![no_main]

use std::sync::{Arc, OnceLock};

use blockyard_formats::raw::RawSourceReader;
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, Format, FormatError, MemorySource, OpenContext, Resolver,
    vmdk,
};
use libfuzzer_sys::fuzz_target;

/// Bytes of the parent a delta disk is given: 1 MiB, so that disks both shorter and longer
/// than their parent are reached.
const PARENT_LEN: usize = 1 << 20;

/// Extents walked per input: enough to pass every grain of a small fuzzed image, few
/// enough that a huge disk of alternating grains stays quick.
const MAX_EXTENTS: usize = 2048;

/// Bytes read from the start of each extent: two 4 KiB grains and part of a third, or a
/// quarter of a usual 64 KiB grain.
const MAX_READ: u64 = 10 << 10;

/// The parent's bytes: never zero, different at every offset modulo 251.
fn parent_bytes() -> &'static Arc<[u8]> {
    static PARENT: OnceLock<Arc<[u8]>> = OnceLock::new();
    PARENT.get_or_init(|| (0..PARENT_LEN).map(|i| (i % 251) as u8 + 1).collect())
}

/// Serves the input's second file for every extent name and the in-memory parent for every
/// backing name.
struct InputResolver {
    extent_file: Arc<[u8]>,
}

impl Resolver for InputResolver {
    fn open_file(&self, _from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        Ok(Arc::new(MemorySource::new(
            name,
            Arc::clone(&self.extent_file),
        )))
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
    let (image, extent_file) = match data.split_first_chunk::<4>() {
        Some((len, rest)) => {
            let len = usize::try_from(u32::from_le_bytes(*len))
                .unwrap_or(usize::MAX)
                .min(rest.len());
            rest.split_at(len)
        }
        None => (data, &[][..]),
    };
    let resolver = InputResolver {
        extent_file: extent_file.into(),
    };
    let context = OpenContext {
        resolver: &resolver,
        depth: 0,
    };
    let source = Arc::new(MemorySource::new("fuzz.vmdk", image.to_vec()));
    let Ok(mut disk) = vmdk::open(source, &context) else {
        return;
    };
    walk(&mut *disk);
});

fn walk(disk: &mut dyn DiskReader) {
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

        // A read across the boundary with the next extent equals the reads on either side.
        let end = extent.end();
        if end < size {
            let before = (end - offset).min(700);
            let after = (size - end).min(900);
            let start = end - before;
            if let (Ok(joined), Ok(left), Ok(right)) = (
                disk.read_vec(start, (before + after) as usize),
                disk.read_vec(start, before as usize),
                disk.read_vec(end, after as usize),
            ) {
                assert_eq!(&joined[..before as usize], &left[..], "left of {end}");
                assert_eq!(&joined[before as usize..], &right[..], "right of {end}");
            }
        }
        offset = end;
    }
}

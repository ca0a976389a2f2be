//! A VHDX opened by `vhdx::open` from a sparse file the input describes, its extents walked
//! and its bytes read.
//!
//! A VHDX keeps its log, metadata, BAT and blocks at 1 MiB and beyond, further than a fuzz
//! input reaches, so the input describes the file as records laid over zeros:
//!
//! ```text
//! offset  size  field
//! 0       4     the file's length in KiB, u32 little-endian, modulo MAX_IMAGE_KIB + 1;
//!               records that reach further make the file longer
//! 4       ...   records: file offset (u32 little-endian), length (u16 little-endian), then
//!               that many bytes; a last record cut short keeps the bytes it has
//! ```
//!
//! Later records overwrite earlier ones. The seeds in `fuzz/seeds/vhdx` are images made by
//! qemu-img (and by blockyard's writer), each encoded as one record per run of non-zero
//! bytes. A differencing disk gets a 1 MiB in-memory raw parent of patterned bytes whatever
//! it names; every other file is refused. Opening may fail, but never panic, and an image
//! that opens must keep these promises, checked over at most `MAX_EXTENTS` extents:
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
    vhdx,
};
use libfuzzer_sys::fuzz_target;

/// Longest file the input may describe, in KiB: 256 MiB, room for a 64 MiB log and a few
/// 32 MiB blocks past the metadata. The file is never held whole.
const MAX_IMAGE_KIB: u32 = 256 << 10;

/// Bytes of the parent a differencing disk is given: 1 MiB, so that disks both shorter and
/// longer than their parent are reached.
const PARENT_LEN: usize = 1 << 20;

/// Extents walked per input: enough to pass every block of a small image, few enough that
/// a large disk of alternating bitmap bits stays quick.
const MAX_EXTENTS: usize = 2048;

/// Bytes read from the start of each extent.
const MAX_READ: u64 = 16 << 10;

/// A file of zeros with records laid over it.
#[derive(Debug)]
struct SparseFile {
    len: u64,
    records: Vec<(u64, Vec<u8>)>,
}

impl SparseFile {
    fn decode(data: &[u8]) -> Self {
        let Some((length, mut rest)) = data.split_first_chunk::<4>() else {
            return Self {
                len: 0,
                records: Vec::new(),
            };
        };
        let mut len = u64::from(u32::from_le_bytes(*length) % (MAX_IMAGE_KIB + 1)) << 10;
        let mut records = Vec::new();
        while let Some((head, body)) = rest.split_first_chunk::<6>() {
            let offset = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
            let wanted = usize::from(u16::from_le_bytes([head[4], head[5]]));
            let (bytes, next) = body.split_at(wanted.min(body.len()));
            len = len.max(offset + bytes.len() as u64);
            records.push((offset, bytes.to_vec()));
            rest = next;
        }
        Self { len, records }
    }
}

impl ByteSource for SparseFile {
    fn name(&self) -> &str {
        "fuzz.vhdx"
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.len {
            return Err(FormatError::Truncated {
                name: self.name().to_owned(),
                end: self.len,
                wanted: end,
            });
        }
        buf.fill(0);
        for (at, bytes) in &self.records {
            let record_end = at + bytes.len() as u64;
            if *at >= end || record_end <= offset {
                continue;
            }
            let lo = (*at).max(offset);
            let hi = record_end.min(end);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
        }
        Ok(())
    }
}

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
    let source = Arc::new(SparseFile::decode(data));
    let context = OpenContext {
        resolver: &ParentResolver,
        depth: 0,
    };
    let Ok(mut disk) = vhdx::open(source, &context) else {
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

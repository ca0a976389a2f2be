//! An OVA archive listed by `ova::open`, then each disk opened and walked.
//!
//! The input is the whole archive, held in a `MemorySource`. Listing must never panic, and
//! what it lists must lie within the input: every member's window, every disk's source.
//! Each disk (at most [`MAX_DISKS_OPENED`]) is then opened in its format, with a resolver
//! that refuses every file outside the archive (names of other members still resolve,
//! through the archive), and its extents are walked and read within fixed budgets. The
//! same archive also goes through the dispatcher, which opens single-disk archives.

#![no_main]

use std::sync::Arc;

use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, Format, FormatError, MemorySource, Resolver, is_zero, ova,
};
use libfuzzer_sys::fuzz_target;

/// Disks opened per input: the listing allows hundreds, and each costs reads.
const MAX_DISKS_OPENED: usize = 4;
/// Extents walked per disk.
const MAX_EXTENTS: usize = 64;
/// Bytes read from one extent.
const MAX_READ_PER_EXTENT: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let source: Arc<dyn ByteSource> = Arc::new(MemorySource::new("fuzz.ova", data.to_vec()));
    let input_len = data.len() as u64;

    if let Ok(archive) = ova::open(source.clone()) {
        for member in &archive.members {
            let end = member
                .data_offset
                .checked_add(member.size)
                .expect("no overflow");
            assert!(end <= input_len, "member {member:?} runs past the input");
            assert!(
                member.header_offset + 512 == member.data_offset,
                "{member:?}"
            );
            assert!(
                !member.name.is_empty() && !member.name.starts_with('/'),
                "{member:?}"
            );
            assert!(
                !member.name.split('/').any(|part| part == ".."),
                "{member:?}"
            );
        }
        assert!(
            archive
                .members
                .iter()
                .any(|m| m.name == archive.descriptor_name)
        );
        for disk in archive.disks.iter().take(MAX_DISKS_OPENED) {
            assert!(disk.source.len() <= input_len, "{disk:?}");
            if let Ok(mut reader) = disk.open(&Refuse) {
                walk(&mut *reader);
            }
        }
    }

    if let Ok(mut reader) = blockyard_formats::open(source, Some(Format::Ova), &Refuse) {
        walk(&mut *reader);
    }
});

/// Walks a disk's extents from the start, reading a bounded prefix of each, and checks
/// that extents cover the offset asked for and that zero extents read as zeros.
fn walk(reader: &mut dyn DiskReader) {
    let size = reader.size();
    let mut offset = 0u64;
    for _ in 0..MAX_EXTENTS {
        if offset >= size {
            return;
        }
        let Ok(extent) = reader.extent_at(offset) else {
            return;
        };
        assert!(extent.length > 0, "{extent:?}");
        assert!(
            extent.offset <= offset && extent.end() > offset,
            "{extent:?} at {offset}"
        );
        assert!(
            extent.end() <= size,
            "{extent:?} past the disk's {size} bytes"
        );
        assert_ne!(
            extent.kind,
            ExtentKind::Backing,
            "extent_at never says Backing"
        );
        let len = (extent.end() - offset).min(MAX_READ_PER_EXTENT);
        let len = usize::try_from(len).expect("at most 64 KiB");
        if let Ok(bytes) = reader.read_vec(offset, len) {
            assert_eq!(bytes.len(), len);
            if extent.kind == ExtentKind::Zero {
                assert!(is_zero(&bytes), "a zero extent {extent:?} holds data");
            }
        }
        offset = extent.end();
    }
}

/// Opens nothing outside the archive.
struct Refuse;

impl Resolver for Refuse {
    fn open_file(&self, from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        Err(refused(from, name))
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        _format: Option<Format>,
        _depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        Err(refused(from, name))
    }
}

fn refused(from: &str, name: &str) -> FormatError {
    FormatError::Unsupported {
        format: "fuzz",
        name: from.to_owned(),
        feature: format!("opening {name:?} outside the archive"),
        advice: "the fuzz target opens no files",
    }
}

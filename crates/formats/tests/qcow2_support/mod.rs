//! Helpers of the qcow2 tests: running qemu-img and qemu-io, comparing a reader with
//! `qemu-img convert -O raw`, export layouts from bytes, and a hand-built image to corrupt.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use blockyard_formats::export::ExportLayout;
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, FileResolver, FileSource, Format, FormatError,
    MemorySource, OpenContext, Resolver, is_zero,
};

/// Runs qemu-img and returns what it printed; fails the test if it fails.
pub(crate) fn qemu_img(args: &[&str]) -> String {
    let output = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        output.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs each of `commands` (such as `write -P 0x5a 1M 64k`) with qemu-io on a qcow2 image.
pub(crate) fn qemu_io(image: &Path, commands: &[&str]) {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "qcow2"]);
    for c in commands {
        command.args(["-c", c]);
    }
    let output = command.arg(image).output().expect("qemu-io runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && !stdout.contains("error") && !stdout.contains("failed"),
        "qemu-io {commands:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The disk of `image` as `qemu-img convert -O raw` reads it.
pub(crate) fn raw_of(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("expected.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "raw",
        image.to_str().expect("utf-8"),
        raw.to_str().expect("utf-8"),
    ]);
    let bytes = std::fs::read(&raw).expect("read raw");
    std::fs::remove_file(&raw).expect("remove raw");
    bytes
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write file");
}

/// `len` pseudo-random bytes that never compress, the same for the same `seed`.
pub(crate) fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len as usize);
    bytes
}

/// What the tests open images with: local files, names relative to the image.
pub(crate) fn context() -> OpenContext<'static> {
    OpenContext {
        resolver: &FileResolver,
        depth: 0,
    }
}

/// Opens a qcow2 file with its backing chain.
pub(crate) fn open_file(path: &Path) -> Box<dyn DiskReader> {
    let source = Arc::new(FileSource::open(path).expect("source"));
    blockyard_formats::open(source, Some(Format::Qcow2), &FileResolver).expect("open")
}

/// A resolver that has no files at all.
#[derive(Debug)]
struct NoFiles;

impl Resolver for NoFiles {
    fn open_file(&self, _: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        Err(FormatError::NotAnImage {
            path: name.into(),
            what: "missing file",
        })
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        _: Option<Format>,
        _: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        self.open_file(from, name).map(|_| unreachable!())
    }
}

/// Opens image bytes held in memory; any file they name is missing.
pub(crate) fn open_memory(bytes: Vec<u8>) -> Result<Box<dyn DiskReader>, FormatError> {
    let source = Arc::new(MemorySource::new("fixture.qcow2", bytes));
    blockyard_formats::qcow2::open(
        source,
        &OpenContext {
            resolver: &NoFiles,
            depth: 0,
        },
    )
}

/// How a disk's extents split it.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) zero_bytes: u64,
    pub(crate) data_bytes: u64,
}

/// Checks that the reader returns exactly what qemu reads, in 512 KiB reads and in odd
/// ones, and that every extent it calls zero holds zeros.
pub(crate) fn assert_reads_like_qemu(image: &Path) -> Summary {
    let expected = raw_of(image);
    let mut reader = open_file(image);
    assert_eq!(reader.size(), expected.len() as u64, "virtual size");

    let chunk = 512 << 10;
    for (index, want) in expected.chunks(chunk).enumerate() {
        let got = reader
            .read_vec((index * chunk) as u64, want.len())
            .expect("read");
        assert!(got == want, "bytes differ in the 512 KiB read {index}");
    }
    // Reads that start and end inside clusters.
    let odd = 3 * 4096 + 123;
    let mut offset = 777usize;
    while offset < expected.len() {
        let len = odd.min(expected.len() - offset);
        let got = reader.read_vec(offset as u64, len).expect("odd read");
        assert!(
            got == expected[offset..offset + len],
            "bytes differ at {offset}"
        );
        offset += 997 * 1024 + 1;
    }

    let mut summary = Summary::default();
    let mut offset = 0;
    while offset < reader.size() {
        let extent = reader.extent_at(offset).expect("extent");
        assert_eq!(extent.offset, offset, "extents must start where asked");
        assert!(extent.length > 0 && extent.end() <= reader.size());
        let range = extent.offset as usize..extent.end() as usize;
        match extent.kind {
            ExtentKind::Zero => {
                assert!(
                    is_zero(&expected[range]),
                    "zero extent {extent:?} holds data"
                );
                summary.zero_bytes += extent.length;
            }
            ExtentKind::Data => summary.data_bytes += extent.length,
            ExtentKind::Backing => panic!("extent_at reported {extent:?}"),
        }
        offset = extent.end();
    }
    summary
}

/// The layout and data blocks of `source` cut into `block_size` blocks, zero blocks left
/// out.
pub(crate) fn export_layout(source: &[u8], block_size: u64) -> (ExportLayout, Vec<(u64, Vec<u8>)>) {
    let blocks: Vec<(u64, Vec<u8>)> = source
        .chunks(block_size as usize)
        .enumerate()
        .filter(|(_, bytes)| !is_zero(bytes))
        .map(|(index, bytes)| (index as u64, bytes.to_vec()))
        .collect();
    let layout = ExportLayout {
        size: source.len() as u64,
        block_size,
        data_blocks: blocks.iter().map(|(index, _)| *index).collect(),
    };
    (layout, blocks)
}

/// Checks an exported image with qemu-img (check, info, compare with the original) and
/// reads it back with the reader.
pub(crate) fn assert_exported_image_matches(out: &Path, original: &Path, source: &[u8]) {
    let out_str = out.to_str().expect("utf-8");
    let report = qemu_img(&["check", "-f", "qcow2", out_str]);
    assert!(report.contains("No errors were found"), "{report}");
    assert!(!report.contains("leaked"), "{report}");

    let info = qemu_img(&["info", "--output=json", out_str]);
    let size = (source.len() as u64).next_multiple_of(512);
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {size},")),
        "{info}"
    );
    assert!(info.contains("\"compat\": \"1.1\""), "{info}");

    let compared = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        out_str,
        original.to_str().expect("utf-8"),
    ]);
    assert!(compared.contains("Images are identical"), "{compared}");

    let mut reader = open_file(out);
    assert_eq!(reader.size(), size);
    let got = reader.read_vec(0, source.len()).expect("read back");
    assert!(
        got == source,
        "the reader reads other bytes than were exported"
    );
}

/// A 2 KiB version 3 image with 512-byte clusters, built field by field:
///
/// ```text
///  0     header: magic, version 3, no backing file, cluster_bits 9, size 2048,
///        l1_size 1, l1_table_offset 512, header_length 104; extensions end at 104
///  512   L1 table: entry 0 = L2 table at 1024
///  1024  L2 table: cluster 0 at 1536, cluster 1 unallocated, cluster 2 zero flag,
///        cluster 3 unallocated
///  1536  cluster 0's data: 512 bytes of 0xab
/// ```
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) bytes: Vec<u8>,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let mut fixture = Self {
            bytes: vec![0u8; 2048],
        };
        fixture.bytes[..4].copy_from_slice(b"QFI\xfb"); // magic
        fixture.put_u32(4, 3); // version
        fixture.put_u64(8, 0); // backing_file_offset: none
        fixture.put_u32(16, 0); // backing_file_size
        fixture.put_u32(20, 9); // cluster_bits: 512-byte clusters
        fixture.put_u64(24, 2048); // size: four clusters
        fixture.put_u32(32, 0); // crypt_method: none
        fixture.put_u32(36, 1); // l1_size
        fixture.put_u64(40, 512); // l1_table_offset
        fixture.put_u64(48, 0); // refcount_table_offset: not read
        fixture.put_u32(56, 0); // refcount_table_clusters
        fixture.put_u32(60, 0); // nb_snapshots
        fixture.put_u64(64, 0); // snapshots_offset
        fixture.put_u64(72, 0); // incompatible_features
        fixture.put_u64(80, 0); // compatible_features
        fixture.put_u64(88, 0); // autoclear_features
        fixture.put_u32(96, 4); // refcount_order: 16 bits
        fixture.put_u32(100, 104); // header_length; a zero type at 104 ends the extensions
        fixture.put_u64(512, 1024 | 1 << 63); // L1[0]: the L2 table, refcount one
        fixture.put_u64(1024, 1536 | 1 << 63); // L2[0]: cluster 0 at 1536
        fixture.put_u64(1024 + 8, 0); // L2[1]: unallocated
        fixture.put_u64(1024 + 16, 1); // L2[2]: reads as zeros
        fixture.put_u64(1024 + 24, 0); // L2[3]: unallocated
        fixture.bytes[1536..].fill(0xab); // cluster 0's data
        fixture
    }

    pub(crate) fn put_u32(&mut self, at: usize, value: u32) {
        self.bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn put_u64(&mut self, at: usize, value: u64) {
        self.bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
    }

    /// Turns the image into version 2: a 72-byte header whose extensions start at 72.
    pub(crate) fn make_version_2(&mut self) {
        self.put_u32(4, 2);
        self.bytes[72..104].fill(0);
    }
}

/// What the fuzz target does with an input: open it with no files around, walk its
/// extents and read a little of each, all bounded. Errors are fine; panics are not.
pub(crate) fn walk(bytes: Vec<u8>) {
    let Ok(mut reader) = open_memory(bytes) else {
        return;
    };
    let size = reader.size();
    let mut offset = 0;
    for _ in 0..4096 {
        if offset >= size {
            break;
        }
        let Ok(extent) = reader.extent_at(offset) else {
            break;
        };
        assert!(extent.length > 0 && extent.end() <= size, "{extent:?}");
        let len = extent.length.min(64 << 10) as usize;
        let _ = reader.read_vec(offset, len);
        let _ = reader.layer_extent_at(offset);
        offset = extent.end();
    }
}

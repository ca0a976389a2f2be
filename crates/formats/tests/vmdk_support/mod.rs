//! Helpers for the VMDK tests: running qemu-img and qemu-io, comparing a reader with the
//! raw conversion qemu makes, exporting, and building small images by hand.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blockyard_formats::export::{ExportLayout, ImageIdentity};
use blockyard_formats::raw::RawReader;
use blockyard_formats::vmdk::{self, VmdkReader, VmdkSubformat, VmdkWriteOptions};
use blockyard_formats::{
    Block, Blocks, ByteSource, DiskReader, ExtentKind, FileResolver, FileSink, FileSource, Format,
    FormatError, MemorySource, OpenContext, Resolver, StreamSink, open_at_depth,
};

/// Bytes compared per read: large enough to cross many grains at once.
const COMPARE_CHUNK: u64 = 4 << 20;

/// Runs qemu-img with `args` and returns its standard output; panics on failure.
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

/// Runs each qemu-io command on `image`, opened as `format`.
pub(crate) fn qemu_io(image: &Path, format: &str, commands: &[&str]) {
    let mut command = Command::new("qemu-io");
    command.args(["-f", format]);
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

/// The path as a `&str` for a command line.
pub(crate) fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A sparse raw image of `size` bytes with qemu-io `commands` applied.
pub(crate) fn raw_image(dir: &Path, name: &str, size: &str, commands: &[&str]) -> PathBuf {
    let path = dir.join(name);
    qemu_img(&["create", "-q", "-f", "raw", text(&path), size]);
    qemu_io(&path, "raw", commands);
    path
}

/// Converts `raw` to a VMDK of `subformat` with qemu-img.
pub(crate) fn qemu_vmdk(raw: &Path, out: &Path, subformat: &str) {
    let option = format!("subformat={subformat}");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        &option,
        text(raw),
        text(out),
    ]);
}

/// What qemu-img makes of `image` as a raw file, beside it.
pub(crate) fn raw_of(image: &Path) -> PathBuf {
    let raw = image.with_extension("qemu.raw");
    qemu_img(&["convert", "-q", "-O", "raw", text(image), text(&raw)]);
    raw
}

/// Opens `path` as its magic numbers say, with extent and parent files beside it.
pub(crate) fn open_path(path: &Path) -> Box<dyn DiskReader> {
    let source = FileSource::open(path).expect("open the image file");
    blockyard_formats::open(Arc::new(source), None, &FileResolver).expect("open the image")
}

/// Opens `path` as a VMDK, with extent and parent files beside it.
pub(crate) fn open_vmdk(path: &Path) -> VmdkReader {
    let source = FileSource::open(path).expect("open the image file");
    let context = OpenContext {
        resolver: &FileResolver,
        depth: 0,
    };
    VmdkReader::open(Arc::new(source), &context).expect("open the VMDK")
}

/// What a walk over a disk's extents found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Summary {
    /// Bytes in extents reported `Data`.
    pub data_bytes: u64,
    /// Bytes in extents reported `Zero`.
    pub zero_bytes: u64,
    /// Extents reported.
    pub extents: u64,
}

/// Walks every extent of the VMDK at `image` and checks it against qemu's raw conversion:
/// data extents hold the same bytes, zero extents cover only zeros; reads that start and
/// end inside grains and cross extents agree too.
pub(crate) fn assert_reads_like_qemu(image: &Path) -> Summary {
    let raw_path = raw_of(image);
    let mut reader = open_path(image);
    let summary = assert_matches_raw(&mut *reader, &raw_path);
    std::fs::remove_file(&raw_path).expect("remove the raw conversion");
    summary
}

/// [`assert_reads_like_qemu`] against a raw file already made.
pub(crate) fn assert_matches_raw(reader: &mut dyn DiskReader, raw_path: &Path) -> Summary {
    let raw = File::open(raw_path).expect("open the raw conversion");
    let size = raw.metadata().expect("raw size").len();
    assert_eq!(reader.size(), size, "virtual size");

    let mut summary = Summary::default();
    let mut offset = 0;
    while offset < size {
        let extent = reader.extent_at(offset).expect("extent");
        assert_eq!(extent.offset, offset, "extents start where asked");
        assert!(extent.length > 0 && extent.end() <= size, "{extent:?}");
        summary.extents += 1;
        match extent.kind {
            ExtentKind::Data => {
                summary.data_bytes += extent.length;
                let mut at = offset;
                while at < extent.end() {
                    let len = (extent.end() - at).min(COMPARE_CHUNK);
                    let ours = reader.read_vec(at, len as usize).expect("read data");
                    let mut theirs = vec![0u8; len as usize];
                    raw.read_exact_at(&mut theirs, at).expect("read raw");
                    assert!(ours == theirs, "bytes differ in {at}+{len}");
                    at += len;
                }
            }
            ExtentKind::Zero => {
                summary.zero_bytes += extent.length;
                assert_raw_zero(raw_path, &raw, offset, extent.end());
            }
            ExtentKind::Backing => panic!("extent_at reported Backing: {extent:?}"),
        }
        offset = extent.end();
    }

    // Unaligned reads across grain and extent boundaries.
    let step = (size / 7).max(1);
    for i in 0..7u64 {
        let at = (i * step + 511 * i) % size;
        let len = (200_000 + 4097 * i).min(size - at);
        let ours = reader.read_vec(at, len as usize).expect("unaligned read");
        let mut theirs = vec![0u8; len as usize];
        raw.read_exact_at(&mut theirs, at).expect("read raw");
        assert!(ours == theirs, "unaligned read {at}+{len} differs");
    }
    summary
}

/// Asserts that `start..end` of the raw file holds only zeros, reading only its data.
fn assert_raw_zero(path: &Path, raw: &File, start: u64, end: u64) {
    let mut holes = RawReader::open(path).expect("open raw");
    let mut at = start;
    while at < end {
        let extent = holes.extent_at(at).expect("raw extent");
        let stop = extent.end().min(end);
        if extent.kind == ExtentKind::Data {
            let mut chunk_at = at;
            while chunk_at < stop {
                let len = (stop - chunk_at).min(COMPARE_CHUNK);
                let mut bytes = vec![0u8; len as usize];
                raw.read_exact_at(&mut bytes, chunk_at).expect("read raw");
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "a zero extent covers data at {chunk_at}+{len}"
                );
                chunk_at += len;
            }
        }
        at = stop.max(at + 1);
    }
}

/// A layout and the data blocks of the raw image at `raw`, cut into `block_size` blocks.
pub(crate) fn export_layout(raw: &Path, block_size: u64) -> (ExportLayout, Vec<(u64, Vec<u8>)>) {
    let reader = RawReader::open(raw).expect("open raw");
    let size = reader.size();
    let mut blocks = Vec::new();
    for block in Blocks::new(reader, block_size).expect("block size") {
        let (index, block) = block.expect("read block");
        if let Block::Data(bytes) = block {
            blocks.push((index, bytes));
        }
    }
    let layout = ExportLayout {
        size,
        block_size,
        data_blocks: blocks.iter().map(|(index, _)| *index).collect(),
    };
    (layout, blocks)
}

/// The identity every test export carries.
pub(crate) fn identity() -> ImageIdentity {
    ImageIdentity {
        unique_id: *b"blockyard-vmdk!!",
        created_unix: 1_700_000_000,
    }
}

/// Exports the raw image at `raw` as a VMDK of `subformat` to `out`, through a file sink,
/// and checks that a stream sink gets the very same bytes.
pub(crate) fn export(raw: &Path, block_size: u64, subformat: VmdkSubformat, out: &Path) {
    let (layout, blocks) = export_layout(raw, block_size);
    let options = VmdkWriteOptions { subformat };
    let mut feed = blocks.clone().into_iter().map(Ok);
    let mut sink = FileSink::create(out).expect("create output");
    vmdk::write(&layout, &mut feed, &mut sink, &options, &identity()).expect("export");

    let mut feed = blocks.into_iter().map(Ok);
    let mut stream = StreamSink::new(Vec::new(), text(out));
    vmdk::write(&layout, &mut feed, &mut stream, &options, &identity()).expect("stream export");
    let file_bytes = std::fs::read(out).expect("read output");
    assert!(
        stream.into_inner() == file_bytes,
        "a stream export differs from a file export"
    );
}

/// Checks an export with qemu: `check` passes, `info` sees a VMDK of the raw image's size,
/// `compare` finds it equal to the raw image.
pub(crate) fn assert_qemu_accepts(image: &Path, raw: &Path, create_type: &str) {
    qemu_img(&["check", "-q", "-f", "vmdk", text(image)]);
    let info = qemu_img(&["info", "--output=json", text(image)]);
    assert!(info.contains("\"format\": \"vmdk\""), "{info}");
    let size = std::fs::metadata(raw).expect("raw size").len();
    let virtual_size = size.next_multiple_of(512);
    assert!(
        info.contains(&format!("\"virtual-size\": {virtual_size},")),
        "{info}"
    );
    assert!(
        info.contains(&format!("\"create-type\": \"{create_type}\"")),
        "{info}"
    );
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "vmdk",
        "-F",
        "raw",
        text(image),
        text(raw),
    ]);
}

/// Writes `bytes` to `path`.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).expect("create");
    file.write_all(bytes).expect("write");
}

/// A resolver over files in memory, by name; unknown names are not found.
#[derive(Debug, Default)]
pub(crate) struct MemoryResolver {
    files: HashMap<String, Arc<dyn ByteSource>>,
}

impl MemoryResolver {
    /// Serves `bytes` as the file `name`.
    pub(crate) fn with(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.files
            .insert(name.to_owned(), Arc::new(MemorySource::new(name, bytes)));
        self
    }
}

impl Resolver for MemoryResolver {
    fn open_file(&self, _from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        self.files
            .get(name)
            .cloned()
            .ok_or_else(|| FormatError::Open {
                path: name.into(),
                source: std::io::ErrorKind::NotFound.into(),
            })
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        let source = self.open_file(from, name)?;
        open_at_depth(source, format, self, depth)
    }
}

/// Opens `bytes` as a VMDK called "disk.vmdk", its other files served by `resolver`.
pub(crate) fn open_bytes(
    bytes: Vec<u8>,
    resolver: &MemoryResolver,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let source = Arc::new(MemorySource::new("disk.vmdk", bytes));
    let context = OpenContext { resolver, depth: 0 };
    vmdk::open(source, &context)
}

/// Reads the whole disk, extent by extent.
pub(crate) fn read_all(reader: &mut dyn DiskReader) -> Result<Vec<u8>, FormatError> {
    let size = reader.size();
    let mut offset = 0;
    while offset < size {
        offset = reader.extent_at(offset)?.end();
    }
    reader.read_vec(0, size as usize)
}

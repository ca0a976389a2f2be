//! VHD: images made by qemu-img read back as qemu reads them, a differencing disk built
//! byte by byte reads through its parent, exports pass qemu-img, and damaged images are
//! refused with errors that name the field.
//!
//! qemu-img is always given `-f vpc`: it recognises a VHD only by the footer copy at the
//! start, so it takes a fixed VHD for a raw image (footer included) when left to guess.
//! qemu-img cannot check VHDs ("This image format does not support checks"), so exports
//! are checked with `qemu-img info` and `qemu-img compare`.

// The images here are a few MiB; offsets and lengths move between u64, usize and u32
// without loss on the 64-bit machines the tests run on.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use blockyard_formats::export::{ExportLayout, ImageIdentity};
use blockyard_formats::vhd::{self, VhdDiskType, VhdReader, VhdSubformat, VhdWriteOptions};
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, FileResolver, FileSink, FileSource, FormatError, ImageSink,
    MemorySource, OpenContext, StreamSink, is_zero,
};

// ---------------------------------------------------------------------------------------
// Helpers

/// Runs a command and returns its standard output; fails the test when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Makes a VHD with qemu-img (`options` as for `-o`) and writes into it with qemu-io.
fn qemu_image(dir: &Path, name: &str, size: &str, options: &str, writes: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "vpc"];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([path_str(&path), size]);
    run("qemu-img", &args);
    for write in writes {
        run("qemu-io", &["-f", "vpc", "-c", write, path_str(&path)]);
    }
    path
}

/// What qemu reads from a VHD: `qemu-img convert -O raw`.
fn qemu_raw(vhd: &Path) -> Vec<u8> {
    let raw = vhd.with_extension("raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            path_str(vhd),
            path_str(&raw),
        ],
    );
    std::fs::read(&raw).expect("read the raw conversion")
}

fn qemu_virtual_size(image: &Path) -> u64 {
    let info = run(
        "qemu-img",
        &["info", "-f", "vpc", "--output=json", path_str(image)],
    );
    // The image's own size is the top level's; the file node's (its length) is nested.
    let line = info
        .lines()
        .find(|line| line.starts_with("    \"virtual-size\": "))
        .expect("qemu-img info gives a virtual size");
    line.trim()
        .trim_start_matches("\"virtual-size\": ")
        .trim_end_matches(',')
        .parse()
        .expect("a number")
}

fn context() -> OpenContext<'static> {
    OpenContext {
        resolver: &FileResolver,
        depth: 0,
    }
}

fn open_file(path: &Path) -> VhdReader {
    let source = FileSource::open(path).expect("open the image file");
    VhdReader::open(Arc::new(source), &context()).expect("open the VHD")
}

fn open_bytes(bytes: Vec<u8>) -> Result<VhdReader, FormatError> {
    VhdReader::open(Arc::new(MemorySource::new("test.vhd", bytes)), &context())
}

/// Every byte of the disk, read 1 MiB at a time.
fn read_all(reader: &mut dyn DiskReader) -> Vec<u8> {
    let size = reader.size();
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(1 << 20);
        out.extend(reader.read_vec(offset, len as usize).expect("read"));
        offset += len;
    }
    out
}

/// Walks the disk's extents, checking that each starts where asked, that zero extents
/// hold zeros in `expected`, and returns the bytes reported as data.
fn check_extents(reader: &mut dyn DiskReader, expected: &[u8]) -> u64 {
    let mut offset = 0;
    let mut data = 0;
    while offset < reader.size() {
        let extent = reader.extent_at(offset).expect("extent");
        assert_eq!(extent.offset, offset);
        assert!(
            extent.length > 0 && extent.end() <= reader.size(),
            "{extent:?}"
        );
        let range = offset as usize..extent.end() as usize;
        match extent.kind {
            ExtentKind::Zero => assert!(is_zero(&expected[range]), "{extent:?} holds data"),
            ExtentKind::Data => data += extent.length,
            ExtentKind::Backing => panic!("extent_at reported {extent:?}"),
        }
        offset = extent.end();
    }
    data
}

/// Asserts two disks' bytes are equal, naming the first difference.
fn assert_same_bytes(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "sizes differ");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("first difference at byte {at}: {} != {}", got[at], want[at]);
    }
}

/// A disk's bytes as an export: its size, the blocks of `block_size` holding data, and a
/// feed of them.
fn export(disk: &[u8], block_size: u64, options: &VhdWriteOptions, out: &Path) {
    let layout = layout_of(disk, block_size);
    let mut feed = feed_of(disk, &layout);
    let mut sink = FileSink::create(out).expect("create the output");
    vhd::write(&layout, &mut feed, &mut sink, options, &identity()).expect("export");
}

fn layout_of(disk: &[u8], block_size: u64) -> ExportLayout {
    let data_blocks = disk
        .chunks(block_size as usize)
        .enumerate()
        .filter(|(_, block)| !is_zero(block))
        .map(|(index, _)| index as u64)
        .collect();
    ExportLayout {
        size: disk.len() as u64,
        block_size,
        data_blocks,
    }
}

fn feed_of(
    disk: &[u8],
    layout: &ExportLayout,
) -> impl Iterator<Item = Result<(u64, Vec<u8>), FormatError>> + Send {
    let blocks: Vec<(u64, Vec<u8>)> = layout
        .data_blocks
        .iter()
        .map(|&index| {
            let start = (index * layout.block_size) as usize;
            let end = (start + layout.block_size as usize).min(disk.len());
            (index, disk[start..end].to_vec())
        })
        .collect();
    blocks.into_iter().map(Ok)
}

fn identity() -> ImageIdentity {
    ImageIdentity {
        unique_id: *b"blockyard test!!",
        created_unix: 1_700_000_000,
    }
}

/// A disk of `size` bytes with a few patterned runs, some crossing 2 MiB boundaries, some
/// shorter than a sector, and long stretches of zeros.
fn patterned_disk(size: usize) -> Vec<u8> {
    let mut disk = vec![0u8; size];
    let runs = [
        (0, 4096),
        (100_000, 3),
        ((2 << 20) - 700, 1400),
        (5 << 20, 1 << 20),
        (size - 10_000, 10_000),
    ];
    for (start, len) in runs.into_iter().filter(|&(start, len)| start + len <= size) {
        for (i, byte) in disk[start..start + len].iter_mut().enumerate() {
            *byte = (i % 251) as u8 + 1;
        }
    }
    disk
}

// ---------------------------------------------------------------------------------------
// Images made by qemu-img

const WRITES: [&str; 4] = [
    "write -P 0x5a 1M 64k",
    "write -P 0x11 2040k 16k",
    "write -P 0x77 6M 2M",
    "write -P 0x33 9000k 1k",
];

#[test]
fn a_qemu_dynamic_image_reads_as_qemu_reads_it() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = qemu_image(dir.path(), "d.vhd", "10M", "subformat=dynamic", &WRITES);
    let raw = qemu_raw(&path);

    let mut reader = open_file(&path);
    assert_eq!(reader.disk_type(), VhdDiskType::Dynamic);
    assert_eq!(reader.block_size(), Some(2 << 20));
    assert_eq!(reader.size(), qemu_virtual_size(&path));
    assert_same_bytes(&read_all(&mut reader), &raw);

    // Blocks 0, 1 (a write crosses into it), 3 and 4 hold writes; block 2 and the short
    // last one were never written.
    let data = check_extents(&mut reader, &raw);
    assert_eq!(data, 4 * (2 << 20));
    let zero = reader.extent_at(4 << 20).expect("extent");
    assert_eq!((zero.kind, zero.end()), (ExtentKind::Zero, 6 << 20));
    let tail = reader.extent_at(10 << 20).expect("extent");
    assert_eq!((tail.kind, tail.end()), (ExtentKind::Zero, reader.size()));
}

#[test]
fn a_qemu_fixed_image_reads_as_qemu_reads_it_with_holes_as_zero() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = qemu_image(dir.path(), "f.vhd", "10M", "subformat=fixed", &WRITES);
    let raw = qemu_raw(&path);

    let mut reader = open_file(&path);
    assert_eq!(reader.disk_type(), VhdDiskType::Fixed);
    assert_eq!(reader.size(), qemu_virtual_size(&path));
    assert_eq!(
        reader.size() + 512,
        std::fs::metadata(&path).expect("stat").len()
    );
    assert_same_bytes(&read_all(&mut reader), &raw);

    // The file is sparse: what qemu never wrote is a hole, reported as zero.
    let data = check_extents(&mut reader, &raw);
    assert!(
        data < 4 << 20,
        "{data} bytes of data in a file with 3 MiB written"
    );
}

#[test]
fn qemu_images_made_with_force_size_have_the_exact_size() {
    let dir = tempfile::tempdir().expect("temporary folder");
    for subformat in ["dynamic", "fixed"] {
        let options = format!("subformat={subformat},force_size=on");
        let path = qemu_image(dir.path(), "s.vhd", "10M", &options, &WRITES);
        let raw = qemu_raw(&path);
        let mut reader = open_file(&path);
        assert_eq!(reader.size(), 10 << 20, "{subformat}");
        assert_eq!(qemu_virtual_size(&path), 10 << 20, "{subformat}");
        assert_same_bytes(&read_all(&mut reader), &raw);
    }
}

#[test]
fn the_format_is_detected_and_opened_through_the_dispatcher() {
    let dir = tempfile::tempdir().expect("temporary folder");
    for subformat in ["dynamic", "fixed"] {
        let path = qemu_image(
            dir.path(),
            &format!("{subformat}.vhd"),
            "4M",
            &format!("subformat={subformat}"),
            &WRITES[..2],
        );
        let source: Arc<dyn ByteSource> = Arc::new(FileSource::open(&path).expect("open"));
        assert_eq!(
            blockyard_formats::detect(&*source).expect("detect"),
            blockyard_formats::Format::Vhd
        );
        let mut disk = blockyard_formats::open(source, None, &FileResolver).expect("open");
        assert_same_bytes(&read_all(&mut disk), &qemu_raw(&path));
    }
}

/// A source that counts the reads made of it.
#[derive(Debug)]
struct CountingSource {
    inner: FileSource,
    reads: AtomicUsize,
}

impl ByteSource for CountingSource {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_exact_at(offset, buf)
    }
}

#[test]
fn a_512_kib_read_of_a_full_block_is_one_source_read() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = qemu_image(dir.path(), "d.vhd", "8M", "", &["write -P 0x42 2M 2M"]);
    let source = Arc::new(CountingSource {
        inner: FileSource::open(&path).expect("open"),
        reads: AtomicUsize::new(0),
    });
    let mut reader = VhdReader::open(source.clone(), &context()).expect("open");

    // The first read of the block reads its bitmap too; the next ones only data.
    let first = reader.read_vec(2 << 20, 512 << 10).expect("read");
    assert!(first.iter().all(|&b| b == 0x42));
    let before = source.reads.load(Ordering::Relaxed);
    for i in 1..4u64 {
        let offset = (2 << 20) + i * (512 << 10);
        assert_eq!(
            reader.extent_at(offset).expect("extent").kind,
            ExtentKind::Data
        );
        let block = reader.read_vec(offset, 512 << 10).expect("read");
        assert!(block.iter().all(|&b| b == 0x42));
    }
    assert_eq!(source.reads.load(Ordering::Relaxed) - before, 3);
}

// ---------------------------------------------------------------------------------------
// Images built byte by byte: a small dynamic or differencing disk.

/// One block of a hand-built image: its index in the disk, its sector bitmap and its data.
struct BuiltBlock {
    index: u32,
    bitmap: Vec<u8>,
    data: Vec<u8>,
}

/// A hand-built dynamic (no parent) or differencing disk.
struct Built {
    size: u64,
    block_size: u32,
    blocks: Vec<BuiltBlock>,
    /// Parent locators: platform code and data.
    locators: Vec<([u8; 4], Vec<u8>)>,
    /// The parent unicode name, written UTF-16 big-endian.
    parent_name: String,
    differencing: bool,
}

/// Offsets of the structures in a built image.
struct BuiltLayout {
    header: usize,
    table: usize,
    blocks: Vec<usize>,
    footer: usize,
}

fn utf16_le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The spec's checksum: the ones' complement of the byte sum, the field taken as zero.
fn checksum(bytes: &[u8], at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}

fn put(bytes: &mut [u8], at: usize, field: &[u8]) {
    bytes[at..at + field.len()].copy_from_slice(field);
}

impl Built {
    fn bitmap_len(&self) -> usize {
        (self.block_size as usize / 512)
            .div_ceil(8)
            .next_multiple_of(512)
    }

    /// The footer, at the start (its copy) and the end.
    fn footer(&self, header_at: usize) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        put(&mut f, 0, b"conectix"); // cookie
        put(&mut f, 8, &2u32.to_be_bytes()); // features: the reserved bit
        put(&mut f, 12, &0x0001_0000u32.to_be_bytes()); // file format version 1.0
        put(&mut f, 16, &(header_at as u64).to_be_bytes()); // data offset: the header
        put(&mut f, 24, &0x2c00_0000u32.to_be_bytes()); // time stamp
        put(&mut f, 28, b"win "); // creator application
        put(&mut f, 32, &0x000a_0000u32.to_be_bytes()); // creator version 10.0
        put(&mut f, 36, b"Wi2k"); // creator host OS
        put(&mut f, 40, &self.size.to_be_bytes()); // original size
        put(&mut f, 48, &self.size.to_be_bytes()); // current size
        put(&mut f, 56, &[0x00, 0x79, 0x04, 0x11]); // geometry: 121 cylinders, 4 heads, 17
        let disk_type: u32 = if self.differencing { 4 } else { 3 };
        put(&mut f, 60, &disk_type.to_be_bytes()); // disk type
        put(&mut f, 68, b"child unique id!"); // unique id
        let sum = checksum(&f, 64);
        put(&mut f, 64, &sum.to_be_bytes()); // checksum
        f
    }

    /// The image's bytes and where its structures lie.
    fn build(&self) -> (Vec<u8>, BuiltLayout) {
        let header_at = 512;
        let table_at = 1536;
        let entries = self.size.div_ceil(u64::from(self.block_size)) as usize;
        let mut at = table_at + (entries * 4).next_multiple_of(512);

        let mut locator_data = Vec::new();
        for (_, data) in &self.locators {
            locator_data.push(at);
            at += data.len().next_multiple_of(512).max(512);
        }
        let mut blocks = Vec::new();
        for _ in &self.blocks {
            blocks.push(at);
            at += self.bitmap_len() + self.block_size as usize;
        }
        let footer_at = at;
        let mut image = vec![0u8; footer_at + 512];

        let footer = self.footer(header_at);
        put(&mut image, 0, &footer); // the footer's copy
        put(&mut image, footer_at, &footer); // the footer

        let mut h = vec![0u8; 1024];
        put(&mut h, 0, b"cxsparse"); // cookie
        put(&mut h, 8, &u64::MAX.to_be_bytes()); // data offset: unused
        put(&mut h, 16, &(table_at as u64).to_be_bytes()); // table offset
        put(&mut h, 24, &0x0001_0000u32.to_be_bytes()); // header version 1.0
        put(&mut h, 28, &(entries as u32).to_be_bytes()); // max table entries
        put(&mut h, 32, &self.block_size.to_be_bytes()); // block size
        if self.differencing {
            put(&mut h, 40, b"parent unique id"); // parent unique id
            put(&mut h, 56, &0x2b00_0000u32.to_be_bytes()); // parent time stamp
        }
        let name: Vec<u8> = self
            .parent_name
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        put(&mut h, 64, &name); // parent unicode name, UTF-16 big-endian
        for (slot, ((code, data), &data_at)) in self.locators.iter().zip(&locator_data).enumerate()
        {
            let entry = 576 + 24 * slot;
            put(&mut h, entry, code); // platform code
            let space = data.len().next_multiple_of(512).max(512) as u32;
            put(&mut h, entry + 4, &space.to_be_bytes()); // platform data space, in bytes
            put(&mut h, entry + 8, &(data.len() as u32).to_be_bytes()); // data length
            put(&mut h, entry + 16, &(data_at as u64).to_be_bytes()); // data offset
            put(&mut image, data_at, data);
        }
        let sum = checksum(&h, 36);
        put(&mut h, 36, &sum.to_be_bytes()); // checksum
        put(&mut image, header_at, &h);

        let mut table = vec![0xffu8; (entries * 4).next_multiple_of(512)];
        for (block, &block_at) in self.blocks.iter().zip(&blocks) {
            let entry = block.index as usize * 4;
            put(&mut table, entry, &((block_at / 512) as u32).to_be_bytes());
            put(&mut image, block_at, &block.bitmap);
            put(&mut image, block_at + self.bitmap_len(), &block.data);
        }
        put(&mut image, table_at, &table);

        (
            image,
            BuiltLayout {
                header: header_at,
                table: table_at,
                blocks,
                footer: footer_at,
            },
        )
    }
}

/// Recomputes the checksums of both footers and the header after a test changed a field.
fn reseal(image: &mut [u8], layout: &BuiltLayout) {
    for at in [0, layout.footer] {
        let sum = checksum(&image[at..at + 512], 64);
        put(image, at + 64, &sum.to_be_bytes());
    }
    let h = layout.header;
    let sum = checksum(&image[h..h + 1024], 36);
    put(image, h + 36, &sum.to_be_bytes());
}

/// A bitmap of `len` bytes with the sectors of each `(start, end)` range set.
fn bitmap(len: usize, ranges: &[(usize, usize)]) -> Vec<u8> {
    let mut bitmap = vec![0u8; len];
    for &(start, end) in ranges {
        for sector in start..end {
            bitmap[sector / 8] |= 0x80 >> (sector % 8);
        }
    }
    bitmap
}

/// The child of a differencing test: 2 MiB blocks over a parent of `size` bytes, with
/// block 1 allocated, sectors 0..8 and 100..200 stored, and every byte of its data 0x77
/// (so a reader that ignores the bitmap shows it).
fn child_of(size: u64, locators: Vec<([u8; 4], Vec<u8>)>, parent_name: &str) -> Built {
    Built {
        size,
        block_size: 2 << 20,
        blocks: vec![BuiltBlock {
            index: 1,
            bitmap: bitmap(512, &[(0, 8), (100, 200)]),
            data: vec![0x77; 2 << 20],
        }],
        locators,
        parent_name: parent_name.to_owned(),
        differencing: true,
    }
}

/// A qemu-made parent, 8 MiB (8390656 bytes once qemu rounds it to a geometry), with data
/// in blocks 0 and 1 and nothing from 4 MiB on.
fn parent_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = qemu_image(
        dir,
        "parent.vhd",
        "8M",
        "",
        &["write -P 0x11 0 3M", "write -P 0x22 3M 512k"],
    );
    let raw = qemu_raw(&path);
    (path, raw)
}

/// The parent's bytes with the child's stored sectors on top.
fn child_over(parent: &[u8]) -> Vec<u8> {
    let mut expected = parent.to_vec();
    let block = 2 << 20;
    expected[block..block + 8 * 512].fill(0x77);
    expected[block + 100 * 512..block + 200 * 512].fill(0x77);
    expected
}

#[test]
fn a_differencing_disk_reads_its_sectors_over_its_parent() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, parent) = parent_image(dir.path());
    let child = child_of(
        parent.len() as u64,
        vec![
            (*b"W2ku", utf16_le(r"C:\Hyper-V\nowhere\parent.vhd")),
            (*b"W2ru", utf16_le(r".\parent.vhd")),
        ],
        r"C:\Hyper-V\nowhere\parent.vhd",
    );
    let (bytes, _) = child.build();
    let path = dir.path().join("child.vhd");
    std::fs::write(&path, bytes).expect("write the child");

    let mut reader = open_file(&path);
    assert_eq!(reader.disk_type(), VhdDiskType::Differencing);
    let expected = child_over(&parent);
    assert_same_bytes(&read_all(&mut reader), &expected);

    // The layer alone: block 0 is the parent's, block 1 is split by its bitmap.
    let layer = |reader: &mut VhdReader, offset: u64| {
        let e = reader.layer_extent_at(offset).expect("extent");
        (e.kind, e.length)
    };
    let block = 2 << 20;
    assert_eq!(layer(&mut reader, 0), (ExtentKind::Backing, block));
    assert_eq!(layer(&mut reader, block), (ExtentKind::Data, 8 * 512));
    assert_eq!(
        layer(&mut reader, block + 8 * 512),
        (ExtentKind::Backing, 92 * 512)
    );
    assert_eq!(
        layer(&mut reader, block + 100 * 512 + 1),
        (ExtentKind::Data, 100 * 512 - 1)
    );
    // Through the parent: its data where it has some, zeros where neither has any.
    assert_eq!(reader.extent_at(0).expect("extent").kind, ExtentKind::Data);
    let far = reader.extent_at(5 << 20).expect("extent");
    assert_eq!(far.kind, ExtentKind::Zero);
    check_extents(&mut reader, &expected);

    // Through the dispatcher too, which detects the child from its footer copy.
    let source: Arc<dyn ByteSource> = Arc::new(FileSource::open(&path).expect("open"));
    let mut disk = blockyard_formats::open(source, None, &FileResolver).expect("open");
    assert_same_bytes(&read_all(&mut disk), &expected);
}

#[test]
fn a_parent_named_only_by_absolute_paths_is_found_beside_its_child() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, parent) = parent_image(dir.path());
    // The relative locator names a file that is not there; the absolute one names a
    // Windows path whose last component is.
    let child = child_of(
        parent.len() as u64,
        vec![
            (*b"W2ru", utf16_le(r".\moved-away.vhd")),
            (*b"W2ku", utf16_le(r"D:\VMs\parent.vhd")),
        ],
        "",
    );
    let path = dir.path().join("child.vhd");
    std::fs::write(&path, child.build().0).expect("write the child");
    assert_same_bytes(&read_all(&mut open_file(&path)), &child_over(&parent));

    // The parent unicode name alone also finds it.
    let child = child_of(parent.len() as u64, Vec::new(), "parent.vhd");
    std::fs::write(&path, child.build().0).expect("write the child");
    assert_same_bytes(&read_all(&mut open_file(&path)), &child_over(&parent));
}

#[test]
fn a_missing_parent_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let child = child_of(4 << 20, vec![(*b"W2ru", utf16_le(r".\gone.vhd"))], "");
    let path = dir.path().join("child.vhd");
    std::fs::write(&path, child.build().0).expect("write the child");
    let source = Arc::new(FileSource::open(&path).expect("open"));
    let err = VhdReader::open(source, &context()).expect_err("no parent");
    assert!(
        matches!(&err, FormatError::Reference { target, .. } if target == "./gone.vhd"),
        "{err}"
    );
}

#[test]
fn a_dynamic_disk_reads_sectors_with_clear_bits_as_zeros() {
    // 4 KiB blocks (8 sectors, a one-sector bitmap); block 2 stores sectors 1 and 2.
    let built = Built {
        size: 64 << 10,
        block_size: 4096,
        blocks: vec![BuiltBlock {
            index: 2,
            bitmap: bitmap(512, &[(1, 3)]),
            data: vec![0x5a; 4096],
        }],
        locators: Vec::new(),
        parent_name: String::new(),
        differencing: false,
    };
    let mut reader = open_bytes(built.build().0).expect("open");
    let mut expected = vec![0u8; 64 << 10];
    expected[8192 + 512..8192 + 1536].fill(0x5a);
    assert_same_bytes(&read_all(&mut reader), &expected);
    assert_eq!(check_extents(&mut reader, &expected), 1024);
    let layer = reader.layer_extent_at(0).expect("extent");
    assert_eq!(
        (layer.kind, layer.length),
        (ExtentKind::Zero, 8192),
        "a dynamic disk has no backing: unallocated blocks and clear bits are zero"
    );
}

// ---------------------------------------------------------------------------------------
// Exports

#[test]
fn dynamic_exports_pass_qemu_with_any_store_block_size() {
    let dir = tempfile::tempdir().expect("temporary folder");
    // Not a multiple of 2 MiB, nor of the CHS geometry.
    let disk = patterned_disk((9 << 20) + 4096 * 3);
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, &disk).expect("write the raw disk");
    let options = VhdWriteOptions {
        subformat: VhdSubformat::Dynamic,
    };
    for block_size in [4096, 512 << 10, 4 << 20] {
        let out = dir.path().join(format!("out-{block_size}.vhd"));
        export(&disk, block_size, &options, &out);
        assert_eq!(qemu_virtual_size(&out), disk.len() as u64, "{block_size}");
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "vpc",
                "-F",
                "raw",
                path_str(&out),
                path_str(&raw),
            ],
        );
        let info = run("qemu-img", &["info", path_str(&out)]);
        assert!(info.contains("file format: vpc"), "{info}");

        let mut reader = open_file(&out);
        assert_same_bytes(&read_all(&mut reader), &disk);
        // Every 2 MiB block that a data block touches is data, and only those.
        let layout = layout_of(&disk, block_size);
        let allocated = (0..5u64)
            .filter(|b| layout.has_data_in(b << 21, ((b + 1) << 21).min(disk.len() as u64)))
            .map(|b| ((b + 1) << 21).min(disk.len() as u64) - (b << 21))
            .sum::<u64>();
        assert_eq!(check_extents(&mut reader, &disk), allocated, "{block_size}");
    }
}

#[test]
fn a_dynamic_export_allocates_only_blocks_with_data() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut disk = vec![0u8; 64 << 20];
    disk[40 << 20] = 1;
    let out = dir.path().join("sparse.vhd");
    export(&disk, 512 << 10, &VhdWriteOptions::default(), &out);
    // Footer copy, header, a 32-entry table, alignment, one block of bitmap and data, and
    // the footer.
    let len = std::fs::metadata(&out).expect("stat").len();
    assert_eq!(len, 4096 + (2 << 20) + 512);
    let mut reader = open_file(&out);
    assert_eq!(check_extents(&mut reader, &disk), 2 << 20);
    assert_same_bytes(&read_all(&mut reader), &disk);
}

#[test]
fn fixed_exports_pass_qemu_and_keep_holes() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let disk = patterned_disk(12 << 20);
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, &disk).expect("write the raw disk");
    let out = dir.path().join("out.vhd");
    let options = VhdWriteOptions {
        subformat: VhdSubformat::Fixed,
    };
    export(&disk, 512 << 10, &options, &out);

    assert_eq!(
        std::fs::metadata(&out).expect("stat").len(),
        disk.len() as u64 + 512
    );
    assert_eq!(qemu_virtual_size(&out), disk.len() as u64);
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "vpc",
            "-F",
            "raw",
            path_str(&out),
            path_str(&raw),
        ],
    );
    let mut reader = open_file(&out);
    assert_same_bytes(&read_all(&mut reader), &disk);
    let data = check_extents(&mut reader, &disk);
    assert!(
        data <= 4 << 20,
        "{data} bytes of data: the zero blocks were written"
    );
}

#[test]
fn an_export_of_a_size_that_is_not_whole_sectors_is_padded_with_zeros() {
    let disk = patterned_disk((3 << 20) + 100);
    for subformat in [VhdSubformat::Fixed, VhdSubformat::Dynamic] {
        let layout = layout_of(&disk, 512 << 10);
        let mut sink = StreamSink::new(Vec::new(), "out.vhd");
        let options = VhdWriteOptions { subformat };
        vhd::write(
            &layout,
            &mut feed_of(&disk, &layout),
            &mut sink,
            &options,
            &identity(),
        )
        .expect("export");
        let mut reader = open_bytes(sink.into_inner()).expect("open");
        assert_eq!(reader.size(), (3 << 20) + 512, "{subformat:?}");
        let bytes = read_all(&mut reader);
        assert_same_bytes(&bytes[..disk.len()], &disk);
        assert!(is_zero(&bytes[disk.len()..]));
    }
}

#[test]
fn a_streamed_export_is_the_same_bytes_as_a_file_export() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let disk = patterned_disk(7 << 20);
    for subformat in [VhdSubformat::Fixed, VhdSubformat::Dynamic] {
        let options = VhdWriteOptions { subformat };
        let out = dir.path().join("file.vhd");
        export(&disk, 4096, &options, &out);
        let layout = layout_of(&disk, 4096);
        let mut sink = StreamSink::new(Vec::new(), "stream");
        vhd::write(
            &layout,
            &mut feed_of(&disk, &layout),
            &mut sink,
            &options,
            &identity(),
        )
        .expect("export");
        assert!(
            sink.into_inner() == std::fs::read(&out).expect("read"),
            "{subformat:?}"
        );
    }
}

#[test]
fn an_export_larger_than_a_vhd_holds_is_refused() {
    let layout = ExportLayout {
        size: 2041 << 30,
        block_size: 512 << 10,
        data_blocks: Vec::new(),
    };
    let mut sink = StreamSink::new(Vec::new(), "out");
    let err = vhd::write(
        &layout,
        &mut std::iter::empty(),
        &mut sink,
        &VhdWriteOptions::default(),
        &identity(),
    )
    .expect_err("too large");
    assert!(matches!(err, FormatError::CannotWrite { .. }), "{err}");
    assert_eq!(sink.position(), 0, "nothing written before the refusal");
}

// ---------------------------------------------------------------------------------------
// Damaged images: one test per kind of damage, each naming the field.

/// A small dynamic disk with two 4 KiB blocks, and where its structures lie.
fn small_dynamic() -> (Vec<u8>, BuiltLayout) {
    Built {
        size: 64 << 10,
        block_size: 4096,
        blocks: vec![
            BuiltBlock {
                index: 0,
                bitmap: bitmap(512, &[(0, 8)]),
                data: vec![1; 4096],
            },
            BuiltBlock {
                index: 5,
                bitmap: bitmap(512, &[(0, 8)]),
                data: vec![2; 4096],
            },
        ],
        locators: Vec::new(),
        parent_name: String::new(),
        differencing: false,
    }
    .build()
}

/// Asserts that opening `image` fails with a corruption of `field` at `offset`.
fn assert_corrupt(image: Vec<u8>, field: &str, offset: u64) {
    match open_bytes(image) {
        Err(FormatError::Corrupt {
            field: got,
            offset: at,
            ..
        }) if got == field && at == offset => {}
        Err(err) => panic!("expected {field} at {offset}, got: {err}"),
        Ok(_) => panic!("expected {field} at {offset}, but the image opened"),
    }
}

#[test]
fn the_small_dynamic_fixture_opens() {
    let (image, _) = small_dynamic();
    let mut reader = open_bytes(image).expect("open");
    let bytes = read_all(&mut reader);
    assert!(bytes[..4096].iter().all(|&b| b == 1));
    assert!(bytes[5 * 4096..6 * 4096].iter().all(|&b| b == 2));
}

#[test]
fn a_file_shorter_than_a_footer_is_refused() {
    assert_corrupt(vec![0; 100], "hard disk footer", 0);
}

#[test]
fn a_footer_without_its_cookie_is_refused() {
    let (mut image, layout) = small_dynamic();
    image[layout.footer] = b'X';
    image[0] = b'X';
    reseal(&mut image, &layout);
    assert_corrupt(image, "footer cookie", layout.footer as u64);
}

#[test]
fn a_footer_with_a_wrong_checksum_is_refused() {
    let (mut image, layout) = small_dynamic();
    image[layout.footer + 64] ^= 1;
    image[64] ^= 1;
    assert_corrupt(image, "footer checksum", layout.footer as u64 + 64);
}

#[test]
fn a_damaged_last_footer_falls_back_to_the_copy_at_the_start() {
    let (mut image, layout) = small_dynamic();
    image[layout.footer + 64] ^= 1;
    let mut reader = open_bytes(image).expect("the copy at the start is good");
    assert!(read_all(&mut reader)[..4096].iter().all(|&b| b == 1));
}

#[test]
fn a_footer_of_an_unknown_disk_type_is_refused() {
    let (mut image, layout) = small_dynamic();
    for at in [0, layout.footer] {
        put(&mut image, at + 60, &5u32.to_be_bytes());
    }
    reseal(&mut image, &layout);
    assert_corrupt(image, "disk type", layout.footer as u64 + 60);
}

#[test]
fn a_footer_of_another_version_is_unsupported() {
    let (mut image, layout) = small_dynamic();
    for at in [0, layout.footer] {
        put(&mut image, at + 12, &0x0002_0000u32.to_be_bytes());
    }
    reseal(&mut image, &layout);
    let err = open_bytes(image).expect_err("version 2");
    assert!(matches!(err, FormatError::Unsupported { .. }), "{err}");
}

#[test]
fn a_disk_size_above_the_limit_is_refused() {
    let (mut image, layout) = small_dynamic();
    for at in [0, layout.footer] {
        put(&mut image, at + 48, &(1u64 << 50).to_be_bytes());
    }
    reseal(&mut image, &layout);
    assert_corrupt(image, "current size", layout.footer as u64 + 48);
}

#[test]
fn a_fixed_disk_larger_than_its_file_is_refused() {
    let disk = patterned_disk(3 << 20);
    let layout = layout_of(&disk, 4096);
    let mut sink = StreamSink::new(Vec::new(), "f.vhd");
    let options = VhdWriteOptions {
        subformat: VhdSubformat::Fixed,
    };
    vhd::write(
        &layout,
        &mut feed_of(&disk, &layout),
        &mut sink,
        &options,
        &identity(),
    )
    .expect("export");
    let mut image = sink.into_inner();
    // Cut a sector out of the disk: the footer now claims more than the file holds.
    image.drain(0..512);
    let footer = image.len() - 512;
    assert_corrupt(image, "current size", footer as u64 + 48);
}

#[test]
fn a_data_offset_past_the_end_is_refused() {
    let (mut image, layout) = small_dynamic();
    for at in [0, layout.footer] {
        put(&mut image, at + 16, &(1u64 << 40).to_be_bytes());
    }
    reseal(&mut image, &layout);
    assert_corrupt(image, "data offset", layout.footer as u64 + 16);
}

#[test]
fn a_dynamic_header_without_its_cookie_is_refused() {
    let (mut image, layout) = small_dynamic();
    image[layout.header] = b'X';
    reseal(&mut image, &layout);
    assert_corrupt(image, "dynamic header cookie", layout.header as u64);
}

#[test]
fn a_dynamic_header_with_a_wrong_checksum_is_refused() {
    let (mut image, layout) = small_dynamic();
    image[layout.header + 36] ^= 0x80;
    assert_corrupt(image, "dynamic header checksum", layout.header as u64 + 36);
}

#[test]
fn block_sizes_that_are_not_powers_of_two_or_too_large_are_refused() {
    for block_size in [3000u32, 1 << 30, 0] {
        let (mut image, layout) = small_dynamic();
        put(&mut image, layout.header + 32, &block_size.to_be_bytes());
        reseal(&mut image, &layout);
        assert_corrupt(image, "block size", layout.header as u64 + 32);
    }
}

#[test]
fn a_table_too_small_for_the_disk_is_refused() {
    let (mut image, layout) = small_dynamic();
    put(&mut image, layout.header + 28, &15u32.to_be_bytes());
    reseal(&mut image, &layout);
    assert_corrupt(image, "max table entries", layout.header as u64 + 28);
}

#[test]
fn a_table_of_more_entries_than_the_limit_is_refused() {
    // A disk of 1 TiB in 512-byte blocks needs 2^31 entries.
    let (mut image, layout) = small_dynamic();
    for at in [0, layout.footer] {
        put(&mut image, at + 48, &(1u64 << 40).to_be_bytes());
    }
    put(&mut image, layout.header + 28, &u32::MAX.to_be_bytes());
    put(&mut image, layout.header + 32, &512u32.to_be_bytes());
    reseal(&mut image, &layout);
    assert_corrupt(image, "max table entries", layout.header as u64 + 28);
}

#[test]
fn a_table_past_the_end_or_over_the_header_is_refused() {
    for table_at in [1u64 << 30, 600] {
        let (mut image, layout) = small_dynamic();
        put(&mut image, layout.header + 16, &table_at.to_be_bytes());
        reseal(&mut image, &layout);
        assert_corrupt(image, "table offset", layout.header as u64 + 16);
    }
}

#[test]
fn a_block_past_the_end_of_the_file_is_refused() {
    let (mut image, layout) = small_dynamic();
    let entry = layout.table + 4 * 5;
    put(&mut image, entry, &0x0100_0000u32.to_be_bytes());
    assert_corrupt(image, "block allocation table entry", entry as u64);
}

#[test]
fn a_block_over_the_table_is_refused() {
    let (mut image, layout) = small_dynamic();
    let entry = layout.table + 4 * 5;
    put(
        &mut image,
        entry,
        &((layout.table / 512) as u32).to_be_bytes(),
    );
    assert_corrupt(image, "block allocation table entry", entry as u64);
}

#[test]
fn two_blocks_sharing_sectors_are_refused() {
    let (mut image, layout) = small_dynamic();
    // Block 5 starts one sector into block 0.
    let entry = layout.table + 4 * 5;
    let sector = (layout.blocks[0] / 512 + 1) as u32;
    put(&mut image, entry, &sector.to_be_bytes());
    assert_corrupt(image, "block allocation table entry", entry as u64);
}

/// A differencing child with one locator of `data`, opened with no parent on disk.
fn child_with_locator(
    code: [u8; 4],
    data: Vec<u8>,
    edit: impl Fn(&mut Vec<u8>, &BuiltLayout),
) -> Result<VhdReader, FormatError> {
    let child = child_of(4 << 20, vec![(code, data)], "");
    let (mut image, layout) = child.build();
    edit(&mut image, &layout);
    reseal(&mut image, &layout);
    open_bytes(image)
}

fn assert_corrupt_result(result: Result<VhdReader, FormatError>, field: &str, offset: u64) {
    match result {
        Err(FormatError::Corrupt {
            field: got,
            offset: at,
            ..
        }) if got == field && at == offset => {}
        Err(err) => panic!("expected {field} at {offset}, got: {err}"),
        Ok(_) => panic!("expected {field} at {offset}, but the image opened"),
    }
}

#[test]
fn locator_data_past_the_end_is_refused() {
    let result = child_with_locator(*b"W2ru", utf16_le("p.vhd"), |image, layout| {
        put(image, layout.header + 576 + 16, &(1u64 << 40).to_be_bytes());
    });
    assert_corrupt_result(result, "platform data offset", 512 + 576 + 16);
}

#[test]
fn locator_data_longer_than_the_limit_is_refused() {
    let result = child_with_locator(*b"W2ru", utf16_le("p.vhd"), |image, layout| {
        put(image, layout.header + 576 + 8, &(1u32 << 20).to_be_bytes());
    });
    assert_corrupt_result(result, "platform data length", 512 + 576 + 8);
}

#[test]
fn locator_data_that_is_not_utf16_is_refused() {
    // An odd length, then an unpaired surrogate.
    let result = child_with_locator(*b"W2ru", vec![b'a', 0, b'b'], |_, _| {});
    assert_corrupt_result(result, "platform data length", 512 + 576 + 8);
    let result = child_with_locator(*b"W2ku", vec![0x00, 0xd8, b'a', 0], |_, _| {});
    assert_corrupt_result(result, "platform data offset", 512 + 576 + 16);
}

#[test]
fn a_parent_name_that_is_not_utf16_is_refused() {
    let result = child_with_locator(*b"Mac ", vec![1; 16], |image, layout| {
        put(image, layout.header + 64, &[0xd8, 0x00, 0x00, 0x41]);
    });
    assert_corrupt_result(result, "parent unicode name", 512 + 64);
}

#[test]
fn a_differencing_disk_with_only_mac_locators_is_unsupported() {
    let result = child_with_locator(*b"MacX", b"file:///p.vhd".to_vec(), |_, _| {});
    let err = result.expect_err("no Windows locator");
    assert!(matches!(err, FormatError::Unsupported { .. }), "{err}");
}

#[test]
fn a_differencing_disk_that_is_its_own_parent_stops_at_the_depth_limit() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let child = child_of(4 << 20, vec![(*b"W2ru", utf16_le(r".\loop.vhd"))], "");
    let path = dir.path().join("loop.vhd");
    std::fs::write(&path, child.build().0).expect("write");
    let source = Arc::new(FileSource::open(&path).expect("open"));
    let err = VhdReader::open(source, &context()).expect_err("a loop");
    assert!(matches!(err, FormatError::BackingTooDeep { .. }), "{err}");
}

#[test]
fn reads_outside_the_disk_are_refused() {
    let (image, _) = small_dynamic();
    let mut reader = open_bytes(image).expect("open");
    let size = reader.size();
    assert!(reader.extent_at(size).is_err());
    assert!(reader.read_vec(size - 10, 11).is_err());
    assert!(reader.read_vec(u64::MAX, 1).is_err());
}

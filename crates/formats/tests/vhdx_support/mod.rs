//! Helpers for the VHDX tests: running qemu-img, comparing a reader with a raw file, and
//! locating and patching the structures of a VHDX file in memory to build fixtures.

// Each test binary uses some of the helpers; they are `pub` for the binaries that include
// this module. Fixtures are a few MiB: their offsets and lengths fit every integer type.
#![allow(dead_code, unreachable_pub, clippy::cast_possible_truncation)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use blockyard_formats::raw::RawSourceReader;
use blockyard_formats::vhdx::{VhdxReader, crc32c};
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, FileResolver, FileSource, Format, FormatError,
    MemorySource, OpenContext, Resolver, is_zero,
};

/// GUIDs as stored (first three fields little-endian), from [MS-VHDX] §2.2.3.2 and §2.6.2.
pub const BAT_REGION: [u8; 16] = guid(0x2DC2_7766, 0xF623, 0x4200, 0x9D64_115E_9BFD_4A08);
pub const METADATA_REGION: [u8; 16] = guid(0x8B7C_A206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);
pub const FILE_PARAMETERS: [u8; 16] = guid(0xCAA1_6737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
pub const VIRTUAL_DISK_SIZE: [u8; 16] = guid(0x2FA5_4224, 0xCD1B, 0x4876, 0xB211_5DBE_D83B_F4B8);
pub const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(0x8141_BF1D, 0xA96F, 0x4709, 0xBA47_F233_A8FA_AB5F);
pub const PARENT_LOCATOR: [u8; 16] = guid(0xA8D3_5F2D, 0xB30B, 0x454D, 0xABF7_D3D8_4834_AB0C);
pub const VHDX_LOCATOR_TYPE: [u8; 16] = guid(0xB04A_EFB7, 0xD19E, 0x4A81, 0xB789_25B8_E944_5913);

pub const MIB: u64 = 1 << 20;
/// Header slots and region table copies (§2.2.2, §2.2.3).
pub const HEADER_OFFSETS: [usize; 2] = [64 << 10, 128 << 10];
pub const REGION_TABLE_OFFSETS: [usize; 2] = [192 << 10, 256 << 10];

pub const fn guid(data1: u32, data2: u16, data3: u16, data4: u64) -> [u8; 16] {
    let a = data1.to_le_bytes();
    let b = data2.to_le_bytes();
    let c = data3.to_le_bytes();
    let d = data4.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

// ---------------------------------------------------------------------------------------
// Tools

/// Runs a command; fails the test when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = output(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command and returns whatever it did.
pub fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Makes a VHDX with qemu-img (`options` as for `-o`) and writes into it with qemu-io.
pub fn qemu_image(dir: &Path, name: &str, size: &str, options: &str, writes: &[&str]) -> PathBuf {
    let path = dir.join(name);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            options,
            path_str(&path),
            size,
        ],
    );
    for write in writes {
        run("qemu-io", &["-f", "vhdx", "-c", write, path_str(&path)]);
    }
    path
}

/// What qemu reads from an image: `qemu-img convert -O raw`, a sparse file.
pub fn qemu_raw(image: &Path) -> PathBuf {
    let raw = image.with_extension("raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            path_str(image),
            path_str(&raw),
        ],
    );
    raw
}

// ---------------------------------------------------------------------------------------
// Reading

pub fn context() -> OpenContext<'static> {
    OpenContext {
        resolver: &FileResolver,
        depth: 0,
    }
}

pub fn open_path(path: &Path) -> Result<VhdxReader, FormatError> {
    let source: Arc<dyn ByteSource> = Arc::new(FileSource::open(path)?);
    VhdxReader::open(source, &context())
}

pub fn open_bytes(bytes: Vec<u8>) -> Result<VhdxReader, FormatError> {
    let source: Arc<dyn ByteSource> = Arc::new(MemorySource::new("fixture.vhdx", bytes));
    VhdxReader::open(source, &context())
}

/// Bytes of the disk reported as data and as zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub data: u64,
    pub zero: u64,
}

/// Walks every extent of `reader` and checks it against the raw file `raw`: data extents
/// hold the raw bytes, zero extents cover only zeros. Holes of the raw file are skipped
/// with SEEK_DATA, so sparse disks of gigabytes check quickly.
pub fn assert_reads_like_raw(reader: &mut dyn DiskReader, raw: &Path) -> Coverage {
    let raw_file = File::open(raw).expect("open the raw file");
    let size = reader.size();
    assert_eq!(
        raw_file.metadata().expect("raw metadata").len(),
        size,
        "the disk's size differs from qemu's"
    );
    let mut coverage = Coverage::default();
    let mut offset = 0;
    while offset < size {
        let extent = reader.extent_at(offset).expect("extent");
        assert_eq!(extent.offset, offset, "extents start where asked");
        assert!(extent.length > 0 && extent.end() <= size, "{extent:?}");
        match extent.kind {
            ExtentKind::Data => {
                compare_data(reader, &raw_file, offset, extent.end());
                coverage.data += extent.length;
            }
            ExtentKind::Zero => {
                assert_raw_zero(&raw_file, offset, extent.end());
                coverage.zero += extent.length;
            }
            ExtentKind::Backing => panic!("extent_at never reports Backing: {extent:?}"),
        }
        offset = extent.end();
    }
    coverage
}

/// Reads chunks of at most this many bytes when comparing.
const COMPARE_CHUNK: u64 = 4 << 20;

fn compare_data(reader: &mut dyn DiskReader, raw: &File, start: u64, end: u64) {
    let mut position = start;
    while position < end {
        let len = usize::try_from((end - position).min(COMPARE_CHUNK)).expect("small");
        let ours = reader.read_vec(position, len).expect("read the image");
        let mut theirs = vec![0u8; len];
        raw.read_exact_at(&mut theirs, position).expect("read raw");
        if ours != theirs {
            let at = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "byte {} differs: ours {:#x}, qemu's {:#x}",
                position + at as u64,
                ours[at],
                theirs[at]
            );
        }
        position += len as u64;
    }
}

fn assert_raw_zero(raw: &File, start: u64, end: u64) {
    let mut position = start;
    while position < end {
        let data = match rustix::fs::seek(raw, rustix::fs::SeekFrom::Data(position)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => return,
            Err(e) => panic!("SEEK_DATA: {e}"),
        };
        if data >= end {
            return;
        }
        let len = usize::try_from((end - data).min(COMPARE_CHUNK)).expect("small");
        let mut bytes = vec![0u8; len];
        raw.read_exact_at(&mut bytes, data).expect("read raw");
        assert!(
            is_zero(&bytes),
            "a zero extent at {start}..{end} covers data near {data}"
        );
        position = data + len as u64;
    }
}

/// Reads the whole disk through `read_at` in `chunk`-byte pieces.
pub fn read_all(reader: &mut dyn DiskReader, chunk: usize) -> Vec<u8> {
    let size = usize::try_from(reader.size()).expect("small disk");
    let mut bytes = vec![0u8; size];
    for (index, piece) in bytes.chunks_mut(chunk).enumerate() {
        reader.read_at((index * chunk) as u64, piece).expect("read");
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// Patching files in memory

pub fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

pub fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// The slot (0 or 1) of the current header: the higher sequence number.
pub fn current_header(bytes: &[u8]) -> usize {
    let one = le_u64(bytes, HEADER_OFFSETS[0] + 8);
    let two = le_u64(bytes, HEADER_OFFSETS[1] + 8);
    usize::from(two > one)
}

/// Recomputes the checksums of both headers and both region tables.
pub fn refresh_checksums(bytes: &mut [u8]) {
    for at in HEADER_OFFSETS {
        refresh_checksum(bytes, at, 4096);
    }
    for at in REGION_TABLE_OFFSETS {
        refresh_checksum(bytes, at, 64 << 10);
    }
}

/// Recomputes the CRC-32C at `at + 4` of the `len`-byte structure at `at`.
pub fn refresh_checksum(bytes: &mut [u8], at: usize, len: usize) {
    put(bytes, at + 4, &[0; 4]);
    let checksum = crc32c(&bytes[at..at + len]);
    put(bytes, at + 4, &checksum.to_le_bytes());
}

/// The file offset of the region table 1 entry for `guid`, and the region's offset and
/// length.
pub fn region(bytes: &[u8], guid: [u8; 16]) -> (usize, u64, u64) {
    let table = REGION_TABLE_OFFSETS[0];
    let count = le_u32(bytes, table + 8) as usize;
    (0..count)
        .map(|index| table + 16 + 32 * index)
        .find(|&entry| bytes[entry..entry + 16] == guid)
        .map(|entry| {
            (
                entry,
                le_u64(bytes, entry + 16),
                u64::from(le_u32(bytes, entry + 24)),
            )
        })
        .expect("the region is listed")
}

/// The file offset of the metadata table entry for `guid`, and of the item itself.
pub fn metadata_item(bytes: &[u8], guid: [u8; 16]) -> (usize, usize) {
    let (_, region_offset, _) = region(bytes, METADATA_REGION);
    let table = region_offset as usize;
    let count = usize::from(le_u16(bytes, table + 10));
    (0..count)
        .map(|index| table + 32 + 32 * index)
        .find(|&entry| bytes[entry..entry + 16] == guid)
        .map(|entry| (entry, table + le_u32(bytes, entry + 16) as usize))
        .expect("the item is listed")
}

/// The file offset of BAT entry `index`.
pub fn bat_entry(bytes: &[u8], index: u64) -> usize {
    let (_, bat, _) = region(bytes, BAT_REGION);
    (bat + 8 * index) as usize
}

// ---------------------------------------------------------------------------------------
// Log entries, built field by field (§2.3.1)

/// What one log descriptor does.
pub enum LogWrite {
    /// Write these 4096 bytes at the file offset.
    Sector { file_offset: u64, bytes: Vec<u8> },
    /// Write zeros over `length` bytes from the file offset.
    Zeros { file_offset: u64, length: u64 },
}

/// The fields of a log entry header that tests vary.
pub struct EntryHeader {
    pub sequence: u64,
    /// Offset in the log of the sequence's first entry.
    pub tail: u32,
    pub log_guid: [u8; 16],
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

/// A whole log entry: header, descriptors padded to 4 KiB, data sectors, checksum.
pub fn log_entry(header: &EntryHeader, writes: &[LogWrite]) -> Vec<u8> {
    let descriptor_area = (64 + 32 * writes.len()).div_ceil(4096) * 4096;
    let data_sectors = writes
        .iter()
        .filter(|w| matches!(w, LogWrite::Sector { .. }))
        .count();
    let length = descriptor_area + 4096 * data_sectors;
    let mut entry = vec![0u8; length];
    put(&mut entry, 0, b"loge"); // Signature
    // Checksum (4..8) last.
    put(&mut entry, 8, &(length as u32).to_le_bytes()); // EntryLength
    put(&mut entry, 12, &header.tail.to_le_bytes()); // Tail
    put(&mut entry, 16, &header.sequence.to_le_bytes()); // SequenceNumber
    put(&mut entry, 24, &(writes.len() as u32).to_le_bytes()); // DescriptorCount
    // Reserved (28..32) stays zero.
    put(&mut entry, 32, &header.log_guid); // LogGuid
    put(&mut entry, 48, &header.flushed_file_offset.to_le_bytes()); // FlushedFileOffset
    put(&mut entry, 56, &header.last_file_offset.to_le_bytes()); // LastFileOffset

    let mut sector_at = descriptor_area;
    for (index, write) in writes.iter().enumerate() {
        let at = 64 + 32 * index;
        match write {
            LogWrite::Zeros {
                file_offset,
                length,
            } => {
                put(&mut entry, at, b"zero"); // ZeroSignature; Reserved (4..8) zero
                put(&mut entry, at + 8, &length.to_le_bytes()); // ZeroLength
                put(&mut entry, at + 16, &file_offset.to_le_bytes()); // FileOffset
            }
            LogWrite::Sector { file_offset, bytes } => {
                put(&mut entry, at, b"desc"); // DataSignature
                put(&mut entry, at + 4, &bytes[4092..4096]); // TrailingBytes
                put(&mut entry, at + 8, &bytes[0..8]); // LeadingBytes
                put(&mut entry, at + 16, &file_offset.to_le_bytes()); // FileOffset
                put(&mut entry, sector_at, b"data"); // DataSignature
                let high = (header.sequence >> 32) as u32;
                put(&mut entry, sector_at + 4, &high.to_le_bytes()); // SequenceHigh
                put(&mut entry, sector_at + 8, &bytes[8..4092]); // Data
                let low = header.sequence as u32;
                put(&mut entry, sector_at + 4092, &low.to_le_bytes()); // SequenceLow
                sector_at += 4096;
            }
        }
        put(&mut entry, at + 24, &header.sequence.to_le_bytes()); // SequenceNumber
    }
    let checksum = crc32c(&entry);
    put(&mut entry, 4, &checksum.to_le_bytes());
    entry
}

/// Writes `entries` into the log of `bytes` at the given log offsets and sets `log_guid` in
/// both headers, as a writer that stopped before flushing would leave them.
pub fn with_log(bytes: &mut [u8], log_guid: [u8; 16], entries: &[(u64, Vec<u8>)]) {
    let slot = HEADER_OFFSETS[current_header(bytes)];
    let log_offset = le_u64(bytes, slot + 72) as usize;
    let log_length = le_u32(bytes, slot + 68) as usize;
    for (at, entry) in entries {
        let at = *at as usize;
        assert!(at + entry.len() <= log_length, "the entry fits in the log");
        put(bytes, log_offset + at, entry);
    }
    for header in HEADER_OFFSETS {
        put(bytes, header + 48, &log_guid); // LogGuid
    }
    refresh_checksums(bytes);
}

/// A 4 KiB sector whose bytes differ from one another, so that a misplaced leading or
/// trailing part shows.
pub fn patterned_sector(seed: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

// ---------------------------------------------------------------------------------------
// Inputs of the fuzz target `vhdx_open`

/// The file a `vhdx_open` fuzz input describes: a length in KiB (u32 little-endian, modulo
/// 256 MiB + 1), then records of file offset (u32), length (u16) and bytes laid over zeros.
/// The same decoding as `fuzz/fuzz_targets/vhdx_open.rs`, materialised.
pub fn decode_fuzz_input(data: &[u8]) -> Vec<u8> {
    const MAX_IMAGE_KIB: u32 = 256 << 10;
    let Some((length, mut rest)) = data.split_first_chunk::<4>() else {
        return Vec::new();
    };
    let mut len = (u32::from_le_bytes(*length) % (MAX_IMAGE_KIB + 1)) as usize * 1024;
    let mut records = Vec::new();
    while let Some((head, body)) = rest.split_first_chunk::<6>() {
        let offset = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let wanted = usize::from(u16::from_le_bytes([head[4], head[5]]));
        let (bytes, next) = body.split_at(wanted.min(body.len()));
        len = len.max(offset + bytes.len());
        records.push((offset, bytes));
        rest = next;
    }
    let mut file = vec![0u8; len];
    for (offset, bytes) in records {
        put(&mut file, offset, bytes);
    }
    file
}

/// Serves a 1 MiB raw parent of patterned bytes for every backing name, as the fuzz target
/// does, and refuses every other file.
pub struct PatternParent;

impl PatternParent {
    pub fn bytes() -> Vec<u8> {
        (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect()
    }
}

impl Resolver for PatternParent {
    fn open_file(&self, _from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        Err(FormatError::Open {
            path: name.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    fn open_backing(
        &self,
        _from: &str,
        _name: &str,
        _format: Option<Format>,
        _depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        let source = MemorySource::new("parent", Self::bytes());
        Ok(Box::new(RawSourceReader::new(Arc::new(source))))
    }
}

/// Opens a fuzz input as the target does.
pub fn open_fuzz_input(data: &[u8]) -> Result<VhdxReader, FormatError> {
    let source: Arc<dyn ByteSource> =
        Arc::new(MemorySource::new("fuzz.vhdx", decode_fuzz_input(data)));
    VhdxReader::open(
        source,
        &OpenContext {
            resolver: &PatternParent,
            depth: 0,
        },
    )
}

/// The files of `fuzz/<dir>/vhdx*`, by name.
pub fn fuzz_files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect();
    files.sort();
    files
}

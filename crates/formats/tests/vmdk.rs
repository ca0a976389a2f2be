//! VMDK against QEMU: images made by `qemu-img convert -O vmdk` in every subformat read
//! exactly as `qemu-img convert -O raw` reads them, exports pass `qemu-img check` and
//! compare equal to their source, and hand-built hostile images are refused with errors
//! naming the field at fault.

// Test images are a few MiB: their offsets index memory freely.
#![allow(clippy::cast_possible_truncation)]

mod vmdk_support;

use std::io::Write;
use std::path::Path;

use blockyard_formats::vmdk::VmdkSubformat;
use blockyard_formats::{DiskReader, ExtentKind, FormatError};
use flate2::Compression;
use flate2::write::ZlibEncoder;
use vmdk_support::{
    MemoryResolver, assert_matches_raw, assert_qemu_accepts, assert_reads_like_qemu, export,
    open_bytes, open_path, open_vmdk, qemu_img, qemu_io, qemu_vmdk, raw_image, raw_of, read_all,
    text, write_file,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// qemu-io writes that leave data, holes and explicit zeros across a 24 MiB disk, some
/// of them not aligned to grains.
const SMALL_DISK_WRITES: [&str; 5] = [
    "write -P 0x5a 1M 64k",
    "write -P 0x11 3M 100k",
    "write -z 5M 64k",
    "write -P 0xc3 7000k 3333",
    "write -P 0x77 23M 1M",
];

// ---- reading images made by qemu-img -------------------------------------------------------

#[test]
fn monolithic_sparse_images_read_as_qemu_reads_them_with_holes_reported_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_image(dir.path(), "src.raw", "24M", &SMALL_DISK_WRITES);
    let image = dir.path().join("sparse.vmdk");
    qemu_vmdk(&raw, &image, "monolithicSparse");

    let summary = assert_reads_like_qemu(&image);

    // qemu stores only the grains it found data in: at most 2.3 MiB of the 24.
    assert!(summary.data_bytes <= 2 * MIB + 320 * KIB, "{summary:?}");
    let mut reader = open_path(&image);
    let first = reader.extent_at(0).expect("extent");
    assert_eq!((first.kind, first.length), (ExtentKind::Zero, MIB));
    let data = reader.extent_at(MIB).expect("extent");
    assert_eq!((data.kind, data.length), (ExtentKind::Data, 64 * KIB));
}

#[test]
fn stream_optimized_images_from_qemu_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_image(dir.path(), "src.raw", "24M", &SMALL_DISK_WRITES);
    let image = dir.path().join("stream.vmdk");
    qemu_vmdk(&raw, &image, "streamOptimized");

    let summary = assert_reads_like_qemu(&image);
    assert!(summary.zero_bytes >= 21 * MIB, "{summary:?}");
}

#[test]
fn monolithic_flat_images_read_as_qemu_reads_them_with_holes_found_in_the_flat_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_image(dir.path(), "src.raw", "24M", &SMALL_DISK_WRITES);
    let image = dir.path().join("flat.vmdk");
    qemu_vmdk(&raw, &image, "monolithicFlat");

    let summary = assert_reads_like_qemu(&image);
    // The flat file is sparse where the raw image was.
    assert!(summary.zero_bytes >= 20 * MIB, "{summary:?}");
}

/// A 5 GiB sparse raw disk with data in each of the three 2 GiB extents qemu cuts it into,
/// and across the boundary of the first two.
fn five_gib_raw(dir: &Path) -> std::path::PathBuf {
    raw_image(
        dir,
        "big.raw",
        "5G",
        &[
            "write -P 0x21 0 1M",
            "write -P 0x22 2047M 2M",
            "write -P 0x23 3G 512k",
            "write -P 0x24 4607M 1M",
            "write -P 0x25 5119M 1M",
        ],
    )
}

#[test]
fn two_gib_split_sparse_disks_read_as_qemu_reads_them_across_three_extents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = five_gib_raw(dir.path());
    let image = dir.path().join("split.vmdk");
    qemu_vmdk(&raw, &image, "twoGbMaxExtentSparse");

    let mut reader = open_vmdk(&image);
    assert_eq!(reader.extent_count(), 3);
    let summary = assert_matches_raw(&mut reader, &raw);
    assert!(summary.data_bytes <= 6 * MIB, "{summary:?}");
    assert!(summary.zero_bytes >= 5 * GIB - 6 * MIB, "{summary:?}");
}

#[test]
fn two_gib_split_flat_disks_read_as_qemu_reads_them_across_three_extents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = five_gib_raw(dir.path());
    let image = dir.path().join("split.vmdk");
    qemu_vmdk(&raw, &image, "twoGbMaxExtentFlat");

    let mut reader = open_vmdk(&image);
    assert_eq!(reader.extent_count(), 3);
    let summary = assert_matches_raw(&mut reader, &raw);
    assert!(summary.zero_bytes >= 4 * GIB, "{summary:?}");
}

#[test]
fn zeroed_grain_entries_read_as_zero_extents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("zeroed.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        text(&image),
        "4M",
    ]);
    qemu_io(
        &image,
        "vmdk",
        &["write -P 0x61 0 256k", "write -z 64k 128k"],
    );

    assert_reads_like_qemu(&image);
    let mut reader = open_path(&image);
    let zeroed = reader.extent_at(64 * KIB).expect("extent");
    assert_eq!((zeroed.kind, zeroed.length), (ExtentKind::Zero, 128 * KIB));
    let data = reader.extent_at(192 * KIB).expect("extent");
    assert_eq!((data.kind, data.length), (ExtentKind::Data, 64 * KIB));
}

#[test]
fn delta_disks_read_through_their_parent_and_report_what_they_leave_to_it_as_backing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", text(&base), "4M"]);
    qemu_io(
        &base,
        "vmdk",
        &["write -P 0x07 0 1M", "write -P 0x08 3M 64k"],
    );
    let top = dir.path().join("top.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        text(&top),
    ]);
    qemu_io(
        &top,
        "vmdk",
        &["write -P 0x09 512k 64k", "write -P 0x0a 2M 64k"],
    );

    assert_reads_like_qemu(&top);
    assert!(open_vmdk(&top).has_parent());
    assert!(!open_vmdk(&base).has_parent());
    let mut reader = open_path(&top);
    let layer = reader.layer_extent_at(0).expect("extent");
    assert_eq!((layer.kind, layer.length), (ExtentKind::Backing, 512 * KIB));
    let own = reader.layer_extent_at(512 * KIB).expect("extent");
    assert_eq!((own.kind, own.length), (ExtentKind::Data, 64 * KIB));
    // Through the parent: its data, then its hole.
    let parent_data = reader.extent_at(0).expect("extent");
    assert_eq!(parent_data.kind, ExtentKind::Data);
    let parent_hole = reader.extent_at(MIB).expect("extent");
    assert_eq!(
        (parent_hole.kind, parent_hole.length),
        (ExtentKind::Zero, MIB)
    );
}

// ---- exports -------------------------------------------------------------------------------

#[test]
fn stream_optimized_exports_pass_qemu_check_and_compare_equal_for_any_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_image(dir.path(), "src.raw", "24M", &SMALL_DISK_WRITES);
    for block_size in [4 * KIB, 512 * KIB, 2 * MIB] {
        let out = dir.path().join(format!("stream-{block_size}.vmdk"));
        export(&raw, block_size, VmdkSubformat::StreamOptimized, &out);
        assert_qemu_accepts(&out, &raw, "streamOptimized");
        let mut reader = open_path(&out);
        assert_matches_raw(&mut *reader, &raw);
    }
}

#[test]
fn monolithic_sparse_exports_pass_qemu_check_and_compare_equal_for_any_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_image(dir.path(), "src.raw", "24M", &SMALL_DISK_WRITES);
    for block_size in [4 * KIB, 512 * KIB, 2 * MIB] {
        let out = dir.path().join(format!("sparse-{block_size}.vmdk"));
        export(&raw, block_size, VmdkSubformat::MonolithicSparse, &out);
        assert_qemu_accepts(&out, &raw, "monolithicSparse");
        let mut reader = open_path(&out);
        assert_matches_raw(&mut *reader, &raw);
    }
}

#[test]
fn exports_of_a_disk_whose_size_is_not_whole_grains_or_sectors_round_up_to_a_sector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("odd.raw");
    let size = 3 * MIB + 1000;
    let mut bytes = vec![0u8; size as usize];
    bytes[..5000].fill(0x31);
    bytes[size as usize - 700..].fill(0x32);
    write_file(&raw, &bytes);
    let padded = dir.path().join("padded.raw");
    bytes.resize(size.next_multiple_of(512) as usize, 0);
    write_file(&padded, &bytes);

    for subformat in [
        VmdkSubformat::StreamOptimized,
        VmdkSubformat::MonolithicSparse,
    ] {
        let out = dir.path().join(format!("{subformat:?}.vmdk"));
        export(&raw, 4 * KIB, subformat, &out);
        qemu_img(&["check", "-q", "-f", "vmdk", text(&out)]);
        let mut reader = open_path(&out);
        assert_matches_raw(&mut *reader, &padded);
    }
}

#[test]
fn a_monolithic_sparse_export_stores_only_grains_that_overlap_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_image(dir.path(), "src.raw", "64M", &["write -P 1 10M 4k"]);
    let out = dir.path().join("sparse.vmdk");
    export(&raw, 4 * KIB, VmdkSubformat::MonolithicSparse, &out);

    let mut reader = open_path(&out);
    let data = reader.extent_at(10 * MIB).expect("extent");
    assert_eq!((data.kind, data.length), (ExtentKind::Data, 64 * KIB));
    let hole = reader.extent_at(10 * MIB + 64 * KIB).expect("extent");
    assert_eq!((hole.kind, hole.end()), (ExtentKind::Zero, 64 * MIB));
    // Header, descriptor, two copies of a directory and two grain tables, one grain.
    let len = std::fs::metadata(&out).expect("stat").len();
    assert_eq!(len, 128 * KIB);
}

#[test]
fn an_empty_disk_exports_to_images_qemu_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("empty.raw");
    std::fs::File::create(&raw)
        .expect("create")
        .set_len(8 * MIB)
        .expect("size");
    for (subformat, create_type) in [
        (VmdkSubformat::StreamOptimized, "streamOptimized"),
        (VmdkSubformat::MonolithicSparse, "monolithicSparse"),
    ] {
        let out = dir.path().join(format!("{create_type}.vmdk"));
        export(&raw, 512 * KIB, subformat, &out);
        assert_qemu_accepts(&out, &raw, create_type);
        let mut reader = open_path(&out);
        let extent = reader.extent_at(0).expect("extent");
        assert_eq!((extent.kind, extent.length), (ExtentKind::Zero, 8 * MIB));
    }
}

#[test]
fn stream_exports_leave_grains_of_zeros_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One 1 MiB block, of which only the first 4 KiB are not zero.
    let raw = raw_image(dir.path(), "src.raw", "8M", &["write -P 5 1M 4k"]);
    let out = dir.path().join("stream.vmdk");
    export(&raw, MIB, VmdkSubformat::StreamOptimized, &out);

    let mut reader = open_path(&out);
    let data = reader.extent_at(MIB).expect("extent");
    assert_eq!((data.kind, data.length), (ExtentKind::Data, 64 * KIB));
    let zero = reader.extent_at(MIB + 64 * KIB).expect("extent");
    assert_eq!(zero.kind, ExtentKind::Zero);
}

// ---- hand-built images ---------------------------------------------------------------------

/// Sectors per grain of the hand-built images: 4 KiB grains.
const GRAIN: u64 = 8;
/// Sectors of disk of the hand-built images: eight grains.
const CAPACITY: u64 = 64;
/// `flags` bits: newline test, zeroed-grain entries, compressed grains, markers.
const NEWLINE_TEST: u32 = 1;
const ZEROED_GRAINS: u32 = 1 << 2;
const COMPRESSED: u32 = 1 << 16;
const MARKERS: u32 = 1 << 17;

/// A sparse extent header, field by field (Virtual Disk Format 1.1, "Hosted Sparse
/// Extent Header").
#[derive(Debug, Clone, Copy)]
struct Header {
    version: u32,
    flags: u32,
    capacity: u64,
    grain: u64,
    descriptor_offset: u64,
    descriptor_size: u64,
    gtes: u32,
    gd_offset: u64,
    overhead: u64,
    compress: u16,
}

impl Header {
    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[0..4].copy_from_slice(b"KDMV"); // magicNumber
        h[4..8].copy_from_slice(&self.version.to_le_bytes()); // version
        h[8..12].copy_from_slice(&self.flags.to_le_bytes()); // flags
        h[12..20].copy_from_slice(&self.capacity.to_le_bytes()); // capacity, sectors
        h[20..28].copy_from_slice(&self.grain.to_le_bytes()); // grainSize, sectors
        h[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes()); // descriptorOffset
        h[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes()); // descriptorSize
        h[44..48].copy_from_slice(&self.gtes.to_le_bytes()); // numGTEsPerGT
        // 48..56 rgdOffset: 0, no redundant directory.
        h[56..64].copy_from_slice(&self.gd_offset.to_le_bytes()); // gdOffset
        h[64..72].copy_from_slice(&self.overhead.to_le_bytes()); // overHead
        // 72 uncleanShutdown: 0.
        h[73..77].copy_from_slice(b"\n \r\n"); // the newline test characters
        h[77..79].copy_from_slice(&self.compress.to_le_bytes()); // compressAlgorithm
        h
    }
}

/// An embedded descriptor of `create_type`, padded to one sector.
fn descriptor_sector(create_type: &str) -> Vec<u8> {
    let mut text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"{create_type}\"\nRW {CAPACITY} SPARSE \"disk.vmdk\"\n"
    )
    .into_bytes();
    text.resize(512, 0);
    text
}

/// `entries` as little-endian u32s, padded to whole sectors.
fn entries(entries: &[u32], sectors: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    bytes.resize(sectors * 512, 0);
    bytes
}

/// The disk every hand-built image holds: grain 0 of 0x11, grain 2 of 0x22, the rest
/// zeros (grain 3 as a zeroed-grain entry in the sparse image).
fn expected_disk() -> Vec<u8> {
    let mut disk = vec![0u8; (CAPACITY * 512) as usize];
    disk[..4096].fill(0x11);
    disk[8192..12288].fill(0x22);
    disk
}

/// The hand-built monolithic sparse image's header.
fn sparse_header() -> Header {
    Header {
        version: 2,
        flags: NEWLINE_TEST | ZEROED_GRAINS,
        capacity: CAPACITY,
        grain: GRAIN,
        descriptor_offset: 1,
        descriptor_size: 1,
        gtes: 512,
        gd_offset: 2,
        overhead: 7,
        compress: 0,
    }
}

/// A monolithic sparse image with `header`:
///
/// ```text
/// sector 0      header
/// sector 1      descriptor
/// sector 2      grain directory: [3]
/// sectors 3..7  grain table: [7, 0, 15, 1, 0...]
/// sectors 7..15 grain 0, 0x11
/// 15..23        grain 2, 0x22
/// ```
fn sparse_image(header: Header) -> Vec<u8> {
    let mut image = header.bytes();
    image.extend(descriptor_sector("monolithicSparse"));
    image.extend(entries(&[3], 1));
    image.extend(entries(&[7, 0, 15, 1], 4));
    image.extend(vec![0x11; 4096]);
    image.extend(vec![0x22; 4096]);
    image
}

/// Where the hand-built stream image keeps its parts, in bytes.
#[derive(Debug)]
struct StreamParts {
    grain0: usize,
    table: usize,
    footer: usize,
}

/// A zlib stream of `bytes`.
fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

/// A grain marker for the grain at disk sector `lba` holding `data`, padded to a sector.
fn grain_record(lba: u64, data: &[u8]) -> Vec<u8> {
    let mut record = lba.to_le_bytes().to_vec(); // lba
    record.extend((data.len() as u32).to_le_bytes()); // size
    record.extend(data); // the zlib stream
    record.resize(record.len().next_multiple_of(512), 0);
    record
}

/// A metadata marker: `sectors` of metadata of `kind` follow.
fn marker(sectors: u64, kind: u32) -> Vec<u8> {
    let mut m = sectors.to_le_bytes().to_vec(); // numSectors
    m.extend(0u32.to_le_bytes()); // size: 0 for metadata
    m.extend(kind.to_le_bytes()); // type
    m.resize(512, 0);
    m
}

/// A stream-optimized image laid out as VMware writes them, with the grain directory at
/// the end:
///
/// ```text
/// header (gdOffset GD_AT_END), descriptor, grain 0, grain 2, GT marker + table,
/// GD marker + directory, footer marker + footer, end-of-stream marker
/// ```
fn stream_image(grain0: &[u8]) -> (Vec<u8>, StreamParts) {
    let header = Header {
        version: 3,
        flags: NEWLINE_TEST | COMPRESSED | MARKERS,
        gd_offset: u64::MAX,
        overhead: 2,
        compress: 1,
        ..sparse_header()
    };
    let mut image = header.bytes();
    image.extend(descriptor_sector("streamOptimized"));
    let grain0_at = image.len();
    image.extend(grain_record(0, grain0));
    let grain2_at = image.len();
    image.extend(grain_record(2 * GRAIN, &zlib(&[0x22; 4096])));
    image.extend(marker(4, 1));
    let table_at = image.len();
    image.extend(entries(
        &[(grain0_at / 512) as u32, 0, (grain2_at / 512) as u32],
        4,
    ));
    image.extend(marker(1, 2));
    let directory_at = image.len();
    image.extend(entries(&[(table_at / 512) as u32], 1));
    image.extend(marker(1, 3));
    let footer_at = image.len();
    image.extend(
        Header {
            gd_offset: (directory_at / 512) as u64,
            ..header
        }
        .bytes(),
    );
    image.extend(marker(0, 0));
    let parts = StreamParts {
        grain0: grain0_at,
        table: table_at,
        footer: footer_at,
    };
    (image, parts)
}

fn valid_stream() -> (Vec<u8>, StreamParts) {
    stream_image(&zlib(&[0x11; 4096]))
}

/// Sets the little-endian `N` bytes at `at`.
fn put<const N: usize>(image: &mut [u8], at: usize, value: [u8; N]) {
    image[at..at + N].copy_from_slice(&value);
}

/// Opens a one-file image.
fn open_alone(image: Vec<u8>) -> Result<Box<dyn DiskReader>, FormatError> {
    open_bytes(image, &MemoryResolver::default())
}

/// Asserts that `result` is a `Corrupt` error about `field` at byte `offset`.
fn assert_corrupt<T>(result: Result<T, FormatError>, field: &str, offset: u64) {
    match result {
        Err(FormatError::Corrupt {
            format: "VMDK",
            field: found,
            offset: at,
            ..
        }) if found == field && at == offset => {}
        Err(other) => panic!("expected {field} at {offset} to be corrupt, got {other:?}"),
        Ok(_) => panic!("expected {field} at {offset} to be corrupt, but it was accepted"),
    }
}

/// Asserts that `result` is an `Unsupported` error whose feature mentions `feature`.
fn assert_unsupported<T>(result: Result<T, FormatError>, feature: &str) {
    match result {
        Err(FormatError::Unsupported { feature: found, .. }) if found.contains(feature) => {}
        Err(other) => panic!("expected {feature} to be unsupported, got {other:?}"),
        Ok(_) => panic!("expected {feature} to be unsupported, but it was accepted"),
    }
}

#[test]
fn hand_built_images_read_the_same_here_and_in_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = dir.path().join("expected.raw");
    write_file(&expected, &expected_disk());
    let (stream, _) = valid_stream();
    for (name, image) in [
        ("sparse.vmdk", sparse_image(sparse_header())),
        ("stream.vmdk", stream),
    ] {
        let path = dir.path().join(name);
        write_file(&path, &image);
        qemu_img(&["compare", "-q", "-F", "raw", text(&path), text(&expected)]);
        let mut reader = open_alone(image).expect("open");
        assert_eq!(
            read_all(&mut *reader).expect("read"),
            expected_disk(),
            "{name}"
        );
    }
    let mut reader = open_alone(sparse_image(sparse_header())).expect("open");
    let zeroed = reader.extent_at(3 * 4096).expect("extent");
    assert_eq!((zeroed.kind, zeroed.length), (ExtentKind::Zero, 5 * 4096));
}

#[test]
fn a_file_neither_sparse_nor_a_descriptor_is_refused_at_its_magic_number() {
    let image = vec![0x90; 2 << 20];
    assert_corrupt(open_alone(image), "magicNumber", 0);
}

#[test]
fn header_versions_above_three_are_unsupported() {
    let header = Header {
        version: 4,
        ..sparse_header()
    };
    assert_unsupported(open_alone(sparse_image(header)), "version 4");
}

#[test]
fn grain_sizes_that_are_not_powers_of_two_or_too_large_are_refused() {
    for grain in [0, 3, 1 << 16] {
        let header = Header {
            grain,
            ..sparse_header()
        };
        assert_corrupt(open_alone(sparse_image(header)), "grainSize", 20);
    }
}

#[test]
fn grain_tables_of_no_entries_or_too_many_are_refused() {
    for gtes in [0, 513] {
        let header = Header {
            gtes,
            ..sparse_header()
        };
        assert_corrupt(open_alone(sparse_image(header)), "numGTEsPerGT", 44);
    }
}

#[test]
fn capacities_above_the_disk_limit_or_the_directory_limit_are_refused() {
    let huge = Header {
        capacity: 1 << 50,
        ..sparse_header()
    };
    assert_corrupt(open_alone(sparse_image(huge)), "capacity", 12);
    // 2^23 one-sector grains in one-entry tables need 2^23 directory entries.
    let many_tables = Header {
        capacity: 1 << 23,
        grain: 1,
        gtes: 1,
        ..sparse_header()
    };
    assert_corrupt(open_alone(sparse_image(many_tables)), "capacity", 12);
}

#[test]
fn a_grain_directory_past_the_end_of_the_file_is_refused() {
    let header = Header {
        gd_offset: 1000,
        ..sparse_header()
    };
    assert_corrupt(open_alone(sparse_image(header)), "gdOffset", 56);
}

#[test]
fn a_grain_directory_entry_past_the_end_of_the_file_is_refused() {
    let mut image = sparse_image(sparse_header());
    put(&mut image, 1024, 5000u32.to_le_bytes());
    assert_corrupt(open_alone(image), "grain directory entry", 1024);
}

#[test]
fn a_grain_table_entry_past_the_end_of_the_file_is_refused_when_the_grain_is_used() {
    let mut image = sparse_image(sparse_header());
    // Grain 2's entry, the third of the table at sector 3.
    put(&mut image, 3 * 512 + 8, 0x00ff_0000u32.to_le_bytes());
    let mut reader = open_alone(image).expect("the directory is sound");
    assert_corrupt(reader.extent_at(2 * 4096), "grain table entry", 3 * 512 + 8);
    assert_corrupt(
        reader.read_vec(0, 3 * 4096),
        "grain table entry",
        3 * 512 + 8,
    );
}

#[test]
fn a_header_mangled_by_a_text_mode_transfer_is_refused() {
    let mut image = sparse_image(sparse_header());
    image[75] = b'\n';
    assert_corrupt(open_alone(image), "singleEndLineChar", 73);
}

#[test]
fn an_embedded_descriptor_above_the_limit_or_past_the_end_is_refused() {
    let large = Header {
        descriptor_size: 4096,
        ..sparse_header()
    };
    assert_corrupt(open_alone(sparse_image(large)), "descriptorSize", 36);
    let outside = Header {
        descriptor_offset: 100,
        ..sparse_header()
    };
    assert_corrupt(open_alone(sparse_image(outside)), "descriptorOffset", 28);
}

#[test]
fn unknown_compression_is_unsupported_and_a_contradicting_flag_is_refused() {
    let unknown = Header {
        compress: 2,
        ..sparse_header()
    };
    assert_unsupported(open_alone(sparse_image(unknown)), "compression algorithm 2");
    let contradicting = Header {
        flags: NEWLINE_TEST | COMPRESSED,
        ..sparse_header()
    };
    assert_corrupt(
        open_alone(sparse_image(contradicting)),
        "compressAlgorithm",
        77,
    );
}

#[test]
fn a_stream_whose_footer_is_missing_is_refused() {
    let (mut image, _) = valid_stream();
    let len = image.len();
    image[len - 3 * 512..].fill(0);
    assert_corrupt(open_alone(image), "footer marker", (len - 3 * 512) as u64);
}

#[test]
fn a_footer_that_also_puts_the_directory_at_the_end_is_refused() {
    let (mut image, parts) = valid_stream();
    put(&mut image, parts.footer + 56, u64::MAX.to_le_bytes());
    assert_corrupt(open_alone(image), "gdOffset", (parts.footer + 56) as u64);
}

#[test]
fn a_footer_that_disagrees_with_the_header_is_refused() {
    let (mut image, parts) = valid_stream();
    put(&mut image, parts.footer + 12, 128u64.to_le_bytes());
    assert_corrupt(open_alone(image), "capacity", (parts.footer + 12) as u64);
}

#[test]
fn a_grain_marker_naming_another_sector_is_refused() {
    let (mut image, parts) = valid_stream();
    put(&mut image, parts.grain0, 8u64.to_le_bytes());
    let mut reader = open_alone(image).expect("the tables are sound");
    assert_corrupt(reader.read_vec(0, 512), "grain marker", parts.grain0 as u64);
}

#[test]
fn a_grain_marker_of_no_bytes_or_more_than_two_grains_is_refused() {
    for size in [0u32, 8193] {
        let (mut image, parts) = valid_stream();
        put(&mut image, parts.grain0 + 8, size.to_le_bytes());
        let mut reader = open_alone(image).expect("the tables are sound");
        assert_corrupt(
            reader.read_vec(0, 4096),
            "grain marker",
            (parts.grain0 + 8) as u64,
        );
    }
}

#[test]
fn a_grain_that_inflates_to_more_than_a_grain_is_refused() {
    let (image, parts) = stream_image(&zlib(&[0x11; 4097]));
    let mut reader = open_alone(image).expect("the tables are sound");
    let err = reader.read_vec(0, 4096).expect_err("too large");
    assert!(err.to_string().contains("more than one grain"), "{err}");
    assert_corrupt(
        reader.read_vec(0, 100),
        "compressed grain",
        (parts.grain0 + 12) as u64,
    );
}

#[test]
fn a_cut_short_or_invalid_zlib_stream_is_refused() {
    let mut cut = zlib(&[0x11; 4096]);
    cut.truncate(cut.len() - 6);
    let full = zlib(&[0x11; 2048]);
    for data in [cut, vec![0xff; 40], full] {
        let (image, parts) = stream_image(&data);
        let mut reader = open_alone(image).expect("the tables are sound");
        assert_corrupt(
            reader.read_vec(0, 4096),
            "compressed grain",
            (parts.grain0 + 12) as u64,
        );
    }
}

#[test]
fn a_grain_table_in_a_stream_pointing_past_the_end_is_refused() {
    let (mut image, parts) = valid_stream();
    put(&mut image, parts.table, 0x0100_0000u32.to_le_bytes());
    let mut reader = open_alone(image).expect("the directory is sound");
    assert_corrupt(reader.extent_at(0), "grain table entry", parts.table as u64);
}

// ---- hand-built descriptors ----------------------------------------------------------------

/// A descriptor file of `create_type` with the extent `lines`, laid out as VMware lays
/// them out. (qemu misreads an extent line that follows a blank line.)
fn descriptor(create_type: &str, lines: &str) -> Vec<u8> {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"{create_type}\"\n\n# Extent description\n{lines}\n\n#DDB\n\
         ddb.adapterType = \"ide\"\n"
    )
    .into_bytes()
}

#[test]
fn descriptors_join_flat_zero_and_sparse_extents_in_order() {
    let flat: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let resolver = MemoryResolver::default()
        .with("flat.bin", flat.clone())
        .with("sparse.vmdk", sparse_image(sparse_header()));
    let text = descriptor(
        "custom",
        "RW 8 FLAT \"flat.bin\" 4\nRW 16 ZERO\nRW 64 SPARSE \"sparse.vmdk\"\nRW 0 ZERO",
    );
    let mut reader = open_bytes(text, &resolver).expect("open");

    let mut expected = flat[2048..6144].to_vec();
    expected.extend(vec![0u8; 8192]);
    expected.extend(expected_disk());
    assert_eq!(read_all(&mut *reader).expect("read"), expected);
    let zero = reader.extent_at(4096).expect("extent");
    assert_eq!((zero.kind, zero.length), (ExtentKind::Zero, 8192));
}

#[test]
fn extents_that_add_up_past_the_disk_limit_are_refused() {
    // 512 extents of 512 GiB reach the 256 TiB limit exactly; the next passes it.
    let line = format!("RW {} ZERO\n", 1u64 << 30);
    let text = descriptor("custom", &line.repeat(600));
    let at = String::from_utf8_lossy(&text)
        .match_indices("RW ")
        .nth(512)
        .map(|(at, _)| at as u64)
        .expect("line");
    assert_corrupt(
        open_bytes(text, &MemoryResolver::default()),
        "extent line",
        at,
    );
}

#[test]
fn an_extent_line_whose_sectors_overflow_is_refused() {
    let text = descriptor("custom", "RW 18446744073709551615 ZERO");
    let at = String::from_utf8_lossy(&text).find("RW ").expect("line") as u64;
    assert_corrupt(
        open_bytes(text, &MemoryResolver::default()),
        "extent line",
        at,
    );
}

#[test]
fn an_extent_file_name_above_the_limit_is_refused() {
    let line = format!("RW 8 FLAT \"{}\" 0", "a".repeat(5000));
    let text = descriptor("custom", &line);
    let at = String::from_utf8_lossy(&text).find("RW ").expect("line") as u64;
    assert_corrupt(
        open_bytes(text, &MemoryResolver::default()),
        "extent line",
        at,
    );
}

#[test]
fn a_flat_file_shorter_than_its_extent_is_refused() {
    let resolver = MemoryResolver::default().with("flat.bin", vec![1; 4096]);
    let text = descriptor("monolithicFlat", "RW 8 FLAT \"flat.bin\" 1");
    let at = String::from_utf8_lossy(&text).find("RW ").expect("line") as u64;
    assert_corrupt(open_bytes(text, &resolver), "extent line", at);
}

#[test]
fn a_sparse_extent_smaller_than_its_line_is_refused() {
    let resolver = MemoryResolver::default().with("sparse.vmdk", sparse_image(sparse_header()));
    let text = descriptor("twoGbMaxExtentSparse", "RW 128 SPARSE \"sparse.vmdk\"");
    let at = String::from_utf8_lossy(&text).find("RW ").expect("line") as u64;
    assert_corrupt(open_bytes(text, &resolver), "extent line", at);
}

#[test]
fn a_missing_extent_file_is_reported_by_name() {
    let text = descriptor("monolithicFlat", "RW 8 FLAT \"gone-flat.vmdk\" 0");
    match open_bytes(text, &MemoryResolver::default()) {
        Err(FormatError::Reference { target, .. }) => assert_eq!(target, "gone-flat.vmdk"),
        other => panic!("expected a reference error, got {:?}", other.err()),
    }
}

#[test]
fn unknown_disk_types_raw_devices_and_esx_extents_are_unsupported() {
    let resolver = MemoryResolver::default().with("x", vec![0; 4096]);
    assert_unsupported(
        open_bytes(descriptor("somethingNew", "RW 8 ZERO"), &resolver),
        "somethingNew",
    );
    assert_unsupported(
        open_bytes(descriptor("fullDevice", "RW 8 FLAT \"x\" 0"), &resolver),
        "raw device",
    );
    assert_unsupported(
        open_bytes(descriptor("vmfsSparse", "RW 8 VMFSSPARSE \"x\""), &resolver),
        "VMFSSPARSE",
    );
    assert_unsupported(
        open_bytes(descriptor("custom", "NOACCESS 8 FLAT \"x\" 0"), &resolver),
        "NOACCESS",
    );
    let mut cowd = b"COWD".to_vec();
    cowd.resize(4096, 0);
    assert_unsupported(open_alone(cowd), "COWD");
}

#[test]
fn a_descriptor_without_a_create_type_or_extents_is_refused() {
    let resolver = MemoryResolver::default();
    assert_corrupt(
        open_bytes(b"version=1\nRW 8 ZERO\n".to_vec(), &resolver),
        "createType",
        0,
    );
    assert_corrupt(
        open_bytes(descriptor("monolithicFlat", ""), &resolver),
        "extent line",
        0,
    );
}

#[test]
fn a_delta_disk_that_names_no_parent_is_refused() {
    let text = b"version=1\nparentCID=12345678\ncreateType=\"monolithicSparse\"\nRW 8 ZERO\n";
    assert_corrupt(
        open_bytes(text.to_vec(), &MemoryResolver::default()),
        "parentFileNameHint",
        10,
    );
}

#[test]
fn a_delta_disk_reads_its_parent_where_it_stores_nothing() {
    let parent = vec![0x44u8; (CAPACITY * 512) as usize];
    let resolver = MemoryResolver::default()
        .with("parent.raw", parent)
        .with("sparse.vmdk", sparse_image(sparse_header()));
    let text = b"version=1\nparentCID=12345678\nparentFileNameHint=\"parent.raw\"\n\
                 createType=\"monolithicSparse\"\nRW 64 SPARSE \"sparse.vmdk\"\n";
    let mut reader = open_bytes(text.to_vec(), &resolver).expect("open");

    let mut expected = vec![0x44u8; (CAPACITY * 512) as usize];
    expected[..4096].fill(0x11);
    expected[8192..12288].fill(0x22);
    expected[12288..16384].fill(0); // grain 3 is a zeroed grain
    assert_eq!(read_all(&mut *reader).expect("read"), expected);
    let layer = reader.layer_extent_at(4096).expect("extent");
    assert_eq!((layer.kind, layer.length), (ExtentKind::Backing, 4096));
    let zeroed = reader.layer_extent_at(12288).expect("extent");
    assert_eq!((zeroed.kind, zeroed.length), (ExtentKind::Zero, 4096));
}

#[test]
fn reads_outside_the_disk_are_refused() {
    let mut reader = open_alone(sparse_image(sparse_header())).expect("open");
    assert!(matches!(
        reader.extent_at(CAPACITY * 512),
        Err(FormatError::OutOfRange { .. })
    ));
    assert!(matches!(
        reader.read_vec(CAPACITY * 512 - 10, 11),
        Err(FormatError::OutOfRange { .. })
    ));
}

#[test]
fn qemu_reads_the_raw_conversion_of_a_hand_built_split_disk_like_this_reader() {
    // Extent files of a split disk carry no descriptor of their own; qemu would follow one.
    let extent = sparse_image(Header {
        descriptor_offset: 0,
        descriptor_size: 0,
        ..sparse_header()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(&dir.path().join("a.vmdk"), &extent);
    write_file(&dir.path().join("b.vmdk"), &extent);
    let image = dir.path().join("split.vmdk");
    write_file(
        &image,
        &descriptor(
            "twoGbMaxExtentSparse",
            "RW 64 SPARSE \"a.vmdk\"\nRW 64 SPARSE \"b.vmdk\"",
        ),
    );
    let raw = raw_of(&image);
    let mut reader = open_path(&image);
    assert_matches_raw(&mut *reader, &raw);
}

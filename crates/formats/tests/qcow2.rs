//! qcow2 against QEMU: images made by `qemu-img` and `qemu-io` read exactly as
//! `qemu-img convert -O raw` reads them, exports pass `qemu-img check` and compare equal to
//! their source, and hand-built hostile images are refused with errors naming the field.

// Test images are a few MiB: their offsets index memory freely.
#![allow(clippy::cast_possible_truncation)]

mod qcow2_support;

use std::path::Path;
use std::sync::Arc;

use blockyard_formats::export::{ExportLayout, ImageIdentity};
use blockyard_formats::qcow2::{self, Qcow2WriteOptions};
use blockyard_formats::{Block, Blocks, DiskReader, ExtentKind, FileSink, FormatError, StreamSink};
use qcow2_support::{
    Fixture, assert_reads_like_qemu, export_layout, open_file, open_memory, pattern, qemu_img,
    qemu_io, raw_of, write_file,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

// ---- reading images made by qemu-img -------------------------------------------------------

#[test]
fn v3_images_read_as_qemu_reads_them_with_unwritten_clusters_reported_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("v3.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image_str(&image), "16M"]);
    qemu_io(
        &image,
        &[
            "write -P 0x5a 1M 64k",
            "write -P 0x17 3M 5000",
            "write -P 0xc3 15M 1M",
        ],
    );

    let summary = assert_reads_like_qemu(&image);

    // Written: 64 KiB, one 64 KiB cluster for 5000 bytes, 1 MiB; the rest is zero.
    assert!(
        summary.zero_bytes >= 16 * MIB - 2 * 64 * KIB - MIB,
        "{summary:?}"
    );
    let mut reader = open_file(&image);
    let extent = reader.extent_at(0).expect("extent");
    assert_eq!((extent.kind, extent.length), (ExtentKind::Zero, MIB));
    let extent = reader.extent_at(MIB).expect("extent");
    assert_eq!((extent.kind, extent.length), (ExtentKind::Data, 64 * KIB));
}

#[test]
fn v2_images_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("v2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        image_str(&image),
        "8M",
    ]);
    qemu_io(&image, &["write -P 0x11 0 4k", "write -P 0x22 5M 300k"]);

    assert_eq!(qemu2(&image).version(), 2);
    assert_reads_like_qemu(&image);
}

#[test]
fn images_with_4k_and_2m_clusters_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    for cluster in ["4k", "2M"] {
        let image = dir.path().join(format!("c{cluster}.qcow2"));
        let option = format!("cluster_size={cluster}");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &option,
            image_str(&image),
            "40M",
        ]);
        qemu_io(
            &image,
            &[
                "write -P 0x31 0 512",
                "write -P 0x32 6M 3M",
                "write -P 0x33 39M 1M",
            ],
        );
        let summary = assert_reads_like_qemu(&image);
        assert!(
            summary.zero_bytes >= 40 * MIB - 8 * MIB,
            "{cluster}: {summary:?}"
        );
    }
}

#[test]
fn extended_l2_images_read_subcluster_by_subcluster_over_their_backing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    write_file(&base, &pattern(4 * MIB, 3));
    let image = dir.path().join("ext.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=64k",
        "-b",
        "base.raw",
        "-F",
        "raw",
        image_str(&image),
        "4M",
    ]);
    // 2 KiB subclusters: allocated, zero and unallocated ones side by side in a cluster.
    qemu_io(
        &image,
        &[
            "write -P 0x41 0 2k",
            "write -z 4k 2k",
            "write -P 0x42 10k 6k",
            "write -z 1M 64k",
            "write -P 0x43 2M 1k",
        ],
    );

    assert_reads_like_qemu(&image);
    let mut reader = open_file(&image);
    let layer = reader.layer_extent_at(2 * KIB).expect("extent");
    assert_eq!((layer.kind, layer.length), (ExtentKind::Backing, 2 * KIB));
    let zero = reader.layer_extent_at(4 * KIB).expect("extent");
    assert_eq!((zero.kind, zero.length), (ExtentKind::Zero, 2 * KIB));
    let zero = reader.extent_at(MIB).expect("extent");
    assert_eq!((zero.kind, zero.length), (ExtentKind::Zero, 64 * KIB));
}

#[test]
fn zlib_and_zstd_compressed_images_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source.raw");
    let mut bytes = pattern(12 * MIB, 7);
    // Text-like data that compresses, a hole, and noise that does not.
    bytes[..4 * MIB as usize]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = b"the quick brown fox "[i % 20]);
    bytes[4 * MIB as usize..6 * MIB as usize].fill(0);
    write_file(&source, &bytes);

    for compression in ["zlib", "zstd"] {
        let image = dir.path().join(format!("{compression}.qcow2"));
        let option = format!("compression_type={compression},cluster_size=64k");
        qemu_img(&[
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &option,
            image_str(&source),
            image_str(&image),
        ]);
        assert!(
            std::fs::metadata(&image).expect("stat").len() < 10 * MIB,
            "{compression}: qemu-img did not compress"
        );
        let summary = assert_reads_like_qemu(&image);
        assert!(summary.zero_bytes >= 2 * MIB, "{compression}: {summary:?}");
        // Small reads inside one compressed cluster, as a 4 KiB block store makes them.
        let mut reader = open_file(&image);
        let mut small = vec![0u8; 4096];
        reader.read_at(100 * 4096, &mut small).expect("read");
        assert_eq!(small, bytes[100 * 4096..101 * 4096]);
    }
}

#[test]
fn zero_clusters_read_as_zeros_even_over_a_backing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image_str(&base), "4M"]);
    qemu_io(&base, &["write -P 0x77 0 4M"]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        image_str(&top),
        "4M",
    ]);
    qemu_io(&top, &["write -z 1M 128k", "write -z 3M 64k"]);

    assert_reads_like_qemu(&top);
    let mut reader = open_file(&top);
    for offset in [MIB, 3 * MIB] {
        let extent = reader.extent_at(offset).expect("extent");
        assert_eq!(extent.kind, ExtentKind::Zero, "at {offset}");
        let layer = reader.layer_extent_at(offset).expect("extent");
        assert_eq!(layer.kind, ExtentKind::Zero, "at {offset}");
    }
    assert_eq!(reader.extent_at(0).expect("extent").kind, ExtentKind::Data);
}

#[test]
fn a_chain_of_two_overlays_over_a_raw_base_reads_through_relative_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    write_file(&base, &pattern(8 * MIB, 11));
    let middle = dir.path().join("middle.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        image_str(&middle),
    ]);
    qemu_io(&middle, &["write -P 0x61 1M 1M", "write -P 0x62 5M 4k"]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "middle.qcow2",
        "-F",
        "qcow2",
        image_str(&top),
        "10M",
    ]);
    qemu_io(&top, &["write -P 0x63 1536k 64k", "write -P 0x64 9M 4k"]);

    let reader = qemu2(&top);
    assert_eq!(reader.backing_file_name(), Some("middle.qcow2"));
    // The top is larger than the base: past 8 MiB, unwritten clusters read as zeros.
    let summary = assert_reads_like_qemu(&top);
    assert!(summary.zero_bytes >= MIB, "{summary:?}");
}

#[test]
fn absolute_backing_paths_are_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image_str(&base), "2M"]);
    qemu_io(&base, &["write -P 0x51 0 1M"]);
    let sub = dir.path().join("elsewhere");
    std::fs::create_dir(&sub).expect("mkdir");
    let top = sub.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        image_str(&base),
        "-F",
        "qcow2",
        image_str(&top),
    ]);
    qemu_io(&top, &["write -P 0x52 512k 4k"]);

    assert_eq!(qemu2(&top).backing_file_name(), Some(image_str(&base)));
    assert_reads_like_qemu(&top);
}

#[test]
fn the_backing_format_extension_decides_how_the_backing_file_is_read() {
    // A raw base whose first bytes look like a qcow2 header: detection would call it qcow2
    // and fail, but the overlay says it is raw.
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    let mut bytes = pattern(MIB, 5);
    bytes[..4].copy_from_slice(b"QFI\xfb");
    write_file(&base, &bytes);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.img",
        "-F",
        "raw",
        image_str(&top),
    ]);
    qemu_io(&top, &["write -P 0x99 64k 4k"]);

    assert_reads_like_qemu(&top);
}

#[test]
fn external_data_files_are_read_through_the_resolver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("meta.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", image_str(&dir.path().join("data.raw"))),
        image_str(&image),
        "4M",
    ]);
    qemu_io(&image, &["write -P 0x44 64k 128k", "write -z 1M 64k"]);

    assert_reads_like_qemu(&image);
}

#[test]
fn encrypted_images_are_refused_with_advice_to_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("secret.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=123456",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        image_str(&image),
        "1M",
    ]);

    let source = Arc::new(blockyard_formats::FileSource::open(&image).expect("source"));
    let err = qcow2::open(source, &qcow2_support::context()).expect_err("encrypted");

    let text = err.to_string();
    assert!(
        matches!(err, FormatError::Unsupported { .. }) && text.contains("LUKS"),
        "{text}"
    );
    assert!(text.contains("decrypt it with qemu-img convert"), "{text}");
}

// ---- overlays as layers -------------------------------------------------------------------

#[test]
fn layer_extents_report_backing_exactly_where_the_overlay_has_no_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    write_file(&base, &pattern(4 * MIB, 13));
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        image_str(&top),
    ]);
    qemu_io(&top, &["write -P 0x01 128k 64k", "write -P 0x02 1M 192k"]);

    let mut reader = open_file(&top);
    let mut map = Vec::new();
    let mut offset = 0;
    while offset < reader.size() {
        let extent = reader.layer_extent_at(offset).expect("extent");
        assert_eq!(extent.offset, offset);
        map.push((extent.offset, extent.length, extent.kind));
        offset = extent.end();
    }

    let k = KIB;
    assert_eq!(
        map,
        vec![
            (0, 128 * k, ExtentKind::Backing),
            (128 * k, 64 * k, ExtentKind::Data),
            (192 * k, MIB - 192 * k, ExtentKind::Backing),
            (MIB, 192 * k, ExtentKind::Data),
            (MIB + 192 * k, 3 * MIB - 192 * k, ExtentKind::Backing),
        ]
    );
    // Without the layer view, the base's data shows through.
    assert_eq!(reader.extent_at(0).expect("extent").kind, ExtentKind::Data);
}

#[test]
fn changes_of_an_overlay_are_the_blocks_it_wrote_with_the_backing_disk_filling_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    write_file(&base, &pattern(4 * MIB, 17));
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        image_str(&top),
    ]);
    // Block 1 is written in part, block 5 whole; the rest is left to the base.
    qemu_io(
        &top,
        &["write -P 0x0f 600k 64k", "write -P 0xf0 2560k 512k"],
    );
    let expected = raw_of(&top);

    let block_size = 512 * KIB;
    let blocks: Vec<(u64, Block)> = Blocks::changes(open_file(&top), block_size)
        .expect("blocks")
        .map(|block| block.expect("block"))
        .collect();

    assert_eq!(blocks.len(), 8);
    for (index, block) in blocks {
        let range = (index * block_size) as usize..((index + 1) * block_size) as usize;
        match (index, block) {
            (1 | 5, Block::Data(bytes)) => assert!(bytes == expected[range], "block {index}"),
            (1 | 5, other) => panic!("block {index} should be data, got {other:?}"),
            (_, Block::Unchanged) => {}
            (_, other) => panic!("block {index} should be unchanged, got {other:?}"),
        }
    }
}

// ---- exports ------------------------------------------------------------------------------

/// A disk with data blocks, zero blocks, a short last block, text that compresses (with
/// repeats further apart than 4 KiB) and noise that does not.
fn export_source(size: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size as usize];
    let noise = pattern(MIB, 23);
    // Noise at 1 MiB and at the very end.
    bytes[MIB as usize..2 * MIB as usize].copy_from_slice(&noise);
    let tail = size as usize - 70 * KIB as usize;
    bytes[tail..].copy_from_slice(&noise[..70 * KIB as usize]);
    // From 3 MiB for 2 MiB, random letters of a four-letter alphabet repeating every 6000
    // bytes: they compress within any window, and further with back-references of 6000
    // bytes, past the 4 KiB window of QEMU's deflate.
    let line: Vec<u8> = pattern(6000, 29)
        .iter()
        .map(|b| b"acgt"[usize::from(b & 3)])
        .collect();
    for (i, b) in bytes[3 * MIB as usize..5 * MIB as usize]
        .iter_mut()
        .enumerate()
    {
        *b = line[i % line.len()];
    }
    // A lone byte in a mostly zero region.
    bytes[7 * MIB as usize + 12345] = 0xee;
    bytes
}

fn identity() -> ImageIdentity {
    ImageIdentity {
        unique_id: [9; 16],
        created_unix: 1_700_000_000,
    }
}

#[test]
fn uncompressed_exports_stream_and_pass_qemu_check_and_compare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 9 * MIB + 1536;
    let source = export_source(size);
    let original = dir.path().join("original.raw");
    write_file(&original, &source);

    for (block_size, cluster_size) in [
        (4 * KIB, 64 * KIB),
        (512 * KIB, 64 * KIB),
        (2 * MIB, 4 * KIB),
    ] {
        let (layout, blocks) = export_layout(&source, block_size);
        let mut feed = blocks.into_iter().map(Ok);
        // A stream: the writer must not look back.
        let mut sink = StreamSink::new(Vec::new(), "stdout");
        let options = Qcow2WriteOptions {
            compress: false,
            cluster_size,
        };
        qcow2::write(&layout, &mut feed, &mut sink, &options, &identity()).expect("export");
        let out = dir
            .path()
            .join(format!("out-{block_size}-{cluster_size}.qcow2"));
        write_file(&out, &sink.into_inner());

        qcow2_support::assert_exported_image_matches(&out, &original, &source);
    }
}

#[test]
fn compressed_exports_pass_qemu_check_and_compare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 9 * MIB;
    let source = export_source(size);
    let original = dir.path().join("original.raw");
    write_file(&original, &source);

    for (block_size, cluster_size) in [
        (4 * KIB, 64 * KIB),
        (2 * MIB, 64 * KIB),
        (512 * KIB, 4 * KIB),
    ] {
        let (layout, blocks) = export_layout(&source, block_size);
        let mut feed = blocks.into_iter().map(Ok);
        let out = dir
            .path()
            .join(format!("out-{block_size}-{cluster_size}.qcow2"));
        let mut sink = FileSink::create(&out).expect("create");
        let options = Qcow2WriteOptions {
            compress: true,
            cluster_size,
        };
        qcow2::write(&layout, &mut feed, &mut sink, &options, &identity()).expect("export");

        qcow2_support::assert_exported_image_matches(&out, &original, &source);
        let written = std::fs::metadata(&out).expect("stat").len();
        assert!(
            written < 3 * MIB,
            "{written} bytes: the text did not compress"
        );
    }
}

#[test]
fn compressed_exports_to_a_stream_are_refused() {
    let source = export_source(9 * MIB);
    let (layout, blocks) = export_layout(&source, 512 * KIB);
    let mut feed = blocks.into_iter().map(Ok);
    let mut sink = StreamSink::new(Vec::new(), "stdout");
    let options = Qcow2WriteOptions {
        compress: true,
        ..Qcow2WriteOptions::default()
    };

    let err = qcow2::write(&layout, &mut feed, &mut sink, &options, &identity())
        .expect_err("a stream cannot be rewritten");

    assert!(
        err.to_string().contains("export uncompressed to stream it"),
        "{err}"
    );
}

#[test]
fn exports_of_empty_and_all_zero_disks_are_valid_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (size, compress) in [(0, false), (0, true), (5 * MIB, false), (5 * MIB, true)] {
        let layout = ExportLayout {
            size,
            block_size: 64 * KIB,
            data_blocks: Vec::new(),
        };
        let out = dir.path().join(format!("empty-{size}-{compress}.qcow2"));
        let mut sink = FileSink::create(&out).expect("create");
        let options = Qcow2WriteOptions {
            compress,
            ..Qcow2WriteOptions::default()
        };
        let mut feed = std::iter::empty();
        qcow2::write(&layout, &mut feed, &mut sink, &options, &identity()).expect("export");

        qemu_img(&["check", "-q", "-f", "qcow2", image_str(&out)]);
        let mut reader = open_file(&out);
        assert_eq!(reader.size(), size);
        if size > 0 {
            let extent = reader.extent_at(0).expect("extent");
            assert_eq!((extent.kind, extent.length), (ExtentKind::Zero, size));
        }
    }
}

#[test]
fn cluster_sizes_qemu_cannot_open_are_refused_for_export() {
    let layout = ExportLayout {
        size: MIB,
        block_size: 64 * KIB,
        data_blocks: Vec::new(),
    };
    for cluster_size in [256, 4 * MIB, 3 * 4096] {
        let mut sink = StreamSink::new(Vec::new(), "stdout");
        let options = Qcow2WriteOptions {
            compress: false,
            cluster_size,
        };
        let mut feed = std::iter::empty();
        let err = qcow2::write(&layout, &mut feed, &mut sink, &options, &identity())
            .expect_err("bad cluster size");
        assert!(matches!(err, FormatError::CannotWrite { .. }), "{err}");
    }
}

// ---- hostile images -----------------------------------------------------------------------

fn corrupt_field(bytes: Vec<u8>) -> (&'static str, u64, String) {
    match open_memory(bytes) {
        Err(FormatError::Corrupt {
            field,
            offset,
            problem,
            ..
        }) => (field, offset, problem),
        Err(other) => panic!("expected a corrupt field, got {other}"),
        Ok(_) => panic!("expected a corrupt field, the image opened"),
    }
}

/// Reads the whole disk, for corruption found only when a table entry is used.
fn read_all(bytes: Vec<u8>) -> Result<Vec<u8>, FormatError> {
    let mut reader = open_memory(bytes)?;
    let mut buf = vec![0u8; reader.size() as usize];
    reader.read_at(0, &mut buf)?;
    Ok(buf)
}

fn read_error_field(bytes: Vec<u8>) -> (&'static str, u64) {
    match read_all(bytes) {
        Err(FormatError::Corrupt { field, offset, .. }) => (field, offset),
        Err(other) => panic!("expected a corrupt field, got {other}"),
        Ok(_) => panic!("expected a corrupt field, the disk read"),
    }
}

#[test]
fn the_hand_built_fixture_reads_as_its_comments_say() {
    let bytes = read_all(Fixture::new().bytes).expect("read");
    assert_eq!(bytes.len(), 2048);
    assert!(bytes[..512].iter().all(|&b| b == 0xab));
    assert!(bytes[512..].iter().all(|&b| b == 0));
}

#[test]
fn a_wrong_magic_is_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u32(0, 0x5146_49fc);
    assert_eq!(corrupt_field(fixture.bytes).0, "magic");
}

#[test]
fn images_cut_inside_the_header_are_refused_naming_the_field() {
    let mut fixture = Fixture::new();
    fixture.bytes.truncate(30);
    assert_eq!(corrupt_field(fixture.bytes).0, "crypt_method");
}

#[test]
fn versions_other_than_2_and_3_are_unsupported() {
    let mut fixture = Fixture::new();
    fixture.put_u32(4, 4);
    let err = open_memory(fixture.bytes).expect_err("version 4");
    assert!(matches!(err, FormatError::Unsupported { .. }), "{err}");
}

#[test]
fn cluster_bits_outside_512_bytes_to_2_mib_are_refused() {
    for bits in [8, 22, 64, u32::MAX] {
        let mut fixture = Fixture::new();
        fixture.put_u32(20, bits);
        assert_eq!(corrupt_field(fixture.bytes).0, "cluster_bits", "{bits}");
    }
}

#[test]
fn disk_sizes_above_the_limit_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u64(24, qcow2::MAX_DISK_SIZE + 1);
    assert_eq!(corrupt_field(fixture.bytes).0, "size");
}

#[test]
fn l1_tables_too_small_or_too_large_are_refused() {
    let mut fixture = Fixture::new();
    // 64 KiB of disk needs two L1 entries with 512-byte clusters; the header says one.
    fixture.put_u64(24, 64 * KIB);
    assert_eq!(corrupt_field(fixture.bytes).0, "l1_size");

    let mut fixture = Fixture::new();
    fixture.put_u32(36, u32::MAX);
    let (field, _, problem) = corrupt_field(fixture.bytes);
    assert_eq!(field, "l1_size");
    assert!(problem.contains("limit"), "{problem}");
}

#[test]
fn l1_tables_past_the_end_of_the_file_or_unaligned_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u64(40, 1 << 40);
    assert_eq!(corrupt_field(fixture.bytes).0, "l1_table_offset");

    let mut fixture = Fixture::new();
    fixture.put_u64(40, 520);
    assert_eq!(corrupt_field(fixture.bytes).0, "l1_table_offset");
}

#[test]
fn header_lengths_that_are_short_unaligned_or_past_the_cluster_are_refused() {
    for length in [72, 108, 1024] {
        let mut fixture = Fixture::new();
        fixture.put_u32(100, length);
        assert_eq!(corrupt_field(fixture.bytes).0, "header_length", "{length}");
    }
}

#[test]
fn unknown_incompatible_features_are_refused_by_their_table_name() {
    let mut fixture = Fixture::new();
    fixture.put_u64(72, 1 << 9);
    // A feature name table extension naming incompatible bit 9.
    fixture.put_u32(104, 0x6803_f857);
    fixture.put_u32(108, 48);
    fixture.bytes[112] = 0;
    fixture.bytes[113] = 9;
    fixture.bytes[114..114 + 11].copy_from_slice(b"time travel");

    let err = open_memory(fixture.bytes).expect_err("unknown feature");

    let text = err.to_string();
    assert!(matches!(err, FormatError::Unsupported { .. }), "{text}");
    assert!(
        text.contains("bit 9") && text.contains("time travel"),
        "{text}"
    );
}

#[test]
fn images_marked_corrupt_are_refused_with_advice_to_repair() {
    let mut fixture = Fixture::new();
    fixture.put_u64(72, 1 << 1);
    let err = open_memory(fixture.bytes).expect_err("corrupt bit");
    assert!(err.to_string().contains("qemu-img check -r all"), "{err}");
}

#[test]
fn dirty_images_read_like_clean_ones() {
    let mut fixture = Fixture::new();
    fixture.put_u64(72, 1);
    assert!(read_all(fixture.bytes).is_ok());
}

#[test]
fn compression_types_that_contradict_the_feature_bit_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u32(100, 112);
    fixture.bytes[104] = 1;
    assert_eq!(corrupt_field(fixture.bytes).0, "compression_type");

    let mut fixture = Fixture::new();
    fixture.put_u32(100, 112);
    fixture.put_u64(72, 1 << 3);
    fixture.bytes[104] = 7;
    assert_eq!(corrupt_field(fixture.bytes).0, "compression_type");
}

#[test]
fn extended_l2_entries_with_clusters_below_16_kib_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u64(72, 1 << 4);
    assert_eq!(corrupt_field(fixture.bytes).0, "cluster_bits");
}

#[test]
fn header_extensions_running_past_the_first_cluster_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u32(104, 0x1234_5678);
    fixture.put_u32(108, 1000);
    assert_eq!(corrupt_field(fixture.bytes).0, "header extension length");
}

#[test]
fn backing_file_names_too_long_or_outside_the_first_cluster_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u64(8, 200);
    fixture.put_u32(16, 1024);
    assert_eq!(corrupt_field(fixture.bytes).0, "backing_file_size");

    let mut fixture = Fixture::new();
    fixture.put_u64(8, 500);
    fixture.put_u32(16, 100);
    assert_eq!(corrupt_field(fixture.bytes).0, "backing_file_offset");
}

#[test]
fn backing_files_that_cannot_be_opened_are_named_in_the_error() {
    let mut fixture = Fixture::new();
    fixture.put_u64(8, 200);
    fixture.put_u32(16, 8);
    fixture.bytes[200..208].copy_from_slice(b"base.raw");
    let err = open_memory(fixture.bytes).expect_err("no backing file");
    assert!(
        matches!(&err, FormatError::Reference { target, .. } if target == "base.raw"),
        "{err}"
    );
}

#[test]
fn l1_entries_pointing_outside_the_file_are_refused() {
    // Unaligned entries cannot be written with 512-byte clusters, whose offset bits start
    // at bit 9; the unit tests of the L2 module cover them with larger clusters.
    for entry in [1u64 << 40, 2048] {
        let mut fixture = Fixture::new();
        fixture.put_u64(512, entry);
        assert_eq!(read_error_field(fixture.bytes), ("L1 table entry", 512));
    }
}

#[test]
fn l2_entries_pointing_outside_the_file_are_refused() {
    for entry in [1u64 << 40, 2048] {
        let mut fixture = Fixture::new();
        fixture.put_u64(1024, entry);
        assert_eq!(read_error_field(fixture.bytes), ("L2 table entry", 1024));
    }
}

#[test]
fn zero_flags_in_version_2_images_are_refused() {
    let mut fixture = Fixture::new();
    fixture.make_version_2();
    // Entry 2 carries the zero flag, which version 2 does not have.
    assert_eq!(
        read_error_field(fixture.bytes),
        ("L2 table entry", 1024 + 16)
    );
}

#[test]
fn compressed_clusters_that_do_not_inflate_to_a_cluster_are_refused() {
    let mut fixture = Fixture::new();
    // Compressed, 512-byte clusters: offset in the low 61 bits, no extra sectors; the data
    // at 1536 is 0xab bytes, not a deflate stream that fills a cluster.
    fixture.put_u64(1024, (1 << 62) | 1536);
    assert_eq!(
        read_error_field(fixture.bytes),
        ("compressed cluster", 1536)
    );
}

#[test]
fn compressed_clusters_past_the_end_of_the_file_are_refused() {
    let mut fixture = Fixture::new();
    fixture.put_u64(1024, (1 << 62) | 4096);
    assert_eq!(read_error_field(fixture.bytes), ("L2 table entry", 1024));
}

#[test]
fn external_data_files_without_a_name_are_unsupported() {
    let mut fixture = Fixture::new();
    fixture.put_u64(72, 1 << 2);
    let err = open_memory(fixture.bytes).expect_err("no data file name");
    assert!(matches!(err, FormatError::Unsupported { .. }), "{err}");
}

#[test]
fn reads_and_extents_outside_the_disk_are_refused() {
    let mut reader = open_memory(Fixture::new().bytes).expect("open");
    assert!(reader.extent_at(2048).is_err());
    let mut buf = [0u8; 2];
    assert!(reader.read_at(2047, &mut buf).is_err());
    assert!(reader.read_at(u64::MAX, &mut buf).is_err());
}

/// Opens `path` as a [`qcow2::Qcow2Reader`], for its qcow2-only accessors.
fn qemu2(path: &Path) -> qcow2::Qcow2Reader {
    let source = Arc::new(blockyard_formats::FileSource::open(path).expect("source"));
    qcow2::Qcow2Reader::open(source, &qcow2_support::context()).expect("open")
}

fn image_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The fuzz target's seeds and every saved regression go through the target's own walk.
#[test]
fn fuzz_seeds_and_regressions_walk_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut walked = 0;
    for dir in ["seeds/qcow2", "regressions/qcow2_open"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            qcow2_support::walk(std::fs::read(&path).expect("read input"));
            walked += 1;
        }
    }
    assert!(walked >= 7, "the qcow2 seeds are missing: walked {walked}");
}

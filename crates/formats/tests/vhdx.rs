//! VHDX: images made by qemu-img read back as qemu reads them, a log left by an unclean
//! shutdown is replayed like `qemu-img check -r all` replays it, a differencing disk built
//! field by field reads through its parent, exports pass `qemu-img check` and `compare`, and
//! damaged images are refused with errors that name the field.

// Fixtures are a few MiB in memory: their offsets and lengths fit every integer type.
#![allow(clippy::cast_possible_truncation)]

mod vhdx_support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use blockyard_formats::export::{ExportLayout, ImageIdentity};
use blockyard_formats::vhdx::{self, VhdxWriteOptions};
use blockyard_formats::{
    Block, Blocks, ByteSource, DiskReader, ExtentKind, FileResolver, FileSink, FileSource, Format,
    FormatError, StreamSink, is_zero,
};
use vhdx_support::*;

// ---------------------------------------------------------------------------------------
// Images made by qemu-img

/// Writes that leave data in the first, second and third 32 MiB of a 128 MiB disk, some of
/// it at unaligned places, and the last 32 MiB untouched.
const WRITES: [&str; 5] = [
    "write -P 0x5a 1M 64k",
    "write -P 0xa5 20M 3M",
    "write -z 21M 512k",
    "write -P 0x11 63M 1M",
    "write -P 0x77 95M 4k",
];

#[test]
fn dynamic_images_read_like_qemu_reads_them_at_every_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    for block_size in ["1M", "8M", "32M"] {
        let options = format!("subformat=dynamic,block_size={block_size}");
        let name = format!("dynamic-{block_size}.vhdx");
        let image = qemu_image(dir.path(), &name, "128M", &options, &WRITES);
        let raw = qemu_raw(&image);

        let mut reader = open_path(&image).expect("open");
        assert_eq!(reader.size(), 128 * MIB);
        assert_eq!(reader.replayed_log_entries(), 0);
        let coverage = assert_reads_like_raw(&mut reader, &raw);
        // 96M..128M was never written: that is reported as zero, whatever the block size.
        assert!(coverage.zero >= 32 * MIB, "{block_size}: {coverage:?}");
        assert!(coverage.data > 0, "{block_size}: {coverage:?}");
    }
}

#[test]
fn reads_across_blocks_at_odd_offsets_return_the_disk_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = qemu_image(dir.path(), "odd.vhdx", "96M", "block_size=1M", &WRITES);
    let raw = fs::read(qemu_raw(&image)).expect("read raw");
    let mut reader = open_path(&image).expect("open");
    for chunk in [(3 << 20) + 512, 4096 * 3 + 7] {
        assert!(read_all(&mut reader, chunk) == raw, "chunk {chunk}");
    }
}

#[test]
fn fixed_images_read_like_qemu_reads_them_with_and_without_zero_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    for zero_state in ["on", "off"] {
        let options = format!("subformat=fixed,block_size=8M,block_state_zero={zero_state}");
        let name = format!("fixed-{zero_state}.vhdx");
        let image = qemu_image(dir.path(), &name, "128M", &options, &WRITES);
        let raw = qemu_raw(&image);
        let mut reader = open_path(&image).expect("open");
        let coverage = assert_reads_like_raw(&mut reader, &raw);
        if zero_state == "off" {
            // Every block of a fixed disk without ZERO states is present.
            assert_eq!(coverage.data, 128 * MIB);
        } else {
            assert!(coverage.zero >= 32 * MIB, "{coverage:?}");
        }
    }
}

#[test]
fn images_with_a_larger_log_read_like_qemu_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = qemu_image(dir.path(), "log4m.vhdx", "96M", "log_size=4M", &WRITES);
    let raw = qemu_raw(&image);
    let mut reader = open_path(&image).expect("open");
    assert_reads_like_raw(&mut reader, &raw);
}

#[test]
fn raw_images_converted_by_qemu_read_back_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("source.raw");
    let file = fs::File::create(&raw).expect("create");
    file.set_len(24 * MIB).expect("size");
    file.write_all_at(&[0xC7; 300_000], 5 * MIB + 12_345)
        .expect("write");
    file.write_all_at(&[0x3C; 4096], 24 * MIB - 4096)
        .expect("write");
    for subformat in ["dynamic", "fixed"] {
        let image = dir.path().join(format!("{subformat}.vhdx"));
        let options = format!("subformat={subformat}");
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                &options,
                path_str(&raw),
                path_str(&image),
            ],
        );
        let mut reader = open_path(&image).expect("open");
        assert_reads_like_raw(&mut reader, &raw);
    }
}

#[test]
fn four_kib_logical_sectors_read_the_same_bytes() {
    // qemu-img makes only 512-byte logical sectors and refuses to open any other. Below one
    // chunk (4 GiB at 512 bytes, 32 GiB at 4096) the sector size changes nothing else in
    // the layout, so the image patched to 4096-byte sectors holds the same disk, which qemu
    // reads from the image as made.
    let dir = tempfile::tempdir().expect("tempdir");
    let image = qemu_image(dir.path(), "4k.vhdx", "96M", "block_size=1M", &WRITES);
    let raw = qemu_raw(&image);
    let mut bytes = fs::read(&image).expect("read");
    let (_, item) = metadata_item(&bytes, LOGICAL_SECTOR_SIZE);
    assert_eq!(le_u32(&bytes, item), 512);
    put(&mut bytes, item, &4096u32.to_le_bytes());
    fs::write(&image, &bytes).expect("write");

    let mut reader = open_path(&image).expect("open");
    assert_eq!(reader.logical_sector_size(), 4096);
    assert_reads_like_raw(&mut reader, &raw);
}

#[test]
fn disks_larger_than_one_chunk_skip_the_sector_bitmap_entries() {
    // With 512-byte sectors a chunk is 4 GiB: block 4097 of 1 MiB has BAT entry 4098.
    let dir = tempfile::tempdir().expect("tempdir");
    let writes = [
        "write -P 0x42 4097M 1M",
        "write -P 0x24 5119M 64k",
        "write -P 0x99 4095M 4k",
    ];
    let image = qemu_image(dir.path(), "big.vhdx", "5G", "block_size=1M", &writes);
    let raw = qemu_raw(&image);
    let mut reader = open_path(&image).expect("open");
    let coverage = assert_reads_like_raw(&mut reader, &raw);
    assert_eq!(coverage.data, 3 * MIB);
}

#[test]
fn the_dispatcher_detects_and_opens_vhdx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = qemu_image(dir.path(), "detect.vhdx", "16M", "block_size=1M", &[]);
    let source: Arc<dyn ByteSource> = Arc::new(FileSource::open(&image).expect("open"));
    assert_eq!(
        blockyard_formats::detect(&*source).expect("detect"),
        Format::Vhdx
    );
    let mut disk = blockyard_formats::open(source, None, &FileResolver).expect("open");
    assert_eq!(disk.size(), 16 * MIB);
    let extent = disk.extent_at(0).expect("extent");
    assert_eq!(extent.kind, ExtentKind::Zero);
    assert_eq!(
        extent.length,
        16 * MIB,
        "a never written disk is one zero extent"
    );
}

// ---------------------------------------------------------------------------------------
// The log

#[test]
fn a_dirty_log_is_replayed_in_memory_like_qemu_replays_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = qemu_image(
        dir.path(),
        "clean.vhdx",
        "8M",
        "block_size=1M",
        &["write -P 0x5a 1M 1M", "write -P 0x33 3M 64k"],
    );
    let mut bytes = fs::read(&clean).expect("read");
    let file_len = bytes.len() as u64;
    let block_1 = le_u64(&bytes, bat_entry(&bytes, 1)) & !(MIB - 1);
    assert_ne!(block_1, 0, "qemu allocated block 1");
    let bat_sector = bat_entry(&bytes, 0) as u64;

    // Block 6 becomes present at the end of the file, which the log extends by 1 MiB.
    let mut new_bat = bytes[bat_sector as usize..bat_sector as usize + 4096].to_vec();
    put(&mut new_bat, 6 * 8, &(file_len | 6).to_le_bytes());
    let log_guid = guid(0x1234_5678, 0x9ABC, 0xDEF0, 0x0102_0304_0506_0708);
    // qemu extends the file to LastFileOffset only when it is not a multiple of 1 MiB (it
    // rounds up); a value past a boundary makes both replays give block 6 its megabyte.
    let last_file_offset = file_len + MIB + 4096;
    let header = |sequence| EntryHeader {
        sequence,
        tail: 0,
        log_guid,
        flushed_file_offset: file_len,
        last_file_offset,
    };
    let first = log_entry(
        &header(10),
        &[
            LogWrite::Sector {
                file_offset: block_1 + 4096,
                bytes: patterned_sector(0xC3),
            },
            LogWrite::Zeros {
                file_offset: block_1 + 8192,
                length: 8192,
            },
            LogWrite::Sector {
                file_offset: bat_sector,
                bytes: new_bat,
            },
            LogWrite::Sector {
                file_offset: file_len,
                bytes: patterned_sector(0x77),
            },
        ],
    );
    // The second entry of the sequence overwrites one sector the first wrote.
    let second = log_entry(
        &header(11),
        &[LogWrite::Sector {
            file_offset: block_1 + 4096,
            bytes: patterned_sector(0xE1),
        }],
    );
    // An older sequence further on, which must lose to the newer one.
    let stale = log_entry(
        &EntryHeader {
            tail: 512 << 10,
            ..header(3)
        },
        &[LogWrite::Sector {
            file_offset: block_1,
            bytes: patterned_sector(0x0F),
        }],
    );
    let second_at = first.len() as u64;
    with_log(
        &mut bytes,
        log_guid,
        &[(0, first), (second_at, second), (512 << 10, stale)],
    );
    let dirty = dir.path().join("dirty.vhdx");
    fs::write(&dirty, &bytes).expect("write");

    // qemu will not read the image before its log is replayed: the fixture is dirty.
    let refused = output(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            path_str(&dirty),
            "/dev/null",
        ],
    );
    assert!(!refused.status.success(), "qemu read a dirty image");

    let replayed = dir.path().join("replayed.vhdx");
    fs::copy(&dirty, &replayed).expect("copy");
    run(
        "qemu-img",
        &[
            "check",
            "-q",
            "-r",
            "all",
            "-f",
            "vhdx",
            path_str(&replayed),
        ],
    );
    let raw = qemu_raw(&replayed);

    let mut reader = open_path(&dirty).expect("open");
    assert_eq!(reader.replayed_log_entries(), 2);
    let coverage = assert_reads_like_raw(&mut reader, &raw);
    assert_eq!(coverage.data, 3 * MIB, "blocks 1, 3 and the logged block 6");
    let sector = reader.read_vec(MIB + 4096, 4096).expect("read");
    assert_eq!(sector, patterned_sector(0xE1), "the later entry wins");
    assert_eq!(
        fs::read(&dirty).expect("read"),
        bytes,
        "the image was not written"
    );
}

/// A small image made by the writer: 8 MiB, 1 MiB blocks, data in blocks 1 and 6.
fn small_image() -> Vec<u8> {
    let layout = ExportLayout {
        size: 8 * MIB,
        block_size: MIB,
        data_blocks: vec![1, 6],
    };
    let mut feed = vec![
        Ok((1, vec![0x61; MIB as usize])),
        Ok((6, vec![0x66; MIB as usize])),
    ]
    .into_iter();
    let mut sink = StreamSink::new(Vec::new(), "small.vhdx");
    vhdx::write(
        &layout,
        &mut feed,
        &mut sink,
        &VhdxWriteOptions::default(),
        &identity(),
    )
    .expect("write");
    sink.into_inner()
}

fn identity() -> ImageIdentity {
    ImageIdentity {
        unique_id: *b"blockyard-vhdx!!",
        created_unix: 1_700_000_000,
    }
}

/// Opens `bytes` and returns the field a refusal names.
fn refused_field(bytes: Vec<u8>) -> &'static str {
    match open_bytes(bytes) {
        Err(FormatError::Corrupt {
            format: "VHDX",
            field,
            ..
        }) => field,
        other => panic!("expected a corrupt VHDX, got {other:?}"),
    }
}

#[test]
fn a_log_entry_with_a_bad_checksum_is_not_replayed() {
    let mut bytes = small_image();
    let log_guid = guid(1, 2, 3, 4);
    let mut entry = log_entry(
        &EntryHeader {
            sequence: 1,
            tail: 0,
            log_guid,
            flushed_file_offset: bytes.len() as u64,
            last_file_offset: bytes.len() as u64,
        },
        &[LogWrite::Zeros {
            file_offset: 4 * MIB,
            length: MIB,
        }],
    );
    entry[100] ^= 1;
    with_log(&mut bytes, log_guid, &[(0, entry)]);
    let mut reader = open_bytes(bytes).expect("open");
    assert_eq!(reader.replayed_log_entries(), 0);
    assert_eq!(reader.read_vec(MIB, 4).expect("read"), vec![0x61; 4]);
}

#[test]
fn a_log_of_another_log_guid_is_not_replayed() {
    let mut bytes = small_image();
    let entry = log_entry(
        &EntryHeader {
            sequence: 1,
            tail: 0,
            log_guid: guid(9, 9, 9, 9),
            flushed_file_offset: bytes.len() as u64,
            last_file_offset: bytes.len() as u64,
        },
        &[LogWrite::Zeros {
            file_offset: 4 * MIB,
            length: MIB,
        }],
    );
    with_log(&mut bytes, guid(1, 2, 3, 4), &[(0, entry)]);
    let reader = open_bytes(bytes).expect("open");
    assert_eq!(reader.replayed_log_entries(), 0);
}

fn logged(flushed: u64, writes: &[LogWrite]) -> Vec<u8> {
    let mut bytes = small_image();
    let log_guid = guid(1, 2, 3, 4);
    let len = bytes.len() as u64;
    let entry = log_entry(
        &EntryHeader {
            sequence: 7,
            tail: 0,
            log_guid,
            flushed_file_offset: flushed,
            last_file_offset: len,
        },
        writes,
    );
    with_log(&mut bytes, log_guid, &[(0, entry)]);
    bytes
}

#[test]
fn a_log_written_when_the_file_was_longer_is_refused() {
    let len = small_image().len() as u64;
    let bytes = logged(len + MIB, &[]);
    assert_eq!(refused_field(bytes), "log entry FlushedFileOffset");
}

#[test]
fn a_log_that_writes_over_the_headers_is_refused() {
    let len = small_image().len() as u64;
    let bytes = logged(
        len,
        &[LogWrite::Sector {
            file_offset: 64 << 10,
            bytes: patterned_sector(1),
        }],
    );
    assert_eq!(refused_field(bytes), "log descriptor FileOffset");
}

#[test]
fn a_log_past_the_end_of_the_file_or_above_the_limit_is_refused() {
    let mut bytes = small_image();
    with_log(&mut bytes, guid(1, 2, 3, 4), &[]);
    for header in HEADER_OFFSETS {
        put(&mut bytes, header + 72, &(64 * MIB).to_le_bytes()); // LogOffset
    }
    refresh_checksums(&mut bytes);
    assert_eq!(refused_field(bytes.clone()), "header LogOffset");

    for header in HEADER_OFFSETS {
        put(&mut bytes, header + 72, &MIB.to_le_bytes()); // LogOffset
        put(&mut bytes, header + 68, &(128u32 << 20).to_le_bytes()); // LogLength
    }
    refresh_checksums(&mut bytes);
    assert_eq!(refused_field(bytes), "header LogLength");
}

#[test]
fn a_log_guid_without_a_log_is_refused() {
    let mut bytes = small_image();
    with_log(&mut bytes, guid(1, 2, 3, 4), &[]);
    for header in HEADER_OFFSETS {
        put(&mut bytes, header + 68, &0u32.to_le_bytes()); // LogLength
    }
    refresh_checksums(&mut bytes);
    assert_eq!(refused_field(bytes), "header LogGuid");
}

// ---------------------------------------------------------------------------------------
// Differencing disks

/// Builds `child.vhdx` on `base.vhdx` in `dir`: an 8 MiB disk of 1 MiB blocks whose blocks
/// are, in order, the parent's, zero, the child's (0x22), the parent's, undefined, partly
/// the child's (0x55) by its sector bitmap, and the parent's twice. Returns the sectors of
/// block 5 marked present.
fn differencing_fixture(dir: &Path) -> Vec<u64> {
    qemu_image(
        dir,
        "base.vhdx",
        "8M",
        "block_size=1M",
        &["write -P 0x11 0 8M"],
    );

    let layout = ExportLayout {
        size: 8 * MIB,
        block_size: MIB,
        data_blocks: vec![2, 5],
    };
    let mut feed = vec![
        Ok((2, vec![0x22; MIB as usize])),
        Ok((5, vec![0x55; MIB as usize])),
    ]
    .into_iter();
    let mut sink = StreamSink::new(Vec::new(), "child.vhdx");
    vhdx::write(
        &layout,
        &mut feed,
        &mut sink,
        &VhdxWriteOptions::default(),
        &identity(),
    )
    .expect("write");
    let mut bytes = sink.into_inner();

    // File Parameters: set HasParent (bit 1 of the flags after BlockSize).
    let (_, parameters) = metadata_item(&bytes, FILE_PARAMETERS);
    put(&mut bytes, parameters + 4, &2u32.to_le_bytes());

    // A parent locator item at 128 KiB into the metadata region (§2.6.2.6).
    let (_, metadata, _) = region(&bytes, METADATA_REGION);
    let table = metadata as usize;
    let count = le_u16(&bytes, table + 10);
    let entry = table + 32 + 32 * usize::from(count);
    let pairs = [
        ("parent_linkage", "{00000000-0000-0000-0000-000000000000}"),
        ("relative_path", ".\\base.vhdx"),
        ("absolute_win32_path", "C:\\nowhere\\base.vhdx"),
    ];
    let mut locator = vec![0u8; 20 + 12 * pairs.len()];
    put(&mut locator, 0, &VHDX_LOCATOR_TYPE); // LocatorType; Reserved (16..18) zero
    put(&mut locator, 18, &(pairs.len() as u16).to_le_bytes()); // KeyValueCount
    for (index, (key, value)) in pairs.iter().enumerate() {
        let mut strings = Vec::new();
        for text in [key, value] {
            let at = locator.len() + strings.len();
            let encoded: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let field = 20 + 12 * index + if *text == *key { 0 } else { 4 };
            put(&mut locator, field, &(at as u32).to_le_bytes()); // KeyOffset / ValueOffset
            let length_field = 20 + 12 * index + if *text == *key { 8 } else { 10 };
            put(
                &mut locator,
                length_field,
                &(encoded.len() as u16).to_le_bytes(),
            ); // *Length
            strings.extend(encoded);
        }
        locator.extend(strings);
    }
    let item_offset = 128u32 << 10;
    put(&mut bytes, entry, &PARENT_LOCATOR); // ItemId
    put(&mut bytes, entry + 16, &item_offset.to_le_bytes()); // Offset
    put(
        &mut bytes,
        entry + 20,
        &(locator.len() as u32).to_le_bytes(),
    ); // Length
    put(&mut bytes, entry + 24, &4u32.to_le_bytes()); // IsRequired
    put(&mut bytes, table + 10, &(count + 1).to_le_bytes()); // EntryCount
    put(&mut bytes, table + item_offset as usize, &locator);

    // The BAT: states as described; block 5 partly present with a sector bitmap block
    // appended to the file (entry 4096, after the chunk's 4096 payload entries).
    let states = [0u64, 2, 6, 0, 1, 7, 0, 0];
    for (index, state) in states.into_iter().enumerate() {
        let at = bat_entry(&bytes, index as u64);
        let offset = le_u64(&bytes, at) & !(MIB - 1);
        put(&mut bytes, at, &(offset | state).to_le_bytes());
    }
    let bitmap_at = bytes.len() as u64;
    let bitmap_entry = bat_entry(&bytes, 4096);
    put(&mut bytes, bitmap_entry, &(bitmap_at | 6).to_le_bytes());
    bytes.resize(bytes.len() + MIB as usize, 0);
    let present: Vec<u64> = (0..16).chain(1000..1008).chain([2047]).collect();
    let block_bits = bitmap_at as usize + 5 * 2048 / 8;
    for &sector in &present {
        bytes[block_bits + (sector / 8) as usize] |= 1 << (sector % 8);
    }
    fs::write(dir.join("child.vhdx"), &bytes).expect("write child");
    present
}

#[test]
fn a_differencing_disk_reads_through_its_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let present = differencing_fixture(dir.path());
    let mut expected = vec![0x11u8; 8 * MIB as usize];
    let block = |index: usize| index * MIB as usize..(index + 1) * MIB as usize;
    expected[block(1)].fill(0);
    expected[block(2)].fill(0x22);
    expected[block(4)].fill(0);
    for &sector in &present {
        let at = 5 * MIB as usize + sector as usize * 512;
        expected[at..at + 512].fill(0x55);
    }

    let mut reader = open_path(&dir.path().join("child.vhdx")).expect("open");
    assert!(reader.has_parent());
    for chunk in [MIB as usize, 3 * 4096 + 512, 777] {
        assert!(read_all(&mut reader, chunk) == expected, "chunk {chunk}");
    }

    // The layer alone: the parent's blocks and sectors are Backing.
    let layer = |reader: &mut vhdx::VhdxReader, offset| {
        let extent = reader.layer_extent_at(offset).expect("extent");
        (extent.kind, extent.length)
    };
    assert_eq!(layer(&mut reader, 0), (ExtentKind::Backing, MIB));
    assert_eq!(layer(&mut reader, MIB), (ExtentKind::Zero, MIB));
    assert_eq!(layer(&mut reader, 2 * MIB), (ExtentKind::Data, MIB));
    assert_eq!(layer(&mut reader, 5 * MIB), (ExtentKind::Data, 16 * 512));
    assert_eq!(
        layer(&mut reader, 5 * MIB + 8192),
        (ExtentKind::Backing, 984 * 512)
    );
    assert_eq!(layer(&mut reader, 6 * MIB), (ExtentKind::Backing, 2 * MIB));
    // Through the parent, its blocks are data.
    assert_eq!(reader.extent_at(0).expect("extent").kind, ExtentKind::Data);

    let mut changed = Vec::new();
    for block in Blocks::changes(reader, 512 << 10).expect("blocks") {
        let (index, block) = block.expect("block");
        if block != Block::Unchanged {
            changed.push(index);
        }
    }
    // Blocks 1 and 4 read as zeros of the child's own; 2 and 5 hold the child's data.
    assert_eq!(changed, vec![2, 3, 4, 5, 8, 9, 10, 11]);
}

#[test]
fn a_differencing_disk_without_its_parent_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    differencing_fixture(dir.path());
    fs::remove_file(dir.path().join("base.vhdx")).expect("remove");
    let err = open_path(&dir.path().join("child.vhdx")).expect_err("no parent");
    assert!(
        matches!(&err, FormatError::Reference { target, .. } if target == "base.vhdx"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Exports

/// A sparse raw disk of `size` bytes with `writes` in it.
fn raw_disk(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) {
    let file = fs::File::create(path).expect("create");
    file.set_len(size).expect("size");
    for (offset, bytes) in writes {
        file.write_all_at(bytes, *offset).expect("write");
    }
}

/// The layout and data blocks of a raw disk cut into `block_size` blocks; only blocks that
/// overlap `written` ranges are read.
fn cut(raw: &Path, block_size: u64, written: &[(u64, u64)]) -> (ExportLayout, Vec<(u64, Vec<u8>)>) {
    let file = fs::File::open(raw).expect("open");
    let size = file.metadata().expect("metadata").len();
    let mut indexes: Vec<u64> = written
        .iter()
        .flat_map(|&(start, end)| start / block_size..end.div_ceil(block_size))
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    let mut blocks = Vec::new();
    for index in indexes {
        let start = index * block_size;
        let len = (size - start).min(block_size) as usize;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, start).expect("read");
        if !is_zero(&bytes) {
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

/// Exports `blocks` of `layout` to `out` and checks the result with qemu-img.
fn export_and_check(
    layout: &ExportLayout,
    blocks: &[(u64, Vec<u8>)],
    options: &VhdxWriteOptions,
    out: &Path,
    raw: &Path,
) {
    let mut feed = blocks.iter().cloned().map(Ok);
    let mut sink = FileSink::create(out).expect("create");
    vhdx::write(layout, &mut feed, &mut sink, options, &identity()).expect("export");

    run("qemu-img", &["check", "-q", "-f", "vhdx", path_str(out)]);
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "vhdx",
            "-F",
            "raw",
            path_str(out),
            path_str(raw),
        ],
    );
    let info = run(
        "qemu-img",
        &["info", "--output=json", "-f", "vhdx", path_str(out)],
    );
    assert!(info.contains("\"format\": \"vhdx\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {},", layout.size)),
        "{info}"
    );
}

#[test]
fn exports_pass_qemu_img_check_and_compare_for_any_pair_of_block_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    let size = 40 * MIB + 3 * 512;
    let writes = vec![
        (0, vec![0x01; 4096]),
        (MIB + 100_000, vec![0x02; 100_000]),
        (9 * MIB, (0..4 * MIB).map(|i| (i % 253) as u8 | 1).collect()),
        (size - 1536, vec![0x03; 1536]),
    ];
    raw_disk(&raw, size, &writes);
    let written: Vec<(u64, u64)> = writes
        .iter()
        .map(|(offset, bytes)| (*offset, offset + bytes.len() as u64))
        .collect();

    for (store_block, vhdx_block) in [
        (4 << 10, MIB),
        (512 << 10, MIB),
        (512 << 10, 8 * MIB),
        (4 * MIB, MIB),
        (64 * MIB, 32 * MIB),
    ] {
        let (layout, blocks) = cut(&raw, store_block, &written);
        let options = VhdxWriteOptions {
            block_size: vhdx_block,
        };
        let out = dir
            .path()
            .join(format!("out-{store_block}-{vhdx_block}.vhdx"));
        export_and_check(&layout, &blocks, &options, &out, &raw);

        // Our reader agrees, and the blocks without data stayed unallocated.
        let mut reader = open_path(&out).expect("open the export");
        let coverage = assert_reads_like_raw(&mut reader, &raw);
        let allocated: u64 = (0..size.div_ceil(vhdx_block))
            .map(|index| (index * vhdx_block, ((index + 1) * vhdx_block).min(size)))
            .filter(|&(start, end)| layout.has_data_in(start, end))
            .map(|(start, end)| end - start)
            .sum();
        assert_eq!(coverage.data, allocated, "{store_block} {vhdx_block}");

        // A stream gets the same bytes as a file.
        let mut feed = blocks.iter().cloned().map(Ok);
        let mut sink = StreamSink::new(Vec::new(), "stdout");
        vhdx::write(&layout, &mut feed, &mut sink, &options, &identity()).expect("stream");
        assert!(
            sink.into_inner() == fs::read(&out).expect("read"),
            "stream differs"
        );
    }
}

#[test]
fn exports_larger_than_one_chunk_pass_qemu_img() {
    // Past 4 GiB the BAT interleaves a sector bitmap entry. `qemu-img compare` would read
    // the whole 4 GiB; qemu-io reads back the written ranges and the zeros around them.
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("big.raw");
    let size = 4 * 1024 * MIB + 8 * MIB;
    let writes = vec![
        (MIB, vec![0x0A; 4096]),
        (4 * 1024 * MIB + MIB, vec![0x0B; 2 * MIB as usize]),
        (size - 4096, vec![0x0C; 4096]),
    ];
    raw_disk(&raw, size, &writes);
    let written: Vec<(u64, u64)> = writes
        .iter()
        .map(|(offset, bytes)| (*offset, offset + bytes.len() as u64))
        .collect();
    let (layout, blocks) = cut(&raw, 512 << 10, &written);
    let out = dir.path().join("big.vhdx");
    let mut feed = blocks.iter().cloned().map(Ok);
    let mut sink = FileSink::create(&out).expect("create");
    vhdx::write(
        &layout,
        &mut feed,
        &mut sink,
        &VhdxWriteOptions::default(),
        &identity(),
    )
    .expect("export");

    run("qemu-img", &["check", "-q", "-f", "vhdx", path_str(&out)]);
    for read in [
        "read -P 0x0a 1M 4k",
        "read -P 0 0 1M",
        "read -P 0 4095M 2M",
        "read -P 0x0b 4097M 2M",
        "read -P 0 4099M 4M",
        "read -P 0x0c 4202492k 4k",
    ] {
        let done = run("qemu-io", &["-f", "vhdx", "-c", read, path_str(&out)]);
        assert!(
            !done.contains("Pattern verification failed"),
            "{read}: {done}"
        );
    }
    let mut reader = open_path(&out).expect("open the export");
    let coverage = assert_reads_like_raw(&mut reader, &raw);
    // Blocks 1, 4097, 4098 and 4103.
    assert_eq!(coverage.data, 4 * MIB);
}

#[test]
fn exports_the_format_cannot_hold_are_refused() {
    let cases = [
        (1000, MIB, "512-byte sectors"),
        (8 * MIB, 3 * MIB, "block size"),
        (8 * MIB, 512 << 10, "block size"),
        ((64 << 40) + 512, MIB, "64 TiB"),
    ];
    for (size, block_size, says) in cases {
        let layout = ExportLayout {
            size,
            block_size: 4096,
            data_blocks: Vec::new(),
        };
        let mut feed = std::iter::empty();
        let mut sink = StreamSink::new(Vec::new(), "out");
        let err = vhdx::write(
            &layout,
            &mut feed,
            &mut sink,
            &VhdxWriteOptions { block_size },
            &identity(),
        )
        .expect_err("refused");
        assert!(
            matches!(err, FormatError::CannotWrite { format: "VHDX", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(says), "{err}");
        assert!(sink.into_inner().is_empty(), "nothing was written");
    }
}

#[test]
fn an_export_whose_feed_strays_from_the_layout_fails() {
    let layout = ExportLayout {
        size: 8 * MIB,
        block_size: MIB,
        data_blocks: vec![1, 6],
    };
    let mut short = vec![Ok((1, vec![1u8; MIB as usize]))].into_iter();
    let mut sink = StreamSink::new(Vec::new(), "out");
    let err = vhdx::write(
        &layout,
        &mut short,
        &mut sink,
        &VhdxWriteOptions::default(),
        &identity(),
    )
    .expect_err("the feed ends early");
    assert!(matches!(err, FormatError::Feed { .. }), "{err}");
}

#[test]
fn an_export_reads_back_as_written() {
    let mut reader = open_bytes(small_image()).expect("open");
    assert_eq!(reader.block_size(), MIB);
    assert_eq!(reader.virtual_disk_id(), *b"blockyard-vhdx!!");
    let bytes = read_all(&mut reader, 1 << 20);
    assert!(
        bytes[MIB as usize..2 * MIB as usize]
            .iter()
            .all(|&b| b == 0x61)
    );
    assert!(
        bytes[6 * MIB as usize..7 * MIB as usize]
            .iter()
            .all(|&b| b == 0x66)
    );
    assert!(is_zero(&bytes[..MIB as usize]) && is_zero(&bytes[2 * MIB as usize..6 * MIB as usize]));
    let extent = reader.extent_at(2 * MIB).expect("extent");
    assert_eq!((extent.kind, extent.length), (ExtentKind::Zero, 4 * MIB));
}

// ---------------------------------------------------------------------------------------
// Damaged images, one per kind of damage

#[test]
fn a_file_without_the_identifier_is_refused() {
    let mut bytes = small_image();
    bytes[0] = b'X';
    assert_eq!(refused_field(bytes), "file type identifier Signature");
}

#[test]
fn a_file_cut_short_inside_the_headers_is_refused() {
    let mut bytes = small_image();
    bytes.truncate(100 << 10);
    assert_eq!(refused_field(bytes), "header");
}

#[test]
fn headers_that_fail_their_checksum_are_skipped_then_refused() {
    let mut bytes = small_image();
    // Header 2 is current (sequence 1); damage it and header 1 takes over.
    bytes[HEADER_OFFSETS[1] + 200] ^= 1;
    let reader = open_bytes(bytes.clone()).expect("header 1 is still valid");
    assert_eq!(reader.size(), 8 * MIB);
    bytes[HEADER_OFFSETS[0] + 200] ^= 1;
    assert_eq!(refused_field(bytes), "header Checksum");
}

#[test]
fn an_unknown_header_version_is_unsupported() {
    let mut bytes = small_image();
    for header in HEADER_OFFSETS {
        put(&mut bytes, header + 66, &2u16.to_le_bytes()); // Version
    }
    refresh_checksums(&mut bytes);
    let err = open_bytes(bytes).expect_err("version 2");
    assert!(
        matches!(&err, FormatError::Unsupported { feature, .. } if feature.contains("Version")),
        "{err}"
    );
}

#[test]
fn a_misaligned_log_offset_is_refused() {
    let mut bytes = small_image();
    for header in HEADER_OFFSETS {
        put(&mut bytes, header + 72, &(MIB + 4096).to_le_bytes()); // LogOffset
    }
    refresh_checksums(&mut bytes);
    assert_eq!(refused_field(bytes), "header LogOffset");
}

#[test]
fn region_tables_that_fail_their_checksum_fall_back_then_are_refused() {
    let mut bytes = small_image();
    bytes[REGION_TABLE_OFFSETS[0] + 1000] ^= 1;
    open_bytes(bytes.clone()).expect("table 2 is still valid");
    bytes[REGION_TABLE_OFFSETS[1] + 1000] ^= 1;
    assert_eq!(refused_field(bytes), "region table Checksum");
}

#[test]
fn a_region_table_with_too_many_entries_is_refused() {
    let mut bytes = small_image();
    for table in REGION_TABLE_OFFSETS {
        put(&mut bytes, table + 8, &3000u32.to_le_bytes()); // EntryCount
    }
    refresh_checksums(&mut bytes);
    assert_eq!(refused_field(bytes), "region table EntryCount");
}

#[test]
fn an_unknown_required_region_is_unsupported_by_guid() {
    let mut bytes = small_image();
    for table in REGION_TABLE_OFFSETS {
        let entry = table + 16 + 32 * 2;
        put(&mut bytes, entry, &guid(0xDEAD_BEEF, 1, 2, 3)); // Guid
        put(&mut bytes, entry + 16, &(100 * MIB).to_le_bytes()); // FileOffset
        put(&mut bytes, entry + 24, &(MIB as u32).to_le_bytes()); // Length
        put(&mut bytes, entry + 28, &1u32.to_le_bytes()); // Required
        put(&mut bytes, table + 8, &3u32.to_le_bytes()); // EntryCount
    }
    refresh_checksums(&mut bytes);
    let err = open_bytes(bytes).expect_err("unknown region");
    assert!(
        matches!(&err, FormatError::Unsupported { feature, .. } if feature.contains("DEADBEEF-0001-0002")),
        "{err}"
    );
}

#[test]
fn overlapping_regions_and_regions_past_the_end_are_refused() {
    let bytes = small_image();
    let (bat_entry_at, bat, _) = region(&bytes, BAT_REGION);
    let (metadata_entry_at, _, _) = region(&bytes, METADATA_REGION);

    let mut overlapping = bytes.clone();
    for table in REGION_TABLE_OFFSETS {
        let entry = table + (metadata_entry_at - REGION_TABLE_OFFSETS[0]);
        put(&mut overlapping, entry + 16, &bat.to_le_bytes()); // FileOffset
    }
    refresh_checksums(&mut overlapping);
    assert_eq!(refused_field(overlapping), "region table entry FileOffset");

    let mut past_the_end = bytes;
    for table in REGION_TABLE_OFFSETS {
        let entry = table + (bat_entry_at - REGION_TABLE_OFFSETS[0]);
        put(&mut past_the_end, entry + 16, &(1024 * MIB).to_le_bytes()); // FileOffset
    }
    refresh_checksums(&mut past_the_end);
    assert_eq!(refused_field(past_the_end), "region table entry FileOffset");
}

/// The small image with the metadata table patched by `patch(bytes, table offset)`.
fn with_metadata(patch: impl FnOnce(&mut Vec<u8>, usize)) -> Vec<u8> {
    let mut bytes = small_image();
    let (_, metadata, _) = region(&bytes, METADATA_REGION);
    patch(&mut bytes, metadata as usize);
    bytes
}

#[test]
fn damaged_metadata_tables_are_refused() {
    let bad_signature = with_metadata(|bytes, table| bytes[table] = b'M');
    assert_eq!(refused_field(bad_signature), "metadata table Signature");

    let too_many = with_metadata(|bytes, table| put(bytes, table + 10, &4000u16.to_le_bytes()));
    assert_eq!(refused_field(too_many), "metadata table EntryCount");

    let outside = with_metadata(|bytes, table| {
        put(bytes, table + 32 + 16, &(MIB as u32 - 4).to_le_bytes()); // Offset
    });
    assert_eq!(refused_field(outside), "metadata table entry Offset");

    let twice = with_metadata(|bytes, table| {
        let second = bytes[table + 64..table + 80].to_vec();
        put(bytes, table + 32, &second); // ItemId of entry 0 = ItemId of entry 1
    });
    assert_eq!(refused_field(twice), "metadata table entry ItemId");

    let missing = with_metadata(|bytes, table| {
        put(bytes, table + 64, &guid(1, 1, 1, 1)); // Virtual Disk Size becomes unknown
        put(bytes, table + 64 + 24, &0u32.to_le_bytes()); // and optional
    });
    assert_eq!(refused_field(missing), "metadata table");
}

#[test]
fn an_unknown_required_metadata_item_is_unsupported_by_guid() {
    let bytes = with_metadata(|bytes, table| {
        put(bytes, table + 32, &guid(0x0BAD_F00D, 7, 7, 7)); // ItemId, IsRequired kept
    });
    let err = open_bytes(bytes).expect_err("unknown item");
    assert!(
        matches!(&err, FormatError::Unsupported { feature, .. } if feature.contains("0BADF00D")),
        "{err}"
    );
}

#[test]
fn impossible_disk_parameters_are_refused() {
    let set = |guid: [u8; 16], value: &[u8]| {
        let mut bytes = small_image();
        let (_, item) = metadata_item(&bytes, guid);
        put(&mut bytes, item, value);
        bytes
    };
    let block = set(FILE_PARAMETERS, &(3u32 << 20).to_le_bytes());
    assert_eq!(refused_field(block), "File Parameters BlockSize");
    let huge = set(VIRTUAL_DISK_SIZE, &((64u64 << 40) + 512).to_le_bytes());
    assert_eq!(refused_field(huge), "VirtualDiskSize");
    let ragged = set(VIRTUAL_DISK_SIZE, &(8 * MIB + 100).to_le_bytes());
    assert_eq!(refused_field(ragged), "VirtualDiskSize");
    let sector = set(LOGICAL_SECTOR_SIZE, &1024u32.to_le_bytes());
    assert_eq!(refused_field(sector), "LogicalSectorSize");
    // 64 TiB of 1 MiB blocks needs a 512 MiB table; the region holds 1 MiB.
    let too_small = set(VIRTUAL_DISK_SIZE, &(64u64 << 40).to_le_bytes());
    assert_eq!(refused_field(too_small), "region table entry Length");
}

/// The small image with BAT entry `index` set to `raw`; the error reading the block.
fn bat_refusal(index: u64, raw: u64) -> &'static str {
    let mut bytes = small_image();
    let at = bat_entry(&bytes, index);
    put(&mut bytes, at, &raw.to_le_bytes());
    let mut reader = open_bytes(bytes).expect("the BAT is read lazily");
    let offset = index * MIB;
    assert!(
        reader.read_vec(offset, 4096).is_err(),
        "reading the block fails too"
    );
    match reader.extent_at(offset) {
        Err(FormatError::Corrupt { field, .. }) => field,
        other => panic!("expected a corrupt BAT entry, got {other:?}"),
    }
}

#[test]
fn bat_entries_that_point_outside_the_payload_are_refused() {
    assert_eq!(
        bat_refusal(3, (1024 * MIB) | 6),
        "BAT entry",
        "past the end"
    );
    assert_eq!(
        bat_refusal(3, (2 * MIB) | 6),
        "BAT entry",
        "over the metadata"
    );
    assert_eq!(bat_refusal(3, 6), "BAT entry", "over the headers");
}

#[test]
fn bat_states_a_dynamic_disk_cannot_have_are_refused() {
    assert_eq!(
        bat_refusal(1, (4 * MIB) | 4),
        "BAT entry",
        "reserved state 4"
    );
    assert_eq!(
        bat_refusal(1, (4 * MIB) | 7),
        "BAT entry",
        "partially present"
    );
}

#[test]
fn a_parent_locator_with_a_string_outside_the_item_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    differencing_fixture(dir.path());
    let child = dir.path().join("child.vhdx");
    let mut bytes = fs::read(&child).expect("read");
    let (_, locator) = metadata_item(&bytes, PARENT_LOCATOR);
    put(&mut bytes, locator + 20 + 4, &60_000u32.to_le_bytes()); // ValueOffset of pair 0
    assert_eq!(refused_field(bytes), "parent locator entry ValueOffset");
}

// ---------------------------------------------------------------------------------------
// Fuzzing

#[test]
fn the_fuzz_seeds_are_images_that_open_and_read() {
    let seeds = fuzz_files("seeds/vhdx");
    let names: Vec<&str> = seeds.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "differencing",
            "dirty-log",
            "dynamic-1m",
            "fixed-no-zero-state",
            "past-one-chunk"
        ]
    );
    for (name, data) in &seeds {
        let mut reader = open_fuzz_input(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        let size = reader.size();
        let mut offset = 0;
        let mut data_extents = 0;
        while offset < size {
            let extent = reader.extent_at(offset).expect("extent");
            if extent.kind == ExtentKind::Data {
                data_extents += 1;
                reader.read_vec(offset, 512).expect("read");
            }
            offset = extent.end();
        }
        assert!(data_extents > 0, "{name} has data");
        assert_eq!(
            reader.replayed_log_entries(),
            usize::from(name == "dirty-log"),
            "{name}"
        );
        assert_eq!(reader.has_parent(), name == "differencing", "{name}");
    }
}

//! The bridges between stores and image formats: a snapshot read as a disk, images read
//! from objects with ranged reads, exports fed from a snapshot, and snapshots of an
//! overlay's changes.

use std::sync::{Arc, Mutex};

use blockyard_formats::export::{BlockFeed, ExportLayout};
use blockyard_formats::{
    Block, Blocks, ByteSource, DiskReader, Extent, ExtentKind, FormatError, Resolver,
};
use blockyard_store::{
    CreateOptions, ObjectUpload, SnapshotDisk, SnapshotReader, create_snapshot, export, open_object,
};
use object_store::path::Path;

use crate::Backend;
use crate::support::{
    BLOCK, BLOCK_SIZE, noise, out_of_order_disk, progress, write_snapshot, zero_fill,
};

pub(crate) async fn a_snapshot_read_as_a_disk_gives_its_blocks_and_zero_extents(backend: &Backend) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;
    let reader = Arc::new(
        SnapshotReader::open(&store, &record.id)
            .await
            .expect("open"),
    );
    let expected = crate::restore::disk_bytes(size, &blocks);

    let handle = tokio::runtime::Handle::current();
    let (bytes, kinds) = tokio::task::spawn_blocking(move || {
        let mut disk = SnapshotDisk::new(reader, handle);
        // Reads that straddle blocks and start mid-block.
        let mut bytes = vec![0u8; usize::try_from(size).expect("size")];
        for chunk_start in (0..bytes.len()).step_by(BLOCK / 3 + 1) {
            let end = (chunk_start + BLOCK / 3 + 1).min(bytes.len());
            disk.read_at(chunk_start as u64, &mut bytes[chunk_start..end])
                .expect("read");
        }
        let kinds: Vec<ExtentKind> = (0..size / BLOCK_SIZE)
            .map(|i| disk.extent_at(i * BLOCK_SIZE).expect("extent").kind)
            .collect();
        assert!(
            disk.read_at(size - 1, &mut [0u8; 2]).is_err(),
            "a read past the end"
        );
        (bytes, kinds)
    })
    .await
    .expect("blocking task");

    assert!(
        bytes == expected,
        "the disk's bytes differ from the snapshot's"
    );
    for (index, kind) in kinds.iter().enumerate() {
        let has_data = blocks
            .iter()
            .any(|(i, d)| *i == index as u64 && d.iter().any(|&b| b != 0));
        let want = if has_data {
            ExtentKind::Data
        } else {
            ExtentKind::Zero
        };
        assert_eq!(*kind, want, "block {index}");
    }
}

pub(crate) async fn an_image_in_an_object_is_read_with_ranged_reads_and_its_names_resolve(
    backend: &Backend,
) {
    let image = noise(11, 3 << 20);
    let base = noise(12, 4096);
    backend
        .write_object("images/nightly/disk.raw", image.clone())
        .await;
    backend.write_object("images/base.raw", base.clone()).await;
    let objects = Arc::clone(&backend.objects);

    let (source, resolver) = open_object(objects, "images/nightly/disk.raw", "s3://bucket")
        .await
        .expect("open");
    assert_eq!(source.name(), "s3://bucket/images/nightly/disk.raw");
    let (small, large, past_end, sibling, escape, missing) =
        tokio::task::spawn_blocking(move || {
            let mut small = [0u8; 16];
            source.read_exact_at(1000, &mut small).expect("small read");
            let large = source.read_vec((1 << 20) - 7, 1 << 20).expect("large read");
            let past_end = source
                .read_vec(source.len() - 4, 8)
                .expect_err("past the end");
            let sibling = resolver
                .open_file(source.name(), "../base.raw")
                .expect("sibling");
            let sibling = sibling.read_vec(0, 4096).expect("sibling bytes");
            let escape = resolver.open_file(source.name(), "/etc/passwd").err();
            let missing = resolver.open_file(source.name(), "nothing.raw").err();
            (small, large, past_end, sibling, escape, missing)
        })
        .await
        .expect("blocking task");

    assert_eq!(&small[..], &image[1000..1016]);
    assert!(large == image[(1 << 20) - 7..(2 << 20) - 7]);
    assert!(
        matches!(past_end, FormatError::Truncated { .. }),
        "{past_end}"
    );
    assert_eq!(sibling, base);
    assert!(escape.is_some(), "an absolute name must not resolve");
    match missing {
        Some(FormatError::Open { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("a missing sibling should read as not found: {other:?}"),
    }
}

pub(crate) async fn an_upload_becomes_visible_only_when_completed(backend: &Backend) {
    let objects = Arc::clone(&backend.objects);
    let bytes = noise(3, (20 << 20) + 123);
    let mut upload = ObjectUpload::start(
        objects,
        Path::from("exports/disk.vmdk"),
        "s3://bucket/exports/disk.vmdk".into(),
        bytes.len() as u64,
    )
    .await
    .expect("start");
    let payload = bytes.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        for chunk in payload.chunks(1 << 20) {
            upload.write_all(chunk).expect("write");
        }
        upload.complete().expect("complete");
    })
    .await
    .expect("blocking task");

    assert!(backend.read_object("exports/disk.vmdk").await == bytes);
}

/// A writer that records what an export hands it.
type Seen = Arc<Mutex<(Option<ExportLayout>, Vec<(u64, Vec<u8>)>)>>;

pub(crate) async fn export_hands_the_writer_the_layout_then_every_data_block_in_order(
    backend: &Backend,
) {
    let store = backend.encrypted_store().await;
    let (size, blocks) = out_of_order_disk();
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);

    let summary = export(
        &store,
        &record.id,
        move |layout: &ExportLayout, feed: &mut dyn BlockFeed| {
            let mut seen = sink.lock().expect("lock");
            seen.0 = Some(layout.clone());
            while let Some(block) = feed.next_block()? {
                seen.1.push(block);
            }
            Ok(())
        },
        progress(),
    )
    .await
    .expect("export");

    let mut expected: Vec<(u64, Vec<u8>)> = blocks
        .into_iter()
        .filter(|(_, d)| d.iter().any(|&b| b != 0))
        .collect();
    expected.sort_by_key(|(index, _)| *index);
    let seen = seen.lock().expect("lock");
    let layout = seen.0.clone().expect("a layout");
    assert_eq!(layout.size, size);
    assert_eq!(layout.block_size, BLOCK_SIZE);
    let indexes: Vec<u64> = expected.iter().map(|(i, _)| *i).collect();
    assert_eq!(layout.data_blocks, indexes);
    assert!(seen.1 == expected, "the blocks handed over differ");
    assert_eq!(summary.blocks_data, expected.len() as u64);
}

pub(crate) async fn an_export_whose_writer_fails_reports_the_writers_error(backend: &Backend) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;

    let result = export(
        &store,
        &record.id,
        |_: &ExportLayout, feed: &mut dyn BlockFeed| {
            feed.next_block()?;
            Err(FormatError::CannotWrite {
                format: "test",
                problem: "the output is full".into(),
            })
        },
        progress(),
    )
    .await;

    let error = result.expect_err("the writer failed");
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.starts_with("cannot write the image"), "{chain}");
    assert!(chain.contains("the output is full"), "{chain}");
}

/// A two-layer disk: the parent snapshot below, and a top layer that stores `top` blocks
/// (data, or zero) and leaves the rest to the parent.
struct Overlay {
    parent: SnapshotDisk,
    size: u64,
    top: Vec<(u64, Option<Vec<u8>>)>,
}

impl Overlay {
    fn top_block(&self, index: u64) -> Option<&Option<Vec<u8>>> {
        self.top.iter().find(|(i, _)| *i == index).map(|(_, b)| b)
    }
}

impl DiskReader for Overlay {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        let mut extent = self.layer_extent_at(offset)?;
        if extent.kind == ExtentKind::Backing {
            extent.kind = self.parent.extent_at(offset)?.kind;
        }
        Ok(extent)
    }

    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        let index = offset / BLOCK_SIZE;
        let kind = match self.top_block(index) {
            Some(Some(_)) => ExtentKind::Data,
            Some(None) => ExtentKind::Zero,
            None => ExtentKind::Backing,
        };
        Ok(Extent {
            offset,
            length: (index + 1) * BLOCK_SIZE - offset,
            kind,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let index = offset / BLOCK_SIZE;
        match self.top_block(index).cloned() {
            Some(Some(data)) => {
                let at = usize::try_from(offset % BLOCK_SIZE).expect("offset");
                buf.copy_from_slice(&data[at..at + buf.len()]);
                Ok(())
            }
            Some(None) => {
                buf.fill(0);
                Ok(())
            }
            None => self.parent.read_at(offset, buf),
        }
    }
}

pub(crate) async fn a_snapshot_of_an_overlays_changes_reads_only_the_changed_blocks(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let parent = write_snapshot(&store, zero_fill(size), &blocks).await;
    let reader = Arc::new(
        SnapshotReader::open(&store, &parent.id)
            .await
            .expect("open"),
    );
    // Block 1 (zero in the parent) and block 0 rewritten, block 2 (data) zeroed.
    let top = vec![
        (1u64, Some(noise(41, BLOCK))),
        (2, None),
        (0, Some(noise(42, BLOCK))),
    ];
    let overlay = Overlay {
        parent: SnapshotDisk::new(Arc::clone(&reader), tokio::runtime::Handle::current()),
        size,
        top: top.clone(),
    };
    let options = CreateOptions {
        parent: Some(parent.id),
        changes_only: true,
        ..CreateOptions::default()
    };

    let child = create_snapshot(&store, overlay, options, progress())
        .await
        .expect("snapshot");

    assert_eq!(
        child.stats.bytes_read,
        2 * BLOCK_SIZE,
        "only the two written blocks are read"
    );
    let child_reader = SnapshotReader::open(&store, &child.id).await.expect("open");
    for index in 0..child.block_count() {
        let want = match top.iter().find(|(i, _)| *i == index) {
            Some((_, data)) => data.clone(),
            None => reader.read_block(index).await.expect("parent block"),
        };
        let got = child_reader.read_block(index).await.expect("child block");
        assert!(got == want, "block {index}");
    }
}

pub(crate) async fn changes_cutting_of_a_disk_without_backing_reads_every_data_block(
    backend: &Backend,
) {
    // A raw reader has no backing layer: changes mode must read as the whole mode does.
    let store = backend.plain_store().await;
    let (size, blocks) = out_of_order_disk();
    let record = write_snapshot(&store, zero_fill(size), &blocks).await;
    let reader = Arc::new(
        SnapshotReader::open(&store, &record.id)
            .await
            .expect("open"),
    );
    let handle = tokio::runtime::Handle::current();
    let cut = tokio::task::spawn_blocking(move || {
        let disk = SnapshotDisk::new(reader, handle);
        Blocks::changes(disk, BLOCK_SIZE)
            .expect("blocks")
            .map(|b| b.expect("block"))
            .map(|(i, b)| (i, matches!(b, Block::Data(_))))
            .collect::<Vec<_>>()
    })
    .await
    .expect("blocking task");
    let data: Vec<u64> = cut.iter().filter(|(_, d)| *d).map(|(i, _)| *i).collect();
    let mut expected: Vec<u64> = blocks
        .iter()
        .filter(|(_, d)| d.iter().any(|&b| b != 0))
        .map(|(i, _)| *i)
        .collect();
    expected.sort_unstable();
    assert_eq!(data, expected);
}

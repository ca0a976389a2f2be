//! Writing a disk as a monolithic sparse or a stream-optimized VMDK, front to back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::export::{BlockFeed, ExportLayout, FeedCursor, ImageIdentity};
use crate::vmdk::descriptor::DescriptorText;
use crate::vmdk::header::{
    COMPRESS_DEFLATE, COMPRESS_NONE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
    FLAG_REDUNDANT_TABLES, FORMAT, GD_AT_END, GRAIN_MARKER_LEN, MARKER_EOS, MARKER_FOOTER,
    MARKER_GD, MARKER_GT, MAX_DISK_SIZE, SECTOR, SECTOR_LEN, SparseHeader, encode_marker, small,
};
use crate::vmdk::sparse::MAX_GD_ENTRIES;
use crate::{FormatError, ImageSink, is_zero};

/// Which kind of VMDK to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmdkSubformat {
    /// Compressed grains with their tables after them, as OVF packages carry disks: the
    /// smallest output, read-only for VMware until imported.
    #[default]
    StreamOptimized,
    /// Uncompressed grains behind tables for the whole disk, as VMware Workstation makes
    /// them: a disk VMware and qemu can run and write in place.
    MonolithicSparse,
}

/// How to write a VMDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmdkWriteOptions {
    /// The kind of VMDK.
    pub subformat: VmdkSubformat,
}

/// Sectors per grain written: 64 KiB, what VMware and qemu use.
const GRAIN_SECTORS: u64 = 128;
/// Bytes per grain written.
const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Entries per grain table written: the only value VMware uses.
const TABLE_ENTRIES: u32 = 512;
/// `TABLE_ENTRIES` for arithmetic on grain indexes.
const GTES_PER_GT: u64 = TABLE_ENTRIES as u64;
/// Sectors of one grain table.
const TABLE_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// Sectors reserved for a monolithic sparse extent's descriptor, qemu's and VMware's
/// 10 KiB, so that tools may edit it in place.
const SPARSE_DESCRIPTOR_SECTORS: u64 = 20;

/// zlib level for compressed grains. On a 4 GiB ext4 image holding 870 MiB of binaries
/// and text, level 1 on two threads wrote 417 MB in a third of the time `qemu-img convert`
/// took for its 360 MB at zlib's level 6 on one; level 3 matched qemu's size and time, and
/// level 6 of the pure-Rust deflate built in here took twice qemu's time.
const COMPRESSION_LEVEL: u32 = 1;
/// Grains handed to a compression thread at once: 1 MiB of input.
const BATCH_GRAINS: usize = 16;
/// Batches compressed ahead of the output per thread, bounding memory to a few MiB.
const BATCHES_IN_FLIGHT_PER_THREAD: u64 = 2;
/// Most compression threads. Compression is the whole cost of a stream export; more
/// threads than cores only wait.
const MAX_COMPRESSION_THREADS: usize = 8;

/// Bytes gathered before a write to the sink.
const OUT_BUFFER_LEN: usize = 4 << 20;
/// Shortest run of zeros left as a hole instead of written; shorter runs (a grain table
/// with no entries) are cheaper written than seeked over.
const MIN_HOLE: u64 = 64 << 10;

/// Writes `layout` as a VMDK of the kind `options` asks for, strictly front to back: the
/// output may be a pipe or an upload.
///
/// A monolithic sparse VMDK holds the grain directory and every grain table (twice, as
/// VMware keeps a redundant copy) before the grains, computed from the layout; a
/// stream-optimized one writes each grain compressed and its table after it, the
/// directory last, then the footer that says where the directory is. Grains (64 KiB)
/// that overlap no data block are not stored; in a stream, neither are grains of zeros.
/// The disk's size is rounded up to whole sectors.
pub fn write(
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
    options: &VmdkWriteOptions,
    identity: &ImageIdentity,
) -> Result<(), FormatError> {
    layout.validate()?;
    let capacity = layout.size.div_ceil(SECTOR);
    let directory_entries = capacity.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
    if layout.size > MAX_DISK_SIZE || directory_entries > MAX_GD_ENTRIES {
        return Err(FormatError::CannotWrite {
            format: FORMAT,
            problem: format!(
                "a disk of {} bytes is larger than the {} bytes a VMDK written here may hold",
                layout.size,
                MAX_GD_ENTRIES * GTES_PER_GT * GRAIN_BYTES
            ),
        });
    }
    let file_name = extent_file_name(sink.name());
    let mut cid = u32::from_le_bytes([
        identity.unique_id[0],
        identity.unique_id[1],
        identity.unique_id[2],
        identity.unique_id[3],
    ]);
    // ffffffff means "no parent" where a content id is named.
    if cid == u32::MAX {
        cid -= 1;
    }
    let mut descriptor = DescriptorText {
        create_type: "",
        cid,
        sectors: capacity,
        file_name: &file_name,
        uuid: identity.unique_id,
    };
    let geometry = Geometry {
        capacity,
        directory_entries,
    };
    let mut grains = Grains::new(layout, feed);
    let mut out = Out::new(sink);
    match options.subformat {
        VmdkSubformat::MonolithicSparse => {
            descriptor.create_type = "monolithicSparse";
            write_monolithic(
                &geometry,
                &descriptor.render(),
                layout,
                &mut grains,
                &mut out,
            )?;
        }
        VmdkSubformat::StreamOptimized => {
            descriptor.create_type = "streamOptimized";
            write_stream(&geometry, &descriptor.render(), &mut grains, &mut out)?;
        }
    }
    grains.finish()?;
    out.finish()
}

/// The disk's size in the units the tables need.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Sectors of disk.
    capacity: u64,
    /// Grain directory entries: one per grain table.
    directory_entries: u64,
}

impl Geometry {
    fn directory_sectors(&self) -> u64 {
        (self.directory_entries * 4).div_ceil(SECTOR)
    }

    fn header(&self) -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NEWLINE_TEST,
            capacity: self.capacity,
            grain_sectors: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_sectors: 0,
            gtes_per_gt: TABLE_ENTRIES,
            rgd_offset: 0,
            gd_offset: 0,
            overhead: 0,
            compress_algorithm: COMPRESS_NONE,
        }
    }
}

/// The name the descriptor's extent line gives the image itself: the output's file name,
/// or a stand-in when that cannot be written into a descriptor.
fn extent_file_name(sink_name: &str) -> String {
    /// Longest file name written into the descriptor, in bytes: most file systems' limit.
    const MAX_FILE_NAME: usize = 255;
    let name = Path::new(sink_name)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let writable = !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && !name.chars().any(|c| c == '"' || c.is_control());
    if writable {
        name.to_owned()
    } else {
        "disk.vmdk".to_owned()
    }
}

/// A monolithic sparse extent: header, descriptor, redundant directory and tables,
/// directory and tables, then the grains in disk order.
///
/// ```text
/// sector 0    header
/// 1..21       descriptor
/// 21          redundant grain directory, then every redundant grain table
/// ...         grain directory, then every grain table
/// overHead    grains (64 KiB each) of every grain overlapping a data block, in order
/// ```
fn write_monolithic<F: BlockFeed + ?Sized>(
    geometry: &Geometry,
    descriptor: &str,
    layout: &ExportLayout,
    grains: &mut Grains<'_, F>,
    out: &mut Out<'_>,
) -> Result<(), FormatError> {
    let directory_sectors = geometry.directory_sectors();
    let tables_sectors = geometry.directory_entries * TABLE_SECTORS;
    let rgd_offset = 1 + SPARSE_DESCRIPTOR_SECTORS;
    let redundant_tables = rgd_offset + directory_sectors;
    let gd_offset = redundant_tables + tables_sectors;
    let tables = gd_offset + directory_sectors;
    let overhead = (tables + tables_sectors).next_multiple_of(GRAIN_SECTORS);

    // Grain table entries are 32-bit sectors: the file ends within 2 TiB.
    let stored = AllocatedGrains::new(layout).count() as u64;
    let end = overhead + stored * GRAIN_SECTORS;
    if end > u64::from(u32::MAX) {
        return Err(FormatError::CannotWrite {
            format: FORMAT,
            problem: format!(
                "{stored} grains of data need a monolithic sparse file past the 2 TiB its \
                 32-bit tables can address; write streamOptimized instead"
            ),
        });
    }

    let header = SparseHeader {
        flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_TABLES,
        descriptor_sectors: SPARSE_DESCRIPTOR_SECTORS,
        rgd_offset,
        gd_offset,
        overhead,
        ..geometry.header()
    };
    out.write(&header.encode())?;
    write_padded(out, descriptor.as_bytes(), SPARSE_DESCRIPTOR_SECTORS)?;
    for table_start in [redundant_tables, tables] {
        let directory = (0..geometry.directory_entries)
            .map(|i| table_start + i * TABLE_SECTORS)
            .collect::<Vec<_>>();
        write_entries(out, &directory)?;
        write_tables(out, layout, geometry.directory_entries, overhead)?;
    }
    out.zeros(overhead * SECTOR - out.position())?;

    while let Some((_, grain)) = grains.next_grain()? {
        out.write(&grain)?;
    }
    Ok(())
}

/// Writes every grain table of a monolithic sparse extent whose grains start at sector
/// `first_grain`, in disk order.
fn write_tables(
    out: &mut Out<'_>,
    layout: &ExportLayout,
    tables: u64,
    first_grain: u64,
) -> Result<(), FormatError> {
    let mut allocated = AllocatedGrains::new(layout).peekable();
    let mut next_sector = first_grain;
    let mut table = vec![0u64; small(GTES_PER_GT)];
    for index in 0..tables {
        let end = (index + 1) * GTES_PER_GT;
        let mut used = false;
        table.fill(0);
        while let Some(grain) = allocated.next_if(|&grain| grain < end) {
            table[small(grain % GTES_PER_GT)] = next_sector;
            next_sector += GRAIN_SECTORS;
            used = true;
        }
        if used {
            write_entries(out, &table)?;
        } else {
            out.zeros(TABLE_SECTORS * SECTOR)?;
        }
    }
    Ok(())
}

/// Writes 32-bit little-endian entries (sectors checked to fit by the caller), padded to
/// a whole sector.
fn write_entries(out: &mut Out<'_>, entries: &[u64]) -> Result<(), FormatError> {
    let mut bytes = Vec::with_capacity(entries.len() * 4 + SECTOR_LEN);
    for &entry in entries {
        let entry = u32::try_from(entry).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&entry.to_le_bytes());
    }
    bytes.resize(bytes.len().next_multiple_of(SECTOR_LEN), 0);
    out.write(&bytes)
}

/// Writes `bytes` padded with zeros to `sectors` sectors (at least as many as it needs).
fn write_padded(out: &mut Out<'_>, bytes: &[u8], sectors: u64) -> Result<(), FormatError> {
    out.write(bytes)?;
    out.zeros((sectors * SECTOR).saturating_sub(bytes.len() as u64))
}

/// A stream-optimized extent.
///
/// ```text
/// sector 0    header, gdOffset = GD_AT_END
/// 1..         descriptor
///             grain marker (lba, size) + zlib stream, padded to a sector, per grain
///             GT marker + grain table, after the grains of each table that has any
///             ...
///             GD marker + grain directory
///             footer marker + header with the real gdOffset
///             end-of-stream marker
/// ```
fn write_stream<F: BlockFeed + ?Sized>(
    geometry: &Geometry,
    descriptor: &str,
    grains: &mut Grains<'_, F>,
    out: &mut Out<'_>,
) -> Result<(), FormatError> {
    let descriptor_sectors = (descriptor.len() as u64).div_ceil(SECTOR);
    let mut header = SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        descriptor_sectors,
        gd_offset: GD_AT_END,
        overhead: 1 + descriptor_sectors,
        compress_algorithm: COMPRESS_DEFLATE,
        ..geometry.header()
    };
    out.write(&header.encode())?;
    write_padded(out, descriptor.as_bytes(), descriptor_sectors)?;

    let mut tables = StreamTables {
        directory: vec![0; usize::try_from(geometry.directory_entries).unwrap_or(0)],
        table: vec![0; small(GTES_PER_GT)],
        table_index: 0,
        used: false,
    };
    compress_in_order(grains, |grain, record| {
        tables.place(out, grain, record.as_deref())
    })?;
    tables.flush(out)?;

    let directory_sectors = geometry.directory_sectors();
    out.write(&encode_marker(directory_sectors, MARKER_GD))?;
    header.gd_offset = out.position() / SECTOR;
    write_entries(out, &tables.directory)?;
    out.write(&encode_marker(1, MARKER_FOOTER))?;
    out.write(&header.encode())?;
    out.write(&encode_marker(0, MARKER_EOS))
}

/// The grain directory of a stream being written, and the grain table being filled.
#[derive(Debug)]
struct StreamTables {
    directory: Vec<u64>,
    table: Vec<u64>,
    table_index: u64,
    used: bool,
}

impl StreamTables {
    /// Writes grain `grain`'s compressed record, if it has one (a grain of zeros has
    /// none), after the table of the grains before it once they are all written.
    fn place(
        &mut self,
        out: &mut Out<'_>,
        grain: u64,
        record: Option<&[u8]>,
    ) -> Result<(), FormatError> {
        let Some(record) = record else {
            return Ok(());
        };
        let table_index = grain / GTES_PER_GT;
        if table_index != self.table_index {
            self.flush(out)?;
            self.table_index = table_index;
        }
        let sector = out.position() / SECTOR;
        if sector > u64::from(u32::MAX) {
            return Err(FormatError::CannotWrite {
                format: FORMAT,
                problem: "the compressed disk passes the 2 TiB a VMDK's 32-bit grain tables \
                          can address"
                    .into(),
            });
        }
        self.table[small(grain % GTES_PER_GT)] = sector;
        self.used = true;
        out.write(record)
    }

    /// Writes the current grain table, if any grain of it was stored, and records it in
    /// the directory.
    fn flush(&mut self, out: &mut Out<'_>) -> Result<(), FormatError> {
        if !self.used {
            return Ok(());
        }
        out.write(&encode_marker(TABLE_SECTORS, MARKER_GT))?;
        let at = out.position() / SECTOR;
        if let Some(entry) = usize::try_from(self.table_index)
            .ok()
            .and_then(|index| self.directory.get_mut(index))
        {
            *entry = at;
        }
        write_entries(out, &self.table)?;
        self.table.fill(0);
        self.used = false;
        Ok(())
    }
}

/// One grain's compressed record, in order: the grain's index and its bytes (marker,
/// zlib stream, padding), or `None` for a grain of zeros.
type Compressed = (u64, Option<Vec<u8>>);

/// Compresses every grain of `grains` on worker threads while this thread reads the feed
/// and writes, and hands the records to `emit` in disk order.
fn compress_in_order<F: BlockFeed + ?Sized>(
    grains: &mut Grains<'_, F>,
    mut emit: impl FnMut(u64, Option<Vec<u8>>) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let workers = thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, MAX_COMPRESSION_THREADS);
    let in_flight = BATCHES_IN_FLIGHT_PER_THREAD * workers as u64;
    let stopped = || FormatError::CannotWrite {
        format: FORMAT,
        problem: "a compression thread stopped".into(),
    };
    type Done = (u64, Result<Vec<Compressed>, FormatError>);
    let (job_tx, job_rx) = mpsc::channel::<(u64, Vec<(u64, Vec<u8>)>)>();
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    thread::scope(|scope| {
        // Workers stop when the jobs' sender goes, which this closure owns.
        let job_tx = job_tx;
        for _ in 0..workers {
            let job_rx = &job_rx;
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut compressor = Compress::new(Compression::new(COMPRESSION_LEVEL), true);
                loop {
                    let job = job_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((seq, batch)) = job else {
                        break;
                    };
                    let result = batch
                        .into_iter()
                        .map(|(grain, data)| {
                            compress_grain(&mut compressor, grain, &data).map(|r| (grain, r))
                        })
                        .collect();
                    if done_tx.send((seq, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);

        let mut sent = 0u64;
        let mut written = 0u64;
        let mut ready = BTreeMap::new();
        let mut write_ready = |ready: &mut BTreeMap<u64, Result<Vec<Compressed>, FormatError>>,
                               written: &mut u64|
         -> Result<(), FormatError> {
            while let Some(result) = ready.remove(written) {
                for (grain, record) in result? {
                    emit(grain, record)?;
                }
                *written += 1;
            }
            Ok(())
        };
        loop {
            let mut batch = Vec::with_capacity(BATCH_GRAINS);
            while batch.len() < BATCH_GRAINS {
                match grains.next_grain()? {
                    Some(grain) => batch.push(grain),
                    None => break,
                }
            }
            let last = batch.len() < BATCH_GRAINS;
            if !batch.is_empty() {
                job_tx.send((sent, batch)).map_err(|_| stopped())?;
                sent += 1;
            }
            while let Ok((seq, result)) = done_rx.try_recv() {
                ready.insert(seq, result);
            }
            write_ready(&mut ready, &mut written)?;
            let allowed = if last { 0 } else { in_flight };
            while sent - written > allowed {
                let (seq, result) = done_rx.recv().map_err(|_| stopped())?;
                ready.insert(seq, result);
                write_ready(&mut ready, &mut written)?;
            }
            if last {
                return Ok(());
            }
        }
    })
}

/// Grain `grain`'s record: grain marker (the grain's first sector, the stream's length),
/// the zlib stream, zeros to the end of the sector. `None` when the grain is all zeros.
fn compress_grain(
    compressor: &mut Compress,
    grain: u64,
    data: &[u8],
) -> Result<Option<Vec<u8>>, FormatError> {
    if is_zero(data) {
        return Ok(None);
    }
    // zlib's worst case is a few bytes per 16 KiB over the input.
    let mut record = Vec::with_capacity(data.len() + data.len() / 64 + SECTOR_LEN);
    record.extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    compressor.reset();
    let start_in = compressor.total_in();
    loop {
        let consumed = usize::try_from(compressor.total_in() - start_in).unwrap_or(data.len());
        let status = compressor
            .compress_vec(&data[consumed..], &mut record, FlushCompress::Finish)
            .map_err(|e| FormatError::CannotWrite {
                format: FORMAT,
                problem: format!("compressing grain {grain}: {e}"),
            })?;
        if status == Status::StreamEnd {
            break;
        }
        record.reserve(SECTOR_LEN);
    }
    let size = u32::try_from(record.len() - GRAIN_MARKER_LEN).unwrap_or(u32::MAX);
    record[8..12].copy_from_slice(&size.to_le_bytes());
    record.resize(record.len().next_multiple_of(SECTOR_LEN), 0);
    Ok(Some(record))
}

/// The indexes of the grains that overlap a data block of `layout`, ascending.
#[derive(Debug)]
struct AllocatedGrains<'a> {
    layout: &'a ExportLayout,
    /// Position in `layout.data_blocks` of the block being walked.
    block: usize,
    /// The lowest grain not yet yielded.
    next: u64,
}

impl<'a> AllocatedGrains<'a> {
    fn new(layout: &'a ExportLayout) -> Self {
        Self {
            layout,
            block: 0,
            next: 0,
        }
    }
}

impl Iterator for AllocatedGrains<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let &block = self.layout.data_blocks.get(self.block)?;
            let start = block * self.layout.block_size;
            let end = start + self.layout.block_len(block);
            let first = (start / GRAIN_BYTES).max(self.next);
            let last = (end - 1) / GRAIN_BYTES;
            if first <= last {
                self.next = first + 1;
                return Some(first);
            }
            self.block += 1;
        }
    }
}

/// The grains of an export, assembled from the feed's blocks, which may be smaller or
/// larger than a grain.
struct Grains<'a, F: ?Sized> {
    layout: &'a ExportLayout,
    cursor: FeedCursor<'a, F>,
    allocated: AllocatedGrains<'a>,
    /// Position in `layout.data_blocks` of the first block not yet wholly copied.
    block: usize,
    /// That block's bytes, once taken from the feed.
    current: Option<(u64, Vec<u8>)>,
}

impl<'a, F: BlockFeed + ?Sized> Grains<'a, F> {
    fn new(layout: &'a ExportLayout, feed: &'a mut F) -> Self {
        Self {
            layout,
            cursor: FeedCursor::new(feed, layout, FORMAT),
            allocated: AllocatedGrains::new(layout),
            block: 0,
            current: None,
        }
    }

    /// The next grain overlapping data, and its 64 KiB (zeros past the disk's end and
    /// wherever no data block lies).
    fn next_grain(&mut self) -> Result<Option<(u64, Vec<u8>)>, FormatError> {
        let Some(grain) = self.allocated.next() else {
            return Ok(None);
        };
        let start = grain * GRAIN_BYTES;
        let end = (start + GRAIN_BYTES).min(self.layout.size);
        let mut bytes = vec![0u8; small(GRAIN_BYTES)];
        while let Some(&block) = self.layout.data_blocks.get(self.block) {
            let block_start = block * self.layout.block_size;
            if block_start >= end {
                break;
            }
            let block_end = block_start + self.layout.block_len(block);
            if !matches!(&self.current, Some((index, _)) if *index == block) {
                self.current = Some((block, self.cursor.next_expected(block)?));
            }
            let data = self
                .current
                .as_ref()
                .map_or(&[][..], |(_, data)| data.as_slice());
            let from = start.max(block_start);
            let to = end.min(block_end);
            // Both ranges lie within one grain and one block, which are in memory.
            bytes[small(from - start)..small(to - start)]
                .copy_from_slice(&data[small(from - block_start)..small(to - block_start)]);
            if block_end > end {
                break;
            }
            self.block += 1;
            self.current = None;
        }
        Ok(Some((grain, bytes)))
    }

    /// Checks that the feed gave every block and nothing more.
    fn finish(self) -> Result<(), FormatError> {
        self.cursor.finish()
    }
}

/// The sink, written in large pieces, with runs of zeros left as holes.
struct Out<'a> {
    sink: &'a mut dyn ImageSink,
    buf: Vec<u8>,
    /// Zeros owed after `buf`.
    zeros: u64,
}

impl<'a> Out<'a> {
    fn new(sink: &'a mut dyn ImageSink) -> Self {
        Self {
            sink,
            buf: Vec::with_capacity(OUT_BUFFER_LEN),
            zeros: 0,
        }
    }

    /// Bytes written so far, counting what is buffered.
    fn position(&self) -> u64 {
        self.sink.position() + self.buf.len() as u64 + self.zeros
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.settle_zeros()?;
        if self.buf.len() + bytes.len() > OUT_BUFFER_LEN {
            self.flush()?;
        }
        if bytes.len() >= OUT_BUFFER_LEN {
            return self.sink.write_all(bytes);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), FormatError> {
        self.zeros += len;
        Ok(())
    }

    /// Writes owed zeros: into the buffer when few, as a hole when many.
    fn settle_zeros(&mut self) -> Result<(), FormatError> {
        if self.zeros == 0 {
            return Ok(());
        }
        if self.zeros < MIN_HOLE {
            let len = self.buf.len() + small(self.zeros);
            self.zeros = 0;
            self.buf.resize(len, 0);
            if self.buf.len() >= OUT_BUFFER_LEN {
                self.flush()?;
            }
            return Ok(());
        }
        self.flush()?;
        let zeros = std::mem::take(&mut self.zeros);
        self.sink.write_zeros(zeros)
    }

    fn flush(&mut self) -> Result<(), FormatError> {
        if !self.buf.is_empty() {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), FormatError> {
        self.settle_zeros()?;
        self.flush()?;
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: u64, block_size: u64, data_blocks: Vec<u64>) -> ExportLayout {
        ExportLayout {
            size,
            block_size,
            data_blocks,
        }
    }

    #[test]
    fn allocated_grains_cover_data_blocks_smaller_and_larger_than_a_grain() {
        let small = layout(1 << 20, 4096, vec![0, 1, 15, 16, 40]);
        assert_eq!(
            AllocatedGrains::new(&small).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let large = layout(1 << 20, 256 << 10, vec![1, 3]);
        assert_eq!(
            AllocatedGrains::new(&large).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 12, 13, 14, 15]
        );
        let short_end = layout(100_000, 4096, vec![24]);
        assert_eq!(
            AllocatedGrains::new(&short_end).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn grains_are_assembled_from_the_blocks_that_overlap_them() {
        let layout = layout(3 * GRAIN_BYTES, 32 << 10, vec![1, 2, 5]);
        let mut feed = vec![
            Ok((1, vec![1u8; 32 << 10])),
            Ok((2, vec![2u8; 32 << 10])),
            Ok((5, vec![5u8; 32 << 10])),
        ]
        .into_iter();
        let mut grains = Grains::new(&layout, &mut feed);
        let (index, first) = grains.next_grain().expect("feed").expect("grain 0");
        assert_eq!(index, 0);
        assert!(first[..32 << 10].iter().all(|&b| b == 0));
        assert!(first[32 << 10..].iter().all(|&b| b == 1));
        let (index, second) = grains.next_grain().expect("feed").expect("grain 1");
        assert_eq!(index, 1);
        assert!(second[..32 << 10].iter().all(|&b| b == 2));
        let (index, third) = grains.next_grain().expect("feed").expect("grain 2");
        assert_eq!(index, 2);
        assert!(third[32 << 10..].iter().all(|&b| b == 5));
        assert!(grains.next_grain().expect("feed").is_none());
        grains.finish().expect("every block used");
    }

    #[test]
    fn extent_names_come_from_the_output_file() {
        assert_eq!(extent_file_name("/tmp/out/disk-1.vmdk"), "disk-1.vmdk");
        assert_eq!(extent_file_name("/tmp/a\"b.vmdk"), "disk.vmdk");
        assert_eq!(extent_file_name(""), "disk.vmdk");
    }
}

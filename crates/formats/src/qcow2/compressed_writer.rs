//! Writing compressed qcow2 images, as `qemu-img convert -c` makes them.
//!
//! ```text
//!  cluster 0     header: a hole until everything else is written, so an export cut short
//!                is not an image
//!  1 ..          L1 table
//!  ..            L2 tables: holes, each table written once its clusters are placed
//!  ..            data: deflate streams packed back to back at any byte; a cluster that does
//!                not shrink is stored whole at the next cluster boundary; a cluster of
//!                zeros stays unallocated
//!  ..            refcount table, refcount blocks: a host cluster holding parts of k
//!                compressed clusters has refcount k
//! ```
//!
//! Clusters are compressed a batch at a time, the batch split between threads; they are
//! placed in guest order, so the output is the same whatever the thread count.

use std::thread;

use super::compress::Compressor;
use super::l2::{COMPRESSED, COPIED, SECTOR};
use super::layout::{Output, Plan, Refcounts, cannot_write, to_usize};
use crate::export::{BlockFeed, ExportLayout, FeedCursor};
use crate::{FormatError, ImageSink, is_zero};

/// Most threads compressing at once; more rarely help a single export's feed keep up.
const MAX_COMPRESS_THREADS: usize = 8;

/// Guest bytes compressed per batch: enough to keep every thread busy for a while, little
/// enough to hold twice (input and output) in memory.
const COMPRESS_BATCH_BYTES: u64 = 8 << 20;

/// What one allocated guest cluster becomes.
#[derive(Debug)]
enum Encoded {
    /// All zeros: left unallocated.
    Zero,
    /// The deflate stream, shorter than the cluster.
    Compressed(Vec<u8>),
    /// Stored as it is.
    Stored,
}

/// Writes `plan`'s clusters compressed. The sink must allow rewrites.
pub(super) fn write(
    plan: &Plan,
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
) -> Result<(), FormatError> {
    if !sink.can_rewrite() {
        return Err(cannot_write(
            "compressed qcow2 needs a file output; export uncompressed to stream it".into(),
        ));
    }
    let cluster_size = plan.cluster_size;
    let l1_offset = cluster_size;
    let first_table = l1_offset + plan.l1_clusters() * cluster_size;
    let first_data = first_table + plan.tables.len() as u64 * cluster_size;

    let mut out = Output::new(sink);
    out.zeros(cluster_size)?;
    out.write(&plan.l1_table(first_table))?;
    out.zeros(first_data - first_table)?;

    let mut placer = Placer {
        plan,
        refcounts: vec![1; to_usize(first_data / cluster_size)],
        tables: L2Tables {
            plan,
            first_table,
            rank: 0,
            open: None,
            bytes: vec![0u8; to_usize(cluster_size)],
        },
    };
    let mut source = ClusterSource {
        cluster_size,
        cursor: FeedCursor::new(feed, layout, "qcow2"),
        layout,
        next: 0,
        current: None,
    };
    let threads = thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_COMPRESS_THREADS);
    let mut compressors: Vec<Compressor> = (0..threads)
        .map(|_| Compressor::new(to_usize(cluster_size)))
        .collect();
    let batch_len = to_usize((COMPRESS_BATCH_BYTES / cluster_size).max(threads as u64));

    let mut clusters = plan
        .runs
        .iter()
        .flat_map(|&(first, count)| first..first + count);
    loop {
        let mut batch = Vec::with_capacity(batch_len);
        for guest in clusters.by_ref().take(batch_len) {
            batch.push((guest, source.cluster(guest)?));
        }
        if batch.is_empty() {
            break;
        }
        let encoded = compress_batch(&mut compressors, &batch);
        for ((guest, data), encoded) in batch.iter().zip(encoded) {
            placer.place(&mut out, *guest, data, encoded)?;
        }
    }
    source.cursor.finish()?;
    placer.tables.close(&mut out)?;

    // Refcount structures start at the next cluster boundary and count themselves.
    let data_end = out.position().next_multiple_of(cluster_size);
    out.zeros(data_end - out.position())?;
    let data_clusters = data_end / cluster_size;
    let refcounts = Refcounts::plan(cluster_size, data_clusters, data_clusters)?;
    let counts = placer.refcounts;
    out.write(&refcounts.table(cluster_size))?;
    refcounts.write_blocks(cluster_size, &mut out, |cluster| {
        counts.get(to_usize(cluster)).copied().unwrap_or(1)
    })?;
    out.rewrite_at(0, &plan.header(l1_offset, &refcounts))?;
    out.finish()
}

/// Compresses `batch` on as many threads as there are compressors, in order.
fn compress_batch(compressors: &mut [Compressor], batch: &[(u64, Vec<u8>)]) -> Vec<Encoded> {
    let encode = |compressor: &mut Compressor, data: &[u8]| {
        if is_zero(data) {
            return Encoded::Zero;
        }
        match compressor.compress(data) {
            Some(stream) => Encoded::Compressed(stream.to_vec()),
            None => Encoded::Stored,
        }
    };
    if compressors.len() < 2 || batch.len() < 2 {
        let Some(compressor) = compressors.first_mut() else {
            return batch.iter().map(|_| Encoded::Stored).collect();
        };
        return batch
            .iter()
            .map(|(_, data)| encode(compressor, data))
            .collect();
    }
    let per_thread = batch.len().div_ceil(compressors.len());
    thread::scope(|scope| {
        let workers: Vec<_> = batch
            .chunks(per_thread)
            .zip(compressors.iter_mut())
            .map(|(chunk, compressor)| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(_, data)| encode(compressor, data))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Places encoded clusters in the file and records them in the L2 tables and refcounts.
struct Placer<'p> {
    plan: &'p Plan,
    /// Refcount of each host cluster so far, by cluster index.
    refcounts: Vec<u16>,
    tables: L2Tables<'p>,
}

impl Placer<'_> {
    fn place(
        &mut self,
        out: &mut Output<'_>,
        guest: u64,
        data: &[u8],
        encoded: Encoded,
    ) -> Result<(), FormatError> {
        let cluster_size = self.plan.cluster_size;
        match encoded {
            Encoded::Zero => Ok(()),
            Encoded::Compressed(stream) => {
                let host = out.position();
                // Spec "Compressed Clusters Descriptor": the host offset takes the bits
                // below x = 62 - (cluster_bits - 8), the extra sector count those above.
                let offset_bits = 62 - (self.plan.cluster_bits - 8);
                let end = host + stream.len() as u64;
                if end > 1u64 << offset_bits.min(56) {
                    return Err(cannot_write(format!(
                        "compressed data at byte {host} lies past what {cluster_size}-byte \
                         clusters can address; choose smaller clusters"
                    )));
                }
                let extra_sectors = (end - 1) / SECTOR - host / SECTOR;
                let entry = COMPRESSED | (extra_sectors << offset_bits) | host;
                out.write(&stream)?;
                for cluster in host / cluster_size..=(end - 1) / cluster_size {
                    self.count(cluster)?;
                }
                self.tables.set(out, guest, entry)
            }
            Encoded::Stored => {
                let host = out.position().next_multiple_of(cluster_size);
                out.zeros(host - out.position())?;
                out.write(data)?;
                self.count(host / cluster_size)?;
                self.tables.set(out, guest, host | COPIED)
            }
        }
    }

    /// Adds a reference to host cluster `cluster`.
    fn count(&mut self, cluster: u64) -> Result<(), FormatError> {
        let index = to_usize(cluster);
        if index >= self.refcounts.len() {
            self.refcounts.resize(index + 1, 0);
        }
        let count = &mut self.refcounts[index];
        *count = count.checked_add(1).ok_or_else(|| {
            cannot_write(format!(
                "host cluster {cluster} would hold more compressed clusters than a 16-bit \
                 refcount counts"
            ))
        })?;
        Ok(())
    }
}

/// The reserved L2 tables, filled one at a time in guest order.
struct L2Tables<'p> {
    plan: &'p Plan,
    first_table: u64,
    /// Index in `plan.tables` of the table being filled, or of the next one.
    rank: usize,
    /// The L1 index of the table being filled.
    open: Option<u64>,
    bytes: Vec<u8>,
}

impl L2Tables<'_> {
    /// Records `entry` for guest cluster `guest`, writing out the previous table once the
    /// clusters move past it.
    fn set(&mut self, out: &mut Output<'_>, guest: u64, entry: u64) -> Result<(), FormatError> {
        let index = guest / self.plan.l2_entries;
        if self.open != Some(index) {
            self.close(out)?;
            while self
                .plan
                .tables
                .get(self.rank)
                .is_some_and(|&table| table < index)
            {
                self.rank += 1;
            }
            self.open = Some(index);
            self.bytes.fill(0);
        }
        let at = to_usize(guest % self.plan.l2_entries * 8);
        self.bytes[at..at + 8].copy_from_slice(&entry.to_be_bytes());
        Ok(())
    }

    /// Writes the table being filled into its reserved place.
    fn close(&mut self, out: &mut Output<'_>) -> Result<(), FormatError> {
        if self.open.take().is_some() {
            let offset = self.first_table + self.rank as u64 * self.plan.cluster_size;
            out.rewrite_at(offset, &self.bytes)?;
        }
        Ok(())
    }
}

/// Guest clusters assembled from the feed's blocks, which may be smaller or larger than a
/// cluster; what no data block covers is zero.
struct ClusterSource<'a> {
    cluster_size: u64,
    cursor: FeedCursor<'a, dyn BlockFeed + 'a>,
    layout: &'a ExportLayout,
    /// Index in `layout.data_blocks` of the next block to take from the feed.
    next: usize,
    /// A block taken from the feed whose bytes run into clusters not yet assembled, with
    /// its guest offset.
    current: Option<(u64, Vec<u8>)>,
}

impl ClusterSource<'_> {
    /// The bytes of guest cluster `index`; clusters are asked for in ascending order.
    fn cluster(&mut self, index: u64) -> Result<Vec<u8>, FormatError> {
        let start = index * self.cluster_size;
        let end = start + self.cluster_size;
        let mut bytes = vec![0u8; to_usize(self.cluster_size)];
        loop {
            if self.current.is_none() {
                let Some(&block) = self.layout.data_blocks.get(self.next) else {
                    break;
                };
                let block_start = block * self.layout.block_size;
                if block_start >= end {
                    break;
                }
                let data = self.cursor.next_expected(block)?;
                self.next += 1;
                self.current = Some((block_start, data));
            }
            let Some((block_start, data)) = &self.current else {
                break;
            };
            let block_end = block_start + data.len() as u64;
            let (from, to) = ((*block_start).max(start), block_end.min(end));
            if from < to {
                bytes[to_usize(from - start)..to_usize(to - start)].copy_from_slice(
                    &data[to_usize(from - block_start)..to_usize(to - block_start)],
                );
            }
            if block_end > end {
                break;
            }
            self.current = None;
        }
        Ok(bytes)
    }
}

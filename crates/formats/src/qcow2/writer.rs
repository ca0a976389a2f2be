//! Writing a snapshot as a qcow2 version 3 image (compat 1.1) without a backing file.
//!
//! Uncompressed images are written strictly front to back, so they stream to a pipe or an
//! upload: every cluster's place follows from the export layout alone.
//!
//! ```text
//!  cluster 0        header (112 bytes), then an end-of-extensions marker
//!  1 ..             refcount table: one entry per refcount block
//!  ..               refcount blocks: 16-bit refcount 1 for every cluster of the file
//!  ..               L1 table: an entry per L2 table below
//!  ..               L2 tables, one per L1 entry whose span holds data, in L1 order
//!  ..               data clusters, in guest order: every cluster a data block touches
//! ```
//!
//! Compressed images (see `compressed_writer.rs`) need a file, as the size of each
//! compressed cluster is known only once it is compressed.

use super::compressed_writer;
use super::l2::COPIED;
use super::layout::{Output, Plan, Refcounts, to_usize};
use crate::export::{BlockFeed, ExportLayout, FeedCursor, ImageIdentity};
use crate::{FormatError, ImageSink};

/// How a qcow2 image is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2WriteOptions {
    /// Compress data clusters with deflate, as `qemu-img convert -c` does. The output must
    /// then be a file: the header is written last.
    pub compress: bool,
    /// The cluster size in bytes: a power of two from 512 bytes to 2 MiB.
    pub cluster_size: u64,
}

impl Default for Qcow2WriteOptions {
    /// Uncompressed, 64 KiB clusters: what `qemu-img create -f qcow2` makes.
    fn default() -> Self {
        Self {
            compress: false,
            cluster_size: 64 << 10,
        }
    }
}

/// Writes the snapshot described by `layout`, whose data blocks `feed` yields, to `sink` as
/// a qcow2 version 3 image. Clusters no data block touches stay unallocated.
///
/// qcow2 records no identity or time, so `identity` is not used; it is taken so that every
/// format's writer is called alike.
pub fn write(
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
    options: &Qcow2WriteOptions,
    identity: &ImageIdentity,
) -> Result<(), FormatError> {
    let _ = identity;
    let plan = Plan::new(layout, options.cluster_size)?;
    if options.compress {
        return compressed_writer::write(&plan, layout, feed, sink);
    }
    write_uncompressed(&plan, layout, feed, sink)
}

fn write_uncompressed(
    plan: &Plan,
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
) -> Result<(), FormatError> {
    let cluster_size = plan.cluster_size;
    let table_count = plan.tables.len() as u64;
    let other_clusters = 1 + plan.l1_clusters() + table_count + plan.data_clusters;
    // The refcount table follows the header; its blocks follow the table.
    let refcounts = Refcounts::plan(cluster_size, other_clusters, 1)?;
    let l1_offset = refcounts.blocks_offset + refcounts.block_count * cluster_size;
    let first_table = l1_offset + plan.l1_clusters() * cluster_size;
    let first_data = first_table + table_count * cluster_size;

    let mut out = Output::new(sink);
    out.write(&plan.header(l1_offset, &refcounts))?;
    out.write(&refcounts.table(cluster_size))?;
    refcounts.write_blocks(cluster_size, &mut out, |_| 1)?;
    out.write(&plan.l1_table(first_table))?;
    write_l2_tables(plan, first_data, &mut out)?;

    let mut cursor = FeedCursor::new(feed, layout, "qcow2");
    let mut next = 0;
    for &(first, count) in &plan.runs {
        let start = first * cluster_size;
        let end = (first + count) * cluster_size;
        let mut at = start;
        // Every data block lies inside one run: the run holds all the clusters it touches.
        while let Some(&block) = layout.data_blocks.get(next) {
            let block_start = block * layout.block_size;
            if block_start >= end {
                break;
            }
            out.zeros(block_start - at)?;
            let data = cursor.next_expected(block)?;
            out.write(&data)?;
            at = block_start + data.len() as u64;
            next += 1;
        }
        out.zeros(end - at)?;
    }
    cursor.finish()?;
    out.finish()
}

/// Writes the L2 tables of `plan`, data cluster n (in guest order) at `first_data` plus n
/// clusters.
fn write_l2_tables(plan: &Plan, first_data: u64, out: &mut Output<'_>) -> Result<(), FormatError> {
    let cluster_size = plan.cluster_size;
    let mut table = vec![0u8; to_usize(cluster_size)];
    let mut run = 0;
    // Data clusters before the run `run`.
    let mut rank_of_run = 0;
    for &index in &plan.tables {
        table.fill(0);
        let low = index * plan.l2_entries;
        let high = low + plan.l2_entries;
        while let Some(&(first, count)) = plan.runs.get(run) {
            if first >= high {
                break;
            }
            for cluster in first.max(low)..(first + count).min(high) {
                let host = first_data + (rank_of_run + cluster - first) * cluster_size;
                let at = to_usize((cluster - low) * 8);
                table[at..at + 8].copy_from_slice(&(host | COPIED).to_be_bytes());
            }
            if first + count > high {
                // The run goes on in the next table.
                break;
            }
            rank_of_run += count;
            run += 1;
        }
        out.write(&table)?;
    }
    Ok(())
}

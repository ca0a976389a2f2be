//! What a written qcow2 image holds, worked out from the export layout before any data:
//! which guest clusters are allocated, which L2 tables exist, how many refcount clusters
//! the file needs, and the bytes of its header and tables.

use super::header::{MAGIC, l2_entries};
use super::l2::COPIED;
use super::{FORMAT, MAX_CLUSTER_SIZE, MAX_DISK_SIZE, MAX_L1_BYTES, MIN_CLUSTER_SIZE};
use crate::export::ExportLayout;
use crate::{FormatError, ImageSink};

/// The length of the header written: the version 3 fields through compression_type,
/// padded to a multiple of 8, as QEMU writes it (spec "Header").
const HEADER_LENGTH: u32 = 112;

/// refcount_order of written images: 16-bit refcounts, QEMU's default.
const REFCOUNT_ORDER: u32 = 4;

/// Bytes per refcount entry at [`REFCOUNT_ORDER`].
const REFCOUNT_BYTES: u64 = 2;

/// Most rounds of the refcount sizing. Each round adds refcount clusters for the clusters
/// the last one added; real sizes settle in two or three.
const MAX_REFCOUNT_ROUNDS: usize = 64;

/// The refcount table's limit in QEMU, in bytes: an image with a larger one does not open.
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;

/// Bytes a written image's data goes out in at least: small blocks are gathered so that
/// a file or a stream sees few large writes.
const WRITE_CHUNK: usize = 1 << 20;

/// The disk sizes are rounded up to: QEMU counts a qcow2 disk in 512-byte sectors and
/// drops a partial last one, so rounding up keeps every byte.
const SECTOR: u64 = 512;

/// The guest clusters and tables of an image about to be written.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) cluster_bits: u32,
    pub(super) cluster_size: u64,
    /// The virtual size written: the layout's, rounded up to a sector.
    pub(super) size: u64,
    /// Guest clusters one L2 table maps.
    pub(super) l2_entries: u64,
    /// Entries of the L1 table.
    pub(super) l1_entries: u64,
    /// Allocated guest clusters: `(first, count)` runs, ascending, neither touching nor
    /// overlapping.
    pub(super) runs: Vec<(u64, u64)>,
    /// L1 indexes that get an L2 table, ascending.
    pub(super) tables: Vec<u64>,
    /// How many guest clusters are allocated.
    pub(super) data_clusters: u64,
}

/// A [`FormatError::CannotWrite`] for qcow2.
pub(super) fn cannot_write(problem: String) -> FormatError {
    FormatError::CannotWrite {
        format: FORMAT,
        problem,
    }
}

impl Plan {
    /// Plans an image of `cluster_size` clusters for `layout`: a cluster is allocated when
    /// any data block overlaps it.
    pub(super) fn new(layout: &ExportLayout, cluster_size: u64) -> Result<Self, FormatError> {
        layout.validate()?;
        if !cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster_size)
        {
            return Err(cannot_write(format!(
                "cluster size {cluster_size} is not a power of two from 512 bytes to 2 MiB"
            )));
        }
        let cluster_bits = cluster_size.trailing_zeros();
        let size = layout
            .size
            .checked_next_multiple_of(SECTOR)
            .filter(|&size| size <= MAX_DISK_SIZE)
            .ok_or_else(|| {
                cannot_write(format!(
                    "a disk of {} bytes is above the limit of {MAX_DISK_SIZE}",
                    layout.size
                ))
            })?;
        let l2_entries = l2_entries(cluster_bits, false);
        let l1_entries = size.div_ceil(l2_entries * cluster_size);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(cannot_write(format!(
                "a disk of {size} bytes needs an L1 table of {} bytes with {cluster_size}-byte \
                 clusters, above QEMU's limit of {MAX_L1_BYTES}; choose larger clusters",
                l1_entries * 8
            )));
        }

        // validate() put every block inside the disk, so these products do not overflow.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &block in &layout.data_blocks {
            let start = block * layout.block_size;
            let end = start + layout.block_len(block);
            let first = start / cluster_size;
            let last = end.div_ceil(cluster_size);
            match runs.last_mut() {
                Some((run_first, count)) if first <= *run_first + *count => {
                    *count = (*count).max(last - *run_first);
                }
                _ => runs.push((first, last - first)),
            }
        }
        let mut tables: Vec<u64> = Vec::new();
        for &(first, count) in &runs {
            for table in first / l2_entries..=(first + count - 1) / l2_entries {
                if tables.last() != Some(&table) {
                    tables.push(table);
                }
            }
        }
        let data_clusters = runs.iter().map(|&(_, count)| count).sum();
        Ok(Self {
            cluster_bits,
            cluster_size,
            size,
            l2_entries,
            l1_entries,
            runs,
            tables,
            data_clusters,
        })
    }

    /// Clusters the L1 table takes.
    pub(super) fn l1_clusters(&self) -> u64 {
        (self.l1_entries * 8).div_ceil(self.cluster_size)
    }

    /// The L1 table, each table of `tables` at `first_table` plus its rank in clusters.
    pub(super) fn l1_table(&self, first_table: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; to_usize(self.l1_clusters() * self.cluster_size)];
        for (rank, &index) in self.tables.iter().enumerate() {
            let entry = (first_table + rank as u64 * self.cluster_size) | COPIED;
            let at = to_usize(index * 8);
            bytes[at..at + 8].copy_from_slice(&entry.to_be_bytes());
        }
        bytes
    }

    /// The header cluster of the finished image.
    pub(super) fn header(&self, l1_offset: u64, refcounts: &Refcounts) -> Vec<u8> {
        let mut bytes = vec![0u8; to_usize(self.cluster_size)];
        let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
        put(0, &MAGIC);
        put(4, &3u32.to_be_bytes());
        // backing_file_offset and backing_file_size stay zero: no backing file.
        put(20, &self.cluster_bits.to_be_bytes());
        put(24, &self.size.to_be_bytes());
        // crypt_method 0: not encrypted. l1_size fits: it is at most MAX_L1_BYTES / 8.
        put(
            36,
            &u32::try_from(self.l1_entries)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        put(40, &l1_offset.to_be_bytes());
        put(48, &refcounts.table_offset.to_be_bytes());
        let table_clusters = u32::try_from(refcounts.table_clusters).unwrap_or(u32::MAX);
        put(56, &table_clusters.to_be_bytes());
        // nb_snapshots, snapshots_offset and every feature bit stay zero.
        put(96, &REFCOUNT_ORDER.to_be_bytes());
        put(100, &HEADER_LENGTH.to_be_bytes());
        // compression_type 0 (zlib) at 104; then a type 0 extension ends the extensions.
        bytes
    }
}

/// Where the refcount structures of an image go and how many clusters they count.
#[derive(Debug)]
pub(super) struct Refcounts {
    pub(super) table_offset: u64,
    pub(super) table_clusters: u64,
    pub(super) blocks_offset: u64,
    pub(super) block_count: u64,
    /// Clusters of the whole file, refcount structures included.
    pub(super) file_clusters: u64,
}

impl Refcounts {
    /// Sizes the refcount table and blocks for a file of `other_clusters` clusters besides
    /// them, with the table at cluster `table_at` and the blocks right after it.
    pub(super) fn plan(
        cluster_size: u64,
        other_clusters: u64,
        table_at: u64,
    ) -> Result<Self, FormatError> {
        let per_block = cluster_size / REFCOUNT_BYTES;
        let (mut table_clusters, mut block_count) = (0u64, 0u64);
        for _ in 0..MAX_REFCOUNT_ROUNDS {
            let file_clusters = other_clusters + table_clusters + block_count;
            let blocks = file_clusters.div_ceil(per_block);
            let table = (blocks * 8).div_ceil(cluster_size);
            if (table, blocks) == (table_clusters, block_count) {
                if table * cluster_size > MAX_REFCOUNT_TABLE_BYTES {
                    return Err(cannot_write(format!(
                        "a file of {file_clusters} clusters needs a refcount table above \
                         QEMU's limit of {MAX_REFCOUNT_TABLE_BYTES} bytes; choose larger \
                         clusters"
                    )));
                }
                return Ok(Self {
                    table_offset: table_at * cluster_size,
                    table_clusters: table,
                    blocks_offset: (table_at + table) * cluster_size,
                    block_count: blocks,
                    file_clusters,
                });
            }
            (table_clusters, block_count) = (table, blocks);
        }
        Err(cannot_write(format!(
            "the refcount structures for {other_clusters} clusters did not settle"
        )))
    }

    /// The refcount table: one entry per refcount block, padded to whole clusters.
    pub(super) fn table(&self, cluster_size: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; to_usize(self.table_clusters * cluster_size)];
        for (block, entry) in bytes
            .chunks_exact_mut(8)
            .take(to_usize(self.block_count))
            .enumerate()
        {
            let offset = self.blocks_offset + block as u64 * cluster_size;
            entry.copy_from_slice(&offset.to_be_bytes());
        }
        bytes
    }

    /// Writes the refcount blocks, cluster `n` counted `count(n)` times.
    pub(super) fn write_blocks(
        &self,
        cluster_size: u64,
        out: &mut Output<'_>,
        count: impl Fn(u64) -> u16,
    ) -> Result<(), FormatError> {
        let per_block = cluster_size / REFCOUNT_BYTES;
        let mut block = vec![0u8; to_usize(cluster_size)];
        for index in 0..self.block_count {
            for (slot, entry) in block.chunks_exact_mut(2).enumerate() {
                let cluster = index * per_block + slot as u64;
                let value = if cluster < self.file_clusters {
                    count(cluster)
                } else {
                    0
                };
                entry.copy_from_slice(&value.to_be_bytes());
            }
            out.write(&block)?;
        }
        Ok(())
    }
}

/// The sink, with small writes gathered into [`WRITE_CHUNK`]s.
pub(super) struct Output<'a> {
    sink: &'a mut dyn ImageSink,
    pending: Vec<u8>,
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl<'a> Output<'a> {
    pub(super) fn new(sink: &'a mut dyn ImageSink) -> Self {
        Self {
            sink,
            pending: Vec::with_capacity(WRITE_CHUNK),
        }
    }

    /// Bytes written so far, gathered ones included.
    pub(super) fn position(&self) -> u64 {
        self.sink.position() + self.pending.len() as u64
    }

    /// Appends `bytes`.
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        if self.pending.len() + bytes.len() > WRITE_CHUNK {
            self.flush()?;
        }
        if bytes.len() >= WRITE_CHUNK {
            return self.sink.write_all(bytes);
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends `len` zero bytes: a hole in a file.
    pub(super) fn zeros(&mut self, len: u64) -> Result<(), FormatError> {
        if len == 0 {
            return Ok(());
        }
        self.flush()?;
        self.sink.write_zeros(len)
    }

    /// Overwrites bytes written earlier (a file only).
    pub(super) fn rewrite_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        self.flush()?;
        self.sink.rewrite_at(offset, bytes)
    }

    fn flush(&mut self) -> Result<(), FormatError> {
        if !self.pending.is_empty() {
            self.sink.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes what is gathered and finishes the sink.
    pub(super) fn finish(mut self) -> Result<(), FormatError> {
        self.flush()?;
        self.sink.finish()
    }
}

/// A length or index of a buffer in memory, bounded by the limits above, as a `usize`.
pub(super) fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_structures_count_themselves() {
        // 512-byte clusters: a block counts 256 clusters, a table cluster names 64 blocks.
        let refcounts = Refcounts::plan(512, 256, 1).expect("plan");
        assert_eq!(refcounts.blocks_offset, 2 * 512);
        assert_eq!(refcounts.block_count, 2);
        assert_eq!(refcounts.table_clusters, 1);
        assert_eq!(refcounts.file_clusters, 259);
    }

    #[test]
    fn plans_allocate_every_cluster_a_data_block_touches() {
        let layout = ExportLayout {
            size: 10 * 4096 + 100,
            block_size: 4096,
            data_blocks: vec![1, 2, 7, 10],
        };
        let plan = Plan::new(&layout, 8192).expect("plan");
        assert_eq!(plan.size, 10 * 4096 + 512);
        assert_eq!(plan.runs, vec![(0, 2), (3, 1), (5, 1)]);
        assert_eq!(plan.data_clusters, 4);
        assert_eq!(plan.tables, vec![0]);
    }
}

//! The qcow2 reader: guest offsets mapped through the L1 and L2 tables.
//!
//! A read is first mapped into runs: stretches of the guest range that are zero, left to
//! the backing disk, stored in host-contiguous clusters, or in one compressed cluster. Then
//! each run costs one source read at most: consecutive normal clusters that lie one after
//! the other in the file are read together, and so are compressed clusters stored back to
//! back.

use std::sync::Arc;

use super::compress::Decompressor;
use super::header::{self, Header};
use super::l2::{Cluster, Geometry, L2Cache, SUBCLUSTERS};
use super::{FORMAT, MAX_CLUSTER_SIZE};
use crate::{BackingDisk, ByteSource, DiskReader, Extent, ExtentKind, FormatError, OpenContext};

/// Bytes read from the image's start to find the header: enough for the whole first
/// cluster of images with 64 KiB clusters or smaller; larger first clusters cost a second
/// read.
const HEADER_PROBE_LEN: u64 = 64 << 10;

/// The widest span of compressed data one read fetches, in bytes. One compressed cluster
/// covers at most twice the cluster size (its sector count has cluster_bits - 8 bits), so
/// any single cluster fits.
const MAX_COMPRESSED_READ: u64 = 4 * MAX_CLUSTER_SIZE;

/// Bytes of unrelated data a compressed read may span between two clusters rather than
/// split into two reads.
const MAX_COMPRESSED_GAP: u64 = 4 << 10;

/// How many runs [`DiskReader::extent_at`] looks at to grow one extent. Each costs a table
/// lookup in memory; the bound keeps a call short on a disk of millions of clusters.
const MAX_EXTENT_RUNS: usize = 1 << 16;

/// A qcow2 image read as a virtual disk.
#[derive(Debug)]
pub struct Qcow2Reader {
    name: String,
    /// The image file: header, tables and compressed clusters.
    image: Arc<dyn ByteSource>,
    /// Where normal clusters lie: the image, or its external data file.
    data: Arc<dyn ByteSource>,
    header: Header,
    geometry: Geometry,
    /// The active L1 table, as many entries as the disk's size needs.
    l1: Vec<u64>,
    l2_cache: L2Cache,
    decompressor: Decompressor,
    /// The last cluster decompressed, by the host offset of its compressed data.
    last_decompressed: Option<(u64, Vec<u8>)>,
    backing: BackingDisk,
    /// The backing disk's size, when there is one.
    backing_size: Option<u64>,
}

/// What a stretch of the guest range reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Zero,
    /// The backing disk at the same offset, or zeros without one.
    Unallocated,
    /// The data file from host offset `host` on.
    Data {
        host: u64,
    },
    /// Bytes `within..` of the cluster compressed in `len` bytes at `host`.
    Compressed {
        host: u64,
        len: u64,
        within: u64,
    },
}

/// A stretch of the guest range that reads from one piece.
#[derive(Debug, Clone, Copy)]
struct Run {
    offset: u64,
    len: u64,
    piece: Piece,
}

/// What an extent reports a piece as, before the backing disk is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Data,
    Zero,
    Unallocated,
}

impl Piece {
    fn class(self) -> Class {
        match self {
            Piece::Zero => Class::Zero,
            Piece::Unallocated => Class::Unallocated,
            Piece::Data { .. } | Piece::Compressed { .. } => Class::Data,
        }
    }
}

impl Qcow2Reader {
    /// Opens the qcow2 image in `source`, with its backing disk and external data file
    /// opened through `context`.
    pub fn open(
        source: Arc<dyn ByteSource>,
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let name = source.name().to_owned();
        let file_len = source.len();

        let probe_len = to_usize(file_len.min(HEADER_PROBE_LEN));
        let mut first_cluster = source.read_vec(0, probe_len)?;
        let wanted = header::first_cluster_len(&first_cluster, file_len);
        if wanted > first_cluster.len() as u64 {
            let rest = source.read_vec(first_cluster.len() as u64, to_usize(wanted) - probe_len)?;
            first_cluster.extend_from_slice(&rest);
        }
        let header = header::parse(&first_cluster, &name, file_len)?;

        let data = match &header.data_file {
            Some(data_name) => context.open_file(&name, data_name)?,
            None => Arc::clone(&source),
        };
        let geometry = Geometry {
            cluster_bits: header.cluster_bits,
            version: header.version,
            extended_l2: header.extended_l2,
            external_data: header.data_file.is_some(),
            image_len: file_len,
            data_len: data.len(),
        };

        // header::parse bounded the table by MAX_L1_BYTES and checked it lies in the file.
        let l1_bytes = source.read_vec(header.l1_table_offset, to_usize(header.l1_entries * 8))?;
        let l1 = l1_bytes
            .chunks_exact(8)
            .map(|word| {
                let mut be = [0u8; 8];
                be.copy_from_slice(word);
                u64::from_be_bytes(be)
            })
            .collect();

        let (backing, backing_size) = match &header.backing {
            Some(file) => {
                let disk = context.open_backing(&name, &file.name, file.format)?;
                let size = disk.size();
                (BackingDisk::new(Some(disk)), Some(size))
            }
            None => (BackingDisk::new(None), None),
        };

        Ok(Self {
            l2_cache: L2Cache::new(header.cluster_size()),
            decompressor: Decompressor::new(header.compression),
            last_decompressed: None,
            name,
            image: source,
            data,
            header,
            geometry,
            l1,
            backing,
            backing_size,
        })
    }

    /// The image's qcow2 version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The backing file's name as the image records it, if it has one.
    pub fn backing_file_name(&self) -> Option<&str> {
        self.header.backing.as_ref().map(|file| file.name.as_str())
    }

    fn corrupt(&self, field: &'static str, offset: u64, problem: String) -> FormatError {
        FormatError::Corrupt {
            format: FORMAT,
            name: self.name.clone(),
            field,
            offset,
            problem,
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), FormatError> {
        if offset
            .checked_add(length)
            .is_none_or(|end| end > self.header.size)
        {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size: self.header.size,
            });
        }
        Ok(())
    }

    /// The L1 index and the L2 table of the guest cluster at `offset`, or `None` for the
    /// L2 table when the L1 entry names none.
    fn l2_table_of(&self, offset: u64) -> Result<(usize, Option<u64>), FormatError> {
        let cluster = offset >> self.header.cluster_bits;
        let l1_index = to_usize(cluster / self.header.l2_entries());
        // The L1 table has an entry for every cluster of the disk and offset is inside it.
        let entry = self.l1.get(l1_index).copied().unwrap_or(0);
        let table = self.geometry.l2_table_offset(entry).map_err(|problem| {
            let at = self.header.l1_table_offset + l1_index as u64 * 8;
            self.corrupt("L1 table entry", at, problem)
        })?;
        Ok((l1_index, table))
    }

    /// The L2 entry and bitmap (zero without extended entries) at `index` of the table at
    /// `table`, loading the table if it is not cached.
    fn l2_entry(&mut self, table: u64, index: u64) -> Result<(u64, u64), FormatError> {
        let words_per_entry = if self.header.extended_l2 { 2 } else { 1 };
        let word = to_usize(index * words_per_entry);
        if !self.l2_cache.contains(table) {
            let bytes = self
                .image
                .read_vec(table, to_usize(self.header.cluster_size()))?;
            self.l2_cache.insert(table, &bytes);
        }
        let entry = self.l2_cache.word(table, word).unwrap_or(0);
        let bitmap = if self.header.extended_l2 {
            self.l2_cache.word(table, word + 1).unwrap_or(0)
        } else {
            0
        };
        Ok((entry, bitmap))
    }

    /// The run that starts at `offset` (inside the disk): as far as the piece it reads from
    /// goes within one cluster, or across an L2 table's span when it has no L2 table.
    fn run_at(&mut self, offset: u64) -> Result<Run, FormatError> {
        let bits = self.header.cluster_bits;
        let cluster_size = self.header.cluster_size();
        let size = self.header.size;
        let l2_entries = self.header.l2_entries();

        let (l1_index, table) = self.l2_table_of(offset)?;
        let Some(table) = table else {
            let span_end = (l1_index as u64 + 1)
                .checked_mul(l2_entries << bits)
                .map_or(size, |end| end.min(size));
            return Ok(Run {
                offset,
                len: span_end - offset,
                piece: Piece::Unallocated,
            });
        };

        let cluster = offset >> bits;
        let index = cluster % l2_entries;
        let (entry, bitmap) = self.l2_entry(table, index)?;
        let cluster_start = cluster << bits;
        let within = offset - cluster_start;
        let cluster_end = (cluster_start + cluster_size).min(size);
        let decoded = self
            .geometry
            .cluster(entry, bitmap, cluster_start)
            .map_err(|problem| {
                let entry_len = if self.header.extended_l2 { 16 } else { 8 };
                self.corrupt("L2 table entry", table + index * entry_len, problem)
            })?;

        let (piece, end) = match decoded {
            Cluster::Unallocated => (Piece::Unallocated, cluster_end),
            Cluster::Zero => (Piece::Zero, cluster_end),
            Cluster::Normal { host } => (
                Piece::Data {
                    host: host + within,
                },
                cluster_end,
            ),
            Cluster::Compressed { host, len } => {
                (Piece::Compressed { host, len, within }, cluster_end)
            }
            Cluster::Subclusters {
                host,
                allocated,
                zero,
            } => {
                let sub_size = cluster_size / SUBCLUSTERS;
                let first = within / sub_size;
                let state = |n: u64| (allocated >> n & 1, zero >> n & 1);
                let mut last = first;
                while last + 1 < SUBCLUSTERS && state(last + 1) == state(first) {
                    last += 1;
                }
                let end = (cluster_start + (last + 1) * sub_size).min(size);
                let piece = match (state(first), host) {
                    ((1, _), Some(host)) => Piece::Data {
                        host: host + within,
                    },
                    ((_, 1), _) => Piece::Zero,
                    _ => Piece::Unallocated,
                };
                (piece, end)
            }
        };
        Ok(Run {
            offset,
            len: end - offset,
            piece,
        })
    }

    /// The runs covering `offset..offset + len`, neighbours merged where one read serves.
    fn map_range(&mut self, offset: u64, len: u64) -> Result<Vec<Run>, FormatError> {
        let end = offset + len;
        let mut runs: Vec<Run> = Vec::new();
        let mut at = offset;
        while at < end {
            let mut run = self.run_at(at)?;
            run.len = run.len.min(end - at);
            at += run.len;
            if let Some(last) = runs.last_mut() {
                let joins = match (last.piece, run.piece) {
                    (Piece::Zero, Piece::Zero) | (Piece::Unallocated, Piece::Unallocated) => true,
                    (Piece::Data { host: a }, Piece::Data { host: b }) => a + last.len == b,
                    _ => false,
                };
                if joins {
                    last.len += run.len;
                    continue;
                }
            }
            runs.push(run);
        }
        Ok(runs)
    }

    /// Reads `buf.len()` bytes of the data file at `host`; bytes past its end read as
    /// zeros, as QEMU reads them.
    fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let inside = to_usize(self.data.len().saturating_sub(host)).min(buf.len());
        let (head, tail) = buf.split_at_mut(inside);
        if !head.is_empty() {
            self.data.read_exact_at(host, head)?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Reads the compressed runs `runs` (consecutive in the guest range starting at
    /// `offset`, the start of `buf`) with as few reads as their placement allows.
    fn read_compressed(
        &mut self,
        runs: &[Run],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), FormatError> {
        let cluster_size = to_usize(self.header.cluster_size());
        let image_len = self.image.len();
        let mut i = 0;
        while i < runs.len() {
            let Piece::Compressed { host, .. } = runs[i].piece else {
                i += 1;
                continue;
            };
            if self
                .last_decompressed
                .as_ref()
                .is_some_and(|(h, _)| *h == host)
            {
                self.copy_decompressed(runs[i], offset, buf);
                i += 1;
                continue;
            }

            // Gather the following clusters whose data lies just after, for one read.
            let span_start = host;
            let mut span_end = host;
            let mut count = 0;
            for run in &runs[i..] {
                let Piece::Compressed { host, len, .. } = run.piece else {
                    break;
                };
                let end = host.saturating_add(len).min(image_len);
                let near = host >= span_start && host <= span_end + MAX_COMPRESSED_GAP;
                if count > 0 && (!near || end.max(span_end) - span_start > MAX_COMPRESSED_READ) {
                    break;
                }
                span_end = span_end.max(end);
                count += 1;
            }
            let span = self
                .image
                .read_vec(span_start, to_usize(span_end - span_start))?;

            for run in &runs[i..i + count] {
                let Piece::Compressed { host, len, .. } = run.piece else {
                    continue;
                };
                let from = to_usize(host - span_start);
                let to = to_usize(host.saturating_add(len).min(span_end) - span_start);
                let mut cluster = match self.last_decompressed.take() {
                    Some((_, buffer)) => buffer,
                    None => vec![0u8; cluster_size],
                };
                if let Err(problem) = self.decompressor.decompress(&span[from..to], &mut cluster) {
                    return Err(self.corrupt("compressed cluster", host, problem));
                }
                self.last_decompressed = Some((host, cluster));
                self.copy_decompressed(*run, offset, buf);
            }
            i += count;
        }
        Ok(())
    }

    /// Copies the part of the last decompressed cluster that `run` covers into `buf`.
    fn copy_decompressed(&self, run: Run, offset: u64, buf: &mut [u8]) {
        let Piece::Compressed { within, .. } = run.piece else {
            return;
        };
        let Some((_, cluster)) = &self.last_decompressed else {
            return;
        };
        let at = to_usize(run.offset - offset);
        let len = to_usize(run.len);
        let within = to_usize(within);
        buf[at..at + len].copy_from_slice(&cluster[within..within + len]);
    }

    /// The extent at `offset`, with unallocated regions resolved through the backing disk
    /// or, for `layer`, reported as [`ExtentKind::Backing`].
    fn extent(&mut self, offset: u64, layer: bool) -> Result<Extent, FormatError> {
        let size = self.header.size;
        if offset >= size {
            return Err(FormatError::OutOfRange {
                offset,
                length: 0,
                size,
            });
        }
        let first = self.run_at(offset)?;
        let class = first.piece.class();
        let mut end = offset + first.len;
        let mut looked = 1;
        // Grow the extent while the next run is of the same class and needs no table read.
        while end < size && looked < MAX_EXTENT_RUNS {
            match self.l2_table_of(end)? {
                (_, Some(table)) if !self.l2_cache.contains(table) => break,
                _ => {}
            }
            let run = self.run_at(end)?;
            if run.piece.class() != class {
                break;
            }
            end += run.len;
            looked += 1;
        }
        let length = end - offset;

        let kind = match class {
            Class::Data => ExtentKind::Data,
            Class::Zero => ExtentKind::Zero,
            Class::Unallocated if layer => {
                // Past the backing disk's end the image reads zeros, whatever lies below.
                return Ok(match self.backing_size {
                    Some(backing_size) if offset < backing_size => Extent {
                        offset,
                        length: length.min(backing_size - offset),
                        kind: ExtentKind::Backing,
                    },
                    _ => Extent {
                        offset,
                        length,
                        kind: ExtentKind::Zero,
                    },
                });
            }
            Class::Unallocated => return self.backing.extent_at(offset, length),
        };
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }
}

impl DiskReader for Qcow2Reader {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent(offset, false)
    }

    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent(offset, true)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.check_range(offset, buf.len() as u64)?;
        let runs = self.map_range(offset, buf.len() as u64)?;
        let mut i = 0;
        while i < runs.len() {
            let run = runs[i];
            let at = to_usize(run.offset - offset);
            let part = &mut buf[at..at + to_usize(run.len)];
            match run.piece {
                Piece::Zero => part.fill(0),
                Piece::Unallocated => self.backing.read_at(run.offset, part)?,
                Piece::Data { host } => self.read_data(host, part)?,
                Piece::Compressed { .. } => {
                    let count = runs[i..]
                        .iter()
                        .take_while(|run| matches!(run.piece, Piece::Compressed { .. }))
                        .count();
                    let (from, to) = (at, to_usize(runs[i + count - 1].offset - offset));
                    let to = to + to_usize(runs[i + count - 1].len);
                    self.read_compressed(&runs[i..i + count], run.offset, &mut buf[from..to])?;
                    i += count;
                    continue;
                }
            }
            i += 1;
        }
        Ok(())
    }
}

/// A length or index that lies within a buffer or table in memory, so fits a `usize`.
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

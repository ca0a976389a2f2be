//! Hosted sparse and stream-optimized extents: a grain directory of grain tables of
//! grains, looked up without ever scanning the file.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use flate2::{Decompress, FlushDecompress, Status};

use crate::fields::Fields;
use crate::vmdk::descriptor::MAX_DESCRIPTOR_LEN;
use crate::vmdk::header::{
    FORMAT, GD_AT_END, GRAIN_MARKER_LEN, MARKER_EOS, MARKER_FOOTER, SECTOR, SECTOR_LEN,
    SparseHeader, check_marker, small,
};
use crate::{ByteSource, ExtentKind, FormatError};

/// Bytes read from the start of an image in its first request: the header, the embedded
/// descriptor and, for small disks, the grain directory, all in one read.
pub(crate) const HEAD_READ_LEN: u64 = 64 << 10;

/// Most grain directory entries an extent may have (16 MiB of directory, read whole when
/// the extent is opened): 128 TiB of disk at the usual 64 KiB grains and 512-entry tables.
pub(crate) const MAX_GD_ENTRIES: u64 = 1 << 22;

/// Bytes of grain tables kept in memory per open disk. One 2 KiB table covers 32 MiB of
/// disk, so 8 MiB of tables covers 128 GiB before any table is read twice.
const MAX_CACHED_TABLE_BYTES: usize = 8 << 20;

/// Most grain tables read in one request when they lie next to each other in the file, as
/// they do in every monolithic sparse extent: 16 tables are 32 KiB and cover 512 MiB.
const MAX_TABLES_PER_READ: usize = 16;

/// Most grain tables `run_at` reads to find where a run of alike grains ends. The run it
/// reports is shorter when it stops early, never wrong.
const MAX_SCAN_TABLE_READS: usize = 16;

/// Largest single read of compressed grains, in bytes: consecutive grains of a
/// stream-optimized extent lie one after another and are fetched together.
const MAX_COALESCED_READ: u64 = 8 << 20;

/// Largest gap between two compressed grains still fetched in one read, in bytes beyond
/// the largest record. Between grains of a stream lie at most a grain table and its marker.
const MAX_COALESCE_GAP: u64 = 64 << 10;

/// What a grain table entry says about one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    /// Entry 0, or a directory entry of 0: nothing stored. Zeros, or the parent's bytes in
    /// a delta disk.
    Unallocated,
    /// Entry 1: a zeroed grain (Virtual Disk Format 5.0). Sector 1 of a sparse extent is
    /// always metadata, so the value means this whether or not the header's `flags` bit 2
    /// says so.
    Zeroed,
    /// The grain (or its marker, when compressed) starts at `sector` of the file.
    Stored {
        /// The sector in the extent file.
        sector: u64,
        /// File offset of the grain table entry, for errors.
        entry_at: u64,
    },
}

/// An embedded descriptor and where it lies in the file.
#[derive(Debug)]
pub(crate) struct EmbeddedDescriptor {
    /// File offset of the text.
    pub(crate) at: u64,
    /// The descriptor area's bytes, NUL-padded.
    pub(crate) bytes: Vec<u8>,
}

/// One hosted sparse or stream-optimized extent file, its grain directory read.
#[derive(Debug)]
pub(crate) struct SparseExtent {
    source: Arc<dyn ByteSource>,
    header: SparseHeader,
    file_len: u64,
    grain_bytes: u64,
    capacity_bytes: u64,
    /// Bytes of one grain table: 4 per entry.
    table_len: usize,
    /// Sectors from one grain table to the next when they lie side by side.
    table_stride_sectors: u64,
    /// The grain directory: sector of each grain table, 0 for none.
    directory: Vec<u32>,
    /// Largest compressed grain accepted, in bytes. qemu reads at most two grains per
    /// compressed grain, and so does this reader.
    max_compressed: u64,
}

impl SparseExtent {
    /// Opens a sparse extent whose first bytes, `head`, were read already: checks the
    /// header (or the footer it points to), reads the embedded descriptor and the grain
    /// directory, and checks every directory entry against the file's end.
    pub(crate) fn open(
        source: Arc<dyn ByteSource>,
        head: &[u8],
    ) -> Result<(Self, Option<EmbeddedDescriptor>), FormatError> {
        let name = source.name().to_owned();
        let file_len = source.len();
        let fields = Fields::new(head, FORMAT, &name, 0);
        let mut header = SparseHeader::parse(&fields, &name)?;

        let descriptor = if header.descriptor_offset != 0 && header.descriptor_sectors != 0 {
            let len = header
                .descriptor_sectors
                .checked_mul(SECTOR)
                .filter(|&len| len <= MAX_DESCRIPTOR_LEN)
                .ok_or_else(|| {
                    fields.corrupt(
                        "descriptorSize",
                        36,
                        format!(
                            "{} sectors is above the limit of {MAX_DESCRIPTOR_LEN} bytes",
                            header.descriptor_sectors
                        ),
                    )
                })?;
            let at = within_file(header.descriptor_offset, len, file_len).ok_or_else(|| {
                fields.corrupt(
                    "descriptorOffset",
                    28,
                    format!(
                        "a descriptor of {len} bytes at sector {} lies past the end of the \
                         file ({file_len} bytes)",
                        header.descriptor_offset
                    ),
                )
            })?;
            let bytes = read_region(&*source, head, at, len)?;
            Some(EmbeddedDescriptor { at, bytes })
        } else {
            None
        };

        // A stream-optimized extent written front to back learns where its directory lies
        // only at the end, and says so in the footer.
        let mut header_at = 0;
        if header.gd_offset == GD_AT_END {
            (header, header_at) = read_footer(&*source, &header, file_len)?;
        }
        let header_fields = Fields::new(&[], FORMAT, &name, header_at);

        let grain_bytes = header.grain_bytes();
        let gtes = u64::from(header.gtes_per_gt);
        let table_sectors = header.grain_sectors * gtes;
        let entries = header.capacity.div_ceil(table_sectors);
        if entries > MAX_GD_ENTRIES {
            return Err(header_fields.corrupt(
                "capacity",
                12,
                format!(
                    "{} sectors need {entries} grain directory entries, above the limit of \
                     {MAX_GD_ENTRIES}",
                    header.capacity
                ),
            ));
        }
        // Both bounded above: entries by MAX_GD_ENTRIES, tables by MAX_GTES_PER_GT.
        let directory_len = entries * 4;
        let table_len = small(gtes * 4);
        let directory_at =
            within_file(header.gd_offset, directory_len, file_len).ok_or_else(|| {
                header_fields.corrupt(
                    "gdOffset",
                    56,
                    format!(
                        "a grain directory of {directory_len} bytes at sector {} lies past the \
                         end of the file ({file_len} bytes)",
                        header.gd_offset
                    ),
                )
            })?;
        let bytes = read_region(&*source, head, directory_at, directory_len)?;
        let directory: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|entry| u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]))
            .collect();
        let directory_fields = Fields::new(&bytes, FORMAT, &name, directory_at);
        for (i, &entry) in directory.iter().enumerate() {
            if entry != 0 && within_file(u64::from(entry), gtes * 4, file_len).is_none() {
                return Err(directory_fields.corrupt(
                    "grain directory entry",
                    i * 4,
                    format!(
                        "grain table {i} at sector {entry} lies past the end of the file \
                         ({file_len} bytes)"
                    ),
                ));
            }
        }

        let extent = Self {
            source,
            header,
            file_len,
            grain_bytes,
            capacity_bytes: header.capacity * SECTOR,
            table_len,
            table_stride_sectors: (gtes * 4).div_ceil(SECTOR),
            directory,
            max_compressed: grain_bytes * 2,
        };
        Ok((extent, descriptor))
    }

    /// The extent's size in bytes.
    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn corrupt(&self, field: &'static str, offset: u64, problem: String) -> FormatError {
        FormatError::Corrupt {
            format: FORMAT,
            name: self.source.name().to_owned(),
            field,
            offset,
            problem,
        }
    }

    /// The grain table of directory entry `gd_index` (which must not be 0), from the cache
    /// or read together with the tables that follow it in the file.
    fn table(
        &self,
        tables: &mut TableCache,
        key: usize,
        gd_index: usize,
    ) -> Result<Arc<[u32]>, FormatError> {
        if let Some(table) = tables.get(key, gd_index) {
            return Ok(table);
        }
        let first = u64::from(self.directory[gd_index]);
        let mut count = 1;
        while count < MAX_TABLES_PER_READ {
            let next = gd_index + count;
            let adjacent = self.directory.get(next).is_some_and(|&entry| {
                u64::from(entry) == first + count as u64 * self.table_stride_sectors
            });
            if !adjacent || tables.contains(key, next) {
                break;
            }
            count += 1;
        }
        let stride = small(self.table_stride_sectors * SECTOR);
        let len = (count - 1) * stride + self.table_len;
        let bytes = self.source.read_vec(first * SECTOR, len)?;
        let parse = |i: usize| -> Arc<[u32]> {
            bytes[i * stride..i * stride + self.table_len]
                .chunks_exact(4)
                .map(|entry| u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]))
                .collect()
        };
        let wanted = parse(0);
        tables.insert(key, gd_index, wanted.clone());
        for i in 1..count {
            tables.insert(key, gd_index + i, parse(i));
        }
        Ok(wanted)
    }

    /// What the grain table says about grain `index`, which must lie within the extent.
    /// A stored grain's offset is checked against the file's end.
    pub(crate) fn grain(
        &self,
        tables: &mut TableCache,
        key: usize,
        index: u64,
    ) -> Result<Grain, FormatError> {
        let gtes = u64::from(self.header.gtes_per_gt);
        let gd_index = usize::try_from(index / gtes).unwrap_or(usize::MAX);
        let Some(&table_sector) = self.directory.get(gd_index) else {
            return Ok(Grain::Unallocated);
        };
        if table_sector == 0 {
            return Ok(Grain::Unallocated);
        }
        let table = self.table(tables, key, gd_index)?;
        let slot = small(index % gtes);
        let sector = u64::from(table[slot]);
        let entry_at = u64::from(table_sector) * SECTOR + slot as u64 * 4;
        match sector {
            0 => Ok(Grain::Unallocated),
            1 => Ok(Grain::Zeroed),
            _ => {
                // The least a stored grain needs: its in-disk bytes, or a compressed grain's
                // marker (or first byte, without markers).
                let needed = if self.header.compressed() {
                    if self.header.has_markers() {
                        GRAIN_MARKER_LEN as u64
                    } else {
                        1
                    }
                } else {
                    self.grain_bytes
                        .min(self.capacity_bytes.saturating_sub(index * self.grain_bytes))
                };
                if within_file(sector, needed, self.file_len).is_none() {
                    return Err(self.corrupt(
                        "grain table entry",
                        entry_at,
                        format!(
                            "grain {index} at sector {sector} lies past the end of the file \
                             ({} bytes)",
                            self.file_len
                        ),
                    ));
                }
                Ok(Grain::Stored { sector, entry_at })
            }
        }
    }

    /// The kind of the grains from byte `local` of the extent and how many bytes of them
    /// are alike, up to `limit` (the extent's end, at most its capacity). Unallocated
    /// grains are `Backing` in a delta disk and `Zero` otherwise.
    pub(crate) fn run_at(
        &self,
        tables: &mut TableCache,
        key: usize,
        local: u64,
        limit: u64,
        delta: bool,
    ) -> Result<(ExtentKind, u64), FormatError> {
        let unallocated = if delta {
            ExtentKind::Backing
        } else {
            ExtentKind::Zero
        };
        let kind_of = |entry: u32| match entry {
            0 => unallocated,
            1 => ExtentKind::Zero,
            _ => ExtentKind::Data,
        };
        let first = local / self.grain_bytes;
        let kind = match self.grain(tables, key, first)? {
            Grain::Unallocated => unallocated,
            Grain::Zeroed => ExtentKind::Zero,
            Grain::Stored { .. } => ExtentKind::Data,
        };

        let gtes = u64::from(self.header.gtes_per_gt);
        let grains_end = limit.div_ceil(self.grain_bytes);
        let mut next = first + 1;
        let mut reads = 0;
        'scan: while next < grains_end {
            let gd_index = usize::try_from(next / gtes).unwrap_or(usize::MAX);
            let table_first = next / gtes * gtes;
            let table_end = (table_first + gtes).min(grains_end);
            if self.directory.get(gd_index).is_none_or(|&entry| entry == 0) {
                if kind != unallocated {
                    break;
                }
                next = table_end;
                continue;
            }
            if !tables.contains(key, gd_index) {
                if reads == MAX_SCAN_TABLE_READS {
                    break;
                }
                reads += 1;
            }
            let table = self.table(tables, key, gd_index)?;
            while next < table_end {
                if kind_of(table[small(next - table_first)]) != kind {
                    break 'scan;
                }
                next += 1;
            }
        }
        let end = (next * self.grain_bytes).min(limit);
        Ok((kind, end - local))
    }

    /// Fills `buf` with the extent's bytes from byte `local`. Unallocated grains are
    /// filled by `unallocated(local offset, part)`. Grains lying side by side in the file
    /// are read in one request.
    pub(crate) fn read(
        &self,
        tables: &mut TableCache,
        grains: &mut GrainCache,
        key: usize,
        local: u64,
        buf: &mut [u8],
        unallocated: &mut FillUnallocated<'_>,
    ) -> Result<(), FormatError> {
        let mut done = 0;
        while done < buf.len() {
            let at = local + done as u64;
            let index = at / self.grain_bytes;
            let take = self.piece_len(at, buf.len() - done);
            match self.grain(tables, key, index)? {
                Grain::Unallocated => {
                    unallocated(at, &mut buf[done..done + take])?;
                    done += take;
                }
                Grain::Zeroed => {
                    buf[done..done + take].fill(0);
                    done += take;
                }
                Grain::Stored { sector, .. } if !self.header.compressed() => {
                    done += self.read_stored_run(tables, key, sector, local, buf, done)?;
                }
                Grain::Stored { sector, entry_at } => {
                    let first = Piece {
                        index,
                        sector,
                        entry_at,
                        within: small(at % self.grain_bytes),
                        out_at: done,
                        take,
                    };
                    done += self.read_compressed_run(tables, grains, key, first, local, buf)?;
                }
            }
        }
        Ok(())
    }

    /// Bytes of the grain holding `at` that a read of `left` bytes from `at` takes.
    fn piece_len(&self, at: u64, left: usize) -> usize {
        let rest_of_grain = self.grain_bytes - at % self.grain_bytes;
        usize::try_from(rest_of_grain).map_or(left, |rest| rest.min(left))
    }

    /// Reads the uncompressed grain at `sector` into `buf[done..]`, with the grains after
    /// it that follow it in the file, in one request. Returns the bytes filled.
    fn read_stored_run(
        &self,
        tables: &mut TableCache,
        key: usize,
        sector: u64,
        local: u64,
        buf: &mut [u8],
        done: usize,
    ) -> Result<usize, FormatError> {
        let at = local + done as u64;
        let file_at = sector * SECTOR + at % self.grain_bytes;
        let mut len = self.piece_len(at, buf.len() - done);
        let mut next_sector = sector + self.header.grain_sectors;
        while done + len < buf.len() {
            let next_at = at + len as u64;
            match self.grain(tables, key, next_at / self.grain_bytes)? {
                Grain::Stored { sector, .. } if sector == next_sector => {
                    len += self.piece_len(next_at, buf.len() - done - len);
                    next_sector += self.header.grain_sectors;
                }
                _ => break,
            }
        }
        self.source
            .read_exact_at(file_at, &mut buf[done..done + len])?;
        Ok(len)
    }

    /// Reads the compressed grain `first` and the ones after it that lie close behind it
    /// in the file, in one request, and inflates each into `buf`. Returns the bytes filled.
    fn read_compressed_run(
        &self,
        tables: &mut TableCache,
        grains: &mut GrainCache,
        key: usize,
        first: Piece,
        local: u64,
        buf: &mut [u8],
    ) -> Result<usize, FormatError> {
        if grains.holds(key, first.index) {
            buf[first.out_at..first.out_at + first.take]
                .copy_from_slice(&grains.data[first.within..first.within + first.take]);
            return Ok(first.take);
        }

        let max_record = self.max_compressed + GRAIN_MARKER_LEN as u64;
        let mut pieces = vec![first];
        let mut end = first.out_at + first.take;
        while end < buf.len() {
            let at = local + end as u64;
            let index = at / self.grain_bytes;
            let Grain::Stored { sector, entry_at } = self.grain(tables, key, index)? else {
                break;
            };
            let last = pieces[pieces.len() - 1].sector;
            let close = sector > last
                && (sector - last) * SECTOR <= max_record + MAX_COALESCE_GAP
                && (sector - first.sector) * SECTOR <= MAX_COALESCED_READ;
            if !close {
                break;
            }
            let take = self.piece_len(at, buf.len() - end);
            pieces.push(Piece {
                index,
                sector,
                entry_at,
                within: 0,
                out_at: end,
                take,
            });
            end += take;
        }

        // Most grains compress to less than a grain; a longer one is read on demand.
        let span_at = first.sector * SECTOR;
        let last_at = pieces[pieces.len() - 1].sector * SECTOR;
        let span_end = (last_at + self.grain_bytes + SECTOR).min(self.file_len);
        let span_len = usize::try_from(span_end - span_at).unwrap_or(usize::MAX);
        let mut span = Span {
            at: span_at,
            bytes: self.source.read_vec(span_at, span_len)?,
        };
        for piece in &pieces {
            self.inflate_piece(grains, key, piece, &mut span, buf)?;
        }
        Ok(end - first.out_at)
    }

    /// Inflates one compressed grain found in `span` into its place in `buf`.
    fn inflate_piece(
        &self,
        grains: &mut GrainCache,
        key: usize,
        piece: &Piece,
        span: &mut Span,
        buf: &mut [u8],
    ) -> Result<(), FormatError> {
        let record_at = piece.sector * SECTOR;
        let (data_at, data_len) = if self.header.has_markers() {
            let marker = span.get(&*self.source, record_at, GRAIN_MARKER_LEN as u64)?;
            let fields = Fields::new(marker, FORMAT, self.source.name(), record_at);
            let lba = fields.u64_le("grain marker", 0)?;
            let size = u64::from(fields.u32_le("grain marker", 8)?);
            let expected = piece.index * self.header.grain_sectors;
            if lba != expected {
                return Err(fields.corrupt(
                    "grain marker",
                    0,
                    format!(
                        "holds sector {lba}, but grain table entry at byte {} places sector \
                         {expected} here",
                        piece.entry_at
                    ),
                ));
            }
            if size == 0 || size > self.max_compressed {
                return Err(fields.corrupt(
                    "grain marker",
                    8,
                    format!(
                        "a compressed grain of {size} bytes is not between 1 and {}",
                        self.max_compressed
                    ),
                ));
            }
            let data_at = record_at + GRAIN_MARKER_LEN as u64;
            if data_at + size > self.file_len {
                return Err(fields.corrupt(
                    "grain marker",
                    8,
                    format!(
                        "a compressed grain of {size} bytes runs past the end of the file \
                         ({} bytes)",
                        self.file_len
                    ),
                ));
            }
            (data_at, size)
        } else {
            // Without a marker the stream's own end says where the grain ends.
            (
                record_at,
                self.max_compressed.min(self.file_len - record_at),
            )
        };
        let data = span.get(&*self.source, data_at, data_len)?;

        let grain_start = piece.index * self.grain_bytes;
        let needed = small(
            self.grain_bytes
                .min(self.capacity_bytes.saturating_sub(grain_start)),
        );
        let bad = |problem: String| {
            self.corrupt(
                "compressed grain",
                data_at,
                format!("grain {}: {problem}", piece.index),
            )
        };
        // A whole grain inflates straight into the caller's buffer.
        if piece.within == 0 && piece.take as u64 == self.grain_bytes {
            let out = &mut buf[piece.out_at..piece.out_at + piece.take];
            let produced = inflate(&mut grains.inflater, data, out).map_err(bad)?;
            if produced < needed {
                return Err(bad(format!(
                    "inflates to {produced} bytes, fewer than the grain's {needed}"
                )));
            }
            return Ok(());
        }

        grains.key = None;
        grains.data.resize(small(self.grain_bytes), 0);
        let produced = inflate(&mut grains.inflater, data, &mut grains.data).map_err(bad)?;
        if produced < needed {
            return Err(bad(format!(
                "inflates to {produced} bytes, fewer than the grain's {needed}"
            )));
        }
        grains.data[produced..].fill(0);
        grains.key = Some((key, piece.index));
        buf[piece.out_at..piece.out_at + piece.take]
            .copy_from_slice(&grains.data[piece.within..piece.within + piece.take]);
        Ok(())
    }
}

/// Fills the part of a read that falls on unallocated grains: called with the part's
/// offset in the extent and its bytes.
pub(crate) type FillUnallocated<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), FormatError> + 'a;

/// One grain's part of a read.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// The grain's index in the extent.
    index: u64,
    /// Its sector in the file.
    sector: u64,
    /// File offset of its grain table entry, for errors.
    entry_at: u64,
    /// Offset of the wanted bytes within the grain.
    within: usize,
    /// Where they go in the caller's buffer.
    out_at: usize,
    /// How many there are.
    take: usize,
}

/// Bytes read from a file in one request, extended on demand.
struct Span {
    at: u64,
    bytes: Vec<u8>,
}

impl Span {
    /// The `len` bytes at file offset `at` (which must not lie before the span), reading
    /// what the span lacks. Callers have checked the range against the file's end.
    fn get(&mut self, source: &dyn ByteSource, at: u64, len: u64) -> Result<&[u8], FormatError> {
        let start = small(at - self.at);
        let len = small(len);
        let end = start.saturating_add(len);
        if end > self.bytes.len() {
            let have = self.at + self.bytes.len() as u64;
            let more = source.read_vec(have, end - self.bytes.len())?;
            self.bytes.extend_from_slice(&more);
        }
        Ok(&self.bytes[start..end])
    }
}

/// Inflates the zlib stream at the start of `input` into `out`, which it must not overflow.
/// Returns the bytes produced.
fn inflate(inflater: &mut Decompress, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    // FlushDecompress::None: with Finish, an output too small for the stream is an error
    // indistinguishable from a corrupt stream.
    inflater.reset(true);
    let invalid = |e: flate2::DecompressError| format!("not a valid zlib stream: {e}");
    let status = inflater
        .decompress(input, out, FlushDecompress::None)
        .map_err(invalid)?;
    let produced = usize::try_from(inflater.total_out()).unwrap_or(usize::MAX);
    if status == Status::StreamEnd {
        return Ok(produced);
    }
    if produced < out.len() {
        return Err("the zlib stream is cut short".to_owned());
    }
    // The grain is full; the stream must have nothing left but its end.
    let consumed = usize::try_from(inflater.total_in())
        .unwrap_or(usize::MAX)
        .min(input.len());
    let mut probe = [0u8; 1];
    let status = inflater
        .decompress(&input[consumed..], &mut probe, FlushDecompress::None)
        .map_err(invalid)?;
    let extra = usize::try_from(inflater.total_out()).unwrap_or(usize::MAX) - produced;
    match (status, extra) {
        (Status::StreamEnd, 0) => Ok(produced),
        (_, 0) => Err("the zlib stream is cut short".to_owned()),
        _ => Err(format!(
            "inflates to more than one grain of {} bytes",
            out.len()
        )),
    }
}

/// The sector's byte offset when `len` bytes from sector `sector` lie within a file of
/// `file_len` bytes.
fn within_file(sector: u64, len: u64, file_len: u64) -> Option<u64> {
    let at = sector.checked_mul(SECTOR)?;
    (at.checked_add(len)? <= file_len).then_some(at)
}

/// The `len` bytes at `at`, from `head` (the file's first bytes) when they lie within it.
fn read_region(
    source: &dyn ByteSource,
    head: &[u8],
    at: u64,
    len: u64,
) -> Result<Vec<u8>, FormatError> {
    let end = at.saturating_add(len);
    if let (Ok(start), Ok(stop)) = (usize::try_from(at), usize::try_from(end))
        && stop <= head.len()
    {
        return Ok(head[start..stop].to_vec());
    }
    let len = usize::try_from(len).map_err(|_| FormatError::Truncated {
        name: source.name().to_owned(),
        end: source.len(),
        wanted: end,
    })?;
    source.read_vec(at, len)
}

/// Reads the footer of a stream-optimized extent: a footer marker, a copy of the header
/// holding the real `gdOffset`, and the end-of-stream marker, in the last three sectors.
/// Returns the footer's header and its file offset.
fn read_footer(
    source: &dyn ByteSource,
    header: &SparseHeader,
    file_len: u64,
) -> Result<(SparseHeader, u64), FormatError> {
    let name = source.name();
    let sectors = file_len / SECTOR;
    if sectors < 4 {
        return Err(Fields::new(&[], FORMAT, name, 0).corrupt(
            "gdOffset",
            56,
            format!("the grain directory is at the end, but the file of {file_len} bytes has no room for a footer"),
        ));
    }
    let tail_at = (sectors - 3) * SECTOR;
    let tail = source.read_vec(tail_at, 3 * SECTOR_LEN)?;
    let (marker, rest) = tail.split_at(SECTOR_LEN);
    let (footer, end) = rest.split_at(SECTOR_LEN);
    check_marker(
        &Fields::new(marker, FORMAT, name, tail_at),
        "footer marker",
        MARKER_FOOTER,
    )?;
    check_marker(
        &Fields::new(end, FORMAT, name, tail_at + 2 * SECTOR),
        "end-of-stream marker",
        MARKER_EOS,
    )?;
    let footer_at = tail_at + SECTOR;
    let fields = Fields::new(footer, FORMAT, name, footer_at);
    let footer_header = SparseHeader::parse(&fields, name)?;
    if footer_header.gd_offset == GD_AT_END {
        return Err(fields.corrupt(
            "gdOffset",
            56,
            "the footer, too, says the grain directory is at the end",
        ));
    }
    for (field, at, ours, theirs) in [
        ("capacity", 12, header.capacity, footer_header.capacity),
        (
            "grainSize",
            20,
            header.grain_sectors,
            footer_header.grain_sectors,
        ),
        (
            "numGTEsPerGT",
            44,
            u64::from(header.gtes_per_gt),
            u64::from(footer_header.gtes_per_gt),
        ),
        (
            "compressAlgorithm",
            77,
            u64::from(header.compress_algorithm),
            u64::from(footer_header.compress_algorithm),
        ),
    ] {
        if ours != theirs {
            return Err(fields.corrupt(
                field,
                at,
                format!("the footer says {theirs}, the header {ours}"),
            ));
        }
    }
    Ok((footer_header, footer_at))
}

/// Grain tables read so far, for every sparse extent of a disk, keyed by extent and
/// directory index; the oldest go first once they pass `MAX_CACHED_TABLE_BYTES`.
#[derive(Default)]
pub(crate) struct TableCache {
    tables: HashMap<(usize, usize), Arc<[u32]>>,
    order: VecDeque<(usize, usize)>,
    bytes: usize,
}

impl std::fmt::Debug for TableCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableCache")
            .field("tables", &self.tables.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl TableCache {
    fn get(&self, key: usize, gd_index: usize) -> Option<Arc<[u32]>> {
        self.tables.get(&(key, gd_index)).cloned()
    }

    fn contains(&self, key: usize, gd_index: usize) -> bool {
        self.tables.contains_key(&(key, gd_index))
    }

    fn insert(&mut self, key: usize, gd_index: usize, table: Arc<[u32]>) {
        let len = table.len() * 4;
        while self.bytes + len > MAX_CACHED_TABLE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.tables.remove(&old) {
                self.bytes -= old.len() * 4;
            }
        }
        if self.tables.insert((key, gd_index), table).is_none() {
            self.order.push_back((key, gd_index));
            self.bytes += len;
        }
    }
}

/// The last compressed grain inflated for a partial read, so that reading a grain in
/// pieces inflates it once; and the inflater, reused for every grain.
pub(crate) struct GrainCache {
    key: Option<(usize, u64)>,
    data: Vec<u8>,
    inflater: Decompress,
}

impl Default for GrainCache {
    fn default() -> Self {
        Self {
            key: None,
            data: Vec::new(),
            inflater: Decompress::new(true),
        }
    }
}

impl std::fmt::Debug for GrainCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrainCache")
            .field("key", &self.key)
            .finish()
    }
}

impl GrainCache {
    fn holds(&self, key: usize, index: u64) -> bool {
        self.key == Some((key, index))
    }
}

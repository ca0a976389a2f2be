//! The metadata log: finding its active sequence and replaying it in memory ([MS-VHDX] §2.3).
//!
//! A writer that changes metadata (the BAT, the metadata region, the region table) first
//! writes the new sectors to the log, a circular buffer of 4 KiB sectors, and sets the
//! header's LogGuid. Only once the changes are in place does it clear LogGuid. A file whose
//! LogGuid is set may therefore hold metadata older than its log says, and must be read as
//! if the log had been replayed. This module does that without writing anything: the file's
//! bytes with the log's writes laid over them become a [`ReplayedSource`].
//!
//! ```text
//!  log entry (EntryLength bytes, a multiple of 4 KiB, may wrap around the log's end)
//!  +--------------------------------------+------------------+-----+------------------+
//!  | header (64 B) + descriptors (32 B    | data sector 1    | ... | data sector n    |
//!  | each), padded to a 4 KiB multiple    | "data", seq high,|     |                  |
//!  | "loge", CRC-32C, length, tail, seq,  | 4084 bytes,      |     |                  |
//!  | LogGuid, FlushedFileOffset, LastFile.| seq low          |     |                  |
//!  +--------------------------------------+------------------+-----+------------------+
//!  descriptor "desc": 8 leading + 4 trailing bytes of one sector, its file offset, seq
//!  descriptor "zero": a 4 KiB-aligned range of the file to fill with zeros, seq
//! ```
//!
//! A sequence is a run of valid entries, each following the previous one in the log with
//! the next sequence number. The active sequence is the one whose last entry (its head) has
//! the highest sequence number and whose head's Tail names an entry of the run; replay
//! applies the entries from that tail to the head, in order (§2.3.3).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::fields::{Fields, bounded_len};
use crate::source::check_within;
use crate::{ByteSource, FormatError};

use super::crc::crc32c_without_field;
use super::guid::Guid;
use super::header::{HEADER_OFFSETS, Header};
use super::{FORMAT, corrupt};

/// Bytes of a log sector, the unit every log entry is made of (§2.3).
const LOG_SECTOR: usize = 4096;
/// Largest log replayed, in bytes. The log is read whole into memory to be replayed; Hyper-V
/// and qemu-img make 1 MiB logs, so this leaves ample room while bounding what a header can
/// make a reader allocate.
pub(crate) const MAX_LOG_LENGTH: u64 = 64 << 20;
/// How much checksumming the search for the active sequence may do, in lengths of the log.
/// Each 4 KiB offset is checked at most once, and a real log's entries, current and stale,
/// cover it about once; a crafted log of overlapping entries that each claim the whole log
/// would otherwise cost its length squared.
const MAX_CHECKSUM_PASSES: usize = 8;

/// Descriptors name file ranges in whole 4 KiB sectors (§2.3.1.2, §2.3.1.3).
const SECTOR_ALIGNMENT: u64 = LOG_SECTOR as u64;
/// "loge", a log entry's signature (§2.3.1.1).
const ENTRY_SIGNATURE: [u8; 4] = *b"loge";
/// "zero", a zero descriptor's signature (§2.3.1.2).
const ZERO_DESCRIPTOR_SIGNATURE: [u8; 4] = *b"zero";
/// "desc", a data descriptor's signature (§2.3.1.3).
const DATA_DESCRIPTOR_SIGNATURE: [u8; 4] = *b"desc";
/// "data", a data sector's signature (§2.3.1.4).
const DATA_SECTOR_SIGNATURE: [u8; 4] = *b"data";
/// Bytes of a log entry's header and of each descriptor (§2.3.1.1 to §2.3.1.3).
const ENTRY_HEADER_LEN: usize = 64;
const DESCRIPTOR_LEN: usize = 32;
/// The start of the file that the log never writes: the file type identifier and the two
/// headers, which are updated in place because they locate the log (§2.2.2).
const UNLOGGED_PREFIX: u64 = HEADER_OFFSETS[1] + (64 << 10);

/// A valid log entry, as found at one offset of the log.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Offset in the log, a multiple of 4 KiB.
    offset: usize,
    /// Bytes, a multiple of 4 KiB, at most the log's length.
    length: usize,
    /// Offset in the log of the first entry of the sequence this one ends.
    tail: usize,
    sequence: u64,
    descriptors: usize,
    /// Bytes of the header and descriptors, padded to 4 KiB: where data sectors start.
    descriptor_area: usize,
    /// The file's length when the entry was written; a shorter file was truncated since.
    flushed_file_offset: u64,
    /// The length the file must have once the entry is applied.
    last_file_offset: u64,
}

/// The log region read into memory, and what has been learned about each of its offsets.
struct Log<'a> {
    bytes: &'a [u8],
    /// Length of `bytes`, a multiple of 1 MiB, at most MAX_LOG_LENGTH.
    length: usize,
    /// File offset of the log, for error messages.
    file_offset: u64,
    guid: Guid,
    name: &'a str,
    /// Per 4 KiB offset: not yet looked at, or the valid entry there, if any.
    seen: Vec<Option<Option<Entry>>>,
    /// Bytes the scan may still checksum.
    checksum_budget: usize,
}

impl<'a> Log<'a> {
    /// The file offset of byte `offset` of the log.
    fn file_offset_of(&self, offset: usize) -> u64 {
        self.file_offset.saturating_add(offset as u64)
    }

    /// `len` bytes of the log from `offset`, wrapping around its end.
    fn bytes_at(&self, offset: usize, len: usize) -> Cow<'a, [u8]> {
        let first = self.bytes.get(offset..).unwrap_or(&[]);
        if first.len() >= len {
            Cow::Borrowed(&first[..len])
        } else {
            let mut joined = first.to_vec();
            let rest = (len - first.len()).min(self.bytes.len());
            joined.extend_from_slice(&self.bytes[..rest]);
            Cow::Owned(joined)
        }
    }

    /// The valid entry at `offset`, looked at once.
    fn entry_at(&mut self, offset: usize) -> Result<Option<Entry>, FormatError> {
        let index = offset / LOG_SECTOR;
        if let Some(Some(known)) = self.seen.get(index) {
            return Ok(*known);
        }
        let entry = self.check_entry(offset)?;
        if let Some(slot) = self.seen.get_mut(index) {
            *slot = Some(entry);
        }
        Ok(entry)
    }

    /// Checks the entry at `offset` as §2.3.1 defines a valid one: signature, lengths,
    /// LogGuid, checksum, and every descriptor and data sector carrying its sequence number.
    fn check_entry(&mut self, offset: usize) -> Result<Option<Entry>, FormatError> {
        let head = self.bytes_at(offset, ENTRY_HEADER_LEN);
        let fields = Fields::new(&head, FORMAT, self.name, self.file_offset_of(offset));
        if fields.array::<4>("log entry Signature", 0)? != ENTRY_SIGNATURE {
            return Ok(None);
        }
        let length = fields.u32_le("log entry EntryLength", 8)? as usize;
        let tail = fields.u32_le("log entry Tail", 12)? as usize;
        let sequence = fields.u64_le("log entry SequenceNumber", 16)?;
        let descriptors = fields.u32_le("log entry DescriptorCount", 24)? as usize;
        let guid = Guid(fields.array("log entry LogGuid", 32)?);
        let flushed_file_offset = fields.u64_le("log entry FlushedFileOffset", 48)?;
        let last_file_offset = fields.u64_le("log entry LastFileOffset", 56)?;
        // At most 2^32 descriptors of 32 bytes: no overflow in 64-bit arithmetic.
        let descriptor_area = descriptors
            .saturating_mul(DESCRIPTOR_LEN)
            .saturating_add(ENTRY_HEADER_LEN)
            .div_ceil(LOG_SECTOR)
            .saturating_mul(LOG_SECTOR);
        let plausible = length >= LOG_SECTOR
            && length.is_multiple_of(LOG_SECTOR)
            && length <= self.length
            && tail.is_multiple_of(LOG_SECTOR)
            && tail < self.length
            && sequence != 0
            && guid == self.guid
            && descriptor_area <= length;
        if !plausible {
            return Ok(None);
        }

        self.checksum_budget = self.checksum_budget.checked_sub(length).ok_or_else(|| {
            corrupt(
                self.name,
                "log entry EntryLength",
                self.file_offset_of(offset) + 8,
                format!(
                    "the log's entries overlap so much that finding the active sequence would \
                     checksum more than {MAX_CHECKSUM_PASSES} times its length"
                ),
            )
        })?;
        let bytes = self.bytes_at(offset, length);
        let checksum = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if checksum != crc32c_without_field(&bytes, 4) {
            return Ok(None);
        }

        let mut data_sectors = 0;
        for index in 0..descriptors {
            let at = ENTRY_HEADER_LEN + index * DESCRIPTOR_LEN;
            let descriptor = &bytes[at..at + DESCRIPTOR_LEN];
            let signature = &descriptor[0..4];
            let file_offset = le_u64(&descriptor[16..24]);
            let valid = le_u64(&descriptor[24..32]) == sequence
                && file_offset.is_multiple_of(SECTOR_ALIGNMENT)
                && if signature == ZERO_DESCRIPTOR_SIGNATURE {
                    le_u64(&descriptor[8..16]).is_multiple_of(SECTOR_ALIGNMENT)
                } else if signature == DATA_DESCRIPTOR_SIGNATURE {
                    let sector_at = descriptor_area + data_sectors * LOG_SECTOR;
                    data_sectors += 1;
                    sector_at + LOG_SECTOR <= length
                        && data_sector_is_valid(&bytes, sector_at, sequence)
                } else {
                    false
                };
            if !valid {
                return Ok(None);
            }
        }
        Ok(Some(Entry {
            offset,
            length,
            tail,
            sequence,
            descriptors,
            descriptor_area,
            flushed_file_offset,
            last_file_offset,
        }))
    }

    /// The entries of the active sequence, oldest first, or none when the log holds no
    /// valid sequence.
    fn active_sequence(&mut self) -> Result<Vec<Entry>, FormatError> {
        let mut best: Option<Vec<Entry>> = None;
        let mut offset = 0;
        while offset < self.length {
            let Some(first) = self.entry_at(offset)? else {
                offset += LOG_SECTOR;
                continue;
            };

            // Follow the run of entries with consecutive sequence numbers from here, around
            // the log's end if need be, until it would cover more than the whole log.
            let mut run = vec![first];
            let mut covered = first.length;
            let mut wrapped = false;
            loop {
                let last = run[run.len() - 1];
                let next_offset = (last.offset + last.length) % self.length;
                wrapped |= next_offset <= last.offset;
                let Some(next) = self.entry_at(next_offset)? else {
                    break;
                };
                if Some(next.sequence) != last.sequence.checked_add(1)
                    || covered + next.length > self.length
                {
                    break;
                }
                covered += next.length;
                run.push(next);
            }

            // The sequence the head closes starts at the head's tail, which must be in the
            // run; a longer active sequence beats a shorter one with the same head.
            let head = run[run.len() - 1];
            if let Some(start) = run.iter().position(|entry| entry.offset == head.tail) {
                let beats = best.as_ref().is_none_or(|best| {
                    best.last()
                        .is_none_or(|best_head| head.sequence > best_head.sequence)
                });
                if beats {
                    best = Some(run.split_off(start));
                }
            }

            // Entries inside the run are the runs that end at the same head, so scanning
            // resumes after it; a run that went round the log's end has seen everything.
            if wrapped {
                break;
            }
            offset = head.offset + head.length;
        }
        Ok(best.unwrap_or_default())
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(array)
}

/// Whether the data sector at `at` of an entry carries its signature and the entry's
/// sequence number, split in two around the data (§2.3.1.4).
fn data_sector_is_valid(entry: &[u8], at: usize, sequence: u64) -> bool {
    let Some(sector) = entry.get(at..at + LOG_SECTOR) else {
        return false;
    };
    sector[0..4] == DATA_SECTOR_SIGNATURE
        && u64::from(le_u32(&sector[4..8])) == sequence >> 32
        && u64::from(le_u32(&sector[4092..4096])) == sequence & 0xFFFF_FFFF
}

/// Replays the log of `source` in memory when `header` says it holds entries.
///
/// Returns `None` when the log holds no valid sequence: the writer stopped after setting
/// LogGuid and before its first entry was whole, so the metadata was never touched.
pub(crate) fn replay(
    source: &Arc<dyn ByteSource>,
    header: &Header,
    name: &str,
) -> Result<Option<ReplayedSource>, FormatError> {
    let header_base = HEADER_OFFSETS[header.slot];
    let length = u64::from(header.log_length);
    let head_fields = Fields::new(&[], FORMAT, name, header_base);
    let log_len = bounded_len(&head_fields, "header LogLength", 68, length, MAX_LOG_LENGTH)?;
    let log_end = header.log_offset.saturating_add(length);
    if log_end > source.len() {
        return Err(corrupt(
            name,
            "header LogOffset",
            header_base + 72,
            format!(
                "the log at {} of {length} bytes ends past the end of the file at {}",
                header.log_offset,
                source.len()
            ),
        ));
    }
    let bytes = source.read_vec(header.log_offset, log_len)?;
    let mut log = Log {
        bytes: &bytes,
        length: log_len,
        file_offset: header.log_offset,
        guid: header.log_guid,
        name,
        seen: vec![None; log_len / LOG_SECTOR],
        checksum_budget: log_len.saturating_mul(MAX_CHECKSUM_PASSES),
    };
    let sequence = log.active_sequence()?;
    let Some(head) = sequence.last().copied() else {
        return Ok(None);
    };

    if head.flushed_file_offset > source.len() {
        return Err(corrupt(
            name,
            "log entry FlushedFileOffset",
            log.file_offset_of(head.offset) + 48,
            format!(
                "the log was written when the file was {} bytes long, but it is {} bytes: \
                 the file was truncated",
                head.flushed_file_offset,
                source.len()
            ),
        ));
    }
    let mut patches = Patches::default();
    for entry in &sequence {
        apply_entry(&log, entry, header, &mut patches)?;
    }
    Ok(Some(ReplayedSource {
        inner: Arc::clone(source),
        name: name.to_owned(),
        len: source.len().max(head.last_file_offset),
        patches,
        entries: sequence.len(),
    }))
}

/// Lays the writes of one entry over the file, descriptor by descriptor.
fn apply_entry(
    log: &Log<'_>,
    entry: &Entry,
    header: &Header,
    patches: &mut Patches,
) -> Result<(), FormatError> {
    let bytes = log.bytes_at(entry.offset, entry.length);
    let log_region = header.log_offset..header.log_offset + u64::from(header.log_length);
    let mut data_sectors = 0;
    for index in 0..entry.descriptors {
        let at = ENTRY_HEADER_LEN + index * DESCRIPTOR_LEN;
        let descriptor = &bytes[at..at + DESCRIPTOR_LEN];
        let descriptor_offset = log.file_offset_of((entry.offset + at) % log.length);
        let target = le_u64(&descriptor[16..24]);
        let (length, patch) = if descriptor[0..4] == ZERO_DESCRIPTOR_SIGNATURE {
            let length = le_u64(&descriptor[8..16]);
            let end = target.checked_add(length).ok_or_else(|| {
                corrupt(
                    log.name,
                    "log zero descriptor ZeroLength",
                    descriptor_offset + 8,
                    format!("{length} bytes from {target} would end past 2^64"),
                )
            })?;
            (length, Patch::Zeros { end })
        } else {
            // A data descriptor: the sector is its 8 leading bytes, the 4084 bytes of the
            // data sector between signature and sequence numbers, and its 4 trailing bytes.
            let sector_at = entry.descriptor_area + data_sectors * LOG_SECTOR;
            data_sectors += 1;
            let data = bytes
                .get(sector_at..sector_at + LOG_SECTOR)
                .ok_or_else(|| {
                    corrupt(
                        log.name,
                        "log entry EntryLength",
                        log.file_offset_of(entry.offset) + 8,
                        "the entry ends before its data sectors",
                    )
                })?;
            let mut sector = vec![0u8; LOG_SECTOR].into_boxed_slice();
            sector[..8].copy_from_slice(&descriptor[8..16]);
            sector[8..4092].copy_from_slice(&data[8..4092]);
            sector[4092..].copy_from_slice(&descriptor[4..8]);
            (LOG_SECTOR as u64, Patch::Sector(sector))
        };
        let Some(end) = target.checked_add(length) else {
            return Err(corrupt(
                log.name,
                "log descriptor FileOffset",
                descriptor_offset + 16,
                format!("{target} is too large"),
            ));
        };
        if target < UNLOGGED_PREFIX || (target < log_region.end && log_region.start < end) {
            return Err(corrupt(
                log.name,
                "log descriptor FileOffset",
                descriptor_offset + 16,
                format!("the log writes bytes {target}..{end}, over the headers or the log itself"),
            ));
        }
        patches.insert(target, end, patch);
    }
    Ok(())
}

/// What the log writes over one range of the file.
#[derive(Debug)]
enum Patch {
    /// Zeros up to `end`.
    Zeros { end: u64 },
    /// One 4 KiB sector.
    Sector(Box<[u8]>),
}

/// Non-overlapping writes, keyed by their start in the file. All are 4 KiB aligned.
#[derive(Debug, Default)]
struct Patches {
    map: BTreeMap<u64, Patch>,
}

impl Patches {
    fn end_of(start: u64, patch: &Patch) -> u64 {
        match patch {
            Patch::Zeros { end } => *end,
            Patch::Sector(bytes) => start + bytes.len() as u64,
        }
    }

    /// Lays `patch` over `start..end`, cutting back the older writes it covers.
    fn insert(&mut self, start: u64, end: u64, patch: Patch) {
        if start >= end {
            return;
        }
        let covered: Vec<u64> = self
            .map
            .range(..end)
            .rev()
            .take_while(|&(&at, old)| Self::end_of(at, old) > start)
            .map(|(&at, _)| at)
            .collect();
        for at in covered {
            // Sectors are aligned like every range, so a covered sector is covered whole.
            if let Some(Patch::Zeros { end: old_end }) = self.map.remove(&at) {
                if at < start {
                    self.map.insert(at, Patch::Zeros { end: start });
                }
                if old_end > end {
                    self.map.insert(end, Patch::Zeros { end: old_end });
                }
            }
        }
        self.map.insert(start, patch);
    }

    /// Lays the writes that touch `offset..offset + buf.len()` over `buf`.
    fn apply(&self, offset: u64, buf: &mut [u8]) {
        let end = offset.saturating_add(buf.len() as u64);
        for (&at, patch) in self.map.range(..end).rev() {
            let patch_end = Self::end_of(at, patch);
            if patch_end <= offset {
                break;
            }
            let lo = at.max(offset);
            let hi = patch_end.min(end);
            // Within `buf` and within the patch, so both fit a usize.
            let index = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
            let target = &mut buf[index(lo - offset)..index(hi - offset)];
            match patch {
                Patch::Zeros { .. } => target.fill(0),
                Patch::Sector(bytes) => {
                    target.copy_from_slice(&bytes[index(lo - at)..index(hi - at)]);
                }
            }
        }
    }
}

/// The image file as its log says it reads: the file's bytes with the active sequence's
/// writes laid over them, and zeros past the file's end up to the length the log gives it.
/// Nothing is written to the file.
#[derive(Debug)]
pub(crate) struct ReplayedSource {
    inner: Arc<dyn ByteSource>,
    name: String,
    len: u64,
    patches: Patches,
    /// How many log entries were replayed.
    entries: usize,
}

impl ReplayedSource {
    /// How many log entries were replayed.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }
}

impl ByteSource for ReplayedSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        check_within(&self.name, self.len, offset, buf.len())?;
        let in_file = usize::try_from(self.inner.len().saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(in_file);
        if !head.is_empty() {
            self.inner.read_exact_at(offset, head)?;
        }
        tail.fill(0);
        self.patches.apply(offset, buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(byte: u8) -> Patch {
        Patch::Sector(vec![byte; LOG_SECTOR].into_boxed_slice())
    }

    #[test]
    fn later_writes_cut_back_earlier_ones() {
        let mut patches = Patches::default();
        patches.insert(0, 4 * 4096, Patch::Zeros { end: 4 * 4096 });
        patches.insert(4096, 2 * 4096, sector(7));
        patches.insert(3 * 4096, 4 * 4096, sector(9));
        patches.insert(3 * 4096, 5 * 4096, Patch::Zeros { end: 5 * 4096 });

        let mut buf = vec![1u8; 6 * 4096];
        patches.apply(0, &mut buf);
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..2 * 4096].iter().all(|&b| b == 7));
        assert!(buf[2 * 4096..5 * 4096].iter().all(|&b| b == 0));
        assert!(buf[5 * 4096..].iter().all(|&b| b == 1));
        assert_eq!(patches.map.len(), 4);
    }

    #[test]
    fn reads_that_start_inside_a_patch_see_only_their_part() {
        let mut patches = Patches::default();
        let mut bytes = vec![0u8; LOG_SECTOR];
        bytes[100] = 5;
        patches.insert(8192, 12288, Patch::Sector(bytes.into_boxed_slice()));
        let mut buf = [1u8; 8];
        patches.apply(8192 + 96, &mut buf);
        assert_eq!(buf, [0, 0, 0, 0, 5, 0, 0, 0]);
    }
}

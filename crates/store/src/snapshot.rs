//! Snapshot ids and commit records.
//!
//! A commit record is the last object a snapshot writes; until it exists the snapshot does
//! not. It holds everything needed to read the snapshot back: the disk size, the block
//! size, and the ids of its manifest segments in order. It is sealed like every other
//! object, so in an encrypted store its description and tags are encrypted too.
//!
//! The segment ids are also kept in the envelope's clear part, so that a copy between
//! stores of one key domain can find what a snapshot references without any key:
//!
//! ```text
//! offset  size        field
//! 0       4           magic "BYR1"
//! 4       4           segment count n, u32 little-endian
//! 8       32 * n      the segment ids, in order
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use blockyard_crypto::ObjectId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// A snapshot's id: `snap-` and 32 lowercase hex digits of a ULID's 16 bytes.
///
/// The first 48 bits are the creation time in milliseconds, so ids sort by time; the rest
/// are random, so writers on different machines never collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(u128);

impl SnapshotId {
    /// A new id for a snapshot made now.
    pub fn generate() -> Self {
        Self(ulid::Ulid::new().0)
    }

    /// The id's 16 bytes, big-endian.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id with these 16 bytes, big-endian.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// When the id was made.
    pub fn created(&self) -> DateTime<Utc> {
        let millis = i64::try_from(ulid::Ulid(self.0).timestamp_ms()).unwrap_or(i64::MAX);
        DateTime::from_timestamp_millis(millis).unwrap_or_default()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snap-{:032x}", self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SnapshotId {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self> {
        let bad = || StoreError::BadSnapshotId {
            input: input.to_owned(),
        };
        let hex = input.strip_prefix("snap-").ok_or_else(bad)?;
        let valid = hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(bad());
        }
        u128::from_str_radix(hex, 16).map(Self).map_err(|_| bad())
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Block counts of a snapshot, fixed at commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCounts {
    /// Blocks the disk has (its size divided by the block size, rounded up).
    pub total: u64,
    /// Blocks that hold data.
    pub data: u64,
    /// Blocks that read as zero and are not stored.
    pub zero: u64,
}

/// What writing a snapshot cost, as recorded by the writer that made it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// Data blocks uploaded because the store lacked them.
    pub blocks_new: u64,
    /// Data blocks the store already had.
    pub blocks_reused: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes uploaded: sealed blocks and manifest segments.
    pub bytes_stored: u64,
}

/// A snapshot's commit record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The snapshot's id.
    pub id: SnapshotId,
    /// When the snapshot was committed.
    pub created: DateTime<Utc>,
    /// The disk's size in bytes.
    pub size: u64,
    /// The block size the snapshot was cut with.
    pub block_size: u64,
    /// Positions per manifest segment.
    pub segment_blocks: u32,
    /// The snapshot this one was made from, if any. Only a hint: every snapshot is complete
    /// on its own and stays readable when its parent is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// User tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Block counts.
    pub blocks: BlockCounts,
    /// What the write cost.
    pub stats: WriteStats,
    /// The manifest segments in order; segment `i` covers blocks
    /// `i * segment_blocks .. (i + 1) * segment_blocks`.
    pub segments: Vec<ObjectId>,
}

impl SnapshotRecord {
    /// Blocks the snapshot has.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// Positions in segment `segment`: full except for the last.
    pub fn positions_in_segment(&self, segment: usize) -> u32 {
        let per = u64::from(self.segment_blocks);
        let start = segment as u64 * per;
        let left = self.block_count().saturating_sub(start).min(per);
        u32::try_from(left).unwrap_or(self.segment_blocks)
    }

    /// Checks the record's shape against itself, so that a damaged or hostile record is
    /// refused before anything trusts its numbers.
    pub(crate) fn validate(&self) -> Result<()> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "snapshot record",
            name: self.id.to_string(),
            reason,
        };
        crate::config::validate_block_size(self.block_size).map_err(|e| corrupt(e.to_string()))?;
        if self.segment_blocks == 0 || self.segment_blocks > 1 << 20 {
            return Err(corrupt(format!(
                "segment size {} is out of range",
                self.segment_blocks
            )));
        }
        let expected = self.block_count().div_ceil(u64::from(self.segment_blocks));
        if self.segments.len() as u64 != expected {
            return Err(corrupt(format!(
                "it lists {} segments where its size needs {expected}",
                self.segments.len()
            )));
        }
        if self.blocks.total != self.block_count()
            || self.blocks.data.checked_add(self.blocks.zero) != Some(self.blocks.total)
        {
            return Err(corrupt("its block counts do not add up".to_owned()));
        }
        Ok(())
    }
}

/// Magic number of a commit record's clear part.
const REFERENCES_MAGIC: &[u8; 4] = b"BYR1";

/// Length of the clear part's fixed header: magic and count.
const REFERENCES_HEADER_LEN: usize = 8;

/// Length of an object id, in bytes.
const ID_LEN: usize = 32;

/// The clear part of a commit record naming `segments`: what the envelope of every commit
/// record carries readable without a key (layout in this module's docs).
pub fn record_references(segments: &[ObjectId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REFERENCES_HEADER_LEN + ID_LEN * segments.len());
    out.extend_from_slice(REFERENCES_MAGIC);
    out.extend_from_slice(
        &u32::try_from(segments.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for id in segments {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Parses a commit record's clear part. The count must match the bytes exactly, so a
/// hostile count cannot make this allocate more than the input's size.
pub(crate) fn decode_references(bytes: &[u8]) -> std::result::Result<Vec<ObjectId>, String> {
    let Some((header, ids)) = bytes.split_first_chunk::<REFERENCES_HEADER_LEN>() else {
        return Err(format!(
            "its clear part is {} bytes, shorter than its {REFERENCES_HEADER_LEN}-byte header",
            bytes.len()
        ));
    };
    if &header[..4] != REFERENCES_MAGIC {
        return Err("its clear part does not start with the magic \"BYR1\"".to_owned());
    }
    let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if ids.len() as u64 != u64::from(count) * ID_LEN as u64 {
        return Err(format!(
            "its clear part names {count} segments in {} bytes of ids",
            ids.len()
        ));
    }
    Ok(ids
        .chunks_exact(ID_LEN)
        .map(|chunk| {
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(chunk);
            ObjectId::from_bytes(id)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_refuse_a_count_that_does_not_match() {
        let ids = vec![ObjectId::from_bytes([1; 32]), ObjectId::from_bytes([2; 32])];
        let mut bytes = record_references(&ids);

        assert_eq!(decode_references(&bytes), Ok(ids));
        bytes[4] = 200;
        assert!(decode_references(&bytes).is_err());
        bytes[4] = 2;
        bytes[0] = b'X';
        assert!(decode_references(&bytes).is_err());
        assert!(decode_references(&bytes[..5]).is_err());
    }

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let first = SnapshotId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = SnapshotId::generate();

        let text = first.to_string();

        assert!(text.starts_with("snap-") && text.len() == 37, "{text}");
        assert_eq!(text.parse::<SnapshotId>().ok(), Some(first));
        assert!(first < second && text < second.to_string());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for input in [
            "snap-",
            "snap-0123",
            "vol-0123456789abcdef0123456789abcdef",
            "snap-0123456789ABCDEF0123456789ABCDEF",
            "snap-0123456789abcdef0123456789abcdeg",
            "snap-0123456789abcdef0123456789abcdef0",
        ] {
            assert!(input.parse::<SnapshotId>().is_err(), "{input} accepted");
        }
    }
}

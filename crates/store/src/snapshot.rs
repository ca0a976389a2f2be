//! Snapshot ids and commit records.
//!
//! A commit record is the last object a snapshot writes; until it exists the snapshot does
//! not. It holds everything needed to read the snapshot back: the disk size, the block
//! size, and the ids of its manifest segments in order. It is sealed like every other
//! object, so in an encrypted store its description and tags are encrypted too.

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

#[cfg(test)]
mod tests {
    use super::*;

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

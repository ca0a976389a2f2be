//! Manifest segments: which block holds each position of one stretch of a disk.
//!
//! A segment covers up to [`SEGMENT_BLOCKS`](crate::config::SEGMENT_BLOCKS) consecutive
//! positions. It names no absolute offset, so two snapshots whose stretch holds the same
//! blocks share one segment object, and an unchanged 2 GiB stretch costs nothing to commit.
//!
//! ```text
//! offset  size          field
//! 0       4             magic "BYS1"
//! 4       4             positions n, u32 little-endian, 1..=1048576
//! 8       ceil(n/8)     data bitmap: bit (i % 8) of byte (i / 8) set = position i has data
//! ...     32 * ones     the block id of each data position, in position order
//! ```
//!
//! Positions whose bit is clear read as zero. The segment's id is the keyed hash of these
//! bytes, and the object is sealed like a block.

use blockyard_crypto::ObjectId;

/// Magic number at the start of every segment.
const MAGIC: &[u8; 4] = b"BYS1";
/// Length of the fixed header: magic and position count.
const HEADER_LEN: usize = 8;
/// Most positions a segment may claim; bounds what a hostile segment can make us allocate.
const MAX_POSITIONS: u32 = 1 << 20;

/// A decoded manifest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    entries: Vec<Option<ObjectId>>,
}

impl Segment {
    /// A segment of `positions` zero positions.
    pub fn zeroed(positions: u32) -> Self {
        Self {
            entries: vec![None; positions as usize],
        }
    }

    /// Positions in the segment.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a segment with no positions; never the case for a stored one.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The block at `position`, or `None` when it reads as zero or is out of range.
    pub fn get(&self, position: usize) -> Option<ObjectId> {
        self.entries.get(position).copied().flatten()
    }

    /// Sets the block at `position`; `None` marks it zero. Out-of-range positions are a
    /// caller bug and are ignored in release builds.
    pub fn set(&mut self, position: usize, block: Option<ObjectId>) {
        debug_assert!(
            position < self.entries.len(),
            "position {position} out of range"
        );
        if let Some(entry) = self.entries.get_mut(position) {
            *entry = block;
        }
    }

    /// Every position in order.
    pub fn entries(&self) -> &[Option<ObjectId>] {
        &self.entries
    }

    /// Positions that hold data.
    pub fn data_count(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    /// The segment's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.entries.len();
        let mut out = Vec::with_capacity(HEADER_LEN + n.div_ceil(8) + 32 * self.data_count());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for id in self.entries.iter().flatten() {
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    /// Parses a segment's bytes. The error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let header = bytes.get(..HEADER_LEN).ok_or("shorter than its header")?;
        if &header[..4] != MAGIC {
            return Err("wrong magic number".to_owned());
        }
        let n = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if n == 0 || n > MAX_POSITIONS {
            return Err(format!("position count {n} is out of range"));
        }
        let n = n as usize;
        let bitmap_end = HEADER_LEN + n.div_ceil(8);
        let bitmap = bytes
            .get(HEADER_LEN..bitmap_end)
            .ok_or("truncated in its bitmap")?;
        if !n.is_multiple_of(8) && bitmap[n / 8] >> (n % 8) != 0 {
            return Err("bits set past the last position".to_owned());
        }
        let ones: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        let ids = &bytes[bitmap_end..];
        if ids.len() != ones * 32 {
            return Err(format!(
                "{} bytes of ids for {ones} data positions",
                ids.len()
            ));
        }

        let mut chunks = ids.chunks_exact(32);
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            if bitmap[i / 8] & (1 << (i % 8)) == 0 {
                entries.push(None);
            } else {
                let chunk = chunks.next().ok_or("ran out of ids")?;
                let mut id = [0u8; 32];
                id.copy_from_slice(chunk);
                entries.push(Some(ObjectId::from_bytes(id)));
            }
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn segment_strategy() -> impl Strategy<Value = Segment> {
        prop::collection::vec(prop::option::of(any::<[u8; 32]>()), 1..600).prop_map(|v| Segment {
            entries: v.into_iter().map(|e| e.map(ObjectId::from_bytes)).collect(),
        })
    }

    proptest! {
        #[test]
        fn segments_round_trip(segment in segment_strategy()) {
            let bytes = segment.encode();
            prop_assert_eq!(Segment::decode(&bytes), Ok(segment));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..300)
        ) {
            let _ = Segment::decode(&bytes);
        }

        #[test]
        fn truncated_segments_are_refused(segment in segment_strategy(), cut in 1usize..64) {
            let bytes = segment.encode();
            let cut = cut.min(bytes.len());
            prop_assert!(Segment::decode(&bytes[..bytes.len() - cut]).is_err());
        }
    }

    #[test]
    fn a_hostile_position_count_is_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());

        let err = Segment::decode(&bytes).expect_err("hostile count");

        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn stray_bitmap_bits_past_the_end_are_refused() {
        let mut segment = Segment::zeroed(3);
        segment.set(1, Some(ObjectId::from_bytes([7; 32])));
        let mut bytes = segment.encode();
        bytes[8] |= 0b1000_0000;

        assert!(Segment::decode(&bytes).is_err());
    }
}

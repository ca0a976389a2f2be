//! Writing a snapshot out as an image file.
//!
//! A writer is told the whole layout first (the disk's size and which blocks hold data,
//! which a store knows from its manifests without reading a block) and then receives the
//! data blocks in ascending order. Knowing the layout up front lets every format put its
//! tables before the data they describe, so the output is written strictly front to back
//! and may be a pipe or an upload. Blocks the layout does not list stay holes.

use crate::{FormatError, ImageSink};

/// What is about to be exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLayout {
    /// The disk's size in bytes.
    pub size: u64,
    /// The size of the blocks the feed yields; a power of two. The last block of a disk
    /// whose size is not a multiple is shorter.
    pub block_size: u64,
    /// Indexes of the blocks that hold data, ascending. Every other block is zero.
    pub data_blocks: Vec<u64>,
}

impl ExportLayout {
    /// Checks that the layout is one a writer can trust: a power-of-two block size and
    /// ascending block indexes within the disk.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |problem: String| FormatError::Feed {
            format: "any",
            problem,
        };
        if !self.block_size.is_power_of_two() {
            return Err(bad(format!(
                "block size {} is not a power of two",
                self.block_size
            )));
        }
        let count = self.block_count();
        if let Some(pair) = self.data_blocks.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(bad(format!(
                "block {} listed after block {}",
                pair[1], pair[0]
            )));
        }
        if let Some(&last) = self.data_blocks.last()
            && last >= count
        {
            return Err(bad(format!(
                "block {last} lies past the disk's {count} blocks"
            )));
        }
        Ok(())
    }

    /// How many blocks the disk has, counting a short last block.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// The length of block `index`: the block size, or less for the last block.
    pub fn block_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(self.block_size);
        self.size.saturating_sub(start).min(self.block_size)
    }

    /// Whether any data block overlaps the byte range `start..end` of the disk. Writers
    /// use it to decide which of their own units (clusters, grains, VHD blocks) to
    /// allocate; `data_blocks` is sorted, so this is a binary search.
    pub fn has_data_in(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        let first = start / self.block_size;
        let last = (end - 1) / self.block_size;
        let at = self.data_blocks.partition_point(|&index| index < first);
        self.data_blocks.get(at).is_some_and(|&index| index <= last)
    }
}

/// The data blocks of an export, in the order of [`ExportLayout::data_blocks`].
pub trait BlockFeed: Send {
    /// The next data block: its index and its bytes (of [`ExportLayout::block_len`]).
    /// `None` once every listed block has been given.
    fn next_block(&mut self) -> Result<Option<(u64, Vec<u8>)>, FormatError>;
}

impl<I> BlockFeed for I
where
    I: Iterator<Item = Result<(u64, Vec<u8>), FormatError>> + Send,
{
    fn next_block(&mut self) -> Result<Option<(u64, Vec<u8>)>, FormatError> {
        self.next().transpose()
    }
}

/// Identity and time stamps that formats record in their headers. Passed in rather than
/// made up inside, so that the same export is byte-for-byte the same in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageIdentity {
    /// A random 16-byte id (VHD unique id, VHDX ids, VMDK content id).
    pub unique_id: [u8; 16],
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A cursor over the feed that checks each block against the layout: the one a writer
/// expects next, of the right length. Writers call [`FeedCursor::next_expected`] with the
/// index they are about to write.
#[derive(Debug)]
pub struct FeedCursor<'a, F: ?Sized> {
    feed: &'a mut F,
    layout: &'a ExportLayout,
    format: &'static str,
    given: usize,
}

impl<'a, F: BlockFeed + ?Sized> FeedCursor<'a, F> {
    /// Wraps `feed` for an export in `format` of `layout`.
    pub fn new(feed: &'a mut F, layout: &'a ExportLayout, format: &'static str) -> Self {
        Self {
            feed,
            layout,
            format,
            given: 0,
        }
    }

    /// The next block from the feed, which must be block `index`, the next one listed.
    pub fn next_expected(&mut self, index: u64) -> Result<Vec<u8>, FormatError> {
        let feed_error = |problem: String| FormatError::Feed {
            format: self.format,
            problem,
        };
        if self.layout.data_blocks.get(self.given) != Some(&index) {
            return Err(feed_error(format!(
                "block {index} is not the next listed data block"
            )));
        }
        let (got, data) = self
            .feed
            .next_block()?
            .ok_or_else(|| feed_error(format!("the feed ended before block {index}")))?;
        if got != index {
            return Err(feed_error(format!(
                "the feed gave block {got} where {index} was due"
            )));
        }
        let want = self.layout.block_len(index);
        if data.len() as u64 != want {
            return Err(feed_error(format!(
                "block {index} has {} bytes, not {want}",
                data.len()
            )));
        }
        self.given += 1;
        Ok(data)
    }

    /// Checks that the feed has nothing left once every listed block was written.
    pub fn finish(self) -> Result<(), FormatError> {
        if self.given != self.layout.data_blocks.len() {
            return Err(FormatError::Feed {
                format: self.format,
                problem: format!(
                    "{} of {} data blocks were written",
                    self.given,
                    self.layout.data_blocks.len()
                ),
            });
        }
        match self.feed.next_block()? {
            None => Ok(()),
            Some((index, _)) => Err(FormatError::Feed {
                format: self.format,
                problem: format!("the feed gave block {index}, which the layout does not list"),
            }),
        }
    }
}

/// Writes the layout as a raw image: data blocks in place, zeros as holes (or zero bytes
/// on a stream).
pub fn write_raw(
    layout: &ExportLayout,
    feed: &mut dyn BlockFeed,
    sink: &mut dyn ImageSink,
) -> Result<(), FormatError> {
    layout.validate()?;
    let mut cursor = FeedCursor::new(feed, layout, "raw");
    for &index in &layout.data_blocks {
        let start = index * layout.block_size;
        sink.write_zeros(start - sink.position())?;
        let data = cursor.next_expected(index)?;
        sink.write_all(&data)?;
    }
    cursor.finish()?;
    sink.write_zeros(layout.size - sink.position())?;
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamSink;

    fn layout(size: u64, data_blocks: Vec<u64>) -> ExportLayout {
        ExportLayout {
            size,
            block_size: 4096,
            data_blocks,
        }
    }

    #[test]
    fn raw_export_places_blocks_and_fills_the_rest_with_zeros() {
        let layout = layout(3 * 4096 + 100, vec![1, 3]);
        let mut feed = vec![Ok((1, vec![7u8; 4096])), Ok((3, vec![9u8; 100]))].into_iter();
        let mut sink = StreamSink::new(Vec::new(), "out");
        write_raw(&layout, &mut feed, &mut sink).expect("export");
        let out = sink.into_inner();
        assert_eq!(out.len() as u64, layout.size);
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert!(out[4096..8192].iter().all(|&b| b == 7));
        assert!(out[3 * 4096..].iter().all(|&b| b == 9));
    }

    #[test]
    fn a_feed_that_strays_from_the_layout_is_refused() {
        let layout = layout(3 * 4096, vec![1]);
        let mut wrong_index = vec![Ok((2, vec![7u8; 4096]))].into_iter();
        let mut sink = StreamSink::new(Vec::new(), "out");
        assert!(write_raw(&layout, &mut wrong_index, &mut sink).is_err());

        let mut short = vec![Ok((1, vec![7u8; 10]))].into_iter();
        let mut sink = StreamSink::new(Vec::new(), "out");
        assert!(write_raw(&layout, &mut short, &mut sink).is_err());

        let mut extra = vec![Ok((1, vec![7u8; 4096])), Ok((2, vec![1u8; 4096]))].into_iter();
        let mut sink = StreamSink::new(Vec::new(), "out");
        assert!(write_raw(&layout, &mut extra, &mut sink).is_err());
    }

    #[test]
    fn layouts_out_of_order_or_past_the_end_are_refused() {
        assert!(layout(3 * 4096, vec![2, 1]).validate().is_err());
        assert!(layout(3 * 4096, vec![3]).validate().is_err());
        assert!(layout(3 * 4096, vec![0, 2]).validate().is_ok());
    }

    #[test]
    fn has_data_in_finds_blocks_overlapping_a_range() {
        let layout = layout(16 * 4096, vec![2, 9]);
        assert!(!layout.has_data_in(0, 2 * 4096));
        assert!(layout.has_data_in(0, 2 * 4096 + 1));
        assert!(!layout.has_data_in(3 * 4096, 9 * 4096));
        assert!(layout.has_data_in(9 * 4096 + 5, 9 * 4096 + 6));
        assert!(!layout.has_data_in(10 * 4096, 16 * 4096));
    }
}

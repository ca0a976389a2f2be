//! Writing a snapshot out while fetching only the blocks no local file already holds.
//!
//! ```text
//!  each data block of the snapshot, 16 at a time          wanted: its id in the manifest
//!    1. the previous output, same position   ─ hashes to the id? ─yes→ reuse
//!    2. each seed, same position             ─ hashes to the id? ─yes→ reuse
//!    3. the seeds by content                 ─ the id in the seeds' index? ─yes→ reuse
//!       (built on the first block 1 and 2 miss: every seed block that meets data and
//!       is not all zero, hashed once, on every core)
//!    4. the block cache                      ─ opens and hashes to the id? ─yes→ reuse
//!    5. the store                            ─ fetch, open, hash to the id; keep in cache
//!  ──► one writer thread, blocks in order ──► format writer (raw: holes stay holes)
//! ```
//!
//! Every block handed to the writer has been hashed with the store's id key and found equal
//! to the id its position needs, whatever it came from, so a pull writes exactly the
//! snapshot or fails. The keyed hash is what makes a local file usable at all: a block of a
//! seed is named the way the store names it only by hashing it with the store's key.
//!
//! Positions first, because a nightly image mostly keeps its blocks where they were;
//! content second, for files that moved. Only block-aligned content is found: a seed whose
//! data moved by less than a block matches nothing by content.
//!
//! Holes in the local files are never read (see [`local_file`]): a position that lies
//! wholly in a hole reads as zeros, and a snapshot records an all-zero block as zero, never
//! as data (one recorded as data all the same would be fetched: slower, still correct).
//!
//! Known shortcoming: a seed block that the index hashes and that later matches at its own
//! position is read and hashed twice, once for the index and once to verify it as it is
//! written; with a nightly image, whose first block (the file system's superblock) always
//! changes, that is most of the seed's data. Keeping the index from hashing such blocks
//! needs the misses looked up after the positional matches, out of the writer's order.

mod local_file;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use blockyard_crypto::ObjectId;
use blockyard_formats::export::{BlockFeed, ExportLayout};
use blockyard_formats::{FormatError, is_zero};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use self::local_file::LocalFile;
use crate::block_cache::{BlockCache, CacheTrim};
use crate::error::{Result, StoreError};
use crate::export::{open_layout, write_blocks};
use crate::progress::Progress;
use crate::{SnapshotId, Store};

/// Blocks looked up and fetched ahead of the writer.
const READ_AHEAD: usize = 16;

/// Where [`pull`] may find blocks before it asks the store.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// An earlier raw image at the output's place (usually an older version of the same
    /// image), read block by block at the same positions.
    pub previous: Option<PathBuf>,
    /// Raw disk images that probably share blocks with the snapshot, read by position and
    /// then by content.
    pub seeds: Vec<PathBuf>,
    /// A block cache to read from, fill with what is fetched, and trim at the end.
    pub cache: Option<BlockCache>,
}

/// Where the blocks of a pull came from.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PullSummary {
    /// The disk's size.
    pub size: u64,
    /// Blocks with data written.
    pub blocks_data: u64,
    /// Blocks that read as zero and were left as holes.
    pub blocks_zero: u64,
    /// Blocks fetched from the store.
    pub blocks_fetched: u64,
    /// Bytes fetched from the store: sealed blocks, as they travel.
    pub bytes_fetched: u64,
    /// Blocks found at their position in the previous output.
    pub blocks_from_output: u64,
    /// Blocks found at their position in a seed.
    pub blocks_from_seeds_by_position: u64,
    /// Blocks found elsewhere in a seed, by content.
    pub blocks_from_seeds_by_content: u64,
    /// Blocks read from the block cache.
    pub blocks_from_cache: u64,
    /// What trimming the cache did, when there is one.
    pub cache: Option<CacheTrim>,
}

/// Where one block came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Output,
    SeedPosition,
    SeedContent,
    Cache,
    /// Fetched from the store; the sealed size.
    Store(u64),
}

/// Where a block lies in the seeds: which seed, at what offset.
type ContentIndex = HashMap<ObjectId, (usize, u64)>;

/// The local files of a pull and the seeds' content index, built on first need.
#[derive(Debug)]
struct LocalBlocks {
    store: Store,
    block_size: u64,
    previous: Option<LocalFile>,
    seeds: Vec<LocalFile>,
    by_content: Mutex<Option<Arc<ContentIndex>>>,
    cache: Option<BlockCache>,
}

impl LocalBlocks {
    /// Finds block `index` of `len` bytes with id `wanted` in the local files or the cache.
    /// Blocking file I/O and hashing.
    fn find(&self, index: u64, len: u64, wanted: &ObjectId) -> Result<Option<(Vec<u8>, Origin)>> {
        let offset = index * self.block_size;
        let matches = |data: &Vec<u8>| self.store.block_id(data) == *wanted;

        if let Some(previous) = &self.previous
            && let Some(data) = previous.read_data(offset, len)?.filter(matches)
        {
            return Ok(Some((data, Origin::Output)));
        }
        for seed in &self.seeds {
            if let Some(data) = seed.read_data(offset, len)?.filter(matches) {
                return Ok(Some((data, Origin::SeedPosition)));
            }
        }
        if !self.seeds.is_empty()
            && let Some(&(seed, at)) = self.content_index()?.get(wanted)
        {
            // Read again and re-hash: the seed may have changed since it was indexed.
            if let Some(data) = self.seeds[seed].read(at, len)?.filter(matches) {
                return Ok(Some((data, Origin::SeedContent)));
            }
        }
        if let Some(cache) = &self.cache
            && let Some((data, _)) = cache.get(&self.store, wanted)
            && data.len() as u64 == len
        {
            return Ok(Some((data, Origin::Cache)));
        }
        Ok(None)
    }

    /// The seeds' content index, built by the first caller while the others wait.
    fn content_index(&self) -> Result<Arc<ContentIndex>> {
        let mut slot = self
            .by_content
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(index) = slot.as_ref() {
            return Ok(Arc::clone(index));
        }
        let started = Instant::now();
        let mut index = ContentIndex::new();
        let mut read = 0;
        for (number, seed) in self.seeds.iter().enumerate() {
            let blocks = seed.data_blocks(self.block_size);
            read += blocks.len();
            // Blocks in order and the first place kept, so the index is the same every time.
            for (id, offset) in self.hash_blocks(seed, &blocks)? {
                index.entry(id).or_insert((number, offset));
            }
        }
        tracing::debug!(
            blocks_read = read,
            blocks_indexed = index.len(),
            seconds = started.elapsed().as_secs_f64(),
            "indexed the seeds by content"
        );
        let index = Arc::new(index);
        *slot = Some(Arc::clone(&index));
        Ok(index)
    }

    /// The id and offset of each block of `seed` numbered in `blocks` that holds anything
    /// but zeros (a pull never looks up a zero block), in the order of `blocks`. The blocks
    /// are shared out in contiguous runs to a thread per core: every other lookup waits
    /// for the index, so the cores have nothing else to do.
    fn hash_blocks(&self, seed: &LocalFile, blocks: &[u64]) -> Result<Vec<(ObjectId, u64)>> {
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let run = blocks.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = blocks
                .chunks(run)
                .map(|run| scope.spawn(move || self.hash_run(seed, run)))
                .collect();
            let mut found = Vec::with_capacity(blocks.len());
            for worker in workers {
                let run = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                found.extend(run);
            }
            Ok(found)
        })
    }

    /// [`hash_blocks`](Self::hash_blocks) for one run, on one thread, through one buffer.
    fn hash_run(&self, seed: &LocalFile, blocks: &[u64]) -> Result<Vec<(ObjectId, u64)>> {
        let mut buf = vec![0u8; usize::try_from(self.block_size).unwrap_or(0)];
        let mut found = Vec::with_capacity(blocks.len());
        for &number in blocks {
            let offset = number * self.block_size;
            let len = self.block_size.min(seed.len() - offset);
            let data = &mut buf[..usize::try_from(len).unwrap_or(0)];
            // A block past the end of a seed that shrank since it was opened is left out.
            if seed.read_into(offset, data)? && !is_zero(data) {
                found.push((self.store.block_id(data), offset));
            }
        }
        Ok(found)
    }
}

/// Pulls snapshot `id`: computes its layout, then runs `write` (a format writer with its
/// sink) on a thread of its own with every data block in order, each taken from the first
/// of the previous output, the seeds, the cache and the store that holds it, and verified
/// against its id. Trims the cache at the end.
///
/// ```
/// use std::sync::Arc;
///
/// use blockyard_formats::FileSink;
/// use blockyard_formats::export::{BlockFeed, ExportLayout, write_raw};
/// use blockyard_store::{Location, NoProgress, PullOptions, SnapshotOptions, SnapshotWriter};
/// use blockyard_store::{Store, pull};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Store::init(&Location::Memory, Default::default()).await?;
/// let block = store.block_size() as usize;
/// let options = SnapshotOptions { size: 2 * block as u64, ..Default::default() };
/// let writer = SnapshotWriter::begin(&store, options).await?;
/// writer.put_block(0, vec![7u8; block]).await?;
/// writer.put_block(1, vec![8u8; block]).await?;
/// let record = writer.commit().await?;
///
/// // A seed that holds block 0 already: only block 1 is fetched.
/// let dir = tempfile::tempdir()?;
/// let seed = dir.path().join("seed.img");
/// std::fs::write(&seed, vec![7u8; block])?;
/// let output = dir.path().join("disk.img");
/// let mut sink = FileSink::create(&output)?;
/// let write = move |layout: &ExportLayout, feed: &mut dyn BlockFeed| {
///     write_raw(layout, feed, &mut sink)
/// };
/// let options = PullOptions { seeds: vec![seed], ..Default::default() };
/// let summary = pull(&store, &record.id, options, write, Arc::new(NoProgress)).await?;
/// assert_eq!(summary.blocks_from_seeds_by_position, 1);
/// assert_eq!(summary.blocks_fetched, 1);
/// assert_eq!(std::fs::read(&output)?[block..], vec![8u8; block]);
/// # Ok(())
/// # }
/// ```
pub async fn pull<W>(
    store: &Store,
    id: &SnapshotId,
    options: PullOptions,
    write: W,
    progress: Arc<dyn Progress>,
) -> Result<PullSummary>
where
    W: FnOnce(&ExportLayout, &mut dyn BlockFeed) -> Result<(), FormatError> + Send + 'static,
{
    let (reader, data_blocks, layout) = open_layout(store, id).await?;
    let record = reader.record().clone();
    let local = Arc::new(LocalBlocks {
        store: store.clone(),
        block_size: record.block_size,
        previous: options
            .previous
            .as_deref()
            .map(|path| LocalFile::open(path, "previous output"))
            .transpose()?,
        seeds: options
            .seeds
            .iter()
            .map(|path| LocalFile::open(path, "seed"))
            .collect::<Result<_>>()?,
        by_content: Mutex::new(None),
        cache: options.cache.clone(),
    });
    progress.start(record.size);

    let mut summary = PullSummary {
        size: record.size,
        blocks_data: data_blocks.len() as u64,
        blocks_zero: record.block_count() - data_blocks.len() as u64,
        ..PullSummary::default()
    };
    let reader = &reader;
    let blocks = futures::stream::iter(data_blocks)
        .map(|(index, wanted)| {
            let local = Arc::clone(&local);
            async move {
                let len = reader.block_len(index);
                let cache = local.cache.clone();
                let found = tokio::task::spawn_blocking(move || local.find(index, len, &wanted))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                let (data, origin) = match found {
                    Some(found) => found,
                    None => fetch(store, cache, &wanted, index, len).await?,
                };
                Ok::<_, StoreError>((index, data, origin))
            }
        })
        .buffered(READ_AHEAD)
        .map_ok(|(index, data, origin)| {
            match origin {
                Origin::Output => summary.blocks_from_output += 1,
                Origin::SeedPosition => summary.blocks_from_seeds_by_position += 1,
                Origin::SeedContent => summary.blocks_from_seeds_by_content += 1,
                Origin::Cache => summary.blocks_from_cache += 1,
                Origin::Store(sealed) => {
                    summary.blocks_fetched += 1;
                    summary.bytes_fetched += sealed;
                }
            }
            (index, data)
        });
    write_blocks(&layout, blocks, write, progress.as_ref()).await?;

    if let Some(cache) = options.cache {
        let trimmed = tokio::task::spawn_blocking(move || cache.trim())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        summary.cache = Some(trimmed);
    }
    Ok(summary)
}

/// Fetches block `index` from the store, checks it against `wanted`, and keeps the sealed
/// block in the cache.
async fn fetch(
    store: &Store,
    cache: Option<BlockCache>,
    wanted: &ObjectId,
    index: u64,
    len: u64,
) -> Result<(Vec<u8>, Origin)> {
    let sealed = store.get_block_sealed(wanted).await?;
    let store = store.clone();
    let wanted = *wanted;
    tokio::task::spawn_blocking(move || {
        let data = store.decode_block(&wanted, &sealed)?;
        store.verify_block_id(&wanted, &data)?;
        if data.len() as u64 != len {
            return Err(StoreError::Corrupt {
                what: "block",
                name: wanted.to_hex(),
                reason: format!(
                    "it has {} bytes where block {index} needs {len}",
                    data.len()
                ),
            });
        }
        if let Some(cache) = cache
            && let Err(e) = cache.put(&wanted, &sealed)
        {
            // The pull goes on; only a later one pays for the missing block.
            tracing::warn!(error = %e, "cannot keep a block in the cache");
        }
        Ok((data, Origin::Store(sealed.len() as u64)))
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::{InitOptions, Location};

    const BLOCK: u64 = 64 << 10;

    fn bytes(len: u64, fill: u8) -> Vec<u8> {
        vec![fill; usize::try_from(len).expect("len")]
    }

    #[tokio::test]
    async fn the_content_index_holds_each_data_block_once_and_no_hole_or_zero_block() {
        let options = InitOptions {
            block_size: Some(BLOCK),
            ..Default::default()
        };
        let store = Store::init(&Location::Memory, options)
            .await
            .expect("store");
        // Six and a half blocks: 0 a hole, 1 data A, 2 zeros written out, 3 data B, 4 a
        // hole, 5 data A again, and a short last block of data C.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.img");
        let file = File::create(&path).expect("create");
        file.set_len(6 * BLOCK + BLOCK / 2).expect("set_len");
        let short = bytes(BLOCK / 2, 3);
        for (at, data) in [
            (BLOCK, bytes(BLOCK, 1)),
            (2 * BLOCK, bytes(BLOCK, 0)),
            (3 * BLOCK, bytes(BLOCK, 2)),
            (5 * BLOCK, bytes(BLOCK, 1)),
            (6 * BLOCK, short.clone()),
        ] {
            file.write_all_at(&data, at).expect("write");
        }
        let local = LocalBlocks {
            store: store.clone(),
            block_size: BLOCK,
            previous: None,
            seeds: vec![LocalFile::open(&path, "seed").expect("open")],
            by_content: Mutex::new(None),
            cache: None,
        };

        let index = local.content_index().expect("index");

        let expected = ContentIndex::from([
            (store.block_id(&bytes(BLOCK, 1)), (0, BLOCK)),
            (store.block_id(&bytes(BLOCK, 2)), (0, 3 * BLOCK)),
            (store.block_id(&short), (0, 6 * BLOCK)),
        ]);
        assert_eq!(*index, expected);
    }
}

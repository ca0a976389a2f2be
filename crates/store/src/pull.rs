//! Writing a snapshot out while fetching only the blocks no local file already holds.
//!
//! ```text
//!  each data block of the snapshot, 16 at a time          wanted: its id in the manifest
//!    1. the previous output, same position   ─ hashes to the id? ─yes→ reuse
//!    2. each seed, same position             ─ hashes to the id? ─yes→ reuse
//!    3. the seeds by content                 ─ the id in the seeds' index? ─yes→ reuse
//!       (every block of every seed hashed once, on the first block 1 and 2 miss)
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

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blockyard_crypto::ObjectId;
use blockyard_formats::FormatError;
use blockyard_formats::export::{BlockFeed, ExportLayout};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

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

/// A local file blocks may be taken from.
#[derive(Debug)]
struct LocalFile {
    file: File,
    name: String,
    len: u64,
}

impl LocalFile {
    /// Opens `path`; `role` (seed, previous output) names it in messages.
    fn open(path: &Path, role: &str) -> Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| StoreError::Io {
            op: "open",
            path: format!("the {role} {name}"),
            source,
        })?;
        let meta = file.metadata().map_err(|source| StoreError::Io {
            op: "inspect",
            path: name.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(StoreError::InvalidArgument(format!(
                "{name} is not a regular file; a {role} must be a raw disk image file"
            )));
        }
        Ok(Self {
            file,
            name,
            len: meta.len(),
        })
    }

    /// The `len` bytes at `offset`, or `None` when the file ends before them.
    fn read(&self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Ok(None);
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        match self.file.read_exact_at(&mut data, offset) {
            Ok(()) => Ok(Some(data)),
            // The file shrank since it was opened.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
            Err(source) => Err(StoreError::Io {
                op: "read",
                path: self.name.clone(),
                source,
            }),
        }
    }
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
            && let Some(data) = previous.read(offset, len)?.filter(matches)
        {
            return Ok(Some((data, Origin::Output)));
        }
        for seed in &self.seeds {
            if let Some(data) = seed.read(offset, len)?.filter(matches) {
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
        let mut index = ContentIndex::new();
        for (number, seed) in self.seeds.iter().enumerate() {
            let mut offset = 0;
            while offset < seed.len {
                let len = self.block_size.min(seed.len - offset);
                let Some(data) = seed.read(offset, len)? else {
                    break;
                };
                // Zero blocks are never fetched, so never looked up.
                if data.iter().any(|&b| b != 0) {
                    index
                        .entry(self.store.block_id(&data))
                        .or_insert((number, offset));
                }
                offset += len;
            }
        }
        tracing::debug!(blocks = index.len(), "indexed the seeds by content");
        let index = Arc::new(index);
        *slot = Some(Arc::clone(&index));
        Ok(index)
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

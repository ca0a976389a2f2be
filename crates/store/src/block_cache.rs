//! A local folder of blocks that repeated pulls on one machine share.
//!
//! ```text
//! <dir>/<aa>/<block-id>       one sealed block, as the store holds it (the first two hex
//!                             digits of its id name the folder)
//! <dir>/<aa>/.<block-id>.<n>  a block being written; renamed into place when complete
//! ```
//!
//! A block is kept sealed, exactly as it came from the store: compressed, and encrypted
//! when the store is, so the cache holds nothing a reader of the store could not already
//! see. Reading one back opens the envelope (its tag binds the id) and re-hashes the bytes
//! to the id, so a damaged or planted file is dropped and the block fetched again.
//!
//! The cache is bounded by size. A hit sets the file's modification time to now, and
//! [`BlockCache::trim`] removes the files modified longest ago until the rest fit: least
//! recently used first. Modification time rather than access time, because many machines
//! mount with `noatime` or `relatime`.
//!
//! Any number of processes may share a folder: a block appears under its name only whole
//! (written aside, then renamed), two writers of one block write the same bytes, and a
//! block removed by another process's trim while being read is a miss like any other.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use blockyard_crypto::ObjectId;
use serde::Serialize;

use crate::Store;
use crate::error::{Result, StoreError};

/// Default bound of a cache, in bytes of sealed blocks: 10 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;

/// Names blocks being written apart within one process.
static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// A block cache folder with its size bound.
#[derive(Debug, Clone)]
pub struct BlockCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// What [`BlockCache::trim`] found and removed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CacheTrim {
    /// Bytes the cache holds after the trim.
    pub bytes: u64,
    /// Files removed.
    pub evicted_blocks: u64,
    /// Bytes removed.
    pub evicted_bytes: u64,
}

impl BlockCache {
    /// Opens the cache in `dir`, creating the folder, bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_error("create the cache folder", dir))?;
        if !dir.is_dir() {
            return Err(StoreError::InvalidArgument(format!(
                "{} is not a folder; give a folder for the block cache",
                dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
        })
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The block `id` decoded and verified, with the size of its sealed file; `None` when
    /// the cache does not hold it, or holds something that fails the checks (that file is
    /// removed). Blocking file I/O and CPU work.
    pub fn get(&self, store: &Store, id: &ObjectId) -> Option<(Vec<u8>, u64)> {
        let path = self.path(id);
        let mut sealed = Vec::new();
        let file = File::open(&path).and_then(|mut file| {
            file.read_to_end(&mut sealed)?;
            Ok(file)
        });
        let file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "block cache read failed");
                return None;
            }
        };
        let verified = store
            .decode_block(id, &sealed)
            .and_then(|data| store.verify_block_id(id, &data).map(|()| data));
        match verified {
            Ok(data) => {
                // Touching marks the block as recently used. A failure costs only the
                // block's place in the eviction order.
                if let Err(e) = file.set_modified(SystemTime::now()) {
                    tracing::debug!(path = %path.display(), error = %e, "cannot touch");
                }
                Some((data, sealed.len() as u64))
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "dropping a bad cache entry");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps the sealed block `id`. Blocking file I/O.
    pub fn put(&self, id: &ObjectId, sealed: &[u8]) -> Result<()> {
        let path = self.path(id);
        let folder = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(folder).map_err(io_error("create the cache folder", folder))?;
        let temporary = folder.join(format!(
            ".{}.{}-{}",
            id.to_hex(),
            std::process::id(),
            NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed)
        ));
        // No fsync: a block lost or torn by a crash fails its checks on the next read and
        // is fetched again.
        fs::write(&temporary, sealed).map_err(io_error("write", &temporary))?;
        fs::rename(&temporary, &path).map_err(|e| {
            let _ = fs::remove_file(&temporary);
            io_error("rename into place", &path)(e)
        })
    }

    /// Removes the least recently used blocks until the cache holds at most its bound.
    /// Blocking file I/O.
    pub fn trim(&self) -> Result<CacheTrim> {
        let mut files = Vec::new();
        let folders = fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))?;
        for folder in folders {
            let folder = folder.map_err(io_error("list", &self.dir))?;
            if !folder.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let folder = folder.path();
            let entries = match fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("list", &folder)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_error("list", &folder))?;
                // Another process may remove a file between the listing and this look.
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_file() {
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.push((modified, meta.len(), entry.path()));
                }
            }
        }

        let mut report = CacheTrim {
            bytes: files.iter().map(|(_, len, _)| len).sum(),
            ..CacheTrim::default()
        };
        files.sort();
        for (_, len, path) in files {
            if report.bytes <= self.max_bytes {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.evicted_blocks += 1;
                    report.evicted_bytes += len;
                    report.bytes -= len;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => report.bytes -= len,
                Err(e) => return Err(io_error("remove", &path)(e)),
            }
        }
        Ok(report)
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Location;

    async fn store() -> Store {
        Store::init(&Location::Memory, Default::default())
            .await
            .expect("store")
    }

    #[tokio::test]
    async fn a_kept_block_reads_back_and_a_damaged_one_is_dropped() {
        let store = store().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 1 << 20).expect("cache");
        let data = vec![5u8; 4096];
        let id = store.block_id(&data);
        cache
            .put(&id, &store.encode_block(&id, &data))
            .expect("put");
        assert_eq!(cache.get(&store, &id).map(|(d, _)| d), Some(data));

        let path = cache.path(&id);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).expect("write");
        assert_eq!(cache.get(&store, &id), None);
        assert!(!path.exists(), "the damaged file is removed");
    }

    #[tokio::test]
    async fn trim_evicts_the_least_recently_used_blocks_first() {
        let store = store().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks: Vec<Vec<u8>> = (0..3u8)
            .map(|n| {
                (0..4096u32)
                    .map(|i| i.to_le_bytes()[0] ^ n.wrapping_mul(77))
                    .collect()
            })
            .collect();
        let ids: Vec<ObjectId> = blocks.iter().map(|b| store.block_id(b)).collect();
        let unbounded = BlockCache::open(dir.path(), u64::MAX).expect("cache");
        let mut sizes = Vec::new();
        for (id, data) in ids.iter().zip(&blocks) {
            let sealed = store.encode_block(id, data);
            sizes.push(sealed.len() as u64);
            unbounded.put(id, &sealed).expect("put");
            // Distinct modification times even on coarse file systems.
            let when = SystemTime::now() - Duration::from_secs(100 - sizes.len() as u64 * 10);
            File::options()
                .write(true)
                .open(unbounded.path(id))
                .and_then(|f| f.set_modified(when))
                .expect("age");
        }
        // The oldest block is used now, so the second one becomes the least recent.
        assert!(unbounded.get(&store, &ids[0]).is_some());

        let bound = sizes[0] + sizes[2];
        let report = BlockCache::open(dir.path(), bound)
            .expect("cache")
            .trim()
            .expect("trim");
        assert_eq!(report.evicted_blocks, 1);
        assert_eq!(report.evicted_bytes, sizes[1]);
        assert_eq!(report.bytes, bound);
        assert!(unbounded.get(&store, &ids[0]).is_some());
        assert!(unbounded.get(&store, &ids[1]).is_none());
        assert!(unbounded.get(&store, &ids[2]).is_some());
    }
}

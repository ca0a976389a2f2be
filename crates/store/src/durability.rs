//! Making a local store's writes durable.
//!
//! Local objects are written through the page cache. Before a commit record may point at
//! them they must be on disk, which one `syncfs` of the store's file system ensures. Waiting
//! for all of it at the end leaves the disk idle while blocks are compressed and the CPU idle
//! while they are flushed, so writers also start a flush in the background every so often;
//! the final sync then has only the tail left.
//!
//! All syncs go through one directory handle opened with the store, so a write-back error
//! the kernel reports to any of them is seen: a background flush that fails records its
//! error, and the next sync returns it.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Syncs one local store's file system.
#[derive(Debug)]
pub(crate) struct LocalSync {
    dir: File,
    running: AtomicBool,
    failed: Mutex<Option<io::Error>>,
}

impl LocalSync {
    /// Opens the store's folder for syncing.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            dir: File::open(path)?,
            running: AtomicBool::new(false),
            failed: Mutex::new(None),
        })
    }

    /// Flushes everything written so far; blocking. Returns an error a background flush
    /// met, if any, before this one.
    pub(crate) fn sync(&self) -> io::Result<()> {
        if let Some(error) = self.failed_lock().take() {
            return Err(error);
        }
        rustix::fs::syncfs(&self.dir).map_err(io::Error::from)
    }

    /// Starts a flush on the blocking pool unless one is running.
    pub(crate) fn start_background(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = rustix::fs::syncfs(&this.dir) {
                this.failed_lock().get_or_insert(error.into());
            }
            this.running.store(false, Ordering::Release);
        });
    }

    fn failed_lock(&self) -> std::sync::MutexGuard<'_, Option<io::Error>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sync handle of a local store's folder; `None` for other backends, which make each
/// write durable on return.
pub(crate) fn local_sync(
    location: &crate::Location,
) -> crate::error::Result<Option<Arc<LocalSync>>> {
    let Some(path) = location.local_path() else {
        return Ok(None);
    };
    let sync = LocalSync::open(path).map_err(|source| crate::error::StoreError::Io {
        op: "open",
        path: path.display().to_string(),
        source,
    })?;
    Ok(Some(Arc::new(sync)))
}

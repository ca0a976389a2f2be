//! The recycle bin: deleted snapshots and deregistered images, kept for a window.
//!
//! ```text
//! recycle/snapshots/<snap-id>   the snapshot's sealed commit record, as it was
//! recycle/images/<img-id>       the image's sealed record, as it was
//! clock                         written to read the store's time (its last_modified)
//! ```
//!
//! Deleting moves the sealed record into the bin (written there first, then removed from
//! its place, so a crash in between leaves it in both, never in neither). Restoring moves it
//! back. The blocks and segments a binned snapshot references are left alone, so a restore
//! brings back the whole snapshot; garbage collection must count binned snapshots as
//! references until they are purged. Ages come from the store's clock: `purge` writes the
//! `clock` object and compares the bin's `last_modified` times with its own.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::Serialize;

use crate::catalog::ImageId;
use crate::error::{Result, StoreError};
use crate::snapshot::SnapshotId;
use crate::store::Store;

/// What the bin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecycledKind {
    /// A deleted snapshot's commit record.
    Snapshot,
    /// A deregistered image's record.
    Image,
}

/// One item in the bin.
#[derive(Debug, Clone, Serialize)]
pub struct Recycled {
    /// A snapshot or an image.
    pub kind: RecycledKind,
    /// Its id.
    pub id: String,
    /// When it was deleted, by the store's clock.
    pub deleted: DateTime<Utc>,
}

fn bin_path(kind: RecycledKind, id: &str) -> Path {
    match kind {
        RecycledKind::Snapshot => Path::from(format!("recycle/snapshots/{id}")),
        RecycledKind::Image => Path::from(format!("recycle/images/{id}")),
    }
}

fn live_path(kind: RecycledKind, id: &str) -> Path {
    match kind {
        RecycledKind::Snapshot => Path::from(format!("snapshots/{id}")),
        RecycledKind::Image => Path::from(format!("images/{id}")),
    }
}

/// The kind of a snapshot or image id, checking its form.
fn kind_of(id: &str) -> Result<RecycledKind> {
    if id.parse::<SnapshotId>().is_ok() {
        Ok(RecycledKind::Snapshot)
    } else if id.parse::<ImageId>().is_ok() {
        Ok(RecycledKind::Image)
    } else {
        Err(StoreError::InvalidArgument(format!(
            "{id:?} is neither a snapshot id (snap-…) nor an image id (img-…)"
        )))
    }
}

/// Moves the record of `id` (a snapshot or an image) into the bin.
pub async fn recycle(store: &Store, id: &str) -> Result<()> {
    let kind = kind_of(id)?;
    let raw = store.raw();
    let Some(sealed) = raw.get(&live_path(kind, id)).await? else {
        return Err(not_found(kind, id));
    };
    raw.put(&bin_path(kind, id), sealed).await?;
    raw.sync().await?;
    raw.delete(&live_path(kind, id)).await
}

/// Moves `id` back from the bin; refused if a live record of that id exists.
pub async fn restore_recycled(store: &Store, id: &str) -> Result<()> {
    let kind = kind_of(id)?;
    let raw = store.raw();
    let Some(sealed) = raw.get(&bin_path(kind, id)).await? else {
        return Err(StoreError::InvalidArgument(format!(
            "{id} is not in the recycle bin; `recycle list` shows what is"
        )));
    };
    if raw.exists(&live_path(kind, id)).await? {
        return Err(StoreError::InvalidArgument(format!("{id} exists already")));
    }
    raw.put(&live_path(kind, id), sealed).await?;
    raw.sync().await?;
    raw.delete(&bin_path(kind, id)).await
}

/// What the bin holds, oldest deletion first.
pub async fn recycle_bin(store: &Store) -> Result<Vec<Recycled>> {
    let raw = store.raw();
    let mut items = Vec::new();
    for (kind, folder) in [
        (RecycledKind::Snapshot, "recycle/snapshots"),
        (RecycledKind::Image, "recycle/images"),
    ] {
        for meta in raw.list(&Path::from(folder)).await? {
            let Some(id) = meta.location.filename() else {
                continue;
            };
            if kind_of(id).ok() == Some(kind) {
                items.push(Recycled {
                    kind,
                    id: id.to_owned(),
                    deleted: crate::raw::store_second(meta.last_modified),
                });
            }
        }
    }
    items.sort_by(|a, b| (a.deleted, &a.id).cmp(&(b.deleted, &b.id)));
    Ok(items)
}

/// The store's clock now: the time it gives an object written now.
pub async fn store_time(store: &Store) -> Result<DateTime<Utc>> {
    let raw = store.raw();
    let path = Path::from("clock");
    raw.put(&path, Bytes::from_static(b"blockyard store clock\n"))
        .await?;
    raw.last_modified(&path).await
}

/// Removes from the bin, for good, what was deleted at least `older_than` ago by the
/// store's clock; returns what it removed. Their blocks are left to garbage collection.
pub async fn purge_recycled(store: &Store, older_than: Duration) -> Result<Vec<Recycled>> {
    let now = store_time(store).await?;
    let window = chrono::Duration::from_std(older_than)
        .map_err(|_| StoreError::InvalidArgument("the purge window is too long".to_owned()))?;
    let mut purged = Vec::new();
    for item in recycle_bin(store).await? {
        if now - item.deleted >= window {
            store.raw().delete(&bin_path(item.kind, &item.id)).await?;
            purged.push(item);
        }
    }
    Ok(purged)
}

fn not_found(kind: RecycledKind, id: &str) -> StoreError {
    match kind {
        RecycledKind::Snapshot => StoreError::SnapshotNotFound { id: id.to_owned() },
        RecycledKind::Image => StoreError::ImageNotFound { id: id.to_owned() },
    }
}

//! A store opened without keys: its objects as stored bytes, for copies within a key domain.
//!
//! Stores of one key domain seal every object to the same bytes, so copying a snapshot
//! between them is copying objects verbatim. What a snapshot references is readable without
//! a key: a commit record's clear part lists its segments, and a segment's clear part is the
//! whole segment (see [`snapshot`](crate::SnapshotRecord) and
//! [`Segment`](crate::Segment)). A [`RawStore`] reads those parts and moves the sealed
//! bytes; it never sees a plaintext block, a description or a tag.
//!
//! Nothing read here is authenticated: that needs the key. A damaged or hostile source can
//! at worst make a copy move the wrong objects, which then fail to open at the destination
//! and are reported by `check` there, exactly as they would at the source.

use std::sync::Arc;

use blockyard_crypto::{Envelope, ObjectId};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::config::StoreConfig;
use crate::durability::LocalSync;
use crate::error::{Result, StoreError};
use crate::resilient::{RequestCounters, RequestCounts, resilient};
use crate::segment::Segment;
use crate::snapshot::{SnapshotId, decode_references};
use crate::{Location, layout};

/// A store's objects and config, opened without keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RawStore {
    objects: Arc<dyn ObjectStore>,
    /// The counters of the `ResilientStore` that `objects` is.
    requests: Arc<RequestCounters>,
    location: Location,
    config: Arc<StoreConfig>,
    local_sync: Option<Arc<LocalSync>>,
}

impl RawStore {
    /// Opens the store at `location` without any key.
    pub async fn open(location: &Location) -> Result<Self> {
        let objects = location.connect_backend(false)?;
        Self::open_on(objects, location.clone()).await
    }

    /// Opens a store on an object store the caller built.
    pub async fn open_on(objects: Arc<dyn ObjectStore>, location: Location) -> Result<Self> {
        let (objects, requests) = resilient(objects);
        let config = read_config(&objects, &location).await?;
        let local_sync = crate::durability::local_sync(&location)?;
        Ok(Self::from_parts(
            objects,
            requests,
            location,
            Arc::new(config),
            local_sync,
        ))
    }

    /// A raw view of handles an open store already holds.
    pub(crate) fn from_parts(
        objects: Arc<dyn ObjectStore>,
        requests: Arc<RequestCounters>,
        location: Location,
        config: Arc<StoreConfig>,
        local_sync: Option<Arc<LocalSync>>,
    ) -> Self {
        Self {
            objects,
            requests,
            location,
            config,
            local_sync,
        }
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The store's config.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The requests made of the backend through these handles so far, retries included.
    pub fn requests(&self) -> RequestCounts {
        self.requests.snapshot()
    }

    /// The sealed commit record of a snapshot.
    pub async fn record_envelope(&self, id: &SnapshotId) -> Result<Bytes> {
        match self.get(&layout::snapshot(id)).await? {
            Some(bytes) => Ok(bytes),
            None => Err(StoreError::SnapshotNotFound { id: id.to_string() }),
        }
    }

    /// Whether the store holds a commit record for `id`.
    pub async fn has_snapshot(&self, id: &SnapshotId) -> Result<bool> {
        self.exists(&layout::snapshot(id)).await
    }

    /// The ids of every committed snapshot, oldest first.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        let metas = self.list(&layout::snapshots()).await?;
        let mut ids: Vec<SnapshotId> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The sealed bytes of a manifest segment.
    pub async fn segment_envelope(&self, id: &ObjectId) -> Result<Bytes> {
        self.get(&layout::segment(id))
            .await?
            .ok_or_else(|| StoreError::Missing {
                what: "manifest segment",
                name: id.to_hex(),
            })
    }

    /// Whether the store holds a manifest segment.
    pub async fn has_segment(&self, id: &ObjectId) -> Result<bool> {
        self.exists(&layout::segment(id)).await
    }

    /// The sealed bytes of a block.
    pub async fn block_envelope(&self, id: &ObjectId) -> Result<Bytes> {
        self.get(&layout::block(id))
            .await?
            .ok_or_else(|| StoreError::Missing {
                what: "block",
                name: id.to_hex(),
            })
    }

    /// Whether the store holds a block.
    pub async fn has_block(&self, id: &ObjectId) -> Result<bool> {
        self.exists(&layout::block(id)).await
    }

    /// Stores a sealed block as it is.
    pub async fn put_block_envelope(&self, id: &ObjectId, sealed: Bytes) -> Result<()> {
        self.put(&layout::block(id), sealed).await
    }

    /// Stores a sealed segment as it is.
    pub async fn put_segment_envelope(&self, id: &ObjectId, sealed: Bytes) -> Result<()> {
        self.put(&layout::segment(id), sealed).await
    }

    /// Stores a sealed commit record as it is: the snapshot exists once this returns. Call
    /// [`sync`](Self::sync) first, so that what it references is durable.
    pub async fn put_record_envelope(&self, id: &SnapshotId, sealed: Bytes) -> Result<()> {
        self.put(&layout::snapshot(id), sealed).await
    }

    /// Makes everything written so far durable; see `Store::sync`.
    pub async fn sync(&self) -> Result<()> {
        let Some(local) = self.local_sync.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || local.sync())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(|source| StoreError::Io {
                op: "sync",
                path: self.location.to_string(),
                source,
            })
    }

    /// Reads an object, `None` when it does not exist.
    pub(crate) async fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.objects.get(path).await {
            Ok(result) => Ok(Some(
                result
                    .bytes()
                    .await
                    .map_err(StoreError::backend("read", path))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::backend("read", path)(e)),
        }
    }

    /// The sealed record of an image.
    pub async fn image_envelope(&self, id: &crate::ImageId) -> Result<Bytes> {
        self.get(&Path::from(format!("images/{id}")))
            .await?
            .ok_or_else(|| StoreError::ImageNotFound { id: id.to_string() })
    }

    /// Stores a sealed image record as it is; call it once the image's snapshots are here.
    pub async fn put_image_envelope(&self, id: &crate::ImageId, sealed: Bytes) -> Result<()> {
        self.put(&Path::from(format!("images/{id}")), sealed).await
    }

    /// When the store says an object was last written, to the second (see [`store_second`]).
    pub(crate) async fn last_modified(&self, path: &Path) -> Result<chrono::DateTime<chrono::Utc>> {
        self.objects
            .head(path)
            .await
            .map(|meta| store_second(meta.last_modified))
            .map_err(StoreError::backend("read", path))
    }

    /// Every object under `prefix`.
    pub(crate) async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        self.objects
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(StoreError::backend("list", prefix))
    }

    /// Every object under `prefix`, as the listing goes: for folders too big to hold.
    pub(crate) fn list_stream(
        &self,
        prefix: &Path,
    ) -> futures::stream::BoxStream<'static, Result<object_store::ObjectMeta>> {
        let prefix_owned = prefix.clone();
        self.objects
            .list(Some(prefix))
            .map_err(move |e| StoreError::backend("list", &prefix_owned)(e))
            .boxed()
    }

    /// When the store says an object was last written, `None` when it does not exist.
    pub(crate) async fn last_modified_if_any(
        &self,
        path: &Path,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        match self.objects.head(path).await {
            Ok(meta) => Ok(Some(store_second(meta.last_modified))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::backend("read", path)(e)),
        }
    }

    /// Deletes objects, `concurrency` at a time; returns how many were there to delete.
    pub(crate) async fn delete_all(&self, paths: Vec<Path>, concurrency: usize) -> Result<u64> {
        let mut deletes = futures::stream::iter(paths)
            .map(|path| async move {
                match self.objects.delete(&path).await {
                    Ok(()) => Ok(1),
                    Err(object_store::Error::NotFound { .. }) => Ok(0),
                    Err(e) => Err(StoreError::backend("delete", &path)(e)),
                }
            })
            .buffer_unordered(concurrency.max(1));
        let mut deleted = 0;
        while let Some(result) = deletes.next().await {
            deleted += result?;
        }
        Ok(deleted)
    }

    /// The first `max` objects under `prefix` in name order, from just after `after` when
    /// it is given: one page of a listing, in one listing call.
    ///
    /// Where the backend lists in name order (S3, memory) the entries are taken as they
    /// arrive and the listing is dropped after the `max`-th, so that no later page is ever
    /// asked for. The S3 client asks for a page (at most 1000 keys) only when the entry
    /// after the previous page is wanted, so a `max` of up to 1000 costs one request, and
    /// the call counted under `list` in [`requests`](Self::requests) is that request. A
    /// local folder lists in no order: it is walked whole and sorted, which costs no
    /// request but reads every entry.
    pub(crate) async fn list_page(
        &self,
        prefix: &Path,
        after: Option<&Path>,
        max: usize,
    ) -> Result<Vec<object_store::ObjectMeta>> {
        let listing = match after {
            Some(offset) => self.objects.list_with_offset(Some(prefix), offset),
            None => self.objects.list(Some(prefix)),
        };
        let failed = StoreError::backend("list", prefix);

        if self.location.lists_in_name_order() {
            return listing.take(max).try_collect().await.map_err(failed);
        }
        let mut entries: Vec<object_store::ObjectMeta> =
            listing.try_collect().await.map_err(failed)?;
        entries.sort_unstable_by(|a, b| a.location.cmp(&b.location));
        entries.truncate(max);
        Ok(entries)
    }

    /// Deletes an object; one already gone is not an error.
    pub(crate) async fn delete(&self, path: &Path) -> Result<()> {
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend("delete", path)(e)),
        }
    }

    pub(crate) async fn exists(&self, path: &Path) -> Result<bool> {
        match self.objects.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::backend("read", path)(e)),
        }
    }

    pub(crate) async fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.objects
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(StoreError::backend("write", path))
    }
}

/// A store time cut to the whole second. S3 gives a HEAD's time to the second and a
/// listing's to the millisecond; every time that is compared with another is cut the same
/// way, so that no comparison mixes the two. Cutting keeps order: a time cut later than
/// another was later.
pub(crate) fn store_second(time: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    time.trunc_subsecs(0)
}

/// The segment ids a sealed commit record lists in its clear part, read without a key.
pub fn record_segments(id: &SnapshotId, sealed: &[u8]) -> Result<Vec<ObjectId>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "snapshot record",
        name: id.to_string(),
        reason,
    };
    let envelope = Envelope::parse(sealed).map_err(|e| corrupt(e.to_string()))?;
    if !envelope.has_clear {
        return Err(corrupt(
            "it has no clear part; it was written by an older blockyard and can only be \
             copied with the keys of both stores"
                .to_owned(),
        ));
    }
    decode_references(envelope.clear).map_err(corrupt)
}

/// The snapshots a sealed image record lists in its clear part, read without a key.
pub fn image_snapshots(id: &crate::ImageId, sealed: &[u8]) -> Result<Vec<SnapshotId>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "image record",
        name: id.to_string(),
        reason,
    };
    let envelope = Envelope::parse(sealed).map_err(|e| corrupt(e.to_string()))?;
    crate::catalog::decode_snapshot_list(envelope.clear).map_err(corrupt)
}

/// The segment in a sealed segment's clear part, read without a key.
pub fn segment_of(id: &ObjectId, sealed: &[u8]) -> Result<Segment> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "manifest segment",
        name: id.to_hex(),
        reason,
    };
    let envelope = Envelope::parse(sealed).map_err(|e| corrupt(e.to_string()))?;
    if !envelope.has_clear {
        return Err(corrupt("it has no clear part".to_owned()));
    }
    Segment::decode(envelope.clear).map_err(corrupt)
}

/// Reads and parses a store's config object.
pub(crate) async fn read_config(
    objects: &Arc<dyn ObjectStore>,
    location: &Location,
) -> Result<StoreConfig> {
    let name = location.to_string();
    let config_path = layout::config();
    let bytes = match objects.get(&config_path).await {
        Ok(result) => result
            .bytes()
            .await
            .map_err(StoreError::backend("read", &config_path))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StoreError::NotAStore { location: name });
        }
        Err(e) => return Err(StoreError::backend("read", &config_path)(e)),
    };
    StoreConfig::parse(&bytes, &name)
}

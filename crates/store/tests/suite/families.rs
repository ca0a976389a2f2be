//! Large promoted families, and an object store that counts the listing requests an S3
//! server would answer for them.
//!
//! `object_store`'s S3 client turns ListObjectsV2 pages into a stream of entries: it asks
//! for the first page when the listing is first polled, and for each later page only when
//! the entry after the previous page is wanted (an `unfold` over continuation tokens,
//! flattened). A server answers at most [`S3_PAGE`] keys a page and says whether more
//! follow. So a listing whose reader takes `n` entries and stops costs one request for
//! every started run of [`S3_PAGE`] entries, and one for an empty listing.
//! [`PageCounter`] counts exactly that over any backend, so that a test on memory sees
//! what a listing would cost on S3.
//!
//! Used by the suite's large-family cases and by `examples/latest.rs`, which measures what
//! they assert.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use blockyard_store::{
    Architecture, BootMode, Device, ImageId, ImageRecord, SnapshotId, Store, promote, put_image,
};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Images in a large family: ten pages of an S3 listing of their refs.
pub(crate) const LARGE_FAMILY: usize = 10_000;

/// Image records written at once while a family is built.
const CONCURRENT_PUTS: usize = 16;

/// Registers `count` images of `family`, each a disk of `snapshot`, then promotes them one
/// after another; returns their ids in promotion order, so the last is the latest.
pub(crate) async fn promote_family(
    store: &Store,
    family: &str,
    snapshot: SnapshotId,
    count: usize,
) -> Vec<ImageId> {
    let records: Vec<ImageRecord> = (0..count)
        .map(|n| ImageRecord {
            id: ImageId::generate(),
            name: format!("{family}-{n}"),
            family: Some(family.to_owned()),
            created: chrono::Utc::now(),
            devices: vec![Device {
                name: "/dev/xvda".to_owned(),
                snapshot,
            }],
            architecture: Architecture::X86_64,
            boot_mode: BootMode::Uefi,
            description: String::new(),
            tags: BTreeMap::new(),
            protected: false,
            deprecate_at: None,
            shared_with: BTreeSet::new(),
        })
        .collect();
    stream::iter(&records)
        .map(|record| put_image(store, record))
        .buffer_unordered(CONCURRENT_PUTS)
        .try_collect::<()>()
        .await
        .expect("register");

    // One at a time: the order of promotion is what the family's order is checked against.
    for record in &records {
        promote(store, &record.id).await.expect("promote");
    }
    records.into_iter().map(|record| record.id).collect()
}

/// Keys an S3 server answers per ListObjectsV2 request when not asked for fewer, as
/// `object_store` never does.
pub(crate) const S3_PAGE: u64 = 1000;

/// Wraps an object store; counts the pages its listings would take on S3.
#[derive(Debug)]
pub(crate) struct PageCounter {
    inner: Arc<dyn ObjectStore>,
    pages: Arc<AtomicU64>,
}

impl PageCounter {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            pages: Arc::default(),
        })
    }

    /// The listing pages requested so far.
    pub(crate) fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// `listing`, counting a page when it is first polled and when its entry number
    /// `k * S3_PAGE` is handed out.
    fn paged(
        &self,
        listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let pages = Arc::clone(&self.pages);
        stream::unfold((listing, 0u64), move |(mut listing, handed)| {
            let pages = Arc::clone(&pages);
            async move {
                let entry = listing.next().await;
                // An empty listing is one request; past the first page, a request is made
                // only when the server said more follow, that is when there is an entry.
                if handed % S3_PAGE == 0 && (handed == 0 || entry.is_some()) {
                    pages.fetch_add(1, Ordering::Relaxed);
                }
                entry.map(|entry| (entry, (listing, handed + 1)))
            }
        })
        .boxed()
    }
}

impl fmt::Display for PageCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageCounter({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for PageCounter {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.paged(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.paged(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

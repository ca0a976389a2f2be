//! Opening a store and reading and writing its objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use blockyard_crypto::{
    DomainId, DomainSecret, KeyDomain, KeySlot, MasterKey, ObjectId, ObjectKind,
};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::Location;
use crate::codec;
use crate::config::{
    DEFAULT_BLOCK_SIZE, FORMAT_VERSION, KNOWN_FEATURES, KeyDomainConfig, SEGMENT_BLOCKS,
    StoreConfig, validate_block_size,
};
use crate::durability::LocalSync;
use crate::error::{Result, StoreError};
use crate::layout;
use crate::segment::Segment;
use crate::snapshot::{SnapshotId, SnapshotRecord};

/// zstd level for new blocks: level 1 keeps both cores ahead of the disk; level 3 costs
/// about half as much CPU again for 8% less data.
const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// Name of the first key slot `init` writes.
const FIRST_SLOT: &str = "slot-0";

/// Options for creating a store.
#[derive(Debug, Default)]
pub struct InitOptions {
    /// Block size in bytes; [`DEFAULT_BLOCK_SIZE`] when `None`.
    pub block_size: Option<u64>,
    /// Encrypt the store under this master key; `None` makes an unencrypted store.
    pub master_key: Option<MasterKey>,
}

/// An open store: cheap to clone and safe to share between tasks.
///
/// Every object in a store is written once and never changed, so any number of processes on
/// any number of machines may read and write one store at the same time without a
/// coordinator: blocks and segments are named by their content, and commit records by ids
/// that never collide.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    objects: Arc<dyn ObjectStore>,
    location: Location,
    config: StoreConfig,
    keys: KeyDomain,
    /// For a local store: how its writes are made durable.
    local_sync: Option<Arc<LocalSync>>,
}

impl Inner {
    fn new(
        objects: Arc<dyn ObjectStore>,
        location: Location,
        config: StoreConfig,
        keys: KeyDomain,
    ) -> Result<Arc<Self>> {
        let local_sync = match location.local_path() {
            Some(path) => Some(Arc::new(LocalSync::open(path).map_err(|source| {
                StoreError::Io {
                    op: "open",
                    path: path.display().to_string(),
                    source,
                }
            })?)),
            None => None,
        };
        Ok(Arc::new(Self {
            objects,
            location,
            config,
            keys,
            local_sync,
        }))
    }
}

impl Store {
    /// Creates a store at `location` and returns it open.
    pub async fn init(location: &Location, options: InitOptions) -> Result<Self> {
        let block_size = options.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        validate_block_size(block_size)?;
        let objects = location.connect(true)?;
        Self::init_on(objects, location.clone(), block_size, options.master_key).await
    }

    /// Creates a store on an object store the caller built (tests share one in-memory
    /// backend between several `Store`s this way).
    pub async fn init_on(
        objects: Arc<dyn ObjectStore>,
        location: Location,
        block_size: u64,
        master_key: Option<MasterKey>,
    ) -> Result<Self> {
        validate_block_size(block_size)?;
        let config_path = layout::config();
        match objects.head(&config_path).await {
            Ok(_) => {
                return Err(StoreError::AlreadyExists {
                    location: location.to_string(),
                });
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StoreError::backend("read", &config_path)(e)),
        }

        let domain = DomainId::generate();
        let secret = DomainSecret::generate();
        let encrypted = master_key.is_some();
        let mut features: BTreeSet<String> = ["zstd", "blake3-keyed-ids"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if encrypted {
            features.insert("aes-256-gcm-siv".to_owned());
        }
        debug_assert!(
            features
                .iter()
                .all(|f| KNOWN_FEATURES.contains(&f.as_str()))
        );
        let config = StoreConfig {
            format: "blockyard".to_owned(),
            version: FORMAT_VERSION,
            required_features: features,
            block_size,
            segment_blocks: SEGMENT_BLOCKS,
            key_domain: KeyDomainConfig {
                id: domain,
                encrypted,
                current_key_id: 1,
                plaintext_secret: (!encrypted).then(|| secret.to_hex()),
            },
            compression_level: DEFAULT_COMPRESSION_LEVEL,
        };

        // The slot goes first and the config last: a store whose config exists is complete.
        if let Some(master) = &master_key {
            let slot = KeySlot::wrap(master, &secret, domain, FIRST_SLOT)
                .map_err(crypto("cannot wrap the store's key"))?;
            let json = serde_json::to_vec_pretty(&slot).map_err(|e| internal(&e))?;
            put(&objects, &layout::slot(FIRST_SLOT), json.into()).await?;
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| internal(&e))?;
        put(&objects, &config_path, json.into()).await?;

        let keys = KeyDomain::new(domain, &secret, encrypted, 1);
        Ok(Self {
            inner: Inner::new(objects, location, config, keys)?,
        })
    }

    /// Opens the store at `location`. An encrypted store needs its master key; a wrong key is
    /// refused here, before anything is written.
    pub async fn open(location: &Location, master_key: Option<&MasterKey>) -> Result<Self> {
        let objects = location.connect(false)?;
        Self::open_on(objects, location.clone(), master_key).await
    }

    /// Opens a store on an object store the caller built.
    pub async fn open_on(
        objects: Arc<dyn ObjectStore>,
        location: Location,
        master_key: Option<&MasterKey>,
    ) -> Result<Self> {
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
        let config = StoreConfig::parse(&bytes, &name)?;
        let domain = config.key_domain.id;

        let secret = match (&config.key_domain.plaintext_secret, master_key) {
            (Some(hex), _) => DomainSecret::from_hex(hex).map_err(|e| StoreError::Corrupt {
                what: "config",
                name: name.clone(),
                reason: e.to_string(),
            })?,
            (None, None) => return Err(StoreError::KeyRequired { location: name }),
            (None, Some(master)) => unlock(&objects, master, domain, &name).await?,
        };
        let keys = KeyDomain::new(
            domain,
            &secret,
            config.key_domain.encrypted,
            config.key_domain.current_key_id,
        );
        Ok(Self {
            inner: Inner::new(objects, location, config, keys)?,
        })
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// The store's config.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The block size of every snapshot in the store.
    pub fn block_size(&self) -> u64 {
        self.inner.config.block_size
    }

    /// The store's keys.
    pub fn keys(&self) -> &KeyDomain {
        &self.inner.keys
    }

    /// The keyed id of a block's bytes.
    pub fn block_id(&self, data: &[u8]) -> ObjectId {
        self.inner.keys.object_id(ObjectKind::Block, data)
    }

    /// Whether the store holds the block.
    pub async fn has_block(&self, id: &ObjectId) -> Result<bool> {
        exists(&self.inner.objects, &layout::block(id)).await
    }

    /// Compresses and seals a block: CPU work, to be run off the async threads.
    pub fn encode_block(&self, id: &ObjectId, data: &[u8]) -> Vec<u8> {
        let (payload, compressed) = codec::compress(data, self.inner.config.compression_level);
        self.inner
            .keys
            .seal(ObjectKind::Block, id.as_bytes(), &payload, compressed)
    }

    /// Opens and decompresses a sealed block, checking its tag (or checksum) and size: CPU
    /// work.
    pub fn decode_block(&self, id: &ObjectId, sealed: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "block",
            name: id.to_hex(),
            reason,
        };
        let (payload, compressed) = self
            .inner
            .keys
            .open(ObjectKind::Block, id.as_bytes(), sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        let limit = usize::try_from(self.block_size()).unwrap_or(usize::MAX);
        let data = if compressed {
            codec::decompress(&payload, limit).map_err(corrupt)?
        } else {
            payload
        };
        if data.len() > limit {
            return Err(corrupt(format!(
                "{} bytes in a store of {limit}-byte blocks",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Checks that a decoded block hashes to its id. Opening the envelope already proves the
    /// block was sealed under this id by a holder of the key (the id is bound into the tag),
    /// so only `check --read-data` pays for re-hashing, to catch a writer that named a block
    /// wrongly.
    pub fn verify_block_id(&self, id: &ObjectId, data: &[u8]) -> Result<()> {
        if self.block_id(data) == *id {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                what: "block",
                name: id.to_hex(),
                reason: "its contents do not hash to its id".to_owned(),
            })
        }
    }

    /// Uploads a sealed block. Idempotent: the same block always seals to the same bytes.
    pub async fn put_block(&self, id: &ObjectId, sealed: Vec<u8>) -> Result<()> {
        put(&self.inner.objects, &layout::block(id), sealed.into()).await
    }

    /// Downloads a sealed block.
    pub async fn get_block_sealed(&self, id: &ObjectId) -> Result<Bytes> {
        self.get("block", &layout::block(id), &id.to_hex()).await
    }

    /// Downloads and decodes a block. The decoding runs on the blocking pool.
    pub async fn read_block(&self, id: &ObjectId) -> Result<Vec<u8>> {
        self.read_block_checked(id, false).await
    }

    /// Downloads and decodes a block, and checks that it hashes to its id.
    pub async fn read_block_verified(&self, id: &ObjectId) -> Result<Vec<u8>> {
        self.read_block_checked(id, true).await
    }

    async fn read_block_checked(&self, id: &ObjectId, verify_id: bool) -> Result<Vec<u8>> {
        let sealed = self.get_block_sealed(id).await?;
        let store = self.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || {
            let data = store.decode_block(&id, &sealed)?;
            if verify_id {
                store.verify_block_id(&id, &data)?;
            }
            Ok(data)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Seals a segment; returns its id, the sealed bytes and whether the store already has it.
    pub async fn put_segment(&self, segment: &Segment) -> Result<(ObjectId, u64)> {
        let plain = segment.encode();
        let id = self.inner.keys.object_id(ObjectKind::Segment, &plain);
        let path = layout::segment(&id);
        if exists(&self.inner.objects, &path).await? {
            return Ok((id, 0));
        }
        let sealed = self
            .inner
            .keys
            .seal(ObjectKind::Segment, id.as_bytes(), &plain, false);
        let len = sealed.len() as u64;
        put(&self.inner.objects, &path, sealed.into()).await?;
        Ok((id, len))
    }

    /// Reads and verifies a segment.
    pub async fn read_segment(&self, id: &ObjectId) -> Result<Segment> {
        let sealed = self
            .get("manifest segment", &layout::segment(id), &id.to_hex())
            .await?;
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "manifest segment",
            name: id.to_hex(),
            reason,
        };
        let (plain, _) = self
            .inner
            .keys
            .open(ObjectKind::Segment, id.as_bytes(), &sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        if self.inner.keys.object_id(ObjectKind::Segment, &plain) != *id {
            return Err(corrupt("its contents do not hash to its id".to_owned()));
        }
        Segment::decode(&plain).map_err(corrupt)
    }

    /// Writes a commit record: the snapshot exists once this returns.
    pub(crate) async fn put_record(&self, record: &SnapshotRecord) -> Result<()> {
        let json = serde_json::to_vec(record).map_err(|e| internal(&e))?;
        let name = record.id.to_string();
        let sealed = self
            .inner
            .keys
            .seal(ObjectKind::Snapshot, name.as_bytes(), &json, false);
        put(
            &self.inner.objects,
            &layout::snapshot(&record.id),
            sealed.into(),
        )
        .await
    }

    /// Reads a snapshot's commit record.
    pub async fn snapshot(&self, id: &SnapshotId) -> Result<SnapshotRecord> {
        let path = layout::snapshot(id);
        let name = id.to_string();
        let sealed = match self.inner.objects.get(&path).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(StoreError::backend("read", &path))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::SnapshotNotFound { id: name });
            }
            Err(e) => return Err(StoreError::backend("read", &path)(e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "snapshot record",
            name: name.clone(),
            reason,
        };
        let (json, _) = self
            .inner
            .keys
            .open(ObjectKind::Snapshot, name.as_bytes(), &sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        let record: SnapshotRecord =
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        if record.id != *id {
            return Err(corrupt(format!("it names itself {}", record.id)));
        }
        record.validate()?;
        Ok(record)
    }

    /// The ids of every committed snapshot, oldest first.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        let prefix = layout::snapshots();
        let metas: Vec<_> = self
            .inner
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(StoreError::backend("list", &prefix))?;
        let mut ids: Vec<SnapshotId> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every committed snapshot's record, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let ids = self.snapshot_ids().await?;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            records.push(self.snapshot(&id).await?);
        }
        Ok(records)
    }

    /// Deletes a snapshot's commit record. Its blocks and segments stay until garbage
    /// collection finds nothing else uses them.
    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        // A damaged record must stay deletable, so only its existence is checked.
        let path = layout::snapshot(id);
        if !exists(&self.inner.objects, &path).await? {
            return Err(StoreError::SnapshotNotFound { id: id.to_string() });
        }
        self.inner
            .objects
            .delete(&path)
            .await
            .map_err(StoreError::backend("delete", &path))
    }

    /// The ids of every block in the store, in no order.
    pub async fn block_ids(&self) -> Result<Vec<ObjectId>> {
        let prefix = layout::blocks();
        let mut ids = Vec::new();
        let mut listing = self.inner.objects.list(Some(&prefix));
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(StoreError::backend("list", &prefix))?
        {
            if let Some(id) = layout::id_of(&meta.location) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Makes everything written so far durable before a commit record points at it. Local
    /// stores write through the page cache, so this syncs their file system; object stores
    /// are durable when a PUT returns.
    pub(crate) async fn sync(&self) -> Result<()> {
        let Some(local) = self.inner.local_sync.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || local.sync())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(|source| StoreError::Io {
                op: "sync",
                path: self.inner.location.to_string(),
                source,
            })
    }

    /// Starts flushing a local store's writes in the background, so that the sync before a
    /// commit has less left to do. Does nothing for object stores.
    pub(crate) fn flush_in_background(&self) {
        if let Some(local) = &self.inner.local_sync {
            local.start_background();
        }
    }

    async fn get(&self, what: &'static str, path: &Path, name: &str) -> Result<Bytes> {
        match self.inner.objects.get(path).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(StoreError::backend("read", path)),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::Missing {
                what,
                name: name.to_owned(),
            }),
            Err(e) => Err(StoreError::backend("read", path)(e)),
        }
    }
}

/// Tries every key slot with the master key.
async fn unlock(
    objects: &Arc<dyn ObjectStore>,
    master: &MasterKey,
    domain: DomainId,
    location: &str,
) -> Result<DomainSecret> {
    let prefix = layout::slots();
    let metas: Vec<_> = objects
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(StoreError::backend("list", &prefix))?;
    for meta in metas {
        let Some(name) = meta.location.filename().map(str::to_owned) else {
            continue;
        };
        let bytes = objects
            .get(&meta.location)
            .await
            .map_err(StoreError::backend("read", &meta.location))?
            .bytes()
            .await
            .map_err(StoreError::backend("read", &meta.location))?;
        let slot: KeySlot = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: "key slot",
            name: name.clone(),
            reason: e.to_string(),
        })?;
        match slot.unwrap(master, domain, &name) {
            Ok(secret) => return Ok(secret),
            Err(blockyard_crypto::CryptoError::WrongKey) => continue,
            Err(e) => {
                return Err(StoreError::Corrupt {
                    what: "key slot",
                    name,
                    reason: e.to_string(),
                });
            }
        }
    }
    Err(StoreError::WrongKey {
        location: location.to_owned(),
    })
}

async fn exists(objects: &Arc<dyn ObjectStore>, path: &Path) -> Result<bool> {
    match objects.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(StoreError::backend("read", path)(e)),
    }
}

async fn put(objects: &Arc<dyn ObjectStore>, path: &Path, payload: PutPayload) -> Result<()> {
    objects
        .put(path, payload)
        .await
        .map(|_| ())
        .map_err(StoreError::backend("write", path))
}

fn crypto(context: &'static str) -> impl FnOnce(blockyard_crypto::CryptoError) -> StoreError {
    move |source| StoreError::Crypto {
        context: context.to_owned(),
        source,
    }
}

fn internal(e: &serde_json::Error) -> StoreError {
    StoreError::Task(format!("cannot encode JSON: {e}"))
}

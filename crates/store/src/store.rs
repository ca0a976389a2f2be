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
use crate::condemned::Kind;
use crate::config::{
    DEFAULT_BLOCK_SIZE, FORMAT_VERSION, KNOWN_FEATURES, KeyDomainConfig, SEGMENT_BLOCKS,
    StoreConfig, validate_block_size,
};
use crate::durability::LocalSync;
use crate::error::{Result, StoreError};
use crate::layout;
use crate::raw::RawStore;
use crate::resilient::{RequestCounters, RequestCounts, resilient};
use crate::segment::Segment;
use crate::session::Session;
use crate::snapshot::{self, SnapshotId, SnapshotRecord};

/// zstd level for new blocks: level 1 keeps both cores ahead of the disk; level 3 costs
/// about half as much CPU again for 8% less data.
const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// Name of the first key slot `init` writes.
const FIRST_SLOT: &str = "slot-0";

/// The key domain a new store joins.
struct NewDomain {
    id: DomainId,
    secret: DomainSecret,
    encrypted: bool,
    current_key_id: u32,
}

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
    /// The counters of the `ResilientStore` that `objects` is.
    requests: Arc<RequestCounters>,
    location: Location,
    config: StoreConfig,
    keys: KeyDomain,
    /// For a local store: how its writes are made durable.
    local_sync: Option<Arc<LocalSync>>,
}

impl Inner {
    fn new(
        objects: Arc<dyn ObjectStore>,
        requests: Arc<RequestCounters>,
        location: Location,
        config: StoreConfig,
        keys: KeyDomain,
    ) -> Result<Arc<Self>> {
        let local_sync = crate::durability::local_sync(&location)?;
        Ok(Arc::new(Self {
            objects,
            requests,
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
        let objects = location.connect_backend(true)?;
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
        let domain = NewDomain {
            id: DomainId::generate(),
            secret: DomainSecret::generate(),
            encrypted: master_key.is_some(),
            current_key_id: 1,
        };
        Self::create(objects, location, block_size, domain, master_key).await
    }

    /// Creates a store at `location` in the key domain of `like`: the same domain secret,
    /// block size and encryption, so that copies between the two move sealed objects as
    /// they are, with no key. An encrypted domain needs `master_key`, the new store's own
    /// master key; an unencrypted one takes none.
    pub async fn init_like(
        location: &Location,
        like: &Store,
        master_key: Option<MasterKey>,
    ) -> Result<Self> {
        let objects = location.connect_backend(true)?;
        Self::init_like_on(objects, location.clone(), like, master_key).await
    }

    /// [`init_like`](Self::init_like) on an object store the caller built.
    pub async fn init_like_on(
        objects: Arc<dyn ObjectStore>,
        location: Location,
        like: &Store,
        master_key: Option<MasterKey>,
    ) -> Result<Self> {
        let keys = like.keys();
        match (keys.is_encrypted(), master_key.is_some()) {
            (true, false) => {
                return Err(StoreError::InvalidArgument(format!(
                    "{} is encrypted, so a store in its key domain needs a master key of its \
                     own (--key-file, --passphrase-env or --key-command)",
                    like.location()
                )));
            }
            (false, true) => {
                return Err(StoreError::InvalidArgument(format!(
                    "{} is not encrypted, so a store in its key domain takes no master key",
                    like.location()
                )));
            }
            _ => {}
        }
        let domain = NewDomain {
            id: keys.domain_id(),
            secret: keys.secret(),
            encrypted: keys.is_encrypted(),
            current_key_id: keys.current_key_id(),
        };
        Self::create(objects, location, like.block_size(), domain, master_key).await
    }

    async fn create(
        objects: Arc<dyn ObjectStore>,
        location: Location,
        block_size: u64,
        domain: NewDomain,
        master_key: Option<MasterKey>,
    ) -> Result<Self> {
        let (objects, requests) = resilient(objects);
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

        let NewDomain {
            id: domain,
            secret,
            encrypted,
            current_key_id,
        } = domain;
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
                current_key_id,
                plaintext_secret: (!encrypted).then(|| secret.to_hex()),
            },
            compression_level: DEFAULT_COMPRESSION_LEVEL,
        };

        // The slot goes first and the config last: a store whose config exists is complete.
        if let Some(master) = &master_key {
            let slot = KeySlot::wrap(master, &secret, domain, FIRST_SLOT)
                .map_err(crypto("cannot wrap the store's key"))?;
            let json = serde_json::to_vec_pretty(&slot).map_err(|e| internal(&e))?;
            create(&objects, &layout::slot(FIRST_SLOT), json.into(), &location).await?;
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| internal(&e))?;
        create(&objects, &config_path, json.into(), &location).await?;

        let keys = KeyDomain::new(domain, &secret, encrypted, current_key_id);
        Ok(Self {
            inner: Inner::new(objects, requests, location, config, keys)?,
        })
    }

    /// Opens the store at `location`. An encrypted store needs its master key; a wrong key is
    /// refused here, before anything is written.
    pub async fn open(location: &Location, master_key: Option<&MasterKey>) -> Result<Self> {
        let objects = location.connect_backend(false)?;
        Self::open_on(objects, location.clone(), master_key).await
    }

    /// Opens a store on an object store the caller built.
    pub async fn open_on(
        objects: Arc<dyn ObjectStore>,
        location: Location,
        master_key: Option<&MasterKey>,
    ) -> Result<Self> {
        let (objects, requests) = resilient(objects);
        let name = location.to_string();
        let config = crate::raw::read_config(&objects, &location).await?;
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
            inner: Inner::new(objects, requests, location, config, keys)?,
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

    /// The same store seen without keys: its objects as stored bytes.
    pub fn raw(&self) -> RawStore {
        RawStore::from_parts(
            Arc::clone(&self.inner.objects),
            Arc::clone(&self.inner.requests),
            self.inner.location.clone(),
            Arc::new(self.inner.config.clone()),
            self.inner.local_sync.clone(),
        )
    }

    /// The requests this store, its clones and its [`raw`](Self::raw) views have made of
    /// the backend so far, retries included.
    pub fn requests(&self) -> RequestCounts {
        self.inner.requests.snapshot()
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
    pub async fn put_segment(
        &self,
        segment: &Segment,
        session: &Session,
    ) -> Result<(ObjectId, u64)> {
        let plain = segment.encode();
        let id = self.inner.keys.object_id(ObjectKind::Segment, &plain);
        let path = layout::segment(&id);
        session.protect(Kind::Segment, &id).await?;
        if exists(&self.inner.objects, &path).await? {
            return Ok((id, 0));
        }
        // The whole segment is the clear part: its block ids are what a keyless copy must
        // read, and its id (a keyed hash) and the tag authenticate it.
        let sealed =
            self.inner
                .keys
                .seal_with_clear(ObjectKind::Segment, id.as_bytes(), &plain, &[], false);
        let len = sealed.len() as u64;
        put(&self.inner.objects, &path, sealed.into()).await?;
        Ok((id, len))
    }

    /// Reads and verifies a segment.
    pub async fn read_segment(&self, id: &ObjectId) -> Result<Segment> {
        let sealed = self
            .get("manifest segment", &layout::segment(id), &id.to_hex())
            .await?;
        self.open_segment(id, &sealed)
    }

    /// Opens and verifies a sealed segment: its tag or checksum, and that it hashes to its id.
    pub fn open_segment(&self, id: &ObjectId, sealed: &[u8]) -> Result<Segment> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "manifest segment",
            name: id.to_hex(),
            reason,
        };
        let opened = self
            .inner
            .keys
            .open_with_clear(ObjectKind::Segment, id.as_bytes(), sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        // Segments written before clear parts existed hold the segment as their payload.
        let plain = if opened.clear.is_empty() {
            opened.payload
        } else {
            opened.clear
        };
        if self.inner.keys.object_id(ObjectKind::Segment, &plain) != *id {
            return Err(corrupt("its contents do not hash to its id".to_owned()));
        }
        Segment::decode(&plain).map_err(corrupt)
    }

    /// The id of this store's segment that translates `segment` of key domain `domain`,
    /// as a copy from that domain recorded it; `None` when no copy did.
    pub(crate) async fn copy_map(
        &self,
        domain: &str,
        segment: &ObjectId,
    ) -> Result<Option<ObjectId>> {
        let path = layout::copy_map(domain, segment);
        let Some(sealed) = self.raw().get(&path).await? else {
            return Ok(None);
        };
        let name = copy_map_name(segment);
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "copy map",
            name: path.to_string(),
            reason,
        };
        let (payload, _) = self
            .inner
            .keys
            .open(ObjectKind::Segment, &name, &sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        let bytes: [u8; 32] = payload
            .try_into()
            .map_err(|_| corrupt("it does not hold one 32-byte id".to_owned()))?;
        Ok(Some(ObjectId::from_bytes(bytes)))
    }

    /// Records that this store's segment `ours` translates `segment` of key domain `domain`.
    pub(crate) async fn put_copy_map(
        &self,
        domain: &str,
        segment: &ObjectId,
        ours: &ObjectId,
    ) -> Result<()> {
        let sealed = self.inner.keys.seal(
            ObjectKind::Segment,
            &copy_map_name(segment),
            ours.as_bytes(),
            false,
        );
        put(
            &self.inner.objects,
            &layout::copy_map(domain, segment),
            sealed.into(),
        )
        .await
    }

    /// Writes a commit record: the snapshot exists once this returns.
    pub(crate) async fn put_record(&self, record: &SnapshotRecord) -> Result<()> {
        let json = serde_json::to_vec(record).map_err(|e| internal(&e))?;
        let name = record.id.to_string();
        let references = snapshot::record_references(&record.segments);
        let sealed = self.inner.keys.seal_with_clear(
            ObjectKind::Snapshot,
            name.as_bytes(),
            &references,
            &json,
            false,
        );
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
        self.open_record(id, &sealed)
    }

    /// Opens and verifies a snapshot's sealed commit record.
    pub(crate) fn open_record(&self, id: &SnapshotId, sealed: &[u8]) -> Result<SnapshotRecord> {
        let name = id.to_string();
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "snapshot record",
            name: name.clone(),
            reason,
        };
        let opened = self
            .inner
            .keys
            .open_with_clear(ObjectKind::Snapshot, name.as_bytes(), sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        let record: SnapshotRecord =
            serde_json::from_slice(&opened.payload).map_err(|e| corrupt(e.to_string()))?;
        if record.id != *id {
            return Err(corrupt(format!("it names itself {}", record.id)));
        }
        // Records written before clear parts existed have none (an empty clear part cannot
        // be a valid one: its header alone is 8 bytes); they still open with the key.
        if !opened.clear.is_empty()
            && snapshot::decode_references(&opened.clear).map_err(&corrupt)? != record.segments
        {
            return Err(corrupt(
                "the segments in its clear part differ from those it lists".to_owned(),
            ));
        }
        record.validate()?;
        Ok(record)
    }

    /// The ids of every committed snapshot, oldest first.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        self.raw().snapshot_ids().await
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

    /// The names of the store's key slots, sorted. An unencrypted store has none.
    pub async fn key_slots(&self) -> Result<Vec<String>> {
        let metas = self.raw().list(&layout::slots()).await?;
        let mut names: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Adds a key slot that opens the store with `master`, and returns its name. The store
    /// must have been opened with an existing key, which is how it holds the secret to wrap.
    pub async fn add_key_slot(&self, master: &MasterKey) -> Result<String> {
        if !self.inner.keys.is_encrypted() {
            return Err(StoreError::InvalidArgument(format!(
                "{} is not encrypted; it has no key slots",
                self.inner.location
            )));
        }
        let existing = self.key_slots().await?;
        let name = (existing.len()..)
            .map(|n| format!("slot-{n}"))
            .find(|name| !existing.contains(name))
            .unwrap_or_else(|| format!("slot-{}", ulid::Ulid::new()));
        let slot = KeySlot::wrap(
            master,
            &self.inner.keys.secret(),
            self.inner.keys.domain_id(),
            &name,
        )
        .map_err(crypto("cannot wrap the store's key"))?;
        let json = serde_json::to_vec_pretty(&slot).map_err(|e| internal(&e))?;
        put(&self.inner.objects, &layout::slot(&name), json.into()).await?;
        Ok(name)
    }

    /// Removes a key slot. The last slot is refused: without it nothing opens the store.
    pub async fn remove_key_slot(&self, name: &str) -> Result<()> {
        let existing = self.key_slots().await?;
        if !existing.iter().any(|n| n == name) {
            return Err(StoreError::InvalidArgument(format!(
                "{} has no key slot {name}; `blockyard key list` shows its slots",
                self.inner.location
            )));
        }
        if existing.len() == 1 {
            return Err(StoreError::InvalidArgument(format!(
                "{name} is the last key slot of {}; add another key before removing it",
                self.inner.location
            )));
        }
        let path = layout::slot(name);
        self.inner
            .objects
            .delete(&path)
            .await
            .map_err(StoreError::backend("delete", &path))
    }

    /// Makes a new data key current for blocks sealed from now on and returns its id. Old
    /// objects keep naming the key that sealed them and still open; nothing is rewritten.
    /// Processes that opened the store before keep sealing with the old key until they
    /// open it again, which is harmless: every key of the domain opens everywhere.
    pub async fn rotate_data_key(&self) -> Result<u32> {
        if !self.inner.keys.is_encrypted() {
            return Err(StoreError::InvalidArgument(format!(
                "{} is not encrypted; it has no data keys to rotate",
                self.inner.location
            )));
        }
        // Read the config afresh, so a rotation by another process is not undone.
        let mut config = crate::raw::read_config(&self.inner.objects, &self.inner.location).await?;
        let next = config
            .key_domain
            .current_key_id
            .checked_add(1)
            .ok_or_else(|| {
                StoreError::InvalidArgument("the store has used every data key id".to_owned())
            })?;
        config.key_domain.current_key_id = next;
        let json = serde_json::to_vec_pretty(&config).map_err(|e| internal(&e))?;
        put(&self.inner.objects, &layout::config(), json.into()).await?;
        Ok(next)
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

/// The name a copy map is sealed under: distinct from every segment's, whose name is its
/// bare 32-byte id.
fn copy_map_name(segment: &ObjectId) -> Vec<u8> {
    [b"copy-map ".as_slice(), segment.as_bytes()].concat()
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

/// Writes an object that must not exist yet: with a conditional PUT where the backend
/// enforces one, so that two `init`s racing on one location cannot both win (the loser is
/// told the store exists). A backend that does not implement conditional PUT gets a plain
/// one; so does one that ignores the condition (Garage), where the existence check made
/// before is all the protection there is. Nothing relies on the condition for correctness.
///
/// The retrying layer leaves conditional PUTs alone (a retry may meet its own lost first
/// attempt), so transient failures are retried here, where the answer can be told apart:
/// an object that exists with exactly our bytes is our own earlier attempt, since what
/// `init` writes holds a fresh random key domain.
async fn create(
    objects: &Arc<dyn ObjectStore>,
    path: &Path,
    payload: PutPayload,
    location: &Location,
) -> Result<()> {
    let policy = crate::resilient::RetryPolicy::default();
    let mut attempt = 1;
    loop {
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match objects.put_opts(path, payload.clone(), options).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let ours = payload.iter().flatten().copied().collect::<Vec<u8>>();
                let found = match objects.get(path).await {
                    Ok(found) => found.bytes().await.ok(),
                    Err(_) => None,
                };
                if attempt > 1 && found.as_deref() == Some(ours.as_slice()) {
                    return Ok(());
                }
                return Err(StoreError::AlreadyExists {
                    location: location.to_string(),
                });
            }
            Err(object_store::Error::NotImplemented | object_store::Error::NotSupported { .. }) => {
                return put(objects, path, payload).await;
            }
            Err(e) if attempt < policy.max_attempts && crate::resilient::is_transient(&e) => {
                let delay = policy.backoff(attempt, &mut rand::rng());
                tracing::debug!(%path, attempt, ?delay, error = %e, "conditional put retried");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(StoreError::backend("write", path)(e)),
        }
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

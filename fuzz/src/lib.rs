//! Fixtures shared by the fuzz targets and by the seed writer (`examples/seed_corpus.rs`).
//!
//! Everything here is deterministic where it can be: one key domain made from a fixed
//! secret, one master key, one snapshot id. Objects sealed under that domain have the same
//! bytes in every run, so a seed written today still opens tomorrow and a crash input saved
//! under `regressions/` reproduces without the process that found it. The one exception is
//! a key slot, whose salt and nonce `KeySlot::wrap` draws at random; any slot it makes opens
//! under the fixed master key, which is all the targets rely on.

use std::sync::{Arc, OnceLock};

use blockyard_crypto::{DomainId, DomainSecret, KeyDomain, KeySlot, MasterKey, ObjectKind};
use blockyard_store::{
    Fill, KeyDomainConfig, Location, Segment, SnapshotId, SnapshotOptions, SnapshotReader,
    SnapshotRecord, SnapshotWriter, Store, StoreConfig,
};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use tokio::runtime::Runtime;

/// The public id of the fixed key domain: 16 bytes that read as text in a hex dump.
pub const DOMAIN_ID: [u8; 16] = *b"blockyard-fuzz!!";

/// The fixed domain secret, as the 64 hex digits an unencrypted store's config holds.
pub const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The raw master key that wraps the fixed secret in the fixed key slot.
pub const MASTER_KEY: &[u8; 32] = b"blockyard fuzz master key, 32 b.";

/// The name of the one key slot the targets store; it is bound into the slot's wrapping.
pub const SLOT_NAME: &str = "slot-0";

/// The id under which `record_parse` stores the record it is fed.
pub const SNAPSHOT_ID: &str = "snap-0000000000000000000000000f0220ed";

/// Block size of the `record_parse` store, in bytes: the smallest a store accepts, so that
/// the fixture's snapshots stay small.
pub const FIXTURE_BLOCK_SIZE: u64 = 4096;

/// Positions per manifest segment in the `record_parse` store. Far below the default 4096
/// so that a ten-block snapshot already spans three segments, one of them short.
pub const FIXTURE_SEGMENT_BLOCKS: u32 = 4;

/// Positions per segment of the fixture's `wide` record, which differs from the store's
/// [`FIXTURE_SEGMENT_BLOCKS`]: every record carries its own segment size and readers honour
/// it, so a store may hold records cut either way.
pub const WIDE_SEGMENT_BLOCKS: u32 = 8;

/// Longest object name `envelope_open` takes from its input, in bytes: ids are 32 bytes and
/// snapshot ids 37, so 63 covers both with room for odd ones.
pub const MAX_NAME_LEN: usize = 63;

/// The fixed domain's id.
pub fn domain_id() -> DomainId {
    DomainId::from_bytes(DOMAIN_ID)
}

/// The fixed domain's secret.
pub fn secret() -> DomainSecret {
    DomainSecret::from_hex(SECRET_HEX).expect("the fixed secret is 64 hex digits")
}

/// The fixed key domain, encrypted or not, sealing with data key 1.
pub fn key_domain(encrypted: bool) -> KeyDomain {
    KeyDomain::new(domain_id(), &secret(), encrypted, 1)
}

/// The fixed raw master key.
pub fn master_key() -> MasterKey {
    MasterKey::from_key_bytes(MASTER_KEY.to_vec()).expect("the fixed key is 32 bytes")
}

/// A key slot wrapping the fixed secret under the fixed master key, as stored JSON.
pub fn slot_json() -> Vec<u8> {
    let slot = KeySlot::wrap(&master_key(), &secret(), domain_id(), SLOT_NAME)
        .expect("a raw key wraps a secret");
    serde_json::to_vec_pretty(&slot).expect("a slot serializes")
}

/// The id `record_parse` stores its record under.
pub fn snapshot_id() -> SnapshotId {
    SNAPSHOT_ID.parse().expect("the fixed snapshot id parses")
}

/// One current-thread runtime per process: making a runtime per input would cost more than
/// most inputs take to run.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A config object for a store of the fixed domain, as `Store::init_on` would write it.
pub fn config_json(encrypted: bool, block_size: u64, segment_blocks: u32) -> Vec<u8> {
    let mut features = vec!["zstd", "blake3-keyed-ids"];
    if encrypted {
        features.push("aes-256-gcm-siv");
    }
    let config = StoreConfig {
        format: "blockyard".to_owned(),
        version: blockyard_store::FORMAT_VERSION,
        required_features: features.into_iter().map(str::to_owned).collect(),
        block_size,
        segment_blocks,
        key_domain: KeyDomainConfig {
            id: domain_id(),
            encrypted,
            current_key_id: 1,
            plaintext_secret: (!encrypted).then(|| SECRET_HEX.to_owned()),
        },
        compression_level: 1,
    };
    serde_json::to_vec_pretty(&config).expect("a config serializes")
}

/// Writes `bytes` at `path` of `objects`.
pub async fn put(objects: &InMemory, path: &str, bytes: Vec<u8>) {
    objects
        .put(&Path::from(path), bytes.into())
        .await
        .expect("an in-memory put succeeds");
}

/// How `envelope_open` reads its input:
///
/// ```text
/// offset  size      field
/// 0       1         bits 0..2 object kind (ObjectKind::ALL index), bit 2 encrypted domain,
///                   bit 3 compressed flag for the re-seal round trip; other bits ignored
/// 1       1         name length, taken modulo MAX_NAME_LEN + 1 and cut to what is left
/// 2       len       the object's name
/// ...     rest      the envelope
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OpenInput<'a> {
    /// The kind the envelope is opened as.
    pub kind: ObjectKind,
    /// Whether to open with the encrypted or the plaintext domain.
    pub encrypted: bool,
    /// The compressed flag to seal with in the round trip.
    pub compressed: bool,
    /// The name the envelope is opened under.
    pub name: &'a [u8],
    /// The envelope's bytes.
    pub envelope: &'a [u8],
}

impl<'a> OpenInput<'a> {
    /// Splits a fuzz input; `None` when it is shorter than the two selector bytes.
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let ([selector, name_len], rest) = data.split_first_chunk::<2>()?;
        let kind = ObjectKind::ALL[usize::from(selector & 0b11)];
        let name_len = (usize::from(*name_len) % (MAX_NAME_LEN + 1)).min(rest.len());
        let (name, envelope) = rest.split_at(name_len);
        Some(Self {
            kind,
            encrypted: selector & 0b100 != 0,
            compressed: selector & 0b1000 != 0,
            name,
            envelope,
        })
    }

    /// The fuzz input that splits into `self`; names longer than [`MAX_NAME_LEN`] are a
    /// caller bug.
    pub fn join(&self) -> Vec<u8> {
        assert!(self.name.len() <= MAX_NAME_LEN, "name too long");
        let kind_index = ObjectKind::ALL
            .iter()
            .position(|kind| *kind == self.kind)
            .expect("every kind is in ALL");
        let selector = u8::try_from(kind_index).expect("four kinds")
            | if self.encrypted { 0b100 } else { 0 }
            | if self.compressed { 0b1000 } else { 0 };
        let name_len = u8::try_from(self.name.len()).expect("checked above");
        [&[selector, name_len], self.name, self.envelope].concat()
    }
}

/// An empty unencrypted store of the fixed domain over memory, with 4 KiB blocks in
/// segments of four, and a handle on its objects.
pub async fn plain_store() -> (Arc<InMemory>, Store) {
    let objects = Arc::new(InMemory::new());
    let config = config_json(false, FIXTURE_BLOCK_SIZE, FIXTURE_SEGMENT_BLOCKS);
    put(&objects, "config", config).await;
    let shared: Arc<dyn ObjectStore> = Arc::clone(&objects) as Arc<dyn ObjectStore>;
    let store = Store::open_on(shared, Location::Memory, None)
        .await
        .expect("the fixture config opens");
    (objects, store)
}

/// The store `record_parse` reads records from: unencrypted, of the fixed domain, with
/// 4 KiB blocks in segments of four, holding two committed snapshots and the segments of a
/// third, whose segments and blocks a fuzzed record can point at.
///
/// The store crate's `tests/fuzz_regressions.rs` rebuilds the objects its saved records
/// name; a change here that alters them (block contents, the secret, segment sizes) needs
/// the same change there.
#[derive(Debug)]
pub struct RecordFixture {
    /// The objects behind the store, for writing the fuzzed record.
    pub objects: Arc<InMemory>,
    /// The open store.
    pub store: Store,
    /// Ten blocks in three segments: data at 0, 1 and 5, and a 100-byte last block 9.
    pub base: SnapshotRecord,
    /// A child of `base` that keeps its blocks and changes block 2 and block 5.
    pub child: SnapshotRecord,
    /// `base` described with segments of [`WIDE_SEGMENT_BLOCKS`] positions, whose two
    /// segments are in the store. The record itself is not stored: it is a seed, and,
    /// renamed to [`SNAPSHOT_ID`], the input saved as
    /// `regressions/record_parse/fill_parent_child_of_a_record_with_8_block_segments`.
    pub wide: SnapshotRecord,
}

impl RecordFixture {
    /// Builds the store and commits its two snapshots.
    pub async fn build() -> Self {
        let (objects, store) = plain_store().await;
        let block = usize::try_from(FIXTURE_BLOCK_SIZE).expect("4 KiB fits in usize");
        let size = 9 * FIXTURE_BLOCK_SIZE + 100;
        let base = commit(
            &store,
            size,
            None,
            &[
                (0, pattern(1, block)),
                (1, pattern(2, block)),
                (5, pattern(3, block)),
                (9, pattern(4, 100)),
            ],
        )
        .await;
        let child = commit(
            &store,
            size,
            Some(&base),
            &[(2, pattern(5, block)), (5, vec![0; block])],
        )
        .await;
        let wide = widen(&store, &base).await;

        Self {
            objects,
            store,
            base,
            child,
            wide,
        }
    }

    /// `record` as JSON, renamed to [`SNAPSHOT_ID`] so that `record_parse` accepts it.
    pub fn record_json(record: &SnapshotRecord) -> Vec<u8> {
        let mut record = record.clone();
        record.id = snapshot_id();
        serde_json::to_vec(&record).expect("a record serializes")
    }
}

/// Commits a snapshot of `size` bytes holding `blocks`, on `parent` if given.
async fn commit(
    store: &Store,
    size: u64,
    parent: Option<&SnapshotRecord>,
    blocks: &[(u64, Vec<u8>)],
) -> SnapshotRecord {
    let options = SnapshotOptions {
        size,
        parent: parent.map(|record| record.id),
        fill: if parent.is_some() {
            Fill::Parent
        } else {
            Fill::Zero
        },
        ..SnapshotOptions::default()
    };
    let writer = SnapshotWriter::begin(store, options)
        .await
        .expect("begin a fixture snapshot");
    for (index, data) in blocks {
        writer
            .put_block(*index, data.clone())
            .await
            .expect("put a fixture block");
    }
    writer.commit().await.expect("commit a fixture snapshot")
}

/// `record` cut into segments of [`WIDE_SEGMENT_BLOCKS`] positions, its segments stored.
async fn widen(store: &Store, record: &SnapshotRecord) -> SnapshotRecord {
    let reader = SnapshotReader::open(store, &record.id)
        .await
        .expect("a fixture snapshot opens");
    let per = u64::from(WIDE_SEGMENT_BLOCKS);
    let session = blockyard_store::Session::begin(&store.raw(), "fuzz fixture")
        .await
        .expect("a session");
    let blocks = record.block_count();
    let mut segments = Vec::new();
    for start in (0..blocks).step_by(WIDE_SEGMENT_BLOCKS as usize) {
        let positions = (blocks - start).min(per);
        let mut segment = Segment::zeroed(u32::try_from(positions).expect("at most 8"));
        for position in 0..positions {
            let id = reader
                .block_id(start + position)
                .await
                .expect("a fixture block id reads");
            segment.set(usize::try_from(position).expect("at most 8"), id);
        }
        let (id, _) = store
            .put_segment(&segment, &session)
            .await
            .expect("store a wide segment");
        segments.push(id);
    }

    let mut wide = record.clone();
    wide.segment_blocks = WIDE_SEGMENT_BLOCKS;
    wide.segments = segments;
    wide
}

/// `len` bytes that differ by `seed` and compress a little, as real blocks do.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 7).to_le_bytes()[0]).wrapping_mul(31))
        .collect()
}

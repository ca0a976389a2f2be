//! The one error type of the store crate.

use std::io;

use blockyard_crypto::CryptoError;
use blockyard_formats::FormatError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Nothing at the location looks like a store.
    #[error("no blockyard store at {location}; create one with `blockyard store init {location}`")]
    NotAStore {
        /// The location that was opened.
        location: String,
    },
    /// `init` found a store already there.
    #[error("a blockyard store already exists at {location}")]
    AlreadyExists {
        /// The location given to `init`.
        location: String,
    },
    /// The store was written by a newer, incompatible blockyard.
    #[error(
        "the store at {location} has format version {found}; this blockyard reads version \
         {supported}: upgrade blockyard"
    )]
    UnsupportedVersion {
        /// The store's location.
        location: String,
        /// The version the store's config names.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The store needs features this build does not have.
    #[error("the store at {location} needs {missing}, which this blockyard lacks: upgrade it")]
    MissingFeatures {
        /// The store's location.
        location: String,
        /// The features missing, comma-separated.
        missing: String,
    },
    /// The store is encrypted and no master key was given.
    #[error(
        "the store at {location} is encrypted: give its master key with --key-file, \
         --passphrase-env or --key-command"
    )]
    KeyRequired {
        /// The store's location.
        location: String,
    },
    /// A master key was given but opens no key slot.
    #[error("the master key does not open any key slot of the store at {location} (wrong key?)")]
    WrongKey {
        /// The store's location.
        location: String,
    },
    /// A location string that cannot be used.
    #[error("bad store location {input:?}: {reason}")]
    BadLocation {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot id that is not of the form `snap-` and 32 hex digits.
    #[error("bad snapshot id {input:?}: expected snap- followed by 32 lowercase hex digits")]
    BadSnapshotId {
        /// What was given.
        input: String,
    },
    /// No commit record for the snapshot.
    #[error("snapshot {id} not found in the store")]
    SnapshotNotFound {
        /// The snapshot asked for.
        id: String,
    },
    /// No record for the image.
    #[error("image {id} not found in the store")]
    ImageNotFound {
        /// The image asked for.
        id: String,
    },
    /// Garbage collection took the session for dead, so what it wrote may be deleted.
    #[error(
        "session {session} missed its heartbeats long enough for garbage collection to take it \
         for dead; nothing was committed, run the command again"
    )]
    SessionExpired {
        /// The session.
        session: String,
    },
    /// A store or snapshot option out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// A block index past the end of a snapshot.
    #[error("block {index} is outside the snapshot, which has {blocks} blocks")]
    BlockOutOfRange {
        /// The index asked for.
        index: u64,
        /// How many blocks the snapshot has.
        blocks: u64,
    },
    /// Stored bytes that fail their checks.
    #[error("{what} {name} is damaged: {reason}")]
    Corrupt {
        /// The kind of object: block, manifest segment, snapshot record, config.
        what: &'static str,
        /// The object's id.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored object that the store's records reference is gone.
    #[error("{what} {name} is missing from the store")]
    Missing {
        /// The kind of object.
        what: &'static str,
        /// The object's id.
        name: String,
    },
    /// The object store failed.
    #[error("cannot {op} {path} in the object store")]
    Backend {
        /// The operation: read, write, list, delete.
        op: &'static str,
        /// The object's path inside the store.
        path: String,
        /// What the backend said.
        #[source]
        source: object_store::Error,
    },
    /// Sealing or opening failed.
    #[error("{context}")]
    Crypto {
        /// What was being done.
        context: String,
        /// What the crypto layer said.
        #[source]
        source: CryptoError,
    },
    /// Reading the source image failed.
    #[error("cannot read the source image")]
    Source(#[from] FormatError),
    /// Writing an exported image failed.
    #[error("cannot write the image")]
    Output(#[source] FormatError),
    /// Local I/O outside the object store failed (the restore target, a sync).
    #[error("cannot {op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A worker task ended without finishing its work.
    #[error("a worker task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// True when the failure comes from a full disk on the store's or the output's side,
    /// so that a caller can say what to do about it.
    pub fn is_disk_full(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<io::Error>()
                && (io.kind() == io::ErrorKind::StorageFull
                    || io.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()))
            {
                return true;
            }
            source = error.source();
        }
        false
    }

    pub(crate) fn backend(
        op: &'static str,
        path: &object_store::path::Path,
    ) -> impl FnOnce(object_store::Error) -> Self {
        let path = path.to_string();
        move |source| Self::Backend { op, path, source }
    }
}

/// Results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

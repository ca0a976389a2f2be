//! The blockyard repository: blocks, manifests and snapshots on object storage.
//!
//! A store keeps disks as block-level snapshots. Each disk is cut into fixed-size blocks;
//! every block with data is named by a keyed BLAKE3 hash of its bytes and stored once,
//! compressed with zstd and sealed (authenticated, and encrypted when the store is), as its
//! own object. A snapshot is a list of block ids kept in manifest segments of 4096
//! positions, and a commit record written last. See [`layout`](crate::layout) for the
//! objects and `docs/architecture.md` for the reasoning.
//!
//! ```
//! use blockyard_store::{Location, SnapshotOptions, SnapshotReader, SnapshotWriter, Store};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), blockyard_store::StoreError> {
//! let store = Store::init(&Location::Memory, Default::default()).await?;
//! let block = store.block_size() as usize;
//!
//! // Write block 2 of a four-block disk; the rest read as zero.
//! let options = SnapshotOptions { size: 4 * block as u64, ..Default::default() };
//! let writer = SnapshotWriter::begin(&store, options).await?;
//! writer.put_block(2, vec![7u8; block]).await?;
//! let record = writer.commit().await?;
//!
//! let reader = SnapshotReader::open(&store, &record.id).await?;
//! assert_eq!(reader.read_block(2).await?, Some(vec![7u8; block]));
//! assert_eq!(reader.read_block(0).await?, None);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod block_cache;
mod catalog;
mod check;
mod codec;
mod condemned;
mod config;
mod copy;
mod disk;
mod durability;
mod error;
mod export;
mod family;
mod faults;
mod gc;
mod ingest;
pub mod layout;
mod location;
mod object_sink;
mod object_source;
mod progress;
mod pull;
mod raw;
mod reader;
mod recycle;
mod resilient;
mod restore;
mod retention;
mod segment;
mod session;
mod snapshot;
mod store;
mod writer;

pub use block_cache::{BlockCache, CacheTrim, DEFAULT_CACHE_BYTES};
pub use catalog::{
    Architecture, BootMode, Device, ImageId, ImageRecord, NewImage, deregister_image, image,
    images, put_image, register_image, update_image, validate_label,
};
pub use check::{CheckOptions, CheckReport, Problem, check};
pub use config::{
    DEFAULT_BLOCK_SIZE, FORMAT_VERSION, KeyDomainConfig, SEGMENT_BLOCKS, StoreConfig,
};
pub use copy::{
    CopyMode, CopyOptions, CopyProgress, DEFAULT_COPY_CONCURRENCY, DestinationReport, Endpoint,
    RequestTotals, copy_snapshot,
};
pub use disk::SnapshotDisk;
pub use error::{Result, StoreError};
pub use export::{ExportSummary, export};
pub use family::{family_images, promote, resolve_image};
pub use faults::{FaultInjector, FaultPlan};
pub use gc::{
    DEFAULT_CLOCK_SLACK, DEFAULT_DELETE_CONCURRENCY, DEFAULT_GRACE, GcOptions, GcReport,
    collect_garbage,
};
pub use ingest::{CreateOptions, DEFAULT_CONCURRENCY, create_snapshot};
pub use location::Location;
pub use object_sink::ObjectUpload;
pub use object_source::{ObjectResolver, ObjectSource, open_object, open_object_url};
pub use progress::{NoProgress, Progress};
pub use pull::{PullOptions, PullSummary, pull};
pub use raw::{RawStore, image_snapshots, record_segments, segment_of};
pub use reader::{ChangedBlock, SnapshotReader, diff};
pub use recycle::{
    Recycled, RecycledKind, purge_recycled, recycle, recycle_bin, restore_recycled, store_time,
};
pub use resilient::{
    AttemptCounts, RETRY_BASE_DELAY, RETRY_MAX_ATTEMPTS, RETRY_MAX_DELAY, RETRY_MAX_ELAPSED,
    RequestCounts, ResilientStore, RetryPolicy,
};
pub use restore::{RestoreOptions, RestoreSummary, restore};
pub use retention::{RetentionPolicy, RetentionReport, retain};
pub use segment::Segment;
pub use session::{DEFAULT_SESSION_TIMEOUT, HEARTBEAT, Session};
pub use snapshot::{BlockCounts, SnapshotId, SnapshotRecord, WriteStats, record_references};
pub use store::{InitOptions, Store};
pub use writer::{Fill, PutOutcome, SnapshotOptions, SnapshotWriter};

//! Where each object lives. The layout is the same on local disk and on S3:
//!
//! ```text
//! config                          format version, block size, key domain, features
//! keys/slots/<name>               the key-domain secret wrapped by one master key
//! blocks/<aaa>/<block-id>         envelope(zstd(block)), named by the keyed BLAKE3 id
//! manifests/<aaa>/<segment-id>    envelope(segment): 4096 positions, data bitmap + ids
//! snapshots/<snap-id>             envelope(commit record), written last: the commit point
//! copymaps/<domain>/<aaa>/<seg>   envelope(id of this store's segment that translates
//!                                 segment <seg> of key domain <domain>), written by copies
//!                                 from another key domain
//! sessions/<ses-id>               a writer's lease (see `session.rs`)
//! gc/runs/<run>/…, gc/expired/…   garbage collection's state (see `condemned.rs`)
//! ```
//!
//! `<aaa>` is the first three hex digits of the id: 4096 folders keep a local store's
//! directories small up to about 10^7 blocks, and spread keys across S3 partitions.

use blockyard_crypto::ObjectId;
use object_store::path::Path;

use crate::SnapshotId;

/// The store's config object.
pub(crate) fn config() -> Path {
    Path::from("config")
}

/// The folder holding key slots.
pub(crate) fn slots() -> Path {
    Path::from("keys/slots")
}

/// One key slot.
pub(crate) fn slot(name: &str) -> Path {
    Path::from(format!("keys/slots/{name}"))
}

/// The folder holding every block.
pub(crate) fn blocks() -> Path {
    Path::from("blocks")
}

/// One block.
pub(crate) fn block(id: &ObjectId) -> Path {
    sharded("blocks", id)
}

/// One manifest segment.
pub(crate) fn segment(id: &ObjectId) -> Path {
    sharded("manifests", id)
}

/// The folder holding commit records.
pub(crate) fn snapshots() -> Path {
    Path::from("snapshots")
}

/// One snapshot's commit record.
pub(crate) fn snapshot(id: &SnapshotId) -> Path {
    Path::from(format!("snapshots/{id}"))
}

/// The folder holding the commit records of snapshots in the recycle bin.
pub(crate) fn binned_snapshots() -> Path {
    Path::from("recycle/snapshots")
}

/// The snapshot id that a commit record's path (live or binned) ends in, if it is one.
pub(crate) fn snapshot_of(path: &Path) -> Option<SnapshotId> {
    path.filename()?.parse().ok()
}

/// The translation of a segment of another key domain into this store's ids.
pub(crate) fn copy_map(domain: &str, segment: &ObjectId) -> Path {
    sharded(&format!("copymaps/{domain}"), segment)
}

fn sharded(folder: &str, id: &ObjectId) -> Path {
    let hex = id.to_hex();
    Path::from(format!("{folder}/{}/{hex}", &hex[..3]))
}

/// The id in a block or segment path, if the path's last part is one.
pub(crate) fn id_of(path: &Path) -> Option<ObjectId> {
    path.filename()?.parse().ok()
}

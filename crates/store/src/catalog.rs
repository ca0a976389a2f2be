//! The image catalog: machine images registered from snapshots.
//!
//! ```text
//! images/<img-id>    envelope(kind image, clear part = its snapshot ids, image record JSON)
//! ```
//!
//! An image record names its snapshots by device, with what a hypervisor needs to boot
//! them (architecture, boot mode) and what a fleet needs to manage them (family, tags,
//! protection, deprecation, the accounts it is shared with). Changing an attribute writes
//! the record again; the last writer wins, as with any attribute store. How an image
//! becomes its family's latest, and how `FAMILY@latest` finds it, is in
//! [`family`](crate::family).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;

use blockyard_crypto::ObjectKind;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::snapshot::SnapshotId;
use crate::store::Store;

/// Longest image name, family name, device name, account or tag, in bytes: these are
/// labels, and a family name becomes a folder of the store.
const MAX_LABEL: usize = 128;

/// Most devices one image may name.
const MAX_DEVICES: usize = 64;

/// An image's id: `img-` and 32 lowercase hex digits of a ULID's 16 bytes, so ids sort by
/// registration time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(u128);

impl ImageId {
    /// A new id for an image registered now.
    pub fn generate() -> Self {
        Self(ulid::Ulid::new().0)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "img-{:032x}", self.0)
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ImageId {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self> {
        let bad = || {
            StoreError::InvalidArgument(format!(
                "bad image id {input:?}: expected img- followed by 32 lowercase hex digits"
            ))
        };
        let hex = input.strip_prefix("img-").ok_or_else(bad)?;
        let valid = hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(bad());
        }
        u128::from_str_radix(hex, 16).map(Self).map_err(|_| bad())
    }
}

impl Serialize for ImageId {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The architecture an image boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// 64-bit x86.
    X86_64,
    /// 64-bit ARM.
    Aarch64,
}

/// How an image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// UEFI firmware.
    Uefi,
    /// Legacy BIOS.
    Bios,
}

impl FromStr for Architecture {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self> {
        match input {
            "x86_64" => Ok(Self::X86_64),
            "aarch64" => Ok(Self::Aarch64),
            _ => Err(StoreError::InvalidArgument(format!(
                "architecture {input:?} is not x86_64 or aarch64"
            ))),
        }
    }
}

impl FromStr for BootMode {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self> {
        match input {
            "uefi" => Ok(Self::Uefi),
            "bios" => Ok(Self::Bios),
            _ => Err(StoreError::InvalidArgument(format!(
                "boot mode {input:?} is not uefi or bios"
            ))),
        }
    }
}

/// One disk of an image: the device it is attached as, and its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device name, as `/dev/xvda` or `disk1`.
    pub name: String,
    /// The snapshot that holds it.
    pub snapshot: SnapshotId,
}

/// A registered machine image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image's id.
    pub id: ImageId,
    /// Its name.
    pub name: String,
    /// The family it belongs to, if any.
    pub family: Option<String>,
    /// When it was registered, by the store's clock.
    pub created: DateTime<Utc>,
    /// Its disks, in boot order.
    pub devices: Vec<Device>,
    /// The architecture it boots on.
    pub architecture: Architecture,
    /// How it boots.
    pub boot_mode: BootMode,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// A protected image cannot be deregistered.
    pub protected: bool,
    /// From this time on the image is deprecated: `FAMILY@latest` skips it.
    pub deprecate_at: Option<DateTime<Utc>>,
    /// Accounts the image is shared with.
    pub shared_with: BTreeSet<String>,
}

impl ImageRecord {
    /// Whether the image is deprecated at `now`.
    pub fn is_deprecated(&self, now: DateTime<Utc>) -> bool {
        self.deprecate_at.is_some_and(|at| at <= now)
    }
}

/// What `register_image` needs.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// The image's name.
    pub name: String,
    /// The family it belongs to, if any.
    pub family: Option<String>,
    /// Its disks, in boot order.
    pub devices: Vec<Device>,
    /// The architecture it boots on.
    pub architecture: Architecture,
    /// How it boots.
    pub boot_mode: BootMode,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// Checks a name used as a label: not empty, at most [`MAX_LABEL`] bytes, and for a family
/// (which names a folder) only letters, digits and `.`, `_`, `-`.
pub fn validate_label(what: &str, value: &str, folder: bool) -> Result<()> {
    let bad = |reason: &str| {
        Err(StoreError::InvalidArgument(format!(
            "{what} {value:?} {reason}"
        )))
    };
    if value.is_empty() {
        return bad("is empty");
    }
    if value.len() > MAX_LABEL {
        return bad(&format!("is longer than {MAX_LABEL} bytes"));
    }
    if folder
        && (!value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            || value.starts_with('.'))
    {
        return bad("may hold only letters, digits, '.', '_' and '-', and not start with '.'");
    }
    if value.chars().any(char::is_control) {
        return bad("holds control characters");
    }
    Ok(())
}

fn image_path(id: &ImageId) -> Path {
    Path::from(format!("images/{id}"))
}

/// Registers an image of snapshots the store holds, and returns its record.
pub async fn register_image(store: &Store, new: NewImage) -> Result<ImageRecord> {
    validate_label("image name", &new.name, false)?;
    if let Some(family) = &new.family {
        validate_label("family", family, true)?;
    }
    if new.devices.is_empty() {
        return Err(StoreError::InvalidArgument(
            "an image needs at least one snapshot".to_owned(),
        ));
    }
    if new.devices.len() > MAX_DEVICES {
        return Err(StoreError::InvalidArgument(format!(
            "an image may name at most {MAX_DEVICES} devices"
        )));
    }
    let mut seen = HashSet::new();
    for device in &new.devices {
        validate_label("device", &device.name, false)?;
        if !seen.insert(device.name.as_str()) {
            return Err(StoreError::InvalidArgument(format!(
                "device {} is named twice",
                device.name
            )));
        }
        if !store.raw().has_snapshot(&device.snapshot).await? {
            return Err(StoreError::SnapshotNotFound {
                id: device.snapshot.to_string(),
            });
        }
    }
    for (key, value) in &new.tags {
        validate_label("tag", key, false)?;
        if value.len() > MAX_LABEL {
            return Err(StoreError::InvalidArgument(format!(
                "the value of tag {key} is longer than {MAX_LABEL} bytes"
            )));
        }
    }

    let record = ImageRecord {
        id: ImageId::generate(),
        name: new.name,
        family: new.family,
        // The store's clock, which retention's --keep-within is judged by.
        created: crate::recycle::store_time(store).await?,
        devices: new.devices,
        architecture: new.architecture,
        boot_mode: new.boot_mode,
        description: new.description,
        tags: new.tags,
        protected: false,
        deprecate_at: None,
        shared_with: BTreeSet::new(),
    };
    put_image(store, &record).await?;
    Ok(record)
}

/// Writes an image's record, sealed under `store`'s keys.
pub async fn put_image(store: &Store, record: &ImageRecord) -> Result<()> {
    let json = serde_json::to_vec(record).map_err(|e| StoreError::Task(e.to_string()))?;
    let name = record.id.to_string();
    let snapshots: Vec<SnapshotId> = record.devices.iter().map(|d| d.snapshot).collect();
    let sealed = store.keys().seal_with_clear(
        ObjectKind::Image,
        name.as_bytes(),
        &encode_snapshot_list(&snapshots),
        &json,
        false,
    );
    store
        .raw()
        .put(&image_path(&record.id), Bytes::from(sealed))
        .await
}

/// Magic number of an image envelope's clear part.
const SNAPSHOT_LIST_MAGIC: &[u8; 4] = b"BYI1";

/// An image envelope's clear part: what a copy without keys must know, the image's
/// snapshots in device order.
///
/// ```text
/// offset  size     field
/// 0       4        magic "BYI1"
/// 4       4        snapshot count n, u32 little-endian
/// 8       16 * n   the snapshot ids' 16 bytes, big-endian, in device order
/// ```
fn encode_snapshot_list(snapshots: &[SnapshotId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 16 * snapshots.len());
    out.extend_from_slice(SNAPSHOT_LIST_MAGIC);
    out.extend_from_slice(
        &u32::try_from(snapshots.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for id in snapshots {
        out.extend_from_slice(&id.to_bytes());
    }
    out
}

/// Parses an image envelope's clear part; the count must match the bytes exactly.
pub(crate) fn decode_snapshot_list(bytes: &[u8]) -> std::result::Result<Vec<SnapshotId>, String> {
    let Some((header, ids)) = bytes.split_first_chunk::<8>() else {
        return Err(format!(
            "its clear part is {} bytes, shorter than its header",
            bytes.len()
        ));
    };
    if &header[..4] != SNAPSHOT_LIST_MAGIC {
        return Err("its clear part does not start with the magic \"BYI1\"".to_owned());
    }
    let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if ids.len() as u64 != u64::from(count) * 16 {
        return Err(format!(
            "its clear part names {count} snapshots in {} bytes",
            ids.len()
        ));
    }
    Ok(ids
        .chunks_exact(16)
        .map(|chunk| {
            let mut id = [0u8; 16];
            id.copy_from_slice(chunk);
            SnapshotId::from_bytes(id)
        })
        .collect())
}

/// Reads an image's record.
pub async fn image(store: &Store, id: &ImageId) -> Result<ImageRecord> {
    let path = image_path(id);
    let Some(sealed) = store.raw().get(&path).await? else {
        return Err(StoreError::ImageNotFound { id: id.to_string() });
    };
    let name = id.to_string();
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "image record",
        name: name.clone(),
        reason,
    };
    let opened = store
        .keys()
        .open_with_clear(ObjectKind::Image, name.as_bytes(), &sealed)
        .map_err(|e| corrupt(e.to_string()))?;
    let record: ImageRecord =
        serde_json::from_slice(&opened.payload).map_err(|e| corrupt(e.to_string()))?;
    if record.id != *id {
        return Err(corrupt(format!("it names itself {}", record.id)));
    }
    let listed = decode_snapshot_list(&opened.clear).map_err(&corrupt)?;
    if listed.iter().ne(record.devices.iter().map(|d| &d.snapshot)) {
        return Err(corrupt(
            "the snapshots in its clear part differ from its devices'".to_owned(),
        ));
    }
    Ok(record)
}

/// Every image's record, oldest first.
pub async fn images(store: &Store) -> Result<Vec<ImageRecord>> {
    let mut ids: Vec<ImageId> = store
        .raw()
        .list(&Path::from("images"))
        .await?
        .iter()
        .filter_map(|meta| meta.location.filename()?.parse().ok())
        .collect();
    ids.sort();
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        records.push(image(store, &id).await?);
    }
    Ok(records)
}

/// Changes an image's attributes with `change` and writes the record back.
pub async fn update_image(
    store: &Store,
    id: &ImageId,
    change: impl FnOnce(&mut ImageRecord) -> Result<()>,
) -> Result<ImageRecord> {
    let mut record = image(store, id).await?;
    change(&mut record)?;
    put_image(store, &record).await?;
    Ok(record)
}

/// Deregisters an image: its record goes to the recycle bin, its snapshots stay. A
/// protected image is refused.
pub async fn deregister_image(store: &Store, id: &ImageId) -> Result<ImageRecord> {
    let record = image(store, id).await?;
    if record.protected {
        return Err(StoreError::InvalidArgument(format!(
            "image {id} is protected; `image unprotect` it first"
        )));
    }
    crate::recycle::recycle(store, &id.to_string()).await?;
    Ok(record)
}

//! Retention: deregistering a family's old images, and deleting the snapshots no image uses.
//!
//! An image of the family is kept when any of these holds: it is among the newest
//! `keep_last` (by registration, which its id orders); it was registered within
//! `keep_within` of the store's clock; it is protected; it is the family's `@latest`.
//! Every other image of the family is deregistered, and each of its snapshots that no
//! remaining image (of any family) uses is deleted. Both go to the recycle bin, so a
//! retention run can be undone until the bin is purged.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{ImageId, images};
use crate::error::{Result, StoreError};
use crate::family::family_images;
use crate::recycle::{recycle, store_time};
use crate::snapshot::SnapshotId;
use crate::store::Store;

/// What to keep of a family.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Keep this many of the newest images.
    pub keep_last: usize,
    /// Also keep every image registered within this long of now, by the store's clock.
    pub keep_within: Option<Duration>,
    /// Decide and report, but deregister and delete nothing.
    pub dry_run: bool,
}

/// What a retention run decided, and did unless it was a dry run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    /// Images of the family kept.
    pub kept: Vec<ImageId>,
    /// Images deregistered (into the recycle bin).
    pub deregistered: Vec<ImageId>,
    /// Snapshots deleted (into the recycle bin) because no remaining image uses them.
    pub snapshots_deleted: Vec<SnapshotId>,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Applies `policy` to `family`.
pub async fn retain(
    store: &Store,
    family: &str,
    policy: RetentionPolicy,
) -> Result<RetentionReport> {
    crate::catalog::validate_label("family", family, true)?;
    let now = store_time(store).await?;
    let keep_within = match policy.keep_within {
        Some(window) => Some(chrono::Duration::from_std(window).map_err(|_| {
            StoreError::InvalidArgument("the --keep-within window is too long".to_owned())
        })?),
        None => None,
    };
    let latest = family_images(store, family, chrono::Utc::now(), 1)
        .await?
        .first()
        .map(|image| image.id);

    let all = images(store).await?;
    let mut members: Vec<_> = all
        .iter()
        .filter(|image| image.family.as_deref() == Some(family))
        .collect();
    members.sort_by_key(|image| std::cmp::Reverse(image.id));
    let mut report = RetentionReport {
        dry_run: policy.dry_run,
        ..RetentionReport::default()
    };
    for (rank, image) in members.iter().enumerate() {
        let keep = rank < policy.keep_last
            || keep_within.is_some_and(|window| now - image.created <= window)
            || image.protected
            || latest == Some(image.id);
        if keep {
            report.kept.push(image.id);
        } else {
            report.deregistered.push(image.id);
        }
    }

    // Snapshots of the images going away that no image staying uses.
    let going: HashSet<ImageId> = report.deregistered.iter().copied().collect();
    let still_used: HashSet<SnapshotId> = all
        .iter()
        .filter(|image| !going.contains(&image.id))
        .flat_map(|image| image.devices.iter().map(|d| d.snapshot))
        .collect();
    let mut seen = HashSet::new();
    for image in all.iter().filter(|image| going.contains(&image.id)) {
        for device in &image.devices {
            if !still_used.contains(&device.snapshot) && seen.insert(device.snapshot) {
                report.snapshots_deleted.push(device.snapshot);
            }
        }
    }

    if !policy.dry_run {
        for id in &report.deregistered {
            recycle(store, &id.to_string()).await?;
        }
        for id in &report.snapshots_deleted {
            match recycle(store, &id.to_string()).await {
                // Deleted by hand already: nothing left to do.
                Ok(()) | Err(StoreError::SnapshotNotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(report)
}

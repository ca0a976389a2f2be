//! The report of a bake run. It is also the run's state: `bake --resume RUN` reads it back
//! and carries on from the first phase of each pipeline that has not finished.
//!
//! Every time in it is a number of seconds since the run started, so the timeline of a run
//! resumed hours later still reads as one run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blockyard_store::{ImageId, RequestTotals, SnapshotId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Report documents carry this version; a reader refuses a newer one.
pub(crate) const REPORT_VERSION: u32 = 1;

/// One run of `blockyard bake`: every pipeline it ran, and how far each got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunReport {
    pub(crate) version: u32,
    /// The run's id: its start time and a random suffix, `20261204T193012Z-3f9a`.
    pub(crate) run: String,
    /// The pipeline file, as given on the command line.
    pub(crate) pipeline_file: PathBuf,
    pub(crate) started: DateTime<Utc>,
    /// When the last attempt ended; `None` while one is under way.
    pub(crate) finished: Option<DateTime<Utc>>,
    /// Seconds from `started` to `finished`, resumes and the gaps between them included.
    pub(crate) seconds: f64,
    /// The times `--resume` picked the run up again.
    pub(crate) resumed: Vec<DateTime<Utc>>,
    pub(crate) status: Status,
    pub(crate) pipelines: Vec<PipelineRun>,
}

/// How far a run, a pipeline or a region got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Not started, or under way.
    Pending,
    Succeeded,
    Failed,
}

/// One pipeline in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PipelineRun {
    pub(crate) name: String,
    pub(crate) family: String,
    pub(crate) status: Status,
    /// Why the pipeline stopped, when it failed.
    pub(crate) error: Option<String>,
    /// The home store, by its config-file name.
    pub(crate) home: String,
    pub(crate) base: Option<BaseUsed>,
    /// The disk the update command worked on.
    pub(crate) volume: Option<VolumeUsed>,
    /// The file holding the update command's stdout and stderr.
    pub(crate) log: PathBuf,
    pub(crate) update: Option<UpdateOutcome>,
    pub(crate) snapshot: Option<SnapshotMade>,
    /// The image registered in the family at home; regions receive it under the same id.
    pub(crate) image: Option<ImageId>,
    pub(crate) regions: Vec<RegionRun>,
    /// The image is the family's latest everywhere.
    pub(crate) promoted: bool,
    pub(crate) retention: Vec<RetentionDone>,
    /// Every phase that ran, in order, attempts of a resumed run included.
    pub(crate) phases: Vec<Phase>,
    /// Blocks no store had to take twice: reused at home by the snapshot, and already
    /// present at a region during the copy.
    pub(crate) dedup: Dedup,
    pub(crate) cost: Cost,
}

/// What the run started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BaseUsed {
    /// The base image, `None` when the base was imported from a file this run.
    pub(crate) image: Option<ImageId>,
    pub(crate) snapshot: SnapshotId,
    /// The file imported because the base family had no latest image yet.
    pub(crate) imported_from: Option<String>,
}

/// The volume the update command received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VolumeUsed {
    pub(crate) path: PathBuf,
    /// `raw` or `qcow2`.
    pub(crate) kind: String,
    /// How the volume was made: `moved` (the image the last run kept became the volume),
    /// `reflink` or `copy` (of an image another pipeline kept), `pull` (from the home store)
    /// or `overlay` (qcow2 on a kept or pulled image).
    pub(crate) made_by: String,
    /// Blocks fetched from the home store to make it; 0 but for a pull.
    pub(crate) bytes_fetched: u64,
}

impl VolumeUsed {
    /// How the volume was made, in words.
    pub(crate) fn how(&self) -> &str {
        match self.made_by.as_str() {
            "moved" => "the image the last run kept",
            "reflink" => "a reflink of another pipeline's image",
            "copy" => "a copy of another pipeline's image",
            "pull" => "pulled from home",
            "overlay" => "an overlay",
            other => other,
        }
    }
}

/// How the update command ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UpdateOutcome {
    /// Its exit code; `None` when a signal ended it.
    pub(crate) exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub(crate) signal: Option<i32>,
    /// The last lines of its output (stdout and stderr, interleaved as they arrived).
    pub(crate) tail: String,
}

/// The snapshot the run took of the updated volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotMade {
    pub(crate) id: SnapshotId,
    /// The volume's size.
    pub(crate) size: u64,
    pub(crate) block_size: u64,
    /// Blocks whose content differs from the base's at the same position.
    pub(crate) blocks_changed: u64,
    /// `blocks_changed` × the block size.
    pub(crate) bytes_changed: u64,
    /// Bytes read from the volume; with an overlay only what it allocated.
    pub(crate) bytes_read: u64,
    /// Blocks the home store had to take.
    pub(crate) blocks_new: u64,
    /// Blocks of the volume the home store held already: unchanged, or the same content
    /// elsewhere.
    pub(crate) blocks_reused: u64,
    /// Bytes the home store took, as stored (compressed and sealed).
    pub(crate) bytes_stored: u64,
    /// Requests made of the home store to take the snapshot.
    pub(crate) requests: u64,
}

/// One region of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RegionRun {
    /// The store, by its config-file name.
    pub(crate) store: String,
    pub(crate) status: Status,
    pub(crate) error: Option<String>,
    /// Copies tried, this one included.
    pub(crate) attempts: u32,
    /// The image's id in this region, once its record landed there.
    pub(crate) image: Option<ImageId>,
    /// `verbatim` within a key domain, `reseal` across domains.
    pub(crate) mode: Option<String>,
    pub(crate) blocks_copied: u64,
    pub(crate) blocks_present: u64,
    pub(crate) bytes_moved: u64,
    pub(crate) requests: RequestTotals,
    /// Promoted to the family's latest here.
    pub(crate) promoted: bool,
}

/// Retention applied in one store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RetentionDone {
    pub(crate) store: String,
    pub(crate) kept: usize,
    pub(crate) deregistered: Vec<ImageId>,
    pub(crate) snapshots_deleted: usize,
}

/// One phase of a pipeline, at home or in one region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Phase {
    /// `base`, `volume`, `update`, `snapshot`, `register`, `copy`, `promote`, `retention`.
    pub(crate) name: String,
    /// The region (store name) for `copy`, `promote` and `retention`; the home store's
    /// name for work at home.
    pub(crate) store: String,
    /// Seconds since the run started.
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) status: Status,
}

/// Blocks that deduplication kept from being stored or moved again.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Dedup {
    /// Blocks of the volume the home store already held (unchanged or shared content).
    pub(crate) blocks_reused_at_home: u64,
    /// Blocks the regions already held, summed over regions.
    pub(crate) blocks_present_in_regions: u64,
    /// The two together.
    pub(crate) blocks_avoided: u64,
}

/// What the run costs at the pipeline's prices, in dollars.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Cost {
    /// New bytes stored, at home and in every region.
    pub(crate) bytes_stored: u64,
    /// Bytes moved to regions.
    pub(crate) bytes_moved: u64,
    /// Requests to the home store and the regions.
    pub(crate) requests: u64,
    /// Storing the new bytes for a month.
    pub(crate) storage_per_month: f64,
    pub(crate) transfer: f64,
    pub(crate) request_charges: f64,
    /// Transfer and requests, plus one month of storage.
    pub(crate) total: f64,
}

impl RunReport {
    /// Reads a report written by an earlier run.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the run report {}", path.display()))?;
        let report: Self = serde_json::from_slice(&text)
            .with_context(|| format!("{} is no bake run report", path.display()))?;
        if report.version > REPORT_VERSION {
            anyhow::bail!(
                "{} is a version {} report; this blockyard reads version {REPORT_VERSION}",
                path.display(),
                report.version
            );
        }
        Ok(report)
    }

    /// Writes the report whole to `path`: to a temporary file first, renamed over the old
    /// one, so a crash leaves the previous state readable.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

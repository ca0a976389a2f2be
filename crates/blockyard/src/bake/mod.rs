//! `blockyard bake`: runs the pipelines of a pipeline file, and reports on each run.
//!
//! A pipeline's run goes through its phases in order: resolve the base, make the volume,
//! run the update command, snapshot the volume at home, register the image, copy it to
//! every region at once, promote it everywhere, and apply retention. Promotion waits for
//! every region, so no runner anywhere sees an image that some region lacks.
//!
//! The run report is written after every phase and is the run's whole state. A run that
//! stopped (a region down, the machine lost) is carried on by `bake --resume RUN`, which
//! skips every phase that finished: a region that received the image is not copied to
//! again, and a snapshot taken is not taken again. A pipeline stopped before its snapshot
//! starts over from a fresh volume, since the old one may hold half an update.

pub(crate) mod html;
pub(crate) mod report;
mod update;
mod volume;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use blockyard_formats::Format;
use blockyard_store::{
    Architecture, BootMode, CopyOptions, CopyProgress, CreateOptions, Device, Endpoint, NewImage,
    RequestTotals, RetentionPolicy, SnapshotId, SnapshotReader, Store, copy_snapshot,
    create_snapshot, diff, family_images, promote, register_image, retain,
};
use chrono::Utc;

use self::report::{
    BaseUsed, Cost, Dedup, Phase, PipelineRun, RegionRun, RetentionDone, RunReport, SnapshotMade,
    Status, VolumeUsed,
};
use crate::cli::KeyArgs;
use crate::commands::copy::{Bars, copy_image_record, open_destination};
use crate::image::{Backing, Disk, open_image};
use crate::output::{Output, Unit};
use crate::pipeline::{Pipeline, PipelineFile, VolumeKind};
use crate::settings::ConfigFile;

/// The folder a pipeline file is in: `.` for a bare file name.
pub(crate) fn folder_of(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Decimal gigabyte, the unit cloud prices use.
const GB: f64 = 1e9;

/// How a bake was asked for.
pub(crate) struct Bake<'a> {
    /// The pipeline file, as given.
    pub(crate) file: &'a Path,
    pub(crate) pipelines: &'a PipelineFile,
    pub(crate) config: &'a ConfigFile,
    /// Holds `runs/` (reports and logs) and `volumes/` (one folder per pipeline).
    pub(crate) work: PathBuf,
    pub(crate) out: Output,
}

impl Bake<'_> {
    /// The pipeline file's folder, where relative paths in it start and commands run.
    fn folder(&self) -> &Path {
        folder_of(self.file)
    }

    /// The report of run `run`.
    pub(crate) fn report_path(&self, run: &str) -> PathBuf {
        self.work.join("runs").join(format!("{run}.json"))
    }

    /// Starts a new run of every pipeline in the file.
    pub(crate) async fn start(&self) -> Result<(RunReport, PathBuf)> {
        let _lock = self.lock()?;
        let started = Utc::now();
        let run = format!("{}-{:04x}", started.format("%Y%m%dT%H%M%SZ"), rand_suffix());
        let pipelines = self
            .pipelines
            .pipelines
            .iter()
            .map(|p| PipelineRun {
                name: p.name.clone(),
                family: p.family.clone(),
                status: Status::Pending,
                error: None,
                home: p.home.clone(),
                base: None,
                volume: None,
                log: self
                    .work
                    .join("runs")
                    .join(&run)
                    .join(format!("{}.log", p.name)),
                update: None,
                snapshot: None,
                image: None,
                regions: p.regions.iter().map(|r| RegionRun::new(r)).collect(),
                promoted: false,
                retention: Vec::new(),
                phases: Vec::new(),
                dedup: Dedup::default(),
                cost: Cost::default(),
            })
            .collect();
        let mut report = RunReport {
            version: report::REPORT_VERSION,
            run: run.clone(),
            pipeline_file: self.file.to_owned(),
            started,
            finished: None,
            seconds: 0.0,
            resumed: Vec::new(),
            status: Status::Pending,
            pipelines,
        };
        let path = self.report_path(&run);
        std::fs::create_dir_all(self.work.join("runs").join(&run)).with_context(|| {
            format!("cannot create the run folder under {}", self.work.display())
        })?;
        report.write(&path)?;
        self.carry_on(&mut report, &path).await?;
        Ok((report, path))
    }

    /// Picks up run `run` (an id, or the path of its report) where it stopped.
    pub(crate) async fn resume(&self, run: &str) -> Result<(RunReport, PathBuf)> {
        let _lock = self.lock()?;
        let path = if run.ends_with(".json") {
            PathBuf::from(run)
        } else {
            self.report_path(run)
        };
        let mut report = RunReport::read(&path)?;
        if report.status == Status::Succeeded {
            bail!(
                "run {} succeeded already; there is nothing to resume",
                report.run
            );
        }
        for p in &report.pipelines {
            if p.status != Status::Succeeded && self.pipeline(&p.name).is_none() {
                bail!(
                    "run {} has pipeline {:?}, which {} no longer has",
                    report.run,
                    p.name,
                    self.file.display()
                );
            }
        }
        report.resumed.push(Utc::now());
        report.status = Status::Pending;
        report.finished = None;
        self.carry_on(&mut report, &path).await?;
        Ok((report, path))
    }

    /// Takes the work folder for this process alone, for as long as the returned file is
    /// open: two bakes in one folder would take each other's volumes. The kernel lets go of
    /// the lock when the process ends, however it ends.
    fn lock(&self) -> Result<File> {
        std::fs::create_dir_all(&self.work)
            .with_context(|| format!("cannot create the work folder {}", self.work.display()))?;
        let path = self.work.join("lock");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "another bake ({}) is running in {}; wait for it, or give this one \
                     another --work folder",
                    holder.trim(),
                    self.work.display()
                );
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "process {}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(file)
    }

    fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.pipelines.iter().find(|p| p.name == name)
    }

    /// Runs every unfinished pipeline of `report` as far as it goes, saving as it goes.
    async fn carry_on(&self, report: &mut RunReport, path: &Path) -> Result<()> {
        for index in 0..report.pipelines.len() {
            if report.pipelines[index].status == Status::Succeeded {
                continue;
            }
            let Some(pipeline) = self.pipeline(&report.pipelines[index].name) else {
                continue;
            };
            report.pipelines[index].status = Status::Pending;
            report.pipelines[index].error = None;
            let mut run = PipelineRunner {
                bake: self,
                pipeline,
                report,
                index,
                path,
                opened: BTreeMap::new(),
            };
            let outcome = run.run().await;
            let entry = &mut report.pipelines[index];
            match outcome {
                Ok(()) => entry.status = Status::Succeeded,
                Err(e) => {
                    entry.status = Status::Failed;
                    entry.error = Some(format!("{e:#}"));
                }
            }
            entry.cost = cost(entry, &pipeline.prices);
            entry.dedup = dedup(entry);
            report.write(path)?;
        }
        let finished = Utc::now();
        report.finished = Some(finished);
        report.seconds = seconds_between(report.started, finished);
        report.status = if report
            .pipelines
            .iter()
            .all(|p| p.status == Status::Succeeded)
        {
            Status::Succeeded
        } else {
            Status::Failed
        };
        report.write(path)
    }
}

/// One pipeline's run, writing its progress into the report.
struct PipelineRunner<'a, 'b> {
    bake: &'a Bake<'b>,
    pipeline: &'a Pipeline,
    report: &'a mut RunReport,
    index: usize,
    path: &'a Path,
    /// Regions opened so far.
    opened: BTreeMap<String, Store>,
}

impl PipelineRunner<'_, '_> {
    fn entry(&mut self) -> &mut PipelineRun {
        &mut self.report.pipelines[self.index]
    }

    /// Seconds since the run started.
    fn now(&self) -> f64 {
        seconds_between(self.report.started, Utc::now())
    }

    /// Records a phase that began at `start` and ends now, and saves the report.
    fn phase(&mut self, name: &str, store: &str, start: f64, status: Status) -> Result<()> {
        let end = self.now();
        self.entry().phases.push(Phase {
            name: name.to_owned(),
            store: store.to_owned(),
            start,
            end,
            status,
        });
        self.report.write(self.path)
    }

    /// Records phase `name` at `store`, begun at `start`, as `result` says it went.
    fn record<T>(&mut self, name: &str, store: &str, start: f64, result: Result<T>) -> Result<T> {
        let status = if result.is_ok() {
            Status::Succeeded
        } else {
            Status::Failed
        };
        self.phase(name, store, start, status)?;
        result
    }

    async fn run(&mut self) -> Result<()> {
        let config = self.bake.config;
        let pipeline = self.pipeline;
        let home_name = pipeline.home.clone();
        let choice = config.choose_with_key(&home_name, &KeyArgs::default())?;
        let home = crate::commands::open(&choice)
            .await
            .with_context(|| format!("cannot open the home store {home_name}"))?;

        if self.entry().base.is_none() {
            let start = self.now();
            let result = self.resolve_base(&home).await;
            let base = self.record("base", &home_name, start, result)?;
            self.entry().base = Some(base);
        }
        if self.entry().snapshot.is_none() {
            self.update_and_snapshot(&home).await?;
        }
        if self.entry().image.is_none() {
            let start = self.now();
            let result = self.register(&home).await;
            let image = self.record("register", &home_name, start, result)?;
            self.entry().image = Some(image);
            self.report.write(self.path)?;
        }
        self.copy(&home).await?;
        if !self.entry().promoted {
            self.promote_everywhere(&home).await?;
        }
        if self.entry().retention.is_empty() {
            self.apply_retention(&home).await?;
        }
        Ok(())
    }

    /// The base family's latest image at home, or the first import when it has none.
    async fn resolve_base(&self, home: &Store) -> Result<BaseUsed> {
        let pipeline = self.pipeline;
        let family = &pipeline.base.family;
        if let Some(image) = family_images(home, family, Utc::now(), 1).await?.pop() {
            let [device] = image.devices.as_slice() else {
                bail!(
                    "the base {family}@latest ({}) has {} disks; a pipeline updates one-disk \
                     images",
                    image.id,
                    image.devices.len()
                );
            };
            return Ok(BaseUsed {
                image: Some(image.id),
                snapshot: device.snapshot,
                imported_from: None,
            });
        }
        let Some(import) = &pipeline.base.first_import else {
            bail!(
                "the base family {family} has no latest image in {}, and the pipeline has no \
                 first_import to start one",
                pipeline.home
            );
        };
        let source = self.import_path(&import.from);
        let format = match &import.format {
            Some(name) => Some(name.parse::<Format>().map_err(anyhow::Error::msg)?),
            None => None,
        };
        let image = open_image(&source, format, Backing::Files, self.bake.config).await?;
        let Ok([disk]) = <[Disk; 1]>::try_from(image.disks) else {
            bail!("{source} holds several disks; a pipeline starts from a one-disk image");
        };
        let options = CreateOptions {
            description: format!("base of pipeline {}, imported from {source}", pipeline.name),
            tags: BTreeMap::from([("pipeline".to_owned(), pipeline.name.clone())]),
            ..CreateOptions::default()
        };
        let bar = self.bake.out.progress("import", Unit::Bytes);
        let record = create_snapshot(home, disk.reader, options, bar.clone())
            .await
            .with_context(|| format!("cannot import the first base {source}"))?;
        bar.finish();
        Ok(BaseUsed {
            image: None,
            snapshot: record.id,
            imported_from: Some(source),
        })
    }

    /// `first_import.from` as a path or URL, relative paths taken from the pipeline file's
    /// folder.
    fn import_path(&self, from: &str) -> String {
        if from.contains("://") || Path::new(from).is_absolute() {
            return from.to_owned();
        }
        self.bake.folder().join(from).display().to_string()
    }

    /// Makes the volume, runs the update command on it and snapshots the result.
    async fn update_and_snapshot(&mut self, home: &Store) -> Result<()> {
        let pipeline = self.pipeline;
        let home_name = pipeline.home.clone();
        let base = self
            .entry()
            .base
            .clone()
            .context("the base is not resolved")?;
        let folder = self.bake.work.join("volumes").join(&pipeline.name);
        let run = self.report.run.clone();
        let start = self.now();
        // The file a first base was imported from holds its blocks: a seed that saves
        // fetching them back.
        let seeds: Vec<PathBuf> = base
            .imported_from
            .iter()
            .filter(|from| !from.contains("://"))
            .map(PathBuf::from)
            .filter(|path| path.is_file())
            .collect();
        let bar = self.bake.out.progress("volume", Unit::Bytes);
        let kind = pipeline.volume;
        let result = volume::prepare(
            home,
            &folder,
            &base.snapshot,
            &run,
            kind,
            seeds,
            bar.clone(),
        )
        .await;
        bar.finish();
        let prepared = self.record("volume", &home_name, start, result)?;
        self.entry().volume = Some(VolumeUsed {
            path: prepared.path.clone(),
            kind: match pipeline.volume {
                VolumeKind::Raw => "raw",
                VolumeKind::Qcow2 => "qcow2",
            }
            .to_owned(),
            made_by: prepared.made_by.to_owned(),
            bytes_fetched: prepared.bytes_fetched,
        });

        let log = self.entry().log.clone();
        let start = self.now();
        let ran = update::run(&pipeline.command, &prepared.path, self.bake.folder(), &log).await;
        let outcome = match ran {
            Ok(outcome) => outcome,
            Err(e) => {
                self.phase("update", &home_name, start, Status::Failed)?;
                return Err(e);
            }
        };
        let succeeded = outcome.succeeded();
        let status = if succeeded {
            Status::Succeeded
        } else {
            Status::Failed
        };
        self.entry().update = Some(outcome.clone());
        self.phase("update", &home_name, start, status)?;
        if !succeeded {
            bail!(
                "the update command failed with {}; nothing was registered. Its output ends \
                 (all of it is in {}):\n{}",
                outcome.describe(),
                log.display(),
                outcome.tail
            );
        }

        let start = self.now();
        let result = snapshot(
            home,
            &prepared.path,
            &base.snapshot,
            pipeline,
            &run,
            self.bake,
        )
        .await;
        let made = self.record("snapshot", &home_name, start, result)?;
        volume::keep(&folder, &prepared.path, &made.id)?;
        self.entry().snapshot = Some(made);
        self.report.write(self.path)
    }

    /// Registers the snapshot as an image of the pipeline's family, not yet promoted.
    async fn register(&self, home: &Store) -> Result<blockyard_store::ImageId> {
        let entry = &self.report.pipelines[self.index];
        let made = entry.snapshot.as_ref().context("no snapshot to register")?;
        let base = entry.base.as_ref().context("the base is not resolved")?;
        let base_image = match base.image {
            Some(id) => Some(blockyard_store::image(home, &id).await?),
            None => None,
        };
        let device = base_image
            .as_ref()
            .and_then(|image| image.devices.first())
            .map_or_else(|| "disk0".to_owned(), |d| d.name.clone());
        let new = NewImage {
            name: format!("{}-{}", self.pipeline.family, self.report.run),
            family: Some(self.pipeline.family.clone()),
            devices: vec![Device {
                name: device,
                snapshot: made.id,
            }],
            architecture: base_image
                .as_ref()
                .map_or(Architecture::X86_64, |image| image.architecture),
            boot_mode: base_image
                .as_ref()
                .map_or(BootMode::Uefi, |image| image.boot_mode),
            description: format!(
                "baked by pipeline {} in run {}",
                self.pipeline.name, self.report.run
            ),
            tags: BTreeMap::from([
                ("pipeline".to_owned(), self.pipeline.name.clone()),
                ("bake-run".to_owned(), self.report.run.clone()),
            ]),
        };
        Ok(register_image(home, new).await?.id)
    }

    /// Copies the image to every region that does not hold it yet, all at once.
    async fn copy(&mut self, home: &Store) -> Result<()> {
        let pending: Vec<usize> = (0..self.entry().regions.len())
            .filter(|&i| self.entry().regions[i].status != Status::Succeeded)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let config = self.bake.config;
        let entry = &self.report.pipelines[self.index];
        let image_id = entry.image.context("no image to copy")?;
        let snapshot = entry.snapshot.as_ref().context("no snapshot to copy")?.id;
        let home_choice = config.choose_with_key(&self.pipeline.home, &KeyArgs::default())?;
        let source_raw = home.raw().clone();
        let envelope = source_raw.image_envelope(&image_id).await?;

        let start = self.now();
        let mut endpoints = Vec::new();
        let mut targets = Vec::new();
        let mut keyed = Some(Ok(home.clone()));
        for &i in &pending {
            let name = self.entry().regions[i].store.clone();
            self.entry().regions[i].attempts += 1;
            let opened = open_destination(
                config,
                &name,
                &KeyArgs::default(),
                &home_choice,
                &source_raw,
                &mut keyed,
            )
            .await;
            match opened {
                Ok(endpoint) => {
                    endpoints.push(endpoint);
                    targets.push(i);
                }
                Err((_, error)) => {
                    let region = &mut self.entry().regions[i];
                    region.status = Status::Failed;
                    region.error = Some(error);
                    self.phase("copy", &name, start, Status::Failed)?;
                }
            }
        }
        let source = Endpoint::with_keys(home.clone());

        if !endpoints.is_empty() {
            let bars = Arc::new(Bars::new(&endpoints, self.bake.out));
            let progress: Arc<dyn CopyProgress> = Arc::clone(&bars) as Arc<dyn CopyProgress>;
            let reports = copy_snapshot(
                &source,
                &snapshot,
                &endpoints,
                &CopyOptions::default(),
                progress,
            )
            .await;
            bars.clear();
            let reports = match reports {
                Ok(reports) => reports,
                Err(e) => {
                    let error = format!("{e:#}");
                    for &i in &targets {
                        let name = self.entry().regions[i].store.clone();
                        let region = &mut self.entry().regions[i];
                        region.status = Status::Failed;
                        region.error = Some(error.clone());
                        self.phase("copy", &name, start, Status::Failed)?;
                    }
                    return Err(e).context("the copy to the regions failed");
                }
            };
            // The image record follows its snapshot into every region that took it, all at
            // once as the blocks went.
            let records = reports.iter().zip(&endpoints).map(|(copied, endpoint)| {
                let (source, envelope) = (&source, &envelope);
                async move {
                    if let Some(error) = &copied.error {
                        return Some(error.clone());
                    }
                    let landed = copy_image_record(source, endpoint, &image_id, envelope).await;
                    landed
                        .err()
                        .map(|e| format!("the snapshot landed, the image record did not: {e:#}"))
                }
            });
            let errors = futures::future::join_all(records).await;
            for ((&i, copied), error) in targets.iter().zip(reports).zip(errors) {
                let region = &mut self.entry().regions[i];
                region.mode = Some(
                    match copied.mode {
                        blockyard_store::CopyMode::Verbatim => "verbatim",
                        blockyard_store::CopyMode::Reseal => "reseal",
                    }
                    .to_owned(),
                );
                region.blocks_copied += copied.blocks_copied;
                region.blocks_present += copied.blocks_present;
                region.bytes_moved += copied.bytes_moved;
                region.requests += copied.requests;
                region.status = if error.is_none() {
                    Status::Succeeded
                } else {
                    Status::Failed
                };
                region.image = error.is_none().then_some(image_id);
                region.error = error;
                let status = region.status;
                let name = region.store.clone();
                let end = start + copied.seconds;
                self.entry().phases.push(Phase {
                    name: "copy".to_owned(),
                    store: name,
                    start,
                    end,
                    status,
                });
            }
            self.report.write(self.path)?;
        }

        let failed: Vec<String> = self
            .entry()
            .regions
            .iter()
            .filter(|r| r.status != Status::Succeeded)
            .map(|r| {
                format!(
                    "{}: {}",
                    r.store,
                    r.error.as_deref().unwrap_or("not copied")
                )
            })
            .collect();
        if !failed.is_empty() {
            bail!(
                "the image reached {} of {} regions and is promoted nowhere; `blockyard bake \
                 {} --resume {}` copies to the rest. {}",
                self.entry().regions.len() - failed.len(),
                self.entry().regions.len(),
                self.bake.file.display(),
                self.report.run,
                failed.join("; ")
            );
        }
        Ok(())
    }

    /// Promotes the image in every region, then at home.
    async fn promote_everywhere(&mut self, home: &Store) -> Result<()> {
        let image_id = self.entry().image.context("no image to promote")?;
        for i in 0..self.entry().regions.len() {
            if self.entry().regions[i].promoted {
                continue;
            }
            let name = self.entry().regions[i].store.clone();
            let store = self.open_region(&name).await?;
            let start = self.now();
            let result = promote(&store, &image_id)
                .await
                .with_context(|| format!("cannot promote {image_id} in {name}"));
            self.record("promote", &name, start, result)?;
            self.entry().regions[i].promoted = true;
            self.report.write(self.path)?;
        }
        let home_name = self.pipeline.home.clone();
        let start = self.now();
        let result = promote(home, &image_id)
            .await
            .with_context(|| format!("cannot promote {image_id} at home ({home_name})"));
        self.record("promote", &home_name, start, result)?;
        self.entry().promoted = true;
        self.report.write(self.path)
    }

    /// Applies the pipeline's retention to its family at home and in every region.
    async fn apply_retention(&mut self, home: &Store) -> Result<()> {
        let policy = RetentionPolicy {
            keep_last: self.pipeline.retention.keep_last,
            keep_within: self.pipeline.retention.keep_within,
            dry_run: false,
        };
        let pipeline = self.pipeline;
        let family = &pipeline.family;
        let mut done = Vec::new();
        for name in std::iter::once(&pipeline.home).chain(&pipeline.regions) {
            let store = if *name == pipeline.home {
                home.clone()
            } else {
                self.open_region(name).await?
            };
            let start = self.now();
            let result = retain(&store, family, policy)
                .await
                .with_context(|| format!("cannot apply retention to {family} in {name}"));
            let retained = self.record("retention", name, start, result)?;
            done.push(RetentionDone {
                store: name.clone(),
                kept: retained.kept.len(),
                deregistered: retained.deregistered,
                snapshots_deleted: retained.snapshots_deleted.len(),
            });
        }
        self.entry().retention = done;
        self.report.write(self.path)
    }

    /// Region `name` opened with its key, once per pipeline run: promotion and retention
    /// both need it.
    async fn open_region(&mut self, name: &str) -> Result<Store> {
        if let Some(store) = self.opened.get(name) {
            return Ok(store.clone());
        }
        let choice = self
            .bake
            .config
            .choose_with_key(name, &KeyArgs::default())?;
        let store = crate::commands::open(&choice)
            .await
            .with_context(|| format!("cannot open region {name} with its key"))?;
        self.opened.insert(name.to_owned(), store.clone());
        Ok(store)
    }
}

/// Snapshots the updated volume at `path` into `home` as a child of `base`.
async fn snapshot(
    home: &Store,
    path: &Path,
    base: &SnapshotId,
    pipeline: &Pipeline,
    run: &str,
    bake: &Bake<'_>,
) -> Result<SnapshotMade> {
    let requests_before = home.requests();
    let parent = Arc::new(SnapshotReader::open(home, base).await?);
    let (format, backing) = match pipeline.volume {
        VolumeKind::Raw => (Format::Raw, Backing::Files),
        // The overlay's backing file is a copy of the base: read only what the overlay holds.
        VolumeKind::Qcow2 => (Format::Qcow2, Backing::Parent(Arc::clone(&parent))),
    };
    let source = path.display().to_string();
    let image = open_image(&source, Some(format), backing, bake.config).await?;
    let Ok([disk]) = <[Disk; 1]>::try_from(image.disks) else {
        bail!("the volume {source} holds several disks");
    };
    let options = CreateOptions {
        parent: Some(*base),
        description: format!("pipeline {} run {run}", pipeline.name),
        tags: BTreeMap::from([
            ("pipeline".to_owned(), pipeline.name.clone()),
            ("bake-run".to_owned(), run.to_owned()),
        ]),
        concurrency: 0,
        changes_only: pipeline.volume == VolumeKind::Qcow2,
    };
    let bar = bake.out.progress("snapshot", Unit::Bytes);
    let record = create_snapshot(home, disk.reader, options, bar.clone())
        .await
        .with_context(|| format!("cannot snapshot the volume {source}"))?;
    bar.finish();
    let child = SnapshotReader::open(home, &record.id).await?;
    let changed = diff(&parent, &child).await?.len() as u64;
    let requests = RequestTotals::between(&requests_before, &home.requests()).total;
    Ok(SnapshotMade {
        id: record.id,
        size: record.size,
        block_size: record.block_size,
        blocks_changed: changed,
        bytes_changed: changed.saturating_mul(record.block_size),
        bytes_read: record.stats.bytes_read,
        blocks_new: record.stats.blocks_new,
        blocks_reused: record.stats.blocks_reused,
        bytes_stored: record.stats.bytes_stored,
        requests,
    })
}

impl RegionRun {
    fn new(store: &str) -> Self {
        Self {
            store: store.to_owned(),
            status: Status::Pending,
            error: None,
            attempts: 0,
            image: None,
            mode: None,
            blocks_copied: 0,
            blocks_present: 0,
            bytes_moved: 0,
            requests: RequestTotals::default(),
            promoted: false,
        }
    }
}

/// Blocks deduplication kept from being stored or moved again.
fn dedup(entry: &PipelineRun) -> Dedup {
    let at_home = entry.snapshot.as_ref().map_or(0, |s| s.blocks_reused);
    let in_regions: u64 = entry.regions.iter().map(|r| r.blocks_present).sum();
    Dedup {
        blocks_reused_at_home: at_home,
        blocks_present_in_regions: in_regions,
        blocks_avoided: at_home + in_regions,
    }
}

/// The run's cost at `prices`: new bytes stored everywhere for a month, bytes moved to the
/// regions, and every request counted.
fn cost(entry: &PipelineRun, prices: &crate::pipeline::Prices) -> Cost {
    let stored_home = entry.snapshot.as_ref().map_or(0, |s| s.bytes_stored);
    let moved: u64 = entry.regions.iter().map(|r| r.bytes_moved).sum();
    let requests = entry.snapshot.as_ref().map_or(0, |s| s.requests)
        + entry.regions.iter().map(|r| r.requests.total).sum::<u64>();
    // What a region takes is what moved to it: its new objects.
    let stored = stored_home + moved;
    let storage = stored as f64 / GB * prices.per_gb_stored;
    let transfer = moved as f64 / GB * prices.per_gb_moved;
    let request_charges = requests as f64 / 1000.0 * prices.per_1000_requests;
    Cost {
        bytes_stored: stored,
        bytes_moved: moved,
        requests,
        storage_per_month: storage,
        transfer,
        request_charges,
        total: storage + transfer + request_charges,
    }
}

fn seconds_between(from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// Four random hex digits, so two runs started in one second get different ids.
fn rand_suffix() -> u16 {
    let bytes = ulid::Ulid::new().to_bytes();
    u16::from_be_bytes([bytes[14], bytes[15]])
}

/// The report as text: a paragraph per pipeline.
pub(crate) fn describe(report: &RunReport, path: &Path) -> String {
    let mut text = String::new();
    let status = match report.status {
        Status::Succeeded => "succeeded",
        Status::Failed => "FAILED",
        Status::Pending => "under way",
    };
    let _ = writeln!(
        text,
        "run {} {status} in {:.2} s; report {}",
        report.run,
        report.seconds,
        path.display()
    );
    for p in &report.pipelines {
        describe_pipeline(&mut text, p);
    }
    if report.status == Status::Failed {
        let _ = writeln!(
            text,
            "\n`blockyard bake {} --resume {}` carries on where it stopped.",
            report.pipeline_file.display(),
            report.run
        );
    }
    text
}

fn describe_pipeline(text: &mut String, p: &PipelineRun) {
    use crate::units::bytes;
    let status = match p.status {
        Status::Succeeded => "ok",
        Status::Failed => "FAILED",
        Status::Pending => "not run",
    };
    let _ = writeln!(text, "\n{} ({status}): family {}", p.name, p.family);
    if let Some(base) = &p.base {
        let from = match (&base.image, &base.imported_from) {
            (Some(image), _) => format!("image {image}"),
            (None, Some(file)) => format!("imported {file}"),
            (None, None) => "?".to_owned(),
        };
        let _ = writeln!(text, "  base      {} ({from})", base.snapshot);
    }
    if let Some(volume) = &p.volume {
        let _ = writeln!(
            text,
            "  volume    {} {} ({}, {} fetched)",
            volume.kind,
            volume.path.display(),
            volume.how(),
            bytes(volume.bytes_fetched)
        );
    }
    if let Some(s) = &p.snapshot {
        let _ = writeln!(
            text,
            "  snapshot  {}: {} blocks changed ({}), {} read, {} stored at home",
            s.id,
            s.blocks_changed,
            bytes(s.bytes_changed),
            bytes(s.bytes_read),
            bytes(s.bytes_stored)
        );
    }
    if let Some(image) = &p.image {
        let _ = writeln!(text, "  image     {image}");
    }
    for r in &p.regions {
        let state = match (r.status, &r.error) {
            (Status::Succeeded, _) => format!(
                "{} blocks copied, {} already there, {} moved, {} requests{}",
                r.blocks_copied,
                r.blocks_present,
                bytes(r.bytes_moved),
                r.requests.total,
                if r.promoted { ", promoted" } else { "" }
            ),
            (_, Some(error)) => format!("failed (attempt {}): {error}", r.attempts),
            _ => "not copied".to_owned(),
        };
        let _ = writeln!(text, "  region    {}: {state}", r.store);
    }
    let mut per_phase: Vec<(&str, f64)> = Vec::new();
    for phase in &p.phases {
        let took = phase.end - phase.start;
        match per_phase.iter_mut().find(|(name, _)| *name == phase.name) {
            // Copies to regions overlap: the phase lasts as long as its longest.
            Some((name, seconds)) if *name == "copy" => *seconds = seconds.max(took),
            Some((_, seconds)) => *seconds += took,
            None => per_phase.push((&phase.name, took)),
        }
    }
    if !per_phase.is_empty() {
        let phases: Vec<String> = per_phase
            .iter()
            .map(|(name, seconds)| format!("{name} {seconds:.2} s"))
            .collect();
        let _ = writeln!(text, "  phases    {}", phases.join(", "));
    }
    let d = &p.dedup;
    let _ = writeln!(
        text,
        "  dedup     {} blocks avoided ({} reused at home, {} already in regions)",
        d.blocks_avoided, d.blocks_reused_at_home, d.blocks_present_in_regions
    );
    let c = &p.cost;
    let _ = writeln!(
        text,
        "  cost      ${:.4} = ${:.4}/month for {} stored + ${:.4} for {} moved + ${:.4} for \
         {} requests",
        c.total,
        c.storage_per_month,
        bytes(c.bytes_stored),
        c.transfer,
        bytes(c.bytes_moved),
        c.request_charges,
        c.requests
    );
    for r in &p.retention {
        let _ = writeln!(
            text,
            "  retention {}: kept {}, deregistered {}",
            r.store,
            r.kept,
            r.deregistered.len()
        );
    }
    if let Some(error) = &p.error {
        let _ = writeln!(text, "  error     {error}");
    }
}

//! The writable disk a pipeline's update command works on, and the local copy of the last
//! one that makes the next night's cheap.
//!
//! Each pipeline has a folder of its own under the work folder. Besides the volume of the
//! run under way (`run-RUN.raw` or `run-RUN.qcow2`) it keeps at most one raw image named
//! after the snapshot it holds (`snap-….raw`): the volume the last run snapshotted. The next
//! run, whose base is that snapshot, starts from a clone of it (a reflink where the file
//! system shares extents, else a sparse copy) and fetches nothing. When the cached image is
//! of another snapshot (another producer promoted an image, or the last run used an
//! overlay), the base is pulled from the home store with the stale image as a seed, so only
//! the blocks that differ travel.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use blockyard_formats::FileSink;
use blockyard_formats::export::{BlockFeed, ExportLayout, write_raw};
use blockyard_store::{NoProgress, PullOptions, SnapshotId, Store, pull};
use rustix::fs::SeekFrom;

use crate::pipeline::VolumeKind;

/// A volume made ready for the update command.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) path: PathBuf,
    /// `reflink`, `copy`, `pull` or `overlay`.
    pub(crate) made_by: &'static str,
    /// Sealed bytes fetched from the home store to make it.
    pub(crate) bytes_fetched: u64,
}

/// Makes the volume of run `run` in `folder`: a raw image of snapshot `base`, or a qcow2
/// overlay on a raw image of it.
pub(crate) async fn prepare(
    store: &Store,
    folder: &Path,
    base: &SnapshotId,
    run: &str,
    kind: VolumeKind,
) -> Result<Prepared> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create the volume folder {}", folder.display()))?;
    let (cached, made_by, bytes_fetched) = cached_base(store, folder, base).await?;
    match kind {
        VolumeKind::Raw => {
            let path = folder.join(format!("run-{run}.raw"));
            remove_if_present(&path)?;
            let cloned = clone_file(&cached, &path)?;
            Ok(Prepared {
                path,
                // A volume cut from an image pulled just now counts as pulled.
                made_by: if made_by == "pull" { made_by } else { cloned },
                bytes_fetched,
            })
        }
        VolumeKind::Qcow2 => {
            let path = folder.join(format!("run-{run}.qcow2"));
            remove_if_present(&path)?;
            overlay(&cached, &path).await?;
            Ok(Prepared {
                path,
                made_by: "overlay",
                bytes_fetched,
            })
        }
    }
}

/// Keeps the raw volume just snapshotted as `snapshot`'s image for the next run, in place of
/// any older one. An overlay is removed instead: it is no whole image.
pub(crate) fn keep(folder: &Path, volume: &Path, snapshot: &SnapshotId) -> Result<()> {
    let is_raw = volume.extension().is_some_and(|e| e == "raw");
    if is_raw {
        let kept = cached_path(folder, snapshot);
        std::fs::rename(volume, &kept).with_context(|| {
            format!(
                "cannot keep {} as {}",
                volume.display(),
                kept.display()
            )
        })?;
    } else {
        remove_if_present(volume)?;
    }
    if is_raw {
        for stale in cached_images(folder)? {
            if stale != cached_path(folder, snapshot) {
                remove_if_present(&stale)?;
            }
        }
    }
    Ok(())
}

/// The raw image of `base` in `folder`, pulled from `store` when it is not there.
async fn cached_base(
    store: &Store,
    folder: &Path,
    base: &SnapshotId,
) -> Result<(PathBuf, &'static str, u64)> {
    let cached = cached_path(folder, base);
    if cached.is_file() {
        return Ok((cached, "cached", 0));
    }
    // Pulled beside its final name and renamed, so a crash never leaves a partial image
    // under a snapshot's name.
    let partial = folder.join(format!(".{base}.raw.partial"));
    remove_if_present(&partial)?;
    let seeds = cached_images(folder)?;
    let sink = FileSink::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let write = move |layout: &ExportLayout, feed: &mut dyn BlockFeed| {
        let mut sink = sink;
        write_raw(layout, feed, &mut sink)
    };
    let options = PullOptions {
        previous: None,
        seeds,
        cache: None,
    };
    let summary = pull(store, base, options, write, Arc::new(NoProgress))
        .await
        .with_context(|| format!("cannot pull the base {base} into {}", folder.display()))?;
    std::fs::rename(&partial, &cached)
        .with_context(|| format!("cannot name {} as {}", partial.display(), cached.display()))?;
    for stale in cached_images(folder)? {
        if stale != cached {
            remove_if_present(&stale)?;
        }
    }
    Ok((cached, "pull", summary.bytes_fetched))
}

fn cached_path(folder: &Path, snapshot: &SnapshotId) -> PathBuf {
    folder.join(format!("{snapshot}.raw"))
}

/// The snapshot images kept in `folder`.
fn cached_images(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(folder)
        .with_context(|| format!("cannot list {}", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", folder.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap-") && name.ends_with(".raw") && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Copies `from` to the new file `to`: a reflink when the file system can share the
/// extents, else a copy of the data extents only, so holes stay holes. Returns which.
pub(crate) fn clone_file(from: &Path, to: &Path) -> Result<&'static str> {
    let source =
        File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let target = File::create_new(to).with_context(|| format!("cannot create {}", to.display()))?;
    if rustix::fs::ioctl_ficlone(&target, &source).is_ok() {
        return Ok("reflink");
    }
    sparse_copy(&source, &target)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok("copy")
}

/// Copies the data extents of `source` into `target` with `copy_file_range`, and sets the
/// length, leaving every hole a hole.
fn sparse_copy(source: &File, target: &File) -> std::io::Result<()> {
    let length = source.metadata()?.len();
    target.set_len(length)?;
    let mut offset = 0u64;
    while offset < length {
        let data = match rustix::fs::seek(source, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // No data past `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A file system without SEEK_DATA: everything is data.
            Err(rustix::io::Errno::INVAL) if offset == 0 => 0,
            Err(e) => return Err(e.into()),
        };
        let hole = match rustix::fs::seek(source, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(length),
            Err(rustix::io::Errno::INVAL) => length,
            Err(e) => return Err(e.into()),
        };
        let mut at = data;
        while at < hole {
            let (mut from, mut to) = (at, at);
            let want = usize::try_from(hole - at).unwrap_or(usize::MAX).min(1 << 30);
            let copied =
                rustix::fs::copy_file_range(source, Some(&mut from), target, Some(&mut to), want)?;
            if copied == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the source ended at byte {at} of {length} while being copied"),
                ));
            }
            at += copied as u64;
        }
        offset = hole;
    }
    target.sync_all()
}

/// Makes `path` a qcow2 overlay whose backing file is the raw image `base`, with
/// `qemu-img`, which a command working on qcow2 has at hand.
async fn overlay(base: &Path, path: &Path) -> Result<()> {
    let base = std::path::absolute(base)
        .with_context(|| format!("cannot make {} absolute", base.display()))?;
    let output = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(path)
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => bail!(
            "qemu-img could not make the qcow2 overlay {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "volume = \"qcow2\" needs qemu-img to make the overlay, and it is not on PATH; \
             install qemu-utils or use volume = \"raw\""
        ),
        Err(e) => Err(e).context("cannot run qemu-img"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};

    use super::*;

    #[test]
    fn a_sparse_copy_has_the_same_bytes_and_keeps_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from.raw");
        let mut file = File::create(&from).expect("create");
        file.set_len(64 << 20).expect("length");
        for at in [0u64, 5 << 20, (64 << 20) - 4096] {
            file.seek(std::io::SeekFrom::Start(at)).expect("seek");
            file.write_all(&[0xa5; 4096]).expect("write");
        }
        file.sync_all().expect("sync");
        drop(file);

        let to = dir.path().join("to.raw");
        let how = clone_file(&from, &to).expect("clone");
        assert!(how == "reflink" || how == "copy", "{how}");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        File::open(&from).and_then(|mut f| f.read_to_end(&mut a)).expect("read");
        File::open(&to).and_then(|mut f| f.read_to_end(&mut b)).expect("read");
        assert_eq!(a, b);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&to).expect("meta").blocks();
        assert!(blocks * 512 < 8 << 20, "{blocks} sectors allocated: holes were filled");
    }

    #[test]
    fn a_clone_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from.raw");
        std::fs::write(&from, b"disk").expect("write");
        let to = dir.path().join("to.raw");
        std::fs::write(&to, b"other").expect("write");
        assert!(clone_file(&from, &to).is_err());
        assert_eq!(std::fs::read(&to).expect("read"), b"other");
    }
}

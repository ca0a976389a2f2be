//! The writable disk a pipeline's update command works on, and the local image of the last
//! one that makes the next night's cheap.
//!
//! Each pipeline has a folder of its own under the work folder. Besides the volume of the
//! run under way (`run-RUN.raw` or `run-RUN.qcow2`) it keeps at most one raw image named
//! after the snapshot it holds (`snap-….raw`): the volume the last run snapshotted. The next
//! run, whose base is that snapshot, renames it into its volume and fetches and copies
//! nothing; the update writes it in place and the new snapshot's image is kept in turn. A
//! qcow2 overlay is made on top of the kept image instead, which it never writes.
//!
//! When the folder holds no image of the base (another producer promoted an image, the last
//! run used an overlay, or its update failed), another pipeline's folder is looked in: a
//! pipeline built on another's family finds the image that pipeline just kept, and clones
//! it (a reflink where the file system shares extents, else a sparse copy). Failing that the
//! base is pulled from the home store with every image in the folder, and any file known to
//! be close to the base (the file a first base was imported from), as seeds, so only the
//! blocks that differ travel.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use blockyard_formats::FileSink;
use blockyard_formats::export::{BlockFeed, ExportLayout, write_raw};
use blockyard_store::{Progress, PullOptions, SnapshotId, Store, pull};
use rustix::fs::SeekFrom;

use crate::pipeline::VolumeKind;

/// A volume made ready for the update command.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) path: PathBuf,
    /// `moved`, `reflink`, `copy`, `pull` or `overlay`.
    pub(crate) made_by: &'static str,
    /// Sealed bytes fetched from the home store to make it.
    pub(crate) bytes_fetched: u64,
}

/// Makes the volume of run `run` in `folder`: a raw image of snapshot `base`, or a qcow2
/// overlay on a raw image of it. `seeds` are files that may hold many of the base's blocks.
pub(crate) async fn prepare(
    store: &Store,
    folder: &Path,
    base: &SnapshotId,
    run: &str,
    kind: VolumeKind,
    seeds: Vec<PathBuf>,
    progress: Arc<dyn Progress>,
) -> Result<Prepared> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create the volume folder {}", folder.display()))?;
    match kind {
        VolumeKind::Raw => {
            let path = folder.join(format!("run-{run}.raw"));
            if path.is_file() {
                // The volume of an earlier try of this run, whose update failed: a seed
                // that holds the base but for what that update wrote.
                rename(&path, &folder.join(format!("run-{run}-earlier.raw")))?;
            }
            let cached = cached_path(folder, base);
            if cached.is_file() {
                // The kept image becomes the volume: no byte is copied. Should the update
                // fail, the volume stays behind as a seed for the next try.
                rename(&cached, &path)?;
                return Ok(Prepared {
                    path,
                    made_by: "moved",
                    bytes_fetched: 0,
                });
            }
            let (made_by, bytes_fetched) =
                make_image(store, folder, base, seeds, &path, progress).await?;
            Ok(Prepared {
                path,
                made_by,
                bytes_fetched,
            })
        }
        VolumeKind::Qcow2 => {
            // An overlay never writes its backing file, so a kept image serves as it is,
            // this pipeline's or another's.
            let cached = cached_path(folder, base);
            let (backing, bytes_fetched) = if cached.is_file() {
                (cached, 0)
            } else if let Some(sibling) = sibling_image(folder, base)? {
                (sibling, 0)
            } else {
                let (_, fetched) =
                    make_image(store, folder, base, seeds, &cached, progress).await?;
                remove_stale(folder, &cached)?;
                (cached, fetched)
            };
            let path = folder.join(format!("run-{run}.qcow2"));
            remove_if_present(&path)?;
            overlay(&backing, &path).await?;
            Ok(Prepared {
                path,
                made_by: "overlay",
                bytes_fetched,
            })
        }
    }
}

/// Keeps the raw volume just snapshotted as `snapshot`'s image for the next run, in place of
/// any older image and any volume a failed run left. An overlay is removed instead: it is
/// no whole image.
pub(crate) fn keep(folder: &Path, volume: &Path, snapshot: &SnapshotId) -> Result<()> {
    if volume.extension().is_some_and(|e| e == "raw") {
        let kept = cached_path(folder, snapshot);
        rename(volume, &kept)?;
        remove_stale(folder, &kept)
    } else {
        remove_if_present(volume)
    }
}

/// Writes a raw image of `base` to `path`: cloned from another pipeline's folder that keeps
/// one, else pulled from `store` with every image in `folder` and `seeds` as seeds.
async fn make_image(
    store: &Store,
    folder: &Path,
    base: &SnapshotId,
    mut seeds: Vec<PathBuf>,
    path: &Path,
    progress: Arc<dyn Progress>,
) -> Result<(&'static str, u64)> {
    // Made beside its final name and renamed, so a crash never leaves a partial image under
    // a snapshot's name.
    let partial = folder.join(format!(".{base}.raw.partial"));
    remove_if_present(&partial)?;
    if let Some(sibling) = sibling_image(folder, base)? {
        let made_by = clone_file(&sibling, &partial)?;
        rename(&partial, path)?;
        return Ok((made_by, 0));
    }
    seeds.extend(local_images(folder)?);
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
    let summary = pull(store, base, options, write, progress)
        .await
        .with_context(|| format!("cannot pull the base {base} into {}", folder.display()))?;
    rename(&partial, path)?;
    Ok(("pull", summary.bytes_fetched))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// Removes the raw images in `folder` other than `kept`: older snapshots' images and the
/// volumes of failed runs.
fn remove_stale(folder: &Path, kept: &Path) -> Result<()> {
    for stale in local_images(folder)? {
        if stale != kept {
            remove_if_present(&stale)?;
        }
    }
    Ok(())
}

/// An image of `snapshot` kept in another pipeline's folder beside `folder`.
fn sibling_image(folder: &Path, snapshot: &SnapshotId) -> Result<Option<PathBuf>> {
    let Some(parent) = folder.parent() else {
        return Ok(None);
    };
    let entries =
        std::fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", parent.display()))?;
        let candidate = cached_path(&entry.path(), snapshot);
        if entry.path() != folder && candidate.is_file() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

fn cached_path(folder: &Path, snapshot: &SnapshotId) -> PathBuf {
    folder.join(format!("{snapshot}.raw"))
}

/// The raw images in `folder`: kept snapshot images and volumes failed runs left.
fn local_images(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", folder.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let image = name.starts_with("snap-") || name.starts_with("run-");
        if image && name.ends_with(".raw") && entry.path().is_file() {
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
    let source = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
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
            let want = usize::try_from(hole - at)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
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
        File::open(&from)
            .and_then(|mut f| f.read_to_end(&mut a))
            .expect("read");
        File::open(&to)
            .and_then(|mut f| f.read_to_end(&mut b))
            .expect("read");
        assert_eq!(a, b);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&to).expect("meta").blocks();
        assert!(
            blocks * 512 < 8 << 20,
            "{blocks} sectors allocated: holes were filled"
        );
    }

    fn id(hex: char) -> SnapshotId {
        format!("snap-{}", hex.to_string().repeat(32))
            .parse()
            .expect("snapshot id")
    }

    #[test]
    fn keeping_a_volume_names_it_after_its_snapshot_and_drops_older_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("ci");
        std::fs::create_dir_all(&folder).expect("folder");
        let older = cached_path(&folder, &id('a'));
        let failed = folder.join("run-1-earlier.raw");
        let volume = folder.join("run-2.raw");
        for (path, bytes) in [(&older, "older"), (&failed, "failed"), (&volume, "new")] {
            std::fs::write(path, bytes).expect("write");
        }
        std::fs::write(folder.join("notes.txt"), "kept").expect("write");

        keep(&folder, &volume, &id('b')).expect("keep");

        let kept = cached_path(&folder, &id('b'));
        assert_eq!(std::fs::read(&kept).expect("kept image"), b"new");
        assert_eq!(local_images(&folder).expect("list"), [kept]);
        assert!(
            folder.join("notes.txt").exists(),
            "only raw images are removed"
        );
    }

    #[test]
    fn an_overlay_is_removed_and_the_image_under_it_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = cached_path(dir.path(), &id('c'));
        std::fs::write(&kept, "base").expect("write");
        let overlay = dir.path().join("run-3.qcow2");
        std::fs::write(&overlay, "overlay").expect("write");

        keep(dir.path(), &overlay, &id('d')).expect("keep");

        assert!(!overlay.exists());
        assert_eq!(local_images(dir.path()).expect("list"), [kept]);
    }

    #[test]
    fn a_sibling_image_is_found_in_another_pipelines_folder_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ci, tools) = (dir.path().join("ci"), dir.path().join("tools"));
        std::fs::create_dir_all(&ci).expect("folder");
        std::fs::create_dir_all(&tools).expect("folder");
        std::fs::write(cached_path(&ci, &id('e')), "image").expect("write");

        let found = sibling_image(&tools, &id('e')).expect("look");
        assert_eq!(found, Some(cached_path(&ci, &id('e'))));
        assert_eq!(sibling_image(&ci, &id('e')).expect("look"), None);
        assert_eq!(sibling_image(&tools, &id('f')).expect("look"), None);
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

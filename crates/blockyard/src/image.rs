//! Opening the images that `import` and `snapshot create` read: local paths or object-store
//! URLs, in any format, with their backing chains resolved as the user asked.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use blockyard_formats::{
    ByteSource, DiskReader, FileResolver, FileSource, Format, FormatError, Resolver, detect,
    open_at_depth, ova,
};
use blockyard_store::{SnapshotDisk, SnapshotReader, open_object_url};
use tokio::runtime::Handle;

use crate::settings::ConfigFile;

/// What stands in for backing files.
#[derive(Debug, Clone)]
pub(crate) enum Backing {
    /// Backing files are opened as the images name them.
    Files,
    /// The top image's backing disk is this snapshot, whatever file the image names: the
    /// image is an overlay made on a copy of the snapshot.
    Parent(Arc<SnapshotReader>),
    /// A backing file that cannot be found is this snapshot: the chain was made on a copy
    /// of it that is not on this machine.
    WhenMissing(Arc<SnapshotReader>),
}

/// One disk of an opened image.
pub(crate) struct Disk {
    /// Its name in the image: `disk0`, or the OVF disk id.
    pub(crate) device: String,
    pub(crate) reader: Box<dyn DiskReader>,
}

/// An image opened for reading, with its disks in order.
pub(crate) struct OpenedImage {
    pub(crate) format: Format,
    pub(crate) disks: Vec<Disk>,
}

/// Opens `spec` (a path, `file:///path` or `s3://bucket/key`) as an image of `format`, or of
/// the format its magic numbers say.
pub(crate) async fn open_image(
    spec: &str,
    format: Option<Format>,
    backing: Backing,
    config: &ConfigFile,
) -> Result<OpenedImage> {
    let handle = Handle::current();
    let (source, base): (Arc<dyn ByteSource>, Box<dyn Resolver>) =
        if let Some(path) = spec.strip_prefix("file://") {
            let path = path.to_owned();
            let source =
                tokio::task::spawn_blocking(move || FileSource::open(Path::new(&path))).await??;
            (Arc::new(source), Box::new(FileResolver))
        } else if spec.starts_with("s3://") {
            let options = config.s3_options_for(spec);
            let (source, resolver) = open_object_url(spec, &options).await?;
            (Arc::new(source), Box::new(resolver) as Box<dyn Resolver>)
        } else if spec.contains("://") {
            bail!("{spec}: images are read from paths, file:// or s3:// URLs");
        } else {
            let path = spec.to_owned();
            let source =
                tokio::task::spawn_blocking(move || FileSource::open(Path::new(&path))).await??;
            (Arc::new(source), Box::new(FileResolver))
        };
    let resolver = ImportResolver {
        base,
        backing,
        handle,
    };
    let name = source.name().to_owned();
    tokio::task::spawn_blocking(move || open_disks(source, format, &resolver))
        .await?
        .with_context(|| format!("cannot open {name}"))
}

fn open_disks(
    source: Arc<dyn ByteSource>,
    format: Option<Format>,
    resolver: &ImportResolver,
) -> Result<OpenedImage, FormatError> {
    let format = match format {
        Some(format) => format,
        None => detect(&*source)?,
    };
    if format != Format::Ova {
        let reader = open_at_depth(source, Some(format), resolver, 0)?;
        return Ok(OpenedImage {
            format,
            disks: vec![Disk {
                device: "disk0".into(),
                reader,
            }],
        });
    }
    let archive = ova::open(source)?;
    let mut disks = Vec::with_capacity(archive.disks.len());
    for disk in &archive.disks {
        disks.push(Disk {
            device: disk.disk_id.clone(),
            reader: disk.open(resolver)?,
        });
    }
    Ok(OpenedImage { format, disks })
}

/// Opens files through the local or object-store resolver, with a snapshot standing in for
/// a backing file where the user said so.
struct ImportResolver {
    base: Box<dyn Resolver>,
    backing: Backing,
    handle: Handle,
}

impl ImportResolver {
    fn snapshot_disk(&self, reader: &Arc<SnapshotReader>) -> Box<dyn DiskReader> {
        Box::new(SnapshotDisk::new(Arc::clone(reader), self.handle.clone()))
    }
}

impl Resolver for ImportResolver {
    fn open_file(&self, from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        self.base.open_file(from, name)
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        match &self.backing {
            // Depth 1 is the backing disk of the image the user named.
            Backing::Parent(reader) if depth == 1 => return Ok(self.snapshot_disk(reader)),
            Backing::WhenMissing(reader) => {
                return match self.base.open_file(from, name) {
                    Ok(source) => open_at_depth(source, format, self, depth),
                    Err(e) if is_not_found(&e) => {
                        tracing::info!(from, name, "a snapshot stands in for the backing file");
                        Ok(self.snapshot_disk(reader))
                    }
                    Err(e) => Err(e),
                };
            }
            _ => {}
        }
        let source = self.base.open_file(from, name)?;
        open_at_depth(source, format, self, depth)
    }
}

fn is_not_found(error: &FormatError) -> bool {
    match error {
        FormatError::Open { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        FormatError::Reference { source, .. } => is_not_found(source),
        _ => false,
    }
}

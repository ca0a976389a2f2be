//! Images read straight from object storage with ranged reads.
//!
//! An import from `s3://bucket/images/night.qcow2` never downloads a scratch copy: format
//! readers ask for the bytes they need, large reads go to the server as ranged GETs of
//! exactly that range, and the small reads that parsing makes (headers, table entries) are
//! served from a few cached windows so that they cost one request per window, not one each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use blockyard_formats::{ByteSource, DiskReader, Format, FormatError, Resolver, open_backing_file};
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;
use tokio::runtime::Handle;

use crate::error::{Result, StoreError};
use crate::location::Location;

/// Bytes fetched at once for small reads. Header and table reads cluster near each other,
/// and one request per MiB keeps the request count of a parse small.
const WINDOW: u64 = 1 << 20;
/// Windows kept. Parsing touches a header, a table and a few table blocks at a time.
const WINDOWS_KEPT: usize = 8;

/// An object opened for ranged reads. Reads block on the runtime behind `handle` and must
/// come from threads that are not running async tasks.
#[derive(Debug)]
pub struct ObjectSource {
    objects: Arc<dyn ObjectStore>,
    path: Path,
    name: String,
    len: u64,
    handle: Handle,
    windows: Mutex<VecDeque<(u64, Bytes)>>,
}

impl ObjectSource {
    /// Opens the object at `path` of `objects`, called `name` (its URL) in messages.
    pub async fn open(objects: Arc<dyn ObjectStore>, path: Path, name: String) -> Result<Self> {
        let meta = objects.head(&path).await.map_err(|source| match source {
            object_store::Error::NotFound { .. } => StoreError::Missing {
                what: "image",
                name: name.clone(),
            },
            source => StoreError::Backend {
                op: "read",
                path: name.clone(),
                source,
            },
        })?;
        Ok(Self {
            objects,
            path,
            name,
            len: meta.size,
            handle: Handle::current(),
            windows: Mutex::new(VecDeque::with_capacity(WINDOWS_KEPT)),
        })
    }

    fn fetch(&self, start: u64, end: u64) -> Result<Bytes, FormatError> {
        let bytes = self
            .handle
            .block_on(self.objects.get_range(&self.path, start..end))
            .map_err(|source| FormatError::SourceRead {
                name: self.name.clone(),
                offset: start,
                source: Box::new(source),
            })?;
        if bytes.len() as u64 != end - start {
            return Err(FormatError::Truncated {
                name: self.name.clone(),
                end: start + bytes.len() as u64,
                wanted: end,
            });
        }
        Ok(bytes)
    }

    fn window(&self, start: u64) -> Result<Bytes, FormatError> {
        let cached = self.windows.lock().ok().and_then(|windows| {
            windows
                .iter()
                .find(|(s, _)| *s == start)
                .map(|(_, b)| b.clone())
        });
        if let Some(bytes) = cached {
            return Ok(bytes);
        }
        let bytes = self.fetch(start, (start + WINDOW).min(self.len))?;
        if let Ok(mut windows) = self.windows.lock() {
            if windows.len() >= WINDOWS_KEPT {
                windows.pop_front();
            }
            windows.push_back((start, bytes.clone()));
        }
        Ok(bytes)
    }
}

impl ByteSource for ObjectSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.len {
            return Err(FormatError::Truncated {
                name: self.name.clone(),
                end: self.len,
                wanted: end,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let window_start = offset - offset % WINDOW;
        if (buf.len() as u64) < WINDOW / 4 && end <= window_start + WINDOW {
            let window = self.window(window_start)?;
            let at = usize::try_from(offset - window_start).unwrap_or(0);
            buf.copy_from_slice(&window[at..at + buf.len()]);
            return Ok(());
        }
        let bytes = self.fetch(offset, end)?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        if len as u64 >= WINDOW / 4 {
            let end = offset.saturating_add(len as u64);
            if end > self.len {
                return Err(FormatError::Truncated {
                    name: self.name.clone(),
                    end: self.len,
                    wanted: end,
                });
            }
            return Ok(self.fetch(offset, end)?.to_vec());
        }
        let mut buf = vec![0u8; len];
        self.read_exact_at(offset, &mut buf)?;
        Ok(buf)
    }
}

/// Resolves the files an image in object storage names (backing files, VMDK extents) as
/// objects beside it.
#[derive(Debug)]
pub struct ObjectResolver {
    objects: Arc<dyn ObjectStore>,
    /// The URL of the folder holding the image, without a trailing slash.
    base_url: String,
    /// The key of that folder inside `objects`.
    base_path: String,
    handle: Handle,
}

impl ObjectResolver {
    fn key_for(&self, name: &str) -> std::result::Result<String, FormatError> {
        if name.starts_with('/') || name.contains("://") {
            return Err(FormatError::SourceRead {
                name: name.to_owned(),
                offset: 0,
                source: "an image in object storage may only name files beside it by \
                         relative names"
                    .into(),
            });
        }
        let mut parts: Vec<&str> = self
            .base_path
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        Ok(parts.join("/"))
    }
}

impl Resolver for ObjectResolver {
    fn open_file(&self, _from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        let key = self.key_for(name)?;
        let url = format!("{}/{}", self.base_url.trim_end_matches('/'), name);
        let objects = Arc::clone(&self.objects);
        let source = self
            .handle
            .block_on(ObjectSource::open(objects, Path::from(key), url.clone()))
            .map_err(|e| match e {
                // Said as a missing file is, so that callers can tell "not there" apart.
                StoreError::Missing { .. } => FormatError::Open {
                    path: url.into(),
                    source: std::io::ErrorKind::NotFound.into(),
                },
                e => FormatError::SourceRead {
                    name: url,
                    offset: 0,
                    source: Box::new(e),
                },
            })?;
        Ok(Arc::new(source))
    }

    fn open_backing(
        &self,
        from: &str,
        name: &str,
        format: Option<Format>,
        depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        open_backing_file(self, from, name, format, depth)
    }
}

/// Opens an image given as an object-store URL (`s3://bucket/key`, with the store options
/// the config file gives for that bucket), with a resolver for the files it names.
pub async fn open_object_url(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<(ObjectSource, ObjectResolver)> {
    let bad = |reason: &str| StoreError::BadLocation {
        input: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("only s3:// URLs name objects; give local images as paths"))?;
    let (bucket, key) = rest
        .split_once('/')
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty() && !key.ends_with('/'))
        .ok_or_else(|| bad("an image URL names an object, as s3://bucket/path/disk.qcow2"))?;
    let mut location = Location::S3 {
        bucket: bucket.to_owned(),
        prefix: String::new(),
        options: Default::default(),
    };
    for (k, v) in options {
        location = location.with_option(k, v)?;
    }
    let objects = location.connect(false)?;
    open_object(objects, key, &format!("s3://{bucket}")).await
}

/// Opens the object `key` of `objects` as an image; `root_url` is the URL of `objects`'
/// root, for messages.
pub async fn open_object(
    objects: Arc<dyn ObjectStore>,
    key: &str,
    root_url: &str,
) -> Result<(ObjectSource, ObjectResolver)> {
    let base_path = key.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
    let root = root_url.trim_end_matches('/');
    let url = format!("{root}/{key}");
    let base_url = if base_path.is_empty() {
        root.to_owned()
    } else {
        format!("{root}/{base_path}")
    };
    let source = ObjectSource::open(Arc::clone(&objects), Path::from(key), url).await?;
    let resolver = ObjectResolver {
        objects,
        base_url,
        base_path,
        handle: Handle::current(),
    };
    Ok((source, resolver))
}

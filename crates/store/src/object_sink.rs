//! Exported images written straight to object storage as multipart uploads.

use std::io;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use tokio::runtime::Handle;

use crate::error::{Result, StoreError};
use crate::location::Location;

/// Smallest part uploaded: S3 refuses parts under 5 MiB (except the last), and larger
/// parts mean fewer requests.
const MIN_PART: u64 = 16 << 20;
/// Parts an upload may have: S3 allows 10,000; the margin covers format metadata beyond
/// the disk's size.
const MAX_PARTS: u64 = 9_000;
/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 4;

/// A multipart upload written through [`io::Write`]. Writes block on the runtime behind
/// the handle and must come from a thread that is not running async tasks; nothing is
/// visible in the bucket until [`ObjectUpload::complete`].
#[derive(Debug)]
pub struct ObjectUpload {
    upload: Option<WriteMultipart>,
    handle: Handle,
    url: String,
}

impl ObjectUpload {
    /// Starts an upload to `url` (`s3://bucket/key`) of about `expected_len` bytes, which
    /// sets the part size.
    pub async fn create(
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
        expected_len: u64,
    ) -> Result<Self> {
        let bad = |reason: &str| StoreError::BadLocation {
            input: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("uploads go to s3:// URLs"))?;
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty() && !key.ends_with('/'))
            .ok_or_else(|| bad("an upload names an object, as s3://bucket/path/disk.vmdk"))?;
        let mut location = Location::S3 {
            bucket: bucket.to_owned(),
            prefix: String::new(),
            options: Default::default(),
        };
        for (k, v) in options {
            location = location.with_option(k, v)?;
        }
        let objects = location.connect(false)?;
        Self::start(objects, Path::from(key), url.to_owned(), expected_len).await
    }

    /// Starts an upload of the object `path` of `objects`, called `url` in messages.
    pub async fn start(
        objects: Arc<dyn ObjectStore>,
        path: Path,
        url: String,
        expected_len: u64,
    ) -> Result<Self> {
        let upload = objects
            .put_multipart(&path)
            .await
            .map_err(|source| StoreError::Backend {
                op: "start an upload to",
                path: url.clone(),
                source,
            })?;
        let part = MIN_PART.max(expected_len.div_ceil(MAX_PARTS));
        let part = usize::try_from(part).unwrap_or(usize::MAX);
        Ok(Self {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, part)),
            handle: Handle::current(),
            url,
        })
    }

    /// Uploads what is buffered and makes the object visible.
    pub fn complete(mut self) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        self.handle
            .block_on(upload.finish())
            .map(|_| ())
            .map_err(|source| StoreError::Backend {
                op: "finish the upload to",
                path: self.url.clone(),
                source,
            })
    }

    /// Abandons the upload; the parts sent are discarded by the server.
    pub fn abort(mut self) {
        if let Some(upload) = self.upload.take()
            && let Err(e) = self.handle.block_on(upload.abort())
        {
            tracing::warn!(url = %self.url, error = %e, "cannot abort the upload");
        }
    }
}

impl io::Write for ObjectUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| io::Error::other("the upload is closed"))?;
        upload.write(buf);
        self.handle
            .block_on(upload.wait_for_capacity(PARTS_IN_FLIGHT))
            .map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

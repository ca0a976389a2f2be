//! Byte sources: the image files that format readers parse.
//!
//! A format reader never opens files itself. It reads its image through a [`ByteSource`],
//! which may be a local file, an object read with ranged GETs, a member of an OVA archive
//! or a buffer in memory, and it opens the files its image names (backing files, extent
//! files) through a [`Resolver`](crate::Resolver). That keeps every reader usable on object
//! storage without a scratch copy, and keeps fuzzing free of I/O.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::FormatError;

/// Random-access, read-only bytes of known length.
///
/// Reads take `&self` so that one source can be shared (`Arc`) by several readers, such as
/// the disks of one OVA archive; implementations must allow concurrent reads.
pub trait ByteSource: Send + Sync + std::fmt::Debug {
    /// The source's name for messages: a path or URL.
    fn name(&self) -> &str;

    /// The length in bytes.
    fn len(&self) -> u64;

    /// True when the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`. A range past the end is an error
    /// ([`FormatError::Truncated`]), never a short read.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError>;

    /// Reads `len` bytes at `offset` into a new buffer.
    ///
    /// `len` comes from the caller, which must have bounded it; readers bound every length
    /// they take from an image by a named limit before calling this.
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(offset, &mut buf)?;
        Ok(buf)
    }

    /// The local path of the source, when it is a local file. Readers of formats whose data
    /// lies flat in the file use it to find holes.
    fn local_path(&self) -> Option<&Path> {
        None
    }
}

impl<S: ByteSource + ?Sized> ByteSource for Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        (**self).read_exact_at(offset, buf)
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        (**self).read_vec(offset, len)
    }

    fn local_path(&self) -> Option<&Path> {
        (**self).local_path()
    }
}

/// The error for a read of `len` bytes at `offset` from a source of `end` bytes.
pub(crate) fn check_within(
    name: &str,
    end: u64,
    offset: u64,
    len: usize,
) -> Result<(), FormatError> {
    let wanted = offset.saturating_add(len as u64);
    if wanted > end {
        return Err(FormatError::Truncated {
            name: name.to_owned(),
            end,
            wanted,
        });
    }
    Ok(())
}

/// A local image file, read with positioned reads.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    name: String,
    len: u64,
}

impl FileSource {
    /// Opens a regular file or block device. Directories, pipes and sockets are refused with
    /// [`FormatError::NotAnImage`].
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let (file, len) = crate::raw::open_image_file(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            name: path.display().to_string(),
            len,
        })
    }
}

impl ByteSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        check_within(&self.name, self.len, offset, buf.len())?;
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            // The file shrank since it was opened.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let end = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                Err(FormatError::Truncated {
                    name: self.name.clone(),
                    end,
                    wanted: offset.saturating_add(buf.len() as u64),
                })
            }
            Err(source) => Err(FormatError::Read {
                path: self.path.clone(),
                offset,
                source,
            }),
        }
    }

    fn local_path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// Bytes in memory: test fixtures and fuzz inputs.
#[derive(Debug, Clone)]
pub struct MemorySource {
    name: String,
    bytes: Arc<[u8]>,
}

impl MemorySource {
    /// A source holding `bytes`, called `name` in messages.
    pub fn new(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        Self {
            name: name.into(),
            bytes: bytes.into(),
        }
    }
}

impl ByteSource for MemorySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        check_within(&self.name, self.len(), offset, buf.len())?;
        // check_within proved offset + len <= bytes.len(), which is a usize.
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
}

/// A window of another source: an archive member, an extent inside a file.
#[derive(Debug)]
pub struct SliceSource {
    inner: Arc<dyn ByteSource>,
    name: String,
    start: u64,
    len: u64,
}

impl SliceSource {
    /// The `len` bytes of `inner` from `start`, called `name` in messages. Fails with
    /// [`FormatError::Truncated`] when the window does not lie within `inner`.
    pub fn new(
        inner: Arc<dyn ByteSource>,
        name: impl Into<String>,
        start: u64,
        len: u64,
    ) -> Result<Self, FormatError> {
        let end = start.saturating_add(len);
        if end > inner.len() {
            return Err(FormatError::Truncated {
                name: inner.name().to_owned(),
                end: inner.len(),
                wanted: end,
            });
        }
        Ok(Self {
            inner,
            name: name.into(),
            start,
            len,
        })
    }
}

impl ByteSource for SliceSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        check_within(&self.name, self.len, offset, buf.len())?;
        self.inner.read_exact_at(self.start + offset, buf)
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        check_within(&self.name, self.len, offset, len)?;
        self.inner.read_vec(self.start + offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_source_refuses_reads_past_its_end() {
        let source = MemorySource::new("m", vec![1u8, 2, 3, 4]);
        let mut buf = [0u8; 2];
        source.read_exact_at(2, &mut buf).expect("within");
        assert_eq!(buf, [3, 4]);
        let err = source.read_exact_at(3, &mut buf).expect_err("past the end");
        assert!(
            matches!(
                err,
                FormatError::Truncated {
                    end: 4,
                    wanted: 5,
                    ..
                }
            ),
            "{err}"
        );
        let err = source
            .read_exact_at(u64::MAX, &mut buf)
            .expect_err("overflow");
        assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
    }

    #[test]
    fn slice_source_reads_its_window_only() {
        let inner: Arc<dyn ByteSource> =
            Arc::new(MemorySource::new("m", (0u8..10).collect::<Vec<_>>()));
        let slice = SliceSource::new(inner.clone(), "m:member", 4, 3).expect("fits");
        assert_eq!(slice.read_vec(0, 3).expect("read"), vec![4, 5, 6]);
        assert!(slice.read_vec(1, 3).is_err());
        assert!(SliceSource::new(inner, "m:too-long", 8, 3).is_err());
    }
}

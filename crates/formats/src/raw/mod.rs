//! Raw images: the file's bytes are the disk's bytes.
//!
//! Holes in a sparse file are found with `SEEK_DATA` / `SEEK_HOLE`, so a 100 GiB image with
//! 2 GiB written reads 2 GiB. On file systems without hole support every region is data.
//! Block devices are read whole; their size comes from seeking to their end.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::SeekFrom as RawSeek;

use crate::{ByteSource, DiskReader, Extent, ExtentKind, FormatError};

/// A raw image file or block device.
#[derive(Debug)]
pub struct RawReader {
    file: File,
    path: PathBuf,
    size: u64,
    /// False once the file system has said it cannot report holes.
    seek_holes: bool,
}

impl RawReader {
    /// Opens a raw image file or block device for reading.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let (file, size) = open_image_file(path)?;
        let seek_holes = file
            .metadata()
            .map_err(|source| FormatError::Open {
                path: path.to_owned(),
                source,
            })?
            .file_type()
            .is_file();
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            seek_holes,
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn data_extent(&self, offset: u64) -> Extent {
        Extent {
            offset,
            length: self.size - offset,
            kind: ExtentKind::Data,
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), FormatError> {
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The file shrank under us since it was opened.
    fn truncated(&self, wanted: u64) -> FormatError {
        let end = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        FormatError::Truncated {
            name: self.path.display().to_string(),
            end,
            wanted,
        }
    }

    fn read_error(&self, offset: u64, source: io::Error) -> FormatError {
        FormatError::Read {
            path: self.path.clone(),
            offset,
            source,
        }
    }
}

/// Opens a regular file or block device holding an image and returns it with its size.
/// Directories, sockets, pipes and character devices are refused.
pub(crate) fn open_image_file(path: &Path) -> Result<(File, u64), FormatError> {
    let open_error = |source| FormatError::Open {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(open_error)?;
    let file_type = meta.file_type();
    let what = if file_type.is_dir() {
        Some("directory")
    } else if file_type.is_socket() {
        Some("socket")
    } else if file_type.is_fifo() {
        Some("pipe")
    } else if file_type.is_char_device() {
        Some("character device")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(FormatError::NotAnImage {
            path: path.to_owned(),
            what,
        });
    }

    let mut file = File::open(path).map_err(open_error)?;
    let size = if file_type.is_block_device() {
        file.seek(SeekFrom::End(0)).map_err(open_error)?
    } else {
        meta.len()
    };
    Ok((file, size))
}

impl DiskReader for RawReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        if offset >= self.size {
            return Err(FormatError::OutOfRange {
                offset,
                length: 0,
                size: self.size,
            });
        }
        if !self.seek_holes {
            return Ok(self.data_extent(offset));
        }

        // SEEK_DATA from inside data returns the offset itself; from inside a hole it returns
        // where the next data starts, or ENXIO when only hole remains.
        let data_start = match rustix::fs::seek(&self.file, RawSeek::Data(offset)) {
            Ok(pos) => pos.min(self.size),
            // Only hole remains, or the file shrank since it was opened: tell them apart, as
            // a shrunk image must not read as zeros.
            Err(rustix::io::Errno::NXIO) => {
                let now = self
                    .file
                    .metadata()
                    .map_err(|e| self.read_error(offset, e))?
                    .len();
                if now < self.size {
                    return Err(self.truncated(self.size));
                }
                self.size
            }
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                self.seek_holes = false;
                return Ok(self.data_extent(offset));
            }
            Err(errno) => return Err(self.read_error(offset, errno.into())),
        };
        if data_start > offset {
            return Ok(Extent {
                offset,
                length: data_start - offset,
                kind: ExtentKind::Zero,
            });
        }

        let hole_start = match rustix::fs::seek(&self.file, RawSeek::Hole(offset)) {
            Ok(pos) => pos.min(self.size),
            Err(rustix::io::Errno::NXIO) => self.size,
            Err(errno) => return Err(self.read_error(offset, errno.into())),
        };
        let end = hole_start.max(offset + 1);
        Ok(Extent {
            offset,
            length: end - offset,
            kind: ExtentKind::Data,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let length = buf.len() as u64;
        self.check_range(offset, length)?;
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.truncated(offset + length))
            }
            Err(e) => Err(self.read_error(offset, e)),
        }
    }

    fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        // Reading into spare capacity skips zeroing a buffer only to overwrite it.
        let length = len as u64;
        self.check_range(offset, length)?;
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| self.read_error(offset, e))?;
        let mut buf = Vec::with_capacity(len);
        (&self.file)
            .take(length)
            .read_to_end(&mut buf)
            .map_err(|e| self.read_error(offset, e))?;
        if buf.len() != len {
            return Err(self.truncated(offset + length));
        }
        Ok(buf)
    }
}

/// A raw image read through a [`ByteSource`] that cannot report holes, such as an object in
/// a store: every byte is data, and zero blocks are found by looking at them.
#[derive(Debug)]
pub struct RawSourceReader {
    source: Arc<dyn ByteSource>,
}

impl RawSourceReader {
    /// Reads `source` as a raw disk of the source's length.
    pub fn new(source: Arc<dyn ByteSource>) -> Self {
        Self { source }
    }
}

impl DiskReader for RawSourceReader {
    fn size(&self) -> u64 {
        self.source.len()
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        let size = self.source.len();
        if offset >= size {
            return Err(FormatError::OutOfRange {
                offset,
                length: 0,
                size,
            });
        }
        Ok(Extent {
            offset,
            length: size - offset,
            kind: ExtentKind::Data,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.source.read_exact_at(offset, buf)
    }

    fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        self.source.read_vec(offset, len)
    }
}

#[cfg(test)]
mod tests;

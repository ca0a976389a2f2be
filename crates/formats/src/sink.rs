//! Where exported images are written: files, pipes, or uploads.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::FormatError;

/// An output written front to back.
///
/// Writers append; the only way back is [`ImageSink::rewrite_at`], which a stream refuses.
/// Every format writer is built to need it not at all (so that any format can go to a pipe
/// or an upload) or only for an option that says so.
pub trait ImageSink: Send {
    /// The output's name for messages.
    fn name(&self) -> &str;

    /// Bytes appended so far.
    fn position(&self) -> u64;

    /// Appends `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), FormatError>;

    /// Appends `len` zero bytes. A file leaves a hole; a stream writes the zeros.
    fn write_zeros(&mut self, len: u64) -> Result<(), FormatError>;

    /// Whether [`ImageSink::rewrite_at`] works.
    fn can_rewrite(&self) -> bool {
        false
    }

    /// Overwrites bytes already written.
    fn rewrite_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        let _ = bytes;
        Err(FormatError::Write {
            name: self.name().to_owned(),
            offset,
            source: io::Error::new(io::ErrorKind::Unsupported, "the output is a stream"),
        })
    }

    /// Ends the output: flushes, sets a file's length past a trailing hole, syncs.
    fn finish(&mut self) -> Result<(), FormatError>;
}

/// A zeroed buffer for writing runs of zeros to a stream.
const ZERO_CHUNK: usize = 1 << 20;

/// A local file: runs of zeros become holes.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    name: String,
    position: u64,
}

impl FileSink {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let file = File::create(path).map_err(|source| FormatError::Write {
            name: path.display().to_string(),
            offset: 0,
            source,
        })?;
        Ok(Self {
            file,
            name: path.display().to_string(),
            position: 0,
        })
    }

    fn error(&self, offset: u64, source: io::Error) -> FormatError {
        FormatError::Write {
            name: self.name.clone(),
            offset,
            source,
        }
    }
}

impl ImageSink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let at = self.position;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| self.error(at, e))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<(), FormatError> {
        self.position = self.position.checked_add(len).ok_or_else(|| {
            self.error(
                self.position,
                io::Error::other("the image would pass 2^64 bytes"),
            )
        })?;
        Ok(())
    }

    fn can_rewrite(&self) -> bool {
        true
    }

    fn rewrite_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        if offset.saturating_add(bytes.len() as u64) > self.position {
            return Err(self.error(offset, io::Error::other("rewrite past the end written")));
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| self.error(offset, e))
    }

    fn finish(&mut self) -> Result<(), FormatError> {
        let end = self.position;
        self.file.set_len(end).map_err(|e| self.error(end, e))?;
        self.file.sync_all().map_err(|e| self.error(end, e))
    }
}

/// Any [`Write`]: standard output, an upload. Zeros are written out.
#[derive(Debug)]
pub struct StreamSink<W> {
    out: W,
    name: String,
    position: u64,
}

impl<W: Write + Send> StreamSink<W> {
    /// Writes to `out`, called `name` in messages.
    pub fn new(out: W, name: impl Into<String>) -> Self {
        Self {
            out,
            name: name.into(),
            position: 0,
        }
    }

    /// The writer, once the image is finished.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn error(&self, source: io::Error) -> FormatError {
        FormatError::Write {
            name: self.name.clone(),
            offset: self.position,
            source,
        }
    }
}

impl<W: Write + Send> ImageSink for StreamSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(bytes).map_err(|e| self.error(e))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<(), FormatError> {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK);
            self.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), FormatError> {
        self.out.flush().map_err(|e| self.error(e))
    }
}

/// A file opened for writing that may also be read back: [`FileSink`] over an existing
/// handle, for callers that made the file themselves (a temporary file, a block device).
impl FileSink {
    /// Writes into `file` from its start, called `name` in messages.
    pub fn from_file(mut file: File, name: impl Into<String>) -> Result<Self, FormatError> {
        let name = name.into();
        file.seek(SeekFrom::Start(0))
            .map_err(|source| FormatError::Write {
                name: name.clone(),
                offset: 0,
                source,
            })?;
        Ok(Self {
            file,
            name,
            position: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_leaves_holes_and_sets_the_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.img");
        let mut sink = FileSink::create(&path).expect("create");
        sink.write_all(b"head").expect("write");
        sink.write_zeros(1 << 20).expect("zeros");
        sink.write_all(b"tail").expect("write");
        sink.write_zeros(4096).expect("zeros");
        sink.rewrite_at(0, b"HEAD").expect("rewrite");
        assert!(sink.rewrite_at(sink.position(), b"x").is_err());
        sink.finish().expect("finish");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 4 + (1 << 20) + 4 + 4096);
        assert_eq!(&bytes[..4], b"HEAD");
        assert_eq!(&bytes[4 + (1 << 20)..8 + (1 << 20)], b"tail");
    }

    #[test]
    fn stream_sink_writes_zeros_and_refuses_rewrites() {
        let mut sink = StreamSink::new(Vec::new(), "stdout");
        sink.write_all(b"ab").expect("write");
        sink.write_zeros(3 * ZERO_CHUNK as u64 / 2).expect("zeros");
        assert!(!sink.can_rewrite());
        assert!(sink.rewrite_at(0, b"x").is_err());
        sink.finish().expect("finish");
        let out = sink.into_inner();
        assert_eq!(out.len(), 2 + 3 * ZERO_CHUNK / 2);
        assert!(out[2..].iter().all(|&b| b == 0));
    }
}

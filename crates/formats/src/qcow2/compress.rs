//! Compressed clusters: raw deflate or zstd, each decompressing to exactly one cluster.
//!
//! A compressed cluster's bytes start at any byte of the image and run to the end of the
//! last 512-byte sector the L2 entry counts; the stream may end before that sector does,
//! and decompression stops once it has produced one cluster (spec "Compressed Clusters
//! Descriptor"). Output is always bounded by the cluster buffer the caller passes.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::header::CompressionType;

/// Input bytes between two full flushes of the deflate stream. QEMU inflates compressed
/// clusters with a 4 KiB window (zlib windowBits -12), so no back-reference may reach
/// further than 4 KiB; a full flush makes the compressor forget what came before.
const DEFLATE_WINDOW: usize = 4 << 10;

/// Deflate level of written clusters: zlib's default, as `qemu-img convert -c` uses.
const DEFLATE_LEVEL: u32 = 6;

/// log2 of the largest zstd window a compressed cluster may ask for: 8 MiB. QEMU writes
/// each cluster as one frame no larger than the 2 MiB cluster, and a hostile frame must
/// not make the decoder allocate the 128 MiB it would otherwise accept.
const ZSTD_MAX_WINDOW_LOG: u32 = 23;

/// Decompresses clusters of one image, reusing its state from cluster to cluster.
pub(super) struct Decompressor {
    kind: CompressionType,
    inflate: Decompress,
    zstd: Option<Decoder<'static>>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Decompressor {
    /// A decompressor for clusters compressed with `kind`.
    pub(super) fn new(kind: CompressionType) -> Self {
        Self {
            kind,
            inflate: Decompress::new(false),
            zstd: None,
        }
    }

    /// Fills `out` (one cluster) from the compressed bytes `input`. The error says what is
    /// wrong with the data.
    pub(super) fn decompress(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        match self.kind {
            CompressionType::Zlib => self.inflate(input, out),
            CompressionType::Zstd => self.unzstd(input, out),
        }
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        self.inflate.reset(false);
        loop {
            let read = counted(self.inflate.total_in());
            let written = counted(self.inflate.total_out());
            if written >= out.len() {
                return Ok(());
            }
            let status = self
                .inflate
                .decompress(
                    input.get(read..).unwrap_or(&[]),
                    &mut out[written..],
                    FlushDecompress::Finish,
                )
                .map_err(|e| format!("the deflate data is damaged: {e}"))?;
            let now_written = counted(self.inflate.total_out());
            if now_written >= out.len() {
                return Ok(());
            }
            let stalled = counted(self.inflate.total_in()) == read && now_written == written;
            if status == Status::StreamEnd || stalled {
                return Err(format!(
                    "the deflate data ends after {now_written} of the cluster's {} bytes",
                    out.len()
                ));
            }
        }
    }

    fn unzstd(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        let decoder = match &mut self.zstd {
            Some(decoder) => {
                decoder
                    .reinit()
                    .map_err(|e| format!("cannot reset the zstd decoder: {e}"))?;
                decoder
            }
            None => {
                let mut decoder =
                    Decoder::new().map_err(|e| format!("cannot start a zstd decoder: {e}"))?;
                decoder
                    .set_parameter(DParameter::WindowLogMax(ZSTD_MAX_WINDOW_LOG))
                    .map_err(|e| format!("cannot limit the zstd window: {e}"))?;
                self.zstd.insert(decoder)
            }
        };
        let wanted = out.len();
        let mut input = InBuffer::around(input);
        let mut output = OutBuffer::around(out);
        // Several frames may make up one cluster; stop once it is full or nothing moves.
        while output.pos() < wanted {
            let (read, written) = (input.pos(), output.pos());
            decoder
                .run(&mut input, &mut output)
                .map_err(|e| format!("the zstd data is damaged: {e}"))?;
            if input.pos() == read && output.pos() == written {
                return Err(format!(
                    "the zstd data ends after {written} of the cluster's {wanted} bytes"
                ));
            }
        }
        Ok(())
    }
}

/// A byte count of a stream over an in-memory buffer, which fits a `usize`.
fn counted(total: u64) -> usize {
    usize::try_from(total).unwrap_or(usize::MAX)
}

/// Compresses clusters as raw deflate that QEMU can inflate, reusing its state.
pub(super) struct Compressor {
    deflate: Compress,
    /// Output buffer of one byte less than a cluster: a stream that does not fit did not
    /// shrink the cluster.
    out: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor for clusters of `cluster_size` bytes.
    pub(super) fn new(cluster_size: usize) -> Self {
        Self {
            deflate: Compress::new(Compression::new(DEFLATE_LEVEL), false),
            out: vec![0u8; cluster_size.saturating_sub(1)],
        }
    }

    /// The deflate stream of `cluster`, or `None` when it would not be shorter than the
    /// cluster, which is then stored as it is.
    pub(super) fn compress(&mut self, cluster: &[u8]) -> Option<&[u8]> {
        self.deflate.reset();
        for chunk in cluster.chunks(DEFLATE_WINDOW) {
            self.step(chunk, FlushCompress::Full)?;
        }
        match self.step(&[], FlushCompress::Finish)? {
            Status::StreamEnd => self.out.get(..counted(self.deflate.total_out())),
            _ => None,
        }
    }

    /// Feeds all of `input` to the compressor, or `None` if the output buffer fills first.
    fn step(&mut self, input: &[u8], flush: FlushCompress) -> Option<Status> {
        let read = counted(self.deflate.total_in());
        let written = counted(self.deflate.total_out());
        let status = self
            .deflate
            .compress(input, self.out.get_mut(written..)?, flush)
            .ok()?;
        let consumed = counted(self.deflate.total_in()) - read;
        (consumed == input.len()).then_some(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 KiB of random letters from a four-letter alphabet: about two bits a byte.
    fn letters(seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"acgt"[usize::try_from(state % 4).unwrap_or(0)]
            })
            .collect()
    }

    #[test]
    fn compressed_clusters_never_refer_back_past_4_kib() {
        // Sixteen copies of one 4 KiB chunk: a compressor with a wider window stores the
        // copies as references to the first, one that forgets every 4 KiB cannot.
        let chunk = letters(7);
        let cluster = chunk.repeat(16);
        let mut compressor = Compressor::new(cluster.len());

        let stream = compressor.compress(&cluster).expect("compresses").to_vec();

        assert!(stream.len() > 16 * 900, "{} bytes", stream.len());
        let mut out = vec![0u8; cluster.len()];
        Decompressor::new(CompressionType::Zlib)
            .decompress(&stream, &mut out)
            .expect("inflates");
        assert!(out == cluster);
    }

    #[test]
    fn clusters_that_do_not_shrink_are_not_compressed() {
        let mut state = 99u64;
        let random: Vec<u8> = (0..16 * DEFLATE_WINDOW)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        assert!(Compressor::new(random.len()).compress(&random).is_none());
    }

    #[test]
    fn zstd_and_deflate_data_short_of_a_cluster_is_refused() {
        let mut out = vec![0u8; 4096];
        let short = zstd::bulk::compress(&[7u8; 100], 3).expect("zstd");
        let err = Decompressor::new(CompressionType::Zstd)
            .decompress(&short, &mut out)
            .expect_err("100 bytes are not a cluster");
        assert!(err.contains("ends after 100"), "{err}");

        let mut compressor = Compressor::new(8192);
        let deflate = compressor
            .compress(&[7u8; 2048])
            .expect("compresses")
            .to_vec();
        let err = Decompressor::new(CompressionType::Zlib)
            .decompress(&deflate, &mut out)
            .expect_err("2048 bytes are not a 4096-byte cluster");
        assert!(err.contains("ends after 2048"), "{err}");
    }
}

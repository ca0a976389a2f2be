//! The sparse extent header and the markers of stream-optimized extents.
//!
//! Both are one sector of little-endian fields. The header's layout is that of Virtual Disk
//! Format 1.1 §"Hosted Sparse Extent Header"; markers are from §"Stream-Optimized
//! Compressed Sparse Extents".

use crate::FormatError;
use crate::fields::Fields;

/// The format's name in errors.
pub(crate) const FORMAT: &str = "VMDK";

/// Bytes in a sector, the unit of every offset and size in a VMDK.
pub(crate) const SECTOR: u64 = 512;

/// `SECTOR` as a `usize`, for buffers.
pub(crate) const SECTOR_LEN: usize = 512;

/// `magicNumber`: 'VMDK' as a little-endian u32, which reads "KDMV" in the file.
pub(crate) const MAGIC: [u8; 4] = *b"KDMV";

/// `gdOffset` of a stream-optimized extent whose grain directory follows the grains; the
/// real offset is in the footer, a copy of the header near the end of the file.
pub(crate) const GD_AT_END: u64 = u64::MAX;

/// `flags` bit 0: the four newline bytes at 73..77 are valid, so a file mangled by a
/// text-mode transfer can be recognised.
pub(crate) const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// `flags` bit 1: a redundant grain directory and grain tables are kept.
pub(crate) const FLAG_REDUNDANT_TABLES: u32 = 1 << 1;
/// `flags` bit 16: grains are compressed.
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
/// `flags` bit 17: grains and metadata are preceded by markers.
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;

/// `compressAlgorithm`: none.
pub(crate) const COMPRESS_NONE: u16 = 0;
/// `compressAlgorithm`: deflate. Every writer (VMware's, qemu's) stores each grain as a
/// zlib stream (RFC 1950: a two-byte header, deflate data, an Adler-32 trailer).
pub(crate) const COMPRESS_DEFLATE: u16 = 1;

/// The newline bytes at 73..77 of a header with `FLAG_NEWLINE_TEST`.
const NEWLINE_TEST: [u8; 4] = *b"\n \r\n";

/// Highest header version: 1 is the original hosted sparse extent, 2 adds zeroed grains,
/// 3 is what stream-optimized extents carry.
const MAX_VERSION: u32 = 3;

/// Largest grain, in sectors (16 MiB). Real grains are 64 KiB; a grain is decompressed
/// whole into memory, so its size is bounded.
pub(crate) const MAX_GRAIN_SECTORS: u64 = 1 << 15;

/// Most grain table entries per grain table. Every VMware product writes 512 and qemu
/// refuses more; the bound keeps one table at 2 KiB.
pub(crate) const MAX_GTES_PER_GT: u32 = 512;

/// Largest virtual disk, in bytes (256 TiB): above VMware's 62 TB, and small enough that
/// sector arithmetic on it never comes near overflow.
pub(crate) const MAX_DISK_SIZE: u64 = 1 << 48;

/// `n` as a `usize`, for values a named limit bounds far below `usize::MAX`: grain sizes,
/// table lengths, offsets within a grain or a buffer.
pub(crate) fn small(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A hosted sparse extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SparseHeader {
    /// `version`: 1, 2 or 3.
    pub(crate) version: u32,
    /// `flags`, the `FLAG_*` bits.
    pub(crate) flags: u32,
    /// `capacity`: the extent's size in sectors.
    pub(crate) capacity: u64,
    /// `grainSize`: sectors per grain, a power of two.
    pub(crate) grain_sectors: u64,
    /// `descriptorOffset`: sector of the embedded descriptor, 0 for none.
    pub(crate) descriptor_offset: u64,
    /// `descriptorSize`: sectors of the embedded descriptor.
    pub(crate) descriptor_sectors: u64,
    /// `numGTEsPerGT`: entries in a grain table.
    pub(crate) gtes_per_gt: u32,
    /// `rgdOffset`: sector of the redundant grain directory, 0 for none.
    pub(crate) rgd_offset: u64,
    /// `gdOffset`: sector of the grain directory, or `GD_AT_END`.
    pub(crate) gd_offset: u64,
    /// `overHead`: sectors of metadata before the first grain.
    pub(crate) overhead: u64,
    /// `compressAlgorithm`.
    pub(crate) compress_algorithm: u16,
}

impl SparseHeader {
    /// Parses and checks the header in the first 512 bytes of `fields`. `name` is the
    /// image's name, for errors that are not about one field.
    pub(crate) fn parse(fields: &Fields<'_>, name: &str) -> Result<Self, FormatError> {
        if fields.array::<4>("magicNumber", 0)? != MAGIC {
            return Err(fields.corrupt("magicNumber", 0, "not \"KDMV\""));
        }
        let version = fields.u32_le("version", 4)?;
        if version == 0 || version > MAX_VERSION {
            return Err(FormatError::Unsupported {
                format: FORMAT,
                name: name.to_owned(),
                feature: format!("sparse extent version {version}"),
                advice: "convert it with qemu-img first",
            });
        }
        let flags = fields.u32_le("flags", 8)?;
        let header = Self {
            version,
            flags,
            capacity: fields.u64_le("capacity", 12)?,
            grain_sectors: fields.u64_le("grainSize", 20)?,
            descriptor_offset: fields.u64_le("descriptorOffset", 28)?,
            descriptor_sectors: fields.u64_le("descriptorSize", 36)?,
            gtes_per_gt: fields.u32_le("numGTEsPerGT", 44)?,
            rgd_offset: fields.u64_le("rgdOffset", 48)?,
            gd_offset: fields.u64_le("gdOffset", 56)?,
            overhead: fields.u64_le("overHead", 64)?,
            compress_algorithm: fields.u16_le("compressAlgorithm", 77)?,
        };

        // A text-mode transfer turns "\n" into "\r\n" and breaks every offset after it.
        if flags & FLAG_NEWLINE_TEST != 0
            && fields.array::<4>("singleEndLineChar", 73)? != NEWLINE_TEST
        {
            return Err(fields.corrupt(
                "singleEndLineChar",
                73,
                "the newline test bytes are changed: the file was probably copied in text mode",
            ));
        }

        let capacity_limit = MAX_DISK_SIZE / SECTOR;
        if header.capacity > capacity_limit {
            return Err(fields.corrupt(
                "capacity",
                12,
                format!(
                    "{} sectors is above the limit of {capacity_limit}",
                    header.capacity
                ),
            ));
        }
        let grain = header.grain_sectors;
        if grain == 0 || !grain.is_power_of_two() || grain > MAX_GRAIN_SECTORS {
            return Err(fields.corrupt(
                "grainSize",
                20,
                format!("{grain} sectors is not a power of two between 1 and {MAX_GRAIN_SECTORS}"),
            ));
        }
        if header.gtes_per_gt == 0 || header.gtes_per_gt > MAX_GTES_PER_GT {
            return Err(fields.corrupt(
                "numGTEsPerGT",
                44,
                format!(
                    "{} is not between 1 and {MAX_GTES_PER_GT}",
                    header.gtes_per_gt
                ),
            ));
        }
        match header.compress_algorithm {
            COMPRESS_NONE if flags & FLAG_COMPRESSED != 0 => {
                return Err(fields.corrupt(
                    "compressAlgorithm",
                    77,
                    "none, but the flags say the grains are compressed",
                ));
            }
            COMPRESS_NONE | COMPRESS_DEFLATE => {}
            other => {
                return Err(FormatError::Unsupported {
                    format: FORMAT,
                    name: name.to_owned(),
                    feature: format!("compression algorithm {other}"),
                    advice: "convert it with the tool that made it",
                });
            }
        }
        if header.gd_offset == 0 {
            return Err(fields.corrupt("gdOffset", 56, "0: the extent has no grain directory"));
        }
        Ok(header)
    }

    /// Whether grains are stored compressed. The algorithm decides, as it does for qemu;
    /// `parse` refuses a header whose flag says otherwise.
    pub(crate) fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESS_DEFLATE
    }

    /// Whether each grain starts with a grain marker.
    pub(crate) fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// Grain size in bytes.
    pub(crate) fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// The header as one sector.
    pub(crate) fn encode(&self) -> [u8; SECTOR_LEN] {
        let mut out = [0u8; SECTOR_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        out[20..28].copy_from_slice(&self.grain_sectors.to_le_bytes());
        out[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        out[36..44].copy_from_slice(&self.descriptor_sectors.to_le_bytes());
        out[44..48].copy_from_slice(&self.gtes_per_gt.to_le_bytes());
        out[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        out[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        out[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        // 72: uncleanShutdown stays 0.
        out[73..77].copy_from_slice(&NEWLINE_TEST);
        out[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        out
    }
}

/// Marker `type` of the end-of-stream marker.
pub(crate) const MARKER_EOS: u32 = 0;
/// Marker `type` of a grain table marker.
pub(crate) const MARKER_GT: u32 = 1;
/// Marker `type` of a grain directory marker.
pub(crate) const MARKER_GD: u32 = 2;
/// Marker `type` of the footer marker.
pub(crate) const MARKER_FOOTER: u32 = 3;

/// Bytes before a compressed grain's data in its grain marker: `lba` u64, `size` u32.
pub(crate) const GRAIN_MARKER_LEN: usize = 12;

/// A metadata marker: `numSectors` of metadata follow, of `kind` (`MARKER_*`). On disk it
/// is `numSectors` u64, `size` u32 = 0, `type` u32, then zeros to the end of the sector.
pub(crate) fn encode_marker(sectors: u64, kind: u32) -> [u8; SECTOR_LEN] {
    let mut out = [0u8; SECTOR_LEN];
    out[0..8].copy_from_slice(&sectors.to_le_bytes());
    out[12..16].copy_from_slice(&kind.to_le_bytes());
    out
}

/// Checks that `fields` begins with a metadata marker of `kind`; `field` names it.
pub(crate) fn check_marker(
    fields: &Fields<'_>,
    field: &'static str,
    kind: u32,
) -> Result<(), FormatError> {
    let size = fields.u32_le(field, 8)?;
    let found = fields.u32_le(field, 12)?;
    if size != 0 || found != kind {
        return Err(fields.corrupt(
            field,
            0,
            format!("not a marker of type {kind} (size {size}, type {found})"),
        ));
    }
    Ok(())
}

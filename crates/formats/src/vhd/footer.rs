//! The hard disk footer: the 512 bytes every VHD ends with (spec "Hard Disk Footer Format").
//!
//! ```text
//! offset size field
//!      0    8 cookie "conectix"
//!      8    4 features (bit 1 reserved, always set)
//!     12    4 file format version 0x0001_0000
//!     16    8 data offset: the dynamic header, or all ones for a fixed disk
//!     24    4 time stamp: seconds since 2000-01-01 00:00:00 UTC
//!     28    4 creator application ("qemu", "qem2", "win ", "vpc ", "d2v ", ...)
//!     32    4 creator version
//!     36    4 creator host OS ("Wi2k", "Mac ")
//!     40    8 original size in bytes
//!     48    8 current size in bytes: the virtual disk's size
//!     56    4 disk geometry: cylinders (u16), heads (u8), sectors per track (u8)
//!     60    4 disk type: 2 fixed, 3 dynamic, 4 differencing
//!     64    4 checksum: ones' complement of the byte sum, this field taken as zero
//!     68   16 unique id
//!     84    1 saved state
//!     85  427 reserved, zero
//! ```
//!
//! Every integer is big-endian.

use crate::FormatError;
use crate::fields::Fields;

/// Bytes in a footer, and in a sector.
pub(super) const FOOTER_LEN: usize = 512;
/// Footer field "Cookie".
const COOKIE: &[u8; 8] = b"conectix";
/// Footer field "Features": bit 1 is reserved and the spec says it is always set.
const FEATURES_RESERVED: u32 = 0x0000_0002;
/// Footer and dynamic header field "File Format Version" / "Header Version": major 1,
/// minor 0. Only the major half says how the structure reads.
pub(super) const FORMAT_VERSION: u32 = 0x0001_0000;
/// Footer field "Data Offset" of a fixed disk, which has no dynamic header.
pub(super) const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
const VHD_EPOCH_UNIX: u64 = 946_684_800;
/// Where the checksum field lies in the footer.
const CHECKSUM_AT: usize = 64;

/// Sectors that the largest CHS geometry the spec allows covers: 65535 cylinders, 16 heads,
/// 255 sectors per track (spec "Appendix: CHS Calculation"), about 127 GiB.
const MAX_CHS_SECTORS: u64 = 65_535 * 16 * 255;

/// How a VHD stores its disk (footer field "Disk Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdDiskType {
    /// The disk's bytes, then the footer.
    Fixed,
    /// Blocks allocated on first write, found through a block allocation table.
    Dynamic,
    /// A dynamic disk whose unwritten sectors read from a parent VHD.
    Differencing,
}

impl VhdDiskType {
    /// The footer's code for the type.
    fn code(self) -> u32 {
        match self {
            VhdDiskType::Fixed => 2,
            VhdDiskType::Dynamic => 3,
            VhdDiskType::Differencing => 4,
        }
    }
}

/// The disk geometry a footer records, as a BIOS would see the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) cylinders: u16,
    pub(super) heads: u8,
    pub(super) sectors_per_track: u8,
}

impl Geometry {
    /// The geometry the spec's "CHS Calculation" gives a disk of `total_sectors` sectors.
    /// It may cover fewer sectors than the disk (it rounds down), and covers at most
    /// [`MAX_CHS_SECTORS`].
    pub(super) fn for_sectors(total_sectors: u64) -> Self {
        let total = total_sectors.min(MAX_CHS_SECTORS);
        let (sectors_per_track, heads, cylinders_times_heads) = if total >= 65_535 * 16 * 63 {
            (255u64, 16u64, total / 255)
        } else {
            let mut sectors_per_track = 17;
            let mut cylinders_times_heads = total / sectors_per_track;
            let mut heads = cylinders_times_heads.div_ceil(1024).max(4);
            if cylinders_times_heads >= heads * 1024 || heads > 16 {
                sectors_per_track = 31;
                heads = 16;
                cylinders_times_heads = total / sectors_per_track;
            }
            if cylinders_times_heads >= heads * 1024 {
                sectors_per_track = 63;
                heads = 16;
                cylinders_times_heads = total / sectors_per_track;
            }
            (sectors_per_track, heads, cylinders_times_heads)
        };
        // Each value is within its field by construction: total is at most
        // 65535 * 16 * 255, so cylinders stay at most 65535.
        Self {
            cylinders: u16::try_from(cylinders_times_heads / heads).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(16),
            sectors_per_track: u8::try_from(sectors_per_track).unwrap_or(255),
        }
    }

    /// The sectors the geometry covers.
    #[cfg(test)]
    pub(super) fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }
}

/// A footer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Footer {
    /// Where the dynamic header lies; [`NO_DATA_OFFSET`] for a fixed disk.
    pub(super) data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub(super) timestamp: u32,
    pub(super) creator_application: [u8; 4],
    pub(super) creator_version: u32,
    pub(super) creator_host_os: [u8; 4],
    pub(super) original_size: u64,
    /// The virtual disk's size in bytes.
    pub(super) current_size: u64,
    pub(super) geometry: Geometry,
    pub(super) disk_type: VhdDiskType,
    pub(super) unique_id: [u8; 16],
}

/// The spec's checksum of a footer or dynamic header: the ones' complement of the sum of
/// its bytes, with the four bytes of the checksum field itself left out.
pub(super) fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}

/// A time stamp for a footer or header: seconds since the VHD epoch, clamped to the
/// field's range.
pub(super) fn vhd_timestamp(unix_seconds: u64) -> u32 {
    u32::try_from(unix_seconds.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

impl Footer {
    /// Parses and checks the footer in `bytes` (at least [`FOOTER_LEN`] long), read from
    /// offset `base` of the image `name`.
    pub(super) fn parse(bytes: &[u8], name: &str, base: u64) -> Result<Self, FormatError> {
        let fields = Fields::new(bytes, "VHD", name, base);
        let bytes = fields.slice("hard disk footer", 0, FOOTER_LEN)?;

        let cookie: [u8; 8] = fields.array("footer cookie", 0)?;
        if &cookie != COOKIE {
            return Err(fields.corrupt(
                "footer cookie",
                0,
                format!("{:?} is not \"conectix\"", String::from_utf8_lossy(&cookie)),
            ));
        }
        let stored = fields.u32_be("footer checksum", CHECKSUM_AT)?;
        let computed = checksum(bytes, CHECKSUM_AT);
        if stored != computed {
            return Err(fields.corrupt(
                "footer checksum",
                CHECKSUM_AT,
                format!("{stored:#010x} where the footer's bytes sum to {computed:#010x}"),
            ));
        }
        let version = fields.u32_be("file format version", 12)?;
        if version >> 16 != FORMAT_VERSION >> 16 {
            return Err(FormatError::Unsupported {
                format: "VHD",
                name: name.to_owned(),
                feature: format!("file format version {version:#010x}"),
                advice: "only version 1.0 is specified; convert the image with the tool that \
                         made it",
            });
        }
        let disk_type = match fields.u32_be("disk type", 60)? {
            2 => VhdDiskType::Fixed,
            3 => VhdDiskType::Dynamic,
            4 => VhdDiskType::Differencing,
            other => {
                return Err(fields.corrupt(
                    "disk type",
                    60,
                    format!("{other} is none of 2 (fixed), 3 (dynamic), 4 (differencing)"),
                ));
            }
        };
        let geometry: [u8; 4] = fields.array("disk geometry", 56)?;

        Ok(Self {
            data_offset: fields.u64_be("data offset", 16)?,
            timestamp: fields.u32_be("time stamp", 24)?,
            creator_application: fields.array("creator application", 28)?,
            creator_version: fields.u32_be("creator version", 32)?,
            creator_host_os: fields.array("creator host OS", 36)?,
            original_size: fields.u64_be("original size", 40)?,
            current_size: fields.u64_be("current size", 48)?,
            geometry: Geometry {
                cylinders: u16::from_be_bytes([geometry[0], geometry[1]]),
                heads: geometry[2],
                sectors_per_track: geometry[3],
            },
            disk_type,
            unique_id: fields.array("unique id", 68)?,
        })
    }

    /// The footer's 512 bytes, checksum included.
    pub(super) fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut out = [0u8; FOOTER_LEN];
        out[0..8].copy_from_slice(COOKIE);
        out[8..12].copy_from_slice(&FEATURES_RESERVED.to_be_bytes());
        out[12..16].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        out[28..32].copy_from_slice(&self.creator_application);
        out[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        out[36..40].copy_from_slice(&self.creator_host_os);
        out[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        out[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        out[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        out[58] = self.geometry.heads;
        out[59] = self.geometry.sectors_per_track;
        out[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        out[68..84].copy_from_slice(&self.unique_id);
        let sum = checksum(&out, CHECKSUM_AT);
        out[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            data_offset: 512,
            timestamp: 0x1234_5678,
            creator_application: *b"qem2",
            creator_version: 0x0001_0000,
            creator_host_os: *b"Wi2k",
            original_size: 10 << 20,
            current_size: 10 << 20,
            geometry: Geometry::for_sectors(20_480),
            disk_type: VhdDiskType::Dynamic,
            unique_id: [7; 16],
        }
    }

    #[test]
    fn a_footer_survives_encoding_and_parsing() {
        let footer = footer();
        let bytes = footer.encode();
        assert_eq!(Footer::parse(&bytes, "d.vhd", 0).expect("parses"), footer);
    }

    #[test]
    fn a_footer_with_one_byte_changed_fails_its_checksum() {
        let mut bytes = footer().encode();
        bytes[100] ^= 1;
        let err = Footer::parse(&bytes, "d.vhd", 4096).expect_err("bad checksum");
        assert!(
            matches!(
                err,
                FormatError::Corrupt {
                    field: "footer checksum",
                    offset: 4160,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn geometry_follows_the_spec_examples() {
        // 10 MiB: 301 cylinders of 4 heads and 17 sectors, 12 sectors short of the disk.
        assert_eq!(
            Geometry::for_sectors(20_480),
            Geometry {
                cylinders: 301,
                heads: 4,
                sectors_per_track: 17
            }
        );
        // Past 65535 * 16 * 63 sectors, 16 heads of 255 sectors.
        let big = Geometry::for_sectors(100 << 21);
        assert_eq!((big.heads, big.sectors_per_track), (16, 255));
        // The largest geometry caps the sectors covered.
        assert_eq!(Geometry::for_sectors(u64::MAX).sectors(), MAX_CHS_SECTORS);
        assert!(Geometry::for_sectors(20_480).sectors() <= 20_480);
    }

    #[test]
    fn time_stamps_count_from_the_year_2000() {
        assert_eq!(vhd_timestamp(VHD_EPOCH_UNIX + 5), 5);
        assert_eq!(vhd_timestamp(0), 0);
        assert_eq!(vhd_timestamp(u64::MAX), u32::MAX);
    }
}

//! The qcow2 header and its extensions, parsed from the image's first cluster.
//!
//! ```text
//!  byte  field                     byte  field (version 3; absent in version 2)
//!   0    magic "QFI\xfb"             72   incompatible_features
//!   4    version (2 or 3)            80   compatible_features
//!   8    backing_file_offset         88   autoclear_features
//!  16    backing_file_size           96   refcount_order
//!  20    cluster_bits               100   header_length (104 or more, a multiple of 8)
//!  24    size (virtual, bytes)      104   compression_type (0 zlib, 1 zstd)
//!  32    crypt_method
//!  36    l1_size (entries)          then, from header_length, extensions:
//!  40    l1_table_offset              u32 type, u32 length, data, padding to 8 bytes,
//!  48    refcount_table_offset        up to a type 0 or the backing file name
//!  56    refcount_table_clusters
//!  60    nb_snapshots
//!  64    snapshots_offset
//! ```

use std::str::FromStr;

use super::{FORMAT, MAX_CLUSTER_SIZE, MAX_DISK_SIZE, MAX_L1_BYTES, MIN_CLUSTER_SIZE};
use crate::fields::Fields;
use crate::{Format, FormatError};

/// "QFI\xfb" (spec "Header", bytes 0-3).
pub(super) const MAGIC: [u8; 4] = *b"QFI\xfb";

/// The length of a version 2 header, which has no header_length field (spec "Header").
const V2_HEADER_LEN: usize = 72;

/// The shortest version 3 header: the fields through header_length (spec "Header").
const V3_MIN_HEADER_LEN: usize = 104;

/// Where a version 3 header keeps its compression type, when header_length covers it
/// (spec "Additional fields").
const COMPRESSION_TYPE_AT: usize = 104;

/// The longest backing file name, in bytes (spec "Header", backing_file_size).
const MAX_BACKING_NAME_LEN: u32 = 1023;

/// The smallest cluster with extended L2 entries: 16 KiB, so that a subcluster is at least
/// 512 bytes (spec "Header", cluster_bits).
const MIN_EXTENDED_L2_CLUSTER_SIZE: u64 = 16 << 10;

/// The widest refcount entry: refcount_order 6, 64 bits (spec "Header", refcount_order).
const MAX_REFCOUNT_ORDER: u32 = 6;

/// Incompatible feature bits (spec "Header", bytes 72-79).
const INCOMPATIBLE_DIRTY: u64 = 1 << 0;
const INCOMPATIBLE_CORRUPT: u64 = 1 << 1;
const INCOMPATIBLE_DATA_FILE: u64 = 1 << 2;
const INCOMPATIBLE_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPATIBLE_EXTENDED_L2: u64 = 1 << 4;
const INCOMPATIBLE_KNOWN: u64 = INCOMPATIBLE_DIRTY
    | INCOMPATIBLE_CORRUPT
    | INCOMPATIBLE_DATA_FILE
    | INCOMPATIBLE_COMPRESSION_TYPE
    | INCOMPATIBLE_EXTENDED_L2;

/// Autoclear bit 1: the external data file reads as a raw image on its own.
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Header extension types (spec "Header extensions").
const EXTENSION_END: u32 = 0;
const EXTENSION_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXTENSION_FEATURE_NAMES: u32 = 0x6803_f857;
const EXTENSION_DATA_FILE: u32 = 0x4441_5441;

/// One entry of the feature name table: type, bit, 46 bytes of name (spec "Feature name
/// table").
const FEATURE_NAME_ENTRY_LEN: usize = 48;

/// Feature name table type of incompatible features.
const FEATURE_TYPE_INCOMPATIBLE: u8 = 0;

/// How compressed clusters are compressed (spec "Additional fields", compression_type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CompressionType {
    /// Raw deflate, the default.
    Zlib,
    /// Zstandard frames.
    Zstd,
}

/// The file the image's unallocated clusters read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BackingFile {
    /// The name as written in the image.
    pub(super) name: String,
    /// The format the backing format extension names, if any.
    pub(super) format: Option<Format>,
}

/// What a qcow2 reader needs from the first cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    /// 2 or 3.
    pub(super) version: u32,
    /// log2 of the cluster size.
    pub(super) cluster_bits: u32,
    /// The virtual disk's size in bytes.
    pub(super) size: u64,
    /// Entries of the active L1 table the disk's size needs: at most l1_size.
    pub(super) l1_entries: u64,
    /// Where the active L1 table starts.
    pub(super) l1_table_offset: u64,
    /// L2 entries are 128 bits, with subcluster bitmaps.
    pub(super) extended_l2: bool,
    /// How compressed clusters are compressed.
    pub(super) compression: CompressionType,
    /// The backing file, if the image has one.
    pub(super) backing: Option<BackingFile>,
    /// The external data file's name, if guest clusters live in one.
    pub(super) data_file: Option<String>,
}

impl Header {
    /// The cluster size in bytes.
    pub(super) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest clusters one L2 table maps.
    pub(super) fn l2_entries(&self) -> u64 {
        l2_entries(self.cluster_bits, self.extended_l2)
    }
}

/// Guest clusters one L2 table maps: a cluster of 8-byte entries, or of 16-byte extended
/// entries (spec "Cluster mapping" and "Extended L2 Entries").
pub(super) fn l2_entries(cluster_bits: u32, extended_l2: bool) -> u64 {
    let entry_len: u64 = if extended_l2 { 16 } else { 8 };
    (1u64 << cluster_bits) / entry_len
}

/// How many bytes of the image's start the header needs: its first cluster (which holds
/// the header, the extensions and the backing file name), or the whole file if shorter.
/// `probe` is the image's first bytes; while they say nothing sensible, the probe itself.
pub(super) fn first_cluster_len(probe: &[u8], file_len: u64) -> u64 {
    let cluster = probe
        .get(20..24)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .and_then(|bits| 1u64.checked_shl(bits))
        .filter(|size| (MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(size))
        .unwrap_or(probe.len() as u64);
    cluster.min(file_len)
}

/// Parses the header in `bytes`, the image's first cluster (or all of a shorter file), of
/// the image `name` whose file is `file_len` bytes long.
pub(super) fn parse(bytes: &[u8], name: &str, file_len: u64) -> Result<Header, FormatError> {
    let fields = Fields::new(bytes, FORMAT, name, 0);
    let unsupported = |feature: String, advice: &'static str| FormatError::Unsupported {
        format: FORMAT,
        name: name.to_owned(),
        feature,
        advice,
    };

    if fields.array::<4>("magic", 0)? != MAGIC {
        return Err(fields.corrupt("magic", 0, "not \"QFI\\xfb\": this is not a qcow2 image"));
    }
    let version = fields.u32_be("version", 4)?;
    if version != 2 && version != 3 {
        return Err(unsupported(
            format!("qcow2 version {version}"),
            "convert it with qemu-img convert -O qcow2 first",
        ));
    }
    let cluster_bits = fields.u32_be("cluster_bits", 20)?;
    let cluster_size = 1u64
        .checked_shl(cluster_bits)
        .filter(|size| (MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(size))
        .ok_or_else(|| {
            fields.corrupt(
                "cluster_bits",
                20,
                format!("{cluster_bits} is outside 9 to 21 (512 bytes to 2 MiB clusters)"),
            )
        })?;
    let crypt_method = fields.u32_be("crypt_method", 32)?;
    if crypt_method != 0 {
        let method = match crypt_method {
            1 => "AES encryption".to_owned(),
            2 => "LUKS encryption".to_owned(),
            other => format!("encryption method {other}"),
        };
        return Err(unsupported(
            method,
            "decrypt it with qemu-img convert first",
        ));
    }

    let v3 = V3Fields::parse(&fields, version, cluster_size)?;
    let extensions = Extensions::parse(&fields, &v3, cluster_size)?;
    check_incompatible(&fields, &v3, &extensions, name)?;
    let compression = compression_type(&fields, &v3)?;
    let extended_l2 = v3.incompatible & INCOMPATIBLE_EXTENDED_L2 != 0;
    if extended_l2 && cluster_size < MIN_EXTENDED_L2_CLUSTER_SIZE {
        return Err(fields.corrupt(
            "cluster_bits",
            20,
            format!("{cluster_size}-byte clusters are too small for extended L2 entries"),
        ));
    }

    let size = fields.u64_be("size", 24)?;
    if size > MAX_DISK_SIZE {
        return Err(fields.corrupt(
            "size",
            24,
            format!("{size} bytes is above the limit of {MAX_DISK_SIZE}"),
        ));
    }
    let (l1_entries, l1_table_offset) =
        l1_table(&fields, size, cluster_bits, extended_l2, file_len)?;

    let backing = backing_file(&fields, cluster_size, &extensions, &unsupported)?;
    let data_file = data_file(&v3, &extensions, &unsupported)?;

    Ok(Header {
        version,
        cluster_bits,
        size,
        l1_entries,
        l1_table_offset,
        extended_l2,
        compression,
        backing,
        data_file,
    })
}

/// The fields of a version 3 header, zero (absent) for version 2.
#[derive(Debug)]
struct V3Fields {
    incompatible: u64,
    autoclear: u64,
    /// Where the header ends and the extensions begin.
    header_length: usize,
}

impl V3Fields {
    fn parse(fields: &Fields<'_>, version: u32, cluster_size: u64) -> Result<Self, FormatError> {
        if version == 2 {
            return Ok(Self {
                incompatible: 0,
                autoclear: 0,
                header_length: V2_HEADER_LEN,
            });
        }
        let refcount_order = fields.u32_be("refcount_order", 96)?;
        if refcount_order > MAX_REFCOUNT_ORDER {
            return Err(fields.corrupt(
                "refcount_order",
                96,
                format!("{refcount_order} is above {MAX_REFCOUNT_ORDER} (64-bit refcounts)"),
            ));
        }
        let header_length = fields.u32_be("header_length", 100)?;
        let fits = u64::from(header_length) <= cluster_size;
        let header_length = usize::try_from(header_length).unwrap_or(usize::MAX);
        if header_length < V3_MIN_HEADER_LEN || !header_length.is_multiple_of(8) || !fits {
            return Err(fields.corrupt(
                "header_length",
                100,
                format!(
                    "{header_length} is not a multiple of 8 from {V3_MIN_HEADER_LEN} to the \
                     cluster size {cluster_size}"
                ),
            ));
        }
        fields.slice("header", 0, header_length)?;
        Ok(Self {
            incompatible: fields.u64_be("incompatible_features", 72)?,
            autoclear: fields.u64_be("autoclear_features", 88)?,
            header_length,
        })
    }
}

/// The header extensions this reader uses.
#[derive(Debug, Default)]
struct Extensions {
    backing_format: Option<String>,
    data_file: Option<String>,
    /// Incompatible feature bit and its name, from the feature name table.
    incompatible_names: Vec<(u8, String)>,
}

impl Extensions {
    /// Walks the extensions from the end of the header to the end-of-extensions marker,
    /// the backing file name or the end of the first cluster, whichever comes first.
    fn parse(fields: &Fields<'_>, v3: &V3Fields, cluster_size: u64) -> Result<Self, FormatError> {
        let backing_offset = fields.u64_be("backing_file_offset", 8)?;
        let area_end = if backing_offset != 0 && backing_offset < cluster_size {
            backing_offset
        } else {
            cluster_size
        };
        let area_end = usize::try_from(area_end).unwrap_or(usize::MAX);

        let mut extensions = Self::default();
        let mut at = v3.header_length;
        // Each extension takes at least 8 bytes, so the walk ends within the first cluster.
        while at < area_end {
            let kind = fields.u32_be("header extension type", at)?;
            if kind == EXTENSION_END {
                break;
            }
            let len = fields.u32_be("header extension length", at + 4)?;
            let data_at = at + 8;
            let data_end = usize::try_from(len)
                .ok()
                .and_then(|len| data_at.checked_add(len))
                .filter(|&end| end <= area_end)
                .ok_or_else(|| {
                    fields.corrupt(
                        "header extension length",
                        at + 4,
                        format!("{len} bytes run past the header area, which ends at {area_end}"),
                    )
                })?;
            let data = fields.slice("header extension", data_at, data_end - data_at)?;
            match kind {
                EXTENSION_BACKING_FORMAT => {
                    let text = extension_text(fields, "backing file format", data_at, data)?;
                    extensions.backing_format = Some(text);
                }
                EXTENSION_DATA_FILE => {
                    let text = extension_text(fields, "external data file name", data_at, data)?;
                    extensions.data_file = Some(text);
                }
                EXTENSION_FEATURE_NAMES => {
                    for entry in data.chunks_exact(FEATURE_NAME_ENTRY_LEN) {
                        if entry[0] == FEATURE_TYPE_INCOMPATIBLE {
                            let name = &entry[2..];
                            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(46)];
                            let name = String::from_utf8_lossy(name).into_owned();
                            extensions.incompatible_names.push((entry[1], name));
                        }
                    }
                }
                // Bitmaps, the encryption header pointer and unknown extensions do not
                // change what the disk reads as.
                _ => {}
            }
            at = data_end.div_ceil(8).saturating_mul(8);
        }
        Ok(extensions)
    }
}

/// A string extension's text (spec "String header extensions").
fn extension_text(
    fields: &Fields<'_>,
    field: &'static str,
    at: usize,
    data: &[u8],
) -> Result<String, FormatError> {
    String::from_utf8(data.to_vec())
        .map_err(|_| fields.corrupt(field, at, "the name is not UTF-8 text"))
}

/// Refuses unknown incompatible features, naming them as the image's feature name table
/// does, and images QEMU marked corrupt.
fn check_incompatible(
    fields: &Fields<'_>,
    v3: &V3Fields,
    extensions: &Extensions,
    name: &str,
) -> Result<(), FormatError> {
    let unknown = v3.incompatible & !INCOMPATIBLE_KNOWN;
    if unknown != 0 {
        let named: Vec<String> = (0..64u8)
            .filter(|bit| unknown & (1u64 << bit) != 0)
            .map(|bit| {
                match extensions
                    .incompatible_names
                    .iter()
                    .find(|(b, _)| *b == bit)
                {
                    Some((_, feature)) => format!("bit {bit} ({feature:?})"),
                    None => format!("bit {bit}"),
                }
            })
            .collect();
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!("incompatible feature {}", named.join(", ")),
            advice: "convert it with a qemu-img that knows the feature first",
        });
    }
    if v3.incompatible & INCOMPATIBLE_CORRUPT != 0 {
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: "an image marked corrupt (incompatible feature bit 1)".to_owned(),
            advice: "repair it with qemu-img check -r all first",
        });
    }
    if v3.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 && v3.incompatible & INCOMPATIBLE_DATA_FILE == 0
    {
        return Err(fields.corrupt(
            "autoclear_features",
            88,
            "the raw external data bit is set without an external data file",
        ));
    }
    Ok(())
}

/// The compression type: the header field when the compression type bit says it is there.
fn compression_type(fields: &Fields<'_>, v3: &V3Fields) -> Result<CompressionType, FormatError> {
    let present = v3.header_length > COMPRESSION_TYPE_AT;
    let value = if present {
        fields.array::<1>("compression_type", COMPRESSION_TYPE_AT)?[0]
    } else {
        0
    };
    let flagged = v3.incompatible & INCOMPATIBLE_COMPRESSION_TYPE != 0;
    match (flagged, value) {
        (false, 0) => Ok(CompressionType::Zlib),
        (true, 1) => Ok(CompressionType::Zstd),
        (false, other) => Err(fields.corrupt(
            "compression_type",
            COMPRESSION_TYPE_AT,
            format!("{other} without the compression type feature bit"),
        )),
        (true, 0) => Err(fields.corrupt(
            "compression_type",
            COMPRESSION_TYPE_AT,
            "zlib (0) with the compression type feature bit, which promises another",
        )),
        (true, other) => Err(fields.corrupt(
            "compression_type",
            COMPRESSION_TYPE_AT,
            format!("{other} is neither zlib (0) nor zstd (1)"),
        )),
    }
}

/// The L1 entries the disk needs and where the table starts, checked against l1_size, the
/// L1 size limit and the file.
fn l1_table(
    fields: &Fields<'_>,
    size: u64,
    cluster_bits: u32,
    extended_l2: bool,
    file_len: u64,
) -> Result<(u64, u64), FormatError> {
    let l1_size = u64::from(fields.u32_be("l1_size", 36)?);
    if l1_size > MAX_L1_BYTES / 8 {
        return Err(fields.corrupt(
            "l1_size",
            36,
            format!(
                "{l1_size} entries is above the limit of {} ({MAX_L1_BYTES} bytes)",
                MAX_L1_BYTES / 8
            ),
        ));
    }
    // One L1 entry maps an L2 table's clusters; cluster_bits <= 21 and l2 entries <= 2^18
    // keep the shift below 2^40.
    let l1_span = l2_entries(cluster_bits, extended_l2) << cluster_bits;
    let needed = size.div_ceil(l1_span);
    if needed > l1_size {
        return Err(fields.corrupt(
            "l1_size",
            36,
            format!("{l1_size} entries cannot map a disk of {size} bytes, which needs {needed}"),
        ));
    }

    let offset = fields.u64_be("l1_table_offset", 40)?;
    if needed > 0 {
        let cluster_size = 1u64 << cluster_bits;
        if !offset.is_multiple_of(cluster_size) {
            return Err(fields.corrupt(
                "l1_table_offset",
                40,
                format!("{offset} is not a multiple of the cluster size {cluster_size}"),
            ));
        }
        let end = offset.checked_add(needed * 8);
        if end.is_none_or(|end| end > file_len) {
            return Err(fields.corrupt(
                "l1_table_offset",
                40,
                format!(
                    "the table of {needed} entries at {offset} runs past the end of the \
                     {file_len}-byte file"
                ),
            ));
        }
    }
    Ok((needed, offset))
}

/// The backing file's name and format, if the image has one.
fn backing_file(
    fields: &Fields<'_>,
    cluster_size: u64,
    extensions: &Extensions,
    unsupported: &dyn Fn(String, &'static str) -> FormatError,
) -> Result<Option<BackingFile>, FormatError> {
    let offset = fields.u64_be("backing_file_offset", 8)?;
    if offset == 0 {
        return Ok(None);
    }
    let len = fields.u32_be("backing_file_size", 16)?;
    if len == 0 || len > MAX_BACKING_NAME_LEN {
        return Err(fields.corrupt(
            "backing_file_size",
            16,
            format!("{len} is not a name length from 1 to {MAX_BACKING_NAME_LEN} bytes"),
        ));
    }
    if offset
        .checked_add(u64::from(len))
        .is_none_or(|end| end > cluster_size)
    {
        return Err(fields.corrupt(
            "backing_file_offset",
            8,
            format!("a {len}-byte name at {offset} does not lie in the first cluster"),
        ));
    }
    // Both are below the cluster size, checked above.
    let at = usize::try_from(offset).unwrap_or(usize::MAX);
    let bytes = fields.slice("backing file name", at, len as usize)?;
    let name = String::from_utf8(bytes.to_vec())
        .map_err(|_| fields.corrupt("backing file name", at, "the name is not UTF-8 text"))?;

    let format = match &extensions.backing_format {
        None => None,
        Some(text) => Some(Format::from_str(text).map_err(|_| {
            unsupported(
                format!("a backing file in format {text:?}"),
                "convert the backing file to qcow2 or raw with qemu-img convert first",
            )
        })?),
    };
    Ok(Some(BackingFile { name, format }))
}

/// The external data file's name, when the data file bit is set.
fn data_file(
    v3: &V3Fields,
    extensions: &Extensions,
    unsupported: &dyn Fn(String, &'static str) -> FormatError,
) -> Result<Option<String>, FormatError> {
    if v3.incompatible & INCOMPATIBLE_DATA_FILE == 0 {
        return Ok(None);
    }
    match &extensions.data_file {
        Some(name) => Ok(Some(name.clone())),
        None => Err(unsupported(
            "an external data file whose name the image does not record".to_owned(),
            "convert it with qemu-img convert, naming the data file with -o data_file=...",
        )),
    }
}

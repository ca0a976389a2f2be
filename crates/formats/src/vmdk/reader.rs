//! A VMDK disk: its extents laid end to end, and the parent of a delta disk.

use std::sync::Arc;

use crate::raw::RawReader;
use crate::vmdk::descriptor::{Descriptor, ExtentLine, ExtentType, MAX_DESCRIPTOR_LEN};
use crate::vmdk::header::{FORMAT, MAGIC, MAX_DISK_SIZE, SECTOR, small};
use crate::vmdk::sparse::{GrainCache, HEAD_READ_LEN, SparseExtent, TableCache};
use crate::{BackingDisk, ByteSource, DiskReader, Extent, ExtentKind, FormatError, OpenContext};

/// What the bytes of one extent are.
#[derive(Debug)]
enum ExtentData {
    /// A hosted sparse or stream-optimized extent.
    Sparse(SparseExtent),
    /// The bytes lie in `source` from `offset`.
    Flat {
        source: Arc<dyn ByteSource>,
        offset: u64,
    },
    /// Zeros, stored nowhere.
    Zero,
}

/// One extent's place in the disk.
#[derive(Debug)]
struct DiskExtent {
    /// Byte offset in the disk.
    start: u64,
    /// Length in bytes; never zero.
    len: u64,
    data: ExtentData,
}

/// A VMDK disk: a monolithic sparse or stream-optimized file, or a descriptor naming
/// sparse, flat and zero extents, optionally the delta of a parent disk.
#[derive(Debug)]
pub struct VmdkReader {
    name: String,
    size: u64,
    /// The extents, in disk order, end to end from 0 to `size`.
    extents: Vec<DiskExtent>,
    /// The parent of a delta disk.
    parent: Option<BackingDisk>,
    tables: TableCache,
    grains: GrainCache,
}

impl VmdkReader {
    /// Opens the VMDK in `source`: a sparse extent file ("KDMV") or a text descriptor.
    /// Extent files and a delta disk's parent are opened through `context`.
    pub fn open(
        source: Arc<dyn ByteSource>,
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let head_len = usize::try_from(source.len().min(HEAD_READ_LEN)).unwrap_or(0);
        let head = source.read_vec(0, head_len)?;
        if head.starts_with(&MAGIC) {
            return Self::open_sparse_file(source, &head, context);
        }
        if head.starts_with(b"COWD") {
            return Err(FormatError::Unsupported {
                format: FORMAT,
                name: source.name().to_owned(),
                feature: "ESX sparse (COWD) extents".into(),
                advice: "convert it with qemu-img first",
            });
        }
        Self::open_descriptor_file(&*source, &head, context)
    }

    /// The disk's name: the file it was opened from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many extents make the disk.
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Whether the disk is a delta whose unallocated grains read from a parent disk.
    pub fn has_parent(&self) -> bool {
        self.parent.is_some()
    }

    /// A monolithic sparse or stream-optimized file: one extent, itself. Its embedded
    /// descriptor says whether it is a delta; its extent lines name the file itself and
    /// are not followed.
    fn open_sparse_file(
        source: Arc<dyn ByteSource>,
        head: &[u8],
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let name = source.name().to_owned();
        let (extent, embedded) = SparseExtent::open(source, head)?;
        let descriptor = match embedded {
            Some(embedded) => Descriptor::parse(&embedded.bytes, &name, embedded.at)?,
            None => Descriptor::default(),
        };
        check_create_type(&descriptor, &name, false)?;
        let parent = open_parent(&descriptor, &name, context)?;
        let size = extent.capacity_bytes();
        let extents = if size == 0 {
            Vec::new()
        } else {
            vec![DiskExtent {
                start: 0,
                len: size,
                data: ExtentData::Sparse(extent),
            }]
        };
        Ok(Self::new(name, size, extents, parent))
    }

    /// A text descriptor naming its extent files.
    fn open_descriptor_file(
        source: &dyn ByteSource,
        head: &[u8],
        context: &OpenContext<'_>,
    ) -> Result<Self, FormatError> {
        let name = source.name().to_owned();
        let len = source.len();
        if len > MAX_DESCRIPTOR_LEN {
            return Err(FormatError::Corrupt {
                format: FORMAT,
                name,
                field: "magicNumber",
                offset: 0,
                problem: format!(
                    "neither a sparse extent (\"KDMV\") nor a text descriptor of at most \
                     {MAX_DESCRIPTOR_LEN} bytes"
                ),
            });
        }
        let whole;
        let text = if head.len() as u64 == len {
            head
        } else {
            // Bounded by MAX_DESCRIPTOR_LEN just above.
            whole = source.read_vec(0, small(len))?;
            &whole
        };
        let descriptor = Descriptor::parse(text, &name, 0)?;
        check_create_type(&descriptor, &name, true)?;
        if descriptor.extents.is_empty() {
            return Err(FormatError::Corrupt {
                format: FORMAT,
                name,
                field: "extent line",
                offset: 0,
                problem: "the descriptor names no extents".into(),
            });
        }

        let mut extents = Vec::with_capacity(descriptor.extents.len());
        let mut start = 0u64;
        for line in &descriptor.extents {
            // The descriptor parser proved that sectors * SECTOR fits.
            let len = line.sectors * SECTOR;
            if len == 0 {
                continue;
            }
            let data = open_extent(line, &name, context)?;
            let end = start
                .checked_add(len)
                .filter(|&end| end <= MAX_DISK_SIZE)
                .ok_or_else(|| FormatError::Corrupt {
                    format: FORMAT,
                    name: name.clone(),
                    field: "extent line",
                    offset: line.at,
                    problem: format!(
                        "the extents add up to more than the limit of {MAX_DISK_SIZE} bytes"
                    ),
                })?;
            extents.push(DiskExtent { start, len, data });
            start = end;
        }
        let parent = open_parent(&descriptor, &name, context)?;
        Ok(Self::new(name, start, extents, parent))
    }

    fn new(name: String, size: u64, extents: Vec<DiskExtent>, parent: Option<BackingDisk>) -> Self {
        Self {
            name,
            size,
            extents,
            parent,
            tables: TableCache::default(),
            grains: GrainCache::default(),
        }
    }

    /// The index of the extent holding disk byte `offset`, which is below `size`.
    fn extent_index(&self, offset: u64) -> usize {
        self.extents
            .partition_point(|extent| extent.start + extent.len <= offset)
    }

    /// The extent at `offset`; with `layer`, regions a delta leaves to its parent are
    /// `Backing`, otherwise they are looked up in the parent.
    fn extent(&mut self, offset: u64, layer: bool) -> Result<Extent, FormatError> {
        if offset >= self.size {
            return Err(FormatError::OutOfRange {
                offset,
                length: 1,
                size: self.size,
            });
        }
        let index = self.extent_index(offset);
        let Self {
            extents,
            parent,
            tables,
            ..
        } = self;
        let Some(extent) = extents.get(index) else {
            return Err(FormatError::OutOfRange {
                offset,
                length: 1,
                size: self.size,
            });
        };
        let local = offset - extent.start;
        let remaining = extent.len - local;
        let (kind, length) = match &extent.data {
            ExtentData::Zero => (ExtentKind::Zero, remaining),
            ExtentData::Flat {
                source,
                offset: file_offset,
            } => flat_extent(&**source, file_offset + local, remaining),
            ExtentData::Sparse(sparse) => {
                sparse.run_at(tables, index, local, extent.len, parent.is_some())?
            }
        };
        if kind == ExtentKind::Backing
            && !layer
            && let Some(parent) = parent
        {
            return parent.extent_at(offset, length);
        }
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }
}

impl DiskReader for VmdkReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent(offset, false)
    }

    fn layer_extent_at(&mut self, offset: u64) -> Result<Extent, FormatError> {
        self.extent(offset, true)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let length = buf.len() as u64;
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            return Err(FormatError::OutOfRange {
                offset,
                length,
                size: self.size,
            });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = self.extent_index(at);
            let Self {
                extents,
                parent,
                tables,
                grains,
                ..
            } = self;
            let extent = &extents[index];
            let local = at - extent.start;
            let take = usize::try_from(extent.len - local)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let out = &mut buf[done..done + take];
            match &extent.data {
                ExtentData::Zero => out.fill(0),
                ExtentData::Flat {
                    source,
                    offset: file_offset,
                } => source.read_exact_at(file_offset + local, out)?,
                ExtentData::Sparse(sparse) => {
                    let start = extent.start;
                    let mut from_parent = |local: u64, part: &mut [u8]| match parent {
                        Some(parent) => parent.read_at(start + local, part),
                        None => {
                            part.fill(0);
                            Ok(())
                        }
                    };
                    sparse.read(tables, grains, index, local, out, &mut from_parent)?;
                }
            }
            done += take;
        }
        Ok(())
    }
}

/// Opens the file of one extent line.
fn open_extent(
    line: &ExtentLine,
    name: &str,
    context: &OpenContext<'_>,
) -> Result<ExtentData, FormatError> {
    let len = line.sectors * SECTOR;
    let corrupt = |problem: String| FormatError::Corrupt {
        format: FORMAT,
        name: name.to_owned(),
        field: "extent line",
        offset: line.at,
        problem,
    };
    if line.access == "NOACCESS" {
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: "an extent marked NOACCESS".into(),
            advice: "make the extent readable in the descriptor first",
        });
    }
    let file = line.file.as_deref().unwrap_or_default();
    match &line.kind {
        ExtentType::Zero => Ok(ExtentData::Zero),
        ExtentType::Flat => {
            let source = context.open_file(name, file)?;
            let offset = line.file_offset_sectors * SECTOR;
            let end = offset.saturating_add(len);
            if end > source.len() {
                return Err(corrupt(format!(
                    "{file} holds {} bytes, fewer than the {end} this flat extent needs",
                    source.len()
                )));
            }
            Ok(ExtentData::Flat { source, offset })
        }
        ExtentType::Sparse => {
            let source = context.open_file(name, file)?;
            let head_len = usize::try_from(source.len().min(HEAD_READ_LEN)).unwrap_or(0);
            let head = source.read_vec(0, head_len)?;
            // The extent file's own descriptor area describes nothing the disk needs.
            let (sparse, _) = SparseExtent::open(source, &head)?;
            if sparse.capacity_bytes() < len {
                return Err(corrupt(format!(
                    "{file} holds {} bytes of disk, fewer than the {len} of the line",
                    sparse.capacity_bytes()
                )));
            }
            Ok(ExtentData::Sparse(sparse))
        }
        ExtentType::Other(kind) => Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!("{kind} extents"),
            advice: "convert it with qemu-img or VMware's tools first",
        }),
    }
}

/// The kind and length of the flat extent bytes at `at` of `source`, at most `max` bytes:
/// holes of a local sparse file are zero; everything else is data.
fn flat_extent(source: &dyn ByteSource, at: u64, max: u64) -> (ExtentKind, u64) {
    let found = source.local_path().and_then(|path| {
        let mut raw = RawReader::open(path).ok()?;
        if at >= raw.size() {
            return None;
        }
        let extent = raw.extent_at(at).ok()?;
        let len = extent.end().saturating_sub(at).min(max);
        (len > 0).then_some((extent.kind, len))
    });
    found.unwrap_or((ExtentKind::Data, max))
}

/// Refuses disk types this reader does not read. A text descriptor must name its type;
/// an embedded one may leave it out (the extent files of a split disk carry an empty one).
fn check_create_type(
    descriptor: &Descriptor,
    name: &str,
    required: bool,
) -> Result<(), FormatError> {
    let Some(create_type) = &descriptor.create_type else {
        if required {
            return Err(FormatError::Corrupt {
                format: FORMAT,
                name: name.to_owned(),
                field: "createType",
                offset: 0,
                problem: "the descriptor has no createType".into(),
            });
        }
        return Ok(());
    };
    match create_type.to_ascii_lowercase().as_str() {
        "monolithicsparse"
        | "monolithicflat"
        | "twogbmaxextentsparse"
        | "twogbmaxextentflat"
        | "streamoptimized"
        | "vmfs"
        | "vmfsthin"
        | "vmfspreallocated"
        | "vmfseagerzeroedthick"
        | "vmfssparse"
        | "sesparse"
        | "custom" => Ok(()),
        "fulldevice"
        | "partitioneddevice"
        | "vmfsraw"
        | "vmfsrawdevicemap"
        | "vmfspassthroughrawdevicemap" => Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!("a disk on a raw device (createType {create_type:?})"),
            advice: "read the device itself as a raw image",
        }),
        _ => Err(FormatError::Unsupported {
            format: FORMAT,
            name: name.to_owned(),
            feature: format!("createType {create_type:?}"),
            advice: "convert it with qemu-img first",
        }),
    }
}

/// Opens the parent of a delta disk through `context`, or returns `None` for a disk that
/// has no parent.
fn open_parent(
    descriptor: &Descriptor,
    name: &str,
    context: &OpenContext<'_>,
) -> Result<Option<BackingDisk>, FormatError> {
    if !descriptor.is_delta() {
        return Ok(None);
    }
    let Some(hint) = &descriptor.parent_hint else {
        return Err(FormatError::Corrupt {
            format: FORMAT,
            name: name.to_owned(),
            field: "parentFileNameHint",
            offset: descriptor.parent_at,
            problem: format!(
                "the disk is a delta of the disk with content id {:08x} but names no parent \
                 file",
                descriptor.parent_cid.unwrap_or_default()
            ),
        });
    };
    // The parent's format is whatever its file says: VMware parents are VMDKs, but qemu
    // lets a VMDK sit on other formats.
    let parent = context.open_backing(name, hint, None)?;
    Ok(Some(BackingDisk::new(Some(parent))))
}

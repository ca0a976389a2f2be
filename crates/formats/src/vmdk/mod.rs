//! VMDK images (reader being written).

use std::sync::Arc;

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// Opens a VMDK image.
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let _ = context;
    Err(FormatError::Unsupported {
        format: "VMDK",
        name: source.name().to_owned(),
        feature: "reading VMDK".into(),
        advice: "convert it to raw with qemu-img first",
    })
}

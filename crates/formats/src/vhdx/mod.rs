//! VHDX images (reader being written).

use std::sync::Arc;

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// Opens a VHDX image.
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let _ = context;
    Err(FormatError::Unsupported {
        format: "VHDX",
        name: source.name().to_owned(),
        feature: "reading VHDX".into(),
        advice: "convert it to raw with qemu-img first",
    })
}

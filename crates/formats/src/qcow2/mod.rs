//! qcow2 images (reader being written).

use std::sync::Arc;

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// Opens a qcow2 image.
pub fn open(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let _ = context;
    Err(FormatError::Unsupported {
        format: "qcow2",
        name: source.name().to_owned(),
        feature: "reading qcow2".into(),
        advice: "convert it to raw with qemu-img first",
    })
}

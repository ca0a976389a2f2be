//! OVA archives (reader being written).

use std::sync::Arc;

use crate::{ByteSource, DiskReader, FormatError, OpenContext};

/// Opens an OVA archive that holds a single disk.
pub fn open_single(
    source: Arc<dyn ByteSource>,
    context: &OpenContext<'_>,
) -> Result<Box<dyn DiskReader>, FormatError> {
    let _ = context;
    Err(FormatError::Unsupported {
        format: "OVA",
        name: source.name().to_owned(),
        feature: "reading OVA".into(),
        advice: "extract its disks with tar first",
    })
}

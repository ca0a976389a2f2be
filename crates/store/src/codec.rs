//! Block compression: zstd, kept only when it pays.

use std::cell::RefCell;

/// A block is stored compressed only if compression saves at least 1/32 of it (3%); below
/// that, decompressing on every read costs more than the bytes saved.
const MIN_SAVING_DIVISOR: usize = 32;

thread_local! {
    // One zstd context per worker thread: making a context per block costs an allocation
    // of several hundred KiB and shows up in profiles.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `data` at `level`; returns the bytes to store and whether they are compressed.
pub(crate) fn compress(data: &[u8], level: i32) -> (Vec<u8>, bool) {
    let limit = data.len() - data.len() / MIN_SAVING_DIVISOR;
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let (_, compressor) = slot.as_mut()?;
        // A destination smaller than the limit makes zstd stop early on data that will not
        // shrink enough, instead of compressing the whole block for nothing.
        let mut out = Vec::with_capacity(limit);
        compressor
            .compress_to_buffer(data, &mut out)
            .ok()
            .map(|_| out)
    });
    match compressed {
        Some(out) if out.len() < limit => (out, true),
        _ => (data.to_vec(), false),
    }
}

/// Decompresses a block that must come out at exactly `expected_len` bytes or fewer; a
/// payload claiming more is refused without allocating for it.
pub(crate) fn decompress(payload: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let decompressor = slot.as_mut().ok_or("no zstd context")?;
        decompressor
            .decompress(payload, max_len)
            .map_err(|e| format!("zstd: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_blocks_are_compressed_and_restored() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();

        let (stored, compressed) = compress(&data, 1);

        assert!(compressed && stored.len() < data.len() / 4);
        assert_eq!(decompress(&stored, data.len()).ok(), Some(data));
    }

    #[test]
    fn incompressible_blocks_are_stored_as_they_are() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();

        let (stored, compressed) = compress(&data, 1);

        assert!(!compressed);
        assert_eq!(stored, data);
    }

    #[test]
    fn a_payload_that_inflates_past_the_limit_is_refused() {
        let data = vec![0u8; 1 << 20];
        let (stored, _) = compress(&data, 1);

        assert!(decompress(&stored, 4096).is_err());
    }
}

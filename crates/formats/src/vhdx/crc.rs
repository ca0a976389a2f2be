//! CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.
//!
//! [MS-VHDX] §2.2.2: "A CRC-32C hash over the entire 4-KB structure, with the Checksum field
//! taking the value of zero during the computation". Only metadata is checksummed, never
//! payload, so a byte-at-a-time table is fast enough: a few hundred KiB per open.

/// The Castagnoli polynomial, bit-reversed for least-significant-bit-first processing.
const POLYNOMIAL: u32 = 0x82F6_3B78;

/// The remainder of every byte value, computed at compile time.
const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut byte: u32 = 0;
    while byte < 256 {
        let mut crc = byte;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLYNOMIAL
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[byte as usize] = crc;
        byte += 1;
    }
    table
}

/// Feeds `bytes` into a running (pre-inverted) CRC state.
fn update(mut state: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        let index = usize::from(state.to_le_bytes()[0] ^ byte);
        state = (state >> 8) ^ TABLE[index];
    }
    state
}

/// The CRC-32C of `bytes`, as VHDX stores it (little-endian in the file).
pub fn crc32c(bytes: &[u8]) -> u32 {
    !update(!0, bytes)
}

/// The CRC-32C of `bytes` with the four bytes of the checksum field at `field_at` taken as
/// zero, which is how every VHDX structure checksums itself. `field_at + 4` must lie within
/// `bytes`; callers pass structures they have already sized.
pub(crate) fn crc32c_without_field(bytes: &[u8], field_at: usize) -> u32 {
    let split = field_at.min(bytes.len());
    let (head, rest) = bytes.split_at(split);
    let tail = rest.get(4..).unwrap_or(&[]);
    let state = update(!0, head);
    let state = update(state, &[0u8; 4][..rest.len().min(4)]);
    !update(state, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // The check value of CRC-32C (iSCSI, RFC 3720 appendix B.4) over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn the_checksum_field_counts_as_zero() {
        let mut bytes = b"head\x11\x22\x33\x44 and the rest of a header".to_vec();
        let with_field = crc32c_without_field(&bytes, 4);
        bytes[4..8].fill(0);
        assert_eq!(with_field, crc32c(&bytes));
    }
}

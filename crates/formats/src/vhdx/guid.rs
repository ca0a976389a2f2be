//! GUIDs as VHDX stores them.

use std::fmt;

/// A GUID in its on-disk form: the first three fields little-endian, the last eight bytes in
/// order ([MS-DTYP] §2.3.4.2), which is how every GUID in a VHDX file is written.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Guid(pub(crate) [u8; 16]);

impl Guid {
    /// The all-zero GUID: "no log" in a header's LogGuid.
    pub(crate) const ZERO: Guid = Guid([0; 16]);

    /// The GUID written as `data1-data2-data3-data4` in the specification.
    pub(crate) const fn new(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        let a = data1.to_le_bytes();
        let b = data2.to_le_bytes();
        let c = data3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], data4[0], data4[1], data4[2], data4[3],
            data4[4], data4[5], data4[6], data4[7],
        ])
    }

    /// True for the all-zero GUID.
    pub(crate) fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let data1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let data2 = u16::from_le_bytes([b[4], b[5]]);
        let data3 = u16::from_le_bytes([b[6], b[7]]);
        write!(
            f,
            "{data1:08X}-{data2:04X}-{data3:04X}-{:02X}{:02X}-",
            b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|byte| write!(f, "{byte:02X}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_as_the_specification_writes_them() {
        // The BAT region's GUID, [MS-VHDX] §2.2.3.2, and its bytes as qemu-img writes them.
        let bat = Guid::new(
            0x2DC2_7766,
            0xF623,
            0x4200,
            [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
        );
        assert_eq!(bat.to_string(), "2DC27766-F623-4200-9D64-115E9BFD4A08");
        assert_eq!(
            bat.0,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
        assert!(Guid::ZERO.is_zero() && !bat.is_zero());
    }
}

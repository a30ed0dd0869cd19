//! PCI configuration mechanism #1: address port 0xcf8, data port 0xcfc (PCI Local Bus
//! Specification 3.0, section 3.2.2.3.2). Reaches the first 256 bytes of each function.

use super::io::{inl, outl};
use crate::pci::{Bdf, ConfigSpace};

/// Configuration access through ports 0xcf8/0xcfc.
#[derive(Debug)]
pub struct PortConfig {
    _private: (),
}

impl PortConfig {
    /// The port-based access.
    ///
    /// # Safety
    /// Only one value may exist (the address/data port pair is not atomic), and configuration
    /// writes through it must not make devices DMA into memory Rust code uses.
    pub const unsafe fn new() -> Self {
        PortConfig { _private: () }
    }

    fn address(bdf: Bdf, offset: u16) -> u32 {
        0x8000_0000
            | u32::from(bdf.bus) << 16
            | u32::from(bdf.dev) << 11
            | u32::from(bdf.func) << 8
            | u32::from(offset & 0xfc)
    }
}

impl ConfigSpace for PortConfig {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        if offset >= 256 {
            return u32::MAX;
        }
        // SAFETY: `new`'s contract: exclusive use of the port pair.
        unsafe {
            outl(0xcf8, Self::address(bdf, offset));
            inl(0xcfc)
        }
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if offset >= 256 {
            return;
        }
        // SAFETY: as in `read32`.
        unsafe {
            outl(0xcf8, Self::address(bdf, offset));
            outl(0xcfc, value);
        }
    }
}

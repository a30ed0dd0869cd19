//! The device table and its 256-bit entries (AMD IOMMU spec 2.2.2 "Device Table Entry
//! Format"; the table itself: 3.4 Device Table Base Address Register, MMIO 0000h).
//!
//! The device table is indexed by DeviceID (the PCI requester id `bus << 8 | devfn`); each
//! entry (DTE) is 32 bytes, four 64-bit words. The fields this driver uses:
//!
//! - word 0: V (bit 0), TV (bit 1), Mode (bits 11:9, the number of page-table levels),
//!   Host Page Table Root Pointer (bits 51:12), IR (bit 61), IW (bit 62);
//! - word 1: DomainID (bits 15:0); every other field zero (I, SE, SA, IoCtl = 00b "port I/O
//!   aborted", Cache, SD, EX = 0 "no exclusion range", SysMgt = 00b "system management
//!   DMA aborted");
//! - word 2: interrupt remapping (IV = 0; this driver does not remap interrupts);
//! - word 3: zero.
//!
//! What the V / TV / Mode / IR / IW combinations do to a device's DMA (2.2.2, the DTE field
//! table):
//!
//! - V = 0: the entry is not valid and the IOMMU *passes the DMA through untranslated*. An
//!   all-zero table therefore lets every device reach all memory; it is never installed.
//! - V = 1, TV = 1, Mode = 0: translation disabled; addresses pass unchanged but *access is
//!   controlled by IR and IW*. With IR = IW = 0 every access is refused, target-aborted and
//!   logged as IO_PAGE_FAULT (unless SA/SE suppress it, which this driver never sets). This
//!   is the **blocked** entry ([`Dte::blocked`]): every device not attached has it, from
//!   bring-up on.
//! - V = 1, TV = 1, Mode = 1..6: translated through a Mode-level table rooted at the pointer;
//!   IR and IW are ANDed with the table's permissions, so an attached entry sets both
//!   ([`Dte::translated`]). Mode 7 is reserved (ILLEGAL_DEV_TABLE_ENTRY).
//!
//! Writes are ordered so that the IOMMU never sees a half-written entry: words 3, 2 and 1
//! are written while word 0 still blocks (or says what it said before), then word 0, which
//! carries V, TV, Mode, the root and the permissions, is published in one 64-bit store
//! after [`PhysMem::order_writes`] ([`PhysMem::publish_u64`]): the other words and the
//! domain's page tables are visible to the IOMMU before the entry that reaches them. An entry
//! that translates is never changed in place: it is blocked first (one store of word 0) and
//! that change invalidated and completed, so no cached copy of the old entry outlives the new
//! DomainID. A blocking store makes nothing reachable and needs no barrier before it; the
//! command buffer's tail write orders it before the INVALIDATE_DEVTAB_ENTRY that follows
//! (the register half of the [`PhysMem`] contract), as the Device Table Base write orders
//! the blocked entries of a new table.

use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem};

/// Size of one device table entry in bytes.
pub const DTE_SIZE: u64 = 32;
/// Entries per 4 KiB page of the device table.
pub const DTES_PER_PAGE: u64 = PAGE_SIZE / DTE_SIZE;
/// Entries of the largest device table: one per 16-bit DeviceID.
pub const MAX_DTES: u32 = 0x1_0000;
/// Pages of the largest device table (2 MiB).
pub const MAX_PAGES: u32 = (MAX_DTES as u64 / DTES_PER_PAGE) as u32;

/// DTE word 0 fields (2.2.2).
pub mod dte {
    /// V (bit 0): the entry is valid. 0 = DMA passes untranslated.
    pub const V: u64 = 1 << 0;
    /// TV (bit 1): the translation fields (Mode, root pointer) are valid.
    pub const TV: u64 = 1 << 1;
    /// Mode (bits 11:9): 0 translation disabled, 1..6 levels of the host page table.
    pub const MODE_SHIFT: u32 = 9;
    /// The Mode field.
    pub const MODE_MASK: u64 = 0b111 << MODE_SHIFT;
    /// Host Page Table Root Pointer (bits 51:12).
    pub const ROOT_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// IR (bit 61): the device may read.
    pub const IR: u64 = 1 << 61;
    /// IW (bit 62): the device may write.
    pub const IW: u64 = 1 << 62;
    /// Word 1: DomainID (bits 15:0).
    pub const DOMAIN_MASK: u64 = 0xffff;
}

/// What a DTE says about its device's DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DteState {
    /// V = 0: DMA passes untranslated. Never written by this driver.
    PassThrough,
    /// V = 1, TV = 1, Mode = 0, IR = IW = 0: every access refused and logged.
    Blocked,
    /// V = 1, TV = 1, Mode 1..6: translated through the table at `root`, tagged `domain`.
    Translated {
        /// Root of the host page table.
        root: PhysAddr,
        /// Number of levels (Mode).
        levels: u8,
        /// DomainID.
        domain: u16,
    },
    /// Anything else (TV = 0, Mode 0 with permissions, Mode 7). Never written by this driver.
    Other,
}

/// One 256-bit device table entry as four 64-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Dte(pub [u64; 4]);

impl Dte {
    /// The entry of a blocked device: V = 1, TV = 1, Mode = 0 (translation disabled),
    /// IR = IW = 0, DomainID 0. Its DMA is target-aborted and logged as IO_PAGE_FAULT.
    pub const fn blocked() -> Self {
        Dte([dte::V | dte::TV, 0, 0, 0])
    }

    /// The entry of a device translated through the `levels`-level table at `root`, tagged
    /// with DomainID `domain`: V, TV, Mode = `levels`, IR, IW; every other field zero (no
    /// IOTLB, events not suppressed, port I/O and system-management DMA aborted, no
    /// exclusion range, no interrupt remapping, no guest translation).
    pub const fn translated(root: PhysAddr, levels: u8, domain: u16) -> Self {
        Dte([
            dte::V
                | dte::TV
                | (((levels & 7) as u64) << dte::MODE_SHIFT)
                | (root & dte::ROOT_MASK)
                | dte::IR
                | dte::IW,
            domain as u64,
            0,
            0,
        ])
    }

    /// What the entry does.
    pub const fn state(self) -> DteState {
        let w = self.0[0];
        if w & dte::V == 0 {
            return DteState::PassThrough;
        }
        if w & dte::TV == 0 {
            return DteState::Other;
        }
        let mode = ((w & dte::MODE_MASK) >> dte::MODE_SHIFT) as u8;
        match mode {
            0 if w & (dte::IR | dte::IW) == 0 => DteState::Blocked,
            1..=6 => DteState::Translated {
                root: w & dte::ROOT_MASK,
                levels: mode,
                domain: (self.0[1] & dte::DOMAIN_MASK) as u16,
            },
            _ => DteState::Other,
        }
    }
}

/// The device table of one unit: `entries` DTEs in physically contiguous 4 KiB pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceTable {
    base: PhysAddr,
    pages: u32,
}

impl DeviceTable {
    /// The table in the `pages` contiguous all-zero frames at `base` (1 to [`MAX_PAGES`]).
    pub const fn new(base: PhysAddr, pages: u32) -> Self {
        DeviceTable { base, pages }
    }

    /// Pages needed for DeviceIDs `0..=max_device_id`.
    pub const fn pages_for(max_device_id: u16) -> u32 {
        (max_device_id as u32 / DTES_PER_PAGE as u32) + 1
    }

    /// Physical address of the first page.
    pub const fn base(self) -> PhysAddr {
        self.base
    }

    /// Number of pages.
    pub const fn pages(self) -> u32 {
        self.pages
    }

    /// Number of entries (DeviceIDs `0..entries`).
    pub const fn entries(self) -> u32 {
        self.pages * DTES_PER_PAGE as u32
    }

    /// The Device Table Base Address Register value (3.4, MMIO 0000h).
    pub const fn register(self) -> u64 {
        super::regs::devtab_base(self.base, self.pages)
    }

    /// Physical address of the entry of `device`, if the table holds it.
    pub fn entry_pa(self, device: u32) -> Option<PhysAddr> {
        (device < self.entries()).then(|| self.base + u64::from(device) * DTE_SIZE)
    }

    /// Reads the entry at `pa`.
    pub fn read<M: PhysMem + ?Sized>(mem: &M, pa: PhysAddr) -> Dte {
        Dte([
            mem.read_u64(pa),
            mem.read_u64(pa + 8),
            mem.read_u64(pa + 16),
            mem.read_u64(pa + 24),
        ])
    }

    /// Fills every entry with [`Dte::blocked`] (word 0 only: the frames are zero). Called
    /// before the table is handed to the IOMMU (the Device Table Base register write orders
    /// these stores before it).
    pub fn block_all<M: PhysMem + ?Sized>(self, mem: &mut M) {
        let w0 = Dte::blocked().0[0];
        for i in 0..u64::from(self.entries()) {
            mem.write_u64(self.base + i * DTE_SIZE, w0);
        }
    }

    /// Installs `new` at `pa`, whose current word 0 does not translate (blocked, or never
    /// written): words 3, 2 and 1 first, then word 0 published after a write barrier, so
    /// the IOMMU sees either the old entry or the whole new one.
    pub fn install<M: PhysMem + ?Sized>(mem: &mut M, pa: PhysAddr, new: Dte) {
        mem.write_u64(pa + 24, new.0[3]);
        mem.write_u64(pa + 16, new.0[2]);
        mem.write_u64(pa + 8, new.0[1]);
        mem.publish_u64(pa, new.0[0]);
    }

    /// Makes the entry at `pa` blocking in one 64-bit store of word 0 (V = 1, TV = 1,
    /// Mode = 0, IR = IW = 0); the other words keep what they held (DomainID only names the
    /// events the blocked device raises). A plain store: it makes nothing reachable.
    pub fn block<M: PhysMem + ?Sized>(mem: &mut M, pa: PhysAddr) {
        mem.write_u64(pa, Dte::blocked().0[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encodings() {
        let b = Dte::blocked();
        assert_eq!(b.0, [0b11, 0, 0, 0]);
        assert_eq!(b.state(), DteState::Blocked);
        let t = Dte::translated(0x1234_5000, 4, 7);
        assert_eq!(
            t.0[0],
            0b11 | (4 << 9) | 0x1234_5000 | (1 << 61) | (1 << 62)
        );
        assert_eq!(t.0[1], 7);
        assert_eq!(
            t.state(),
            DteState::Translated {
                root: 0x1234_5000,
                levels: 4,
                domain: 7
            }
        );
        assert_eq!(Dte::default().state(), DteState::PassThrough);
        // V without TV, Mode 0 with permissions, Mode 7: not written by this driver.
        assert_eq!(Dte([1, 0, 0, 0]).state(), DteState::Other);
        assert_eq!(Dte([0b11 | dte::IR, 0, 0, 0]).state(), DteState::Other);
        assert_eq!(Dte([0b11 | (7 << 9), 0, 0, 0]).state(), DteState::Other);
    }

    #[test]
    fn table_geometry() {
        assert_eq!(DeviceTable::pages_for(0), 1);
        assert_eq!(DeviceTable::pages_for(127), 1);
        assert_eq!(DeviceTable::pages_for(128), 2);
        assert_eq!(DeviceTable::pages_for(0xffff), MAX_PAGES);
        let t = DeviceTable::new(0x10_0000, 2);
        assert_eq!(t.entries(), 256);
        assert_eq!(t.entry_pa(255), Some(0x10_0000 + 255 * 32));
        assert_eq!(t.entry_pa(256), None);
        assert_eq!(t.register(), 0x10_0001);
    }
}

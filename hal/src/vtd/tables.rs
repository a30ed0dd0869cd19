//! Root and context tables (legacy mode, VT-d spec 9.1 Root Entry and 9.3 Context Entry).
//!
//! The root table is one 4 KiB frame of 256 root entries, one per PCI bus; each present root
//! entry points at a context table of 256 context entries, one per device/function. Entries are
//! 128 bits, written here as two 64-bit stores ordered so that the walker never sees a present
//! entry with stale fields: the upper half first, then the lower half carrying P.
//!
//! Ordering (the contract of [`PhysMem`]): every store that makes something reachable by the
//! unit is a [`PhysMem::publish_u64`], so what it points at (a zeroed context table, a domain's
//! page tables, the entry's other half) and the cache maintenance of a non-coherent unit are
//! visible first. Making an entry non-present is ordered the other way: P is cleared, then a
//! barrier, then the other half changes.

use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem};

/// Size of a root or context entry in bytes.
pub const ENTRY_SIZE: u64 = 16;

/// Root entry P (bit 0) and context entry P (bit 0): present (VT-d spec 9.1, 9.3).
pub const PRESENT: u64 = 1;
/// Root entry CTP (bits 63:12): context table pointer (VT-d spec 9.1).
pub const ADDR_MASK: u64 = !0xfff;

/// Context entry TT (bits 3:2) = 00: untranslated requests are translated through the
/// second-level tables; translated requests and translation requests are blocked
/// (VT-d spec 9.3). Pass-through (TT = 10) is never written by this driver.
pub const TT_UNTRANSLATED_ONLY: u64 = 0 << 2;

/// A PCI requester id split into bus and device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rid {
    /// Bus number (root table index).
    pub bus: u8,
    /// Device and function (context table index).
    pub devfn: u8,
}

impl Rid {
    /// Splits a device id `bus << 8 | devfn`; `None` when it does not fit 16 bits.
    pub fn from_device(device: u32) -> Option<Rid> {
        let rid = u16::try_from(device).ok()?;
        Some(Rid {
            bus: (rid >> 8) as u8,
            devfn: rid as u8,
        })
    }
    /// The 16-bit source id.
    pub fn sid(self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn as u16
    }
}

/// The AW field encoding for an address width (VT-d spec 9.3: 001 = 39-bit 3-level,
/// 010 = 48-bit 4-level, 011 = 57-bit 5-level). Equals the SAGAW bit index.
pub fn aw_code(addr_width: u32) -> Option<u8> {
    match addr_width {
        39 => Some(1),
        48 => Some(2),
        57 => Some(3),
        _ => None,
    }
}

/// The number of second-level paging levels for an AW code.
pub fn levels_for_aw(aw: u8) -> Option<u8> {
    match aw {
        1 => Some(3),
        2 => Some(4),
        3 => Some(5),
        _ => None,
    }
}

/// A 128-bit context entry as two 64-bit halves (VT-d spec 9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContextEntry {
    /// Bits 63:0: P (0), FPD (1), TT (3:2), SLPTPTR (63:12).
    pub lo: u64,
    /// Bits 127:64: AW (66:64), DID (87:72).
    pub hi: u64,
}

impl ContextEntry {
    /// A present entry translating the device's untranslated requests through the
    /// second-level table at `root` with address width code `aw`, tagged with domain id `did`.
    pub fn translated(root: PhysAddr, aw: u8, did: u16) -> Self {
        ContextEntry {
            lo: (root & ADDR_MASK) | TT_UNTRANSLATED_ONLY | PRESENT,
            hi: (aw as u64 & 7) | ((did as u64) << 8),
        }
    }
    /// Whether P is set.
    pub fn present(self) -> bool {
        self.lo & PRESENT != 0
    }
    /// The domain id (DID, bits 87:72).
    pub fn did(self) -> u16 {
        (self.hi >> 8) as u16
    }
    /// The address width code (AW, bits 66:64).
    pub fn aw(self) -> u8 {
        (self.hi & 7) as u8
    }
    /// The second-level page-table pointer (SLPTPTR, bits 63:12).
    pub fn slptptr(self) -> PhysAddr {
        self.lo & ADDR_MASK
    }
    /// The translation type (TT, bits 3:2).
    pub fn tt(self) -> u8 {
        ((self.lo >> 2) & 3) as u8
    }
}

/// The root table of one unit: a 4 KiB frame of 256 root entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootTable {
    base: PhysAddr,
}

impl RootTable {
    /// Wraps an all-zero, 4 KiB-aligned frame.
    pub fn new(base: PhysAddr) -> Self {
        RootTable { base }
    }
    /// Physical address of the table.
    pub fn base(self) -> PhysAddr {
        self.base
    }
    fn root_entry_pa(self, bus: u8) -> PhysAddr {
        self.base + bus as u64 * ENTRY_SIZE
    }
    /// The context table of `bus`, if its root entry is present.
    pub fn context_table<M: PhysMem + ?Sized>(self, mem: &M, bus: u8) -> Option<PhysAddr> {
        let lo = mem.read_u64(self.root_entry_pa(bus));
        (lo & PRESENT != 0).then_some(lo & ADDR_MASK)
    }
    /// Installs the (all-zero) context table `table` for `bus`: upper half (reserved, zero)
    /// first, then the lower half with P, published: the table's zeroing (and, on a
    /// non-coherent unit, its cache clean, which the caller did) is visible before the unit can
    /// follow the pointer.
    pub fn set_context_table<M: PhysMem + ?Sized>(
        self,
        mem: &mut M,
        bus: u8,
        table: PhysAddr,
        coherent: bool,
    ) {
        let pa = self.root_entry_pa(bus);
        mem.write_u64(pa + 8, 0);
        if !coherent {
            mem.sync_for_device(pa + 8, 8);
        }
        mem.publish_u64(pa, (table & ADDR_MASK) | PRESENT);
        if !coherent {
            mem.sync_for_device(pa, ENTRY_SIZE);
        }
    }
}

/// Physical address of the context entry for `devfn` in the context table at `table`.
pub fn context_entry_pa(table: PhysAddr, devfn: u8) -> PhysAddr {
    table + devfn as u64 * ENTRY_SIZE
}

/// Reads a context entry.
pub fn read_context<M: PhysMem + ?Sized>(mem: &M, pa: PhysAddr) -> ContextEntry {
    ContextEntry {
        lo: mem.read_u64(pa),
        hi: mem.read_u64(pa + 8),
    }
}

/// Makes the non-present context entry at `pa` present with `entry`: the upper half (DID, AW)
/// first, then the lower half carrying P, published (a barrier first), so the walker never
/// sees P with stale fields, nor before the domain's page tables are visible.
pub fn install_context<M: PhysMem + ?Sized>(
    mem: &mut M,
    pa: PhysAddr,
    entry: ContextEntry,
    coherent: bool,
) {
    mem.write_u64(pa + 8, entry.hi);
    if !coherent {
        mem.sync_for_device(pa + 8, 8);
    }
    mem.publish_u64(pa, entry.lo);
    if !coherent {
        mem.sync_for_device(pa, 8);
    }
}

/// Clears the context entry at `pa`: the lower half (P) first, then a barrier, so the entry is
/// non-present as the unit sees it before any other field changes.
pub fn clear_context<M: PhysMem + ?Sized>(mem: &mut M, pa: PhysAddr, coherent: bool) {
    mem.write_u64(pa, 0);
    if !coherent {
        mem.sync_for_device(pa, 8);
    }
    mem.publish_u64(pa + 8, 0);
    if !coherent {
        mem.sync_for_device(pa + 8, 8);
    }
}

const _: () = assert!(256 * ENTRY_SIZE == PAGE_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_entry_fields() {
        let e = ContextEntry::translated(0x1234_5000, 2, 0xbeef);
        assert!(e.present());
        assert_eq!(e.lo, 0x1234_5001);
        assert_eq!(e.hi, 0x00be_ef02);
        assert_eq!(e.did(), 0xbeef);
        assert_eq!(e.aw(), 2);
        assert_eq!(e.slptptr(), 0x1234_5000);
        assert_eq!(e.tt(), 0);
    }

    #[test]
    fn rid_split() {
        assert_eq!(Rid::from_device(0x0308), Some(Rid { bus: 3, devfn: 8 }));
        assert_eq!(Rid::from_device(0x1_0000), None);
        assert_eq!(aw_code(48), Some(2));
        assert_eq!(aw_code(40), None);
        assert_eq!(levels_for_aw(3), Some(5));
    }
}

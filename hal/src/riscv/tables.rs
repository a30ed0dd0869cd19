//! The device directory table (DDT) and device contexts (RISC-V IOMMU spec 1.0, chapter 2
//! "Data Structures": 2.1 "Device-Directory-Table (DDT)", "Non-leaf DDT entry", "Leaf DDT
//! entry", "Device-context fields", "Device-context configuration checks"; "Process to locate
//! the Device-context").
//!
//! The DDT is a 1-, 2- or 3-level radix tree indexed by the device directory indexes (DDI) of
//! the `device_id`. With 64-byte extended-format device contexts (`capabilities.MSI_FLAT` = 1)
//! `DDI[0]` = `device_id[5:0]`, `DDI[1]` = `[14:6]`, `DDI[2]` = `[23:15]`; with 32-byte
//! base-format contexts `DDI[0]` = `[6:0]`, `DDI[1]` = `[15:7]`, `DDI[2]` = `[23:16]`. Every
//! table is one 4 KiB page. Level numbering here: level 0 is the leaf table of device contexts,
//! level `LEVELS - 1` the root that `ddtp` points at.
//!
//! A non-leaf entry is `V` (bit 0) and the next table's `PPN` (bits 53:10). Tables below the
//! root are allocated on the first attach of a device they cover (or at server start, see
//! `super::RiscvUnit::prepare`), filled with zeros (every entry invalid) and made reachable
//! with one [`PhysMem::publish_u64`], so the unit never reaches a table before its zeros.
//! Invalid entries are never cached (chapter 6 "Caching invalid entries"), so linking a table
//! needs no invalidation.
//!
//! A device whose context has `tc.V` = 0 is blocked: its requests fault with "DDT entry not
//! valid" (cause 258) and are reported with the IOVA (QEMU 10.0 reports them without it).
//! Nothing passes through: the unit runs in a table mode, never `Bare`.
//!
//! Device contexts are written so that the unit never sees a half-written one: the unit may
//! read a context's doublewords in any order, so a context is only ever changed while
//! `tc.V` = 0: every doubleword but `tc` is written, then `tc` with `V` = 1 is published in
//! one 64-bit store. A live context is first made invalid (one store of `tc`) and its cached
//! copy invalidated before it is rewritten (see `super::RiscvUnit::attach`).

use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem};

/// Non-leaf DDT entry: `V` (bit 0).
pub const DDTE_V: u64 = 1 << 0;
/// Non-leaf DDT entry: `PPN` (bits 53:10).
pub const DDTE_PPN_MASK: u64 = ((1u64 << 44) - 1) << 10;

/// Device-context fields ("Device-context fields").
pub mod dc {
    /// `tc` bit 0 `V`: the context is valid.
    pub const TC_V: u64 = 1 << 0;
    /// `tc` bit 1 `EN_ATS`.
    pub const TC_EN_ATS: u64 = 1 << 1;
    /// `tc` bit 4 `DTF`: translation faults are not reported (never set here).
    pub const TC_DTF: u64 = 1 << 4;
    /// `tc` bit 5 `PDTV`: `fsc` holds a process-directory pointer (never set here).
    pub const TC_PDTV: u64 = 1 << 5;
    /// `tc` bit 8 `SADE`: the unit updates first-stage A/D bits (never set: every leaf is
    /// written with A = D = 1, and a unit without `AMO_HWAD` treats `SADE` as reserved).
    pub const TC_SADE: u64 = 1 << 8;
    /// `tc` bit 10 `SBE`: first-stage tables are big-endian (never set).
    pub const TC_SBE: u64 = 1 << 10;
    /// `tc` bit 11 `SXL`: Sv32 instead of Sv39/48/57 (never set).
    pub const TC_SXL: u64 = 1 << 11;
    /// `iohgatp` bits 63:60 `MODE`; 0 = Bare (second stage off, the only mode used).
    pub const IOHGATP_MODE_SHIFT: u32 = 60;
    /// `ta` bits 31:12 `PSCID`: the process soft-context id tagging the first-stage
    /// translations (the domain tag).
    pub const TA_PSCID_SHIFT: u32 = 12;
    /// Mask of `ta.PSCID` in place.
    pub const TA_PSCID_MASK: u64 = ((1u64 << 20) - 1) << TA_PSCID_SHIFT;
    /// `fsc` (`iosatp` when `PDTV` = 0) bits 63:60 `MODE`.
    pub const FSC_MODE_SHIFT: u32 = 60;
    /// `fsc` bits 43:0 `PPN` of the root first-stage table.
    pub const FSC_PPN_MASK: u64 = (1u64 << 44) - 1;
    /// `iosatp.MODE` = Bare.
    pub const MODE_BARE: u64 = 0;
    /// `iosatp.MODE` = Sv39 (with `SXL` = 0).
    pub const MODE_SV39: u64 = 8;
    /// `iosatp.MODE` = Sv48.
    pub const MODE_SV48: u64 = 9;
    /// `iosatp.MODE` = Sv57.
    pub const MODE_SV57: u64 = 10;
}

/// The device-context format the unit uses ("Leaf DDT entry").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DcFormat {
    /// 32 bytes: `tc`, `iohgatp`, `ta`, `fsc` (`capabilities.MSI_FLAT` = 0).
    Base,
    /// 64 bytes: the base fields, `msiptp`, `msi_addr_mask`, `msi_addr_pattern`, reserved
    /// (`capabilities.MSI_FLAT` = 1).
    Extended,
}

impl DcFormat {
    /// Size of one device context in bytes.
    pub const fn size(self) -> u64 {
        match self {
            DcFormat::Base => 32,
            DcFormat::Extended => 64,
        }
    }
    /// Doublewords of one device context.
    pub const fn dwords(self) -> usize {
        (self.size() / 8) as usize
    }
    /// Bits of `DDI[0]`: 7 (base) or 6 (extended).
    pub const fn ddi0_bits(self) -> u32 {
        match self {
            DcFormat::Base => 7,
            DcFormat::Extended => 6,
        }
    }
    /// The `device_id` bits a DDT of `levels` levels resolves (chapter 6, "Guidelines for
    /// initialization"): 7/16/24 bits (base), 6/15/24 bits (extended).
    pub const fn id_bits(self, levels: u32) -> u32 {
        match levels {
            0 => 0,
            1 => self.ddi0_bits(),
            2 => self.ddi0_bits() + 9,
            _ => 24,
        }
    }
    /// The fewest DDT levels resolving `bits`-bit device ids, or `None` beyond 24 bits.
    pub const fn levels_for(self, bits: u32) -> Option<u32> {
        if bits <= self.id_bits(1) {
            Some(1)
        } else if bits <= self.id_bits(2) {
            Some(2)
        } else if bits <= 24 {
            Some(3)
        } else {
            None
        }
    }
}

/// The `iosatp.MODE` for first-stage tables of `addr_width` bits (Sv39/48/57).
pub const fn fsc_mode(addr_width: u32) -> Option<u64> {
    match addr_width {
        39 => Some(dc::MODE_SV39),
        48 => Some(dc::MODE_SV48),
        57 => Some(dc::MODE_SV57),
        _ => None,
    }
}

/// A device context as doublewords (the base format uses the first four).
pub type Dwords = [u64; 8];

/// The device context of a device translated through first-stage tables rooted at `root`
/// (`mode` = Sv39/48/57) and tagged `pscid`: `tc.V` = 1 and nothing else enabled (no ATS,
/// no PDT, translation faults reported, no hardware A/D update, little-endian, `SXL` = 0);
/// `iohgatp` Bare with `GSCID` 0; `ta.PSCID`; `fsc` = `iosatp`; MSI translation off
/// (`msiptp.MODE` = Off) in the extended format.
pub const fn translating_dc(pscid: u32, mode: u64, root: PhysAddr) -> Dwords {
    [
        dc::TC_V,
        0,
        ((pscid as u64) << dc::TA_PSCID_SHIFT) & dc::TA_PSCID_MASK,
        (mode << dc::FSC_MODE_SHIFT) | ((root >> 12) & dc::FSC_PPN_MASK),
        0,
        0,
        0,
        0,
    ]
}

/// What a device context says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DcState {
    /// `tc.V` = 0: blocked.
    Invalid,
    /// Valid, first-stage translation without a PDT, second stage Bare: the PSCID, the
    /// `iosatp.MODE` and the root table.
    FirstStage {
        /// `ta.PSCID`.
        pscid: u32,
        /// `iosatp.MODE`.
        mode: u64,
        /// The root table's address.
        root: PhysAddr,
    },
    /// Valid, any other configuration (never written by this driver).
    Other,
}

/// Decodes the doublewords `tc`, `iohgatp`, `ta`, `fsc`.
pub const fn dc_state(tc: u64, iohgatp: u64, ta: u64, fsc: u64) -> DcState {
    if tc & dc::TC_V == 0 {
        return DcState::Invalid;
    }
    if tc & dc::TC_PDTV != 0 || iohgatp >> dc::IOHGATP_MODE_SHIFT != 0 {
        return DcState::Other;
    }
    let mode = fsc >> dc::FSC_MODE_SHIFT;
    if mode == dc::MODE_BARE {
        return DcState::Other;
    }
    DcState::FirstStage {
        pscid: ((ta & dc::TA_PSCID_MASK) >> dc::TA_PSCID_SHIFT) as u32,
        mode,
        root: (fsc & dc::FSC_PPN_MASK) << 12,
    }
}

/// Reads the state of the device context at `pa`.
pub fn read_state<M: PhysMem + ?Sized>(mem: &M, pa: PhysAddr) -> DcState {
    dc_state(
        mem.read_u64(pa),
        mem.read_u64(pa + 8),
        mem.read_u64(pa + 16),
        mem.read_u64(pa + 24),
    )
}

/// Whether the device context at `pa` already holds exactly `new` (its format's doublewords).
pub fn holds<M: PhysMem + ?Sized>(mem: &M, pa: PhysAddr, new: &Dwords, format: DcFormat) -> bool {
    (0..format.dwords()).all(|i| mem.read_u64(pa + 8 * i as u64) == new[i])
}

/// Makes the device context at `pa` invalid with one 64-bit store of `tc` (`V` = 0; every
/// other field is then don't-care), then orders that store before any later write.
pub fn invalidate_dc<M: PhysMem + ?Sized>(mem: &mut M, pa: PhysAddr) {
    mem.write_u64(pa, 0);
    mem.order_writes();
}

/// Writes the device context `new` at `pa`, which must be invalid (`tc.V` = 0) and not
/// cached: every doubleword but `tc` first, then `tc` published with
/// [`PhysMem::publish_u64`], so the unit sees the fields before it sees `V` = 1.
pub fn write_dc<M: PhysMem + ?Sized>(mem: &mut M, pa: PhysAddr, new: &Dwords, format: DcFormat) {
    for (i, &w) in new.iter().enumerate().take(format.dwords()).skip(1) {
        let a = pa + 8 * i as u64;
        if mem.read_u64(a) != w {
            mem.write_u64(a, w);
        }
    }
    mem.publish_u64(pa, new[0]);
}

/// The device directory table of one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ddt {
    /// The root table (`ddtp.PPN`).
    pub root: PhysAddr,
    /// Levels: 1, 2 or 3 (`ddtp.iommu_mode` 1LVL, 2LVL, 3LVL).
    pub levels: u32,
    /// The device-context format.
    pub format: DcFormat,
}

impl Ddt {
    /// The `device_id` bits this table resolves.
    pub const fn id_bits(&self) -> u32 {
        self.format.id_bits(self.levels)
    }

    /// Whether `device_id` is within the table ("Process to translate an IOVA": wider ids
    /// are refused with cause 260).
    pub const fn covers(&self, device_id: u32) -> bool {
        (device_id as u64) < (1u64 << self.id_bits())
    }

    /// `DDI[level]` of `device_id`.
    pub const fn ddi(&self, device_id: u32, level: u32) -> u64 {
        let d = device_id as u64;
        match level {
            0 => d & ((1 << self.format.ddi0_bits()) - 1),
            1 => (d >> self.format.ddi0_bits()) & 0x1ff,
            _ => d >> (self.format.ddi0_bits() + 9),
        }
    }

    /// The address of the entry for `device_id` in the table at `table` of `level`.
    const fn entry_pa(&self, table: PhysAddr, device_id: u32, level: u32) -> PhysAddr {
        if level == 0 {
            table + self.ddi(device_id, 0) * self.format.size()
        } else {
            table + self.ddi(device_id, level) * 8
        }
    }

    /// Walks the non-leaf levels: the deepest table reached for `device_id` and its level
    /// (0 when the leaf table exists). A non-leaf entry that is not valid, or not a table of
    /// this driver's shape, ends the walk.
    fn deepest<M: PhysMem + ?Sized>(&self, mem: &M, device_id: u32) -> (PhysAddr, u32) {
        let mut table = self.root;
        let mut level = self.levels - 1;
        while level > 0 {
            let e = mem.read_u64(self.entry_pa(table, device_id, level));
            if e & DDTE_V == 0 {
                break;
            }
            table = ((e & DDTE_PPN_MASK) >> 10) << 12;
            level -= 1;
        }
        (table, level)
    }

    /// The address of `device_id`'s device context, if the leaf table holding it exists.
    pub fn dc_pa<M: PhysMem + ?Sized>(&self, mem: &M, device_id: u32) -> Option<PhysAddr> {
        if !self.covers(device_id) {
            return None;
        }
        match self.deepest(mem, device_id) {
            (leaf, 0) => Some(self.entry_pa(leaf, device_id, 0)),
            _ => None,
        }
    }

    /// How many tables must be allocated before `device_id` has a device context.
    pub fn missing_tables<M: PhysMem + ?Sized>(&self, mem: &M, device_id: u32) -> u32 {
        self.deepest(mem, device_id).1
    }

    /// Allocates and links the tables `device_id` lacks, returning its device context's
    /// address. Frames are allocated first: if one cannot be had, every frame obtained goes
    /// back and nothing is linked. Each new table is all zeros (every entry invalid); the new
    /// tables are linked to each other while unreachable, and into the existing table last
    /// with [`PhysMem::publish_u64`], so they are reachable only after their contents and
    /// links are visible.
    pub fn ensure<M, A>(&self, mem: &mut M, alloc: &mut A, device_id: u32) -> Option<PhysAddr>
    where
        M: PhysMem + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        if !self.covers(device_id) {
            return None;
        }
        let (table, missing) = self.deepest(mem, device_id);
        let mut frames = [0u64; 2];
        for i in 0..missing as usize {
            match alloc.alloc_frame() {
                Some(f) if f % PAGE_SIZE == 0 => frames[i] = f,
                other => {
                    if let Some(f) = other {
                        alloc.free_frame(f);
                    }
                    for &f in frames[..i].iter().rev() {
                        alloc.free_frame(f);
                    }
                    return None;
                }
            }
        }
        // frames[i] is the new table of level `missing - 1 - i`: frames[0] right below
        // `table`, the last one the leaf. Links between new tables are written while none of
        // them is reachable; the one link into the existing `table` is published last, after
        // a barrier that orders the new tables' zeros and links before it.
        for i in (1..missing as usize).rev() {
            let parent_level = missing - i as u32;
            let pa = self.entry_pa(frames[i - 1], device_id, parent_level);
            mem.write_u64(pa, ddte(frames[i]));
        }
        if missing > 0 {
            let pa = self.entry_pa(table, device_id, missing);
            mem.publish_u64(pa, ddte(frames[0]));
        }
        self.dc_pa(mem, device_id)
    }
}

/// A valid non-leaf DDT entry pointing at `table`.
pub const fn ddte(table: PhysAddr) -> u64 {
    ((table >> 12) << 10) & DDTE_PPN_MASK | DDTE_V
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    #[derive(Default)]
    struct Mem {
        words: BTreeMap<u64, u64>,
        log: Vec<(u64, u64, bool)>,
        barrier: bool,
    }
    impl PhysMem for Mem {
        fn read_u64(&self, pa: u64) -> u64 {
            *self.words.get(&pa).unwrap_or(&0)
        }
        fn write_u64(&mut self, pa: u64, v: u64) {
            self.log.push((pa, v, self.barrier));
            self.barrier = false;
            self.words.insert(pa, v);
        }
        fn order_writes(&mut self) {
            self.barrier = true;
        }
    }

    struct Bump(u64, Option<u32>, Vec<u64>);
    impl FrameAlloc for Bump {
        fn alloc_frame(&mut self) -> Option<u64> {
            if let Some(n) = self.1.as_mut() {
                if *n == 0 {
                    return None;
                }
                *n -= 1;
            }
            self.0 += PAGE_SIZE;
            Some(self.0)
        }
        fn free_frame(&mut self, pa: u64) {
            self.2.push(pa);
        }
    }

    #[test]
    fn levels_follow_the_id_width() {
        assert_eq!(DcFormat::Extended.levels_for(6), Some(1));
        assert_eq!(DcFormat::Extended.levels_for(15), Some(2));
        assert_eq!(DcFormat::Extended.levels_for(16), Some(3));
        assert_eq!(DcFormat::Base.levels_for(7), Some(1));
        assert_eq!(DcFormat::Base.levels_for(16), Some(2));
        assert_eq!(DcFormat::Base.levels_for(17), Some(3));
        assert_eq!(DcFormat::Base.levels_for(25), None);
        let t = Ddt {
            root: 0x1000,
            levels: 3,
            format: DcFormat::Extended,
        };
        // 0xabcd = DDI[2] 1, DDI[1] 0xaf, DDI[0] 0x0d.
        assert_eq!(
            (t.ddi(0xabcd, 2), t.ddi(0xabcd, 1), t.ddi(0xabcd, 0)),
            (1, 0xaf, 0x0d)
        );
        let b = Ddt {
            format: DcFormat::Base,
            levels: 2,
            ..t
        };
        assert_eq!((b.ddi(0xabcd, 1), b.ddi(0xabcd, 0)), (0x157, 0x4d));
        assert!(b.covers(0xffff) && !b.covers(0x1_0000));
    }

    #[test]
    fn tables_become_reachable_with_one_published_link() {
        let mut mem = Mem::default();
        let t = Ddt {
            root: 0x10_0000,
            levels: 3,
            format: DcFormat::Extended,
        };
        assert_eq!(t.dc_pa(&mem, 0x18), None);
        assert_eq!(t.missing_tables(&mem, 0x18), 2);
        let mut a = Bump(0x20_0000, None, Vec::new());
        let dc = t.ensure(&mut mem, &mut a, 0x18).unwrap();
        // frames: 0x201000 (level 1), 0x202000 (leaf).
        assert_eq!(dc, 0x20_2000 + 0x18 * 64);
        assert_eq!(
            mem.log,
            [
                (0x20_1000, ddte(0x20_2000), false),
                (0x10_0000, ddte(0x20_1000), true)
            ],
            "the unreachable link first, the published one last"
        );
        assert_eq!(t.missing_tables(&mem, 0x19), 0);
        // Another DDI[1]: only a leaf.
        let dc2 = t.ensure(&mut mem, &mut a, 0x100).unwrap();
        assert_eq!(dc2, 0x20_3000);
        // A shortage gives every frame back and links nothing.
        let mut short = Bump(0x30_0000, Some(1), Vec::new());
        let before = mem.words.clone();
        assert_eq!(t.ensure(&mut mem, &mut short, 0x8000), None);
        assert_eq!(mem.words, before);
        assert_eq!(short.2, [0x30_1000]);
        assert_eq!(t.ensure(&mut mem, &mut a, 1 << 24), None, "beyond 24 bits");
    }

    #[test]
    fn contexts_are_published_with_v_last() {
        let mut mem = Mem::default();
        let new = translating_dc(7, dc::MODE_SV48, 0x8000_0000);
        write_dc(&mut mem, 0x5000, &new, DcFormat::Extended);
        let last = mem.log.last().unwrap();
        assert_eq!(*last, (0x5000, dc::TC_V, true), "tc published last");
        assert!(holds(&mem, 0x5000, &new, DcFormat::Extended));
        assert_eq!(
            read_state(&mem, 0x5000),
            DcState::FirstStage {
                pscid: 7,
                mode: 9,
                root: 0x8000_0000
            }
        );
        invalidate_dc(&mut mem, 0x5000);
        assert_eq!(read_state(&mem, 0x5000), DcState::Invalid);
        assert!(
            mem.barrier,
            "the invalidation is ordered before later writes"
        );
        assert_eq!(fsc_mode(57), Some(10));
        assert_eq!(fsc_mode(32), None);
    }
}

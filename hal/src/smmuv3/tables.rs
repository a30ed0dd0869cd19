//! Stream table and context descriptors (SMMUv3 5.1 Level 1 Stream Table Descriptor, 5.2
//! Stream Table Entry, 5.4 Context Descriptor; 3.3 Data structures and translation
//! procedure).
//!
//! The stream table is indexed by StreamID (the PCI requester id for PCIe masters). It is
//! either linear (one array of 64-byte STEs) or 2-level: an array of 8-byte level-1
//! descriptors, each pointing at a level-2 array of STEs. This driver uses `SPLIT = 6`, so
//! every level-2 table is exactly one 4 KiB frame of 64 STEs (`Span = 7`), which the frame
//! allocator can always provide; level-2 tables are allocated on first attach.
//!
//! Every STE that is not attached is invalid (`V = 0`, 5.2 STE.V): the device's transactions
//! are terminated with an abort and a C_BAD_STE event carrying the StreamID is recorded (7.3),
//! so DMA of a blocked device is reported, and nothing bypasses. (A valid STE with
//! `Config = abort`, 0b000, would terminate them silently: no event.) A StreamID whose
//! level-2 table does not exist yet has a level-1 descriptor with `Span = 0`, which the SMMU
//! reports as C_BAD_STREAMID. An attached STE selects stage-1 translation through a single
//! context descriptor (S1Fmt linear, S1CDMax 0), and each domain tag has one CD (in a frame
//! of its own) with ASID = tag.
//!
//! Writes are ordered so that the SMMU never sees a half-written valid structure: every
//! doubleword other than the one holding `V` / `Config` is written first, and that
//! doubleword last, in one 64-bit store. Blocking a live STE is that one store of dword 0
//! with `V = 0` (the other dwords are then IGNORED).
//!
//! "First" and "last" are as the SMMU sees them, not only in program order (the contract of
//! [`PhysMem`]): every store that makes a structure reachable or valid (an STE or CD dword 0,
//! a level-1 descriptor) is a [`PhysMem::publish_u64`], a write barrier and the store, so the
//! other dwords, what the structure points at (a CD, a level-2 table, page tables) and the
//! cache cleans of a non-coherent SMMU are visible before it.

use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem};

/// Size of one STE in bytes (5.2).
pub const STE_SIZE: u64 = 64;
/// Size of one CD in bytes (5.4).
pub const CD_SIZE: u64 = 64;
/// Size of one level-1 stream table descriptor in bytes (5.1).
pub const L1_DESC_SIZE: u64 = 8;
/// StreamID bits resolved by one level-2 table: 64 STEs of 64 bytes fill one 4 KiB frame.
pub const SPLIT: u32 = 6;
/// STEs per level-2 table (and per frame of a linear table).
pub const STES_PER_FRAME: u64 = PAGE_SIZE / STE_SIZE;

/// STE fields (5.2 Stream Table Entry).
pub mod ste {
    /// Dword 0 bit 0: V, the STE is valid.
    pub const V: u64 = 1 << 0;
    /// Dword 0 bits 3:1: Config = 0b000, abort every transaction (no event is recorded; never
    /// written by this driver, which blocks with `V = 0` so that blocked traffic is reported).
    pub const CONFIG_ABORT: u64 = 0b000 << 1;
    /// Dword 0 bits 3:1: Config = 0b101, stage 1 translate, stage 2 bypass.
    pub const CONFIG_S1_TRANS: u64 = 0b101 << 1;
    /// Dword 0 bits 3:1: the Config field.
    pub const CONFIG_MASK: u64 = 0b111 << 1;
    /// Dword 0 bits 5:4: S1Fmt = 0b00, S1ContextPtr points at a single CD (or linear CD array).
    pub const S1FMT_LINEAR: u64 = 0b00 << 4;
    /// Dword 0 bits 51:6: S1ContextPtr.
    pub const S1_CONTEXT_PTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    /// Dword 1 bits 3:2: S1CIR, inner cacheability of CD fetches; 0b01 write-back RA.
    pub const S1CIR_WBRA: u64 = 0b01 << 2;
    /// Dword 1 bits 5:4: S1COR, outer cacheability of CD fetches; 0b01 write-back RA.
    pub const S1COR_WBRA: u64 = 0b01 << 4;
    /// Dword 1 bits 7:6: S1CSH, shareability of CD fetches; 0b11 inner shareable.
    pub const S1CSH_ISH: u64 = 0b11 << 6;
    /// Dword 1 bits 7:6: S1CSH = 0b10, outer shareable.
    pub const S1CSH_OSH: u64 = 0b10 << 6;
    /// Dword 1 bits 45:44: SHCFG = 0b01, use the incoming shareability.
    pub const SHCFG_INCOMING: u64 = 0b01 << 44;
}

/// Level-1 stream table descriptor fields (5.1).
pub mod l1 {
    /// Bits 4:0: Span; a level-2 table of `2^(Span - 1)` STEs; 0 = invalid.
    pub const SPAN_MASK: u64 = 0x1f;
    /// Bits 51:6: L2Ptr.
    pub const L2PTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    /// The descriptor for a level-2 table of `2^SPLIT` STEs at `l2`.
    pub const fn desc(l2: u64) -> u64 {
        (l2 & L2PTR_MASK) | (super::SPLIT as u64 + 1)
    }
}

/// CD fields (5.4 Context Descriptor).
pub mod cd {
    /// Dword 0 bits 5:0: T0SZ, the TTB0 input range is `2^(64 - T0SZ)` bytes.
    pub const T0SZ_MASK: u64 = 0x3f;
    /// Dword 0 bits 7:6: TG0 = 0b00, 4 KiB granule.
    pub const TG0_4K: u64 = 0b00 << 6;
    /// Dword 0 bits 9:8: IR0, inner cacheability of walks; 0b01 write-back write-allocate.
    pub const IR0_WBWA: u64 = 0b01 << 8;
    /// Dword 0 bits 11:10: OR0, outer cacheability of walks; 0b01 write-back write-allocate.
    pub const OR0_WBWA: u64 = 0b01 << 10;
    /// Dword 0 bits 13:12: SH0 = 0b11, inner shareable walks.
    pub const SH0_ISH: u64 = 0b11 << 12;
    /// Dword 0 bits 13:12: SH0 = 0b10, outer shareable walks.
    pub const SH0_OSH: u64 = 0b10 << 12;
    /// Dword 0 bit 30: EPD1, no walks through TTB1.
    pub const EPD1: u64 = 1 << 30;
    /// Dword 0 bit 31: V, the CD is valid.
    pub const V: u64 = 1 << 31;
    /// Dword 0 bits 34:32: IPS, intermediate physical (output) address size.
    pub const IPS_SHIFT: u32 = 32;
    /// Dword 0 bit 41: AA64, the tables are VMSAv8-64 (AArch64) tables.
    pub const AA64: u64 = 1 << 41;
    /// Dword 0 bit 44: S, stall on fault (never set).
    pub const S: u64 = 1 << 44;
    /// Dword 0 bit 45: R, record fault events in the Event queue.
    pub const R: u64 = 1 << 45;
    /// Dword 0 bit 46: A, a terminated transaction is reported to the device as an abort
    /// (required when IDR0.TERM_MODEL == 1).
    pub const A: u64 = 1 << 46;
    /// Dword 0 bit 47: ASET, the ASID is not shared with PE broadcast TLB maintenance.
    pub const ASET: u64 = 1 << 47;
    /// Dword 0 bits 63:48: ASID.
    pub const ASID_SHIFT: u32 = 48;
    /// Dword 1 bits 51:4: TTB0.
    pub const TTB0_MASK: u64 = 0x000f_ffff_ffff_fff0;
    /// MAIR attribute 0 = 0xff: Normal memory, inner and outer write-back non-transient,
    /// read/write-allocate. The Arm stage-1 format puts AttrIndx = 0 in every leaf.
    pub const MAIR_ATTR0_WB: u64 = 0xff;
}

/// A 64-byte structure (STE or CD) as eight doublewords.
pub type Dwords = [u64; 8];

/// The STE of a blocked (or never attached) device: `V = 0` (5.2 STE.V). Its transactions
/// are terminated with an abort and a C_BAD_STE event is recorded with the StreamID (7.3.5);
/// every other field is IGNORED.
pub const fn blocked_ste() -> Dwords {
    [0; 8]
}

/// The STE of a device translated through the single CD at `cd` (5.2): V, Config = stage 1
/// translate, S1Fmt linear, S1CDMax = 0, S1ContextPtr = `cd`; CD fetch attributes
/// write-back inner shareable on a coherent unit, else non-cacheable outer shareable;
/// incoming shareability; S1DSS, EATS, STRW (NS-EL1), PRIVCFG and INSTCFG (use incoming) 0.
pub const fn s1_ste(cd: PhysAddr, coherent: bool) -> Dwords {
    let dw0 = ste::V | ste::CONFIG_S1_TRANS | ste::S1FMT_LINEAR | (cd & ste::S1_CONTEXT_PTR_MASK);
    let dw1 = if coherent {
        ste::S1CIR_WBRA | ste::S1COR_WBRA | ste::S1CSH_ISH
    } else {
        ste::S1CSH_OSH
    } | ste::SHCFG_INCOMING;
    [dw0, dw1, 0, 0, 0, 0, 0, 0]
}

/// What an STE's dword 0 says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteState {
    /// V = 0: the device is blocked (C_BAD_STE for its traffic).
    Invalid,
    /// V = 1, Config = abort (silent termination; never written by this driver).
    Abort,
    /// V = 1, stage-1 translation through the CD at the address given.
    S1(PhysAddr),
    /// Any other configuration (bypass, stage 2, ...), never written by this driver.
    Other,
}

/// Decodes STE dword 0.
pub const fn ste_state(dw0: u64) -> SteState {
    if dw0 & ste::V == 0 {
        return SteState::Invalid;
    }
    match dw0 & ste::CONFIG_MASK {
        ste::CONFIG_ABORT => SteState::Abort,
        ste::CONFIG_S1_TRANS => SteState::S1(dw0 & ste::S1_CONTEXT_PTR_MASK),
        _ => SteState::Other,
    }
}

/// The parameters of one stage-1 context (one domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdParams {
    /// ASID (the domain tag).
    pub asid: u16,
    /// Physical address of the level-0 (or level-1 for 39 bits) table.
    pub ttb0: PhysAddr,
    /// Input address width: 39 or 48.
    pub addr_width: u32,
    /// CD.IPS encoding (from IDR5.OAS, capped at 48 bits).
    pub ips: u32,
    /// Walks snoop CPU caches (IDR0.COHACC): write-back inner shareable walks, else
    /// non-cacheable outer shareable.
    pub coherent: bool,
}

/// The CD for `p` (5.4): T0SZ = 64 - width, TG0 4 KiB, walk attributes, EPD1 (TTB1 unused),
/// V, IPS, AA64, R (record faults), A (abort terminated transactions), ASET (private ASID),
/// ASID; TTB0; MAIR with attribute 0 Normal write-back. S (stall), HA/HD, TBI0 and every
/// other field 0.
pub const fn s1_cd(p: CdParams) -> Dwords {
    let walk = if p.coherent {
        cd::IR0_WBWA | cd::OR0_WBWA | cd::SH0_ISH
    } else {
        cd::SH0_OSH
    };
    let dw0 = ((64 - p.addr_width as u64) & cd::T0SZ_MASK)
        | cd::TG0_4K
        | walk
        | cd::EPD1
        | cd::V
        | ((p.ips as u64 & 7) << cd::IPS_SHIFT)
        | cd::AA64
        | cd::R
        | cd::A
        | cd::ASET
        | ((p.asid as u64) << cd::ASID_SHIFT);
    [
        dw0,
        p.ttb0 & cd::TTB0_MASK,
        0,
        cd::MAIR_ATTR0_WB,
        0,
        0,
        0,
        0,
    ]
}

/// Writes the structure `new` at `pa` (an STE or CD) in one go: doublewords 1 to 7 first
/// (only those that change, see [`write_fields`]), then dword 0 (V, Config / ASID) published
/// (see [`publish_dw0`]). Only for a structure the SMMU cannot have fetched, i.e. one no
/// valid pointer reaches (a new CD before any STE points at it: SMMUv3 3.21.3.1, "structures
/// might be fully initialized prior to a pointer to the structure becoming observable"), or
/// for a change of dword 0 alone (moving an STE between CDs: one single-copy-atomic store).
/// A reachable structure going from invalid to valid needs an invalidation between the two
/// steps (the SMMU may have cached it, and need not read V first); see
/// [`super::SmmuUnit::attach`]. Returns whether anything was written.
pub fn write_struct<M: PhysMem + ?Sized>(
    mem: &mut M,
    pa: PhysAddr,
    new: &Dwords,
    coherent: bool,
) -> bool {
    let fields = write_fields(mem, pa, new, coherent);
    publish_dw0(mem, pa, new[0], coherent) || fields
}

/// Writes doublewords 1 to 7 of `new` at `pa`, those that differ from memory, and cleans them
/// for a non-coherent SMMU. Returns whether any changed.
pub fn write_fields<M: PhysMem + ?Sized>(
    mem: &mut M,
    pa: PhysAddr,
    new: &Dwords,
    coherent: bool,
) -> bool {
    let mut changed = false;
    for (i, &w) in new.iter().enumerate().skip(1) {
        let a = pa + 8 * i as u64;
        if mem.read_u64(a) != w {
            mem.write_u64(a, w);
            changed = true;
        }
    }
    if changed && !coherent {
        mem.sync_for_device(pa + 8, 56);
    }
    changed
}

/// Stores `dw0` as dword 0 at `pa` if it differs, published: a write barrier first, so every
/// earlier write (the other dwords, what the structure points at, the cache cleans of a
/// non-coherent SMMU) is visible before it. Returns whether it was written.
pub fn publish_dw0<M: PhysMem + ?Sized>(
    mem: &mut M,
    pa: PhysAddr,
    dw0: u64,
    coherent: bool,
) -> bool {
    if mem.read_u64(pa) == dw0 {
        return false;
    }
    mem.publish_u64(pa, dw0);
    if !coherent {
        mem.sync_for_device(pa, 8);
    }
    true
}

/// Replaces only dword 0 of a live structure in one 64-bit store (e.g. blocking an STE or
/// invalidating a CD: dword 0 with V = 0). Such a store makes nothing reachable, so no barrier
/// precedes it. The SMMU sees the structure invalid only once a CFGI of it and a CMD_SYNC have
/// completed (SMMUv3 3.21.3.1); its other dwords may change only after that.
pub fn write_dw0<M: PhysMem + ?Sized>(mem: &mut M, pa: PhysAddr, dw0: u64, coherent: bool) {
    mem.write_u64(pa, dw0);
    if !coherent {
        mem.sync_for_device(pa, 8);
    }
}

/// Fills the frame at `frame` with blocked (V = 0) STEs: a fresh linear-table frame or
/// level-2 table. Only dword 0 of each STE is written; the others are IGNORED while V = 0
/// and written before V by [`write_struct`].
pub fn fill_blocked<M: PhysMem + ?Sized>(mem: &mut M, frame: PhysAddr, coherent: bool) {
    let dw0 = blocked_ste()[0];
    for i in 0..STES_PER_FRAME {
        mem.write_u64(frame + i * STE_SIZE, dw0);
    }
    if !coherent {
        mem.sync_for_device(frame, PAGE_SIZE);
    }
}

/// The stream table of one unit (logged with its base in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTable {
    /// Physical base (of the linear table or of the level-1 table), aligned to its size.
    pub base: PhysAddr,
    /// Whether the table is 2-level (SPLIT = [`SPLIT`]).
    pub two_level: bool,
    /// STRTAB_BASE_CFG.LOG2SIZE: StreamIDs `0 .. 2^log2size` are valid.
    pub log2size: u32,
    /// Frames of the linear or level-1 table (contiguous from `base`).
    pub frames: u32,
}

#[cfg(feature = "defmt")]
impl defmt::Format for StreamTable {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "StreamTable {{ base: {=u64:#x}, two_level: {=bool}, log2size: {=u32}, frames: {=u32} }}",
            self.base,
            self.two_level,
            self.log2size,
            self.frames
        )
    }
}

impl StreamTable {
    /// STRTAB_BASE_CFG for this table (6.3.25).
    pub const fn base_cfg(&self) -> u32 {
        super::regs::strtab::cfg(self.two_level, SPLIT, self.log2size)
    }

    /// Whether `sid` is within the table.
    pub const fn covers(&self, sid: u32) -> bool {
        (sid as u64) < (1u64 << self.log2size)
    }

    /// Address of the level-1 descriptor of `sid` (2-level tables only).
    pub const fn l1_desc_pa(&self, sid: u32) -> PhysAddr {
        self.base + ((sid >> SPLIT) as u64) * L1_DESC_SIZE
    }

    /// Address of the STE of `sid`, if it exists: `None` outside the table or when the
    /// level-2 table holding it was not allocated yet. An L1 descriptor that does not
    /// describe a full level-2 table of this driver's shape is treated as absent.
    pub fn ste_pa<M: PhysMem + ?Sized>(&self, mem: &M, sid: u32) -> Option<PhysAddr> {
        if !self.covers(sid) {
            return None;
        }
        if !self.two_level {
            return Some(self.base + sid as u64 * STE_SIZE);
        }
        let d = mem.read_u64(self.l1_desc_pa(sid));
        if d & l1::SPAN_MASK != SPLIT as u64 + 1 {
            return None;
        }
        Some(Self::l2_ste_pa(d & l1::L2PTR_MASK, sid))
    }

    /// Address of the STE of `sid` within the level-2 table `l2` that holds it (2-level
    /// tables only; the table need not be linked yet).
    pub const fn l2_ste_pa(l2: PhysAddr, sid: u32) -> PhysAddr {
        l2 + (sid as u64 & (STES_PER_FRAME - 1)) * STE_SIZE
    }

    /// Links the level-2 table `l2` (already filled with blocked STEs, and cleaned on a
    /// non-coherent SMMU) for `sid`, published: the blocked STEs are visible before the
    /// descriptor that makes them reachable.
    pub fn set_l2<M: PhysMem + ?Sized>(&self, mem: &mut M, sid: u32, l2: PhysAddr, coherent: bool) {
        let pa = self.l1_desc_pa(sid);
        mem.publish_u64(pa, l1::desc(l2));
        if !coherent {
            mem.sync_for_device(pa, L1_DESC_SIZE);
        }
    }
}

const _: () = assert!(STES_PER_FRAME == 1 << SPLIT);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Mem(BTreeMap<u64, u64>, u32);
    impl PhysMem for Mem {
        fn read_u64(&self, pa: u64) -> u64 {
            *self.0.get(&pa).unwrap_or(&0)
        }
        fn write_u64(&mut self, pa: u64, v: u64) {
            self.1 += 1;
            self.0.insert(pa, v);
        }
        fn order_writes(&mut self) {}
    }

    #[test]
    fn ste_encodings() {
        assert_eq!(blocked_ste(), [0; 8]);
        assert_eq!(ste_state(blocked_ste()[0]), SteState::Invalid);
        assert_eq!(ste_state(1), SteState::Abort);
        assert_eq!(ste_state(0), SteState::Invalid);
        assert_eq!(ste_state(1 | (4 << 1)), SteState::Other);
        let s = s1_ste(0x1234_5000, true);
        assert_eq!(s[0], 0x1234_5000 | 0b1011);
        assert_eq!(s[1], (1 << 2) | (1 << 4) | (3 << 6) | (1 << 44));
        assert_eq!(ste_state(s[0]), SteState::S1(0x1234_5000));
        assert_eq!(s1_ste(0x1000, false)[1], (2 << 6) | (1 << 44));
        assert_eq!(l1::desc(0x8_0000), 0x8_0000 | 7);
    }

    #[test]
    fn cd_encoding() {
        let c = s1_cd(CdParams {
            asid: 0x1234,
            ttb0: 0x4000_2000,
            addr_width: 48,
            ips: 4,
            coherent: true,
        });
        let dw0 = c[0];
        assert_eq!(dw0 & 0x3f, 16);
        assert_eq!((dw0 >> 6) & 3, 0);
        assert_eq!((dw0 >> 8) & 3, 1);
        assert_eq!((dw0 >> 10) & 3, 1);
        assert_eq!((dw0 >> 12) & 3, 3);
        assert_eq!(dw0 & (1 << 14), 0, "EPD0 clear");
        assert_ne!(dw0 & (1 << 30), 0, "EPD1");
        assert_ne!(dw0 & (1 << 31), 0, "V");
        assert_eq!((dw0 >> 32) & 7, 4);
        for b in [41, 45, 46, 47] {
            assert_ne!(dw0 & (1 << b), 0, "bit {b}");
        }
        assert_eq!(dw0 & (1 << 44), 0, "no stall");
        assert_eq!(dw0 >> 48, 0x1234);
        assert_eq!(c[1], 0x4000_2000);
        assert_eq!(c[3], 0xff);
        let c39 = s1_cd(CdParams {
            asid: 1,
            ttb0: 0x1000,
            addr_width: 39,
            ips: 5,
            coherent: false,
        });
        assert_eq!(c39[0] & 0x3f, 25);
        assert_eq!((c39[0] >> 8) & 0x3f, 0b10_00_00);
    }

    #[test]
    fn write_order_and_lookup() {
        let mut m = Mem::default();
        let t = StreamTable {
            base: 0x10_0000,
            two_level: true,
            log2size: 16,
            frames: 2,
        };
        assert_eq!(t.ste_pa(&m, 0x108), None);
        // Whatever the frame held, every STE ends up invalid.
        for i in 0..STES_PER_FRAME {
            m.write_u64(0x20_0000 + i * STE_SIZE, 0xffff_ffff_ffff_ffff);
        }
        fill_blocked(&mut m, 0x20_0000, true);
        assert!((0..STES_PER_FRAME).all(|i| m.read_u64(0x20_0000 + i * STE_SIZE) == 0));
        t.set_l2(&mut m, 0x108, 0x20_0000, true);
        assert_eq!(m.read_u64(0x10_0000 + (0x108 >> 6) * 8), 0x20_0007);
        let pa = t.ste_pa(&m, 0x108).unwrap();
        assert_eq!(pa, 0x20_0000 + 8 * 64);
        assert_eq!(ste_state(m.read_u64(pa)), SteState::Invalid);
        assert_eq!(t.ste_pa(&m, 1 << 16), None);
        let s = s1_ste(0x30_0000, true);
        m.1 = 0;
        assert!(write_struct(&mut m, pa, &s, true));
        assert_eq!(m.1, 2, "dword 1 then dword 0");
        assert!(!write_struct(&mut m, pa, &s, true));
        let lin = StreamTable {
            base: 0x40_0000,
            two_level: false,
            log2size: 6,
            frames: 1,
        };
        assert_eq!(lin.ste_pa(&m, 63), Some(0x40_0000 + 63 * 64));
        assert_eq!(lin.ste_pa(&m, 64), None);
        assert_eq!(lin.base_cfg(), 6);
        assert_eq!(t.base_cfg(), 16 | (6 << 6) | (1 << 16));
    }
}

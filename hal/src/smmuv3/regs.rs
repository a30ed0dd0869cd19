//! SMMUv3 register map: offsets and bit fields of the SMMU's register block.
//!
//! Section numbers refer to the Arm System Memory Management Unit Architecture Specification,
//! SMMU architecture version 3 (Arm IHI 0070), chapter 6 "Memory map and registers". The
//! registers occupy two 64 KiB pages (6.1); the Event queue PROD/CONS registers live in page 1.

/// Offset of register page 1 from the base of the register block (6.1 Memory map).
pub const PAGE1: usize = 0x1_0000;

/// 6.3.1 SMMU_IDR0 (32-bit, RO).
pub const IDR0: usize = 0x00;
/// 6.3.2 SMMU_IDR1 (32-bit, RO).
pub const IDR1: usize = 0x04;
/// 6.3.3 SMMU_IDR2 (32-bit, RO).
pub const IDR2: usize = 0x08;
/// 6.3.4 SMMU_IDR3 (32-bit, RO).
pub const IDR3: usize = 0x0c;
/// 6.3.5 SMMU_IDR4 (32-bit, RO, IMPLEMENTATION DEFINED).
pub const IDR4: usize = 0x10;
/// 6.3.6 SMMU_IDR5 (32-bit, RO).
pub const IDR5: usize = 0x14;
/// 6.3.9 SMMU_CR0 (32-bit).
pub const CR0: usize = 0x20;
/// 6.3.10 SMMU_CR0ACK (32-bit, RO).
pub const CR0ACK: usize = 0x24;
/// 6.3.11 SMMU_CR1 (32-bit): table and queue memory attributes.
pub const CR1: usize = 0x28;
/// 6.3.12 SMMU_CR2 (32-bit).
pub const CR2: usize = 0x2c;
/// 6.3.14 SMMU_GBPA (32-bit): global bypass attributes, used while SMMUEN == 0.
pub const GBPA: usize = 0x44;
/// 6.3.16 SMMU_IRQ_CTRL (32-bit): interrupt enables.
pub const IRQ_CTRL: usize = 0x50;
/// 6.3.17 SMMU_IRQ_CTRLACK (32-bit, RO): the enables in effect.
pub const IRQ_CTRLACK: usize = 0x54;
/// 6.3.18 SMMU_GERROR (32-bit, RO).
pub const GERROR: usize = 0x60;
/// 6.3.19 SMMU_GERRORN (32-bit): acknowledges GERROR bits by toggling.
pub const GERRORN: usize = 0x64;
/// 6.3.20 SMMU_GERROR_IRQ_CFG0 (64-bit): the GERROR MSI's address.
pub const GERROR_IRQ_CFG0: usize = 0x68;
/// 6.3.21 SMMU_GERROR_IRQ_CFG1 (32-bit): the GERROR MSI's data.
pub const GERROR_IRQ_CFG1: usize = 0x70;
/// 6.3.22 SMMU_GERROR_IRQ_CFG2 (32-bit): the GERROR MSI's memory attributes.
pub const GERROR_IRQ_CFG2: usize = 0x74;
/// 6.3.24 SMMU_STRTAB_BASE (64-bit).
pub const STRTAB_BASE: usize = 0x80;
/// 6.3.25 SMMU_STRTAB_BASE_CFG (32-bit).
pub const STRTAB_BASE_CFG: usize = 0x88;
/// 6.3.26 SMMU_CMDQ_BASE (64-bit).
pub const CMDQ_BASE: usize = 0x90;
/// 6.3.27 SMMU_CMDQ_PROD (32-bit).
pub const CMDQ_PROD: usize = 0x98;
/// 6.3.28 SMMU_CMDQ_CONS (32-bit).
pub const CMDQ_CONS: usize = 0x9c;
/// 6.3.29 SMMU_EVENTQ_BASE (64-bit).
pub const EVENTQ_BASE: usize = 0xa0;
/// 6.3.30 SMMU_EVENTQ_IRQ_CFG0 (64-bit): the Event queue MSI's address.
pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
/// 6.3.31 SMMU_EVENTQ_IRQ_CFG1 (32-bit): the Event queue MSI's data.
pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
/// 6.3.32 SMMU_EVENTQ_IRQ_CFG2 (32-bit): the Event queue MSI's memory attributes.
pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
/// SMMU_EVENTQ_PROD, page 1 offset 0xA8 (32-bit).
pub const EVENTQ_PROD_PAGE1: usize = 0xa8;
/// SMMU_EVENTQ_CONS, page 1 offset 0xAC (32-bit).
pub const EVENTQ_CONS_PAGE1: usize = 0xac;

/// Extracts `width` bits of `v` starting at bit `lo`.
#[inline]
pub const fn bits(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

/// SMMU_IDR0 (6.3.1), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Idr0(pub u32);

impl Idr0 {
    const fn f(self, lo: u32, w: u32) -> u32 {
        bits(self.0 as u64, lo, w) as u32
    }
    /// S2P (bit 0): stage 2 translation supported.
    pub const fn s2p(self) -> bool {
        self.f(0, 1) != 0
    }
    /// S1P (bit 1): stage 1 translation supported.
    pub const fn s1p(self) -> bool {
        self.f(1, 1) != 0
    }
    /// TTF (bits 3:2): translation table formats; 0b10 AArch64, 0b11 AArch32 and AArch64.
    pub const fn ttf(self) -> u32 {
        self.f(2, 2)
    }
    /// Whether TTF includes the AArch64 (VMSAv8-64) format.
    pub const fn aarch64_tables(self) -> bool {
        self.ttf() & 0b10 != 0
    }
    /// COHACC (bit 4): table walks and queue/table accesses are IO-coherent.
    pub const fn cohacc(self) -> bool {
        self.f(4, 1) != 0
    }
    /// ASID16 (bit 12): 16-bit ASIDs (else 8-bit).
    pub const fn asid16(self) -> bool {
        self.f(12, 1) != 0
    }
    /// MSI (bit 13): the SMMU can signal its interrupts as MSIs (the `*_IRQ_CFG0..2`
    /// registers exist).
    pub const fn msi(self) -> bool {
        self.f(13, 1) != 0
    }
    /// TTENDIAN (bits 22:21): 0b00 mixed, 0b10 little-endian only, 0b11 big-endian only.
    pub const fn ttendian(self) -> u32 {
        self.f(21, 2)
    }
    /// STALL_MODEL (bits 25:24).
    pub const fn stall_model(self) -> u32 {
        self.f(24, 2)
    }
    /// TERM_MODEL (bit 26): 1 = terminated transactions always abort (CD.A must be 1).
    pub const fn term_model(self) -> bool {
        self.f(26, 1) != 0
    }
    /// ST_LEVEL (bits 28:27): 0b00 linear stream table only, 0b01 2-level supported.
    pub const fn st_level(self) -> u32 {
        self.f(27, 2)
    }
}

/// SMMU_IDR1 (6.3.2), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Idr1(pub u32);

impl Idr1 {
    /// SIDSIZE (bits 5:0): number of StreamID bits.
    pub const fn sidsize(self) -> u32 {
        self.0 & 0x3f
    }
    /// SSIDSIZE (bits 10:6): number of SubstreamID bits (not used: one CD per stream).
    pub const fn ssidsize(self) -> u32 {
        (self.0 >> 6) & 0x1f
    }
    /// EVENTQS (bits 20:16): log2 of the largest Event queue.
    pub const fn eventqs(self) -> u32 {
        (self.0 >> 16) & 0x1f
    }
    /// CMDQS (bits 25:21): log2 of the largest Command queue.
    pub const fn cmdqs(self) -> u32 {
        (self.0 >> 21) & 0x1f
    }
    /// QUEUES_PRESET (bit 29): queue base registers are fixed (unsupported here).
    pub const fn queues_preset(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    /// TABLES_PRESET (bit 30): stream table base registers are fixed (unsupported here).
    pub const fn tables_preset(self) -> bool {
        self.0 & (1 << 30) != 0
    }
}

/// SMMU_IDR3 (6.3.4), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Idr3(pub u32);

impl Idr3 {
    /// RIL (bit 10): range invalidation (TLBI TG/TTL/NUM/SCALE) supported.
    pub const fn ril(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// BBML (bits 12:11): break-before-make level; 2 = a live block may be replaced by a
    /// table (and back) without break-before-make.
    pub const fn bbml(self) -> u32 {
        (self.0 >> 11) & 3
    }
}

/// SMMU_IDR5 (6.3.6), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Idr5(pub u32);

impl Idr5 {
    /// OAS (bits 2:0): output address size encoding.
    pub const fn oas(self) -> u32 {
        self.0 & 7
    }
    /// GRAN4K (bit 4): 4 KiB translation granule supported.
    pub const fn gran4k(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// VAX (bits 11:10): 0b00 48-bit VAs, 0b01 52-bit VAs.
    pub const fn vax(self) -> u32 {
        (self.0 >> 10) & 3
    }
}

/// Number of address bits of an OAS / IPS encoding (6.3.6 OAS; 5.4 CD.IPS): 0 = 32,
/// 1 = 36, 2 = 40, 3 = 42, 4 = 44, 5 = 48, 6 = 52; reserved values read as 48 so that a
/// strange register never widens what is used.
pub const fn oas_bits(enc: u32) -> u32 {
    match enc {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        6 => 52,
        _ => 48,
    }
}

/// The IPS encoding for at most `bits` output address bits, capped at 48 (0b101): the
/// largest encoding not above `bits` (5.4 CD.IPS).
pub const fn ips_for_bits(bits: u32) -> u32 {
    match bits {
        0..=35 => 0,
        36..=39 => 1,
        40..=41 => 2,
        42..=43 => 3,
        44..=47 => 4,
        _ => 5,
    }
}

/// SMMU_CR0 / SMMU_CR0ACK bits (6.3.9, 6.3.10).
pub mod cr0 {
    /// SMMUEN (bit 0): translation enabled.
    pub const SMMUEN: u32 = 1 << 0;
    /// EVENTQEN (bit 2): Event queue enabled.
    pub const EVENTQEN: u32 = 1 << 2;
    /// CMDQEN (bit 3): Command queue enabled.
    pub const CMDQEN: u32 = 1 << 3;
}

/// SMMU_CR1 fields (6.3.11): cacheability and shareability of table and queue accesses.
pub mod cr1 {
    /// Cacheability encoding: non-cacheable.
    pub const NC: u32 = 0;
    /// Cacheability encoding: write-back cacheable.
    pub const WB: u32 = 1;
    /// Shareability encoding: outer shareable.
    pub const OSH: u32 = 2;
    /// Shareability encoding: inner shareable.
    pub const ISH: u32 = 3;
    /// The CR1 value: QUEUE_IC (1:0), QUEUE_OC (3:2), QUEUE_SH (5:4), TABLE_IC (7:6),
    /// TABLE_OC (9:8), TABLE_SH (11:10). Write-back inner shareable for a coherent unit,
    /// non-cacheable outer shareable otherwise.
    pub const fn value(coherent: bool) -> u32 {
        let (c, sh) = if coherent { (WB, ISH) } else { (NC, OSH) };
        c | (c << 2) | (sh << 4) | (c << 6) | (c << 8) | (sh << 10)
    }
}

/// SMMU_CR2 bits (6.3.12).
pub mod cr2 {
    /// RECINVSID (bit 1): record C_BAD_STREAMID for out-of-range StreamIDs.
    pub const RECINVSID: u32 = 1 << 1;
    /// PTM (bit 2): private TLB maintenance (broadcast TLBI from the PEs is not needed).
    pub const PTM: u32 = 1 << 2;
}

/// SMMU_GBPA bits (6.3.14).
pub mod gbpa {
    /// Update (bit 31): write 1 with new fields; reads 1 until the update took effect.
    pub const UPDATE: u32 = 1 << 31;
    /// ABORT (bit 20): abort all incoming transactions while SMMUEN == 0.
    pub const ABORT: u32 = 1 << 20;
}

/// SMMU_GERROR / SMMU_GERRORN bits (6.3.18, 6.3.19). A condition is active while the GERROR
/// bit differs from the GERRORN bit; software acknowledges by making them equal.
pub mod gerror {
    /// CMDQ_ERR (bit 0): the Command queue stopped on an error (CMDQ_CONS.ERR).
    pub const CMDQ_ERR: u32 = 1 << 0;
    /// EVENTQ_ABT_ERR (bit 2): an Event queue write was aborted.
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    /// SFM_ERR (bit 8): the SMMU entered Service Failure Mode.
    pub const SFM_ERR: u32 = 1 << 8;
    /// Every defined error bit (CMDQ_ERR, EVENTQ/PRIQ/MSI abort errors, SFM_ERR).
    pub const ALL: u32 = 0x1fd;
}

/// SMMU_IRQ_CTRL / SMMU_IRQ_CTRLACK bits (6.3.16, 6.3.17) and the MSI configuration
/// registers' fields (6.3.20 to 6.3.22, 6.3.30 to 6.3.32).
pub mod irq {
    /// GERROR_IRQEN (bit 0): interrupt when a GERROR condition becomes active.
    pub const GERROR_IRQEN: u32 = 1 << 0;
    /// PRIQ_IRQEN (bit 1): PRI queue interrupt (not used: no PRI queue).
    pub const PRIQ_IRQEN: u32 = 1 << 1;
    /// EVENTQ_IRQEN (bit 2): Event queue interrupt.
    pub const EVENTQ_IRQEN: u32 = 1 << 2;
    /// The bits compared with IRQ_CTRLACK.
    pub const ACK_MASK: u32 = GERROR_IRQEN | PRIQ_IRQEN | EVENTQ_IRQEN;
    /// *_IRQ_CFG0.ADDR (bits 51:2): the MSI's target address; 0 sends no MSI (the wired
    /// interrupt, where implemented, is used instead).
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_fffc;
    /// *_IRQ_CFG2.MemAttr (bits 3:0) = 0b0001: the MSI write is Device-nGnRE.
    pub const MEMATTR_DEVICE_NGNRE: u32 = 0x1;
}

/// SMMU_STRTAB_BASE and SMMU_STRTAB_BASE_CFG fields (6.3.24, 6.3.25).
pub mod strtab {
    /// STRTAB_BASE.RA (bit 62): read-allocate hint.
    pub const RA: u64 = 1 << 62;
    /// STRTAB_BASE.ADDR (bits 51:6).
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    /// STRTAB_BASE_CFG.FMT (bits 17:16) = 0b00: linear.
    pub const FMT_LINEAR: u32 = 0;
    /// STRTAB_BASE_CFG.FMT = 0b01: 2-level.
    pub const FMT_2LVL: u32 = 1 << 16;
    /// The STRTAB_BASE_CFG value: FMT, SPLIT (bits 10:6; IGNORED and written 0 for a
    /// linear table), LOG2SIZE (bits 5:0).
    pub const fn cfg(two_level: bool, split: u32, log2size: u32) -> u32 {
        if two_level {
            FMT_2LVL | ((split & 0x1f) << 6) | (log2size & 0x3f)
        } else {
            FMT_LINEAR | (log2size & 0x3f)
        }
    }
}

/// Queue base and pointer fields (6.3.26 to 6.3.29, 3.5 Queues).
pub mod queue {
    /// {CMDQ,EVENTQ}_BASE.RA / WA (bit 62): read / write allocate hint.
    pub const ALLOC_HINT: u64 = 1 << 62;
    /// {CMDQ,EVENTQ}_BASE.ADDR (bits 51:5).
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
    /// The queue base register value: hint, address, LOG2SIZE (bits 4:0).
    pub const fn base(addr: u64, log2size: u32) -> u64 {
        ALLOC_HINT | (addr & ADDR_MASK) | (log2size as u64 & 0x1f)
    }
    /// CMDQ_CONS.ERR (bits 30:24): the command error code.
    pub const fn cons_err(cons: u32) -> u32 {
        (cons >> 24) & 0x7f
    }
    /// EVENTQ_PROD.OVFLG (bit 31) / EVENTQ_CONS.OVACKFLG (bit 31).
    pub const OVFLG: u32 = 1 << 31;
    /// CMDQ_CONS.ERR value CERROR_NONE.
    pub const CERROR_NONE: u32 = 0;
    /// CMDQ_CONS.ERR value CERROR_ILL: illegal command.
    pub const CERROR_ILL: u32 = 1;
    /// CMDQ_CONS.ERR value CERROR_ABT: abort on command fetch.
    pub const CERROR_ABT: u32 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_idr0_decodes() {
        // Measured on QEMU 10.0 virt,iommu=smmuv3 (see /work/shared/notes/qemu-iommu.md).
        let i = Idr0(0x0d44_101b);
        assert!(i.s1p() && i.s2p());
        assert!(i.aarch64_tables());
        assert!(i.cohacc());
        assert!(i.asid16());
        assert_eq!(i.ttendian(), 0b10);
        assert_eq!(i.stall_model(), 1);
        assert!(i.term_model());
        assert_eq!(i.st_level(), 1);
    }

    #[test]
    fn idr_fields() {
        let i1 = Idr1(16 | (19 << 16) | (19 << 21));
        assert_eq!((i1.sidsize(), i1.eventqs(), i1.cmdqs()), (16, 19, 19));
        let i3 = Idr3((1 << 10) | (2 << 11) | (1 << 2));
        assert!(i3.ril());
        assert_eq!(i3.bbml(), 2);
        let i5 = Idr5(4 | (1 << 4) | (1 << 5) | (1 << 6));
        assert_eq!(oas_bits(i5.oas()), 44);
        assert!(i5.gran4k());
        assert_eq!(ips_for_bits(44), 4);
        assert_eq!(ips_for_bits(52), 5);
        assert_eq!(ips_for_bits(48), 5);
        assert_eq!(oas_bits(7), 48);
    }

    #[test]
    fn register_encodings() {
        assert_eq!(cr1::value(true), 0b11_01_01_11_01_01);
        assert_eq!(cr1::value(false), 0b10_00_00_10_00_00);
        assert_eq!(strtab::cfg(true, 6, 16), (1 << 16) | (6 << 6) | 16);
        assert_eq!(strtab::cfg(false, 6, 6), 6);
        assert_eq!(queue::base(0x8000_1000, 8), (1 << 62) | 0x8000_1000 | 8);
        assert_eq!(queue::cons_err(0x0100_0005), 1);
    }
}

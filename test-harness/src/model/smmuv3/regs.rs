//! SMMUv3 register map, register fields and the model's configuration (IHI 0070, chapter 6).
//!
//! Offsets are relative to the base of the SMMU's register block. Page 0 is at +0x0000 and page 1
//! at +0x10000 (section 6.1). The Event queue PROD/CONS registers architecturally live in page 1
//! (0x100A8/0x100AC); QEMU aliases page 1 onto page 0, which [`SmmuConfig::page1_alias`] models.

/// SMMU_IDR0, identification register 0 (6.3.1). 32-bit, RO.
pub const IDR0: usize = 0x00;
/// SMMU_IDR1 (6.3.2). 32-bit, RO.
pub const IDR1: usize = 0x04;
/// SMMU_IDR2 (6.3.3). 32-bit, RO.
pub const IDR2: usize = 0x08;
/// SMMU_IDR3 (6.3.4). 32-bit, RO.
pub const IDR3: usize = 0x0c;
/// SMMU_IDR4 (6.3.5). 32-bit, RO, IMPLEMENTATION DEFINED.
pub const IDR4: usize = 0x10;
/// SMMU_IDR5 (6.3.6). 32-bit, RO.
pub const IDR5: usize = 0x14;
/// SMMU_IIDR (6.3.7). 32-bit, RO.
pub const IIDR: usize = 0x18;
/// SMMU_AIDR, architecture version (6.3.8). 32-bit, RO.
pub const AIDR: usize = 0x1c;
/// SMMU_CR0 (6.3.9). 32-bit, RW.
pub const CR0: usize = 0x20;
/// SMMU_CR0ACK (6.3.10). 32-bit, RO.
pub const CR0ACK: usize = 0x24;
/// SMMU_CR1, table/queue memory attributes (6.3.11). 32-bit.
pub const CR1: usize = 0x28;
/// SMMU_CR2 (6.3.12). 32-bit.
pub const CR2: usize = 0x2c;
/// SMMU_STATUSR (6.3.13). 32-bit, RO.
pub const STATUSR: usize = 0x40;
/// SMMU_GBPA, global bypass attributes (6.3.14). 32-bit.
pub const GBPA: usize = 0x44;
/// SMMU_AGBPA (6.3.15). 32-bit.
pub const AGBPA: usize = 0x48;
/// SMMU_IRQ_CTRL (6.3.16). 32-bit.
pub const IRQ_CTRL: usize = 0x50;
/// SMMU_IRQ_CTRLACK (6.3.17). 32-bit, RO.
pub const IRQ_CTRLACK: usize = 0x54;
/// SMMU_GERROR (6.3.18). 32-bit, RO.
pub const GERROR: usize = 0x60;
/// SMMU_GERRORN (6.3.19). 32-bit, RW.
pub const GERRORN: usize = 0x64;
/// SMMU_GERROR_IRQ_CFG0 (6.3.20). 64-bit.
pub const GERROR_IRQ_CFG0: usize = 0x68;
/// SMMU_GERROR_IRQ_CFG1 (6.3.21). 32-bit.
pub const GERROR_IRQ_CFG1: usize = 0x70;
/// SMMU_GERROR_IRQ_CFG2 (6.3.22). 32-bit.
pub const GERROR_IRQ_CFG2: usize = 0x74;
/// SMMU_STRTAB_BASE (6.3.24). 64-bit.
pub const STRTAB_BASE: usize = 0x80;
/// SMMU_STRTAB_BASE_CFG (6.3.25). 32-bit.
pub const STRTAB_BASE_CFG: usize = 0x88;
/// SMMU_CMDQ_BASE (6.3.26). 64-bit.
pub const CMDQ_BASE: usize = 0x90;
/// SMMU_CMDQ_PROD (6.3.27). 32-bit.
pub const CMDQ_PROD: usize = 0x98;
/// SMMU_CMDQ_CONS (6.3.28). 32-bit.
pub const CMDQ_CONS: usize = 0x9c;
/// SMMU_EVENTQ_BASE (6.3.29). 64-bit.
pub const EVENTQ_BASE: usize = 0xa0;
/// SMMU_EVENTQ_IRQ_CFG0 (6.3.30). 64-bit.
pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
/// SMMU_EVENTQ_IRQ_CFG1 (6.3.31). 32-bit.
pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
/// SMMU_EVENTQ_IRQ_CFG2 (6.3.32). 32-bit.
pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
/// Offset of register page 1 (6.1).
pub const PAGE1: usize = 0x1_0000;
/// SMMU_EVENTQ_PROD, in page 1 (6.3.95). 32-bit.
pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
/// SMMU_EVENTQ_CONS, in page 1 (6.3.96). 32-bit.
pub const EVENTQ_CONS: usize = PAGE1 + 0xac;

/// CR0/CR0ACK.SMMUEN, bit 0.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0/CR0ACK.PRIQEN, bit 1 (PRI is not modelled: stays 0).
pub const CR0_PRIQEN: u32 = 1 << 1;
/// CR0/CR0ACK.EVENTQEN, bit 2.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// CR0/CR0ACK.CMDQEN, bit 3.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// CR0 bits the model implements (SMMUEN, EVENTQEN, CMDQEN); others are RES0 here.
pub const CR0_IMPLEMENTED: u32 = CR0_SMMUEN | CR0_EVENTQEN | CR0_CMDQEN;

/// CR2.RECINVSID, bit 1: record C_BAD_STREAMID for out-of-range StreamIDs (6.3.12).
pub const CR2_RECINVSID: u32 = 1 << 1;

/// GBPA.Update, bit 31 (6.3.14).
pub const GBPA_UPDATE: u32 = 1 << 31;
/// GBPA.ABORT, bit 20: abort all incoming transactions while SMMUEN == 0.
pub const GBPA_ABORT: u32 = 1 << 20;
/// GBPA fields other than Update and the RES0 bits: ABORT \[20\], INSTCFG \[19:18\], PRIVCFG \[17:16\],
/// SHCFG \[13:12\], ALLOCCFG \[11:8\], MTCFG \[4\], MemAttr \[3:0\].
pub const GBPA_FIELDS: u32 = 0x001f_3f1f;
/// GBPA value at reset apart from ABORT: SHCFG = 0b01 (use incoming), as QEMU resets it.
pub const GBPA_RESET: u32 = 0x0000_1000;

/// GERROR/GERRORN.CMDQ_ERR, bit 0 (6.3.18).
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// GERROR/GERRORN.EVENTQ_ABT_ERR, bit 2.
pub const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;
/// GERROR/GERRORN.MSI_CMDQ_ABT_ERR, bit 4.
pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// GERROR bits defined for the features this model implements.
pub const GERROR_IMPLEMENTED: u32 = 0x1fd;

/// IRQ_CTRL.GERROR_IRQEN, bit 0 (6.3.16).
pub const IRQ_CTRL_GERROR_IRQEN: u32 = 1 << 0;
/// IRQ_CTRL.EVENTQ_IRQEN, bit 2.
pub const IRQ_CTRL_EVENTQ_IRQEN: u32 = 1 << 2;
/// *_IRQ_CFG0.ADDR, bits \[51:2\] (6.3.20, 6.3.30); 0 means no MSI is sent.
pub const IRQ_CFG0_ADDR_MASK: u64 = ((1u64 << 52) - 1) & !0x3;

/// STRTAB_BASE.ADDR, bits \[55:6\] (6.3.24).
pub const STRTAB_BASE_ADDR_MASK: u64 = ((1u64 << 56) - 1) & !0x3f;
/// STRTAB_BASE_CFG.FMT, bits \[17:16\]: 0b00 linear, 0b01 2-level (6.3.25).
pub const STRTAB_CFG_FMT_SHIFT: u32 = 16;
/// STRTAB_BASE_CFG.SPLIT, bits \[10:6\].
pub const STRTAB_CFG_SPLIT_SHIFT: u32 = 6;
/// STRTAB_BASE_CFG.LOG2SIZE, bits \[5:0\].
pub const STRTAB_CFG_LOG2SIZE_MASK: u32 = 0x3f;

/// {CMDQ,EVENTQ}_BASE.ADDR, bits \[55:5\] (6.3.26, 6.3.29).
pub const Q_BASE_ADDR_MASK: u64 = ((1u64 << 56) - 1) & !0x1f;
/// {CMDQ,EVENTQ}_BASE.LOG2SIZE, bits \[4:0\].
pub const Q_BASE_LOG2SIZE_MASK: u64 = 0x1f;
/// CMDQ_CONS.ERR, bits \[30:24\] (6.3.28).
pub const CMDQ_CONS_ERR_SHIFT: u32 = 24;
/// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG, bit 31 (6.3.95, 6.3.96).
pub const EVENTQ_OVFLG: u32 = 1 << 31;

/// The identification registers and behaviour knobs of a modelled SMMU.
///
/// `Default` gives QEMU 10.0's `virt,iommu=smmuv3` (IDR0 = 0x0d44101b, IDR1 SIDSIZE 16,
/// CMDQS = EVENTQS = 19, IDR3 HAD + RIL + BBML2, IDR5 OAS 44 bits with 4K/16K/64K granules,
/// AIDR = SMMUv3.1) and immediate acknowledgement of every update; the strictness knobs
/// (`complete_invalidation_at_sync`, `cache_invalid_structures`) are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmmuConfig {
    /// IDR0.S1P: stage 1 translation implemented.
    pub s1p: bool,
    /// IDR0.S2P: stage 2 implemented. Only advertised (and VMID-tagging TLB entries): the
    /// model does not walk stage 2 tables; an STE that enables stage 2 is treated as C_BAD_STE.
    pub s2p: bool,
    /// IDR0.COHACC: coherent table and queue accesses.
    pub cohacc: bool,
    /// IDR0.HYP: EL2 StreamWorld and CMD_TLBI_EL2_* supported.
    pub hyp: bool,
    /// IDR0.ASID16: 16-bit ASIDs (else 8-bit).
    pub asid16: bool,
    /// IDR0.VMID16: 16-bit VMIDs (else 8-bit).
    pub vmid16: bool,
    /// IDR0.MSI: MSIs supported (CMD_SYNC with CS = SIG_IRQ writes MSIData to MSIAddress).
    pub msi: bool,
    /// IDR0.SEV: WFE wake-up events supported.
    pub sev: bool,
    /// IDR0.ST_LEVEL == 0b01: 2-level Stream tables supported.
    pub st_level_2: bool,
    /// IDR0.STALL_MODEL (0b00 stall and terminate, 0b01 terminate only, 0b10 stall forced).
    /// The model never stalls; only the CD/STE legality rules depend on it.
    pub stall_model: u8,
    /// IDR0.TERM_MODEL: 1 = terminated transactions always abort (CD.A == 0 is ILLEGAL).
    pub term_model: bool,
    /// IDR1.SIDSIZE: number of StreamID bits.
    pub sidsize: u8,
    /// IDR1.CMDQS: log2 of the maximum Command queue entries.
    pub cmdqs: u8,
    /// IDR1.EVENTQS: log2 of the maximum Event queue entries.
    pub eventqs: u8,
    /// IDR3.HAD: hierarchical attribute disable (CD.HAD0/HAD1) supported.
    pub had: bool,
    /// IDR3.RIL: range invalidation and TTL hints in CMD_TLBI_* supported.
    pub ril: bool,
    /// IDR3.BBML: break-before-make level (0, 1 or 2); advertised only.
    pub bbml: u8,
    /// IDR5.OAS encoding (0 = 32, 1 = 36, 2 = 40, 3 = 42, 4 = 44, 5 = 48 bits).
    pub oas: u8,
    /// IDR5.GRAN4K. The model's walker implements only the 4 KiB granule.
    pub gran4k: bool,
    /// IDR5.GRAN16K (advertised; a CD selecting it is reported C_BAD_CD by this model).
    pub gran16k: bool,
    /// IDR5.GRAN64K (advertised; a CD selecting it is reported C_BAD_CD by this model).
    pub gran64k: bool,
    /// SMMU_AIDR value (0x1 = SMMUv3.1, 0x2 = SMMUv3.2).
    pub aidr: u32,
    /// Reset value of GBPA.ABORT (IMPLEMENTATION DEFINED, 6.3.14). QEMU resets it to 0, so with
    /// SMMUEN == 0 DMA bypasses the SMMU untranslated.
    pub gbpa_abort_at_reset: bool,
    /// A CR0 write is reflected in CR0ACK only after this many reads of CR0ACK (0 = at once).
    /// Until then the old enables stay in effect. For testing bounded waits.
    pub ack_delay_reads: u32,
    /// Commands made visible by a CMDQ_PROD write are consumed only after this many reads of
    /// CMDQ_CONS (0 = at the PROD write). For testing bounded waits on CMD_SYNC.
    pub cons_delay_reads: u32,
    /// Never consume commands (a hung SMMU), for testing timeouts.
    pub cmdq_hung: bool,
    /// Consumed CFGI/TLBI commands take effect only when a later CMD_SYNC is consumed
    /// (4.3.8: "the consumption of structure and TLB invalidation commands does not guarantee
    /// invalidation completion"). Catches drivers that poll CONS instead of issuing CMD_SYNC.
    /// QEMU applies them at once (false).
    pub complete_invalidation_at_sync: bool,
    /// Page 1 aliases page 0 as in QEMU: EVENTQ_PROD/CONS also answer at 0xA8/0xAC. When false
    /// (real hardware), 0xA8/0xAC in page 0 are Reserved (RAZ/WI, counted as misuse).
    pub page1_alias: bool,
    /// Whether client transactions arrive marked privileged (for STE.PRIVCFG == "use
    /// incoming"). PCIe requests without a PASID prefix are unprivileged: default false.
    pub incoming_privileged: bool,
    /// Cache STEs/CDs even when they are invalid or ILLEGAL (permitted by 3.21.2), so that a
    /// driver that fixes a structure must still invalidate it.
    pub cache_invalid_structures: bool,
    /// Never acknowledge IRQ_CTRL writes in IRQ_CTRLACK (a hung SMMU), for testing timeouts.
    pub irq_ctrl_hung: bool,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        SmmuConfig {
            s1p: true,
            s2p: true,
            cohacc: true,
            hyp: false,
            asid16: true,
            vmid16: true,
            msi: false,
            sev: false,
            st_level_2: true,
            stall_model: 1,
            term_model: true,
            sidsize: 16,
            cmdqs: 19,
            eventqs: 19,
            had: true,
            ril: true,
            bbml: 2,
            oas: 4,
            gran4k: true,
            gran16k: true,
            gran64k: true,
            aidr: 0x1,
            gbpa_abort_at_reset: false,
            ack_delay_reads: 0,
            cons_delay_reads: 0,
            cmdq_hung: false,
            complete_invalidation_at_sync: true,
            page1_alias: true,
            incoming_privileged: false,
            cache_invalid_structures: true,
            irq_ctrl_hung: false,
        }
    }
}

impl SmmuConfig {
    /// SMMU_IDR0 (6.3.1): S2P \[0\], S1P \[1\], TTF \[3:2\] = 0b10 (AArch64), COHACC \[4\], HYP \[9\],
    /// ASID16 \[12\], MSI \[13\], SEV \[14\], VMID16 \[18\], TTENDIAN \[22:21\] = 0b10 (little endian),
    /// STALL_MODEL \[25:24\], TERM_MODEL \[26\], ST_LEVEL \[28:27\].
    pub fn idr0(&self) -> u32 {
        (self.s2p as u32)
            | (self.s1p as u32) << 1
            | 0b10 << 2
            | (self.cohacc as u32) << 4
            | (self.hyp as u32) << 9
            | (self.asid16 as u32) << 12
            | (self.msi as u32) << 13
            | (self.sev as u32) << 14
            | (self.vmid16 as u32) << 18
            | 0b10 << 21
            | ((self.stall_model as u32) & 3) << 24
            | (self.term_model as u32) << 26
            | (self.st_level_2 as u32) << 27
    }
    /// SMMU_IDR1 (6.3.2): SIDSIZE \[5:0\], SSIDSIZE \[10:6\] = 0, PRIQS \[15:11\] = 0,
    /// EVENTQS \[20:16\], CMDQS \[25:21\].
    pub fn idr1(&self) -> u32 {
        (self.sidsize as u32 & 0x3f)
            | (self.eventqs as u32 & 0x1f) << 16
            | (self.cmdqs as u32 & 0x1f) << 21
    }
    /// SMMU_IDR3 (6.3.4): HAD \[2\], RIL \[10\], BBML \[12:11\].
    pub fn idr3(&self) -> u32 {
        (self.had as u32) << 2 | (self.ril as u32) << 10 | (self.bbml as u32 & 3) << 11
    }
    /// SMMU_IDR5 (6.3.6): OAS \[2:0\], GRAN4K \[4\], GRAN16K \[5\], GRAN64K \[6\], VAX \[11:10\] = 0 (48 bit).
    pub fn idr5(&self) -> u32 {
        (self.oas as u32 & 7)
            | (self.gran4k as u32) << 4
            | (self.gran16k as u32) << 5
            | (self.gran64k as u32) << 6
    }
    /// The output address size in bits given by IDR5.OAS.
    pub fn oas_bits(&self) -> u32 {
        ips_bits(self.oas as u64)
    }
    /// ASID mask (8 or 16 bits).
    pub fn asid_mask(&self) -> u16 {
        if self.asid16 { 0xffff } else { 0xff }
    }
    /// VMID mask (8 or 16 bits).
    pub fn vmid_mask(&self) -> u16 {
        if self.vmid16 { 0xffff } else { 0xff }
    }
}

/// Decodes an IPS/OAS/PS encoding to a number of address bits (CD.IPS, 5.4; IDR5.OAS, 6.3.6).
/// 0b110 (52 bits) and the Reserved 0b111 are reported as 52 and capped by the caller to OAS.
pub fn ips_bits(enc: u64) -> u32 {
    match enc & 7 {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// Extracts bits [hi:lo] of `v`.
pub(crate) fn bits(v: u64, hi: u32, lo: u32) -> u64 {
    let width = hi - lo + 1;
    if width == 64 {
        v
    } else {
        (v >> lo) & ((1u64 << width) - 1)
    }
}

/// Whether bit `b` of `v` is set.
pub(crate) fn bit(v: u64, b: u32) -> bool {
    (v >> b) & 1 == 1
}

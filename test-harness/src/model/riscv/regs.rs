//! RISC-V IOMMU register map and the model's configuration (The RISC-V IOMMU Architecture
//! Specification 1.0, chapter 5 "Memory-mapped register interface").
//!
//! Offsets are relative to the base of the 4 KiB register block (5.1 "Register layout").

/// `capabilities` (5.3). 64-bit, RO.
pub const CAPABILITIES: usize = 0x00;
/// `fctl` (5.4). 32-bit.
pub const FCTL: usize = 0x08;
/// `ddtp` (5.5). 64-bit.
pub const DDTP: usize = 0x10;
/// `cqb` (5.6). 64-bit.
pub const CQB: usize = 0x18;
/// `cqh` (5.7). 32-bit, RO.
pub const CQH: usize = 0x20;
/// `cqt` (5.8). 32-bit.
pub const CQT: usize = 0x24;
/// `fqb` (5.9). 64-bit.
pub const FQB: usize = 0x28;
/// `fqh` (5.10). 32-bit.
pub const FQH: usize = 0x30;
/// `fqt` (5.11). 32-bit, RO.
pub const FQT: usize = 0x34;
/// `pqb` (5.12). 64-bit.
pub const PQB: usize = 0x38;
/// `pqh` (5.13). 32-bit.
pub const PQH: usize = 0x40;
/// `pqt` (5.14). 32-bit, RO.
pub const PQT: usize = 0x44;
/// `cqcsr` (5.15). 32-bit.
pub const CQCSR: usize = 0x48;
/// `fqcsr` (5.16). 32-bit.
pub const FQCSR: usize = 0x4c;
/// `pqcsr` (5.17). 32-bit.
pub const PQCSR: usize = 0x50;
/// `ipsr` (5.18). 32-bit, RW1C.
pub const IPSR: usize = 0x54;
/// `icvec` (5.27). 64-bit.
pub const ICVEC: usize = 0x2f8;
/// `msi_cfg_tbl` (5.28): 16 entries of `msi_addr` (64-bit), `msi_data`, `msi_vec_ctl`
/// (32-bit each).
pub const MSI_CFG_TBL: usize = 0x300;
/// End of the MSI configuration table.
pub const MSI_CFG_TBL_END: usize = 0x400;

/// `fctl.BE` (5.4).
pub const FCTL_BE: u32 = 1 << 0;
/// `fctl.WSI` (5.4).
pub const FCTL_WSI: u32 = 1 << 1;
/// `fctl.GXL` (5.4).
pub const FCTL_GXL: u32 = 1 << 2;

/// `ddtp.iommu_mode` mask (5.5).
pub const DDTP_MODE: u64 = 0xf;
/// `ddtp.busy` (5.5).
pub const DDTP_BUSY: u64 = 1 << 4;
/// `ddtp.PPN`, bits 53:10 (5.5).
pub const DDTP_PPN: u64 = ((1u64 << 44) - 1) << 10;
/// `iommu_mode` Off.
pub const MODE_OFF: u64 = 0;
/// `iommu_mode` Bare.
pub const MODE_BARE: u64 = 1;
/// `iommu_mode` 1LVL; 2LVL and 3LVL follow.
pub const MODE_1LVL: u64 = 2;

/// Queue base fields (5.6, 5.9, 5.12): `LOG2SZ-1` bits 4:0, `PPN` bits 53:10.
pub const QB_LOG2SZ: u64 = 0x1f;
/// Queue base `PPN` field in place.
pub const QB_PPN: u64 = ((1u64 << 44) - 1) << 10;

/// `cqcsr.cqen` (5.15).
pub const CQCSR_CQEN: u32 = 1 << 0;
/// `cqcsr.cie`.
pub const CQCSR_CIE: u32 = 1 << 1;
/// `cqcsr.cqmf` (RW1C).
pub const CQCSR_CQMF: u32 = 1 << 8;
/// `cqcsr.cmd_to` (RW1C).
pub const CQCSR_CMD_TO: u32 = 1 << 9;
/// `cqcsr.cmd_ill` (RW1C).
pub const CQCSR_CMD_ILL: u32 = 1 << 10;
/// `cqcsr.fence_w_ip` (RW1C).
pub const CQCSR_FENCE_W_IP: u32 = 1 << 11;
/// `cqcsr.cqon` (RO).
pub const CQCSR_CQON: u32 = 1 << 16;
/// `cqcsr.busy` (RO).
pub const CQCSR_BUSY: u32 = 1 << 17;
/// The `cqcsr` bits that stop command processing.
pub const CQCSR_ERRORS: u32 = CQCSR_CQMF | CQCSR_CMD_TO | CQCSR_CMD_ILL;
/// The RW1C bits of `cqcsr`.
pub const CQCSR_RW1C: u32 = CQCSR_ERRORS | CQCSR_FENCE_W_IP;

/// `fqcsr.fqen` (5.16).
pub const FQCSR_FQEN: u32 = 1 << 0;
/// `fqcsr.fie`.
pub const FQCSR_FIE: u32 = 1 << 1;
/// `fqcsr.fqmf` (RW1C).
pub const FQCSR_FQMF: u32 = 1 << 8;
/// `fqcsr.fqof` (RW1C).
pub const FQCSR_FQOF: u32 = 1 << 9;
/// `fqcsr.fqon` (RO).
pub const FQCSR_FQON: u32 = 1 << 16;
/// `fqcsr.busy` (RO).
pub const FQCSR_BUSY: u32 = 1 << 17;
/// The RW1C bits of `fqcsr`.
pub const FQCSR_RW1C: u32 = FQCSR_FQMF | FQCSR_FQOF;

/// `pqcsr.pqen` (5.17).
pub const PQCSR_PQEN: u32 = 1 << 0;
/// `pqcsr.pqon` (RO).
pub const PQCSR_PQON: u32 = 1 << 16;

/// `ipsr.cip` (5.18).
pub const IPSR_CIP: u32 = 1 << 0;
/// `ipsr.fip`.
pub const IPSR_FIP: u32 = 1 << 1;
/// `ipsr.pmip`.
pub const IPSR_PMIP: u32 = 1 << 2;
/// `ipsr.pip`.
pub const IPSR_PIP: u32 = 1 << 3;

/// What the modelled unit is, and how it behaves. ID fields should be set before a driver
/// probes; behaviour knobs may change at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiscvConfig {
    /// `capabilities.version` (0x10 = 1.0).
    pub version: u8,
    /// `capabilities.Sv32`.
    pub sv32: bool,
    /// `capabilities.Sv39`.
    pub sv39: bool,
    /// `capabilities.Sv48`.
    pub sv48: bool,
    /// `capabilities.Sv57`.
    pub sv57: bool,
    /// `capabilities.MSI_FLAT`: extended (64-byte) device contexts.
    pub msi_flat: bool,
    /// `capabilities.AMO_HWAD`: `DC.tc.SADE`/`GADE` may be 1 (the model still never updates
    /// A/D: a context enabling it is accepted and walks fault as if it were 0).
    pub amo_hwad: bool,
    /// `capabilities.ATS`.
    pub ats: bool,
    /// `capabilities.END`: `fctl.BE` writable.
    pub end: bool,
    /// `fctl.BE` at reset (when `end` is false it stays so).
    pub big_endian_at_reset: bool,
    /// `capabilities.IGS`: 0 MSI, 1 WSI, 2 both.
    pub igs: u8,
    /// `capabilities.PAS`.
    pub pas: u32,
    /// Supported `iommu_mode`s 1LVL, 2LVL, 3LVL (Off and Bare always are).
    pub ddt_levels: [bool; 3],
    /// Largest `LOG2SZ-1` + 1 the command queue accepts (WARL).
    pub cq_max_log2: u32,
    /// Largest `LOG2SZ-1` + 1 the fault queue accepts (WARL).
    pub fq_max_log2: u32,
    /// `ddtp.busy` reads 1 for this many reads after each write.
    pub ddtp_busy_reads: u32,
    /// `cqon`/`fqon` follow `cqen`/`fqen` only after this many reads of the CSR.
    pub queue_on_delay_reads: u32,
    /// Commands are processed only after this many reads of `cqh` following a `cqt` write.
    pub cq_delay_reads: u32,
    /// The command queue consumes nothing (a hung unit).
    pub cq_hung: bool,
    /// Invalidations take effect only when a later `IOFENCE.C` is processed (legal: only a
    /// fence's completion guarantees earlier commands completed, 3.1.2). When false they
    /// take effect as they are fetched.
    pub complete_invalidation_at_fence: bool,
    /// Writable bits of each `icvec` field (vectors supported = `2^icvec_bits`).
    pub icvec_bits: u32,
    /// Large leaves are cached as 4 KiB pieces, and an address-specific `IOTINVAL.VMA`
    /// removes only the piece holding its address (QEMU 10.0 `hw/riscv/riscv-iommu.c` keys
    /// its IOTLB by 4 KiB page and matches `ADDR` exactly). The spec asks for every entry
    /// holding a leaf for the address to go, so this is stricter on the driver: it must not
    /// rely on one address reaching a whole large leaf.
    pub splinter_leaves: bool,
}

impl RiscvConfig {
    /// What QEMU 10.0's `riscv-iommu-pci` reports (capabilities 0x78c2cf0f10 measured:
    /// version 1.0, Sv32/39/48/57 and the x4 modes, MSI_FLAT, MSI_MRIF, ATS, HPM, DBG, PAS
    /// 56, PD8, IGS = MSI), with every DDT mode supported and large leaves cached as 4 KiB
    /// pieces, as QEMU does.
    pub fn qemu() -> RiscvConfig {
        RiscvConfig {
            version: 0x10,
            sv32: true,
            sv39: true,
            sv48: true,
            sv57: true,
            msi_flat: true,
            amo_hwad: false,
            ats: true,
            end: false,
            big_endian_at_reset: false,
            igs: 0,
            pas: 56,
            ddt_levels: [true; 3],
            cq_max_log2: 20,
            fq_max_log2: 20,
            ddtp_busy_reads: 0,
            queue_on_delay_reads: 0,
            cq_delay_reads: 0,
            cq_hung: false,
            complete_invalidation_at_fence: true,
            icvec_bits: 4,
            splinter_leaves: true,
        }
    }

    /// `capabilities` encoded (5.3). Bits of features the model does not implement (MSI_MRIF,
    /// x4 modes, HPM, DBG, PDs) are 0.
    pub fn capabilities(&self) -> u64 {
        let b = |v: bool, bit: u32| u64::from(v) << bit;
        u64::from(self.version)
            | b(self.sv32, 8)
            | b(self.sv39, 9)
            | b(self.sv48, 10)
            | b(self.sv57, 11)
            | b(self.msi_flat, 22)
            | b(self.amo_hwad, 24)
            | b(self.ats, 25)
            | b(self.end, 27)
            | (u64::from(self.igs & 3) << 28)
            | (u64::from(self.pas & 0x3f) << 32)
    }

    /// Device-context size: 64 bytes with `MSI_FLAT`, else 32.
    pub fn dc_size(&self) -> u64 {
        if self.msi_flat { 64 } else { 32 }
    }
}

impl Default for RiscvConfig {
    fn default() -> Self {
        RiscvConfig::qemu()
    }
}

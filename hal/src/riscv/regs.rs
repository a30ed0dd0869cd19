//! RISC-V IOMMU register map: offsets and bit fields of the unit's 4 KiB register block.
//!
//! Section numbers refer to "The RISC-V IOMMU Architecture Specification", version 1.0,
//! chapter 5 ("Memory-mapped register interface"). 64-bit registers may be accessed with one
//! 64-bit access; 32-bit registers only with 32-bit accesses (chapter 6, "Reading and writing
//! IOMMU registers").

/// 5.3 `capabilities` (64-bit, RO).
pub const CAPABILITIES: usize = 0x00;
/// 5.4 `fctl`, features control (32-bit).
pub const FCTL: usize = 0x08;
/// 5.5 `ddtp`, device-directory-table pointer (64-bit).
pub const DDTP: usize = 0x10;
/// 5.6 `cqb`, command-queue base (64-bit).
pub const CQB: usize = 0x18;
/// 5.7 `cqh`, command-queue head (32-bit, RO).
pub const CQH: usize = 0x20;
/// 5.8 `cqt`, command-queue tail (32-bit).
pub const CQT: usize = 0x24;
/// 5.9 `fqb`, fault-queue base (64-bit).
pub const FQB: usize = 0x28;
/// 5.10 `fqh`, fault-queue head (32-bit).
pub const FQH: usize = 0x30;
/// 5.11 `fqt`, fault-queue tail (32-bit, RO).
pub const FQT: usize = 0x34;
/// 5.12 `pqb`, page-request-queue base (64-bit).
pub const PQB: usize = 0x38;
/// 5.15 `cqcsr`, command-queue control and status (32-bit).
pub const CQCSR: usize = 0x48;
/// 5.16 `fqcsr`, fault-queue control and status (32-bit).
pub const FQCSR: usize = 0x4c;
/// 5.17 `pqcsr`, page-request-queue control and status (32-bit).
pub const PQCSR: usize = 0x50;
/// 5.18 `ipsr`, interrupt pending status (32-bit, RW1C).
pub const IPSR: usize = 0x54;
/// 5.27 `icvec`, interrupt cause to vector (64-bit).
pub const ICVEC: usize = 0x2f8;
/// 5.28 `msi_cfg_tbl`, the MSI configuration table: 16 entries of 16 bytes.
pub const MSI_CFG_TBL: usize = 0x300;
/// Size of the register block (5.1 "Register layout").
pub const REG_SIZE: usize = 0x1000;

/// Extracts `width` bits of `v` starting at bit `lo`.
#[inline]
pub const fn bits(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

/// `capabilities` (5.3), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cap(pub u64);

/// `capabilities.IGS` encodings (5.3): how the unit can signal interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Igs {
    /// 0: message-signalled interrupts only.
    Msi,
    /// 1: wire-signalled interrupts only.
    Wsi,
    /// 2: both; `fctl.WSI` selects.
    Both,
    /// 3: reserved.
    Reserved,
}

impl Cap {
    /// `version` (bits 7:0): major version in bits 7:4, minor in 3:0; 0x10 is 1.0.
    pub const fn version(self) -> u8 {
        bits(self.0, 0, 8) as u8
    }
    /// `Sv32` (bit 8): first-stage Sv32 (with `DC.tc.SXL` = 1).
    pub const fn sv32(self) -> bool {
        bits(self.0, 8, 1) != 0
    }
    /// `Sv39` (bit 9): first-stage Sv39.
    pub const fn sv39(self) -> bool {
        bits(self.0, 9, 1) != 0
    }
    /// `Sv48` (bit 10): first-stage Sv48.
    pub const fn sv48(self) -> bool {
        bits(self.0, 10, 1) != 0
    }
    /// `Sv57` (bit 11): first-stage Sv57.
    pub const fn sv57(self) -> bool {
        bits(self.0, 11, 1) != 0
    }
    /// `MSI_FLAT` (bit 22): MSI address translation with flat MSI page tables; device
    /// contexts are in the 64-byte extended format when set, the 32-byte base format
    /// otherwise (2.1 "Device-Directory-Table").
    pub const fn msi_flat(self) -> bool {
        bits(self.0, 22, 1) != 0
    }
    /// `AMO_HWAD` (bit 24): the unit can set A/D bits itself (`DC.tc.SADE`/`GADE`).
    pub const fn amo_hwad(self) -> bool {
        bits(self.0, 24, 1) != 0
    }
    /// `ATS` (bit 25): PCIe ATS supported (the `ATS` command opcode is legal).
    pub const fn ats(self) -> bool {
        bits(self.0, 25, 1) != 0
    }
    /// `END` (bit 27): both endiannesses supported (`fctl.BE` writable).
    pub const fn end(self) -> bool {
        bits(self.0, 27, 1) != 0
    }
    /// `IGS` (bits 29:28): interrupt generation support.
    pub const fn igs(self) -> Igs {
        match bits(self.0, 28, 2) {
            0 => Igs::Msi,
            1 => Igs::Wsi,
            2 => Igs::Both,
            _ => Igs::Reserved,
        }
    }
    /// `PAS` (bits 37:32): physical address size in bits (32 to 56).
    pub const fn pas(self) -> u32 {
        bits(self.0, 32, 6) as u32
    }
}

/// `fctl` fields (5.4). Changes are allowed only while `ddtp.iommu_mode` is Off and every
/// queue is off.
pub mod fctl {
    /// Bit 0 `BE`: in-memory structures are big-endian. This driver needs 0.
    pub const BE: u32 = 1 << 0;
    /// Bit 1 `WSI`: interrupts are wire-signalled (else MSIs).
    pub const WSI: u32 = 1 << 1;
    /// Bit 2 `GXL`: second-stage Sv32x4 (and `DC.tc.SXL` must be 1). This driver needs 0.
    pub const GXL: u32 = 1 << 2;
}

/// `ddtp` fields and modes (5.5).
pub mod ddtp {
    /// Bits 3:0 `iommu_mode`.
    pub const MODE_MASK: u64 = 0xf;
    /// Bit 4 `busy`: a write to `ddtp` is still being processed; `ddtp` must not be written
    /// while it reads 1.
    pub const BUSY: u64 = 1 << 4;
    /// Bits 53:10 `PPN` of the root table.
    pub const PPN_SHIFT: u32 = 10;
    /// Mask of the `PPN` field in place.
    pub const PPN_MASK: u64 = ((1u64 << 44) - 1) << PPN_SHIFT;
    /// `iommu_mode` = Off: no inbound transaction is allowed (cause 256).
    pub const OFF: u64 = 0;
    /// `iommu_mode` = Bare: no translation or protection (never used by this driver).
    pub const BARE: u64 = 1;
    /// `iommu_mode` = 1LVL.
    pub const LVL1: u64 = 2;
    /// `iommu_mode` = 2LVL.
    pub const LVL2: u64 = 3;
    /// `iommu_mode` = 3LVL.
    pub const LVL3: u64 = 4;

    /// The `ddtp` value of a `levels`-level table (1 to 3) rooted at `root`.
    pub const fn value(levels: u32, root: u64) -> u64 {
        ((root >> 12) << PPN_SHIFT) & PPN_MASK | (LVL1 + levels as u64 - 1)
    }
}

/// Queue base registers `cqb`, `fqb` and `pqb` (5.6, 5.9, 5.12).
pub mod queue {
    /// Bits 4:0 `LOG2SZ-1`: the queue has `2^(LOG2SZ-1 + 1)` entries.
    pub const LOG2SZ_MASK: u64 = 0x1f;
    /// Bits 53:10 `PPN` of the queue's memory.
    pub const PPN_SHIFT: u32 = 10;
    /// Mask of the `PPN` field in place.
    pub const PPN_MASK: u64 = ((1u64 << 44) - 1) << PPN_SHIFT;

    /// The base register value of a queue of `2^log2` entries (`log2` >= 1) at `base`.
    pub const fn base(base: u64, log2: u32) -> u64 {
        (((base >> 12) << PPN_SHIFT) & PPN_MASK) | ((log2 as u64 - 1) & LOG2SZ_MASK)
    }
}

/// `cqcsr` fields (5.15).
pub mod cqcsr {
    /// Bit 0 `cqen`: enable; 0 -> 1 resets `cqh` and `cqt` to 0.
    pub const CQEN: u32 = 1 << 0;
    /// Bit 1 `cie`: command-queue interrupts enabled.
    pub const CIE: u32 = 1 << 1;
    /// Bit 8 `cqmf` (RW1C): a command-queue memory access faulted; the queue stalls until
    /// cleared.
    pub const CQMF: u32 = 1 << 8;
    /// Bit 9 `cmd_to` (RW1C): a command timed out; processing stopped until cleared.
    pub const CMD_TO: u32 = 1 << 9;
    /// Bit 10 `cmd_ill` (RW1C): an illegal or unsupported command at `cqh`; processing
    /// stopped until cleared.
    pub const CMD_ILL: u32 = 1 << 10;
    /// Bit 11 `fence_w_ip` (RW1C): an `IOFENCE.C` with `WSI` completed.
    pub const FENCE_W_IP: u32 = 1 << 11;
    /// The error bits that stop command processing.
    pub const ERRORS: u32 = CQMF | CMD_TO | CMD_ILL;
    /// Bit 16 `cqon` (RO): the queue is active.
    pub const CQON: u32 = 1 << 16;
    /// Bit 17 `busy` (RO): the queue is changing state; `cqb`/`cqcsr` must not be written.
    pub const BUSY: u32 = 1 << 17;
}

/// `fqcsr` fields (5.16).
pub mod fqcsr {
    /// Bit 0 `fqen`: enable.
    pub const FQEN: u32 = 1 << 0;
    /// Bit 1 `fie`: fault-queue interrupts enabled.
    pub const FIE: u32 = 1 << 1;
    /// Bit 8 `fqmf` (RW1C): a fault-queue memory access faulted; records are discarded
    /// while set.
    pub const FQMF: u32 = 1 << 8;
    /// Bit 9 `fqof` (RW1C): the queue was full and a record was discarded; further records
    /// are discarded while set.
    pub const FQOF: u32 = 1 << 9;
    /// The error bits that stop fault reporting.
    pub const ERRORS: u32 = FQMF | FQOF;
    /// Bit 16 `fqon` (RO): the queue is active.
    pub const FQON: u32 = 1 << 16;
    /// Bit 17 `busy` (RO): the queue is changing state.
    pub const BUSY: u32 = 1 << 17;
}

/// `pqcsr` fields (5.17): only `pqen` and `pqon` are used (the page-request queue stays
/// off).
pub mod pqcsr {
    /// Bit 0 `pqen`.
    pub const PQEN: u32 = 1 << 0;
    /// Bit 16 `pqon` (RO).
    pub const PQON: u32 = 1 << 16;
    /// Bit 17 `busy` (RO).
    pub const BUSY: u32 = 1 << 17;
}

/// `ipsr` bits (5.18), all RW1C.
pub mod ipsr {
    /// Bit 0 `cip`: command-queue interrupt pending.
    pub const CIP: u32 = 1 << 0;
    /// Bit 1 `fip`: fault-queue interrupt pending.
    pub const FIP: u32 = 1 << 1;
    /// Bit 2 `pmip`: performance-monitoring interrupt pending.
    pub const PMIP: u32 = 1 << 2;
    /// Bit 3 `pip`: page-request-queue interrupt pending.
    pub const PIP: u32 = 1 << 3;
    /// Every defined bit.
    pub const ALL: u32 = CIP | FIP | PMIP | PIP;
}

/// `icvec` fields (5.27): the vector of each interrupt cause, 4 bits each.
pub mod icvec {
    /// Bits 3:0 `civ`: command-queue interrupt vector.
    pub const CIV_SHIFT: u32 = 0;
    /// Bits 7:4 `fiv`: fault-queue interrupt vector.
    pub const FIV_SHIFT: u32 = 4;
    /// Bits 11:8 `pmiv`: performance-monitoring interrupt vector.
    pub const PMIV_SHIFT: u32 = 8;
    /// Bits 15:12 `piv`: page-request-queue interrupt vector.
    pub const PIV_SHIFT: u32 = 12;
}

/// The MSI configuration table (5.28): entry `v` holds `msi_addr` (64-bit, bits 55:2 of a
/// 4-byte aligned address), `msi_data` (32-bit) and `msi_vec_ctl` (32-bit, bit 0 `M` masks
/// the vector).
pub mod msi {
    /// Offset of `msi_addr_v`.
    pub const fn addr(v: usize) -> usize {
        super::MSI_CFG_TBL + 16 * v
    }
    /// Offset of `msi_data_v`.
    pub const fn data(v: usize) -> usize {
        super::MSI_CFG_TBL + 16 * v + 8
    }
    /// Offset of `msi_vec_ctl_v`.
    pub const fn vec_ctl(v: usize) -> usize {
        super::MSI_CFG_TBL + 16 * v + 12
    }
    /// `msi_addr` bits 55:2: the writable address bits.
    pub const ADDR_MASK: u64 = ((1u64 << 56) - 1) & !3;
    /// `msi_vec_ctl.M`: the vector is masked.
    pub const MASK: u32 = 1 << 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_capabilities_decode() {
        // QEMU 10.0 riscv-iommu-pci (measured): spec 1.0, Sv32/39/48/57 and the x4 modes,
        // MSI_FLAT and MSI_MRIF, ATS, HPM, DBG, PAS 56, PD8; MSI only.
        let c = Cap(0x78_c2cf_0f10);
        assert_eq!(c.version(), 0x10);
        assert!(c.sv32() && c.sv39() && c.sv48() && c.sv57());
        assert!(c.msi_flat());
        assert!(!c.amo_hwad());
        assert!(c.ats());
        assert!(!c.end());
        assert_eq!(c.igs(), Igs::Msi);
        assert_eq!(c.pas(), 56);
    }

    #[test]
    fn register_values() {
        assert_eq!(ddtp::value(3, 0x8000_1000), (0x80001 << 10) | 4);
        assert_eq!(ddtp::value(1, 0x1000), (1 << 10) | 2);
        assert_eq!(queue::base(0x8020_0000, 8), (0x80200 << 10) | 7);
        assert_eq!(queue::base(0x1000, 1), 1 << 10);
        assert_eq!(msi::addr(0), 0x300);
        assert_eq!(msi::data(1), 0x318);
        assert_eq!(msi::vec_ctl(15), 0x3fc);
    }
}

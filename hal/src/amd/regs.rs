//! AMD-Vi register map: the MMIO register block, and the IOMMU's PCI capability block.
//!
//! Source: AMD I/O Virtualization Technology (IOMMU) Specification, pub. 48882, rev. 3.x,
//! chapter 3 "Registers": the IOMMU Capability Block Registers in the IOMMU's PCI
//! configuration space (Capability Header, Base Address, Range, Miscellaneous Information),
//! and the MMIO registers (one 16 KiB block: control registers from offset 0000h, the
//! head/tail pointers and the status register from offset 2000h). Each register is named
//! next to its MMIO offset so the citation can be checked in any revision.
//!
//! 64-bit registers are accessed with 64-bit accesses; the pointers use bits 18:4 (a byte
//! offset into the buffer, 16-byte aligned).

/// Device Table Base Address Register (MMIO 0000h): DevTabBase (bits 51:12), Size (bits
/// 8:0, the table is `Size + 1` 4 KiB pages).
pub const DEVTAB_BASE: usize = 0x0000;
/// Command Buffer Base Address Register (MMIO 0008h): ComBase (bits 51:12), ComLen (bits
/// 59:56, `2^ComLen` entries of 16 bytes, at least 8).
pub const CMD_BASE: usize = 0x0008;
/// Event Log Base Address Register (MMIO 0010h): EventBase (bits 51:12), EventLen (bits
/// 59:56, `2^EventLen` entries of 16 bytes, at least 8).
pub const EVT_BASE: usize = 0x0010;
/// IOMMU Control Register (MMIO 0018h); bits in [`control`].
pub const CONTROL: usize = 0x0018;
/// IOMMU Exclusion Base Register (MMIO 0020h): ExEn (bit 0) and Allow (bit 1) make the
/// exclusion range bypass translation; this driver writes 0 (no exclusion range).
pub const EXCL_BASE: usize = 0x0020;
/// IOMMU Exclusion Range Limit Register (MMIO 0028h).
pub const EXCL_LIMIT: usize = 0x0028;
/// IOMMU Extended Feature Register (MMIO 0030h), valid when the capability header's EFRSup
/// is set; decoded by [`Efr`].
pub const EFR: usize = 0x0030;
/// Command Buffer Head Pointer Register (MMIO 2000h): CmdHeadPtr (bits 18:4), advanced by
/// the IOMMU.
pub const CMD_HEAD: usize = 0x2000;
/// Command Buffer Tail Pointer Register (MMIO 2008h): CmdTailPtr (bits 18:4), written by
/// software.
pub const CMD_TAIL: usize = 0x2008;
/// Event Log Head Pointer Register (MMIO 2010h): EventHeadPtr (bits 18:4), written by
/// software.
pub const EVT_HEAD: usize = 0x2010;
/// Event Log Tail Pointer Register (MMIO 2018h): EventTailPtr (bits 18:4), advanced by the
/// IOMMU.
pub const EVT_TAIL: usize = 0x2018;
/// IOMMU Status Register (MMIO 2020h); bits in [`status`].
pub const STATUS: usize = 0x2020;

/// Size of the MMIO register block the IOMMU decodes (16 KiB; the capability block's Base
/// Address Low register aligns the base to it).
pub const MMIO_SIZE: usize = 0x4000;

/// Head and tail pointer registers: the byte offset of an entry in bits 18:4.
pub const PTR_MASK: u64 = 0x7_fff0;
/// Base address fields of the table and buffer base registers: bits 51:12.
pub const BASE_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Extracts `width` bits of `v` starting at bit `lo`.
#[inline]
pub const fn bits(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

/// The Device Table Base Address Register value for a table of `pages` 4 KiB pages (1 to 512)
/// at `base`.
pub const fn devtab_base(base: u64, pages: u32) -> u64 {
    (base & BASE_MASK) | ((pages.saturating_sub(1) & 0x1ff) as u64)
}

/// The Command Buffer / Event Log Base Address Register value for a buffer of `2^log2`
/// entries (ComLen / EventLen, bits 59:56) at `base`.
pub const fn buffer_base(base: u64, log2: u32) -> u64 {
    (base & BASE_MASK) | (((log2 & 0xf) as u64) << 56)
}

/// IOMMU Control Register bits (MMIO 0018h).
pub mod control {
    /// IommuEn (bit 0): translation and interrupt remapping are active.
    pub const IOMMU_EN: u64 = 1 << 0;
    /// HtTunEn (bit 1): HyperTransport tunnel translation.
    pub const HT_TUN_EN: u64 = 1 << 1;
    /// EventLogEn (bit 2): events are written to the event log.
    pub const EVENT_LOG_EN: u64 = 1 << 2;
    /// EventIntEn (bit 3): an interrupt is signalled when EventLogInt is set (new event, or
    /// the log overflowed).
    pub const EVENT_INT_EN: u64 = 1 << 3;
    /// ComWaitIntEn (bit 4): a COMPLETION_WAIT with `i` set raises an interrupt.
    pub const COM_WAIT_INT_EN: u64 = 1 << 4;
    /// InvTimeOut (bits 7:5): device IOTLB invalidation timeout (not used: no ATS).
    pub const INV_TIMEOUT_MASK: u64 = 0b111 << 5;
    /// Coherent (bit 10): the IOMMU's accesses to the device table, page tables, command
    /// buffer and event log snoop the processor caches.
    pub const COHERENT: u64 = 1 << 10;
    /// CmdBufEn (bit 12): the IOMMU fetches commands from the command buffer.
    pub const CMD_BUF_EN: u64 = 1 << 12;
    /// PPRLogEn (bit 13), PprIntEn (bit 14), PPREn (bit 15): peripheral page requests
    /// (never enabled here).
    pub const PPR_BITS: u64 = 0b111 << 13;
    /// GTEn (bit 16): guest translation (never enabled here).
    pub const GT_EN: u64 = 1 << 16;
    /// GAEn (bit 17): guest virtual APIC (never enabled here).
    pub const GA_EN: u64 = 1 << 17;
}

/// IOMMU Status Register bits (MMIO 2020h).
pub mod status {
    /// EventOverflow (bit 0, RW1C): an event could not be logged because the log was full;
    /// the IOMMU stopped logging.
    pub const EVENT_OVERFLOW: u64 = 1 << 0;
    /// EventLogInt (bit 1, RW1C): an event was written (or the log overflowed) while
    /// EventIntEn was set.
    pub const EVENT_LOG_INT: u64 = 1 << 1;
    /// ComWaitInt (bit 2, RW1C): a COMPLETION_WAIT with `i` set completed.
    pub const COM_WAIT_INT: u64 = 1 << 2;
    /// EventLogRun (bit 3, RO): the event log is running.
    pub const EVENT_LOG_RUN: u64 = 1 << 3;
    /// CmdBufRun (bit 4, RO): the command buffer is running; cleared when CmdBufEn is
    /// cleared or when the IOMMU stops on a command error.
    pub const CMD_BUF_RUN: u64 = 1 << 4;
    /// PprOverflow (bit 5, RW1C), PprInt (bit 6, RW1C).
    pub const PPR_W1C: u64 = (1 << 5) | (1 << 6);
    /// The write-1-to-clear bits this driver acknowledges at bring-up.
    pub const W1C: u64 = EVENT_OVERFLOW | EVENT_LOG_INT | COM_WAIT_INT | PPR_W1C;
}

/// The IOMMU Extended Feature Register (MMIO 0030h), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Efr(pub u64);

impl Efr {
    /// PreFSup (bit 0): PREFETCH_IOMMU_PAGES supported.
    pub const fn pref_sup(self) -> bool {
        bits(self.0, 0, 1) != 0
    }
    /// PPRSup (bit 1): peripheral page requests supported.
    pub const fn ppr_sup(self) -> bool {
        bits(self.0, 1, 1) != 0
    }
    /// XTSup (bit 2): x2APIC interrupt delivery supported.
    pub const fn xt_sup(self) -> bool {
        bits(self.0, 2, 1) != 0
    }
    /// NXSup (bit 3): no-execute protection supported.
    pub const fn nx_sup(self) -> bool {
        bits(self.0, 3, 1) != 0
    }
    /// GTSup (bit 4): guest translation supported.
    pub const fn gt_sup(self) -> bool {
        bits(self.0, 4, 1) != 0
    }
    /// IASup (bit 6): INVALIDATE_IOMMU_ALL supported.
    pub const fn ia_sup(self) -> bool {
        bits(self.0, 6, 1) != 0
    }
    /// GASup (bit 7): guest virtual APIC supported.
    pub const fn ga_sup(self) -> bool {
        bits(self.0, 7, 1) != 0
    }
    /// HESup (bit 8): hardware error registers supported.
    pub const fn he_sup(self) -> bool {
        bits(self.0, 8, 1) != 0
    }
    /// PCSup (bit 9): performance counters supported.
    pub const fn pc_sup(self) -> bool {
        bits(self.0, 9, 1) != 0
    }
    /// HATS (bits 11:10): host address translation size, the most page-table levels the
    /// IOMMU walks: 00b 4 levels, 01b 5 levels, 10b 6 levels, 11b reserved.
    pub const fn hats(self) -> u32 {
        bits(self.0, 10, 2) as u32
    }
    /// The most host page-table levels (DTE Mode) HATS allows; `None` for the reserved
    /// encoding.
    pub const fn max_levels(self) -> Option<u8> {
        match self.hats() {
            0 => Some(4),
            1 => Some(5),
            2 => Some(6),
            _ => None,
        }
    }
    /// GATS (bits 13:12): guest address translation size.
    pub const fn gats(self) -> u32 {
        bits(self.0, 12, 2) as u32
    }
    /// DevTblSegSup (bits 39:38): device table segmentation supported (not used: one
    /// segment).
    pub const fn dev_tbl_seg_sup(self) -> u32 {
        bits(self.0, 38, 2) as u32
    }
    /// MsiCapMmioSup (bit 46): the MSI capability registers are mirrored in MMIO.
    pub const fn msi_cap_mmio_sup(self) -> bool {
        bits(self.0, 46, 1) != 0
    }
}

/// IOMMU Capability Block, offsets from the capability's position in the IOMMU's PCI
/// configuration space (the IVHD's Capability Offset).
pub mod cap {
    /// Capability Header (offset 00h); decoded by [`super::CapHeader`].
    pub const HEADER: u16 = 0x00;
    /// Base Address Low (offset 04h): Enable (bit 0), BaseAddress 31:14.
    pub const BASE_LOW: u16 = 0x04;
    /// Base Address High (offset 08h): BaseAddress 63:32.
    pub const BASE_HIGH: u16 = 0x08;
    /// Range Register (offset 0Ch): UnitID, RngValid, BusNumber, FirstDevice, LastDevice.
    pub const RANGE: u16 = 0x0c;
    /// Miscellaneous Information Register 0 (offset 10h); decoded by [`super::MiscInfo`].
    pub const MISC0: u16 = 0x10;
    /// CapID of the IOMMU capability: 0Fh (secure device).
    pub const ID: u8 = 0x0f;
    /// CapType of the IOMMU capability (bits 18:16 of the header): 011b.
    pub const TYPE_IOMMU: u32 = 0b011;
}

/// The IOMMU Capability Header (PCI capability block offset 00h), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CapHeader(pub u32);

impl CapHeader {
    /// CapID (bits 7:0): 0Fh for the IOMMU.
    pub const fn id(self) -> u8 {
        self.0 as u8
    }
    /// CapType (bits 18:16): 011b for the IOMMU.
    pub const fn cap_type(self) -> u32 {
        bits(self.0 as u64, 16, 3) as u32
    }
    /// CapRev (bits 23:19).
    pub const fn rev(self) -> u32 {
        bits(self.0 as u64, 19, 5) as u32
    }
    /// IotlbSup (bit 24): remote (device) IOTLBs supported.
    pub const fn iotlb_sup(self) -> bool {
        bits(self.0 as u64, 24, 1) != 0
    }
    /// HtTunnel (bit 25).
    pub const fn ht_tunnel(self) -> bool {
        bits(self.0 as u64, 25, 1) != 0
    }
    /// NpCache (bit 26): the IOMMU caches page-table entries that are not present, so a
    /// map must be invalidated too.
    pub const fn np_cache(self) -> bool {
        bits(self.0 as u64, 26, 1) != 0
    }
    /// EFRSup (bit 27): the Extended Feature Register is implemented.
    pub const fn efr_sup(self) -> bool {
        bits(self.0 as u64, 27, 1) != 0
    }
    /// Whether this is an IOMMU capability (CapID 0Fh, CapType 011b).
    pub const fn is_iommu(self) -> bool {
        self.id() == cap::ID && self.cap_type() == cap::TYPE_IOMMU
    }
}

/// Miscellaneous Information Register 0 (PCI capability block offset 10h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MiscInfo(pub u32);

impl MiscInfo {
    /// MsiNum (bits 4:0): the MSI message number the IOMMU uses for its event log and
    /// command completion interrupts.
    pub const fn msi_num(self) -> u32 {
        bits(self.0 as u64, 0, 5) as u32
    }
    /// PAsize (bits 14:8): physical address bits the IOMMU can reach (0: not reported).
    pub const fn pa_size(self) -> u32 {
        bits(self.0 as u64, 8, 7) as u32
    }
    /// VAsize (bits 21:15): input (virtual / IOVA) address bits the IOMMU translates (0: not
    /// reported).
    pub const fn va_size(self) -> u32 {
        bits(self.0 as u64, 15, 7) as u32
    }
}

/// The PCI MSI capability (PCI Local Bus Specification 3.0, section 6.8.1), through which the
/// IOMMU signals its interrupts.
pub mod msi {
    /// Capability ID of MSI.
    pub const ID: u8 = 0x05;
    /// Message Control (upper 16 bits of the first dword): MSI Enable (bit 0).
    pub const ENABLE: u32 = 1 << 16;
    /// Message Control: Multiple Message Enable (bits 6:4): 0 = one vector.
    pub const MME_MASK: u32 = 0b111 << 20;
    /// Message Control: 64-bit Address Capable (bit 7).
    pub const ADDR64: u32 = 1 << 23;
    /// Message Address (offset 04h).
    pub const ADDR_LO: u16 = 0x04;
    /// Message Upper Address (offset 08h, 64-bit capable functions only).
    pub const ADDR_HI: u16 = 0x08;
    /// Message Data: offset 08h for 32-bit functions, 0Ch for 64-bit ones.
    pub const fn data(addr64: bool) -> u16 {
        if addr64 { 0x0c } else { 0x08 }
    }
}

/// PCI configuration header offsets used to walk the capability list (PCI Local Bus
/// Specification 3.0, section 6.7).
pub mod pci {
    /// Status register (upper 16 bits of dword 04h): Capabilities List (bit 4).
    pub const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
    /// Command/Status dword.
    pub const COMMAND: u16 = 0x04;
    /// Capabilities Pointer.
    pub const CAP_PTR: u16 = 0x34;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_values_decode() {
        // QEMU 10.0 amd-iommu: EFR = PREFETCH | PPR | GT | IA | GA | HE | GATS 2 | HATS 2.
        let efr = Efr((1 << 0)
            | (1 << 1)
            | (1 << 4)
            | (1 << 6)
            | (1 << 7)
            | (1 << 8)
            | (2 << 12)
            | (2 << 10));
        assert!(efr.ia_sup() && efr.pref_sup() && efr.he_sup());
        assert_eq!(efr.hats(), 2);
        assert_eq!(efr.max_levels(), Some(6));
        assert_eq!(Efr(0).max_levels(), Some(4));
        assert_eq!(Efr(3 << 10).max_levels(), None);
        // Capability header: CapID 0Fh, type 011b, rev 1, IotlbSup, HtTunnel, NpCache, EFRSup.
        let h = CapHeader(0x0f | (0b011 << 16) | (1 << 19) | (0xf << 24));
        assert!(h.is_iommu() && h.np_cache() && h.efr_sup() && h.iotlb_sup());
        assert_eq!(h.rev(), 1);
        // Misc 0: PAsize 40, VAsize 48.
        let m = MiscInfo((40 << 8) | (48 << 15) | 2);
        assert_eq!((m.pa_size(), m.va_size(), m.msi_num()), (40, 48, 2));
    }

    #[test]
    fn base_encodings() {
        assert_eq!(devtab_base(0x12_3000, 1), 0x12_3000);
        assert_eq!(devtab_base(0x20_0000, 512), 0x20_0000 | 0x1ff);
        assert_eq!(buffer_base(0x5000, 8), 0x5000 | (8 << 56));
    }
}

//! The model's register map: the MMIO block and the IOMMU's PCI configuration space, and
//! how a unit is configured.
//!
//! Offsets and fields from the AMD IOMMU specification (pub. 48882, chapter 3 "Registers"):
//! MMIO 0000h Device Table Base, 0008h Command Buffer Base, 0010h Event Log Base, 0018h
//! Control, 0020h/0028h Exclusion Base/Limit, 0030h Extended Feature Register, 2000h/2008h
//! Command Buffer Head/Tail, 2010h/2018h Event Log Head/Tail, 2020h Status. In PCI
//! configuration space: the IOMMU capability block (Capability Header, Base Address Low/High,
//! Range, Miscellaneous Information 0) and an MSI capability (PCI Local Bus 3.0, 6.8.1).

/// MMIO 0000h: Device Table Base Address Register.
pub const MMIO_DEVTAB: usize = 0x0000;
/// MMIO 0008h: Command Buffer Base Address Register.
pub const MMIO_CMDBUF: usize = 0x0008;
/// MMIO 0010h: Event Log Base Address Register.
pub const MMIO_EVTLOG: usize = 0x0010;
/// MMIO 0018h: IOMMU Control Register.
pub const MMIO_CONTROL: usize = 0x0018;
/// MMIO 0020h: Exclusion Base Register.
pub const MMIO_EXCL_BASE: usize = 0x0020;
/// MMIO 0028h: Exclusion Range Limit Register.
pub const MMIO_EXCL_LIMIT: usize = 0x0028;
/// MMIO 0030h: Extended Feature Register.
pub const MMIO_EFR: usize = 0x0030;
/// MMIO 2000h: Command Buffer Head Pointer.
pub const MMIO_CMD_HEAD: usize = 0x2000;
/// MMIO 2008h: Command Buffer Tail Pointer.
pub const MMIO_CMD_TAIL: usize = 0x2008;
/// MMIO 2010h: Event Log Head Pointer.
pub const MMIO_EVT_HEAD: usize = 0x2010;
/// MMIO 2018h: Event Log Tail Pointer.
pub const MMIO_EVT_TAIL: usize = 0x2018;
/// MMIO 2020h: IOMMU Status Register.
pub const MMIO_STATUS: usize = 0x2020;

/// Control: IommuEn.
pub const CTL_IOMMU_EN: u64 = 1 << 0;
/// Control: EventLogEn.
pub const CTL_EVT_LOG_EN: u64 = 1 << 2;
/// Control: EventIntEn.
pub const CTL_EVT_INT_EN: u64 = 1 << 3;
/// Control: ComWaitIntEn.
pub const CTL_COMWAIT_INT_EN: u64 = 1 << 4;
/// Control: Coherent.
pub const CTL_COHERENT: u64 = 1 << 10;
/// Control: CmdBufEn.
pub const CTL_CMD_BUF_EN: u64 = 1 << 12;
/// Control bits the model implements or stores (IommuEn, HtTunEn, EventLogEn, EventIntEn,
/// ComWaitIntEn, InvTimeOut, PassPW, ResPassPW, Coherent, Isoc, CmdBufEn).
pub const CTL_KNOWN: u64 = 0x1fff;

/// Status: EventOverflow (RW1C).
pub const ST_EVT_OVERFLOW: u64 = 1 << 0;
/// Status: EventLogInt (RW1C).
pub const ST_EVT_INT: u64 = 1 << 1;
/// Status: ComWaitInt (RW1C).
pub const ST_COMWAIT_INT: u64 = 1 << 2;
/// Status: EventLogRun (RO).
pub const ST_EVT_RUN: u64 = 1 << 3;
/// Status: CmdBufRun (RO).
pub const ST_CMD_RUN: u64 = 1 << 4;
/// Status: PprOverflow (RW1C) and PprInt (RW1C); the model never sets them.
pub const ST_PPR_W1C: u64 = (1 << 5) | (1 << 6);
/// Status bits that are write-1-to-clear.
pub const ST_W1C: u64 = ST_EVT_OVERFLOW | ST_EVT_INT | ST_COMWAIT_INT | ST_PPR_W1C;

/// EFR: IASup (bit 6).
pub const EFR_IA: u64 = 1 << 6;
/// EFR: GTSup (bit 4).
pub const EFR_GT: u64 = 1 << 4;
/// EFR: PreFSup (bit 0).
pub const EFR_PREF: u64 = 1 << 0;
/// EFR: PPRSup (bit 1).
pub const EFR_PPR: u64 = 1 << 1;
/// EFR: HATS (bits 11:10).
pub const EFR_HATS_SHIFT: u32 = 10;

/// QEMU 10.0's amd-iommu EFR (measured 0x29d3, and in the IVRS EFR image): PreFSup, PPRSup,
/// GTSup, IASup, GASup, HESup, HATS = 10b (6 levels), GATS = 10b.
pub const QEMU_EFR: u64 =
    EFR_PREF | EFR_PPR | EFR_GT | EFR_IA | (1 << 7) | (1 << 8) | (2 << EFR_HATS_SHIFT) | (2 << 12);

/// The PCI configuration offset of the IOMMU capability block in the model.
pub const CAP_OFFSET: u16 = 0x40;
/// The PCI configuration offset of the MSI capability in the model.
pub const MSI_OFFSET: u16 = 0x60;

/// How the modelled unit is built. `AmdModelConfig::default()` is QEMU 10.0's amd-iommu as
/// far as a guest can see it (with an event log that works, unlike QEMU 10.0's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmdModelConfig {
    /// The Extended Feature Register.
    pub efr: u64,
    /// Capability header EFRSup: the EFR is implemented (else it reads 0).
    pub efr_sup: bool,
    /// Capability header NpCache: not-present translations are cached.
    pub np_cache: bool,
    /// Capability header IotlbSup.
    pub iotlb_sup: bool,
    /// Miscellaneous Information 0 PAsize.
    pub pa_size: u32,
    /// Miscellaneous Information 0 VAsize.
    pub va_size: u32,
    /// Whether the PCI function has an MSI capability (64-bit capable).
    pub msi: bool,
    /// STATUS reads before CmdBufRun / EventLogRun follow CmdBufEn / EventLogEn.
    pub run_delay_reads: u32,
    /// The command buffer consumes nothing (a hung unit).
    pub cmd_hung: bool,
    /// Events are written to the event log (QEMU 10.0: false, its log records nothing).
    pub log_events: bool,
    /// INVALIDATE_IOMMU_PAGES drops every IOTLB entry its range overlaps. Default false: only
    /// entries the range covers entirely, the conservative reading, so that a driver whose
    /// range cuts through a large page is caught.
    pub partial_range_invalidates: bool,
}

impl Default for AmdModelConfig {
    fn default() -> Self {
        AmdModelConfig {
            efr: QEMU_EFR,
            efr_sup: true,
            np_cache: true,
            iotlb_sup: true,
            // What QEMU 10.0.2 reports in Miscellaneous Information 0 (measured: 0x00182e00;
            // its GVAsize constant spills into PAsize, fixed in later releases).
            pa_size: 46,
            va_size: 48,
            msi: true,
            run_delay_reads: 0,
            cmd_hung: false,
            log_events: true,
            partial_range_invalidates: false,
        }
    }
}

impl AmdModelConfig {
    /// QEMU's unit (same as `default()`).
    pub fn qemu() -> Self {
        Self::default()
    }
    /// HATS: the most levels the unit walks (4, 5 or 6).
    pub fn with_max_levels(mut self, levels: u8) -> Self {
        let hats = u64::from(levels.clamp(4, 6) - 4);
        self.efr = (self.efr & !(3 << EFR_HATS_SHIFT)) | (hats << EFR_HATS_SHIFT);
        self
    }
    /// IASup: INVALIDATE_IOMMU_ALL.
    pub fn with_invalidate_all(mut self, on: bool) -> Self {
        if on {
            self.efr |= EFR_IA;
        } else {
            self.efr &= !EFR_IA;
        }
        self
    }
    /// NpCache.
    pub fn with_np_cache(mut self, on: bool) -> Self {
        self.np_cache = on;
        self
    }
    /// The capability header's EFRSup bit and the EFR value.
    pub fn with_efr(mut self, sup: bool, efr: u64) -> Self {
        self.efr_sup = sup;
        self.efr = efr;
        self
    }
    /// The most levels HATS allows.
    pub fn max_levels(&self) -> u8 {
        match (self.efr >> EFR_HATS_SHIFT) & 3 {
            0 => 4,
            1 => 5,
            _ => 6,
        }
    }
    /// The Capability Header dword: CapID 0Fh, CapPtr, CapType 011b, CapRev 00001b,
    /// IotlbSup (24), HtTunnel (25), NpCache (26), EFRSup (27).
    pub fn cap_header(&self) -> u32 {
        let next = if self.msi { u32::from(MSI_OFFSET) } else { 0 };
        0x0f | (next << 8)
            | (0b011 << 16)
            | (1 << 19)
            | (u32::from(self.iotlb_sup) << 24)
            | (1 << 25)
            | (u32::from(self.np_cache) << 26)
            | (u32::from(self.efr_sup) << 27)
    }
    /// Miscellaneous Information Register 0: MsiNum 0, PAsize (14:8), VAsize (21:15).
    pub fn misc0(&self) -> u32 {
        ((self.pa_size & 0x7f) << 8) | ((self.va_size & 0x7f) << 15)
    }
}

/// The model's PCI configuration space state (what software can change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciState {
    /// Command register (bit 2: Bus Master Enable).
    pub command: u16,
    /// MSI Message Control (bit 0: enable).
    pub msi_control: u16,
    /// MSI Message Address.
    pub msi_addr: u64,
    /// MSI Message Data.
    pub msi_data: u32,
    /// Base Address Low (Enable and BaseAddress 31:14; the model stores what is written).
    pub base_lo: u32,
    /// Base Address High.
    pub base_hi: u32,
}

/// A 32-bit read of configuration space at `off` for a unit built with `cfg`.
pub fn config_read(cfg: &AmdModelConfig, pci: &PciState, off: u16) -> u32 {
    let cap = CAP_OFFSET;
    match off {
        0x00 => 0x1419_1022,
        // Status bit 4: capability list.
        0x04 => u32::from(pci.command) | (1 << 20),
        // Class 08h (base system peripheral), subclass 06h (IOMMU).
        0x08 => 0x0806_0000,
        0x34 => u32::from(cap),
        o if o == cap => cfg.cap_header(),
        o if o == cap + 4 => pci.base_lo,
        o if o == cap + 8 => pci.base_hi,
        o if o == cap + 0x0c => 0,
        o if o == cap + 0x10 => cfg.misc0(),
        o if cfg.msi && o == MSI_OFFSET => 0x05 | (1 << 23) | (u32::from(pci.msi_control) << 16),
        o if cfg.msi && o == MSI_OFFSET + 4 => pci.msi_addr as u32,
        o if cfg.msi && o == MSI_OFFSET + 8 => (pci.msi_addr >> 32) as u32,
        o if cfg.msi && o == MSI_OFFSET + 12 => pci.msi_data,
        _ => 0,
    }
}

/// A 32-bit write of configuration space. Returns a note for writes to read-only places.
pub fn config_write(cfg: &AmdModelConfig, pci: &mut PciState, off: u16, v: u32) -> Option<String> {
    let cap = CAP_OFFSET;
    match off {
        // The status half is RW1C: writing zeros there changes nothing.
        0x04 => pci.command = v as u16,
        o if o == cap + 4 => pci.base_lo = v,
        o if o == cap + 8 => pci.base_hi = v,
        o if cfg.msi && o == MSI_OFFSET => {
            // Enable (bit 0) and Multiple Message Enable (6:4) of Message Control.
            pci.msi_control = ((v >> 16) as u16) & 0x71;
            if pci.msi_control & 0x70 != 0 {
                return Some(format!(
                    "MSI Multiple Message Enable {:#x} > 1 vector",
                    (v >> 20) & 7
                ));
            }
        }
        o if cfg.msi && o == MSI_OFFSET + 4 => {
            pci.msi_addr = (pci.msi_addr & !0xffff_ffff) | u64::from(v & !3)
        }
        o if cfg.msi && o == MSI_OFFSET + 8 => {
            pci.msi_addr = (pci.msi_addr & 0xffff_ffff) | (u64::from(v) << 32)
        }
        o if cfg.msi && o == MSI_OFFSET + 12 => pci.msi_data = v,
        _ => {
            return Some(format!(
                "configuration write of {v:#x} to read-only offset {off:#x}"
            ));
        }
    }
    None
}

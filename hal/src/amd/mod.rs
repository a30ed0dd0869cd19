//! AMD-Vi backend: DMA remapping through the device table and AMD v1 host page tables built
//! by [`crate::pagetable::PageTable`] with [`AmdV1`].
//!
//! Source: AMD I/O Virtualization Technology (IOMMU) Specification, pub. 48882, rev. 3.x.
//!
//! - [`regs`]: the MMIO registers and the IOMMU's PCI capability block (chapter 3).
//! - [`tables`]: the device table and its 256-bit entries (2.2.2).
//! - [`queue`]: the command buffer and its commands (2.4).
//! - [`fault`]: the event log and its records (2.5).
//! - this module: [`AmdUnit`] (one IOMMU, an IVHD) and [`AmdBackend`] (all units of a
//!   machine, implementing [`Backend`]).
//!
//! Hardware is reached only through [`RegisterAccess`] (the 16 KiB MMIO block), a
//! [`ConfigAccess`] to the IOMMU's own PCI function (its capability block and MSI
//! capability), [`PhysMem`] (device table, command buffer, event log, status word),
//! [`FrameAlloc`] and a [`DelayNs`] for bounded waits. Every wait gives up with
//! [`AmdError::Timeout`] after [`Timing::timeout_ns`]; no register value makes this code
//! panic.
//!
//! What the unit reports is read from the hardware: the Extended Feature Register (HATS: the
//! most page-table levels; IASup: INVALIDATE_IOMMU_ALL), the capability header (NpCache:
//! not-present entries are cached, so maps are invalidated too; EFRSup) and Miscellaneous
//! Information Register 0 (VAsize, PAsize). Leaves are 4 KiB, 2 MiB and 1 GiB: never
//! 512 GiB, which the v1 format could express but which AMD IOMMUs mistranslate (an erratum
//! Linux works around by leaving 512 GiB out of its page sizes too).
//!
//! Domain tags are DomainIDs (16 bits); DomainID 0 is the one blocked entries carry and is
//! never used for a domain.

pub mod fault;
pub mod queue;
pub mod regs;
pub mod tables;

use embedded_hal::delay::DelayNs;

#[cfg(doc)]
use crate::backend::Backend;
use crate::backend::{
    BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultRecord, UnitIndex, UnitInfo,
};
use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};
use crate::pagetable::format::AmdV1;
use crate::pagetable::{Format, Gather, LeafSizes};
use crate::units::{Unit, UnitBackend};
use fault::EventLog;
use queue::{Cmd, CmdBuffer};
use regs::{CapHeader, Efr, MiscInfo, cap, control, msi, status};
use tables::{DeviceTable, Dte, DteState};

/// What a bounded wait was waiting for (carried by [`AmdError::Timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WaitFor {
    /// CmdBufRun and EventLogRun to read 0 after the buffers were disabled.
    Stopped,
    /// CmdBufRun and EventLogRun to read 1 after the buffers were enabled.
    Running,
    /// A free slot in the command buffer.
    CmdSpace,
    /// The batch's COMPLETION_WAIT store.
    Completion,
}

/// Why an AMD-Vi operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AmdError {
    /// A bounded wait expired.
    Timeout(WaitFor),
    /// The command buffer stopped on the command at `index` (opcode `opcode`): an illegal
    /// command or one the IOMMU could not fetch. It was replaced by a harmless
    /// COMPLETION_WAIT and the buffer restarted; the batch's COMPLETION_WAIT completed.
    CommandError {
        /// Entry index of the command in the buffer.
        index: u16,
        /// Its opcode.
        opcode: u8,
    },
    /// The command buffer head pointer reads as something this driver did not produce.
    BadQueuePointer,
    /// No frame (or no contiguous run of frames) for the device table, command buffer, event
    /// log or status word.
    NoFrame,
    /// The unit index is out of range.
    BadUnit,
    /// The device id is beyond the unit's device table (or not a 16-bit DeviceID).
    BadDevice,
    /// The domain tag is 0 or above [`UnitInfo::max_tag`].
    BadTag,
    /// The domain's levels / address width are not supported by the unit, or its root is
    /// not a 4 KiB-aligned address within the unit's physical address width.
    BadDomain,
    /// The unit lacks something this driver needs (a usable HATS / VAsize, an IOMMU
    /// capability at the configured offset, an MSI capability for the event interrupt) or
    /// the request is not supported.
    Unsupported,
    /// Translation was enabled (IommuEn) before this driver took the unit: the device table
    /// cannot be replaced without a window in which DMA is not remapped.
    EnabledAtBoot,
    /// The backend already holds as many units as its capacity.
    TooManyUnits,
}

impl core::fmt::Display for WaitFor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            WaitFor::Stopped => "CmdBufRun and EventLogRun to clear",
            WaitFor::Running => "CmdBufRun and EventLogRun to be set",
            WaitFor::CmdSpace => "a free slot in the command buffer",
            WaitFor::Completion => "the COMPLETION_WAIT store",
        })
    }
}

impl core::fmt::Display for AmdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AmdError::Timeout(w) => write!(
                f,
                "AMD-Vi unit did not answer in time: waited for {w} (unit hung, or Timing too short)"
            ),
            AmdError::CommandError { index, opcode } => write!(
                f,
                "AMD-Vi command buffer stopped on command {index} (opcode {opcode:#x}); \
                 the command was skipped and the buffer restarted"
            ),
            AmdError::BadQueuePointer => {
                f.write_str("AMD-Vi command buffer head pointer outside the buffer")
            }
            AmdError::NoFrame => f.write_str(
                "no free frame (or contiguous frames) for the device table, command buffer or \
                 event log",
            ),
            AmdError::BadUnit => f.write_str("no AMD-Vi unit with that index"),
            AmdError::BadDevice => f.write_str("DeviceID beyond the unit's device table"),
            AmdError::BadTag => f.write_str("DomainID 0 or beyond what the unit allows"),
            AmdError::BadDomain => f.write_str(
                "domain's levels are beyond HATS or VAsize, or its root is unaligned or \
                 beyond the physical address width",
            ),
            AmdError::Unsupported => f.write_str(
                "AMD-Vi unit lacks something this driver needs (HATS, VAsize, the IOMMU \
                 capability, an MSI capability) or the request is not supported",
            ),
            AmdError::EnabledAtBoot => f.write_str(
                "AMD-Vi translation was already enabled: the device table cannot be replaced \
                 without a window of untranslated DMA",
            ),
            AmdError::TooManyUnits => {
                f.write_str("the AMD-Vi backend holds as many units as it can")
            }
        }
    }
}

impl core::error::Error for AmdError {}

impl BackendError for AmdError {
    fn kind(&self) -> ErrorKind {
        match self {
            AmdError::Timeout(_) => ErrorKind::Timeout,
            AmdError::CommandError { .. } | AmdError::BadQueuePointer => ErrorKind::Hardware,
            AmdError::NoFrame => ErrorKind::NoFrame,
            AmdError::BadUnit | AmdError::BadDevice => ErrorKind::BadDevice,
            AmdError::BadTag
            | AmdError::BadDomain
            | AmdError::Unsupported
            | AmdError::EnabledAtBoot => ErrorKind::Unsupported,
            AmdError::TooManyUnits => ErrorKind::Other,
        }
    }
}

pub use crate::wait::Timing;
pub(crate) use crate::wait::poll;

impl crate::wait::WaitFor for WaitFor {
    type Error = AmdError;
    fn timed_out(self) -> AmdError {
        AmdError::Timeout(self)
    }
}

/// Access to the configuration space of the IOMMU's own PCI function (the IVHD's DeviceID),
/// where the IOMMU capability block and the MSI capability live. Offsets are byte offsets
/// into the function's configuration space, 4-byte aligned.
pub trait ConfigAccess {
    /// Reads the dword at `offset`.
    fn read32(&mut self, offset: u16) -> u32;
    /// Writes the dword at `offset`.
    fn write32(&mut self, offset: u16, value: u32);
}

/// For a unit whose PCI function is not reachable: reads give all ones (no function), writes
/// go nowhere. Such a unit is assumed to cache not-present entries and cannot signal an
/// event interrupt.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConfig;

impl ConfigAccess for NoConfig {
    fn read32(&mut self, _offset: u16) -> u32 {
        u32::MAX
    }
    fn write32(&mut self, _offset: u16, _value: u32) {}
}

/// What a unit is reached through: its MMIO register block and its PCI function.
#[derive(Debug)]
pub struct AmdRegs<R, C = NoConfig> {
    /// The 16 KiB MMIO register block.
    pub mmio: R,
    /// The IOMMU's PCI configuration space.
    pub config: C,
}

/// How a unit is brought up: what the platform learned from ACPI (IVRS) and the bounds of
/// every wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AmdConfig {
    /// Bounds of every wait.
    pub timing: Timing,
    /// The highest DeviceID that can reach the unit (IVRS: the highest DeviceID its IVHD
    /// device entries name; 0xffff for a "select all" entry or when it cannot be known). The
    /// device table holds an entry for every DeviceID up to it and nothing beyond, so a
    /// DeviceID above it must not exist behind the unit: this driver does not rely on what
    /// the IOMMU does with DeviceIDs outside its table.
    pub max_device_id: u16,
    /// Offset of the IOMMU capability in the unit's PCI function (IVHD Capability Offset);
    /// `None` when the function is not reachable ([`NoConfig`]).
    pub cap_offset: Option<u16>,
    /// The Extended Feature Register image from IVRS (IVHD types 11h and 40h), used when the
    /// capability header says the register is not implemented.
    pub efr_image: Option<u64>,
    /// Physical address bits from IVRS (IVinfo PASize), used when the capability block
    /// reports none.
    pub phys_width: Option<u32>,
    /// IVHD Flags: HtTunEn (bit 0), PassPW (bit 1), ResPassPW (bit 2) and Isoc (bit 3) are
    /// copied into the Control Register's fields of the same names, as firmware asks.
    pub ivhd_flags: u8,
}

impl Default for AmdConfig {
    fn default() -> Self {
        AmdConfig {
            timing: Timing::default(),
            max_device_id: 0xffff,
            cap_offset: None,
            efr_image: None,
            phys_width: None,
            ivhd_flags: 0,
        }
    }
}

/// The Control Register bits the IVHD Flags ask for (IVRS IVHD Flags; Control Register
/// HtTunEn bit 1, PassPW bit 8, ResPassPW bit 9, Isoc bit 11).
pub const fn control_from_ivhd_flags(flags: u8) -> u64 {
    let f = flags as u64;
    ((f & 1) << 1) | (((f >> 1) & 1) << 8) | (((f >> 2) & 1) << 9) | (((f >> 3) & 1) << 11)
}

/// Work counters of one unit, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AmdCounters {
    /// INVALIDATE_DEVTAB_ENTRY commands.
    pub inv_devtab: u64,
    /// INVALIDATE_IOMMU_PAGES commands naming a range (one page or a power-of-two block).
    pub inv_pages: u64,
    /// INVALIDATE_IOMMU_PAGES commands of a whole domain.
    pub inv_pages_domain: u64,
    /// INVALIDATE_IOMMU_ALL commands.
    pub inv_all: u64,
    /// COMPLETION_WAIT commands (one per batch).
    pub completion_waits: u64,
    /// Batches submitted.
    pub batches: u64,
    /// Waits that timed out.
    pub timeouts: u64,
    /// Command buffer stops recovered (illegal commands, command fetch errors).
    pub cmd_errors: u64,
    /// Other inconsistencies (a pointer register outside its buffer).
    pub hw_errors: u64,
    /// Device event records delivered as faults.
    pub faults: u64,
    /// Event records that were not device faults (command errors, IOTLB timeouts, ...).
    pub other_events: u64,
    /// ILLEGAL_COMMAND_ERROR and COMMAND_HARDWARE_ERROR records seen in the event log.
    pub cmd_error_events: u64,
    /// Event log overflows seen (records lost).
    pub overflows: u64,
}

impl AmdCounters {
    pub(crate) fn count_error(&mut self, e: AmdError) {
        match e {
            AmdError::Timeout(_) => self.timeouts += 1,
            AmdError::CommandError { .. } => self.cmd_errors += 1,
            _ => self.hw_errors += 1,
        }
    }
}

/// The address widths in order of preference: 48-bit (4 levels), 39-bit (3), 57-bit (5),
/// 64-bit (6).
const WIDTH_PREFERENCE: [u32; 4] = [48, 39, 57, 64];

/// The table address width for a unit walking at most `max_levels` levels and translating
/// `va_size` input bits: the preferred width both allow.
pub fn choose_addr_width(max_levels: u8, va_size: u32) -> Option<u32> {
    WIDTH_PREFERENCE
        .iter()
        .copied()
        .find(|&w| AmdV1::levels_for(w).is_some_and(|l| l <= max_levels) && w <= va_size)
}

/// Allocates `n` physically contiguous frames (ascending or descending allocation order),
/// trying at most `2 * n + 64` allocations. Frames that do not join the run are chained
/// through their first word while the search goes on and returned at the end; on failure
/// every frame goes back.
fn alloc_contiguous<M, A>(mem: &mut M, alloc: &mut A, n: u32) -> Option<PhysAddr>
where
    M: PhysMem + ?Sized,
    A: FrameAlloc + ?Sized,
{
    let n = u64::from(n.max(1));
    let (mut start, mut len) = (0u64, 0u64);
    let mut discard: Option<PhysAddr> = None;
    let park = |mem: &mut M, discard: &mut Option<PhysAddr>, f: PhysAddr| {
        mem.write_u64(f, discard.unwrap_or(0));
        *discard = Some(f);
    };
    let mut found = false;
    for _ in 0..(2 * n + 64) {
        let Some(f) = alloc.alloc_frame() else {
            break;
        };
        if f % PAGE_SIZE != 0 {
            alloc.free_frame(f);
            break;
        }
        if len > 0 && f == start + len * PAGE_SIZE {
            len += 1;
        } else if len > 0 && f.checked_add(PAGE_SIZE) == Some(start) {
            start = f;
            len += 1;
        } else {
            for i in 0..len {
                park(mem, &mut discard, start + i * PAGE_SIZE);
            }
            start = f;
            len = 1;
        }
        if len == n {
            found = true;
            break;
        }
    }
    if !found {
        for i in 0..len {
            alloc.free_frame(start + i * PAGE_SIZE);
        }
    }
    while let Some(f) = discard {
        let next = mem.read_u64(f);
        mem.write_u64(f, 0);
        alloc.free_frame(f);
        discard = (next != 0).then_some(next);
    }
    found.then_some(start)
}

/// One AMD IOMMU (one IVHD), brought up with every device blocked.
#[derive(Debug)]
pub struct AmdUnit<R, C = NoConfig> {
    regs: R,
    config: C,
    cap_offset: Option<u16>,
    efr: Efr,
    cap_header: Option<CapHeader>,
    misc: Option<MiscInfo>,
    max_levels: u8,
    va_size: u32,
    info: UnitInfo,
    table: DeviceTable,
    cmd: CmdBuffer,
    events: EventLog,
    timing: Timing,
    counters: AmdCounters,
    interrupt: Option<FaultInterrupt>,
}

impl<R: RegisterAccess, C: ConfigAccess> AmdUnit<R, C> {
    /// Brings a unit up (the sequence of 3.4 and the IOMMU initialisation the spec describes):
    /// 1. reads the capability header and Miscellaneous Information Register 0 (when the PCI
    ///    function is reachable) and the Extended Feature Register (when EFRSup, else the
    ///    IVRS image), refuses a unit whose translation is already on
    ///    ([`AmdError::EnabledAtBoot`]) or whose HATS / VAsize leave no usable width;
    /// 2. allocates the device table (contiguous pages for DeviceIDs up to
    ///    [`AmdConfig::max_device_id`]), the command buffer, the event log and a status frame,
    ///    and fills every DTE with [`Dte::blocked`] (an all-zero DTE would pass DMA through);
    /// 3. disables the buffers (waiting for CmdBufRun and EventLogRun to clear), acknowledges
    ///    stale status bits, programs the table, buffer and log bases with zero head and tail
    ///    pointers and no exclusion range;
    /// 4. enables translation, the command buffer and the event log in one Control write
    ///    (Coherent set, and the IVHD's HtTunEn / PassPW / ResPassPW / Isoc), waits for
    ///    CmdBufRun and EventLogRun, and invalidates every cache (INVALIDATE_IOMMU_ALL when
    ///    IASup, else every DTE and every DomainID), waiting for completion.
    ///
    /// If a frame cannot be allocated nothing is written to the unit and every frame obtained
    /// is returned. A failure after the unit was programmed leaves the frames with the unit.
    pub fn new<M, D, A>(
        regs: AmdRegs<R, C>,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: AmdConfig,
    ) -> Result<Self, AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let AmdRegs {
            mmio: mut r,
            config: mut pci,
        } = regs;
        let (cap_header, misc) = match config.cap_offset {
            Some(off) => {
                let h = CapHeader(pci.read32(off.wrapping_add(cap::HEADER)));
                if !h.is_iommu() {
                    return Err(AmdError::Unsupported);
                }
                (
                    Some(h),
                    Some(MiscInfo(pci.read32(off.wrapping_add(cap::MISC0)))),
                )
            }
            None => (None, None),
        };
        let efr = if cap_header.is_none_or(|h| h.efr_sup()) {
            Efr(r.read64(regs::EFR))
        } else {
            Efr(config.efr_image.unwrap_or(0))
        };
        if r.read64(regs::CONTROL) & control::IOMMU_EN != 0 {
            return Err(AmdError::EnabledAtBoot);
        }
        let max_levels = efr.max_levels().ok_or(AmdError::Unsupported)?;
        let va_size = misc.map_or(0, |m| m.va_size());
        let va_size = if va_size == 0 { 64 } else { va_size.min(64) };
        let addr_width = choose_addr_width(max_levels, va_size).ok_or(AmdError::Unsupported)?;
        let pa = misc.map_or(0, |m| m.pa_size());
        let phys_width = if pa != 0 {
            pa
        } else {
            config.phys_width.unwrap_or(AmdV1::OA_BITS)
        }
        .clamp(32, AmdV1::OA_BITS);
        let info = UnitInfo {
            addr_width,
            phys_width,
            // Never 512 GiB: AMD IOMMUs mistranslate v1 512 GiB pages (see module docs).
            leaf_sizes: LeafSizes::STANDARD,
            // A unit whose capability header cannot be read may cache not-present entries.
            caches_not_present: cap_header.is_none_or(|h| h.np_cache()),
            split_live_blocks: true,
            // Control.Coherent is set: the IOMMU's table, buffer and log accesses snoop.
            coherent_walk: true,
            max_tag: u16::MAX,
        };

        // Frames first, so that a shortage leaves the unit untouched.
        let pages = DeviceTable::pages_for(config.max_device_id);
        let table = alloc_contiguous(mem, alloc, pages).ok_or(AmdError::NoFrame)?;
        let mut frames = [0u64; 3];
        for i in 0..frames.len() {
            match alloc_contiguous(mem, alloc, 1) {
                Some(f) => frames[i] = f,
                None => {
                    for &f in &frames[..i] {
                        alloc.free_frame(f);
                    }
                    for p in 0..u64::from(pages) {
                        alloc.free_frame(table + p * PAGE_SIZE);
                    }
                    return Err(AmdError::NoFrame);
                }
            }
        }
        let table = DeviceTable::new(table, pages);
        table.block_all(mem);
        let mut unit = AmdUnit {
            regs: r,
            config: pci,
            cap_offset: config.cap_offset,
            efr,
            cap_header,
            misc,
            max_levels,
            va_size,
            info,
            table,
            cmd: CmdBuffer::new(frames[0], frames[2]),
            events: EventLog::new(frames[1]),
            timing: config.timing,
            counters: AmdCounters::default(),
            interrupt: None,
        };
        unit.bring_up(mem, delay, control_from_ivhd_flags(config.ivhd_flags))?;
        Ok(unit)
    }

    fn bring_up<M, D>(&mut self, mem: &mut M, delay: &mut D, platform: u64) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let r = &mut self.regs;
        r.write64(regs::CONTROL, control::COHERENT | platform);
        let run = status::CMD_BUF_RUN | status::EVENT_LOG_RUN;
        let res = poll(delay, self.timing, WaitFor::Stopped, || {
            Ok(r.read64(regs::STATUS) & run == 0)
        });
        if let Err(e) = res {
            self.counters.count_error(e);
            return Err(e);
        }
        let r = &mut self.regs;
        r.write64(regs::STATUS, status::W1C);
        r.write64(regs::DEVTAB_BASE, self.table.register());
        r.write64(regs::CMD_BASE, self.cmd.register());
        r.write64(regs::CMD_HEAD, 0);
        r.write64(regs::CMD_TAIL, 0);
        r.write64(regs::EVT_BASE, self.events.register());
        r.write64(regs::EVT_HEAD, 0);
        r.write64(regs::EVT_TAIL, 0);
        r.write64(regs::EXCL_BASE, 0);
        r.write64(regs::EXCL_LIMIT, 0);
        self.cmd.reset();
        self.events.reset();
        // The DTEs (all blocked) were written before: the Control write that enables
        // translation is ordered after them (RegisterAccess).
        r.write64(
            regs::CONTROL,
            control::COHERENT
                | platform
                | control::CMD_BUF_EN
                | control::EVENT_LOG_EN
                | control::IOMMU_EN,
        );
        let res = poll(delay, self.timing, WaitFor::Running, || {
            Ok(r.read64(regs::STATUS) & run == run)
        });
        if let Err(e) = res {
            self.counters.count_error(e);
            return Err(e);
        }
        if self.efr.ia_sup() {
            self.run(mem, delay, [Cmd::InvalidateAll])
        } else {
            let devices = self.table.entries();
            let dtes = (0..devices).map(|d| Cmd::InvalidateDte { device: d as u16 });
            let domains = (0..=u16::MAX).map(Cmd::domain);
            self.run(mem, delay, dtes.chain(domains))
        }
    }

    /// Submits `cmds` and a COMPLETION_WAIT, and waits.
    fn run<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        cmds: impl IntoIterator<Item = Cmd>,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.cmd.run(
            &mut self.regs,
            mem,
            delay,
            self.timing,
            self.info.coherent_walk,
            cmds,
            &mut self.counters,
        )
    }

    /// What the unit can do.
    pub fn info(&self) -> UnitInfo {
        self.info
    }
    /// The Extended Feature Register (or the IVRS image) as read at bring-up.
    pub fn efr(&self) -> Efr {
        self.efr
    }
    /// The capability header, when the PCI function was reachable.
    pub fn cap_header(&self) -> Option<CapHeader> {
        self.cap_header
    }
    /// Miscellaneous Information Register 0, when the PCI function was reachable.
    pub fn misc_info(&self) -> Option<MiscInfo> {
        self.misc
    }
    /// The most page-table levels the unit walks (HATS).
    pub fn max_levels(&self) -> u8 {
        self.max_levels
    }
    /// The device table.
    pub fn device_table(&self) -> DeviceTable {
        self.table
    }
    /// The command buffer frame.
    pub fn command_buffer(&self) -> PhysAddr {
        self.cmd.base()
    }
    /// The event log frame.
    pub fn event_log(&self) -> PhysAddr {
        self.events.base()
    }
    /// The interrupt the unit signals, once enabled.
    pub fn interrupt(&self) -> Option<FaultInterrupt> {
        self.interrupt
    }
    /// Work counters.
    pub fn counters(&self) -> AmdCounters {
        self.counters
    }
    /// The MMIO register access handle (for diagnostics).
    pub fn regs_mut(&mut self) -> &mut R {
        &mut self.regs
    }

    fn check_tag(&self, tag: u16) -> Result<(), AmdError> {
        if tag == 0 || tag > self.info.max_tag {
            return Err(AmdError::BadTag);
        }
        Ok(())
    }

    fn dte_pa(&self, device: u32) -> Result<PhysAddr, AmdError> {
        self.table.entry_pa(device).ok_or(AmdError::BadDevice)
    }

    /// Points `device` at `domain` (see [`Backend::attach`]). A device translated through
    /// another entry is first blocked (one store of DTE word 0) and that change invalidated
    /// with the old domain's pages and completed; then words 3..1 of the new entry are
    /// written and word 0 published last, and the DTE invalidated and completed. The
    /// invalidation is issued even when the entry already reads as wanted, so an earlier
    /// attach that failed before its invalidation completed is finished. The device never
    /// passes untranslated.
    pub fn attach<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let pa = self.dte_pa(device)?;
        self.check_tag(domain.tag)?;
        if AmdV1::levels_for(domain.addr_width) != Some(domain.levels)
            || domain.levels > self.max_levels
            || domain.addr_width > self.va_size
            || domain.root % PAGE_SIZE != 0
            || (self.info.phys_width < 64 && domain.root >> self.info.phys_width != 0)
        {
            return Err(AmdError::BadDomain);
        }
        let id = device as u16;
        let new = Dte::translated(domain.root, domain.levels, domain.tag);
        let cur = DeviceTable::read(mem, pa);
        if cur != new {
            // Live change: block first, and let nothing cached from the old entry (or its
            // domain) survive, before the new fields are written. An entry this driver did
            // not write is treated the same way.
            match cur.state() {
                DteState::Blocked => {}
                DteState::Translated { domain: old, .. } => {
                    DeviceTable::block(mem, pa);
                    self.run(
                        mem,
                        delay,
                        [Cmd::InvalidateDte { device: id }, Cmd::domain(old)],
                    )?;
                }
                DteState::PassThrough | DteState::Other => {
                    DeviceTable::block(mem, pa);
                    self.run(mem, delay, [Cmd::InvalidateDte { device: id }])?;
                }
            }
            DeviceTable::install(mem, pa, new);
        }
        self.run(mem, delay, [Cmd::InvalidateDte { device: id }])
    }

    /// Blocks `device` (see [`Backend::block`]): DTE word 0 becomes [`Dte::blocked`] in one
    /// store, then INVALIDATE_DEVTAB_ENTRY (and a whole-domain INVALIDATE_IOMMU_PAGES of the
    /// domain the entry named) and a COMPLETION_WAIT. Never short-cut: an entry that already
    /// reads as blocked is still invalidated and waited for.
    pub fn block<M, D>(&mut self, mem: &mut M, delay: &mut D, device: u32) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let pa = self.dte_pa(device)?;
        let cur = DeviceTable::read(mem, pa);
        DeviceTable::block(mem, pa);
        let id = device as u16;
        match cur.state() {
            DteState::Translated { domain, .. } => self.run(
                mem,
                delay,
                [Cmd::InvalidateDte { device: id }, Cmd::domain(domain)],
            ),
            _ => self.run(mem, delay, [Cmd::InvalidateDte { device: id }]),
        }
    }

    /// Invalidates what `gather` recorded for domain `tag` (see [`Backend::invalidate`]): one
    /// INVALIDATE_IOMMU_PAGES chosen by [`queue::pages_for_gather`] and one COMPLETION_WAIT;
    /// nothing for an empty gather. If the unit refuses the command, the whole domain is
    /// invalidated before the error is reported.
    pub fn invalidate<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
        gather: &Gather,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.check_tag(tag)?;
        if gather.is_empty() {
            return Ok(());
        }
        let cmd = queue::pages_for_gather(tag, gather, self.info.caches_not_present);
        match self.run(mem, delay, [cmd]) {
            Err(e @ AmdError::CommandError { .. }) => {
                self.run(mem, delay, [Cmd::domain(tag)])?;
                Err(e)
            }
            r => r,
        }
    }

    /// Invalidates every cached translation and page directory entry of domain `tag` and
    /// waits.
    pub fn invalidate_all<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.check_tag(tag)?;
        self.run(mem, delay, [Cmd::domain(tag)])
    }

    /// Finds the MSI capability of the unit's PCI function (a bounded walk of the capability
    /// list).
    fn msi_capability(&mut self) -> Option<u16> {
        self.cap_offset?;
        let cfg = &mut self.config;
        if cfg.read32(regs::pci::COMMAND) & regs::pci::STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut off = (cfg.read32(regs::pci::CAP_PTR) & 0xfc) as u16;
        for _ in 0..48 {
            if off < 0x40 {
                return None;
            }
            let h = cfg.read32(off);
            if h as u8 == msi::ID {
                return Some(off);
            }
            off = ((h >> 8) & 0xfc) as u16;
        }
        None
    }

    /// Programs the event-log interrupt (see [`Backend::enable_fault_interrupt`]): the MSI
    /// capability of the IOMMU's PCI function gets `address` / `data`, one vector and MSI
    /// Enable; the function's Bus Master Enable is set (a function without it may not send
    /// messages); then EventIntEn is set in the Control Register. The IOMMU then signals
    /// when it writes an event record or the log overflows (EventLogInt), and
    /// [`AmdUnit::drain_faults`] acknowledges EventLogInt. A wired interrupt, a unit whose
    /// PCI function is not reachable or has no MSI capability, or an address a 32-bit
    /// capability cannot hold is [`AmdError::Unsupported`], and nothing changes.
    pub fn enable_interrupt(&mut self, irq: FaultInterrupt) -> Result<(), AmdError> {
        let FaultInterrupt::Msi { address, data } = irq else {
            return Err(AmdError::Unsupported);
        };
        let off = self.msi_capability().ok_or(AmdError::Unsupported)?;
        let cfg = &mut self.config;
        let header = cfg.read32(off);
        let addr64 = header & msi::ADDR64 != 0;
        if !addr64 && address >> 32 != 0 {
            return Err(AmdError::Unsupported);
        }
        // Disabled while its address and data change.
        cfg.write32(off, header & !(msi::ENABLE | msi::MME_MASK));
        cfg.write32(off + msi::ADDR_LO, address as u32);
        if addr64 {
            cfg.write32(off + msi::ADDR_HI, (address >> 32) as u32);
        }
        cfg.write32(off + msi::data(addr64), data);
        cfg.write32(off, (header & !msi::MME_MASK) | msi::ENABLE);
        let command = cfg.read32(regs::pci::COMMAND);
        // The status half (RW1C) is written as zero: nothing there changes.
        cfg.write32(regs::pci::COMMAND, (command & 0xffff) | 0b100);
        let ctl = self.regs.read64(regs::CONTROL);
        self.regs
            .write64(regs::CONTROL, ctl | control::EVENT_INT_EN);
        self.interrupt = Some(irq);
        Ok(())
    }

    /// Drains the event log into `sink` (see [`Backend::drain_faults`] and
    /// [`EventLog::drain`]). Returns whether records were lost.
    pub fn drain_faults<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> bool
    where
        M: PhysMem + ?Sized,
    {
        let (lost, _) = self.events.drain(
            &mut self.regs,
            mem,
            self.info.coherent_walk,
            self.table,
            unit,
            sink,
            &mut self.counters,
        );
        lost
    }
}

/// The info reported for an out-of-range unit index when there is no unit at all.
const NO_UNIT: UnitInfo = UnitInfo {
    addr_width: 48,
    phys_width: 48,
    leaf_sizes: LeafSizes::SZ_4K,
    caches_not_present: true,
    split_live_blocks: true,
    coherent_walk: true,
    max_tag: 0,
};

/// All AMD-Vi units of a machine (up to `N`), sharing one physical-memory accessor and one
/// delay source; implements [`Backend`] with the v1 format [`AmdV1`] (the unit plumbing is
/// [`UnitBackend`]'s).
pub type AmdBackend<R, C, M, D, const N: usize> = UnitBackend<AmdUnit<R, C>, M, D, N>;

impl<R: RegisterAccess, C: ConfigAccess> Unit for AmdUnit<R, C> {
    type Format = AmdV1;
    type Error = AmdError;
    type Regs = AmdRegs<R, C>;
    type Config = AmdConfig;
    type Counters = AmdCounters;

    const NO_UNIT: UnitInfo = NO_UNIT;
    const BAD_UNIT: AmdError = AmdError::BadUnit;
    const TOO_MANY_UNITS: AmdError = AmdError::TooManyUnits;

    fn bring_up<M, D, A>(
        regs: AmdRegs<R, C>,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: AmdConfig,
    ) -> Result<Self, AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        AmdUnit::new(regs, mem, delay, alloc, config)
    }

    fn unit_info(&self) -> UnitInfo {
        self.info()
    }

    fn unit_counters(&self) -> AmdCounters {
        self.counters()
    }

    fn attach_device<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        _alloc: &mut dyn FrameAlloc,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.attach(mem, delay, device, domain)
    }

    fn block_device<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        device: u32,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.block(mem, delay, device)
    }

    fn invalidate_gather<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
        gather: &Gather,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate(mem, delay, tag, gather)
    }

    fn invalidate_tag<M, D>(&mut self, mem: &mut M, delay: &mut D, tag: u16) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate_all(mem, delay, tag)
    }

    fn enable_interrupt<M, D>(
        &mut self,
        _mem: &mut M,
        _delay: &mut D,
        irq: FaultInterrupt,
    ) -> Result<(), AmdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        AmdUnit::enable_interrupt(self, irq)
    }

    fn drain<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, AmdError>
    where
        M: PhysMem + ?Sized,
    {
        Ok(self.drain_faults(mem, unit, sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec as StdVec;

    #[test]
    fn widths_follow_hats_and_vasize() {
        assert_eq!(choose_addr_width(4, 64), Some(48));
        assert_eq!(choose_addr_width(6, 48), Some(48));
        assert_eq!(choose_addr_width(6, 40), Some(39));
        assert_eq!(choose_addr_width(3, 64), Some(39));
        assert_eq!(choose_addr_width(6, 32), None);
    }

    #[test]
    fn ivhd_flags_map_to_control() {
        assert_eq!(control_from_ivhd_flags(0), 0);
        assert_eq!(
            control_from_ivhd_flags(0b1111),
            (1 << 1) | (1 << 8) | (1 << 9) | (1 << 11)
        );
        assert_eq!(control_from_ivhd_flags(0xf0), 0);
    }

    #[derive(Default)]
    struct Mem(std::collections::BTreeMap<u64, u64>);
    impl PhysMem for Mem {
        fn read_u64(&self, pa: u64) -> u64 {
            *self.0.get(&pa).unwrap_or(&0)
        }
        fn write_u64(&mut self, pa: u64, v: u64) {
            self.0.insert(pa, v);
        }
        fn order_writes(&mut self) {}
    }

    /// Hands out the frames of `order`, then nothing.
    struct List {
        order: StdVec<u64>,
        next: usize,
        freed: StdVec<u64>,
    }
    impl FrameAlloc for List {
        fn alloc_frame(&mut self) -> Option<u64> {
            let f = *self.order.get(self.next)?;
            self.next += 1;
            Some(f)
        }
        fn free_frame(&mut self, pa: u64) {
            self.freed.push(pa);
        }
    }

    #[test]
    fn contiguous_runs() {
        let mut mem = Mem::default();
        let k = 0x1000;
        // Ascending with a gap: the run restarts after it; the frame before the gap goes back.
        let mut a = List {
            order: vec![k, 3 * k, 4 * k, 5 * k],
            next: 0,
            freed: vec![],
        };
        assert_eq!(alloc_contiguous(&mut mem, &mut a, 3), Some(3 * k));
        assert_eq!(a.freed, [k]);
        assert_eq!(mem.read_u64(k), 0, "chain word cleared");
        // Descending.
        let mut a = List {
            order: vec![9 * k, 8 * k, 7 * k],
            next: 0,
            freed: vec![],
        };
        assert_eq!(alloc_contiguous(&mut mem, &mut a, 3), Some(7 * k));
        // Not enough: everything goes back.
        let mut a = List {
            order: vec![k, 2 * k, 5 * k],
            next: 0,
            freed: vec![],
        };
        assert_eq!(alloc_contiguous(&mut mem, &mut a, 3), None);
        let mut f = a.freed.clone();
        f.sort();
        assert_eq!(f, [k, 2 * k, 5 * k]);
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            AmdError::Timeout(WaitFor::Completion).kind(),
            ErrorKind::Timeout
        );
        assert_eq!(
            AmdError::CommandError {
                index: 0,
                opcode: 9
            }
            .kind(),
            ErrorKind::Hardware
        );
        assert_eq!(AmdError::NoFrame.kind(), ErrorKind::NoFrame);
        assert_eq!(AmdError::BadDevice.kind(), ErrorKind::BadDevice);
        assert_eq!(AmdError::EnabledAtBoot.kind(), ErrorKind::Unsupported);
    }
}

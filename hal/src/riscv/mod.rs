//! RISC-V IOMMU backend (The RISC-V IOMMU Architecture Specification, version 1.0):
//! first-stage translation through a device directory table, one device context per device,
//! a PSCID per domain, second stage Bare, and Sv39/Sv48/Sv57 tables built by
//! [`crate::pagetable::PageTable`] with [`RiscvSv`].
//!
//! - [`regs`]: the register map (chapter 5).
//! - [`tables`]: the device directory table and device contexts (chapter 2).
//! - [`queue`]: the command queue, commands and invalidation planning (3.1).
//! - [`fault`]: the fault queue and fault records (3.2).
//! - this module: [`RiscvUnit`] (one IOMMU) and [`RiscvBackend`] (all IOMMUs of a machine,
//!   implementing [`Backend`] through [`UnitBackend`]).
//!
//! Hardware is reached only through [`RegisterAccess`] (MMIO), [`PhysMem`] (DDT, queues),
//! [`FrameAlloc`] and a [`DelayNs`] for bounded waits. Every wait gives up with
//! [`RiscvError::Timeout`] after [`Timing::timeout_ns`]; no register value makes this code
//! panic.
//!
//! Domain tags are PSCIDs: a device attached to domain `tag` has a device context with
//! `ta.PSCID = tag` and `iosatp` pointing at the domain's tables. The unit's address
//! translation caches are tagged by PSCID, so every change of a device context is followed by
//! `IODIR.INVAL_DDT` for the device and `IOTINVAL.VMA` for the PSCIDs involved, as chapter 6
//! ("Changing device directory table entry") asks.

pub mod fault;
pub mod queue;
pub mod regs;
pub mod tables;

use embedded_hal::delay::DelayNs;
use heapless::Vec;

#[cfg(doc)]
use crate::backend::Backend;
use crate::backend::{
    BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultRecord, UnitIndex, UnitInfo,
};
use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};
use crate::pagetable::format::RiscvSv;
use crate::pagetable::{Format, Gather, LeafSizes};
use crate::units::{Unit, UnitBackend};
use fault::FaultQueue;
use queue::{Cmd, CmdQueue};
use regs::{Cap, Igs, cqcsr, ddtp, fctl, fqcsr, ipsr, pqcsr};
use tables::{DcFormat, DcState, Ddt};

/// What a bounded wait was waiting for (carried by [`RiscvError::Timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WaitFor {
    /// `ddtp.busy` to clear (5.5).
    DdtpBusy,
    /// `cqcsr.busy` to clear (5.15).
    CqBusy,
    /// `cqcsr.cqon` to follow `cqen` (the value awaited).
    CqOn(bool),
    /// `fqcsr.busy` to clear (5.16).
    FqBusy,
    /// `fqcsr.fqon` to follow `fqen` (the value awaited).
    FqOn(bool),
    /// `pqcsr.pqon` to clear after `pqen` = 0 (5.17).
    PqOff,
    /// A free slot in the command queue.
    CqSpace,
    /// `cqh` to pass the batch's `IOFENCE.C`.
    CqFence,
}

/// Why a RISC-V IOMMU operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RiscvError {
    /// A bounded wait expired.
    Timeout(WaitFor),
    /// The command queue stopped on an error (`cqcsr` error bits given: `cmd_ill`, `cmd_to`,
    /// `cqmf`; 5.15). An illegal command (its `opcode` given) was replaced by an
    /// `IOFENCE.C`, the bits cleared and the queue resumed; the batch's fence completed.
    CommandError {
        /// The `cqcsr` error bits that were set.
        cqcsr: u32,
        /// Opcode of the illegal command (0 when `cmd_ill` was not set).
        opcode: u8,
    },
    /// The command queue was found off (`cqcsr.cqon` = 0) while a batch waited: the batch's
    /// commands may not have been executed. The queue was restarted.
    QueueOff,
    /// `cqh` reads as an index outside the queue: the queue state is not what this driver
    /// programmed.
    BadQueuePointer,
    /// No frame for the DDT, a DDT table or a queue.
    NoFrame,
    /// The unit index is out of range.
    BadUnit,
    /// The device id is wider than the unit's device directory resolves.
    BadDevice,
    /// The domain tag is 0 or above the unit's [`UnitInfo::max_tag`].
    BadTag,
    /// The domain's address width is not a first-stage mode the unit supports, or its root
    /// is not a 4 KiB-aligned address within the unit's physical address size.
    BadDomain,
    /// The unit lacks something this driver needs (version 1.x, Sv39/48/57, little-endian
    /// structures, a DDT mode for the device ids, the interrupt form asked for).
    Unsupported,
    /// The backend already holds as many units as its capacity.
    TooManyUnits,
}

impl core::fmt::Display for WaitFor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WaitFor::DdtpBusy => f.write_str("ddtp.busy to clear"),
            WaitFor::CqBusy => f.write_str("cqcsr.busy to clear"),
            WaitFor::CqOn(on) => write!(f, "cqcsr.cqon to read {}", u8::from(*on)),
            WaitFor::FqBusy => f.write_str("fqcsr.busy to clear"),
            WaitFor::FqOn(on) => write!(f, "fqcsr.fqon to read {}", u8::from(*on)),
            WaitFor::PqOff => f.write_str("pqcsr.pqon to clear"),
            WaitFor::CqSpace => f.write_str("a free slot in the command queue"),
            WaitFor::CqFence => f.write_str("cqh to pass the batch's IOFENCE.C"),
        }
    }
}

impl core::fmt::Display for RiscvError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RiscvError::Timeout(w) => write!(
                f,
                "RISC-V IOMMU did not answer in time: waited for {w} (unit hung, or Timing too \
                 short)"
            ),
            RiscvError::CommandError { cqcsr, opcode } => write!(
                f,
                "RISC-V IOMMU command queue stopped (cqcsr errors {cqcsr:#x}, opcode {opcode}); \
                 the command was replaced by a fence and the queue resumed"
            ),
            RiscvError::QueueOff => f.write_str(
                "RISC-V IOMMU command queue was found off; it was restarted, the batch may \
                 not have run",
            ),
            RiscvError::BadQueuePointer => {
                f.write_str("RISC-V IOMMU cqh is outside the queue this driver programmed")
            }
            RiscvError::NoFrame => {
                f.write_str("no free frame for a device directory table or a queue")
            }
            RiscvError::BadUnit => f.write_str("no RISC-V IOMMU unit with that index"),
            RiscvError::BadDevice => {
                f.write_str("device id is wider than the unit's device directory resolves")
            }
            RiscvError::BadTag => f.write_str("PSCID 0 or beyond the tags this driver uses"),
            RiscvError::BadDomain => f.write_str(
                "domain's address width is not a supported Sv39/48/57 mode, or its root is \
                 unaligned or beyond the physical address size",
            ),
            RiscvError::Unsupported => f.write_str(
                "RISC-V IOMMU lacks something this driver needs (version 1.x, Sv39/48/57, \
                 little-endian structures, a DDT mode for the device ids, the interrupt form \
                 asked for)",
            ),
            RiscvError::TooManyUnits => {
                f.write_str("the RISC-V IOMMU backend holds as many units as it can")
            }
        }
    }
}

impl core::error::Error for RiscvError {}

impl BackendError for RiscvError {
    fn kind(&self) -> ErrorKind {
        match self {
            RiscvError::Timeout(_) => ErrorKind::Timeout,
            RiscvError::CommandError { .. }
            | RiscvError::QueueOff
            | RiscvError::BadQueuePointer => ErrorKind::Hardware,
            RiscvError::NoFrame => ErrorKind::NoFrame,
            RiscvError::BadUnit | RiscvError::BadDevice => ErrorKind::BadDevice,
            RiscvError::BadTag | RiscvError::BadDomain | RiscvError::Unsupported => {
                ErrorKind::Unsupported
            }
            RiscvError::TooManyUnits => ErrorKind::Other,
        }
    }
}

pub use crate::wait::Timing;
pub(crate) use crate::wait::poll;

impl crate::wait::WaitFor for WaitFor {
    type Error = RiscvError;
    fn timed_out(self) -> RiscvError {
        RiscvError::Timeout(self)
    }
}

/// How a unit is brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RiscvConfig {
    /// Bounds of every wait.
    pub timing: Timing,
    /// Width of the device ids to support: 16 covers every PCI requester id; at most 24.
    /// The DDT gets the fewest levels resolving it that the unit supports.
    pub device_id_bits: u32,
    /// The first-stage address width domains are built for by default (39, 48 or 57); the
    /// widest supported one not above it is reported in [`UnitInfo::addr_width`].
    pub addr_width: u32,
    /// When the unit can signal interrupts both ways (`capabilities.IGS` = BOTH), use wires
    /// (`fctl.WSI` = 1) rather than MSIs. Ignored otherwise: the unit's only form is used.
    pub prefer_wired: bool,
    /// log2 of the command-queue entries (1 to 8; one 4 KiB frame holds 256).
    pub cq_log2: u32,
    /// log2 of the fault-queue records (1 to 7; one 4 KiB frame holds 128).
    pub fq_log2: u32,
}

impl Default for RiscvConfig {
    fn default() -> Self {
        RiscvConfig {
            timing: Timing::default(),
            device_id_bits: 16,
            addr_width: 48,
            prefer_wired: true,
            cq_log2: queue::MAX_LOG2_ENTRIES,
            fq_log2: fault::MAX_LOG2_ENTRIES,
        }
    }
}

/// Work counters of one unit, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RiscvCounters {
    /// `IODIR.INVAL_DDT` commands.
    pub iodir_ddt: u64,
    /// Address-specific `IOTINVAL.VMA` commands (`AV` = `PSCV` = 1).
    pub iotinval_addr: u64,
    /// Whole-PSCID `IOTINVAL.VMA` commands.
    pub iotinval_pscid: u64,
    /// `IOTINVAL.VMA` commands for every address space.
    pub iotinval_all: u64,
    /// `IOFENCE.C` commands (one per batch).
    pub fences: u64,
    /// Batches submitted.
    pub batches: u64,
    /// Waits that timed out.
    pub timeouts: u64,
    /// Command-queue errors recovered (`cmd_ill`, `cmd_to`, `cqmf`).
    pub cmd_errors: u64,
    /// Other hardware errors (queue found off, bad queue pointer).
    pub hw_errors: u64,
    /// Fault records drained.
    pub faults: u64,
    /// Drains that found records lost (`fqof`/`fqmf`).
    pub overflows: u64,
}

impl RiscvCounters {
    pub(crate) fn count_error(&mut self, e: RiscvError) {
        match e {
            RiscvError::Timeout(_) => self.timeouts += 1,
            RiscvError::CommandError { .. } => self.cmd_errors += 1,
            _ => self.hw_errors += 1,
        }
    }
}

/// The first-stage address widths `cap` supports, as [`LeafSizes`]-style bits: bit 39, 48, 57.
fn supported_widths(cap: Cap) -> [bool; 3] {
    [cap.sv39(), cap.sv48(), cap.sv57()]
}

/// What a unit with these capabilities offers (5.3): the widest of Sv39/48/57 it supports
/// not above `preferred` (else the narrowest it supports), output addresses of
/// `capabilities.PAS` bits (at most the 56 the Sv formats encode), 4 KiB / 2 MiB / 1 GiB
/// leaves, live block splits (a page-size demotion keeping the translation is allowed
/// without invalidating first: chapter 6, "Accessed (A)/Dirty (D) bit updates and page
/// promotions"), no caching of invalid entries ("Caching invalid entries"), coherent walks
/// (the architecture has no non-coherent mode), 16-bit tags (PSCIDs are 20 bits; tag 0 is
/// never used).
pub fn unit_info(cap: Cap, preferred: u32) -> Option<UnitInfo> {
    let ws = supported_widths(cap);
    let widths = [39u32, 48, 57];
    let addr_width = widths
        .iter()
        .zip(ws)
        .filter(|&(&w, ok)| ok && w <= preferred)
        .map(|(&w, _)| w)
        .next_back()
        .or_else(|| widths.iter().zip(ws).find(|&(_, ok)| ok).map(|(&w, _)| w))?;
    Some(UnitInfo {
        addr_width,
        phys_width: cap.pas().clamp(32, RiscvSv::OA_BITS),
        leaf_sizes: LeafSizes::STANDARD,
        caches_not_present: false,
        split_live_blocks: true,
        coherent_walk: true,
        max_tag: u16::MAX,
    })
}

/// One 4 KiB-aligned frame, or `None` (a misaligned frame goes back).
fn alloc_aligned<A: FrameAlloc + ?Sized>(alloc: &mut A) -> Option<PhysAddr> {
    let f = alloc.alloc_frame()?;
    if f % PAGE_SIZE != 0 {
        alloc.free_frame(f);
        return None;
    }
    Some(f)
}

/// One RISC-V IOMMU, brought up with a device directory table in which every device is
/// blocked (`tc.V` = 0, its requests reported as "DDT entry not valid") until attached.
#[derive(Debug)]
pub struct RiscvUnit<R> {
    regs: R,
    cap: Cap,
    fctl: u32,
    info: UnitInfo,
    ddt: Ddt,
    cmdq: CmdQueue,
    fq: FaultQueue,
    timing: Timing,
    /// `cqcsr.cie` / `fqcsr.fie` are set (interrupts enabled).
    irq_enabled: bool,
    counters: RiscvCounters,
}

impl<R: RegisterAccess> RiscvUnit<R> {
    /// Brings a unit up, following chapter 6 "Guidelines for initialization":
    /// 1. reads `capabilities` and `fctl`; refuses a unit that is not version 1.x, has none of
    ///    Sv39/48/57, or has big-endian structures it cannot switch (`END` = 0);
    /// 2. allocates from `alloc` the DDT root, the command queue and the fault queue (a
    ///    shortage returns every frame and leaves the unit untouched);
    /// 3. turns the unit Off (`ddtp`) and its queues off if earlier software left them on,
    ///    then programs `fctl` (`BE` = 0, `GXL` = 0, `WSI` per `capabilities.IGS` and
    ///    [`RiscvConfig::prefer_wired`]) while everything is off, and `icvec` (every cause
    ///    on vector 0);
    /// 4. enables the command queue and the fault queue (interrupts off), clears `ipsr`;
    /// 5. points `ddtp` at the DDT with the fewest levels resolving
    ///    [`RiscvConfig::device_id_bits`] that the unit accepts (trying more levels when a
    ///    mode is not retained), and invalidates every cached DDT entry and translation
    ///    (`IODIR.INVAL_DDT` and `IOTINVAL.VMA` for all, then `IOFENCE.C`).
    ///
    /// A failure after the unit was programmed leaves the frames with the unit.
    pub fn new<M, D, A>(
        mut regs: R,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: RiscvConfig,
    ) -> Result<Self, RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let cap = Cap(regs.read64(regs::CAPABILITIES));
        if cap.version() >> 4 != 1 {
            return Err(RiscvError::Unsupported);
        }
        let info = unit_info(cap, config.addr_width).ok_or(RiscvError::Unsupported)?;
        let fctl_now = regs.read32(regs::FCTL);
        if fctl_now & fctl::BE != 0 && !cap.end() {
            return Err(RiscvError::Unsupported);
        }
        let wired = match cap.igs() {
            Igs::Msi => false,
            Igs::Wsi => true,
            Igs::Both => config.prefer_wired,
            Igs::Reserved => return Err(RiscvError::Unsupported),
        };
        let format = if cap.msi_flat() {
            DcFormat::Extended
        } else {
            DcFormat::Base
        };
        let levels = format
            .levels_for(config.device_id_bits)
            .ok_or(RiscvError::Unsupported)?;

        // Frames first, so that a shortage leaves the unit untouched.
        let root = alloc_aligned(alloc).ok_or(RiscvError::NoFrame)?;
        let Some(cq) = alloc_aligned(alloc) else {
            alloc.free_frame(root);
            return Err(RiscvError::NoFrame);
        };
        let Some(fq) = alloc_aligned(alloc) else {
            alloc.free_frame(cq);
            alloc.free_frame(root);
            return Err(RiscvError::NoFrame);
        };
        let mut unit = RiscvUnit {
            regs,
            cap,
            fctl: 0,
            info,
            ddt: Ddt {
                root,
                levels,
                format,
            },
            cmdq: CmdQueue::new(cq, config.cq_log2),
            fq: FaultQueue::new(fq, config.fq_log2),
            timing: config.timing,
            irq_enabled: false,
            counters: RiscvCounters::default(),
        };
        let r = unit.bring_up(mem, delay, wired);
        if let Err(e) = r {
            unit.counters.count_error(e);
        }
        r.map(|()| unit)
    }

    fn bring_up<M, D>(&mut self, mem: &mut M, delay: &mut D, wired: bool) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        // Off: every inbound transaction refused (cause 256) until the DDT is in place. The
        // caches the unit may keep across the change are invalidated once the queue runs.
        self.write_ddtp(delay, ddtp::OFF)?;
        self.stop_queues(delay)?;
        // BE = 0 (little-endian structures), GXL = 0 (Sv39/48/57), WSI as chosen; other
        // bits (custom) as found.
        let fields = fctl::BE | fctl::GXL | fctl::WSI;
        let want = (self.regs.read32(regs::FCTL) & !fields) | if wired { fctl::WSI } else { 0 };
        self.regs.write32(regs::FCTL, want);
        self.fctl = self.regs.read32(regs::FCTL);
        if self.fctl & fields != want & fields {
            return Err(RiscvError::Unsupported);
        }
        // Every cause on vector 0: one line (or one MSI) carries faults and queue errors.
        self.regs.write64(regs::ICVEC, 0);

        // Command queue (5.6, 5.8, 5.15).
        self.cmdq.reset();
        self.regs.write64(regs::CQB, self.cmdq.base_reg());
        self.regs.write32(regs::CQT, 0);
        self.regs.write32(regs::CQCSR, cqcsr::CQEN);
        self.poll_cqcsr(delay, WaitFor::CqOn(true), |v| v & cqcsr::CQON != 0)?;
        // Fault queue (5.9, 5.10, 5.16); stale error bits cleared with the enable.
        self.fq.reset();
        self.regs.write64(regs::FQB, self.fq.base_reg());
        self.regs.write32(regs::FQH, 0);
        self.regs.write32(regs::FQCSR, fqcsr::FQEN | fqcsr::ERRORS);
        self.poll_fqcsr(delay, WaitFor::FqOn(true), |v| v & fqcsr::FQON != 0)?;
        self.regs.write32(regs::IPSR, ipsr::ALL);

        // The DDT root is all zeros: every device blocked.
        mem.order_writes();
        let mut levels = self.ddt.levels;
        loop {
            self.write_ddtp(delay, ddtp::value(levels, self.ddt.root))?;
            let got = self.regs.read64(regs::DDTP);
            if got & ddtp::MODE_MASK == ddtp::LVL1 + u64::from(levels) - 1 {
                break;
            }
            // Not retained (5.5: iommu_mode is WARL); go back to Off and try more levels.
            self.write_ddtp(delay, ddtp::OFF)?;
            if levels == 3 {
                return Err(RiscvError::Unsupported);
            }
            levels += 1;
        }
        self.ddt.levels = levels;
        self.run(
            mem,
            delay,
            &[
                Cmd::IodirInvalDdt { did: None },
                Cmd::IotinvalVma {
                    pscid: None,
                    addr: None,
                },
            ],
        )
    }

    /// Writes `ddtp` once `busy` reads 0, then waits for `busy` to clear again (5.5).
    fn write_ddtp<D: DelayNs + ?Sized>(&mut self, delay: &mut D, v: u64) -> Result<(), RiscvError> {
        let regs = &mut self.regs;
        poll(delay, self.timing, WaitFor::DdtpBusy, || {
            Ok(regs.read64(regs::DDTP) & ddtp::BUSY == 0)
        })?;
        regs.write64(regs::DDTP, v);
        poll(delay, self.timing, WaitFor::DdtpBusy, || {
            Ok(regs.read64(regs::DDTP) & ddtp::BUSY == 0)
        })
    }

    fn poll_cqcsr<D: DelayNs + ?Sized>(
        &mut self,
        delay: &mut D,
        what: WaitFor,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), RiscvError> {
        let regs = &mut self.regs;
        poll(delay, self.timing, what, || {
            Ok(done(regs.read32(regs::CQCSR)))
        })
    }

    fn poll_fqcsr<D: DelayNs + ?Sized>(
        &mut self,
        delay: &mut D,
        what: WaitFor,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), RiscvError> {
        let regs = &mut self.regs;
        poll(delay, self.timing, what, || {
            Ok(done(regs.read32(regs::FQCSR)))
        })
    }

    /// Turns the command, fault and page-request queues off (each once its `busy` clears)
    /// and waits until they report off.
    fn stop_queues<D: DelayNs + ?Sized>(&mut self, delay: &mut D) -> Result<(), RiscvError> {
        self.poll_cqcsr(delay, WaitFor::CqBusy, |v| v & cqcsr::BUSY == 0)?;
        self.regs.write32(regs::CQCSR, 0);
        self.poll_cqcsr(delay, WaitFor::CqOn(false), |v| v & cqcsr::CQON == 0)?;
        self.poll_fqcsr(delay, WaitFor::FqBusy, |v| v & fqcsr::BUSY == 0)?;
        self.regs.write32(regs::FQCSR, 0);
        self.poll_fqcsr(delay, WaitFor::FqOn(false), |v| v & fqcsr::FQON == 0)?;
        let regs = &mut self.regs;
        poll(delay, self.timing, WaitFor::PqOff, || {
            Ok(regs.read32(regs::PQCSR) & pqcsr::BUSY == 0)
        })?;
        regs.write32(regs::PQCSR, 0);
        poll(delay, self.timing, WaitFor::PqOff, || {
            Ok(regs.read32(regs::PQCSR) & pqcsr::PQON == 0)
        })
    }

    /// Turns the command queue off and on again (5.15: enabling resets `cqh` and `cqt`):
    /// what is left after the queue was found off.
    fn restart_cq<D: DelayNs + ?Sized>(&mut self, delay: &mut D) -> Result<(), RiscvError> {
        self.poll_cqcsr(delay, WaitFor::CqBusy, |v| v & cqcsr::BUSY == 0)?;
        self.regs.write32(regs::CQCSR, 0);
        self.poll_cqcsr(delay, WaitFor::CqOn(false), |v| v & cqcsr::CQON == 0)?;
        self.cmdq.reset();
        self.regs.write64(regs::CQB, self.cmdq.base_reg());
        self.regs.write32(regs::CQT, 0);
        let cie = if self.irq_enabled { cqcsr::CIE } else { 0 };
        self.regs.write32(regs::CQCSR, cqcsr::CQEN | cie);
        self.poll_cqcsr(delay, WaitFor::CqOn(true), |v| v & cqcsr::CQON != 0)
    }

    /// Submits `cmds` and an `IOFENCE.C`, and waits for completion. A queue found off is
    /// restarted before the error is returned.
    fn run<M, D>(&mut self, mem: &mut M, delay: &mut D, cmds: &[Cmd]) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let r = self.cmdq.run(
            &mut self.regs,
            mem,
            delay,
            self.timing,
            self.irq_enabled,
            cmds,
            &mut self.counters,
        );
        if r == Err(RiscvError::QueueOff)
            && let Err(e) = self.restart_cq(delay)
        {
            self.counters.count_error(e);
        }
        r
    }

    /// What the unit can do.
    pub fn info(&self) -> UnitInfo {
        self.info
    }
    /// `capabilities` as read at bring-up.
    pub fn capabilities(&self) -> Cap {
        self.cap
    }
    /// `fctl` as programmed at bring-up.
    pub fn fctl(&self) -> u32 {
        self.fctl
    }
    /// Whether interrupts are wire-signalled (`fctl.WSI`).
    pub fn wired(&self) -> bool {
        self.fctl & fctl::WSI != 0
    }
    /// The device directory table.
    pub fn ddt(&self) -> Ddt {
        self.ddt
    }
    /// Work counters.
    pub fn counters(&self) -> RiscvCounters {
        self.counters
    }
    /// The register access handle (for diagnostics).
    pub fn regs_mut(&mut self) -> &mut R {
        &mut self.regs
    }

    fn check_tag(&self, tag: u16) -> Result<u32, RiscvError> {
        if tag == 0 || tag > self.info.max_tag {
            return Err(RiscvError::BadTag);
        }
        Ok(u32::from(tag))
    }

    fn check_device(&self, device: u32) -> Result<u32, RiscvError> {
        if !self.ddt.covers(device) {
            return Err(RiscvError::BadDevice);
        }
        Ok(device)
    }

    /// The `iosatp.MODE` for `domain`, if the unit supports its width and its root is usable.
    fn fsc_mode(&self, domain: &DomainConfig) -> Result<u64, RiscvError> {
        let ws = supported_widths(self.cap);
        let ok = match domain.addr_width {
            39 => ws[0],
            48 => ws[1],
            57 => ws[2],
            _ => false,
        };
        let mode = tables::fsc_mode(domain.addr_width).filter(|_| ok);
        match mode {
            Some(m)
                if RiscvSv::levels_for(domain.addr_width) == Some(domain.levels)
                    && domain.root % PAGE_SIZE == 0
                    && domain.root >> self.info.phys_width == 0 =>
            {
                Ok(m)
            }
            _ => Err(RiscvError::BadDomain),
        }
    }

    /// The `IOTINVAL.VMA` for a device context being replaced, if it named a PSCID.
    fn old_pscid_inval(state: DcState) -> Option<Cmd> {
        match state {
            DcState::FirstStage { pscid, .. } => Some(Cmd::IotinvalVma {
                pscid: Some(pscid),
                addr: None,
            }),
            // A context of another shape may have used any address space.
            DcState::Other => Some(Cmd::IotinvalVma {
                pscid: None,
                addr: None,
            }),
            DcState::Invalid => None,
        }
    }

    /// Allocates and links the DDT tables `device` lacks (see [`Backend::prepare`]); the
    /// new tables are all zeros, so the device stays blocked. Idempotent.
    pub fn prepare<M, A>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        device: u32,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let did = self.check_device(device)?;
        self.ddt
            .ensure(mem, alloc, did)
            .map(|_| ())
            .ok_or(RiscvError::NoFrame)
    }

    /// Points `device` at `domain` (see [`Backend::attach`]).
    ///
    /// Allocates from `alloc` the DDT tables the device lacks (first device of its range,
    /// unless [`RiscvUnit::prepare`] was called for it), linked before the context is
    /// written. Nothing is allocated per domain. A device context cannot change two doublewords
    /// in one store and the unit may read it at any time, so a live context naming another
    /// domain is replaced break-before-make (as chapter 6 "Guidelines for enabling and
    /// disabling ATS and/or PRI" does for a valid context): `tc.V` = 0 in one store, then
    /// `IODIR.INVAL_DDT` for the device, `IOTINVAL.VMA` of the old PSCID and `IOFENCE.C`; the
    /// device's DMA faults (cause 258) in between, never passes through and never reaches
    /// another domain. The new context is then written with `tc` last, and
    /// `IODIR.INVAL_DDT`, `IOTINVAL.VMA` of the new PSCID and `IOFENCE.C` follow ("Changing
    /// device directory table entry"). Attaching a device to the domain its context already
    /// names rewrites nothing and only invalidates the cached context.
    ///
    /// On failure the device is blocked, attached to `domain` (not known to be seen by the
    /// unit yet), or as before (a failure before anything was written).
    pub fn attach<M, D, A>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let did = self.check_device(device)?;
        let pscid = self.check_tag(domain.tag)?;
        let mode = self.fsc_mode(&domain)?;
        let pa = self
            .ddt
            .ensure(mem, alloc, did)
            .ok_or(RiscvError::NoFrame)?;
        let format = self.ddt.format;
        let new = tables::translating_dc(pscid, mode, domain.root);
        let iodir = Cmd::IodirInvalDdt { did: Some(did) };
        if tables::holds(mem, pa, &new, format) {
            return self.run(mem, delay, &[iodir]);
        }
        let cur = tables::read_state(mem, pa);
        if cur != DcState::Invalid {
            tables::invalidate_dc(mem, pa);
            let mut cmds: Vec<Cmd, 2> = Vec::new();
            let _ = cmds.push(iodir);
            if let Some(c) = Self::old_pscid_inval(cur) {
                let _ = cmds.push(c);
            }
            self.run(mem, delay, &cmds)?;
        }
        tables::write_dc(mem, pa, &new, format);
        self.run(
            mem,
            delay,
            &[
                iodir,
                Cmd::IotinvalVma {
                    pscid: Some(pscid),
                    addr: None,
                },
            ],
        )
    }

    /// Blocks `device` (see [`Backend::block`]): its device context becomes invalid
    /// (`tc.V` = 0) in one store, then `IODIR.INVAL_DDT` for the device, `IOTINVAL.VMA` of
    /// the PSCID the context named (if any) and `IOFENCE.C`, always, even when the context
    /// already reads invalid or the device has no DDT path yet: an earlier call may have
    /// cleared it and failed before the unit dropped its cached copy. The device's requests
    /// then fault with "DDT entry not valid" (cause 258), drained as
    /// [`crate::backend::FaultReason::Blocked`].
    pub fn block<M, D>(&mut self, mem: &mut M, delay: &mut D, device: u32) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let did = self.check_device(device)?;
        let mut cmds: Vec<Cmd, 2> = Vec::new();
        let _ = cmds.push(Cmd::IodirInvalDdt { did: Some(did) });
        if let Some(pa) = self.ddt.dc_pa(mem, did) {
            let cur = tables::read_state(mem, pa);
            if cur != DcState::Invalid {
                tables::invalidate_dc(mem, pa);
            }
            if let Some(c) = Self::old_pscid_inval(cur) {
                let _ = cmds.push(c);
            }
        }
        self.run(mem, delay, &cmds)
    }

    /// Invalidates what `gather` recorded for domain `tag` (see [`Backend::invalidate`]):
    /// one batch of `IOTINVAL.VMA` commands chosen by [`queue::iotinval_for_gather`] and one
    /// `IOFENCE.C`; nothing for an empty gather.
    pub fn invalidate<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
        gather: &Gather,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let pscid = self.check_tag(tag)?;
        if gather.is_empty() {
            return Ok(());
        }
        let cmds = queue::iotinval_for_gather(pscid, gather);
        match self.run(mem, delay, &cmds) {
            Err(e @ RiscvError::CommandError { .. }) => {
                // A command the unit refused was replaced by a fence: make sure nothing of
                // the gather stays cached (a whole-PSCID invalidation), then report.
                self.run(
                    mem,
                    delay,
                    &[Cmd::IotinvalVma {
                        pscid: Some(pscid),
                        addr: None,
                    }],
                )?;
                Err(e)
            }
            r => r,
        }
    }

    /// Invalidates every cached translation of PSCID `tag` (`IOTINVAL.VMA` with `PSCV` = 1,
    /// `AV` = 0) and waits.
    pub fn invalidate_all<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let pscid = self.check_tag(tag)?;
        self.run(
            mem,
            delay,
            &[Cmd::IotinvalVma {
                pscid: Some(pscid),
                addr: None,
            }],
        )
    }

    /// Programs and unmasks the unit's interrupt (see [`Backend::enable_fault_interrupt`]).
    /// Every cause is on vector 0 (`icvec` = 0, set at bring-up), so one wire or one MSI
    /// carries fault records, fault-queue overflow and command-queue errors.
    ///
    /// - [`FaultInterrupt::Wired`]: the unit must signal by wire (`fctl.WSI` = 1, chosen at
    ///   bring-up from `capabilities.IGS`); vector 0 is the unit's first interrupt line.
    /// - [`FaultInterrupt::Msi`]: the unit must signal by MSI (`fctl.WSI` = 0); `msi_cfg_tbl`
    ///   entry 0 gets the address (4-byte aligned, within 56 bits) and data, unmasked.
    ///
    /// Then `fqcsr.fie` and `cqcsr.cie` are set. Anything else is
    /// [`RiscvError::Unsupported`], and nothing changes.
    pub fn enable_interrupt<M>(
        &mut self,
        _mem: &mut M,
        irq: FaultInterrupt,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
    {
        match irq {
            FaultInterrupt::Wired if self.wired() => {}
            FaultInterrupt::Msi { address, data }
                if !self.wired() && address & !regs::msi::ADDR_MASK == 0 =>
            {
                self.regs.write64(regs::msi::addr(0), address);
                self.regs.write32(regs::msi::data(0), data);
                self.regs.write32(regs::msi::vec_ctl(0), 0);
            }
            _ => return Err(RiscvError::Unsupported),
        }
        self.irq_enabled = true;
        self.regs.write32(regs::FQCSR, fqcsr::FQEN | fqcsr::FIE);
        self.regs.write32(regs::CQCSR, cqcsr::CQEN | cqcsr::CIE);
        Ok(())
    }

    /// Drains the fault queue into `sink` (see [`Backend::drain_faults`]; the sequence is
    /// [`FaultQueue::drain`]'s) and acknowledges the interrupt. A command-queue error found
    /// pending (`cqcsr`, e.g. raised after a batch gave up waiting) is recovered and
    /// acknowledged (`ipsr.cip`) too, and reported as the call's error once the records were
    /// delivered. Returns whether records were lost.
    pub fn drain_faults<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, RiscvError>
    where
        M: PhysMem + ?Sized,
    {
        let csr = self.regs.read32(regs::CQCSR);
        let cq = queue::recover(
            &mut self.regs,
            mem,
            self.cmdq.base(),
            self.cmdq.log2_entries(),
            csr,
            self.irq_enabled,
        );
        self.regs.write32(regs::IPSR, ipsr::CIP);
        let d = self.fq.drain(
            &mut self.regs,
            mem,
            self.info.coherent_walk,
            self.irq_enabled,
            unit,
            sink,
        );
        self.counters.faults += d.records;
        if d.lost {
            self.counters.overflows += 1;
        }
        if let Err(e) = cq {
            self.counters.count_error(e);
            return Err(e);
        }
        Ok(d.lost)
    }
}

/// The info reported for an out-of-range unit index when there is no unit at all.
const NO_UNIT: UnitInfo = UnitInfo {
    addr_width: 48,
    phys_width: 56,
    leaf_sizes: LeafSizes::SZ_4K,
    caches_not_present: false,
    split_live_blocks: false,
    coherent_walk: true,
    max_tag: 0,
};

/// All RISC-V IOMMUs of a machine (up to `N`), sharing one physical-memory accessor and one
/// delay source; implements [`Backend`] with the [`RiscvSv`] format (the unit plumbing is
/// [`UnitBackend`]'s).
pub type RiscvBackend<R, M, D, const N: usize> = UnitBackend<RiscvUnit<R>, M, D, N>;

impl<R: RegisterAccess> Unit for RiscvUnit<R> {
    type Format = RiscvSv;
    type Error = RiscvError;
    type Regs = R;
    type Config = RiscvConfig;
    type Counters = RiscvCounters;

    const NO_UNIT: UnitInfo = NO_UNIT;
    const BAD_UNIT: RiscvError = RiscvError::BadUnit;
    const TOO_MANY_UNITS: RiscvError = RiscvError::TooManyUnits;

    fn bring_up<M, D, A>(
        regs: R,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: RiscvConfig,
    ) -> Result<Self, RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        RiscvUnit::new(regs, mem, delay, alloc, config)
    }

    fn unit_info(&self) -> UnitInfo {
        self.info()
    }

    fn unit_counters(&self) -> RiscvCounters {
        self.counters()
    }

    fn prepare_device<M>(
        &mut self,
        mem: &mut M,
        alloc: &mut dyn FrameAlloc,
        device: u32,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
    {
        self.prepare(mem, alloc, device)
    }

    fn attach_device<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut dyn FrameAlloc,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.attach(mem, delay, alloc, device, domain)
    }

    fn block_device<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        device: u32,
    ) -> Result<(), RiscvError>
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
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate(mem, delay, tag, gather)
    }

    fn invalidate_tag<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate_all(mem, delay, tag)
    }

    fn enable_interrupt<M, D>(
        &mut self,
        mem: &mut M,
        _delay: &mut D,
        irq: FaultInterrupt,
    ) -> Result<(), RiscvError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        RiscvUnit::enable_interrupt(self, mem, irq)
    }

    fn drain<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, RiscvError>
    where
        M: PhysMem + ?Sized,
    {
        self.drain_faults(mem, unit, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_from_capabilities() {
        let qemu = Cap(0x78_c2cf_0f10);
        let i = unit_info(qemu, 48).unwrap();
        assert_eq!((i.addr_width, i.phys_width), (48, 56));
        assert!(i.split_live_blocks && i.coherent_walk && !i.caches_not_present);
        assert_eq!(i.max_tag, u16::MAX);
        assert_eq!(unit_info(qemu, 57).unwrap().addr_width, 57);
        assert_eq!(unit_info(qemu, 39).unwrap().addr_width, 39);
        // Sv39 only, PAS 40.
        let small = Cap((40 << 32) | (1 << 9) | 0x10);
        let i = unit_info(small, 48).unwrap();
        assert_eq!((i.addr_width, i.phys_width), (39, 40));
        // Sv57 only: the narrowest supported when none is at or below the preference.
        assert_eq!(
            unit_info(Cap((48 << 32) | (1 << 11) | 0x10), 48)
                .unwrap()
                .addr_width,
            57
        );
        assert_eq!(unit_info(Cap(0x10 | (1 << 8)), 48), None, "Sv32 only");
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            RiscvError::Timeout(WaitFor::CqFence).kind(),
            ErrorKind::Timeout
        );
        assert_eq!(
            RiscvError::CommandError {
                cqcsr: cqcsr::CMD_ILL,
                opcode: 9
            }
            .kind(),
            ErrorKind::Hardware
        );
        assert_eq!(RiscvError::NoFrame.kind(), ErrorKind::NoFrame);
        assert_eq!(RiscvError::BadDevice.kind(), ErrorKind::BadDevice);
        assert_eq!(RiscvError::BadDomain.kind(), ErrorKind::Unsupported);
    }
}

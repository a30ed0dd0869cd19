//! Intel VT-d backend: DMA remapping in legacy mode (root table, context tables, second-level
//! page tables built by [`crate::pagetable::PageTable`] with [`VtdSl`]).
//!
//! - [`regs`]: the register map (VT-d spec 11.4).
//! - [`tables`]: root and context entries (VT-d spec 9.1, 9.3).
//! - [`queue`]: invalidation through the queue (VT-d spec 6.5.2) or the registers (6.5.1).
//! - [`fault`]: draining the fault recording registers (VT-d spec 7.2.1, 11.4.14) and the
//!   fault event interrupt (7.3, 11.4.10 to 11.4.13).
//! - this module: [`VtdUnit`] (one remapping unit, a DRHD) and [`VtdBackend`] (all units of a
//!   machine, implementing [`Backend`]).
//!
//! Hardware is reached only through [`RegisterAccess`] (MMIO), [`PhysMem`] (tables, queue and
//! status word in RAM), [`FrameAlloc`] and a [`DelayNs`] for bounded waits. Every wait gives up
//! with [`VtdError::Timeout`] after [`Timing::timeout_ns`]; no register value makes this code
//! panic.

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
use crate::pagetable::format::VtdSl;
use crate::pagetable::{Format, Gather, LeafSizes};
use crate::units::{Unit, UnitBackend};
use queue::{Inv, InvQueue};
use regs::{Cap, Ecap, gcmd};
use tables::{ContextEntry, Rid, RootTable};

/// What a bounded wait was waiting for (carried by [`VtdError::Timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WaitFor {
    /// A Global Status bit (the [`regs::gcmd`] bit given) to reach the commanded state.
    Gsts(u32),
    /// CCMD.ICC to clear (register-based context-cache invalidation).
    Ccmd,
    /// IOTLB.IVT to clear (register-based IOTLB invalidation).
    Iotlb,
    /// The invalidation wait descriptor's status write.
    Queue,
    /// Free slots in the invalidation queue.
    QueueSpace,
    /// The queue left enabled by earlier software to become idle (IQH = IQT).
    QueueIdle,
    /// PMEN.PRS to clear.
    Pmen,
}

/// Why a VT-d operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VtdError {
    /// A bounded wait expired.
    Timeout(WaitFor),
    /// The invalidation queue reported an error (FSTS.IQE/ICE/ITE, value of FSTS attached) or
    /// its head pointer is out of range; the queue was recovered where possible.
    QueueError {
        /// FSTS as read when the error was seen.
        fsts: u32,
    },
    /// A register-based invalidation completed with actual granularity 0 (not performed).
    InvalidationRejected,
    /// No frame for a root table, context table or queue.
    NoFrame,
    /// The unit index is out of range.
    BadUnit,
    /// The device id is not a 16-bit PCI requester id.
    BadDevice,
    /// The domain tag is 0 or above the unit's [`UnitInfo::max_tag`].
    BadTag,
    /// The domain's address width / levels are not supported by the unit, or its root is not
    /// a 4 KiB-aligned address within the unit's physical address width.
    BadDomain,
    /// The unit lacks something this driver needs (no usable SAGAW, register-based
    /// invalidation on a unit of version 6 or later without QI, registers outside the mapped
    /// register block, ...).
    Unsupported,
    /// The backend already holds as many units as its capacity.
    TooManyUnits,
}

impl core::fmt::Display for WaitFor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WaitFor::Gsts(bit) => write!(f, "GSTS to follow GCMD bit {bit:#010x}"),
            WaitFor::Ccmd => f.write_str("CCMD.ICC to clear (context-cache invalidation)"),
            WaitFor::Iotlb => f.write_str("IOTLB.IVT to clear (IOTLB invalidation)"),
            WaitFor::Queue => f.write_str("the invalidation wait descriptor's status write"),
            WaitFor::QueueSpace => f.write_str("a free slot in the invalidation queue"),
            WaitFor::QueueIdle => {
                f.write_str("the queue left enabled by earlier software to drain")
            }
            WaitFor::Pmen => f.write_str("PMEN.PRS to clear"),
        }
    }
}

impl core::fmt::Display for VtdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VtdError::Timeout(w) => write!(
                f,
                "VT-d unit did not answer in time: waited for {w} (unit hung, or Timing too short)"
            ),
            VtdError::QueueError { fsts } => write!(
                f,
                "VT-d invalidation queue error (FSTS {fsts:#x}): a descriptor was rejected; \
                 the queue was recovered"
            ),
            VtdError::InvalidationRejected => {
                f.write_str("VT-d register-based invalidation was not performed (granularity 0)")
            }
            VtdError::NoFrame => {
                f.write_str("no free frame for a VT-d root table, context table or queue")
            }
            VtdError::BadUnit => f.write_str("no VT-d unit with that index"),
            VtdError::BadDevice => f.write_str("device id is not a 16-bit PCI requester id"),
            VtdError::BadTag => f.write_str("domain id 0 or beyond what CAP.ND allows"),
            VtdError::BadDomain => f.write_str(
                "domain's address width is not in SAGAW, or its root is unaligned or beyond \
                 the host address width",
            ),
            VtdError::Unsupported => f.write_str(
                "VT-d unit lacks something this driver needs (SAGAW, QI on version 6+, \
                 registers within the mapped block) or the request is not supported",
            ),
            VtdError::TooManyUnits => f.write_str("the VT-d backend holds as many units as it can"),
        }
    }
}

impl core::error::Error for VtdError {}

impl BackendError for VtdError {
    fn kind(&self) -> ErrorKind {
        match self {
            VtdError::Timeout(_) => ErrorKind::Timeout,
            VtdError::QueueError { .. } | VtdError::InvalidationRejected => ErrorKind::Hardware,
            VtdError::NoFrame => ErrorKind::NoFrame,
            VtdError::BadUnit | VtdError::BadDevice => ErrorKind::BadDevice,
            VtdError::BadTag | VtdError::BadDomain | VtdError::Unsupported => {
                ErrorKind::Unsupported
            }
            VtdError::TooManyUnits => ErrorKind::Other,
        }
    }
}

pub use crate::wait::Timing;
pub(crate) use crate::wait::poll;

impl crate::wait::WaitFor for WaitFor {
    type Error = VtdError;
    fn timed_out(self) -> VtdError {
        VtdError::Timeout(self)
    }
}

/// How a unit is brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VtdConfig {
    /// Bounds of every wait.
    pub timing: Timing,
    /// Size in bytes of the mapped register block (the DRHD's register set); fault recording
    /// and IOTLB registers announced beyond it make the unit [`VtdError::Unsupported`].
    pub reg_size: usize,
    /// The host address width from the ACPI DMAR table (HAW + 1), reported as
    /// [`UnitInfo::phys_width`]; `None` uses CAP.MGAW + 1.
    pub host_addr_width: Option<u32>,
    /// Use the invalidation queue when ECAP.QI allows (otherwise the registers).
    pub use_queue: bool,
}

impl Default for VtdConfig {
    fn default() -> Self {
        VtdConfig {
            timing: Timing::default(),
            reg_size: 0x1000,
            host_addr_width: None,
            use_queue: true,
        }
    }
}

/// Work counters of one unit, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VtdCounters {
    /// Global context-cache invalidations.
    pub ctx_global: u64,
    /// Domain-selective context-cache invalidations.
    pub ctx_domain: u64,
    /// Device-selective context-cache invalidations.
    pub ctx_device: u64,
    /// Global IOTLB invalidations.
    pub iotlb_global: u64,
    /// Domain-selective IOTLB invalidations.
    pub iotlb_domain: u64,
    /// Page-selective IOTLB invalidations.
    pub iotlb_pages: u64,
    /// Completion waits (one per queue batch, one per register-based request).
    pub waits: u64,
    /// Write-buffer flushes (CAP.RWBF).
    pub write_buffer_flushes: u64,
    /// Waits that timed out.
    pub timeouts: u64,
    /// Queue errors and rejected invalidations.
    pub hw_errors: u64,
    /// Fault records drained.
    pub faults: u64,
}

impl VtdCounters {
    pub(crate) fn count_error(&mut self, e: VtdError) {
        match e {
            VtdError::Timeout(_) => self.timeouts += 1,
            _ => self.hw_errors += 1,
        }
    }
}

/// The AW codes in order of preference: 48-bit (4 levels), 39-bit (3), 57-bit (5).
const AW_PREFERENCE: [u32; 3] = [48, 39, 57];

/// Chooses the table address width from SAGAW (VT-d spec 11.4.2): the preferred width that
/// does not exceed MGAW + 1, else the preferred supported width at all.
pub fn choose_addr_width(cap: Cap) -> Option<u32> {
    let supported = |w: u32| tables::aw_code(w).is_some_and(|c| cap.sagaw() & (1 << c) != 0);
    AW_PREFERENCE
        .iter()
        .copied()
        .find(|&w| supported(w) && w <= cap.mgaw() + 1)
        .or_else(|| AW_PREFERENCE.iter().copied().find(|&w| supported(w)))
}

/// Domain ids the unit supports beyond the reserved 0: `2^(4 + 2 * ND) - 1` (VT-d spec
/// 11.4.2 ND; domain id 0 is reserved under caching mode and never used here).
pub fn max_domain_id(cap: Cap) -> u16 {
    let nd = cap.nd().min(6);
    ((1u32 << (4 + 2 * nd)) - 1) as u16
}

/// Second-level leaf sizes (VT-d spec 11.4.2 SLLPS): 4 KiB always, 2 MiB (bit 0), 1 GiB
/// (bit 1).
pub fn leaf_sizes(cap: Cap) -> LeafSizes {
    let mut s = LeafSizes::SZ_4K;
    if cap.sllps() & 1 != 0 {
        s = s.union(LeafSizes::SZ_2M);
    }
    if cap.sllps() & 2 != 0 {
        s = s.union(LeafSizes::SZ_1G);
    }
    s
}

/// One page-aligned frame from `alloc`, or `None` (a misaligned frame goes back).
fn aligned_frame<A: FrameAlloc + ?Sized>(alloc: &mut A) -> Option<PhysAddr> {
    let f = alloc.alloc_frame()?;
    if f % PAGE_SIZE != 0 {
        alloc.free_frame(f);
        return None;
    }
    Some(f)
}

/// One VT-d remapping unit (one DRHD), brought up in legacy translation mode.
#[derive(Debug)]
pub struct VtdUnit<R> {
    regs: R,
    version: u32,
    cap: Cap,
    ecap: Ecap,
    info: UnitInfo,
    root: RootTable,
    queue: Option<InvQueue>,
    iotlb_off: usize,
    fro_off: usize,
    nfr: u32,
    timing: Timing,
    counters: VtdCounters,
}

impl<R: RegisterAccess> VtdUnit<R> {
    /// Brings a unit up: reads VER/CAP/ECAP, allocates the root table (and, with queued
    /// invalidation, the queue and a status frame) from `alloc`, points the unit at the empty
    /// root table (every device blocked), enables queued invalidation when used, invalidates
    /// the context cache and IOTLB globally and enables translation.
    ///
    /// Translation left enabled by earlier software stays enabled: the root table pointer is
    /// replaced while translation is on (allowed by VT-d spec 11.4.4 SRTP), so there is never
    /// a window in which DMA is not remapped. A queue left enabled is drained and disabled
    /// before it is reprogrammed. Protected memory regions (PMEN) are disabled once
    /// translation is on.
    ///
    /// If a frame cannot be allocated nothing is written to the unit and every frame obtained
    /// is returned. A failure after the unit was programmed leaves the frames with the unit.
    pub fn new<M, D, A>(
        mut regs: R,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: VtdConfig,
    ) -> Result<Self, VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let version = regs.read32(regs::VER);
        let cap = Cap(regs.read64(regs::CAP));
        let ecap = Ecap(regs.read64(regs::ECAP));
        let addr_width = choose_addr_width(cap).ok_or(VtdError::Unsupported)?;
        let use_queue = config.use_queue && ecap.qi();
        // VT-d spec 6.5: hardware of major version 6 or later has no register-based
        // invalidation.
        if !use_queue && regs::ver::major(version) >= 6 {
            return Err(VtdError::Unsupported);
        }
        let fro_off = cap.fro() as usize * 16;
        let nfr = cap.nfr() + 1;
        if fro_off < 0x20 || fro_off + nfr as usize * regs::FRCD_SIZE > config.reg_size {
            return Err(VtdError::Unsupported);
        }
        let iotlb_off = ecap.iro() as usize * 16;
        if !use_queue && (iotlb_off < 0x20 || iotlb_off + 16 > config.reg_size) {
            return Err(VtdError::Unsupported);
        }
        let phys_width = config
            .host_addr_width
            .unwrap_or(cap.mgaw() + 1)
            .clamp(32, 64);
        let info = UnitInfo {
            addr_width,
            phys_width,
            leaf_sizes: leaf_sizes(cap),
            caches_not_present: cap.cm(),
            split_live_blocks: true,
            coherent_walk: ecap.c(),
            max_tag: max_domain_id(cap),
        };

        // Frames first, so that a shortage leaves the unit untouched.
        let mut frames: [Option<PhysAddr>; 3] = [None; 3];
        let wanted = if use_queue { 3 } else { 1 };
        for slot in frames.iter_mut().take(wanted) {
            match aligned_frame(alloc) {
                Some(f) => *slot = Some(f),
                None => {
                    for f in frames.iter().flatten() {
                        alloc.free_frame(*f);
                    }
                    return Err(VtdError::NoFrame);
                }
            }
        }
        let [Some(root), q, s] = frames else {
            return Err(VtdError::NoFrame);
        };
        let queue = match (q, s) {
            (Some(q), Some(s)) => Some(InvQueue::new(q, s)),
            _ => None,
        };
        let mut unit = VtdUnit {
            regs,
            version,
            cap,
            ecap,
            info,
            root: RootTable::new(root),
            queue,
            iotlb_off,
            fro_off,
            nfr,
            timing: config.timing,
            counters: VtdCounters::default(),
        };
        unit.bring_up(mem, delay)?;
        Ok(unit)
    }

    fn bring_up<M, D>(&mut self, mem: &mut M, delay: &mut D) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        if !self.info.coherent_walk {
            mem.sync_for_device(self.root.base(), PAGE_SIZE);
        }
        // Stale invalidation errors would be taken for ours (W1C).
        self.regs.write32(regs::FSTS, regs::fsts::QUEUE_ERRORS);
        // A queue left enabled: let it drain, then disable it (VT-d spec 11.4.4 QIE).
        if self.regs.read32(regs::GSTS) & gcmd::QIE != 0 {
            let regs = &mut self.regs;
            poll(delay, self.timing, WaitFor::QueueIdle, || {
                Ok(regs.read64(regs::IQH) & regs::iq::PTR_MASK
                    == regs.read64(regs::IQT) & regs::iq::PTR_MASK)
            })?;
            self.set_enable(delay, gcmd::QIE, false)?;
        }
        // VT-d spec 11.4.6 / 11.4.4 SRTP: root table (legacy mode, TTM = 00), then wait RTPS.
        // The root table's zeroing is visible before the unit latches it: register writes are
        // ordered after memory writes (RegisterAccess's contract).
        self.regs
            .write64(regs::RTADDR, self.root.base() & regs::rtaddr::ADDR_MASK);
        self.one_shot(delay, gcmd::SRTP, true)?;
        self.flush_write_buffer(delay)?;
        if let Some(q) = self.queue.as_mut() {
            // VT-d spec 6.5.2: IQT = 0 and IQA before QIE; hardware resets IQH on enabling.
            q.reset();
            self.regs.write64(regs::IQT, 0);
            self.regs.write64(regs::IQA, q.iqa());
            self.regs.write32(regs::ICS, regs::iq::ICS_IWC);
            self.set_enable(delay, gcmd::QIE, true)?;
        }
        // VT-d spec 11.4.4 SRTP: a new root table pointer is followed by global context-cache
        // and then global IOTLB invalidation.
        self.run(mem, delay, &[Inv::ContextGlobal, Inv::IotlbGlobal])?;
        self.set_enable(delay, gcmd::TE, true)?;
        // VT-d spec 11.4.16: protected memory regions are turned off once remapping is on.
        if (self.cap.plmr() || self.cap.phmr())
            && self.regs.read32(regs::PMEN) & regs::pmen::EPM != 0
        {
            self.regs.write32(regs::PMEN, 0);
            let regs = &mut self.regs;
            poll(delay, self.timing, WaitFor::Pmen, || {
                Ok(regs.read32(regs::PMEN) & regs::pmen::PRS == 0)
            })?;
        }
        Ok(())
    }

    /// Sets or clears a persistent GCMD bit and waits for GSTS to follow (VT-d spec 11.4.4).
    fn set_enable<D: DelayNs + ?Sized>(
        &mut self,
        delay: &mut D,
        bit: u32,
        on: bool,
    ) -> Result<(), VtdError> {
        let gsts = self.regs.read32(regs::GSTS);
        if (gsts & bit != 0) == on {
            return Ok(());
        }
        self.regs.write32(regs::GCMD, gcmd::command(gsts, bit, on));
        let regs = &mut self.regs;
        let r = poll(delay, self.timing, WaitFor::Gsts(bit), || {
            Ok((regs.read32(regs::GSTS) & bit != 0) == on)
        });
        if let Err(e) = r {
            self.counters.count_error(e);
        }
        r
    }

    /// Issues a one-shot command and waits for its status bit to read `done_when_set`
    /// (RTPS set for SRTP; WBFS clear for WBF).
    fn one_shot<D: DelayNs + ?Sized>(
        &mut self,
        delay: &mut D,
        bit: u32,
        done_when_set: bool,
    ) -> Result<(), VtdError> {
        let gsts = self.regs.read32(regs::GSTS);
        self.regs
            .write32(regs::GCMD, gcmd::command(gsts, bit, true));
        let regs = &mut self.regs;
        let r = poll(delay, self.timing, WaitFor::Gsts(bit), || {
            Ok((regs.read32(regs::GSTS) & bit != 0) == done_when_set)
        });
        if let Err(e) = r {
            self.counters.count_error(e);
        }
        r
    }

    /// Flushes the unit's write buffer when CAP.RWBF requires it after structure changes
    /// (VT-d spec 6.8 Write Buffer Flushing, 11.4.4 WBF).
    fn flush_write_buffer<D: DelayNs + ?Sized>(&mut self, delay: &mut D) -> Result<(), VtdError> {
        if !self.cap.rwbf() {
            return Ok(());
        }
        self.counters.write_buffer_flushes += 1;
        self.one_shot(delay, gcmd::WBF, false)
    }

    /// Performs `reqs` in order and waits for their completion, through the queue when it is
    /// enabled, else one register-based request at a time.
    fn run<M, D>(&mut self, mem: &mut M, delay: &mut D, reqs: &[Inv]) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let drain = (self.cap.drd(), self.cap.dwd());
        match self.queue.as_mut() {
            Some(q) => q.run(
                &mut self.regs,
                mem,
                delay,
                self.timing,
                self.info.coherent_walk,
                drain,
                reqs,
                &mut self.counters,
            ),
            None => {
                for &r in reqs {
                    queue::run_register(
                        &mut self.regs,
                        delay,
                        self.timing,
                        self.iotlb_off,
                        drain,
                        r,
                        &mut self.counters,
                    )?;
                }
                Ok(())
            }
        }
    }

    /// What the unit can do.
    pub fn info(&self) -> UnitInfo {
        self.info
    }
    /// The Version Register as read at bring-up.
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The Capability Register as read at bring-up.
    pub fn cap(&self) -> Cap {
        self.cap
    }
    /// The Extended Capability Register as read at bring-up.
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }
    /// Whether invalidations go through the queue (else through registers).
    pub fn uses_queue(&self) -> bool {
        self.queue.is_some()
    }
    /// Physical address of the root table.
    pub fn root_table(&self) -> PhysAddr {
        self.root.base()
    }
    /// Work counters.
    pub fn counters(&self) -> VtdCounters {
        self.counters
    }
    /// The register access handle (for diagnostics).
    pub fn regs_mut(&mut self) -> &mut R {
        &mut self.regs
    }

    fn check_tag(&self, tag: u16) -> Result<(), VtdError> {
        if tag == 0 || tag > self.info.max_tag {
            return Err(VtdError::BadTag);
        }
        Ok(())
    }

    /// The context table of `rid`'s bus, allocated from `alloc` (all zero: every device on
    /// the bus blocked) and linked into the root table if the bus has none yet.
    fn context_table_for<M, A>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        rid: Rid,
    ) -> Result<PhysAddr, VtdError>
    where
        M: PhysMem + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        if let Some(t) = self.root.context_table(mem, rid.bus) {
            return Ok(t);
        }
        let coherent = self.info.coherent_walk;
        let f = aligned_frame(alloc).ok_or(VtdError::NoFrame)?;
        if !coherent {
            mem.sync_for_device(f, PAGE_SIZE);
        }
        self.root.set_context_table(mem, rid.bus, f, coherent);
        Ok(f)
    }

    /// Allocates the context table of `device`'s bus if it has none (see
    /// [`Backend::prepare`]); the device stays blocked.
    pub fn prepare<M, A>(&mut self, mem: &mut M, alloc: &mut A, device: u32) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let rid = Rid::from_device(device).ok_or(VtdError::BadDevice)?;
        self.context_table_for(mem, alloc, rid).map(|_| ())
    }

    /// Points `device` at `domain` (see [`Backend::attach`]). A device attached elsewhere is
    /// first made non-present (blocked) and that change invalidated and completed, then the
    /// new entry is written upper half first, P last; a device never passes untranslated.
    pub fn attach<M, D, A>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let rid = Rid::from_device(device).ok_or(VtdError::BadDevice)?;
        self.check_tag(domain.tag)?;
        let aw = tables::aw_code(domain.addr_width)
            .filter(|&c| self.cap.sagaw() & (1 << c) != 0)
            .ok_or(VtdError::BadDomain)?;
        if tables::levels_for_aw(aw) != Some(domain.levels)
            || domain.root % PAGE_SIZE != 0
            || (self.info.phys_width < 64 && domain.root >> self.info.phys_width != 0)
        {
            return Err(VtdError::BadDomain);
        }
        let coherent = self.info.coherent_walk;
        let ct = self.context_table_for(mem, alloc, rid)?;
        let pa = tables::context_entry_pa(ct, rid.devfn);
        let new = ContextEntry::translated(domain.root, aw, domain.tag);
        let cur = tables::read_context(mem, pa);
        if cur == new {
            return Ok(());
        }
        if cur.present() {
            // Live change: block first, and make sure nothing cached from the old entry
            // survives, before the new fields are written (VT-d spec 6.5.3.3, 9.3).
            self.clear_context(mem, delay, pa, cur, rid)?;
        }
        tables::install_context(mem, pa, new, coherent);
        self.flush_write_buffer(delay)?;
        if self.cap.cm() {
            // VT-d spec 6.1: under caching mode a non-present entry may be cached, tagged with
            // domain id 0; the new domain's IOTLB may hold non-present translations.
            self.run(
                mem,
                delay,
                &[
                    Inv::ContextDevice {
                        did: 0,
                        sid: rid.sid(),
                    },
                    Inv::IotlbDomain { did: domain.tag },
                ],
            )?;
        }
        Ok(())
    }

    /// Blocks `device` (see [`Backend::block`]): clears its context entry, then invalidates
    /// the context-cache entry and the old domain's IOTLB and waits.
    ///
    /// Never short-cut: an entry that already reads as not present may still be cached if an
    /// earlier block cleared it and then failed before the invalidation completed, and its
    /// domain id is no longer known, so the whole context cache is invalidated (VT-d spec
    /// 6.5.2.1, global granularity) and waited for. Devices on a bus without a context table
    /// were never attached since bring-up, whose global invalidation covers them.
    pub fn block<M, D>(&mut self, mem: &mut M, delay: &mut D, device: u32) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let rid = Rid::from_device(device).ok_or(VtdError::BadDevice)?;
        let Some(ct) = self.root.context_table(mem, rid.bus) else {
            return Ok(());
        };
        let pa = tables::context_entry_pa(ct, rid.devfn);
        let cur = tables::read_context(mem, pa);
        if cur.present() {
            return self.clear_context(mem, delay, pa, cur, rid);
        }
        self.flush_write_buffer(delay)?;
        self.run(mem, delay, &[Inv::ContextGlobal])
    }

    /// Makes the present context entry `cur` at `pa` (device `rid`) non-present, then
    /// invalidates the device's context-cache entry and its old domain's IOTLB and waits.
    fn clear_context<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        pa: PhysAddr,
        cur: ContextEntry,
        rid: Rid,
    ) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        tables::clear_context(mem, pa, self.info.coherent_walk);
        self.flush_write_buffer(delay)?;
        self.run(
            mem,
            delay,
            &[
                Inv::ContextDevice {
                    did: cur.did(),
                    sid: rid.sid(),
                },
                Inv::IotlbDomain { did: cur.did() },
            ],
        )
    }

    /// The single IOTLB request covering `gather` for domain `tag`: page-selective with the
    /// smallest aligned mask holding the span when CAP.PSI and CAP.MAMV allow, else
    /// domain-selective. The invalidation hint (keep paging-structure caches) is set only when
    /// no table was removed and the unit is not in caching mode.
    pub fn iotlb_request(&self, tag: u16, gather: &Gather) -> Inv {
        // VT-d spec 6.5.2.3: a page-selective invalidation must cover a large page entirely
        // (e.g. AM >= 9 for a 2 MiB page), so the span is widened to the largest leaf touched.
        let leaf = gather.max_leaf().max(PAGE_SIZE);
        let psi = gather
            .span()
            .filter(|_| self.cap.psi() && leaf.is_power_of_two())
            .and_then(|(s, l)| {
                queue::psi_for_span(s & !(leaf - 1), l | (leaf - 1), self.cap.mamv())
            });
        match psi {
            Some((addr, am)) => Inv::IotlbPages {
                did: tag,
                addr,
                am,
                // IH = 1 keeps paging-structure caches: only when no non-leaf entry was
                // removed, and never under caching mode, where a map that added tables
                // changed non-leaf entries that may be cached as not present (VT-d spec 6.1).
                ih: !gather.tables_removed() && !self.cap.cm(),
            },
            None => Inv::IotlbDomain { did: tag },
        }
    }

    /// Invalidates what `gather` recorded for domain `tag` (see [`Backend::invalidate`]):
    /// one IOTLB request and one completion wait; nothing for an empty gather.
    pub fn invalidate<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
        gather: &Gather,
    ) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.check_tag(tag)?;
        if gather.is_empty() {
            return Ok(());
        }
        self.flush_write_buffer(delay)?;
        let req = self.iotlb_request(tag, gather);
        self.run(mem, delay, &[req])
    }

    /// Invalidates every IOTLB and paging-structure cache entry of domain `tag` and waits.
    pub fn invalidate_all<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
    ) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.check_tag(tag)?;
        self.flush_write_buffer(delay)?;
        self.run(mem, delay, &[Inv::IotlbDomain { did: tag }])
    }

    /// Drains the fault recording registers into `sink`, classifying permission and
    /// not-present faults by walking tables of format `F`. Returns the overflow flag.
    pub fn drain_faults<M, F>(
        &mut self,
        mem: &M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> bool
    where
        M: PhysMem + ?Sized,
        F: Format,
    {
        let (overflow, n) = fault::drain::<R, M, F>(
            &mut self.regs,
            mem,
            self.root,
            unit,
            self.fro_off,
            self.nfr,
            sink,
        );
        self.counters.faults += n;
        overflow
    }
}

/// The info reported for an out-of-range unit index when there is no unit at all.
const NO_UNIT: UnitInfo = UnitInfo {
    addr_width: 48,
    phys_width: 48,
    leaf_sizes: LeafSizes::SZ_4K,
    caches_not_present: true,
    split_live_blocks: true,
    coherent_walk: false,
    max_tag: 0,
};

/// All VT-d units of a machine (up to `N`), sharing one physical-memory accessor and one
/// delay source; implements [`Backend`] with the second-level format
/// [`VtdSl`] (the unit plumbing is [`UnitBackend`]'s).
pub type VtdBackend<R, M, D, const N: usize> = UnitBackend<VtdUnit<R>, M, D, N>;

impl<R: RegisterAccess> Unit for VtdUnit<R> {
    type Format = VtdSl;
    type Error = VtdError;
    type Regs = R;
    type Config = VtdConfig;
    type Counters = VtdCounters;

    const NO_UNIT: UnitInfo = NO_UNIT;
    const BAD_UNIT: VtdError = VtdError::BadUnit;
    const TOO_MANY_UNITS: VtdError = VtdError::TooManyUnits;

    fn bring_up<M, D, A>(
        regs: R,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: VtdConfig,
    ) -> Result<Self, VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        VtdUnit::new(regs, mem, delay, alloc, config)
    }

    fn unit_info(&self) -> UnitInfo {
        self.info()
    }

    fn unit_counters(&self) -> VtdCounters {
        self.counters()
    }

    fn prepare_device<M>(
        &mut self,
        mem: &mut M,
        alloc: &mut dyn FrameAlloc,
        device: u32,
    ) -> Result<(), VtdError>
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
    ) -> Result<(), VtdError>
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
    ) -> Result<(), VtdError>
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
    ) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate(mem, delay, tag, gather)
    }

    fn invalidate_tag<M, D>(&mut self, mem: &mut M, delay: &mut D, tag: u16) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate_all(mem, delay, tag)
    }

    /// Programs the fault event as the message `irq` (see [`fault::enable_interrupt`]).
    fn enable_interrupt<M, D>(
        &mut self,
        _mem: &mut M,
        _delay: &mut D,
        irq: FaultInterrupt,
    ) -> Result<(), VtdError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        fault::enable_interrupt(&mut self.regs, self.ecap, irq)
    }

    fn drain<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, VtdError>
    where
        M: PhysMem + ?Sized,
    {
        Ok(self.drain_faults::<M, VtdSl>(mem, unit, sink))
    }
}

//! Arm SMMUv3 backend: stage-1 translation through a stream table, one context descriptor per
//! domain, and VMSAv8-64 stage-1 tables built by [`crate::pagetable::PageTable`] with
//! [`ArmS1`] (4 KiB granule).
//!
//! - [`regs`]: the register map (SMMUv3 spec, Arm IHI 0070, chapter 6).
//! - [`tables`]: stream table entries and context descriptors (5.1, 5.2, 5.4).
//! - [`queue`]: the Command queue, commands and TLB invalidation planning (3.5, chapter 4,
//!   7.1).
//! - [`fault`]: the Event queue and event records (7.2 to 7.4), the Event queue and GERROR
//!   interrupts (3.18, 6.3.16 to 6.3.22).
//! - this module: [`SmmuUnit`] (one SMMU) and [`SmmuBackend`] (all SMMUs of a machine,
//!   implementing [`Backend`]).
//!
//! Hardware is reached only through [`RegisterAccess`] (MMIO, both 64 KiB register pages),
//! [`PhysMem`] (stream table, CDs, queues), [`FrameAlloc`] and a [`DelayNs`] for bounded
//! waits. Every wait gives up with [`SmmuError::Timeout`] after [`Timing::timeout_ns`]; no
//! register value makes this code panic.
//!
//! Domain tags are ASIDs: each tag gets one context descriptor (in a 4 KiB frame of its own,
//! allocated on the first attach of that tag on the unit) with ASID = tag, and every device
//! attached to the domain has an STE pointing at that CD. The SMMU's TLB is tagged by ASID,
//! so moving a device between domains needs only its configuration caches invalidated.

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
use crate::pagetable::format::ArmS1;
use crate::pagetable::{Format, Gather, LeafSizes};
use crate::units::{Unit, UnitBackend};
use fault::EventQueue;
use queue::{Cmd, CmdQueue};
use regs::{Idr0, Idr1, Idr3, Idr5, cr0, gbpa};
use tables::{CdParams, SteState, StreamTable};

/// What a bounded wait was waiting for (carried by [`SmmuError::Timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WaitFor {
    /// SMMU_CR0ACK to equal the CR0 value given (6.3.10).
    Cr0Ack(u32),
    /// SMMU_GBPA.Update to clear (6.3.14).
    Gbpa,
    /// A free slot in the Command queue.
    CmdqSpace,
    /// CMDQ_CONS to pass the batch's CMD_SYNC.
    CmdqSync,
    /// SMMU_IRQ_CTRLACK to equal the IRQ_CTRL value given (6.3.17).
    IrqCtrlAck(u32),
}

/// Why an SMMUv3 operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SmmuError {
    /// A bounded wait expired.
    Timeout(WaitFor),
    /// The Command queue stopped on a command (GERROR.CMDQ_ERR; 7.1): `code` is
    /// CMDQ_CONS.ERR (1 CERROR_ILL, 2 CERROR_ABT, 3 CERROR_ATC_INV_SYNC) and `opcode` the
    /// offending command's opcode. The command was replaced by a CMD_SYNC, the error
    /// acknowledged and the queue resumed; the batch's CMD_SYNC completed.
    CommandError {
        /// CMDQ_CONS.ERR.
        code: u8,
        /// Opcode of the command that failed.
        opcode: u8,
    },
    /// Other active SMMU_GERROR conditions (6.3.18; the bits are given), acknowledged.
    /// SFM_ERR (bit 8, Service Failure Mode) needs a reset of the SMMU.
    GlobalError {
        /// The GERROR bits that were active (GERROR ^ GERRORN).
        gerror: u32,
    },
    /// CMDQ_CONS reads as ahead of the software PROD: the queue state is not what this
    /// driver wrote.
    BadQueuePointer,
    /// No frame for the stream table, a level-2 stream table, a CD or a queue.
    NoFrame,
    /// The unit index is out of range.
    BadUnit,
    /// The device id (StreamID) is outside the unit's stream table.
    BadDevice,
    /// The domain tag is 0 or above the unit's [`UnitInfo::max_tag`].
    BadTag,
    /// The domain's address width / levels are not supported, or its root is not a 4 KiB
    /// aligned address within the unit's output address size.
    BadDomain,
    /// The unit lacks something this driver needs (stage 1, AArch64 tables, the 4 KiB
    /// granule, little-endian walks, programmable table/queue bases).
    Unsupported,
    /// The backend already holds as many units as its capacity.
    TooManyUnits,
    /// The unit already holds as many context descriptors (distinct domain tags) as its
    /// capacity.
    TooManyDomains,
}

impl core::fmt::Display for WaitFor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WaitFor::Cr0Ack(v) => write!(f, "SMMU_CR0ACK to equal CR0 {v:#x}"),
            WaitFor::Gbpa => f.write_str("SMMU_GBPA.Update to clear"),
            WaitFor::CmdqSpace => f.write_str("a free slot in the Command queue"),
            WaitFor::CmdqSync => f.write_str("CMDQ_CONS to pass the batch's CMD_SYNC"),
            WaitFor::IrqCtrlAck(v) => write!(f, "SMMU_IRQ_CTRLACK to equal IRQ_CTRL {v:#x}"),
        }
    }
}

impl core::fmt::Display for SmmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmmuError::Timeout(w) => write!(
                f,
                "SMMUv3 did not answer in time: waited for {w} (unit hung, or Timing too short)"
            ),
            SmmuError::CommandError { code, opcode } => write!(
                f,
                "SMMUv3 command queue stopped on opcode {opcode:#04x} (CMDQ_CONS.ERR {code}); \
                 the command was skipped and the queue resumed"
            ),
            SmmuError::GlobalError { gerror } => write!(
                f,
                "SMMUv3 global error (GERROR bits {gerror:#x}) acknowledged; SFM_ERR needs a reset"
            ),
            SmmuError::BadQueuePointer => {
                f.write_str("SMMUv3 CMDQ_CONS is ahead of what this driver produced")
            }
            SmmuError::NoFrame => {
                f.write_str("no free frame for a stream table, context descriptor or queue")
            }
            SmmuError::BadUnit => f.write_str("no SMMUv3 unit with that index"),
            SmmuError::BadDevice => f.write_str("StreamID outside the unit's stream table"),
            SmmuError::BadTag => f.write_str("ASID 0 or beyond the unit's ASID size"),
            SmmuError::BadDomain => f.write_str(
                "domain's address width is unsupported, or its root is unaligned or beyond \
                 the output address size",
            ),
            SmmuError::Unsupported => f.write_str(
                "SMMUv3 lacks something this driver needs (stage 1, AArch64 tables, 4 KiB \
                 granule, little-endian walks) or the request is not supported",
            ),
            SmmuError::TooManyUnits => {
                f.write_str("the SMMUv3 backend holds as many units as it can")
            }
            SmmuError::TooManyDomains => {
                f.write_str("the unit holds as many context descriptors as it can")
            }
        }
    }
}

impl core::error::Error for SmmuError {}

impl BackendError for SmmuError {
    fn kind(&self) -> ErrorKind {
        match self {
            SmmuError::Timeout(_) => ErrorKind::Timeout,
            SmmuError::CommandError { .. }
            | SmmuError::GlobalError { .. }
            | SmmuError::BadQueuePointer => ErrorKind::Hardware,
            SmmuError::NoFrame => ErrorKind::NoFrame,
            SmmuError::BadUnit | SmmuError::BadDevice => ErrorKind::BadDevice,
            SmmuError::BadTag | SmmuError::BadDomain | SmmuError::Unsupported => {
                ErrorKind::Unsupported
            }
            SmmuError::TooManyUnits | SmmuError::TooManyDomains => ErrorKind::Other,
        }
    }
}

pub use crate::wait::Timing;
pub(crate) use crate::wait::poll;

impl crate::wait::WaitFor for WaitFor {
    type Error = SmmuError;
    fn timed_out(self) -> SmmuError {
        SmmuError::Timeout(self)
    }
}

/// How a unit is brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SmmuConfig {
    /// Bounds of every wait.
    pub timing: Timing,
    /// Offset of register page 1 (EVENTQ_PROD/CONS) from the register base: 0x10000 per the
    /// architecture (6.1). QEMU also answers at page 0.
    pub page1_offset: usize,
    /// The most StreamID bits to support (further capped by IDR1.SIDSIZE). 16 covers every
    /// PCI requester id.
    pub max_sid_bits: u32,
    /// log2 of the most contiguous frames to use for the linear stream table or the level-1
    /// table (at most 5). The driver asks the frame allocator for an aligned contiguous
    /// block and, when it cannot get one, uses fewer StreamID bits.
    pub max_strtab_frames_log2: u32,
    /// Use a linear stream table even when 2-level tables are supported.
    pub force_linear: bool,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        SmmuConfig {
            timing: Timing::default(),
            page1_offset: regs::PAGE1,
            max_sid_bits: 16,
            max_strtab_frames_log2: 4,
            force_linear: false,
        }
    }
}

/// Work counters of one unit, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SmmuCounters {
    /// CMD_CFGI_STE commands.
    pub cfgi_ste: u64,
    /// CMD_CFGI_CD commands.
    pub cfgi_cd: u64,
    /// CMD_CFGI_ALL commands.
    pub cfgi_all: u64,
    /// CMD_TLBI_NH_ASID commands.
    pub tlbi_nh_asid: u64,
    /// CMD_TLBI_NH_VA commands of the single-address form.
    pub tlbi_nh_va: u64,
    /// CMD_TLBI_NH_VA commands of the range form.
    pub tlbi_nh_va_range: u64,
    /// CMD_TLBI_NSNH_ALL commands.
    pub tlbi_nsnh_all: u64,
    /// CMD_SYNC commands (one per batch).
    pub syncs: u64,
    /// Batches submitted.
    pub batches: u64,
    /// Waits that timed out.
    pub timeouts: u64,
    /// Command errors (GERROR.CMDQ_ERR) recovered.
    pub cmd_errors: u64,
    /// Other GERROR conditions and queue pointer inconsistencies.
    pub hw_errors: u64,
    /// Event records drained.
    pub faults: u64,
    /// Event queue overflows seen.
    pub overflows: u64,
}

impl SmmuCounters {
    pub(crate) fn count_error(&mut self, e: SmmuError) {
        match e {
            SmmuError::Timeout(_) => self.timeouts += 1,
            SmmuError::CommandError { .. } => self.cmd_errors += 1,
            _ => self.hw_errors += 1,
        }
    }
}

/// What a unit with these identification registers offers (6.3.1 to 6.3.6): 48-bit input
/// (T0SZ = 16), output size from IDR5.OAS capped at the 48 bits the stage-1 format encodes,
/// 4 KiB / 2 MiB / 1 GiB leaves (4 KiB granule), live block splits only with BBML2, coherent
/// walks with IDR0.COHACC, 16- or 8-bit ASIDs (ASID 0 never used).
pub fn unit_info(idr0: Idr0, idr3: Idr3, idr5: Idr5) -> UnitInfo {
    UnitInfo {
        addr_width: 48,
        phys_width: regs::oas_bits(idr5.oas()).min(ArmS1::OA_BITS),
        leaf_sizes: LeafSizes::STANDARD,
        caches_not_present: false,
        split_live_blocks: idr3.bbml() == 2,
        coherent_walk: idr0.cohacc(),
        max_tag: if idr0.asid16() { u16::MAX } else { 0xff },
    }
}

/// Allocates `2^k` frames (k <= 5) forming one block aligned to its size, trying at most
/// `2^(k+1)` allocations. Every frame not in the block is returned (most recent first).
fn alloc_block<A: FrameAlloc + ?Sized>(alloc: &mut A, k: u32) -> Option<PhysAddr> {
    let n = 1u64 << k.min(5);
    let size = n * PAGE_SIZE;
    let mut got: Vec<PhysAddr, 64> = Vec::new();
    let mut found = None;
    for _ in 0..2 * n {
        let Some(f) = alloc.alloc_frame() else {
            break;
        };
        if got.push(f).is_err() {
            alloc.free_frame(f);
            break;
        }
        if f % PAGE_SIZE != 0 {
            continue;
        }
        let b = f & !(size - 1);
        if (0..n).all(|i| got.contains(&(b + i * PAGE_SIZE))) {
            found = Some(b);
            break;
        }
    }
    for &f in got.iter().rev() {
        if found.is_none_or(|b| f < b || f >= b + size) {
            alloc.free_frame(f);
        }
    }
    found
}

/// One aligned frame, or `None`.
fn alloc_one<A: FrameAlloc + ?Sized>(alloc: &mut A) -> Option<PhysAddr> {
    alloc_block(alloc, 0)
}

/// One context descriptor of a unit: the CD of domain `tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CdSlot {
    /// Domain tag (= ASID).
    pub tag: u16,
    /// The frame holding the CD (at its start).
    pub frame: PhysAddr,
    /// Root table the CD points at.
    pub root: PhysAddr,
    /// Input address width of that table.
    pub addr_width: u32,
    /// STEs currently pointing at the CD.
    pub users: u32,
}

/// Default capacity of context descriptors (distinct domain tags) per unit.
pub const DEFAULT_CDS: usize = 256;

/// One SMMUv3, brought up with stage-1 translation, every stream blocked (STE.V = 0, its
/// traffic reported as C_BAD_STE) until attached.
/// `CDS` bounds the number of distinct domain tags attached on the unit.
#[derive(Debug)]
pub struct SmmuUnit<R, const CDS: usize = DEFAULT_CDS> {
    regs: R,
    idr: [u32; 6],
    info: UnitInfo,
    strtab: StreamTable,
    cmdq: CmdQueue,
    evtq: EventQueue,
    cds: Vec<CdSlot, CDS>,
    ips: u32,
    ril: bool,
    timing: Timing,
    counters: SmmuCounters,
}

/// The CR0 bits compared with CR0ACK: SMMUEN, PRIQEN, EVENTQEN, CMDQEN, ATSCHK (6.3.9).
const CR0_ACK_MASK: u32 = 0x1f;

impl<R: RegisterAccess, const CDS: usize> SmmuUnit<R, CDS> {
    /// Brings a unit up (6.3.9 to 6.3.29; 3.5 queues):
    /// 1. reads IDR0..IDR5 and refuses units without stage 1, AArch64 tables, the 4 KiB
    ///    granule or little-endian walks, or with preset tables/queues;
    /// 2. allocates from `alloc` the stream table (2-level with SPLIT = 6 when IDR0.ST_LEVEL
    ///    allows and IDR1.SIDSIZE exceeds 6 bits, else linear; all streams blocked), the
    ///    Command queue and the Event queue (one frame each, sizes capped by IDR1.CMDQS and
    ///    EVENTQS);
    /// 3. sets GBPA.ABORT (so that nothing bypasses while SMMUEN is 0), disables the unit
    ///    (CR0 = 0, wait CR0ACK), acknowledges stale GERROR conditions, programs CR1/CR2, the
    ///    stream table and the queues;
    /// 4. enables the Command queue, issues CFGI_ALL + TLBI_NSNH_ALL + CMD_SYNC, enables the
    ///    Event queue and then translation (SMMUEN), waiting for CR0ACK each time.
    ///
    /// If a frame cannot be allocated nothing is written to the unit and every frame obtained
    /// is returned. A failure after the unit was programmed leaves the frames with the unit.
    pub fn new<M, D, A>(
        mut regs: R,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: SmmuConfig,
    ) -> Result<Self, SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let mut idr = [0u32; 6];
        for (i, v) in idr.iter_mut().enumerate() {
            *v = regs.read32(regs::IDR0 + 4 * i);
        }
        let (idr0, idr1, idr3, idr5) = (Idr0(idr[0]), Idr1(idr[1]), Idr3(idr[3]), Idr5(idr[5]));
        if !idr0.s1p()
            || !idr0.aarch64_tables()
            || !idr5.gran4k()
            || !matches!(idr0.ttendian(), 0b00 | 0b10)
            || idr1.tables_preset()
            || idr1.queues_preset()
        {
            return Err(SmmuError::Unsupported);
        }
        let info = unit_info(idr0, idr3, idr5);
        let coherent = info.coherent_walk;

        // Frames first, so that a shortage leaves the unit untouched.
        let sid_bits = idr1.sidsize().min(config.max_sid_bits).min(32);
        let two_level = idr0.st_level() == 1 && !config.force_linear && sid_bits > tables::SPLIT;
        // Linear: 2^(bits + 6) bytes; level-1: 2^(bits - SPLIT + 3) bytes.
        let bits_per_frame = if two_level { 9 + tables::SPLIT } else { 6 };
        let mut k = sid_bits
            .saturating_sub(bits_per_frame)
            .min(config.max_strtab_frames_log2.min(5));
        let base = loop {
            if let Some(b) = alloc_block(alloc, k) {
                break b;
            }
            if k == 0 {
                return Err(SmmuError::NoFrame);
            }
            k -= 1;
        };
        let free_strtab = |alloc: &mut A| {
            for i in (0..1u64 << k).rev() {
                alloc.free_frame(base + i * PAGE_SIZE);
            }
        };
        let Some(cq) = alloc_one(alloc) else {
            free_strtab(alloc);
            return Err(SmmuError::NoFrame);
        };
        let Some(eq) = alloc_one(alloc) else {
            alloc.free_frame(cq);
            free_strtab(alloc);
            return Err(SmmuError::NoFrame);
        };
        let strtab = StreamTable {
            base,
            two_level,
            log2size: sid_bits.min(bits_per_frame + k),
            frames: 1 << k,
        };
        let mut unit = SmmuUnit {
            regs,
            idr,
            info,
            strtab,
            cmdq: CmdQueue::new(cq, idr1.cmdqs().min(queue::MAX_LOG2_ENTRIES)),
            evtq: EventQueue::new(
                eq,
                idr1.eventqs().min(fault::MAX_LOG2_ENTRIES),
                config.page1_offset,
            ),
            cds: Vec::new(),
            ips: regs::ips_for_bits(info.phys_width),
            ril: idr3.ril(),
            timing: config.timing,
            counters: SmmuCounters::default(),
        };
        for i in 0..unit.strtab.frames as u64 {
            let f = base + i * PAGE_SIZE;
            if two_level {
                // Level-1 descriptors all zero (Span = 0: invalid).
                if !coherent {
                    mem.sync_for_device(f, PAGE_SIZE);
                }
            } else {
                tables::fill_blocked(mem, f, coherent);
            }
        }
        if !coherent {
            mem.sync_for_device(cq, PAGE_SIZE);
            mem.sync_for_device(eq, PAGE_SIZE);
        }
        unit.bring_up(mem, delay)?;
        Ok(unit)
    }

    fn bring_up<M, D>(&mut self, mem: &mut M, delay: &mut D) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        // 6.3.14: abort (not bypass) everything while SMMUEN is 0, before disabling.
        self.update_gbpa(delay, gbpa::ABORT)?;
        self.set_cr0(delay, 0)?;
        // Conditions left by earlier software would be taken for ours.
        let g = self.regs.read32(regs::GERROR);
        self.regs.write32(regs::GERRORN, g);
        self.regs
            .write32(regs::CR1, regs::cr1::value(self.info.coherent_walk));
        self.regs
            .write32(regs::CR2, regs::cr2::RECINVSID | regs::cr2::PTM);
        // The stream table's blocked STEs (and the queues' zeroing) are visible before the
        // unit is pointed at them: register writes are ordered after memory writes
        // (RegisterAccess's contract).
        self.regs.write64(
            regs::STRTAB_BASE,
            regs::strtab::RA | (self.strtab.base & regs::strtab::ADDR_MASK),
        );
        self.regs
            .write32(regs::STRTAB_BASE_CFG, self.strtab.base_cfg());
        self.cmdq.reset();
        self.regs.write64(regs::CMDQ_BASE, self.cmdq.base_reg());
        self.regs.write32(regs::CMDQ_PROD, 0);
        self.regs.write32(regs::CMDQ_CONS, 0);
        self.evtq.reset();
        self.regs.write64(regs::EVENTQ_BASE, self.evtq.base_reg());
        self.regs.write32(self.evtq.prod_reg(), 0);
        self.regs.write32(self.evtq.cons_reg(), 0);
        self.set_cr0(delay, cr0::CMDQEN)?;
        self.run(mem, delay, &[Cmd::CfgiAll, Cmd::TlbiNsnhAll])?;
        self.set_cr0(delay, cr0::CMDQEN | cr0::EVENTQEN)?;
        self.set_cr0(delay, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN)
    }

    /// Writes GBPA with `fields` and Update = 1, waiting for Update to clear before and
    /// after (6.3.14).
    fn update_gbpa<D: DelayNs + ?Sized>(
        &mut self,
        delay: &mut D,
        set: u32,
    ) -> Result<(), SmmuError> {
        let regs = &mut self.regs;
        let mut cur = 0;
        let r = poll(delay, self.timing, WaitFor::Gbpa, || {
            cur = regs.read32(regs::GBPA);
            Ok(cur & gbpa::UPDATE == 0)
        })
        .and_then(|()| {
            regs.write32(regs::GBPA, cur | set | gbpa::UPDATE);
            poll(delay, self.timing, WaitFor::Gbpa, || {
                Ok(regs.read32(regs::GBPA) & gbpa::UPDATE == 0)
            })
        });
        if let Err(e) = r {
            self.counters.count_error(e);
        }
        r
    }

    /// Writes CR0 and waits for CR0ACK to follow (6.3.9, 6.3.10).
    fn set_cr0<D: DelayNs + ?Sized>(&mut self, delay: &mut D, value: u32) -> Result<(), SmmuError> {
        self.regs.write32(regs::CR0, value);
        let regs = &mut self.regs;
        let r = poll(delay, self.timing, WaitFor::Cr0Ack(value), || {
            Ok(regs.read32(regs::CR0ACK) & CR0_ACK_MASK == value & CR0_ACK_MASK)
        });
        if let Err(e) = r {
            self.counters.count_error(e);
        }
        r
    }

    /// Submits `cmds` and a CMD_SYNC, and waits for completion.
    fn run<M, D>(&mut self, mem: &mut M, delay: &mut D, cmds: &[Cmd]) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.cmdq.run(
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
    /// SMMU_IDR0..IDR5 as read at bring-up.
    pub fn idr(&self) -> [u32; 6] {
        self.idr
    }
    /// The stream table.
    pub fn stream_table(&self) -> StreamTable {
        self.strtab
    }
    /// StreamIDs `0 .. 2^sid_bits` can be attached.
    pub fn sid_bits(&self) -> u32 {
        self.strtab.log2size
    }
    /// Whether TLB invalidations use the range form (IDR3.RIL).
    pub fn range_invalidation(&self) -> bool {
        self.ril
    }
    /// The context descriptors in use.
    pub fn context_descriptors(&self) -> &[CdSlot] {
        &self.cds
    }
    /// Work counters.
    pub fn counters(&self) -> SmmuCounters {
        self.counters
    }
    /// The register access handle (for diagnostics).
    pub fn regs_mut(&mut self) -> &mut R {
        &mut self.regs
    }

    fn check_tag(&self, tag: u16) -> Result<(), SmmuError> {
        if tag == 0 || tag > self.info.max_tag {
            return Err(SmmuError::BadTag);
        }
        Ok(())
    }

    fn check_sid(&self, device: u32) -> Result<u32, SmmuError> {
        if !self.strtab.covers(device) {
            return Err(SmmuError::BadDevice);
        }
        Ok(device)
    }

    /// The CD contents for `domain`.
    fn cd_params(&self, domain: &DomainConfig) -> CdParams {
        CdParams {
            asid: domain.tag,
            ttb0: domain.root,
            addr_width: domain.addr_width,
            ips: self.ips,
            coherent: self.info.coherent_walk,
        }
    }

    /// Points `device` (its StreamID) at `domain` (see [`Backend::attach`]).
    ///
    /// Allocates from `alloc` the level-2 stream table holding the device (2-level tables,
    /// first device of its 64-StreamID group) and the domain's CD (first attach of the tag
    /// on this unit); a CD whose tag is attached again with another root table is rewritten
    /// (made invalid, then its other dwords, then V, each step made observed with CFGI_ALL +
    /// CMD_SYNC: SMMUv3 3.21.3.1) and every cached configuration and TLB entry of the ASID is
    /// invalidated. The STE is then written with dword 0 (V, Config, S1ContextPtr) last, so
    /// it switches from blocked (or from the previous domain's CD) to the new CD in one
    /// store: never a window of bypass; a blocked STE's other dwords are made observed
    /// (CFGI_STE + CMD_SYNC) before V is set (3.21.3.1). CFGI_STE + CFGI_CD (+ TLBI_NH_ASID
    /// for a new or rewritten CD) and a CMD_SYNC follow, and complete before this returns.
    pub fn attach<M, D, A>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let sid = self.check_sid(device)?;
        self.check_tag(domain.tag)?;
        if ArmS1::levels_for(domain.addr_width) != Some(domain.levels)
            || domain.root % PAGE_SIZE != 0
            || domain.root >> self.info.phys_width != 0
        {
            return Err(SmmuError::BadDomain);
        }
        let coherent = self.info.coherent_walk;
        let params = self.cd_params(&domain);
        let slot = self.cds.iter().position(|s| s.tag == domain.tag);
        if slot.is_none() && self.cds.is_full() {
            return Err(SmmuError::TooManyDomains);
        }

        // Frames first: a shortage changes nothing. Where the STE is (in the level-2 table
        // already linked, or in the one allocated now) is settled before anything is written.
        let (ste_pa, l2) = match self.strtab.ste_pa(mem, sid) {
            Some(pa) => (pa, None),
            None => {
                let f = alloc_one(alloc).ok_or(SmmuError::NoFrame)?;
                (StreamTable::l2_ste_pa(f, sid), Some(f))
            }
        };
        let free_l2 = |alloc: &mut A| {
            if let Some(f) = l2 {
                alloc.free_frame(f);
            }
        };
        // The CD: the tag's own, or a new one, recorded before anything is written (the list
        // has room, checked above; were it full, nothing would have changed either).
        let (idx, new_cd) = match slot {
            Some(i) => (i, false),
            None => {
                let Some(f) = alloc_one(alloc) else {
                    free_l2(alloc);
                    return Err(SmmuError::NoFrame);
                };
                let s = CdSlot {
                    tag: domain.tag,
                    frame: f,
                    root: domain.root,
                    addr_width: domain.addr_width,
                    users: 0,
                };
                if self.cds.push(s).is_err() {
                    alloc.free_frame(f);
                    free_l2(alloc);
                    return Err(SmmuError::TooManyDomains);
                }
                (self.cds.len() - 1, true)
            }
        };

        let mut cmds: Vec<Cmd, 4> = Vec::new();
        if let Some(l2) = l2 {
            tables::fill_blocked(mem, l2, coherent);
            self.strtab.set_l2(mem, sid, l2, coherent);
        }
        let new_cd_dw = tables::s1_cd(params);
        let cd_pa = self.cds[idx].frame;
        let retarget = !new_cd
            && (self.cds[idx].root != domain.root || self.cds[idx].addr_width != domain.addr_width);
        if new_cd {
            // No STE points at it yet, so the SMMU cannot have fetched it: written whole, V
            // included (SMMUv3 3.21.3.1); the STE's publication below orders it.
            tables::write_struct(mem, cd_pa, &new_cd_dw, coherent);
            // Nothing an earlier user of this ASID left in the TLB may be used.
            let _ = cmds.push(Cmd::TlbiNhAsid { asid: domain.tag });
        } else if retarget {
            // The tag now names another table. SMMUv3 3.21.3.1: the SMMU reads a structure's
            // dwords in any order and may cache it, so the CD is made invalid and that
            // completed, its other dwords written and that completed while V = 0, and only
            // then V set; then nothing cached from the old CD or ASID may survive.
            tables::write_dw0(mem, cd_pa, 0, coherent);
            self.run(mem, delay, &[Cmd::CfgiAll])?;
            if tables::write_fields(mem, cd_pa, &new_cd_dw, coherent) {
                self.run(mem, delay, &[Cmd::CfgiAll])?;
            }
            tables::publish_dw0(mem, cd_pa, new_cd_dw[0], coherent);
            let s = &mut self.cds[idx];
            s.root = domain.root;
            s.addr_width = domain.addr_width;
            let _ = cmds.push(Cmd::CfgiAll);
            let _ = cmds.push(Cmd::TlbiNhAsid { asid: domain.tag });
        }

        let ste = tables::s1_ste(cd_pa, coherent);
        let cur = tables::ste_state(mem.read_u64(ste_pa));
        let mut changed = false;
        if cur == SteState::Invalid && tables::write_fields(mem, ste_pa, &ste, coherent) {
            // SMMUv3 3.21.3.1: the SMMU may hold this invalid STE cached, in whole or in
            // part, and need not read V before the other dwords; they are made observed while
            // V = 0 (CFGI_STE, CMD_SYNC) before V is set. A valid STE only ever changes in
            // dword 0 here (another CD), one single-copy-atomic store.
            let _ = cmds.push(Cmd::CfgiSte { sid, leaf: false });
            self.run(mem, delay, &cmds)?;
            cmds.clear();
            changed = true;
        }
        changed |= tables::write_struct(mem, ste_pa, &ste, coherent);
        if cur != SteState::S1(cd_pa) {
            self.cds[idx].users = self.cds[idx].users.saturating_add(1);
            if let SteState::S1(old) = cur
                && let Some(o) = self.cds.iter_mut().find(|s| s.frame == old)
            {
                o.users = o.users.saturating_sub(1);
            }
        }
        if changed || l2.is_some() {
            let _ = cmds.push(Cmd::CfgiSte { sid, leaf: false });
            let _ = cmds.push(Cmd::CfgiCd { sid });
        }
        if cmds.is_empty() {
            return Ok(());
        }
        self.run(mem, delay, &cmds)
    }

    /// Allocates the level-2 stream table holding `device`'s STE if the stream table is
    /// 2-level and it has none (see [`crate::backend::Backend::prepare`]); every STE of the
    /// new table is invalid, so the device stays blocked.
    pub fn prepare<M, A>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        device: u32,
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let sid = self.check_sid(device)?;
        if self.strtab.ste_pa(mem, sid).is_some() {
            return Ok(());
        }
        let coherent = self.info.coherent_walk;
        let l2 = alloc_one(alloc).ok_or(SmmuError::NoFrame)?;
        tables::fill_blocked(mem, l2, coherent);
        self.strtab.set_l2(mem, sid, l2, coherent);
        Ok(())
    }

    /// Blocks `device` (see [`Backend::block`]): its STE becomes invalid (V = 0, 5.2) in one
    /// 64-bit store of dword 0, then CFGI_STE, TLBI_NH_ASID of the domain it was attached
    /// to, and a CMD_SYNC. The device's DMA is then terminated and recorded as C_BAD_STE
    /// (drained as [`crate::backend::FaultReason::Blocked`]). A device without a level-2
    /// table was never valid and needs nothing; an STE already invalid is still invalidated
    /// (CFGI_STE and CMD_SYNC), since an earlier block may have failed before its CFGI_STE
    /// completed.
    pub fn block<M, D>(&mut self, mem: &mut M, delay: &mut D, device: u32) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let sid = self.check_sid(device)?;
        let Some(pa) = self.strtab.ste_pa(mem, sid) else {
            // No level-2 table: the StreamID was never valid since bring-up.
            return Ok(());
        };
        let cur = tables::ste_state(mem.read_u64(pa));
        if cur != SteState::Invalid {
            tables::write_dw0(mem, pa, tables::blocked_ste()[0], self.info.coherent_walk);
        }
        // Even an STE that already reads invalid is invalidated again: an earlier block may
        // have written it and failed before the CFGI_STE completed (never short-cut).
        let mut cmds: Vec<Cmd, 2> = Vec::new();
        let _ = cmds.push(Cmd::CfgiSte { sid, leaf: true });
        if let SteState::S1(cd) = cur
            && let Some(s) = self.cds.iter_mut().find(|s| s.frame == cd)
        {
            s.users = s.users.saturating_sub(1);
            let _ = cmds.push(Cmd::TlbiNhAsid { asid: s.tag });
        }
        self.run(mem, delay, &cmds)
    }

    /// Invalidates what `gather` recorded for domain `tag` (see [`Backend::invalidate`]):
    /// one batch of TLBI commands chosen by [`queue::tlbi_for_gather`] and one CMD_SYNC;
    /// nothing for an empty gather.
    pub fn invalidate<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
        gather: &Gather,
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.check_tag(tag)?;
        if gather.is_empty() {
            return Ok(());
        }
        let cmds = queue::tlbi_for_gather(tag, gather, self.ril);
        match self.run(mem, delay, &cmds) {
            Err(e @ SmmuError::CommandError { .. }) => {
                // A TLBI the unit refused was replaced by a CMD_SYNC: make sure nothing of
                // the gather stays cached (TLBI_NH_ASID is always legal), then report.
                self.run(mem, delay, &[Cmd::TlbiNhAsid { asid: tag }])?;
                Err(e)
            }
            r => r,
        }
    }

    /// Invalidates every TLB and walk-cache entry of ASID `tag` (TLBI_NH_ASID) and waits.
    pub fn invalidate_all<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.check_tag(tag)?;
        self.run(mem, delay, &[Cmd::TlbiNhAsid { asid: tag }])
    }

    /// Frees the CD of domain `tag` when no STE points at it any more (after every device of
    /// the domain was blocked or moved): CFGI_ALL + CMD_SYNC so that no cached copy survives,
    /// then the frame goes back to `alloc`. Returns whether a CD was freed.
    pub fn release_cd<M, D, A>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        tag: u16,
    ) -> Result<bool, SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        let Some(i) = self.cds.iter().position(|s| s.tag == tag && s.users == 0) else {
            return Ok(false);
        };
        let frame = self.cds[i].frame;
        tables::write_dw0(mem, frame, 0, self.info.coherent_walk);
        if let Err(e) = self.run(mem, delay, &[Cmd::CfgiAll]) {
            // The CD is invalid now but may still be cached: keep the slot (and its frame),
            // and make sure the next attach of the tag rewrites it whatever its root (no
            // table has a width of 0).
            self.cds[i].addr_width = 0;
            return Err(e);
        }
        self.cds.swap_remove(i);
        for w in 0..(tables::CD_SIZE / 8) {
            mem.write_u64(frame + 8 * w, 0);
        }
        alloc.free_frame(frame);
        Ok(true)
    }

    /// Drains the Event queue into `sink` (see [`Backend::drain_faults`]). An active GERROR
    /// condition other than EVENTQ_ABT_ERR is acknowledged first; the queue is drained all
    /// the same (so that its next record raises the Event queue interrupt again) and the
    /// condition is then reported as the error. EVENTQ_ABT_ERR (event records were dropped;
    /// QEMU's signal for a full queue) is acknowledged and the queue drained in the same call,
    /// returning `true` (records lost), as for EVENTQ_PROD.OVFLG (see [`EventQueue::drain`]).
    pub fn drain_faults<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, SmmuError>
    where
        M: PhysMem + ?Sized,
    {
        let recovered = queue::recover(
            &mut self.regs,
            mem,
            self.cmdq.base(),
            self.cmdq.log2_entries(),
        );
        if let Err(e) = recovered {
            self.counters.count_error(e);
        }
        let coherent = self.info.coherent_walk;
        let (overflow, n) = self.evtq.drain(&mut self.regs, mem, coherent, unit, sink);
        self.counters.faults += n;
        if overflow {
            self.counters.overflows += 1;
        }
        recovered.map(|()| overflow)
    }
}

/// The info reported for an out-of-range unit index when there is no unit at all.
const NO_UNIT: UnitInfo = UnitInfo {
    addr_width: 48,
    phys_width: 48,
    leaf_sizes: LeafSizes::SZ_4K,
    caches_not_present: false,
    split_live_blocks: false,
    coherent_walk: false,
    max_tag: 0,
};

/// All SMMUv3 units of a machine (up to `N`), sharing one physical-memory accessor and one
/// delay source; implements [`Backend`] with the stage-1 format
/// [`ArmS1`] (the unit plumbing is [`UnitBackend`]'s). `CDS` bounds the distinct domain tags
/// attached per unit.
pub type SmmuBackend<R, M, D, const N: usize, const CDS: usize = DEFAULT_CDS> =
    UnitBackend<SmmuUnit<R, CDS>, M, D, N>;

impl<R, M, D, const N: usize, const CDS: usize> SmmuBackend<R, M, D, N, CDS>
where
    R: RegisterAccess,
    M: PhysMem,
    D: DelayNs,
{
    /// Frees the CD of domain `tag` on unit `unit` if no device uses it (see
    /// [`SmmuUnit::release_cd`]).
    pub fn release_cd<A: FrameAlloc + ?Sized>(
        &mut self,
        unit: UnitIndex,
        alloc: &mut A,
        tag: u16,
    ) -> Result<bool, SmmuError> {
        let (u, mem, delay) = self.parts(unit)?;
        u.release_cd(mem, delay, alloc, tag)
    }
}

impl<R: RegisterAccess, const CDS: usize> Unit for SmmuUnit<R, CDS> {
    type Format = ArmS1;
    type Error = SmmuError;
    type Regs = R;
    type Config = SmmuConfig;
    type Counters = SmmuCounters;

    const NO_UNIT: UnitInfo = NO_UNIT;
    const BAD_UNIT: SmmuError = SmmuError::BadUnit;
    const TOO_MANY_UNITS: SmmuError = SmmuError::TooManyUnits;

    fn bring_up<M, D, A>(
        regs: R,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: SmmuConfig,
    ) -> Result<Self, SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized,
    {
        SmmuUnit::new(regs, mem, delay, alloc, config)
    }

    fn unit_info(&self) -> UnitInfo {
        self.info()
    }

    fn unit_counters(&self) -> SmmuCounters {
        self.counters()
    }

    fn prepare_device<M>(
        &mut self,
        mem: &mut M,
        alloc: &mut dyn FrameAlloc,
        device: u32,
    ) -> Result<(), SmmuError>
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
    ) -> Result<(), SmmuError>
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
    ) -> Result<(), SmmuError>
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
    ) -> Result<(), SmmuError>
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
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.invalidate_all(mem, delay, tag)
    }

    /// Frees the domain's context descriptor (see [`SmmuUnit::release_cd`]); a CD some STE
    /// still points at stays.
    fn release_tag<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut dyn FrameAlloc,
        tag: u16,
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        self.release_cd(mem, delay, alloc, tag).map(|_| ())
    }

    /// Enables the Event queue and GERROR interrupts as `irq` (see
    /// [`fault::enable_interrupt`]).
    fn enable_interrupt<M, D>(
        &mut self,
        _mem: &mut M,
        delay: &mut D,
        irq: FaultInterrupt,
    ) -> Result<(), SmmuError>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let r = fault::enable_interrupt(&mut self.regs, delay, self.timing, Idr0(self.idr[0]), irq);
        if let Err(e @ SmmuError::Timeout(_)) = r {
            self.counters.count_error(e);
        }
        r
    }

    fn drain<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, SmmuError>
    where
        M: PhysMem + ?Sized,
    {
        self.drain_faults(mem, unit, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec as StdVec;

    struct Bump {
        next: u64,
        freed: StdVec<u64>,
        fail_after: Option<u32>,
    }
    impl FrameAlloc for Bump {
        fn alloc_frame(&mut self) -> Option<u64> {
            if let Some(n) = self.fail_after.as_mut() {
                if *n == 0 {
                    return None;
                }
                *n -= 1;
            }
            if let Some(f) = self.freed.pop() {
                return Some(f);
            }
            let f = self.next;
            self.next += PAGE_SIZE;
            Some(f)
        }
        fn free_frame(&mut self, pa: u64) {
            self.freed.push(pa);
        }
    }

    #[test]
    fn aligned_blocks() {
        let mut a = Bump {
            next: 0x1000,
            freed: StdVec::new(),
            fail_after: None,
        };
        // Frames 0x1000, 0x2000, 0x3000: the 8 KiB block at 0x2000.
        assert_eq!(alloc_block(&mut a, 1), Some(0x2000));
        assert_eq!(a.freed, [0x1000]);
        let b = alloc_block(&mut a, 2).unwrap();
        assert_eq!(b % 0x4000, 0);
        let mut a = Bump {
            next: 0x1000,
            freed: StdVec::new(),
            fail_after: Some(2),
        };
        assert_eq!(alloc_block(&mut a, 2), None);
        assert_eq!(a.freed, [0x2000, 0x1000], "returned most recent first");
    }

    #[test]
    fn info_from_idrs() {
        let i = unit_info(Idr0(0x0d44_101b), Idr3(0x1404), Idr5(0x74));
        assert_eq!(i.addr_width, 48);
        assert_eq!(i.phys_width, 44);
        assert_eq!(i.leaf_sizes, LeafSizes::STANDARD);
        assert!(i.split_live_blocks);
        assert!(i.coherent_walk);
        assert_eq!(i.max_tag, u16::MAX);
        let i = unit_info(Idr0(0x0d44_000b), Idr3(0x0800), Idr5(0x16));
        assert!(!i.split_live_blocks);
        assert!(!i.coherent_walk);
        assert_eq!(i.max_tag, 255);
        assert_eq!(i.phys_width, 48, "52-bit OAS capped to the format");
    }

    #[test]
    fn error_kinds() {
        assert_eq!(SmmuError::Timeout(WaitFor::Gbpa).kind(), ErrorKind::Timeout);
        assert_eq!(
            SmmuError::CommandError { code: 1, opcode: 0 }.kind(),
            ErrorKind::Hardware
        );
        assert_eq!(SmmuError::NoFrame.kind(), ErrorKind::NoFrame);
        assert_eq!(SmmuError::BadDevice.kind(), ErrorKind::BadDevice);
        assert_eq!(SmmuError::BadDomain.kind(), ErrorKind::Unsupported);
    }
}

//! A register-level model of an Arm SMMUv3 (IHI 0070), stage 1 only, written from the
//! architecture specification independently of `iommu_hal`.
//!
//! The model sits behind [`iommu_hal::RegisterAccess`] (through [`SmmuHandle`]) and reads its
//! structures and queues from a [`SharedMem`], the way hardware reads RAM:
//!
//! - registers with side effects: CR0 -> CR0ACK (optionally acknowledged only after
//!   [`SmmuConfig::ack_delay_reads`] reads), GBPA with its Update handshake, GERROR/GERRORN
//!   toggle semantics, guarded registers (bases are read-only while the unit or queue is on);
//! - the Stream table (linear and 2-level), STEs and CDs with their legality rules;
//! - its own stage-1 walker (AArch64, 4 KiB granule: [`tables::walk_s1`]);
//! - caches that keep entries until the right command: an L1STD cache, STE and CD caches per
//!   StreamID, a TLB keyed by (VMID, ASID or global, level, VA) and a walk cache of table
//!   descriptors. Leaf-only TLBI keeps the walk cache; TTL hints are honoured strictly;
//!   global entries survive TLBI by ASID. A driver that invalidates too narrowly sees stale
//!   translations ([`SmmuStats::stale_hits`] counts hits that disagree with memory);
//! - the Command queue (processed on CMDQ_PROD writes, CERROR_ILL stops it until GERRORN
//!   acknowledges; by default invalidations take effect only when a later CMD_SYNC is
//!   consumed, as 4.3.8 allows, see [`SmmuConfig::complete_invalidation_at_sync`]) and the
//!   Event queue (overflow flag);
//! - interrupts (3.18, 6.3.16 to 6.3.22, 6.3.30 to 6.3.32): IRQ_CTRL acknowledged in
//!   IRQ_CTRLACK (or never, [`SmmuConfig::irq_ctrl_hung`]); the Event queue interrupt when a
//!   record makes the queue non-empty, the GERROR interrupt when a condition becomes active,
//!   each on its wired line or as an MSI ([`SmmuModel::irq_log`]); MSI configuration written
//!   while its interrupt is enabled, or on a unit without MSIs, is misuse.
//!
//! Behaviour when SMMUEN == 0: transactions bypass untranslated unless GBPA.ABORT == 1
//! (QEMU resets ABORT to 0; [`SmmuConfig::gbpa_abort_at_reset`] changes that).
//!
//! Not modelled: stage 2 translation (an STE enabling it is treated as C_BAD_STE), substreams
//! (IDR1.SSIDSIZE = 0), 16K/64K granules (a CD selecting them is C_BAD_CD), VMSAv8-32, HTTU,
//! stalls, ATS/PRI, external aborts, EL2/EL3 StreamWorlds.

pub mod fault;
pub mod queue;
pub mod regs;
pub mod tables;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use iommu_hal::RegisterAccess;

use crate::sim::SharedMem;

pub use fault::{Event, EventQueue, EventType, FaultClass, RecordOutcome};
pub use queue::{CmdError, Command, CommandQueue, TlbiRange};
pub use regs::SmmuConfig;
pub use tables::{Cd, S1Context, Ste, SteConfig, StreamTable};

use regs::*;
use tables::{ApTable, Leaf, NoWalkCache, WalkCache, level_shift};

/// The direction of a DMA access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Device reads memory.
    Read,
    /// Device writes memory.
    Write,
}

/// Why a transaction did not reach memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuFault {
    /// SMMUEN == 0 and GBPA.ABORT == 1: aborted, no event (3.11, 6.3.14).
    GlobalAbort,
    /// STE.Config == abort (0b0xx): aborted, no event recorded (5.2).
    SteAbort,
    /// Terminated with a fault or configuration error.
    Terminated {
        /// The event the SMMU raised.
        event: EventType,
        /// Whether it was written to the Event queue (false when suppressed by CD.R == 0 or
        /// CR2.RECINVSID == 0, or when the queue was disabled, full or in error).
        recorded: bool,
        /// Abort returned to the device (true), or RAZ/WI completion (CD.A == 0).
        abort: bool,
    },
}

impl SmmuFault {
    /// The event type, if the fault raised one.
    pub fn event(&self) -> Option<EventType> {
        match self {
            SmmuFault::Terminated { event, .. } => Some(*event),
            _ => None,
        }
    }
}

/// Counters of what the model did, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmmuStats {
    /// Commands consumed successfully, by opcode.
    pub commands: BTreeMap<u8, u64>,
    /// CMD_SYNCs consumed.
    pub syncs: u64,
    /// CMD_SYNC completion MSIs written (IDR0.MSI, CS == SIG_IRQ, MSIAddress != 0).
    pub sync_msis: u64,
    /// CMD_SYNC wired completion interrupts (CS == SIG_IRQ without an MSI).
    pub sync_irqs: u64,
    /// Command queue errors raised.
    pub cmd_errors: u64,
    /// Translations served from the TLB.
    pub tlb_hits: u64,
    /// TLB hits whose cached result differs from what a walk of memory gives now.
    pub stale_hits: u64,
    /// Translations that walked the tables.
    pub tlb_misses: u64,
    /// Walks that started from a cached table descriptor.
    pub walk_cache_hits: u64,
    /// STE/CD lookups served from the configuration cache.
    pub cfg_hits: u64,
    /// Configuration cache hits whose STE or CD differs from memory.
    pub stale_cfg_hits: u64,
    /// STE/CD fetches from memory.
    pub cfg_misses: u64,
    /// Transactions that bypassed (SMMUEN == 0 or STE bypass).
    pub bypassed: u64,
    /// Event records written to the Event queue.
    pub events_written: u64,
    /// Event records discarded (queue disabled, full or in error).
    pub events_discarded: u64,
    /// GERROR interrupts (a GERROR bit became active with IRQ_CTRLACK.GERROR_IRQEN set).
    pub gerror_irqs: u64,
    /// Event queue interrupts (a record made the queue non-empty with
    /// IRQ_CTRLACK.EVENTQ_IRQEN set).
    pub eventq_irqs: u64,
}

/// Which interrupt the SMMU raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqSource {
    /// The Event queue became non-empty.
    EventQueue,
    /// A GERROR condition became active.
    Gerror,
}

/// One interrupt the SMMU raised: on its wired line, or as an MSI (IDR0.MSI and the source's
/// `*_IRQ_CFG0.ADDR` non-zero, 6.3.20 / 6.3.30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Irq {
    /// The source.
    pub source: IrqSource,
    /// `(address, data)` of the MSI written, `None` for the wired line.
    pub msi: Option<(u64, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TlbKey {
    vmid: u16,
    /// `None` for global entries (nG == 0).
    asid: Option<u16>,
    level: u32,
    vpn: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TlbEntry {
    va_base: u64,
    leaf: Leaf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WalkKey {
    vmid: u16,
    asid: u16,
    /// The level of the table this entry points to (1..=3).
    level: u32,
    /// VA >> size of the region that table covers.
    vpn: u64,
}

struct ModelWalkCache<'a> {
    map: &'a mut HashMap<WalkKey, (u64, ApTable)>,
    vmid: u16,
    asid: u16,
    hits: u64,
}

impl WalkCache for ModelWalkCache<'_> {
    fn lookup(&mut self, level: u32, va: u64) -> Option<(u64, ApTable)> {
        let key = WalkKey {
            vmid: self.vmid,
            asid: self.asid,
            level,
            vpn: va >> level_shift(level - 1),
        };
        let r = self.map.get(&key).copied();
        if r.is_some() {
            self.hits += 1;
        }
        r
    }
    fn insert(&mut self, level: u32, va: u64, table: u64, ap: ApTable) {
        let key = WalkKey {
            vmid: self.vmid,
            asid: self.asid,
            level,
            vpn: va >> level_shift(level - 1),
        };
        self.map.insert(key, (table, ap));
    }
}

/// The SMMUv3 model. Drive it through [`RegisterAccess`] and issue DMA with
/// [`SmmuModel::dma_read`] / [`SmmuModel::dma_write`] / [`SmmuModel::translate`].
#[derive(Debug)]
pub struct SmmuModel {
    mem: SharedMem,
    cfg: SmmuConfig,
    cr0: u32,
    cr0ack: u32,
    ack_reads_left: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    irq_ctrlack: u32,
    gerror: u32,
    gerrorn: u32,
    strtab: StreamTable,
    cmdq: CommandQueue,
    eventq: EventQueue,
    cons_reads_left: Option<u32>,
    pending_invalidations: Vec<Command>,
    misc: BTreeMap<usize, u32>,
    l1std_cache: HashMap<u32, u64>,
    ste_cache: HashMap<u32, Ste>,
    cd_cache: HashMap<u32, Cd>,
    tlb: HashMap<TlbKey, TlbEntry>,
    walk_cache: HashMap<WalkKey, (u64, ApTable)>,
    /// Counters.
    pub stats: SmmuStats,
    /// Every event the SMMU tried to record, whether or not it reached the queue.
    pub event_log: Vec<Event>,
    /// Every interrupt raised, oldest first.
    pub irq_log: Vec<Irq>,
    /// Driver mistakes the model noticed, in order: writes to guarded registers while enabled,
    /// wrong access widths, Reserved offsets, GBPA writes without Update, and the reason for
    /// every C_BAD_STE / C_BAD_CD.
    pub misuse: Vec<String>,
}

impl SmmuModel {
    /// A model in its reset state over `mem`.
    pub fn new(mem: SharedMem, cfg: SmmuConfig) -> SmmuModel {
        let gbpa = GBPA_RESET
            | if cfg.gbpa_abort_at_reset {
                GBPA_ABORT
            } else {
                0
            };
        SmmuModel {
            mem,
            cfg,
            cr0: 0,
            cr0ack: 0,
            ack_reads_left: 0,
            cr1: 0,
            cr2: 0,
            gbpa,
            irq_ctrl: 0,
            irq_ctrlack: 0,
            gerror: 0,
            gerrorn: 0,
            strtab: StreamTable { base: 0, cfg: 0 },
            cmdq: CommandQueue::default(),
            eventq: EventQueue::default(),
            cons_reads_left: None,
            pending_invalidations: Vec::new(),
            misc: BTreeMap::new(),
            l1std_cache: HashMap::new(),
            ste_cache: HashMap::new(),
            cd_cache: HashMap::new(),
            tlb: HashMap::new(),
            walk_cache: HashMap::new(),
            stats: SmmuStats::default(),
            event_log: Vec::new(),
            irq_log: Vec::new(),
            misuse: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SmmuConfig {
        &self.cfg
    }
    /// Mutable configuration (behaviour knobs may be changed at any time; ID fields should be
    /// set before the driver probes).
    pub fn config_mut(&mut self) -> &mut SmmuConfig {
        &mut self.cfg
    }
    /// The simulated memory the model reads.
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }
    /// Current CR0ACK.
    pub fn cr0ack(&self) -> u32 {
        self.cr0ack
    }
    /// Whether translation is enabled (CR0ACK.SMMUEN).
    pub fn enabled(&self) -> bool {
        self.cr0ack & CR0_SMMUEN != 0
    }
    /// Active global errors (GERROR ^ GERRORN).
    pub fn active_gerrors(&self) -> u32 {
        (self.gerror ^ self.gerrorn) & GERROR_IMPLEMENTED
    }
    /// Number of TLB entries.
    pub fn tlb_len(&self) -> usize {
        self.tlb.len()
    }
    /// Number of walk-cache entries.
    pub fn walk_cache_len(&self) -> usize {
        self.walk_cache.len()
    }
    /// Whether an STE for `sid` is cached.
    pub fn ste_cached(&self, sid: u32) -> bool {
        self.ste_cache.contains_key(&sid)
    }
    /// Whether a CD for `sid` is cached.
    pub fn cd_cached(&self, sid: u32) -> bool {
        self.cd_cache.contains_key(&sid)
    }
    /// Makes the GERROR conditions `bits` active as the implementation would on its own (e.g.
    /// SFM_ERR on entering Service Failure Mode, an MSI write that aborted), raising the
    /// GERROR interrupt when enabled. For testing how drivers handle them.
    pub fn inject_global_error(&mut self, bits: u32) {
        self.raise_gerror(bits & GERROR_IMPLEMENTED);
    }
    /// Drops every cached structure and translation (as a reset would).
    pub fn flush_all_caches(&mut self) {
        self.l1std_cache.clear();
        self.ste_cache.clear();
        self.cd_cache.clear();
        self.tlb.clear();
        self.walk_cache.clear();
    }
    /// Stops (true) or restarts (false) command consumption, as [`SmmuConfig::cmdq_hung`].
    pub fn set_cmdq_hung(&mut self, hung: bool) {
        self.cfg.cmdq_hung = hung;
        if !hung {
            self.process_cmdq();
        }
    }
    /// Event records between EVENTQ_CONS and EVENTQ_PROD (not consumed).
    pub fn pending_events(&self) -> Vec<Event> {
        let q = &self.eventq;
        let qs = self.cfg.eventqs;
        let l2 = q.log2size(qs);
        let m = (2u32 << l2) - 1;
        let mut rd = q.cons & m;
        let wr = q.prod & m;
        let mut out = Vec::new();
        let mem = self.mem.borrow();
        while rd != wr {
            let idx = rd & ((1u32 << l2) - 1);
            let a = q.base_addr(qs) + 32 * idx as u64;
            out.push(Event::decode([
                mem.read(a),
                mem.read(a + 8),
                mem.read(a + 16),
                mem.read(a + 24),
            ]));
            rd = (rd + 1) & m;
        }
        out
    }

    fn note(&mut self, s: String) {
        self.misuse.push(s);
    }

    // ---------------------------------------------------------------- registers

    fn complete_cr0(&mut self) {
        let old = self.cr0ack;
        self.cr0ack = self.cr0;
        self.ack_reads_left = 0;
        if old & CR0_CMDQEN == 0 && self.cr0ack & CR0_CMDQEN != 0 {
            self.process_cmdq();
        }
    }

    fn write_cr0(&mut self, v: u32) {
        if v & !CR0_IMPLEMENTED != 0 {
            self.note(format!("CR0 write {v:#x} sets unimplemented/RES0 bits"));
        }
        if self.cr0 != self.cr0ack {
            self.note("CR0 written while a previous update was not yet acknowledged".into());
        }
        self.cr0 = v & CR0_IMPLEMENTED;
        if self.cfg.ack_delay_reads == 0 {
            self.complete_cr0();
        } else {
            self.ack_reads_left = self.cfg.ack_delay_reads;
        }
    }

    fn read_cr0ack(&mut self) -> u32 {
        if self.cr0 != self.cr0ack {
            if self.ack_reads_left <= 1 {
                self.complete_cr0();
            } else {
                self.ack_reads_left -= 1;
                return self.cr0ack;
            }
        }
        self.cr0ack
    }

    fn smmu_off(&self) -> bool {
        (self.cr0 | self.cr0ack) & CR0_SMMUEN == 0
    }
    fn cmdq_off(&self) -> bool {
        (self.cr0 | self.cr0ack) & CR0_CMDQEN == 0
    }
    fn eventq_off(&self) -> bool {
        (self.cr0 | self.cr0ack) & CR0_EVENTQEN == 0
    }

    fn raise_gerror(&mut self, bitmask: u32) {
        // Only errors that are not already active toggle (6.3.18).
        if (self.gerror ^ self.gerrorn) & bitmask == 0 {
            self.gerror ^= bitmask;
            if self.irq_ctrlack & IRQ_CTRL_GERROR_IRQEN != 0 {
                self.stats.gerror_irqs += 1;
                self.raise_irq(IrqSource::Gerror);
            }
        }
    }

    /// Raises `source`'s interrupt: an MSI when the unit has MSIs and the source's CFG0.ADDR
    /// is non-zero (6.3.20, 6.3.30: ADDR == 0 sends no MSI), else the wired line.
    fn raise_irq(&mut self, source: IrqSource) {
        let (cfg0, cfg1) = match source {
            IrqSource::EventQueue => (EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1),
            IrqSource::Gerror => (GERROR_IRQ_CFG0, GERROR_IRQ_CFG1),
        };
        let reg = |m: &BTreeMap<usize, u32>, o: usize| u64::from(m.get(&o).copied().unwrap_or(0));
        let addr = (reg(&self.misc, cfg0) | reg(&self.misc, cfg0 + 4) << 32) & IRQ_CFG0_ADDR_MASK;
        let msi = (self.cfg.msi && addr != 0).then(|| (addr, reg(&self.misc, cfg1) as u32));
        self.irq_log.push(Irq { source, msi });
    }

    /// The IRQ_CTRL enable guarding MSI configuration register `off`, if it is one.
    fn irq_cfg_guard(off: usize) -> Option<u32> {
        match off {
            GERROR_IRQ_CFG0 | 0x6c | GERROR_IRQ_CFG1 | GERROR_IRQ_CFG2 => {
                Some(IRQ_CTRL_GERROR_IRQEN)
            }
            EVENTQ_IRQ_CFG0 | 0xb4 | EVENTQ_IRQ_CFG1 | EVENTQ_IRQ_CFG2 => {
                Some(IRQ_CTRL_EVENTQ_IRQEN)
            }
            _ => None,
        }
    }

    /// Checks a write to an MSI configuration register: they exist only with IDR0.MSI (RES0
    /// otherwise), and must not change while their source's interrupt is enabled (6.3.20,
    /// 6.3.30). Returns whether the write is stored.
    fn irq_cfg_write_ok(&mut self, off: usize) -> bool {
        let Some(guard) = Self::irq_cfg_guard(off) else {
            return true;
        };
        if !self.cfg.msi {
            self.note(format!(
                "write to MSI configuration register {off:#x} on a unit without MSIs (IDR0.MSI = 0)"
            ));
            return false;
        }
        if (self.irq_ctrl | self.irq_ctrlack) & guard != 0 {
            self.note(format!(
                "MSI configuration register {off:#x} written while its interrupt is enabled"
            ));
        }
        true
    }

    /// Maps an offset to the canonical register offset, applying the page-1 alias rules.
    fn canon(&mut self, offset: usize) -> Option<usize> {
        if (PAGE1..2 * PAGE1).contains(&offset) {
            let o = offset - PAGE1;
            if o == 0xa8 || o == 0xac {
                return Some(offset);
            }
            if self.cfg.page1_alias {
                return Some(o);
            }
            self.note(format!("access to Reserved page-1 offset {offset:#x}"));
            return None;
        }
        if offset == 0xa8 || offset == 0xac {
            if self.cfg.page1_alias {
                return Some(PAGE1 + offset);
            }
            self.note(format!(
                "access to page-0 offset {offset:#x}: EVENTQ_PROD/CONS are in page 1 (0x100a8/0x100ac)"
            ));
            return None;
        }
        Some(offset)
    }

    fn read_reg32(&mut self, offset: usize) -> u32 {
        let Some(off) = self.canon(offset) else {
            return 0;
        };
        match off {
            IDR0 => self.cfg.idr0(),
            IDR1 => self.cfg.idr1(),
            IDR2 | IDR4 | IIDR => 0,
            IDR3 => self.cfg.idr3(),
            IDR5 => self.cfg.idr5(),
            AIDR => self.cfg.aidr,
            CR0 => self.cr0,
            CR0ACK => self.read_cr0ack(),
            CR1 => self.cr1,
            CR2 => self.cr2,
            STATUSR | AGBPA => 0,
            GBPA => self.gbpa,
            IRQ_CTRL => self.irq_ctrl,
            IRQ_CTRLACK => self.irq_ctrlack,
            GERROR => self.gerror,
            GERRORN => self.gerrorn,
            STRTAB_BASE_CFG => self.strtab.cfg,
            CMDQ_PROD => self.cmdq.prod,
            CMDQ_CONS => {
                if let Some(n) = self.cons_reads_left {
                    if n <= 1 {
                        self.cons_reads_left = None;
                        self.process_cmdq();
                    } else {
                        self.cons_reads_left = Some(n - 1);
                    }
                }
                self.cmdq.cons
            }
            EVENTQ_PROD => self.eventq.prod,
            EVENTQ_CONS => self.eventq.cons,
            STRTAB_BASE => self.strtab.base as u32,
            0x84 => (self.strtab.base >> 32) as u32,
            CMDQ_BASE => self.cmdq.base as u32,
            0x94 => (self.cmdq.base >> 32) as u32,
            EVENTQ_BASE => self.eventq.base as u32,
            0xa4 => (self.eventq.base >> 32) as u32,
            GERROR_IRQ_CFG0 | 0x6c | GERROR_IRQ_CFG1 | GERROR_IRQ_CFG2 | EVENTQ_IRQ_CFG0 | 0xb4
            | EVENTQ_IRQ_CFG1 | EVENTQ_IRQ_CFG2 => self.misc.get(&off).copied().unwrap_or(0),
            _ => {
                self.note(format!("read32 of unmodelled offset {offset:#x}"));
                0
            }
        }
    }

    fn write_half(&mut self, which: u64, high: bool, value: u32) -> u64 {
        if high {
            (which & 0xffff_ffff) | (value as u64) << 32
        } else {
            (which & !0xffff_ffff) | value as u64
        }
    }

    fn write_reg32(&mut self, offset: usize, value: u32) {
        let Some(off) = self.canon(offset) else {
            return;
        };
        match off {
            CR0 => self.write_cr0(value),
            CR1 => self.cr1 = value,
            CR2 => self.cr2 = value,
            GBPA => {
                if value & GBPA_UPDATE == 0 {
                    self.note("GBPA written without Update = 1: ignored (6.3.14.1)".into());
                } else {
                    self.gbpa = value & GBPA_FIELDS;
                }
            }
            IRQ_CTRL => {
                if value & !0x7 != 0 {
                    self.note(format!("IRQ_CTRL write {value:#x} sets RES0 bits"));
                }
                self.irq_ctrl = value & 0x7;
                if !self.cfg.irq_ctrl_hung {
                    // Enabling does not raise interrupts for conditions already present
                    // (nothing goes from empty to non-empty, nothing becomes active).
                    self.irq_ctrlack = self.irq_ctrl;
                }
            }
            GERRORN => {
                let active = self.gerror ^ self.gerrorn;
                let toggled = self.gerrorn ^ value;
                if toggled & !active & GERROR_IMPLEMENTED != 0 {
                    self.note(format!(
                        "GERRORN write toggles inactive errors {:#x}",
                        toggled & !active
                    ));
                }
                self.gerrorn = value & GERROR_IMPLEMENTED;
                if active & GERROR_CMDQ_ERR != 0 && self.active_gerrors() & GERROR_CMDQ_ERR == 0 {
                    self.process_cmdq();
                }
            }
            STRTAB_BASE_CFG => {
                if self.smmu_off() {
                    self.strtab.cfg = value & 0x0003_07ff;
                } else {
                    self.note("STRTAB_BASE_CFG written while SMMUEN = 1: ignored".into());
                }
            }
            STRTAB_BASE | 0x84 => {
                if self.smmu_off() {
                    self.strtab.base = self.write_half(self.strtab.base, off == 0x84, value);
                } else {
                    self.note("STRTAB_BASE written while SMMUEN = 1: ignored".into());
                }
            }
            CMDQ_BASE | 0x94 => {
                if self.cmdq_off() {
                    self.cmdq.base = self.write_half(self.cmdq.base, off == 0x94, value);
                } else {
                    self.note("CMDQ_BASE written while CMDQEN = 1: ignored".into());
                }
            }
            EVENTQ_BASE | 0xa4 => {
                if self.eventq_off() {
                    self.eventq.base = self.write_half(self.eventq.base, off == 0xa4, value);
                } else {
                    self.note("EVENTQ_BASE written while EVENTQEN = 1: ignored".into());
                }
            }
            CMDQ_PROD => {
                self.cmdq.prod = value & 0x000f_ffff;
                if self.cfg.cons_delay_reads == 0 {
                    self.process_cmdq();
                } else {
                    self.cons_reads_left = Some(self.cfg.cons_delay_reads);
                }
            }
            CMDQ_CONS => {
                if self.cmdq_off() {
                    self.cmdq.cons = value & 0x7f0f_ffff;
                } else {
                    self.note("CMDQ_CONS written while CMDQEN = 1: ignored".into());
                }
            }
            EVENTQ_PROD => {
                if self.eventq_off() {
                    self.eventq.prod = value & 0x800f_ffff;
                } else {
                    self.note("EVENTQ_PROD written while EVENTQEN = 1: ignored".into());
                }
            }
            EVENTQ_CONS => self.eventq.cons = value & 0x800f_ffff,
            GERROR_IRQ_CFG0 | 0x6c | GERROR_IRQ_CFG1 | GERROR_IRQ_CFG2 | EVENTQ_IRQ_CFG0 | 0xb4
            | EVENTQ_IRQ_CFG1 | EVENTQ_IRQ_CFG2 => {
                if self.irq_cfg_write_ok(off) {
                    self.misc.insert(off, value);
                }
            }
            IDR0 | IDR1 | IDR2 | IDR3 | IDR4 | IDR5 | IIDR | AIDR | CR0ACK | STATUSR
            | IRQ_CTRLACK | GERROR | AGBPA => {
                self.note(format!("write to read-only register at {offset:#x}"));
            }
            _ => self.note(format!("write32 to unmodelled offset {offset:#x}")),
        }
    }

    fn is_64bit_reg(off: usize) -> bool {
        matches!(
            off,
            STRTAB_BASE | CMDQ_BASE | EVENTQ_BASE | GERROR_IRQ_CFG0 | EVENTQ_IRQ_CFG0
        )
    }

    fn read_reg64(&mut self, offset: usize) -> u64 {
        let Some(off) = self.canon(offset) else {
            return 0;
        };
        if !Self::is_64bit_reg(off) {
            self.note(format!("64-bit read of 32-bit register at {offset:#x}"));
            return 0;
        }
        let lo = self.read_reg32(off) as u64;
        let hi = self.read_reg32(off + 4) as u64;
        lo | hi << 32
    }

    fn write_reg64(&mut self, offset: usize, value: u64) {
        let Some(off) = self.canon(offset) else {
            return;
        };
        if !Self::is_64bit_reg(off) {
            self.note(format!(
                "64-bit write of 32-bit register at {offset:#x}: ignored"
            ));
            return;
        }
        // One 64-bit access: check the guard once, then store both halves.
        let guarded_ok = match off {
            STRTAB_BASE => self.smmu_off(),
            CMDQ_BASE => self.cmdq_off(),
            EVENTQ_BASE => self.eventq_off(),
            _ => true,
        };
        if !guarded_ok {
            self.note(format!(
                "write to guarded register {offset:#x} while enabled: ignored"
            ));
            return;
        }
        match off {
            STRTAB_BASE => self.strtab.base = value,
            CMDQ_BASE => self.cmdq.base = value,
            EVENTQ_BASE => self.eventq.base = value,
            _ => {
                if self.irq_cfg_write_ok(off) {
                    self.misc.insert(off, value as u32);
                    self.misc.insert(off + 4, (value >> 32) as u32);
                }
            }
        }
    }

    // ---------------------------------------------------------------- command queue

    fn process_cmdq(&mut self) {
        let qs = self.cfg.cmdqs;
        while self.cr0ack & CR0_CMDQEN != 0
            && !self.cfg.cmdq_hung
            && self.active_gerrors() & GERROR_CMDQ_ERR == 0
            && !self.cmdq.is_empty(qs)
        {
            let raw = self.cmdq.read_head(&self.mem, qs);
            match queue::decode(&self.cfg, raw) {
                Ok(cmd) => {
                    self.execute(cmd);
                    *self.stats.commands.entry(Command::opcode(raw)).or_default() += 1;
                    self.cmdq.advance(qs);
                }
                Err(e) => {
                    // 7.1: CONS stays at the command, ERR is set before GERROR.CMDQ_ERR.
                    self.cmdq.set_error(e);
                    self.stats.cmd_errors += 1;
                    self.raise_gerror(GERROR_CMDQ_ERR);
                    return;
                }
            }
        }
    }

    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Sync { .. } => {
                // 4.3.8: a CMD_SYNC is consumed only once all prior invalidations completed.
                for c in std::mem::take(&mut self.pending_invalidations) {
                    self.apply(c);
                }
                self.apply(cmd);
            }
            Command::Prefetch | Command::StallControl => {}
            _ if self.cfg.complete_invalidation_at_sync => self.pending_invalidations.push(cmd),
            _ => self.apply(cmd),
        }
    }

    /// Number of consumed invalidation commands still waiting for a CMD_SYNC to take effect
    /// (with [`SmmuConfig::complete_invalidation_at_sync`]).
    pub fn pending_invalidations(&self) -> usize {
        self.pending_invalidations.len()
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Prefetch | Command::StallControl | Command::TlbiEl2 | Command::TlbiS2Ipa => {}
            Command::CfgiSte { sid, leaf } => {
                self.ste_cache.remove(&sid);
                self.cd_cache.remove(&sid);
                if !leaf {
                    let i = self.strtab.l1_index(sid);
                    self.l1std_cache.remove(&i);
                }
            }
            Command::CfgiSteRange { sid, range } => {
                if range >= 31 {
                    self.l1std_cache.clear();
                    self.ste_cache.clear();
                    self.cd_cache.clear();
                } else {
                    let n = 2u64 << range;
                    let start = sid as u64 & !(n - 1);
                    let end = start + n;
                    let inr = |s: &u32| (start..end).contains(&(*s as u64));
                    self.ste_cache.retain(|s, _| !inr(s));
                    self.cd_cache.retain(|s, _| !inr(s));
                    let split = self.strtab.split();
                    self.l1std_cache.retain(|i, _| {
                        let lo = (*i as u64) << split;
                        let hi = lo + (1u64 << split);
                        hi <= start || lo >= end
                    });
                }
            }
            Command::CfgiCd { sid, ssid, leaf: _ } => {
                // SSIDSIZE == 0: only SubstreamID 0 names the single CD (4.3.3).
                if ssid == 0 {
                    self.cd_cache.remove(&sid);
                }
            }
            Command::CfgiCdAll { sid } => {
                self.cd_cache.remove(&sid);
            }
            Command::TlbiNhAll { vmid } | Command::TlbiS12Vmall { vmid } => {
                self.tlb.retain(|k, _| k.vmid != vmid);
                self.walk_cache.retain(|k, _| k.vmid != vmid);
            }
            Command::TlbiNhAsid { vmid, asid } => {
                // Non-global entries only (4.4.2.2).
                self.tlb
                    .retain(|k, _| !(k.vmid == vmid && k.asid == Some(asid)));
                self.walk_cache
                    .retain(|k, _| !(k.vmid == vmid && k.asid == asid));
            }
            Command::TlbiNhVa { vmid, asid, range } => self.tlbi_va(vmid, asid, range),
            Command::TlbiNsnhAll => {
                self.tlb.clear();
                self.walk_cache.clear();
            }
            Command::Sync {
                cs,
                msi_addr,
                msi_data,
            } => {
                self.stats.syncs += 1;
                if cs == 1 {
                    if self.cfg.msi && msi_addr != 0 {
                        self.mem.borrow_mut().write32(msi_addr, msi_data);
                        self.stats.sync_msis += 1;
                    } else {
                        self.stats.sync_irqs += 1;
                    }
                }
            }
        }
    }

    fn tlbi_va(&mut self, vmid: u16, asid: Option<u16>, r: TlbiRange) {
        // Entries are all inserted with the 4 KiB granule: a TG naming another granule does
        // not have to (and here does not) affect them (4.4.1.1).
        if r.tg > 1 {
            return;
        }
        let (start, end) = r.span();
        let ttl = r.ttl as u32;
        self.tlb.retain(|k, e| {
            let asid_match = match asid {
                None => true,
                Some(a) => k.asid.is_none() || k.asid == Some(a),
            };
            let size = 1u64 << e.leaf.size_log2();
            let hit = k.vmid == vmid
                && asid_match
                && e.va_base < end
                && e.va_base.saturating_add(size) > start
                && (ttl == 0 || e.leaf.level == ttl);
            !hit
        });
        if !r.leaf {
            self.walk_cache.retain(|k, _| {
                let shift = level_shift(k.level - 1);
                let lo = k.vpn << shift;
                let hi = lo.saturating_add(1u64 << shift);
                let hit = k.vmid == vmid
                    && asid.is_none_or(|a| a == k.asid)
                    && lo < end
                    && hi > start
                    && (ttl == 0 || k.level <= ttl);
                !hit
            });
        }
    }

    // ---------------------------------------------------------------- events

    fn record(&mut self, ev: Event) -> bool {
        self.event_log.push(ev);
        let enabled = self.cr0ack & CR0_EVENTQEN != 0;
        let abt = self.active_gerrors() & GERROR_EVENTQ_ABT_ERR != 0;
        let was_empty = self.eventq.is_empty(self.cfg.eventqs);
        let out = self
            .eventq
            .record(&self.mem, self.cfg.eventqs, enabled, abt, &ev);
        if out == RecordOutcome::Written {
            self.stats.events_written += 1;
            // 3.18: the Event queue interrupt is sent when the queue becomes non-empty; a
            // record added behind unconsumed ones raises nothing.
            if was_empty && self.irq_ctrlack & IRQ_CTRL_EVENTQ_IRQEN != 0 {
                self.stats.eventq_irqs += 1;
                self.raise_irq(IrqSource::EventQueue);
            }
            true
        } else {
            self.stats.events_discarded += 1;
            false
        }
    }

    fn config_error(&mut self, kind: EventType, sid: u32) -> SmmuFault {
        // C_BAD_STREAMID/C_BAD_STE/C_BAD_CD carry only StreamID and SubstreamID (7.3.3-7.3.11);
        // the rest of the record is RES0.
        let recorded = self.record(Event::new(kind, sid));
        SmmuFault::Terminated {
            event: kind,
            recorded,
            abort: true,
        }
    }

    // ---------------------------------------------------------------- configuration

    /// Reads the STE for `sid` from memory through the Stream table, optionally using and
    /// filling the L1STD cache.
    fn fetch_ste(&mut self, sid: u32, use_cache: bool) -> Result<Ste, EventType> {
        let st = self.strtab;
        if !st.sid_in_range(&self.cfg, sid) {
            return Err(EventType::CBadStreamId);
        }
        let addr = if st.two_level(&self.cfg) {
            let i = st.l1_index(sid);
            let l1 = match self.l1std_cache.get(&i) {
                Some(&d) if use_cache => d,
                _ => {
                    let d = self.mem.borrow().read(st.l1std_addr(sid));
                    if use_cache {
                        self.l1std_cache.insert(i, d);
                    }
                    d
                }
            };
            st.l2_ste_addr(l1, sid)
                .map_err(|_| EventType::CBadStreamId)?
        } else {
            st.linear_ste_addr(sid)
        };
        Ok(Ste(tables::read_struct(&self.mem, addr)))
    }

    /// Reads the STE for `sid` from memory through the Stream table, touching no cache.
    fn ste_in_memory(&self, sid: u32) -> Result<Ste, EventType> {
        let st = self.strtab;
        if !st.sid_in_range(&self.cfg, sid) {
            return Err(EventType::CBadStreamId);
        }
        let addr = if st.two_level(&self.cfg) {
            let l1 = self.mem.borrow().read(st.l1std_addr(sid));
            st.l2_ste_addr(l1, sid)
                .map_err(|_| EventType::CBadStreamId)?
        } else {
            st.linear_ste_addr(sid)
        };
        Ok(Ste(tables::read_struct(&self.mem, addr)))
    }

    /// What a fresh walk of memory gives for one access of StreamID `sid` at `iova`, as if
    /// every cache were empty: touching no cache, recording no event (faults come back with
    /// `recorded: false`). Tests compare it with [`SmmuModel::translate`], or call it at any
    /// moment to ask what the SMMU could see if it fetched the structures now.
    pub fn probe(&self, sid: u32, iova: u64, access: Access) -> Result<u64, SmmuFault> {
        let bad = |event| SmmuFault::Terminated {
            event,
            recorded: false,
            abort: true,
        };
        if self.cr0ack & CR0_SMMUEN == 0 {
            if self.gbpa & GBPA_ABORT != 0 {
                return Err(SmmuFault::GlobalAbort);
            }
            return Ok(iova);
        }
        let ste = self.ste_in_memory(sid).map_err(bad)?;
        if !ste.valid() {
            return Err(bad(EventType::CBadSte));
        }
        match ste.config() {
            SteConfig::Abort => return Err(SmmuFault::SteAbort),
            SteConfig::Bypass => {
                if iova >> self.cfg.oas_bits() != 0 {
                    return Err(bad(EventType::FAddrSize));
                }
                return Ok(iova);
            }
            SteConfig::S2Translate | SteConfig::Nested => return Err(bad(EventType::CBadSte)),
            SteConfig::S1Translate => {}
        }
        let (vmid, privileged) =
            tables::check_s1_ste(&self.cfg, &ste).map_err(|_| bad(EventType::CBadSte))?;
        let cd = Cd(tables::read_struct(&self.mem, ste.s1_context_ptr()));
        let ctx = tables::check_cd(&self.cfg, &cd, vmid, privileged)
            .map_err(|_| bad(EventType::CBadCd))?;
        let s1 = |event| SmmuFault::Terminated {
            event,
            recorded: false,
            abort: ctx.abort,
        };
        let Some(half) = tables::select_half(&ctx, iova) else {
            return Err(s1(EventType::FTranslation));
        };
        if ctx.epd[half] {
            return Err(s1(EventType::FTranslation));
        }
        let va = iova & ((1u64 << 56) - 1);
        let leaf =
            tables::walk_s1(&self.mem, &ctx, half, va, &mut NoWalkCache).map_err(|f| s1(f.kind))?;
        if !tables::permits(&ctx, leaf.ap(), leaf.ap_table, access == Access::Write) {
            return Err(s1(EventType::FPermission));
        }
        Ok(leaf.pa_base | (va & ((1u64 << leaf.size_log2()) - 1)))
    }

    fn lookup_ste(&mut self, sid: u32) -> Result<Ste, EventType> {
        if let Some(&ste) = self.ste_cache.get(&sid) {
            self.stats.cfg_hits += 1;
            if self.fetch_ste(sid, false).ok() != Some(ste) {
                self.stats.stale_cfg_hits += 1;
            }
            return Ok(ste);
        }
        self.stats.cfg_misses += 1;
        let ste = self.fetch_ste(sid, true)?;
        if ste.valid() || self.cfg.cache_invalid_structures {
            self.ste_cache.insert(sid, ste);
        }
        Ok(ste)
    }

    fn lookup_cd(&mut self, sid: u32, ste: &Ste) -> Cd {
        let fresh = Cd(tables::read_struct(&self.mem, ste.s1_context_ptr()));
        if let Some(&cd) = self.cd_cache.get(&sid) {
            self.stats.cfg_hits += 1;
            if cd != fresh {
                self.stats.stale_cfg_hits += 1;
            }
            return cd;
        }
        self.stats.cfg_misses += 1;
        if fresh.valid() || self.cfg.cache_invalid_structures {
            self.cd_cache.insert(sid, fresh);
        }
        fresh
    }

    // ---------------------------------------------------------------- translation

    /// Translates one access of StreamID `sid` at `iova`, as the SMMU would for a transaction:
    /// consulting and filling the caches and recording events. Returns the output address.
    pub fn translate(&mut self, sid: u32, iova: u64, access: Access) -> Result<u64, SmmuFault> {
        if self.cr0ack & CR0_SMMUEN == 0 {
            if self.gbpa & GBPA_ABORT != 0 {
                return Err(SmmuFault::GlobalAbort);
            }
            self.stats.bypassed += 1;
            return Ok(iova);
        }
        let ste = match self.lookup_ste(sid) {
            Ok(s) => s,
            Err(EventType::CBadStreamId) => {
                if self.cr2 & CR2_RECINVSID != 0 {
                    return Err(self.config_error(EventType::CBadStreamId, sid));
                }
                return Err(SmmuFault::Terminated {
                    event: EventType::CBadStreamId,
                    recorded: false,
                    abort: true,
                });
            }
            Err(e) => return Err(self.config_error(e, sid)),
        };
        if !ste.valid() {
            return Err(self.config_error(EventType::CBadSte, sid));
        }
        match ste.config() {
            SteConfig::Abort => return Err(SmmuFault::SteAbort),
            SteConfig::Bypass => {
                if iova >> self.cfg.oas_bits() != 0 {
                    let mut ev = Event::new(EventType::FAddrSize, sid);
                    ev.input_addr = iova;
                    ev.rnw = access == Access::Read;
                    ev.class = FaultClass::In as u8;
                    let recorded = self.record(ev);
                    return Err(SmmuFault::Terminated {
                        event: EventType::FAddrSize,
                        recorded,
                        abort: true,
                    });
                }
                self.stats.bypassed += 1;
                return Ok(iova);
            }
            SteConfig::S2Translate | SteConfig::Nested => {
                self.note(format!(
                    "STE {sid} enables stage 2, which this model does not walk"
                ));
                return Err(self.config_error(EventType::CBadSte, sid));
            }
            SteConfig::S1Translate => {}
        }
        let (vmid, privileged) = match tables::check_s1_ste(&self.cfg, &ste) {
            Ok(v) => v,
            Err(why) => {
                self.note(format!("C_BAD_STE for StreamID {sid}: {why}"));
                return Err(self.config_error(EventType::CBadSte, sid));
            }
        };
        let cd = self.lookup_cd(sid, &ste);
        let ctx = match tables::check_cd(&self.cfg, &cd, vmid, privileged) {
            Ok(c) => c,
            Err(why) => {
                self.note(format!("C_BAD_CD for StreamID {sid}: {why}"));
                return Err(self.config_error(EventType::CBadCd, sid));
            }
        };
        self.translate_s1(sid, &ctx, iova, access)
    }

    fn s1_fault(
        &mut self,
        sid: u32,
        ctx: &S1Context,
        kind: EventType,
        iova: u64,
        access: Access,
    ) -> SmmuFault {
        let mut recorded = false;
        if ctx.record {
            let mut ev = Event::new(kind, sid);
            ev.input_addr = iova;
            ev.rnw = access == Access::Read;
            ev.pnu = ctx.privileged;
            ev.class = FaultClass::In as u8;
            recorded = self.record(ev);
        }
        SmmuFault::Terminated {
            event: kind,
            recorded,
            abort: ctx.abort,
        }
    }

    fn tlb_lookup(&self, vmid: u16, asid: u16, va: u64) -> Option<TlbEntry> {
        for level in [3u32, 2, 1] {
            let vpn = va >> level_shift(level);
            for a in [Some(asid), None] {
                let key = TlbKey {
                    vmid,
                    asid: a,
                    level,
                    vpn,
                };
                if let Some(e) = self.tlb.get(&key) {
                    return Some(*e);
                }
            }
        }
        None
    }

    fn translate_s1(
        &mut self,
        sid: u32,
        ctx: &S1Context,
        iova: u64,
        access: Access,
    ) -> Result<u64, SmmuFault> {
        let Some(half) = tables::select_half(ctx, iova) else {
            return Err(self.s1_fault(sid, ctx, EventType::FTranslation, iova, access));
        };
        if ctx.epd[half] {
            return Err(self.s1_fault(sid, ctx, EventType::FTranslation, iova, access));
        }
        let va = iova & ((1u64 << 56) - 1);
        let leaf = if let Some(e) = self.tlb_lookup(ctx.vmid, ctx.asid, va) {
            self.stats.tlb_hits += 1;
            if tables::walk_s1(&self.mem, ctx, half, va, &mut NoWalkCache).ok() != Some(e.leaf) {
                self.stats.stale_hits += 1;
            }
            e.leaf
        } else {
            self.stats.tlb_misses += 1;
            let mut wc = ModelWalkCache {
                map: &mut self.walk_cache,
                vmid: ctx.vmid,
                asid: ctx.asid,
                hits: 0,
            };
            let r = tables::walk_s1(&self.mem, ctx, half, va, &mut wc);
            let hits = wc.hits;
            self.stats.walk_cache_hits += hits;
            match r {
                Err(f) => return Err(self.s1_fault(sid, ctx, f.kind, iova, access)),
                Ok(leaf) => {
                    let shift = leaf.size_log2();
                    let key = TlbKey {
                        vmid: ctx.vmid,
                        asid: leaf.non_global().then_some(ctx.asid),
                        level: leaf.level,
                        vpn: va >> shift,
                    };
                    self.tlb.insert(
                        key,
                        TlbEntry {
                            va_base: va & !((1u64 << shift) - 1),
                            leaf,
                        },
                    );
                    leaf
                }
            }
        };
        if !tables::permits(ctx, leaf.ap(), leaf.ap_table, access == Access::Write) {
            return Err(self.s1_fault(sid, ctx, EventType::FPermission, iova, access));
        }
        Ok(leaf.pa_base | (va & ((1u64 << leaf.size_log2()) - 1)))
    }

    // ---------------------------------------------------------------- DMA

    /// A device with StreamID `sid` reads `len` bytes at `iova`. Each 4 KiB page touched is
    /// translated separately. RAZ/WI terminations (CD.A == 0) read as zero.
    pub fn dma_read(&mut self, sid: u32, iova: u64, len: usize) -> Result<Vec<u8>, SmmuFault> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((4096 - (a & 0xfff)) as usize).min(len - done);
            match self.translate(sid, a, Access::Read) {
                Ok(pa) => self
                    .mem
                    .borrow()
                    .read_bytes(pa, &mut out[done..done + chunk]),
                Err(SmmuFault::Terminated { abort: false, .. }) => {}
                Err(f) => return Err(f),
            }
            done += chunk;
        }
        Ok(out)
    }

    /// A device with StreamID `sid` writes `data` at `iova`. Pages before a faulting page are
    /// written (as a real bus would). RAZ/WI terminations drop the write.
    pub fn dma_write(&mut self, sid: u32, iova: u64, data: &[u8]) -> Result<(), SmmuFault> {
        let mut done = 0usize;
        while done < data.len() {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((4096 - (a & 0xfff)) as usize).min(data.len() - done);
            match self.translate(sid, a, Access::Write) {
                Ok(pa) => self
                    .mem
                    .borrow_mut()
                    .write_bytes(pa, &data[done..done + chunk]),
                Err(SmmuFault::Terminated { abort: false, .. }) => {}
                Err(f) => return Err(f),
            }
            done += chunk;
        }
        Ok(())
    }
}

impl RegisterAccess for SmmuModel {
    fn read32(&mut self, offset: usize) -> u32 {
        self.read_reg32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.write_reg32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.read_reg64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.write_reg64(offset, value)
    }
}

/// A cloneable handle to a shared [`SmmuModel`]: give one clone to the driver as its
/// [`RegisterAccess`], keep another to issue DMA and inspect the model.
#[derive(Debug, Clone)]
pub struct SmmuHandle(pub Rc<RefCell<SmmuModel>>);

impl SmmuHandle {
    /// A new model in its reset state over `mem`.
    pub fn new(mem: SharedMem, cfg: SmmuConfig) -> SmmuHandle {
        SmmuHandle(Rc::new(RefCell::new(SmmuModel::new(mem, cfg))))
    }
    /// Borrows the model.
    pub fn borrow(&self) -> std::cell::Ref<'_, SmmuModel> {
        self.0.borrow()
    }
    /// Borrows the model mutably.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, SmmuModel> {
        self.0.borrow_mut()
    }
    /// See [`SmmuModel::probe`].
    pub fn probe(&self, sid: u32, iova: u64, access: Access) -> Result<u64, SmmuFault> {
        self.0.borrow().probe(sid, iova, access)
    }
    /// See [`SmmuModel::translate`].
    pub fn translate(&self, sid: u32, iova: u64, access: Access) -> Result<u64, SmmuFault> {
        self.0.borrow_mut().translate(sid, iova, access)
    }
    /// See [`SmmuModel::dma_read`].
    pub fn dma_read(&self, sid: u32, iova: u64, len: usize) -> Result<Vec<u8>, SmmuFault> {
        self.0.borrow_mut().dma_read(sid, iova, len)
    }
    /// See [`SmmuModel::dma_write`].
    pub fn dma_write(&self, sid: u32, iova: u64, data: &[u8]) -> Result<(), SmmuFault> {
        self.0.borrow_mut().dma_write(sid, iova, data)
    }
    /// A snapshot of the counters.
    pub fn stats(&self) -> SmmuStats {
        self.0.borrow().stats.clone()
    }
}

impl RegisterAccess for SmmuHandle {
    fn read32(&mut self, offset: usize) -> u32 {
        self.0.borrow_mut().read_reg32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0.borrow_mut().write_reg32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.0.borrow_mut().read_reg64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.0.borrow_mut().write_reg64(offset, value)
    }
}

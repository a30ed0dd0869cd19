//! A register-level model of a RISC-V IOMMU (The RISC-V IOMMU Architecture Specification
//! 1.0), first stage only, written from the specification independently of `iommu_hal`.
//!
//! The model sits behind [`iommu_hal::RegisterAccess`] (through [`RiscvHandle`]) and reads its
//! structures and queues from a [`SharedMem`], the way hardware reads RAM:
//!
//! - registers with side effects: `ddtp` with its `busy` bit and the mode-change rules of 5.5
//!   (a table mode only from Off or Bare; unsupported modes are not retained), `fctl` writable
//!   only while the unit is Off and its queues are off, queue enables with `cqon`/`fqon`
//!   following (optionally after some reads), RW1C error bits, `ipsr` with its re-set rule,
//!   `icvec` and the MSI configuration table;
//! - the DDT walk (1, 2, 3 levels, base or extended device contexts) with the device-context
//!   configuration checks, and a device-context cache keyed by `device_id` that keeps a
//!   context until `IODIR.INVAL_DDT` names it (valid contexts only: invalid ones are never
//!   cached, chapter 6 "Caching invalid entries");
//! - its own first-stage walker ([`tables::walk`], privileged spec 4.3.2) and caches that
//!   keep entries until the right `IOTINVAL.VMA`: an IOTLB of leaves keyed by (PSCID or
//!   global, level, VPN) and a cache of non-leaf entries keyed by PSCID; address-specific
//!   invalidations reach only leaves (3.1.1). Optionally large leaves are cached as 4 KiB
//!   pieces that an address-specific invalidation removes one at a time, as QEMU 10.0 does
//!   ([`RiscvConfig::splinter_leaves`]). A cached entry that disagrees with memory when
//!   used is counted ([`RiscvStats::stale_hits`], [`RiscvStats::stale_dc_hits`]), and a PSCID
//!   found naming two different first-stage tables is noted as misuse (the spec leaves the
//!   result unpredictable);
//! - the command queue (processed on `cqt` writes, or after [`RiscvConfig::cq_delay_reads`]
//!   reads of `cqh`; an illegal command stops it with `cmd_ill` until cleared; by default
//!   invalidations take effect only when a later `IOFENCE.C` is processed, see
//!   [`RiscvConfig::complete_invalidation_at_fence`]) and the fault queue (overflow sets
//!   `fqof`, after which records are discarded until it is cleared);
//! - interrupts: `ipsr` bits set by the queues when enabled, signalled on the vector `icvec`
//!   gives, as a wire level (`fctl.WSI` = 1) or an MSI written to memory from the MSI
//!   configuration table (`fctl.WSI` = 0).
//!
//! Not modelled: second-stage translation, process directories, MSI translation, ATS/PRI
//! (commands accepted when `capabilities.ATS` says so, without effect), hardware A/D updates,
//! the page-request queue beyond its enable bit, performance monitoring, debug translation,
//! big-endian structures.

pub mod fault;
pub mod queue;
pub mod regs;
pub mod tables;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use iommu_hal::RegisterAccess;

use crate::sim::SharedMem;

pub use fault::Record;
pub use queue::{Command, Ring};
pub use regs::RiscvConfig;
pub use tables::{Dc, DcKind, FirstStage, Leaf};

use regs::*;
use tables::{WalkCache, cause, pte};

/// Why a transaction did not reach memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiscvFault {
    /// The fault cause (3.2).
    pub cause: u16,
    /// Whether a record reached the fault queue.
    pub recorded: bool,
}

/// Counters of what the model did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiscvStats {
    /// Commands processed, by opcode.
    pub commands: BTreeMap<u8, u64>,
    /// `IOTINVAL.VMA` commands with `AV` = 1.
    pub iotinval_addr: u64,
    /// `IOTINVAL.VMA` commands with `AV` = 0.
    pub iotinval_wide: u64,
    /// `IODIR.INVAL_DDT` commands.
    pub iodir: u64,
    /// `IOFENCE.C` commands.
    pub fences: u64,
    /// Illegal or unsupported commands (`cmd_ill`).
    pub cmd_errors: u64,
    /// Translations served from the IOTLB.
    pub tlb_hits: u64,
    /// IOTLB hits whose leaf differs from what a walk of memory gives now.
    pub stale_hits: u64,
    /// Translations that walked the tables.
    pub tlb_misses: u64,
    /// Walks that started from a cached non-leaf entry.
    pub walk_cache_hits: u64,
    /// Device contexts served from the cache.
    pub dc_hits: u64,
    /// Cached device contexts that differ from memory when used.
    pub stale_dc_hits: u64,
    /// Device contexts read from memory.
    pub dc_misses: u64,
    /// Transactions that passed untranslated (`ddtp` Bare, or a context with first stage
    /// Bare).
    pub bypassed: u64,
    /// Fault records written.
    pub records_written: u64,
    /// Fault records discarded (queue off, full, or in error).
    pub records_discarded: u64,
    /// Fault records not reported because of `DC.tc.DTF`.
    pub records_suppressed: u64,
    /// MSIs written.
    pub msis: u64,
    /// MSIs held back by a masked vector.
    pub masked_msis: u64,
    /// Wire assertions (a vector's line going from low to high).
    pub wired_asserts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TlbKey {
    /// `None` for global leaves (G = 1).
    pscid: Option<u32>,
    level: u32,
    vpn: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TlbEntry {
    root: u64,
    va_base: u64,
    /// log2 of the bytes the entry covers: the leaf's size, or 12 for a splintered piece.
    size_log2: u32,
    leaf: Leaf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WalkKey {
    pscid: u32,
    /// Level of the table the cached entry points to.
    level: u32,
    /// `va >> (12 + 9 * (level + 1))`.
    vpn: u64,
}

struct ModelWalkCache<'a> {
    map: &'a mut HashMap<WalkKey, (u64, u64)>,
    pscid: u32,
    root: u64,
    hits: u64,
}

impl WalkCache for ModelWalkCache<'_> {
    fn lookup(&mut self, level: u32, va: u64) -> Option<u64> {
        let key = WalkKey {
            pscid: self.pscid,
            level,
            vpn: va >> (12 + 9 * (level + 1)),
        };
        let r = self.map.get(&key).map(|&(_, t)| t);
        if r.is_some() {
            self.hits += 1;
        }
        r
    }
    fn insert(&mut self, level: u32, va: u64, table: u64) {
        let key = WalkKey {
            pscid: self.pscid,
            level,
            vpn: va >> (12 + 9 * (level + 1)),
        };
        self.map.insert(key, (self.root, table));
    }
}

/// One entry of the MSI configuration table (5.28).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiEntry {
    /// `msi_addr`.
    pub addr: u64,
    /// `msi_data`.
    pub data: u32,
    /// `msi_vec_ctl`.
    pub vec_ctl: u32,
    /// An MSI is waiting for the vector to be unmasked.
    pub pending: bool,
}

/// A queue's enable and its `on` status, which may follow the enable only after some reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OnOff {
    on: bool,
    target: bool,
    reads_left: u32,
}

/// The RISC-V IOMMU model. Drive it through [`RegisterAccess`] and issue DMA with
/// [`RiscvModel::translate`], [`RiscvModel::dma_read`] and [`RiscvModel::dma_write`].
#[derive(Debug)]
pub struct RiscvModel {
    mem: SharedMem,
    cfg: RiscvConfig,
    fctl: u32,
    ddtp: u64,
    ddtp_busy_left: u32,
    cq: Ring,
    cqcsr: u32,
    cq_state: OnOff,
    cq_reads_left: Option<u32>,
    fq: Ring,
    fqcsr: u32,
    fq_state: OnOff,
    pq: Ring,
    pqcsr: u32,
    ipsr: u32,
    icvec: u64,
    msi: [MsiEntry; 16],
    wires: [bool; 16],
    pending: Vec<Command>,
    dc_cache: HashMap<u32, (Dc, DcKind)>,
    tlb: HashMap<TlbKey, TlbEntry>,
    walk_cache: HashMap<WalkKey, (u64, u64)>,
    /// Makes the next command fetch fail with `cqmf` (one shot).
    pub cqmf_next_fetch: bool,
    /// Treats the next command with this opcode as unsupported (`cmd_ill`; one shot), as a
    /// unit lacking it would.
    pub refuse_next_opcode: Option<u8>,
    /// Counters.
    pub stats: RiscvStats,
    /// Every record the unit tried to report, whether or not it reached the queue.
    pub fault_log: Vec<Record>,
    /// Why each illegal command was refused, in order.
    pub cmd_error_log: Vec<String>,
    /// Driver mistakes the model noticed, in order: register writes the spec leaves
    /// UNSPECIFIED or ignores, wrong access widths, misconfigured device contexts, non-leaf
    /// PTEs with reserved bits, a PSCID naming two page tables.
    pub misuse: Vec<String>,
}

impl RiscvModel {
    /// A model in its reset state over `mem`: `ddtp` Off, queues off, `fctl` as the
    /// capabilities fix it.
    pub fn new(mem: SharedMem, cfg: RiscvConfig) -> RiscvModel {
        let fctl = (if cfg.big_endian_at_reset { FCTL_BE } else { 0 })
            | if cfg.igs == 1 { FCTL_WSI } else { 0 };
        RiscvModel {
            mem,
            cfg,
            fctl,
            ddtp: MODE_OFF,
            ddtp_busy_left: 0,
            cq: Ring::default(),
            cqcsr: 0,
            cq_state: OnOff::default(),
            cq_reads_left: None,
            fq: Ring::default(),
            fqcsr: 0,
            fq_state: OnOff::default(),
            pq: Ring::default(),
            pqcsr: 0,
            ipsr: 0,
            icvec: 0,
            msi: [MsiEntry::default(); 16],
            wires: [false; 16],
            pending: Vec::new(),
            dc_cache: HashMap::new(),
            tlb: HashMap::new(),
            walk_cache: HashMap::new(),
            cqmf_next_fetch: false,
            refuse_next_opcode: None,
            stats: RiscvStats::default(),
            fault_log: Vec::new(),
            cmd_error_log: Vec::new(),
            misuse: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RiscvConfig {
        &self.cfg
    }
    /// Mutable configuration.
    pub fn config_mut(&mut self) -> &mut RiscvConfig {
        &mut self.cfg
    }
    /// The simulated memory the model reads.
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }
    /// `ddtp` (without `busy`).
    pub fn ddtp(&self) -> u64 {
        self.ddtp
    }
    /// `fctl`.
    pub fn fctl(&self) -> u32 {
        self.fctl
    }
    /// `ipsr`.
    pub fn ipsr(&self) -> u32 {
        self.ipsr
    }
    /// `cqcsr` as software would read it now (without advancing delays).
    pub fn cqcsr(&self) -> u32 {
        self.cqcsr | if self.cq_state.on { CQCSR_CQON } else { 0 }
    }
    /// `fqcsr` as software would read it now.
    pub fn fqcsr(&self) -> u32 {
        self.fqcsr | if self.fq_state.on { FQCSR_FQON } else { 0 }
    }
    /// The level of wire `v` (with `fctl.WSI` = 1).
    pub fn wire(&self, v: usize) -> bool {
        self.wires.get(v).copied().unwrap_or(false)
    }
    /// MSI configuration table entry `v`.
    pub fn msi_entry(&self, v: usize) -> MsiEntry {
        self.msi[v & 15]
    }
    /// Whether a device context is cached for `device_id`.
    pub fn dc_cached(&self, device_id: u32) -> bool {
        self.dc_cache.contains_key(&device_id)
    }
    /// Number of IOTLB entries.
    pub fn tlb_len(&self) -> usize {
        self.tlb.len()
    }
    /// Number of cached non-leaf entries.
    pub fn walk_cache_len(&self) -> usize {
        self.walk_cache.len()
    }
    /// Invalidations fetched but waiting for a fence.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.len()
    }
    /// Drops every cached structure and translation.
    pub fn flush_all_caches(&mut self) {
        self.dc_cache.clear();
        self.tlb.clear();
        self.walk_cache.clear();
    }
    /// Stops (true) or restarts (false) command processing, as [`RiscvConfig::cq_hung`].
    pub fn set_cq_hung(&mut self, hung: bool) {
        self.cfg.cq_hung = hung;
        if !hung {
            self.process_cq();
        }
    }
    /// Records between `fqh` and `fqt` (not consumed).
    pub fn pending_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let mut h = self.fq.head;
        let m = self.mem.borrow();
        while h != self.fq.tail {
            let a = self.fq.base() + 32 * u64::from(h);
            out.push(Record::decode([
                m.read(a),
                m.read(a + 8),
                m.read(a + 16),
                m.read(a + 24),
            ]));
            h = (h + 1) & self.fq.mask();
        }
        out
    }

    fn note(&mut self, s: String) {
        self.misuse.push(s);
    }

    fn mode(&self) -> u64 {
        self.ddtp & DDTP_MODE
    }

    /// DDT levels of the current mode (0 for Off/Bare).
    fn levels(&self) -> u32 {
        match self.mode() {
            m @ 2..=4 => (m - 1) as u32,
            _ => 0,
        }
    }

    fn did_bits(&self) -> u32 {
        let b0 = if self.cfg.msi_flat { 6 } else { 7 };
        match self.levels() {
            1 => b0,
            2 => b0 + 9,
            _ => 24,
        }
    }

    fn pas_mask(&self) -> u64 {
        if self.cfg.pas >= 64 {
            u64::MAX
        } else {
            (1u64 << self.cfg.pas) - 1
        }
    }

    // ---------------------------------------------------------------- interrupts

    fn vector_of(&self, bit: u32) -> usize {
        let shift = 4 * bit.trailing_zeros();
        ((self.icvec >> shift) & 0xf) as usize
    }

    fn raise(&mut self, bit: u32) {
        if self.ipsr & bit != 0 {
            return;
        }
        self.ipsr |= bit;
        let v = self.vector_of(bit);
        if self.fctl & FCTL_WSI != 0 {
            if !self.wires[v] {
                self.wires[v] = true;
                self.stats.wired_asserts += 1;
            }
        } else if self.msi[v].vec_ctl & 1 != 0 {
            self.msi[v].pending = true;
            self.stats.masked_msis += 1;
        } else {
            self.send_msi(v);
        }
    }

    fn send_msi(&mut self, v: usize) {
        let e = self.msi[v];
        self.msi[v].pending = false;
        self.mem.borrow_mut().write32(e.addr & !3, e.data);
        self.stats.msis += 1;
    }

    fn update_wires(&mut self) {
        let mut level = [false; 16];
        for bit in [IPSR_CIP, IPSR_FIP, IPSR_PMIP, IPSR_PIP] {
            if self.ipsr & bit != 0 {
                level[self.vector_of(bit)] = true;
            }
        }
        for (v, l) in level.into_iter().enumerate() {
            if l && !self.wires[v] {
                self.stats.wired_asserts += 1;
            }
        }
        self.wires = if self.fctl & FCTL_WSI != 0 {
            level
        } else {
            [false; 16]
        };
    }

    /// `ipsr` write (5.18): RW1C; a cleared bit whose condition persists (a queue error bit
    /// with its interrupt enabled) stays set.
    fn write_ipsr(&mut self, v: u32) {
        self.ipsr &= !(v & (IPSR_CIP | IPSR_FIP | IPSR_PMIP | IPSR_PIP));
        if self.cqcsr & CQCSR_CIE != 0 && self.cqcsr & CQCSR_RW1C != 0 {
            self.ipsr |= IPSR_CIP;
        }
        if self.fqcsr & FQCSR_FIE != 0 && self.fqcsr & FQCSR_RW1C != 0 {
            self.ipsr |= IPSR_FIP;
        }
        self.update_wires();
    }

    // ---------------------------------------------------------------- registers

    fn is_64(off: usize) -> bool {
        matches!(off, CAPABILITIES | DDTP | CQB | FQB | PQB | ICVEC)
            || ((MSI_CFG_TBL..MSI_CFG_TBL_END).contains(&off) && (off - MSI_CFG_TBL) % 16 == 0)
    }

    fn step_onoff(s: &mut OnOff) -> bool {
        if s.on != s.target {
            if s.reads_left == 0 {
                s.on = s.target;
                return true;
            }
            s.reads_left -= 1;
        }
        false
    }

    fn read_reg32(&mut self, off: usize) -> u32 {
        if off % 4 != 0 {
            self.note(format!("unaligned 32-bit read at {off:#x}"));
            return 0;
        }
        let base = off & !7;
        if Self::is_64(base) {
            let v = self.read_reg64(base);
            return if off & 4 != 0 {
                (v >> 32) as u32
            } else {
                v as u32
            };
        }
        match off {
            FCTL => self.fctl,
            CQH => {
                if let Some(n) = self.cq_reads_left {
                    if n <= 1 {
                        self.cq_reads_left = None;
                        self.process_cq();
                    } else {
                        self.cq_reads_left = Some(n - 1);
                    }
                }
                self.cq.head
            }
            CQT => self.cq.tail,
            FQH => self.fq.head,
            FQT => self.fq.tail,
            PQH => self.pq.head,
            PQT => self.pq.tail,
            CQCSR => {
                let changed = Self::step_onoff(&mut self.cq_state);
                if changed && self.cq_state.on {
                    self.process_cq();
                }
                let busy = self.cq_state.on != self.cq_state.target;
                self.cqcsr
                    | if self.cq_state.on { CQCSR_CQON } else { 0 }
                    | if busy { CQCSR_BUSY } else { 0 }
            }
            FQCSR => {
                Self::step_onoff(&mut self.fq_state);
                let busy = self.fq_state.on != self.fq_state.target;
                self.fqcsr
                    | if self.fq_state.on { FQCSR_FQON } else { 0 }
                    | if busy { FQCSR_BUSY } else { 0 }
            }
            PQCSR => {
                self.pqcsr
                    | if self.pqcsr & PQCSR_PQEN != 0 {
                        PQCSR_PQON
                    } else {
                        0
                    }
            }
            IPSR => self.ipsr,
            o if (MSI_CFG_TBL..MSI_CFG_TBL_END).contains(&o) => {
                let e = self.msi[(o - MSI_CFG_TBL) / 16];
                if (o - MSI_CFG_TBL) % 16 == 8 {
                    e.data
                } else {
                    e.vec_ctl
                }
            }
            _ => 0,
        }
    }

    fn read_reg64(&mut self, off: usize) -> u64 {
        if !Self::is_64(off) {
            self.note(format!("64-bit read of 32-bit register {off:#x}"));
            return 0;
        }
        match off {
            CAPABILITIES => self.cfg.capabilities(),
            DDTP => {
                if self.ddtp_busy_left > 0 {
                    self.ddtp_busy_left -= 1;
                    return self.ddtp | DDTP_BUSY;
                }
                self.ddtp
            }
            CQB => self.cq.base_reg,
            FQB => self.fq.base_reg,
            PQB => self.pq.base_reg,
            ICVEC => self.icvec,
            o => self.msi[(o - MSI_CFG_TBL) / 16].addr,
        }
    }

    fn write_reg32(&mut self, off: usize, v: u32) {
        if off % 4 != 0 {
            self.note(format!("unaligned 32-bit write at {off:#x}"));
            return;
        }
        let base = off & !7;
        if Self::is_64(base) {
            let cur = match base {
                DDTP => self.ddtp,
                _ => self.read_reg64(base),
            };
            let new = if off & 4 != 0 {
                (cur & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (cur & !0xffff_ffff) | u64::from(v)
            };
            self.write_reg64(base, new);
            return;
        }
        match off {
            FCTL => self.write_fctl(v),
            CQT => {
                // Written before the queue is enabled too (chapter 6, "Guidelines for
                // initialization": cqt = 0, then cqen = 1).
                self.cq.tail = v & self.cq.mask();
                if self.cfg.cq_delay_reads == 0 {
                    self.process_cq();
                } else {
                    self.cq_reads_left = Some(self.cfg.cq_delay_reads);
                }
            }
            FQH => self.fq.head = v & self.fq.mask(),
            PQH => self.pq.head = v & self.pq.mask(),
            CQCSR => self.write_cqcsr(v),
            FQCSR => self.write_fqcsr(v),
            PQCSR => self.pqcsr = v & PQCSR_PQEN,
            IPSR => self.write_ipsr(v),
            CQH | FQT | PQT => self.note(format!("write to read-only register {off:#x}")),
            o if (MSI_CFG_TBL..MSI_CFG_TBL_END).contains(&o) => {
                let i = (o - MSI_CFG_TBL) / 16;
                if (o - MSI_CFG_TBL) % 16 == 8 {
                    self.msi[i].data = v;
                } else {
                    self.msi[i].vec_ctl = v & 1;
                    if v & 1 == 0 && self.msi[i].pending && self.fctl & FCTL_WSI == 0 {
                        self.send_msi(i);
                    }
                }
            }
            _ => self.note(format!("write to unmodelled offset {off:#x}")),
        }
    }

    fn write_reg64(&mut self, off: usize, v: u64) {
        if !Self::is_64(off) {
            self.note(format!("64-bit write of 32-bit register {off:#x}: ignored"));
            return;
        }
        match off {
            CAPABILITIES => self.note("write to capabilities (RO)".into()),
            DDTP => self.write_ddtp(v),
            CQB => {
                if self.cq_state.on || self.cq_state.target {
                    self.note("cqb written while the command queue is on: ignored".into());
                } else {
                    self.cq.base_reg = self.queue_base(v, self.cfg.cq_max_log2);
                }
            }
            FQB => {
                if self.fq_state.on || self.fq_state.target {
                    self.note("fqb written while the fault queue is on: ignored".into());
                } else {
                    self.fq.base_reg = self.queue_base(v, self.cfg.fq_max_log2);
                }
            }
            PQB => self.pq.base_reg = self.queue_base(v, 20),
            ICVEC => {
                let m = (1u64 << self.cfg.icvec_bits.min(4)) - 1;
                self.icvec = (0..4).fold(0, |acc, i| acc | (((v >> (4 * i)) & m) << (4 * i)));
                self.update_wires();
            }
            o => {
                let i = (o - MSI_CFG_TBL) / 16;
                self.msi[i].addr = v & ((1u64 << 56) - 1) & !3;
            }
        }
    }

    /// A queue base register value as retained (WARL): `LOG2SZ-1` capped, `PPN` within PAS.
    fn queue_base(&self, v: u64, max_log2: u32) -> u64 {
        let log2m1 = (v & QB_LOG2SZ).min(u64::from(max_log2.max(1) - 1));
        let ppn = v & QB_PPN & (self.pas_mask() >> 2);
        ppn | log2m1
    }

    fn write_fctl(&mut self, v: u32) {
        let queues_on = self.cq_state.on
            || self.cq_state.target
            || self.fq_state.on
            || self.fq_state.target
            || self.pqcsr & PQCSR_PQEN != 0;
        if self.mode() != MODE_OFF || queues_on {
            self.note(format!(
                "fctl written while ddtp is not Off or a queue is on ({v:#x}): UNSPECIFIED, ignored"
            ));
            return;
        }
        let mut new = self.fctl;
        if self.cfg.end {
            new = (new & !FCTL_BE) | (v & FCTL_BE);
        }
        if self.cfg.igs == 2 {
            new = (new & !FCTL_WSI) | (v & FCTL_WSI);
        }
        self.fctl = new;
        self.update_wires();
    }

    fn write_ddtp(&mut self, v: u64) {
        if self.ddtp_busy_left > 0 {
            self.note("ddtp written while busy: UNSPECIFIED".into());
        }
        let new_mode = v & DDTP_MODE;
        let supported = match new_mode {
            0 | 1 => true,
            m @ 2..=4 => self.cfg.ddt_levels[(m - 2) as usize],
            _ => false,
        };
        if !supported {
            // WARL: the mode is not retained.
            self.ddtp_busy_left = self.cfg.ddtp_busy_reads;
            return;
        }
        if self.levels() != 0 && new_mode >= MODE_1LVL {
            self.note(format!(
                "ddtp changed from table mode {} to {new_mode} without Off/Bare: UNSPECIFIED, ignored",
                self.mode()
            ));
            return;
        }
        self.ddtp = new_mode | (v & DDTP_PPN & (self.pas_mask() >> 2));
        self.ddtp_busy_left = self.cfg.ddtp_busy_reads;
    }

    fn write_cqcsr(&mut self, v: u32) {
        let was = self.cq_state.target;
        let en = v & CQCSR_CQEN != 0;
        self.cqcsr &= !(v & CQCSR_RW1C);
        self.cqcsr = (self.cqcsr & !(CQCSR_CQEN | CQCSR_CIE)) | (v & (CQCSR_CQEN | CQCSR_CIE));
        if en != was {
            if self.cq_state.on != self.cq_state.target {
                self.note("cqcsr.cqen changed while busy".into());
            }
            self.cq_state.target = en;
            self.cq_state.reads_left = self.cfg.queue_on_delay_reads;
            // 5.15: 0 -> 1 resets cqh and cqt; turning off resets them and the error bits.
            self.cq.head = 0;
            self.cq.tail = 0;
            if !en {
                self.cqcsr &= !CQCSR_RW1C;
            }
            if self.cfg.queue_on_delay_reads == 0 {
                self.cq_state.on = en;
            }
        }
        self.process_cq();
    }

    fn write_fqcsr(&mut self, v: u32) {
        let was = self.fq_state.target;
        let en = v & FQCSR_FQEN != 0;
        self.fqcsr &= !(v & FQCSR_RW1C);
        self.fqcsr = (self.fqcsr & !(FQCSR_FQEN | FQCSR_FIE)) | (v & (FQCSR_FQEN | FQCSR_FIE));
        if en != was {
            self.fq_state.target = en;
            self.fq_state.reads_left = self.cfg.queue_on_delay_reads;
            self.fq.head = 0;
            self.fq.tail = 0;
            self.fqcsr &= !FQCSR_RW1C;
            if self.cfg.queue_on_delay_reads == 0 {
                self.fq_state.on = en;
            }
        }
    }

    // ---------------------------------------------------------------- command queue

    fn process_cq(&mut self) {
        while self.cq_state.on
            && self.cqcsr & CQCSR_CQEN != 0
            && self.cqcsr & CQCSR_ERRORS == 0
            && !self.cfg.cq_hung
            && !self.cq.is_empty()
        {
            if std::mem::take(&mut self.cqmf_next_fetch) {
                self.cqcsr |= CQCSR_CQMF;
                if self.cqcsr & CQCSR_CIE != 0 {
                    self.raise(IPSR_CIP);
                }
                return;
            }
            let a = self.cq.base() + 16 * u64::from(self.cq.head);
            let raw = {
                let m = self.mem.borrow();
                [m.read(a), m.read(a + 8)]
            };
            let wsi = self.fctl & FCTL_WSI != 0;
            let refused = self.refuse_next_opcode == Some(queue::opcode(raw));
            let decoded = if refused {
                self.refuse_next_opcode = None;
                Err(format!("opcode {} refused (test)", queue::opcode(raw)))
            } else {
                queue::decode(&self.cfg, raw, wsi, self.did_bits())
            };
            match decoded {
                Ok(cmd) => {
                    self.execute(cmd);
                    *self.stats.commands.entry(queue::opcode(raw)).or_default() += 1;
                    self.cq.head = (self.cq.head + 1) & self.cq.mask();
                }
                Err(why) => {
                    // 3.1: cmd_ill set, processing stops with cqh at the command.
                    self.cmd_error_log.push(why);
                    self.stats.cmd_errors += 1;
                    self.cqcsr |= CQCSR_CMD_ILL;
                    if self.cqcsr & CQCSR_CIE != 0 {
                        self.raise(IPSR_CIP);
                    }
                    return;
                }
            }
        }
    }

    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::IofenceC { write, wsi, .. } => {
                self.stats.fences += 1;
                for c in std::mem::take(&mut self.pending) {
                    self.apply(c);
                }
                if let Some((addr, data)) = write {
                    self.mem.borrow_mut().write32(addr & !3, data);
                }
                if wsi {
                    self.cqcsr |= CQCSR_FENCE_W_IP;
                    if self.cqcsr & CQCSR_CIE != 0 {
                        self.raise(IPSR_CIP);
                    }
                }
            }
            Command::Ats => {}
            c if self.cfg.complete_invalidation_at_fence => self.pending.push(c),
            c => self.apply(c),
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::IotinvalVma { gscid, pscid, addr } => {
                if addr.is_some() {
                    self.stats.iotinval_addr += 1;
                } else {
                    self.stats.iotinval_wide += 1;
                }
                if gscid.is_some() {
                    // Only VM address spaces: the model caches none.
                    return;
                }
                match addr {
                    None => {
                        // Non-global entries of the PSCID, or everything.
                        self.tlb.retain(|k, _| pscid.is_some() && k.pscid != pscid);
                        self.walk_cache
                            .retain(|k, _| pscid.is_some_and(|p| k.pscid != p));
                    }
                    Some(a) => {
                        self.tlb.retain(|k, e| {
                            let size = 1u64 << e.size_log2;
                            let covers = e.va_base <= a && a - e.va_base < size;
                            let space = match pscid {
                                None => true,
                                Some(p) => k.pscid == Some(p),
                            };
                            !(covers && space)
                        });
                    }
                }
            }
            Command::IotinvalGvma { .. } | Command::InvalPdt { .. } | Command::Ats => {}
            Command::InvalDdt { did } => {
                self.stats.iodir += 1;
                match did {
                    Some(d) => {
                        self.dc_cache.remove(&d);
                    }
                    None => self.dc_cache.clear(),
                }
            }
            Command::IofenceC { .. } => {}
        }
    }

    // ---------------------------------------------------------------- faults

    /// Reports a fault (3.2): written to the fault queue unless it is off, in error or full.
    fn report(&mut self, rec: Record, dtf: bool) -> bool {
        if dtf && cause::suppressed_by_dtf(rec.cause) {
            self.stats.records_suppressed += 1;
            return false;
        }
        self.fault_log.push(rec);
        if !self.fq_state.on || self.fqcsr & FQCSR_FQEN == 0 || self.fqcsr & FQCSR_RW1C != 0 {
            self.stats.records_discarded += 1;
            return false;
        }
        if self.fq.is_full() {
            self.fqcsr |= FQCSR_FQOF;
            self.stats.records_discarded += 1;
            if self.fqcsr & FQCSR_FIE != 0 {
                self.raise(IPSR_FIP);
            }
            return false;
        }
        let a = self.fq.base() + 32 * u64::from(self.fq.tail);
        {
            let mut m = self.mem.borrow_mut();
            for (i, w) in rec.encode().iter().enumerate() {
                m.write(a + 8 * i as u64, *w);
            }
        }
        self.fq.tail = (self.fq.tail + 1) & self.fq.mask();
        self.stats.records_written += 1;
        if self.fqcsr & FQCSR_FIE != 0 {
            self.raise(IPSR_FIP);
        }
        true
    }

    fn fault(&mut self, did: u32, iova: u64, write: bool, c: u16, dtf: bool) -> RiscvFault {
        let rec = Record {
            cause: c,
            ttyp: if write {
                fault::ttyp::WRITE
            } else {
                fault::ttyp::READ
            },
            did,
            iotval: iova,
            iotval2: 0,
        };
        let recorded = self.report(rec, dtf);
        RiscvFault { cause: c, recorded }
    }

    // ---------------------------------------------------------------- translation

    /// Locates `did`'s device context in memory, without the cache.
    fn fetch_dc(&mut self, did: u32) -> Result<(Dc, DcKind), tables::DcFault> {
        let root = ((self.ddtp & DDTP_PPN) >> 10) << 12;
        let pa = tables::locate_dc(&self.mem, &self.cfg, root, self.levels(), did)?;
        let dc = Dc::read(&self.mem, pa, self.cfg.dc_size());
        if !dc.valid() {
            return Err(tables::DcFault {
                cause: cause::DDT_INVALID,
                why: None,
            });
        }
        match dc.check(&self.cfg, self.fctl & FCTL_BE != 0) {
            Ok(kind) => Ok((dc, kind)),
            Err(why) => Err(tables::DcFault {
                cause: cause::DDT_MISCONFIGURED,
                why: Some(why),
            }),
        }
    }

    /// Translates one untranslated access of device `did` at `iova` ("Process to translate
    /// an IOVA"), consulting and filling the caches and reporting faults. Returns the
    /// physical address.
    pub fn translate(&mut self, did: u32, iova: u64, write: bool) -> Result<u64, RiscvFault> {
        match self.mode() {
            MODE_OFF => return Err(self.fault(did, iova, write, cause::ALL_DISALLOWED, false)),
            MODE_BARE => {
                self.stats.bypassed += 1;
                return Ok(iova);
            }
            _ => {}
        }
        let (dc, kind) = if let Some(&(dc, kind)) = self.dc_cache.get(&did) {
            self.stats.dc_hits += 1;
            if self.fetch_dc(did).ok().map(|(d, _)| d) != Some(dc) {
                self.stats.stale_dc_hits += 1;
            }
            (dc, kind)
        } else {
            self.stats.dc_misses += 1;
            match self.fetch_dc(did) {
                Ok(r) => {
                    self.dc_cache.insert(did, r);
                    r
                }
                Err(f) => {
                    if let Some(why) = f.why {
                        self.note(format!("device {did:#x}: DDT entry misconfigured: {why}"));
                    }
                    return Err(self.fault(did, iova, write, f.cause, false));
                }
            }
        };
        let dtf = dc.tc() & tables::tc::DTF != 0;
        match kind {
            DcKind::Bare => {
                self.stats.bypassed += 1;
                Ok(iova)
            }
            DcKind::FirstStage(fs) => self.translate_fs(did, &fs, dtf, iova, write),
        }
    }

    /// The first-stage context device `did`'s requests would use now, from a fresh walk of
    /// the DDT (no cache, nothing counted or recorded): `(PSCID, iosatp.MODE, root)`, or the
    /// fault cause; a valid context with first stage Bare is `(0, 0, 0)`.
    pub fn probe_context(&self, did: u32) -> Result<(u32, u64, u64), u16> {
        match self.mode() {
            MODE_OFF => return Err(cause::ALL_DISALLOWED),
            MODE_BARE => return Ok((0, 0, 0)),
            _ => {}
        }
        let root = ((self.ddtp & DDTP_PPN) >> 10) << 12;
        let pa = tables::locate_dc(&self.mem, &self.cfg, root, self.levels(), did)
            .map_err(|f| f.cause)?;
        let dc = Dc::read(&self.mem, pa, self.cfg.dc_size());
        if !dc.valid() {
            return Err(cause::DDT_INVALID);
        }
        match dc.check(&self.cfg, self.fctl & FCTL_BE != 0) {
            Err(_) => Err(cause::DDT_MISCONFIGURED),
            Ok(DcKind::Bare) => Ok((0, 0, 0)),
            Ok(DcKind::FirstStage(fs)) => Ok((fs.pscid, fs.mode, fs.root)),
        }
    }

    /// What an access of device `did` at `iova` would reach now through a fresh walk of
    /// memory (DDT, device context, first-stage tables): the physical address or the fault
    /// cause. Touches no cache, counts nothing and records no fault, so it can be asked at any
    /// moment (e.g. between two stores of a driver).
    pub fn probe(&self, did: u32, iova: u64, write: bool) -> Result<u64, u16> {
        match self.mode() {
            MODE_OFF => return Err(cause::ALL_DISALLOWED),
            MODE_BARE => return Ok(iova),
            _ => {}
        }
        let root = ((self.ddtp & DDTP_PPN) >> 10) << 12;
        let pa = tables::locate_dc(&self.mem, &self.cfg, root, self.levels(), did)
            .map_err(|f| f.cause)?;
        let dc = Dc::read(&self.mem, pa, self.cfg.dc_size());
        if !dc.valid() {
            return Err(cause::DDT_INVALID);
        }
        let fs = match dc.check(&self.cfg, self.fctl & FCTL_BE != 0) {
            Err(_) => return Err(cause::DDT_MISCONFIGURED),
            Ok(DcKind::Bare) => return Ok(iova),
            Ok(DcKind::FirstStage(fs)) => fs,
        };
        let page = if write {
            cause::WRITE_PAGE
        } else {
            cause::READ_PAGE
        };
        let leaf =
            tables::walk(&self.mem, &fs, iova, &mut tables::NoWalkCache).map_err(|_| page)?;
        if !tables::permits(&leaf, write) {
            return Err(page);
        }
        Ok(leaf.pa_base | (iova & ((1u64 << leaf.size_log2()) - 1)))
    }

    fn tlb_lookup(&self, pscid: u32, va: u64) -> Option<TlbEntry> {
        for level in 0..5u32 {
            let vpn = va >> (12 + 9 * level);
            for p in [Some(pscid), None] {
                let key = TlbKey {
                    pscid: p,
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

    /// Notes a PSCID whose cached entries came from another first-stage table than `root`.
    fn check_pscid_root(&mut self, pscid: u32, root: u64) {
        let clash = self
            .tlb
            .iter()
            .any(|(k, e)| k.pscid == Some(pscid) && e.root != root)
            || self
                .walk_cache
                .iter()
                .any(|(k, &(r, _))| k.pscid == pscid && r != root);
        if clash {
            self.note(format!(
                "PSCID {pscid} used with first-stage table {root:#x} while entries of another \
                 table are cached under it (unpredictable translation)"
            ));
        }
    }

    fn translate_fs(
        &mut self,
        did: u32,
        fs: &FirstStage,
        dtf: bool,
        va: u64,
        write: bool,
    ) -> Result<u64, RiscvFault> {
        let page = if write {
            cause::WRITE_PAGE
        } else {
            cause::READ_PAGE
        };
        let leaf = if let Some(e) = self.tlb_lookup(fs.pscid, va) {
            self.stats.tlb_hits += 1;
            if tables::walk(&self.mem, fs, va, &mut tables::NoWalkCache).ok() != Some(e.leaf) {
                self.stats.stale_hits += 1;
            }
            if e.root != fs.root {
                self.note(format!(
                    "device {did:#x}: PSCID {} hit an entry of another first-stage table",
                    fs.pscid
                ));
            }
            e.leaf
        } else {
            self.stats.tlb_misses += 1;
            self.check_pscid_root(fs.pscid, fs.root);
            let mut wc = ModelWalkCache {
                map: &mut self.walk_cache,
                pscid: fs.pscid,
                root: fs.root,
                hits: 0,
            };
            let r = tables::walk(&self.mem, fs, va, &mut wc);
            self.stats.walk_cache_hits += wc.hits;
            match r {
                Err(f) => {
                    if f == tables::WalkFault::ReservedNonLeaf {
                        self.note(format!(
                            "device {did:#x}: non-leaf PTE with D/A/U set for IOVA {va:#x}"
                        ));
                    }
                    return Err(self.fault(did, va, write, page, dtf));
                }
                Ok(leaf) => {
                    // Leaves with A = 0 fault (no hardware A/D update) and are not cached.
                    if leaf.pte & pte::A != 0 {
                        let (level, shift) = if self.cfg.splinter_leaves {
                            (0, 12)
                        } else {
                            (leaf.level, leaf.size_log2())
                        };
                        let key = TlbKey {
                            pscid: (leaf.pte & (1 << 5) == 0).then_some(fs.pscid),
                            level,
                            vpn: va >> shift,
                        };
                        self.tlb.insert(
                            key,
                            TlbEntry {
                                root: fs.root,
                                va_base: va & !((1u64 << shift) - 1),
                                size_log2: shift,
                                leaf,
                            },
                        );
                    }
                    leaf
                }
            }
        };
        if !tables::permits(&leaf, write) {
            return Err(self.fault(did, va, write, page, dtf));
        }
        let pa = leaf.pa_base | (va & ((1u64 << leaf.size_log2()) - 1));
        if pa & !self.pas_mask() != 0 {
            let c = if write {
                cause::WRITE_ACCESS
            } else {
                cause::READ_ACCESS
            };
            return Err(self.fault(did, va, write, c, dtf));
        }
        Ok(pa)
    }

    // ---------------------------------------------------------------- DMA

    /// Device `did` reads `len` bytes at `iova`, each 4 KiB page translated separately.
    pub fn dma_read(&mut self, did: u32, iova: u64, len: usize) -> Result<Vec<u8>, RiscvFault> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((4096 - (a & 0xfff)) as usize).min(len - done);
            let pa = self.translate(did, a, false)?;
            self.mem
                .borrow()
                .read_bytes(pa, &mut out[done..done + chunk]);
            done += chunk;
        }
        Ok(out)
    }

    /// Device `did` writes `data` at `iova`; pages before a faulting page are written.
    pub fn dma_write(&mut self, did: u32, iova: u64, data: &[u8]) -> Result<(), RiscvFault> {
        let mut done = 0usize;
        while done < data.len() {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((4096 - (a & 0xfff)) as usize).min(data.len() - done);
            let pa = self.translate(did, a, true)?;
            self.mem
                .borrow_mut()
                .write_bytes(pa, &data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }
}

impl RegisterAccess for RiscvModel {
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

/// A cloneable handle to a shared [`RiscvModel`]: give one clone to the driver as its
/// [`RegisterAccess`], keep another to issue DMA and inspect the model.
#[derive(Debug, Clone)]
pub struct RiscvHandle(pub Rc<RefCell<RiscvModel>>);

impl RiscvHandle {
    /// A new model in its reset state over `mem`.
    pub fn new(mem: SharedMem, cfg: RiscvConfig) -> RiscvHandle {
        RiscvHandle(Rc::new(RefCell::new(RiscvModel::new(mem, cfg))))
    }
    /// Borrows the model.
    pub fn borrow(&self) -> std::cell::Ref<'_, RiscvModel> {
        self.0.borrow()
    }
    /// Borrows the model mutably.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, RiscvModel> {
        self.0.borrow_mut()
    }
    /// See [`RiscvModel::translate`].
    pub fn translate(&self, did: u32, iova: u64, write: bool) -> Result<u64, RiscvFault> {
        self.0.borrow_mut().translate(did, iova, write)
    }
    /// See [`RiscvModel::dma_read`].
    pub fn dma_read(&self, did: u32, iova: u64, len: usize) -> Result<Vec<u8>, RiscvFault> {
        self.0.borrow_mut().dma_read(did, iova, len)
    }
    /// See [`RiscvModel::dma_write`].
    pub fn dma_write(&self, did: u32, iova: u64, data: &[u8]) -> Result<(), RiscvFault> {
        self.0.borrow_mut().dma_write(did, iova, data)
    }
    /// See [`RiscvModel::probe`].
    pub fn probe(&self, did: u32, iova: u64, write: bool) -> Result<u64, u16> {
        self.0.borrow().probe(did, iova, write)
    }
    /// See [`RiscvModel::probe_context`].
    pub fn probe_context(&self, did: u32) -> Result<(u32, u64, u64), u16> {
        self.0.borrow().probe_context(did)
    }
    /// A snapshot of the counters.
    pub fn stats(&self) -> RiscvStats {
        self.0.borrow().stats.clone()
    }
}

impl RegisterAccess for RiscvHandle {
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

//! A register-level model of an AMD IOMMU (AMD-Vi), written from the AMD I/O Virtualization
//! Technology (IOMMU) Specification (pub. 48882, rev. 3.x) independently of `iommu_hal::amd`.
//!
//! What it models:
//! - The MMIO register block behind [`iommu_hal::RegisterAccess`] with its side effects:
//!   Control (IommuEn, CmdBufEn, EventLogEn, EventIntEn, ComWaitIntEn, Coherent), the Status
//!   Register with RW1C bits and the CmdBufRun / EventLogRun handshakes (optionally late by
//!   [`AmdModelConfig::run_delay_reads`] reads), base registers that may not change while
//!   their structure is in use, head/tail pointers, and a configurable Extended Feature
//!   Register. The PCI function's configuration space (the IOMMU capability block and an MSI
//!   capability) sits behind [`iommu_hal::amd::ConfigAccess`].
//! - Translation: the device table (V / TV / Mode / IR / IW, reserved fields refused with
//!   ILLEGAL_DEV_TABLE_ENTRY), its own v1 walk ([`tables::walk`]) with level skipping and
//!   Next Level 7 pages, permissions ANDed from the DTE down.
//! - Caches that keep entries until the right command: a DTE cache per DeviceID (dropped by
//!   INVALIDATE_DEVTAB_ENTRY), an IOTLB per DomainID and page (dropped by an
//!   INVALIDATE_IOMMU_PAGES range overlapping it), a page-directory cache per DomainID and
//!   level (dropped only with PDE = 1), negative (not-present) IOTLB entries when NpCache;
//!   INVALIDATE_IOMMU_ALL drops everything. A hit that disagrees with memory is counted in
//!   [`AmdStats::stale_hits`] / [`AmdStats::stale_dte_hits`].
//! - The command buffer, processed when the tail is written (COMPLETION_WAIT stores and
//!   interrupts, the invalidations; an illegal command stops the buffer with
//!   ILLEGAL_COMMAND_ERROR), and the event log with overflow and the event interrupt (an MSI
//!   through the PCI function's capability, recorded in [`AmdModel::msis`]).
//!
//! What it does not model: interrupt remapping (DTE word 2 is not interpreted), guest
//! translation, PPR, ATS and device IOTLBs, the exclusion range (software must leave it
//! disabled: enabling it is a violation), performance counters, hardware error registers,
//! table accesses that fail. With IommuEn = 0 DMA passes untranslated. A DeviceID beyond
//! the device table is refused and recorded as a violation (software is to size the table
//! for every DeviceID behind the unit).
//!
//! Software errors the spec leaves undefined (a base register changed while in use, a
//! pointer written while its structure runs, unknown offsets, ...) are carried out and
//! logged in [`AmdModel::violations`], so tests can assert that a driver commits none.

mod fault;
mod queue;
pub mod regs;
pub mod tables;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use iommu_hal::RegisterAccess;
use iommu_hal::amd::ConfigAccess;

use crate::sim::SharedMem;
pub use fault::{Event, EventCode};
pub use queue::decode_range;
pub use regs::AmdModelConfig;
use regs::*;
use tables::{DteKind, DteView, Leaf, Pde, WalkError};

/// Why a DMA request did not reach memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdFault {
    /// IO_PAGE_FAULT: not present, beyond the width, or not permitted.
    PageFault {
        /// PR: a present entry refused the access.
        present: bool,
    },
    /// ILLEGAL_DEV_TABLE_ENTRY: the DTE has fields the unit refuses.
    IllegalDte,
    /// The DeviceID is beyond the device table (a violation of the driver).
    BeyondTable,
}

/// One invalidation command the model carried out, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationRecord {
    /// INVALIDATE_DEVTAB_ENTRY.
    DevTab {
        /// DeviceID.
        device: u16,
    },
    /// INVALIDATE_IOMMU_PAGES.
    Pages {
        /// DomainID.
        domain: u16,
        /// First byte of the range.
        first: u64,
        /// Last byte of the range (inclusive).
        last: u64,
        /// PDE.
        pde: bool,
    },
    /// INVALIDATE_IOMMU_ALL.
    All,
    /// COMPLETION_WAIT (with its store, if any).
    CompletionWait {
        /// (address, data) stored.
        store: Option<(u64, u64)>,
    },
}

/// Counters, for tests. All start at zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AmdStats {
    /// Translations requested.
    pub translations: u64,
    /// Requests that passed untranslated (IommuEn = 0, or a DTE with V = 0).
    pub passthrough: u64,
    /// DTE cache hits.
    pub dte_hits: u64,
    /// DTE cache hits whose entry differs from memory.
    pub stale_dte_hits: u64,
    /// DTE fetches from memory.
    pub dte_fetches: u64,
    /// IOTLB hits (including negative ones).
    pub iotlb_hits: u64,
    /// IOTLB hits, and walks through cached page directory entries, whose result differs
    /// from a walk of memory now.
    pub stale_hits: u64,
    /// Walks that started below a cached page directory entry.
    pub pde_hits: u64,
    /// Page-table walks.
    pub walks: u64,
    /// Commands fetched.
    pub commands: u64,
    /// Commands refused (ILLEGAL_COMMAND_ERROR).
    pub illegal_commands: u64,
    /// COMPLETION_WAITs carried out.
    pub completion_waits: u64,
    /// INVALIDATE_DEVTAB_ENTRY carried out.
    pub inv_devtab: u64,
    /// INVALIDATE_IOMMU_PAGES carried out.
    pub inv_pages: u64,
    /// INVALIDATE_IOMMU_ALL carried out.
    pub inv_all: u64,
    /// Records written to the event log.
    pub events_logged: u64,
    /// Events not written (logging off, suppressed, or the log full).
    pub events_dropped: u64,
    /// Event log overflows.
    pub overflows: u64,
    /// Interrupts that could not be sent (MSI or Bus Master disabled).
    pub interrupts_lost: u64,
}

/// An IOTLB entry: one page of a domain, or a not-present 4 KiB page (NpCache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tlb {
    shift: u32,
    /// `None`: cached not present.
    phys: Option<u64>,
    read: bool,
    write: bool,
}

/// The model of one IOMMU. See the module documentation.
#[derive(Debug)]
pub struct AmdModel {
    mem: SharedMem,
    cfg: AmdModelConfig,
    devtab: u64,
    cmd_base: u64,
    evt_base: u64,
    control: u64,
    excl_base: u64,
    excl_limit: u64,
    cmd_head: u64,
    cmd_tail: u64,
    evt_head: u64,
    evt_tail: u64,
    status: u64,
    /// STATUS reads left before the run bits follow the enables.
    run_reads_left: u32,
    /// The command buffer stopped on an error (until CmdBufEn is written).
    cmd_halted: bool,
    pci: PciState,
    dte_cache: BTreeMap<u16, DteView>,
    /// (DomainID, page base) -> translation.
    iotlb: BTreeMap<(u16, u64), Tlb>,
    /// (DomainID, level of the table pointed to, IOVA prefix) -> pointer.
    pde_cache: BTreeMap<(u16, u8, u64), Pde>,
    inv_log: Vec<InvalidationRecord>,
    stats: AmdStats,
    /// Every event the unit raised, whether or not it reached the log.
    pub events: Vec<Event>,
    /// Every MSI the unit sent, as (address, data).
    pub msis: Vec<(u64, u32)>,
    violations: Vec<String>,
}

impl AmdModel {
    /// A unit out of reset (everything disabled) whose walker and DMA reach `mem`.
    pub fn new(mem: SharedMem, cfg: AmdModelConfig) -> Self {
        AmdModel {
            mem,
            cfg,
            devtab: 0,
            cmd_base: 0,
            evt_base: 0,
            control: 0,
            excl_base: 0,
            excl_limit: 0,
            cmd_head: 0,
            cmd_tail: 0,
            evt_head: 0,
            evt_tail: 0,
            status: 0,
            run_reads_left: 0,
            cmd_halted: false,
            pci: PciState::default(),
            dte_cache: BTreeMap::new(),
            iotlb: BTreeMap::new(),
            pde_cache: BTreeMap::new(),
            inv_log: Vec::new(),
            stats: AmdStats::default(),
            events: Vec::new(),
            msis: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AmdModelConfig {
        &self.cfg
    }
    /// Mutable configuration (behaviour knobs may change at any time).
    pub fn config_mut(&mut self) -> &mut AmdModelConfig {
        &mut self.cfg
    }
    /// The memory the unit reaches.
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }
    /// Counters.
    pub fn stats(&self) -> AmdStats {
        self.stats
    }
    /// Driver mistakes the model noticed, in order.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
    /// Every invalidation and completion wait carried out, in order.
    pub fn invalidation_log(&self) -> &[InvalidationRecord] {
        &self.inv_log
    }
    /// The Control Register.
    pub fn control(&self) -> u64 {
        self.control
    }
    /// The Status Register.
    pub fn status(&self) -> u64 {
        self.status
    }
    /// Whether translation is on.
    pub fn enabled(&self) -> bool {
        self.control & CTL_IOMMU_EN != 0
    }
    /// The PCI function's programmable state.
    pub fn pci(&self) -> &PciState {
        &self.pci
    }
    /// Whether the DTE of `device` is cached.
    pub fn dte_cached(&self, device: u16) -> bool {
        self.dte_cache.contains_key(&device)
    }
    /// Number of IOTLB entries (including negative ones).
    pub fn iotlb_len(&self) -> usize {
        self.iotlb.len()
    }
    /// Number of cached page directory entries.
    pub fn pde_cache_len(&self) -> usize {
        self.pde_cache.len()
    }
    /// Entries of the device table (from its base register's Size).
    pub fn devtab_entries(&self) -> u64 {
        ((self.devtab & 0x1ff) + 1) * 128
    }
    /// Stops (true) or restarts (false) command processing.
    pub fn set_cmd_hung(&mut self, hung: bool) {
        self.cfg.cmd_hung = hung;
        if !hung {
            self.process_commands();
        }
    }

    pub(super) fn violation(&mut self, msg: String) {
        self.violations.push(msg);
    }

    // ---------------------------------------------------------------- registers

    /// Applies the run bits the enables ask for (the handshake completing).
    fn settle_run_bits(&mut self) {
        let was_cmd = self.status & ST_CMD_RUN != 0;
        let en = self.control & CTL_IOMMU_EN != 0;
        // A buffer stopped on an error stays stopped until CmdBufEn is written again.
        if en && self.control & CTL_CMD_BUF_EN != 0 && !self.cmd_halted {
            self.status |= ST_CMD_RUN;
        } else {
            self.status &= !ST_CMD_RUN;
        }
        if en && self.control & CTL_EVT_LOG_EN != 0 && self.status & ST_EVT_OVERFLOW == 0 {
            self.status |= ST_EVT_RUN;
        } else {
            self.status &= !ST_EVT_RUN;
        }
        if !was_cmd && self.status & ST_CMD_RUN != 0 {
            self.process_commands();
        }
    }

    fn write_control(&mut self, v: u64) {
        let old = self.control;
        if v & !CTL_KNOWN != 0 {
            self.violation(format!(
                "Control write {v:#x} sets bits the model does not implement (guest translation, PPR, ...)"
            ));
        }
        if v & CTL_IOMMU_EN != 0 && old & CTL_IOMMU_EN == 0 {
            if self.excl_base & 1 != 0 {
                self.violation("translation enabled with the exclusion range enabled".into());
            }
            if self.devtab == 0 {
                self.violation("translation enabled without a device table".into());
            }
        }
        if old & CTL_IOMMU_EN != 0 && v & CTL_IOMMU_EN == 0 {
            self.violation("translation disabled (every device would pass untranslated)".into());
        }
        if (old ^ v) & CTL_CMD_BUF_EN != 0 {
            // Writing CmdBufEn releases a stop on error (the restart procedure).
            self.cmd_halted = false;
        }
        self.control = v & CTL_KNOWN;
        // Disabling takes effect at once; enabling after `run_delay_reads` STATUS reads.
        let en = self.control & CTL_IOMMU_EN != 0;
        if !en || self.control & CTL_CMD_BUF_EN == 0 {
            self.status &= !ST_CMD_RUN;
        }
        if !en || self.control & CTL_EVT_LOG_EN == 0 {
            self.status &= !ST_EVT_RUN;
        }
        if self.cfg.run_delay_reads == 0 {
            self.settle_run_bits();
        } else {
            self.run_reads_left = self.cfg.run_delay_reads;
        }
    }

    fn read_status(&mut self) -> u64 {
        if self.run_reads_left > 0 {
            self.run_reads_left -= 1;
            if self.run_reads_left == 0 {
                self.settle_run_bits();
            }
        }
        self.status
    }

    fn read_reg(&mut self, off: usize) -> u64 {
        match off {
            MMIO_DEVTAB => self.devtab,
            MMIO_CMDBUF => self.cmd_base,
            MMIO_EVTLOG => self.evt_base,
            MMIO_CONTROL => self.control,
            MMIO_EXCL_BASE => self.excl_base,
            MMIO_EXCL_LIMIT => self.excl_limit,
            MMIO_EFR => {
                if self.cfg.efr_sup {
                    self.cfg.efr
                } else {
                    0
                }
            }
            MMIO_CMD_HEAD => self.cmd_head,
            MMIO_CMD_TAIL => self.cmd_tail,
            MMIO_EVT_HEAD => self.evt_head,
            MMIO_EVT_TAIL => self.evt_tail,
            MMIO_STATUS => self.read_status(),
            _ => {
                self.violation(format!("read of {off:#x}, where no modelled register is"));
                0
            }
        }
    }

    fn write_reg(&mut self, off: usize, v: u64) {
        let running_cmd = self.control & CTL_CMD_BUF_EN != 0;
        let running_evt = self.control & CTL_EVT_LOG_EN != 0;
        let enabled = self.control & CTL_IOMMU_EN != 0;
        match off {
            MMIO_DEVTAB => {
                if enabled {
                    self.violation("Device Table Base written while translation is on".into());
                }
                if v & 0xfff0_0000_0000_0e00 != 0 {
                    self.violation(format!("Device Table Base {v:#x} has reserved bits set"));
                }
                self.devtab = v & 0x000f_ffff_ffff_f1ff;
            }
            MMIO_CMDBUF => {
                if running_cmd {
                    self.violation("Command Buffer Base written while CmdBufEn is set".into());
                }
                let len = (v >> 56) & 0xf;
                if len < 8 {
                    self.violation(format!("ComLen {len} below the minimum of 8"));
                }
                self.cmd_base = v & 0x0f0f_ffff_ffff_f000;
            }
            MMIO_EVTLOG => {
                if running_evt {
                    self.violation("Event Log Base written while EventLogEn is set".into());
                }
                let len = (v >> 56) & 0xf;
                if len < 8 {
                    self.violation(format!("EventLen {len} below the minimum of 8"));
                }
                self.evt_base = v & 0x0f0f_ffff_ffff_f000;
            }
            MMIO_CONTROL => self.write_control(v),
            MMIO_EXCL_BASE => {
                if v & 1 != 0 {
                    self.violation(
                        "exclusion range enabled: its DMA would bypass translation".into(),
                    );
                }
                self.excl_base = v;
            }
            MMIO_EXCL_LIMIT => self.excl_limit = v,
            MMIO_EFR => self.violation("write to the read-only Extended Feature Register".into()),
            MMIO_CMD_HEAD => {
                if running_cmd {
                    self.violation("Command Buffer Head written while CmdBufEn is set".into());
                }
                self.cmd_head = self.pointer(v, self.cmd_entries());
            }
            MMIO_CMD_TAIL => {
                self.cmd_tail = self.pointer(v, self.cmd_entries());
                self.process_commands();
            }
            MMIO_EVT_HEAD => self.evt_head = self.pointer(v, self.evt_entries()),
            MMIO_EVT_TAIL => {
                if running_evt {
                    self.violation("Event Log Tail written while EventLogEn is set".into());
                }
                self.evt_tail = self.pointer(v, self.evt_entries());
            }
            MMIO_STATUS => {
                self.status &= !(v & ST_W1C);
                if v & !ST_W1C != 0 {
                    self.violation(format!("Status write {v:#x} to read-only bits"));
                }
            }
            _ => self.violation(format!(
                "write of {v:#x} to {off:#x}, where no modelled register is"
            )),
        }
    }

    /// A head/tail pointer value: bits 18:4, within the buffer.
    fn pointer(&mut self, v: u64, entries: u64) -> u64 {
        if v & !0x7_fff0 != 0 || v >= entries * 16 {
            self.violation(format!(
                "pointer {v:#x} outside its buffer of {entries} entries"
            ));
        }
        (v & 0x7_fff0) % (entries * 16)
    }

    // ---------------------------------------------------------------- translation

    /// The DTE of `device` through the DTE cache.
    fn lookup_dte(&mut self, device: u16) -> Result<DteView, AmdFault> {
        if u64::from(device) >= self.devtab_entries() {
            self.violation(format!(
                "DMA from DeviceID {device:#06x}, beyond the device table of {} entries",
                self.devtab_entries()
            ));
            return Err(AmdFault::BeyondTable);
        }
        let pa = (self.devtab & 0x000f_ffff_ffff_f000) + u64::from(device) * 32;
        let fresh = tables::read_dte(&self.mem, pa);
        if let Some(&c) = self.dte_cache.get(&device) {
            self.stats.dte_hits += 1;
            if c != fresh {
                self.stats.stale_dte_hits += 1;
            }
            return Ok(c);
        }
        self.stats.dte_fetches += 1;
        // Only valid entries are cached.
        if fresh.words[0] & 1 != 0 {
            self.dte_cache.insert(device, fresh);
        }
        Ok(fresh)
    }

    fn page_fault(
        &mut self,
        dte: &DteView,
        device: u16,
        iova: u64,
        write: bool,
        present: bool,
        reserved: bool,
    ) -> AmdFault {
        if !dte.suppress() {
            self.raise(Event {
                code: EventCode::IoPageFault,
                device,
                domain: dte.domain(),
                addr: iova,
                present,
                write,
                reserved,
            });
        }
        AmdFault::PageFault { present }
    }

    /// A walk of memory now, touching no cache: the leaf or why there is none.
    fn fresh_walk(
        &self,
        root: u64,
        mode: u8,
        read: bool,
        write: bool,
        iova: u64,
    ) -> Result<Leaf, WalkError> {
        let w = tables::mode_width(mode);
        if w < 64 && iova >> w != 0 {
            return Err(WalkError::Address);
        }
        tables::walk(&self.mem, root, mode, read, write, iova, &mut Vec::new())
    }

    /// Translates one access of `device` at `iova`, as the IOMMU would for a request:
    /// through and into its caches, raising events. Returns the physical address.
    pub fn translate(&mut self, device: u16, iova: u64, write: bool) -> Result<u64, AmdFault> {
        self.stats.translations += 1;
        if self.control & CTL_IOMMU_EN == 0 {
            self.stats.passthrough += 1;
            return Ok(iova);
        }
        let dte = self.lookup_dte(device)?;
        let (root, mode, dread, dwrite) = match dte.kind() {
            DteKind::PassThrough => {
                self.stats.passthrough += 1;
                return Ok(iova);
            }
            DteKind::Illegal(why) => {
                self.violation(format!("DeviceID {device:#06x}: {why}"));
                self.raise(Event {
                    code: EventCode::IllegalDevTableEntry,
                    device,
                    domain: 0,
                    addr: iova,
                    present: false,
                    write,
                    reserved: true,
                });
                return Err(AmdFault::IllegalDte);
            }
            DteKind::Untranslated { read, write: w } => {
                return if (write && w) || (!write && read) {
                    Ok(iova)
                } else {
                    Err(self.page_fault(&dte, device, iova, write, true, false))
                };
            }
            DteKind::Translated {
                root,
                mode,
                read,
                write,
            } => (root, mode, read, write),
        };
        if mode > self.cfg.max_levels() {
            self.violation(format!("DeviceID {device:#06x}: Mode {mode} beyond HATS"));
        }
        let domain = dte.domain();
        // IOTLB: the entry with the greatest base at or below the IOVA that covers it.
        let hit = self
            .iotlb
            .range((domain, 0)..=(domain, iova))
            .next_back()
            .map(|(k, e)| (k.1, *e))
            .filter(|(base, e)| e.shift >= 64 || iova - base < (1u64 << e.shift));
        let fresh = self.fresh_walk(root, mode, dread, dwrite, iova);
        let allowed = |l: &Leaf| if write { l.write } else { l.read };
        if let Some((base, e)) = hit {
            self.stats.iotlb_hits += 1;
            let cached: Result<u64, bool> = match e.phys {
                None => Err(false),
                Some(p) if (write && e.write) || (!write && e.read) => Ok(p + (iova - base)),
                Some(_) => Err(true),
            };
            let now: Result<u64, bool> = match fresh {
                Ok(l) if allowed(&l) => Ok(l.phys + (iova - l.iova_base)),
                Ok(_) => Err(true),
                Err(_) => Err(false),
            };
            if cached != now {
                self.stats.stale_hits += 1;
            }
            return cached
                .map_err(|present| self.page_fault(&dte, device, iova, write, present, false));
        }
        // Page-directory cache: start below the deepest cached pointer.
        let mut start = (root, mode, dread, dwrite);
        let mut from_cache = false;
        for level in 1..mode {
            let key = (domain, level, iova >> tables::level_shift(level + 1));
            if let Some(p) = self.pde_cache.get(&key) {
                self.stats.pde_hits += 1;
                start = (p.table, p.level, p.read, p.write);
                from_cache = true;
                break;
            }
        }
        self.stats.walks += 1;
        let w = tables::mode_width(mode);
        let mut pdes = Vec::new();
        let res = if w < 64 && iova >> w != 0 {
            Err(WalkError::Address)
        } else {
            tables::walk(
                &self.mem, start.0, start.1, start.2, start.3, iova, &mut pdes,
            )
        };
        for p in pdes {
            let key = (domain, p.level, iova >> tables::level_shift(p.level + 1));
            self.pde_cache.insert(key, p);
        }
        // A walk through a cached directory entry that memory no longer agrees with.
        if from_cache && res != fresh {
            self.stats.stale_hits += 1;
        }
        match res {
            Ok(l) => {
                self.iotlb.insert(
                    (domain, l.iova_base),
                    Tlb {
                        shift: l.shift,
                        phys: Some(l.phys),
                        read: l.read,
                        write: l.write,
                    },
                );
                if allowed(&l) {
                    Ok(l.phys + (iova - l.iova_base))
                } else {
                    Err(self.page_fault(&dte, device, iova, write, true, false))
                }
            }
            Err(WalkError::NotPresent) => {
                if self.cfg.np_cache {
                    self.iotlb.insert(
                        (domain, iova & !0xfff),
                        Tlb {
                            shift: 12,
                            phys: None,
                            read: false,
                            write: false,
                        },
                    );
                }
                Err(self.page_fault(&dte, device, iova, write, false, false))
            }
            Err(WalkError::Address) => {
                Err(self.page_fault(&dte, device, iova, write, false, false))
            }
            Err(WalkError::Malformed(why)) => {
                self.violation(format!("DeviceID {device:#06x} at {iova:#x}: {why}"));
                Err(self.page_fault(&dte, device, iova, write, true, true))
            }
        }
    }

    /// What the unit could see at this moment: a translation of `device`'s access at `iova`
    /// from memory alone (the DTE and the tables as they are), consulting and filling no
    /// cache and raising no event. Returns the physical address and the DomainID of the DTE
    /// used (0 for an untranslated pass).
    pub fn probe(&self, device: u16, iova: u64, write: bool) -> Result<(u64, u16), AmdFault> {
        if self.control & CTL_IOMMU_EN == 0 {
            return Ok((iova, 0));
        }
        if u64::from(device) >= self.devtab_entries() {
            return Err(AmdFault::BeyondTable);
        }
        let pa = (self.devtab & 0x000f_ffff_ffff_f000) + u64::from(device) * 32;
        let dte = tables::read_dte(&self.mem, pa);
        match dte.kind() {
            DteKind::PassThrough => Ok((iova, 0)),
            DteKind::Illegal(_) => Err(AmdFault::IllegalDte),
            DteKind::Untranslated { read, write: w } => {
                if (write && w) || (!write && read) {
                    Ok((iova, dte.domain()))
                } else {
                    Err(AmdFault::PageFault { present: true })
                }
            }
            DteKind::Translated {
                root,
                mode,
                read,
                write: w,
            } => match self.fresh_walk(root, mode, read, w, iova) {
                Ok(l) if (write && l.write) || (!write && l.read) => {
                    Ok((l.phys + (iova - l.iova_base), dte.domain()))
                }
                Ok(_) => Err(AmdFault::PageFault { present: true }),
                Err(WalkError::Malformed(_)) => Err(AmdFault::PageFault { present: true }),
                Err(_) => Err(AmdFault::PageFault { present: false }),
            },
        }
    }

    /// A DMA read of `len` bytes by `device` at `iova`, page by page; the first page that
    /// faults ends the transfer with its fault.
    pub fn dma_read(&mut self, device: u16, iova: u64, len: usize) -> Result<Vec<u8>, AmdFault> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((0x1000 - (a & 0xfff)) as usize).min(len - done);
            let pa = self.translate(device, a, false)?;
            self.mem
                .borrow()
                .read_bytes(pa, &mut out[done..done + chunk]);
            done += chunk;
        }
        Ok(out)
    }

    /// A DMA write of `data` by `device` at `iova`, page by page; pages before a faulting one
    /// are written.
    pub fn dma_write(&mut self, device: u16, iova: u64, data: &[u8]) -> Result<(), AmdFault> {
        let mut done = 0usize;
        while done < data.len() {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((0x1000 - (a & 0xfff)) as usize).min(data.len() - done);
            let pa = self.translate(device, a, true)?;
            self.mem
                .borrow_mut()
                .write_bytes(pa, &data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }
}

impl RegisterAccess for AmdModel {
    fn read32(&mut self, offset: usize) -> u32 {
        self.violation(format!(
            "32-bit read at {offset:#x}: the registers are 64-bit"
        ));
        (self.read_reg(offset & !7) >> ((offset & 4) * 8)) as u32
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.violation(format!(
            "32-bit write of {value:#x} at {offset:#x}: the registers are 64-bit"
        ));
    }
    fn read64(&mut self, offset: usize) -> u64 {
        if offset % 8 != 0 {
            self.violation(format!("misaligned 64-bit read at {offset:#x}"));
            return 0;
        }
        self.read_reg(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        if offset % 8 != 0 {
            self.violation(format!("misaligned 64-bit write at {offset:#x}"));
            return;
        }
        self.write_reg(offset, value)
    }
}

impl ConfigAccess for AmdModel {
    fn read32(&mut self, offset: u16) -> u32 {
        regs::config_read(&self.cfg, &self.pci, offset)
    }
    fn write32(&mut self, offset: u16, value: u32) {
        if let Some(v) = regs::config_write(&self.cfg, &mut self.pci, offset, value) {
            self.violation(v);
        }
    }
}

/// A cloneable handle on a shared [`AmdModel`]: one clone is the driver's MMIO and
/// configuration access, another the test's way to issue DMA and inspect the model.
#[derive(Debug, Clone)]
pub struct AmdHandle(pub Rc<RefCell<AmdModel>>);

impl AmdHandle {
    /// A new unit out of reset over `mem`.
    pub fn new(mem: SharedMem, cfg: AmdModelConfig) -> Self {
        AmdHandle(Rc::new(RefCell::new(AmdModel::new(mem, cfg))))
    }
    /// Borrows the model.
    pub fn borrow(&self) -> std::cell::Ref<'_, AmdModel> {
        self.0.borrow()
    }
    /// Borrows the model mutably.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, AmdModel> {
        self.0.borrow_mut()
    }
    /// See [`AmdModel::translate`].
    pub fn translate(&self, device: u16, iova: u64, write: bool) -> Result<u64, AmdFault> {
        self.0.borrow_mut().translate(device, iova, write)
    }
    /// See [`AmdModel::dma_read`].
    pub fn dma_read(&self, device: u16, iova: u64, len: usize) -> Result<Vec<u8>, AmdFault> {
        self.0.borrow_mut().dma_read(device, iova, len)
    }
    /// See [`AmdModel::dma_write`].
    pub fn dma_write(&self, device: u16, iova: u64, data: &[u8]) -> Result<(), AmdFault> {
        self.0.borrow_mut().dma_write(device, iova, data)
    }
    /// See [`AmdModel::probe`].
    pub fn probe(&self, device: u16, iova: u64, write: bool) -> Result<(u64, u16), AmdFault> {
        self.0.borrow().probe(device, iova, write)
    }
    /// See [`AmdModel::stats`].
    pub fn stats(&self) -> AmdStats {
        self.0.borrow().stats()
    }
    /// See [`AmdModel::violations`] (cloned).
    pub fn violations(&self) -> Vec<String> {
        self.0.borrow().violations().to_vec()
    }
    /// See [`AmdModel::invalidation_log`] (cloned).
    pub fn invalidation_log(&self) -> Vec<InvalidationRecord> {
        self.0.borrow().invalidation_log().to_vec()
    }
}

impl RegisterAccess for AmdHandle {
    fn read32(&mut self, offset: usize) -> u32 {
        RegisterAccess::read32(&mut *self.0.borrow_mut(), offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        RegisterAccess::write32(&mut *self.0.borrow_mut(), offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.0.borrow_mut().read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.0.borrow_mut().write64(offset, value)
    }
}

impl ConfigAccess for AmdHandle {
    fn read32(&mut self, offset: u16) -> u32 {
        ConfigAccess::read32(&mut *self.0.borrow_mut(), offset)
    }
    fn write32(&mut self, offset: u16, value: u32) {
        ConfigAccess::write32(&mut *self.0.borrow_mut(), offset, value)
    }
}

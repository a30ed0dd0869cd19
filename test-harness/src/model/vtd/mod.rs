//! A register-level model of one Intel VT-d DMA remapping unit (legacy translation mode).
//!
//! Written from the Intel VT-d specification (rev 3.x / 4.x, chapters 3, 6, 7, 9, 11) and the
//! register facts of QEMU's `intel-iommu` device, independently of `iommu_hal::vtd`, so that
//! host tests of the driver check it against the architecture rather than against itself.
//!
//! What it models:
//! - The register block behind [`iommu_hal::RegisterAccess`], with side effects: GCMD/GSTS
//!   (persistent vs one-shot fields; a GCMD write with a persistent field clear disables it),
//!   RTADDR latched by SRTP, CCMD and IOTLB register invalidation, the invalidation queue,
//!   FSTS/FECTL/fault recording registers with W1C, ICS/IECTL, and the fault event (spec 7.3):
//!   one message (FEDATA to FEUADDR:FEADDR) per new interrupt condition, held in FECTL.IP
//!   while FECTL.IM is set, none while an earlier condition is still pending
//!   ([`VtdModel::fault_messages`]).
//! - Translation through root table, context table and 3/4/5-level second-level tables with
//!   2 MiB / 1 GiB pages, reserved-bit and permission checks and the spec's fault reasons.
//! - Three caches that keep entries until the right invalidation: the context cache (by SID),
//!   the IOTLB (by DID and page, with the leaf size) and the paging-structure cache (non-leaf
//!   entries by DID, level and address prefix; kept by page-selective invalidations with
//!   IH = 1). With CAP.CM = 1 not-present entries are cached too (negative caching), by
//!   every walk that meets one, at the level it was found: a leaf-level entry for its page,
//!   a higher one for the whole region it maps.
//! - DMA from a device: [`VtdModel::dma_read`], [`VtdModel::dma_write`], [`VtdModel::translate`].
//!
//! What it does not model: scalable mode, first-level tables, nested translation, interrupt
//! remapping (IRE/SIRTP only flip status bits), advanced fault logging, protected memory
//! regions (PMEN is storage only), device-TLBs, page requests, and non-coherent walks (ECAP.C
//! and CAP.RWBF are reported, the walker always sees memory as written: `SharedMem` does not
//! record which ranges were flushed, so missing cache flushes cannot be detected here).
//! With TE = 0 DMA passes through untranslated (spec 3.x: remapping disabled).
//!
//! Software errors the spec leaves undefined (several GCMD fields in one write, register-based
//! invalidation while QI is enabled, writes to read-only or unknown offsets, AM above MAMV, ...)
//! are carried out the way QEMU does where it matters and logged in
//! [`VtdModel::violations`], so tests can assert that a driver commits none.

mod fault;
mod queue;
pub mod regs;
mod tables;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use iommu_hal::RegisterAccess;

use crate::sim::SharedMem;
pub use fault::{FaultReason, FaultRecord, VtdFault};
use regs::*;
use tables::{CtxEntry, IotlbEntry, PscEntry};

/// QEMU 10.0's `intel-iommu` CAP as measured: ND = 6 (16-bit DIDs), SAGAW 39 and 48 bit,
/// MGAW 48, FRO 0x220, SLLPS 2 MiB + 1 GiB, PSI, NFR = 1, MAMV 18, DWD, DRD.
pub const QEMU_CAP: u64 = 0x00d2_008c_222f_0606;
/// QEMU's default ECAP (not measured; assembled from QEMU's defaults): QI, IR, EIM, PT,
/// IRO = 0xf0 (IOTLB registers at 0xf0/0xf8), MHMV 15. C = 0 (walks do not snoop).
pub const QEMU_ECAP: u64 =
    ECAP_QI | ECAP_IR | ECAP_EIM | ECAP_PT | (0xf << ECAP_IRO_SHIFT) | (0xf << ECAP_MHMV_SHIFT);

/// How the modelled unit is built: its CAP and ECAP values and a few model policies.
///
/// `VtdConfig::default()` is QEMU's unit. The `with_*` methods change one capability each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtdConfig {
    /// The CAP register value (spec 11.4.2).
    pub cap: u64,
    /// The ECAP register value (spec 11.4.3).
    pub ecap: u64,
    /// The VER register value (0x10 = architecture version 1.0, as QEMU reports).
    pub version: u32,
    /// Host address width: table and page addresses use bits HAW-1:12, bits 51:HAW are reserved.
    pub haw: u8,
    /// Table accesses at or above this address fail (fault reasons 7, 8, 9). `None`: never.
    pub mem_limit: Option<u64>,
    /// Drop a new fault when a recording register already holds one from the same SID (the
    /// spec allows it, QEMU does it). Default false: every fault is recorded while there is room.
    pub collapse_faults: bool,
    /// Page-selective IOTLB invalidation removes any leaf entry overlapping the range (QEMU's
    /// behaviour). Default false: only entries the range covers entirely, because the spec puts
    /// the burden on software ("for a 2 MiB page, an address mask of at least 9").
    pub psi_overlap_invalidates_superpages: bool,
}

impl Default for VtdConfig {
    fn default() -> Self {
        VtdConfig {
            cap: QEMU_CAP,
            ecap: QEMU_ECAP,
            version: 0x10,
            haw: 48,
            mem_limit: None,
            collapse_faults: false,
            psi_overlap_invalidates_superpages: false,
        }
    }
}

impl VtdConfig {
    /// QEMU's unit (same as `default()`).
    pub fn qemu() -> Self {
        Self::default()
    }
    fn set_cap_bit(mut self, bit: u64, on: bool) -> Self {
        if on {
            self.cap |= bit;
        } else {
            self.cap &= !bit;
        }
        self
    }
    fn set_ecap_bit(mut self, bit: u64, on: bool) -> Self {
        if on {
            self.ecap |= bit;
        } else {
            self.ecap &= !bit;
        }
        self
    }
    /// ECAP.QI: queued invalidation supported.
    pub fn with_qi(self, on: bool) -> Self {
        self.set_ecap_bit(ECAP_QI, on)
    }
    /// CAP.CM: caching mode (not-present entries may be cached; DID 0 reserved).
    pub fn with_caching_mode(self, on: bool) -> Self {
        self.set_cap_bit(CAP_CM, on)
    }
    /// CAP.SLLPS: 2 MiB and 1 GiB second-level pages.
    pub fn with_large_pages(mut self, two_mib: bool, one_gib: bool) -> Self {
        self.cap &= !(0xf << CAP_SLLPS_SHIFT);
        self.cap |= (u64::from(two_mib) | (u64::from(one_gib) << 1)) << CAP_SLLPS_SHIFT;
        self
    }
    /// CAP.SAGAW and MGAW: which of 39-bit (3-level), 48-bit (4-level), 57-bit (5-level)
    /// widths are supported; MGAW becomes the largest.
    pub fn with_widths(mut self, w39: bool, w48: bool, w57: bool) -> Self {
        let sagaw = (u64::from(w39) << 1) | (u64::from(w48) << 2) | (u64::from(w57) << 3);
        let mgaw = if w57 {
            57
        } else if w48 {
            48
        } else {
            39
        };
        self.cap &= !((0x1f << CAP_SAGAW_SHIFT) | (0x3f << CAP_MGAW_SHIFT));
        self.cap |= (sagaw << CAP_SAGAW_SHIFT) | ((mgaw - 1) << CAP_MGAW_SHIFT);
        if w57 && self.haw < 52 {
            self.haw = 52;
        }
        self
    }
    /// CAP.ND: 2^(4 + 2 * nd) domains (nd 0..=6).
    pub fn with_nd(mut self, nd: u8) -> Self {
        self.cap = (self.cap & !CAP_ND_MASK) | u64::from(nd.min(6));
        self
    }
    /// CAP.NFR: number of fault recording registers (1..=256), at CAP.FRO.
    pub fn with_fault_records(mut self, n: usize) -> Self {
        let n = n.clamp(1, 256) as u64;
        self.cap = (self.cap & !(0xff << CAP_NFR_SHIFT)) | ((n - 1) << CAP_NFR_SHIFT);
        self
    }
    /// CAP.RWBF: write-buffer flushing required.
    pub fn with_rwbf(self, on: bool) -> Self {
        self.set_cap_bit(CAP_RWBF, on)
    }
    /// ECAP.C: coherent table walks.
    pub fn with_coherent(self, on: bool) -> Self {
        self.set_ecap_bit(ECAP_C, on)
    }
    /// CAP.PSI and CAP.MAMV: page-selective invalidation and its largest address mask.
    pub fn with_psi(mut self, on: bool, mamv: u8) -> Self {
        self = self.set_cap_bit(CAP_PSI, on);
        self.cap =
            (self.cap & !(0x3f << CAP_MAMV_SHIFT)) | (u64::from(mamv & 0x3f) << CAP_MAMV_SHIFT);
        self
    }
    /// ECAP.PT: pass-through context entries (TT = 10).
    pub fn with_pass_through(self, on: bool) -> Self {
        self.set_ecap_bit(ECAP_PT, on)
    }
    /// ECAP.IRO: offset of the IOTLB registers (multiple of 16).
    pub fn with_iotlb_offset(mut self, off: usize) -> Self {
        self.ecap = (self.ecap & !(0x3ff << ECAP_IRO_SHIFT))
            | (((off as u64 / 16) & 0x3ff) << ECAP_IRO_SHIFT);
        self
    }
}

/// Granularity an invalidation was carried out at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Everything.
    Global,
    /// One domain.
    Domain,
    /// Context cache: one device (SID with function mask).
    Device,
    /// IOTLB: a page range within a domain.
    Page,
}

/// One invalidation the model carried out, in order, for tests to assert on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationRecord {
    /// Context-cache invalidation.
    Context {
        /// Granularity performed.
        granularity: Granularity,
        /// DID operand.
        did: u16,
        /// SID operand.
        sid: u16,
        /// Function mask operand.
        fm: u8,
        /// Whether it came through the invalidation queue (else CCMD).
        queued: bool,
    },
    /// IOTLB invalidation (with the paging-structure cache).
    Iotlb {
        /// Requested granularity code (1 global, 2 domain, 3 page).
        requested: u8,
        /// Granularity performed.
        granularity: Granularity,
        /// DID operand.
        did: u16,
        /// Address operand (page-selective).
        addr: u64,
        /// Address mask: 2^am pages.
        am: u8,
        /// Invalidation hint: only leaves changed.
        ih: bool,
        /// Whether it came through the invalidation queue (else the IOTLB register).
        queued: bool,
    },
    /// Invalidation wait descriptor.
    Wait {
        /// The status write performed (address, data), if SW = 1.
        status_write: Option<(u64, u32)>,
        /// IF = 1.
        interrupt: bool,
        /// FN = 1.
        fence: bool,
    },
}

/// Counters, for tests. All start at zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VtdStats {
    /// Global IOTLB invalidations performed.
    pub iotlb_inv_global: u64,
    /// Domain-selective IOTLB invalidations performed (includes PSI downgraded without CAP.PSI).
    pub iotlb_inv_domain: u64,
    /// Page-selective IOTLB invalidations performed.
    pub iotlb_inv_page: u64,
    /// Global context-cache invalidations.
    pub cc_inv_global: u64,
    /// Domain-selective context-cache invalidations.
    pub cc_inv_domain: u64,
    /// Device-selective context-cache invalidations.
    pub cc_inv_device: u64,
    /// Invalidations requested through CCMD / IOTLB registers and performed.
    pub register_invalidations: u64,
    /// Register-based invalidations ignored because QI was enabled.
    pub register_inv_ignored: u64,
    /// Descriptors fetched from the invalidation queue.
    pub descriptors: u64,
    /// Invalidation wait descriptors carried out.
    pub wait_descriptors: u64,
    /// Interrupt entry cache invalidation descriptors.
    pub iec_invalidations: u64,
    /// Device-TLB invalidation descriptors.
    pub dev_tlb_invalidations: u64,
    /// Times FSTS.IQE was set.
    pub queue_errors: u64,
    /// Translations requested (DMA pages and `translate` calls) while TE was on or off.
    pub translations: u64,
    /// IOTLB hits (including negative hits).
    pub iotlb_hits: u64,
    /// IOTLB misses.
    pub iotlb_misses: u64,
    /// IOTLB hits on negative (not-present, caching mode) entries.
    pub negative_hits: u64,
    /// IOTLB hits whose result differs from a fresh walk of memory.
    pub stale_hits: u64,
    /// Context-cache hits.
    pub cc_hits: u64,
    /// Context-cache misses.
    pub cc_misses: u64,
    /// Context-cache hits whose entry differs from memory.
    pub stale_context_hits: u64,
    /// Walks that started below a cached non-leaf entry.
    pub psc_hits: u64,
    /// Second-level walks performed.
    pub walks: u64,
    /// Faults written to a fault recording register.
    pub faults_recorded: u64,
    /// Faults dropped because of overflow (PFO).
    pub faults_dropped: u64,
    /// Faults dropped by collapsing (`VtdConfig::collapse_faults`).
    pub faults_collapsed: u64,
    /// Faults not recorded because FPD = 1.
    pub faults_suppressed: u64,
    /// Fault event interrupts delivered (FECTL.IM clear).
    pub fault_interrupts: u64,
    /// Invalidation completion interrupts delivered (IECTL.IM clear).
    pub inv_interrupts: u64,
    /// GCMD writes.
    pub gcmd_writes: u64,
    /// SRTP commands.
    pub srtp: u64,
    /// WBF commands.
    pub wbf: u64,
    /// QIE enables.
    pub qi_enables: u64,
    /// TE 0 -> 1 transitions.
    pub te_enables: u64,
    /// TE 1 -> 0 transitions.
    pub te_disables: u64,
    /// Reads of offsets where no register is.
    pub unknown_reads: u64,
}

/// The model of one remapping unit. See the module documentation.
#[derive(Debug)]
pub struct VtdModel {
    mem: SharedMem,
    cfg: VtdConfig,
    gsts: u32,
    rtaddr: u64,
    root_ptr: u64,
    ccmd: u64,
    fsts: u32,
    next_frcd: usize,
    fectl: u32,
    fedata: u32,
    feaddr: u32,
    feuaddr: u32,
    aflog: u64,
    pmen: u32,
    plmbase: u32,
    plmlimit: u32,
    phmbase: u64,
    phmlimit: u64,
    iqh: u64,
    iqt: u64,
    iqa: u64,
    iq_base: u64,
    iq_bytes: u64,
    iq_wide: bool,
    ics: u32,
    iectl: u32,
    iedata: u32,
    ieaddr: u32,
    ieuaddr: u32,
    iqercd: u64,
    irta: u64,
    iva: u64,
    iotlb_reg: u64,
    frcd: Vec<[u64; 2]>,
    ctx_cache: BTreeMap<u16, CtxEntry>,
    /// Keyed by (DID, page shift, page base).
    iotlb: BTreeMap<(u16, u8, u64), IotlbEntry>,
    /// Keyed by (DID, level of the entry, iova >> level_shift(level)).
    psc: BTreeMap<(u16, u8, u64), PscEntry>,
    inv_log: Vec<InvalidationRecord>,
    fault_messages: Vec<(u64, u32)>,
    stats: VtdStats,
    violations: Vec<String>,
}

impl VtdModel {
    /// A unit out of reset (everything disabled, FECTL.IM and IECTL.IM set) whose table walker
    /// and DMA reach `mem`.
    pub fn new(mem: SharedMem, cfg: VtdConfig) -> Self {
        let nfr = (((cfg.cap >> CAP_NFR_SHIFT) & 0xff) + 1) as usize;
        VtdModel {
            mem,
            cfg,
            gsts: 0,
            rtaddr: 0,
            root_ptr: 0,
            ccmd: 0,
            fsts: 0,
            next_frcd: 0,
            fectl: ECTL_IM,
            fedata: 0,
            feaddr: 0,
            feuaddr: 0,
            aflog: 0,
            pmen: 0,
            plmbase: 0,
            plmlimit: 0,
            phmbase: 0,
            phmlimit: 0,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            iq_base: 0,
            iq_bytes: 4096,
            iq_wide: false,
            ics: 0,
            iectl: ECTL_IM,
            iedata: 0,
            ieaddr: 0,
            ieuaddr: 0,
            iqercd: 0,
            irta: 0,
            iva: 0,
            iotlb_reg: 0,
            frcd: vec![[0; 2]; nfr],
            ctx_cache: BTreeMap::new(),
            iotlb: BTreeMap::new(),
            psc: BTreeMap::new(),
            inv_log: Vec::new(),
            fault_messages: Vec::new(),
            stats: VtdStats::default(),
            violations: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VtdConfig {
        &self.cfg
    }
    /// The memory the unit reaches.
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }
    /// Counters.
    pub fn stats(&self) -> VtdStats {
        self.stats
    }
    /// Software errors seen so far (see the module documentation), oldest first.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
    /// Forgets the recorded violations.
    pub fn clear_violations(&mut self) {
        self.violations.clear();
    }
    /// The invalidations carried out so far, oldest first.
    pub fn invalidation_log(&self) -> &[InvalidationRecord] {
        &self.inv_log
    }
    /// Forgets the invalidation log.
    pub fn clear_invalidation_log(&mut self) {
        self.inv_log.clear();
    }
    /// GSTS as software would read it.
    pub fn gsts(&self) -> u32 {
        self.gsts
    }
    /// Whether translation is enabled (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.gsts & GCMD_TE != 0
    }
    /// The root table address latched by the last SRTP.
    pub fn root_table(&self) -> u64 {
        self.root_ptr
    }
    /// Number of entries in (context cache, IOTLB, paging-structure cache).
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        (self.ctx_cache.len(), self.iotlb.len(), self.psc.len())
    }
    /// Whether the IOTLB holds an entry for `iova` in domain `did` (any page size).
    pub fn iotlb_contains(&self, did: u16, iova: u64) -> bool {
        [12u8, 21, 30].iter().any(|&s| {
            self.iotlb
                .contains_key(&(did, s, iova & !((1u64 << s) - 1)))
        })
    }
    /// Whether the context cache holds an entry for `sid`.
    pub fn context_cached(&self, sid: u16) -> bool {
        self.ctx_cache.contains_key(&sid)
    }

    /// Translates one access of device `sid` to `iova` as the hardware would: through the
    /// caches (filling them), recording a fault (unless FPD) when it fails. Returns the output
    /// (physical) address.
    pub fn translate(&mut self, sid: u16, iova: u64, write: bool) -> Result<u64, FaultReason> {
        self.translate_access(sid, iova, write)
            .map_err(|f| f.reason)
    }

    /// What a fresh walk of memory gives for this access, ignoring and not touching any cache,
    /// recording nothing. Useful to compare with [`VtdModel::translate`].
    pub fn probe(&self, sid: u16, iova: u64, write: bool) -> Result<u64, FaultReason> {
        self.fresh(sid, iova, write)
    }

    fn translate_access(&mut self, sid: u16, iova: u64, write: bool) -> Result<u64, VtdFault> {
        match self.translate_hw(sid, iova, write) {
            Ok(pa) => Ok(pa),
            Err((reason, fpd)) => {
                let recorded = if fpd {
                    self.stats.faults_suppressed += 1;
                    false
                } else {
                    self.record_fault(sid, iova, reason, write)
                };
                Err(VtdFault {
                    reason,
                    sid,
                    addr: iova,
                    write,
                    recorded,
                })
            }
        }
    }

    /// A DMA read of `len` bytes by device `sid` at `iova`, translated page by page. The first
    /// page that faults ends the transfer with its fault (which is recorded as hardware would).
    pub fn dma_read(&mut self, sid: u16, iova: u64, len: usize) -> Result<Vec<u8>, VtdFault> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((0x1000 - (a & 0xfff)) as usize).min(len - done);
            let pa = self.translate_access(sid, a, false)?;
            self.mem
                .borrow()
                .read_bytes(pa, &mut out[done..done + chunk]);
            done += chunk;
        }
        Ok(out)
    }

    /// A DMA write of `data` by device `sid` at `iova`, translated page by page. Pages before a
    /// faulting one are written (as a real device's earlier TLPs would be).
    pub fn dma_write(&mut self, sid: u16, iova: u64, data: &[u8]) -> Result<(), VtdFault> {
        let mut done = 0usize;
        while done < data.len() {
            let a = iova.wrapping_add(done as u64);
            let chunk = ((0x1000 - (a & 0xfff)) as usize).min(data.len() - done);
            let pa = self.translate_access(sid, a, true)?;
            self.mem
                .borrow_mut()
                .write_bytes(pa, &data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    // ---- derived capability values ----

    fn iro(&self) -> usize {
        (((self.cfg.ecap >> ECAP_IRO_SHIFT) & 0x3ff) * 16) as usize
    }
    fn fro(&self) -> usize {
        (((self.cfg.cap >> CAP_FRO_SHIFT) & 0x3ff) * 16) as usize
    }
    fn nfr(&self) -> usize {
        self.frcd.len()
    }
    fn haw_mask(&self) -> u64 {
        if self.cfg.haw >= 64 {
            u64::MAX
        } else {
            (1u64 << self.cfg.haw) - 1
        }
    }
    /// MGAW in bits.
    fn mgaw(&self) -> u32 {
        (((self.cfg.cap >> CAP_MGAW_SHIFT) & 0x3f) + 1) as u32
    }
    fn did_bits(&self) -> u32 {
        4 + 2 * ((self.cfg.cap & CAP_ND_MASK).min(6) as u32)
    }
    fn mamv(&self) -> u64 {
        (self.cfg.cap >> CAP_MAMV_SHIFT) & 0x3f
    }
    fn cm(&self) -> bool {
        self.cfg.cap & CAP_CM != 0
    }
    fn violation(&mut self, msg: String) {
        self.violations.push(msg);
    }
}

impl RegisterAccess for VtdModel {
    fn read32(&mut self, offset: usize) -> u32 {
        if offset % 4 != 0 {
            self.violation(format!("misaligned 32-bit read at {offset:#x}"));
            return 0;
        }
        if let Some(r) = self.reg64_at(offset & !7) {
            let v = self.read_r64(r);
            return (v >> ((offset & 4) * 8)) as u32;
        }
        match Self::reg32_at(offset) {
            Some(r) => self.read_r32(r),
            None => {
                self.stats.unknown_reads += 1;
                0
            }
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if offset % 4 != 0 {
            self.violation(format!("misaligned 32-bit write at {offset:#x}"));
            return;
        }
        if let Some(r) = self.reg64_at(offset & !7) {
            let sh = (offset & 4) * 8;
            self.write_r64(r, u64::from(value) << sh, 0xffff_ffffu64 << sh);
            return;
        }
        match Self::reg32_at(offset) {
            Some(r) => self.write_r32(r, value),
            None => self.violation(format!(
                "write of {value:#x} to {offset:#x}, where no register is"
            )),
        }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        if offset % 8 != 0 {
            self.violation(format!("misaligned 64-bit read at {offset:#x}"));
            return 0;
        }
        if let Some(r) = self.reg64_at(offset) {
            return self.read_r64(r);
        }
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    fn write64(&mut self, offset: usize, value: u64) {
        if offset % 8 != 0 {
            self.violation(format!("misaligned 64-bit write at {offset:#x}"));
            return;
        }
        if let Some(r) = self.reg64_at(offset) {
            self.write_r64(r, value, u64::MAX);
            return;
        }
        self.violation(format!(
            "64-bit write of {value:#x} to 32-bit registers at {offset:#x}"
        ));
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// A cloneable handle on a shared [`VtdModel`], so a driver can own one (as its
/// `RegisterAccess`) while the test keeps another to issue DMA and inspect the model.
#[derive(Debug, Clone)]
pub struct VtdHandle(pub Rc<RefCell<VtdModel>>);

impl VtdHandle {
    /// A new unit out of reset over `mem`.
    pub fn new(mem: SharedMem, cfg: VtdConfig) -> Self {
        VtdHandle(Rc::new(RefCell::new(VtdModel::new(mem, cfg))))
    }
    /// Borrows the model.
    pub fn borrow(&self) -> std::cell::Ref<'_, VtdModel> {
        self.0.borrow()
    }
    /// Borrows the model mutably.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, VtdModel> {
        self.0.borrow_mut()
    }
    /// See [`VtdModel::dma_read`].
    pub fn dma_read(&self, sid: u16, iova: u64, len: usize) -> Result<Vec<u8>, VtdFault> {
        self.0.borrow_mut().dma_read(sid, iova, len)
    }
    /// See [`VtdModel::dma_write`].
    pub fn dma_write(&self, sid: u16, iova: u64, data: &[u8]) -> Result<(), VtdFault> {
        self.0.borrow_mut().dma_write(sid, iova, data)
    }
    /// See [`VtdModel::translate`].
    pub fn translate(&self, sid: u16, iova: u64, write: bool) -> Result<u64, FaultReason> {
        self.0.borrow_mut().translate(sid, iova, write)
    }
    /// See [`VtdModel::probe`].
    pub fn probe(&self, sid: u16, iova: u64, write: bool) -> Result<u64, FaultReason> {
        self.0.borrow().probe(sid, iova, write)
    }
    /// See [`VtdModel::stats`].
    pub fn stats(&self) -> VtdStats {
        self.0.borrow().stats()
    }
    /// See [`VtdModel::violations`] (cloned).
    pub fn violations(&self) -> Vec<String> {
        self.0.borrow().violations().to_vec()
    }
    /// See [`VtdModel::fault_records`].
    pub fn fault_records(&self) -> Vec<FaultRecord> {
        self.0.borrow().fault_records()
    }
    /// See [`VtdModel::fault_messages`] (cloned).
    pub fn fault_messages(&self) -> Vec<(u64, u32)> {
        self.0.borrow().fault_messages().to_vec()
    }
    /// See [`VtdModel::invalidation_log`] (cloned).
    pub fn invalidation_log(&self) -> Vec<InvalidationRecord> {
        self.0.borrow().invalidation_log().to_vec()
    }
}

impl RegisterAccess for VtdHandle {
    fn read32(&mut self, offset: usize) -> u32 {
        self.0.borrow_mut().read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0.borrow_mut().write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.0.borrow_mut().read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.0.borrow_mut().write64(offset, value)
    }
}

//! Legacy-mode translation: root table, context tables, second-level walk, and the three caches
//! the model keeps (context cache, IOTLB, paging-structure cache).
//!
//! Layouts (spec 9.1, 9.3, 9.8; levels numbered as the spec does: 1 = SL-PTE (4 KiB),
//! 2 = SL-PDE (2 MiB), 3 = SL-PDPE (1 GiB), 4 = SL-PML4E, 5 = SL-PML5E):
//! - root entry (128-bit, indexed by bus): low P 0, reserved 11:1, CTP 63:12; high reserved.
//! - context entry (128-bit, indexed by devfn): low P 0, FPD 1, TT 3:2, reserved 11:4,
//!   SLPTPTR 63:12; high AW 2:0, AVAIL 6:3, reserved 7, DID 23:8, reserved 63:24.
//! - second-level entry: R 0, W 1, (X 2, EMT 5:3, IPAT 6 ignored here), PS 7, SNP 11 (leaf),
//!   ADDR (HAW-1):12, reserved 51:HAW, ignored 61:52 and 63, TM 62 (leaf, needs ECAP.DT).
//!   Bit 7 is reserved at levels 4 and 5; a PS = 1 leaf at level 2 or 3 must be allowed by
//!   CAP.SLLPS, and its address bits below the page size are reserved.

use super::VtdModel;
use super::fault::FaultReason;
use super::regs::*;

/// What a context entry (or a cached copy of it) says about a source id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CtxEntry {
    /// DID of the entry (0 for negative entries cached under caching mode).
    pub did: u16,
    /// Fault processing disable.
    pub fpd: bool,
    /// What requests through this entry do.
    pub kind: CtxKind,
}

/// The translation type of a context entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CtxKind {
    /// Translate through second-level tables rooted at `slptptr`, `levels` levels deep, for an
    /// input address width of `width` bits.
    Translate { slptptr: u64, levels: u8, width: u8 },
    /// TT = 10: untranslated requests pass through.
    PassThrough,
    /// A fault found while fetching the entry (cached only under caching mode).
    Fault(FaultReason),
}

/// An IOTLB entry: the leaf translation for one page of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IotlbEntry {
    /// log2 of the page size (12, 21 or 30).
    pub shift: u8,
    /// Output address of the page (None = negative entry for a not-present mapping).
    pub phys: Option<u64>,
    /// Cumulative read permission.
    pub r: bool,
    /// Cumulative write permission.
    pub w: bool,
}

/// A paging-structure cache entry: a non-leaf entry at some level, i.e. the next table, or,
/// under caching mode, a not-present entry at a level above the leaves (negative: the whole
/// region the entry maps is not present until an invalidation drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PscEntry {
    /// Address of the next-lower-level table (`None`: a cached not-present entry).
    pub table: Option<u64>,
    /// Cumulative read permission down to and including this entry.
    pub r: bool,
    /// Cumulative write permission down to and including this entry.
    pub w: bool,
}

/// A successful leaf lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Leaf {
    pub shift: u8,
    pub phys: u64,
    pub r: bool,
    pub w: bool,
}

/// A failed walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WalkFault {
    /// An entry with R = W = 0 at the level given: fault 5 or 6 by request type; cacheable
    /// under caching mode.
    NotPresent(u8),
    /// Any other fault.
    Fault(FaultReason),
}

impl WalkFault {
    fn reason(self, write: bool) -> FaultReason {
        match self {
            WalkFault::NotPresent(_) => FaultReason::permission(write),
            WalkFault::Fault(r) => r,
        }
    }
}

/// Shift of the region one entry at `level` maps.
pub(super) fn level_shift(level: u8) -> u32 {
    12 + 9 * (u32::from(level) - 1)
}

impl VtdModel {
    /// Whether a table access at `pa` fails (beyond `VtdConfig::mem_limit`).
    fn access_fails(&self, pa: u64) -> bool {
        self.cfg.mem_limit.is_some_and(|l| pa >= l)
    }

    /// Reads the 128-bit entry at `pa`.
    fn read128(&self, pa: u64) -> (u64, u64) {
        let m = self.mem.borrow();
        (m.read(pa), m.read(pa + 8))
    }

    /// Fetches the context entry for `sid` from memory (no caches). On failure returns the
    /// reason and whether FPD was set in the entry read (FPD is honoured even with P = 0, as in
    /// QEMU). The `bool` in the success value tells whether the DID used bits beyond ND.
    pub(super) fn fetch_context(&self, sid: u16) -> Result<(CtxEntry, bool), (FaultReason, bool)> {
        let bus = u64::from(sid >> 8);
        let devfn = u64::from(sid & 0xff);
        let ra = self.root_ptr + bus * 16;
        if self.access_fails(ra) {
            return Err((FaultReason::RootTableAccess, false));
        }
        let (rlo, rhi) = self.read128(ra);
        if rlo & 1 == 0 {
            return Err((FaultReason::RootNotPresent, false));
        }
        let above_haw = !self.haw_mask();
        if rlo & (0xffe | above_haw) != 0 || rhi != 0 {
            return Err((FaultReason::RootReserved, false));
        }
        let ca = (rlo & !0xfff) + devfn * 16;
        if self.access_fails(ca) {
            return Err((FaultReason::ContextTableAccess, false));
        }
        let (clo, chi) = self.read128(ca);
        let fpd = clo & 2 != 0;
        if clo & 1 == 0 {
            return Err((FaultReason::ContextNotPresent, fpd));
        }
        if clo & (0xff0 | above_haw) != 0 || chi & 0xffff_ffff_ff00_0080 != 0 {
            return Err((FaultReason::ContextReserved, fpd));
        }
        let raw_did = (chi >> 8) & 0xffff;
        let did_bits = self.did_bits();
        let did = (raw_did & ((1u64 << did_bits) - 1)) as u16;
        let did_overflow = u64::from(did) != raw_did;
        let tt = (clo >> 2) & 3;
        let kind = match tt {
            0 | 1 => {
                if tt == 1 && self.cfg.ecap & ECAP_DT == 0 {
                    return Err((FaultReason::ContextInvalid, fpd));
                }
                let aw = (chi & 7) as u8;
                let sagaw = (self.cfg.cap >> CAP_SAGAW_SHIFT) & 0x1f;
                if aw > 4 || sagaw & (1 << aw) == 0 {
                    return Err((FaultReason::ContextInvalid, fpd));
                }
                CtxKind::Translate {
                    slptptr: clo & !0xfff,
                    levels: aw + 2,
                    width: 30 + 9 * aw,
                }
            }
            2 if self.cfg.ecap & ECAP_PT != 0 => CtxKind::PassThrough,
            _ => return Err((FaultReason::ContextInvalid, fpd)),
        };
        Ok((CtxEntry { did, fpd, kind }, did_overflow))
    }

    /// Reserved-bit mask of a second-level entry at `level` (leaf or not).
    fn sl_reserved(&self, level: u8, leaf: bool) -> u64 {
        let haw = u32::from(self.cfg.haw);
        let mut m = if haw < 52 {
            ((1u64 << 52) - 1) & !((1u64 << haw) - 1)
        } else {
            0
        };
        if level >= 4 {
            m |= 1 << 7;
        }
        if leaf {
            if self.cfg.ecap & ECAP_SC == 0 {
                m |= 1 << 11;
            }
            if self.cfg.ecap & ECAP_DT == 0 {
                m |= 1 << 62;
            }
            if level > 1 {
                // Address bits below the superpage size.
                m |= ((1u64 << level_shift(level)) - 1) & !0xfff;
            }
        }
        m
    }

    /// Walks second-level tables from `table` at `level` with cumulative permissions `(r, w)`.
    /// Non-leaf entries read on the way are appended to `nonleaf` as (level, iova prefix, entry).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk_from(
        &self,
        mut table: u64,
        mut level: u8,
        mut r: bool,
        mut w: bool,
        iova: u64,
        write: bool,
        nonleaf: &mut Vec<(u8, u64, PscEntry)>,
    ) -> Result<Leaf, WalkFault> {
        let sllps = (self.cfg.cap >> CAP_SLLPS_SHIFT) & 0xf;
        loop {
            let shift = level_shift(level);
            let idx = (iova >> shift) & 511;
            let ea = table + idx * 8;
            if self.access_fails(ea) {
                return Err(WalkFault::Fault(FaultReason::PagingEntryAccess));
            }
            let pte = self.mem.borrow().read(ea);
            if pte & 3 == 0 {
                return Err(WalkFault::NotPresent(level));
            }
            let ps = pte & (1 << 7) != 0;
            let leaf = level == 1 || (ps && (level == 2 || level == 3));
            if ps && level == 2 && sllps & 1 == 0 || ps && level == 3 && sllps & 2 == 0 {
                return Err(WalkFault::Fault(FaultReason::PagingEntryReserved));
            }
            if pte & self.sl_reserved(level, leaf) != 0 {
                return Err(WalkFault::Fault(FaultReason::PagingEntryReserved));
            }
            r &= pte & 1 != 0;
            w &= pte & 2 != 0;
            if !(if write { w } else { r }) {
                return Err(WalkFault::Fault(FaultReason::permission(write)));
            }
            if leaf {
                let addr = pte & self.haw_mask() & !((1u64 << shift) - 1);
                return Ok(Leaf {
                    shift: shift as u8,
                    phys: addr,
                    r,
                    w,
                });
            }
            let addr = pte & self.haw_mask() & !0xfff;
            nonleaf.push((
                level,
                iova >> shift,
                PscEntry {
                    table: Some(addr),
                    r,
                    w,
                },
            ));
            table = addr;
            level -= 1;
        }
    }

    /// A fresh translation from memory, touching no cache and recording nothing.
    pub(super) fn fresh(&self, sid: u16, iova: u64, write: bool) -> Result<u64, FaultReason> {
        if self.gsts & GCMD_TE == 0 {
            return Ok(iova);
        }
        let (ctx, _) = self.fetch_context(sid).map_err(|e| e.0)?;
        self.fresh_in(&ctx, iova, write)
    }

    fn fresh_in(&self, ctx: &CtxEntry, iova: u64, write: bool) -> Result<u64, FaultReason> {
        match ctx.kind {
            CtxKind::Fault(r) => Err(r),
            CtxKind::PassThrough => Ok(iova),
            CtxKind::Translate {
                slptptr,
                levels,
                width,
            } => {
                self.check_width(iova, width)?;
                let mut v = Vec::new();
                self.walk_from(slptptr, levels, true, true, iova, write, &mut v)
                    .map(|l| l.phys | (iova & ((1u64 << l.shift) - 1)))
                    .map_err(|f| f.reason(write))
            }
        }
    }

    fn check_width(&self, iova: u64, width: u8) -> Result<(), FaultReason> {
        let x = u32::from(width).min(self.mgaw());
        if x < 64 && iova >> x != 0 {
            return Err(FaultReason::AddressBeyondMgaw);
        }
        Ok(())
    }

    /// The context entry for `sid` through the context cache. Returns the entry and whether
    /// the fault (if any) is to be recorded.
    fn context_lookup(&mut self, sid: u16) -> CtxEntry {
        if let Some(e) = self.ctx_cache.get(&sid).copied() {
            self.stats.cc_hits += 1;
            let fresh = match self.fetch_context(sid) {
                Ok((c, _)) => c,
                Err((r, fpd)) => CtxEntry {
                    did: 0,
                    fpd,
                    kind: CtxKind::Fault(r),
                },
            };
            if fresh != e {
                self.stats.stale_context_hits += 1;
            }
            return e;
        }
        self.stats.cc_misses += 1;
        match self.fetch_context(sid) {
            Ok((c, did_overflow)) => {
                if did_overflow {
                    self.violation(format!(
                        "context entry of SID {sid:#06x} has a DID wider than CAP.ND allows"
                    ));
                }
                if self.cm() && c.did == 0 && matches!(c.kind, CtxKind::Translate { .. }) {
                    self.violation(format!(
                        "context entry of SID {sid:#06x} uses DID 0, reserved when CAP.CM = 1"
                    ));
                }
                self.ctx_cache.insert(sid, c);
                c
            }
            Err((r, fpd)) => {
                let e = CtxEntry {
                    did: 0,
                    fpd,
                    kind: CtxKind::Fault(r),
                };
                // Caching mode: not-present and erroneous entries may be cached, under DID 0.
                if self.cm() {
                    self.ctx_cache.insert(sid, e);
                }
                e
            }
        }
    }

    /// The hardware translation path: context cache, IOTLB, paging-structure cache, walk.
    /// Fills caches; does not record faults (the caller does). Returns the output address or the
    /// reason and the context's FPD.
    pub(super) fn translate_hw(
        &mut self,
        sid: u16,
        iova: u64,
        write: bool,
    ) -> Result<u64, (FaultReason, bool)> {
        self.stats.translations += 1;
        if self.gsts & GCMD_TE == 0 {
            return Ok(iova);
        }
        let ctx = self.context_lookup(sid);
        let (slptptr, levels, width) = match ctx.kind {
            CtxKind::Fault(r) => return Err((r, ctx.fpd)),
            CtxKind::PassThrough => return Ok(iova),
            CtxKind::Translate {
                slptptr,
                levels,
                width,
            } => (slptptr, levels, width),
        };
        self.check_width(iova, width).map_err(|r| (r, ctx.fpd))?;
        let did = ctx.did;
        // IOTLB.
        for shift in [12u8, 21, 30] {
            let base = iova & !((1u64 << shift) - 1);
            if let Some(e) = self.iotlb.get(&(did, shift, base)).copied() {
                self.stats.iotlb_hits += 1;
                let cached = match e.phys {
                    None => {
                        self.stats.negative_hits += 1;
                        Err(FaultReason::permission(write))
                    }
                    Some(p) if (write && e.w) || (!write && e.r) => Ok(p | (iova - base)),
                    Some(_) => Err(FaultReason::permission(write)),
                };
                if cached != self.fresh_in(&ctx, iova, write) {
                    self.stats.stale_hits += 1;
                }
                return cached.map_err(|r| (r, ctx.fpd));
            }
        }
        self.stats.iotlb_misses += 1;
        // Paging-structure cache: start below the deepest cached non-leaf entry.
        let mut start = (slptptr, levels, true, true);
        for level in 2..=levels {
            let key = (did, level, iova >> level_shift(level));
            if let Some(p) = self.psc.get(&key).copied() {
                self.stats.psc_hits += 1;
                let Some(table) = p.table else {
                    // A not-present entry cached under caching mode.
                    self.stats.negative_hits += 1;
                    if self.fresh_in(&ctx, iova, write) != Err(FaultReason::permission(write)) {
                        self.stats.stale_hits += 1;
                    }
                    return Err((FaultReason::permission(write), ctx.fpd));
                };
                start = (table, level - 1, p.r, p.w);
                break;
            }
        }
        self.stats.walks += 1;
        let mut nonleaf = Vec::new();
        let res = self.walk_from(
            start.0,
            start.1,
            start.2,
            start.3,
            iova,
            write,
            &mut nonleaf,
        );
        for (level, prefix, e) in nonleaf {
            self.psc.insert((did, level, prefix), e);
        }
        match res {
            Ok(l) => {
                let base = iova & !((1u64 << l.shift) - 1);
                self.iotlb.insert(
                    (did, l.shift, base),
                    IotlbEntry {
                        shift: l.shift,
                        phys: Some(l.phys),
                        r: l.r,
                        w: l.w,
                    },
                );
                Ok(l.phys | (iova - base))
            }
            Err(f) => {
                // Caching mode: every walk that meets a not-present entry caches it, at the
                // level it was found (VT-d spec 6.1): a leaf-level one as a negative IOTLB
                // entry for the page, a higher one as a negative paging-structure entry for
                // the whole region it maps. Until an invalidation drops it, a later map of
                // any page of that region stays invisible.
                if let (WalkFault::NotPresent(level), true) = (f, self.cm()) {
                    if level == 1 {
                        self.iotlb.insert(
                            (did, 12, iova & !0xfff),
                            IotlbEntry {
                                shift: 12,
                                phys: None,
                                r: false,
                                w: false,
                            },
                        );
                    } else {
                        let prefix = iova >> level_shift(level);
                        self.psc.insert(
                            (did, level, prefix),
                            PscEntry {
                                table: None,
                                r: false,
                                w: false,
                            },
                        );
                    }
                }
                Err((f.reason(write), ctx.fpd))
            }
        }
    }
}

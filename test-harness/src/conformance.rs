//! The page-table conformance suite, generic over a [`Format`] and an independent
//! [`RefWalker`] written from the same specification.
//!
//! A [`Rig`] owns simulated memory, a frame allocator, the engine's [`PageTable`] and a shadow
//! model (a map of non-overlapping IOVA ranges to output ranges and permissions, equivalent to
//! a page-by-page `BTreeMap<page, (phys page, perms)>` but cheap for 1 GiB ranges). Every
//! operation goes through the rig, which checks, after the call:
//! - the reference walker's view of the whole table (every leaf, coalesced into runs) equals
//!   the model, no entry is malformed, no table is reachable twice, every table frame is one
//!   the allocator handed out, and the allocator's in-use count is exactly the reachable
//!   tables plus the frames waiting in the gather (no leak, no early free);
//! - at sample points (every model range's first and last page and their outer neighbours, the
//!   call's boundaries), walker, engine `query()` and model agree, leaf size included;
//! - every leaf has a size the unit allows;
//! - a successful map wrote exactly the minimal number of leaves; an unmap wrote at most one
//!   clear per leaf it removed;
//! - the gather covers every page whose translation went away, stays inside the request, and
//!   its leaf-size bounds cover every removed leaf; unlinked tables are reported and are
//!   non-present throughout while they wait for the invalidation;
//! - during the call, after *every* single entry write, watched pages outside the request keep
//!   their translation and pages inside it show only the old or the new one (no window where a
//!   page that stays mapped disappears, no transiently wrong output address);
//! - a failed call left memory, the allocator and the model exactly as before.
//!
//! [`reordering`] runs map, split and unmap once more under a [`crate::reorder::ReorderMem`],
//! where table writes reach the walker only when a barrier orders them and fresh frames hold
//! garbage until then, checking the same windows against every adversarial subset of the
//! writes not yet ordered.
//!
//! The scenario functions (`random_ops`, `fault_injection_*`, ...) are instantiated for every
//! format and address width by [`pagetable_conformance!`](crate::pagetable_conformance).

use std::collections::{BTreeMap, BTreeSet};
use std::format;
use std::marker::PhantomData;
use std::string::String;
use std::vec::Vec;

use iommu_hal::pagetable::{
    Format, Gather, LeafSizes, Map, PageTable, Perms, PtError, RESERVE, TableConfig, Unmap,
};
use iommu_hal::{PhysAddr, PhysMem};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

use crate::sim::{SharedMem, SimAlloc};
use crate::walker::{
    Access, Audit, RefWalker, Run, Step, coalesce, enumerate, level_span, translate,
};

/// 4 KiB.
pub const K4: u64 = 1 << 12;
/// 2 MiB.
pub const M2: u64 = 1 << 21;
/// 1 GiB.
pub const G1: u64 = 1 << 30;
/// Where the table-frame pool starts.
pub const POOL_BASE: u64 = 1 << 40;
/// Frames in the pool.
pub const POOL_FRAMES: u64 = 8192;
/// Base of the output addresses used by the scenarios (leaf targets are never read).
pub const PHYS_BASE: u64 = 64 * G1;

/// The configuration most scenarios use: 4K/2M/1G leaves, live splits allowed, coherent.
pub fn standard_config(addr_width: u32) -> TableConfig {
    TableConfig {
        addr_width,
        phys_width: 52,
        leaf_sizes: LeafSizes::STANDARD,
        split_live_blocks: true,
        coherent: true,
    }
}

fn access(p: Perms) -> Access {
    Access {
        read: p.read,
        write: p.write,
    }
}

/// Inclusive last byte of `[iova, iova + len)` (`len > 0`).
fn last_of(iova: u64, len: u64) -> u64 {
    iova + (len - 1)
}

/// The shadow model: non-overlapping ranges `start -> (len, phys, perms)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    ranges: BTreeMap<u64, (u64, u64, Perms)>,
}

impl Model {
    /// Whether any page of `[iova, last]` is mapped.
    pub fn overlaps(&self, iova: u64, last: u64) -> bool {
        if let Some((&s, &(l, _, _))) = self.ranges.range(..=iova).next_back()
            && last_of(s, l) >= iova
        {
            return true;
        }
        self.ranges.range(iova..=last).next().is_some()
    }

    /// Adds a mapping (the caller checked there is no overlap).
    pub fn insert(&mut self, iova: u64, len: u64, phys: u64, perms: Perms) {
        self.ranges.insert(iova, (len, phys, perms));
    }

    /// Removes every page of `[iova, last]`; returns the bytes that were mapped.
    pub fn remove(&mut self, iova: u64, last: u64) -> u64 {
        let mut removed = 0;
        let keys: Vec<u64> = {
            let mut k: Vec<u64> = self.ranges.range(iova..=last).map(|(&s, _)| s).collect();
            if let Some((&s, &(l, _, _))) = self.ranges.range(..iova).next_back()
                && last_of(s, l) >= iova
            {
                k.insert(0, s);
            }
            k
        };
        for s in keys {
            let (l, p, perms) = self.ranges.remove(&s).expect("key");
            let e = last_of(s, l);
            let cut_s = s.max(iova);
            let cut_e = e.min(last);
            removed += cut_e - cut_s + 1;
            if s < cut_s {
                self.ranges.insert(s, (cut_s - s, p, perms));
            }
            if e > cut_e {
                let ns = cut_e + 1;
                self.ranges.insert(ns, (e - ns + 1, p + (ns - s), perms));
            }
        }
        removed
    }

    /// Output address and permissions of `iova`.
    pub fn lookup(&self, iova: u64) -> Option<(u64, Perms)> {
        let (&s, &(l, p, perms)) = self.ranges.range(..=iova).next_back()?;
        (last_of(s, l) >= iova).then(|| (p + (iova - s), perms))
    }

    /// Mapped sub-ranges of `[iova, last]`, as `(first, last)` inclusive.
    pub fn mapped_within(&self, iova: u64, last: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (&s, &(l, _, _)) in &self.ranges {
            let e = last_of(s, l);
            if e < iova || s > last {
                continue;
            }
            out.push((s.max(iova), e.min(last)));
        }
        out
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The model as coalesced runs, comparable with [`Audit::runs`].
    pub fn runs(&self) -> Vec<Run> {
        coalesce(self.ranges.iter().map(|(&s, &(l, p, perms))| Run {
            iova: s,
            len: l,
            phys: p,
            access: access(perms),
        }))
    }

    /// Raw ranges `(iova, len)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(&s, &(l, _, _))| (s, l)).collect()
    }
}

/// The fewest leaves that map `[iova, iova + len)` to `phys` with leaf sizes `sizes` (bit mask):
/// at each step the largest allowed size that divides both addresses and fits.
pub fn min_leaves(mut iova: u64, mut phys: u64, mut len: u64, sizes: u64) -> u64 {
    let mut n = 0;
    while len > 0 {
        let mut s = K4;
        for k in (12..64).rev() {
            let size = 1u64 << k;
            if sizes & size != 0 && iova % size == 0 && phys % size == 0 && size <= len {
                s = size;
                break;
            }
        }
        iova = iova.wrapping_add(s);
        phys = phys.wrapping_add(s);
        len -= s;
        n += 1;
    }
    n
}

/// Memory and allocator state, for "nothing changed" comparisons. Words of frames on the
/// allocator's free list are left out (their contents are garbage by definition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Non-zero words outside free frames.
    pub words: Vec<(u64, u64)>,
    /// The free list, in order.
    pub free: Vec<u64>,
    /// Frames in use.
    pub in_use: u64,
}

impl State {
    /// Equality ignoring the free list's order.
    pub fn same_up_to_free_order(&self, other: &State) -> bool {
        let mut a = self.free.clone();
        let mut b = other.free.clone();
        a.sort_unstable();
        b.sort_unstable();
        self.words == other.words && self.in_use == other.in_use && a == b
    }
}

/// Which translations a watched page may show during an operation: `None` = not mapped.
type Allowed = [Option<(u64, bool, bool)>; 2];

/// A [`PhysMem`] wrapper that re-walks watched pages after every entry write.
struct Watched<'a, W: RefWalker> {
    mem: SharedMem,
    root: u64,
    width: u32,
    watch: &'a [(u64, Allowed)],
    violation: Option<String>,
    writes: u64,
    _w: PhantomData<W>,
}

impl<W: RefWalker> PhysMem for Watched<'_, W> {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        self.mem.read_u64(pa)
    }
    fn order_writes(&mut self) {
        self.mem.order_writes()
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        self.mem.write_u64(pa, value);
        self.writes += 1;
        if self.violation.is_some() {
            return;
        }
        let m = self.mem.borrow();
        for &(iova, allowed) in self.watch {
            match translate::<W>(&m, self.root, self.width, iova) {
                Err(e) => {
                    self.violation = Some(format!(
                        "after write #{} ({value:#x} to {pa:#x}) the walker sees a malformed \
                         entry for iova {iova:#x}: {e}",
                        self.writes
                    ));
                    return;
                }
                Ok(t) => {
                    let got = t.map(|w| (w.phys, w.read, w.write));
                    if !allowed.contains(&got) {
                        self.violation = Some(format!(
                            "after write #{} ({value:#x} to {pa:#x}) iova {iova:#x} translates \
                             to {got:x?}; allowed only {allowed:x?} (transient window)",
                            self.writes
                        ));
                        return;
                    }
                }
            }
        }
    }
    fn sync_for_device(&mut self, pa: PhysAddr, len: u64) {
        self.mem.sync_for_device(pa, len)
    }
}

/// Simulated memory, allocator, engine table and shadow model, checked after every call.
pub struct Rig<F: Format, W: RefWalker> {
    /// Simulated physical memory.
    pub mem: SharedMem,
    /// The table-frame allocator.
    pub alloc: SimAlloc,
    /// The engine's table (`None` after `destroy`).
    pub pt: Option<PageTable<F>>,
    /// The shadow model.
    pub model: Model,
    /// Input address width.
    pub width: u32,
    /// Walker levels.
    pub levels: u32,
    /// Leaf sizes the unit, the specification and the format all allow.
    pub allowed: u64,
    /// Whether to re-walk watched pages after every entry write.
    pub watch: bool,
    /// A label for failure messages.
    pub label: String,
    _w: PhantomData<W>,
}

impl<F: Format, W: RefWalker> Rig<F, W> {
    /// A rig with a fresh table built with `config`.
    pub fn new(config: TableConfig) -> Self {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, POOL_FRAMES);
        let width = config.addr_width;
        let levels = W::levels(width).expect("walker supports the width");
        let pt = PageTable::<F>::new(config, &mut alloc)
            .unwrap_or_else(|e| panic!("{}/{width}: PageTable::new: {e:?}", F::NAME));
        assert_eq!(
            pt.levels() as u32,
            levels,
            "{}/{width}: engine level count differs from the specification",
            F::NAME
        );
        assert_eq!(
            alloc.in_use, 2,
            "new() must allocate exactly the root and its shadow"
        );
        let spec = W::spec_leaf_sizes(levels);
        let mut format_sizes = 0;
        for l in 0..levels {
            if F::leaf_allowed(l as u8) {
                format_sizes |= level_span(l);
            }
        }
        assert_eq!(
            format_sizes & !spec,
            0,
            "{}: format allows leaves at levels the specification forbids",
            F::NAME
        );
        let allowed = config.leaf_sizes.0 & spec & format_sizes;
        let rig = Rig {
            mem,
            alloc,
            pt: Some(pt),
            model: Model::default(),
            width,
            levels,
            allowed,
            watch: true,
            label: format!("{}/{width}", F::NAME),
            _w: PhantomData,
        };
        rig.check(&[]);
        rig
    }

    /// The engine's table.
    pub fn pt(&self) -> &PageTable<F> {
        self.pt.as_ref().expect("table destroyed")
    }

    /// Highest IOVA a device reaches (inclusive).
    pub fn last_iova(&self) -> u64 {
        W::last_iova(self.width)
    }

    /// The walker's view of the whole table (panics on a malformed table).
    pub fn audit(&self) -> Audit {
        let root = self.pt().root();
        enumerate::<W>(&self.mem.borrow(), root, self.width)
            .unwrap_or_else(|e| panic!("{}: table audit failed: {e}", self.label))
    }

    /// Memory and allocator state.
    pub fn state(&self) -> State {
        let free: BTreeSet<u64> = self.alloc.free_list().iter().copied().collect();
        let words = self
            .mem
            .borrow()
            .snapshot()
            .into_iter()
            .filter(|(pa, _)| !free.contains(&(pa & !(K4 - 1))))
            .collect();
        State {
            words,
            free: self.alloc.free_list().to_vec(),
            in_use: self.alloc.in_use,
        }
    }

    fn release(&mut self, g: &mut Gather) {
        let mut m = self.mem.clone();
        g.release(&mut m, &mut self.alloc);
    }

    fn watch_points(&self, iova: u64, last: u64) -> Vec<u64> {
        let top = self.last_iova();
        let mut pts = BTreeSet::new();
        let page = |a: u64| a & !(K4 - 1);
        for a in [iova, last] {
            for size in [M2, G1] {
                let lo = a & !(size - 1);
                pts.insert(lo);
                pts.insert(page(lo.saturating_add(size - 1).min(top)));
            }
            pts.insert(page(a));
        }
        if iova >= K4 {
            pts.insert(iova - K4);
        }
        if last < top {
            pts.insert(last + 1);
        }
        for (s, l) in self.model.ranges().into_iter().take(4) {
            pts.insert(s);
            pts.insert(page(last_of(s, l)));
        }
        pts.into_iter().take(16).collect()
    }

    fn allowed_during(&self, p: u64, iova: u64, last: u64, new: Option<(u64, Perms)>) -> Allowed {
        let old = self.model.lookup(p).map(|(ph, pr)| (ph, pr.read, pr.write));
        if p < iova || p > last {
            return [old, old];
        }
        let new = new.map(|(phys, pr)| (phys.wrapping_add(p - iova), pr.read, pr.write));
        [old, new]
    }

    fn run_watched<R>(
        &mut self,
        watch: &[(u64, Allowed)],
        f: impl FnOnce(&mut PageTable<F>, &mut Watched<'_, W>, &mut SimAlloc) -> R,
    ) -> R {
        let root = self.pt().root();
        let mut wm = Watched::<W> {
            mem: self.mem.clone(),
            root,
            width: self.width,
            watch: if self.watch { watch } else { &[] },
            violation: None,
            writes: 0,
            _w: PhantomData,
        };
        let pt = self.pt.as_mut().expect("table destroyed");
        let r = f(pt, &mut wm, &mut self.alloc);
        if let Some(v) = wm.violation {
            panic!("{}: {v}", self.label);
        }
        r
    }

    /// Maps through the engine and checks everything; returns the engine's result.
    pub fn map(&mut self, iova: u64, phys: u64, len: u64, perms: Perms) -> Result<(), PtError> {
        let ctx = format!(
            "{}: map({iova:#x}, {phys:#x}, {len:#x}, {perms:?})",
            self.label
        );
        let before = self.state();
        let pre = self.audit();
        let c0 = self.pt().counters();
        let last = if len == 0 {
            iova
        } else {
            iova.wrapping_add(len - 1)
        };
        let watch: Vec<(u64, Allowed)> = self
            .watch_points(iova, last)
            .into_iter()
            .map(|p| (p, self.allowed_during(p, iova, last, Some((phys, perms)))))
            .collect();
        let mut g = Gather::new();
        let r = self.run_watched(&watch, |pt, m, a| {
            let req = Map {
                iova,
                phys,
                len,
                perms,
            };
            pt.map(m, a, req, &mut g)
        });
        let c1 = self.pt().counters();
        match r {
            Ok(()) => {
                assert!(len > 0 && last >= iova, "{ctx}: accepted a bad range");
                assert!(
                    last <= self.last_iova(),
                    "{ctx}: accepted a range beyond the last IOVA a device can present \
                     ({:#x}); no device access can reach it",
                    self.last_iova()
                );
                assert!(
                    !self.model.overlaps(iova, last),
                    "{ctx}: succeeded over an existing mapping"
                );
                self.model.insert(iova, len, phys, perms);
                if let Some((s, l)) = g.span() {
                    assert!(
                        s >= iova && l <= last,
                        "{ctx}: gather span {s:#x}..={l:#x} outside"
                    );
                }
                let want = min_leaves(iova, phys, len, self.allowed);
                assert_eq!(
                    c1.leaf_writes - c0.leaf_writes,
                    want,
                    "{ctx}: leaf entries written vs the minimal decomposition (sizes {:#x})",
                    self.allowed
                );
                self.after_success(&pre, &g, &ctx);
                self.release(&mut g);
                self.check(&[iova, last]);
            }
            Err(e) => {
                self.release(&mut g);
                let after = self.state();
                assert!(
                    after.same_up_to_free_order(&before),
                    "{ctx}: failed with {e:?} but changed memory or the allocator"
                );
                self.check(&[iova, last]);
            }
        }
        r
    }

    fn after_success(&self, pre: &Audit, g: &Gather, ctx: &str) {
        let post = self.audit();
        let post_tables: BTreeSet<u64> = post.tables.iter().map(|t| t.0).collect();
        let removed: Vec<(u64, u32)> = pre
            .tables
            .iter()
            .copied()
            .filter(|t| !post_tables.contains(&t.0))
            .collect();
        if !removed.is_empty() {
            assert!(
                g.tables_removed(),
                "{ctx}: unlinked tables but tables_removed() is false"
            );
        }
        let free: BTreeSet<u64> = self.alloc.free_list().iter().copied().collect();
        let m = self.mem.borrow();
        for &(t, level) in &removed {
            assert!(
                !free.contains(&t),
                "{ctx}: table {t:#x} freed before the invalidation (not deferred in the gather)"
            );
            for i in 0..512u64 {
                let e = m.read(t + i * 8);
                let top = self.levels - 1;
                let ok = matches!(W::step(e, level, top, Access::ALL), Ok(Step::NotPresent));
                assert!(
                    ok,
                    "{ctx}: unlinked table {t:#x} entry {i} = {e:#x} still present while a \
                     stale walker may read it"
                );
            }
        }
        assert_eq!(
            self.alloc.in_use,
            frames_of(&post) + g.frames_pending(),
            "{ctx}: frames in use != reachable tables + their shadows + frames pending in \
             the gather"
        );
    }

    /// Unmaps through the engine and checks everything; returns the engine's result.
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<u64, PtError> {
        let ctx = format!("{}: unmap({iova:#x}, {len:#x})", self.label);
        let before = self.state();
        let pre = self.audit();
        let c0 = self.pt().counters();
        let last = if len == 0 {
            iova
        } else {
            iova.wrapping_add(len - 1)
        };
        let valid = len > 0 && last >= iova;
        let touched: Vec<_> = if valid {
            pre.leaves
                .iter()
                .filter(|l| l.iova <= last && last_of(l.iova, l.span) >= iova)
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        let needs_split = touched
            .iter()
            .any(|l| l.iova < iova || last_of(l.iova, l.span) > last);
        let watch: Vec<(u64, Allowed)> = self
            .watch_points(iova, last)
            .into_iter()
            .map(|p| (p, self.allowed_during(p, iova, last, None)))
            .collect();
        let mut g = Gather::new();
        let r = self.run_watched(&watch, |pt, m, a| {
            pt.unmap(m, a, Unmap { iova, len }, &mut g)
        });
        let c1 = self.pt().counters();
        match r {
            Ok(bytes) => {
                assert!(valid, "{ctx}: accepted a bad range");
                let mapped = self.model.mapped_within(iova, last);
                let want: u64 = mapped.iter().map(|(s, e)| e - s + 1).sum();
                assert_eq!(
                    bytes, want,
                    "{ctx}: returned bytes vs bytes that were mapped"
                );
                if !self.pt().config().split_live_blocks {
                    assert!(!needs_split, "{ctx}: split a live block although forbidden");
                }
                self.model.remove(iova, last);
                // Tables this call unlinked, as (first, last) IOVA of their span.
                let post: BTreeSet<u64> = self.audit().tables.iter().map(|t| t.0).collect();
                let gone: Vec<(u64, u64)> = pre
                    .tables
                    .iter()
                    .filter(|t| !post.contains(&t.0))
                    .map(|t| {
                        let base = pre.table_bases[&t.0];
                        (base, last_of(base, level_span(t.1 + 1)))
                    })
                    .collect();
                match g.span() {
                    None => assert!(
                        mapped.is_empty() && gone.is_empty(),
                        "{ctx}: pages or tables went away but the gather has no span"
                    ),
                    Some((s, l)) => {
                        assert!(
                            !mapped.is_empty() || !gone.is_empty(),
                            "{ctx}: nothing was mapped or removed, yet the gather asks for an \
                             invalidation"
                        );
                        let first = mapped.first().map_or(s, |m| m.0);
                        let end = mapped.last().map_or(l, |m| m.1);
                        assert!(
                            s <= first && l >= end,
                            "{ctx}: gather span {s:#x}..={l:#x} misses unmapped pages \
                             {first:#x}..={end:#x}"
                        );
                        // The span may grow to whole leaves that were replaced (a split
                        // changes the cached translation of the entire old leaf), no further.
                        // It may also cover tables this call unlinked elsewhere (a table
                        // evicted from the reserve: its walk must be invalidated too).
                        let lo = touched
                            .iter()
                            .map(|t| t.iova)
                            .chain(gone.iter().map(|g| g.0))
                            .min()
                            .unwrap_or(iova)
                            .min(iova);
                        let hi = touched
                            .iter()
                            .map(|t| last_of(t.iova, t.span))
                            .chain(gone.iter().map(|g| g.1))
                            .max()
                            .unwrap_or(last)
                            .max(last);
                        assert!(
                            s >= lo && l <= hi,
                            "{ctx}: gather span {s:#x}..={l:#x} beyond the request and the \
                             leaves it touched ({lo:#x}..={hi:#x})"
                        );
                        let min = touched.iter().map(|t| t.size).min().unwrap_or(0);
                        let max = touched.iter().map(|t| t.size).max().unwrap_or(0);
                        assert!(
                            touched.is_empty() || (g.min_leaf() <= min && g.max_leaf() >= max),
                            "{ctx}: gather leaf sizes {:#x}..{:#x} do not cover removed leaves \
                             {min:#x}..{max:#x}",
                            g.min_leaf(),
                            g.max_leaf()
                        );
                    }
                }
                if !needs_split {
                    assert!(
                        c1.leaf_writes - c0.leaf_writes <= touched.len() as u64,
                        "{ctx}: {} leaf writes to remove {} leaves",
                        c1.leaf_writes - c0.leaf_writes,
                        touched.len()
                    );
                }
                self.after_success(&pre, &g, &ctx);
                self.release(&mut g);
                self.check(&[iova, last]);
            }
            Err(e) => {
                if e == PtError::SplitForbidden {
                    assert!(
                        !self.pt().config().split_live_blocks && needs_split,
                        "{ctx}: SplitForbidden without a block to split (or splits allowed)"
                    );
                }
                self.release(&mut g);
                let after = self.state();
                assert!(
                    after.same_up_to_free_order(&before),
                    "{ctx}: failed with {e:?} but changed memory or the allocator"
                );
                self.check(&[iova, last]);
            }
        }
        r
    }

    /// Full consistency check of walker, engine and model (see the module docs).
    pub fn check(&self, extra: &[u64]) {
        let audit = self.audit();
        let got = audit.runs();
        let want = self.model.runs();
        if got != want {
            let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            panic!(
                "{}: walker and model disagree at run {i}: walker {:x?}, model {:x?}",
                self.label,
                got.get(i),
                want.get(i)
            );
        }
        assert_eq!(
            audit.dead_leaves, 0,
            "{}: leaves without any right",
            self.label
        );
        for l in &audit.leaves {
            assert!(
                self.allowed & l.size != 0,
                "{}: leaf of {:#x} bytes at {:#x} not allowed (allowed {:#x})",
                self.label,
                l.size,
                l.iova,
                self.allowed
            );
        }
        let free: BTreeSet<u64> = self.alloc.free_list().iter().copied().collect();
        for &(t, _) in &audit.tables {
            assert!(
                (POOL_BASE..POOL_BASE + POOL_FRAMES * K4).contains(&t) && !free.contains(&t),
                "{}: table frame {t:#x} is not an allocated frame",
                self.label
            );
        }
        assert_eq!(
            frames_of(&audit),
            self.alloc.in_use,
            "{}: frames in use != reachable tables + their shadows (leak or early free)",
            self.label
        );
        self.check_counts(&audit, &free);
        let top = self.last_iova();
        let mut pts: BTreeSet<u64> = extra.iter().map(|a| a & !(K4 - 1)).collect();
        for (s, l) in self.model.ranges().into_iter().take(64) {
            let e = last_of(s, l) & !(K4 - 1);
            pts.insert(s);
            pts.insert(e);
            if s >= K4 {
                pts.insert(s - K4);
            }
            if e < (top & !(K4 - 1)) {
                pts.insert(e + K4);
            }
        }
        for p in pts {
            if p <= top {
                self.check_point(p);
            }
        }
    }

    /// The engine's bookkeeping against the walker's view: it reports exactly the reachable
    /// tables, each live count equals this suite's own scan of the table (non-zero entries),
    /// every shadow is a distinct allocated frame, and every empty table below the root is in
    /// the reserve, which holds at most `RESERVE` of them.
    fn check_counts(&self, audit: &Audit, free: &BTreeSet<u64>) {
        let m = self.mem.borrow();
        let mut seen = BTreeSet::new();
        let mut shadows = BTreeSet::new();
        let mut empty = 0usize;
        let top = self.levels - 1;
        self.pt().visit_tables(&self.mem, |t| {
            seen.insert(t.table);
            let level = u32::from(t.level);
            let entries = if level == top {
                1u64 << (self.width - (12 + 9 * top))
            } else {
                512
            };
            let live = (0..entries)
                .filter(|i| m.read(t.table + i * 8) != 0)
                .count() as u64;
            if let Some(count) = t.live_count {
                assert_eq!(
                    count, live,
                    "{}: live count of the level-{level} table {:#x} is {count}, a scan finds \
                     {live}",
                    self.label, t.table
                );
                if count == 0 {
                    empty += 1;
                    assert!(
                        t.reserved,
                        "{}: empty table {:#x} outside the reserve",
                        self.label, t.table
                    );
                }
            }
            assert_eq!(t.shadow.is_some(), level > 0, "{}: shadow", self.label);
            if let Some(sh) = t.shadow {
                assert!(
                    (POOL_BASE..POOL_BASE + POOL_FRAMES * K4).contains(&sh)
                        && !free.contains(&sh)
                        && shadows.insert(sh),
                    "{}: shadow {sh:#x} is not a distinct allocated frame",
                    self.label
                );
            }
        });
        let reachable: BTreeSet<u64> = audit.tables.iter().map(|t| t.0).collect();
        assert_eq!(seen, reachable, "{}: tables the engine reports", self.label);
        assert!(
            shadows.is_disjoint(&reachable),
            "{}: a shadow is also a table",
            self.label
        );
        assert!(
            empty <= RESERVE && audit.empty_tables as usize == empty,
            "{}: {empty} empty tables kept ({} by the walker), at most {RESERVE}",
            self.label,
            audit.empty_tables
        );
    }

    /// Gives the reserve back: reclaim, invalidate (nothing to do here), release.
    pub fn reclaim(&mut self) {
        let mut g = Gather::new();
        let mut m = self.mem.clone();
        let pt = self.pt.as_mut().expect("table destroyed");
        pt.reclaim(&mut m, &mut self.alloc, &mut g);
        self.release(&mut g);
        self.check(&[]);
        assert_eq!(
            self.audit().empty_tables,
            0,
            "{}: reclaim left empty tables",
            self.label
        );
    }

    /// Walker, engine `query()` and model agree on `page` (and on an offset inside it).
    pub fn check_point(&self, page: u64) {
        let root = self.pt().root();
        let want = self.model.lookup(page);
        let walk = translate::<W>(&self.mem.borrow(), root, self.width, page)
            .unwrap_or_else(|e| panic!("{}: {e}", self.label));
        let got = walk.map(|w| {
            (
                w.phys,
                Perms {
                    read: w.read,
                    write: w.write,
                },
            )
        });
        assert_eq!(got, want, "{}: walker vs model at {page:#x}", self.label);
        let q = self.pt().query(&self.mem, page + 0x238);
        let qg = q.map(|t| (t.phys - 0x238, t.perms));
        assert_eq!(
            qg,
            want,
            "{}: query() vs model at {:#x}",
            self.label,
            page + 0x238
        );
        if let (Some(t), Some(w)) = (q, walk) {
            assert_eq!(
                t.leaf_size, w.leaf_size,
                "{}: query() leaf size vs walker at {page:#x}",
                self.label
            );
        }
    }

    /// Unmaps everything a device can reach, releases, and checks only the root is left.
    pub fn unmap_everything(&mut self) {
        let top = self.last_iova();
        if top == u64::MAX {
            self.unmap(0, 1 << 63).expect("unmap lower half");
            self.unmap(1 << 63, 1 << 63).expect("unmap upper half");
        } else {
            self.unmap(0, top + 1).expect("unmap everything");
        }
        assert!(self.model.is_empty());
        let audit = self.audit();
        assert_eq!(audit.empty_tables, 0, "{}: empty tables left", self.label);
        assert_eq!(
            self.alloc.in_use, 2,
            "{}: only the root and its shadow may stay in use",
            self.label
        );
    }

    /// Destroys the table; every frame goes back.
    pub fn destroy(&mut self) {
        let pt = self.pt.take().expect("table destroyed");
        let mut m = self.mem.clone();
        pt.destroy(&mut m, &mut self.alloc);
        assert_eq!(
            self.alloc.in_use, 0,
            "{}: destroy() leaked frames",
            self.label
        );
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------

/// Frames a reachable set of tables holds: each table, and a shadow for each above level 0.
fn frames_of(audit: &Audit) -> u64 {
    audit.tables.len() as u64 + audit.tables.iter().filter(|t| t.1 > 0).count() as u64
}

/// One random operation, before being placed in a concrete address space.
#[derive(Clone, Debug)]
pub struct OpSeed {
    map: bool,
    top: bool,
    unit: u8,
    k: u64,
    delta: u8,
    len_kind: u8,
    lk: u64,
    congruent: bool,
    phys_k: u64,
    perms: u8,
}

fn op_seed() -> impl Strategy<Value = OpSeed> {
    (
        (
            prop::bool::weighted(0.6),
            prop::bool::weighted(0.3),
            0u8..3,
            0u64..4,
            0u8..4,
        ),
        (0u8..7, 1u64..5, prop::bool::weighted(0.8), 0u64..8, 0u8..3),
    )
        .prop_map(
            |((map, top, unit, k, delta), (len_kind, lk, congruent, phys_k, perms))| OpSeed {
                map,
                top,
                unit,
                k,
                delta,
                len_kind,
                lk,
                congruent,
                phys_k,
                perms,
            },
        )
}

/// A concrete operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `map(iova, phys, len, perms)`.
    Map(u64, u64, u64, Perms),
    /// `unmap(iova, len)`.
    Unmap(u64, u64),
}

/// Places a seed in an address space whose last reachable IOVA is `top`: ranges live in a
/// 4 GiB arena at the bottom or at the very top of the space.
pub fn place(seed: &OpSeed, top: u64, write_only: bool) -> Op {
    const ARENA: u64 = 4 * G1;
    let base = if seed.top { top - (ARENA - 1) } else { 0 };
    let unit = [K4, M2, G1][seed.unit as usize];
    let mut off = (seed.k * unit) % ARENA;
    off = match seed.delta {
        1 => off + K4,
        2 if off >= K4 => off - K4,
        3 => off + M2,
        _ => off,
    } % ARENA;
    let mut len = match seed.len_kind {
        0 => seed.lk * K4,
        1 => seed.lk * M2,
        2 => seed.lk * M2 + K4,
        3 => G1,
        4 => G1 + M2 + K4,
        5 => 16 * K4,
        _ => seed.lk * G1,
    };
    if off + len > ARENA {
        len = ARENA - off;
    }
    let iova = base + off;
    if !seed.map {
        return Op::Unmap(iova, len);
    }
    let phys = if seed.congruent || len > 16 * M2 {
        PHYS_BASE + seed.phys_k * G1 + (iova % G1)
    } else {
        PHYS_BASE + seed.phys_k * G1 + ((seed.k * 37 + seed.lk * 11) % 512) * K4
    };
    let perms = match seed.perms {
        0 => Perms::R,
        2 if write_only => Perms::W,
        _ => Perms::RW,
    };
    Op::Map(iova, phys, len, perms)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..PtConfig::default()
    })
}

/// Applies `op` through the rig, asserting the expected outcome for well-formed input.
pub fn apply<F: Format, W: RefWalker>(rig: &mut Rig<F, W>, op: Op) {
    match op {
        Op::Map(iova, phys, len, perms) => {
            let overlap = rig.model.overlaps(iova, last_of(iova, len));
            let r = rig.map(iova, phys, len, perms);
            let want = if overlap {
                Err(PtError::Overlap)
            } else {
                Ok(())
            };
            assert_eq!(r, want, "{}: {op:x?}", rig.label);
        }
        Op::Unmap(iova, len) => {
            let r = rig.unmap(iova, len);
            assert!(r.is_ok(), "{}: {op:x?} -> {r:?}", rig.label);
        }
    }
}

/// Random sequences of maps and unmaps (all leaf sizes, splits, holes, the top of the space),
/// then an unmap of everything; `cases` sequences.
pub fn random_ops<F: Format, W: RefWalker>(width: u32, cases: u32) {
    let mut runner = runner(cases);
    let strategy = prop::collection::vec(op_seed(), 1..10);
    runner
        .run(&strategy, |seeds| {
            let mut rig = Rig::<F, W>::new(standard_config(width));
            rig.watch = true;
            let top = rig.last_iova();
            for s in &seeds {
                apply(&mut rig, place(s, top, W::WRITE_ONLY));
            }
            rig.unmap_everything();
            rig.destroy();
            Ok(())
        })
        .unwrap();
}

/// Deterministic coverage of every split kind and the top of the space.
pub fn splits_and_holes<F: Format, W: RefWalker>(width: u32) {
    let mut rig = Rig::<F, W>::new(standard_config(width));
    let g = 4 * G1;
    // A 1 GiB leaf, a run of 2 MiB leaves, unaligned 4 KiB edges.
    rig.map(g, PHYS_BASE, G1, Perms::RW).unwrap();
    rig.map(
        g + G1 + M2 - 2 * K4,
        PHYS_BASE + G1 + M2 - 2 * K4,
        4 * M2 + 4 * K4,
        Perms::R,
    )
    .unwrap();
    // 4K out of a 1G leaf (two splits), then out of a 2M leaf.
    assert_eq!(rig.unmap(g + 5 * M2 + 7 * K4, K4), Ok(K4));
    assert_eq!(rig.unmap(g + G1 + 2 * M2 + 3 * K4, K4), Ok(K4));
    // A range crossing leaf boundaries, partly over holes.
    assert_eq!(rig.unmap(g + 5 * M2, 3 * M2), Ok(3 * M2 - K4));
    assert_eq!(
        rig.unmap(g + G1 - M2 - K4, 2 * M2 + 2 * K4).map(|b| b > 0),
        Ok(true)
    );
    // Remap into the holes with different permissions.
    rig.map(g + 5 * M2, PHYS_BASE + 99 * G1, M2, Perms::R)
        .unwrap();
    // The last page and the last 2 MiB of the reachable space.
    let top = rig.last_iova();
    rig.map(top - (K4 - 1), PHYS_BASE, K4, Perms::RW).unwrap();
    rig.map(top - (M2 - 1) - M2, PHYS_BASE + M2, M2, Perms::R)
        .unwrap();
    assert_eq!(rig.unmap(top - (4 * M2 - 1), 4 * M2), Ok(M2 + K4));
    // 1 GiB at the top, split at its last page.
    rig.map(top - (G1 - 1), PHYS_BASE + 3 * G1, G1, Perms::RW)
        .unwrap();
    assert_eq!(rig.unmap(top - (K4 - 1), K4), Ok(K4));
    rig.unmap_everything();
    rig.destroy();
}

/// The fewest-entries property on random ranges, for the standard sizes and subsets.
pub fn fewest_entries<F: Format, W: RefWalker>(width: u32, cases: u32) {
    let levels = W::levels(width).unwrap();
    let format_all = (0..levels)
        .filter(|&l| F::leaf_allowed(l as u8))
        .map(level_span)
        .fold(0, |a, b| a | b);
    let subsets = [
        LeafSizes::STANDARD,
        LeafSizes::SZ_4K.union(LeafSizes::SZ_2M),
        LeafSizes::SZ_4K,
        LeafSizes(format_all),
    ];
    for sizes in subsets {
        let mut runner = runner(cases);
        let strat = (0u64..2048, 0u64..4, 0u64..2048, 1u64..1536, prop::bool::ANY);
        runner
            .run(&strat, |(ipage, ig, ppage, lpages, congruent)| {
                let mut cfg = standard_config(width);
                cfg.leaf_sizes = sizes;
                let mut rig = Rig::<F, W>::new(cfg);
                rig.watch = false;
                let iova = ig * G1 + ipage * K4 + if ipage % 3 == 0 { M2 } else { 0 };
                let phys = if congruent {
                    PHYS_BASE + (iova % G1)
                } else {
                    PHYS_BASE + ppage * K4
                };
                let mut len = if congruent {
                    lpages * M2 / 4
                } else {
                    lpages * K4
                };
                if !sizes.contains(M2) {
                    // 4 KiB pages only: keep it to a few thousand entries.
                    len = len.min(8 * M2);
                }
                let c0 = rig.pt().counters();
                rig.map(iova, phys, len, Perms::RW).unwrap();
                let audit = rig.audit();
                let want = min_leaves(iova, phys, len, rig.allowed);
                assert_eq!(audit.leaves.len() as u64, want, "leaf count");
                assert_eq!(rig.pt().counters().leaf_writes - c0.leaf_writes, want);
                for l in &audit.leaves {
                    assert!(
                        sizes.contains(l.size),
                        "leaf size {:#x} not in {sizes:?}",
                        l.size
                    );
                }
                rig.unmap_everything();
                Ok(())
            })
            .unwrap();
    }
    // 1 GiB-aligned 1 GiB with 1 GiB-aligned phys: one entry.
    let mut rig = Rig::<F, W>::new(standard_config(width));
    if rig.allowed & G1 != 0 {
        let c0 = rig.pt().counters();
        rig.map(3 * G1, PHYS_BASE + 5 * G1, G1, Perms::RW).unwrap();
        assert_eq!(rig.pt().counters().leaf_writes - c0.leaf_writes, 1);
    }
}

/// Builds a fresh rig and replays `setup`.
fn fresh<F: Format, W: RefWalker>(config: TableConfig, setup: &[Op]) -> Rig<F, W> {
    let mut rig = Rig::<F, W>::new(config);
    rig.watch = false;
    for &op in setup {
        apply(&mut rig, op);
    }
    rig
}

/// Runs `op` once to count its allocations K, then for every N < K fails the Nth allocation
/// on a fresh copy of the setup and checks NoFrame with everything exactly as before.
pub fn fault_injection<F: Format, W: RefWalker>(config: TableConfig, setup: &[Op], op: Op) {
    let mut rig = fresh::<F, W>(config, setup);
    let a0 = rig.alloc.attempts;
    apply(&mut rig, op);
    let k = rig.alloc.attempts - a0;
    assert!(
        k > 0,
        "{}: {op:x?} allocated nothing; the scenario is wrong",
        rig.label
    );
    for n in 0..k {
        let mut rig = fresh::<F, W>(config, setup);
        rig.watch = true;
        let before = rig.state();
        let model = rig.model.clone();
        rig.alloc.fail_in(n);
        let r = match op {
            Op::Map(i, p, l, pr) => rig.map(i, p, l, pr).map(|_| 0),
            Op::Unmap(i, l) => rig.unmap(i, l),
        };
        assert_eq!(
            r,
            Err(PtError::NoFrame),
            "{}: {op:x?} with allocation {n} of {k} failing",
            rig.label
        );
        let after = rig.state();
        assert!(
            after.same_up_to_free_order(&before),
            "{}: {op:x?} failing at allocation {n}/{k}: memory, in-use count or free frames changed",
            rig.label
        );
        assert_eq!(
            after.free, before.free,
            "{}: {op:x?} failing at allocation {n}/{k}: free list order not restored (LIFO)",
            rig.label
        );
        assert_eq!(rig.model, model);
        rig.alloc.no_failures();
        // The table is still usable: the same operation now succeeds.
        apply(&mut rig, op);
    }
}

/// Fault-injection scenarios: a map needing a new path on both sides of a root-entry
/// boundary, a 1G->2M->4K split, a double split on both edges of one unmap.
pub fn fault_injection_all<F: Format, W: RefWalker>(width: u32) {
    let cfg = standard_config(width);
    let levels = W::levels(width).unwrap();
    let b = level_span(levels - 1); // second root entry
    let top = W::last_iova(width);
    // Map across a root-entry boundary (only if the boundary is reachable).
    if b <= top - 2 * M2 {
        let setup = [Op::Map(b - M2, PHYS_BASE + 3 * K4, K4, Perms::R)];
        fault_injection::<F, W>(
            cfg,
            &setup,
            Op::Map(b - 2 * K4, PHYS_BASE + K4, 4 * K4 + M2, Perms::RW),
        );
    }
    // Fresh tables all the way down.
    fault_injection::<F, W>(
        cfg,
        &[],
        Op::Map(G1 + M2 + K4, PHYS_BASE + K4, 3 * K4, Perms::RW),
    );
    // 1G leaf split down to 4K.
    let setup = [Op::Map(2 * G1, PHYS_BASE + G1, G1, Perms::RW)];
    fault_injection::<F, W>(cfg, &setup, Op::Unmap(2 * G1 + 7 * M2 + 5 * K4, K4));
    // Two 1G leaves, unmap straddling their boundary: splits on both edges.
    let setup = [Op::Map(2 * G1, PHYS_BASE, 2 * G1, Perms::R)];
    fault_injection::<F, W>(cfg, &setup, Op::Unmap(3 * G1 - K4, 2 * K4));
    // A 2M leaf split while mapping nothing else.
    let setup = [Op::Map(8 * G1 + M2, PHYS_BASE + M2, M2, Perms::RW)];
    fault_injection::<F, W>(cfg, &setup, Op::Unmap(8 * G1 + M2 + 9 * K4, 2 * K4));
    // new() itself.
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem, POOL_BASE, 4);
    alloc.fail_in(0);
    assert_eq!(
        PageTable::<F>::new(cfg, &mut alloc).err(),
        Some(PtError::NoFrame)
    );
    assert_eq!(alloc.in_use, 0);
}

/// Every kind of bad input gets its specific error and changes nothing.
pub fn bad_input<F: Format, W: RefWalker>(width: u32) {
    let mut rig = Rig::<F, W>::new(standard_config(width));
    rig.map(2 * G1, PHYS_BASE, M2 + 3 * K4, Perms::RW).unwrap();
    rig.map(4 * G1, PHYS_BASE + G1, G1, Perms::R).unwrap();
    let top = rig.last_iova();
    let expect_map = |rig: &mut Rig<F, W>, i: u64, p: u64, l: u64, pr: Perms, e: PtError| {
        let before = rig.state();
        let r = rig.map(i, p, l, pr);
        assert_eq!(
            r,
            Err(e),
            "{}: map({i:#x}, {p:#x}, {l:#x}, {pr:?})",
            rig.label
        );
        assert_eq!(rig.state(), before, "{}: bad map changed state", rig.label);
    };
    let rw = Perms::RW;
    expect_map(&mut rig, G1 + 0x800, PHYS_BASE, K4, rw, PtError::Misaligned);
    expect_map(&mut rig, G1, PHYS_BASE + 8, K4, rw, PtError::Misaligned);
    expect_map(&mut rig, G1, PHYS_BASE, K4 + 512, rw, PtError::Misaligned);
    expect_map(&mut rig, G1, PHYS_BASE, 0, rw, PtError::ZeroLength);
    expect_map(
        &mut rig,
        !(K4 - 1),
        PHYS_BASE,
        2 * K4,
        rw,
        PtError::OutOfRange,
    );
    expect_map(&mut rig, G1, !(K4 - 1), 2 * K4, rw, PtError::PhysOutOfRange);
    expect_map(&mut rig, G1, 1 << 60, K4, rw, PtError::PhysOutOfRange);
    let none = Perms {
        read: false,
        write: false,
    };
    expect_map(&mut rig, G1, PHYS_BASE, K4, none, PtError::PermsUnsupported);
    if !W::WRITE_ONLY {
        expect_map(
            &mut rig,
            G1,
            PHYS_BASE,
            K4,
            Perms::W,
            PtError::PermsUnsupported,
        );
    }
    // Overlap: the first pages are free, a later one is taken: nothing may be written.
    expect_map(
        &mut rig,
        2 * G1 - M2,
        PHYS_BASE,
        M2 + K4,
        rw,
        PtError::Overlap,
    );
    expect_map(
        &mut rig,
        4 * G1 + G1 - K4,
        PHYS_BASE,
        2 * K4,
        rw,
        PtError::Overlap,
    );
    let expect_unmap = |rig: &mut Rig<F, W>, i: u64, l: u64, e: PtError| {
        let before = rig.state();
        let r = rig.unmap(i, l);
        assert_eq!(r, Err(e), "{}: unmap({i:#x}, {l:#x})", rig.label);
        assert_eq!(
            rig.state(),
            before,
            "{}: bad unmap changed state",
            rig.label
        );
    };
    expect_unmap(&mut rig, 2 * G1 + 0x10, K4, PtError::Misaligned);
    expect_unmap(&mut rig, 2 * G1, K4 - 1, PtError::Misaligned);
    expect_unmap(&mut rig, 2 * G1, 0, PtError::ZeroLength);
    expect_unmap(&mut rig, !(K4 - 1), 2 * K4, PtError::OutOfRange);
    let _ = top;
    // Bad configurations.
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem, POOL_BASE, 4);
    let mut cfg = standard_config(width);
    cfg.addr_width = 40;
    assert_eq!(
        PageTable::<F>::new(cfg, &mut alloc).err(),
        Some(PtError::BadConfig)
    );
    let mut cfg = standard_config(width);
    cfg.leaf_sizes = LeafSizes::SZ_2M;
    assert_eq!(
        PageTable::<F>::new(cfg, &mut alloc).err(),
        Some(PtError::BadConfig)
    );
    assert_eq!(alloc.in_use, 0);
    assert_eq!(alloc.attempts, 0, "a bad configuration must not allocate");
}

/// Ranges beyond what a device can reach get OutOfRange and change nothing; the last page is
/// mappable.
pub fn beyond_width<F: Format, W: RefWalker>(width: u32) {
    let mut rig = Rig::<F, W>::new(standard_config(width));
    let top = rig.last_iova();
    rig.map(top - (K4 - 1), PHYS_BASE, K4, Perms::R).unwrap();
    if top < u64::MAX {
        let before = rig.state();
        let cases = [
            (top + 1, K4),
            (top - (K4 - 1), 2 * K4),
            (top + 1 - M2, 2 * M2),
        ];
        for (i, l) in cases {
            let r = rig.map(i, PHYS_BASE + M2, l, Perms::RW);
            assert_eq!(
                r,
                Err(PtError::OutOfRange),
                "{}: map({i:#x}, {l:#x})",
                rig.label
            );
            let r = rig.unmap(i, l);
            assert_eq!(
                r,
                Err(PtError::OutOfRange),
                "{}: unmap({i:#x}, {l:#x})",
                rig.label
            );
            assert_eq!(rig.state(), before);
        }
    }
    rig.unmap_everything();
}

/// With `split_live_blocks = false`, a partial unmap of a block is refused and changes
/// nothing; whole blocks and pages in tables still unmap.
pub fn split_forbidden<F: Format, W: RefWalker>(width: u32) {
    let mut cfg = standard_config(width);
    cfg.split_live_blocks = false;
    let mut rig = Rig::<F, W>::new(cfg);
    let g = 2 * G1;
    rig.map(g, PHYS_BASE, G1, Perms::RW).unwrap();
    rig.map(g + G1, PHYS_BASE + G1, 2 * M2, Perms::R).unwrap();
    rig.map(g + 2 * G1, PHYS_BASE + 5 * K4, 4 * K4, Perms::R)
        .unwrap();
    let before = rig.state();
    for (i, l) in [
        (g + K4, K4),
        (g + G1 - K4, 2 * K4),
        (g + G1, M2 + K4),
        (g, G1 + K4),
    ] {
        assert_eq!(
            rig.unmap(i, l),
            Err(PtError::SplitForbidden),
            "{}: unmap({i:#x}, {l:#x})",
            rig.label
        );
        assert_eq!(rig.state(), before);
    }
    assert_eq!(rig.unmap(g + 2 * G1 + K4, K4), Ok(K4));
    assert_eq!(rig.unmap(g + G1, M2), Ok(M2));
    assert_eq!(rig.unmap(g, G1), Ok(G1));
    assert_eq!(rig.unmap(g + G1 - M2, 2 * M2 + M2), Ok(M2));
    rig.unmap_everything();
}

/// One unmap over many tables yields one gather with the exact span, the smallest leaf and
/// tables_removed; nothing to invalidate after an unmap of nothing.
pub fn gather_semantics<F: Format, W: RefWalker>(width: u32) {
    let mut rig = Rig::<F, W>::new(standard_config(width));
    let iova = 3 * G1 - 2 * M2 - 2 * K4;
    let len = 4 * M2 + 4 * K4;
    rig.map(iova, PHYS_BASE + (iova % G1), len, Perms::RW)
        .unwrap();
    let pre = rig.audit();
    let mut g = Gather::new();
    let mut m = rig.mem.clone();
    let pt = rig.pt.as_mut().unwrap();
    let r = pt.unmap(&mut m, &mut rig.alloc, Unmap { iova, len }, &mut g);
    assert_eq!(r, Ok(len));
    assert_eq!(
        g.span(),
        Some((iova, iova + len - 1)),
        "{}: span",
        rig.label
    );
    assert_eq!(g.min_leaf(), K4, "{}: min_leaf", rig.label);
    assert_eq!(g.max_leaf(), M2, "{}: max_leaf", rig.label);
    // The range covers no table whole: the tables it emptied at its two ends stay linked, in
    // the reserve; nothing is removed, nothing waits.
    assert!(!g.tables_removed(), "{}: tables_removed", rig.label);
    assert_eq!(g.frames_pending(), 0, "{}: frames pending", rig.label);
    rig.release(&mut g);
    rig.model.remove(iova, iova + len - 1);
    rig.check(&[]);
    assert_eq!(
        rig.audit().empty_tables,
        2,
        "{}: the two edge tables",
        rig.label
    );
    // Reclaim unlinks them and every parent they leave empty: all but the root, deferred.
    let mut g = Gather::new();
    let pt = rig.pt.as_mut().unwrap();
    assert_eq!(pt.reclaim(&mut m, &mut rig.alloc, &mut g), 2);
    assert!(g.tables_removed(), "{}: tables_removed", rig.label);
    let removed = pre.tables.len() as u64 - 1;
    assert_eq!(
        g.frames_pending(),
        removed,
        "{}: every emptied table deferred",
        rig.label
    );
    assert_eq!(
        rig.alloc.in_use,
        2 + removed,
        "{}: freed before invalidation (shadows go at once)",
        rig.label
    );
    rig.release(&mut g);
    rig.check(&[]);
    assert_eq!(rig.alloc.in_use, 2);
    // Nothing mapped: nothing to invalidate.
    let mut g = Gather::new();
    let pt = rig.pt.as_mut().unwrap();
    let req = Unmap { iova: G1, len: G1 };
    assert_eq!(pt.unmap(&mut m, &mut rig.alloc, req, &mut g), Ok(0));
    assert!(g.is_empty(), "{}: empty unmap produced a gather", rig.label);
    // A split: the span covers the page, max_leaf covers the 1G leaf.
    if rig.allowed & G1 != 0 {
        rig.map(5 * G1, PHYS_BASE, G1, Perms::R).unwrap();
        let mut g = Gather::new();
        let pt = rig.pt.as_mut().unwrap();
        assert_eq!(
            pt.unmap(
                &mut m,
                &mut rig.alloc,
                Unmap {
                    iova: 5 * G1 + 9 * M2,
                    len: K4
                },
                &mut g
            ),
            Ok(K4)
        );
        let (s, l) = g.span().unwrap();
        assert!(s <= 5 * G1 + 9 * M2 && l >= 5 * G1 + 9 * M2 + K4 - 1);
        assert!(
            g.max_leaf() >= G1,
            "{}: max_leaf {:#x} after splitting a 1G leaf",
            rig.label,
            g.max_leaf()
        );
        rig.release(&mut g);
        rig.model.remove(5 * G1 + 9 * M2, 5 * G1 + 9 * M2 + K4 - 1);
        rig.check(&[]);
    }
    rig.unmap_everything();
}

/// The table lifetime policy: a page mapped and unmapped again and again in the same place
/// allocates nothing after the first time; sparse pages mapped and unmapped forever hold at
/// most `RESERVE` empty tables (and their parents) beyond the live ones; reclaim gives them
/// all back.
pub fn table_lifetime<F: Format, W: RefWalker>(width: u32) {
    let mut rig = Rig::<F, W>::new(standard_config(width));
    rig.watch = false;
    let levels = u64::from(rig.levels);
    // Same place, over and over: the path is allocated once.
    let iova = 5 * G1 + 7 * M2 + 3 * K4;
    rig.map(iova, PHYS_BASE, K4, Perms::RW).unwrap();
    assert_eq!(rig.unmap(iova, K4), Ok(K4));
    let allocated = rig.pt().counters().frames_allocated;
    for _ in 0..20 {
        rig.map(iova, PHYS_BASE, K4, Perms::RW).unwrap();
        assert_eq!(rig.unmap(iova, K4), Ok(K4));
    }
    assert_eq!(
        rig.pt().counters().frames_allocated,
        allocated,
        "{}: a small range mapped again reused its tables",
        rig.label
    );
    // Sparse: a page in each of many 1 GiB regions (different tables every time).
    let bound = 2 + RESERVE as u64 * (2 * (levels - 1) - 1);
    for i in 0..(3 * RESERVE as u64) {
        let at = (i * 3 + 1) * G1 + (i % 5) * M2;
        rig.map(at, PHYS_BASE + i * K4, K4, Perms::R).unwrap();
        assert_eq!(rig.unmap(at, K4), Ok(K4));
        assert!(
            rig.alloc.in_use <= bound,
            "{}: {} frames held with nothing mapped (bound {bound})",
            rig.label,
            rig.alloc.in_use
        );
    }
    rig.reclaim();
    assert_eq!(
        rig.alloc.in_use, 2,
        "{}: reclaim gives everything back",
        rig.label
    );
    // A table the unmap covers whole goes at once (no reserve): 2 MiB of 4 KiB pages.
    rig.map(G1 + M2 + K4, PHYS_BASE + K4, M2 - K4, Perms::RW)
        .unwrap();
    rig.map(G1 + 4 * M2, PHYS_BASE, K4, Perms::RW).unwrap();
    assert_eq!(rig.unmap(G1 + M2, M2), Ok(M2 - K4));
    assert_eq!(rig.audit().empty_tables, 0, "{}", rig.label);
    rig.unmap_everything();
    // A reserved (empty) table the next map covers whole gives way to one larger leaf, also
    // when the path the engine remembers starts at that table: here the unmap of a page
    // inside it leaves the 2 MiB-page table of the first 1 GiB on the path, and the 1 GiB
    // map (the rig checks the minimal decomposition: one leaf) covers exactly that table.
    // Found by the random sequences (AMD-Vi, 39 bits, PROPTEST_RNG_SEED=160).
    rig.map(0, PHYS_BASE, 16 * K4, Perms::RW).unwrap();
    assert_eq!(rig.unmap(0, M2), Ok(16 * K4));
    assert_eq!(rig.unmap(0, K4), Ok(0));
    rig.map(0, PHYS_BASE, G1, Perms::R).unwrap();
    // The same one level down: a 2 MiB map over a reserved 4 KiB-page table on the path.
    rig.map(3 * G1, PHYS_BASE, 16 * K4, Perms::RW).unwrap();
    rig.map(3 * G1 + 4 * M2, PHYS_BASE, K4, Perms::RW).unwrap();
    assert_eq!(rig.unmap(3 * G1, 16 * K4), Ok(16 * K4));
    assert_eq!(rig.unmap(3 * G1 + K4, K4), Ok(0));
    rig.map(3 * G1, PHYS_BASE, M2, Perms::R).unwrap();
    rig.unmap_everything();
    rig.destroy();
}

/// After unmapping everything and releasing, only the root is in use; destroy frees it;
/// destroy of a populated table frees everything.
pub fn no_leaks<F: Format, W: RefWalker>(width: u32) {
    let mut rig = Rig::<F, W>::new(standard_config(width));
    rig.map(G1 - 3 * K4, PHYS_BASE, 2 * M2 + 6 * K4, Perms::RW)
        .unwrap();
    rig.map(7 * G1, PHYS_BASE + G1, G1, Perms::R).unwrap();
    rig.unmap(7 * G1 + K4, K4).unwrap();
    rig.unmap_everything();
    rig.destroy();
    let mut rig = Rig::<F, W>::new(standard_config(width));
    rig.map(G1 - 3 * K4, PHYS_BASE, 2 * M2 + 6 * K4, Perms::RW)
        .unwrap();
    let top = rig.last_iova();
    rig.map(top - (K4 - 1), PHYS_BASE, K4, Perms::RW).unwrap();
    rig.destroy();
}

/// With a non-coherent walker every table write is made visible (synced) by the time the
/// call returns: the device's view of the reachable tables equals the CPU's.
pub fn noncoherent_sync<F: Format, W: RefWalker>(width: u32) {
    let mut cfg = standard_config(width);
    cfg.coherent = false;
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, POOL_FRAMES);
    let mut pt = PageTable::<F>::new(cfg, &mut alloc).unwrap();
    let mut dev = DeviceView {
        cpu: mem.clone(),
        device: crate::sim::SimMemory::new(),
    };
    // A fresh root reads as zero on both sides.
    let ops = [
        Op::Map(G1 - 2 * K4, PHYS_BASE, M2 + 4 * K4, Perms::RW),
        Op::Map(3 * G1, PHYS_BASE, G1, Perms::R),
        Op::Unmap(3 * G1 + M2 + K4, K4),
        Op::Unmap(G1 - 2 * K4, K4),
        Op::Unmap(0, 8 * G1),
        // Frames freed above are reused: their previous contents may still be all the device
        // sees unless the engine syncs each new table completely.
        Op::Map(G1 - 2 * K4, PHYS_BASE + K4, M2 + 4 * K4, Perms::R),
        Op::Unmap(0, 8 * G1),
    ];
    for op in ops {
        let mut g = Gather::new();
        match op {
            Op::Map(iova, phys, len, perms) => {
                let req = Map {
                    iova,
                    phys,
                    len,
                    perms,
                };
                pt.map(&mut dev, &mut alloc, req, &mut g).unwrap()
            }
            Op::Unmap(iova, len) => {
                pt.unmap(&mut dev, &mut alloc, Unmap { iova, len }, &mut g)
                    .unwrap();
            }
        }
        let cpu = enumerate::<W>(&mem.borrow(), pt.root(), width).unwrap();
        let seen = enumerate::<W>(&dev.device, pt.root(), width)
            .unwrap_or_else(|e| panic!("{}: device view malformed after {op:x?}: {e}", F::NAME));
        assert_eq!(
            seen.runs(),
            cpu.runs(),
            "{}/{width}: after {op:x?} the non-coherent walker sees stale tables",
            F::NAME
        );
        g.release(&mut dev, &mut alloc);
    }
}

/// What the walker may see at each watched page during one operation of [`reordering`].
type Watch = std::rc::Rc<std::cell::RefCell<Vec<(u64, Allowed)>>>;

/// Watched pages for an operation on `[iova, last]` against the model `m`: the request's ends
/// and their 2 MiB / 1 GiB surroundings, the pages just outside, and the ends of a few
/// mapped ranges. Pages inside the request may show the old or the new translation
/// (`new` = the map's output and rights, `None` for an unmap); pages outside only the old.
fn reorder_watch(
    m: &Model,
    top: u64,
    iova: u64,
    last: u64,
    new: Option<(u64, Perms)>,
) -> Vec<(u64, Allowed)> {
    let page = |a: u64| a & !(K4 - 1);
    let mut pts = BTreeSet::new();
    for a in [iova, last] {
        for size in [M2, G1] {
            let lo = a & !(size - 1);
            pts.insert(lo);
            pts.insert(page(lo.saturating_add(size - 1).min(top)));
        }
        pts.insert(page(a));
    }
    if iova >= K4 {
        pts.insert(iova - K4);
    }
    if last < top {
        pts.insert(last + 1);
    }
    for (s, l) in m.ranges().into_iter().take(6) {
        pts.insert(s);
        pts.insert(page(last_of(s, l)));
    }
    pts.into_iter()
        .map(|p| {
            let old = m.lookup(p).map(|(ph, pr)| (ph, pr.read, pr.write));
            let allowed = if p < iova || p > last {
                [old, old]
            } else {
                let n = new.map(|(ph, pr)| (ph.wrapping_add(p - iova), pr.read, pr.write));
                [old, n]
            };
            (p, allowed)
        })
        .collect()
}

/// The engine's map, split and unmap under a [`crate::reorder::ReorderMem`]: every table
/// write is held back until a barrier (`order_writes` / `publish_u64`) orders it, fresh table
/// frames read as poison to the walker until their zeroing is ordered, and after every write
/// the reference walker checks the watched pages against every adversarial subset of the
/// pending writes (the latest alone, each alone, all but each): a page outside the request
/// keeps its translation, a page inside shows the old or the new one, and no entry is
/// malformed. The end of each call is followed by what a backend does next (its invalidation
/// is a register write, which orders every pending write), then the gather is released.
///
/// A scripted sequence (new tables all the way down, a 1 GiB leaf split to 4 KiB, a hole
/// remapped, tables removed, the top of the space) is followed by `cases` random sequences.
/// A failure panics with "reordering" in the message.
pub fn reordering<F: Format, W: RefWalker>(width: u32, cases: u32) {
    reordering_with::<F, W>(width, cases, false)
}

/// [`reordering`], optionally with a barrier before every table write (`program_order`): the
/// walker then sees the engine's writes in program order, which must pass whatever barriers
/// the engine has (a check of this harness: it reports no window a strongly ordered machine
/// would not show).
pub fn reordering_with<F: Format, W: RefWalker>(width: u32, cases: u32, program_order: bool) {
    use crate::reorder::{ReorderAlloc, ReorderMem};

    /// The engine's accessor: the reordering memory, or it with a barrier before every store.
    struct Engine {
        mem: ReorderMem,
        program_order: bool,
    }
    impl PhysMem for Engine {
        fn read_u64(&self, pa: PhysAddr) -> u64 {
            self.mem.read_u64(pa)
        }
        fn write_u64(&mut self, pa: PhysAddr, value: u64) {
            if self.program_order {
                self.mem.order_writes();
            }
            self.mem.write_u64(pa, value)
        }
        fn order_writes(&mut self) {
            self.mem.order_writes()
        }
    }

    let run = |ops: &[Op]| {
        let dev = SharedMem::new();
        let mem = ReorderMem::new(dev.clone());
        // Stale table contents at their most harmful for a page table: every bit set, so a
        // walker that reaches a table before its zeroing is ordered meets entries that are
        // present with reserved bits set (malformed) or map everything.
        mem.set_poison(u64::MAX);
        let mut alloc = ReorderAlloc::new(
            SimAlloc::new(dev.clone(), POOL_BASE, POOL_FRAMES),
            mem.clone(),
        );
        let label = format!("{}/{width}", F::NAME);
        let mut pt = PageTable::<F>::new(standard_config(width), &mut alloc)
            .unwrap_or_else(|e| panic!("{label}: PageTable::new: {e:?}"));
        // The root becomes reachable when a backend publishes the domain (ordered there).
        mem.commit();
        let root = pt.root();
        let top = W::last_iova(width);
        let watch: Watch = Default::default();
        {
            let watch = watch.clone();
            let dev = dev.clone();
            mem.set_check(move || {
                let m = dev.borrow();
                for &(p, allowed) in watch.borrow().iter() {
                    match translate::<W>(&m, root, width, p) {
                        Err(e) => return Err(format!("page {p:#x}: {e}")),
                        Ok(t) => {
                            let got = t.map(|w| (w.phys, w.read, w.write));
                            if !allowed.contains(&got) {
                                return Err(format!(
                                    "page {p:#x} translates to {got:x?}; allowed only {allowed:x?}"
                                ));
                            }
                        }
                    }
                }
                Ok(())
            });
        }
        let mut model = Model::default();
        let mut m = Engine {
            mem: mem.clone(),
            program_order,
        };
        for &op in ops {
            let mut g = Gather::new();
            match op {
                Op::Map(iova, phys, len, perms) => {
                    let last = last_of(iova, len);
                    *watch.borrow_mut() =
                        reorder_watch(&model, top, iova, last, Some((phys, perms)));
                    let overlap = model.overlaps(iova, last);
                    let r = pt.map(
                        &mut m,
                        &mut alloc,
                        Map {
                            iova,
                            phys,
                            len,
                            perms,
                        },
                        &mut g,
                    );
                    if r.is_ok() {
                        assert!(!overlap, "{label}: {op:x?} succeeded over a mapping");
                        model.insert(iova, len, phys, perms);
                    }
                }
                Op::Unmap(iova, len) => {
                    let last = last_of(iova, len);
                    *watch.borrow_mut() = reorder_watch(&model, top, iova, last, None);
                    pt.unmap(&mut m, &mut alloc, Unmap { iova, len }, &mut g)
                        .unwrap_or_else(|e| panic!("{label}: {op:x?}: {e:?}"));
                    model.remove(iova, last);
                }
            }
            if let Some(v) = mem.take_violation() {
                panic!("{label}: reordering: during {op:x?}: {v}");
            }
            // The backend's invalidation (a register write) orders everything; then the
            // unlinked tables go back.
            mem.commit();
            watch.borrow_mut().clear();
            g.release(&mut mem.clone(), &mut alloc);
            // Everything written is now what the walker sees.
            for p in reorder_watch(&model, top, 0, 0, None)
                .into_iter()
                .map(|w| w.0)
            {
                let want = model.lookup(p).map(|(ph, pr)| (ph, pr.read, pr.write));
                let got = translate::<W>(&dev.borrow(), root, width, p)
                    .unwrap_or_else(|e| panic!("{label}: after {op:x?}: {e}"))
                    .map(|w| (w.phys, w.read, w.write));
                assert_eq!(got, want, "{label}: after {op:x?}: page {p:#x}");
            }
        }
        mem.stats()
    };

    let top = W::last_iova(width);
    let b = 2 * G1;
    let mut script = vec![
        // Fresh tables all the way down.
        Op::Map(G1 + M2 + K4, PHYS_BASE + K4, 3 * K4, Perms::RW),
        // A 1 GiB leaf (2 MiB leaves where the format has none), split down to 4 KiB.
        Op::Map(b, PHYS_BASE + G1, G1, Perms::RW),
        Op::Unmap(b + 7 * M2 + 5 * K4, K4),
        // The hole remapped read-only.
        Op::Map(b + 7 * M2 + 5 * K4, PHYS_BASE, K4, Perms::R),
        // A range over several 2 MiB tables, then removed with its tables.
        Op::Map(G1 - 2 * K4, PHYS_BASE + 3 * M2, 2 * M2 + 4 * K4, Perms::RW),
        Op::Unmap(0, 2 * G1),
    ];
    // The top of the space.
    if top >= 8 * G1 {
        script.push(Op::Map(top - (K4 - 1), PHYS_BASE, K4, Perms::RW));
        script.push(Op::Map(top - (M2 - 1) - M2, PHYS_BASE + M2, M2, Perms::R));
        script.push(Op::Unmap(top - (4 * M2 - 1), 4 * M2));
    }
    script.push(Op::Unmap(b, G1));
    let stats = run(&script);
    assert!(stats.views_checked > 0 && stats.fresh_frames > 0);

    let mut runner = runner(cases);
    let strategy = prop::collection::vec(op_seed(), 1..6);
    runner
        .run(&strategy, |seeds| {
            let ops: Vec<Op> = seeds.iter().map(|s| place(s, top, W::WRITE_ONLY)).collect();
            run(&ops);
            Ok(())
        })
        .unwrap();
}

/// CPU-side memory plus what a non-snooping device sees (updated only by sync_for_device).
struct DeviceView {
    cpu: SharedMem,
    device: crate::sim::SimMemory,
}

impl PhysMem for DeviceView {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        self.cpu.read_u64(pa)
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        self.cpu.write_u64(pa, value)
    }
    fn order_writes(&mut self) {
        self.cpu.order_writes()
    }
    fn sync_for_device(&mut self, pa: PhysAddr, len: u64) {
        let start = pa & !7;
        let end = pa.saturating_add(len);
        let mut a = start;
        let cpu = self.cpu.borrow();
        while a < end {
            self.device.write(a, cpu.read(a));
            a += 8;
        }
    }
}

/// Instantiates the conformance suite for one format, walker and address width as a module
/// of `#[test]`s.
#[macro_export]
macro_rules! pagetable_conformance {
    ($name:ident, $fmt:ty, $walker:ty, $width:expr
     $(, beyond_width_ignored = $why:literal)?
     $(, reordering_expected_to_fail = $rwhy:literal)?) => {
        mod $name {
            use super::*;
            use $crate::conformance as c;

            #[test]
            fn random_ops() {
                c::random_ops::<$fmt, $walker>($width, 32);
            }
            #[test]
            fn splits_and_holes() {
                c::splits_and_holes::<$fmt, $walker>($width);
            }
            #[test]
            fn fewest_entries() {
                c::fewest_entries::<$fmt, $walker>($width, 12);
            }
            #[test]
            fn fault_injection() {
                c::fault_injection_all::<$fmt, $walker>($width);
            }
            #[test]
            fn bad_input() {
                c::bad_input::<$fmt, $walker>($width);
            }
            #[test]
            $(#[ignore = $why])?
            fn beyond_width() {
                c::beyond_width::<$fmt, $walker>($width);
            }
            #[test]
            fn split_forbidden() {
                c::split_forbidden::<$fmt, $walker>($width);
            }
            #[test]
            fn gather_semantics() {
                c::gather_semantics::<$fmt, $walker>($width);
            }
            #[test]
            fn table_lifetime() {
                c::table_lifetime::<$fmt, $walker>($width);
            }
            #[test]
            fn no_leaks() {
                c::no_leaks::<$fmt, $walker>($width);
            }
            #[test]
            fn noncoherent_sync() {
                c::noncoherent_sync::<$fmt, $walker>($width);
            }
            /// Map, split and unmap under a reordering memory (see `conformance::reordering`).
            $(
            #[doc = $rwhy]
            #[should_panic(expected = "reordering")]
            )?
            #[test]
            fn reordering() {
                c::reordering::<$fmt, $walker>($width, 4);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walker::{AmdV1Walker, ArmS1Walker, RiscvWalker, VtdWalker};
    use iommu_hal::pagetable::format::{AmdV1, ArmS1, RiscvSv, VtdSl};

    /// The reordering check reports nothing for an engine whose every write is ordered: what
    /// it reports is reordering, not a window a strongly ordered machine would show too.
    #[test]
    fn reordering_accepts_writes_in_program_order() {
        reordering_with::<VtdSl, VtdWalker>(48, 2, true);
        reordering_with::<AmdV1, AmdV1Walker>(64, 2, true);
        reordering_with::<ArmS1, ArmS1Walker>(48, 2, true);
        reordering_with::<RiscvSv, RiscvWalker>(39, 2, true);
    }
}

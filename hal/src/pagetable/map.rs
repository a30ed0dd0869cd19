//! Map: the one-leaf road (one entry of the remembered table, one copy per leaf level), the
//! run road (several leaves of one size in one table of the remembered path, the level a
//! constant), the one-table road (every leaf of the range lands in one table, found by a
//! descent), and the general two-pass road.
//!
//! Atomicity: nothing is written before everything that can fail was checked. The run road
//! reads every entry it will write before it writes (it allocates nothing). The one-table
//! road checks the whole range while it descends and allocates its (at most `levels - 1`)
//! missing tables all or none before it writes. The general road reads first (pass 1: overlap,
//! and the number of frames the change needs), allocates those frames into a [`FramePool`]
//! (all or none), then writes (pass 2, which cannot fail).

use super::lifetime::{FramePool, Meta, bump, bump_at};
use super::table::PageTable;
use super::walk::{
    ENTRY_BYTES, Node, Slot, Slots, all_zero, covers, entry_addr, in_one_entry, index, run_level,
    size,
};
use super::{Format, Gather, Map, Perms, PtError, Pte, Span};
use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem};

/// What a fill writes: output address = input address + `delta` (wrapping), with `perms`.
#[derive(Clone, Copy)]
pub(super) struct Fill {
    pub delta: u64,
    pub perms: Perms,
}

/// What is known about the table a fill writes into.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    /// Reachable by the walker: entries are read first, a new child is linked with a
    /// publishing store, and the run of written entries is synced.
    Linked,
    /// New and all absent, not reachable: entries are not read; synced whole at the end.
    New,
    /// New and all absent, not reachable; the caller syncs it after filling it in parts.
    NewUnsynced,
    /// New, not reachable, partly filled by an earlier fill: entries are read; the caller
    /// syncs it.
    Unlinked,
    /// A table below an [`Dest::Unlinked`] one, already synced whole once: entries are read,
    /// the run written is synced.
    Built,
}

/// What the writing pass of one call changed, folded into the gather once at the end.
#[derive(Default)]
pub(super) struct Changes {
    /// The changed leaves' span.
    span: Option<Span>,
    /// Every leaf size changed, OR-ed together (as in [`Gather`]).
    leaf_sizes: u64,
    /// Bytes that were mapped and are no longer (unmap).
    pub unmapped: u64,
}

impl Changes {
    #[inline]
    pub fn leaf(&mut self, entry: Span, leaf: u64) {
        self.span = Some(match self.span {
            None => entry,
            Some(s) => Span {
                first: s.first.min(entry.first),
                last: s.last.max(entry.last),
            },
        });
        self.leaf_sizes |= leaf;
    }

    /// Records everything in `gather`: one span and the leaf sizes.
    pub fn into_gather(self, gather: &mut Gather) {
        if let Some(s) = self.span {
            gather.add_span(s.first, s.last, 0);
            gather.add_leaf_sizes(self.leaf_sizes);
        }
    }
}

/// Tracks the run of entries one table loop wrote, to sync it once.
#[derive(Default)]
pub(super) struct Run(Option<(PhysAddr, PhysAddr)>);

impl Run {
    #[inline]
    pub fn note(&mut self, pa: PhysAddr) {
        self.0 = Some(match self.0 {
            None => (pa, pa),
            Some((f, _)) => (f, pa),
        });
    }
    pub fn sync<M: PhysMem + ?Sized>(&self, mem: &mut M) {
        if let Some((f, l)) = self.0 {
            mem.sync_for_device(f, l - f + ENTRY_BYTES);
        }
    }
}

/// The state of one call's writing pass (pass 2 of the general roads, and splits).
pub(super) struct Writer<'a, F: Format, M: PhysMem + ?Sized, A: FrameAlloc + ?Sized> {
    pub pt: &'a mut PageTable<F>,
    pub mem: &'a mut M,
    pub alloc: &'a mut A,
    pub gather: &'a mut Gather,
    pub pool: FramePool,
    pub changes: Changes,
    pub emptied: super::lifetime::Emptied,
}

/// Whether a range lies in one table ([`PageTable::map_narrow`], `unmap_narrow`).
pub(super) enum Road<T> {
    /// Done on the narrow road.
    Done(T),
    /// Nothing was changed: the general road must do it.
    Wide,
}

impl<F: Format> PageTable<F> {
    /// Maps `req.len` bytes from `req.iova` to the same number of bytes from `req.phys`.
    ///
    /// Uses, for every part of the range, the largest allowed leaf that the alignment of both
    /// addresses and the remaining length permit. Errors, checked in this order, leave
    /// everything unchanged: `Misaligned` (`iova`, `phys` or `len` not 4 KiB multiples),
    /// `ZeroLength`, `OutOfRange` (the IOVA range wraps or leaves the address width, or its
    /// lower half for a [`Format::SIGN_EXTENDED`] format), `PhysOutOfRange` (the physical
    /// range wraps or reaches `2^phys_width` or `2^F::OA_BITS`), `PermsUnsupported`, `Overlap`
    /// (any page already mapped), `NoFrame`. Records the mapped span in `gather` (with the
    /// smallest and the largest leaf written).
    #[inline]
    pub fn map<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        req: Map,
        gather: &mut Gather,
    ) -> Result<(), PtError> {
        let Map {
            iova,
            phys,
            len,
            perms,
        } = req;
        if phys % PAGE_SIZE != 0 {
            return Err(PtError::Misaligned);
        }
        let span = self.check_range(iova, len)?;
        match phys.checked_add(len - 1) {
            Some(last) if last <= self.last_phys => {}
            _ => return Err(PtError::PhysOutOfRange),
        }
        if !(perms.read || perms.write) || !F::supports_perms(perms) {
            return Err(PtError::PermsUnsupported);
        }
        // One leaf into its table on the remembered path: the fast road, one copy per leaf
        // level so that the level's shifts and masks are constants.
        let road = match len {
            0x1000 => self.map_leaf::<0, M>(mem, iova, phys, perms, gather),
            0x20_0000 => self.map_leaf::<1, M>(mem, iova, phys, perms, gather),
            0x4000_0000 => self.map_leaf::<2, M>(mem, iova, phys, perms, gather),
            0x80_0000_0000 => self.map_leaf::<3, M>(mem, iova, phys, perms, gather),
            _ => Road::Wide,
        };
        if let Road::Done(r) = road {
            return r;
        }
        let fill = Fill {
            delta: phys.wrapping_sub(iova),
            perms,
        };
        self.map_slow(mem, alloc, span, fill, gather)
    }

    /// The fast road of [`Self::map`] (arguments checked): one leaf of level `L` (its size is
    /// the request's length) into the level-`L` table of the remembered path. `Road::Wide`,
    /// with nothing changed, when the table is not on the path, the leaf is not allowed there,
    /// or a table occupies the entry (the narrow road decides then).
    #[inline(always)]
    fn map_leaf<const L: u8, M: PhysMem + ?Sized>(
        &mut self,
        mem: &mut M,
        iova: u64,
        phys: u64,
        perms: Perms,
        gather: &mut Gather,
    ) -> Road<Result<(), PtError>> {
        let Some(pa) = self.leaf_entry::<L, M>(mem, iova) else {
            return Road::Wide;
        };
        if !(L == 0 || self.leafable(L, phys.wrapping_sub(iova))) {
            return Road::Wide;
        }
        let len = size(L);
        match F::decode(mem.read_u64(pa), L) {
            Pte::Absent => {
                mem.write_u64(pa, F::encode_leaf(phys, perms, L));
                self.counters.leaf_writes += 1;
                if L < self.top() {
                    let holder = self.path.node[usize::from(L) + 1];
                    bump_at(mem, entry_addr(holder.shadow, iova, L + 1), 1);
                }
                if !self.config.coherent {
                    mem.sync_for_device(pa, ENTRY_BYTES);
                }
                gather.add_span(iova, iova + (len - 1), len);
                Road::Done(Ok(()))
            }
            Pte::Leaf { .. } => Road::Done(Err(PtError::Overlap)),
            // A table where one leaf fits: the narrow road decides.
            Pte::Table(_) => Road::Wide,
        }
    }

    /// The run road of [`Self::map`] (arguments checked; tried first by `map_slow`): `span`,
    /// whose ends and `phys` are multiples of `size(L)` (the largest such level, so the leaves are the minimal
    /// decomposition), lies in the level-`L` table of the remembered path without covering
    /// it whole, and every entry it touches is absent: one leaf per entry, the table's count
    /// raised once. `Road::Wide`, with nothing changed, otherwise (the general roads decide,
    /// and report an overlap).
    #[inline(never)]
    fn map_run<const L: u8, M: PhysMem + ?Sized>(
        &mut self,
        mem: &mut M,
        span: Span,
        phys: u64,
        perms: Perms,
        gather: &mut Gather,
    ) -> Road<Result<(), PtError>> {
        if self.leaf_levels & (1 << L) == 0 {
            return Road::Wide;
        }
        let Some((first, n)) = self.run_entries::<L, M>(mem, span) else {
            return Road::Wide;
        };
        for i in 0..n {
            let e = mem.read_u64(first + i * ENTRY_BYTES);
            if !matches!(F::decode(e, L), Pte::Absent) {
                return Road::Wide;
            }
        }
        for i in 0..n {
            let e = F::encode_leaf(phys + i * size(L), perms, L);
            mem.write_u64(first + i * ENTRY_BYTES, e);
        }
        self.counters.leaf_writes += n;
        if L < self.top() {
            let holder = self.path.node[usize::from(L) + 1];
            bump_at(mem, entry_addr(holder.shadow, span.first, L + 1), n as i64);
        }
        if !self.config.coherent {
            mem.sync_for_device(first, n * ENTRY_BYTES);
        }
        gather.add_span(span.first, span.last, size(L));
        Road::Done(Ok(()))
    }

    /// `map` beyond one page of the remembered table: the one-table road, else the general
    /// one. Kept out of line so the 4 KiB road stays lean.
    #[inline(never)]
    fn map_slow<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        fill: Fill,
        gather: &mut Gather,
    ) -> Result<(), PtError> {
        // Several leaves of one size into one table of the path: the run road.
        let phys = span.first.wrapping_add(fill.delta);
        let (first, len, perms) = (span.first, span.last - span.first + 1, fill.perms);
        let road = match run_level(first | phys | len) {
            0 => self.map_run::<0, M>(mem, span, phys, perms, gather),
            1 => self.map_run::<1, M>(mem, span, phys, perms, gather),
            2 => self.map_run::<2, M>(mem, span, phys, perms, gather),
            _ => self.map_run::<3, M>(mem, span, phys, perms, gather),
        };
        if let Road::Done(r) = road {
            return r;
        }
        match self.map_narrow(mem, alloc, span, fill, gather)? {
            Road::Done(()) => Ok(()),
            Road::Wide => self.map_general(mem, alloc, span, fill, gather),
        }
    }

    /// `map` of a span whose leaves all land in one table (the common small case: a range
    /// inside one 2 MiB region, or one large leaf). One descent from the remembered path
    /// records the path, checks for overlap and finds the missing tables (at most
    /// `levels - 1`); they are allocated all or none, written bottom-up, and linked with one
    /// publishing store. `Road::Wide`, with nothing changed, when the span needs more than one
    /// table below some level.
    fn map_narrow<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        fill: Fill,
        gather: &mut Gather,
    ) -> Result<Road<()>, PtError> {
        let mut node = self.path_start(mem, span);
        // A remembered table that the span covers whole, where one larger leaf is allowed:
        // start from its parent, so that the loop below sees the table's entry and replaces a
        // leafless (reserved) table with that leaf (the minimal decomposition).
        while node.level < self.top()
            && covers(span, node.level + 1)
            && self.leafable(node.level + 1, fill.delta)
        {
            node = self.path.node[usize::from(node.level) + 1];
        }
        // `missing` new tables go below `node`'s entry for the span; leaves at level `target`.
        let (missing, target) = loop {
            self.remember(span.first, node);
            if node.level == 0 {
                break (0, 0);
            }
            if !in_one_entry(span, node.level) {
                // Several whole entries of this table, each one leaf: leaves here, if every
                // entry is absent (anything else goes the general way).
                if covers(span, node.level) && self.leafable(node.level, fill.delta) {
                    let (first, n) = node.entries(span);
                    if all_zero(mem, first, n) {
                        break (0, node.level);
                    }
                }
                return Ok(Road::Wide);
            }
            match F::decode(mem.read_u64(node.entry(span.first)), node.level) {
                Pte::Table(t) => {
                    let child = self.child(mem, node, span.first, t);
                    if covers(span, node.level) && self.leafable(node.level, fill.delta) {
                        // One leaf fits here: a subtree the reserve left without leaves goes.
                        let count = Meta(mem.read_u64(node.shadow_word(span.first))).count();
                        if self.leafless(mem, child, count) {
                            self.discard(mem, alloc, node, span.first, gather);
                            if node.level < self.top() {
                                let holder = self.path.node[usize::from(node.level) + 1];
                                bump(mem, holder, span.first, -1);
                            }
                            break (0, node.level);
                        }
                    }
                    node = child;
                }
                Pte::Leaf { .. } => return Err(PtError::Overlap),
                Pte::Absent => {
                    // The largest leaf that fits; every level above it must hold the span in
                    // one entry, or the new subtree is not a single chain.
                    let mut k = node.level;
                    while k > 0 {
                        if !in_one_entry(span, k) {
                            return Ok(Road::Wide);
                        }
                        if covers(span, k) && self.leafable(k, fill.delta) {
                            break;
                        }
                        k -= 1;
                    }
                    break (node.level - k, k);
                }
            }
        };
        let (a, b) = (index(span.first, target), index(span.last, target));
        let n = b - a + 1;
        let out = span.first.wrapping_add(fill.delta);
        if missing == 0 {
            // Level 0: check every page first (nothing is written on overlap). Above level 0
            // the one entry was just seen absent.
            if target == 0 {
                for i in a..=b {
                    let e = mem.read_u64(node.table + i * ENTRY_BYTES);
                    if !matches!(F::decode(e, 0), Pte::Absent) {
                        return Err(PtError::Overlap);
                    }
                }
            }
            self.write_leaves(mem, node, a..=b, out, fill.perms);
            if node.level < self.top() {
                bump(
                    mem,
                    self.path.node[usize::from(node.level) + 1],
                    span.first,
                    n as i64,
                );
            }
            if !self.config.coherent {
                mem.sync_for_device(node.table + a * ENTRY_BYTES, n * ENTRY_BYTES);
            }
        } else {
            let chain = self.build_chain(mem, alloc, span.first, target, missing)?;
            let bottom = chain[0];
            self.write_leaves(mem, bottom, a..=b, out, fill.perms);
            // Bottom-up: each new table's shadow word for the one below, then its link
            // (plain stores: nothing new is reachable yet).
            let mut count = n;
            for j in 1..usize::from(missing) {
                let (lower, upper) = (chain[j - 1], chain[j]);
                mem.write_u64(
                    upper.shadow_word(span.first),
                    Meta::new(lower.shadow, count).0,
                );
                mem.write_u64(
                    upper.entry(span.first),
                    F::encode_table(lower.table, upper.level),
                );
                count = 1;
            }
            if !self.config.coherent {
                for new in &chain[..usize::from(missing)] {
                    mem.sync_for_device(new.table, PAGE_SIZE);
                }
            }
            let top_new = chain[usize::from(missing) - 1];
            mem.write_u64(
                node.shadow_word(span.first),
                Meta::new(top_new.shadow, count).0,
            );
            let pa = node.entry(span.first);
            mem.publish_u64(pa, F::encode_table(top_new.table, node.level));
            if node.level < self.top() {
                bump(
                    mem,
                    self.path.node[usize::from(node.level) + 1],
                    span.first,
                    1,
                );
            }
            if !self.config.coherent {
                mem.sync_for_device(pa, ENTRY_BYTES);
            }
            self.counters.table_writes += u64::from(missing);
            for new in &chain[..usize::from(missing)] {
                self.path.node[usize::from(new.level)] = *new;
            }
            self.path.depth = target;
        }
        gather.add_span(span.first, span.last, size(target));
        Ok(Road::Done(()))
    }

    /// Allocates the `missing` new tables (and their shadows) of levels `target..` for a
    /// one-table map, all or none; `chain[j]` is the table at level `target + j`.
    fn build_chain<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        _iova: u64,
        target: u8,
        missing: u8,
    ) -> Result<[Node; super::walk::MAX_LEVELS], PtError> {
        let need: u64 = (target..target + missing).map(Self::table_cost).sum();
        let mut pool = FramePool::new();
        if !pool.fill(mem, alloc, need) {
            return Err(PtError::NoFrame);
        }
        self.counters.frames_allocated += need;
        let mut chain = [Node {
            table: 0,
            shadow: 0,
            level: 0,
        }; super::walk::MAX_LEVELS];
        // The pool hands out the most recent frame first: take in reverse so that the first
        // frame allocated holds the leaves (as the general road's pool does).
        for j in (0..usize::from(missing)).rev() {
            let level = target + j as u8;
            let shadow = if level > 0 { pool.take(mem) } else { 0 };
            chain[j] = Node {
                table: pool.take(mem),
                shadow,
                level,
            };
        }
        Ok(chain)
    }

    /// Writes leaves at `node.level` into entries `idx` of `node`'s table, the first mapping
    /// `phys`.
    #[inline]
    fn write_leaves<M: PhysMem + ?Sized>(
        &mut self,
        mem: &mut M,
        node: Node,
        idx: core::ops::RangeInclusive<u64>,
        phys: PhysAddr,
        perms: Perms,
    ) {
        let sz = size(node.level);
        let mut out = phys;
        let n = idx.end() - idx.start() + 1;
        for i in idx {
            let e = F::encode_leaf(out, perms, node.level);
            mem.write_u64(node.table + i * ENTRY_BYTES, e);
            out = out.wrapping_add(sz);
        }
        self.counters.leaf_writes += n;
    }

    /// The general `map`, in two passes (see the module documentation).
    fn map_general<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        fill: Fill,
        gather: &mut Gather,
    ) -> Result<(), PtError> {
        let root = self.root_node();
        let need = self.map_count(mem, root, span, fill.delta)?;
        let mut pool = FramePool::new();
        if !pool.fill(mem, alloc, need) {
            return Err(PtError::NoFrame);
        }
        self.counters.frames_allocated += need;
        let mut w = Writer {
            pt: self,
            mem,
            alloc,
            gather,
            pool,
            changes: Changes::default(),
            emptied: Default::default(),
        };
        w.fill(root, span, fill, Dest::Linked);
        w.finish();
        Ok(())
    }

    /// Pass 1 of `map`: `Overlap` if any page of `span` is mapped below `node`, else the
    /// number of new frames the mapping needs.
    fn map_count<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        node: Node,
        span: Span,
        delta: u64,
    ) -> Result<u64, PtError> {
        // One leaf per slot (as `Writer::fill_leaves`) into absent entries: nothing to
        // allocate, nothing overlapped; one tight loop.
        let level = node.level;
        if level == 0 || (covers(span, level) && self.leafable(level, delta)) {
            let (first, n) = node.entries(span);
            if all_zero(mem, first, n) {
                return Ok(0);
            }
        }
        let mut total = 0u64;
        for slot in Slots::new(node, span) {
            let n = match F::decode(mem.read_u64(slot.pa), node.level) {
                Pte::Absent => self.absent_cost(node.level, slot, delta),
                Pte::Table(t) if node.level > 0 => {
                    let child = self.child(mem, node, slot.entry.first, t);
                    if self.replaces_leafless(mem, node, slot, child, delta) {
                        0
                    } else {
                        self.map_count(mem, child, slot.part, delta)?
                    }
                }
                _ => return Err(PtError::Overlap),
            };
            total = total.saturating_add(n);
        }
        Ok(total)
    }

    /// Whether a map puts one leaf over `slot` of `node`, where the table `child` holds no leaf
    /// (a subtree the reserve kept): the subtree is then discarded and the leaf written.
    fn replaces_leafless<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        node: Node,
        slot: Slot,
        child: Node,
        delta: u64,
    ) -> bool {
        slot.covered() && self.leafable(node.level, delta) && {
            let count = Meta(mem.read_u64(slot.shadow_word(node))).count();
            self.leafless(mem, child, count)
        }
    }

    /// Frames needed to fill an absent entry at `level` with `slot.part`.
    pub(super) fn absent_cost(&self, level: u8, slot: Slot, delta: u64) -> u64 {
        if level == 0 || (slot.covered() && self.leafable(level, delta)) {
            0
        } else {
            Self::table_cost(level - 1).saturating_add(self.fresh_cost(level - 1, slot.part, delta))
        }
    }

    /// Frames needed below a new, empty table at `level` to map `span` (which lies inside it).
    /// Computed arithmetically: the fully covered entries in the middle all cost the same.
    pub(super) fn fresh_cost(&self, level: u8, span: Span, delta: u64) -> u64 {
        let sz = size(level);
        let first = span.first & !(sz - 1);
        let last = span.last & !(sz - 1);
        let slot = |entry_first: u64| {
            let entry = Span {
                first: entry_first,
                last: entry_first + (sz - 1),
            };
            Slot {
                pa: 0,
                entry,
                part: Span {
                    first: span.first.max(entry.first),
                    last: span.last.min(entry.last),
                },
            }
        };
        if first == last {
            return self.absent_cost(level, slot(first), delta);
        }
        let middle = ((last - first) >> super::walk::shift(level)) - 1;
        self.absent_cost(level, slot(first), delta)
            .saturating_add(self.absent_cost(level, slot(last), delta))
            .saturating_add(middle.saturating_mul(self.full_cost(level, delta)))
    }

    /// Frames needed to map one whole, absent entry at `level`.
    fn full_cost(&self, level: u8, delta: u64) -> u64 {
        let mut cost = 0u64;
        for l in 1..=level {
            cost = if self.leafable(l, delta) {
                0
            } else {
                Self::table_cost(l - 1).saturating_add(super::walk::ENTRIES.saturating_mul(cost))
            };
        }
        cost
    }
}

impl<F: Format, M: PhysMem + ?Sized, A: FrameAlloc + ?Sized> Writer<'_, F, M, A> {
    /// Pass 2 of `map` (and the builder of split replacement tables): writes `span` below
    /// `node`. Returns how many entries of `node`'s table became non-absent.
    pub fn fill(&mut self, node: Node, span: Span, fill: Fill, dest: Dest) -> u64 {
        let mut run = Run::default();
        let fresh = matches!(dest, Dest::New | Dest::NewUnsynced);
        // One leaf per slot and nothing there yet: the tight loop; else slot by slot.
        let leaves = self.fill_leaves(node, span, fill, fresh, &mut run);
        let mut added = leaves.unwrap_or(0);
        let slots = match leaves {
            Some(_) => None,
            None => Some(Slots::new(node, span)),
        };
        for slot in slots.into_iter().flatten() {
            let cur = if fresh {
                Pte::Absent
            } else {
                F::decode(self.mem.read_u64(slot.pa), node.level)
            };
            match cur {
                Pte::Absent => {
                    if node.level == 0
                        || (slot.covered() && self.pt.leafable(node.level, fill.delta))
                    {
                        let out = slot.entry.first.wrapping_add(fill.delta);
                        let e = F::encode_leaf(out, fill.perms, node.level);
                        self.mem.write_u64(slot.pa, e);
                        self.pt.counters.leaf_writes += 1;
                        self.changes.leaf(slot.entry, size(node.level));
                    } else {
                        let level = node.level - 1;
                        let shadow = if level > 0 {
                            self.pool.take(self.mem)
                        } else {
                            0
                        };
                        let child = Node {
                            table: self.pool.take(self.mem),
                            shadow,
                            level,
                        };
                        let n = self.fill(child, slot.part, fill, Dest::New);
                        let word = slot.shadow_word(node);
                        self.mem.write_u64(word, Meta::new(child.shadow, n).0);
                        let e = F::encode_table(child.table, node.level);
                        if dest == Dest::Linked {
                            self.mem.publish_u64(slot.pa, e);
                        } else {
                            self.mem.write_u64(slot.pa, e);
                        }
                        self.pt.counters.table_writes += 1;
                    }
                    run.note(slot.pa);
                    added += 1;
                }
                Pte::Table(t)
                    if node.level > 0 && {
                        let child = self.pt.child(self.mem, node, slot.entry.first, t);
                        self.pt
                            .replaces_leafless(self.mem, node, slot, child, fill.delta)
                    } =>
                {
                    // Entry count unchanged: a table pointer becomes a leaf.
                    let at = slot.entry.first;
                    self.pt.discard(self.mem, self.alloc, node, at, self.gather);
                    let out = at.wrapping_add(fill.delta);
                    let e = F::encode_leaf(out, fill.perms, node.level);
                    self.mem.write_u64(slot.pa, e);
                    self.pt.counters.leaf_writes += 1;
                    self.changes.leaf(slot.entry, size(node.level));
                    run.note(slot.pa);
                }
                Pte::Table(t) if node.level > 0 => {
                    let child = self.pt.child(self.mem, node, slot.entry.first, t);
                    let below = if dest == Dest::Linked {
                        Dest::Linked
                    } else {
                        Dest::Built
                    };
                    let n = self.fill(child, slot.part, fill, below);
                    bump(self.mem, node, slot.entry.first, n as i64);
                }
                _ => debug_assert!(false, "pass 1 missed an overlap"),
            }
        }
        if !self.pt.config.coherent {
            match dest {
                Dest::Linked | Dest::Built => run.sync(self.mem),
                Dest::New => self.mem.sync_for_device(node.table, PAGE_SIZE),
                Dest::NewUnsynced | Dest::Unlinked => {}
            }
        }
        added
    }

    /// `fill` of a table where every slot the span touches gets one leaf of the table's level
    /// (level 0, or the span's ends on that level's boundaries and such a leaf allowed) and
    /// every entry is absent (zero; a fresh table is not read): the leaves written in one
    /// tight loop, the changes and the run recorded once. `None`, with nothing written,
    /// otherwise (the slot-by-slot loop decides).
    #[inline]
    fn fill_leaves(
        &mut self,
        node: Node,
        span: Span,
        fill: Fill,
        fresh: bool,
        run: &mut Run,
    ) -> Option<u64> {
        let level = node.level;
        if level > 0 && !(covers(span, level) && self.pt.leafable(level, fill.delta)) {
            return None;
        }
        let sz = size(level);
        let (first, n) = node.entries(span);
        if !fresh && !all_zero(&*self.mem, first, n) {
            return None;
        }
        let out = span.first.wrapping_add(fill.delta);
        for i in 0..n {
            let e = F::encode_leaf(out.wrapping_add(i * sz), fill.perms, level);
            self.mem.write_u64(first + i * ENTRY_BYTES, e);
        }
        self.pt.counters.leaf_writes += n;
        self.changes.leaf(span, sz);
        run.note(first);
        run.note(first + (n - 1) * ENTRY_BYTES);
        Some(n)
    }

    /// The end of a writing pass: unused frames go back (none, when pass 1 was right), the
    /// changes go into the gather, and the tables left empty enter the reserve.
    pub fn finish(mut self) -> u64 {
        let left = self.pool.release(self.mem, self.alloc);
        debug_assert_eq!(left, 0, "frame count of pass 1 and pass 2 differ");
        self.pt.counters.frames_allocated -= left;
        let unmapped = self.changes.unmapped;
        core::mem::take(&mut self.changes).into_gather(self.gather);
        let emptied = core::mem::take(&mut self.emptied);
        self.pt
            .keep_emptied(self.mem, self.alloc, &emptied, self.gather);
        unmapped
    }
}

//! Unmap: the one-leaf road, the run road, the one-table road, and the general two-pass road
//! (as for map, `map.rs`).
//!
//! Cost: every road clears only the entries the range touches and updates the live count of
//! each table it changed; a table whose count reaches zero is known empty without reading it
//! (see *Table lifetime* in the module documentation for what then happens to it). Pass 1 of
//! the general road reads only the two paths to the range's ends (the only entries that can
//! need a split) to count the frames the splits need.

use super::lifetime::{Emptied, FramePool, bump, bump_at, key};
use super::map::{Changes, Road, Run, Writer};
use super::table::PageTable;
use super::walk::{
    ENTRY_BYTES, Node, Slots, covers, entry_addr, in_one_entry, index, no_table, run_level, size,
};
use super::{Format, Gather, PtError, Pte, Span, Unmap};
use crate::mem::{FrameAlloc, PhysAddr, PhysMem};

impl<F: Format> PageTable<F> {
    /// Unmaps exactly the pages of the `req.len` bytes from `req.iova`; returns the bytes that
    /// were mapped.
    ///
    /// Holes are fine (unmapping nothing returns 0). A large leaf only partly inside the range
    /// is split: its replacement table is built completely and installed with one publishing
    /// store, so the pages that stay mapped never disappear. Tables the range covers that
    /// become empty are unlinked and queued in `gather` (freed by [`Gather::release`] after the
    /// invalidation); tables left empty that the range covers only partly stay linked in the
    /// reserve (see *Table lifetime*); the root stays. Errors, checked in this order, leave
    /// everything unchanged: `Misaligned`, `ZeroLength`, `OutOfRange`, `SplitForbidden` (a
    /// split is needed and the unit forbids it), `NoFrame` (a split needs frames that cannot
    /// be allocated).
    #[inline]
    pub fn unmap<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        req: Unmap,
        gather: &mut Gather,
    ) -> Result<u64, PtError> {
        let span = self.check_range(req.iova, req.len)?;
        let iova = span.first;
        // One leaf of its table on the remembered path: the fast road, one copy per leaf
        // level so that the level's shifts and masks are constants.
        let road = match req.len {
            0x1000 => self.unmap_leaf::<0, M, A>(mem, alloc, iova, gather),
            0x20_0000 => self.unmap_leaf::<1, M, A>(mem, alloc, iova, gather),
            0x4000_0000 => self.unmap_leaf::<2, M, A>(mem, alloc, iova, gather),
            0x80_0000_0000 => self.unmap_leaf::<3, M, A>(mem, alloc, iova, gather),
            _ => Road::Wide,
        };
        if let Road::Done(bytes) = road {
            return Ok(bytes);
        }
        self.unmap_slow(mem, alloc, span, gather)
    }

    /// The fast road of [`Self::unmap`] (arguments checked): the range is one entry of level
    /// `L` in the level-`L` table of the remembered path. `Road::Wide`, with nothing changed,
    /// when that table is not on the path or the entry is a table.
    #[inline(always)]
    fn unmap_leaf<const L: u8, M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        iova: u64,
        gather: &mut Gather,
    ) -> Road<u64> {
        let Some(pa) = self.leaf_entry::<L, M>(mem, iova) else {
            return Road::Wide;
        };
        let len = size(L);
        match F::decode(mem.read_u64(pa), L) {
            Pte::Absent => Road::Done(0),
            Pte::Leaf { .. } => {
                mem.write_u64(pa, 0);
                self.counters.leaf_writes += 1;
                if !self.config.coherent {
                    mem.sync_for_device(pa, ENTRY_BYTES);
                }
                gather.add_span(iova, iova + (len - 1), len);
                // One entry never covers its table: an empty table enters the reserve
                // (`keep_empty_below`, without reading again the word just written).
                if L < self.top() {
                    let holder = self.path.node[usize::from(L) + 1];
                    let meta = bump_at(mem, entry_addr(holder.shadow, iova, L + 1), -1);
                    if meta.count() == 0 && !meta.reserved() {
                        self.keep_empty(mem, alloc, key(iova, L), gather);
                    }
                }
                Road::Done(len)
            }
            // A table's whole span: the general road.
            Pte::Table(_) => Road::Wide,
        }
    }

    /// The run road of [`Self::unmap`] (arguments checked; tried first by `unmap_slow`): `span`, whose ends are multiples
    /// of `size(L)`, lies in the level-`L` table of the remembered path without covering it
    /// whole, and none of the entries it touches is a table: the leaves among them are
    /// cleared, the table's count lowered once; emptied, the table enters the reserve (it is
    /// not covered whole). `Road::Wide`, with nothing changed, otherwise.
    #[inline(never)]
    fn unmap_run<const L: u8, M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        gather: &mut Gather,
    ) -> Road<u64> {
        let Some((first, n)) = self.run_entries::<L, M>(mem, span) else {
            return Road::Wide;
        };
        if !no_table::<F, M>(mem, first, n, L) {
            return Road::Wide;
        }
        let Some((a, b, cleared)) = clear_entries::<F, M>(mem, first, n, L) else {
            return Road::Done(0);
        };
        self.counters.leaf_writes += cleared;
        if !self.config.coherent {
            mem.sync_for_device(first + a * ENTRY_BYTES, (b - a + 1) * ENTRY_BYTES);
        }
        let base = span.first & !(size(L) - 1);
        gather.add_span(base + a * size(L), base + (b + 1) * size(L) - 1, size(L));
        if L < self.top() {
            let holder = self.path.node[usize::from(L) + 1];
            let word = entry_addr(holder.shadow, span.first, L + 1);
            let meta = bump_at(mem, word, -(cleared as i64));
            if meta.count() == 0 && !meta.reserved() {
                self.keep_empty(mem, alloc, key(span.first, L), gather);
            }
        }
        Road::Done(cleared * size(L))
    }

    /// Takes back what a request that is failing mapped: unmaps like [`Self::unmap`], but a
    /// table this leaves empty is unlinked at once (with its parents while they become empty)
    /// unless it was already empty, kept in the reserve, before: so the table, the frames it
    /// holds and the reserve return to their state before the request (once `gather` is
    /// invalidated and released). Call it only on ranges the failing request mapped; it never
    /// splits, so it never allocates.
    pub fn undo<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        req: Unmap,
        gather: &mut Gather,
    ) -> Result<u64, PtError> {
        self.undoing = true;
        let r = self.unmap(mem, alloc, req, gather);
        self.undoing = false;
        r
    }

    /// `unmap` beyond one page of the remembered table: the one-table road, else the general
    /// one. Kept out of line so the 4 KiB road stays lean.
    #[inline(never)]
    fn unmap_slow<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        gather: &mut Gather,
    ) -> Result<u64, PtError> {
        // Several entries of one size in one table of the path: the run road.
        let len = span.last - span.first + 1;
        let road = match run_level(span.first | len) {
            0 => self.unmap_run::<0, M, A>(mem, alloc, span, gather),
            1 => self.unmap_run::<1, M, A>(mem, alloc, span, gather),
            2 => self.unmap_run::<2, M, A>(mem, alloc, span, gather),
            _ => self.unmap_run::<3, M, A>(mem, alloc, span, gather),
        };
        if let Road::Done(bytes) = road {
            return Ok(bytes);
        }
        match self.unmap_narrow(mem, alloc, span, gather) {
            Road::Done(bytes) => Ok(bytes),
            Road::Wide => self.unmap_general(mem, alloc, span, gather),
        }
    }

    /// `unmap` of a span that lies in one table's entries and needs no split (a range inside
    /// one 2 MiB region, or exactly one leaf): one descent recording the path, the leaves
    /// cleared, the table's count updated. `Road::Wide`, with nothing changed, when the span
    /// covers several entries above level 0 or would split a leaf.
    fn unmap_narrow<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        gather: &mut Gather,
    ) -> Road<u64> {
        let mut node = self.path_start(mem, span);
        loop {
            self.remember(span.first, node);
            if node.level == 0 {
                break;
            }
            if !in_one_entry(span, node.level) {
                // Several whole entries of this table: here if none of them is a table.
                if covers(span, node.level) {
                    let (first, n) = node.entries(span);
                    if no_table::<F, M>(mem, first, n, node.level) {
                        break;
                    }
                }
                return Road::Wide;
            }
            match F::decode(mem.read_u64(node.entry(span.first)), node.level) {
                Pte::Absent => return Road::Done(0),
                Pte::Table(t) => node = self.child(mem, node, span.first, t),
                Pte::Leaf { .. } if covers(span, node.level) => break,
                Pte::Leaf { .. } => return Road::Wide,
            }
        }
        let (a, b) = (index(span.first, node.level), index(span.last, node.level));
        let at = node.table + a * ENTRY_BYTES;
        let Some((lo, hi, n)) = clear_entries::<F, M>(mem, at, b - a + 1, node.level) else {
            return Road::Done(0);
        };
        let (lo, hi) = (a + lo, a + hi);
        let sz = size(node.level);
        self.counters.leaf_writes += n;
        let first = span.first + (lo - a) * sz;
        gather.add_span(first, first + ((hi - lo + 1) * sz - 1), sz);
        let top = self.top();
        let unlinked = node.level < top && {
            let parent = self.path.node[usize::from(node.level) + 1];
            bump(mem, parent, span.first, -(n as i64)) == 0
                && self.emptied_by(mem, alloc, parent, span, gather)
        };
        if !unlinked && !self.config.coherent {
            mem.sync_for_device(node.table + lo * ENTRY_BYTES, (hi - lo + 1) * ENTRY_BYTES);
        }
        Road::Done(n * sz)
    }

    /// The table below `parent`'s entry for `span` (on the remembered path) became empty
    /// in a one-table unmap: unlinked at once if `span` covers it (then `parent` may become
    /// empty in turn, partly covered: reserve), else kept in the reserve. Returns whether it
    /// was unlinked.
    fn emptied_by<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        parent: Node,
        span: Span,
        gather: &mut Gather,
    ) -> bool {
        if !covers(span, parent.level) {
            self.keep_empty_below(mem, alloc, parent, span.first, gather);
            return false;
        }
        self.unlink(mem, alloc, parent, span.first, gather);
        self.forget_path();
        if parent.level < self.top() {
            let grand = self.path.node[usize::from(parent.level) + 1];
            if bump(mem, grand, span.first, -1) == 0 {
                // A span inside one entry never covers a whole table of 2 or more entries.
                self.keep_empty_below(mem, alloc, grand, span.first, gather);
            }
        }
        true
    }

    /// The empty table below `holder`'s entry for `iova` enters the reserve unless it is
    /// there (its reserve flag lives in `holder`'s shadow word).
    pub(super) fn keep_empty_below<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        holder: Node,
        iova: u64,
        gather: &mut Gather,
    ) {
        let word = mem.read_u64(holder.shadow_word(iova));
        if super::lifetime::Meta(word).reserved() {
            return;
        }
        self.keep_empty(mem, alloc, key(iova, holder.level - 1), gather);
    }

    /// The general `unmap`, in two passes (see the module documentation).
    fn unmap_general<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        span: Span,
        gather: &mut Gather,
    ) -> Result<u64, PtError> {
        let root = self.root_node();
        let need = self.unmap_count(mem, root, span)?;
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
            emptied: Emptied::default(),
        };
        w.clear(root, span);
        Ok(w.finish())
    }

    /// Pass 1 of `unmap`: the frames the splits need. Only the entries holding the span's
    /// first and last byte can be partly covered, so only those two paths are walked.
    fn unmap_count<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        node: Node,
        span: Span,
    ) -> Result<u64, PtError> {
        let sz = size(node.level);
        let first = span.first & !(sz - 1);
        let last = span.last & !(sz - 1);
        let mut total = self.unmap_count_entry(mem, node, span, first)?;
        if last != first {
            total = total.saturating_add(self.unmap_count_entry(mem, node, span, last)?);
        }
        Ok(total)
    }

    /// Frames a split of `node`'s entry starting at `entry_first` needs for `span`.
    fn unmap_count_entry<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        node: Node,
        span: Span,
        entry_first: u64,
    ) -> Result<u64, PtError> {
        let entry = Span {
            first: entry_first,
            last: entry_first + (size(node.level) - 1),
        };
        let part = Span {
            first: span.first.max(entry.first),
            last: span.last.min(entry.last),
        };
        if part == entry {
            return Ok(0);
        }
        match F::decode(mem.read_u64(node.entry(entry_first)), node.level) {
            Pte::Table(t) if node.level > 0 => {
                let child = self.child(mem, node, entry_first, t);
                self.unmap_count(mem, child, part)
            }
            Pte::Leaf { phys, .. } if node.level > 0 => {
                if !self.config.split_live_blocks {
                    return Err(PtError::SplitForbidden);
                }
                Ok(self.split_frames(node.level, entry, part, phys.wrapping_sub(entry.first)))
            }
            _ => Ok(0),
        }
    }
}

impl<F: Format, M: PhysMem + ?Sized, A: FrameAlloc + ?Sized> Writer<'_, F, M, A> {
    /// Pass 2 of `unmap`: clears `span` below `node`. Returns how many entries of `node`'s
    /// table became absent (the caller updates `node`'s live count).
    pub fn clear(&mut self, node: Node, span: Span) -> u64 {
        let mut run = Run::default();
        // Only leaves and holes, each entry covered: the tight loop; else slot by slot.
        let leaves = self.clear_leaves(node, span, &mut run);
        let mut removed = leaves.unwrap_or(0);
        let slots = match leaves {
            Some(_) => None,
            None => Some(Slots::new(node, span)),
        };
        for slot in slots.into_iter().flatten() {
            match F::decode(self.mem.read_u64(slot.pa), node.level) {
                Pte::Absent => {}
                Pte::Leaf { .. } if slot.covered() => {
                    self.mem.write_u64(slot.pa, 0);
                    self.pt.counters.leaf_writes += 1;
                    self.changes.leaf(slot.entry, size(node.level));
                    self.changes.unmapped += slot.entry.last - slot.entry.first + 1;
                    run.note(slot.pa);
                    removed += 1;
                }
                Pte::Leaf { phys, perms } if node.level > 0 => {
                    self.split(node, slot, phys, perms);
                    run.note(slot.pa);
                }
                Pte::Table(t) if node.level > 0 => {
                    let child = self.pt.child(self.mem, node, slot.entry.first, t);
                    let n = self.clear(child, slot.part);
                    let left = if n > 0 {
                        bump(self.mem, node, slot.entry.first, -(n as i64))
                    } else {
                        let w = self.mem.read_u64(slot.shadow_word(node));
                        super::lifetime::Meta(w).count()
                    };
                    if left == 0 {
                        if slot.covered() {
                            self.pt.unlink(
                                self.mem,
                                self.alloc,
                                node,
                                slot.entry.first,
                                self.gather,
                            );
                            self.pt.forget_path();
                            removed += 1;
                        } else if n > 0 {
                            self.emptied.note(slot.entry.first, child.level);
                        }
                    }
                }
                _ => {}
            }
        }
        // A table the span covers whole is about to be unlinked: no walker needs its clears.
        let whole = node.level < self.pt.top() && covers(span, node.level + 1);
        if !self.pt.config.coherent && !whole {
            run.sync(self.mem);
        }
        removed
    }

    /// `clear` of a table where the span's ends lie on the level's entry boundaries (every
    /// entry covered whole) and no entry it touches is a table: the leaves cleared in one
    /// tight loop, the changes and the run recorded once. `None`, with nothing written,
    /// otherwise (the slot-by-slot loop decides: tables below, leaves to split).
    #[inline]
    fn clear_leaves(&mut self, node: Node, span: Span, run: &mut Run) -> Option<u64> {
        let level = node.level;
        if !covers(span, level) {
            return None;
        }
        let sz = size(level);
        let (first, n) = node.entries(span);
        if level > 0 && !no_table::<F, M>(&*self.mem, first, n, level) {
            return None;
        }
        let Some((a, b, cleared)) = clear_entries::<F, M>(self.mem, first, n, level) else {
            return Some(0);
        };
        self.pt.counters.leaf_writes += cleared;
        let at = span.first + a * sz;
        self.changes.leaf(
            Span {
                first: at,
                last: at + ((b - a + 1) * sz - 1),
            },
            sz,
        );
        self.changes.unmapped += cleared * sz;
        run.note(first + a * ENTRY_BYTES);
        run.note(first + b * ENTRY_BYTES);
        Some(cleared)
    }
}

/// Clears the leaves among the `n` entries of level `level` from the entry address `first`
/// (absent entries are left, the caller has made sure none is a table): the indices (from
/// `first`) of the first and the last entry cleared, and how many; `None` when there was no
/// leaf. The loop of every road of unmap.
#[inline(always)]
fn clear_entries<F: Format, M: PhysMem + ?Sized>(
    mem: &mut M,
    first: PhysAddr,
    n: u64,
    level: u8,
) -> Option<(u64, u64, u64)> {
    let (mut a, mut b, mut cleared) = (0, 0, 0u64);
    for i in 0..n {
        let pa = first + i * ENTRY_BYTES;
        let e = mem.read_u64(pa);
        if e != 0 && matches!(F::decode(e, level), Pte::Leaf { .. }) {
            mem.write_u64(pa, 0);
            if cleared == 0 {
                a = i;
            }
            b = i;
            cleared += 1;
        }
    }
    (cleared > 0).then_some((a, b, cleared))
}

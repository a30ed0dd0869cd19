//! Splitting a large leaf that an unmap covers only partly, without a window in which the
//! pages that stay mapped disappear: the replacement table (and whatever it needs below it)
//! is built completely while no walker can reach it, cleaned to memory for a non-coherent
//! walker, and installed over the leaf with one publishing store. The old leaf's whole span
//! goes into the gather, since a unit may cache it as one translation.

use super::lifetime::Meta;
use super::map::{Dest, Fill, Writer};
use super::table::PageTable;
use super::walk::{Node, Slot, size};
use super::{Format, Perms, Span};
use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem};

impl<F: Format> PageTable<F> {
    /// Frames a split of the leaf at `level` over `entry` needs when `hole` (inside it, not
    /// all of it) is unmapped; the leaf maps `entry.first + delta`.
    pub(super) fn split_frames(&self, level: u8, entry: Span, hole: Span, delta: u64) -> u64 {
        Self::table_cost(level - 1).saturating_add(self.kept_cost(level - 1, entry, hole, delta))
    }

    /// Frames needed below a new table at `level` that covers `outer` and is filled with all
    /// of it except `hole` (inside `outer`, not all of it). Only the entries holding the
    /// hole's ends differ from [`Self::fresh_cost`].
    fn kept_cost(&self, level: u8, outer: Span, hole: Span, delta: u64) -> u64 {
        let sz = size(level);
        let a = hole.first & !(sz - 1);
        let b = (hole.last & !(sz - 1)) + (sz - 1);
        let mut n = 0u64;
        if a > outer.first {
            let kept = Span {
                first: outer.first,
                last: a - 1,
            };
            n = n.saturating_add(self.fresh_cost(level, kept, delta));
        }
        if b < outer.last {
            let kept = Span {
                first: b + 1,
                last: outer.last,
            };
            n = n.saturating_add(self.fresh_cost(level, kept, delta));
        }
        // A kept part of an entry holding an end of the hole always needs a table below it.
        let part = |first: u64, last: u64| {
            Self::table_cost(level - 1).saturating_add(self.fresh_cost(
                level - 1,
                Span { first, last },
                delta,
            ))
        };
        if b - a == sz - 1 {
            // The hole lies in one entry: that entry is split again, unless the hole is all
            // of it (then it simply stays absent).
            if (hole.first != a || hole.last != b) && level > 0 {
                let entry = Span { first: a, last: b };
                n = n.saturating_add(self.split_frames(level, entry, hole, delta));
            }
        } else {
            if hole.first != a {
                n = n.saturating_add(part(a, hole.first - 1));
            }
            if hole.last != b {
                n = n.saturating_add(part(hole.last + 1, b));
            }
        }
        n
    }
}

impl<F: Format, M: PhysMem + ?Sized, A: FrameAlloc + ?Sized> Writer<'_, F, M, A> {
    /// Replaces the leaf in `slot` of `node` (mapping `phys` with `perms`) by a table holding
    /// every part of it except `slot.part`, installed with one publishing store.
    pub fn split(&mut self, node: Node, slot: Slot, phys: PhysAddr, perms: Perms) {
        let level = node.level - 1;
        let shadow = if level > 0 {
            self.pool.take(self.mem)
        } else {
            0
        };
        let new = Node {
            table: self.pool.take(self.mem),
            shadow,
            level,
        };
        let fill = Fill {
            delta: phys.wrapping_sub(slot.entry.first),
            perms,
        };
        // The leaves written into the replacement translate as the old leaf did: they are
        // not changes for the gather (the old leaf's whole span is recorded below).
        let outer = core::mem::take(&mut self.changes);
        let mut count = 0;
        if slot.part.first > slot.entry.first {
            let kept = Span {
                first: slot.entry.first,
                last: slot.part.first - 1,
            };
            count += self.fill(new, kept, fill, Dest::NewUnsynced);
        }
        if slot.part.last < slot.entry.last {
            // May share sub-tables with the first part (around the hole): reads what the
            // first fill wrote.
            let kept = Span {
                first: slot.part.last + 1,
                last: slot.entry.last,
            };
            count += self.fill(new, kept, fill, Dest::Unlinked);
        }
        self.changes = outer;
        if !self.pt.config.coherent {
            self.mem.sync_for_device(new.table, PAGE_SIZE);
        }
        let word = slot.shadow_word(node);
        self.mem.write_u64(word, Meta::new(new.shadow, count).0);
        self.mem
            .publish_u64(slot.pa, F::encode_table(new.table, node.level));
        self.pt.counters.table_writes += 1;
        // The old leaf may be cached for its whole span: invalidate it as such.
        self.changes.leaf(slot.entry, size(node.level));
        self.changes.unmapped += slot.part.last - slot.part.first + 1;
    }
}

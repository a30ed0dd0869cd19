//! Table lifetime: live-entry counts kept in the shadow tables, the reserve of empty tables
//! that stay linked, unlinking, and the frame pool that makes a call all-or-nothing.
//!
//! See the module documentation of [`crate::pagetable`] (*Table lifetime*) for the policy and
//! its worst case.

use super::table::PageTable;
use super::walk::{ENTRY_BYTES, Node, size};
use super::{Format, Gather, Pte};
use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem};

/// Tables that became empty and stay linked, per [`PageTable`] (see *Table lifetime*).
pub const RESERVE: usize = 8;

/// One shadow word: what the engine knows about the child table a table entry points to.
///
/// Bits 9:0, the child's live count (0..=512); bit 10, the child is (or was) in the reserve;
/// bits 63:12, the child's shadow frame (level >= 1), else 0. An absent entry's word is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta(pub u64);

impl Meta {
    const COUNT: u64 = 0x3ff;
    const RESERVED: u64 = 1 << 10;
    const SHADOW: u64 = !0xfff;

    /// A new child's word: its shadow and its live count.
    #[inline(always)]
    pub const fn new(shadow: PhysAddr, count: u64) -> Meta {
        Meta(shadow | count)
    }
    /// The child's live count.
    #[inline(always)]
    pub const fn count(self) -> u64 {
        self.0 & Self::COUNT
    }
    /// The child's shadow frame (0 for a level-0 child).
    #[inline(always)]
    pub const fn shadow(self) -> PhysAddr {
        self.0 & Self::SHADOW
    }
    /// Whether the child has a key in the reserve.
    #[inline(always)]
    pub const fn reserved(self) -> bool {
        self.0 & Self::RESERVED != 0
    }
    /// The same word with the count changed to `count`.
    #[inline(always)]
    pub const fn with_count(self, count: u64) -> Meta {
        Meta((self.0 & !Self::COUNT) | count)
    }
}

/// The reserve: keys (`table span's first byte | level`) of tables that became empty while
/// the range covered them only partly. A ring; the oldest key leaves first.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reserve {
    keys: [u64; RESERVE],
    head: usize,
    len: usize,
}

impl Reserve {
    pub const fn new() -> Self {
        Reserve {
            keys: [0; RESERVE],
            head: 0,
            len: 0,
        }
    }
    /// Adds `key`; returns the key that had to leave to make room.
    fn push(&mut self, key: u64) -> Option<u64> {
        let out = if self.len == RESERVE {
            let old = self.keys[self.head];
            self.head = (self.head + 1) % RESERVE;
            self.len -= 1;
            Some(old)
        } else {
            None
        };
        self.keys[(self.head + self.len) % RESERVE] = key;
        self.len += 1;
        out
    }
    /// How many keys it holds.
    pub const fn len(&self) -> usize {
        self.len
    }
    /// Removes and returns the oldest key.
    fn pop(&mut self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let k = self.keys[self.head];
        self.head = (self.head + 1) % RESERVE;
        self.len -= 1;
        Some(k)
    }
}

/// A key: the first byte of the table's span, with its level in the low bits (a table's span
/// is at least 2 MiB aligned).
#[inline]
pub(super) const fn key(iova: u64, level: u8) -> u64 {
    (iova & !(size(level + 1) - 1)) | level as u64
}

/// Tables one unmap left empty although the range covered them only partly: at most the two
/// ends of the range at each level below the root.
#[derive(Default)]
pub(super) struct Emptied {
    keys: [u64; 2 * super::walk::MAX_LEVELS],
    len: usize,
}

impl Emptied {
    pub fn note(&mut self, iova: u64, level: u8) {
        debug_assert!(self.len < self.keys.len());
        if let Some(k) = self.keys.get_mut(self.len) {
            *k = key(iova, level);
            self.len += 1;
        }
    }
}

impl<F: Format> PageTable<F> {
    /// The tables `emptied` names enter the reserve (each at most once); the keys that must
    /// leave to make room are evicted.
    pub(super) fn keep_emptied<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        emptied: &Emptied,
        gather: &mut Gather,
    ) {
        for &k in &emptied.keys[..emptied.len] {
            self.keep_empty(mem, alloc, k, gather);
        }
    }

    /// The empty table with key `k` (still linked) enters the reserve, unless it is there.
    pub(super) fn keep_empty<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        k: u64,
        gather: &mut Gather,
    ) {
        let Some((_, word)) = self.find_parent(mem, k) else {
            return;
        };
        let meta = Meta(mem.read_u64(word));
        if meta.reserved() || meta.count() != 0 {
            return;
        }
        if self.undoing {
            // Undoing a failed request: a table it emptied that was not kept before goes.
            self.unlink_chain(mem, alloc, k, gather);
            return;
        }
        mem.write_u64(word, meta.0 | Meta::RESERVED);
        if let Some(old) = self.reserve.push(k) {
            self.evict(mem, alloc, old, gather);
        }
    }

    /// The table with key `k`'s parent and the shadow word that describes it, if that table
    /// is still linked (a walk from the root).
    fn find_parent<M: PhysMem + ?Sized>(&self, mem: &M, k: u64) -> Option<(Node, PhysAddr)> {
        let level = (k & 7) as u8;
        let iova = k & !7;
        let mut node = self.root_node();
        while node.level > level + 1 {
            let Pte::Table(t) = F::decode(mem.read_u64(node.entry(iova)), node.level) else {
                return None;
            };
            node = self.child(mem, node, iova, t);
        }
        match F::decode(mem.read_u64(node.entry(iova)), node.level) {
            Pte::Table(_) => Some((node, node.shadow_word(iova))),
            _ => None,
        }
    }

    /// `k` leaves the reserve: its table is unlinked if it is still empty (and its parents
    /// with it while they become empty, never the root); a table reused meanwhile stays.
    fn evict<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        k: u64,
        gather: &mut Gather,
    ) {
        let Some((_, word)) = self.find_parent(mem, k) else {
            return;
        };
        let meta = Meta(mem.read_u64(word));
        if meta.count() != 0 {
            mem.write_u64(word, meta.0 & !Meta::RESERVED);
            return;
        }
        self.unlink_chain(mem, alloc, k, gather);
    }

    /// Unlinks the empty table with key `k`, then its parents while they become empty (never
    /// the root; when undoing, never a parent that was in the reserve before).
    fn unlink_chain<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        k: u64,
        gather: &mut Gather,
    ) {
        let iova = k & !7;
        let mut level = (k & 7) as u8 + 1;
        // Walk down again, remembering the nodes, then unlink bottom-up.
        let mut nodes = [self.root_node(); super::walk::MAX_LEVELS];
        let mut node = self.root_node();
        while node.level > level {
            nodes[usize::from(node.level)] = node;
            let Pte::Table(t) = F::decode(mem.read_u64(node.entry(iova)), node.level) else {
                return;
            };
            node = self.child(mem, node, iova, t);
        }
        nodes[usize::from(node.level)] = node;
        loop {
            let parent = nodes[usize::from(level)];
            self.unlink(mem, alloc, parent, iova, gather);
            if level == self.top() {
                break;
            }
            let grand = nodes[usize::from(level) + 1];
            if bump(mem, grand, iova, -1) != 0 {
                break;
            }
            if self.undoing && Meta(mem.read_u64(grand.shadow_word(iova))).reserved() {
                break;
            }
            level += 1;
        }
        self.forget_path();
    }

    /// Unlinks the empty child table of `parent`'s entry for `iova`: clears the entry and its
    /// shadow word, frees the child's shadow, hands the child's frame to the gather, and
    /// records the removal. The caller updates `parent`'s own live count (one entry less).
    pub(super) fn unlink<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        parent: Node,
        iova: u64,
        gather: &mut Gather,
    ) {
        let pa = parent.entry(iova);
        let Pte::Table(child) = F::decode(mem.read_u64(pa), parent.level) else {
            debug_assert!(false, "unlink of a non-table entry");
            return;
        };
        let word = parent.shadow_word(iova);
        let meta = Meta(mem.read_u64(word));
        debug_assert_eq!(meta.count(), 0, "unlink of a table that is not empty");
        mem.write_u64(pa, 0);
        mem.write_u64(word, 0);
        if meta.shadow() != 0 {
            alloc.free_frame(meta.shadow());
            self.counters.frames_freed += 1;
        }
        gather.defer_free(mem, child);
        gather.note_table_removed();
        // A page of the removed table's span: paging-structure caches drop the whole walk.
        let first = iova & !(size(parent.level) - 1);
        gather.add_span(first, first + (PAGE_SIZE - 1), PAGE_SIZE);
        self.counters.table_writes += 1;
        self.counters.frames_freed += 1;
        if !self.config.coherent {
            mem.sync_for_device(pa, ENTRY_BYTES);
        }
    }

    /// Whether the subtree below `child` (whose live count is `count`) holds no leaf: only
    /// empty tables kept by the reserve and the parents that hold nothing else. A table with
    /// more than [`RESERVE`] entries, or a level-0 table with any, holds a leaf; otherwise its
    /// few entries are read. Used only when a map could put one large leaf where such a
    /// subtree sits.
    pub(super) fn leafless<M: PhysMem + ?Sized>(&self, mem: &M, child: Node, count: u64) -> bool {
        if count == 0 {
            return true;
        }
        if child.level == 0 || count > RESERVE as u64 {
            return false;
        }
        let span = size(child.level);
        let mut seen = 0;
        for i in 0..super::walk::ENTRIES {
            let e = mem.read_u64(child.table + i * ENTRY_BYTES);
            if e == 0 {
                continue;
            }
            let Pte::Table(t) = F::decode(e, child.level) else {
                return false;
            };
            let iova = i * span;
            let grand = self.child(mem, child, iova, t);
            let c = Meta(mem.read_u64(child.shadow_word(iova))).count();
            if !self.leafless(mem, grand, c) {
                return false;
            }
            seen += 1;
            if seen == count {
                break;
            }
        }
        true
    }

    /// Unlinks the leafless subtree below `parent`'s entry for `iova` (see
    /// [`Self::leafless`]), bottom-up, every table into the gather. The caller updates
    /// `parent`'s live count.
    pub(super) fn discard<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        parent: Node,
        iova: u64,
        gather: &mut Gather,
    ) {
        let Pte::Table(t) = F::decode(mem.read_u64(parent.entry(iova)), parent.level) else {
            return;
        };
        let child = self.child(mem, parent, iova, t);
        if child.level > 0 {
            let base = iova & !(size(parent.level) - 1);
            for i in 0..super::walk::ENTRIES {
                let e = mem.read_u64(child.table + i * ENTRY_BYTES);
                if let Pte::Table(_) = F::decode(e, child.level) {
                    let at = base + i * size(child.level);
                    self.discard(mem, alloc, child, at, gather);
                    bump(mem, parent, iova, -1);
                }
            }
        }
        self.unlink(mem, alloc, parent, iova, gather);
        self.forget_path();
    }

    /// Unlinks every table in the reserve that is still empty (and the parents that become
    /// empty with them), handing their frames to `gather`: everything the reserve held goes
    /// back to the caller's quota after the invalidation. Returns how many keys were taken.
    pub fn reclaim<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        gather: &mut Gather,
    ) -> usize {
        let mut n = 0;
        while let Some(k) = self.reserve.pop() {
            self.evict(mem, alloc, k, gather);
            n += 1;
        }
        n
    }

    /// Frames one new table at `level` costs: the table, and its shadow at level >= 1.
    #[inline]
    pub(super) const fn table_cost(level: u8) -> u64 {
        if level > 0 { 2 } else { 1 }
    }
}

/// Adds `delta` to the live count that `holder`'s shadow keeps for its entry translating
/// `iova` (the count of the child table there); returns the new count.
#[inline(always)]
pub(super) fn bump<M: PhysMem + ?Sized>(mem: &mut M, holder: Node, iova: u64, delta: i64) -> u64 {
    bump_at(mem, holder.shadow_word(iova), delta).count()
}

/// [`bump`] on the shadow word at `word`, returning the whole new word (count and reserve
/// bit), so that a caller can tell an emptied table already in the reserve without reading
/// the word again.
#[inline(always)]
pub(super) fn bump_at<M: PhysMem + ?Sized>(mem: &mut M, word: PhysAddr, delta: i64) -> Meta {
    let meta = Meta(mem.read_u64(word));
    let count = meta.count().wrapping_add_signed(delta);
    debug_assert!(count <= 512, "live count out of range");
    let meta = meta.with_count(count);
    mem.write_u64(word, meta.0);
    meta
}

/// Pre-allocated frames for one call's writing pass. The first few are kept inline; the rest
/// are chained through their first word (they are not linked into any table yet, so no walker
/// reads them), which keeps any number of frames without memory of our own.
pub(super) struct FramePool {
    inline: [PhysAddr; FramePool::INLINE],
    n_inline: usize,
    chain: PhysAddr,
    n_chain: u64,
}

impl FramePool {
    const INLINE: usize = 8;

    pub const fn new() -> Self {
        FramePool {
            inline: [0; FramePool::INLINE],
            n_inline: 0,
            chain: 0,
            n_chain: 0,
        }
    }

    /// Allocates `n` frames, or none at all: on failure the frames obtained are freed in
    /// reverse order (so a LIFO allocator returns to its previous state) and `false`.
    pub fn fill<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        n: u64,
    ) -> bool {
        for _ in 0..n {
            match alloc.alloc_frame() {
                Some(frame) => {
                    debug_assert_ne!(frame, 0, "FrameAlloc returned frame 0 (see its contract)");
                    self.push(mem, frame)
                }
                None => {
                    self.release(mem, alloc);
                    return false;
                }
            }
        }
        true
    }

    fn push<M: PhysMem + ?Sized>(&mut self, mem: &mut M, frame: PhysAddr) {
        if self.n_inline < Self::INLINE {
            self.inline[self.n_inline] = frame;
            self.n_inline += 1;
        } else {
            if self.n_chain > 0 {
                mem.write_u64(frame, self.chain);
            }
            self.chain = frame;
            self.n_chain += 1;
        }
    }

    /// Takes the most recently added frame, all zero again.
    pub fn take<M: PhysMem + ?Sized>(&mut self, mem: &mut M) -> PhysAddr {
        if self.n_chain > 0 {
            let frame = self.chain;
            self.n_chain -= 1;
            if self.n_chain > 0 {
                self.chain = mem.read_u64(frame);
                mem.write_u64(frame, 0);
            }
            frame
        } else if self.n_inline > 0 {
            self.n_inline -= 1;
            self.inline[self.n_inline]
        } else {
            // Pass 1 counted every frame pass 2 takes; the suites check the two agree.
            panic!("frame pool exhausted: pass 1 and pass 2 disagree")
        }
    }

    /// Frees every frame still held, most recent first. Returns how many.
    pub fn release<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
    ) -> u64 {
        let mut n = 0;
        while self.n_chain > 0 || self.n_inline > 0 {
            let frame = self.take(mem);
            alloc.free_frame(frame);
            n += 1;
        }
        n
    }
}

//! Walking: level arithmetic, the entries a span touches, the remembered path, and the
//! read-only walks (query, find_free).

use super::table::PageTable;
use super::{FindFree, Format, PtError, Pte, Span, Translation};
use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem};

/// Bytes per table entry in every supported format.
pub(super) const ENTRY_BYTES: u64 = 8;
/// Entries per (non-top) table.
pub(super) const ENTRIES: u64 = 512;
/// The most levels any 64-bit input space can need with 9 index bits per level.
pub(super) const MAX_LEVELS: usize = 6;

/// Shift of the address bits that index a table at `level`.
#[inline(always)]
pub(super) const fn shift(level: u8) -> u32 {
    12 + 9 * level as u32
}

/// Bytes mapped by one entry at `level` (level < 6, so this never overflows).
#[inline(always)]
pub(super) const fn size(level: u8) -> u64 {
    1u64 << shift(level)
}

/// Index, in a table at `level`, of the entry that translates `iova`.
#[inline(always)]
pub(super) const fn index(iova: u64, level: u8) -> u64 {
    (iova >> shift(level)) & (ENTRIES - 1)
}

/// Physical address of the entry of `table` (at `level`) that translates `iova`.
#[inline(always)]
pub(super) const fn entry_addr(table: PhysAddr, iova: u64, level: u8) -> PhysAddr {
    table + index(iova, level) * ENTRY_BYTES
}

/// Whether both ends of `span` lie on `level`'s entry boundaries: every entry at `level` it
/// touches, it covers whole (for a span inside one entry: whether it covers all of it; the
/// span may also cross tables).
#[inline]
pub(super) const fn covers(span: Span, level: u8) -> bool {
    let m = size(level) - 1;
    span.first & m == 0 && span.last & m == m
}

/// Whether the `n` entries from the entry address `first` are all zero (absent, as the
/// engine writes them).
#[inline(always)]
pub(super) fn all_zero<M: PhysMem + ?Sized>(mem: &M, first: PhysAddr, n: u64) -> bool {
    (0..n).all(|i| mem.read_u64(first + i * ENTRY_BYTES) == 0)
}

/// Whether none of the `n` entries of level `level` from the entry address `first` is a
/// table.
#[inline(always)]
pub(super) fn no_table<F: Format, M: PhysMem + ?Sized>(
    mem: &M,
    first: PhysAddr,
    n: u64,
    level: u8,
) -> bool {
    (0..n).all(|i| {
        let e = mem.read_u64(first + i * ENTRY_BYTES);
        e == 0 || !matches!(F::decode(e, level), Pte::Table(_))
    })
}

/// Whether `span` lies inside one entry at `level`.
#[inline]
pub(super) const fn in_one_entry(span: Span, level: u8) -> bool {
    (span.first ^ span.last) >> shift(level) == 0
}

/// The level of the leaves a run road uses for a range whose addresses and length have the
/// bits `bits` (`iova | len`, and `| phys` for a map): the largest level whose size divides
/// them all, at most 3 (512 GiB).
#[inline(always)]
pub(super) const fn run_level(bits: u64) -> u8 {
    let l = bits.trailing_zeros().saturating_sub(12) / 9;
    if l > 3 { 3 } else { l as u8 }
}

/// `v` rounded up to a multiple of the power of two `align`, or `None` on overflow.
#[inline]
pub(super) fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// One table as the engine holds it while working on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Node {
    /// The table frame.
    pub table: PhysAddr,
    /// Its shadow (level >= 1), where its children's live counts are kept; 0 at level 0.
    pub shadow: PhysAddr,
    /// Its level.
    pub level: u8,
}

impl Node {
    /// The entry translating `iova`.
    #[inline(always)]
    pub fn entry(&self, iova: u64) -> PhysAddr {
        entry_addr(self.table, iova, self.level)
    }
    /// The entries `span` (which lies inside this table's span) touches: the first one's
    /// address and how many.
    #[inline(always)]
    pub fn entries(&self, span: Span) -> (PhysAddr, u64) {
        let n = index(span.last, self.level) - index(span.first, self.level) + 1;
        (self.entry(span.first), n)
    }
    /// The shadow word of the entry translating `iova` (level >= 1 only).
    #[inline(always)]
    pub fn shadow_word(&self, iova: u64) -> PhysAddr {
        debug_assert!(self.level > 0 && self.shadow != 0);
        entry_addr(self.shadow, iova, self.level)
    }
}

/// One entry as a span touches it (see the glossary: a slot).
#[derive(Clone, Copy)]
pub(super) struct Slot {
    /// Address of the entry.
    pub pa: PhysAddr,
    /// The entry's own span.
    pub entry: Span,
    /// The part of the range inside the entry.
    pub part: Span,
}

impl Slot {
    /// Whether the range covers the whole entry.
    #[inline]
    pub fn covered(&self) -> bool {
        self.part == self.entry
    }
    /// The shadow word of this entry in `node`'s shadow.
    #[inline]
    pub fn shadow_word(&self, node: Node) -> PhysAddr {
        node.shadow + (self.pa - node.table)
    }
}

/// The slots of one table that a span touches, in order.
pub(super) struct Slots {
    pa: PhysAddr,
    entry_first: u64,
    span: Span,
    size: u64,
    done: bool,
}

impl Slots {
    /// The slots of `node`'s table touched by `span` (which lies inside the table's span).
    pub fn new(node: Node, span: Span) -> Self {
        let size = size(node.level);
        Slots {
            pa: node.entry(span.first),
            entry_first: span.first & !(size - 1),
            span,
            size,
            done: false,
        }
    }
}

impl Iterator for Slots {
    type Item = Slot;
    #[inline]
    fn next(&mut self) -> Option<Slot> {
        if self.done {
            return None;
        }
        let entry = Span {
            first: self.entry_first,
            last: self.entry_first + (self.size - 1),
        };
        let slot = Slot {
            pa: self.pa,
            entry,
            part: Span {
                first: self.span.first.max(entry.first),
                last: self.span.last.min(entry.last),
            },
        };
        if entry.last >= self.span.last {
            self.done = true;
        } else {
            self.entry_first = entry.last + 1;
            self.pa += ENTRY_BYTES;
        }
        Some(slot)
    }
}

/// The path of tables (and their shadows) from the root down to the table last walked,
/// remembered inside [`PageTable`] (a few words, no allocation) so that the next call in the
/// same region starts where the last one ended instead of at the root: a software
/// paging-structure cache.
///
/// `node[l]` for `l >= depth` is the table at level `l` on the way to `iova`. It cannot go
/// stale: only this engine writes its tables, map never changes a table pointer, a split
/// replaces a leaf (never on a path), and every unlinking of a table forgets the path below the
/// root. Debug builds check every use against a real walk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Path {
    /// An address inside the lowest remembered table's span.
    pub iova: u64,
    /// Lowest level whose table is remembered (`top`: only the root).
    pub depth: u8,
    /// The remembered tables, by level.
    pub node: [Node; MAX_LEVELS],
}

impl Path {
    /// A path holding only the root.
    pub fn root(root: Node) -> Self {
        let mut node = [Node {
            table: 0,
            shadow: 0,
            level: 0,
        }; MAX_LEVELS];
        node[usize::from(root.level)] = root;
        Path {
            iova: 0,
            depth: root.level,
            node,
        }
    }
}

impl<F: Format> PageTable<F> {
    /// The lowest remembered table whose span holds all of `span` (the root if none lower).
    #[inline(always)]
    pub(super) fn path_start<M: PhysMem + ?Sized>(&self, mem: &M, span: Span) -> Node {
        let top = self.top();
        let mut level = self.path.depth;
        while level < top {
            let s = shift(level + 1);
            if (span.first ^ self.path.iova) >> s == 0 && (span.last ^ self.path.iova) >> s == 0 {
                break;
            }
            level += 1;
        }
        let node = self.path.node[usize::from(level)];
        if cfg!(debug_assertions) {
            self.check_path(mem, span.first, node);
        }
        node
    }

    /// Whether one leaf of level `L` at `iova` lies in the table of level `L` on the remembered
    /// path, and `iova` is aligned to that leaf (the fast roads of map and unmap). `L` is a
    /// constant so that every shift and mask of the level folds.
    #[inline(always)]
    pub(super) fn leaf_on_path<const L: u8>(&self, iova: u64) -> bool {
        let top = self.top();
        let in_table = L == top || (L < top && (iova ^ self.path.iova) >> shift(L + 1) == 0);
        L >= self.path.depth && in_table && iova & (size(L) - 1) == 0
    }

    /// Whether `span` (its ends multiples of `size(L)`) lies in the level-`L` table of the
    /// remembered path without covering all of it (a table covered whole is the general
    /// road's business: unlinked by an unmap, replaced by a larger leaf by a map); the run
    /// roads of map and unmap.
    #[inline(always)]
    pub(super) fn run_on_path<const L: u8>(&self, span: Span) -> bool {
        let top = self.top();
        if L > top || L < self.path.depth {
            return false;
        }
        L == top
            || (((span.first ^ self.path.iova) | (span.last ^ self.path.iova)) >> shift(L + 1) == 0
                && span.last - span.first < size(L + 1) - 1)
    }

    /// The one-leaf roads' entry: if one leaf of level `L` at `iova` lies in the level-`L`
    /// table of the remembered path ([`Self::leaf_on_path`]), the address of its entry.
    #[inline(always)]
    pub(super) fn leaf_entry<const L: u8, M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        iova: u64,
    ) -> Option<PhysAddr> {
        if !self.leaf_on_path::<L>(iova) {
            return None;
        }
        let node = self.path.node[usize::from(L)];
        debug_assert_eq!(node.level, L);
        if cfg!(debug_assertions) {
            self.path_start(mem, Span::of(iova, size(L)).expect("checked"));
        }
        Some(entry_addr(node.table, iova, L))
    }

    /// The run roads' entries: if `span` (its ends multiples of `size(L)`) lies in the
    /// level-`L` table of the remembered path without covering it whole
    /// ([`Self::run_on_path`]), the address of the first entry it touches there and how many
    /// it touches.
    #[inline(always)]
    pub(super) fn run_entries<const L: u8, M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        span: Span,
    ) -> Option<(PhysAddr, u64)> {
        if !self.run_on_path::<L>(span) {
            return None;
        }
        let node = self.path.node[usize::from(L)];
        debug_assert_eq!(node.level, L);
        if cfg!(debug_assertions) {
            self.path_start(mem, span);
        }
        // The level as the constant `L` (not `node.entries`'s run-time level): the shifts fold.
        let first = entry_addr(node.table, span.first, L);
        Some((first, index(span.last, L) - index(span.first, L) + 1))
    }

    /// Remembers `node` (reached on the way to `iova`) as the lowest table of the path; the
    /// tables above it must already be in `self.path.node`.
    #[inline(always)]
    pub(super) fn remember(&mut self, iova: u64, node: Node) {
        self.path.iova = iova;
        self.path.depth = node.level;
        self.path.node[usize::from(node.level)] = node;
    }

    /// Forgets every remembered table but the root (after any table was unlinked).
    #[inline]
    pub(super) fn forget_path(&mut self) {
        self.path.depth = self.top();
    }

    /// Debug check: `node` is the table a real walk for `iova` reaches at its level, with the
    /// shadow its parent's shadow names.
    fn check_path<M: PhysMem + ?Sized>(&self, mem: &M, iova: u64, node: Node) {
        let mut cur = self.root_node();
        while cur.level > node.level {
            let child = match F::decode(mem.read_u64(cur.entry(iova)), cur.level) {
                Pte::Table(t) => t,
                other => panic!("stale path: {other:?} at level {}", cur.level),
            };
            cur = self.child(mem, cur, iova, child);
        }
        assert_eq!(cur, node, "stale path at level {}", node.level);
    }

    /// The child table `child` that `parent`'s entry for `iova` points to, with its shadow.
    #[inline(always)]
    pub(super) fn child<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        parent: Node,
        iova: u64,
        child: PhysAddr,
    ) -> Node {
        let level = parent.level - 1;
        let shadow = if level > 0 {
            super::lifetime::Meta(mem.read_u64(parent.shadow_word(iova))).shadow()
        } else {
            0
        };
        Node {
            table: child,
            shadow,
            level,
        }
    }

    /// What `iova` translates to.
    pub fn query<M: PhysMem + ?Sized>(&self, mem: &M, iova: u64) -> Option<Translation> {
        if iova > self.last_iova {
            return None;
        }
        let mut table = self.root;
        let mut level = self.top();
        loop {
            match F::decode(mem.read_u64(entry_addr(table, iova, level)), level) {
                Pte::Absent => return None,
                Pte::Leaf { phys, perms } => {
                    let sz = size(level);
                    return Some(Translation {
                        phys: phys | (iova & (sz - 1)),
                        perms,
                        leaf_size: sz,
                    });
                }
                Pte::Table(t) => {
                    if level == 0 {
                        return None;
                    }
                    table = t;
                    level -= 1;
                }
            }
        }
    }

    /// The lowest `align`-aligned IOVA at or above `within.first` such that the `len` bytes
    /// from it lie inside `within` and none of them is mapped. Walks the table (no second copy
    /// of the space).
    ///
    /// `within` is clamped to the table's address space. Errors: `Misaligned` when `align` is
    /// not a power of two or below 4 KiB, or `len` is not a 4 KiB multiple; `ZeroLength`. Each
    /// step looks through the candidate window from its end for the last mapped leaf and jumps
    /// past it, skipping empty subtrees and whole leaves at once.
    pub fn find_free<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        search: FindFree,
    ) -> Result<Option<u64>, PtError> {
        let FindFree { len, align, within } = search;
        if !align.is_power_of_two() || align < PAGE_SIZE || len % PAGE_SIZE != 0 {
            return Err(PtError::Misaligned);
        }
        if len == 0 {
            return Err(PtError::ZeroLength);
        }
        let last = within.last.min(self.last_iova);
        let Some(mut cand) = align_up(within.first, align) else {
            return Ok(None);
        };
        loop {
            let Some(window) = Span::of(cand, len) else {
                return Ok(None);
            };
            if window.last > last {
                return Ok(None);
            }
            match self.last_mapped(mem, self.root, self.top(), window) {
                None => return Ok(Some(cand)),
                Some(end) => {
                    let Some(next) = end.checked_add(1).and_then(|n| align_up(n, align)) else {
                        return Ok(None);
                    };
                    cand = next;
                }
            }
        }
    }

    /// The last byte of the highest leaf that maps any page of `span`, if any.
    fn last_mapped<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        table: PhysAddr,
        level: u8,
        span: Span,
    ) -> Option<u64> {
        let sz = size(level);
        let first = span.first & !(sz - 1);
        let mut entry_first = span.last & !(sz - 1);
        loop {
            let entry_last = entry_first + (sz - 1);
            match F::decode(mem.read_u64(entry_addr(table, entry_first, level)), level) {
                Pte::Leaf { .. } => return Some(entry_last),
                Pte::Table(t) if level > 0 => {
                    let part = Span {
                        first: span.first.max(entry_first),
                        last: span.last.min(entry_last),
                    };
                    let found = self.last_mapped(mem, t, level - 1, part);
                    if found.is_some() {
                        return found;
                    }
                }
                _ => {}
            }
            if entry_first == first {
                return None;
            }
            entry_first -= sz;
        }
    }
}

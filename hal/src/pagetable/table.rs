//! [`PageTable`]: one I/O page table, its configuration, the checks every request passes, and
//! the whole-table operations (destroy, inspection).

use core::marker::PhantomData;

use super::lifetime::{Meta, Reserve};
use super::walk::{ENTRY_BYTES, MAX_LEVELS, Node, Path, shift, size};
use super::{Format, LeafSizes, Perms, PtError, Pte, Span};
use crate::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem};

/// How a table is built for one unit (or for every unit a domain's devices sit behind: then
/// the most restrictive value of each field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableConfig {
    /// Input address width in bits (one of the format's `ADDR_WIDTHS`).
    pub addr_width: u32,
    /// Output (physical) address width in bits the unit can emit (`UnitInfo::phys_width`). A
    /// map whose physical range reaches `2^phys_width` (or the format's `OA_BITS`, if smaller)
    /// is refused with `PhysOutOfRange`.
    pub phys_width: u32,
    /// Leaf sizes the unit allows; intersected with the levels the format allows.
    pub leaf_sizes: LeafSizes,
    /// Whether a live block may be replaced by a table in one write. When false (SMMUv3
    /// without BBML2), an unmap that must split a block fails with `SplitForbidden`.
    pub split_live_blocks: bool,
    /// Whether the walker snoops CPU caches; when false every table write is followed by
    /// `PhysMem::sync_for_device` before it can matter to the walker.
    pub coherent: bool,
}

/// What one IOVA translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Translation {
    /// Physical address of the queried IOVA (not of the leaf's start).
    pub phys: PhysAddr,
    /// Permissions of the leaf.
    pub perms: Perms,
    /// Size of the leaf that maps it, in bytes.
    pub leaf_size: u64,
}

/// Counters of the work a table did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Counters {
    /// Leaf entries written (set or cleared).
    pub leaf_writes: u64,
    /// Non-leaf (table pointer) entries written (set or cleared).
    pub table_writes: u64,
    /// Frames allocated (tables and shadows).
    pub frames_allocated: u64,
    /// Frames handed back (directly, or queued in a gather).
    pub frames_freed: u64,
}

/// One table as [`PageTable::visit_tables`] reports it, for audits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableVisit {
    /// The table frame.
    pub table: PhysAddr,
    /// Its level.
    pub level: u8,
    /// Its shadow frame (level >= 1), else `None`.
    pub shadow: Option<PhysAddr>,
    /// Its live count as the engine keeps it (`None` for the root, whose count is not kept).
    pub live_count: Option<u64>,
    /// Whether it has a key in the reserve.
    pub reserved: bool,
}

/// One I/O page table.
#[derive(Debug)]
pub struct PageTable<F: Format> {
    pub(super) root: PhysAddr,
    pub(super) root_shadow: PhysAddr,
    pub(super) levels: u8,
    pub(super) config: TableConfig,
    pub(super) counters: Counters,
    /// Bit `n` set: leaves are written at engine level `n` (config ∩ format ∩ table height).
    pub(super) leaf_levels: u8,
    /// Last valid IOVA: `2^addr_width - 1`, or `2^(addr_width - 1) - 1` for a
    /// [`Format::SIGN_EXTENDED`] format.
    pub(super) last_iova: u64,
    /// Last valid output address: the smaller of `2^phys_width` and `2^F::OA_BITS`, minus 1.
    pub(super) last_phys: u64,
    /// The remembered path (see [`Path`]).
    pub(super) path: Path,
    /// Tables that became empty and stay linked (see *Table lifetime*).
    pub(super) reserve: Reserve,
    /// Inside [`PageTable::undo`]: tables emptied are unlinked, not kept.
    pub(super) undoing: bool,
    _format: PhantomData<F>,
}

impl<F: Format> PageTable<F> {
    /// Allocates an empty root table and its shadow.
    ///
    /// Fails with `BadConfig` when the format does not support `addr_width`, when
    /// `phys_width` is 0 or above 64, when `leaf_sizes` lacks 4 KiB, names a size that is not a
    /// level size, or names the size of a level of this table that may not hold leaves in this
    /// format. Sizes of levels above the table's height are ignored. Fails with `NoFrame` when
    /// the two frames cannot be allocated (nothing is kept then).
    ///
    /// The allocator must hand out frames that read as zero to the walker too (for a
    /// non-coherent walker: zeroed and cleaned to memory).
    pub fn new<A: FrameAlloc + ?Sized>(
        config: TableConfig,
        alloc: &mut A,
    ) -> Result<Self, PtError> {
        if !F::ADDR_WIDTHS.contains(&config.addr_width) || config.addr_width > 64 {
            return Err(PtError::BadConfig);
        }
        if config.phys_width == 0 || config.phys_width > 64 {
            return Err(PtError::BadConfig);
        }
        let levels = F::levels_for(config.addr_width).ok_or(PtError::BadConfig)?;
        if levels < 2 || usize::from(levels) > MAX_LEVELS {
            return Err(PtError::BadConfig);
        }
        let top_bits = config.addr_width.checked_sub(shift(levels - 1));
        if !matches!(top_bits, Some(1..=9)) {
            return Err(PtError::BadConfig);
        }
        if !config.leaf_sizes.contains(PAGE_SIZE) {
            return Err(PtError::BadConfig);
        }
        let mut leaf_levels = 0u8;
        let mut bits = config.leaf_sizes.0;
        while bits != 0 {
            let k = bits.trailing_zeros();
            bits &= bits - 1;
            if k < 12 || (k - 12) % 9 != 0 {
                return Err(PtError::BadConfig);
            }
            let level = ((k - 12) / 9) as u8;
            if level >= levels {
                continue;
            }
            if !F::leaf_allowed(level) {
                return Err(PtError::BadConfig);
            }
            leaf_levels |= 1 << level;
        }
        let root = alloc.alloc_frame().ok_or(PtError::NoFrame)?;
        let Some(root_shadow) = alloc.alloc_frame() else {
            alloc.free_frame(root);
            return Err(PtError::NoFrame);
        };
        debug_assert!(
            root != 0 && root_shadow != 0,
            "FrameAlloc returned frame 0 (see its contract)"
        );
        // Zero-extended IOVAs reach only the lower half of a sign-extended space.
        let in_bits = config.addr_width - u32::from(F::SIGN_EXTENDED);
        let out_bits = config.phys_width.min(F::OA_BITS);
        let top = Node {
            table: root,
            shadow: root_shadow,
            level: levels - 1,
        };
        Ok(PageTable {
            root,
            root_shadow,
            levels,
            config,
            counters: Counters {
                frames_allocated: 2,
                ..Counters::default()
            },
            leaf_levels,
            last_iova: last_of_bits(in_bits),
            last_phys: last_of_bits(out_bits),
            path: Path::root(top),
            reserve: Reserve::new(),
            undoing: false,
            _format: PhantomData,
        })
    }

    /// Physical address of the root table.
    pub fn root(&self) -> PhysAddr {
        self.root
    }
    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }
    /// The configuration it was built with.
    pub fn config(&self) -> TableConfig {
        self.config
    }
    /// How many empty tables the reserve keeps linked (*Table lifetime*): frames held with
    /// nothing mapped through them, which [`PageTable::reclaim`] gives back.
    pub fn reserved(&self) -> usize {
        self.reserve.len()
    }
    /// Work counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// The leaf sizes this table actually writes: the configured sizes that exist as levels
    /// of this table.
    pub fn leaf_sizes(&self) -> LeafSizes {
        let mut s = 0;
        for level in 0..self.levels {
            if self.leaf_levels & (1 << level) != 0 {
                s |= size(level);
            }
        }
        LeafSizes(s)
    }
    /// The span of IOVAs this table can map.
    pub fn iova_space(&self) -> Span {
        Span {
            first: 0,
            last: self.last_iova,
        }
    }

    #[inline(always)]
    pub(super) fn top(&self) -> u8 {
        self.levels - 1
    }

    #[inline(always)]
    pub(super) fn root_node(&self) -> Node {
        Node {
            table: self.root,
            shadow: self.root_shadow,
            level: self.top(),
        }
    }

    /// Number of entries in a table at `level` (fewer at the top for odd widths).
    pub(super) fn entries(&self, level: u8) -> u64 {
        if level == self.top() {
            1 << (self.config.addr_width - shift(level))
        } else {
            super::walk::ENTRIES
        }
    }

    /// Whether a fully covered, empty entry at `level` can become one leaf when the output
    /// address is the input address plus `delta`.
    #[inline(always)]
    pub(super) fn leafable(&self, level: u8, delta: u64) -> bool {
        self.leaf_levels & (1 << level) != 0 && delta & (size(level) - 1) == 0
    }

    /// Checks a request's `iova` and `len` (errors in the documented order): its span.
    #[inline(always)]
    pub(super) fn check_range(&self, iova: u64, len: u64) -> Result<Span, PtError> {
        if iova % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(PtError::Misaligned);
        }
        if len == 0 {
            return Err(PtError::ZeroLength);
        }
        let last = iova.checked_add(len - 1).ok_or(PtError::OutOfRange)?;
        if last > self.last_iova {
            return Err(PtError::OutOfRange);
        }
        Ok(Span { first: iova, last })
    }

    /// Visits every table reachable from the root (root first, then depth-first in IOVA
    /// order) with what the engine keeps about it, for audits: the conformance suite checks
    /// each live count against its own scan of the table.
    pub fn visit_tables<M: PhysMem + ?Sized>(&self, mem: &M, mut f: impl FnMut(TableVisit)) {
        f(TableVisit {
            table: self.root,
            level: self.top(),
            shadow: Some(self.root_shadow),
            live_count: None,
            reserved: false,
        });
        self.visit_below(mem, self.root_node(), &mut f);
    }

    fn visit_below<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        node: Node,
        f: &mut impl FnMut(TableVisit),
    ) {
        if node.level == 0 {
            return;
        }
        for i in 0..self.entries(node.level) {
            let e = mem.read_u64(node.table + i * ENTRY_BYTES);
            if let Pte::Table(t) = F::decode(e, node.level) {
                let meta = Meta(mem.read_u64(node.shadow + i * ENTRY_BYTES));
                let level = node.level - 1;
                let shadow = (level > 0).then_some(meta.shadow());
                f(TableVisit {
                    table: t,
                    level,
                    shadow,
                    live_count: Some(meta.count()),
                    reserved: meta.reserved(),
                });
                let child = Node {
                    table: t,
                    shadow: shadow.unwrap_or(0),
                    level,
                };
                self.visit_below(mem, child, f);
            }
        }
    }

    /// Frees every frame of the table (tables and shadows), root included. Call only after
    /// every device using the table is blocked and the invalidation has completed.
    pub fn destroy<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(self, mem: &mut M, alloc: &mut A) {
        self.free_tree(mem, alloc, self.root_node());
    }

    fn free_tree<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &self,
        mem: &mut M,
        alloc: &mut A,
        node: Node,
    ) {
        if node.level > 0 {
            for i in 0..self.entries(node.level) {
                let e = mem.read_u64(node.table + i * ENTRY_BYTES);
                if let Pte::Table(t) = F::decode(e, node.level) {
                    let meta = Meta(mem.read_u64(node.shadow + i * ENTRY_BYTES));
                    let child = Node {
                        table: t,
                        shadow: meta.shadow(),
                        level: node.level - 1,
                    };
                    self.free_tree(mem, alloc, child);
                }
            }
            alloc.free_frame(node.shadow);
        }
        alloc.free_frame(node.table);
    }
}

/// `2^bits - 1` (all ones for 64).
const fn last_of_bits(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

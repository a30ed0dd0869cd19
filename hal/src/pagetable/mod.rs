//! The generic radix page-table engine and its per-vendor formats.
//!
//! Callers speak in ranges. The engine maps a range with the largest leaves that the alignment
//! of `iova` and `phys`, the remaining length and the unit's [`LeafSizes`] allow; unmaps exactly
//! the pages of a range (splitting a large leaf, when needed, by building the replacement table
//! completely and installing it with one entry write); and records everything one call changed
//! in one [`Gather`], so the caller invalidates once per call, never once per page.
//!
//! The algorithm exists once, in the engine's modules; a [`Format`] only encodes and decodes
//! entries (as in Linux's generic_pt, whose shape this follows):
//!
//! | module | what it holds |
//! |---|---|
//! | `table` | [`PageTable`]: configuration, request checks, query, destroy, inspection |
//! | `walk` | level arithmetic, the entries a span touches ([`Span`], slots), the remembered path, find_free |
//! | `map` | map: the one-leaf, run and one-table roads and the general two-pass road |
//! | `unmap` | unmap: the same four roads |
//! | `split` | the frames a split needs and the replacement table it builds |
//! | `lifetime` | live-entry counts (the shadow tables), the reserve of empty tables, the frame pool |
//! | [`gather`] | what one call changed, for the invalidation, and the frames freed after it |
//!
//! # Glossary (the range vocabulary used everywhere in the engine and by its callers)
//!
//! - **iova**: an input address (what the device presents). **phys**: an output address.
//! - **len**: a length in bytes, never zero. Requests name a range as `iova` + `len`, as the
//!   protocol does ([`Map`], [`Unmap`], [`FindFree::len`]).
//! - **span**: a range as its `first` and `last` byte, *both inclusive* ([`Span`]). Every range
//!   that must be able to reach the top of a 64-bit space (a gather's span, a search window, the
//!   ranges the engine walks internally) is a span: `last = iova + (len - 1)`. No exclusive end
//!   (`iova + len`) is ever computed, since it overflows at 2^64.
//! - **level**: engine level 0 holds 4 KiB pages; an entry at level `n` maps `2^(12 + 9n)`
//!   bytes. Each format documents how this maps onto its specification's level names. The
//!   **top** level holds the **root** table.
//! - **table**: a 4 KiB frame of 512 eight-byte **entries** (fewer at the top for odd widths).
//!   An entry is **absent** (zero, as the engine writes it), a **leaf** (maps its whole span),
//!   or a **table pointer** to the next-lower table ([`Pte`]).
//! - **slot**: one entry as a span touches it: the entry's own span and the part of the range
//!   inside it. A slot is **covered** when the range includes all of the entry's span.
//! - **live count**: the number of non-absent entries of a table. The engine keeps it beside
//!   the table, in the **shadow** of the table's parent (below), so it never scans a table to
//!   learn whether it became empty.
//! - **shadow**: for every table at level >= 1 (the root included), one frame the walker never
//!   sees; its word `i` holds the live count of the table entry `i` points to, that child's
//!   reserve flag, and the address of the child's own shadow (if the child is at level >= 1).
//! - **reserve**: a small ring, inside [`PageTable`], of tables that became empty but stay
//!   linked, so a small range mapped again soon costs no allocation (see *Table lifetime*).
//! - **publish**: a store that makes a structure reachable by the walker (see *Ordering*).
//!
//! # Table lifetime
//!
//! Live-entry counts make an unmap cost proportional to the entries it touches: clearing `n`
//! leaves of a table costs `n` entry writes and one update of the table's count, and a table
//! whose count reaches zero is known empty without reading it. What then happens to it:
//!
//! - A table the unmap **covers completely** is unlinked at once and its frame handed to the
//!   [`Gather`] (freed after the invalidation), as Linux frees a table only when the unmapped
//!   range covers it whole. Its shadow, which no walker reads, is freed at once.
//! - A table that becomes empty while the range covers it only partly stays linked and enters
//!   the **reserve**, a ring of [`RESERVE`] tables kept per [`PageTable`]. A later map into
//!   its span reuses it (no allocation, no zeroing, no free): small ranges mapped and unmapped
//!   over and over in the same place stop paying allocate / zero / free each time, as the
//!   peers that never free tables do.
//! - When the ring is full, the table that entered it first is unlinked and handed to the
//!   gather (and its parents with it, while they become empty: they are never kept), unless
//!   it was reused in the meantime.
//! - [`PageTable::reclaim`] unlinks every table in the reserve at once (for a caller under quota
//!   pressure, or before it reports a domain idle: iommu-server reclaims a client's reserves
//!   and retries whenever a map or unmap of that client runs short of frames);
//!   [`PageTable::destroy`] frees everything.
//! - A map that can put one large leaf where the reserve left a subtree without any leaf
//!   discards that subtree (its tables go to the gather) and writes the leaf, so the entries
//!   written stay minimal. Such a map removed tables: its gather reports
//!   [`Gather::tables_removed`] and must be invalidated on every unit before it is released,
//!   even on units that do not cache non-present entries (the server does so).
//! - [`PageTable::undo`] takes back what a failing request mapped and unlinks the tables that
//!   request emptied (not those the reserve held before), so a failed request leaves the
//!   frames and the reserve as they were.
//!
//! Worst case: at most [`RESERVE`] empty tables stay linked, and each keeps at most
//! `levels - 2` ancestors that hold nothing else, plus the shadows of those at level >= 1. For a
//! 4-level table that is 8 x (3 tables + 2 shadows) = 40 frames (160 KiB) per domain held
//! without a live leaf below them, whatever the client does; a client that maps and unmaps
//! sparse addresses forever holds at most that many beyond its live mappings, and each empty
//! table goes back to the quota after at most [`RESERVE`] other tables became empty. The price
//! of the counts is one shadow frame per table at level >= 1: about 0.2 % more frames for dense
//! mappings (one per 512 leaf tables), at worst 2 frames per 3 for a lone 4 KiB page in its
//! own 512 GiB region (4 levels).
//!
//! # Ordering towards the walker
//!
//! The walker may run while the engine writes (a live domain). A new table is written
//! completely, and for a non-coherent walker cleaned with [`PhysMem::sync_for_device`], before
//! the entry that links it is stored with [`PhysMem::publish_u64`] (a write barrier, then the
//! store). The stores that publish are exactly: the link of a newly built table (or chain of
//! tables) into a table the walker can already reach, in map; and the installation of a split's
//! replacement table over the leaf it replaces, in unmap. Links between new tables that are not
//! yet reachable, leaf writes, and clears (which make nothing reachable) are plain stores, so
//! the 4 KiB paths carry no barrier. Table frames an unmap removes are unlinked and handed to
//! the [`Gather`]; they are freed only after the invalidation, never directly.
//!
//! [`PhysMem::sync_for_device`]: crate::mem::PhysMem::sync_for_device
//! [`PhysMem::publish_u64`]: crate::mem::PhysMem::publish_u64

pub mod format;
pub mod gather;
mod lifetime;
mod map;
mod split;
mod table;
mod unmap;
mod walk;

#[cfg(test)]
mod tests;

pub use gather::Gather;
pub use lifetime::RESERVE;
pub use table::{Counters, PageTable, TableConfig, TableVisit, Translation};

use crate::mem::PhysAddr;

/// A map request: the `len` bytes from `iova` translate to the `len` bytes from `phys`.
///
/// Named fields, so that the three addresses-and-lengths cannot be swapped silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Map {
    /// First input address (4 KiB aligned).
    pub iova: u64,
    /// First output address (4 KiB aligned).
    pub phys: PhysAddr,
    /// Bytes to map (a non-zero multiple of 4 KiB).
    pub len: u64,
    /// What the device may do.
    pub perms: Perms,
}

/// An unmap request: the `len` bytes from `iova`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Unmap {
    /// First input address (4 KiB aligned).
    pub iova: u64,
    /// Bytes to unmap (a non-zero multiple of 4 KiB).
    pub len: u64,
}

/// A search for free IOVA space ([`PageTable::find_free`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FindFree {
    /// Bytes needed (a non-zero multiple of 4 KiB).
    pub len: u64,
    /// Alignment of the answer (a power of two, at least 4 KiB).
    pub align: u64,
    /// Where the whole answer must lie.
    pub within: Span,
}

/// A range as its first and last byte, both inclusive (see the glossary): it can name the
/// whole 64-bit space, which `iova + len` cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Span {
    /// First byte.
    pub first: u64,
    /// Last byte (inclusive, `>= first`).
    pub last: u64,
}

impl Span {
    /// The span of `len` bytes from `iova`; `None` when `len` is zero or the range wraps.
    pub const fn of(iova: u64, len: u64) -> Option<Span> {
        if len == 0 {
            return None;
        }
        match iova.checked_add(len - 1) {
            Some(last) => Some(Span { first: iova, last }),
            None => None,
        }
    }
    /// Its length in bytes; `None` for the whole 64-bit space (2^64 bytes). A span is never
    /// empty.
    #[allow(clippy::len_without_is_empty)]
    pub const fn len(&self) -> Option<u64> {
        (self.last - self.first).checked_add(1)
    }
    /// Whether `other` lies inside this span.
    pub const fn contains(&self, other: Span) -> bool {
        self.first <= other.first && other.last <= self.last
    }
}

/// Access permissions of a leaf entry. Validated at the protocol edge; here a plain pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Perms {
    /// The device may read the memory.
    pub read: bool,
    /// The device may write the memory.
    pub write: bool,
}

impl Perms {
    /// Read-only.
    pub const R: Perms = Perms {
        read: true,
        write: false,
    };
    /// Write-only (not expressible by every format: see [`Format::supports_perms`]).
    pub const W: Perms = Perms {
        read: false,
        write: true,
    };
    /// Read and write.
    pub const RW: Perms = Perms {
        read: true,
        write: true,
    };
}

/// A set of leaf sizes, as a bit mask: bit `k` set means leaves of `2^k` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LeafSizes(pub u64);

impl LeafSizes {
    /// 4 KiB pages only.
    pub const SZ_4K: LeafSizes = LeafSizes(1 << 12);
    /// 2 MiB leaves.
    pub const SZ_2M: LeafSizes = LeafSizes(1 << 21);
    /// 1 GiB leaves.
    pub const SZ_1G: LeafSizes = LeafSizes(1 << 30);
    /// 512 GiB leaves (allowed by AMD-Vi v1 at level 3).
    pub const SZ_512G: LeafSizes = LeafSizes(1 << 39);
    /// 4 KiB, 2 MiB and 1 GiB: what most units report.
    pub const STANDARD: LeafSizes = LeafSizes((1 << 12) | (1 << 21) | (1 << 30));

    /// Whether leaves of `size` bytes are in the set.
    pub const fn contains(self, size: u64) -> bool {
        size.is_power_of_two() && self.0 & size != 0
    }
    /// The union of two sets.
    pub const fn union(self, other: LeafSizes) -> LeafSizes {
        LeafSizes(self.0 | other.0)
    }
    /// The intersection of two sets.
    pub const fn intersect(self, other: LeafSizes) -> LeafSizes {
        LeafSizes(self.0 & other.0)
    }
}

/// One decoded page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pte {
    /// Not present: the walker faults here.
    Absent,
    /// A pointer to the next-lower table.
    Table(PhysAddr),
    /// A leaf (page or block) mapping `2^(12 + 9 * level)` bytes at `phys`.
    Leaf {
        /// Output address of the first byte.
        phys: PhysAddr,
        /// What the device may do.
        perms: Perms,
    },
}

/// A vendor page-table format: encode and decode only. No algorithm lives here.
///
/// Every format used here has 4 KiB tables of 512 eight-byte entries; the top level may use
/// fewer index bits, as the address width dictates.
pub trait Format {
    /// A short name for logs and benchmark labels, e.g. `"vtd-sl"`.
    const NAME: &'static str;
    /// Index bits per level below the top (9 for every 4 KiB-granule format).
    const LEVEL_BITS: u32 = 9;
    /// The address widths (input bits) this format supports, e.g. `&[39, 48, 57]`.
    const ADDR_WIDTHS: &'static [u32];
    /// Output (physical) address bits a leaf can express; the engine refuses `phys` ranges
    /// reaching beyond `2^OA_BITS`. Defaults to 52, the widest the x86 formats allow.
    const OA_BITS: u32 = 52;
    /// Whether input addresses must be sign-extended from bit `addr_width - 1` (RISC-V
    /// Sv39/48/57). IOVAs are zero-extended, so the engine then accepts only the lower half,
    /// `[0, 2^(addr_width - 1))`. Defaults to false: the whole `[0, 2^addr_width)` is usable.
    const SIGN_EXTENDED: bool = false;

    /// The number of levels for an input address width, or `None` if unsupported.
    fn levels_for(addr_width: u32) -> Option<u8>;
    /// Whether an entry at engine `level` may be a leaf.
    fn leaf_allowed(level: u8) -> bool;
    /// Whether the format can express `perms` exactly (e.g. write-only is not expressible in
    /// ARM stage-1 or RISC-V tables).
    fn supports_perms(perms: Perms) -> bool;
    /// Encodes a leaf at engine `level` mapping `phys` (aligned to the level's size).
    fn encode_leaf(phys: PhysAddr, perms: Perms, level: u8) -> u64;
    /// Encodes a table pointer at engine `level` (> 0) to the table at `table`.
    fn encode_table(table: PhysAddr, level: u8) -> u64;
    /// Decodes an entry read from a table at engine `level`.
    fn decode(entry: u64, level: u8) -> Pte;
}

/// Why a page-table operation was refused. Every error leaves the tables and the frame
/// allocator exactly as they were before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PtError {
    /// `iova`, `phys` or `len` is not a multiple of 4 KiB (or `align` is not a power of two).
    Misaligned,
    /// `len` is zero.
    ZeroLength,
    /// The IOVA range wraps around or reaches beyond the table's address width.
    OutOfRange,
    /// The physical range wraps around or reaches beyond what the unit can output
    /// ([`TableConfig::phys_width`], or the format's [`Format::OA_BITS`] if smaller).
    PhysOutOfRange,
    /// Some page of the range is already mapped (map only).
    Overlap,
    /// A frame allocation failed.
    NoFrame,
    /// The unit forbids replacing a live block by a table (break-before-make, e.g. SMMUv3
    /// without BBML2) and the unmap would have had to split one.
    SplitForbidden,
    /// The format cannot express the requested permissions (or no permission was given).
    PermsUnsupported,
    /// The configuration is not supported by the format (address width, leaf sizes without
    /// 4 KiB, a leaf size at a level that may not hold leaves).
    BadConfig,
}

impl core::fmt::Display for PtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PtError::Misaligned => {
                "iova, phys or len is not a multiple of 4 KiB (or align is not a power of two)"
            }
            PtError::ZeroLength => "len is zero",
            PtError::OutOfRange => "the IOVA range wraps or leaves the table's address width",
            PtError::PhysOutOfRange => {
                "the physical range wraps or leaves the unit's output address width"
            }
            PtError::Overlap => "part of the range is already mapped",
            PtError::NoFrame => "no frame for a page table (allocator empty or quota reached)",
            PtError::SplitForbidden => {
                "the unmap would split a live block, which this unit forbids (no BBML2)"
            }
            PtError::PermsUnsupported => "the format cannot express these permissions",
            PtError::BadConfig => "the table configuration is not supported by the format",
        })
    }
}

impl core::error::Error for PtError {}

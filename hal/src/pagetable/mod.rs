//! The generic radix page-table engine and its per-vendor formats.
//!
//! Callers speak in ranges. The engine maps a range with the largest leaves that the alignment
//! of `iova` and `phys`, the remaining length and the unit's [`LeafSizes`] allow; unmaps exactly
//! the pages of a range (splitting a large leaf, when needed, by building the replacement table
//! completely and installing it with one entry write); and records everything one call changed
//! in one [`Gather`], so the caller invalidates once per call, never once per page.
//!
//! Level numbering used throughout the engine: level 0 holds 4 KiB pages and level `n` maps
//! `2^(12 + 9n)` bytes per entry. Each format documents how that maps onto its specification's
//! own level names.
//!
//! The algorithm lives once, in [`engine`]; a [`Format`] only encodes and decodes entries.

pub mod engine;
pub mod format;
pub mod gather;

pub use engine::{Counters, PageTable, TableConfig, Translation};
pub use gather::Gather;

use crate::mem::PhysAddr;

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
    /// The range wraps around, or reaches beyond the table's address width (or `phys` beyond
    /// the format's output address range).
    OutOfRange,
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

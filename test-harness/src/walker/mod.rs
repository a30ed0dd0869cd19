//! Reference page-table walkers, one per format, written from the vendors' specifications.
//!
//! They share nothing with `iommu_hal::pagetable::format`: every bit position is redefined
//! here from the specification, so a mistake in the engine's encoders is not mirrored by the
//! test that is meant to catch it. Each walker enforces what hardware enforces: a set reserved
//! bit, a misaligned superpage or block, a leaf at a level that may not hold one, a missing
//! access flag are *malformed* entries ([`Malformed`]), which the conformance suite treats as an
//! engine bug, while a non-present entry is an ordinary translation fault (`Ok(None)`).
//!
//! Level numbering inside the walkers: level 0 holds 4 KiB pages and level `n` maps
//! `2^(12 + 9n)` bytes per entry. Each walker's docs say which specification level that is.
//!
//! The per-format part is one function, [`RefWalker::step`], that interprets one entry read
//! from a table at a level; [`translate`] and [`enumerate`] are the generic walk loops built
//! on it (the loop is the same radix descent for all four specifications).

pub mod amd_v1;
pub mod arm_s1;
pub mod riscv;
pub mod vtd;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::vec::Vec;

use crate::sim::SimMemory;

pub use amd_v1::AmdV1Walker;
pub use arm_s1::ArmS1Walker;
pub use riscv::RiscvWalker;
pub use vtd::VtdWalker;

/// Access rights accumulated along a walk (AND of the rights of every level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// Reads are allowed.
    pub read: bool,
    /// Writes are allowed.
    pub write: bool,
}

impl Access {
    /// Both rights: the state at the start of a walk.
    pub const ALL: Access = Access {
        read: true,
        write: true,
    };
    /// The intersection of two sets of rights.
    pub fn and(self, other: Access) -> Access {
        Access {
            read: self.read && other.read,
            write: self.write && other.write,
        }
    }
}

/// What one entry means to the walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not present: translation fault, nothing is mapped below.
    NotPresent,
    /// A pointer to a table at `next_level` (normally `level - 1`; AMD-Vi may skip levels).
    Table {
        /// Physical address of the next table.
        addr: u64,
        /// Level of the next table.
        next_level: u32,
        /// Rights after this entry.
        access: Access,
    },
    /// A leaf mapping `size` bytes (at least the level's entry span) starting at `base`.
    Leaf {
        /// Output address of the leaf's first byte (aligned to `size`).
        base: u64,
        /// Size of the page the leaf maps.
        size: u64,
        /// Rights after this entry.
        access: Access,
    },
}

/// An entry hardware would reject (reserved bit, misaligned block, forbidden leaf, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Walker level of the table the entry was read from.
    pub level: u32,
    /// The raw entry.
    pub entry: u64,
    /// Why it is malformed (with the specification reference).
    pub reason: &'static str,
    /// Physical address of the entry, when known.
    pub at: u64,
    /// An IOVA translated through the entry, when known.
    pub iova: u64,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed entry {:#018x} at pa {:#x} (level {}, iova {:#x}): {}",
            self.entry, self.at, self.level, self.iova, self.reason
        )
    }
}

/// Helper for formats: a malformed-entry error with the location filled in later.
pub fn bad(level: u32, entry: u64, reason: &'static str) -> Malformed {
    Malformed {
        level,
        entry,
        reason,
        at: 0,
        iova: 0,
    }
}

/// The result of a successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Output address of the queried IOVA.
    pub phys: u64,
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Size of the page that maps it.
    pub leaf_size: u64,
}

/// One format's specification, as far as a table walk needs it.
pub trait RefWalker {
    /// Label for messages.
    const NAME: &'static str;
    /// Input address widths the specification defines for 4 KiB granules.
    const WIDTHS: &'static [u32];
    /// Whether write-only permission is expressible.
    const WRITE_ONLY: bool;

    /// Number of levels for an input address width.
    fn levels(addr_width: u32) -> Option<u32>;
    /// Highest IOVA (inclusive) a device can present with this width and get translated by
    /// the table's lower (zero-extended) half.
    fn last_iova(addr_width: u32) -> u64 {
        if addr_width >= 64 {
            u64::MAX
        } else {
            (1u64 << addr_width) - 1
        }
    }
    /// Leaf sizes the specification allows in a table with `levels` levels (bit `k` = 2^k).
    fn spec_leaf_sizes(levels: u32) -> u64;
    /// Interprets `entry`, read from a table at walker `level` (`top` = the root's level),
    /// given the rights accumulated so far.
    fn step(entry: u64, level: u32, top: u32, acc: Access) -> Result<Step, Malformed>;
}

/// Bytes mapped by one entry at `level`.
pub fn level_span(level: u32) -> u64 {
    1u64 << (12 + 9 * level)
}

fn shift(level: u32) -> u32 {
    12 + 9 * level
}

/// Index bits of the table at `level` (the root may have fewer than 9).
fn index_bits(level: u32, top: u32, addr_width: u32) -> u32 {
    if level == top {
        addr_width.min(64) - shift(level)
    } else {
        9
    }
}

fn index_of(iova: u64, level: u32, bits: u32) -> u64 {
    (iova >> shift(level)) & ((1u64 << bits) - 1)
}

/// Translates `iova` through the table rooted at `root`.
///
/// `Ok(None)` is a translation fault (not present, no rights, IOVA beyond the width);
/// `Err` is a malformed entry.
pub fn translate<W: RefWalker>(
    mem: &SimMemory,
    root: u64,
    addr_width: u32,
    iova: u64,
) -> Result<Option<Walk>, Malformed> {
    let levels = W::levels(addr_width).expect("walker: unsupported width");
    if iova > W::last_iova(addr_width) {
        return Ok(None);
    }
    let top = levels - 1;
    let mut level = top;
    let mut table = root;
    let mut acc = Access::ALL;
    loop {
        let bits = index_bits(level, top, addr_width);
        let at = table + index_of(iova, level, bits) * 8;
        let entry = mem.read(at);
        let located = |mut m: Malformed| {
            m.at = at;
            m.iova = iova;
            m
        };
        match W::step(entry, level, top, acc).map_err(located)? {
            Step::NotPresent => return Ok(None),
            Step::Table {
                addr,
                next_level,
                access,
            } => {
                if next_level >= level {
                    return Err(located(bad(level, entry, "table entry does not descend")));
                }
                // Levels between `level` and `next_level` are skipped: the IOVA bits that
                // would have indexed them must be zero (AMD IOMMU spec 2.2.3).
                for skipped in next_level + 1..level {
                    if index_of(iova, skipped, 9) != 0 {
                        return Ok(None);
                    }
                }
                table = addr;
                level = next_level;
                acc = access;
            }
            Step::Leaf { base, size, access } => {
                if !access.read && !access.write {
                    return Ok(None);
                }
                return Ok(Some(Walk {
                    phys: base + (iova & (size - 1)),
                    read: access.read,
                    write: access.write,
                    leaf_size: size,
                }));
            }
        }
    }
}

/// One leaf entry found by [`enumerate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafEntry {
    /// First IOVA the entry translates.
    pub iova: u64,
    /// Bytes the entry translates (its level's span).
    pub span: u64,
    /// Output address of `iova`.
    pub phys: u64,
    /// Effective rights (AND along the path).
    pub access: Access,
    /// Size of the page (for AMD-Vi `NextLevel = 7` pages, larger than `span`).
    pub size: u64,
    /// Walker level of the entry.
    pub level: u32,
}

/// Everything reachable from a root.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Every table frame reachable from the root, root included, with its walker level.
    pub tables: Vec<(u64, u32)>,
    /// Every leaf with at least one right, in IOVA order.
    pub leaves: Vec<LeafEntry>,
    /// Leaves whose effective rights are empty (the device can reach nothing through them).
    pub dead_leaves: u64,
    /// Non-root tables with no present entry.
    pub empty_tables: u64,
    /// The first IOVA each table (by frame) translates.
    pub table_bases: BTreeMap<u64, u64>,
}

/// Why [`enumerate`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditError {
    /// A malformed entry.
    Malformed(Malformed),
    /// A table frame reachable twice (shared subtree or cycle).
    SharedTable(u64),
    /// A table pointer that is not 4 KiB aligned.
    UnalignedTable(u64),
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Malformed(m) => write!(f, "{m}"),
            AuditError::SharedTable(t) => write!(f, "table frame {t:#x} reachable twice"),
            AuditError::UnalignedTable(t) => write!(f, "table pointer {t:#x} not 4 KiB aligned"),
        }
    }
}

/// Walks every entry reachable from `root` and lists tables and leaves.
pub fn enumerate<W: RefWalker>(
    mem: &SimMemory,
    root: u64,
    addr_width: u32,
) -> Result<Audit, AuditError> {
    let levels = W::levels(addr_width).expect("walker: unsupported width");
    let top = levels - 1;
    let mut audit = Audit::default();
    let mut seen = BTreeSet::new();
    seen.insert(root);
    audit.tables.push((root, top));
    audit.table_bases.insert(root, 0);
    let last = W::last_iova(addr_width);
    walk_table::<W>(
        mem,
        root,
        top,
        top,
        addr_width,
        0,
        Access::ALL,
        last,
        &mut audit,
        &mut seen,
    )?;
    audit.leaves.sort_by_key(|l| l.iova);
    Ok(audit)
}

#[allow(clippy::too_many_arguments)]
fn walk_table<W: RefWalker>(
    mem: &SimMemory,
    table: u64,
    level: u32,
    top: u32,
    addr_width: u32,
    base_iova: u64,
    acc: Access,
    last: u64,
    audit: &mut Audit,
    seen: &mut BTreeSet<u64>,
) -> Result<(), AuditError> {
    if table % 4096 != 0 {
        return Err(AuditError::UnalignedTable(table));
    }
    let bits = index_bits(level, top, addr_width);
    let mut present = 0u64;
    for idx in 0..(1u64 << bits) {
        let iova = base_iova + (idx << shift(level));
        if iova > last {
            // Beyond what a device can present (RISC-V upper half): must stay empty.
            let entry = mem.read(table + idx * 8);
            if entry != 0 {
                return Err(AuditError::Malformed(Malformed {
                    level,
                    entry,
                    reason: "entry in the part of the table no device address reaches",
                    at: table + idx * 8,
                    iova,
                }));
            }
            continue;
        }
        let at = table + idx * 8;
        let entry = mem.read(at);
        let step = W::step(entry, level, top, acc).map_err(|mut m| {
            m.at = at;
            m.iova = iova;
            AuditError::Malformed(m)
        })?;
        match step {
            Step::NotPresent => {}
            Step::Table {
                addr,
                next_level,
                access,
            } => {
                present += 1;
                if next_level >= level {
                    return Err(AuditError::Malformed(Malformed {
                        level,
                        entry,
                        reason: "table entry does not descend",
                        at,
                        iova,
                    }));
                }
                if !seen.insert(addr) {
                    return Err(AuditError::SharedTable(addr));
                }
                audit.tables.push((addr, next_level));
                audit.table_bases.insert(addr, iova);
                walk_table::<W>(
                    mem, addr, next_level, top, addr_width, iova, access, last, audit, seen,
                )?;
            }
            Step::Leaf { base, size, access } => {
                present += 1;
                if !access.read && !access.write {
                    audit.dead_leaves += 1;
                    continue;
                }
                audit.leaves.push(LeafEntry {
                    iova,
                    span: level_span(level),
                    phys: base + (iova & (size - 1)),
                    access,
                    size,
                    level,
                });
            }
        }
    }
    if present == 0 && level != top {
        audit.empty_tables += 1;
    }
    Ok(())
}

/// A coalesced run of translations: `[iova, iova + len)` -> `[phys, phys + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Output address of `iova`.
    pub phys: u64,
    /// Rights.
    pub access: Access,
}

/// Merges adjacent leaves with contiguous output and equal rights into runs, so two
/// translations that agree page by page produce equal run lists whatever the leaf sizes.
pub fn coalesce<I: IntoIterator<Item = Run>>(runs: I) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for r in runs {
        if let Some(last) = out.last_mut()
            && last.iova.checked_add(last.len) == Some(r.iova)
            && last.phys.checked_add(last.len) == Some(r.phys)
            && last.access == r.access
        {
            last.len += r.len;
            continue;
        }
        out.push(r);
    }
    out
}

impl Audit {
    /// The leaves as coalesced runs.
    pub fn runs(&self) -> Vec<Run> {
        coalesce(self.leaves.iter().map(|l| Run {
            iova: l.iova,
            len: l.span,
            phys: l.phys,
            access: l.access,
        }))
    }
}

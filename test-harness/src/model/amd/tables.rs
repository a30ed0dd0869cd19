//! Device table entries and the v1 host page-table walk, as the AMD IOMMU specification
//! (pub. 48882) describes them: 2.2.2 "Device Table Entry Format" and 2.2.3 "I/O Page Tables
//! for Host Translations".
//!
//! Level numbering is the spec's: level 1 entries map 4 KiB, level `n` entries map
//! `2^(12 + 9 (n - 1))` bytes, and a DTE with Mode `m` points at a level-`m` table.
//!
//! Page-table entry fields: PR (bit 0), Next Level (bits 11:9), address (bits 51:12),
//! IR (61), IW (62). Next Level 0 makes the entry a page of its level's size; 7 a page whose
//! size is given by the lowest zero address bit at or above bit 12 (twice that bit's value);
//! 1..6 a pointer to a table of that level, which must be below the current one. A pointer
//! that skips levels requires the IOVA bits of the skipped levels to be zero. Read and write
//! permission are ANDed along the walk, starting from the DTE's IR and IW.

use crate::sim::SharedMem;

/// A device table entry: the four words and what the model makes of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DteView {
    /// The raw words.
    pub words: [u64; 4],
}

/// What a DTE tells the model to do with a DMA request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DteKind {
    /// V = 0: the request passes untranslated.
    PassThrough,
    /// V = 1 with fields the model refuses (reserved bits, TV = 0, Mode 7): the request is
    /// target-aborted with ILLEGAL_DEV_TABLE_ENTRY. The text says why.
    Illegal(&'static str),
    /// V = 1, TV = 1, Mode = 0: untranslated, allowed as IR / IW say.
    Untranslated {
        /// IR.
        read: bool,
        /// IW.
        write: bool,
    },
    /// V = 1, TV = 1, Mode 1..6.
    Translated {
        /// Host Page Table Root Pointer.
        root: u64,
        /// Mode: levels.
        mode: u8,
        /// IR.
        read: bool,
        /// IW.
        write: bool,
    },
}

impl DteView {
    /// DomainID (word 1, bits 15:0).
    pub fn domain(&self) -> u16 {
        self.words[1] as u16
    }
    /// SA (word 1 bit 34): suppress all events; SE (bit 33): suppress events of a
    /// repeated fault (treated as SA by the model).
    pub fn suppress(&self) -> bool {
        self.words[1] & (3 << 33) != 0
    }

    /// Decodes the entry for a unit without guest translation. Word 0 may hold only V, TV,
    /// Mode, the root pointer, IR and IW (the guest-translation, PPR and host-dirty fields
    /// and reserved bits are refused); word 1 only DomainID and I / SE / SA / IoCtl / Cache
    /// / SD / EX / SysMgt; word 3 must be zero. Word 2 (interrupt remapping) is not
    /// interpreted.
    pub fn kind(&self) -> DteKind {
        let w0 = self.words[0];
        if w0 & 1 == 0 {
            return DteKind::PassThrough;
        }
        const W0_OK: u64 = 0b11 | (0b111 << 9) | 0x000f_ffff_ffff_f000 | (3 << 61);
        if w0 & !W0_OK != 0 {
            return DteKind::Illegal("DTE word 0 has reserved or unsupported fields set");
        }
        const W1_OK: u64 = 0xffff | (0x3ff << 32);
        if self.words[1] & !W1_OK != 0 {
            return DteKind::Illegal("DTE word 1 has reserved or guest-translation fields set");
        }
        if self.words[3] != 0 {
            return DteKind::Illegal("DTE word 3 is not zero");
        }
        if w0 & 2 == 0 {
            return DteKind::Illegal("DTE with V = 1 and TV = 0 (translation fields not valid)");
        }
        let read = w0 & (1 << 61) != 0;
        let write = w0 & (1 << 62) != 0;
        match (w0 >> 9) & 7 {
            0 => DteKind::Untranslated { read, write },
            7 => DteKind::Illegal("DTE Mode 7 is reserved"),
            m => DteKind::Translated {
                root: w0 & 0x000f_ffff_ffff_f000,
                mode: m as u8,
                read,
                write,
            },
        }
    }
}

/// Reads the DTE at `pa`.
pub fn read_dte(mem: &SharedMem, pa: u64) -> DteView {
    let m = mem.borrow();
    DteView {
        words: [m.read(pa), m.read(pa + 8), m.read(pa + 16), m.read(pa + 24)],
    }
}

/// log2 of the bytes one entry at `level` maps.
pub fn level_shift(level: u8) -> u32 {
    12 + 9 * (u32::from(level) - 1)
}

/// The input address bits a Mode-`mode` table translates.
pub fn mode_width(mode: u8) -> u32 {
    (12 + 9 * u32::from(mode)).min(64)
}

/// A leaf the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// IOVA of the page's first byte.
    pub iova_base: u64,
    /// log2 of the page size.
    pub shift: u32,
    /// Physical address of the page's first byte.
    pub phys: u64,
    /// Cumulative read permission.
    pub read: bool,
    /// Cumulative write permission.
    pub write: bool,
}

/// Why a walk stopped without a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// An entry with PR = 0 (a not-present page).
    NotPresent,
    /// The IOVA is beyond the Mode's width, or skipped-level bits are not zero.
    Address,
    /// An entry has reserved bits set, an upward or same-level Next Level, or a sized page
    /// that does not fit its level.
    Malformed(&'static str),
}

/// A table pointer met on the way: the table at `level` covering IOVAs with the prefix
/// `iova >> level_shift(level + 1)`, with the permissions accumulated above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pde {
    /// Level of the table pointed to.
    pub level: u8,
    /// Physical address of that table.
    pub table: u64,
    /// Cumulative read permission down to and including the pointer.
    pub read: bool,
    /// Cumulative write permission.
    pub write: bool,
}

/// Walks from the level-`level` table at `table` with permissions `(read, write)` accumulated
/// so far, for `iova`. Table pointers met are appended to `pdes`.
pub fn walk(
    mem: &SharedMem,
    mut table: u64,
    mut level: u8,
    mut read: bool,
    mut write: bool,
    iova: u64,
    pdes: &mut Vec<Pde>,
) -> Result<Leaf, WalkError> {
    loop {
        let shift = level_shift(level);
        let index = (iova >> shift) & 0x1ff;
        let e = mem.borrow().read(table + index * 8);
        if e & 1 == 0 {
            return Err(WalkError::NotPresent);
        }
        if e & (0x7f << 52) != 0 {
            return Err(WalkError::Malformed(
                "reserved bits 58:52 set in a page-table entry",
            ));
        }
        read &= e & (1 << 61) != 0;
        write &= e & (1 << 62) != 0;
        let next = ((e >> 9) & 7) as u8;
        let addr = e & 0x000f_ffff_ffff_f000;
        match next {
            0 => {
                if addr & ((1u64 << shift) - 1) != 0 {
                    return Err(WalkError::Malformed(
                        "large page address not aligned to its size",
                    ));
                }
                return Ok(Leaf {
                    iova_base: iova & !((1u64 << shift) - 1),
                    shift,
                    phys: addr,
                    read,
                    write,
                });
            }
            7 => {
                // Size from the lowest zero address bit at or above bit 12.
                let z = 12 + (addr >> 12).trailing_ones();
                let size_shift = z + 1;
                if size_shift <= shift || size_shift >= shift + 9 {
                    return Err(WalkError::Malformed(
                        "Next Level 7 page size does not fit its level",
                    ));
                }
                let mask = (1u64 << size_shift) - 1;
                return Ok(Leaf {
                    iova_base: iova & !mask,
                    shift: size_shift,
                    phys: addr & !mask,
                    read,
                    write,
                });
            }
            n if n >= level => {
                return Err(WalkError::Malformed(
                    "Next Level not below the entry's level",
                ));
            }
            n => {
                // Skipped levels n+1 .. level-1: their IOVA bits must be zero.
                let lo = level_shift(n + 1);
                if lo < shift && (iova >> lo) & ((1u64 << (shift - lo)) - 1) != 0 {
                    return Err(WalkError::Address);
                }
                pdes.push(Pde {
                    level: n,
                    table: addr,
                    read,
                    write,
                });
                table = addr;
                level = n;
            }
        }
    }
}

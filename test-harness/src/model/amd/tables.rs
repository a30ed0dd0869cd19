//! Device table entries and the v1 host page-table walk, as the AMD IOMMU specification
//! (pub. 48882 rev 3.11) describes them: 2.2.2.1 "Device Table Entry Format" (Table 7, and
//! Table 8 for V / TV) and 2.2.3 "I/O Page Tables for Host Translations" (Tables 14 to 18),
//! with the faults of Tables 43 and 44.
//!
//! Level numbering is the spec's: level 1 entries map 4 KiB, level `n` entries map
//! `2^(12 + 9 (n - 1))` bytes, and a DTE with Mode `m` points at a level-`m` table.
//!
//! Page-table entry fields: PR (bit 0), Next Level (bits 11:9), address (bits 51:12),
//! IR (61), IW (62); reserved: bits 60:52 of a PDE (Table 18), bits 56:52 of a PTE and its
//! bits 58:57 (Page Migration State, reserved without TMPMSup, which the model lacks;
//! Table 17). Next Level 0 makes the entry a page of its level's default size (Table 15; a
//! level-6 entry has none); 7 a page whose size is given by the first zero address bit from
//! bit 12 up (twice that bit's value; Table 14), larger than the level's default size and
//! smaller than the next level's; 1..6 a pointer to a table of that level, which must be
//! below the current one. A pointer that skips levels requires the IOVA bits of the skipped
//! levels to be zero. Read and write permission are ANDed along the walk, starting from the
//! DTE's IR and IW. Every walk error is an IO_PAGE_FAULT (Table 44).

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
    /// V = 1 with fields the model refuses (non-zero reserved bits, including the guest,
    /// PPR, access/dirty and vIOMMU fields of features the model lacks, or IoCtl = 11b): the
    /// request is target-aborted with ILLEGAL_DEV_TABLE_ENTRY (Table 43). The text says why.
    Illegal(&'static str),
    /// V = 1, TV = 0: no translation information; an untranslated request is target-aborted
    /// with IO_PAGE_FAULT (Table 8; Table 44, "TV bit not set").
    NoTranslation,
    /// V = 1, TV = 1, Mode = 7 (reserved): target-aborted with IO_PAGE_FAULT (Table 44,
    /// "reserved paging mode").
    ReservedMode,
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
    /// SA (word 1 bit 34, DTE bit 98): suppress all IO_PAGE_FAULT events; SE (bit 33, DTE
    /// bit 97): log only the first IO_PAGE_FAULT while the DTE stays cached (treated as SA by
    /// the model).
    pub fn suppress(&self) -> bool {
        self.words[1] & (3 << 33) != 0
    }

    /// Decodes the entry for a unit without guest translation. Word 0 may hold only V, TV,
    /// Mode, the root pointer, IR and IW (the guest-translation, PPR, CXL and host
    /// access/dirty fields and reserved bits are refused); word 1 only DomainID and I / SE /
    /// SA / IoCtl (not 11b) / Cache / SD / EX / SysMgt; word 3 must be zero. Word 2
    /// (interrupt remapping) is not interpreted.
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
        if (self.words[1] >> 35) & 3 == 3 {
            return DteKind::Illegal("DTE IoCtl = 11b is reserved");
        }
        if self.words[3] != 0 {
            return DteKind::Illegal("DTE word 3 is not zero");
        }
        if w0 & 2 == 0 {
            return DteKind::NoTranslation;
        }
        let read = w0 & (1 << 61) != 0;
        let write = w0 & (1 << 62) != 0;
        match (w0 >> 9) & 7 {
            0 => DteKind::Untranslated { read, write },
            7 => DteKind::ReservedMode,
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

/// Why a walk stopped without a leaf (each an IO_PAGE_FAULT, Table 44).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// An entry with PR = 0 (a not-present page).
    NotPresent,
    /// The IOVA is beyond the Mode's width, or skipped-level bits are not zero.
    Address,
    /// A present entry the walk cannot use: `reserved` (the record's RZ) when a reserved
    /// bit is set, or a page address is not aligned to its page size (the model's reading:
    /// the spec names no flag for it); otherwise an invalid level or page size encoding (an
    /// upward or same-level Next Level, a Next Level 7 size that does not fit its level, a
    /// level-6 page).
    Malformed {
        /// RZ: a reserved bit (or misalignment) rather than an invalid level encoding.
        reserved: bool,
        /// What was wrong.
        why: &'static str,
    },
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
        let next = ((e >> 9) & 7) as u8;
        // PTE (Next Level 0 or 7): bits 58:52 reserved without TMPMSup (Table 17); PDE: bits
        // 60:52 (Table 18).
        let reserved = if next == 0 || next == 7 {
            0x7f << 52
        } else {
            0x1ff << 52
        };
        if e & reserved != 0 {
            return Err(WalkError::Malformed {
                reserved: true,
                why: "reserved bits set in a page-table entry",
            });
        }
        read &= e & (1 << 61) != 0;
        write &= e & (1 << 62) != 0;
        let addr = e & 0x000f_ffff_ffff_f000;
        match next {
            0 if level == 6 => {
                return Err(WalkError::Malformed {
                    reserved: false,
                    why: "Next Level 0 at level 6, which has no default page size",
                });
            }
            0 => {
                if addr & ((1u64 << shift) - 1) != 0 {
                    return Err(WalkError::Malformed {
                        reserved: true,
                        why: "large page address not aligned to its size",
                    });
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
                    return Err(WalkError::Malformed {
                        reserved: false,
                        why: "Next Level 7 page size does not fit its level",
                    });
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
                return Err(WalkError::Malformed {
                    reserved: false,
                    why: "Next Level not below the entry's level",
                });
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

//! AMD-Vi (AMD I/O Virtualization) "v1" host page tables.
//!
//! Source: AMD I/O Virtualization Technology (IOMMU) Specification, pub. 48882 rev 3.11,
//! section 2.2.3 "I/O Page Tables for Host Translations" (Table 15 "Page Table Level
//! Parameters", Table 17 / Figure 9 for the page translation entry (PTE), Table 18 / Figure 10
//! for the page directory entry (PDE), large pages via Next Level = 0, level skipping,
//! permission rules) and section 2.2.2.1 (Table 7: the device table entry's `Mode` field,
//! which names the number of levels).
//!
//! Level names: the spec numbers levels from 1 (4 KiB PTEs) upward, so engine level `n` is spec
//! level `n + 1`. A table entry at engine level `n` points to a table at engine level `n - 1`,
//! which is spec level `n`: its Next Level field is `n`. Address widths 39 / 48 / 57 / 64 use
//! 3 / 4 / 5 / 6 levels (DTE Mode 3..6); with 64 bits the top table (spec level 6) is indexed
//! by bits 63:57 only (Table 15), so it holds 128 entries.
//!
//! Bits used (section 2.2.3, Tables 17 and 18):
//! - bit 0 `PR` (present).
//! - bits 11:9 `Next Level`: the level of the table pointed to (PDE), or 0 for a page (PTE).
//!   An entry above spec level 1 with Next Level = 0 is a PTE mapping a page of its level's
//!   default size (Table 15: 2 MiB at spec level 2, 1 GiB at level 3, 512 GiB at level 4;
//!   spec level 6 has none). The value 7 (sized pages whose size is encoded in the address
//!   bits, Table 14) and level-skipping Next Level values are allowed by the spec but never
//!   written by the engine.
//! - bits 51:12: the next table's or the page's address.
//! - bit 61 `IR` and bit 62 `IW`: read and write permission. They are ANDed along the walk,
//!   so table entries carry IR = IW = 1 and the leaf alone decides.
//!
//! Bits never set: A (5), D (6, PTE only), U (59, PTE only), FC (60, PTE only): zero is their
//! neutral value (the IOMMU sets A and D only when the DTE's HAD asks, which it never does
//! here). Reserved and left zero: PTE bits 56:52 and 58:57 (Page Migration State, reserved
//! without EFR2 TMPMSup), PDE bits 60:52.
//!
//! Decoding of encodings the engine never writes (conservative, documented choice): a present
//! entry with Next Level = 7, or a Next Level that skips levels or points upward, is reported
//! as a leaf of the entry's full size *with no permissions*. The engine then never follows it
//! as a table, refuses to map over it (`Overlap`), and an unmap covering it clears it, so it
//! cannot silently survive an unmap.

use crate::mem::PhysAddr;
use crate::pagetable::{Format, Perms, Pte};

/// AMD-Vi host (v1) page-table format (AMD IOMMU spec rev 3.11, section 2.2.3).
#[derive(Debug, Clone, Copy)]
pub struct AmdV1;

/// Bit 0, PR: present (AMD IOMMU 2.2.3, Tables 16 to 18).
const PR: u64 = 1 << 0;
/// Bits 11:9, Next Level (AMD IOMMU 2.2.3, Tables 17 and 18).
const NEXT_LEVEL_SHIFT: u32 = 9;
const NEXT_LEVEL_MASK: u64 = 0x7 << NEXT_LEVEL_SHIFT;
/// Bits 51:12, address (AMD IOMMU 2.2.3, Tables 17 and 18).
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Bit 61, IR: read permission (AMD IOMMU 2.2.3, Tables 17 and 18).
const IR: u64 = 1 << 61;
/// Bit 62, IW: write permission (AMD IOMMU 2.2.3, Tables 17 and 18).
const IW: u64 = 1 << 62;

const fn level_mask(level: u8) -> u64 {
    let bits = 12 + 9 * level as u32;
    if bits >= 52 {
        0
    } else {
        ADDR & !((1u64 << bits) - 1)
    }
}

impl Format for AmdV1 {
    const NAME: &'static str = "amd-v1";
    const ADDR_WIDTHS: &'static [u32] = &[39, 48, 57, 64];
    const OA_BITS: u32 = 52;

    fn levels_for(addr_width: u32) -> Option<u8> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            57 => Some(5),
            64 => Some(6),
            _ => None,
        }
    }

    /// 4 KiB PTEs (level 0) and Next Level = 0 large pages of 2 MiB, 1 GiB and 512 GiB
    /// (levels 1 to 3).
    fn leaf_allowed(level: u8) -> bool {
        level <= 3
    }

    /// IR / IW express read, write and read-write; IR = IW = 0 would grant nothing.
    fn supports_perms(perms: Perms) -> bool {
        perms.read || perms.write
    }

    fn encode_leaf(phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let mut e = (phys & level_mask(level)) | PR;
        if perms.read {
            e |= IR;
        }
        if perms.write {
            e |= IW;
        }
        e
    }

    fn encode_table(table: PhysAddr, level: u8) -> u64 {
        (table & ADDR) | PR | IR | IW | (((level & 7) as u64) << NEXT_LEVEL_SHIFT)
    }

    #[inline(always)]
    fn decode(entry: u64, level: u8) -> Pte {
        if entry & PR == 0 {
            return Pte::Absent;
        }
        let next = ((entry & NEXT_LEVEL_MASK) >> NEXT_LEVEL_SHIFT) as u8;
        if next == 0 {
            Pte::Leaf {
                phys: entry & level_mask(level),
                perms: Perms {
                    read: entry & IR != 0,
                    write: entry & IW != 0,
                },
            }
        } else if level > 0 && next == level {
            Pte::Table(entry & ADDR)
        } else {
            // Next Level 7 or a level skip: never written by the engine (see module docs).
            Pte::Leaf {
                phys: entry & level_mask(level),
                perms: Perms::default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for level in 0..=3u8 {
            let pa = 0x1234u64 << (12 + 9 * level as u32) & ADDR;
            for p in [Perms::R, Perms::W, Perms::RW] {
                let e = AmdV1::encode_leaf(pa, p, level);
                assert_eq!(e & NEXT_LEVEL_MASK, 0);
                assert_eq!(AmdV1::decode(e, level), Pte::Leaf { phys: pa, perms: p });
            }
        }
        for level in 1..=5u8 {
            let e = AmdV1::encode_table(0xabc_d000, level);
            assert_eq!((e >> 9) & 7, level as u64);
            assert_eq!(e & (IR | IW | PR), IR | IW | PR);
            assert_eq!(AmdV1::decode(e, level), Pte::Table(0xabc_d000));
        }
        assert_eq!(AmdV1::decode(0, 1), Pte::Absent);
        // Next Level 7 and level skips: present, no permissions, not a table.
        let odd = 0x20_0000 | PR | IR | (7 << 9);
        assert_eq!(
            AmdV1::decode(odd, 1),
            Pte::Leaf {
                phys: 0x20_0000,
                perms: Perms::default()
            }
        );
        assert!(matches!(
            AmdV1::decode(AmdV1::encode_table(0x5000, 1), 3),
            Pte::Leaf { .. }
        ));
        assert_eq!(AmdV1::levels_for(64), Some(6));
    }
}

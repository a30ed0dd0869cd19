//! Intel VT-d second-level (stage-2) paging entries.
//!
//! Source: Intel Virtualization Technology for Directed I/O, Architecture Specification
//! (rev. 3.x and 4.x), section 3.7 "Second-Stage Translation" (walk, permission rules) and
//! section 9.8 "Second-Stage Paging Entries" (entry formats, tables "Format for Second-Level
//! Paging Entries").
//!
//! Level names: the spec's SL-PML5E / SL-PML4E / SL-PDPE / SL-PDE / SL-PTE entries sit at engine
//! levels 4 / 3 / 2 / 1 / 0. A 3-level table (39-bit AGAW) starts at the SL-PDPT, a 4-level
//! table (48-bit) at the SL-PML4, a 5-level table (57-bit) at the SL-PML5 (section 3.7, the
//! SAGAW encodings of the capability register, section 11.4.2).
//!
//! Bits used (section 9.8):
//! - bit 0 `R` (read) and bit 1 `W` (write). An entry with R = W = 0 is not present. The walk
//!   ANDs the permissions of every level (section 3.7, access rights), so table entries
//!   carry R = W = 1 and the leaf alone decides.
//! - bit 7 `PS` (page size) in an SL-PDPE (1 GiB page) or SL-PDE (2 MiB page); reserved (must
//!   be 0) in SL-PML5E / SL-PML4E, and ignored in SL-PTEs. The engine writes PS = 1 in every
//!   leaf above level 0 only.
//! - bits 51:12 `ADDR`: the next table, or the page frame (bits below the page size are
//!   reserved in large-page entries and written as zero).
//!
//! Bits the engine never sets: X (bit 2), EMT (5:3), IPAT (6), A/D (8/9), SNP (11), TM (62).
//! Zero is their neutral value for the legacy-mode, non-nested use made of the table here.

use crate::mem::PhysAddr;
use crate::pagetable::{Format, Perms, Pte};

/// Intel VT-d second-level paging format (VT-d spec section 9.8).
#[derive(Debug, Clone, Copy)]
pub struct VtdSl;

/// Bit 0, R: read permission (VT-d 9.8).
const R: u64 = 1 << 0;
/// Bit 1, W: write permission (VT-d 9.8).
const W: u64 = 1 << 1;
/// Bit 7, PS: page size in SL-PDPE / SL-PDE (VT-d 9.8).
const PS: u64 = 1 << 7;
/// Bits 51:12, ADDR (VT-d 9.8).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

const fn level_mask(level: u8) -> u64 {
    // Address bits of a leaf of the level's size: 51 down to 12 + 9 * level.
    ADDR & !((1u64 << (12 + 9 * level as u32)) - 1)
}

impl Format for VtdSl {
    const NAME: &'static str = "vtd-sl";
    const ADDR_WIDTHS: &'static [u32] = &[39, 48, 57];
    const OA_BITS: u32 = 52;

    fn levels_for(addr_width: u32) -> Option<u8> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            57 => Some(5),
            _ => None,
        }
    }

    /// SL-PTE (level 0), SL-PDE with PS (level 1, 2 MiB), SL-PDPE with PS (level 2, 1 GiB).
    fn leaf_allowed(level: u8) -> bool {
        level <= 2
    }

    /// R, W and R+W are all expressible; R = W = 0 means not present.
    fn supports_perms(perms: Perms) -> bool {
        perms.read || perms.write
    }

    fn encode_leaf(phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let mut e = phys & level_mask(level);
        if perms.read {
            e |= R;
        }
        if perms.write {
            e |= W;
        }
        if level > 0 {
            e |= PS;
        }
        e
    }

    fn encode_table(table: PhysAddr, _level: u8) -> u64 {
        (table & ADDR) | R | W
    }

    /// R = W = 0 is [`Pte::Absent`]. PS = 1 at levels 3 and 4 is a reserved-bit fault for the
    /// hardware (it grants nothing), and the engine never writes it: decoded as `Absent`.
    #[inline(always)]
    fn decode(entry: u64, level: u8) -> Pte {
        if entry & (R | W) == 0 {
            return Pte::Absent;
        }
        let perms = Perms {
            read: entry & R != 0,
            write: entry & W != 0,
        };
        match level {
            0 => Pte::Leaf {
                phys: entry & ADDR,
                perms,
            },
            1 | 2 if entry & PS != 0 => Pte::Leaf {
                phys: entry & level_mask(level),
                perms,
            },
            _ if entry & PS != 0 => Pte::Absent,
            _ => Pte::Table(entry & ADDR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for level in 0..=2u8 {
            let pa = 0x1234u64 << (12 + 9 * level as u32);
            for p in [Perms::R, Perms::W, Perms::RW] {
                let e = VtdSl::encode_leaf(pa, p, level);
                assert_eq!(VtdSl::decode(e, level), Pte::Leaf { phys: pa, perms: p });
                assert_eq!(e & PS != 0, level > 0);
            }
        }
        for level in 1..=4u8 {
            let e = VtdSl::encode_table(0xabc_d000, level);
            assert_eq!(e, 0xabc_d000 | 3);
            assert_eq!(VtdSl::decode(e, level), Pte::Table(0xabc_d000));
        }
        assert_eq!(VtdSl::decode(0, 2), Pte::Absent);
        assert_eq!(VtdSl::decode(0xabc_d000, 2), Pte::Absent);
        assert_eq!(VtdSl::decode(0x8000_0000 | PS | R, 3), Pte::Absent);
        assert_eq!(VtdSl::levels_for(48), Some(4));
        assert_eq!(VtdSl::levels_for(64), None);
        assert!(!VtdSl::supports_perms(Perms::default()));
    }
}

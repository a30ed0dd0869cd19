//! RISC-V Sv39 / Sv48 / Sv57 page tables, as used by the RISC-V IOMMU (spec 1.0) for
//! first-stage translation (its section 3.1 refers to the privileged architecture's formats).
//!
//! Source: The RISC-V Instruction Set Manual, Volume II: Privileged Architecture (1.12 and
//! later), section 4.3 (Sv32, which defines the PTE bits and the walk reused by the others),
//! 4.4 "Sv39", 4.5 "Sv48" and 4.6 "Sv57".
//!
//! Level names: the spec's `i` in the walk (`PPN[i]`, `VPN[i]`) is the engine level: level 0 holds
//! 4 KiB pages, level 1 megapages (2 MiB), level 2 gigapages (1 GiB), level 3 terapages
//! (512 GiB, Sv48 and Sv57), level 4 petapages (256 TiB, Sv57). Sv39 / Sv48 / Sv57 have
//! 3 / 4 / 5 levels.
//!
//! Bits used (4.3.1, figure "Sv39 page table entry" in 4.4):
//! - bit 0 `V` (valid), bit 1 `R`, bit 2 `W`, bit 3 `X`, bit 4 `U`, bit 5 `G`, bit 6 `A`,
//!   bit 7 `D`.
//! - bits 53:10 `PPN` = physical address >> 12 (56-bit physical addresses).
//! - A pointer to the next level has V = 1 and R = W = X = 0. A leaf has R or X set;
//!   W = 1 with R = 0 is reserved, so write-only is not expressible.
//! - Leaves are written with X = 0 (no execute), U = 1, G = 0, A = D = 1. U = 1 because the
//!   IOMMU treats device requests as user-mode accesses unless the request is explicitly
//!   privileged (RISC-V IOMMU spec, first-stage permission checks), and supervisor-only pages
//!   would fault. A and D are preset so that no A/D update (or fault, for units without
//!   hardware A/D updating) ever happens.
//! - A superpage whose low PPN fields are not zero is a "misaligned superpage" page fault
//!   (4.3.2 step 6); such entries, and reserved encodings (W without R, a pointer at level 0),
//!   decode as [`Pte::Absent`], since a walk faults on them. The engine never writes them.

use crate::mem::PhysAddr;
use crate::pagetable::{Format, Perms, Pte};

/// RISC-V Sv39/Sv48/Sv57 format (privileged spec sections 4.4-4.6).
#[derive(Debug, Clone, Copy)]
pub struct RiscvSv;

/// Bit 0, V: valid (priv. spec 4.3.1).
const V: u64 = 1 << 0;
/// Bit 1, R: readable (4.3.1).
const R: u64 = 1 << 1;
/// Bit 2, W: writable (4.3.1).
const W: u64 = 1 << 2;
/// Bit 3, X: executable (4.3.1).
const X: u64 = 1 << 3;
/// Bit 4, U: user-mode accessible (4.3.1).
const U: u64 = 1 << 4;
/// Bit 6, A: accessed (4.3.1).
const A: u64 = 1 << 6;
/// Bit 7, D: dirty (4.3.1).
const D: u64 = 1 << 7;
/// Bits 53:10, PPN (4.4).
const PPN_SHIFT: u32 = 10;
const PPN_MASK: u64 = ((1u64 << 44) - 1) << PPN_SHIFT;

const fn pa_to_ppn(pa: PhysAddr) -> u64 {
    ((pa >> 12) << PPN_SHIFT) & PPN_MASK
}

const fn ppn_to_pa(entry: u64) -> PhysAddr {
    ((entry & PPN_MASK) >> PPN_SHIFT) << 12
}

impl Format for RiscvSv {
    const NAME: &'static str = "riscv-sv";
    const ADDR_WIDTHS: &'static [u32] = &[39, 48, 57];
    const OA_BITS: u32 = 56;
    /// Sv39/48/57 virtual addresses must have bits 63:VALEN-1 all equal to bit VALEN-1
    /// (4.4-4.6; the RISC-V IOMMU faults otherwise): zero-extended IOVAs reach the lower half.
    const SIGN_EXTENDED: bool = true;

    fn levels_for(addr_width: u32) -> Option<u8> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            57 => Some(5),
            _ => None,
        }
    }

    /// Every level of Sv39/48/57 may hold a leaf (4.3.2 step 4; 4.4-4.6).
    fn leaf_allowed(level: u8) -> bool {
        level <= 4
    }

    /// R and R+W; W without R is reserved.
    fn supports_perms(perms: Perms) -> bool {
        perms.read
    }

    fn encode_leaf(phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let bits = 12 + 9 * level as u32;
        let aligned = phys & !((1u64 << bits) - 1);
        let mut e = pa_to_ppn(aligned) | V | U | A | D;
        if perms.read {
            e |= R;
        }
        if perms.write {
            e |= W;
        }
        e
    }

    fn encode_table(table: PhysAddr, _level: u8) -> u64 {
        pa_to_ppn(table) | V
    }

    #[inline(always)]
    fn decode(entry: u64, level: u8) -> Pte {
        if entry & V == 0 || entry & (R | W) == W {
            return Pte::Absent;
        }
        if entry & (R | W | X) == 0 {
            return if level == 0 {
                Pte::Absent
            } else {
                Pte::Table(ppn_to_pa(entry))
            };
        }
        let phys = ppn_to_pa(entry);
        let size = 1u64 << (12 + 9 * level as u32);
        if phys & (size - 1) != 0 {
            return Pte::Absent;
        }
        Pte::Leaf {
            phys,
            perms: Perms {
                read: entry & R != 0,
                write: entry & W != 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for level in 0..=3u8 {
            let pa = 0x1234u64 << (12 + 9 * level as u32);
            for p in [Perms::R, Perms::RW] {
                let e = RiscvSv::encode_leaf(pa, p, level);
                assert_eq!(e & (V | U | A | D | X), V | U | A | D);
                assert_eq!(RiscvSv::decode(e, level), Pte::Leaf { phys: pa, perms: p });
            }
        }
        assert_eq!(
            RiscvSv::encode_leaf(0x8000_0000, Perms::RW, 0),
            (0x80000 << 10) | 0xd7
        );
        for level in 1..=4u8 {
            let e = RiscvSv::encode_table(0xabc_d000, level);
            assert_eq!(e, (0xabcd << 10) | 1);
            assert_eq!(RiscvSv::decode(e, level), Pte::Table(0xabc_d000));
        }
        assert_eq!(
            RiscvSv::decode(RiscvSv::encode_table(0x5000, 1), 0),
            Pte::Absent
        );
        assert_eq!(RiscvSv::decode(V | W, 0), Pte::Absent);
        // Misaligned megapage.
        assert_eq!(RiscvSv::decode((1 << 10) | V | R, 1), Pte::Absent);
        assert!(!RiscvSv::supports_perms(Perms::W));
    }
}

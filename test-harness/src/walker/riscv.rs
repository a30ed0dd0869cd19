//! RISC-V Sv39/Sv48/Sv57 page tables as walked by a RISC-V IOMMU's first stage (RISC-V
//! privileged spec, 4.3.1-4.3.2 "Virtual Address Translation Process", 4.4-4.6; RISC-V IOMMU
//! spec, 2.3 "Process to translate an IOVA").
//!
//! Walker level `i` is the privileged spec's `i` (level 0 = 4 KiB pages).
//!
//! Enforced here (step numbers of 4.3.2):
//! - the IOVA must be a valid (sign-extended) virtual address: with zero-extended IOVAs only
//!   the lower half, `[0, 2^(VALEN-1))`, is reachable;
//! - step 3: V = 0 is not present; R = 0 with W = 1 is reserved; reserved bits 60:54 set,
//!   PBMT (62:61) set without Svpbmt, N (63) set without Svnapot: page fault;
//! - step 4: a pointer (R = X = 0) at level 0 faults; in a pointer, D, A and U are reserved
//!   (software must clear them) and PBMT must be 0;
//! - step 5: a device request without PASID is a U-mode request, so a leaf without U faults;
//! - step 6: a superpage whose low PPN fields are not zero is misaligned: page fault;
//! - step 7: A = 0, or D = 0 on a writable leaf, faults when the IOMMU does not update A/D
//!   (we require the engine to set them: a writable leaf needs D).

use super::{Access, Malformed, RefWalker, Step, bad, level_span};

/// Bit 0: valid.
const V: u64 = 1 << 0;
/// Bit 1: readable.
const R: u64 = 1 << 1;
/// Bit 2: writable.
const W: u64 = 1 << 2;
/// Bit 3: executable.
const X: u64 = 1 << 3;
/// Bit 4: user-mode accessible.
const U: u64 = 1 << 4;
/// Bit 6: accessed.
const A: u64 = 1 << 6;
/// Bit 7: dirty.
const D: u64 = 1 << 7;
/// PPN: bits 53:10.
const PPN_SHIFT: u32 = 10;
const PPN_MASK: u64 = (1u64 << 44) - 1;
/// Bits 60:54: reserved.
const RSVD: u64 = 0x7f << 54;
/// Bits 62:61: PBMT (Svpbmt).
const PBMT: u64 = 0b11 << 61;
/// Bit 63: N (Svnapot).
const N: u64 = 1 << 63;

/// The RISC-V Sv39/48/57 walker.
#[derive(Debug, Clone, Copy)]
pub struct RiscvWalker;

impl RefWalker for RiscvWalker {
    const NAME: &'static str = "riscv-sv";
    const WIDTHS: &'static [u32] = &[39, 48, 57];
    const WRITE_ONLY: bool = false;

    fn levels(addr_width: u32) -> Option<u32> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            57 => Some(5),
            _ => None,
        }
    }

    fn last_iova(addr_width: u32) -> u64 {
        // Bits 63:VALEN must equal bit VALEN-1: zero-extended IOVAs reach the lower half only.
        (1u64 << (addr_width - 1)) - 1
    }

    fn spec_leaf_sizes(levels: u32) -> u64 {
        (0..levels).map(level_span).fold(0, |a, b| a | b)
    }

    fn step(entry: u64, level: u32, _top: u32, acc: Access) -> Result<Step, Malformed> {
        if entry & V == 0 {
            return Ok(Step::NotPresent);
        }
        if entry & (R | W) == W {
            return Err(bad(level, entry, "4.3.2 step 3: R=0 W=1 is reserved"));
        }
        if entry & RSVD != 0 {
            return Err(bad(level, entry, "4.3.2 step 3: reserved bits 60:54 set"));
        }
        if entry & PBMT != 0 {
            return Err(bad(
                level,
                entry,
                "4.3.2 step 3: PBMT set (Svpbmt not assumed)",
            ));
        }
        if entry & N != 0 {
            return Err(bad(level, entry, "4.3.2 step 3: N set (Svnapot not used)"));
        }
        let ppn = (entry >> PPN_SHIFT) & PPN_MASK;
        let addr = ppn << 12;
        if entry & (R | X) == 0 {
            if level == 0 {
                return Err(bad(level, entry, "4.3.2 step 4: pointer at level 0"));
            }
            if entry & (D | A | U) != 0 {
                return Err(bad(level, entry, "4.3.2: D/A/U are reserved in a pointer"));
            }
            return Ok(Step::Table {
                addr,
                next_level: level - 1,
                access: acc,
            });
        }
        if entry & U == 0 {
            return Err(bad(
                level,
                entry,
                "IOMMU 2.3: U=0 leaf faults for U-mode DMA",
            ));
        }
        let size = level_span(level);
        if addr & (size - 1) != 0 {
            return Err(bad(level, entry, "4.3.2 step 6: misaligned superpage"));
        }
        if entry & A == 0 {
            return Err(bad(level, entry, "4.3.2 step 7: A=0"));
        }
        if entry & W != 0 && entry & D == 0 {
            return Err(bad(level, entry, "4.3.2 step 7: writable leaf with D=0"));
        }
        Ok(Step::Leaf {
            base: addr,
            size,
            access: acc.and(Access {
                read: entry & R != 0,
                write: entry & W != 0,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimMemory;
    use crate::walker::translate;

    fn ptr(pa: u64) -> u64 {
        ((pa >> 12) << PPN_SHIFT) | V
    }
    fn leaf(pa: u64, flags: u64) -> u64 {
        ((pa >> 12) << PPN_SHIFT) | V | U | A | flags
    }

    #[test]
    fn walks_sv39() {
        let mut m = SimMemory::new();
        m.write(0x1000, ptr(0x2000));
        m.write(0x2000, ptr(0x3000));
        m.write(0x2000 + 8, leaf(0x4000_0000, R | W | D));
        m.write(0x3000 + 3 * 8, leaf(0x9000, R));
        let w = translate::<RiscvWalker>(&m, 0x1000, 39, 0x3abc)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.read, w.write), (0x9abc, true, false));
        let w = translate::<RiscvWalker>(&m, 0x1000, 39, 0x20_0010)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.write, w.leaf_size), (0x4000_0010, true, 1 << 21));
        // Misaligned superpage.
        m.write(0x2000 + 8, leaf(0x4000_1000, R | W | D));
        assert!(translate::<RiscvWalker>(&m, 0x1000, 39, 0x20_0000).is_err());
        // Writable without D, W without R.
        m.write(0x2000 + 8, leaf(0x4000_0000, R | W));
        assert!(translate::<RiscvWalker>(&m, 0x1000, 39, 0x20_0000).is_err());
        m.write(0x2000 + 8, leaf(0x4000_0000, W | D));
        assert!(translate::<RiscvWalker>(&m, 0x1000, 39, 0x20_0000).is_err());
        // Upper half is not reachable with a zero-extended IOVA.
        m.write(0x1000 + 256 * 8, leaf(0x8000_0000, R));
        assert_eq!(translate::<RiscvWalker>(&m, 0x1000, 39, 1 << 38), Ok(None));
    }
}

//! Intel VT-d second-level paging structures (VT-d spec rev 3.x/4.x, section 9.8
//! "Second-Level Paging Entries"; translation process in 3.7 "Second-Level Translation").
//!
//! Walker level 0 is the SL-PTE (4 KiB), 1 the SL-PDE (2 MiB with PS=1), 2 the SL-PDPE (1 GiB
//! with PS=1), 3 the SL-PML4E and 4 the SL-PML5E. An AGAW of 39/48/57 bits means 3/4/5 levels.
//!
//! Enforced here:
//! - an entry with R=0 and W=0 is not present (9.8: "Read"/"Write" fields, 3.7);
//! - R and W of every level are ANDed (3.7.2 "Access Rights");
//! - PS (bit 7) at the SL-PDE and SL-PDPE selects a 2 MiB / 1 GiB page; PS at the SL-PML4E
//!   and SL-PML5E is reserved;
//! - reserved bits are faults: address bits above the host address width, bit 11 (reserved in
//!   QEMU's model unless snoop control is reported: we treat it as reserved), and the low
//!   address bits of a large page (20:12 for 2 MiB, 29:12 for 1 GiB);
//! - IOVA bits above the AGAW fault (3.7 "input address beyond AGAW").

use super::{Access, Malformed, RefWalker, Step, bad, level_span};

/// Bit 0: read permitted.
const R: u64 = 1 << 0;
/// Bit 1: write permitted.
const W: u64 = 1 << 1;
/// Bit 7: page size (leaf at the SL-PDE / SL-PDPE).
const PS: u64 = 1 << 7;
/// Bit 11: reserved (snoop behaviour only with ECAP.SC; QEMU faults on it).
const BIT11: u64 = 1 << 11;
/// Host address width the walker assumes (address bits 51:HAW are reserved): 48, as QEMU's
/// `intel-iommu,aw-bits=48`.
pub const HAW: u32 = 48;
/// Address field: bits HAW-1:12.
const ADDR: u64 = ((1u64 << HAW) - 1) & !0xfff;
/// Bits 51:HAW are reserved; bits 63:52 are ignored.
const RSVD_HIGH: u64 = ((1u64 << 52) - 1) & !((1u64 << HAW) - 1);

/// The VT-d second-level walker.
#[derive(Debug, Clone, Copy)]
pub struct VtdWalker;

impl RefWalker for VtdWalker {
    const NAME: &'static str = "vtd-sl";
    const WIDTHS: &'static [u32] = &[39, 48, 57];
    const WRITE_ONLY: bool = true;

    fn levels(addr_width: u32) -> Option<u32> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            57 => Some(5),
            _ => None,
        }
    }

    fn spec_leaf_sizes(_levels: u32) -> u64 {
        level_span(0) | level_span(1) | level_span(2)
    }

    fn step(entry: u64, level: u32, _top: u32, acc: Access) -> Result<Step, Malformed> {
        if entry & (R | W) == 0 {
            return Ok(Step::NotPresent);
        }
        if entry & RSVD_HIGH != 0 {
            return Err(bad(
                level,
                entry,
                "VT-d 9.8: address bits above HAW are reserved",
            ));
        }
        if entry & BIT11 != 0 {
            return Err(bad(
                level,
                entry,
                "VT-d 9.8: bit 11 reserved (QEMU intel_iommu)",
            ));
        }
        let access = acc.and(Access {
            read: entry & R != 0,
            write: entry & W != 0,
        });
        let addr = entry & ADDR;
        match level {
            0 => Ok(Step::Leaf {
                base: addr,
                size: level_span(0),
                access,
            }),
            1 | 2 if entry & PS != 0 => {
                let size = level_span(level);
                if addr & (size - 1) != 0 {
                    return Err(bad(
                        level,
                        entry,
                        "VT-d 9.8: low address bits of a large page are reserved",
                    ));
                }
                Ok(Step::Leaf {
                    base: addr,
                    size,
                    access,
                })
            }
            _ => {
                if entry & PS != 0 {
                    return Err(bad(
                        level,
                        entry,
                        "VT-d 9.8: PS is reserved at SL-PML4E/PML5E",
                    ));
                }
                Ok(Step::Table {
                    addr,
                    next_level: level - 1,
                    access,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimMemory;
    use crate::walker::translate;

    #[test]
    fn walks_hand_built_tables() {
        let mut m = SimMemory::new();
        // 3 levels (39-bit): root 0x1000 -> PDPE[0] -> 0x2000 (PD); PD[1] = 2 MiB page RO;
        // PD[0] -> 0x3000 (PT); PT[5] = 4 KiB page RW.
        m.write(0x1000, 0x2000 | R | W);
        m.write(0x2000 + 8, 0x4000_0000 | PS | R);
        m.write(0x2000, 0x3000 | R | W);
        m.write(0x3000 + 5 * 8, 0x7000 | R | W);
        let w = translate::<VtdWalker>(&m, 0x1000, 39, 0x20_0123)
            .unwrap()
            .unwrap();
        assert_eq!(
            (w.phys, w.read, w.write, w.leaf_size),
            (0x4000_0123, true, false, 1 << 21)
        );
        let w = translate::<VtdWalker>(&m, 0x1000, 39, 0x5fff)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.write, w.leaf_size), (0x7fff, true, 4096));
        assert_eq!(translate::<VtdWalker>(&m, 0x1000, 39, 0x6000), Ok(None));
        assert_eq!(translate::<VtdWalker>(&m, 0x1000, 39, 1 << 39), Ok(None));
        // Read-only PDPE removes write below it.
        m.write(0x1000, 0x2000 | R);
        let w = translate::<VtdWalker>(&m, 0x1000, 39, 0x5000)
            .unwrap()
            .unwrap();
        assert!(!w.write);
        // Misaligned 2 MiB page.
        m.write(0x2000 + 8, 0x4000_1000 | PS | R);
        assert!(translate::<VtdWalker>(&m, 0x1000, 39, 0x20_0000).is_err());
        // PS at the PML4E (48-bit, 4 levels).
        let mut m = SimMemory::new();
        m.write(0x1000, 0x8000_0000 | PS | R | W);
        assert!(translate::<VtdWalker>(&m, 0x1000, 48, 0).is_err());
    }
}

//! AMD-Vi host (v1) I/O page tables (AMD I/O Virtualization Technology (IOMMU) Specification,
//! 48882, section 2.2.3 "I/O Page Tables for Host Translations", figures "I/O Page Table
//! Entry (PTE)" / "Page Directory Entry (PDE)" and table "Example Page Size Encodings").
//!
//! Walker level `n` is AMD level `n + 1` (AMD level 1 holds 4 KiB PTEs). The DTE Mode (root
//! level) is 3/4/5/6 for 39/48/57/64-bit IOVAs.
//!
//! Enforced here:
//! - PR (bit 0) = 0: not present;
//! - NextLevel (bits 11:9): 1..=current-1 points to a table at that level, possibly skipping
//!   levels (the skipped levels' IOVA bits must be zero, else an I/O page fault); 0 is a page of
//!   the current level's default size; 7 is a page whose size is encoded in the low address
//!   bits (the count of consecutive ones from bit 12); NextLevel >= the current level faults;
//! - IR (bit 61) and IW (bit 62) of every level are ANDed;
//! - bits 58:52 are reserved; low address bits of a default-size large page must be zero;
//! - IOVA bits above the root level's reach must be zero.

use super::{Access, Malformed, RefWalker, Step, bad, level_span};

/// Bit 0: present.
const PR: u64 = 1 << 0;
/// Bits 11:9: next level.
const NL_SHIFT: u32 = 9;
/// Bits 51:12: address.
const ADDR: u64 = ((1u64 << 52) - 1) & !0xfff;
/// Bits 58:52: reserved.
const RSVD: u64 = 0x7f << 52;
/// Bit 61: read permitted.
const IR: u64 = 1 << 61;
/// Bit 62: write permitted.
const IW: u64 = 1 << 62;

/// The AMD-Vi v1 walker.
#[derive(Debug, Clone, Copy)]
pub struct AmdV1Walker;

impl RefWalker for AmdV1Walker {
    const NAME: &'static str = "amd-v1";
    const WIDTHS: &'static [u32] = &[39, 48, 57, 64];
    const WRITE_ONLY: bool = true;

    fn levels(addr_width: u32) -> Option<u32> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            57 => Some(5),
            64 => Some(6),
            _ => None,
        }
    }

    fn spec_leaf_sizes(levels: u32) -> u64 {
        (0..levels).map(level_span).fold(0, |a, b| a | b)
    }

    fn step(entry: u64, level: u32, _top: u32, acc: Access) -> Result<Step, Malformed> {
        if entry & PR == 0 {
            return Ok(Step::NotPresent);
        }
        if entry & RSVD != 0 {
            return Err(bad(level, entry, "AMD 2.2.3: bits 58:52 reserved"));
        }
        let access = acc.and(Access {
            read: entry & IR != 0,
            write: entry & IW != 0,
        });
        let addr = entry & ADDR;
        let amd_level = level + 1;
        let nl = ((entry >> NL_SHIFT) & 7) as u32;
        match nl {
            0 => {
                let size = level_span(level);
                if addr & (size - 1) != 0 {
                    return Err(bad(
                        level,
                        entry,
                        "AMD 2.2.3: large page address not aligned",
                    ));
                }
                Ok(Step::Leaf {
                    base: addr,
                    size,
                    access,
                })
            }
            7 => {
                // Size: 2^(13 + number of consecutive ones from address bit 12).
                let ones = (addr >> 12).trailing_ones();
                let size_shift = 13 + ones;
                if size_shift >= 64 {
                    return Err(bad(
                        level,
                        entry,
                        "AMD 2.2.3: NextLevel=7 size out of range",
                    ));
                }
                let size = 1u64 << size_shift;
                if size <= level_span(level) || size >= level_span(level + 1) {
                    return Err(bad(
                        level,
                        entry,
                        "AMD 2.2.3: NextLevel=7 page size not between this level and the next",
                    ));
                }
                Ok(Step::Leaf {
                    base: addr & !(size - 1),
                    size,
                    access,
                })
            }
            _ if nl >= amd_level => Err(bad(
                level,
                entry,
                "AMD 2.2.3: NextLevel must be below the current level",
            )),
            _ => Ok(Step::Table {
                addr,
                next_level: nl - 1,
                access,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimMemory;
    use crate::walker::{enumerate, translate};

    fn pde(addr: u64, nl: u64) -> u64 {
        addr | (nl << NL_SHIFT) | PR | IR | IW
    }

    #[test]
    fn walks_skips_and_large_pages() {
        let mut m = SimMemory::new();
        // 4 levels (48-bit). Root (AMD L4) entry 0 skips to an AMD level-1 table at 0x3000.
        m.write(0x1000, pde(0x3000, 1));
        m.write(0x3000 + 2 * 8, 0x9000 | PR | IR);
        let w = translate::<AmdV1Walker>(&m, 0x1000, 48, 0x2010)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.read, w.write), (0x9010, true, false));
        // The skipped levels' bits must be zero.
        assert_eq!(
            translate::<AmdV1Walker>(&m, 0x1000, 48, 0x20_2000),
            Ok(None)
        );
        let a = enumerate::<AmdV1Walker>(&m, 0x1000, 48).unwrap();
        assert_eq!(a.leaves.len(), 1);
        assert_eq!(a.tables, vec![(0x1000, 3), (0x3000, 0)]);
        // Root entry 1 -> AMD L3 table; its entry 0 is a 1 GiB page (NextLevel 0).
        m.write(0x1000 + 8, pde(0x4000, 3));
        m.write(0x4000, 0x4000_0000 | PR | IR | IW);
        let w = translate::<AmdV1Walker>(&m, 0x1000, 48, (1 << 39) + 0x1234)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.leaf_size), (0x4000_1234, 1 << 30));
        // PDE without IW removes write.
        m.write(0x1000 + 8, (pde(0x4000, 3)) & !IW);
        assert!(
            !translate::<AmdV1Walker>(&m, 0x1000, 48, 1 << 39)
                .unwrap()
                .unwrap()
                .write
        );
        // NextLevel 7, 16 KiB page at AMD level 1.
        m.write(0x3000 + 4 * 8, 0x8000 | 0x1000 | (7 << NL_SHIFT) | PR | IR);
        let w = translate::<AmdV1Walker>(&m, 0x1000, 48, 0x4008)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.leaf_size), (0x8008, 16384));
        // NextLevel not descending.
        m.write(0x1000 + 16, pde(0x5000, 4));
        assert!(translate::<AmdV1Walker>(&m, 0x1000, 48, 2 << 39).is_err());
        // Beyond the root's reach.
        assert_eq!(translate::<AmdV1Walker>(&m, 0x1000, 48, 1 << 48), Ok(None));
    }
}

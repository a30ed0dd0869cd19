//! Arm VMSAv8-64 stage-1 translation tables, 4 KiB granule, 48-bit output addresses (Arm ARM
//! DDI 0487, D8.3 "Translation table descriptor formats", D8.4 "Memory access control").
//!
//! Walker level 0 is lookup level 3 (pages), 1 is level 2 (2 MiB blocks), 2 is level 1
//! (1 GiB blocks), 3 is level 0. A 39-bit input range (T0SZ = 25) starts at level 1 (3 levels),
//! a 48-bit range (T0SZ = 16) at level 0 (4 levels).
//!
//! Enforced here:
//! - descriptor `bits[1:0]`: `x0` invalid; `11` table at levels 0-2 and page at level 3; `01`
//!   block at levels 1-2 only (a level-0 block needs FEAT_LPA2; `01` at level 3 is reserved and
//!   faults);
//! - AF (bit 10) must be 1 on blocks and pages (otherwise an Access flag fault: the engine must
//!   set it, hardware AF updates are not assumed);
//! - `AP[2]` (bit 7) = 1 makes the page read-only; `APTable[1]` (bit 62) in a table descriptor
//!   makes everything below read-only;
//! - RES0 bits: output-address bits 51:48 (no FEAT_LPA), the low output-address bits of a
//!   block; the Contiguous hint (bit 52) is rejected too (the engine's leaf sizes never use it).
//!
//! `AP[1]` (unprivileged access) and `APTable[0]` are not checked: they depend on how the SMMU
//! presents the stream's privilege (STE.PRIVCFG).

use super::{Access, Malformed, RefWalker, Step, bad, level_span};

/// Bit 0: valid.
const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0-2) / page (level 3).
const TABLE_OR_PAGE: u64 = 1 << 1;
/// Bit 7: AP[2], read-only.
const AP2: u64 = 1 << 7;
/// Bit 10: access flag.
const AF: u64 = 1 << 10;
/// Output / next-table address, bits 47:12.
const OA: u64 = ((1u64 << 48) - 1) & !0xfff;
/// Bits 51:48: RES0 without FEAT_LPA.
const OA_HIGH_RES0: u64 = 0xf << 48;
/// Bit 52: Contiguous hint.
const CONTIG: u64 = 1 << 52;
/// Bit 62: APTable[1], no writes below.
const APTABLE_RO: u64 = 1 << 62;

/// The Arm stage-1 walker.
#[derive(Debug, Clone, Copy)]
pub struct ArmS1Walker;

impl RefWalker for ArmS1Walker {
    const NAME: &'static str = "arm-s1";
    const WIDTHS: &'static [u32] = &[39, 48];
    const WRITE_ONLY: bool = false;

    fn levels(addr_width: u32) -> Option<u32> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            _ => None,
        }
    }

    fn spec_leaf_sizes(_levels: u32) -> u64 {
        level_span(0) | level_span(1) | level_span(2)
    }

    fn step(entry: u64, level: u32, _top: u32, acc: Access) -> Result<Step, Malformed> {
        if entry & VALID == 0 {
            return Ok(Step::NotPresent);
        }
        if entry & OA_HIGH_RES0 != 0 {
            return Err(bad(
                level,
                entry,
                "D8.3: OA bits 51:48 are RES0 without FEAT_LPA",
            ));
        }
        let addr = entry & OA;
        let is_table_bit = entry & TABLE_OR_PAGE != 0;
        if level > 0 && is_table_bit {
            let access = Access {
                read: acc.read,
                write: acc.write && entry & APTABLE_RO == 0,
            };
            return Ok(Step::Table {
                addr,
                next_level: level - 1,
                access,
            });
        }
        // Block (levels 1, 2) or page (level 0).
        if level == 0 && !is_table_bit {
            return Err(bad(
                level,
                entry,
                "D8.3: descriptor 0b01 at level 3 is reserved",
            ));
        }
        if level >= 3 {
            return Err(bad(
                level,
                entry,
                "D8.3: no level-0 block with a 4K granule",
            ));
        }
        if entry & AF == 0 {
            return Err(bad(level, entry, "D8.4: AF = 0 (Access flag fault)"));
        }
        if entry & CONTIG != 0 {
            return Err(bad(level, entry, "Contiguous hint set on a 4K/2M/1G leaf"));
        }
        let size = level_span(level);
        if addr & (size - 1) != 0 {
            return Err(bad(
                level,
                entry,
                "D8.3: low output-address bits of a block are RES0",
            ));
        }
        Ok(Step::Leaf {
            base: addr,
            size,
            access: Access {
                read: acc.read,
                write: acc.write && entry & AP2 == 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimMemory;
    use crate::walker::translate;

    #[test]
    fn walks_tables_blocks_pages() {
        let mut m = SimMemory::new();
        // 39 bits: root (L1) [0] -> L2 table 0x2000; L2[0] -> L3 table 0x3000; L2[1] block.
        m.write(0x1000, 0x2000 | 0b11);
        m.write(0x2000, 0x3000 | 0b11);
        m.write(0x2000 + 8, 0x4020_0000 | AF | 0b01);
        m.write(0x3000 + 8, 0x5000 | AF | AP2 | 0b11);
        let w = translate::<ArmS1Walker>(&m, 0x1000, 39, 0x1004)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.read, w.write), (0x5004, true, false));
        let w = translate::<ArmS1Walker>(&m, 0x1000, 39, 0x20_0008)
            .unwrap()
            .unwrap();
        assert_eq!((w.phys, w.write, w.leaf_size), (0x4020_0008, true, 1 << 21));
        // L1 block (walker level 2) is fine; AF clear is not.
        m.write(0x1000 + 8, 0x8000_0000 | 0b01);
        assert!(translate::<ArmS1Walker>(&m, 0x1000, 39, 1 << 30).is_err());
        m.write(0x1000 + 8, 0x8000_0000 | AF | 0b01);
        assert!(
            translate::<ArmS1Walker>(&m, 0x1000, 39, 1 << 30)
                .unwrap()
                .is_some()
        );
        // 0b01 at level 3 is reserved.
        m.write(0x3000 + 16, 0x6000 | AF | 0b01);
        assert!(translate::<ArmS1Walker>(&m, 0x1000, 39, 0x2000).is_err());
        // APTable[1] makes the subtree read-only.
        m.write(0x1000, 0x2000 | APTABLE_RO | 0b11);
        assert!(
            !translate::<ArmS1Walker>(&m, 0x1000, 39, 0x20_0000)
                .unwrap()
                .unwrap()
                .write
        );
        // Level-0 block (48 bits).
        let mut m = SimMemory::new();
        m.write(0x1000, AF | 0b01);
        assert!(translate::<ArmS1Walker>(&m, 0x1000, 48, 0).is_err());
    }
}

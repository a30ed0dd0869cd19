//! Arm VMSAv8-64 stage-1 translation tables, 4 KiB granule, as walked by an SMMUv3 for a
//! stage-1 context descriptor.
//!
//! Source: Arm Architecture Reference Manual for A-profile (DDI 0487), section D8.3
//! "Translation table descriptor formats" (table, block and page descriptors; the stage-1
//! attribute fields), and D8.4 / D8.5 for the meaning of AP, SH, AttrIndx, nG, PXN/UXN.
//!
//! Level names: engine level 0 is Arm lookup level 3 (page descriptors, 4 KiB), engine level 1
//! is Arm level 2 (2 MiB blocks), engine level 2 is Arm level 1 (1 GiB blocks), engine level 3
//! is Arm level 0 (table descriptors only; a level-0 block needs FEAT_LPA2, not used). A 39-bit
//! input range (T0SZ = 25) starts the walk at Arm level 1 (3 levels); 48 bits (T0SZ = 16) at
//! level 0 (4 levels).
//!
//! Bits used (D8.3):
//! - bits 1:0: 0b00 / 0b10 invalid; 0b11 a table descriptor at levels 0-2 and a page
//!   descriptor at level 3; 0b01 a block descriptor at levels 1-2 (invalid at levels 0 and 3).
//! - bits 47:12: output address / next-level table address (48-bit OA, no FEAT_LPA2).
//! - bits 4:2 `AttrIndx` = 0: the entry of MAIR that the SMMU backend programs in the context
//!   descriptor (CD.MAIR attribute 0) as Normal, Inner/Outer Write-Back cacheable memory.
//! - bits 9:8 `SH` = 0b11: Inner Shareable.
//! - bit 6 `AP[1]` = 1: accessible at EL0 (unprivileged). SMMU stage-1 DMA is normally issued
//!   as unprivileged (the SMMU's default when the master does not say otherwise), so the page
//!   must be EL0-accessible; for unprivileged accesses AP\[1\] = 1 gives the read/write rights
//!   that AP\[2\] selects.
//! - bit 7 `AP[2]` = 1 for read-only, 0 for read-write. Write-only cannot be expressed.
//! - bit 10 `AF` = 1: accessed, so no Access flag fault (no hardware AF management assumed).
//! - bit 11 `nG` = 1: not global, TLB entries are tagged with the context's ASID.
//! - bit 53 `PXN` and bit 54 `UXN` = 1: no instruction fetch through DMA mappings.
//!
//! Table descriptors carry no attributes (APTable, XNTable, NSTable all 0: no restriction).

use crate::mem::PhysAddr;
use crate::pagetable::{Format, Perms, Pte};

/// Arm VMSAv8-64 stage-1 format with the 4 KiB granule (Arm ARM D8.3).
#[derive(Debug, Clone, Copy)]
pub struct ArmS1;

/// Bits 1:0 = 0b11: table descriptor (levels 0-2) or page descriptor (level 3) (D8.3).
const TYPE_TABLE_OR_PAGE: u64 = 0b11;
/// Bits 1:0 = 0b01: block descriptor (levels 1-2) (D8.3).
const TYPE_BLOCK: u64 = 0b01;
/// Bits 47:12: output address (D8.3).
const ADDR: u64 = 0x0000_ffff_ffff_f000;
/// Bits 4:2: AttrIndx; 0 selects MAIR attribute 0 (D8.3).
const ATTR_INDX_0: u64 = 0 << 2;
/// Bit 6: AP[1], EL0 access (D8.3, stage-1 data access permissions).
const AP1_EL0: u64 = 1 << 6;
/// Bit 7: AP[2], read-only (D8.3).
const AP2_RO: u64 = 1 << 7;
/// Bits 9:8 = 0b11: Inner Shareable (D8.3).
const SH_INNER: u64 = 0b11 << 8;
/// Bit 10: AF, access flag (D8.3).
const AF: u64 = 1 << 10;
/// Bit 11: nG, not global (D8.3).
const NG: u64 = 1 << 11;
/// Bit 53: PXN (D8.3).
const PXN: u64 = 1 << 53;
/// Bit 54: UXN / XN (D8.3).
const UXN: u64 = 1 << 54;

const fn level_mask(level: u8) -> u64 {
    let bits = 12 + 9 * level as u32;
    if bits >= 48 {
        0
    } else {
        ADDR & !((1u64 << bits) - 1)
    }
}

impl Format for ArmS1 {
    const NAME: &'static str = "arm-s1";
    const ADDR_WIDTHS: &'static [u32] = &[39, 48];
    const OA_BITS: u32 = 48;

    fn levels_for(addr_width: u32) -> Option<u8> {
        match addr_width {
            39 => Some(3),
            48 => Some(4),
            _ => None,
        }
    }

    /// Pages at Arm level 3 (engine 0), blocks at Arm levels 2 and 1 (engine 1 and 2).
    fn leaf_allowed(level: u8) -> bool {
        level <= 2
    }

    /// Read-only and read-write. Write-only (and no access) cannot be expressed by AP\[2:1\].
    fn supports_perms(perms: Perms) -> bool {
        perms.read
    }

    fn encode_leaf(phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let ty = if level == 0 {
            TYPE_TABLE_OR_PAGE
        } else {
            TYPE_BLOCK
        };
        let ro = if perms.write { 0 } else { AP2_RO };
        (phys & level_mask(level))
            | ty
            | ATTR_INDX_0
            | AP1_EL0
            | ro
            | SH_INNER
            | AF
            | NG
            | PXN
            | UXN
    }

    fn encode_table(table: PhysAddr, _level: u8) -> u64 {
        (table & ADDR) | TYPE_TABLE_OR_PAGE
    }

    /// Invalid descriptors (bit 0 clear), and block descriptors where the architecture treats
    /// them as invalid (Arm levels 0 and 3), decode as [`Pte::Absent`]: a walk faults on them.
    #[inline(always)]
    fn decode(entry: u64, level: u8) -> Pte {
        let leaf = |e: u64| Pte::Leaf {
            phys: e & level_mask(level),
            perms: Perms {
                read: true,
                write: e & AP2_RO == 0,
            },
        };
        match (entry & 0b11, level) {
            (TYPE_TABLE_OR_PAGE, 0) => leaf(entry),
            (TYPE_TABLE_OR_PAGE, _) => Pte::Table(entry & ADDR),
            (TYPE_BLOCK, 1 | 2) => leaf(entry),
            _ => Pte::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for level in 0..=2u8 {
            let pa = 0x1234u64 << (12 + 9 * level as u32) & ADDR;
            for p in [Perms::R, Perms::RW] {
                let e = ArmS1::encode_leaf(pa, p, level);
                assert_eq!(ArmS1::decode(e, level), Pte::Leaf { phys: pa, perms: p });
                assert_eq!(
                    e & (AF | NG | PXN | UXN | AP1_EL0),
                    AF | NG | PXN | UXN | AP1_EL0
                );
                assert_eq!(e & SH_INNER, SH_INNER);
                assert_eq!(e & 0b11, if level == 0 { 0b11 } else { 0b01 });
            }
        }
        assert_eq!(ArmS1::encode_leaf(0x5000, Perms::R, 0) & AP2_RO, AP2_RO);
        for level in 1..=3u8 {
            let e = ArmS1::encode_table(0xabc_d000, level);
            assert_eq!(ArmS1::decode(e, level), Pte::Table(0xabc_d000));
        }
        assert_eq!(ArmS1::decode(0x4000_0000 | 0b01, 3), Pte::Absent);
        assert_eq!(ArmS1::decode(0x4000 | 0b01, 0), Pte::Absent);
        assert_eq!(ArmS1::decode(0x4000 | 0b10, 0), Pte::Absent);
        assert!(!ArmS1::supports_perms(Perms::W));
        assert!(ArmS1::supports_perms(Perms::R));
    }
}

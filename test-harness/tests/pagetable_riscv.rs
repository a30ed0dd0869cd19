//! Page-table conformance suite for the RiscvSv format against the independent `RiscvWalker`
//! (see `iommu_test_harness::conformance`), one module per address width.
//!
//! `beyond_width` checks that zero-extended IOVAs at or above 2^(VALEN-1) are refused: with
//! Sv39/48/57 a device's IOVA must be a valid (sign-extended) virtual address (RISC-V
//! privileged spec 4.3.2; QEMU's riscv-iommu.c faults otherwise).

use iommu_hal::pagetable::format::RiscvSv;
use iommu_test_harness::walker::RiscvWalker;

iommu_test_harness::pagetable_conformance!(w39, RiscvSv, RiscvWalker, 39);
iommu_test_harness::pagetable_conformance!(w48, RiscvSv, RiscvWalker, 48);
iommu_test_harness::pagetable_conformance!(w57, RiscvSv, RiscvWalker, 57);

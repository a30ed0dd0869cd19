//! Page-table conformance suite for the RiscvSv format against the independent `RiscvWalker`
//! (see `iommu_test_harness::conformance`), one module per address width.

use iommu_hal::pagetable::format::RiscvSv;
use iommu_test_harness::walker::RiscvWalker;

iommu_test_harness::pagetable_conformance!(w39, RiscvSv, RiscvWalker, 39);
iommu_test_harness::pagetable_conformance!(w48, RiscvSv, RiscvWalker, 48);
iommu_test_harness::pagetable_conformance!(w57, RiscvSv, RiscvWalker, 57);

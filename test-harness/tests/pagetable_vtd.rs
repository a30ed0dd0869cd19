//! Page-table conformance suite for the VtdSl format against the independent `VtdWalker`
//! (see `iommu_test_harness::conformance`), one module per address width.

use iommu_hal::pagetable::format::VtdSl;
use iommu_test_harness::walker::VtdWalker;

iommu_test_harness::pagetable_conformance!(w39, VtdSl, VtdWalker, 39);
iommu_test_harness::pagetable_conformance!(w48, VtdSl, VtdWalker, 48);
iommu_test_harness::pagetable_conformance!(w57, VtdSl, VtdWalker, 57);

//! Page-table conformance suite for the ArmS1 format against the independent `ArmS1Walker`
//! (see `iommu_test_harness::conformance`), one module per address width.

use iommu_hal::pagetable::format::ArmS1;
use iommu_test_harness::walker::ArmS1Walker;

iommu_test_harness::pagetable_conformance!(w39, ArmS1, ArmS1Walker, 39);
iommu_test_harness::pagetable_conformance!(w48, ArmS1, ArmS1Walker, 48);

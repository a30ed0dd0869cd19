//! Page-table conformance suite for the AmdV1 format against the independent `AmdV1Walker`
//! (see `iommu_test_harness::conformance`), one module per address width.

use iommu_hal::pagetable::format::AmdV1;
use iommu_test_harness::walker::AmdV1Walker;

iommu_test_harness::pagetable_conformance!(w39, AmdV1, AmdV1Walker, 39);
iommu_test_harness::pagetable_conformance!(w48, AmdV1, AmdV1Walker, 48);
iommu_test_harness::pagetable_conformance!(w57, AmdV1, AmdV1Walker, 57);
iommu_test_harness::pagetable_conformance!(w64, AmdV1, AmdV1Walker, 64);

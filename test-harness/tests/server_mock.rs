//! The server's message-level suite on the mock backend.

use iommu_test_harness::mock::MockFixture;

iommu_test_harness::server_suite_tests!(MockFixture);

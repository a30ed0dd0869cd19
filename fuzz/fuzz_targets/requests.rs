//! Raw request bytes to the server on the mock backend: never a panic, always a valid reply,
//! nothing changes (`iommu_test_harness::fuzzing::requests`).
#![no_main]

use iommu_test_harness::mock::MockFixture;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_test_harness::fuzzing::requests::<MockFixture>(data)
});

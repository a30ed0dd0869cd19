//! Streams of requests of two clients with unit failures and heals, on the VT-d backend over two
//! VT-d models; the isolation invariant is checked through the hardware after every step
//! (`iommu_test_harness::fuzzing::server_stream`).
#![no_main]

use iommu_test_harness::fixtures::VtdFixture;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_test_harness::fuzzing::server_stream::<VtdFixture>(data)
});

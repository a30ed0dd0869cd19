//! Streams of requests of two clients with unit failures and heals, on the SMMUv3 backend over two
//! SMMUv3 models; the isolation invariant is checked through the hardware after every step
//! (`iommu_test_harness::fuzzing::server_stream`).
#![no_main]

use iommu_test_harness::fixtures::{Qemu, SmmuFixture};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_test_harness::fuzzing::server_stream::<SmmuFixture<Qemu>>(data)
});

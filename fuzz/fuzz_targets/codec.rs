//! The wire format: decode_request / decode_reply never panic, and what decodes re-encodes
//! canonically (`iommu_test_harness::fuzzing::codec`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iommu_test_harness::fuzzing::codec(data));

//! Test harness of iommu-server.
//!
//! What belongs here: simulated physical memory and frame allocators with fault injection
//! ([`sim`]), register-level models of each IOMMU written from the vendors' specifications
//! independently of `hal` (their own page walkers, their own IOTLBs that keep stale entries until
//! invalidated), conformance suites run for every format, message-level tests of the server,
//! benchmarks, and the QEMU runner.

pub mod conformance;
pub mod fixtures;
pub mod fuzzing;
pub mod inject;
pub mod mock;
pub mod model;
pub mod reorder;
pub mod rig;
pub mod server_suite;
pub mod sim;
pub mod walker;

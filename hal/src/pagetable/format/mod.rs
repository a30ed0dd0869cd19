//! Vendor page-table formats. Each file cites the specification section of every bit it uses.

pub mod amd_v1;
pub mod arm_s1;
pub mod riscv;
pub mod vtd;

pub use amd_v1::AmdV1;
pub use arm_s1::ArmS1;
pub use riscv::RiscvSv;
pub use vtd::VtdSl;

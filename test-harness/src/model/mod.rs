//! Register-level models of IOMMUs, written from the vendors' specifications independently of
//! `iommu_hal`, with their own table walkers and caches that keep stale entries until the right
//! invalidation. Each sits behind [`iommu_hal::RegisterAccess`] so a driver can run on it.

pub mod amd;
pub mod riscv;
pub mod smmuv3;
pub mod vtd;

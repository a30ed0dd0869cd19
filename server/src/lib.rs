//! The iommu-server core.
//!
//! What belongs here: turning protocol messages from identified clients into backend
//! operations. Capability checks against a static configuration (which devices and physical
//! regions each client owns, its quotas), domains and their handles, strict invalidation, and
//! routing of fault records to the client that owns the faulting device.
//!
//! The server knows the [`iommu_hal::backend::Backend`] trait, never a vendor module, and
//! contains no unsafe code.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod config;
mod dispatch;
mod faults;
mod quota;
mod server;

pub use config::{ClientConfig, ClientId, Config, ConfigError, DeviceGrant, RegionGrant};
pub use faults::{NoNotify, Notify};
pub use server::{Server, Stats};

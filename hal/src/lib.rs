//! IOMMU hardware abstraction layer.
//!
//! What belongs here:
//! - [`mem`]: the small traits through which all hardware is reached (physical memory, frame
//!   allocation, register access). Bounded waits use embedded-hal's `DelayNs`.
//! - [`pagetable`]: one generic radix page-table engine that takes ranges and writes the fewest
//!   entries the unit allows, with one small `Format` per vendor.
//! - [`backend`]: the trait every vendor backend implements and the server is written against.
//! - [`units`]: the one [`backend::Backend`] implementation over a set of units, which every
//!   vendor's unit type plugs into.
//! - [`wait`]: bounded polling of hardware ([`wait::Timing`], [`wait::poll`]).
//! - One module per vendor (`vtd`, `smmuv3`, `amd`, ...), each with the same inner shape: `regs`
//!   (register map), `tables` (context / device / stream tables), `queue` (invalidation or
//!   command queue), `fault`, and `mod` (the unit and its backend).
//!
//! Nothing here allocates or keeps global state. Unsafe code is confined to the MMIO and
//! physical-memory edges, which live in `platform`; this crate only defines the traits.
#![no_std]
#![cfg_attr(not(test), forbid(unsafe_code))]

#[cfg(test)]
extern crate std;

#[cfg(feature = "amd")]
pub mod amd;
pub mod backend;
pub mod mem;
pub mod pagetable;
#[cfg(feature = "smmuv3")]
pub mod smmuv3;
pub mod units;
#[cfg(feature = "vtd")]
pub mod vtd;
pub mod wait;

pub use mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};

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
//! - One module per vendor (`vtd`, `smmuv3`, `amd`, `riscv`), each with the same inner shape:
//!   `regs` (register map), `tables` (context / device / stream tables), `queue` (invalidation
//!   or command queue), `fault`, and `mod` (the unit and its backend).
//!
//! Nothing here allocates or keeps global state. Unsafe code is confined to the MMIO and
//! physical-memory edges, which live in `platform`; this crate only defines the traits.
//!
//! # Features
//!
//! One per vendor backend, all on by default: `vtd` ([`vtd`]), `smmuv3` ([`smmuv3`]), `amd`
//! ([`amd`]), `riscv` ([`riscv`]). With
//! `default-features = false` only the traits, the backend trait and the page-table engine
//! are built. `defmt` derives `defmt::Format` for the public types.
//!
//! # Using a backend
//!
//! A platform hands a backend its memory accessor and a delay, brings each unit up from its
//! register block (every device is blocked from then on), and points devices at page tables.
//! Here the register block is the test harness's VT-d model, which stands where the platform's
//! MMIO would:
//!
//! ```
//! use iommu_hal::backend::{Backend, DomainConfig};
//! use iommu_hal::pagetable::format::VtdSl;
//! use iommu_hal::pagetable::{PageTable, TableConfig};
//! use iommu_hal::vtd::{VtdBackend, VtdConfig};
//! use iommu_test_harness::model::vtd::{FaultReason, VtdConfig as Model, VtdHandle};
//! use iommu_test_harness::rig::FakeDelay;
//! use iommu_test_harness::sim::{SharedMem, SimAlloc};
//!
//! let mem = SharedMem::new(); // physical memory as the unit sees it
//! let mut frames = SimAlloc::new(mem.clone(), 0x100_0000, 64); // 4 KiB table frames
//! let regs = VtdHandle::new(mem.clone(), Model::default()); // the unit's registers
//!
//! // Up to 4 units; bring one up: root table, queue, translation on, all devices blocked.
//! let mut iommu = VtdBackend::<_, _, _, 4>::new(mem.clone(), FakeDelay::default());
//! let unit = iommu.add_unit(regs.clone(), &mut frames, VtdConfig::default())?;
//! let info = iommu.unit_info(unit);
//! // Device 00:01.0 (requester id 0x0008) is blocked: no context entry for it is present.
//! let blocked = [Err(FaultReason::RootNotPresent), Err(FaultReason::ContextNotPresent)];
//! assert!(blocked.contains(&regs.translate(0x0008, 0x1000, false)));
//!
//! // A domain: an empty table the unit can walk, and a tag; attach device 00:01.0 to it.
//! let config = TableConfig {
//!     addr_width: info.addr_width,
//!     phys_width: info.phys_width,
//!     leaf_sizes: info.leaf_sizes,
//!     split_live_blocks: info.split_live_blocks,
//!     coherent: info.coherent_walk,
//! };
//! let table = PageTable::<VtdSl>::new(config, &mut frames)?;
//! let domain = DomainConfig {
//!     tag: 1,
//!     root: table.root(),
//!     levels: table.levels(),
//!     addr_width: info.addr_width,
//! };
//! iommu.attach(&mut frames, unit, 0x0008, domain)?;
//! // Attached to an empty domain, its DMA reaches the domain's table and faults there: nothing
//! // is mapped yet (mapping is `PageTable`'s job, see [`pagetable`]).
//! assert_eq!(regs.translate(0x0008, 0x1000, false), Err(FaultReason::Read));
//! iommu.block(unit, 0x0008)?;
//! assert!(blocked.contains(&regs.translate(0x0008, 0x1000, false)));
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```
#![no_std]
#![cfg_attr(not(test), forbid(unsafe_code))]

#[cfg(test)]
extern crate std;

#[cfg(feature = "amd")]
pub mod amd;
pub mod backend;
pub mod mem;
pub mod pagetable;
#[cfg(feature = "riscv")]
pub mod riscv;
#[cfg(feature = "smmuv3")]
pub mod smmuv3;
pub mod units;
#[cfg(feature = "vtd")]
pub mod vtd;
pub mod wait;

pub use mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};

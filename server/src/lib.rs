//! The iommu-server core.
//!
//! What belongs here: turning protocol messages from identified clients into backend
//! operations. Capability checks against a static configuration (which devices and physical
//! regions each client owns, its quotas), domains and their handles, strict invalidation, and
//! routing of fault records to the client that owns the faulting device.
//!
//! The server knows the [`iommu_hal::backend::Backend`] trait, never a vendor module, and
//! contains no unsafe code.
//!
//! # Using it
//!
//! The platform builds a [`Config`] (plain data like Hubris's generated tables: `static` when
//! known at build time, or arrays built at boot that the server borrows for its lifetime),
//! then [`Server::new`]`(backend, mem, alloc, notify, config)`, and from its receive loop calls
//! [`Server::handle`]`(client, request_bytes, reply_buf)` with the client identity its IPC
//! gives (seL4 badge, Hubris task index), [`Server::client_exited`] when a client is gone, and
//! [`Server::service_faults`] to drain the units' fault records into the clients' queues: from
//! its interrupt path once the backend signals faults
//! ([`Backend::enable_fault_interrupt`](iommu_hal::backend::Backend::enable_fault_interrupt)),
//! or before requests where it does not (the QEMU images do that).
//!
//! ```
//! use iommu_hal::pagetable::Perms;
//! use iommu_protocol::{MAX_MESSAGE, Reply, Request, decode_reply, encode_request};
//! use iommu_server::{ClientConfig, ClientId, Config, DeviceGrant, NoNotify, RegionGrant, Server};
//! use iommu_test_harness::mock::{MockSpec, VtdMock};
//! use iommu_test_harness::sim::{SharedMem, SimAlloc};
//!
//! // Client 1 owns the device with requester id 0x08 behind unit 0, and 1 MiB of memory.
//! let devices = [DeviceGrant::new(0, 0x08)];
//! let regions = [RegionGrant { base: 0x1000_0000, len: 0x10_0000, perms: Perms::RW }];
//! let clients = [ClientConfig {
//!     id: ClientId(1),
//!     devices: &devices,
//!     regions: &regions,
//!     max_domains: 2,
//!     max_table_frames: 32,
//! }];
//! let config = Config { clients: &clients, reserved: &[] };
//!
//! // A backend (here the test harness's mock), the memory its tables live in, a frame pool.
//! let mem = SharedMem::new();
//! let backend = VtdMock::new(mem.clone(), MockSpec::default());
//! let frames = SimAlloc::new(mem.clone(), 0x4000_0000, 64);
//! let mut server: Server<'_, _, _, _, _> = Server::new(backend, mem, frames, NoNotify, config)?;
//!
//! // The receive loop: bytes in, with the identity the IPC gave; bytes out.
//! let mut request = [0u8; MAX_MESSAGE];
//! let mut reply = [0u8; MAX_MESSAGE];
//! let n = encode_request(&Request::CreateDomain, &mut request)?;
//! let m = server.handle(ClientId(1), &request[..n], &mut reply);
//! assert!(matches!(decode_reply(&reply[..m])?, Reply::DomainCreated { .. }));
//! // A client the configuration does not know is refused.
//! let m = server.handle(ClientId(7), &request[..n], &mut reply);
//! assert_eq!(decode_reply(&reply[..m])?, Reply::Error(iommu_protocol::Error::NotPermitted));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Semantics decided here
//!
//! - **Units.** One backend drives every unit. All units must report the same address width;
//!   every domain is built once for that width with the intersection of the units' leaf
//!   sizes (and `split_live_blocks` / `coherent_walk` only if every unit has them), so any
//!   domain can hold devices behind any unit. Domain tags are `slot + 1`, capped by the
//!   smallest unit's tag space.
//! - **Handles** are per client: domain handles come from the client's own counter, device
//!   handles are indices into the client's configured device list. Another client's handle is
//!   `NoSuchDomain` / `NoSuchDevice`; nothing tells whether it exists elsewhere. A client
//!   unknown to the configuration gets `NotPermitted` for every request.
//! - **Grants.** A physical range must lie wholly within one granted region (two adjacent
//!   grants do not combine), checked overflow-safely, with permissions within that region's.
//!   Argument errors (zero length, empty perms: `InvalidArgument`; alignment: `Misaligned`;
//!   wrap-around or outside a usable IOVA range: `OutOfRange`) are reported before grants.
//! - **Reserved IOVA windows** ([`Config::reserved`], e.g. the x86 MSI window) are not usable:
//!   `Map`/`MapSg` there is `OutOfRange`, `MapAnywhere` never picks them, `Info` reports the
//!   usable ranges.
//! - **Blocking.** Every configured device is blocked at [`Server::new`]; `Detach` blocks; an
//!   unattached device is never passthrough. `Attach` of a device attached to another domain
//!   is `DeviceBusy` (detach first); attaching it again to its own domain is `Done`. `Detach`
//!   of an unattached device is `Done`. `DestroyDomain` with devices attached is `DomainBusy`.
//! - **Quotas.** `CreateDomain` beyond `max_domains` is `QuotaExceeded`. Page-table frames
//!   (roots included) and per-domain unit structures (e.g. SMMUv3 context descriptors,
//!   allocated by `Backend::attach` and returned by `Backend::release_tag` when the domain is
//!   destroyed, after its devices are blocked and the domain-wide invalidation completed) are
//!   charged to the client per request through a counting wrapper around the global
//!   allocator: refused by the quota is `QuotaExceeded`. Frames come back to the quota when
//!   freed (after the invalidation). Empty tables the page-table engine keeps linked in its
//!   reserve (hal's *Table lifetime*) stay charged, but never make a request fail: a map or
//!   unmap short of frames gives the client's reserves back (invalidated first, as any
//!   unmap) and runs once more ([`Server::trim`] does the same on demand). Unit structures shared between domains (VT-d context
//!   tables, SMMUv3 level-2 stream tables) are taken from the pool at start for every
//!   configured device (`Backend::prepare`) and never freed. [`Server::new`] refuses
//!   quotas that could not all be honoured at once: `max_domains` adding up to more than the
//!   usable tags, `max_table_frames` adding up to more than the pool holds after start (it
//!   takes them all once to be sure). So a client within its quota never meets
//!   `OutOfTableMemory`, and cannot learn from it that another client is busy.
//! - **Strict invalidation.** An `Unmap` replies only after `Backend::invalidate` returned Ok
//!   on every unit where a device of the domain is, or was since the last domain-wide
//!   invalidation there, attached; freed table frames go back to the pool only after that.
//!   One invalidation per request per unit ([`Stats::invalidations`]). Maps are invalidated on
//!   units that cache non-present entries only. `MapSg` maps into one gather after checking
//!   every segment's grant and that the whole IOVA range is free; a failure mid-way unmaps what
//!   the request mapped and invalidates, so nothing changed.
//! - **Hardware failure: the invariant.** *A device the server cannot prove blocked is
//!   treated as live.* Every configured device is `Blocked` (the last block of each of its ids
//!   completed), `Attached` to a domain, or `Unsure` about one (an attach, detach or block of
//!   it failed: it may reach that domain, or be blocked; the server cannot tell). A domain a
//!   device is attached to or unsure about is *pinned*: its tables, frames, tag and unit
//!   structures are never freed or reused, its units stay in the set invalidated on every
//!   change, and `DestroyDomain` blocks unsure devices first and fails while it cannot.
//!   Nothing answers `Done` for a state the hardware may not be in: `Detach` of an unsure
//!   device retries the block and answers its outcome; an `Attach` that fails part-way blocks
//!   the device again at once and answers the error (the device stays unsure if even that
//!   fails). Backends make the block idempotent and never short-cut it (a repeated block
//!   invalidates the unit's cached copy again even when the entry already reads blocked).
//!   Every request concerning an unsure device (`Attach`, `Detach`, `DestroyDomain`, client
//!   exit) retries the block until it succeeds.
//! - **Failed invalidation** (`HardwareTimeout` / `HardwareError`): the domain's devices are
//!   blocked (those that cannot be become unsure), the failed units are marked stale and the
//!   frames the change freed wait in the domain; every later request on the domain first
//!   retries a domain-wide invalidation of those units (counted in
//!   [`Stats::invalidations`]) and fails the same way while the unit does not answer. A unit
//!   left stale by a detach whose domain-wide invalidation failed is invalidated before the
//!   domain is destroyed, so its tag never serves another domain with stale entries behind
//!   it. A failed `Map`/`MapSg` is undone in the tables. A failed `Unmap` stays unmapped in
//!   the tables (the removed translations cannot be rebuilt), so for `Unmap` the protocol's
//!   "tables restored" does not hold: the range must be treated as possibly still reachable
//!   until a later request on the domain succeeds, and the devices must be re-attached.
//! - **Client exit** tears down every domain of the client (devices blocked, domain-wide
//!   invalidation, per-domain unit structures released, tables freed), drops its queued
//!   faults and restarts its handle numbering. A domain whose teardown fails is quarantined:
//!   its devices keep their state (an unsure one stays known, so the client's next
//!   incarnation can `Detach` it, which retries the block), and its tag, unit structures,
//!   frames and domain count stay charged to the client (so that no other client's quota
//!   promise breaks) until the teardown is retried successfully: before each request of that
//!   client, and when one of its devices is proven blocked ([`Stats::quarantined_domains`],
//!   [`Stats::reclaimed_domains`]).
//! - **Faults** are routed to the owner of `(unit, requester id)` as its device handle, into a
//!   bounded queue per client; overflow is counted and reported once as `lost` in the next
//!   `Faults` reply; records of unowned devices are counted ([`Stats::faults_unowned`]) and
//!   dropped; [`Notify::notify`] is called once per client that received records.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod config;
mod dispatch;
mod faults;
#[cfg(feature = "defmt")]
mod log;
mod quota;
mod server;

pub use config::{
    ClientConfig, ClientId, Config, ConfigError, DeviceGrant, RegionGrant, usable_ranges,
};
pub use faults::{NoNotify, Notify};
pub use server::{Server, Stats};

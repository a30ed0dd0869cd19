//! The server state and its operations, in terms of the hal API (the wire format is handled in
//! [`crate::dispatch`]).

use iommu_hal::backend::{Backend, BackendError, DomainConfig, ErrorKind, FaultRecord, UnitIndex};
use iommu_hal::pagetable::{
    FindFree, Format, Gather, LeafSizes, Map, PageTable, Perms, PtError, Span, TableConfig,
    Translation, Unmap,
};
use iommu_hal::{FrameAlloc, PAGE_SIZE, PhysMem};

use crate::config::{ClientId, Config, ConfigError, usable_ranges};
use crate::faults::{FaultQueue, Notify, QueuedFault};
use crate::quota::Counting;
use iommu_protocol::{IovaRange, MAX_IOVA_RANGES};

/// Why an operation was refused: the protocol's error codes.
pub(crate) use iommu_protocol::Error as Fail;

/// The protocol error for a backend failure kind.
fn backend_fail(kind: ErrorKind) -> Fail {
    match kind {
        ErrorKind::Timeout => Fail::HardwareTimeout,
        ErrorKind::NoFrame => Fail::OutOfTableMemory,
        ErrorKind::Unsupported => Fail::Unsupported,
        _ => Fail::HardwareError,
    }
}

/// The protocol error for a page-table failure; `quota_refused` says whether the client's
/// quota (rather than the global pool) refused the frame.
fn pt_fail(e: PtError, quota_refused: bool) -> Fail {
    match e {
        PtError::Misaligned => Fail::Misaligned,
        PtError::ZeroLength => Fail::InvalidArgument,
        PtError::OutOfRange | PtError::PhysOutOfRange => Fail::OutOfRange,
        PtError::Overlap => Fail::Overlap,
        PtError::NoFrame if quota_refused => Fail::QuotaExceeded,
        PtError::NoFrame => Fail::OutOfTableMemory,
        PtError::SplitForbidden | PtError::PermsUnsupported | PtError::BadConfig => {
            Fail::Unsupported
        }
    }
}

/// Counters kept by the server, for tests, benchmarks and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Requests handled (every call of [`Server::handle`]).
    pub requests: u64,
    /// Invalidation calls issued to the backend (`invalidate` and `invalidate_all`), each one
    /// unit, each one completed or failed wait.
    pub invalidations: u64,
    /// Error replies, indexed by the protocol error code (codes beyond the array are counted in
    /// the last element).
    pub errors: [u64; 32],
    /// Fault records routed into a client's queue.
    pub faults_routed: u64,
    /// Fault records of devices no client owns (dropped).
    pub faults_unowned: u64,
    /// Fault records dropped because the owner's queue was full (also reported to the owner
    /// as `lost`).
    pub faults_lost: u64,
    /// Times a unit reported that it lost records itself (hardware overflow).
    pub hw_fault_overflows: u64,
    /// Failed `drain_faults` calls.
    pub drain_errors: u64,
    /// Domains that could not be torn down because an invalidation (or the release of their
    /// unit structures) failed while their client was exiting; their tag and table frames
    /// stay reserved forever.
    pub quarantined_domains: u64,
}

pub(crate) struct Domain<F: Format> {
    pub(crate) owner: usize,
    pub(crate) handle: u32,
    pub(crate) table: PageTable<F>,
    /// Units where a device of this domain has been attached since the unit last invalidated
    /// the domain's tag completely: they may cache its translations.
    pub(crate) dirty: u64,
    /// Units where an invalidation of this domain failed; retried before anything else.
    pub(crate) stale: u64,
    /// Units where an attach of a device to this domain was attempted: they may hold
    /// per-domain structures, released by [`Backend::release_tag`] at teardown.
    pub(crate) units: u64,
    /// Frames waiting for the failed invalidation to be retried.
    pub(crate) pending: Gather,
}

pub(crate) enum Slot<F: Format> {
    Free,
    Live(Domain<F>),
    /// Torn down while an invalidation could not complete: tag and frames stay reserved.
    Quarantined(#[allow(dead_code)] Domain<F>),
}

pub(crate) struct ClientState<const Q: usize> {
    pub(crate) domains: u32,
    pub(crate) frames: u64,
    pub(crate) next_handle: u32,
    pub(crate) faults: FaultQueue<Q>,
}

impl<const Q: usize> ClientState<Q> {
    const fn new() -> Self {
        ClientState {
            domains: 0,
            frames: 0,
            next_handle: 1,
            faults: FaultQueue::new(),
        }
    }
}

/// The IOMMU server: one value owning the backend, the memory the tables live in, the frame
/// pool, the platform's notification hook and the static configuration.
///
/// Capacities are const generics: `CLIENTS` configured clients, `DOMAINS` domains over all
/// clients (also capped by the units' tag space), `DEVICES` configured devices over all
/// clients, `FAULTS` queued fault records per client.
pub struct Server<
    'a,
    B: Backend,
    M: PhysMem,
    A: FrameAlloc,
    N: Notify,
    const CLIENTS: usize = 8,
    const DOMAINS: usize = 32,
    const DEVICES: usize = 64,
    const FAULTS: usize = 16,
> {
    pub(crate) backend: B,
    pub(crate) mem: M,
    pub(crate) alloc: A,
    pub(crate) notify: N,
    pub(crate) config: Config<'a>,
    pub(crate) table_config: TableConfig,
    pub(crate) units: usize,
    /// Units that cache not-present entries: maps are invalidated there too.
    pub(crate) cnp_units: u64,
    /// Domain slots usable (`DOMAINS` capped by the smallest tag space).
    pub(crate) usable_slots: usize,
    /// The usable IOVA ranges of every domain (address space minus reserved windows).
    pub(crate) ranges: heapless::Vec<IovaRange, MAX_IOVA_RANGES>,
    /// Index of each client's first device in `attached`.
    pub(crate) dev_base: [usize; CLIENTS],
    /// Slot of the domain each configured device is attached to.
    pub(crate) attached: [Option<u16>; DEVICES],
    pub(crate) domains: [Slot<B::Format>; DOMAINS],
    pub(crate) clients: [ClientState<FAULTS>; CLIENTS],
    pub(crate) stats: Stats,
}

/// Iterates the set bits of a unit mask.
fn units_in(mask: u64) -> impl Iterator<Item = UnitIndex> {
    (0..64).filter(move |u| mask & (1u64 << u) != 0)
}

const fn tag_of(slot: usize) -> u16 {
    (slot + 1) as u16
}

impl<
    'a,
    B: Backend,
    M: PhysMem,
    A: FrameAlloc,
    N: Notify,
    const CLIENTS: usize,
    const DOMAINS: usize,
    const DEVICES: usize,
    const FAULTS: usize,
> Server<'a, B, M, A, N, CLIENTS, DOMAINS, DEVICES, FAULTS>
{
    /// Validates `config` against the backend's units, derives the one table configuration
    /// every domain uses, and blocks every configured device (no device is ever passthrough).
    ///
    /// All units must report the same address width (a domain's table is walked by every unit
    /// one of its devices sits behind); leaf sizes are the intersection of the units' sets,
    /// `split_live_blocks` and `coherent_walk` hold only if they hold on every unit, and the tag
    /// space is the smallest unit's. Regions of different clients may overlap; devices may not.
    pub fn new(
        mut backend: B,
        mut mem: M,
        mut alloc: A,
        notify: N,
        config: Config<'a>,
    ) -> Result<Self, ConfigError> {
        let units = backend.unit_count();
        if units == 0 || units > 64 {
            return Err(ConfigError::UnitCount);
        }
        config.validate(units, CLIENTS, DEVICES)?;

        let first = backend.unit_info(0);
        let mut leaf = LeafSizes(u64::MAX);
        let mut split = true;
        let mut coherent = true;
        let mut cnp_units = 0u64;
        let mut max_tag = u16::MAX;
        let mut phys_width = 64;
        for u in 0..units {
            let info = backend.unit_info(u);
            if info.addr_width != first.addr_width {
                return Err(ConfigError::AddressWidth);
            }
            leaf = leaf.intersect(info.leaf_sizes);
            split &= info.split_live_blocks;
            coherent &= info.coherent_walk;
            if info.caches_not_present {
                cnp_units |= 1 << u;
            }
            max_tag = max_tag.min(info.max_tag);
            phys_width = phys_width.min(info.phys_width);
        }
        if !B::Format::ADDR_WIDTHS.contains(&first.addr_width)
            || B::Format::levels_for(first.addr_width).is_none()
        {
            return Err(ConfigError::AddressWidth);
        }
        if !leaf.contains(PAGE_SIZE) {
            return Err(ConfigError::LeafSizes);
        }
        let usable_slots = DOMAINS.min(max_tag as usize);
        if usable_slots == 0 {
            return Err(ConfigError::NoTags);
        }
        let last_iova = if first.addr_width >= 64 {
            u64::MAX
        } else {
            (1u64 << first.addr_width) - 1
        };
        let ranges = usable_ranges(last_iova, config.reserved).ok_or(ConfigError::Reserved)?;
        let table_config = TableConfig {
            addr_width: first.addr_width,
            phys_width,
            leaf_sizes: leaf,
            split_live_blocks: split,
            coherent,
        };
        // Probe the configuration once: the engine validates it when building a table.
        match PageTable::<B::Format>::new(table_config, &mut alloc) {
            Ok(t) => t.destroy(&mut mem, &mut alloc),
            Err(PtError::NoFrame) => return Err(ConfigError::Backend(ErrorKind::NoFrame)),
            Err(_) => return Err(ConfigError::LeafSizes),
        }

        let mut dev_base = [0usize; CLIENTS];
        let mut next = 0;
        for (ci, c) in config.clients.iter().enumerate() {
            dev_base[ci] = next;
            next += c.devices.len();
            for d in c.devices {
                for id in d.ids() {
                    backend
                        .block(d.unit, id)
                        .map_err(|e| ConfigError::Backend(e.kind()))?;
                }
            }
        }

        Ok(Server {
            backend,
            mem,
            alloc,
            notify,
            config,
            table_config,
            units,
            cnp_units,
            usable_slots,
            ranges,
            dev_base,
            attached: [None; DEVICES],
            domains: core::array::from_fn(|_| Slot::Free),
            clients: core::array::from_fn(|_| ClientState::new()),
            stats: Stats::default(),
        })
    }

    /// The backend (e.g. for a test to reach its model).
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The backend, mutably (e.g. for fault injection in tests). Changing unit state behind
    /// the server's back voids its guarantees.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
    /// The physical memory the tables live in.
    pub fn mem(&self) -> &M {
        &self.mem
    }
    /// The global frame allocator.
    pub fn alloc(&self) -> &A {
        &self.alloc
    }
    /// The global frame allocator, mutably (e.g. for fault injection in tests).
    pub fn alloc_mut(&mut self) -> &mut A {
        &mut self.alloc
    }
    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The table configuration every domain is built with.
    pub fn table_config(&self) -> TableConfig {
        self.table_config
    }
    /// The configuration the server was built with.
    pub fn config(&self) -> &Config<'a> {
        &self.config
    }
    /// How many domains client `id` holds and how many page-table frames they use, or `None`
    /// for an unknown client.
    pub fn usage(&self, id: ClientId) -> Option<(u32, u64)> {
        let ci = self.client_index(id)?;
        Some((self.clients[ci].domains, self.clients[ci].frames))
    }

    pub(crate) fn client_index(&self, id: ClientId) -> Option<usize> {
        self.config.clients.iter().position(|c| c.id == id)
    }

    /// Slot of client `ci`'s domain `handle`.
    pub(crate) fn find(&self, ci: usize, handle: u32) -> Result<usize, Fail> {
        self.domains
            .iter()
            .position(|s| matches!(s, Slot::Live(d) if d.owner == ci && d.handle == handle))
            .ok_or(Fail::NoSuchDomain)
    }

    fn table(&self, slot: usize) -> &PageTable<B::Format> {
        match &self.domains[slot] {
            Slot::Live(d) => &d.table,
            // `find` returned this slot within the same request.
            _ => unreachable!("slot {slot} is not live"),
        }
    }

    fn live(&mut self, slot: usize) -> &mut Domain<B::Format> {
        match &mut self.domains[slot] {
            Slot::Live(d) => d,
            // `find` returned this slot within the same request.
            _ => unreachable!("slot {slot} is not live"),
        }
    }

    /// Global index of client `ci`'s device `handle`.
    pub(crate) fn device(&self, ci: usize, handle: u32) -> Result<usize, Fail> {
        let n = self.config.clients[ci].devices.len();
        let h = handle as usize;
        if h < n {
            Ok(self.dev_base[ci] + h)
        } else {
            Err(Fail::NoSuchDevice)
        }
    }

    /// `(unit, requester id)` of a global device index.
    fn device_addr(&self, g: usize) -> (UnitIndex, u32) {
        for (ci, c) in self.config.clients.iter().enumerate() {
            let base = self.dev_base[ci];
            if g >= base && g < base + c.devices.len() {
                let d = c.devices[g - base];
                return (d.unit, d.device);
            }
        }
        unreachable!("device index {g} out of range")
    }

    /// Number of configured devices.
    fn device_count(&self) -> usize {
        self.config.clients.iter().map(|c| c.devices.len()).sum()
    }

    /// Whether some device other than `except` on `unit` is attached to `slot`.
    fn other_on_unit(&self, slot: usize, unit: UnitIndex, except: usize) -> bool {
        (0..self.device_count()).any(|g| {
            g != except && self.attached[g] == Some(slot as u16) && self.device_addr(g).0 == unit
        })
    }

    fn counting(&mut self, ci: usize) -> Counting<'_, A> {
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        Counting::new(&mut self.alloc, self.clients[ci].frames, limit)
    }

    /// Retries the invalidations that failed earlier for `slot`; frees the frames that waited
    /// for them once every unit is clean.
    fn ensure_clean(&mut self, slot: usize) -> Result<(), Fail> {
        let tag = tag_of(slot);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        if d.stale == 0 {
            return Ok(());
        }
        for u in units_in(d.stale) {
            self.stats.invalidations += 1;
            self.backend
                .invalidate_all(u, tag)
                .map_err(|e| backend_fail(e.kind()))?;
            d.stale &= !(1 << u);
        }
        let ci = d.owner;
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        d.pending.release(&mut self.mem, &mut c);
        self.clients[ci].frames = c.held_now();
        Ok(())
    }

    /// Invalidates `gather` on every unit that may cache `slot`'s translations, then frees its
    /// frames. One invalidation per unit. On failure the domain's devices are blocked, the
    /// frames wait in the domain, and the failed units are retried before the domain's next
    /// operation.
    fn flush(&mut self, slot: usize, mut gather: Gather) -> Result<(), Fail> {
        let tag = tag_of(slot);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        let ci = d.owner;
        let mask = d.dirty;
        let mut failed = None;
        if !gather.is_empty() {
            for u in units_in(mask) {
                self.stats.invalidations += 1;
                if let Err(e) = self.backend.invalidate(u, tag, &gather) {
                    // This unit and every one not yet reached may still cache the change.
                    d.stale |= mask & !((1u64 << u) - 1);
                    failed = Some(backend_fail(e.kind()));
                    break;
                }
            }
        }
        if let Some(f) = failed {
            d.pending.merge(&mut self.mem, gather);
            self.block_domain_devices(slot);
            return Err(f);
        }
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        gather.release(&mut self.mem, &mut c);
        self.clients[ci].frames = c.held_now();
        Ok(())
    }

    /// Best effort: blocks every device attached to `slot` (after a failed invalidation, the
    /// devices must not keep using translations the unit may still cache).
    fn block_domain_devices(&mut self, slot: usize) {
        for g in 0..self.device_count() {
            if self.attached[g] == Some(slot as u16) {
                let (unit, dev) = self.device_addr(g);
                if self.backend.block(unit, dev).is_ok() {
                    self.attached[g] = None;
                }
            }
        }
    }

    /// Checks that client `ci` may map `[phys, phys + len)` with `perms`: the whole range in
    /// one granted region whose permissions include `perms`.
    fn check_grant(&self, ci: usize, phys: u64, len: u64, perms: Perms) -> Result<(), Fail> {
        let ok = self.config.clients[ci].regions.iter().any(|r| {
            r.contains(phys, len)
                && (!perms.read || r.perms.read)
                && (!perms.write || r.perms.write)
        });
        if ok { Ok(()) } else { Err(Fail::NotPermitted) }
    }

    /// Argument checks shared by the map requests, before any capability check, so that the
    /// error says what is wrong with the request itself.
    fn check_range(iova: u64, phys: u64, len: u64, perms: Perms) -> Result<(), Fail> {
        if !perms.read && !perms.write {
            return Err(Fail::InvalidArgument);
        }
        if len == 0 {
            return Err(Fail::InvalidArgument);
        }
        if iova % PAGE_SIZE != 0 || phys % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Fail::Misaligned);
        }
        if iova.checked_add(len - 1).is_none() || phys.checked_add(len - 1).is_none() {
            return Err(Fail::OutOfRange);
        }
        Ok(())
    }

    /// Whether `[iova, last]` lies within one usable range.
    fn usable(&self, iova: u64, last: u64) -> bool {
        self.ranges
            .iter()
            .any(|r| r.first <= iova && last <= r.last)
    }

    // ---- operations --------------------------------------------------------------------

    pub(crate) fn op_create(&mut self, ci: usize) -> Result<u32, Fail> {
        let cfg = self.config.clients[ci];
        if self.clients[ci].domains >= cfg.max_domains {
            return Err(Fail::QuotaExceeded);
        }
        let slot = self.domains[..self.usable_slots]
            .iter()
            .position(|s| matches!(s, Slot::Free))
            .ok_or(Fail::OutOfTableMemory)?;
        let table_config = self.table_config;
        let mut c = self.counting(ci);
        let table = match PageTable::<B::Format>::new(table_config, &mut c) {
            Ok(t) => t,
            Err(e) => return Err(pt_fail(e, c.quota_refused)),
        };
        let held = c.held_now();
        // A handle not in use by this client (handles are per client, never global indices).
        let mut h = self.clients[ci].next_handle;
        while h == 0 || self.find(ci, h).is_ok() {
            h = h.wrapping_add(1);
        }
        self.clients[ci].next_handle = h.wrapping_add(1);
        self.clients[ci].frames = held;
        self.clients[ci].domains += 1;
        self.domains[slot] = Slot::Live(Domain {
            owner: ci,
            handle: h,
            table,
            dirty: 0,
            stale: 0,
            units: 0,
            pending: Gather::new(),
        });
        Ok(h)
    }

    /// Destroys a domain with no device attached (`DomainBusy` otherwise): invalidates every
    /// unit that may cache it, then frees its tables and returns its quota.
    pub(crate) fn op_destroy(&mut self, ci: usize, handle: u32) -> Result<(), Fail> {
        let slot = self.find(ci, handle)?;
        if self.attached.contains(&Some(slot as u16)) {
            return Err(Fail::DomainBusy);
        }
        self.teardown(slot)
    }

    /// Blocks the domain's devices, invalidates every unit that may cache it, releases what
    /// the units hold for its tag ([`Backend::release_tag`], frames back to the global pool
    /// `attach` took them from), frees its tables. On failure the domain stays (devices
    /// blocked so far are detached, units invalidated or released so far are not redone) and
    /// the teardown can be retried.
    fn teardown(&mut self, slot: usize) -> Result<(), Fail> {
        for g in 0..self.device_count() {
            if self.attached[g] == Some(slot as u16) {
                let (unit, dev) = self.device_addr(g);
                self.backend
                    .block(unit, dev)
                    .map_err(|e| backend_fail(e.kind()))?;
                self.attached[g] = None;
            }
        }
        let tag = tag_of(slot);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        for u in units_in(d.dirty | d.stale) {
            self.stats.invalidations += 1;
            self.backend
                .invalidate_all(u, tag)
                .map_err(|e| backend_fail(e.kind()))?;
            d.dirty &= !(1 << u);
            d.stale &= !(1 << u);
        }
        for u in units_in(d.units) {
            self.backend
                .release_tag(&mut self.alloc, u, tag)
                .map_err(|e| backend_fail(e.kind()))?;
            d.units &= !(1 << u);
        }
        let Slot::Live(mut d) = core::mem::replace(&mut self.domains[slot], Slot::Free) else {
            unreachable!()
        };
        let ci = d.owner;
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        d.pending.release(&mut self.mem, &mut c);
        d.table.destroy(&mut self.mem, &mut c);
        self.clients[ci].frames = c.held_now();
        self.clients[ci].domains -= 1;
        Ok(())
    }

    /// Attaches client `ci`'s device to its domain. A device attached to another domain is
    /// refused with `DeviceBusy` (detach it first); attaching it again to the domain it is
    /// attached to succeeds and does nothing.
    pub(crate) fn op_attach(&mut self, ci: usize, dev: u32, handle: u32) -> Result<(), Fail> {
        let slot = self.find(ci, handle)?;
        let g = self.device(ci, dev)?;
        match self.attached[g] {
            Some(s) if s as usize == slot => return Ok(()),
            Some(_) => return Err(Fail::DeviceBusy),
            None => {}
        }
        self.ensure_clean(slot)?;
        let (unit, rid) = self.device_addr(g);
        // Even a failed attach may have left a per-domain structure on the unit.
        self.live(slot).units |= 1 << unit;
        let table = self.table(slot);
        let cfg = DomainConfig {
            tag: tag_of(slot),
            root: table.root(),
            levels: table.levels(),
            addr_width: table.config().addr_width,
        };
        self.backend
            .attach(&mut self.alloc, unit, rid, cfg)
            .map_err(|e| backend_fail(e.kind()))?;
        self.attached[g] = Some(slot as u16);
        self.live(slot).dirty |= 1 << unit;
        Ok(())
    }

    /// After device `g` left domain `slot` on `unit`: if no other device of the domain remains
    /// there, invalidate the domain's translations on that unit so it stops being dirty. A
    /// failure leaves the unit marked stale (retried before the domain's next operation).
    fn forget_unit(&mut self, slot: usize, unit: UnitIndex, g: usize) {
        if self.other_on_unit(slot, unit, g) {
            return;
        }
        self.stats.invalidations += 1;
        let ok = self.backend.invalidate_all(unit, tag_of(slot)).is_ok();
        if let Slot::Live(d) = &mut self.domains[slot] {
            d.dirty &= !(1 << unit);
            if !ok {
                d.stale |= 1 << unit;
            }
        }
    }

    /// Detaches (blocks) a device. Detaching a device that is not attached succeeds.
    pub(crate) fn op_detach(&mut self, ci: usize, dev: u32) -> Result<(), Fail> {
        let g = self.device(ci, dev)?;
        let Some(old) = self.attached[g] else {
            return Ok(());
        };
        let (unit, rid) = self.device_addr(g);
        self.backend
            .block(unit, rid)
            .map_err(|e| backend_fail(e.kind()))?;
        self.attached[g] = None;
        self.forget_unit(old as usize, unit, g);
        Ok(())
    }

    pub(crate) fn op_map(
        &mut self,
        ci: usize,
        handle: u32,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), Fail> {
        let slot = self.find(ci, handle)?;
        Self::check_range(iova, phys, len, perms)?;
        if !self.usable(iova, iova + (len - 1)) {
            return Err(Fail::OutOfRange);
        }
        self.check_grant(ci, phys, len, perms)?;
        self.ensure_clean(slot)?;
        self.map_into(slot, ci, iova, phys, len, perms)
    }

    /// Maps one checked range and invalidates where non-present entries may be cached.
    fn map_into(
        &mut self,
        slot: usize,
        ci: usize,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), Fail> {
        let mut gather = Gather::new();
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        let r = d.table.map(
            &mut self.mem,
            &mut c,
            Map {
                iova,
                phys,
                len,
                perms,
            },
            &mut gather,
        );
        let refused = c.quota_refused;
        self.clients[ci].frames = c.held_now();
        if let Err(e) = r {
            return Err(pt_fail(e, refused));
        }
        self.flush_map(slot, ci, gather, &[(iova, len)])
    }

    /// Invalidates after a successful map where units cache non-present entries. If that
    /// fails, the map is undone (the undo invalidated on every unit that may have seen it,
    /// best effort) so a failed request leaves the tables as they were.
    fn flush_map(
        &mut self,
        slot: usize,
        ci: usize,
        gather: Gather,
        ranges: &[(u64, u64)],
    ) -> Result<(), Fail> {
        let tag = tag_of(slot);
        let cnp = self.cnp_units;
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        // A map that replaced leafless tables by one leaf removed tables: every unit that may
        // cache them must drop them before their frames go back.
        let mask = if gather.tables_removed() {
            d.dirty
        } else {
            d.dirty & cnp
        };
        let mut failed = None;
        if !gather.is_empty() {
            for u in units_in(mask) {
                self.stats.invalidations += 1;
                if let Err(e) = self.backend.invalidate(u, tag, &gather) {
                    failed = Some(backend_fail(e.kind()));
                    break;
                }
            }
        }
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        let Some(f) = failed else {
            // A map frees nothing; the release keeps the accounting honest if it ever does.
            let mut gather = gather;
            gather.release(&mut self.mem, &mut c);
            self.clients[ci].frames = c.held_now();
            return Ok(());
        };
        let mut undo = gather;
        for &(i, l) in ranges {
            let req = Unmap { iova: i, len: l };
            let _ = d.table.undo(&mut self.mem, &mut c, req, &mut undo);
        }
        self.clients[ci].frames = c.held_now();
        // Every unit that may have seen the new entries must drop them.
        let _ = self.flush(slot, undo);
        Err(f)
    }

    pub(crate) fn op_map_sg(
        &mut self,
        ci: usize,
        handle: u32,
        iova: u64,
        segments: &[(u64, u64)],
        perms: Perms,
    ) -> Result<(), Fail> {
        let slot = self.find(ci, handle)?;
        if segments.is_empty() {
            return Err(Fail::InvalidArgument);
        }
        let mut total: u64 = 0;
        for &(phys, len) in segments {
            let at = iova.checked_add(total).ok_or(Fail::OutOfRange)?;
            Self::check_range(at, phys, len, perms)?;
            total = total.checked_add(len).ok_or(Fail::OutOfRange)?;
        }
        let last = iova.checked_add(total - 1).ok_or(Fail::OutOfRange)?;
        if !self.usable(iova, last) {
            return Err(Fail::OutOfRange);
        }
        for &(phys, len) in segments {
            self.check_grant(ci, phys, len, perms)?;
        }
        self.ensure_clean(slot)?;
        // The whole IOVA range must be free before anything is written.
        match self.table(slot).find_free(
            &self.mem,
            FindFree {
                len: total,
                align: PAGE_SIZE,
                within: Span { first: iova, last },
            },
        ) {
            Ok(Some(at)) if at == iova => {}
            Ok(_) => return Err(Fail::Overlap),
            Err(e) => return Err(pt_fail(e, false)),
        }

        let mut gather = Gather::new();
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        let mut at = iova;
        let mut failure = None;
        let mut done = 0usize;
        for &(phys, len) in segments {
            if let Err(e) = d.table.map(
                &mut self.mem,
                &mut c,
                Map {
                    iova: at,
                    phys,
                    len,
                    perms,
                },
                &mut gather,
            ) {
                failure = Some(pt_fail(e, c.quota_refused));
                break;
            }
            at += len;
            done += 1;
        }
        if let Some(f) = failure {
            // Undo exactly what this request mapped (exact ranges: no split, no allocation).
            let mut at = iova;
            for &(_, len) in &segments[..done] {
                let req = Unmap { iova: at, len };
                let _ = d.table.undo(&mut self.mem, &mut c, req, &mut gather);
                at += len;
            }
            self.clients[ci].frames = c.held_now();
            let _ = self.flush(slot, gather);
            return Err(f);
        }
        self.clients[ci].frames = c.held_now();
        // For the undo path of a failed invalidation: the mapped ranges, as one.
        self.flush_map(slot, ci, gather, &[(iova, total)])
    }

    pub(crate) fn op_map_anywhere(
        &mut self,
        ci: usize,
        handle: u32,
        phys: u64,
        len: u64,
        align: u64,
        perms: Perms,
    ) -> Result<u64, Fail> {
        let slot = self.find(ci, handle)?;
        // 0 or a power of two; below 4 KiB means 4 KiB (protocol `MapAnywhere`).
        if align != 0 && !align.is_power_of_two() {
            return Err(Fail::InvalidArgument);
        }
        let align = align.max(PAGE_SIZE);
        Self::check_range(0, phys, len, perms)?;
        self.check_grant(ci, phys, len, perms)?;
        self.ensure_clean(slot)?;
        let mut found = None;
        for r in &self.ranges {
            match self.table(slot).find_free(
                &self.mem,
                FindFree {
                    len,
                    align,
                    within: Span {
                        first: r.first,
                        last: r.last,
                    },
                },
            ) {
                Ok(Some(iova)) => {
                    found = Some(iova);
                    break;
                }
                Ok(None) | Err(PtError::OutOfRange) => {}
                Err(e) => return Err(pt_fail(e, false)),
            }
        }
        let iova = found.ok_or(Fail::NoSpace)?;
        self.map_into(slot, ci, iova, phys, len, perms)?;
        Ok(iova)
    }

    /// Unmaps exactly `[iova, iova + len)`; returns the bytes that were mapped. Replies only
    /// after every unit that may cache the domain's translations completed the invalidation;
    /// table frames are freed only after that.
    pub(crate) fn op_unmap(
        &mut self,
        ci: usize,
        handle: u32,
        iova: u64,
        len: u64,
    ) -> Result<u64, Fail> {
        let slot = self.find(ci, handle)?;
        if len == 0 {
            return Err(Fail::InvalidArgument);
        }
        if iova % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Fail::Misaligned);
        }
        if iova.checked_add(len - 1).is_none() {
            return Err(Fail::OutOfRange);
        }
        self.ensure_clean(slot)?;
        let mut gather = Gather::new();
        let limit = u64::from(self.config.clients[ci].max_table_frames);
        let mut c = Counting::new(&mut self.alloc, self.clients[ci].frames, limit);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        let r = d
            .table
            .unmap(&mut self.mem, &mut c, Unmap { iova, len }, &mut gather);
        let refused = c.quota_refused;
        self.clients[ci].frames = c.held_now();
        let bytes = r.map_err(|e| pt_fail(e, refused))?;
        self.flush(slot, gather)?;
        Ok(bytes)
    }

    pub(crate) fn op_query(
        &mut self,
        ci: usize,
        handle: u32,
        iova: u64,
    ) -> Result<Option<Translation>, Fail> {
        let slot = self.find(ci, handle)?;
        Ok(self.table(slot).query(&self.mem, iova))
    }

    /// Everything client `ci` holds is released: every domain torn down (devices blocked,
    /// invalidated, tables freed), queued faults dropped, handles restarted. A domain whose
    /// invalidation fails is quarantined: its tag and frames stay reserved, the client's quota
    /// is restored regardless.
    pub(crate) fn exit(&mut self, ci: usize) {
        for slot in 0..DOMAINS {
            if matches!(&self.domains[slot], Slot::Live(d) if d.owner == ci)
                && self.teardown(slot).is_err()
            {
                if let Slot::Live(d) = core::mem::replace(&mut self.domains[slot], Slot::Free) {
                    self.domains[slot] = Slot::Quarantined(d);
                }
                self.stats.quarantined_domains += 1;
            }
        }
        // Devices left attached to a quarantined domain: blocked, best effort.
        let base = self.dev_base[ci];
        for g in base..base + self.config.clients[ci].devices.len() {
            if self.attached[g].is_some() {
                let (unit, dev) = self.device_addr(g);
                let _ = self.backend.block(unit, dev);
                self.attached[g] = None;
            }
        }
        self.clients[ci] = ClientState::new();
    }

    /// Drains every unit's fault records and routes each to the client owning the device.
    pub(crate) fn route_faults(&mut self) {
        let mut notified = [false; CLIENTS];
        let Self {
            backend,
            config,
            clients,
            stats,
            units,
            ..
        } = self;
        for u in 0..*units {
            let mut sink = |rec: FaultRecord| {
                let owner = config.clients.iter().enumerate().find_map(|(ci, c)| {
                    c.devices
                        .iter()
                        .position(|d| d.answers_to(rec.unit, rec.device))
                        .map(|h| (ci, h))
                });
                let Some((ci, h)) = owner else {
                    stats.faults_unowned += 1;
                    return;
                };
                let queued = clients[ci].faults.push(QueuedFault {
                    device: h as u32,
                    iova: rec.iova,
                    write: rec.write,
                    reason: rec.reason,
                });
                if queued {
                    stats.faults_routed += 1;
                } else {
                    stats.faults_lost += 1;
                }
                notified[ci] = true;
            };
            match backend.drain_faults(u, &mut sink) {
                Ok(true) => stats.hw_fault_overflows += 1,
                Ok(false) => {}
                Err(_) => stats.drain_errors += 1,
            }
        }
        for (ci, n) in notified.iter().enumerate() {
            if *n {
                self.notify.notify(self.config.clients[ci].id);
            }
        }
    }
}

//! The server state and its operations, in terms of the hal API (the wire format is handled in
//! [`crate::dispatch`]).

use iommu_hal::backend::{Backend, BackendError, DomainConfig, ErrorKind, FaultRecord, UnitIndex};
use iommu_hal::pagetable::{
    FindFree, Format, Gather, LeafSizes, Map, PageTable, Perms, PtError, Span, TableConfig,
    Translation, Unmap,
};
use iommu_hal::{FrameAlloc, PAGE_SIZE, PhysMem};

use crate::config::{ClientId, Config, ConfigError, DeviceGrant, usable_ranges};
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

/// Counters kept by the server, for tests, benchmarks and diagnostics. Logged (defmt) with
/// the error replies by name, only those that occurred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Domains that could not be torn down while their client was exiting (a device could
    /// not be proven blocked, or an invalidation or the release of their unit structures
    /// failed). Their tag, unit structures and table frames stay reserved until a later
    /// retry succeeds ([`Stats::reclaimed_domains`]).
    pub quarantined_domains: u64,
    /// Quarantined domains whose teardown was later completed (tag and frames reused).
    pub reclaimed_domains: u64,
    /// Block attempts that failed: the device stays treated as live (see the crate docs).
    pub failed_blocks: u64,
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
    /// Its client is gone but the teardown could not complete (a device could not be proven
    /// blocked, or an invalidation or release failed): tag, unit structures and frames stay
    /// reserved, and the teardown is retried ([`Server::reclaim`]).
    Quarantined(Domain<F>),
}

/// What the server can prove about a configured device (over every id it may carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DevState {
    /// Blocked under every id: the last block of each completed.
    Blocked,
    /// Attached to the domain in this slot under every id.
    Attached(u16),
    /// An attach, detach or block of it failed: it may reach the domain in this slot (or be
    /// blocked; the server cannot tell). Treated as attached there: the domain's tables, tag
    /// and unit structures are never freed or reused, its units stay dirty, and every request
    /// concerning the device (Attach, Detach, DestroyDomain of that domain, client exit)
    /// first retries blocking it.
    Unsure(u16),
}

impl DevState {
    /// The slot of the domain the device may reach, if any.
    pub(crate) fn reaches(self) -> Option<usize> {
        match self {
            DevState::Blocked => None,
            DevState::Attached(s) | DevState::Unsure(s) => Some(s as usize),
        }
    }
}

pub(crate) struct ClientState<const Q: usize> {
    /// Domains held, quarantined ones included.
    pub(crate) domains: u32,
    /// Frames held (tables, pending frees, per-domain unit structures), quarantined domains'
    /// included.
    pub(crate) frames: u64,
    /// Domains of earlier incarnations waiting in quarantine.
    pub(crate) quarantined: u32,
    pub(crate) next_handle: u32,
    pub(crate) faults: FaultQueue<Q>,
}

impl<const Q: usize> ClientState<Q> {
    const fn new() -> Self {
        ClientState {
            domains: 0,
            frames: 0,
            quarantined: 0,
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
    /// The highest physical address every unit can reach (the smallest output width).
    pub(crate) phys_last: u64,
    /// The usable IOVA ranges of every domain (address space minus reserved windows).
    pub(crate) ranges: heapless::Vec<IovaRange, MAX_IOVA_RANGES>,
    /// Index of each client's first device in `devices`.
    pub(crate) dev_base: [usize; CLIENTS],
    /// Number of configured devices.
    pub(crate) device_count: usize,
    /// What is known of each configured device.
    pub(crate) devices: [DevState; DEVICES],
    pub(crate) domains: [Slot<B::Format>; DOMAINS],
    pub(crate) clients: [ClientState<FAULTS>; CLIENTS],
    pub(crate) stats: Stats,
}

/// Takes up to `wanted` frames from `alloc` at once and gives them all back; returns how many
/// it got. The frames taken are chained through their first word (they are ours until freed,
/// and the allocator hands frames out zeroed), so the probe needs no memory of its own.
fn probe_pool<A: FrameAlloc, M: PhysMem>(alloc: &mut A, mem: &mut M, wanted: u64) -> u64 {
    let mut got = 0u64;
    let mut chain: Option<u64> = None;
    while got < wanted {
        let Some(f) = alloc.alloc_frame() else { break };
        // The link is the previous frame's address plus 1 (0 ends the chain).
        mem.write_u64(f, chain.map_or(0, |c| c + 1));
        chain = Some(f);
        got += 1;
    }
    while let Some(f) = chain {
        let next = mem.read_u64(f);
        mem.write_u64(f, 0);
        alloc.free_frame(f);
        chain = next.checked_sub(1);
    }
    got
}

/// Iterates the set bits of a unit mask, lowest first, one step per set bit (an empty mask,
/// the common case for a map, costs one test).
fn units_in(mut mask: u64) -> impl Iterator<Item = UnitIndex> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let u = mask.trailing_zeros();
        mask &= mask - 1;
        Some(u as UnitIndex)
    })
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
        let mut phys_width = 64u32;
        for u in 0..units {
            let info = backend.unit_info(u);
            phys_width = phys_width.min(info.phys_width);
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
        // Zero-extended IOVAs reach only the lower half of a sign-extended space (hal's
        // `Format::SIGN_EXTENDED`, e.g. RISC-V Sv48): Info and every range check use the
        // engine's own last IOVA.
        let bits = first.addr_width - u32::from(<B::Format as Format>::SIGN_EXTENDED);
        let last_iova = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
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

        let total_domains: u64 = config
            .clients
            .iter()
            .map(|c| u64::from(c.max_domains))
            .sum();
        if total_domains > usable_slots as u64 {
            return Err(ConfigError::DomainQuotas {
                total: total_domains,
                slots: usable_slots as u64,
            });
        }

        let mut dev_base = [0usize; CLIENTS];
        let mut next = 0;
        for (ci, c) in config.clients.iter().enumerate() {
            dev_base[ci] = next;
            next += c.devices.len();
            for d in c.devices {
                for id in d.ids() {
                    // Shared unit structures come from the pool now, before the quotas are
                    // promised; attach then allocates only what a domain owns.
                    backend
                        .prepare(&mut alloc, d.unit, id)
                        .map_err(|e| ConfigError::Backend(e.kind()))?;
                    backend
                        .block(d.unit, id)
                        .map_err(|e| ConfigError::Backend(e.kind()))?;
                }
            }
        }
        // Every client's frame quota must be there for it whatever the others do (else one
        // client could make another's `Info` promise false, and learn from
        // `OutOfTableMemory` that someone else is busy): take them all from the pool once.
        let total_frames: u64 = config
            .clients
            .iter()
            .map(|c| u64::from(c.max_table_frames))
            .sum();
        let available = probe_pool(&mut alloc, &mut mem, total_frames);
        if available < total_frames {
            return Err(ConfigError::FrameQuotas {
                total: total_frames,
                pool: available,
            });
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
            phys_last: if phys_width >= 64 {
                u64::MAX
            } else {
                (1u64 << phys_width) - 1
            },
            ranges,
            dev_base,
            device_count: next,
            devices: [DevState::Blocked; DEVICES],
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

    /// The grant of global device index `g`.
    fn grant(&self, g: usize) -> DeviceGrant<'a> {
        let config = self.config;
        for (ci, c) in config.clients.iter().enumerate() {
            let base = self.dev_base[ci];
            if g >= base && g < base + c.devices.len() {
                return c.devices[g - base];
            }
        }
        unreachable!("device index {g} out of range")
    }

    /// Whether some device other than `except` on `unit` may reach `slot`.
    fn other_on_unit(&self, slot: usize, unit: UnitIndex, except: usize) -> bool {
        (0..self.device_count).any(|g| {
            g != except && self.devices[g].reaches() == Some(slot) && self.grant(g).unit == unit
        })
    }

    /// Whether some device may reach `slot`.
    fn reached(&self, slot: usize) -> bool {
        self.devices[..self.device_count]
            .iter()
            .any(|d| d.reaches() == Some(slot))
    }

    /// Retries the invalidations that failed earlier for `slot`; frees the frames that waited
    /// for them once every unit is clean. Inline: on every map and unmap it is one test.
    #[inline]
    fn ensure_clean(&mut self, slot: usize) -> Result<(), Fail> {
        match &self.domains[slot] {
            Slot::Live(d) if d.stale == 0 => Ok(()),
            _ => self.retry_stale(slot),
        }
    }

    /// [`Server::ensure_clean`] when some unit is stale (or the slot is not live).
    #[cold]
    fn retry_stale(&mut self, slot: usize) -> Result<(), Fail> {
        let tag = tag_of(slot);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        for u in units_in(d.stale) {
            self.stats.invalidations += 1;
            self.backend
                .invalidate_all(u, tag)
                .map_err(|e| backend_fail(e.kind()))?;
            d.stale &= !(1 << u);
        }
        let ci = d.owner;
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
        d.pending.release(&mut self.mem, &mut c);
        Ok(())
    }

    /// Invalidates `gather` on every unit that may cache `slot`'s translations, then frees its
    /// frames. One invalidation per unit. On failure the domain's devices are blocked (those
    /// that cannot be are kept as live), the frames wait in the domain, and the failed units
    /// are retried before the domain's next operation.
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
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
        gather.release(&mut self.mem, &mut c);
        Ok(())
    }

    /// Best effort: blocks every device that may reach `slot` (after a failed invalidation,
    /// the devices must not keep using translations the unit may still cache). A device whose
    /// block fails stays treated as live.
    fn block_domain_devices(&mut self, slot: usize) {
        for g in 0..self.device_count {
            if self.devices[g].reaches() == Some(slot) {
                let _ = self.block_device(g);
            }
        }
    }

    /// Blocks device `g` under every id it may carry. On success it is [`DevState::Blocked`]
    /// and the unit forgets the domain it reached unless another of the domain's devices is
    /// still there ([`Server::forget_unit`]); a quarantined domain nobody reaches any more is
    /// then reclaimed. On failure the device is [`DevState::Unsure`] in the domain it may
    /// reach (a blocked device that fails to block again stays blocked: nothing was undone).
    fn block_device(&mut self, g: usize) -> Result<(), Fail> {
        let grant = self.grant(g);
        let before = self.devices[g];
        for id in grant.ids() {
            if let Err(e) = self.backend.block(grant.unit, id) {
                self.stats.failed_blocks += 1;
                if let Some(s) = before.reaches() {
                    self.devices[g] = DevState::Unsure(s as u16);
                }
                return Err(backend_fail(e.kind()));
            }
        }
        self.devices[g] = DevState::Blocked;
        if let Some(s) = before.reaches() {
            self.forget_unit(s, grant.unit, g);
            if matches!(self.domains[s], Slot::Quarantined(_)) {
                let _ = self.reclaim(s);
            }
        }
        Ok(())
    }

    /// After device `g` left domain `slot` on `unit`: if no other device of the domain may
    /// remain there, invalidate the domain's translations on that unit so it stops being
    /// dirty. A failure marks the unit stale: retried before the domain's next operation and
    /// before its teardown, so the tag is never reused with stale entries behind it.
    fn forget_unit(&mut self, slot: usize, unit: UnitIndex, g: usize) {
        if self.other_on_unit(slot, unit, g) {
            return;
        }
        let tag = tag_of(slot);
        let d = match &mut self.domains[slot] {
            Slot::Live(d) | Slot::Quarantined(d) => d,
            Slot::Free => return,
        };
        if d.dirty & (1 << unit) == 0 {
            return;
        }
        self.stats.invalidations += 1;
        if self.backend.invalidate_all(unit, tag).is_ok() {
            d.dirty &= !(1 << unit);
        } else {
            d.dirty &= !(1 << unit);
            d.stale |= 1 << unit;
        }
    }

    /// Checks that client `ci` may map `[phys, phys + len)` with `perms`: the whole range in
    /// one granted region whose permissions include `perms`, and addressable by every unit
    /// (`OutOfRange` beyond the smallest output address width, checked after the grant so
    /// that nothing is learnt about memory the client was not given).
    fn check_grant(&self, ci: usize, phys: u64, len: u64, perms: Perms) -> Result<(), Fail> {
        self.check_granted(ci, phys, len, perms)?;
        if phys + (len - 1) > self.phys_last {
            return Err(Fail::OutOfRange);
        }
        Ok(())
    }

    fn check_granted(&self, ci: usize, phys: u64, len: u64, perms: Perms) -> Result<(), Fail> {
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
        let free = |d: &[Slot<B::Format>]| d.iter().position(|s| matches!(s, Slot::Free));
        // Quotas add up to at most the usable slots (checked at start) and quarantined domains
        // count against their owner's quota, so a client within quota always finds a slot.
        let slot = free(&self.domains[..self.usable_slots]).ok_or(Fail::OutOfTableMemory)?;
        let table_config = self.table_config;
        let mut c = Counting::new(
            &mut self.alloc,
            &mut self.clients[ci].frames,
            cfg.max_table_frames,
        );
        let table = match PageTable::<B::Format>::new(table_config, &mut c) {
            Ok(t) => t,
            Err(e) => return Err(pt_fail(e, c.quota_refused)),
        };
        // A handle not in use by this client (handles are per client, never global indices).
        let mut h = self.clients[ci].next_handle;
        while h == 0 || self.find(ci, h).is_ok() {
            h = h.wrapping_add(1);
        }
        self.clients[ci].next_handle = h.wrapping_add(1);
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

    /// Destroys a domain no device is attached to (`DomainBusy` otherwise): devices that may
    /// still reach it after a failed operation are blocked first, then every unit that may
    /// cache it is invalidated, its unit structures released, its tables freed and its quota
    /// returned.
    pub(crate) fn op_destroy(&mut self, ci: usize, handle: u32) -> Result<(), Fail> {
        let slot = self.find(ci, handle)?;
        if self.devices[..self.device_count].contains(&DevState::Attached(slot as u16)) {
            return Err(Fail::DomainBusy);
        }
        self.teardown(slot)
    }

    /// Blocks every device that may reach the domain, invalidates every unit that may cache
    /// it, releases what the units hold for its tag ([`Backend::release_tag`], charged back to
    /// the owner), frees its tables. On failure the domain stays as it is (what completed
    /// stays done: devices blocked, units invalidated or released) and the teardown can be
    /// retried; nothing it might still be reached through is freed.
    fn teardown(&mut self, slot: usize) -> Result<(), Fail> {
        for g in 0..self.device_count {
            if self.devices[g].reaches() == Some(slot) {
                self.block_device(g)?;
            }
        }
        let tag = tag_of(slot);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        let ci = d.owner;
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
        release_domain(&mut self.backend, &mut c, &mut self.stats, d, tag)?;
        if let Slot::Live(d) = core::mem::replace(&mut self.domains[slot], Slot::Free) {
            free_domain(d, &mut self.mem, &mut c);
        }
        self.clients[ci].domains -= 1;
        Ok(())
    }

    /// Retries the teardown of quarantined domain `slot`: possible once no device may reach
    /// it. Its frames and its domain count go back to its owner, which kept them charged
    /// since the exit that quarantined it (so that no other client's quota promise broke).
    pub(crate) fn reclaim(&mut self, slot: usize) -> Result<(), Fail> {
        if self.reached(slot) {
            return Err(Fail::HardwareTimeout);
        }
        let tag = tag_of(slot);
        let Slot::Quarantined(d) = &mut self.domains[slot] else {
            return Ok(());
        };
        let ci = d.owner;
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
        release_domain(&mut self.backend, &mut c, &mut self.stats, d, tag)?;
        if let Slot::Quarantined(d) = core::mem::replace(&mut self.domains[slot], Slot::Free) {
            free_domain(d, &mut self.mem, &mut c);
        }
        self.clients[ci].domains -= 1;
        self.clients[ci].quarantined -= 1;
        self.stats.reclaimed_domains += 1;
        Ok(())
    }

    /// Retries what client `ci`'s quarantined domains wait for (blocking the devices that may
    /// still reach them, then their teardown); called before each of the client's requests,
    /// so only the client whose unit failed pays for the retries.
    #[inline]
    pub(crate) fn retry_quarantined(&mut self, ci: usize) {
        if self.clients[ci].quarantined != 0 {
            self.retry_quarantined_domains(ci);
        }
    }

    /// [`Server::retry_quarantined`] once the client holds quarantined domains.
    #[inline(never)]
    fn retry_quarantined_domains(&mut self, ci: usize) {
        for slot in 0..DOMAINS {
            if !matches!(&self.domains[slot], Slot::Quarantined(d) if d.owner == ci) {
                continue;
            }
            for g in 0..self.device_count {
                if self.devices[g].reaches() == Some(slot) && self.block_device(g).is_err() {
                    break;
                }
            }
            // `block_device` reclaims once the last device is blocked; else try here.
            if matches!(self.domains[slot], Slot::Quarantined(_)) {
                let _ = self.reclaim(slot);
            }
        }
    }

    /// Attaches client `ci`'s device to its domain. A device attached to another domain is
    /// refused with `DeviceBusy` (detach it first); attaching it again to the domain it is
    /// attached to succeeds and does nothing. A device left unsure by an earlier failure is
    /// blocked first.
    ///
    /// If the attach fails part-way, the device may already translate through the domain:
    /// it is blocked again, and if even that fails it stays treated as live in the domain
    /// ([`DevState::Unsure`]), which keeps the domain from being freed or its tag reused.
    pub(crate) fn op_attach(&mut self, ci: usize, dev: u32, handle: u32) -> Result<(), Fail> {
        let slot = self.find(ci, handle)?;
        let g = self.device(ci, dev)?;
        match self.devices[g] {
            DevState::Attached(s) if s as usize == slot => return Ok(()),
            DevState::Attached(_) => return Err(Fail::DeviceBusy),
            DevState::Unsure(_) => self.block_device(g)?,
            DevState::Blocked => {}
        }
        self.ensure_clean(slot)?;
        let grant = self.grant(g);
        let unit = grant.unit;
        let cfg = {
            let d = self.live(slot);
            // From the first write on, the unit may hold per-domain structures and cache the
            // domain's translations, whatever the outcome.
            d.units |= 1 << unit;
            d.dirty |= 1 << unit;
            DomainConfig {
                tag: tag_of(slot),
                root: d.table.root(),
                levels: d.table.levels(),
                addr_width: d.table.config().addr_width,
            }
        };
        let limit = self.config.clients[ci].max_table_frames;
        for id in grant.ids() {
            let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
            if let Err(e) = self.backend.attach(&mut c, unit, id, cfg) {
                let quota = c.quota_refused;
                // Some ids may translate through the domain now: undo what can be undone.
                self.devices[g] = DevState::Unsure(slot as u16);
                let _ = self.block_device(g);
                return Err(match e.kind() {
                    ErrorKind::NoFrame if quota => Fail::QuotaExceeded,
                    k => backend_fail(k),
                });
            }
        }
        self.devices[g] = DevState::Attached(slot as u16);
        Ok(())
    }

    /// Detaches (blocks) a device. Detaching a device that is blocked succeeds; one left
    /// unsure by an earlier failure is blocked again (and the reply says whether that worked).
    pub(crate) fn op_detach(&mut self, ci: usize, dev: u32) -> Result<(), Fail> {
        let g = self.device(ci, dev)?;
        match self.devices[g] {
            DevState::Blocked => Ok(()),
            DevState::Attached(_) | DevState::Unsure(_) => self.block_device(g),
        }
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
        self.with_trim(ci, |s| s.map_into(slot, ci, iova, phys, len, perms))
    }

    /// Runs `op` (a table operation that leaves everything as it was when it fails); if it
    /// failed for want of a table frame and the client's domains kept empty tables in the
    /// engine's reserve, gives those back ([`Server::trim`]) and runs it once more. The
    /// reserve is a cache: it never makes a request fail that would succeed without it.
    fn with_trim<T>(
        &mut self,
        ci: usize,
        mut op: impl FnMut(&mut Self) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        match op(self) {
            Err(Fail::QuotaExceeded | Fail::OutOfTableMemory) if self.trim_client(ci) => op(self),
            r => r,
        }
    }

    /// Gives back the empty tables the engine keeps in reserve in client `ci`'s domains:
    /// unlinks them, invalidates (one invalidation per unit per domain) and frees their
    /// frames. Returns whether any domain gave frames back. A domain whose invalidation fails
    /// keeps them pending and has its devices blocked, as after a failed unmap.
    fn trim_client(&mut self, ci: usize) -> bool {
        let mut freed = false;
        for slot in 0..self.domains.len() {
            let Slot::Live(d) = &mut self.domains[slot] else {
                continue;
            };
            if d.owner != ci || d.table.reserved() == 0 {
                continue;
            }
            let mut gather = Gather::new();
            let limit = self.config.clients[ci].max_table_frames;
            let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
            d.table.reclaim(&mut self.mem, &mut c, &mut gather);
            if self.flush(slot, gather).is_ok() {
                freed = true;
            }
        }
        freed
    }

    /// Gives back the empty tables the page-table engine keeps linked in reserve in every
    /// domain of client `id` (about 40 frames per domain at most; hal's *Table lifetime*),
    /// so the client's frame count is exactly what its live mappings need. The server does
    /// this by itself when a request of the client runs short of frames; a deployment may
    /// also call it when a client goes idle. `false` when nothing was given back (or `id`
    /// is not a client).
    pub fn trim(&mut self, id: ClientId) -> bool {
        match self.client_index(id) {
            Some(ci) => self.trim_client(ci),
            None => false,
        }
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
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
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
        if let Err(e) = r {
            return Err(pt_fail(e, c.quota_refused));
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
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
        let Some(f) = failed else {
            // A map frees nothing; the release keeps the accounting honest if it ever does.
            let mut gather = gather;
            gather.release(&mut self.mem, &mut c);
            return Ok(());
        };
        let mut undo = gather;
        for &(i, l) in ranges {
            let req = Unmap { iova: i, len: l };
            let _ = d.table.undo(&mut self.mem, &mut c, req, &mut undo);
        }
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
        self.with_trim(ci, |s| {
            s.map_segments(slot, ci, iova, last, segments, perms)
        })
    }

    /// Maps checked segments at consecutive IOVAs from `iova` to `last`, all or nothing.
    fn map_segments(
        &mut self,
        slot: usize,
        ci: usize,
        iova: u64,
        last: u64,
        segments: &[(u64, u64)],
        perms: Perms,
    ) -> Result<(), Fail> {
        let total = last - iova + 1;
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
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
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
            let _ = self.flush(slot, gather);
            return Err(f);
        }
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
        self.with_trim(ci, |s| s.map_into(slot, ci, iova, phys, len, perms))?;
        Ok(iova)
    }

    /// Unmaps exactly `[iova, iova + len)`; returns the bytes that were mapped. Replies only
    /// after every unit that may cache the domain's translations completed the invalidation;
    /// table frames are freed only after that. A range leaving the domain's usable ranges
    /// (crossing a reserved window, or beyond the address width) is `OutOfRange`.
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
        let last = iova.checked_add(len - 1).ok_or(Fail::OutOfRange)?;
        if !self.usable(iova, last) {
            return Err(Fail::OutOfRange);
        }
        self.ensure_clean(slot)?;
        // A split needs frames: with the reserve given back, it may find them.
        self.with_trim(ci, |s| s.unmap_in(slot, ci, iova, len))
    }

    /// Unmaps a checked range and invalidates, then frees what it unlinked.
    fn unmap_in(&mut self, slot: usize, ci: usize, iova: u64, len: u64) -> Result<u64, Fail> {
        let mut gather = Gather::new();
        let limit = self.config.clients[ci].max_table_frames;
        let mut c = Counting::new(&mut self.alloc, &mut self.clients[ci].frames, limit);
        let Slot::Live(d) = &mut self.domains[slot] else {
            return Err(Fail::NoSuchDomain);
        };
        let r = d
            .table
            .unmap(&mut self.mem, &mut c, Unmap { iova, len }, &mut gather);
        let bytes = r.map_err(|e| pt_fail(e, c.quota_refused))?;
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
    /// teardown fails is quarantined: its tag, unit structures and frames stay reserved, and
    /// a device that could not be blocked stays known as live (the client's next incarnation
    /// can detach it, which retries the block and then reclaims the domain). The client's
    /// quota is restored regardless.
    pub(crate) fn exit(&mut self, ci: usize) {
        for slot in 0..DOMAINS {
            if matches!(&self.domains[slot], Slot::Live(d) if d.owner == ci)
                && self.teardown(slot).is_err()
            {
                if let Slot::Live(d) = core::mem::replace(&mut self.domains[slot], Slot::Free) {
                    self.domains[slot] = Slot::Quarantined(d);
                }
                self.clients[ci].quarantined += 1;
                self.stats.quarantined_domains += 1;
            }
        }
        // Devices still reaching an earlier incarnation's quarantined domain: retried.
        self.retry_quarantined(ci);
        // A fresh client, but what quarantined domains still hold stays charged to it.
        let kept = &self.clients[ci];
        let (domains, frames, quarantined) = (kept.domains, kept.frames, kept.quarantined);
        self.clients[ci] = ClientState::new();
        self.clients[ci].domains = domains;
        self.clients[ci].frames = frames;
        self.clients[ci].quarantined = quarantined;
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

/// The fallible part of the end of a domain whose devices are all proven blocked: invalidates
/// its tag on every unit that may cache it (dirty or stale) and releases the units'
/// per-domain structures into `alloc`. On failure what completed stays done (its bits
/// cleared) and the domain keeps everything else.
fn release_domain<B: Backend, A: FrameAlloc, F: Format>(
    backend: &mut B,
    alloc: &mut A,
    stats: &mut Stats,
    d: &mut Domain<F>,
    tag: u16,
) -> Result<(), Fail> {
    for u in units_in(d.dirty | d.stale) {
        stats.invalidations += 1;
        backend
            .invalidate_all(u, tag)
            .map_err(|e| backend_fail(e.kind()))?;
        d.dirty &= !(1 << u);
        d.stale &= !(1 << u);
    }
    for u in units_in(d.units) {
        backend
            .release_tag(alloc, u, tag)
            .map_err(|e| backend_fail(e.kind()))?;
        d.units &= !(1 << u);
    }
    Ok(())
}

/// Frees what a released domain ([`release_domain`]) still holds: the frames that waited for
/// an invalidation and its tables.
fn free_domain<M: PhysMem, A: FrameAlloc, F: Format>(d: Domain<F>, mem: &mut M, alloc: &mut A) {
    let Domain {
        mut pending, table, ..
    } = d;
    pending.release(mem, alloc);
    table.destroy(mem, alloc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientConfig, DeviceGrant};
    use iommu_test_harness::mock::{MockSpec, VtdMock};
    use iommu_test_harness::sim::{SharedMem, SimAlloc};

    /// The one client (id 1) of the unit tests below: no memory granted.
    fn client<'a>(
        devices: &'a [DeviceGrant<'a>],
        max_domains: u32,
        frames: u32,
    ) -> [ClientConfig<'a>; 1] {
        [ClientConfig {
            id: ClientId(1),
            devices,
            regions: &[],
            max_domains,
            max_table_frames: frames,
        }]
    }

    /// A server over the VT-d mock of `spec` for `clients`, no reserved window, a frame pool
    /// of `pool` frames, a fault queue of `FAULTS` records per client.
    fn mock_server<'a, const FAULTS: usize>(
        clients: &'a [ClientConfig<'a>],
        pool: u64,
        spec: MockSpec,
    ) -> Server<'a, VtdMock, SharedMem, SimAlloc, crate::NoNotify, 2, 8, 4, FAULTS> {
        let mem = SharedMem::new();
        let alloc = SimAlloc::new(mem.clone(), 0x1_0000_0000, pool);
        let config = Config {
            clients,
            reserved: &[],
        };
        let backend = VtdMock::new(mem.clone(), spec);
        Server::new(backend, mem, alloc, crate::NoNotify, config).expect("valid")
    }

    /// Each backend failure kind keeps its own protocol code (a client tells a unit that did
    /// not answer from one that erred, and a full pool from a broken unit).
    #[test]
    fn backend_failures_keep_their_kind() {
        assert_eq!(backend_fail(ErrorKind::Timeout), Fail::HardwareTimeout);
        assert_eq!(backend_fail(ErrorKind::NoFrame), Fail::OutOfTableMemory);
        assert_eq!(backend_fail(ErrorKind::Unsupported), Fail::Unsupported);
        assert_eq!(backend_fail(ErrorKind::Hardware), Fail::HardwareError);
        assert_eq!(backend_fail(ErrorKind::BadDevice), Fail::HardwareError);
        assert_eq!(backend_fail(ErrorKind::Other), Fail::HardwareError);
    }

    /// Each page-table failure has its protocol code; a frame the client's quota refused is
    /// `QuotaExceeded`, one the pool lacked `OutOfTableMemory`.
    #[test]
    fn table_failures_keep_their_kind() {
        let cases = [
            (PtError::Misaligned, Fail::Misaligned),
            (PtError::ZeroLength, Fail::InvalidArgument),
            (PtError::OutOfRange, Fail::OutOfRange),
            (PtError::PhysOutOfRange, Fail::OutOfRange),
            (PtError::Overlap, Fail::Overlap),
            (PtError::NoFrame, Fail::OutOfTableMemory),
            (PtError::SplitForbidden, Fail::Unsupported),
            (PtError::PermsUnsupported, Fail::Unsupported),
            (PtError::BadConfig, Fail::Unsupported),
        ];
        for (e, want) in cases {
            assert_eq!(pt_fail(e, false), want, "{e:?}");
        }
        assert_eq!(pt_fail(PtError::NoFrame, true), Fail::QuotaExceeded);
        assert_eq!(pt_fail(PtError::Overlap, true), Fail::Overlap);
    }

    /// The unit mask iterator yields exactly the set bits, the top one included.
    #[test]
    fn units_in_yields_the_set_bits() {
        let got: heapless::Vec<UnitIndex, 64> = units_in(0b1011 | 1 << 63).collect();
        assert_eq!(&got[..], &[0, 1, 3, 63]);
        assert_eq!(units_in(0).count(), 0);
    }

    /// Handles are per client, never 0 and never one still in use: once the counter wraps,
    /// creation skips 0 and the handles held.
    #[test]
    fn handles_skip_zero_and_those_in_use() {
        let clients = client(&[], 4, 64);
        let mut s = mock_server::<4>(&clients, 512, MockSpec::default());
        s.clients[0].next_handle = u32::MAX;
        assert_eq!(s.op_create(0), Ok(u32::MAX));
        assert_eq!(s.op_create(0), Ok(1), "0 is never a handle");
        s.clients[0].next_handle = u32::MAX;
        assert_eq!(s.op_create(0), Ok(2), "handles in use are skipped");
    }

    /// A queue longer than one reply is delivered whole, a full reply at a time: no record is
    /// taken from the queue without going into the reply.
    #[test]
    fn faults_longer_than_a_reply_are_all_delivered() {
        use iommu_protocol::{MAX_FAULTS_PER_REPLY, Reply, Request};
        let clients = client(&[], 1, 8);
        let mut s = mock_server::<32>(&clients, 64, MockSpec::default());
        let queued = MAX_FAULTS_PER_REPLY + 6;
        for i in 0..queued {
            assert!(s.clients[0].faults.push(QueuedFault {
                device: 0,
                iova: (i as u64) << 12,
                write: false,
                reason: iommu_hal::backend::FaultReason::NotPresent,
            }));
        }
        let mut iovas = heapless::Vec::<u64, 32>::new();
        for want in [MAX_FAULTS_PER_REPLY, 6, 0] {
            let Reply::Faults { records, lost } = s.handle_request(ClientId(1), Request::Faults)
            else {
                panic!("not a Faults reply");
            };
            assert_eq!((records.len(), lost), (want, 0));
            iovas.extend(records.iter().map(|r| r.iova));
        }
        assert!(
            iovas
                .iter()
                .enumerate()
                .all(|(i, &v)| v == (i as u64) << 12)
        );
    }

    /// Info's page sizes are the sizes both the format and every unit allow: a unit without
    /// 1 GiB pages takes 1 GiB out, though the VT-d format has the level.
    #[test]
    fn info_lists_the_sizes_the_units_allow() {
        use iommu_protocol::{Reply, Request};
        let clients = client(&[], 1, 8);
        let spec = MockSpec {
            leaf_sizes: LeafSizes(0x20_1000),
            ..MockSpec::default()
        };
        let mut s = mock_server::<4>(&clients, 64, spec);
        let Reply::Info(info) = s.handle_request(ClientId(1), Request::Info) else {
            panic!("not an Info reply");
        };
        assert_eq!(info.page_sizes, 0x20_1000);
    }

    /// A teardown whose release fails on the third unit, after units 0 and 1 released, is
    /// retried from there: each unit is released exactly once.
    #[test]
    fn a_retried_teardown_releases_each_unit_once() {
        use iommu_protocol::{DeviceHandle, DomainHandle, Error, Reply, Request};
        let devices = [
            DeviceGrant::new(0, 1),
            DeviceGrant::new(1, 1),
            DeviceGrant::new(2, 1),
        ];
        let clients = client(&devices, 1, 8);
        let spec = MockSpec {
            units: 3,
            ..MockSpec::default()
        };
        let mut s = mock_server::<4>(&clients, 64, spec);
        let c = ClientId(1);
        let Reply::DomainCreated { domain } = s.handle_request(c, Request::CreateDomain) else {
            panic!("no domain");
        };
        for dev in 0..3 {
            let device = DeviceHandle(dev);
            assert_eq!(
                s.handle_request(c, Request::Attach { domain, device }),
                Reply::Done
            );
            assert_eq!(s.handle_request(c, Request::Detach { device }), Reply::Done);
        }
        s.backend_mut().fail_release = Some(2);
        let destroy = |d: DomainHandle| Request::DestroyDomain { domain: d };
        assert_eq!(
            s.handle_request(c, destroy(domain)),
            Reply::Error(Error::HardwareError)
        );
        assert_eq!(s.handle_request(c, destroy(domain)), Reply::Done);
        let releases: [u64; 3] = core::array::from_fn(|u| s.backend().releases(u));
        assert_eq!(releases, [1, 1, 1]);
    }

    /// Any `FnMut(ClientId)` is a [`Notify`]: the closure is called with the client.
    #[test]
    fn closures_notify() {
        let mut heard = heapless::Vec::<ClientId, 2>::new();
        let mut n = |c: ClientId| heard.push(c).expect("room");
        n.notify(ClientId(7));
        assert_eq!(heard.as_slice(), &[ClientId(7)]);
    }

    /// Tags start at 1 (tag 0 is reserved by some units) and follow the slot.
    #[test]
    fn tags_follow_slots() {
        assert_eq!(tag_of(0), 1);
        assert_eq!(tag_of(7), 8);
    }
}

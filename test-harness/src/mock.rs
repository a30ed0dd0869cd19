//! A mock IOMMU backend for message-level tests of the server.
//!
//! The tables are the hal engine's (the server builds them); everything the hardware does is
//! modelled here on its own, independently of hal:
//! - its own page walk, using the reference walkers of [`crate::walker`] entry by entry;
//! - an IOTLB that keeps every translation it loaded (per tag, per page, with the leaf size)
//!   until an invalidation covers it, a paging-structure cache that keeps the pointer to the
//!   last-level table it walked through until an invalidation with `tables_removed` (or a
//!   domain-wide one) drops it, and, when the unit caches not-present entries, a negative
//!   cache of faulting pages: a missing or too-narrow invalidation lets a stale DMA succeed;
//! - a context table (device -> blocked / domain) with its own context cache, filled on a DMA
//!   miss and dropped by `attach`/`block` as the [`Backend`] contract promises;
//! - fault records for every faulting access, in a bounded per-unit log with an overflow flag.
//!
//! It is configurable ([`MockSpec`]) and takes injected failures ([`Injector`]) to drive the
//! server's error paths.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::marker::PhantomData;
use std::vec::Vec;

use iommu_hal::backend::{
    Backend, BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultReason, FaultRecord,
    UnitIndex, UnitInfo,
};
use iommu_hal::pagetable::{Format, Gather, LeafSizes};
use iommu_hal::{FrameAlloc, PhysMem};

use crate::inject::{Injector, Outcome, UnitFault};
use crate::sim::SharedMem;
use crate::walker::{Access, Malformed, RefWalker, Step};

/// What the mock's units look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockSpec {
    /// Number of units.
    pub units: usize,
    /// Input address width of every unit.
    pub addr_width: u32,
    /// Leaf sizes every unit reports.
    pub leaf_sizes: LeafSizes,
    /// Units that cache not-present entries (bit `u` = unit `u`).
    pub caches_not_present: u64,
    /// Whether live blocks may be split in place.
    pub split_live_blocks: bool,
    /// Highest usable domain tag.
    pub max_tag: u16,
    /// Fault records a unit holds before it overflows.
    pub fault_slots: usize,
    /// Frames a unit takes from the attach's allocator for a tag's per-domain structures at
    /// the tag's first attach on the unit (as an SMMUv3 context-descriptor table), all or
    /// none, and gives back in `release_tag`. 0 by default.
    pub attach_frames: u64,
}

impl Default for MockSpec {
    fn default() -> Self {
        MockSpec {
            units: 1,
            addr_width: 48,
            leaf_sizes: LeafSizes::STANDARD,
            caches_not_present: 0,
            split_live_blocks: true,
            max_tag: 255,
            fault_slots: 8,
            attach_frames: 0,
        }
    }
}

/// The mock's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockError {
    /// Injected: a wait timed out.
    Timeout,
    /// Injected: the unit reported an error.
    Hardware,
    /// The unit index or device id is out of range.
    BadDevice,
    /// The allocator had no frame for the unit's per-domain structures.
    NoFrame,
}

impl core::fmt::Display for MockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MockError::Timeout => "mock unit: injected timeout",
            MockError::Hardware => "mock unit: injected hardware error",
            MockError::BadDevice => "mock unit: unit index or device id out of range",
            MockError::NoFrame => "mock unit: no frame for the per-domain structures",
        })
    }
}

impl std::error::Error for MockError {}

impl BackendError for MockError {
    fn kind(&self) -> ErrorKind {
        match self {
            MockError::Timeout => ErrorKind::Timeout,
            MockError::Hardware => ErrorKind::Hardware,
            MockError::BadDevice => ErrorKind::BadDevice,
            MockError::NoFrame => ErrorKind::NoFrame,
        }
    }
}

/// A context entry as the mock's "hardware" sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// DMA of the device faults.
    Blocked,
    /// DMA of the device is translated through a domain.
    Domain(DomainConfig),
}

/// One invalidation as the mock received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// `invalidate`: a gather's span and whether tables were removed.
    Range {
        /// Unit.
        unit: UnitIndex,
        /// Domain tag.
        tag: u16,
        /// Inclusive IOVA span, if any leaf changed.
        span: Option<(u64, u64)>,
        /// Whether paging-structure caches were invalidated too.
        tables: bool,
    },
    /// `invalidate_all`.
    All {
        /// Unit.
        unit: UnitIndex,
        /// Domain tag.
        tag: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TlbEntry {
    size: u64,
    phys: u64,
    read: bool,
    write: bool,
}

#[derive(Debug, Default)]
struct Unit {
    /// The configured context entries (absent = blocked, as after reset with translation on).
    context: BTreeMap<u32, Context>,
    /// Cached context entries, used by DMA.
    context_cache: BTreeMap<u32, Context>,
    /// (tag, page base) -> translation of a page of `size`.
    iotlb: BTreeMap<(u16, u64), TlbEntry>,
    /// (tag, 4 KiB page) known not present (only on units caching not-present entries).
    negative: BTreeSet<(u16, u64)>,
    /// (tag, iova >> 21) -> (last-level table, rights above it).
    walk_cache: BTreeMap<(u16, u64), (u64, Access)>,
    faults: VecDeque<FaultRecord>,
    overflowed: bool,
    invalidations: u64,
    /// How the unit signals faults, once enabled.
    interrupt: Option<FaultInterrupt>,
    /// Tags the unit holds per-domain structures for (as an SMMUv3 context descriptor):
    /// from the first attach with the tag until `release_tag`.
    tags: BTreeSet<u16>,
    /// `release_tag` calls that succeeded.
    releases: u64,
    /// The frames each tag's per-domain structures hold (`MockSpec::attach_frames`).
    tag_frames: BTreeMap<u16, Vec<u64>>,
}

/// A mock backend of `spec.units` units walking tables of format `F`, checked by the
/// reference walker `W`.
pub struct MockBackend<F: Format, W: RefWalker> {
    mem: SharedMem,
    spec: MockSpec,
    units: Vec<Unit>,
    /// Failures to inject, one plan per unit (see [`crate::inject`]): every call that makes
    /// the unit do something and wait (attach, block, invalidate, invalidate_all) is one
    /// submission. A lost submission does its memory writes (a context entry set or cleared)
    /// but none of its cache invalidations, and times out; a queue error does the same and
    /// reports a hardware error.
    pub injectors: Vec<Injector>,
    /// The last submission was performed but not signalled.
    silent: bool,
    /// Every invalidation received, in order.
    pub log: Vec<Invalidation>,
    /// Malformed entries met by walks (an engine bug; tests assert this stays empty).
    pub malformed: Vec<Malformed>,
    /// The next `release_tag` on this unit fails (a hardware error; nothing released), once.
    pub fail_release: Option<UnitIndex>,
    /// The next `drain_faults` of this unit fails (a hardware error; nothing drained), once.
    pub fail_drain: Option<UnitIndex>,
    _f: PhantomData<(F, W)>,
}

impl<F: Format, W: RefWalker> MockBackend<F, W> {
    /// A mock over `mem` (the memory the server builds its tables in).
    pub fn new(mem: SharedMem, spec: MockSpec) -> Self {
        MockBackend {
            mem,
            spec,
            units: (0..spec.units).map(|_| Unit::default()).collect(),
            injectors: (0..spec.units).map(|_| Injector::default()).collect(),
            silent: false,
            log: Vec::new(),
            malformed: Vec::new(),
            fail_release: None,
            fail_drain: None,
            _f: PhantomData,
        }
    }

    /// Arms `fault` on `unit`.
    pub fn inject(&mut self, unit: UnitIndex, fault: UnitFault) {
        self.injectors[unit].inject(fault);
    }

    /// Disarms every injected fault.
    pub fn heal(&mut self) {
        for i in &self.injectors {
            i.heal();
        }
    }

    /// One submission to `unit`: what the injector lets happen. A silent submission (done,
    /// never signalled) sets `silent` for the caller, which then applies its effects and
    /// still fails.
    fn submit(&mut self, unit: UnitIndex) -> Result<(), MockError> {
        match self.injectors[unit].submission() {
            Outcome::Done => Ok(()),
            Outcome::Lost => Err(MockError::Timeout),
            Outcome::QueueError => Err(MockError::Hardware),
            Outcome::Silent => {
                self.silent = true;
                Err(MockError::Timeout)
            }
        }
    }

    /// One submission whose effects the caller applies if the unit performed it: `Err` when
    /// it was not performed (lost, or rejected), `Ok(result)` when it was, where `result` is
    /// the error of a performed but never signalled submission.
    fn performed(&mut self, unit: UnitIndex) -> Result<Result<(), MockError>, MockError> {
        let r = self.submit(unit);
        let silent = core::mem::take(&mut self.silent);
        match r {
            Ok(()) => Ok(Ok(())),
            Err(e) if silent => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// The spec the mock was built with.
    pub fn spec(&self) -> MockSpec {
        self.spec
    }

    /// Invalidation calls received by `unit` so far.
    pub fn invalidations(&self, unit: UnitIndex) -> u64 {
        self.units[unit].invalidations
    }

    /// Invalidation calls received by all units so far.
    pub fn total_invalidations(&self) -> u64 {
        self.units.iter().map(|u| u.invalidations).sum()
    }

    /// The context entry of `device` on `unit` (`Blocked` if never written).
    pub fn context(&self, unit: UnitIndex, device: u32) -> Context {
        self.units[unit]
            .context
            .get(&device)
            .copied()
            .unwrap_or(Context::Blocked)
    }

    /// The tags `unit` holds per-domain structures for (attached once, not yet released by
    /// `release_tag`), ascending.
    pub fn tags(&self, unit: UnitIndex) -> Vec<u16> {
        self.units[unit].tags.iter().copied().collect()
    }

    /// `release_tag` calls on `unit` that succeeded so far.
    pub fn releases(&self, unit: UnitIndex) -> u64 {
        self.units[unit].releases
    }

    /// Translations the IOTLB of `unit` holds.
    pub fn iotlb_len(&self, unit: UnitIndex) -> usize {
        self.units[unit].iotlb.len()
    }

    /// Records a fault as the unit would (for routing tests).
    pub fn raise_fault(&mut self, rec: FaultRecord) {
        let slots = self.spec.fault_slots;
        let u = &mut self.units[rec.unit];
        if u.faults.len() >= slots {
            u.overflowed = true;
        } else {
            u.faults.push_back(rec);
        }
    }

    /// One DMA of `len` bytes at `iova` by `device` behind `unit`: every 4 KiB page touched is
    /// translated (through the caches); the first faulting page records a fault and ends it.
    pub fn dma(
        &mut self,
        unit: UnitIndex,
        device: u32,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<(), FaultReason> {
        if len == 0 {
            return Ok(());
        }
        let last = iova.checked_add(len - 1).ok_or(FaultReason::AddressSize)?;
        let mut page = iova & !0xfff;
        loop {
            self.translate(unit, device, page.max(iova), write)?;
            match page.checked_add(0x1000) {
                Some(p) if p <= last => page = p,
                _ => return Ok(()),
            }
        }
    }

    /// Translates one access as the unit would: context cache, IOTLB, walk. A fault is
    /// recorded in the unit's fault log and returned.
    pub fn translate(
        &mut self,
        unit: UnitIndex,
        device: u32,
        iova: u64,
        write: bool,
    ) -> Result<u64, FaultReason> {
        let r = self.translate_inner(unit, device, iova, write);
        if let Err(reason) = r {
            self.raise_fault(FaultRecord {
                unit,
                device,
                iova: iova & !0xfff,
                write,
                reason,
            });
        }
        r
    }

    fn translate_inner(
        &mut self,
        unit: UnitIndex,
        device: u32,
        iova: u64,
        write: bool,
    ) -> Result<u64, FaultReason> {
        let mem = self.mem.clone();
        let cnp = self.spec.caches_not_present & (1 << unit) != 0;
        let u = &mut self.units[unit];
        let ctx = match u.context_cache.get(&device) {
            Some(c) => *c,
            None => {
                let c = u.context.get(&device).copied().unwrap_or(Context::Blocked);
                u.context_cache.insert(device, c);
                c
            }
        };
        let Context::Domain(dom) = ctx else {
            return Err(FaultReason::Blocked);
        };
        let tag = dom.tag;
        let allow = |e: &TlbEntry| -> Result<u64, FaultReason> {
            if (write && !e.write) || (!write && !e.read) {
                Err(FaultReason::Permission)
            } else {
                Ok(e.phys + (iova & (e.size - 1)))
            }
        };
        for size in [1u64 << 12, 1 << 21, 1 << 30, 1 << 39] {
            if let Some(e) = u.iotlb.get(&(tag, iova & !(size - 1)))
                && e.size == size
            {
                return allow(e);
            }
        }
        let page = iova & !0xfff;
        if cnp && u.negative.contains(&(tag, page)) {
            return Err(FaultReason::NotPresent);
        }
        if dom.addr_width < 64 && iova >> dom.addr_width != 0 {
            return Err(FaultReason::AddressSize);
        }
        let walked = {
            let m = mem.borrow();
            walk::<W>(
                &m,
                &dom,
                iova,
                u.walk_cache.get(&(tag, iova >> 21)).copied(),
            )
        };
        match walked {
            Err(m) => {
                self.malformed.push(m);
                Err(FaultReason::Other(0xffff))
            }
            Ok((None, _)) => {
                if cnp {
                    u.negative.insert((tag, page));
                }
                Err(FaultReason::NotPresent)
            }
            Ok((Some(e), pt)) => {
                if let Some(pt) = pt {
                    u.walk_cache.insert((tag, iova >> 21), pt);
                }
                u.iotlb.insert((tag, iova & !(e.size - 1)), e);
                allow(&e)
            }
        }
    }
}

/// Walks `dom`'s table for `iova`, starting from the cached last-level table if given.
/// Returns the leaf (if present) and the last-level table pointer walked through.
#[allow(clippy::type_complexity)]
fn walk<W: RefWalker>(
    mem: &crate::sim::SimMemory,
    dom: &DomainConfig,
    iova: u64,
    cached: Option<(u64, Access)>,
) -> Result<(Option<TlbEntry>, Option<(u64, Access)>), Malformed> {
    let levels = W::levels(dom.addr_width).expect("mock: unsupported address width");
    let top = levels - 1;
    let (mut level, mut table, mut acc) = match cached {
        Some((pt, acc)) => (0, pt, acc),
        None => (top, dom.root, Access::ALL),
    };
    let mut pt = cached;
    loop {
        let shift = 12 + 9 * level;
        let bits = if level == top {
            dom.addr_width - shift
        } else {
            9
        };
        let idx = (iova >> shift) & ((1u64 << bits) - 1);
        let entry = mem.read(table + idx * 8);
        match W::step(entry, level, top, acc)? {
            Step::NotPresent => return Ok((None, pt)),
            Step::Table {
                addr,
                next_level,
                access,
            } => {
                if next_level >= level {
                    return Ok((None, pt));
                }
                table = addr;
                level = next_level;
                acc = access;
                if level == 0 {
                    pt = Some((table, acc));
                }
            }
            Step::Leaf { base, size, access } => {
                if !access.read && !access.write {
                    return Ok((None, pt));
                }
                return Ok((
                    Some(TlbEntry {
                        size,
                        phys: base,
                        read: access.read,
                        write: access.write,
                    }),
                    pt,
                ));
            }
        }
    }
}

impl<F: Format, W: RefWalker> Backend for MockBackend<F, W> {
    type Format = F;
    type Error = MockError;

    fn unit_count(&self) -> usize {
        self.units.len()
    }

    fn unit_info(&self, unit: UnitIndex) -> UnitInfo {
        let unit = if unit < self.units.len() { unit } else { 0 };
        UnitInfo {
            addr_width: self.spec.addr_width,
            phys_width: 52,
            leaf_sizes: self.spec.leaf_sizes,
            caches_not_present: self.spec.caches_not_present & (1 << unit) != 0,
            split_live_blocks: self.spec.split_live_blocks,
            coherent_walk: true,
            max_tag: self.spec.max_tag,
        }
    }

    fn attach(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), MockError> {
        if unit >= self.units.len() || device > 0xffff || domain.tag == 0 {
            return Err(MockError::BadDevice);
        }
        if !self.units[unit].tags.contains(&domain.tag) && self.spec.attach_frames > 0 {
            let mut frames = Vec::new();
            for _ in 0..self.spec.attach_frames {
                match alloc.alloc_frame() {
                    Some(pa) => frames.push(pa),
                    None => {
                        for pa in frames {
                            alloc.free_frame(pa);
                        }
                        return Err(MockError::NoFrame);
                    }
                }
            }
            self.units[unit].tag_frames.insert(domain.tag, frames);
        }
        self.units[unit].tags.insert(domain.tag);
        self.units[unit]
            .context
            .insert(device, Context::Domain(domain));
        // The entry is written; a lost submission leaves the cached one, a silent one drops
        // it (the device now uses the new entry) and still fails.
        let r = self.performed(unit)?;
        self.units[unit].context_cache.remove(&device);
        r
    }

    fn block(&mut self, unit: UnitIndex, device: u32) -> Result<(), MockError> {
        if unit >= self.units.len() || device > 0xffff {
            return Err(MockError::BadDevice);
        }
        self.units[unit].context.insert(device, Context::Blocked);
        let r = self.performed(unit)?;
        self.units[unit].context_cache.remove(&device);
        r
    }

    fn invalidate(&mut self, unit: UnitIndex, tag: u16, gather: &Gather) -> Result<(), MockError> {
        if unit >= self.units.len() {
            return Err(MockError::BadDevice);
        }
        self.units[unit].invalidations += 1;
        let r = self.performed(unit)?;
        let span = gather.span();
        let tables = gather.tables_removed();
        self.log.push(Invalidation::Range {
            unit,
            tag,
            span,
            tables,
        });
        let u = &mut self.units[unit];
        if let Some((s, l)) = span {
            u.iotlb
                .retain(|&(t, base), e| t != tag || base > l || base + (e.size - 1) < s);
            u.negative
                .retain(|&(t, page)| t != tag || page > l || page + 0xfff < s);
            if tables {
                u.walk_cache.retain(|&(t, region), _| {
                    let base = region << 21;
                    t != tag || base > l || base + ((1 << 21) - 1) < s
                });
            }
        } else if tables {
            u.walk_cache.retain(|&(t, _), _| t != tag);
        }
        r
    }

    fn release_tag(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        tag: u16,
    ) -> Result<(), MockError> {
        if unit >= self.units.len() {
            return Err(MockError::BadDevice);
        }
        if self.fail_release == Some(unit) {
            self.fail_release = None;
            return Err(MockError::Hardware);
        }
        self.units[unit].tags.remove(&tag);
        for pa in self.units[unit].tag_frames.remove(&tag).unwrap_or_default() {
            alloc.free_frame(pa);
        }
        self.units[unit].releases += 1;
        Ok(())
    }

    fn invalidate_all(&mut self, unit: UnitIndex, tag: u16) -> Result<(), MockError> {
        if unit >= self.units.len() {
            return Err(MockError::BadDevice);
        }
        self.units[unit].invalidations += 1;
        let r = self.performed(unit)?;
        self.log.push(Invalidation::All { unit, tag });
        let u = &mut self.units[unit];
        u.iotlb.retain(|&(t, _), _| t != tag);
        u.negative.retain(|&(t, _)| t != tag);
        u.walk_cache.retain(|&(t, _), _| t != tag);
        r
    }

    fn enable_fault_interrupt(
        &mut self,
        unit: UnitIndex,
        irq: FaultInterrupt,
    ) -> Result<(), MockError> {
        let u = self.units.get_mut(unit).ok_or(MockError::BadDevice)?;
        u.interrupt = Some(irq);
        Ok(())
    }

    fn drain_faults(
        &mut self,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, MockError> {
        if unit >= self.units.len() {
            return Err(MockError::BadDevice);
        }
        if self.fail_drain == Some(unit) {
            self.fail_drain = None;
            return Err(MockError::Hardware);
        }
        let u = &mut self.units[unit];
        while let Some(f) = u.faults.pop_front() {
            sink(f);
        }
        Ok(core::mem::take(&mut u.overflowed))
    }
}

/// A mock whose PhysMem is the shared simulated memory (for symmetry with the server's `M`).
impl<F: Format, W: RefWalker> MockBackend<F, W> {
    /// The memory the mock walks.
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }
    /// Reads one 64-bit word as the walker would.
    pub fn read_u64(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }
}

/// The mock over the VT-d second-level format, checked by the VT-d reference walker.
pub type VtdMock = MockBackend<iommu_hal::pagetable::format::VtdSl, crate::walker::VtdWalker>;

/// The [`crate::server_suite`] fixture on the mock backend: two units, 48-bit, standard leaf
/// sizes, a server over [`crate::server_suite::config`].
pub struct MockFixture {
    /// The server under test.
    pub server: crate::server_suite::SuiteServer<VtdMock>,
}

impl MockFixture {
    /// A fixture with a given mock spec (units forced to 2, `caches_not_present` from `setup`).
    pub fn with_spec(
        setup: &crate::server_suite::Setup,
        notify: crate::server_suite::Recorder,
        spec: MockSpec,
    ) -> Self {
        let mem = SharedMem::new();
        let spec = MockSpec {
            units: 2,
            caches_not_present: setup.caches_not_present,
            ..spec
        };
        let backend = VtdMock::new(mem.clone(), spec);
        let alloc = crate::sim::SimAlloc::new(
            mem.clone(),
            crate::server_suite::POOL_BASE,
            setup.pool_frames,
        );
        let server =
            iommu_server::Server::new(backend, mem, alloc, notify, crate::server_suite::config())
                .expect("suite configuration is valid");
        MockFixture { server }
    }
}

impl crate::server_suite::Fixture for MockFixture {
    type Backend = VtdMock;

    fn build(setup: &crate::server_suite::Setup, notify: crate::server_suite::Recorder) -> Self {
        Self::with_spec(setup, notify, MockSpec::default())
    }
    fn server(&mut self) -> &mut crate::server_suite::SuiteServer<VtdMock> {
        &mut self.server
    }
    fn server_ref(&self) -> &crate::server_suite::SuiteServer<VtdMock> {
        &self.server
    }
    fn dma(
        &mut self,
        unit: usize,
        rid: u32,
        iova: u64,
        write: bool,
    ) -> Result<u64, crate::server_suite::Faulted> {
        let b = self.server.backend_mut();
        let r = b
            .translate(unit, rid, iova, write)
            .map_err(|_| crate::server_suite::Faulted);
        assert!(
            b.malformed.is_empty(),
            "malformed entries: {:?}",
            b.malformed
        );
        r
    }
    fn inject(&mut self, unit: usize, fault: UnitFault) -> bool {
        self.server.backend_mut().inject(unit, fault);
        true
    }
    fn heal(&mut self) {
        self.server.backend_mut().heal();
    }
}

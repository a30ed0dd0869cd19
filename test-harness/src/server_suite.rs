//! The message-level suite of the server, generic over a [`Fixture`] (backend + memory + a way
//! to issue DMA), so the same tests run on the mock backend ([`crate::mock`]) and on a
//! register-level model behind a real hal backend.
//!
//! Every request is encoded with the protocol crate, handed to [`Server::handle`] as bytes, and
//! the reply decoded. What a device can reach is checked by DMA through the fixture's
//! hardware (its own walk and stale-keeping IOTLB), never by asking the server.
//!
//! Run all of it for a fixture with [`server_suite_tests!`](crate::server_suite_tests).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::vec::Vec;

use iommu_hal::backend::Backend;
use iommu_hal::pagetable::Format;
use iommu_protocol::{
    DeviceHandle, DomainHandle, Error, FaultReason, IovaRange, MAX_MESSAGE, Perms, Reply, Request,
    Segment, decode_reply, encode_request,
};
use iommu_server::{ClientConfig, ClientId, Config, DeviceGrant, Notify, RegionGrant, Server};

use crate::inject::UnitFault;
use crate::sim::{SharedMem, SimAlloc};

/// The server type every fixture builds: simulated memory, the simulated frame allocator, a
/// recording notification hook; 4 clients, 16 domains, 16 devices, 8 queued faults per client.
pub type SuiteServer<B> = Server<'static, B, SharedMem, SimAlloc, Recorder, 4, 16, 16, 8>;

/// Queued faults per client in [`SuiteServer`].
pub const QUEUE: usize = 8;

/// A [`Notify`] hook that records which clients were notified.
#[derive(Clone, Debug, Default)]
pub struct Recorder(pub Rc<RefCell<Vec<ClientId>>>);

impl Notify for Recorder {
    fn notify(&mut self, client: ClientId) {
        self.0.borrow_mut().push(client);
    }
}

impl Recorder {
    /// Takes the recorded notifications.
    pub fn take(&self) -> Vec<ClientId> {
        core::mem::take(&mut *self.0.borrow_mut())
    }
}

/// What a fixture must build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Units (of the two) that cache not-present entries (bit `u` = unit `u`).
    pub caches_not_present: u64,
    /// Frames in the page-table pool.
    pub pool_frames: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            caches_not_present: 0,
            pool_frames: 4096,
        }
    }
}

/// First frame of the page-table pool (far from every client region).
pub const POOL_BASE: u64 = 0x1_0000_0000;

/// A DMA access faulted (the hardware recorded a fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faulted;

/// A domain's pages in the model: IOVA page -> (physical page, writable).
pub type PageMap = BTreeMap<u64, (u64, bool)>;

/// A backend plus its hardware, as the suite needs them.
pub trait Fixture: Sized {
    /// The backend the server drives.
    type Backend: Backend;
    /// Builds two units per `setup`, the table pool (`SimAlloc` over `POOL_BASE`, shared
    /// memory), and a server over [`config()`] with `notify` as its hook.
    fn build(setup: &Setup, notify: Recorder) -> Self;
    /// The server.
    fn server(&mut self) -> &mut SuiteServer<Self::Backend>;
    /// The server, shared.
    fn server_ref(&self) -> &SuiteServer<Self::Backend>;
    /// One access by device `rid` behind `unit` to `iova`, through the hardware's caches:
    /// the physical address reached, or `Err` if it faulted (the hardware records the fault).
    fn dma(&mut self, unit: usize, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted>;
    /// Arms `fault` on `unit` (see [`crate::inject`]: a hung unit, a lost submission, a queue
    /// error). Returns false if the fixture cannot inject (the test is then skipped).
    fn inject(&mut self, unit: usize, fault: UnitFault) -> bool;
    /// Disarms every injected fault: the units work again (and catch up on lost work).
    fn heal(&mut self);
    /// Whether the fault record of a *blocked* device's DMA carries the IOVA. VT-d records a
    /// context-entry fault with the address; SMMUv3 blocks with an invalid STE, whose
    /// C_BAD_STE event carries only the StreamID (Arm IHI 0070, 7.3.4): such fixtures return
    /// false and the suite matches those records by device and reason.
    fn blocked_records_carry_iova(&self) -> bool {
        true
    }
}

/// Client A: three devices (two on unit 0, one on unit 1), three regions.
pub const A: ClientId = ClientId(10);
/// Client B: one device on unit 0, one region.
pub const B: ClientId = ClientId(20);
/// Client C: one device on unit 1, a large region, tiny quotas.
pub const C: ClientId = ClientId(30);
/// An id the configuration does not know.
pub const STRANGER: ClientId = ClientId(99);
/// A device on unit 0 no client owns.
pub const UNOWNED: (usize, u32) = (0, 0x99);

/// A's devices, as (unit, requester id); handle = index.
pub static A_DEVICES: [DeviceGrant; 3] = [
    DeviceGrant::new(0, 0x10),
    DeviceGrant::new(0, 0x11),
    DeviceGrant::new(1, 0x20),
];
/// A's memory: 64 MiB read-write, then 2 MiB read-only and an adjacent 2 MiB read-write.
pub static A_REGIONS: [RegionGrant; 3] = [
    RegionGrant {
        base: 0x1000_0000,
        len: 0x400_0000,
        perms: iommu_hal::pagetable::Perms::RW,
    },
    RegionGrant {
        base: 0x1800_0000,
        len: 0x20_0000,
        perms: iommu_hal::pagetable::Perms::R,
    },
    RegionGrant {
        base: 0x1820_0000,
        len: 0x20_0000,
        perms: iommu_hal::pagetable::Perms::RW,
    },
];
static B_DEVICES: [DeviceGrant; 1] = [DeviceGrant::new(0, 0x30)];
static B_REGIONS: [RegionGrant; 1] = [RegionGrant {
    base: 0x4000_0000,
    len: 0x400_0000,
    perms: iommu_hal::pagetable::Perms::RW,
}];
static C_DEVICES: [DeviceGrant; 1] = [DeviceGrant::new(1, 0x40)];
static C_REGIONS: [RegionGrant; 2] = [
    RegionGrant {
        base: 0x8000_0000,
        len: 0x4000_0000,
        perms: iommu_hal::pagetable::Perms::RW,
    },
    // The last page of the physical address space: granted, but beyond what any unit can
    // address.
    RegionGrant {
        base: TOP_PAGE,
        len: 0x1000,
        perms: iommu_hal::pagetable::Perms::RW,
    },
];
/// The last 4 KiB page of the 64-bit physical address space.
pub const TOP_PAGE: u64 = u64::MAX - 0xfff;
/// A's limits.
pub const A_MAX_DOMAINS: u32 = 4;
/// A's frame quota.
pub const A_MAX_FRAMES: u32 = 64;
/// C's frame quota: a root and a few tables (with the engine's shadows: two 4 KiB pages in
/// separate 1 GiB regions, not three).
pub const C_MAX_FRAMES: u32 = 10;

static CLIENTS: [ClientConfig; 3] = [
    ClientConfig {
        id: A,
        devices: &A_DEVICES,
        regions: &A_REGIONS,
        max_domains: A_MAX_DOMAINS,
        max_table_frames: A_MAX_FRAMES,
    },
    ClientConfig {
        id: B,
        devices: &B_DEVICES,
        regions: &B_REGIONS,
        max_domains: 2,
        max_table_frames: 64,
    },
    ClientConfig {
        id: C,
        devices: &C_DEVICES,
        regions: &C_REGIONS,
        max_domains: 1,
        max_table_frames: C_MAX_FRAMES,
    },
];

/// The x86 interrupt window, reserved in every domain.
pub const MSI: IovaRange = IovaRange {
    first: 0xfee0_0000,
    last: 0xfeef_ffff,
};
static RESERVED: [IovaRange; 1] = [MSI];

/// The configuration every fixture serves.
pub fn config() -> Config<'static> {
    Config {
        clients: &CLIENTS,
        reserved: &RESERVED,
    }
}

/// `(unit, rid)` of client `c`'s device `h`.
pub fn dev_of(c: ClientId, h: u32) -> (usize, u32) {
    let cfg = CLIENTS.iter().find(|x| x.id == c).expect("known client");
    let d = cfg.devices[h as usize];
    (d.unit, d.device)
}

// ---- request helpers ----------------------------------------------------------------------

/// Sends `req` from `client` as bytes and decodes the reply (which must decode).
pub fn call<F: Fixture>(f: &mut F, client: ClientId, req: &Request) -> Reply {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = encode_request(req, &mut buf).expect("request encodes");
    let mut rep = [0u8; MAX_MESSAGE];
    let m = f.server().handle(client, &buf[..n], &mut rep);
    decode_reply(&rep[..m]).expect("the server always writes a valid reply")
}

/// Like [`call`], expecting an error reply.
pub fn err<F: Fixture>(f: &mut F, client: ClientId, req: &Request) -> Error {
    match call(f, client, req) {
        Reply::Error(e) => e,
        r => panic!("expected an error for {req:?}, got {r:?}"),
    }
}

/// Like [`call`], expecting `Done`.
pub fn done<F: Fixture>(f: &mut F, client: ClientId, req: &Request) {
    match call(f, client, req) {
        Reply::Done => {}
        r => panic!("expected Done for {req:?}, got {r:?}"),
    }
}

/// Creates a domain.
pub fn create<F: Fixture>(f: &mut F, client: ClientId) -> DomainHandle {
    match call(f, client, &Request::CreateDomain) {
        Reply::DomainCreated { domain } => domain,
        r => panic!("CreateDomain: {r:?}"),
    }
}

/// A `Map` request.
pub fn map_req(domain: DomainHandle, iova: u64, phys: u64, len: u64, perms: Perms) -> Request {
    Request::Map {
        domain,
        iova,
        phys,
        len,
        perms,
    }
}

/// Maps, expecting success.
pub fn map<F: Fixture>(
    f: &mut F,
    client: ClientId,
    domain: DomainHandle,
    iova: u64,
    phys: u64,
    len: u64,
    perms: Perms,
) {
    done(f, client, &map_req(domain, iova, phys, len, perms));
}

/// Unmaps, expecting success; returns the bytes unmapped.
pub fn unmap<F: Fixture>(
    f: &mut F,
    client: ClientId,
    domain: DomainHandle,
    iova: u64,
    len: u64,
) -> u64 {
    match call(f, client, &Request::Unmap { domain, iova, len }) {
        Reply::Unmapped { bytes } => bytes,
        r => panic!("Unmap: {r:?}"),
    }
}

/// Attaches, expecting success.
pub fn attach<F: Fixture>(f: &mut F, client: ClientId, domain: DomainHandle, device: u32) {
    done(
        f,
        client,
        &Request::Attach {
            domain,
            device: DeviceHandle(device),
        },
    );
}

/// Attaches a throwaway domain of A to devices 0 and 2, detaches and destroys it. Unit
/// structures a backend allocates on a first attach (e.g. a VT-d context table for a bus) are
/// shared, never freed and not charged to anyone: a test counting frames creates them first.
fn warm_units<F: Fixture>(f: &mut F) {
    let warm = create(f, A);
    for dev in [0, 2] {
        attach(f, A, warm, dev);
        done(
            f,
            A,
            &Request::Detach {
                device: DeviceHandle(dev),
            },
        );
    }
    done(f, A, &Request::DestroyDomain { domain: warm });
}

/// Queries: `Some((phys, perms))` or `None` for `NotMapped`.
pub fn query<F: Fixture>(
    f: &mut F,
    client: ClientId,
    domain: DomainHandle,
    iova: u64,
) -> Option<(u64, Perms)> {
    match call(f, client, &Request::Query { domain, iova }) {
        Reply::Translation { phys, perms } => Some((phys, perms)),
        Reply::Error(Error::NotMapped) => None,
        r => panic!("Query: {r:?}"),
    }
}

/// DMA by client `c`'s device `h`.
pub fn dma<F: Fixture>(
    f: &mut F,
    c: ClientId,
    h: u32,
    iova: u64,
    write: bool,
) -> Result<u64, Faulted> {
    let (unit, rid) = dev_of(c, h);
    f.dma(unit, rid, iova, write)
}

/// Fetches faults of `client`.
pub fn faults<F: Fixture>(f: &mut F, client: ClientId) -> (Vec<iommu_protocol::FaultRecord>, u32) {
    match call(f, client, &Request::Faults) {
        Reply::Faults { records, lost } => (records.into_iter().collect(), lost),
        r => panic!("Faults: {r:?}"),
    }
}

/// Everything observable about the server's state for "nothing changed" checks: each
/// client's usage, the pool's free list, and the DMA/Query view at `probes` of `domains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    usage: Vec<Option<(u32, u64)>>,
    /// Length and a hash of the pool's set of free frames.
    free: (usize, u64),
    in_use: u64,
    views: Vec<Option<(u64, Perms)>>,
    dmas: Vec<Result<u64, Faulted>>,
}

/// Observes the state: usage, pool, and for each `(client, domain)` the Query answer at every
/// probe, and for each `(client, device)` the DMA result at every probe.
pub fn observe<F: Fixture>(
    f: &mut F,
    domains: &[(ClientId, DomainHandle)],
    devices: &[(ClientId, u32)],
    probes: &[u64],
) -> Observed {
    let usage = [A, B, C].iter().map(|c| f.server_ref().usage(*c)).collect();
    let mut list = f.server_ref().alloc().free_list().to_vec();
    list.sort_unstable();
    let free = (
        list.len(),
        list.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
            (h ^ x).wrapping_mul(0x100_0000_01b3)
        }),
    );
    let in_use = f.server_ref().alloc().in_use;
    let mut views = Vec::new();
    for &(c, d) in domains {
        for &p in probes {
            views.push(query(f, c, d, p));
        }
    }
    let mut dmas = Vec::new();
    for &(c, h) in devices {
        for &p in probes {
            dmas.push(dma(f, c, h, p, false));
        }
    }
    // The probes' own faults are not state of interest.
    f.server().service_faults();
    for c in [A, B, C] {
        let _ = faults(f, c);
    }
    Observed {
        usage,
        free,
        in_use,
        views,
        dmas,
    }
}

const RW: Perms = Perms::RW;
const R: Perms = Perms::READ;
const MB2: u64 = 0x20_0000;
const PG: u64 = 0x1000;

fn fresh<F: Fixture>() -> (F, Recorder) {
    let rec = Recorder::default();
    (F::build(&Setup::default(), rec.clone()), rec)
}

// ---- the tests ----------------------------------------------------------------------------

/// `Hello` and `Info`: version negotiation and honest limits.
pub fn hello_and_info<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    assert_eq!(
        call(&mut f, A, &Request::Hello { version: 1 }),
        Reply::Hello { version: 1 }
    );
    assert_eq!(
        call(&mut f, A, &Request::Hello { version: 9 }),
        Reply::Hello { version: 1 }
    );
    assert_eq!(
        err(&mut f, A, &Request::Hello { version: 0 }),
        Error::UnsupportedVersion
    );
    let Reply::Info(info) = call(&mut f, A, &Request::Info) else {
        panic!("Info")
    };
    assert_eq!(info.units, 2);
    assert_ne!(info.page_sizes & PG, 0);
    assert_eq!(info.page_sizes & !(PG | MB2 | (1 << 30)), 0);
    assert_eq!(info.domain_kinds.len(), 1);
    let kind = &info.domain_kinds[0];
    let tc = f.server_ref().table_config();
    assert_eq!(u32::from(kind.address_width), tc.addr_width);
    // A sign-extended format (RISC-V) takes zero-extended IOVAs in the lower half only.
    let sign = <<F::Backend as Backend>::Format as Format>::SIGN_EXTENDED;
    let last = (1u64 << (tc.addr_width - u32::from(sign))) - 1;
    assert_eq!(
        kind.ranges.as_slice(),
        &[
            IovaRange {
                first: 0,
                last: MSI.first - 1
            },
            IovaRange {
                first: MSI.last + 1,
                last
            }
        ]
    );
    assert_eq!(info.limits.max_domains, A_MAX_DOMAINS);
    assert_eq!(info.limits.max_table_frames, A_MAX_FRAMES);
    assert_eq!(
        usize::from(info.limits.max_sg_segments),
        iommu_protocol::MAX_SG_SEGMENTS
    );
    assert!(usize::from(info.limits.max_faults_per_reply) <= QUEUE);
    // Every configured device starts blocked.
    for (c, n) in [(A, 3), (B, 1), (C, 1)] {
        for h in 0..n {
            assert_eq!(dma(&mut f, c, h, 0, false), Err(Faulted));
        }
    }
}

/// A client the configuration does not know gets `NotPermitted` for everything, and undecodable
/// bytes get `BadMessage`; neither changes anything.
pub fn strangers_and_garbage<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    map(&mut f, A, d, 0, 0x1000_0000, PG, RW);
    let before = observe(&mut f, &[(A, d)], &[(A, 0)], &[0, PG]);
    for req in [
        Request::Hello { version: 1 },
        Request::Info,
        Request::CreateDomain,
        Request::Faults,
        Request::DestroyDomain { domain: d },
        map_req(d, PG, 0x1000_0000, PG, RW),
    ] {
        assert_eq!(err(&mut f, STRANGER, &req), Error::NotPermitted);
    }
    let mut rep = [0u8; MAX_MESSAGE];
    for bytes in [
        &[][..],
        &[0xff][..],
        &[6, 1][..],
        &[0; MAX_MESSAGE + 1][..],
        &[2, 0][..],
    ] {
        let n = f.server().handle(A, bytes, &mut rep);
        assert_eq!(decode_reply(&rep[..n]), Ok(Reply::Error(Error::BadMessage)));
    }
    // A reply buffer too small for the reply: never a panic, never a bogus reply.
    let mut tiny = [0u8; 1];
    let mut req = [0u8; MAX_MESSAGE];
    let n = encode_request(&Request::Info, &mut req).unwrap();
    let m = f.server().handle(A, &req[..n], &mut tiny);
    assert!(m <= 1);
    assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &[0, PG]), before);
}

/// Domains: creation up to the quota, destruction, handles per client, quota restored.
pub fn domains_and_quota<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let in_use = f.server_ref().alloc().in_use;
    let hs: Vec<_> = (0..A_MAX_DOMAINS).map(|_| create(&mut f, A)).collect();
    let mut sorted = hs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), hs.len(), "handles are distinct");
    let before = observe(&mut f, &[], &[], &[]);
    assert_eq!(err(&mut f, A, &Request::CreateDomain), Error::QuotaExceeded);
    assert_eq!(observe(&mut f, &[], &[], &[]), before);
    done(&mut f, A, &Request::DestroyDomain { domain: hs[1] });
    assert_eq!(
        err(&mut f, A, &Request::DestroyDomain { domain: hs[1] }),
        Error::NoSuchDomain
    );
    assert_eq!(
        err(
            &mut f,
            A,
            &Request::Query {
                domain: hs[1],
                iova: 0
            }
        ),
        Error::NoSuchDomain
    );
    let again = create(&mut f, A);
    assert!(!hs[..1].contains(&again) && !hs[2..].contains(&again));
    for h in hs.iter().chain([&again]) {
        if *h != hs[1] {
            done(&mut f, A, &Request::DestroyDomain { domain: *h });
        }
    }
    assert_eq!(f.server_ref().usage(A), Some((0, 0)));
    assert_eq!(f.server_ref().alloc().in_use, in_use);
    // Handles are per client: B's first domain may carry the same number as A's, but is B's.
    let a = create(&mut f, A);
    let b = create(&mut f, B);
    map(&mut f, B, b, 0, 0x4000_0000, PG, RW);
    assert_eq!(query(&mut f, A, a, 0), None);
    assert_eq!(query(&mut f, B, b, 0), Some((0x4000_0000, RW)));
}

/// Map / Query / DMA / Unmap round trip, large pages, and strict invalidation: after `Unmap`
/// returns, DMA that had loaded the IOTLB faults.
pub fn map_unmap_dma<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    // The root, and the per-domain unit structures the attach took (charged to A).
    let attached_frames = f.server_ref().usage(A).expect("A").1;
    // 4 KiB, a 2 MiB-aligned 4 MiB range (large pages where allowed), read-only region.
    map(&mut f, A, d, 0x10_0000, 0x1000_0000, 3 * PG, RW);
    map(&mut f, A, d, 0x4000_0000, 0x1020_0000, 2 * MB2, RW);
    map(&mut f, A, d, 0x5000_0000, 0x1800_0000, MB2, R);
    assert_eq!(query(&mut f, A, d, 0x10_1234), Some((0x1000_1234, RW)));
    assert_eq!(
        query(&mut f, A, d, 0x4000_0000 + MB2 + 5),
        Some((0x1040_0005, RW))
    );
    assert_eq!(query(&mut f, A, d, 0x5000_0000), Some((0x1800_0000, R)));
    assert_eq!(query(&mut f, A, d, 0x10_3000), None);
    assert_eq!(dma(&mut f, A, 0, 0x10_1000, true), Ok(0x1000_1000));
    assert_eq!(dma(&mut f, A, 0, 0x4000_0000 + MB2, true), Ok(0x1040_0000));
    assert_eq!(
        dma(&mut f, A, 0, 0x4000_0000 + 0x1000, false),
        Ok(0x1020_1000)
    );
    assert_eq!(dma(&mut f, A, 0, 0x5000_0000, false), Ok(0x1800_0000));
    assert_eq!(
        dma(&mut f, A, 0, 0x5000_0000, true),
        Err(Faulted),
        "read-only"
    );
    // The device not attached faults, even at mapped addresses.
    assert_eq!(dma(&mut f, A, 1, 0x10_1000, false), Err(Faulted));
    // Unmap exactly a middle page of the 4 MiB range (split) and the 4 KiB pages.
    let split = f.server_ref().table_config().split_live_blocks;
    if split {
        assert_eq!(unmap(&mut f, A, d, 0x4000_0000 + MB2, PG), PG);
        assert_eq!(
            dma(&mut f, A, 0, 0x4000_0000 + MB2, true),
            Err(Faulted),
            "stale after unmap"
        );
    } else {
        // Units that cannot replace a live block by a table (e.g. SMMUv3 without BBML2):
        // the split is refused and nothing changes.
        let probes = [0x4000_0000 + MB2, 0x4000_0000 + MB2 + PG, 0x4000_1000];
        let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
        assert_eq!(
            err(
                &mut f,
                A,
                &Request::Unmap {
                    domain: d,
                    iova: 0x4000_0000 + MB2,
                    len: PG
                }
            ),
            Error::Unsupported
        );
        assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &probes), before);
        assert_eq!(dma(&mut f, A, 0, 0x4000_0000 + MB2, true), Ok(0x1040_0000));
    }
    assert_eq!(
        dma(&mut f, A, 0, 0x4000_0000 + MB2 + PG, true),
        Ok(0x1040_1000)
    );
    assert_eq!(
        dma(&mut f, A, 0, 0x4000_0000 + 0x1000, false),
        Ok(0x1020_1000)
    );
    assert_eq!(unmap(&mut f, A, d, 0x10_0000, 0x10_0000), 3 * PG);
    assert_eq!(
        dma(&mut f, A, 0, 0x10_1000, true),
        Err(Faulted),
        "stale after unmap"
    );
    assert_eq!(unmap(&mut f, A, d, 0x10_0000, 0x10_0000), 0);
    let split_off = if split { PG } else { 0 };
    // An unmap crossing the reserved MSI window leaves the usable ranges: refused, nothing
    // changes (protocol README, section 4).
    let across = Request::Unmap {
        domain: d,
        iova: 0,
        len: 1 << 40,
    };
    assert_eq!(err(&mut f, A, &across), Error::OutOfRange);
    assert_eq!(dma(&mut f, A, 0, 0x5000_0000, false), Ok(0x1800_0000));
    // One unmap per usable range takes everything.
    let below = unmap(&mut f, A, d, 0, MSI.first);
    let above = unmap(&mut f, A, d, MSI.last + 1, (1 << 40) - (MSI.last + 1));
    assert_eq!(below + above, 2 * MB2 - split_off + MB2);
    assert_eq!(dma(&mut f, A, 0, 0x4000_0000 + 0x1000, false), Err(Faulted));
    assert_eq!(dma(&mut f, A, 0, 0x5000_0000, false), Err(Faulted));
    assert_eq!(query(&mut f, A, d, 0x4000_0000), None);
    // Everything freed but the root and its shadow (the engine's live counts), the domain's
    // unit structures, and the level-2 table below the root with its shadow: each unmap
    // covered it only partly (the MSI window sits between them), so the engine keeps it,
    // empty, in its reserve of recently emptied tables.
    assert_eq!(f.server_ref().usage(A), Some((1, attached_frames + 2)));
}

/// Every argument error of the map requests, and that none changes anything.
pub fn map_errors<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, 0x20_0000, 0x1000_0000, PG, RW);
    let probes = [0x20_0000, 0x20_1000, 0];
    let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
    let bad = DomainHandle(d.0.wrapping_add(1000));
    let last = (1u64 << f.server_ref().table_config().addr_width) - 1;
    let cases: Vec<(Request, Error)> = vec![
        (
            map_req(d, 0x30_0800, 0x1000_0000, PG, RW),
            Error::Misaligned,
        ),
        (
            map_req(d, 0x30_0000, 0x1000_0800, PG, RW),
            Error::Misaligned,
        ),
        (
            map_req(d, 0x30_0000, 0x1000_0000, 0x800, RW),
            Error::Misaligned,
        ),
        (
            map_req(d, 0x30_0000, 0x1000_0000, 0, RW),
            Error::InvalidArgument,
        ),
        (
            map_req(d, 0x30_0000, 0x1000_0000, PG, Perms::NONE),
            Error::InvalidArgument,
        ),
        (
            map_req(d, u64::MAX - 0xfff, 0x1000_0000, 2 * PG, RW),
            Error::OutOfRange,
        ),
        (
            map_req(d, 0x30_0000, u64::MAX - 0xfff, 2 * PG, RW),
            Error::OutOfRange,
        ),
        (
            map_req(d, 0x30_0000, 0x1000_0000, u64::MAX - 0xfff, RW),
            Error::OutOfRange,
        ),
        (map_req(d, last + 1, 0x1000_0000, PG, RW), Error::OutOfRange),
        (
            map_req(d, last - 0xfff, 0x1000_0000, 2 * PG, RW),
            Error::OutOfRange,
        ),
        (
            map_req(d, MSI.first, 0x1000_0000, PG, RW),
            Error::OutOfRange,
        ),
        (
            map_req(d, MSI.first - PG, 0x1000_0000, 2 * PG, RW),
            Error::OutOfRange,
        ),
        (
            map_req(d, 0x1f_f000, 0x1000_0000, 2 * PG, RW),
            Error::Overlap,
        ),
        (map_req(d, 0x20_0000, 0x1100_0000, PG, R), Error::Overlap),
        (
            map_req(d, 0x30_0000, 0x0fff_f000, 2 * PG, RW),
            Error::NotPermitted,
        ),
        (
            map_req(d, 0x30_0000, 0x1400_0000, PG, RW),
            Error::NotPermitted,
        ),
        (
            map_req(d, 0x30_0000, 0x1800_0000, PG, RW),
            Error::NotPermitted,
        ),
        (
            map_req(d, 0x30_0000, 0x1800_0000, PG, Perms::WRITE),
            Error::NotPermitted,
        ),
        // Two adjacent grants: a range must lie within one.
        (
            map_req(d, 0x40_0000, 0x181f_f000, 2 * PG, R),
            Error::NotPermitted,
        ),
        (
            map_req(d, 0x30_0000, 0x4000_0000, PG, RW),
            Error::NotPermitted,
        ),
        (
            map_req(bad, 0x30_0000, 0x1000_0000, PG, RW),
            Error::NoSuchDomain,
        ),
        (
            Request::Unmap {
                domain: d,
                iova: 0x800,
                len: PG,
            },
            Error::Misaligned,
        ),
        (
            Request::Unmap {
                domain: d,
                iova: 0,
                len: 0,
            },
            Error::InvalidArgument,
        ),
        // Misaligned comes before the usable-range check, whichever of iova and len is off.
        (
            Request::Unmap {
                domain: d,
                iova: MSI.first + 0x800,
                len: PG,
            },
            Error::Misaligned,
        ),
        (
            Request::Unmap {
                domain: d,
                iova: MSI.first,
                len: 0x800,
            },
            Error::Misaligned,
        ),
        (
            Request::Unmap {
                domain: d,
                iova: u64::MAX - 0xfff,
                len: 2 * PG,
            },
            Error::OutOfRange,
        ),
        (
            Request::Unmap {
                domain: d,
                iova: last + 1,
                len: PG,
            },
            Error::OutOfRange,
        ),
        (
            Request::Unmap {
                domain: bad,
                iova: 0,
                len: PG,
            },
            Error::NoSuchDomain,
        ),
        (
            Request::Query {
                domain: bad,
                iova: 0,
            },
            Error::NoSuchDomain,
        ),
        (
            Request::Query {
                domain: d,
                iova: 0x30_0000,
            },
            Error::NotMapped,
        ),
        (
            Request::Query {
                domain: d,
                iova: u64::MAX,
            },
            Error::NotMapped,
        ),
        (
            Request::MapSg {
                domain: d,
                iova: 0x30_0000,
                perms: RW,
                segments: Default::default(),
            },
            Error::InvalidArgument,
        ),
        (
            Request::MapAnywhere {
                domain: d,
                phys: 0x1000_0000,
                len: PG,
                perms: RW,
                align: 3 * PG,
            },
            Error::InvalidArgument,
        ),
        (
            Request::MapAnywhere {
                domain: d,
                phys: 0x1000_0000,
                len: 0,
                perms: RW,
                align: 0,
            },
            Error::InvalidArgument,
        ),
        (
            Request::MapAnywhere {
                domain: d,
                phys: 0x4000_0000,
                len: PG,
                perms: RW,
                align: 0,
            },
            Error::NotPermitted,
        ),
        (
            Request::Attach {
                domain: d,
                device: DeviceHandle(3),
            },
            Error::NoSuchDevice,
        ),
        (
            Request::Detach {
                device: DeviceHandle(u32::MAX),
            },
            Error::NoSuchDevice,
        ),
    ];
    for (req, want) in &cases {
        assert_eq!(err(&mut f, A, req), *want, "{req:?}");
    }
    assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &probes), before);
    // C's grant of the last physical page: granted, but no unit can address it. OutOfRange
    // (a physical range the hardware cannot address), and C's domain unchanged.
    let c = create(&mut f, C);
    // (The page below it is not granted: NotPermitted comes first, so the width check
    // tells nothing about memory C was not given.)
    for (phys, want) in [
        (TOP_PAGE, Error::OutOfRange),
        (TOP_PAGE - PG, Error::NotPermitted),
    ] {
        assert_eq!(err(&mut f, C, &map_req(c, 0x10_0000, phys, PG, RW)), want);
    }
    let e = err(
        &mut f,
        C,
        &Request::MapAnywhere {
            domain: c,
            phys: TOP_PAGE,
            len: PG,
            perms: RW,
            align: 0,
        },
    );
    assert_eq!(e, Error::OutOfRange);
    assert_eq!(query(&mut f, C, c, 0x10_0000), None);
    // The root and its shadow (the engine's live counts).
    assert_eq!(f.server_ref().usage(C), Some((1, 2)));
    let codes: Vec<u16> = cases.iter().map(|(_, e)| e.code()).collect();
    for (i, n) in f.server_ref().stats().errors.iter().enumerate() {
        let want = codes.iter().filter(|c| usize::from(**c) == i).count() as u64;
        assert!(*n >= want, "error code {i} counted {n} < {want}");
    }
    // The edges are inclusive: the pages right below and right above the reserved window,
    // and the last usable page (what Info reports: the top of the address width, or of its
    // lower half for a sign-extended format), are usable (a range is refused only if it
    // reaches past them).
    let Reply::Info(info) = call(&mut f, A, &Request::Info) else {
        panic!("not an Info reply")
    };
    let top = info.domain_kinds[0]
        .ranges
        .last()
        .expect("a usable range")
        .last;
    for iova in [MSI.first - PG, MSI.last + 1, top - (PG - 1)] {
        done(&mut f, A, &map_req(d, iova, 0x1000_0000, PG, RW));
        assert_eq!(dma(&mut f, A, 0, iova, true), Ok(0x1000_0000), "{iova:#x}");
        assert_eq!(unmap(&mut f, A, d, iova, PG), PG);
    }
}

/// Capability attacks: another client's memory, devices and handles (every u32 near them).
pub fn capability_attacks<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let a1 = create(&mut f, A);
    let a2 = create(&mut f, A);
    attach(&mut f, A, a1, 0);
    map(&mut f, A, a1, 0x10_0000, 0x1000_0000, PG, RW);
    let probes = [0x10_0000, 0x66_6000];
    let a_before = observe(&mut f, &[(A, a1), (A, a2)], &[(A, 0)], &probes);
    // B has no domain yet: every handle is NoSuchDomain, for every request.
    let mut guesses: Vec<u32> = (0..64).collect();
    for h in [a1.0, a2.0] {
        guesses.extend(h.saturating_sub(32)..h.saturating_add(32));
    }
    guesses.extend([u32::MAX, u32::MAX - 1, 1 << 31, 1 << 16]);
    for &g in &guesses {
        let d = DomainHandle(g);
        for req in [
            map_req(d, 0x66_6000, 0x4000_0000, PG, RW),
            Request::Unmap {
                domain: d,
                iova: 0,
                len: 1 << 30,
            },
            Request::Query {
                domain: d,
                iova: 0x10_0000,
            },
            Request::DestroyDomain { domain: d },
            Request::Attach {
                domain: d,
                device: DeviceHandle(0),
            },
        ] {
            assert_eq!(err(&mut f, B, &req), Error::NoSuchDomain, "{req:?}");
        }
    }
    // B with its own domain: B's handles are B's; mapping A's memory is refused.
    let b = create(&mut f, B);
    assert_eq!(
        err(&mut f, B, &map_req(b, 0x66_6000, 0x1000_0000, PG, RW)),
        Error::NotPermitted
    );
    for g in 0..64u32 {
        assert_eq!(
            err(
                &mut f,
                B,
                &Request::Attach {
                    domain: b,
                    device: DeviceHandle(g + 1)
                }
            ),
            Error::NoSuchDevice
        );
    }
    assert_eq!(
        err(
            &mut f,
            B,
            &Request::Detach {
                device: DeviceHandle(1)
            }
        ),
        Error::NoSuchDevice
    );
    for &g in &guesses {
        let d = DomainHandle(g);
        let r = call(&mut f, B, &map_req(d, 0x66_6000, 0x4000_0000, PG, RW));
        if d == b {
            assert_eq!(r, Reply::Done);
            assert_eq!(unmap(&mut f, B, b, 0x66_6000, PG), PG);
        } else {
            assert_eq!(r, Reply::Error(Error::NoSuchDomain));
        }
    }
    // Ranges that wrap or overflow.
    for (iova, phys, len) in [
        (u64::MAX - 0xfff, 0x4000_0000, 0x2000),
        (0, u64::MAX - 0xfff, 0x2000),
        (0x1000, 0x4000_0000, u64::MAX - 0xfff),
        (0x1000, 0x4000_0000, 1 << 63),
    ] {
        let e = err(&mut f, B, &map_req(b, iova, phys, len, RW));
        assert!(
            matches!(e, Error::OutOfRange | Error::NotPermitted),
            "{e:?}"
        );
    }
    done(&mut f, B, &Request::DestroyDomain { domain: b });
    assert_eq!(
        observe(&mut f, &[(A, a1), (A, a2)], &[(A, 0)], &probes),
        a_before
    );
}

/// Attach / Detach / DestroyDomain semantics: idempotence, DeviceBusy, DomainBusy, a device
/// moved by detach + attach, and a failing attach leaving the device blocked.
pub fn attach_detach<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d1 = create(&mut f, A);
    let d2 = create(&mut f, A);
    map(&mut f, A, d1, 0, 0x1000_0000, PG, RW);
    map(&mut f, A, d2, 0, 0x1000_1000, PG, RW);
    attach(&mut f, A, d1, 0);
    attach(&mut f, A, d1, 0);
    assert_eq!(dma(&mut f, A, 0, 0, false), Ok(0x1000_0000));
    assert_eq!(
        err(
            &mut f,
            A,
            &Request::Attach {
                domain: d2,
                device: DeviceHandle(0)
            }
        ),
        Error::DeviceBusy
    );
    assert_eq!(dma(&mut f, A, 0, 0, false), Ok(0x1000_0000));
    assert_eq!(
        err(&mut f, A, &Request::DestroyDomain { domain: d1 }),
        Error::DomainBusy
    );
    done(
        &mut f,
        A,
        &Request::Detach {
            device: DeviceHandle(0),
        },
    );
    done(
        &mut f,
        A,
        &Request::Detach {
            device: DeviceHandle(0),
        },
    );
    assert_eq!(
        dma(&mut f, A, 0, 0, false),
        Err(Faulted),
        "detached devices are blocked"
    );
    attach(&mut f, A, d2, 0);
    assert_eq!(dma(&mut f, A, 0, 0, false), Ok(0x1000_1000));
    // A domain spanning two units.
    attach(&mut f, A, d2, 2);
    assert_eq!(dma(&mut f, A, 2, 0, false), Ok(0x1000_1000));
    done(&mut f, A, &Request::DestroyDomain { domain: d1 });
}

/// A client's exit: its devices blocked, its domains and quota released, faults dropped,
/// other clients unaffected.
pub fn client_exit<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    warm_units(&mut f);
    let in_use = f.server_ref().alloc().in_use;
    let b = create(&mut f, B);
    attach(&mut f, B, b, 0);
    map(&mut f, B, b, 0x10_0000, 0x4000_0000, MB2, RW);
    let b_before = observe(&mut f, &[(B, b)], &[(B, 0)], &[0x10_0000, 0x20_0000]);
    let b_in_use = f.server_ref().alloc().in_use;
    let mut ds = Vec::new();
    for (i, dev) in [0u32, 2].into_iter().enumerate() {
        let d = create(&mut f, A);
        attach(&mut f, A, d, dev);
        map(
            &mut f,
            A,
            d,
            0x10_0000,
            0x1000_0000 + i as u64 * MB2,
            MB2 * 2,
            RW,
        );
        ds.push(d);
    }
    assert!(dma(&mut f, A, 0, 0x10_0000, true).is_ok());
    assert!(dma(&mut f, A, 2, 0x10_0000, true).is_ok());
    // A queued fault, dropped by the exit.
    assert!(dma(&mut f, A, 0, 0x9000_0000, true).is_err());
    f.server().service_faults();
    f.server().client_exited(A);
    assert_eq!(f.server_ref().usage(A), Some((0, 0)));
    assert_eq!(f.server_ref().alloc().in_use, b_in_use);
    assert_eq!(dma(&mut f, A, 0, 0x10_0000, false), Err(Faulted));
    assert_eq!(dma(&mut f, A, 2, 0x10_0000, false), Err(Faulted));
    f.server().service_faults();
    let (recs, lost) = faults(&mut f, A);
    assert_eq!(lost, 0);
    let carries_iova = f.blocked_records_carry_iova();
    assert!(!recs.is_empty(), "blocked DMA after exit recorded");
    assert!(
        recs.iter().all(|r| if carries_iova {
            r.iova == 0x10_0000
        } else {
            r.reason == FaultReason::Blocked
        }),
        "old faults dropped: {recs:?}"
    );
    for d in &ds {
        assert_eq!(
            err(
                &mut f,
                A,
                &Request::Query {
                    domain: *d,
                    iova: 0
                }
            ),
            Error::NoSuchDomain
        );
    }
    assert_eq!(
        observe(&mut f, &[(B, b)], &[(B, 0)], &[0x10_0000, 0x20_0000]),
        b_before
    );
    // The new instance of A starts afresh, with its whole quota.
    for _ in 0..A_MAX_DOMAINS {
        create(&mut f, A);
    }
    f.server().client_exited(A);
    f.server().client_exited(B);
    f.server().client_exited(STRANGER);
    assert_eq!(f.server_ref().alloc().in_use, in_use);
}

/// Create / attach / detach / destroy cycles (and client exits with devices still attached)
/// leak no frame: after one domain has been attached once on each unit (creating the units'
/// shared structures), the pool holds exactly the same free frames after every cycle. Per-
/// domain unit structures (e.g. SMMUv3 context descriptors) go back, through
/// `Backend::release_tag`, to the global pool they came from (never to the client's quota,
/// never freed twice), and a reused tag translates through its new tables. B's idle domains
/// shift A's domains onto other tags from round to round, so every tag is new at some point.
pub fn domain_cycles_release_frames<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let free_set = |f: &F| {
        let mut l = f.server_ref().alloc().free_list().to_vec();
        l.sort_unstable();
        l
    };
    let cycle = |f: &mut F, round: u64, exit: bool| {
        let idle: Vec<DomainHandle> = (0..round % 3).map(|_| create(f, B)).collect();
        let ds: Vec<DomainHandle> = (0..A_MAX_DOMAINS).map(|_| create(f, A)).collect();
        for (i, d) in ds.iter().enumerate() {
            let phys = 0x1000_0000 + (round * 8 + i as u64) * PG;
            map(f, A, *d, 0x10_0000, phys, PG, RW);
            // Unit 0 and unit 1; the last domain keeps its devices when the client exits.
            for dev in [0u32, 2] {
                attach(f, A, *d, dev);
                assert_eq!(dma(f, A, dev, 0x10_0000, true), Ok(phys));
                if exit && i + 1 == ds.len() {
                    continue;
                }
                done(
                    f,
                    A,
                    &Request::Detach {
                        device: DeviceHandle(dev),
                    },
                );
                assert_eq!(dma(f, A, dev, 0x10_0000, false), Err(Faulted));
            }
        }
        if exit {
            f.server().client_exited(A);
        } else {
            for d in &ds {
                done(f, A, &Request::DestroyDomain { domain: *d });
            }
        }
        for d in idle {
            done(f, B, &Request::DestroyDomain { domain: d });
        }
        f.server().service_faults();
        let _ = faults(f, A);
        assert_eq!(f.server_ref().usage(A), Some((0, 0)));
    };
    warm_units(&mut f);
    let in_use = f.server_ref().alloc().in_use;
    let free = free_set(&f);
    for round in 0..12 {
        cycle(&mut f, round, round % 3 == 0);
        assert_eq!(f.server_ref().alloc().in_use, in_use, "round {round}");
        assert_eq!(free_set(&f), free, "round {round}: other frames free");
    }
    assert_eq!(f.server_ref().stats().quarantined_domains, 0);
}

/// Strict invalidation and its cost: one invalidation per request per unit holding a device of
/// the domain, never one per page; none for maps on units that do not cache non-present
/// entries; maps invalidated on units that do.
pub fn invalidation_per_request<F: Fixture>() {
    for cnp in [0u64, 0b10] {
        let rec = Recorder::default();
        let mut f = F::build(
            &Setup {
                caches_not_present: cnp,
                ..Setup::default()
            },
            rec,
        );
        // Units that cannot cache not-present entries (e.g. SMMUv3) report so; the setup
        // asking for them then does not apply.
        let reported = (0..2).fold(0u64, |m, u| {
            m | u64::from(f.server_ref().backend().unit_info(u).caches_not_present) << u
        });
        if reported != cnp {
            continue;
        }
        let d = create(&mut f, A);
        let inv = |f: &mut F| f.server_ref().stats().invalidations;
        // No device attached: nothing to invalidate.
        let n0 = inv(&mut f);
        map(&mut f, A, d, 0, 0x1000_0000, 16 * PG, RW);
        // Covering the whole 4 KiB-page table unlinks it (a smaller unmap would keep it in
        // the engine's reserve, and the 2 MiB map below would replace it: an invalidation).
        assert_eq!(unmap(&mut f, A, d, 0, 0x20_0000), 16 * PG);
        assert_eq!(inv(&mut f), n0);
        attach(&mut f, A, d, 0);
        attach(&mut f, A, d, 1);
        attach(&mut f, A, d, 2);
        let n0 = inv(&mut f);
        map(&mut f, A, d, 0, 0x1000_0000, 0x40_0000, RW);
        let per_map = inv(&mut f) - n0;
        assert_eq!(
            per_map,
            cnp.count_ones() as u64,
            "map invalidates only caching units"
        );
        for dev in [0, 1, 2] {
            for p in (0..0x40_0000).step_by(0x8_0000) {
                assert!(dma(&mut f, A, dev, p, true).is_ok());
            }
        }
        let n1 = inv(&mut f);
        assert_eq!(unmap(&mut f, A, d, 0, 0x40_0000), 0x40_0000);
        assert_eq!(inv(&mut f) - n1, 2, "one invalidation per unit (two units)");
        for dev in [0, 1, 2] {
            for p in (0..0x40_0000).step_by(0x8_0000) {
                assert_eq!(
                    dma(&mut f, A, dev, p, false),
                    Err(Faulted),
                    "stale IOTLB at {p:#x}"
                );
            }
        }
        // Scattered 4 KiB maps, one Unmap of all of them: still one per unit.
        for i in 0..32u64 {
            map(&mut f, A, d, i * 0x10_0000, 0x1000_0000 + i * PG, PG, RW);
        }
        for i in 0..32u64 {
            assert!(dma(&mut f, A, 2, i * 0x10_0000, false).is_ok());
        }
        let n2 = inv(&mut f);
        assert_eq!(unmap(&mut f, A, d, 0, 32 * 0x10_0000), 32 * PG);
        assert_eq!(inv(&mut f) - n2, 2);
        for i in 0..32u64 {
            assert_eq!(dma(&mut f, A, 2, i * 0x10_0000, false), Err(Faulted));
        }
        // With caching of non-present entries: a map after a faulting access is visible.
        assert_eq!(dma(&mut f, A, 2, 0x70_0000, false), Err(Faulted));
        map(&mut f, A, d, 0x70_0000, 0x1000_0000, PG, RW);
        assert_eq!(dma(&mut f, A, 2, 0x70_0000, false), Ok(0x1000_0000));
    }
}

/// MapSg: all or nothing.
pub fn map_sg<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    let seg = |phys, len| Segment { phys, len };
    let sg = |iova, segs: &[Segment]| Request::MapSg {
        domain: d,
        iova,
        perms: R,
        segments: segs.iter().copied().collect(),
    };
    map(&mut f, A, d, 0x60_5000, 0x1000_0000, PG, RW);
    let probes: Vec<u64> = (0x40_0000..0x70_0000).step_by(0x1000).collect();
    let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
    let good = [
        seg(0x1010_0000, MB2),
        seg(0x1800_0000, 4 * PG),
        seg(0x1001_0000, PG),
    ];
    // Third segment outside the grants; second beyond its grant's perms (write); overlap at
    // the end; misaligned; wrap.
    for (req, want) in [
        (
            sg(0x40_0000, &[good[0], good[1], seg(0x4000_0000, PG)]),
            Error::NotPermitted,
        ),
        (
            sg(
                0x40_0000,
                &[good[0], good[1], good[2], seg(0x1000_0000, 0x20_3000)],
            ),
            Error::Overlap,
        ),
        (
            sg(0x40_0000, &[good[0], seg(0x1000_0800, PG)]),
            Error::Misaligned,
        ),
        (
            sg(0x40_0000, &[good[0], seg(0x1000_0000, 0)]),
            Error::InvalidArgument,
        ),
        (
            sg(u64::MAX - MB2 + 1, &[good[0], good[1]]),
            Error::OutOfRange,
        ),
        (sg(MSI.first - MB2, &[good[0], good[1]]), Error::OutOfRange),
    ] {
        assert_eq!(err(&mut f, A, &req), want, "{req:?}");
    }
    let mut rw_req = sg(0x40_0000, &good);
    if let Request::MapSg { perms, .. } = &mut rw_req {
        *perms = RW;
    }
    assert_eq!(err(&mut f, A, &rw_req), Error::NotPermitted);
    assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &probes), before);
    // Success: back to back.
    done(&mut f, A, &sg(0x40_0000, &good));
    assert_eq!(query(&mut f, A, d, 0x40_0000), Some((0x1010_0000, R)));
    assert_eq!(query(&mut f, A, d, 0x60_0000), Some((0x1800_0000, R)));
    assert_eq!(query(&mut f, A, d, 0x60_2000), Some((0x1800_2000, R)));
    assert_eq!(query(&mut f, A, d, 0x60_4000), Some((0x1001_0000, R)));
    assert_eq!(query(&mut f, A, d, 0x60_5000), Some((0x1000_0000, RW)));
    assert_eq!(dma(&mut f, A, 0, 0x60_1000, false), Ok(0x1800_1000));
    assert_eq!(dma(&mut f, A, 0, 0x60_2000, true), Err(Faulted));
    assert_eq!(unmap(&mut f, A, d, 0x40_0000, MB2 + 5 * PG), MB2 + 5 * PG);
}

/// MapAnywhere: free, aligned, within a usable range; NoSpace when nothing fits.
pub fn map_anywhere<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    map(&mut f, A, d, 0, 0x1000_0000, 3 * PG, RW);
    let any = |phys, len, align| Request::MapAnywhere {
        domain: d,
        phys,
        len,
        perms: RW,
        align,
    };
    let mut got: Vec<(u64, u64)> = vec![(0, 3 * PG)];
    for (len, align) in [
        (PG, 0),
        (2 * PG, PG),
        (MB2, MB2),
        (PG, 1),
        (3 * PG, 0x1_0000),
        (MB2, 0),
    ] {
        let Reply::Mapped { iova } = call(&mut f, A, &any(0x1020_0000, len, align)) else {
            panic!("MapAnywhere")
        };
        assert_eq!(iova % align.max(PG), 0);
        assert!(iova + len - 1 < MSI.first || iova > MSI.last);
        for &(s, l) in &got {
            assert!(
                iova + len <= s || s + l <= iova,
                "{iova:#x} overlaps {s:#x}"
            );
        }
        assert_eq!(query(&mut f, A, d, iova), Some((0x1020_0000, RW)));
        got.push((iova, len));
    }
    // Only two positions at half the usable space's alignment (the whole 2^width, or its
    // lower half for sign-extended formats such as RISC-V Sv48): then NoSpace.
    let sign_extended = <<F::Backend as Backend>::Format as Format>::SIGN_EXTENDED;
    let usable_bits = f.server_ref().table_config().addr_width - u32::from(sign_extended);
    let half = 1u64 << (usable_bits - 1);
    let mut n = 0;
    loop {
        match call(&mut f, A, &any(0x1000_0000, MB2, half)) {
            Reply::Mapped { iova } => {
                assert_eq!(iova % half, 0);
                n += 1;
            }
            Reply::Error(e) => {
                assert_eq!(e, Error::NoSpace);
                break;
            }
            r => panic!("{r:?}"),
        }
        assert!(n <= 2);
    }
    assert_eq!(n, 1, "0 is taken, only the upper half is free");
}

/// Faults: routed to the owner as its device handle, isolation, overflow reported as lost,
/// unowned devices dropped, notification per client.
pub fn fault_routing<F: Fixture>() {
    let (mut f, rec) = fresh::<F>();
    let a = create(&mut f, A);
    attach(&mut f, A, a, 2);
    let b = create(&mut f, B);
    attach(&mut f, B, b, 0);
    assert!(dma(&mut f, A, 2, 0x5000, true).is_err());
    assert!(dma(&mut f, A, 1, 0x6000, false).is_err()); // blocked device
    f.server().service_faults();
    assert_eq!(rec.take(), vec![A]);
    assert_eq!(faults(&mut f, B), (vec![], 0));
    let (recs, lost) = faults(&mut f, A);
    assert_eq!(lost, 0);
    assert!(
        recs.iter()
            .any(|r| r.device == DeviceHandle(2) && r.iova == 0x5000 && r.write)
    );
    let carries_iova = f.blocked_records_carry_iova();
    let blocked_recorded = recs.iter().any(|r| {
        r.device == DeviceHandle(1)
            && if carries_iova {
                r.iova == 0x6000 && !r.write
            } else {
                r.reason == FaultReason::Blocked
            }
    });
    assert!(blocked_recorded, "blocked device's DMA recorded: {recs:?}");
    assert!(recs.iter().all(|r| r.device.0 < 3));
    assert!(
        recs.iter()
            .any(|r| matches!(r.reason, FaultReason::NotPresent | FaultReason::Blocked))
    );
    assert_eq!(faults(&mut f, A), (vec![], 0));
    // B's faults go to B only.
    assert!(dma(&mut f, B, 0, 0x7000, false).is_err());
    f.server().service_faults();
    assert_eq!(rec.take(), vec![B]);
    assert_eq!(faults(&mut f, A), (vec![], 0));
    let (recs, _) = faults(&mut f, B);
    assert!(!recs.is_empty() && recs.iter().all(|r| r.device == DeviceHandle(0)));
    // Unowned device: counted and dropped.
    let unowned = f.server_ref().stats().faults_unowned;
    assert!(f.dma(UNOWNED.0, UNOWNED.1, 0, false).is_err());
    f.server().service_faults();
    assert!(f.server_ref().stats().faults_unowned > unowned);
    assert!(rec.take().is_empty());
    // Overflow of A's queue: drain often so the hardware log does not overflow first.
    let total = QUEUE as u64 + 5;
    for i in 0..total {
        assert!(dma(&mut f, A, 2, 0x10_0000 + i * PG, false).is_err());
        f.server().service_faults();
    }
    let mut seen = 0u64;
    let (recs, lost) = faults(&mut f, A);
    seen += recs.len() as u64;
    assert!(lost >= 1, "overflow reported");
    assert!(seen + u64::from(lost) >= total);
    assert_eq!(faults(&mut f, A).1, 0, "lost is reported once");
}

/// Frame quota (QuotaExceeded) versus an exhausted pool (OutOfTableMemory), nothing changed.
pub fn frame_quota<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let c = create(&mut f, C);
    let probes: Vec<u64> = (0..16).map(|i| i << 30).collect();
    let mut i = 0u64;
    let failed = loop {
        let r = call(
            &mut f,
            C,
            &map_req(c, i << 30, 0x8000_0000 + i * PG, PG, RW),
        );
        match r {
            Reply::Done => i += 1,
            Reply::Error(e) => break e,
            r => panic!("{r:?}"),
        }
        assert!(i < 16);
    };
    assert_eq!(failed, Error::QuotaExceeded);
    assert!(f.server_ref().usage(C).unwrap().1 <= u64::from(C_MAX_FRAMES));
    let before = observe(&mut f, &[(C, c)], &[], &probes);
    assert_eq!(
        err(&mut f, C, &map_req(c, i << 30, 0x8000_0000, PG, RW)),
        Error::QuotaExceeded
    );
    assert_eq!(observe(&mut f, &[(C, c)], &[], &probes), before);
    // Unmapping frees tables back to the quota.
    assert_eq!(unmap(&mut f, C, c, 0, 1 << 30), PG);
    map(&mut f, C, c, i << 30, 0x8000_0000, PG, RW);
    // The global pool runs out: OutOfTableMemory, nothing changed.
    let a = create(&mut f, A);
    let before = observe(&mut f, &[(A, a)], &[], &probes);
    f.server().alloc_mut().fail_in(0);
    f.server().alloc_mut().fail_after = true;
    assert_eq!(
        err(&mut f, A, &map_req(a, 5 << 30, 0x1000_0000, PG, RW)),
        Error::OutOfTableMemory
    );
    assert_eq!(
        err(&mut f, A, &Request::CreateDomain),
        Error::OutOfTableMemory
    );
    f.server().alloc_mut().no_failures();
    f.server().alloc_mut().fail_after = false;
    assert_eq!(observe(&mut f, &[(A, a)], &[], &probes), before);
}

/// Fails every frame allocation in turn for Map, MapSg and Unmap (a split) and CreateDomain:
/// each failing attempt changes nothing (Query and DMA view, usage, pool).
pub fn fail_nth_allocation<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, 0x4000_0000, 0x1000_0000, 2 * MB2, RW);
    let probes: Vec<u64> = [
        0x4000_0000u64,
        0x4020_0000,
        0x4020_1000,
        0x1_0000_0000,
        0x1_0020_0000,
        0x80_0000_0000,
    ]
    .into_iter()
    .chain((0..8).map(|i| 0x200_0000_0000 + i * PG))
    .collect();
    let seg = |phys, len| Segment { phys, len };
    let requests = [
        map_req(d, 0x80_0000_0000, 0x1000_0000, PG, RW),
        Request::MapSg {
            domain: d,
            iova: 0x1_0000_0000,
            perms: RW,
            segments: [
                seg(0x1000_0000, MB2),
                seg(0x1100_0000, PG),
                seg(0x1120_0000, MB2),
            ]
            .into_iter()
            .collect(),
        },
        // Unmap one page out of a 2 MiB leaf: the split needs a table.
        Request::Unmap {
            domain: d,
            iova: 0x4020_1000,
            len: PG,
        },
        Request::MapSg {
            domain: d,
            iova: 0x200_0000_0000,
            perms: R,
            segments: [seg(0x1000_0000, PG), seg(0x1800_0000, 7 * PG)]
                .into_iter()
                .collect(),
        },
        Request::CreateDomain,
    ];
    let split = f.server_ref().table_config().split_live_blocks;
    for (i, req) in requests.iter().enumerate() {
        if i == 2 && !split {
            // Units that cannot replace a live block (e.g. SMMUv3 without BBML2): the split
            // is refused before any allocation, and nothing changes.
            let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
            assert_eq!(err(&mut f, A, req), Error::Unsupported);
            assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &probes), before);
            continue;
        }
        let mut n = 0;
        loop {
            let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
            f.server().alloc_mut().fail_in(n);
            let r = call(&mut f, A, req);
            f.server().alloc_mut().no_failures();
            match r {
                Reply::Error(e) => {
                    assert_eq!(e, Error::OutOfTableMemory, "{req:?} failing allocation {n}");
                    assert_eq!(
                        observe(&mut f, &[(A, d)], &[(A, 0)], &probes),
                        before,
                        "{req:?} failing allocation {n} changed something"
                    );
                }
                _ => break,
            }
            n += 1;
            assert!(n < 64);
        }
    }
    if split {
        assert_eq!(query(&mut f, A, d, 0x4020_1000), None);
        assert_eq!(dma(&mut f, A, 0, 0x4020_1000, false), Err(Faulted));
    } else {
        assert_eq!(query(&mut f, A, d, 0x4020_1000), Some((0x1020_1000, RW)));
        assert_eq!(dma(&mut f, A, 0, 0x4020_1000, false), Ok(0x1020_1000));
    }
    assert_eq!(query(&mut f, A, d, 0x4020_2000), Some((0x1020_2000, RW)));
    assert_eq!(dma(&mut f, A, 0, 0x4020_0000, false), Ok(0x1020_0000));
}

fn is_hw(e: Error) -> bool {
    matches!(e, Error::HardwareTimeout | Error::HardwareError)
}

fn detach_req(device: u32) -> Request {
    Request::Detach {
        device: DeviceHandle(device),
    }
}

fn attach_req(domain: DomainHandle, device: u32) -> Request {
    Request::Attach {
        domain,
        device: DeviceHandle(device),
    }
}

/// A failed invalidation (issue 10): a lost one, then a hung unit, then a hung unit at client
/// exit. The devices are blocked (or kept known as live), the failed units are retried (and
/// counted) before the domain's next request, nothing changes while the unit does not
/// answer, and everything recovers once it does.
pub fn invalidation_failure<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let start = f.server_ref().alloc().in_use;
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, 0, 0x1000_0000, 4 * PG, RW);
    assert!(dma(&mut f, A, 0, PG, true).is_ok());
    // 1. The unmap's invalidation is lost for good: an error, and the device is blocked.
    if !f.inject(0, UnitFault::Lose { after: 0 }) {
        return;
    }
    let e = err(
        &mut f,
        A,
        &Request::Unmap {
            domain: d,
            iova: 0,
            len: 2 * PG,
        },
    );
    assert!(is_hw(e), "{e:?}");
    assert_eq!(dma(&mut f, A, 0, PG, true), Err(Faulted));
    assert_eq!(dma(&mut f, A, 0, 3 * PG, true), Err(Faulted));
    // The next request on the domain retries the failed unit first (and counts it).
    let inv = f.server_ref().stats().invalidations;
    map(&mut f, A, d, 0x10_0000, 0x1000_0000, PG, RW);
    assert!(f.server_ref().stats().invalidations > inv, "retry counted");
    // The unmap stayed done; re-attached, the rest of the mapping is intact.
    attach(&mut f, A, d, 0);
    assert_eq!(query(&mut f, A, d, 0), None);
    assert_eq!(dma(&mut f, A, 0, 0, false), Err(Faulted));
    assert_eq!(dma(&mut f, A, 0, PG, true), Err(Faulted));
    assert_eq!(dma(&mut f, A, 0, 3 * PG, true), Ok(0x1000_3000));
    // 2. A hung unit: the unmap fails, the device cannot be blocked (it stays known as live),
    // and the domain's requests fail without changing anything while the unit does not answer.
    f.inject(0, UnitFault::Hang);
    let e = err(
        &mut f,
        A,
        &Request::Unmap {
            domain: d,
            iova: 3 * PG,
            len: PG,
        },
    );
    assert!(is_hw(e), "{e:?}");
    let e = err(&mut f, A, &map_req(d, 0x20_0000, 0x1000_0000, PG, RW));
    assert!(is_hw(e), "{e:?}");
    assert_eq!(query(&mut f, A, d, 0x20_0000), None);
    // Detach cannot answer Done for a device it cannot prove blocked.
    let e = err(&mut f, A, &detach_req(0));
    assert!(is_hw(e), "{e:?}");
    let e = err(&mut f, A, &Request::DestroyDomain { domain: d });
    assert!(is_hw(e), "{e:?}");
    assert_eq!(query(&mut f, A, d, 0x10_0000), Some((0x1000_0000, RW)));
    f.heal();
    done(&mut f, A, &detach_req(0));
    assert_eq!(dma(&mut f, A, 0, 3 * PG, false), Err(Faulted));
    // 3. A hung unit at client exit (device attached): the domain is quarantined and the
    // quota restored; the device stays known, so the next incarnation's Detach retries the
    // block, and the domain is reclaimed once the device is proven blocked.
    attach(&mut f, A, d, 0);
    f.inject(0, UnitFault::Hang);
    f.server().client_exited(A);
    f.heal();
    // The quarantined domain stays charged to A (so that B's promises hold), nothing else.
    let (domains, frames) = f.server_ref().usage(A).expect("A");
    assert_eq!(domains, 1);
    assert!(frames >= 1);
    assert_eq!(f.server_ref().stats().quarantined_domains, 1);
    assert_eq!(f.server_ref().stats().reclaimed_domains, 0);
    done(&mut f, A, &detach_req(0));
    assert_eq!(f.server_ref().stats().reclaimed_domains, 1);
    assert_eq!(f.server_ref().usage(A), Some((0, 0)));
    assert_eq!(dma(&mut f, A, 0, 3 * PG, false), Err(Faulted));
    assert_eq!(f.server_ref().alloc().in_use, start, "every frame back");
}

/// Issue 10, case 1: a failed attach never leaves the device live and forgotten. With the
/// entry written and its invalidation lost, the attach is an error and the device is blocked
/// again at once. With the unit hung, the device cannot be proven blocked: Detach and
/// DestroyDomain answer errors (never Done), the domain's slot and tag stay reserved, and the
/// device never reaches another client's memory; once the unit answers, both succeed and the
/// next client's domain on the same tag is out of the old device's reach.
pub fn failed_attach_never_leaves_device_live<F: Fixture>() {
    for cnp in [0, 0b11] {
        failed_attach_case::<F>(cnp);
    }
}

/// [`failed_attach_never_leaves_device_live`] with units caching not-present entries per
/// `cnp` (where attach must invalidate, so it can fail after writing the entry).
fn failed_attach_case<F: Fixture>(cnp: u64) {
    let setup = Setup {
        caches_not_present: cnp,
        ..Setup::default()
    };
    let mut f = F::build(&setup, Recorder::default());
    let start = f.server_ref().alloc().in_use;
    let d = create(&mut f, A);
    map(&mut f, A, d, 0, 0x1000_0000, PG, RW);
    if !f.inject(0, UnitFault::Lose { after: 0 }) {
        return;
    }
    // A unit that needs no completion to attach (VT-d without caching mode: a not-present
    // entry is never cached) answers Done truthfully; otherwise the error means blocked.
    match call(&mut f, A, &attach_req(d, 0)) {
        Reply::Done => assert_eq!(dma(&mut f, A, 0, 0, false), Ok(0x1000_0000)),
        Reply::Error(e) => {
            assert!(is_hw(e), "{e:?}");
            assert_eq!(dma(&mut f, A, 0, 0, false), Err(Faulted), "blocked again");
        }
        r => panic!("{r:?}"),
    }
    f.heal();
    done(&mut f, A, &detach_req(0));
    assert_eq!(dma(&mut f, A, 0, 0, false), Err(Faulted));
    // The unit does the attach but never says so: the device is live when the error comes,
    // so the server blocks it again before answering.
    f.inject(0, UnitFault::LoseCompletion { after: 0 });
    match call(&mut f, A, &attach_req(d, 0)) {
        Reply::Done => assert_eq!(dma(&mut f, A, 0, 0, false), Ok(0x1000_0000)),
        Reply::Error(e) => {
            assert!(is_hw(e), "{e:?}");
            assert_eq!(dma(&mut f, A, 0, 0, false), Err(Faulted), "blocked again");
        }
        r => panic!("{r:?}"),
    }
    f.heal();
    done(&mut f, A, &detach_req(0));
    assert_eq!(dma(&mut f, A, 0, 0, false), Err(Faulted));
    // Hung during the attach: whether or not it answered Done, the device cannot be blocked
    // while the unit hangs.
    f.inject(0, UnitFault::Hang);
    match call(&mut f, A, &attach_req(d, 0)) {
        Reply::Done => {}
        Reply::Error(e) => assert!(is_hw(e), "{e:?}"),
        r => panic!("{r:?}"),
    }
    let e = err(&mut f, A, &detach_req(0));
    assert!(is_hw(e), "Detach of an unproven device: {e:?}");
    let e = err(&mut f, A, &Request::DestroyDomain { domain: d });
    assert!(is_hw(e), "DestroyDomain with an unproven device: {e:?}");
    assert_eq!(query(&mut f, A, d, 0), Some((0x1000_0000, RW)), "kept");
    // B's domain (no hardware touched) cannot take d's slot; A's device never reaches B.
    let b = create(&mut f, B);
    map(&mut f, B, b, 0, 0x4000_0000, PG, RW);
    let r = dma(&mut f, A, 0, 0, true);
    assert!(r == Ok(0x1000_0000) || r == Err(Faulted), "{r:?}");
    f.heal();
    done(&mut f, A, &detach_req(0));
    assert_eq!(dma(&mut f, A, 0, 0, true), Err(Faulted));
    done(&mut f, A, &Request::DestroyDomain { domain: d });
    // B's domains now reuse the freed slot and tag; A's device reaches none of it.
    let b2 = create(&mut f, B);
    map(&mut f, B, b2, 0, 0x4000_1000, PG, RW);
    attach(&mut f, B, b2, 0);
    assert_eq!(dma(&mut f, B, 0, 0, true), Ok(0x4000_1000));
    assert_eq!(dma(&mut f, A, 0, 0, true), Err(Faulted));
    f.server().client_exited(A);
    f.server().client_exited(B);
    assert_eq!(f.server_ref().alloc().in_use, start, "every frame back");
}

/// Issue 10, case 2: a retried Detach answers Done only once the device is really blocked.
/// The first Detach clears the entry and its invalidation is lost (an error); the retry finds
/// the entry already clear and must still invalidate what the unit cached.
pub fn retried_detach_blocks<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, 0, 0x1000_0000, PG, RW);
    assert_eq!(dma(&mut f, A, 0, 0, true), Ok(0x1000_0000));
    if !f.inject(0, UnitFault::Lose { after: 0 }) {
        return;
    }
    let e = err(&mut f, A, &detach_req(0));
    assert!(is_hw(e), "{e:?}");
    done(&mut f, A, &detach_req(0));
    assert_eq!(
        dma(&mut f, A, 0, 0, true),
        Err(Faulted),
        "Done means blocked"
    );
    // Now the domain can go, and its tag serves B without A's translations behind it.
    done(&mut f, A, &Request::DestroyDomain { domain: d });
    let b = create(&mut f, B);
    attach(&mut f, B, b, 0);
    assert_eq!(
        dma(&mut f, B, 0, 0, true),
        Err(Faulted),
        "B never sees A's page"
    );
}

/// Issue 10: a Detach whose block completed but whose domain-wide invalidation was lost is
/// Done (the device is blocked), and the unit is retried before the domain's tag can serve
/// anyone else: DestroyDomain invalidates it first (counted), and B's domain on the same tag
/// never reaches A's memory through a stale entry. Also: a DestroyDomain that fails part-way
/// is retried to completion.
pub fn stale_tags_are_never_reused<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let x = 0x30_0000;
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, x, 0x1000_0000, PG, RW);
    assert_eq!(dma(&mut f, A, 0, x, true), Ok(0x1000_0000));
    // The block passes, the invalidation of the domain's tag after it is lost.
    if !f.inject(0, UnitFault::Lose { after: 1 }) {
        return;
    }
    done(&mut f, A, &detach_req(0));
    assert_eq!(dma(&mut f, A, 0, x, true), Err(Faulted));
    let inv = f.server_ref().stats().invalidations;
    done(&mut f, A, &Request::DestroyDomain { domain: d });
    assert!(
        f.server_ref().stats().invalidations > inv,
        "the stale unit is invalidated before the domain goes"
    );
    let b = create(&mut f, B);
    attach(&mut f, B, b, 0);
    assert_eq!(
        dma(&mut f, B, 0, x, true),
        Err(Faulted),
        "no stale entry of A's"
    );
    // A DestroyDomain whose invalidation fails: an error, the domain stays; the retry ends it.
    let d2 = create(&mut f, A);
    attach(&mut f, A, d2, 0);
    map(&mut f, A, d2, x, 0x1000_1000, PG, RW);
    assert_eq!(dma(&mut f, A, 0, x, true), Ok(0x1000_1000));
    f.inject(0, UnitFault::Lose { after: 1 });
    done(&mut f, A, &detach_req(0));
    f.inject(0, UnitFault::Hang);
    let e = err(&mut f, A, &Request::DestroyDomain { domain: d2 });
    assert!(is_hw(e), "{e:?}");
    assert_eq!(query(&mut f, A, d2, x), Some((0x1000_1000, RW)));
    f.heal();
    done(&mut f, A, &Request::DestroyDomain { domain: d2 });
    done(&mut f, B, &detach_req(0));
    done(&mut f, B, &Request::DestroyDomain { domain: b });
    let b2 = create(&mut f, B);
    attach(&mut f, B, b2, 0);
    assert_eq!(dma(&mut f, B, 0, x, true), Err(Faulted));
}

/// Two devices of one domain on one unit: detaching one keeps the unit invalidated for the
/// other (an unmap after the detach must still reach the unit).
pub fn detach_one_of_two_on_a_unit<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    attach(&mut f, A, d, 1);
    map(&mut f, A, d, 0, 0x1000_0000, 2 * PG, RW);
    assert_eq!(dma(&mut f, A, 1, PG, true), Ok(0x1000_1000));
    done(&mut f, A, &detach_req(0));
    assert_eq!(dma(&mut f, A, 1, PG, true), Ok(0x1000_1000));
    assert_eq!(unmap(&mut f, A, d, PG, PG), PG);
    assert_eq!(
        dma(&mut f, A, 1, PG, true),
        Err(Faulted),
        "stale after unmap"
    );
}

/// A unit that rejects a command (queue error): the request fails with `HardwareError`, the
/// unit's queue is recovered, and the next requests work.
pub fn queue_errors_are_reported_and_recovered<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, 0, 0x1000_0000, 2 * PG, RW);
    assert_eq!(dma(&mut f, A, 0, PG, true), Ok(0x1000_1000));
    if !f.inject(0, UnitFault::QueueError { after: 0 }) {
        return;
    }
    let e = err(
        &mut f,
        A,
        &Request::Unmap {
            domain: d,
            iova: PG,
            len: PG,
        },
    );
    assert_eq!(e, Error::HardwareError);
    assert_eq!(dma(&mut f, A, 0, PG, true), Err(Faulted));
    // Recovered: the next request retries and works; re-attached, the rest is there.
    attach(&mut f, A, d, 0);
    assert_eq!(dma(&mut f, A, 0, 0, true), Ok(0x1000_0000));
    assert_eq!(dma(&mut f, A, 0, PG, true), Err(Faulted));
    assert_eq!(unmap(&mut f, A, d, 0, PG), PG);
    assert_eq!(dma(&mut f, A, 0, 0, true), Err(Faulted));
}

/// The engine's reserve (empty tables kept linked after a partial unmap) is a cache, never a
/// cost to the client: at its frame quota, a client whose only held frames are reserved
/// tables can still map elsewhere (the server gives the reserve back and retries), and the
/// page it unmapped stays unreachable.
pub fn reserve_never_costs_quota<F: Fixture>() {
    let (mut f, _) = fresh::<F>();
    let c = create(&mut f, C);
    attach(&mut f, C, c, 0);
    // Fill C's quota with 4 KiB pages in separate 1 GiB regions (a path of tables each).
    let mut i = 0u64;
    loop {
        match call(
            &mut f,
            C,
            &map_req(c, i << 30, 0x8000_0000 + i * PG, PG, RW),
        ) {
            Reply::Done => i += 1,
            Reply::Error(Error::QuotaExceeded) => break,
            r => panic!("{r:?}"),
        }
        assert!(i < 16);
    }
    assert!(i >= 1, "C's quota must hold a path");
    // Unmap one page only (a partial unmap of its tables' spans: they stay in reserve).
    assert_eq!(unmap(&mut f, C, c, 0, PG), PG);
    assert_eq!(dma(&mut f, C, 0, 0, true), Err(Faulted));
    // A new path fits again: the reserve is given back on demand.
    map(&mut f, C, c, i << 30, 0x8000_0000, PG, RW);
    assert_eq!(dma(&mut f, C, 0, i << 30, true), Ok(0x8000_0000));
    assert_eq!(dma(&mut f, C, 0, 0, true), Err(Faulted));
    for j in 1..i {
        assert_eq!(dma(&mut f, C, 0, j << 30, true), Ok(0x8000_0000 + j * PG));
    }
    assert!(f.server_ref().usage(C).unwrap().1 <= u64::from(C_MAX_FRAMES));
    // `trim` gives back what is still reserved, and nothing a mapping needs.
    assert_eq!(unmap(&mut f, C, c, i << 30, PG), PG);
    let held = f.server_ref().usage(C).unwrap().1;
    assert!(f.server().trim(C));
    assert!(f.server_ref().usage(C).unwrap().1 < held);
    assert!(!f.server().trim(C));
    assert_eq!(dma(&mut f, C, 0, i << 30, true), Err(Faulted));
    for j in 1..i {
        assert_eq!(dma(&mut f, C, 0, j << 30, true), Ok(0x8000_0000 + j * PG));
    }
}

/// Random bytes never panic, always get a decodable reply, and never change state.
pub fn random_bytes<F: Fixture>(seed: u64, count: usize) {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let inputs: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Mostly valid tags, so the decoder's field checks are exercised too.
            if let Some(b) = bytes.first_mut() {
                *b %= 16;
            }
            bytes
        })
        .collect();
    garbage::<F>(&inputs);
}

/// Sends each input as a request of client A: never a panic, always a decodable reply, and
/// any request that happens to decode and succeed is undone, so the state afterwards equals
/// the state before (DMA and Query views, quotas, pool).
pub fn garbage<F: Fixture>(inputs: &[Vec<u8>]) {
    let (mut f, _) = fresh::<F>();
    let d = create(&mut f, A);
    attach(&mut f, A, d, 0);
    map(&mut f, A, d, 0, 0x1000_0000, PG, RW);
    let probes = [0, PG];
    let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
    let mut rep = [0u8; MAX_MESSAGE];
    for bytes in inputs {
        let n = f.server().handle(A, bytes, &mut rep);
        let reply = decode_reply(&rep[..n]).expect("valid reply");
        let decoded = iommu_protocol::decode_request(bytes);
        if decoded.is_err() {
            assert_eq!(reply, Reply::Error(Error::BadMessage));
            continue;
        }
        if matches!(reply, Reply::Error(_)) {
            continue;
        }
        match decoded.unwrap() {
            Request::Info | Request::Hello { .. } | Request::Faults | Request::Query { .. } => {}
            Request::Detach { .. } => attach(&mut f, A, d, 0),
            other => undo(&mut f, d, &other, &reply),
        }
    }
    // Undone maps may leave empty tables in the engine's reserve (frames held, nothing
    // mapped): give them back, so what remains is exactly what the mappings need.
    f.server().trim(A);
    assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &probes), before);
}

/// The server's map/unmap fast path (`handle` on the bytes of a `Map` or `Unmap`) answers
/// exactly as the general path (`handle_request` on the decoded request) does: two servers
/// built alike, each given `requests` (client, bytes) one way, end with the same replies,
/// the same counters and the same usage after every request. Bytes that do not decode go
/// to both as what the general path would make of them (`BadMessage` from `handle`).
pub fn hot_path_agrees<F: Fixture>(requests: &[(ClientId, Vec<u8>)]) {
    let (mut fast, _) = fresh::<F>();
    let (mut typed, _) = fresh::<F>();
    for f in [&mut fast, &mut typed] {
        let d = create(f, A);
        attach(f, A, d, 0);
        map(f, A, d, 0, 0x1000_0000, PG, RW);
        create(f, B);
    }
    let mut rep = [0u8; MAX_MESSAGE];
    for (client, bytes) in requests {
        let n = fast.server().handle(*client, bytes, &mut rep);
        let got = decode_reply(&rep[..n]).expect("valid reply");
        let want = match iommu_protocol::decode_request(bytes) {
            Ok(req) => typed.server().handle_request(*client, req),
            Err(_) => {
                let n = typed.server().handle(*client, bytes, &mut rep);
                decode_reply(&rep[..n]).expect("valid reply")
            }
        };
        assert_eq!(got, want, "{client:?} {bytes:02x?}");
        assert_eq!(fast.server_ref().stats(), typed.server_ref().stats());
        for c in [A, B] {
            assert_eq!(fast.server_ref().usage(c), typed.server_ref().usage(c));
        }
    }
}

fn undo<F: Fixture>(f: &mut F, d: DomainHandle, req: &Request, reply: &Reply) {
    match (req, reply) {
        (Request::CreateDomain, Reply::DomainCreated { domain }) => {
            done(f, A, &Request::DestroyDomain { domain: *domain })
        }
        (
            Request::Map {
                domain, iova, len, ..
            },
            _,
        ) => {
            unmap(f, A, *domain, *iova, *len);
        }
        (
            Request::MapSg {
                domain,
                iova,
                segments,
                ..
            },
            _,
        ) => {
            let len: u64 = segments.iter().map(|s| s.len).sum();
            unmap(f, A, *domain, *iova, len);
        }
        (Request::MapAnywhere { domain, len, .. }, Reply::Mapped { iova }) => {
            unmap(f, A, *domain, *iova, *len);
        }
        (Request::Unmap { .. }, _) => {
            // Only the page at 0 of `d` is mapped: restore it.
            let _ = call(f, A, &map_req(d, 0, 0x1000_0000, PG, RW));
        }
        (Request::Attach { device, .. }, _) => {
            done(f, A, &Request::Detach { device: *device });
            if device.0 == 0 {
                attach(f, A, d, 0);
            }
        }
        (Request::DestroyDomain { .. }, _) => {}
        (r, rep) => panic!("unexpected success {r:?} -> {rep:?}"),
    }
}

// ---- randomized request streams against a model -------------------------------------------

/// A read-write `MapSg` of `domain` at IOVA page `iova`, of the segments `(first physical page
/// after base, pages)`.
fn map_sg_pages(domain: DomainHandle, iova: u64, segs: &[(u64, u64)], base: u64) -> Request {
    Request::MapSg {
        domain,
        iova: iova * PG,
        perms: RW,
        segments: segs
            .iter()
            .map(|&(p, n)| Segment {
                phys: base + p * PG,
                len: n * PG,
            })
            .collect(),
    }
}

/// One step of a random stream.
#[derive(Clone, Debug)]
pub enum Op {
    /// CreateDomain.
    Create,
    /// DestroyDomain of the client's `n`th domain (or a bogus handle).
    Destroy(usize),
    /// Attach device `dev` to the `n`th domain.
    Attach(usize, u32),
    /// Detach device.
    Detach(u32),
    /// Map `pages` at page `iova` from page `phys` of the client's first region (or elsewhere
    /// when `foreign`).
    Map {
        /// Domain index.
        dom: usize,
        /// IOVA page number.
        iova: u64,
        /// Physical page offset into the region.
        phys: u64,
        /// Pages.
        pages: u64,
        /// Read-only.
        ro: bool,
        /// Use another client's memory (must fail).
        foreign: bool,
    },
    /// MapSg of two segments.
    MapSg {
        /// Domain index.
        dom: usize,
        /// IOVA page number.
        iova: u64,
        /// Segments as (phys page offset, pages).
        segs: [(u64, u64); 2],
    },
    /// Unmap `pages` at page `iova`.
    Unmap {
        /// Domain index.
        dom: usize,
        /// IOVA page number.
        iova: u64,
        /// Pages.
        pages: u64,
    },
    /// Client exit.
    Exit,
}

/// The model of one client: domains (handle -> page map) and attachments.
#[derive(Clone, Debug, Default)]
pub struct ClientModel {
    /// Live domains in creation order: handle and page -> (phys page, writable).
    pub domains: Vec<(DomainHandle, PageMap)>,
    /// Device handle -> domain handle.
    pub attached: BTreeMap<u32, DomainHandle>,
    /// Per domain, the 2 MiB leaves the engine built (first IOVA page of each): where the
    /// units forbid splitting a live block, an unmap cutting one is `Unsupported`.
    pub blocks: BTreeMap<DomainHandle, BTreeSet<u64>>,
}

/// 4 KiB pages per 2 MiB leaf.
const BLOCK_PAGES: u64 = 512;

/// Records the 2 MiB leaves a map of `pages` pages at IOVA page `iova` from physical page
/// `phys` builds: every 2 MiB-aligned IOVA chunk the range covers whole whose physical page
/// is 2 MiB aligned too (the engine takes the largest leaf alignment and length allow).
fn note_blocks(blocks: &mut BTreeSet<u64>, iova: u64, phys: u64, pages: u64) {
    let first = iova.next_multiple_of(BLOCK_PAGES);
    let mut c = first;
    while c + BLOCK_PAGES <= iova + pages {
        if (phys + (c - iova)) % BLOCK_PAGES == 0 {
            blocks.insert(c);
        }
        c += BLOCK_PAGES;
    }
}

const CLIENT_SET: [(ClientId, u64, u32, usize); 2] = [
    (A, 0x1000_0000, 3, A_MAX_DOMAINS as usize),
    (B, 0x4000_0000, 1, 2),
];

/// Runs `ops` (each tagged with a client index 0 = A, 1 = B) and checks after every step that
/// the DMA view of every device equals the model, and that failed requests changed nothing.
///
/// The stream is preceded by a prelude that gives each client two domains with devices
/// attached and 2 MiB-aligned mappings (large leaves where the units allow them), so random
/// operations mostly meet live state.
pub fn run_stream<F: Fixture>(ops: &[(usize, Op)]) {
    run_stream_with::<F>(&Setup::default(), ops)
}

/// [`run_stream`] on units built per `setup` (e.g. units that cache not-present entries, on
/// which every map must be invalidated too).
pub fn run_stream_with<F: Fixture>(setup: &Setup, ops: &[(usize, Op)]) {
    let mut f = F::build(setup, Recorder::default());
    let tc = f.server_ref().table_config();
    // Where 2 MiB leaves exist and may not be split, the model tracks them.
    let no_split = !tc.split_live_blocks && tc.leaf_sizes.contains(MB2);
    let mut model = [ClientModel::default(), ClientModel::default()];
    let window = 1024u64; // IOVA pages used: [0, 4 MiB)
    let prelude = [
        (0, Op::Create),
        (0, Op::Create),
        (0, Op::Attach(0, 0)),
        (0, Op::Attach(1, 1)),
        (0, Op::Attach(1, 2)),
        (1, Op::Create),
        (1, Op::Create),
        (1, Op::Attach(1, 0)),
        // 2 MiB leaves where the units allow them, for unmaps to cut.
        (
            0,
            Op::Map {
                dom: 0,
                iova: 512,
                phys: 512,
                pages: 512,
                ro: false,
                foreign: false,
            },
        ),
        (
            1,
            Op::Map {
                dom: 1,
                iova: 0,
                phys: 0,
                pages: 1024,
                ro: false,
                foreign: false,
            },
        ),
    ];
    for (ci, op) in prelude.iter().chain(ops) {
        let (client, base, ndev, maxd) = CLIENT_SET[*ci];
        let m = &mut model[*ci];
        let handle = |m: &ClientModel, n: usize| {
            m.domains
                .get(n)
                .map(|(h, _)| *h)
                .unwrap_or(DomainHandle(0xdead_0000 + n as u32))
        };
        match op {
            Op::Create => {
                let r = call(&mut f, client, &Request::CreateDomain);
                match r {
                    Reply::DomainCreated { domain } => {
                        assert!(m.domains.len() < maxd);
                        m.domains.push((domain, BTreeMap::new()));
                    }
                    Reply::Error(Error::QuotaExceeded) => assert_eq!(m.domains.len(), maxd),
                    r => panic!("{r:?}"),
                }
            }
            Op::Destroy(n) => {
                let h = handle(m, *n);
                let r = call(&mut f, client, &Request::DestroyDomain { domain: h });
                let busy = m.attached.values().any(|x| *x == h);
                match r {
                    Reply::Done => {
                        assert!(!busy);
                        m.domains.remove(*n);
                        m.blocks.remove(&h);
                    }
                    Reply::Error(Error::DomainBusy) => assert!(busy),
                    Reply::Error(Error::NoSuchDomain) => assert!(*n >= m.domains.len()),
                    r => panic!("{r:?}"),
                }
            }
            Op::Attach(n, dev) => {
                let h = handle(m, *n);
                let r = call(
                    &mut f,
                    client,
                    &Request::Attach {
                        domain: h,
                        device: DeviceHandle(*dev),
                    },
                );
                let want = if *n >= m.domains.len() {
                    Err(Error::NoSuchDomain)
                } else if *dev >= ndev {
                    Err(Error::NoSuchDevice)
                } else {
                    match m.attached.get(dev) {
                        Some(x) if *x != h => Err(Error::DeviceBusy),
                        _ => Ok(()),
                    }
                };
                match (r, want) {
                    (Reply::Done, Ok(())) => {
                        m.attached.insert(*dev, h);
                    }
                    (Reply::Error(e), Err(w)) => assert_eq!(e, w),
                    (r, w) => panic!("{op:?}: {r:?} want {w:?}"),
                }
            }
            Op::Detach(dev) => {
                let r = call(
                    &mut f,
                    client,
                    &Request::Detach {
                        device: DeviceHandle(*dev),
                    },
                );
                if *dev < ndev {
                    assert_eq!(r, Reply::Done);
                    m.attached.remove(dev);
                } else {
                    assert_eq!(r, Reply::Error(Error::NoSuchDevice));
                }
            }
            Op::Map {
                dom,
                iova,
                phys,
                pages,
                ro,
                foreign,
            } => {
                let h = handle(m, *dom);
                let pbase = if *foreign { 0x7000_0000 } else { base };
                let perms = if *ro { R } else { RW };
                let req = map_req(h, iova * PG, pbase + phys * PG, pages * PG, perms);
                let r = call(&mut f, client, &req);
                let want = if *dom >= m.domains.len() {
                    Err(Error::NoSuchDomain)
                } else if *pages == 0 {
                    Err(Error::InvalidArgument)
                } else if *foreign {
                    Err(Error::NotPermitted)
                } else if (*iova..iova + pages).any(|p| m.domains[*dom].1.contains_key(&p)) {
                    Err(Error::Overlap)
                } else {
                    Ok(())
                };
                match (r, want) {
                    (Reply::Done, Ok(())) => {
                        for i in 0..*pages {
                            m.domains[*dom]
                                .1
                                .insert(iova + i, ((base >> 12) + phys + i, !ro));
                        }
                        let blocks = m.blocks.entry(h).or_default();
                        note_blocks(blocks, *iova, (base >> 12) + phys, *pages);
                    }
                    (Reply::Error(e), Err(w)) => assert_eq!(e, w, "{op:?}"),
                    (r, w) => panic!("{op:?}: {r:?} want {w:?}"),
                }
            }
            Op::MapSg { dom, iova, segs } => {
                let h = handle(m, *dom);
                let r = call(&mut f, client, &map_sg_pages(h, *iova, segs, base));
                let total: u64 = segs.iter().map(|s| s.1).sum();
                let want = if *dom >= m.domains.len() {
                    Err(Error::NoSuchDomain)
                } else if segs.iter().any(|s| s.1 == 0) {
                    Err(Error::InvalidArgument)
                } else if (*iova..iova + total).any(|p| m.domains[*dom].1.contains_key(&p)) {
                    Err(Error::Overlap)
                } else {
                    Ok(())
                };
                match (r, want) {
                    (Reply::Done, Ok(())) => {
                        let mut at = *iova;
                        for &(p, n) in segs {
                            for i in 0..n {
                                m.domains[*dom]
                                    .1
                                    .insert(at + i, ((base >> 12) + p + i, true));
                            }
                            let blocks = m.blocks.entry(h).or_default();
                            note_blocks(blocks, at, (base >> 12) + p, n);
                            at += n;
                        }
                    }
                    (Reply::Error(e), Err(w)) => assert_eq!(e, w, "{op:?}"),
                    (r, w) => panic!("{op:?}: {r:?} want {w:?}"),
                }
            }
            Op::Unmap { dom, iova, pages } => {
                let h = handle(m, *dom);
                let r = call(
                    &mut f,
                    client,
                    &Request::Unmap {
                        domain: h,
                        iova: iova * PG,
                        len: pages * PG,
                    },
                );
                if *dom >= m.domains.len() {
                    assert_eq!(r, Reply::Error(Error::NoSuchDomain));
                } else if *pages == 0 {
                    assert_eq!(r, Reply::Error(Error::InvalidArgument));
                } else if let Some(c) = m.blocks.get(&h).and_then(|b| {
                    b.iter().copied().find(|&c| {
                        let overlaps = c < iova + pages && *iova < c + BLOCK_PAGES;
                        let whole = *iova <= c && c + BLOCK_PAGES <= iova + pages;
                        overlaps && !whole
                    })
                }) && no_split
                {
                    // It would split the 2 MiB leaf at page `c`: refused, nothing changed
                    // (the DMA view is checked below).
                    assert_eq!(r, Reply::Error(Error::Unsupported), "{op:?} cuts {c}");
                } else {
                    let blocks = m.blocks.entry(h).or_default();
                    // Cut (split) or removed, no longer 2 MiB leaves.
                    blocks.retain(|&c| c + BLOCK_PAGES <= *iova || iova + pages <= c);
                    let map = &mut m.domains[*dom].1;
                    let gone: Vec<u64> = map.range(*iova..iova + pages).map(|(k, _)| *k).collect();
                    for k in &gone {
                        map.remove(k);
                    }
                    assert_eq!(
                        r,
                        Reply::Unmapped {
                            bytes: gone.len() as u64 * PG
                        }
                    );
                }
            }
            Op::Exit => {
                f.server().client_exited(client);
                *m = ClientModel::default();
            }
        }
        // The DMA view of every device of both clients equals the model.
        for (ci, (client, _, ndev, _)) in CLIENT_SET.iter().enumerate() {
            for dev in 0..*ndev {
                let dom = model[ci].attached.get(&dev).map(|h| {
                    &model[ci]
                        .domains
                        .iter()
                        .find(|(x, _)| x == h)
                        .expect("attached to a live domain")
                        .1
                });
                for p in (0..window).step_by(61).chain([1, 2, 511, 512, 513]) {
                    let want = dom.and_then(|d| d.get(&p)).copied();
                    for write in [false, true] {
                        let got = dma(&mut f, *client, dev, p * PG, write);
                        let exp = match want {
                            Some((ph, w)) if !write || w => Ok(ph * PG),
                            _ => Err(Faulted),
                        };
                        assert_eq!(
                            got, exp,
                            "client {client:?} dev {dev} page {p} write {write}"
                        );
                    }
                }
            }
        }
        f.server().service_faults();
    }
}

/// Random stream steps for [`run_stream`], weighted towards maps and unmaps of a 4 MiB window
/// (with 2 MiB-aligned ranges now and then), with a few exits and invalid requests.
pub fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let dom = 0usize..3;
    let iova = prop_oneof![0u64..1024, Just(0u64), Just(512u64)];
    let phys = prop_oneof![0u64..2048, Just(0u64), Just(512u64)];
    let pages = prop_oneof![1u64..20, Just(512u64), Just(0u64), 1u64..1100];
    prop_oneof![
        4 => Just(Op::Create),
        2 => dom.clone().prop_map(Op::Destroy),
        4 => (dom.clone(), 0u32..4).prop_map(|(d, v)| Op::Attach(d, v)),
        2 => (0u32..4).prop_map(Op::Detach),
        12 => (dom.clone(), iova.clone(), phys.clone(), pages.clone(), any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(dom, iova, phys, pages, ro, foreign)| Op::Map { dom, iova, phys, pages, ro, foreign }),
        4 => (dom.clone(), iova.clone(), (phys.clone(), 0u64..40), (phys, 0u64..40))
            .prop_map(|(dom, iova, a, b)| Op::MapSg { dom, iova, segs: [a, b] }),
        10 => (dom, iova, pages).prop_map(|(dom, iova, pages)| Op::Unmap { dom, iova, pages }),
        1 => Just(Op::Exit),
    ]
}

// ---- randomized request streams with injected unit failures ---------------------------------

/// One step of a random stream with failures: a request of a client, or a unit failing or
/// recovering.
#[derive(Clone, Debug)]
pub enum FaultOp {
    /// A request step of [`run_stream`] by client `0` (A) or `1` (B).
    Req(usize, Op),
    /// Unit `0` or `1` starts failing this way.
    Inject(usize, UnitFault),
    /// Every unit works again.
    Heal,
}

/// Per device handle of one client: the domains (ids) it may reach, and the one it is surely
/// attached to.
type Reach = BTreeMap<u32, (BTreeSet<usize>, Option<usize>)>;

/// What may be true of one domain, as far as replies tell: pages surely mapped (a successful
/// map, not since unmapped) and pages maybe mapped (a failed request may have mapped them, or
/// failed to make the unit forget them); a successful Unmap removes pages from both.
#[derive(Clone, Debug, Default)]
struct MaybeDomain {
    /// IOVA page -> physical page; surely mapped.
    sure: BTreeMap<u64, u64>,
    /// IOVA page -> physical pages it may translate to.
    maybe: BTreeMap<u64, BTreeSet<u64>>,
}

impl MaybeDomain {
    fn may_reach(&self, page: u64, phys: u64) -> bool {
        self.sure.get(&page) == Some(&phys)
            || self.maybe.get(&page).is_some_and(|s| s.contains(&phys))
    }
    fn add_maybe(&mut self, page: u64, phys: u64) {
        self.maybe.entry(page).or_default().insert(phys);
    }
    /// A failed request over `[first, first + pages)`: whatever was there may still be.
    fn unsure(&mut self, first: u64, pages: u64) {
        let gone: Vec<(u64, u64)> = self
            .sure
            .range(first..first + pages)
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, v) in gone {
            self.sure.remove(&k);
            self.add_maybe(k, v);
        }
    }
}

/// Runs `ops` and checks after every step the isolation invariant of issue 10 through what the
/// hardware lets each device do (its own walks and stale caches), whatever failed:
///
/// - every DMA that succeeds lands in memory granted to the device's owner, at a physical page
///   that some domain the device may reach (attached, or left unsure by a failure) may map at
///   that IOVA: memory removed by a successful Unmap, and every other client's memory, is
///   unreachable;
/// - while no failure is armed, a device surely attached reaches every page surely mapped.
///
/// At the end the units are healed, the clients exit and recover, and every frame is back
/// (quarantined domains reclaimed).
pub fn run_fault_stream<F: Fixture>(ops: &[FaultOp]) {
    // Unit 0 caches not-present entries where the fixture can express it (attach and map
    // must then complete an invalidation, so they can fail too); unit 1 does not.
    let setup = Setup {
        caches_not_present: 0b01,
        ..Setup::default()
    };
    let mut f = F::build(&setup, Recorder::default());
    let start = f.server_ref().alloc().in_use;
    // Per client: live domains (handle -> what may be mapped), each device's possible
    // domains (ids into `doms`, which keeps dead domains' last state: a quarantined domain
    // may still be reached), and whether its attachment is sure.
    let mut doms: Vec<MaybeDomain> = Vec::new();
    let mut live: [Vec<(DomainHandle, usize)>; 2] = [Vec::new(), Vec::new()];
    let mut reach: [Reach; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut armed = false;
    let window = 512u64;
    let probe: Vec<u64> = (0..window).step_by(37).chain([1, 2, 511]).collect();
    // A prelude giving both clients live state for the failures to meet: two domains each,
    // devices attached, pages mapped (A's device 2 sits on unit 1).
    let map = |dom, iova, phys, pages| Op::Map {
        dom,
        iova,
        phys,
        pages,
        ro: false,
        foreign: false,
    };
    let prelude = [
        FaultOp::Req(0, Op::Create),
        FaultOp::Req(0, Op::Create),
        FaultOp::Req(0, Op::Attach(0, 0)),
        FaultOp::Req(0, Op::Attach(1, 1)),
        FaultOp::Req(0, Op::Attach(1, 2)),
        FaultOp::Req(0, map(0, 0, 0, 40)),
        FaultOp::Req(0, map(1, 1, 100, 300)),
        FaultOp::Req(1, Op::Create),
        FaultOp::Req(1, Op::Create),
        FaultOp::Req(1, Op::Attach(1, 0)),
        FaultOp::Req(1, map(1, 0, 0, 512)),
    ];
    for op in prelude.iter().chain(ops) {
        match op {
            FaultOp::Inject(u, fault) => {
                if !f.inject(*u, *fault) {
                    return;
                }
                armed = true;
            }
            FaultOp::Heal => {
                f.heal();
                armed = false;
            }
            FaultOp::Req(ci, op) => {
                let (client, base, ndev, _) = CLIENT_SET[*ci];
                let handle = |n: usize| live[*ci].get(n).copied();
                match op {
                    Op::Create => {
                        if let Reply::DomainCreated { domain } =
                            call(&mut f, client, &Request::CreateDomain)
                        {
                            doms.push(MaybeDomain::default());
                            live[*ci].push((domain, doms.len() - 1));
                        }
                    }
                    Op::Destroy(n) => {
                        let Some((h, id)) = handle(*n) else { continue };
                        if call(&mut f, client, &Request::DestroyDomain { domain: h })
                            == Reply::Done
                        {
                            live[*ci].retain(|x| x.0 != h);
                            for (set, sure) in reach[*ci].values_mut() {
                                assert!(!set.contains(&id) || *sure != Some(id));
                                set.remove(&id);
                            }
                        }
                    }
                    Op::Attach(n, dev) => {
                        let Some((h, id)) = handle(*n) else { continue };
                        if *dev >= ndev {
                            continue;
                        }
                        let r = call(&mut f, client, &attach_req(h, *dev));
                        let e = reach[*ci].entry(*dev).or_default();
                        match r {
                            Reply::Done => *e = ([id].into(), Some(id)),
                            Reply::Error(err) if is_hw(err) => {
                                e.0.insert(id);
                                e.1 = None;
                            }
                            _ => {}
                        }
                    }
                    Op::Detach(dev) => {
                        if *dev >= ndev {
                            continue;
                        }
                        let r = call(&mut f, client, &detach_req(*dev));
                        let e = reach[*ci].entry(*dev).or_default();
                        if r == Reply::Done {
                            *e = (BTreeSet::new(), None);
                        } else {
                            e.1 = None;
                        }
                    }
                    Op::Map {
                        dom,
                        iova,
                        phys,
                        pages,
                        ro,
                        ..
                    } => {
                        let Some((h, id)) = handle(*dom) else {
                            continue;
                        };
                        let (iova, pages) = (iova % window, (*pages).min(64));
                        let perms = if *ro { R } else { RW };
                        let r = call(
                            &mut f,
                            client,
                            &map_req(h, iova * PG, base + phys * PG, pages * PG, perms),
                        );
                        let first_phys = (base >> 12) + phys;
                        match r {
                            Reply::Done => {
                                for i in 0..pages {
                                    doms[id].sure.insert(iova + i, first_phys + i);
                                }
                            }
                            Reply::Error(err) if is_hw(err) => {
                                for i in 0..pages {
                                    doms[id].add_maybe(iova + i, first_phys + i);
                                }
                                blocked_by_failure(&mut reach[*ci], id);
                            }
                            _ => {}
                        }
                    }
                    Op::Unmap { dom, iova, pages } => {
                        let Some((h, id)) = handle(*dom) else {
                            continue;
                        };
                        let (iova, pages) = (iova % window, *pages);
                        let r = call(
                            &mut f,
                            client,
                            &Request::Unmap {
                                domain: h,
                                iova: iova * PG,
                                len: pages * PG,
                            },
                        );
                        match r {
                            Reply::Unmapped { .. } => {
                                let d = &mut doms[id];
                                let keys: Vec<u64> =
                                    d.sure.range(iova..iova + pages).map(|(k, _)| *k).collect();
                                for k in keys {
                                    d.sure.remove(&k);
                                }
                                let keys: Vec<u64> =
                                    d.maybe.range(iova..iova + pages).map(|(k, _)| *k).collect();
                                for k in keys {
                                    d.maybe.remove(&k);
                                }
                            }
                            Reply::Error(err) if is_hw(err) => {
                                doms[id].unsure(iova, pages);
                                blocked_by_failure(&mut reach[*ci], id);
                            }
                            _ => {}
                        }
                    }
                    Op::MapSg { dom, iova, segs } => {
                        let Some((h, id)) = handle(*dom) else {
                            continue;
                        };
                        let iova = iova % window;
                        let segs = segs.map(|(p, n)| (p, n.min(32)));
                        let r = call(&mut f, client, &map_sg_pages(h, iova, &segs, base));
                        // (IOVA page, physical page) of every page the request maps.
                        let mut pages = Vec::new();
                        let mut at = iova;
                        for (p, n) in segs {
                            pages.extend((0..n).map(|i| (at + i, (base >> 12) + p + i)));
                            at += n;
                        }
                        match r {
                            Reply::Done => {
                                for (v, ph) in pages {
                                    doms[id].sure.insert(v, ph);
                                }
                            }
                            Reply::Error(err) if is_hw(err) => {
                                for (v, ph) in pages {
                                    doms[id].add_maybe(v, ph);
                                }
                                blocked_by_failure(&mut reach[*ci], id);
                            }
                            _ => {}
                        }
                    }
                    Op::Exit => {
                        f.server().client_exited(client);
                        live[*ci].clear();
                        for (_, sure) in reach[*ci].values_mut() {
                            *sure = None;
                        }
                        // A device whose block succeeded reaches nothing; one whose block
                        // failed keeps its possible domains (quarantined ones included).
                    }
                }
            }
        }
        // The invariant, through the hardware.
        for (ci, (client, base, ndev, _)) in CLIENT_SET.iter().enumerate() {
            // Both clients' first regions are 64 MiB (0x4000 pages) at `base`.
            let region = (base >> 12, 0x4000);
            for dev in 0..*ndev {
                let (set, sure) = reach[ci].get(&dev).cloned().unwrap_or_default();
                for &p in &probe {
                    for write in [false, true] {
                        let got = dma(&mut f, *client, dev, p * PG, write);
                        if let Ok(pa) = got {
                            let page = pa >> 12;
                            assert!(
                                page >= region.0 && page < region.0 + region.1,
                                "client {client:?} dev {dev} reached {pa:#x}, not its memory"
                            );
                            assert!(
                                set.iter().any(|id| doms[*id].may_reach(p, page)),
                                "client {client:?} dev {dev} iova page {p} reached {pa:#x}, \
                                 which no domain it may be in maps there (after {op:?})"
                            );
                        } else if !armed
                            && let Some(id) = sure
                            && let Some(&ph) = doms[id].sure.get(&p)
                        {
                            // Read-only pages fault on writes; reads must work.
                            if !write {
                                panic!(
                                    "client {client:?} dev {dev} surely attached cannot read \
                                     page {p} (-> {ph:#x}) after {op:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        f.server().service_faults();
    }
    // Recovery: healed units, both clients gone and back; every frame returns.
    f.heal();
    for (ci, (client, _, ndev, _)) in CLIENT_SET.iter().enumerate() {
        f.server().client_exited(*client);
        for dev in 0..*ndev {
            done(&mut f, *client, &detach_req(dev));
            assert_eq!(dma(&mut f, *client, dev, 0, false), Err(Faulted));
        }
        let _ = ci;
    }
    let st = *f.server_ref().stats();
    assert_eq!(
        st.quarantined_domains, st.reclaimed_domains,
        "every quarantined domain reclaimed once its devices were blocked"
    );
    assert_eq!(f.server_ref().alloc().in_use, start, "every frame back");
}

/// After a hardware failure on domain `id`, the server blocks (or tries to) every device in
/// it: none is surely attached any more.
fn blocked_by_failure(reach: &mut Reach, id: usize) {
    for (set, sure) in reach.values_mut() {
        if set.contains(&id) {
            *sure = None;
        }
    }
}

/// Random steps for [`run_fault_stream`]: [`op_strategy`] requests of both clients, with unit
/// failures armed and healed now and then.
pub fn fault_op_strategy() -> impl proptest::strategy::Strategy<Value = FaultOp> {
    use proptest::prelude::*;
    let fault = prop_oneof![
        Just(UnitFault::Hang),
        (0u32..3).prop_map(|after| UnitFault::Lose { after }),
        (0u32..3).prop_map(|after| UnitFault::QueueError { after }),
        (0u32..3).prop_map(|after| UnitFault::LoseCompletion { after }),
    ];
    prop_oneof![
        16 => (0usize..2, op_strategy()).prop_map(|(c, o)| FaultOp::Req(c, o)),
        3 => (0usize..2, fault).prop_map(|(u, f)| FaultOp::Inject(u, f)),
        2 => Just(FaultOp::Heal),
    ]
}

/// Instantiates every suite test as a `#[test]` for a fixture type.
#[macro_export]
macro_rules! server_suite_tests {
    ($fixture:ty) => {
        #[test]
        fn hello_and_info() {
            $crate::server_suite::hello_and_info::<$fixture>();
        }
        #[test]
        fn strangers_and_garbage() {
            $crate::server_suite::strangers_and_garbage::<$fixture>();
        }
        #[test]
        fn domains_and_quota() {
            $crate::server_suite::domains_and_quota::<$fixture>();
        }
        #[test]
        fn map_unmap_dma() {
            $crate::server_suite::map_unmap_dma::<$fixture>();
        }
        #[test]
        fn map_errors() {
            $crate::server_suite::map_errors::<$fixture>();
        }
        #[test]
        fn capability_attacks() {
            $crate::server_suite::capability_attacks::<$fixture>();
        }
        #[test]
        fn attach_detach() {
            $crate::server_suite::attach_detach::<$fixture>();
        }
        #[test]
        fn client_exit() {
            $crate::server_suite::client_exit::<$fixture>();
        }
        #[test]
        fn domain_cycles_release_frames() {
            $crate::server_suite::domain_cycles_release_frames::<$fixture>();
        }
        #[test]
        fn invalidation_per_request() {
            $crate::server_suite::invalidation_per_request::<$fixture>();
        }
        #[test]
        fn map_sg() {
            $crate::server_suite::map_sg::<$fixture>();
        }
        #[test]
        fn map_anywhere() {
            $crate::server_suite::map_anywhere::<$fixture>();
        }
        #[test]
        fn fault_routing() {
            $crate::server_suite::fault_routing::<$fixture>();
        }
        #[test]
        fn frame_quota() {
            $crate::server_suite::frame_quota::<$fixture>();
        }
        #[test]
        fn fail_nth_allocation() {
            $crate::server_suite::fail_nth_allocation::<$fixture>();
        }
        #[test]
        fn failed_attach_never_leaves_device_live() {
            $crate::server_suite::failed_attach_never_leaves_device_live::<$fixture>();
        }
        #[test]
        fn retried_detach_blocks() {
            $crate::server_suite::retried_detach_blocks::<$fixture>();
        }
        #[test]
        fn reserve_never_costs_quota() {
            $crate::server_suite::reserve_never_costs_quota::<$fixture>();
        }
        #[test]
        fn stale_tags_are_never_reused() {
            $crate::server_suite::stale_tags_are_never_reused::<$fixture>();
        }
        #[test]
        fn detach_one_of_two_on_a_unit() {
            $crate::server_suite::detach_one_of_two_on_a_unit::<$fixture>();
        }
        #[test]
        fn queue_errors_are_reported_and_recovered() {
            $crate::server_suite::queue_errors_are_reported_and_recovered::<$fixture>();
        }
        #[test]
        fn invalidation_failure() {
            $crate::server_suite::invalidation_failure::<$fixture>();
        }
        #[test]
        fn random_bytes() {
            $crate::server_suite::random_bytes::<$fixture>(0x5eed, 3000);
        }
    };
}

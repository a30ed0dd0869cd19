//! Server benchmark on the mock backend: one `Map` and one `Unmap` request (4 KiB and 2 MiB)
//! through the whole path (encode the request, `Server::handle` on the bytes, decode the
//! reply), against a baseline run in the same process: the same map / unmap done directly on a
//! `PageTable` with the same simulated memory, allocator and mock invalidation, no server.
//!
//! `cargo bench -p iommu-test-harness --bench server` prints, before criterion's report, a
//! table of mean time per request, the ratio to the baseline, and the invalidations issued per
//! request (the server's counter), as recorded in BENCHMARKS.md. `SERVER_BENCH_TABLE_ONLY=1`
//! prints the table and stops.
//!
//! A device of the domain is attached on unit 0, so every `Unmap` invalidates one unit; the
//! mock's units do not cache non-present entries, so a `Map` invalidates nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use iommu_hal::backend::Backend;
use iommu_hal::pagetable::format::VtdSl;
use iommu_hal::pagetable::{Gather, Map, PageTable, Perms as HalPerms, Unmap};
use iommu_protocol::{
    DeviceHandle, DomainHandle, MAX_MESSAGE, Perms, Reply, Request, decode_reply, encode_request,
};
use iommu_test_harness::mock::{MockFixture, MockSpec, VtdMock};
use iommu_test_harness::server_suite::{A, Fixture, Recorder, Setup};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const IOVA: u64 = 0x4000_0000;
const PHYS: u64 = 0x1000_0000;
/// A small pool: the simulated allocator checks every free against its free list (a linear
/// double-free check), which would otherwise dominate the unmap times.
const POOL_FRAMES: u64 = 32;

/// A server with client A's domain and device 0 attached.
struct ServerPath {
    f: MockFixture,
    domain: DomainHandle,
}

impl ServerPath {
    fn new() -> Self {
        let setup = Setup {
            pool_frames: POOL_FRAMES,
            ..Setup::default()
        };
        let mut f = MockFixture::build(&setup, Recorder::default());
        let domain = match send(&mut f, &Request::CreateDomain) {
            Reply::DomainCreated { domain } => domain,
            r => panic!("{r:?}"),
        };
        let attach = Request::Attach {
            domain,
            device: DeviceHandle(0),
        };
        assert_eq!(send(&mut f, &attach), Reply::Done);
        ServerPath { f, domain }
    }
    fn map(&mut self, len: u64) {
        let r = send(
            &mut self.f,
            &Request::Map {
                domain: self.domain,
                iova: IOVA,
                phys: PHYS,
                len,
                perms: Perms::RW,
            },
        );
        debug_assert_eq!(r, Reply::Done);
        black_box(r);
    }
    fn unmap(&mut self, len: u64) {
        let r = send(
            &mut self.f,
            &Request::Unmap {
                domain: self.domain,
                iova: IOVA,
                len,
            },
        );
        debug_assert_eq!(r, Reply::Unmapped { bytes: len });
        black_box(r);
    }
    fn invalidations(&self) -> u64 {
        self.f.server.stats().invalidations
    }
}

/// Encode, handle, decode.
fn send(f: &mut MockFixture, req: &Request) -> Reply {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = encode_request(req, &mut buf).unwrap();
    let mut rep = [0u8; MAX_MESSAGE];
    let m = f.server.handle(A, &buf[..n], &mut rep);
    decode_reply(&rep[..m]).unwrap()
}

/// The baseline: the engine and the mock's invalidation, no server, no messages.
struct EnginePath {
    mem: SharedMem,
    alloc: SimAlloc,
    table: PageTable<VtdSl>,
    backend: VtdMock,
}

impl EnginePath {
    fn new() -> Self {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), 1 << 32, POOL_FRAMES);
        let backend = VtdMock::new(
            mem.clone(),
            MockSpec {
                units: 2,
                ..MockSpec::default()
            },
        );
        let cfg = iommu_hal::pagetable::TableConfig {
            addr_width: 48,
            phys_width: 52,
            leaf_sizes: iommu_hal::pagetable::LeafSizes::STANDARD,
            split_live_blocks: true,
            coherent: true,
        };
        let table = PageTable::new(cfg, &mut alloc).unwrap();
        EnginePath {
            mem,
            alloc,
            table,
            backend,
        }
    }
    fn map(&mut self, len: u64) {
        let mut g = Gather::new();
        self.table
            .map(
                &mut self.mem,
                &mut self.alloc,
                Map {
                    iova: IOVA,
                    phys: PHYS,
                    len,
                    perms: HalPerms::RW,
                },
                &mut g,
            )
            .unwrap();
        g.release(&mut self.mem, &mut self.alloc);
    }
    fn unmap(&mut self, len: u64) {
        let mut g = Gather::new();
        let n = self
            .table
            .unmap(
                &mut self.mem,
                &mut self.alloc,
                Unmap { iova: IOVA, len },
                &mut g,
            )
            .unwrap();
        self.backend.invalidate(0, 1, &g).unwrap();
        g.release(&mut self.mem, &mut self.alloc);
        black_box(n);
    }
}

/// Mean time of `timed` over `iters` rounds, with `untimed` run between rounds.
fn measure(iters: u32, mut timed: impl FnMut(), mut untimed: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        timed();
        total += t.elapsed();
        untimed();
    }
    total / iters
}

fn table() {
    const N: u32 = 3000;
    println!("server bench (mock backend, VT-d format, 48-bit, one device attached on unit 0)");
    println!(
        "{:<10} {:>12} {:>12} {:>8} {:>14}",
        "request", "server ns", "engine ns", "ratio", "invalidations"
    );
    for (name, len) in [("4K", K4), ("2M", M2)] {
        let mut s = ServerPath::new();
        let mut e = EnginePath::new();
        // Warm up.
        for _ in 0..200 {
            s.map(len);
            s.unmap(len);
            e.map(len);
            e.unmap(len);
        }
        let sp = std::cell::RefCell::new(s);
        let ep = std::cell::RefCell::new(e);
        let inv0 = sp.borrow().invalidations();
        let sm = measure(
            N,
            || sp.borrow_mut().map(len),
            || sp.borrow_mut().unmap(len),
        );
        let inv1 = sp.borrow().invalidations();
        let em = measure(
            N,
            || ep.borrow_mut().map(len),
            || ep.borrow_mut().unmap(len),
        );
        // Map per request: the untimed unmaps' invalidations are subtracted (one each).
        let map_inv = (inv1 - inv0) as f64 / f64::from(N) - 1.0;
        sp.borrow_mut().map(len);
        ep.borrow_mut().map(len);
        let inv2 = sp.borrow().invalidations();
        let su = measure(
            N,
            || sp.borrow_mut().unmap(len),
            || sp.borrow_mut().map(len),
        );
        let inv3 = sp.borrow().invalidations();
        let eu = measure(
            N,
            || ep.borrow_mut().unmap(len),
            || ep.borrow_mut().map(len),
        );
        let unmap_inv = (inv3 - inv2) as f64 / f64::from(N);
        for (op, s, e, inv) in [("Map", sm, em, map_inv), ("Unmap", su, eu, unmap_inv)] {
            println!(
                "{:<10} {:>12} {:>12} {:>8.2} {:>14.2}",
                format!("{op} {name}"),
                s.as_nanos(),
                e.as_nanos(),
                s.as_secs_f64() / e.as_secs_f64(),
                inv
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("server");
    for (name, len) in [("4K", K4), ("2M", M2)] {
        g.bench_function(format!("map {name} (encode+handle+decode)"), |b| {
            let mut s = ServerPath::new();
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let s0 = Instant::now();
                    s.map(len);
                    t += s0.elapsed();
                    s.unmap(len);
                }
                t
            })
        });
        g.bench_function(format!("unmap {name} (encode+handle+decode)"), |b| {
            let mut s = ServerPath::new();
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    s.map(len);
                    let s0 = Instant::now();
                    s.unmap(len);
                    t += s0.elapsed();
                }
                t
            })
        });
        g.bench_function(format!("engine map+unmap {name} (baseline)"), |b| {
            let mut e = EnginePath::new();
            b.iter(|| {
                e.map(len);
                e.unmap(len);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench
}

fn main() {
    table();
    if std::env::var_os("SERVER_BENCH_TABLE_ONLY").is_some() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

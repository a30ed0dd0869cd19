//! Server benchmark: one `Map` and one `Unmap` request (4 KiB and 2 MiB) through the whole
//! path (encode the request, `Server::handle` on the bytes, decode the reply), against the
//! bare engine call, in the same process, on the same flat memory model (a pre-allocated array
//! of words, as a deployment's identity-mapped memory; not the test memory's `RefCell` and
//! `BTreeMap` per word) and the same allocator.
//!
//! Backend: the mock (`test-harness/src/mock.rs`), VT-d second-level format, 48-bit, two
//! units, one device of the domain attached on unit 0, so every `Unmap` invalidates one unit
//! and a `Map` none (the mock's units do not cache non-present entries). The baseline calls the
//! engine and, for unmaps, the mock's invalidation and `Gather::release`.
//!
//! `cargo bench -p iommu-test-harness --bench server` prints the table BENCHMARKS.md records
//! (median of interleaved batches, over `SERVER_BENCH_RUNS` runs, default 3), then runs
//! criterion; `SERVER_BENCH_TABLE_ONLY=1` prints the table and stops.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use iommu_hal::backend::Backend;
use iommu_hal::pagetable::format::VtdSl;
use iommu_hal::pagetable::{Gather, LeafSizes, Map, PageTable, Perms as HalPerms, Unmap};
use iommu_hal::{FrameAlloc, PhysAddr, PhysMem};
use iommu_protocol::{
    DeviceHandle, DomainHandle, MAX_MESSAGE, Perms, Reply, Request, decode_reply, encode_request,
};
use iommu_server::{NoNotify, Server};
use iommu_test_harness::mock::{MockSpec, VtdMock};
use iommu_test_harness::server_suite::{A, config};
use iommu_test_harness::sim::SharedMem;

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const IOVA: u64 = 0x4000_0000;
const PHYS: u64 = 0x1000_0000;
const POOL_BASE: u64 = 1 << 40;
const POOL_FRAMES: usize = 256;

/// A flat physical memory (the tables' frames), shared with the allocator.
#[derive(Clone)]
struct Flat(Rc<[Cell<u64>]>);

impl Flat {
    fn new() -> Self {
        Flat((0..POOL_FRAMES * 512).map(|_| Cell::new(0)).collect())
    }
    #[inline(always)]
    fn idx(pa: PhysAddr) -> usize {
        ((pa - POOL_BASE) / 8) as usize
    }
}

impl PhysMem for Flat {
    #[inline(always)]
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        self.0[Self::idx(pa)].get()
    }
    #[inline(always)]
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        self.0[Self::idx(pa)].set(value)
    }
    #[inline(always)]
    fn order_writes(&mut self) {
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
    }
}

/// LIFO allocator over [`Flat`], zeroing frames as `FrameAlloc` requires.
struct FlatAlloc {
    mem: Flat,
    free: Vec<u64>,
}

impl FlatAlloc {
    fn new(mem: Flat) -> Self {
        let free = (0..POOL_FRAMES as u64)
            .rev()
            .map(|i| POOL_BASE + i * K4)
            .collect();
        FlatAlloc { mem, free }
    }
}

impl FrameAlloc for FlatAlloc {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        let pa = self.free.pop()?;
        let i = Flat::idx(pa);
        for w in &self.mem.0[i..i + 512] {
            w.set(0);
        }
        Some(pa)
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        self.free.push(pa);
    }
}

type BenchServer = Server<'static, VtdMock, Flat, FlatAlloc, NoNotify, 4, 16, 16, 8>;

fn mock() -> VtdMock {
    VtdMock::new(
        SharedMem::new(),
        MockSpec {
            units: 2,
            ..MockSpec::default()
        },
    )
}

/// A server on flat memory with client A's domain and device 0 attached.
struct ServerPath {
    s: BenchServer,
    domain: DomainHandle,
}

impl ServerPath {
    fn new() -> Self {
        let mem = Flat::new();
        let alloc = FlatAlloc::new(mem.clone());
        let s = Server::new(mock(), mem, alloc, NoNotify, config()).expect("server");
        let mut p = ServerPath {
            s,
            domain: DomainHandle(0),
        };
        p.domain = match p.send(&Request::CreateDomain) {
            Reply::DomainCreated { domain } => domain,
            r => panic!("{r:?}"),
        };
        let attach = Request::Attach {
            domain: p.domain,
            device: DeviceHandle(0),
        };
        assert_eq!(p.send(&attach), Reply::Done);
        p
    }
    /// Encodes `req` and has the server handle it; the reply's length in `rep`.
    #[inline(always)]
    fn exchange(&mut self, req: &Request, rep: &mut [u8; MAX_MESSAGE]) -> usize {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_request(req, &mut buf).unwrap();
        self.s.handle(A, &buf[..n], rep)
    }
    /// Encode, handle, decode (for the set-up, which needs the reply's contents).
    fn send(&mut self, req: &Request) -> Reply {
        let mut rep = [0u8; MAX_MESSAGE];
        let m = self.exchange(req, &mut rep);
        decode_reply(&rep[..m]).unwrap()
    }
    /// Encode, handle, decode, and check the reply where it was decoded (a client tests
    /// the reply; moving a whole `Reply`, sized for `Faults`, would be the bench's cost).
    #[inline(always)]
    fn call(&mut self, req: &Request, expect: &Reply) -> bool {
        let mut rep = [0u8; MAX_MESSAGE];
        let m = self.exchange(req, &mut rep);
        matches!(decode_reply(&rep[..m]), Ok(ref r) if r == expect)
    }
    fn map(&mut self, len: u64) {
        let req = Request::Map {
            domain: self.domain,
            iova: black_box(IOVA),
            phys: PHYS,
            len,
            perms: Perms::RW,
        };
        let ok = self.call(&req, &Reply::Done);
        debug_assert!(ok);
        black_box(ok);
    }
    fn unmap(&mut self, len: u64) {
        let req = Request::Unmap {
            domain: self.domain,
            iova: black_box(IOVA),
            len,
        };
        let ok = self.call(&req, &Reply::Unmapped { bytes: len });
        debug_assert!(ok);
        black_box(ok);
    }
}

/// The baseline: the engine and the mock's invalidation, no server, no messages.
struct EnginePath {
    mem: Flat,
    alloc: FlatAlloc,
    table: PageTable<VtdSl>,
    backend: VtdMock,
}

impl EnginePath {
    fn new() -> Self {
        let mem = Flat::new();
        let mut alloc = FlatAlloc::new(mem.clone());
        let cfg = iommu_hal::pagetable::TableConfig {
            addr_width: 48,
            phys_width: 52,
            leaf_sizes: LeafSizes::STANDARD,
            split_live_blocks: true,
            coherent: true,
        };
        let table = PageTable::new(cfg, &mut alloc).unwrap();
        EnginePath {
            mem,
            alloc,
            table,
            backend: mock(),
        }
    }
    fn map(&mut self, len: u64) {
        let mut g = Gather::new();
        let req = Map {
            iova: black_box(IOVA),
            phys: PHYS,
            len,
            perms: HalPerms::RW,
        };
        self.table
            .map(&mut self.mem, &mut self.alloc, req, &mut g)
            .unwrap();
        g.release(&mut self.mem, &mut self.alloc);
    }
    fn unmap(&mut self, len: u64) {
        let mut g = Gather::new();
        let req = Unmap {
            iova: black_box(IOVA),
            len,
        };
        let n = self
            .table
            .unmap(&mut self.mem, &mut self.alloc, req, &mut g)
            .unwrap();
        self.backend.invalidate(0, 1, &g).unwrap();
        g.release(&mut self.mem, &mut self.alloc);
        black_box(n);
    }
}

/// Median over batches of the mean time of `timed`, with `untimed` between calls.
fn measure(mut timed: impl FnMut(), mut untimed: impl FnMut()) -> Duration {
    const N: u32 = 2000;
    let mut samples = Vec::new();
    for _ in 0..7 {
        let mut total = Duration::ZERO;
        for _ in 0..N {
            let t = Instant::now();
            timed();
            total += t.elapsed();
            untimed();
        }
        samples.push(total / N);
    }
    samples.sort();
    samples[3]
}

/// Median over batches of the mean time of one `pair` (a map and its unmap), each batch
/// timed as a whole: no per-call clock reads, so nothing to subtract.
fn measure_pairs(mut pair: impl FnMut()) -> Duration {
    const N: u32 = 20_000;
    let mut samples = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..N {
            pair();
        }
        samples.push(t.elapsed() / N);
    }
    samples.sort();
    samples[3]
}

/// The clock's own cost per `Instant::now()` + `elapsed()` pair, subtracted from both sides.
fn clock_cost() -> Duration {
    measure(|| {}, || {})
}

fn table() {
    let runs: usize = std::env::var("SERVER_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "\n| request | server (encode + handle + decode) | engine alone | overhead | \
         overhead / engine: median [min, max] over {runs} runs |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, len) in [("4K", K4), ("2M", M2)] {
        let mut rows: Vec<[(Duration, Duration); 3]> = Vec::new();
        for _ in 0..runs {
            let s = std::cell::RefCell::new(ServerPath::new());
            let e = std::cell::RefCell::new(EnginePath::new());
            for _ in 0..200 {
                s.borrow_mut().map(len);
                s.borrow_mut().unmap(len);
                e.borrow_mut().map(len);
                e.borrow_mut().unmap(len);
            }
            let clock = clock_cost();
            let sub = |d: Duration| d.saturating_sub(clock);
            let sm = sub(measure(
                || s.borrow_mut().map(len),
                || s.borrow_mut().unmap(len),
            ));
            let em = sub(measure(
                || e.borrow_mut().map(len),
                || e.borrow_mut().unmap(len),
            ));
            s.borrow_mut().map(len);
            e.borrow_mut().map(len);
            let su = sub(measure(
                || s.borrow_mut().unmap(len),
                || s.borrow_mut().map(len),
            ));
            let eu = sub(measure(
                || e.borrow_mut().unmap(len),
                || e.borrow_mut().map(len),
            ));
            s.borrow_mut().unmap(len);
            e.borrow_mut().unmap(len);
            let (mut server, mut engine) = (s.borrow_mut(), e.borrow_mut());
            let sp = measure_pairs(|| {
                server.map(len);
                server.unmap(len);
            });
            let ep = measure_pairs(|| {
                engine.map(len);
                engine.unmap(len);
            });
            rows.push([(sm, em), (su, eu), (sp, ep)]);
        }
        for (k, op) in ["Map", "Unmap", "Map + Unmap (batch-timed)"]
            .iter()
            .enumerate()
        {
            let mut ratio: Vec<f64> = rows
                .iter()
                .map(|r| r[k].0.as_secs_f64() / r[k].1.as_secs_f64() - 1.0)
                .collect();
            ratio.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut sv: Vec<Duration> = rows.iter().map(|r| r[k].0).collect();
            let mut ev: Vec<Duration> = rows.iter().map(|r| r[k].1).collect();
            sv.sort();
            ev.sort();
            let (s, e) = (sv[sv.len() / 2], ev[ev.len() / 2]);
            println!(
                "| {op} {name} | {} ns | {} ns | +{} ns | {:+.0} % [{:+.0} %, {:+.0} %] |",
                s.as_nanos(),
                e.as_nanos(),
                s.saturating_sub(e).as_nanos(),
                ratio[ratio.len() / 2] * 100.0,
                ratio[0] * 100.0,
                ratio[ratio.len() - 1] * 100.0
            );
        }
    }
    println!(
        "\n(clock cost per timed call, subtracted on both sides: {:?})",
        clock_cost()
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("server");
    for (name, len) in [("4K", K4), ("2M", M2)] {
        g.bench_function(format!("map+unmap {name} (encode+handle+decode)"), |b| {
            let mut s = ServerPath::new();
            b.iter(|| {
                s.map(len);
                s.unmap(len);
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
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    targets = bench
}

/// Runs `iters` map + unmap pairs of `len` bytes through the server (encode + handle +
/// decode) or the engine alone, and nothing else: the loop
/// `valgrind --tool=callgrind --toggle-collect='*icount_loop*'` counts (see BENCHMARKS.md).
#[inline(never)]
fn icount_loop(
    server: Option<&mut ServerPath>,
    engine: Option<&mut EnginePath>,
    len: u64,
    iters: u64,
) {
    match (server, engine) {
        (Some(s), _) => {
            for _ in 0..iters {
                s.map(len);
                s.unmap(len);
            }
        }
        (None, Some(e)) => {
            for _ in 0..iters {
                e.map(len);
                e.unmap(len);
            }
        }
        (None, None) => {}
    }
}

/// `SERVER_BENCH_ICOUNT=<4K|2M>:<server|engine>:<iterations>`: sets the path up, warms it up
/// with one map + unmap, then runs [`icount_loop`]. Instruction counts are independent of the
/// machine's load.
fn icount(spec: &str) {
    let mut it = spec.split(':');
    let len = match it.next() {
        Some("4K") => K4,
        Some("2M") => M2,
        other => panic!("size {other:?}"),
    };
    let who = it.next().expect("server|engine");
    let iters: u64 = it.next().and_then(|s| s.parse().ok()).expect("iterations");
    match who {
        "server" => {
            let mut s = ServerPath::new();
            s.map(len);
            s.unmap(len);
            icount_loop(Some(&mut s), None, len, iters);
        }
        "engine" => {
            let mut e = EnginePath::new();
            e.map(len);
            e.unmap(len);
            icount_loop(None, Some(&mut e), len, iters);
        }
        other => panic!("path {other:?}"),
    }
    println!("{spec}: {iters} map + unmap pairs");
}

fn main() {
    if let Ok(spec) = std::env::var("SERVER_BENCH_ICOUNT") {
        icount(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--bench") {
        table();
        if std::env::var_os("SERVER_BENCH_TABLE_ONLY").is_some() {
            return;
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

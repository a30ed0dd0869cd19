//! Page-table engine benchmark: map + unmap of one range per call, against (a) the same engine
//! driven one 4 KiB page at a time with one invalidation per page, and (b) the `x86_64`
//! crate's `OffsetPageTable` doing the same 4 KiB job on simulated physical memory.
//!
//! `cargo bench -p iommu-test-harness --bench pagetable` prints, before criterion's own
//! report, a table of entries written, invalidations issued and mean time per scenario, with
//! the ratios BENCHMARKS.md records. `PT_BENCH_TABLE_ONLY=1` prints the table and stops.
//! Criterion then measures every case, and, in the group `pagetable/4K map+unmap warm`, the
//! warm 4 KiB map+unmap of each format next to the `x86_64` crate's (the 4 KiB target).
//!
//! Memory model: both engines run on a flat, pre-allocated array of words (no maps, no
//! locks). The engine reaches it through `PhysMem`; the `x86_64` crate through its physical
//! memory offset, as on bare metal.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group};
use iommu_hal::pagetable::format::{AmdV1, ArmS1, RiscvSv, VtdSl};
use iommu_hal::pagetable::{Format, Gather, LeafSizes, Map, PageTable, Perms, TableConfig, Unmap};
use iommu_hal::{FrameAlloc, PhysAddr, PhysMem};

const K4: u64 = 1 << 12;
const K64: u64 = 1 << 16;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
/// Physical address of the first table frame.
const POOL_BASE: u64 = 1 << 32;
/// Table frames in the pool (enough for 1 GiB of 4 KiB pages: 512 tables + paths).
const POOL_FRAMES: usize = 1024;
/// Where the mapped IOVA ranges start (2 MiB- and 1 GiB-aligned, below every width).
const IOVA_BASE: u64 = 4 * G1;
/// Output addresses (never touched).
const PHYS_BASE: u64 = 64 * G1;
/// The page that stays mapped in the "warm" 4 KiB cases (same 1 GiB region as the ranges).
const NEIGHBOUR: u64 = IOVA_BASE + 5 * M2;
/// The page mapped and unmapped in the warm 4 KiB cases: next to [`NEIGHBOUR`], in the same
/// 4 KiB-page table, so only its leaf entry changes.
const WARM_4K: u64 = NEIGHBOUR + K4;

/// A flat physical memory shared between the engine's `PhysMem` and the frame allocator.
#[derive(Clone)]
struct Flat {
    words: Rc<[Cell<u64>]>,
}

impl Flat {
    fn new() -> Self {
        Flat {
            words: (0..POOL_FRAMES * 512).map(|_| Cell::new(0)).collect(),
        }
    }
    fn idx(pa: PhysAddr) -> usize {
        ((pa - POOL_BASE) / 8) as usize
    }
}

impl PhysMem for Flat {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        self.words[Self::idx(pa)].get()
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        self.words[Self::idx(pa)].set(value)
    }
    fn order_writes(&mut self) {}
}

/// LIFO frame allocator over [`Flat`]; zeroes frames as the `FrameAlloc` contract requires.
struct FlatAlloc {
    mem: Flat,
    free: Vec<u64>,
    allocated: u64,
}

impl FlatAlloc {
    fn new(mem: Flat) -> Self {
        let free = (0..POOL_FRAMES as u64)
            .rev()
            .map(|i| POOL_BASE + i * K4)
            .collect();
        FlatAlloc {
            mem,
            free,
            allocated: 0,
        }
    }
}

impl FrameAlloc for FlatAlloc {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        let pa = self.free.pop()?;
        let i = Flat::idx(pa);
        for w in &self.mem.words[i..i + 512] {
            w.set(0);
        }
        self.allocated += 1;
        Some(pa)
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        self.free.push(pa);
    }
}

/// One engine table on flat memory, plus the invalidation counter.
struct Engine<F: Format> {
    mem: Flat,
    alloc: FlatAlloc,
    pt: PageTable<F>,
    flushes: u64,
}

impl<F: Format> Engine<F> {
    fn new(addr_width: u32) -> Self {
        let mem = Flat::new();
        let mut alloc = FlatAlloc::new(mem.clone());
        let cfg = TableConfig {
            addr_width,
            phys_width: 52,
            leaf_sizes: LeafSizes::STANDARD,
            split_live_blocks: true,
            coherent: true,
        };
        let pt = PageTable::<F>::new(cfg, &mut alloc).expect("new table");
        Engine {
            mem,
            alloc,
            pt,
            flushes: 0,
        }
    }

    /// A table with one read-only 4 KiB page mapped at [`NEIGHBOUR`]: its path stays
    /// allocated, as the `x86_64` crate keeps its (never freed) intermediate tables.
    fn with_neighbour(addr_width: u32) -> Self {
        let mut e = Self::new(addr_width);
        let mut g = Gather::new();
        e.pt.map(
            &mut e.mem,
            &mut e.alloc,
            Map {
                iova: NEIGHBOUR,
                phys: PHYS_BASE,
                len: K4,
                perms: Perms::R,
            },
            &mut g,
        )
        .expect("map neighbour");
        e.flush(&mut g);
        e
    }

    fn entries(&self) -> u64 {
        let c = self.pt.counters();
        c.leaf_writes + c.table_writes
    }

    /// One invalidation: a counter increment, then the gather's frames go back.
    fn flush(&mut self, g: &mut Gather) {
        self.flushes += 1;
        black_box(g.span());
        g.release(&mut self.mem, &mut self.alloc);
    }

    /// The range way: one map call, one flush; one unmap call, one flush.
    fn range(&mut self, iova: u64, phys: u64, len: u64) {
        let mut g = Gather::new();
        self.pt
            .map(
                &mut self.mem,
                &mut self.alloc,
                Map {
                    iova,
                    phys,
                    len,
                    perms: Perms::RW,
                },
                &mut g,
            )
            .expect("map");
        self.flush(&mut g);
        let n = self
            .pt
            .unmap(&mut self.mem, &mut self.alloc, Unmap { iova, len }, &mut g)
            .expect("unmap");
        assert_eq!(n, len);
        self.flush(&mut g);
    }

    /// Baseline (a): the same job one 4 KiB page per call, one flush per page.
    fn per_page(&mut self, iova: u64, phys: u64, len: u64) {
        let mut g = Gather::new();
        let mut off = 0;
        while off < len {
            self.pt
                .map(
                    &mut self.mem,
                    &mut self.alloc,
                    Map {
                        iova: iova + off,
                        phys: phys + off,
                        len: K4,
                        perms: Perms::RW,
                    },
                    &mut g,
                )
                .expect("map");
            self.flush(&mut g);
            off += K4;
        }
        let mut off = 0;
        while off < len {
            self.pt
                .unmap(
                    &mut self.mem,
                    &mut self.alloc,
                    Unmap {
                        iova: iova + off,
                        len: K4,
                    },
                    &mut g,
                )
                .expect("unmap");
            self.flush(&mut g);
            off += K4;
        }
    }
}

/// The `x86_64` crate on simulated physical memory: frames live in a leaked, 4 KiB-aligned
/// buffer; physical address `p` is at `buffer + p` (physical memory offset).
mod x86 {
    use x86_64::structures::paging::{
        FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame,
        Size4KiB,
    };
    use x86_64::{PhysAddr, VirtAddr};

    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct Frame([u64; 512]);

    const FRAMES: usize = 64;

    pub struct Bump {
        next: u64,
        pub allocated: u64,
    }

    // SAFETY: every frame handed out is a distinct, unused frame of the buffer (frame 0 is the
    // level-4 table; frames are never handed out twice).
    unsafe impl FrameAllocator<Size4KiB> for Bump {
        fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
            if self.next as usize >= FRAMES {
                return None;
            }
            let f = PhysFrame::containing_address(PhysAddr::new(self.next * 4096));
            self.next += 1;
            self.allocated += 1;
            Some(f)
        }
    }

    pub struct X86 {
        pub mapper: OffsetPageTable<'static>,
        pub alloc: Bump,
        pub entries: u64,
    }

    impl X86 {
        pub fn new() -> Self {
            let buf: &'static mut [Frame] = Box::leak(vec![Frame([0; 512]); FRAMES].into());
            let base = buf.as_mut_ptr() as u64;
            // SAFETY: frame 0 of the leaked buffer is a zeroed, 4 KiB-aligned `PageTable`
            // used only through this mapper; every physical frame the mapper reaches is in the
            // buffer at `base + phys`, and nothing else accesses the buffer.
            let mapper = unsafe {
                OffsetPageTable::new(
                    &mut *(buf.as_mut_ptr() as *mut PageTable),
                    VirtAddr::new(base),
                )
            };
            X86 {
                mapper,
                alloc: Bump {
                    next: 1,
                    allocated: 0,
                },
                entries: 0,
            }
        }

        /// Maps then unmaps `[iova, iova + len)` one 4 KiB page at a time (the crate has no
        /// range call); the TLB flush is ignored (nothing to flush on the host).
        pub fn map_unmap(&mut self, iova: u64, phys: u64, len: u64) {
            let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
            let mut off = 0;
            while off < len {
                let page: Page<Size4KiB> = Page::containing_address(VirtAddr::new(iova + off));
                let frame = PhysFrame::containing_address(PhysAddr::new(phys + off));
                let before = self.alloc.allocated;
                // SAFETY: the output frame is never accessed (the page is only mapped and
                // unmapped); the mapping aliases nothing that is in use.
                unsafe { self.mapper.map_to(page, frame, flags, &mut self.alloc) }
                    .expect("map_to")
                    .ignore();
                self.entries += 1 + (self.alloc.allocated - before);
                off += 4096;
            }
            let mut off = 0;
            while off < len {
                let page: Page<Size4KiB> = Page::containing_address(VirtAddr::new(iova + off));
                self.mapper.unmap(page).expect("unmap").1.ignore();
                self.entries += 1;
                off += 4096;
            }
        }
    }
}

/// Mean time per call of `f`, run for about `budget` (at least once).
fn time_it(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    let start = Instant::now();
    let mut n = 0u32;
    while n == 0 || start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed() / n
}

struct Row {
    format: &'static str,
    case: String,
    range_entries: u64,
    range_flushes: u64,
    range_time: Duration,
    page_entries: u64,
    page_flushes: u64,
    page_time: Duration,
}

fn scenarios() -> Vec<(&'static str, u64, u64, u64)> {
    let mut v = Vec::new();
    for (name, len) in [("4K", K4), ("64K", K64), ("2M", M2), ("1G", G1)] {
        v.push((name, IOVA_BASE + M2, PHYS_BASE + M2, len));
        v.push((name, IOVA_BASE + M2 + K4, PHYS_BASE + M2 + K4, len));
    }
    v.push(("1G", IOVA_BASE, PHYS_BASE, G1));
    v
}

fn label(iova: u64, len: u64) -> String {
    let size = match len {
        K4 => "4K",
        K64 => "64K",
        M2 => "2M",
        _ => "1G",
    };
    let align = if iova % G1 == 0 {
        "1G-aligned"
    } else if iova % M2 == 0 {
        "2M-aligned"
    } else {
        "2M+4K"
    };
    format!("{size} {align}")
}

fn rows_for<F: Format>(width: u32, rows: &mut Vec<Row>) {
    for (_, iova, phys, len) in scenarios() {
        let budget = Duration::from_millis(if len >= G1 { 600 } else { 150 });
        let mut e = Engine::<F>::new(width);
        let (e0, f0) = (e.entries(), e.flushes);
        e.range(iova, phys, len);
        let (range_entries, range_flushes) = (e.entries() - e0, e.flushes - f0);
        let range_time = time_it(budget, || e.range(iova, phys, len));
        let mut e = Engine::<F>::new(width);
        let (e0, f0) = (e.entries(), e.flushes);
        e.per_page(iova, phys, len);
        let (page_entries, page_flushes) = (e.entries() - e0, e.flushes - f0);
        let page_time = time_it(budget, || e.per_page(iova, phys, len));
        rows.push(Row {
            format: F::NAME,
            case: label(iova, len),
            range_entries,
            range_flushes,
            range_time,
            page_entries,
            page_flushes,
            page_time,
        });
    }
}

fn fmt_t(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Prints the counter/ratio table (markdown) and checks the targets, reporting misses.
fn report_table() {
    let mut rows = Vec::new();
    rows_for::<VtdSl>(48, &mut rows);
    rows_for::<AmdV1>(48, &mut rows);
    rows_for::<ArmS1>(48, &mut rows);
    rows_for::<RiscvSv>(48, &mut rows);
    println!("\n## Range calls vs (a) one 4 KiB page per call, one flush per page\n");
    println!(
        "| format | map+unmap | entries (range) | flushes (range) | time (range) | \
         entries (a) | flushes (a) | time (a) | entries ratio | time ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut misses = Vec::new();
    for r in &rows {
        let er = r.page_entries as f64 / r.range_entries.max(1) as f64;
        let tr = r.page_time.as_secs_f64() / r.range_time.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1}x | {:.1}x |",
            r.format,
            r.case,
            r.range_entries,
            r.range_flushes,
            fmt_t(r.range_time),
            r.page_entries,
            r.page_flushes,
            fmt_t(r.page_time),
            er,
            tr
        );
        if r.case == "1G 2M-aligned" && (er < 100.0 || tr < 50.0) {
            misses.push(format!(
                "{} 1G 2M-aligned: entries {er:.1}x (target >= 100x), time {tr:.1}x (>= 50x)",
                r.format
            ));
        }
    }

    println!("\n## 4 KiB pages: engine vs the x86_64 crate's OffsetPageTable\n");
    println!(
        "| job | engine (format) | engine time | engine entries | x86_64 time | x86_64 entries | x86_64 / engine |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let budget = Duration::from_millis(300);
    let iova = IOVA_BASE + M2;
    let phys = PHYS_BASE + M2;
    for (job, len) in [("4K map+unmap", K4), ("2M as 512 x 4K map+unmap", M2)] {
        let mut x = x86::X86::new();
        x.map_unmap(iova, phys, len);
        let x_entries = x.entries;
        let xt = time_it(budget, || x.map_unmap(iova, phys, len));
        let mut cmp = |name: &str, et: Duration, ee: u64| {
            let ratio = xt.as_secs_f64() / et.as_secs_f64();
            println!(
                "| {job} | {name} | {} | {ee} | {} | {x_entries} | {ratio:.2}x |",
                fmt_t(et),
                fmt_t(xt)
            );
            if len == K4 && ratio < 1.0 {
                misses.push(format!(
                    "{job} {name}: {ratio:.2}x (target: engine no slower)"
                ));
            }
        };
        macro_rules! eng {
            ($f:ty) => {{
                // Cold: the table is empty, so every iteration allocates and frees the path.
                let mut e = Engine::<$f>::new(48);
                let e0 = e.entries();
                if len == K4 {
                    e.range(iova, phys, len);
                } else {
                    e.per_page(iova, phys, len);
                }
                let ee = e.entries() - e0;
                let et = time_it(budget, || {
                    if len == K4 {
                        e.range(iova, phys, len)
                    } else {
                        e.per_page(iova, phys, len)
                    }
                });
                cmp(&format!("{} cold", <$f>::NAME), et, ee);
                // Warm: a neighbouring page keeps the path alive, as the x86_64 crate keeps
                // its (never freed) intermediate tables.
                let mut e = Engine::<$f>::with_neighbour(48);
                let e0 = e.entries();
                if len == K4 {
                    e.range(WARM_4K, phys, len);
                } else {
                    e.per_page(iova, phys, len);
                }
                let ee = e.entries() - e0;
                let et = time_it(budget, || {
                    if len == K4 {
                        e.range(WARM_4K, phys, len)
                    } else {
                        e.per_page(iova, phys, len)
                    }
                });
                cmp(&format!("{} warm", <$f>::NAME), et, ee);
            }};
        }
        eng!(VtdSl);
        eng!(AmdV1);
        eng!(ArmS1);
        eng!(RiscvSv);
        if len == M2 {
            let mut e = Engine::<VtdSl>::new(48);
            let e0 = e.entries();
            e.range(iova, phys, len);
            let ee = e.entries() - e0;
            let et = time_it(budget, || e.range(iova, phys, len));
            cmp("vtd-sl one 2M range call", et, ee);
        }
    }
    if misses.is_empty() {
        println!("\nAll targets met.");
    } else {
        println!("\nTARGETS MISSED:");
        for m in &misses {
            println!("- {m}");
        }
    }
    println!();
}

fn bench_format<F: Format>(c: &mut Criterion, width: u32) {
    let mut group = c.benchmark_group(format!("pagetable/{}", F::NAME));
    for (_, iova, phys, len) in scenarios() {
        let mut e = Engine::<F>::new(width);
        group.bench_function(format!("range {}", label(iova, len)), |b| {
            b.iter(|| e.range(black_box(iova), phys, len))
        });
        if len <= M2 {
            let mut e = Engine::<F>::new(width);
            group.bench_function(format!("per-4K {}", label(iova, len)), |b| {
                b.iter(|| e.per_page(black_box(iova), phys, len))
            });
        }
    }
    group.finish();
}

fn bench_all(c: &mut Criterion) {
    bench_format::<VtdSl>(c, 48);
    bench_format::<AmdV1>(c, 48);
    bench_format::<ArmS1>(c, 48);
    bench_format::<RiscvSv>(c, 48);
    let mut group = c.benchmark_group("pagetable/x86_64-crate");
    for (name, len) in [("4K", K4), ("2M as 4K pages", M2)] {
        let mut x = x86::X86::new();
        group.bench_function(name, |b| {
            b.iter(|| x.map_unmap(black_box(IOVA_BASE + M2), PHYS_BASE + M2, len))
        });
    }
    group.finish();
    // The 4 KiB target, measured by criterion (no clock read per call): the engine warm (a
    // neighbouring page keeps the path, so only the leaf changes) for each format, next to
    // the x86_64 crate's 4 KiB map+unmap under the same settings. Every argument goes
    // through `black_box` on both sides, so neither is specialised for constant inputs.
    let mut group = c.benchmark_group("pagetable/4K map+unmap warm");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let mut x = x86::X86::new();
    group.bench_function("x86_64-crate", |b| {
        b.iter(|| {
            x.map_unmap(
                black_box(IOVA_BASE + M2),
                black_box(PHYS_BASE + M2),
                black_box(K4),
            )
        })
    });
    warm_4k::<VtdSl>(&mut group);
    warm_4k::<AmdV1>(&mut group);
    warm_4k::<ArmS1>(&mut group);
    warm_4k::<RiscvSv>(&mut group);
    group.finish();
}

/// One warm 4 KiB map+unmap case for format `F` (see [`Engine::with_neighbour`]).
fn warm_4k<F: Format>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let mut e = Engine::<F>::with_neighbour(48);
    group.bench_function(F::NAME, |b| {
        b.iter(|| e.range(black_box(WARM_4K), black_box(PHYS_BASE + M2), black_box(K4)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_millis(1500))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(10);
    targets = bench_all
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion then runs
    // each benchmark once as a smoke test, and the long table is skipped).
    if std::env::args().any(|a| a == "--bench") {
        report_table();
        if std::env::var_os("PT_BENCH_TABLE_ONLY").is_some() {
            return;
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

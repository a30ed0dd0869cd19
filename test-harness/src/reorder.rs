//! A physical memory that reorders CPU stores as a weakly ordered machine may, so that a
//! missing barrier toward the IOMMU is caught deterministically on the host.
//!
//! The ordering contract of [`iommu_hal::PhysMem`] says a CPU store may become visible to the
//! unit in any order relative to other stores, except that everything written before
//! [`PhysMem::order_writes`] is visible before anything written after it, and a
//! [`RegisterAccess`] write (a doorbell) is ordered after every earlier memory write.
//! [`ReorderMem`] makes that concrete:
//!
//! - the *device view* is a [`SharedMem`] (the one the register-level models read);
//! - a CPU store through [`ReorderMem`] is *pending*: the CPU reads its own pending stores
//!   back, the device view does not have them yet;
//! - [`PhysMem::order_writes`] (and so [`PhysMem::publish_u64`]'s barrier) commits every
//!   pending store to the device view, in program order; so does a register write through
//!   [`Ordered`] (the register half of the contract);
//! - after every CPU store a check chosen by the test (typically "these accesses translate to
//!   one of these results", asked of a model's side-effect-free fresh walk) runs against the
//!   device view extended by adversarial subsets of the pending stores: all of them (program
//!   order), the latest alone without the earlier ones, and, while few are pending, each one
//!   alone and all but each one. A store that publishes a structure without a barrier before
//!   it shows up as "the latest alone": the unit sees the pointer or the valid bit without
//!   what it covers.
//!
//! Freshly allocated frames are part of it: [`ReorderAlloc`] hands out frames whose zeroing is
//! a pending CPU store (the allocator zeroes with plain stores), while the device view still
//! holds [`ReorderMem::poison`] there, a value chosen to be harmful if the unit ever sees it
//! (the default, [`POISON`], is a present, pass-through VT-d context entry and a valid bypass
//! SMMUv3 STE dword 0). A table linked before its zeroing is ordered is then seen as garbage.
//!
//! To show that a given barrier matters, [`ReorderMem::skip_barrier`] drops the n-th
//! `order_writes` from now (a test-only switch in the memory, not in the code under test).
//!
//! Not modelled: the cache maintenance of non-coherent units (the walker here is coherent;
//! `sync_for_device` is only counted), and reads the CPU might make early.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::format;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

use iommu_hal::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};

use crate::sim::SharedMem;

/// What the device view holds in a fresh frame until its zeroing is ordered: bit 0 set with
/// bits 3:1 = 0b100. As a VT-d context entry's low half: present, TT = 10 (pass-through); as
/// an SMMUv3 STE dword 0: V = 1, Config = bypass; as a page-table entry of any format:
/// present (valid), pointing at physical page 0.
pub const POISON: u64 = 0x9;

/// One CPU store not yet ordered toward the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A 64-bit store.
    Word {
        /// Address.
        pa: PhysAddr,
        /// Value stored.
        value: u64,
    },
    /// The zeroing of a freshly allocated 4 KiB frame.
    ZeroFrame {
        /// The frame.
        pa: PhysAddr,
    },
}

/// Counters of a [`ReorderMem`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// CPU stores (each one pending until ordered).
    pub writes: u64,
    /// `order_writes` calls that committed.
    pub barriers: u64,
    /// `order_writes` calls dropped by [`ReorderMem::skip_barrier`].
    pub skipped_barriers: u64,
    /// Commits made by register writes through [`Ordered`].
    pub register_commits: u64,
    /// Device views the check was run against.
    pub views_checked: u64,
    /// Frames handed out by [`ReorderAlloc`].
    pub fresh_frames: u64,
}

type Check = Box<dyn FnMut() -> Result<(), String>>;

struct Inner {
    device: SharedMem,
    pending: Vec<Pending>,
    check: Option<Check>,
    violation: Option<String>,
    /// Indices (in `barrier_calls` numbering) of `order_writes` calls to drop.
    skip: BTreeSet<u64>,
    barrier_calls: u64,
    poison: u64,
    /// Up to this many pending stores, every single-store and all-but-one subset is checked.
    exhaustive_up_to: usize,
    stats: ReorderStats,
}

/// Physical memory whose CPU stores reach the device only when ordered (see the module
/// documentation). Cloning gives another handle on the same memory.
#[derive(Clone)]
pub struct ReorderMem(Rc<RefCell<Inner>>);

impl core::fmt::Debug for ReorderMem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let i = self.0.borrow();
        f.debug_struct("ReorderMem")
            .field("pending", &i.pending.len())
            .field("violation", &i.violation)
            .field("stats", &i.stats)
            .finish()
    }
}

impl ReorderMem {
    /// A reordering CPU side over `device`, the memory the unit (its model) reads and writes.
    pub fn new(device: SharedMem) -> Self {
        ReorderMem(Rc::new(RefCell::new(Inner {
            device,
            pending: Vec::new(),
            check: None,
            violation: None,
            skip: BTreeSet::new(),
            barrier_calls: 0,
            poison: POISON,
            exhaustive_up_to: 12,
            stats: ReorderStats::default(),
        })))
    }

    /// The device view.
    pub fn device(&self) -> SharedMem {
        self.0.borrow().device.clone()
    }

    /// Runs `check` after every CPU store from now on, against every adversarial view of the
    /// pending stores; its first failure is kept (see [`ReorderMem::violation`]). The check
    /// must read memory through the device view (a model's fresh walk), never through this
    /// accessor.
    pub fn set_check(&self, check: impl FnMut() -> Result<(), String> + 'static) {
        self.0.borrow_mut().check = Some(Box::new(check));
    }

    /// Stops checking.
    pub fn clear_check(&self) {
        self.0.borrow_mut().check = None;
    }

    /// The first check failure seen, if any.
    pub fn violation(&self) -> Option<String> {
        self.0.borrow().violation.clone()
    }

    /// Returns and forgets the first check failure.
    pub fn take_violation(&self) -> Option<String> {
        self.0.borrow_mut().violation.take()
    }

    /// Drops the `n`-th `order_writes` from now (0 = the next one): its stores stay pending,
    /// as if the barrier had been removed from the code.
    pub fn skip_barrier(&self, n: u64) {
        let mut i = self.0.borrow_mut();
        let at = i.barrier_calls + n;
        i.skip.insert(at);
    }

    /// `order_writes` calls made so far (committed or dropped).
    pub fn barrier_calls(&self) -> u64 {
        self.0.borrow().barrier_calls
    }

    /// Sets the value fresh frames hold in the device view until their zeroing is ordered.
    pub fn set_poison(&self, value: u64) {
        self.0.borrow_mut().poison = value;
    }

    /// The value fresh frames hold in the device view until their zeroing is ordered.
    pub fn poison(&self) -> u64 {
        self.0.borrow().poison
    }

    /// Up to how many pending stores every single-store and all-but-one subset is checked
    /// (beyond it: program order and the latest alone).
    pub fn set_exhaustive_up_to(&self, n: usize) {
        self.0.borrow_mut().exhaustive_up_to = n;
    }

    /// Counters.
    pub fn stats(&self) -> ReorderStats {
        self.0.borrow().stats
    }

    /// The stores not yet ordered, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        self.0.borrow().pending.clone()
    }

    /// Makes every pending store visible to the device, in program order (what a barrier or a
    /// register write does).
    pub fn commit(&self) {
        let mut i = self.0.borrow_mut();
        let pending = core::mem::take(&mut i.pending);
        let mut d = i.device.borrow_mut();
        for p in pending {
            apply(&mut d, p);
        }
    }

    /// Registers the frame at `pa` as freshly allocated: the CPU sees it zeroed, the device
    /// sees [`ReorderMem::poison`] in every word until the zeroing is ordered.
    pub fn fresh_frame(&self, pa: PhysAddr) {
        let mut i = self.0.borrow_mut();
        let poison = i.poison;
        {
            let mut d = i.device.borrow_mut();
            for w in 0..PAGE_SIZE / 8 {
                d.write(pa + 8 * w, poison);
            }
        }
        i.pending.push(Pending::ZeroFrame { pa });
        i.stats.fresh_frames += 1;
    }

    /// Runs the check now against every adversarial view of the pending stores.
    pub fn check_now(&self) {
        self.run_checks("an explicit check");
    }

    fn run_checks(&self, after: &str) {
        let (device, pending, mut check, exhaustive) = {
            let mut i = self.0.borrow_mut();
            if i.violation.is_some() {
                return;
            }
            let Some(c) = i.check.take() else {
                return;
            };
            (i.device.clone(), i.pending.clone(), c, i.exhaustive_up_to)
        };
        let mut first: Option<String> = None;
        let mut checked = 0;
        for (what, view) in views(pending.len(), exhaustive) {
            checked += 1;
            let saved = {
                let mut d = device.borrow_mut();
                let writes = d.writes;
                let mut saved = Vec::new();
                for &k in &view {
                    save_and_apply(&mut d, pending[k], &mut saved);
                }
                d.writes = writes;
                saved
            };
            let r = check();
            {
                let mut d = device.borrow_mut();
                let writes = d.writes;
                for &(pa, old) in saved.iter().rev() {
                    d.write(pa, old);
                }
                d.writes = writes;
            }
            if let Err(e) = r {
                let shown: Vec<Pending> = view.iter().map(|&k| pending[k]).collect();
                first = Some(format!(
                    "after {after}, with the device seeing {what} of the {} pending store(s) \
                     ({shown:x?}): {e}",
                    pending.len()
                ));
                break;
            }
        }
        let mut i = self.0.borrow_mut();
        i.stats.views_checked += checked;
        i.check = Some(check);
        if i.violation.is_none() {
            i.violation = first;
        }
    }
}

/// The subsets of `n` pending stores (indices, in program order) to show the device.
fn views(n: usize, exhaustive: usize) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut add = |what: String, v: Vec<usize>, out: &mut Vec<(String, Vec<usize>)>| {
        if seen.insert(v.clone()) {
            out.push((what, v));
        }
    };
    if n == 0 {
        add("none".into(), Vec::new(), &mut out);
        return out;
    }
    add("all (program order)".into(), (0..n).collect(), &mut out);
    add("the latest alone".into(), vec![n - 1], &mut out);
    if n <= exhaustive {
        for k in 0..n {
            add(format!("only store #{k}"), vec![k], &mut out);
            add(
                format!("all but store #{k}"),
                (0..n).filter(|&j| j != k).collect(),
                &mut out,
            );
        }
    }
    out
}

fn apply(d: &mut crate::sim::SimMemory, p: Pending) {
    match p {
        Pending::Word { pa, value } => d.write(pa, value),
        Pending::ZeroFrame { pa } => {
            for w in 0..PAGE_SIZE / 8 {
                d.write(pa + 8 * w, 0);
            }
        }
    }
}

fn save_and_apply(d: &mut crate::sim::SimMemory, p: Pending, saved: &mut Vec<(u64, u64)>) {
    match p {
        Pending::Word { pa, value } => {
            saved.push((pa, d.read(pa)));
            d.write(pa, value);
        }
        Pending::ZeroFrame { pa } => {
            for w in 0..PAGE_SIZE / 8 {
                let a = pa + 8 * w;
                saved.push((a, d.read(a)));
                d.write(a, 0);
            }
        }
    }
}

impl PhysMem for ReorderMem {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        let i = self.0.borrow();
        for p in i.pending.iter().rev() {
            match *p {
                Pending::Word { pa: a, value } if a == pa => return value,
                Pending::ZeroFrame { pa: f } if pa & !(PAGE_SIZE - 1) == f => return 0,
                _ => {}
            }
        }
        i.device.borrow().read(pa)
    }

    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        let n = {
            let mut i = self.0.borrow_mut();
            assert_eq!(pa % 8, 0, "unaligned 64-bit write at {pa:#x}");
            i.pending.push(Pending::Word { pa, value });
            i.stats.writes += 1;
            i.stats.writes
        };
        self.run_checks(&format!("CPU store #{n} ({value:#x} to {pa:#x})"));
    }

    fn order_writes(&mut self) {
        let skip = {
            let mut i = self.0.borrow_mut();
            let call = i.barrier_calls;
            i.barrier_calls += 1;
            let skip = i.skip.remove(&call);
            if skip {
                i.stats.skipped_barriers += 1;
            } else {
                i.stats.barriers += 1;
            }
            skip
        };
        if !skip {
            self.commit();
        }
    }
}

/// A register block whose writes commit the pending stores of a [`ReorderMem`] first: the
/// register half of the ordering contract (a doorbell never overtakes what it announces).
#[derive(Clone, Debug)]
pub struct Ordered<R> {
    /// The register block (a model's handle).
    pub regs: R,
    mem: ReorderMem,
    /// Whether writes commit (false: a platform that breaks the contract, for tests that
    /// show the register half is needed).
    pub commits: bool,
}

impl<R> Ordered<R> {
    /// `regs`, with every write ordered after the stores pending in `mem`.
    pub fn new(regs: R, mem: ReorderMem) -> Self {
        Ordered {
            regs,
            mem,
            commits: true,
        }
    }

    fn before_write(&self) {
        if self.commits {
            self.mem.0.borrow_mut().stats.register_commits += 1;
            self.mem.commit();
        }
    }
}

impl<R: RegisterAccess> RegisterAccess for Ordered<R> {
    fn read32(&mut self, offset: usize) -> u32 {
        self.regs.read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.before_write();
        self.regs.write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.regs.read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.before_write();
        self.regs.write64(offset, value)
    }
}

/// A frame allocator whose frames come zeroed for the CPU but poisoned for the device until
/// the zeroing is ordered (see [`ReorderMem::fresh_frame`]).
#[derive(Debug)]
pub struct ReorderAlloc<A> {
    /// The allocator underneath (e.g. a `SimAlloc` over the device view).
    pub inner: A,
    mem: ReorderMem,
}

impl<A> ReorderAlloc<A> {
    /// Frames from `inner`, registered as fresh with `mem`.
    pub fn new(inner: A, mem: ReorderMem) -> Self {
        ReorderAlloc { inner, mem }
    }
}

impl<A: FrameAlloc> FrameAlloc for ReorderAlloc<A> {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        let f = self.inner.alloc_frame()?;
        self.mem.fresh_frame(f);
        Some(f)
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        self.inner.free_frame(pa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A structure is "published" when word 0 of frame B is non-zero; it is correct only if
    /// word 1 of B (its payload) is visible by then.
    fn rig() -> (ReorderMem, SharedMem, Rc<Cell<u64>>) {
        let dev = SharedMem::new();
        let mem = ReorderMem::new(dev.clone());
        let views = Rc::new(Cell::new(0));
        let d = dev.clone();
        let v = views.clone();
        mem.set_check(move || {
            v.set(v.get() + 1);
            let m = d.borrow();
            if m.read(0x1000) != 0 && m.read(0x1008) != 0x55 {
                return Err(format!("published with payload {:#x}", m.read(0x1008)));
            }
            Ok(())
        });
        (mem, dev, views)
    }

    #[test]
    fn stores_wait_for_a_barrier_and_the_cpu_reads_its_own() {
        let (mut mem, dev, _) = rig();
        mem.write_u64(0x2000, 7);
        assert_eq!(mem.read_u64(0x2000), 7);
        assert_eq!(dev.borrow().read(0x2000), 0);
        mem.order_writes();
        assert_eq!(dev.borrow().read(0x2000), 7);
        assert!(mem.pending().is_empty());
    }

    #[test]
    fn publishing_with_a_barrier_passes() {
        let (mut mem, dev, views) = rig();
        mem.write_u64(0x1008, 0x55);
        mem.publish_u64(0x1000, 1);
        mem.order_writes();
        assert_eq!(mem.violation(), None);
        assert_eq!(dev.borrow().read(0x1000), 1);
        assert!(views.get() > 0);
    }

    #[test]
    fn the_latest_store_alone_catches_a_missing_barrier() {
        let (mut mem, _, _) = rig();
        mem.write_u64(0x1008, 0x55);
        mem.write_u64(0x1000, 1);
        let v = mem.violation().expect("caught");
        assert!(v.contains("the latest alone"), "{v}");
    }

    #[test]
    fn a_skipped_barrier_is_a_missing_barrier() {
        let (mut mem, _, _) = rig();
        mem.skip_barrier(0);
        mem.write_u64(0x1008, 0x55);
        mem.publish_u64(0x1000, 1);
        assert!(mem.violation().is_some());
        assert_eq!(mem.stats().skipped_barriers, 1);
    }

    #[test]
    fn register_writes_commit_only_through_ordered() {
        struct Regs(u32);
        impl RegisterAccess for Regs {
            fn read32(&mut self, _: usize) -> u32 {
                self.0
            }
            fn write32(&mut self, _: usize, v: u32) {
                self.0 = v;
            }
            fn read64(&mut self, _: usize) -> u64 {
                0
            }
            fn write64(&mut self, _: usize, _: u64) {}
        }
        let dev = SharedMem::new();
        let mut mem = ReorderMem::new(dev.clone());
        let mut r = Ordered::new(Regs(0), mem.clone());
        mem.write_u64(0x3000, 9);
        assert_eq!(dev.borrow().read(0x3000), 0);
        r.write32(0, 1);
        assert_eq!(dev.borrow().read(0x3000), 9);
        r.commits = false;
        mem.write_u64(0x3008, 9);
        r.write32(0, 2);
        assert_eq!(dev.borrow().read(0x3008), 0);
    }

    #[test]
    fn fresh_frames_are_poison_to_the_device_until_ordered() {
        let dev = SharedMem::new();
        let mut mem = ReorderMem::new(dev.clone());
        let mut a = ReorderAlloc::new(
            crate::sim::SimAlloc::new(dev.clone(), 0x10_0000, 4),
            mem.clone(),
        );
        let f = a.alloc_frame().unwrap();
        assert_eq!(mem.read_u64(f + 8), 0);
        assert_eq!(dev.borrow().read(f + 8), POISON);
        mem.order_writes();
        assert_eq!(dev.borrow().read(f + 8), 0);
    }

    #[test]
    fn views_cover_the_adversarial_subsets() {
        let v = views(3, 12);
        let sets: Vec<Vec<usize>> = v.into_iter().map(|x| x.1).collect();
        for want in [
            vec![0, 1, 2],
            vec![2],
            vec![0],
            vec![1],
            vec![1, 2],
            vec![0, 2],
            vec![0, 1],
        ] {
            assert!(sets.contains(&want), "{want:?}");
        }
        let big = views(40, 12);
        assert_eq!(
            big.len(),
            2,
            "beyond the limit: program order and the latest alone"
        );
    }
}

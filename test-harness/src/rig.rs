//! Small fixtures shared by the backend and server test suites that drive hal's backends
//! against the hardware models. These are test scaffolding around hal, not checks of it: the
//! models and walkers stay independent of hal.

use std::cell::Cell;
use std::rc::Rc;

use embedded_hal::delay::DelayNs;
use iommu_hal::FrameAlloc;
use iommu_hal::backend::{DomainConfig, UnitInfo};
use iommu_hal::pagetable::{Format, PageTable, TableConfig};

/// A delay that only counts: tests never sleep, and bounded waits become countable (the
/// nanoseconds asked for so far, shared by every clone).
#[derive(Debug, Default, Clone)]
pub struct FakeDelay(pub Rc<Cell<u64>>);

impl DelayNs for FakeDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.0.set(self.0.get() + u64::from(ns));
    }
}

/// The table configuration a unit reporting `info` walks (what the server derives for one
/// unit).
pub fn unit_table_config(info: &UnitInfo) -> TableConfig {
    TableConfig {
        addr_width: info.addr_width,
        phys_width: info.phys_width,
        leaf_sizes: info.leaf_sizes,
        split_live_blocks: info.split_live_blocks,
        coherent: info.coherent_walk,
    }
}

/// An empty page table for a unit reporting `info`, its root from `alloc`.
pub fn unit_table<F: Format, A: FrameAlloc + ?Sized>(
    info: &UnitInfo,
    alloc: &mut A,
) -> PageTable<F> {
    PageTable::new(unit_table_config(info), alloc).expect("table")
}

/// The domain `tag` over the tables `pt`.
pub fn domain<F: Format>(pt: &PageTable<F>, tag: u16) -> DomainConfig {
    DomainConfig {
        tag,
        root: pt.root(),
        levels: pt.levels(),
        addr_width: pt.config().addr_width,
    }
}

/// Actions armed on a [`Tap`]: (register offset, action), run once each.
type Armed = Rc<std::cell::RefCell<Vec<(usize, Box<dyn FnOnce()>)>>>;

/// A register access that forwards to `inner` and, just before the next write to an armed
/// offset, runs the action armed for it (once). Lets a test make the hardware act in the
/// middle of a driver's sequence, e.g. record a fault while the driver drains.
pub struct Tap<R> {
    inner: R,
    armed: Armed,
}

impl<R> Tap<R> {
    /// A tap on `inner` with nothing armed.
    pub fn new(inner: R) -> Self {
        Tap {
            inner,
            armed: Rc::default(),
        }
    }

    /// A handle that arms actions on this tap after it was given to a driver.
    pub fn arming(&self) -> TapArm {
        TapArm(self.armed.clone())
    }
}

/// Arms actions on a [`Tap`].
pub struct TapArm(Armed);

impl TapArm {
    /// Runs `action` just before the next write to register `offset`.
    pub fn before_write(&self, offset: usize, action: impl FnOnce() + 'static) {
        self.0.borrow_mut().push((offset, Box::new(action)));
    }

    /// Whether every armed action ran.
    pub fn all_ran(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

impl<R> Tap<R> {
    fn fire(&self, offset: usize) {
        let hit = {
            let mut a = self.armed.borrow_mut();
            a.iter()
                .position(|(o, _)| *o == offset)
                .map(|i| a.remove(i).1)
        };
        if let Some(action) = hit {
            action();
        }
    }
}

impl<R: iommu_hal::RegisterAccess> iommu_hal::RegisterAccess for Tap<R> {
    fn read32(&mut self, offset: usize) -> u32 {
        self.inner.read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.fire(offset);
        self.inner.write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.fire(offset);
        self.inner.write64(offset, value)
    }
}

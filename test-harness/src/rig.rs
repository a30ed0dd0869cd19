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

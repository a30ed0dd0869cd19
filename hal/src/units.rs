//! The backend shape every vendor shares: a bounded set of units of one kind, one
//! physical-memory accessor and one delay source, implementing [`Backend`] by forwarding each
//! call to the unit it names.
//!
//! A vendor writes its unit type (register bring-up, tables, queues, faults) and implements
//! [`Unit`] for it; [`UnitBackend`] does the rest: unit lookup (a bad index is the unit's
//! [`Unit::BAD_UNIT`] error, never a panic), the bounded unit list, per-unit counters. The
//! vendor backends are aliases: [`crate::vtd::VtdBackend`], [`crate::smmuv3::SmmuBackend`],
//! [`crate::amd::AmdBackend`], [`crate::riscv::RiscvBackend`].

use embedded_hal::delay::DelayNs;
use heapless::Vec;

use crate::backend::{
    Backend, BackendError, DomainConfig, FaultInterrupt, FaultRecord, UnitIndex, UnitInfo,
};
use crate::mem::{FrameAlloc, PhysMem};
use crate::pagetable::{Format, Gather};

/// One IOMMU unit as [`UnitBackend`] drives it. Each method is the [`Backend`] method of the
/// same name for this unit, given the backend's shared memory accessor and delay source.
pub trait Unit: Sized {
    /// The page-table format the unit walks.
    type Format: Format;
    /// The unit's error.
    type Error: BackendError;
    /// The register access handle the unit is brought up with.
    type Regs;
    /// What bring-up may be told (limits, options).
    type Config;
    /// The unit's event counters.
    type Counters: Copy;

    /// The info reported for an out-of-range index when the backend has no unit at all.
    const NO_UNIT: UnitInfo;
    /// The error for an index naming no unit.
    const BAD_UNIT: Self::Error;
    /// The error for one unit more than the backend holds.
    const TOO_MANY_UNITS: Self::Error;

    /// Brings the unit up: translation on, every device blocked.
    fn bring_up<M, D, A>(
        regs: Self::Regs,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut A,
        config: Self::Config,
    ) -> Result<Self, Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
        A: FrameAlloc + ?Sized;

    /// What the unit can do.
    fn unit_info(&self) -> UnitInfo;

    /// The unit's counters.
    fn unit_counters(&self) -> Self::Counters;

    /// See [`Backend::prepare`]; the default prepares nothing.
    fn prepare_device<M>(
        &mut self,
        mem: &mut M,
        alloc: &mut dyn FrameAlloc,
        device: u32,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
    {
        let _ = (mem, alloc, device);
        Ok(())
    }

    /// See [`Backend::attach`].
    fn attach_device<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut dyn FrameAlloc,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized;

    /// See [`Backend::block`].
    fn block_device<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        device: u32,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized;

    /// See [`Backend::invalidate`].
    fn invalidate_gather<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
        gather: &Gather,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized;

    /// See [`Backend::invalidate_all`].
    fn invalidate_tag<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        tag: u16,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized;

    /// See [`Backend::release_tag`]; the default holds nothing per domain.
    fn release_tag<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        alloc: &mut dyn FrameAlloc,
        tag: u16,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let _ = (mem, delay, alloc, tag);
        Ok(())
    }

    /// See [`Backend::enable_fault_interrupt`]; `delay` bounds any handshake with the unit.
    fn enable_interrupt<M, D>(
        &mut self,
        mem: &mut M,
        delay: &mut D,
        irq: FaultInterrupt,
    ) -> Result<(), Self::Error>
    where
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized;

    /// See [`Backend::drain_faults`]; `unit` is this unit's index, for the records.
    fn drain<M>(
        &mut self,
        mem: &mut M,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, Self::Error>
    where
        M: PhysMem + ?Sized;
}

/// All units of one kind of a machine (up to `N`), sharing one physical-memory accessor and
/// one delay source; implements [`Backend`] with the units' format.
#[derive(Debug)]
pub struct UnitBackend<U, M, D, const N: usize> {
    units: Vec<U, N>,
    mem: M,
    delay: D,
}

impl<U, M, D, const N: usize> UnitBackend<U, M, D, N>
where
    U: Unit,
    M: PhysMem,
    D: DelayNs,
{
    /// A backend with no unit yet.
    pub const fn new(mem: M, delay: D) -> Self {
        UnitBackend {
            units: Vec::new(),
            mem,
            delay,
        }
    }

    /// Brings up one more unit (see [`Unit::bring_up`]) and returns its index.
    pub fn add_unit<A: FrameAlloc + ?Sized>(
        &mut self,
        regs: U::Regs,
        alloc: &mut A,
        config: U::Config,
    ) -> Result<UnitIndex, U::Error> {
        if self.units.is_full() {
            return Err(U::TOO_MANY_UNITS);
        }
        let unit = U::bring_up(regs, &mut self.mem, &mut self.delay, alloc, config)?;
        let index = self.units.len();
        self.units.push(unit).map_err(|_| U::TOO_MANY_UNITS)?;
        Ok(index)
    }

    /// Unit `i`, if any.
    pub fn unit(&self, i: UnitIndex) -> Option<&U> {
        self.units.get(i)
    }

    /// Unit `i`, mutably, if any.
    pub fn unit_mut(&mut self, i: UnitIndex) -> Option<&mut U> {
        self.units.get_mut(i)
    }

    /// Counters of unit `i`, if any.
    pub fn counters(&self, i: UnitIndex) -> Option<U::Counters> {
        self.units.get(i).map(U::unit_counters)
    }

    /// The physical-memory accessor.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The physical-memory accessor, mutably.
    pub fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The delay source.
    pub fn delay_mut(&mut self) -> &mut D {
        &mut self.delay
    }

    /// Unit `unit` with the shared accessor and delay source, or [`Unit::BAD_UNIT`].
    #[allow(clippy::type_complexity)]
    pub(crate) fn parts(&mut self, unit: UnitIndex) -> Result<(&mut U, &mut M, &mut D), U::Error> {
        let u = self.units.get_mut(unit).ok_or(U::BAD_UNIT)?;
        Ok((u, &mut self.mem, &mut self.delay))
    }
}

impl<U, M, D, const N: usize> Backend for UnitBackend<U, M, D, N>
where
    U: Unit,
    M: PhysMem,
    D: DelayNs,
{
    type Format = U::Format;
    type Error = U::Error;

    fn unit_count(&self) -> usize {
        self.units.len()
    }

    fn unit_info(&self, unit: UnitIndex) -> UnitInfo {
        self.units
            .get(unit)
            .or_else(|| self.units.first())
            .map_or(U::NO_UNIT, U::unit_info)
    }

    fn prepare(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
    ) -> Result<(), U::Error> {
        let (u, mem, _) = self.parts(unit)?;
        u.prepare_device(mem, alloc, device)
    }

    fn attach(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), U::Error> {
        let (u, mem, delay) = self.parts(unit)?;
        u.attach_device(mem, delay, alloc, device, domain)
    }

    fn block(&mut self, unit: UnitIndex, device: u32) -> Result<(), U::Error> {
        let (u, mem, delay) = self.parts(unit)?;
        u.block_device(mem, delay, device)
    }

    fn invalidate(&mut self, unit: UnitIndex, tag: u16, gather: &Gather) -> Result<(), U::Error> {
        let (u, mem, delay) = self.parts(unit)?;
        u.invalidate_gather(mem, delay, tag, gather)
    }

    fn invalidate_all(&mut self, unit: UnitIndex, tag: u16) -> Result<(), U::Error> {
        let (u, mem, delay) = self.parts(unit)?;
        u.invalidate_tag(mem, delay, tag)
    }

    fn release_tag(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        tag: u16,
    ) -> Result<(), U::Error> {
        let (u, mem, delay) = self.parts(unit)?;
        u.release_tag(mem, delay, alloc, tag)
    }

    fn enable_fault_interrupt(
        &mut self,
        unit: UnitIndex,
        irq: FaultInterrupt,
    ) -> Result<(), U::Error> {
        let (u, mem, delay) = self.parts(unit)?;
        u.enable_interrupt(mem, delay, irq)
    }

    fn drain_faults(
        &mut self,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, U::Error> {
        let (u, mem, _) = self.parts(unit)?;
        u.drain(mem, unit, sink)
    }
}

//! Primary fault logging and the fault event: draining the fault recording registers
//! (VT-d spec 7.2.1 Primary Fault Logging, 11.4.9 Fault Status Register, 11.4.14 Fault
//! Recording Registers) and programming the fault event interrupt (7.3 Non-Recoverable Fault
//! Event, 11.4.10 to 11.4.13).
//!
//! The unit has `CAP.NFR + 1` recording registers of 128 bits at `CAP.FRO * 16`. A record is
//! valid while F is set; software reads it and clears F (W1C). FSTS.PPF summarises "some F is
//! set"; FSTS.PFO reports records lost because every register was full.
//!
//! The fault event (7.3) is an interrupt condition only when a status bit (PPF, PFO, the
//! invalidation queue errors) becomes set while none was set before: a fault recorded while
//! PPF is still set raises nothing. [`drain`] therefore keeps going until it has seen PPF clear
//! after clearing PFO, so that the next fault is a new condition and raises the next event
//! (the interrupt is re-armed by the drain). The event is a message (address and data written
//! by the unit, never remapped: 7.3), held pending in FECTL.IP while FECTL.IM is set.

use super::VtdError;
use super::regs::{self, Ecap, fectl, frcd, fsts};
use super::tables::{self, RootTable, levels_for_aw};
use crate::backend::{FaultInterrupt, FaultReason, FaultRecord, UnitIndex};
use crate::mem::{PhysMem, RegisterAccess};
use crate::pagetable::{Format, Pte};

/// Fault reasons of untranslated requests in legacy mode (VT-d spec 7.1.3, table of
/// non-recoverable fault conditions).
pub mod reason {
    /// The root entry's P is clear.
    pub const ROOT_NOT_PRESENT: u8 = 0x1;
    /// The context entry's P is clear.
    pub const CONTEXT_NOT_PRESENT: u8 = 0x2;
    /// The context entry is programmed invalidly (reserved AW / TT values).
    pub const CONTEXT_INVALID: u8 = 0x3;
    /// The input address is above the domain's address width (2^AGAW - 1).
    pub const ADDRESS_BEYOND_AW: u8 = 0x4;
    /// A write request to a page whose W is clear (including a not-present entry, R = W = 0).
    pub const WRITE: u8 = 0x5;
    /// A read request to a page whose R is clear (including a not-present entry, R = W = 0).
    pub const READ: u8 = 0x6;
    /// A translated or translation request blocked by the context entry's TT.
    pub const TT_BLOCKED: u8 = 0xd;
}

/// Decodes one raw record (`lo`, `hi` as read from a recording register) into a
/// [`FaultRecord`]. Reasons 5 and 6 do not say whether the page was not present or only lacked
/// the permission: [`classify`] looks at the tables to tell the two apart.
pub fn decode<M: PhysMem + ?Sized, F: Format>(
    mem: &M,
    root: RootTable,
    unit: UnitIndex,
    lo: u64,
    hi: u64,
) -> FaultRecord {
    let sid = frcd::sid(hi);
    let iova = lo & frcd::FI_MASK;
    let write = hi & frcd::T1 == 0;
    let code = frcd::reason(hi);
    let reason = match code {
        reason::ROOT_NOT_PRESENT | reason::CONTEXT_NOT_PRESENT | reason::TT_BLOCKED => {
            FaultReason::Blocked
        }
        reason::ADDRESS_BEYOND_AW => FaultReason::AddressSize,
        reason::WRITE | reason::READ => classify::<M, F>(mem, root, sid, iova, write),
        other => FaultReason::Other(other as u16),
    };
    FaultRecord {
        unit,
        device: sid as u32,
        iova,
        write,
        reason,
    }
}

/// Tells a not-present page from a permission fault for reasons 5/6 by walking the device's
/// current second-level table: a present leaf that forbids the access is a
/// [`FaultReason::Permission`]; anything else (no leaf, or a leaf that now allows the access
/// because the mapping changed since the fault, or a device no longer attached) is
/// [`FaultReason::NotPresent`]. The walk reads at most one entry per level.
pub fn classify<M: PhysMem + ?Sized, F: Format>(
    mem: &M,
    root: RootTable,
    sid: u16,
    iova: u64,
    write: bool,
) -> FaultReason {
    let bus = (sid >> 8) as u8;
    let Some(ct) = root.context_table(mem, bus) else {
        return FaultReason::NotPresent;
    };
    let ctx = tables::read_context(mem, tables::context_entry_pa(ct, sid as u8));
    if !ctx.present() {
        return FaultReason::NotPresent;
    }
    let Some(levels) = levels_for_aw(ctx.aw()) else {
        return FaultReason::NotPresent;
    };
    let mut table = ctx.slptptr();
    for level in (0..levels).rev() {
        let shift = 12 + F::LEVEL_BITS * level as u32;
        let idx = (iova >> shift) & ((1 << F::LEVEL_BITS) - 1);
        match F::decode(mem.read_u64(table + idx * 8), level) {
            Pte::Table(next) if level > 0 => table = next,
            Pte::Leaf { perms, .. } => {
                let allowed = if write { perms.write } else { perms.read };
                return if allowed {
                    FaultReason::NotPresent
                } else {
                    FaultReason::Permission
                };
            }
            _ => return FaultReason::NotPresent,
        }
    }
    FaultReason::NotPresent
}

/// Passes over the recording registers one drain makes at most before giving up on a unit
/// that keeps recording faults (each pass reads every register once).
pub const MAX_DRAIN_PASSES: u32 = 4;

/// Programs the fault event (VT-d spec 7.3, 11.4.10 to 11.4.13) to be the message `irq` and
/// unmasks it: FECTL.IM is set first (so that nothing is sent to a half-written address),
/// then FEDATA, FEADDR and (on units with extended interrupt mode, ECAP.EIM) FEUADDR are
/// written, then IM is cleared. A fault event already pending (FECTL.IP, e.g. faults recorded
/// before this call) is sent as IM clears.
///
/// The unit signals only by message: [`FaultInterrupt::Wired`] is refused, as are a message
/// address with its reserved bits 1:0 set, one above 4 GiB on a unit without EIM, and data
/// wider than the 16 bits of FEDATA.IMD. A refused request writes nothing.
pub fn enable_interrupt<R>(regs: &mut R, ecap: Ecap, irq: FaultInterrupt) -> Result<(), VtdError>
where
    R: RegisterAccess + ?Sized,
{
    let FaultInterrupt::Msi { address, data } = irq else {
        return Err(VtdError::Unsupported);
    };
    let upper = (address >> 32) as u32;
    if address & fectl::ADDR_RESERVED != 0
        || (upper != 0 && !ecap.eim())
        || data & !fectl::DATA_MASK != 0
    {
        return Err(VtdError::Unsupported);
    }
    regs.write32(regs::FECTL, fectl::IM);
    regs.write32(regs::FEDATA, data);
    regs.write32(regs::FEADDR, address as u32);
    if ecap.eim() {
        regs.write32(regs::FEUADDR, upper);
    }
    regs.write32(regs::FECTL, 0);
    Ok(())
}

/// Drains every recording register with F set, oldest first (starting at FSTS.FRI), clearing
/// F (W1C) after reading each, then reports and clears FSTS.PFO. When FSTS.PPF still reads set
/// afterwards (a fault was recorded in a register already passed), it drains again, at most
/// [`MAX_DRAIN_PASSES`] times, so that the unit is left with no status set and the next fault
/// raises a new fault event (7.3). Returns the overflow flag and the number of records
/// delivered.
pub fn drain<R, M, F>(
    regs: &mut R,
    mem: &M,
    root: RootTable,
    unit: UnitIndex,
    fro_off: usize,
    count: u32,
    sink: &mut dyn FnMut(FaultRecord),
) -> (bool, u64)
where
    R: RegisterAccess + ?Sized,
    M: PhysMem + ?Sized,
    F: Format,
{
    let mut n = 0;
    let mut overflow = false;
    let count = count.max(1);
    for _ in 0..MAX_DRAIN_PASSES {
        let start = fsts::fri(regs.read32(regs::FSTS)) % count;
        for k in 0..count {
            let i = (start + k) % count;
            let off = fro_off + i as usize * regs::FRCD_SIZE;
            let hi = regs.read64(off + 8);
            if hi & frcd::F == 0 {
                continue;
            }
            let lo = regs.read64(off);
            // W1C: writing F alone clears the record; every other field is read-only.
            regs.write64(off + 8, frcd::F);
            sink(decode::<M, F>(mem, root, unit, lo, hi));
            n += 1;
        }
        let f = regs.read32(regs::FSTS);
        if f & fsts::PFO != 0 {
            overflow = true;
            regs.write32(regs::FSTS, fsts::PFO);
        }
        if f & fsts::PPF == 0 {
            break;
        }
    }
    (overflow, n)
}

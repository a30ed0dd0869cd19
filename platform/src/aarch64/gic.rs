//! The GIC, as far as an image needs it to take an SMMU's wired interrupts: the version and
//! register regions come from the device tree ([`crate::devtree::Gic`]); the lines to take are
//! the SMMU node's Event queue and GERROR SPIs ([`crate::devtree::SmmuIrqs`]).
//!
//! Arm GIC Architecture Specification (IHI 0048B for GICv2, IHI 0069 for GICv3):
//!
//! - GICv2: distributor GICD_CTLR.Enable, per SPI GICD_ICFGR (edge), GICD_IPRIORITYR,
//!   GICD_ITARGETSR (this CPU's interface, as GICD_ITARGETSR0 reads it), GICD_ISENABLER; CPU
//!   interface GICC_PMR (accept every priority), GICC_CTLR.Enable; GICC_IAR to acknowledge,
//!   GICC_EOIR to end. Without the Security Extensions (QEMU virt's default) every interrupt
//!   is group 0 and signalled as IRQ.
//! - GICv3: GICD_CTLR.ARE then the group enables (waiting for RWP), the redistributor of this
//!   CPU (found by GICR_TYPER's affinity) woken (GICR_WAKER.ProcessorSleep cleared, wait for
//!   ChildrenAsleep), per SPI GICD_IGROUPR (group 1), GICD_ICFGR, GICD_IPRIORITYR,
//!   GICD_IROUTER (this CPU's affinity) and GICD_ISENABLER; the CPU interface through system
//!   registers: ICC_SRE_EL1.SRE, ICC_PMR_EL1, ICC_BPR1_EL1, ICC_IGRPEN1_EL1; ICC_IAR1_EL1 to
//!   acknowledge and ICC_EOIR1_EL1 to end (EOImode 0: priority drop and deactivation).
//!
//! The IRQ vector (see `super::exceptions`) calls `irq_handler`, which acknowledges one
//! interrupt, calls [`crate::fault_irq::on_interrupt`] when it is a registered fault line,
//! and ends it.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::devtree::{self, GicVersion, Interrupt};

/// Distributor registers (IHI 0048B 4.3, IHI 0069 12.9).
const GICD_CTLR: usize = 0x000;
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800;
const GICD_ICFGR: usize = 0xc00;
const GICD_IROUTER: usize = 0x6000;
/// GICD_CTLR (GICv3, one security state): EnableGrp0, EnableGrp1, ARE, RWP.
const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_RWP: u32 = 1 << 31;
/// CPU interface registers (GICv2, IHI 0048B 4.4).
const GICC_CTLR: usize = 0x00;
const GICC_PMR: usize = 0x04;
const GICC_BPR: usize = 0x08;
const GICC_IAR: usize = 0x0c;
const GICC_EOIR: usize = 0x10;
/// Redistributor registers (GICv3, IHI 0069 12.11): GICR_TYPER (64-bit), GICR_WAKER.
const GICR_TYPER: usize = 0x08;
const GICR_WAKER: usize = 0x14;
const TYPER_VLPIS: u64 = 1 << 1;
const TYPER_LAST: u64 = 1 << 4;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// Interrupt ids 1020..1024 are special (spurious).
const SPECIAL_INTIDS: u32 = 1020;
/// The priority given to fault lines (any value below the 0xff priority mask).
const PRIORITY: u32 = 0xa0;
/// Register reads a bounded poll makes (RWP, ChildrenAsleep) before giving up.
const POLLS: u32 = 1_000_000;

/// 0: not set up, else the GIC version (2 or 3).
static VERSION: AtomicU32 = AtomicU32::new(0);
static GICD: AtomicUsize = AtomicUsize::new(0);
/// GICv2: the CPU interface.
static GICC: AtomicUsize = AtomicUsize::new(0);
/// The registered fault lines (0 = free slot).
static FAULT_LINES: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
/// Interrupts taken that were no registered fault line.
static OTHER: AtomicU32 = AtomicU32::new(0);

/// Why the GIC cannot deliver an SMMU's interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum GicError {
    /// A register region lies in RAM (1 GiB..4 GiB, mapped Normal by the boot code) or
    /// beyond what the boot code maps.
    NotDeviceMemory {
        /// The region's base address.
        base: u64,
    },
    /// No redistributor in the region has this CPU's affinity.
    NoRedistributor,
    /// GICD_CTLR.RWP or GICR_WAKER.ChildrenAsleep did not clear.
    Timeout,
    /// The CPU interface's system registers could not be enabled (ICC_SRE_EL1.SRE stays 0).
    NoSystemRegisters,
    /// The interrupt id is not an SPI this module configures, or every slot is taken.
    BadLine {
        /// The interrupt id.
        line: u32,
    },
    /// [`init`] was not called.
    NotSetUp,
}

impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            GicError::NotDeviceMemory { base } => write!(
                f,
                "GIC registers at {base:#x} lie in RAM or beyond what the boot code maps as \
                 device memory"
            ),
            GicError::NoRedistributor => {
                f.write_str("no GIC redistributor has this CPU's affinity")
            }
            GicError::Timeout => {
                f.write_str("GICD_CTLR.RWP or GICR_WAKER.ChildrenAsleep did not clear in time")
            }
            GicError::NoSystemRegisters => f.write_str(
                "the GICv3 CPU interface's system registers cannot be enabled (ICC_SRE_EL1.SRE \
                 stays 0)",
            ),
            GicError::BadLine { line } => write!(
                f,
                "interrupt {line} is not an SPI (32..1019), or every fault-line slot is taken"
            ),
            GicError::NotSetUp => f.write_str("the GIC was not set up (call gic::init first)"),
        }
    }
}

impl core::error::Error for GicError {}

fn read32(base: usize, off: usize) -> u32 {
    // SAFETY: `init` checked the base is one of the GIC's register regions from the device
    // tree, in the range the boot code maps as Device-nGnRnE, and `off` is a register in it.
    unsafe { core::ptr::read_volatile((base + off) as *const u32) }
}

fn write32(base: usize, off: usize, v: u32) {
    // SAFETY: as in `read32`.
    unsafe { core::ptr::write_volatile((base + off) as *mut u32, v) }
}

fn read64(base: usize, off: usize) -> u64 {
    // SAFETY: as in `read32` (a 64-bit register).
    unsafe { core::ptr::read_volatile((base + off) as *const u64) }
}

fn write64(base: usize, off: usize, v: u64) {
    // SAFETY: as in `read32` (a 64-bit register).
    unsafe { core::ptr::write_volatile((base + off) as *mut u64, v) }
}

/// Whether `[base, base + size)` lies in what the boot code maps as device memory: below 1 GiB
/// or from 4 GiB up to the 39-bit end of its identity map.
fn device_memory(r: devtree::Region) -> bool {
    let end = r.base.saturating_add(r.size);
    end <= 1 << 30 || (r.base >= 4 << 30 && end <= 1 << 39)
}

/// MPIDR_EL1's affinity fields packed as Aff3.Aff2.Aff1.Aff0 (32 bits, the GICR_TYPER layout).
fn affinity() -> u32 {
    use aarch64_cpu::registers::{MPIDR_EL1, Readable};
    let mpidr = MPIDR_EL1.get();
    ((mpidr >> 8) & 0xff00_0000) as u32 | (mpidr & 0x00ff_ffff) as u32
}

fn wait_rwp(gicd: usize) -> Result<(), GicError> {
    for _ in 0..POLLS {
        if read32(gicd, GICD_CTLR) & CTLR_RWP == 0 {
            return Ok(());
        }
    }
    Err(GicError::Timeout)
}

/// Sets the GIC up for this CPU to take SPIs: distributor and CPU interface enabled, every
/// priority accepted. No line is enabled yet ([`enable_fault_line`]).
pub fn init(gic: &devtree::Gic) -> Result<(), GicError> {
    for r in [gic.distributor, gic.cpu_or_redistributor] {
        if !device_memory(r) {
            return Err(GicError::NotDeviceMemory { base: r.base });
        }
    }
    let gicd = gic.distributor.base as usize;
    let other = gic.cpu_or_redistributor.base as usize;
    match gic.version {
        GicVersion::V2 => {
            write32(gicd, GICD_CTLR, 1);
            write32(other, GICC_PMR, 0xff);
            write32(other, GICC_BPR, 0);
            write32(other, GICC_CTLR, 1);
            GICC.store(other, Ordering::Relaxed);
            VERSION.store(2, Ordering::Relaxed);
        }
        GicVersion::V3 => {
            // Affinity routing first, then the groups (one security state: QEMU virt).
            write32(gicd, GICD_CTLR, CTLR_ARE);
            wait_rwp(gicd)?;
            write32(
                gicd,
                GICD_CTLR,
                CTLR_ARE | CTLR_ENABLE_GRP1 | CTLR_ENABLE_GRP0,
            );
            wait_rwp(gicd)?;
            let rd = redistributor(gic.cpu_or_redistributor)?;
            write32(
                rd,
                GICR_WAKER,
                read32(rd, GICR_WAKER) & !WAKER_PROCESSOR_SLEEP,
            );
            let mut awake = false;
            for _ in 0..POLLS {
                if read32(rd, GICR_WAKER) & WAKER_CHILDREN_ASLEEP == 0 {
                    awake = true;
                    break;
                }
            }
            if !awake {
                return Err(GicError::Timeout);
            }
            let sre: u64;
            // SAFETY: ICC_SRE_EL1 (S3_0_C12_C12_5) with SRE set selects the system-register
            // interface; with the GIC's CPU interface present (GICv3) the access is defined
            // (the boot code allows it from EL2); `isb` makes it take effect.
            unsafe {
                core::arch::asm!(
                    "mrs {t}, S3_0_C12_C12_5",
                    "orr {t}, {t}, #1",
                    "msr S3_0_C12_C12_5, {t}",
                    "isb",
                    "mrs {t}, S3_0_C12_C12_5",
                    t = out(reg) sre,
                    options(nomem, nostack)
                )
            };
            if sre & 1 == 0 {
                return Err(GicError::NoSystemRegisters);
            }
            // SAFETY: ICC_PMR_EL1 (S3_0_C4_C6_0) = 0xff accepts every priority,
            // ICC_BPR1_EL1 (S3_0_C12_C12_3) = 0 no preemption grouping, ICC_IGRPEN1_EL1
            // (S3_0_C12_C12_7) = 1 enables group 1 at this CPU interface.
            unsafe {
                core::arch::asm!(
                    "msr S3_0_C4_C6_0, {pmr}",
                    "msr S3_0_C12_C12_3, xzr",
                    "msr S3_0_C12_C12_7, {one}",
                    "isb",
                    pmr = in(reg) 0xffu64,
                    one = in(reg) 1u64,
                    options(nomem, nostack)
                )
            };
            VERSION.store(3, Ordering::Relaxed);
        }
    }
    GICD.store(gicd, Ordering::Relaxed);
    Ok(())
}

/// The redistributor frame of this CPU in `region` (GICR_TYPER.Affinity, frames of 128 KiB,
/// 256 KiB with virtual LPIs, up to the one marked Last).
fn redistributor(region: devtree::Region) -> Result<usize, GicError> {
    let aff = affinity();
    let mut off = 0u64;
    while off < region.size {
        let rd = (region.base + off) as usize;
        let typer = read64(rd, GICR_TYPER);
        if (typer >> 32) as u32 == aff {
            return Ok(rd);
        }
        if typer & TYPER_LAST != 0 {
            break;
        }
        off += if typer & TYPER_VLPIS != 0 {
            0x4_0000
        } else {
            0x2_0000
        };
    }
    Err(GicError::NoRedistributor)
}

/// Read-modify-writes the `width`-bit field of interrupt `n` in the distributor register
/// array at `base` (fields packed `32 / width` to a word).
fn set_field(gicd: usize, base: usize, n: u32, width: u32, value: u32) {
    let per_word = 32 / width;
    let off = base + 4 * (n / per_word) as usize;
    let shift = (n % per_word) * width;
    let mask = ((1u64 << width) - 1) as u32;
    let v = (read32(gicd, off) & !(mask << shift)) | ((value & mask) << shift);
    write32(gicd, off, v);
}

/// Routes SPI `line` to this CPU, enables it, and registers it as a fault line: taking it
/// calls [`crate::fault_irq::on_interrupt`].
pub fn enable_fault_line(line: Interrupt) -> Result<(), GicError> {
    let version = VERSION.load(Ordering::Relaxed);
    let gicd = GICD.load(Ordering::Relaxed);
    if version == 0 {
        return Err(GicError::NotSetUp);
    }
    let n = line.intid;
    if !(32..SPECIAL_INTIDS).contains(&n) {
        return Err(GicError::BadLine { line: n });
    }
    let registered = FAULT_LINES.iter().any(|s| {
        match s.compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(cur) => cur == n,
        }
    });
    if !registered {
        return Err(GicError::BadLine { line: n });
    }
    // ICFGR: bit 1 of the 2-bit field is 1 for edge-triggered.
    set_field(gicd, GICD_ICFGR, n, 2, if line.edge { 0b10 } else { 0b00 });
    set_field(gicd, GICD_IPRIORITYR, n, 8, PRIORITY);
    if version == 2 {
        // GICD_ITARGETSR0..7 read as this CPU's own interface bit.
        let me = read32(gicd, GICD_ITARGETSR) & 0xff;
        set_field(gicd, GICD_ITARGETSR, n, 8, if me == 0 { 1 } else { me });
    } else {
        set_field(gicd, GICD_IGROUPR, n, 1, 1);
        let aff = u64::from(affinity());
        let route = (aff & 0xff00_0000) << 8 | (aff & 0x00ff_ffff);
        write64(gicd, GICD_IROUTER + 8 * n as usize, route);
    }
    write32(gicd, GICD_ISENABLER + 4 * (n / 32) as usize, 1 << (n % 32));
    Ok(())
}

/// Interrupts taken that were not a registered fault line.
pub fn other_interrupts() -> u32 {
    OTHER.load(Ordering::Relaxed)
}

/// Acknowledges the highest-priority pending interrupt: its id, `None` when spurious.
fn acknowledge() -> Option<u32> {
    let intid = match VERSION.load(Ordering::Relaxed) {
        2 => read32(GICC.load(Ordering::Relaxed), GICC_IAR) & 0x3ff,
        3 => {
            let iar: u64;
            // SAFETY: ICC_IAR1_EL1 (S3_0_C12_C12_0) acknowledges a group 1 interrupt; the
            // system-register interface was enabled by `init`.
            unsafe {
                core::arch::asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nomem, nostack))
            };
            (iar & 0xff_ffff) as u32
        }
        _ => return None,
    };
    (intid < SPECIAL_INTIDS).then_some(intid)
}

/// Ends interrupt `intid` (priority drop and deactivation).
fn end(intid: u32) {
    match VERSION.load(Ordering::Relaxed) {
        2 => write32(GICC.load(Ordering::Relaxed), GICC_EOIR, intid),
        3 => {
            // SAFETY: ICC_EOIR1_EL1 (S3_0_C12_C12_1) ends the interrupt just acknowledged.
            unsafe {
                core::arch::asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) u64::from(intid), options(nomem, nostack))
            }
        }
        _ => {}
    }
}

/// The IRQ handler (called by the IRQ vector with IRQs masked): one interrupt acknowledged,
/// serviced when it is a fault line, ended.
pub(super) extern "C" fn irq_handler() {
    let Some(intid) = acknowledge() else {
        return;
    };
    if FAULT_LINES
        .iter()
        .any(|s| s.load(Ordering::Relaxed) == intid)
    {
        crate::fault_irq::on_interrupt();
    } else {
        OTHER.fetch_add(1, Ordering::Relaxed);
    }
    end(intid);
}

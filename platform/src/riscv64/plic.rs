//! The PLIC, as far as an image needs it to take a RISC-V IOMMU's wired interrupt: its
//! registers and the first hart's machine-mode context come from the device tree
//! ([`crate::devtree::Plic`]); the line to take is the IOMMU node's first `interrupts` entry
//! (vector 0, on which the backend puts every cause).
//!
//! RISC-V Platform-Level Interrupt Controller Specification 1.0.0, chapter "Memory Map":
//! source priority at `4 * source` (0 never interrupts), enable bits of context `c` at
//! `0x2000 + 0x80 * c`, priority threshold of context `c` at `0x20_0000 + 0x1000 * c`, and its
//! claim/complete register 4 bytes after the threshold. A claim returns the highest-priority
//! pending source (0: none) and stops the gateway forwarding that source until the complete.
//!
//! The trap vector (see `super::trap`) calls [`irq_handler`] for a machine external
//! interrupt; it claims every pending source, calls [`crate::fault_irq::on_interrupt`] for a
//! registered fault line and completes it. The IOMMU's line is level: it stays high while
//! `ipsr` has a pending bit, and the drain that `on_interrupt` runs clears it before the
//! complete, so the source is not taken again for records already drained.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::devtree;

/// The enable block of context 0, and the stride per context.
const ENABLE: usize = 0x2000;
const ENABLE_STRIDE: usize = 0x80;
/// The threshold of context 0 (claim/complete 4 bytes after it), and the stride per context.
const THRESHOLD: usize = 0x20_0000;
const CONTEXT_STRIDE: usize = 0x1000;
const CLAIM: usize = 4;
/// Sources a PLIC may have (source 0 does not exist).
const MAX_SOURCES: u32 = 1024;
/// The priority given to fault lines (any non-zero value above the threshold of 0).
const PRIORITY: u32 = 1;

/// The PLIC's base (0: not set up) and the context.
static BASE: AtomicUsize = AtomicUsize::new(0);
static CONTEXT: AtomicUsize = AtomicUsize::new(0);
/// Registered fault lines (0: free slot).
static FAULT_LINES: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
/// Interrupts that were not fault lines.
static OTHER: AtomicU32 = AtomicU32::new(0);

/// Why the PLIC could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum PlicError {
    /// The device tree names no context for the first hart's machine-mode interrupt.
    NoMachineContext,
    /// A source number outside 1..1024.
    BadSource {
        /// The source number.
        source: u32,
    },
    /// More fault lines than this driver keeps.
    TooManyLines,
    /// [`init`] was not called.
    NotSetUp,
}

impl core::fmt::Display for PlicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PlicError::NoMachineContext => f.write_str(
                "the device tree's PLIC names no context for the first hart's machine-mode \
                 external interrupt",
            ),
            PlicError::BadSource { source } => {
                write!(f, "PLIC source {source} is outside 1..1024")
            }
            PlicError::TooManyLines => {
                f.write_str("more fault lines than the PLIC driver keeps slots for")
            }
            PlicError::NotSetUp => f.write_str("the PLIC was not set up (call plic::init first)"),
        }
    }
}

impl core::error::Error for PlicError {}

fn write(offset: usize, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: a register of the PLIC the device tree describes (set by `init`); M-mode reaches
    // it at its physical address and this module is its only user.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u32, value) }
}

fn read(offset: usize) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: as in `write`.
    unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
}

/// Sets the PLIC up for the first hart's machine-mode context: threshold 0 (every priority
/// above it interrupts), nothing enabled yet.
pub fn init(plic: &devtree::Plic) -> Result<(), PlicError> {
    let context = plic.m_context.ok_or(PlicError::NoMachineContext)? as usize;
    BASE.store(plic.reg.base as usize, Ordering::Relaxed);
    CONTEXT.store(context, Ordering::Relaxed);
    write(THRESHOLD + CONTEXT_STRIDE * context, 0);
    Ok(())
}

/// Gives `source` a priority, enables it for the context and registers it as a fault line:
/// its interrupts call [`crate::fault_irq::on_interrupt`].
pub fn enable_fault_line(source: u32) -> Result<(), PlicError> {
    if BASE.load(Ordering::Relaxed) == 0 {
        return Err(PlicError::NotSetUp);
    }
    if source == 0 || source >= MAX_SOURCES {
        return Err(PlicError::BadSource { source });
    }
    let slot = FAULT_LINES
        .iter()
        .find(|s| {
            s.compare_exchange(0, source, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or(PlicError::TooManyLines)?;
    let _ = slot;
    let context = CONTEXT.load(Ordering::Relaxed);
    write(4 * source as usize, PRIORITY);
    let word = ENABLE + ENABLE_STRIDE * context + 4 * (source as usize / 32);
    write(word, read(word) | 1 << (source % 32));
    Ok(())
}

/// Interrupts taken that were not fault lines.
pub fn other_interrupts() -> u32 {
    OTHER.load(Ordering::Relaxed)
}

/// Called by the trap vector for a machine external interrupt: claims and completes every
/// pending source, servicing fault lines.
pub extern "C" fn irq_handler() {
    if BASE.load(Ordering::Relaxed) == 0 {
        OTHER.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let claim = THRESHOLD + CONTEXT_STRIDE * CONTEXT.load(Ordering::Relaxed) + CLAIM;
    // At most one claim per source the PLIC can have: a line that stays high is completed and
    // taken again by the next trap, not looped on here.
    for _ in 0..MAX_SOURCES {
        let source = read(claim);
        if source == 0 {
            break;
        }
        if FAULT_LINES
            .iter()
            .any(|s| s.load(Ordering::Relaxed) == source)
        {
            crate::fault_irq::on_interrupt();
        } else {
            OTHER.fetch_add(1, Ordering::Relaxed);
        }
        write(claim, source);
    }
}

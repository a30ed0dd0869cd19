//! The local APIC, as far as an image needs it to take an IOMMU's fault interrupt: enabled in
//! the mode the firmware left (xAPIC registers in memory, or x2APIC registers as MSRs), a
//! spurious-interrupt vector, the message that raises [`FAULT_VECTOR`] on this CPU, and the
//! end-of-interrupt write (Intel SDM vol. 3, chapter 11 "Advanced Programmable Interrupt
//! Controller": 11.4 local APIC base and enable, 11.8.5 EOI, 11.9 spurious interrupt, 11.11
//! message signalled interrupts, 11.12 x2APIC).
//!
//! Any unit that signals by MSI on x86 (the VT-d fault event with interrupt remapping off, an
//! AMD-Vi unit's MSI capability) is pointed at [`fault_interrupt`]'s message; the IDT entry of
//! [`FAULT_VECTOR`] (see `super::idt`) calls [`crate::fault_irq::on_interrupt`] and [`eoi`].

use core::sync::atomic::{AtomicUsize, Ordering};

use iommu_hal::backend::FaultInterrupt;

/// The vector fault interrupts are delivered at.
pub const FAULT_VECTOR: u8 = 0x40;
/// The spurious-interrupt vector (SDM 11.9: bits 3:0 of it are 1111b on older CPUs).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// IA32_APIC_BASE MSR (SDM 11.4.4): base address (bits 51:12), EN (11), EXTD (10, x2APIC).
const IA32_APIC_BASE: u32 = 0x1b;
const BASE_EN: u64 = 1 << 11;
const BASE_EXTD: u64 = 1 << 10;
const BASE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// xAPIC register offsets (SDM table 11-1); x2APIC MSR = 0x800 + offset / 16 (11.12.1.2).
const ID: usize = 0x20;
const TPR: usize = 0x80;
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
/// LVT entries' mask bit (SDM 11.5.1).
const LVT_MASKED: u32 = 1 << 16;
/// The two 8259A interrupt controllers' data ports (interrupt mask registers).
const PIC1_DATA: u16 = 0x21;
const PIC2_DATA: u16 = 0xa1;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// CPUID.01H:EDX bit 9: the CPU has a local APIC.
const CPUID_APIC: u32 = 1 << 9;
/// The MSI address window (SDM 11.11.1): 0xFEE in bits 31:20, destination id in 19:12.
const MSI_BASE: u64 = 0xfee0_0000;

/// How the local APIC is reached: 0 = not enabled, 1 = x2APIC MSRs, else the xAPIC base.
static MODE: AtomicUsize = AtomicUsize::new(0);
const X2APIC: usize = 1;

/// Why the local APIC cannot take fault interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum ApicError {
    /// CPUID reports no local APIC.
    NoApic,
    /// The xAPIC registers lie outside the identity-mapped low 4 GiB.
    BaseNotMapped {
        /// The xAPIC base address (IA32_APIC_BASE).
        base: u64,
    },
    /// This CPU's APIC id does not fit the 8-bit destination of a compatibility-format MSI.
    IdTooLarge {
        /// This CPU's APIC id.
        id: u32,
    },
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ApicError::NoApic => f.write_str("CPUID reports no local APIC"),
            ApicError::BaseNotMapped { base } => write!(
                f,
                "the xAPIC registers at {base:#x} lie outside the identity-mapped low 4 GiB"
            ),
            ApicError::IdTooLarge { id } => write!(
                f,
                "APIC id {id} does not fit the 8-bit destination of a compatibility-format MSI"
            ),
        }
    }
}

impl core::error::Error for ApicError {}

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: reads an architectural MSR this runtime checked exists (IA32_APIC_BASE with an
    // APIC present, x2APIC MSRs with EXTD set); no memory is touched.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: writes an architectural local APIC MSR with a value valid for it (callers);
    // no memory is touched.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(v) }
}

fn read(off: usize) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        0 => 0,
        X2APIC => rdmsr(0x800 + (off >> 4) as u32) as u32,
        // SAFETY: `init` stored the xAPIC base, identity mapped uncached by the boot code (the
        // upper 2 GiB of the low 4 GiB); `off` is a register of its 4 KiB page.
        base => unsafe { core::ptr::read_volatile((base + off) as *const u32) },
    }
}

fn write(off: usize, v: u32) {
    match MODE.load(Ordering::Relaxed) {
        0 => {}
        X2APIC => wrmsr(0x800 + (off >> 4) as u32, u64::from(v)),
        // SAFETY: as in `read`.
        base => unsafe { core::ptr::write_volatile((base + off) as *mut u32, v) },
    }
}

/// Enables this CPU's local APIC (globally in IA32_APIC_BASE and by software in the SVR, with
/// [`SPURIOUS_VECTOR`]) and accepts every priority (TPR = 0). Every other source the firmware
/// may have left running is masked first: both 8259A PICs (the BIOS programs the timer's IRQ 0
/// at vector 8, which would arrive as a "double fault"), the APIC timer and LINT0 (the
/// 8259A's virtual wire). Returns the APIC id.
pub fn init() -> Result<u32, ApicError> {
    // SAFETY: ports 0x21 and 0xa1 are the 8259A mask registers; masking every line changes
    // nothing but which legacy interrupts reach the CPU (none).
    unsafe {
        super::io::outb(PIC1_DATA, 0xff);
        super::io::outb(PIC2_DATA, 0xff);
    }
    // CPUID leaf 1 exists on every x86_64 CPU.
    let leaf1 = super::cpuid(1, 0);
    if leaf1.edx & CPUID_APIC == 0 {
        return Err(ApicError::NoApic);
    }
    let mut base = rdmsr(IA32_APIC_BASE);
    if base & BASE_EN == 0 {
        base |= BASE_EN;
        wrmsr(IA32_APIC_BASE, base);
    }
    if base & BASE_EXTD != 0 {
        MODE.store(X2APIC, Ordering::Relaxed);
    } else {
        let addr = base & BASE_ADDR;
        if addr == 0 || addr >= 1 << 32 {
            return Err(ApicError::BaseNotMapped { base: addr });
        }
        MODE.store(addr as usize, Ordering::Relaxed);
    }
    write(LVT_TIMER, read(LVT_TIMER) | LVT_MASKED);
    write(LVT_LINT0, read(LVT_LINT0) | LVT_MASKED);
    write(TPR, 0);
    write(SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    let id = if MODE.load(Ordering::Relaxed) == X2APIC {
        read(ID)
    } else {
        read(ID) >> 24
    };
    Ok(id)
}

/// Signals the end of the interrupt being handled (SDM 11.8.5).
pub fn eoi() {
    write(EOI, 0);
}

/// The compatibility-format message that raises `vector` on the CPU with APIC id `apic_id`
/// (SDM 11.11.1, 11.11.2): address 0xFEE0_0000 with the destination in bits 19:12, physical
/// destination mode, no redirection; data = the vector, fixed delivery, edge triggered.
pub fn msi(apic_id: u32, vector: u8) -> Result<FaultInterrupt, ApicError> {
    if apic_id > 0xff {
        return Err(ApicError::IdTooLarge { id: apic_id });
    }
    Ok(FaultInterrupt::Msi {
        address: MSI_BASE | u64::from(apic_id) << 12,
        data: u32::from(vector),
    })
}

/// Enables the local APIC and returns the message a unit should send to raise
/// [`FAULT_VECTOR`] on this CPU.
pub fn fault_interrupt() -> Result<FaultInterrupt, ApicError> {
    let id = init()?;
    msi(id, FAULT_VECTOR)
}

/// The handler of [`FAULT_VECTOR`] (called by its IDT stub): services the server's faults,
/// then ends the interrupt.
pub(super) extern "C" fn fault_handler() {
    crate::fault_irq::on_interrupt();
    eoi();
}

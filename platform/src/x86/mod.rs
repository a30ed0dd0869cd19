//! The x86_64 bare-metal runtime for QEMU q35 (PVH boot).
//!
//! What it provides to an image: boot to 64-bit Rust (module `boot`), an IDT that turns every
//! fault into a report and a failing exit and delivers the IOMMU fault interrupt (module
//! `idt`), the local APIC and the MSI that raises that interrupt ([`apic`]), the console on
//! COM1 and the defmt logger on COM2
//! ([`serial`], [`irq`] for the shared [`crate::rt`]), the exit device ([`exit`]), a calibrated TSC delay ([`time`]), PCI
//! configuration through ports ([`pci`]), and ACPI/DMAR discovery ([`acpi`]).
//!
//! An image is a `#![no_std] #![no_main]` binary that names its main function with
//! [`crate::entry!`]; main receives a [`BootInfo`] and never returns. The console, the defmt
//! logger, the panic handler and `entry!` are the shared [`crate::rt`].
//!
//! Exit codes: QEMU's `isa-debug-exit` device (port 0xf4) ends QEMU with status
//! `(value << 1) | 1`. [`EXIT_SUCCESS`] (0x10) gives status 33, the only status the runner
//! counts as a pass; [`EXIT_FAILURE`] (0x11) gives 35. A triple fault ends QEMU with status 0
//! under `-no-reboot`, also a failure.

pub mod acpi;
pub mod apic;
mod boot;
mod idt;
pub mod io;
pub mod irq;
pub mod pci;
pub mod serial;
pub mod time;

use serial::Uart;

impl defmt::Format for BootInfo {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "BootInfo {{ start_info: {=u64:#x}, rsdp: ",
            self.start_info
        );
        crate::rt::hex_opt(f, self.rsdp);
        defmt::write!(f, ", tsc: {} }}", self.tsc);
    }
}

/// Value written to the exit device for success (QEMU exit status 33).
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written to the exit device for failure (QEMU exit status 35).
pub const EXIT_FAILURE: u32 = 0x11;
/// The `isa-debug-exit` port (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const EXIT_PORT: u16 = 0xf4;

/// Ends the machine: QEMU exits with status `(code << 1) | 1`. Without the exit device the CPU
/// halts forever (the runner's time limit ends it).
pub fn exit(code: u32) -> ! {
    // SAFETY: port 0xf4 is the exit device; the write ends QEMU.
    unsafe { io::outl(EXIT_PORT, code) };
    loop {
        // SAFETY: halting with interrupts off stops the CPU; nothing to preserve.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Ends the machine with [`EXIT_SUCCESS`].
pub fn exit_success() -> ! {
    exit(EXIT_SUCCESS)
}

/// Ends the machine with [`EXIT_FAILURE`].
pub fn exit_failure() -> ! {
    exit(EXIT_FAILURE)
}

/// What the boot protocol told the image. Logged with addresses in hex.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Physical address of the `hvm_start_info` structure.
    pub start_info: u64,
    /// Physical address of the ACPI RSDP, when the start info carries one.
    pub rsdp: Option<u64>,
    /// TSC ticks per microsecond and where the rate came from (CPUID, PIT rounds, or the
    /// long-side fallback; see [`crate::clock`]).
    pub tsc: crate::clock::Rate,
}

unsafe extern "Rust" {
    /// The image's main function, defined by [`crate::entry!`].
    fn __iommu_platform_main(boot: BootInfo) -> !;
}

/// Called by the boot assembly in 64-bit mode with the `hvm_start_info` address.
extern "C" fn rust_start(start_info: u32) -> ! {
    Uart::CONSOLE.init();
    Uart::DEFMT.init();
    idt::init();
    let tsc = time::calibrate();
    // SAFETY: the boot protocol passes `hvm_start_info` in identity-mapped low memory; the
    // reader (`pvh` crate) returns None for address 0 or a wrong magic, and reads only the
    // structure itself here.
    let reader =
        unsafe { pvh::start_info::reader::StartInfoReader::from_paddr_identity(start_info) };
    let rsdp = reader.map(|r| r.raw().rsdp_paddr).filter(|&rsdp| rsdp != 0);
    let start_info = u64::from(start_info);
    let boot = BootInfo {
        start_info,
        rsdp,
        tsc,
    };
    crate::console!(
        "iommu-platform x86_64: booted (PVH), start info {:#x}",
        start_info
    );
    // SAFETY: `entry!` defines the function with exactly this signature.
    unsafe { __iommu_platform_main(boot) }
}

/// CPUID `leaf`, `subleaf`: EAX, EBX, ECX, EDX. A leaf beyond the maximum returns what the CPU
/// returns for that (the caller checks leaf 0's EAX first where it matters).
pub(crate) fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    // `__cpuid_count` is an unsafe function on older toolchains (the declared MSRV, 1.88,
    // among them) and a safe one on current stable: the block builds on both.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID only reads processor identification; every x86_64 CPU has it.
    unsafe {
        core::arch::x86_64::__cpuid_count(leaf, subleaf)
    }
}

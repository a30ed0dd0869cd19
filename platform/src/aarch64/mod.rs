//! The aarch64 bare-metal runtime for QEMU `-machine virt` (ELF `-kernel`, no firmware).
//!
//! What it provides to an image: boot to Rust at EL1 with FP/SIMD on and the MMU on over an
//! identity map (`boot`), exception vectors that turn every exception into a report and a
//! failing exit and take IRQs (`exceptions`), the GIC for an SMMU's wired interrupts
//! ([`gic`]), the console on UART0 and the defmt logger on UART1
//! ([`serial`], [`irq`] for the shared [`crate::rt`]), semihosting exit ([`exit`]), the generic timer as a `DelayNs`
//! ([`time`]), and the device tree's location ([`BootInfo::dtb`]; parse it with
//! [`crate::devtree`]).
//!
//! An image is a `#![no_std] #![no_main]` binary that names its main function with
//! [`crate::entry!`]; main receives a [`BootInfo`] and never returns (console, defmt logger,
//! panic handler and `entry!` are the shared [`crate::rt`]). A binary that names none
//! still links (the linker script points `__iommu_platform_main` at a stub that reports it).
//!
//! Exit codes: semihosting SYS_EXIT (operation 0x18 with HLT #0xF000; x1 points at the pair
//! {ADP_Stopped_ApplicationExit = 0x20026, code}; "Semihosting for AArch32 and AArch64",
//! section 6.5) makes QEMU (`-semihosting-config enable=on,target=native`) exit with status
//! `code`. [`EXIT_SUCCESS`] is 0, [`EXIT_FAILURE`] 1; the boot code uses 3 for an unsupported
//! exception level. Without semihosting the CPU waits forever (the runner's time limit ends
//! it).

mod boot;
mod exceptions;
pub mod gic;
pub mod irq;
pub mod serial;
pub mod time;

use serial::Uart;

/// Semihosting exit status for success.
pub const EXIT_SUCCESS: u32 = 0;
/// Semihosting exit status for failure.
pub const EXIT_FAILURE: u32 = 1;
/// Where QEMU virt's RAM starts, and where QEMU puts the DTB when it boots an ELF image that
/// leaves room below itself (the image is linked at `RAM_BASE + 2 MiB`).
pub const RAM_BASE: u64 = 0x4000_0000;
/// The flattened device tree's magic number, big-endian (Devicetree Specification 0.4, 5.2).
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Semihosting operation SYS_EXIT.
const SYS_EXIT: u64 = 0x18;
/// SYS_EXIT reason: ADP_Stopped_ApplicationExit.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Ends the machine: QEMU exits with status `code`.
pub fn exit(code: u32) -> ! {
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
    // SAFETY: the semihosting call reads the two-word parameter block on the stack (identity
    // mapped) and ends QEMU; with semihosting disabled the HLT is undefined and the exception
    // vectors report it.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("x0") SYS_EXIT,
            in("x1") block.as_ptr(),
            options(nostack, readonly)
        )
    };
    loop {
        aarch64_cpu::asm::wfe();
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
    /// Physical address of the flattened device tree: x0 at entry when it was non-zero and
    /// pointed at an FDT header, else [`RAM_BASE`] when an FDT header is there.
    pub dtb: Option<u64>,
    /// The exception level the CPU entered the image at (1, or 2 before the drop to EL1).
    pub entry_el: u8,
    /// The generic timer's frequency in Hz and where it came from (CNTFRQ_EL0, the device
    /// tree, or the long-side fallback; see [`crate::clock`]).
    pub counter: crate::clock::Rate,
}

impl defmt::Format for BootInfo {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "BootInfo {{ dtb: ");
        crate::rt::hex_opt(f, self.dtb);
        defmt::write!(
            f,
            ", entry_el: {=u8}, counter: {} }}",
            self.entry_el,
            self.counter
        );
    }
}

/// Whether an FDT header starts at `addr` (identity mapped RAM).
fn fdt_at(addr: u64) -> bool {
    if addr == 0 || addr % 8 != 0 {
        return false;
    }
    // SAFETY: `addr` is x0 from the boot loader or the start of RAM, both identity mapped as
    // Normal memory by the boot code; one aligned 32-bit read.
    let magic = unsafe { core::ptr::read_volatile(addr as *const u32) };
    u32::from_be(magic) == FDT_MAGIC
}

unsafe extern "Rust" {
    /// The image's main function, defined by [`crate::entry!`].
    fn __iommu_platform_main(boot: BootInfo) -> !;
}

/// Called by the boot assembly at EL1 with the MMU on: x0 as the loader left it, the entry EL.
extern "C" fn rust_start(x0: u64, entry_el: u64) -> ! {
    Uart::CONSOLE.init();
    Uart::DEFMT.init();
    let dtb = if fdt_at(x0) {
        Some(x0)
    } else if fdt_at(RAM_BASE) {
        Some(RAM_BASE)
    } else {
        None
    };
    // SAFETY: `fdt_at` found an FDT header at `a`, in identity-mapped RAM the image does not
    // write.
    let dt_hz = dtb.and_then(|a| unsafe { crate::devtree::timer_frequency_at(a) });
    let counter = time::init(dt_hz);
    let boot = BootInfo {
        dtb,
        entry_el: entry_el as u8,
        counter,
    };
    crate::console!(
        "iommu-platform aarch64: booted (entered at EL{}, now EL1, MMU on), x0 {:#x}, DTB at {:#x} (0: none)",
        entry_el,
        x0,
        dtb.unwrap_or(0)
    );
    // SAFETY: `entry!` defines the function with exactly this signature; without it the
    // linker script resolves the name to `no_main`, which ignores the argument.
    unsafe { __iommu_platform_main(boot) }
}

/// What runs when the binary named no main function (see the module documentation).
extern "C" fn no_main() -> ! {
    crate::console!("FAIL: this binary has no aarch64 main function (no `entry!`)");
    exit_failure()
}

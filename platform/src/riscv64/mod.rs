//! The riscv64 bare-metal runtime for QEMU `-machine virt` (`-bios none -kernel <elf>`, no
//! firmware): the image runs in M-mode on physical addresses (no paging: every address is
//! its own identity map).
//!
//! What it provides to an image: boot to Rust with FP on and a stack (`boot`), a trap vector
//! that turns every exception into a report and a failing exit and takes the PLIC's
//! machine-mode interrupt (`trap`, [`plic`]), the 16550 console
//! carrying both plain text and the defmt frames ([`serial`]), interrupt masking for the
//! shared [`crate::rt`] ([`irq`]), the `sifive_test` exit ([`exit`]), the CLINT's `mtime` as a
//! `DelayNs` at the device tree's `timebase-frequency` ([`time`]), and the device tree's
//! location ([`BootInfo::dtb`]; parse it with [`crate::devtree`]).
//!
//! An image is a `#![no_std] #![no_main]` binary that names its main function with
//! [`crate::entry!`]; main receives a [`BootInfo`] and never returns. A binary that names
//! none still links (the linker script points `__iommu_platform_main` at a stub that reports
//! it).
//!
//! Exit codes (QEMU's `sifive_test` device, `hw/misc/sifive_test.c`): writing 0x5555 to its
//! register ends QEMU with status 0 ([`EXIT_SUCCESS`]); `(code << 16) | 0x3333` ends it with
//! status `code` ([`EXIT_FAILURE`] is 1).

mod boot;
pub mod irq;
pub mod plic;
pub mod serial;
pub mod time;
mod trap;

use serial::Uart;

/// QEMU exit status for success.
pub const EXIT_SUCCESS: u32 = 0;
/// QEMU exit status for failure.
pub const EXIT_FAILURE: u32 = 1;
/// The `sifive_test` finisher of QEMU virt (`test@100000` in its device tree).
const SIFIVE_TEST: usize = 0x10_0000;
/// `sifive_test`: FINISHER_PASS.
const FINISHER_PASS: u32 = 0x5555;
/// `sifive_test`: FINISHER_FAIL (the exit code goes in bits 31:16).
const FINISHER_FAIL: u32 = 0x3333;
/// The flattened device tree's magic number, big-endian (Devicetree Specification 0.4, 5.2).
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Ends the machine: QEMU exits with status `code`.
pub fn exit(code: u32) -> ! {
    let v = if code == EXIT_SUCCESS {
        FINISHER_PASS
    } else {
        (code << 16) | FINISHER_FAIL
    };
    // SAFETY: the sifive_test register of QEMU virt, owned by this runtime; the write ends
    // QEMU.
    unsafe { core::ptr::write_volatile(SIFIVE_TEST as *mut u32, v) };
    loop {
        // SAFETY: waiting for an interrupt touches nothing; interrupts are disabled, so this
        // only returns spuriously.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
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
    /// The hart the image runs on (`a0` at entry; the other harts wait forever).
    pub hart: u64,
    /// Physical address of the flattened device tree (`a1` at entry), when an FDT header is
    /// there.
    pub dtb: Option<u64>,
    /// The `mtime` rate in Hz and its source (the device tree's `timebase-frequency`, or,
    /// when missing or implausible, a fallback rate that makes waits longer, never shorter).
    pub timer: crate::clock::Rate,
}

impl defmt::Format for BootInfo {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "BootInfo {{ hart: {=u64}, dtb: ", self.hart);
        crate::rt::hex_opt(f, self.dtb);
        defmt::write!(f, ", timer: {} }}", self.timer);
    }
}

/// Whether an FDT header starts at `addr`.
fn fdt_at(addr: u64) -> bool {
    if addr == 0 || addr % 8 != 0 {
        return false;
    }
    // SAFETY: `a1` from QEMU's boot code points at the DTB it placed in RAM; one aligned
    // 32-bit read.
    let magic = unsafe { core::ptr::read_volatile(addr as *const u32) };
    u32::from_be(magic) == FDT_MAGIC
}

unsafe extern "Rust" {
    /// The image's main function, defined by [`crate::entry!`].
    fn __iommu_platform_main(boot: BootInfo) -> !;
}

/// Called by the boot assembly on hart `hart` with the DTB pointer QEMU passed in `a1`.
extern "C" fn rust_start(hart: u64, dtb: u64) -> ! {
    Uart::CONSOLE.init();
    let dtb = fdt_at(dtb).then_some(dtb);
    // The timer's rate and the CLINT come from the device tree.
    let (mut clint, mut timebase) = (None, None);
    if let Some(addr) = dtb {
        // SAFETY: an FDT header is at `dtb`, in RAM QEMU filled and nothing writes.
        if let Ok(m) = unsafe { crate::devtree::parse_at(addr) } {
            (clint, timebase) = (m.clint.map(|r| r.base), m.timebase_hz);
        }
    }
    let timer = time::init(clint, timebase);
    let boot = BootInfo { hart, dtb, timer };
    crate::console!(
        "iommu-platform riscv64: booted in M-mode on hart {}, DTB at {:#x} (0: none), timebase {} Hz ({:?})",
        hart,
        dtb.unwrap_or(0),
        timer.value,
        timer.source
    );
    // SAFETY: `entry!` defines the function with exactly this signature; without it the
    // linker script resolves the name to `no_main`, which ignores the argument.
    unsafe { __iommu_platform_main(boot) }
}

/// What runs when the binary named no main function (see the module documentation).
extern "C" fn no_main() -> ! {
    crate::console!("FAIL: this binary has no riscv64 main function (no `entry!`)");
    exit_failure()
}

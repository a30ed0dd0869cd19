//! What binds the server to an environment.
//!
//! What belongs here: the bare-metal runtimes of the QEMU images (boot code, serial console,
//! defmt logger, exit device, PCI configuration access, ACPI and device-tree discovery, MMIO
//! register access, identity-mapped physical memory and a frame allocator, a `DelayNs`). This
//! is where the unsafe code that touches hardware lives, each block with a
//! `// SAFETY:` comment.
//!
//! Architecture-independent pieces ([`mem`], [`pci`], [`bars`], [`dmar`], [`ivrs`], [`devtree`],
//! [`dma`], [`edu`], [`local`], [`clock`], [`fault_irq`], [`fault_log`]) build and are tested on
//! the host too; the runtimes (`x86`, `aarch64`, `riscv64`), the client scenario the images run
//! (`scenario`, which logs with defmt) and what every image does around it (`image`) exist only
//! on bare-metal targets.
//!
//! With the `microkit` feature (on `aarch64-unknown-none`) the crate is instead the runtime of
//! seL4 Microkit protection domains ([`microkit`]): the bare-metal runtimes, their console,
//! logger and panic handler are left out, and `microkit::pd` provides those of a PD. The
//! host-testable part of [`microkit`] is always built.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod bars;
pub mod clock;
pub mod devtree;
pub mod dma;
pub mod dmar;
pub mod edu;
pub mod fault_irq;
pub mod fault_log;
#[cfg(all(target_os = "none", not(feature = "microkit")))]
pub mod image;
pub mod ivrs;
pub mod local;
pub mod mem;
pub mod microkit;
pub mod pci;
#[cfg(all(target_os = "none", not(feature = "microkit")))]
pub mod rt;
#[cfg(target_os = "none")]
pub mod scenario;

#[cfg(all(target_arch = "x86_64", target_os = "none", not(feature = "microkit")))]
pub mod x86;

#[cfg(all(target_arch = "aarch64", target_os = "none", not(feature = "microkit")))]
pub mod aarch64;

#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod riscv64;

/// The runtime of the architecture being built for (`x86`, `aarch64` or `riscv64`).
#[cfg(all(target_arch = "aarch64", target_os = "none", not(feature = "microkit")))]
pub use aarch64 as arch;
/// The runtime of the architecture being built for (`x86`, `aarch64` or `riscv64`).
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub use riscv64 as arch;
/// The runtime of the architecture being built for (`x86`, `aarch64` or `riscv64`).
#[cfg(all(target_arch = "x86_64", target_os = "none", not(feature = "microkit")))]
pub use x86 as arch;

/// Runs `f` with the CPU's interrupts masked, restoring the previous mask afterwards (the
/// critical section of everything the fault interrupt's handler also touches, see
/// [`fault_irq`]). On the host, where no interrupt handler runs, it just runs `f`.
/// In a Microkit protection domain (feature `microkit`) too it just runs `f`: a PD is one
/// thread at user level, and its interrupts arrive as notifications between events.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(target_os = "none", not(feature = "microkit")))]
    {
        let mask = arch::irq::save_and_mask();
        let r = f();
        arch::irq::restore(mask);
        r
    }
    #[cfg(not(all(target_os = "none", not(feature = "microkit"))))]
    f()
}

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
#[cfg(target_os = "none")]
pub mod image;
pub mod ivrs;
pub mod local;
pub mod mem;
pub mod pci;
#[cfg(target_os = "none")]
pub mod rt;
#[cfg(target_os = "none")]
pub mod scenario;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod x86;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;

#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod riscv64;

/// The runtime of the architecture being built for (`x86`, `aarch64` or `riscv64`).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use aarch64 as arch;
/// The runtime of the architecture being built for (`x86`, `aarch64` or `riscv64`).
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub use riscv64 as arch;
/// The runtime of the architecture being built for (`x86`, `aarch64` or `riscv64`).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use x86 as arch;

/// Runs `f` with the CPU's interrupts masked, restoring the previous mask afterwards (the
/// critical section of everything the fault interrupt's handler also touches, see
/// [`fault_irq`]). On the host, where no interrupt handler runs, it just runs `f`.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_os = "none")]
    {
        let mask = arch::irq::save_and_mask();
        let r = f();
        arch::irq::restore(mask);
        r
    }
    #[cfg(not(target_os = "none"))]
    f()
}

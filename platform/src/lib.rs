//! What binds the server to an environment.
//!
//! What belongs here: the bare-metal runtimes of the QEMU images (boot code, serial console,
//! defmt logger, exit device, PCI configuration access, ACPI and device-tree discovery, MMIO
//! register access, identity-mapped physical memory and a frame allocator, a `DelayNs`), and the
//! hosted runtime. This is where the unsafe code that touches hardware lives, each block with a
//! `// SAFETY:` comment.
//!
//! Architecture-independent pieces ([`mem`], [`pci`], [`dmar`], [`dma`], [`edu`]) build and are
//! tested on the host too; the runtimes (`x86`) exist only on bare-metal targets.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod dma;
pub mod dmar;
pub mod edu;
pub mod mem;
pub mod pci;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod x86;

//! What binds the server to an environment.
//!
//! What belongs here: the bare-metal runtimes of the QEMU images (boot code, serial console,
//! defmt logger, exit device, PCI configuration access, ACPI and device-tree discovery, MMIO
//! register access, identity-mapped physical memory and a frame allocator, a `DelayNs`), and the
//! hosted runtime. This is where the unsafe code that touches hardware lives, each block with a
//! `// SAFETY:` comment.
#![no_std]

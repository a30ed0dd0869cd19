//! Entry from QEMU's reset code to Rust in M-mode.
//!
//! Entry state (QEMU `-machine virt -bios none -kernel <elf>`): every hart starts at the ELF
//! entry point in M-mode with `a0` = its hart id and `a1` = the DTB address, paging off (M-mode
//! never translates), interrupts disabled. The boot code:
//!
//! 1. disables interrupts (`mie` = 0, `mstatus.MIE` = 0) and installs the trap vector
//!    (`mtvec`, direct mode; see [`super::trap`]);
//! 2. parks every hart but hart 0 in a `wfi` loop;
//! 3. turns the FPU on (`mstatus.FS` = Initial, privileged spec 3.1.6.6) and clears `fcsr`
//!    before any Rust code can use an FP register;
//! 4. zeroes .bss (the stacks included) with aligned 8-byte stores;
//! 5. sets the stack and calls [`super::rust_start`] with the hart id and the DTB pointer.

use core::arch::global_asm;

/// Size of the boot stack.
pub const STACK_SIZE: usize = 1 << 20;
/// Size of the stack the trap handler switches to.
pub const TRAP_STACK_SIZE: usize = 64 << 10;
/// `mstatus.FS` = Initial (bits 14:13 = 0b01).
const MSTATUS_FS_INITIAL: usize = 1 << 13;

global_asm!(
    r#"
    .pushsection .bss.boot, "aw", @nobits
    .balign 16
boot_stack:
    .skip {stack_size}
boot_stack_top:
    .balign 16
    .global iommu_platform_trap_stack_top
iommu_platform_trap_stack:
    .skip {trap_stack_size}
iommu_platform_trap_stack_top:
    .popsection

    .pushsection .text.boot, "ax"
    .global _start
_start:
    csrw mie, zero
    csrci mstatus, 8                # MIE
    la t0, iommu_platform_trap_entry
    csrw mtvec, t0                  # direct mode: the entry is 4-byte aligned
    bnez a0, .Lpark

    li t0, {fs_initial}
    csrs mstatus, t0
    csrw fcsr, zero

    la t0, __bss_start
    la t1, __bss_end
.Lzero_bss:
    bgeu t0, t1, .Lbss_done
    sd zero, 0(t0)
    addi t0, t0, 8
    j .Lzero_bss
.Lbss_done:

    la sp, boot_stack_top
    li ra, 0
    call {entry}
.Lpark:
    wfi
    j .Lpark

    # Resolves `__iommu_platform_main` (through the linker script's PROVIDE) in a binary
    # that names no main function.
    .global __iommu_platform_no_main
__iommu_platform_no_main:
    j {no_main}
    .popsection
    "#,
    stack_size = const STACK_SIZE,
    trap_stack_size = const TRAP_STACK_SIZE,
    fs_initial = const MSTATUS_FS_INITIAL,
    entry = sym super::rust_start,
    no_main = sym super::no_main,
);

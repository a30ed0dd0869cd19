//! The exception vector table (VBAR_EL1): every one of the 16 entries reports the exception
//! on the console and ends QEMU with the failure status, so a fault never hangs the machine.
//!
//! Layout (Arm ARM D1.10.2, table D1-7): four groups of four 128-byte entries (synchronous,
//! IRQ, FIQ, SError) for the current EL with SP_EL0, the current EL with SP_ELx, a lower EL
//! in AArch64 and a lower EL in AArch32; the table is 2 KiB aligned. Interrupts stay masked,
//! so in practice only synchronous exceptions and SErrors arrive.

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.vectors, "ax"
    .balign 2048
    .global iommu_platform_vectors
iommu_platform_vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    mov x0, #\n
    b iommu_platform_vector_common
    .endr

iommu_platform_vector_common:
    mrs x1, esr_el1
    mrs x2, elr_el1
    mrs x3, far_el1
    mrs x4, spsr_el1
    /* A fresh stack: the faulting one may be the problem. */
    adrp x5, iommu_platform_exception_stack_top
    add x5, x5, :lo12:iommu_platform_exception_stack_top
    mov sp, x5
    bl {handler}
.Lvector_hang:
    wfe
    b .Lvector_hang
    .popsection
    "#,
    handler = sym exception,
);

/// Which of the 16 vector entries was taken.
fn entry_name(index: u64) -> (&'static str, &'static str) {
    let from = match index / 4 {
        0 => "current EL, SP_EL0",
        1 => "current EL, SP_ELx",
        2 => "lower EL, AArch64",
        _ => "lower EL, AArch32",
    };
    let kind = match index % 4 {
        0 => "synchronous",
        1 => "IRQ",
        2 => "FIQ",
        _ => "SError",
    };
    (kind, from)
}

/// The exception class ESR_ELx.EC (bits 31:26) of the common synchronous exceptions (Arm ARM
/// D19.2.37).
fn class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE trapped",
        0x07 => "SIMD/FP access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x18 => "MSR/MRS trapped",
        0x20 => "instruction abort, lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort, lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x3c => "BRK",
        _ => "other",
    }
}

/// Every vector ends here: report on the console and exit with the failure status.
extern "C" fn exception(index: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    let (kind, from) = entry_name(index);
    let ec = (esr >> 26) & 0x3f;
    crate::console!(
        "EXCEPTION {} ({}, {}): ESR {:#x} (EC {:#x}: {}, ISS {:#x}), ELR {:#x}, FAR {:#x}, SPSR {:#x}",
        index,
        kind,
        from,
        esr,
        ec,
        class_name(ec),
        esr & 0x1ff_ffff,
        elr,
        far,
        spsr
    );
    super::exit_failure()
}

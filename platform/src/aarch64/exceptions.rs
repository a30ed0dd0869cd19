//! The exception vector table (VBAR_EL1): every one of the 16 entries reports the exception
//! on the console and ends QEMU with the failure status, so a fault never hangs the machine,
//! except the IRQ entry of the current EL with SP_ELx (the image's own state): an image that
//! unmasks IRQs while it waits for an SMMU's interrupt takes them there.
//!
//! Layout (Arm ARM D1.10.2, table D1-7): four groups of four 128-byte entries (synchronous,
//! IRQ, FIQ, SError) for the current EL with SP_EL0, the current EL with SP_ELx, a lower EL
//! in AArch64 and a lower EL in AArch32; the table is 2 KiB aligned.
//!
//! The IRQ entry saves what a called function may clobber (x0-x18, x29, x30, the FP/SIMD
//! registers q0-q31 with FPSR/FPCR, as the AAPCS64 lets generated code use them), and
//! ELR_EL1/SPSR_EL1, on the interrupted stack, calls [`super::gic::irq_handler`], restores
//! and returns with `eret`. IRQs stay masked while it runs (PSTATE.I is set on entry).

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.vectors, "ax"
    .balign 2048
    .global iommu_platform_vectors
iommu_platform_vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    .if \n == 5
    b iommu_platform_irq_entry
    .else
    mov x0, #\n
    b iommu_platform_vector_common
    .endif
    .endr

iommu_platform_irq_entry:
    stp x0, x1, [sp, #-16]!
    stp x2, x3, [sp, #-16]!
    stp x4, x5, [sp, #-16]!
    stp x6, x7, [sp, #-16]!
    stp x8, x9, [sp, #-16]!
    stp x10, x11, [sp, #-16]!
    stp x12, x13, [sp, #-16]!
    stp x14, x15, [sp, #-16]!
    stp x16, x17, [sp, #-16]!
    stp x18, x29, [sp, #-16]!
    mrs x0, elr_el1
    stp x30, x0, [sp, #-16]!
    mrs x0, spsr_el1
    mrs x1, fpsr
    stp x0, x1, [sp, #-16]!
    mrs x0, fpcr
    stp x0, xzr, [sp, #-16]!
    stp q0, q1, [sp, #-32]!
    stp q2, q3, [sp, #-32]!
    stp q4, q5, [sp, #-32]!
    stp q6, q7, [sp, #-32]!
    stp q8, q9, [sp, #-32]!
    stp q10, q11, [sp, #-32]!
    stp q12, q13, [sp, #-32]!
    stp q14, q15, [sp, #-32]!
    stp q16, q17, [sp, #-32]!
    stp q18, q19, [sp, #-32]!
    stp q20, q21, [sp, #-32]!
    stp q22, q23, [sp, #-32]!
    stp q24, q25, [sp, #-32]!
    stp q26, q27, [sp, #-32]!
    stp q28, q29, [sp, #-32]!
    stp q30, q31, [sp, #-32]!
    bl {irq_handler}
    ldp q30, q31, [sp], #32
    ldp q28, q29, [sp], #32
    ldp q26, q27, [sp], #32
    ldp q24, q25, [sp], #32
    ldp q22, q23, [sp], #32
    ldp q20, q21, [sp], #32
    ldp q18, q19, [sp], #32
    ldp q16, q17, [sp], #32
    ldp q14, q15, [sp], #32
    ldp q12, q13, [sp], #32
    ldp q10, q11, [sp], #32
    ldp q8, q9, [sp], #32
    ldp q6, q7, [sp], #32
    ldp q4, q5, [sp], #32
    ldp q2, q3, [sp], #32
    ldp q0, q1, [sp], #32
    ldp x0, xzr, [sp], #16
    msr fpcr, x0
    ldp x0, x1, [sp], #16
    msr spsr_el1, x0
    msr fpsr, x1
    ldp x30, x0, [sp], #16
    msr elr_el1, x0
    ldp x18, x29, [sp], #16
    ldp x16, x17, [sp], #16
    ldp x14, x15, [sp], #16
    ldp x12, x13, [sp], #16
    ldp x10, x11, [sp], #16
    ldp x8, x9, [sp], #16
    ldp x6, x7, [sp], #16
    ldp x4, x5, [sp], #16
    ldp x2, x3, [sp], #16
    ldp x0, x1, [sp], #16
    eret

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
    irq_handler = sym super::gic::irq_handler,
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

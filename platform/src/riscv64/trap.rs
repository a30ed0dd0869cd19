//! The M-mode trap vector (`mtvec`, direct mode; privileged spec 3.1.7, 3.1.15 `mcause`).
//!
//! - An exception reports `mcause`, `mepc`, `mtval` and `mstatus` on the console, on a fresh
//!   stack (the faulting one may be the problem), and ends QEMU with the failure status, so
//!   a fault never hangs the machine.
//! - A machine external interrupt (the PLIC's machine-mode context, cause 11) saves what a
//!   called function may clobber (`ra`, `t0`-`t6`, `a0`-`a7`, `ft0`-`ft11`, `fa0`-`fa7`,
//!   `fcsr`) on the interrupted stack, calls [`super::plic::irq_handler`], restores and
//!   returns with `mret`. Interrupts stay disabled while it runs (`mstatus.MIE` is cleared on
//!   entry and restored by `mret`). Any other interrupt is unexpected (none other is enabled)
//!   and reported like an exception.

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.trap, "ax"
    .option push
    .option arch, +d
    .balign 4
    .global iommu_platform_trap_entry
iommu_platform_trap_entry:
    csrw mscratch, t0
    csrr t0, mcause
    bltz t0, .Linterrupt
    # An exception: report on the trap stack.
    la sp, iommu_platform_trap_stack_top
    csrr a0, mcause
    csrr a1, mepc
    csrr a2, mtval
    csrr a3, mstatus
    call {fatal}
.Ltrap_hang:
    wfi
    j .Ltrap_hang
.Linterrupt:
    csrr t0, mscratch
    addi sp, sp, -304
    sd ra, 0(sp)
    sd t0, 8(sp)
    sd t1, 16(sp)
    sd t2, 24(sp)
    sd t3, 32(sp)
    sd t4, 40(sp)
    sd t5, 48(sp)
    sd t6, 56(sp)
    sd a0, 64(sp)
    sd a1, 72(sp)
    sd a2, 80(sp)
    sd a3, 88(sp)
    sd a4, 96(sp)
    sd a5, 104(sp)
    sd a6, 112(sp)
    sd a7, 120(sp)
    fsd ft0, 128(sp)
    fsd ft1, 136(sp)
    fsd ft2, 144(sp)
    fsd ft3, 152(sp)
    fsd ft4, 160(sp)
    fsd ft5, 168(sp)
    fsd ft6, 176(sp)
    fsd ft7, 184(sp)
    fsd ft8, 192(sp)
    fsd ft9, 200(sp)
    fsd ft10, 208(sp)
    fsd ft11, 216(sp)
    fsd fa0, 224(sp)
    fsd fa1, 232(sp)
    fsd fa2, 240(sp)
    fsd fa3, 248(sp)
    fsd fa4, 256(sp)
    fsd fa5, 264(sp)
    fsd fa6, 272(sp)
    fsd fa7, 280(sp)
    frcsr t0
    sd t0, 288(sp)
    csrr a0, mcause
    call {interrupt}
    ld t0, 288(sp)
    fscsr t0
    fld ft0, 128(sp)
    fld ft1, 136(sp)
    fld ft2, 144(sp)
    fld ft3, 152(sp)
    fld ft4, 160(sp)
    fld ft5, 168(sp)
    fld ft6, 176(sp)
    fld ft7, 184(sp)
    fld ft8, 192(sp)
    fld ft9, 200(sp)
    fld ft10, 208(sp)
    fld ft11, 216(sp)
    fld fa0, 224(sp)
    fld fa1, 232(sp)
    fld fa2, 240(sp)
    fld fa3, 248(sp)
    fld fa4, 256(sp)
    fld fa5, 264(sp)
    fld fa6, 272(sp)
    fld fa7, 280(sp)
    ld ra, 0(sp)
    ld t0, 8(sp)
    ld t1, 16(sp)
    ld t2, 24(sp)
    ld t3, 32(sp)
    ld t4, 40(sp)
    ld t5, 48(sp)
    ld t6, 56(sp)
    ld a0, 64(sp)
    ld a1, 72(sp)
    ld a2, 80(sp)
    ld a3, 88(sp)
    ld a4, 96(sp)
    ld a5, 104(sp)
    ld a6, 112(sp)
    ld a7, 120(sp)
    addi sp, sp, 304
    mret
    .option pop
    .popsection
    "#,
    fatal = sym fatal,
    interrupt = sym interrupt,
);

/// `mcause` interrupt code of a machine external interrupt.
const MACHINE_EXTERNAL: u64 = 11;

/// The name of an exception code (privileged spec, table "Machine cause register (mcause)
/// values after trap").
fn exception_name(code: u64) -> &'static str {
    match code {
        0 => "instruction address misaligned",
        1 => "instruction access fault",
        2 => "illegal instruction",
        3 => "breakpoint",
        4 => "load address misaligned",
        5 => "load access fault",
        6 => "store/AMO address misaligned",
        7 => "store/AMO access fault",
        8 => "environment call from U-mode",
        9 => "environment call from S-mode",
        11 => "environment call from M-mode",
        12 => "instruction page fault",
        13 => "load page fault",
        15 => "store/AMO page fault",
        _ => "other",
    }
}

/// An interrupt: the PLIC's, or an unexpected one (reported, fatal).
extern "C" fn interrupt(mcause: u64) {
    if mcause & !(1 << 63) == MACHINE_EXTERNAL {
        super::plic::irq_handler();
    } else {
        // SAFETY: reads CSRs; no memory is touched.
        let (mepc, mstatus): (u64, u64) = unsafe {
            let (e, s);
            core::arch::asm!("csrr {}, mepc", "csrr {}, mstatus", out(reg) e, out(reg) s, options(nomem, nostack));
            (e, s)
        };
        fatal(mcause, mepc, 0, mstatus);
    }
}

/// Every exception (and an unexpected interrupt) ends here: report on the console and exit
/// with the failure status.
extern "C" fn fatal(mcause: u64, mepc: u64, mtval: u64, mstatus: u64) -> ! {
    let interrupt = mcause >> 63 != 0;
    let code = mcause & !(1 << 63);
    crate::console!(
        "EXCEPTION: mcause {:#x} ({} {}: {}), mepc {:#x}, mtval {:#x}, mstatus {:#x}",
        mcause,
        if interrupt { "interrupt" } else { "exception" },
        code,
        if interrupt {
            "unexpected interrupt"
        } else {
            exception_name(code)
        },
        mepc,
        mtval,
        mstatus
    );
    super::exit_failure()
}

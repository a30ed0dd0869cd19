//! The M-mode trap vector (`mtvec`, direct mode): every trap reports `mcause`, `mepc`,
//! `mtval` and `mstatus` on the console and ends QEMU with the failure status, so a fault
//! never hangs the machine. Interrupts stay disabled, so in practice only exceptions
//! arrive (privileged spec 3.1.15 `mcause`: the interrupt bit is bit 63).

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.trap, "ax"
    .balign 4
    .global iommu_platform_trap_entry
iommu_platform_trap_entry:
    # A fresh stack: the faulting one may be the problem.
    la sp, iommu_platform_trap_stack_top
    csrr a0, mcause
    csrr a1, mepc
    csrr a2, mtval
    csrr a3, mstatus
    call {handler}
.Ltrap_hang:
    wfi
    j .Ltrap_hang
    .popsection
    "#,
    handler = sym trap,
);

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

/// Every trap ends here: report on the console and exit with the failure status.
extern "C" fn trap(mcause: u64, mepc: u64, mtval: u64, mstatus: u64) -> ! {
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

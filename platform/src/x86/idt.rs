//! An interrupt descriptor table whose every entry prints the vector and exits, so that a fault
//! never hangs the machine (Intel SDM vol. 3, section 6.14: 64-bit IDT gate descriptors), but
//! for two vectors an image takes while it waits with interrupts enabled:
//!
//! - [`super::apic::FAULT_VECTOR`]: an IOMMU's fault interrupt. A small stub saves the
//!   registers a called function may clobber (the target has no SSE in generated code, and no
//!   red zone), clears the direction flag, calls [`super::apic::fault_handler`] and returns
//!   with `iretq`. The interrupt gate masks interrupts for the handler's duration.
//! - [`super::apic::SPURIOUS_VECTOR`]: returns at once without an EOI (SDM 11.9).
//!
//! The entry stubs are assembly (they must not touch the interrupted code's state before it is
//! saved); the table itself, `lidt` and CR2 come from the `x86_64` crate.

use core::arch::global_asm;

use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{Entry, InterruptDescriptorTable};

global_asm!(
    r#"
    .pushsection .text.isr, "ax"
    /* Vectors without an error code: push a zero to keep one frame layout. */
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
isr_\n:
    push 0
    push \n
    jmp isr_common
    .endr
    /* Vectors with an error code (SDM vol. 3, table 6-1). */
    .irp n, 8,10,11,12,13,14,17,21,29,30
isr_\n:
    push \n
    jmp isr_common
    .endr
isr_other:
    push 0
    push 255
    jmp isr_common

    /* The fault interrupt: caller-saved registers, then the Rust handler. On entry the CPU
       aligned RSP to 16 and pushed 5 qwords; 9 more leave RSP 16-aligned at the call. */
isr_fault:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    cld
    call {fault_handler}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq

isr_spurious:
    iretq

isr_common:
    mov rdi, qword ptr [rsp]        /* vector */
    mov rsi, qword ptr [rsp + 8]    /* error code */
    mov rdx, qword ptr [rsp + 16]   /* faulting RIP */
    and rsp, -16
    call {handler}
    ud2
    .popsection

    .pushsection .rodata.isr, "a"
    .balign 8
    .global iommu_platform_isr_table
iommu_platform_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
    .rept {fault_vector} - 32
    .quad isr_other
    .endr
    .quad isr_fault
    .rept 255 - {fault_vector} - 1
    .quad isr_other
    .endr
    .quad isr_spurious
    .popsection
    "#,
    handler = sym exception,
    fault_handler = sym super::apic::fault_handler,
    fault_vector = const super::apic::FAULT_VECTOR,
);

const _: () = assert!(
    super::apic::FAULT_VECTOR >= 32 && super::apic::SPURIOUS_VECTOR == 255,
    "the table above places the fault vector among 32..255 and the spurious one last"
);

unsafe extern "C" {
    /// The 256 entry stubs, defined above.
    static iommu_platform_isr_table: [u64; 256];
}

static mut IDT: InterruptDescriptorTable = InterruptDescriptorTable::new();

/// Points `entry` at the stub at `addr`: a present 64-bit interrupt gate, DPL 0, no IST, the
/// current code segment.
///
/// # Safety
/// `addr` is one of the stubs above.
unsafe fn point<F>(entry: &mut Entry<F>, addr: u64) {
    // SAFETY: the caller's contract; the stubs are in the identity-mapped low 4 GiB, so the
    // address is canonical.
    unsafe { entry.set_handler_addr(VirtAddr::new_truncate(addr)) };
}

/// Fills and loads the IDT. Called once, early, with interrupts disabled.
pub(super) fn init() {
    // SAFETY: single-threaded early boot; nothing else references IDT or reads the table
    // while it is filled; each entry gets the stub of its own vector (the table symbol is
    // defined by the assembly above). Vectors the crate keeps reserved (9, 15, 22..=27, 31)
    // stay not present: the CPU never raises them.
    unsafe {
        let table: *mut InterruptDescriptorTable = &raw mut IDT;
        let stubs: *const [u64; 256] = &raw const iommu_platform_isr_table;
        let idt = &mut *table;
        let stub = |v: usize| (*stubs)[v];
        point(&mut idt.divide_error, stub(0));
        point(&mut idt.debug, stub(1));
        point(&mut idt.non_maskable_interrupt, stub(2));
        point(&mut idt.breakpoint, stub(3));
        point(&mut idt.overflow, stub(4));
        point(&mut idt.bound_range_exceeded, stub(5));
        point(&mut idt.invalid_opcode, stub(6));
        point(&mut idt.device_not_available, stub(7));
        point(&mut idt.double_fault, stub(8));
        point(&mut idt.invalid_tss, stub(10));
        point(&mut idt.segment_not_present, stub(11));
        point(&mut idt.stack_segment_fault, stub(12));
        point(&mut idt.general_protection_fault, stub(13));
        point(&mut idt.page_fault, stub(14));
        point(&mut idt.x87_floating_point, stub(16));
        point(&mut idt.alignment_check, stub(17));
        point(&mut idt.machine_check, stub(18));
        point(&mut idt.simd_floating_point, stub(19));
        point(&mut idt.virtualization, stub(20));
        point(&mut idt.cp_protection_exception, stub(21));
        point(&mut idt.hv_injection_exception, stub(28));
        point(&mut idt.vmm_communication_exception, stub(29));
        point(&mut idt.security_exception, stub(30));
        for (i, entry) in idt.slice_mut(32..).iter_mut().enumerate() {
            point(entry, stub(32 + i));
        }
        (*table).load();
    }
}

fn name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        _ => "other",
    }
}

/// Every vector ends here: report on the console and exit with the failure code.
extern "C" fn exception(vector: u64, error: u64, rip: u64) -> ! {
    // The page-fault address (the handler runs with interrupts masked and touches no unmapped
    // memory before this, so CR2 is still the fault's).
    let cr2 = Cr2::read_raw();
    crate::console!(
        "EXCEPTION {} ({}): error code {:#x}, rip {:#x}, cr2 {:#x}",
        vector,
        name(vector),
        error,
        rip,
        cr2
    );
    super::exit(super::EXIT_FAILURE)
}

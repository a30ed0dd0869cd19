//! An interrupt descriptor table whose every entry prints the vector and exits, so that a fault
//! never hangs the machine (Intel SDM vol. 3, section 6.14: 64-bit IDT gate descriptors), but
//! for two vectors an image takes while it waits with interrupts enabled:
//!
//! - [`super::apic::FAULT_VECTOR`]: an IOMMU's fault interrupt. A small stub saves the
//!   registers a called function may clobber (the target has no SSE in generated code, and no
//!   red zone), clears the direction flag, calls [`super::apic::fault_handler`] and returns
//!   with `iretq`. The interrupt gate masks interrupts for the handler's duration.
//! - [`super::apic::SPURIOUS_VECTOR`]: returns at once without an EOI (SDM 11.9).

use core::arch::{asm, global_asm};

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
    mov rcx, cr2                    /* page-fault address */
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

/// One 16-byte 64-bit interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

static mut IDT: [Gate; 256] = [EMPTY; 256];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Fills and loads the IDT. Called once, early, with interrupts disabled.
pub(super) fn init() {
    // SAFETY: single-threaded early boot; nothing else references IDT or reads the table
    // while it is filled. The table symbol is defined by the assembly above.
    unsafe {
        let idt: *mut [Gate; 256] = &raw mut IDT;
        let table: *const [u64; 256] = &raw const iommu_platform_isr_table;
        for v in 0..256 {
            let handler = (*table)[v];
            (*idt)[v] = Gate {
                offset_low: handler as u16,
                selector: 0x08,
                ist: 0,
                type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            };
        }
        let ptr = DescriptorPointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: idt as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
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
extern "C" fn exception(vector: u64, error: u64, rip: u64, cr2: u64) -> ! {
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

//! PVH boot: the ELF note that makes QEMU start the image in 32-bit protected mode, and the
//! assembly that goes from there to 64-bit Rust.
//!
//! PVH entry state (Xen's `arch-x86/hvm/start_info.h`, "PVH boot"): 32-bit protected mode,
//! paging off, flat CS/DS, interrupts off, EBX = physical address of `hvm_start_info`.
//!
//! The boot code zeroes .bss, identity-maps the low 4 GiB with 2 MiB pages (RAM, the VT-d
//! registers at 0xfed90000, PCI BARs, the ECAM window at 0xb0000000; the upper 2 GiB uncached),
//! enables PAE, long mode, paging and SSE, loads a GDT with a 64-bit code segment and jumps to
//! [`super::rust_start`] with the start-info address as its argument.

use core::arch::global_asm;

/// Size of the boot stack.
pub const STACK_SIZE: usize = 1 << 20;

// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point, in the `.note.Xen` section the linker
// script keeps (an SHT_NOTE section, so the linker emits the PT_NOTE QEMU reads).
pvh::xen_elfnote_phys32_entry!(_pvh_start);

unsafe extern "C" {
    /// The 32-bit PVH entry below (protected mode, paging off, EBX = start info).
    fn _pvh_start() -> !;
}

global_asm!(
    r#"
    .pushsection .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
boot_stack:
    .skip {stack_size}
boot_stack_top:
    .popsection

    .pushsection .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08: 64-bit code, present, DPL 0 */
    .quad 0x00cf92000000ffff  /* 0x10: data, present, writable */
boot_gdt_end:
    .balign 4
    .word 0
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .global _pvh_start
_pvh_start:
    cli
    cld
    mov esi, ebx                /* keep hvm_start_info */

    /* Zero .bss (page tables and stack included). */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2                  /* both ends are 16-byte aligned */
    xor eax, eax
    rep stosd

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories. */
    mov eax, offset boot_pdpt
    or eax, 3
    mov dword ptr [boot_pml4], eax
    mov eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 16], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 24], eax

    /* 2048 2 MiB pages: present, writable, PS; from 2 GiB up also PWT|PCD (MMIO). */
    mov edi, offset boot_pd
    mov eax, 0x83
    xor ecx, ecx
.Lfill_pd:
    mov edx, eax
    cmp ecx, 1024
    jb .Lcached
    or edx, 0x18
.Lcached:
    mov dword ptr [edi + ecx * 8], edx
    add eax, 0x200000
    inc ecx
    cmp ecx, 2048
    jb .Lfill_pd

    mov eax, offset boot_pml4
    mov cr3, eax

    /* CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10). */
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax

    /* EFER.LME (bit 8). */
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr

    /* CR0: PG (31), MP (1), PE (0); EM (2) clear. */
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80000003
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, 0x08
    push eax
    mov eax, offset .Llong_mode
    push eax
    retf

    .code64
.Llong_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    mov edi, esi                /* first argument: hvm_start_info (zero-extended) */
    call {entry}
.Lhalt:
    cli
    hlt
    jmp .Lhalt
    .popsection
    "#,
    stack_size = const STACK_SIZE,
    entry = sym super::rust_start,
);

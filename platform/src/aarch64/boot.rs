//! Entry from QEMU's ELF loader to Rust at EL1 with the MMU on.
//!
//! Entry state (QEMU `-kernel <elf>` on `-machine virt`, no firmware): the CPU starts at the
//! ELF entry point at EL1 (EL2 with `virtualization=on`), MMU and caches off, x0 = 0 or the
//! DTB address. The boot code:
//!
//! 1. keeps x0 and reads CurrentEL; from EL2 it drops to EL1 (HCR_EL2.RW = 1, EL1 access to
//!    the physical counter and timer allowed, a GICv3 CPU interface's system registers
//!    allowed, SPSR_EL2 = EL1h with DAIF masked); at EL3 or
//!    EL0 it ends QEMU by semihosting with status 3;
//! 2. enables FP/SIMD (CPACR_EL1.FPEN = 0b11) before any Rust code can use a SIMD register;
//! 3. installs the exception vectors (VBAR_EL1, see [`super::exceptions`]);
//! 4. zeroes .bss (page table and stacks included) with aligned stores (MMU off: every data
//!    access is Device-nGnRnE, where unaligned accesses fault);
//! 5. builds an identity map in one level-1 table (4 KiB granule, 39-bit VA, 512 blocks of
//!    1 GiB; Arm ARM D8.3): 1 GiB..4 GiB (QEMU virt's RAM, `-m` up to 3 GiB) Normal
//!    write-back inner shareable, everything else Device-nGnRnE, never executable; MAIR_EL1
//!    attribute 0 = Device-nGnRnE (0x00), attribute 1 = Normal WB RA/WA (0xff);
//! 6. enables the MMU and the caches (SCTLR_EL1.M, C, I; alignment checking off), so Rust
//!    code runs on Normal memory (unaligned accesses allowed, DMA buffers coherent with the
//!    SMMU's table walks and edu's DMA, which QEMU performs on the same memory);
//! 7. sets the stack and calls [`super::rust_start`] with the DTB pointer and the entry EL.

use core::arch::global_asm;

/// Size of the boot stack.
pub const STACK_SIZE: usize = 1 << 20;
/// Size of the stack exception handlers switch to.
pub const EXCEPTION_STACK_SIZE: usize = 64 << 10;

/// Level-1 block descriptor for Normal memory: valid block (0b01), AttrIndx 1, SH = inner
/// shareable (0b11), AF (Arm ARM D8.3.1, "Block descriptor").
const NORMAL_BLOCK: u64 = 0b01 | 1 << 2 | 0b11 << 8 | 1 << 10;
/// Level-1 block descriptor for device memory: valid block, AttrIndx 0, AF, PXN and UXN.
const DEVICE_BLOCK: u64 = 0b01 | 1 << 10 | 1 << 53 | 1 << 54;
/// MAIR_EL1: attribute 0 = Device-nGnRnE, attribute 1 = Normal, inner and outer write-back
/// non-transient, read- and write-allocate (D19.2.97).
const MAIR: u64 = 0xff << 8;
/// TCR_EL1 (D19.2.139): T0SZ = 25 (39-bit VA, walks start at level 1), IRGN0 = ORGN0 = WB
/// WA, SH0 = inner shareable, TG0 = 4 KiB, EPD1 (no TTBR1 walks), IPS = 40 bits.
const TCR: u64 = 25 | 1 << 8 | 1 << 10 | 0b11 << 12 | 1 << 23 | 0b010 << 32;
/// SCTLR_EL1 bits set: M (MMU), C (data cache), I (instruction cache).
const SCTLR_SET: u64 = 1 << 0 | 1 << 2 | 1 << 12;
/// SCTLR_EL1 bits cleared: A (alignment check), WXN, EE (little-endian data).
const SCTLR_CLEAR: u64 = 1 << 1 | 1 << 19 | 1 << 25;
/// SCTLR_EL1 with the MMU off, the RES1 bits of ARMv8.0 set: the state EL2 hands over.
const SCTLR_EL1_OFF: u64 = 0x30d0_0800;
/// First and last (exclusive) GiB mapped as Normal memory.
const RAM_FIRST_GIB: u64 = 1;
const RAM_END_GIB: u64 = 4;
/// Semihosting SYS_EXIT parameter block reason: ADP_Stopped_ApplicationExit.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

global_asm!(
    r#"
    .pushsection .bss.boot, "aw", @nobits
    .balign 4096
boot_l1_table:
    .skip 4096
    .balign 16
boot_stack:
    .skip {stack_size}
boot_stack_top:
    .balign 16
    .global iommu_platform_exception_stack_top
iommu_platform_exception_stack:
    .skip {exc_stack_size}
iommu_platform_exception_stack_top:
    .popsection

    .pushsection .rodata.boot, "a"
    .balign 8
boot_bad_el_block:
    .quad {adp_exit}
    .quad 3
    .popsection

    .pushsection .text.boot, "ax"
    .global _start
_start:
    mov x19, x0                     /* DTB pointer (or 0) */
    mrs x20, CurrentEL
    ubfx x20, x20, #2, #2           /* entry exception level */
    cmp x20, #1
    b.eq .Lat_el1
    cmp x20, #2
    b.eq .Lfrom_el2
    /* EL3 or EL0: not supported. Semihosting SYS_EXIT with status 3. */
    mov x0, #0x18
    adrp x1, boot_bad_el_block
    add x1, x1, :lo12:boot_bad_el_block
    hlt #0xf000
.Lbad_el_hang:
    wfe
    b .Lbad_el_hang

.Lfrom_el2:
    mov x0, #(1 << 31)              /* HCR_EL2.RW: EL1 is AArch64; nothing trapped */
    msr hcr_el2, x0
    /* A GICv3 CPU interface (ID_AA64PFR0_EL1.GIC != 0): ICC_SRE_EL2.SRE and .Enable, so EL1
       may use the system-register interface (GICv3 12.2: ICC_SRE_EL2). */
    mrs x0, id_aa64pfr0_el1
    ubfx x0, x0, #24, #4
    cbz x0, .Lno_gicv3
    mrs x0, S3_4_C12_C9_5
    orr x0, x0, #0x1                /* SRE */
    orr x0, x0, #0x8                /* Enable: lower ELs may set their SRE */
    msr S3_4_C12_C9_5, x0
    isb
.Lno_gicv3:
    mrs x0, cnthctl_el2
    orr x0, x0, #3                  /* EL1PCTEN, EL1PCEN: EL1 reads the physical counter */
    msr cnthctl_el2, x0
    msr cntvoff_el2, xzr
    ldr x0, ={sctlr_off}
    msr sctlr_el1, x0
    mov x0, #0x3c5                  /* SPSR: EL1h, D, A, I, F masked */
    msr spsr_el2, x0
    adr x0, .Lat_el1
    msr elr_el2, x0
    isb
    eret

.Lat_el1:
    /* FP/SIMD: CPACR_EL1.FPEN = 0b11, before any Rust code. */
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb

    /* Exception vectors. */
    adrp x0, iommu_platform_vectors
    add x0, x0, :lo12:iommu_platform_vectors
    msr vbar_el1, x0
    isb

    /* Zero .bss with aligned 16-byte stores (both ends are 16-byte aligned). */
    adrp x0, __bss_start
    add x0, x0, :lo12:__bss_start
    adrp x1, __bss_end
    add x1, x1, :lo12:__bss_end
.Lzero_bss:
    cmp x0, x1
    b.hs .Lbss_done
    stp xzr, xzr, [x0], #16
    b .Lzero_bss
.Lbss_done:

    /* Level-1 table: entry i maps [i GiB, i+1 GiB). */
    adrp x0, boot_l1_table
    add x0, x0, :lo12:boot_l1_table
    mov x1, #0                      /* i */
    ldr x3, ={normal}
    ldr x4, ={device}
.Lfill_l1:
    lsl x2, x1, #30
    cmp x1, #{ram_first}
    b.lo .Ldevice
    cmp x1, #{ram_end}
    b.hs .Ldevice
    orr x2, x2, x3
    b .Lstore
.Ldevice:
    orr x2, x2, x4
.Lstore:
    str x2, [x0, x1, lsl #3]
    add x1, x1, #1
    cmp x1, #512
    b.lo .Lfill_l1

    ldr x1, ={mair}
    msr mair_el1, x1
    ldr x1, ={tcr}
    msr tcr_el1, x1
    msr ttbr0_el1, x0
    dsb sy
    tlbi vmalle1
    dsb nsh
    isb
    mrs x1, sctlr_el1
    ldr x2, ={sctlr_set}
    orr x1, x1, x2
    ldr x2, ={sctlr_clear}
    bic x1, x1, x2
    msr sctlr_el1, x1
    isb

    adrp x0, boot_stack_top
    add x0, x0, :lo12:boot_stack_top
    mov sp, x0
    mov x29, #0
    mov x30, #0
    mov x0, x19
    mov x1, x20
    bl {entry}
.Lhalt:
    wfe
    b .Lhalt

    /* Resolves `__iommu_platform_main` (through the linker script's PROVIDE) in a binary
       that names no main function. */
    .global __iommu_platform_no_main
__iommu_platform_no_main:
    b {no_main}
    .popsection
    "#,
    stack_size = const STACK_SIZE,
    exc_stack_size = const EXCEPTION_STACK_SIZE,
    adp_exit = const ADP_STOPPED_APPLICATION_EXIT,
    sctlr_off = const SCTLR_EL1_OFF,
    normal = const NORMAL_BLOCK,
    device = const DEVICE_BLOCK,
    ram_first = const RAM_FIRST_GIB,
    ram_end = const RAM_END_GIB,
    mair = const MAIR,
    tcr = const TCR,
    sctlr_set = const SCTLR_SET,
    sctlr_clear = const SCTLR_CLEAR,
    entry = sym super::rust_start,
    no_main = sym super::no_main,
);

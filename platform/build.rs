//! Linker setup for the bare-metal images. Host builds get nothing.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os != "none" {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    if arch == "x86_64" {
        // PVH image linked at 1 MiB. `-C relocation-model=static` comes from
        // .cargo/config.toml: the 32-bit boot code needs absolute 32-bit relocations.
        println!("cargo:rerun-if-changed=link-x86_64.ld");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link-x86_64.ld");
        // defmt's interned-string section (the file comes with the defmt crate).
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
    if arch == "aarch64" && env::var_os("CARGO_FEATURE_MICROKIT").is_some() {
        // seL4 Microkit protection domains, linked where Microkit's own PD images are.
        println!("cargo:rerun-if-changed=link-microkit.ld");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link-microkit.ld");
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
        return;
    }
    if arch == "riscv64" {
        // QEMU virt with -bios none: linked at the start of RAM, entered in M-mode.
        println!("cargo:rerun-if-changed=link-riscv64.ld");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link-riscv64.ld");
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
    if arch == "aarch64" {
        // QEMU virt image linked 2 MiB into RAM (room for the DTB below it).
        println!("cargo:rerun-if-changed=link-aarch64.ld");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link-aarch64.ld");
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
}

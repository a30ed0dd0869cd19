//! The table of QEMU images the runner knows: how to build each and how to boot it.

/// How an image's two output channels (plain-text console, defmt frames) leave QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// Two UARTs: the first is the console, the second carries only defmt frames. Each is
    /// given to QEMU as `-serial file:<path>`.
    TwoSerials,
    /// One UART carries both: console text as it is, each defmt frame opened by 0xFF (never
    /// in UTF-8 text) and closed by its 0x00 terminator (riscv64 virt has one UART; see
    /// `iommu_platform::riscv64::serial`). Given to QEMU as one `-serial file:<path>`.
    Muxed,
}

/// One bootable image.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Name given on the command line (`qemu -- <name>`).
    pub name: &'static str,
    /// One line saying what the image checks.
    pub about: &'static str,
    /// Rust target triple the image is built for.
    pub rust_target: &'static str,
    /// Cargo package holding the image's binary.
    pub package: &'static str,
    /// The image's binary.
    pub bin: &'static str,
    /// The QEMU system emulator.
    pub qemu: &'static str,
    /// QEMU arguments before the output channels and `-kernel <elf>`.
    pub qemu_args: &'static [&'static str],
    /// How the console and the defmt stream leave QEMU.
    pub channels: Channels,
    /// QEMU's exit status when the image reports success.
    pub success_status: i32,
}

/// Every image the runner can boot.
pub const TARGETS: &[Target] = &[
    Target {
        name: "vtd",
        about: "x86_64 q35 + intel-iommu (VT-d) + edu: protocol client, server and VT-d backend",
        rust_target: "x86_64-unknown-none",
        package: "iommu-platform",
        bin: "vtd",
        qemu: "qemu-system-x86_64",
        qemu_args: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=off",
            "-device",
            "edu",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            // A triple fault then ends QEMU (status 0, a failure) instead of rebooting forever.
            "-no-reboot",
        ],
        channels: Channels::TwoSerials,
        // isa-debug-exit: status = (value << 1) | 1; the image writes 0x10 for success
        // (iommu_platform::x86::EXIT_SUCCESS).
        success_status: 33,
    },
    Target {
        name: "vtd-bridge",
        about: "the vtd image with edu behind a PCIe-to-PCI bridge (DMA carries 01:00.0)",
        rust_target: "x86_64-unknown-none",
        package: "iommu-platform",
        bin: "vtd",
        qemu: "qemu-system-x86_64",
        qemu_args: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=off",
            // A conventional PCI bus behind a PCI Express to PCI bridge on the root bus: the
            // bridge issues edu's requests with its secondary bus and devfn 0.
            "-device",
            "pcie-pci-bridge,id=b",
            "-device",
            "edu,bus=b,addr=3",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ],
        channels: Channels::TwoSerials,
        success_status: 33,
    },
    Target {
        name: "vtd-rootport-bridge",
        about: "the vtd image with edu behind a PCIe root port and a PCIe-to-PCI bridge",
        rust_target: "x86_64-unknown-none",
        package: "iommu-platform",
        bin: "vtd",
        qemu: "qemu-system-x86_64",
        qemu_args: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=off",
            // Root port (adds no alias) -> PCI Express to PCI bridge (its secondary bus,
            // devfn 0) -> edu.
            "-device",
            "pcie-root-port,id=rp,chassis=1",
            "-device",
            "pcie-pci-bridge,id=b,bus=rp",
            "-device",
            "edu,bus=b,addr=3",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ],
        channels: Channels::TwoSerials,
        success_status: 33,
    },
    Target {
        name: "amd",
        about: "x86_64 q35 + amd-iommu (AMD-Vi) + edu: protocol client, server and AMD-Vi backend",
        rust_target: "x86_64-unknown-none",
        package: "iommu-platform",
        bin: "amd",
        qemu: "qemu-system-x86_64",
        qemu_args: &[
            "-machine",
            "q35",
            // pt=off: QEMU 10.0 never translates with the default pt=on. Its event log records
            // nothing (fixed in 10.1); the image finds that out and checks refused DMA by the
            // data (and by the fault records where the log works).
            "-device",
            "amd-iommu,pt=off,intremap=off",
            "-device",
            "edu",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ],
        channels: Channels::TwoSerials,
        success_status: 33,
    },
    Target {
        name: "smmuv3",
        about: "aarch64 virt + SMMUv3 + edu: protocol client, server and SMMUv3 backend",
        rust_target: "aarch64-unknown-none",
        package: "iommu-platform",
        bin: "smmuv3",
        qemu: "qemu-system-aarch64",
        qemu_args: &[
            "-machine",
            "virt,iommu=smmuv3",
            "-cpu",
            "cortex-a57",
            // edu's DMA mask widened from 28 to 40 bits: the image's untranslated check (SMMU
            // still off) makes edu reach RAM, which starts at 1 GiB on virt.
            "-device",
            "edu,dma_mask=0xffffffffff",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            // The image exits through semihosting SYS_EXIT (status = its exit code).
            "-semihosting-config",
            "enable=on,target=native",
        ],
        // QEMU virt without a secure world: the first -serial is UART0 (0x0900_0000, console),
        // the second UART1 (0x0904_0000, defmt).
        channels: Channels::TwoSerials,
        // Semihosting exit code 0 (iommu_platform::aarch64::EXIT_SUCCESS).
        success_status: 0,
    },
    Target {
        name: "smmuv3-gicv3",
        about: "the smmuv3 image on a GICv3 (its SMMU interrupts through the GICv3 distributor)",
        rust_target: "aarch64-unknown-none",
        package: "iommu-platform",
        bin: "smmuv3",
        qemu: "qemu-system-aarch64",
        qemu_args: &[
            "-machine",
            "virt,iommu=smmuv3,gic-version=3",
            "-cpu",
            "cortex-a57",
            "-device",
            "edu,dma_mask=0xffffffffff",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-semihosting-config",
            "enable=on,target=native",
        ],
        channels: Channels::TwoSerials,
        success_status: 0,
    },
    Target {
        name: "riscv",
        about: "riscv64 virt + RISC-V IOMMU (iommu-sys) + edu: protocol client, server and RISC-V IOMMU backend",
        rust_target: "riscv64gc-unknown-none-elf",
        package: "iommu-platform",
        bin: "riscv",
        qemu: "qemu-system-riscv64",
        qemu_args: &[
            // The platform form of the RISC-V IOMMU (0x3010000, wired interrupts); the image
            // also handles the PCI form (`-device riscv-iommu-pci`).
            "-machine",
            "virt,iommu-sys=on",
            "-bios",
            "none",
            // edu's DMA mask widened from 28 to 40 bits: the image's untranslated check (the
            // IOMMU in Bare mode) makes edu reach RAM, which starts at 2 GiB on virt.
            "-device",
            "edu,dma_mask=0xffffffffff",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ],
        // virt has one UART (0x1000_0000): console and defmt share it.
        channels: Channels::Muxed,
        // The sifive_test finisher's PASS (iommu_platform::riscv64::EXIT_SUCCESS).
        success_status: 0,
    },
    Target {
        name: "riscv-pci",
        about: "riscv64 virt + RISC-V IOMMU (riscv-iommu-pci) + edu: the riscv image with the PCI form of the IOMMU",
        rust_target: "riscv64gc-unknown-none-elf",
        package: "iommu-platform",
        bin: "riscv",
        qemu: "qemu-system-riscv64",
        qemu_args: &[
            "-machine",
            "virt",
            "-bios",
            "none",
            // The IOMMU at 00:01.0 (its registers in BAR0, which the image assigns), edu
            // behind it at 00:02.0.
            "-device",
            "riscv-iommu-pci",
            "-device",
            "edu,dma_mask=0xffffffffff",
            "-m",
            "256M",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ],
        channels: Channels::Muxed,
        success_status: 0,
    },
];

/// The target named `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

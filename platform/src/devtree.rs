//! Device-tree discovery: what the aarch64 and riscv64 images need to know about their
//! machine, read from the flattened device tree (Devicetree Specification 0.4) that QEMU
//! builds.
//!
//! - memory: every node with `device_type = "memory"` (its `reg`);
//! - SMMUv3 units: nodes compatible with `"arm,smmu-v3"` (Linux binding
//!   `iommu/arm,smmu-v3.yaml`): `reg`, `phandle`, `dma-coherent`, and `interrupts` with
//!   `interrupt-names` ("eventq", "gerror", "combined", ...) when their interrupt parent is
//!   the GIC;
//! - the interrupt controller: the first node compatible with a GICv2 (`"arm,gic-400"`,
//!   `"arm,cortex-a15-gic"`, ...) or GICv3 (`"arm,gic-v3"`) (binding
//!   `interrupt-controller/arm,gic.yaml`, `arm,gic-v3.yaml`): distributor and CPU interface
//!   (v2) or redistributor (v3) regions; its 3-cell interrupt specifiers `<type number flags>`
//!   give SPI `number` as INTID `number + 32` (PPI: `+ 16`), flags 1/2 edge, 4/8 level;
//! - RISC-V IOMMUs (Linux binding `iommu/riscv,iommu.yaml`): platform units compatible with
//!   `"riscv,iommu"` (`reg`, `phandle`, `interrupts`), and PCI units compatible with
//!   `"riscv,pci-iommu"`, child nodes of the PCIe host whose `reg` names their PCI function
//!   (`phys.hi` bits 23:8 = bus, device, function), registers in the function's BAR0;
//! - RISC-V timer: `timebase-frequency` of `/cpus` (RISC-V binding `riscv/cpus.yaml`) and
//!   the CLINT (`"riscv,clint0"` or `"sifive,clint0"`), whose `mtime` counts at that rate;
//! - the RISC-V PLIC (`"riscv,plic0"` or `"sifive,plic-1.0.0"`, binding
//!   `interrupt-controller/sifive,plic-1.0.0.yaml`): `reg`, `phandle`, and which of its
//!   contexts is the first hart's machine-mode external interrupt (the first
//!   `interrupts-extended` entry naming interrupt 11);
//! - the PCIe host: the first node compatible with `"pci-host-ecam-generic"` (binding
//!   `pci/host-generic-pci.yaml`): `reg` = the ECAM window, `bus-range`, `ranges` = the windows
//!   through which the CPU reaches PCI memory and I/O space (PCI bus binding, IEEE 1275 PCI
//!   supplement: the 3-cell PCI address `phys.hi` carries the space code in bits 25:24 and the
//!   prefetchable bit 30), and `iommu-map` / `iommu-map-mask` (binding `pci/pci-iommu.yaml`),
//!   which turn a requester id into an IOMMU and the StreamID it sees.
//!
//! Parsing uses the `fdt` crate for the structure; property values are decoded here. Nothing
//! is hard-coded but the compatible strings. This module is architecture independent and is
//! tested on the host against a device tree that QEMU 10.0 generated.

use fdt::Fdt;
use fdt::node::FdtNode;
use heapless::Vec;

/// Most memory regions kept.
pub const MAX_MEMORY: usize = 4;
/// Most SMMUs kept.
pub const MAX_SMMUS: usize = 4;
/// Most RISC-V IOMMUs kept.
pub const MAX_RISCV_IOMMUS: usize = 4;
/// Most `interrupts` cells kept per RISC-V IOMMU.
pub const MAX_IRQ_CELLS: usize = 8;
/// Most `ranges` windows of the PCIe host kept.
pub const MAX_WINDOWS: usize = 4;
/// Most `iommu-map` entries kept.
pub const MAX_MAP_ENTRIES: usize = 8;
/// Compatible strings of GICv2-style interrupt controllers (distributor + CPU interface).
const GIC_V2: [&str; 5] = [
    "arm,gic-400",
    "arm,cortex-a15-gic",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
    "arm,gic-v2",
];
/// Compatible string of GICv3 interrupt controllers (distributor + redistributors).
const GIC_V3: &str = "arm,gic-v3";

/// Why the device tree could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum DtError {
    /// No FDT header (bad magic), or the blob is shorter than its header says.
    BadHeader,
    /// A property is missing or its value does not have the size its cells say.
    BadProperty {
        /// The property's name.
        name: &'static str,
    },
    /// More nodes or entries than this module keeps.
    TooMany {
        /// What overflowed.
        what: &'static str,
    },
    /// An `iommu-map` names an IOMMU whose `#iommu-cells` is not 1 (the only form decoded).
    UnsupportedIommuCells {
        /// Its `#iommu-cells` (0 when absent).
        cells: u32,
    },
    /// An `iommu-map` names a phandle no node has.
    UnknownPhandle {
        /// The phandle.
        phandle: u32,
    },
}

impl core::fmt::Display for DtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DtError::BadHeader => {
                f.write_str("no device tree: bad FDT magic, or shorter than its header says")
            }
            DtError::BadProperty { name } => write!(
                f,
                "device tree property `{name}` is missing or its size disagrees with its cells"
            ),
            DtError::TooMany { what } => {
                write!(f, "more {what} in the device tree than this module keeps")
            }
            DtError::UnsupportedIommuCells { cells } => write!(
                f,
                "an iommu-map names an IOMMU with #iommu-cells = {cells}; only 1 is decoded"
            ),
            DtError::UnknownPhandle { phandle } => {
                write!(
                    f,
                    "an iommu-map names phandle {phandle:#x}, which no node has"
                )
            }
        }
    }
}

impl core::error::Error for DtError {}

/// A physical address range (logged as `base+size` in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

#[cfg(target_os = "none")]
impl defmt::Format for Region {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u64:#x}+{=u64:#x}", self.base, self.size)
    }
}

/// One interrupt line at the GIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Interrupt {
    /// The GIC's interrupt id (SPIs from 32, PPIs 16..32).
    pub intid: u32,
    /// Edge-triggered (else level-sensitive).
    pub edge: bool,
}

/// The wired interrupts of an SMMUv3 the device tree names (binding `arm,smmu-v3.yaml`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct SmmuIrqs {
    /// "eventq": the Event queue became non-empty.
    pub eventq: Option<Interrupt>,
    /// "gerror": a global error became active.
    pub gerror: Option<Interrupt>,
    /// "combined": one line for every source.
    pub combined: Option<Interrupt>,
}

impl SmmuIrqs {
    /// The lines that signal faults and errors (event queue, global errors, or the combined
    /// line), without duplicates.
    pub fn fault_lines(&self) -> Vec<Interrupt, 3> {
        let mut v = Vec::new();
        for i in [self.eventq, self.gerror, self.combined]
            .into_iter()
            .flatten()
        {
            if !v.contains(&i) {
                let _ = v.push(i);
            }
        }
        v
    }
}

/// One SMMUv3 unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Smmu {
    /// Its register frame (128 KiB: pages 0 and 1).
    pub reg: Region,
    /// Its phandle, which `iommu-map` entries name; `None` when nothing refers to it.
    pub phandle: Option<u32>,
    /// `dma-coherent`: its table walks and queue accesses snoop CPU caches.
    pub coherent: bool,
    /// Its wired interrupts at the GIC (none when its interrupt parent is something else).
    pub irqs: SmmuIrqs,
}

/// The GIC architecture version of the interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum GicVersion {
    /// GICv2: memory-mapped distributor and CPU interface.
    V2,
    /// GICv3: memory-mapped distributor and redistributors, system-register CPU interface.
    V3,
}

/// The GIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Gic {
    /// Architecture version.
    pub version: GicVersion,
    /// The distributor's registers (GICD).
    pub distributor: Region,
    /// GICv2: the CPU interface's registers (GICC); GICv3: the first redistributor region
    /// (GICR frames of 128 KiB, one per CPU).
    pub cpu_or_redistributor: Region,
    /// Its phandle (what `interrupt-parent` names).
    pub phandle: Option<u32>,
}

/// The RISC-V platform-level interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Plic {
    /// Its register block.
    pub reg: Region,
    /// Its phandle (what `interrupt-parent` names).
    pub phandle: Option<u32>,
    /// The context delivering to the first hart in machine mode: the index of the first
    /// `interrupts-extended` entry (`<hart-intc cause>`, 2 cells) whose cause is 11, the
    /// machine external interrupt (privileged spec, `mcause` values).
    pub m_context: Option<u32>,
}

/// Where a RISC-V IOMMU's registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum RiscvIommuAt {
    /// A platform device (`"riscv,iommu"`): its register block.
    Platform(Region),
    /// A PCI function (`"riscv,pci-iommu"`): its requester id (bus << 8 | device << 3 |
    /// function); the registers are its BAR0, which software assigns.
    Pci(u16),
}

/// One RISC-V IOMMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiscvIommu {
    /// Where it is.
    pub at: RiscvIommuAt,
    /// Its phandle, which `iommu-map` entries name.
    pub phandle: Option<u32>,
    /// The raw cells of its `interrupts` property (wired interrupt specifiers in the
    /// interrupt parent's format; empty for a PCI unit, which signals by MSI).
    pub interrupts: Vec<u32, MAX_IRQ_CELLS>,
}

#[cfg(target_os = "none")]
impl defmt::Format for RiscvIommu {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(
            f,
            "{} phandle {} interrupts {=[?]}",
            self.at,
            self.phandle,
            self.interrupts.as_slice()
        )
    }
}

/// The PCI address space a `ranges` window opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Space {
    /// Configuration space (space code 0b00).
    Config,
    /// I/O space (0b01).
    Io,
    /// 32-bit memory space (0b10).
    Mem32,
    /// 64-bit memory space (0b11).
    Mem64,
}

/// One window of the PCIe host's `ranges` (logged with addresses in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The PCI space.
    pub space: Space,
    /// Whether the window is prefetchable.
    pub prefetchable: bool,
    /// First PCI bus address of the window.
    pub pci_addr: u64,
    /// The CPU physical address of `pci_addr`.
    pub cpu_addr: u64,
    /// Length in bytes.
    pub size: u64,
}

#[cfg(target_os = "none")]
impl defmt::Format for Window {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "{} cpu {=u64:#x}+{=u64:#x} = pci {=u64:#x}{=str}",
            self.space,
            self.cpu_addr,
            self.size,
            self.pci_addr,
            if self.prefetchable {
                " prefetchable"
            } else {
                ""
            }
        )
    }
}

impl Window {
    /// The CPU address of PCI bus address `pci`, if the window holds it.
    pub fn cpu_of(&self, pci: u64) -> Option<u64> {
        let off = pci.checked_sub(self.pci_addr)?;
        (off < self.size).then(|| self.cpu_addr + off)
    }
}

/// One `iommu-map` entry: requester ids `rid_base..rid_base + len` reach the IOMMU with
/// phandle `iommu` as ids `id_base..id_base + len` (logged with ids in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapEntry {
    /// First requester id (after `iommu-map-mask`).
    pub rid_base: u32,
    /// The IOMMU's phandle.
    pub iommu: u32,
    /// The id (StreamID) of `rid_base` at the IOMMU.
    pub id_base: u32,
    /// Number of ids.
    pub len: u32,
}

#[cfg(target_os = "none")]
impl defmt::Format for IdMapEntry {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "rid {=u32:#06x}+{=u32:#x} -> iommu {=u32:#x} id {=u32:#x}",
            self.rid_base,
            self.len,
            self.iommu,
            self.id_base
        )
    }
}

/// The generic ECAM PCIe host bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// The ECAM window (1 MiB per bus, starting at `bus_first`).
    pub ecam: Region,
    /// First bus number (`bus-range`, default 0).
    pub bus_first: u8,
    /// Last bus number (`bus-range`, default 255), capped by the ECAM window's size.
    pub bus_last: u8,
    /// The `ranges` windows.
    pub windows: Vec<Window, MAX_WINDOWS>,
    /// The `iommu-map` entries (empty: no device behind an IOMMU).
    pub iommu_map: Vec<IdMapEntry, MAX_MAP_ENTRIES>,
    /// `iommu-map-mask` (all ones when absent).
    pub iommu_map_mask: u32,
    /// `dma-coherent`: device DMA snoops CPU caches.
    pub coherent: bool,
}

#[cfg(target_os = "none")]
impl defmt::Format for PciHost {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(
            f,
            "ECAM {} buses {=u8}..={=u8}, {=usize} window(s), {=usize} iommu-map entr(ies), mask {=u32:#x}, coherent {=bool}",
            self.ecam,
            self.bus_first,
            self.bus_last,
            self.windows.len(),
            self.iommu_map.len(),
            self.iommu_map_mask,
            self.coherent
        )
    }
}

impl PciHost {
    /// The first non-prefetchable 32-bit memory window (where BARs go without firmware).
    pub fn mem32(&self) -> Option<Window> {
        self.windows
            .iter()
            .copied()
            .find(|w| w.space == Space::Mem32 && !w.prefetchable)
            .or_else(|| {
                self.windows
                    .iter()
                    .copied()
                    .find(|w| w.space == Space::Mem32)
            })
    }

    /// Number of buses the ECAM window covers from `bus_first` to `bus_last`.
    pub fn bus_count(&self) -> u16 {
        u16::from(self.bus_last) - u16::from(self.bus_first) + 1
    }

    /// The IOMMU (by phandle) and the id it sees for requester id `rid`, per `iommu-map`
    /// (`pci-iommu.yaml`: the masked id is looked up in each entry in turn). `None` when no
    /// entry covers it: the device's DMA does not pass an IOMMU.
    pub fn iommu_for(&self, rid: u16) -> Option<(u32, u32)> {
        let id = u32::from(rid) & self.iommu_map_mask;
        self.iommu_map.iter().find_map(|e| {
            let off = id.checked_sub(e.rid_base)?;
            (off < e.len).then(|| (e.iommu, e.id_base.wrapping_add(off)))
        })
    }
}

/// What the device tree says about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// RAM regions.
    pub memory: Vec<Region, MAX_MEMORY>,
    /// SMMUv3 units, in device-tree order.
    pub smmus: Vec<Smmu, MAX_SMMUS>,
    /// RISC-V IOMMUs, in device-tree order.
    pub riscv_iommus: Vec<RiscvIommu, MAX_RISCV_IOMMUS>,
    /// The PCIe host, if there is one.
    pub pci: Option<PciHost>,
    /// `/cpus/timebase-frequency`: the rate of the RISC-V `mtime` counter, in Hz.
    pub timebase_hz: Option<u64>,
    /// The RISC-V CLINT's register block (`mtime` at offset 0xbff8).
    pub clint: Option<Region>,
    /// The GIC, if there is one.
    pub gic: Option<Gic>,
    /// The RISC-V PLIC, if there is one.
    pub plic: Option<Plic>,
}

impl Machine {
    /// The RISC-V IOMMU with phandle `phandle`, with its index in [`Machine::riscv_iommus`].
    pub fn riscv_iommu_by_phandle(&self, phandle: u32) -> Option<(usize, &RiscvIommu)> {
        self.riscv_iommus
            .iter()
            .enumerate()
            .find(|(_, s)| s.phandle == Some(phandle))
    }

    /// The SMMU with phandle `phandle`, with its index in [`Machine::smmus`].
    pub fn smmu_by_phandle(&self, phandle: u32) -> Option<(usize, &Smmu)> {
        self.smmus
            .iter()
            .enumerate()
            .find(|(_, s)| s.phandle == Some(phandle))
    }
}

/// Reads `n` (0, 1 or 2) big-endian cells from the front of `bytes`; returns the value and
/// the rest.
fn take_cells(bytes: &[u8], n: usize) -> Option<(u64, &[u8])> {
    if n > 2 || bytes.len() < 4 * n {
        return None;
    }
    let (head, rest) = bytes.split_at(4 * n);
    let v = head.chunks_exact(4).fold(0u64, |acc, c| {
        acc << 32 | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    });
    Some((v, rest))
}

/// A property holding exactly one cell.
fn u32_prop(node: FdtNode<'_, '_>, name: &'static str) -> Result<Option<u32>, DtError> {
    match node.property(name) {
        None => Ok(None),
        Some(p) => match p.value {
            [a, b, c, d] => Ok(Some(u32::from_be_bytes([*a, *b, *c, *d]))),
            _ => Err(DtError::BadProperty { name }),
        },
    }
}

/// The first `reg` entry of a node whose parent uses at most 2 address and size cells.
fn first_reg(node: FdtNode<'_, '_>) -> Result<Option<Region>, DtError> {
    let Some(mut regs) = node.raw_reg() else {
        return Ok(None);
    };
    let Some(r) = regs.next() else {
        return Ok(None);
    };
    let (base, _) =
        take_cells(r.address, r.address.len() / 4).ok_or(DtError::BadProperty { name: "reg" })?;
    let (size, _) =
        take_cells(r.size, r.size.len() / 4).ok_or(DtError::BadProperty { name: "reg" })?;
    Ok(Some(Region { base, size }))
}

/// The number of address cells of `node`'s parent, as its `reg` shows (2 when it has none:
/// the default for 64-bit machines).
fn parent_address_cells(node: FdtNode<'_, '_>) -> usize {
    node.raw_reg()
        .and_then(|mut r| r.next())
        .map_or(2, |r| r.address.len() / 4)
}

fn is_compatible(node: FdtNode<'_, '_>, what: &str) -> bool {
    node.compatible()
        .is_some_and(|c| c.all().any(|s| s == what))
}

/// The GIC version a node is compatible with, if it is a GIC.
fn gic_version(node: FdtNode<'_, '_>) -> Option<GicVersion> {
    if is_compatible(node, GIC_V3) {
        Some(GicVersion::V3)
    } else if GIC_V2.iter().any(|c| is_compatible(node, c)) {
        Some(GicVersion::V2)
    } else {
        None
    }
}

/// Every `reg` entry of a node whose parent uses at most 2 address and size cells.
fn regs<const N: usize>(node: FdtNode<'_, '_>) -> Result<Vec<Region, N>, DtError> {
    let mut out = Vec::new();
    if let Some(regs) = node.raw_reg() {
        for r in regs {
            let (base, _) = take_cells(r.address, r.address.len() / 4)
                .ok_or(DtError::BadProperty { name: "reg" })?;
            let (size, _) =
                take_cells(r.size, r.size.len() / 4).ok_or(DtError::BadProperty { name: "reg" })?;
            if out.push(Region { base, size }).is_err() {
                break;
            }
        }
    }
    Ok(out)
}

fn parse_gic(node: FdtNode<'_, '_>, version: GicVersion) -> Result<Gic, DtError> {
    let r: Vec<Region, 2> = regs(node)?;
    let [distributor, cpu_or_redistributor] = r.as_slice() else {
        return Err(DtError::BadProperty { name: "reg" });
    };
    Ok(Gic {
        version,
        distributor: *distributor,
        cpu_or_redistributor: *cpu_or_redistributor,
        phandle: u32_prop(node, "phandle")?,
    })
}

/// The wired interrupts of an SMMU node: decoded when its interrupt parent (its own
/// `interrupt-parent`, else the root's) is a GIC with 3-cell specifiers; named by
/// `interrupt-names`.
fn smmu_irqs(fdt: &Fdt<'_>, node: FdtNode<'_, '_>) -> Result<SmmuIrqs, DtError> {
    let mut irqs = SmmuIrqs::default();
    let (Some(spec), Some(names)) = (
        node.property("interrupts"),
        node.property("interrupt-names"),
    ) else {
        return Ok(irqs);
    };
    let parent = match u32_prop(node, "interrupt-parent")? {
        Some(p) => Some(p),
        None => match fdt.find_node("/") {
            Some(root) => u32_prop(root, "interrupt-parent")?,
            None => None,
        },
    };
    let Some(gic) = parent.and_then(|p| fdt.find_phandle(p)) else {
        return Ok(irqs);
    };
    if gic_version(gic).is_none() || u32_prop(gic, "#interrupt-cells")? != Some(3) {
        return Ok(irqs);
    }
    if spec.value.len() % 12 != 0 {
        return Err(DtError::BadProperty { name: "interrupts" });
    }
    let names = names.value.split(|&b| b == 0);
    for (cells, name) in spec.value.chunks_exact(12).zip(names) {
        let word = |i: usize| {
            u32::from_be_bytes([
                cells[4 * i],
                cells[4 * i + 1],
                cells[4 * i + 2],
                cells[4 * i + 3],
            ])
        };
        let intid = match word(0) {
            0 => word(1).checked_add(32),
            1 => word(1).checked_add(16),
            _ => None,
        }
        .ok_or(DtError::BadProperty { name: "interrupts" })?;
        let irq = Some(Interrupt {
            intid,
            edge: word(2) & 0x3 != 0,
        });
        match name {
            b"eventq" => irqs.eventq = irq,
            b"gerror" => irqs.gerror = irq,
            b"combined" => irqs.combined = irq,
            _ => {}
        }
    }
    Ok(irqs)
}

fn parse_pci(fdt: &Fdt<'_>, node: FdtNode<'_, '_>) -> Result<PciHost, DtError> {
    let ecam = first_reg(node)?.ok_or(DtError::BadProperty { name: "reg" })?;
    let (mut bus_first, mut bus_last) = (0u8, 255u8);
    if let Some(p) = node.property("bus-range") {
        let (first, rest) =
            take_cells(p.value, 1).ok_or(DtError::BadProperty { name: "bus-range" })?;
        let (last, _) = take_cells(rest, 1).ok_or(DtError::BadProperty { name: "bus-range" })?;
        if first > last || last > 255 {
            return Err(DtError::BadProperty { name: "bus-range" });
        }
        (bus_first, bus_last) = (first as u8, last as u8);
    }
    // The ECAM window bounds the buses that can be reached.
    let ecam_buses = (ecam.size >> 20).min(256);
    if ecam_buses == 0 {
        return Err(DtError::BadProperty { name: "reg" });
    }
    bus_last = bus_last.min((u64::from(bus_first) + ecam_buses - 1).min(255) as u8);

    // ranges: <phys.hi phys.mid phys.lo> <parent address> <size>.
    let cells = node.cell_sizes();
    let (child_ac, size_c, parent_ac) = (
        cells.address_cells,
        cells.size_cells,
        parent_address_cells(node),
    );
    let mut windows = Vec::new();
    if let Some(p) = node.property("ranges") {
        if child_ac != 3 || size_c > 2 || parent_ac > 2 {
            return Err(DtError::BadProperty { name: "ranges" });
        }
        let entry = 4 * (child_ac + parent_ac + size_c);
        if p.value.len() % entry != 0 {
            return Err(DtError::BadProperty { name: "ranges" });
        }
        for e in p.value.chunks_exact(entry) {
            let (hi, rest) = take_cells(e, 1).ok_or(DtError::BadProperty { name: "ranges" })?;
            let (pci_addr, rest) =
                take_cells(rest, 2).ok_or(DtError::BadProperty { name: "ranges" })?;
            let (cpu_addr, rest) =
                take_cells(rest, parent_ac).ok_or(DtError::BadProperty { name: "ranges" })?;
            let (size, _) =
                take_cells(rest, size_c).ok_or(DtError::BadProperty { name: "ranges" })?;
            let space = match (hi >> 24) & 3 {
                0 => Space::Config,
                1 => Space::Io,
                2 => Space::Mem32,
                _ => Space::Mem64,
            };
            windows
                .push(Window {
                    space,
                    prefetchable: hi & (1 << 30) != 0,
                    pci_addr,
                    cpu_addr,
                    size,
                })
                .map_err(|_| DtError::TooMany { what: "ranges" })?;
        }
    }

    // iommu-map: <rid-base iommu-phandle iommu-base length>, with #iommu-cells = 1.
    let mut iommu_map = Vec::new();
    if let Some(p) = node.property("iommu-map") {
        if p.value.len() % 16 != 0 {
            return Err(DtError::BadProperty { name: "iommu-map" });
        }
        for e in p.value.chunks_exact(16) {
            let word =
                |i: usize| u32::from_be_bytes([e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]]);
            let iommu = word(1);
            let target = fdt
                .find_phandle(iommu)
                .ok_or(DtError::UnknownPhandle { phandle: iommu })?;
            match u32_prop(target, "#iommu-cells")? {
                Some(1) => {}
                other => {
                    return Err(DtError::UnsupportedIommuCells {
                        cells: other.unwrap_or(0),
                    });
                }
            }
            iommu_map
                .push(IdMapEntry {
                    rid_base: word(0),
                    iommu,
                    id_base: word(2),
                    len: word(3),
                })
                .map_err(|_| DtError::TooMany { what: "iommu-map" })?;
        }
    }
    Ok(PciHost {
        ecam,
        bus_first,
        bus_last,
        windows,
        iommu_map,
        iommu_map_mask: u32_prop(node, "iommu-map-mask")?.unwrap_or(u32::MAX),
        coherent: node.property("dma-coherent").is_some(),
    })
}

/// Reads the machine description from the flattened device tree in `dtb` (which may be
/// longer than the tree).
pub fn parse(dtb: &[u8]) -> Result<Machine, DtError> {
    let fdt = Fdt::new(dtb).map_err(|_| DtError::BadHeader)?;
    let mut machine = Machine {
        memory: Vec::new(),
        smmus: Vec::new(),
        riscv_iommus: Vec::new(),
        pci: None,
        timebase_hz: None,
        clint: None,
        gic: None,
        plic: None,
    };
    if let Some(cpus) = fdt.find_node("/cpus")
        && let Some(p) = cpus.property("timebase-frequency")
    {
        let cells = p.value.len() / 4;
        let (hz, _) = take_cells(p.value, cells.min(2))
            .filter(|_| cells == 1 || cells == 2)
            .ok_or(DtError::BadProperty {
                name: "timebase-frequency",
            })?;
        machine.timebase_hz = Some(hz);
    }
    for node in fdt.all_nodes() {
        let device_type = node.property("device_type").and_then(|p| p.as_str());
        if device_type == Some("memory") {
            if let Some(mut regs) = node.raw_reg() {
                for r in regs.by_ref() {
                    let (base, _) = take_cells(r.address, r.address.len() / 4)
                        .ok_or(DtError::BadProperty { name: "reg" })?;
                    let (size, _) = take_cells(r.size, r.size.len() / 4)
                        .ok_or(DtError::BadProperty { name: "reg" })?;
                    machine
                        .memory
                        .push(Region { base, size })
                        .map_err(|_| DtError::TooMany { what: "memory" })?;
                }
            }
        } else if is_compatible(node, "arm,smmu-v3") {
            let reg = first_reg(node)?.ok_or(DtError::BadProperty { name: "reg" })?;
            machine
                .smmus
                .push(Smmu {
                    reg,
                    phandle: u32_prop(node, "phandle")?,
                    coherent: node.property("dma-coherent").is_some(),
                    irqs: smmu_irqs(&fdt, node)?,
                })
                .map_err(|_| DtError::TooMany { what: "smmu" })?;
        } else if is_compatible(node, "riscv,iommu") || is_compatible(node, "riscv,pci-iommu") {
            let at = if is_compatible(node, "riscv,pci-iommu") {
                // reg: <phys.hi phys.mid phys.lo size.hi size.lo>, phys.hi bits 23:8 = BDF.
                let hi = node
                    .property("reg")
                    .and_then(|p| take_cells(p.value, 1))
                    .ok_or(DtError::BadProperty { name: "reg" })?
                    .0;
                RiscvIommuAt::Pci(((hi >> 8) & 0xffff) as u16)
            } else {
                RiscvIommuAt::Platform(
                    first_reg(node)?.ok_or(DtError::BadProperty { name: "reg" })?,
                )
            };
            let mut interrupts = Vec::new();
            if let Some(p) = node.property("interrupts") {
                if p.value.len() % 4 != 0 {
                    return Err(DtError::BadProperty { name: "interrupts" });
                }
                for c in p.value.chunks_exact(4) {
                    interrupts
                        .push(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .map_err(|_| DtError::TooMany { what: "interrupts" })?;
                }
            }
            machine
                .riscv_iommus
                .push(RiscvIommu {
                    at,
                    phandle: u32_prop(node, "phandle")?,
                    interrupts,
                })
                .map_err(|_| DtError::TooMany {
                    what: "riscv iommu",
                })?;
        } else if machine.clint.is_none()
            && (is_compatible(node, "riscv,clint0") || is_compatible(node, "sifive,clint0"))
        {
            machine.clint = first_reg(node)?;
        } else if machine.plic.is_none()
            && (is_compatible(node, "riscv,plic0") || is_compatible(node, "sifive,plic-1.0.0"))
        {
            let reg = first_reg(node)?.ok_or(DtError::BadProperty { name: "reg" })?;
            let mut m_context = None;
            if let Some(p) = node.property("interrupts-extended") {
                if p.value.len() % 8 != 0 {
                    return Err(DtError::BadProperty {
                        name: "interrupts-extended",
                    });
                }
                m_context = p
                    .value
                    .chunks_exact(8)
                    .position(|e| e[4..8] == 11u32.to_be_bytes())
                    .map(|i| i as u32);
            }
            machine.plic = Some(Plic {
                reg,
                phandle: u32_prop(node, "phandle")?,
                m_context,
            });
        } else if machine.pci.is_none() && is_compatible(node, "pci-host-ecam-generic") {
            machine.pci = Some(parse_pci(&fdt, node)?);
        } else if machine.gic.is_none()
            && let Some(v) = gic_version(node)
        {
            machine.gic = Some(parse_gic(node, v)?);
        }
    }
    Ok(machine)
}

/// Reads the machine description from the flattened device tree at physical address `addr`.
///
/// # Safety
/// `addr` must be the identity-mapped address of a flattened device tree (its header's
/// `totalsize` bytes readable and unchanged while the returned value's parse runs).
pub unsafe fn parse_at(addr: u64) -> Result<Machine, DtError> {
    // SAFETY: the caller's contract: a 40-byte header is readable at `addr`.
    let header = unsafe { core::slice::from_raw_parts(addr as usize as *const u8, 40) };
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let total = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if magic != 0xd00d_feed || total < 40 {
        return Err(DtError::BadHeader);
    }
    // SAFETY: the caller's contract: `totalsize` bytes are readable.
    let blob = unsafe { core::slice::from_raw_parts(addr as usize as *const u8, total) };
    parse(blob)
}

/// The generic timer's `clock-frequency` (the node compatible with `arm,armv8-timer` or
/// `arm,armv7-timer`), when the device tree gives one: firmware that does not program
/// CNTFRQ_EL0 correctly states the frequency there (Linux's arch timer binding).
pub fn timer_frequency(dtb: &[u8]) -> Option<u64> {
    let fdt = Fdt::new(dtb).ok()?;
    let node = fdt
        .all_nodes()
        .find(|n| is_compatible(*n, "arm,armv8-timer") || is_compatible(*n, "arm,armv7-timer"))?;
    match node.property("clock-frequency")?.value {
        [a, b, c, d] => Some(u64::from(u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => None,
    }
}

/// [`timer_frequency`] of the flattened device tree at physical address `addr`.
///
/// # Safety
/// As for [`parse_at`].
pub unsafe fn timer_frequency_at(addr: u64) -> Option<u64> {
    // SAFETY: the caller's contract: a 40-byte header is readable at `addr`.
    let header = unsafe { core::slice::from_raw_parts(addr as usize as *const u8, 40) };
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let total = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if magic != 0xd00d_feed || total < 40 {
        return None;
    }
    // SAFETY: the caller's contract: `totalsize` bytes are readable.
    let blob = unsafe { core::slice::from_raw_parts(addr as usize as *const u8, total) };
    timer_frequency(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_property() {
        use std::string::ToString;
        let e = DtError::BadProperty { name: "reg" };
        assert!(e.to_string().contains("`reg`"), "{e}");
        assert!(
            DtError::UnknownPhandle { phandle: 0x8001 }
                .to_string()
                .contains("0x8001")
        );
    }

    /// The device tree QEMU 10.0.2 builds for `-machine virt,iommu=smmuv3 -cpu cortex-a57
    /// -m 256M -nodefaults -device edu` with two `-serial`s (written with `dumpdtb=` and cut
    /// to the end of its strings block).
    static QEMU_VIRT_SMMUV3: &[u8] = include_bytes!("../tests/data/qemu-virt-smmuv3.dtb");
    /// The same with `-machine virt,iommu=smmuv3,gic-version=3` (dumped the same way).
    static QEMU_VIRT_SMMUV3_GICV3: &[u8] =
        include_bytes!("../tests/data/qemu-virt-smmuv3-gicv3.dtb");

    /// QEMU's SMMU lines: SPIs 0x4a (eventq) .. 0x4d (gerror), rising edge.
    const QEMU_SMMU_IRQS: SmmuIrqs = SmmuIrqs {
        eventq: Some(Interrupt {
            intid: 106,
            edge: true,
        }),
        gerror: Some(Interrupt {
            intid: 109,
            edge: true,
        }),
        combined: None,
    };

    #[test]
    fn gics_and_smmu_interrupts() {
        let m = parse(QEMU_VIRT_SMMUV3).unwrap();
        let gic = m.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V2);
        assert_eq!(
            (gic.distributor.base, gic.cpu_or_redistributor.base),
            (0x0800_0000, 0x0801_0000)
        );
        assert_eq!(m.smmus[0].irqs, QEMU_SMMU_IRQS);
        assert_eq!(
            m.smmus[0].irqs.fault_lines().as_slice(),
            [
                QEMU_SMMU_IRQS.eventq.unwrap(),
                QEMU_SMMU_IRQS.gerror.unwrap()
            ]
        );
        let m = parse(QEMU_VIRT_SMMUV3_GICV3).unwrap();
        let gic = m.gic.unwrap();
        assert_eq!(gic.version, GicVersion::V3);
        assert_eq!(gic.distributor.base, 0x0800_0000);
        assert_eq!(
            gic.cpu_or_redistributor,
            Region {
                base: 0x080a_0000,
                size: 0xf6_0000
            }
        );
        assert_eq!(m.smmus[0].irqs, QEMU_SMMU_IRQS);
        let combined = SmmuIrqs {
            combined: QEMU_SMMU_IRQS.eventq,
            ..QEMU_SMMU_IRQS
        };
        assert_eq!(combined.fault_lines().len(), 2, "no duplicates");
    }

    /// A flattened device tree with a root node and one `timer` child carrying
    /// `compatible = compat` and, when given, `clock-frequency` (Devicetree specification
    /// 0.4, chapter 5: header, empty reservation map, structure block, strings block).
    fn timer_fdt(compat: &str, hz: Option<u32>) -> std::vec::Vec<u8> {
        use std::vec::Vec;
        let be = |v: u32| v.to_be_bytes();
        let mut strings: Vec<u8> = Vec::new();
        let mut structure: Vec<u8> = Vec::new();
        let pad = |v: &mut Vec<u8>| {
            while v.len() % 4 != 0 {
                v.push(0);
            }
        };
        let mut prop = |st: &mut Vec<u8>, name: &str, value: &[u8]| {
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            st.extend_from_slice(&be(3)); // FDT_PROP
            st.extend_from_slice(&be(value.len() as u32));
            st.extend_from_slice(&be(off));
            st.extend_from_slice(value);
            pad(st);
        };
        structure.extend_from_slice(&be(1)); // FDT_BEGIN_NODE, root
        structure.extend_from_slice(&[0, 0, 0, 0]);
        prop(&mut structure, "#address-cells", &be(2));
        prop(&mut structure, "#size-cells", &be(2));
        structure.extend_from_slice(&be(1));
        structure.extend_from_slice(b"timer\0");
        pad(&mut structure);
        let mut c = compat.as_bytes().to_vec();
        c.push(0);
        prop(&mut structure, "compatible", &c);
        if let Some(hz) = hz {
            prop(&mut structure, "clock-frequency", &be(hz));
        }
        structure.extend_from_slice(&be(2)); // FDT_END_NODE (timer)
        structure.extend_from_slice(&be(2)); // FDT_END_NODE (root)
        structure.extend_from_slice(&be(9)); // FDT_END
        let off_rsv = 40u32;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + structure.len() as u32;
        let total = off_strings + strings.len() as u32;
        let mut blob = Vec::new();
        for v in [
            0xd00d_feed,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            strings.len() as u32,
            structure.len() as u32,
        ] {
            blob.extend_from_slice(&be(v));
        }
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&structure);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn timer_frequency_from_the_device_tree() {
        // QEMU's virt machine leaves it to CNTFRQ_EL0.
        assert_eq!(timer_frequency(QEMU_VIRT_SMMUV3), None);
        assert_eq!(
            timer_frequency(&timer_fdt("arm,armv8-timer", Some(24_000_000))),
            Some(24_000_000)
        );
        assert_eq!(
            timer_frequency(&timer_fdt("arm,armv7-timer", Some(19_200_000))),
            Some(19_200_000)
        );
        assert_eq!(timer_frequency(&timer_fdt("arm,armv8-timer", None)), None);
        assert_eq!(
            timer_frequency(&timer_fdt("vendor,other-timer", Some(1))),
            None
        );
        assert_eq!(timer_frequency(&[0u8; 8]), None);
    }

    #[test]
    fn qemu_virt_with_smmuv3() {
        let m = parse(QEMU_VIRT_SMMUV3).unwrap();
        assert_eq!(
            m.memory.as_slice(),
            [Region {
                base: 0x4000_0000,
                size: 0x1000_0000
            }]
        );
        assert_eq!(m.smmus.len(), 1);
        let smmu = m.smmus[0];
        assert_eq!(
            smmu.reg,
            Region {
                base: 0x0905_0000,
                size: 0x2_0000
            }
        );
        assert!(smmu.coherent);
        let pci = m.pci.as_ref().unwrap();
        assert_eq!(
            pci.ecam,
            Region {
                base: 0x40_1000_0000,
                size: 0x1000_0000
            }
        );
        assert_eq!(
            (pci.bus_first, pci.bus_last, pci.bus_count()),
            (0, 255, 256)
        );
        assert!(pci.coherent);
        let mem32 = pci.mem32().unwrap();
        assert_eq!(
            mem32,
            Window {
                space: Space::Mem32,
                prefetchable: false,
                pci_addr: 0x1000_0000,
                cpu_addr: 0x1000_0000,
                size: 0x2eff_0000
            }
        );
        assert_eq!(pci.windows.len(), 3);
        assert_eq!(pci.windows[0].space, Space::Io);
        assert_eq!(pci.windows[0].cpu_addr, 0x3eff_0000);
        assert_eq!(pci.windows[2].space, Space::Mem64);
        assert_eq!(pci.windows[2].cpu_addr, 0x80_0000_0000);
        // StreamID = requester id, through the one SMMU: edu at 00:01.0 is SID 8.
        let phandle = smmu.phandle.unwrap();
        assert_eq!(pci.iommu_for(0x0008), Some((phandle, 8)));
        assert_eq!(pci.iommu_for(0xffff), Some((phandle, 0xffff)));
        assert_eq!(m.smmu_by_phandle(phandle).map(|(i, _)| i), Some(0));
        assert_eq!(m.smmu_by_phandle(phandle + 1), None);
    }

    /// The device trees QEMU 10.0.2 builds for `qemu-system-riscv64 -machine virt,iommu-sys=on
    /// -m 256M -nodefaults -device edu` and for `-machine virt ... -device riscv-iommu-pci
    /// -device edu` (written with `dumpdtb=`).
    static QEMU_RISCV_SYS: &[u8] = include_bytes!("../tests/data/qemu-virt-riscv-iommu-sys.dtb");
    static QEMU_RISCV_PCI: &[u8] = include_bytes!("../tests/data/qemu-virt-riscv-iommu-pci.dtb");

    #[test]
    fn qemu_riscv_virt_with_a_platform_iommu() {
        let m = parse(QEMU_RISCV_SYS).unwrap();
        assert_eq!(
            m.memory.as_slice(),
            [Region {
                base: 0x8000_0000,
                size: 0x1000_0000
            }]
        );
        assert!(m.smmus.is_empty());
        assert_eq!(m.timebase_hz, Some(10_000_000));
        assert_eq!(
            m.clint,
            Some(Region {
                base: 0x200_0000,
                size: 0x1_0000
            })
        );
        assert_eq!(m.riscv_iommus.len(), 1);
        let u = &m.riscv_iommus[0];
        assert_eq!(
            u.at,
            RiscvIommuAt::Platform(Region {
                base: 0x301_0000,
                size: 0x1000
            })
        );
        // QEMU writes (irq, type) pairs for the four vectors: wires 36 to 39.
        assert_eq!(
            u.interrupts.as_slice(),
            [0x24, 1, 0x25, 1, 0x26, 1, 0x27, 1]
        );
        let plic = m.plic.unwrap();
        assert_eq!(
            plic.reg,
            Region {
                base: 0xc00_0000,
                size: 0x60_0000
            }
        );
        assert_eq!(plic.m_context, Some(0), "<cpu0-intc 11>, <cpu0-intc 9>");
        let pci = m.pci.as_ref().unwrap();
        assert_eq!(
            pci.ecam,
            Region {
                base: 0x3000_0000,
                size: 0x1000_0000
            }
        );
        let mem32 = pci.mem32().unwrap();
        assert_eq!(
            (mem32.pci_addr, mem32.cpu_addr, mem32.size),
            (0x4000_0000, 0x4000_0000, 0x4000_0000)
        );
        // Every requester id reaches the IOMMU as itself.
        let phandle = u.phandle.unwrap();
        assert_eq!(pci.iommu_for(0x0008), Some((phandle, 8)));
        assert_eq!(m.riscv_iommu_by_phandle(phandle).map(|(i, _)| i), Some(0));
    }

    #[test]
    fn qemu_riscv_virt_with_a_pci_iommu() {
        let m = parse(QEMU_RISCV_PCI).unwrap();
        assert_eq!(m.riscv_iommus.len(), 1);
        let u = &m.riscv_iommus[0];
        assert_eq!(u.at, RiscvIommuAt::Pci(0x0008), "00:01.0");
        assert!(u.interrupts.is_empty());
        let pci = m.pci.as_ref().unwrap();
        let phandle = u.phandle.unwrap();
        // The IOMMU's own requester id is not translated; edu at 00:02.0 is.
        assert_eq!(pci.iommu_for(0x0010), Some((phandle, 0x10)));
        assert_eq!(pci.iommu_for(0x0007), Some((phandle, 7)));
        assert_eq!(pci.iommu_for(0x0008), None, "the IOMMU itself");
        assert_eq!(pci.iommu_for(0xffff), Some((phandle, 0xffff)));
    }

    #[test]
    fn iommu_map_offsets_masks_and_gaps() {
        let mut pci = PciHost {
            ecam: Region {
                base: 0,
                size: 1 << 20,
            },
            bus_first: 0,
            bus_last: 0,
            windows: Vec::new(),
            iommu_map: Vec::new(),
            iommu_map_mask: u32::MAX,
            coherent: true,
        };
        assert_eq!(pci.iommu_for(8), None);
        pci.iommu_map
            .push(IdMapEntry {
                rid_base: 0x100,
                iommu: 7,
                id_base: 0x1000,
                len: 0x100,
            })
            .unwrap();
        pci.iommu_map
            .push(IdMapEntry {
                rid_base: 0x0,
                iommu: 9,
                id_base: 0x20,
                len: 0x10,
            })
            .unwrap();
        assert_eq!(pci.iommu_for(0x100), Some((7, 0x1000)));
        assert_eq!(pci.iommu_for(0x1ff), Some((7, 0x10ff)));
        assert_eq!(pci.iommu_for(0x200), None);
        assert_eq!(pci.iommu_for(0x0f), Some((9, 0x2f)));
        assert_eq!(pci.iommu_for(0x10), None);
        // A mask folding functions together (as for devices whose functions share an id).
        pci.iommu_map_mask = !0x7;
        assert_eq!(pci.iommu_for(0x107), Some((7, 0x1000)));
    }

    #[test]
    fn windows_translate_bus_addresses() {
        let w = Window {
            space: Space::Mem32,
            prefetchable: false,
            pci_addr: 0x1000,
            cpu_addr: 0x8000_1000,
            size: 0x1000,
        };
        assert_eq!(w.cpu_of(0x1000), Some(0x8000_1000));
        assert_eq!(w.cpu_of(0x1fff), Some(0x8000_1fff));
        assert_eq!(w.cpu_of(0x2000), None);
        assert_eq!(w.cpu_of(0xfff), None);
    }

    #[test]
    fn cells_and_bad_blobs() {
        assert_eq!(
            take_cells(&[0, 0, 0, 1, 0, 0, 0, 2, 9], 2),
            Some((0x1_0000_0002, &[9u8][..]))
        );
        assert_eq!(take_cells(&[0, 0, 1], 1), None);
        assert_eq!(take_cells(&[], 0), Some((0, &[][..])));
        assert_eq!(take_cells(&[0; 12], 3), None);
        assert_eq!(parse(&[0u8; 64]), Err(DtError::BadHeader));
        assert_eq!(parse(&QEMU_VIRT_SMMUV3[..100]), Err(DtError::BadHeader));
    }
}

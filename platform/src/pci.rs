//! PCI configuration space: a small access trait (x86 ports, ECAM), a bus scan, BARs.
//!
//! Offsets and bits are those of the PCI Local Bus Specification 3.0, section 6.2 (type 0 and
//! type 1 configuration headers).

/// A PCI function's bus, device and function numbers (segment 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, `0..32`.
    pub dev: u8,
    /// Function number, `0..8`.
    pub func: u8,
}

impl Bdf {
    /// A function's address (`dev` and `func` are masked to 5 and 3 bits).
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Bdf {
            bus,
            dev: dev & 0x1f,
            func: func & 0x7,
        }
    }

    /// The 16-bit requester id (source id) the function's DMA carries: `bus << 8 | dev << 3 |
    /// func` (PCIe Base Specification, section 2.2.6.2; VT-d 3.4 section 3.4.1 calls it the
    /// source-id).
    pub const fn rid(self) -> u16 {
        (self.bus as u16) << 8 | (self.dev as u16) << 3 | self.func as u16
    }

    /// The function with requester id `rid`.
    pub const fn from_rid(rid: u16) -> Self {
        Bdf::new((rid >> 8) as u8, (rid >> 3) as u8, rid as u8)
    }
}

/// Shown as `bb:dd.f` in hex, as `lspci` does.
#[cfg(target_os = "none")]
impl defmt::Format for Bdf {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(
            f,
            "{=u8:02x}:{=u8:02x}.{=u8}",
            self.bus,
            self.dev,
            self.func
        )
    }
}

/// Vendor id register (16 bits). All ones when no function answers.
pub const VENDOR_ID: u16 = 0x00;
/// Device id register (16 bits).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Command register: memory space enable.
pub const COMMAND_MEM: u16 = 1 << 1;
/// Command register: bus master enable (the function may issue DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Status register: the function has a capabilities list (PCI 3.0, 6.2.3).
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Header type register (8 bits); bit 7 = multi-function, bits 6:0 = layout.
pub const HEADER_TYPE: u16 = 0x0e;
/// Header layout (bits 6:0 of [`HEADER_TYPE`]) of a PCI-to-PCI bridge (type 1).
pub const HEADER_BRIDGE: u8 = 1;
/// Capabilities pointer (8 bits, type 0 and type 1 headers; PCI 3.0, 6.7).
pub const CAP_PTR: u16 = 0x34;
/// Capability id of the PCI Express capability (PCIe Base Specification, 7.5.3).
pub const CAP_ID_PCIE: u8 = 0x10;
/// First base address register.
pub const BAR0: u16 = 0x10;
/// Type 1 (bridge) header: secondary bus number (8 bits).
pub const SECONDARY_BUS: u16 = 0x19;
/// Type 1 (bridge) header: subordinate bus number (8 bits).
pub const SUBORDINATE_BUS: u16 = 0x1a;

/// Access to configuration space. Offsets are byte offsets; 32-bit accesses are aligned.
pub trait ConfigSpace {
    /// Reads the aligned 32-bit word at `offset & !3`.
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the aligned 32-bit word at `offset & !3`.
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32);

    /// Reads 16 bits at an even `offset`.
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset) >> ((offset & 2) * 8)) as u16
    }
    /// Reads 8 bits at `offset`.
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset) >> ((offset & 3) * 8)) as u8
    }
    /// Writes 16 bits at an even `offset` (read-modify-write of the 32-bit word; use only on
    /// registers without write-1-to-clear neighbours, such as the command register, whose
    /// neighbour, the status register, is cleared by writing ones: those are written as zero).
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let mut word = self.read32(bdf, offset);
        if offset & !3 == COMMAND {
            // Never write back status bits (RW1C) that happen to be set.
            word &= 0x0000_ffff;
        }
        word = (word & !(0xffff << shift)) | (value as u32) << shift;
        self.write32(bdf, offset, word);
    }
}

impl<T: ConfigSpace + ?Sized> ConfigSpace for &mut T {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        (**self).read32(bdf, offset)
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        (**self).write32(bdf, offset, value)
    }
}

/// Configuration space through an ECAM window (PCIe Base Specification, section 7.2.2):
/// function `bdf`'s 4 KiB at `base + (bus << 20 | dev << 15 | func << 12)`.
#[derive(Debug)]
pub struct Ecam {
    base: usize,
    buses: u16,
}

impl Ecam {
    /// The ECAM window at `base` covering buses `0..buses`.
    ///
    /// # Safety
    /// `[base, base + buses * 1 MiB)` must be the identity-mapped ECAM window, used by nobody
    /// else.
    pub const unsafe fn new(base: usize, buses: u16) -> Self {
        Ecam { base, buses }
    }

    fn addr(&self, bdf: Bdf, offset: u16) -> Option<usize> {
        if u16::from(bdf.bus) >= self.buses || offset >= 4096 {
            return None;
        }
        Some(
            self.base
                + ((bdf.bus as usize) << 20
                    | (bdf.dev as usize) << 15
                    | (bdf.func as usize) << 12
                    | (offset & !3) as usize),
        )
    }
}

impl ConfigSpace for Ecam {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        match self.addr(bdf, offset) {
            // SAFETY: `new`'s contract: the address lies in the ECAM window, which answers every
            // aligned 32-bit read (all ones for absent functions).
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
            None => u32::MAX,
        }
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(a) = self.addr(bdf, offset) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(a as *mut u32, value) }
        }
    }
}

/// Device/Port Type values of the PCI Express Capabilities register (bits 7:4; PCIe Base
/// Specification, 7.5.3.2).
pub mod port_type {
    /// PCI Express endpoint.
    pub const ENDPOINT: u8 = 0x0;
    /// Legacy PCI Express endpoint.
    pub const LEGACY_ENDPOINT: u8 = 0x1;
    /// Root port of a root complex.
    pub const ROOT_PORT: u8 = 0x4;
    /// Upstream port of a switch.
    pub const UPSTREAM: u8 = 0x5;
    /// Downstream port of a switch.
    pub const DOWNSTREAM: u8 = 0x6;
    /// PCI Express to PCI/PCI-X bridge.
    pub const PCIE_TO_PCI: u8 = 0x7;
    /// PCI/PCI-X to PCI Express bridge.
    pub const PCI_TO_PCIE: u8 = 0x8;
    /// Root complex integrated endpoint.
    pub const RC_INTEGRATED: u8 = 0x9;
}

/// Offset of the first capability with id `id` in `bdf`'s capabilities list, if any. The
/// walk follows at most 48 links (the most a 256-byte space holds), so a looping list ends.
pub fn find_capability(cfg: &mut impl ConfigSpace, bdf: Bdf, id: u8) -> Option<u16> {
    if cfg.read16(bdf, STATUS) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut ptr = cfg.read8(bdf, CAP_PTR) & 0xfc;
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        let off = u16::from(ptr);
        if cfg.read8(bdf, off) == id {
            return Some(off);
        }
        ptr = cfg.read8(bdf, off + 1) & 0xfc;
    }
    None
}

/// The Device/Port Type of a PCI Express function ([`port_type`]), `None` for a conventional
/// PCI function (no PCI Express capability).
pub fn pcie_port_type(cfg: &mut impl ConfigSpace, bdf: Bdf) -> Option<u8> {
    let cap = find_capability(cfg, bdf, CAP_ID_PCIE)?;
    Some(((cfg.read16(bdf, cap + 2) >> 4) & 0xf) as u8)
}

/// Most PCI-to-PCI bridges [`Topology`] records.
pub const MAX_BRIDGES: usize = 32;
/// Most ids a device's DMA may carry that [`dma_aliases`] reports (its own included).
pub const MAX_ALIASES: usize = 8;

/// One PCI-to-PCI bridge (type 1 header) and the buses behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// The bridge function.
    pub bdf: Bdf,
    /// Its secondary bus (directly behind it).
    pub secondary: u8,
    /// Its subordinate bus (the highest bus behind it).
    pub subordinate: u8,
}

/// The bridges of a PCI segment, as their configuration (firmware's or the guest's bus
/// numbering) says: enough to walk from a device up to its root bus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    bridges: heapless::Vec<Bridge, MAX_BRIDGES>,
}

/// Why a device's DMA aliases could not be worked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum AliasError {
    /// More bridges than [`MAX_BRIDGES`] on the segment.
    TooManyBridges,
    /// More ids than [`MAX_ALIASES`].
    TooManyAliases,
    /// The bridges' bus numbers form a loop (or a path longer than 256 buses).
    BusLoop,
}

impl core::fmt::Display for AliasError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AliasError::TooManyBridges => write!(
                f,
                "more than {MAX_BRIDGES} PCI bridges on the segment (raise pci::MAX_BRIDGES)"
            ),
            AliasError::TooManyAliases => write!(
                f,
                "the device's DMA may carry more than {MAX_ALIASES} requester ids (raise \
                 pci::MAX_ALIASES)"
            ),
            AliasError::BusLoop => f.write_str(
                "the bridges' bus numbers form a loop: firmware or the guest numbered them \
                 inconsistently",
            ),
        }
    }
}

impl core::error::Error for AliasError {}

impl Topology {
    /// Records every type 1 function on buses `0..=max_bus` with its secondary and
    /// subordinate bus numbers.
    pub fn scan(cfg: &mut impl ConfigSpace, max_bus: u8) -> Result<Self, AliasError> {
        let mut t = Topology::default();
        for bus in 0..=max_bus {
            for dev in 0..32 {
                let f0 = Bdf::new(bus, dev, 0);
                if !present(cfg, f0) {
                    continue;
                }
                let multi = cfg.read8(f0, HEADER_TYPE) & 0x80 != 0;
                for func in 0..if multi { 8 } else { 1 } {
                    let bdf = Bdf::new(bus, dev, func);
                    if !present(cfg, bdf) || cfg.read8(bdf, HEADER_TYPE) & 0x7f != HEADER_BRIDGE {
                        continue;
                    }
                    let b = Bridge {
                        bdf,
                        secondary: cfg.read8(bdf, SECONDARY_BUS),
                        subordinate: cfg.read8(bdf, SUBORDINATE_BUS),
                    };
                    t.bridges.push(b).map_err(|_| AliasError::TooManyBridges)?;
                }
            }
        }
        Ok(t)
    }

    /// The bridges found.
    pub fn bridges(&self) -> &[Bridge] {
        &self.bridges
    }

    /// The bridge directly above `bus` (whose secondary bus it is); `None` for a root bus.
    /// A bridge whose secondary bus is 0 (not numbered) is never anyone's parent.
    pub fn parent(&self, bus: u8) -> Option<Bridge> {
        self.bridges
            .iter()
            .copied()
            .find(|b| b.secondary == bus && b.secondary != 0 && b.bdf.bus != bus)
    }
}

/// The requester ids a device's DMA may reach the IOMMU with: its own first, then the
/// aliases the bridges between it and its root bus put on its requests (deduplicated, in
/// the order met going up), the way Linux's `pci_for_each_dma_alias` works them out:
///
/// - PCI Express root ports and switch ports forward requests with the requester id they got:
///   nothing is added;
/// - a PCI Express to PCI/PCI-X bridge takes ownership of the requests from its secondary
///   side and issues them with its secondary bus number and device/function 0 (PCI Express to
///   PCI/PCI-X Bridge Specification 1.0, section 2.3): that id is added;
/// - a PCI/PCI-X to PCI Express bridge, and a conventional PCI bridge (no PCI Express
///   capability), issue the requests as their own: the bridge's id is added.
///
/// Device-specific alias quirks (functions that issue DMA under a sibling's id) are not
/// known here.
pub fn dma_aliases(
    cfg: &mut impl ConfigSpace,
    topology: &Topology,
    bdf: Bdf,
) -> Result<heapless::Vec<u16, MAX_ALIASES>, AliasError> {
    let mut ids: heapless::Vec<u16, MAX_ALIASES> = heapless::Vec::new();
    let add = |ids: &mut heapless::Vec<u16, MAX_ALIASES>, id: u16| {
        if ids.contains(&id) {
            return Ok(());
        }
        ids.push(id).map_err(|_| AliasError::TooManyAliases)
    };
    add(&mut ids, bdf.rid())?;
    let mut bus = bdf.bus;
    for _ in 0..256 {
        let Some(bridge) = topology.parent(bus) else {
            return Ok(ids);
        };
        match pcie_port_type(cfg, bridge.bdf) {
            Some(port_type::ROOT_PORT | port_type::UPSTREAM | port_type::DOWNSTREAM) => {}
            Some(port_type::PCIE_TO_PCI) => add(&mut ids, Bdf::new(bridge.secondary, 0, 0).rid())?,
            Some(port_type::PCI_TO_PCIE) | None => add(&mut ids, bridge.bdf.rid())?,
            Some(_) => {}
        }
        bus = bridge.bdf.bus;
    }
    Err(AliasError::BusLoop)
}

/// Turns on bus mastering (and memory decoding) in every bridge between `bdf` and its root
/// bus, so that the device's DMA is forwarded upstream (a bridge forwards memory requests
/// from its secondary side only while its Bus Master Enable is set; PCI-to-PCI Bridge
/// Architecture Specification 1.2, 3.2.5.1).
pub fn enable_upstream_bridges(
    cfg: &mut impl ConfigSpace,
    topology: &Topology,
    bdf: Bdf,
) -> Result<(), AliasError> {
    let mut bus = bdf.bus;
    for _ in 0..256 {
        let Some(bridge) = topology.parent(bus) else {
            return Ok(());
        };
        enable_mem_and_dma(cfg, bridge.bdf);
        bus = bridge.bdf.bus;
    }
    Err(AliasError::BusLoop)
}

/// Whether a function answers at `bdf`.
pub fn present(cfg: &mut impl ConfigSpace, bdf: Bdf) -> bool {
    cfg.read16(bdf, VENDOR_ID) != 0xffff
}

/// Calls `f` with every function present on buses `0..=max_bus`, with its vendor and device
/// ids. Function 0 of a device decides (by its multi-function bit) whether 1..8 are probed.
pub fn scan(cfg: &mut impl ConfigSpace, max_bus: u8, mut f: impl FnMut(Bdf, u16, u16)) {
    for bus in 0..=max_bus {
        for dev in 0..32 {
            let f0 = Bdf::new(bus, dev, 0);
            if !present(cfg, f0) {
                continue;
            }
            let multi = cfg.read8(f0, HEADER_TYPE) & 0x80 != 0;
            for func in 0..if multi { 8 } else { 1 } {
                let bdf = Bdf::new(bus, dev, func);
                let id = cfg.read32(bdf, VENDOR_ID);
                if id as u16 != 0xffff {
                    f(bdf, id as u16, (id >> 16) as u16);
                }
            }
        }
    }
}

/// The first function (in bus order) with the given vendor and device ids.
pub fn find(cfg: &mut impl ConfigSpace, vendor: u16, device: u16) -> Option<Bdf> {
    let mut found = None;
    scan(cfg, u8::MAX, |bdf, v, d| {
        if found.is_none() && v == vendor && d == device {
            found = Some(bdf);
        }
    });
    found
}

/// A memory BAR as firmware (or the guest) programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemBar {
    /// Base address (low 4 flag bits removed).
    pub addr: u64,
    /// Whether the BAR is a 64-bit BAR (it then uses the next BAR register too).
    pub is_64: bool,
}

#[cfg(target_os = "none")]
impl defmt::Format for MemBar {
    fn format(&self, f: defmt::Formatter) {
        let width = if self.is_64 { "64" } else { "32" };
        defmt::write!(f, "{=u64:#x} ({=str}-bit)", self.addr, width)
    }
}

/// Reads memory BAR `index` (0..6) of a type 0 function. `None` for an I/O BAR, an
/// unassigned (zero) BAR, or a bad index.
pub fn mem_bar(cfg: &mut impl ConfigSpace, bdf: Bdf, index: u16) -> Option<MemBar> {
    if index >= 6 {
        return None;
    }
    let off = BAR0 + 4 * index;
    let lo = cfg.read32(bdf, off);
    if lo & 1 != 0 {
        return None;
    }
    let is_64 = (lo >> 1) & 3 == 2;
    let mut addr = u64::from(lo & !0xf);
    if is_64 {
        if index == 5 {
            return None;
        }
        addr |= u64::from(cfg.read32(bdf, off + 4)) << 32;
    }
    (addr != 0).then_some(MemBar { addr, is_64 })
}

/// Turns on memory decoding and bus mastering (DMA) in the command register.
pub fn enable_mem_and_dma(cfg: &mut impl ConfigSpace, bdf: Bdf) {
    let cmd = cfg.read16(bdf, COMMAND);
    cfg.write16(bdf, COMMAND, cmd | COMMAND_MEM | COMMAND_BUS_MASTER);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::string::ToString;

    #[test]
    fn alias_errors_name_the_limit() {
        assert!(
            AliasError::TooManyBridges
                .to_string()
                .contains("MAX_BRIDGES")
        );
        assert!(AliasError::BusLoop.to_string().contains("loop"));
    }
    use std::vec;

    /// A configuration space with a few functions, as plain data.
    #[derive(Default)]
    struct FakeCfg {
        words: BTreeMap<(u16, u16), u32>,
    }

    impl FakeCfg {
        fn add(&mut self, bdf: Bdf, vendor: u16, device: u16, header: u8) {
            self.words
                .insert((bdf.rid(), 0), u32::from(device) << 16 | u32::from(vendor));
            self.words.insert((bdf.rid(), 0xc), u32::from(header) << 16);
        }
    }

    impl FakeCfg {
        /// A bridge (type 1 header) at `bdf` for buses `secondary..=subordinate`, with a PCI
        /// Express capability of Device/Port Type `pcie` (at 0x40, second in the list after a
        /// power-management capability at 0x50), or none (a conventional PCI bridge).
        fn bridge(&mut self, bdf: Bdf, secondary: u8, subordinate: u8, pcie: Option<u8>) {
            self.add(bdf, 0x1b36, 0x000e, HEADER_BRIDGE);
            self.words.insert(
                (bdf.rid(), 0x18),
                u32::from(subordinate) << 16 | u32::from(secondary) << 8 | u32::from(bdf.bus),
            );
            if let Some(t) = pcie {
                self.words
                    .insert((bdf.rid(), 0x04), u32::from(STATUS_CAP_LIST) << 16);
                self.words.insert((bdf.rid(), 0x34), 0x50);
                // Power management (id 1) at 0x50, linking to PCI Express at 0x40.
                self.words.insert((bdf.rid(), 0x50), 0x4001);
                self.words.insert(
                    (bdf.rid(), 0x40),
                    (u32::from(t) << 4 | 2) << 16 | u32::from(CAP_ID_PCIE),
                );
            }
        }
    }

    impl ConfigSpace for FakeCfg {
        fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
            let absent = !self.words.contains_key(&(bdf.rid(), 0));
            if absent {
                return u32::MAX;
            }
            *self.words.get(&(bdf.rid(), offset & !3)).unwrap_or(&0)
        }
        fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
            self.words.insert((bdf.rid(), offset & !3), value);
        }
    }

    #[test]
    fn rid_round_trips() {
        let b = Bdf::new(0x12, 0x1f, 7);
        assert_eq!(b.rid(), 0x12ff);
        assert_eq!(Bdf::from_rid(b.rid()), b);
        assert_eq!(Bdf::new(0, 3, 0).rid(), 0x18);
    }

    #[test]
    fn scan_finds_multifunction_devices_and_skips_absent_ones() {
        let mut cfg = FakeCfg::default();
        cfg.add(Bdf::new(0, 0, 0), 0x8086, 0x29c0, 0);
        cfg.add(Bdf::new(0, 2, 0), 0x1234, 0x0001, 0x80);
        cfg.add(Bdf::new(0, 2, 3), 0x1234, 0x11e8, 0);
        cfg.add(Bdf::new(0, 4, 1), 0x1234, 0x11e8, 0); // function 0 absent: not probed
        assert_eq!(find(&mut cfg, 0x1234, 0x11e8), Some(Bdf::new(0, 2, 3)));
        assert_eq!(find(&mut cfg, 0xabcd, 0x11e8), None);
    }

    #[test]
    fn bars_and_command_register() {
        let mut cfg = FakeCfg::default();
        let b = Bdf::new(0, 3, 0);
        cfg.add(b, 0x1234, 0x11e8, 0);
        cfg.write32(b, BAR0, 0xfea0_0000);
        cfg.write32(b, BAR0 + 4, 0xc001); // I/O BAR
        cfg.write32(b, BAR0 + 8, 0x8000_000c); // 64-bit prefetchable
        cfg.write32(b, BAR0 + 12, 0x1);
        assert_eq!(
            mem_bar(&mut cfg, b, 0),
            Some(MemBar {
                addr: 0xfea0_0000,
                is_64: false
            })
        );
        assert_eq!(mem_bar(&mut cfg, b, 1), None);
        assert_eq!(
            mem_bar(&mut cfg, b, 2),
            Some(MemBar {
                addr: 0x1_8000_0000,
                is_64: true
            })
        );
        assert_eq!(mem_bar(&mut cfg, b, 6), None);
        // Status bits (RW1C) set in the upper half are not written back.
        cfg.write32(b, COMMAND, 0xf900_0000 | 0x3);
        enable_mem_and_dma(&mut cfg, b);
        assert_eq!(cfg.read32(b, COMMAND), 0x7);
    }

    /// edu and its aliases in the topologies the QEMU images boot and a few more.
    fn aliases(cfg: &mut FakeCfg, dev: Bdf) -> Result<std::vec::Vec<u16>, AliasError> {
        let topo = Topology::scan(cfg, 255)?;
        dma_aliases(cfg, &topo, dev).map(|v| v.to_vec())
    }

    const EDU: (u16, u16) = (0x1234, 0x11e8);

    #[test]
    fn a_device_on_the_root_bus_has_only_its_own_id() {
        let mut cfg = FakeCfg::default();
        cfg.add(Bdf::new(0, 0, 0), 0x8086, 0x29c0, 0);
        cfg.add(Bdf::new(0, 1, 0), EDU.0, EDU.1, 0);
        assert_eq!(aliases(&mut cfg, Bdf::new(0, 1, 0)), Ok(vec![0x0008]));
    }

    /// `-device pcie-pci-bridge,id=b -device edu,bus=b,addr=3` on q35: the bridge (a PCI
    /// Express to PCI bridge on the root bus) issues edu's requests as 01:00.0.
    #[test]
    fn behind_a_pcie_to_pci_bridge_the_secondary_bus_with_devfn_0() {
        let mut cfg = FakeCfg::default();
        cfg.bridge(Bdf::new(0, 2, 0), 1, 1, Some(port_type::PCIE_TO_PCI));
        cfg.add(Bdf::new(1, 3, 0), EDU.0, EDU.1, 0);
        assert_eq!(
            find_capability(&mut cfg, Bdf::new(0, 2, 0), CAP_ID_PCIE),
            Some(0x40)
        );
        assert_eq!(
            aliases(&mut cfg, Bdf::new(1, 3, 0)),
            Ok(vec![0x0118, 0x0100])
        );
        // The device at devfn 0 behind it: its own id is the alias (listed once).
        cfg.add(Bdf::new(1, 0, 0), EDU.0, EDU.1, 0);
        assert_eq!(aliases(&mut cfg, Bdf::new(1, 0, 0)), Ok(vec![0x0100]));
    }

    /// Root port + PCI Express to PCI bridge: the root port adds nothing, the bridge its
    /// secondary bus; the bridge's own id (01:00.0) is not an alias.
    #[test]
    fn root_port_then_bridge() {
        let mut cfg = FakeCfg::default();
        cfg.bridge(Bdf::new(0, 2, 0), 1, 2, Some(port_type::ROOT_PORT));
        cfg.bridge(Bdf::new(1, 0, 0), 2, 2, Some(port_type::PCIE_TO_PCI));
        cfg.add(Bdf::new(2, 3, 0), EDU.0, EDU.1, 0);
        assert_eq!(
            aliases(&mut cfg, Bdf::new(2, 3, 0)),
            Ok(vec![0x0218, 0x0200])
        );
        // Behind the root port alone, edu keeps its own id.
        cfg.add(Bdf::new(1, 4, 0), EDU.0, EDU.1, 0);
        assert_eq!(aliases(&mut cfg, Bdf::new(1, 4, 0)), Ok(vec![0x0120]));
    }

    /// A switch (upstream and downstream ports) adds nothing; a conventional PCI bridge and a
    /// PCI to PCI Express bridge add their own ids; everything met going up is kept.
    #[test]
    fn switches_conventional_bridges_and_reverse_bridges() {
        let mut cfg = FakeCfg::default();
        cfg.bridge(Bdf::new(0, 1, 0), 1, 6, Some(port_type::ROOT_PORT));
        cfg.bridge(Bdf::new(1, 0, 0), 2, 6, Some(port_type::UPSTREAM));
        cfg.bridge(Bdf::new(2, 5, 0), 3, 6, Some(port_type::DOWNSTREAM));
        cfg.bridge(Bdf::new(3, 0, 0), 4, 6, Some(port_type::PCIE_TO_PCI));
        cfg.bridge(Bdf::new(4, 7, 0), 5, 6, None);
        cfg.bridge(Bdf::new(5, 2, 0), 6, 6, Some(port_type::PCI_TO_PCIE));
        cfg.add(Bdf::new(6, 0, 1), EDU.0, EDU.1, 0);
        cfg.add(Bdf::new(2, 6, 0), EDU.0, EDU.1, 0);
        assert_eq!(
            aliases(&mut cfg, Bdf::new(6, 0, 1)),
            Ok(vec![0x0601, 0x0510, 0x0438, 0x0400])
        );
        assert_eq!(aliases(&mut cfg, Bdf::new(2, 6, 0)), Ok(vec![0x0230]));
    }

    #[test]
    fn bus_loops_and_too_many_aliases_are_errors() {
        let mut cfg = FakeCfg::default();
        cfg.bridge(Bdf::new(1, 0, 0), 2, 2, None);
        cfg.bridge(Bdf::new(2, 0, 0), 1, 1, None);
        cfg.add(Bdf::new(2, 3, 0), EDU.0, EDU.1, 0);
        assert_eq!(
            aliases(&mut cfg, Bdf::new(2, 3, 0)),
            Err(AliasError::BusLoop)
        );
        let mut cfg = FakeCfg::default();
        for b in 0..9u8 {
            cfg.bridge(Bdf::new(b, 0, 0), b + 1, 9, None);
        }
        cfg.add(Bdf::new(9, 3, 0), EDU.0, EDU.1, 0);
        assert_eq!(
            aliases(&mut cfg, Bdf::new(9, 3, 0)),
            Err(AliasError::TooManyAliases)
        );
        // Bridges whose secondary bus was never numbered (0) are nobody's parent.
        let mut cfg = FakeCfg::default();
        cfg.bridge(Bdf::new(0, 2, 0), 0, 0, Some(port_type::PCIE_TO_PCI));
        cfg.add(Bdf::new(0, 3, 0), EDU.0, EDU.1, 0);
        assert_eq!(aliases(&mut cfg, Bdf::new(0, 3, 0)), Ok(vec![0x0018]));
    }

    #[test]
    fn capability_lists_are_walked_boundedly() {
        let mut cfg = FakeCfg::default();
        let b = Bdf::new(0, 5, 0);
        cfg.add(b, EDU.0, EDU.1, 0);
        assert_eq!(find_capability(&mut cfg, b, CAP_ID_PCIE), None, "no list");
        cfg.words
            .insert((b.rid(), 0x04), u32::from(STATUS_CAP_LIST) << 16);
        cfg.words.insert((b.rid(), 0x34), 0x40);
        cfg.words.insert((b.rid(), 0x40), 0x4001); // links to itself
        assert_eq!(find_capability(&mut cfg, b, CAP_ID_PCIE), None);
        assert_eq!(pcie_port_type(&mut cfg, b), None);
    }

    #[test]
    fn upstream_bridges_get_bus_mastering() {
        let mut cfg = FakeCfg::default();
        cfg.bridge(Bdf::new(0, 2, 0), 1, 2, Some(port_type::ROOT_PORT));
        cfg.bridge(Bdf::new(1, 0, 0), 2, 2, Some(port_type::PCIE_TO_PCI));
        cfg.add(Bdf::new(2, 3, 0), EDU.0, EDU.1, 0);
        let topo = Topology::scan(&mut cfg, 255).unwrap();
        assert_eq!(topo.bridges().len(), 2);
        enable_upstream_bridges(&mut cfg, &topo, Bdf::new(2, 3, 0)).unwrap();
        for b in [Bdf::new(0, 2, 0), Bdf::new(1, 0, 0)] {
            assert_eq!(
                cfg.read16(b, COMMAND) & (COMMAND_MEM | COMMAND_BUS_MASTER),
                COMMAND_MEM | COMMAND_BUS_MASTER
            );
        }
    }
}

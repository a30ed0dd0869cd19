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
/// Header type register (8 bits); bit 7 = multi-function, bits 6:0 = layout.
pub const HEADER_TYPE: u16 = 0x0e;
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
}

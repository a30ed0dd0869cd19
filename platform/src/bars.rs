//! Assigning PCI memory BARs when no firmware did (QEMU virt and riscv virt boot the image
//! directly): size each BAR, place it naturally aligned in a memory window, program it.
//!
//! Sizing (PCI Local Bus Specification 3.0, section 6.2.5.1): with decoding off, write all
//! ones to the BAR, read back, restore; the size is the two's complement of the read-back
//! address bits. A 64-bit BAR (type 0b10) uses the next register for its upper half.

use crate::pci::{BAR0, Bdf, COMMAND, COMMAND_MEM, ConfigSpace, HEADER_TYPE};

/// Number of BAR registers of a type 0 header.
const TYPE0_BARS: u16 = 6;
/// Type 1 (bridge) headers have two.
const TYPE1_BARS: u16 = 2;
/// Command register: I/O space enable.
const COMMAND_IO: u16 = 1 << 0;

/// A memory window BARs are placed in, as PCI bus addresses and the CPU's view of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarWindow {
    /// First PCI bus address of the window.
    pub pci_base: u64,
    /// Length of the window.
    pub size: u64,
    /// The CPU physical address of `pci_base`.
    pub cpu_base: u64,
}

/// A bump allocator over a [`BarWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarAllocator {
    window: BarWindow,
    /// Next free offset in the window.
    next: u64,
}

/// Why a BAR could not be assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum BarError {
    /// The window has no naturally aligned room left for a BAR of this size.
    WindowFull {
        /// Size of the BAR that did not fit.
        size: u64,
    },
    /// The BAR reads back as a size that is not a power of two (a broken device).
    BadSize {
        /// The BAR's register index.
        index: u16,
    },
    /// A 64-bit BAR in the last register.
    Bad64BitBar,
}

impl core::fmt::Display for BarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BarError::WindowFull { size } => write!(
                f,
                "no naturally aligned room left in the MMIO window for a BAR of {size:#x} bytes"
            ),
            BarError::BadSize { index } => write!(
                f,
                "BAR {index} reads back a size that is not a power of two (broken device)"
            ),
            BarError::Bad64BitBar => {
                f.write_str("a 64-bit BAR sits in the last BAR register (no upper half)")
            }
        }
    }
}

impl core::error::Error for BarError {}

/// One memory BAR the allocator placed (logged with addresses in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignedBar {
    /// BAR register index (0..6).
    pub index: u16,
    /// PCI bus address programmed into the BAR.
    pub pci_addr: u64,
    /// The CPU physical address of the BAR.
    pub cpu_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a 64-bit BAR.
    pub is_64: bool,
    /// Whether it is prefetchable.
    pub prefetchable: bool,
}

#[cfg(target_os = "none")]
impl defmt::Format for AssignedBar {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "BAR{=u16} cpu {=u64:#x}+{=u64:#x} = pci {=u64:#x} ({=str}{=str})",
            self.index,
            self.cpu_addr,
            self.size,
            self.pci_addr,
            if self.is_64 { "64-bit" } else { "32-bit" },
            if self.prefetchable {
                ", prefetchable"
            } else {
                ""
            }
        )
    }
}

impl BarAllocator {
    /// An allocator that hands out the whole of `window`.
    pub const fn new(window: BarWindow) -> Self {
        BarAllocator { window, next: 0 }
    }

    /// Bytes of the window not yet handed out (alignment gaps included as used).
    pub const fn remaining(&self) -> u64 {
        self.window.size - self.next
    }

    /// A naturally aligned range of `size` (a power of two) bytes: its PCI and CPU addresses.
    fn take(&mut self, size: u64) -> Result<(u64, u64), BarError> {
        let full = BarError::WindowFull { size };
        let base = self.window.pci_base;
        // Align the PCI address itself (BAR alignment is on the bus address).
        let start = (base + self.next)
            .checked_next_multiple_of(size)
            .ok_or(full)?;
        let off = start - base;
        let end = off.checked_add(size).ok_or(full)?;
        if end > self.window.size {
            return Err(full);
        }
        self.next = end;
        Ok((start, self.window.cpu_base + off))
    }

    /// Sizes every memory BAR of `bdf` and places it in the window. I/O BARs are left alone
    /// (I/O decoding stays off). Memory decoding is off while BARs are sized and programmed
    /// and is left off: the caller enables it (with bus mastering) for the devices it drives.
    /// Returns the BARs placed, in register order (zero-sized BARs are skipped).
    pub fn assign(
        &mut self,
        cfg: &mut impl ConfigSpace,
        bdf: Bdf,
    ) -> Result<heapless::Vec<AssignedBar, 6>, BarError> {
        let bars = match cfg.read8(bdf, HEADER_TYPE) & 0x7f {
            0 => TYPE0_BARS,
            1 => TYPE1_BARS,
            _ => 0,
        };
        let cmd = cfg.read16(bdf, COMMAND);
        cfg.write16(bdf, COMMAND, cmd & !(COMMAND_MEM | COMMAND_IO));
        let mut out = heapless::Vec::new();
        let mut index = 0;
        while index < bars {
            let off = BAR0 + 4 * index;
            let lo = cfg.read32(bdf, off);
            if lo & 1 != 0 {
                index += 1; // I/O BAR
                continue;
            }
            let is_64 = (lo >> 1) & 3 == 2;
            let prefetchable = lo & 0x8 != 0;
            if is_64 && index + 1 >= bars {
                return Err(BarError::Bad64BitBar);
            }
            // Size: all ones, read back, restore.
            cfg.write32(bdf, off, u32::MAX);
            let mut mask = u64::from(cfg.read32(bdf, off) & !0xf);
            if is_64 {
                let hi = cfg.read32(bdf, off + 4);
                cfg.write32(bdf, off + 4, u32::MAX);
                mask |= u64::from(cfg.read32(bdf, off + 4)) << 32;
                cfg.write32(bdf, off + 4, hi);
            } else {
                mask |= 0xffff_ffff_0000_0000;
            }
            cfg.write32(bdf, off, lo);
            let step = if is_64 { 2 } else { 1 };
            if mask == 0xffff_ffff_0000_0000 || mask == 0 {
                index += step; // unimplemented BAR
                continue;
            }
            let size = (!mask).wrapping_add(1);
            if !size.is_power_of_two() {
                return Err(BarError::BadSize { index });
            }
            let (pci_addr, cpu_addr) = self.take(size)?;
            cfg.write32(bdf, off, (pci_addr as u32) | (lo & 0xf));
            if is_64 {
                cfg.write32(bdf, off + 4, (pci_addr >> 32) as u32);
            }
            // Six registers give at most six BARs: the push cannot fail.
            let _ = out.push(AssignedBar {
                index,
                pci_addr,
                cpu_addr,
                size,
                is_64,
                prefetchable,
            });
            index += step;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::mem_bar;
    use std::collections::BTreeMap;
    use std::string::ToString;

    #[test]
    fn errors_name_the_bar() {
        let e = BarError::WindowFull { size: 0x10_0000 };
        assert!(e.to_string().contains("0x100000"), "{e}");
        assert!(BarError::BadSize { index: 2 }.to_string().contains("BAR 2"));
    }

    /// One function whose BARs answer sizing like hardware: each register keeps only the
    /// address bits its size allows, plus read-only flag bits.
    struct Device {
        /// Per BAR register: (read-only flag bits, writable address mask).
        bars: [(u32, u32); 6],
        regs: BTreeMap<u16, u32>,
        writes_while_decoding: u32,
    }

    impl Device {
        fn new(bars: [(u32, u32); 6]) -> Self {
            let mut regs = BTreeMap::new();
            regs.insert(0, 0x11e8_1234);
            regs.insert(COMMAND, 0x0000_0003);
            regs.insert(0x0c, 0);
            Device {
                bars,
                regs,
                writes_while_decoding: 0,
            }
        }
    }

    impl ConfigSpace for Device {
        fn read32(&mut self, _bdf: Bdf, offset: u16) -> u32 {
            let o = offset & !3;
            let v = *self.regs.get(&o).unwrap_or(&0);
            if (BAR0..BAR0 + 24).contains(&o) {
                let (flags, mask) = self.bars[usize::from((o - BAR0) / 4)];
                return (v & mask) | flags;
            }
            v
        }
        fn write32(&mut self, _bdf: Bdf, offset: u16, value: u32) {
            let o = offset & !3;
            if (BAR0..BAR0 + 24).contains(&o) && self.regs[&COMMAND] & 0x3 != 0 {
                self.writes_while_decoding += 1;
            }
            self.regs.insert(o, value);
        }
    }

    const B: Bdf = Bdf::new(0, 1, 0);

    #[test]
    fn edu_like_bar_is_placed_aligned_and_programmed() {
        // BAR0: 32-bit, 1 MiB, non-prefetchable (like edu); BAR1: I/O; BAR2/3: 64-bit
        // prefetchable 16 KiB; BAR4: unimplemented; BAR5: 32-bit 4 KiB.
        let mut dev = Device::new([
            (0x0, 0xfff0_0000),
            (0x1, 0xffff_ff00),
            (0xc, 0xffff_c000),
            (0x0, 0xffff_ffff),
            (0x0, 0x0),
            (0x0, 0xffff_f000),
        ]);
        let window = BarWindow {
            pci_base: 0x1000_1000,
            size: 0x40_0000,
            cpu_base: 0x1000_1000,
        };
        let mut a = BarAllocator::new(window);
        let bars = a.assign(&mut dev, B).unwrap();
        assert_eq!(dev.writes_while_decoding, 0);
        assert_eq!(bars.len(), 3);
        assert_eq!(
            bars[0],
            AssignedBar {
                index: 0,
                pci_addr: 0x1010_0000,
                cpu_addr: 0x1010_0000,
                size: 0x10_0000,
                is_64: false,
                prefetchable: false
            }
        );
        assert_eq!(
            (bars[1].index, bars[1].pci_addr, bars[1].size),
            (2, 0x1020_0000, 0x4000)
        );
        assert!(bars[1].is_64 && bars[1].prefetchable);
        assert_eq!(
            (bars[2].index, bars[2].pci_addr, bars[2].size),
            (5, 0x1020_4000, 0x1000)
        );
        // What the generic BAR reader now sees.
        assert_eq!(mem_bar(&mut dev, B, 0).unwrap().addr, 0x1010_0000);
        assert_eq!(mem_bar(&mut dev, B, 2).unwrap().addr, 0x1020_0000);
        assert_eq!(mem_bar(&mut dev, B, 1), None);
        // Decoding stays off until the caller enables it.
        assert_eq!(dev.read16(B, COMMAND) & 0x3, 0);
        assert_eq!(a.remaining(), 0x40_0000 - (0x1020_5000 - 0x1000_1000));
    }

    #[test]
    fn cpu_addresses_follow_the_window_offset() {
        let mut dev = Device::new([(0x0, 0xffff_f000), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)]);
        let mut a = BarAllocator::new(BarWindow {
            pci_base: 0x0,
            size: 0x10_0000,
            cpu_base: 0x3000_0000,
        });
        let bars = a.assign(&mut dev, B).unwrap();
        assert_eq!((bars[0].pci_addr, bars[0].cpu_addr), (0x0, 0x3000_0000));
    }

    #[test]
    fn a_full_window_is_reported_and_the_bar_left_unassigned() {
        let mut dev = Device::new([(0x0, 0xfff0_0000), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)]);
        let mut a = BarAllocator::new(BarWindow {
            pci_base: 0x1000_0000,
            size: 0x8_0000,
            cpu_base: 0x1000_0000,
        });
        assert_eq!(
            a.assign(&mut dev, B),
            Err(BarError::WindowFull { size: 0x10_0000 })
        );
        assert_eq!(mem_bar(&mut dev, B, 0), None);
        // A 64-bit BAR in the last register is refused.
        let mut dev = Device::new([(0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0x4, 0xffff_f000)]);
        let mut a = BarAllocator::new(BarWindow {
            pci_base: 0,
            size: 1 << 20,
            cpu_base: 0,
        });
        assert_eq!(a.assign(&mut dev, B), Err(BarError::Bad64BitBar));
    }
}

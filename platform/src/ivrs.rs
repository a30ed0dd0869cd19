//! The ACPI I/O Virtualization Reporting Structure (IVRS): where the AMD IOMMUs are and which
//! devices each one translates.
//!
//! Layouts from the AMD I/O Virtualization Technology (IOMMU) Specification (pub. 48882 rev
//! 3.11), chapter 5 "I/O Virtualization ACPI Table", 5.2 "I/O Virtualization Reporting
//! Structure (IVRS)": the IVRS header with IVinfo (5.2.1, Tables 85 to 88), I/O
//! Virtualization Hardware Definition blocks (IVHD, types 10h, 11h and 40h; 5.2.2.1, Tables
//! 89 to 102) with their device entries (Tables 103 to 110), and I/O Virtualization Memory
//! Definition blocks (IVMD, types 20h to 22h; 5.2.2.2, Tables 111 to 113; counted, not used).
//! The parser reads a byte slice with bounds checks everywhere; malformed tables give an
//! [`IvrsError`], never a panic.
//!
//! One IOMMU may be described by IVHD blocks of several types (QEMU writes a 10h and an 11h
//! block for its one unit): this parser uses the blocks of the highest type it understands
//! and ignores the others ([`Ivrs::units`]), as Linux does.
//!
//! Device entries name DeviceIDs (`bus << 8 | devfn`), singly (Select), in ranges (Start of
//! Range ... End of Range), or all of them (All). An Alias entry says that requests of its
//! device(s) reach the IOMMU carrying another DeviceID (the alias), e.g. behind a PCIe-to-PCI
//! bridge: both ids must be blocked or attached together ([`Ivhd::aliases_of`]).

use heapless::Vec;

/// At most this many IVHD blocks are kept (of all types).
pub const MAX_BLOCKS: usize = 16;
/// At most this many device ranges are kept per IVHD.
pub const MAX_RANGES: usize = 64;
/// At most this many alias ranges are kept per IVHD.
pub const MAX_ALIASES: usize = 32;
/// At most this many special devices (IOAPIC, HPET) are kept per IVHD.
pub const MAX_SPECIALS: usize = 8;

/// Size of the standard ACPI table header.
const SDT_HEADER_LEN: usize = 36;
/// IVHD and IVMD blocks start after the header, IVinfo and 8 reserved bytes.
const BLOCKS_OFFSET: usize = 48;
/// IVHD header length of type 10h.
const IVHD10_LEN: usize = 24;
/// IVHD header length of types 11h and 40h (EFR image and EFR image 2 added).
const IVHD11_LEN: usize = 40;

/// IVHD device entry types (5.2.2.1, Tables 105 and 107 for the 4- and 8-byte entries,
/// Table 110 for type F0h). A type's length follows from its range (Table 103): 00h to 3Fh
/// are 4 bytes, 40h to 7Fh 8 bytes, F0h variable.
pub mod entry {
    /// Reserved 4-byte entry type (skipped).
    pub const PAD4: u8 = 0x00;
    /// All DeviceIDs.
    pub const ALL: u8 = 0x01;
    /// One DeviceID.
    pub const SELECT: u8 = 0x02;
    /// First DeviceID of a range (ended by [`END_OF_RANGE`]).
    pub const START_OF_RANGE: u8 = 0x03;
    /// Last DeviceID of a range.
    pub const END_OF_RANGE: u8 = 0x04;
    /// Reserved 8-byte entry type (skipped).
    pub const PAD8: u8 = 0x40;
    /// One DeviceID whose requests carry the alias DeviceID in bytes 6:5.
    pub const ALIAS_SELECT: u8 = 0x42;
    /// A range whose requests carry the alias DeviceID (ended by [`END_OF_RANGE`]).
    pub const ALIAS_START_OF_RANGE: u8 = 0x43;
    /// One DeviceID with extended data.
    pub const EXT_SELECT: u8 = 0x46;
    /// A range with extended data (ended by [`END_OF_RANGE`]).
    pub const EXT_START_OF_RANGE: u8 = 0x47;
    /// A special device (IOAPIC, HPET; variety in byte 7, Table 109) and the DeviceID its
    /// requests carry (bytes 6:5).
    pub const SPECIAL: u8 = 0x48;
    /// An ACPI namespace device (variable length: 22 bytes and the UID, whose length is
    /// byte 21).
    pub const ACPI_HID: u8 = 0xf0;
}

/// Why an IVRS table was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum IvrsError {
    /// The slice is shorter than the header or than the header's length field.
    Truncated,
    /// The signature is not `IVRS`.
    BadSignature,
    /// The bytes of the table do not sum to zero.
    BadChecksum,
    /// A block has a length that is too small or runs past the end.
    BadBlock {
        /// Byte offset of the block in the table.
        offset: u32,
    },
    /// A device entry is malformed: cut short, of a variable-length type this parser cannot
    /// size, or a range without its end.
    BadEntry {
        /// Byte offset of the entry in the table.
        offset: u32,
    },
    /// More IVHD blocks than [`MAX_BLOCKS`].
    TooManyUnits,
    /// More ranges, aliases or special devices in one block than this parser keeps.
    TooManyEntries,
}

impl core::fmt::Display for IvrsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            IvrsError::Truncated => {
                f.write_str("IVRS table shorter than its header or its length field says")
            }
            IvrsError::BadSignature => f.write_str("table signature is not IVRS"),
            IvrsError::BadChecksum => f.write_str("IVRS table checksum does not sum to zero"),
            IvrsError::BadBlock { offset } => write!(
                f,
                "IVRS block at byte {offset:#x} is too short or runs past the table"
            ),
            IvrsError::BadEntry { offset } => write!(
                f,
                "IVRS device entry at byte {offset:#x} is cut short, of a variable-length type \
                 this parser cannot size, or a range without its end"
            ),
            IvrsError::TooManyUnits => write!(
                f,
                "IVRS lists more than {MAX_BLOCKS} IVHD blocks (raise ivrs::MAX_BLOCKS)"
            ),
            IvrsError::TooManyEntries => f.write_str(
                "an IVHD block has more ranges, aliases or special devices than this parser \
                 keeps (raise ivrs::MAX_RANGES / MAX_ALIASES / MAX_SPECIALS)",
            ),
        }
    }
}

impl core::error::Error for IvrsError {}

/// A range of DeviceIDs a unit translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct DeviceRange {
    /// First DeviceID.
    pub first: u16,
    /// Last DeviceID (inclusive).
    pub last: u16,
    /// DTE setting byte (Table 106: INITPass 0, EIntPass 1, NMIPass 2, ATCPermit 3, SysMgt
    /// 5:4, Lint0Pass 6, Lint1Pass 7).
    pub setting: u8,
}

/// Devices whose requests carry another DeviceID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Alias {
    /// First DeviceID of the devices.
    pub first: u16,
    /// Last DeviceID of the devices (inclusive).
    pub last: u16,
    /// The DeviceID their requests carry.
    pub alias: u16,
}

/// A special device (IOAPIC or HPET) and the DeviceID its requests carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Special {
    /// IOAPIC id or HPET number.
    pub handle: u8,
    /// The DeviceID used.
    pub device: u16,
    /// 1 IOAPIC, 2 HPET.
    pub variety: u8,
}

/// One IOMMU as an IVHD block describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Ivhd {
    /// Block type: 10h, 11h or 40h.
    pub kind: u8,
    /// IVHD Flags (Table 92: HtTunEn 0, PassPW 1, ResPassPW 2, Isoc 3, IotlbSup 4,
    /// Coherent 5, PreFSup 6, PPRSup 7; Table 101 for type 40h).
    pub flags: u8,
    /// The IOMMU's own PCI DeviceID.
    pub device_id: u16,
    /// Offset of the IOMMU capability in its PCI configuration space.
    pub cap_offset: u16,
    /// Physical base of the MMIO registers.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// IOMMU Info (Table 93: MSI number in bits 4:0, UnitID in 12:8).
    pub info: u16,
    /// IOMMU Feature Reporting (type 10h, Table 94) or IOMMU Attributes (types 11h and 40h,
    /// Tables 98 and 102).
    pub attributes: u32,
    /// The EFR Register Image, an exact copy of MMIO 0030h (types 11h and 40h, offset 24).
    pub efr: Option<u64>,
    /// The DeviceIDs the unit translates.
    pub ranges: Vec<DeviceRange, MAX_RANGES>,
    /// Devices whose requests carry another DeviceID.
    pub aliases: Vec<Alias, MAX_ALIASES>,
    /// IOAPICs and HPETs.
    pub specials: Vec<Special, MAX_SPECIALS>,
    /// ACPI namespace devices listed (not kept).
    pub acpi_devices: u8,
}

impl Ivhd {
    /// Whether the unit translates requests carrying `device`.
    pub fn covers(&self, device: u16) -> bool {
        self.ranges
            .iter()
            .any(|r| (r.first..=r.last).contains(&device))
            || self
                .aliases
                .iter()
                .any(|a| (a.first..=a.last).contains(&device) || a.alias == device)
            || self.specials.iter().any(|s| s.device == device)
    }

    /// The DeviceIDs other than `device` its requests may carry (IVHD alias entries).
    pub fn aliases_of(&self, device: u16) -> impl Iterator<Item = u16> + '_ {
        self.aliases
            .iter()
            .filter(move |a| (a.first..=a.last).contains(&device) && a.alias != device)
            .map(|a| a.alias)
    }

    /// The highest DeviceID the unit can see requests from (what its device table must
    /// hold).
    pub fn max_device_id(&self) -> u16 {
        let r = self.ranges.iter().map(|r| r.last);
        let a = self.aliases.iter().flat_map(|a| [a.last, a.alias]);
        let s = self.specials.iter().map(|s| s.device);
        r.chain(a).chain(s).max().unwrap_or(0)
    }
}

/// The parts of an IVRS table the runtime needs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Ivrs {
    /// IVinfo (Table 88): EFRSup (bit 0), DMA remap support (bit 1), GVAsize (7:5), PAsize
    /// (14:8), VAsize (21:15), HtAtsResv (22).
    pub iv_info: u32,
    /// Every IVHD block, in table order.
    pub blocks: Vec<Ivhd, MAX_BLOCKS>,
    /// IVMD blocks seen (memory the firmware wants mapped; not used here).
    pub memory_blocks: u8,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Parses a whole IVRS table (header included).
pub fn parse(table: &[u8]) -> Result<Ivrs, IvrsError> {
    if table.len() < BLOCKS_OFFSET {
        return Err(IvrsError::Truncated);
    }
    if &table[0..4] != b"IVRS" {
        return Err(IvrsError::BadSignature);
    }
    let len = u32_at(table, 4).ok_or(IvrsError::Truncated)? as usize;
    if len < BLOCKS_OFFSET || len > table.len() {
        return Err(IvrsError::Truncated);
    }
    let table = &table[..len];
    if table.iter().fold(0u8, |s, &b| s.wrapping_add(b)) != 0 {
        return Err(IvrsError::BadChecksum);
    }
    let mut ivrs = Ivrs {
        iv_info: u32_at(table, SDT_HEADER_LEN).ok_or(IvrsError::Truncated)?,
        blocks: Vec::new(),
        memory_blocks: 0,
    };
    let mut off = BLOCKS_OFFSET;
    while off < len {
        let bad = IvrsError::BadBlock { offset: off as u32 };
        let kind = *table.get(off).ok_or(bad)?;
        let blen = u16_at(table, off + 2).ok_or(bad)? as usize;
        if blen < 4 || off + blen > len {
            return Err(bad);
        }
        let b = &table[off..off + blen];
        match kind {
            0x10 | 0x11 | 0x40 => {
                let unit = parse_ivhd(b, off)?;
                ivrs.blocks
                    .push(unit)
                    .map_err(|_| IvrsError::TooManyUnits)?;
            }
            0x20..=0x22 => ivrs.memory_blocks = ivrs.memory_blocks.saturating_add(1),
            _ => {}
        }
        off += blen;
    }
    Ok(ivrs)
}

/// Parses one IVHD block (`b` is exactly its bytes, at `at` in the table).
fn parse_ivhd(b: &[u8], at: usize) -> Result<Ivhd, IvrsError> {
    let kind = b[0];
    let hlen = if kind == 0x10 { IVHD10_LEN } else { IVHD11_LEN };
    let bad = IvrsError::BadBlock { offset: at as u32 };
    if b.len() < hlen {
        return Err(bad);
    }
    let mut unit = Ivhd {
        kind,
        flags: b[1],
        device_id: u16_at(b, 4).ok_or(bad)?,
        cap_offset: u16_at(b, 6).ok_or(bad)?,
        base: u64_at(b, 8).ok_or(bad)?,
        segment: u16_at(b, 16).ok_or(bad)?,
        info: u16_at(b, 18).ok_or(bad)?,
        attributes: u32_at(b, 20).ok_or(bad)?,
        efr: if kind == 0x10 { None } else { u64_at(b, 24) },
        ranges: Vec::new(),
        aliases: Vec::new(),
        specials: Vec::new(),
        acpi_devices: 0,
    };
    let full = IvrsError::TooManyEntries;
    // An open range: (first, setting, alias for alias ranges).
    let mut open: Option<(usize, u16, u8, Option<u16>)> = None;
    let mut off = hlen;
    while off < b.len() {
        let bad = IvrsError::BadEntry {
            offset: (at + off) as u32,
        };
        let t = b[off];
        let elen = match t {
            0x00..=0x3f => 4,
            0x40..=0x7f => 8,
            entry::ACPI_HID => 22 + *b.get(off + 21).ok_or(bad)? as usize,
            _ => return Err(bad),
        };
        let e = b.get(off..off + elen).ok_or(bad)?;
        let dev = u16::from_le_bytes([e[1], e[2]]);
        let setting = e[3];
        if open.is_some() && t != entry::END_OF_RANGE && t != entry::PAD4 && t != entry::PAD8 {
            return Err(bad);
        }
        match t {
            entry::ALL => unit
                .ranges
                .push(DeviceRange {
                    first: 0,
                    last: u16::MAX,
                    setting,
                })
                .map_err(|_| full)?,
            entry::SELECT | entry::EXT_SELECT => unit
                .ranges
                .push(DeviceRange {
                    first: dev,
                    last: dev,
                    setting,
                })
                .map_err(|_| full)?,
            entry::START_OF_RANGE | entry::EXT_START_OF_RANGE => {
                open = Some((off, dev, setting, None));
            }
            entry::ALIAS_START_OF_RANGE => {
                open = Some((off, dev, setting, Some(u16::from_le_bytes([e[5], e[6]]))));
            }
            entry::END_OF_RANGE => {
                let Some((_, first, setting, alias)) = open.take() else {
                    return Err(bad);
                };
                if dev < first {
                    return Err(bad);
                }
                unit.ranges
                    .push(DeviceRange {
                        first,
                        last: dev,
                        setting,
                    })
                    .map_err(|_| full)?;
                if let Some(alias) = alias {
                    unit.aliases
                        .push(Alias {
                            first,
                            last: dev,
                            alias,
                        })
                        .map_err(|_| full)?;
                }
            }
            entry::ALIAS_SELECT => {
                let alias = u16::from_le_bytes([e[5], e[6]]);
                unit.ranges
                    .push(DeviceRange {
                        first: dev,
                        last: dev,
                        setting,
                    })
                    .map_err(|_| full)?;
                unit.aliases
                    .push(Alias {
                        first: dev,
                        last: dev,
                        alias,
                    })
                    .map_err(|_| full)?;
            }
            entry::SPECIAL => unit
                .specials
                .push(Special {
                    handle: e[4],
                    device: u16::from_le_bytes([e[5], e[6]]),
                    variety: e[7],
                })
                .map_err(|_| full)?,
            entry::ACPI_HID => unit.acpi_devices = unit.acpi_devices.saturating_add(1),
            // Padding and entry types this parser does not know (their length is fixed by
            // the type's range): skipped.
            _ => {}
        }
        off += elen;
    }
    if let Some((o, ..)) = open {
        return Err(IvrsError::BadEntry {
            offset: (at + o) as u32,
        });
    }
    Ok(unit)
}

impl Ivrs {
    /// EFRSup (IVinfo bit 0): the IOMMUs implement the Extended Feature Register; without
    /// it IVHD type 11h and type 10h's Feature Reporting field are reserved (Tables 88, 91
    /// and 95).
    pub fn efr_sup(&self) -> bool {
        self.iv_info & 1 != 0
    }

    /// PAsize: physical address bits (0 when not reported).
    pub fn pa_size(&self) -> u32 {
        (self.iv_info >> 8) & 0x7f
    }

    /// VAsize: virtual address bits (0 when not reported).
    pub fn va_size(&self) -> u32 {
        (self.iv_info >> 15) & 0x7f
    }

    /// The block type used: the highest of 10h, 11h, 40h present.
    pub fn unit_kind(&self) -> Option<u8> {
        self.blocks.iter().map(|b| b.kind).max()
    }

    /// The IOMMUs: the IVHD blocks of [`Ivrs::unit_kind`], in table order.
    pub fn units(&self) -> impl Iterator<Item = &Ivhd> + '_ {
        let kind = self.unit_kind();
        self.blocks.iter().filter(move |b| Some(b.kind) == kind)
    }

    /// The index (in [`Ivrs::units`]) of the unit translating `device` of `segment`.
    pub fn unit_for(&self, segment: u16, device: u16) -> Option<usize> {
        self.units()
            .position(|u| u.segment == segment && u.covers(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec as StdVec;

    #[test]
    fn errors_name_the_offset() {
        let e = IvrsError::BadEntry { offset: 0x48 };
        assert!(e.to_string().contains("0x48"), "{e}");
        assert!(IvrsError::TooManyUnits.to_string().contains("MAX_BLOCKS"));
    }

    fn e4(t: u8, dev: u16) -> StdVec<u8> {
        let d = dev.to_le_bytes();
        vec![t, d[0], d[1], 0]
    }
    fn e8(t: u8, dev: u16, b4: u8, src: u16, b7: u8) -> StdVec<u8> {
        let d = dev.to_le_bytes();
        let s = src.to_le_bytes();
        vec![t, d[0], d[1], 0, b4, s[0], s[1], b7]
    }

    fn ivhd(kind: u8, devid: u16, base: u64, entries: &[StdVec<u8>]) -> StdVec<u8> {
        let body: StdVec<u8> = entries.concat();
        let hlen = if kind == 0x10 { 24 } else { 40 };
        let mut v = vec![kind, 0xb0];
        v.extend(((hlen + body.len()) as u16).to_le_bytes());
        v.extend(devid.to_le_bytes());
        v.extend(0x40u16.to_le_bytes());
        v.extend(base.to_le_bytes());
        v.extend(0u16.to_le_bytes()); // segment
        v.extend(0u16.to_le_bytes()); // info
        v.extend(0u32.to_le_bytes()); // features / attributes
        if kind != 0x10 {
            v.extend(0x2_0000_0000_0042u64.to_le_bytes());
            v.extend(0u64.to_le_bytes());
        }
        v.extend(body);
        v
    }

    fn table(iv_info: u32, blocks: &[StdVec<u8>]) -> StdVec<u8> {
        let body: StdVec<u8> = blocks.concat();
        let mut t = b"IVRS".to_vec();
        t.extend(((48 + body.len()) as u32).to_le_bytes());
        t.extend([2, 0]); // revision, checksum (fixed below)
        t.extend(*b"BOCHS BXPC    ");
        t.extend([0; 12]);
        t.extend(iv_info.to_le_bytes());
        t.extend([0; 8]);
        t.extend(body);
        let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    /// QEMU q35's shape: one IOMMU described twice (types 10h and 11h) with an All entry and
    /// the southbridge IOAPIC.
    fn qemu_like() -> StdVec<u8> {
        let entries = [e4(entry::ALL, 0), e8(entry::SPECIAL, 0, 0, 0x00a0, 1)];
        table(
            40 << 8,
            &[
                ivhd(0x10, 0x0010, 0xfed8_0000, &entries),
                ivhd(0x11, 0x0010, 0xfed8_0000, &entries),
            ],
        )
    }

    /// QEMU 10.0.2's IVRS for `-machine q35 -device amd-iommu,pt=off,intremap=off -device edu`
    /// (captured from the amd image): an IVHD of type 10h and one of type 11h for the IOMMU at
    /// 00:01.0, each selecting the DeviceIDs on bus 0.
    static QEMU_Q35_AMD_IOMMU: &[u8] = include_bytes!("../tests/data/qemu-q35-amd-iommu.ivrs");

    #[test]
    fn parses_the_captured_qemu_table() {
        let t = parse(QEMU_Q35_AMD_IOMMU).unwrap();
        assert!(t.efr_sup());
        assert_eq!((t.pa_size(), t.va_size()), (40, 0));
        assert_eq!(t.blocks.len(), 2);
        assert_eq!(t.blocks[0].kind, 0x10);
        assert_eq!(t.blocks[0].efr, None);
        assert_eq!(t.unit_kind(), Some(0x11));
        let u: StdVec<&Ivhd> = t.units().collect();
        assert_eq!(u.len(), 1);
        let u = u[0];
        assert_eq!(u.base, 0xfed8_0000);
        assert_eq!(u.device_id, 0x0008, "the IOMMU is 00:01.0");
        assert_eq!(u.cap_offset, 0x40);
        assert_eq!(u.flags, 0x11);
        assert_eq!(u.efr, Some(0x29d3));
        let ids: StdVec<u16> = u.ranges.iter().map(|r| r.first).collect();
        assert_eq!(ids, [0x00, 0x08, 0x10, 0xf8, 0xfa, 0xfb]);
        assert!(u.ranges.iter().all(|r| r.first == r.last));
        assert_eq!(u.max_device_id(), 0xfb, "a device table of 2 pages");
        assert_eq!(t.unit_for(0, 0x0010), Some(0), "edu at 00:02.0");
        assert_eq!(t.unit_for(0, 0x0018), None, "nothing at 00:03.0");
        assert!(u.aliases.is_empty() && u.specials.is_empty());
    }

    #[test]
    fn parses_a_qemu_like_table() {
        let t = parse(&qemu_like()).unwrap();
        assert_eq!(t.pa_size(), 40);
        assert!(!t.efr_sup());
        assert_eq!(t.blocks.len(), 2);
        assert_eq!(t.unit_kind(), Some(0x11));
        let units: StdVec<&Ivhd> = t.units().collect();
        assert_eq!(units.len(), 1, "the 10h block describes the same unit");
        let u = units[0];
        assert_eq!(u.base, 0xfed8_0000);
        assert_eq!(u.device_id, 0x0010);
        assert_eq!(u.cap_offset, 0x40);
        assert_eq!(u.efr, Some(0x2_0000_0000_0042));
        assert!(u.covers(0x0008) && u.covers(0xffff));
        assert_eq!(u.max_device_id(), 0xffff);
        assert_eq!(
            u.specials[0],
            Special {
                handle: 0,
                device: 0xa0,
                variety: 1
            }
        );
        assert_eq!(t.unit_for(0, 0x0008), Some(0));
        assert_eq!(t.unit_for(1, 0x0008), None);
        assert_eq!(u.aliases_of(0x0008).count(), 0);
    }

    #[test]
    fn ranges_aliases_and_units() {
        let a = ivhd(
            0x10,
            0x0002,
            0x1000_0000,
            &[
                e4(entry::SELECT, 0x0008),
                e4(entry::START_OF_RANGE, 0x0010),
                e4(entry::END_OF_RANGE, 0x001f),
                // Devices 01:00.0 .. 01:1f.7 behind a PCIe-to-PCI bridge carry 01:00.0.
                e8(entry::ALIAS_START_OF_RANGE, 0x0100, 0, 0x0100, 0),
                e4(entry::END_OF_RANGE, 0x01ff),
                e8(entry::ALIAS_SELECT, 0x0218, 0, 0x0200, 0),
                e8(entry::PAD8, 0, 0, 0, 0),
                e8(entry::EXT_SELECT, 0x0300, 0, 0, 0),
            ],
        );
        let b = ivhd(0x10, 0x4002, 0x2000_0000, &[e4(entry::SELECT, 0x4008)]);
        let t = parse(&table(1 | (48 << 8) | (64 << 15), &[a, b])).unwrap();
        assert!(t.efr_sup());
        assert_eq!((t.pa_size(), t.va_size()), (48, 64));
        assert_eq!(t.units().count(), 2);
        assert_eq!(t.unit_for(0, 0x0008), Some(0));
        assert_eq!(t.unit_for(0, 0x0015), Some(0));
        assert_eq!(t.unit_for(0, 0x0020), None);
        assert_eq!(t.unit_for(0, 0x4008), Some(1));
        let u = t.units().next().unwrap();
        assert_eq!(u.aliases_of(0x0118).collect::<StdVec<_>>(), [0x0100]);
        assert_eq!(u.aliases_of(0x0100).count(), 0, "the bridge id itself");
        assert_eq!(u.aliases_of(0x0218).collect::<StdVec<_>>(), [0x0200]);
        assert!(u.covers(0x0200), "an alias id reaches the unit");
        assert_eq!(u.max_device_id(), 0x0300);
        assert_eq!(u.efr, None);
    }

    #[test]
    fn malformed_tables_are_refused() {
        let good = qemu_like();
        assert!(parse(&good).is_ok());
        assert_eq!(parse(&good[..40]), Err(IvrsError::Truncated));
        let mut sig = good.clone();
        sig[0] = b'X';
        assert_eq!(parse(&sig), Err(IvrsError::BadSignature));
        let mut sum = good.clone();
        sum[20] ^= 1;
        assert_eq!(parse(&sum), Err(IvrsError::BadChecksum));
        // A block of length zero would loop forever if not refused.
        assert_eq!(
            parse(&table(0, &[vec![0x10, 0, 0, 0]])),
            Err(IvrsError::BadBlock { offset: 48 })
        );
        // An IVHD shorter than its header.
        let mut short = ivhd(0x11, 0, 0, &[]);
        short[2] = 30;
        short.truncate(30);
        assert_eq!(
            parse(&table(0, &[short])),
            Err(IvrsError::BadBlock { offset: 48 })
        );
        // A range without its end, an end without a start, an end below its start.
        let open = ivhd(0x10, 0, 0, &[e4(entry::START_OF_RANGE, 5)]);
        assert_eq!(
            parse(&table(0, &[open])),
            Err(IvrsError::BadEntry { offset: 48 + 24 })
        );
        let lone = ivhd(0x10, 0, 0, &[e4(entry::END_OF_RANGE, 5)]);
        assert_eq!(
            parse(&table(0, &[lone])),
            Err(IvrsError::BadEntry { offset: 48 + 24 })
        );
        let back = ivhd(
            0x10,
            0,
            0,
            &[e4(entry::START_OF_RANGE, 9), e4(entry::END_OF_RANGE, 5)],
        );
        assert_eq!(
            parse(&table(0, &[back])),
            Err(IvrsError::BadEntry { offset: 48 + 28 })
        );
        // A variable-length type the parser cannot size.
        let odd = ivhd(0x10, 0, 0, &[vec![0x90, 0, 0, 0]]);
        assert_eq!(
            parse(&table(0, &[odd])),
            Err(IvrsError::BadEntry { offset: 48 + 24 })
        );
        // Unknown fixed-size types and IVMD blocks are skipped.
        let ivmd = {
            let mut v = vec![0x21, 0x07];
            v.extend(32u16.to_le_bytes());
            v.extend([0; 28]);
            v
        };
        let ok = ivhd(
            0x10,
            0,
            0,
            &[e4(0x3f, 1), e8(0x7f, 1, 0, 0, 0), e4(entry::SELECT, 8)],
        );
        let t = parse(&table(0, &[ivmd, ok])).unwrap();
        assert_eq!(t.memory_blocks, 1);
        assert!(t.blocks[0].covers(8) && !t.blocks[0].covers(1));
        // An ACPI HID entry: 22 bytes (type, DeviceID, setting, HID, CID, UID format, UID
        // length) and a 3-byte UID.
        let mut hid = vec![entry::ACPI_HID, 0x05, 0, 0];
        hid.extend([0; 16]);
        hid.extend([2, 3]);
        hid.extend(*b"abc");
        assert_eq!(hid.len(), 25);
        let with_hid = ivhd(0x10, 0, 0, &[hid, e4(entry::SELECT, 8)]);
        let t = parse(&table(0, &[with_hid])).unwrap();
        assert_eq!(t.blocks[0].acpi_devices, 1);
        assert!(t.blocks[0].covers(8));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let good = qemu_like();
        for n in 0..good.len() {
            let mut t = good[..n].to_vec();
            if t.len() >= 10 {
                t[4..8].copy_from_slice(&(n as u32).to_le_bytes());
                t[9] = 0;
                let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
                t[9] = 0u8.wrapping_sub(sum);
            }
            // A header alone, or with the first (36-byte) block whole, is a valid table; any
            // cut inside a block is refused.
            assert_eq!(parse(&t).is_err(), n != 48 && n != 48 + 36, "length {n}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut t = qemu_like();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 36 + (x as usize % (t.len() - 36));
                t[i] = (x >> 32) as u8;
            }
            t[9] = 0;
            let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
            t[9] = 0u8.wrapping_sub(sum);
            let _ = parse(&t);
        }
    }
}

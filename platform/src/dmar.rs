//! The ACPI DMA Remapping table (DMAR): where the VT-d units are and which devices each covers.
//!
//! Layouts from the Intel VT-d Architecture Specification 3.4, chapter 8: the DMAR header
//! (8.1), DRHD structures (8.3) and device scope entries (8.3.1). The parser reads a byte slice
//! with bounds checks everywhere; malformed tables give a [`DmarError`], never a panic.

use heapless::Vec;

/// At most this many DRHD units are kept.
pub const MAX_UNITS: usize = 8;
/// At most this many device scope entries are kept per unit.
pub const MAX_SCOPES: usize = 32;
/// At most this many (device, function) hops are kept per device scope path.
pub const MAX_PATH: usize = 8;

/// Size of the standard ACPI table header.
const SDT_HEADER_LEN: usize = 36;
/// Remapping structures start after the header, host address width, flags and 10 reserved
/// bytes (8.1, table 8-2).
const STRUCTS_OFFSET: usize = 48;
/// Remapping structure type of a DRHD (8.2).
const TYPE_DRHD: u16 = 0;
/// DRHD flags bit 0: the unit covers every PCI device of its segment not covered by another
/// unit (8.3).
const DRHD_INCLUDE_PCI_ALL: u8 = 1;

/// Why a DMAR table was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum DmarError {
    /// The slice is shorter than the header or than the header's length field.
    Truncated,
    /// The signature is not `DMAR`.
    BadSignature,
    /// The bytes of the table do not sum to zero.
    BadChecksum,
    /// A remapping structure has a length that is too small or runs past the end of the
    /// table.
    BadStructure {
        /// Byte offset of the structure in the table.
        offset: u32,
    },
    /// A device scope inside a DRHD is malformed.
    BadScope {
        /// Byte offset of the scope in the table.
        offset: u32,
    },
    /// More DRHD units than [`MAX_UNITS`].
    TooManyUnits,
    /// More device scopes in one unit than [`MAX_SCOPES`], or a longer path than
    /// [`MAX_PATH`].
    TooManyScopes,
}

impl core::fmt::Display for DmarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DmarError::Truncated => {
                f.write_str("DMAR table shorter than its header or its length field says")
            }
            DmarError::BadSignature => f.write_str("table signature is not DMAR"),
            DmarError::BadChecksum => f.write_str("DMAR table checksum does not sum to zero"),
            DmarError::BadStructure { offset } => write!(
                f,
                "DMAR remapping structure at byte {offset:#x} is too short or runs past the table"
            ),
            DmarError::BadScope { offset } => {
                write!(f, "DMAR device scope at byte {offset:#x} is malformed")
            }
            DmarError::TooManyUnits => write!(
                f,
                "DMAR lists more than {MAX_UNITS} remapping units (raise dmar::MAX_UNITS)"
            ),
            DmarError::TooManyScopes => write!(
                f,
                "a DMAR unit has more than {MAX_SCOPES} device scopes or a path longer than \
                 {MAX_PATH} (raise dmar::MAX_SCOPES / MAX_PATH)"
            ),
        }
    }
}

impl core::error::Error for DmarError {}

/// Kind of a device scope entry (8.3.1, table 8-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum ScopeKind {
    /// One PCI endpoint device.
    Endpoint,
    /// A PCI-PCI bridge and every device below it.
    SubHierarchy,
    /// An I/O APIC.
    IoApic,
    /// An MSI-capable HPET.
    Hpet,
    /// An ACPI namespace device.
    AcpiNamespace,
    /// A type this parser does not know.
    Other(u8),
}

impl ScopeKind {
    fn from_raw(raw: u8) -> Self {
        match raw {
            1 => ScopeKind::Endpoint,
            2 => ScopeKind::SubHierarchy,
            3 => ScopeKind::IoApic,
            4 => ScopeKind::Hpet,
            5 => ScopeKind::AcpiNamespace,
            other => ScopeKind::Other(other),
        }
    }
}

/// One device scope entry: a start bus and a path of (device, function) hops through bridges.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct DeviceScope {
    /// What the entry names.
    pub kind: ScopeKind,
    /// I/O APIC id, HPET number or ACPI device number (0 for PCI scopes).
    pub enumeration_id: u8,
    /// Bus of the first hop.
    pub start_bus: u8,
    /// (device, function) hops: all but the last are bridges.
    pub path: Vec<(u8, u8), MAX_PATH>,
}

impl DeviceScope {
    /// The bus, device and function that the path ends at. `secondary_bus(bus, dev, func)`
    /// returns the secondary bus number of a bridge (read from its configuration space) for
    /// each intermediate hop. `None` for an empty path or a bridge that cannot be resolved.
    pub fn resolve(
        &self,
        mut secondary_bus: impl FnMut(u8, u8, u8) -> Option<u8>,
    ) -> Option<(u8, u8, u8)> {
        let (&(last_dev, last_func), bridges) = self.path.split_last()?;
        let mut bus = self.start_bus;
        for &(dev, func) in bridges {
            bus = secondary_bus(bus, dev, func)?;
        }
        Some((bus, last_dev, last_func))
    }
}

/// One DMA remapping hardware unit (DRHD, 8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Drhd {
    /// PCI segment the unit serves.
    pub segment: u16,
    /// Physical base address of the unit's register set.
    pub register_base: u64,
    /// Size of the register set in bytes (`2^size` pages; 4 KiB when the field is 0).
    pub register_size: u64,
    /// Whether the unit covers every device of its segment that no other unit lists.
    pub include_pci_all: bool,
    /// The device scopes listed for the unit.
    pub scopes: Vec<DeviceScope, MAX_SCOPES>,
}

/// The parts of a DMAR table the runtime needs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Dmar {
    /// DMA physical address width (the table's field plus one).
    pub host_address_width: u8,
    /// Table flags (bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN).
    pub flags: u8,
    /// The DRHD units, in table order.
    pub units: Vec<Drhd, MAX_UNITS>,
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

/// Parses a whole DMAR table (header included). Structures other than DRHD are skipped.
pub fn parse(table: &[u8]) -> Result<Dmar, DmarError> {
    if table.len() < STRUCTS_OFFSET {
        return Err(DmarError::Truncated);
    }
    if &table[0..4] != b"DMAR" {
        return Err(DmarError::BadSignature);
    }
    let len = u32_at(table, 4).ok_or(DmarError::Truncated)? as usize;
    if len < STRUCTS_OFFSET || len > table.len() {
        return Err(DmarError::Truncated);
    }
    let table = &table[..len];
    if table.iter().fold(0u8, |s, &b| s.wrapping_add(b)) != 0 {
        return Err(DmarError::BadChecksum);
    }
    let mut dmar = Dmar {
        host_address_width: table[SDT_HEADER_LEN].saturating_add(1),
        flags: table[SDT_HEADER_LEN + 1],
        units: Vec::new(),
    };
    let mut off = STRUCTS_OFFSET;
    while off < len {
        let bad = DmarError::BadStructure { offset: off as u32 };
        let kind = u16_at(table, off).ok_or(bad)?;
        let slen = u16_at(table, off + 2).ok_or(bad)? as usize;
        if slen < 4 || off + slen > len {
            return Err(bad);
        }
        let s = &table[off..off + slen];
        if kind == TYPE_DRHD {
            let unit = parse_drhd(s).map_err(|e| match e {
                DmarError::BadScope { offset } => DmarError::BadScope {
                    offset: off as u32 + offset,
                },
                DmarError::Truncated => bad,
                other => other,
            })?;
            dmar.units.push(unit).map_err(|_| DmarError::TooManyUnits)?;
        }
        off += slen;
    }
    Ok(dmar)
}

/// Parses one DRHD structure (`s` is exactly its bytes). Scope errors carry the offset within
/// `s`.
fn parse_drhd(s: &[u8]) -> Result<Drhd, DmarError> {
    if s.len() < 16 {
        return Err(DmarError::Truncated);
    }
    let flags = s[4];
    let size = s[5] & 0xf;
    let mut unit = Drhd {
        segment: u16_at(s, 6).ok_or(DmarError::Truncated)?,
        register_base: u64_at(s, 8).ok_or(DmarError::Truncated)?,
        register_size: 4096u64 << size,
        include_pci_all: flags & DRHD_INCLUDE_PCI_ALL != 0,
        scopes: Vec::new(),
    };
    let mut off = 16;
    while off < s.len() {
        let bad = DmarError::BadScope { offset: off as u32 };
        let hdr = s.get(off..off + 6).ok_or(bad)?;
        let slen = hdr[1] as usize;
        if slen < 6 || (slen - 6) % 2 != 0 || off + slen > s.len() {
            return Err(bad);
        }
        let mut scope = DeviceScope {
            kind: ScopeKind::from_raw(hdr[0]),
            enumeration_id: hdr[4],
            start_bus: hdr[5],
            path: Vec::new(),
        };
        for hop in s[off + 6..off + slen].chunks_exact(2) {
            scope
                .path
                .push((hop[0], hop[1]))
                .map_err(|_| DmarError::TooManyScopes)?;
        }
        unit.scopes
            .push(scope)
            .map_err(|_| DmarError::TooManyScopes)?;
        off += slen;
    }
    Ok(unit)
}

impl Dmar {
    /// The index of the unit that translates DMA from endpoint `(bus, dev, func)` of
    /// `segment`: the unit listing it as an endpoint (or a sub-hierarchy containing its bus,
    /// using `bridge_buses(bus, dev, func) -> (secondary, subordinate)`), else the segment's
    /// INCLUDE_PCI_ALL unit (8.3: units with explicit scopes take precedence).
    pub fn unit_for(
        &self,
        segment: u16,
        bdf: (u8, u8, u8),
        mut bridge_buses: impl FnMut(u8, u8, u8) -> Option<(u8, u8)>,
    ) -> Option<usize> {
        for (i, unit) in self.units.iter().enumerate() {
            if unit.segment != segment {
                continue;
            }
            for scope in &unit.scopes {
                let end = scope.resolve(|b, d, f| bridge_buses(b, d, f).map(|(sec, _)| sec));
                match (scope.kind, end) {
                    (ScopeKind::Endpoint, Some(end)) if end == bdf => return Some(i),
                    (ScopeKind::SubHierarchy, Some((b, d, f))) => {
                        if let Some((sec, sub)) = bridge_buses(b, d, f)
                            && (sec..=sub).contains(&bdf.0)
                        {
                            return Some(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.units
            .iter()
            .position(|u| u.segment == segment && u.include_pci_all)
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
        let e = DmarError::BadScope { offset: 0x40 };
        assert!(e.to_string().contains("0x40"), "{e}");
        let e = DmarError::BadStructure { offset: 0x30 };
        assert!(e.to_string().contains("0x30"), "{e}");
        assert!(DmarError::TooManyUnits.to_string().contains("MAX_UNITS"));
    }

    fn scope(kind: u8, bus: u8, path: &[(u8, u8)]) -> StdVec<u8> {
        let mut v = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, 0, bus];
        for &(d, f) in path {
            v.extend([d, f]);
        }
        v
    }

    fn drhd(flags: u8, base: u64, scopes: &[StdVec<u8>]) -> StdVec<u8> {
        let body: StdVec<u8> = scopes.concat();
        let mut v = vec![0, 0];
        v.extend(((16 + body.len()) as u16).to_le_bytes());
        v.extend([flags, 0, 0, 0]);
        v.extend(base.to_le_bytes());
        v.extend(body);
        v
    }

    fn table(structs: &[StdVec<u8>]) -> StdVec<u8> {
        let body: StdVec<u8> = structs.concat();
        let mut t = b"DMAR".to_vec();
        t.extend(((48 + body.len()) as u32).to_le_bytes());
        t.extend([1, 0]); // revision, checksum (fixed below)
        t.extend(*b"BOCHS BXPC    ");
        t.extend([0; 12]);
        t.push(38); // host address width - 1
        t.push(1); // INTR_REMAP
        t.extend([0; 10]);
        t.extend(body);
        let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn parses_qemu_like_table() {
        let t = table(&[drhd(
            0,
            0xfed9_0000,
            &[scope(1, 0, &[(3, 0)]), scope(3, 0, &[(0x1f, 0)])],
        )]);
        let d = parse(&t).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert_eq!(d.flags, 1);
        assert_eq!(d.units.len(), 1);
        let u = &d.units[0];
        assert_eq!(u.register_base, 0xfed9_0000);
        assert_eq!(u.register_size, 4096);
        assert!(!u.include_pci_all);
        assert_eq!(u.scopes.len(), 2);
        assert_eq!(u.scopes[0].kind, ScopeKind::Endpoint);
        assert_eq!(u.scopes[1].kind, ScopeKind::IoApic);
        assert_eq!(d.unit_for(0, (0, 3, 0), |_, _, _| None), Some(0));
        assert_eq!(d.unit_for(0, (0, 4, 0), |_, _, _| None), None);
        assert_eq!(d.unit_for(1, (0, 3, 0), |_, _, _| None), None);
    }

    #[test]
    fn bridges_and_include_all() {
        let t = table(&[
            drhd(0, 0x1000, &[scope(1, 0, &[(1, 0), (0, 0)])]),
            drhd(0, 0x2000, &[scope(2, 0, &[(2, 0)])]),
            drhd(1, 0x3000, &[]),
        ]);
        let d = parse(&t).unwrap();
        // Bridge 00:01.0 -> bus 5; bridge 00:02.0 -> buses 6..=9.
        let buses = |b: u8, dev: u8, f: u8| match (b, dev, f) {
            (0, 1, 0) => Some((5, 5)),
            (0, 2, 0) => Some((6, 9)),
            _ => None,
        };
        assert_eq!(d.unit_for(0, (5, 0, 0), buses), Some(0));
        assert_eq!(d.unit_for(0, (7, 3, 1), buses), Some(1));
        assert_eq!(d.unit_for(0, (0, 3, 0), buses), Some(2));
    }

    #[test]
    fn malformed_tables_are_refused() {
        let good = table(&[drhd(1, 0x1000, &[scope(1, 0, &[(3, 0)])])]);
        assert!(parse(&good).is_ok());
        assert_eq!(parse(&good[..40]), Err(DmarError::Truncated));
        let mut sig = good.clone();
        sig[0] = b'X';
        assert_eq!(parse(&sig), Err(DmarError::BadSignature));
        let mut sum = good.clone();
        sum[20] ^= 1;
        assert_eq!(parse(&sum), Err(DmarError::BadChecksum));
        // A structure length of zero would loop forever if not refused.
        let t = table(&[vec![0, 0, 0, 0]]);
        assert_eq!(parse(&t), Err(DmarError::BadStructure { offset: 48 }));
        // A structure running past the end.
        let mut s = drhd(0, 0x1000, &[]);
        s[2] = 200;
        assert_eq!(
            parse(&table(&[s])),
            Err(DmarError::BadStructure { offset: 48 })
        );
        // A scope with an odd path length, and a scope of length zero.
        let mut sc = scope(1, 0, &[(3, 0)]);
        sc[1] = 7;
        sc.push(0);
        assert_eq!(
            parse(&table(&[drhd(0, 0x1000, &[sc])])),
            Err(DmarError::BadScope { offset: 48 + 16 })
        );
        let sc = vec![1, 0, 0, 0, 0, 0];
        assert_eq!(
            parse(&table(&[drhd(0, 0x1000, &[sc])])),
            Err(DmarError::BadScope { offset: 48 + 16 })
        );
        // Unknown structure types are skipped.
        let t = table(&[vec![7, 0, 8, 0, 1, 2, 3, 4], drhd(1, 0x1000, &[])]);
        assert_eq!(parse(&t).unwrap().units.len(), 1);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let good = table(&[drhd(0, 0x1000, &[scope(1, 0, &[(1, 0), (3, 0)])])]);
        for n in 0..good.len() {
            let mut t = good[..n].to_vec();
            if t.len() >= 10 {
                t[4..8].copy_from_slice(&(n as u32).to_le_bytes());
                t[9] = 0;
                let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
                t[9] = 0u8.wrapping_sub(sum);
            }
            // A header alone is a valid, empty table; any cut inside a structure is refused.
            assert_eq!(parse(&t).is_err(), n != 48, "length {n}");
        }
    }
}

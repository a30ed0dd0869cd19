//! ACPI discovery: RSDP (from the PVH start info, or the BIOS area) -> XSDT/RSDT -> DMAR
//! (Intel VT-d) or IVRS (AMD-Vi), with the `acpi` crate reading and checksumming the tables
//! through the identity mapping.

use core::ptr::NonNull;

use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};

use crate::dmar::{self, Dmar, DmarError};
use crate::ivrs::{self, Ivrs, IvrsError};

/// Maps ACPI tables by identity: physical address = virtual address.
#[derive(Clone, Copy, Debug)]
struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        // The acpi crate only asks for addresses it read from validated tables (or the one the
        // caller vouched for); physical 0 would be a corrupt table.
        let ptr = NonNull::new(pa as *mut T).expect("ACPI table at physical address 0");
        // SAFETY: the low 4 GiB, where firmware places ACPI tables, are identity mapped.
        unsafe { PhysicalMapping::new(pa, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The fixed part of the DMAR table (VT-d 3.4, section 8.1).
#[repr(C, packed)]
struct DmarHeader {
    header: SdtHeader,
    host_address_width: u8,
    flags: u8,
    reserved: [u8; 10],
}

// SAFETY: DmarHeader starts with the SDT header, and its signature is DMAR.
unsafe impl AcpiTable for DmarHeader {
    const SIGNATURE: Signature = Signature::DMAR;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

/// The fixed part of the IVRS table (AMD IOMMU spec rev 3.11, 5.2.1, Table 85): IVinfo and 8
/// reserved bytes.
#[repr(C, packed)]
struct IvrsHeader {
    header: SdtHeader,
    iv_info: u32,
    reserved: [u8; 8],
}

// SAFETY: IvrsHeader starts with the SDT header, and its signature is IVRS.
unsafe impl AcpiTable for IvrsHeader {
    const SIGNATURE: Signature = Signature::IVRS;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

/// Why the DMAR or IVRS table could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum AcpiError {
    /// No valid RSDP (at the given address, or in the BIOS area).
    NoRsdp,
    /// The RSDT/XSDT could not be read.
    BadRootTable,
    /// There is no (valid) DMAR table.
    NoDmar,
    /// The DMAR table is malformed.
    Dmar(DmarError),
    /// There is no (valid) IVRS table.
    NoIvrs,
    /// The IVRS table is malformed.
    Ivrs(IvrsError),
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::NoRsdp => f.write_str(
                "no valid ACPI RSDP (from the boot protocol or in the BIOS area): boot with \
                 firmware that provides ACPI",
            ),
            AcpiError::BadRootTable => f.write_str("the ACPI RSDT/XSDT cannot be read"),
            AcpiError::NoDmar => f.write_str(
                "no valid ACPI DMAR table: the machine has no VT-d unit (QEMU: -device \
                 intel-iommu)",
            ),
            AcpiError::Dmar(e) => write!(f, "malformed DMAR table: {e}"),
            AcpiError::NoIvrs => f.write_str(
                "no valid ACPI IVRS table: the machine has no AMD-Vi unit (QEMU: -device \
                 amd-iommu)",
            ),
            AcpiError::Ivrs(e) => write!(f, "malformed IVRS table: {e}"),
        }
    }
}

impl core::error::Error for AcpiError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            AcpiError::Dmar(e) => Some(e),
            AcpiError::Ivrs(e) => Some(e),
            _ => None,
        }
    }
}

/// Which IOMMU description tables the firmware provides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, defmt::Format)]
pub struct IommuTables {
    /// An Intel VT-d DMAR table.
    pub dmar: bool,
    /// An AMD-Vi IVRS table.
    pub ivrs: bool,
}

/// Which of DMAR and IVRS the firmware provides (for telling the user which image fits the
/// machine); none when the ACPI tables cannot be read.
pub fn iommu_tables(rsdp: Option<u64>) -> IommuTables {
    match root_tables(rsdp) {
        Ok(t) => IommuTables {
            dmar: t.find_table::<DmarHeader>().is_ok(),
            ivrs: t.find_table::<IvrsHeader>().is_ok(),
        },
        Err(_) => IommuTables::default(),
    }
}

/// Finds and parses the IVRS table. `rsdp` as for [`find_dmar`].
pub fn find_ivrs(rsdp: Option<u64>) -> Result<Ivrs, AcpiError> {
    let tables = root_tables(rsdp)?;
    let mapping = tables
        .find_table::<IvrsHeader>()
        .map_err(|_| AcpiError::NoIvrs)?;
    // SAFETY: as in `find_dmar`: the validated table's bytes, identity mapped, never written.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            mapping.virtual_start().as_ptr() as *const u8,
            mapping.region_length(),
        )
    };
    ivrs::parse(bytes).map_err(AcpiError::Ivrs)
}

/// The RSDT/XSDT, from the boot protocol's RSDP or the BIOS area.
fn root_tables(rsdp: Option<u64>) -> Result<AcpiTables<Identity>, AcpiError> {
    match rsdp {
        // SAFETY: the boot protocol's RSDP address, in identity-mapped low memory.
        Some(pa) if pa != 0 => unsafe { AcpiTables::from_rsdp(Identity, pa as usize) },
        // SAFETY: the BIOS area (EBDA, 0xe0000..0x100000) is identity mapped.
        _ => unsafe { AcpiTables::search_for_rsdp_bios(Identity) },
    }
    .map_err(|e| match e {
        acpi::AcpiError::NoValidRsdp
        | acpi::AcpiError::RsdpIncorrectSignature
        | acpi::AcpiError::RsdpInvalidOemId
        | acpi::AcpiError::RsdpInvalidChecksum => AcpiError::NoRsdp,
        _ => AcpiError::BadRootTable,
    })
}

/// Finds and parses the DMAR table. `rsdp` is the RSDP's physical address from the boot
/// protocol, if it gave one; otherwise the BIOS area is searched.
pub fn find_dmar(rsdp: Option<u64>) -> Result<Dmar, AcpiError> {
    let tables = root_tables(rsdp)?;
    let mapping = tables
        .find_table::<DmarHeader>()
        .map_err(|_| AcpiError::NoDmar)?;
    // SAFETY: `find_table` validated the table, so `region_length` (its length field) bytes at
    // its identity-mapped address are the table; firmware tables are never written.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            mapping.virtual_start().as_ptr() as *const u8,
            mapping.region_length(),
        )
    };
    dmar::parse(bytes).map_err(AcpiError::Dmar)
}

//! The trait every vendor backend implements. The server is written against this trait only.
//!
//! A backend drives all units of one kind (e.g. every VT-d DRHD of a machine). The control
//! path (attach, block, faults) and the data path (invalidate a gather) are kept apart; page
//! tables themselves are built by [`crate::pagetable`], never by a backend.

use crate::mem::{FrameAlloc, PhysAddr};
use crate::pagetable::{Format, Gather, LeafSizes};

/// Index of a unit within one backend (0-based).
pub type UnitIndex = usize;

/// What a unit can do, read from its capability registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// Input (IOVA) address width in bits that the page tables are built for.
    pub addr_width: u32,
    /// Output (physical) address width in bits.
    pub phys_width: u32,
    /// Leaf sizes the unit supports (always including 4 KiB).
    pub leaf_sizes: LeafSizes,
    /// The unit may cache non-present entries (VT-d caching mode): maps must be invalidated too.
    pub caches_not_present: bool,
    /// The unit allows a live block to be replaced by a table without break-before-make.
    pub split_live_blocks: bool,
    /// Table walks snoop CPU caches. When false, table writes need
    /// [`crate::PhysMem::sync_for_device`].
    pub coherent_walk: bool,
    /// Domain tags (VT-d domain ids, ASIDs, ...) usable by the server: tags `1..=max_tag`.
    pub max_tag: u16,
}

#[cfg(feature = "defmt")]
impl defmt::Format for UnitInfo {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "UnitInfo {{ addr_width: {=u32}, phys_width: {=u32}, leaf_sizes: {=u64:#x}, \
             caches_not_present: {=bool}, split_live_blocks: {=bool}, coherent_walk: {=bool}, \
             max_tag: {=u16} }}",
            self.addr_width,
            self.phys_width,
            self.leaf_sizes.0,
            self.caches_not_present,
            self.split_live_blocks,
            self.coherent_walk,
            self.max_tag
        )
    }
}

/// What a device is attached to: a domain's hardware tag and root table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Hardware domain tag (VT-d DID, SMMU ASID, AMD DomainID, RISC-V PSCID/GSCID), `>= 1`.
    pub tag: u16,
    /// Physical address of the root table built by [`crate::pagetable::PageTable`].
    pub root: PhysAddr,
    /// Number of levels of that table.
    pub levels: u8,
    /// Input address width the table was built for.
    pub addr_width: u32,
}

#[cfg(feature = "defmt")]
impl defmt::Format for DomainConfig {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "DomainConfig {{ tag: {=u16}, root: {=u64:#x}, levels: {=u8}, addr_width: {=u32} }}",
            self.tag,
            self.root,
            self.levels,
            self.addr_width
        )
    }
}

/// What kind of failure a backend met. The server decides on the kind only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bounded wait expired (register handshake, queue completion).
    Timeout,
    /// The unit reported an error (e.g. an illegal command) or is in a bad state.
    Hardware,
    /// A frame for a unit structure (context table, stream table level) could not be allocated.
    NoFrame,
    /// The device id or unit index is outside what the unit supports.
    BadDevice,
    /// The unit cannot do what was asked.
    Unsupported,
    /// Anything else.
    Other,
}

impl core::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ErrorKind::Timeout => "the unit did not answer in bounded time",
            ErrorKind::Hardware => "the unit reported an error or is in a bad state",
            ErrorKind::NoFrame => "no frame for a unit structure: give the frame pool more",
            ErrorKind::BadDevice => "device id or unit index outside what the unit supports",
            ErrorKind::Unsupported => "the unit cannot do this",
            ErrorKind::Other => "other backend failure",
        })
    }
}

/// A backend error: concrete per backend (with a message a person can act on), mapped to one
/// shared [`ErrorKind`] on which the server decides.
pub trait BackendError: core::error::Error {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
}

/// How a unit signals that it has fault records or an error pending (its fault / event /
/// error interrupt), as the platform provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultInterrupt {
    /// A message-signalled interrupt: the unit writes `data` (32 bits) to `address` (VT-d
    /// FEDATA/FEADDR, AMD-Vi MSI capability, RISC-V IOMMU MSI configuration table, SMMUv3
    /// `*_IRQ_CFG0..2`).
    Msi {
        /// The address the unit writes to (on x86, the local APIC's 0xFEEx_xxxx window).
        address: u64,
        /// The 32-bit value it writes.
        data: u32,
    },
    /// The unit's wired interrupt lines, routed by the platform (e.g. the SMMUv3 event queue
    /// and GERROR SPIs of a GIC, RISC-V IOMMU wires to a PLIC/APLIC).
    Wired,
}

#[cfg(feature = "defmt")]
impl defmt::Format for FaultInterrupt {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            FaultInterrupt::Msi { address, data } => {
                defmt::write!(f, "MSI {=u64:#x} <- {=u32:#x}", address, data)
            }
            FaultInterrupt::Wired => defmt::write!(f, "wired"),
        }
    }
}

/// Why a DMA was refused, as recorded by the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FaultReason {
    /// No translation for the address (not-present entry, or a blocked device).
    NotPresent,
    /// A translation exists but does not allow the access.
    Permission,
    /// The address is beyond the domain's address width.
    AddressSize,
    /// The device is not attached / blocked by configuration (context or stream entry).
    Blocked,
    /// Any other reason; the value is the vendor's raw reason code.
    Other(u16),
}

/// One fault record drained from a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// The unit that recorded it.
    pub unit: UnitIndex,
    /// The requester id / stream id / device id of the faulting device.
    pub device: u32,
    /// The faulting IOVA (page-aligned where the unit reports only the page).
    pub iova: u64,
    /// Whether the access was a write.
    pub write: bool,
    /// Why it faulted.
    pub reason: FaultReason,
}

#[cfg(feature = "defmt")]
impl defmt::Format for FaultRecord {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "unit {=usize}, device {=u32:#06x}, iova {=u64:#x}, {=str}, {}",
            self.unit,
            self.device,
            self.iova,
            if self.write { "write" } else { "read" },
            self.reason
        )
    }
}

/// A backend driving all units of one vendor kind.
pub trait Backend {
    /// The page-table format the units walk.
    type Format: Format;
    /// The backend's concrete error.
    type Error: BackendError;

    /// How many units this backend drives.
    fn unit_count(&self) -> usize;

    /// What unit `unit` can do. Panics never; an out-of-range index is a server bug, and the
    /// backend answers with the first unit's info.
    fn unit_info(&self, unit: UnitIndex) -> UnitInfo;

    /// Allocates from `alloc` every structure shared between domains that `device` on `unit`
    /// needs before it can be attached (e.g. a VT-d context table for its bus, an SMMUv3
    /// level-2 stream table for its StreamID span), leaving the device blocked. The server
    /// calls it once per configured device id at start, so that [`Backend::attach`] then
    /// allocates only per-domain structures, which the server charges to the domain's owner
    /// (and gets back through [`Backend::release_tag`]). Idempotent. The default prepares
    /// nothing (backends whose shared structures are all allocated at bring-up).
    fn prepare(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
    ) -> Result<(), Self::Error> {
        let _ = (alloc, unit, device);
        Ok(())
    }

    /// Points `device` on `unit` at `domain`'s tables, replacing any previous attachment with a
    /// single entry update (never a window of passthrough), invalidates the unit's configuration
    /// caches for the device and waits for that to complete. May allocate per-domain unit
    /// structures (e.g. an SMMUv3 context descriptor) from `alloc`, and shared ones that
    /// [`Backend::prepare`] was not asked for.
    ///
    /// On failure the device may be blocked, or attached to `domain` (the entry written but
    /// its invalidation not known to have completed), or still attached as before the call;
    /// never passthrough, and never attached to anything else. The caller treats it as live
    /// in every domain it may reach and recovers with [`Backend::block`].
    fn attach(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), Self::Error>;

    /// Blocks `device` on `unit`: its DMA faults from the return of this call on. The entry is
    /// made blocking, and the unit's configuration caches for the device (and the IOTLB of the
    /// domain the entry named, where the entry still tells it) are invalidated and the
    /// invalidation completed.
    ///
    /// Idempotent and never short-cut: a call for a device whose entry already reads as
    /// blocked still invalidates the device's configuration caches and waits, because an
    /// earlier call may have cleared the entry and then failed before the unit dropped its
    /// cached copy. (The IOTLB of a domain the entry no longer names is the caller's to
    /// invalidate, with [`Backend::invalidate_all`].) On failure the device must be treated as
    /// still reaching whatever it could reach before.
    fn block(&mut self, unit: UnitIndex, device: u32) -> Result<(), Self::Error>;

    /// Invalidates everything `gather` recorded for domain `tag` on `unit` (leaf entries and,
    /// when [`Gather::tables_removed`], paging-structure caches) and waits for completion. An
    /// empty gather needs no invalidation.
    fn invalidate(&mut self, unit: UnitIndex, tag: u16, gather: &Gather)
    -> Result<(), Self::Error>;

    /// Invalidates every cached translation of domain `tag` on `unit` and waits (used when a
    /// domain is destroyed, before its tables are freed).
    fn invalidate_all(&mut self, unit: UnitIndex, tag: u16) -> Result<(), Self::Error>;

    /// Releases what `unit` holds for domain `tag` (e.g. an SMMUv3 context descriptor),
    /// returning its frames to `alloc`, which must be the allocator [`Backend::attach`] was
    /// given for this unit. Called when the domain is destroyed, for every unit one of its
    /// devices was ever attached to: after every device of the domain was blocked and
    /// [`Backend::invalidate_all`] for the tag completed on the unit, before the domain's
    /// tables are freed and before the tag is reused. A unit holding nothing for `tag`, or a
    /// structure still in use by some device, is left as it is. On failure the tag must not
    /// be reused until a later call succeeds. The default does nothing (backends that keep
    /// no per-domain unit structures).
    fn release_tag(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        tag: u16,
    ) -> Result<(), Self::Error> {
        let _ = (alloc, unit, tag);
        Ok(())
    }

    /// Programs and unmasks `unit`'s fault interrupt (fault records pending, event or fault
    /// queue overflow, command-queue or global errors) to be signalled as `irq`. After that
    /// the platform calls the server's `service_faults` from its interrupt path;
    /// [`Backend::drain_faults`] acknowledges what it drains, and keeps draining until the
    /// unit shows nothing pending, so the next record raises a new interrupt (units signal a
    /// change: nothing pending to something pending). Records already pending when this is
    /// called may raise nothing: the platform drains once after enabling. A unit that cannot
    /// signal `irq` answers with an error of kind [`ErrorKind::Unsupported`] and changes
    /// nothing.
    fn enable_fault_interrupt(
        &mut self,
        unit: UnitIndex,
        irq: FaultInterrupt,
    ) -> Result<(), Self::Error>;

    /// Drains the unit's pending fault records into `sink`. Returns whether the unit lost
    /// records (hardware overflow) since the last drain.
    fn drain_faults(
        &mut self,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, Self::Error>;
}

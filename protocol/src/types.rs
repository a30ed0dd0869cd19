//! Value types carried inside messages: handles, permissions, segments, fault records and the
//! pieces of the `Info` reply; and the address and length newtypes of the client API.

use core::fmt;
use core::ops::{Add, BitOr};
use serde::{Deserialize, Serialize};

use crate::Error;

/// A domain (one I/O address space) of the calling client.
///
/// A small opaque integer handed out by `CreateDomain`, meaningful only to the client that
/// created it: the server resolves it in the caller's own table, whose identity comes from the
/// IPC mechanism, never from the message. Wire: postcard varint `u32`.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct DomainHandle(pub u32);

/// A device (a PCI requester ID, stream ID, ...) the calling client may attach.
///
/// A small opaque integer scoped to the calling client; the system configuration tells each
/// client which handles name its devices. Wire: postcard varint `u32`.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct DeviceHandle(pub u32);

/// Defines a `u64` newtype of the client API: `Debug` (`Iova(0x1000)`) and `defmt::Format`
/// (`0x1000`) in hex.
macro_rules! u64_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{=u64:#x}", self.0)
            }
        }
    };
}

u64_newtype!(
    /// An I/O virtual address: where a device's DMA lands in a domain.
    ///
    /// The client API takes addresses and lengths as distinct types, so an IOVA, a physical
    /// address and a length cannot be passed in each other's place:
    ///
    /// ```compile_fail
    /// # use iommu_protocol::{ByteLen, DomainHandle, Iova, Perms, PhysAddr, client::*};
    /// # fn f<T: Transport>(c: &mut Client<T>) -> Result<(), ClientError> {
    /// let (iova, phys) = (Iova(0x1000), PhysAddr(0x8000_0000));
    /// c.map(DomainHandle(1), phys, iova, ByteLen(0x1000), Perms::RW)?; // swapped: no build
    /// # Ok(()) }
    /// ```
    Iova
);
u64_newtype!(
    /// A physical (bus) address of memory a client was granted.
    PhysAddr
);
u64_newtype!(
    /// A length in bytes.
    ByteLen
);
u64_newtype!(
    /// The alignment `MapAnywhere` must give the IOVA it picks: 0 or a power of two; values
    /// below 4096 (including 0, [`Align::PAGE`]'s equivalent) mean 4096.
    Align
);

impl Align {
    /// 4 KiB, the smallest alignment (what 0 and anything below 4096 also mean).
    pub const PAGE: Align = Align(4096);
}

impl Add<ByteLen> for Iova {
    type Output = Iova;
    /// The IOVA `len` bytes further on (wrapping: the server refuses ranges that wrap).
    fn add(self, len: ByteLen) -> Iova {
        Iova(self.0.wrapping_add(len.0))
    }
}

impl Add<ByteLen> for PhysAddr {
    type Output = PhysAddr;
    /// The physical address `len` bytes further on (wrapping: the server refuses ranges that
    /// wrap).
    fn add(self, len: ByteLen) -> PhysAddr {
        PhysAddr(self.0.wrapping_add(len.0))
    }
}

impl Add for ByteLen {
    type Output = ByteLen;
    /// The sum of two lengths (wrapping: the server refuses ranges that wrap).
    fn add(self, other: ByteLen) -> ByteLen {
        ByteLen(self.0.wrapping_add(other.0))
    }
}

/// Access permissions of a mapping: bit 0 read (device may read memory), bit 1 write (device
/// may write memory).
///
/// Only these two bits exist: decoding a byte with any other bit set is
/// [`Error::BadMessage`]. The empty set ([`Perms::NONE`]) is a valid wire value but useless;
/// the server refuses it with [`Error::InvalidArgument`]. Wire: one raw byte (postcard `u8`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Perms(u8);

impl Perms {
    /// `"NONE"`, `"R"`, `"W"` or `"RW"` (any other bits cannot be constructed).
    const fn name(self) -> &'static str {
        match self.0 {
            0 => "NONE",
            1 => "R",
            2 => "W",
            _ => "RW",
        }
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perms({})", self.name())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Perms {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=str}", self.name())
    }
}

impl Perms {
    /// No access (refused by the server with [`Error::InvalidArgument`]).
    pub const NONE: Perms = Perms(0);
    /// Device may read.
    pub const READ: Perms = Perms(1 << 0);
    /// Device may write.
    pub const WRITE: Perms = Perms(1 << 1);
    /// Device may read and write.
    pub const RW: Perms = Perms(Self::READ.0 | Self::WRITE.0);

    /// The permissions with these bits, or `None` if a bit other than 0 and 1 is set.
    pub const fn from_bits(bits: u8) -> Option<Perms> {
        if bits & !Self::RW.0 == 0 {
            Some(Perms(bits))
        } else {
            None
        }
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether the device may read.
    pub const fn read(self) -> bool {
        self.0 & Self::READ.0 != 0
    }

    /// Whether the device may write.
    pub const fn write(self) -> bool {
        self.0 & Self::WRITE.0 != 0
    }

    /// Whether no access at all is granted.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every permission in `other` is also in `self`.
    pub const fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Perms {
    type Output = Perms;
    fn bitor(self, rhs: Perms) -> Perms {
        Perms(self.0 | rhs.0)
    }
}

impl TryFrom<u8> for Perms {
    type Error = Error;
    fn try_from(bits: u8) -> Result<Perms, Error> {
        Perms::from_bits(bits).ok_or(Error::BadMessage)
    }
}

impl From<Perms> for u8 {
    fn from(perms: Perms) -> u8 {
        perms.0
    }
}

/// One physically contiguous piece of a `MapSg` request.
///
/// Wire: `phys`, `len` as postcard varint `u64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Segment {
    /// Physical start address, a multiple of 4 KiB.
    pub phys: u64,
    /// Length in bytes, a nonzero multiple of 4 KiB.
    pub len: u64,
}

#[cfg(feature = "defmt")]
impl defmt::Format for Segment {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u64:#x}+{=u64:#x}", self.phys, self.len)
    }
}

/// Why the IOMMU blocked a DMA access.
///
/// Wire: postcard varint variant index (declaration order, append-only). `#[non_exhaustive]`:
/// a later protocol version may add reasons, so a `match` needs a wildcard arm.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FaultReason {
    /// No mapping at the IOVA.
    NotPresent,
    /// A mapping exists but does not allow the access (e.g. a write to a read-only page).
    Permission,
    /// The IOVA is wider than the domain's address width.
    AddressSize,
    /// The device is not attached to any domain: all its DMA is blocked.
    Blocked,
    /// Any other reason the hardware reported.
    Other,
}

/// One DMA fault of one of the calling client's devices.
///
/// Wire: `device` (varint `u32`), `iova` (varint `u64`), `write` (one byte, 0 or 1), `reason`
/// (varint variant index).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The faulting device.
    pub device: DeviceHandle,
    /// The faulting IOVA, as far as the hardware reports it (may be page-granular).
    pub iova: u64,
    /// Whether the access was a write (`false`: a read).
    pub write: bool,
    /// Why the access was blocked.
    pub reason: FaultReason,
}

#[cfg(feature = "defmt")]
impl defmt::Format for FaultRecord {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "device {=u32}, iova {=u64:#x}, {=str}, {}",
            self.device.0,
            self.iova,
            if self.write { "write" } else { "read" },
            self.reason
        )
    }
}

/// An inclusive IOVA range `[first, last]`.
///
/// Wire: `first`, `last` as varint `u64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct IovaRange {
    /// First usable IOVA (a multiple of 4 KiB).
    pub first: u64,
    /// Last usable IOVA, inclusive (one below a multiple of 4 KiB).
    pub last: u64,
}

#[cfg(feature = "defmt")]
impl defmt::Format for IovaRange {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u64:#x}..={=u64:#x}", self.first, self.last)
    }
}

/// The address space one kind of domain offers.
///
/// Wire: `address_width` (one byte), `ranges` (varint length, then each range).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct DomainKind {
    /// Number of IOVA bits a domain of this kind translates (e.g. 39, 48, 57).
    pub address_width: u8,
    /// The IOVA ranges usable for mappings, ascending and disjoint. Reserved windows (e.g. the
    /// x86 MSI window `0xFEE0_0000..=0xFEEF_FFFF`) are left out.
    pub ranges: heapless::Vec<IovaRange, { crate::MAX_IOVA_RANGES }>,
}

/// Resource limits that apply to the calling client.
///
/// Wire: each field a varint of its type, in declaration order.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Most domains this client may have at once.
    pub max_domains: u32,
    /// Most page-table frames (4 KiB each) this client's domains may use together.
    pub max_table_frames: u32,
    /// Most segments the server accepts in one `MapSg` (at most
    /// [`MAX_SG_SEGMENTS`](crate::MAX_SG_SEGMENTS)).
    pub max_sg_segments: u16,
    /// Most fault records in one `Faults` reply (at most
    /// [`MAX_FAULTS_PER_REPLY`](crate::MAX_FAULTS_PER_REPLY)).
    pub max_faults_per_reply: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_bits() {
        assert_eq!(Perms::READ.bits(), 1);
        assert_eq!(Perms::WRITE.bits(), 2);
        assert_eq!(Perms::RW, Perms::READ | Perms::WRITE);
        assert!(Perms::RW.read() && Perms::RW.write());
        assert!(Perms::READ.read() && !Perms::READ.write());
        assert!(!Perms::WRITE.read() && Perms::WRITE.write());
        assert!(Perms::NONE.is_empty() && !Perms::READ.is_empty());
        assert!(Perms::RW.contains(Perms::READ) && !Perms::READ.contains(Perms::RW));
    }

    #[test]
    fn perms_from_bits_rejects_unknown_bits() {
        for bits in 0..=u8::MAX {
            let ok = bits < 4;
            assert_eq!(Perms::from_bits(bits).is_some(), ok, "{bits}");
            assert_eq!(Perms::try_from(bits).is_ok(), ok, "{bits}");
        }
        assert_eq!(Perms::try_from(4), Err(Error::BadMessage));
        assert_eq!(u8::from(Perms::RW), 3);
    }
}

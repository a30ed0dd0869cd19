//! The two message enums: [`Request`] (client to server) and [`Reply`] (server to client).
//!
//! Wire form (postcard): a varint variant index (the declaration order below, append-only),
//! then the fields in declaration order. The specification, field by field, is in
//! `protocol/README.md`.

use serde::{Deserialize, Serialize};

use crate::{
    DeviceHandle, DomainHandle, DomainKind, Error, FaultRecord, Limits, MAX_DOMAIN_KINDS,
    MAX_FAULTS_PER_REPLY, MAX_SG_SEGMENTS, Perms, Segment,
};

/// A request from a client to the server.
///
/// Addresses and lengths are bytes and must be multiples of 4 KiB unless a field says
/// otherwise. The caller never splits a range by page size: page sizes are the server's
/// business. Every request that fails changes nothing.
///
/// `#[non_exhaustive]`: requests are append-only (a later protocol version adds variants with
/// the next tag), so a `match` outside this crate needs a wildcard arm; a server answers a
/// request it does not implement with [`Error::Unsupported`].
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Tag 0. Negotiate the protocol version. `version` is the highest version the client
    /// speaks. Reply: [`Reply::Hello`] with the version used from now on.
    Hello {
        /// Highest protocol version the client speaks.
        version: u16,
    },
    /// Tag 1. Ask for the server's capabilities and the caller's limits. Reply: [`Reply::Info`].
    Info,
    /// Tag 2. Create an empty domain (nothing mapped, no device attached).
    /// Reply: [`Reply::DomainCreated`].
    CreateDomain,
    /// Tag 3. Destroy a domain with no device attached, unmapping everything in it and freeing
    /// its tables. Reply: [`Reply::Done`].
    DestroyDomain {
        /// The domain to destroy.
        domain: DomainHandle,
    },
    /// Tag 4. Make `device` translate through `domain`. Reply: [`Reply::Done`].
    Attach {
        /// The domain the device will use.
        domain: DomainHandle,
        /// The device.
        device: DeviceHandle,
    },
    /// Tag 5. Detach `device` from its domain: all its DMA is blocked afterwards.
    /// Reply: [`Reply::Done`].
    Detach {
        /// The device.
        device: DeviceHandle,
    },
    /// Tag 6. Map `[iova, iova + len)` to `[phys, phys + len)`. Reply: [`Reply::Done`].
    Map {
        /// The domain.
        domain: DomainHandle,
        /// First IOVA.
        iova: u64,
        /// First physical address.
        phys: u64,
        /// Length in bytes.
        len: u64,
        /// Access the device gets.
        perms: Perms,
    },
    /// Tag 7. Map one IOVA range starting at `iova` onto `segments`, back to back, atomically.
    /// Reply: [`Reply::Done`].
    MapSg {
        /// The domain.
        domain: DomainHandle,
        /// First IOVA; segment `i` starts at `iova` plus the lengths of segments `0..i`.
        iova: u64,
        /// Access the device gets, for every segment.
        perms: Perms,
        /// The physical pieces, in IOVA order.
        segments: heapless::Vec<Segment, MAX_SG_SEGMENTS>,
    },
    /// Tag 8. Map `[phys, phys + len)` at an IOVA the server picks. Reply: [`Reply::Mapped`].
    MapAnywhere {
        /// The domain.
        domain: DomainHandle,
        /// First physical address.
        phys: u64,
        /// Length in bytes.
        len: u64,
        /// Access the device gets.
        perms: Perms,
        /// Required IOVA alignment: 0 or a power of two; values below 4096 mean 4096.
        align: u64,
    },
    /// Tag 9. Unmap every mapped page in `[iova, iova + len)`. Reply: [`Reply::Unmapped`].
    Unmap {
        /// The domain.
        domain: DomainHandle,
        /// First IOVA.
        iova: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Tag 10. Translate one IOVA (any byte address). Reply: [`Reply::Translation`], or
    /// [`Error::NotMapped`] if nothing is mapped there.
    Query {
        /// The domain.
        domain: DomainHandle,
        /// The IOVA to translate; need not be aligned.
        iova: u64,
    },
    /// Tag 11. Fetch (and consume) pending fault records of the caller's devices.
    /// Reply: [`Reply::Faults`].
    Faults,
}

/// The server's answer to one [`Request`].
///
/// `#[non_exhaustive]`: replies are append-only, so a `match` outside this crate needs a
/// wildcard arm (the server never sends a variant newer than the negotiated version).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Tag 0. Answer to [`Request::Hello`].
    Hello {
        /// The version used for the rest of the session:
        /// `min(client's version, server's version)`.
        version: u16,
    },
    /// Tag 1. Answer to [`Request::Info`].
    Info(InfoReply),
    /// Tag 2. Answer to [`Request::CreateDomain`].
    DomainCreated {
        /// The new domain.
        domain: DomainHandle,
    },
    /// Tag 3. Success without a value: `DestroyDomain`, `Attach`, `Detach`, `Map`, `MapSg`.
    Done,
    /// Tag 4. Answer to [`Request::MapAnywhere`].
    Mapped {
        /// The IOVA the server chose.
        iova: u64,
    },
    /// Tag 5. Answer to [`Request::Unmap`].
    Unmapped {
        /// Bytes that were mapped in the range and are now unmapped (0 if none were).
        bytes: u64,
    },
    /// Tag 6. Answer to [`Request::Query`].
    Translation {
        /// Physical address of the queried byte (page base plus the IOVA's page offset).
        phys: u64,
        /// Permissions of the mapping.
        perms: Perms,
    },
    /// Tag 7. Answer to [`Request::Faults`].
    Faults {
        /// Oldest first. A full list means more records may be pending: ask again.
        records: heapless::Vec<FaultRecord, MAX_FAULTS_PER_REPLY>,
        /// Faults of the caller's devices dropped (queue overflow) since the previous
        /// `Faults` reply; saturates at `u32::MAX`.
        lost: u32,
    },
    /// Tag 8. The request failed and changed nothing (see [`Error`]).
    Error(Error),
}

/// Capabilities of the server and limits of the calling client.
///
/// Wire: `units` (varint `u32`), `page_sizes` (varint `u64`), `domain_kinds` (varint length,
/// then each kind), `limits`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InfoReply {
    /// Number of IOMMU units the server drives.
    pub units: u32,
    /// Bit `n` set: the server may use pages of `2^n` bytes. A hint only (e.g. to align
    /// buffers for fewer IOTLB misses); callers never split requests by page size.
    pub page_sizes: u64,
    /// Domain kinds, at least one. In protocol version 1 `CreateDomain` always makes a domain
    /// of the first kind, which the server picks so that it can be attached to a device behind
    /// any unit; the others describe what the hardware offers.
    pub domain_kinds: heapless::Vec<DomainKind, MAX_DOMAIN_KINDS>,
    /// The caller's limits.
    pub limits: Limits,
}

#[cfg(feature = "defmt")]
impl defmt::Format for InfoReply {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "InfoReply {{ units: {=u32}, page_sizes: {=u64:#x}, domain_kinds: {}, limits: {} }}",
            self.units,
            self.page_sizes,
            self.domain_kinds.as_slice(),
            self.limits
        )
    }
}

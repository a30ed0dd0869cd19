//! Typed client API over any request/reply transport.
//!
//! A [`Client`] encodes each request into a stack buffer of [`MAX_MESSAGE`] bytes, hands it to a
//! [`Transport`] (seL4 IPC, a Hubris `sys_send`, a channel in tests) and decodes the reply.
//! Transport failures ([`ClientError::Transport`]) and the server's refusals
//! ([`ClientError::Server`]) stay apart.
//!
//! Addresses and lengths have their own types ([`Iova`], [`PhysAddr`], [`ByteLen`], [`Align`]),
//! so arguments cannot be swapped without a compile error; replies with more than one value
//! come back as named structs ([`Translation`], [`Faults`]).
//!
//! ```
//! use iommu_protocol::client::{Client, ClientError, Transport};
//! use iommu_protocol::{
//!     ByteLen, DeviceHandle, DomainHandle, Error, Iova, Perms, PhysAddr, Reply, Request,
//!     TransportError, decode_request, encode_reply,
//! };
//!
//! /// A stand-in for the IPC call: answers like a server would.
//! struct Fake;
//!
//! impl Transport for Fake {
//!     fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
//!         let answer = match decode_request(request) {
//!             Ok(Request::Hello { version }) => Reply::Hello { version },
//!             Ok(Request::CreateDomain) => Reply::DomainCreated { domain: DomainHandle(1) },
//!             Ok(Request::Unmap { len, .. }) => Reply::Unmapped { bytes: len },
//!             Ok(Request::Query { .. }) => Reply::Error(Error::NotMapped),
//!             Ok(_) => Reply::Done,
//!             Err(e) => Reply::Error(e),
//!         };
//!         encode_reply(&answer, reply).map_err(|_| TransportError::ReplyTooLarge)
//!     }
//! }
//!
//! let mut iommu = Client::new(Fake);
//! assert_eq!(iommu.hello()?, 1);
//! let d = iommu.create_domain()?;
//! iommu.attach(d, DeviceHandle(0))?;
//! let (iova, len) = (Iova(0x10_0000), ByteLen(0x4_0000));
//! iommu.map(d, iova, PhysAddr(0x8000_0000), len, Perms::RW)?;
//! assert_eq!(iommu.unmap(d, iova, len)?, len);
//! assert_eq!(iommu.query(d, iova), Err(ClientError::Server(Error::NotMapped)));
//! # Ok::<(), ClientError>(())
//! ```

use core::fmt;

use crate::{
    Align, ByteLen, DeviceHandle, DomainHandle, Error, FaultRecord, InfoReply, Iova,
    MAX_FAULTS_PER_REPLY, MAX_MESSAGE, PROTOCOL_VERSION, Perms, PhysAddr, Reply, Request, Segment,
    TransportError, decode_reply, encode_request,
};

/// Carries one encoded request to the server and its encoded reply back.
pub trait Transport {
    /// Sends `request` (one encoded message) and waits for the reply, writing it to the start
    /// of `reply`. Returns the reply's length, which must be at most `reply.len()`.
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
        (**self).call(request, reply)
    }
}

/// Why a [`Client`] call failed.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ClientError {
    /// The transport failed; whether the server executed the request may be unknown.
    Transport(TransportError),
    /// The server refused the request and changed nothing.
    Server(Error),
    /// The reply did not decode, or decoded to a reply that does not answer this request.
    UnexpectedReply,
    /// `map_sg` was given more than [`MAX_SG_SEGMENTS`](crate::MAX_SG_SEGMENTS) segments;
    /// nothing was sent.
    TooManySegments,
}

impl From<TransportError> for ClientError {
    fn from(error: TransportError) -> Self {
        ClientError::Transport(error)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport(e) => write!(f, "transport: {e}"),
            ClientError::Server(e) => write!(f, "the server refused the request: {e}"),
            ClientError::UnexpectedReply => f.write_str(
                "the reply does not decode or does not answer the request (client and server \
                 disagree on the protocol, or the transport mixed up replies)",
            ),
            ClientError::TooManySegments => write!(
                f,
                "map_sg takes at most {} segments (MAX_SG_SEGMENTS); nothing was sent: split \
                 the request",
                crate::MAX_SG_SEGMENTS
            ),
        }
    }
}

impl core::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ClientError::Transport(e) => Some(e),
            ClientError::Server(e) => Some(e),
            ClientError::UnexpectedReply | ClientError::TooManySegments => None,
        }
    }
}

/// The fault records of one `Faults` reply.
pub type FaultRecords = heapless::Vec<FaultRecord, MAX_FAULTS_PER_REPLY>;

/// What [`Client::query`] answers: where one IOVA leads.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Translation {
    /// The physical address of the queried byte (page base plus the IOVA's page offset).
    pub phys: PhysAddr,
    /// The mapping's permissions.
    pub perms: Perms,
}

/// What [`Client::faults`] answers: this client's pending fault records.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Faults {
    /// Oldest first, consumed by the call. A full list means more may be pending: ask again.
    pub records: FaultRecords,
    /// Faults of this client's devices dropped (queue overflow) since the previous call,
    /// saturating at `u32::MAX`.
    pub lost: u32,
}

/// A typed client of the IOMMU server: one method per [`Request`].
///
/// It remembers the protocol version [`Client::hello`] negotiated ([`Client::version`]).
#[derive(Debug)]
pub struct Client<T: Transport> {
    transport: T,
    version: Option<u16>,
}

impl<T: Transport> Client<T> {
    /// A client that talks through `transport`. No message is sent: call [`Client::hello`]
    /// first to negotiate the version (until then the server assumes version 1).
    pub const fn new(transport: T) -> Self {
        Client {
            transport,
            version: None,
        }
    }

    /// The protocol version the last successful [`Client::hello`] negotiated; `None` before
    /// one succeeded (the server then speaks version 1).
    pub const fn version(&self) -> Option<u16> {
        self.version
    }

    /// The transport, e.g. to inspect a test transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.transport
    }

    /// Sends any request and returns the server's successful reply; a [`Reply::Error`] becomes
    /// [`ClientError::Server`].
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let mut req = [0u8; MAX_MESSAGE];
        // Every request fits in MAX_MESSAGE (tested), so this cannot fail; report it as the
        // server would rather than panic.
        let n = encode_request(request, &mut req).map_err(ClientError::Server)?;
        let mut rep = [0u8; MAX_MESSAGE];
        let m = self.transport.call(&req[..n], &mut rep)?;
        let bytes = rep
            .get(..m)
            .ok_or(ClientError::Transport(TransportError::ReplyTooLarge))?;
        match decode_reply(bytes) {
            Ok(Reply::Error(e)) => Err(ClientError::Server(e)),
            Ok(reply) => Ok(reply),
            Err(_) => Err(ClientError::UnexpectedReply),
        }
    }

    /// Negotiates the protocol version (offers [`PROTOCOL_VERSION`]); returns the version the
    /// server chose and remembers it ([`Client::version`]). A reply of 0 or above what was
    /// offered is [`ClientError::UnexpectedReply`]; on any error the remembered version stays
    /// as it was.
    pub fn hello(&mut self) -> Result<u16, ClientError> {
        match self.call(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Reply::Hello { version } if (1..=PROTOCOL_VERSION).contains(&version) => {
                self.version = Some(version);
                Ok(version)
            }
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// The server's capabilities and this client's limits.
    pub fn info(&mut self) -> Result<InfoReply, ClientError> {
        match self.call(&Request::Info)? {
            Reply::Info(info) => Ok(info),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Creates an empty domain.
    pub fn create_domain(&mut self) -> Result<DomainHandle, ClientError> {
        match self.call(&Request::CreateDomain)? {
            Reply::DomainCreated { domain } => Ok(domain),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Destroys a domain that has no device attached.
    pub fn destroy_domain(&mut self, domain: DomainHandle) -> Result<(), ClientError> {
        self.done(&Request::DestroyDomain { domain })
    }

    /// Attaches `device` to `domain`.
    pub fn attach(
        &mut self,
        domain: DomainHandle,
        device: DeviceHandle,
    ) -> Result<(), ClientError> {
        self.done(&Request::Attach { domain, device })
    }

    /// Detaches `device`; its DMA is blocked afterwards.
    pub fn detach(&mut self, device: DeviceHandle) -> Result<(), ClientError> {
        self.done(&Request::Detach { device })
    }

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` with `perms`.
    pub fn map(
        &mut self,
        domain: DomainHandle,
        iova: Iova,
        phys: PhysAddr,
        len: ByteLen,
        perms: Perms,
    ) -> Result<(), ClientError> {
        self.done(&Request::Map {
            domain,
            iova: iova.0,
            phys: phys.0,
            len: len.0,
            perms,
        })
    }

    /// Maps one IOVA range starting at `iova` onto `segments`, back to back, atomically.
    pub fn map_sg(
        &mut self,
        domain: DomainHandle,
        iova: Iova,
        perms: Perms,
        segments: &[Segment],
    ) -> Result<(), ClientError> {
        let segments =
            heapless::Vec::from_slice(segments).map_err(|()| ClientError::TooManySegments)?;
        self.done(&Request::MapSg {
            domain,
            iova: iova.0,
            perms,
            segments,
        })
    }

    /// Maps `[phys, phys + len)` with `perms` at an IOVA aligned to `align` that the server
    /// picks; returns that IOVA.
    pub fn map_anywhere(
        &mut self,
        domain: DomainHandle,
        phys: PhysAddr,
        len: ByteLen,
        perms: Perms,
        align: Align,
    ) -> Result<Iova, ClientError> {
        match self.call(&Request::MapAnywhere {
            domain,
            phys: phys.0,
            len: len.0,
            perms,
            align: align.0,
        })? {
            Reply::Mapped { iova } => Ok(Iova(iova)),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Unmaps every mapped page in `[iova, iova + len)`; returns how many bytes were mapped
    /// there (and are not any more). When it returns, no device of the domain can reach them.
    pub fn unmap(
        &mut self,
        domain: DomainHandle,
        iova: Iova,
        len: ByteLen,
    ) -> Result<ByteLen, ClientError> {
        match self.call(&Request::Unmap {
            domain,
            iova: iova.0,
            len: len.0,
        })? {
            Reply::Unmapped { bytes } => Ok(ByteLen(bytes)),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Translates `iova` (any byte address): the physical address of that byte and the
    /// mapping's permissions. Nothing mapped there is `ClientError::Server(Error::NotMapped)`.
    pub fn query(&mut self, domain: DomainHandle, iova: Iova) -> Result<Translation, ClientError> {
        match self.call(&Request::Query {
            domain,
            iova: iova.0,
        })? {
            Reply::Translation { phys, perms } => Ok(Translation {
                phys: PhysAddr(phys),
                perms,
            }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Takes pending fault records of this client's devices (oldest first) and the count of
    /// faults lost since the last call. A full list means more may be pending.
    pub fn faults(&mut self) -> Result<Faults, ClientError> {
        match self.call(&Request::Faults)? {
            Reply::Faults { records, lost } => Ok(Faults { records, lost }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    fn done(&mut self, request: &Request) -> Result<(), ClientError> {
        match self.call(request)? {
            Reply::Done => Ok(()),
            _ => Err(ClientError::UnexpectedReply),
        }
    }
}

//! Typed client API over any request/reply transport.
//!
//! A [`Client`] encodes each request into a stack buffer of [`MAX_MESSAGE`] bytes, hands it to a
//! [`Transport`] (seL4 IPC, a Hubris `sys_send`, a channel in tests) and decodes the reply.
//! Transport failures ([`ClientError::Transport`]) and the server's refusals
//! ([`ClientError::Server`]) stay apart.
//!
//! ```
//! use iommu_protocol::client::{Client, ClientError, Transport};
//! use iommu_protocol::{
//!     DeviceHandle, DomainHandle, Error, Perms, Reply, Request, TransportError, decode_request,
//!     encode_reply,
//! };
//!
//! /// A stand-in for the IPC call: answers like a server would.
//! struct Fake;
//!
//! impl Transport for Fake {
//!     fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
//!         let answer = match decode_request(request) {
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
//! let d = iommu.create_domain()?;
//! iommu.attach(d, DeviceHandle(0))?;
//! iommu.map(d, 0x10_0000, 0x8000_0000, 0x4_0000, Perms::RW)?;
//! assert_eq!(iommu.unmap(d, 0x10_0000, 0x4_0000)?, 0x4_0000);
//! assert_eq!(iommu.query(d, 0x10_0000), Err(ClientError::Server(Error::NotMapped)));
//! # Ok::<(), ClientError>(())
//! ```

use core::fmt;

use crate::{
    DeviceHandle, DomainHandle, Error, FaultRecord, InfoReply, MAX_FAULTS_PER_REPLY, MAX_MESSAGE,
    PROTOCOL_VERSION, Perms, Reply, Request, Segment, TransportError, decode_reply, encode_request,
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
            ClientError::Server(e) => write!(f, "server: {e}"),
            ClientError::UnexpectedReply => f.write_str("unexpected reply"),
            ClientError::TooManySegments => f.write_str("too many segments"),
        }
    }
}

impl core::error::Error for ClientError {}

/// The fault records of one `Faults` reply.
pub type FaultRecords = heapless::Vec<FaultRecord, MAX_FAULTS_PER_REPLY>;

/// A typed client of the IOMMU server: one method per [`Request`].
#[derive(Debug)]
pub struct Client<T: Transport> {
    transport: T,
}

impl<T: Transport> Client<T> {
    /// A client that talks through `transport`.
    pub const fn new(transport: T) -> Self {
        Client { transport }
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
    /// server chose. A reply of 0 or above what was offered is [`ClientError::UnexpectedReply`].
    pub fn hello(&mut self) -> Result<u16, ClientError> {
        match self.call(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Reply::Hello { version } if (1..=PROTOCOL_VERSION).contains(&version) => Ok(version),
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

    /// Maps `[iova, iova + len)` to `[phys, phys + len)`.
    pub fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), ClientError> {
        self.done(&Request::Map {
            domain,
            iova,
            phys,
            len,
            perms,
        })
    }

    /// Maps one IOVA range starting at `iova` onto `segments`, back to back.
    pub fn map_sg(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        perms: Perms,
        segments: &[Segment],
    ) -> Result<(), ClientError> {
        let segments =
            heapless::Vec::from_slice(segments).map_err(|()| ClientError::TooManySegments)?;
        self.done(&Request::MapSg {
            domain,
            iova,
            perms,
            segments,
        })
    }

    /// Maps `[phys, phys + len)` at an IOVA aligned to `align` (0 or a power of two; below
    /// 4096 means 4096) that the server picks; returns that IOVA.
    pub fn map_anywhere(
        &mut self,
        domain: DomainHandle,
        phys: u64,
        len: u64,
        perms: Perms,
        align: u64,
    ) -> Result<u64, ClientError> {
        match self.call(&Request::MapAnywhere {
            domain,
            phys,
            len,
            perms,
            align,
        })? {
            Reply::Mapped { iova } => Ok(iova),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Unmaps every mapped page in `[iova, iova + len)`; returns the bytes unmapped.
    pub fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Result<u64, ClientError> {
        match self.call(&Request::Unmap { domain, iova, len })? {
            Reply::Unmapped { bytes } => Ok(bytes),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Translates `iova`: the physical address of that byte and the mapping's permissions.
    /// Nothing mapped there is `ClientError::Server(Error::NotMapped)`.
    pub fn query(&mut self, domain: DomainHandle, iova: u64) -> Result<(u64, Perms), ClientError> {
        match self.call(&Request::Query { domain, iova })? {
            Reply::Translation { phys, perms } => Ok((phys, perms)),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Takes pending fault records of this client's devices (oldest first) and the count of
    /// faults lost since the last call. A full list means more may be pending.
    pub fn faults(&mut self) -> Result<(FaultRecords, u32), ClientError> {
        match self.call(&Request::Faults)? {
            Reply::Faults { records, lost } => Ok((records, lost)),
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

//! The server's entry points: one encoded request in, one encoded reply out; client exit;
//! fault servicing.

use iommu_hal::backend::{Backend, FaultReason as HalReason};
use iommu_hal::pagetable::{Format, Perms as HalPerms};
use iommu_hal::{FrameAlloc, PhysMem};
use iommu_protocol::{
    DeviceHandle, DomainHandle, DomainKind, Error, FaultReason, FaultRecord, HotRequest, InfoReply,
    Limits, MAX_FAULTS_PER_REPLY, MAX_SG_SEGMENTS, PROTOCOL_VERSION, Perms, Reply, Request,
    decode_hot_request, decode_request, encode_reply, is_hot_request,
};

use crate::config::ClientId;
use crate::faults::Notify;
use crate::server::{Fail, Server};

fn hal_perms(p: Perms) -> HalPerms {
    HalPerms {
        read: p.read(),
        write: p.write(),
    }
}

fn wire_perms(p: HalPerms) -> Perms {
    let mut w = Perms::NONE;
    if p.read {
        w = w | Perms::READ;
    }
    if p.write {
        w = w | Perms::WRITE;
    }
    w
}

fn wire_reason(r: HalReason) -> FaultReason {
    match r {
        HalReason::NotPresent => FaultReason::NotPresent,
        HalReason::Permission => FaultReason::Permission,
        HalReason::AddressSize => FaultReason::AddressSize,
        HalReason::Blocked => FaultReason::Blocked,
        HalReason::Other(_) => FaultReason::Other,
    }
}

impl<
    'a,
    B: Backend,
    M: PhysMem,
    A: FrameAlloc,
    N: Notify,
    const CLIENTS: usize,
    const DOMAINS: usize,
    const DEVICES: usize,
    const FAULTS: usize,
> Server<'a, B, M, A, N, CLIENTS, DOMAINS, DEVICES, FAULTS>
{
    /// Handles one request of `client` (the identity the platform's IPC gives: seL4 badge,
    /// Hubris task index; never read from the message) and writes the encoded reply into
    /// `reply`, returning its length.
    ///
    /// Always writes a valid reply: an error reply for anything wrong, `BadMessage` for bytes
    /// that do not decode, `NotPermitted` for a client not in the configuration. `reply` should
    /// hold [`iommu_protocol::MAX_MESSAGE`] bytes; if the reply does not fit, a `BadMessage`
    /// error reply is written instead if that fits, else nothing (0).
    pub fn handle(&mut self, client: ClientId, request: &[u8], reply: &mut [u8]) -> usize {
        // `Map` and `Unmap` skip `Request`, sized for `MapSg`, whose copies cost more than
        // their decoding.
        let answer = if is_hot_request(request) {
            self.answer(client, |s, ci| {
                s.execute_hot(ci, decode_hot_request(request)?)
            })
        } else {
            self.answer(client, |s, ci| s.execute(ci, decode_request(request)?))
        };
        match encode_reply(&answer, reply) {
            Ok(n) => n,
            Err(_) => encode_reply(&Reply::Error(Error::BadMessage), reply).unwrap_or(0),
        }
    }

    /// Handles one decoded request of the configured client `client`, returning the reply
    /// (a typed entry point for platforms that decode themselves, and for tests).
    pub fn handle_request(&mut self, client: ClientId, request: Request) -> Reply {
        self.answer(client, |s, ci| s.execute(ci, request))
    }

    /// Counts the request, checks the client, then (only for a configured client) runs `run`,
    /// which decodes the request and executes it; counts an error reply by its code.
    #[inline]
    fn answer(
        &mut self,
        client: ClientId,
        run: impl FnOnce(&mut Self, usize) -> Result<Reply, Error>,
    ) -> Reply {
        self.stats.requests += 1;
        let result = match self.client_index(client) {
            None => Err(Error::NotPermitted),
            Some(ci) => {
                self.retry_quarantined(ci);
                run(self, ci)
            }
        };
        result.unwrap_or_else(|e| {
            let i = (e.code() as usize).min(self.stats.errors.len() - 1);
            self.stats.errors[i] += 1;
            Reply::Error(e)
        })
    }

    /// [`Server::execute`] for the map/unmap hot path; the replies are small variants, built
    /// in place.
    #[inline]
    fn execute_hot(&mut self, ci: usize, req: HotRequest) -> Result<Reply, Fail> {
        match req {
            HotRequest::Map {
                domain,
                iova,
                phys,
                len,
                perms,
            } => self
                .op_map(ci, domain.0, iova, phys, len, hal_perms(perms))
                .map(|()| Reply::Done),
            HotRequest::Unmap { domain, iova, len } => self
                .op_unmap(ci, domain.0, iova, len)
                .map(|bytes| Reply::Unmapped { bytes }),
        }
    }

    fn execute(&mut self, ci: usize, req: Request) -> Result<Reply, Fail> {
        Ok(match req {
            Request::Hello { version } => {
                if version == 0 {
                    return Err(Fail::UnsupportedVersion);
                }
                Reply::Hello {
                    version: version.min(PROTOCOL_VERSION),
                }
            }
            Request::Info => Reply::Info(self.info(ci)),
            Request::CreateDomain => Reply::DomainCreated {
                domain: DomainHandle(self.op_create(ci)?),
            },
            Request::DestroyDomain { domain } => {
                self.op_destroy(ci, domain.0)?;
                Reply::Done
            }
            Request::Attach { domain, device } => {
                self.op_attach(ci, device.0, domain.0)?;
                Reply::Done
            }
            Request::Detach { device } => {
                self.op_detach(ci, device.0)?;
                Reply::Done
            }
            Request::Map {
                domain,
                iova,
                phys,
                len,
                perms,
            } => {
                self.op_map(ci, domain.0, iova, phys, len, hal_perms(perms))?;
                Reply::Done
            }
            Request::MapSg {
                domain,
                iova,
                perms,
                segments,
            } => {
                let mut segs: heapless::Vec<(u64, u64), MAX_SG_SEGMENTS> = heapless::Vec::new();
                for s in &segments {
                    // Capacities are equal: cannot fail.
                    let _ = segs.push((s.phys, s.len));
                }
                self.op_map_sg(ci, domain.0, iova, &segs, hal_perms(perms))?;
                Reply::Done
            }
            Request::MapAnywhere {
                domain,
                phys,
                len,
                perms,
                align,
            } => Reply::Mapped {
                iova: self.op_map_anywhere(ci, domain.0, phys, len, align, hal_perms(perms))?,
            },
            Request::Unmap { domain, iova, len } => Reply::Unmapped {
                bytes: self.op_unmap(ci, domain.0, iova, len)?,
            },
            Request::Query { domain, iova } => match self.op_query(ci, domain.0, iova)? {
                Some(t) => Reply::Translation {
                    phys: t.phys,
                    perms: wire_perms(t.perms),
                },
                None => return Err(Fail::NotMapped),
            },
            Request::Faults => {
                let q = &mut self.clients[ci].faults;
                let mut records = heapless::Vec::new();
                while records.len() < MAX_FAULTS_PER_REPLY {
                    let Some(f) = q.queue.pop_front() else { break };
                    let _ = records.push(FaultRecord {
                        device: DeviceHandle(f.device),
                        iova: f.iova,
                        write: f.write,
                        reason: wire_reason(f.reason),
                    });
                }
                let lost = core::mem::take(&mut q.lost);
                Reply::Faults { records, lost }
            }
            // A request of a newer protocol crate than this server implements.
            _ => return Err(Fail::Unsupported),
        })
    }

    /// What `Info` tells client `ci`: the units, the page sizes the tables may use, the one
    /// domain kind (every domain is built for the units' common address width) with its usable
    /// ranges, and the client's limits.
    fn info(&self, ci: usize) -> InfoReply {
        let tc = self.table_config;
        let levels = B::Format::levels_for(tc.addr_width).unwrap_or(0);
        let mut page_sizes = 0u64;
        for level in 0..levels {
            let size = 1u64 << (12 + 9 * level as u32);
            if B::Format::leaf_allowed(level) && tc.leaf_sizes.contains(size) {
                page_sizes |= size;
            }
        }
        let mut domain_kinds = heapless::Vec::new();
        let _ = domain_kinds.push(DomainKind {
            address_width: tc.addr_width as u8,
            ranges: self.ranges.clone(),
        });
        let cfg = &self.config.clients[ci];
        InfoReply {
            units: self.units as u32,
            page_sizes,
            domain_kinds,
            limits: Limits {
                max_domains: cfg.max_domains.min(self.usable_slots as u32),
                max_table_frames: cfg.max_table_frames,
                max_sg_segments: MAX_SG_SEGMENTS as u16,
                max_faults_per_reply: MAX_FAULTS_PER_REPLY.min(FAULTS) as u16,
            },
        }
    }

    /// The platform reports that `client` is gone (Hubris generation change, seL4 badge
    /// revoked): every domain of it is torn down (devices blocked, invalidated, tables freed,
    /// quota restored), its queued faults are dropped, and its handle numbering restarts.
    /// An unknown client is ignored.
    ///
    /// A domain whose teardown fails here is quarantined: its devices keep their state, and
    /// its tag, unit structures, table frames and domain count stay charged to the client
    /// until the teardown is retried successfully, before each later request of that client
    /// or once its devices are proven blocked ([`crate::Stats::quarantined_domains`],
    /// [`crate::Stats::reclaimed_domains`]). Everything else of the client starts afresh.
    pub fn client_exited(&mut self, client: ClientId) {
        if let Some(ci) = self.client_index(client) {
            self.exit(ci);
        }
    }

    /// Drains every unit's fault records and routes each to the client owning the faulting
    /// device, as that client's device handle. Call it from the unit's fault interrupt where
    /// the backend programs one ([`Backend::enable_fault_interrupt`]), otherwise before
    /// handling requests or periodically. Records of devices no client owns are counted and
    /// dropped. A full client queue counts
    /// the record as lost and reports the count with that client's next `Faults` reply. Calls
    /// [`Notify::notify`] once for each client that received records.
    pub fn service_faults(&mut self) {
        self.route_faults();
    }
}

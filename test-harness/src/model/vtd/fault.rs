//! Fault reasons, primary fault recording and the fault event (spec chapter 7 and 11.4.9,
//! fault reason encodings from the spec's appendix "Non-Recoverable Fault Reason Encodings",
//! cross-checked with QEMU's `VTD_FR_*`).

use super::VtdModel;
use super::regs::*;

/// Why a DMA request was not translated: the spec's non-recoverable fault reason encodings for
/// legacy-mode DMA remapping. The discriminant is the value recorded in FRCD.FR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FaultReason {
    /// 1h: the root entry used for the request has P = 0.
    RootNotPresent = 0x1,
    /// 2h: the context entry used for the request has P = 0.
    ContextNotPresent = 0x2,
    /// 3h: invalid programming of a context entry (unsupported AW or TT value).
    ContextInvalid = 0x3,
    /// 4h: the input address is above 2^X - 1, X = min(MGAW, AGAW of the context entry).
    AddressBeyondMgaw = 0x4,
    /// 5h: a write request found no write permission (includes not-present entries).
    Write = 0x5,
    /// 6h: a read request found no read permission (includes not-present entries).
    Read = 0x6,
    /// 7h: error accessing a second-level paging entry.
    PagingEntryAccess = 0x7,
    /// 8h: error accessing the root entry.
    RootTableAccess = 0x8,
    /// 9h: error accessing the context entry.
    ContextTableAccess = 0x9,
    /// Ah: non-zero reserved field in a present root entry.
    RootReserved = 0xa,
    /// Bh: non-zero reserved field in a present context entry.
    ContextReserved = 0xb,
    /// Ch: non-zero reserved field in a second-level paging entry with R or W set.
    PagingEntryReserved = 0xc,
    /// Dh: the request was blocked by the translation type (TT) of the context entry.
    TranslationTypeBlocked = 0xd,
}

impl FaultReason {
    /// The FR encoding.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// The reason whose FR encoding is `code`, if it is one of the legacy DMA remapping reasons.
    pub fn from_code(code: u8) -> Option<Self> {
        use FaultReason::*;
        Some(match code {
            0x1 => RootNotPresent,
            0x2 => ContextNotPresent,
            0x3 => ContextInvalid,
            0x4 => AddressBeyondMgaw,
            0x5 => Write,
            0x6 => Read,
            0x7 => PagingEntryAccess,
            0x8 => RootTableAccess,
            0x9 => ContextTableAccess,
            0xa => RootReserved,
            0xb => ContextReserved,
            0xc => PagingEntryReserved,
            0xd => TranslationTypeBlocked,
            _ => return None,
        })
    }
    /// The permission fault for a request of the given direction.
    pub fn permission(write: bool) -> Self {
        if write {
            FaultReason::Write
        } else {
            FaultReason::Read
        }
    }
}

/// A DMA request that faulted, as returned by the model's DMA entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VtdFault {
    /// Why.
    pub reason: FaultReason,
    /// The requester (bus 15:8, device 7:3, function 2:0).
    pub sid: u16,
    /// The faulting input address (byte address of the first byte that could not be reached).
    pub addr: u64,
    /// Whether the request was a write.
    pub write: bool,
    /// Whether a fault recording register was filled (false when FPD = 1, on overflow, or when
    /// the fault was collapsed into a pending one).
    pub recorded: bool,
}

/// A decoded fault recording register with F = 1 (spec 11.4.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// The register index (0 .. NFR).
    pub index: usize,
    /// FI: the page address of the faulted request.
    pub page: u64,
    /// SID.
    pub sid: u16,
    /// FR, the raw fault reason.
    pub reason: u8,
    /// T = 0: a write request.
    pub write: bool,
}

impl VtdModel {
    /// Whether any fault recording register holds a fault (the PPF summary).
    pub(super) fn ppf(&self) -> bool {
        self.frcd.iter().any(|r| r[1] & FRCD_F != 0)
    }

    /// FSTS as software reads it: the sticky bits, PPF computed from the F fields, and FRI.
    pub(super) fn fsts_value(&self) -> u32 {
        let mut v = self.fsts & (FSTS_W1C | (0xff << FSTS_FRI_SHIFT));
        if self.ppf() {
            v |= FSTS_PPF;
        }
        v
    }

    /// The FSTS bits that are interrupt conditions waiting for software.
    fn pending_conditions(&self) -> u32 {
        self.fsts_value()
            & (FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE | FSTS_APF | FSTS_AFO)
    }

    /// Generates a fault event after a new condition was set, unless an earlier condition is
    /// still pending (spec 7.3: one event until software services the pending ones).
    pub(super) fn fault_event(&mut self, pending_before: u32) {
        if pending_before != 0 {
            return;
        }
        self.fectl |= ECTL_IP;
        if self.fectl & ECTL_IM == 0 {
            self.send_fault_event();
        }
    }

    /// Sends the pending fault event: the interrupt message FEDATA written to FEUADDR:FEADDR
    /// (spec 7.3, 11.4.11 to 11.4.13), then IP clears. The message is an interrupt request
    /// that is never remapped in this model (interrupt remapping is not modelled), so its
    /// address must lie in the interrupt range 0xFEEx_xxxx with bits 1:0 clear (11.4.12);
    /// anything else is recorded as a violation (and still logged). FEUADDR (the upper 32 bits,
    /// an x2APIC destination) is meaningful only with ECAP.EIM.
    fn send_fault_event(&mut self) {
        self.fectl &= !ECTL_IP;
        self.stats.fault_interrupts += 1;
        let addr = (u64::from(self.feuaddr) << 32) | u64::from(self.feaddr);
        if addr & 0x3 != 0 || (addr as u32) >> 20 != 0xfee {
            self.violation(format!(
                "fault event sent to {addr:#x}, outside the interrupt address range 0xfeex_xxxx"
            ));
        }
        if addr >> 32 != 0 && self.cfg.ecap & ECAP_EIM == 0 {
            self.violation(format!(
                "fault event upper address {:#x} on a unit without extended interrupt mode",
                addr >> 32
            ));
        }
        self.fault_messages.push((addr, self.fedata));
    }

    /// Records a primary fault (spec 7.2.1). Returns whether a register was filled.
    pub(super) fn record_fault(
        &mut self,
        sid: u16,
        addr: u64,
        reason: FaultReason,
        write: bool,
    ) -> bool {
        let before = self.pending_conditions();
        if self.fsts & FSTS_PFO != 0 {
            self.stats.faults_dropped += 1;
            return false;
        }
        if self.cfg.collapse_faults
            && self
                .frcd
                .iter()
                .any(|r| r[1] & FRCD_F != 0 && r[1] as u16 == sid)
        {
            self.stats.faults_collapsed += 1;
            return false;
        }
        let idx = self.next_frcd;
        if self.frcd[idx][1] & FRCD_F != 0 {
            self.fsts |= FSTS_PFO;
            self.stats.faults_dropped += 1;
            self.fault_event(before);
            return false;
        }
        let mgaw_mask = if self.mgaw() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.mgaw()) - 1
        };
        let lo = addr & !0xfff & mgaw_mask;
        let mut hi = FRCD_F | (u64::from(reason.code()) << FRCD_FR_SHIFT) | u64::from(sid);
        if !write {
            hi |= FRCD_T;
        }
        let ppf_before = self.ppf();
        self.frcd[idx] = [lo, hi];
        if !ppf_before {
            self.fsts = (self.fsts & !(0xff << FSTS_FRI_SHIFT)) | ((idx as u32) << FSTS_FRI_SHIFT);
        }
        self.next_frcd = (idx + 1) % self.nfr();
        self.stats.faults_recorded += 1;
        self.fault_event(before);
        true
    }

    /// Software cleared F in fault recording register `n` (W1C).
    pub(super) fn clear_fault_record(&mut self, n: usize) {
        self.frcd[n][1] &= !FRCD_F;
        self.after_status_clear();
    }

    /// FSTS write: W1C of the sticky bits; PPF and FRI are read-only.
    pub(super) fn write_fsts(&mut self, v: u32) {
        let had_iqe = self.fsts & FSTS_IQE != 0;
        self.fsts &= !(v & FSTS_W1C);
        self.after_status_clear();
        if had_iqe && self.fsts & FSTS_IQE == 0 {
            // Hardware resumes fetching from IQH once software has cleared IQE.
            self.process_queue();
        }
    }

    /// FECTL write: only IM is writable; unmasking with IP set delivers the pending interrupt.
    pub(super) fn write_fectl(&mut self, v: u32) {
        self.fectl = (self.fectl & ECTL_IP) | (v & ECTL_IM);
        if self.fectl & ECTL_IM == 0 && self.fectl & ECTL_IP != 0 {
            self.send_fault_event();
        }
    }

    /// Every fault event message sent so far, oldest first: (address, data).
    pub fn fault_messages(&self) -> &[(u64, u32)] {
        &self.fault_messages
    }

    /// Whether a fault event is held pending (FECTL.IP).
    pub fn fault_event_pending(&self) -> bool {
        self.fectl & ECTL_IP != 0
    }

    /// Clears FECTL.IP once software has serviced every pending condition.
    fn after_status_clear(&mut self) {
        if self.pending_conditions() == 0 {
            self.fectl &= !ECTL_IP;
        }
    }

    /// The fault recording registers that hold a fault, in index order.
    pub fn fault_records(&self) -> Vec<FaultRecord> {
        self.frcd
            .iter()
            .enumerate()
            .filter(|(_, r)| r[1] & FRCD_F != 0)
            .map(|(index, r)| FaultRecord {
                index,
                page: r[0] & !0xfff,
                sid: r[1] as u16,
                reason: (r[1] >> FRCD_FR_SHIFT) as u8,
                write: r[1] & FRCD_T == 0,
            })
            .collect()
    }
}

//! Event records and the Event queue (IHI 0070 sections 3.5, 7.2, 7.3, 7.4).

use crate::sim::SharedMem;

use super::regs::{EVENTQ_OVFLG, Q_BASE_ADDR_MASK, bit, bits};

/// Event numbers (7.3, table "Event records").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    /// F_UUT, 0x01: unsupported upstream transaction.
    FUut = 0x01,
    /// C_BAD_STREAMID, 0x02: StreamID out of range or not reaching a valid STE through an L1STD.
    CBadStreamId = 0x02,
    /// F_STE_FETCH, 0x03: external abort fetching an STE.
    FSteFetch = 0x03,
    /// C_BAD_STE, 0x04: STE.V == 0 or ILLEGAL STE.
    CBadSte = 0x04,
    /// F_BAD_ATS_TREQ, 0x05.
    FBadAtsTreq = 0x05,
    /// F_STREAM_DISABLED, 0x06.
    FStreamDisabled = 0x06,
    /// F_TRANSL_FORBIDDEN, 0x07.
    FTranslForbidden = 0x07,
    /// C_BAD_SUBSTREAMID, 0x08.
    CBadSubstreamId = 0x08,
    /// F_CD_FETCH, 0x09: external abort fetching a CD.
    FCdFetch = 0x09,
    /// C_BAD_CD, 0x0A: CD.V == 0 or ILLEGAL CD.
    CBadCd = 0x0a,
    /// F_WALK_EABT, 0x0B: external abort on a translation table walk.
    FWalkEabt = 0x0b,
    /// F_TRANSLATION, 0x10: no valid descriptor, address outside TxSZ, or disabled TTBx.
    FTranslation = 0x10,
    /// F_ADDR_SIZE, 0x11: a descriptor output an address beyond the effective IPS.
    FAddrSize = 0x11,
    /// F_ACCESS, 0x12: Access flag fault (AF == 0 in a leaf descriptor).
    FAccess = 0x12,
    /// F_PERMISSION, 0x13: permission fault.
    FPermission = 0x13,
    /// F_TLB_CONFLICT, 0x20.
    FTlbConflict = 0x20,
    /// F_CFG_CONFLICT, 0x21.
    FCfgConflict = 0x21,
}

impl EventType {
    /// Decodes an event number.
    pub fn from_code(code: u8) -> Option<EventType> {
        use EventType::*;
        Some(match code {
            0x01 => FUut,
            0x02 => CBadStreamId,
            0x03 => FSteFetch,
            0x04 => CBadSte,
            0x05 => FBadAtsTreq,
            0x06 => FStreamDisabled,
            0x07 => FTranslForbidden,
            0x08 => CBadSubstreamId,
            0x09 => FCdFetch,
            0x0a => CBadCd,
            0x0b => FWalkEabt,
            0x10 => FTranslation,
            0x11 => FAddrSize,
            0x12 => FAccess,
            0x13 => FPermission,
            0x20 => FTlbConflict,
            0x21 => FCfgConflict,
            _ => return None,
        })
    }
    /// Whether this is one of the four Translation-related faults whose recording CD.R
    /// controls (5.5).
    pub fn is_translation_related(self) -> bool {
        matches!(
            self,
            EventType::FTranslation
                | EventType::FAddrSize
                | EventType::FAccess
                | EventType::FPermission
        )
    }
}

/// CLASS field of fault records (7.3): which access caused the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultClass {
    /// 0b00: CD fetch.
    Cd = 0,
    /// 0b01: stage 1 translation table fetch.
    Ttd = 1,
    /// 0b10: the input address.
    In = 2,
}

/// One 32-byte event record (7.3), decoded.
///
/// Layout: dword0 = type \[7:0\], SSV \[11\], SubstreamID \[31:12\], StreamID \[63:32\];
/// dword1 = STAG \[15:0\], Stall \[31\], PnU \[33\], InD \[34\], RnW \[35\], S2 \[39\], CLASS \[41:40\];
/// dword2 = InputAddr \[63:0\]; dword3 = IPA / fetch address (bits \[55:0\]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event number (type \[7:0\]).
    pub code: u8,
    /// StreamID of the transaction.
    pub sid: u32,
    /// SubstreamID valid.
    pub ssv: bool,
    /// SubstreamID (meaningful when `ssv`).
    pub ssid: u32,
    /// Stall flag (the model never stalls).
    pub stall: bool,
    /// PnU: 1 = privileged transaction.
    pub pnu: bool,
    /// InD: 1 = instruction fetch.
    pub ind: bool,
    /// RnW: 1 = read.
    pub rnw: bool,
    /// S2: fault at stage 2.
    pub s2: bool,
    /// CLASS field (raw).
    pub class: u8,
    /// InputAddr.
    pub input_addr: u64,
    /// dword3: IPA for translation faults, fetch address for F_*_FETCH / F_WALK_EABT.
    pub addr2: u64,
}

impl Event {
    /// A record of `kind` for `sid` with every other field zero.
    pub fn new(kind: EventType, sid: u32) -> Event {
        Event {
            code: kind as u8,
            sid,
            ssv: false,
            ssid: 0,
            stall: false,
            pnu: false,
            ind: false,
            rnw: false,
            s2: false,
            class: 0,
            input_addr: 0,
            addr2: 0,
        }
    }
    /// The decoded event type, if the number is architected.
    pub fn kind(&self) -> Option<EventType> {
        EventType::from_code(self.code)
    }
    /// Encodes the record as four little-endian doublewords.
    pub fn encode(&self) -> [u64; 4] {
        let d0 = self.code as u64
            | (self.ssv as u64) << 11
            | ((self.ssid as u64) & 0xf_ffff) << 12
            | (self.sid as u64) << 32;
        let d1 = (self.stall as u64) << 31
            | (self.pnu as u64) << 33
            | (self.ind as u64) << 34
            | (self.rnw as u64) << 35
            | (self.s2 as u64) << 39
            | ((self.class as u64) & 3) << 40;
        [d0, d1, self.input_addr, self.addr2]
    }
    /// Decodes four doublewords read from the Event queue.
    pub fn decode(d: [u64; 4]) -> Event {
        Event {
            code: bits(d[0], 7, 0) as u8,
            ssv: bit(d[0], 11),
            ssid: bits(d[0], 31, 12) as u32,
            sid: bits(d[0], 63, 32) as u32,
            stall: bit(d[1], 31),
            pnu: bit(d[1], 33),
            ind: bit(d[1], 34),
            rnw: bit(d[1], 35),
            s2: bit(d[1], 39),
            class: bits(d[1], 41, 40) as u8,
            input_addr: d[2],
            addr2: d[3],
        }
    }
}

/// What happened to an event the SMMU tried to record (7.2.1, 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Written at the old PROD index, PROD advanced.
    Written,
    /// Discarded: EVENTQEN == 0 (no overflow, 7.4).
    DiscardedDisabled,
    /// Discarded: the queue was full; the overflow condition was entered if not present.
    DiscardedFull,
    /// Discarded: GERROR.EVENTQ_ABT_ERR is active.
    DiscardedAbortError,
}

/// The Event queue registers: EVENTQ_BASE, EVENTQ_PROD (SMMU-owned) and EVENTQ_CONS
/// (software-owned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQueue {
    /// SMMU_EVENTQ_BASE as written.
    pub base: u64,
    /// SMMU_EVENTQ_PROD: WR (index and wrap) and OVFLG \[31\].
    pub prod: u32,
    /// SMMU_EVENTQ_CONS: RD (index and wrap) and OVACKFLG \[31\].
    pub cons: u32,
}

impl EventQueue {
    /// Effective log2 of the number of entries: LOG2SIZE capped at IDR1.EVENTQS.
    pub fn log2size(&self, eventqs: u8) -> u32 {
        ((self.base & 0x1f) as u32).min(eventqs as u32)
    }
    /// Effective base: ADDR aligned to the larger of the queue size and 32 bytes (6.3.29).
    pub fn base_addr(&self, eventqs: u8) -> u64 {
        let bytes = 32u64 << self.log2size(eventqs);
        self.base & Q_BASE_ADDR_MASK & !(bytes - 1)
    }
    /// Whether the queue is full (PROD.WR == CONS.RD with different wrap bits).
    pub fn is_full(&self, eventqs: u8) -> bool {
        let m = (2u32 << self.log2size(eventqs)) - 1;
        let wrap = 1u32 << self.log2size(eventqs);
        (self.prod & m) ^ (self.cons & m) == wrap
    }
    /// Whether the queue is empty.
    pub fn is_empty(&self, eventqs: u8) -> bool {
        let m = (2u32 << self.log2size(eventqs)) - 1;
        self.prod & m == self.cons & m
    }
    /// Writes `ev` if the queue is writable; otherwise discards it (with overflow if full).
    pub fn record(
        &mut self,
        mem: &SharedMem,
        eventqs: u8,
        enabled: bool,
        abort_error: bool,
        ev: &Event,
    ) -> RecordOutcome {
        if !enabled {
            return RecordOutcome::DiscardedDisabled;
        }
        if abort_error {
            return RecordOutcome::DiscardedAbortError;
        }
        if self.is_full(eventqs) {
            // 7.4: toggle OVFLG only if no overflow condition is already present.
            if self.prod & EVENTQ_OVFLG == self.cons & EVENTQ_OVFLG {
                self.prod ^= EVENTQ_OVFLG;
            }
            return RecordOutcome::DiscardedFull;
        }
        let l2 = self.log2size(eventqs);
        let idx = self.prod & ((1u32 << l2) - 1);
        let addr = self.base_addr(eventqs) + idx as u64 * 32;
        {
            let mut m = mem.borrow_mut();
            for (i, w) in ev.encode().iter().enumerate() {
                m.write(addr + 8 * i as u64, *w);
            }
        }
        let m = (2u32 << l2) - 1;
        let wr = (self.prod & m).wrapping_add(1) & m;
        self.prod = (self.prod & EVENTQ_OVFLG) | wr;
        RecordOutcome::Written
    }
}

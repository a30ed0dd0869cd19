//! The Command queue and command decoding (IHI 0070 chapter 4, sections 3.5 and 7.1).

use crate::sim::SharedMem;

use super::regs::{CMDQ_CONS_ERR_SHIFT, Q_BASE_ADDR_MASK, SmmuConfig, bit, bits};

/// Command opcodes (4.1.1).
pub mod op {
    /// CMD_PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// CMD_PREFETCH_ADDR.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// CMD_CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CMD_CFGI_STE_RANGE; CMD_CFGI_ALL is this with Range == 31.
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CMD_CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CMD_CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// CMD_CFGI_VMS_PIDM.
    pub const CFGI_VMS_PIDM: u8 = 0x07;
    /// CMD_TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// CMD_TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// CMD_TLBI_EL3_ALL (Secure queue only).
    pub const TLBI_EL3_ALL: u8 = 0x18;
    /// CMD_TLBI_EL3_VA (Secure queue only).
    pub const TLBI_EL3_VA: u8 = 0x1a;
    /// CMD_TLBI_EL2_ALL.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// CMD_TLBI_EL2_ASID.
    pub const TLBI_EL2_ASID: u8 = 0x21;
    /// CMD_TLBI_EL2_VA.
    pub const TLBI_EL2_VA: u8 = 0x22;
    /// CMD_TLBI_EL2_VAA.
    pub const TLBI_EL2_VAA: u8 = 0x23;
    /// CMD_TLBI_S12_VMALL.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// CMD_TLBI_S2_IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// CMD_TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// CMD_ATC_INV.
    pub const ATC_INV: u8 = 0x40;
    /// CMD_PRI_RESP.
    pub const PRI_RESP: u8 = 0x41;
    /// CMD_RESUME.
    pub const RESUME: u8 = 0x44;
    /// CMD_STALL_TERM.
    pub const STALL_TERM: u8 = 0x45;
    /// CMD_SYNC.
    pub const SYNC: u8 = 0x46;
}

/// CMDQ_CONS.ERR codes (7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CmdError {
    /// CERROR_ILL: Reserved opcode, invalid parameters or non-zero Reserved field detected.
    Ill = 1,
    /// CERROR_ABT: external abort on command fetch (never produced by this model).
    Abt = 2,
    /// CERROR_ATC_INV_SYNC (never produced: ATS is not modelled).
    AtcInvSync = 3,
}

/// Address-range parameters of TLBI-by-address commands (4.4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbiRange {
    /// Address \[63:12\] (bits \[11:0\] zero).
    pub addr: u64,
    /// Leaf: only last-level entries need be invalidated; walk caches may be kept.
    pub leaf: bool,
    /// TG: 0 = no range / any granule, 1 = 4 KiB, 2 = 16 KiB, 3 = 64 KiB.
    pub tg: u8,
    /// TTL level hint (0 = none).
    pub ttl: u8,
    /// NUM.
    pub num: u8,
    /// SCALE.
    pub scale: u8,
}

impl TlbiRange {
    /// The invalidated address range `[start, end)`: one granule-sized lookup for the
    /// non-range form (entries containing `addr`), else (NUM+1) * 2^SCALE granules.
    pub fn span(&self) -> (u64, u64) {
        if self.tg == 0 {
            (self.addr, self.addr.saturating_add(1))
        } else {
            let gran_log2 = match self.tg {
                1 => 12,
                2 => 14,
                _ => 16,
            };
            let len = ((self.num as u128 + 1) << self.scale) << gran_log2;
            let end = (self.addr as u128 + len).min(u64::MAX as u128) as u64;
            (self.addr, end)
        }
    }
}

/// A decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CMD_PREFETCH_CONFIG / CMD_PREFETCH_ADDR (hints; the model ignores them).
    Prefetch,
    /// CMD_CFGI_STE(StreamID, Leaf).
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// Leaf: do not invalidate the L1STD.
        leaf: bool,
    },
    /// CMD_CFGI_STE_RANGE(StreamID, Range) / CMD_CFGI_ALL (Range == 31).
    CfgiSteRange {
        /// StreamID (low Range+1 bits ignored).
        sid: u32,
        /// Range: 2^(Range+1) StreamIDs.
        range: u8,
    },
    /// CMD_CFGI_CD(StreamID, SubstreamID, Leaf).
    CfgiCd {
        /// StreamID.
        sid: u32,
        /// SubstreamID (CD table index).
        ssid: u32,
        /// Leaf.
        leaf: bool,
    },
    /// CMD_CFGI_CD_ALL(StreamID).
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// CMD_TLBI_NH_ALL(VMID).
    TlbiNhAll {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_NH_ASID(VMID, ASID).
    TlbiNhAsid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_NH_VA(VMID, ASID, Addr, Leaf) and CMD_TLBI_NH_VAA (asid == None).
    TlbiNhVa {
        /// VMID.
        vmid: u16,
        /// ASID, or `None` for VAA (all ASIDs).
        asid: Option<u16>,
        /// Address and range parameters.
        range: TlbiRange,
    },
    /// CMD_TLBI_EL2_* (no EL2 entries exist in this model).
    TlbiEl2,
    /// CMD_TLBI_S12_VMALL(VMID).
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_S2_IPA (no stage-2 entries exist in this model).
    TlbiS2Ipa,
    /// CMD_TLBI_NSNH_ALL.
    TlbiNsnhAll,
    /// CMD_RESUME / CMD_STALL_TERM (nothing ever stalls here).
    StallControl,
    /// CMD_SYNC(CS, MSIAddress, MSIData).
    Sync {
        /// ComplSignal: 0 none, 1 IRQ, 2 SEV.
        cs: u8,
        /// MSIAddress \[55:2\].
        msi_addr: u64,
        /// MSIData.
        msi_data: u32,
    },
}

impl Command {
    /// The opcode byte of a raw command.
    pub fn opcode(raw: [u64; 2]) -> u8 {
        raw[0] as u8
    }
}

fn tlbi_range(c: &SmmuConfig, raw: [u64; 2]) -> Result<TlbiRange, CmdError> {
    let r = TlbiRange {
        addr: raw[1] & !0xfff,
        leaf: bit(raw[1], 0),
        tg: bits(raw[1], 11, 10) as u8,
        ttl: bits(raw[1], 9, 8) as u8,
        num: bits(raw[0], 16, 12) as u8,
        scale: bits(raw[0], 24, 20) as u8,
    };
    // TTL128 (bit 71) and SCALE[5] (bit 25, RES0 when IDR5.DS == 0) are RES0 here.
    if bit(raw[1], 7) || bit(raw[0], 25) {
        return Err(CmdError::Ill);
    }
    if !c.ril || r.tg == 0 {
        // RES0 without RIL, and with TG == 0 (4.4.1.1); the model detects non-zero values.
        if r.tg != 0 || r.ttl != 0 || r.num != 0 || r.scale != 0 {
            return Err(CmdError::Ill);
        }
        return Ok(r);
    }
    // NUM == SCALE == TTL == 0 with TG != 0 is Reserved: CERROR_ILL.
    if r.num == 0 && r.scale == 0 && r.ttl == 0 {
        return Err(CmdError::Ill);
    }
    // TG == 16 KiB with TTL == 1 raises CERROR_ILL when IDR5.DS == 0.
    if r.tg == 2 && r.ttl == 1 {
        return Err(CmdError::Ill);
    }
    Ok(r)
}

/// Decodes a 16-byte command (two little-endian doublewords) against the implemented
/// features, returning `CERROR_ILL` for Reserved/unsupported opcodes and invalid parameters
/// (4.1.3, and each command's description in 4.2 to 4.7).
pub fn decode(c: &SmmuConfig, raw: [u64; 2]) -> Result<Command, CmdError> {
    let opcode = Command::opcode(raw);
    let sid = bits(raw[0], 63, 32) as u32;
    let ssec = bit(raw[0], 10);
    let vmid_raw = bits(raw[0], 47, 32) as u16;
    let asid = bits(raw[0], 63, 48) as u16;
    // On a stage-1-only SMMU the VMID parameter is RES0 and not matched (4.4.2).
    let vmid = if c.s2p { vmid_raw } else { 0 };
    let cmd = match opcode {
        op::PREFETCH_CONFIG | op::PREFETCH_ADDR => {
            if ssec {
                return Err(CmdError::Ill);
            }
            Command::Prefetch
        }
        op::CFGI_STE => {
            if ssec {
                return Err(CmdError::Ill);
            }
            Command::CfgiSte {
                sid,
                leaf: bit(raw[1], 0),
            }
        }
        op::CFGI_STE_RANGE => {
            if ssec {
                return Err(CmdError::Ill);
            }
            Command::CfgiSteRange {
                sid,
                range: bits(raw[1], 4, 0) as u8,
            }
        }
        op::CFGI_CD | op::CFGI_CD_ALL => {
            // 4.3.3/4.3.4: CERROR_ILL when stage 1 is not implemented.
            if ssec || !c.s1p {
                return Err(CmdError::Ill);
            }
            if opcode == op::CFGI_CD {
                Command::CfgiCd {
                    sid,
                    ssid: bits(raw[0], 31, 12) as u32,
                    leaf: bit(raw[1], 0),
                }
            } else {
                Command::CfgiCdAll { sid }
            }
        }
        op::TLBI_NH_ALL | op::TLBI_NH_ASID | op::TLBI_NH_VA | op::TLBI_NH_VAA => {
            if !c.s1p {
                return Err(CmdError::Ill);
            }
            match opcode {
                op::TLBI_NH_ALL => Command::TlbiNhAll { vmid },
                op::TLBI_NH_ASID => Command::TlbiNhAsid { vmid, asid },
                op::TLBI_NH_VA => Command::TlbiNhVa {
                    vmid,
                    asid: Some(asid),
                    range: tlbi_range(c, raw)?,
                },
                _ => Command::TlbiNhVa {
                    vmid,
                    asid: None,
                    range: tlbi_range(c, raw)?,
                },
            }
        }
        op::TLBI_EL2_ALL | op::TLBI_EL2_ASID | op::TLBI_EL2_VA | op::TLBI_EL2_VAA => {
            // 4.4.2.7-10: CERROR_ILL when IDR0.HYP == 0.
            if !c.hyp || !c.s1p {
                return Err(CmdError::Ill);
            }
            if matches!(opcode, op::TLBI_EL2_VA | op::TLBI_EL2_VAA) {
                tlbi_range(c, raw)?;
            }
            Command::TlbiEl2
        }
        op::TLBI_S12_VMALL | op::TLBI_S2_IPA => {
            // 4.4.3: CERROR_ILL without stage 2.
            if !c.s2p {
                return Err(CmdError::Ill);
            }
            if opcode == op::TLBI_S12_VMALL {
                Command::TlbiS12Vmall { vmid }
            } else {
                tlbi_range(c, raw)?;
                Command::TlbiS2Ipa
            }
        }
        op::TLBI_NSNH_ALL => Command::TlbiNsnhAll,
        op::RESUME | op::STALL_TERM => Command::StallControl,
        op::SYNC => {
            let cs = bits(raw[0], 13, 12) as u8;
            if cs == 0b11 {
                return Err(CmdError::Ill);
            }
            Command::Sync {
                cs,
                msi_addr: raw[1] & (((1u64 << 56) - 1) & !3),
                msi_data: bits(raw[0], 63, 32) as u32,
            }
        }
        // CMD_CFGI_VMS_PIDM (no MPAM), EL3 and Secure-only commands on the Non-secure queue,
        // CMD_ATC_INV and CMD_PRI_RESP (no ATS/PRI), DPT commands and every Reserved opcode.
        _ => return Err(CmdError::Ill),
    };
    Ok(cmd)
}

/// The Command queue registers: CMDQ_BASE, CMDQ_PROD (software-owned), CMDQ_CONS (SMMU-owned,
/// with ERR \[30:24\]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandQueue {
    /// SMMU_CMDQ_BASE as written.
    pub base: u64,
    /// SMMU_CMDQ_PROD as written.
    pub prod: u32,
    /// SMMU_CMDQ_CONS: RD (index and wrap) and ERR.
    pub cons: u32,
}

impl CommandQueue {
    /// Effective log2 of the number of entries: LOG2SIZE capped at IDR1.CMDQS.
    pub fn log2size(&self, cmdqs: u8) -> u32 {
        ((self.base & 0x1f) as u32).min(cmdqs as u32)
    }
    /// Effective base: ADDR aligned to the larger of the queue size and 32 bytes (6.3.26).
    pub fn base_addr(&self, cmdqs: u8) -> u64 {
        let bytes = 16u64 << self.log2size(cmdqs);
        self.base & Q_BASE_ADDR_MASK & !(bytes.max(32) - 1)
    }
    fn wrap_index_mask(&self, cmdqs: u8) -> u32 {
        (2u32 << self.log2size(cmdqs)) - 1
    }
    /// Whether PROD == CONS including the wrap bits.
    pub fn is_empty(&self, cmdqs: u8) -> bool {
        let m = self.wrap_index_mask(cmdqs);
        self.prod & m == self.cons & m
    }
    /// Reads the command at CONS.RD.
    pub fn read_head(&self, mem: &SharedMem, cmdqs: u8) -> [u64; 2] {
        let l2 = self.log2size(cmdqs);
        let idx = self.cons & ((1u32 << l2) - 1);
        let addr = self.base_addr(cmdqs) + 16 * idx as u64;
        let m = mem.borrow();
        [m.read(addr), m.read(addr + 8)]
    }
    /// Advances CONS.RD by one entry, keeping ERR.
    pub fn advance(&mut self, cmdqs: u8) {
        let m = self.wrap_index_mask(cmdqs);
        let rd = (self.cons & m).wrapping_add(1) & m;
        self.cons = (self.cons & !m) | rd;
    }
    /// Sets CONS.ERR.
    pub fn set_error(&mut self, e: CmdError) {
        self.cons =
            (self.cons & !(0x7f << CMDQ_CONS_ERR_SHIFT)) | ((e as u32) << CMDQ_CONS_ERR_SHIFT);
    }
}

//! Commands of the modelled command queue (RISC-V IOMMU spec 1.0, 3.1 "Command-Queue (CQ)"),
//! decoded with the legality rules of 3.1: a reserved encoding or a reserved bit set makes a
//! command illegal; a defined command the unit does not implement is unsupported. Either
//! stops the queue with `cqcsr.cmd_ill`.

use super::regs::RiscvConfig;

/// One decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `IOTINVAL.VMA` (3.1.1).
    IotinvalVma {
        /// `GSCID` when `GV` = 1.
        gscid: Option<u16>,
        /// `PSCID` when `PSCV` = 1.
        pscid: Option<u32>,
        /// `ADDR[63:12] << 12` when `AV` = 1.
        addr: Option<u64>,
    },
    /// `IOTINVAL.GVMA` (3.1.1).
    IotinvalGvma {
        /// `GSCID` when `GV` = 1.
        gscid: Option<u16>,
        /// `ADDR` when `AV` = 1.
        addr: Option<u64>,
    },
    /// `IOFENCE.C` (3.1.2).
    IofenceC {
        /// `AV`: write `data` to `addr` on completion.
        write: Option<(u64, u32)>,
        /// `WSI`: set `cqcsr.fence_w_ip` on completion.
        wsi: bool,
        /// `PR`.
        pr: bool,
        /// `PW`.
        pw: bool,
    },
    /// `IODIR.INVAL_DDT` (3.1.3).
    InvalDdt {
        /// `DID` when `DV` = 1.
        did: Option<u32>,
    },
    /// `IODIR.INVAL_PDT` (3.1.3).
    InvalPdt {
        /// `DID`.
        did: u32,
        /// `PID`.
        pid: u32,
    },
    /// `ATS.INVAL` or `ATS.PRGR` (3.1.4): consumed without effect.
    Ats,
}

/// The opcode of a raw command.
pub fn opcode(raw: [u64; 2]) -> u8 {
    (raw[0] & 0x7f) as u8
}

/// Decodes a raw command; `Err` says why it is illegal or unsupported. `wsi_enabled` is
/// `fctl.WSI`; `did_bits` the device-id width of the current `ddtp.iommu_mode`.
pub fn decode(
    cfg: &RiscvConfig,
    raw: [u64; 2],
    wsi_enabled: bool,
    did_bits: u32,
) -> Result<Command, String> {
    let [d0, d1] = raw;
    let func3 = (d0 >> 7) & 7;
    let bit = |n: u32| d0 & (1 << n) != 0;
    match opcode(raw) {
        1 => {
            // AV 10, rsvd 11, PSCID 31:12, PSCV 32, GV 33, rsvd 43:34, GSCID 59:44, rsvd
            // 63:60; dword 1: rsvd 9:0, ADDR[63:12] 61:10, rsvd 63:62.
            if d0 & ((1 << 11) | (0x3ff << 34) | (0xf << 60)) != 0 {
                return Err(format!("IOTINVAL reserved bits set: {d0:#x}"));
            }
            if d1 & (0x3ff | (0b11 << 62)) != 0 {
                return Err(format!("IOTINVAL dword 1 reserved bits set: {d1:#x}"));
            }
            let gscid = bit(33).then_some(((d0 >> 44) & 0xffff) as u16);
            let addr = bit(10).then_some(((d1 >> 10) & ((1u64 << 52) - 1)) << 12);
            let pscid = bit(32).then_some(((d0 >> 12) & 0xf_ffff) as u32);
            match func3 {
                0 => Ok(Command::IotinvalVma { gscid, pscid, addr }),
                1 if pscid.is_some() => Err("IOTINVAL.GVMA with PSCV = 1".into()),
                1 => Ok(Command::IotinvalGvma { gscid, addr }),
                f => Err(format!("IOTINVAL func3 {f} reserved")),
            }
        }
        2 => {
            // AV 10, WSI 11, PR 12, PW 13, rsvd 31:14, DATA 63:32; dword 1: ADDR[63:2] in
            // 61:0, rsvd 63:62.
            if func3 != 0 {
                return Err(format!("IOFENCE func3 {func3} reserved"));
            }
            if d0 & (0x3ffff << 14) != 0 || d1 >> 62 != 0 {
                return Err(format!("IOFENCE reserved bits set: {d0:#x} {d1:#x}"));
            }
            if bit(11) && !wsi_enabled {
                return Err("IOFENCE.C with WSI while fctl.WSI = 0".into());
            }
            Ok(Command::IofenceC {
                write: bit(10).then_some((d1 << 2, (d0 >> 32) as u32)),
                wsi: bit(11),
                pr: bit(12),
                pw: bit(13),
            })
        }
        3 => {
            // rsvd 11:10, PID 31:12, rsvd 32, DV 33, rsvd 39:34, DID 63:40; dword 1 rsvd.
            if d0 & ((0b11 << 10) | (1 << 32) | (0x3f << 34)) != 0 || d1 != 0 {
                return Err(format!("IODIR reserved bits set: {d0:#x} {d1:#x}"));
            }
            let did = (d0 >> 40) as u32;
            let pid = ((d0 >> 12) & 0xf_ffff) as u32;
            if bit(33) && u64::from(did) >> did_bits != 0 {
                return Err(format!(
                    "IODIR DID {did:#x} wider than the {did_bits} bits ddtp resolves"
                ));
            }
            match func3 {
                0 if pid != 0 => Err("IODIR.INVAL_DDT with PID set (reserved)".into()),
                0 => Ok(Command::InvalDdt {
                    did: bit(33).then_some(did),
                }),
                1 if !bit(33) => Err("IODIR.INVAL_PDT with DV = 0".into()),
                1 => Ok(Command::InvalPdt { did, pid }),
                f => Err(format!("IODIR func3 {f} reserved")),
            }
        }
        4 if cfg.ats && func3 <= 1 => Ok(Command::Ats),
        4 => Err("ATS command (unsupported or reserved func3)".into()),
        op => Err(format!("opcode {op} reserved")),
    }
}

/// A command-queue or fault-queue ring: base, size, head and tail (5.6 to 5.11).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ring {
    /// The base register (`cqb`/`fqb`) as written.
    pub base_reg: u64,
    /// Head index.
    pub head: u32,
    /// Tail index.
    pub tail: u32,
}

impl Ring {
    /// log2 of the entries (`LOG2SZ-1` + 1).
    pub fn log2(&self) -> u32 {
        (self.base_reg & super::regs::QB_LOG2SZ) as u32 + 1
    }
    /// Number of entries.
    pub fn entries(&self) -> u32 {
        1 << self.log2().min(31)
    }
    /// Base address.
    pub fn base(&self) -> u64 {
        ((self.base_reg & super::regs::QB_PPN) >> 10) << 12
    }
    /// Index mask.
    pub fn mask(&self) -> u32 {
        self.entries() - 1
    }
    /// Empty: head == tail.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }
    /// Full: tail == head - 1.
    pub fn is_full(&self) -> bool {
        (self.tail + 1) & self.mask() == self.head
    }
}

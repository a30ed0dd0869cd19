//! The VT-d register map and the model's register-access dispatch.
//!
//! Offsets and bit positions come from the Intel VT-d specification, chapter 11 ("Register
//! Descriptions"), cross-checked against QEMU's `hw/i386/intel_iommu_internal.h`. Every register
//! is either 32 or 64 bits wide; a 32-bit access to one half of a 64-bit register is merged into
//! that register, and a 64-bit access to a pair of 32-bit registers is split in two (the latter is
//! recorded as a violation for writes, spec 11.2: software accesses 32-bit registers as 32-bit
//! quantities).

use super::VtdModel;

/// Version register (32-bit, RO), spec 11.4.1.
pub const VER: usize = 0x00;
/// Capability register (64-bit, RO), spec 11.4.2.
pub const CAP: usize = 0x08;
/// Extended capability register (64-bit, RO), spec 11.4.3.
pub const ECAP: usize = 0x10;
/// Global command register (32-bit, WO), spec 11.4.4.1.
pub const GCMD: usize = 0x18;
/// Global status register (32-bit, RO), spec 11.4.4.2.
pub const GSTS: usize = 0x1c;
/// Root table address register (64-bit), spec 11.4.5.
pub const RTADDR: usize = 0x20;
/// Context command register (64-bit), spec 11.4.6.1.
pub const CCMD: usize = 0x28;
/// Fault status register (32-bit), spec 11.4.9.1.
pub const FSTS: usize = 0x34;
/// Fault event control register (32-bit), spec 11.4.9.2.
pub const FECTL: usize = 0x38;
/// Fault event data register (32-bit), spec 11.4.9.3.
pub const FEDATA: usize = 0x3c;
/// Fault event address register (32-bit), spec 11.4.9.4.
pub const FEADDR: usize = 0x40;
/// Fault event upper address register (32-bit), spec 11.4.9.5.
pub const FEUADDR: usize = 0x44;
/// Advanced fault log register (64-bit), spec 11.4.9.7.
pub const AFLOG: usize = 0x58;
/// Protected memory enable register (32-bit), spec 11.4.10.1.
pub const PMEN: usize = 0x64;
/// Protected low-memory base register (32-bit), spec 11.4.10.2.
pub const PLMBASE: usize = 0x68;
/// Protected low-memory limit register (32-bit), spec 11.4.10.3.
pub const PLMLIMIT: usize = 0x6c;
/// Protected high-memory base register (64-bit), spec 11.4.10.4.
pub const PHMBASE: usize = 0x70;
/// Protected high-memory limit register (64-bit), spec 11.4.10.5.
pub const PHMLIMIT: usize = 0x78;
/// Invalidation queue head register (64-bit, RO), spec 11.4.7.1.
pub const IQH: usize = 0x80;
/// Invalidation queue tail register (64-bit), spec 11.4.7.2.
pub const IQT: usize = 0x88;
/// Invalidation queue address register (64-bit), spec 11.4.7.3.
pub const IQA: usize = 0x90;
/// Invalidation completion status register (32-bit), spec 11.4.7.4.
pub const ICS: usize = 0x9c;
/// Invalidation event control register (32-bit), spec 11.4.7.5.
pub const IECTL: usize = 0xa0;
/// Invalidation event data register (32-bit), spec 11.4.7.6.
pub const IEDATA: usize = 0xa4;
/// Invalidation event address register (32-bit), spec 11.4.7.7.
pub const IEADDR: usize = 0xa8;
/// Invalidation event upper address register (32-bit), spec 11.4.7.8.
pub const IEUADDR: usize = 0xac;
/// Invalidation queue error record register (64-bit, RO), spec 11.4.7.9.
pub const IQERCD: usize = 0xb0;
/// Interrupt remapping table address register (64-bit), spec 11.4.8.1.
pub const IRTA: usize = 0xb8;

/// GCMD/GSTS bit 31: translation enable / status (persistent).
pub const GCMD_TE: u32 = 1 << 31;
/// GCMD bit 30: set root table pointer (one-shot); GSTS bit 30: RTPS.
pub const GCMD_SRTP: u32 = 1 << 30;
/// GCMD bit 29: set fault log (one-shot); GSTS bit 29: FLS.
pub const GCMD_SFL: u32 = 1 << 29;
/// GCMD/GSTS bit 28: enable advanced fault logging (persistent).
pub const GCMD_EAFL: u32 = 1 << 28;
/// GCMD bit 27: write buffer flush (one-shot); GSTS bit 27: WBFS.
pub const GCMD_WBF: u32 = 1 << 27;
/// GCMD/GSTS bit 26: queued invalidation enable (persistent).
pub const GCMD_QIE: u32 = 1 << 26;
/// GCMD/GSTS bit 25: interrupt remapping enable (persistent).
pub const GCMD_IRE: u32 = 1 << 25;
/// GCMD bit 24: set interrupt remap table pointer (one-shot); GSTS bit 24: IRTPS.
pub const GCMD_SIRTP: u32 = 1 << 24;
/// GCMD/GSTS bit 23: compatibility format interrupt (persistent).
pub const GCMD_CFI: u32 = 1 << 23;
/// The GCMD fields whose value persists (the rest are one-shot commands), spec 11.4.4.1.
pub const GCMD_PERSISTENT: u32 = GCMD_TE | GCMD_EAFL | GCMD_QIE | GCMD_IRE | GCMD_CFI;
/// The GCMD one-shot command fields.
pub const GCMD_ONE_SHOT: u32 = GCMD_SRTP | GCMD_SFL | GCMD_WBF | GCMD_SIRTP;

/// CCMD bit 63: invalidate context cache (set by software, cleared by hardware when done).
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD bits 62:61: context invalidation request granularity (1 global, 2 domain, 3 device).
pub const CCMD_CIRG_SHIFT: u32 = 61;
/// CCMD bits 60:59: context actual invalidation granularity (0 = request ignored).
pub const CCMD_CAIG_SHIFT: u32 = 59;

/// IOTLB register bit 63: invalidate IOTLB.
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB register bits 61:60: invalidation request granularity (1 global, 2 domain, 3 page).
pub const IOTLB_IIRG_SHIFT: u32 = 60;
/// IOTLB register bits 58:57: actual invalidation granularity (0 = request ignored).
pub const IOTLB_IAIG_SHIFT: u32 = 57;
/// IOTLB register bits 47:32: domain id.
pub const IOTLB_DID_SHIFT: u32 = 32;

/// FSTS bit 0: primary fault overflow (RW1C).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS bit 1: primary pending fault (RO: set while any fault recording register has F=1).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS bit 2: advanced fault overflow (RW1C).
pub const FSTS_AFO: u32 = 1 << 2;
/// FSTS bit 3: advanced pending fault (RW1C).
pub const FSTS_APF: u32 = 1 << 3;
/// FSTS bit 4: invalidation queue error (RW1C).
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS bit 5: invalidation completion error (RW1C).
pub const FSTS_ICE: u32 = 1 << 5;
/// FSTS bit 6: invalidation time-out error (RW1C).
pub const FSTS_ITE: u32 = 1 << 6;
/// FSTS bits 15:8: fault record index.
pub const FSTS_FRI_SHIFT: u32 = 8;
/// The write-1-to-clear FSTS bits.
pub const FSTS_W1C: u32 = FSTS_PFO | FSTS_AFO | FSTS_APF | FSTS_IQE | FSTS_ICE | FSTS_ITE;

/// FECTL/IECTL bit 31: interrupt mask (set at reset).
pub const ECTL_IM: u32 = 1 << 31;
/// FECTL/IECTL bit 30: interrupt pending (RO).
pub const ECTL_IP: u32 = 1 << 30;

/// ICS bit 0: invalidation wait descriptor complete (RW1C).
pub const ICS_IWC: u32 = 1;

/// Fault recording register, high qword bit 63: fault (RW1C).
pub const FRCD_F: u64 = 1 << 63;
/// Fault recording register, high qword bit 62: type, 0 = write request, 1 = read request.
pub const FRCD_T: u64 = 1 << 62;
/// Fault recording register, high qword bits 39:32: fault reason.
pub const FRCD_FR_SHIFT: u32 = 32;

/// PMEN bit 31: enable protected memory; bit 0: protected region status.
pub const PMEN_EPM: u32 = 1 << 31;

/// CAP bits 2:0: number of domains supported (2^(4 + 2 * ND)).
pub const CAP_ND_MASK: u64 = 0x7;
/// CAP bit 4: required write-buffer flushing.
pub const CAP_RWBF: u64 = 1 << 4;
/// CAP bit 3: advanced fault logging.
pub const CAP_AFL: u64 = 1 << 3;
/// CAP bit 7: caching mode (not-present and erroneous entries may be cached).
pub const CAP_CM: u64 = 1 << 7;
/// CAP bits 12:8: supported adjusted guest address widths (bit 1: 39-bit, 2: 48-bit, 3: 57-bit).
pub const CAP_SAGAW_SHIFT: u32 = 8;
/// CAP bits 21:16: maximum guest address width minus one.
pub const CAP_MGAW_SHIFT: u32 = 16;
/// CAP bits 33:24: fault recording register offset in 16-byte units.
pub const CAP_FRO_SHIFT: u32 = 24;
/// CAP bits 37:34: second-level large page support (bit 34: 2 MiB, bit 35: 1 GiB).
pub const CAP_SLLPS_SHIFT: u32 = 34;
/// CAP bit 39: page-selective invalidation.
pub const CAP_PSI: u64 = 1 << 39;
/// CAP bits 47:40: number of fault recording registers minus one.
pub const CAP_NFR_SHIFT: u32 = 40;
/// CAP bits 53:48: maximum address mask value for page-selective invalidation.
pub const CAP_MAMV_SHIFT: u32 = 48;

/// ECAP bit 0: coherency (table walks snoop the CPU caches).
pub const ECAP_C: u64 = 1 << 0;
/// ECAP bit 1: queued invalidation.
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP bit 2: device-TLB support.
pub const ECAP_DT: u64 = 1 << 2;
/// ECAP bit 3: interrupt remapping.
pub const ECAP_IR: u64 = 1 << 3;
/// ECAP bit 4: extended interrupt mode.
pub const ECAP_EIM: u64 = 1 << 4;
/// ECAP bit 6: pass-through.
pub const ECAP_PT: u64 = 1 << 6;
/// ECAP bit 7: snoop control (SNP bit in leaf entries).
pub const ECAP_SC: u64 = 1 << 7;
/// ECAP bits 17:8: IOTLB register offset in 16-byte units.
pub const ECAP_IRO_SHIFT: u32 = 8;
/// ECAP bits 23:20: maximum handle mask value (interrupt remapping).
pub const ECAP_MHMV_SHIFT: u32 = 20;
/// ECAP bit 43: scalable mode translation support.
pub const ECAP_SMTS: u64 = 1 << 43;

/// The 64-bit registers of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum R64 {
    Cap,
    Ecap,
    Rtaddr,
    Ccmd,
    Aflog,
    Phmbase,
    Phmlimit,
    Iqh,
    Iqt,
    Iqa,
    Iqercd,
    Irta,
    Iva,
    Iotlb,
    FrcdLo(usize),
    FrcdHi(usize),
}

/// The 32-bit registers of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum R32 {
    Ver,
    Gcmd,
    Gsts,
    Fsts,
    Fectl,
    Fedata,
    Feaddr,
    Feuaddr,
    Pmen,
    Plmbase,
    Plmlimit,
    Ics,
    Iectl,
    Iedata,
    Ieaddr,
    Ieuaddr,
}

impl VtdModel {
    /// The 64-bit register whose first byte is at `base` (8-byte aligned), if any.
    pub(super) fn reg64_at(&self, base: usize) -> Option<R64> {
        let iro = self.iro();
        let fro = self.fro();
        let r = match base {
            CAP => R64::Cap,
            ECAP => R64::Ecap,
            RTADDR => R64::Rtaddr,
            CCMD => R64::Ccmd,
            AFLOG => R64::Aflog,
            PHMBASE => R64::Phmbase,
            PHMLIMIT => R64::Phmlimit,
            IQH => R64::Iqh,
            IQT => R64::Iqt,
            IQA => R64::Iqa,
            IQERCD => R64::Iqercd,
            IRTA => R64::Irta,
            b if b == iro => R64::Iva,
            b if b == iro + 8 => R64::Iotlb,
            b if b >= fro && b < fro + 16 * self.nfr() => {
                let n = (b - fro) / 16;
                if (b - fro) % 16 == 0 {
                    R64::FrcdLo(n)
                } else {
                    R64::FrcdHi(n)
                }
            }
            _ => return None,
        };
        Some(r)
    }

    /// The 32-bit register at `off` (4-byte aligned), if any.
    pub(super) fn reg32_at(off: usize) -> Option<R32> {
        Some(match off {
            VER => R32::Ver,
            GCMD => R32::Gcmd,
            GSTS => R32::Gsts,
            FSTS => R32::Fsts,
            FECTL => R32::Fectl,
            FEDATA => R32::Fedata,
            FEADDR => R32::Feaddr,
            FEUADDR => R32::Feuaddr,
            PMEN => R32::Pmen,
            PLMBASE => R32::Plmbase,
            PLMLIMIT => R32::Plmlimit,
            ICS => R32::Ics,
            IECTL => R32::Iectl,
            IEDATA => R32::Iedata,
            IEADDR => R32::Ieaddr,
            IEUADDR => R32::Ieuaddr,
            _ => return None,
        })
    }

    /// Reads a 64-bit register.
    pub(super) fn read_r64(&mut self, r: R64) -> u64 {
        match r {
            R64::Cap => self.cfg.cap,
            R64::Ecap => self.cfg.ecap,
            R64::Rtaddr => self.rtaddr,
            R64::Ccmd => self.ccmd,
            R64::Aflog => self.aflog,
            R64::Phmbase => self.phmbase,
            R64::Phmlimit => self.phmlimit,
            R64::Iqh => self.iqh,
            R64::Iqt => self.iqt,
            R64::Iqa => self.iqa,
            R64::Iqercd => self.iqercd,
            R64::Irta => self.irta,
            R64::Iva => self.iva,
            R64::Iotlb => self.iotlb_reg,
            R64::FrcdLo(n) => self.frcd[n][0],
            R64::FrcdHi(n) => self.frcd[n][1],
        }
    }

    /// Writes a 64-bit register. `mask` tells which bits the access covered (a 32-bit access
    /// covers one half); side effects that a field triggers happen only when its half is written.
    pub(super) fn write_r64(&mut self, r: R64, value: u64, mask: u64) {
        let merge = |old: u64| (old & !mask) | (value & mask);
        match r {
            R64::Cap | R64::Ecap | R64::Iqh | R64::Iqercd | R64::FrcdLo(_) => {
                self.violation(format!("write of {value:#x} to read-only register {r:?}"));
            }
            R64::Rtaddr => {
                let v = merge(self.rtaddr);
                let ttm = (v >> 10) & 3;
                if ttm != 0 && self.cfg.ecap & ECAP_SMTS == 0 {
                    self.violation(format!(
                        "RTADDR.TTM = {ttm} but only legacy mode (TTM = 0) is supported"
                    ));
                }
                if v & 0x3ff != 0 || v & !self.haw_mask() & !0xfff != 0 {
                    self.violation(format!("RTADDR {v:#x} has reserved bits set"));
                }
                self.rtaddr = v;
            }
            R64::Ccmd => {
                self.ccmd = merge(self.ccmd);
                if mask & CCMD_ICC != 0 && self.ccmd & CCMD_ICC != 0 {
                    self.register_context_invalidate();
                }
            }
            R64::Aflog => self.aflog = merge(self.aflog),
            R64::Phmbase => self.phmbase = merge(self.phmbase),
            R64::Phmlimit => self.phmlimit = merge(self.phmlimit),
            R64::Iqt => {
                let v = merge(self.iqt);
                if v & !0x7fff0 != 0 {
                    self.violation(format!("IQT {v:#x} has reserved bits set"));
                }
                self.iqt = v & 0x7fff0;
                self.process_queue();
            }
            R64::Iqa => {
                if self.gsts & GCMD_QIE != 0 {
                    self.violation("IQA written while queued invalidation is enabled".into());
                }
                self.iqa = merge(self.iqa);
            }
            R64::Irta => self.irta = merge(self.irta),
            R64::Iva => self.iva = merge(self.iva),
            R64::Iotlb => {
                self.iotlb_reg = merge(self.iotlb_reg);
                if mask & IOTLB_IVT != 0 && self.iotlb_reg & IOTLB_IVT != 0 {
                    self.register_iotlb_invalidate();
                }
            }
            R64::FrcdHi(n) => {
                // Only F is writable (RW1C); software may write back the whole value it read.
                if value & mask & FRCD_F != 0 {
                    self.clear_fault_record(n);
                }
            }
        }
    }

    /// Reads a 32-bit register.
    pub(super) fn read_r32(&mut self, r: R32) -> u32 {
        match r {
            R32::Ver => self.cfg.version,
            // GCMD is write-only; reads return 0 (spec 11.4.4.1).
            R32::Gcmd => 0,
            R32::Gsts => self.gsts,
            R32::Fsts => self.fsts_value(),
            R32::Fectl => self.fectl,
            R32::Fedata => self.fedata,
            R32::Feaddr => self.feaddr,
            R32::Feuaddr => self.feuaddr,
            R32::Pmen => self.pmen,
            R32::Plmbase => self.plmbase,
            R32::Plmlimit => self.plmlimit,
            R32::Ics => self.ics,
            R32::Iectl => self.iectl,
            R32::Iedata => self.iedata,
            R32::Ieaddr => self.ieaddr,
            R32::Ieuaddr => self.ieuaddr,
        }
    }

    /// Writes a 32-bit register.
    pub(super) fn write_r32(&mut self, r: R32, v: u32) {
        match r {
            R32::Ver | R32::Gsts => {
                self.violation(format!("write of {v:#x} to read-only register {r:?}"));
            }
            R32::Gcmd => self.write_gcmd(v),
            R32::Fsts => self.write_fsts(v),
            R32::Fectl => self.write_fectl(v),
            R32::Fedata => self.fedata = v,
            R32::Feaddr => self.feaddr = v,
            R32::Feuaddr => self.feuaddr = v,
            R32::Pmen => {
                // PRS (bit 0) mirrors EPM once the change has taken effect (synchronous here).
                self.pmen = (v & PMEN_EPM) | u32::from(v & PMEN_EPM != 0);
            }
            R32::Plmbase => self.plmbase = v,
            R32::Plmlimit => self.plmlimit = v,
            R32::Ics => {
                if v & ICS_IWC != 0 {
                    self.ics &= !ICS_IWC;
                    self.iectl &= !ECTL_IP;
                }
            }
            R32::Iectl => {
                self.iectl = (self.iectl & ECTL_IP) | (v & ECTL_IM);
                if self.iectl & ECTL_IM == 0 && self.iectl & ECTL_IP != 0 {
                    self.iectl &= !ECTL_IP;
                    self.stats.inv_interrupts += 1;
                }
            }
            R32::Iedata => self.iedata = v,
            R32::Ieaddr => self.ieaddr = v,
            R32::Ieuaddr => self.ieuaddr = v,
        }
    }

    /// GCMD write (spec 11.4.4.1). The written value is the desired state of every persistent
    /// field: a field written as 0 that is enabled in GSTS gets disabled. One-shot fields act when
    /// written as 1. Changing several fields in one write is a software error (the spec requires
    /// one command per write); the model performs them all and records a violation.
    fn write_gcmd(&mut self, v: u32) {
        self.stats.gcmd_writes += 1;
        let changed = (v ^ self.gsts) & GCMD_PERSISTENT;
        let one_shot = v & GCMD_ONE_SHOT;
        let commands = (changed | one_shot).count_ones();
        if commands > 1 {
            self.violation(format!(
                "GCMD write {v:#x} (GSTS {:#x}) changes {commands} fields at once",
                self.gsts
            ));
        }
        if v & 0x7f_ffff != 0 {
            self.violation(format!("GCMD write {v:#x} sets reserved bits"));
        }
        if one_shot & GCMD_SRTP != 0 {
            self.root_ptr = self.rtaddr & !0xfff & self.haw_mask();
            self.gsts |= GCMD_SRTP;
            self.stats.srtp += 1;
        }
        if one_shot & GCMD_WBF != 0 {
            // Completes immediately: WBFS reads 0 afterwards.
            self.stats.wbf += 1;
        }
        if one_shot & GCMD_SFL != 0 {
            if self.cfg.cap & CAP_AFL != 0 {
                self.gsts |= GCMD_SFL;
            } else {
                self.violation("GCMD.SFL without advanced fault logging support".into());
            }
        }
        if one_shot & GCMD_SIRTP != 0 {
            if self.cfg.ecap & ECAP_IR != 0 {
                self.gsts |= GCMD_SIRTP;
            } else {
                self.violation("GCMD.SIRTP without interrupt remapping support".into());
            }
        }
        if changed & GCMD_TE != 0 {
            if v & GCMD_TE != 0 {
                if self.gsts & GCMD_SRTP == 0 {
                    self.violation(
                        "translation enabled before the root table pointer was set".into(),
                    );
                }
                self.gsts |= GCMD_TE;
                self.stats.te_enables += 1;
            } else {
                self.gsts &= !GCMD_TE;
                self.stats.te_disables += 1;
            }
        }
        if changed & GCMD_QIE != 0 {
            if v & GCMD_QIE != 0 {
                self.enable_qi();
            } else {
                self.disable_qi();
            }
        }
        if changed & GCMD_EAFL != 0 {
            if self.cfg.cap & CAP_AFL != 0 {
                self.gsts ^= GCMD_EAFL;
            } else {
                self.violation("GCMD.EAFL without advanced fault logging support".into());
            }
        }
        for bit in [GCMD_IRE, GCMD_CFI] {
            if changed & bit != 0 {
                if self.cfg.ecap & ECAP_IR != 0 {
                    self.gsts ^= bit;
                } else {
                    self.violation(format!(
                        "GCMD bit {:#x} without interrupt remapping support",
                        bit
                    ));
                }
            }
        }
    }
}

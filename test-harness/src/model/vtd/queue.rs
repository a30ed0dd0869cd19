//! Invalidation: the register-based interface (CCMD, IOTLB registers; spec 6.5.1) and the
//! queued interface (IQA/IQH/IQT and descriptors; spec 6.5.2), and what each granularity removes
//! from the model's caches.
//!
//! Descriptor layouts (128-bit, spec 6.5.2.x), low qword unless noted:
//! - context-cache invalidate (type 1): G 5:4, DID 31:16, SID 47:32, FM 49:48.
//! - IOTLB invalidate (type 2): G 5:4, DW 6, DR 7, DID 31:16; high: AM 5:0, IH 6, ADDR 63:12.
//! - device-TLB invalidate (type 3), interrupt entry cache invalidate (type 4).
//! - invalidation wait (type 5): IF 4, SW 5, FN 6, PD 7, status data 63:32; high: address 63:2.
//!
//! The type is bits 3:0 with bits 11:9 as its high part (must be 0 for the legacy types).

use super::regs::*;
use super::{Granularity, InvalidationRecord, VtdModel};

/// Context-cache descriptor reserved bits (low qword): 15:6 (includes the type high bits) and
/// 63:50. The high qword is reserved entirely.
const CC_RSVD_LO: u64 = 0xfffc_0000_0000_ffc0;
/// IOTLB descriptor reserved bits: low 63:32 and 15:8, high 11:7.
const IOTLB_RSVD_LO: u64 = 0xffff_ffff_0000_ff00;
const IOTLB_RSVD_HI: u64 = 0xf80;
/// Wait descriptor reserved bits: low 31:8 (type high bits and beyond), high 1:0.
const WAIT_RSVD_LO: u64 = 0xffff_ff00;
const WAIT_RSVD_HI: u64 = 0x3;

impl VtdModel {
    /// The DID with the bits beyond the implemented domain-id width dropped.
    fn did_mask(&self, did: u64) -> u16 {
        (did & ((1u64 << self.did_bits()) - 1)) as u16
    }

    /// Context-cache invalidation of granularity `g` (1 global, 2 domain, 3 device). Returns the
    /// actual granularity (0 = ignored, an invalid request).
    pub(super) fn inv_context(&mut self, g: u8, did: u16, sid: u16, fm: u8, queued: bool) -> u8 {
        let gran = match g {
            1 => {
                self.ctx_cache.clear();
                self.stats.cc_inv_global += 1;
                Granularity::Global
            }
            2 => {
                self.ctx_cache.retain(|_, e| e.did != did);
                self.stats.cc_inv_domain += 1;
                Granularity::Domain
            }
            3 => {
                // FM masks the low 0..=3 function bits of the SID (spec 6.5.2.1).
                let fmask: u16 = match fm {
                    0 => 0,
                    1 => 0b100,
                    2 => 0b110,
                    _ => 0b111,
                };
                // Entries are tagged by SID and by the DID of the context entry; negative entries
                // (caching mode) carry DID 0, so software must name DID 0 to drop them.
                self.ctx_cache
                    .retain(|&s, e| !((s & !fmask) == (sid & !fmask) && e.did == did));
                self.stats.cc_inv_device += 1;
                Granularity::Device
            }
            _ => {
                self.violation(format!("context-cache invalidation with granularity {g}"));
                return 0;
            }
        };
        self.inv_log.push(InvalidationRecord::Context {
            granularity: gran,
            did,
            sid,
            fm,
            queued,
        });
        g
    }

    /// IOTLB (and paging-structure cache) invalidation of granularity `g` (1 global, 2 domain,
    /// 3 page-selective within domain). Returns the actual granularity (0 = ignored).
    pub(super) fn inv_iotlb(
        &mut self,
        g: u8,
        did: u16,
        addr: u64,
        am: u8,
        ih: bool,
        queued: bool,
    ) -> u8 {
        let actual = match g {
            1 => {
                self.iotlb.clear();
                self.psc.clear();
                self.stats.iotlb_inv_global += 1;
                1
            }
            2 => {
                self.iotlb.retain(|k, _| k.0 != did);
                self.psc.retain(|k, _| k.0 != did);
                self.stats.iotlb_inv_domain += 1;
                2
            }
            3 if self.cfg.cap & CAP_PSI == 0 => {
                // Without page-selective support the request is carried out domain-wide
                // (spec 11.4.8.1: hardware may invalidate at a coarser granularity).
                self.iotlb.retain(|k, _| k.0 != did);
                self.psc.retain(|k, _| k.0 != did);
                self.stats.iotlb_inv_domain += 1;
                2
            }
            3 => {
                if u64::from(am) > self.mamv() {
                    self.violation(format!(
                        "page-selective invalidation with AM {am} > MAMV {}",
                        self.mamv()
                    ));
                    return 0;
                }
                let size = 1u64 << (12 + u32::from(am));
                if addr & (size - 1) & !0xfff != 0 {
                    self.violation(format!(
                        "page-selective invalidation address {addr:#x} not aligned to AM {am}"
                    ));
                }
                let base = addr & !(size - 1) & !0xfff;
                let end = base.saturating_add(size);
                let lenient = self.cfg.psi_overlap_invalidates_superpages;
                // Leaf entries: the spec makes software responsible for an AM that covers a
                // whole superpage ("at least 9 for a 2 MiB page", spec 11.4.8.2). Strictly, only
                // entries the range covers entirely go; with `psi_overlap_invalidates_superpages`
                // any overlapping entry goes (QEMU's behaviour).
                self.iotlb.retain(|k, e| {
                    if k.0 != did {
                        return true;
                    }
                    let eb = k.2;
                    let ee = eb + (1u64 << e.shift);
                    let hit = if lenient {
                        eb < end && base < ee
                    } else {
                        base <= eb && ee <= end
                    };
                    !hit
                });
                // Non-leaf entries that map any part of the range, unless IH says only leaves
                // changed (spec 6.5.1.2 / 11.4.8.2).
                if !ih {
                    self.psc.retain(|k, _| {
                        if k.0 != did {
                            return true;
                        }
                        let shift = 12 + 9 * (u32::from(k.1) - 1);
                        let eb = k.2 << shift;
                        let ee = eb.saturating_add(1u64 << shift);
                        !(eb < end && base < ee)
                    });
                }
                self.stats.iotlb_inv_page += 1;
                3
            }
            _ => {
                self.violation(format!("IOTLB invalidation with granularity {g}"));
                return 0;
            }
        };
        let granularity = match actual {
            1 => Granularity::Global,
            2 => Granularity::Domain,
            _ => Granularity::Page,
        };
        self.inv_log.push(InvalidationRecord::Iotlb {
            requested: g,
            granularity,
            did,
            addr,
            am,
            ih,
            queued,
        });
        actual
    }

    /// CCMD written with ICC = 1 (spec 11.4.6.1). Ignored while queued invalidation is enabled
    /// (ICC then stays set, as in QEMU).
    pub(super) fn register_context_invalidate(&mut self) {
        if self.gsts & GCMD_QIE != 0 {
            self.stats.register_inv_ignored += 1;
            self.violation("CCMD invalidation while queued invalidation is enabled".into());
            return;
        }
        let v = self.ccmd;
        let g = ((v >> CCMD_CIRG_SHIFT) & 3) as u8;
        let did = self.did_mask(v & 0xffff);
        let sid = (v >> 16) as u16;
        let fm = ((v >> 32) & 3) as u8;
        self.stats.register_invalidations += 1;
        let actual = self.inv_context(g, did, sid, fm, false);
        self.ccmd =
            (v & !CCMD_ICC & !(3 << CCMD_CAIG_SHIFT)) | (u64::from(actual) << CCMD_CAIG_SHIFT);
    }

    /// IOTLB register written with IVT = 1 (spec 11.4.8.1), using IVA for page-selective
    /// requests. Ignored while queued invalidation is enabled (IVT then stays set, as in QEMU).
    pub(super) fn register_iotlb_invalidate(&mut self) {
        if self.gsts & GCMD_QIE != 0 {
            self.stats.register_inv_ignored += 1;
            self.violation(
                "IOTLB register invalidation while queued invalidation is enabled".into(),
            );
            return;
        }
        let v = self.iotlb_reg;
        let g = ((v >> IOTLB_IIRG_SHIFT) & 3) as u8;
        let did = self.did_mask((v >> IOTLB_DID_SHIFT) & 0xffff);
        let iva = self.iva;
        if iva & 0xf80 != 0 {
            self.violation(format!("IVA {iva:#x} has reserved bits set"));
        }
        self.stats.register_invalidations += 1;
        let actual = self.inv_iotlb(
            g,
            did,
            iva & !0xfff,
            (iva & 0x3f) as u8,
            iva & 0x40 != 0,
            false,
        );
        self.iotlb_reg =
            (v & !IOTLB_IVT & !(3 << IOTLB_IAIG_SHIFT)) | (u64::from(actual) << IOTLB_IAIG_SHIFT);
    }

    /// GCMD.QIE set: latches IQA and starts fetching if IQT is already ahead of IQH.
    pub(super) fn enable_qi(&mut self) {
        if self.cfg.ecap & ECAP_QI == 0 {
            self.violation("GCMD.QIE without queued invalidation support".into());
            return;
        }
        let dw = self.iqa & (1 << 11) != 0;
        if dw && self.cfg.ecap & ECAP_SMTS == 0 {
            self.violation("IQA.DW = 1 (256-bit descriptors) without scalable mode".into());
        }
        if self.iqa & 0x7f8 != 0 {
            self.violation(format!("IQA {:#x} has reserved bits set", self.iqa));
        }
        self.iq_base = self.iqa & !0xfff & self.haw_mask();
        self.iq_wide = dw && self.cfg.ecap & ECAP_SMTS != 0;
        self.iq_bytes = 4096u64 << (self.iqa & 7);
        self.gsts |= GCMD_QIE;
        self.stats.qi_enables += 1;
        if self.iqt != self.iqh {
            self.violation("queued invalidation enabled with IQT != IQH".into());
            self.process_queue();
        }
    }

    /// GCMD.QIE cleared: allowed only when the queue is empty and has no error; IQH then resets
    /// to 0 (spec 11.4.7.1). Otherwise refused (QIES stays set), as QEMU does.
    pub(super) fn disable_qi(&mut self) {
        if self.iqh != self.iqt || self.fsts & FSTS_IQE != 0 {
            self.violation(
                "queued invalidation disabled with IQH != IQT or IQE set; refused".into(),
            );
            return;
        }
        self.iqh = 0;
        self.gsts &= !GCMD_QIE;
    }

    /// Fetches and carries out descriptors from IQH up to IQT (spec 6.5.2). On an invalid
    /// descriptor sets FSTS.IQE, leaves IQH pointing at it and stops.
    pub(super) fn process_queue(&mut self) {
        if self.gsts & GCMD_QIE == 0 || self.fsts & FSTS_IQE != 0 {
            return;
        }
        let step = if self.iq_wide { 32 } else { 16 };
        if self.iqt >= self.iq_bytes || self.iqt % step != 0 {
            let t = self.iqt;
            self.queue_error(1, format!("IQT {t:#x} outside the queue or misaligned"));
            return;
        }
        while self.iqh != self.iqt {
            let a = self.iq_base + self.iqh;
            let (lo, hi) = {
                let m = self.mem.borrow();
                (m.read(a), m.read(a + 8))
            };
            self.stats.descriptors += 1;
            if let Err(msg) = self.exec_descriptor(lo, hi) {
                self.queue_error(3, msg);
                return;
            }
            self.iqh = (self.iqh + step) % self.iq_bytes;
        }
    }

    /// Sets IQE (with the IQEI code in IQERCD) and raises a fault event.
    fn queue_error(&mut self, iqei: u64, msg: String) {
        let before = self.fsts_value()
            & (FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE | FSTS_APF | FSTS_AFO);
        self.fsts |= FSTS_IQE;
        self.iqercd = iqei;
        self.stats.queue_errors += 1;
        self.violation(format!("invalidation queue error: {msg}"));
        self.fault_event(before);
    }

    /// Carries out one descriptor.
    fn exec_descriptor(&mut self, lo: u64, hi: u64) -> Result<(), String> {
        let ty = (lo & 0xf) | (((lo >> 9) & 7) << 4);
        match ty {
            1 => {
                if lo & CC_RSVD_LO != 0 || hi != 0 {
                    return Err(format!(
                        "context-cache descriptor {lo:#x}/{hi:#x} has reserved bits"
                    ));
                }
                let g = ((lo >> 4) & 3) as u8;
                if g == 0 {
                    return Err("context-cache descriptor with granularity 0".into());
                }
                let did = self.did_mask((lo >> 16) & 0xffff);
                let sid = (lo >> 32) as u16;
                let fm = ((lo >> 48) & 3) as u8;
                self.inv_context(g, did, sid, fm, true);
                Ok(())
            }
            2 => {
                if lo & IOTLB_RSVD_LO != 0 || hi & IOTLB_RSVD_HI != 0 {
                    return Err(format!(
                        "IOTLB descriptor {lo:#x}/{hi:#x} has reserved bits"
                    ));
                }
                let g = ((lo >> 4) & 3) as u8;
                if g == 0 {
                    return Err("IOTLB descriptor with granularity 0".into());
                }
                let did = self.did_mask((lo >> 16) & 0xffff);
                let am = (hi & 0x3f) as u8;
                if g == 3 && u64::from(am) > self.mamv() {
                    return Err(format!("IOTLB descriptor AM {am} > MAMV {}", self.mamv()));
                }
                self.inv_iotlb(g, did, hi & !0xfff, am, hi & 0x40 != 0, true);
                Ok(())
            }
            3 if self.cfg.ecap & ECAP_DT != 0 => {
                self.stats.dev_tlb_invalidations += 1;
                Ok(())
            }
            4 if self.cfg.ecap & ECAP_IR != 0 => {
                self.stats.iec_invalidations += 1;
                Ok(())
            }
            5 => {
                if lo & WAIT_RSVD_LO != 0 || hi & WAIT_RSVD_HI != 0 {
                    return Err(format!("wait descriptor {lo:#x}/{hi:#x} has reserved bits"));
                }
                self.stats.wait_descriptors += 1;
                let status_write = lo & (1 << 5) != 0;
                let interrupt = lo & (1 << 4) != 0;
                let data = (lo >> 32) as u32;
                let addr = hi & !3;
                if status_write {
                    self.mem.borrow_mut().write32(addr, data);
                }
                if interrupt {
                    self.completion_event();
                }
                self.inv_log.push(InvalidationRecord::Wait {
                    status_write: status_write.then_some((addr, data)),
                    interrupt,
                    fence: lo & (1 << 6) != 0,
                });
                Ok(())
            }
            _ => Err(format!(
                "unsupported descriptor type {ty} ({lo:#x}/{hi:#x})"
            )),
        }
    }

    /// Invalidation completion event (wait descriptor with IF = 1): sets ICS.IWC and interrupts
    /// unless IECTL.IM is set (then IECTL.IP stays set). Nothing new while IWC is still set.
    fn completion_event(&mut self) {
        if self.ics & ICS_IWC != 0 {
            return;
        }
        self.ics |= ICS_IWC;
        self.iectl |= ECTL_IP;
        if self.iectl & ECTL_IM == 0 {
            self.iectl &= !ECTL_IP;
            self.stats.inv_interrupts += 1;
        }
    }
}

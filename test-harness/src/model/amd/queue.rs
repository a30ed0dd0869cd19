//! Command processing (AMD IOMMU spec 2.4 "Commands") and what each invalidation removes
//! from the model's caches.
//!
//! Commands are 128 bits: the opcode in bits 63:60 of the first quadword.
//! - 1h COMPLETION_WAIT: s (bit 0) stores the second quadword to StoreAddress (bits 51:3),
//!   i (bit 1) sets ComWaitInt (interrupt with ComWaitIntEn), f (bit 2) flush; bits 59:52
//!   reserved.
//! - 2h INVALIDATE_DEVTAB_ENTRY: DeviceID in bits 15:0; everything else reserved.
//! - 3h INVALIDATE_IOMMU_PAGES: PASID 19:0, DomainID 47:32, reserved 31:20 and 59:48;
//!   second quadword S (0), PDE (1), GN (2), reserved 11:3, Address 63:12. With S = 0 one
//!   4 KiB page; with S = 1 a naturally aligned range twice as large as the lowest zero
//!   Address bit at or above bit 12. Without PDE only leaf translations go; with PDE the
//!   cached page directory entries of the range too. A translation of a page larger than the
//!   range goes only when the range covers all of it (unless
//!   [`super::AmdModelConfig::partial_range_invalidates`]).
//! - 4h INVALIDATE_IOTLB_PAGES (device IOTLBs; legal with IotlbSup, nothing to do here).
//! - 5h INVALIDATE_INTERRUPT_TABLE: DeviceID 15:0 (interrupt remapping is not modelled).
//! - 6h PREFETCH_IOMMU_PAGES (with PreFSup), 7h COMPLETE_PPR_REQUEST (with PPRSup): no effect.
//! - 8h INVALIDATE_IOMMU_ALL (only with IASup): every cache.
//!
//! Any other opcode, a reserved bit set, or a command the unit does not support stops the
//! buffer: ILLEGAL_COMMAND_ERROR is logged with the command's address, CmdBufRun clears and
//! the head stays at the command until software restarts the buffer.

use super::fault::{Event, EventCode};
use super::regs::*;
use super::{AmdModel, InvalidationRecord};

impl AmdModel {
    /// Entries of the command buffer (ComLen of the base register).
    pub(super) fn cmd_entries(&self) -> u64 {
        1u64 << ((self.cmd_base >> 56) & 0xf).max(8)
    }

    /// Executes commands from the head up to the tail while the buffer runs.
    pub(super) fn process_commands(&mut self) {
        if self.cfg.cmd_hung {
            return;
        }
        let size = self.cmd_entries() * 16;
        if self.cmd_tail >= size {
            let t = self.cmd_tail;
            self.violation(format!("command tail {t:#x} beyond the buffer"));
            return;
        }
        while self.status & ST_CMD_RUN != 0 && self.cmd_head != self.cmd_tail {
            let pa = (self.cmd_base & 0x000f_ffff_ffff_f000) + self.cmd_head;
            let (w0, w1) = {
                let m = self.mem.borrow();
                (m.read(pa), m.read(pa + 8))
            };
            self.stats.commands += 1;
            if let Err(why) = self.execute(w0, w1) {
                self.stats.illegal_commands += 1;
                self.violation(format!("illegal command {w0:#018x} {w1:#018x}: {why}"));
                self.raise(Event {
                    code: EventCode::IllegalCommandError,
                    device: 0,
                    domain: 0,
                    addr: pa,
                    present: false,
                    write: false,
                    reserved: false,
                });
                self.status &= !ST_CMD_RUN;
                self.cmd_halted = true;
                return;
            }
            self.cmd_head = (self.cmd_head + 16) % size;
        }
    }

    fn execute(&mut self, w0: u64, w1: u64) -> Result<(), &'static str> {
        match w0 >> 60 {
            0x1 => {
                if w0 & (0xff << 52) != 0 {
                    return Err("COMPLETION_WAIT reserved bits 59:52");
                }
                let store = w0 & 1 != 0;
                let int = w0 & 2 != 0;
                let addr = w0 & 0x000f_ffff_ffff_fff8;
                if store {
                    self.mem.borrow_mut().write(addr, w1);
                }
                if int {
                    self.status |= ST_COMWAIT_INT;
                    if self.control & CTL_COMWAIT_INT_EN != 0 {
                        self.signal_msi();
                    }
                }
                self.stats.completion_waits += 1;
                self.inv_log.push(InvalidationRecord::CompletionWait {
                    store: store.then_some((addr, w1)),
                });
                Ok(())
            }
            0x2 => {
                if w0 & !(0xf << 60 | 0xffff) != 0 || w1 != 0 {
                    return Err("INVALIDATE_DEVTAB_ENTRY reserved bits");
                }
                let dev = w0 as u16;
                self.dte_cache.remove(&dev);
                self.stats.inv_devtab += 1;
                self.inv_log
                    .push(InvalidationRecord::DevTab { device: dev });
                Ok(())
            }
            0x3 => {
                if w0 & ((0xfff << 20) | (0xfff << 48)) != 0 || w1 & (0x1ff << 3) != 0 {
                    return Err("INVALIDATE_IOMMU_PAGES reserved bits");
                }
                let gn = w1 & 4 != 0;
                if gn && self.cfg.efr & EFR_GT == 0 {
                    return Err("INVALIDATE_IOMMU_PAGES with GN on a unit without GTSup");
                }
                if !gn && w0 & 0xf_ffff != 0 {
                    return Err("INVALIDATE_IOMMU_PAGES with a PASID but GN = 0");
                }
                let domain = (w0 >> 32) as u16;
                let (first, last) = decode_range(w1);
                let pde = w1 & 2 != 0;
                self.invalidate_pages(domain, first, last, pde);
                self.stats.inv_pages += 1;
                self.inv_log.push(InvalidationRecord::Pages {
                    domain,
                    first,
                    last,
                    pde,
                });
                Ok(())
            }
            0x4 if self.cfg.iotlb_sup => Ok(()),
            0x5 => {
                if w0 & !(0xf << 60 | 0xffff) != 0 || w1 != 0 {
                    return Err("INVALIDATE_INTERRUPT_TABLE reserved bits");
                }
                Ok(())
            }
            0x6 if self.cfg.efr & EFR_PREF != 0 => Ok(()),
            0x7 if self.cfg.efr & EFR_PPR != 0 => Ok(()),
            0x8 if self.cfg.efr & EFR_IA != 0 => {
                if w0 & !(0xf << 60) != 0 || w1 != 0 {
                    return Err("INVALIDATE_IOMMU_ALL reserved bits");
                }
                self.dte_cache.clear();
                self.iotlb.clear();
                self.pde_cache.clear();
                self.stats.inv_all += 1;
                self.inv_log.push(InvalidationRecord::All);
                Ok(())
            }
            0x8 => Err("INVALIDATE_IOMMU_ALL on a unit without IASup"),
            _ => Err("unknown or unsupported opcode"),
        }
    }

    /// Drops the domain's translations overlapping `[first, last]`, and with `pde` its cached
    /// page directory entries overlapping it.
    fn invalidate_pages(&mut self, domain: u16, first: u64, last: u64, pde: bool) {
        let partial = self.cfg.partial_range_invalidates;
        self.iotlb.retain(|&(d, base), e| {
            let end = base.saturating_add((1u64 << e.shift) - 1);
            let hit = if partial {
                base <= last && end >= first
            } else {
                base >= first && end <= last
            };
            !(d == domain && hit)
        });
        if pde {
            self.pde_cache.retain(|&(d, level, prefix), _| {
                let shift = super::tables::level_shift(level + 1);
                let lo = if shift >= 64 { 0 } else { prefix << shift };
                let hi = if shift >= 64 {
                    u64::MAX
                } else {
                    lo.saturating_add((1u64 << shift) - 1)
                };
                !(d == domain && lo <= last && hi >= first)
            });
        }
    }
}

/// The inclusive range an INVALIDATE_IOMMU_PAGES second quadword names (2.4.3).
pub fn decode_range(w1: u64) -> (u64, u64) {
    let addr = w1 & !0xfff;
    if w1 & 1 == 0 {
        return (addr, addr + 0xfff);
    }
    let z = 12 + (addr >> 12).trailing_ones();
    if z >= 63 {
        return (0, u64::MAX);
    }
    let size = 1u64 << (z + 1);
    let base = addr & !(size - 1);
    (base, base + (size - 1))
}

#[cfg(test)]
mod tests {
    use super::decode_range;

    #[test]
    fn range_decoding() {
        assert_eq!(decode_range(0x5000), (0x5000, 0x5fff));
        assert_eq!(decode_range(0x4000 | 1), (0x4000, 0x5fff));
        assert_eq!(decode_range(0x5000 | 1), (0x4000, 0x7fff));
        assert_eq!(
            decode_range(0x20_0000 | 0xf_f000 | 1),
            (0x20_0000, 0x3f_ffff)
        );
        assert_eq!(decode_range(0x7fff_ffff_ffff_f000 | 1), (0, u64::MAX));
        assert_eq!(decode_range(u64::MAX), (0, u64::MAX));
    }
}

//! Event records and the event log (AMD IOMMU spec 2.5 "Event Logging").
//!
//! Every record is 16 bytes: DeviceID (bits 15:0), a type-specific field in bits 47:32
//! (DomainID for IO_PAGE_FAULT), flags in bits 59:48, EventCode in bits 63:60, and an address
//! in the second quadword. The log is a ring at the Event Log Base with `2^EventLen` records;
//! the IOMMU writes at the tail and advances the Tail Pointer, software consumes from the
//! head. A record that finds the log full is dropped, EventOverflow is set and logging stops
//! (EventLogRun = 0) until software restarts the log. With EventIntEn, EventLogInt is set for
//! every record written and for an overflow, and an interrupt signalled when it becomes set
//! (software acknowledges it, RW1C, to have the next record interrupt again).

use super::AmdModel;
use super::regs::*;

/// Event codes (2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventCode {
    /// 1h ILLEGAL_DEV_TABLE_ENTRY.
    IllegalDevTableEntry = 0x1,
    /// 2h IO_PAGE_FAULT.
    IoPageFault = 0x2,
    /// 3h DEV_TAB_HARDWARE_ERROR.
    DevTabHardwareError = 0x3,
    /// 4h PAGE_TAB_HARDWARE_ERROR.
    PageTabHardwareError = 0x4,
    /// 5h ILLEGAL_COMMAND_ERROR.
    IllegalCommandError = 0x5,
    /// 6h COMMAND_HARDWARE_ERROR.
    CommandHardwareError = 0x6,
}

/// One event as the model raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// EventCode.
    pub code: EventCode,
    /// DeviceID.
    pub device: u16,
    /// DomainID (IO_PAGE_FAULT), else 0.
    pub domain: u16,
    /// The address: the request's IOVA, or the command's physical address.
    pub addr: u64,
    /// PR: the fault happened at a present entry (a permission violation).
    pub present: bool,
    /// RW: the request was a write.
    pub write: bool,
    /// RZ: a reserved bit or malformed entry was met.
    pub reserved: bool,
}

impl Event {
    /// The record's two quadwords (IO_PAGE_FAULT flags: PR bit 52, RW bit 53, RZ bit 55).
    pub fn encode(&self) -> [u64; 2] {
        let flags = (u64::from(self.present) << 52)
            | (u64::from(self.write) << 53)
            | (u64::from(self.reserved) << 55);
        [
            u64::from(self.device)
                | (u64::from(self.domain) << 32)
                | flags
                | ((self.code as u64) << 60),
            self.addr,
        ]
    }
}

impl AmdModel {
    /// Entries of the event log (EventLen of the base register).
    pub(super) fn evt_entries(&self) -> u64 {
        1u64 << ((self.evt_base >> 56) & 0xf).max(8)
    }

    /// Raises an event: kept in [`AmdModel::events`], written to the log when logging runs
    /// and there is room; an overflow stops logging.
    pub(super) fn raise(&mut self, ev: Event) {
        self.events.push(ev);
        if !self.cfg.log_events || self.status & ST_EVT_RUN == 0 {
            self.stats.events_dropped += 1;
            return;
        }
        let size = self.evt_entries() * 16;
        let next = (self.evt_tail + 16) % size;
        if next == self.evt_head {
            // Full: dropped, overflow, logging stops until restarted.
            self.status |= ST_EVT_OVERFLOW;
            self.status &= !ST_EVT_RUN;
            self.stats.events_dropped += 1;
            self.stats.overflows += 1;
            self.event_interrupt();
            return;
        }
        let base = self.evt_base & 0x000f_ffff_ffff_f000;
        let [w0, w1] = ev.encode();
        {
            let mut m = self.mem.borrow_mut();
            m.write(base + self.evt_tail, w0);
            m.write(base + self.evt_tail + 8, w1);
        }
        self.evt_tail = next;
        self.stats.events_logged += 1;
        self.event_interrupt();
    }

    /// EventLogInt and, with EventIntEn, an interrupt when EventLogInt becomes set (a unit
    /// whose driver never acknowledges it raises no second one).
    fn event_interrupt(&mut self) {
        if self.control & CTL_EVT_INT_EN == 0 {
            return;
        }
        let was = self.status & ST_EVT_INT != 0;
        self.status |= ST_EVT_INT;
        if !was {
            self.signal_msi();
        }
    }

    /// Sends the MSI the PCI function is programmed with, if MSI and Bus Master are enabled;
    /// otherwise counts a lost interrupt.
    pub(super) fn signal_msi(&mut self) {
        if self.pci.msi_control & 1 != 0 && self.pci.command & 0b100 != 0 {
            self.msis.push((self.pci.msi_addr, self.pci.msi_data));
        } else {
            self.stats.interrupts_lost += 1;
        }
    }

    /// The records between the head and the tail (not yet consumed), decoded.
    pub fn pending_events(&self) -> Vec<[u64; 2]> {
        let base = self.evt_base & 0x000f_ffff_ffff_f000;
        let size = self.evt_entries() * 16;
        let mut out = Vec::new();
        let mut h = self.evt_head;
        let m = self.mem.borrow();
        while h != self.evt_tail {
            out.push([m.read(base + h), m.read(base + h + 8)]);
            h = (h + 16) % size;
        }
        out
    }
}

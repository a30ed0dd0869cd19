//! The event log and its records (AMD IOMMU spec 2.5 "Event Logging"; registers: 3.4 Event
//! Log Base Address, Head and Tail Pointer Registers, MMIO 0010h / 2010h / 2018h, and the
//! Status Register, MMIO 2020h).
//!
//! The IOMMU writes 16-byte event records at the tail and advances the Tail Pointer
//! Register; software reads records from the head and advances the Head Pointer Register.
//! When a record cannot be written because the log is full, the IOMMU sets EventOverflow in
//! the Status Register and stops logging; software restarts it (the event log restart
//! procedure): wait for EventLogRun = 0, clear EventLogEn, clear EventOverflow (RW1C), set
//! EventLogEn again. With EventIntEn set, EventLogInt (RW1C) is set and an interrupt
//! signalled when a record is written; acknowledging EventLogInt before reading the tail
//! makes the next record raise a new one.
//!
//! Record layout (every event type): DeviceID in bits 15:0, a type-specific field in bits
//! 47:32 (DomainID for IO_PAGE_FAULT), flags in bits 59:48, EventCode in bits 63:60, and a
//! 64-bit address in the second word.

use super::AmdCounters;
use super::regs::{self, control, status};
use super::tables::{DeviceTable, DteState};
use crate::backend::{FaultReason, FaultRecord, UnitIndex};
use crate::mem::{PhysAddr, PhysMem, RegisterAccess};

/// Size of one event record in bytes.
pub const EVENT_SIZE: u64 = 16;
/// log2 of the records one 4 KiB frame holds (EventLen = 8, the smallest allowed).
pub const LOG2_ENTRIES: u32 = 8;
/// Records in the log.
pub const ENTRIES: u32 = 1 << LOG2_ENTRIES;

/// EventCode values (bits 63:60; 2.5).
pub mod code {
    /// 2.5.2 ILLEGAL_DEV_TABLE_ENTRY: the DTE used for a request had reserved or
    /// inconsistent fields.
    pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
    /// 2.5.3 IO_PAGE_FAULT: a request was refused by translation or permission.
    pub const IO_PAGE_FAULT: u8 = 0x2;
    /// 2.5.4 DEV_TAB_HARDWARE_ERROR: the DTE could not be read.
    pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
    /// 2.5.5 PAGE_TAB_HARDWARE_ERROR: a page-table entry could not be read.
    pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
    /// 2.5.6 ILLEGAL_COMMAND_ERROR: the command buffer stopped on an illegal command.
    pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
    /// 2.5.7 COMMAND_HARDWARE_ERROR: a command could not be fetched.
    pub const COMMAND_HARDWARE_ERROR: u8 = 0x6;
    /// 2.5.8 IOTLB_INV_TIMEOUT: a device IOTLB did not answer an invalidation.
    pub const IOTLB_INV_TIMEOUT: u8 = 0x7;
    /// 2.5.9 INVALID_DEVICE_REQUEST: a request the DTE does not allow (e.g. a translation
    /// request without ATS).
    pub const INVALID_DEVICE_REQUEST: u8 = 0x8;
    /// INVALID_PPR_REQUEST: a peripheral page request that is not allowed.
    pub const INVALID_PPR_REQUEST: u8 = 0x9;
}

/// IO_PAGE_FAULT flags (bits 59:48 of the first word; 2.5.3).
pub mod flags {
    /// I (bit 51): the request was an interrupt request.
    pub const I: u64 = 1 << 51;
    /// PR (bit 52): the page (or DTE) was present: the fault is a permission violation.
    pub const PR: u64 = 1 << 52;
    /// RW (bit 53): the request was a write.
    pub const RW: u64 = 1 << 53;
    /// RZ (bit 55): a reserved bit was set in a page-table entry.
    pub const RZ: u64 = 1 << 55;
}

/// One record, split into its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Event {
    /// EventCode.
    pub code: u8,
    /// DeviceID (bits 15:0).
    pub device: u16,
    /// Bits 47:32 (DomainID of an IO_PAGE_FAULT).
    pub domain: u16,
    /// The first word (flags in bits 59:48).
    pub word0: u64,
    /// The address of the record (second word).
    pub addr: u64,
}

impl Event {
    /// Splits the two words of a record.
    pub const fn decode(w: [u64; 2]) -> Event {
        Event {
            code: (w[0] >> 60) as u8,
            device: w[0] as u16,
            domain: (w[0] >> 32) as u16,
            word0: w[0],
            addr: w[1],
        }
    }

    /// Whether the record describes a DMA request of a device (and so becomes a
    /// [`FaultRecord`]); the others concern the command buffer or device IOTLBs.
    pub const fn from_device(self) -> bool {
        matches!(
            self.code,
            code::ILLEGAL_DEV_TABLE_ENTRY
                | code::IO_PAGE_FAULT
                | code::DEV_TAB_HARDWARE_ERROR
                | code::PAGE_TAB_HARDWARE_ERROR
                | code::INVALID_DEVICE_REQUEST
                | code::INVALID_PPR_REQUEST
        )
    }
}

/// Turns a device record into a [`FaultRecord`] of `unit`. An IO_PAGE_FAULT is classified
/// against the device's current DTE: a blocked device's is [`FaultReason::Blocked`] (its
/// translation is disabled and IR = IW = 0); an address beyond the width of the DTE's Mode is
/// [`FaultReason::AddressSize`]; a reserved bit in a table entry is reported raw; otherwise
/// PR tells a permission violation from a not-present page. The other device records are
/// reported raw ([`FaultReason::Other`] with the EventCode); the hardware-error records carry
/// a table address, not an IOVA, and report IOVA 0.
pub fn to_record<M: PhysMem + ?Sized>(
    mem: &M,
    table: DeviceTable,
    unit: UnitIndex,
    e: Event,
) -> FaultRecord {
    let write = e.word0 & flags::RW != 0;
    let (iova, reason) = match e.code {
        code::IO_PAGE_FAULT => {
            let state = table
                .entry_pa(u32::from(e.device))
                .map(|pa| DeviceTable::read(mem, pa).state());
            let reason = match state {
                Some(DteState::Translated { levels, .. }) => {
                    let width = 12 + 9 * u32::from(levels);
                    if width < 64 && e.addr >> width != 0 {
                        FaultReason::AddressSize
                    } else if e.word0 & flags::RZ != 0 {
                        FaultReason::Other(u16::from(code::IO_PAGE_FAULT))
                    } else if e.word0 & flags::PR != 0 {
                        FaultReason::Permission
                    } else {
                        FaultReason::NotPresent
                    }
                }
                _ => FaultReason::Blocked,
            };
            (e.addr, reason)
        }
        code::ILLEGAL_DEV_TABLE_ENTRY
        | code::INVALID_DEVICE_REQUEST
        | code::INVALID_PPR_REQUEST => (e.addr, FaultReason::Other(u16::from(e.code))),
        c => (0, FaultReason::Other(u16::from(c))),
    };
    FaultRecord {
        unit,
        device: u32::from(e.device),
        iova,
        write,
        reason,
    }
}

/// The event log of one unit: one 4 KiB frame of 256 records.
#[derive(Debug)]
pub struct EventLog {
    base: PhysAddr,
    /// Software's head, in records.
    head: u32,
}

impl EventLog {
    /// A log in the all-zero frame `base`.
    pub fn new(base: PhysAddr) -> Self {
        EventLog { base, head: 0 }
    }

    /// The log frame.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// The Event Log Base Address Register value (EventLen = 8).
    pub fn register(&self) -> u64 {
        regs::buffer_base(self.base, LOG2_ENTRIES)
    }

    /// Resets the software head (the unit's head and tail are written 0 with it).
    pub fn reset(&mut self) {
        self.head = 0;
    }

    /// Reads every record between our head and the unit's tail: device records go to `sink`
    /// as [`FaultRecord`]s (classified with [`to_record`] against `table`), the others are
    /// counted. Returns the consumed slots to the IOMMU by writing the head, and returns
    /// whether records were lost (EventOverflow; the log is then restarted) and how many
    /// records were delivered. At most one log's worth of records is read per call,
    /// whatever the tail says; a tail that is not a record offset within the log ends the
    /// call without reading.
    #[allow(clippy::too_many_arguments)]
    pub fn drain<R, M>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        coherent: bool,
        table: DeviceTable,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
        counters: &mut AmdCounters,
    ) -> (bool, u64)
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
    {
        let st = regs.read64(regs::STATUS);
        if st & status::EVENT_LOG_INT != 0 {
            // Acknowledged before the tail is read, so that a record written from now on
            // raises a new interrupt.
            regs.write64(regs::STATUS, status::EVENT_LOG_INT);
        }
        let raw = regs.read64(regs::EVT_TAIL);
        let tail = ((raw & regs::PTR_MASK) / EVENT_SIZE) as u32;
        let mut delivered = 0;
        if raw & !regs::PTR_MASK == 0 && tail <= ENTRIES {
            let tail = tail % ENTRIES;
            let mut n = 0;
            while self.head != tail && n < ENTRIES {
                let pa = self.base + u64::from(self.head) * EVENT_SIZE;
                if !coherent {
                    mem.sync_for_cpu(pa, EVENT_SIZE);
                }
                let e = Event::decode([mem.read_u64(pa), mem.read_u64(pa + 8)]);
                if e.from_device() {
                    sink(to_record(mem, table, unit, e));
                    delivered += 1;
                } else {
                    if matches!(
                        e.code,
                        code::ILLEGAL_COMMAND_ERROR | code::COMMAND_HARDWARE_ERROR
                    ) {
                        counters.cmd_error_events += 1;
                    }
                    counters.other_events += 1;
                }
                self.head = (self.head + 1) % ENTRIES;
                n += 1;
            }
            if n > 0 {
                regs.write64(regs::EVT_HEAD, u64::from(self.head) * EVENT_SIZE);
            }
        } else {
            counters.hw_errors += 1;
        }
        counters.faults += delivered;
        let overflow = st & status::EVENT_OVERFLOW != 0;
        if overflow {
            counters.overflows += 1;
            self.restart(regs);
        }
        (overflow, delivered)
    }

    /// The event log restart procedure after an overflow: when EventLogRun reads 0, clear
    /// EventLogEn (and EventIntEn), clear EventOverflow (RW1C), then set them again as they
    /// were. A log still running is left alone (the next drain restarts it).
    fn restart<R: RegisterAccess + ?Sized>(&mut self, regs: &mut R) {
        if regs.read64(regs::STATUS) & status::EVENT_LOG_RUN != 0 {
            regs.write64(regs::STATUS, status::EVENT_OVERFLOW);
            return;
        }
        let ctl = regs.read64(regs::CONTROL);
        regs.write64(
            regs::CONTROL,
            ctl & !(control::EVENT_LOG_EN | control::EVENT_INT_EN),
        );
        regs.write64(regs::STATUS, status::EVENT_OVERFLOW);
        regs.write64(regs::CONTROL, ctl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amd::tables::Dte;

    #[derive(Default)]
    struct Mem(std::collections::BTreeMap<u64, u64>);

    impl PhysMem for Mem {
        fn read_u64(&self, pa: u64) -> u64 {
            *self.0.get(&pa).unwrap_or(&0)
        }
        fn write_u64(&mut self, pa: u64, v: u64) {
            self.0.insert(pa, v);
        }
        fn order_writes(&mut self) {}
    }

    fn put(mem: &mut Mem, dev: u32, d: Dte) {
        for (i, w) in d.0.iter().enumerate() {
            mem.0
                .insert(0x1_0000 + u64::from(dev) * 32 + 8 * i as u64, *w);
        }
    }

    #[test]
    fn io_page_faults_are_classified_against_the_dte() {
        let mut mem = Mem::default();
        let t = DeviceTable::new(0x1_0000, 2);
        put(&mut mem, 8, Dte::translated(0x5000, 4, 3));
        put(&mut mem, 9, Dte::blocked());
        let ev =
            |dev: u64, fl: u64, addr: u64| Event::decode([(2 << 60) | fl | (3 << 32) | dev, addr]);
        let r = to_record(&mem, t, 1, ev(8, flags::RW, 0x1234_5000));
        assert_eq!(
            r,
            FaultRecord {
                unit: 1,
                device: 8,
                iova: 0x1234_5000,
                write: true,
                reason: FaultReason::NotPresent
            }
        );
        assert_eq!(
            to_record(&mem, t, 1, ev(8, flags::PR, 0x1000)).reason,
            FaultReason::Permission
        );
        assert!(!to_record(&mem, t, 1, ev(8, flags::PR, 0x1000)).write);
        assert_eq!(
            to_record(&mem, t, 1, ev(8, 0, 1 << 48)).reason,
            FaultReason::AddressSize
        );
        assert_eq!(
            to_record(&mem, t, 1, ev(8, flags::PR | flags::RZ, 0)).reason,
            FaultReason::Other(2)
        );
        assert_eq!(
            to_record(&mem, t, 1, ev(9, flags::PR, 0x6000)).reason,
            FaultReason::Blocked
        );
        // A DeviceID beyond the table: blocked (nothing translates it).
        assert_eq!(
            to_record(&mem, t, 1, ev(0x300, 0, 0)).reason,
            FaultReason::Blocked
        );
        let hw = Event::decode([(4 << 60) | 8, 0xdead_b000]);
        assert!(hw.from_device());
        assert_eq!(to_record(&mem, t, 0, hw).iova, 0);
        assert_eq!(to_record(&mem, t, 0, hw).reason, FaultReason::Other(4));
        assert!(!Event::decode([5 << 60, 0]).from_device());
    }
}

//! Unit failures injected behind the register interface, the way a hung or misbehaving IOMMU
//! (or a hypervisor's emulation of one) fails: the unit stops completing what is submitted, a
//! submission is lost, a command is rejected with a queue error.
//!
//! [`Faulty`] wraps a model's register handle and intercepts the one register write that hands
//! work to the unit (the *doorbell*: VT-d IQT, SMMUv3 CMDQ_PROD, AMD-Vi Command Buffer Tail,
//! RISC-V IOMMU `cqt`). The model itself is not
//! changed: what it sees is exactly what a unit behind a broken doorbell or a corrupted queue
//! would see, so its own caches show whether the server kept devices away from memory.
//!
//! - [`UnitFault::Hang`]: every doorbell write is dropped until [`Injector::heal`]; nothing
//!   submitted meanwhile is processed or completes (waits time out). The next doorbell after
//!   healing moves the tail past all of it: the unit catches up, as one that resumes would.
//! - [`UnitFault::Lose`]: one submission (after `after` that pass) is lost for good: its
//!   doorbell write is dropped, and before the next doorbell is forwarded its commands are
//!   overwritten with no-ops (a VT-d wait descriptor without status write or interrupt, an
//!   SMMUv3 CMD_SYNC signalling nothing, an AMD-Vi COMPLETION_WAIT without store or
//!   interrupt, a RISC-V `IOFENCE.C` without `AV`, `WSI`, `PR`, `PW`), so its invalidations
//!   are never performed and its
//!   completion never comes, even after the queue moves on.
//! - [`UnitFault::QueueError`]: the first command of one submission (after `after` that pass)
//!   is overwritten with a reserved command type before the doorbell is forwarded: the unit
//!   reports a queue error (VT-d FSTS.IQE, SMMUv3 GERROR.CMDQ_ERR with CERROR_ILL, AMD-Vi
//!   ILLEGAL_COMMAND_ERROR with the command buffer stopped, RISC-V `cqcsr.cmd_ill`).
//!
//! - [`UnitFault::LoseCompletion`]: one submission (after `after` that pass) is performed but
//!   its completion is never signalled: VT-d gets the submission with the wait descriptor's
//!   status write turned off, SMMUv3 and RISC-V get everything but the final CMD_SYNC or
//!   `IOFENCE.C` (which the next doorbell lets through, late), AMD-Vi the submission with its
//!   final COMPLETION_WAIT's store turned off. The waiter times out although the unit did the work:
//!   an attach that fails this way has made the device live.
//!
//! An attach whose entry was written but whose invalidation never completed is
//! [`UnitFault::Lose`] (the unit kept its old cached entry) or [`UnitFault::LoseCompletion`]
//! (it dropped it and uses the new one) armed just before the attach.

use std::cell::RefCell;
use std::rc::Rc;

use iommu_hal::{PhysMem, RegisterAccess};

use crate::sim::SharedMem;

/// A way a unit fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitFault {
    /// The unit stops processing submissions until healed.
    Hang,
    /// One submission is lost, after `after` submissions pass.
    Lose {
        /// Submissions that pass first.
        after: u32,
    },
    /// One submission's first command is rejected with a queue error, after `after` pass.
    QueueError {
        /// Submissions that pass first.
        after: u32,
    },
    /// One submission is performed but never signalled complete, after `after` pass.
    LoseCompletion {
        /// Submissions that pass first.
        after: u32,
    },
}

/// What is armed, and what happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every doorbell is dropped.
    pub hang: bool,
    /// Drop the doorbell after this many more pass.
    pub lose: Option<u32>,
    /// Corrupt the submission after this many more pass.
    pub corrupt: Option<u32>,
    /// Perform but do not signal the submission after this many more pass.
    pub silence: Option<u32>,
    /// Doorbell writes dropped so far.
    pub dropped: u64,
    /// Submissions corrupted so far.
    pub corrupted: u64,
}

/// Shared handle to one unit's [`Plan`]: the test arms it, the [`Faulty`] wrapper obeys it.
#[derive(Clone, Debug, Default)]
pub struct Injector(Rc<RefCell<Plan>>);

impl Injector {
    /// Arms `fault`.
    pub fn inject(&self, fault: UnitFault) {
        let mut p = self.0.borrow_mut();
        match fault {
            UnitFault::Hang => p.hang = true,
            UnitFault::Lose { after } => p.lose = Some(after),
            UnitFault::QueueError { after } => p.corrupt = Some(after),
            UnitFault::LoseCompletion { after } => p.silence = Some(after),
        }
    }
    /// Disarms everything (counts stay).
    pub fn heal(&self) {
        let mut p = self.0.borrow_mut();
        p.hang = false;
        p.lose = None;
        p.corrupt = None;
        p.silence = None;
    }
    /// The plan and counts.
    pub fn plan(&self) -> Plan {
        *self.0.borrow()
    }
    /// Decides the fate of one submission to the unit (and counts it).
    pub fn submission(&self) -> Outcome {
        let mut p = self.0.borrow_mut();
        if p.hang || fires(&mut p.lose) {
            p.dropped += 1;
            return Outcome::Lost;
        }
        if fires(&mut p.corrupt) {
            p.corrupted += 1;
            return Outcome::QueueError;
        }
        if fires(&mut p.silence) {
            p.dropped += 1;
            return Outcome::Silent;
        }
        Outcome::Done
    }
}

/// What happens to one submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Processed and completed.
    Done,
    /// Not processed now; its completion never comes (the wait times out).
    Lost,
    /// Its first command is rejected with a queue error.
    QueueError,
    /// Performed, but its completion is never signalled (the wait times out).
    Silent,
}

/// Counts a countdown down; true when it fires (then it is disarmed).
fn fires(c: &mut Option<u32>) -> bool {
    match c {
        Some(0) => {
            *c = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

/// Which register is the doorbell, and how the queue is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// VT-d queued invalidation: IQA (0x90, base in bits 63:12) and IQT (0x88, byte offset of
    /// the tail in bits 18:4, 128-bit descriptors in legacy mode) (VT-d spec 11.4.9.1-3).
    VtdIqt,
    /// SMMUv3 Command queue: CMDQ_BASE (0x90, ADDR bits 51:5, LOG2SIZE bits 4:0) and CMDQ_PROD
    /// (0x98, index in the low LOG2SIZE bits, then the wrap bit), 16-byte commands (Arm IHI
    /// 0070, 6.3.24-26).
    SmmuCmdqProd,
    /// AMD-Vi command buffer: Command Buffer Base (0x0008, base bits 51:12, ComLen bits
    /// 59:56) and Command Buffer Tail Pointer (0x2008, byte offset of the tail in bits 18:4),
    /// 16-byte commands with the opcode in bits 63:60 (AMD IOMMU spec 3.4, 2.4).
    AmdCmdTail,
    /// RISC-V IOMMU command queue: `cqb` (0x18, PPN bits 53:10, LOG2SZ-1 bits 4:0) and `cqt`
    /// (0x24, the index, no wrap bit), 16-byte commands (RISC-V IOMMU spec 1.0, 5.6 and 5.8).
    RiscvCqt,
}

impl Doorbell {
    const fn base_reg(self) -> usize {
        match self {
            Doorbell::AmdCmdTail => 0x0008,
            Doorbell::RiscvCqt => 0x18,
            _ => 0x90,
        }
    }
    const fn doorbell_reg(self) -> usize {
        match self {
            Doorbell::VtdIqt => 0x88,
            Doorbell::SmmuCmdqProd => 0x98,
            Doorbell::AmdCmdTail => 0x2008,
            Doorbell::RiscvCqt => 0x24,
        }
    }

    /// log2 of a RISC-V command queue's entries.
    const fn riscv_log2(base: u64) -> u64 {
        let l = (base & 0x1f) + 1;
        if l > 19 { 19 } else { l }
    }
}

/// A register handle of one unit with injectable failures (see the module docs).
#[derive(Debug)]
pub struct Faulty<R> {
    inner: R,
    injector: Injector,
    doorbell: Doorbell,
    mem: SharedMem,
    /// The queue base register as last written.
    base: u64,
    /// The doorbell value last forwarded (where the next submission starts).
    tail: u64,
    /// The doorbell value of the last lost submission: commands from `tail` up to it are
    /// overwritten with no-ops before the next doorbell is forwarded.
    lost_until: Option<u64>,
}

impl<R: RegisterAccess> Faulty<R> {
    /// Wraps `inner` (a unit whose doorbell is `doorbell`, whose queue lives in `mem`).
    pub fn new(inner: R, doorbell: Doorbell, mem: SharedMem, injector: Injector) -> Self {
        Faulty {
            inner,
            injector,
            doorbell,
            mem,
            base: 0,
            tail: 0,
            lost_until: None,
        }
    }

    /// The wrapped handle.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Address of the command a submission starting at doorbell value `tail` begins with.
    fn first_command(&self, tail: u64) -> u64 {
        match self.doorbell {
            Doorbell::VtdIqt => (self.base & !0xfff) + (tail & 0x7_fff0),
            Doorbell::AmdCmdTail => (self.base & 0x000f_ffff_ffff_f000) + (tail & 0x7_fff0),
            Doorbell::SmmuCmdqProd => {
                let log2 = (self.base & 0x1f).min(19);
                let index = tail & ((1u64 << log2) - 1);
                (self.base & 0x000f_ffff_ffff_ffe0) + index * 16
            }
            Doorbell::RiscvCqt => {
                let index = tail & ((1u64 << Doorbell::riscv_log2(self.base)) - 1);
                (((self.base >> 10) & ((1u64 << 44) - 1)) << 12) + index * 16
            }
        }
    }

    /// The doorbell value one command after `at`.
    fn next(&self, at: u64) -> u64 {
        match self.doorbell {
            // 128-bit descriptors; the queue holds 2^(QS + 8) of them (IQA.QS, bits 2:0).
            Doorbell::VtdIqt => {
                let bytes = 4096u64 << (self.base & 7);
                (at + 16) % bytes
            }
            // 16-byte commands; the buffer holds 2^ComLen of them.
            Doorbell::AmdCmdTail => {
                let bytes = 16u64 << ((self.base >> 56) & 0xf).max(8);
                (at + 16) % bytes
            }
            // The index and its wrap bit count together modulo twice the queue size.
            Doorbell::SmmuCmdqProd => {
                let log2 = (self.base & 0x1f).min(19);
                (at + 1) & ((2u64 << log2) - 1)
            }
            // The index alone, modulo the queue size.
            Doorbell::RiscvCqt => (at + 1) & ((1u64 << Doorbell::riscv_log2(self.base)) - 1),
        }
    }

    /// Overwrites every command of lost submissions (from `tail` to `lost_until`) with no-ops.
    fn neutralize_lost(&mut self) {
        let Some(until) = self.lost_until.take() else {
            return;
        };
        let mut at = self.tail;
        let mut mem = self.mem.clone();
        while at != until {
            let pa = self.first_command(at);
            let (lo, hi) = match self.doorbell {
                // Invalidation wait descriptor (type 5) with SW = IF = FN = 0: does nothing.
                Doorbell::VtdIqt => (0x5, 0),
                // CMD_SYNC (0x46) with CS = SIG_NONE: does nothing.
                Doorbell::SmmuCmdqProd => (0x46, 0),
                // COMPLETION_WAIT (opcode 1) with s = i = 0: does nothing.
                Doorbell::AmdCmdTail => (1 << 60, 0),
                // IOFENCE.C (opcode 2) without AV, WSI, PR or PW: does nothing.
                Doorbell::RiscvCqt => (0x2, 0),
            };
            mem.write_u64(pa, lo);
            mem.write_u64(pa + 8, hi);
            at = self.next(at);
        }
    }

    /// Whether this doorbell write goes through (its submission corrupted first if due).
    fn pass(&mut self, value: u64) -> bool {
        if value == self.tail {
            // Nothing new submitted (e.g. a queue reset at bring-up).
            return true;
        }
        let outcome = self.injector.submission();
        if outcome == Outcome::Lost && self.injector.plan().hang {
            // Hung: dropped, caught up after healing.
            return false;
        }
        if outcome == Outcome::Lost {
            self.lost_until = Some(value);
            return false;
        }
        // This submission starts after any lost one.
        let start = self.lost_until.unwrap_or(self.tail);
        self.neutralize_lost();
        match outcome {
            Outcome::Lost => return false,
            Outcome::QueueError => {
                let at = self.first_command(start);
                let w = self.mem.read_u64(at);
                let bad = match self.doorbell {
                    // Descriptor type 15 (bits 3:0, with bits 11:9 clear) is reserved.
                    Doorbell::VtdIqt => (w & !0xe0f) | 0xf,
                    // Opcode 0xff (bits 7:0) is reserved: CERROR_ILL.
                    Doorbell::SmmuCmdqProd => w | 0xff,
                    // Opcode 0xf (bits 63:60) is no command: ILLEGAL_COMMAND_ERROR.
                    Doorbell::AmdCmdTail => w | (0xf << 60),
                    // Opcode 5 (bits 6:0) is reserved for future standard use: cmd_ill.
                    Doorbell::RiscvCqt => (w & !0x7f) | 5,
                };
                self.mem.clone().write_u64(at, bad);
            }
            Outcome::Silent => match self.doorbell {
                Doorbell::VtdIqt => {
                    // The last descriptor is the wait: clear its SW (bit 5) and IF (bit 4).
                    let bytes = 4096u64 << (self.base & 7);
                    let last = (value + bytes - 16) % bytes;
                    let at = self.first_command(last);
                    let w = self.mem.read_u64(at);
                    self.mem.clone().write_u64(at, w & !0x30);
                }
                Doorbell::AmdCmdTail => {
                    // The last command is the COMPLETION_WAIT: clear its s (bit 0), i (bit 1).
                    let bytes = 16u64 << ((self.base >> 56) & 0xf).max(8);
                    let last = (value + bytes - 16) % bytes;
                    let at = self.first_command(last);
                    let w = self.mem.read_u64(at);
                    self.mem.clone().write_u64(at, w & !0x3);
                }
                Doorbell::SmmuCmdqProd | Doorbell::RiscvCqt => {
                    // Everything but the final CMD_SYNC or IOFENCE.C now; it goes with the
                    // next doorbell.
                    let wrap = match self.doorbell {
                        Doorbell::RiscvCqt => 1u64 << Doorbell::riscv_log2(self.base),
                        _ => 2u64 << (self.base & 0x1f).min(19),
                    };
                    let short = (value + wrap - 1) % wrap;
                    self.tail = short;
                    self.inner
                        .write32(self.doorbell.doorbell_reg(), short as u32);
                    return false;
                }
            },
            Outcome::Done => {}
        }
        self.tail = value;
        true
    }
}

impl<R: RegisterAccess> RegisterAccess for Faulty<R> {
    fn read32(&mut self, offset: usize) -> u32 {
        self.inner.read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        if offset == self.doorbell.doorbell_reg() && !self.pass(u64::from(value)) {
            return;
        }
        self.inner.write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        if offset == self.doorbell.base_reg() {
            self.base = value;
        }
        if offset == self.doorbell.doorbell_reg() && !self.pass(value) {
            return;
        }
        self.inner.write64(offset, value)
    }
}

//! Driver for QEMU's `edu` educational PCI device (hw/misc/edu.c, docs/specs/edu.rst): a DMA
//! engine with a 4 KiB internal buffer, used as the test device behind the IOMMU.
//!
//! BAR0 registers: 0x00 identification (`0xRRrr00ed`), 0x04 liveness check (reads back the
//! complement), 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count, 0x98 DMA command (bit 0
//! start / busy, bit 1 direction: 1 = from the device buffer to RAM, bit 2 raise an interrupt
//! on completion). The buffer is addressed at 0x40000 on the device side. A transfer completes
//! 100 ms of virtual time after the command; the device's addresses are clamped to its DMA
//! mask (28 bits unless configured with `-device edu,dma_mask=...`), so the driver refuses
//! IOVAs at or above its DMA limit: 256 MiB by default ([`DMA_LIMIT`]), or what
//! [`Edu::with_dma_limit`] was given.

use embedded_hal::delay::DelayNs;
use iommu_hal::mem::RegisterAccess;

use crate::dma::DmaEngine;

/// PCI vendor id of `edu`.
pub const VENDOR: u16 = 0x1234;
/// PCI device id of `edu`.
pub const DEVICE: u16 = 0x11e8;

/// Identification register.
const REG_ID: usize = 0x00;
/// Liveness check register: reads return the complement of the last write.
const REG_LIVENESS: usize = 0x04;
/// DMA source address.
const REG_DMA_SRC: usize = 0x80;
/// DMA destination address.
const REG_DMA_DST: usize = 0x88;
/// DMA transfer count in bytes.
const REG_DMA_CNT: usize = 0x90;
/// DMA command register.
const REG_DMA_CMD: usize = 0x98;
/// Command bit 0: start a transfer; reads as 1 while it runs.
const CMD_RUN: u64 = 1 << 0;
/// Command bit 1: direction, 1 = from the device buffer to RAM.
const CMD_TO_RAM: u64 = 1 << 1;

/// Device-side address of the internal buffer.
pub const BUFFER_ADDR: u64 = 0x40000;
/// Size of the internal buffer.
pub const BUFFER_LEN: u32 = 4096;
/// Highest IOVA (exclusive) the device can emit with its default 28-bit DMA mask: the limit
/// [`Edu::new`] uses.
pub const DMA_LIMIT: u64 = 1 << 28;

/// How long a transfer may take before the driver gives up (the device needs 100 ms).
const DMA_TIMEOUT_MS: u32 = 5_000;

/// What went wrong with `edu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum EduError {
    /// The identification register does not read `0x..0000ed`.
    BadId {
        /// What it read.
        id: u32,
    },
    /// The liveness register did not return the complement of what was written.
    NotAlive,
    /// The transfer would leave the 4 KiB internal buffer, or the IOVA range is beyond the
    /// device's DMA mask (the device would silently clamp it) or wraps.
    OutOfRange,
    /// A transfer did not complete within the bound.
    Timeout,
}

impl core::fmt::Display for EduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EduError::BadId { id } => write!(
                f,
                "edu identification register reads {id:#010x}, not 0x..0000ed: wrong BAR or \
                 not QEMU's edu device"
            ),
            EduError::NotAlive => f.write_str(
                "edu liveness register did not return the complement: BAR not decoded \
                 (memory space disabled?)",
            ),
            EduError::OutOfRange => f.write_str(
                "edu transfer leaves its 4 KiB buffer, wraps, or reaches beyond the device's \
                 DMA mask (give QEMU -device edu,dma_mask=...)",
            ),
            EduError::Timeout => f.write_str("edu DMA transfer did not complete in time"),
        }
    }
}

impl core::error::Error for EduError {}

/// The `edu` device behind its BAR0 registers, with a delay for bounded polling.
pub struct Edu<R, D> {
    regs: R,
    delay: D,
    /// Highest DMA address (exclusive) the device is configured to emit.
    dma_limit: u64,
}

impl<R: RegisterAccess, D: DelayNs> Edu<R, D> {
    /// Checks the identification and liveness registers and returns the driver for a device
    /// with the default 28-bit DMA mask ([`DMA_LIMIT`]). The device's bus mastering must be
    /// enabled by the caller before any DMA.
    pub fn new(regs: R, delay: D) -> Result<Self, EduError> {
        Self::with_dma_limit(regs, delay, DMA_LIMIT)
    }

    /// As [`Edu::new`], for a device whose DMA mask was configured to reach addresses below
    /// `dma_limit` (`-device edu,dma_mask=M` gives `M + 1` for a mask of low ones, e.g.
    /// `1 << 40` for 0xffffffffff). Transfers reaching `dma_limit` or beyond are refused
    /// ([`EduError::OutOfRange`]) rather than silently clamped by the device.
    pub fn with_dma_limit(mut regs: R, delay: D, dma_limit: u64) -> Result<Self, EduError> {
        let id = regs.read32(REG_ID);
        if id & 0xffff != 0x00ed {
            return Err(EduError::BadId { id });
        }
        regs.write32(REG_LIVENESS, 0x1234_5678);
        if regs.read32(REG_LIVENESS) != !0x1234_5678 {
            return Err(EduError::NotAlive);
        }
        let mut edu = Edu {
            regs,
            delay,
            dma_limit,
        };
        // A transfer left running by an earlier user must finish before ours are set up.
        edu.wait_idle()?;
        Ok(edu)
    }

    /// The identification register (major version in bits 31:24, minor in 23:16).
    pub fn id(&mut self) -> u32 {
        self.regs.read32(REG_ID)
    }

    /// Highest DMA address (exclusive) transfers may reach.
    pub fn dma_limit(&self) -> u64 {
        self.dma_limit
    }

    fn wait_idle(&mut self) -> Result<(), EduError> {
        for _ in 0..DMA_TIMEOUT_MS {
            if self.regs.read64(REG_DMA_CMD) & CMD_RUN == 0 {
                return Ok(());
            }
            self.delay.delay_ms(1);
        }
        Err(EduError::Timeout)
    }

    fn check(&self, iova: u64, offset: u32, len: u32) -> Result<(), EduError> {
        let buf_ok = offset.checked_add(len).is_some_and(|end| end <= BUFFER_LEN);
        let iova_ok = iova
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= self.dma_limit);
        if len == 0 || !buf_ok || !iova_ok {
            return Err(EduError::OutOfRange);
        }
        Ok(())
    }

    fn run(&mut self, src: u64, dst: u64, len: u32, cmd: u64) -> Result<(), EduError> {
        self.wait_idle()?;
        self.regs.write64(REG_DMA_SRC, src);
        self.regs.write64(REG_DMA_DST, dst);
        self.regs.write64(REG_DMA_CNT, u64::from(len));
        self.regs.write64(REG_DMA_CMD, cmd | CMD_RUN);
        self.wait_idle()
    }
}

impl<R: RegisterAccess, D: DelayNs> DmaEngine for Edu<R, D> {
    type Error = EduError;

    fn buffer_len(&self) -> u32 {
        BUFFER_LEN
    }

    fn device_read(&mut self, iova: u64, offset: u32, len: u32) -> Result<(), EduError> {
        self.check(iova, offset, len)?;
        self.run(iova, BUFFER_ADDR + u64::from(offset), len, 0)
    }

    fn device_write(&mut self, offset: u32, iova: u64, len: u32) -> Result<(), EduError> {
        self.check(iova, offset, len)?;
        self.run(BUFFER_ADDR + u64::from(offset), iova, len, CMD_TO_RAM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn errors_say_what_was_read() {
        let e = EduError::BadId { id: 0x1234 };
        assert!(e.to_string().contains("0x00001234"), "{e}");
        assert!(EduError::OutOfRange.to_string().contains("dma_mask"));
    }

    /// A register-level stand-in: records writes, completes a transfer after `busy_reads`
    /// polls.
    struct FakeEdu {
        liveness: u32,
        cmd: u64,
        busy_reads: u32,
        writes: Vec<(usize, u64)>,
    }

    impl RegisterAccess for &mut FakeEdu {
        fn read32(&mut self, offset: usize) -> u32 {
            match offset {
                REG_ID => 0x0100_00ed,
                REG_LIVENESS => !self.liveness,
                _ => 0,
            }
        }
        fn write32(&mut self, offset: usize, value: u32) {
            if offset == REG_LIVENESS {
                self.liveness = value;
            }
        }
        fn read64(&mut self, offset: usize) -> u64 {
            if offset == REG_DMA_CMD && self.cmd & CMD_RUN != 0 {
                if self.busy_reads == 0 {
                    self.cmd &= !CMD_RUN;
                } else {
                    self.busy_reads -= 1;
                }
            }
            if offset == REG_DMA_CMD { self.cmd } else { 0 }
        }
        fn write64(&mut self, offset: usize, value: u64) {
            self.writes.push((offset, value));
            if offset == REG_DMA_CMD {
                self.cmd = value;
            }
        }
    }

    struct NoDelay;
    impl DelayNs for NoDelay {
        fn delay_ns(&mut self, _ns: u32) {}
    }

    fn fake(busy_reads: u32) -> FakeEdu {
        FakeEdu {
            liveness: 0,
            cmd: 0,
            busy_reads,
            writes: Vec::new(),
        }
    }

    #[test]
    fn transfers_program_the_registers_and_wait() {
        let mut f = fake(3);
        let mut edu = Edu::new(&mut f, NoDelay).unwrap();
        edu.device_read(0x10_0000, 16, 64).unwrap();
        edu.device_write(0, 0x20_0000, 4096).unwrap();

        assert_eq!(
            f.writes,
            [
                (REG_DMA_SRC, 0x10_0000),
                (REG_DMA_DST, BUFFER_ADDR + 16),
                (REG_DMA_CNT, 64),
                (REG_DMA_CMD, CMD_RUN),
                (REG_DMA_SRC, BUFFER_ADDR),
                (REG_DMA_DST, 0x20_0000),
                (REG_DMA_CNT, 4096),
                (REG_DMA_CMD, CMD_RUN | CMD_TO_RAM),
            ]
        );
    }

    #[test]
    fn out_of_range_transfers_are_refused_before_touching_the_device() {
        let mut f = fake(0);
        let mut edu = Edu::new(&mut f, NoDelay).unwrap();
        assert_eq!(edu.device_read(0, 4000, 97), Err(EduError::OutOfRange));
        assert_eq!(edu.device_read(0, 0, 0), Err(EduError::OutOfRange));
        assert_eq!(
            edu.device_write(0, DMA_LIMIT - 8, 16),
            Err(EduError::OutOfRange)
        );
        assert_eq!(
            edu.device_write(0, u64::MAX - 1, 16),
            Err(EduError::OutOfRange)
        );
        assert_eq!(edu.device_read(0, u32::MAX, 2), Err(EduError::OutOfRange));

        assert!(f.writes.is_empty());
    }

    #[test]
    fn a_wider_dma_limit_reaches_high_memory() {
        let mut f = fake(0);
        let mut edu = Edu::with_dma_limit(&mut f, NoDelay, 1 << 40).unwrap();
        assert_eq!(edu.dma_limit(), 1 << 40);
        edu.device_read(0x4000_0000, 0, 4096).unwrap();
        edu.device_write(0, (1 << 40) - 8, 8).unwrap();
        assert_eq!(
            edu.device_write(0, (1 << 40) - 8, 16),
            Err(EduError::OutOfRange)
        );
        assert_eq!(
            f.writes[..4],
            [
                (REG_DMA_SRC, 0x4000_0000),
                (REG_DMA_DST, BUFFER_ADDR),
                (REG_DMA_CNT, 4096),
                (REG_DMA_CMD, CMD_RUN),
            ]
        );
        let mut f = fake(0);
        let mut edu = Edu::new(&mut f, NoDelay).unwrap();
        assert_eq!(edu.dma_limit(), DMA_LIMIT);
        assert_eq!(
            edu.device_read(0x4000_0000, 0, 8),
            Err(EduError::OutOfRange),
            "default: 28 bits"
        );
    }

    #[test]
    fn a_transfer_that_never_completes_times_out() {
        let mut f = fake(u32::MAX);
        let mut edu = Edu::new(&mut f, NoDelay).unwrap();
        assert_eq!(edu.device_read(0x1000, 0, 8), Err(EduError::Timeout));
    }
}

//! The small DMA-engine interface the test scenarios drive (implemented by QEMU's `edu`).

/// A device that copies between its own internal buffer and memory, addressing memory by
/// IOVA (the address the device emits, translated by the IOMMU when translation is on).
///
/// A DMA that the IOMMU blocks does not make these calls fail: the device reads zeros or its
/// writes are dropped, and only the IOMMU's fault records tell. Errors here are the device's
/// own (bad arguments, a transfer that never completed).
pub trait DmaEngine {
    /// The device's own error.
    type Error: core::fmt::Debug;

    /// Size of the device's internal buffer in bytes.
    fn buffer_len(&self) -> u32;

    /// The device reads `len` bytes of memory at `iova` into its buffer at `offset`, and the
    /// call returns when the transfer is complete.
    fn device_read(&mut self, iova: u64, offset: u32, len: u32) -> Result<(), Self::Error>;

    /// The device writes `len` bytes of its buffer at `offset` to memory at `iova`, and the
    /// call returns when the transfer is complete.
    fn device_write(&mut self, offset: u32, iova: u64, len: u32) -> Result<(), Self::Error>;
}

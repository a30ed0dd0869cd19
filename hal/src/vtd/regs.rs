//! VT-d register map: offsets and bit fields of the remapping unit's register block.
//!
//! Section numbers refer to the Intel VT-d Architecture Specification, chapter 11.4
//! ("Register Descriptions"; chapter 10.4 in revisions before 3.0). Each register is named
//! next to its section so the citation can be checked in any revision.

/// VT-d spec 11.4.1 Version Register (32-bit).
pub const VER: usize = 0x00;
/// VT-d spec 11.4.2 Capability Register (64-bit).
pub const CAP: usize = 0x08;
/// VT-d spec 11.4.3 Extended Capability Register (64-bit).
pub const ECAP: usize = 0x10;
/// VT-d spec 11.4.4 Global Command Register (32-bit, write-only).
pub const GCMD: usize = 0x18;
/// VT-d spec 11.4.5 Global Status Register (32-bit).
pub const GSTS: usize = 0x1c;
/// VT-d spec 11.4.6 Root Table Address Register (64-bit).
pub const RTADDR: usize = 0x20;
/// VT-d spec 11.4.7 Context Command Register (64-bit).
pub const CCMD: usize = 0x28;
/// VT-d spec 11.4.9 Fault Status Register (32-bit).
pub const FSTS: usize = 0x34;
/// VT-d spec 11.4.10 Fault Event Control Register (32-bit).
pub const FECTL: usize = 0x38;
/// VT-d spec 11.4.11 Fault Event Data Register (32-bit).
pub const FEDATA: usize = 0x3c;
/// VT-d spec 11.4.12 Fault Event Address Register (32-bit).
pub const FEADDR: usize = 0x40;
/// VT-d spec 11.4.13 Fault Event Upper Address Register (32-bit).
pub const FEUADDR: usize = 0x44;
/// VT-d spec 11.4.16 Protected Memory Enable Register (32-bit).
pub const PMEN: usize = 0x64;
/// VT-d spec 11.4.21 Invalidation Queue Head Register (64-bit).
pub const IQH: usize = 0x80;
/// VT-d spec 11.4.22 Invalidation Queue Tail Register (64-bit).
pub const IQT: usize = 0x88;
/// VT-d spec 11.4.23 Invalidation Queue Address Register (64-bit).
pub const IQA: usize = 0x90;
/// VT-d spec 11.4.24 Invalidation Completion Status Register (32-bit).
pub const ICS: usize = 0x9c;

/// Size of one fault recording register (VT-d spec 11.4.14 Fault Recording Registers).
pub const FRCD_SIZE: usize = 16;

/// Extracts `width` bits of `v` starting at bit `lo`.
#[inline]
pub const fn bits(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

/// The Capability Register (VT-d spec 11.4.2), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cap(pub u64);

impl Cap {
    /// ND (bits 2:0): number of domain ids supported, `2^(4 + 2 * ND)`. 7 is reserved.
    pub const fn nd(self) -> u32 {
        bits(self.0, 0, 3) as u32
    }
    /// RWBF (bit 4): software must flush the write buffer after changing remapping structures.
    pub const fn rwbf(self) -> bool {
        bits(self.0, 4, 1) != 0
    }
    /// PLMR (bit 5): protected low-memory region supported.
    pub const fn plmr(self) -> bool {
        bits(self.0, 5, 1) != 0
    }
    /// PHMR (bit 6): protected high-memory region supported.
    pub const fn phmr(self) -> bool {
        bits(self.0, 6, 1) != 0
    }
    /// CM (bit 7): caching mode, not-present and erroneous entries may be cached
    /// (VT-d spec 6.1).
    pub const fn cm(self) -> bool {
        bits(self.0, 7, 1) != 0
    }
    /// SAGAW (bits 12:8): supported adjusted guest address widths. Bit 1: 39-bit (3-level),
    /// bit 2: 48-bit (4-level), bit 3: 57-bit (5-level).
    pub const fn sagaw(self) -> u32 {
        bits(self.0, 8, 5) as u32
    }
    /// MGAW (bits 21:16): maximum guest address width minus one.
    pub const fn mgaw(self) -> u32 {
        bits(self.0, 16, 6) as u32
    }
    /// FRO (bits 33:24): offset of the first fault recording register, in 16-byte units.
    pub const fn fro(self) -> u32 {
        bits(self.0, 24, 10) as u32
    }
    /// SLLPS (bits 37:34): second-level large pages. Bit 0: 2 MiB, bit 1: 1 GiB.
    pub const fn sllps(self) -> u32 {
        bits(self.0, 34, 4) as u32
    }
    /// PSI (bit 39): page-selective IOTLB invalidation supported.
    pub const fn psi(self) -> bool {
        bits(self.0, 39, 1) != 0
    }
    /// NFR (bits 47:40): number of fault recording registers minus one.
    pub const fn nfr(self) -> u32 {
        bits(self.0, 40, 8) as u32
    }
    /// MAMV (bits 53:48): largest address mask value of a page-selective invalidation.
    pub const fn mamv(self) -> u32 {
        bits(self.0, 48, 6) as u32
    }
    /// DWD (bit 54): IOTLB invalidations may drain writes.
    pub const fn dwd(self) -> bool {
        bits(self.0, 54, 1) != 0
    }
    /// DRD (bit 55): IOTLB invalidations may drain reads.
    pub const fn drd(self) -> bool {
        bits(self.0, 55, 1) != 0
    }
}

/// The Extended Capability Register (VT-d spec 11.4.3), decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ecap(pub u64);

impl Ecap {
    /// C (bit 0): page-walk coherency, the unit snoops CPU caches when walking.
    pub const fn c(self) -> bool {
        bits(self.0, 0, 1) != 0
    }
    /// QI (bit 1): queued invalidation supported.
    pub const fn qi(self) -> bool {
        bits(self.0, 1, 1) != 0
    }
    /// DT (bit 2): device-TLBs supported.
    pub const fn dt(self) -> bool {
        bits(self.0, 2, 1) != 0
    }
    /// IR (bit 3): interrupt remapping supported.
    pub const fn ir(self) -> bool {
        bits(self.0, 3, 1) != 0
    }
    /// EIM (bit 4): extended interrupt mode (x2APIC): FEUADDR holds the upper 32 bits of the
    /// fault event's message address.
    pub const fn eim(self) -> bool {
        bits(self.0, 4, 1) != 0
    }
    /// PT (bit 6): pass-through translation type supported (never used here).
    pub const fn pt(self) -> bool {
        bits(self.0, 6, 1) != 0
    }
    /// IRO (bits 17:8): offset of the IOTLB registers, in 16-byte units.
    pub const fn iro(self) -> u32 {
        bits(self.0, 8, 10) as u32
    }
    /// SMTS (bit 43): scalable-mode translation supported (this driver uses legacy mode).
    pub const fn smts(self) -> bool {
        bits(self.0, 43, 1) != 0
    }
}

/// Global Command / Global Status bits (VT-d spec 11.4.4 and 11.4.5). A command bit in GCMD
/// and its status bit in GSTS share one position.
pub mod gcmd {
    /// TE / TES (bit 31): translation enable. Persistent.
    pub const TE: u32 = 1 << 31;
    /// SRTP / RTPS (bit 30): set root table pointer. One-shot.
    pub const SRTP: u32 = 1 << 30;
    /// SFL / FLS (bit 29): set fault log. One-shot.
    pub const SFL: u32 = 1 << 29;
    /// EAFL / AFLS (bit 28): advanced fault logging enable. Persistent.
    pub const EAFL: u32 = 1 << 28;
    /// WBF / WBFS (bit 27): write buffer flush. One-shot; WBFS reads 1 while the flush runs.
    pub const WBF: u32 = 1 << 27;
    /// QIE / QIES (bit 26): queued invalidation enable. Persistent.
    pub const QIE: u32 = 1 << 26;
    /// IRE / IRES (bit 25): interrupt remapping enable. Persistent.
    pub const IRE: u32 = 1 << 25;
    /// SIRTP / IRTPS (bit 24): set interrupt remap table pointer. One-shot.
    pub const SIRTP: u32 = 1 << 24;
    /// CFI / CFIS (bit 23): compatibility format interrupts. Persistent.
    pub const CFI: u32 = 1 << 23;
    /// The persistent (enable) bits: the only GSTS bits carried into a new GCMD value.
    pub const PERSISTENT: u32 = TE | EAFL | QIE | IRE | CFI;

    /// The GCMD value that sets (`on`) or clears one persistent bit, or issues one one-shot
    /// command, keeping every other persistent bit as GSTS reports it. One-shot bits are never
    /// carried over from GSTS (their status bits stay set after completion: RTPS, IRTPS).
    pub const fn command(gsts: u32, bit: u32, on: bool) -> u32 {
        let keep = gsts & PERSISTENT;
        if on { keep | bit } else { keep & !bit }
    }
}

/// Root Table Address Register fields (VT-d spec 11.4.6).
pub mod rtaddr {
    /// RTA (bits 63:12): root table base. TTM (bits 11:10) = 00 selects legacy mode.
    pub const ADDR_MASK: u64 = !0xfff;
}

/// Context Command Register fields (VT-d spec 11.4.7).
pub mod ccmd {
    /// ICC (bit 63): invalidate context cache; hardware clears it on completion.
    pub const ICC: u64 = 1 << 63;
    /// CIRG (bits 62:61) = 01: global invalidation.
    pub const GLOBAL: u64 = 1 << 61;
    /// CIRG = 10: domain-selective invalidation.
    pub const DOMAIN: u64 = 2 << 61;
    /// CIRG = 11: device-selective invalidation.
    pub const DEVICE: u64 = 3 << 61;
    /// CAIG (bits 60:59): actual granularity; 00 means the request was not performed.
    pub const fn caig(v: u64) -> u64 {
        super::bits(v, 59, 2)
    }
    /// The register value for one request: `cirg` is one of the granularities above,
    /// FM (bits 33:32), SID (bits 31:16), DID (bits 15:0).
    pub const fn request(cirg: u64, did: u16, sid: u16, fm: u8) -> u64 {
        ICC | cirg | (((fm & 3) as u64) << 32) | ((sid as u64) << 16) | did as u64
    }
}

/// IOTLB Invalidate Register and Invalidate Address Register fields (VT-d spec 11.4.8.1 and
/// 11.4.8.2). Both live at `ECAP.IRO * 16`: IVA first, the IOTLB register 8 bytes later.
pub mod iotlb {
    /// IVT (bit 63): invalidate IOTLB; hardware clears it on completion.
    pub const IVT: u64 = 1 << 63;
    /// IIRG (bits 61:60) = 01: global invalidation.
    pub const GLOBAL: u64 = 1 << 60;
    /// IIRG = 10: domain-selective invalidation.
    pub const DOMAIN: u64 = 2 << 60;
    /// IIRG = 11: page-selective-within-domain invalidation (address in IVA).
    pub const PAGE: u64 = 3 << 60;
    /// DR (bit 49): drain reads.
    pub const DR: u64 = 1 << 49;
    /// DW (bit 48): drain writes.
    pub const DW: u64 = 1 << 48;
    /// IAIG (bits 58:57): actual granularity; 00 means the request was not performed.
    pub const fn iaig(v: u64) -> u64 {
        super::bits(v, 57, 2)
    }
    /// The IOTLB register value for one request (DID in bits 47:32).
    pub const fn request(iirg: u64, did: u16, dr: bool, dw: bool) -> u64 {
        IVT | iirg | ((did as u64) << 32) | if dr { DR } else { 0 } | if dw { DW } else { 0 }
    }
    /// The IVA register value: ADDR (bits 63:12), IH (bit 6), AM (bits 5:0).
    pub const fn address(addr: u64, am: u32, ih: bool) -> u64 {
        (addr & !0xfff) | if ih { 1 << 6 } else { 0 } | (am as u64 & 0x3f)
    }
}

/// Fault Status Register bits (VT-d spec 11.4.9).
pub mod fsts {
    /// PFO (bit 0, RW1C): primary fault overflow, records were lost.
    pub const PFO: u32 = 1 << 0;
    /// PPF (bit 1, RO): primary pending fault, some fault recording register has F set.
    pub const PPF: u32 = 1 << 1;
    /// IQE (bit 4, RW1C): invalidation queue error.
    pub const IQE: u32 = 1 << 4;
    /// ICE (bit 5, RW1C): invalidation completion error (device-TLB).
    pub const ICE: u32 = 1 << 5;
    /// ITE (bit 6, RW1C): invalidation time-out error (device-TLB).
    pub const ITE: u32 = 1 << 6;
    /// The invalidation queue error bits.
    pub const QUEUE_ERRORS: u32 = IQE | ICE | ITE;
    /// FRI (bits 15:8): index of the first fault recording register holding a fault.
    pub const fn fri(v: u32) -> u32 {
        (v >> 8) & 0xff
    }
}

/// Fault Event Control Register bits (VT-d spec 11.4.10) and the message registers' fields
/// (11.4.11 to 11.4.13).
pub mod fectl {
    /// IM (bit 31, RW): interrupt mask; set at reset. While set, a fault event is held pending
    /// (IP) instead of being sent.
    pub const IM: u32 = 1 << 31;
    /// IP (bit 30, RO): a fault event is pending (held by IM, or not yet sent).
    pub const IP: u32 = 1 << 30;
    /// FEDATA: IMD (bits 15:0) is the message data; bits 31:16 (EIMD) exist only on units
    /// with 32-bit message data and are written 0 here.
    pub const DATA_MASK: u32 = 0xffff;
    /// FEADDR: MA (bits 31:2) is the message address; bits 1:0 are reserved.
    pub const ADDR_RESERVED: u64 = 0x3;
}

/// Fault Recording Register fields, upper 64 bits (VT-d spec 11.4.14).
pub mod frcd {
    /// F (bit 127 = bit 63 of the upper half, RW1C): the record holds a fault.
    pub const F: u64 = 1 << 63;
    /// T1 (bit 126 = bit 62 of the upper half): 0 write request, 1 read request.
    pub const T1: u64 = 1 << 62;
    /// FR (bits 103:96 = 39:32 of the upper half): fault reason.
    pub const fn reason(hi: u64) -> u8 {
        super::bits(hi, 32, 8) as u8
    }
    /// SID (bits 79:64 = 15:0 of the upper half): requester id.
    pub const fn sid(hi: u64) -> u16 {
        super::bits(hi, 0, 16) as u16
    }
    /// FI (bits 63:12 of the lower half): the faulting page address.
    pub const FI_MASK: u64 = !0xfff;
}

/// Protected Memory Enable Register bits (VT-d spec 11.4.16).
pub mod pmen {
    /// EPM (bit 31): protected memory regions enabled.
    pub const EPM: u32 = 1 << 31;
    /// PRS (bit 0): protected region status.
    pub const PRS: u32 = 1 << 0;
}

/// Invalidation queue register fields (VT-d spec 11.4.21 to 11.4.24).
pub mod iq {
    /// IQH/IQT: QH/QT (bits 18:4) hold a descriptor index times 16 for 128-bit descriptors.
    pub const PTR_MASK: u64 = 0x7fff0;
    /// IQA: IQA (bits 63:12) queue base; DW (bit 11) = 0 selects 128-bit descriptors;
    /// QS (bits 2:0) gives `2^(QS + 8)` entries.
    pub const ADDR_MASK: u64 = !0xfff;
    /// ICS: IWC (bit 0, RW1C): an invalidation wait descriptor with IF completed.
    pub const ICS_IWC: u32 = 1;
}

/// Version Register fields (VT-d spec 11.4.1).
pub mod ver {
    /// MAX (bits 7:4): major version.
    pub const fn major(v: u32) -> u32 {
        (v >> 4) & 0xf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_cap_decodes() {
        // Measured on QEMU 10.0 q35 intel-iommu (see /work/shared/notes/qemu-iommu.md).
        let cap = Cap(0x00d2_008c_222f_0606);
        assert_eq!(cap.nd(), 6);
        assert!(!cap.rwbf());
        assert!(!cap.cm());
        assert_eq!(cap.sagaw(), 0b0110);
        assert_eq!(cap.mgaw(), 47);
        assert_eq!(cap.fro() * 16, 0x220);
        assert_eq!(cap.sllps(), 0b11);
        assert!(cap.psi());
        assert_eq!(cap.nfr(), 0);
        assert_eq!(cap.mamv(), 18);
        assert!(cap.dwd() && cap.drd());
    }

    #[test]
    fn gcmd_never_carries_one_shot_bits() {
        let gsts = gcmd::TE | gcmd::SRTP | gcmd::QIE | gcmd::WBF | gcmd::SIRTP | gcmd::IRE;
        assert_eq!(
            gcmd::command(gsts, gcmd::WBF, true),
            gcmd::TE | gcmd::QIE | gcmd::IRE | gcmd::WBF
        );
        assert_eq!(gcmd::command(gsts, gcmd::TE, false), gcmd::QIE | gcmd::IRE);
        assert_eq!(gcmd::command(0, gcmd::SRTP, true), gcmd::SRTP);
    }

    #[test]
    fn register_encodings() {
        assert_eq!(
            ccmd::request(ccmd::DEVICE, 5, 0x0108, 0),
            (1 << 63) | (3 << 61) | (0x0108 << 16) | 5
        );
        assert_eq!(
            iotlb::request(iotlb::PAGE, 7, true, false),
            (1 << 63) | (3 << 60) | (7 << 32) | (1 << 49)
        );
        assert_eq!(
            iotlb::address(0x12_3456_7000, 3, true),
            0x12_3456_7000 | 0x40 | 3
        );
    }
}

//! What the modelled unit reads from memory: the device directory table and device contexts
//! (RISC-V IOMMU spec 1.0, chapter 2: "Device-Directory-Table (DDT)", "Device-context
//! fields", "Device-context configuration checks", "Process to locate the Device-context")
//! and first-stage Sv39/Sv48/Sv57 page tables (RISC-V privileged spec, 4.3.2 "Virtual
//! Address Translation Process", 4.4 to 4.6), written from the specifications.

use super::regs::RiscvConfig;
use crate::sim::SharedMem;

/// Fault causes the model raises (3.2, table "Fault record CAUSE field encodings").
pub mod cause {
    /// Read access fault (an address beyond `capabilities.PAS`).
    pub const READ_ACCESS: u16 = 5;
    /// Write/AMO access fault.
    pub const WRITE_ACCESS: u16 = 7;
    /// Read page fault.
    pub const READ_PAGE: u16 = 13;
    /// Write/AMO page fault.
    pub const WRITE_PAGE: u16 = 15;
    /// All inbound transactions disallowed (`ddtp.iommu_mode` = Off).
    pub const ALL_DISALLOWED: u16 = 256;
    /// DDT entry not valid.
    pub const DDT_INVALID: u16 = 258;
    /// DDT entry misconfigured.
    pub const DDT_MISCONFIGURED: u16 = 259;
    /// Transaction type disallowed.
    pub const TTYP_DISALLOWED: u16 = 260;

    /// Whether `DC.tc.DTF` = 1 suppresses reporting of `cause` (the table's last column).
    pub fn suppressed_by_dtf(cause: u16) -> bool {
        !matches!(cause, 256..=259 | 268 | 272 | 273)
    }
}

/// A decoded device context (base or extended format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dc {
    /// The doublewords as read (the base format leaves 4..8 zero).
    pub raw: [u64; 8],
}

/// `tc` bits (2.1, "Translation control (tc)").
pub mod tc {
    /// `V`.
    pub const V: u64 = 1 << 0;
    /// `EN_ATS`.
    pub const EN_ATS: u64 = 1 << 1;
    /// `EN_PRI`.
    pub const EN_PRI: u64 = 1 << 2;
    /// `T2GPA`.
    pub const T2GPA: u64 = 1 << 3;
    /// `DTF`.
    pub const DTF: u64 = 1 << 4;
    /// `PDTV`.
    pub const PDTV: u64 = 1 << 5;
    /// `PRPR`.
    pub const PRPR: u64 = 1 << 6;
    /// `GADE`.
    pub const GADE: u64 = 1 << 7;
    /// `SADE`.
    pub const SADE: u64 = 1 << 8;
    /// `DPE`.
    pub const DPE: u64 = 1 << 9;
    /// `SBE`.
    pub const SBE: u64 = 1 << 10;
    /// `SXL`.
    pub const SXL: u64 = 1 << 11;
    /// Bits 23:12 and 63:32 are reserved; 31:24 are custom (not reserved).
    pub const RESERVED: u64 = (0xfff << 12) | (0xffff_ffff << 32);
}

/// A first-stage translation context: what the walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstStage {
    /// `iosatp.MODE`: 8 Sv39, 9 Sv48, 10 Sv57.
    pub mode: u64,
    /// Root table address.
    pub root: u64,
    /// `ta.PSCID`.
    pub pscid: u32,
}

impl FirstStage {
    /// Levels of the mode.
    pub fn levels(&self) -> u32 {
        match self.mode {
            8 => 3,
            9 => 4,
            _ => 5,
        }
    }
}

/// What a valid, well-formed device context asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcKind {
    /// First stage Bare, second stage Bare: the device's DMA passes untranslated.
    Bare,
    /// First-stage translation.
    FirstStage(FirstStage),
}

impl Dc {
    /// Reads `size` bytes of device context at `pa`.
    pub fn read(mem: &SharedMem, pa: u64, size: u64) -> Dc {
        let m = mem.borrow();
        let mut raw = [0u64; 8];
        for (i, w) in raw.iter_mut().enumerate().take((size / 8) as usize) {
            *w = m.read(pa + 8 * i as u64);
        }
        Dc { raw }
    }

    /// `tc`.
    pub fn tc(&self) -> u64 {
        self.raw[0]
    }
    /// `tc.V`.
    pub fn valid(&self) -> bool {
        self.tc() & tc::V != 0
    }

    /// Applies the configuration checks of "Device-context configuration checks" to a valid
    /// context, and returns what it asks for; `Err` names the first rule broken (cause 259).
    /// Process-directory tables and second-stage translation are not modelled: a context
    /// enabling them is refused as misconfigured, with the reason saying so.
    pub fn check(&self, cfg: &RiscvConfig, fctl_be: bool) -> Result<DcKind, String> {
        let t = self.tc();
        let [_, iohgatp, ta, fsc, msiptp, mask, pattern, reserved] = self.raw;
        if t & tc::RESERVED != 0 {
            return Err(format!("tc reserved bits set: {t:#x}"));
        }
        if !cfg.ats && t & (tc::EN_ATS | tc::EN_PRI | tc::PRPR) != 0 {
            return Err("EN_ATS/EN_PRI/PRPR without capabilities.ATS".into());
        }
        if t & tc::EN_ATS == 0 && t & (tc::T2GPA | tc::EN_PRI) != 0 {
            return Err("T2GPA or EN_PRI without EN_ATS".into());
        }
        if t & tc::EN_PRI == 0 && t & tc::PRPR != 0 {
            return Err("PRPR without EN_PRI".into());
        }
        if t & tc::T2GPA != 0 {
            return Err("T2GPA (capabilities.T2GPA is 0)".into());
        }
        if !cfg.amo_hwad && t & (tc::SADE | tc::GADE) != 0 {
            return Err("SADE/GADE without capabilities.AMO_HWAD".into());
        }
        if !cfg.end && (t & tc::SBE != 0) != fctl_be {
            return Err("SBE differs from fctl.BE and END is 0".into());
        }
        if t & tc::SXL != 0 {
            return Err("SXL = 1 is not legal with fctl.GXL = 0 (not writable)".into());
        }
        if t & tc::PDTV == 0 && t & tc::DPE != 0 {
            return Err("DPE without PDTV".into());
        }
        if t & tc::PDTV != 0 {
            return Err("PDTV = 1: process directories are not modelled".into());
        }
        if iohgatp >> 60 != 0 {
            return Err(format!(
                "iohgatp.MODE {}: second stage is not modelled",
                iohgatp >> 60
            ));
        }
        if iohgatp != 0 {
            // PPN and GSCID with MODE Bare: not reserved, but never meaningful.
        }
        if ta & !(((1u64 << 20) - 1) << 12) != 0 {
            return Err(format!("ta reserved bits set: {ta:#x}"));
        }
        if fsc & (0xffff << 44) != 0 {
            return Err(format!("iosatp reserved bits 59:44 set: {fsc:#x}"));
        }
        let mode = fsc >> 60;
        let supported = match mode {
            0 => true,
            8 => cfg.sv39,
            9 => cfg.sv48,
            10 => cfg.sv57,
            _ => return Err(format!("iosatp.MODE {mode} is reserved")),
        };
        if !supported {
            return Err(format!("iosatp.MODE {mode} not in capabilities"));
        }
        if cfg.msi_flat {
            if msiptp >> 60 > 1 {
                return Err(format!("msiptp.MODE {} reserved", msiptp >> 60));
            }
            if msiptp >> 60 == 1 {
                return Err("msiptp.MODE Flat: MSI translation is not modelled".into());
            }
            if msiptp & (0xffff << 44) != 0
                || mask >> 52 != 0
                || pattern >> 52 != 0
                || reserved != 0
            {
                return Err("extended-format reserved bits set".into());
            }
        }
        if mode == 0 {
            return Ok(DcKind::Bare);
        }
        Ok(DcKind::FirstStage(FirstStage {
            mode,
            root: (fsc & ((1u64 << 44) - 1)) << 12,
            pscid: ((ta >> 12) & 0xf_ffff) as u32,
        }))
    }
}

/// Why locating a device context failed: the cause to report and, for misconfigurations,
/// the rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcFault {
    /// Fault cause (258, 259, 260).
    pub cause: u16,
    /// For 259: the rule.
    pub why: Option<String>,
}

/// The device-directory indexes of `device_id` for the context format of `cfg`
/// ("Process to translate an IOVA", steps 3 and 4): `[DDI[0], DDI[1], DDI[2]]`.
pub fn ddi(cfg: &RiscvConfig, device_id: u32) -> [u64; 3] {
    let d = u64::from(device_id);
    let b0 = if cfg.msi_flat { 6 } else { 7 };
    [d & ((1 << b0) - 1), (d >> b0) & 0x1ff, d >> (b0 + 9)]
}

/// Walks the DDT of `levels` levels rooted at `root` for `device_id` ("Process to locate the
/// Device-context") and returns the device context's address.
pub fn locate_dc(
    mem: &SharedMem,
    cfg: &RiscvConfig,
    root: u64,
    levels: u32,
    device_id: u32,
) -> Result<u64, DcFault> {
    let idx = ddi(cfg, device_id);
    // Step 5 of "Process to translate an IOVA": ids wider than the mode are refused.
    let too_wide = match levels {
        1 => idx[1] != 0 || idx[2] != 0,
        2 => idx[2] != 0,
        _ => idx[2] >> if cfg.msi_flat { 9 } else { 8 } != 0,
    };
    if too_wide {
        return Err(DcFault {
            cause: cause::TTYP_DISALLOWED,
            why: None,
        });
    }
    let mut a = root;
    let mut i = levels - 1;
    while i > 0 {
        let ddte = mem.borrow().read(a + idx[i as usize] * 8);
        if ddte & 1 == 0 {
            return Err(DcFault {
                cause: cause::DDT_INVALID,
                why: None,
            });
        }
        // Bits 9:1 and 63:54 are reserved.
        if ddte & ((0x1ff << 1) | (0x3ff << 54)) != 0 {
            return Err(DcFault {
                cause: cause::DDT_MISCONFIGURED,
                why: Some(format!("non-leaf DDT entry reserved bits: {ddte:#x}")),
            });
        }
        a = ((ddte >> 10) & ((1u64 << 44) - 1)) << 12;
        i -= 1;
    }
    Ok(a + idx[0] * cfg.dc_size())
}

/// A first-stage leaf found by a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Level of the leaf (0 = 4 KiB page).
    pub level: u32,
    /// The leaf PTE.
    pub pte: u64,
    /// Output address of the first byte of the leaf's region.
    pub pa_base: u64,
}

impl Leaf {
    /// log2 of the leaf's size.
    pub fn size_log2(&self) -> u32 {
        12 + 9 * self.level
    }
}

/// PTE bits (privileged spec 4.3.1, 4.4).
pub mod pte {
    /// `V`.
    pub const V: u64 = 1 << 0;
    /// `R`.
    pub const R: u64 = 1 << 1;
    /// `W`.
    pub const W: u64 = 1 << 2;
    /// `X`.
    pub const X: u64 = 1 << 3;
    /// `U`.
    pub const U: u64 = 1 << 4;
    /// `A`.
    pub const A: u64 = 1 << 6;
    /// `D`.
    pub const D: u64 = 1 << 7;
    /// Bits 63:54: reserved (60:54), PBMT (62:61, Svpbmt not supported) and N (63, Svnapot
    /// not supported): must be 0.
    pub const HIGH: u64 = 0x3ff << 54;
    /// `PPN`, bits 53:10, as a value.
    pub fn ppn(pte: u64) -> u64 {
        (pte >> 10) & ((1u64 << 44) - 1)
    }
}

/// A cache of non-leaf entries the walk may use and fill: `(level of the table the entry
/// points to, va)` -> table address.
pub trait WalkCache {
    /// The table of `level` covering `va`, if cached.
    fn lookup(&mut self, level: u32, va: u64) -> Option<u64>;
    /// Caches the table of `level` covering `va`.
    fn insert(&mut self, level: u32, va: u64, table: u64);
}

/// No walk cache.
pub struct NoWalkCache;

impl WalkCache for NoWalkCache {
    fn lookup(&mut self, _: u32, _: u64) -> Option<u64> {
        None
    }
    fn insert(&mut self, _: u32, _: u64, _: u64) {}
}

/// Why a walk stopped without a usable leaf (the access type decides the cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkFault {
    /// A page fault (invalid or reserved encoding, misaligned superpage, bad IOVA).
    Page,
    /// Non-leaf D/A/U set: reserved for software to clear (privileged spec 4.4); the model
    /// faults on it so a driver that sets them is noticed.
    ReservedNonLeaf,
}

/// Walks the first-stage table of `fs` for `va` (privileged spec 4.3.2, steps 1 to 6; the
/// permission and A/D checks of steps 5 and 7 are the caller's, on the returned leaf, so a
/// cached leaf is checked the same way).
pub fn walk(
    mem: &SharedMem,
    fs: &FirstStage,
    va: u64,
    cache: &mut dyn WalkCache,
) -> Result<Leaf, WalkFault> {
    let levels = fs.levels();
    let valen = 12 + 9 * levels;
    // The IOVA must be sign-extended from bit VALEN-1 (4.4 to 4.6).
    let top = (va as i64) >> (valen - 1);
    if top != 0 && top != -1 {
        return Err(WalkFault::Page);
    }
    let mut i = levels - 1;
    let mut a = fs.root;
    // Start from the deepest cached table covering va.
    for l in 0..levels - 1 {
        if let Some(t) = cache.lookup(l, va) {
            i = l;
            a = t;
            break;
        }
    }
    loop {
        let vpn = (va >> (12 + 9 * i)) & 0x1ff;
        let e = mem.borrow().read(a + vpn * 8);
        if e & pte::V == 0 || (e & pte::R == 0 && e & pte::W != 0) || e & pte::HIGH != 0 {
            return Err(WalkFault::Page);
        }
        if e & (pte::R | pte::X) == 0 {
            if e & (pte::D | pte::A | pte::U) != 0 {
                return Err(WalkFault::ReservedNonLeaf);
            }
            if i == 0 {
                return Err(WalkFault::Page);
            }
            i -= 1;
            a = pte::ppn(e) << 12;
            cache.insert(i, va, a);
            continue;
        }
        // Misaligned superpage (step 6).
        let low = pte::ppn(e) & ((1u64 << (9 * i)) - 1);
        if low != 0 {
            return Err(WalkFault::Page);
        }
        return Ok(Leaf {
            level: i,
            pte: e,
            pa_base: pte::ppn(e) << 12,
        });
    }
}

/// Whether an unprivileged (U-mode) device access may use `leaf` without hardware A/D
/// updates (privileged spec 4.3.2 steps 5 and 7; device requests without a privilege
/// indication are user accesses): U set; R for reads, W for writes; A set, and D set for
/// writes.
pub fn permits(leaf: &Leaf, write: bool) -> bool {
    let e = leaf.pte;
    e & pte::U != 0
        && e & pte::A != 0
        && if write {
            e & pte::W != 0 && e & pte::D != 0
        } else {
            e & pte::R != 0
        }
}

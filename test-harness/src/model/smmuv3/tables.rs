//! Configuration structures (Stream table, STE, CD: IHI 0070 chapter 5) and the stage-1
//! translation table walk (VMSAv8-64, 4 KiB granule, as referenced by 3.3 and 5.4).
//!
//! Level numbering is the Arm one: the walk starts at level 0 (VA \[47:39\]), 1 (VA \[38:30\]),
//! 2 (VA \[29:21\]) or 3 (VA \[20:12\]) depending on T0SZ; blocks exist at levels 1 (1 GiB) and
//! 2 (2 MiB), pages at level 3 (4 KiB).

use crate::sim::SharedMem;

use super::fault::EventType;
use super::regs::{SmmuConfig, bit, bits, ips_bits};

/// STE.Config (5.2, bits \[3:1\]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteConfig {
    /// 0b000 (and the Reserved 0b0xx): abort, no event recorded.
    Abort,
    /// 0b100: stage 1 and stage 2 bypass.
    Bypass,
    /// 0b101: stage 1 translates, stage 2 bypass.
    S1Translate,
    /// 0b110: stage 2 only (not modelled).
    S2Translate,
    /// 0b111: nested (not modelled).
    Nested,
}

/// A Stream Table Entry, 64 bytes (5.2), as eight little-endian doublewords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ste(pub [u64; 8]);

impl Ste {
    /// V, bit 0.
    pub fn valid(&self) -> bool {
        bit(self.0[0], 0)
    }
    /// Config, bits \[3:1\].
    pub fn config(&self) -> SteConfig {
        match bits(self.0[0], 3, 1) {
            0b100 => SteConfig::Bypass,
            0b101 => SteConfig::S1Translate,
            0b110 => SteConfig::S2Translate,
            0b111 => SteConfig::Nested,
            _ => SteConfig::Abort,
        }
    }
    /// S1Fmt, bits \[5:4\].
    pub fn s1fmt(&self) -> u64 {
        bits(self.0[0], 5, 4)
    }
    /// S1ContextPtr, bits \[55:6\] (a PA when stage 2 bypasses).
    pub fn s1_context_ptr(&self) -> u64 {
        self.0[0] & (((1u64 << 56) - 1) & !0x3f)
    }
    /// S1CDMax, bits \[63:59\].
    pub fn s1cdmax(&self) -> u64 {
        bits(self.0[0], 63, 59)
    }
    /// S1STALLD, bit 91 (dword 1 bit 27).
    pub fn s1stalld(&self) -> bool {
        bit(self.0[1], 27)
    }
    /// EATS, bits \[93:92\].
    pub fn eats(&self) -> u64 {
        bits(self.0[1], 29, 28)
    }
    /// STRW, bits \[95:94\]: 0b00 NS-EL1, 0b10 EL2 / EL2-E2H.
    pub fn strw(&self) -> u64 {
        bits(self.0[1], 31, 30)
    }
    /// PRIVCFG, bits \[113:112\]: 0b0x use incoming, 0b10 unprivileged, 0b11 privileged.
    pub fn privcfg(&self) -> u64 {
        bits(self.0[1], 49, 48)
    }
    /// S2VMID, bits \[143:128\].
    pub fn s2vmid(&self) -> u16 {
        bits(self.0[2], 15, 0) as u16
    }
}

/// A Context Descriptor, 64 bytes (5.4), as eight little-endian doublewords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cd(pub [u64; 8]);

impl Cd {
    /// T0SZ, bits \[5:0\].
    pub fn t0sz(&self) -> u32 {
        bits(self.0[0], 5, 0) as u32
    }
    /// TG0, bits \[7:6\]: 0b00 4 KiB, 0b01 64 KiB, 0b10 16 KiB.
    pub fn tg0(&self) -> u64 {
        bits(self.0[0], 7, 6)
    }
    /// EPD0, bit 14.
    pub fn epd0(&self) -> bool {
        bit(self.0[0], 14)
    }
    /// ENDI, bit 15.
    pub fn endi(&self) -> bool {
        bit(self.0[0], 15)
    }
    /// T1SZ, bits \[21:16\].
    pub fn t1sz(&self) -> u32 {
        bits(self.0[0], 21, 16) as u32
    }
    /// TG1, bits \[23:22\]: 0b01 16 KiB, 0b10 4 KiB, 0b11 64 KiB.
    pub fn tg1(&self) -> u64 {
        bits(self.0[0], 23, 22)
    }
    /// EPD1, bit 30.
    pub fn epd1(&self) -> bool {
        bit(self.0[0], 30)
    }
    /// V, bit 31.
    pub fn valid(&self) -> bool {
        bit(self.0[0], 31)
    }
    /// IPS, bits \[34:32\].
    pub fn ips(&self) -> u64 {
        bits(self.0[0], 34, 32)
    }
    /// AFFD, bit 35.
    pub fn affd(&self) -> bool {
        bit(self.0[0], 35)
    }
    /// TBI0, bit 38.
    pub fn tbi0(&self) -> bool {
        bit(self.0[0], 38)
    }
    /// TBI1, bit 39.
    pub fn tbi1(&self) -> bool {
        bit(self.0[0], 39)
    }
    /// PAN, bit 40.
    pub fn pan(&self) -> bool {
        bit(self.0[0], 40)
    }
    /// AA64, bit 41.
    pub fn aa64(&self) -> bool {
        bit(self.0[0], 41)
    }
    /// HD, bit 42.
    pub fn hd(&self) -> bool {
        bit(self.0[0], 42)
    }
    /// HA, bit 43.
    pub fn ha(&self) -> bool {
        bit(self.0[0], 43)
    }
    /// S, bit 44 (stall).
    pub fn s(&self) -> bool {
        bit(self.0[0], 44)
    }
    /// R, bit 45 (record Translation-related faults).
    pub fn r(&self) -> bool {
        bit(self.0[0], 45)
    }
    /// A, bit 46 (abort on termination).
    pub fn a(&self) -> bool {
        bit(self.0[0], 46)
    }
    /// ASET, bit 47.
    pub fn aset(&self) -> bool {
        bit(self.0[0], 47)
    }
    /// ASID, bits \[63:48\].
    pub fn asid(&self) -> u16 {
        bits(self.0[0], 63, 48) as u16
    }
    /// HAD0, bit 65 (dword 1 bit 1).
    pub fn had0(&self) -> bool {
        bit(self.0[1], 1)
    }
    /// TTB0, bits \[119:68\]: the table address bits \[51:4\].
    pub fn ttb0(&self) -> u64 {
        self.0[1] & (((1u64 << 52) - 1) & !0xf)
    }
    /// HAD1, bit 129 (dword 2 bit 1).
    pub fn had1(&self) -> bool {
        bit(self.0[2], 1)
    }
    /// TTB1, bits \[183:132\].
    pub fn ttb1(&self) -> u64 {
        self.0[2] & (((1u64 << 52) - 1) & !0xf)
    }
    /// MAIR0/MAIR1, bits \[255:192\].
    pub fn mair(&self) -> u64 {
        self.0[3]
    }
}

/// Reads a 64-byte structure at `pa`.
pub fn read_struct(mem: &SharedMem, pa: u64) -> [u64; 8] {
    let m = mem.borrow();
    let mut out = [0u64; 8];
    for (i, w) in out.iter_mut().enumerate() {
        *w = m.read((pa & !7) + 8 * i as u64);
    }
    out
}

/// Why the walk of the Stream table failed to reach an STE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTableError {
    /// StreamID out of range of LOG2SIZE/SIDSIZE, or an L1STD with an invalid Span or out of
    /// its span: C_BAD_STREAMID (5.1.1, 6.3.25).
    BadStreamId,
}

/// STRTAB_BASE/STRTAB_BASE_CFG decoded (6.3.24, 6.3.25).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTable {
    /// STRTAB_BASE as written.
    pub base: u64,
    /// STRTAB_BASE_CFG as written.
    pub cfg: u32,
}

impl StreamTable {
    /// LOG2SIZE.
    pub fn log2size(&self) -> u32 {
        self.cfg & 0x3f
    }
    /// Whether the 2-level format is in effect (FMT == 0b01 and IDR0.ST_LEVEL allows it).
    pub fn two_level(&self, c: &SmmuConfig) -> bool {
        c.st_level_2 && (self.cfg >> 16) & 3 == 1
    }
    /// Effective SPLIT: 6, 8 or 10; other values behave as 6.
    pub fn split(&self) -> u32 {
        match (self.cfg >> 6) & 0x1f {
            8 => 8,
            10 => 10,
            _ => 6,
        }
    }
    /// Index of the L1STD that `sid` selects (2-level only).
    pub fn l1_index(&self, sid: u32) -> u32 {
        sid >> self.split()
    }
    /// Whether `sid` is in range: below 2^min(LOG2SIZE, SIDSIZE).
    pub fn sid_in_range(&self, c: &SmmuConfig, sid: u32) -> bool {
        let n = self.log2size().min(c.sidsize as u32);
        n >= 32 || (sid as u64) < (1u64 << n)
    }
    /// Address of the L1STD for `sid`.
    pub fn l1std_addr(&self, sid: u32) -> u64 {
        let l1_bits = self.log2size().saturating_sub(self.split());
        let align_log2 = (l1_bits + 3).max(6);
        let base = self.base & super::regs::STRTAB_BASE_ADDR_MASK & !((1u64 << align_log2) - 1);
        base + 8 * self.l1_index(sid) as u64
    }
    /// Address of the STE for `sid` in a linear table.
    pub fn linear_ste_addr(&self, sid: u32) -> u64 {
        let align_log2 = self.log2size() + 6;
        let base = self.base & super::regs::STRTAB_BASE_ADDR_MASK & !((1u64 << align_log2) - 1);
        base + 64 * sid as u64
    }
    /// Address of the STE for `sid` under the L1STD `l1std` (5.1): Span in \[4:0\], L2Ptr in
    /// \[55:6\]; the level-2 table holds 2^(Span-1) STEs and is aligned to its size.
    pub fn l2_ste_addr(&self, l1std: u64, sid: u32) -> Result<u64, StreamTableError> {
        let span = bits(l1std, 4, 0) as u32;
        if span == 0 || span > self.split() + 1 || span > 11 {
            return Err(StreamTableError::BadStreamId);
        }
        let l2_index = sid & ((1u32 << self.split()) - 1);
        if l2_index as u64 >= 1u64 << (span - 1) {
            return Err(StreamTableError::BadStreamId);
        }
        let n = 5 + (span - 1);
        let l2ptr = l1std & (((1u64 << 56) - 1) & !((2u64 << n) - 1));
        Ok(l2ptr + 64 * l2_index as u64)
    }
}

/// A decoded, legal stage-1 configuration: what a translation needs from STE + CD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S1Context {
    /// ASID tag (CD.ASID).
    pub asid: u16,
    /// VMID tag: STE.S2VMID when stage 2 is implemented (5.2 S2VMID), else 0.
    pub vmid: u16,
    /// TTB0/TTB1 (table addresses).
    pub ttb: [u64; 2],
    /// T0SZ/T1SZ.
    pub tsz: [u32; 2],
    /// EPD0/EPD1.
    pub epd: [bool; 2],
    /// Effective HAD0/HAD1 (IDR3.HAD && CD.HADx).
    pub had: [bool; 2],
    /// TBI0/TBI1.
    pub tbi: [bool; 2],
    /// Effective output size in bits: min(CD.IPS, OAS).
    pub oa_bits: u32,
    /// CD.AFFD.
    pub affd: bool,
    /// CD.R.
    pub record: bool,
    /// CD.A.
    pub abort: bool,
    /// CD.PAN.
    pub pan: bool,
    /// Whether transactions of this stream are privileged (STE.PRIVCFG / incoming).
    pub privileged: bool,
}

/// Checks an STE that selects stage-1 translation (5.2, 5.5) and returns the VMID tag and
/// privilege, or the reason the STE is ILLEGAL for this model (C_BAD_STE).
pub fn check_s1_ste(c: &SmmuConfig, ste: &Ste) -> Result<(u16, bool), &'static str> {
    if !c.s1p {
        return Err("STE.Config selects stage 1 but IDR0.S1P == 0");
    }
    // 5.5: STE.S1STALLD == 1 is ILLEGAL when STALL_MODEL != 0b00.
    if c.stall_model != 0 && ste.s1stalld() {
        return Err("STE.S1STALLD == 1 with IDR0.STALL_MODEL != 0b00");
    }
    // STRW: 0b00 NS-EL1; 0b10 EL2 needs IDR0.HYP (EL2 StreamWorld is not modelled).
    if ste.strw() != 0 {
        return Err("STE.STRW != NS-EL1 (EL2 StreamWorlds are not modelled / need IDR0.HYP)");
    }
    // S1CDMax / S1Fmt are IGNORED with SSIDSIZE == 0 (5.2).
    let vmid = if c.s2p {
        ste.s2vmid() & c.vmid_mask()
    } else {
        0
    };
    let privileged = match ste.privcfg() {
        0b10 => false,
        0b11 => true,
        _ => c.incoming_privileged,
    };
    Ok((vmid, privileged))
}

/// Checks a CD (5.4 "CdIllegal", 5.5) and decodes it, or gives the reason for C_BAD_CD.
pub fn check_cd(
    c: &SmmuConfig,
    cd: &Cd,
    vmid: u16,
    privileged: bool,
) -> Result<S1Context, &'static str> {
    if !cd.valid() {
        return Err("CD.V == 0");
    }
    if !cd.aa64() {
        // AA64 == 0 selects VMSAv8-32 LPAE: IDR0.TTF[0] == 0 in this model, so ILLEGAL.
        return Err("CD.AA64 == 0 (VMSAv8-32 LPAE is not supported)");
    }
    // HTTU is not implemented (IDR0.HTTU == 0): HA or HD set is ILLEGAL.
    if cd.ha() || cd.hd() {
        return Err("CD.HA/HD set but IDR0.HTTU == 0");
    }
    // Fault configuration (5.5).
    if c.term_model && !cd.a() {
        return Err("CD.A == 0 with IDR0.TERM_MODEL == 1");
    }
    match c.stall_model {
        0b01 if cd.s() => return Err("CD.S == 1 with IDR0.STALL_MODEL == 0b01"),
        0b10 if !cd.s() => return Err("CD.S == 0 with IDR0.STALL_MODEL == 0b10"),
        _ => {}
    }
    if !c.asid16 && cd.asid() > 0xff {
        return Err("CD.ASID[15:8] != 0 with 8-bit ASIDs");
    }
    let oa_bits = ips_bits(cd.ips()).min(c.oas_bits());
    // ENDI: TTENDIAN == 0b10 (little endian only) makes ENDI == 1 ILLEGAL unless both halves
    // are disabled.
    if (!cd.epd0() || !cd.epd1()) && cd.endi() {
        return Err("CD.ENDI == 1 but IDR0.TTENDIAN is little-endian only");
    }
    // Per half: TxSZ in 16..=39 (IDR3.STT == 0), a supported granule (the model walks only
    // 4 KiB), TTBx within the effective IPS and 48 bits.
    let halves = [
        (cd.epd0(), cd.t0sz(), cd.tg0() == 0b00, cd.ttb0()),
        (cd.epd1(), cd.t1sz(), cd.tg1() == 0b10, cd.ttb1()),
    ];
    for &(epd, tsz, is_4k, ttb) in &halves {
        if epd {
            continue;
        }
        if !(16..=39).contains(&tsz) {
            return Err("CD.TxSZ outside 16..=39 for an enabled TTBx");
        }
        if !is_4k || !c.gran4k {
            return Err("CD.TGx is not the 4 KiB granule (the only one this model walks)");
        }
        if ttb >> oa_bits.min(48) != 0 {
            return Err("CD.TTBx outside the effective IPS / 48 bits");
        }
    }
    Ok(S1Context {
        asid: cd.asid() & c.asid_mask(),
        vmid,
        ttb: [cd.ttb0(), cd.ttb1()],
        tsz: [cd.t0sz(), cd.t1sz()],
        epd: [cd.epd0(), cd.epd1()],
        had: [c.had && cd.had0(), c.had && cd.had1()],
        tbi: [cd.tbi0(), cd.tbi1()],
        oa_bits,
        affd: cd.affd(),
        record: cd.r(),
        abort: cd.a(),
        pan: cd.pan(),
        privileged,
    })
}

/// Log2 of the VA span covered by one descriptor at `level` (4 KiB granule).
pub fn level_shift(level: u32) -> u32 {
    12 + 9 * (3 - level)
}

/// Starting level for an input size of `ia_bits` (4 KiB granule): 0 for 40..=48 bits,
/// 1 for 31..=39, 2 for 22..=30.
pub fn start_level(ia_bits: u32) -> u32 {
    let levels = (ia_bits - 12).div_ceil(9);
    4 - levels
}

/// APTable restrictions accumulated from table descriptors (bits 62:61).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ApTable {
    /// APTable \[0\] (bit 61) seen: no unprivileged access below.
    pub no_el0: bool,
    /// APTable \[1\] (bit 62) seen: no write access below.
    pub no_write: bool,
}

/// A successful walk: the leaf and what is needed to check permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Level of the leaf descriptor (1, 2 or 3).
    pub level: u32,
    /// Output address of the block/page (aligned to its size).
    pub pa_base: u64,
    /// The leaf descriptor.
    pub desc: u64,
    /// Accumulated APTable restrictions (cleared when HAD is in effect).
    pub ap_table: ApTable,
}

impl Leaf {
    /// Log2 of the block/page size.
    pub fn size_log2(&self) -> u32 {
        level_shift(self.level)
    }
    /// nG, bit 11: non-global (ASID-tagged).
    pub fn non_global(&self) -> bool {
        bit(self.desc, 11)
    }
    /// AP \[2:1\], bits \[7:6\].
    pub fn ap(&self) -> u64 {
        bits(self.desc, 7, 6)
    }
}

/// A stage-1 fault found by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkFault {
    /// F_TRANSLATION, F_ADDR_SIZE or F_ACCESS.
    pub kind: EventType,
    /// Level at which it was found.
    pub level: u32,
}

/// Caches of table descriptors ("walk caches") consulted and filled by [`walk_s1`].
pub trait WalkCache {
    /// The table to use at `level` for `va`, with APTable restrictions accumulated above it.
    fn lookup(&mut self, level: u32, va: u64) -> Option<(u64, ApTable)>;
    /// Records that the table for `level` covering `va` is at `table`.
    fn insert(&mut self, level: u32, va: u64, table: u64, ap: ApTable);
}

/// A walk cache that caches nothing (for reference walks).
pub struct NoWalkCache;

impl WalkCache for NoWalkCache {
    fn lookup(&mut self, _level: u32, _va: u64) -> Option<(u64, ApTable)> {
        None
    }
    fn insert(&mut self, _level: u32, _va: u64, _table: u64, _ap: ApTable) {}
}

/// Output address bits of a descriptor for the 4 KiB granule: \[47:12\] plus \[51:48\], which are
/// RES0 without 52-bit support and so produce an Address Size fault when set.
fn desc_oa(desc: u64) -> u64 {
    desc & 0x000f_ffff_ffff_f000
}

/// Walks the stage-1 tables for `va` under TTBx `half` of `ctx` (VMSAv8-64, 4 KiB granule).
///
/// Returns the leaf (with AF checked unless CD.AFFD) or the stage-1 fault. Table descriptors
/// are taken from and added to `cache`.
pub fn walk_s1(
    mem: &SharedMem,
    ctx: &S1Context,
    half: usize,
    va: u64,
    cache: &mut dyn WalkCache,
) -> Result<Leaf, WalkFault> {
    let ia_bits = 64 - ctx.tsz[half];
    let start = start_level(ia_bits);
    let had = ctx.had[half];
    // Deepest cached table first.
    let mut level = start;
    let mut table = {
        let top_bits = ia_bits - level_shift(start);
        let align = (8u64 << top_bits).max(16);
        ctx.ttb[half] & !(align - 1)
    };
    let mut ap = ApTable::default();
    for l in (start + 1..=3).rev() {
        if let Some((t, a)) = cache.lookup(l, va) {
            level = l;
            table = t;
            ap = a;
            break;
        }
    }
    let m = mem.borrow();
    loop {
        let shift = level_shift(level);
        let idx_bits = if level == start { ia_bits - shift } else { 9 };
        let idx = (va >> shift) & ((1u64 << idx_bits) - 1);
        let desc = m.read(table + 8 * idx);
        if !bit(desc, 0) {
            return Err(WalkFault {
                kind: EventType::FTranslation,
                level,
            });
        }
        let is_table_or_page = bit(desc, 1);
        if level < 3 && is_table_or_page {
            let next = desc_oa(desc);
            if next >> ctx.oa_bits != 0 {
                return Err(WalkFault {
                    kind: EventType::FAddrSize,
                    level,
                });
            }
            if !had {
                ap.no_el0 |= bit(desc, 61);
                ap.no_write |= bit(desc, 62);
            }
            level += 1;
            table = next;
            cache.insert(level, va, table, ap);
            continue;
        }
        // Block at level 0 (no DS) and the Reserved level-3 encoding 0b01 are invalid.
        if level == 0 || (level == 3 && !is_table_or_page) {
            return Err(WalkFault {
                kind: EventType::FTranslation,
                level,
            });
        }
        let size_mask = (1u64 << shift) - 1;
        let pa_base = desc_oa(desc) & !size_mask;
        if desc_oa(desc) >> ctx.oa_bits != 0 {
            return Err(WalkFault {
                kind: EventType::FAddrSize,
                level,
            });
        }
        if !bit(desc, 10) && !ctx.affd {
            return Err(WalkFault {
                kind: EventType::FAccess,
                level,
            });
        }
        return Ok(Leaf {
            level,
            pa_base,
            desc,
            ap_table: ap,
        });
    }
}

/// Selects TTB0 or TTB1 for `va` (TxSZ ranges with TBI), or `None` when `va` lies outside both
/// regions (a Translation fault). A disabled half (EPDx) is selected too; the caller faults.
pub fn select_half(ctx: &S1Context, va: u64) -> Option<usize> {
    for half in 0..2 {
        let top = if ctx.tbi[half] { 56 } else { 64 };
        let ia = 64 - ctx.tsz[half];
        let upper = if top == 64 {
            if ia >= 64 { 0 } else { va >> ia }
        } else {
            bits(va, 55, ia.min(55))
        };
        let width = top - ia;
        let want = if half == 0 { 0 } else { (1u64 << width) - 1 };
        if ctx.tsz[half] != 0 && upper == want {
            return Some(half);
        }
    }
    None
}

/// Permission check for a data access through a leaf (AArch64 stage 1, EL1&0 regime):
/// AP \[2\] = read-only, AP \[1\] = unprivileged access allowed, APTable and PAN applied.
pub fn permits(ctx: &S1Context, leaf_ap: u64, ap_table: ApTable, write: bool) -> bool {
    let ro = leaf_ap & 0b10 != 0 || ap_table.no_write;
    let el0 = leaf_ap & 0b01 != 0 && !ap_table.no_el0;
    if write && ro {
        return false;
    }
    if ctx.privileged {
        // PAN: privileged data accesses to unprivileged-accessible pages fault.
        !(ctx.pan && el0)
    } else {
        el0
    }
}

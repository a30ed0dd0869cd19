//! Fault records of the modelled unit (RISC-V IOMMU spec 1.0, 3.2 "Fault/Event-Queue (FQ)",
//! "Fault-queue record").

/// Transaction types (3.2, table "Fault record TTYP field encodings") the model produces.
pub mod ttyp {
    /// Untranslated read.
    pub const READ: u8 = 2;
    /// Untranslated write/AMO.
    pub const WRITE: u8 = 3;
}

/// One fault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// `CAUSE` (12 bits).
    pub cause: u16,
    /// `TTYP` (6 bits).
    pub ttyp: u8,
    /// `DID` (24 bits).
    pub did: u32,
    /// `iotval`: the IOVA of the transaction.
    pub iotval: u64,
    /// `iotval2`.
    pub iotval2: u64,
}

impl Record {
    /// The four doublewords: `CAUSE` 11:0, `PID` 31:12 (0), `PV` 32 (0), `PRIV` 33 (0),
    /// `TTYP` 39:34, `DID` 63:40; custom/reserved; `iotval`; `iotval2`.
    pub fn encode(&self) -> [u64; 4] {
        [
            u64::from(self.cause & 0xfff)
                | (u64::from(self.ttyp & 0x3f) << 34)
                | (u64::from(self.did & 0xff_ffff) << 40),
            0,
            self.iotval,
            self.iotval2,
        ]
    }

    /// Decodes four doublewords.
    pub fn decode(d: [u64; 4]) -> Record {
        Record {
            cause: (d[0] & 0xfff) as u16,
            ttyp: ((d[0] >> 34) & 0x3f) as u8,
            did: (d[0] >> 40) as u32,
            iotval: d[2],
            iotval2: d[3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            cause: 258,
            ttyp: ttyp::WRITE,
            did: 0xab_cdef,
            iotval: 0x1234_5000,
            iotval2: 0,
        };
        let d = r.encode();
        assert_eq!(d[0], 258 | (3 << 34) | (0xab_cdef << 40));
        assert_eq!(Record::decode(d), r);
    }
}

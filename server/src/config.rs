//! The static configuration: who may do what.
//!
//! Like Hubris's build-time generated owner tables, the configuration is plain data handed to
//! [`crate::Server::new`], which validates it once. It borrows its tables for the server's
//! lifetime `'a`: a `const` or `static` (`'static`) where everything is known at build time,
//! or arrays built at run time on the stack of the function that then runs the server, where
//! addresses and requester ids are discovered at boot; neither needs unsafe code. Nothing in it
//! changes while the server runs; the client identity it is compared against comes from the
//! platform (seL4 badge, Hubris task index), never from a message.

use iommu_hal::backend::UnitIndex;
use iommu_hal::pagetable::Perms;
use iommu_protocol::IovaRange;

/// Who sent a request, as told by the platform (seL4 badge, Hubris task index). Never taken
/// from a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientId(pub u32);

/// One device a client owns: a requester / stream id on one unit, and the other ids its DMA
/// may carry.
///
/// The client names it with a `DeviceHandle` equal to its index in
/// [`ClientConfig::devices`].
///
/// **Aliases.** A device's DMA may reach the unit under ids other than its own: a
/// conventional PCI device behind a PCIe-to-PCI bridge is seen with the bridge's secondary bus
/// and devfn 0, devices with DMA-alias quirks use a sibling function's id (the set Linux's
/// `pci_for_each_dma_alias` walks). The platform lists those in `aliases`; the server attaches
/// and blocks the device under every one of them and routes their faults to the device. Two
/// devices that share an id cannot be isolated from each other (Linux puts them in one IOMMU
/// group): grant them as one device (one entry listing both ids), never to two clients; the
/// configuration is refused otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceGrant<'a> {
    /// Index of the unit (within the backend) the device sits behind.
    pub unit: UnitIndex,
    /// Requester id (VT-d source id, SMMU stream id, ...) as the unit sees it.
    pub device: u32,
    /// Further ids the device's DMA may carry on the same unit (empty for most devices).
    pub aliases: &'a [u32],
}

impl<'a> DeviceGrant<'a> {
    /// A device with no alias.
    pub const fn new(unit: UnitIndex, device: u32) -> Self {
        DeviceGrant {
            unit,
            device,
            aliases: &[],
        }
    }

    /// Every id the device's DMA may carry: its own first, then its aliases.
    pub fn ids(&self) -> impl Iterator<Item = u32> + 'a {
        core::iter::once(self.device).chain(self.aliases.iter().copied())
    }

    /// Whether `id` on `unit` is one of this device's ids.
    pub fn answers_to(&self, unit: UnitIndex, id: u32) -> bool {
        self.unit == unit && (self.device == id || self.aliases.contains(&id))
    }

    /// Whether this device and `other` share an id on the same unit.
    pub fn overlaps(&self, other: &DeviceGrant<'_>) -> bool {
        self.unit == other.unit && self.ids().any(|id| other.answers_to(self.unit, id))
    }
}

/// A physical region a client may map, and with which permissions.
///
/// Regions of different clients may overlap (shared buffers); devices may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RegionGrant {
    /// First byte (4 KiB aligned).
    pub base: u64,
    /// Length in bytes (a non-zero multiple of 4 KiB; `base + len` may be `2^64` at most).
    pub len: u64,
    /// The most a mapping inside the region may allow (at least one of read and write).
    pub perms: Perms,
}

impl RegionGrant {
    /// Whether `[phys, phys + len)` lies wholly inside this region (overflow-safe; `len > 0`).
    pub const fn contains(&self, phys: u64, len: u64) -> bool {
        if len == 0 || phys < self.base {
            return false;
        }
        let off = phys - self.base;
        off < self.len && len <= self.len - off
    }
}

/// Everything one client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientConfig<'a> {
    /// The platform's identity of the client.
    pub id: ClientId,
    /// Devices it owns; a device's handle is its index here.
    pub devices: &'a [DeviceGrant<'a>],
    /// Physical regions it may map. A mapping must lie wholly within one region.
    pub regions: &'a [RegionGrant],
    /// Most domains it may hold at once.
    pub max_domains: u32,
    /// Most page-table frames its domains may hold at once (root tables included).
    pub max_table_frames: u32,
}

/// The whole configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config<'a> {
    /// Every client the server will answer. Requests from any other id get `NotPermitted`.
    pub clients: &'a [ClientConfig<'a>],
    /// IOVA windows no domain may map, ascending and disjoint, 4 KiB granular (e.g. the x86
    /// interrupt window `0xFEE0_0000..=0xFEEF_FFFF`, which VT-d never translates). The usable
    /// ranges `Info` reports are the domain's address space minus these; at most
    /// [`iommu_protocol::MAX_IOVA_RANGES`] ranges may result.
    pub reserved: &'a [IovaRange],
}

/// Why [`crate::Server::new`] refused a configuration or a backend.
///
/// Indices name entries of [`Config::clients`], [`ClientConfig::devices`] and
/// [`ClientConfig::regions`]. `Display` says what to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// More clients than the server's `CLIENTS` capacity.
    TooManyClients,
    /// More devices (over all clients) than the server's `DEVICES` capacity.
    TooManyDevices,
    /// Two clients share a [`ClientId`].
    DuplicateClient {
        /// Index of the second client with that id.
        client: usize,
    },
    /// A `(unit, id)` pair is granted twice, as a device or an alias.
    DeviceOverlap {
        /// Index of the client of the second grant.
        client: usize,
        /// Index of the second grant in that client's devices.
        device: usize,
    },
    /// A device names a unit the backend does not drive.
    NoSuchUnit {
        /// Index of the client.
        client: usize,
        /// Index of the device in that client's devices.
        device: usize,
    },
    /// A region is empty, unaligned, wraps around, or grants no permission.
    BadRegion {
        /// Index of the client.
        client: usize,
        /// Index of the region in that client's regions.
        region: usize,
    },
    /// The backend drives no unit, or more than 64.
    UnitCount,
    /// The units report different address widths, or a width the format does not support.
    AddressWidth,
    /// The units' common leaf sizes do not include 4 KiB.
    LeafSizes,
    /// The units offer no usable domain tag.
    NoTags,
    /// A reserved IOVA window is unaligned, unsorted or overlapping, or leaves no usable range
    /// or more ranges than the protocol can report.
    Reserved,
    /// Creating the tables or blocking a device failed at start-up (the backend's error kind).
    Backend(iommu_hal::backend::ErrorKind),
    /// The clients' `max_domains` add up to more domains than the units' tags (and the
    /// server's `DOMAINS`) allow at once: one client could take a domain another was promised.
    DomainQuotas {
        /// Sum of the clients' `max_domains`.
        total: u64,
        /// Domain slots usable at once.
        slots: u64,
    },
    /// The clients' `max_table_frames` add up to more frames than the pool holds (after the
    /// units' shared structures were taken from it): one client could exhaust the pool
    /// another was promised.
    FrameQuotas {
        /// Sum of the clients' `max_table_frames`.
        total: u64,
        /// Frames the pool could hand out at once.
        pool: u64,
    },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ConfigError::TooManyClients => f.write_str(
                "more clients than the server's CLIENTS capacity: raise the const generic or \
                 configure fewer clients",
            ),
            ConfigError::TooManyDevices => f.write_str(
                "more devices over all clients than the server's DEVICES capacity: raise the \
                 const generic or grant fewer devices",
            ),
            ConfigError::DuplicateClient { client } => write!(
                f,
                "client {client} has the same ClientId as an earlier client: ids must be unique"
            ),
            ConfigError::DeviceOverlap { client, device } => write!(
                f,
                "device {device} of client {client} shares a (unit, requester id) with an \
                 earlier grant (its own id or an alias): devices that share an id cannot be \
                 isolated, grant them as one device to one client"
            ),
            ConfigError::NoSuchUnit { client, device } => write!(
                f,
                "device {device} of client {client} names a unit the backend does not drive"
            ),
            ConfigError::BadRegion { client, region } => write!(
                f,
                "region {region} of client {client} is empty, not 4 KiB aligned, wraps around \
                 2^64 or grants neither read nor write"
            ),
            ConfigError::UnitCount => {
                f.write_str("the backend drives no unit, or more than 64: bring units up first")
            }
            ConfigError::AddressWidth => f.write_str(
                "the units report different address widths, or one the page-table format does \
                 not support: serve such units with separate servers",
            ),
            ConfigError::LeafSizes => {
                f.write_str("the units' common leaf sizes do not include 4 KiB")
            }
            ConfigError::NoTags => f.write_str("the units offer no usable domain tag"),
            ConfigError::Reserved => f.write_str(
                "a reserved IOVA window is not 4 KiB granular, not ascending and disjoint, or \
                 leaves no usable range or more than MAX_IOVA_RANGES",
            ),
            ConfigError::Backend(kind) => {
                write!(
                    f,
                    "setting up a unit structure or blocking a device failed: {kind}"
                )
            }
            ConfigError::DomainQuotas { total, slots } => write!(
                f,
                "the clients' max_domains add up to {total}, but only {slots} domains fit at \
                 once (domain tags and the DOMAINS capacity): lower the quotas"
            ),
            ConfigError::FrameQuotas { total, pool } => write!(
                f,
                "the clients' max_table_frames add up to {total}, but the frame pool holds \
                 {pool} after the units' shared structures: lower the quotas or give the pool \
                 more frames"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

impl Config<'_> {
    /// An empty configuration (no clients): useful as a placeholder.
    pub const EMPTY: Config<'static> = Config {
        clients: &[],
        reserved: &[],
    };

    /// Checks what can be checked without the backend. `units` is the backend's unit count.
    pub fn validate(
        &self,
        units: usize,
        max_clients: usize,
        max_devices: usize,
    ) -> Result<usize, ConfigError> {
        if self.clients.len() > max_clients {
            return Err(ConfigError::TooManyClients);
        }
        let mut total = 0usize;
        for (ci, c) in self.clients.iter().enumerate() {
            if self.clients[..ci].iter().any(|o| o.id == c.id) {
                return Err(ConfigError::DuplicateClient { client: ci });
            }
            for (di, d) in c.devices.iter().enumerate() {
                if d.unit >= units {
                    return Err(ConfigError::NoSuchUnit {
                        client: ci,
                        device: di,
                    });
                }
                let twice_in_itself = d
                    .ids()
                    .enumerate()
                    .any(|(i, id)| d.ids().skip(i + 1).any(|o| o == id));
                let dup_here = c.devices[..di].iter().any(|o| o.overlaps(d));
                let dup_before = self.clients[..ci]
                    .iter()
                    .any(|o| o.devices.iter().any(|od| od.overlaps(d)));
                if twice_in_itself || dup_here || dup_before {
                    return Err(ConfigError::DeviceOverlap {
                        client: ci,
                        device: di,
                    });
                }
            }
            for (ri, r) in c.regions.iter().enumerate() {
                let page = iommu_hal::PAGE_SIZE;
                let ok = r.len != 0
                    && r.base % page == 0
                    && r.len % page == 0
                    && r.base.checked_add(r.len - 1).is_some()
                    && (r.perms.read || r.perms.write);
                if !ok {
                    return Err(ConfigError::BadRegion {
                        client: ci,
                        region: ri,
                    });
                }
            }
            total += c.devices.len();
        }
        if total > max_devices {
            return Err(ConfigError::TooManyDevices);
        }
        Ok(total)
    }
}

/// The usable IOVA ranges of `[0, last]` minus `reserved`, or `None` if a window is
/// malformed or the result does not fit the protocol's limit.
pub fn usable_ranges(
    last: u64,
    reserved: &[IovaRange],
) -> Option<heapless::Vec<IovaRange, { iommu_protocol::MAX_IOVA_RANGES }>> {
    let page = iommu_hal::PAGE_SIZE;
    let mut out = heapless::Vec::new();
    let mut next = Some(0u64);
    for (i, r) in reserved.iter().enumerate() {
        let ok = r.first <= r.last
            && r.first % page == 0
            && r.last % page == page - 1
            && (i == 0 || reserved[i - 1].last < r.first);
        if !ok {
            return None;
        }
        let Some(first) = next else { break };
        if r.first > last {
            break;
        }
        if r.first > first {
            out.push(IovaRange {
                first,
                last: r.first - 1,
            })
            .ok()?;
        }
        next = r.last.checked_add(1);
    }
    if let Some(first) = next
        && first <= last
    {
        out.push(IovaRange { first, last }).ok()?;
    }
    if out.is_empty() { None } else { Some(out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_contains_is_overflow_safe() {
        let r = RegionGrant {
            base: 0x1000,
            len: 0x2000,
            perms: Perms::RW,
        };
        assert!(r.contains(0x1000, 0x2000));
        assert!(r.contains(0x2000, 0x1000));
        assert!(!r.contains(0x2000, 0x2000));
        assert!(!r.contains(0x0, 0x1000));
        assert!(!r.contains(0x1000, 0));
        assert!(!r.contains(0x2000, u64::MAX));
        assert!(!r.contains(u64::MAX, 1));
        let top = RegionGrant {
            base: u64::MAX - 0xfff,
            len: 0x1000,
            perms: Perms::R,
        };
        assert!(top.contains(u64::MAX - 0xfff, 0x1000));
        assert!(!top.contains(u64::MAX - 0xfff, 0x2000));
    }

    /// Every configuration error says what is wrong and, where it has them, which client,
    /// device or region and which totals (an integrator reads these at start-up).
    #[test]
    fn config_errors_say_what_and_where() {
        use std::string::ToString;
        let cases: [(ConfigError, &[&str]); 14] = [
            (ConfigError::TooManyClients, &["CLIENTS"]),
            (ConfigError::TooManyDevices, &["DEVICES"]),
            (ConfigError::DuplicateClient { client: 7 }, &["client 7"]),
            (
                ConfigError::DeviceOverlap {
                    client: 3,
                    device: 5,
                },
                &["device 5 of client 3"],
            ),
            (
                ConfigError::NoSuchUnit {
                    client: 2,
                    device: 9,
                },
                &["device 9 of client 2", "unit"],
            ),
            (
                ConfigError::BadRegion {
                    client: 4,
                    region: 6,
                },
                &["region 6 of client 4"],
            ),
            (ConfigError::UnitCount, &["unit"]),
            (ConfigError::AddressWidth, &["address width"]),
            (ConfigError::LeafSizes, &["4 KiB"]),
            (ConfigError::NoTags, &["tag"]),
            (ConfigError::Reserved, &["reserved IOVA window"]),
            (
                ConfigError::Backend(iommu_hal::backend::ErrorKind::Timeout),
                &["failed"],
            ),
            (
                ConfigError::DomainQuotas {
                    total: 11,
                    slots: 8,
                },
                &["11", "only 8 domains"],
            ),
            (
                ConfigError::FrameQuotas {
                    total: 300,
                    pool: 256,
                },
                &["300", "holds 256"],
            ),
        ];
        for (e, words) in cases {
            let text = e.to_string();
            for w in words {
                assert!(text.contains(w), "{e:?}: {text:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn usable_ranges_subtract_windows() {
        let msi = IovaRange {
            first: 0xfee0_0000,
            last: 0xfeef_ffff,
        };
        let r = usable_ranges((1 << 39) - 1, &[msi]).unwrap();
        assert_eq!(
            r.as_slice(),
            &[
                IovaRange {
                    first: 0,
                    last: 0xfedf_ffff
                },
                IovaRange {
                    first: 0xfef0_0000,
                    last: (1 << 39) - 1
                }
            ]
        );
        assert_eq!(usable_ranges(0xfff, &[]).unwrap().len(), 1);
        let all = IovaRange {
            first: 0,
            last: 0xfff,
        };
        assert!(usable_ranges(0xfff, &[all]).is_none());
        let bad = IovaRange {
            first: 0x800,
            last: 0xfff,
        };
        assert!(usable_ranges(0xffff, &[bad]).is_none());
        // A window beyond the address width changes nothing (no range reaches past `last`),
        // and one ending at the top leaves the range below it.
        let high = IovaRange {
            first: 1 << 40,
            last: (1 << 41) - 1,
        };
        let r = usable_ranges((1 << 39) - 1, &[msi, high]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].last, (1 << 39) - 1);
        let top = IovaRange {
            first: 1 << 38,
            last: (1 << 39) - 1,
        };
        let r = usable_ranges((1 << 39) - 1, &[top]).unwrap();
        assert_eq!(
            r.as_slice(),
            &[IovaRange {
                first: 0,
                last: (1 << 38) - 1
            }]
        );
    }

    static DEVS_A: [DeviceGrant; 1] = [DeviceGrant::new(0, 8)];
    static DEVS_B: [DeviceGrant; 1] = [DeviceGrant::new(0, 8)];

    #[test]
    fn overlapping_devices_are_refused() {
        static CLIENTS: [ClientConfig; 2] = [
            ClientConfig {
                id: ClientId(1),
                devices: &DEVS_A,
                regions: &[],
                max_domains: 1,
                max_table_frames: 8,
            },
            ClientConfig {
                id: ClientId(2),
                devices: &DEVS_B,
                regions: &[],
                max_domains: 1,
                max_table_frames: 8,
            },
        ];
        let c = Config {
            clients: &CLIENTS,
            reserved: &[],
        };
        assert_eq!(
            c.validate(1, 4, 4),
            Err(ConfigError::DeviceOverlap {
                client: 1,
                device: 0
            })
        );
        assert_eq!(c.validate(1, 1, 4), Err(ConfigError::TooManyClients));
    }

    #[test]
    fn aliases_count_as_ids() {
        // Two devices behind one PCIe-to-PCI bridge share the bridge's alias 0x100.
        let a = [DeviceGrant {
            unit: 0,
            device: 0x118,
            aliases: &[0x100],
        }];
        let b = [DeviceGrant {
            unit: 0,
            device: 0x120,
            aliases: &[0x100],
        }];
        let other_unit = [DeviceGrant {
            unit: 1,
            device: 0x120,
            aliases: &[0x100],
        }];
        let client = |id, devices| ClientConfig {
            id: ClientId(id),
            devices,
            regions: &[],
            max_domains: 1,
            max_table_frames: 8,
        };
        let shared = [client(1, &a), client(2, &b)];
        let c = Config {
            clients: &shared,
            reserved: &[],
        };
        assert_eq!(
            c.validate(2, 4, 4),
            Err(ConfigError::DeviceOverlap {
                client: 1,
                device: 0
            })
        );
        let apart = [client(1, &a), client(2, &other_unit)];
        let c = Config {
            clients: &apart,
            reserved: &[],
        };
        assert_eq!(c.validate(2, 4, 4), Ok(2));
        let both = [DeviceGrant {
            unit: 0,
            device: 0x118,
            aliases: &[0x120, 0x100],
        }];
        let group = [client(1, &both)];
        let c = Config {
            clients: &group,
            reserved: &[],
        };
        assert_eq!(c.validate(1, 4, 4), Ok(1));
        let repeated = [DeviceGrant {
            unit: 0,
            device: 0x118,
            aliases: &[0x118],
        }];
        let bad = [client(1, &repeated)];
        let c = Config {
            clients: &bad,
            reserved: &[],
        };
        assert_eq!(
            c.validate(1, 4, 4),
            Err(ConfigError::DeviceOverlap {
                client: 0,
                device: 0
            })
        );
    }
}

//! The numbers of the system description `platform/microkit/iommu.system`, as the PDs use
//! them: channel identifiers (each PD's own), interrupt numbers, sizes and physical addresses
//! that the description fixes. Values the tool can patch in (virtual addresses, the physical
//! addresses it chooses) come from `<setvar>` symbols instead. A host test reads the
//! description and checks every value here against it.

use super::abi::Channel;

/// The IOMMU server PD's channels.
pub mod server {
    use super::Channel;
    /// The driver PD's calls: client 1.
    pub const DRIVER: Channel = Channel(0);
    /// The intruder PD's calls on its configured identity: client 2.
    pub const INTRUDER: Channel = Channel(1);
    /// The intruder PD's second channel, which the server's configuration gives no client.
    pub const UNKNOWN: Channel = Channel(2);
    /// The SMMU's event queue interrupt (SPI 74 = INTID 106, edge).
    pub const EVENTQ_IRQ: Channel = Channel(10);
    /// The SMMU's global error interrupt (SPI 77 = INTID 109, edge).
    pub const GERROR_IRQ: Channel = Channel(11);
}

/// The driver PD's channels.
pub mod driver {
    use super::Channel;
    /// Calls to the server (its identity: client 1); the server's fault notifications.
    pub const SERVER: Channel = Channel(0);
    /// Calls the intruder relays to the server as client 2.
    pub const INTRUDER_AS_CLIENT: Channel = Channel(1);
    /// Calls the intruder relays on the channel the server knows no client for.
    pub const INTRUDER_AS_STRANGER: Channel = Channel(2);
}

/// The intruder PD's channels.
pub mod intruder {
    use super::Channel;
    /// The driver's calls to relay as client 2.
    pub const FROM_DRIVER_AS_CLIENT: Channel = Channel(0);
    /// The driver's calls to relay on the unknown channel.
    pub const FROM_DRIVER_AS_STRANGER: Channel = Channel(1);
    /// Its own channel to the server (client 2).
    pub const SERVER: Channel = Channel(2);
    /// Its second channel to the server (no client).
    pub const SERVER_UNKNOWN: Channel = Channel(3);
}

/// Interrupt numbers (`<irq irq=...>`: the GIC INTID) of the SMMU's event queue and global
/// error interrupts on QEMU virt (SPIs 0x4a and 0x4d).
pub const SMMU_EVENTQ_INTID: u32 = 106;
/// See [`SMMU_EVENTQ_INTID`].
pub const SMMU_GERROR_INTID: u32 = 109;

/// Physical address of the SMMUv3 register block on QEMU virt (`iommu=smmuv3`).
pub const SMMU_PADDR: u64 = 0x0905_0000;
/// Size of the SMMUv3 register block (register pages 0 and 1).
pub const SMMU_SIZE: u64 = 0x2_0000;
/// Physical address of QEMU virt's high PCIe ECAM window.
pub const ECAM_PADDR: u64 = 0x40_1000_0000;
/// Size of the ECAM the server maps: buses 0 and 1 (1 MiB each).
pub const ECAM_SIZE: u64 = 0x20_0000;
/// Where the server places edu's BAR0 (inside virt's 32-bit PCI memory window
/// 0x1000_0000..0x3eff_0000, where PCI and CPU addresses are equal): the `edu_bar` region.
pub const EDU_BAR_PADDR: u64 = 0x1000_0000;
/// Size of the `edu_bar` region (edu's BAR0 is 1 MiB).
pub const EDU_BAR_SIZE: u64 = 0x10_0000;
/// Size of the driver's DMA region (`driver_dma`, granted to client 1; 2 MiB pages).
pub const DRIVER_DMA_SIZE: u64 = 0x80_0000;
/// Size of the intruder's DMA region (`intruder_dma`, granted to client 2).
pub const INTRUDER_DMA_SIZE: u64 = 0x1_0000;
/// Size of the server's table region (`iommu_tables`): stream table, queues, context
/// descriptors and page tables come from it.
pub const TABLES_SIZE: u64 = 0x40_0000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn description() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/microkit/iommu.system");
        std::fs::read_to_string(path).expect("the system description is in the repository")
    }

    /// The attribute `attr` of the first element that contains all of `with`.
    fn attr_of(sdf: &str, with: &[&str], attr: &str) -> u64 {
        let element = sdf
            .split('<')
            .find(|e| with.iter().all(|w| e.contains(w)))
            .unwrap_or_else(|| panic!("no element with {with:?}"));
        let key = std::format!("{attr}=\"");
        let start = element
            .find(&key)
            .unwrap_or_else(|| panic!("{attr} in {element}"))
            + key.len();
        let value = &element[start..start + element[start..].find('"').unwrap()];
        let value = value.replace('_', "");
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => value.parse().unwrap(),
        }
    }

    #[test]
    fn the_numbers_match_the_system_description() {
        let sdf = description();
        let mr = |name: &str, attr| {
            attr_of(
                &sdf,
                &["memory_region", &std::format!("name=\"{name}\"")],
                attr,
            )
        };
        assert_eq!(mr("smmu_regs", "phys_addr"), SMMU_PADDR);
        assert_eq!(mr("smmu_regs", "size"), SMMU_SIZE);
        assert_eq!(mr("ecam", "phys_addr"), ECAM_PADDR);
        assert_eq!(mr("ecam", "size"), ECAM_SIZE);
        assert_eq!(mr("edu_bar", "phys_addr"), EDU_BAR_PADDR);
        assert_eq!(mr("edu_bar", "size"), EDU_BAR_SIZE);
        assert_eq!(mr("driver_dma", "size"), DRIVER_DMA_SIZE);
        assert_eq!(mr("intruder_dma", "size"), INTRUDER_DMA_SIZE);
        assert_eq!(mr("iommu_tables", "size"), TABLES_SIZE);

        let irq = |id: Channel| attr_of(&sdf, &["irq ", &std::format!("id=\"{}\"", id.0)], "irq");
        assert_eq!(irq(server::EVENTQ_IRQ), u64::from(SMMU_EVENTQ_INTID));
        assert_eq!(irq(server::GERROR_IRQ), u64::from(SMMU_GERROR_INTID));

        // Each channel's two ends, as (pd, id) pairs in the description's <end> elements.
        let ends: std::vec::Vec<(String, u64)> = sdf
            .split("<end ")
            .skip(1)
            .map(|e| {
                let pd = e.split("pd=\"").nth(1).unwrap();
                let pd = String::from(&pd[..pd.find('"').unwrap()]);
                (pd, attr_of(e, &[], "id"))
            })
            .collect();
        let pairs: std::vec::Vec<_> = ends
            .chunks(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect();
        let connected = |a: (&str, Channel), b: (&str, Channel)| {
            let a = (String::from(a.0), u64::from(a.1.0));
            let b = (String::from(b.0), u64::from(b.1.0));
            pairs
                .iter()
                .any(|(x, y)| (x == &a && y == &b) || (x == &b && y == &a))
        };
        assert!(connected(
            ("driver", driver::SERVER),
            ("iommu", server::DRIVER)
        ));
        assert!(connected(
            ("driver", driver::INTRUDER_AS_CLIENT),
            ("intruder", intruder::FROM_DRIVER_AS_CLIENT)
        ));
        assert!(connected(
            ("driver", driver::INTRUDER_AS_STRANGER),
            ("intruder", intruder::FROM_DRIVER_AS_STRANGER)
        ));
        assert!(connected(
            ("intruder", intruder::SERVER),
            ("iommu", server::INTRUDER)
        ));
        assert!(connected(
            ("intruder", intruder::SERVER_UNKNOWN),
            ("iommu", server::UNKNOWN)
        ));
    }
}

//! A device driver's view of iommu-server, in one process: the server over the mock backend,
//! one client talking to it through the protocol, one mapping the device uses, one fault.
//!
//! Run it with `cargo run -p iommu-test-harness --example driver`.
//!
//! In a real system the three parts live apart: the integrator's code (the first block of
//! `main`) runs in the IOMMU server's protection domain with a vendor backend
//! (`iommu_hal::vtd::VtdBackend`, `iommu_hal::smmuv3::SmmuBackend`) instead of the mock; the
//! transport is the kernel's IPC (an seL4 `Call`, a Hubris `sys_send`); the driver (the second
//! block) is an untrusted process that only ever holds a `Client`.

use std::cell::RefCell;
use std::error::Error;

use iommu_hal::pagetable::Perms as Grant;
use iommu_protocol::client::{Client, Faults, Transport};
use iommu_protocol::{ByteLen, DeviceHandle, Iova, Perms, PhysAddr, TransportError};
use iommu_server::{ClientConfig, ClientId, Config, DeviceGrant, NoNotify, RegionGrant, Server};
use iommu_test_harness::mock::{MockSpec, VtdMock};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

/// The server of this system: the mock backend (it models a VT-d unit, page walks and IOTLB
/// included), the memory its tables live in and the pool of table frames.
type Iommu<'a> = Server<'a, VtdMock, SharedMem, SimAlloc, NoNotify>;

/// The IPC of a one-process system: hands one encoded request to the server together with the
/// caller's identity (on seL4 the badge, on Hubris the task id: never read from the message)
/// and gets the encoded reply.
struct InProcess<'s, 'a> {
    server: &'s RefCell<Iommu<'a>>,
    id: ClientId,
}

impl Transport for InProcess<'_, '_> {
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
        let mut server = self
            .server
            .try_borrow_mut()
            .map_err(|_| TransportError::Other)?;
        Ok(server.handle(self.id, request, reply))
    }
}

/// The driver's device: requester id 00:01.0 behind unit 0.
const DEVICE_RID: u32 = 0x0008;
/// The memory the driver was granted: 1 MiB at 256 MiB.
const BUFFERS: u64 = 0x1000_0000;

fn main() -> Result<(), Box<dyn Error>> {
    // The integrator: memory, the IOMMU backend, and who may do what.
    let mem = SharedMem::new();
    let frames = SimAlloc::new(mem.clone(), 0x4000_0000, 256);
    let backend = VtdMock::new(mem.clone(), MockSpec::default());
    let devices = [DeviceGrant::new(0, DEVICE_RID)];
    let regions = [RegionGrant {
        base: BUFFERS,
        len: 0x10_0000,
        perms: Grant::RW,
    }];
    let clients = [ClientConfig {
        id: ClientId(1),
        devices: &devices,
        regions: &regions,
        max_domains: 2,
        max_table_frames: 32,
    }];
    let config = Config {
        clients: &clients,
        reserved: &[],
    };
    // Every configured device is blocked from here on, never passthrough.
    let server = RefCell::new(Iommu::new(backend, mem, frames, NoNotify, config)?);

    // The driver: it speaks only the protocol, in ranges, never in page sizes.
    let mut iommu = Client::new(InProcess {
        server: &server,
        id: ClientId(1),
    });
    iommu.hello()?;
    let domain = iommu.create_domain()?;
    let device = DeviceHandle(0); // the index of the device in the driver's grant
    iommu.attach(domain, device)?;
    let (iova, len) = (Iova(0x10_0000), ByteLen(0x4000));
    iommu.map(domain, iova, PhysAddr(BUFFERS), len, Perms::RW)?;
    println!(
        "mapped {iova:?} + {len:?}: {:?}",
        iommu.query(domain, iova)?
    );

    // The device writes through the IOVA (the mock translates as the unit would).
    let target = iova + ByteLen(0x1230);
    let landed = server
        .borrow_mut()
        .backend_mut()
        .translate(0, DEVICE_RID, target.0, true);
    assert_eq!(landed, Ok(BUFFERS + 0x1230));
    println!(
        "device write to {target:?} lands at {:#x}",
        BUFFERS + 0x1230
    );

    // Unmap: when the reply arrives the device can no longer reach the buffer.
    let unmapped = iommu.unmap(domain, iova, len)?;
    let blocked = server
        .borrow_mut()
        .backend_mut()
        .translate(0, DEVICE_RID, iova.0, true);
    println!("unmapped {unmapped:?}; the device's next write: {blocked:?}");
    assert!(blocked.is_err());

    // The unit recorded a fault. The platform drains the unit when its fault interrupt fires;
    // the driver then collects the faults of its own devices.
    server.borrow_mut().service_faults();
    let Faults { records, lost } = iommu.faults()?;
    for f in &records {
        println!(
            "fault: device {}, iova {:#x}, {}, {:?}",
            f.device.0,
            f.iova,
            if f.write { "write" } else { "read" },
            f.reason
        );
    }
    assert_eq!((records.len(), lost), (1, 0));

    iommu.detach(device)?;
    iommu.destroy_domain(domain)?;
    Ok(())
}

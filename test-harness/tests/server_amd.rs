//! The server's message-level suite on the real AMD-Vi backend (`iommu_hal::amd`, `AmdV1`
//! tables) driving two register-level AMD-Vi models (`iommu_test_harness::model::amd`).
//! Device ids are DeviceIDs. DMA goes through the models' own DTE fetches, walks and
//! stale-keeping caches; after every access the models' violation logs must be empty and no
//! cached DTE or translation may disagree with memory (`stale_hits`, `stale_dte_hits`).
//!
//! The suite's "caches not-present entries" setup is the capability header's NpCache bit, so
//! both variants run. Failures are injected behind the models' registers
//! (`iommu_test_harness::inject`, at the Command Buffer Tail Pointer): a hung command buffer,
//! a lost submission, an illegal command, a COMPLETION_WAIT that never stores.
//!
//! Beyond the suite: a blocked device (configured but never attached, and one no client
//! owns) faults and is reported as blocked, and the same server over a backend that forgets
//! its IOTLB invalidations is caught by the model.

use iommu_hal::amd::{AmdBackend, AmdConfig, AmdRegs};
use iommu_test_harness::fixtures::{ModelFixture, Vendor};
use iommu_test_harness::inject::{Doorbell, Faulty, Injector};
use iommu_test_harness::model::amd::{AmdHandle, AmdModelConfig as ModelCfg};
use iommu_test_harness::rig::FakeDelay;
use iommu_test_harness::server_suite::{Faulted, POOL_BASE, Setup};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

type Be = AmdBackend<Faulty<AmdHandle>, AmdHandle, SharedMem, FakeDelay, 2>;

/// The units' configuration: the IOMMU capability at the model's offset, a device table for
/// bus 0 (every device of the suite lives there).
fn unit_config() -> AmdConfig {
    AmdConfig {
        max_device_id: 0x00ff,
        cap_offset: Some(0x40),
        ..AmdConfig::default()
    }
}

/// AMD-Vi for the generic model fixture: two AMD-Vi models, failures injected at the
/// Command Buffer Tail Pointer. The violation logs must stay empty (but for the illegal
/// commands a test injected) and, until a failure is injected, no cached entry may disagree
/// with memory: lost invalidations leave stale entries, which the suite then judges by what
/// DMA reaches.
struct Amd;

impl Vendor for Amd {
    type Backend = Be;
    type Unit = AmdHandle;

    fn build(
        setup: &Setup,
        mem: &SharedMem,
        alloc: &mut SimAlloc,
        injectors: &[Injector; 2],
    ) -> (Be, [AmdHandle; 2]) {
        let mut be = Be::new(mem.clone(), FakeDelay::default());
        let units = [0, 1].map(|u| {
            let np = setup.caches_not_present & (1 << u) != 0;
            AmdHandle::new(mem.clone(), ModelCfg::qemu().with_np_cache(np))
        });
        for (hw, inj) in units.iter().zip(injectors) {
            let regs = AmdRegs {
                mmio: Faulty::new(hw.clone(), Doorbell::AmdCmdTail, mem.clone(), inj.clone()),
                config: hw.clone(),
            };
            be.add_unit(regs, alloc, unit_config())
                .expect("unit bring-up");
        }
        (be, units)
    }
    fn translate(unit: &AmdHandle, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
        unit.translate(rid as u16, iova, write).map_err(|_| Faulted)
    }
    fn check(units: &[AmdHandle; 2], injectors: &[Injector; 2], injected: bool) {
        for (u, hw) in units.iter().enumerate() {
            let v = hw.violations();
            if injectors[u].plan().corrupted == 0 {
                assert!(v.is_empty(), "unit {u} violations: {v:?}");
            } else {
                assert!(
                    v.iter().all(|m| m.starts_with("illegal command")),
                    "unit {u} violations: {v:?}"
                );
            }
            if injected {
                continue;
            }
            let s = hw.stats();
            assert_eq!(s.stale_hits, 0, "unit {u}: stale IOTLB hits");
            assert_eq!(s.stale_dte_hits, 0, "unit {u}: stale DTE hits");
        }
    }
}

type AmdFixture = ModelFixture<Amd>;

iommu_test_harness::server_suite_tests!(AmdFixture);

mod random {
    use super::AmdFixture;
    use iommu_test_harness::server_suite::{op_strategy, run_stream};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn request_streams_match_the_model(
            ops in prop::collection::vec((0usize..2, op_strategy()), 1..30)
        ) {
            run_stream::<AmdFixture>(&ops);
        }
    }
}

/// Random request streams with unit failures injected (issue 10): the isolation invariant
/// holds after every step, and everything recovers once the units do.
mod random_faults {
    use iommu_test_harness::server_suite::{fault_op_strategy, run_fault_stream};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn isolation_survives_unit_failures(
            ops in prop::collection::vec(fault_op_strategy(), 1..40)
        ) {
            run_fault_stream::<super::AmdFixture>(&ops);
        }
    }
}

mod amd_only {
    use super::*;
    use iommu_hal::backend::{
        Backend, DomainConfig, FaultInterrupt, FaultRecord, UnitIndex, UnitInfo,
    };
    use iommu_hal::pagetable::Gather;
    use iommu_hal::{FrameAlloc, amd::AmdError};
    use iommu_protocol::{FaultReason, Perms};
    use iommu_test_harness::inject::UnitFault;
    use iommu_test_harness::server_suite::{
        A, Fixture, Recorder, SuiteServer, UNOWNED, attach, config, create, dma, faults, map,
        query, unmap,
    };

    /// A configured device never attached, and a device no client owns: their DMA faults
    /// (the unit refuses it, never passes it through) and the owner hears of it as blocked.
    #[test]
    fn blocked_devices_fault() {
        let mut f = AmdFixture::build(&Setup::default(), Recorder::default());
        let d = create(&mut f, A);
        map(&mut f, A, d, 0, 0x1000_0000, 0x1000, Perms::RW);
        attach(&mut f, A, d, 0);
        assert_eq!(dma(&mut f, A, 0, 0, true), Ok(0x1000_0000));
        // Device 1 of A: configured, not attached.
        assert_eq!(dma(&mut f, A, 1, 0, true), Err(Faulted));
        assert_eq!(dma(&mut f, A, 1, 0x1234_5000, false), Err(Faulted));
        let unowned = f.server_ref().stats().faults_unowned;
        assert_eq!(f.dma(UNOWNED.0, UNOWNED.1, 0, false), Err(Faulted));
        f.server().service_faults();
        assert!(f.server_ref().stats().faults_unowned > unowned);
        let (recs, lost) = faults(&mut f, A);
        assert_eq!(lost, 0);
        assert_eq!(recs.len(), 2);
        assert!(
            recs.iter()
                .all(|r| r.device.0 == 1 && r.reason == FaultReason::Blocked)
        );
        assert!(recs.iter().any(|r| r.iova == 0x1234_5000 && !r.write));
        assert!(recs.iter().any(|r| r.iova == 0 && r.write));
        // Nothing reached memory through any of them.
        assert!(f.units[0].borrow().stats().passthrough == 0);
    }

    /// A backend that forgets IOTLB invalidations while `forget` is set.
    struct Forgetful {
        inner: Be,
        forget: bool,
    }

    impl Backend for Forgetful {
        type Format = <Be as Backend>::Format;
        type Error = AmdError;
        fn unit_count(&self) -> usize {
            self.inner.unit_count()
        }
        fn unit_info(&self, unit: UnitIndex) -> UnitInfo {
            self.inner.unit_info(unit)
        }
        fn attach(
            &mut self,
            alloc: &mut dyn FrameAlloc,
            unit: UnitIndex,
            device: u32,
            domain: DomainConfig,
        ) -> Result<(), AmdError> {
            self.inner.attach(alloc, unit, device, domain)
        }
        fn block(&mut self, unit: UnitIndex, device: u32) -> Result<(), AmdError> {
            self.inner.block(unit, device)
        }
        fn invalidate(&mut self, unit: UnitIndex, tag: u16, g: &Gather) -> Result<(), AmdError> {
            if self.forget {
                return Ok(());
            }
            self.inner.invalidate(unit, tag, g)
        }
        fn invalidate_all(&mut self, unit: UnitIndex, tag: u16) -> Result<(), AmdError> {
            self.inner.invalidate_all(unit, tag)
        }
        fn enable_fault_interrupt(
            &mut self,
            unit: UnitIndex,
            irq: FaultInterrupt,
        ) -> Result<(), AmdError> {
            self.inner.enable_fault_interrupt(unit, irq)
        }
        fn drain_faults(
            &mut self,
            unit: UnitIndex,
            sink: &mut dyn FnMut(FaultRecord),
        ) -> Result<bool, AmdError> {
            self.inner.drain_faults(unit, sink)
        }
    }

    struct ForgetfulFixture {
        server: SuiteServer<Forgetful>,
        units: [AmdHandle; 2],
    }

    impl Fixture for ForgetfulFixture {
        type Backend = Forgetful;
        fn build(setup: &Setup, notify: Recorder) -> Self {
            let mem = SharedMem::new();
            let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, setup.pool_frames);
            let injectors = [Injector::default(), Injector::default()];
            let (be, units) = Amd::build(setup, &mem, &mut alloc, &injectors);
            let be = Forgetful {
                inner: be,
                forget: false,
            };
            let server = SuiteServer::new(be, mem, alloc, notify, config()).expect("server");
            ForgetfulFixture { server, units }
        }
        fn server(&mut self) -> &mut SuiteServer<Forgetful> {
            &mut self.server
        }
        fn server_ref(&self) -> &SuiteServer<Forgetful> {
            &self.server
        }
        fn dma(&mut self, unit: usize, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
            self.units[unit]
                .translate(rid as u16, iova, write)
                .map_err(|_| Faulted)
        }
        fn inject(&mut self, _unit: usize, _fault: UnitFault) -> bool {
            false
        }
        fn heal(&mut self) {}
    }

    /// With the invalidation skipped, the model's IOTLB still translates the unmapped page
    /// (the device could reach freed memory) and counts a stale hit: the model catches it.
    /// The same sequence with invalidations faults.
    #[test]
    fn a_missing_invalidation_is_caught_by_the_model() {
        for forget in [false, true] {
            let mut f = ForgetfulFixture::build(&Setup::default(), Recorder::default());
            let d = create(&mut f, A);
            attach(&mut f, A, d, 0);
            map(&mut f, A, d, 0x10_0000, 0x1000_0000, 0x2000, Perms::RW);
            assert_eq!(dma(&mut f, A, 0, 0x10_1000, true), Ok(0x1000_1000));
            f.server.backend_mut().forget = forget;
            assert_eq!(unmap(&mut f, A, d, 0x10_0000, 0x2000), 0x2000);
            assert_eq!(query(&mut f, A, d, 0x10_1000), None);
            let after = dma(&mut f, A, 0, 0x10_1000, true);
            let stale = f.units[0].stats().stale_hits;
            if forget {
                assert_eq!(
                    after,
                    Ok(0x1000_1000),
                    "the stale IOTLB entry lets it through"
                );
                assert_eq!(stale, 1, "and the model counts it");
            } else {
                assert_eq!(after, Err(Faulted));
                assert_eq!(stale, 0);
            }
        }
    }
}

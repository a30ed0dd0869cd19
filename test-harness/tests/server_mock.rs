//! The server's message-level suite on the mock backend.

use iommu_test_harness::mock::MockFixture;

iommu_test_harness::server_suite_tests!(MockFixture);

mod mock_only {
    use iommu_protocol::{Error, Perms, Request};
    use iommu_test_harness::mock::{MockFixture, MockSpec};
    use iommu_test_harness::server_suite::{
        A, Faulted, Recorder, Setup, attach, create, dma, err, map, map_req, observe, unmap,
    };

    /// Units that forbid replacing a live block by a table: an unmap that would split a 2 MiB
    /// page is `Unsupported` and changes nothing; whole-page unmaps still work.
    #[test]
    fn split_forbidden_is_unsupported() {
        let spec = MockSpec {
            split_live_blocks: false,
            ..MockSpec::default()
        };
        let mut f = MockFixture::with_spec(&Setup::default(), Recorder::default(), spec);
        let d = create(&mut f, A);
        attach(&mut f, A, d, 0);
        map(&mut f, A, d, 0x20_0000, 0x1000_0000, 0x20_0000, Perms::RW);
        let probes = [0x20_0000, 0x20_1000, 0x3f_f000];
        let before = observe(&mut f, &[(A, d)], &[(A, 0)], &probes);
        let split = Request::Unmap {
            domain: d,
            iova: 0x20_1000,
            len: 0x1000,
        };
        assert_eq!(err(&mut f, A, &split), Error::Unsupported);
        assert_eq!(observe(&mut f, &[(A, d)], &[(A, 0)], &probes), before);
        assert_eq!(unmap(&mut f, A, d, 0, 0x60_0000), 0x20_0000);
        assert_eq!(dma(&mut f, A, 0, 0x20_1000, false), Err(Faulted));
        // 4 KiB-only units: a 2 MiB-aligned map is built from 4 KiB pages and splits freely.
        let spec = MockSpec {
            leaf_sizes: iommu_hal::pagetable::LeafSizes::SZ_4K,
            split_live_blocks: false,
            ..MockSpec::default()
        };
        let mut f = MockFixture::with_spec(&Setup::default(), Recorder::default(), spec);
        let d = create(&mut f, A);
        assert_eq!(
            iommu_test_harness::server_suite::call(
                &mut f,
                A,
                &map_req(d, 0x20_0000, 0x1000_0000, 0x20_0000, Perms::RW)
            ),
            iommu_protocol::Reply::Done
        );
        assert_eq!(unmap(&mut f, A, d, 0x20_1000, 0x1000), 0x1000);
    }

    /// A unit that overflowed its own fault log: counted; the records it kept are routed.
    #[test]
    fn hardware_fault_overflow_is_counted() {
        let rec = Recorder::default();
        let mut f = MockFixture::with_spec(&Setup::default(), rec.clone(), MockSpec::default());
        let slots = f.server.backend().spec().fault_slots as u64;
        for i in 0..slots + 3 {
            assert_eq!(dma(&mut f, A, 0, i * 0x1000, false), Err(Faulted));
        }
        f.server.service_faults();
        assert_eq!(f.server.stats().hw_fault_overflows, 1);
        assert_eq!(rec.take(), vec![A]);
        let (recs, lost) = iommu_test_harness::server_suite::faults(&mut f, A);
        assert_eq!(recs.len() as u64, slots.min(8));
        assert_eq!(u64::from(lost), slots.saturating_sub(8));
    }
}

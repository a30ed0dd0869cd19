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

    /// A fresh mock fixture with the default spec.
    fn fixture() -> MockFixture {
        MockFixture::with_spec(&Setup::default(), Recorder::default(), MockSpec::default())
    }

    /// A fresh mock fixture and A's domain with A's `devices` attached (device 0 and 1 sit
    /// on unit 0, device 2 on unit 1) and `len` bytes from `iova` mapped read-write to A's
    /// memory at 0x1000_0000.
    fn mapped_domain(
        devices: &[u32],
        iova: u64,
        len: u64,
    ) -> (MockFixture, iommu_protocol::DomainHandle) {
        let mut f = fixture();
        let d = create(&mut f, A);
        for &dev in devices {
            attach(&mut f, A, d, dev);
        }
        map(&mut f, A, d, iova, 0x1000_0000, len, Perms::RW);
        (f, d)
    }

    /// Unmaps the page at 2 MiB of A's domain `d` while every submission to `unit` is lost:
    /// HardwareTimeout, the unit stale; then the unit answers again.
    fn lose_an_unmap_invalidation(
        f: &mut MockFixture,
        d: iommu_protocol::DomainHandle,
        unit: usize,
    ) {
        use iommu_test_harness::inject::UnitFault;
        use iommu_test_harness::server_suite::Fixture;
        f.inject(unit, UnitFault::Lose { after: 0 });
        let unmap = Request::Unmap {
            domain: d,
            iova: 0x20_0000,
            len: 0x1000,
        };
        assert_eq!(err(f, A, &unmap), Error::HardwareTimeout);
        f.server.backend_mut().heal();
    }

    /// Detaches A's devices 0 and 2, each answered Done.
    fn detach_both(f: &mut MockFixture) {
        for dev in [0, 2] {
            let detach = Request::Detach {
                device: iommu_protocol::DeviceHandle(dev),
            };
            assert_eq!(
                iommu_test_harness::server_suite::call(f, A, &detach),
                iommu_protocol::Reply::Done
            );
        }
    }

    /// Destroying a domain releases the per-domain structures of every unit one of its
    /// devices was attached to, unit 1 as well as unit 0, so that the next domain with the
    /// same tag starts from nothing there.
    #[test]
    fn destroy_releases_the_structures_of_every_unit() {
        let (mut f, d) = mapped_domain(&[0, 2], 0x20_0000, 0x1000);
        let tags = |f: &MockFixture, u| f.server.backend().tags(u);
        assert_eq!(tags(&f, 1).len(), 1);
        assert_eq!(tags(&f, 0), tags(&f, 1));
        detach_both(&mut f);
        let destroy = Request::DestroyDomain { domain: d };
        assert_eq!(
            iommu_test_harness::server_suite::call(&mut f, A, &destroy),
            iommu_protocol::Reply::Done
        );
        assert!(tags(&f, 0).is_empty() && tags(&f, 1).is_empty());
    }

    /// A teardown whose release fails on the second unit stops there and is retried to the
    /// end: what completed stays done (no unit invalidated or released twice), the rest is
    /// done by the retry, and only then do the frames go back.
    #[test]
    fn a_failed_release_is_retried_from_where_it_stopped() {
        use iommu_protocol::Reply;
        use iommu_test_harness::server_suite::call;
        let (mut f, d) = mapped_domain(&[0, 2], 0x20_0000, 0x1000);
        detach_both(&mut f);
        let usage = f.server.usage(A);
        f.server.backend_mut().fail_release = Some(1);
        let destroy = Request::DestroyDomain { domain: d };
        assert_eq!(err(&mut f, A, &destroy), Error::HardwareError);
        let b = f.server.backend();
        assert_eq!((b.releases(0), b.releases(1)), (1, 0));
        assert_eq!(b.tags(0), Vec::<u16>::new());
        assert_eq!(b.tags(1).len(), 1);
        assert_eq!(f.server.usage(A), usage, "nothing freed yet");
        let invalidations = b.total_invalidations();
        assert_eq!(call(&mut f, A, &destroy), Reply::Done);
        let b = f.server.backend();
        assert_eq!(
            b.total_invalidations(),
            invalidations,
            "both units were invalidated by the first attempt"
        );
        assert_eq!((b.releases(0), b.releases(1)), (1, 1));
        assert!(b.tags(1).is_empty());
        assert_eq!(f.server.usage(A), Some((0, 0)));
    }

    /// The same with unit 1 stale at teardown (an unmap's invalidation there was lost): the
    /// first attempt invalidates both units, and the retry after the failed release does
    /// not invalidate again.
    #[test]
    fn a_failed_release_after_a_lost_invalidation_is_not_invalidated_twice() {
        use iommu_protocol::Reply;
        use iommu_test_harness::mock::Invalidation;
        use iommu_test_harness::server_suite::call;
        let (mut f, d) = mapped_domain(&[0, 2], 0x20_0000, 0x2000);
        lose_an_unmap_invalidation(&mut f, d, 1);
        detach_both(&mut f);
        f.server.backend_mut().fail_release = Some(1);
        let destroy = Request::DestroyDomain { domain: d };
        let logged = f.server.backend().log.len();
        assert_eq!(err(&mut f, A, &destroy), Error::HardwareError);
        // Unit 1 (stale) was invalidated before the releases.
        assert!(
            f.server.backend().log[logged..]
                .iter()
                .any(|i| matches!(i, Invalidation::All { unit: 1, .. })),
            "unit 1 not invalidated at teardown"
        );
        let invalidations = f.server.backend().total_invalidations();
        assert_eq!(call(&mut f, A, &destroy), Reply::Done);
        assert_eq!(f.server.backend().total_invalidations(), invalidations);
        assert_eq!(f.server.usage(A), Some((0, 0)));
    }

    /// A unit stale at teardown (an unmap's invalidation was lost while the device was
    /// attached) is invalidated before the tables go: the next domain with the tag finds
    /// nothing of this one in the unit's IOTLB.
    #[test]
    fn a_stale_unit_is_invalidated_at_teardown() {
        use iommu_protocol::{DeviceHandle, Reply};
        use iommu_test_harness::server_suite::call;
        let (mut f, d) = mapped_domain(&[0], 0x20_0000, 0x2000);
        assert_eq!(dma(&mut f, A, 0, 0x20_0000, true), Ok(0x1000_0000));
        assert!(f.server.backend().iotlb_len(0) > 0);
        // Unit 0 is stale (and dirty: the device is attached).
        lose_an_unmap_invalidation(&mut f, d, 0);
        let detach = Request::Detach {
            device: DeviceHandle(0),
        };
        assert_eq!(call(&mut f, A, &detach), Reply::Done);
        let destroy = Request::DestroyDomain { domain: d };
        assert_eq!(call(&mut f, A, &destroy), Reply::Done);
        assert_eq!(f.server.backend().iotlb_len(0), 0, "A's translations left");
    }

    /// A unit whose fault log cannot be read: counted as a drain error, and the other
    /// units' records are still routed.
    #[test]
    fn a_drain_error_is_counted() {
        let mut f = fixture();
        let d = create(&mut f, A);
        attach(&mut f, A, d, 0);
        attach(&mut f, A, d, 2);
        assert_eq!(dma(&mut f, A, 2, 0x70_0000, true), Err(Faulted));
        f.server.backend_mut().fail_drain = Some(0);
        f.server.service_faults();
        assert_eq!(f.server.stats().drain_errors, 1);
        assert_eq!(f.server.stats().faults_routed, 1);
        f.server.service_faults();
        assert_eq!(f.server.stats().drain_errors, 1);
    }

    /// A unit that takes frames for a domain's structures at attach (as SMMUv3's context
    /// descriptors): a client short of frame quota gets QuotaExceeded, an exhausted pool
    /// OutOfTableMemory; either way the device stays blocked and every frame is where it was.
    #[test]
    fn attach_short_of_frames() {
        use iommu_protocol::DeviceHandle;
        use iommu_test_harness::server_suite::{C, C_MAX_FRAMES};
        let spec = MockSpec {
            attach_frames: u64::from(C_MAX_FRAMES),
            ..MockSpec::default()
        };
        let mut f = MockFixture::with_spec(&Setup::default(), Recorder::default(), spec);
        let attach_req = |domain| Request::Attach {
            domain,
            device: DeviceHandle(0),
        };
        // C's domain holds its root: fewer frames left than the unit wants.
        let c = create(&mut f, C);
        let usage = f.server.usage(C);
        assert_eq!(err(&mut f, C, &attach_req(c)), Error::QuotaExceeded);
        assert_eq!(f.server.usage(C), usage);
        assert_eq!(dma(&mut f, C, 0, 0x1000, false), Err(Faulted));
        // A has the quota, the pool has no frame.
        let a = create(&mut f, A);
        let usage = f.server.usage(A);
        f.server.alloc_mut().fail_in(0);
        f.server.alloc_mut().fail_after = true;
        assert_eq!(err(&mut f, A, &attach_req(a)), Error::OutOfTableMemory);
        f.server.alloc_mut().no_failures();
        f.server.alloc_mut().fail_after = false;
        assert_eq!(f.server.usage(A), usage);
        assert_eq!(dma(&mut f, A, 0, 0x1000, false), Err(Faulted));
        // With frames, the attach takes them, charged to A.
        attach(&mut f, A, a, 0);
        let (_, held) = f.server.usage(A).unwrap();
        assert_eq!(held, usage.unwrap().1 + u64::from(C_MAX_FRAMES));
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

    /// The counters count exactly what happened: every request, every error reply by its
    /// code, every invalidation call the units received (completed or failed, retries
    /// included), every routed, unowned and lost fault record, every failed block.
    #[test]
    fn stats_count_exactly() {
        use iommu_protocol::DeviceHandle;
        use iommu_test_harness::inject::UnitFault;
        use iommu_test_harness::server_suite::{B, Fixture, STRANGER, UNOWNED, call, done, faults};
        fn inv_agree(f: &MockFixture) {
            assert_eq!(
                f.server.stats().invalidations,
                f.server.backend().total_invalidations(),
                "Stats::invalidations counts every call the units received"
            );
        }
        let rec = Recorder::default();
        let mut f = MockFixture::with_spec(&Setup::default(), rec.clone(), MockSpec::default());
        let d = create(&mut f, A);
        attach(&mut f, A, d, 0);
        attach(&mut f, A, d, 2);
        map(&mut f, A, d, 0, 0x1000_0000, 4 * 0x1000, Perms::RW);
        assert_eq!(unmap(&mut f, A, d, 0, 0x1000), 0x1000);
        inv_agree(&f);
        assert_eq!(
            f.server.stats().invalidations,
            2,
            "one per unit the domain is on"
        );
        assert_eq!(f.server.stats().requests, 5);
        // Errors, by code.
        let zero = map_req(d, 0, 0x1000_0000, 0, Perms::RW);
        assert_eq!(err(&mut f, A, &zero), Error::InvalidArgument);
        assert_eq!(err(&mut f, A, &zero), Error::InvalidArgument);
        assert_eq!(err(&mut f, STRANGER, &Request::Info), Error::NotPermitted);
        assert_eq!(
            err(&mut f, B, &Request::DestroyDomain { domain: d }),
            Error::NoSuchDomain
        );
        let st = *f.server.stats();
        assert_eq!(st.requests, 9);
        assert_eq!(st.errors[Error::InvalidArgument.code() as usize], 2);
        assert_eq!(st.errors[Error::NotPermitted.code() as usize], 1);
        assert_eq!(st.errors[Error::NoSuchDomain.code() as usize], 1);
        assert_eq!(st.errors.iter().sum::<u64>(), 4);
        // Faults: two of A's devices, one unowned, then A's queue overflows by two.
        assert!(dma(&mut f, A, 0, 0x10_0000, false).is_err());
        assert!(dma(&mut f, A, 2, 0x10_0000, true).is_err());
        let (unit, rid) = UNOWNED;
        assert!(
            f.server
                .backend_mut()
                .translate(unit, rid, 0, false)
                .is_err()
        );
        f.server.service_faults();
        let st = *f.server.stats();
        assert_eq!(
            (st.faults_routed, st.faults_unowned, st.faults_lost),
            (2, 1, 0)
        );
        for i in 0..7u64 {
            assert!(dma(&mut f, A, 0, 0x20_0000 + i * 0x1000, false).is_err());
            f.server.service_faults();
        }
        let st = *f.server.stats();
        assert_eq!(
            (st.faults_routed, st.faults_unowned, st.faults_lost),
            (8, 1, 1)
        );
        assert_eq!(faults(&mut f, A).1, 1);
        // A lost invalidation, its retry, a hung unit's failed blocks: all counted.
        f.inject(0, UnitFault::Lose { after: 0 });
        let unmap1 = Request::Unmap {
            domain: d,
            iova: 0x1000,
            len: 0x1000,
        };
        assert_eq!(err(&mut f, A, &unmap1), Error::HardwareTimeout);
        inv_agree(&f);
        assert_eq!(
            call(&mut f, A, &unmap1),
            iommu_protocol::Reply::Unmapped { bytes: 0 }
        );
        inv_agree(&f);
        assert_eq!(f.server.stats().failed_blocks, 0);
        // The failed invalidation blocked the domain's devices: attach one again, then hang.
        attach(&mut f, A, d, 0);
        f.inject(0, UnitFault::Hang);
        let detach = Request::Detach {
            device: DeviceHandle(0),
        };
        assert_eq!(err(&mut f, A, &detach), Error::HardwareTimeout);
        assert_eq!(err(&mut f, A, &detach), Error::HardwareTimeout);
        assert_eq!(f.server.stats().failed_blocks, 2);
        f.heal();
        done(&mut f, A, &detach);
        inv_agree(&f);
        assert_eq!(
            f.server.stats().errors[Error::HardwareTimeout.code() as usize],
            3
        );
    }

    /// A quarantined domain is never reclaimed while a device may still reach it: the retry
    /// before the client's next request fails to block the device (its submission is lost,
    /// so the unit still holds the cached entry) although the unit answers invalidations
    /// again; the domain stays quarantined and charged, its tag serves nobody else, and B's
    /// domain stays out of the device's reach. Once the block succeeds it is reclaimed.
    #[test]
    fn quarantine_outlives_a_failed_block() {
        use iommu_test_harness::inject::UnitFault;
        use iommu_test_harness::server_suite::{B, Fixture, call};
        let (mut f, _) = mapped_domain(&[0], 0, 0x1000);
        assert_eq!(dma(&mut f, A, 0, 0, true), Ok(0x1000_0000));
        f.inject(0, UnitFault::Hang);
        f.server.client_exited(A);
        f.heal();
        assert_eq!(f.server.stats().quarantined_domains, 1);
        // The retry's block is lost; everything after it would succeed.
        f.inject(0, UnitFault::Lose { after: 0 });
        let _ = call(&mut f, A, &Request::Info);
        assert_eq!(
            f.server.stats().reclaimed_domains,
            0,
            "reclaimed while reachable"
        );
        assert_eq!(f.server.usage(A).map(|u| u.0), Some(1));
        let b = create(&mut f, B);
        map(&mut f, B, b, 0, 0x4000_0000, 0x1000, Perms::RW);
        assert_ne!(
            dma(&mut f, A, 0, 0, true),
            Ok(0x4000_0000),
            "A's device reaches B"
        );
        // The unit answers: the next request's retry blocks the device and reclaims.
        let _ = call(&mut f, A, &Request::Info);
        assert_eq!(f.server.stats().reclaimed_domains, 1);
        assert_eq!(f.server.usage(A), Some((0, 0)));
        assert_eq!(dma(&mut f, A, 0, 0, true), Err(Faulted));
    }

    /// A unit whose invalidation failed is retried once, before the domain's next request,
    /// and then is clean: later requests that need no invalidation issue none.
    #[test]
    fn a_retried_unit_is_clean_afterwards() {
        use iommu_test_harness::inject::UnitFault;
        use iommu_test_harness::server_suite::Fixture;
        // Device 2 sits behind unit 1 (the stale bit is not bit 0).
        let (mut f, d) = mapped_domain(&[2], 0, 2 * 0x1000);
        f.inject(1, UnitFault::Lose { after: 0 });
        let unmap1 = Request::Unmap {
            domain: d,
            iova: 0x1000,
            len: 0x1000,
        };
        assert_eq!(err(&mut f, A, &unmap1), Error::HardwareTimeout);
        let inv = |f: &MockFixture| f.server.backend().total_invalidations();
        let before = inv(&f);
        map(&mut f, A, d, 0x10_0000, 0x1000_0000, 0x1000, Perms::RW);
        assert_eq!(inv(&f), before + 1, "the failed unit retried once");
        let before = inv(&f);
        map(&mut f, A, d, 0x20_0000, 0x1000_0000, 0x1000, Perms::RW);
        map(&mut f, A, d, 0x30_0000, 0x1000_0000, 0x1000, Perms::RW);
        assert_eq!(inv(&f), before, "clean: nothing to invalidate for a map");
    }

    /// Detaching the last device of a domain on a unit invalidates the domain there once, so
    /// the unit is no longer dirty: the domain's next unmap invalidates nowhere.
    #[test]
    fn detaching_the_last_device_forgets_the_unit() {
        use iommu_protocol::DeviceHandle;
        use iommu_test_harness::server_suite::done;
        let (mut f, d) = mapped_domain(&[2], 0, 2 * 0x1000);
        let on1 = |f: &MockFixture| f.server.backend().invalidations(1);
        let before = on1(&f);
        let detach = Request::Detach {
            device: DeviceHandle(2),
        };
        done(&mut f, A, &detach);
        assert_eq!(on1(&f), before + 1, "the unit forgets the domain at detach");
        let total = f.server.backend().total_invalidations();
        assert_eq!(unmap(&mut f, A, d, 0, 0x1000), 0x1000);
        assert_eq!(
            f.server.backend().total_invalidations(),
            total,
            "no unit is dirty"
        );
    }

    /// What is wrong with a request itself is reported before any capability check: a
    /// misaligned or wrapping address alone, of memory the client was never granted, is
    /// `Misaligned` or `OutOfRange`, never `NotPermitted`.
    #[test]
    fn argument_errors_come_before_capability_errors() {
        let mut f = fixture();
        let d = create(&mut f, A);
        let pg = 0x1000;
        // 0x7000_0000 is granted to nobody.
        let far = 0x7000_0000;
        let cases = [
            (pg, far + 1, pg, Error::Misaligned),
            (pg + 1, far, pg, Error::Misaligned),
            (pg, far, pg + 1, Error::Misaligned),
            (u64::MAX - 0xfff, far, 2 * pg, Error::OutOfRange),
            (pg, u64::MAX - 0xfff, 2 * pg, Error::OutOfRange),
            (pg, far, pg, Error::NotPermitted),
        ];
        for (iova, phys, len, want) in cases {
            let req = map_req(d, iova, phys, len, Perms::RW);
            assert_eq!(err(&mut f, A, &req), want, "{iova:#x} {phys:#x} {len:#x}");
        }
    }

    /// A Detach whose block completed but whose invalidation of the domain on the unit was
    /// lost (here unit 1, while the domain also has a device on unit 0): the device is
    /// blocked (Done), the lost unit is retried before the domain's next request, the other
    /// unit stays invalidated on unmaps, the retried unit is clean afterwards, and the tag
    /// never serves C (whose device is on unit 1) with A's stale translations behind it.
    #[test]
    fn a_lost_detach_invalidation_on_one_of_two_units() {
        use iommu_protocol::DeviceHandle;
        use iommu_test_harness::inject::UnitFault;
        use iommu_test_harness::server_suite::{C, Fixture, done};
        let x = 0x30_0000;
        let (mut f, d) = mapped_domain(&[0, 2], x, 2 * 0x1000);
        assert_eq!(dma(&mut f, A, 0, x, true), Ok(0x1000_0000));
        assert_eq!(dma(&mut f, A, 2, x, true), Ok(0x1000_0000));
        assert_eq!(dma(&mut f, A, 2, x + 0x1000, true), Ok(0x1000_1000));
        // The block passes; the invalidation of the domain's tag on unit 1 after it is lost.
        f.inject(1, UnitFault::Lose { after: 1 });
        let detach = |dev| Request::Detach {
            device: DeviceHandle(dev),
        };
        done(&mut f, A, &detach(2));
        assert_eq!(dma(&mut f, A, 2, x, true), Err(Faulted));
        // Device 0 on unit 0 still sees unmaps.
        assert_eq!(unmap(&mut f, A, d, x, 0x1000), 0x1000);
        assert_eq!(dma(&mut f, A, 0, x, true), Err(Faulted), "unit 0 stale");
        // Unit 1 was retried, and nothing of the domain is on it: not invalidated again.
        let on1 = f.server.backend().invalidations(1);
        assert_eq!(unmap(&mut f, A, d, x + 0x1000, 0x1000), 0x1000);
        assert_eq!(f.server.backend().invalidations(1), on1, "unit 1 is clean");
        // The domain goes; C's domain gets its tag on unit 1, without A's translations.
        done(&mut f, A, &detach(0));
        done(&mut f, A, &Request::DestroyDomain { domain: d });
        let c = create(&mut f, C);
        attach(&mut f, C, c, 0);
        assert_eq!(
            dma(&mut f, C, 0, x + 0x1000, true),
            Err(Faulted),
            "A's stale page"
        );
    }
}

/// Issue 10, case 4: quotas that cannot all be honoured at once are refused at start, so no
/// client can make another's `Info` promise false (or learn from `OutOfTableMemory` that
/// someone else is busy).
mod oversubscription {
    use iommu_hal::pagetable::Perms;
    use iommu_server::{ClientConfig, ClientId, Config, ConfigError, RegionGrant, Server};
    use iommu_test_harness::mock::{MockSpec, VtdMock};
    use iommu_test_harness::server_suite::{POOL_BASE, Recorder};
    use iommu_test_harness::sim::{SharedMem, SimAlloc};

    const REGION: [RegionGrant; 1] = [RegionGrant {
        base: 0x1000_0000,
        len: 0x10_0000,
        perms: Perms::RW,
    }];

    fn client(id: u32, max_domains: u32, max_table_frames: u32) -> ClientConfig<'static> {
        ClientConfig {
            id: ClientId(id),
            devices: &[],
            regions: &REGION,
            max_domains,
            max_table_frames,
        }
    }

    /// A server over a 64-frame pool and a mock whose units offer `max_tag` tags.
    fn start(clients: &[ClientConfig<'static>], max_tag: u16) -> Result<(), ConfigError> {
        let mem = SharedMem::new();
        let spec = MockSpec {
            max_tag,
            ..MockSpec::default()
        };
        let alloc = SimAlloc::new(mem.clone(), POOL_BASE, 64);
        let config = Config {
            clients,
            reserved: &[],
        };
        let s: Result<Server<'_, VtdMock, SharedMem, SimAlloc, Recorder, 4, 16, 16, 8>, _> =
            Server::new(
                VtdMock::new(mem.clone(), spec),
                mem,
                alloc,
                Recorder::default(),
                config,
            );
        s.map(|_| ())
    }

    #[test]
    fn domain_quotas_beyond_the_tags_are_refused() {
        assert_eq!(start(&[client(1, 4, 8), client(2, 4, 8)], 8), Ok(()));
        assert_eq!(
            start(&[client(1, 4, 8), client(2, 5, 8)], 8),
            Err(ConfigError::DomainQuotas { total: 9, slots: 8 })
        );
        // The server's own capacity (16 slots here) counts too.
        assert_eq!(
            start(&[client(1, 10, 8), client(2, 7, 8)], 255),
            Err(ConfigError::DomainQuotas {
                total: 17,
                slots: 16
            })
        );
    }

    #[test]
    fn frame_quotas_beyond_the_pool_are_refused() {
        assert_eq!(start(&[client(1, 1, 32), client(2, 1, 32)], 8), Ok(()));
        assert_eq!(
            start(&[client(1, 1, 32), client(2, 1, 33)], 8),
            Err(ConfigError::FrameQuotas {
                total: 65,
                pool: 64
            })
        );
    }
}

/// Random request streams with unit failures injected (issue 10): the isolation invariant
/// holds after every step, and everything recovers once the units do.
mod random_faults {
    use iommu_test_harness::server_suite::{fault_op_strategy, run_fault_stream};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn isolation_survives_unit_failures(
            ops in prop::collection::vec(fault_op_strategy(), 1..40)
        ) {
            run_fault_stream::<iommu_test_harness::mock::MockFixture>(&ops);
        }
    }
}

/// What `Server::new` refuses before touching the backend (`Config::validate`): each way a
/// configuration is malformed, next to the boundary case that is still accepted.
mod config_checks {
    use iommu_hal::pagetable::Perms;
    use iommu_protocol::IovaRange;
    use iommu_server::{
        ClientConfig, ClientId, Config, ConfigError, DeviceGrant, RegionGrant, usable_ranges,
    };

    const PAGE: u64 = 0x1000;

    fn region(base: u64, len: u64, perms: Perms) -> RegionGrant {
        RegionGrant { base, len, perms }
    }

    fn client<'a>(
        id: u32,
        devices: &'a [DeviceGrant<'a>],
        regions: &'a [RegionGrant],
    ) -> ClientConfig<'a> {
        ClientConfig {
            id: ClientId(id),
            devices,
            regions,
            max_domains: 1,
            max_table_frames: 8,
        }
    }

    fn validate(
        clients: &[ClientConfig<'_>],
        units: usize,
        max_clients: usize,
        max_devices: usize,
    ) -> Result<usize, ConfigError> {
        Config {
            clients,
            reserved: &[],
        }
        .validate(units, max_clients, max_devices)
    }

    /// A region must be non-empty, page aligned in base and length, end at or below 2^64 and
    /// grant something; each case breaks exactly one of these.
    #[test]
    fn malformed_regions_are_refused() {
        let top = region(u64::MAX - (PAGE - 1), PAGE, Perms::W);
        let good = [region(PAGE, PAGE, Perms::R), top];
        assert_eq!(validate(&[client(1, &[], &good)], 1, 4, 4), Ok(0));
        let none = Perms {
            read: false,
            write: false,
        };
        for (bad, why) in [
            (region(PAGE, 0, Perms::RW), "empty"),
            (
                region(PAGE + 0x800, PAGE, Perms::RW),
                "base not page aligned",
            ),
            (
                region(PAGE, PAGE + 0x800, Perms::RW),
                "length not page aligned",
            ),
            (
                region(u64::MAX - (PAGE - 1), 2 * PAGE, Perms::RW),
                "wraps past 2^64",
            ),
            (region(PAGE, PAGE, none), "grants nothing"),
        ] {
            let regions = [good[0], bad];
            let clients = [client(1, &[], &good), client(2, &[], &regions)];
            assert_eq!(
                validate(&clients, 1, 4, 4),
                Err(ConfigError::BadRegion {
                    client: 1,
                    region: 1
                }),
                "{why}"
            );
        }
    }

    /// Capacities are limits, not one past them: exactly `max_clients` clients and
    /// `max_devices` devices are accepted, one more is refused.
    #[test]
    fn capacities_are_inclusive() {
        let a = [DeviceGrant::new(0, 1), DeviceGrant::new(0, 2)];
        let b = [DeviceGrant::new(1, 1)];
        let clients = [client(1, &a, &[]), client(2, &b, &[])];
        assert_eq!(validate(&clients, 2, 2, 3), Ok(3));
        assert_eq!(
            validate(&clients, 2, 1, 3),
            Err(ConfigError::TooManyClients)
        );
        assert_eq!(
            validate(&clients, 2, 2, 2),
            Err(ConfigError::TooManyDevices)
        );
    }

    /// Client ids are unique; a device's unit must exist (the last unit does).
    #[test]
    fn duplicate_clients_and_missing_units_are_refused() {
        let on_last = [DeviceGrant::new(1, 7)];
        let clients = [client(1, &[], &[]), client(1, &[], &[])];
        assert_eq!(
            validate(&clients, 1, 4, 4),
            Err(ConfigError::DuplicateClient { client: 1 })
        );
        let clients = [client(1, &[], &[]), client(2, &on_last, &[])];
        assert_eq!(validate(&clients, 2, 4, 4), Ok(1));
        assert_eq!(
            validate(&clients, 1, 4, 4),
            Err(ConfigError::NoSuchUnit {
                client: 1,
                device: 0
            })
        );
    }

    fn w(first: u64, last: u64) -> IovaRange {
        IovaRange { first, last }
    }

    fn ranges(last: u64, reserved: &[IovaRange]) -> Option<Vec<IovaRange>> {
        usable_ranges(last, reserved).map(|v| v.to_vec())
    }

    /// The usable ranges are `[0, last]` minus the windows: at the edges, adjacent, beyond the
    /// address space, ending at 2^64 - 1; malformed, unsorted or overlapping windows, an empty
    /// result, and more ranges than the protocol reports are refused.
    #[test]
    fn usable_ranges_at_the_edges() {
        let last = 0xffff;
        assert_eq!(ranges(last, &[]), Some(vec![w(0, last)]));
        assert_eq!(
            ranges(last, &[w(0, 0xfff)]),
            Some(vec![w(0x1000, last)]),
            "a window at 0"
        );
        assert_eq!(
            ranges(last, &[w(0xf000, last)]),
            Some(vec![w(0, 0xefff)]),
            "a window at the end"
        );
        assert_eq!(
            ranges(last, &[w(0x8000, 0x1_ffff)]),
            Some(vec![w(0, 0x7fff)]),
            "a window running past the end"
        );
        assert_eq!(
            ranges(last, &[w(0x1_0000, 0x1_0fff)]),
            Some(vec![w(0, last)]),
            "a window just beyond the end"
        );
        assert_eq!(
            ranges(last, &[w(0x1000, 0x1fff), w(0x2000, 0x2fff)]),
            Some(vec![w(0, 0xfff), w(0x3000, last)]),
            "adjacent windows"
        );
        assert_eq!(
            ranges(u64::MAX, &[w(u64::MAX - 0xfff, u64::MAX)]),
            Some(vec![w(0, u64::MAX - 0x1000)]),
            "a window ending at 2^64 - 1"
        );
        assert_eq!(
            ranges(0x1000, &[w(0, 0xfff)]),
            Some(vec![w(0x1000, 0x1000)]),
            "one byte left"
        );
        assert_eq!(
            ranges(last, &[w(0x1000, 0x1fff), w(0x3000, 0x3fff)]),
            Some(vec![w(0, 0xfff), w(0x2000, 0x2fff), w(0x4000, last)]),
            "as many ranges as the protocol reports"
        );
        for (bad, why) in [
            (vec![w(0x2000, 0x1fff)], "first above last"),
            (vec![w(0x1800, 0x1fff)], "first not page aligned"),
            (vec![w(0x1000, 0x1ffe)], "last not at a page's end"),
            (vec![w(0x3000, 0x3fff), w(0x1000, 0x1fff)], "unsorted"),
            (vec![w(0x1000, 0x2fff), w(0x2000, 0x3fff)], "overlapping"),
            (vec![w(0, last)], "nothing left"),
            (
                vec![w(0x1000, 0x1fff), w(0x3000, 0x3fff), w(0x5000, 0x5fff)],
                "four ranges",
            ),
        ] {
            assert_eq!(ranges(last, &bad), None, "{why}");
        }
    }
}

/// Physical ranges at the edges of what the units can address (the mock's units output 52
/// bits): the lowest page and the highest addressable page map; one page further is
/// `OutOfRange`, as is a granted page beyond the output width.
mod phys_edges {
    use iommu_hal::pagetable::Perms;
    use iommu_protocol::{DomainHandle, Error, Reply, Request};
    use iommu_server::{ClientConfig, ClientId, Config, RegionGrant, Server};
    use iommu_test_harness::mock::{MockSpec, VtdMock};
    use iommu_test_harness::server_suite::{POOL_BASE, Recorder};
    use iommu_test_harness::sim::{SharedMem, SimAlloc};

    const TOP: u64 = 1 << 52;
    const REGIONS: [RegionGrant; 4] = [
        // Write-only: the device may write it (e.g. a receive buffer), never read it.
        RegionGrant {
            base: 0x100_0000,
            len: 0x10_0000,
            perms: Perms {
                read: false,
                write: true,
            },
        },
        RegionGrant {
            base: 0,
            len: 0x10_0000,
            perms: Perms::RW,
        },
        RegionGrant {
            base: TOP - 0x10_0000,
            len: 0x20_0000,
            perms: Perms::RW,
        },
        RegionGrant {
            base: u64::MAX - 0xfff,
            len: 0x1000,
            perms: Perms::RW,
        },
    ];

    #[test]
    fn phys_edges() {
        let clients = [ClientConfig {
            id: ClientId(1),
            devices: &[],
            regions: &REGIONS,
            max_domains: 1,
            max_table_frames: 32,
        }];
        let mem = SharedMem::new();
        let alloc = SimAlloc::new(mem.clone(), POOL_BASE, 64);
        let config = Config {
            clients: &clients,
            reserved: &[],
        };
        let mut s: Server<'_, VtdMock, SharedMem, SimAlloc, Recorder, 4, 16, 16, 8> = Server::new(
            VtdMock::new(mem.clone(), MockSpec::default()),
            mem,
            alloc,
            Recorder::default(),
            config,
        )
        .expect("valid configuration");
        let c = ClientId(1);
        let Reply::DomainCreated { domain } = s.handle_request(c, Request::CreateDomain) else {
            panic!("CreateDomain");
        };
        let map_p = |s: &mut Server<'_, VtdMock, SharedMem, SimAlloc, Recorder, 4, 16, 16, 8>,
                     domain: DomainHandle,
                     iova: u64,
                     phys: u64,
                     len: u64,
                     perms: iommu_protocol::Perms| {
            s.handle_request(
                c,
                Request::Map {
                    domain,
                    iova,
                    phys,
                    len,
                    perms,
                },
            )
        };
        let map =
            |s: &mut Server<'_, VtdMock, SharedMem, SimAlloc, Recorder, 4, 16, 16, 8>,
             domain: DomainHandle,
             iova: u64,
             phys: u64,
             len: u64| map_p(s, domain, iova, phys, len, iommu_protocol::Perms::RW);
        // A write-only grant is never readable.
        use iommu_protocol::Perms as P;
        for perms in [P::READ, P::RW] {
            assert_eq!(
                map_p(&mut s, domain, 0x80_0000, 0x100_0000, 0x1000, perms),
                Reply::Error(Error::NotPermitted),
                "{perms:?}"
            );
        }
        assert_eq!(
            map_p(&mut s, domain, 0x80_0000, 0x100_0000, 0x1000, P::WRITE),
            Reply::Done
        );
        // The lowest pages, and the highest page the units can address.
        assert_eq!(map(&mut s, domain, 0, 0, 0x2000), Reply::Done);
        assert_eq!(
            map(&mut s, domain, 0x10_0000, TOP - 0x1000, 0x1000),
            Reply::Done
        );
        assert_eq!(
            map(&mut s, domain, 0x20_0000, TOP - 0x2000, 0x2000),
            Reply::Done
        );
        // One page further: granted, but beyond every unit's output width.
        for (phys, len) in [
            (TOP - 0x1000, 0x2000),
            (TOP, 0x1000),
            (u64::MAX - 0xfff, 0x1000),
        ] {
            assert_eq!(
                map(&mut s, domain, 0x40_0000, phys, len),
                Reply::Error(Error::OutOfRange),
                "{phys:#x}+{len:#x}"
            );
        }
        let q = |s: &mut Server<'_, VtdMock, SharedMem, SimAlloc, Recorder, 4, 16, 16, 8>, iova| {
            s.handle_request(c, Request::Query { domain, iova })
        };
        assert!(
            matches!(q(&mut s, 0x10_0000), Reply::Translation { phys, .. } if phys == TOP - 0x1000)
        );
        assert_eq!(q(&mut s, 0x40_0000), Reply::Error(Error::NotMapped));
    }
}

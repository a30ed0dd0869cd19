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

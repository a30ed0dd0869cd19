//! The intruder protection domain (seL4 Microkit): a second, untrusted client of the IOMMU
//! server. It owns no device and only its own 64 KiB (`intruder_dma`), and relays whatever
//! bytes the driver PD hands it to the server on its own channels: the one the server's
//! configuration names client 2, and one the server knows no client for. The server can tell
//! them apart only by the channel a call arrives on, which is what the driver's hostile-request
//! step checks. It maps nothing of the IOMMU, and nothing of the driver.
//!
//! Channels (`platform/microkit/iommu.system`; `iommu_platform::microkit::system::intruder`):
//! calls from the driver on 0 are relayed on 2 (client 2), calls on 1 on 3 (unknown).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod pd {
    use iommu_platform::microkit::abi::{Channel, ChannelSet};
    use iommu_platform::microkit::event::{EventLoop, Handler, Kernel};
    use iommu_platform::microkit::message::FrameError;
    use iommu_platform::microkit::pd::Pd;
    use iommu_platform::microkit::system::intruder as ch;
    use iommu_platform::microkit::transport::PpcTransport;
    use iommu_protocol::client::Transport;

    iommu_platform::pd_main!(main);

    struct Relay;

    impl<K: Kernel> Handler<K> for Relay {
        fn notified(&mut self, _kernel: &mut K, _ch: Channel) {}

        fn protected(
            &mut self,
            kernel: &mut K,
            from: Channel,
            request: Result<&[u8], FrameError>,
            reply: &mut [u8],
        ) -> usize {
            let to = match from {
                ch::FROM_DRIVER_AS_CLIENT => ch::SERVER,
                ch::FROM_DRIVER_AS_STRANGER => ch::SERVER_UNKNOWN,
                _ => return 0,
            };
            // A request that was no message is relayed as no bytes.
            let request = request.unwrap_or(&[]);
            PpcTransport::new(kernel, to)
                .call(request, reply)
                .unwrap_or(0)
        }
    }

    fn main(pd: Pd) -> ! {
        defmt::info!(
            "intruder: relaying the driver's calls on channels 2 (client 2) and 3 (unknown)"
        );
        let mut kernel = pd.kernel();
        EventLoop::new().run(&mut kernel, &mut Relay, ChannelSet(pd.masks.irqs.0))
    }
}

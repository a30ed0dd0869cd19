//! How a unit's fault interrupt reaches the server, and how the server's notification reaches
//! a client, in an image where both run on one CPU.
//!
//! - The architecture's interrupt handler (x86: the LAPIC vector of the VT-d fault event;
//!   aarch64: the SMMU's event-queue and GERROR SPIs at the GIC) calls [`on_interrupt`],
//!   which calls the registered server's `service_faults` (drain every unit, route the
//!   records, notify their owners).
//! - A server is registered with [`serving`] for the time a closure runs. Everything else that
//!   touches the server does so with interrupts masked ([`crate::without_interrupts`]), so
//!   the handler never finds it borrowed; if it ever did, the work is deferred
//!   ([`take_deferred`]) to the next masked access.
//! - The server's [`Notify`] is [`FlagNotify`]: one flag per client id (modulo 32), set from
//!   the interrupt path and taken by the client's side with [`take_notification`], as an
//!   seL4 notification word would be.

use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use iommu_server::{ClientId, Notify};

use crate::local::RequestHandler;

/// A server the interrupt path can service, type-erased.
trait Service {
    /// Runs `service_faults` unless the server is borrowed; returns whether it ran.
    fn service(&self) -> bool;
}

impl<H: RequestHandler> Service for RefCell<H> {
    fn service(&self) -> bool {
        match self.try_borrow_mut() {
            Ok(mut h) => {
                h.service_faults();
                true
            }
            Err(_) => false,
        }
    }
}

/// The registered server, set only while [`serving`] runs. Written with interrupts masked,
/// read by the interrupt handler (which runs with interrupts masked) on the only CPU.
static mut SERVER: Option<*const dyn Service> = None;
/// An interrupt found the server borrowed (or none registered): service it later.
static DEFERRED: AtomicBool = AtomicBool::new(false);
/// Fault interrupts taken.
static TAKEN: AtomicU32 = AtomicU32::new(0);
/// Notification flags, bit `id % 32` for client `id`.
static NOTIFIED: AtomicU32 = AtomicU32::new(0);

/// Called by the architecture's interrupt handler when a unit raised its fault interrupt:
/// services the registered server's faults at once, or defers it.
pub fn on_interrupt() {
    TAKEN.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the handler runs with interrupts masked on the only CPU, and `serving` writes
    // SERVER only with interrupts masked: this read cannot race a write. A pointer stored
    // there points at the server `serving` borrows for as long as it is stored.
    let server = unsafe { (&raw const SERVER).read() };
    let done = match server {
        // SAFETY: as above, the server outlives its registration.
        Some(s) => unsafe { (*s).service() },
        None => false,
    };
    if !done {
        DEFERRED.store(true, Ordering::Release);
    }
}

/// Whether an interrupt was deferred since the last call (and clears it). Whoever holds the
/// server with interrupts masked then runs `service_faults` on its behalf.
pub fn take_deferred() -> bool {
    DEFERRED.swap(false, Ordering::AcqRel)
}

/// Fault interrupts taken so far.
pub fn interrupts_taken() -> u32 {
    TAKEN.load(Ordering::Relaxed)
}

/// Registers `server` for the interrupt path while `f` runs, then unregisters it.
pub fn serving<H: RequestHandler, R>(server: &RefCell<H>, f: impl FnOnce() -> R) -> R {
    let ptr: *const (dyn Service + '_) = server;
    // SAFETY: only the lifetime bound of the trait object is erased; the pointer is removed
    // from SERVER below, before `server`'s borrow ends, and nothing else keeps it (images
    // abort on panic, so there is no unwinding past this frame).
    let ptr: *const (dyn Service + 'static) = unsafe { core::mem::transmute(ptr) };
    crate::without_interrupts(|| {
        // SAFETY: interrupts are masked: the handler cannot read SERVER meanwhile.
        unsafe { (&raw mut SERVER).write(Some(ptr)) };
    });
    let r = f();
    crate::without_interrupts(|| {
        // SAFETY: as above.
        unsafe { (&raw mut SERVER).write(None) };
    });
    r
}

/// The [`Notify`] of an image: sets client `id`'s flag (bit `id % 32`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagNotify;

impl Notify for FlagNotify {
    fn notify(&mut self, client: ClientId) {
        NOTIFIED.fetch_or(1 << (client.0 % 32), Ordering::Release);
    }
}

/// Whether `client` was notified since the last call (and clears its flag).
pub fn take_notification(client: ClientId) -> bool {
    let bit = 1 << (client.0 % 32);
    NOTIFIED.fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// Held by host tests that use the statics above (tests run on several threads).
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts fault services; `handle` notifies client 3 as routed faults would.
    #[derive(Default)]
    struct Fake {
        serviced: u32,
    }

    impl RequestHandler for Fake {
        fn handle(&mut self, _client: ClientId, _request: &[u8], _reply: &mut [u8]) -> usize {
            0
        }
        fn service_faults(&mut self) {
            self.serviced += 1;
            FlagNotify.notify(ClientId(3));
        }
    }

    #[test]
    fn interrupts_reach_the_registered_server_and_notify() {
        let _lock = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let server = RefCell::new(Fake::default());
        take_deferred();
        on_interrupt();
        assert!(take_deferred(), "no server registered: deferred");
        assert!(!take_notification(ClientId(3)));
        let before = interrupts_taken();
        serving(&server, || {
            on_interrupt();
            assert_eq!(server.borrow().serviced, 1);
            assert!(take_notification(ClientId(3)));
            assert!(!take_notification(ClientId(3)), "taken once");
            assert!(!take_notification(ClientId(4)));
            // Borrowed when the interrupt comes: deferred, nothing lost.
            let held = server.borrow_mut();
            on_interrupt();
            drop(held);
            assert!(take_deferred());
            assert_eq!(server.borrow().serviced, 1);
        });
        on_interrupt();
        assert!(take_deferred(), "unregistered after `serving`");
        assert_eq!(server.borrow().serviced, 1);
        assert_eq!(interrupts_taken() - before, 3);
    }
}

//! Accept loops that back off on errors instead of spinning: a listener out
//! of file descriptors (`EMFILE`) stays readable while the connection waits
//! in its backlog, so a loop that retries at once never sleeps.

use std::{future::Future, io, time::Duration};

/// The first wait after a failed accept.
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// The longest wait between tries.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Accepts connections with `accept` for ever and hands each to `handle`.
/// After a failed accept it waits 10 ms, doubling up to 1 s while accepts
/// keep failing; a success resets the wait. `what` names the listener in
/// the log: one warning when a streak of failures begins, one line when it
/// ends.
pub async fn serve<C, F, Fut>(what: &str, mut accept: F, mut handle: impl FnMut(C))
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<C>>,
{
    let mut backoff = Backoff::default();
    loop {
        match accept().await {
            Ok(connection) => {
                if let Some(failures) = backoff.succeeded() {
                    tracing::info!("{what}: accepting again after {failures} failed accept(s)");
                }
                handle(connection);
            }
            Err(e) => {
                let delay = backoff.failed();
                if backoff.failures == 1 {
                    tracing::warn!(
                        "{what}: accepting a connection failed: {e}; retrying with a growing \
                         delay up to {MAX_DELAY:?}"
                    );
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The wait before the next accept.
#[derive(Debug, Default)]
struct Backoff {
    /// Accepts failed in a row.
    failures: u64,
    /// The wait after the last failure.
    delay: Duration,
}

impl Backoff {
    /// Counts a failure; how long to wait.
    fn failed(&mut self) -> Duration {
        self.failures += 1;
        self.delay = if self.failures == 1 {
            FIRST_DELAY
        } else {
            (self.delay * 2).min(MAX_DELAY)
        };
        self.delay
    }

    /// Counts a success; the failures it ends, if any.
    fn succeeded(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.delay = Duration::ZERO;
        (failures > 0).then_some(failures)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn the_wait_doubles_to_a_second_and_a_success_resets_it() {
        let mut backoff = Backoff::default();
        let waits: Vec<u128> = (0..9).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff.succeeded(), Some(9));
        assert_eq!(backoff.succeeded(), None);
        assert_eq!(backoff.failed(), FIRST_DELAY);
    }

    /// An accept that always fails, as on `EMFILE`: in 200 ms the loop
    /// tries 5 times (waits of 10, 20, 40, 80 ms, then 160), where a
    /// spinning one would try hundreds of thousands of times (each try
    /// yields to the runtime, so the timeout still ends a spinning loop).
    #[tokio::test]
    async fn a_persistent_accept_error_does_not_spin() {
        let tries = Cell::new(0u32);
        let accept = || {
            tries.set(tries.get() + 1);
            async {
                tokio::task::yield_now().await;
                Err::<(), _>(io::Error::from_raw_os_error(libc::EMFILE))
            }
        };
        let started = Instant::now();
        let looping = serve("test listener", accept, |()| {});
        let _ = tokio::time::timeout(Duration::from_millis(200), looping).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!((1..=6).contains(&tries.get()), "{} tries", tries.get());
    }

    /// Failures between successes: each connection is handed on.
    #[tokio::test]
    async fn connections_are_handed_on_between_failures() {
        let n = Cell::new(0u32);
        let accept = || {
            n.set(n.get() + 1);
            std::future::ready(if n.get().is_multiple_of(2) {
                Ok(n.get())
            } else {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            })
        };
        let handled = std::cell::RefCell::new(Vec::new());
        let three = tokio::sync::Notify::new();
        let handle = |c| {
            handled.borrow_mut().push(c);
            if handled.borrow().len() == 3 {
                three.notify_one();
            }
        };
        tokio::select! {
            () = serve("test", accept, handle) => unreachable!("serve returned"),
            () = three.notified() => {}
        }
        assert_eq!(*handled.borrow(), [2, 4, 6]);
    }
}

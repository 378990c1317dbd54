//! The way from drivers to the daemon: one channel, bounded twice.
//!
//! A channel bounded only by its number of messages holds as much memory as its widest
//! messages: 4,096 readings of 100 points are about 20 MB. So every message sent through
//! [`Events`] also takes a share of a budget of *points* (a reading's properties; a status or a
//! set of counters counts one) and gives it back when the daemon takes it out with
//! [`EventsRx`]. A sender waits while either bound is reached: a store that lags holds the
//! drivers back instead of growing memory. A message wider than the whole budget takes all of
//! it: it waits until the channel is empty of points, then goes alone. Senders are served in
//! order (a waiting wide reading is not overtaken by narrow ones). Each time a sender had to
//! wait for points is counted ([`EventsRx::waits`]), for the operator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{DriverError, Event};

/// A message in the channel with the points it holds.
#[derive(Debug)]
struct Held {
    event: Event,
    _points: OwnedSemaphorePermit,
}

/// The drivers' end: cloned for each driver.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::Sender<Held>,
    shared: Arc<Shared>,
}

/// The daemon's end.
#[derive(Debug)]
pub struct EventsRx {
    rx: mpsc::Receiver<Held>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    points: Arc<Semaphore>,
    budget: u32,
    waits: AtomicU64,
}

/// Why [`Events::try_send`] did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    #[error("the daemon is behind: no room in the event channel")]
    Full,
    #[error("the daemon side of the driver channels is gone")]
    Closed,
}

/// A channel for at most `messages` events holding at most `points` points together (each at
/// least 1).
pub fn events(messages: usize, points: u32) -> (Events, EventsRx) {
    let (tx, rx) = mpsc::channel(messages.max(1));
    let budget = points.clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
    let shared = Arc::new(Shared {
        points: Arc::new(Semaphore::new(budget as usize)),
        budget,
        waits: AtomicU64::new(0),
    });
    (
        Events {
            tx,
            shared: shared.clone(),
        },
        EventsRx { rx, shared },
    )
}

/// The points `event` holds, within `budget`.
fn weight(event: &Event, budget: u32) -> u32 {
    let n = match event {
        Event::Report(r) => r.properties.len(),
        Event::Status(_) | Event::Counters { .. } => 1,
    };
    u32::try_from(n).unwrap_or(u32::MAX).clamp(1, budget)
}

impl Events {
    /// Send `event`, waiting while the channel is full by messages or by points.
    pub async fn send(&self, event: Event) -> Result<(), DriverError> {
        let n = weight(&event, self.shared.budget);
        let points = match self.shared.points.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                self.shared.waits.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .points
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| DriverError::ChannelClosed)?
            }
            Err(TryAcquireError::Closed) => return Err(DriverError::ChannelClosed),
        };
        self.tx
            .send(Held {
                event,
                _points: points,
            })
            .await
            .map_err(|_| DriverError::ChannelClosed)
    }

    /// Send `event` only if there is room now (for updates a later one replaces).
    pub fn try_send(&self, event: Event) -> Result<(), TrySendError> {
        let n = weight(&event, self.shared.budget);
        let points = match self.shared.points.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed),
        };
        self.tx
            .try_send(Held {
                event,
                _points: points,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => TrySendError::Full,
                mpsc::error::TrySendError::Closed(_) => TrySendError::Closed,
            })
    }
}

impl EventsRx {
    /// The next event; `None` once every [`Events`] is dropped and the channel is empty.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await.map(|h| h.event)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok().map(|h| h.event)
    }

    /// Points in the channel now, and those already set aside for a sender that waits.
    pub fn points(&self) -> u32 {
        let free = u32::try_from(self.shared.points.available_permits()).unwrap_or(u32::MAX);
        self.shared.budget.saturating_sub(free)
    }

    /// How many times a sender had to wait for points, since the channel was made.
    pub fn waits(&self) -> u64 {
        self.shared.waits.load(Ordering::Relaxed)
    }
}

impl Drop for EventsRx {
    /// Senders waiting for points learn that the daemon is gone.
    fn drop(&mut self) {
        self.shared.points.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceStatus, Name, Properties, Report, Value};
    use std::time::Duration;

    fn reading(points: usize) -> Event {
        let properties: Properties = (0..points)
            .map(|i| (Name::from(format!("p{i:04}")), Value::Int(i as i64)))
            .collect();
        Event::Report(Report {
            child: "c".into(),
            service: "s".into(),
            properties,
            ts_ms: 1,
        })
    }

    fn status() -> Event {
        Event::Status(DeviceStatus {
            child: "c".into(),
            online: true,
            reason: String::new(),
            ts_ms: 1,
        })
    }

    fn len(e: &Event) -> usize {
        match e {
            Event::Report(r) => r.properties.len(),
            _ => 1,
        }
    }

    #[tokio::test]
    async fn senders_wait_for_points_and_go_on_when_they_are_taken() {
        let (tx, mut rx) = events(1024, 250);
        tx.send(reading(100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.send(reading(100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rx.points(), 200);
        // 50 points are left: a reading of 100 waits though 1,022 messages would fit.
        let third = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(reading(100)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        assert_eq!(rx.waits(), 1);
        // The waiting sender has the 50 left: nothing overtakes it, not even a status.
        assert_eq!(rx.points(), 250);
        assert_eq!(tx.try_send(status()), Err(TrySendError::Full));
        let first = rx.recv().await.map(|e| len(&e));
        assert_eq!(first, Some(100));
        third
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rx.points(), 200);
        tx.try_send(status()).unwrap_or_else(|e| panic!("{e}"));
        // Order is kept: the second reading, the third, then the status.
        let rest: Vec<usize> = [rx.try_recv(), rx.try_recv(), rx.try_recv(), rx.try_recv()]
            .iter()
            .map(|e| e.as_ref().map_or(0, len))
            .collect();
        assert_eq!(rest, [100, 100, 1, 0]);
        assert_eq!(rx.points(), 0);
    }

    #[tokio::test]
    async fn a_message_wider_than_the_budget_goes_alone() {
        let (tx, mut rx) = events(16, 64);
        tx.send(status()).await.unwrap_or_else(|e| panic!("{e}"));
        let wide = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(reading(1000)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!wide.is_finished(), "it waits for the whole budget");
        assert_eq!(rx.recv().await.map(|e| len(&e)), Some(1));
        wide.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rx.points(), 64);
        assert_eq!(tx.try_send(status()), Err(TrySendError::Full));
        assert_eq!(rx.recv().await.map(|e| len(&e)), Some(1000));
        assert_eq!(rx.points(), 0);
    }

    #[tokio::test]
    async fn senders_learn_when_the_daemon_is_gone() {
        let (tx, rx) = events(16, 100);
        tx.send(reading(100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(reading(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        let out = waiting.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(out, Err(DriverError::ChannelClosed)), "{out:?}");
        assert!(matches!(
            tx.send(status()).await,
            Err(DriverError::ChannelClosed)
        ));
        assert_eq!(tx.try_send(status()), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn the_message_bound_still_holds() {
        let (tx, mut rx) = events(2, 1000);
        tx.try_send(status()).unwrap_or_else(|e| panic!("{e}"));
        tx.try_send(status()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tx.try_send(status()), Err(TrySendError::Full));
        // The refused message gave its points back.
        assert_eq!(rx.points(), 2);
        assert!(rx.try_recv().is_some());
        tx.try_send(status()).unwrap_or_else(|e| panic!("{e}"));
    }
}

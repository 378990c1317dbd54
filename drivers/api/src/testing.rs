//! Test support for driver crates, not used by the daemon: run one driver as the daemon
//! would (bounded event channel, a command channel, a shutdown signal), collect what it sends,
//! ask it things, and stop it — asserting that it stops cleanly. Panics are its error
//! reporting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{
    Command, CommandOutcome, CommandRequest, Driver, DriverContext, DriverError, Event, EventsRx,
    Report, Value,
};

/// A driver running in a task, with everything it sent so far.
pub struct Harness {
    events: EventsRx,
    /// Events taken by [`Harness::until`] and [`Harness::settle`].
    pub seen: Vec<Event>,
    pub commands: mpsc::Sender<CommandRequest>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), DriverError>>,
}

/// Start `driver` in a task.
pub fn start(driver: impl Driver + 'static) -> Harness {
    let (tx, events) = crate::events(4096, 1 << 20);
    let (commands, cmd_rx) = mpsc::channel(4);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(Box::new(driver).run(DriverContext {
        events: tx,
        commands: cmd_rx,
        shutdown: stop_rx,
    }));
    Harness {
        events,
        seen: Vec::new(),
        commands,
        stop,
        task,
    }
}

/// Run `driver` for `d` and return everything it sent.
pub async fn run_for(driver: impl Driver + 'static, d: Duration) -> Vec<Event> {
    let h = start(driver);
    tokio::time::sleep(d).await;
    h.finish().await
}

impl Harness {
    /// Take events until `f` holds over everything seen (panics after 10 s).
    pub async fn until(&mut self, what: &str, f: impl Fn(&[Event]) -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f(&self.seen) {
            match tokio::time::timeout_at(end, self.events.recv()).await {
                Ok(Some(e)) => self.seen.push(e),
                _ => panic!("timed out waiting for {what}: {:#?}", self.seen),
            }
        }
    }

    /// Take whatever arrives within `d`.
    pub async fn settle(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(end, self.events.recv()).await {
            self.seen.push(e);
        }
    }

    /// Send a command with `deadline` and wait for its answer.
    pub async fn ask(&self, command: Command, deadline: Duration) -> CommandOutcome {
        let (reply, answer) = oneshot::channel();
        let req = CommandRequest {
            command,
            deadline: Instant::now() + deadline,
            reply,
        };
        if self.commands.send(req).await.is_err() {
            panic!("driver gone");
        }
        tokio::time::timeout(deadline + Duration::from_secs(2), answer)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no answer"))
    }

    /// Stop the driver (it must stop cleanly within 5 s) and return everything it sent.
    pub async fn finish(mut self) -> Vec<Event> {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "driver stops cleanly: {r:?}");
        while let Some(e) = self.events.try_recv() {
            self.seen.push(e);
        }
        self.seen
    }
}

/// The reports of one child, in order.
pub fn reports<'a>(ev: &'a [Event], child: &str) -> Vec<&'a Report> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Report(r) if r.child == child => Some(r),
            _ => None,
        })
        .collect()
}

/// The reported values of one child, in order.
pub fn values(ev: &[Event], child: &str) -> Vec<BTreeMap<String, Value>> {
    reports(ev, child)
        .into_iter()
        .map(|r| {
            r.properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        })
        .collect()
}

/// The status changes of one child: (online, reason).
pub fn statuses(ev: &[Event], child: &str) -> Vec<(bool, String)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Status(s) if s.child == child => Some((s.online, s.reason.clone())),
            _ => None,
        })
        .collect()
}

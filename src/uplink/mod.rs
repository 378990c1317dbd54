//! The uplink: the one MQTT session to the platform, and delivery of the queue over it.
//!
//! The session is built from rooms that each keep one guarantee:
//! - `link`: rumqttc's event loop in a task of its own, never cancelled mid-handshake; one
//!   CONNECT per attempt, bounded by `connect_timeout`;
//! - `delivery`: which records each publish carries, the window, what a PUBACK delivers (pure,
//!   model-tested);
//! - `queue::reader`: the cursor, the store's marks on taken rows, batched deletes of acknowledged
//!   records, counted drops;
//! - `fit`: every message checked against MQTT's rules and `max_packet`, oversize records split
//!   by property, unsendable ones counted and skipped;
//! - `children`: child add/confirm/delete and its persistence.
//!
//! This file keeps the session: connect with backoff and jitter, subscribe, replay, dispatch,
//! and the order of what goes out — answers first, then session messages (statuses, births,
//! announcements), then queued data within the window. The session never waits on the MQTT
//! client: it only hands over what the client has room for, so a full local queue is
//! backpressure, and only the network or the broker ends a session. After any reconnect the
//! queue is read again from its oldest unacknowledged record: duplicates are possible, loss is
//! not.

pub mod children;
pub mod delivery;
pub mod dialect;
pub mod fit;
mod link;
mod pace;
mod tls;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldgate_driver::{now_ms, Value};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::command::Reply;
use crate::config::Platform;
use crate::metrics::{Metrics, Repeated, Streak};
use crate::queue::reader::Reader;
use crate::registry::Registry;
use crate::router::Router;
use crate::store::{Store, StoreError};
use children::Children;
use delivery::{Delivery, Msg};
use dialect::{Dialect, Inbound, Out};
use link::LinkEvent;

/// How often the loop proves it is alive to the watchdog, and flushes acknowledged deletes.
const BEAT: Duration = Duration::from_millis(250);
/// How often unanswered add requests are repeated.
const ADD_RETRY: Duration = Duration::from_secs(30);
/// Inbound packets larger than this are refused by the MQTT client.
const MAX_INBOUND_PACKET: usize = 256 * 1024;
/// Inbound topics longer than this are refused unread: ids taken from them would make answer
/// topics no broker accepts.
pub const MAX_INBOUND_TOPIC: usize = 512;
/// Answers waiting to be published at most; past it they are dropped and counted.
const MAX_REPLIES: usize = 4096;
/// Rows one read of the queue returns at most.
const READ_ROWS: usize = 2048;
/// Publishes (of any kind) outstanding beyond the data window: room for answers and session
/// messages that never waits behind bulk data.
const CONTROL_ROOM: usize = 64;
/// How often the queue's depth is sampled to see whether delivery keeps up.
const DEPTH_EVERY: Duration = Duration::from_secs(5);

/// Everything the uplink needs, built by the daemon.
pub struct Uplink {
    pub platform: Platform,
    /// The platform's protocol (`dialect::for_platform`).
    pub dialect: Box<dyn Dialect>,
    pub store: Store,
    pub registry: Arc<Mutex<Registry>>,
    pub metrics: Arc<Metrics>,
    pub router: Router,
    /// Woken by the queue after each commit.
    pub wake: Arc<Notify>,
    /// Woken after a config reload: add and delete children now.
    pub reconcile: Arc<Notify>,
    /// Tells the daemon about children the platform deleted.
    pub events: mpsc::Sender<UplinkEvent>,
    /// How often the gateway's own properties are reported.
    pub report_interval: Duration,
    pub started: Instant,
    pub shutdown: watch::Receiver<bool>,
    /// Repeated warnings about what the platform sends, logged by episode.
    pub logs: InboundLogs,
}

/// Warnings about platform messages, each kind logged by episode (a platform or a neighbour
/// on the broker can send thousands); every occurrence is counted in `inbound_rejected` or at
/// `debug`.
#[derive(Debug, Default)]
pub struct InboundLogs {
    rejected: Repeated,
    status_refused: Repeated,
}

/// What the uplink tells the daemon.
#[derive(Debug)]
pub enum UplinkEvent {
    /// The platform deleted this configured child: stop polling it.
    ChildDeleted(String),
    /// The platform asks the gateway itself for an operation (`remote`): the daemon checks
    /// `[remote] allow`, runs it and sends the answer on `reply`.
    Operation(crate::remote::Asked),
}

/// Why a session could not start or ended; one variant per cause, compared to say a
/// repeated failure once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    #[error("cannot read the device secret: {0}")]
    Secret(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Link(link::Down),
    #[error("the connection task stopped")]
    TaskStopped,
}

enum End {
    Shutdown,
    /// `unacked`: records sent whose PUBACK never came; they are sent again.
    Lost {
        cause: Cause,
        was_connected: bool,
        unacked: usize,
        /// The attempt's CONNECT reached the broker (see `link::connect_sent`).
        connect_sent: bool,
    },
}

/// Per-connection state. Dropped with the connection: what was in flight is still in the store
/// and is read again by the next session.
struct Session {
    connected: bool,
    delivery: Delivery,
    /// Answers to platform requests: first out.
    replies: VecDeque<Out>,
    /// Session messages (replay, add/delete, own properties, births): after answers, before data.
    control: VecDeque<Out>,
    /// Data messages packed but not yet handed to the client, with what they carry.
    spill: VecDeque<(Out, Msg)>,
    pace: Option<pace::Pace>,
    /// When set, backlog publishing waits for the pace until then.
    paced_until: Option<tokio::time::Instant>,
    /// Records up to this sequence number were queued before the CONNACK: the backlog, paced.
    backlog_end: u64,
    /// The queue may hold records to send.
    want_fill: bool,
    /// Records or messages that could not go on the wire, logged once per episode.
    unsendable: Streak,
}

/// Exponential backoff with jitter. The first pause after a connection was lost is drawn from
/// [0, min(5 × min, max)] ("full jitter"), so a fleet that lost its broker at the same instant
/// does not come back in the same second; after that each pause is drawn from [d/2, d], d
/// doubling from 2 × min up to `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    d: Duration,
    fresh: bool,
    rng: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32)
            | 1;
        Backoff {
            min,
            max,
            d: min,
            fresh: true,
            rng: seed,
        }
    }

    /// A connection was up: the next pause is a fresh start.
    fn reset(&mut self) {
        self.fresh = true;
    }

    /// A uniform draw from [0, 1).
    fn unit(&mut self) -> f64 {
        // xorshift64*: enough to decorrelate a fleet.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        r as f64 / (1u64 << 53) as f64
    }

    /// The next pause.
    fn next(&mut self) -> Duration {
        if self.fresh {
            self.fresh = false;
            self.d = (self.min * 2).min(self.max);
            let first = (self.min * 5).min(self.max);
            return first.mul_f64(self.unit());
        }
        let pause = self.d.mul_f64(0.5 + 0.5 * self.unit());
        self.d = (self.d * 2).min(self.max);
        pause
    }
}

/// Whether the queue keeps growing while connected: delivery slower than collection.
#[derive(Default)]
struct Behind {
    last: Option<u64>,
    growing: u32,
}

impl Behind {
    /// A new depth sample; `Some(true)` when an episode starts, `Some(false)` when it ends.
    fn sample(&mut self, records: u64) -> Option<bool> {
        // Three samples in a row each more than a few records deeper: a trend, not the
        // jitter of group commits.
        let grew = self.last.is_some_and(|l| records > l + 10);
        let shrank = self.last.is_some_and(|l| records < l);
        self.last = Some(records);
        if grew {
            self.growing += 1;
            return (self.growing == 3).then_some(true);
        }
        if shrank && self.growing >= 3 {
            self.growing = 0;
            return Some(false);
        }
        if shrank {
            self.growing = 0;
        }
        None
    }
}

/// What one session step can fail with; none of these ends the session.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("queue: {0}")]
    Store(#[from] StoreError),
}

impl Uplink {
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.platform.reconnect_min, self.platform.reconnect_max);
        let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(MAX_REPLIES);
        let mut reader = Reader::new(self.store.clone(), self.metrics.clone());
        let children = Children {
            registry: self.registry.clone(),
            store: self.store.clone(),
            events: self.events.clone(),
        };
        let mut last_cause: Option<Cause> = None;
        // Dialect state kept across restarts (Sparkplug's bdSeq).
        if let Some((key, _)) = self.dialect.state() {
            match self.store.get_meta(key).await {
                Ok(Some(v)) => self.dialect.restore(&v),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, key, "cannot read the dialect's saved state; starting afresh")
                }
            }
        }
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            self.metrics
                .connect_attempts
                .fetch_add(1, Ordering::Relaxed);
            let (client, eventloop) = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    if last_cause.as_ref() != Some(&e) {
                        error!(error = %e, "cannot build the MQTT session; retrying");
                        last_cause = Some(e);
                    }
                    if self.pause(backoff.next()).await {
                        break;
                    }
                    continue;
                }
            };
            self.save_state().await;
            let (tx, rx) = mpsc::channel(link::EVENTS);
            let task = link::spawn(eventloop, tx);
            let end = self
                .session(
                    &client,
                    rx,
                    &mut reader,
                    &children,
                    &reply_tx,
                    &mut reply_rx,
                )
                .await;
            task.abort();
            match end {
                End::Shutdown => break,
                End::Lost {
                    cause,
                    was_connected,
                    unacked,
                    connect_sent,
                } => {
                    self.metrics.set_connected(false);
                    if !connect_sent {
                        self.dialect.connect_unsent();
                        self.save_state().await;
                    }
                    if was_connected {
                        warn!(error = %cause, unacked, "platform connection lost; unacknowledged records will be sent again");
                        backoff.reset();
                    }
                    let pause = backoff.next();
                    if !was_connected {
                        if last_cause.as_ref() != Some(&cause) {
                            warn!(error = %cause, retry_in = ?pause, "cannot connect to the platform (retrying with backoff; further identical failures are logged at debug)");
                        } else {
                            debug!(error = %cause, retry_in = ?pause, "still cannot connect to the platform");
                        }
                    }
                    if let Ok(mut e) = self.metrics.uplink_error.lock() {
                        *e = cause.to_string();
                    }
                    last_cause = if was_connected { None } else { Some(cause) };
                    if self.pause(pause).await {
                        break;
                    }
                }
            }
        }
        let _ = reader.finish().await;
        self.metrics.set_connected(false);
        info!("uplink stopped");
    }

    /// Keep the dialect's state (if it has any) in the store.
    async fn save_state(&mut self) {
        if let Some((key, value)) = self.dialect.state() {
            if let Err(e) = self.store.set_meta(key, value).await {
                warn!(error = %e, key, "cannot keep the dialect's state; a restart may repeat it");
            }
        }
    }

    /// Sleep, unless shutdown comes first (then true).
    async fn pause(&mut self, d: Duration) -> bool {
        // Sleep in short steps so the watchdog sees the loop alive while it backs off.
        let end = tokio::time::Instant::now() + d;
        loop {
            self.metrics.uplink_beat.fetch_add(1, Ordering::Relaxed);
            let step = end
                .saturating_duration_since(tokio::time::Instant::now())
                .min(BEAT);
            if step.is_zero() {
                return *self.shutdown.borrow();
            }
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = self.shutdown.changed() => return true,
            }
        }
    }

    /// Data messages outstanding at most, and all messages.
    fn limits(&self) -> (usize, usize) {
        let window = usize::from(self.platform.data_window);
        (window, window + CONTROL_ROOM)
    }

    fn client(&mut self) -> Result<(AsyncClient, EventLoop), Cause> {
        let secret = self
            .platform
            .secret
            .load()
            .map_err(|e| Cause::Secret(e.to_string()))?;
        let c = self.dialect.connect(secret.expose(), now_ms());
        let (_, limit) = self.limits();
        let p = &self.platform;
        let mut o = MqttOptions::new(c.client_id, p.host.clone(), p.port);
        // X.509-only identities send no credentials at all.
        if !(c.username.is_empty() && c.password.is_empty()) {
            o.set_credentials(c.username, c.password);
        }
        if let Some(w) = c.will {
            o.set_last_will(LastWill::new(w.topic, w.payload, QoS::AtLeastOnce, false));
        }
        o.set_keep_alive(p.keepalive);
        o.set_clean_session(true);
        // The session never has more than `limit` publishes outstanding, so the client never
        // holds one back and its request channel (limit + subscriptions) never fills.
        o.set_inflight(u16::try_from(limit).unwrap_or(u16::MAX));
        o.set_max_packet_size(MAX_INBOUND_PACKET, p.max_packet);
        if p.tls {
            let client = p
                .client_auth
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            o.set_transport(Transport::tls_with_config(tls::config(
                p.ca_file.as_deref(),
                client,
            )?));
        }
        let (client, mut eventloop) = AsyncClient::new(o, limit + CONTROL_ROOM);
        let mut net = eventloop.network_options();
        // Small acknowledgements and responses must not wait for Nagle + delayed ACK (~40 ms
        // each way): that is most of a command's round trip otherwise.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(p.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        Ok((client, eventloop))
    }

    async fn session(
        &mut self,
        client: &AsyncClient,
        mut link: mpsc::Receiver<LinkEvent>,
        reader: &mut Reader,
        children: &Children,
        reply_tx: &mpsc::Sender<Reply>,
        reply_rx: &mut mpsc::Receiver<Reply>,
    ) -> End {
        let (window, limit) = self.limits();
        let mut s = Session {
            connected: false,
            delivery: Delivery::new(window, limit)
                .with_window_bytes(self.platform.data_window_bytes),
            replies: VecDeque::new(),
            control: VecDeque::new(),
            spill: VecDeque::new(),
            pace: (self.platform.replay_rate > 0 || self.platform.replay_bytes_rate > 0).then(
                || pace::Pace::new(self.platform.replay_rate, self.platform.replay_bytes_rate),
            ),
            paced_until: None,
            backlog_end: 0,
            want_fill: false,
            unsendable: Streak::default(),
        };
        let mut adds = tokio::time::interval_at(tokio::time::Instant::now() + ADD_RETRY, ADD_RETRY);
        adds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut own = tokio::time::interval_at(
            tokio::time::Instant::now() + self.report_interval,
            self.report_interval,
        );
        own.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut depth = tokio::time::interval(DEPTH_EVERY);
        depth.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut behind = Behind::default();
        let mut store_trouble = Streak::default();
        loop {
            self.metrics.uplink_beat.fetch_add(1, Ordering::Relaxed);
            let step: Result<(), StepError> = tokio::select! {
                _ = self.shutdown.changed() => {
                    // Answers already made (a `restart` operation's) still go out.
                    while let Ok(reply) = reply_rx.try_recv() {
                        self.queue_reply(&mut s, Out::new(reply.topic, reply.payload));
                    }
                    self.close(client, &mut link, &mut s, reader).await;
                    return End::Shutdown;
                }
                ev = link.recv() => match ev {
                    Some(LinkEvent::Mqtt(event)) => {
                        self.on_event(client, &mut s, event, reader, children, reply_tx).await
                    }
                    down => {
                        let mut connect_sent = s.connected;
                        let cause = match down {
                            Some(LinkEvent::Down(e)) => {
                                connect_sent = s.connected || link::connect_sent(&e);
                                Cause::Link(link::cause(&e, s.connected))
                            }
                            _ => Cause::TaskStopped,
                        };
                        let unacked = s.delivery.reset();
                        if let Err(e) = reader.reset().await {
                            error!(error = %e, "queue: cannot settle acknowledged records after the connection loss (they may be sent again)");
                        }
                        return End::Lost { cause, was_connected: s.connected, unacked, connect_sent };
                    }
                },
                Some(reply) = reply_rx.recv() => {
                    self.queue_reply(&mut s, Out::new(reply.topic, reply.payload));
                    Ok(())
                }
                _ = self.wake.notified() => {
                    s.want_fill = true;
                    Ok(())
                }
                _ = adds.tick(), if s.connected => {
                    self.reconcile_children(&mut s, children).await;
                    Ok(())
                }
                _ = self.reconcile.notified(), if s.connected => {
                    // A reload changed the children: statuses of new ones follow from the queue.
                    reader.rewind();
                    s.want_fill = true;
                    self.reconcile_children(&mut s, children).await;
                    Ok(())
                }
                _ = own.tick(), if s.connected => {
                    self.report_own(&mut s, children);
                    Ok(())
                }
                _ = depth.tick(), if s.connected => {
                    // Held on purpose (a Sparkplug host away): growth is not falling behind.
                    if self.dialect.held() {
                        behind = Behind::default();
                    } else {
                        self.watch_depth(&mut behind).await;
                    }
                    Ok(())
                }
                _ = beat.tick() => {
                    s.want_fill = true;
                    reader.flush().await.map_err(StepError::from)
                }
                _ = tokio::time::sleep_until(s.paced_until.unwrap_or_else(tokio::time::Instant::now)), if s.paced_until.is_some() => {
                    s.paced_until = None;
                    s.want_fill = true;
                    Ok(())
                }
            };
            let step = match step {
                Ok(()) if s.connected => self.pump(client, &mut s, reader).await,
                other => other,
            };
            match step {
                Ok(()) => {
                    let n = store_trouble.end();
                    if n > 0 {
                        info!(failures = n, "queue reads work again");
                    }
                }
                Err(e) => {
                    // The session stays up; the queue is tried again on the next beat.
                    s.want_fill = false;
                    if store_trouble.hit() {
                        error!(error = %e, "cannot read or settle the queue; retrying every beat");
                    }
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
        event: Event,
        reader: &mut Reader,
        children: &Children,
        reply_tx: &mpsc::Sender<Reply>,
    ) -> Result<(), StepError> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                s.connected = true;
                self.metrics.set_connected(true);
                self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                info!(host = %self.platform.host, port = self.platform.port, device_id = %self.platform.device_id, "platform connected");
                for t in self.dialect.subscriptions() {
                    match client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                        // Every SUBSCRIBE is a barrier in the delivery bookkeeping.
                        Ok(()) => s.delivery.barrier_requested(),
                        Err(e) => warn!(topic = %t, error = %e, "cannot subscribe"),
                    }
                }
                let version = match self.dialect.version_key() {
                    Some(key) => self
                        .store
                        .get_meta(key)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    None => 0,
                };
                // What is queued now is the backlog (paced); what comes later is live.
                s.backlog_end = self
                    .store
                    .depth()
                    .await
                    .ok()
                    .and_then(|d| d.newest_seq)
                    .unwrap_or(0);
                // Session replay: sync requests, statuses, announcements — per the dialect.
                let view = children.view();
                // Births (Sparkplug) carry the gateway's own values as they are now.
                let own = self.own_props(children);
                self.dialect.prime_own(&own);
                s.control
                    .extend(self.dialect.on_connect(&view, version, now_ms()));
                self.reconcile_children(s, children).await;
                // The same values the births carry (the process's RSS moves in between).
                s.control.extend(self.dialect.own(&own, now_ms()));
                s.want_fill = true;
                Ok(())
            }
            Event::Outgoing(Outgoing::Publish(_) | Outgoing::Subscribe(_))
            | Event::Incoming(Packet::PubAck(_) | Packet::SubAck(_)) => {
                track(s, reader, &event).await?;
                Ok(())
            }
            Event::Incoming(Packet::Publish(p)) => {
                self.inbound(s, &p.topic, &p.payload, reader, children, reply_tx)
                    .await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Hand the client what it has room for: answers, then session messages, then data; then
    /// a barrier behind what went out at QoS 0.
    async fn pump(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
        reader: &mut Reader,
    ) -> Result<(), StepError> {
        let r = self.hand_out(client, s, reader).await;
        self.barrier(client, s);
        r
    }

    /// Subscribe the barrier topic again when QoS 0 publishes wait for proof (see `delivery`).
    fn barrier(&self, client: &AsyncClient, s: &mut Session) {
        if !s.delivery.needs_barrier() {
            return;
        }
        let Some(topic) = self.dialect.barrier_topic() else {
            return;
        };
        match client.try_subscribe(topic, QoS::AtLeastOnce) {
            Ok(()) => s.delivery.barrier_requested(),
            // The client is gone; its `Down` event follows and the session starts over.
            Err(e) => debug!(error = %e, "the MQTT client took no barrier"),
        }
    }

    async fn hand_out(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
        reader: &mut Reader,
    ) -> Result<(), StepError> {
        while s.delivery.room() {
            let Some(o) = s.replies.pop_front().or_else(|| s.control.pop_front()) else {
                break;
            };
            if let Some(why) = fit::refuse(&o, self.platform.max_packet) {
                self.metrics.replies_dropped.fetch_add(1, Ordering::Relaxed);
                if s.unsendable.hit() {
                    warn!(reason = %why, "message not sent: it cannot go on the wire (further ones are counted; logged again when an episode ends)");
                }
                continue;
            }
            let m = Msg {
                qos0: self.dialect.qos0(),
                ..Msg::default()
            };
            if !hand(client, s, o, m) {
                return Ok(());
            }
        }
        if !s.control.is_empty() {
            // Births and announcements go before the data that depends on them.
            return Ok(());
        }
        loop {
            while s.delivery.data_room() {
                let Some((o, m)) = s.spill.pop_front() else {
                    break;
                };
                if !hand(client, s, o, m) {
                    return Ok(());
                }
            }
            if !s.spill.is_empty() || !s.want_fill || !s.delivery.data_room() {
                return Ok(());
            }
            if s.paced_until.is_some() || self.dialect.held() {
                return Ok(());
            }
            self.fill(s, reader).await?;
            if s.spill.is_empty() {
                return Ok(());
            }
        }
    }

    /// Read queued records and pack them into data messages (into `spill`) while the window
    /// has room.
    async fn fill(&mut self, s: &mut Session, reader: &mut Reader) -> Result<(), StepError> {
        let (window, _) = self.limits();
        let per_message = self.dialect.batch_limit().max(1);
        let (data_out, _) = s.delivery.outstanding();
        let rows = (window.saturating_sub(data_out) * per_message).clamp(per_message, READ_ROWS);
        let taken = reader.next(rows, &self.registry).await?;
        if taken.records.is_empty() {
            s.want_fill = taken.more;
            return Ok(());
        }
        let recs = taken.records;
        let mut i = 0;
        let mut planned = 0usize;
        // Packed no further than the window's bytes allow either (one message always).
        let mut planned_bytes = s.delivery.outstanding_bytes();
        while i < recs.len() {
            if data_out + planned >= window
                || (data_out + planned > 0 && planned_bytes >= self.platform.data_window_bytes)
            {
                break;
            }
            let backlog = recs[i].0 <= s.backlog_end;
            if backlog {
                if let Some(wait) = s.pace.as_mut().and_then(|p| p.wait(Instant::now())) {
                    s.paced_until = Some(tokio::time::Instant::now() + wait);
                    break;
                }
            }
            let f = fit::fit(
                self.dialect.as_mut(),
                &recs[i..],
                self.platform.max_packet,
                now_ms(),
            );
            i += f.consumed.max(1);
            if !f.done.is_empty() {
                reader.done(f.done).await?;
            }
            if !f.unsendable.is_empty() || f.dropped_parts > 0 {
                self.metrics
                    .dropped_unsendable
                    .fetch_add(f.dropped_parts as u64, Ordering::Relaxed);
                if s.unsendable.hit() {
                    warn!(records = f.unsendable.len(), properties = f.dropped_parts, reason = ?f.reason, "dropping what can never be sent (counted as `unsendable`; logged once per episode)");
                }
                if !f.unsendable.is_empty() {
                    reader.unsendable(f.unsendable).await?;
                }
            } else if !f.messages.is_empty() {
                let n = s.unsendable.end();
                if n > 1 {
                    info!(
                        occurrences = n,
                        "unsendable episode over: records go on the wire again"
                    );
                }
            }
            if f.messages.is_empty() {
                continue;
            }
            let size: usize = f.messages.iter().map(|o| o.payload.len()).sum();
            if backlog {
                if let Some(p) = s.pace.as_mut() {
                    p.charge(f.messages.len(), size);
                }
            }
            planned += f.messages.len();
            planned_bytes = planned_bytes.saturating_add(size);
            let last = f.messages.len() - 1;
            let mut carried = Some(f.carried);
            for (k, o) in f.messages.into_iter().enumerate() {
                let records = if k == last {
                    carried.take().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let bytes = o.payload.len();
                s.spill.push_back((
                    o,
                    Msg {
                        records,
                        data: true,
                        qos0: self.dialect.qos0(),
                        bytes,
                    },
                ));
            }
        }
        if i < recs.len() {
            reader.unsent(&recs[i..]).await?;
        }
        Ok(())
    }

    /// Queue an answer; beyond `MAX_REPLIES` it is dropped and counted.
    fn queue_reply(&self, s: &mut Session, o: Out) {
        if s.replies.len() >= MAX_REPLIES {
            self.metrics.replies_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(topic = %o.topic, "answer dropped: too many waiting");
            return;
        }
        s.replies.push_back(o);
    }

    /// Ask the platform to add the children it does not know yet and to delete the ones the
    /// config dropped. Where the platform assigns no ids (ThingsBoard), a child announced is a
    /// child known by its node id, and a child forgotten is deleted, right away.
    async fn reconcile_children(&mut self, s: &mut Session, children: &Children) {
        let pending = children.unconfirmed();
        if !pending.is_empty() {
            info!(
                children = pending.len(),
                "asking the platform to add children"
            );
            s.control.extend(self.dialect.add(&pending, now_ms()));
            if !self.dialect.assigns_ids() {
                let devices = pending
                    .iter()
                    .map(|c| (c.node_id.clone(), c.node_id.clone()))
                    .collect();
                if children.added(devices, Vec::new()).await {
                    s.want_fill = true;
                }
            }
        }
        let ids = children.to_delete();
        if !ids.is_empty() {
            info!(
                children = ids.len(),
                "asking the platform to delete children"
            );
            s.control.extend(self.dialect.delete(&ids, now_ms()));
            if !self.dialect.assigns_ids() {
                for d in ids {
                    children.deleted(&d).await;
                }
            }
        }
    }

    async fn inbound(
        &mut self,
        s: &mut Session,
        topic: &str,
        payload: &[u8],
        reader: &mut Reader,
        children: &Children,
        reply_tx: &mpsc::Sender<Reply>,
    ) {
        if topic.len() > MAX_INBOUND_TOPIC {
            self.metrics
                .inbound_rejected
                .fetch_add(1, Ordering::Relaxed);
            debug!(
                bytes = topic.len(),
                "ignoring a platform message with an oversize topic"
            );
            if let Some(n) = self.logs.rejected.hit() {
                warn!(bytes = topic.len(), limit = MAX_INBOUND_TOPIC, rejected = n, "ignoring a platform message with an oversize topic (not answered: its id would make an invalid answer topic; counted in inbound_rejected, at most one such line a minute)");
            }
            return;
        }
        let was_held = self.dialect.held();
        let parsed = self.dialect.parse(topic, payload);
        match (was_held, self.dialect.held()) {
            (false, true) => {
                info!(topic = %topic, "the platform's host is away: data waits in the queue")
            }
            (true, false) => {
                info!(topic = %topic, "the platform's host is back: births, then data")
            }
            _ => {}
        }
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .inbound_rejected
                    .fetch_add(1, Ordering::Relaxed);
                debug!(topic = %topic, bytes = payload.len(), error = %e.message, "ignoring malformed platform message");
                if let Some(n) = self.logs.rejected.hit() {
                    warn!(topic = %topic, bytes = payload.len(), error = %e.message, rejected = n, "ignoring malformed platform message (counted in inbound_rejected; at most one such line a minute while they keep coming)");
                }
                // A request we cannot read is still answered, so the platform does not wait.
                if let Some(r) = e.respond.and_then(|r| self.router.refuse(&r, &e.message)) {
                    self.queue_reply(s, Out::new(r.topic, r.payload));
                }
                return;
            }
        };
        let msg = match msg {
            Inbound::Notified { inbound, ack } => {
                self.queue_reply(s, Out::new(ack.topic, ack.payload));
                *inbound
            }
            other => other,
        };
        match msg {
            Inbound::Added {
                devices,
                failed,
                version,
            } => {
                if children.added(devices, failed).await {
                    // Their queued records (passed over until now) can go.
                    reader.rewind();
                    s.want_fill = true;
                }
                self.save_version(version).await;
            }
            Inbound::Deleted {
                device_ids,
                version,
            } => {
                for d in device_ids {
                    children.deleted(&d).await;
                }
                self.save_version(version).await;
            }
            Inbound::DeleteResult { deleted, failed } => {
                for d in deleted {
                    children.deleted(&d).await;
                }
                for f in failed {
                    error!(device_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, "platform refused to delete child (retried later)");
                }
            }
            Inbound::StatusResult { failed } => {
                for f in failed {
                    debug!(device_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, "platform refused a status update");
                    if let Some(n) = self.logs.status_refused.hit() {
                        warn!(device_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, refused = n, "platform refused a status update (count since the last such line; at most one a minute)");
                    }
                }
            }
            Inbound::Renamed { from, to } => {
                warn!(device_id = %from, new_name = %to, "the platform renamed a child; fieldgate keeps speaking for it by its configured id");
            }
            Inbound::Request { request, respond } => {
                if let Some(r) = self
                    .router
                    .dispatch(request, respond, &self.registry, reply_tx)
                {
                    self.queue_reply(s, Out::new(r.topic, r.payload));
                }
            }
            Inbound::Operation {
                request_id,
                name,
                paras,
                respond,
            } => {
                let asked = crate::remote::Asked {
                    request_id,
                    name,
                    paras,
                    respond,
                    reply: reply_tx.clone(),
                };
                if let Err(e) = self.events.try_send(UplinkEvent::Operation(asked)) {
                    let asked = match e.into_inner() {
                        UplinkEvent::Operation(a) => a,
                        UplinkEvent::ChildDeleted(_) => return,
                    };
                    let busy = Err((
                        fieldgate_driver::ErrorCode::Busy,
                        "the gateway is busy with other operations; ask again".to_string(),
                    ));
                    if let Some(r) = (asked.respond)(&busy) {
                        self.queue_reply(s, Out::new(r.topic, r.payload));
                    }
                }
            }
            Inbound::Rebirth => {
                info!("the platform asks for a rebirth: sending every birth certificate again");
                let view = children.view();
                let own = self.own_props(children);
                self.dialect.prime_own(&own);
                s.control
                    .extend(self.dialect.on_connect(&view, 0, now_ms()));
                s.want_fill = true;
            }
            Inbound::Ignored(what) => {
                debug!(topic = %topic, what = %what, "platform message ignored")
            }
            Inbound::Notified { .. } => debug!(topic = %topic, "nested notification ignored"),
        }
    }

    async fn save_version(&self, version: Option<i64>) {
        if let Some(v) = version {
            let Some(key) = self.dialect.version_key() else {
                return;
            };
            if let Err(e) = self.store.set_meta(key, v.to_string()).await {
                warn!(error = %e, "cannot persist the sub-device version");
            }
        }
    }

    /// Sample the queue's depth; say once per episode when it keeps growing while connected.
    async fn watch_depth(&self, behind: &mut Behind) {
        let Ok(d) = self.store.depth().await else {
            return;
        };
        match behind.sample(d.records) {
            Some(true) => {
                self.metrics.falling_behind.store(true, Ordering::Relaxed);
                warn!(records = d.records, "the queue keeps growing while connected: delivery is slower than collection (raise inflight, inflight_bytes or replay rates, or poll less)");
            }
            Some(false) => {
                self.metrics.falling_behind.store(false, Ordering::Relaxed);
                info!(
                    records = d.records,
                    "delivery is catching up: the queue is shrinking"
                );
            }
            None => {}
        }
    }

    /// The gateway's own properties, on connect and every `report_interval`.
    fn report_own(&mut self, s: &mut Session, children: &Children) {
        let props = self.own_props(children);
        s.control.extend(self.dialect.own(&props, now_ms()));
    }

    fn own_props(&self, children: &Children) -> std::collections::BTreeMap<String, Value> {
        let (online, total) = children.counts();
        let mut props = std::collections::BTreeMap::from([
            (
                "version".to_string(),
                Value::Text(env!("CARGO_PKG_VERSION").into()),
            ),
            (
                "uptime_s".to_string(),
                Value::UInt(self.started.elapsed().as_secs()),
            ),
            (
                "queue_records".to_string(),
                Value::UInt(self.metrics.queue_records.load(Ordering::Relaxed)),
            ),
            ("children_online".to_string(), Value::UInt(online as u64)),
            ("children_total".to_string(), Value::UInt(total as u64)),
        ]);
        // Health: what a fleet operator watches without logging in.
        let m = &self.metrics;
        let n = |a: &std::sync::atomic::AtomicU64| Value::UInt(a.load(Ordering::Relaxed));
        for (k, v) in [
            (
                "children_offline",
                Value::UInt(total.saturating_sub(online) as u64),
            ),
            ("queue_oldest_age_s", n(&m.queue_oldest_age_s)),
            ("dropped_full", n(&m.dropped_full)),
            ("dropped_expired", n(&m.dropped_expired)),
            ("dropped_store_error", n(&m.dropped_store_error)),
            ("dropped_corrupt", n(&m.dropped_corrupt)),
            ("dropped_orphan", n(&m.dropped_orphan)),
            ("dropped_unsendable", n(&m.dropped_unsendable)),
            ("delivered", n(&m.delivered)),
            ("connects", n(&m.connects)),
            ("connect_attempts", n(&m.connect_attempts)),
            ("requests_done", n(&m.requests_done)),
            ("requests_failed", n(&m.requests_failed)),
            ("requests_busy", n(&m.requests_busy)),
            ("inbound_rejected", n(&m.inbound_rejected)),
        ] {
            props.insert(k.to_string(), v);
        }
        if let Ok(buses) = m.bus_counters.lock() {
            for (bus, counters) in buses.iter() {
                for key in crate::control::ACTIVITY {
                    if let Some(v) = counters.get(*key) {
                        props.insert(format!("bus.{bus}.{key}"), Value::UInt(*v));
                    }
                }
            }
        }
        let (rss_kib, cpu_ms) = crate::service::process_usage();
        props.insert("rss_kib".to_string(), Value::UInt(rss_kib));
        props.insert("cpu_ms".to_string(), Value::UInt(cpu_ms));
        // The outcome of the last remote config change, once there was one.
        if let Some(note) = self
            .metrics
            .remote_note
            .lock()
            .ok()
            .filter(|n| !n.is_empty())
        {
            props.insert("config_status".to_string(), Value::Text(note.clone()));
        }
        props
    }

    /// Graceful stop: stop feeding, give outstanding publishes a moment to be acknowledged
    /// (so they are not sent twice after the restart), say the dialect's last words, then
    /// disconnect cleanly.
    async fn close(
        &mut self,
        client: &AsyncClient,
        link: &mut mpsc::Receiver<LinkEvent>,
        s: &mut Session,
        reader: &mut Reader,
    ) {
        if s.connected {
            while s.delivery.room() {
                let Some(o) = s.replies.pop_front() else {
                    break;
                };
                hand(client, s, o, Msg::default());
            }
            self.settle(client, link, s, reader, Duration::from_secs(2))
                .await;
            // What the platform must hear before a deliberate goodbye (Sparkplug: NDEATH — a
            // clean DISCONNECT does not fire the will).
            for o in self.dialect.on_shutdown(now_ms()) {
                hand(client, s, o, Msg::default());
            }
            self.settle(client, link, s, reader, Duration::from_millis(1500))
                .await;
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(LinkEvent::Mqtt(_)) = link.recv().await {}
            })
            .await;
        }
        let _ = reader.finish().await;
    }
    /// Process events until every outstanding publish is acknowledged or `within` passes;
    /// barriers follow what went out at QoS 0.
    async fn settle(
        &self,
        client: &AsyncClient,
        link: &mut mpsc::Receiver<LinkEvent>,
        s: &mut Session,
        reader: &mut Reader,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        self.barrier(client, s);
        while s.delivery.outstanding().1 > 0 {
            match tokio::time::timeout_at(deadline, link.recv()).await {
                Ok(Some(LinkEvent::Mqtt(event))) => {
                    let _ = track(s, reader, &event).await;
                    self.barrier(client, s);
                }
                _ => break,
            }
        }
    }
}

/// Hand one publish to the client. False when the client is gone (the connection task has
/// stopped and its `Down` event follows); the message is then dropped, its records stay in
/// the queue.
fn hand(client: &AsyncClient, s: &mut Session, o: Out, m: Msg) -> bool {
    let qos = if m.qos0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    match client.try_publish(o.topic, qos, false, o.payload) {
        Ok(()) => {
            s.delivery.requested(m);
            true
        }
        Err(e) => {
            debug!(error = %e, "the MQTT client took no more requests");
            false
        }
    }
}

/// The delivery bookkeeping of one event: a publish or subscribe the client numbered, or a
/// PUBACK or SUBACK and the records it delivers. Other events are left alone.
async fn track(s: &mut Session, reader: &mut Reader, event: &Event) -> Result<(), StoreError> {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Err(e) = s.delivery.numbered(*pkid) {
                warn!(error = %e, "publish bookkeeping");
            }
        }
        Event::Outgoing(Outgoing::Subscribe(pkid)) => {
            if let Err(e) = s.delivery.subscribe_numbered(*pkid) {
                warn!(error = %e, "subscribe bookkeeping");
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            if let Some(records) = s.delivery.acked(ack.pkid) {
                if !records.is_empty() {
                    reader.acked(records).await?;
                }
                s.want_fill = true;
            }
        }
        Event::Incoming(Packet::SubAck(ack)) => {
            if let Some(records) = s.delivery.subscribe_acked(ack.pkid) {
                if !records.is_empty() {
                    reader.acked(records).await?;
                }
                s.want_fill = true;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(6));
        assert!(
            b.next() <= Duration::from_secs(5),
            "first: full jitter up to 5 × min"
        );
        let pauses: Vec<Duration> = (0..5).map(|_| b.next()).collect();
        for (p, d) in pauses.iter().zip([2u64, 4, 6, 6, 6]) {
            let d = Duration::from_secs(d);
            assert!(*p >= d / 2 && *p <= d, "{p:?} within [{:?}, {d:?}]", d / 2);
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(5));
        assert!(
            b.next() >= Duration::from_secs(1),
            "then from [d/2, d] again"
        );
        // A fleet's first pauses spread over the whole range: no fifth of it in any second.
        let mut seconds = [0usize; 5];
        for i in 0..1000u64 {
            let mut g = Backoff::new(Duration::from_secs(1), Duration::from_secs(6));
            g.rng ^= i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for _ in 0..i % 7 {
                g.unit();
            }
            let p = g.next().as_secs() as usize;
            seconds[p.min(4)] += 1;
        }
        assert!(seconds.iter().all(|&n| n < 250), "{seconds:?}");
    }

    #[test]
    fn falling_behind_is_an_episode() {
        let mut b = Behind::default();
        assert_eq!(b.sample(0), None);
        assert_eq!(b.sample(1000), None);
        assert_eq!(b.sample(2000), None);
        assert_eq!(b.sample(3000), Some(true), "third growth in a row");
        assert_eq!(b.sample(4000), None, "said once");
        assert_eq!(b.sample(3500), Some(false));
        assert_eq!(b.sample(3400), None);
    }
}

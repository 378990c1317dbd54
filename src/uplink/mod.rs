//! The uplink: the one MQTT session to the platform, and delivery of the queue over it.
//!
//! Each connection attempt builds a fresh rumqttc client (IoTDA's client id and password embed
//! the current UTC hour, so they are rebuilt every time) and backs off exponentially with
//! jitter between attempts. The queue, not the client, is the truth: rumqttc's `publish()` only
//! queues a request and forgets unacknowledged publishes of a clean session, so the uplink
//! matches each `Outgoing::Publish(pkid)` to the records it carried (publishes leave in request
//! order), deletes records only on the matching PUBACK, keeps at most `inflight` data publishes
//! outstanding, and after any reconnect starts again from the oldest unacknowledged record.
//! Duplicates are possible after a reconnect; loss is not.

pub mod dialect;
mod pace;
mod tls;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_driver::{now_ms, Value};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::config::Platform;
use crate::metrics::Metrics;
use crate::queue::Record;
use crate::registry::{Deleted, Registry};
use crate::router::{Reply, Router};
use crate::store::{Store, StoreError};
use dialect::{ChildView, Dialect, Inbound, Out};

/// How many rows one store scan returns.
const SCAN: usize = 512;
/// Acknowledged records deleted in one transaction. Kept at 1: acknowledged rows left in the
/// store are the oldest ones, and a queue at its bound would drop them — and count as dropped
/// records the platform already has. Batching deletes measured ~1.6x faster drains, but the
/// drop counters must stay exact; a future store-side "in flight" mark can bring it back.
const ACK_BATCH: usize = 1;
/// How often the loop proves it is alive to the watchdog.
const BEAT: Duration = Duration::from_millis(250);
/// How often unanswered add requests are repeated.
const ADD_RETRY: Duration = Duration::from_secs(30);

/// Inbound packets larger than this are refused by the MQTT client.
const MAX_INBOUND_PACKET: usize = 256 * 1024;

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
    pub started: std::time::Instant,
    pub shutdown: watch::Receiver<bool>,
}

/// What the uplink tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkEvent {
    /// The platform deleted this configured child: stop polling it.
    ChildDeleted(String),
}

enum End {
    Shutdown,
    /// `unacked`: records sent whose PUBACK never came; they are sent again (or, if the queue
    /// overflows meanwhile, dropped and counted even though the broker may have them).
    Lost {
        error: String,
        was_connected: bool,
        unacked: usize,
    },
}

/// Per-connection delivery state. Dropped with the connection: what was in flight is simply
/// still in the store and is sent again by the next session.
#[derive(Default)]
struct Session {
    connected: bool,
    /// Acknowledged records not yet deleted from the store.
    acked: Vec<u64>,
    pace: Option<pace::Pace>,
    /// When set, data publishing waits for the pace until then.
    paced_until: Option<tokio::time::Instant>,
    /// Records carried by each publish request, in the order the requests were made.
    fifo: VecDeque<Vec<u64>>,
    /// Records carried by each publish the client has numbered, by packet id.
    by_pkid: HashMap<u16, Vec<u64>>,
    inflight: BTreeSet<u64>,
    /// Data publishes not yet acknowledged.
    outstanding: usize,
    /// Highest sequence number examined; rows at or below it are in flight, acked, or waiting
    /// for their child to be confirmed (then the cursor is reset).
    cursor: u64,
}

impl Uplink {
    pub async fn run(mut self) {
        let mut backoff = self.platform.reconnect_min;
        let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(64);
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let (client, eventloop) = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    error!(error = %e, "cannot build the MQTT session; retrying");
                    if self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(self.platform.reconnect_max);
                    continue;
                }
            };
            match self
                .session(client, eventloop, &reply_tx, &mut reply_rx)
                .await
            {
                End::Shutdown => break,
                End::Lost {
                    error,
                    was_connected,
                    unacked,
                } => {
                    self.metrics.set_connected(false);
                    let repeated = self
                        .metrics
                        .uplink_error
                        .lock()
                        .map(|e| *e == error)
                        .unwrap_or(false);
                    if was_connected {
                        warn!(error = %error, unacked, "platform connection lost; unacknowledged records will be sent again");
                        backoff = self.platform.reconnect_min;
                    } else if repeated {
                        debug!(error = %error, retry_in = ?backoff, "still cannot connect to the platform");
                    } else {
                        warn!(error = %error, retry_in = ?backoff, "cannot connect to the platform (retrying with backoff; further identical failures are logged at debug)");
                    }
                    if let Ok(mut e) = self.metrics.uplink_error.lock() {
                        *e = error;
                    }
                }
            }
            if self.pause(jitter(backoff)).await {
                break;
            }
            backoff = (backoff * 2).min(self.platform.reconnect_max);
        }
        self.metrics.set_connected(false);
        info!("uplink stopped");
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

    fn client(&mut self) -> Result<(AsyncClient, EventLoop), String> {
        let secret = self
            .platform
            .secret
            .load()
            .map_err(|e| format!("cannot read the device secret: {e}"))?;
        let c = self.dialect.connect(secret.expose(), now_ms());
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
        o.set_inflight(p.inflight.saturating_add(32));
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
        let (client, mut eventloop) = AsyncClient::new(o, usize::from(p.inflight) + 128);
        // Small acknowledgements and responses must not wait for Nagle + delayed ACK (~40 ms
        // each way): that is most of a command's round trip otherwise.
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        Ok((client, eventloop))
    }

    async fn session(
        &mut self,
        client: AsyncClient,
        mut ev: EventLoop,
        reply_tx: &mpsc::Sender<Reply>,
        reply_rx: &mut mpsc::Receiver<Reply>,
    ) -> End {
        let mut s = Session::default();
        if self.platform.replay_rate > 0 || self.platform.replay_bytes_rate > 0 {
            s.pace = Some(pace::Pace::new(
                self.platform.replay_rate,
                self.platform.replay_bytes_rate,
            ));
        }
        let mut adds = tokio::time::interval_at(tokio::time::Instant::now() + ADD_RETRY, ADD_RETRY);
        adds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut own = tokio::time::interval_at(
            tokio::time::Instant::now() + self.report_interval,
            self.report_interval,
        );
        own.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.metrics.uplink_beat.fetch_add(1, Ordering::Relaxed);
            let step: Result<(), String> = tokio::select! {
                _ = self.shutdown.changed() => {
                    self.close(&client, &mut ev, &mut s).await;
                    return End::Shutdown;
                }
                polled = ev.poll() => match polled {
                    Ok(event) => self.on_event(&client, &mut s, event, reply_tx).await,
                    Err(e) => {
                        // What the broker acknowledged is delivered: do not send it again.
                        let _ = self.flush_acked(&mut s).await;
                        return End::Lost { error: e.to_string(), was_connected: s.connected, unacked: s.inflight.len() };
                    }
                },
                _ = self.wake.notified(), if s.connected => self.fill(&client, &mut s).await,
                Some(reply) = reply_rx.recv(), if s.connected => {
                    publish(&client, &mut s, reply.topic, reply.payload, Vec::new())
                }
                _ = adds.tick(), if s.connected => self.reconcile_children(&client, &mut s).await,
                _ = self.reconcile.notified(), if s.connected => {
                    // A reload changed the children: statuses of new ones follow from the queue.
                    s.cursor = 0;
                    self.reconcile_children(&client, &mut s).await
                }
                _ = own.tick(), if s.connected => self.report_own(&client, &mut s),
                _ = beat.tick() => self.flush_acked(&mut s).await,
                _ = tokio::time::sleep_until(s.paced_until.unwrap_or_else(tokio::time::Instant::now)), if s.paced_until.is_some() && s.connected => {
                    s.paced_until = None;
                    self.fill(&client, &mut s).await
                }
            };
            if let Err(error) = step {
                let _ = self.flush_acked(&mut s).await;
                return End::Lost {
                    error,
                    was_connected: s.connected,
                    unacked: s.inflight.len(),
                };
            }
        }
    }

    async fn on_event(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
        event: Event,
        reply_tx: &mpsc::Sender<Reply>,
    ) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                s.connected = true;
                self.metrics.set_connected(true);
                self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                info!(host = %self.platform.host, port = self.platform.port, device_id = %self.platform.device_id, "platform connected");
                for t in self.dialect.subscriptions() {
                    client
                        .try_subscribe(t, QoS::AtLeastOnce)
                        .map_err(|e| e.to_string())?;
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
                // Session replay: sync requests, statuses, announcements — per the dialect.
                let children = self.children_view()?;
                for o in self.dialect.on_connect(&children, version, now_ms()) {
                    publish(client, s, o.topic, o.payload, Vec::new())?;
                }
                self.reconcile_children(client, s).await?;
                self.report_own(client, s)?;
                self.fill(client, s).await
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                match s.fifo.pop_front() {
                    Some(seqs) => {
                        s.by_pkid.insert(pkid, seqs);
                    }
                    None => warn!(
                        pkid,
                        "publish numbered by the client that fieldgate did not request"
                    ),
                }
                Ok(())
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let Some(seqs) = s.by_pkid.remove(&ack.pkid) else {
                    return Ok(());
                };
                if seqs.is_empty() {
                    return Ok(());
                }
                s.outstanding = s.outstanding.saturating_sub(1);
                self.metrics
                    .delivered
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                // Delete in batches (one transaction per many acks); until then the records
                // stay "in flight" so no scan sends them again.
                s.acked.extend(seqs);
                if s.acked.len() >= ACK_BATCH {
                    self.flush_acked(s).await?;
                }
                self.fill(client, s).await
            }
            Event::Incoming(Packet::Publish(p)) => {
                self.inbound(client, s, &p.topic, &p.payload, reply_tx)
                    .await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Hand the client as many queued records as the window allows.
    async fn fill(&mut self, client: &AsyncClient, s: &mut Session) -> Result<(), String> {
        let window = usize::from(self.platform.inflight);
        let per_message = self.dialect.batch_limit().max(1);
        while s.outstanding < window {
            // Read about what the free part of the window can carry, not more.
            let want = ((window - s.outstanding) * per_message).clamp(per_message, SCAN);
            let rows = self
                .store
                .scan(s.cursor, want)
                .await
                .map_err(|e: StoreError| e.to_string())?;
            let Some(last) = rows.last().map(|r| r.seq) else {
                break;
            };
            let full_scan = rows.len() == want;
            let mut drop_seqs = Vec::new();
            let mut sendable: Vec<(u64, String, Record)> = Vec::new();
            {
                let reg = self
                    .registry
                    .lock()
                    .map_err(|_| "registry lock poisoned".to_string())?;
                for row in rows {
                    if s.inflight.contains(&row.seq) {
                        continue;
                    }
                    match Record::decode(&row) {
                        Err(e) => {
                            warn!(seq = row.seq, child = %row.child, error = %e, "dropping unreadable queue record");
                            self.metrics.dropped_corrupt.fetch_add(1, Ordering::Relaxed);
                            drop_seqs.push(row.seq);
                        }
                        Ok(rec) if !reg.contains(rec.child()) => {
                            warn!(seq = row.seq, child = %rec.child(), "dropping queued record of a child no longer configured");
                            self.metrics.dropped_orphan.fetch_add(1, Ordering::Relaxed);
                            drop_seqs.push(row.seq);
                        }
                        Ok(rec) => {
                            // A child not yet confirmed by the platform waits; its order holds.
                            if let Some(dev) = reg.device_id(rec.child()) {
                                sendable.push((row.seq, dev.to_string(), rec));
                            }
                        }
                    }
                }
            }
            if !drop_seqs.is_empty() {
                self.store
                    .delete(drop_seqs)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // Pack consecutive records of one kind into messages, in order.
            let mut i = 0;
            let mut consumed_to = last;
            while i < sendable.len() {
                if s.outstanding >= window || s.paced_until.is_some() {
                    consumed_to = sendable[i].0 - 1;
                    break;
                }
                let first = i;
                let (outs, n) = self.dialect.pack(
                    &sendable[i..],
                    self.platform.max_packet.saturating_sub(512),
                    now_ms(),
                );
                let n = n.clamp(1, sendable.len() - i);
                let seqs: Vec<u64> = sendable[i..i + n].iter().map(|r| r.0).collect();
                i += n;
                if outs.is_empty() {
                    // Nothing this platform carries (e.g. statuses on AllThingsTalk): done.
                    self.store.delete(seqs).await.map_err(|e| e.to_string())?;
                    continue;
                }
                let size: usize = outs.iter().map(|o| o.payload.len()).sum();
                if let Some(pace) = s.pace.as_mut() {
                    if let Err(wait) = pace.take(size, std::time::Instant::now()) {
                        // Not yet: these records go out when the bucket has refilled.
                        s.paced_until = Some(tokio::time::Instant::now() + wait);
                        consumed_to = sendable[first].0 - 1;
                        break;
                    }
                }
                debug!(
                    messages = outs.len(),
                    records = seqs.len(),
                    bytes = size,
                    outstanding = s.outstanding,
                    "publishing queued records"
                );
                s.inflight.extend(seqs.iter().copied());
                s.outstanding += 1;
                // Several messages for these records: the last one carries them, so they are
                // deleted only when it is acknowledged (PUBACKs come in order on a session).
                let last = outs.len() - 1;
                for (k, Out { topic, payload }) in outs.into_iter().enumerate() {
                    let carried = if k == last { seqs.clone() } else { Vec::new() };
                    publish(client, s, topic, payload, carried)?;
                }
            }
            s.cursor = s.cursor.max(consumed_to);
            if !full_scan || s.outstanding >= window || s.paced_until.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Every configured child as the dialect sees it.
    fn children_view(&self) -> Result<Vec<ChildView>, String> {
        let reg = self
            .registry
            .lock()
            .map_err(|_| "registry lock poisoned".to_string())?;
        Ok(reg
            .children()
            .map(|c| ChildView {
                node_id: c.node_id.clone(),
                device_id: c.device_id.clone(),
                product_id: c.product_id.clone(),
                name: c.name.clone(),
                online: c.online,
            })
            .collect())
    }

    /// Ask the platform to add the children it does not know yet and to delete the ones the
    /// config dropped. Where the platform assigns no ids (ThingsBoard), a child announced is a
    /// child known by its node id, and a child forgotten is deleted, right away.
    async fn reconcile_children(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
    ) -> Result<(), String> {
        let pending: Vec<ChildView> = {
            let reg = self
                .registry
                .lock()
                .map_err(|_| "registry lock poisoned".to_string())?;
            reg.unconfirmed()
                .iter()
                .map(|c| ChildView {
                    node_id: c.node_id.clone(),
                    device_id: None,
                    product_id: c.product_id.clone(),
                    name: c.name.clone(),
                    online: c.online,
                })
                .collect()
        };
        if !pending.is_empty() {
            info!(
                children = pending.len(),
                "asking the platform to add children"
            );
            for o in self.dialect.add(&pending, now_ms()) {
                publish(client, s, o.topic, o.payload, Vec::new())?;
            }
            if !self.dialect.assigns_ids() {
                let devices = pending
                    .iter()
                    .map(|c| (c.node_id.clone(), c.node_id.clone()))
                    .collect();
                self.children_added(s, devices, Vec::new()).await;
            }
        }
        let ids = self
            .registry
            .lock()
            .map(|r| r.to_delete())
            .map_err(|_| "registry lock poisoned".to_string())?;
        if !ids.is_empty() {
            info!(
                children = ids.len(),
                "asking the platform to delete children"
            );
            for o in self.dialect.delete(&ids, now_ms()) {
                publish(client, s, o.topic, o.payload, Vec::new())?;
            }
            if !self.dialect.assigns_ids() {
                for d in ids {
                    self.platform_deleted(&d).await;
                }
            }
        }
        Ok(())
    }

    /// The platform knows these children now (node id → platform id).
    async fn children_added(
        &mut self,
        s: &mut Session,
        devices: Vec<(String, String)>,
        failed: Vec<dialect::Failed>,
    ) {
        let mut learned = Vec::new();
        if let Ok(mut reg) = self.registry.lock() {
            for (node, dev) in &devices {
                if reg.device_id(node) == Some(dev.as_str()) {
                    continue;
                }
                if reg.confirm(node, dev) {
                    learned.extend(reg.persisted(node));
                } else {
                    warn!(node_id = %node, device_id = %dev, "platform reports a child that is not in the config");
                }
            }
            for f in &failed {
                reg.refused(&f.id, format!("{}: {}", f.error_code, f.error_msg));
            }
        }
        for p in &learned {
            info!(node_id = %p.node_id, device_id = ?p.device_id, "child confirmed by the platform");
            if let Err(e) = self.store.save_child(p.clone()).await {
                error!(node_id = %p.node_id, error = %e, "cannot persist the platform device id");
            }
        }
        for f in failed {
            error!(node_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, "platform refused to add child (retried later)");
        }
        if !learned.is_empty() {
            // Their queued records (skipped until now) can go, and so can their status.
            s.cursor = 0;
            self.wake.notify_one();
        }
    }

    async fn inbound(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
        topic: &str,
        payload: &[u8],
        reply_tx: &mpsc::Sender<Reply>,
    ) {
        let msg = match self.dialect.parse(topic, payload) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .inbound_rejected
                    .fetch_add(1, Ordering::Relaxed);
                warn!(topic = %topic, bytes = payload.len(), error = %e.message, "ignoring malformed platform message");
                // A request we cannot read is still answered, so the platform does not wait.
                if let Some(respond) = e.respond {
                    self.router.refuse(&respond, &e.message, reply_tx);
                }
                return;
            }
        };
        let msg = match msg {
            Inbound::Notified { inbound, ack } => {
                let _ = reply_tx.try_send(ack);
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
                self.children_added(s, devices, failed).await;
                self.save_version(version).await;
            }
            Inbound::Deleted {
                device_ids,
                version,
            } => {
                for d in device_ids {
                    self.platform_deleted(&d).await;
                }
                self.save_version(version).await;
            }
            Inbound::DeleteResult { deleted, failed } => {
                for d in deleted {
                    self.platform_deleted(&d).await;
                }
                for f in failed {
                    error!(device_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, "platform refused to delete child (retried later)");
                }
            }
            Inbound::StatusResult { failed } => {
                for f in failed {
                    warn!(device_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, "platform refused a status update");
                }
            }
            Inbound::Renamed { from, to } => {
                warn!(device_id = %from, new_name = %to, "the platform renamed a child; fieldgate keeps speaking for it by its configured id");
            }
            Inbound::Request { request, respond } => {
                self.router
                    .dispatch(request, respond, &self.registry, reply_tx);
            }
            Inbound::Rebirth => {
                info!("the platform asks for a rebirth: sending every birth certificate again");
                let children = match self.children_view() {
                    Ok(c) => c,
                    Err(e) => {
                        error!(error = %e, "cannot list the children for a rebirth");
                        return;
                    }
                };
                for o in self.dialect.on_connect(&children, 0, now_ms()) {
                    if let Err(e) = publish(client, s, o.topic, o.payload, Vec::new()) {
                        warn!(error = %e, "rebirth not sent");
                    }
                }
            }
            Inbound::Ignored(what) => {
                debug!(topic = %topic, what = %what, "platform message ignored")
            }
            Inbound::Notified { .. } => debug!(topic = %topic, "nested notification ignored"),
        }
    }

    /// Delete acknowledged records from the store.
    async fn flush_acked(&mut self, s: &mut Session) -> Result<(), String> {
        if s.acked.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut s.acked);
        let r = self
            .store
            .delete(batch.clone())
            .await
            .map_err(|e| e.to_string());
        for q in &batch {
            s.inflight.remove(q);
        }
        r
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

    /// The platform deleted a child: one we asked for, or one it removed on its own.
    async fn platform_deleted(&mut self, device_id: &str) {
        let outcome = self
            .registry
            .lock()
            .map(|mut r| r.deleted(device_id))
            .map_err(|_| ());
        match outcome {
            Ok(Deleted::Requested(node)) => {
                info!(node_id = %node, device_id = %device_id, "child deleted on the platform");
                let still = self.registry.lock().ok().and_then(|r| r.persisted(&node));
                let r = match still {
                    Some(p) => self.store.save_child(p).await,
                    None => self.store.forget_child(&node).await,
                };
                if let Err(e) = r {
                    error!(node_id = %node, error = %e, "cannot persist the deletion");
                }
            }
            Ok(Deleted::ByPlatform(node)) => {
                warn!(node_id = %node, device_id = %device_id, "the platform deleted this child: it is no longer polled nor added again (remove it from the config, reload, and add it back to restore it)");
                if let Some(p) = self.registry.lock().ok().and_then(|r| r.persisted(&node)) {
                    if let Err(e) = self.store.save_child(p).await {
                        error!(node_id = %node, error = %e, "cannot persist the deletion");
                    }
                }
                let _ = self.events.try_send(UplinkEvent::ChildDeleted(node));
            }
            Ok(Deleted::Unknown) => {
                debug!(device_id = %device_id, "platform deleted a device we do not know")
            }
            Err(_) => error!("registry lock poisoned"),
        }
    }

    /// The gateway's own properties, on connect and every `report_interval`.
    fn report_own(&mut self, client: &AsyncClient, s: &mut Session) -> Result<(), String> {
        let (online, total) = self
            .registry
            .lock()
            .map(|r| {
                (
                    r.children().filter(|c| c.online == Some(true)).count(),
                    r.children().count(),
                )
            })
            .unwrap_or((0, 0));
        let props = std::collections::BTreeMap::from([
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
        for o in self.dialect.own(&props, now_ms()) {
            publish(client, s, o.topic, o.payload, Vec::new())?;
        }
        Ok(())
    }

    /// Graceful stop: stop feeding, give outstanding publishes a moment to be acknowledged
    /// (so they are not sent twice after the restart), then disconnect cleanly.
    async fn close(&mut self, client: &AsyncClient, ev: &mut EventLoop, s: &mut Session) {
        let _ = self.flush_acked(s).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while s.connected && s.outstanding > 0 {
            match tokio::time::timeout_at(deadline, ev.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(seqs) = s.fifo.pop_front() {
                        s.by_pkid.insert(pkid, seqs);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(seqs) = s.by_pkid.remove(&ack.pkid) {
                        if !seqs.is_empty() {
                            s.outstanding = s.outstanding.saturating_sub(1);
                            let _ = self.store.delete(seqs).await;
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if s.connected {
            // What the platform must hear before a deliberate goodbye (Sparkplug: NDEATH — a
            // clean DISCONNECT does not fire the will).
            let last_words = self.dialect.on_shutdown(now_ms());
            let mut waiting = 0usize;
            for o in last_words {
                if publish(client, s, o.topic, o.payload, Vec::new()).is_ok() {
                    waiting += 1;
                }
            }
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while waiting > 0 {
                match tokio::time::timeout_at(deadline, ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => waiting -= 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), ev.poll()).await;
        }
    }
}

/// Queue one QoS 1 publish and remember which records it carries.
fn publish(
    client: &AsyncClient,
    s: &mut Session,
    topic: String,
    payload: Vec<u8>,
    seqs: Vec<u64>,
) -> Result<(), String> {
    client
        .try_publish(topic, QoS::AtLeastOnce, false, payload)
        .map_err(|e| format!("MQTT client request queue: {e}"))?;
    s.fifo.push_back(seqs);
    Ok(())
}

/// ±25 % jitter so a fleet does not reconnect in lock-step after a broker restart.
fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.75 + 0.5 * f64::from(n % 1000) / 1000.0)
}

//! The BLE bus task: one BlueZ adapter, scanned continuously, shared by every device on it.
//!
//! Advertisement sensors: discovery runs with duplicate data on, so BlueZ reports every new
//! advertisement as a property change; each configured address is decoded in its format and
//! reported when its values change (at most once per poll period), ONLINE on its first good
//! advertisement and OFFLINE at once after `stale_after` without one. Frames that do not decode
//! are counted against the device (OFFLINE after `offline_after` in a row) and never reported.
//!
//! GATT devices each get a task that connects (one connection attempt at a time per adapter,
//! first come first served, so a dead device cannot monopolise the radio), reads the configured
//! characteristics every poll period, subscribes to the `notify` ones, and writes for commands;
//! any failure disconnects and reconnects with exponential backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bluer::{Adapter, AdapterEvent, Address, DiscoveryFilter, DiscoveryTransport, Uuid};
use fieldgate_driver::{
    named, now_ms, send_reports, send_status, Command, CommandOutcome, CommandRequest,
    DeviceStatus, Driver, DriverContext, DriverError, DriverFuture, Episode, ErrorCode, Events,
    Health, Value,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::decode::{decode, Props};
use crate::spec::{decode_char, encode_char, BleBus, BleDevice, GattChar, Kind};

/// Why a GATT session ended; one variant per step. The text is the device's OFFLINE reason
/// and the answer to commands until it is back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum GattError {
    #[error("address: {0}")]
    Address(String),
    #[error("{0}")]
    Adapter(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("connect: timeout after {0:?}")]
    ConnectTimeout(Duration),
    #[error("services: {0}")]
    Services(String),
    #[error("characteristics: {0}")]
    Characteristics(String),
    #[error("characteristic {0} not found on the device")]
    Missing(String),
    #[error("subscribe {0}: {1}")]
    Subscribe(String, String),
    #[error("read {0}: timeout")]
    ReadTimeout(String),
    #[error("read {0}: {1}")]
    Read(String, String),
}

pub struct BleDriver {
    bus: BleBus,
    devices: Vec<BleDevice>,
}

impl BleDriver {
    pub fn new(bus: BleBus, devices: Vec<BleDevice>) -> Self {
        Self { bus, devices }
    }
}

impl Driver for BleDriver {
    fn bus(&self) -> &str {
        &self.bus.name
    }

    fn run(self: Box<Self>, ctx: DriverContext) -> DriverFuture {
        Box::pin(async move { run(self.bus, self.devices, ctx).await })
    }
}

/// Short form of 16-bit SIG UUIDs (`0000xxxx-0000-1000-8000-00805f9b34fb`).
pub fn uuid16(u: &Uuid) -> Option<u16> {
    let b = u.as_bytes();
    let base = [
        0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0x80, 0x5f, 0x9b, 0x34, 0xfb,
    ];
    (b[0] == 0 && b[1] == 0 && b[4..] == base).then(|| u16::from_be_bytes([b[2], b[3]]))
}

/// What an advertisement carried, as the decoders take it.
pub async fn advert_data(
    adapter: &Adapter,
    addr: Address,
) -> bluer::Result<(BTreeMap<u16, Vec<u8>>, BTreeMap<u16, Vec<u8>>, Option<i16>)> {
    let dev = adapter.device(addr)?;
    let sd = dev
        .service_data()
        .await?
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(u, v)| Some((uuid16(&u)?, v)))
        .collect();
    let md = dev
        .manufacturer_data()
        .await?
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((sd, md, dev.rssi().await.ok().flatten()))
}

struct Advert {
    spec: BleDevice,
    health: Health,
    last_good: Instant,
    /// Last reported values, and changed ones waiting for the rate limit.
    last: Option<Props>,
    pending: Option<Props>,
    last_report: Option<Instant>,
}

/// Report pending values if the device's rate limit allows it now.
async fn flush(a: &mut Advert, ctx: &DriverContext) -> Result<(), DriverError> {
    let now = Instant::now();
    if a.pending.is_none() || a.last_report.is_some_and(|t| now < t + a.spec.poll) {
        return Ok(());
    }
    let Some(props) = a.pending.take() else {
        return Ok(());
    };
    a.last_report = Some(now);
    a.last = Some(props.clone());
    send_reports(
        &ctx.events,
        &a.spec.node_id,
        named(BTreeMap::from([(a.spec.service.clone(), props)])),
        now_ms(),
    )
    .await
}

async fn run(
    bus: BleBus,
    devices: Vec<BleDevice>,
    mut ctx: DriverContext,
) -> Result<(), DriverError> {
    info!(bus = %bus.name, adapter = ?bus.adapter, devices = devices.len(), "BLE bus started");
    let now = Instant::now();
    let mut adverts: HashMap<String, Advert> = HashMap::new();
    let mut gatt: Vec<BleDevice> = Vec::new();
    for d in devices {
        match &d.kind {
            Kind::Advert { .. } => {
                adverts.insert(
                    d.address.clone(),
                    Advert {
                        health: Health::new(d.node_id.clone(), bus.offline_after),
                        last_good: now,
                        last: None,
                        pending: None,
                        last_report: None,
                        spec: d,
                    },
                );
            }
            Kind::Gatt { .. } => gatt.push(d),
        }
    }
    let mut backoff = bus.reconnect_min;
    loop {
        let (gatt_tx, handles) = (
            Vec::<(String, mpsc::Sender<CommandRequest>)>::new(),
            Vec::<tokio::task::JoinHandle<()>>::new(),
        );
        let mut gatt_tx = gatt_tx;
        let mut handles = handles;
        let outcome = async {
            let session = bluer::Session::new().await?;
            let adapter = match &bus.adapter {
                Some(n) => session.adapter(n)?,
                None => session.default_adapter().await?,
            };
            let filter = DiscoveryFilter {
                transport: DiscoveryTransport::Le,
                duplicate_data: true,
                ..Default::default()
            };
            if let Err(e) = adapter.set_discovery_filter(filter).await {
                debug!(bus = %bus.name, error = %e, "discovery filter not accepted; scanning without it");
            }
            let events = adapter.discover_devices_with_changes().await?;
            Ok::<_, bluer::Error>((session, adapter, events))
        }
        .await;
        let (_session, adapter, events) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let why = format!("BlueZ: {e}");
                warn!(bus = %bus.name, reason = %why, retry_in = ?backoff, "BLE adapter unavailable");
                for a in adverts.values_mut() {
                    let st = a.health.offline_now(why.clone());
                    send_status(&ctx.events, &bus.name, st, None).await?;
                }
                for d in &gatt {
                    // GATT devices have no task yet: report them here.
                    let st = Health::new(d.node_id.clone(), 1).offline_now(why.clone());
                    send_status(&ctx.events, &bus.name, st, None).await?;
                }
                let until = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        changed = ctx.shutdown.changed() => {
                            if changed.is_err() || *ctx.shutdown.borrow() { return Ok(()); }
                        }
                        Some(req) = ctx.commands.recv() => {
                            let _ = req.reply.send(CommandOutcome::Failed { code: ErrorCode::Offline, message: why.clone() });
                        }
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
                backoff = (backoff * 2).min(bus.reconnect_max);
                continue;
            }
        };
        backoff = bus.reconnect_min;
        info!(bus = %bus.name, adapter = %adapter.name(), "BLE scanning");
        let radio = Arc::new(Semaphore::new(1));
        for d in &gatt {
            let (tx, rx) = mpsc::channel(4);
            gatt_tx.push((d.node_id.clone(), tx));
            handles.push(tokio::spawn(gatt_device(
                bus.clone(),
                adapter.clone(),
                d.clone(),
                radio.clone(),
                ctx.events.clone(),
                rx,
                ctx.shutdown.clone(),
            )));
        }
        let now = Instant::now();
        for a in adverts.values_mut() {
            a.last_good = a.last_good.max(now);
        }
        let mut events = Box::pin(events);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let ended = loop {
            tokio::select! {
                biased;
                changed = ctx.shutdown.changed() => {
                    if changed.is_err() || *ctx.shutdown.borrow() { break None; }
                }
                Some(req) = ctx.commands.recv() => {
                    let child = req.command.child().to_string();
                    match gatt_tx.iter().find(|(n, _)| *n == child) {
                        Some((_, tx)) => {
                            if let Err(mpsc::error::TrySendError::Full(req) | mpsc::error::TrySendError::Closed(req)) = tx.try_send(req) {
                                let _ = req.reply.send(CommandOutcome::Failed { code: ErrorCode::Busy, message: "the device has commands waiting".into() });
                            }
                        }
                        None => {
                            let _ = req.reply.send(CommandOutcome::Failed { code: ErrorCode::Unsupported, message: "advertisement sensors take no commands".into() });
                        }
                    }
                }
                ev = events.next() => match ev {
                    Some(AdapterEvent::DeviceAdded(addr)) => {
                        let key = addr.to_string();
                        let Some(a) = adverts.get_mut(&key) else { continue };
                        let Kind::Advert { format } = a.spec.kind else { continue };
                        let (sd, md, _) = match advert_data(&adapter, addr).await {
                            Ok(x) => x,
                            Err(e) => { debug!(bus = %bus.name, address = %key, error = %e, "cannot read advertisement"); continue; }
                        };
                        match decode(format, &sd, &md) {
                            None => {}
                            Some(Ok(props)) => {
                                let now = Instant::now();
                                a.last_good = now;
                                let st = a.health.success();
                                send_status(&ctx.events, &bus.name, st, None).await?;
                                if a.last.as_ref() != Some(&props) {
                                    // Changed: reported now, or when the rate limit allows
                                    // (the latest values win).
                                    a.pending = Some(props);
                                    flush(a, &ctx).await?;
                                }
                            }
                            Some(Err(e)) => {
                                debug!(bus = %bus.name, device = %a.spec.node_id, error = %e, "advertisement not decoded");
                                let st = a.health.failure(e.to_string());
                                send_status(&ctx.events, &bus.name, st, None).await?;
                            }
                        }
                    }
                    Some(_) => {}
                    None => break Some("BlueZ ended the discovery".to_string()),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    for a in adverts.values_mut() {
                        flush(a, &ctx).await?;
                        if a.health.online() != Some(false) && now >= a.last_good + a.spec.stale_after {
                            let st = a.health.offline_now(format!("no advertisement for {:?}", a.spec.stale_after));
                            send_status(&ctx.events, &bus.name, st, None).await?;
                        }
                    }
                }
            }
        };
        for h in handles.drain(..) {
            h.abort();
        }
        match ended {
            None => break,
            Some(why) => warn!(bus = %bus.name, reason = %why, "BLE scanning stopped; restarting"),
        }
    }
    info!(bus = %bus.name, "BLE bus stopped");
    Ok(())
}

/// One GATT device: connect, subscribe, read on the period, answer commands; reconnect on any
/// failure with backoff.
async fn gatt_device(
    bus: BleBus,
    adapter: Adapter,
    spec: BleDevice,
    radio: Arc<Semaphore>,
    events: Events,
    mut commands: mpsc::Receiver<CommandRequest>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Kind::Gatt {
        chars,
        commands: writes,
    } = &spec.kind
    else {
        return;
    };
    let mut health = Health::new(spec.node_id.clone(), bus.offline_after);
    let mut backoff = bus.reconnect_min;
    // A sensor sending bad values sends them on every read and notification: by episode.
    let mut rejected = Episode::new(Duration::from_secs(60));
    let report = |props: BTreeMap<String, BTreeMap<String, Value>>| {
        let events = events.clone();
        let node = spec.node_id.clone();
        async move {
            // The daemon gone: the session ends with the shutdown that follows.
            let _ = send_reports(&events, &node, named(props), now_ms()).await;
        }
    };
    let status = |st: Option<DeviceStatus>| {
        let events = events.clone();
        let bus = bus.name.clone();
        async move {
            let _ = send_status(&events, &bus, st, None).await;
        }
    };
    loop {
        let session: Result<(), GattError> = async {
            let addr: Address = spec.address.parse().map_err(|e| GattError::Address(format!("{e}")))?;
            let dev = adapter.device(addr).map_err(|e| GattError::Adapter(e.to_string()))?;
            {
                let _turn = radio.acquire().await.map_err(|e| GattError::Adapter(e.to_string()))?;
                match tokio::time::timeout(bus.timeout, dev.connect()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.kind == bluer::ErrorKind::AlreadyConnected => {}
                    Ok(Err(e)) => return Err(GattError::Connect(e.to_string())),
                    Err(_) => return Err(GattError::ConnectTimeout(bus.timeout)),
                }
            }
            // Find the characteristics by UUID (services may take a moment to resolve).
            let mut found: HashMap<String, bluer::gatt::remote::Characteristic> = HashMap::new();
            let deadline = Instant::now() + bus.timeout.max(Duration::from_secs(2));
            loop {
                for s in dev.services().await.map_err(|e| GattError::Services(e.to_string()))? {
                    for c in s.characteristics().await.map_err(|e| GattError::Characteristics(e.to_string()))? {
                        if let Ok(u) = c.uuid().await {
                            found.insert(u.to_string(), c);
                        }
                    }
                }
                let missing = chars.iter().map(|c| &c.uuid).chain(writes.iter().map(|w| &w.uuid)).find(|u| !found.contains_key(*u));
                match missing {
                    None => break,
                    Some(u) if Instant::now() >= deadline => return Err(GattError::Missing(u.clone())),
                    Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            let mut notifies = futures_util::stream::SelectAll::new();
            for c in chars.iter().filter(|c| c.notify) {
                let stream = found[&c.uuid].notify().await.map_err(|e| GattError::Subscribe(c.property.clone(), e.to_string()))?;
                let c2 = c.clone();
                notifies.push(Box::pin(stream.map(move |v| (c2.clone(), v))));
            }
            let polled: Vec<&GattChar> = chars.iter().filter(|c| !c.notify).collect();
            let mut period = tokio::time::interval(spec.poll);
            period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    _ = period.tick(), if !polled.is_empty() => {
                        let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
                        for c in &polled {
                            let raw = tokio::time::timeout(bus.timeout, found[&c.uuid].read()).await
                                .map_err(|_| GattError::ReadTimeout(c.property.clone()))?
                                .map_err(|e| GattError::Read(c.property.clone(), e.to_string()))?;
                            match decode_char(c, &raw) {
                                Ok(v) => { out.entry(c.service.clone()).or_default().insert(c.property.clone(), v); }
                                Err(e) => if let Some(n) = rejected.hit(1, Instant::now()) {
                                    warn!(bus = %bus.name, device = %spec.node_id, error = %e, rejected = n, "characteristic value rejected (count since the last such line; at most one a minute)");
                                },
                            }
                        }
                        status(health.success()).await;
                        backoff = bus.reconnect_min;
                        report(out).await;
                    }
                    Some((c, raw)) = notifies.next() => {
                        match decode_char(&c, &raw) {
                            Ok(v) => {
                                status(health.success()).await;
                                report(BTreeMap::from([(c.service.clone(), BTreeMap::from([(c.property.clone(), v)]))])).await;
                            }
                            Err(e) => if let Some(n) = rejected.hit(1, Instant::now()) {
                                warn!(bus = %bus.name, device = %spec.node_id, error = %e, rejected = n, "notification value rejected (count since the last such line; at most one a minute)");
                            },
                        }
                    }
                    Some(req) = commands.recv() => {
                        let outcome = match &req.command {
                            Command::Invoke { service, name, params, .. } => match writes.iter().find(|w| &w.decl.service == service && &w.decl.name == name) {
                                None => CommandOutcome::Failed { code: ErrorCode::Unsupported, message: format!("command `{service}.{name}` is not declared") },
                                Some(w) => match params.get("value").map(|v| encode_char(w.kind, v)) {
                                    Some(Ok(bytes)) => match tokio::time::timeout(bus.timeout, found[&w.uuid].write(&bytes)).await {
                                        Ok(Ok(())) => CommandOutcome::Done(BTreeMap::new()),
                                        Ok(Err(e)) => CommandOutcome::Failed { code: ErrorCode::DeviceError, message: format!("write: {e}") },
                                        Err(_) => CommandOutcome::Failed { code: ErrorCode::Timeout, message: "write timed out".into() },
                                    },
                                    Some(Err(e)) => CommandOutcome::Failed { code: ErrorCode::BadValue, message: e.to_string() },
                                    None => CommandOutcome::Failed { code: ErrorCode::BadValue, message: "needs `value`".into() },
                                },
                            },
                            _ => CommandOutcome::Failed { code: ErrorCode::Unsupported, message: "BLE devices take declared commands".into() },
                        };
                        let _ = req.reply.send(outcome);
                    }
                }
            }
        }
        .await;
        let why = match session {
            Ok(()) => return,
            Err(why) => why.to_string(),
        };
        status(health.failure(why.clone())).await;
        if let Ok(addr) = spec.address.parse::<Address>() {
            if let Ok(dev) = adapter.device(addr) {
                let _ = dev.disconnect().await;
            }
        }
        debug!(bus = %bus.name, device = %spec.node_id, reason = %why, retry_in = ?backoff, "GATT session ended");
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(req) = commands.recv() => {
                    let _ = req.reply.send(CommandOutcome::Failed { code: ErrorCode::Offline, message: why.clone() });
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        backoff = (backoff * 2).min(bus.reconnect_max);
    }
}

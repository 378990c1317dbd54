//! The Modbus bus task: one per configured bus (a TCP endpoint or an RTU serial port), polling
//! every device on it.
//!
//! Devices are polled one request at a time (a bus is a shared line, and many TCP gateways
//! serialise anyway) on their own fixed-rate schedules. Every request runs under the bus
//! timeout — tokio-modbus has none of its own — and after a timeout or I/O error the
//! connection is dropped and rebuilt, so a late reply can never be taken as the answer to the
//! next request. On RTU that is not enough (the late bytes sit in the port, or are still on
//! the wire), so the port is reopened only after a *settle* window in which everything that
//! arrives is discarded and the line has gone quiet, then flushed; requests keep the 3.5
//! character inter-frame silence plus any per-device turnaround delay. Connecting backs off exponentially; a failing device is polled less often
//! (up to `max_backoff`) so a dead meter does not eat its neighbours' time. Health follows
//! [`fieldgate_driver::Health`]: one status event and one log line per transition.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use fieldgate_driver::{
    now_ms, send_reports, Command, CommandOutcome, CommandRequest, Driver, DriverContext,
    DriverError, DriverFuture, Episode, ErrorCode, Event, Health, Name, Properties, Schedule,
    Value,
};
use fieldgate_port::{Parity, PortSettings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_modbus::client::{Client, Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tracing::{debug, info, warn};

use crate::codec::{decode_registers, encode_registers};
use crate::plan::{plan, ReadBlock};
use crate::point::{CommandSpec, PointSpec, Table};

/// How the bus reaches its devices.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// `host:port` of the Modbus TCP server or gateway.
    Tcp(String),
    /// A serial line (RS-485/RS-232) speaking Modbus RTU.
    Rtu {
        port: PortSettings,
        /// After a failed exchange, bytes arriving within this window are discarded before
        /// the port is reopened (a device's late reply must not answer the next request).
        settle: Duration,
    },
}

impl Transport {
    /// What log lines and `fieldgate status` call it.
    pub fn describe(&self) -> String {
        match self {
            Transport::Tcp(e) => e.clone(),
            Transport::Rtu { port, .. } => format!(
                "{} {}/{}{}{}",
                port.path,
                port.baud,
                port.data_bits,
                match port.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                },
                port.stop_bits
            ),
        }
    }

    /// Silence required between two frames on the line.
    fn frame_gap(&self) -> Duration {
        match self {
            Transport::Tcp(_) => Duration::ZERO,
            Transport::Rtu { port, .. } => port.frame_gap(),
        }
    }
}

/// Transport-level settings of one bus.
#[derive(Debug, Clone)]
pub struct BusSpec {
    pub name: String,
    pub transport: Transport,
    pub timeout: Duration,
    pub offline_after: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Longest a failing device waits between polls.
    pub max_backoff: Duration,
}

/// One child device on the bus.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub node_id: String,
    pub unit: u8,
    pub poll: Duration,
    pub points: Arc<[PointSpec]>,
    pub max_gap: u16,
    /// Commands declared in the profile.
    pub commands: Arc<[CommandSpec]>,
    /// Extra silence before each request to this device (slow RS-485 transceivers).
    pub turnaround: Duration,
}

/// The driver for one Modbus bus (TCP or RTU).
pub struct ModbusDriver {
    bus: BusSpec,
    devices: Vec<DeviceSpec>,
}

impl ModbusDriver {
    pub fn new(bus: BusSpec, devices: Vec<DeviceSpec>) -> Self {
        Self { bus, devices }
    }
}

impl Driver for ModbusDriver {
    fn bus(&self) -> &str {
        &self.bus.name
    }

    fn run(self: Box<Self>, ctx: DriverContext) -> DriverFuture {
        Box::pin(async move { BusTask::new(self.bus, self.devices).run(ctx).await })
    }
}

/// Why one exchange failed, in words an engineer at the cabinet recognises.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// The device answered with a Modbus exception: the link is fine.
    Exception(String),
    /// The link is broken or out of step: drop the connection.
    Link(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Exception(r) | Failure::Link(r) => r,
        }
    }
}

struct DeviceState {
    spec: DeviceSpec,
    blocks: Vec<ReadBlock>,
    schedule: Schedule,
    health: Health,
    /// How a poll's values become reports (worked out once per device).
    layout: Layout,
    /// Points whose last decode failed, to log each once per episode.
    bad_points: BTreeSet<usize>,
    /// Poll overruns, logged by episode (at once, then at most once a minute with the count).
    overruns: Episode,
}

/// How one device's polled values become its reports: each point's name, made once (a report
/// shares it, not copies it), its service, and its place in name order, so a poll's values are
/// put in order without comparing a name and each service's properties are taken as they are.
struct Layout {
    names: Vec<Name>,
    /// The device's services, sorted, each once.
    services: Vec<String>,
    /// Each point's index in `services`.
    service_of: Vec<usize>,
    /// Each point's place in name order.
    rank: Vec<usize>,
    /// Points per service.
    sizes: Vec<usize>,
}

impl Layout {
    fn new(points: &[PointSpec]) -> Self {
        let services: Vec<String> = points
            .iter()
            .map(|p| p.service.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let service_of: Vec<usize> = points
            .iter()
            .map(|p| services.binary_search(&p.service).unwrap_or(0))
            .collect();
        let mut sizes = vec![0; services.len()];
        for &s in &service_of {
            if let Some(n) = sizes.get_mut(s) {
                *n += 1;
            }
        }
        let mut by_name: Vec<usize> = (0..points.len()).collect();
        by_name.sort_by(|a, b| points[*a].property.cmp(&points[*b].property));
        let mut rank = vec![0; points.len()];
        for (r, i) in by_name.into_iter().enumerate() {
            rank[i] = r;
        }
        Layout {
            names: points
                .iter()
                .map(|p| Name::from(p.property.as_str()))
                .collect(),
            services,
            service_of,
            rank,
            sizes,
        }
    }

    /// One poll's values (point index, value), in any order, as reports by service: put in
    /// name order (one pass for the usual profile, already in that order), then split.
    fn reports(&self, mut values: Vec<(usize, Value)>) -> Vec<(String, Properties)> {
        values.sort_unstable_by_key(|(i, _)| self.rank.get(*i).copied().unwrap_or(usize::MAX));
        let mut by_service: Vec<Vec<(Name, Value)>> =
            self.sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
        for (i, v) in values {
            if let (Some(&s), Some(name)) = (self.service_of.get(i), self.names.get(i)) {
                if let Some(list) = by_service.get_mut(s) {
                    list.push((name.clone(), v));
                }
            }
        }
        self.services
            .iter()
            .zip(by_service)
            .filter(|(_, list)| !list.is_empty())
            .map(|(service, list)| (service.clone(), Properties::from_sorted(list)))
            .collect()
    }
}

struct BusTask {
    bus: BusSpec,
    devices: Vec<DeviceState>,
    conn: Option<Context>,
    next_connect: Instant,
    connect_backoff: Duration,
    connect_error: Option<String>,
    /// Bytes received on the RTU line (counted under tokio-modbus's framing).
    rx: Arc<AtomicU64>,
    /// When the last exchange ended: the next frame waits for the inter-frame silence.
    last_io: Instant,
    /// An RTU exchange failed at this instant: settle the line before reopening.
    unsettled: Option<Instant>,
    /// Polls done, polls that failed, poll slots skipped (overruns): the gateway's health
    /// telemetry, sent as `Event::Counters` at most every `COUNTERS_EVERY`.
    activity: Activity,
}

/// How often a bus says what it did.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Activity {
    polls: u64,
    poll_errors: u64,
    overruns: u64,
    sent: Instant,
}

impl BusTask {
    fn new(bus: BusSpec, specs: Vec<DeviceSpec>) -> Self {
        let start = Instant::now();
        let n = specs.len().max(1) as u32;
        let devices = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                // Spread first polls over the first period so devices do not all fire at once.
                let first = start + spec.poll / n * i as u32;
                DeviceState {
                    blocks: plan(&spec.points, spec.max_gap),
                    layout: Layout::new(&spec.points),
                    schedule: Schedule::new(spec.poll, first),
                    health: Health::new(spec.node_id.clone(), bus.offline_after),
                    bad_points: BTreeSet::new(),
                    overruns: Episode::new(Duration::from_secs(60)),
                    spec,
                }
            })
            .collect();
        Self {
            connect_backoff: bus.reconnect_min,
            bus,
            devices,
            conn: None,
            next_connect: start,
            connect_error: None,
            activity: Activity {
                polls: 0,
                poll_errors: 0,
                overruns: 0,
                sent: start,
            },
            rx: Arc::new(AtomicU64::new(0)),
            last_io: start,
            unsettled: None,
        }
    }

    async fn run(mut self, mut ctx: DriverContext) -> Result<(), DriverError> {
        info!(bus = %self.bus.name, endpoint = %self.bus.transport.describe(), devices = self.devices.len(), "modbus bus started");
        if self.devices.is_empty() {
            // Nothing to poll: still answer commands until told to stop.
            return self.idle(ctx).await;
        }
        // Polls wake on the fixed 1 ms grid (see Deadline), not on tokio's millisecond ticks.
        let mut deadline = fieldgate_driver::Deadline::new();
        loop {
            let (idx, due) = self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (i, d.schedule.due()))
                .min_by_key(|&(_, due)| due)
                .unwrap_or((0, Instant::now()));
            tokio::select! {
                biased;
                changed = ctx.shutdown.changed() => {
                    if changed.is_err() || *ctx.shutdown.borrow() {
                        break;
                    }
                }
                Some(req) = ctx.commands.recv() => self.command(req).await,
                _ = deadline.sleep_until(due) => {
                    self.poll(idx, &ctx).await?;
                }
            }
        }
        if let Some(mut c) = self.conn.take() {
            let _ = c.disconnect().await;
        }
        info!(bus = %self.bus.name, "modbus bus stopped");
        Ok(())
    }

    async fn idle(self, mut ctx: DriverContext) -> Result<(), DriverError> {
        loop {
            tokio::select! {
                changed = ctx.shutdown.changed() => {
                    if changed.is_err() || *ctx.shutdown.borrow() { return Ok(()); }
                }
                Some(req) = ctx.commands.recv() => {
                    let _ = req.reply.send(CommandOutcome::Failed { code: ErrorCode::UnknownChild, message: "no devices on this bus".into() });
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<&mut Context, Failure> {
        if self.conn.is_none() {
            let now = Instant::now();
            if now < self.next_connect {
                let why = self
                    .connect_error
                    .clone()
                    .unwrap_or_else(|| "not connected".into());
                return Err(Failure::Link(why));
            }
            let transport = self.bus.transport.clone();
            let rx = self.rx.clone();
            let unsettled = self.unsettled;
            let attempt = async {
                match &transport {
                    Transport::Tcp(endpoint) => {
                        let addr: SocketAddr = match tokio::net::lookup_host(endpoint).await?.next()
                        {
                            Some(a) => a,
                            None => {
                                return Err(std::io::Error::other(
                                    "endpoint resolves to no address",
                                ))
                            }
                        };
                        tokio_modbus::client::tcp::connect(addr).await
                    }
                    Transport::Rtu { port, settle } => {
                        let mut stream = fieldgate_port::open(port)
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        if let Some(failed_at) = unsettled {
                            let dropped =
                                settle_line(&mut stream, failed_at + *settle, port.frame_gap())
                                    .await;
                            if dropped > 0 {
                                debug!(bytes = dropped, "discarded late bytes before reopening");
                            }
                        }
                        stream
                            .clear(ClearBuffer::All)
                            .map_err(std::io::Error::other)?;
                        Ok(tokio_modbus::client::rtu::attach_slave(
                            Tap { inner: stream, rx },
                            Slave(0),
                        ))
                    }
                }
            };
            // Settling may take up to the settle window plus a timeout of its own.
            let limit = match &self.bus.transport {
                Transport::Rtu { settle, .. } => self.bus.timeout + *settle * 2,
                Transport::Tcp(_) => self.bus.timeout,
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(ctx)) => {
                    debug!(bus = %self.bus.name, "connected");
                    self.conn = Some(ctx);
                    self.unsettled = None;
                    self.last_io = Instant::now();
                    self.connect_backoff = self.bus.reconnect_min;
                    self.connect_error = None;
                }
                Ok(Err(e)) => {
                    return Err(self.connect_failed(format!("connect: {}", io_reason(&e))))
                }
                Err(_) => {
                    return Err(self
                        .connect_failed(format!("connect: timeout after {:?}", self.bus.timeout)))
                }
            }
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(Failure::Link("not connected".into())),
        }
    }

    fn connect_failed(&mut self, why: String) -> Failure {
        self.next_connect = Instant::now() + jitter(self.connect_backoff);
        self.connect_backoff = (self.connect_backoff * 2).min(self.bus.reconnect_max);
        if self.connect_error.as_deref() != Some(why.as_str()) {
            warn!(bus = %self.bus.name, endpoint = %self.bus.transport.describe(), reason = %why, "modbus connection failed");
        }
        self.connect_error = Some(why.clone());
        Failure::Link(why)
    }

    /// Wait for the inter-frame silence (and the device's turnaround) since the last exchange.
    fn quiet(&self, turnaround: Duration) -> tokio::time::Sleep {
        let gap = self.bus.transport.frame_gap().max(turnaround);
        tokio::time::sleep_until((self.last_io + gap).into())
    }

    /// The link is broken or out of step: drop it; an RTU line settles before reopening.
    fn link_failed(&mut self) {
        self.conn = None;
        if matches!(self.bus.transport, Transport::Rtu { .. }) {
            self.unsettled = Some(Instant::now());
        }
    }

    /// Why an exchange timed out: silence, or bytes that never made a valid frame.
    fn timeout_reason(&self, rx_before: u64) -> String {
        let got = self.rx.load(Ordering::Relaxed).saturating_sub(rx_before);
        if got > 0 {
            format!(
                "no valid reply within {:?}: {got} bytes with bad CRC or framing",
                self.bus.timeout
            )
        } else {
            format!("timeout after {:?}", self.bus.timeout)
        }
    }

    /// Read one block from one unit under the bus timeout.
    async fn read(
        &mut self,
        unit: u8,
        turnaround: Duration,
        b: &ReadBlock,
    ) -> Result<Raw, Failure> {
        let timeout = self.bus.timeout;
        self.connect().await?;
        self.quiet(turnaround).await;
        let rx_before = self.rx.load(Ordering::Relaxed);
        let conn = self.connect().await?;
        conn.set_slave(Slave(unit));
        let res = match b.table {
            Table::Coil => tokio::time::timeout(timeout, conn.read_coils(b.start, b.count))
                .await
                .map(|r| r.map(|r| r.map(Raw::Bits))),
            Table::Discrete => {
                tokio::time::timeout(timeout, conn.read_discrete_inputs(b.start, b.count))
                    .await
                    .map(|r| r.map(|r| r.map(Raw::Bits)))
            }
            Table::Input => {
                tokio::time::timeout(timeout, conn.read_input_registers(b.start, b.count))
                    .await
                    .map(|r| r.map(|r| r.map(Raw::Words)))
            }
            Table::Holding => {
                tokio::time::timeout(timeout, conn.read_holding_registers(b.start, b.count))
                    .await
                    .map(|r| r.map(|r| r.map(Raw::Words)))
            }
        };
        self.last_io = Instant::now();
        let failure = match res {
            Ok(Ok(Ok(raw))) => {
                let n = raw.len();
                let want = usize::from(b.count);
                // Bits come padded to whole bytes; registers must match exactly.
                let fits = match raw {
                    Raw::Bits(_) => n >= want,
                    Raw::Words(_) => n == want,
                };
                if fits {
                    return Ok(raw);
                }
                Failure::Link(format!("wrong item count in response: {n}, asked {want}"))
            }
            Ok(Ok(Err(exc))) => {
                return Err(Failure::Exception(format!(
                    "exception {} ({:#04x})",
                    exc_name(exc),
                    u8::from(exc)
                )))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => Failure::Link(io_reason(&e)),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Failure::Link(format!("protocol: {e}")),
            Err(_) => Failure::Link(self.timeout_reason(rx_before)),
        };
        // Out of step or broken: a late reply must never be read as the next answer.
        self.link_failed();
        Err(failure)
    }

    async fn poll(&mut self, idx: usize, ctx: &DriverContext) -> Result<(), DriverError> {
        let started = now_ms();
        let unit = self.devices[idx].spec.unit;
        let turnaround = self.devices[idx].spec.turnaround;
        // Lent out for the poll (no copy per poll) and put back before anything can return.
        let blocks = std::mem::take(&mut self.devices[idx].blocks);
        let mut values: Vec<(usize, Value)> =
            Vec::with_capacity(self.devices[idx].spec.points.len());
        let mut failure = None;
        for b in &blocks {
            match self.read(unit, turnaround, b).await {
                Ok(raw) => self.decode_block(idx, b, &raw, &mut values),
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
        }
        self.devices[idx].blocks = blocks;

        let bus = self.bus.name.clone();
        let max_backoff = self.bus.max_backoff;
        let dev = &mut self.devices[idx];
        let transition = match &failure {
            None => dev.health.success(),
            Some(f) => dev.health.failure(f.reason()),
        };
        // The status first: a child that comes back is ONLINE before its first new value.
        if let Some(st) = transition {
            if st.online {
                info!(bus = %bus, device = %st.child, unit, "device ONLINE");
            } else {
                warn!(bus = %bus, device = %st.child, unit, reason = %st.reason, failures = dev.health.streak(), "device OFFLINE");
            }
            ctx.events.send(Event::Status(st)).await?;
        }
        if failure.is_none() {
            let by_service = dev.layout.reports(values);
            send_reports(&ctx.events, &dev.spec.node_id, by_service, started).await?;
        }

        let now = Instant::now();
        let missed = dev.schedule.advance(now);
        self.activity.polls += 1;
        self.activity.poll_errors += u64::from(failure.is_some());
        self.activity.overruns += missed;
        if now.duration_since(self.activity.sent) >= COUNTERS_EVERY {
            self.activity.sent = now;
            // Never waits: a full channel only delays the figures to the next time.
            let _ = ctx.events.try_send(Event::Counters {
                bus: bus.clone(),
                counters: BTreeMap::from([
                    ("polls".to_string(), self.activity.polls),
                    ("poll_errors".to_string(), self.activity.poll_errors),
                    ("overruns".to_string(), self.activity.overruns),
                ]),
            });
        }
        let dev = &mut self.devices[idx];
        if missed > 0 {
            if let Some(count) = dev.overruns.hit(missed, now) {
                warn!(bus = %bus, device = %dev.spec.node_id, missed = count, total = dev.schedule.overruns(), period = ?dev.schedule.period(), "poll overrun: slots skipped (count since the last such line; at most one a minute while it lasts)");
            }
        }
        if dev.health.online() == Some(false) {
            // Poll a dead device less often: period × 2^(failures past the threshold), capped.
            let extra = dev
                .health
                .streak()
                .saturating_sub(self.bus.offline_after)
                .min(16);
            let wait = (dev.schedule.period() * 2u32.saturating_pow(extra))
                .min(max_backoff.max(dev.schedule.period()));
            dev.schedule.defer_until(now + wait);
        }
        Ok(())
    }

    fn decode_block(
        &mut self,
        idx: usize,
        b: &ReadBlock,
        raw: &Raw,
        out: &mut Vec<(usize, Value)>,
    ) {
        let dev = &mut self.devices[idx];
        for &pi in &b.points {
            let p = &dev.spec.points[pi];
            let off = usize::from(p.address - b.start);
            let decoded = match raw {
                Raw::Bits(bits) => bits.get(off).map(|&v| Ok(Value::Bool(v))),
                Raw::Words(w) => w
                    .get(off..off + usize::from(p.width()))
                    .map(|regs| decode_registers(p, regs)),
            };
            match decoded {
                Some(Ok(v)) => {
                    if dev.bad_points.remove(&pi) {
                        info!(bus = %self.bus.name, device = %dev.spec.node_id, point = %p.property, "point decodes again");
                    }
                    out.push((pi, v));
                }
                Some(Err(e)) => {
                    if dev.bad_points.insert(pi) {
                        warn!(bus = %self.bus.name, device = %dev.spec.node_id, point = %p.property, error = %e, "point value rejected; left out of reports");
                    }
                }
                None => {
                    if dev.bad_points.insert(pi) {
                        warn!(bus = %self.bus.name, device = %dev.spec.node_id, point = %p.property, "response too short for point");
                    }
                }
            }
        }
    }

    async fn command(&mut self, req: CommandRequest) {
        let outcome =
            match tokio::time::timeout_at(req.deadline.into(), self.execute(&req.command)).await {
                Ok(o) => o,
                Err(_) => CommandOutcome::Failed {
                    code: ErrorCode::Timeout,
                    message: "the device did not answer before the command deadline".into(),
                },
            };
        if req.reply.send(outcome).is_err() {
            warn!(bus = %self.bus.name, "command answer arrived after its deadline; dropped");
        }
    }

    async fn execute(&mut self, cmd: &Command) -> CommandOutcome {
        let Some(idx) = self
            .devices
            .iter()
            .position(|d| d.spec.node_id == cmd.child())
        else {
            return fail(
                ErrorCode::UnknownChild,
                format!("no device `{}` on bus `{}`", cmd.child(), self.bus.name),
            );
        };
        if self.devices[idx].health.online() == Some(false) {
            return fail(
                ErrorCode::Offline,
                format!("device is OFFLINE: {}", self.devices[idx].health.reason()),
            );
        }
        match cmd {
            Command::SetProperties {
                service,
                properties,
                ..
            } => {
                for (name, v) in properties {
                    if let Err(o) = self.write_point(idx, service, name, v).await {
                        return o;
                    }
                }
                self.read_service(idx, service, properties.keys().cloned().collect())
                    .await
            }
            Command::GetProperties { service, .. } => {
                let names = self.devices[idx]
                    .spec
                    .points
                    .iter()
                    .filter(|p| service.as_ref().is_none_or(|s| &p.service == s))
                    .map(|p| p.property.clone())
                    .collect::<BTreeSet<_>>();
                let svc = service.clone().unwrap_or_default();
                self.read_service(idx, &svc, names).await
            }
            Command::Invoke {
                service,
                name,
                params,
                ..
            } => {
                let spec = &self.devices[idx].spec;
                let Some(c) = spec
                    .commands
                    .iter()
                    .find(|c| &c.service == service && &c.name == name)
                    .cloned()
                else {
                    return fail(
                        ErrorCode::Unsupported,
                        format!("command `{service}.{name}` is not declared for this device"),
                    );
                };
                let Some(p) = spec.points.get(c.point).cloned() else {
                    return fail(
                        ErrorCode::UnknownPoint,
                        format!("command `{name}` names no point"),
                    );
                };
                let Some(v) = c.value.clone().or_else(|| params.get("value").cloned()) else {
                    return fail(
                        ErrorCode::BadValue,
                        format!("command `{name}` needs `paras.value`"),
                    );
                };
                if let Err(o) = self.write(idx, &p, &v).await {
                    return o;
                }
                self.read_service(idx, &p.service, BTreeSet::from([p.property.clone()]))
                    .await
            }
        }
    }

    async fn write_point(
        &mut self,
        idx: usize,
        service: &str,
        name: &str,
        v: &Value,
    ) -> Result<(), CommandOutcome> {
        let Some(p) = self.devices[idx]
            .spec
            .points
            .iter()
            .find(|p| p.service == service && p.property == name)
            .cloned()
        else {
            return Err(fail(
                ErrorCode::UnknownPoint,
                format!("no point `{service}.{name}`"),
            ));
        };
        if !p.writable {
            return Err(fail(
                ErrorCode::NotWritable,
                format!("point `{service}.{name}` is read-only"),
            ));
        }
        self.write(idx, &p, v).await
    }

    /// Write one point (already checked: writable, or the target of a declared command).
    async fn write(&mut self, idx: usize, p: &PointSpec, v: &Value) -> Result<(), CommandOutcome> {
        let unit = self.devices[idx].spec.unit;
        let name = &p.property;
        let timeout = self.bus.timeout;
        self.connect()
            .await
            .map_err(|f| fail(ErrorCode::DeviceError, f.reason().to_string()))?;
        self.quiet(self.devices[idx].spec.turnaround).await;
        let rx_before = self.rx.load(Ordering::Relaxed);
        let conn = self
            .connect()
            .await
            .map_err(|f| fail(ErrorCode::DeviceError, f.reason().to_string()))?;
        conn.set_slave(Slave(unit));
        let res = match (p.table, v) {
            (Table::Coil, Value::Bool(b)) => {
                tokio::time::timeout(timeout, conn.write_single_coil(p.address, *b)).await
            }
            (Table::Holding, _) => {
                let words =
                    encode_registers(p, v).map_err(|e| fail(ErrorCode::BadValue, e.to_string()))?;
                if words.len() == 1 {
                    tokio::time::timeout(timeout, conn.write_single_register(p.address, words[0]))
                        .await
                } else {
                    tokio::time::timeout(timeout, conn.write_multiple_registers(p.address, &words))
                        .await
                }
            }
            _ => {
                return Err(fail(
                    ErrorCode::BadValue,
                    format!("value {v:?} does not fit point `{name}`"),
                ))
            }
        };
        self.last_io = Instant::now();
        match res {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(exc))) => Err(fail(
                ErrorCode::DeviceError,
                format!("exception {}", exc_name(exc)),
            )),
            Ok(Err(e)) => {
                self.link_failed();
                Err(fail(ErrorCode::DeviceError, e.to_string()))
            }
            Err(_) => {
                let why = self.timeout_reason(rx_before);
                self.link_failed();
                Err(fail(ErrorCode::Timeout, format!("write: {why}")))
            }
        }
    }

    /// Read the named points of one service now (for read-back and property get).
    async fn read_service(
        &mut self,
        idx: usize,
        service: &str,
        names: BTreeSet<String>,
    ) -> CommandOutcome {
        let spec = &self.devices[idx].spec;
        let wanted: Vec<PointSpec> = spec
            .points
            .iter()
            .filter(|p| (service.is_empty() || p.service == service) && names.contains(&p.property))
            .cloned()
            .collect();
        let unit = spec.unit;
        let turnaround = spec.turnaround;
        let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        for b in plan(&wanted, spec.max_gap) {
            let raw = match self.read(unit, turnaround, &b).await {
                Ok(r) => r,
                Err(f) => return fail(ErrorCode::DeviceError, f.reason().to_string()),
            };
            for &pi in &b.points {
                let p = &wanted[pi];
                let off = usize::from(p.address - b.start);
                let v = match &raw {
                    Raw::Bits(bits) => bits.get(off).map(|&v| Ok(Value::Bool(v))),
                    Raw::Words(w) => w
                        .get(off..off + usize::from(p.width()))
                        .map(|r| decode_registers(p, r)),
                };
                if let Some(Ok(v)) = v {
                    out.entry(p.service.clone())
                        .or_default()
                        .insert(p.property.clone(), v);
                }
            }
        }
        CommandOutcome::Done(out)
    }
}

/// Read and discard whatever arrives until `until`, and after that until the line has been
/// silent for a frame gap (bounded, so a babbling line cannot hold the bus forever).
async fn settle_line(stream: &mut SerialStream, until: Instant, gap: Duration) -> usize {
    let mut dropped = 0;
    let mut buf = [0u8; 256];
    let quiet = gap.max(Duration::from_millis(5));
    let hard_stop = until.max(Instant::now()) + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        let wait_until = if now < until { until } else { now + quiet };
        if now >= hard_stop {
            return dropped;
        }
        match tokio::time::timeout_at(wait_until.min(hard_stop).into(), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return dropped,
            Ok(Ok(n)) => dropped += n,
            Err(_) if Instant::now() >= until => return dropped,
            Err(_) => {}
        }
    }
}

/// Counts the bytes tokio-modbus reads, so a timeout can say whether anything (garbled)
/// arrived: its RTU codec skips bytes with a bad CRC silently.
struct Tap<T> {
    inner: T,
    rx: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.rx.fetch_add(got as u64, Ordering::Relaxed);
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn fail(code: ErrorCode, message: String) -> CommandOutcome {
    CommandOutcome::Failed { code, message }
}

enum Raw {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

impl Raw {
    fn len(&self) -> usize {
        match self {
            Raw::Bits(b) => b.len(),
            Raw::Words(w) => w.len(),
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        BrokenPipe | UnexpectedEof => "connection closed by peer".into(),
        TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

fn exc_name(e: tokio_modbus::ExceptionCode) -> String {
    use tokio_modbus::ExceptionCode::*;
    match e {
        IllegalFunction => "illegal function".into(),
        IllegalDataAddress => "illegal data address".into(),
        IllegalDataValue => "illegal data value".into(),
        ServerDeviceFailure => "server device failure".into(),
        Acknowledge => "acknowledge".into(),
        ServerDeviceBusy => "server device busy".into(),
        MemoryParityError => "memory parity error".into(),
        GatewayPathUnavailable => "gateway path unavailable".into(),
        GatewayTargetDevice => "gateway target device failed to respond".into(),
        Custom(c) => format!("custom {c}"),
    }
}

/// ±20 % jitter so a fleet of gateways does not reconnect in lock-step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::DataType;

    fn point(service: &str, prop: &str, address: u16) -> PointSpec {
        PointSpec::new(service, prop, Table::Holding, address, DataType::U16)
    }

    #[test]
    fn a_poll_becomes_one_sorted_report_per_service_with_shared_names() {
        // Points in address order, names not in name order, two services.
        let points = [
            point("b", "zeta", 0),
            point("a", "mid", 1),
            point("b", "alpha", 2),
            point("a", "first", 3),
        ];
        let layout = Layout::new(&points);
        // Values as a poll collects them: block order, a point that failed to decode missing.
        let values = vec![
            (0, Value::UInt(10)),
            (1, Value::UInt(11)),
            (3, Value::UInt(13)),
        ];
        let reports = layout.reports(values);
        let got: Vec<(String, Vec<(String, Value)>)> = reports
            .iter()
            .map(|(s, p)| {
                let props = p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                (s.clone(), props)
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "a".to_string(),
                    vec![
                        ("first".to_string(), Value::UInt(13)),
                        ("mid".to_string(), Value::UInt(11))
                    ]
                ),
                ("b".to_string(), vec![("zeta".to_string(), Value::UInt(10))]),
            ]
        );
        // The same names again on the next poll: shared, not made anew.
        let again = layout.reports(vec![(0, Value::UInt(1))]);
        let first = reports[1].1.keys().next().cloned();
        let second = again[0].1.keys().next().cloned();
        assert!(matches!((first, second), (Some(x), Some(y)) if Arc::ptr_eq(&x, &y)));
    }
}

//! The serial-instrument bus task: ASCII devices on one RS-232/RS-485 port.
//!
//! A device either is *asked* (request/response: its request string is sent on its poll
//! schedule and the next frame — matching its pattern, if it has one — is the answer, within
//! the bus timeout) or *listened to* (stream: frames arrive unprompted, each device takes the
//! frames its pattern matches and reports at most once per poll period). Frames are cut by
//! [`crate::frame::Framer`] and parsed by [`crate::parse`]; junk, bad checksums and frames
//! nobody claims are counted and logged once per minute, never fatal. Health follows the same
//! rule as every driver: OFFLINE after `offline_after` failed exchanges or bad frames, or at
//! once for a stream device silent past `stale_after`. Commands fill a declared template with
//! parameters the daemon has already checked, send it, and wait for the expected reply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate_driver::{
    named, now_ms, send_reports, send_status, Command, CommandOutcome, CommandRequest,
    DeclaredCommand, Driver, DriverContext, DriverError, DriverFuture, ErrorCode, Health, Schedule,
    SkipCounters, Value,
};
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tracing::{debug, info, warn};

use crate::frame::{Framer, Framing, Junk};
use crate::parse::{parse_frame, Checksum, Extract, FieldSpec, FrameError};
use fieldgate_port::PortSettings;

/// A serial-instrument bus: the port and how frames are cut.
#[derive(Debug, Clone)]
pub struct AsciiBus {
    pub name: String,
    pub port: PortSettings,
    pub framing: Framing,
    /// Longest frame kept; longer ones are dropped and counted.
    pub max_frame: usize,
    /// How long a request waits for its answer.
    pub timeout: Duration,
    pub offline_after: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// A device model: how to ask it (or not), what its frames look like, what it can be told.
#[derive(Debug, Clone)]
pub struct Instrument {
    /// Request/response when set: sent on every poll.
    pub request: Option<Vec<u8>>,
    /// Frames this device owns (stream), or that a valid answer must match (request).
    pub matcher: Option<Regex>,
    pub checksum: Option<Checksum>,
    pub extract: Extract,
    pub fields: Vec<FieldSpec>,
    /// Stream devices: OFFLINE after this long without a valid frame.
    pub stale_after: Duration,
    pub commands: Vec<TemplateCommand>,
}

/// A declared command: the template sent (with `{param}` placeholders) and the reply awaited.
#[derive(Debug, Clone)]
pub struct TemplateCommand {
    pub decl: DeclaredCommand,
    pub template: String,
    /// When set, the command succeeds only on a frame matching this within the timeout.
    pub expect: Option<Regex>,
}

impl TemplateCommand {
    /// Fill the template; values were checked against the declaration by the daemon. A value
    /// that would carry one of the bus's `delimiters` (its terminator, start or end bytes) is
    /// refused: it would cut the command short and put a second one on the wire.
    pub fn render(
        &self,
        params: &BTreeMap<String, Value>,
        delimiters: &[u8],
    ) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.template.len() + 16);
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..close];
            let v = params
                .get(name)
                .ok_or_else(|| TemplateError::NoValue(name.to_string()))?;
            let text = match v {
                Value::Bool(b) => u8::from(*b).to_string(),
                Value::Int(i) => i.to_string(),
                Value::UInt(u) => u.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Text(s) => s.clone(),
            };
            if let Some(b) = text.bytes().find(|b| delimiters.contains(b)) {
                return Err(TemplateError::FramingByte {
                    name: name.to_string(),
                    byte: char::from(b),
                });
            }
            out.push_str(&text);
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Why a command template could not be filled; one variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in template")]
    Unclosed,
    #[error("no value for `{{{0}}}`")]
    NoValue(String),
    #[error("`{name}` contains {byte:?}, a framing byte of this bus: refused, it would end the command early")]
    FramingByte { name: String, byte: char },
}

/// Why one request and its answer failed on the line; the text becomes the device's
/// OFFLINE reason or the command's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The port is not open (why it could not be opened, when known).
    #[error("{0}")]
    NotOpen(String),
    #[error("write: {0}")]
    Write(String),
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("port closed")]
    Closed,
    #[error("read: {0}")]
    Read(String),
    #[error("incomplete reply ({0} bytes, no end of frame) within {1:?}")]
    Incomplete(usize, Duration),
    #[error("timeout after {0:?}")]
    Timeout(Duration),
}

/// Placeholder names in a template, for the config checker.
pub fn placeholders(template: &str) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(TemplateError::Unclosed)?;
        out.push(after[..close].to_string());
        rest = &after[close + 1..];
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct AsciiDevice {
    pub node_id: String,
    /// Request devices: poll period. Stream devices: at most one report per period.
    pub poll: Duration,
    pub instrument: Arc<Instrument>,
}

pub struct SerialAsciiDriver {
    bus: AsciiBus,
    devices: Vec<AsciiDevice>,
}

impl SerialAsciiDriver {
    pub fn new(bus: AsciiBus, devices: Vec<AsciiDevice>) -> Self {
        Self { bus, devices }
    }
}

impl Driver for SerialAsciiDriver {
    fn bus(&self) -> &str {
        &self.bus.name
    }

    fn run(self: Box<Self>, ctx: DriverContext) -> DriverFuture {
        Box::pin(async move { Task::new(self.bus, self.devices).run(ctx).await })
    }
}

/// What the line threw away, logged at most once a minute.
#[derive(Debug, Default)]
struct Counters {
    garbage_bytes: u64,
    overlong: u64,
    bad_frames: u64,
    unclaimed: u64,
    logged: u64,
    last_log: Option<Instant>,
}

impl Counters {
    fn total(&self) -> u64 {
        self.garbage_bytes + self.overlong + self.bad_frames + self.unclaimed
    }
}

struct Dev {
    spec: AsciiDevice,
    health: Health,
    schedule: Schedule,
    /// Stream devices: last valid frame, and last report.
    last_good: Instant,
    last_report: Option<Instant>,
}

impl Dev {
    fn streams(&self) -> bool {
        self.spec.instrument.request.is_none()
    }
}

struct Task {
    bus: AsciiBus,
    devices: Vec<Dev>,
    port: Option<SerialStream>,
    framer: Framer,
    next_open: Instant,
    backoff: Duration,
    open_error: Option<String>,
    counters: Counters,
    /// What `fieldgate status` was last told, and when.
    counters_sent: SkipCounters,
}

impl Task {
    fn new(bus: AsciiBus, specs: Vec<AsciiDevice>) -> Self {
        let now = Instant::now();
        let n = specs.len().max(1) as u32;
        let devices = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Dev {
                health: Health::new(spec.node_id.clone(), bus.offline_after),
                schedule: Schedule::new(spec.poll, now + spec.poll / n * i as u32),
                last_good: now,
                last_report: None,
                spec,
            })
            .collect();
        Task {
            framer: Framer::new(bus.framing.clone(), bus.max_frame),
            backoff: bus.reconnect_min,
            bus,
            devices,
            port: None,
            next_open: now,
            open_error: None,
            counters: Counters::default(),
            counters_sent: SkipCounters::default(),
        }
    }

    async fn run(mut self, mut ctx: DriverContext) -> Result<(), DriverError> {
        info!(bus = %self.bus.name, port = %self.bus.port.path, devices = self.devices.len(), "serial instrument bus started");
        let mut buf = [0u8; 512];
        // Requests go out on the fixed 1 ms grid (see Deadline), not on tokio's millisecond ticks.
        let mut deadline = fieldgate_driver::Deadline::new();
        loop {
            self.send_counters(&ctx);
            if self.port.is_none() && Instant::now() >= self.next_open {
                self.open(&ctx).await?;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let (poll_idx, poll_due) = self
                .devices
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.streams())
                .map(|(i, d)| (i, d.schedule.due()))
                .min_by_key(|&(_, t)| t)
                .unwrap_or((0, far));
            let stale_due = self
                .devices
                .iter()
                .filter(|d| d.streams() && d.health.online() != Some(false))
                .map(|d| d.last_good + d.spec.instrument.stale_after)
                .min()
                .unwrap_or(far);
            let wake = if self.port.is_none() {
                self.next_open
            } else {
                poll_due.min(stale_due)
            };
            let wake = self.counters_due().map_or(wake, |d| wake.min(d));
            let read = async {
                match self.port.as_mut() {
                    Some(p) => p.read(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = ctx.shutdown.changed() => {
                    if changed.is_err() || *ctx.shutdown.borrow() {
                        break;
                    }
                }
                Some(req) = ctx.commands.recv() => self.command(req, &ctx).await?,
                r = read => match r {
                    Ok(n) if n > 0 => {
                        let bytes = buf[..n].to_vec();
                        self.on_bytes(&bytes, &ctx).await?;
                    }
                    Ok(_) => self.lost("port closed", &ctx).await?,
                    Err(e) => self.lost(&format!("read: {e}"), &ctx).await?,
                },
                _ = deadline.sleep_until(wake) => {
                    if self.port.is_some() {
                        if Instant::now() >= poll_due {
                            self.poll(poll_idx, &ctx).await?;
                        }
                        self.stale(&ctx).await?;
                    }
                }
            }
        }
        info!(bus = %self.bus.name, "serial instrument bus stopped");
        Ok(())
    }

    async fn open(&mut self, ctx: &DriverContext) -> Result<(), DriverError> {
        match fieldgate_port::open(&self.bus.port) {
            Ok(p) => {
                let _ = p.clear(ClearBuffer::All);
                info!(bus = %self.bus.name, port = %self.bus.port.path, "serial port open");
                self.port = Some(p);
                self.framer.reset();
                self.backoff = self.bus.reconnect_min;
                self.open_error = None;
                let now = Instant::now();
                for d in &mut self.devices {
                    d.last_good = now;
                }
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.lost(&why, ctx).await
            }
        }
    }

    /// The port failed (or would not open): every device fails; retry with backoff.
    async fn lost(&mut self, why: &str, ctx: &DriverContext) -> Result<(), DriverError> {
        self.port = None;
        self.next_open = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.bus.reconnect_max);
        if self.open_error.as_deref() != Some(why) {
            warn!(bus = %self.bus.name, port = %self.bus.port.path, reason = %why, "serial port unavailable");
            self.open_error = Some(why.to_string());
        }
        for i in 0..self.devices.len() {
            let st = self.devices[i].health.offline_now(why);
            self.status(i, st, ctx).await?;
        }
        Ok(())
    }

    async fn status(
        &mut self,
        idx: usize,
        st: Option<fieldgate_driver::DeviceStatus>,
        ctx: &DriverContext,
    ) -> Result<(), DriverError> {
        let failures = Some(self.devices[idx].health.streak());
        send_status(&ctx.events, &self.bus.name, st, failures).await
    }

    fn junk(&mut self, j: Junk) {
        match j {
            Junk::Garbage(n) => self.counters.garbage_bytes += n as u64,
            Junk::Overlong(_) => self.counters.overlong += 1,
        }
        self.log_counters();
    }

    /// When the changed totals may next go to `fieldgate status` (about once a second).
    fn counters_due(&self) -> Option<Instant> {
        self.counters_sent.due(self.counters.total())
    }

    /// Tell the daemon the totals (never blocking: a missed update is followed by the next).
    fn send_counters(&mut self, ctx: &DriverContext) {
        let c = &self.counters;
        let counters = || {
            BTreeMap::from([
                ("garbage_bytes".to_string(), c.garbage_bytes),
                ("overlong_frames".to_string(), c.overlong),
                ("bad_frames".to_string(), c.bad_frames),
                ("unclaimed_frames".to_string(), c.unclaimed),
            ])
        };
        self.counters_sent
            .send(&ctx.events, &self.bus.name, c.total(), counters);
    }

    /// One line per minute at most, with the running totals.
    fn log_counters(&mut self) {
        let c = &mut self.counters;
        if c.total() == c.logged {
            return;
        }
        if c.last_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        c.last_log = Some(Instant::now());
        c.logged = c.total();
        warn!(bus = %self.bus.name, garbage_bytes = c.garbage_bytes, overlong_frames = c.overlong, bad_frames = c.bad_frames, unclaimed_frames = c.unclaimed, "skipped bytes and frames on the line (totals)");
    }

    /// Unprompted bytes: cut frames and hand them to the stream devices that claim them.
    async fn on_bytes(&mut self, bytes: &[u8], ctx: &DriverContext) -> Result<(), DriverError> {
        let mut out = Vec::new();
        self.framer.push(bytes, &mut out);
        for item in out {
            match item {
                Ok(frame) => self.dispatch(&frame, ctx).await?,
                Err(j) => self.junk(j),
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, frame: &[u8], ctx: &DriverContext) -> Result<(), DriverError> {
        let text = String::from_utf8_lossy(frame);
        let mut claimed = false;
        for i in 0..self.devices.len() {
            let d = &self.devices[i];
            if !d.streams()
                || d.spec
                    .instrument
                    .matcher
                    .as_ref()
                    .is_some_and(|m| !m.is_match(&text))
            {
                continue;
            }
            claimed = true;
            let ins = d.spec.instrument.clone();
            match parse_frame(frame, ins.checksum, &ins.extract, &ins.fields) {
                Ok(values) => {
                    let now = Instant::now();
                    let d = &mut self.devices[i];
                    d.last_good = now;
                    let st = d.health.success();
                    let due = d.last_report.is_none_or(|t| now >= t + d.spec.poll);
                    self.status(i, st, ctx).await?;
                    if due {
                        self.devices[i].last_report = Some(now);
                        self.report(i, values, ctx).await?;
                    }
                }
                Err(e) => {
                    self.counters.bad_frames += 1;
                    debug!(bus = %self.bus.name, device = %self.devices[i].spec.node_id, error = %e, frame = %text, "bad frame");
                    let st = self.devices[i].health.failure(e.to_string());
                    self.status(i, st, ctx).await?;
                }
            }
        }
        if !claimed {
            self.counters.unclaimed += 1;
        }
        self.log_counters();
        Ok(())
    }

    async fn report(
        &mut self,
        idx: usize,
        values: BTreeMap<String, BTreeMap<String, Value>>,
        ctx: &DriverContext,
    ) -> Result<(), DriverError> {
        send_reports(
            &ctx.events,
            &self.devices[idx].spec.node_id,
            named(values),
            now_ms(),
        )
        .await
    }

    /// Stream devices silent past their staleness timeout go OFFLINE.
    async fn stale(&mut self, ctx: &DriverContext) -> Result<(), DriverError> {
        let now = Instant::now();
        for i in 0..self.devices.len() {
            let d = &mut self.devices[i];
            let limit = d.spec.instrument.stale_after;
            if d.streams() && d.health.online() != Some(false) && now >= d.last_good + limit {
                let st = d
                    .health
                    .offline_now(format!("no valid frame for {limit:?}"));
                self.status(i, st, ctx).await?;
            }
        }
        Ok(())
    }

    /// Send `out` and wait for the first frame that `want` accepts. Frames that arrive
    /// meanwhile but are not the answer go to the stream devices.
    async fn exchange(
        &mut self,
        out: &[u8],
        want: Option<&Regex>,
        ctx: &DriverContext,
    ) -> Result<Vec<u8>, ExchangeError> {
        let timeout = self.bus.timeout;
        let Some(port) = self.port.as_mut() else {
            return Err(ExchangeError::NotOpen(
                self.open_error
                    .clone()
                    .unwrap_or_else(|| "port not open".into()),
            ));
        };
        // Whatever is waiting now cannot be the answer to what we are about to send.
        let _ = port.clear(ClearBuffer::Input);
        self.framer.reset();
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline.into(), port.write_all(out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ExchangeError::Write(e.to_string())),
            Err(_) => return Err(ExchangeError::WriteTimeout(timeout)),
        }
        let mut buf = [0u8; 512];
        let mut others = Vec::new();
        let result = loop {
            let Some(port) = self.port.as_mut() else {
                break Err(ExchangeError::NotOpen("port not open".into()));
            };
            let n = match tokio::time::timeout_at(deadline.into(), port.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                Ok(Ok(_)) => break Err(ExchangeError::Closed),
                Ok(Err(e)) => break Err(ExchangeError::Read(e.to_string())),
                Err(_) => {
                    let partial = self.framer.pending();
                    break Err(if partial > 0 {
                        ExchangeError::Incomplete(partial, timeout)
                    } else {
                        ExchangeError::Timeout(timeout)
                    });
                }
            };
            let mut frames = Vec::new();
            self.framer.push(&buf[..n], &mut frames);
            let mut answer = None;
            for f in frames {
                match f {
                    Ok(frame) if answer.is_none() => {
                        let text = String::from_utf8_lossy(&frame);
                        if want.is_none_or(|re| re.is_match(&text)) {
                            answer = Some(frame);
                        } else {
                            others.push(frame);
                        }
                    }
                    Ok(frame) => others.push(frame),
                    Err(j) => self.junk(j),
                }
            }
            if let Some(a) = answer {
                break Ok(a);
            }
        };
        for f in others {
            let _ = self.dispatch(&f, ctx).await;
        }
        result
    }

    async fn poll(&mut self, idx: usize, ctx: &DriverContext) -> Result<(), DriverError> {
        let ins = self.devices[idx].spec.instrument.clone();
        let Some(request) = ins.request.clone() else {
            return Ok(());
        };
        let started = now_ms();
        let outcome = match self.exchange(&request, ins.matcher.as_ref(), ctx).await {
            Ok(frame) => {
                parse_frame(&frame, ins.checksum, &ins.extract, &ins.fields).map_err(|e| {
                    self.counters.bad_frames += 1;
                    describe(&e, &frame)
                })
            }
            Err(e) => Err(e.to_string()),
        };
        let st = match &outcome {
            Ok(_) => self.devices[idx].health.success(),
            Err(why) => self.devices[idx].health.failure(why.clone()),
        };
        self.status(idx, st, ctx).await?;
        if let Ok(values) = outcome {
            send_reports(
                &ctx.events,
                &self.devices[idx].spec.node_id,
                named(values),
                started,
            )
            .await?;
        }
        let now = Instant::now();
        let d = &mut self.devices[idx];
        d.schedule.advance(now);
        if d.health.online() == Some(false) {
            // A dead instrument is asked less often, so it does not hold the line.
            let extra = d
                .health
                .streak()
                .saturating_sub(self.bus.offline_after)
                .min(6);
            let wait = d.schedule.period() * 2u32.pow(extra);
            d.schedule
                .defer_until(now + wait.min(Duration::from_secs(60)).max(d.schedule.period()));
        }
        self.log_counters();
        Ok(())
    }

    async fn command(
        &mut self,
        req: CommandRequest,
        ctx: &DriverContext,
    ) -> Result<(), DriverError> {
        let outcome =
            match tokio::time::timeout_at(req.deadline.into(), self.execute(&req.command, ctx))
                .await
            {
                Ok(o) => o,
                Err(_) => fail(
                    ErrorCode::Timeout,
                    "the instrument did not answer before the command deadline".into(),
                ),
            };
        if req.reply.send(outcome).is_err() {
            warn!(bus = %self.bus.name, "command answer arrived after its deadline; dropped");
        }
        Ok(())
    }

    async fn execute(&mut self, cmd: &Command, ctx: &DriverContext) -> CommandOutcome {
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
        if self.port.is_none() {
            return fail(
                ErrorCode::Offline,
                self.open_error
                    .clone()
                    .unwrap_or_else(|| "port not open".into()),
            );
        }
        let ins = self.devices[idx].spec.instrument.clone();
        match cmd {
            Command::Invoke {
                service,
                name,
                params,
                ..
            } => {
                let Some(c) = ins
                    .commands
                    .iter()
                    .find(|c| &c.decl.service == service && &c.decl.name == name)
                else {
                    return fail(
                        ErrorCode::Unsupported,
                        format!("command `{service}.{name}` is not declared for this device"),
                    );
                };
                let text = match c.render(params, &self.bus.framing.delimiters()) {
                    Ok(t) => t,
                    Err(e) => return fail(ErrorCode::BadValue, e.to_string()),
                };
                info!(bus = %self.bus.name, device = %self.devices[idx].spec.node_id, command = %name, "sending command");
                match &c.expect {
                    Some(re) => match self.exchange(text.as_bytes(), Some(re), ctx).await {
                        Ok(reply) => CommandOutcome::Done(BTreeMap::from([(
                            service.clone(),
                            BTreeMap::from([(
                                "reply".to_string(),
                                Value::Text(String::from_utf8_lossy(&reply).into_owned()),
                            )]),
                        )])),
                        Err(e) => fail(ErrorCode::Timeout, format!("no expected reply: {e}")),
                    },
                    None => {
                        let Some(port) = self.port.as_mut() else {
                            return fail(ErrorCode::Offline, "port not open".into());
                        };
                        match tokio::time::timeout(
                            self.bus.timeout,
                            port.write_all(text.as_bytes()),
                        )
                        .await
                        {
                            Ok(Ok(())) => CommandOutcome::Done(BTreeMap::new()),
                            Ok(Err(e)) => fail(ErrorCode::DeviceError, format!("write: {e}")),
                            Err(_) => fail(ErrorCode::Timeout, "write timed out".into()),
                        }
                    }
                }
            }
            Command::GetProperties { .. } => {
                let Some(request) = ins.request.clone() else {
                    return fail(
                        ErrorCode::Unsupported,
                        "a stream instrument cannot be asked; its values arrive by themselves"
                            .into(),
                    );
                };
                match self.exchange(&request, ins.matcher.as_ref(), ctx).await {
                    Ok(frame) => match parse_frame(&frame, ins.checksum, &ins.extract, &ins.fields)
                    {
                        Ok(v) => CommandOutcome::Done(v),
                        Err(e) => fail(ErrorCode::DeviceError, describe(&e, &frame)),
                    },
                    Err(e) => fail(ErrorCode::DeviceError, e.to_string()),
                }
            }
            Command::SetProperties { .. } => fail(
                ErrorCode::NotWritable,
                "serial instruments have no writable properties; use a declared command".into(),
            ),
        }
    }
}

fn describe(e: &FrameError, frame: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&frame[..frame.len().min(40)])
        .escape_debug()
        .collect();
    format!("{e}: \"{shown}\"")
}

fn fail(code: ErrorCode, message: String) -> CommandOutcome {
    CommandOutcome::Failed { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_placeholders() {
        let c = TemplateCommand {
            decl: DeclaredCommand {
                service: "s".into(),
                name: "zero".into(),
                params: Vec::new(),
            },
            template: "Z{band},{label}\r\n".into(),
            expect: None,
        };
        let p = BTreeMap::from([
            ("band".to_string(), Value::Int(7)),
            ("label".to_string(), Value::Text("A".into())),
        ]);
        assert_eq!(c.render(&p, b"\r\n"), Ok("Z7,A\r\n".to_string()));
        assert_eq!(
            c.render(&BTreeMap::new(), b""),
            Err(TemplateError::NoValue("band".into()))
        );
        // A printable terminator cannot be smuggled in a value.
        let semi = Framing::Terminator(b";".to_vec()).delimiters();
        let p = BTreeMap::from([
            ("band".to_string(), Value::Int(7)),
            ("label".to_string(), Value::Text("A;ZERO".into())),
        ]);
        assert_eq!(
            c.render(&p, &semi),
            Err(TemplateError::FramingByte {
                name: "label".into(),
                byte: ';'
            })
        );
        assert!(c
            .render(&p, &semi)
            .is_err_and(|e| e.to_string().contains("framing byte")));
        let stx = Framing::Delimited {
            start: b"<".to_vec(),
            end: b">".to_vec(),
        }
        .delimiters();
        let p = BTreeMap::from([
            ("band".to_string(), Value::Int(-7)),
            ("label".to_string(), Value::Text("A>".into())),
        ]);
        assert!(c.render(&p, &stx).is_err());
        // Numbers are checked too: a `-` terminator makes negative numbers unsendable.
        let p = BTreeMap::from([
            ("band".to_string(), Value::Int(-7)),
            ("label".to_string(), Value::Text("A".into())),
        ]);
        assert!(c.render(&p, b"-").is_err());
        assert_eq!(
            placeholders("T{a}x{b}"),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(placeholders("T{a"), Err(TemplateError::Unclosed));
    }
}

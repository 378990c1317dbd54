//! The exec bus task: runs the operator's program, feeds it commands, reads what it reports.
//!
//! The program is started from an argv (no shell) with piped stdio and `kill_on_drop`. Its
//! stdout is read line by line with a hard bound per line (longer lines are discarded and
//! counted); its stderr and `log` messages become log lines (control characters escaped, each
//! bounded, together at most 20 a minute), and each child may report at most
//! `max_properties` distinct property names. A crash or exit
//! marks every child OFFLINE with the exit status, fails the commands in flight, and restarts
//! the program with exponential backoff (reset once a run lasted a minute). On shutdown the
//! program gets `{"type":"stop"}` and its stdin closed, then is killed after a grace period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fieldgate_driver::{
    escape_controls, named, now_ms, send_reports, send_status, Command, CommandOutcome,
    CommandRequest, DeviceStatus, Driver, DriverContext, DriverError, DriverFuture, ErrorCode,
    Health, SkipCounters,
};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tracing::{debug, error, info, warn};

use crate::protocol::{parse_line, start_line, FromDriver, LineError};

#[derive(Debug, Clone, PartialEq)]
pub struct ExecBus {
    pub name: String,
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub restart_min: Duration,
    pub restart_max: Duration,
    /// Longest line accepted from the program.
    pub max_line: usize,
    /// Distinct `service.property` names one child may report; later new names are dropped
    /// and counted as bad lines.
    pub max_properties: usize,
    /// How long the program has to exit after `stop` before it is killed.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecDevice {
    pub node_id: String,
    /// Passed to the program verbatim in the `start` message.
    pub options: Json,
}

pub struct ExecDriver {
    bus: ExecBus,
    devices: Vec<ExecDevice>,
}

impl ExecDriver {
    pub fn new(bus: ExecBus, devices: Vec<ExecDevice>) -> Self {
        Self { bus, devices }
    }
}

impl Driver for ExecDriver {
    fn bus(&self) -> &str {
        &self.bus.name
    }

    fn run(self: Box<Self>, ctx: DriverContext) -> DriverFuture {
        Box::pin(async move { Task::new(self.bus, self.devices).run(ctx).await })
    }
}

/// A run of the program ended: why.
enum End {
    Shutdown,
    Exited(String),
}

struct Pending {
    reply: tokio::sync::oneshot::Sender<CommandOutcome>,
    deadline: Instant,
}

struct Task {
    bus: ExecBus,
    devices: Vec<ExecDevice>,
    health: BTreeMap<String, Health>,
    pending: HashMap<String, Pending>,
    next_id: u64,
    /// Bad lines: total, and how many were already logged.
    bad_lines: u64,
    bad_logged: u64,
    last_bad_log: Option<Instant>,
    /// Lines of the program's own (`log` messages and stderr) logged this minute.
    out_budget: LogBudget,
    /// Distinct `service.property` names seen per child, capped at `max_properties`.
    names: HashMap<String, Names>,
    /// Bad lines `fieldgate status` was last told of, and when.
    counters_sent: SkipCounters,
}

impl Task {
    fn new(bus: ExecBus, devices: Vec<ExecDevice>) -> Self {
        let health = devices
            .iter()
            .map(|d| (d.node_id.clone(), Health::new(d.node_id.clone(), 1)))
            .collect();
        Task {
            bus,
            devices,
            health,
            pending: HashMap::new(),
            next_id: 0,
            bad_lines: 0,
            bad_logged: 0,
            last_bad_log: None,
            out_budget: LogBudget::default(),
            names: HashMap::new(),
            counters_sent: SkipCounters::default(),
        }
    }

    async fn run(mut self, mut ctx: DriverContext) -> Result<(), DriverError> {
        let mut backoff = self.bus.restart_min;
        loop {
            let started = Instant::now();
            let why = match self.spawn() {
                Ok(child) => match self.session(child, &mut ctx).await? {
                    End::Shutdown => break,
                    End::Exited(why) => why,
                },
                Err(e) => format!("cannot start `{}`: {e}", self.bus.argv.join(" ")),
            };
            if started.elapsed() >= Duration::from_secs(60) {
                backoff = self.bus.restart_min;
            }
            warn!(bus = %self.bus.name, reason = %why, restart_in = ?backoff, "driver program not running");
            self.all_offline(&why, &ctx).await?;
            self.fail_pending(ErrorCode::Offline, &why);
            // Wait out the backoff, answering commands and watching for shutdown.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    changed = ctx.shutdown.changed() => {
                        if changed.is_err() || *ctx.shutdown.borrow() {
                            info!(bus = %self.bus.name, "exec bus stopped");
                            return Ok(());
                        }
                    }
                    Some(req) = ctx.commands.recv() => {
                        let _ = req.reply.send(CommandOutcome::Failed { code: ErrorCode::Offline, message: format!("driver program not running: {why}") });
                    }
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            backoff = (backoff * 2).min(self.bus.restart_max);
        }
        info!(bus = %self.bus.name, "exec bus stopped");
        Ok(())
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let (prog, args) = self
            .bus
            .argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut cmd = Process::new(prog);
        cmd.args(args)
            .envs(self.bus.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(d) = &self.bus.working_dir {
            cmd.current_dir(d);
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        info!(bus = %self.bus.name, program = %prog, pid = child.id().unwrap_or(0), "driver program started");
        Ok(child)
    }

    async fn session(
        &mut self,
        mut child: Child,
        ctx: &mut DriverContext,
    ) -> Result<End, DriverError> {
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Ok(End::Exited("no stdio pipes".into()));
        };
        let devices: Vec<(String, Json)> = self
            .devices
            .iter()
            .map(|d| (d.node_id.clone(), d.options.clone()))
            .collect();
        if let Err(e) = send(&mut stdin, &start_line(&self.bus.name, &devices)).await {
            return Ok(End::Exited(format!("cannot write to the program: {e}")));
        }
        let mut out = BufReader::with_capacity(8192, stdout);
        let mut err = BufReader::with_capacity(1024, stderr);
        let mut line = Vec::new();
        let mut eline = Vec::new();
        let mut out_open = true;
        let mut err_open = true;
        loop {
            self.send_counters(ctx);
            let deadline = self.pending.values().map(|p| p.deadline).min();
            let counters_due = self.counters_due();
            tokio::select! {
                biased;
                changed = ctx.shutdown.changed() => {
                    if changed.is_err() || *ctx.shutdown.borrow() {
                        self.stop(child, stdin).await;
                        self.fail_pending(ErrorCode::Offline, "gateway stopping");
                        return Ok(End::Shutdown);
                    }
                }
                status = child.wait() => {
                    // Drain what it said before dying.
                    while out_open {
                        match tokio::time::timeout(Duration::from_millis(200), read_line(&mut out, &mut line, self.bus.max_line)).await {
                            Ok(Ok(Some(r))) => self.on_line(r, &line, ctx).await?,
                            _ => out_open = false,
                        }
                    }
                    return Ok(End::Exited(exit_reason(status)));
                }
                Some(req) = ctx.commands.recv() => self.command(req, &mut stdin).await,
                r = read_line(&mut out, &mut line, self.bus.max_line), if out_open => match r {
                    Ok(Some(r)) => self.on_line(r, &line, ctx).await?,
                    Ok(None) | Err(_) => out_open = false,
                },
                r = read_line(&mut err, &mut eline, 512), if err_open => match r {
                    Ok(Some(_)) => self.on_stderr(&eline),
                    Ok(None) | Err(_) => err_open = false,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    self.expire();
                }
                _ = tokio::time::sleep_until(counters_due.unwrap_or_else(Instant::now).into()), if counters_due.is_some() => {}
            }
        }
    }

    /// Ask the program to stop, close its stdin, then kill it after the grace period.
    async fn stop(&mut self, mut child: Child, mut stdin: ChildStdin) {
        let _ = send(&mut stdin, r#"{"type":"stop"}"#).await;
        drop(stdin);
        match tokio::time::timeout(self.bus.stop_grace, child.wait()).await {
            Ok(status) => {
                info!(bus = %self.bus.name, status = %exit_reason(status), "driver program stopped")
            }
            Err(_) => {
                warn!(bus = %self.bus.name, grace = ?self.bus.stop_grace, "driver program did not stop; killing it");
                let _ = child.kill().await;
            }
        }
    }

    async fn on_line(
        &mut self,
        r: LineRead,
        line: &[u8],
        ctx: &DriverContext,
    ) -> Result<(), DriverError> {
        let parsed = match r {
            LineRead::TooLong => Err(LineError::TooLong(self.bus.max_line)),
            LineRead::Line => {
                let known = |c: &str| self.health.contains_key(c);
                parse_line(line, &known)
            }
        };
        match parsed {
            Ok(FromDriver::Report {
                child,
                service,
                mut properties,
                ts_ms,
            }) => {
                // Every distinct name costs memory for good (latest values, status, platform
                // models): a program inventing names without end is cut off per child.
                if !self.names.contains_key(&child) {
                    self.names.insert(child.clone(), Names::default());
                }
                let before = properties.len();
                if let Some(known) = self.names.get_mut(&child) {
                    let limit = self.bus.max_properties;
                    properties.retain(|k, _| known.admit(&service, k, limit));
                }
                if properties.len() < before {
                    self.bad_line(&LineError::TooManyProperties(self.bus.max_properties), line);
                }
                if properties.is_empty() {
                    return Ok(());
                }
                let st = self.health.get_mut(&child).and_then(Health::success);
                self.status(st, ctx).await?;
                // A timestamp from the program is used when it is plausible (not in the future).
                let now = now_ms();
                let ts_ms = ts_ms.filter(|t| *t <= now + 60_000).unwrap_or(now);
                let one = BTreeMap::from([(service, properties)]);
                send_reports(&ctx.events, &child, named(one), ts_ms).await?;
            }
            Ok(FromDriver::Status {
                child,
                online,
                reason,
            }) => {
                let st = self.health.get_mut(&child).and_then(|h| {
                    if online {
                        h.success()
                    } else {
                        h.offline_now(if reason.is_empty() {
                            "reported offline by the driver program".to_string()
                        } else {
                            reason
                        })
                    }
                });
                self.status(st, ctx).await?;
            }
            Ok(FromDriver::Result { id, outcome }) => match self.pending.remove(&id) {
                Some(p) => {
                    let o = match outcome {
                        Ok(values) => CommandOutcome::Done(values),
                        Err((code, message)) => CommandOutcome::Failed {
                            code: error_code(&code),
                            message,
                        },
                    };
                    let _ = p.reply.send(o);
                }
                None => {
                    debug!(bus = %self.bus.name, id = %id, "result for no pending command (late or unknown)")
                }
            },
            Ok(FromDriver::Log { level, message }) => {
                if !self.out_budget.allow(&self.bus.name) {
                    return Ok(());
                }
                let message = escape_controls(&message.chars().take(512).collect::<String>());
                match level.as_str() {
                    "error" => error!(bus = %self.bus.name, "driver program: {message}"),
                    "warn" => warn!(bus = %self.bus.name, "driver program: {message}"),
                    "debug" => debug!(bus = %self.bus.name, "driver program: {message}"),
                    _ => info!(bus = %self.bus.name, "driver program: {message}"),
                }
            }
            Err(e) => self.bad_line(&e, line),
        }
        Ok(())
    }

    /// When the changed bad-line total may next go to `fieldgate status` (about once a second).
    fn counters_due(&self) -> Option<Instant> {
        self.counters_sent.due(self.bad_lines)
    }

    fn send_counters(&mut self, ctx: &DriverContext) {
        let n = self.bad_lines;
        self.counters_sent.send(&ctx.events, &self.bus.name, n, || {
            BTreeMap::from([("bad_lines".to_string(), n)])
        });
    }

    /// Count a bad line; log the first at once and then the totals at most once a minute.
    fn bad_line(&mut self, e: &LineError, line: &[u8]) {
        self.bad_lines += 1;
        if self
            .last_bad_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_bad_log = Some(Instant::now());
        let shown: String = String::from_utf8_lossy(&line[..line.len().min(120)])
            .escape_debug()
            .collect();
        warn!(bus = %self.bus.name, error = %e, line = %shown, bad_lines = self.bad_lines, since_last_log = self.bad_lines - self.bad_logged, "ignoring lines from the driver program that break the protocol");
        self.bad_logged = self.bad_lines;
    }

    fn on_stderr(&mut self, line: &[u8]) {
        if !self.out_budget.allow(&self.bus.name) {
            return;
        }
        let text: String = String::from_utf8_lossy(line)
            .trim_end()
            .chars()
            .take(300)
            .collect();
        warn!(bus = %self.bus.name, "driver program stderr: {}", escape_controls(&text));
    }

    async fn status(
        &mut self,
        st: Option<DeviceStatus>,
        ctx: &DriverContext,
    ) -> Result<(), DriverError> {
        send_status(&ctx.events, &self.bus.name, st, None).await
    }

    async fn all_offline(&mut self, why: &str, ctx: &DriverContext) -> Result<(), DriverError> {
        let children: Vec<String> = self.health.keys().cloned().collect();
        for c in children {
            let st = self.health.get_mut(&c).and_then(|h| h.offline_now(why));
            self.status(st, ctx).await?;
        }
        Ok(())
    }

    fn fail_pending(&mut self, code: ErrorCode, why: &str) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(CommandOutcome::Failed {
                code,
                message: why.to_string(),
            });
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(CommandOutcome::Failed {
                    code: ErrorCode::Timeout,
                    message: "the driver program did not answer in time".into(),
                });
            }
        }
    }

    async fn command(&mut self, req: CommandRequest, stdin: &mut ChildStdin) {
        let child = req.command.child().to_string();
        if !self.health.contains_key(&child) {
            let _ = req.reply.send(CommandOutcome::Failed {
                code: ErrorCode::UnknownChild,
                message: format!("no device `{child}` on bus `{}`", self.bus.name),
            });
            return;
        }
        if self.health.get(&child).and_then(Health::online) == Some(false) {
            let why = self
                .health
                .get(&child)
                .map(|h| h.reason().to_string())
                .unwrap_or_default();
            let _ = req.reply.send(CommandOutcome::Failed {
                code: ErrorCode::Offline,
                message: format!("device is OFFLINE: {why}"),
            });
            return;
        }
        self.next_id += 1;
        let id = self.next_id.to_string();
        let line = match &req.command {
            Command::Invoke {
                service,
                name,
                params,
                ..
            } => {
                let params: serde_json::Map<String, Json> = params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect();
                json!({"type": "command", "id": id, "child": child, "service": service, "name": name, "params": params})
            }
            Command::GetProperties { service, .. } => {
                json!({"type": "get", "id": id, "child": child, "service": service})
            }
            Command::SetProperties { .. } => {
                let _ = req.reply.send(CommandOutcome::Failed {
                    code: ErrorCode::NotWritable,
                    message: "external drivers take declared commands, not property writes".into(),
                });
                return;
            }
        };
        if let Err(e) = send(stdin, &line.to_string()).await {
            let _ = req.reply.send(CommandOutcome::Failed {
                code: ErrorCode::DeviceError,
                message: format!("cannot write to the driver program: {e}"),
            });
            return;
        }
        self.pending.insert(
            id,
            Pending {
                reply: req.reply,
                deadline: req.deadline,
            },
        );
    }
}

async fn send(stdin: &mut ChildStdin, line: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    tokio::time::timeout(Duration::from_secs(5), async {
        stdin.write_all(&buf).await?;
        stdin.flush().await
    })
    .await
    .map_err(|_| std::io::Error::other("the program does not read its input"))?
}

enum LineRead {
    Line,
    TooLong,
}

/// Read one line into `line` (without the newline), never holding more than `max` bytes:
/// a longer line is consumed to its end and reported as too long. `None` at end of stream.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<LineRead>> {
    line.clear();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                None
            } else if too_long {
                Some(LineRead::TooLong)
            } else {
                Some(LineRead::Line)
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            }));
        }
    }
}

fn exit_reason(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(c), _) => format!("driver program exited with status {c}"),
            (None, Some(sig)) => format!("driver program killed by signal {sig}"),
            _ => "driver program exited".into(),
        },
        Err(e) => format!("cannot wait for the driver program: {e}"),
    }
}

fn error_code(code: &str) -> ErrorCode {
    match code {
        "unknown_child" => ErrorCode::UnknownChild,
        "bad_value" => ErrorCode::BadValue,
        "offline" => ErrorCode::Offline,
        "timeout" => ErrorCode::Timeout,
        "unsupported" => ErrorCode::Unsupported,
        "busy" => ErrorCode::Busy,
        _ => ErrorCode::DeviceError,
    }
}

/// The distinct `service.property` names one child has reported, looked up without building
/// a key (this runs for every property of every report).
#[derive(Debug, Default)]
struct Names {
    count: usize,
    by_service: HashMap<String, HashSet<String>>,
}

impl Names {
    /// Whether `service.property` may be reported: known already, or new within `limit`.
    fn admit(&mut self, service: &str, property: &str, limit: usize) -> bool {
        if self
            .by_service
            .get(service)
            .is_some_and(|p| p.contains(property))
        {
            return true;
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        self.by_service
            .entry(service.to_string())
            .or_default()
            .insert(property.to_string());
        true
    }
}

/// Default of [`ExecBus::max_properties`].
pub const DEFAULT_MAX_PROPERTIES: usize = 1024;

/// Lines of the program's own output (`log` messages and stderr together) logged per minute.
const LOG_LINES_PER_MINUTE: u32 = 20;

/// At most [`LOG_LINES_PER_MINUTE`] of the program's lines a minute reach the log; the next one
/// says that more are suppressed, and the first after the minute says how many were.
#[derive(Debug)]
struct LogBudget {
    since: Instant,
    used: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            since: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }
}

impl LogBudget {
    fn allow(&mut self, bus: &str) -> bool {
        if self.since.elapsed() >= Duration::from_secs(60) {
            if self.suppressed > 0 {
                warn!(bus = %bus, suppressed = self.suppressed, "driver program: log lines suppressed in the last minute");
            }
            *self = LogBudget::default();
        }
        self.used = self.used.saturating_add(1);
        if self.used <= LOG_LINES_PER_MINUTE {
            return true;
        }
        if self.used == LOG_LINES_PER_MINUTE + 1 {
            warn!(bus = %bus, "driver program: more than {LOG_LINES_PER_MINUTE} log lines this minute, suppressing the rest");
        }
        self.suppressed += 1;
        false
    }
}

/// Outside systemd nothing else reaps a driver program when the daemon is SIGKILLed or aborts,
/// so the kernel does it: the program gets SIGKILL when the thread that started it ends.
/// Programs are started from the runtime's worker threads, which live as long as the daemon
/// (nothing here uses `block_in_place`, which could retire one early). A daemon that died
/// between fork and exec is caught by comparing the parent pid.
fn die_with_parent(cmd: &mut Process) {
    let parent = std::process::id();
    let set = move || {
        // SAFETY: runs in the forked child before exec; prctl and getppid are async-signal-safe,
        // nothing is allocated, and the arguments are what prctl(2) documents.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        let now = unsafe { libc::getppid() };
        if u32::try_from(now).ok() != Some(parent) {
            // (No allocation after fork: a plain errno.)
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: `set` only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = b"short\nthis line is far too long for the bound\nok\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, std::io::Cursor::new(data));
        let mut line = Vec::new();
        let mut got = Vec::new();
        while let Ok(Some(k)) = read_line(&mut r, &mut line, 10).await {
            got.push(match k {
                LineRead::Line => String::from_utf8_lossy(&line).to_string(),
                LineRead::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(got, vec!["short", "<too long>", "ok", "last"]);
    }
}

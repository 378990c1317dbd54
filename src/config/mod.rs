//! Configuration: one TOML file, read into typed settings with every problem reported at once.
//!
//! The file is parsed with spans, then each table — and each bus, profile point and device on
//! its own — is deserialised separately, so one mistake does not hide the next. After the shape
//! is right, cross-checks run (duplicate node ids, a device naming a missing bus or profile, a
//! point that does not fit its table). Every problem becomes a [`Diagnostic`] with line, column
//! and key path; `fieldgate check` prints them all and `run` refuses to start (exit 78).

mod ascii;
mod ble;
pub mod defaults;
mod duration;
mod exec;
mod params;
mod remote;
mod report;
mod schema;
mod size;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_driver::DeclaredCommand;
use fieldgate_modbus::point::{parse_location, CommandSpec, DataType, Order, PointSpec};
use fieldgate_serial::frame::Framing;
use fieldgate_serial::{Parity, PortSettings};

pub use ascii::AsciiProfile;
pub use ble::BleProfile;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use duration::Dur;
pub use remote::{Remote, OPERATIONS};
use schema::*;
pub use size::Size;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    /// Key path, e.g. `device[2].bus`.
    pub path: String,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                d.line,
                d.column,
                d.path,
                d.message
            )?;
        }
        Ok(())
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    pub platform: Platform,
    pub store: Store,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
    /// What the platform may do to the gateway itself.
    pub remote: Remote,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub name: String,
    pub log_level: String,
    pub log_target: LogTarget,
    pub runtime_dir: PathBuf,
    pub report_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Iotda,
    ThingsBoard,
    OceanConnect,
    AllThingsTalk,
    Sparkplug,
}

/// Where log lines go (`[gateway] log_target`). Default: `Auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal when started by systemd (`JOURNAL_STREAM` set), else stderr.
    Auto,
    Journald,
    Stderr,
}

/// The bounds of the queue (`[store]`), as the store applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All rows together, bytes of record bodies. Default: 256 MiB.
    pub max_bytes: u64,
    /// Priority (non-telemetry) rows alone. Default: 16 MiB.
    pub max_priority_bytes: u64,
    /// Rows older than this are dropped as `expired`: their age when queued (by sample time)
    /// plus the time queued since, measured without the wall clock's steps. Default: 7 days.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: defaults::MAX_BYTES,
            max_priority_bytes: defaults::MAX_PRIORITY_BYTES,
            max_age: defaults::MAX_AGE,
        }
    }
}

/// The packaged unit's `StateDirectory` and `RuntimeDirectory`: the only places it may write.
pub const UNIT_STATE_DIR: &str = "/var/lib/fieldgate";
pub const UNIT_RUNTIME_DIR: &str = "/run/fieldgate";

/// Longest `gateway.runtime_dir`, in bytes: the control socket's path must fit `sun_path`.
pub const MAX_RUNTIME_DIR: usize = 80;

pub use defaults::{CONNECT_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN};

#[derive(Debug, Clone, PartialEq)]
pub struct Platform {
    pub dialect: Dialect,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: client certificate chain and private key (PEM).
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// ThingsBoard basic credentials: the username (the secret is the password).
    pub username: Option<String>,
    pub device_id: String,
    /// AllThingsTalk: the account (client) id; empty for other dialects.
    pub account: String,
    /// Sparkplug B: the group id; empty for other dialects.
    pub group_id: String,
    /// ThingsBoard: keys are `service.property` instead of the bare property name.
    pub service_keys: bool,
    /// Sparkplug B: metric aliases.
    pub aliases: bool,
    /// Sparkplug B: births and data only while this Primary Host is online.
    pub primary_host_id: Option<String>,
    /// Sparkplug B: the MQTT QoS of births, data and DDEATH (0 or 1); 1 for other dialects.
    pub qos: u8,
    pub secret: SecretSource,
    pub check_timestamp: bool,
    pub keepalive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long one connection attempt may take (TCP, TLS, CONNECT/CONNACK).
    pub connect_timeout: Duration,
    /// Unacknowledged publishes handed to the MQTT client at once.
    pub inflight: u16,
    /// Largest MQTT packet fieldgate sends, in bytes.
    pub max_packet: usize,
    /// A platform request not answered by then gets a timeout answer.
    pub command_timeout: Duration,
    /// Data messages per second at most (0 = unlimited).
    pub replay_rate: u32,
    /// Data bytes per second at most (0 = unlimited).
    pub replay_bytes_rate: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

impl SecretSource {
    /// Read the secret (from the file, trimmed, each time: rotating it needs no restart).
    pub fn load(&self) -> std::io::Result<Secret> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(p) => Ok(Secret(std::fs::read_to_string(p)?.trim().to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    pub path: PathBuf,
    pub commit_interval: Duration,
    pub limits: Limits,
    /// SQLite `synchronous = FULL` (fsync every commit) instead of NORMAL.
    pub synchronous_full: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BusKind {
    ModbusTcp {
        endpoint: String,
    },
    ModbusRtu {
        port: PortSettings,
        /// Late bytes are discarded for this long after a failed exchange.
        settle: Duration,
    },
    SerialAscii {
        port: PortSettings,
        framing: Framing,
        max_frame: usize,
    },
    /// An external driver program (restart backoff from the bus's reconnect_min/max).
    Exec(fieldgate_exec::ExecBus),
    /// A BLE adapter through BlueZ.
    Ble {
        adapter: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    pub name: String,
    pub kind: BusKind,
    pub timeout: Duration,
    pub offline_after: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub node_id: String,
    pub name: String,
    pub bus: String,
    pub unit: u8,
    pub poll: Duration,
    /// Extra silence before each request to this device (Modbus RTU).
    pub turnaround: Duration,
    pub product_id: String,
    pub profile: String,
    pub points: Arc<[PointSpec]>,
    pub max_gap: u16,
    /// Commands declared in the profile.
    pub commands: Arc<[CommandSpec]>,
    /// A serial instrument's model (its profile has fields, not points).
    pub ascii: Option<AsciiProfile>,
    /// Template commands with typed parameters (serial instruments, exec devices).
    pub declared: Arc<[DeclaredCommand]>,
    /// Exec devices: handed to the program verbatim.
    pub options: serde_json::Value,
    /// BLE devices: address, advertisement format or GATT map.
    pub ble: Option<fieldgate_ble::BleDevice>,
    /// How its readings are reported (resolved gateway → profile → device → point).
    pub report: Arc<crate::report::ChildRules>,
}

pub const DEFAULT_PATH: &str = "/etc/fieldgate/fieldgate.toml";

impl Config {
    /// What is valid but worth saying: `check` prints these, `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let host = self.platform.host.as_str();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !self.platform.tls && !loopback {
            out.push(format!(
                "platform.tls = false: the credentials and every message to {host} travel unencrypted"
            ));
        }
        if let SecretSource::File(f) = &self.platform.secret {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(f) {
                Err(e) => out.push(format!(
                    "platform.secret_file {}: {e} (the uplink retries until it can be read)",
                    f.display()
                )),
                Ok(m) if m.permissions().mode() & 0o004 != 0 => out.push(format!(
                    "platform.secret_file {} is readable by every user (chmod 0640, group fieldgate)",
                    f.display()
                )),
                Ok(_) => {}
            }
        }
        if let Some(ca) = &self.platform.ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                out.push(format!("platform.ca_file {}: {e}", ca.display()));
            }
        }
        let mut seen = BTreeSet::new();
        let budget = self.platform.max_packet.saturating_sub(512);
        for d in &self.devices {
            if !seen.insert(d.profile.clone()) {
                continue;
            }
            // A generous estimate of one full report: each property as `"name":-1234567.125,`
            // plus the message's envelope.
            let names: Vec<&str> = match &d.ascii {
                Some(a) => a.0.fields.iter().map(|f| f.property.as_str()).collect(),
                None => d.points.iter().map(|p| p.property.as_str()).collect(),
            };
            let estimate: usize = 256 + names.iter().map(|n| n.len() + 24).sum::<usize>();
            if estimate > budget {
                out.push(format!(
                    "profile `{}`: one full report (~{estimate} bytes) is larger than max_packet {} allows; each report will be split across several messages by property",
                    d.profile, self.platform.max_packet
                ));
            }
        }
        out.extend(self.framing_warnings());
        out.extend(self.unit_path_warnings());
        out
    }

    /// Paths the packaged unit could not keep: under `ProtectSystem=strict` only its state and
    /// runtime directories are writable, and its `/tmp` is private and emptied at every start.
    fn unit_path_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, path, dir) in [
            ("store.path", &self.store.path, UNIT_STATE_DIR),
            (
                "gateway.runtime_dir",
                &self.gateway.runtime_dir,
                UNIT_RUNTIME_DIR,
            ),
        ] {
            if path.starts_with(UNIT_STATE_DIR) || path.starts_with(UNIT_RUNTIME_DIR) {
                continue;
            }
            if path.starts_with("/tmp") || path.starts_with("/var/tmp") {
                out.push(format!(
                    "{key} {} is in the packaged unit's private /tmp, emptied at every start (the default is under {dir})",
                    path.display()
                ));
            } else {
                out.push(format!(
                    "{key} {} is read-only under the packaged unit, which may write only {UNIT_STATE_DIR} and {UNIT_RUNTIME_DIR} (add ReadWritePaths= in a drop-in, or use the default under {dir})",
                    path.display()
                ));
            }
        }
        out
    }

    /// Text parameters of serial command templates that could carry a printable framing byte
    /// of their bus: such values are refused at run time; a `pattern` says what is meant.
    fn framing_warnings(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for d in &self.devices {
            let (Some(a), Some(bus)) = (&d.ascii, self.buses.iter().find(|b| b.name == d.bus))
            else {
                continue;
            };
            let BusKind::SerialAscii { framing, .. } = &bus.kind else {
                continue;
            };
            let printable: String = framing
                .delimiters()
                .into_iter()
                .filter(|b| (0x20..0x7f).contains(b))
                .map(char::from)
                .collect();
            if printable.is_empty() {
                continue;
            }
            for c in &a.0.commands {
                for p in &c.decl.params {
                    if matches!(
                        p.kind,
                        fieldgate_driver::ParamKind::Text { pattern: None, .. }
                    ) && seen.insert((
                        d.profile.clone(),
                        bus.name.clone(),
                        c.decl.name.clone(),
                        p.name.clone(),
                    )) {
                        out.push(format!(
                            "profile `{}` command `{}`: text parameter `{}` could carry {printable:?}, framing on bus `{}`; such values are refused when sent — declare a `pattern` for what it may hold",
                            d.profile, c.decl.name, p.name, bus.name
                        ));
                    }
                }
            }
        }
        out
    }
}

/// Load and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        diagnostics: vec![Diagnostic {
            line: 1,
            column: 1,
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&src, path)
}

/// Validate config text; `file` is only used in messages.
pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut cx = Checker {
        src,
        diags: Vec::new(),
        rules: report::Rules::default(),
    };
    let cfg = cx.check();
    match cfg {
        Some(c) if cx.diags.is_empty() => Ok(c),
        _ => {
            cx.diags.sort_by_key(|d| (d.line, d.column));
            Err(ConfigError {
                file: file.to_path_buf(),
                diagnostics: cx.diags,
            })
        }
    }
}

struct Checker<'a> {
    src: &'a str,
    diags: Vec<Diagnostic>,
    rules: report::Rules,
}

type Sv<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &[
    "gateway", "platform", "store", "bus", "profile", "device", "remote",
];

impl<'a> Checker<'a> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    fn err(
        &mut self,
        span: Option<Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = span.map_or((1, 1), |s| self.pos(s.start));
        self.diags.push(Diagnostic {
            line,
            column,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserialise one table, reporting every bad key in it: after an error that points at a
    /// key (wrong type, unknown key, bad value), that key is removed and the rest is tried
    /// again, so later keys and the cross-checks still get looked at. The result is only used
    /// for further checks; any error already makes the whole config invalid.
    fn de<T: DeserializeOwned>(&mut self, v: &Sv<'_>, path: &str) -> Option<T> {
        let mut v = v.clone();
        for _ in 0..32 {
            let e = match T::deserialize(ValueDeserializer::from(v.clone())) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let span = e.span().or_else(|| Some(v.span()));
            self.err(span.clone(), path, e.message().to_string());
            let (Some(at), DeValue::Table(t)) = (span.map(|s| s.start), v.get_ref()) else {
                return None;
            };
            let culprit = t.iter().find(|(k, val)| {
                k.span().contains(&at) || val.span().contains(&at) || k.span().start == at
            });
            let key = culprit.map(|(k, _)| k.clone())?;
            let mut t = t.clone();
            t.remove(&key);
            v = Spanned::new(v.span(), DeValue::Table(t));
        }
        None
    }

    fn array<'v, 'i>(&mut self, v: &'v Sv<'i>, path: &str) -> Vec<&'v Sv<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => a.iter().collect(),
            other => {
                self.err(
                    Some(v.span()),
                    path,
                    format!(
                        "expected an array of tables (`[[{path}]]`), found {}",
                        other.type_str()
                    ),
                );
                Vec::new()
            }
        }
    }

    /// Deserialise every table of the array `[[path]]`, each reported under `path[i]`: the
    /// readable ones with their paths, and whether all of them were readable.
    fn tables<T: DeserializeOwned>(&mut self, v: &Sv<'_>, path: &str) -> (Vec<(String, T)>, bool) {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in self.array(v, path).into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            match self.de(item, &p) {
                Some(t) => out.push((p, t)),
                None => ok = false,
            }
        }
        (out, ok)
    }

    /// Note a command's name for its service; an empty or repeated one is reported (false).
    fn command_name(
        &mut self,
        names: &mut BTreeSet<(String, String)>,
        service: &str,
        name: &Spanned<String>,
        path: &str,
    ) -> bool {
        let n = name.get_ref();
        if n.is_empty() || !names.insert((service.to_string(), n.clone())) {
            self.err(
                Some(name.span()),
                format!("{path}.name"),
                format!("command name `{n}` is empty or declared twice for service `{service}`"),
            );
            return false;
        }
        true
    }

    fn check(&mut self) -> Option<Config> {
        let (root, syntax) = DeTable::parse_recoverable(self.src);
        for e in &syntax {
            self.err(e.span(), "(syntax)", e.message().to_string());
        }
        if !syntax.is_empty() {
            return None;
        }
        let root = root.into_inner();
        let mut sections: BTreeMap<&str, &Sv<'_>> = BTreeMap::new();
        for (k, v) in root.iter() {
            let key: &str = k.get_ref();
            match TOP_KEYS.iter().find(|t| **t == key) {
                Some(t) => {
                    sections.insert(t, v);
                }
                None => self.err(
                    Some(k.span()),
                    key,
                    format!(
                        "unknown section `{key}` (expected one of: {})",
                        TOP_KEYS.join(", ")
                    ),
                ),
            }
        }

        let gateway: RawGateway = match sections.get("gateway") {
            Some(v) => {
                let (rest, rule) = self.split_rule(v, "gateway");
                self.gateway_rule(rule);
                self.de(&rest, "gateway").unwrap_or_default()
            }
            None => RawGateway::default(),
        };
        let platform: Option<RawPlatform> = match sections.get("platform") {
            Some(v) => self.de(v, "platform"),
            None => {
                self.err(
                    None,
                    "platform",
                    "missing section `[platform]` (where to send data)",
                );
                None
            }
        };
        // Sparkplug reports by exception: its children default to `on_change`.
        if platform
            .as_ref()
            .is_some_and(|p| p.dialect.get_ref() == "sparkplug")
        {
            self.rules.default_strategy = Some(crate::report::Strategy::OnChange);
        }
        let store: RawStore = match sections.get("store") {
            Some(v) => self.de(v, "store").unwrap_or_default(),
            None => RawStore::default(),
        };
        let remote: remote::RawRemote = match sections.get("remote") {
            Some(v) => self.de(v, "remote").unwrap_or_default(),
            None => remote::RawRemote::default(),
        };
        let remote = self.remote(remote);
        let mut declared = Declared::default();
        let buses = self.buses(sections.get("bus").copied(), &mut declared.buses);
        let profiles = self.profiles(sections.get("profile").copied(), &mut declared.profiles);
        let devices = self.devices(
            sections.get("device").copied(),
            &buses,
            &profiles,
            &declared,
        );

        let gateway = self.gateway(gateway);
        let platform = platform.and_then(|p| self.platform(p));
        let store = self.store(store);
        Some(Config {
            gateway,
            platform: platform?,
            store,
            buses: buses.into_values().collect(),
            devices,
            remote,
        })
    }

    fn gateway(&mut self, g: RawGateway) -> Gateway {
        let log_level = match g.log_level {
            Some(l) => {
                let ok =
                    ["error", "warn", "info", "debug", "trace"].contains(&l.get_ref().as_str());
                if !ok {
                    self.err(
                        Some(l.span()),
                        "gateway.log_level",
                        format!(
                            "unknown level `{}` (error, warn, info, debug, trace)",
                            l.get_ref()
                        ),
                    );
                }
                l.into_inner()
            }
            None => "info".into(),
        };
        let log_target = match g.log_target.as_ref().map(|t| t.get_ref().as_str()) {
            None | Some("auto") => LogTarget::Auto,
            Some("journald") => LogTarget::Journald,
            Some("stderr") => LogTarget::Stderr,
            Some(other) => {
                let span = g.log_target.as_ref().map(|t| t.span());
                self.err(
                    span,
                    "gateway.log_target",
                    format!("unknown log target `{other}` (auto, journald, stderr)"),
                );
                LogTarget::Auto
            }
        };
        let report_interval = match g.report_interval {
            Some(r) if r.get_ref().0 < Duration::from_secs(1) => {
                self.err(
                    Some(r.span()),
                    "gateway.report_interval",
                    "report_interval must be at least 1s",
                );
                defaults::REPORT_INTERVAL
            }
            Some(r) => r.into_inner().0,
            None => defaults::REPORT_INTERVAL,
        };
        let runtime_dir = g
            .runtime_dir
            .unwrap_or_else(|| defaults::RUNTIME_DIR.into());
        // The control socket (and its staging name, `.fieldgate.sock.<pid>`) must fit a Unix
        // socket path (108 bytes).
        if runtime_dir.len() > MAX_RUNTIME_DIR {
            self.err(
                None,
                "gateway.runtime_dir",
                format!(
                    "runtime_dir is {} bytes; at most {MAX_RUNTIME_DIR} leave room for the control socket's path",
                    runtime_dir.len()
                ),
            );
        }
        Gateway {
            report_interval,
            name: g.name.unwrap_or_else(|| defaults::GATEWAY_NAME.into()),
            log_level,
            log_target,
            runtime_dir: PathBuf::from(runtime_dir),
        }
    }

    fn platform(&mut self, p: RawPlatform) -> Option<Platform> {
        let dialect = match p.dialect.get_ref().as_str() {
            "iotda" => Some(Dialect::Iotda),
            "thingsboard" => Some(Dialect::ThingsBoard),
            "oceanconnect" => Some(Dialect::OceanConnect),
            "allthingstalk" => Some(Dialect::AllThingsTalk),
            "sparkplug" => Some(Dialect::Sparkplug),
            other => {
                self.err(
                    Some(p.dialect.span()),
                    "platform.dialect",
                    format!(
                        "unknown dialect `{other}` (supported: iotda, thingsboard, oceanconnect, allthingstalk, sparkplug)"
                    ),
                );
                None
            }
        };
        if p.host.get_ref().trim().is_empty() {
            self.err(
                Some(p.host.span()),
                "platform.host",
                "host must not be empty",
            );
        }
        if p.device_id.get_ref().trim().is_empty() {
            self.err(
                Some(p.device_id.span()),
                "platform.device_id",
                "device_id must not be empty",
            );
        }
        let secret = match (p.secret, p.secret_file) {
            (Some(s), None) => Some(SecretSource::Inline(Secret(s.into_inner()))),
            (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f.into_inner()))),
            (Some(_), Some(f)) => {
                self.err(
                    Some(f.span()),
                    "platform.secret_file",
                    "give either `secret` or `secret_file`, not both",
                );
                None
            }
            (None, None) => {
                self.err(Some(p.device_id.span()), "platform", "missing `secret_file` (or `secret`): the device secret used to sign the MQTT password");
                None
            }
        };
        let port = p.port.unwrap_or(defaults::PORT);
        let client_auth = match (&p.client_cert, &p.client_key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref()))),
            (None, None) => None,
            (Some(s), None) | (None, Some(s)) => {
                self.err(
                    Some(s.span()),
                    "platform.client_cert",
                    "`client_cert` and `client_key` go together (mutual TLS)",
                );
                return None;
            }
        };
        if client_auth.is_some() && p.tls == Some(false) {
            self.err(
                None,
                "platform.client_cert",
                "a client certificate needs `tls = true`",
            );
            return None;
        }
        let username = match (&dialect, &p.username) {
            (Some(Dialect::ThingsBoard), Some(u)) => Some(u.get_ref().clone()),
            (_, Some(u)) => {
                self.err(
                    Some(u.span()),
                    "platform.username",
                    "`username` is for dialect thingsboard (basic MQTT credentials)",
                );
                return None;
            }
            (_, None) => None,
        };
        let keepalive = match p.keepalive {
            Some(k) if !(30..=1200).contains(&k.get_ref().0.as_secs()) => {
                self.err(
                    Some(k.span()),
                    "platform.keepalive",
                    "keepalive must be between 30s and 1200s (IoTDA refuses others)",
                );
                None
            }
            Some(k) => Some(k.into_inner().0),
            None => Some(defaults::KEEPALIVE),
        };
        let inflight = match p.inflight {
            Some(i) if *i.get_ref() == 0 || *i.get_ref() > 1000 => {
                self.err(
                    Some(i.span()),
                    "platform.inflight",
                    "inflight must be between 1 and 1000",
                );
                None
            }
            Some(i) => Some(i.into_inner()),
            None => Some(defaults::INFLIGHT),
        };
        let max_packet = match p.max_packet {
            Some(m) if *m.get_ref() < 4096 => {
                self.err(
                    Some(m.span()),
                    "platform.max_packet",
                    "max_packet must be at least 4096 bytes",
                );
                None
            }
            Some(m) => Some(m.into_inner() as usize),
            None => Some(defaults::MAX_PACKET),
        };
        let command_timeout = match p.command_timeout {
            Some(t)
                if t.get_ref().0 < Duration::from_millis(100)
                    || t.get_ref().0 >= Duration::from_secs(20) =>
            {
                self.err(
                    Some(t.span()),
                    "platform.command_timeout",
                    "command_timeout must be from 100ms to under 20s (IoTDA gives up after 20s)",
                );
                None
            }
            Some(t) => Some(t.into_inner().0),
            None => Some(defaults::COMMAND_TIMEOUT),
        };
        let reconnect_min = p.reconnect_min.map_or(RECONNECT_MIN, |d| d.0);
        let reconnect_max = p
            .reconnect_max
            .map_or(RECONNECT_MAX, |d| d.0)
            .max(reconnect_min);
        let connect_timeout = match p.connect_timeout {
            Some(t) if t.get_ref().0 < Duration::from_secs(1) => {
                self.err(
                    Some(t.span()),
                    "platform.connect_timeout",
                    "connect_timeout must be at least 1s (a TLS handshake over a slow link takes seconds)",
                );
                None
            }
            Some(t) => Some(t.into_inner().0),
            None => Some(CONNECT_TIMEOUT),
        };
        let account = match (&dialect, &p.account) {
            (Some(Dialect::AllThingsTalk), Some(a)) if !a.get_ref().trim().is_empty() => {
                a.get_ref().clone()
            }
            (Some(Dialect::AllThingsTalk), _) => {
                self.err(
                    p.account.as_ref().map(|a| a.span()).or(Some(p.dialect.span())),
                    "platform.account",
                    "allthingstalk needs `account = \"…\"`: the client id of the account that owns the gateway",
                );
                return None;
            }
            (_, Some(a)) => {
                self.err(
                    Some(a.span()),
                    "platform.account",
                    "`account` is for dialect allthingstalk",
                );
                return None;
            }
            (_, None) => String::new(),
        };
        let sparkplug_id = |s: &str| !s.is_empty() && !s.contains(['+', '/', '#']);
        let group_id = match (&dialect, &p.group_id) {
            (Some(Dialect::Sparkplug), Some(g)) if sparkplug_id(g.get_ref()) => g.get_ref().clone(),
            (Some(Dialect::Sparkplug), g) => {
                self.err(
                    g.as_ref().map(|g| g.span()).or(Some(p.dialect.span())),
                    "platform.group_id",
                    "sparkplug needs `group_id = \"…\"` (no `+`, `/` or `#`)",
                );
                return None;
            }
            (_, Some(g)) => {
                self.err(
                    Some(g.span()),
                    "platform.group_id",
                    "`group_id` is for dialect sparkplug",
                );
                return None;
            }
            (_, None) => String::new(),
        };
        let service_keys = match (&dialect, &p.keys) {
            (_, None) => false,
            (Some(Dialect::ThingsBoard), Some(k)) if k.get_ref() == "property" => false,
            (Some(Dialect::ThingsBoard), Some(k)) if k.get_ref() == "service.property" => true,
            (Some(Dialect::ThingsBoard), Some(k)) => {
                self.err(
                    Some(k.span()),
                    "platform.keys",
                    "keys must be \"property\" or \"service.property\"",
                );
                return None;
            }
            (_, Some(k)) => {
                self.err(
                    Some(k.span()),
                    "platform.keys",
                    "`keys` is for dialect thingsboard",
                );
                return None;
            }
        };
        let aliases = match (&dialect, &p.aliases) {
            (_, None) => false,
            (Some(Dialect::Sparkplug), Some(a)) => *a.get_ref(),
            (_, Some(a)) => {
                self.err(
                    Some(a.span()),
                    "platform.aliases",
                    "`aliases` is for dialect sparkplug",
                );
                return None;
            }
        };
        let primary_host_id = match (&dialect, &p.primary_host_id) {
            (_, None) => None,
            (Some(Dialect::Sparkplug), Some(h)) if sparkplug_id(h.get_ref()) => {
                Some(h.get_ref().clone())
            }
            (Some(Dialect::Sparkplug), Some(h)) => {
                self.err(
                    Some(h.span()),
                    "platform.primary_host_id",
                    "a Primary Host id is part of a topic: not empty, no `+`, `/` or `#`",
                );
                return None;
            }
            (_, Some(h)) => {
                self.err(
                    Some(h.span()),
                    "platform.primary_host_id",
                    "`primary_host_id` is for dialect sparkplug",
                );
                return None;
            }
        };
        let qos = match (&dialect, &p.qos) {
            (Some(Dialect::Sparkplug), None) => defaults::SPARKPLUG_QOS,
            (_, None) => 1,
            (Some(Dialect::Sparkplug), Some(q)) => match *q.get_ref() {
                0 => 0,
                1 => 1,
                _ => {
                    self.err(
                        Some(q.span()),
                        "platform.qos",
                        "qos must be 0 (the Sparkplug specification's) or 1",
                    );
                    return None;
                }
            },
            (_, Some(q)) => {
                self.err(
                    Some(q.span()),
                    "platform.qos",
                    "`qos` is for dialect sparkplug (the other dialects publish at QoS 1)",
                );
                return None;
            }
        };
        // The gateway's id is in every dialect's topics.
        if p.device_id.get_ref().contains(['+', '#', '/'])
            || p.device_id.get_ref().chars().any(char::is_control)
        {
            self.err(
                Some(p.device_id.span()),
                "platform.device_id",
                "device_id is part of MQTT topics: no `+`, `#`, `/` or control characters",
            );
            return None;
        }
        if dialect == Some(Dialect::Sparkplug) && !sparkplug_id(p.device_id.get_ref()) {
            self.err(
                Some(p.device_id.span()),
                "platform.device_id",
                "a Sparkplug edge node id has no `+`, `/` or `#`",
            );
            return None;
        }
        Some(Platform {
            account,
            group_id,
            service_keys,
            aliases,
            primary_host_id,
            qos,
            dialect: dialect?,
            host: p.host.into_inner(),
            // TLS unless explicitly turned off, whatever the port: credentials and IoTDA's
            // HMAC (replayable for the rest of the hour) never go in the clear by default.
            tls: p.tls.unwrap_or(defaults::TLS),
            port,
            ca_file: p.ca_file.map(PathBuf::from),
            client_auth,
            username,
            device_id: p.device_id.into_inner(),
            secret: secret?,
            check_timestamp: p.check_timestamp.unwrap_or(false),
            keepalive: keepalive?,
            reconnect_min,
            reconnect_max,
            connect_timeout: connect_timeout?,
            inflight: inflight?,
            max_packet: max_packet?,
            command_timeout: command_timeout?,
            replay_rate: p.replay_rate.unwrap_or(defaults::REPLAY_RATE),
            replay_bytes_rate: p
                .replay_bytes_rate
                .map_or(defaults::REPLAY_BYTES_RATE, |s| s.0),
        })
    }

    fn store(&mut self, s: RawStore) -> Store {
        let commit_interval = match s.commit_interval {
            Some(c) if c.get_ref().0 > Duration::from_secs(10) => {
                self.err(
                    Some(c.span()),
                    "store.commit_interval",
                    "commit_interval above 10s risks too much data on power loss",
                );
                c.into_inner().0
            }
            Some(c) => c.into_inner().0,
            None => defaults::COMMIT_INTERVAL,
        };
        let mut limits = Limits::default();
        if let Some(m) = s.max_bytes {
            if m.get_ref().0 < 64 << 10 {
                self.err(
                    Some(m.span()),
                    "store.max_bytes",
                    "max_bytes must be at least 64KiB",
                );
            }
            limits.max_bytes = m.into_inner().0;
            limits.max_priority_bytes = limits.max_priority_bytes.min(limits.max_bytes / 4);
        }
        if let Some(m) = s.max_priority_bytes {
            if m.get_ref().0 > limits.max_bytes || m.get_ref().0 < 4 << 10 {
                self.err(
                    Some(m.span()),
                    "store.max_priority_bytes",
                    "max_priority_bytes must be between 4KiB and max_bytes",
                );
            }
            limits.max_priority_bytes = m.into_inner().0;
        }
        if let Some(a) = s.max_age {
            if a.get_ref().0 < Duration::from_secs(60) {
                self.err(
                    Some(a.span()),
                    "store.max_age",
                    "max_age must be at least 1m",
                );
            }
            limits.max_age = a.into_inner().0;
        }
        let synchronous_full = match s.synchronous.as_ref().map(|x| x.get_ref().as_str()) {
            None | Some("normal") => false,
            Some("full") => true,
            Some(other) => {
                self.err(
                    s.synchronous.as_ref().map(|x| x.span()),
                    "store.synchronous",
                    format!("unknown synchronous level `{other}` (normal, full)"),
                );
                false
            }
        };
        Store {
            path: PathBuf::from(s.path.unwrap_or_else(|| defaults::STORE_PATH.into())),
            commit_interval,
            limits,
            synchronous_full,
        }
    }

    fn buses(
        &mut self,
        v: Option<&Sv<'_>>,
        declared: &mut BTreeSet<String>,
    ) -> BTreeMap<String, Bus> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        for (i, item) in self.array(v, "bus").into_iter().enumerate() {
            let path = format!("bus[{i}]");
            let Some(b): Option<RawBus> = self.de(item, &path) else {
                continue;
            };
            let name = b.name.get_ref().clone();
            if !declared.insert(name.clone()) {
                self.err(
                    Some(b.name.span()),
                    format!("{path}.name"),
                    format!("duplicate bus name `{name}`"),
                );
                continue;
            }
            let kind = match b.driver.get_ref().as_str() {
                "modbus-tcp" => match &b.endpoint {
                    Some(e) if valid_endpoint(e.get_ref()) => Some(BusKind::ModbusTcp {
                        endpoint: e.get_ref().clone(),
                    }),
                    Some(e) => {
                        self.err(
                            Some(e.span()),
                            format!("{path}.endpoint"),
                            format!("endpoint `{}` must be `host:port`", e.get_ref()),
                        );
                        None
                    }
                    None => {
                        self.err(
                            Some(b.driver.span()),
                            format!("{path}.endpoint"),
                            "a modbus-tcp bus needs `endpoint = \"host:port\"`",
                        );
                        None
                    }
                },
                "modbus-rtu" => {
                    let port = self.serial_port(&b, &path);
                    let settle = match &b.settle {
                        Some(s) if s.get_ref().0 > Duration::from_secs(10) => {
                            self.err(
                                Some(s.span()),
                                format!("{path}.settle"),
                                "settle must be at most 10s",
                            );
                            None
                        }
                        Some(s) => Some(s.get_ref().0),
                        // A device's late reply comes within about one more timeout.
                        None => Some(
                            b.timeout
                                .as_ref()
                                .map_or(defaults::BUS_TIMEOUT, |t| t.get_ref().0),
                        ),
                    };
                    port.zip(settle)
                        .map(|(port, settle)| BusKind::ModbusRtu { port, settle })
                }
                "serial-ascii" => {
                    let port = self.serial_port(&b, &path);
                    let framing = self.framing(&b, &path);
                    let max_frame = match &b.max_frame {
                        Some(m) if !(8..=65536).contains(m.get_ref()) => {
                            self.err(
                                Some(m.span()),
                                format!("{path}.max_frame"),
                                "max_frame must be 8..=65536 bytes",
                            );
                            None
                        }
                        Some(m) => Some(*m.get_ref()),
                        None => Some(256),
                    };
                    match (port, framing, max_frame) {
                        (Some(port), Some(framing), Some(max_frame)) => {
                            Some(BusKind::SerialAscii {
                                port,
                                framing,
                                max_frame,
                            })
                        }
                        _ => None,
                    }
                }
                "ble" if !cfg!(feature = "ble") => {
                    self.err(
                        Some(b.driver.span()),
                        format!("{path}.driver"),
                        "this fieldgate was built without BLE support (cargo feature `ble`; the packages have it)",
                    );
                    None
                }
                "ble" => Some(BusKind::Ble {
                    adapter: b.adapter.as_ref().map(|a| a.get_ref().clone()),
                }),
                "exec" => self.exec_settings(&b, &path).map(|e| {
                    let min = b.reconnect_min.map_or(defaults::EXEC_RESTART_MIN, |d| d.0);
                    let max = b
                        .reconnect_max
                        .map_or(defaults::EXEC_RESTART_MAX, |d| d.0)
                        .max(min);
                    BusKind::Exec(e.bus(&name, min, max))
                }),
                other => {
                    self.err(
                        Some(b.driver.span()),
                        format!("{path}.driver"),
                        format!("unknown driver `{other}` (supported: modbus-tcp, modbus-rtu, serial-ascii, exec)"),
                    );
                    None
                }
            };
            if kind.is_some() && !matches!(kind, Some(BusKind::ModbusTcp { .. })) {
                if let Some(e) = &b.endpoint {
                    self.err(
                        Some(e.span()),
                        format!("{path}.endpoint"),
                        format!(
                            "`endpoint` is for TCP buses; driver `{}` uses `port`",
                            b.driver.get_ref()
                        ),
                    );
                }
            }
            // A BLE connection takes seconds; a Modbus answer milliseconds.
            let default_timeout = if b.driver.get_ref() == "ble" {
                defaults::BLE_TIMEOUT
            } else {
                defaults::BUS_TIMEOUT
            };
            let timeout = b.timeout.map_or(default_timeout, |t| t.into_inner().0);
            if timeout.is_zero() {
                self.err(
                    None,
                    format!("{path}.timeout"),
                    "timeout must be greater than 0",
                );
            }
            let offline_after = match b.offline_after {
                Some(n) if *n.get_ref() == 0 => {
                    self.err(
                        Some(n.span()),
                        format!("{path}.offline_after"),
                        "offline_after must be at least 1",
                    );
                    1
                }
                Some(n) => n.into_inner(),
                None => defaults::OFFLINE_AFTER,
            };
            let reconnect_min = b.reconnect_min.map_or(defaults::BUS_RECONNECT_MIN, |d| d.0);
            if let Some(kind) = kind {
                out.insert(
                    name.clone(),
                    Bus {
                        name,
                        kind,
                        timeout,
                        offline_after,
                        reconnect_min,
                        reconnect_max: b
                            .reconnect_max
                            .map_or(defaults::BUS_RECONNECT_MAX, |d| d.0)
                            .max(reconnect_min),
                        max_backoff: b.max_backoff.map_or(defaults::MAX_BACKOFF, |d| d.0),
                    },
                );
            }
        }
        out
    }

    /// Port settings of a serial bus; 9600 8N1 unless said otherwise.
    fn serial_port(&mut self, b: &RawBus, path: &str) -> Option<PortSettings> {
        let Some(port) = &b.port else {
            self.err(
                Some(b.driver.span()),
                format!("{path}.port"),
                format!(
                    "a {} bus needs `port = \"/dev/ttyUSB0\"` (the serial device)",
                    b.driver.get_ref()
                ),
            );
            return None;
        };
        let mut ok = true;
        if !port.get_ref().starts_with('/') {
            self.err(
                Some(port.span()),
                format!("{path}.port"),
                format!("port `{}` must be an absolute device path", port.get_ref()),
            );
            ok = false;
        }
        let parity = match &b.parity {
            None => Parity::None,
            Some(p) => match Parity::parse(p.get_ref()) {
                Ok(p) => p,
                Err(e) => {
                    self.err(Some(p.span()), format!("{path}.parity"), e);
                    ok = false;
                    Parity::None
                }
            },
        };
        let s = PortSettings {
            path: port.get_ref().clone(),
            baud: b.baud.as_ref().map_or(defaults::BAUD, |v| *v.get_ref()),
            parity,
            data_bits: b
                .data_bits
                .as_ref()
                .map_or(defaults::DATA_BITS, |v| *v.get_ref()),
            stop_bits: b.stop_bits.as_ref().map_or(1, |v| *v.get_ref()),
        };
        if let Err(e) = s.validate() {
            let (key, span) = if e.starts_with("baud") {
                ("baud", b.baud.as_ref().map(|v| v.span()))
            } else if e.starts_with("data") {
                ("data_bits", b.data_bits.as_ref().map(|v| v.span()))
            } else {
                ("stop_bits", b.stop_bits.as_ref().map(|v| v.span()))
            };
            self.err(span, format!("{path}.{key}"), e);
            ok = false;
        }
        ok.then_some(s)
    }

    fn profiles(
        &mut self,
        v: Option<&Sv<'_>>,
        declared: &mut BTreeSet<String>,
    ) -> BTreeMap<String, Profile> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        let DeValue::Table(t) = v.get_ref() else {
            self.err(
                Some(v.span()),
                "profile",
                "expected `[profile.NAME]` tables",
            );
            return out;
        };
        for (name, pv) in t.iter() {
            let name: &str = name.get_ref();
            declared.insert(name.to_string());
            let path = format!("profile.{name}");
            let DeValue::Table(pt) = pv.get_ref() else {
                self.err(Some(pv.span()), &path, "expected a table");
                continue;
            };
            let mut pt = pt.clone();
            let rule = self.take_rule(&mut pt, pv.span(), &path);
            self.profile_rule(name, rule);
            let kind = match pt.remove("kind") {
                None if ascii::looks_ascii(&pt) => ProfileKind::Ascii,
                None if pt.get("format").is_some() || pt.get("characteristic").is_some() => {
                    ProfileKind::Ble
                }
                None => ProfileKind::Modbus,
                Some(k) => match k.get_ref().as_str() {
                    Some("modbus") => ProfileKind::Modbus,
                    Some("serial-ascii") => ProfileKind::Ascii,
                    Some("exec") => ProfileKind::Exec,
                    Some("ble") => ProfileKind::Ble,
                    _ => {
                        self.err(
                            Some(k.span()),
                            format!("{path}.kind"),
                            "kind must be \"modbus\", \"serial-ascii\", \"ble\" or \"exec\"",
                        );
                        continue;
                    }
                },
            };
            if kind == ProfileKind::Ble {
                if let Some((product_id, ble, declared)) =
                    self.ble_profile(name, pt, pv.span(), &path)
                {
                    out.insert(
                        name.to_string(),
                        Profile {
                            product_id,
                            max_gap: 0,
                            points: Vec::new().into(),
                            commands: Vec::new().into(),
                            ascii: None,
                            ble: Some(ble),
                            declared: declared.into(),
                            kind,
                        },
                    );
                }
                continue;
            }
            if kind == ProfileKind::Exec {
                if let Some((product_id, declared)) = self.exec_profile(name, pt, pv.span(), &path)
                {
                    out.insert(
                        name.to_string(),
                        Profile {
                            product_id,
                            max_gap: 0,
                            points: Vec::new().into(),
                            commands: Vec::new().into(),
                            ascii: None,
                            ble: None,
                            declared: declared.into(),
                            kind,
                        },
                    );
                }
                continue;
            }
            let pt = &pt;
            if kind == ProfileKind::Ascii {
                if let Some(a) = self.ascii_profile(name, pt.clone(), pv.span(), &path) {
                    out.insert(
                        name.to_string(),
                        Profile {
                            product_id: a.product_id,
                            max_gap: 0,
                            points: Vec::new().into(),
                            commands: Vec::new().into(),
                            ascii: Some(a.profile),
                            ble: None,
                            declared: a.declared.into(),
                            kind,
                        },
                    );
                }
                continue;
            }
            let mut head = pt.clone();
            let points = head.remove("point");
            let commands = head.remove("command");
            let head_v = Spanned::new(pv.span(), DeValue::Table(head));
            let Some(raw): Option<RawProfile> = self.de(&head_v, &path) else {
                continue;
            };
            let service = raw
                .service
                .clone()
                .unwrap_or_else(|| defaults::SERVICE.into());
            let mut specs = Vec::new();
            let mut seen = BTreeSet::new();
            match &points {
                Some(pts) => {
                    let (raw_points, _) =
                        self.tables_ruled::<RawPoint>(pts, &format!("{path}.point"));
                    for (ppath, rp, rule) in raw_points {
                        let svc = rp.service.clone().unwrap_or_else(|| service.clone());
                        let (prop, min_max) = (rp.property.get_ref().clone(), (rp.min, rp.max));
                        if let Some(spec) = self.point(rp, &service, &ppath, &mut seen) {
                            specs.push(spec);
                            self.point_rule(name, &svc, &prop, rule, min_max);
                        }
                    }
                }
                None => self.err(
                    Some(pv.span()),
                    &path,
                    "a profile needs at least one `[[profile.NAME.point]]`",
                ),
            }
            let mut cmds = Vec::new();
            if let Some(cv) = &commands {
                let mut names = BTreeSet::new();
                let (raw_commands, _) = self.tables::<RawCommand>(cv, &format!("{path}.command"));
                for (cpath, rc) in raw_commands {
                    if let Some(spec) = self.command(rc, &service, &specs, &cpath, &mut names) {
                        cmds.push(spec);
                    }
                }
            }
            out.insert(
                name.to_string(),
                Profile {
                    product_id: raw.product_id.unwrap_or_else(|| name.to_string()),
                    max_gap: raw.max_gap.map_or(defaults::MAX_GAP, |g| g.into_inner()),
                    points: specs.into(),
                    commands: cmds.into(),
                    ascii: None,
                    ble: None,
                    declared: Vec::new().into(),
                    kind,
                },
            );
        }
        out
    }

    fn command(
        &mut self,
        rc: RawCommand,
        default_service: &str,
        points: &[PointSpec],
        path: &str,
        names: &mut BTreeSet<(String, String)>,
    ) -> Option<CommandSpec> {
        let service = rc.service.unwrap_or_else(|| default_service.to_string());
        if !self.command_name(names, &service, &rc.name, path) {
            return None;
        }
        let name = rc.name.get_ref().clone();
        let target = rc.point.get_ref();
        let found: Vec<usize> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                &p.property == target || format!("{}.{}", p.service, p.property) == *target
            })
            .map(|(i, _)| i)
            .collect();
        let idx = match found.as_slice() {
            [i] => *i,
            [] => {
                self.err(
                    Some(rc.point.span()),
                    format!("{path}.point"),
                    format!("no point `{target}` in this profile"),
                );
                return None;
            }
            _ => {
                self.err(
                    Some(rc.point.span()),
                    format!("{path}.point"),
                    format!("`{target}` names several points; write `service.property`"),
                );
                return None;
            }
        };
        let p = &points[idx];
        if p.table != fieldgate_modbus::Table::Coil && p.table != fieldgate_modbus::Table::Holding {
            self.err(
                Some(rc.point.span()),
                format!("{path}.point"),
                format!("point `{target}` is in the read-only {} table", p.table),
            );
            return None;
        }
        let value = match rc.value {
            Some(v) => match fieldgate_modbus::point::coerce(p, v.get_ref()) {
                Ok(v) => Some(v),
                Err((_, why)) => {
                    self.err(Some(v.span()), format!("{path}.value"), why);
                    return None;
                }
            },
            None => None,
        };
        Some(CommandSpec {
            service,
            name,
            point: idx,
            value,
        })
    }

    fn point(
        &mut self,
        rp: RawPoint,
        default_service: &str,
        path: &str,
        seen: &mut BTreeSet<(String, String)>,
    ) -> Option<PointSpec> {
        let service = rp.service.unwrap_or_else(|| default_service.to_string());
        let property = rp.property.get_ref().clone();
        if let Some(why) = fieldgate_driver::name_problem(&property) {
            self.err(
                Some(rp.property.span()),
                format!("{path}.property"),
                format!("property `{}` {why}", property.escape_debug()),
            );
        }
        if let Some(why) = fieldgate_driver::name_problem(&service) {
            self.err(
                Some(rp.property.span()),
                format!("{path}.service"),
                format!("service `{}` {why}", service.escape_debug()),
            );
        }
        if !seen.insert((service.clone(), property.clone())) {
            self.err(
                Some(rp.property.span()),
                format!("{path}.property"),
                format!("duplicate property `{service}.{property}` in this profile"),
            );
        }
        let loc = match parse_location(rp.address.get_ref()) {
            Ok(l) => Some(l),
            Err(e) => {
                self.err(Some(rp.address.span()), format!("{path}.address"), e);
                None
            }
        };
        let default_type = match loc {
            Some((t, _)) if t.is_bits() => "bool",
            _ => "u16",
        };
        let (type_str, type_span) = match &rp.dtype {
            Some(t) => (t.get_ref().as_str(), Some(t.span())),
            None => (default_type, Some(rp.address.span())),
        };
        let dtype = match DataType::parse(type_str, rp.length) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(type_span, format!("{path}.type"), e);
                None
            }
        };
        let mut order = |o: &Option<Spanned<String>>, key: &str| match o {
            Some(s) => match Order::parse(s.get_ref()) {
                Ok(o) => o,
                Err(e) => {
                    self.err(Some(s.span()), format!("{path}.{key}"), e);
                    Order::Big
                }
            },
            None => Order::Big,
        };
        let byte_order = order(&rp.byte_order, "byte_order");
        let word_order = order(&rp.word_order, "word_order");
        let ((table, address), dtype) = (loc?, dtype?);
        let spec = PointSpec {
            service,
            property,
            table,
            address,
            dtype,
            bit: rp.bit,
            byte_order,
            word_order,
            scale: rp.scale,
            offset: rp.offset,
            writable: rp.writable.unwrap_or(false),
            min: rp.min,
            max: rp.max,
        };
        let problems = spec.validate();
        for p in &problems {
            self.err(
                Some(rp.address.span()),
                format!("{path}.address"),
                p.clone(),
            );
        }
        problems.is_empty().then_some(spec)
    }

    fn devices(
        &mut self,
        v: Option<&Sv<'_>>,
        buses: &BTreeMap<String, Bus>,
        profiles: &BTreeMap<String, Profile>,
        declared: &Declared,
    ) -> Vec<Device> {
        let mut out = Vec::new();
        let Some(v) = v else { return out };
        let mut ids = BTreeSet::new();
        for (i, item) in self.array(v, "device").into_iter().enumerate() {
            let path = format!("device[{i}]");
            let (item, rule) = self.split_rule(item, &path);
            let Some(d): Option<RawDevice> = self.de(&item, &path) else {
                continue;
            };
            let node_id = d.node_id.get_ref().clone();
            if !valid_node_id(&node_id) {
                self.err(Some(d.node_id.span()), format!("{path}.node_id"), format!("node_id `{node_id}` must be 1–64 characters of letters, digits, `-`, `_`, `.`"));
            }
            if !ids.insert(node_id.clone()) {
                self.err(
                    Some(d.node_id.span()),
                    format!("{path}.node_id"),
                    format!("duplicate node_id `{node_id}`"),
                );
            }
            let bus = buses.get(d.bus.get_ref());
            if !declared.buses.contains(d.bus.get_ref()) {
                let known: Vec<&str> = declared.buses.iter().map(String::as_str).collect();
                self.err(
                    Some(d.bus.span()),
                    format!("{path}.bus"),
                    format!(
                        "no bus named `{}` (defined: {})",
                        d.bus.get_ref(),
                        list(&known)
                    ),
                );
            }
            let profile = profiles.get(d.profile.get_ref());
            if !declared.profiles.contains(d.profile.get_ref()) {
                let known: Vec<&str> = declared.profiles.iter().map(String::as_str).collect();
                self.err(
                    Some(d.profile.span()),
                    format!("{path}.profile"),
                    format!(
                        "no profile named `{}` (defined: {})",
                        d.profile.get_ref(),
                        list(&known)
                    ),
                );
            }
            let poll = match d.poll {
                Some(p) if p.get_ref().0 < Duration::from_millis(10) => {
                    self.err(
                        Some(p.span()),
                        format!("{path}.poll"),
                        "poll must be at least 10ms",
                    );
                    continue;
                }
                Some(p) => p.into_inner().0,
                None => Duration::from_secs(10),
            };
            let unit = d.unit.unwrap_or(defaults::UNIT);
            if let Some(Bus {
                kind: BusKind::ModbusRtu { .. },
                ..
            }) = bus
            {
                if !(1..=247).contains(&unit) {
                    self.err(
                        None,
                        format!("{path}.unit"),
                        format!("unit {unit} is not a Modbus RTU device address (1..=247)"),
                    );
                }
            }
            let turnaround = match d.turnaround {
                Some(t) if t.get_ref().0 > Duration::from_secs(1) => {
                    self.err(
                        Some(t.span()),
                        format!("{path}.turnaround"),
                        "turnaround must be at most 1s",
                    );
                    Duration::ZERO
                }
                Some(t) => t.into_inner().0,
                None => Duration::ZERO,
            };
            if let (Some(b), Some(p)) = (bus, profile) {
                let wants = match b.kind {
                    BusKind::SerialAscii { .. } => ProfileKind::Ascii,
                    BusKind::Exec(_) => ProfileKind::Exec,
                    BusKind::Ble { .. } => ProfileKind::Ble,
                    _ => ProfileKind::Modbus,
                };
                if wants != p.kind {
                    self.err(
                        Some(d.profile.span()),
                        format!("{path}.profile"),
                        format!(
                            "bus `{}` needs {} profile; profile `{}` describes {}",
                            b.name,
                            wants.describe(),
                            d.profile.get_ref(),
                            p.kind.describe()
                        ),
                    );
                    continue;
                }
                if d.options.is_some() && p.kind != ProfileKind::Exec {
                    self.err(
                        Some(d.node_id.span()),
                        format!("{path}.options"),
                        "`options` is for devices on an exec bus",
                    );
                }
                let ble = match (&p.ble, &d.address) {
                    (Some(bp), Some(a)) => match fieldgate_ble::spec::address(a.get_ref()) {
                        Ok(address) => Some(fieldgate_ble::BleDevice {
                            node_id: node_id.clone(),
                            address,
                            service: bp.service.clone(),
                            kind: bp.kind.clone(),
                            poll,
                            stale_after: bp.stale_after,
                        }),
                        Err(e) => {
                            self.err(Some(a.span()), format!("{path}.address"), e);
                            continue;
                        }
                    },
                    (Some(_), None) => {
                        self.err(
                            Some(d.node_id.span()),
                            format!("{path}.address"),
                            "a BLE device needs `address = \"AA:BB:CC:DD:EE:FF\"`",
                        );
                        continue;
                    }
                    (None, Some(a)) => {
                        self.err(
                            Some(a.span()),
                            format!("{path}.address"),
                            "`address` is for devices on a BLE bus",
                        );
                        continue;
                    }
                    (None, None) => None,
                };
                out.push(Device {
                    name: d.name.unwrap_or_else(|| node_id.clone()),
                    node_id,
                    bus: d.bus.into_inner(),
                    unit,
                    poll,
                    turnaround,
                    product_id: d.product_id.unwrap_or_else(|| p.product_id.clone()),
                    profile: d.profile.get_ref().clone(),
                    points: p.points.clone(),
                    max_gap: p.max_gap,
                    commands: p.commands.clone(),
                    ascii: p.ascii.clone(),
                    declared: p.declared.clone(),
                    options: d.options.clone().unwrap_or(serde_json::Value::Null),
                    ble,
                    report: self.child_rules(d.profile.get_ref(), &rule),
                });
            }
        }
        out
    }
}

/// Names defined in the file, valid or not: a bus with a bad key is still "defined", so its
/// devices do not get a second, misleading "no bus named" error.
#[derive(Default)]
struct Declared {
    buses: BTreeSet<String>,
    profiles: BTreeSet<String>,
}

struct Profile {
    product_id: String,
    max_gap: u16,
    points: Arc<[PointSpec]>,
    commands: Arc<[CommandSpec]>,
    ascii: Option<AsciiProfile>,
    ble: Option<BleProfile>,
    declared: Arc<[DeclaredCommand]>,
    kind: ProfileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileKind {
    Modbus,
    Ascii,
    Exec,
    Ble,
}

impl ProfileKind {
    fn describe(self) -> &'static str {
        match self {
            ProfileKind::Modbus => "a Modbus point map",
            ProfileKind::Ascii => "a serial instrument",
            ProfileKind::Exec => "an external-driver (exec) device",
            ProfileKind::Ble => "a BLE device",
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn valid_endpoint(e: &str) -> bool {
    match e.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests;

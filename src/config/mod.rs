//! Configuration: one TOML file, read into typed settings with every problem reported at once.
//!
//! The file is parsed with spans, then each table — and each bus, profile point and device on
//! its own — is deserialised separately, so one mistake does not hide the next. After the shape
//! is right, cross-checks run (duplicate node ids, a device naming a missing bus or profile, a
//! point that does not fit its table). Every problem becomes a [`Diagnostic`] with line, column
//! and key path; `fieldgate check` prints them all and `run` refuses to start (exit 78).

mod ascii;
mod ble;
mod buses;
pub mod defaults;
mod devices;
mod duration;
mod exec;
mod local;
mod params;
mod platform;
mod profiles;
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
use fieldgate_port::{Parity, PortSettings, SettingsError};
use fieldgate_serial::frame::Framing;

pub use ascii::AsciiProfile;
pub use ble::BleProfile;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use duration::{Dur, DurationError};
pub use remote::{Remote, OPERATIONS};
use schema::*;
pub use size::{Size, SizeError};

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
    /// The delivery window (config key `inflight`): data messages published and not yet
    /// acknowledged, at most. Not the MQTT client's own limit (window + room for answers).
    pub data_window: u16,
    /// The delivery window in payload bytes (config key `inflight_bytes`): data messages are
    /// published only while less than this is unacknowledged (one always goes).
    pub data_window_bytes: usize,
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
    pub poll: Duration,
    pub product_id: String,
    pub profile: String,
    /// How its readings are reported (resolved gateway → profile → device → point).
    pub report: Arc<crate::report::ChildRules>,
    /// What its driver needs to know about it, and only that.
    pub kind: DeviceKind,
}

/// One child as its driver sees it: the fields of one kind of bus, never another's.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceKind {
    /// On a Modbus TCP or RTU bus.
    Modbus {
        unit: u8,
        /// Extra silence before each request to this device (RTU).
        turnaround: Duration,
        points: Arc<[PointSpec]>,
        max_gap: u16,
        /// Commands declared in the profile (point writes by name).
        commands: Arc<[CommandSpec]>,
    },
    /// A serial instrument: its model, and its template commands.
    Ascii {
        instrument: AsciiProfile,
        declared: Arc<[DeclaredCommand]>,
    },
    /// A child of an external driver program: options handed over verbatim.
    Exec {
        options: serde_json::Value,
        declared: Arc<[DeclaredCommand]>,
    },
    /// A BLE sensor: address, advertisement format or GATT map.
    Ble {
        device: fieldgate_ble::BleDevice,
        declared: Arc<[DeclaredCommand]>,
    },
}

impl Device {
    /// Modbus points (none for other kinds): what the platform may read and write by name.
    pub fn points(&self) -> Arc<[PointSpec]> {
        match &self.kind {
            DeviceKind::Modbus { points, .. } => points.clone(),
            _ => Arc::from([]),
        }
    }

    /// Modbus commands declared in the profile (none for other kinds).
    pub fn commands(&self) -> Arc<[CommandSpec]> {
        match &self.kind {
            DeviceKind::Modbus { commands, .. } => commands.clone(),
            _ => Arc::from([]),
        }
    }

    /// Commands with typed parameters (serial instruments, exec children, BLE writes).
    pub fn declared(&self) -> Arc<[DeclaredCommand]> {
        match &self.kind {
            DeviceKind::Modbus { .. } => Arc::from([]),
            DeviceKind::Ascii { declared, .. }
            | DeviceKind::Exec { declared, .. }
            | DeviceKind::Ble { declared, .. } => declared.clone(),
        }
    }
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
            let names: Vec<&str> = match &d.kind {
                DeviceKind::Ascii { instrument, .. } => instrument
                    .0
                    .fields
                    .iter()
                    .map(|f| f.property.as_str())
                    .collect(),
                DeviceKind::Modbus { points, .. } => {
                    points.iter().map(|p| p.property.as_str()).collect()
                }
                DeviceKind::Exec { .. } | DeviceKind::Ble { .. } => Vec::new(),
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
            let (DeviceKind::Ascii { instrument: a, .. }, Some(bus)) =
                (&d.kind, self.buses.iter().find(|b| b.name == d.bus))
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
        message: impl std::fmt::Display,
    ) {
        let (line, column) = span.map_or((1, 1), |s| self.pos(s.start));
        self.diags.push(Diagnostic {
            line,
            column,
            path: path.into(),
            message: message.to_string(),
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

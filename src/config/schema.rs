//! The TOML schema as serde sees it: one struct per table, every key documented in
//! `config/example.toml`. Unknown keys are errors (`deny_unknown_fields`) so a typo never
//! silently falls back to a default. Fields that later checks must point at are `Spanned`.

use serde::Deserialize;
use toml::Spanned;

use super::duration::Dur;
use super::size::Size;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub log_level: Option<Spanned<String>>,
    /// Where the control socket lives.
    #[serde(default)]
    pub runtime_dir: Option<String>,
    /// How often the gateway reports its own properties.
    #[serde(default)]
    pub report_interval: Option<Spanned<Dur>>,
    /// `auto`, `journald` or `stderr`.
    #[serde(default)]
    pub log_target: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    pub dialect: Spanned<String>,
    pub host: Spanned<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Mutual TLS: the client certificate chain and its private key (PEM files).
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,
    /// ThingsBoard basic MQTT credentials: the username (the secret is the password).
    #[serde(default)]
    pub username: Option<Spanned<String>>,
    pub device_id: Spanned<String>,
    /// AllThingsTalk: the account (client) id that owns the gateway.
    #[serde(default)]
    pub account: Option<Spanned<String>>,
    /// Sparkplug B: the group the edge node belongs to.
    #[serde(default)]
    pub group_id: Option<Spanned<String>>,
    /// Sparkplug B: metric aliases (births name and alias, data the alias only).
    #[serde(default)]
    pub aliases: Option<Spanned<bool>>,
    /// Sparkplug B: the Primary Host application whose STATE gates births and data.
    #[serde(default)]
    pub primary_host_id: Option<Spanned<String>>,
    /// Sparkplug B: the MQTT QoS of births, data and DDEATH, 0 (the specification's) or 1.
    #[serde(default)]
    pub qos: Option<Spanned<i64>>,
    /// ThingsBoard: telemetry and attribute keys, `"property"` (default) or
    /// `"service.property"` (for profiles whose services share property names).
    #[serde(default)]
    pub keys: Option<Spanned<String>>,
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    #[serde(default)]
    pub check_timestamp: Option<bool>,
    #[serde(default)]
    pub keepalive: Option<Spanned<Dur>>,
    #[serde(default)]
    pub reconnect_min: Option<Dur>,
    #[serde(default)]
    pub reconnect_max: Option<Dur>,
    /// How long one connection attempt (TCP, TLS, CONNECT/CONNACK) may take.
    #[serde(default)]
    pub connect_timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    pub inflight: Option<Spanned<u16>>,
    #[serde(default)]
    pub max_packet: Option<Spanned<u32>>,
    #[serde(default)]
    pub command_timeout: Option<Spanned<Dur>>,
    /// Data messages per second at most (0 = unlimited).
    #[serde(default)]
    pub replay_rate: Option<u32>,
    /// Data bytes per second at most (0 = unlimited).
    #[serde(default)]
    pub replay_bytes_rate: Option<Size>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub commit_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    pub max_bytes: Option<Spanned<Size>>,
    #[serde(default)]
    pub max_priority_bytes: Option<Spanned<Size>>,
    #[serde(default)]
    pub max_age: Option<Spanned<Dur>>,
    /// `normal` or `full`.
    #[serde(default)]
    pub synchronous: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub name: Spanned<String>,
    pub driver: Spanned<String>,
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    pub offline_after: Option<Spanned<u32>>,
    #[serde(default)]
    pub reconnect_min: Option<Dur>,
    #[serde(default)]
    pub reconnect_max: Option<Dur>,
    #[serde(default)]
    pub max_backoff: Option<Dur>,
    /// Serial buses: the device path, e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub port: Option<Spanned<String>>,
    #[serde(default)]
    pub baud: Option<Spanned<u32>>,
    /// `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Option<Spanned<String>>,
    #[serde(default)]
    pub data_bits: Option<Spanned<u8>>,
    #[serde(default)]
    pub stop_bits: Option<Spanned<u8>>,
    /// Modbus RTU: how long late bytes are discarded after a failed exchange.
    #[serde(default)]
    pub settle: Option<Spanned<Dur>>,
    /// Serial instruments: frames end with this (default "\n")…
    #[serde(default)]
    pub terminator: Option<Spanned<String>>,
    /// …or have this fixed length…
    #[serde(default)]
    pub length: Option<Spanned<usize>>,
    /// …or run from `start` to `end`.
    #[serde(default)]
    pub start: Option<Spanned<String>>,
    #[serde(default)]
    pub end: Option<Spanned<String>>,
    /// Longest frame kept (longer ones are counted and skipped).
    #[serde(default)]
    pub max_frame: Option<Spanned<usize>>,
    /// Exec: the program and its arguments.
    #[serde(default)]
    pub command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub env: Option<Env>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub max_line: Option<Spanned<usize>>,
    /// Exec: distinct property names one child may report (default 1024).
    #[serde(default)]
    pub max_properties: Option<Spanned<usize>>,
    #[serde(default)]
    pub stop_grace: Option<Spanned<Dur>>,
    /// BLE: the adapter (`hci0`); default BlueZ's default adapter.
    #[serde(default)]
    pub adapter: Option<Spanned<String>>,
}

/// A profile without its points (they are read one by one, so each gets its own errors).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub max_gap: Option<Spanned<u16>>,
    /// Informational only (for people reading the file).
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub property: Spanned<String>,
    #[serde(default)]
    pub service: Option<String>,
    pub address: Spanned<String>,
    #[serde(rename = "type", default)]
    pub dtype: Option<Spanned<String>>,
    #[serde(default)]
    pub length: Option<u16>,
    #[serde(default)]
    pub bit: Option<u8>,
    #[serde(default)]
    pub byte_order: Option<Spanned<String>>,
    #[serde(default)]
    pub word_order: Option<Spanned<String>>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, informational (the platform's product model owns units).
    #[serde(default)]
    #[allow(dead_code)]
    pub unit: Option<String>,
    #[serde(default)]
    pub writable: Option<bool>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub node_id: Spanned<String>,
    pub bus: Spanned<String>,
    pub profile: Spanned<String>,
    #[serde(default)]
    pub unit: Option<u8>,
    #[serde(default)]
    pub poll: Option<Spanned<Dur>>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub product_id: Option<String>,
    /// Modbus RTU: extra silence before each request to this device.
    #[serde(default)]
    pub turnaround: Option<Spanned<Dur>>,
    /// Exec: handed to the program verbatim.
    #[serde(default)]
    pub options: Option<serde_json::Value>,
    /// BLE: the device's address.
    #[serde(default)]
    pub address: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    pub name: Spanned<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// The property (or `service.property`) of the point it writes.
    pub point: Spanned<String>,
    /// A fixed value; without it the platform's `paras.value` is written.
    #[serde(default)]
    pub value: Option<Spanned<serde_json::Value>>,
}

/// Environment given to an exec bus's program.
pub type Env = std::collections::BTreeMap<String, String>;

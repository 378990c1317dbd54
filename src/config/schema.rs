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
    /// A name for this gateway in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// `error`, `warn`, `info`, `debug` or `trace` (RUST_LOG overrides).
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
    /// The platform protocol: `iotda`, `thingsboard`, `sparkplug`, `allthingstalk`, `oceanconnect`.
    pub dialect: Spanned<String>,
    /// The broker's host name or address.
    pub host: Spanned<String>,
    /// The broker's port (8883 by default).
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS on or off; on unless turned off explicitly.
    #[serde(default)]
    pub tls: Option<bool>,
    /// PEM file of the CAs to trust instead of the system's root store.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Mutual TLS: the client certificate chain and its private key (PEM files).
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,
    /// Mutual TLS: the client certificate's private key (PEM; never logged).
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,
    /// ThingsBoard basic MQTT credentials: the username (the secret is the password).
    #[serde(default)]
    pub username: Option<Spanned<String>>,
    /// The gateway's own id on the platform (part of every dialect's topics).
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
    /// The device secret inline (a `secret_file` is what belongs in the field).
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    /// A file holding the device secret, read on every connection attempt.
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    /// IoTDA: the client id asks the platform to check the timestamp.
    #[serde(default)]
    pub check_timestamp: Option<bool>,
    /// MQTT keepalive, 30 s..1200 s.
    #[serde(default)]
    pub keepalive: Option<Spanned<Dur>>,
    /// The shortest pause before a reconnect attempt.
    #[serde(default)]
    pub reconnect_min: Option<Dur>,
    /// The longest pause between reconnect attempts.
    #[serde(default)]
    pub reconnect_max: Option<Dur>,
    /// How long one connection attempt (TCP, TLS, CONNECT/CONNACK) may take.
    #[serde(default)]
    pub connect_timeout: Option<Spanned<Dur>>,
    /// Data messages published and not yet acknowledged, at most.
    #[serde(default)]
    pub inflight: Option<Spanned<u16>>,
    /// Data payload bytes published and not yet acknowledged, at most.
    #[serde(default)]
    pub inflight_bytes: Option<Spanned<Size>>,
    /// The largest MQTT packet sent or accepted, in bytes.
    #[serde(default)]
    pub max_packet: Option<Spanned<u32>>,
    /// A platform request's deadline on the bus.
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
    /// The queue's SQLite file.
    #[serde(default)]
    pub path: Option<String>,
    /// The group-commit window: events arriving within it share one transaction.
    #[serde(default)]
    pub commit_interval: Option<Spanned<Dur>>,
    /// The queue's size bound; beyond it the oldest telemetry is dropped and counted.
    #[serde(default)]
    pub max_bytes: Option<Spanned<Size>>,
    /// Room kept for status changes beyond `max_bytes`.
    #[serde(default)]
    pub max_priority_bytes: Option<Spanned<Size>>,
    /// Records older than this (in queue time) are dropped and counted.
    #[serde(default)]
    pub max_age: Option<Spanned<Dur>>,
    /// `normal` or `full`.
    #[serde(default)]
    pub synchronous: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    /// The bus's name, unique; devices name it.
    pub name: Spanned<String>,
    /// `modbus-tcp`, `modbus-rtu`, `serial-ascii`, `ble` or `exec`.
    pub driver: Spanned<String>,
    /// Modbus TCP: `host:port` of the server or gateway.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// How long one request may take before the device counts as not answering.
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    /// Failed polls in a row before a device is reported OFFLINE.
    #[serde(default)]
    pub offline_after: Option<Spanned<u32>>,
    /// The shortest pause before the bus reconnects.
    #[serde(default)]
    pub reconnect_min: Option<Dur>,
    /// The longest pause between the bus's reconnect attempts.
    #[serde(default)]
    pub reconnect_max: Option<Dur>,
    /// An OFFLINE device is polled at most this rarely.
    #[serde(default)]
    pub max_backoff: Option<Dur>,
    /// Serial buses: the device path, e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub port: Option<Spanned<String>>,
    /// Serial buses: the line speed.
    #[serde(default)]
    pub baud: Option<Spanned<u32>>,
    /// `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Option<Spanned<String>>,
    /// Serial buses: 7 or 8 data bits.
    #[serde(default)]
    pub data_bits: Option<Spanned<u8>>,
    /// Serial buses: 1 or 2 stop bits.
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
    /// …to the `end` bytes.
    #[serde(default)]
    pub end: Option<Spanned<String>>,
    /// Longest frame kept (longer ones are counted and skipped).
    #[serde(default)]
    pub max_frame: Option<Spanned<usize>>,
    /// Exec: the program and its arguments.
    #[serde(default)]
    pub command: Option<Spanned<Vec<String>>>,
    /// Exec: the program's environment (its values are secrets to `config_get`).
    #[serde(default)]
    pub env: Option<Env>,
    /// Exec: the program's working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Exec: the longest line the program may write; longer ones are counted and skipped.
    #[serde(default)]
    pub max_line: Option<Spanned<usize>>,
    /// Exec: distinct property names one child may report (default 1024).
    #[serde(default)]
    pub max_properties: Option<Spanned<usize>>,
    /// Exec: how long the program has to exit after SIGTERM (at most 20 s).
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
    /// The platform product id of children of this model (default: the profile's name).
    #[serde(default)]
    pub product_id: Option<String>,
    /// The default service of the points below.
    #[serde(default)]
    pub service: Option<String>,
    /// Unused registers or bits a read may bridge to save a round trip.
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
    /// The property name on the platform.
    pub property: Spanned<String>,
    /// The point's service, when not the profile's.
    #[serde(default)]
    pub service: Option<String>,
    /// `table:address`, 0-based: `coil:N`, `discrete:N`, `input:N`, `holding:N`.
    pub address: Spanned<String>,
    /// The value's type: `bool`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64`, `string`.
    #[serde(rename = "type", default)]
    pub dtype: Option<Spanned<String>>,
    /// Strings: the length in registers.
    #[serde(default)]
    pub length: Option<u16>,
    /// `bool` in a register: which bit (0 = least significant).
    #[serde(default)]
    pub bit: Option<u8>,
    /// Byte order inside a register: `big` or `little`.
    #[serde(default)]
    pub byte_order: Option<Spanned<String>>,
    /// Word order across registers: `big` or `little`.
    #[serde(default)]
    pub word_order: Option<Spanned<String>>,
    /// Engineering value = raw × scale + offset.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Engineering value = raw × scale + offset.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, informational (the platform's product model owns units).
    #[serde(default)]
    #[allow(dead_code)]
    pub unit: Option<String>,
    /// The platform may write it (property set), within `min`..`max`.
    #[serde(default)]
    pub writable: Option<bool>,
    /// The smallest value a write may set (engineering units); also the span's low end for `deadband_percent`.
    #[serde(default)]
    pub min: Option<f64>,
    /// The largest value a write may set (engineering units); also the span's high end for `deadband_percent`.
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// The child's stable id on this gateway (the platform's node id).
    pub node_id: Spanned<String>,
    /// The bus it hangs on.
    pub bus: Spanned<String>,
    /// Its device model.
    pub profile: Spanned<String>,
    /// Modbus unit id (on RTU, the device address).
    #[serde(default)]
    pub unit: Option<u8>,
    /// The poll period (fixed rate, at least 10 ms).
    #[serde(default)]
    pub poll: Option<Spanned<Dur>>,
    /// Its display name on the platform (default: the node id).
    #[serde(default)]
    pub name: Option<String>,
    /// The product id for this device only (default: the profile's).
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
    /// The platform's command name.
    pub name: Spanned<String>,
    /// The command's service, when not the profile's.
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

//! Every default of the config file in one place, each with what it is for. `config/example.toml`
//! and the README say the same values; changing one here changes behaviour for every gateway
//! whose file leaves the key out.

use std::time::Duration;

/// `[gateway] name`, the gateway's own name in logs and status. Default: `"fieldgate"`.
pub const GATEWAY_NAME: &str = "fieldgate";
/// `[gateway] runtime_dir`, where the control socket lives (the unit's `RuntimeDirectory`).
/// Default: `"/run/fieldgate"`.
pub const RUNTIME_DIR: &str = "/run/fieldgate";

/// `[gateway] report_interval`: the gateway's own properties and health. Default: 60 s.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// `[platform] port`. Default: 8883, MQTT over TLS (TLS is on unless `tls = false`).
pub const PORT: u16 = 8883;
/// `[platform] tls`. Default: on, whatever the port: credentials never go in the clear unless
/// the file says so.
pub const TLS: bool = true;
/// `[platform] reconnect_min`: the first retry after a lost connection (jittered).
/// Default: 1 s.
pub const RECONNECT_MIN: Duration = Duration::from_secs(1);
/// `[platform] reconnect_max`: the longest pause between attempts (jittered down to half).
/// Short enough that data flows within seconds of a broker's return, long enough that a fleet
/// of gateways spreads its reconnects over several seconds. Default: 6 s.
pub const RECONNECT_MAX: Duration = Duration::from_secs(6);
/// `[platform] connect_timeout`: one attempt (TCP, TLS, CONNECT/CONNACK) at most.
/// Default: 30 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// `[platform] keepalive`. Default: 120 s.
pub const KEEPALIVE: Duration = Duration::from_secs(120);
/// `[platform] inflight`: data messages published and not yet acknowledged. Default: 32.
pub const INFLIGHT: u16 = 32;
/// `[platform] inflight_bytes`: data payload published and not yet acknowledged; one message
/// always goes. Default: 1 MiB (a 600 ms round trip still carries about 1.7 MB/s).
pub const INFLIGHT_BYTES: u64 = 1 << 20;
/// `[platform] qos` (Sparkplug B): the MQTT QoS of births, data and DDEATH — the
/// specification's 0, each message proven by a later SUBACK before its readings leave the
/// queue. Default: 0.
pub const SPARKPLUG_QOS: u8 = 0;
/// `[platform] max_packet`: the largest MQTT packet sent or accepted, bytes. Default: 256 KiB.
pub const MAX_PACKET: usize = 256 * 1024;
/// `[platform] command_timeout`: a platform request's deadline on the bus (under IoTDA's
/// 20 s). Default: 10 s.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// `[platform] replay_rate`: backlog records per second after a reconnect (live data is not
/// paced). Default: 200.
pub const REPLAY_RATE: u32 = 200;
/// `[platform] replay_bytes_rate`: backlog bytes per second. Default: 1 MiB.
pub const REPLAY_BYTES_RATE: u64 = 1 << 20;

/// `[store] path`, the one SQLite file (the unit's `StateDirectory`).
/// Default: `"/var/lib/fieldgate/fieldgate.db"`.
pub const STORE_PATH: &str = "/var/lib/fieldgate/fieldgate.db";

/// `[store] commit_interval`: the group commit window (what a power cut can lose).
/// Default: 50 ms.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// `[store] max_bytes`: record bodies in the queue. Default: 256 MiB.
pub const MAX_BYTES: u64 = 256 << 20;
/// `[store] max_priority_bytes`: status changes and other priority rows. Default: 16 MiB.
pub const MAX_PRIORITY_BYTES: u64 = 16 << 20;
/// `[store] max_age`. Default: 7 days.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// `[[bus]] timeout` for one request (Modbus, serial). Default: 1 s.
pub const BUS_TIMEOUT: Duration = Duration::from_secs(1);
/// `[[bus]] timeout` on a BLE bus: a BLE connection takes seconds. Default: 10 s.
pub const BLE_TIMEOUT: Duration = Duration::from_secs(10);
/// `[[bus]] offline_after`: failed polls in a row before a device is OFFLINE. Default: 3.
pub const OFFLINE_AFTER: u32 = 3;
/// `[[bus]] reconnect_min`: the first pause after a bus connection failed. Default: 500 ms.
pub const BUS_RECONNECT_MIN: Duration = Duration::from_millis(500);
/// `[[bus]] reconnect_max`: the longest such pause. Default: 30 s.
pub const BUS_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// `[[bus]] max_backoff`: an OFFLINE device is polled at least this often. Default: 60 s.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// `[[bus]] reconnect_min` of an exec bus: the first restart pause of its program.
/// Default: 1 s.
pub const EXEC_RESTART_MIN: Duration = Duration::from_secs(1);
/// `[[bus]] reconnect_max` of an exec bus: the longest restart pause. Default: 60 s.
pub const EXEC_RESTART_MAX: Duration = Duration::from_secs(60);
/// `[[bus]] baud` of a serial line. Default: 9600.
pub const BAUD: u32 = 9600;
/// `[[bus]] data_bits`. Default: 8.
pub const DATA_BITS: u8 = 8;

/// `[profile.NAME] service`, the platform service a profile's values are reported under.
/// Default: `"data"`.
pub const SERVICE: &str = "data";
/// `[profile.NAME] max_gap`: unused registers one Modbus read may span to cover two points.
/// Default: 8.
pub const MAX_GAP: u16 = 8;

/// `[[device]] unit`, the Modbus unit id. Default: 1.
pub const UNIT: u8 = 1;
/// `report` (every level): when a polled value becomes a record. Default: every reading
/// (`always`); Sparkplug B: `on_change` (its report by exception).
pub const REPORT_STRATEGY: crate::report::Strategy = crate::report::Strategy::Always;
/// `[remote] rollback_after`: how long an applied config has to bring the uplink back before
/// the previous one is restored. Default: 120 s.
pub const ROLLBACK_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

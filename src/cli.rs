//! The command line: `run` (the service), `check` (validate a config), and their options.
//! Parsing only; what each subcommand does lives with the rest of the binary edge in `main.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Exit code for a bad configuration (sysexits EX_CONFIG): systemd must not restart-loop on it.
pub const EX_CONFIG: i32 = 78;
/// Exit code when another instance holds the store (sysexits EX_TEMPFAIL).
pub const EX_TEMPFAIL: i32 = 75;
/// sysexits' EX_CANTCREAT: the store cannot be used for a reason only the operator can fix
/// (ownership, permissions, a read-only path); the unit does not restart on it.
pub const EX_CANTCREAT: i32 = 73;
/// sysexits' EX_IOERR: the store failed with another I/O error (a full disk, say); restarted.
pub const EX_IOERR: i32 = 74;

fn parse_duration(s: &str) -> Result<std::time::Duration, crate::config::DurationError> {
    crate::config::Dur::parse(s)
}

#[derive(Debug, Parser)]
#[command(
    name = "fieldgate",
    version,
    about = "Edge gateway: field devices to an IoT platform over MQTT, with a durable store-and-forward queue"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the gateway (what the systemd service starts).
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Run everything on loopback with nothing installed: an embedded broker, simulated
    /// Modbus devices, the real drivers, queue and uplink, and a view of what the platform gets.
    Demo {
        /// Stop after this long (e.g. "10s"); default: until Ctrl-C.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Ask the running daemon for its state: uplink, queue, every child with its last values.
    Status {
        /// Configuration file (to find the runtime directory).
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The control socket, when not the one the config names.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the raw JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Field probes for Modbus wiring checks, before a config exists.
    Modbus {
        #[command(subcommand)]
        probe: ModbusProbe,
    },
    /// Field probes for serial lines.
    Serial {
        #[command(subcommand)]
        probe: SerialProbe,
    },
    /// Field probes for BLE sensors (BlueZ), before a config exists.
    Ble {
        #[command(subcommand)]
        probe: BleProbe,
    },
    /// Validate a configuration file and print every problem with its line and column.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// Where a Modbus probe goes: a TCP endpoint, or an RTU serial line.
#[derive(Debug, clap::Args)]
pub struct Line {
    /// `host:port` of a Modbus TCP server or gateway.
    #[arg(long, required_unless_present = "port", conflicts_with = "port")]
    pub endpoint: Option<String>,
    /// Modbus RTU: the serial device, e.g. /dev/ttyUSB0.
    #[arg(long)]
    pub port: Option<String>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// none, even or odd.
    #[arg(long, default_value = "none")]
    pub parity: String,
    #[arg(long, default_value_t = 8)]
    pub data_bits: u8,
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
}

#[derive(Debug, Subcommand)]
pub enum ModbusProbe {
    /// Read registers or bits once and decode them as the daemon would.
    Read {
        #[command(flatten)]
        line: Line,
        /// Unit id (slave address).
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// `table:address`, 0-based: coil:N, discrete:N, input:N, holding:N.
        #[arg(long)]
        address: String,
        /// Type: bool, u16, i16, u32, i32, u64, i64, f32, f64, string.
        #[arg(long = "type", default_value = "u16")]
        dtype: String,
        /// Items to read (at least what the type needs); the raw words are printed.
        #[arg(long, default_value_t = 1)]
        count: u16,
        /// String length in registers.
        #[arg(long)]
        length: Option<u16>,
        /// big or little.
        #[arg(long, default_value = "big")]
        byte_order: String,
        /// big or little.
        #[arg(long, default_value = "big")]
        word_order: String,
        #[arg(long)]
        scale: Option<f64>,
        #[arg(long)]
        offset: Option<f64>,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Find which unit ids answer on a bus.
    Scan {
        #[command(flatten)]
        line: Line,
        /// Unit ids: `1-247`, `1,2,10-20`.
        #[arg(long, default_value = "1-247")]
        units: String,
        /// What to ask each unit for.
        #[arg(long, default_value = "holding:0")]
        address: String,
        #[arg(long, default_value = "300ms", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum BleProbe {
    /// Listen for advertisements and list every device heard, decoded like the daemon would.
    Scan {
        /// The adapter, e.g. hci0; default: BlueZ's default adapter.
        #[arg(long)]
        adapter: Option<String>,
        /// How long to listen.
        #[arg(long = "for", default_value = "10s", value_parser = parse_duration)]
        duration: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum SerialProbe {
    /// Show what goes over a serial line: frames split on silence, with timestamps, hex and ASCII.
    Sniff {
        /// The serial device, e.g. /dev/ttyUSB0.
        #[arg(long)]
        port: String,
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// none, even or odd.
        #[arg(long, default_value = "none")]
        parity: String,
        #[arg(long, default_value_t = 8)]
        data_bits: u8,
        #[arg(long, default_value_t = 1)]
        stop_bits: u8,
        /// Silence that ends a frame; default 3.5 character times (the Modbus RTU gap).
        #[arg(long, value_parser = parse_duration)]
        gap: Option<std::time::Duration>,
        /// Stop after this long; default: until Ctrl-C.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
    },
}

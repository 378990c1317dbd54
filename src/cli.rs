//! The command line: `run` (the service), `check` (validate a config), and their options.
//! Parsing only; what each subcommand does lives with the rest of the binary edge in `main.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Exit code for a bad configuration (sysexits EX_CONFIG): systemd must not restart-loop on it.
pub const EX_CONFIG: i32 = 78;

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
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
    /// Validate a configuration file and print every problem with its line and column.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

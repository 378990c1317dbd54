//! The `fieldgate` binary: parse the command line, set up logging, hand over to the library.
//! This is the only place that decides exit codes.

use std::process::ExitCode;

use clap::Parser;
use fieldgate::cli::{Cli, Cmd, EX_CANTCREAT, EX_CONFIG, EX_IOERR, EX_TEMPFAIL};
use fieldgate::config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => match config::load(&config) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!(
                    "{}: OK ({} buses, {} devices, platform {}:{})",
                    config.display(),
                    c.buses.len(),
                    c.devices.len(),
                    c.platform.host,
                    c.platform.port
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{}: {} problem(s)", config.display(), e.diagnostics.len());
                ExitCode::from(EX_CONFIG as u8)
            }
        },
        Cmd::Status {
            config,
            socket,
            json,
        } => {
            let socket = socket.unwrap_or_else(|| {
                let dir = fieldgate::config::load(&config)
                    .map(|c| c.gateway.runtime_dir)
                    .unwrap_or_else(|_| "/run/fieldgate".into());
                dir.join(fieldgate::control::SOCKET_NAME)
            });
            match fieldgate::control::query(&socket) {
                Ok(j) if json => {
                    println!("{j}");
                    ExitCode::SUCCESS
                }
                Ok(j) => {
                    println!("{}", fieldgate::control::render(&j));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fieldgate status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Modbus { probe } => match fieldgate::probe::modbus(probe) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fieldgate modbus: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Ble { probe } => match fieldgate::probe::ble(probe) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fieldgate ble: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Serial { probe } => match fieldgate::probe::serial(probe) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fieldgate serial: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Demo { duration } => match fieldgate::demo::run(duration) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fieldgate demo: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config } => match fieldgate::daemon::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(fieldgate::daemon::RunError::Config(e)) => {
                eprintln!("{e}");
                eprintln!(
                    "refusing to start: {} problem(s) in {}",
                    e.diagnostics.len(),
                    config.display()
                );
                ExitCode::from(EX_CONFIG as u8)
            }
            Err(fieldgate::daemon::RunError::RestartRequested) => {
                ExitCode::from(fieldgate::daemon::EXIT_RESTART)
            }
            Err(e @ fieldgate::daemon::RunError::AlreadyRunning(_)) => {
                eprintln!("fieldgate: {e}");
                ExitCode::from(EX_TEMPFAIL as u8)
            }
            Err(fieldgate::daemon::RunError::Store(e)) => {
                eprintln!("fieldgate: store: {e}");
                ExitCode::from(if e.is_access() {
                    EX_CANTCREAT
                } else {
                    EX_IOERR
                } as u8)
            }
            Err(e) => {
                eprintln!("fieldgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

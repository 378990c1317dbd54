//! Serial lines for fieldgate: port settings as the config and CLI name them, opening a port
//! with tokio-serial, and the sniffer behind `fieldgate serial sniff` — bytes grouped into
//! frames by line silence, shown as timestamped hex and ASCII. The serial-instrument and
//! Modbus RTU drivers build on the same settings and opening code.

pub mod port;
pub mod sniff;

pub use port::{open, Parity, PortSettings};

//! Serial lines for fieldgate: port settings as the config and CLI name them, opening a port
//! with tokio-serial, the sniffer behind `fieldgate serial sniff` (bytes grouped into frames by
//! line silence), and the serial-instrument driver for ASCII devices — framing, checksums,
//! field extraction, and the bus task. The Modbus RTU driver builds on the same settings and
//! opening code.

pub mod frame;
pub mod instrument;
pub mod parse;
pub mod port;
pub mod sniff;
#[cfg(feature = "testing")]
pub mod testing;

pub use instrument::{AsciiBus, AsciiDevice, Instrument, SerialAsciiDriver, TemplateCommand};
pub use port::{open, Parity, PortSettings};
pub use regex::Regex;

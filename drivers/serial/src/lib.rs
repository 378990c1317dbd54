//! Serial lines for fieldgate: port settings as the config and CLI name them, opening a port
//! with tokio-serial, the sniffer behind `fieldgate serial sniff` (bytes grouped into frames by
//! line silence), and the serial-instrument driver for ASCII devices — framing, checksums,
//! field extraction, and the bus task. Port settings and opening live in `fieldgate-port`
//! (re-exported here), shared with the Modbus RTU driver.

pub mod frame;
pub mod instrument;
pub mod parse;
pub mod sniff;
#[cfg(feature = "testing")]
pub mod testing;

pub use fieldgate_port::{open, Parity, PortError, PortSettings, SettingsError};
pub use instrument::{AsciiBus, AsciiDevice, Instrument, SerialAsciiDriver, TemplateCommand};
pub use regex::Regex;

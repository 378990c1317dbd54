//! External drivers: for a device no built-in driver covers, an operator's program (any
//! language) is started by fieldgate and speaks newline-delimited JSON over its stdin and
//! stdout (the protocol is in `drivers/exec/README.md`). `protocol` is the message model and
//! its validation; `driver` is the bus task that runs the program, restarts it with backoff,
//! bounds what it may send, and stops it on shutdown.

pub mod driver;
pub mod protocol;

pub use driver::{ExecBus, ExecDevice, ExecDriver, DEFAULT_MAX_PROPERTIES};

//! Modbus driver family for fieldgate.
//!
//! `point` is the point model (table, address, type, order, scaling) shared with the daemon's
//! config checker; `plan` merges a device's points into the fewest read requests; `codec`
//! turns registers into typed values and back; `driver` is the bus task that polls devices
//! over Modbus TCP or RTU on fixed-rate schedules and executes writes.

pub mod codec;
pub mod driver;
pub mod plan;
pub mod point;
pub mod probe;

pub use driver::{BusSpec, DeviceSpec, ModbusDriver, Transport};
pub use point::{CommandSpec, DataType, Order, PointSpec, Table};

//! BLE sensors for fieldgate. `decode` holds the advertisement decoders (always built, pure);
//! with the `bluez` feature, `driver` is the bus task that scans one adapter through BlueZ over
//! D-Bus (bluer) — advertisement sensors keyed by address, and GATT devices that are connected,
//! read, subscribed to and written — and `scan` is the one-shot scanner behind `fieldgate ble
//! scan`.

pub mod decode;
#[cfg(feature = "bluez")]
pub mod driver;
#[cfg(feature = "bluez")]
pub mod scan;
pub mod spec;
#[cfg(all(feature = "bluez", feature = "testing"))]
pub mod testing;

pub use decode::Format;
pub use spec::{BleBus, BleDevice, GattChar, GattCommand, Kind};

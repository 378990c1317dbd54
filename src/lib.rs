//! fieldgate: an edge gateway daemon. Field devices are read by drivers, every reading is kept
//! in a durable queue, and one MQTT session delivers them to an IoT platform on behalf of the
//! gateway and all of its child devices. See `DESIGN.md` in the shared folder for the map.

pub mod cli;
pub mod command;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod instance;
pub mod logring;
pub mod memory;
pub mod metrics;
pub mod probe;
pub mod queue;
pub mod registry;
pub mod remote;
pub mod report;
pub mod router;
pub mod service;
pub mod store;
pub mod supervisor;
pub mod uplink;

//! Counters every part of the daemon updates and the status API reads: deliveries, drops by
//! reason (never silent), rejected platform messages, and the uplink's state.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    pub uplink_connected: AtomicBool,
    pub uplink_error: Mutex<String>,
    pub connects: AtomicU64,
    /// Records acknowledged by the broker and removed from the queue.
    pub delivered: AtomicU64,
    /// Records dropped because their stored body could not be read.
    pub dropped_corrupt: AtomicU64,
    /// Records dropped because their child is no longer configured.
    pub dropped_orphan: AtomicU64,
    /// Platform messages that could not be understood.
    pub inbound_rejected: AtomicU64,
}

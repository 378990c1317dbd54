//! The registry of children: node id ↔ platform device id, product, and last known status.
//!
//! Built from the config at start; platform device ids learned from the platform (IoTDA
//! assigns them in `add_sub_device_response`) are persisted in the store so a restart does not
//! re-add every child. The uplink reads it to address messages and to replay statuses after a
//! reconnect; the queue's ingest updates statuses as they are committed.

use std::collections::BTreeMap;

use fieldgate_driver::{Report, Value};

#[derive(Debug, Clone)]
pub struct Child {
    pub node_id: String,
    pub name: String,
    pub product_id: String,
    /// Platform-assigned id, once the platform confirmed the child.
    pub device_id: Option<String>,
    /// Last status from the driver (`None` before the first decision).
    pub online: Option<bool>,
    pub reason: String,
    /// When the last reading was taken (device time of the sample).
    pub last_report_ms: Option<u64>,
    /// The last value of every property, by `service.property`.
    pub last_values: BTreeMap<String, Value>,
    /// The bus the child is on (for the operator).
    pub bus: String,
}

#[derive(Debug, Default)]
pub struct Registry {
    children: BTreeMap<String, Child>,
    by_device: BTreeMap<String, String>,
}

impl Registry {
    pub fn new<'a>(children: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Self {
        let mut r = Registry::default();
        for (node, name, product) in children {
            r.children.insert(
                node.to_string(),
                Child {
                    node_id: node.to_string(),
                    name: name.to_string(),
                    product_id: product.to_string(),
                    device_id: None,
                    online: None,
                    reason: String::new(),
                    last_report_ms: None,
                    last_values: BTreeMap::new(),
                    bus: String::new(),
                },
            );
        }
        r
    }

    pub fn get(&self, node: &str) -> Option<&Child> {
        self.children.get(node)
    }

    pub fn contains(&self, node: &str) -> bool {
        self.children.contains_key(node)
    }

    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.children.values()
    }

    /// Record the platform id of a child. Returns false for a node id not in the config.
    pub fn confirm(&mut self, node: &str, device_id: &str) -> bool {
        let Some(c) = self.children.get_mut(node) else {
            return false;
        };
        if let Some(old) = c.device_id.replace(device_id.to_string()) {
            self.by_device.remove(&old);
        }
        self.by_device
            .insert(device_id.to_string(), node.to_string());
        true
    }

    pub fn device_id(&self, node: &str) -> Option<&str> {
        self.children.get(node).and_then(|c| c.device_id.as_deref())
    }

    pub fn node_of(&self, device_id: &str) -> Option<&str> {
        self.by_device.get(device_id).map(String::as_str)
    }

    pub fn unconfirmed(&self) -> Vec<&Child> {
        self.children
            .values()
            .filter(|c| c.device_id.is_none())
            .collect()
    }

    pub fn set_status(&mut self, node: &str, online: bool, reason: &str) {
        if let Some(c) = self.children.get_mut(node) {
            c.online = Some(online);
            c.reason = reason.to_string();
        }
    }

    /// Remember a committed reading as the child's latest values.
    pub fn record(&mut self, r: &Report) {
        if let Some(c) = self.children.get_mut(&r.child) {
            c.last_report_ms = Some(c.last_report_ms.map_or(r.ts_ms, |t| t.max(r.ts_ms)));
            for (k, v) in &r.properties {
                c.last_values
                    .insert(format!("{}.{k}", r.service), v.clone());
            }
        }
    }

    pub fn set_bus(&mut self, node: &str, bus: &str) {
        if let Some(c) = self.children.get_mut(node) {
            c.bus = bus.to_string();
        }
    }
}

//! The registry of children: node id ↔ platform device id, product, and last known status.
//!
//! Built from the config; what the platform told us (IoTDA assigns device ids in
//! `add_sub_device_response`, or deletes children by notify) is persisted in the store so a
//! restart neither re-adds every child nor forgets one that must still be deleted. Reconciling
//! a new config yields the children to add, the platform ids to delete, and the buses whose
//! polling changes. The uplink reads it to address messages and replay statuses after a
//! reconnect; the queue's ingest updates statuses and last values as they are committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fieldgate_driver::{Name, Report, Value};

/// A child as the config describes it.
/// Latest values kept per child for `fieldgate status`: a bound on its size whatever a device
/// or driver program reports.
pub const MAX_LAST_VALUES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub node_id: String,
    pub name: String,
    pub product_id: String,
    pub bus: String,
    /// (service, property) the platform may write (ThingsBoard asks for their shared
    /// attributes).
    pub writable: Vec<(String, String)>,
}

/// What the store remembers of a child between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub node_id: String,
    pub device_id: Option<String>,
    pub product_id: String,
    /// The platform deleted it: do not poll it, do not add it again.
    pub platform_deleted: bool,
}

#[derive(Debug, Clone)]
pub struct Child {
    pub node_id: String,
    pub name: String,
    pub product_id: String,
    pub bus: String,
    /// (service, property) the platform may write.
    pub writable: Vec<(String, String)>,
    /// Platform-assigned id, once the platform confirmed the child.
    pub device_id: Option<String>,
    /// The platform deleted this child; it is no longer polled nor added again.
    pub platform_deleted: bool,
    /// The platform's last refusal (error code and message), for the operator.
    pub platform_error: Option<String>,
    /// Last status from the driver (`None` before the first decision).
    pub online: Option<bool>,
    pub reason: String,
    /// When the last reading was taken (device time of the sample).
    pub last_report_ms: Option<u64>,
    /// The last value of every property, by (service, property).
    /// (Service → property → value: updated in place per reading, no key built.)
    pub last_values: BTreeMap<String, BTreeMap<Name, Value>>,
    /// Values polled and values reported (queued) since start: the report stage's ratio.
    pub report_counts: crate::report::Counts,
}

impl Child {
    fn new(s: &Spec) -> Self {
        Child {
            node_id: s.node_id.clone(),
            name: s.name.clone(),
            product_id: s.product_id.clone(),
            bus: s.bus.clone(),
            writable: s.writable.clone(),
            device_id: None,
            platform_deleted: false,
            platform_error: None,
            online: None,
            reason: String::new(),
            last_report_ms: None,
            last_values: BTreeMap::new(),
            report_counts: crate::report::Counts::default(),
        }
    }
}

/// The outcome of reconciling a config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same node id, another product: deleted on the platform and added again.
    pub replaced: Vec<String>,
}

/// What an add response did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The child is known by this id now.
    New,
    /// It already was.
    Already,
    /// Not a child we asked to add: ignored.
    Unsolicited,
    /// Not a configured child.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Registry {
    children: BTreeMap<String, Child>,
    by_device: BTreeMap<String, String>,
    /// Platform device ids to delete (children removed from the config), → their node id.
    deleting: BTreeMap<String, String>,
}

impl Registry {
    pub fn new(specs: &[Spec]) -> Self {
        let mut r = Registry::default();
        for s in specs {
            r.children.insert(s.node_id.clone(), Child::new(s));
        }
        r
    }

    /// Take in what the store remembers: known ids, children the platform deleted, and ids of
    /// children that left the config (or changed product) while the gateway was down.
    pub fn restore(&mut self, persisted: Vec<Persisted>) {
        for p in persisted {
            let Some(dev) = p.device_id else {
                if let Some(c) = self.children.get_mut(&p.node_id) {
                    c.platform_deleted = p.platform_deleted && c.product_id == p.product_id;
                }
                continue;
            };
            match self.children.get(&p.node_id) {
                Some(c) if c.product_id == p.product_id => {
                    self.confirm(&p.node_id, &dev);
                }
                _ => {
                    self.deleting.insert(dev, p.node_id);
                }
            }
        }
    }

    /// Reconcile with a new config.
    pub fn apply(&mut self, specs: &[Spec]) -> Changes {
        let mut ch = Changes::default();
        let wanted: BTreeSet<&str> = specs.iter().map(|s| s.node_id.as_str()).collect();
        let gone: Vec<String> = self
            .children
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for node in gone {
            if let Some(c) = self.children.remove(&node) {
                if let Some(dev) = c.device_id {
                    self.by_device.remove(&dev);
                    self.deleting.insert(dev, node.clone());
                }
            }
            ch.removed.push(node);
        }
        for s in specs {
            match self.children.get_mut(&s.node_id) {
                None => {
                    self.children.insert(s.node_id.clone(), Child::new(s));
                    ch.added.push(s.node_id.clone());
                }
                Some(c) => {
                    if c.product_id != s.product_id {
                        if let Some(dev) = c.device_id.take() {
                            self.by_device.remove(&dev);
                            self.deleting.insert(dev, s.node_id.clone());
                        }
                        c.product_id = s.product_id.clone();
                        c.platform_deleted = false;
                        c.platform_error = None;
                        ch.replaced.push(s.node_id.clone());
                    }
                    c.name = s.name.clone();
                    c.bus = s.bus.clone();
                    c.writable.clone_from(&s.writable);
                }
            }
        }
        ch
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

    /// Record the platform id of a configured child. False for a node id not in the config.
    pub fn confirm(&mut self, node: &str, device_id: &str) -> bool {
        let Some(c) = self.children.get_mut(node) else {
            return false;
        };
        if let Some(old) = c.device_id.replace(device_id.to_string()) {
            self.by_device.remove(&old);
        }
        c.platform_error = None;
        c.platform_deleted = false;
        self.by_device
            .insert(device_id.to_string(), node.to_string());
        true
    }

    /// An add response from the platform: accepted only for a child we asked it to add (not
    /// yet confirmed, not deleted by the platform). An unsolicited one — a replayed or forged
    /// response naming a confirmed child with another id, or a child the platform deleted —
    /// changes nothing.
    pub fn confirm_requested(&mut self, node: &str, device_id: &str) -> Confirmed {
        match self.children.get(node) {
            None => Confirmed::Unknown,
            Some(c) if c.platform_deleted => Confirmed::Unsolicited,
            Some(c) if c.device_id.as_deref() == Some(device_id) => Confirmed::Already,
            Some(c) if c.device_id.is_some() => Confirmed::Unsolicited,
            Some(_) => {
                self.confirm(node, device_id);
                Confirmed::New
            }
        }
    }

    /// The platform refused to add a child.
    pub fn refused(&mut self, node: &str, error: String) {
        if let Some(c) = self.children.get_mut(node) {
            c.platform_error = Some(error);
        }
    }

    /// The platform id of a child whose data may be sent (confirmed and not deleted).
    pub fn device_id(&self, node: &str) -> Option<&str> {
        self.children
            .get(node)
            .filter(|c| !c.platform_deleted)
            .and_then(|c| c.device_id.as_deref())
    }

    pub fn node_of(&self, device_id: &str) -> Option<&str> {
        self.by_device.get(device_id).map(String::as_str)
    }

    /// Children to ask the platform to add.
    pub fn unconfirmed(&self) -> Vec<&Child> {
        self.children
            .values()
            .filter(|c| c.device_id.is_none() && !c.platform_deleted)
            .collect()
    }

    /// Whether a deletion is pending for this node id.
    pub fn deleting_node(&self, node: &str) -> bool {
        self.deleting.values().any(|n| n == node)
    }

    /// Platform ids still to delete.
    pub fn to_delete(&self) -> Vec<String> {
        self.deleting.keys().cloned().collect()
    }

    /// The platform confirmed a deletion (response or notify). Returns what happened.
    pub fn deleted(&mut self, device_id: &str) -> Deleted {
        if let Some(node) = self.deleting.remove(device_id) {
            return Deleted::Requested(node);
        }
        let Some(node) = self.by_device.remove(device_id) else {
            return Deleted::Unknown;
        };
        if let Some(c) = self.children.get_mut(&node) {
            c.device_id = None;
            c.platform_deleted = true;
        }
        Deleted::ByPlatform(node)
    }

    /// Nodes the platform deleted: not polled.
    pub fn platform_deleted(&self) -> BTreeSet<String> {
        self.children
            .values()
            .filter(|c| c.platform_deleted)
            .map(|c| c.node_id.clone())
            .collect()
    }

    /// What to persist for one configured child.
    pub fn persisted(&self, node: &str) -> Option<Persisted> {
        self.children.get(node).map(|c| Persisted {
            node_id: c.node_id.clone(),
            device_id: c.device_id.clone(),
            product_id: c.product_id.clone(),
            platform_deleted: c.platform_deleted,
        })
    }

    pub fn set_status(&mut self, node: &str, online: bool, reason: &str) {
        if let Some(c) = self.children.get_mut(node) {
            c.online = Some(online);
            c.reason = reason.to_string();
        }
    }

    pub fn set_report_counts(&mut self, node: &str, counts: crate::report::Counts) {
        if let Some(c) = self.children.get_mut(node) {
            c.report_counts = counts;
        }
    }

    /// Remember a committed reading as the child's latest values (the first
    /// [`MAX_LAST_VALUES`] names; `fieldgate status` shows them).
    pub fn record(&mut self, r: &Report) {
        if let Some(c) = self.children.get_mut(&r.child) {
            c.last_report_ms = Some(c.last_report_ms.map_or(r.ts_ms, |t| t.max(r.ts_ms)));
            let mut kept: usize = c.last_values.values().map(BTreeMap::len).sum();
            if !c.last_values.contains_key(&r.service) {
                c.last_values.insert(r.service.clone(), BTreeMap::new());
            }
            let Some(svc) = c.last_values.get_mut(&r.service) else {
                return;
            };
            // Both maps are sorted: walk them side by side (every reading updates the same
            // names) instead of searching each one; names not seen before are added after.
            let mut fresh = Vec::new();
            let mut slots = svc.iter_mut().peekable();
            // A driver hands out the same names every time: equal by pointer, mostly.
            for (k, v) in &r.properties {
                while slots
                    .next_if(|(s, _)| !Arc::ptr_eq(s, k) && **s < *k)
                    .is_some()
                {}
                match slots.next_if(|(s, _)| *s == k) {
                    Some((_, slot)) => slot.clone_from(v),
                    None => fresh.push((k, v)),
                }
            }
            for (k, v) in fresh {
                if kept >= MAX_LAST_VALUES {
                    break;
                }
                svc.insert(k.clone(), v.clone());
                kept += 1;
            }
        }
    }
}

/// What a platform deletion meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// One we asked for (the child left the config or changed product).
    Requested(String),
    /// A configured child the platform deleted on its own: stop polling it.
    ByPlatform(String),
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: &str, p: &str) -> Spec {
        Spec {
            node_id: n.into(),
            name: n.into(),
            product_id: p.into(),
            bus: "b".into(),
            writable: Vec::new(),
        }
    }

    fn reading(props: &[(&str, i64)]) -> Report {
        Report {
            child: "a".into(),
            service: "s".into(),
            properties: props
                .iter()
                .map(|(k, v)| (Name::from(*k), fieldgate_driver::Value::Int(*v)))
                .collect(),
            ts_ms: 1,
        }
    }

    #[test]
    fn latest_values_follow_every_reading_up_to_the_cap() {
        let mut r = Registry::new(&[spec("a", "p")]);
        r.record(&reading(&[("b", 1), ("d", 2)]));
        r.record(&reading(&[("a", 3), ("b", 4), ("c", 5), ("e", 6)]));
        r.record(&reading(&[("d", 7)]));
        let got: Vec<(String, i64)> = r.children["a"].last_values["s"]
            .iter()
            .filter_map(|(k, v)| match v {
                fieldgate_driver::Value::Int(i) => Some((k.to_string(), *i)),
                _ => None,
            })
            .collect();
        let want = [("a", 3), ("b", 4), ("c", 5), ("d", 7), ("e", 6)];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v)));
        // At the cap: known names still update, new ones are not kept.
        let many: Vec<(String, i64)> = (0..MAX_LAST_VALUES + 10)
            .map(|i| (format!("n{i:04}"), 0))
            .collect();
        let many: Vec<(&str, i64)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        r.record(&reading(&many));
        r.record(&reading(&[("a", 9), ("zz", 1)]));
        let svc = &r.children["a"].last_values["s"];
        assert_eq!(svc.len(), MAX_LAST_VALUES);
        assert_eq!(svc.get("a"), Some(&fieldgate_driver::Value::Int(9)));
        assert_eq!(svc.get("zz"), None);
    }

    #[test]
    fn reconcile_adds_removes_and_replaces() {
        let mut r = Registry::new(&[spec("a", "p"), spec("b", "p"), spec("c", "p")]);
        r.confirm("a", "p_a");
        r.confirm("b", "p_b");
        let ch = r.apply(&[spec("a", "p"), spec("c", "q"), spec("d", "p")]);
        assert_eq!(
            ch,
            Changes {
                added: vec!["d".into()],
                removed: vec!["b".into()],
                replaced: vec!["c".into()]
            }
        );
        assert_eq!(
            r.to_delete(),
            vec!["p_b".to_string()],
            "c had no id yet: nothing to delete"
        );
        let names: Vec<&str> = r.unconfirmed().iter().map(|c| c.node_id.as_str()).collect();
        assert_eq!(names, vec!["c", "d"]);
        assert_eq!(r.deleted("p_b"), Deleted::Requested("b".into()));
        assert!(r.to_delete().is_empty());
    }

    #[test]
    fn platform_deletion_stops_the_child_and_is_not_undone() {
        let mut r = Registry::new(&[spec("a", "p")]);
        r.confirm("a", "p_a");
        assert_eq!(r.deleted("p_a"), Deleted::ByPlatform("a".into()));
        assert_eq!(r.device_id("a"), None);
        assert!(r.unconfirmed().is_empty(), "not added again");
        assert_eq!(
            r.platform_deleted().into_iter().collect::<Vec<_>>(),
            vec!["a".to_string()]
        );
        assert_eq!(r.deleted("nope"), Deleted::Unknown);
    }

    #[test]
    fn unsolicited_add_responses_change_nothing() {
        let mut r = Registry::new(&[spec("a", "p"), spec("b", "p")]);
        assert_eq!(r.confirm_requested("a", "p_a"), Confirmed::New);
        assert_eq!(r.confirm_requested("a", "p_a"), Confirmed::Already);
        assert_eq!(r.confirm_requested("a", "forged"), Confirmed::Unsolicited);
        assert_eq!(r.device_id("a"), Some("p_a"), "the confirmed id stands");
        assert_eq!(r.confirm_requested("zz", "x"), Confirmed::Unknown);
        assert_eq!(r.confirm_requested("b", "p_b"), Confirmed::New);
        assert!(matches!(r.deleted("p_b"), Deleted::ByPlatform(_)));
        assert_eq!(r.confirm_requested("b", "p_b2"), Confirmed::Unsolicited);
        assert_eq!(
            r.device_id("b"),
            None,
            "a child the platform deleted stays deleted"
        );
    }

    #[test]
    fn restore_finds_what_left_while_down() {
        let mut r = Registry::new(&[spec("a", "p"), spec("c", "q")]);
        r.restore(vec![
            Persisted {
                node_id: "a".into(),
                device_id: Some("p_a".into()),
                product_id: "p".into(),
                platform_deleted: false,
            },
            Persisted {
                node_id: "b".into(),
                device_id: Some("p_b".into()),
                product_id: "p".into(),
                platform_deleted: false,
            },
            Persisted {
                node_id: "c".into(),
                device_id: Some("p_c".into()),
                product_id: "p".into(),
                platform_deleted: false,
            },
        ]);
        assert_eq!(r.device_id("a"), Some("p_a"));
        assert_eq!(r.to_delete(), vec!["p_b".to_string(), "p_c".to_string()]);
        assert_eq!(
            r.unconfirmed().len(),
            1,
            "c is added again under its new product"
        );
    }

    #[test]
    fn refusals_are_kept_for_the_operator_until_confirmed() {
        let mut r = Registry::new(&[spec("a", "p")]);
        r.refused("a", "IOTDA.014016: product not found".into());
        assert_eq!(
            r.get("a").and_then(|c| c.platform_error.clone()).as_deref(),
            Some("IOTDA.014016: product not found")
        );
        assert_eq!(r.unconfirmed().len(), 1, "still asked for again");
        r.confirm("a", "p_a");
        assert_eq!(r.get("a").and_then(|c| c.platform_error.clone()), None);
    }
}

//! Child lifecycle on the platform: which children to add or delete, what the platform's
//! answers mean for the registry, and persisting each change. The session decides when (after
//! every CONNACK, every `ADD_RETRY`, after a reload); the dialect decides the words; this room
//! keeps the registry and the store in step with what the platform knows.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::dialect::{ChildView, Failed};
use super::UplinkEvent;
use crate::registry::{Confirmed, Deleted, Registry};
use crate::store::Store;

pub struct Children {
    pub registry: Arc<Mutex<Registry>>,
    pub store: Store,
    /// Tells the daemon about children the platform deleted.
    pub events: mpsc::Sender<UplinkEvent>,
}

impl Children {
    fn reg(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere while holding the lock leaves the registry usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every configured child as the dialect sees it.
    pub fn view(&self) -> Vec<ChildView> {
        self.reg()
            .children()
            .map(|c| ChildView {
                node_id: c.node_id.clone(),
                device_id: c.device_id.clone(),
                product_id: c.product_id.clone(),
                name: c.name.clone(),
                online: c.online,
                latest: c
                    .last_values
                    .iter()
                    .flat_map(|(svc, props)| {
                        props
                            .iter()
                            .map(move |(prop, v)| (svc.clone(), prop.to_string(), v.clone()))
                    })
                    .collect(),
                latest_ts_ms: c.last_report_ms,
                writable: c.writable.clone(),
            })
            .collect()
    }

    /// Children the platform has not confirmed yet.
    pub fn unconfirmed(&self) -> Vec<ChildView> {
        self.reg()
            .unconfirmed()
            .iter()
            .map(|c| ChildView {
                node_id: c.node_id.clone(),
                device_id: None,
                product_id: c.product_id.clone(),
                name: c.name.clone(),
                online: c.online,
                ..Default::default()
            })
            .collect()
    }

    /// Platform ids of children the config dropped.
    pub fn to_delete(&self) -> Vec<String> {
        self.reg().to_delete()
    }

    /// (online, total) children.
    pub fn counts(&self) -> (usize, usize) {
        let reg = self.reg();
        (
            reg.children().filter(|c| c.online == Some(true)).count(),
            reg.children().count(),
        )
    }

    /// The platform knows these children now (node id → platform id). True when any was new:
    /// their queued records (passed over until now) can go.
    pub async fn added(&self, devices: Vec<(String, String)>, failed: Vec<Failed>) -> bool {
        let mut learned = Vec::new();
        {
            let mut reg = self.reg();
            for (node, dev) in &devices {
                match reg.confirm_requested(node, dev) {
                    Confirmed::New => learned.extend(reg.persisted(node)),
                    Confirmed::Already => {}
                    Confirmed::Unsolicited => {
                        warn!(node_id = %node, device_id = %dev, "ignoring an add response for a child already confirmed under another id or deleted by the platform (not requested)")
                    }
                    Confirmed::Unknown => {
                        warn!(node_id = %node, device_id = %dev, "platform reports a child that is not in the config")
                    }
                }
            }
            for f in &failed {
                reg.refused(&f.id, format!("{}: {}", f.error_code, f.error_msg));
            }
        }
        for p in &learned {
            debug!(node_id = %p.node_id, device_id = ?p.device_id, "child confirmed by the platform");
            if let Err(e) = self.store.save_child(p.clone()).await {
                error!(node_id = %p.node_id, error = %e, "cannot persist the platform device id");
            }
        }
        if !learned.is_empty() {
            info!(
                children = learned.len(),
                "children confirmed by the platform"
            );
        }
        for f in failed {
            error!(node_id = %f.id, error_code = %f.error_code, error_msg = %f.error_msg, "platform refused to add child (retried later)");
        }
        !learned.is_empty()
    }

    /// The platform deleted a child: one we asked for, or one it removed on its own.
    pub async fn deleted(&self, device_id: &str) {
        let outcome = self.reg().deleted(device_id);
        match outcome {
            Deleted::Requested(node) => {
                info!(node_id = %node, device_id = %device_id, "child deleted on the platform");
                let still = self.reg().persisted(&node);
                let r = match still {
                    Some(p) => self.store.save_child(p).await,
                    None => self.store.forget_child(&node).await,
                };
                if let Err(e) = r {
                    error!(node_id = %node, error = %e, "cannot persist the deletion");
                }
            }
            Deleted::ByPlatform(node) => {
                warn!(node_id = %node, device_id = %device_id, "the platform deleted this child: it is no longer polled nor added again (remove it from the config, reload, and add it back to restore it)");
                let still = self.reg().persisted(&node);
                if let Some(p) = still {
                    if let Err(e) = self.store.save_child(p).await {
                        error!(node_id = %node, error = %e, "cannot persist the deletion");
                    }
                }
                let _ = self.events.try_send(UplinkEvent::ChildDeleted(node));
            }
            Deleted::Unknown => {
                debug!(device_id = %device_id, "platform deleted a device we do not know")
            }
        }
    }
}

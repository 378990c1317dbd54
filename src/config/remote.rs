//! `[remote]`: which of the gateway's own operations the platform may run (none unless
//! listed) and how long an applied config has to bring the uplink back before it is rolled
//! back.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::Dur;
use super::{defaults, Checker};

/// The gateway's own operations, by the name `[remote] allow` lists.
pub const OPERATIONS: &[&str] = &[
    "ping",
    "status",
    "logs",
    "config_get",
    "config_apply",
    "restart_bus",
    "restart",
];

/// The `[remote]` table as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    /// Operations the platform may run on the gateway itself.
    #[serde(default)]
    allow: Option<Spanned<Vec<String>>>,
    /// After `config_apply`: how long the uplink has to connect again before the previous
    /// config is restored.
    #[serde(default)]
    rollback_after: Option<Spanned<Dur>>,
}

/// What the platform may do to the gateway itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Allowed operation names (a subset of `OPERATIONS`).
    pub allow: BTreeSet<String>,
    pub rollback_after: Duration,
}

impl Default for Remote {
    fn default() -> Self {
        Remote {
            allow: BTreeSet::new(),
            rollback_after: defaults::ROLLBACK_AFTER,
        }
    }
}

impl Remote {
    pub fn allows(&self, op: &str) -> bool {
        self.allow.contains(op)
    }
}

impl Checker<'_> {
    pub(super) fn remote(&mut self, r: RawRemote) -> Remote {
        let mut out = Remote::default();
        if let Some(a) = r.allow {
            for name in a.get_ref() {
                if OPERATIONS.contains(&name.as_str()) {
                    out.allow.insert(name.clone());
                } else {
                    self.err(
                        Some(a.span()),
                        "remote.allow",
                        format!(
                            "unknown operation `{}` (known: {})",
                            name.escape_debug(),
                            OPERATIONS.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(t) = r.rollback_after {
            let d = t.get_ref().0;
            if d < Duration::from_secs(10) || d > Duration::from_secs(3600) {
                self.err(
                    Some(t.span()),
                    "remote.rollback_after",
                    "rollback_after must be between 10s and 1h",
                );
            } else {
                out.rollback_after = d;
            }
        }
        out
    }
}

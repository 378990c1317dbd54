//! What stays on this machine: `[gateway]` (name, logging, runtime dir, the report interval)
//! and `[store]` (the queue's file, its commit window and bounds).

use super::*;

impl Checker<'_> {
    pub(super) fn gateway(&mut self, g: RawGateway) -> Gateway {
        let log_level = match g.log_level {
            Some(l) => {
                let ok =
                    ["error", "warn", "info", "debug", "trace"].contains(&l.get_ref().as_str());
                if !ok {
                    self.err(
                        Some(l.span()),
                        "gateway.log_level",
                        format!(
                            "unknown level `{}` (error, warn, info, debug, trace)",
                            l.get_ref()
                        ),
                    );
                }
                l.into_inner()
            }
            None => "info".into(),
        };
        let log_target = match g.log_target.as_ref().map(|t| t.get_ref().as_str()) {
            None | Some("auto") => LogTarget::Auto,
            Some("journald") => LogTarget::Journald,
            Some("stderr") => LogTarget::Stderr,
            Some(other) => {
                let span = g.log_target.as_ref().map(|t| t.span());
                self.err(
                    span,
                    "gateway.log_target",
                    format!("unknown log target `{other}` (auto, journald, stderr)"),
                );
                LogTarget::Auto
            }
        };
        let report_interval = match g.report_interval {
            Some(r) if r.get_ref().0 < Duration::from_secs(1) => {
                self.err(
                    Some(r.span()),
                    "gateway.report_interval",
                    "report_interval must be at least 1s",
                );
                defaults::REPORT_INTERVAL
            }
            Some(r) => r.into_inner().0,
            None => defaults::REPORT_INTERVAL,
        };
        let runtime_dir = g
            .runtime_dir
            .unwrap_or_else(|| defaults::RUNTIME_DIR.into());
        // The control socket (and its staging name, `.fieldgate.sock.<pid>`) must fit a Unix
        // socket path (108 bytes).
        if runtime_dir.len() > MAX_RUNTIME_DIR {
            self.err(
                None,
                "gateway.runtime_dir",
                format!(
                    "runtime_dir is {} bytes; at most {MAX_RUNTIME_DIR} leave room for the control socket's path",
                    runtime_dir.len()
                ),
            );
        }
        Gateway {
            report_interval,
            name: g.name.unwrap_or_else(|| defaults::GATEWAY_NAME.into()),
            log_level,
            log_target,
            runtime_dir: PathBuf::from(runtime_dir),
        }
    }

    pub(super) fn store(&mut self, s: RawStore) -> Store {
        let commit_interval = match s.commit_interval {
            Some(c) if c.get_ref().0 > Duration::from_secs(10) => {
                self.err(
                    Some(c.span()),
                    "store.commit_interval",
                    "commit_interval above 10s risks too much data on power loss",
                );
                c.into_inner().0
            }
            Some(c) => c.into_inner().0,
            None => defaults::COMMIT_INTERVAL,
        };
        let mut limits = Limits::default();
        if let Some(m) = s.max_bytes {
            if m.get_ref().0 < 64 << 10 {
                self.err(
                    Some(m.span()),
                    "store.max_bytes",
                    "max_bytes must be at least 64KiB",
                );
            }
            limits.max_bytes = m.into_inner().0;
            limits.max_priority_bytes = limits.max_priority_bytes.min(limits.max_bytes / 4);
        }
        if let Some(m) = s.max_priority_bytes {
            if m.get_ref().0 > limits.max_bytes || m.get_ref().0 < 4 << 10 {
                self.err(
                    Some(m.span()),
                    "store.max_priority_bytes",
                    "max_priority_bytes must be between 4KiB and max_bytes",
                );
            }
            limits.max_priority_bytes = m.into_inner().0;
        }
        if let Some(a) = s.max_age {
            if a.get_ref().0 < Duration::from_secs(60) {
                self.err(
                    Some(a.span()),
                    "store.max_age",
                    "max_age must be at least 1m",
                );
            }
            limits.max_age = a.into_inner().0;
        }
        let synchronous_full = match s.synchronous.as_ref().map(|x| x.get_ref().as_str()) {
            None | Some("normal") => false,
            Some("full") => true,
            Some(other) => {
                self.err(
                    s.synchronous.as_ref().map(|x| x.span()),
                    "store.synchronous",
                    format!("unknown synchronous level `{other}` (normal, full)"),
                );
                false
            }
        };
        Store {
            path: PathBuf::from(s.path.unwrap_or_else(|| defaults::STORE_PATH.into())),
            commit_interval,
            limits,
            synchronous_full,
        }
    }
}

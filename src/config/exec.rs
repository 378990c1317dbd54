//! External-driver (`exec`) settings in the config: the bus's program (argv, environment,
//! working directory, bounds) and `kind = "exec"` profiles, which declare only a product id
//! and the commands the platform may send, each with typed parameters.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use fieldgate_driver::DeclaredCommand;
use fieldgate_exec::ExecBus;
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::params::RawParam;
use super::schema::RawBus;
use super::Checker;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecProfile {
    /// The platform product id of children of this model (default: the profile's name).
    #[serde(default)]
    product_id: Option<String>,
    /// The default service of its commands.
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecCommand {
    /// The platform's command name.
    name: Spanned<String>,
    /// The command's service, when not the profile's.
    #[serde(default)]
    service: Option<String>,
    /// Typed parameters handed to the program.
    #[serde(default)]
    params: Vec<RawParam>,
}

/// The longest `stop_grace`: with 2 s for the bus and 3 s for the uplink the daemon stops
/// within 25 s, inside the unit's `TimeoutStopSec=30s`.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(20);

/// The largest `max_properties` accepted: names are kept in memory for the daemon's lifetime.
const MAX_PROPERTIES_LIMIT: usize = 100_000;

/// The bus's program settings, as far as the bus table holds them.
pub(super) struct ExecSettings {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub max_line: usize,
    pub max_properties: usize,
    pub stop_grace: Duration,
}

impl ExecSettings {
    pub fn bus(&self, name: &str, restart_min: Duration, restart_max: Duration) -> ExecBus {
        ExecBus {
            name: name.to_string(),
            argv: self.argv.clone(),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            restart_min,
            restart_max,
            max_line: self.max_line,
            max_properties: self.max_properties,
            stop_grace: self.stop_grace,
        }
    }
}

impl Checker<'_> {
    pub(super) fn exec_settings(&mut self, b: &RawBus, path: &str) -> Option<ExecSettings> {
        let Some(cmd) = &b.command else {
            self.err(
                Some(b.driver.span()),
                format!("{path}.command"),
                "an exec bus needs `command = [\"/path/to/program\", \"arg\", …]`",
            );
            return None;
        };
        let argv = cmd.get_ref().clone();
        if argv.first().is_none_or(|p| p.is_empty()) {
            self.err(
                Some(cmd.span()),
                format!("{path}.command"),
                "`command` needs at least the program",
            );
            return None;
        }
        let max_line = match &b.max_line {
            Some(m) if !(256..=16 * 1024 * 1024).contains(m.get_ref()) => {
                self.err(
                    Some(m.span()),
                    format!("{path}.max_line"),
                    "max_line must be 256 bytes..16 MiB",
                );
                return None;
            }
            Some(m) => *m.get_ref(),
            None => 64 * 1024,
        };
        let max_properties = match &b.max_properties {
            Some(m) if !(1..=MAX_PROPERTIES_LIMIT).contains(m.get_ref()) => {
                self.err(
                    Some(m.span()),
                    format!("{path}.max_properties"),
                    format!("max_properties must be 1..{MAX_PROPERTIES_LIMIT}"),
                );
                return None;
            }
            Some(m) => *m.get_ref(),
            None => fieldgate_exec::DEFAULT_MAX_PROPERTIES,
        };
        let stop_grace = b
            .stop_grace
            .as_ref()
            .map_or(Duration::from_secs(2), |d| d.get_ref().0);
        if stop_grace > MAX_STOP_GRACE {
            self.err(
                b.stop_grace.as_ref().map(|d| d.span()),
                format!("{path}.stop_grace"),
                "stop_grace must be at most 20s (the whole daemon stops within 25s; the unit allows 30s)",
            );
            return None;
        }
        Some(ExecSettings {
            argv,
            env: b.env.clone().unwrap_or_default().into_iter().collect(),
            working_dir: b.working_dir.clone().map(PathBuf::from),
            max_line,
            max_properties,
            stop_grace,
        })
    }

    /// A `kind = "exec"` profile: its product id and declared commands.
    pub(super) fn exec_profile(
        &mut self,
        name: &str,
        mut head: toml::de::DeTable<'_>,
        span: std::ops::Range<usize>,
        path: &str,
    ) -> Option<(String, Vec<DeclaredCommand>)> {
        let commands_v = head.remove("command");
        for k in ["point", "field"] {
            if let Some(v) = head.remove(k) {
                self.err(
                    Some(v.span()),
                    format!("{path}.{k}"),
                    format!("an exec profile has no `{k}`s: the program decides what it reports"),
                );
            }
        }
        let raw: RawExecProfile = self.de(&Spanned::new(span, DeValue::Table(head)), path)?;
        let service = raw
            .service
            .unwrap_or_else(|| super::defaults::SERVICE.into());
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        let mut ok = true;
        if let Some(cv) = &commands_v {
            let (raw_commands, all) = self.tables::<RawExecCommand>(cv, &format!("{path}.command"));
            ok &= all;
            for (cpath, rc) in raw_commands {
                let svc = rc.service.clone().unwrap_or_else(|| service.clone());
                if !self.command_name(&mut names, &svc, &rc.name, &cpath) {
                    ok = false;
                    continue;
                }
                match self.params(&rc.params, &rc.name, &cpath) {
                    Some(params) => out.push(DeclaredCommand {
                        service: svc,
                        name: rc.name.into_inner(),
                        params,
                    }),
                    None => ok = false,
                }
            }
        }
        ok.then(|| (raw.product_id.unwrap_or_else(|| name.to_string()), out))
    }
}

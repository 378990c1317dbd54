//! Report rules in the config: the keys `report`, `deadband`, `deadband_percent`, `period`,
//! `aggregate` and `window`, at four levels — `[gateway]`, `[profile.NAME]`, `[[device]]` and
//! each point (`[[profile.NAME.point]]`, a serial `field`, a BLE `characteristic`) — each key
//! overriding the same key of the level above. They are taken out of each table before the
//! table's own keys are read, checked where they are written (line:column), and resolved per
//! child into the `report::ChildRules` the report stage runs on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::duration::Dur;
use super::{defaults, Checker, Sv};
use crate::report::{Agg, ChildRules, Rule, Strategy};

/// The keys of a report rule, allowed in every table that can carry one.
pub const RULE_KEYS: &[&str] = &[
    "report",
    "deadband",
    "deadband_percent",
    "period",
    "aggregate",
    "window",
];

/// The rule keys of one table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// `always`, `on_change`, `period` or `on_change_or_period`.
    #[serde(default)]
    report: Option<Spanned<String>>,
    /// Absolute deadband in engineering units (after scale and offset).
    #[serde(default)]
    deadband: Option<Spanned<f64>>,
    /// Deadband in percent of the point's `min`..`max` span, or of the last reported value.
    #[serde(default)]
    deadband_percent: Option<Spanned<f64>>,
    /// The longest silence: reported at least this often.
    #[serde(default)]
    period: Option<Spanned<Dur>>,
    /// Functions of each window: `avg`, `min`, `max`, `last`, `count`.
    #[serde(default)]
    aggregate: Option<Spanned<Vec<String>>>,
    /// The aggregation window.
    #[serde(default)]
    window: Option<Spanned<Dur>>,
}

/// One level's rule keys, checked; `None` where the level does not set the key. Spans are
/// kept for the checks only the merged rule can make.
#[derive(Debug, Clone, Default)]
pub(super) struct Partial {
    strategy: Option<(Strategy, Range<usize>)>,
    deadband: Option<f64>,
    deadband_percent: Option<f64>,
    period: Option<Duration>,
    aggregate: Option<(Vec<Agg>, Range<usize>)>,
    window: Option<(Duration, Range<usize>)>,
    /// A key was refused here or above: the merged checks would only repeat it.
    refused: bool,
}

impl Partial {
    /// This level over `parent`: each key set here wins.
    fn over(&self, parent: &Partial) -> Partial {
        Partial {
            strategy: self.strategy.clone().or_else(|| parent.strategy.clone()),
            deadband: self.deadband.or(parent.deadband),
            deadband_percent: self.deadband_percent.or(parent.deadband_percent),
            period: self.period.or(parent.period),
            aggregate: self.aggregate.clone().or_else(|| parent.aggregate.clone()),
            window: self.window.clone().or_else(|| parent.window.clone()),
            refused: self.refused || parent.refused,
        }
    }
}

/// A point's own keys and what it declares about its values.
#[derive(Debug, Clone)]
struct PointRule {
    service: String,
    property: String,
    partial: Partial,
    /// `max - min` when both are declared.
    span: Option<f64>,
}

/// Everything the file says about reporting, gathered while its tables are read.
#[derive(Debug, Default)]
pub(super) struct Rules {
    /// `report`'s default: `always`, or `on_change` for Sparkplug (report by exception).
    pub default_strategy: Option<Strategy>,
    gateway: Partial,
    profiles: BTreeMap<String, (Partial, Vec<PointRule>)>,
    /// Merged-rule problems already reported (one line per place, not per device).
    reported: BTreeSet<(usize, &'static str)>,
    /// The key path of each `report`, `aggregate` and `window` written, by its offset.
    paths: BTreeMap<usize, String>,
}

impl Checker<'_> {
    /// Take the rule keys out of `table` (so its own schema never sees them) and check them.
    pub(super) fn take_rule(
        &mut self,
        table: &mut DeTable<'_>,
        span: Range<usize>,
        path: &str,
    ) -> Partial {
        let mut keys = DeTable::new();
        for k in RULE_KEYS {
            if let Some((key, v)) = table.remove_entry(*k) {
                keys.insert(key, v);
            }
        }
        if keys.is_empty() {
            return Partial::default();
        }
        let v = Spanned::new(span, DeValue::Table(keys));
        let Some(raw) = self.de::<RawRule>(&v, path) else {
            return Partial {
                refused: true,
                ..Partial::default()
            };
        };
        self.check_rule(raw, path)
    }

    /// `take_rule` for one element of an array of tables: the element without its rule keys.
    pub(super) fn split_rule<'i>(&mut self, item: &Sv<'i>, path: &str) -> (Sv<'i>, Partial) {
        match item.get_ref() {
            DeValue::Table(t) => {
                let mut t = t.clone();
                let partial = self.take_rule(&mut t, item.span(), path);
                (Spanned::new(item.span(), DeValue::Table(t)), partial)
            }
            _ => (item.clone(), Partial::default()),
        }
    }

    fn check_rule(&mut self, raw: RawRule, path: &str) -> Partial {
        let before = self.diags.len();
        let mut p = Partial::default();
        if let Some(r) = raw.report {
            match Strategy::parse(r.get_ref()) {
                Some(s) => {
                    self.rules.paths.insert(r.span().start, format!("{path}.report"));
                    p.strategy = Some((s, r.span()));
                }
                None => self.err(
                    Some(r.span()),
                    format!("{path}.report"),
                    "report must be \"always\", \"on_change\", \"period\" or \"on_change_or_period\"",
                ),
            }
        }
        if let Some(d) = raw.deadband {
            let x = *d.get_ref();
            if x.is_finite() && x >= 0.0 {
                p.deadband = Some(x);
            } else {
                self.err(
                    Some(d.span()),
                    format!("{path}.deadband"),
                    "deadband must be a finite number ≥ 0 (engineering units)",
                );
            }
        }
        if let Some(d) = raw.deadband_percent {
            let x = *d.get_ref();
            if x.is_finite() && (0.0..=100.0).contains(&x) {
                p.deadband_percent = Some(x);
            } else {
                self.err(
                    Some(d.span()),
                    format!("{path}.deadband_percent"),
                    "deadband_percent must be between 0 and 100",
                );
            }
        }
        if let Some(t) = raw.period {
            if t.get_ref().0.is_zero() {
                self.err(
                    Some(t.span()),
                    format!("{path}.period"),
                    "period must be longer than 0s",
                );
            } else {
                p.period = Some(t.get_ref().0);
            }
        }
        if let Some(a) = raw.aggregate {
            let mut aggs = Vec::new();
            let mut ok = !a.get_ref().is_empty();
            for name in a.get_ref() {
                match Agg::parse(name) {
                    Some(g) if !aggs.contains(&g) => aggs.push(g),
                    _ => ok = false,
                }
            }
            if ok {
                self.rules
                    .paths
                    .insert(a.span().start, format!("{path}.aggregate"));
                p.aggregate = Some((aggs, a.span()));
            } else {
                self.err(
                    Some(a.span()),
                    format!("{path}.aggregate"),
                    "aggregate is a list of distinct functions: \"avg\", \"min\", \"max\", \"last\", \"count\"",
                );
            }
        }
        if let Some(w) = raw.window {
            if w.get_ref().0 < Duration::from_millis(100) {
                self.err(
                    Some(w.span()),
                    format!("{path}.window"),
                    "window must be at least 100ms",
                );
            } else {
                self.rules
                    .paths
                    .insert(w.span().start, format!("{path}.window"));
                p.window = Some((w.get_ref().0, w.span()));
            }
        }
        p.refused = self.diags.len() > before;
        p
    }

    pub(super) fn gateway_rule(&mut self, p: Partial) {
        self.rules.gateway = p;
    }

    pub(super) fn profile_rule(&mut self, profile: &str, p: Partial) {
        self.rules
            .profiles
            .entry(profile.to_string())
            .or_default()
            .0 = p;
    }

    /// A point, field or characteristic of `profile`: its own keys and its `min`..`max`.
    pub(super) fn point_rule(
        &mut self,
        profile: &str,
        service: &str,
        property: &str,
        partial: Partial,
        min_max: (Option<f64>, Option<f64>),
    ) {
        let span = match min_max {
            (Some(lo), Some(hi)) if hi > lo && (hi - lo).is_finite() => Some(hi - lo),
            _ => None,
        };
        self.rules
            .profiles
            .entry(profile.to_string())
            .or_default()
            .1
            .push(PointRule {
                service: service.to_string(),
                property: property.to_string(),
                partial,
                span,
            });
    }

    /// The rules of one device: gateway → profile → device → each point.
    pub(super) fn child_rules(&mut self, profile: &str, device: &Partial) -> Arc<ChildRules> {
        let (head, points) = self
            .rules
            .profiles
            .get(profile)
            .cloned()
            .unwrap_or_default();
        let child = device.over(&head.over(&self.rules.gateway));
        let default = self.resolve(&child, None);
        let mut by_property: HashMap<String, HashMap<String, Rule>> = HashMap::new();
        for p in points {
            let rule = self.resolve(&p.partial.over(&child), p.span);
            if rule != default {
                by_property
                    .entry(p.service)
                    .or_default()
                    .insert(p.property, rule);
            }
        }
        Arc::new(ChildRules {
            default,
            by_property,
        })
    }

    /// A merged rule, with the checks that need every level: a strategy that needs a period
    /// has one, an aggregate has its window and a window its aggregate.
    fn resolve(&mut self, p: &Partial, span: Option<f64>) -> Rule {
        let strategy = p.strategy.as_ref().map(|(s, _)| *s).unwrap_or(
            self.rules
                .default_strategy
                .unwrap_or(defaults::REPORT_STRATEGY),
        );
        if p.refused {
            // Already reported where it was written.
        } else if matches!(strategy, Strategy::Period | Strategy::OnChangeOrPeriod)
            && p.period.is_none()
        {
            if let Some((_, at)) = &p.strategy {
                self.once(
                    at.clone(),
                    "report",
                    "this report strategy needs `period` (here or at a level above)",
                );
            }
        }
        match (&p.aggregate, &p.window) {
            _ if p.refused => {}
            (Some((_, at)), None) => self.once(
                at.clone(),
                "aggregate",
                "aggregate needs `window` (here or at a level above)",
            ),
            (None, Some((_, at))) => self.once(
                at.clone(),
                "window",
                "window is the length of an `aggregate` window: set `aggregate` too",
            ),
            _ => {}
        }
        Rule {
            strategy,
            deadband: p.deadband.unwrap_or(0.0),
            deadband_percent: p.deadband_percent.unwrap_or(0.0),
            span,
            period: p.period,
            aggregate: match (&p.aggregate, &p.window) {
                (Some((a, _)), Some(_)) => a.clone(),
                _ => Vec::new(),
            },
            window: p.window.as_ref().map_or(Duration::ZERO, |(w, _)| *w),
        }
    }

    fn once(&mut self, at: Range<usize>, key: &'static str, message: &str) {
        if self.rules.reported.insert((at.start, key)) {
            let path = self
                .rules
                .paths
                .get(&at.start)
                .cloned()
                .unwrap_or_else(|| key.to_string());
            self.err(Some(at), path, message);
        }
    }

    /// `tables`, each element's rule keys taken out first.
    pub(super) fn tables_ruled<T: serde::de::DeserializeOwned>(
        &mut self,
        v: &Sv<'_>,
        path: &str,
    ) -> (Vec<(String, T, Partial)>, bool) {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in self.array(v, path).into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            let (rest, partial) = self.split_rule(item, &p);
            match self.de(&rest, &p) {
                Some(t) => out.push((p, t, partial)),
                None => ok = false,
            }
        }
        (out, ok)
    }
}

//! Report strategies: which polled values become queued records. Every driver's readings pass
//! through this one stage on their way from the drivers to the queue (Modbus, serial, BLE and
//! exec alike); it does no I/O, so its rules are unit-tested here and the daemon only feeds it
//! events and persists what it hands back.
//!
//! Per property (child, service, property) a `Rule` says how: `always` (every reading),
//! `on_change` (a change beyond the deadband from the value *last reported* — not the last
//! polled one, so slow drift adds up and is reported), `period` (at least every `period`, the
//! heartbeat) or `on_change_or_period`; or `aggregate` over a `window` (one record per window
//! with `{property}_{avg|min|max|last|count}`, stamped at the window's end, cut at an OFFLINE
//! gap).
//!
//! What always holds: statuses are never filtered (they do not pass through here); the first
//! reading after a child comes back ONLINE, of a property never reported, and of a property
//! whose rule changed is reported; booleans and text report on any change; a non-finite
//! number is never a change and never a comparison base. The last reported value of every
//! compared property (with its rule's fingerprint) is handed out as a `Base` to be kept in the
//! store, so a restart neither resends everything nor loses the comparison base.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_driver::{Name, Properties, Report, Value};

/// When a polled value is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    Always,
    OnChange,
    Period,
    OnChangeOrPeriod,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "always" => Strategy::Always,
            "on_change" => Strategy::OnChange,
            "period" => Strategy::Period,
            "on_change_or_period" => Strategy::OnChangeOrPeriod,
            _ => return None,
        })
    }

    /// Compares against the last reported value (needs a base).
    pub fn compares(self) -> bool {
        self != Strategy::Always
    }
}

/// A function of a window's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Last,
    Count,
}

impl Agg {
    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "last" => Agg::Last,
            "count" => Agg::Count,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Last => "last",
            Agg::Count => "count",
        }
    }
}

/// How one property is reported (resolved from the config's levels).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub strategy: Strategy,
    /// Absolute deadband, engineering units; 0: none.
    pub deadband: f64,
    /// Deadband in percent of `span` (when declared) or of the last reported value; 0: none.
    pub deadband_percent: f64,
    /// `max - min` of the point, when both are declared.
    pub span: Option<f64>,
    /// The longest silence (`period`, `on_change_or_period`).
    pub period: Option<Duration>,
    /// Aggregate functions; empty: not aggregated.
    pub aggregate: Vec<Agg>,
    /// The aggregation window.
    pub window: Duration,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            strategy: Strategy::Always,
            deadband: 0.0,
            deadband_percent: 0.0,
            span: None,
            period: None,
            aggregate: Vec::new(),
            window: Duration::ZERO,
        }
    }
}

impl Rule {
    /// Today's behaviour: every reading.
    pub fn passes_all(&self) -> bool {
        self.strategy == Strategy::Always && self.aggregate.is_empty()
    }

    /// Stable across runs (it is stored beside each base): a base kept under another rule is
    /// no base.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a over the fields' bytes (std's hasher is not promised to be stable); runs for
        // every compared value, so nothing is allocated.
        fn mix(h: &mut u64, x: u64) {
            for b in x.to_le_bytes() {
                *h ^= u64::from(b);
                *h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        mix(&mut h, self.strategy as u64);
        mix(&mut h, self.deadband.to_bits());
        mix(&mut h, self.deadband_percent.to_bits());
        mix(&mut h, self.span.map_or(u64::MAX, f64::to_bits));
        mix(
            &mut h,
            self.period.map_or(u64::MAX, |p| {
                u64::try_from(p.as_millis()).unwrap_or(u64::MAX)
            }),
        );
        for a in &self.aggregate {
            mix(&mut h, *a as u64);
        }
        mix(
            &mut h,
            u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
        );
        h
    }

    /// The band a numeric change must exceed, from the last reported value.
    fn band(&self, last: f64) -> f64 {
        let pct = if self.deadband_percent > 0.0 {
            self.deadband_percent / 100.0 * self.span.unwrap_or(last.abs())
        } else {
            0.0
        };
        self.deadband.max(pct)
    }
}

/// The rules of one child: per (service, property), and the child's own for properties no
/// point declares (exec programs, BLE formats).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChildRules {
    pub default: Rule,
    pub by_property: HashMap<String, HashMap<String, Rule>>,
}

impl ChildRules {
    pub fn rule(&self, service: &str, property: &str) -> &Rule {
        self.by_property
            .get(service)
            .and_then(|m| m.get(property))
            .unwrap_or(&self.default)
    }

    /// Every rule passes everything: the stage has nothing to do for this child.
    pub fn passes_all(&self) -> bool {
        self.default.passes_all()
            && self
                .by_property
                .values()
                .flat_map(HashMap::values)
                .all(Rule::passes_all)
    }
}

/// The last reported value of one property: the comparison base, kept in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub child: String,
    pub service: String,
    pub property: String,
    pub value: Value,
    pub ts_ms: u64,
    /// `Rule::fingerprint` of the rule it was reported under.
    pub rule: u64,
}

/// What to queue of one polled report.
#[derive(Debug, Clone, PartialEq)]
pub enum Keep {
    /// All of it, as it is.
    All,
    /// Nothing.
    Nothing,
    /// These properties only.
    Some(Properties),
}

/// Per child: taken vs reported values (the suppression ratio in `fieldgate status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub taken: u64,
    pub reported: u64,
}

#[derive(Debug, Default)]
struct Acc {
    aggs: Vec<Agg>,
    sum: f64,
    numeric: u64,
    count: u64,
    min: Option<(f64, Value)>,
    max: Option<(f64, Value)>,
    last: Option<Value>,
}

impl Acc {
    fn add(&mut self, v: &Value) {
        if let Some(x) = number(v) {
            if !x.is_finite() {
                return;
            }
            self.sum += x;
            self.numeric += 1;
            if self.min.as_ref().is_none_or(|(m, _)| x < *m) {
                self.min = Some((x, v.clone()));
            }
            if self.max.as_ref().is_none_or(|(m, _)| x > *m) {
                self.max = Some((x, v.clone()));
            }
        }
        self.count += 1;
        self.last = Some(v.clone());
    }

    fn emit(&self, property: &str, out: &mut Properties) {
        for a in &self.aggs {
            let v = match a {
                Agg::Avg if self.numeric > 0 => Value::Float(self.sum / self.numeric as f64),
                Agg::Min => match &self.min {
                    Some((_, v)) => v.clone(),
                    None => continue,
                },
                Agg::Max => match &self.max {
                    Some((_, v)) => v.clone(),
                    None => continue,
                },
                Agg::Last => match &self.last {
                    Some(v) => v.clone(),
                    None => continue,
                },
                Agg::Count => Value::UInt(self.count),
                Agg::Avg => continue,
            };
            out.insert(Name::from(format!("{property}_{}", a.name())), v);
        }
    }
}

#[derive(Debug)]
struct Window {
    end: u64,
    last_ts: u64,
    props: BTreeMap<String, Acc>,
}

#[derive(Debug, Default)]
struct ChildState {
    rules: Arc<ChildRules>,
    passes_all: bool,
    /// Last status seen in this run (None: none yet).
    online: Option<bool>,
    bases: HashMap<String, HashMap<Name, (Value, u64, u64)>>,
    /// Open windows by (service, window length in ms); a child has one or two.
    windows: Vec<((String, u64), Window)>,
    counts: Counts,
}

/// A window still open this long after its end is closed by `tick`.
pub const WINDOW_GRACE_MS: u64 = 1000;

/// The stage: rules per child, bases, open windows, counts.
#[derive(Debug, Default)]
pub struct Stage {
    children: HashMap<String, ChildState>,
    /// Bases changed since the last `take_bases`.
    dirty: Vec<Base>,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        Value::Bool(_) | Value::Text(_) => None,
    }
}

fn non_finite(v: &Value) -> bool {
    matches!(v, Value::Float(f) if !f.is_finite())
}

/// Exactly equal, across integer kinds too.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::UInt(y)) | (Value::UInt(y), Value::Int(x)) => {
            i128::from(*x) == i128::from(*y)
        }
        _ => a == b,
    }
}

/// A change worth reporting under `rule`, from the last reported `last`.
fn changed(rule: &Rule, v: &Value, last: &Value) -> bool {
    if non_finite(v) {
        return false;
    }
    match (number(v), number(last)) {
        (Some(x), Some(l)) => {
            let band = rule.band(l);
            if band > 0.0 {
                (x - l).abs() > band
            } else {
                !same(v, last)
            }
        }
        _ => !same(v, last),
    }
}

impl Stage {
    pub fn new() -> Self {
        Stage::default()
    }

    /// Restore the bases kept in the store (at start).
    pub fn restore(&mut self, bases: Vec<Base>) {
        for b in bases {
            self.children
                .entry(b.child)
                .or_default()
                .bases
                .entry(b.service)
                .or_default()
                .insert(Name::from(b.property), (b.value, b.ts_ms, b.rule));
        }
    }

    /// The rules of every configured child (at start and on every reload). Open windows are
    /// closed first (their rules may change) and returned; children no longer configured are
    /// forgotten, bases included. A base under a rule that changed is no base: that
    /// property's next reading is reported.
    pub fn set_rules(&mut self, rules: HashMap<String, Arc<ChildRules>>) -> Vec<Report> {
        let mut out = Vec::new();
        for (child, st) in self.children.iter_mut() {
            flush(child, st, None, &mut out);
        }
        self.children.retain(|c, _| rules.contains_key(c));
        // Children that left give their room back (a hash map keeps its largest size).
        self.children.shrink_to(rules.len());
        for (child, r) in rules {
            let st = self.children.entry(child).or_default();
            st.passes_all = r.passes_all();
            st.rules = r;
        }
        out
    }

    /// A status passed by (statuses are never filtered): an OFFLINE child's windows are cut
    /// at the gap (returned, to be queued before the status); the first reading after it
    /// comes back ONLINE is reported whole.
    pub fn status(&mut self, child: &str, online: bool) -> Vec<Report> {
        let mut out = Vec::new();
        let Some(st) = self.children.get_mut(child) else {
            return out;
        };
        if !online {
            flush(child, st, None, &mut out);
        } else if st.online == Some(false) {
            // Back from a gap: without bases, every property's next reading is reported.
            st.bases.clear();
        }
        st.online = Some(online);
        out
    }

    /// Windows that ended at least `WINDOW_GRACE_MS` before `now_ms`, closed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Report> {
        let mut out = Vec::new();
        for (child, st) in self.children.iter_mut() {
            flush(
                child,
                st,
                Some(now_ms.saturating_sub(WINDOW_GRACE_MS)),
                &mut out,
            );
        }
        out
    }

    /// Close every open window (a graceful stop: a partial window is still a record).
    pub fn finish(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        for (child, st) in self.children.iter_mut() {
            flush(child, st, None, &mut out);
        }
        out
    }

    /// One polled report: what of it to queue. Windows it closes are pushed to `closed`
    /// (queue them before it).
    pub fn report(&mut self, r: &Report, closed: &mut Vec<Report>) -> Keep {
        let n = r.properties.len() as u64;
        let Some(st) = self.children.get_mut(&r.child) else {
            // Not configured (a reload raced it): today's behaviour.
            return Keep::All;
        };
        st.counts.taken += n;
        if st.passes_all {
            st.counts.reported += n;
            return Keep::All;
        }
        let rules = st.rules.clone();
        let mut kept = Properties::new();
        let mut all = true;
        for (property, v) in &r.properties {
            let rule = rules.rule(&r.service, property);
            if !rule.aggregate.is_empty() {
                all = false;
                aggregate(&r.child, st, &r.service, property, v, rule, r.ts_ms, closed);
                continue;
            }
            let report = match rule.strategy {
                Strategy::Always => true,
                s => {
                    let fp = rule.fingerprint();
                    let base = st
                        .bases
                        .get(&r.service)
                        .and_then(|m| m.get(&**property))
                        .filter(|(_, _, f)| *f == fp);
                    let yes = if non_finite(v) {
                        false
                    } else {
                        match base {
                            None => true,
                            Some((last, ts, _)) => {
                                let due = rule.period.is_some_and(|p| {
                                    r.ts_ms.saturating_sub(*ts) >= p.as_millis() as u64
                                });
                                match s {
                                    Strategy::OnChange => changed(rule, v, last),
                                    Strategy::Period => due,
                                    _ => due || changed(rule, v, last),
                                }
                            }
                        }
                    };
                    if yes {
                        st.bases
                            .entry(r.service.clone())
                            .or_default()
                            .insert(property.clone(), (v.clone(), r.ts_ms, fp));
                        self.dirty.push(Base {
                            child: r.child.clone(),
                            service: r.service.clone(),
                            property: property.to_string(),
                            value: v.clone(),
                            ts_ms: r.ts_ms,
                            rule: fp,
                        });
                    }
                    yes
                }
            };
            if report {
                kept.insert(property.clone(), v.clone());
            } else {
                all = false;
            }
        }
        st.counts.reported += kept.len() as u64;
        if all {
            Keep::All
        } else if kept.is_empty() {
            Keep::Nothing
        } else {
            Keep::Some(kept)
        }
    }

    /// Bases changed since the last call: to be written with the records they belong to.
    pub fn take_bases(&mut self) -> Vec<Base> {
        std::mem::take(&mut self.dirty)
    }

    pub fn counts(&self, child: &str) -> Counts {
        self.children
            .get(child)
            .map(|s| s.counts)
            .unwrap_or_default()
    }

    /// Every child's counts (for `fieldgate status`).
    pub fn all_counts(&self) -> impl Iterator<Item = (&str, Counts)> {
        self.children.iter().map(|(c, s)| (c.as_str(), s.counts))
    }
}

#[allow(clippy::too_many_arguments)]
fn aggregate(
    child: &str,
    st: &mut ChildState,
    service: &str,
    property: &str,
    v: &Value,
    rule: &Rule,
    ts: u64,
    closed: &mut Vec<Report>,
) {
    if non_finite(v) {
        return;
    }
    let len = u64::try_from(rule.window.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    // Looked up without building a key: this runs for every aggregated value.
    let pos = st
        .windows
        .iter()
        .position(|((s, l), _)| s == service && *l == len);
    let ended = pos.is_some_and(|i| ts >= st.windows[i].1.end);
    if let (Some(i), true) = (pos, ended) {
        let (_, w) = st.windows.swap_remove(i);
        let r = window_report(child, service, w, false);
        st.counts.reported += r.properties.len() as u64;
        closed.push(r);
    }
    let i = match pos {
        Some(i) if !ended => i,
        _ => {
            let start = ts - ts % len;
            st.windows.push((
                (service.to_string(), len),
                Window {
                    end: start.saturating_add(len),
                    last_ts: ts,
                    props: BTreeMap::new(),
                },
            ));
            st.windows.len() - 1
        }
    };
    let w = &mut st.windows[i].1;
    w.last_ts = w.last_ts.max(ts);
    match w.props.get_mut(property) {
        Some(acc) => acc.add(v),
        None => {
            let mut acc = Acc {
                aggs: rule.aggregate.clone(),
                ..Acc::default()
            };
            acc.add(v);
            w.props.insert(property.to_string(), acc);
        }
    }
}

/// Close windows that ended by `before` (all of them for `None`: cut at their last reading).
fn flush(child: &str, st: &mut ChildState, before: Option<u64>, out: &mut Vec<Report>) {
    let mut i = 0;
    while i < st.windows.len() {
        if before.is_some_and(|b| st.windows[i].1.end > b) {
            i += 1;
            continue;
        }
        let ((service, _), w) = st.windows.remove(i);
        let r = window_report(child, &service, w, before.is_none());
        st.counts.reported += r.properties.len() as u64;
        out.push(r);
    }
}

/// One window's record: stamped at its end, or at its last reading when cut short.
fn window_report(child: &str, service: &str, w: Window, cut: bool) -> Report {
    let mut properties = Properties::new();
    for (p, acc) in &w.props {
        acc.emit(p, &mut properties);
    }
    Report {
        child: child.to_string(),
        service: service.to_string(),
        properties,
        ts_ms: if cut && w.last_ts < w.end {
            w.last_ts
        } else {
            w.end
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "energy";

    fn rule(strategy: Strategy) -> Rule {
        Rule {
            strategy,
            ..Rule::default()
        }
    }

    fn stage(r: Rule) -> Stage {
        let mut st = Stage::new();
        let rules = ChildRules {
            default: r,
            by_property: HashMap::new(),
        };
        st.set_rules(HashMap::from([("m".to_string(), Arc::new(rules))]));
        st
    }

    #[test]
    fn children_that_leave_give_their_room_back() {
        let rules = |n: usize| -> HashMap<String, Arc<ChildRules>> {
            (0..n)
                .map(|i| {
                    let r = ChildRules {
                        default: rule(Strategy::OnChange),
                        by_property: HashMap::new(),
                    };
                    (format!("m{i}"), Arc::new(r))
                })
                .collect()
        };
        let mut st = Stage::new();
        st.set_rules(rules(1000));
        assert!(st.children.capacity() >= 1000);
        st.set_rules(rules(10));
        assert_eq!(st.children.len(), 10);
        assert!(
            st.children.capacity() < 100,
            "capacity {} for 10 children",
            st.children.capacity()
        );
    }

    fn rep(props: &[(&str, Value)], ts: u64) -> Report {
        Report {
            child: "m".into(),
            service: S.into(),
            properties: props
                .iter()
                .map(|(k, v)| (Name::from(*k), v.clone()))
                .collect(),
            ts_ms: ts,
        }
    }

    /// Feed one value of `p` per step; which steps were reported.
    fn run(st: &mut Stage, values: &[(Value, u64)]) -> Vec<bool> {
        values
            .iter()
            .map(|(v, ts)| {
                let mut closed = Vec::new();
                !matches!(
                    st.report(&rep(&[("p", v.clone())], *ts), &mut closed),
                    Keep::Nothing
                )
            })
            .collect()
    }

    fn f(x: f64, ts: u64) -> (Value, u64) {
        (Value::Float(x), ts)
    }

    #[test]
    fn always_passes_everything_untouched() {
        let mut st = stage(rule(Strategy::Always));
        let mut closed = Vec::new();
        for ts in 0..3 {
            assert_eq!(
                st.report(&rep(&[("p", Value::Int(1))], ts), &mut closed),
                Keep::All
            );
        }
        assert_eq!(
            st.counts("m"),
            Counts {
                taken: 3,
                reported: 3
            }
        );
        assert!(
            st.take_bases().is_empty(),
            "nothing to compare, nothing kept"
        );
    }

    #[test]
    fn on_change_is_beyond_the_deadband_from_the_last_reported_value() {
        let mut st = stage(Rule {
            deadband: 0.5,
            ..rule(Strategy::OnChange)
        });
        let got = run(
            &mut st,
            &[
                f(10.0, 0),  // first: no base
                f(10.5, 1),  // exactly at the deadband: not beyond it
                f(10.4, 2),  // drift below the band…
                f(10.3, 3),  // …
                f(10.51, 4), // …adds up: 0.51 from the last *reported* 10.0
                f(10.2, 5),  // 0.31 back: no
                f(9.9, 6),   // 0.61 below 10.51: yes
            ],
        );
        assert_eq!(got, vec![true, false, false, false, true, false, true]);
        let bases = st.take_bases();
        assert_eq!(
            bases.iter().map(|b| b.value.clone()).collect::<Vec<_>>(),
            vec![Value::Float(10.0), Value::Float(10.51), Value::Float(9.9)]
        );
        assert_eq!(
            st.counts("m"),
            Counts {
                taken: 7,
                reported: 3
            }
        );
    }

    #[test]
    fn on_change_without_a_deadband_is_any_change_and_ints_compare_exactly() {
        let mut st = stage(rule(Strategy::OnChange));
        let big = u64::MAX - 1;
        let got = run(
            &mut st,
            &[
                (Value::UInt(big), 0),
                (Value::UInt(big), 1),
                (Value::UInt(big + 1), 2), // same as f64, different as an integer
                (Value::Int(7), 3),
                (Value::UInt(7), 4), // the same number in another integer kind
            ],
        );
        assert_eq!(got, vec![true, false, true, true, false]);
    }

    #[test]
    fn percent_of_the_last_value_of_zero_and_of_a_declared_span() {
        let mut st = stage(Rule {
            deadband_percent: 10.0,
            ..rule(Strategy::OnChange)
        });
        // 10 % of 100 = 10; then 10 % of 0 = 0: any change from zero is a change.
        let got = run(
            &mut st,
            &[
                f(100.0, 0),
                f(109.0, 1),
                f(111.0, 2),
                f(0.0, 3),
                f(0.0, 4),
                f(0.001, 5),
            ],
        );
        assert_eq!(got, vec![true, false, true, true, false, true]);
        let mut st = stage(Rule {
            deadband_percent: 1.0,
            span: Some(500.0),
            ..rule(Strategy::OnChange)
        });
        // 1 % of a 0..500 span = 5, whatever the value.
        let got = run(&mut st, &[f(0.0, 0), f(4.0, 1), f(5.5, 2)]);
        assert_eq!(got, vec![true, false, true]);
        // Both: the larger band.
        let mut st = stage(Rule {
            deadband: 2.0,
            deadband_percent: 1.0,
            ..rule(Strategy::OnChange)
        });
        let got = run(&mut st, &[f(100.0, 0), f(101.5, 1), f(102.5, 2)]);
        assert_eq!(got, vec![true, false, true]);
    }

    #[test]
    fn booleans_and_text_on_any_change_nan_never() {
        let mut st = stage(Rule {
            deadband: 100.0,
            ..rule(Strategy::OnChange)
        });
        let got = run(
            &mut st,
            &[
                (Value::Bool(false), 0),
                (Value::Bool(false), 1),
                (Value::Bool(true), 2),
                (Value::Text("a".into()), 3),
                (Value::Text("a".into()), 4),
                (Value::Text("b".into()), 5),
            ],
        );
        assert_eq!(got, vec![true, false, true, true, false, true]);
        let mut st = stage(rule(Strategy::OnChangeOrPeriod));
        let got = run(
            &mut st,
            &[
                (Value::Float(f64::NAN), 0), // not a first value either
                f(1.0, 1),
                (Value::Float(f64::NAN), 2),
                (Value::Float(f64::INFINITY), 3),
                f(1.0, 4), // the base is still 1.0
            ],
        );
        assert_eq!(got, vec![false, true, false, false, false]);
    }

    #[test]
    fn period_is_the_longest_silence() {
        let period = Some(Duration::from_secs(10));
        let mut st = stage(Rule {
            period,
            ..rule(Strategy::Period)
        });
        let got = run(
            &mut st,
            &[
                f(1.0, 0),
                f(50.0, 5_000),
                f(1.0, 9_999),
                f(1.0, 10_000),
                f(2.0, 15_000),
            ],
        );
        assert_eq!(got, vec![true, false, false, true, false]);
        let mut st = stage(Rule {
            period,
            deadband: 1.0,
            ..rule(Strategy::OnChangeOrPeriod)
        });
        let got = run(
            &mut st,
            &[
                f(1.0, 0),
                f(1.5, 5_000),
                f(3.0, 6_000),
                f(3.0, 15_999),
                f(3.0, 16_000),
            ],
        );
        assert_eq!(got, vec![true, false, true, false, true]);
    }

    #[test]
    fn back_online_reports_whole_and_a_period_that_ran_out_while_offline_waits_for_it() {
        let mut st = stage(Rule {
            period: Some(Duration::from_secs(10)),
            ..rule(Strategy::OnChangeOrPeriod)
        });
        assert!(st.status("m", true).is_empty());
        assert_eq!(run(&mut st, &[f(1.0, 0), f(1.0, 1_000)]), vec![true, false]);
        st.status("m", false);
        // The period runs out while OFFLINE: nothing is polled, nothing reported…
        assert!(st.tick(60_000).is_empty());
        st.status("m", true);
        // …and the first reading after ONLINE is reported though unchanged.
        assert_eq!(
            run(&mut st, &[f(1.0, 60_000), f(1.0, 61_000)]),
            vec![true, false]
        );
        // A first ONLINE (start) is no gap: the base stays.
        let mut st = stage(rule(Strategy::OnChange));
        assert_eq!(run(&mut st, &[f(1.0, 0)]), vec![true]);
        st.status("m", true);
        assert_eq!(run(&mut st, &[f(1.0, 1)]), vec![false]);
    }

    #[test]
    fn bases_survive_a_restart_unless_the_rule_changed() {
        let r = Rule {
            deadband: 1.0,
            ..rule(Strategy::OnChange)
        };
        let mut st = stage(r.clone());
        run(&mut st, &[f(5.0, 0)]);
        let kept = st.take_bases();
        let mut again = Stage::new();
        again.restore(kept.clone());
        again.set_rules(HashMap::from([(
            "m".to_string(),
            Arc::new(ChildRules {
                default: r.clone(),
                by_property: HashMap::new(),
            }),
        )]));
        assert_eq!(
            run(&mut again, &[f(5.5, 10), f(6.5, 11)]),
            vec![false, true]
        );
        // Another deadband: the kept base is no base.
        let mut other = Stage::new();
        other.restore(kept);
        other.set_rules(HashMap::from([(
            "m".to_string(),
            Arc::new(ChildRules {
                default: Rule { deadband: 2.0, ..r },
                by_property: HashMap::new(),
            }),
        )]));
        assert_eq!(run(&mut other, &[f(5.5, 10)]), vec![true]);
        // A child no longer configured is forgotten.
        other.set_rules(HashMap::new());
        assert_eq!(other.counts("m"), Counts::default());
    }

    #[test]
    fn per_property_rules_keep_a_subset() {
        let mut st = Stage::new();
        let rules = ChildRules {
            default: rule(Strategy::Always),
            by_property: HashMap::from([(
                S.to_string(),
                HashMap::from([("slow".to_string(), rule(Strategy::OnChange))]),
            )]),
        };
        st.set_rules(HashMap::from([("m".to_string(), Arc::new(rules))]));
        let mut closed = Vec::new();
        let a = rep(&[("fast", Value::Int(1)), ("slow", Value::Int(1))], 0);
        assert_eq!(st.report(&a, &mut closed), Keep::All);
        let b = rep(&[("fast", Value::Int(1)), ("slow", Value::Int(1))], 1);
        assert_eq!(
            st.report(&b, &mut closed),
            Keep::Some(Properties::from([(Name::from("fast"), Value::Int(1))]))
        );
        assert_eq!(
            st.counts("m"),
            Counts {
                taken: 4,
                reported: 3
            }
        );
    }

    #[test]
    fn aggregate_windows_are_stamped_at_their_end_and_cut_at_a_gap() {
        let mut st = stage(Rule {
            aggregate: vec![Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::Count],
            window: Duration::from_secs(10),
            ..Rule::default()
        });
        let mut closed = Vec::new();
        for (v, ts) in [
            (1.0, 10_000),
            (3.0, 12_000),
            (f64::NAN, 14_000),
            (2.0, 19_999),
        ] {
            assert_eq!(
                st.report(&rep(&[("power", Value::Float(v))], ts), &mut closed),
                Keep::Nothing
            );
        }
        assert!(closed.is_empty(), "the window is still open");
        assert!(st.tick(20_500).is_empty(), "within the grace");
        // A reading of the next window closes it.
        st.report(&rep(&[("power", Value::Float(10.0))], 20_000), &mut closed);
        assert_eq!(closed.len(), 1);
        let w = &closed[0];
        assert_eq!(w.ts_ms, 20_000, "stamped at the window's end");
        assert_eq!(
            w.properties,
            Properties::from([
                (Name::from("power_avg"), Value::Float(2.0)),
                (Name::from("power_min"), Value::Float(1.0)),
                (Name::from("power_max"), Value::Float(3.0)),
                (Name::from("power_last"), Value::Float(2.0)),
                (Name::from("power_count"), Value::UInt(3)),
            ])
        );
        // OFFLINE cuts the open window at its last reading.
        st.report(&rep(&[("power", Value::Float(20.0))], 23_000), &mut closed);
        let cut = st.status("m", false);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].ts_ms, 23_000);
        assert_eq!(cut[0].properties["power_avg"], Value::Float(15.0));
        assert_eq!(cut[0].properties["power_count"], Value::UInt(2));
        // Back: a new window; `tick` closes it after its end and the grace.
        st.status("m", true);
        st.report(&rep(&[("power", Value::Int(4))], 41_000), &mut closed);
        assert!(st.tick(50_999).is_empty());
        let t = st.tick(51_000);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].ts_ms, 50_000);
        assert_eq!(
            t[0].properties["power_min"],
            Value::Int(4),
            "the reading's own type"
        );
        assert_eq!(
            st.counts("m"),
            Counts {
                taken: 7,
                reported: 15
            }
        );
        assert!(st.finish().is_empty());
    }
}

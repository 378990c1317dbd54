//! A reading's properties: name → value, sorted by name, each name once. Every reading passes
//! through several hands (driver, report stage, registry, queue, dialect), and each of them
//! walks the properties in name order; a sorted vector is built in one pass from a sorted
//! list (a driver's points, a decoded record) and walked without chasing nodes, where a
//! `BTreeMap` spent more on building, walking and freeing its nodes than the rest of the
//! pipeline spent on the values. It reads like a map (`get`, `iter` as `(&name, &value)`,
//! `[name]`) and serialises as one.

use std::fmt;
use std::ops::Index;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Name, Value};

/// Name → value, sorted by name, each name once.
#[derive(Clone, Default, PartialEq)]
pub struct Properties(Vec<(Name, Value)>);

/// The pairs of `Properties`, in name order.
pub type Iter<'a> = std::iter::Map<
    std::slice::Iter<'a, (Name, Value)>,
    fn(&'a (Name, Value)) -> (&'a Name, &'a Value),
>;

fn pair(p: &(Name, Value)) -> (&Name, &Value) {
    (&p.0, &p.1)
}

impl Properties {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// From pairs that are in name order with each name once (a driver's sorted points, a
    /// stored record): taken as they are. Anything else is sorted, and of a name given twice
    /// the later value kept, as a map would.
    pub fn from_sorted(pairs: Vec<(Name, Value)>) -> Self {
        if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            Self(pairs)
        } else {
            pairs.into_iter().collect()
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> Iter<'_> {
        self.0
            .iter()
            .map(pair as fn(&(Name, Value)) -> (&Name, &Value))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Name> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Set `name` to `value`; the value it had, if any.
    pub fn insert(&mut self, name: Name, value: Value) -> Option<Value> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }
}

impl FromIterator<(Name, Value)> for Properties {
    /// Sorted by name; of a name given twice, the later value is kept (as a map's `insert`).
    fn from_iter<I: IntoIterator<Item = (Name, Value)>>(iter: I) -> Self {
        let mut v: Vec<(Name, Value)> = iter.into_iter().collect();
        // Stable: equal names stay in the order given, so the last one is the later value.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Name, Value)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        Self(out)
    }
}

impl<const N: usize> From<[(Name, Value); N]> for Properties {
    fn from(pairs: [(Name, Value); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl IntoIterator for Properties {
    type Item = (Name, Value);
    type IntoIter = std::vec::IntoIter<(Name, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a Name, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Index<&str> for Properties {
    type Output = Value;

    /// The value of `name`; panics when there is none (as a map's index does).
    fn index(&self, name: &str) -> &Value {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no property `{name}`"),
        }
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<Name, Value>::deserialize(d)?;
        Ok(Self(m.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, i64)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| (Name::from(*k), Value::Int(*v)))
            .collect()
    }

    #[test]
    fn reads_like_the_map_it_replaces() {
        use std::collections::BTreeMap;
        // Unsorted, a name twice: sorted, the later value kept, as BTreeMap::from_iter does.
        let pairs = [("b", 1), ("a", 2), ("c", 3), ("a", 4), ("b", 5)];
        let props = p(&pairs);
        let map: BTreeMap<Name, Value> = pairs
            .iter()
            .map(|(k, v)| (Name::from(*k), Value::Int(*v)))
            .collect();
        assert!(props.iter().eq(map.iter()));
        assert_eq!(props.len(), 3);
        assert_eq!(props.get("a"), Some(&Value::Int(4)));
        assert_eq!(props["c"], Value::Int(3));
        assert_eq!(props.get("d"), None);
        assert!(props.contains_key("b") && !props.contains_key(""));
        assert_eq!(format!("{props:?}"), format!("{map:?}"));
        assert_eq!(
            serde_json::to_string(&props).ok(),
            serde_json::to_string(&map).ok()
        );
        let back: Result<Properties, _> = serde_json::from_str(r#"{"b":5,"a":4,"c":3}"#);
        assert_eq!(back.ok(), Some(props.clone()));
    }

    #[test]
    fn sorted_input_is_taken_as_it_is_and_anything_else_is_sorted() {
        let sorted = vec![
            (Name::from("a"), Value::Int(1)),
            (Name::from("b"), Value::Int(2)),
        ];
        assert_eq!(Properties::from_sorted(sorted), p(&[("a", 1), ("b", 2)]));
        let unsorted = vec![
            (Name::from("b"), Value::Int(2)),
            (Name::from("a"), Value::Int(1)),
            (Name::from("b"), Value::Int(3)),
        ];
        assert_eq!(Properties::from_sorted(unsorted), p(&[("a", 1), ("b", 3)]));
    }

    #[test]
    fn insert_keeps_the_order_and_replaces_a_value() {
        let mut props = Properties::new();
        for (k, v) in [("m", 1), ("c", 2), ("x", 3), ("c", 4)] {
            props.insert(Name::from(k), Value::Int(v));
        }
        assert_eq!(props, p(&[("c", 4), ("m", 1), ("x", 3)]));
        assert_eq!(
            props.insert(Name::from("m"), Value::Int(9)),
            Some(Value::Int(1))
        );
        let keys: Vec<&str> = props.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["c", "m", "x"]);
    }
}

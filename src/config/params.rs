//! Typed parameters of declared commands, shared by serial-instrument templates and exec
//! profiles: `params = [{ name, type, min, max, max_len, pattern }]`, checked into the driver
//! API's [`ParamSpec`]s (whole-number bounds for `int`, a compiled `pattern` for `string`).

use fieldgate_driver::{ParamKind, ParamSpec, Pattern};
use serde::Deserialize;
use toml::Spanned;

use super::Checker;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParam {
    /// The parameter's name in the platform's request.
    name: String,
    /// `int`, `float`, `bool` or `string`.
    #[serde(rename = "type")]
    kind: String,
    /// Numbers: the smallest value allowed.
    #[serde(default)]
    min: Option<f64>,
    /// Numbers: the largest value allowed.
    #[serde(default)]
    max: Option<f64>,
    /// Strings: the longest value allowed, in characters.
    #[serde(default)]
    max_len: Option<usize>,
    /// Text parameters: a regex the whole value must match.
    #[serde(default)]
    pattern: Option<String>,
}

impl Checker<'_> {
    /// Typed parameters of a declared command (`params = [{ name, type, min, max, max_len }]`).
    pub(super) fn params(
        &mut self,
        raw: &[RawParam],
        at: &Spanned<String>,
        path: &str,
    ) -> Option<Vec<ParamSpec>> {
        let mut params: Vec<ParamSpec> = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            let ppath = format!("{path}.params[{i}]");
            let parsed = ParamKind::parse(&p.kind);
            if p.pattern.is_some() && !matches!(parsed, Ok(ParamKind::Text { .. })) {
                self.err(
                    Some(at.span()),
                    format!("{ppath}.pattern"),
                    "only `string` parameters take a pattern".to_string(),
                );
                return None;
            }
            let kind = match parsed {
                Ok(ParamKind::Int { .. }) => {
                    // Bounds of a whole-number parameter must be whole numbers within i64.
                    let bound = |v: f64| {
                        (v.fract() == 0.0
                            && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0)
                                .contains(&v))
                        .then_some(v as i64)
                    };
                    let (min, max) = (p.min.map(bound), p.max.map(bound));
                    if matches!(min, Some(None)) || matches!(max, Some(None)) {
                        self.err(
                            Some(at.span()),
                            ppath.clone(),
                            "an `int` parameter's min and max must be whole numbers".to_string(),
                        );
                        return None;
                    }
                    ParamKind::Int {
                        min: min.flatten(),
                        max: max.flatten(),
                    }
                }
                Ok(ParamKind::Float { .. }) => ParamKind::Float {
                    min: p.min,
                    max: p.max,
                },
                Ok(ParamKind::Text { max_len, .. }) => {
                    let pattern = match p.pattern.as_deref().map(Pattern::new) {
                        None => None,
                        Some(Ok(re)) => Some(re),
                        Some(Err(e)) => {
                            self.err(Some(at.span()), format!("{ppath}.pattern"), e);
                            return None;
                        }
                    };
                    ParamKind::Text {
                        max_len: p.max_len.unwrap_or(max_len),
                        pattern,
                    }
                }
                Ok(k) => k,
                Err(e) => {
                    self.err(Some(at.span()), format!("{ppath}.type"), e);
                    return None;
                }
            };
            if p.name.is_empty() || params.iter().any(|q| q.name == p.name) {
                self.err(
                    Some(at.span()),
                    format!("{ppath}.name"),
                    format!("parameter name `{}` is empty or declared twice", p.name),
                );
                return None;
            }
            params.push(ParamSpec {
                name: p.name.clone(),
                kind,
            });
        }
        Some(params)
    }
}

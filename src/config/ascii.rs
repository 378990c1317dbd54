//! Serial-instrument profiles in the config: `[profile.NAME]` with `request`/`match`/`regex`/
//! `split`/`checksum`, its `[[profile.NAME.field]]` list and its `[[profile.NAME.command]]`
//! templates, checked key by key (regexes compiled, captures and placeholders cross-checked)
//! into the driver's [`Instrument`]. Also the framing keys of a `serial-ascii` bus.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fieldgate_driver::DeclaredCommand;
use fieldgate_serial::frame::Framing;
use fieldgate_serial::instrument::placeholders;
use fieldgate_serial::parse::{Checksum, Extract, FieldSpec, FieldType, Source};
use fieldgate_serial::Regex;
use fieldgate_serial::{Instrument, TemplateCommand};
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::duration::Dur;
use super::params::RawParam;
use super::schema::RawBus;
use super::Checker;

/// An instrument model, compared by its full description (so a reload restarts the bus only
/// when something about the model really changed).
#[derive(Debug, Clone)]
pub struct AsciiProfile(pub Arc<Instrument>);

impl PartialEq for AsciiProfile {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsciiProfile {
    /// The platform product id of children of this model (default: the profile's name).
    #[serde(default)]
    product_id: Option<String>,
    /// The service of the fields below (default `data`).
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// What to send to ask for a reading; none: the instrument streams.
    #[serde(default)]
    request: Option<Spanned<String>>,
    /// A frame is this device's answer only if this regex matches it.
    #[serde(default, rename = "match")]
    matcher: Option<Spanned<String>>,
    /// Named captures that fields take their values from…
    #[serde(default)]
    regex: Option<Spanned<String>>,
    /// …or a separator that fields take their values from by index.
    #[serde(default)]
    split: Option<Spanned<String>>,
    /// A checksum each frame must carry: `nmea`, `xor8` or `sum8`.
    #[serde(default)]
    checksum: Option<Spanned<String>>,
    /// A streaming instrument silent this long is OFFLINE.
    #[serde(default)]
    stale_after: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    /// The property name on the platform.
    property: Spanned<String>,
    /// The field's service, when not the profile's.
    #[serde(default)]
    service: Option<String>,
    /// A regex group: its name, or its number as a string ("1").
    #[serde(default)]
    capture: Option<Spanned<String>>,
    /// With `split`: the 0-based field number.
    #[serde(default)]
    index: Option<Spanned<usize>>,
    /// The value's type: `float`, `int`, `bool` or `string`.
    #[serde(rename = "type", default)]
    kind: Option<Spanned<String>>,
    /// Engineering value = parsed × scale + offset.
    #[serde(default)]
    scale: Option<f64>,
    /// Engineering value = parsed × scale + offset.
    #[serde(default)]
    offset: Option<f64>,
    #[serde(default)]
    #[allow(dead_code)]
    unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    /// The platform's command name.
    name: Spanned<String>,
    /// The command's service, when not the profile's.
    #[serde(default)]
    service: Option<String>,
    /// What is written to the line, with `{param}` placeholders.
    send: Spanned<String>,
    /// A regex the instrument's reply must match; without it nothing is awaited.
    #[serde(default)]
    expect: Option<Spanned<String>>,
    /// Typed parameters the template's placeholders take.
    #[serde(default)]
    params: Vec<RawParam>,
}

/// The result of reading one ASCII profile.
pub(super) struct Parsed {
    pub product_id: String,
    pub profile: AsciiProfile,
    pub declared: Vec<DeclaredCommand>,
}

/// Does this profile table describe a serial instrument (rather than a Modbus point map)?
pub(super) fn looks_ascii(t: &toml::de::DeTable<'_>) -> bool {
    ["field", "request", "regex", "split"]
        .iter()
        .any(|k| t.get(*k).is_some())
}

impl Checker<'_> {
    fn regex(&mut self, s: &Spanned<String>, path: String) -> Option<Regex> {
        match Regex::new(s.get_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e.to_string().lines().last().unwrap_or_default().to_string();
                self.err(Some(s.span()), path, format!("bad regex: {first}"));
                None
            }
        }
    }

    /// Framing of a serial-ascii bus: `terminator` (default "\n"), `length`, or `start`+`end`.
    pub(super) fn framing(&mut self, b: &RawBus, path: &str) -> Option<Framing> {
        let set = [
            b.terminator.is_some(),
            b.length.is_some(),
            b.start.is_some() || b.end.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            self.err(
                Some(b.driver.span()),
                format!("{path}.terminator"),
                "choose one framing: `terminator`, `length`, or `start` + `end`",
            );
            return None;
        }
        let nonempty = |cx: &mut Self, v: &Spanned<String>, key: &str| {
            if v.get_ref().is_empty() {
                cx.err(
                    Some(v.span()),
                    format!("{path}.{key}"),
                    format!("`{key}` must not be empty"),
                );
                None
            } else {
                Some(v.get_ref().as_bytes().to_vec())
            }
        };
        if let Some(t) = &b.terminator {
            return nonempty(self, t, "terminator").map(Framing::Terminator);
        }
        if let Some(n) = &b.length {
            if !(1..=4096).contains(n.get_ref()) {
                self.err(
                    Some(n.span()),
                    format!("{path}.length"),
                    "length must be 1..=4096 bytes",
                );
                return None;
            }
            return Some(Framing::Length(*n.get_ref()));
        }
        match (&b.start, &b.end) {
            (Some(s), Some(e)) => {
                let s = nonempty(self, s, "start");
                let e = nonempty(self, e, "end");
                Some(Framing::Delimited { start: s?, end: e? })
            }
            (Some(s), None) | (None, Some(s)) => {
                self.err(
                    Some(s.span()),
                    format!("{path}.start"),
                    "`start` and `end` go together",
                );
                None
            }
            (None, None) => Some(Framing::Terminator(b"\n".to_vec())),
        }
    }

    pub(super) fn ascii_profile(
        &mut self,
        name: &str,
        mut head: toml::de::DeTable<'_>,
        span: std::ops::Range<usize>,
        path: &str,
    ) -> Option<Parsed> {
        let fields_v = head.remove("field");
        let commands_v = head.remove("command");
        if let Some(p) = head.remove("point") {
            self.err(
                Some(p.span()),
                format!("{path}.point"),
                "a serial instrument profile has `field`s, not Modbus `point`s",
            );
        }
        let head_v = Spanned::new(span.clone(), DeValue::Table(head));
        let raw: RawAsciiProfile = self.de(&head_v, path)?;
        let service = raw.service.clone().unwrap_or_else(|| "data".into());
        let mut ok = true;

        let request = raw
            .request
            .as_ref()
            .map(|r| r.get_ref().as_bytes().to_vec());
        if raw.request.as_ref().is_some_and(|r| r.get_ref().is_empty()) {
            self.err(
                raw.request.as_ref().map(|r| r.span()),
                format!("{path}.request"),
                "`request` must not be empty (leave it out for a stream instrument)",
            );
            ok = false;
        }
        let matcher = match &raw.matcher {
            Some(m) => {
                let r = self.regex(m, format!("{path}.match"));
                ok &= r.is_some();
                r
            }
            None => None,
        };
        let checksum = match &raw.checksum {
            Some(c) => match Checksum::parse(c.get_ref()) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.err(Some(c.span()), format!("{path}.checksum"), e);
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let extract = match (&raw.regex, &raw.split) {
            (Some(r), None) => self.regex(r, format!("{path}.regex")).map(Extract::Regex),
            (None, Some(s)) if !s.get_ref().is_empty() => Some(Extract::Split(s.get_ref().clone())),
            (None, Some(s)) => {
                self.err(
                    Some(s.span()),
                    format!("{path}.split"),
                    "`split` must not be empty",
                );
                None
            }
            (Some(r), Some(_)) => {
                self.err(
                    Some(r.span()),
                    format!("{path}.regex"),
                    "choose `regex` or `split`, not both",
                );
                None
            }
            (None, None) => {
                self.err(Some(span.clone()), path, "a serial instrument profile needs `regex = \"…\"` (captures) or `split = \",\"`");
                None
            }
        };
        let stale_after = raw
            .stale_after
            .as_ref()
            .map_or(Duration::from_secs(60), |d| d.get_ref().0);
        if stale_after < Duration::from_millis(100) {
            self.err(
                raw.stale_after.as_ref().map(|d| d.span()),
                format!("{path}.stale_after"),
                "stale_after must be at least 100ms",
            );
            ok = false;
        }

        let mut fields = Vec::new();
        let mut seen = BTreeSet::new();
        match &fields_v {
            None => {
                self.err(
                    Some(span.clone()),
                    path,
                    "a serial instrument profile needs at least one `[[profile.NAME.field]]`",
                );
                ok = false;
            }
            Some(fv) => {
                let (raw_fields, all) = self.tables_ruled::<RawField>(fv, &format!("{path}.field"));
                ok &= all;
                for (fpath, rf, rule) in raw_fields {
                    match self.field(rf, &service, extract.as_ref(), &fpath, &mut seen) {
                        Some(f) => {
                            self.point_rule(name, &f.service, &f.property, rule, (None, None));
                            fields.push(f)
                        }
                        None => ok = false,
                    }
                }
            }
        }

        let mut commands = Vec::new();
        let mut declared = Vec::new();
        if let Some(cv) = &commands_v {
            let mut names = BTreeSet::new();
            let (raw_commands, all) = self.tables::<RawTemplate>(cv, &format!("{path}.command"));
            ok &= all;
            for (cpath, rc) in raw_commands {
                match self.template(rc, &service, &cpath, &mut names) {
                    Some(t) => {
                        declared.push(t.decl.clone());
                        commands.push(t);
                    }
                    None => ok = false,
                }
            }
        }
        let extract = extract?;
        if !ok {
            return None;
        }
        Some(Parsed {
            product_id: raw.product_id.unwrap_or_else(|| name.to_string()),
            profile: AsciiProfile(Arc::new(Instrument {
                request,
                matcher,
                checksum,
                extract,
                fields,
                stale_after,
                commands,
            })),
            declared,
        })
    }

    fn field(
        &mut self,
        rf: RawField,
        default_service: &str,
        extract: Option<&Extract>,
        path: &str,
        seen: &mut BTreeSet<(String, String)>,
    ) -> Option<FieldSpec> {
        let service = rf.service.unwrap_or_else(|| default_service.to_string());
        let property = rf.property.get_ref().clone();
        if let Some(why) = fieldgate_driver::name_problem(&property)
            .or_else(|| fieldgate_driver::name_problem(&service))
        {
            self.err(
                Some(rf.property.span()),
                format!("{path}.property"),
                format!(
                    "`{}.{}`: a name {why}",
                    service.escape_debug(),
                    property.escape_debug()
                ),
            );
            return None;
        } else if !seen.insert((service.clone(), property.clone())) {
            self.err(
                Some(rf.property.span()),
                format!("{path}.property"),
                format!("property `{service}.{property}` declared twice"),
            );
            return None;
        }
        let kind = match &rf.kind {
            Some(k) => match FieldType::parse(k.get_ref()) {
                Ok(k) => k,
                Err(e) => {
                    self.err(Some(k.span()), format!("{path}.type"), e);
                    return None;
                }
            },
            None => FieldType::Float,
        };
        if (rf.scale.is_some() || rf.offset.is_some())
            && matches!(kind, FieldType::Bool | FieldType::Text)
        {
            self.err(
                Some(rf.property.span()),
                format!("{path}.scale"),
                "scale and offset apply to numbers only",
            );
            return None;
        }
        let source = match (extract, &rf.capture, &rf.index) {
            (_, Some(_), Some(i)) => {
                self.err(
                    Some(i.span()),
                    format!("{path}.index"),
                    "give `capture` (regex) or `index` (split), not both",
                );
                return None;
            }
            (Some(Extract::Regex(re)), Some(c), None) => {
                let c_str = c.get_ref();
                let src = match c_str.parse::<usize>() {
                    Ok(n) => Source::Index(n),
                    Err(_) => Source::Name(c_str.clone()),
                };
                let exists = match &src {
                    Source::Index(n) => *n < re.captures_len(),
                    Source::Name(n) => re.capture_names().flatten().any(|x| x == n),
                };
                if !exists {
                    let names: Vec<&str> = re.capture_names().flatten().collect();
                    self.err(
                        Some(c.span()),
                        format!("{path}.capture"),
                        format!(
                            "the profile's regex has no group `{c_str}` (named groups: {})",
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                    );
                    return None;
                }
                src
            }
            (Some(Extract::Regex(re)), None, None) => {
                // Default: the named group called like the property.
                if !re.capture_names().flatten().any(|x| x == property) {
                    self.err(
                        Some(rf.property.span()),
                        format!("{path}.capture"),
                        format!("no `capture` given and the regex has no group named `{property}`"),
                    );
                    return None;
                }
                Source::Name(property.clone())
            }
            (Some(Extract::Split(_)), None, Some(i)) => Source::Index(*i.get_ref()),
            (Some(Extract::Split(_)), Some(c), None) => {
                self.err(
                    Some(c.span()),
                    format!("{path}.capture"),
                    "with `split`, fields take an `index`",
                );
                return None;
            }
            (Some(Extract::Split(_)), None, None) => {
                self.err(
                    Some(rf.property.span()),
                    format!("{path}.index"),
                    "with `split`, each field needs `index` (0-based)",
                );
                return None;
            }
            (Some(Extract::Regex(_)), None, Some(i)) => {
                self.err(
                    Some(i.span()),
                    format!("{path}.index"),
                    "with `regex`, fields take a `capture`",
                );
                return None;
            }
            // The profile's extraction is already reported broken.
            (None, _, _) => return None,
        };
        Some(FieldSpec {
            service,
            property,
            source,
            kind,
            scale: rf.scale,
            offset: rf.offset,
        })
    }

    fn template(
        &mut self,
        rc: RawTemplate,
        default_service: &str,
        path: &str,
        names: &mut BTreeSet<(String, String)>,
    ) -> Option<TemplateCommand> {
        let service = rc.service.unwrap_or_else(|| default_service.to_string());
        if !self.command_name(names, &service, &rc.name, path) {
            return None;
        }
        let name = rc.name.get_ref().clone();
        let params = self.params(&rc.params, &rc.name, path)?;
        let used = match placeholders(rc.send.get_ref()) {
            Ok(u) => u,
            Err(e) => {
                self.err(Some(rc.send.span()), format!("{path}.send"), e);
                return None;
            }
        };
        for u in &used {
            if !params.iter().any(|p| &p.name == u) {
                self.err(Some(rc.send.span()), format!("{path}.send"), format!("placeholder `{{{u}}}` is not a declared parameter (params = [{{ name = \"{u}\", type = \"int\" }}])"));
                return None;
            }
        }
        if let Some(p) = params.iter().find(|p| !used.contains(&p.name)) {
            self.err(
                Some(rc.send.span()),
                format!("{path}.send"),
                format!(
                    "parameter `{}` is declared but not used in the template",
                    p.name
                ),
            );
            return None;
        }
        let expect = match &rc.expect {
            Some(e) => Some(self.regex(e, format!("{path}.expect"))?),
            None => None,
        };
        Some(TemplateCommand {
            decl: DeclaredCommand {
                service,
                name,
                params,
            },
            template: rc.send.into_inner(),
            expect,
        })
    }
}

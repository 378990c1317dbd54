//! BLE settings in the config: a `ble` bus (the adapter) and `kind = "ble"` profiles — an
//! advertisement `format`, or GATT `[[profile.NAME.characteristic]]`s to read or subscribe to
//! and `[[profile.NAME.command]]`s that write a characteristic — checked key by key into the
//! driver's [`BleDevice`] parts. Devices on a BLE bus are keyed by their `address`.

use std::collections::BTreeSet;
use std::time::Duration;

use fieldgate_ble::spec::{uuid, CharType};
use fieldgate_ble::{Format, GattChar, GattCommand, Kind};
use fieldgate_driver::{DeclaredCommand, ParamKind, ParamSpec};
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::duration::Dur;
use super::Checker;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBleProfile {
    /// The platform product id of children of this model (default: the profile's name).
    #[serde(default)]
    product_id: Option<String>,
    /// The service of the values below (default `data`).
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// Advertisement sensors: auto, bthome, ruuvi, atc.
    #[serde(default)]
    format: Option<Spanned<String>>,
    /// A device not heard from this long is OFFLINE.
    #[serde(default)]
    stale_after: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChar {
    /// The property name on the platform.
    property: Spanned<String>,
    /// The characteristic's service, when not the profile's.
    #[serde(default)]
    service: Option<String>,
    /// The GATT characteristic's UUID.
    uuid: Spanned<String>,
    /// How its bytes decode: `u8`, `i8`, `u16`, `i16`, `u32`, `i32`, `f32`, `bool`, `string`.
    #[serde(rename = "type")]
    kind: Spanned<String>,
    /// Engineering value = decoded × scale + offset.
    #[serde(default)]
    scale: Option<f64>,
    /// Engineering value = decoded × scale + offset.
    #[serde(default)]
    offset: Option<f64>,
    /// Subscribe to notifications instead of reading each poll.
    #[serde(default)]
    notify: bool,
    #[serde(default)]
    #[allow(dead_code)]
    unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBleCommand {
    /// The platform's command name.
    name: Spanned<String>,
    /// The command's service, when not the profile's.
    #[serde(default)]
    service: Option<String>,
    /// The characteristic written with the command's `value`.
    characteristic: Spanned<String>,
    /// How the written value encodes.
    #[serde(rename = "type")]
    kind: Spanned<String>,
    /// The smallest value a command may write.
    #[serde(default)]
    min: Option<f64>,
    /// The largest value a command may write.
    #[serde(default)]
    max: Option<f64>,
}

/// A checked BLE profile: what every device of the model shares.
#[derive(Debug, Clone, PartialEq)]
pub struct BleProfile {
    pub service: String,
    pub kind: Kind,
    pub stale_after: Duration,
}

impl Checker<'_> {
    pub(super) fn ble_profile(
        &mut self,
        name: &str,
        mut head: toml::de::DeTable<'_>,
        span: std::ops::Range<usize>,
        path: &str,
    ) -> Option<(String, BleProfile, Vec<DeclaredCommand>)> {
        let chars_v = head.remove("characteristic");
        let commands_v = head.remove("command");
        let raw: RawBleProfile =
            self.de(&Spanned::new(span.clone(), DeValue::Table(head)), path)?;
        let service = raw.service.clone().unwrap_or_else(|| "data".into());
        let stale_after = raw
            .stale_after
            .as_ref()
            .map_or(Duration::from_secs(300), |d| d.get_ref().0);
        if stale_after < Duration::from_secs(1) {
            self.err(
                raw.stale_after.as_ref().map(|d| d.span()),
                format!("{path}.stale_after"),
                "stale_after must be at least 1s",
            );
            return None;
        }
        let mut ok = true;
        let kind = if chars_v.is_none() && commands_v.is_none() {
            let format = match &raw.format {
                Some(f) => match Format::parse(f.get_ref()) {
                    Ok(f) => f,
                    Err(e) => {
                        self.err(Some(f.span()), format!("{path}.format"), e);
                        return None;
                    }
                },
                None => Format::Auto,
            };
            Kind::Advert { format }
        } else {
            if let Some(f) = &raw.format {
                self.err(
                    Some(f.span()),
                    format!("{path}.format"),
                    "`format` is for advertisement sensors; a GATT profile has `characteristic`s",
                );
                ok = false;
            }
            let mut chars = Vec::new();
            let mut seen = BTreeSet::new();
            if let Some(cv) = &chars_v {
                let (raw_chars, all) =
                    self.tables_ruled::<RawChar>(cv, &format!("{path}.characteristic"));
                ok &= all;
                for (cpath, rc, rule) in raw_chars {
                    let svc = rc.service.clone().unwrap_or_else(|| service.clone());
                    if let Some(why) = fieldgate_driver::name_problem(rc.property.get_ref())
                        .or_else(|| fieldgate_driver::name_problem(&svc))
                    {
                        self.err(
                            Some(rc.property.span()),
                            format!("{cpath}.property"),
                            format!(
                                "`{}.{}`: a name {why}",
                                svc.escape_debug(),
                                rc.property.get_ref().escape_debug()
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    if !seen.insert((svc.clone(), rc.property.get_ref().clone())) {
                        self.err(
                            Some(rc.property.span()),
                            format!("{cpath}.property"),
                            format!("property `{svc}.{}` declared twice", rc.property.get_ref()),
                        );
                        ok = false;
                        continue;
                    }
                    let u = uuid(rc.uuid.get_ref())
                        .map_err(|e| self.err(Some(rc.uuid.span()), format!("{cpath}.uuid"), e));
                    let k = CharType::parse(rc.kind.get_ref())
                        .map_err(|e| self.err(Some(rc.kind.span()), format!("{cpath}.type"), e));
                    self.point_rule(name, &svc, rc.property.get_ref(), rule, (None, None));
                    match (u, k) {
                        (Ok(uuid), Ok(kind)) => chars.push(GattChar {
                            service: svc,
                            property: rc.property.into_inner(),
                            uuid,
                            kind,
                            scale: rc.scale,
                            offset: rc.offset,
                            notify: rc.notify,
                        }),
                        _ => ok = false,
                    }
                }
            }
            let mut commands = Vec::new();
            if let Some(cv) = &commands_v {
                let mut names = BTreeSet::new();
                let (raw_commands, all) =
                    self.tables::<RawBleCommand>(cv, &format!("{path}.command"));
                ok &= all;
                for (cpath, rc) in raw_commands {
                    let svc = rc.service.clone().unwrap_or_else(|| service.clone());
                    if !self.command_name(&mut names, &svc, &rc.name, &cpath) {
                        ok = false;
                        continue;
                    }
                    let u = uuid(rc.characteristic.get_ref()).map_err(|e| {
                        self.err(
                            Some(rc.characteristic.span()),
                            format!("{cpath}.characteristic"),
                            e,
                        )
                    });
                    let k = CharType::parse(rc.kind.get_ref())
                        .map_err(|e| self.err(Some(rc.kind.span()), format!("{cpath}.type"), e));
                    let (Ok(uuid), Ok(kind)) = (u, k) else {
                        ok = false;
                        continue;
                    };
                    let param = match kind {
                        CharType::Bool => ParamKind::Bool,
                        CharType::F32 => ParamKind::Float {
                            min: rc.min,
                            max: rc.max,
                        },
                        CharType::Text => ParamKind::Text {
                            max_len: 20,
                            pattern: None,
                        },
                        _ => ParamKind::Int {
                            min: rc.min.map(|v| v as i64),
                            max: rc.max.map(|v| v as i64),
                        },
                    };
                    commands.push(GattCommand {
                        decl: DeclaredCommand {
                            service: svc,
                            name: rc.name.into_inner(),
                            params: vec![ParamSpec {
                                name: "value".into(),
                                kind: param,
                            }],
                        },
                        uuid,
                        kind,
                    });
                }
            }
            if chars.is_empty() && commands.is_empty() {
                self.err(
                    Some(span),
                    path,
                    "a GATT profile needs at least one characteristic or command",
                );
                ok = false;
            }
            Kind::Gatt { chars, commands }
        };
        if !ok {
            return None;
        }
        let declared = match &kind {
            Kind::Gatt { commands, .. } => commands.iter().map(|c| c.decl.clone()).collect(),
            Kind::Advert { .. } => Vec::new(),
        };
        Some((
            raw.product_id.unwrap_or_else(|| name.to_string()),
            BleProfile {
                service,
                kind,
                stale_after,
            },
            declared,
        ))
    }
}

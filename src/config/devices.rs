//! `[[device]]`: one per child — its bus and profile must exist and agree in kind, and what the
//! device adds (unit, poll period, address, options, report rules) is checked against both.

use super::*;

impl Checker<'_> {
    pub(super) fn devices(
        &mut self,
        v: Option<&Sv<'_>>,
        buses: &BTreeMap<String, Bus>,
        profiles: &BTreeMap<String, Profile>,
        declared: &Declared,
    ) -> Vec<Device> {
        let mut out = Vec::new();
        let Some(v) = v else { return out };
        let mut ids = BTreeSet::new();
        for (i, item) in self.array(v, "device").into_iter().enumerate() {
            let path = format!("device[{i}]");
            let (item, rule) = self.split_rule(item, &path);
            let Some(d): Option<RawDevice> = self.de(&item, &path) else {
                continue;
            };
            let node_id = d.node_id.get_ref().clone();
            if !valid_node_id(&node_id) {
                self.err(Some(d.node_id.span()), format!("{path}.node_id"), format!("node_id `{node_id}` must be 1–64 characters of letters, digits, `-`, `_`, `.`"));
            }
            if !ids.insert(node_id.clone()) {
                self.err(
                    Some(d.node_id.span()),
                    format!("{path}.node_id"),
                    format!("duplicate node_id `{node_id}`"),
                );
            }
            let bus = buses.get(d.bus.get_ref());
            if !declared.buses.contains(d.bus.get_ref()) {
                let known: Vec<&str> = declared.buses.iter().map(String::as_str).collect();
                self.err(
                    Some(d.bus.span()),
                    format!("{path}.bus"),
                    format!(
                        "no bus named `{}` (defined: {})",
                        d.bus.get_ref(),
                        list(&known)
                    ),
                );
            }
            let profile = profiles.get(d.profile.get_ref());
            if !declared.profiles.contains(d.profile.get_ref()) {
                let known: Vec<&str> = declared.profiles.iter().map(String::as_str).collect();
                self.err(
                    Some(d.profile.span()),
                    format!("{path}.profile"),
                    format!(
                        "no profile named `{}` (defined: {})",
                        d.profile.get_ref(),
                        list(&known)
                    ),
                );
            }
            let poll = match d.poll {
                Some(p) if p.get_ref().0 < Duration::from_millis(10) => {
                    self.err(
                        Some(p.span()),
                        format!("{path}.poll"),
                        "poll must be at least 10ms",
                    );
                    continue;
                }
                Some(p) => p.into_inner().0,
                None => Duration::from_secs(10),
            };
            let unit = d.unit.unwrap_or(defaults::UNIT);
            if let Some(Bus {
                kind: BusKind::ModbusRtu { .. },
                ..
            }) = bus
            {
                if !(1..=247).contains(&unit) {
                    self.err(
                        None,
                        format!("{path}.unit"),
                        format!("unit {unit} is not a Modbus RTU device address (1..=247)"),
                    );
                }
            }
            let turnaround = match d.turnaround {
                Some(t) if t.get_ref().0 > Duration::from_secs(1) => {
                    self.err(
                        Some(t.span()),
                        format!("{path}.turnaround"),
                        "turnaround must be at most 1s",
                    );
                    Duration::ZERO
                }
                Some(t) => t.into_inner().0,
                None => Duration::ZERO,
            };
            if let (Some(b), Some(p)) = (bus, profile) {
                let wants = match b.kind {
                    BusKind::SerialAscii { .. } => ProfileKind::Ascii,
                    BusKind::Exec(_) => ProfileKind::Exec,
                    BusKind::Ble { .. } => ProfileKind::Ble,
                    _ => ProfileKind::Modbus,
                };
                if wants != p.kind {
                    self.err(
                        Some(d.profile.span()),
                        format!("{path}.profile"),
                        format!(
                            "bus `{}` needs {} profile; profile `{}` describes {}",
                            b.name,
                            wants.describe(),
                            d.profile.get_ref(),
                            p.kind.describe()
                        ),
                    );
                    continue;
                }
                if d.options.is_some() && p.kind != ProfileKind::Exec {
                    self.err(
                        Some(d.node_id.span()),
                        format!("{path}.options"),
                        "`options` is for devices on an exec bus",
                    );
                }
                let ble = match (&p.ble, &d.address) {
                    (Some(bp), Some(a)) => match fieldgate_ble::spec::address(a.get_ref()) {
                        Ok(address) => Some(fieldgate_ble::BleDevice {
                            node_id: node_id.clone(),
                            address,
                            service: bp.service.clone(),
                            kind: bp.kind.clone(),
                            poll,
                            stale_after: bp.stale_after,
                        }),
                        Err(e) => {
                            self.err(Some(a.span()), format!("{path}.address"), e);
                            continue;
                        }
                    },
                    (Some(_), None) => {
                        self.err(
                            Some(d.node_id.span()),
                            format!("{path}.address"),
                            "a BLE device needs `address = \"AA:BB:CC:DD:EE:FF\"`",
                        );
                        continue;
                    }
                    (None, Some(a)) => {
                        self.err(
                            Some(a.span()),
                            format!("{path}.address"),
                            "`address` is for devices on a BLE bus",
                        );
                        continue;
                    }
                    (None, None) => None,
                };
                let kind = match (p.kind, ble, &p.ascii) {
                    (ProfileKind::Ble, Some(device), _) => DeviceKind::Ble {
                        device,
                        declared: p.declared.clone(),
                    },
                    (ProfileKind::Ascii, _, Some(instrument)) => DeviceKind::Ascii {
                        instrument: instrument.clone(),
                        declared: p.declared.clone(),
                    },
                    (ProfileKind::Exec, _, _) => DeviceKind::Exec {
                        options: d.options.clone().unwrap_or(serde_json::Value::Null),
                        declared: p.declared.clone(),
                    },
                    _ => DeviceKind::Modbus {
                        unit,
                        turnaround,
                        points: p.points.clone(),
                        max_gap: p.max_gap,
                        commands: p.commands.clone(),
                    },
                };
                out.push(Device {
                    name: d.name.unwrap_or_else(|| node_id.clone()),
                    node_id,
                    bus: d.bus.into_inner(),
                    poll,
                    product_id: d.product_id.unwrap_or_else(|| p.product_id.clone()),
                    profile: d.profile.get_ref().clone(),
                    report: self.child_rules(d.profile.get_ref(), &rule),
                    kind,
                });
            }
        }
        out
    }
}

//! `[profile.NAME]`: a device model. The kind is told from its keys; Modbus point maps and
//! their commands are read here, serial, BLE and exec profiles in their own rooms.

use super::*;

impl Checker<'_> {
    pub(super) fn profiles(
        &mut self,
        v: Option<&Sv<'_>>,
        declared: &mut BTreeSet<String>,
    ) -> BTreeMap<String, Profile> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        let DeValue::Table(t) = v.get_ref() else {
            self.err(
                Some(v.span()),
                "profile",
                "expected `[profile.NAME]` tables",
            );
            return out;
        };
        for (name, pv) in t.iter() {
            let name: &str = name.get_ref();
            declared.insert(name.to_string());
            let path = format!("profile.{name}");
            let DeValue::Table(pt) = pv.get_ref() else {
                self.err(Some(pv.span()), &path, "expected a table");
                continue;
            };
            let mut pt = pt.clone();
            let rule = self.take_rule(&mut pt, pv.span(), &path);
            self.profile_rule(name, rule);
            let kind = match pt.remove("kind") {
                None if ascii::looks_ascii(&pt) => ProfileKind::Ascii,
                None if pt.get("format").is_some() || pt.get("characteristic").is_some() => {
                    ProfileKind::Ble
                }
                None => ProfileKind::Modbus,
                Some(k) => match k.get_ref().as_str() {
                    Some("modbus") => ProfileKind::Modbus,
                    Some("serial-ascii") => ProfileKind::Ascii,
                    Some("exec") => ProfileKind::Exec,
                    Some("ble") => ProfileKind::Ble,
                    _ => {
                        self.err(
                            Some(k.span()),
                            format!("{path}.kind"),
                            "kind must be \"modbus\", \"serial-ascii\", \"ble\" or \"exec\"",
                        );
                        continue;
                    }
                },
            };
            if kind == ProfileKind::Ble {
                if let Some((product_id, ble, declared)) =
                    self.ble_profile(name, pt, pv.span(), &path)
                {
                    out.insert(
                        name.to_string(),
                        Profile {
                            product_id,
                            max_gap: 0,
                            points: Vec::new().into(),
                            commands: Vec::new().into(),
                            ascii: None,
                            ble: Some(ble),
                            declared: declared.into(),
                            kind,
                        },
                    );
                }
                continue;
            }
            if kind == ProfileKind::Exec {
                if let Some((product_id, declared)) = self.exec_profile(name, pt, pv.span(), &path)
                {
                    out.insert(
                        name.to_string(),
                        Profile {
                            product_id,
                            max_gap: 0,
                            points: Vec::new().into(),
                            commands: Vec::new().into(),
                            ascii: None,
                            ble: None,
                            declared: declared.into(),
                            kind,
                        },
                    );
                }
                continue;
            }
            let pt = &pt;
            if kind == ProfileKind::Ascii {
                if let Some(a) = self.ascii_profile(name, pt.clone(), pv.span(), &path) {
                    out.insert(
                        name.to_string(),
                        Profile {
                            product_id: a.product_id,
                            max_gap: 0,
                            points: Vec::new().into(),
                            commands: Vec::new().into(),
                            ascii: Some(a.profile),
                            ble: None,
                            declared: a.declared.into(),
                            kind,
                        },
                    );
                }
                continue;
            }
            let mut head = pt.clone();
            let points = head.remove("point");
            let commands = head.remove("command");
            let head_v = Spanned::new(pv.span(), DeValue::Table(head));
            let Some(raw): Option<RawProfile> = self.de(&head_v, &path) else {
                continue;
            };
            let service = raw
                .service
                .clone()
                .unwrap_or_else(|| defaults::SERVICE.into());
            let mut specs = Vec::new();
            let mut seen = BTreeSet::new();
            match &points {
                Some(pts) => {
                    let (raw_points, _) =
                        self.tables_ruled::<RawPoint>(pts, &format!("{path}.point"));
                    for (ppath, rp, rule) in raw_points {
                        let svc = rp.service.clone().unwrap_or_else(|| service.clone());
                        let (prop, min_max) = (rp.property.get_ref().clone(), (rp.min, rp.max));
                        if let Some(spec) = self.point(rp, &service, &ppath, &mut seen) {
                            specs.push(spec);
                            self.point_rule(name, &svc, &prop, rule, min_max);
                        }
                    }
                }
                None => self.err(
                    Some(pv.span()),
                    &path,
                    "a profile needs at least one `[[profile.NAME.point]]`",
                ),
            }
            let mut cmds = Vec::new();
            if let Some(cv) = &commands {
                let mut names = BTreeSet::new();
                let (raw_commands, _) = self.tables::<RawCommand>(cv, &format!("{path}.command"));
                for (cpath, rc) in raw_commands {
                    if let Some(spec) = self.command(rc, &service, &specs, &cpath, &mut names) {
                        cmds.push(spec);
                    }
                }
            }
            out.insert(
                name.to_string(),
                Profile {
                    product_id: raw.product_id.unwrap_or_else(|| name.to_string()),
                    max_gap: raw.max_gap.map_or(defaults::MAX_GAP, |g| g.into_inner()),
                    points: specs.into(),
                    commands: cmds.into(),
                    ascii: None,
                    ble: None,
                    declared: Vec::new().into(),
                    kind,
                },
            );
        }
        out
    }

    pub(super) fn command(
        &mut self,
        rc: RawCommand,
        default_service: &str,
        points: &[PointSpec],
        path: &str,
        names: &mut BTreeSet<(String, String)>,
    ) -> Option<CommandSpec> {
        let service = rc.service.unwrap_or_else(|| default_service.to_string());
        if !self.command_name(names, &service, &rc.name, path) {
            return None;
        }
        let name = rc.name.get_ref().clone();
        let target = rc.point.get_ref();
        let found: Vec<usize> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                &p.property == target || format!("{}.{}", p.service, p.property) == *target
            })
            .map(|(i, _)| i)
            .collect();
        let idx = match found.as_slice() {
            [i] => *i,
            [] => {
                self.err(
                    Some(rc.point.span()),
                    format!("{path}.point"),
                    format!("no point `{target}` in this profile"),
                );
                return None;
            }
            _ => {
                self.err(
                    Some(rc.point.span()),
                    format!("{path}.point"),
                    format!("`{target}` names several points; write `service.property`"),
                );
                return None;
            }
        };
        let p = &points[idx];
        if p.table != fieldgate_modbus::Table::Coil && p.table != fieldgate_modbus::Table::Holding {
            self.err(
                Some(rc.point.span()),
                format!("{path}.point"),
                format!("point `{target}` is in the read-only {} table", p.table),
            );
            return None;
        }
        let value = match rc.value {
            Some(v) => match fieldgate_modbus::point::coerce(p, v.get_ref()) {
                Ok(v) => Some(v),
                Err((_, why)) => {
                    self.err(Some(v.span()), format!("{path}.value"), why);
                    return None;
                }
            },
            None => None,
        };
        Some(CommandSpec {
            service,
            name,
            point: idx,
            value,
        })
    }

    pub(super) fn point(
        &mut self,
        rp: RawPoint,
        default_service: &str,
        path: &str,
        seen: &mut BTreeSet<(String, String)>,
    ) -> Option<PointSpec> {
        let service = rp.service.unwrap_or_else(|| default_service.to_string());
        let property = rp.property.get_ref().clone();
        if let Some(why) = fieldgate_driver::name_problem(&property) {
            self.err(
                Some(rp.property.span()),
                format!("{path}.property"),
                format!("property `{}` {why}", property.escape_debug()),
            );
        }
        if let Some(why) = fieldgate_driver::name_problem(&service) {
            self.err(
                Some(rp.property.span()),
                format!("{path}.service"),
                format!("service `{}` {why}", service.escape_debug()),
            );
        }
        if !seen.insert((service.clone(), property.clone())) {
            self.err(
                Some(rp.property.span()),
                format!("{path}.property"),
                format!("duplicate property `{service}.{property}` in this profile"),
            );
        }
        let loc = match parse_location(rp.address.get_ref()) {
            Ok(l) => Some(l),
            Err(e) => {
                self.err(Some(rp.address.span()), format!("{path}.address"), e);
                None
            }
        };
        let default_type = match loc {
            Some((t, _)) if t.is_bits() => "bool",
            _ => "u16",
        };
        let (type_str, type_span) = match &rp.dtype {
            Some(t) => (t.get_ref().as_str(), Some(t.span())),
            None => (default_type, Some(rp.address.span())),
        };
        let dtype = match DataType::parse(type_str, rp.length) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(type_span, format!("{path}.type"), e);
                None
            }
        };
        let mut order = |o: &Option<Spanned<String>>, key: &str| match o {
            Some(s) => match Order::parse(s.get_ref()) {
                Ok(o) => o,
                Err(e) => {
                    self.err(Some(s.span()), format!("{path}.{key}"), e);
                    Order::Big
                }
            },
            None => Order::Big,
        };
        let byte_order = order(&rp.byte_order, "byte_order");
        let word_order = order(&rp.word_order, "word_order");
        let ((table, address), dtype) = (loc?, dtype?);
        let spec = PointSpec {
            service,
            property,
            table,
            address,
            dtype,
            bit: rp.bit,
            byte_order,
            word_order,
            scale: rp.scale,
            offset: rp.offset,
            writable: rp.writable.unwrap_or(false),
            min: rp.min,
            max: rp.max,
        };
        let problems = spec.validate();
        for p in &problems {
            self.err(
                Some(rp.address.span()),
                format!("{path}.address"),
                p.clone(),
            );
        }
        problems.is_empty().then_some(spec)
    }
}

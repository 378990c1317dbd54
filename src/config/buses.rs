//! `[[bus]]`: one per line or endpoint — its driver and the settings that driver reads (a TCP
//! endpoint, a serial port's framing, an exec program, a BLE adapter), refused for the others.

use super::*;

impl Checker<'_> {
    pub(super) fn buses(
        &mut self,
        v: Option<&Sv<'_>>,
        declared: &mut BTreeSet<String>,
    ) -> BTreeMap<String, Bus> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        for (i, item) in self.array(v, "bus").into_iter().enumerate() {
            let path = format!("bus[{i}]");
            let Some(b): Option<RawBus> = self.de(item, &path) else {
                continue;
            };
            let name = b.name.get_ref().clone();
            if !declared.insert(name.clone()) {
                self.err(
                    Some(b.name.span()),
                    format!("{path}.name"),
                    format!("duplicate bus name `{name}`"),
                );
                continue;
            }
            let kind = match b.driver.get_ref().as_str() {
                "modbus-tcp" => match &b.endpoint {
                    Some(e) if valid_endpoint(e.get_ref()) => Some(BusKind::ModbusTcp {
                        endpoint: e.get_ref().clone(),
                    }),
                    Some(e) => {
                        self.err(
                            Some(e.span()),
                            format!("{path}.endpoint"),
                            format!("endpoint `{}` must be `host:port`", e.get_ref()),
                        );
                        None
                    }
                    None => {
                        self.err(
                            Some(b.driver.span()),
                            format!("{path}.endpoint"),
                            "a modbus-tcp bus needs `endpoint = \"host:port\"`",
                        );
                        None
                    }
                },
                "modbus-rtu" => {
                    let port = self.serial_port(&b, &path);
                    let settle = match &b.settle {
                        Some(s) if s.get_ref().0 > Duration::from_secs(10) => {
                            self.err(
                                Some(s.span()),
                                format!("{path}.settle"),
                                "settle must be at most 10s",
                            );
                            None
                        }
                        Some(s) => Some(s.get_ref().0),
                        // A device's late reply comes within about one more timeout.
                        None => Some(
                            b.timeout
                                .as_ref()
                                .map_or(defaults::BUS_TIMEOUT, |t| t.get_ref().0),
                        ),
                    };
                    port.zip(settle)
                        .map(|(port, settle)| BusKind::ModbusRtu { port, settle })
                }
                "serial-ascii" => {
                    let port = self.serial_port(&b, &path);
                    let framing = self.framing(&b, &path);
                    let max_frame = match &b.max_frame {
                        Some(m) if !(8..=65536).contains(m.get_ref()) => {
                            self.err(
                                Some(m.span()),
                                format!("{path}.max_frame"),
                                "max_frame must be 8..=65536 bytes",
                            );
                            None
                        }
                        Some(m) => Some(*m.get_ref()),
                        None => Some(256),
                    };
                    match (port, framing, max_frame) {
                        (Some(port), Some(framing), Some(max_frame)) => {
                            Some(BusKind::SerialAscii {
                                port,
                                framing,
                                max_frame,
                            })
                        }
                        _ => None,
                    }
                }
                "ble" if !cfg!(feature = "ble") => {
                    self.err(
                        Some(b.driver.span()),
                        format!("{path}.driver"),
                        "this fieldgate was built without BLE support (cargo feature `ble`; the packages have it)",
                    );
                    None
                }
                "ble" => Some(BusKind::Ble {
                    adapter: b.adapter.as_ref().map(|a| a.get_ref().clone()),
                }),
                "exec" => self.exec_settings(&b, &path).map(|e| {
                    let min = b.reconnect_min.map_or(defaults::EXEC_RESTART_MIN, |d| d.0);
                    let max = b
                        .reconnect_max
                        .map_or(defaults::EXEC_RESTART_MAX, |d| d.0)
                        .max(min);
                    BusKind::Exec(e.bus(&name, min, max))
                }),
                other => {
                    self.err(
                        Some(b.driver.span()),
                        format!("{path}.driver"),
                        format!("unknown driver `{other}` (supported: modbus-tcp, modbus-rtu, serial-ascii, exec)"),
                    );
                    None
                }
            };
            if kind.is_some() && !matches!(kind, Some(BusKind::ModbusTcp { .. })) {
                if let Some(e) = &b.endpoint {
                    self.err(
                        Some(e.span()),
                        format!("{path}.endpoint"),
                        format!(
                            "`endpoint` is for TCP buses; driver `{}` uses `port`",
                            b.driver.get_ref()
                        ),
                    );
                }
            }
            // A BLE connection takes seconds; a Modbus answer milliseconds.
            let default_timeout = if b.driver.get_ref() == "ble" {
                defaults::BLE_TIMEOUT
            } else {
                defaults::BUS_TIMEOUT
            };
            let timeout = b.timeout.map_or(default_timeout, |t| t.into_inner().0);
            if timeout.is_zero() {
                self.err(
                    None,
                    format!("{path}.timeout"),
                    "timeout must be greater than 0",
                );
            }
            let offline_after = match b.offline_after {
                Some(n) if *n.get_ref() == 0 => {
                    self.err(
                        Some(n.span()),
                        format!("{path}.offline_after"),
                        "offline_after must be at least 1",
                    );
                    1
                }
                Some(n) => n.into_inner(),
                None => defaults::OFFLINE_AFTER,
            };
            let reconnect_min = b.reconnect_min.map_or(defaults::BUS_RECONNECT_MIN, |d| d.0);
            if let Some(kind) = kind {
                out.insert(
                    name.clone(),
                    Bus {
                        name,
                        kind,
                        timeout,
                        offline_after,
                        reconnect_min,
                        reconnect_max: b
                            .reconnect_max
                            .map_or(defaults::BUS_RECONNECT_MAX, |d| d.0)
                            .max(reconnect_min),
                        max_backoff: b.max_backoff.map_or(defaults::MAX_BACKOFF, |d| d.0),
                    },
                );
            }
        }
        out
    }

    /// Port settings of a serial bus; 9600 8N1 unless said otherwise.
    pub(super) fn serial_port(&mut self, b: &RawBus, path: &str) -> Option<PortSettings> {
        let Some(port) = &b.port else {
            self.err(
                Some(b.driver.span()),
                format!("{path}.port"),
                format!(
                    "a {} bus needs `port = \"/dev/ttyUSB0\"` (the serial device)",
                    b.driver.get_ref()
                ),
            );
            return None;
        };
        let mut ok = true;
        if !port.get_ref().starts_with('/') {
            self.err(
                Some(port.span()),
                format!("{path}.port"),
                format!("port `{}` must be an absolute device path", port.get_ref()),
            );
            ok = false;
        }
        let parity = match &b.parity {
            None => Parity::None,
            Some(p) => match Parity::parse(p.get_ref()) {
                Ok(p) => p,
                Err(e) => {
                    self.err(Some(p.span()), format!("{path}.parity"), e);
                    ok = false;
                    Parity::None
                }
            },
        };
        let s = PortSettings {
            path: port.get_ref().clone(),
            baud: b.baud.as_ref().map_or(defaults::BAUD, |v| *v.get_ref()),
            parity,
            data_bits: b
                .data_bits
                .as_ref()
                .map_or(defaults::DATA_BITS, |v| *v.get_ref()),
            stop_bits: b.stop_bits.as_ref().map_or(1, |v| *v.get_ref()),
        };
        if let Err(e) = s.validate() {
            let (key, span) = match e {
                SettingsError::Baud(_) => ("baud", b.baud.as_ref().map(|v| v.span())),
                SettingsError::DataBits(_) => ("data_bits", b.data_bits.as_ref().map(|v| v.span())),
                SettingsError::StopBits(_) | SettingsError::Parity(_) => {
                    ("stop_bits", b.stop_bits.as_ref().map(|v| v.span()))
                }
            };
            self.err(span, format!("{path}.{key}"), e);
            ok = false;
        }
        ok.then_some(s)
    }
}

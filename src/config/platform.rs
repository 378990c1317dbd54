//! `[platform]`: which platform, where, as whom, and how the session behaves — each key checked
//! against the dialect it belongs to (a Sparkplug key on an IoTDA gateway is an error).

use super::*;

impl Checker<'_> {
    pub(super) fn platform(&mut self, p: RawPlatform) -> Option<Platform> {
        let dialect = match p.dialect.get_ref().as_str() {
            "iotda" => Some(Dialect::Iotda),
            "thingsboard" => Some(Dialect::ThingsBoard),
            "oceanconnect" => Some(Dialect::OceanConnect),
            "allthingstalk" => Some(Dialect::AllThingsTalk),
            "sparkplug" => Some(Dialect::Sparkplug),
            other => {
                self.err(
                    Some(p.dialect.span()),
                    "platform.dialect",
                    format!(
                        "unknown dialect `{other}` (supported: iotda, thingsboard, oceanconnect, allthingstalk, sparkplug)"
                    ),
                );
                None
            }
        };
        if p.host.get_ref().trim().is_empty() {
            self.err(
                Some(p.host.span()),
                "platform.host",
                "host must not be empty",
            );
        }
        if p.device_id.get_ref().trim().is_empty() {
            self.err(
                Some(p.device_id.span()),
                "platform.device_id",
                "device_id must not be empty",
            );
        }
        let secret = match (p.secret, p.secret_file) {
            (Some(s), None) => Some(SecretSource::Inline(Secret(s.into_inner()))),
            (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f.into_inner()))),
            (Some(_), Some(f)) => {
                self.err(
                    Some(f.span()),
                    "platform.secret_file",
                    "give either `secret` or `secret_file`, not both",
                );
                None
            }
            (None, None) => {
                self.err(Some(p.device_id.span()), "platform", "missing `secret_file` (or `secret`): the device secret used to sign the MQTT password");
                None
            }
        };
        let port = p.port.unwrap_or(defaults::PORT);
        let client_auth = match (&p.client_cert, &p.client_key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref()))),
            (None, None) => None,
            (Some(s), None) | (None, Some(s)) => {
                self.err(
                    Some(s.span()),
                    "platform.client_cert",
                    "`client_cert` and `client_key` go together (mutual TLS)",
                );
                return None;
            }
        };
        if client_auth.is_some() && p.tls == Some(false) {
            self.err(
                None,
                "platform.client_cert",
                "a client certificate needs `tls = true`",
            );
            return None;
        }
        let username = match (&dialect, &p.username) {
            (Some(Dialect::ThingsBoard), Some(u)) => Some(u.get_ref().clone()),
            (_, Some(u)) => {
                self.err(
                    Some(u.span()),
                    "platform.username",
                    "`username` is for dialect thingsboard (basic MQTT credentials)",
                );
                return None;
            }
            (_, None) => None,
        };
        let keepalive = match p.keepalive {
            Some(k) if !(30..=1200).contains(&k.get_ref().0.as_secs()) => {
                self.err(
                    Some(k.span()),
                    "platform.keepalive",
                    "keepalive must be between 30s and 1200s (IoTDA refuses others)",
                );
                None
            }
            Some(k) => Some(k.into_inner().0),
            None => Some(defaults::KEEPALIVE),
        };
        let inflight = match p.inflight {
            Some(i) if *i.get_ref() == 0 || *i.get_ref() > 1000 => {
                self.err(
                    Some(i.span()),
                    "platform.inflight",
                    "inflight must be between 1 and 1000",
                );
                None
            }
            Some(i) => Some(i.into_inner()),
            None => Some(defaults::INFLIGHT),
        };
        let inflight_bytes = match p.inflight_bytes {
            Some(b) if b.get_ref().0 < 4 << 10 || b.get_ref().0 > 1 << 30 => {
                self.err(
                    Some(b.span()),
                    "platform.inflight_bytes",
                    "inflight_bytes must be between 4KiB and 1GiB",
                );
                None
            }
            Some(b) => usize::try_from(b.into_inner().0).ok(),
            None => usize::try_from(defaults::INFLIGHT_BYTES).ok(),
        };
        let max_packet = match p.max_packet {
            Some(m) if *m.get_ref() < 4096 => {
                self.err(
                    Some(m.span()),
                    "platform.max_packet",
                    "max_packet must be at least 4096 bytes",
                );
                None
            }
            Some(m) => Some(m.into_inner() as usize),
            None => Some(defaults::MAX_PACKET),
        };
        let command_timeout = match p.command_timeout {
            Some(t)
                if t.get_ref().0 < Duration::from_millis(100)
                    || t.get_ref().0 >= Duration::from_secs(20) =>
            {
                self.err(
                    Some(t.span()),
                    "platform.command_timeout",
                    "command_timeout must be from 100ms to under 20s (IoTDA gives up after 20s)",
                );
                None
            }
            Some(t) => Some(t.into_inner().0),
            None => Some(defaults::COMMAND_TIMEOUT),
        };
        let reconnect_min = p.reconnect_min.map_or(RECONNECT_MIN, |d| d.0);
        let reconnect_max = p
            .reconnect_max
            .map_or(RECONNECT_MAX, |d| d.0)
            .max(reconnect_min);
        let connect_timeout = match p.connect_timeout {
            Some(t) if t.get_ref().0 < Duration::from_secs(1) => {
                self.err(
                    Some(t.span()),
                    "platform.connect_timeout",
                    "connect_timeout must be at least 1s (a TLS handshake over a slow link takes seconds)",
                );
                None
            }
            Some(t) => Some(t.into_inner().0),
            None => Some(CONNECT_TIMEOUT),
        };
        let account = match (&dialect, &p.account) {
            (Some(Dialect::AllThingsTalk), Some(a)) if !a.get_ref().trim().is_empty() => {
                a.get_ref().clone()
            }
            (Some(Dialect::AllThingsTalk), _) => {
                self.err(
                    p.account.as_ref().map(|a| a.span()).or(Some(p.dialect.span())),
                    "platform.account",
                    "allthingstalk needs `account = \"…\"`: the client id of the account that owns the gateway",
                );
                return None;
            }
            (_, Some(a)) => {
                self.err(
                    Some(a.span()),
                    "platform.account",
                    "`account` is for dialect allthingstalk",
                );
                return None;
            }
            (_, None) => String::new(),
        };
        let sparkplug_id = |s: &str| !s.is_empty() && !s.contains(['+', '/', '#']);
        let group_id = match (&dialect, &p.group_id) {
            (Some(Dialect::Sparkplug), Some(g)) if sparkplug_id(g.get_ref()) => g.get_ref().clone(),
            (Some(Dialect::Sparkplug), g) => {
                self.err(
                    g.as_ref().map(|g| g.span()).or(Some(p.dialect.span())),
                    "platform.group_id",
                    "sparkplug needs `group_id = \"…\"` (no `+`, `/` or `#`)",
                );
                return None;
            }
            (_, Some(g)) => {
                self.err(
                    Some(g.span()),
                    "platform.group_id",
                    "`group_id` is for dialect sparkplug",
                );
                return None;
            }
            (_, None) => String::new(),
        };
        let service_keys = match (&dialect, &p.keys) {
            (_, None) => false,
            (Some(Dialect::ThingsBoard), Some(k)) if k.get_ref() == "property" => false,
            (Some(Dialect::ThingsBoard), Some(k)) if k.get_ref() == "service.property" => true,
            (Some(Dialect::ThingsBoard), Some(k)) => {
                self.err(
                    Some(k.span()),
                    "platform.keys",
                    "keys must be \"property\" or \"service.property\"",
                );
                return None;
            }
            (_, Some(k)) => {
                self.err(
                    Some(k.span()),
                    "platform.keys",
                    "`keys` is for dialect thingsboard",
                );
                return None;
            }
        };
        let aliases = match (&dialect, &p.aliases) {
            (_, None) => false,
            (Some(Dialect::Sparkplug), Some(a)) => *a.get_ref(),
            (_, Some(a)) => {
                self.err(
                    Some(a.span()),
                    "platform.aliases",
                    "`aliases` is for dialect sparkplug",
                );
                return None;
            }
        };
        let primary_host_id = match (&dialect, &p.primary_host_id) {
            (_, None) => None,
            (Some(Dialect::Sparkplug), Some(h)) if sparkplug_id(h.get_ref()) => {
                Some(h.get_ref().clone())
            }
            (Some(Dialect::Sparkplug), Some(h)) => {
                self.err(
                    Some(h.span()),
                    "platform.primary_host_id",
                    "a Primary Host id is part of a topic: not empty, no `+`, `/` or `#`",
                );
                return None;
            }
            (_, Some(h)) => {
                self.err(
                    Some(h.span()),
                    "platform.primary_host_id",
                    "`primary_host_id` is for dialect sparkplug",
                );
                return None;
            }
        };
        let qos = match (&dialect, &p.qos) {
            (Some(Dialect::Sparkplug), None) => defaults::SPARKPLUG_QOS,
            (_, None) => 1,
            (Some(Dialect::Sparkplug), Some(q)) => match *q.get_ref() {
                0 => 0,
                1 => 1,
                _ => {
                    self.err(
                        Some(q.span()),
                        "platform.qos",
                        "qos must be 0 (the Sparkplug specification's) or 1",
                    );
                    return None;
                }
            },
            (_, Some(q)) => {
                self.err(
                    Some(q.span()),
                    "platform.qos",
                    "`qos` is for dialect sparkplug (the other dialects publish at QoS 1)",
                );
                return None;
            }
        };
        // The gateway's id is in every dialect's topics.
        if p.device_id.get_ref().contains(['+', '#', '/'])
            || p.device_id.get_ref().chars().any(char::is_control)
        {
            self.err(
                Some(p.device_id.span()),
                "platform.device_id",
                "device_id is part of MQTT topics: no `+`, `#`, `/` or control characters",
            );
            return None;
        }
        if dialect == Some(Dialect::Sparkplug) && !sparkplug_id(p.device_id.get_ref()) {
            self.err(
                Some(p.device_id.span()),
                "platform.device_id",
                "a Sparkplug edge node id has no `+`, `/` or `#`",
            );
            return None;
        }
        Some(Platform {
            account,
            group_id,
            service_keys,
            aliases,
            primary_host_id,
            qos,
            dialect: dialect?,
            host: p.host.into_inner(),
            // TLS unless explicitly turned off, whatever the port: credentials and IoTDA's
            // HMAC (replayable for the rest of the hour) never go in the clear by default.
            tls: p.tls.unwrap_or(defaults::TLS),
            port,
            ca_file: p.ca_file.map(PathBuf::from),
            client_auth,
            username,
            device_id: p.device_id.into_inner(),
            secret: secret?,
            check_timestamp: p.check_timestamp.unwrap_or(false),
            keepalive: keepalive?,
            reconnect_min,
            reconnect_max,
            connect_timeout: connect_timeout?,
            data_window: inflight?,
            data_window_bytes: inflight_bytes?,
            max_packet: max_packet?,
            command_timeout: command_timeout?,
            replay_rate: p.replay_rate.unwrap_or(defaults::REPLAY_RATE),
            replay_bytes_rate: p
                .replay_bytes_rate
                .map_or(defaults::REPLAY_BYTES_RATE, |s| s.0),
        })
    }
}

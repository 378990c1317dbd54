//! Command routing: platform request → checks → the owning bus task → answer.
//!
//! The router resolves the platform's device id to a configured child, refuses anything the
//! child's profile does not allow (unknown point, read-only point, wrong type, out of range)
//! before the bus is touched, hands the command to the bus task with a deadline, and turns the
//! outcome into the dialect's response. Every refusal is answered with a specific code and
//! logged with the request id. A late driver answer is dropped with a log line.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fieldgate_driver::{Command, CommandOutcome, CommandRequest, DeclaredCommand, ErrorCode};
use fieldgate_modbus::point::{check_value, coerce};
use fieldgate_modbus::{CommandSpec, PointSpec};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::command::{Reply, Request, Respond};
use crate::metrics::{Metrics, Repeated};
use crate::registry::Registry;

/// Where a child's requests go and what its profile allows.
#[derive(Clone)]
pub struct Target {
    pub bus: mpsc::Sender<CommandRequest>,
    pub points: Arc<[PointSpec]>,
    pub commands: Arc<[CommandSpec]>,
    /// Template commands with typed parameters (serial instruments).
    pub declared: Arc<[DeclaredCommand]>,
}

/// Routes requests to bus tasks.
#[derive(Clone)]
pub struct Router {
    targets: Arc<RwLock<HashMap<String, Target>>>,
    deadline: Duration,
    metrics: Arc<Metrics>,
    /// When "busy" was last logged.
    busy_log: Arc<Mutex<Option<Instant>>>,
    /// Refused and failed requests, logged by episode (each one at `debug`).
    refused_log: Arc<Repeated>,
    failed_log: Arc<Repeated>,
}

/// Platform requests handled at once at most; more are answered "busy".
pub const MAX_IN_FLIGHT: u64 = 256;

impl Router {
    pub fn new(deadline: Duration, metrics: Arc<Metrics>) -> Self {
        Router {
            targets: Arc::default(),
            deadline,
            metrics,
            busy_log: Arc::default(),
            refused_log: Arc::default(),
            failed_log: Arc::default(),
        }
    }

    /// Replace the routing table (at start and after every reload): node id → target.
    /// The children that have a route now, sorted (for `status` and tests).
    pub fn routed(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .targets
            .read()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn update(&self, targets: HashMap<String, Target>) {
        if let Ok(mut t) = self.targets.write() {
            *t = targets;
        }
    }

    /// Answer a request that could not be parsed.
    pub fn refuse(&self, respond: &Respond, why: &str) -> Option<Reply> {
        let outcome = CommandOutcome::Failed {
            code: ErrorCode::BadValue,
            message: format!("malformed request: {why}"),
        };
        respond(&outcome)
    }

    /// Check a request, hand it to its child's bus, and answer it with `respond`: a refusal
    /// is returned at once (the caller publishes it); a driver's answer, or the deadline's, is
    /// sent later on `reply`. Beyond `MAX_IN_FLIGHT` requests being handled, the answer is
    /// "busy" — the platform hears it at once instead of waiting for a timeout.
    pub fn dispatch(
        &self,
        req: Request,
        respond: Respond,
        registry: &Mutex<Registry>,
        reply: &mpsc::Sender<Reply>,
    ) -> Option<Reply> {
        let rid = req.request_id().to_string();
        if self.metrics.commands_in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.metrics.requests_busy.fetch_add(1, Ordering::Relaxed);
            let busy = self.busy_log.lock().map(|mut t| {
                let now = Instant::now();
                let first = t.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
                if first {
                    *t = Some(now);
                }
                first
            });
            if busy.unwrap_or(false) {
                warn!(request_id = %rid, limit = MAX_IN_FLIGHT, "platform requests beyond the limit are answered busy (counted as `requests_busy`; logged once a minute)");
            }
            self.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
            return respond(&CommandOutcome::Failed {
                code: ErrorCode::Busy,
                message: format!("the gateway is handling {MAX_IN_FLIGHT} requests already"),
            });
        }
        let checked = self.check(&req, registry);
        let (target, command) = match checked {
            Ok(x) => x,
            Err((code, message)) => {
                debug!(request_id = %rid, code = ?code, reason = %message, "platform request refused");
                if let Some(n) = self.refused_log.hit() {
                    warn!(request_id = %rid, code = ?code, reason = %message, refused = n, "platform request refused (count since the last such line; at most one a minute while they keep coming, each at debug)");
                }
                self.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
                return respond(&CommandOutcome::Failed { code, message });
            }
        };
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.deadline;
        let child = command.child().to_string();
        if target
            .bus
            .try_send(CommandRequest {
                command,
                deadline,
                reply: tx,
            })
            .is_err()
        {
            let o = CommandOutcome::Failed {
                code: ErrorCode::Busy,
                message: "the device's bus is busy with other commands".into(),
            };
            debug!(request_id = %rid, child = %child, "command refused: bus queue full");
            if let Some(n) = self.refused_log.hit() {
                warn!(request_id = %rid, child = %child, refused = n, "command refused: bus queue full (count since the last refusal line; at most one a minute)");
            }
            self.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
            return respond(&o);
        }
        let reply = reply.clone();
        let limit = self.deadline + Duration::from_millis(200);
        let metrics = self.metrics.clone();
        let failed_log = self.failed_log.clone();
        metrics.commands_in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(limit, rx).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => CommandOutcome::Failed {
                    code: ErrorCode::DeviceError,
                    message: "the bus task stopped".into(),
                },
                Err(_) => CommandOutcome::Failed {
                    code: ErrorCode::Timeout,
                    message: "no answer before the deadline".into(),
                },
            };
            let counter = match &outcome {
                CommandOutcome::Done(_) => &metrics.requests_done,
                CommandOutcome::Failed { .. } => &metrics.requests_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match &outcome {
                CommandOutcome::Done(_) => {
                    info!(request_id = %rid, child = %child, "platform request done")
                }
                CommandOutcome::Failed { code, message } => {
                    debug!(request_id = %rid, child = %child, code = ?code, reason = %message, "platform request failed");
                    if let Some(n) = failed_log.hit() {
                        warn!(request_id = %rid, child = %child, code = ?code, reason = %message, failed = n, "platform request failed (count since the last such line; at most one a minute while they keep coming, each at debug)");
                    }
                }
            }
            metrics.commands_in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(r) = respond(&outcome) {
                let _ = reply.send(r).await;
            }
        });
        None
    }

    fn check(
        &self,
        req: &Request,
        registry: &Mutex<Registry>,
    ) -> Result<(Target, Command), (ErrorCode, String)> {
        let device_id = match req {
            Request::Command { device_id, .. }
            | Request::Set { device_id, .. }
            | Request::Get { device_id, .. } => device_id,
        };
        let Some(device_id) = device_id else {
            return Err((
                ErrorCode::Unsupported,
                "requests for the gateway itself are not supported".into(),
            ));
        };
        let node = registry
            .lock()
            .ok()
            .and_then(|r| r.node_of(device_id).map(str::to_string))
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownChild,
                    format!("no child with device id `{device_id}`"),
                )
            })?;
        let target = self
            .targets
            .read()
            .ok()
            .and_then(|t| t.get(&node).cloned())
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownChild,
                    format!("child `{node}` is not polled (removed, or deleted by the platform)"),
                )
            })?;
        let cmd = match req {
            Request::Command {
                name,
                service,
                paras,
                ..
            } => {
                if let Some(d) = target
                    .declared
                    .iter()
                    .find(|c| &c.name == name && service.as_ref().is_none_or(|s| s == &c.service))
                {
                    let params = d
                        .check(paras)
                        .map_err(|why| (ErrorCode::BadValue, why.to_string()))?;
                    return Ok((
                        target.clone(),
                        Command::Invoke {
                            child: node,
                            service: d.service.clone(),
                            name: name.clone(),
                            params,
                        },
                    ));
                }
                let declared = target
                    .commands
                    .iter()
                    .find(|c| &c.name == name && service.as_ref().is_none_or(|s| s == &c.service))
                    .ok_or_else(|| {
                        (
                            ErrorCode::Unsupported,
                            format!("command `{name}` is not declared in the child's profile"),
                        )
                    })?;
                let point = target.points.get(declared.point).ok_or_else(|| {
                    (
                        ErrorCode::UnknownPoint,
                        format!("command `{name}` names no point"),
                    )
                })?;
                let value = match &declared.value {
                    Some(v) => v.clone(),
                    None => {
                        let v = paras.get("value").ok_or_else(|| {
                            (
                                ErrorCode::BadValue,
                                format!("command `{name}` needs `paras.value`"),
                            )
                        })?;
                        coerce(point, v)?
                    }
                };
                Command::Invoke {
                    child: node,
                    service: declared.service.clone(),
                    name: name.clone(),
                    params: BTreeMap::from([("value".to_string(), value)]),
                }
            }
            Request::Get { service, .. } => {
                // Register points name their services; the other drivers (exec programs,
                // serial instruments, BLE) are handed the service and answer for it.
                if let Some(s) = service {
                    if !target.points.is_empty() && !target.points.iter().any(|p| &p.service == s) {
                        return Err((ErrorCode::UnknownPoint, format!("no service `{s}`")));
                    }
                }
                Command::GetProperties {
                    child: node,
                    service: service.clone(),
                }
            }
            Request::Set { services, .. } => {
                let [(service, props)] = services.as_slice() else {
                    return Err((
                        ErrorCode::Unsupported,
                        "set exactly one service per request".into(),
                    ));
                };
                if props.is_empty() {
                    return Err((ErrorCode::BadValue, "no properties to set".into()));
                }
                // Platforms without services (ThingsBoard attributes) name properties only:
                // each must name exactly one point, all in one service.
                let mut service = service.clone();
                let mut properties = BTreeMap::new();
                for (name, v) in props {
                    let found: Vec<&PointSpec> = target
                        .points
                        .iter()
                        .filter(|p| {
                            &p.property == name && (service.is_empty() || p.service == service)
                        })
                        .collect();
                    let p = match found.as_slice() {
                        [p] => *p,
                        [] => {
                            return Err((
                                ErrorCode::UnknownPoint,
                                if service.is_empty() {
                                    format!("no point `{name}`")
                                } else {
                                    format!("no point `{service}.{name}`")
                                },
                            ))
                        }
                        _ => {
                            return Err((
                                ErrorCode::UnknownPoint,
                                format!("`{name}` names points in several services"),
                            ))
                        }
                    };
                    if service.is_empty() {
                        service = p.service.clone();
                    }
                    properties.insert(name.clone(), check_value(p, v)?);
                }
                Command::SetProperties {
                    child: node,
                    service,
                    properties,
                }
            }
        };
        Ok((target, cmd))
    }
}

#[cfg(test)]
mod tests {
    //! The allow-list where it lives: every refusal of `Router::check` and every accepted
    //! form, for a Modbus child (points, commands over points) and a child whose driver takes
    //! declared commands and answers for any service (serial, BLE, exec).
    use super::*;
    use crate::registry::Spec;
    use fieldgate_driver::{ParamKind, ParamSpec, Value};
    use fieldgate_modbus::point::{DataType, Table};
    use serde_json::json;

    fn spec(node: &str) -> Spec {
        Spec {
            node_id: node.into(),
            name: node.into(),
            product_id: "p".into(),
            bus: "b".into(),
            writable: Vec::new(),
        }
    }

    /// Children: `meter` (Modbus; device id `d-meter`), `inst` (declared commands, no points;
    /// `d-inst`), `gone` (known to the platform, not polled; `d-gone`).
    fn world() -> (Router, Mutex<Registry>, mpsc::Receiver<CommandRequest>) {
        let mut reg = Registry::new(&[spec("meter"), spec("inst"), spec("gone")]);
        for n in ["meter", "inst", "gone"] {
            reg.confirm(n, &format!("d-{n}"));
        }
        let limit = PointSpec {
            writable: true,
            min: Some(0.0),
            max: Some(500.0),
            scale: Some(0.1),
            ..PointSpec::new("control", "limit", Table::Holding, 4, DataType::U16)
        };
        let volts = PointSpec::new("energy", "voltage", Table::Input, 0, DataType::U16);
        let dup_a = PointSpec {
            writable: true,
            ..PointSpec::new("a", "mode", Table::Holding, 8, DataType::U16)
        };
        let dup_b = PointSpec {
            writable: true,
            ..PointSpec::new("b", "mode", Table::Holding, 9, DataType::U16)
        };
        let (tx, rx) = mpsc::channel(8);
        let meter = Target {
            bus: tx.clone(),
            points: vec![limit, volts, dup_a, dup_b].into(),
            commands: vec![
                CommandSpec {
                    service: "control".into(),
                    name: "set_limit".into(),
                    point: 0,
                    value: None,
                },
                CommandSpec {
                    service: "control".into(),
                    name: "zero".into(),
                    point: 0,
                    value: Some(Value::Float(0.0)),
                },
            ]
            .into(),
            declared: Vec::new().into(),
        };
        let inst = Target {
            bus: tx,
            points: Vec::new().into(),
            commands: Vec::new().into(),
            declared: vec![DeclaredCommand {
                service: "scale".into(),
                name: "tare".into(),
                params: vec![ParamSpec {
                    name: "n".into(),
                    kind: ParamKind::Int {
                        min: Some(1),
                        max: Some(9),
                    },
                }],
            }]
            .into(),
        };
        let router = Router::new(Duration::from_secs(1), Arc::new(Metrics::default()));
        router.update(HashMap::from([
            ("meter".to_string(), meter),
            ("inst".to_string(), inst),
        ]));
        (router, Mutex::new(reg), rx)
    }

    fn cmd(dev: Option<&str>, name: &str, paras: Json) -> Request {
        Request::Command {
            request_id: "r".into(),
            device_id: dev.map(str::to_string),
            service: None,
            name: name.into(),
            paras,
        }
    }

    fn set(dev: &str, services: Vec<(&str, Json)>) -> Request {
        Request::Set {
            request_id: "r".into(),
            device_id: Some(dev.into()),
            services: services
                .into_iter()
                .map(|(s, p)| (s.to_string(), p.as_object().cloned().unwrap_or_default()))
                .collect(),
        }
    }

    fn get(dev: &str, service: Option<&str>) -> Request {
        Request::Get {
            request_id: "r".into(),
            device_id: Some(dev.into()),
            service: service.map(str::to_string),
        }
    }

    use serde_json::Value as Json;

    #[test]
    fn every_refusal_has_its_code() {
        let (router, reg, _rx) = world();
        let refused = [
            (cmd(None, "x", json!({})), ErrorCode::Unsupported),
            (
                cmd(Some("d-nobody"), "x", json!({})),
                ErrorCode::UnknownChild,
            ),
            (cmd(Some("d-gone"), "x", json!({})), ErrorCode::UnknownChild),
            (
                cmd(Some("d-meter"), "undeclared", json!({})),
                ErrorCode::Unsupported,
            ),
            (
                cmd(Some("d-meter"), "set_limit", json!({})),
                ErrorCode::BadValue,
            ),
            (
                cmd(Some("d-meter"), "set_limit", json!({"value": 501})),
                ErrorCode::BadValue,
            ),
            (
                cmd(Some("d-meter"), "set_limit", json!({"value": "x"})),
                ErrorCode::BadValue,
            ),
            (
                cmd(Some("d-inst"), "tare", json!({"n": 10})),
                ErrorCode::BadValue,
            ),
            (cmd(Some("d-inst"), "tare", json!({})), ErrorCode::BadValue),
            (get("d-meter", Some("nope")), ErrorCode::UnknownPoint),
            (set("d-meter", vec![]), ErrorCode::Unsupported),
            (
                set(
                    "d-meter",
                    vec![("control", json!({"limit": 1})), ("energy", json!({}))],
                ),
                ErrorCode::Unsupported,
            ),
            (
                set("d-meter", vec![("control", json!({}))]),
                ErrorCode::BadValue,
            ),
            (
                set("d-meter", vec![("control", json!({"nope": 1}))]),
                ErrorCode::UnknownPoint,
            ),
            (
                set("d-meter", vec![("", json!({"mode": 1}))]),
                ErrorCode::UnknownPoint,
            ),
            (
                set("d-meter", vec![("energy", json!({"voltage": 1}))]),
                ErrorCode::NotWritable,
            ),
            (
                set("d-meter", vec![("control", json!({"limit": -1}))]),
                ErrorCode::BadValue,
            ),
            (
                set("d-inst", vec![("scale", json!({"w": 1}))]),
                ErrorCode::UnknownPoint,
            ),
        ];
        for (req, code) in refused {
            match router.check(&req, &reg) {
                Err((c, why)) => assert_eq!(c, code, "{req:?}: {why}"),
                Ok((_, c)) => panic!("{req:?} was accepted as {c:?}"),
            }
        }
    }

    #[test]
    fn every_accepted_form_becomes_its_command() {
        let (router, reg, _rx) = world();
        let ok = |req: Request| match router.check(&req, &reg) {
            Ok((_, c)) => c,
            Err(e) => panic!("{req:?} refused: {e:?}"),
        };
        assert_eq!(
            ok(cmd(Some("d-meter"), "set_limit", json!({"value": 42.5}))),
            Command::Invoke {
                child: "meter".into(),
                service: "control".into(),
                name: "set_limit".into(),
                params: BTreeMap::from([("value".to_string(), Value::Float(42.5))]),
            }
        );
        // A fixed value needs no parameter.
        assert!(matches!(
            ok(cmd(Some("d-meter"), "zero", json!({}))),
            Command::Invoke { ref params, .. } if params["value"] == Value::Float(0.0)
        ));
        assert_eq!(
            ok(cmd(Some("d-inst"), "tare", json!({"n": 3}))),
            Command::Invoke {
                child: "inst".into(),
                service: "scale".into(),
                name: "tare".into(),
                params: BTreeMap::from([("n".to_string(), Value::Int(3))]),
            }
        );
        assert_eq!(
            ok(get("d-meter", Some("energy"))),
            Command::GetProperties {
                child: "meter".into(),
                service: Some("energy".into())
            }
        );
        // A child without points answers for any service it is asked about.
        assert!(matches!(
            ok(get("d-inst", Some("anything"))),
            Command::GetProperties { .. }
        ));
        // A property named without its service (ThingsBoard attributes) finds its point.
        assert_eq!(
            ok(set("d-meter", vec![("", json!({"limit": 12.5}))])),
            Command::SetProperties {
                child: "meter".into(),
                service: "control".into(),
                properties: BTreeMap::from([("limit".to_string(), Value::Float(12.5))]),
            }
        );
        assert!(matches!(
            ok(set("d-meter", vec![("a", json!({"mode": 2}))])),
            Command::SetProperties { ref service, .. } if service == "a"
        ));
    }
}

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
                    let params = d.check(paras).map_err(|why| (ErrorCode::BadValue, why))?;
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

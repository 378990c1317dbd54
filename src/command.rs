//! The command vocabulary shared by the dialects and the router: a platform request in
//! dialect-neutral form, the reply to publish, and the closure that turns an outcome into the
//! platform's answer. Dialects parse into it and answer with it; the router checks and routes
//! it. Neither needs the other's room to speak of a command.

use std::sync::Arc;

use fieldgate_driver::CommandOutcome;
use serde_json::{Map, Value as Json};

/// A response ready to publish.
#[derive(Debug)]
pub struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A platform request in dialect-neutral form.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Command {
        request_id: String,
        device_id: Option<String>,
        service: Option<String>,
        name: String,
        paras: Json,
    },
    Set {
        request_id: String,
        device_id: Option<String>,
        services: Vec<(String, Map<String, Json>)>,
    },
    Get {
        request_id: String,
        device_id: Option<String>,
        service: Option<String>,
    },
}

impl Request {
    /// The platform's id of the request (for logs and answers).
    pub fn request_id(&self) -> &str {
        match self {
            Request::Command { request_id, .. }
            | Request::Set { request_id, .. }
            | Request::Get { request_id, .. } => request_id,
        }
    }
}

/// Answers one platform request in the dialect's words — or not at all, where the platform
/// expects no answer (`None`).
pub type Respond = Arc<dyn Fn(&CommandOutcome) -> Option<Reply> + Send + Sync>;

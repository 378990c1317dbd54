//! The MQTT connection as a task of its own: it owns rumqttc's `EventLoop`, polls it without
//! ever being cancelled (connecting, TLS and CONNACK take as long as the link needs, bounded by
//! `connect_timeout`), and forwards every event over a bounded channel. When the connection
//! ends it says why, once, and stops: each attempt is a fresh task with fresh credentials.
//!
//! The session never waits on the client's request channel (it keeps its own budget, see
//! `delivery`), so this task waiting on a full event channel cannot deadlock the two.

use rumqttc::{ConnectReturnCode, ConnectionError, Event, EventLoop};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events waiting for the session at most.
pub const EVENTS: usize = 1024;

/// What the connection task reports.
#[derive(Debug)]
pub enum LinkEvent {
    Mqtt(Event),
    /// The connection ended (or never came up); the task has stopped.
    Down(ConnectionError),
}

/// Poll `ev` until the connection ends, forwarding events to `tx`.
pub fn spawn(mut ev: EventLoop, tx: mpsc::Sender<LinkEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(e) => {
                    if tx.send(LinkEvent::Mqtt(e)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(LinkEvent::Down(e)).await;
                    return;
                }
            }
        }
    })
}

/// Why a connection ended or failed, in the words an engineer at the cabinet searches for;
/// one variant per cause (the session logs a failure once, until the cause changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Down {
    #[error("not authorised: the broker refused the credentials")]
    NotAuthorised,
    #[error("refused by the broker: {0}")]
    Refused(String),
    #[error("timed out: no CONNACK within connect_timeout")]
    NoConnAck,
    #[error("timed out writing to the broker")]
    WriteTimeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection refused (nothing listening)")]
    ConnectionRefused,
    #[error("TCP connect timed out")]
    TcpTimeout,
    #[error("connection closed by the peer: {0}")]
    Closed(String),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("the broker answered CONNECT with {0}")]
    NotConnAck(String),
    #[error("the session closed the client")]
    RequestsDone,
}

/// Why a connection ended or failed. `connected`: it had been up (a CONNACK arrived).
pub fn cause(e: &ConnectionError, connected: bool) -> Down {
    use std::io::ErrorKind;
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
        ) => Down::NotAuthorised,
        ConnectionError::ConnectionRefused(code) => Down::Refused(format!("{code:?}")),
        ConnectionError::NetworkTimeout if !connected => Down::NoConnAck,
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => Down::WriteTimeout,
        ConnectionError::Tls(t) => Down::Tls(t.to_string()),
        ConnectionError::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => Down::ConnectionRefused,
            ErrorKind::TimedOut => Down::TcpTimeout,
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => {
                Down::Closed(io.to_string())
            }
            _ if !connected && looks_like_dns(io) => Down::Dns(io.to_string()),
            _ => Down::Io(io.to_string()),
        },
        ConnectionError::MqttState(s) => Down::Mqtt(s.to_string()),
        ConnectionError::NotConnAck(p) => Down::NotConnAck(format!("{p:?}")),
        ConnectionError::RequestsDone => Down::RequestsDone,
    }
}

/// Whether an attempt that failed this way before its CONNACK got its CONNECT to the broker:
/// a refusal or an answer other than CONNACK, or the broker closing the connection, means it
/// did; DNS, TCP, TLS failures and timeouts (usually a broker that cannot be reached) mean it
/// did not.
pub fn connect_sent(e: &ConnectionError) -> bool {
    use std::io::ErrorKind;
    match e {
        ConnectionError::ConnectionRefused(_)
        | ConnectionError::NotConnAck(_)
        | ConnectionError::MqttState(_) => true,
        ConnectionError::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ),
        ConnectionError::NetworkTimeout
        | ConnectionError::FlushTimeout
        | ConnectionError::Tls(_)
        | ConnectionError::RequestsDone => false,
    }
}

fn looks_like_dns(e: &std::io::Error) -> bool {
    let s = e.to_string();
    s.contains("failed to lookup address")
        || s.contains("Name or service not known")
        || s.contains("could not resolve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_name_what_went_wrong() {
        let auth = cause(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            false,
        );
        assert_eq!(auth, Down::NotAuthorised);
        assert!(auth.to_string().starts_with("not authorised"));
        assert!(cause(&ConnectionError::NetworkTimeout, false)
            .to_string()
            .contains("connect_timeout"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            cause(&ConnectionError::Io(refused), false),
            Down::ConnectionRefused
        );
        let dns = std::io::Error::other("failed to lookup address information");
        assert!(matches!(
            cause(&ConnectionError::Io(dns), false),
            Down::Dns(_)
        ));
    }
}

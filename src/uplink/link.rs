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

/// Why a connection ended or failed, in the words an engineer at the cabinet searches for.
/// `connected`: it had been up (a CONNACK arrived).
pub fn cause(e: &ConnectionError, connected: bool) -> String {
    use std::io::ErrorKind;
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
        ) => "not authorised: the broker refused the credentials".to_string(),
        ConnectionError::ConnectionRefused(code) => format!("refused by the broker: {code:?}"),
        ConnectionError::NetworkTimeout if !connected => {
            "timed out: no CONNACK within connect_timeout".to_string()
        }
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            "timed out writing to the broker".to_string()
        }
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        ConnectionError::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused (nothing listening)".to_string(),
            ErrorKind::TimedOut => "TCP connect timed out".to_string(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => {
                format!("connection closed by the peer: {io}")
            }
            _ if !connected && looks_like_dns(io) => format!("DNS: {io}"),
            _ => format!("I/O: {io}"),
        },
        ConnectionError::MqttState(s) => format!("MQTT: {s}"),
        ConnectionError::NotConnAck(p) => format!("the broker answered CONNECT with {p:?}"),
        ConnectionError::RequestsDone => "the session closed the client".to_string(),
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
        assert!(cause(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            false
        )
        .starts_with("not authorised"));
        assert!(cause(&ConnectionError::NetworkTimeout, false).contains("connect_timeout"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(cause(&ConnectionError::Io(refused), false).contains("refused"));
        let dns = std::io::Error::other("failed to lookup address information");
        assert!(cause(&ConnectionError::Io(dns), false).starts_with("DNS"));
    }
}

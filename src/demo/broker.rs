//! A tiny MQTT 3.1.1 broker for `fieldgate demo` only: CONNECT, SUBSCRIBE/UNSUBSCRIBE, PUBLISH
//! at QoS 0/1 with PUBACK, PING and DISCONNECT, on loopback. Packets are encoded and decoded by
//! rumqttc's own codec; this file only routes. It keeps no sessions, retains nothing and
//! delivers QoS 1 at most once to subscribers — fine for a demo, never for production (a full
//! embedded broker would have added ~190 crates to a binary meant for 256 MB gateways).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{valid_filter, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

const MAX_PACKET: usize = 1 << 20;

struct Client {
    tx: mpsc::Sender<Packet>,
    filters: Vec<(String, QoS)>,
    next_pkid: u16,
}

#[derive(Default)]
struct Routes {
    clients: HashMap<u64, Client>,
}

/// Accept connections until the listener task is dropped.
pub async fn serve(listener: TcpListener) {
    let routes = Arc::new(Mutex::new(Routes::default()));
    let ids = AtomicU64::new(1);
    while let Ok((stream, _)) = listener.accept().await {
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(id, stream, routes.clone()));
    }
}

async fn connection(id: u64, stream: TcpStream, routes: Arc<Mutex<Routes>>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Packet>(4096);
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(4096);
        while let Some(p) = rx.recv().await {
            buf.clear();
            if p.write(&mut buf, MAX_PACKET).is_err() || wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(4096);
    let mut connected = false;
    'conn: loop {
        let packet = loop {
            match Packet::read(&mut buf, MAX_PACKET) {
                Ok(p) => break p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break 'conn,
                        Ok(_) => {}
                    }
                }
                Err(e) => {
                    debug!(client = id, error = %e, "demo broker: bad packet; closing");
                    break 'conn;
                }
            }
        };
        let reply = match packet {
            Packet::Connect(_) if !connected => {
                connected = true;
                if let Ok(mut r) = routes.lock() {
                    r.clients.insert(
                        id,
                        Client {
                            tx: tx.clone(),
                            filters: Vec::new(),
                            next_pkid: 0,
                        },
                    );
                }
                Some(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    false,
                )))
            }
            _ if !connected => break,
            Packet::Subscribe(s) => {
                let codes = match routes.lock() {
                    Ok(mut r) => s
                        .filters
                        .iter()
                        .map(|f| {
                            if !valid_filter(&f.path) {
                                return SubscribeReasonCode::Failure;
                            }
                            let qos = if f.qos == QoS::AtMostOnce {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            if let Some(c) = r.clients.get_mut(&id) {
                                c.filters.retain(|(p, _)| p != &f.path);
                                c.filters.push((f.path.clone(), qos));
                            }
                            SubscribeReasonCode::Success(qos)
                        })
                        .collect(),
                    Err(_) => break,
                };
                Some(Packet::SubAck(SubAck::new(s.pkid, codes)))
            }
            Packet::Unsubscribe(u) => {
                if let Ok(mut r) = routes.lock() {
                    if let Some(c) = r.clients.get_mut(&id) {
                        c.filters.retain(|(p, _)| !u.topics.contains(p));
                    }
                }
                Some(Packet::UnsubAck(UnsubAck::new(u.pkid)))
            }
            Packet::Publish(p) => {
                route(&routes, &p);
                (p.qos != QoS::AtMostOnce).then(|| Packet::PubAck(PubAck::new(p.pkid)))
            }
            Packet::PingReq => Some(Packet::PingResp),
            Packet::Disconnect => break,
            _ => None, // PUBACKs from subscribers and the rest need no answer here
        };
        if let Some(r) = reply {
            if tx.send(r).await.is_err() {
                break;
            }
        }
    }
    if let Ok(mut r) = routes.lock() {
        r.clients.remove(&id);
    }
    drop(tx);
    let _ = writer.await;
}

fn route(routes: &Mutex<Routes>, p: &rumqttc::mqttbytes::v4::Publish) {
    let Ok(mut r) = routes.lock() else { return };
    for c in r.clients.values_mut() {
        let Some(qos) = c
            .filters
            .iter()
            .filter(|(f, _)| topic_matches(&p.topic, f))
            .map(|(_, q)| *q)
            .max_by_key(|q| *q as u8)
        else {
            continue;
        };
        let mut out = p.clone();
        out.dup = false;
        out.retain = false;
        out.qos = if p.qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            qos
        };
        out.pkid = 0;
        if out.qos != QoS::AtMostOnce {
            c.next_pkid = c.next_pkid % u16::MAX + 1;
            out.pkid = c.next_pkid;
        }
        // A subscriber that cannot keep up loses demo messages rather than stalling the broker.
        let _ = c.tx.try_send(Packet::Publish(out));
    }
}

/// MQTT 3.1.1 §4.7: `+` is one level, `#` the rest (including the parent); a filter starting
/// with a wildcard does not match topics starting with `$`. (rumqttc's `matches` refuses every
/// `$` topic, which would hide IoTDA's `$oc/...` topics.)
pub fn topic_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters() {
        assert!(topic_matches(
            "$oc/devices/g/sys/events/up",
            "$oc/devices/g/sys/#"
        ));
        assert!(topic_matches("$oc/devices/g/sys", "$oc/devices/g/sys/#"));
        assert!(topic_matches("a/b/c", "a/+/c"));
        assert!(!topic_matches("a/b/c", "a/+"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("$SYS/x", "#"));
        assert!(!topic_matches("$SYS/x", "+/x"));
        assert!(topic_matches("x", "#"));
    }
}

//! One-shot probes for wiring checks before a config exists: read a point, or find which unit
//! ids answer on a bus. Same point model, codec and timeouts as the bus task, so what a probe
//! shows is what the daemon will see.

use std::net::SocketAddr;
use std::time::Duration;

use fieldgate_driver::Value;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::slave::{Slave, SlaveContext};

use tokio_serial::{ClearBuffer, SerialPort};

use crate::codec::decode_registers;
use crate::driver::Transport;
use crate::point::{PointSpec, Table};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve `{0}`")]
    Resolve(String),
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("Modbus exception {0}")]
    Exception(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// What one read returned: the raw items and, for a typed point, the decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub words: Vec<u16>,
    pub bits: Vec<bool>,
    pub value: Option<Value>,
}

/// Connect over TCP, or open the serial port (flushed) for RTU.
pub async fn connect(target: &Transport, timeout: Duration) -> Result<Context, ProbeError> {
    match target {
        Transport::Tcp(endpoint) => connect_tcp(endpoint, timeout).await,
        Transport::Rtu { port, .. } => {
            let stream = fieldgate_port::open(port)
                .map_err(|e| ProbeError::Connect(port.path.clone(), e.to_string()))?;
            stream
                .clear(ClearBuffer::All)
                .map_err(|e| ProbeError::Io(e.to_string()))?;
            Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(1)))
        }
    }
}

async fn connect_tcp(endpoint: &str, timeout: Duration) -> Result<Context, ProbeError> {
    let addr: SocketAddr = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|_| ProbeError::Resolve(endpoint.into()))?
        .next()
        .ok_or_else(|| ProbeError::Resolve(endpoint.into()))?;
    match tokio::time::timeout(timeout, tokio_modbus::client::tcp::connect(addr)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(ProbeError::Connect(endpoint.into(), e.to_string())),
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Read `count` items at the point's address; decode them as the point when `count` covers it.
pub async fn read(
    ctx: &mut Context,
    unit: u8,
    p: &PointSpec,
    count: u16,
    timeout: Duration,
) -> Result<Reading, ProbeError> {
    ctx.set_slave(Slave(unit));
    let (a, n) = (p.address, count.max(p.width()));
    let res = match p.table {
        Table::Coil => tokio::time::timeout(timeout, ctx.read_coils(a, n))
            .await
            .map(|r| r.map(|r| r.map(|b| (Vec::new(), b)))),
        Table::Discrete => tokio::time::timeout(timeout, ctx.read_discrete_inputs(a, n))
            .await
            .map(|r| r.map(|r| r.map(|b| (Vec::new(), b)))),
        Table::Input => tokio::time::timeout(timeout, ctx.read_input_registers(a, n))
            .await
            .map(|r| r.map(|r| r.map(|w| (w, Vec::new())))),
        Table::Holding => tokio::time::timeout(timeout, ctx.read_holding_registers(a, n))
            .await
            .map(|r| r.map(|r| r.map(|w| (w, Vec::new())))),
    };
    let (words, bits) = match res {
        Ok(Ok(Ok(x))) => x,
        Ok(Ok(Err(exc))) => {
            return Err(ProbeError::Exception(format!(
                "{exc:?} ({:#04x})",
                u8::from(exc)
            )))
        }
        Ok(Err(e)) => return Err(ProbeError::Io(e.to_string())),
        Err(_) => return Err(ProbeError::Timeout(timeout)),
    };
    let value = if p.table.is_bits() {
        bits.first().map(|b| Value::Bool(*b))
    } else {
        Some(decode_registers(p, &words).map_err(|e| ProbeError::Decode(e.to_string()))?)
    };
    Ok(Reading { words, bits, value })
}

/// The answer of one unit id during a scan.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    /// Answered with data: a device is there.
    Answered,
    /// Answered with an exception: something is there (or a gateway speaks for it).
    Exception(String),
    /// Nothing within the timeout.
    Silent,
}

/// Ask each unit id for one item of `p`'s table and address. The connection is rebuilt after
/// every silent unit (an RTU port after its settle window), so a late answer can never be
/// credited to the next unit.
pub async fn scan(
    target: &Transport,
    units: impl IntoIterator<Item = u8>,
    p: &PointSpec,
    timeout: Duration,
) -> Result<Vec<(u8, Presence)>, ProbeError> {
    let mut out = Vec::new();
    let mut ctx = connect(target, timeout).await?;
    for unit in units {
        let presence = match read(&mut ctx, unit, p, p.width(), timeout).await {
            Ok(_) | Err(ProbeError::Decode(_)) => Presence::Answered,
            Err(ProbeError::Exception(e)) => Presence::Exception(e),
            Err(_) => {
                drop(ctx);
                if let Transport::Rtu { settle, .. } = target {
                    tokio::time::sleep(*settle).await;
                }
                ctx = connect(target, timeout).await?;
                Presence::Silent
            }
        };
        out.push((unit, presence));
    }
    Ok(out)
}

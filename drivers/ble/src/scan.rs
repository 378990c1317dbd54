//! `fieldgate ble scan`: listen on an adapter for a while and list every device heard, with
//! its RSSI and what the same decoders the daemon uses make of its advertisement.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bluer::{AdapterEvent, DiscoveryFilter, DiscoveryTransport};
use futures_util::StreamExt;

use crate::decode::{decode, DecodeError, Format, Props};
use crate::driver::advert_data;

/// One device heard during a scan.
#[derive(Debug, Clone)]
pub struct Seen {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub decoded: Option<Result<Props, DecodeError>>,
    /// 16-bit service-data UUIDs and company ids seen, for devices no decoder knows.
    pub service_uuids: Vec<u16>,
    pub companies: Vec<u16>,
}

/// Why a scan could not run; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("BlueZ: {0}")]
    Session(bluer::Error),
    #[error("adapter: {0}")]
    Adapter(bluer::Error),
    #[error("discovery: {0}")]
    Discovery(bluer::Error),
}

pub async fn scan(adapter: Option<&str>, duration: Duration) -> Result<Vec<Seen>, ScanError> {
    let session = bluer::Session::new().await.map_err(ScanError::Session)?;
    let adapter = match adapter {
        Some(n) => session.adapter(n),
        None => session.default_adapter().await,
    }
    .map_err(ScanError::Adapter)?;
    let _ = adapter
        .set_discovery_filter(DiscoveryFilter {
            transport: DiscoveryTransport::Le,
            duplicate_data: true,
            ..Default::default()
        })
        .await;
    let mut events = Box::pin(
        adapter
            .discover_devices_with_changes()
            .await
            .map_err(ScanError::Discovery)?,
    );
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let end = Instant::now() + duration;
    while let Ok(Some(ev)) = tokio::time::timeout_at(end.into(), events.next()).await {
        let AdapterEvent::DeviceAdded(addr) = ev else {
            continue;
        };
        let Ok((sd, md, rssi)) = advert_data(&adapter, addr).await else {
            continue;
        };
        let name = match adapter.device(addr) {
            Ok(d) => d.name().await.ok().flatten(),
            Err(_) => None,
        };
        seen.insert(
            addr.to_string(),
            Seen {
                address: addr.to_string(),
                name,
                rssi,
                decoded: decode(Format::Auto, &sd, &md),
                service_uuids: sd.keys().copied().collect(),
                companies: md.keys().copied().collect(),
            },
        );
    }
    Ok(seen.into_values().collect())
}

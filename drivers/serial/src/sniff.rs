//! The line sniffer: bytes become frames when the line has been silent for `gap`; each frame
//! is shown with its time, the silence before it, its length, hex and printable ASCII.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// One frame as seen on the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Silence on the line before the frame's first byte.
    pub idle_before: Duration,
    pub bytes: Vec<u8>,
}

/// `01 03 00 00 |....|` — hex then printable ASCII (others as `.`).
pub fn format_bytes(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let ascii: String = b
        .iter()
        .map(|&x| {
            if (0x20..0x7f).contains(&x) {
                x as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{}  |{ascii}|", hex.join(" "))
}

/// Read `port` until `until` passes, calling `on_frame` for every frame (also the last one).
pub async fn sniff<R: tokio::io::AsyncRead + Unpin>(
    mut port: R,
    gap: Duration,
    until: Option<Instant>,
    mut on_frame: impl FnMut(&Frame),
) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    let mut frame: Vec<u8> = Vec::new();
    let mut last_byte = Instant::now();
    let mut idle_before = Duration::ZERO;
    loop {
        let wait = if frame.is_empty() {
            Duration::from_millis(200)
        } else {
            gap
        };
        let wait = until.map_or(wait, |u| {
            wait.min(u.saturating_duration_since(Instant::now()))
        });
        match tokio::time::timeout(wait, port.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                let now = Instant::now();
                if frame.is_empty() {
                    idle_before = now.duration_since(last_byte);
                }
                frame.extend_from_slice(&buf[..n]);
                last_byte = now;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                if !frame.is_empty() && last_byte.elapsed() >= gap {
                    on_frame(&Frame {
                        idle_before,
                        bytes: std::mem::take(&mut frame),
                    });
                }
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
    }
    if !frame.is_empty() {
        on_frame(&Frame {
            idle_before,
            bytes: frame,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(b"\x01\x03AB\x7f"), "01 03 41 42 7f  |..AB.|");
    }

    #[tokio::test]
    async fn frames_split_on_silence() {
        let (mut w, r) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = w.write_all(b"\x01\x03\x00\x00").await;
            let _ = w.write_all(b"\x00\x02").await;
            tokio::time::sleep(Duration::from_millis(60)).await;
            let _ = w.write_all(b"OK\r\n").await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        });
        let mut frames = Vec::new();
        sniff(
            r,
            Duration::from_millis(20),
            Some(Instant::now() + Duration::from_millis(200)),
            |f| frames.push(f.bytes.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = writer.await;
        assert_eq!(
            frames,
            vec![b"\x01\x03\x00\x00\x00\x02".to_vec(), b"OK\r\n".to_vec()]
        );
    }
}

//! The daemon's own recent log lines, kept in memory for the platform's `logs` operation: a
//! `tracing` layer beside the journal or stderr writer copies every line that passes the log
//! filter into a bounded ring (at most `MAX_LINES` lines of at most `MAX_LINE` bytes, control
//! characters escaped). Nothing here is written to disk; nothing secret is ever logged, so
//! nothing secret reaches the ring.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept at most (the oldest go first).
pub const MAX_LINES: usize = 2000;
/// Bytes of one line at most (longer ones are cut, marked with `…`).
pub const MAX_LINE: usize = 1024;

/// One captured line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub ts_ms: u64,
    pub level: Level,
    /// `LEVEL target: message key=value …`, escaped.
    pub text: String,
}

/// The ring every `LogRing` layer of this process writes to.
pub fn ring() -> &'static Mutex<VecDeque<Line>> {
    static RING: OnceLock<Mutex<VecDeque<Line>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(256)))
}

/// The `tracing` layer that feeds `ring()`.
pub struct LogRing;

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogRing {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut f);
        let raw = format!(
            "{} {}: {}{}",
            meta.level(),
            meta.target(),
            f.message,
            f.rest
        );
        let mut text = fieldgate_driver::escape_controls(&raw);
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE - 3;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        push(Line {
            ts_ms: fieldgate_driver::now_ms(),
            level: *meta.level(),
            text,
        });
    }
}

fn push(line: Line) {
    if let Ok(mut r) = ring().lock() {
        if r.len() >= MAX_LINES {
            r.pop_front();
        }
        r.push_back(line);
    }
}

/// The last `n` lines at `min` level or above (more severe), since `since_ms` if given,
/// oldest first.
pub fn tail(n: usize, min: Level, since_ms: Option<u64>) -> Vec<Line> {
    let Ok(r) = ring().lock() else {
        return Vec::new();
    };
    let mut out: Vec<Line> = r
        .iter()
        .rev()
        .filter(|l| l.level <= min && since_ms.is_none_or(|s| l.ts_ms >= s))
        .take(n)
        .cloned()
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_filtered_and_escaped() {
        for i in 0..(MAX_LINES + 10) {
            push(Line {
                ts_ms: i as u64,
                level: if i % 2 == 0 {
                    Level::INFO
                } else {
                    Level::DEBUG
                },
                text: format!("line {i}"),
            });
        }
        let len = ring().lock().map(|r| r.len()).unwrap_or(0);
        assert_eq!(len, MAX_LINES, "bounded");
        let last = tail(3, Level::INFO, None);
        assert!(last.iter().all(|l| l.level == Level::INFO));
        assert_eq!(last.len(), 3);
        assert!(last[0].ts_ms < last[2].ts_ms, "oldest first");
        let since = tail(100, Level::TRACE, Some((MAX_LINES + 5) as u64));
        assert_eq!(since.len(), 5);
        // Through the layer: escaped, cut.
        use tracing_subscriber::layer::SubscriberExt;
        let sub = tracing_subscriber::registry().with(LogRing);
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(device = "m\u{1b}[31m", "forged\nline {}", "x".repeat(2000));
        });
        let l = tail(1, Level::WARN, None)
            .pop()
            .unwrap_or_else(|| panic!("a line"));
        assert!(l.text.starts_with("WARN "), "{}", l.text);
        assert!(!l.text.contains('\n') && !l.text.contains('\u{1b}'));
        assert!(l.text.len() <= MAX_LINE + 3 && l.text.ends_with('…'));
    }
}

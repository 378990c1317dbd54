//! Cutting a byte stream from an instrument into frames: by terminator, by fixed length, or
//! between start and end bytes. Line noise, bytes outside start/end, and frames longer than the
//! bound are skipped and counted, never fatal; the framer's memory is bounded by `max`.

/// How frames are delimited on the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Each frame ends with these bytes (e.g. `\r\n`); the terminator is not part of the frame.
    Terminator(Vec<u8>),
    /// Every frame is exactly this many bytes.
    Length(usize),
    /// A frame starts with `start` and ends with `end` (e.g. STX … ETX); neither is kept.
    Delimited { start: Vec<u8>, end: Vec<u8> },
}

impl Framing {
    /// The bytes that delimit frames on this bus (none for fixed-length frames): a command
    /// parameter must never carry one, or it would end the command early and start another.
    pub fn delimiters(&self) -> Vec<u8> {
        let mut out: Vec<u8> = match self {
            Framing::Terminator(t) => t.clone(),
            Framing::Length(_) => Vec::new(),
            Framing::Delimited { start, end } => start.iter().chain(end).copied().collect(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// What the framer had to throw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Junk {
    /// A frame grew past the bound; this many bytes were dropped up to the next delimiter.
    Overlong(usize),
    /// Bytes outside a start…end frame.
    Garbage(usize),
}

#[derive(Debug)]
pub struct Framer {
    framing: Framing,
    max: usize,
    buf: Vec<u8>,
    /// Delimited framing: inside a frame (start seen).
    open: bool,
    /// Dropping an overlong frame until its end; counts the bytes dropped.
    skipping: Option<usize>,
}

impl Framer {
    pub fn new(framing: Framing, max: usize) -> Self {
        Framer {
            framing,
            max: max.max(1),
            buf: Vec::new(),
            open: false,
            skipping: None,
        }
    }

    /// Forget any partial frame (before a request: stale bytes are not its answer).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.open = false;
        self.skipping = None;
    }

    /// Bytes of a frame in progress (a partial frame at a timeout is reported as such).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes; complete frames and junk come out in line order.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Result<Vec<u8>, Junk>>) {
        for &b in bytes {
            match &self.framing {
                Framing::Length(n) => {
                    self.buf.push(b);
                    if self.buf.len() == *n {
                        out.push(Ok(std::mem::take(&mut self.buf)));
                    }
                }
                Framing::Terminator(t) => {
                    let t = t.clone();
                    self.take(b, &t, out);
                }
                Framing::Delimited { start, end } => {
                    let (start, end) = (start.clone(), end.clone());
                    if !self.open && self.skipping.is_none() {
                        self.buf.push(b);
                        if self.buf.ends_with(&start) {
                            let garbage = self.buf.len() - start.len();
                            if garbage > 0 {
                                out.push(Err(Junk::Garbage(garbage)));
                            }
                            self.buf.clear();
                            self.open = true;
                        } else if self.buf.len() > start.len() + 64 {
                            // Noise between frames: keep only what could still begin `start`.
                            let keep = start.len().saturating_sub(1);
                            let drop = self.buf.len() - keep;
                            self.buf.drain(..drop);
                            out.push(Err(Junk::Garbage(drop)));
                        }
                    } else if self.take(b, &end, out) {
                        self.open = false;
                    }
                }
            }
        }
    }

    /// Add one byte to a frame ended by `end`; true when a frame (or an overlong one) ended.
    fn take(&mut self, b: u8, end: &[u8], out: &mut Vec<Result<Vec<u8>, Junk>>) -> bool {
        if let Some(n) = self.skipping.as_mut() {
            *n += 1;
            self.buf.push(b);
            if self.buf.len() > end.len() {
                self.buf.remove(0);
            }
            if self.buf.ends_with(end) {
                out.push(Err(Junk::Overlong(*n)));
                self.skipping = None;
                self.buf.clear();
                return true;
            }
            return false;
        }
        self.buf.push(b);
        if self.buf.ends_with(end) {
            let len = self.buf.len() - end.len();
            self.buf.truncate(len);
            out.push(Ok(std::mem::take(&mut self.buf)));
            return true;
        }
        if self.buf.len() > self.max + end.len() {
            self.skipping = Some(self.buf.len());
            let keep = self
                .buf
                .split_off(self.buf.len() - end.len().min(self.buf.len()));
            self.buf = keep;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut Framer, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, Junk>> {
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    #[test]
    fn terminator_frames_survive_any_chunking() {
        let line = b"ST,GS,+0012.34kg\r\nST,GS,+0001.00kg\r\n";
        for split in 0..line.len() {
            let mut f = Framer::new(Framing::Terminator(b"\r\n".to_vec()), 64);
            let out = run(&mut f, &[&line[..split], &line[split..]]);
            assert_eq!(
                out,
                vec![
                    Ok(b"ST,GS,+0012.34kg".to_vec()),
                    Ok(b"ST,GS,+0001.00kg".to_vec())
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn overlong_lines_are_dropped_and_the_next_line_is_fine() {
        let mut f = Framer::new(Framing::Terminator(b"\n".to_vec()), 8);
        let out = run(&mut f, &[b"0123456789abcdefghij\nok\n"]);
        assert_eq!(out[0], Err(Junk::Overlong(21)));
        assert_eq!(out[1], Ok(b"ok".to_vec()));
        assert_eq!(out.len(), 2);
        // memory stays bounded while skipping
        let mut f = Framer::new(Framing::Terminator(b"\n".to_vec()), 8);
        run(&mut f, &[&[b'x'; 10_000]]);
        assert!(f.pending() <= 16);
    }

    #[test]
    fn start_end_frames_skip_noise_between_them() {
        let mut f = Framer::new(
            Framing::Delimited {
                start: vec![0x02],
                end: vec![0x03],
            },
            32,
        );
        let out = run(&mut f, &[b"\xff\x00noise\x02W=12.5\x03\x02W=", b"13.0\x03"]);
        assert_eq!(
            out,
            vec![
                Err(Junk::Garbage(7)),
                Ok(b"W=12.5".to_vec()),
                Ok(b"W=13.0".to_vec())
            ]
        );
        // endless noise without a start byte stays bounded
        let mut f = Framer::new(
            Framing::Delimited {
                start: vec![0x02],
                end: vec![0x03],
            },
            32,
        );
        run(&mut f, &[&[b'z'; 5000]]);
        assert!(f.pending() <= 70);
    }

    #[test]
    fn fixed_length() {
        let mut f = Framer::new(Framing::Length(4), 64);
        assert_eq!(
            run(&mut f, &[b"abcdef", b"gh"]),
            vec![Ok(b"abcd".to_vec()), Ok(b"efgh".to_vec())]
        );
    }
}

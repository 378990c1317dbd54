//! Test support, not used by the daemon: two linked pseudo-terminals from socat, standing in
//! for the two ends of a serial cable (Debian package `socat`). Dropping the pair stops socat.
//! Panics are its error reporting.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PtyPair {
    pub a: PathBuf,
    pub b: PathBuf,
    child: Child,
}

impl PtyPair {
    /// Create `tty-a` and `tty-b` in `dir` and wait until both exist.
    pub fn new(dir: &Path) -> Self {
        let (a, b) = (dir.join("tty-a"), dir.join("tty-b"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start socat (apt-get install socat): {e}"));
        let t0 = Instant::now();
        while !(a.exists() && b.exists()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "socat ptys never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PtyPair { a, b, child }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

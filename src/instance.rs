//! One daemon per store. Two `fieldgate run` on one config would both poll the devices, both
//! drain one queue, take the MQTT client id from each other every few hundred milliseconds and
//! delete each other's control socket. The first takes an exclusive lock on `<store>.lock`
//! (held until the process exits, released by the kernel even after SIGKILL) and writes its
//! pid there; a second one is refused with that pid.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another fieldgate (pid {pid}) is running with the store {store}; stop it first (lock file {lock})")]
    Held {
        pid: String,
        store: PathBuf,
        lock: PathBuf,
    },
    #[error("cannot take the instance lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the daemon runs.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// The lock file beside `store`.
pub fn lock_path(store: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", store.display()))
}

/// Take the instance lock for `store`, or say who holds it.
pub fn acquire(store: &Path) -> Result<InstanceLock, LockError> {
    let path = lock_path(store);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            Ok(InstanceLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(LockError::Held {
                pid: if pid.is_empty() {
                    "?".into()
                } else {
                    pid.chars().take(20).collect()
                },
                store: store.to_path_buf(),
                lock: path,
            })
        }
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = dir.path().join("sub/fg.db");
        let first = acquire(&store).unwrap_or_else(|e| panic!("{e}"));
        match acquire(&store) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        drop(first);
        assert!(
            acquire(&store).is_ok(),
            "free again once the holder is gone"
        );
    }
}

//! One pullnix at a time: an exclusive `flock` on `STATE/lock`.
//!
//! flock locks belong to the open file description, so the kernel drops the lock when the process
//! dies for any reason, including SIGKILL; a stale lock file is harmless.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::exit::Exit;

pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock. With `wait`, blocks until the holder exits; without, a held lock is an
    /// [`Exit::Busy`] error.
    pub fn acquire(path: &Path, wait: bool) -> Result<Lock> {
        remove_unless_file(path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match flock(&file, op) {
            Ok(()) => Ok(Lock { _file: file }),
            Err(Errno::WOULDBLOCK) => Err(anyhow::anyhow!(
                "another pullnix holds {} (use `sync --wait` to queue behind it)",
                path.display()
            ))
            .context(Exit::Busy),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// The lock file is pullnix's own. Anything else by its name (a directory, a symbolic link, a
/// fifo) would fail every run before it starts, so it is removed and the file made afresh. No
/// pullnix can hold the lock through such a thing, so none loses its lock by this.
fn remove_unless_file(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        return;
    }
    crate::warn!(
        "{} is not a regular file: removing it and making the lock file again",
        path.display()
    );
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = removed {
        // A second instance may have repaired it a moment ago; opening says what is wrong.
        crate::warn!("removing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("pullnix-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let first = Lock::acquire(&path, false).unwrap();
        let err = Lock::acquire(&path, false).err().unwrap();
        assert_eq!(Exit::code_of(&err), 3);
        drop(first);
        Lock::acquire(&path, false).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_in_place_of_the_lock_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("pullnix-lock-dir-{}", std::process::id()));
        let path = dir.join("lock");
        std::fs::create_dir_all(path.join("inside")).unwrap();
        let lock = Lock::acquire(&path, false).unwrap();
        assert!(path.is_file());
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

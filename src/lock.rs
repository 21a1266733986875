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
}

//! One pullnix at a time: an exclusive `flock` on `STATE/lock`.
//!
//! flock locks belong to the open file description, so the kernel drops the lock when the process
//! dies for any reason, including SIGKILL; a stale lock file is harmless.
//!
//! The lock file is root's alone (mode 0600 in the 0700 state directory): `flock` needs only a
//! read-only descriptor, so anyone who could open it could stop every deployment by holding it.
//! A holder that never lets go (whoever it is) must not go unnoticed either: a sync that finds
//! the lock taken records since when it has seen it taken (`STATE/lock.busy`, removed by the
//! next instance that gets the lock), `status` and the metrics show it, and once that is longer
//! ago than `lock_stalled_after` the sync fails with exit 15 instead of the harmless exit 3.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{FlockOperation, Mode, OFlags, flock};
use rustix::io::Errno;

use crate::exit::Exit;

pub struct Lock {
    _file: File,
    busy_file: PathBuf,
}

/// What to do when another process holds the lock.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Block until the holder exits.
    Queue,
    /// Fail at once: [`Exit::Busy`], or [`Exit::Stalled`] once the lock has been seen taken
    /// for longer than `stalled_after` seconds.
    Fail { stalled_after: u64 },
}

impl Lock {
    /// Takes the lock at `path` (created 0600, never through a symlink).
    pub fn acquire(path: &Path, wait: Wait) -> Result<Lock> {
        remove_unless_file(path);
        let file = open(path)?;
        let op = match wait {
            Wait::Queue => FlockOperation::LockExclusive,
            Wait::Fail { .. } => FlockOperation::NonBlockingLockExclusive,
        };
        let busy_file = busy_path(path);
        match (flock(&file, op), wait) {
            (Ok(()), _) => {
                // Whoever held it let go: the stall (if there was one) is over.
                let _ = std::fs::remove_file(&busy_file);
                Ok(Lock {
                    _file: file,
                    busy_file,
                })
            }
            (Err(Errno::WOULDBLOCK), Wait::Fail { stalled_after }) => {
                Err(busy(path, &busy_file, stalled_after))
            }
            (Err(e), _) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Takes the lock at `path` if nobody holds it; `None` if someone does. Nothing is
    /// recorded about a taken lock: the caller (confirm, boot-check) then leaves what it found
    /// to the holder, which is no sign of a stall.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        remove_unless_file(path);
        let file = open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let busy_file = busy_path(path);
                let _ = std::fs::remove_file(&busy_file);
                Ok(Some(Lock {
                    _file: file,
                    busy_file,
                }))
            }
            Err(Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // An instance that found the lock taken while we held it marked it busy; we are done.
        let _ = std::fs::remove_file(&self.busy_file);
    }
}

/// Opens (creating) the lock file: mode 0600 and owned by us, whatever an older version or
/// someone else left there.
fn open(path: &Path) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| {
        format!(
            "opening lock file {} (not following symlinks)",
            path.display()
        )
    })?;
    let st = rustix::fs::fstat(&fd).with_context(|| format!("looking at {}", path.display()))?;
    let euid = rustix::process::geteuid();
    if st.st_uid != euid.as_raw() {
        rustix::fs::fchown(&fd, Some(euid), Some(rustix::process::getegid()))
            .with_context(|| format!("taking ownership of the lock file {}", path.display()))?;
    }
    if st.st_mode & 0o7777 != 0o600 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))
            .with_context(|| format!("making the lock file {} private", path.display()))?;
    }
    Ok(File::from(fd))
}

/// `STATE/lock.busy`: when an instance first found the lock taken.
fn busy_path(lock: &Path) -> PathBuf {
    lock.with_extension("busy")
}

/// Since when the lock at `lock` has been seen taken without anyone getting it in between, in
/// Unix seconds (for `status` and the metrics).
pub fn busy_since(lock: &Path) -> Option<u64> {
    std::fs::read_to_string(busy_path(lock))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The error for a lock found taken; records the first time it was seen taken.
fn busy(path: &Path, busy_file: &Path, stalled_after: u64) -> anyhow::Error {
    let now = crate::state::now();
    let since = busy_since(path).unwrap_or_else(|| {
        if let Err(e) = crate::state::write_atomic(busy_file, format!("{now}\n").as_bytes()) {
            crate::warn!("could not record that the lock is taken: {e:#}");
        }
        now
    });
    let age = now.saturating_sub(since);
    if age > stalled_after {
        anyhow::anyhow!(
            "{} has been held by another process for {age}s (since {}), longer than \
             lock_stalled_after ({stalled_after}s): deployments are stalled. A pullnix still \
             running (`systemctl status pullnix`) or any other process holding the lock \
             (`fuser -v {}`) keeps them so",
            path.display(),
            crate::status::fmt_time(since),
            path.display()
        )
        .context(Exit::Stalled)
    } else {
        anyhow::anyhow!(
            "another pullnix holds {} (seen taken for {age}s; use `sync --wait` to queue behind it)",
            path.display()
        )
        .context(Exit::Busy)
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_lock_is_busy_until_first_is_dropped_then_stalled_after_the_bound() {
        let dir = std::env::temp_dir().join(format!("pullnix-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let first = Lock::acquire(&path, Wait::Fail { stalled_after: 60 }).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = Lock::acquire(&path, Wait::Fail { stalled_after: 60 })
            .err()
            .unwrap();
        assert_eq!(Exit::code_of(&err), 3);
        let since = busy_since(&path).unwrap();
        // Seen taken for longer than the bound: no longer the harmless "already running".
        std::fs::write(busy_path(&path), format!("{}\n", since - 120)).unwrap();
        let err = Lock::acquire(&path, Wait::Fail { stalled_after: 60 })
            .err()
            .unwrap();
        assert_eq!(Exit::code_of(&err), 15, "{err:#}");
        // Trying does not count as finding the lock taken.
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        drop(first);
        assert_eq!(busy_since(&path), None);
        let second = Lock::try_acquire(&path).unwrap().unwrap();
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        drop(second);
        Lock::acquire(&path, Wait::Fail { stalled_after: 60 }).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_open_lock_file_is_made_private_and_a_symlink_is_never_followed() {
        let dir = std::env::temp_dir().join(format!("pullnix-lock-perm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Lock::acquire(&path, Wait::Queue).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A symlink planted at the lock's name is replaced by a lock file of our own; the file it
        // pointed at is neither opened nor changed.
        let target = dir.join("elsewhere");
        std::fs::write(&target, "not pullnix's").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.join("lock-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        drop(Lock::acquire(&link, Wait::Queue).unwrap());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "not pullnix's");
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_in_place_of_the_lock_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("pullnix-lock-dir-{}", std::process::id()));
        let path = dir.join("lock");
        std::fs::create_dir_all(path.join("inside")).unwrap();
        let lock = Lock::acquire(&path, Wait::Queue).unwrap();
        assert!(path.is_file());
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The deployment record, `STATE/state.json`.
//!
//! It is the single source of truth for "what is deployed and what is in flight", so it is only
//! ever replaced atomically: write a temporary file, fsync it, rename it over the old one, fsync
//! the directory (rename(2) is atomic, and the directory fsync makes the rename itself durable).
//! A reader therefore sees the old or the new record, never a torn one, even after a power cut.
//!
//! A file that does not parse is never overwritten: pullnix stops with exit 10 and leaves it for
//! the admin, because guessing could mean forgetting an armed candidate.
//!
//! Forward compatibility: a pullnix may be replaced by an older one (a self-update rolled back,
//! a bad pullnix reverted), which then reads what the newer one wrote. So fields are only ever
//! added, with a default for their absence, and written only when they say something (a field
//! that is empty or false is left out); a reader tolerates fields it does not know and writes
//! them back unchanged. `version` changes only for a change an older pullnix must not read
//! (then it refuses the file, exit 10); there has been none.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::exit::Exit;
use crate::failpoint;

const VERSION: u32 = 1;

/// Fields this pullnix does not know (written by a newer one): kept and written back unchanged.
pub type Unknown = serde_json::Map<String, serde_json::Value>;

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}
/// Bad commits remembered; older ones cannot come back anyway once the branch moved past them.
const MAX_BAD: usize = 50;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The last confirmed deployment.
    pub deployed: Option<Deployed>,
    /// An armed candidate that is not confirmed yet.
    pub pending: Option<Pending>,
    /// Commits that must not be deployed again until the branch moves.
    #[serde(default)]
    pub bad: Vec<BadCommit>,
    /// The last commit whose evaluation or build failed.
    pub failed_build: Option<FailedBuild>,
    /// Interrupted attempts (kill, reboot) of one commit.
    pub attempts: Option<Attempts>,
    /// What the last command did.
    pub last: Option<Outcome>,
    #[serde(default)]
    pub rollbacks: u64,
    /// An admin's rollback under way: recorded before anything changes, finished by the next
    /// run of any command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    #[serde(flatten)]
    pub unknown: Unknown,
    /// Outcomes recorded since the last save, for the journal.
    #[serde(skip)]
    unjournaled: Vec<Outcome>,
}

/// `pullnix rollback` in flight: the profile goes to `to_generation` and
/// `switch-to-configuration switch` activates `to_system` and makes it the boot default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub from_generation: u32,
    pub from_system: PathBuf,
    pub to_generation: u32,
    pub to_system: PathBuf,
    pub at: u64,
    /// The boot in which the rollback was recorded (see [`Pending::boot_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub commit: String,
    pub system: PathBuf,
    pub generation: Option<u32>,
    pub at: u64,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Recorded, activation not (known to be) finished.
    Armed,
    /// Boot mode: the candidate is the (boot-counted) boot default; waiting for the reboot.
    Rebooting,
    /// The candidate runs (`switch-to-configuration test` succeeded, or it was booted); waiting
    /// for health.
    Activated,
    /// Health passed; making it the boot default.
    Confirming,
    /// Going back to `previous`.
    Reverting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub commit: String,
    pub candidate: PathBuf,
    /// The system that was running when the candidate was armed.
    pub previous: PathBuf,
    /// The system profile's generation when armed (what the boot loader defaults to).
    pub previous_generation: Option<u32>,
    pub phase: Phase,
    pub armed_at: u64,
    /// Unix time after which an unconfirmed candidate is reverted.
    pub deadline: u64,
    pub boot_tries_left: u32,
    /// Boot mode: the candidate is run by rebooting into it, and left by rebooting.
    #[serde(default)]
    pub boot: bool,
    /// Why a revert is under way, and whether the commit is to be recorded as bad.
    pub revert_reason: Option<String>,
    #[serde(default)]
    pub revert_marks_bad: bool,
    /// Reverting: the candidate reached the system profile, so the previous generation must be
    /// made the profile's and the boot loader's default again and the candidate's generation
    /// deleted. Recorded when the revert starts, so that a revert killed half way through this
    /// step redoes all of it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restore_boot: bool,
    /// The kernel's boot id when the current phase was entered. boot-check compares it with the
    /// running boot's: the same id means no reboot happened since, so there is nothing for it
    /// to account for (and it must not wait for the lock, which the pullnix writing this record
    /// may hold while a switch starts boot-check again). Absent in records of older pullnix
    /// versions, which boot-check treats as written before this boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCommit {
    pub commit: String,
    pub reason: String,
    pub at: u64,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBuild {
    pub commit: String,
    pub error: String,
    pub at: u64,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    pub commit: String,
    pub count: u32,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// A short machine-readable word: deployed, noop, build-failed, refused, ...
    pub result: String,
    pub commit: Option<String>,
    pub message: String,
    pub at: u64,
    #[serde(flatten)]
    pub unknown: Unknown,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    /// Reads the record; a missing file is a fresh machine.
    pub fn load(path: &Path) -> Result<State> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: VERSION,
                    ..State::default()
                });
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading state file {}", path.display()))
                    .context(Exit::CorruptState);
            }
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| {
                format!(
                    "state file {} is corrupt; it was left as it is: inspect it, then move it away \
                     to start over (pullnix then treats the running system as the baseline)",
                    path.display()
                )
            })
            .context(Exit::CorruptState)?;
        if state.version != VERSION {
            return Err(anyhow::anyhow!(
                "state file {} has format version {}, this pullnix reads version {VERSION}: it \
                 was written by a pullnix whose record an older one must not read; it was left \
                 as it is (upgrade pullnix again, or move the file away to start over)",
                path.display(),
                state.version
            ))
            .context(Exit::CorruptState);
        }
        if !state.unknown.is_empty() {
            let keys: Vec<&str> = state.unknown.keys().map(String::as_str).collect();
            crate::info!(
                "state file {} has fields this pullnix does not know (a newer one wrote them), kept as they are: {}",
                path.display(),
                keys.join(", ")
            );
        }
        Ok(state)
    }

    /// Replaces the record atomically and durably. New outcomes are first appended to the
    /// deployment journal beside it: after a crash between the two an event can appear twice
    /// in the journal (it happens again on recovery), but never go missing.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        if !self.unjournaled.is_empty() {
            append_journal(&journal_path(path), &self.unjournaled)?;
            self.unjournaled.clear();
        }
        let json = serde_json::to_string_pretty(self).context("serialising the state")?;
        // Messages quote what went wrong, and a fetch error may quote the repository URL.
        write_atomic(path, crate::repo_url::redact(&json).as_bytes())
    }

    pub fn is_bad(&self, commit: &str) -> Option<&BadCommit> {
        self.bad.iter().find(|b| b.commit == commit)
    }

    pub fn mark_bad(&mut self, commit: &str, reason: &str) {
        if self.is_bad(commit).is_some() {
            return;
        }
        self.bad.push(BadCommit {
            commit: commit.to_owned(),
            reason: reason.to_owned(),
            at: now(),
            unknown: Unknown::new(),
        });
        if self.bad.len() > MAX_BAD {
            let excess = self.bad.len() - MAX_BAD;
            self.bad.drain(..excess);
        }
    }

    pub fn record(&mut self, result: &str, commit: Option<&str>, message: impl Into<String>) {
        let outcome = Outcome {
            result: result.to_owned(),
            commit: commit.map(str::to_owned),
            message: message.into(),
            at: now(),
            unknown: Unknown::new(),
        };
        self.unjournaled.push(outcome.clone());
        self.last = Some(outcome);
    }

    /// Counts one interrupted attempt of `commit` and returns the new count.
    pub fn count_attempt(&mut self, commit: &str) -> u32 {
        match &mut self.attempts {
            Some(a) if a.commit == commit => {
                a.count += 1;
                a.count
            }
            _ => {
                self.attempts = Some(Attempts {
                    commit: commit.to_owned(),
                    count: 1,
                    unknown: Unknown::new(),
                });
                1
            }
        }
    }
}

/// The deployment journal: `journal.jsonl` beside the state file, one JSON object per line,
/// only ever appended to (the local audit trail).
pub fn journal_path(state_file: &Path) -> PathBuf {
    state_file.with_file_name("journal.jsonl")
}

fn append_journal(path: &Path, events: &[Outcome]) -> Result<()> {
    let mut text = String::new();
    for e in events {
        let line = serde_json::to_string(e).context("serialising a journal event")?;
        text.push_str(&crate::repo_url::redact(&line));
        text.push('\n');
    }
    let mut f = open_append(path).with_context(|| format!("opening journal {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("appending to journal {}", path.display()))
}

/// Opens `path` for appending, creating it with mode 0600. A symlink in its place is an error
/// (`O_NOFOLLOW`), never a way to make root append to another file.
pub fn open_append(path: &Path) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("opening {} (not following symlinks)", path.display()))?;
    Ok(File::from(fd))
}

/// Records "the remote was asked just now" as the modification time of `path`. Polls that find
/// nothing new thus write no record and flush nothing: losing this time in a crash costs only a
/// slightly older "last check" in `status`.
pub fn touch(path: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("opening {} (not following symlinks)", path.display()))?;
    File::from(fd)
        .set_modified(SystemTime::now())
        .with_context(|| format!("setting the time of {}", path.display()))
}

/// When `path` was last [`touch`]ed, in Unix seconds.
pub fn touched_at(path: &Path) -> Option<u64> {
    let m = fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// Creates the private directory `dir` (mode 0700: keys, the repository, the record); missing
/// parents get the ordinary mode (0755 under the usual umask). On a freshly installed root even
/// /var and /var/lib are missing, and a 0700 /var/lib would lock every service user out.
///
/// An existing `dir` is made private too: earlier versions (and `bootstrap`) left the state
/// directory at 0755, where anyone could read the record and open the lock file. One that
/// belongs to another user is refused: its owner could change anything inside.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        made => made.with_context(|| format!("creating directory {}", dir.display()))?,
    }
    let meta = fs::metadata(dir).with_context(|| format!("looking at {}", dir.display()))?;
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        bail!(
            "{} belongs to uid {}, not to uid {euid} that runs pullnix: whoever owns it controls \
             what pullnix reads from it; chown it (or remove it)",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (mode {mode:o} -> 700)", dir.display()))?;
        crate::notice!(
            "{} had mode {mode:o}, readable or writable by others; now 700",
            dir.display()
        );
    }
    Ok(())
}

/// Refuses to create files in `dir` when someone other than root (or the user pullnix runs
/// as) can add, rename or remove entries in it: such a user could plant a symlink or swap
/// the file under pullnix's feet. A sticky directory owned by root (like /tmp) or by us is
/// fine: there, others cannot touch pullnix's own entries, the owner can replace what others
/// put there, and the temporary name is unpredictable.
pub fn check_dir_not_shared(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).with_context(|| format!("looking at {}", dir.display()))?;
    let euid = rustix::process::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    let owned = meta.uid() == 0 || meta.uid() == euid;
    let sticky = mode & 0o1000 != 0;
    if owned && (sticky || mode & 0o022 == 0) {
        return Ok(());
    }
    let who = if owned {
        format!("its group (gid {}) or everyone", meta.gid())
    } else {
        format!("its owner uid {}", meta.uid())
    };
    bail!(
        "refusing to write in {} (mode {mode:o}): {who} can change entries in it, and so plant a \
         symlink where pullnix writes; make it owned by root and not group- or world-writable",
        dir.display()
    )
}

/// Replaces `path` atomically and durably with `bytes`, mode 0600 (see [`write_atomic_mode`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Replaces `path` atomically and durably with `bytes`, with mode `mode`: a temporary file with
/// an unpredictable name, created exclusively and never through a symlink (`O_CREAT|O_EXCL|
/// O_NOFOLLOW`), is written and fsynced, renamed over `path` (rename(2) replaces a symlink at
/// `path` itself, it does not follow it), and the directory is fsynced so the rename survives a
/// power cut. The directory must not be writable by others ([`check_dir_not_shared`]).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    check_dir_not_shared(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or_else(|| "state".into(), |n| n.to_string_lossy()),
        random_hex()?
    ));
    let fd = rustix::fs::open(
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        // The umask may have taken bits from `mode`; the file gets exactly `mode`.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        let mut f = File::from(fd);
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        failpoint::hit("state.before-rename");
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

/// 64 random bits in hex, from the kernel (getrandom(2)).
fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 8];
    // Up to 256 bytes are always filled in one call once the pool is initialised.
    let filled = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .context("getting random bytes for a temporary file name")?;
    if filled != bytes.len() {
        bail!("getrandom(2) returned too few bytes");
    }
    Ok(format!("{:016x}", u64::from_ne_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pullnix-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn roundtrip_and_missing_file() {
        let d = tmpdir("rt");
        let p = d.join("state.json");
        let mut s = State::load(&p).unwrap();
        assert!(s.deployed.is_none());
        s.mark_bad("abc", "unhealthy");
        s.mark_bad("abc", "again");
        assert_eq!(s.count_attempt("c1"), 1);
        assert_eq!(s.count_attempt("c1"), 2);
        assert_eq!(s.count_attempt("c2"), 1);
        s.record("deployed", Some("c2"), "one");
        s.save(&p).unwrap();
        s.record("reverted", Some("c3"), "two");
        s.save(&p).unwrap();
        s.save(&p).unwrap();
        let journal = fs::read_to_string(journal_path(&p)).unwrap();
        let lines: Vec<Outcome> = journal
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{journal}");
        assert_eq!(lines[1].result, "reverted");
        let back = State::load(&p).unwrap();
        assert_eq!(back.bad.len(), 1);
        assert_eq!(back.bad[0].reason, "unhealthy");
        assert_eq!(
            back.attempts,
            Some(Attempts {
                commit: "c2".into(),
                count: 1,
                unknown: Unknown::new(),
            })
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_and_untouched() {
        let d = tmpdir("corrupt");
        let p = d.join("state.json");
        fs::write(&p, b"{\"version\": 1, \"deployed\": ").unwrap();
        let err = State::load(&p).unwrap_err();
        assert_eq!(Exit::code_of(&err), 10);
        assert_eq!(fs::read(&p).unwrap(), b"{\"version\": 1, \"deployed\": ");
        fs::remove_dir_all(&d).unwrap();
    }

    /// The previous release's reader: every struct refused fields it did not know.
    mod previous_release {
        use serde::Deserialize;
        use std::path::PathBuf;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        pub struct State {
            version: u32,
            deployed: Option<Deployed>,
            pending: Option<Pending>,
            #[serde(default)]
            bad: Vec<BadCommit>,
            failed_build: Option<FailedBuild>,
            attempts: Option<Attempts>,
            last: Option<Outcome>,
            #[serde(default)]
            rollbacks: u64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Deployed {
            commit: String,
            system: PathBuf,
            generation: Option<u32>,
            at: u64,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case")]
        #[allow(dead_code)]
        enum Phase {
            Armed,
            Rebooting,
            Activated,
            Confirming,
            Reverting,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Pending {
            commit: String,
            candidate: PathBuf,
            previous: PathBuf,
            previous_generation: Option<u32>,
            phase: Phase,
            armed_at: u64,
            deadline: u64,
            boot_tries_left: u32,
            #[serde(default)]
            boot: bool,
            revert_reason: Option<String>,
            #[serde(default)]
            revert_marks_bad: bool,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct BadCommit {
            commit: String,
            reason: String,
            at: u64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct FailedBuild {
            commit: String,
            error: String,
            at: u64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Attempts {
            commit: String,
            count: u32,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outcome {
            result: String,
            commit: Option<String>,
            message: String,
            at: u64,
        }
    }

    /// Going back to the previous release after an upgrade (README "Files"): it refuses fields
    /// it does not know, so this pullnix writes its new fields only while they say something
    /// (a rollback or a boot-default restore in flight).
    #[test]
    fn the_previous_release_reads_what_this_one_writes() {
        let mut s = State {
            version: VERSION,
            ..State::default()
        };
        s.deployed = Some(Deployed {
            commit: "c1".into(),
            system: "/nix/store/a".into(),
            generation: Some(2),
            at: 1,
            unknown: Unknown::new(),
        });
        s.pending = Some(Pending {
            commit: "c2".into(),
            candidate: "/nix/store/b".into(),
            previous: "/nix/store/a".into(),
            previous_generation: Some(2),
            phase: Phase::Reverting,
            armed_at: 1,
            deadline: 2,
            boot_tries_left: 3,
            boot: true,
            revert_reason: Some("unhealthy".into()),
            revert_marks_bad: true,
            restore_boot: false,
            // Written as this pullnix writes a record when the kernel tells no boot id. One
            // with a boot id (every record in flight on Linux) needs the tolerant reader of
            // 774dc79 and later: no release predates it.
            boot_id: None,
            unknown: Unknown::new(),
        });
        s.mark_bad("c0", "unhealthy");
        s.count_attempt("c2");
        s.record("reverted", Some("c2"), "x");
        s.failed_build = Some(FailedBuild {
            commit: "c3".into(),
            error: "e".into(),
            at: 1,
            unknown: Unknown::new(),
        });
        let json = serde_json::to_string(&s).unwrap();
        serde_json::from_str::<previous_release::State>(&json)
            .unwrap_or_else(|e| panic!("the previous release cannot read {json}: {e}"));
    }

    /// A newer pullnix's fields are read, kept and written back, at the top and inside records.
    #[test]
    fn fields_of_a_newer_pullnix_are_kept() {
        let d = tmpdir("newer");
        let p = d.join("state.json");
        fs::write(
            &p,
            br#"{"version": 1, "deployed": {"commit": "c1", "system": "/nix/store/a",
                "generation": 2, "at": 1, "signed_by": "ci"}, "pending": null,
                "failed_build": null, "attempts": null, "last": null, "rollbacks": 0,
                "future": {"x": [1, 2]}}"#,
        )
        .unwrap();
        let mut s = State::load(&p).unwrap();
        s.record("noop", None, "x");
        s.save(&p).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(back["future"]["x"][1], 2, "{back:#}");
        assert_eq!(back["deployed"]["signed_by"], "ci", "{back:#}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_list_is_bounded() {
        let mut s = State::default();
        for i in 0..(MAX_BAD + 10) {
            s.mark_bad(&format!("c{i}"), "x");
        }
        assert_eq!(s.bad.len(), MAX_BAD);
        assert!(s.is_bad("c0").is_none());
        assert!(s.is_bad(&format!("c{}", MAX_BAD + 9)).is_some());
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_instead_of_following_it() {
        let d = tmpdir("symlink");
        let victim = d.join("victim");
        fs::write(&victim, b"root's secret\n").unwrap();
        set_mode(&victim, 0o600);
        let target = d.join("out.prom");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        // The temporary name the old code used, planted too.
        std::os::unix::fs::symlink(&victim, d.join(".out.prom.tmp")).unwrap();
        write_atomic_mode(&target, b"metrics\n", 0o644).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's secret\n");
        assert_eq!(fs::read(&target).unwrap(), b"metrics\n");
        assert_eq!(mode_of(&target), 0o644);
        write_atomic(&target, b"private\n").unwrap();
        assert_eq!(mode_of(&target), 0o600);
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".out.prom.") && n != ".out.prom.tmp")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn atomic_write_refuses_directories_others_can_write() {
        let d = tmpdir("shared");
        for (mode, ok) in [
            (0o755, true),
            (0o775, false),
            (0o777, false),
            (0o1777, true),
        ] {
            set_mode(&d, mode);
            let r = write_atomic(&d.join("f"), b"x");
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(format!("{e:#}").contains("refusing to write in"), "{e:#}");
            }
        }
        set_mode(&d, 0o755);
        if rustix::process::geteuid().is_root() {
            // A directory that belongs to another user (node-exporter's, say), even 0755.
            rustix::fs::chown(&d, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            let e = write_atomic(&d.join("g"), b"x").unwrap_err();
            assert!(format!("{e:#}").contains("its owner uid 65534"), "{e:#}");
            assert!(!d.join("g").exists());
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn journal_append_does_not_follow_a_planted_symlink() {
        let d = tmpdir("journal-link");
        let victim = d.join("victim");
        fs::write(&victim, b"untouched\n").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("journal.jsonl")).unwrap();
        let mut s = State::default();
        s.record("deployed", Some("c1"), "x");
        let e = s.save(&d.join("state.json")).unwrap_err();
        assert!(format!("{e:#}").contains("journal"), "{e:#}");
        assert_eq!(fs::read(&victim).unwrap(), b"untouched\n");
        // The record was not replaced either: the journal comes first.
        assert!(!d.join("state.json").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn private_dir_is_created_0700_and_an_open_one_is_tightened() {
        let d = tmpdir("private");
        let state = d.join("var/lib/pullnix");
        create_private_dir(&state).unwrap();
        assert_eq!(mode_of(&state), 0o700);
        assert_eq!(mode_of(&d.join("var/lib")), 0o755);
        for open in [0o755, 0o777] {
            set_mode(&state, open);
            create_private_dir(&state).unwrap();
            assert_eq!(mode_of(&state), 0o700, "from {open:o}");
        }
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&state, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            let e = create_private_dir(&state).unwrap_err();
            assert!(format!("{e:#}").contains("belongs to uid 65534"), "{e:#}");
        }
        fs::remove_dir_all(&d).unwrap();
    }
}

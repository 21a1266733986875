//! Documented exit codes (README, "Exit codes") and the error marker that carries them.
//!
//! A step that fails in a way the admin must be able to tell apart attaches an [`Exit`] as anyhow
//! context; `main` walks the error chain for the first marker and exits with its code. Anything
//! without a marker is an internal error (1).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Usage,
    Busy,
    Fetch,
    Refused,
    Build,
    Blocked,
    Activation,
    Unhealthy,
    CorruptState,
    HostsFailed,
    /// `install`: the target could not be prepared (disk script failed, target not mounted).
    Disks,
    /// `wake`: a magic packet could not be sent.
    Send,
    /// `install`: the provisioner refused the install report.
    Unreported,
    /// The lock has been seen taken for longer than `lock_stalled_after`.
    Stalled,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Usage => 2,
            Exit::Busy => 3,
            Exit::Fetch => 4,
            Exit::Refused => 5,
            Exit::Build => 6,
            Exit::Blocked => 7,
            Exit::Activation => 8,
            Exit::Unhealthy => 9,
            Exit::CorruptState => 10,
            Exit::Disks => 11,
            Exit::HostsFailed => 12,
            Exit::Send => 13,
            Exit::Unreported => 14,
            Exit::Stalled => 15,
        }
    }

    /// The exit code for an error: the first marker found in its chain, else 1.
    pub fn code_of(err: &anyhow::Error) -> u8 {
        // anyhow looks through every `.context()` layer for a context of this type; the
        // outermost marker wins.
        err.downcast_ref::<Exit>().map_or(1, |e| e.code())
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exit::Usage => "usage error",
            Exit::Busy => "already running",
            Exit::Fetch => "fetch failed",
            Exit::Refused => "commit refused",
            Exit::Build => "build failed",
            Exit::Blocked => "blocked by vulnerability scan",
            Exit::Activation => "activation failed",
            Exit::Unhealthy => "health checks failed",
            Exit::CorruptState => "state file unusable",
            Exit::HostsFailed => "some hosts failed",
            Exit::Disks => "target disks not ready",
            Exit::Send => "could not send",
            Exit::Unreported => "install report refused",
            Exit::Stalled => "deployments stalled behind the lock",
        })
    }
}

impl std::error::Error for Exit {}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_is_found_below_other_context() {
        let err = Err::<(), _>(anyhow::anyhow!("nix exited with 1"))
            .context(Exit::Build)
            .context("building commit abc")
            .unwrap_err();
        assert_eq!(Exit::code_of(&err), 6);
        assert_eq!(
            format!("{err:#}"),
            "building commit abc: build failed: nix exited with 1"
        );
    }

    #[test]
    fn unmarked_errors_are_internal() {
        assert_eq!(Exit::code_of(&anyhow::anyhow!("boom")), 1);
    }
}

//! Handing a toplevel to its own `bin/switch-to-configuration`.
//!
//! Actions (see nixpkgs nixos/modules/system/activation/switch-to-configuration.pl and its Rust
//! successor): `test` activates without touching the boot loader, `boot` installs the boot loader
//! entries with the system profile's current generation as default, `switch` does both.
//!
//! With `switch.systemd_run`, the script runs in a transient unit, as nixos-rebuild does
//! (`systemd-run … --unit=nixos-rebuild-switch-to-configuration`): then even a switch that stops
//! pullnix's own service runs to its end instead of dying with it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cmd::Cmd;
use crate::config::Switch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Test,
    Boot,
    Switch,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Test => "test",
            Action::Boot => "boot",
            Action::Switch => "switch",
        }
    }
}

/// Marks the failure of a switch that activated the system but could not start some of its
/// units: NixOS's switch-to-configuration exits 4 then (nixpkgs
/// nixos/modules/system/activation/switch-to-configuration.pl, and its Rust successor
/// switch-to-configuration-ng, keep that code).
#[derive(Debug)]
pub struct UnitsFailed;

impl std::fmt::Display for UnitsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system was activated, but some of its units failed")
    }
}

impl std::error::Error for UnitsFailed {}

/// Whether `err` is a switch that activated the system but could not start some units.
pub fn units_failed(err: &anyhow::Error) -> bool {
    err.downcast_ref::<UnitsFailed>().is_some()
}

/// The transient unit pullnix runs switch-to-configuration in (`switch.systemd_run`).
const SWITCH_UNIT: &str = "pullnix-switch-to-configuration.service";

/// How long a switch that an interrupted run left running is waited for before this one
/// starts anyway (and then fails, as systemd-run refuses a unit name in use).
const RUNNING_SWITCH_WAIT: Duration = Duration::from_secs(1800);

pub fn run(cfg: &Switch, system: &Path, action: Action) -> Result<()> {
    let script = system.join("bin/switch-to-configuration");
    if cfg.systemd_run {
        wait_for_running_switch();
    }
    let cmd = if cfg.systemd_run {
        // No --pipe: the switch's output goes to the journal of its own unit. With --pipe it
        // would write to pullnix's pipes, and if pullnix died mid-switch those writes would fail,
        // which can abort a switch-to-configuration that treats a failed stderr write as fatal.
        Cmd::new("systemd-run")
            .args([
                "--wait",
                "--collect",
                "--quiet",
                "--no-ask-password",
                "--service-type=exec",
                "--unit=pullnix-switch-to-configuration",
                "--",
            ])
            .arg(&script)
            .arg(action.as_str())
    } else {
        Cmd::new(&script).arg(action.as_str())
    };
    let what = || {
        let journal = if cfg.systemd_run {
            " (its output: journalctl -u pullnix-switch-to-configuration)"
        } else {
            ""
        };
        format!(
            "switch-to-configuration {} of {}{journal}",
            action.as_str(),
            system.display()
        )
    };
    // systemd-run --wait exits with the unit's exit status.
    let out = cmd.output().with_context(what)?;
    if out.status.success() {
        return Ok(());
    }
    let err = cmd.failure(&out);
    if out.status.code() == Some(4) {
        return Err(err).context(UnitsFailed).with_context(what);
    }
    Err(err).with_context(what)
}

/// A switch started by a run that was killed (or stopped by its own switch) goes on in its
/// transient unit. Another one must not start before it ends: the same unit name would be
/// refused, NixOS's switch-to-configuration refuses to run twice at once, and a revert must not
/// race the activation it reverts. Waiting can hold nothing up: the switch runs in its own
/// unit, and the confirm unit has told systemd it started before it gets here (see
/// `confirm::command`).
fn wait_for_running_switch() {
    let started = Instant::now();
    let mut said = false;
    while started.elapsed() < RUNNING_SWITCH_WAIT {
        let state = Cmd::new("systemctl")
            .args(["show", "--property=ActiveState", "--value", SWITCH_UNIT])
            .output()
            .map(|o| o.stdout_str().trim().to_owned())
            .unwrap_or_default();
        if !matches!(
            state.as_str(),
            "active" | "activating" | "deactivating" | "reloading"
        ) {
            return;
        }
        if !said {
            crate::notice!(
                "{SWITCH_UNIT} is still running a switch started earlier; waiting for it to end"
            );
            said = true;
        }
        crate::watchdog::sleep(Duration::from_secs(1));
    }
    crate::warn!(
        "{SWITCH_UNIT} still runs after {}s; starting the switch anyway",
        RUNNING_SWITCH_WAIT.as_secs()
    );
}

/// The parts of a toplevel that `switch-to-configuration test` cannot apply to a running
/// machine: NixOS links them from the toplevel as `kernel`, `initrd` and `kernel-params`
/// (nixpkgs nixos/modules/system/activation/top-level.nix).
const BOOT_PARTS: [&str; 3] = ["kernel", "initrd", "kernel-params"];

/// Whether running `candidate` needs a reboot from `current`: a boot part differs (the same
/// store path, or the same bytes for a plain file, counts as unchanged).
pub fn needs_reboot(current: &Path, candidate: &Path) -> bool {
    BOOT_PARTS.iter().any(|part| {
        let now = std::fs::canonicalize(current.join(part));
        let next = std::fs::canonicalize(candidate.join(part));
        match (now, next) {
            (Err(_), Err(_)) => false,
            (Ok(now), Ok(next)) if now == next => false,
            (Ok(now), Ok(next)) => match (std::fs::read(&now), std::fs::read(&next)) {
                (Ok(old_bytes), Ok(new_bytes)) => old_bytes != new_bytes,
                _ => true,
            },
            _ => true,
        }
    })
}

/// Asks for a reboot with the configured command. It returns once the request is made; the
/// machine goes down asynchronously.
pub fn reboot(cfg: &Switch) -> Result<()> {
    Cmd::from_argv(&cfg.reboot_command)?
        .run()
        .context("requesting a reboot (switch.reboot_command)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_parts_decide_reboots() {
        let d = std::env::temp_dir().join(format!("pullnix-switch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (name, kernel, params) in [
            ("a", "k1", "quiet"),
            ("b", "k1", "quiet"),
            ("c", "k2", "quiet"),
            ("e", "k1", "debug"),
        ] {
            std::fs::create_dir_all(d.join(name)).unwrap();
            std::fs::write(d.join(name).join("kernel"), kernel).unwrap();
            std::fs::write(d.join(name).join("kernel-params"), params).unwrap();
        }
        std::fs::create_dir_all(d.join("bare")).unwrap();
        assert!(!needs_reboot(&d.join("a"), &d.join("b")));
        assert!(needs_reboot(&d.join("a"), &d.join("c")));
        assert!(needs_reboot(&d.join("a"), &d.join("e")));
        assert!(needs_reboot(&d.join("a"), &d.join("bare")));
        assert!(!needs_reboot(&d.join("bare"), &d.join("bare")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

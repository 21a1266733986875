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

pub fn run(cfg: &Switch, system: &Path, action: Action) -> Result<()> {
    let script = system.join("bin/switch-to-configuration");
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

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

pub fn run(cfg: &Switch, system: &Path, action: Action) -> Result<()> {
    let script = system.join("bin/switch-to-configuration");
    let cmd = if cfg.systemd_run {
        Cmd::new("systemd-run")
            .args([
                "--wait",
                "--collect",
                "--quiet",
                "--pipe",
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
    cmd.run().with_context(|| {
        format!(
            "switch-to-configuration {} of {}",
            action.as_str(),
            system.display()
        )
    })?;
    Ok(())
}

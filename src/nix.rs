//! Building the host's toplevel with `nix build --json`.
//!
//! Nix 2.8 has no `--print-out-paths`; `--json` gives `[{"drvPath":…,"outputs":{"out":…}}]` in
//! every version since flakes exist, so the result is parsed from it rather than from a symlink.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;

use crate::cmd::Cmd;
use crate::config::Config;
use crate::exit::Exit;

#[derive(Deserialize)]
struct BuildResult {
    outputs: std::collections::BTreeMap<String, PathBuf>,
}

/// The flake reference for exactly `commit` of the fetched branch. Nix's git fetcher needs the
/// `ref` as well as the `rev`: the bare repository has no HEAD branch, and `?rev=` alone makes
/// nix look for one (see shared facts on Nix 2.8).
pub fn flake_ref(repo_dir: &Path, tracking_ref: &str, commit: &str, flake_dir: &str) -> String {
    let mut r = format!(
        "git+file://{}?ref={tracking_ref}&rev={commit}",
        repo_dir.display()
    );
    if !flake_dir.is_empty() {
        r.push_str("&dir=");
        r.push_str(flake_dir.trim_matches('/'));
    }
    r
}

/// The attribute path of the host's system closure.
pub fn toplevel_attr(host: &str) -> String {
    format!("nixosConfigurations.\"{host}\".config.system.build.toplevel")
}

/// Refuses a store path that is not a NixOS system (no `bin/switch-to-configuration`), whatever
/// attribute or pin produced it.
pub fn ensure_toplevel(path: &Path) -> Result<()> {
    if !path.join("bin/switch-to-configuration").exists() {
        return Err(anyhow!(
            "{} has no bin/switch-to-configuration: not a NixOS system toplevel",
            path.display()
        ))
        .context(Exit::Build);
    }
    Ok(())
}

/// Evaluates and builds `flake#attr`, registering `out_link` as a GC root for the result.
pub fn build(cfg: &Config, flake: &str, attr: &str, out_link: &Path) -> Result<PathBuf> {
    let installable = format!("{flake}#{attr}");
    // An input the commit does not lock (no flake.lock, or a stale one) must not be resolved
    // here, to whatever it points at now. For this `git+file://…?rev=` reference nix refuses
    // by itself ("cannot write modified lock file"), unless told `--no-write-lock-file`, which
    // turns that (and --no-update-lock-file) into a warning and resolves the input: config.rs
    // refuses that flag in build.extra_args. --no-update-lock-file says the same for every
    // form of reference where nix could write a lock file (nixpkgs: src/libflake/flake.cc,
    // lockFlake).
    // Nix's git fetcher runs `git fetch` into its cache, and git (2.47 and later for fetch; `gc
    // --auto` before that) then starts its housekeeping detached, in a process that outlives nix
    // and pullnix: the unit would end with it still running. Run it in the foreground instead;
    // see `maintenance.autoDetach` and `gc.autoDetach` in git-config(1).
    let cmd = Cmd::new(&cfg.build.nix)
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "maintenance.autoDetach")
        .env("GIT_CONFIG_VALUE_0", "false")
        .env("GIT_CONFIG_KEY_1", "gc.autoDetach")
        .env("GIT_CONFIG_VALUE_1", "false")
        .args(["build", "--json", "--no-update-lock-file", "--out-link"])
        .arg(out_link)
        .args(&cfg.build.extra_args)
        .arg(&installable);
    let out = cmd.output().context(Exit::Build)?;
    if !out.status.success() {
        return Err(cmd.failure(&out)).context(Exit::Build);
    }
    parse_build_json(&out.stdout)
        .with_context(|| format!("reading the JSON printed by `{}`", cmd.display()))
}

fn parse_build_json(stdout: &[u8]) -> Result<PathBuf> {
    let results: Vec<BuildResult> = serde_json::from_slice(stdout)?;
    let first = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no build result"))?;
    first
        .outputs
        .get("out")
        .cloned()
        .ok_or_else(|| anyhow!("the build result has no `out` output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_json_of_nix_2_8() {
        let j = br#"[{"drvPath":"/nix/store/80z-x.drv","outputs":{"out":"/nix/store/9bq-nixos-system-x"}}]"#;
        assert_eq!(
            parse_build_json(j).unwrap(),
            Path::new("/nix/store/9bq-nixos-system-x")
        );
        assert!(parse_build_json(b"[]").is_err());
        assert!(parse_build_json(b"building...").is_err());
    }

    #[test]
    fn flake_ref_pins_ref_rev_and_dir() {
        assert_eq!(
            flake_ref(
                Path::new("/var/lib/pullnix/repo.git"),
                "refs/remotes/origin/main",
                "abc",
                "hosts/"
            ),
            "git+file:///var/lib/pullnix/repo.git?ref=refs/remotes/origin/main&rev=abc&dir=hosts"
        );
        assert_eq!(
            toplevel_attr("edge-1"),
            "nixosConfigurations.\"edge-1\".config.system.build.toplevel"
        );
    }
}

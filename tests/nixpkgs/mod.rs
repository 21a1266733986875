//! Where the tests of the NixOS side (`tests/package_source.rs`, `tests/nix_eval.rs`) find
//! nixpkgs.
//!
//! * `NIXPKGS=/path/to/nixpkgs`: a whole nixpkgs checkout. Everything is evaluated through it
//!   (`nixos/lib/eval-config.nix`, its own `callPackage`), nothing is declared by hand.
//! * otherwise the real-source subset in `../shared/nixpkgs` beside the repository (its README
//!   lists what and which version), or wherever `PULLNIX_NIXPKGS_SUBSET` points.
//!
//! A public clone has neither: the tests then say so in one line and pass, except in CI (`CI`
//! set, as `.ci/run` does), where a missing subset is a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub enum Nixpkgs {
    /// `../shared/nixpkgs`: all of `lib/` and a few NixOS files.
    Subset(PathBuf),
    /// A whole nixpkgs (`NIXPKGS`).
    Full(PathBuf),
}

impl Nixpkgs {
    pub fn path(&self) -> &Path {
        match self {
            Nixpkgs::Subset(p) | Nixpkgs::Full(p) => p,
        }
    }

    pub fn is_full(&self) -> bool {
        matches!(self, Nixpkgs::Full(_))
    }
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The nixpkgs to evaluate with, or `None` (after saying so) when there is none outside CI.
pub fn locate() -> Option<Nixpkgs> {
    if let Some(full) = std::env::var_os("NIXPKGS").filter(|v| !v.is_empty()) {
        let full = PathBuf::from(full);
        assert!(
            full.join("nixos/lib/eval-config.nix").is_file(),
            "NIXPKGS={} is not a nixpkgs checkout (no nixos/lib/eval-config.nix)",
            full.display()
        );
        return Some(Nixpkgs::Full(full.canonicalize().unwrap()));
    }
    let subset = std::env::var_os("PULLNIX_NIXPKGS_SUBSET")
        .filter(|v| !v.is_empty())
        .map_or_else(|| manifest_dir().join("../shared/nixpkgs"), PathBuf::from);
    let complete = ["lib/default.nix", "nixos/lib/systemd-lib.nix"]
        .iter()
        .all(|f| subset.join(f).is_file());
    if complete {
        return Some(Nixpkgs::Subset(subset.canonicalize().unwrap()));
    }
    let line = format!(
        "nixpkgs subset not found at {}: set PULLNIX_NIXPKGS_SUBSET=/path/to/subset (or NIXPKGS=/path/to/nixpkgs) to run the NixOS tests",
        subset.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{line} (CI is set)");
    // Straight to stderr: the test harness only captures print!/eprint!, and this line must be
    // seen even though the test passes.
    let _ = writeln!(std::io::stderr(), "{line}; skipped");
    None
}

/// `nix-instantiate ARGS`, panicking with its stderr unless it succeeds.
pub fn nix_instantiate(args: &[&str]) -> Output {
    let out = Command::new("nix-instantiate")
        .args(args)
        .output()
        .expect("cannot run nix-instantiate (README: Testing)");
    assert!(
        out.status.success(),
        "nix-instantiate {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

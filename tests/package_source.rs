//! The Nix package builds from exactly the source `nix/package.nix` selects.
//!
//! `nix/package.nix` filters the repository down to what cargo reads (Cargo.toml, Cargo.lock,
//! src/), so that a change to the tests or the README does not rebuild the package. A manifest
//! that names a file outside that filter (a `[[test]]` table, a build script, an
//! `include_str!` of the README) builds fine in a checkout and fails for every NixOS user. So
//! this test evaluates the package's `src` with the real nixpkgs `lib` (`cleanSourceWith`; see
//! tests/nixpkgs/mod.rs for where it comes from), copies the tree Nix puts into the store, and
//! builds it with cargo, offline against the local registry, as buildRustPackage would. Then it
//! runs the unit tests the package's check phase runs, with its `checkFlags`, the way the Nix
//! sandbox runs them: as an unprivileged user in a user namespace, without a network.
//!
//! The build links into its own target directory under `target/tmp`, never into the one
//! `cargo test` runs the tests from, and reuses the dependencies `cargo test` compiled (see
//! [`cargo`]): a few seconds beyond compiling the crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nixpkgs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-source")
}

/// Every file below `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).unwrap();
    }
    let status = Command::new("cp")
        .args(["-R", "--no-preserve=mode,ownership"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp -R {} failed", from.display());
}

/// cargo in the copied tree. Its final artifacts go to a target directory of its own; its
/// intermediate ones (cargo's build directory) are those of the `cargo test` running this test,
/// so the dependencies it compiled are reused and only the package's crate is compiled again,
/// under its own path. The running tests' binaries (target/debug/pullnix) are never touched:
/// cargo puts what it links into the target directory.
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let out = Command::new(cargo)
        .current_dir(dir)
        .args(args)
        .arg("--target-dir")
        .arg(work_dir().join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_BUILD_BUILD_DIR", build_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`cargo {}` in the package's source ({}) failed: the package does not build from what \
         nix/package.nix selects\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn package_builds_from_its_own_source_and_runs_its_unit_tests_unprivileged_offline() {
    let Some(nixpkgs) = nixpkgs::locate() else {
        return;
    };
    let expr = nixpkgs::manifest_dir().join("nix/tests/package-source.nix");
    let path = nixpkgs.path().display().to_string();
    let mut args = vec![
        "--eval",
        "--strict",
        "--json",
        "--read-write-mode",
        expr.to_str().unwrap(),
        "--argstr",
        "nixpkgs",
        &path,
    ];
    if nixpkgs.is_full() {
        args.extend(["--arg", "full", "true"]);
    }
    let package: Value = serde_json::from_slice(&nixpkgs::nix_instantiate(&args).stdout).unwrap();
    let src = Path::new(package["src"].as_str().unwrap());

    // The filter keeps what cargo reads and nothing else: a filter that let everything through
    // would make this test pass and rebuild the package on every README change.
    let selected = files(src);
    for wanted in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        assert!(
            selected.iter().any(|f| f == wanted),
            "{wanted} missing from {selected:?}"
        );
    }
    for f in &selected {
        assert!(
            f == "Cargo.toml" || f == "Cargo.lock" || f.starts_with("src/"),
            "nix/package.nix selects {f}, which cargo does not read"
        );
    }

    let tree = work_dir().join("tree");
    fs::create_dir_all(work_dir()).unwrap();
    copy_tree(src, &tree);
    cargo(&tree, &["build", "--offline", "--locked"]);
    let exe = work_dir().join("target/debug/pullnix");
    let version = Command::new(&exe).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(package["version"].as_str().unwrap()),
        "{} --version: {version:?}",
        exe.display()
    );

    // The check phase (buildRustPackage's cargoCheckHook runs `cargo test` with checkFlags).
    if package["doCheck"] != Value::Bool(false) {
        let check_flags: Vec<&str> = package["checkFlags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        unit_tests_pass_unprivileged_offline(&tree, &check_flags);
    }
}

/// Builds the unit tests of the copied tree and runs them like the build sandbox does: not
/// root (an unmapped user namespace makes us `nobody`), no network but loopback (a fresh
/// network namespace whose `lo` is brought up, as Nix's sandbox does before it starts the
/// builder), an empty environment and a temporary directory of its own.
fn unit_tests_pass_unprivileged_offline(tree: &Path, check_flags: &[&str]) {
    let built = cargo(
        tree,
        &[
            "test",
            "--offline",
            "--locked",
            "--no-run",
            "--message-format=json",
        ],
    );
    let unit_tests: Vec<String> = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| m["executable"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(unit_tests.len(), 1, "one unit test binary: {unit_tests:?}");

    let tmp = work_dir().join("check-tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).unwrap();
    }
    fs::create_dir_all(&tmp).unwrap();
    Command::new("chmod")
        .arg("1777")
        .arg(&tmp)
        .status()
        .unwrap();
    // Root in a first user namespace only to bring up the new network namespace's loopback;
    // the tests themselves run in a second, unmapped one, as `nobody`.
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--"])
        .args([
            "/bin/sh",
            "-c",
            "ip link set lo up && exec unshare --user -- \"$@\"",
            "sh",
        ])
        .arg(&unit_tests[0])
        .args(check_flags)
        .arg("--test-threads=2")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TMPDIR", &tmp)
        .output()
        .expect("cannot run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the package's unit tests fail without root and network; fix them or skip them in \
         nix/package.nix's checkFlags:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 0, "no unit test ran:\n{stdout}");
}

//! Signed commits: with `repo.allowed_signers`, pullnix deploys only commits that carry a valid
//! SSH signature (git's `gpg.format = ssh`) by an allowed signer. Real keys from `ssh-keygen`,
//! real signatures from `git commit -S`, real verification by `ssh-keygen -Y`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, git_in, run_ok, toml_string};
use harness::{Machine, assert_exit, assert_stderr_has, describe_run, json_str, nix_builds};

/// A fresh ed25519 key pair; returns the private key's path.
fn new_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    key
}

fn public(key: &Path) -> String {
    fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Commits `variant` and replaces the commit by the same one signed with `key` (git's SSH
/// signing), published with a force-push; returns the signed commit.
fn signed_commit(m: &Machine, variant: &str, key: &Path) -> String {
    m.repo.commit(variant);
    let work = m.repo.work_tree();
    run_ok(git_in(work).args([
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={}", key.display()),
        "commit",
        "-q",
        "--amend",
        "--no-edit",
        "-S",
    ]));
    run_ok(git_in(work).args(["push", "-q", "-f", "origin", "HEAD:refs/heads/main"]));
    let sha = run_ok(git_in(work).args(["rev-parse", "HEAD"]));
    sha.trim().to_owned()
}

struct Signers {
    _dir: TempDir,
    ci: PathBuf,
    stranger: PathBuf,
    file: PathBuf,
}

/// Keys for "ci" (allowed) and "stranger" (not), and an allowed signers file naming ci.
fn signers(extra_line: &str) -> Signers {
    let dir = TempDir::new("signers");
    let ci = new_key(dir.path(), "ci");
    let stranger = new_key(dir.path(), "stranger");
    let file = dir.join("allowed_signers");
    fs::write(
        &file,
        format!(
            "ci@example.org namespaces=\"git\" {}\n{extra_line}",
            public(&ci)
        ),
    )
    .unwrap();
    Signers {
        _dir: dir,
        ci,
        stranger,
        file,
    }
}

fn machine(s: &Signers) -> Machine {
    Machine::new(&format!(
        "[repo]\nallowed_signers = {}\n",
        toml_string(&s.file.to_string_lossy())
    ))
}

#[test]
fn commit_signed_by_an_allowed_signer_is_deployed() {
    let s = signers("");
    let m = machine(&s);
    let sha = signed_commit(&m, "good signed-1", &s.ci);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "signed commit");
    assert_stderr_has(&out, "signed by ci@example.org", "the signer is logged");
    assert_eq!(json_str(&m.state(), "/deployed/commit"), sha);
}

#[test]
fn unsigned_commit_is_refused_before_anything_is_built() {
    let s = signers("");
    let m = machine(&s);
    let sha = m.repo.commit("good unsigned-1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 5, "unsigned commit");
    assert_stderr_has(&out, "is not signed", "why");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert!(m.sys.switch_log().is_empty());
    let state = m.state();
    assert_eq!(json_str(&state, "/last/result"), "refused");
    assert_eq!(json_str(&state, "/last/commit"), sha);
    assert!(state["deployed"].is_null(), "{state:#}");
}

#[test]
fn commit_signed_by_another_key_is_refused() {
    let s = signers("");
    let m = machine(&s);
    signed_commit(&m, "good stranger-1", &s.stranger);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 5, "commit signed by a key that is not allowed");
    assert_stderr_has(&out, "does not allow", "why");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert!(m.sys.switch_log().is_empty());
}

#[test]
fn signer_outside_its_validity_window_is_refused() {
    let dir = TempDir::new("expired");
    let old = new_key(dir.path(), "old");
    // The "old" key was allowed only until 2020.
    let s = signers(&format!(
        "old@example.org namespaces=\"git\",valid-before=\"20200101\" {}\n",
        public(&old)
    ));
    let m = machine(&s);
    signed_commit(&m, "good expired-1", &old);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 5, "commit signed by an expired signer");
    assert_stderr_has(&out, "key has expired", "ssh-keygen's reason is quoted");
    assert!(m.sys.switch_log().is_empty(), "{}", describe_run(&out));

    // A commit by an allowed key on top of it deploys.
    let sha = signed_commit(&m, "good expired-2", &s.ci);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "signed by ci");
    assert_eq!(json_str(&m.state(), "/deployed/commit"), sha);
}

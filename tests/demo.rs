//! README's first Quick start command, `demo/run.sh`, run as a newcomer would run it (with the
//! binary under test instead of a fresh cargo build). The script checks every step it narrates
//! and fails when pullnix does something else; this test adds that the story is told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn demo_deploys_reverts_a_bad_commit_rolls_back_and_deploys_the_fix() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/run.sh"))
        .env("PULLNIX", env!("CARGO_BIN_EXE_pullnix"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "only records it",
        "health checks passed for",
        "web app crashed: missing setting 'listen_port'",
        "is recorded as bad and will not be retried until the branch moves",
        "web app: serving version 2",
        "rolled back by the admin",
        "web app: serving version 1",
        "web app: serving version 4",
        "Done: every step above ran real Nix builds",
    ] {
        assert!(
            stdout.contains(line),
            "the demo never said {line:?}:\n{stdout}"
        );
    }
}

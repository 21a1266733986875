//! `sd_notify(3)`: pullnix speaks the real protocol (datagrams on `$NOTIFY_SOCKET`). The test
//! plays systemd's side with a real Unix datagram socket and reads what arrives.

#![allow(clippy::unwrap_used)]

mod common;
mod harness;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{pullnix_command, run_with_timeout};
use harness::Machine;

/// Every datagram that has arrived on `socket`, as text.
fn drain(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
    }
    messages
}

#[test]
fn sync_reports_its_steps_and_confirm_is_ready_and_feeds_the_watchdog() {
    let m = Machine::new("[confirm]\ntimeout = 30\ninterval = 1\n");
    let socket_path = m.sys.root().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (sha, _) = m.commit_and_build("good notify");

    // A sync that stops right after activation (as one that hands over to the confirm unit).
    let mut sync = pullnix_command(&m.sys, &m.config, &["sync"]);
    sync.env("NOTIFY_SOCKET", &socket_path)
        .env("PULLNIX_CRASH_AT", "sync.activated");
    let out = run_with_timeout(&mut sync, Duration::from_secs(120));
    assert_eq!(out.status.signal(), Some(9));
    let messages = drain(&socket);
    for step in ["STATUS=fetching", "STATUS=building", "STATUS=activating"] {
        assert!(
            messages.iter().any(|m| m.starts_with(step)),
            "no {step} in {messages:?}"
        );
    }

    // The confirm unit: READY=1 once it holds the lock, WATCHDOG=1 from the check loop, and a
    // final status saying what was deployed.
    let mut confirm = pullnix_command(&m.sys, &m.config, &["confirm"]);
    confirm.env("NOTIFY_SOCKET", &socket_path);
    let out = run_with_timeout(&mut confirm, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr_text(&out));
    let messages = drain(&socket);
    let ready = messages.iter().position(|m| m == "READY=1");
    let watchdog = messages.iter().position(|m| m == "WATCHDOG=1");
    assert!(ready.is_some() && watchdog.is_some(), "{messages:?}");
    assert!(ready < watchdog, "READY=1 must come first: {messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("STATUS=confirming") && m.contains("health check round 1")),
        "{messages:?}"
    );
    assert!(
        messages
            .last()
            .is_some_and(|m| m.starts_with("STATUS=deployed") && m.contains(&sha)),
        "{messages:?}"
    );
}

#[test]
fn a_failure_is_the_last_status() {
    let m = Machine::new("");
    let socket_path = m.sys.root().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    m.repo.commit("build-fail notify");
    let mut sync = pullnix_command(&m.sys, &m.config, &["sync"]);
    sync.env("NOTIFY_SOCKET", &socket_path);
    let out = run_with_timeout(&mut sync, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(6));
    let messages = drain(&socket);
    let last = messages.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("STATUS=failed: ") && last.contains("build failed"),
        "{messages:?}"
    );
}

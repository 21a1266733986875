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

/// Runs `cmd` while a thread reads `socket` as systemd would (a datagram queue that nobody
/// reads fills up after a few messages, `net.unix.max_dgram_qlen`, and then blocks the sender);
/// returns the output and every message.
fn run_listening(
    cmd: &mut std::process::Command,
    socket: &UnixDatagram,
) -> (std::process::Output, Vec<String>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let socket = socket.try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        messages.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
                    }
                    Err(_) if done.load(Ordering::SeqCst) => return messages,
                    Err(_) => {}
                }
            }
        })
    };
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    done.store(true, Ordering::SeqCst);
    (out, reader.join().unwrap())
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

    // The confirm unit (a test-mode candidate): READY=1 first, before it even waits for the
    // lock (a switch may be waiting for its start job), WATCHDOG=1 from the check loop, and a
    // final status saying what was deployed.
    let mut confirm = pullnix_command(&m.sys, &m.config, &["confirm"]);
    confirm.env("NOTIFY_SOCKET", &socket_path);
    let (out, messages) = run_listening(&mut confirm, &socket);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr_text(&out));
    let ready = messages.iter().position(|m| m == "READY=1");
    let watchdog = messages.iter().position(|m| m == "WATCHDOG=1");
    assert!(ready.is_some() && watchdog.is_some(), "{messages:?}");
    assert_eq!(ready, Some(0), "READY=1 must come first: {messages:?}");
    assert_eq!(
        messages.iter().filter(|m| *m == "READY=1").count(),
        1,
        "{messages:?}"
    );
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

/// In the boot of an unconfirmed boot-mode candidate, boot-complete.target (boot counting)
/// waits for the confirm unit's start job: READY=1 comes only with a confirmation, and never
/// when the candidate is reverted.
#[test]
fn in_a_boot_mode_candidates_boot_confirm_is_ready_only_when_it_confirmed() {
    for (variant, confirmed) in [
        ("good notify-boot", true),
        ("health-fail notify-boot", false),
    ] {
        let m = Machine::new(
            "[switch]\nmode = \"boot\"\nreboot_command = [\"/bin/true\"]\n\
             [confirm]\ntimeout = 3\ninterval = 1\n",
        );
        let socket_path = m.sys.root().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let (sha, candidate) = m.commit_and_build(variant);
        let out = m.pullnix(&["sync"]);
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr_text(&out));
        assert_eq!(m.sys.reboot(), candidate);
        let out = m.pullnix(&["boot-check"]);
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr_text(&out));

        let mut confirm = pullnix_command(&m.sys, &m.config, &["confirm"]);
        confirm.env("NOTIFY_SOCKET", &socket_path);
        let (out, messages) = run_listening(&mut confirm, &socket);
        if confirmed {
            assert_eq!(out.status.code(), Some(0), "{}", common::stderr_text(&out));
            let deployed = messages
                .iter()
                .position(|m| m.starts_with("STATUS=deployed") && m.contains(&sha));
            let ready = messages.iter().position(|m| m == "READY=1");
            assert!(deployed.is_some(), "{messages:?}");
            assert_eq!(ready, Some(messages.len() - 1), "{messages:?}");
            assert!(
                messages[..messages.len() - 1]
                    .iter()
                    .any(|m| m == "WATCHDOG=1"),
                "{messages:?}"
            );
        } else {
            assert_eq!(out.status.code(), Some(9), "{}", common::stderr_text(&out));
            assert!(!messages.iter().any(|m| m == "READY=1"), "{messages:?}");
        }
    }
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

//! `sd_notify(3)` messages. All of them are no-ops when not started by systemd (no
//! `$NOTIFY_SOCKET`), and a failure to send is never fatal: the deployment matters more than the
//! status line.
//!
//! `STATUS=` shows the current step in `systemctl status`; `READY=1` ends the start job of
//! `pullnix-confirm.service` (`Type=notify`, see `confirm::command` for when it is sent);
//! `WATCHDOG=1` is sent by the confirm loop before each health check and while it waits between
//! rounds, so that a unit with `WatchdogSec=` kills a confirm that hangs (and the restarted
//! confirm then finds the deadline passed and reverts) and never one that merely waits longer
//! than `WatchdogSec` for its next round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The longest pause between two `WATCHDOG=1` while [`sleep`] waits; far below any sensible
/// `WatchdogSec` (the NixOS module asserts at least a health command's timeout).
const PING_EVERY: Duration = Duration::from_secs(1);

pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

/// `READY=1`, once per process: later calls are no-ops (confirm may reach several places that
/// each say it started).
pub fn ready() {
    static SENT: AtomicBool = AtomicBool::new(false);
    if !SENT.swap(true, Ordering::SeqCst) {
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }
}

pub fn ping() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// Sleeps for `d`, sending `WATCHDOG=1` at least every [`PING_EVERY`].
pub fn sleep(d: Duration) {
    let end = Instant::now() + d;
    loop {
        ping();
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(PING_EVERY));
    }
}

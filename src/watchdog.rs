//! `sd_notify(3)` messages. All of them are no-ops when not started by systemd (no
//! `$NOTIFY_SOCKET`), and a failure to send is never fatal: the deployment matters more than the
//! status line.
//!
//! `STATUS=` shows the current step in `systemctl status`; `WATCHDOG=1` is sent from the confirm
//! loop so that a unit with `WatchdogSec=` kills a confirm that hangs (and the restarted confirm
//! then finds the deadline passed and reverts).

use sd_notify::NotifyState;

pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

pub fn ping() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

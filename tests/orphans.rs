//! A sync leaves no process behind, on any transport.
//!
//! The test process makes itself a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`, see
//! prctl(2)): a process whose parent exits is then re-parented to the test instead of to PID 1,
//! so anything pullnix starts and does not wait for shows up as a child of the test once pullnix
//! has exited (running or as a zombie, until the test reaps it). That catches what a unit's
//! cgroup would only clean up at teardown, and what rusage-based measurements miss.
//!
//! Each scenario deploys a commit (fetch, build, activation, the `health.remote` probe over the
//! same transport) and then polls once more with nothing new (the no-op, which ends the remote
//! session right after the ref advertisement), and for ssh also fails a fetch (a key the server
//! refuses). The tests of this file run one at a time: the subreaper is per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::collections::BTreeSet;
use std::fs;
use std::process::Output;
use std::sync::{Mutex, MutexGuard, Once};

use common::{FlakeRepo, GitDaemon, HttpGit, Sshd, toml_string};
use harness::{Machine, assert_exit, describe_run};
use rustix::process::{Pid, Signal, WaitOptions, kill_process, set_child_subreaper, waitpid};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The turn of one of this file's tests: they run one at a time, because a subreaper is one per
/// process. The process is a subreaper from the first turn on.
struct Turn {
    _lock: MutexGuard<'static, ()>,
}

fn turn() -> Turn {
    static SET: Once = Once::new();
    let lock = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    SET.call_once(|| set_child_subreaper(Some(rustix::process::getpid())).unwrap());
    Turn { _lock: lock }
}

/// Runs `pullnix ARGS…` on `m` and returns its output and what it left behind: every child of
/// this process that is new since before the run. Those are killed and reaped here.
///
/// The servers the test started are children of this process too, and a server's own processes
/// come here when their parent exits first: sshd's per-connection processes do that after a
/// refused login. pullnix never starts an sshd, so those are not counted.
fn pullnix_reaped(_turn: &Turn, m: &Machine, args: &[&str]) -> (Output, Vec<String>) {
    let before = children();
    let out = m.pullnix(args);
    let new: Vec<i32> = children().difference(&before).copied().collect();
    let left: Vec<i32> = new.iter().copied().filter(|&p| name(p) != "sshd").collect();
    let described = left.iter().map(|&pid| describe(pid)).collect();
    for pid in new {
        let pid = Pid::from_raw(pid).unwrap();
        let _ = kill_process(pid, Signal::KILL);
        let _ = waitpid(Some(pid), WaitOptions::empty());
    }
    (out, described)
}

/// Like [`pullnix_reaped`], and asserts the exit code and that nothing was left behind.
#[track_caller]
fn run(turn: &Turn, m: &Machine, args: &[&str], code: i32, what: &str) -> Output {
    let (out, left) = pullnix_reaped(turn, m, args);
    assert_exit(&out, code, what);
    assert!(
        left.is_empty(),
        "{what}: pullnix left {} process(es) behind: {left:?}\n{}",
        left.len(),
        describe_run(&out)
    );
    out
}

/// This process's children (all threads': an orphan is handed to one of them).
fn children() -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for task in fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("children");
        if let Ok(text) = fs::read_to_string(path) {
            pids.extend(text.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
        }
    }
    pids
}

/// The process name (`comm`), which a zombie still has.
fn name(pid: i32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map_or("?", |(name, _)| name)
        .to_owned()
}

/// `PID (NAME) ARGV` for a failure message (a zombie has a name but no command line).
fn describe(pid: i32) -> String {
    let argv = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    format!("{pid} ({}) {}", name(pid), argv.trim_end())
}

/// A first sync that deploys, then a no-op poll; neither may leave anything behind.
fn deploy_then_poll(turn: &Turn, m: &Machine, transport: &str) {
    m.commit_and_build("good 1");
    let out = run(
        turn,
        m,
        &["sync"],
        0,
        &format!("first sync over {transport}"),
    );
    assert_eq!(harness::nix_builds(&out), 1, "{}", describe_run(&out));
    let out = run(
        turn,
        m,
        &["sync"],
        0,
        &format!("no-op poll over {transport}"),
    );
    assert_eq!(harness::nix_builds(&out), 0, "{}", describe_run(&out));
}

#[test]
fn the_subreaper_sees_what_a_process_leaves_behind() {
    // The check itself: a command that backgrounds a child and exits must be caught.
    let turn = turn();
    let before = children();
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 5 & exit 0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let left: Vec<i32> = children().difference(&before).copied().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(describe(left[0]).contains("sleep"), "{}", describe(left[0]));
    let pid = Pid::from_raw(left[0]).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    waitpid(Some(pid), WaitOptions::empty()).unwrap();
    drop(turn);
}

#[test]
fn nothing_is_left_behind_over_file() {
    let turn = turn();
    let m = Machine::new("");
    deploy_then_poll(&turn, &m, "file://");
}

#[test]
fn nothing_is_left_behind_over_git_daemon() {
    let turn = turn();
    let repo = FlakeRepo::new();
    let daemon = GitDaemon::start(&repo);
    let url = daemon.url().to_owned();
    // A loopback git daemon: the test is about processes, not about commit signatures.
    let m = Machine::with_repo(
        repo,
        |_| url,
        "[repo]\ninsecure_plaintext_without_signatures = true\n",
    );
    deploy_then_poll(&turn, &m, "git://");
}

#[test]
fn nothing_is_left_behind_over_https() {
    let turn = turn();
    let repo = FlakeRepo::new();
    let http = HttpGit::start_tls(&repo);
    let url = http.url().to_owned();
    let ca = http.ca_file().unwrap();
    let m = Machine::with_repo(
        repo,
        |_| url,
        &format!("[repo]\nca_file = {}\n", toml_string(&ca.to_string_lossy())),
    );
    deploy_then_poll(&turn, &m, "https");
}

#[test]
fn nothing_is_left_behind_over_ssh() {
    let turn = turn();
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let m = Machine::with_repo(
        repo,
        |_| url.clone(),
        &Sshd::repo_toml(&sshd.deploy_key(), &sshd.known_hosts()),
    );
    deploy_then_poll(&turn, &m, "ssh");
    // A fetch that fails: the server refuses the key, ssh exits on its own.
    m.reconfigure(
        &url,
        &Sshd::repo_toml(&sshd.stranger_key(), &sshd.known_hosts()),
    );
    m.commit_and_build("good 2");
    run(&turn, &m, &["sync"], 4, "ssh fetch with a refused key");
}

//! End-to-end deployments with the real pullnix binary: the happy path, no-op polls, failed
//! builds, unhealthy and unactivatable commits, force-pushes, the lock, rollback, boot-check and
//! status. Every test runs real Nix, real nix-env profiles and a real git remote (`file://`)
//! against a fake root (see `tests/common`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    BUILD_ERROR_MESSAGE, EVAL_ERROR_MESSAGE, SWITCH_ERROR_MESSAGE, pullnix_command, stderr_text,
    stdout_text,
};
use harness::{
    Machine, SHORT_CONFIRM, assert_exit, assert_stderr_has, bad_commits, describe_run, json_str,
    log_line, nix_builds, wait_until,
};

// --- the happy path ---------------------------------------------------------------------------

#[test]
fn good_commit_is_tested_confirmed_and_made_the_boot_default() {
    let m = Machine::new("");
    let (sha1, g2) = m.commit_and_build("good 1");
    assert_ne!(g2, m.g1);

    let out = m.sync_deploys(&sha1, &g2, 2);
    // `test` (activate without touching the boot loader) strictly before `boot`.
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &g2), log_line("boot", &g2)]
    );
    assert_eq!(m.sys.generations(), vec![1, 2]);
    assert_eq!(m.sys.generation_target(1).as_deref(), Some(m.g1.as_path()));
    // The machine has not rebooted: it still says it booted generation 1.
    assert_eq!(m.sys.booted_system().as_deref(), Some(m.g1.as_path()));
    assert_eq!(
        m.sys
            .boot_entry_target("nixos-generation-2.conf")
            .as_deref(),
        Some(g2.as_path())
    );
    assert_stderr_has(&out, &sha1, "the deployed commit is logged");
    // A deployment is logged at notice priority or more urgent, never as an error.
    assert!(
        !stderr_text(&out).lines().any(|l| l.starts_with("<3>")),
        "{}",
        describe_run(&out)
    );

    let state = m.state();
    assert!(state["bad"].as_array().unwrap().is_empty(), "{state:#}");
    assert!(m.status_json()["last_check"].as_u64().is_some());
    assert_eq!(json_str(&state, "/last/commit"), sha1);

    // status --json is valid JSON and says the same.
    let out = m.pullnix(&["status", "--json"]);
    assert_exit(&out, 0, "status --json");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", describe_run(&out)));
    assert_eq!(json_str(&status, "/deployed/commit"), sha1);
    assert_eq!(json_str(&status, "/deployed/system"), g2.to_str().unwrap());
    assert_eq!(json_str(&status, "/current_system"), g2.to_str().unwrap());
    assert_eq!(json_str(&status, "/booted_system"), m.g1.to_str().unwrap());
    assert_eq!(json_str(&status, "/profile_system"), g2.to_str().unwrap());
    assert_eq!(status["profile_generation"], 2);
    assert_eq!(json_str(&status, "/host"), common::DEFAULT_HOST);
    assert!(status["pending"].is_null(), "{status:#}");
    assert_eq!(json_str(&status, "/last/result"), "deployed");

    // The human form names the commit and the running system.
    let out = m.pullnix(&["status"]);
    assert_exit(&out, 0, "status");
    let text = stdout_text(&out);
    assert!(text.contains(&sha1), "{text}");
    assert!(text.contains(&g2.display().to_string()), "{text}");
    assert!(text.contains("generation 2"), "{text}");
    // status only reads: nothing was switched by it.
    assert_eq!(m.sys.switch_log().len(), 2);
}

#[test]
fn second_good_commit_becomes_generation_three() {
    let m = Machine::new("");
    let (sha1, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&sha1, &g2, 2);
    let (sha2, g3) = m.commit_and_build("good 2");
    m.sync_deploys(&sha2, &g3, 3);
    assert_eq!(m.sys.generations(), vec![1, 2, 3]);
    assert_eq!(
        m.sys.switch_log(),
        vec![
            log_line("test", &g2),
            log_line("boot", &g2),
            log_line("test", &g3),
            log_line("boot", &g3),
        ]
    );
}

#[test]
fn sync_without_a_new_commit_builds_and_switches_nothing() {
    let m = Machine::new("");
    let (sha1, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&sha1, &g2, 2);
    let before = m.state();
    let log_before = m.sys.switch_log();
    let check_before = m.status_json()["last_check"].as_u64().unwrap();

    // last_check has a resolution of one second.
    std::thread::sleep(Duration::from_millis(1100));
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "no-op sync");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert!(
        !stderr_text(&out).contains("switch-to-configuration"),
        "{}",
        describe_run(&out)
    );
    assert_eq!(m.sys.switch_log(), log_before);
    assert_eq!(m.sys.generations(), vec![1, 2]);
    m.assert_settled_on(&g2, 2);

    let after = m.state();
    assert_eq!(after["deployed"], before["deployed"]);
    let check_after = m.status_json()["last_check"].as_u64().unwrap();
    assert!(
        check_after > check_before,
        "last_check not updated: {check_before} -> {check_after}"
    );
}

#[test]
fn first_sync_of_the_running_commit_records_it_without_switching() {
    let m = Machine::new("");
    // The branch is at `good 0`, which built the running generation 1.
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "sync of the commit that built the running system");
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(m.sys.generations(), vec![1]);
    let state = m.state();
    assert_eq!(json_str(&state, "/deployed/commit"), m.sha0);
    assert_eq!(json_str(&state, "/deployed/system"), m.g1.to_str().unwrap());
}

// --- failed builds ------------------------------------------------------------------------------

/// A commit that does not build changes nothing, is recorded with nix's explanation, is not
/// rebuilt by the next poll, is rebuilt by `sync --retry`, and a later good commit deploys.
fn failed_build_is_recorded_and_not_retried(variant: &str, nix_says: &str) {
    let m = Machine::new("");
    let bad = m.repo.commit(variant);

    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, variant);
    assert_stderr_has(&out, nix_says, variant);
    assert_eq!(nix_builds(&out), 1, "{}", describe_run(&out));
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(m.sys.generations(), vec![1]);
    let state = m.state();
    assert_eq!(
        json_str(&state, "/last/result"),
        "build-failed",
        "{state:#}"
    );
    assert_eq!(json_str(&state, "/last/commit"), bad);
    assert!(
        json_str(&state, "/last/message").contains(nix_says),
        "{state:#}"
    );
    assert_eq!(json_str(&state, "/failed_build/commit"), bad);
    assert!(
        json_str(&state, "/failed_build/error").contains(nix_says),
        "{state:#}"
    );
    assert!(state["deployed"].is_null(), "{state:#}");
    // A build failure is not a verdict on the commit's health.
    assert!(bad_commits(&state).is_empty(), "{state:#}");
    // status shows why.
    let status = stdout_text(&m.pullnix(&["status"]));
    assert!(status.contains("build-failed"), "{status}");
    assert!(status.contains(nix_says), "{status}");

    // The next poll with the branch unchanged does not rebuild.
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "poll after a failed build");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(json_str(&m.state(), "/failed_build/commit"), bad);

    // --retry does.
    let out = m.pullnix(&["sync", "--retry"]);
    assert_exit(&out, 6, "sync --retry of a broken commit");
    assert_eq!(nix_builds(&out), 1, "{}", describe_run(&out));
    assert_stderr_has(&out, nix_says, "retry");
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);

    // A fix on top deploys.
    let (good, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&good, &g2, 2);
}

#[test]
fn build_failure_changes_nothing() {
    failed_build_is_recorded_and_not_retried("build-fail", BUILD_ERROR_MESSAGE);
}

#[test]
fn evaluation_error_changes_nothing() {
    failed_build_is_recorded_and_not_retried("eval-error", EVAL_ERROR_MESSAGE);
}

#[test]
fn missing_host_attribute_changes_nothing() {
    failed_build_is_recorded_and_not_retried("missing-attr", "does not provide attribute");
}

#[test]
fn failed_build_is_retried_after_retry_failed_after() {
    let m = Machine::new("[build]\nretry_failed_after = 1\n");
    m.repo.commit("build-fail");
    assert_exit(&m.pullnix(&["sync"]), 6, "first build");
    std::thread::sleep(Duration::from_millis(2100));
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "build retried after retry_failed_after");
    assert_eq!(nix_builds(&out), 1, "{}", describe_run(&out));
}

// --- failed health checks and activation ----------------------------------------------------

#[test]
fn unhealthy_commit_is_reverted_and_never_retried() {
    let m = Machine::new(SHORT_CONFIRM);
    let (good1, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&good1, &g2, 2);
    let (sick, unhealthy) = m.commit_and_build("health-fail");

    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 9, "sync of an unhealthy commit");
    assert_stderr_has(&out, "healthy-marker", "the failing check is named");
    // Activated for the test, then the previous generation re-activated; never made bootable.
    assert_eq!(
        m.sys.switch_log()[2..],
        [log_line("test", &unhealthy), log_line("test", &g2)]
    );
    m.assert_settled_on(&g2, 2);
    assert_eq!(m.sys.generations(), vec![1, 2]);
    let state = m.state();
    assert_eq!(bad_commits(&state), vec![sick.clone()], "{state:#}");
    assert_eq!(json_str(&state, "/deployed/commit"), good1, "{state:#}");
    assert_eq!(json_str(&state, "/last/result"), "reverted", "{state:#}");
    assert_eq!(json_str(&state, "/last/commit"), sick);
    assert_eq!(state["rollbacks"], 1, "{state:#}");

    // The branch still points at it: skipped, not rebuilt, not re-activated.
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "poll while the branch is at a bad commit");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(m.sys.switch_log().len(), 4);
    m.assert_settled_on(&g2, 2);
    // Even --retry never redeploys a bad commit.
    let out = m.pullnix(&["sync", "--retry"]);
    assert_exit(&out, 0, "sync --retry of a bad commit");
    assert_eq!(m.sys.switch_log().len(), 4);

    // A fix on top of the bad commit deploys.
    let (fix, g3) = m.commit_and_build("good 2");
    m.sync_deploys(&fix, &g3, 3);
    assert_eq!(bad_commits(&m.state()), vec![sick]);
}

#[test]
fn unhealthy_first_deployment_goes_back_to_the_installed_system() {
    let m = Machine::new(SHORT_CONFIRM);
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let started = Instant::now();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 9, "unhealthy first deployment");
    // The window is 3 s: the checks were retried until the deadline, not given up at once.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "reverted after {:?}",
        started.elapsed()
    );
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &unhealthy), log_line("test", &m.g1)]
    );
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(m.sys.generations(), vec![1]);
    let state = m.state();
    assert_eq!(bad_commits(&state), vec![sick]);
    assert!(state["deployed"].is_null(), "{state:#}");
}

#[test]
fn activation_failure_reactivates_the_previous_generation() {
    let m = Machine::new(SHORT_CONFIRM);
    let (good1, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&good1, &g2, 2);
    let (broken, unactivatable) = m.commit_and_build("switch-fail");

    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 8, "sync of a commit whose activation fails");
    assert_stderr_has(
        &out,
        SWITCH_ERROR_MESSAGE,
        "switch-to-configuration's stderr",
    );
    assert_eq!(
        m.sys.switch_log()[2..],
        [log_line("test", &unactivatable), log_line("test", &g2)]
    );
    m.assert_settled_on(&g2, 2);
    assert_eq!(m.sys.generations(), vec![1, 2]);
    let state = m.state();
    assert_eq!(bad_commits(&state), vec![broken.clone()], "{state:#}");
    assert_eq!(json_str(&state, "/deployed/commit"), good1);

    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "poll while the branch is at a bad commit");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(m.sys.switch_log().len(), 4);
}

// --- force-pushes -------------------------------------------------------------------------------

#[test]
fn force_push_is_refused_unless_allowed() {
    let m = Machine::new("");
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    let (b, gb) = m.commit_and_build("good 2");
    m.sync_deploys(&b, &gb, 3);
    let log_before = m.sys.switch_log();

    // Downgrade: the branch is rewound to A, an ancestor of the deployed B.
    m.repo.force_push_reset(&a);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 5, "rewind to an ancestor");
    assert_stderr_has(&out, &a, "the remote commit");
    assert_stderr_has(&out, &b, "the deployed commit");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));

    // History rewritten: C sits on A and does not contain B.
    let (c, gc) = m.commit_and_build("good 3");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 5, "force-push");
    assert_stderr_has(&out, &c, "the remote commit");
    assert_stderr_has(&out, &b, "the deployed commit");
    assert_stderr_has(&out, "allow_non_fast_forward", "how to accept it");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(m.sys.switch_log(), log_before);
    m.assert_settled_on(&gb, 3);
    let state = m.state();
    assert_eq!(json_str(&state, "/deployed/commit"), b);
    assert_eq!(json_str(&state, "/last/result"), "refused", "{state:#}");
    assert_eq!(json_str(&state, "/last/commit"), c);
    // Refusing is not a verdict on C: it is not recorded as bad.
    assert!(bad_commits(&state).is_empty(), "{state:#}");

    // Asking again still refuses (no state drift).
    assert_exit(&m.pullnix(&["sync"]), 5, "force-push, second poll");

    m.reconfigure(
        &m.repo.file_url(),
        "[repo]\nallow_non_fast_forward = true\n",
    );
    m.sync_deploys(&c, &gc, 4);
}

// --- the lock -----------------------------------------------------------------------------------

/// Spawns `pullnix sync` with its output captured.
fn spawn_sync(m: &Machine, args: &[&str]) -> Child {
    pullnix_command(&m.sys, &m.config, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start pullnix")
}

/// True once the state file shows a pending deployment in `phase`.
fn pending_phase_is(m: &Machine, phase: &str) -> bool {
    m.sys
        .state_json()
        .is_some_and(|s| s["pending"]["phase"].as_str() == Some(phase))
}

#[test]
fn second_sync_is_refused_while_one_runs_and_wait_queues_behind_it() {
    let m = Machine::new("[confirm]\ntimeout = 5\ninterval = 1\n");
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let first = spawn_sync(&m, &["sync"]);
    // The first sync sits in its confirmation window, holding the lock.
    wait_until(Duration::from_secs(60), "first sync activates", || {
        pending_phase_is(&m, "activated")
    });

    // status is lock-free and shows the deployment in flight.
    let out = m.pullnix(&["status", "--json"]);
    assert_exit(&out, 0, "status during a confirmation window");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json_str(&status, "/pending/commit"), sick);
    assert_eq!(json_str(&status, "/pending/phase"), "activated");
    assert_eq!(
        json_str(&status, "/pending/candidate"),
        unhealthy.to_str().unwrap()
    );
    assert_eq!(
        json_str(&status, "/current_system"),
        unhealthy.to_str().unwrap()
    );
    assert_eq!(status["profile_generation"], 1);
    let out = m.pullnix(&["status"]);
    assert_exit(&out, 0, "human status during a confirmation window");
    let text = stdout_text(&out);
    assert!(text.contains(&sick), "{text}");
    assert!(text.contains("boot tries left"), "{text}");

    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 3, "sync while another holds the lock");
    assert_stderr_has(&out, "already running", "busy message");
    assert_stderr_has(&out, "--wait", "the way to queue");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert!(
        pending_phase_is(&m, "activated"),
        "the busy run touched the state"
    );

    // Meanwhile a fix is pushed; `sync --wait` deploys it once the first run has reverted.
    let (fix, g2) = m.commit_and_build("good 1");
    let out = m.pullnix(&["sync", "--wait"]);
    let first = first.wait_with_output().unwrap();
    assert_exit(&first, 9, "the first, unhealthy sync");
    assert_exit(&out, 0, "sync --wait");
    assert_eq!(
        m.sys.switch_log(),
        vec![
            log_line("test", &unhealthy),
            log_line("test", &m.g1),
            log_line("test", &g2),
            log_line("boot", &g2),
        ]
    );
    m.assert_settled_on(&g2, 2);
    let state = m.state();
    assert_eq!(json_str(&state, "/deployed/commit"), fix);
    assert_eq!(bad_commits(&state), vec![sick]);
}

// --- rollback -----------------------------------------------------------------------------------

#[test]
fn rollback_goes_to_the_previous_generation_and_blocks_the_commit() {
    let m = Machine::new("");
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    let (b, gb) = m.commit_and_build("good 2");
    m.sync_deploys(&b, &gb, 3);

    let out = m.pullnix(&["rollback", "--to", "99"]);
    assert_exit(&out, 2, "rollback to a generation that does not exist");
    assert_stderr_has(&out, "99", "the generation asked for");
    assert_stderr_has(&out, "1, 2, 3", "the generations there are");
    assert_eq!(m.sys.switch_log().len(), 4);
    m.assert_settled_on(&gb, 3);

    let out = m.pullnix(&["rollback"]);
    assert_exit(&out, 0, "rollback");
    assert_eq!(m.sys.switch_log().last(), Some(&log_line("switch", &ga)));
    assert_eq!(m.sys.switch_log().len(), 5);
    m.assert_settled_on(&ga, 2);
    // Generations are kept: the admin can roll forward by hand.
    assert_eq!(m.sys.generations(), vec![1, 2, 3]);
    let state = m.state();
    assert_eq!(bad_commits(&state), vec![b.clone()], "{state:#}");
    assert_eq!(json_str(&state, "/last/result"), "rolled-back", "{state:#}");
    assert_eq!(json_str(&state, "/deployed/system"), ga.to_str().unwrap());
    assert_eq!(state["deployed"]["generation"], 2);
    assert_eq!(state["rollbacks"], 1);

    // The branch still points at B: the next poll must not roll forward again.
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "poll after a rollback");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(m.sys.switch_log().len(), 5);
    m.assert_settled_on(&ga, 2);

    // A new commit moves on (it descends from B, which is fine).
    let (c, gc) = m.commit_and_build("good 3");
    m.sync_deploys(&c, &gc, 4);
}

#[test]
fn rollback_to_a_given_generation() {
    let m = Machine::new("");
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    let (b, gb) = m.commit_and_build("good 2");
    m.sync_deploys(&b, &gb, 3);
    let out = m.pullnix(&["rollback", "--to", "1"]);
    assert_exit(&out, 0, "rollback --to 1");
    assert_eq!(m.sys.switch_log().last(), Some(&log_line("switch", &m.g1)));
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(bad_commits(&m.state()), vec![b]);
}

#[test]
fn rollback_on_a_single_generation_is_refused() {
    let m = Machine::new("");
    let out = m.pullnix(&["rollback"]);
    assert_exit(&out, 2, "rollback with nothing to roll back to");
    assert_stderr_has(&out, "nothing to roll back to", "why");
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);
}

// --- boot-check -------------------------------------------------------------------------------

/// Starts a sync of a health-fail commit with a long window, SIGKILLs it during the window and
/// reboots the machine (which boots the previous default, as the candidate never became it).
/// Returns the commit and the unhealthy candidate.
fn killed_during_the_window_then_rebooted(m: &Machine) -> (String, std::path::PathBuf) {
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let mut child = spawn_sync(m, &["sync"]);
    wait_until(
        Duration::from_secs(60),
        "sync activates the candidate",
        || pending_phase_is(m, "activated"),
    );
    assert_eq!(m.sys.current_system().as_deref(), Some(unhealthy.as_path()));
    child.kill().unwrap(); // SIGKILL: a power cut for pullnix
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(
        m.sys.reboot(),
        m.g1,
        "the reboot must come back on generation 1"
    );
    (sick, unhealthy)
}

/// Holds `STATE/lock` as another pullnix would (one running a switch), once it is free: a
/// killed sync's health check may hold it a moment longer.
fn hold_lock(m: &Machine) -> std::fs::File {
    use rustix::fs::{FlockOperation, flock};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.sys.state_dir().join("lock"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(Instant::now() < deadline, "STATE/lock stays taken");
        std::thread::sleep(Duration::from_millis(10));
    }
    f
}

/// Runs pullnix, which must end within a few seconds (not wait for the lock).
fn pullnix_promptly(m: &Machine, args: &[&str]) -> std::process::Output {
    let started = Instant::now();
    let out = m.pullnix(args);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "pullnix {} took {:?}: it waited for the lock\n{}",
        args.join(" "),
        started.elapsed(),
        describe_run(&out)
    );
    out
}

/// Every switch-to-configuration starts pullnix-confirm.service and (when it is not active)
/// pullnix-boot-check.service again, often while the pullnix that runs that switch holds the
/// lock (README "Units"). Neither may wait for it when there is nothing for it to do; and a
/// boot that boot-check could not account for is accounted for by the next pullnix that gets
/// the lock, never mistaken for the confirmation window it interrupted.
#[test]
fn confirm_and_boot_check_started_by_a_switch_never_wait_for_the_lock_without_cause() {
    let m = Machine::new("[confirm]\ntimeout = 120\ninterval = 1\n");
    let lock = hold_lock(&m);
    let out = pullnix_promptly(&m, &["confirm"]);
    assert_exit(&out, 0, "confirm with nothing in flight");
    assert_stderr_has(&out, "nothing to confirm", "why");
    let out = pullnix_promptly(&m, &["boot-check"]);
    assert_exit(&out, 0, "boot-check with nothing in flight");
    drop(lock);

    // A candidate in its window, recorded in this boot (the sync was killed there).
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let mut child = spawn_sync(&m, &["sync"]);
    wait_until(
        Duration::from_secs(60),
        "sync activates the candidate",
        || pending_phase_is(&m, "activated"),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let before = m.state();
    assert_eq!(json_str(&before, "/pending/boot_id"), m.sys.boot_id());
    let lock = hold_lock(&m);
    let out = pullnix_promptly(&m, &["boot-check"]);
    assert_exit(&out, 0, "boot-check in the boot that wrote the record");
    assert_stderr_has(&out, "recorded in this boot", "why");
    assert_eq!(m.state()["pending"], before["pending"]);
    drop(lock);

    // After a reboot the boot is boot-check's to account for; while another pullnix holds the
    // lock, it leaves it to that one.
    assert_eq!(m.sys.reboot(), m.g1);
    let lock = hold_lock(&m);
    let out = pullnix_promptly(&m, &["boot-check"]);
    assert_exit(&out, 0, "boot-check while another pullnix holds the lock");
    assert_stderr_has(&out, "another pullnix holds", "why");
    assert_eq!(m.state()["pending"], before["pending"]);
    drop(lock);

    // The next pullnix to get the lock (here the confirm unit) accounts for the boot first: an
    // interrupted attempt, the previous generation left running. Resumed as a window instead,
    // its health checks would pass on generation 1 and make the candidate the boot default.
    let out = m.pullnix(&["confirm"]);
    assert!(
        matches!(common::exit_code(&out), 0 | 9),
        "{}",
        describe_run(&out)
    );
    assert_stderr_has(&out, "boot-check has not accounted for this boot", "why");
    assert_eq!(m.sys.switch_log(), vec![log_line("test", &unhealthy)]);
    m.assert_settled_on(&m.g1, 1);
    let state = m.state();
    assert!(state["pending"].is_null(), "{state:#}");
    assert_eq!(json_str(&state, "/attempts/commit"), sick, "{state:#}");
    assert!(bad_commits(&state).is_empty(), "{state:#}");
}

#[test]
fn boot_check_after_a_reboot_in_the_window_disarms_and_counts_an_attempt() {
    let m = Machine::new("[confirm]\ntimeout = 120\ninterval = 1\n");
    let (sick, unhealthy) = killed_during_the_window_then_rebooted(&m);

    let out = m.pullnix(&["boot-check"]);
    // README leaves boot-check's exit code for a disarmed candidate open: 0 or "reverted" (9).
    assert!(
        matches!(common::exit_code(&out), 0 | 9),
        "{}",
        describe_run(&out)
    );
    // The reboot already brought the previous generation back: nothing is re-activated.
    assert_eq!(m.sys.switch_log(), vec![log_line("test", &unhealthy)]);
    m.assert_settled_on(&m.g1, 1);
    let state = m.state();
    assert!(state["pending"].is_null(), "{state:#}");
    assert_eq!(json_str(&state, "/attempts/commit"), sick, "{state:#}");
    assert_eq!(state["attempts"]["count"], 1, "{state:#}");
    // One interrupted attempt of three: not yet recorded as bad.
    assert!(bad_commits(&state).is_empty(), "{state:#}");

    // A second boot-check has nothing to do.
    let out = m.pullnix(&["boot-check"]);
    assert_exit(&out, 0, "boot-check with nothing in flight");
    assert_eq!(m.sys.switch_log().len(), 1);
}

#[test]
fn boot_check_records_the_commit_bad_after_max_attempts() {
    let m = Machine::new("[confirm]\ntimeout = 120\ninterval = 1\nmax_attempts = 1\n");
    let (sick, unhealthy) = killed_during_the_window_then_rebooted(&m);
    let out = m.pullnix(&["boot-check"]);
    assert!(
        matches!(common::exit_code(&out), 0 | 9),
        "{}",
        describe_run(&out)
    );
    assert_eq!(m.sys.switch_log(), vec![log_line("test", &unhealthy)]);
    m.assert_settled_on(&m.g1, 1);
    let state = m.state();
    assert_eq!(bad_commits(&state), vec![sick], "{state:#}");

    // The next poll skips it.
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "poll after the attempts ran out");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(m.sys.switch_log().len(), 1);
}

#[test]
fn sync_after_a_kill_in_the_window_without_reboot_finishes_the_confirmation() {
    let m = Machine::new("[confirm]\ntimeout = 4\ninterval = 1\n");
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let mut child = spawn_sync(&m, &["sync"]);
    wait_until(
        Duration::from_secs(60),
        "sync activates the candidate",
        || pending_phase_is(&m, "activated"),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // No reboot: the unhealthy candidate still runs; `confirm` resumes the window and reverts.
    let out = m.pullnix(&["confirm"]);
    assert_exit(&out, 9, "confirm of an unhealthy candidate");
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &unhealthy), log_line("test", &m.g1)]
    );
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(bad_commits(&m.state()), vec![sick]);
    let out = m.pullnix(&["confirm"]);
    assert_exit(&out, 0, "confirm with nothing in flight");
}

#[test]
fn boot_counted_entry_is_blessed_on_confirmation() {
    let m = Machine::new("[boot]\ncounting = true\n");
    m.sys.enable_boot_counting(3);
    let (sha, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&sha, &g2, 2);
    let entries = m.sys.boot_entries();
    assert_eq!(
        entries,
        vec!["nixos-generation-1.conf", "nixos-generation-2.conf"],
        "the new entry must be blessed (no +N counter)"
    );
    assert!(entries.iter().all(|e| !e.contains('+')));
    assert_eq!(
        m.sys
            .boot_entry_target("nixos-generation-2.conf")
            .as_deref(),
        Some(g2.as_path())
    );
}

#[test]
fn boot_counted_entry_stays_counted_without_boot_counting() {
    // Control for the test above: without `boot.counting`, pullnix leaves the entry alone.
    let m = Machine::new("");
    m.sys.enable_boot_counting(3);
    let (sha, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&sha, &g2, 2);
    assert_eq!(
        m.sys.boot_entries(),
        vec!["nixos-generation-1.conf", "nixos-generation-2+3.conf"]
    );
}

#[test]
fn expired_window_after_a_kill_is_reverted_by_the_next_sync() {
    let m = Machine::new("[confirm]\ntimeout = 2\ninterval = 1\n");
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let mut child = spawn_sync(&m, &["sync"]);
    wait_until(
        Duration::from_secs(60),
        "sync activates the candidate",
        || pending_phase_is(&m, "activated"),
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // The admin cannot roll back over a deployment in flight.
    let out = m.pullnix(&["rollback"]);
    assert_eq!(common::exit_code(&out), 3, "{}", describe_run(&out));
    assert_stderr_has(&out, &sick, "the commit in flight");
    assert_stderr_has(&out, "in flight", "why");
    assert_eq!(m.sys.switch_log(), vec![log_line("test", &unhealthy)]);

    let deadline = m.state()["pending"]["deadline"].as_u64().unwrap();
    wait_until(Duration::from_secs(10), "the deadline passes", || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > deadline
    });
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 9, "sync finding an expired confirmation window");
    assert_stderr_has(&out, "deadline", "why");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &unhealthy), log_line("test", &m.g1)]
    );
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(bad_commits(&m.state()), vec![sick]);
}

#[test]
fn hung_health_check_is_killed_and_the_candidate_reverted() {
    let m = Machine::new(
        "[confirm]\ntimeout = 3\ninterval = 1\n\
         [[health.command]]\nname = \"hangs\"\nargv = [\"/bin/sh\", \"-c\", \"sleep 300\"]\ntimeout = 1\n",
    );
    let (sha, candidate) = m.commit_and_build("good 1");
    let started = Instant::now();
    let out = m.pullnix(&["sync"]);
    let took = started.elapsed();
    assert_exit(&out, 9, "a health check that never finishes");
    assert_stderr_has(&out, "hangs", "the check");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &candidate), log_line("test", &m.g1)]
    );
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(bad_commits(&m.state()), vec![sha]);
}

#[test]
fn health_checks_are_retried_until_they_pass() {
    let m = Machine::new("");
    let counter = m.sys.scratch("health").join("rounds");
    // Fails in the first two rounds, passes in the third.
    let script = format!(
        "n=$(cat '{c}' 2>/dev/null || echo 0); echo $((n+1)) > '{c}'; [ \"$n\" -ge 2 ]",
        c = counter.display()
    );
    m.reconfigure(
        &m.repo.file_url(),
        &format!(
            "[confirm]\ntimeout = 20\ninterval = 1\n\
             [[health.command]]\nname = \"third-time-lucky\"\nargv = [\"/bin/sh\", \"-c\", {}]\ntimeout = 5\n",
            common::toml_string(&script)
        ),
    );
    let (sha, g2) = m.commit_and_build("good 1");
    let out = m.sync_deploys(&sha, &g2, 2);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    assert_stderr_has(&out, "third-time-lucky", "the failing rounds are logged");
}

#[test]
fn confirmation_falls_back_to_inline_when_the_unit_cannot_be_started() {
    let m = Machine::new(
        "[confirm]\nunit = \"pullnix-confirm.service\"\n\
         [health]\nsystemctl = \"/nonexistent/pullnix-test/systemctl\"\n",
    );
    let (sha, g2) = m.commit_and_build("good 1");
    let out = m.sync_deploys(&sha, &g2, 2);
    assert_stderr_has(&out, "pullnix-confirm.service", "the unit");
    assert!(
        stderr_text(&out)
            .lines()
            .any(|l| l.starts_with("<4>") && l.contains("pullnix-confirm.service")),
        "a warning about the unit\n{}",
        describe_run(&out)
    );
}

#[test]
fn build_extra_args_reach_nix() {
    let m = Machine::new("[build]\nextra_args = [\"--pullnix-test-no-such-flag\"]\n");
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "nix build with an unknown flag");
    assert_stderr_has(&out, "--pullnix-test-no-such-flag", "the flag");
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);
}

#[test]
fn missing_nix_binary_is_a_build_failure() {
    let m = Machine::new("[build]\nnix = \"/nonexistent/pullnix-test/nix\"\n");
    let sha = m.repo.commit("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "nix that does not exist");
    assert_stderr_has(&out, "/nonexistent/pullnix-test/nix", "the program");
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(json_str(&m.state(), "/failed_build/commit"), sha);
}

#[test]
fn state_dir_is_configurable() {
    let m = Machine::new("state_dir = \"/srv/pullnix-state\"\n");
    let (sha, g2) = m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "sync with another state_dir");
    m.assert_settled_on(&g2, 2);
    let dir = m.sys.root().join("srv/pullnix-state");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(json_str(&state, "/deployed/commit"), sha);
    assert!(dir.join("repo.git").is_dir());
    assert!(dir.join("lock").exists());
    assert!(
        m.sys.state_json().is_none(),
        "the default state dir was used"
    );
}

#[test]
fn root_and_config_from_the_config_file_and_the_environment() {
    let m = Machine::new("");
    let text = std::fs::read_to_string(&m.config).unwrap();
    std::fs::write(
        &m.config,
        format!(
            "root = {}\n{text}",
            common::toml_string(&m.sys.root().display().to_string())
        ),
    )
    .unwrap();
    let (sha, g2) = m.commit_and_build("good 1");
    // No --root and no --config: the config comes from $PULLNIX_CONFIG, the root from it.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pullnix"));
    cmd.arg("sync")
        .env("PULLNIX_CONFIG", &m.config)
        .env("TEST_ROOT", m.sys.root())
        .env("HOME", m.sys.home());
    let out = common::run_with_timeout(&mut cmd, common::PULLNIX_TIMEOUT);
    assert_exit(
        &out,
        0,
        "sync configured through $PULLNIX_CONFIG and `root`",
    );
    m.assert_settled_on(&g2, 2);
    assert_eq!(json_str(&m.state(), "/deployed/commit"), sha);

    // --root overrides `root`: pointed at an empty directory, there is no state to show.
    let other = m.sys.scratch("other-root");
    let out = common::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .arg("--config")
            .arg(&m.config)
            .arg("--root")
            .arg(&other)
            .args(["status", "--json"]),
    );
    assert_exit(&out, 0, "status with --root elsewhere");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["deployed"].is_null(), "{status:#}");
    assert!(status["current_system"].is_null(), "{status:#}");
}

#[test]
fn boot_check_counts_boots_of_the_unconfirmed_candidate() {
    let m = Machine::new("[confirm]\ntimeout = 120\ninterval = 1\nboot_tries = 2\n");
    let (sick, unhealthy) = m.commit_and_build("health-fail");
    let mut child = spawn_sync(&m, &["sync"]);
    wait_until(
        Duration::from_secs(60),
        "sync activates the candidate",
        || pending_phase_is(&m, "activated"),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(m.state()["pending"]["boot_tries_left"], 2);

    // Booted into the candidate (picked in the boot menu): one try used, still armed.
    m.sys.reboot_into(&unhealthy);
    let out = m.pullnix(&["boot-check"]);
    assert_exit(&out, 0, "boot-check with tries left");
    let state = m.state();
    assert_eq!(json_str(&state, "/pending/commit"), sick, "{state:#}");
    assert_eq!(state["pending"]["boot_tries_left"], 1, "{state:#}");
    assert_eq!(m.sys.switch_log(), vec![log_line("test", &unhealthy)]);

    // The last try: boot-check gives up and activates the previous generation.
    m.sys.reboot_into(&unhealthy);
    let out = m.pullnix(&["boot-check"]);
    assert_exit(&out, 9, "boot-check out of tries");
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &unhealthy), log_line("test", &m.g1)]
    );
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(bad_commits(&m.state()), vec![sick]);
}

#[test]
fn failure_to_set_the_profile_does_not_leave_the_candidate_running() {
    let m = Machine::new("[switch]\nnix_env = \"/nonexistent/pullnix-test/nix-env\"\n");
    let (_, candidate) = m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    // README: exit 8 is "activation failed; the previous generation was re-activated".
    assert_exit(&out, 8, "confirmation that cannot set the profile");
    assert_eq!(
        m.sys.current_system().as_deref(),
        Some(m.g1.as_path()),
        "exit 8 promises the previous generation runs; candidate {}\n{}",
        candidate.display(),
        describe_run(&out)
    );
    m.assert_settled_on(&m.g1, 1);
}

#[test]
fn human_status_shows_times_in_rfc3339() {
    let m = Machine::new("");
    let (sha, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&sha, &g2, 2);
    let state = m.status_json();
    let text = stdout_text(&m.pullnix(&["status"]));
    for pointer in ["/deployed/at", "/last/at", "/last_check"] {
        let secs = state
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap();
        let rfc3339 = common::run_ok(
            std::process::Command::new("date")
                .arg("-u")
                .arg(format!("--date=@{secs}"))
                .arg("+%Y-%m-%dT%H:%M:%SZ"),
        );
        assert!(
            text.contains(rfc3339.trim()),
            "{pointer} = {secs} is not shown as {}:\n{text}",
            rfc3339.trim()
        );
        assert!(
            !text.contains(&secs.to_string()),
            "{pointer} shown as raw Unix seconds:\n{text}"
        );
    }
}

#[test]
fn status_on_a_fresh_machine_reads_only() {
    let m = Machine::new("");
    let out = m.pullnix(&["status", "--json"]);
    assert_exit(&out, 0, "status before any sync");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "host",
        "current_system",
        "booted_system",
        "profile_generation",
        "profile_system",
        "deployed",
        "pending",
        "last",
        "last_check",
        "failed_build",
        "bad_commits",
        "rollbacks",
    ] {
        assert!(
            status.get(key).is_some(),
            "status --json lacks {key}: {status:#}"
        );
    }
    assert!(status["deployed"].is_null(), "{status:#}");
    assert!(status["last"].is_null(), "{status:#}");
    assert_eq!(json_str(&status, "/current_system"), m.g1.to_str().unwrap());
    assert_eq!(status["profile_generation"], 1);
    let out = m.pullnix(&["status"]);
    assert_exit(&out, 0, "human status before any sync");
    assert!(
        stdout_text(&out).contains("nothing yet"),
        "{}",
        describe_run(&out)
    );
    assert!(m.sys.state_json().is_none(), "status wrote a state file");
    assert!(m.sys.switch_log().is_empty());
}

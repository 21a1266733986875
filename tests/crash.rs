//! Crash safety: pullnix is killed (SIGKILL) at every named step of `sync` and `confirm` (and of the
//! revert path and of every state-file replacement), then the machine is recovered by the next
//! `sync`, the next `confirm`, or a reboot followed by `boot-check`. Whatever happened, the
//! machine must end on the confirmed candidate or on the previous generation, with a state
//! record that says so: never a half state, never a lost record.
//!
//! The crash points are compiled in by the `fault-injection` feature (`src/failpoint.rs`);
//! `PULLNIX_CRASH_AT=NAME[#K]` makes the binary kill itself with SIGKILL when it gets there.
//!
//! Two kinds of tests:
//! * one test per (crash point, recovery) pair, with a commit that must end confirmed or reverted;
//! * randomized episodes (commit of a random kind, kill at a random point, random recovery)
//!   replayed against an invariant checker. `PULLNIX_CRASH_EPISODES` (default 300, spread over
//!   several worlds) and `PULLNIX_CRASH_SEED` change the amount and the sequence; a failure
//!   prints the seed and the episode log needed to replay it.
//!
//! Without the feature this file compiles to nothing (the binary would have no crash points to
//! kill at). A crate-level `cfg` rather than a `[[test]]` table with `required-features`:
//! such a table names tests/crash.rs in Cargo.toml, and the Nix package, whose source is only
//! Cargo.toml, Cargo.lock and src/, then has a manifest cargo refuses to read.

#![cfg(feature = "fault-injection")]

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Output;

use common::{FlakeRepo, TestSystem, pullnix_command, run_with_timeout, write_config};

/// The configuration under test: a short confirmation window so unhealthy candidates revert
/// in about two seconds.
const CONFIG: &str = "[confirm]\ntimeout = 2\ninterval = 1\nmax_attempts = 3\n";

/// Boot mode: the candidate is made the (boot-counted) boot default and the machine reboots
/// into it. The reboot itself is the harness's job (`TestSystem::reboot`), so the reboot
/// command only has to succeed.
const BOOT_MODE: &str =
    "[switch]\nmode = \"boot\"\nreboot_command = [\"/bin/true\"]\n[boot]\ncounting = true\n";

/// Auto mode: a reboot only when the kernel changes (variant texts with a `kernel-TAG` word).
const AUTO_MODE: &str =
    "[switch]\nmode = \"auto\"\nreboot_command = [\"/bin/true\"]\n[boot]\ncounting = true\n";

/// Exit codes a recovery or convergence run may end with (README "Exit codes"): success, a
/// failed build, a failed activation or a failed health check. 1 (internal error), 3 (busy),
/// 10 (corrupt state) and death by signal are never acceptable.
const ACCEPTABLE_EXITS: [i32; 4] = [0, 6, 8, 9];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    /// The next timer run.
    Sync,
    /// The confirm unit restarting.
    Confirm,
    /// A reboot (boots the boot loader's default) and the early-boot unit.
    RebootBootCheck,
}

/// A fake machine, the repository it follows, and what every commit is.
struct World {
    repo: FlakeRepo,
    sys: TestSystem,
    config: PathBuf,
    /// commit -> fixture variant (its first word says whether it is deployable).
    variants: HashMap<String, String>,
    log: Vec<String>,
}

impl World {
    /// Generation 1 runs `good base`; a first commit is deployed so that later commits have a
    /// confirmed predecessor.
    fn new(label: &str) -> World {
        World::with_mode(label, "")
    }

    /// A world whose config adds `mode` (one of the mode snippets above, or nothing).
    fn with_mode(label: &str, mode: &str) -> World {
        let repo = FlakeRepo::new();
        let (_, initial) = repo.commit_and_build(&format!("good base-{label}"));
        let sys = TestSystem::new(&initial);
        if !mode.is_empty() {
            sys.enable_boot_counting(3);
        }
        let config = write_config(&sys, &repo.file_url(), &format!("{CONFIG}{mode}"));
        let mut w = World {
            repo,
            sys,
            config,
            variants: HashMap::new(),
            log: Vec::new(),
        };
        let first = w.commit(&format!("good first-{label} kernel-first"));
        w.drive(&first, None, Recovery::Sync);
        assert_eq!(w.deployed_commit().as_deref(), Some(first.as_str()));
        w.check_settled();
        w
    }

    fn commit(&mut self, variant: &str) -> String {
        let sha = self.repo.commit(variant);
        self.variants.insert(sha.clone(), variant.to_owned());
        self.log.push(format!("commit {} = {variant:?}", &sha[..8]));
        sha
    }

    fn run(&mut self, args: &[&str], crash_at: Option<&str>) -> Output {
        let mut cmd = pullnix_command(&self.sys, &self.config, args);
        if let Some(point) = crash_at {
            cmd.env("PULLNIX_CRASH_AT", point);
        }
        let out = run_with_timeout(&mut cmd, common::PULLNIX_TIMEOUT);
        self.log.push(format!(
            "pullnix {}{} -> {}",
            args.join(" "),
            crash_at
                .map(|p| format!(" (crash at {p})"))
                .unwrap_or_default(),
            describe_status(&out)
        ));
        out
    }

    fn state(&self) -> serde_json::Value {
        self.sys.state_json().unwrap_or(serde_json::Value::Null)
    }

    fn deployed_commit(&self) -> Option<String> {
        self.state()["deployed"]["commit"]
            .as_str()
            .map(str::to_owned)
    }

    fn deployed_system(&self) -> Option<PathBuf> {
        self.state()["deployed"]["system"]
            .as_str()
            .map(PathBuf::from)
    }

    fn is_bad(&self, commit: &str) -> bool {
        self.state()["bad"]
            .as_array()
            .is_some_and(|b| b.iter().any(|e| e["commit"] == commit))
    }

    fn is_good(&self, commit: &str) -> bool {
        self.variants
            .get(commit)
            .is_some_and(|v| v.starts_with("good"))
    }

    fn explain(&self, out: &Output) -> String {
        format!(
            "episode log:\n  {}\nstderr of the last run:\n{}\nstate: {:#}",
            self.log.join("\n  "),
            common::stderr_text(out),
            self.state()
        )
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\nepisode log:\n  {}\nstate: {:#}\ncurrent: {:?}\nprofile: {:?} -> {:?}\nboot default: {:?}\nswitch.log: {:#?}",
            self.log.join("\n  "),
            self.state(),
            self.sys.current_system(),
            self.sys.profile_generation(),
            self.sys.profile_target(),
            self.sys.boot_default(),
            self.sys.switch_log()
        );
    }

    /// After a kill: the record on disk is a whole record (the old one or the new one).
    fn check_record_intact(&self) {
        if let Ok(bytes) = std::fs::read(self.sys.state_file())
            && serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
        {
            self.fail("state.json is torn after a kill");
        }
    }

    /// The machine is at rest: nothing in flight, and the running system, the profile and the
    /// boot default all agree with the record, which names a healthy, deployable commit.
    fn check_settled(&self) {
        let state = self.state();
        if !state["pending"].is_null() {
            self.fail("a deployment is still in flight");
        }
        let Some(deployed) = self.deployed_system() else {
            self.fail("nothing is recorded as deployed");
        };
        let commit = self.deployed_commit().unwrap_or_default();
        if !self.is_good(&commit) {
            self.fail(&format!("deployed commit {commit} is not a good one"));
        }
        if self.sys.current_system().as_deref() != Some(deployed.as_path()) {
            self.fail("the running system is not the deployed one");
        }
        if self.sys.profile_target().as_deref() != Some(deployed.as_path()) {
            self.fail("the system profile does not point at the deployed system");
        }
        if self.sys.boot_default().as_deref() != Some(deployed.as_path()) {
            self.fail("the boot loader default is not the deployed system");
        }
        if !deployed.join("healthy").exists() {
            self.fail("the running system is not a healthy one");
        }
        // With boot counting, the confirmed generation's entry carries no counter any more.
        if let Some(generation) = state["deployed"]["generation"].as_u64() {
            let prefix = format!("nixos-generation-{generation}+");
            if let Some(e) = self
                .sys
                .boot_entries()
                .iter()
                .find(|e| e.starts_with(&prefix))
            {
                self.fail(&format!(
                    "the deployed generation's boot entry {e} is not blessed"
                ));
            }
        }
    }

    /// Whether the branch head is settled: nothing in flight, and the head deployed, recorded
    /// bad, or recorded as a failed build.
    fn settled(&self, head: &str) -> bool {
        let state = self.state();
        state["pending"].is_null()
            && (self.deployed_commit().as_deref() == Some(head)
                || self.is_bad(head)
                || state["failed_build"]["commit"] == head)
    }

    /// One step of what the machine does next: a sync first; then, for a boot-mode deployment,
    /// the reboot it waits for (followed by boot-check) or the confirm that runs after the
    /// boot; otherwise the next sync.
    fn step(&mut self, first: bool, crash: Option<&str>) -> Output {
        let state = self.state();
        let p = &state["pending"];
        if !first && p["boot"] == true && (p["phase"] == "rebooting" || p["phase"] == "reverting") {
            let booted = self.sys.reboot();
            self.log.push(format!("reboot into {}", booted.display()));
            self.run(&["boot-check"], crash)
        } else if !first && p["boot"] == true && p["phase"] == "activated" {
            self.run(&["confirm"], crash)
        } else {
            self.run(&["sync"], crash)
        }
    }

    /// Drives the machine until `head` is settled. `crash` is armed for every command until one
    /// is killed by it; the kill is followed by the recovery `how`. Every run that is not killed
    /// must end with an acceptable exit code. Returns whether a kill happened.
    fn drive(&mut self, head: &str, mut crash: Option<&str>, how: Recovery) -> bool {
        let mut killed = false;
        for n in 0..10 {
            let out = self.step(n == 0, crash);
            if out.status.signal() == Some(9) && crash.is_some() {
                killed = true;
                crash = None;
                self.check_record_intact();
                self.recover(how);
            } else if !ACCEPTABLE_EXITS.contains(&code(&out)) {
                self.fail(&format!(
                    "run ended with {}:\n{}",
                    describe_status(&out),
                    common::stderr_text(&out)
                ));
            }
            if self.settled(head) {
                return killed;
            }
        }
        self.fail("did not settle within ten steps");
    }

    /// The outcome every commit kind must have once settled.
    fn check_head_outcome(&self, head: &str, previous: &str) {
        let variant = self.variants[head].clone();
        let kind = variant.split_whitespace().next().unwrap_or_default();
        let deployed = self.deployed_commit().unwrap_or_default();
        match kind {
            "good" => {
                if deployed != head {
                    self.fail(&format!("good commit {head} did not end deployed"));
                }
            }
            "health-fail" | "switch-fail" => {
                if deployed != previous || !self.is_bad(head) {
                    self.fail(&format!(
                        "{kind} commit {head} must leave {previous} deployed and itself recorded bad"
                    ));
                }
            }
            "build-fail" | "eval-error" => {
                if deployed != previous || self.state()["failed_build"]["commit"] != head {
                    self.fail(&format!(
                        "{kind} commit {head} must leave {previous} deployed and be recorded as a failed build"
                    ));
                }
            }
            other => self.fail(&format!("unexpected variant {other}")),
        }
    }

    /// Runs the recovery after a kill.
    fn recover(&mut self, how: Recovery) {
        let out = match how {
            Recovery::Sync => self.run(&["sync"], None),
            Recovery::Confirm => self.run(&["confirm"], None),
            Recovery::RebootBootCheck => {
                let booted = self.sys.reboot();
                self.log.push(format!("reboot into {}", booted.display()));
                self.run(&["boot-check"], None)
            }
        };
        if !ACCEPTABLE_EXITS.contains(&code(&out)) {
            self.fail(&format!(
                "recovery {how:?} ended with {}:\n{}",
                describe_status(&out),
                common::stderr_text(&out)
            ));
        }
        self.check_record_intact();
    }

    /// One episode: commit `variant`, drive it with a crash at `point` and the recovery `how`,
    /// then check. Returns whether the crash point was reached.
    fn episode(&mut self, variant: &str, point: Option<&str>, how: Recovery) -> bool {
        let previous = self.deployed_commit().unwrap_or_default();
        let head = self.commit(variant);
        let killed = self.drive(&head, point, how);
        self.check_settled();
        self.check_head_outcome(&head, &previous);
        killed
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn describe_status(out: &Output) -> String {
    match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "?".to_owned(),
    }
}

/// One deterministic case: a commit of `variant` is deployed (with the config snippet `mode`)
/// with a crash at `point`; the crash must happen, and after `how` and convergence the outcome
/// must be the variant's.
fn crash_case_in(mode: &str, point: &str, variant: &str, how: Recovery) {
    let label = point.replace(['.', '#'], "-");
    let mut w = World::with_mode(&label, mode);
    let killed = w.episode(&format!("{variant} {label}-{how:?}"), Some(point), how);
    if !killed {
        w.fail(&format!("crash point {point} was never reached"));
    }
}

macro_rules! crash_cases {
    ($module:ident, $mode:expr, $($name:ident: $point:expr, $variant:expr;)*) => {
        mod $module {
            use super::*;
            $(
                mod $name {
                    use super::*;
                    #[test]
                    fn then_sync() {
                        crash_case_in($mode, $point, $variant, Recovery::Sync);
                    }
                    #[test]
                    fn then_confirm() {
                        crash_case_in($mode, $point, $variant, Recovery::Confirm);
                    }
                    #[test]
                    fn then_reboot_and_boot_check() {
                        crash_case_in($mode, $point, $variant, Recovery::RebootBootCheck);
                    }
                }
            )*
        }
    };
}

crash_cases! {
    every_point, "",
    sync_locked: "sync.locked", "good";
    sync_fetched: "sync.fetched", "good";
    sync_built: "sync.built", "good";
    sync_armed: "sync.armed", "good";
    sync_switched: "sync.switched", "good";
    sync_activated: "sync.activated", "good";
    confirm_checking: "confirm.checking", "good";
    confirm_passed: "confirm.passed", "good";
    confirm_profile_set: "confirm.profile-set", "good";
    confirm_boot_set: "confirm.boot-set", "good";
    save_1_arm: "state.before-rename#1", "good";
    save_2_activated: "state.before-rename#2", "good";
    save_3_confirming: "state.before-rename#3", "good";
    save_4_deployed: "state.before-rename#4", "good";
    unhealthy_checking: "confirm.checking#2", "health-fail";
    unhealthy_revert_recorded: "revert.recorded", "health-fail";
    unhealthy_profile_restored: "revert.profile-restored", "health-fail";
    unhealthy_reactivated: "revert.activated", "health-fail";
    unhealthy_save_reverting: "state.before-rename#3", "health-fail";
    unhealthy_save_final: "state.before-rename#4", "health-fail";
    switch_fail_revert_recorded: "revert.recorded", "switch-fail";
    switch_fail_reactivated: "revert.activated", "switch-fail";
}

crash_cases! {
    boot_mode, BOOT_MODE,
    armed: "sync.armed", "good";
    profile_set: "sync.profile-set", "good";
    boot_set: "sync.boot-set", "good";
    rebooting: "sync.rebooting", "good";
    save_1_arm: "state.before-rename#1", "good";
    save_2_rebooting: "state.before-rename#2", "good";
    boot_counted: "boot-check.counted", "good";
    checking: "confirm.checking", "good";
    passed: "confirm.passed", "good";
    confirm_boot_set: "confirm.boot-set", "good";
    unhealthy_checking: "confirm.checking#2", "health-fail";
    unhealthy_revert_recorded: "revert.recorded", "health-fail";
    unhealthy_profile_restored: "revert.profile-restored", "health-fail";
    unhealthy_reactivated: "revert.activated", "health-fail";
}

/// `confirm` run by itself (the confirm unit) is crash-safe too: a candidate left activated by
/// a sync that handed over is confirmed by a `confirm` that is killed at each of its steps and
/// then run again.
#[test]
fn standalone_confirm_killed_at_each_step_then_rerun() {
    for point in [
        "confirm.checking",
        "confirm.passed",
        "confirm.profile-set",
        "confirm.boot-set",
        "state.before-rename#1",
        "state.before-rename#2",
    ] {
        let label = format!("standalone-{}", point.replace(['.', '#'], "-"));
        let mut w = World::new(&label);
        let head = w.commit(&format!("good {label}"));
        // The sync stops right after recording the activation, as a handed-over sync does.
        let out = w.run(&["sync"], Some("sync.activated"));
        assert_eq!(out.status.signal(), Some(9), "{}", w.explain(&out));
        assert_eq!(w.state()["pending"]["phase"], "activated");
        let out = w.run(&["confirm"], Some(point));
        if out.status.signal() != Some(9) {
            w.fail(&format!("confirm never reached {point}"));
        }
        w.check_record_intact();
        let out = w.run(&["confirm"], None);
        assert_eq!(code(&out), 0, "{}", w.explain(&out));
        w.check_settled();
        assert_eq!(w.deployed_commit().as_deref(), Some(head.as_str()));
    }
}

/// A commit whose activation keeps getting interrupted is given up after `max_attempts`
/// (recorded bad), instead of being retried forever.
#[test]
fn repeatedly_interrupted_commit_is_given_up() {
    let mut w = World::new("given-up");
    let previous = w.deployed_commit().unwrap_or_default();
    let head = w.commit("good given-up");
    for attempt in 1..=3 {
        let out = w.run(&["sync"], Some("sync.switched"));
        assert_eq!(
            out.status.signal(),
            Some(9),
            "attempt {attempt}: {}",
            w.explain(&out)
        );
        let out = w.run(&["boot-check"], None);
        w.log.push(format!(
            "attempt {attempt}: boot-check {}",
            describe_status(&out)
        ));
    }
    assert!(w.is_bad(&head), "{}", w.state());
    assert_eq!(w.state()["attempts"]["count"], 3);
    assert_eq!(w.deployed_commit(), Some(previous));
    // The next sync leaves it alone, and a new commit is deployed normally.
    let out = w.run(&["sync"], None);
    assert_eq!(code(&out), 0);
    assert!(!w.sys.switch_log().is_empty());
    let next = w.commit("good after-given-up");
    let out = w.run(&["sync"], None);
    assert_eq!(code(&out), 0, "{}", w.explain(&out));
    assert_eq!(w.deployed_commit(), Some(next));
    w.check_settled();
}

// ---------------------------------------------------------------------------------------------
// Randomized episodes
// ---------------------------------------------------------------------------------------------

/// Every crash point a sync (and the confirm or revert inside it) passes.
const POINTS: &[&str] = &[
    "sync.locked",
    "sync.fetched",
    "sync.built",
    "sync.armed",
    "sync.switched",
    "sync.activated",
    "confirm.checking",
    "confirm.passed",
    "confirm.profile-set",
    "confirm.boot-set",
    "revert.recorded",
    "revert.profile-restored",
    "revert.activated",
    "state.before-rename#1",
    "state.before-rename#2",
    "state.before-rename#3",
    "state.before-rename#4",
    "sync.profile-set",
    "sync.boot-set",
    "sync.rebooting",
    "boot-check.counted",
];

/// xorshift64*: small, fast, and reproducible from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Worlds the episodes are spread over (one test each, so they run in parallel).
const WORLDS: u64 = 6;

fn randomized(world_index: u64) {
    let total = env_number("PULLNIX_CRASH_EPISODES", 300);
    let episodes = total / WORLDS + u64::from(world_index < total % WORLDS);
    let seed = env_number("PULLNIX_CRASH_SEED", 0x5eed_1234)
        ^ (world_index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed | 1);
    // Two of the worlds deploy by rebooting: one always, one when the kernel changes.
    let mode = match world_index {
        4 => BOOT_MODE,
        5 => AUTO_MODE,
        _ => "",
    };
    let mut w = World::with_mode(&format!("random-{world_index}"), mode);
    w.log.push(format!("seed {seed:#x}"));
    let mut kills = 0;
    for n in 0..episodes {
        // Keep the log to the current episode so a failure report stays readable.
        w.log.truncate(1);
        let variant = match rng.below(20) {
            0..=10 => "good",
            // Booting runs no switch-to-configuration, so in the rebooting worlds the fixture's
            // activation failure would not fail; they get unhealthy commits instead.
            14..=15 if mode.is_empty() => "switch-fail",
            11..=15 => "health-fail",
            16..=17 => "build-fail",
            _ => "eval-error",
        };
        // Few distinct texts, so most builds are already in the store and the test stays fast;
        // a repeated text is also how a commit that changes nothing in the system is covered.
        let text = format!("{variant} r{} kernel-{}", rng.below(4), rng.below(2));
        let point = (rng.below(10) < 8).then(|| POINTS[rng.below(POINTS.len())]);
        let how = [Recovery::Sync, Recovery::Confirm, Recovery::RebootBootCheck][rng.below(3)];
        w.log.push(format!(
            "episode {n}: {text:?}, crash at {point:?}, then {how:?}"
        ));
        if w.episode(&text, point, how) {
            kills += 1;
        }
        // Now and then the admin rolls back; the record must follow.
        if rng.below(25) == 0 && w.sys.generations().len() > 1 {
            let out = w.run(&["rollback"], None);
            if code(&out) != 0 {
                w.fail(&format!("rollback failed: {}", common::stderr_text(&out)));
            }
            w.check_settled();
        }
    }
    // The schedule must actually have killed pullnix often (at least every fourth episode; many
    // points are not on the path of a failing build), or this test proves little.
    assert!(
        episodes < 10 || kills * 4 >= episodes,
        "only {kills} of {episodes} episodes reached their crash point"
    );
    eprintln!("world {world_index}: {episodes} episodes, {kills} killed mid-step, seed {seed:#x}");
}

#[test]
fn randomized_world_0() {
    randomized(0);
}
#[test]
fn randomized_world_1() {
    randomized(1);
}
#[test]
fn randomized_world_2() {
    randomized(2);
}
#[test]
fn randomized_world_3() {
    randomized(3);
}
#[test]
fn randomized_world_4() {
    randomized(4);
}
#[test]
fn randomized_world_5() {
    randomized(5);
}

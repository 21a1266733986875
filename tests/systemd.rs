//! pullnix's systemd units (nix/units.nix, rendered by nix/render-units.nix exactly as the NixOS
//! module installs them) under a REAL systemd: every scenario boots a Debian 12 container with
//! `tests/systemd/nspawn.sh` (systemd-nspawn, systemd 252 as PID 1).
//!
//! The container's real `/` is the NixOS system pullnix manages (no `--root`): pullnix runs
//! from the rendered units, builds with the container's own Nix 2.8 (Debian's nix-bin, installed
//! once into the cached rootfs by `tests/systemd/nspawn.sh`; the store is the container's
//! own, so nothing touches the host's /nix), fetches from `git daemon` inside the container and
//! switches with the fixture flake of `tests/systemd/flake`, whose `switch-to-configuration`
//! acts on `/run/current-system` and `/boot/default`. The scenario scripts are
//! `tests/systemd/*.sh` (see `lib.sh` for the machine model); their checks decide the harness
//! verdict, and the assertions here read what they and the journal left in the results
//! directory.
//!
//! Needs root (systemd-nspawn, overlayfs, cgroups). The first run debootstraps the rootfs
//! (about 2 minutes, Debian's mirror); later runs reuse it from `PULLNIX_NSPAWN_CACHE`
//! (default `/var/cache/pullnix-nspawn`). The scenarios run in parallel, each container in a
//! cgroup of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{TempDir, describe, git_in, run, run_ok, run_with_timeout};

const CONFIG: &str = "/ci/config.toml";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scripts_dir() -> PathBuf {
    manifest_dir().join("tests/systemd")
}

/// `tests/systemd/nspawn.sh` with its arguments.
fn nspawn(args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(scripts_dir().join("nspawn.sh")).args(args);
    cmd
}

/// The cached rootfs with Nix and git, built once per test process (and cached across runs).
fn prepare_rootfs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut cmd = nspawn(&["rootfs".as_ref()]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(600));
        assert!(
            out.status.success(),
            "`{}` failed:\n{}",
            describe(&cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Arguments of nix/render-units.nix besides `pullnix` and `configFile`.
#[derive(Clone, Copy)]
struct Render {
    confirm_timeout: u32,
    watchdog: u32,
    on_boot: &'static str,
    interval: &'static str,
    randomized_delay: &'static str,
    boot_counting: bool,
}

const RENDER: Render = Render {
    confirm_timeout: 30,
    watchdog: 5,
    on_boot: "1min",
    interval: "5min",
    randomized_delay: "1min",
    boot_counting: false,
};

/// The unit files nix/render-units.nix renders, as (file name, text).
fn render_units(r: Render) -> Vec<(String, String)> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.args(["--eval", "--strict", "--json"])
        .arg(manifest_dir().join("nix/render-units.nix"))
        .args(["--argstr", "pullnix", "/usr/local/bin/pullnix"])
        .args(["--argstr", "configFile", CONFIG])
        .args(["--argstr", "confirmTimeout", &r.confirm_timeout.to_string()])
        .args(["--argstr", "watchdogSec", &r.watchdog.to_string()])
        .args(["--argstr", "onBoot", r.on_boot])
        .args(["--argstr", "interval", r.interval])
        .args(["--argstr", "randomizedDelay", r.randomized_delay])
        // The scenarios wait seconds, not the default minute of timer coalescing.
        .args(["--argstr", "accuracy", "1s"])
        .args([
            "--argstr",
            "bootCounting",
            if r.boot_counting { "true" } else { "false" },
        ]);
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&run_ok(&mut cmd)).expect("render-units.nix printed no object");
    let units: Vec<(String, String)> = json
        .into_iter()
        .map(|(name, text)| (name, text.as_str().unwrap().to_owned()))
        .collect();
    for want in [
        "pullnix.service",
        "pullnix-confirm.service",
        "pullnix-boot-check.service",
        "pullnix.timer",
    ] {
        assert!(
            units.iter().any(|(n, _)| n == want),
            "render-units.nix did not render {want}"
        );
    }
    units
}

/// One container run: the fixture commits `c0`, `c1`, … (variants of tests/systemd/flake),
/// the scenario script and the settings it needs.
struct Scenario {
    script: &'static str,
    variants: &'static [&'static str],
    render: Render,
    /// confirm.timeout and confirm.interval of the config (the timeout equals the unit's).
    interval: u32,
    timer: bool,
    /// Units of tests/systemd/units enabled besides the usual ones.
    enable: &'static [&'static str],
    boot_timeout: u32,
    reset_on_timeout: bool,
    max_boots: u32,
}

impl Scenario {
    fn new(script: &'static str, variants: &'static [&'static str]) -> Scenario {
        Scenario {
            script,
            variants,
            render: RENDER,
            interval: 1,
            timer: false,
            enable: &[],
            boot_timeout: 120,
            reset_on_timeout: false,
            max_boots: 3,
        }
    }
}

fn config_toml(s: &Scenario) -> String {
    format!(
        r#"host = "ci"

[repo]
url = "git://127.0.0.1:9418/fleet.git"
branch = "main"
# git daemon inside the container's own loopback; these tests are about the units.
insecure_plaintext_without_signatures = true

[switch]
systemd_run = true

[confirm]
timeout = {timeout}
interval = {interval}
unit = "pullnix-confirm.service"

[health]
remote = true
units = ["fixture-app.service"]
system_running = true

[[health.command]]
name = "healthy-marker"
argv = ["/bin/sh", "-c", "test -e /run/current-system/healthy"]
timeout = 10

# Lets a scenario hold the confirmation window open: fails while /run/ci-hold exists.
[[health.command]]
name = "gate"
argv = ["/bin/sh", "-c", "! test -e /run/ci-hold"]
timeout = 10
"#,
        timeout = s.render.confirm_timeout,
        interval = s.interval,
    )
}

/// A git repository with one commit per variant, on branches c0, c1, … (main = the last one;
/// the scenario scripts move main themselves), cloned bare to `dest`. Returns the commit ids.
fn fixture_repo(work: &Path, dest: &Path, variants: &[&str]) -> Vec<String> {
    fs::create_dir_all(work).unwrap();
    run_ok(git_in(work).args(["init", "-q"]));
    let mut shas = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        fs::write(
            work.join("flake.nix"),
            include_str!("systemd/flake/flake.nix"),
        )
        .unwrap();
        fs::write(
            work.join("switch-to-configuration.sh"),
            include_str!("systemd/flake/switch-to-configuration.sh"),
        )
        .unwrap();
        fs::write(work.join("variant"), variant).unwrap();
        run_ok(git_in(work).args(["add", "-A"]));
        run_ok(git_in(work).args(["commit", "-q", "-m", &format!("c{i}: {variant}")]));
        run_ok(git_in(work).args(["branch", "-f", &format!("c{i}")]));
        shas.push(
            run_ok(git_in(work).args(["rev-parse", "HEAD"]))
                .trim()
                .to_owned(),
        );
    }
    run_ok(git_in(work).args(["clone", "-q", "--bare", "."]).arg(dest));
    shas
}

/// What a finished container run left behind.
struct Outcome {
    _tmp: TempDir,
    results: PathBuf,
    shas: Vec<String>,
}

impl Outcome {
    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.results.join(name))
            .unwrap_or_else(|e| panic!("results/{name}: {e}"))
    }

    fn json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.file(name))
            .unwrap_or_else(|e| panic!("results/{name} is not JSON: {e}"))
    }

    fn journal(&self) -> String {
        self.file("journal.txt")
    }

    #[track_caller]
    fn assert_journal_has(&self, needle: &str) {
        assert!(
            self.journal().contains(needle),
            "the journal does not mention {needle:?}"
        );
    }
}

/// Every `test-boot-N.log` and the journal's pullnix lines, for failure messages.
fn diagnostics(results: &Path) -> String {
    let mut text = String::new();
    for n in 1..=10 {
        if let Ok(log) = fs::read_to_string(results.join(format!("test-boot-{n}.log"))) {
            let _ = write!(text, "--- test-boot-{n}.log ---\n{log}");
        }
    }
    if let Ok(journal) = fs::read_to_string(results.join("journal.txt")) {
        text.push_str("--- journal (pullnix, switch, watchdog) ---\n");
        for line in journal.lines().filter(|l| {
            (l.contains("pullnix") || l.contains("Watchdog") || l.contains("ci-scenario"))
                && !l.contains("Failed to kill control group")
        }) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Builds the payload and boots it; panics with the logs unless the verdict is pass.
fn run_scenario(s: &Scenario) -> Outcome {
    prepare_rootfs();
    let tmp = TempDir::new("nspawn");
    let payload = tmp.join("payload");
    let results = tmp.join("results");
    fs::create_dir_all(payload.join("units")).unwrap();
    for (name, text) in render_units(s.render) {
        fs::write(payload.join("units").join(name), text).unwrap();
    }
    for entry in fs::read_dir(scripts_dir().join("units")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), payload.join("units").join(entry.file_name())).unwrap();
    }
    let mut enable = String::from(
        "pullnix-boot-check.service\npullnix-confirm.service\nci-stage2.service\nfixture-app.service\n",
    );
    if s.timer {
        enable.push_str("pullnix.timer\n");
    }
    for unit in s.enable {
        enable.push_str(unit);
        enable.push('\n');
    }
    fs::write(payload.join("enable"), enable).unwrap();
    fs::copy(scripts_dir().join("lib.sh"), payload.join("lib.sh")).unwrap();
    fs::copy(
        scripts_dir().join(format!("{}.sh", s.script)),
        payload.join("test.sh"),
    )
    .unwrap();
    fs::write(payload.join("config.toml"), config_toml(s)).unwrap();
    let shas = fixture_repo(&tmp.join("work"), &payload.join("repo.git"), s.variants);

    let mut cmd = nspawn(&["run".as_ref(), payload.as_os_str(), results.as_os_str()]);
    cmd.env("BOOT_TIMEOUT", s.boot_timeout.to_string())
        .env(
            "RESET_ON_TIMEOUT",
            if s.reset_on_timeout { "1" } else { "0" },
        )
        .env("MAX_BOOTS", s.max_boots.to_string())
        .env(
            "NSPAWN_ARGS",
            format!(
                "--bind-ro={}:/usr/local/bin/pullnix",
                env!("CARGO_BIN_EXE_pullnix")
            ),
        );
    let limit = Duration::from_secs(u64::from(s.boot_timeout * s.max_boots) + 60);
    let out = run_with_timeout(&mut cmd, limit);
    assert!(
        out.status.success(),
        "scenario {} failed:\n{}\n{}",
        s.script,
        String::from_utf8_lossy(&out.stderr),
        diagnostics(&results)
    );
    Outcome {
        _tmp: tmp,
        results,
        shas,
    }
}

fn last_result(state: &serde_json::Value) -> (&str, &str) {
    (
        state["last"]["result"].as_str().unwrap_or(""),
        state["last"]["message"].as_str().unwrap_or(""),
    )
}

#[test]
fn rendered_units_pass_systemd_analyze_verify() {
    prepare_rootfs();
    for render in [
        RENDER,
        Render {
            confirm_timeout: 8,
            watchdog: 3,
            on_boot: "10s",
            interval: "2s",
            randomized_delay: "0",
            boot_counting: true,
        },
    ] {
        let tmp = TempDir::new("nspawn-verify");
        fs::create_dir_all(tmp.join("units")).unwrap();
        fs::create_dir_all(tmp.join("bin")).unwrap();
        for (name, text) in render_units(render) {
            fs::write(tmp.join("units").join(name), text).unwrap();
        }
        // ExecStart= must name an executable that exists.
        fs::copy(env!("CARGO_BIN_EXE_pullnix"), tmp.join("bin/pullnix")).unwrap();
        let mut cmd = nspawn(&["verify".as_ref(), tmp.path().as_os_str()]);
        let out = run(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify complained (bootCounting = {}):\n{stderr}",
            render.boot_counting
        );
        assert!(stderr.contains("verify: 4 units, no findings"), "{stderr}");
    }
}

#[test]
fn start_of_pullnix_service_deploys_at_once_and_the_confirm_unit_confirms() {
    let o = run_scenario(&Scenario::new("start", &["good 0", "good 1"]));
    let state = o.json("state-boot1.json");
    assert_eq!(state["deployed"]["commit"], o.shas[1].as_str());
    assert_eq!(state["deployed"]["generation"], 2);
    assert!(state["pending"].is_null());
    // The health checks ran against the real systemd, in the confirm unit.
    o.assert_journal_has("running: systemctl is-active --quiet fixture-app.service");
    o.assert_journal_has("running: systemctl is-system-running");
    o.assert_journal_has("pullnix-confirm.service confirms it");
    o.assert_journal_has("health checks passed for");
}

#[test]
fn timer_deploys_new_commits_on_its_own() {
    let mut s = Scenario::new("timer", &["good 0", "good 1", "good 2"]);
    s.timer = true;
    s.render.on_boot = "10s";
    s.render.interval = "2s";
    s.render.randomized_delay = "0";
    let o = run_scenario(&s);
    let state = o.json("state-boot1.json");
    assert_eq!(state["deployed"]["commit"], o.shas[2].as_str());
    assert_eq!(state["deployed"]["generation"], 3);
    let starts = o
        .journal()
        .matches("Starting pullnix.service - pullnix: deploy the configured branch")
        .count();
    assert!(
        starts >= 2,
        "the timer started pullnix.service {starts} times"
    );
}

#[test]
fn unhealthy_candidate_is_reverted_by_the_confirm_unit_within_the_deadline() {
    let mut s = Scenario::new("unhealthy", &["good 0", "unhealthy 1"]);
    s.render.confirm_timeout = 8;
    let o = run_scenario(&s);
    let took: u32 = o.file("revert-seconds").trim().parse().unwrap();
    assert!(
        took <= 8 + 6,
        "reverted {took}s after the start, deadline 8s"
    );
    let state = o.json("state-reverted.json");
    let (result, message) = last_result(&state);
    assert_eq!(result, "reverted", "{message}");
    assert!(
        message.contains("still failing at the deadline"),
        "{message}"
    );
    // Every systemd-backed check saw the broken candidate.
    assert!(
        message.contains("unit fixture-app.service is not active"),
        "{message}"
    );
    assert!(
        message.contains("systemctl is-system-running says \"degraded\""),
        "{message}"
    );
    assert_eq!(state["bad"][0]["commit"], o.shas[1].as_str());
    let units = o.file("units-reverted.txt");
    assert!(units.contains("ExecMainStatus=9"), "{units}");
    o.assert_journal_has("recorded as bad");
}

#[test]
fn power_cut_in_the_confirmation_window_comes_back_on_the_previous_generation() {
    let mut s = Scenario::new("powercut", &["good 0", "good 1"]);
    s.render.confirm_timeout = 300;
    s.boot_timeout = 25;
    s.reset_on_timeout = true;
    let o = run_scenario(&s);
    let boots = o.file("boots.log");
    assert!(
        boots.contains("boot 1: power cut (boot timeout) (nspawn exit 124)"),
        "{boots}"
    );
    let window = o.json("state-window.json");
    assert_eq!(window["pending"]["phase"], "activated");
    let after = o.json("state-after-cut.json");
    let (result, message) = last_result(&after);
    assert_eq!(result, "reverted", "{message}");
    assert!(message.contains("rebooted before"), "{message}");
    assert_eq!(after["attempts"]["count"], 1);
    assert_eq!(after["bad"], serde_json::json!([]));
    o.assert_journal_has("boot-check");
    let last = o.json("state-boot2.json");
    assert_eq!(last["deployed"]["commit"], o.shas[1].as_str());
}

#[test]
fn hung_confirm_is_killed_by_the_watchdog_and_still_reverts() {
    let mut s = Scenario::new("watchdog", &["good 0", "good 1"]);
    s.render.confirm_timeout = 10;
    s.render.watchdog = 3;
    s.interval = 2;
    let o = run_scenario(&s);
    o.assert_journal_has("pullnix-confirm.service: Watchdog timeout (limit 3s)!");
    o.assert_journal_has("pullnix-confirm.service: Scheduled restart job");
    let state = o.json("state-boot1.json");
    let (result, message) = last_result(&state);
    assert_eq!(result, "reverted", "{message}");
    assert!(
        message.contains("not confirmed before its deadline"),
        "{message}"
    );
    let took: u32 = o.file("revert-seconds").trim().parse().unwrap();
    assert!(took <= 40, "reverted {took}s after the start");
}

#[test]
fn rounds_further_apart_than_the_watchdog_do_not_get_a_healthy_confirm_killed() {
    let mut s = Scenario::new("slow-rounds", &["good 0", "good 1"]);
    s.render.watchdog = 3;
    s.interval = 6;
    let o = run_scenario(&s);
    let state = o.json("state-boot1.json");
    assert_eq!(state["deployed"]["commit"], o.shas[1].as_str());
    assert!(
        !o.journal().contains("Watchdog timeout"),
        "the watchdog killed pullnix-confirm.service"
    );
    o.assert_journal_has("health check failed (round 2");
    o.assert_journal_has("health checks passed for");
}

#[test]
fn switch_that_restarts_changed_units_leaves_pullnix_alone_and_confirms() {
    let o = run_scenario(&Scenario::new("own-units", &["good 0", "own-units 1"]));
    let log = o.file("switch-boot1.log");
    for unit in [
        "pullnix.service",
        "pullnix-confirm.service",
        "pullnix-boot-check.service",
    ] {
        assert!(
            log.contains(&format!("not restarting {unit} (X-RestartIfChanged=false)")),
            "the switch restarted {unit}:\n{log}"
        );
    }
    let state = o.json("state-boot1.json");
    assert_eq!(state["deployed"]["commit"], o.shas[1].as_str());
}

#[test]
fn switch_in_a_transient_unit_survives_pullnix_being_stopped_mid_switch() {
    let o = run_scenario(&Scenario::new("stop-agent", &["good 0", "stop-agent 1"]));
    let log = o.file("switch-first.log");
    let stopped = log.find("stopped pullnix.service").expect(&log);
    let done = log[stopped..].find(" done").expect(&log);
    assert!(log[stopped..stopped + done].contains("activated"), "{log}");
    let first = o.json("state-first.json");
    let (result, message) = last_result(&first);
    assert_eq!(result, "reverted", "{message}");
    assert!(
        message.contains("interrupted (attempt 1 of 3)"),
        "{message}"
    );
    assert_eq!(first["bad"], serde_json::json!([]));
    let last = o.json("state-boot1.json");
    assert_eq!(last["deployed"]["commit"], o.shas[1].as_str());
}

#[test]
fn every_switch_ends_although_it_starts_the_active_targets() {
    let mut s = Scenario::new("targets", &["good 0", "good 1", "broken 2"]);
    s.boot_timeout = 300;
    let o = run_scenario(&s);
    let state = o.json("state-boot1.json");
    let (result, message) = last_result(&state);
    assert_eq!(result, "rolled-back", "{message}");
    assert_eq!(state["deployed"]["generation"], 1);
    // The switches started the units again: the failed boot-check (multi-user.target is
    // ordered after it) and the confirm unit, while the pullnix that ran the switch held
    // STATE/lock.
    let switch = o.file("switch-boot1.log");
    assert!(switch.contains("starting the active targets:"), "{switch}");
    assert!(switch.contains("multi-user.target"), "{switch}");
    // The boot-check a switch started again found the record written in this boot and left
    // it, without the lock; the confirm started with it waited for the sync's lock after
    // telling systemd it started, and then confirmed.
    o.assert_journal_has(
        "boot-check: nothing to account for: the deployment in flight was recorded in this boot",
    );
    o.assert_journal_has("a candidate being activated is in flight and another pullnix holds");
    let reverted = o.json("state-reverted.json");
    let (result, message) = last_result(&reverted);
    assert_eq!(result, "reverted", "{message}");
    assert!(message.contains("activating"), "{message}");
    assert_eq!(reverted["bad"][0]["commit"], o.shas[2].as_str());
}

#[test]
fn boot_counting_every_switch_ends_and_boot_complete_waits_for_confirm_only_at_boot() {
    let mut s = Scenario::new(
        "boot-counting",
        &["good 0", "good 1", "unhealthy 2", "broken 3"],
    );
    s.render.boot_counting = true;
    s.render.confirm_timeout = 8;
    s.enable = &["ci-bless-boot.service"];
    s.boot_timeout = 300;
    let o = run_scenario(&s);
    let deployed = o.json("state-deployed.json");
    assert_eq!(deployed["deployed"]["commit"], o.shas[1].as_str());
    let reverted = o.json("state-reverted.json");
    let (result, message) = last_result(&reverted);
    assert_eq!(result, "reverted", "{message}");
    assert!(
        message.contains("still failing at the deadline"),
        "{message}"
    );
    let took: u32 = o.file("revert-seconds").trim().parse().unwrap();
    assert!(
        took <= 8 + 10,
        "reverted {took}s after the start, deadline 8s"
    );
    let broken = o.json("state-broken.json");
    assert_eq!(broken["bad"][1]["commit"], o.shas[3].as_str());
    let last = o.json("state-boot1.json");
    let (result, message) = last_result(&last);
    assert_eq!(result, "rolled-back", "{message}");
    // boot-complete.target was started again by every switch; the confirm it started waited
    // for the lock only after READY=1.
    o.assert_journal_has("a candidate being activated is in flight and another pullnix holds");
    o.assert_journal_has("a rollback is in flight and another pullnix holds");
}

#[test]
fn bootstrap_whose_candidate_brings_the_units_ends_deployed() {
    let mut s = Scenario::new("bootstrap", &["good 0 no-pullnix", "good 1", "good 2"]);
    s.boot_timeout = 300;
    let o = run_scenario(&s);
    let first = o.json("state-bootstrapped.json");
    assert_eq!(first["deployed"]["commit"], o.shas[1].as_str());
    let switch = o.file("switch-bootstrapped.log");
    assert!(switch.contains("added pullnix's units"), "{switch}");
    o.assert_journal_has(
        "boot-check: nothing to account for: the deployment in flight was recorded in this boot",
    );
    let last = o.json("state-boot2.json");
    assert_eq!(last["deployed"]["commit"], o.shas[2].as_str());
    o.assert_journal_has("pullnix-confirm.service confirms it");
}

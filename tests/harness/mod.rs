//! Helpers shared by the end-to-end tests of the pullnix binary (`deploy.rs`, `transports.rs`,
//! `bad_input.rs`, `scan.rs`), on top of the fixture library in `tests/common`.
//!
//! A [`Machine`] is the usual starting point: a fixture repository whose first commit
//! (`good 0`) built generation 1 of a fresh [`TestSystem`], and a config pointing pullnix at the
//! repository. Everything is real: the assertions look at what the binary did to the fake root
//! (profile generations, `run/current-system`, `boot/default`, `switch.log`, `state.json`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{
    FlakeRepo, TestSystem, exit_code, pullnix, stderr_text, stdout_text, write_config,
};

/// The health settings for tests where health must fail: a 3 s window, checked every second.
pub const SHORT_CONFIRM: &str = "[confirm]\ntimeout = 3\ninterval = 1\n";

/// What a failing assertion about a pullnix run prints: the exit status and both streams.
pub fn describe_run(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        stdout_text(out),
        stderr_text(out)
    )
}

/// Asserts that the run exited with `code`.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        exit_code(out),
        code,
        "{what}: expected exit {code}\n{}",
        describe_run(out)
    );
}

/// Asserts that stderr contains `needle`.
#[track_caller]
pub fn assert_stderr_has(out: &Output, needle: &str, what: &str) {
    assert!(
        stderr_text(out).contains(needle),
        "{what}: stderr does not mention {needle:?}\n{}",
        describe_run(out)
    );
}

/// README, "Logs": one event per line on stderr, each with a printk priority prefix (`<3>`
/// error … `<7>` debug), which journald turns into priorities.
#[track_caller]
pub fn assert_all_lines_prefixed(out: &Output) {
    let stderr = stderr_text(out);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let b = line.as_bytes();
        assert!(
            b.len() >= 3 && b[0] == b'<' && (b'0'..=b'7').contains(&b[1]) && b[2] == b'>',
            "stderr line without a priority prefix: {line:?}\n{}",
            describe_run(out)
        );
    }
}

/// How many `nix build` runs pullnix logged (every external command is logged with its argv
/// before it runs, README "Logs"; variables set for it come first).
pub fn nix_builds(out: &Output) -> usize {
    stderr_text(out)
        .lines()
        .filter_map(|l| l.split_once("running: "))
        .filter(|(_, cmd)| {
            cmd.split(' ')
                .find(|w| !w.contains('='))
                .is_some_and(|program| program == "nix")
                && cmd.contains(" build ")
        })
        .count()
}

/// `"ACTION STOREPATH"`, the line the fixture's switch-to-configuration logs.
pub fn log_line(action: &str, system: &Path) -> String {
    format!("{action} {}", system.display())
}

/// The string at `pointer` in `json`, or a panic showing the document.
#[track_caller]
pub fn json_str<'a>(json: &'a serde_json::Value, pointer: &str) -> &'a str {
    json.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {json:#}"))
}

/// The commits listed in `state.bad`.
pub fn bad_commits(state: &serde_json::Value) -> Vec<String> {
    state["bad"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["commit"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A machine running generation 1 (`good 0`, commit `sha0`) that pullnix has never touched,
/// plus the repository it is configured to follow.
pub struct Machine {
    pub repo: FlakeRepo,
    pub sys: TestSystem,
    /// The commit that built generation 1.
    pub sha0: String,
    /// Generation 1: the running, booted and boot-default system.
    pub g1: PathBuf,
    pub config: PathBuf,
}

impl Machine {
    /// Follows the repository through `file://`, with `extra_toml` merged into the base config.
    pub fn new(extra_toml: &str) -> Machine {
        let repo = FlakeRepo::new();
        let url = repo.file_url();
        Machine::with_repo(repo, |_| url, extra_toml)
    }

    /// Like [`new`](Self::new) with the URL `url(&repo)` (for servers started on the repo).
    pub fn with_repo(
        repo: FlakeRepo,
        url: impl FnOnce(&FlakeRepo) -> String,
        extra_toml: &str,
    ) -> Machine {
        let (sha0, g1) = repo.commit_and_build("good 0");
        let sys = TestSystem::new(&g1);
        let config = write_config(&sys, &url(&repo), extra_toml);
        Machine {
            repo,
            sys,
            sha0,
            g1,
            config,
        }
    }

    /// Rewrites the config (same path) with another URL and overlay.
    pub fn reconfigure(&self, url: &str, extra_toml: &str) {
        let path = write_config(&self.sys, url, extra_toml);
        assert_eq!(path, self.config);
    }

    /// Runs `pullnix --config CONFIG --root ROOT ARGS…`.
    pub fn pullnix(&self, args: &[&str]) -> Output {
        pullnix(&self.sys, &self.config, args)
    }

    /// `pullnix status --json`, parsed; it must succeed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.pullnix(&["status", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            crate::common::stderr_text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is not JSON")
    }

    /// The parsed state file; panics if there is none.
    #[track_caller]
    pub fn state(&self) -> serde_json::Value {
        self.sys.state_json().expect("pullnix wrote no state.json")
    }

    /// Commits `variant` and builds it with nix directly (not through pullnix), to know which
    /// system pullnix must end up activating.
    pub fn commit_and_build(&self, variant: &str) -> (String, PathBuf) {
        self.repo.commit_and_build(variant)
    }

    /// Asserts that the machine still runs, boots and profiles `system` as generation `generation`
    /// and that nothing is in flight.
    #[track_caller]
    pub fn assert_settled_on(&self, system: &Path, generation: u32) {
        let sys = &self.sys;
        assert_eq!(
            sys.current_system().as_deref(),
            Some(system),
            "current-system"
        );
        assert_eq!(
            sys.profile_generation(),
            Some(generation),
            "profile generation"
        );
        assert_eq!(
            sys.profile_target().as_deref(),
            Some(system),
            "profile target"
        );
        assert_eq!(sys.boot_default().as_deref(), Some(system), "boot default");
        // (A state file that does not parse is some tests' subject: they check it themselves.)
        let state: Option<serde_json::Value> = fs::read(sys.state_file())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(state) = state {
            assert!(state["pending"].is_null(), "pending: {state:#}");
        }
    }

    /// `sync` that must deploy `commit` as `system`, generation `generation`: exit 0, tested
    /// before it became the boot default, recorded in the state.
    #[track_caller]
    pub fn sync_deploys(&self, commit: &str, system: &Path, generation: u32) -> Output {
        let log_before = self.sys.switch_log().len();
        let out = self.pullnix(&["sync"]);
        assert_exit(&out, 0, "sync of a deployable commit");
        assert_all_lines_prefixed(&out);
        assert_eq!(nix_builds(&out), 1, "one build\n{}", describe_run(&out));
        assert_eq!(
            self.sys.switch_log()[log_before..],
            [log_line("test", system), log_line("boot", system)],
            "switch-to-configuration calls\n{}",
            describe_run(&out)
        );
        self.assert_settled_on(system, generation);
        let state = self.state();
        assert_eq!(json_str(&state, "/deployed/commit"), commit, "{state:#}");
        assert_eq!(
            json_str(&state, "/deployed/system"),
            system.to_str().unwrap()
        );
        assert_eq!(state["deployed"]["generation"], generation, "{state:#}");
        assert_eq!(json_str(&state, "/last/result"), "deployed", "{state:#}");
        assert!(state["pending"].is_null(), "{state:#}");
        out
    }

    /// Overwrites the state file with `bytes` (for corruption tests).
    pub fn write_state(&self, bytes: &[u8]) {
        fs::write(self.sys.state_file(), bytes).unwrap();
    }
}

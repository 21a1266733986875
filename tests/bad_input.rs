//! Every kind of bad input the README names, fed to the real binary: unreachable remotes,
//! missing branches, deploy key problems, broken configuration, a corrupt state file, a
//! machine without `/run/current-system`, and command-line mistakes. Each must end with the
//! documented exit code, an error that names the problem, and an untouched system.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{exit_code, stderr_text, stdout_text, toml_string};
use harness::{
    Machine, assert_all_lines_prefixed, assert_exit, assert_stderr_has, describe_run, json_str,
    nix_builds,
};

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that the machine is exactly as installed: generation 1 running, profiled and
/// booted by default, no switch-to-configuration call, no candidate armed.
#[track_caller]
fn assert_untouched(m: &Machine) {
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(m.sys.generations(), vec![1]);
    assert_eq!(m.sys.booted_system().as_deref(), Some(m.g1.as_path()));
}

// --- fetching -----------------------------------------------------------------------------------

/// The opt-out for plain-text remotes: these tests are about unreachable servers.
const PLAIN: &str = "[repo]\ninsecure_plaintext_without_signatures = true\n";

/// `sync` against `url` must fail to fetch: exit 4, the URL named, nothing built or changed,
/// and the failure recorded.
fn fetch_fails(url: &str, extra_toml: &str) -> (Machine, std::process::Output) {
    let m = Machine::new("");
    m.reconfigure(url, extra_toml);
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, url);
    assert_all_lines_prefixed(&out);
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_untouched(&m);
    let state = m.state();
    assert_eq!(
        json_str(&state, "/last/result"),
        "fetch-failed",
        "{state:#}"
    );
    assert!(
        m.status_json()["last_check"].as_u64().is_some(),
        "{state:#}"
    );
    (m, out)
}

#[test]
fn unreachable_git_daemon_port_fails_the_fetch() {
    let url = format!("git://127.0.0.1:{}/fleet.git", closed_port());
    let (_, out) = fetch_fails(&url, PLAIN);
    assert_stderr_has(&out, &url, "the remote");
}

#[test]
fn unreachable_http_port_fails_the_fetch() {
    let url = format!("http://127.0.0.1:{}/fleet.git", closed_port());
    let (_, out) = fetch_fails(&url, PLAIN);
    assert_stderr_has(&out, &url, "the remote");
}

#[test]
fn nonexistent_repository_path_fails_the_fetch() {
    let url = "file:///nonexistent/pullnix-test/fleet.git";
    let (_, out) = fetch_fails(url, "");
    assert_stderr_has(&out, url, "the remote");
}

#[test]
fn missing_branch_fails_the_fetch_and_names_the_branch() {
    let m = Machine::new("");
    let url = m.repo.file_url();
    m.reconfigure(&url, "[repo]\nbranch = \"nope\"\n");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "fetch of a branch the remote does not have");
    assert_stderr_has(&out, "\"nope\"", "the branch");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert_untouched(&m);
    let state = m.state();
    assert_eq!(json_str(&state, "/last/result"), "fetch-failed");
    assert!(
        json_str(&state, "/last/message").contains("nope"),
        "{state:#}"
    );
}

/// An ssh remote that is never reached (closed port), so only the deploy key check matters.
fn ssh_url() -> String {
    format!("ssh://root@127.0.0.1:{}/srv/fleet.git", closed_port())
}

/// The deploy key, and a host key pin that trusts no host at all (`/dev/null`): the port is
/// closed, so no host key is ever offered, and only the key checks matter.
fn deploy_key_toml(key: &Path) -> String {
    format!(
        "[repo]\ndeploy_key = {}\nknown_hosts = \"/dev/null\"\n",
        toml_string(&key.display().to_string())
    )
}

#[test]
fn missing_deploy_key_fails_the_fetch_and_names_the_path() {
    let key = Path::new("/nonexistent/pullnix-test/deploy_key");
    let (_, out) = fetch_fails(&ssh_url(), &deploy_key_toml(key));
    assert_stderr_has(&out, &key.display().to_string(), "the key path");
    assert_stderr_has(&out, "repo.deploy_key", "the setting");
}

/// Writes a (syntactically real) private key file with `mode` into the machine's scratch dir.
fn key_with_mode(m: &Machine, mode: u32) -> std::path::PathBuf {
    let key = m.sys.scratch("keys").join("deploy_key");
    common::run_ok(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
    key
}

#[test]
fn world_readable_deploy_key_fails_the_fetch_and_says_chmod_600() {
    let m = Machine::new("");
    let key = key_with_mode(&m, 0o644);
    m.reconfigure(&ssh_url(), &deploy_key_toml(&key));
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "deploy key with mode 0644");
    assert_stderr_has(&out, &key.display().to_string(), "the key path");
    assert_stderr_has(&out, "chmod 600", "the fix");
    assert_untouched(&m);
    // The key was left as it was: fixing permissions is the admin's call.
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn private_deploy_key_modes_pass_the_key_check() {
    // 0600 and 0400 are fine: the fetch then fails only because nothing listens.
    for mode in [0o600, 0o400] {
        let m = Machine::new("");
        let key = key_with_mode(&m, mode);
        let url = ssh_url();
        m.reconfigure(&url, &deploy_key_toml(&key));
        let out = m.pullnix(&["sync"]);
        assert_exit(&out, 4, "ssh remote that does not answer");
        let err = stderr_text(&out);
        assert!(
            !err.contains("chmod"),
            "mode {mode:o}: {}",
            describe_run(&out)
        );
        assert_stderr_has(&out, &url, "the remote");
    }
}

// --- configuration ------------------------------------------------------------------------------

/// The 1-based number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"))
        + 1
}

/// Every command must refuse `config` with exit 2 and an error containing all of `needles`.
fn config_is_rejected(m: &Machine, needles: &[&str]) {
    for args in [&["sync"][..], &["status"], &["rollback"], &["boot-check"]] {
        let out = m.pullnix(args);
        assert_exit(&out, 2, &format!("{args:?} with a bad config"));
        assert_all_lines_prefixed(&out);
        for needle in needles {
            assert_stderr_has(&out, needle, "the problem");
        }
        assert_stderr_has(&out, &m.config.display().to_string(), "the file");
    }
    assert_untouched(m);
    assert!(m.sys.state_json().is_none(), "a bad config wrote state");
}

#[test]
fn unknown_key_is_a_config_error_naming_key_and_line() {
    let m = Machine::new("[confirm]\ntimout = 3\n");
    let text = fs::read_to_string(&m.config).unwrap();
    let line = format!("line {}", line_of(&text, "timout"));
    config_is_rejected(&m, &["timout", &line]);
}

#[test]
fn unknown_top_level_key_is_a_config_error() {
    let m = Machine::new("hots = \"edge-01\"\n");
    let text = fs::read_to_string(&m.config).unwrap();
    let line = format!("line {}", line_of(&text, "hots"));
    config_is_rejected(&m, &["hots", &line]);
}

#[test]
fn wrong_type_is_a_config_error_naming_the_line() {
    let m = Machine::new("[confirm]\ntimeout = \"soon\"\n");
    let text = fs::read_to_string(&m.config).unwrap();
    let line = format!("line {}", line_of(&text, "timeout = \"soon\""));
    config_is_rejected(&m, &[&line, "soon"]);
}

#[test]
fn missing_repo_table_is_a_config_error() {
    let m = Machine::new("");
    fs::write(&m.config, "host = \"testhost\"\n[confirm]\ntimeout = 3\n").unwrap();
    config_is_rejected(&m, &["`repo`"]);
}

#[test]
fn toml_syntax_error_is_a_config_error() {
    let m = Machine::new("");
    let mut text = fs::read_to_string(&m.config).unwrap();
    text.push_str("[confirm\n");
    let line = format!("line {}", text.lines().count());
    fs::write(&m.config, &text).unwrap();
    config_is_rejected(&m, &[&line]);
}

#[test]
fn nonsense_values_are_config_errors_naming_the_key() {
    for (extra, key) in [
        ("[confirm]\ntimeout = 0\n", "confirm.timeout"),
        ("state_dir = \"var/lib/pullnix\"\n", "state_dir"),
        ("[scan]\nmin_cvss = 11.0\n", "scan.min_cvss"),
        ("[repo]\nbranch = \"a b\"\n", "repo.branch"),
    ] {
        let m = Machine::new(extra);
        config_is_rejected(&m, &[key]);
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let m = Machine::new("");
    fs::remove_file(&m.config).unwrap();
    for args in [&["sync"][..], &["status", "--json"]] {
        let out = m.pullnix(args);
        assert_exit(&out, 2, "missing config file");
        assert_stderr_has(&out, &m.config.display().to_string(), "the path");
    }
    assert_untouched(&m);
}

// --- what to build -------------------------------------------------------------------------------

#[test]
fn default_host_is_the_kernel_hostname_and_a_missing_configuration_names_it() {
    let m = Machine::new("");
    // Drop `host`: pullnix builds nixosConfigurations.<kernel hostname>, which the fixture
    // (configured for "testhost") does not have.
    let text = fs::read_to_string(&m.config).unwrap();
    let without: Vec<&str> = text.lines().filter(|l| !l.starts_with("host =")).collect();
    fs::write(&m.config, without.join("\n") + "\n").unwrap();
    let hostname = common::run_ok(std::process::Command::new("uname").arg("-n"))
        .trim()
        .to_owned();
    assert_ne!(hostname, common::DEFAULT_HOST);
    m.repo.commit("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "build for a host the flake does not configure");
    assert_stderr_has(&out, &hostname, "the host");
    assert_stderr_has(&out, "does not provide attribute", "nix's reason");
    assert_untouched(&m);
    let status: serde_json::Value =
        serde_json::from_slice(&m.pullnix(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json_str(&status, "/host"), hostname);
}

#[test]
fn a_branch_name_cannot_add_parameters_to_the_flake_url() {
    // `main&dir=sub` is a valid git branch name (it could also come from the kernel command
    // line, `pullnix.branch=`). Put into the flake URL's `?ref=` as it is, it names the ref
    // `main` the device already tracks and adds `dir=sub`: nix builds the flake of `sub/`,
    // which the configuration never names. (Nix 2.8 insists that the commit is on that ref,
    // so here it is main's head, whose top-level flake failed to build.)
    let m = Machine::new("");
    let (sha, g2) = m.commit_and_build("good 1");
    m.sync_deploys(&sha, &g2, 2);
    let work = m.repo.work_tree();
    let sub = work.join("sub");
    fs::create_dir_all(&sub).unwrap();
    for entry in fs::read_dir(work).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, sub.join(path.file_name().unwrap())).unwrap();
        }
    }
    fs::write(sub.join("variant"), "good injected from sub/").unwrap();
    let head = m.repo.commit("build-fail 2");
    assert_exit(&m.pullnix(&["sync"]), 6, "main's head does not build");
    let branch = "main&dir=sub";
    common::run_ok(std::process::Command::new("git").args([
        "check-ref-format",
        "--branch",
        branch,
    ]));
    common::run_ok(common::git_in(work).args([
        "push",
        "-q",
        "origin",
        &format!("{head}:refs/heads/{branch}"),
    ]));
    m.reconfigure(
        &m.repo.file_url(),
        &format!("[repo]\nbranch = {}\n", toml_string(branch)),
    );
    let out = m.pullnix(&["sync", "--retry"]);
    assert_exit(&out, 2, "a branch name with URL parameters");
    assert_stderr_has(&out, "repo.branch", "the setting");
    assert_stderr_has(&out, "flake URL", "why");
    m.assert_settled_on(&g2, 2);
}

#[test]
fn an_input_the_commit_does_not_lock_is_not_resolved_on_the_device() {
    // A commit whose flake has an input but no flake.lock entry for it: nix must not resolve
    // the input on the device, to whatever it is there and then.
    let m = Machine::new("");
    let input = m.sys.scratch("unlocked-input");
    fs::write(input.join("payload"), "whatever is there at build time\n").unwrap();
    m.repo.commit("good unlocked");
    let flake = m.repo.work_tree().join("flake.nix");
    let text = fs::read_to_string(&flake).unwrap().replacen(
        "outputs = { self }:",
        &format!(
            "inputs.extra = {{ url = \"path:{}\"; flake = false; }};\n  outputs = {{ self, extra }}:",
            input.display()
        ),
        1,
    );
    fs::write(&flake, text).unwrap();
    let work = m.repo.work_tree();
    common::run_ok(common::git_in(work).args(["commit", "-q", "-am", "an unlocked input"]));
    common::run_ok(common::git_in(work).args(["push", "-q", "origin", "HEAD:refs/heads/main"]));
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "a flake with an unlocked input");
    assert_stderr_has(&out, "nix build --json --no-update-lock-file", "the flag");
    assert_stderr_has(&out, "lock file", "nix's reason");
    assert_untouched(&m);
    // `--no-write-lock-file` would make nix resolve the input and build (it turns the refusal,
    // --no-update-lock-file's too, into a warning): refused as configuration.
    m.reconfigure(
        &m.repo.file_url(),
        "[build]\nextra_args = [\"--no-write-lock-file\"]\n",
    );
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 2, "--no-write-lock-file in build.extra_args");
    assert_stderr_has(&out, "build.extra_args", "the setting");
    assert_stderr_has(&out, "--no-write-lock-file", "the flag");
    assert_untouched(&m);
}

#[test]
fn wrong_flake_dir_is_a_build_failure() {
    let m = Machine::new("[repo]\nflake_dir = \"hosts/nowhere\"\n");
    m.repo.commit("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "flake_dir without a flake");
    assert_stderr_has(&out, "hosts/nowhere", "the directory");
    assert_untouched(&m);
}

// --- the state file -----------------------------------------------------------------------------

/// Every command that reads the state must stop with exit 10 and leave the file byte for byte.
fn corrupt_state_is_left_alone(bytes: &[u8]) {
    let m = Machine::new("");
    m.commit_and_build("good 1");
    m.write_state(bytes);
    for args in [
        &["sync"][..],
        &["sync", "--retry"],
        &["status"],
        &["status", "--json"],
        &["confirm"],
        &["boot-check"],
        &["rollback"],
    ] {
        let out = m.pullnix(args);
        assert_exit(&out, 10, &format!("{args:?} with a corrupt state file"));
        assert_stderr_has(
            &out,
            &m.sys.state_file().display().to_string(),
            "the state file",
        );
        assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
        assert!(stdout_text(&out).is_empty(), "{}", describe_run(&out));
        assert_eq!(
            fs::read(m.sys.state_file()).unwrap(),
            bytes,
            "{args:?} changed the state file"
        );
    }
    assert_untouched(&m);
}

#[test]
fn truncated_state_file_is_left_alone() {
    corrupt_state_is_left_alone(b"{\"version\": 1, \"deployed\": {\"commit\": \"ab");
}

#[test]
fn garbage_state_file_is_left_alone() {
    corrupt_state_is_left_alone(b"\x00\x01 this is not json \xff\n");
}

#[test]
fn empty_state_file_is_left_alone() {
    corrupt_state_is_left_alone(b"");
}

#[test]
fn state_file_of_another_version_is_left_alone() {
    corrupt_state_is_left_alone(b"{\"version\": 99, \"deployed\": null, \"pending\": null}\n");
}

/// README, "Files": a pullnix reads what a newer one wrote (a self-update rolled back, a bad
/// pullnix reverted). The newer pullnix is played by extending this one's record with fields it
/// does not know, at the top and inside records (the upgrade); this pullnix (the downgrade) must
/// go on deploying, and write the fields back unchanged. (That what this pullnix writes is read
/// by the previous release is `state::tests::the_previous_release_reads_what_this_one_writes`.)
#[test]
fn state_written_by_a_newer_pullnix_is_read_and_kept() {
    let m = Machine::new("");
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    let mut state = m.state();
    state["future_setting"] = serde_json::json!({"kept": true});
    state["deployed"]["signed_by"] = serde_json::json!("ci@example.org");
    state["bad"] = serde_json::json!([
        {"commit": "0123456789abcdef0123456789abcdef01234567", "reason": "future", "at": 1, "source": "newer"}
    ]);
    m.write_state(&serde_json::to_vec_pretty(&state).unwrap());

    let out = m.pullnix(&["status", "--json"]);
    assert_exit(&out, 0, "status of a newer pullnix's record");
    // A failed build rewrites the record and leaves the deployment as it is.
    m.repo.commit("build-fail");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "sync with a newer pullnix's record");
    let state = m.state();
    assert_eq!(state["future_setting"]["kept"], true, "{state:#}");
    assert_eq!(json_str(&state, "/deployed/signed_by"), "ci@example.org");
    assert_eq!(json_str(&state, "/bad/0/source"), "newer");
    // And the next good commit deploys as usual.
    let (b, gb) = m.commit_and_build("good 2");
    m.sync_deploys(&b, &gb, 3);
    assert_eq!(m.state()["future_setting"]["kept"], true);
}

// --- what pullnix owns -------------------------------------------------------------------------

/// A kill, a power cut or a stray hand can leave the wrong kind of file where pullnix keeps its
/// repository, lock, journal or GC root: repaired (repository and lock made again, the others
/// moved aside), never an error on every run.
#[test]
fn what_pullnix_owns_is_repaired_when_it_is_the_wrong_kind_of_file() {
    let m = Machine::new("");
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    let dir = m.sys.state_dir();
    fs::remove_dir_all(dir.join("repo.git")).unwrap();
    fs::write(dir.join("repo.git"), "not a repository").unwrap();
    fs::remove_file(dir.join("lock")).unwrap();
    fs::create_dir_all(dir.join("lock/inside")).unwrap();
    fs::remove_file(dir.join("journal.jsonl")).unwrap();
    fs::create_dir(dir.join("journal.jsonl")).unwrap();
    fs::remove_file(dir.join("candidate")).unwrap();
    fs::create_dir(dir.join("candidate")).unwrap();
    let (b, gb) = m.commit_and_build("good 2");
    let out = m.sync_deploys(&b, &gb, 3);
    assert_stderr_has(&out, "moved it to", "the repair is logged");
    assert!(dir.join("repo.git/HEAD").is_file());
    assert!(dir.join("lock").is_file());
    assert!(
        fs::read_to_string(dir.join("journal.jsonl"))
            .unwrap()
            .contains(&b)
    );
    assert!(
        fs::symlink_metadata(dir.join("candidate"))
            .unwrap()
            .is_symlink()
    );
}

// --- the running system -------------------------------------------------------------------------

#[test]
fn missing_current_system_is_a_clear_error_and_changes_nothing() {
    let m = Machine::new("");
    m.commit_and_build("good 1");
    fs::remove_file(m.sys.current_system_link()).unwrap();
    let out = m.pullnix(&["sync"]);
    // README: a root without /run/current-system is a configuration error.
    assert_eq!(exit_code(&out), 2, "{}", describe_run(&out));
    assert_stderr_has(&out, "run/current-system", "the missing link");
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    assert_eq!(m.sys.current_system(), None);
    assert_eq!(m.sys.profile_generation(), Some(1));
    assert_eq!(m.sys.boot_default().as_deref(), Some(m.g1.as_path()));
    assert_eq!(m.sys.generations(), vec![1]);
    // Nothing was armed (a state file, if written at all, records no candidate).
    if let Some(state) = m.sys.state_json() {
        assert!(state["pending"].is_null(), "{state:#}");
        assert!(state["deployed"].is_null(), "{state:#}");
    }
}

/// A root prefix that does not exist is refused before anything is fetched, built or created.
#[test]
fn root_that_does_not_exist_is_refused_before_anything_happens() {
    let m = Machine::new("");
    m.commit_and_build("good 1");
    let root = m.sys.scratch("gone").join("no-such-root");
    for args in [&["sync"][..], &["confirm"], &["boot-check"], &["rollback"]] {
        let out = common::run(
            std::process::Command::new(env!("CARGO_BIN_EXE_pullnix"))
                .arg("--config")
                .arg(&m.config)
                .arg("--root")
                .arg(&root)
                .args(args)
                .env("HOME", m.sys.home()),
        );
        assert_exit(
            &out,
            2,
            &format!("{args:?} with a root that does not exist"),
        );
        assert_stderr_has(&out, "no-such-root", "the root");
        assert!(
            !stderr_text(&out).contains("fetching"),
            "{}",
            describe_run(&out)
        );
        assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
        assert!(!root.exists(), "{args:?} created {}", root.display());
    }
}

/// A store path that is not a NixOS system (no `bin/switch-to-configuration`) is a failed
/// build, like any other build that gives nothing deployable.
#[test]
fn toplevel_without_switch_to_configuration_is_a_build_failure() {
    let m = Machine::new("");
    let sha = m.repo.commit("no-switch");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "a toplevel without bin/switch-to-configuration");
    assert_stderr_has(&out, "switch-to-configuration", "what is missing");
    assert_untouched(&m);
    assert_eq!(json_str(&m.state(), "/failed_build/commit"), sha);
}

// --- the command line ---------------------------------------------------------------------------

#[test]
fn command_line_mistakes_are_usage_errors() {
    let m = Machine::new("");
    for (args, needle) in [
        (&["frobnicate"][..], "frobnicate"),
        (&["sync", "--force"], "--force"),
        (&["status", "--yaml"], "status"),
        (&["rollback", "--to", "x"], "\"x\""),
        (&["rollback", "--to"], "rollback"),
        (&["confirm", "now"], "now"),
        (&["boot-check", "--soon"], "--soon"),
        (&[], "no command"),
    ] {
        let out = m.pullnix(args);
        assert_exit(&out, 2, &format!("{args:?}"));
        assert_stderr_has(&out, needle, &format!("{args:?}"));
        assert_all_lines_prefixed(&out);
    }
    // `--config` without its value.
    let out = common::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .arg("sync")
            .arg("--config"),
    );
    assert_exit(&out, 2, "--config without a value");
    assert_stderr_has(&out, "--config", "the option");
    assert_untouched(&m);
    assert!(m.sys.state_json().is_none());
}

#[test]
fn help_and_version() {
    for flag in ["--help", "-h", "help"] {
        let out = common::run(std::process::Command::new(env!("CARGO_BIN_EXE_pullnix")).arg(flag));
        assert_exit(&out, 0, flag);
        let text = stdout_text(&out);
        for word in [
            "sync",
            "confirm",
            "boot-check",
            "rollback",
            "status",
            "--root",
        ] {
            assert!(text.contains(word), "{flag}: {word} missing in\n{text}");
        }
    }
    for flag in ["--version", "-V"] {
        let out = common::run(std::process::Command::new(env!("CARGO_BIN_EXE_pullnix")).arg(flag));
        assert_exit(&out, 0, flag);
        assert!(
            stdout_text(&out).contains(env!("CARGO_PKG_VERSION")),
            "{}",
            describe_run(&out)
        );
    }
}

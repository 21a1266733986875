//! `pullnix fleet`: the real binary talks to real OpenSSH servers on 127.0.0.1, one per "host",
//! and each host's remote pullnix is the real binary again, reading the state of a fake machine
//! root that the real binary deployed (`harness::Machine`). Hosts that are down, hang, or answer
//! nonsense are real too: a closed port, a listener that never speaks SSH, a remote command that
//! sleeps or prints text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    SshKeys, SshServer, TempDir, free_port, run, run_ok, run_with_timeout, stdout_text, toml_string,
};
use harness::{Machine, assert_all_lines_prefixed, assert_exit, assert_stderr_has, describe_run};

/// The remote command that makes a host's pullnix the one of `m`: the real binary with the
/// machine's config and root.
fn remote_pullnix(m: &Machine) -> String {
    let argv = [
        env!("CARGO_BIN_EXE_pullnix").to_owned(),
        "--config".into(),
        m.config.display().to_string(),
        "--root".into(),
        m.sys.root().display().to_string(),
    ];
    toml_list(&argv)
}

fn toml_list<S: AsRef<str>>(words: &[S]) -> String {
    let words: Vec<String> = words.iter().map(|w| toml_string(w.as_ref())).collect();
    format!("[{}]", words.join(", "))
}

/// An inventory whose `[defaults]` reach the test's servers (user, key, pinned host keys) with
/// `extra_defaults` added, and one `[hosts.NAME]` table per `(name, port, extra lines)`.
fn inventory(keys: &SshKeys, extra_defaults: &str, hosts: &[(&str, u16, String)]) -> PathBuf {
    let mut text = format!(
        "[defaults]\nuser = {}\nidentity = {}\nknown_hosts = {}\n{extra_defaults}\n",
        toml_string(&keys.user),
        toml_string(&keys.client_key().display().to_string()),
        toml_string(&keys.known_hosts().display().to_string()),
    );
    for (name, port, extra) in hosts {
        write!(
            text,
            "\n[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {port}\n{extra}\n"
        )
        .unwrap();
    }
    let path = keys.dir().join("hosts.toml");
    fs::write(&path, text).unwrap();
    path
}

/// `pullnix fleet ARGS… --inventory INVENTORY`, killed (and the test failed) after 60 s.
fn fleet(inventory: &Path, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .arg("fleet")
            .args(args)
            .arg("--inventory")
            .arg(inventory)
            .env_remove("PULLNIX_INVENTORY"),
        Duration::from_secs(60),
    )
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", describe_run(out)))
}

/// The table row that starts with `host`, split into its columns.
fn row(out: &Output, host: &str) -> Vec<String> {
    stdout_text(out)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host}\n{}", describe_run(out)))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A machine on which the real binary deployed `good 1` (generation 2); returns its commit.
fn deployed_machine() -> (Machine, String) {
    let m = Machine::new("");
    let (sha, system) = m.commit_and_build("good 1");
    m.sync_deploys(&sha, &system, 2);
    (m, sha)
}

#[test]
fn lists_the_inventory_as_a_table_and_as_json() {
    let keys = SshKeys::new();
    let inv = inventory(
        &keys,
        "",
        &[
            ("edge-02", 2202, String::new()),
            (
                "edge-01",
                22,
                "tags = [\"edge\", \"eu\"]\nuser = \"ops\"".into(),
            ),
        ],
    );
    let out = fleet(&inv, &["list"]);
    assert_exit(&out, 0, "fleet list");
    let text = stdout_text(&out);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let edge_02 = format!("{}@127.0.0.1:2202", keys.user);
    assert_eq!(
        lines,
        [
            vec!["HOST", "ADDRESS", "TAGS"],
            vec!["edge-01", "ops@127.0.0.1:22", "edge,eu"],
            vec!["edge-02", &edge_02, "-"],
        ],
        "{text}"
    );
    // Columns line up.
    let at = |l: &str| {
        l.find("ops@")
            .or_else(|| l.find(&edge_02))
            .or_else(|| l.find("ADDRESS"))
    };
    assert!(text.lines().map(at).all(|c| c == Some(9)), "{text}");
    let out = fleet(&inv, &["list", "--json"]);
    assert_exit(&out, 0, "fleet list --json");
    let list = json(&out);
    assert_eq!(list[0]["name"], "edge-01");
    assert_eq!(list[0]["tags"], serde_json::json!(["edge", "eu"]));
    assert_eq!(list[0]["user"], "ops");
    assert_eq!(list[1]["name"], "edge-02");
    assert_eq!(list[1]["port"], 2202);
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Without --inventory, $PULLNIX_INVENTORY names the file.
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .args(["fleet", "list"])
            .env("PULLNIX_INVENTORY", &inv),
        Duration::from_secs(60),
    );
    assert_exit(&out, 0, "fleet list with PULLNIX_INVENTORY");
    assert!(
        stdout_text(&out).contains("edge-02"),
        "{}",
        describe_run(&out)
    );
}

#[test]
fn status_of_every_host_comes_from_its_own_pullnix() {
    let keys = SshKeys::new();
    let (m1, sha) = deployed_machine();
    let m2 = Machine::new("");
    let (s1, s2) = (SshServer::start(&keys), SshServer::start(&keys));
    let inv = inventory(
        &keys,
        "timeout = 30",
        &[
            (
                "alpha",
                s1.port,
                format!("pullnix = {}", remote_pullnix(&m1)),
            ),
            (
                "beta",
                s2.port,
                format!("pullnix = {}", remote_pullnix(&m2)),
            ),
        ],
    );

    let out = fleet(&inv, &["status", "--all", "--json"]);
    assert_exit(&out, 0, "fleet status of two answering hosts");
    assert_all_lines_prefixed(&out);
    let all = json(&out);
    assert_eq!(
        all.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    // Exactly what each machine's pullnix says about itself.
    assert_eq!(all["alpha"], serde_json::json!({ "ok": m1.status_json() }));
    assert_eq!(all["beta"], serde_json::json!({ "ok": m2.status_json() }));
    assert_eq!(all["alpha"]["ok"]["deployed"]["commit"], sha.as_str());

    let out = fleet(&inv, &["status"]);
    assert_exit(&out, 0, "fleet status table");
    let header = stdout_text(&out).lines().next().unwrap().to_owned();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "HOST",
            "DEPLOYED",
            "LAST",
            "RESULT",
            "CHECKED",
            "PENDING",
            "ROLLBACKS",
            "ERROR"
        ]
    );
    let alpha = row(&out, "alpha");
    assert_eq!(alpha[1], sha[..10]);
    assert_eq!(alpha[2], "deployed");
    assert!(alpha[3].ends_with('s') && alpha[4] == "ago", "{alpha:?}");
    assert_eq!(alpha[5..], ["-", "0"]);
    assert_eq!(row(&out, "beta")[1..], ["-", "-", "never", "-", "0"]);

    // Named hosts only.
    let out = fleet(&inv, &["status", "--json", "beta"]);
    assert_exit(&out, 0, "fleet status of one host");
    assert_eq!(
        json(&out).as_object().unwrap().keys().collect::<Vec<_>>(),
        ["beta"]
    );
}

#[test]
fn a_host_that_is_down_or_answers_nonsense_fails_alone() {
    let keys = SshKeys::new();
    let (m, sha) = deployed_machine();
    let sshd = SshServer::start(&keys);
    let closed = free_port();
    let inv = inventory(
        &keys,
        "timeout = 20",
        &[
            ("up", sshd.port, format!("pullnix = {}", remote_pullnix(&m))),
            ("down", closed, String::new()),
            // A host whose "pullnix" prints human text: never parsed as a status.
            (
                "talker",
                sshd.port,
                format!("pullnix = {}", toml_list(&["echo", "deployed: yes"])),
            ),
        ],
    );
    let started = Instant::now();
    let out = fleet(&inv, &["status", "--all", "--json"]);
    let took = started.elapsed();
    assert_exit(&out, 12, "fleet status with a host down");
    assert_all_lines_prefixed(&out);
    assert_stderr_has(
        &out,
        "some hosts failed: 2 of 3 hosts: down, talker",
        "summary",
    );
    // A refused connection is reported at once, not after the 20 s timeout.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let all = json(&out);
    assert_eq!(
        all["up"]["ok"]["deployed"]["commit"],
        sha.as_str(),
        "{all:#}"
    );
    let down = all["down"]["error"].as_str().unwrap();
    assert!(
        down.starts_with("ssh failed:") && down.contains("Connection refused"),
        "{down}"
    );
    assert!(all["down"].get("ok").is_none());
    let talker = all["talker"]["error"].as_str().unwrap();
    assert!(
        talker.contains("not `pullnix status --json` output"),
        "{talker}"
    );

    let out = fleet(&inv, &["status", "--all"]);
    assert_exit(&out, 12, "fleet status table with a host down");
    assert_eq!(row(&out, "up")[1], sha[..10]);
    let down = row(&out, "down");
    assert_eq!(down[1..6], ["-", "-", "-", "-", "-"]);
    assert_eq!(down[6..8], ["ssh", "failed:"]);
}

#[test]
fn a_host_that_hangs_is_cut_off_at_its_timeout() {
    let keys = SshKeys::new();
    let (m, sha) = deployed_machine();
    let sshd = SshServer::start(&keys);
    // Accepts TCP connections (the kernel does, into the backlog) but never speaks SSH.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let inv = inventory(
        &keys,
        "timeout = 2",
        &[
            (
                "up",
                sshd.port,
                format!("pullnix = {}\ntimeout = 30", remote_pullnix(&m)),
            ),
            // sshd lets us in, then the remote command sleeps: `sh -c 'sleep 30' -- status --json`.
            (
                "wedged",
                sshd.port,
                format!("pullnix = {}", toml_list(&["sh", "-c", "sleep 30", "--"])),
            ),
            ("silent", silent_port, String::new()),
        ],
    );
    let started = Instant::now();
    let out = fleet(&inv, &["status", "--all", "--json"]);
    let took = started.elapsed();
    assert_exit(&out, 12, "fleet status with a hanging host");
    // Both hang in parallel: the 2 s timeout plus slack for the rest, never the 30 s sleep.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let all = json(&out);
    assert_eq!(
        all["up"]["ok"]["deployed"]["commit"],
        sha.as_str(),
        "{all:#}"
    );
    assert_eq!(
        all["wedged"]["error"], "no answer within 2s (ssh was killed)",
        "{all:#}"
    );
    // ssh may give up on the banner itself (ConnectTimeout) just before being killed.
    let silent_error = all["silent"]["error"].as_str().unwrap();
    assert!(
        silent_error.starts_with("no answer within 2s") || silent_error.contains("timed out"),
        "{silent_error}"
    );

    // One at a time (`parallel = 1`), each hanging host still costs only its own timeout.
    let inv_text = fs::read_to_string(&inv).unwrap().replacen(
        "timeout = 2\n",
        "timeout = 2\nparallel = 1\n",
        1,
    );
    fs::write(&inv, inv_text).unwrap();
    let started = Instant::now();
    let out = fleet(&inv, &["status", "--all"]);
    let took = started.elapsed();
    assert_exit(&out, 12, "sequential fleet status with hanging hosts");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_eq!(row(&out, "up")[2], "deployed");
    drop(silent);
}

#[test]
fn refresh_runs_the_refresh_command_on_each_named_host() {
    // There is no systemd here, so the hosts' `refresh_command` (by default
    // `systemctl start --no-block pullnix.service`) is `touch FILE`: what is tested is fleet's
    // part, that the configured command reaches each host intact and its outcome comes back.
    let keys = SshKeys::new();
    let (s1, s2) = (SshServer::start(&keys), SshServer::start(&keys));
    let marks = TempDir::new("fleet-marks");
    // A space and a quote: the remote shell must see one argument.
    let mark = |h: &str| marks.join(format!("refresh of {h}'s pullnix"));
    let touch = |h: &str| {
        format!(
            "refresh_command = {}",
            toml_list(&["touch", &mark(h).display().to_string()])
        )
    };
    let inv = inventory(
        &keys,
        "",
        &[
            ("a", s1.port, touch("a")),
            ("b", s2.port, touch("b")),
            ("c", s2.port, touch("c")),
            ("gone", free_port(), touch("gone")),
        ],
    );

    let out = fleet(&inv, &["refresh", "a", "c"]);
    assert_exit(&out, 0, "fleet refresh of two hosts");
    assert_all_lines_prefixed(&out);
    assert!(
        mark("a").exists() && mark("c").exists(),
        "{}",
        describe_run(&out)
    );
    assert!(!mark("b").exists(), "refreshed a host that was not named");
    assert_eq!(row(&out, "a")[1], "requested");
    assert_eq!(row(&out, "c")[1], "requested");

    let out = fleet(&inv, &["refresh", "--all", "--json"]);
    assert_exit(&out, 12, "fleet refresh with a host down");
    let all = json(&out);
    for h in ["a", "b", "c"] {
        assert_eq!(all[h], serde_json::json!({"ok": true}), "{all:#}");
        assert!(mark(h).exists());
    }
    assert!(
        all["gone"]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{all:#}"
    );

    // A remote command that fails is reported with its status and stderr.
    let inv_text = fs::read_to_string(&inv).unwrap().replace(
        "[defaults]\n",
        &format!(
            "[defaults]\nrefresh_command = {}\n",
            toml_list(&[
                "sh",
                "-c",
                "echo 'Unit pullnix.service not found.' >&2; exit 5"
            ])
        ),
    );
    let inv_text = inv_text.replace(&touch("b"), "");
    fs::write(&inv, inv_text).unwrap();
    let out = fleet(&inv, &["refresh", "b"]);
    assert_exit(&out, 12, "fleet refresh where the command fails");
    assert_eq!(
        row(&out, "b")[1..],
        "failed remote command exited with status 5: Unit pullnix.service not found."
            .split_whitespace()
            .collect::<Vec<_>>()
    );
}

#[test]
fn tags_select_the_hosts_that_carry_them_and_no_others() {
    let keys = SshKeys::new();
    let m = Machine::new("");
    let sshd = SshServer::start(&keys);
    let marks = TempDir::new("fleet-tag-marks");
    let mark = |h: &str| marks.join(h);
    // Every reachable host answers both commands; `spare` is a closed port, so contacting it
    // would show up as an error entry and exit 12.
    let host = |tags: &str, h: &str| {
        format!(
            "tags = {tags}\npullnix = {}\nrefresh_command = {}",
            remote_pullnix(&m),
            toml_list(&["touch", &mark(h).display().to_string()])
        )
    };
    let inv = inventory(
        &keys,
        "timeout = 30",
        &[
            ("edge-1", sshd.port, host("[\"edge\"]", "edge-1")),
            ("edge-2", sshd.port, host("[\"edge\", \"eu\"]", "edge-2")),
            ("core-1", sshd.port, host("[\"core\"]", "core-1")),
            ("spare", free_port(), "tags = [\"spare\"]".into()),
        ],
    );
    let keys_of =
        |out: &Output| -> Vec<String> { json(out).as_object().unwrap().keys().cloned().collect() };

    let out = fleet(&inv, &["status", "--json", "--tag", "edge"]);
    assert_exit(&out, 0, "fleet status --tag edge");
    assert_all_lines_prefixed(&out);
    assert_eq!(keys_of(&out), ["edge-1", "edge-2"]);
    assert_eq!(
        json(&out)["edge-2"],
        serde_json::json!({ "ok": m.status_json() })
    );

    // Tags and names add up; a host selected twice is contacted once.
    let out = fleet(
        &inv,
        &["status", "--json", "--tag=eu", "core-1", "--tag", "edge"],
    );
    assert_exit(&out, 0, "fleet status by tags and a name");
    assert_eq!(keys_of(&out), ["core-1", "edge-1", "edge-2"]);

    let out = fleet(&inv, &["refresh", "--tag", "core", "--tag", "eu"]);
    assert_exit(&out, 0, "fleet refresh --tag core --tag eu");
    assert_eq!(row(&out, "core-1")[1], "requested");
    assert_eq!(row(&out, "edge-2")[1], "requested");
    assert!(mark("core-1").exists() && mark("edge-2").exists());
    assert!(
        !mark("edge-1").exists(),
        "refreshed a host without the tags"
    );
    assert_eq!(
        stdout_text(&out).lines().count(),
        3,
        "{}",
        describe_run(&out)
    );

    let out = fleet(&inv, &["list", "--tag", "eu"]);
    assert_exit(&out, 0, "fleet list --tag eu");
    let hosts: Vec<String> = stdout_text(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(hosts, ["edge-2"], "{}", describe_run(&out));
    let out = fleet(&inv, &["list", "--json", "--tag", "edge"]);
    assert_exit(&out, 0, "fleet list --json --tag edge");
    let names: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["edge-1", "edge-2"], "{}", describe_run(&out));

    // A misspelt tag stops the command before any host is contacted, even with a good tag
    // next to it.
    fs::remove_file(mark("core-1")).unwrap();
    let out = fleet(&inv, &["refresh", "--tag", "core", "--tag", "egde"]);
    assert_exit(&out, 2, "fleet refresh with an unknown tag");
    assert_all_lines_prefixed(&out);
    assert_stderr_has(&out, "unknown tag \"egde\"", "the unknown tag");
    assert_stderr_has(&out, "core, edge, eu, spare", "the tags that exist");
    assert!(stdout_text(&out).is_empty(), "{}", describe_run(&out));
    assert!(!mark("core-1").exists(), "a host was contacted");
    let out = fleet(&inv, &["status", "--tag", "egde"]);
    assert_exit(&out, 2, "fleet status with an unknown tag");
    let out = fleet(&inv, &["list", "--tag", "egde"]);
    assert_exit(&out, 2, "fleet list with an unknown tag");
    let out = fleet(&inv, &["status", "--all", "--tag", "edge"]);
    assert_exit(&out, 2, "fleet status --all --tag");
}

/// The processes whose command line contains `marker`, by `pgrep -f`.
fn pids_matching(marker: &str) -> Vec<String> {
    stdout_text(&run(Command::new("pgrep").args(["-f", "--", marker])))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Kills (by id) what is left of the remote commands a test started, even when it fails.
struct Lingering<'a>(&'a [String]);

impl Drop for Lingering<'_> {
    fn drop(&mut self) {
        for marker in self.0 {
            for pid in pids_matching(marker) {
                let _ = run(Command::new("kill").args(["-KILL", &pid]));
            }
        }
    }
}

#[test]
fn a_hung_remote_command_does_not_outlive_its_timeout() {
    let keys = SshKeys::new();
    let sshd = SshServer::start(&keys);
    // `sleep` under a name of its own, so that `pgrep -f` finds both the remote shell and the
    // sleep it started (a survivor of either would be the leak).
    let dir = TempDir::new("fleet-linger");
    let sleep = run_ok(Command::new("sh").args(["-c", "command -v sleep"]));
    let markers: Vec<String> = ["bounded", "unbounded"]
        .iter()
        .map(|k| {
            let path = dir.join(format!("pullnix-linger-{k}-{}", std::process::id()));
            std::os::unix::fs::symlink(sleep.trim(), &path).unwrap();
            path.display().to_string()
        })
        .collect();
    let _cleanup = Lingering(&markers);
    for m in &markers {
        // The renamed sleep must still be a sleep (a multi-call binary would not be).
        run_ok(Command::new(m).arg("0"));
        assert!(pids_matching(m).is_empty(), "{m} already runs");
    }
    let hang = |marker: &str| {
        format!(
            "pullnix = {}",
            toml_list(&["sh", "-c", &format!("{marker} 300; :"), "--"])
        )
    };
    let inv = inventory(
        &keys,
        "timeout = 2",
        &[
            // `remote_timeout` left at its default: on.
            ("bounded", sshd.port, hang(&markers[0])),
            (
                "unbounded",
                sshd.port,
                format!("{}\nremote_timeout = false", hang(&markers[1])),
            ),
        ],
    );
    let started = Instant::now();
    let out = fleet(&inv, &["status", "--all", "--json"]);
    assert_exit(&out, 12, "fleet status of hanging hosts");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{}",
        describe_run(&out)
    );
    let all = json(&out);
    for h in ["bounded", "unbounded"] {
        assert_eq!(
            all[h]["error"], "no answer within 2s (ssh was killed)",
            "{all:#}"
        );
    }
    // The remote limit is 3 s from when the command started, then SIGKILL 2 s later at most.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_matching(&markers[0]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the remote command outlived its timeout: {:?}",
            pids_matching(&markers[0])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without the wrapper, the disconnect alone leaves the command running: the shell and
    // its sleep are still there (this is what makes the check above mean something).
    assert_eq!(
        pids_matching(&markers[1]).len(),
        2,
        "the unwrapped remote command should still be running"
    );
}

#[test]
fn bad_inventory_or_host_name_is_a_usage_error() {
    let keys = SshKeys::new();
    let inv = inventory(&keys, "", &[("a", 22, "adress = \"x\"".into())]);
    let out = fleet(&inv, &["list"]);
    assert_exit(&out, 2, "inventory with an unknown key");
    assert_all_lines_prefixed(&out);
    assert_stderr_has(&out, "adress", "the unknown key");
    // [defaults] and its keys take 4 lines, two blank ones follow, then the host table: the
    // misspelt key is on line 10.
    assert_stderr_has(&out, "line 10", "the line of the unknown key");

    let inv = inventory(&keys, "", &[("a", 22, String::new())]);
    let out = fleet(&inv, &["status", "a", "nosuchhost"]);
    assert_exit(&out, 2, "status of a host not in the inventory");
    assert_stderr_has(&out, "unknown host \"nosuchhost\"", "the unknown host");
    assert!(stdout_text(&out).is_empty(), "{}", describe_run(&out));

    let out = fleet(&keys.dir().join("missing.toml"), &["list"]);
    assert_exit(&out, 2, "missing inventory");
    assert_stderr_has(&out, "missing.toml", "the file");

    let out = fleet(&inv, &["refresh"]);
    assert_exit(&out, 2, "refresh without hosts");
    assert_stderr_has(&out, "--all or host names", "what is missing");
}

#[test]
fn what_a_host_answers_never_reaches_the_terminal_raw() {
    // A host (or someone in control of it) answers with terminal escape sequences (an OSC 52
    // clipboard write, an 8-bit CSI) and a URL with a token, in its status JSON and on stderr.
    let keys = SshKeys::new();
    let sshd = SshServer::start(&keys);
    let marks = TempDir::new("fleet-hostile");
    let answer = marks.join("answer.json");
    fs::write(
        &answer,
        r#"{"host": "evil", "deployed": null, "pending": null, "rollbacks": 0, "last_check": null,
            "last": {"result": "deployed\u001b]52;c;cm0gLXJmIH4K\u0007", "commit": null, "at": 0,
                     "message": "fetching from https://deploy:s3cr3t@git.example.org/x.git \u009b2J"}}"#,
    )
    .unwrap();
    let cat = toml_list(&["sh", "-c", &format!("cat '{}'", answer.display()), "--"]);
    let noisy = toml_list(&[
        "sh",
        "-c",
        "printf 'boom\\033]52;c;cm0gLXJmIH4K\\a https://u:s3cr3t@h/x\\n' >&2; exit 1",
        "--",
    ]);
    let inv = inventory(
        &keys,
        "",
        &[
            ("evil", sshd.port, format!("pullnix = {cat}")),
            ("noisy", sshd.port, format!("pullnix = {noisy}")),
        ],
    );
    for args in [&["status", "--all"][..], &["status", "--all", "--json"]] {
        let out = fleet(&inv, args);
        assert_exit(&out, 12, "fleet status with a failing host");
        let text = stdout_text(&out);
        for (bad, what) in [('\u{1b}', "ESC"), ('\u{7}', "BEL"), ('\u{9b}', "8-bit CSI")] {
            assert!(
                !text.contains(bad),
                "{args:?}: raw {what} on stdout:\n{text:?}"
            );
        }
        assert!(!text.contains("s3cr3t"), "{args:?}: {text}");
        assert!(!common::stderr_text(&out).contains("s3cr3t"));
        if args.contains(&"--json") {
            // Still the same JSON, only escaped.
            let all = json(&out);
            assert_eq!(
                all["evil"]["ok"]["last"]["result"],
                "deployed\u{1b}]52;c;cm0gLXJmIH4K\u{7}"
            );
            assert!(
                all["noisy"]["error"].as_str().unwrap().contains("boom"),
                "{all:#}"
            );
        } else {
            assert!(text.contains("deployed\\u{1b}]52"), "{text}");
        }
    }
}

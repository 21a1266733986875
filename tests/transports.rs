//! The same deployment over every transport pullnix supports: `file://`, a plain path, `git://`
//! (git daemon), smart HTTP (lighttpd + git-http-backend) and `ssh://` against a real OpenSSH
//! server on 127.0.0.1 that accepts only the configured deploy key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FlakeRepo, GitDaemon, HttpGit, SSHD, TempDir, ensure_sshd, run, run_ok};
use harness::{
    Machine, assert_all_lines_prefixed, assert_exit, assert_stderr_has, describe_run, json_str,
    log_line, nix_builds,
};

/// Deploys two commits one after the other over whatever URL `m` is configured with, with a
/// no-op poll in between: the first fetch clones, the later ones fetch incrementally, and the
/// `health.remote` check talks to the same remote during each confirmation.
fn deploys_twice(m: &Machine) {
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "no-op poll");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    let (b, gb) = m.commit_and_build("good 2");
    m.sync_deploys(&b, &gb, 3);
    assert_eq!(
        m.sys.switch_log(),
        vec![
            log_line("test", &ga),
            log_line("boot", &ga),
            log_line("test", &gb),
            log_line("boot", &gb),
        ]
    );
}

#[test]
fn deploys_over_a_file_url() {
    let m = Machine::new("");
    deploys_twice(&m);
}

#[test]
fn deploys_from_a_plain_path() {
    let repo = FlakeRepo::new();
    let m = Machine::with_repo(repo, |r| r.bare().display().to_string(), "");
    deploys_twice(&m);
}

#[test]
fn deploys_over_git_daemon() {
    let repo = FlakeRepo::new();
    let daemon = GitDaemon::start(&repo);
    let url = daemon.url().to_owned();
    let m = Machine::with_repo(repo, |_| url, "");
    deploys_twice(&m);
}

#[test]
fn deploys_over_smart_http() {
    let repo = FlakeRepo::new();
    let http = HttpGit::start(&repo);
    let url = http.url().to_owned();
    let m = Machine::with_repo(repo, |_| url, "");
    deploys_twice(&m);
    assert!(
        !http.error_log().contains("error"),
        "lighttpd: {}",
        http.error_log()
    );
}

#[test]
fn deploys_a_flake_in_a_subdirectory_for_another_host() {
    let mut repo = FlakeRepo::with_flake_dir("hosts/fleet");
    repo.set_host("edge-01");
    let m = Machine::with_repo(
        repo,
        FlakeRepo::file_url,
        "host = \"edge-01\"\n[repo]\nflake_dir = \"hosts/fleet\"\n",
    );
    assert!(m.g1.to_string_lossy().ends_with("-nixos-system-edge-01"));
    deploys_twice(&m);
}

#[test]
fn remote_that_stops_answering_fails_the_fetch_and_changes_nothing() {
    let repo = FlakeRepo::new();
    let mut daemon = GitDaemon::start(&repo);
    let url = daemon.url().to_owned();
    let m = Machine::with_repo(repo, |_| url.clone(), "");
    let (a, ga) = m.commit_and_build("good 1");
    m.sync_deploys(&a, &ga, 2);
    m.commit_and_build("good 2");
    daemon.stop();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "fetch from a stopped git daemon");
    assert_stderr_has(&out, &url, "the remote");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    m.assert_settled_on(&ga, 2);
    let state = m.state();
    assert_eq!(
        json_str(&state, "/last/result"),
        "fetch-failed",
        "{state:#}"
    );
    assert_eq!(json_str(&state, "/deployed/commit"), a);
}

#[test]
fn remote_that_goes_away_during_the_confirmation_window_fails_the_health_check() {
    let repo = FlakeRepo::new();
    let mut daemon = GitDaemon::start(&repo);
    let url = daemon.url().to_owned();
    let m = Machine::with_repo(
        repo,
        |_| url.clone(),
        "[confirm]\ntimeout = 3\ninterval = 1\n",
    );
    let (sha, candidate) = m.commit_and_build("good 1");
    // Stop right after activation (fault injection), take the remote away, then confirm.
    let out = common::run_with_timeout(
        common::pullnix_command(&m.sys, &m.config, &["sync"])
            .env("PULLNIX_CRASH_AT", "sync.activated"),
        common::PULLNIX_TIMEOUT,
    );
    assert!(
        out.status.code().is_none(),
        "not killed at sync.activated\n{}",
        describe_run(&out)
    );
    assert_eq!(m.sys.current_system().as_deref(), Some(candidate.as_path()));
    daemon.stop();
    let out = m.pullnix(&["confirm"]);
    assert_exit(&out, 9, "confirmation while the remote does not answer");
    assert_stderr_has(&out, &url, "the remote");
    assert_eq!(
        m.sys.switch_log(),
        vec![log_line("test", &candidate), log_line("test", &m.g1)]
    );
    m.assert_settled_on(&m.g1, 1);
    let state = m.state();
    assert_eq!(harness::bad_commits(&state), vec![sha], "{state:#}");
}

// --- ssh ----------------------------------------------------------------------------------------

/// A real `sshd -D` on 127.0.0.1 with its own host key, accepting only `deploy_key` for the
/// current user; killed on drop.
struct Sshd {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    user: String,
}

impl Sshd {
    fn start() -> Sshd {
        ensure_sshd();
        let dir = TempDir::new("sshd");
        for key in ["host_key", "deploy_key", "stranger_key"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(dir.join(key)),
            );
        }
        fs::copy(dir.join("deploy_key.pub"), dir.join("authorized_keys")).unwrap();
        let user = run_ok(Command::new("id").arg("-un")).trim().to_owned();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {dir}/host_key\n\
                 PidFile none\n\
                 AuthorizedKeysFile {dir}/authorized_keys\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers {user}\n\
                 LogLevel VERBOSE\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let known_hosts = dir.join("known_hosts");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            fs::write(
                &known_hosts,
                format!(
                    "[127.0.0.1]:{port} {}",
                    fs::read_to_string(dir.join("host_key.pub")).unwrap()
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join(format!("sshd-{port}.log"))).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .arg("-p")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("cannot start sshd");
            let probe = || {
                run(&mut ssh_command(
                    &dir.join("deploy_key"),
                    &known_hosts,
                    port,
                    &user,
                ))
                .status
                .success()
            };
            if wait_until_serving(&mut child, port, &probe) {
                return Sshd {
                    child: Some(child),
                    port,
                    dir,
                    user,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start serving");
    }

    fn deploy_key(&self) -> PathBuf {
        self.dir.join("deploy_key")
    }

    /// A valid key that is not in `authorized_keys`.
    fn stranger_key(&self) -> PathBuf {
        self.dir.join("stranger_key")
    }

    /// `[127.0.0.1]:PORT <host key>`.
    fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// A `known_hosts` file that names this server with another key: a man in the middle, as
    /// far as ssh knows.
    fn wrong_known_hosts(&self) -> PathBuf {
        let wrong = self.dir.join("wrong_known_hosts");
        fs::write(
            &wrong,
            format!(
                "[127.0.0.1]:{} {}",
                self.port,
                fs::read_to_string(self.dir.join("stranger_key.pub")).unwrap()
            ),
        )
        .unwrap();
        wrong
    }

    /// `ssh://USER@127.0.0.1:PORT/ABS/PATH/NAME.git`.
    fn url(&self, repo: &FlakeRepo) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.bare().display()
        )
    }

    /// The config overlay for an ssh remote: the deploy key and the `known_hosts` file.
    fn repo_toml(key: &Path, known_hosts: &Path) -> String {
        format!(
            "[repo]\ndeploy_key = {}\nknown_hosts = {}\n",
            common::toml_string(&key.display().to_string()),
            common::toml_string(&known_hosts.display().to_string())
        )
    }

    /// What sshd logged (to stderr, `-e`).
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join(format!("sshd-{}.log", self.port))).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for sshd on `port`, then proves the server is ours with `probe` (our host key,
/// checked strictly against our `known_hosts`, and our deploy key get us in).
fn wait_until_serving(child: &mut Child, port: u16, probe: &dyn Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let mut banner = [0u8; 8];
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            if stream.read_exact(&mut banner).is_err() || &banner != b"SSH-2.0-" {
                return false;
            }
            return probe();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `ssh … USER@127.0.0.1 true` with `key`, strict host key checking against `known_hosts`
/// and no prompts.
fn ssh_command(key: &Path, known_hosts: &Path, port: u16, user: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(key)
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .arg("true");
    cmd
}

#[test]
fn deploys_over_ssh_with_the_deploy_key() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let m = Machine::with_repo(
        repo,
        |_| url,
        &Sshd::repo_toml(&sshd.deploy_key(), &sshd.known_hosts()),
    );
    let startup_log = sshd.log().len();
    deploys_twice(&m);
    // It really went through this sshd, with the deploy key, for the fetches and the
    // `health.remote` probes.
    let log = sshd.log();
    let accepted = log[startup_log..].matches("Accepted publickey").count();
    assert!(accepted >= 4, "{accepted} logins; sshd log:\n{log}");
}

#[test]
fn ssh_with_a_key_the_server_does_not_accept_fails_the_fetch() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let m = Machine::with_repo(
        repo,
        |_| url,
        &Sshd::repo_toml(&sshd.stranger_key(), &sshd.known_hosts()),
    );
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "ssh fetch with an unauthorised key");
    assert_stderr_has(&out, "Permission denied (publickey)", "ssh's reason");
    assert_all_lines_prefixed(&out);
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);
    let state = m.state();
    assert_eq!(json_str(&state, "/last/result"), "fetch-failed");
    assert!(
        json_str(&state, "/last/message").contains("Permission denied"),
        "{state:#}"
    );
}

#[test]
fn ssh_with_a_host_key_that_does_not_match_fails_the_fetch() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let wrong = sshd.wrong_known_hosts();
    let m = Machine::with_repo(repo, |_| url, &Sshd::repo_toml(&sshd.deploy_key(), &wrong));
    m.commit_and_build("good 1");
    let startup_log = sshd.log().len();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "ssh fetch from a server with an unknown host key");
    assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);
    assert!(
        !sshd.log()[startup_log..].contains("Accepted publickey"),
        "authenticated despite the host key mismatch:\n{}",
        sshd.log()
    );
}

#[test]
fn ssh_without_a_deploy_key_says_so() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let kh = common::toml_string(&sshd.known_hosts().display().to_string());
    let m = Machine::with_repo(repo, |_| url, &format!("[repo]\nknown_hosts = {kh}\n"));
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "ssh without a deploy key");
    assert_stderr_has(&out, "repo.deploy_key", "the missing setting");
    assert!(m.sys.switch_log().is_empty());
    m.assert_settled_on(&m.g1, 1);
}

#[test]
fn ssh_host_key_failure_is_reported_in_the_log_and_the_state() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let wrong = sshd.wrong_known_hosts();
    let m = Machine::with_repo(repo, |_| url, &Sshd::repo_toml(&sshd.deploy_key(), &wrong));
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "ssh fetch from a server with an unknown host key");
    // ssh's own words reach the admin through pullnix's log, not around it...
    assert_all_lines_prefixed(&out);
    // ...and the record `pullnix status` shows says what went wrong.
    let state = m.state();
    assert!(
        json_str(&state, "/last/message").contains("Host key verification failed"),
        "{state:#}"
    );
}

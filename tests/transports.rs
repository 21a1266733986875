//! The same deployment over every transport pullnix supports: `file://`, a plain path, `git://`
//! (git daemon), smart HTTP (lighttpd + git-http-backend) and `ssh://` against a real OpenSSH
//! server on 127.0.0.1 that accepts only the configured deploy key.
//!
//! git:// and http:// are plain text: pullnix refuses them without signed commits unless
//! `repo.insecure_plaintext_without_signatures` says otherwise. The tests of the transports
//! themselves set it ([`PLAIN`]); signed commits are `signed_commits.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use common::{FlakeRepo, GitDaemon, HttpGit, Sshd};
use harness::{
    Machine, assert_all_lines_prefixed, assert_exit, assert_stderr_has, describe_run, json_str,
    log_line, nix_builds,
};

/// The opt-out for plain-text remotes, for tests about the transport itself.
const PLAIN: &str = "[repo]\ninsecure_plaintext_without_signatures = true\n";

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
    let m = Machine::with_repo(repo, |_| url, PLAIN);
    deploys_twice(&m);
}

#[test]
fn deploys_over_smart_http() {
    let repo = FlakeRepo::new();
    let http = HttpGit::start(&repo);
    let url = http.url().to_owned();
    let m = Machine::with_repo(repo, |_| url, PLAIN);
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
    let m = Machine::with_repo(repo, |_| url.clone(), PLAIN);
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
        &format!("{PLAIN}[confirm]\ntimeout = 3\ninterval = 1\n"),
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

// The server is `common::Sshd`.

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

// --- the safe defaults of each transport ---------------------------------------------------------

#[test]
fn plain_text_remotes_without_signed_commits_are_refused() {
    // Anyone on the network path can answer for a git:// or http:// remote: without
    // `repo.allowed_signers` whatever they serve would be deployed as root.
    let repo = FlakeRepo::new();
    let daemon = GitDaemon::start(&repo);
    let http = HttpGit::start(&repo);
    let m = Machine::with_repo(repo, |_| daemon.url().to_owned(), "");
    m.commit_and_build("good 1");
    for url in [daemon.url(), http.url()] {
        m.reconfigure(url, "");
        let out = m.pullnix(&["sync"]);
        assert_exit(&out, 2, url);
        assert_stderr_has(&out, "repo.allowed_signers", "the remedy");
        assert_stderr_has(&out, "insecure_plaintext_without_signatures", "the opt-out");
        assert_eq!(nix_builds(&out), 0, "{}", describe_run(&out));
        assert!(
            !m.sys.state_dir().join("repo.git").exists(),
            "fetched anyway"
        );
        m.assert_settled_on(&m.g1, 1);
    }
}

#[test]
fn ssh_without_a_host_key_pin_is_refused_unless_the_risk_is_accepted_by_name() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let key = common::toml_string(&sshd.deploy_key().display().to_string());
    let m = Machine::with_repo(
        repo,
        |_| url.clone(),
        &format!("[repo]\ndeploy_key = {key}\n"),
    );
    let (a, ga) = m.commit_and_build("good 1");
    let startup_log = sshd.log().len();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 2, "ssh without known_hosts");
    assert_stderr_has(&out, "repo.known_hosts", "the remedy");
    assert_stderr_has(&out, "insecure_accept_new_host_keys", "the opt-out");
    assert!(
        !sshd.log()[startup_log..].contains("Connection from"),
        "contacted the server anyway:\n{}",
        sshd.log()
    );
    m.assert_settled_on(&m.g1, 1);

    // Trust on first use, asked for by name: the first host key is accepted and remembered
    // in pullnix's own file (not root's ~/.ssh/known_hosts), and checked from then on.
    m.reconfigure(
        &url,
        &format!("[repo]\ndeploy_key = {key}\ninsecure_accept_new_host_keys = true\n"),
    );
    m.sync_deploys(&a, &ga, 2);
    let remembered =
        std::fs::read_to_string(m.sys.state_dir().join("known_hosts.accepted")).unwrap();
    let host_key = std::fs::read_to_string(sshd.known_hosts()).unwrap();
    let host_key: Vec<&str> = host_key.split_whitespace().skip(1).take(2).collect();
    assert!(remembered.contains(&host_key.join(" ")), "{remembered}");
    // Another server on the same address and port now is a mismatch, not a new first use.
    let wrong = std::fs::read_to_string(sshd.wrong_known_hosts()).unwrap();
    std::fs::write(m.sys.state_dir().join("known_hosts.accepted"), wrong).unwrap();
    m.commit_and_build("good 2");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "a host key other than the one accepted first");
    assert_stderr_has(&out, "Host key verification failed", "ssh's reason");
}

#[test]
fn every_spelling_of_ssh_gets_the_deploy_key_the_pin_and_the_key_checks() {
    // git accepts `git+ssh://` and `ssh+git://` as ssh; so does gix. They must not fall back to
    // plain `ssh` with root's own keys and known_hosts.
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let m = Machine::with_repo(
        repo,
        |_| url.clone(),
        &Sshd::repo_toml(&sshd.deploy_key(), &sshd.known_hosts()),
    );
    let mut generation = 1;
    for scheme in ["git+ssh", "ssh+git"] {
        let spelled = url.replacen("ssh", scheme, 1);
        m.reconfigure(
            &spelled,
            &Sshd::repo_toml(&sshd.deploy_key(), &sshd.known_hosts()),
        );
        let (sha, system) = m.commit_and_build(&format!("good {scheme}"));
        generation += 1;
        let logins = sshd.log().matches("Accepted publickey").count();
        m.sync_deploys(&sha, &system, generation);
        // Through this sshd, with the deploy key (there is no other key to offer).
        assert!(sshd.log().matches("Accepted publickey").count() > logins);

        // The pin holds: another host key is refused.
        m.reconfigure(
            &spelled,
            &Sshd::repo_toml(&sshd.deploy_key(), &sshd.wrong_known_hosts()),
        );
        m.commit_and_build(&format!("good {scheme} 2"));
        let out = m.pullnix(&["sync"]);
        assert_exit(&out, 4, "a host key that does not match the pin");
        // The key check holds: a key others can read is refused before ssh runs.
        let loose = m.sys.scratch("keys").join(format!("{scheme}-key"));
        std::fs::copy(sshd.deploy_key(), &loose).unwrap();
        std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        m.reconfigure(&spelled, &Sshd::repo_toml(&loose, &sshd.known_hosts()));
        let out = m.pullnix(&["sync"]);
        assert_exit(&out, 4, "a deploy key others can read");
        assert_stderr_has(&out, "chmod 600", "the fix");
        // Put the last commit back to something deployable for the next spelling.
        m.repo.force_push_reset(&sha);
    }
}

#[test]
fn a_deploy_key_of_another_user_is_refused_even_through_a_symlink() {
    let sshd = Sshd::start();
    let repo = FlakeRepo::new();
    let url = sshd.url(&repo);
    let m = Machine::with_repo(repo, |_| url, "");
    // A key the server accepts, but another user's (0600, theirs), reached through a link
    // where root looks: its owner can swap it for whatever key they like at any time.
    let theirs = m.sys.scratch("other-user").join("id_ed25519");
    std::fs::copy(sshd.deploy_key(), &theirs).unwrap();
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    common::run_ok(
        std::process::Command::new("chown")
            .arg("65534")
            .arg(&theirs),
    );
    let link = m.sys.scratch("keys").join("deploy-key");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    m.reconfigure(
        &sshd.url(&m.repo),
        &Sshd::repo_toml(&link, &sshd.known_hosts()),
    );
    m.commit_and_build("good 1");
    let startup_log = sshd.log().len();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 4, "another user's deploy key");
    assert_stderr_has(&out, "belongs to uid 65534", "why");
    assert!(!sshd.log()[startup_log..].contains("Connection from"));
    m.assert_settled_on(&m.g1, 1);
}

//! The vulnerability gate end to end: the real pullnix runs the real vulnix 1.10.1 against a
//! local NVD mirror serving crafted advisories (`tests/common`: CVE-2099-0001, CVSS 9.8, against
//! `openssl-1.0.1` in the `vuln` variant; CVE-2099-0002, CVSS 3.1, against `fixturelib-2.0.1`
//! in `lowvuln`). A blocked candidate is never activated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::net::TcpListener;

use common::{CRITICAL, DECOY, LOW, NvdMirror, toml_string, vulnix_whitelist};
use harness::{
    Machine, assert_all_lines_prefixed, assert_exit, assert_stderr_has, bad_commits, describe_run,
    json_str, nix_builds,
};

/// `[scan]` on, against `mirror` with a fresh cache, plus `extra` keys for the table.
fn scan_toml(mirror_url: &str, cache: &std::path::Path, extra: &str) -> String {
    format!(
        "[scan]\nenable = true\nmirror = {}\ncache_dir = {}\n{extra}",
        toml_string(mirror_url),
        toml_string(&cache.display().to_string())
    )
}

/// A machine that scans every candidate against `mirror` (fresh cache named `name`).
fn scanning_machine(mirror: &NvdMirror, name: &str, extra: &str) -> Machine {
    Machine::new(&scan_toml(
        &mirror.url(),
        &mirror.new_cache_dir(name),
        extra,
    ))
}

/// `sync` must be blocked by the scan: exit 7 naming `cve`, nothing activated, the commit
/// recorded as blocked and bad, and the next poll skipping it.
#[track_caller]
fn blocked(m: &Machine, sha: &str, cve: &str, package: &str) -> std::process::Output {
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 7, "sync of a vulnerable candidate");
    assert_all_lines_prefixed(&out);
    assert_stderr_has(&out, cve, "the CVE");
    assert_stderr_has(&out, package, "the package");
    assert_stderr_has(&out, "running: vulnix", "vulnix ran");
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
    assert_eq!(m.sys.generations(), vec![1]);
    let state = m.state();
    assert_eq!(json_str(&state, "/last/result"), "blocked", "{state:#}");
    assert_eq!(json_str(&state, "/last/commit"), sha);
    assert!(json_str(&state, "/last/message").contains(cve), "{state:#}");
    assert_eq!(bad_commits(&state), vec![sha.to_owned()], "{state:#}");
    assert!(state["deployed"].is_null(), "{state:#}");

    let again = m.pullnix(&["sync"]);
    assert_exit(&again, 0, "poll while the branch is at a blocked commit");
    assert_eq!(nix_builds(&again), 0, "{}", describe_run(&again));
    assert!(
        !common::stderr_text(&again).contains("running: vulnix"),
        "{}",
        describe_run(&again)
    );
    assert!(m.sys.switch_log().is_empty());
    out
}

#[test]
fn critical_cve_blocks_the_candidate_and_a_clean_commit_then_deploys() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(&mirror, "critical", "");
    let (sha, _) = m.commit_and_build("vuln");
    let out = blocked(&m, &sha, CRITICAL.cve, CRITICAL.package);
    assert_stderr_has(&out, "9.8", "the score");
    // The decoy (same product, other version) is not reported.
    assert!(
        !common::stderr_text(&out).contains(DECOY.cve),
        "{}",
        describe_run(&out)
    );

    // A clean commit on top passes the same gate and deploys.
    let (good, g2) = m.commit_and_build("good 1");
    let out = m.sync_deploys(&good, &g2, 2);
    assert_stderr_has(
        &out,
        "running: vulnix",
        "vulnix ran for the clean candidate",
    );
}

#[test]
fn low_cve_passes_the_default_threshold() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(&mirror, "low-default", "min_cvss = 7.0\n");
    let (sha, system) = m.commit_and_build("lowvuln");
    let out = m.sync_deploys(&sha, &system, 2);
    assert_stderr_has(&out, "running: vulnix", "vulnix ran");
}

#[test]
fn low_cve_blocks_under_a_strict_threshold() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(&mirror, "low-strict", "min_cvss = 3.0\n");
    let (sha, _) = m.commit_and_build("lowvuln");
    let out = blocked(&m, &sha, LOW.cve, LOW.package);
    assert_stderr_has(&out, "3.1", "the score");
}

#[test]
fn whitelisted_cve_does_not_block() {
    let mirror = NvdMirror::start();
    let m = Machine::new("");
    let wl = m.sys.scratch("vulnix").join("whitelist.toml");
    fs::write(
        &wl,
        vulnix_whitelist(CRITICAL.package, &[CRITICAL.cve], "accepted for the test"),
    )
    .unwrap();
    let extra = format!("whitelist = [{}]\n", toml_string(&wl.display().to_string()));
    m.reconfigure(
        &m.repo.file_url(),
        &scan_toml(&mirror.url(), &mirror.new_cache_dir("whitelisted"), &extra),
    );
    let (sha, system) = m.commit_and_build("vuln");
    m.sync_deploys(&sha, &system, 2);
}

#[test]
fn whitelist_for_another_cve_still_blocks() {
    let mirror = NvdMirror::start();
    let m = Machine::new("");
    let wl = m.sys.scratch("vulnix").join("whitelist.toml");
    fs::write(
        &wl,
        vulnix_whitelist(CRITICAL.package, &[DECOY.cve], "a different CVE"),
    )
    .unwrap();
    let extra = format!("whitelist = [{}]\n", toml_string(&wl.display().to_string()));
    m.reconfigure(
        &m.repo.file_url(),
        &scan_toml(&mirror.url(), &mirror.new_cache_dir("other-cve"), &extra),
    );
    let (sha, _) = m.commit_and_build("vuln");
    blocked(&m, &sha, CRITICAL.cve, CRITICAL.package);
}

/// A mirror URL nothing answers on.
fn dead_mirror_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/")
}

#[test]
fn unreachable_mirror_fails_closed() {
    let m = Machine::new("");
    let cache = m.sys.scratch("vulnix-cache");
    m.reconfigure(
        &m.repo.file_url(),
        &scan_toml(&dead_mirror_url(), &cache, ""),
    );
    // Even a clean candidate: without a report there is no verdict, and no verdict blocks.
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 7, "scan with an unreachable mirror");
    assert_all_lines_prefixed(&out);
    assert_stderr_has(&out, "vulnix gave no usable report", "fail closed");
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
    let state = m.state();
    // Not the commit's fault: it is not recorded bad, so the next poll scans it again.
    assert!(state["bad"].as_array().unwrap().is_empty(), "{state:#}");
    assert_eq!(json_str(&state, "/last/result"), "scan-failed", "{state:#}");
    assert!(
        json_str(&state, "/last/message").contains("no usable report"),
        "{state:#}"
    );
}

#[test]
fn missing_vulnix_fails_closed() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(
        &mirror,
        "missing",
        "vulnix = \"/nonexistent/pullnix-test/vulnix\"\n",
    );
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 7, "scan with a vulnix that does not exist");
    assert_stderr_has(&out, "/nonexistent/pullnix-test/vulnix", "the program");
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
}

#[test]
fn score_equal_to_the_threshold_blocks() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(&mirror, "boundary", "min_cvss = 9.8\n");
    let (sha, _) = m.commit_and_build("vuln");
    blocked(&m, &sha, CRITICAL.cve, CRITICAL.package);
}

#[test]
fn threshold_above_the_score_lets_it_through() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(&mirror, "above", "min_cvss = 9.9\n");
    let (sha, system) = m.commit_and_build("vuln");
    m.sync_deploys(&sha, &system, 2);
}

#[test]
fn vulnix_usage_error_fails_closed() {
    let mirror = NvdMirror::start();
    let m = scanning_machine(
        &mirror,
        "bad-args",
        "extra_args = [\"--pullnix-test-no-such-option\"]\n",
    );
    m.commit_and_build("good 1");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 7, "vulnix that rejects its command line");
    assert_stderr_has(
        &out,
        "--pullnix-test-no-such-option",
        "the argument reached vulnix",
    );
    assert_stderr_has(&out, "vulnix gave no usable report", "fail closed");
    assert!(m.sys.switch_log().is_empty(), "{:?}", m.sys.switch_log());
    m.assert_settled_on(&m.g1, 1);
}

#[test]
fn commit_blocked_by_a_scanner_outage_is_scanned_again_once_the_mirror_is_back() {
    let mirror = NvdMirror::start();
    let m = Machine::new("");
    let cache = mirror.new_cache_dir("outage");
    m.reconfigure(
        &m.repo.file_url(),
        &scan_toml(&dead_mirror_url(), &cache, ""),
    );
    let (sha, system) = m.commit_and_build("good 1");
    assert_exit(&m.pullnix(&["sync"]), 7, "scan with an unreachable mirror");
    // A broken scanner says nothing about the commit: it must not be condemned for it.
    assert!(bad_commits(&m.state()).is_empty(), "{:#}", m.state());

    m.reconfigure(&m.repo.file_url(), &scan_toml(&mirror.url(), &cache, ""));
    m.sync_deploys(&sha, &system, 2);
}

//! Closure mode: the commit pins a store path built and signed by CI; the device substitutes it
//! from a real `file://` binary cache with signature checks and evaluates nothing. Unsigned,
//! wrongly signed and tampered closures are refused by real Nix and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Cache, forget, toml_string, valid};
use harness::{Machine, assert_exit, assert_stderr_has, describe_run, json_str, nix_builds};

/// What CI does: build the host's system, publish it, and commit the pin. Returns the commit and
/// the pinned path (deleted from the local store, as on a device that never built it).
fn ci_publishes(m: &Machine, cache: &Cache, variant: &str, signed: bool) -> (String, PathBuf) {
    let (_, path) = m.repo.commit_and_build(variant);
    cache.publish(&path, signed);
    forget(&path);
    let dir = m.repo.work_tree().join("closures");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("testhost"),
        format!("# built by CI\n{}\n", path.display()),
    )
    .unwrap();
    let sha = m.repo.commit(variant);
    (sha, path)
}

fn closure_machine(cache: &Cache, trusted: &str) -> Machine {
    Machine::new(&format!(
        "[closure]\nenable = true\nsubstituters = [{}]\ntrusted_public_keys = [{}]\n",
        toml_string(&cache.url()),
        toml_string(trusted)
    ))
}

#[test]
fn signed_closure_is_substituted_and_deployed_without_evaluation() {
    let cache = Cache::new("ci-1");
    let m = closure_machine(&cache, &cache.public);
    let (sha, path) = ci_publishes(&m, &cache, "good closure-signed", true);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "signed closure");
    assert_eq!(nix_builds(&out), 0, "no evaluation: {}", describe_run(&out));
    assert_stderr_has(&out, "nix-store --realise", "substituted");
    assert_eq!(m.sys.current_system().as_deref(), Some(path.as_path()));
    assert_eq!(m.sys.profile_target().as_deref(), Some(path.as_path()));
    assert_eq!(json_str(&m.state(), "/deployed/commit"), sha);
}

fn assert_refused(m: &Machine, path: &Path, why: &str) {
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "refused closure");
    assert_stderr_has(&out, why, "nix's reason");
    assert!(!valid(path), "{} entered the store", path.display());
    assert!(m.sys.switch_log().is_empty(), "{}", describe_run(&out));
    assert_eq!(m.sys.current_system().as_deref(), Some(m.g1.as_path()));
    assert_eq!(m.sys.profile_generation(), Some(1));
    let state = m.state();
    assert_eq!(
        json_str(&state, "/last/result"),
        "build-failed",
        "{state:#}"
    );
    assert!(json_str(&state, "/last/message").contains(why), "{state:#}");
}

#[test]
fn unsigned_closure_is_refused() {
    let cache = Cache::new("ci-2");
    let m = closure_machine(&cache, &cache.public);
    let (_, path) = ci_publishes(&m, &cache, "good closure-unsigned", false);
    assert_refused(
        &m,
        &path,
        "is not signed by any of the keys in 'trusted-public-keys'",
    );
}

#[test]
fn closure_signed_by_an_untrusted_key_is_refused() {
    let cache = Cache::new("ci-3");
    let other = Cache::new("someone-else");
    let m = closure_machine(&cache, &other.public);
    let (_, path) = ci_publishes(&m, &cache, "good closure-untrusted", true);
    assert_refused(
        &m,
        &path,
        "is not signed by any of the keys in 'trusted-public-keys'",
    );
}

#[test]
fn tampered_narinfo_is_refused() {
    let cache = Cache::new("ci-4");
    let m = closure_machine(&cache, &cache.public);
    let (_, path) = ci_publishes(&m, &cache, "good closure-tampered", true);
    // Claim a different NAR size: the signature covers it.
    let narinfo = cache.narinfo(&path);
    let text = fs::read_to_string(&narinfo).unwrap();
    let tampered: String = text
        .lines()
        .map(|l| {
            if let Some(n) = l.strip_prefix("NarSize: ") {
                format!("NarSize: {}\n", n.parse::<u64>().unwrap() + 8)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(text, tampered);
    fs::write(&narinfo, tampered).unwrap();
    assert_refused(
        &m,
        &path,
        "is not signed by any of the keys in 'trusted-public-keys'",
    );
}

#[test]
fn swapped_nar_is_refused() {
    let cache = Cache::new("ci-5");
    let m = closure_machine(&cache, &cache.public);
    let (_, path) = ci_publishes(&m, &cache, "good closure-swapped", true);
    // Replace the NAR file the narinfo points at with another one of the cache's files.
    let narinfo = fs::read_to_string(cache.narinfo(&path)).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let (_, decoy) = m.repo.commit_and_build("good closure-decoy");
    let decoy_cache = Cache::new("decoy");
    decoy_cache.publish(&decoy, true);
    let decoy_info = fs::read_to_string(decoy_cache.narinfo(&decoy)).unwrap();
    let decoy_url = decoy_info
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    fs::copy(
        decoy_cache.store().join(decoy_url),
        cache.store().join(&url),
    )
    .unwrap();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "swapped NAR");
    assert!(!valid(&path), "{}", describe_run(&out));
    assert!(m.sys.switch_log().is_empty(), "{}", describe_run(&out));
    assert_eq!(m.sys.current_system().as_deref(), Some(m.g1.as_path()));
}

#[test]
fn missing_or_malformed_pin_is_a_clear_error() {
    let cache = Cache::new("ci-6");
    let m = closure_machine(&cache, &cache.public);
    // No closures/testhost in the commit.
    m.repo.commit("good closure-nopin");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "no pin file");
    assert_stderr_has(&out, "has no file closures/testhost", "names the file");
    // A pin that is not a store path.
    let dir = m.repo.work_tree().join("closures");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("testhost"), "/tmp/evil\n").unwrap();
    m.repo.commit("good closure-badpin");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "bad pin");
    assert_stderr_has(&out, "is not a /nix/store path", "why");
    assert!(m.sys.switch_log().is_empty());
}

#[test]
fn scanning_a_substituted_closure_fails_closed_and_says_why() {
    let cache = Cache::new("ci-7");
    let m = closure_machine(&cache, &cache.public);
    m.reconfigure(
        &m.repo.file_url(),
        &format!(
            "[closure]\nenable = true\nsubstituters = [{}]\ntrusted_public_keys = [{}]\n[scan]\nenable = true\nmirror = \"http://127.0.0.1:9/\"\n",
            toml_string(&cache.url()),
            toml_string(&cache.public)
        ),
    );
    let (_, path) = ci_publishes(&m, &cache, "good closure-scan", true);
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 7, "scan in closure mode");
    assert_stderr_has(&out, "scan in CI", "the remedy");
    assert!(m.sys.switch_log().is_empty());
    assert_eq!(m.sys.current_system().as_deref(), Some(m.g1.as_path()));
    // The closure itself was verified and fetched; only the scan stopped it.
    assert!(valid(&path));
}

#[test]
fn closure_mode_without_keys_is_a_config_error() {
    let m = Machine::new("[closure]\nenable = true\nsubstituters = [\"file:///nowhere\"]\n");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 2, "no trusted keys");
    assert_stderr_has(&out, "closure.trusted_public_keys", "names the key");
}

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
    assert_stderr_has(&out, "store verify --recursive", "and verified");
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

// --- paths that are already in the local store ---------------------------------------------------

/// Commits a pin of `path` (no cache involved: what a commit pushed by someone else could do).
fn commit_pin(m: &Machine, path: &Path, variant: &str) -> String {
    let dir = m.repo.work_tree().join("closures");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("testhost"), format!("{}\n", path.display())).unwrap();
    m.repo.commit(variant)
}

#[test]
fn a_system_built_locally_is_refused_although_it_is_valid_in_the_store() {
    // The attack: a local user builds a fake "system" through the nix-daemon (valid in the
    // store, signed by nobody), and a commit pins its path. `nix-store --realise` has nothing
    // to do for a valid path; the closure's signatures must be checked anyway.
    let cache = Cache::new("ci-local-1");
    let m = closure_machine(&cache, &cache.public);
    let (_, evil) = m.repo.commit_and_build("good closure-evil");
    assert!(valid(&evil));
    commit_pin(&m, &evil, "good closure-evil-pin");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "a locally built, unsigned system");
    assert_stderr_has(
        &out,
        "is not signed by any of closure.trusted_public_keys",
        "why",
    );
    assert_stderr_has(&out, "is untrusted", "nix's own word on the path");
    assert!(m.sys.switch_log().is_empty(), "{}", describe_run(&out));
    assert_eq!(m.sys.current_system().as_deref(), Some(m.g1.as_path()));
    assert_eq!(json_str(&m.state(), "/last/result"), "build-failed");
}

#[test]
fn a_content_addressed_path_is_refused_as_a_pin() {
    // Anyone may add a path by content (`nix-store --add-fixed`); nix counts it as signed by
    // itself, so `nix store verify` alone would pass it.
    let cache = Cache::new("ci-local-2");
    let m = closure_machine(&cache, &cache.public);
    let dir = m.sys.scratch("fake-system").join("system");
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("bin/switch-to-configuration"), "#!/bin/sh\nid\n").unwrap();
    fs::set_permissions(
        dir.join("bin/switch-to-configuration"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let added = common::run_ok(
        std::process::Command::new("nix-store")
            .args(["--add-fixed", "--recursive", "sha256"])
            .arg(&dir),
    );
    let added = PathBuf::from(added.trim());
    commit_pin(&m, &added, "good closure-ca-pin");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 6, "a content-addressed pin");
    assert_stderr_has(&out, "is content-addressed", "why");
    assert!(m.sys.switch_log().is_empty(), "{}", describe_run(&out));
}

/// A "system" (with `bin/switch-to-configuration`) whose closure holds `lib`, a dependency
/// whose contents are random: every build of the same derivation, at the same store path,
/// has other contents (as a local user's build of a non-reproducible package could).
/// `token` keeps the derivations of one test apart from every other test's.
fn system_with_random_lib(dir: &Path, token: &str) -> PathBuf {
    let expr = dir.join("system.nix");
    fs::write(
        &expr,
        format!(
            r#"let
  lib = derivation {{
    name = "random-lib-{token}"; system = "x86_64-linux"; builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" "head -c 32 /dev/urandom | od -An -tx1 > $out" ];
  }};
in derivation {{
  name = "nixos-system-testhost-{token}"; system = "x86_64-linux"; builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\n# uses %s\nexit 1\n' ${{lib}} > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration" ];
}}
"#
        ),
    )
    .unwrap();
    PathBuf::from(
        common::run_ok(
            std::process::Command::new("nix-build")
                .arg("--no-out-link")
                .arg(&expr),
        )
        .trim(),
    )
}

/// The dependency of `system` (its only reference).
fn only_dependency(system: &Path) -> PathBuf {
    let refs = common::run_ok(
        std::process::Command::new("nix-store")
            .args(["--query", "--references"])
            .arg(system),
    );
    refs.lines()
        .map(PathBuf::from)
        .find(|p| p != system)
        .unwrap()
}

#[test]
fn a_dependency_already_in_the_store_with_other_contents_is_refused() {
    // CI signs the system and its dependency. On the device the dependency's path is already
    // valid, built there (by anyone) with other contents: only the system is substituted, and
    // the signed system would run whatever that local path holds.
    let cache = Cache::new("ci-local-3");
    let m = closure_machine(&cache, &cache.public);
    let token = m
        .sys
        .root()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let system = system_with_random_lib(&m.sys.scratch("nix"), &token);
    let lib = only_dependency(&system);
    let signed_lib = fs::read(&lib).unwrap();
    cache.publish(&system, true);
    forget(&system);
    forget(&lib);
    // The local build of the same derivation: same path, other contents, no signature.
    let deriver = cache_deriver(&cache, &lib);
    common::run_ok(std::process::Command::new("nix-store").args(["--realise", &deriver]));
    assert!(valid(&lib) && fs::read(&lib).unwrap() != signed_lib);
    let sha = commit_pin(&m, &system, "good closure-dep-pin");
    let out = m.pullnix(&["sync"]);
    assert_exit(
        &out,
        6,
        "a signed system over a dependency with other contents",
    );
    assert_stderr_has(
        &out,
        &format!("path '{}' is untrusted", lib.display()),
        "which",
    );
    assert!(m.sys.switch_log().is_empty(), "{}", describe_run(&out));
    assert_eq!(m.sys.current_system().as_deref(), Some(m.g1.as_path()));
    assert_eq!(json_str(&m.state(), "/last/commit"), sha);
}

/// The `Deriver:` of `path` in the cache's narinfo, as a store path.
fn cache_deriver(cache: &Cache, path: &Path) -> String {
    let narinfo = fs::read_to_string(cache.narinfo(path)).unwrap();
    let name = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("Deriver: "))
        .unwrap();
    format!("/nix/store/{name}")
}

#[test]
fn a_dependency_built_here_with_the_contents_ci_signed_is_accepted() {
    // The ordinary case the check must not break: a path of the closure that is already in the
    // store unsigned, because it was built here (an installer's local build, say), with exactly
    // the contents CI signed. Its signature is found in the cache (`nix store verify -s`).
    let cache = Cache::new("ci-local-4");
    let m = closure_machine(&cache, &cache.public);
    let (sha, path) = ci_publishes(&m, &cache, "vuln closure-dep-same", true);
    let narinfo = fs::read_to_string(cache.narinfo(&path)).unwrap();
    let dep = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("References: "))
        .unwrap()
        .split_whitespace()
        .map(|r| PathBuf::from("/nix/store").join(r))
        .find(|r| r != &path)
        .expect("the vuln variant references its fake package");
    // CI built it here: valid, unsigned in the local store.
    assert!(valid(&dep) && !valid(&path));
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "a dependency with the signed contents");
    assert_eq!(m.sys.current_system().as_deref(), Some(path.as_path()));
    assert_eq!(json_str(&m.state(), "/deployed/commit"), sha);
}

#[test]
fn a_pin_back_to_an_older_closure_is_refused_unless_allowed() {
    let cache = Cache::new("ci-downgrade");
    let m = closure_machine(&cache, &cache.public);
    let (_, p2) = ci_publishes(&m, &cache, "good closure-down-2", true);
    assert_exit(&m.pullnix(&["sync"]), 0, "first closure");
    let (_, p3) = ci_publishes(&m, &cache, "good closure-down-3", true);
    assert_exit(&m.pullnix(&["sync"]), 0, "second closure");
    assert_eq!(m.sys.current_system().as_deref(), Some(p3.as_path()));
    // A new commit (a fast-forward) that pins the first closure again: signed, valid, and a
    // step back.
    let back = commit_pin(&m, &p2, "good closure-down-back");
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 5, "a pin back to an older closure");
    assert_stderr_has(&out, "closure.allow_downgrade", "the remedy");
    assert_stderr_has(&out, "a downgrade", "what it is");
    assert_eq!(m.sys.current_system().as_deref(), Some(p3.as_path()));
    assert_eq!(json_str(&m.state(), "/last/result"), "refused");
    // Allowed by name (a revert, say): deployed, its signatures checked again although the
    // closure is still in the store.
    m.reconfigure(
        &m.repo.file_url(),
        &format!("{}allow_downgrade = true\n", cache.closure_toml()),
    );
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "an allowed downgrade");
    assert_stderr_has(&out, "store verify --recursive", "checked again");
    assert_eq!(m.sys.current_system().as_deref(), Some(p2.as_path()));
    assert_eq!(json_str(&m.state(), "/deployed/commit"), back);
}

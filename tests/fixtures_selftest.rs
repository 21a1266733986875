//! Proves that the test fixtures in `tests/common` behave as documented, using only the real
//! tools (nix, nix-env, git, lighttpd, vulnix) and never the pullnix binary: when a pullnix
//! test fails, this file tells whether the fixture or pullnix is to blame.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    BUILD_ERROR_MESSAGE, CRITICAL, DECOY, EVAL_ERROR_MESSAGE, FlakeRepo, GitDaemon, HttpGit, LOW,
    NvdMirror, SWITCH_ERROR_MESSAGE, TempDir, TestSystem, git, git_in, nix_build, run, run_ok,
    toplevel_attr, vulnix_command, vulnix_whitelist, write_config,
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `"ACTION STOREPATH"`, the line switch-to-configuration logs.
fn log_line(action: &str, system: &Path) -> String {
    format!("{action} {}", system.display())
}

// --- the flake variants ------------------------------------------------------------------

#[test]
fn good_variant_builds_a_complete_system() {
    let repo = FlakeRepo::new();
    let (sha1, sys1) = repo.commit_and_build("good 1");
    for file in [
        "bin/switch-to-configuration",
        "nixos-version",
        "healthy",
        "variant",
        "init",
    ] {
        assert!(
            sys1.join(file).exists(),
            "{file} missing in {}",
            sys1.display()
        );
    }
    let mode = fs::metadata(sys1.join("bin/switch-to-configuration"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "switch-to-configuration is not executable");
    assert_eq!(read(&sys1.join("variant")), "good 1");
    assert!(sys1.to_string_lossy().ends_with("-nixos-system-testhost"));

    // The suffix makes a distinct system; the same text again the same one, from a new commit.
    let (sha2, sys2) = repo.commit_and_build("good 2");
    assert_ne!(sys1, sys2);
    let (sha3, sys3) = repo.commit_and_build("good 1");
    assert_eq!(sys1, sys3);
    assert_ne!(sha1, sha3);
    assert_eq!(repo.head().as_deref(), Some(sha3.as_str()));
    // Linear history: each commit descends from the previous one.
    run_ok(git_in(&repo.bare()).args(["merge-base", "--is-ancestor", &sha1, &sha2]));
    run_ok(git_in(&repo.bare()).args(["merge-base", "--is-ancestor", &sha2, &sha3]));
}

#[test]
fn degraded_variants_build_but_misbehave_later() {
    let repo = FlakeRepo::new();
    let (_, unhealthy) = repo.commit_and_build("health-fail");
    assert!(unhealthy.join("bin/switch-to-configuration").exists());
    assert!(
        !unhealthy.join("healthy").exists(),
        "health-fail must lack the marker"
    );

    let (_, broken) = repo.commit_and_build("switch-fail");
    assert!(broken.join("bin/switch-to-configuration").exists());
    assert!(broken.join("healthy").exists());
}

#[test]
fn build_fail_variant_fails_in_the_builder() {
    let repo = FlakeRepo::new();
    let sha = repo.commit("build-fail");
    let build = repo.build(&sha);
    assert!(!build.status.success());
    assert!(build.out.is_none());
    assert!(
        build.stderr.contains(BUILD_ERROR_MESSAGE),
        "stderr: {}",
        build.stderr
    );
    assert!(
        build.stderr.contains("failed with exit code 1"),
        "stderr: {}",
        build.stderr
    );
}

#[test]
fn eval_error_variant_throws_before_building() {
    let repo = FlakeRepo::new();
    let sha = repo.commit("eval-error");
    let build = repo.build(&sha);
    assert!(!build.status.success());
    assert!(
        build.stderr.contains(EVAL_ERROR_MESSAGE),
        "stderr: {}",
        build.stderr
    );
    assert!(
        !build.stderr.contains("building '"),
        "stderr: {}",
        build.stderr
    );
}

#[test]
fn missing_attr_variant_configures_another_host() {
    let repo = FlakeRepo::new();
    let sha = repo.commit("missing-attr");
    let build = repo.build(&sha);
    assert!(!build.status.success());
    assert!(
        build.stderr.contains("does not provide attribute"),
        "stderr: {}",
        build.stderr
    );
    // The flake itself is fine: it only configures a different host.
    let other = format!(
        "{}#{}",
        repo.flake_ref(&sha),
        toplevel_attr("other-testhost")
    );
    nix_build(&other, &repo.scratch("cache")).expect_out();
}

#[test]
fn host_name_and_flake_dir_are_configurable() {
    let mut repo = FlakeRepo::with_flake_dir("hosts/fleet");
    repo.set_host("edge-01");
    let sha = repo.commit("good");
    assert!(repo.work_tree().join("hosts/fleet/flake.nix").exists());
    assert!(repo.flake_ref(&sha).ends_with("&dir=hosts/fleet"));
    let system = repo.build(&sha).expect_out();
    assert!(system.to_string_lossy().ends_with("-nixos-system-edge-01"));
    let default_host = format!("{}#{}", repo.flake_ref(&sha), toplevel_attr("testhost"));
    assert!(
        !nix_build(&default_host, &repo.scratch("cache"))
            .status
            .success()
    );
}

/// The `.drv` closure vulnix walks (`nix-store -qR DRV`).
fn drv_closure(drv: &Path) -> String {
    run_ok(Command::new("nix-store").arg("-qR").arg(drv))
}

#[test]
fn vuln_variants_contain_the_fake_packages() {
    let repo = FlakeRepo::new();
    for (variant, package, absent) in [
        ("vuln", CRITICAL.package, LOW.package),
        ("lowvuln", LOW.package, CRITICAL.package),
    ] {
        let sha = repo.commit(variant);
        let build = repo.build(&sha);
        let system = build.expect_out();
        assert!(system.join("healthy").exists());
        let closure = drv_closure(build.drv.as_ref().unwrap());
        assert!(
            closure.contains(&format!("-{package}.drv")),
            "{variant}: {closure}"
        );
        assert!(
            !closure.contains(&format!("-{absent}.drv")),
            "{variant}: {closure}"
        );
        // Also a runtime reference, as a real package would be.
        let runtime = run_ok(Command::new("nix-store").arg("-qR").arg(&system));
        assert!(
            runtime.contains(&format!("-{package}\n")),
            "{variant}: {runtime}"
        );
    }
    let sha = repo.commit("good");
    let build = repo.build(&sha);
    let closure = drv_closure(build.drv.as_ref().unwrap());
    assert!(!closure.contains(CRITICAL.package) && !closure.contains(LOW.package));
}

// --- the system model ----------------------------------------------------------------------

#[test]
fn new_system_runs_generation_one() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good 1");
    let sys = TestSystem::new(&g1);
    assert_eq!(sys.current_system(), Some(g1.clone()));
    assert_eq!(sys.booted_system(), Some(g1.clone()));
    assert_eq!(sys.profile_generation(), Some(1));
    assert_eq!(sys.profile_target(), Some(g1.clone()));
    assert_eq!(sys.generations(), vec![1]);
    assert_eq!(sys.boot_default(), Some(g1.clone()));
    assert_eq!(sys.boot_entries(), vec!["nixos-generation-1.conf"]);
    assert_eq!(
        sys.boot_entry_target("nixos-generation-1.conf"),
        Some(g1.clone())
    );
    assert!(sys.switch_log().is_empty());
    assert!(sys.state_dir().is_dir());
    assert!(sys.state_json().is_none());
    // Setting the current path again adds no generation (nix-env semantics).
    sys.set_profile(&g1);
    assert_eq!(sys.generations(), vec![1]);
}

#[test]
fn switch_script_models_test_boot_and_switch() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good 1");
    let (_, g2) = repo.commit_and_build("good 2");
    let (_, g3) = repo.commit_and_build("good 3");
    let sys = TestSystem::new(&g1);

    // `test` activates without touching the profile or the boot loader...
    let out = sys.switch_to_configuration(&g2, "test");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sys.current_system(), Some(g2.clone()));
    assert_eq!(sys.booted_system(), Some(g1.clone()));
    assert_eq!(sys.profile_generation(), Some(1));
    assert_eq!(sys.boot_default(), Some(g1.clone()));
    assert_eq!(sys.switch_log(), vec![log_line("test", &g2)]);
    // ...so a reboot comes back on the previous generation.
    assert_eq!(sys.reboot(), g1);
    assert_eq!(sys.current_system(), Some(g1.clone()));
    assert_eq!(sys.booted_system(), Some(g1.clone()));

    // Confirmed the NixOS way: profile first, then `boot` installs the boot loader entry.
    assert!(sys.switch_to_configuration(&g2, "test").status.success());
    sys.set_profile(&g2);
    assert_eq!(sys.profile_generation(), Some(2));
    let out = sys.switch_to_configuration(&g2, "boot");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sys.current_system(), Some(g2.clone()));
    assert_eq!(sys.booted_system(), Some(g1.clone()));
    assert_eq!(sys.boot_default(), Some(g2.clone()));
    assert_eq!(
        sys.boot_entries(),
        vec!["nixos-generation-1.conf", "nixos-generation-2.conf"]
    );
    assert_eq!(
        sys.boot_entry_target("nixos-generation-2.conf"),
        Some(g2.clone())
    );
    let entry = read(&sys.entries_dir().join("nixos-generation-2.conf"));
    assert!(entry.contains("title NixOS (Generation 2)"), "{entry}");
    assert!(
        entry.contains(&format!("linux {}/kernel", g2.display())),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("options init={}/init", g2.display())),
        "{entry}"
    );
    assert_eq!(sys.reboot(), g2);
    assert_eq!(sys.booted_system(), Some(g2.clone()));

    // `boot` without setting the profile first does not make the candidate the boot default.
    assert!(sys.switch_to_configuration(&g3, "boot").status.success());
    assert_eq!(sys.boot_default(), Some(g2.clone()));
    assert_eq!(sys.current_system(), Some(g2.clone()));

    // `switch` = `test` + `boot`.
    sys.set_profile(&g3);
    assert!(sys.switch_to_configuration(&g3, "switch").status.success());
    assert_eq!(sys.current_system(), Some(g3.clone()));
    assert_eq!(sys.boot_default(), Some(g3.clone()));
    assert_eq!(
        sys.boot_entry_target("nixos-generation-3.conf"),
        Some(g3.clone())
    );
    assert_eq!(sys.generations(), vec![1, 2, 3]);
    assert_eq!(sys.generation_target(2), Some(g2.clone()));

    // dry-activate changes nothing; unknown actions fail; every call is logged.
    assert!(
        sys.switch_to_configuration(&g1, "dry-activate")
            .status
            .success()
    );
    assert_eq!(sys.current_system(), Some(g3.clone()));
    let out = sys.switch_to_configuration(&g1, "bogus");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(sys.current_system(), Some(g3.clone()));
    assert_eq!(
        sys.switch_log(),
        vec![
            log_line("test", &g2),
            log_line("test", &g2),
            log_line("boot", &g2),
            log_line("boot", &g3),
            log_line("switch", &g3),
            log_line("dry-activate", &g1),
            log_line("bogus", &g1),
        ]
    );
}

#[test]
fn switch_fail_variant_fails_to_activate() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good 1");
    let (_, bad) = repo.commit_and_build("switch-fail");
    let sys = TestSystem::new(&g1);
    for action in ["test", "switch"] {
        let out = sys.switch_to_configuration(&bad, action);
        assert_eq!(out.status.code(), Some(1), "{action}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(SWITCH_ERROR_MESSAGE));
        assert_eq!(sys.current_system(), Some(g1.clone()), "{action}");
        assert_eq!(sys.boot_default(), Some(g1.clone()), "{action}");
    }
    assert_eq!(
        sys.switch_log(),
        vec![log_line("test", &bad), log_line("switch", &bad)]
    );
    // Re-activating the previous generation (what a revert does) works.
    assert!(sys.switch_to_configuration(&g1, "test").status.success());
    assert_eq!(sys.current_system(), Some(g1));
}

#[test]
fn switch_script_drops_entries_of_deleted_generations_and_fails_on_request() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good 1");
    let (_, g2) = repo.commit_and_build("good 2");
    let (_, plain) = repo.commit_and_build("no-switch");
    let sys = TestSystem::new(&g1);
    sys.set_profile(&g2);
    assert!(sys.switch_to_configuration(&g2, "boot").status.success());
    assert_eq!(sys.boot_entries().len(), 2);
    // Like nixpkgs' systemd-boot builder: a generation deleted from the profile loses its entry
    // the next time the boot loader is installed.
    common::run_ok(
        std::process::Command::new("nix-env")
            .arg("-p")
            .arg(sys.profile())
            .args(["--switch-generation", "1"]),
    );
    common::run_ok(
        std::process::Command::new("nix-env")
            .arg("-p")
            .arg(sys.profile())
            .args(["--delete-generations", "2"]),
    );
    assert!(sys.switch_to_configuration(&g1, "boot").status.success());
    assert_eq!(sys.boot_entries(), vec!["nixos-generation-1.conf"]);
    assert_eq!(sys.boot_default(), Some(g1.clone()));

    // fail-switch: `before` fails without acting, `after` acts and exits 4.
    fs::write(
        sys.root().join("fail-switch"),
        format!(
            "test {} before\ntest {} after\n",
            g2.display(),
            g1.display()
        ),
    )
    .unwrap();
    let out = sys.switch_to_configuration(&g2, "test");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(sys.current_system(), Some(g1.clone()));
    let out = sys.switch_to_configuration(&g1, "test");
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(sys.current_system(), Some(g1.clone()));

    // no-switch builds a store path that is not a NixOS system.
    assert!(!plain.join("bin/switch-to-configuration").exists());
    assert!(plain.join("nixos-version").exists());
}

#[test]
fn switch_script_writes_boot_counted_entries() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good 1");
    let (_, g2) = repo.commit_and_build("good 2");
    let sys = TestSystem::new(&g1);
    sys.enable_boot_counting(3);
    sys.set_profile(&g2);
    assert!(sys.switch_to_configuration(&g2, "boot").status.success());
    assert_eq!(
        sys.boot_entries(),
        vec!["nixos-generation-1.conf", "nixos-generation-2+3.conf"]
    );
    assert_eq!(
        sys.boot_entry_target("nixos-generation-2+3.conf"),
        Some(g2.clone())
    );
    // Installing again keeps the existing (possibly partly counted) entry.
    assert!(sys.switch_to_configuration(&g2, "boot").status.success());
    assert_eq!(sys.boot_entries().len(), 2);

    // systemd-boot tries the entry: the counter moves, the candidate boots.
    assert_eq!(
        sys.try_boot_entry("nixos-generation-2+3.conf"),
        "nixos-generation-2+2-1.conf"
    );
    assert_eq!(sys.booted_system(), Some(g2.clone()));
    assert_eq!(sys.current_system(), Some(g2.clone()));
    assert_eq!(
        sys.try_boot_entry("nixos-generation-2+2-1.conf"),
        "nixos-generation-2+1-2.conf"
    );
    assert!(sys.switch_to_configuration(&g2, "switch").status.success());
    assert_eq!(
        sys.boot_entries(),
        vec!["nixos-generation-1.conf", "nixos-generation-2+1-2.conf"]
    );

    // Blessing (renaming to the plain name) is also recognised as an existing entry.
    fs::rename(
        sys.entries_dir().join("nixos-generation-2+1-2.conf"),
        sys.entries_dir().join("nixos-generation-2.conf"),
    )
    .unwrap();
    assert!(sys.switch_to_configuration(&g2, "boot").status.success());
    assert_eq!(
        sys.boot_entries(),
        vec!["nixos-generation-1.conf", "nixos-generation-2.conf"]
    );

    // A boot-menu pick of the old generation, then a normal reboot into the default.
    sys.reboot_into(&g1);
    assert_eq!(sys.booted_system(), Some(g1.clone()));
    assert_eq!(sys.reboot(), g2);

    assert_eq!(
        common::parse_counted_entry("nixos-generation-7+0-3.conf"),
        Some(("nixos-generation-7".to_owned(), 0, 3))
    );
    assert_eq!(common::parse_counted_entry("nixos-generation-7.conf"), None);
}

#[test]
fn reboot_without_boot_default_boots_the_profile() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good 1");
    let (_, g2) = repo.commit_and_build("good 2");
    let sys = TestSystem::new(&g1);
    fs::remove_file(sys.boot_dir().join("default")).unwrap();
    sys.set_profile(&g2);
    assert_eq!(sys.reboot(), g2);
    assert_eq!(sys.booted_system(), Some(g2.clone()));
    assert_eq!(sys.current_system(), Some(g2));
}

// --- the git servers -----------------------------------------------------------------------

/// Clones `url` with the real git and returns the clone's HEAD commit.
fn clone_head(url: &str, dest: &Path) -> String {
    run_ok(git().args(["clone", "-q", url]).arg(dest));
    run_ok(git_in(dest).args(["rev-parse", "HEAD"]))
        .trim()
        .to_owned()
}

/// Fetches `url` into `clone` and returns what its `main` points at.
fn fetch_main(clone: &Path, url: &str) -> String {
    run_ok(git_in(clone).args([
        "fetch",
        "-q",
        "--force",
        url,
        "+refs/heads/main:refs/remotes/origin/main",
    ]));
    run_ok(git_in(clone).args(["rev-parse", "refs/remotes/origin/main"]))
        .trim()
        .to_owned()
}

fn serves_clones_and_updates(repo: &FlakeRepo, url: &str) {
    let first = repo.commit("good 1");
    let clone = repo.scratch("clone");
    assert_eq!(clone_head(url, &clone), first);
    assert!(clone.join("flake.nix").exists());
    assert_eq!(read(&clone.join("variant")), "good 1");
    let second = repo.commit("good 2");
    assert_eq!(fetch_main(&clone, url), second);
}

#[test]
fn file_url_serves_clones_and_force_pushes() {
    let repo = FlakeRepo::new();
    assert_eq!(repo.head(), None);
    let url = repo.file_url();
    assert!(url.starts_with("file:///"));
    assert!(Path::new(&url).extension().is_some_and(|e| e == "git"));
    serves_clones_and_updates(&repo, &url);
    let clone = repo.scratch("clone");
    let second = repo.head().unwrap();
    let first = run_ok(git_in(&repo.bare()).args(["rev-parse", "main~1"]))
        .trim()
        .to_owned();

    repo.force_push_reset(&first);
    assert_eq!(repo.head().as_deref(), Some(first.as_str()));
    assert_eq!(fetch_main(&clone, &url), first);
    let diverged = repo.commit("good 3");
    let parent = run_ok(git_in(&repo.bare()).args(["rev-parse", &format!("{diverged}~1")]));
    assert_eq!(parent.trim(), first);
    assert_eq!(fetch_main(&clone, &url), diverged);
    let is_ancestor =
        run(git_in(&repo.bare()).args(["merge-base", "--is-ancestor", &second, &diverged]));
    assert!(
        !is_ancestor.status.success(),
        "the rewritten branch must not descend from {second}"
    );
}

#[test]
fn git_daemon_serves_clones() {
    let repo = FlakeRepo::new();
    let mut daemon = GitDaemon::start(&repo);
    assert!(daemon.url().starts_with("git://127.0.0.1:"));
    serves_clones_and_updates(&repo, daemon.url());
    daemon.stop();
    assert!(
        !run(git().args(["ls-remote", daemon.url()]))
            .status
            .success()
    );
}

#[test]
fn http_git_serves_clones() {
    let repo = FlakeRepo::new();
    let mut http = HttpGit::start(&repo);
    assert!(http.url().starts_with("http://127.0.0.1:"));
    serves_clones_and_updates(&repo, http.url());
    // Smart HTTP, not the dumb protocol: the backend advertises the upload-pack service.
    let path = format!("/{}.git/info/refs?service=git-upload-pack", repo.name());
    let (code, body) = common::http_get(http.port(), &path).unwrap();
    assert_eq!(code, 200, "{}", http.error_log());
    assert!(String::from_utf8_lossy(&body).contains("# service=git-upload-pack"));
    http.stop();
    assert!(!run(git().args(["ls-remote", http.url()])).status.success());
}

#[test]
fn servers_of_parallel_repos_do_not_mix() {
    let a = FlakeRepo::new();
    let b = FlakeRepo::new();
    let (da, db) = (GitDaemon::start(&a), GitDaemon::start(&b));
    assert_ne!(da.port(), db.port());
    let foreign = da.url().replace(a.name(), b.name());
    assert!(!run(git().args(["ls-remote", &foreign])).status.success());
}

// --- vulnix --------------------------------------------------------------------------------

/// Runs vulnix against the mirror with a fresh cache; returns the exit code and parsed JSON.
fn vulnix(
    mirror: &NvdMirror,
    cache: &str,
    whitelists: &[&Path],
    path: &Path,
) -> (i32, serde_json::Value) {
    let cache = mirror.new_cache_dir(cache);
    let out = run(&mut vulnix_command(&mirror.url(), &cache, whitelists, path));
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "vulnix printed no JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), json)
}

#[test]
fn vulnix_reports_the_critical_cve_for_vuln() {
    let mirror = NvdMirror::start();
    let repo = FlakeRepo::new();
    let (_, system) = repo.commit_and_build("vuln");
    let (code, json) = vulnix(&mirror, "plain", &[], &system);
    assert_eq!(code, 2, "{json}");
    let findings = json.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{json}");
    let f = &findings[0];
    assert_eq!(f["name"], CRITICAL.package);
    assert_eq!(f["pname"], "openssl");
    assert_eq!(f["version"], "1.0.1");
    assert!(
        f["derivation"]
            .as_str()
            .unwrap()
            .ends_with("-openssl-1.0.1.drv")
    );
    assert_eq!(f["affected_by"], serde_json::json!([CRITICAL.cve]));
    assert_eq!(f["whitelisted"], serde_json::json!([]));
    assert_eq!(
        f["cvssv3_basescore"][CRITICAL.cve].as_f64(),
        Some(CRITICAL.cvss3)
    );
    assert!(f["affected_by"].to_string().find(DECOY.cve).is_none());

    // The TOML whitelist format masks it.
    let wl_dir = TempDir::new("whitelist");
    let wl = wl_dir.join("wl.toml");
    fs::write(
        &wl,
        vulnix_whitelist(CRITICAL.package, &[CRITICAL.cve], "accepted"),
    )
    .unwrap();
    let (code, json) = vulnix(&mirror, "whitelisted", &[&wl], &system);
    assert_eq!((code, json), (0, serde_json::json!([])));
}

#[test]
fn vulnix_reports_the_low_cve_for_lowvuln() {
    let mirror = NvdMirror::start();
    let repo = FlakeRepo::new();
    let (_, system) = repo.commit_and_build("lowvuln");
    let (code, json) = vulnix(&mirror, "plain", &[], &system);
    assert_eq!(code, 2, "{json}");
    let findings = json.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{json}");
    assert_eq!(findings[0]["name"], LOW.package);
    assert_eq!(findings[0]["affected_by"], serde_json::json!([LOW.cve]));
    assert_eq!(
        findings[0]["cvssv3_basescore"][LOW.cve].as_f64(),
        Some(LOW.cvss3)
    );
}

#[test]
fn vulnix_finds_nothing_in_good() {
    let mirror = NvdMirror::start();
    let repo = FlakeRepo::new();
    let (_, system) = repo.commit_and_build("good");
    let (code, json) = vulnix(&mirror, "plain", &[], &system);
    assert_eq!((code, json), (0, serde_json::json!([])));
}

#[test]
fn nvd_mirror_serves_six_years_and_modified() {
    let mirror = NvdMirror::start();
    let year: i32 = run_ok(Command::new("date").arg("+%Y"))
        .trim()
        .parse()
        .unwrap();
    let mut names: Vec<String> = (year - 5..=year).map(|y| y.to_string()).collect();
    names.push("modified".to_owned());
    for name in names {
        let (code, body) =
            common::http_get(mirror.port(), &format!("/nvdcve-1.1-{name}.json.gz")).unwrap();
        assert_eq!(code, 200, "{name}");
        assert_eq!(&body[..2], &[0x1f, 0x8b], "{name} is not gzip");
    }
}

// --- small helpers ------------------------------------------------------------------------

#[test]
fn temp_dir_is_removed_on_drop() {
    let dir = TempDir::new("selftest");
    let path: PathBuf = dir.path().to_owned();
    fs::write(dir.join("file"), "x").unwrap();
    assert!(path.starts_with(fs::canonicalize(std::env::temp_dir()).unwrap()));
    drop(dir);
    if std::env::var_os("PULLNIX_KEEP_TMP").is_none() {
        assert!(!path.exists());
    }
}

#[test]
fn write_config_overlays_the_base() {
    let repo = FlakeRepo::new();
    let (_, g1) = repo.commit_and_build("good");
    let sys = TestSystem::new(&g1);
    let plain = read(&write_config(&sys, &repo.file_url(), ""));
    assert!(plain.starts_with("host = \"testhost\"\n"), "{plain}");
    assert!(
        plain.contains(&format!("url = \"{}\"", repo.file_url())),
        "{plain}"
    );
    assert!(
        plain.contains(
            r#"argv = ["/bin/sh", "-c", "test -e \"$TEST_ROOT/run/current-system/healthy\""]"#
        ),
        "{plain}"
    );

    let extra = "host = \"edge-01\"\n[confirm]\ntimeout = 3\n[scan]\nenable = true\n\
                 [[health.command]]\nname = \"a\"\nargv = [\"true\"]\ntimeout = 1\n\
                 [[health.command]]\nname = \"b\"\nargv = [\"true\"]\ntimeout = 2\n";
    let path = write_config(&sys, &repo.file_url(), extra);
    assert_eq!(path, sys.root().join("etc/pullnix/config.toml"));
    let merged = read(&path);
    assert!(merged.starts_with("host = \"edge-01\"\n"), "{merged}");
    assert_eq!(merged.matches("host =").count(), 1, "{merged}");
    assert_eq!(merged.matches("[confirm]").count(), 1, "{merged}");
    assert!(
        merged.contains("[confirm]\ninterval = 1\ntimeout = 3\n"),
        "{merged}"
    );
    assert!(merged.contains("[scan]\nenable = true\n"), "{merged}");
    assert_eq!(merged.matches("[[health.command]]").count(), 2, "{merged}");
    assert!(!merged.contains("healthy-marker"), "{merged}");
}

#[test]
fn health_check_argv_matches_the_marker() {
    let repo = FlakeRepo::new();
    let (_, good) = repo.commit_and_build("good");
    let (_, unhealthy) = repo.commit_and_build("health-fail");
    let sys = TestSystem::new(&good);
    let check = || {
        let [prog, args @ ..] = common::HEALTH_ARGV;
        run(Command::new(prog).args(args).env("TEST_ROOT", sys.root()))
            .status
            .success()
    };
    assert!(check());
    assert!(
        sys.switch_to_configuration(&unhealthy, "test")
            .status
            .success()
    );
    assert!(!check());
}

//! `pullnix bootstrap`: a fresh machine with no pullnix configuration deploys its host's
//! configuration from the repository, through the same armed, test-first, confirmed path as
//! `sync`, and leaves a state that the deployed configuration's pullnix continues from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use common::{FlakeRepo, TestSystem, run_with_timeout, stderr_text};

fn bootstrap(sys: &TestSystem, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullnix"));
    cmd.arg("--root")
        .arg(sys.root())
        .arg("bootstrap")
        .args(args)
        .env("TEST_ROOT", sys.root())
        .env("HOME", sys.home())
        .env_remove("PULLNIX_CONFIG");
    run_with_timeout(&mut cmd, Duration::from_secs(120))
}

#[test]
fn fresh_machine_deploys_its_host_and_leaves_a_continuable_state() {
    let repo = FlakeRepo::new();
    let (_, installer) = repo.commit_and_build("good installer");
    let sys = TestSystem::new(&installer);
    let (sha, system) = repo.commit_and_build("good bootstrap-1");
    let out = bootstrap(&sys, &["--url", &repo.file_url(), "--host", "testhost"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_text(&out));
    assert_eq!(sys.current_system().as_deref(), Some(system.as_path()));
    assert_eq!(sys.profile_target().as_deref(), Some(system.as_path()));
    assert_eq!(sys.boot_default().as_deref(), Some(system.as_path()));
    let state = sys.state_json().unwrap();
    assert_eq!(state["deployed"]["commit"], sha.as_str());
    // test before boot, as every deployment.
    let log = sys.switch_log();
    assert!(
        log[0].starts_with("test ") && log[1].starts_with("boot "),
        "{log:?}"
    );

    // The state directory (0755 in the installer image) is private now, and so is the file.
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sys.state_dir()), 0o700);
    assert_eq!(mode(&sys.state_dir().join("bootstrap.toml")), 0o600);

    // The written configuration is a valid pullnix configuration the next run can use.
    let config = sys.state_dir().join("bootstrap.toml");
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("host = \"testhost\""), "{text}");
    let next = common::pullnix(&sys, &config, &["sync"]);
    assert_eq!(next.status.code(), Some(0), "{}", stderr_text(&next));
    assert!(
        stderr_text(&next).contains("up to date"),
        "{}",
        stderr_text(&next)
    );
}

#[test]
fn host_comes_from_the_kernel_command_line() {
    let repo = FlakeRepo::new();
    let (_, installer) = repo.commit_and_build("good installer");
    let sys = TestSystem::new(&installer);
    // What the netboot installer gets from `pullnix pxe-api`.
    fs::create_dir_all(sys.root().join("proc")).unwrap();
    fs::write(
        sys.root().join("proc/cmdline"),
        "init=/nix/store/x/init pullnix.host=testhost loglevel=4\n",
    )
    .unwrap();
    let (sha, system) = repo.commit_and_build("good bootstrap-cmdline");
    let out = bootstrap(&sys, &["--url", &repo.file_url()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_text(&out));
    assert_eq!(sys.current_system().as_deref(), Some(system.as_path()));
    assert_eq!(
        sys.state_json().unwrap()["deployed"]["commit"],
        sha.as_str()
    );
}

#[test]
fn unknown_host_or_missing_url_fail_clearly_and_change_nothing() {
    let repo = FlakeRepo::new();
    let (_, installer) = repo.commit_and_build("good installer");
    let sys = TestSystem::new(&installer);
    repo.commit("good bootstrap-nohost");
    let out = bootstrap(&sys, &["--url", &repo.file_url(), "--host", "nosuchhost"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("nosuchhost"),
        "{}",
        stderr_text(&out)
    );
    assert_eq!(sys.current_system().as_deref(), Some(installer.as_path()));
    assert!(sys.switch_log().is_empty());

    let out = bootstrap(&sys, &["--host", "testhost"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("--url"), "{}", stderr_text(&out));
}

#[test]
fn an_ssh_remote_needs_a_host_key_pin_which_is_kept_for_the_deployed_configuration() {
    let sshd = common::Sshd::start();
    let repo = FlakeRepo::new();
    let (_, installer) = repo.commit_and_build("good installer");
    let sys = TestSystem::new(&installer);
    let (sha, system) = repo.commit_and_build("good bootstrap-ssh");
    let url = sshd.url(&repo);
    let key = sshd.deploy_key().display().to_string();
    // No pin: ssh would trust whoever answers first; refused before anything is contacted.
    let out = bootstrap(
        &sys,
        &["--url", &url, "--host", "testhost", "--deploy-key", &key],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("repo.known_hosts"),
        "{}",
        stderr_text(&out)
    );
    assert!(sys.switch_log().is_empty());

    // With the pin (as the installer has it, e.g. on a tmpfs): deployed, and the pin is kept
    // in the state directory for the deployed configuration to name.
    let given = sys.scratch("run").join("known_hosts");
    fs::copy(sshd.known_hosts(), &given).unwrap();
    let out = bootstrap(
        &sys,
        &[
            "--url",
            &url,
            "--host",
            "testhost",
            "--deploy-key",
            &key,
            "--known-hosts",
            &given.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_text(&out));
    assert_eq!(sys.current_system().as_deref(), Some(system.as_path()));
    assert_eq!(
        sys.state_json().unwrap()["deployed"]["commit"],
        sha.as_str()
    );
    let kept = sys.state_dir().join("known_hosts");
    assert_eq!(fs::read(&kept).unwrap(), fs::read(&given).unwrap());
    let text = fs::read_to_string(sys.state_dir().join("bootstrap.toml")).unwrap();
    assert!(
        text.contains(&format!("known_hosts = \"{}\"", kept.display())),
        "{text}"
    );
    // The installer's copy may go away; the next sync still checks the host key.
    fs::remove_file(&given).unwrap();
    let next = common::pullnix(&sys, &sys.state_dir().join("bootstrap.toml"), &["sync"]);
    assert_eq!(next.status.code(), Some(0), "{}", stderr_text(&next));
}

//! `pullnix install`: a machine booted into an installer puts its host's system on an empty disk.
//!
//! Real parts only: the disk is a loop device backed by an image file, the fixture's disk script
//! (built by Nix from the fleet repository, like disko's) formats it with mkfs.ext4 and mounts
//! it, Nix copies the closure into the new root's store and sets its profile, and the system's
//! own activation script and switch-to-configuration run chrooted in the new root (the fixture's
//! `chroot` systems carry a static busybox, so they need nothing from outside their closure).
//! The installer itself is a [`TestSystem`] directory passed as `--root` (its state directory
//! and `/proc/cmdline`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    Cache, FlakeRepo, GitDaemon, PULLNIX_TIMEOUT, TempDir, TestSystem, exit_code, forget, run_ok,
    run_with_timeout, stderr_text, valid,
};

/// An empty 64 MiB disk (a loop device over a sparse image) and the directory its file system
/// is to be mounted on; detached and unmounted on drop.
struct Disk {
    tmp: TempDir,
    device: String,
    target: PathBuf,
}

impl Disk {
    fn new() -> Disk {
        let tmp = TempDir::new("disk");
        let image = tmp.join("disk.img");
        run_ok(Command::new("truncate").args(["-s", "64M"]).arg(&image));
        let device = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image),
        )
        .trim()
        .to_owned();
        assert!(
            device.starts_with("/dev/loop"),
            "losetup printed {device:?}"
        );
        let target = tmp.join("mnt");
        Disk {
            tmp,
            device,
            target,
        }
    }

    /// The repository's `disk` file for the fixture's disk script: format this device and
    /// mount it on the target.
    fn spec(&self) -> String {
        format!("{} {}\n", self.device, self.target.display())
    }

    /// Whether the image holds an ext4 file system (its superblock magic, 0xEF53 at byte
    /// 1024 + 56), i.e. whether anything formatted it.
    fn formatted(&self) -> bool {
        let bytes = fs::read(self.tmp.join("disk.img")).unwrap();
        bytes[1080..1082] == [0x53, 0xEF]
    }

    fn in_target(&self, path: &str) -> PathBuf {
        self.target.join(path.trim_start_matches('/'))
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.target)
            .output();
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
    }
}

/// Mount points at or below `dir`, from this process's mount table.
fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// The installer's config: the repository, the host, the disk's target, and a reboot command
/// that leaves a mark instead of rebooting the test machine.
fn installer_config(sys: &TestSystem, url: &str, disk: &Disk, extra: &str) -> PathBuf {
    let rebooted = sys.root().join("rebooted");
    common::write_config(
        sys,
        url,
        &format!(
            "[install]\ntarget = {target:?}\n[switch]\nreboot_command = [\"touch\", {rebooted:?}]\n{extra}",
            target = disk.target.display().to_string(),
            rebooted = rebooted.display().to_string(),
        ),
    )
}

fn install(sys: &TestSystem, config: &Path, args: &[&str]) -> Output {
    let mut cmd = common::pullnix_command(sys, config, &["install"]);
    cmd.args(args);
    run_with_timeout(&mut cmd, PULLNIX_TIMEOUT)
}

fn set_kernel_cmdline(sys: &TestSystem, line: &str) {
    fs::create_dir_all(sys.root().join("proc")).unwrap();
    fs::write(sys.root().join("proc/cmdline"), format!("{line}\n")).unwrap();
}

fn installer(repo: &FlakeRepo) -> TestSystem {
    let (_, installer) = repo.commit_and_build("good installer-image");
    TestSystem::new(&installer)
}

/// What most tests start from: a fleet repository, an installer booted from its first commit,
/// and an empty disk that the repository's `disk` file names (tests that want another disk
/// script overwrite that file before their commit).
struct Setup {
    repo: FlakeRepo,
    sys: TestSystem,
    disk: Disk,
}

impl Setup {
    fn new() -> Setup {
        let repo = FlakeRepo::new();
        let sys = installer(&repo);
        let disk = Disk::new();
        repo.write_file("disk", &disk.spec());
        Setup { repo, sys, disk }
    }
}

/// The installed system's pullnix record, below the new root.
fn installed_state(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(root.join("var/lib/pullnix/state.json")).unwrap()).unwrap()
}

/// The installed system's own first `pullnix sync`: its root is the new disk.
fn sync_installed(sys: &TestSystem, config: &Path, root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pullnix"))
        .arg("--config")
        .arg(config)
        .arg("--root")
        .arg(root)
        .arg("sync")
        .env("HOME", sys.home())
        .env_remove("PULLNIX_CONFIG")
        .output()
        .unwrap()
}

/// A signing key for "ci" and an allowed signers file naming it (`repo.allowed_signers`).
fn ci_signer(sys: &TestSystem) -> (PathBuf, PathBuf) {
    let signer = sys.scratch("signer").join("ci");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f"])
            .arg(&signer),
    );
    let signers = sys.scratch("signer").join("allowed_signers");
    fs::write(
        &signers,
        format!(
            "ci@example.org namespaces=\"git\" {}",
            fs::read_to_string(signer.with_extension("pub")).unwrap()
        ),
    )
    .unwrap();
    (signer, signers)
}

#[test]
fn installs_onto_an_empty_disk_and_hands_over_to_pullnix() {
    let Setup { repo, sys, disk } = Setup::new();
    let (_, system) = repo.commit_and_build("good chroot install-1");
    // Signed commits only: the signer's key, and the allowed signers file the installer has.
    let (signer, signers) = ci_signer(&sys);
    let sha = repo.sign_head(&signer);
    let key = sys.root().join("run/pullnix-deploy-key");
    fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY----- (test)\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let config = installer_config(
        &sys,
        &repo.file_url(),
        &disk,
        &format!(
            "[repo]\ndeploy_key = {:?}\nallowed_signers = {:?}\n",
            key.display().to_string(),
            signers.display().to_string()
        ),
    );

    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    assert!(disk.formatted());
    assert_eq!(
        mounts_below(&disk.target),
        [disk.target.display().to_string()]
    );

    // The closure is in the new root's store, valid in its database, and its profile's only
    // generation.
    let store = format!("local?root={}", disk.target.display());
    run_ok(
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command", "path-info"])
            .args(["--store", &store])
            .arg(&system),
    );
    let profile = disk.in_target("/nix/var/nix/profiles/system");
    assert_eq!(fs::read_link(&profile).unwrap(), Path::new("system-1-link"));
    assert_eq!(
        fs::read_link(disk.in_target("/nix/var/nix/profiles/system-1-link")).unwrap(),
        system
    );
    assert!(disk.in_target("/etc/NIXOS").exists());
    assert_eq!(
        fs::read_link(disk.in_target("/etc/mtab")).unwrap(),
        Path::new("/proc/mounts")
    );

    // Activation, then the boot loader, both inside the new root, as nixos-install does.
    let steps = fs::read_to_string(disk.in_target("/var/log/pullnix-fixture-install.log")).unwrap();
    assert_eq!(
        steps.lines().collect::<Vec<_>>(),
        [
            format!("activate {} IN_NIXOS_ENTER=1", system.display()),
            "switch-to-configuration boot NIXOS_INSTALL_BOOTLOADER=1".to_owned(),
        ],
        "{steps}"
    );
    assert_eq!(
        fs::read_link(disk.in_target("/run/current-system")).unwrap(),
        system
    );
    let entry =
        fs::read_to_string(disk.in_target("/boot/loader/entries/nixos-generation-1.conf")).unwrap();
    assert!(
        entry.contains(&format!("init={}/init", system.display())),
        "{entry}"
    );

    // pullnix's own directory is private; the parents it had to create are not.
    for (dir, mode) in [
        ("/var", 0o755),
        ("/var/lib", 0o755),
        ("/var/lib/pullnix", 0o700),
    ] {
        let meta = fs::metadata(disk.in_target(dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{dir}");
    }

    // The deploy key, private, where the installed system's pullnix looks for it; and the
    // allowed signers, so that it keeps refusing what the installer would have refused.
    let copied = disk.in_target("/var/lib/pullnix/deploy-key");
    assert_eq!(fs::read(&copied).unwrap(), fs::read(&key).unwrap());
    assert_eq!(
        fs::read(disk.in_target("/var/lib/pullnix/allowed_signers")).unwrap(),
        fs::read(&signers).unwrap()
    );
    assert!(log.contains("signed by ci@example.org"), "{log}");
    assert_eq!(
        fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The installed system's record: this commit is deployed, as generation 1.
    let state = installed_state(&disk.target);
    assert_eq!(state["deployed"]["commit"], sha.as_str());
    assert_eq!(state["deployed"]["system"], system.display().to_string());
    assert_eq!(state["deployed"]["generation"], 1);
    assert_eq!(state["last"]["result"], "installed");

    assert!(sys.root().join("rebooted").exists(), "no reboot requested");
    assert!(
        log.contains("running: 'NIXOS_INSTALL_BOOTLOADER=1' chroot")
            || log.contains("running: NIXOS_INSTALL_BOOTLOADER=1 chroot"),
        "{log}"
    );

    // Handover: the installed system's own pullnix (its root is the new disk) finds the branch
    // where the installer left it, without building anything.
    let first_sync = sync_installed(&sys, &config, &disk.target);
    let text = stderr_text(&first_sync);
    assert_eq!(exit_code(&first_sync), 0, "{text}");
    assert!(text.contains("up to date"), "{text}");
    assert!(!text.contains("nix build"), "{text}");
}

#[test]
fn a_commit_that_does_not_build_leaves_the_disk_untouched() {
    let Setup { repo, sys, disk } = Setup::new();
    repo.commit("build-fail chroot");
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 6, "{log}");
    assert!(log.contains(common::BUILD_ERROR_MESSAGE), "{log}");
    assert!(
        !disk.formatted(),
        "the disk was formatted for a commit that does not build"
    );
    assert!(mounts_below(&disk.target).is_empty());
    assert!(!sys.root().join("rebooted").exists());
}

#[test]
fn a_failing_disk_script_is_exit_11_and_installs_nothing() {
    let Setup { repo, sys, disk } = Setup::new();
    repo.write_file("disk", "fail\n");
    repo.commit("good chroot");
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 11, "{log}");
    assert!(log.contains("deliberate partitioning failure"), "{log}");
    assert!(!disk.target.join("nix").exists());
    assert!(!sys.root().join("rebooted").exists());
}

#[test]
fn a_disk_script_that_mounts_nothing_is_refused() {
    let Setup { repo, sys, disk } = Setup::new();
    fs::create_dir_all(&disk.target).unwrap();
    repo.write_file("disk", "nomount\n");
    repo.commit("good chroot");
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 11, "{log}");
    assert!(log.contains("is not a mount point"), "{log}");
    assert_eq!(fs::read_dir(&disk.target).unwrap().count(), 0);
}

#[test]
fn a_failing_boot_loader_is_exit_8_and_leaves_no_mounts_behind() {
    let Setup { repo, sys, disk } = Setup::new();
    repo.commit("switch-fail chroot");
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 8, "{log}");
    assert!(log.contains("deliberate activation failure"), "{log}");
    // /dev, /proc and /sys of the installer were bound in and are gone again; the new root
    // itself stays mounted for inspection.
    assert_eq!(
        mounts_below(&disk.target),
        [disk.target.display().to_string()]
    );
    assert!(!sys.root().join("rebooted").exists());
}

#[test]
fn host_and_repository_come_from_the_kernel_command_line() {
    let Setup { repo, sys, disk } = Setup::new();
    // partitioning = "none": the root is mounted before pullnix runs (here: by the test).
    fs::create_dir_all(&disk.target).unwrap();
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &disk.device]));
    run_ok(Command::new("mount").arg(&disk.device).arg(&disk.target));
    let (sha, system) = repo.commit_and_build("good chroot from-cmdline");
    let daemon = GitDaemon::start(&repo);
    // An image-wide config that names neither the repository nor the host.
    let config = sys.root().join("etc/pullnix/install.toml");
    let image_config = |repo: &str| {
        fs::write(
            &config,
            format!(
                "[repo]\nurl = \"\"\n{repo}[install]\ntarget = {:?}\npartitioning = \"none\"\nreboot = false\n",
                disk.target.display().to_string()
            ),
        )
        .unwrap();
    };
    set_kernel_cmdline(
        &sys,
        &format!(
            "init=/nix/store/x-installer/init pullnix.host={} pullnix.repo={} loglevel=4",
            common::DEFAULT_HOST,
            daemon.url()
        ),
    );
    // A git:// repository from the kernel command line is plain text: without signed commits
    // (or the explicit opt-out) it is refused before anything is fetched or installed.
    image_config("");
    let out = install(&sys, &config, &[]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("insecure_plaintext_without_signatures"),
        "{}",
        stderr_text(&out)
    );
    assert!(!disk.in_target("/nix/var/nix/profiles").exists());
    // This test is about the kernel command line: the opt-out, on a network it controls.
    image_config("insecure_plaintext_without_signatures = true\n");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    assert_eq!(
        fs::read_link(disk.in_target("/nix/var/nix/profiles/system-1-link")).unwrap(),
        system
    );
    let state = installed_state(&disk.target);
    assert_eq!(state["deployed"]["commit"], sha.as_str());

    // Without a host anywhere: a usage error that says where a host comes from.
    set_kernel_cmdline(&sys, "quiet");
    let out = install(&sys, &config, &[]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("pullnix.host="));
    // A host but no repository.
    let out = install(&sys, &config, &["--host", "testhost"]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("pullnix.repo=URL"));
    // A host name that cannot be a configuration name.
    let out = install(&sys, &config, &["--host", "a\"b", "--url", daemon.url()]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
}

#[test]
fn waits_for_a_deploy_key_copied_in_after_boot() {
    let sshd = common::Sshd::start();
    let Setup { repo, sys, disk } = Setup::new();
    let (_, system) = repo.commit_and_build("good chroot wait-for-key");
    // The image does not carry the key: an admin copies it in once the installer is up.
    let key = sys.root().join("run/keys/pullnix-deploy");
    let config = installer_config(
        &sys,
        &sshd.url(&repo),
        &disk,
        &format!(
            "{}[install]\nwait_for_deploy_key = true\n",
            common::Sshd::repo_toml(&key, &sshd.known_hosts())
        ),
    );
    let mut cmd = common::pullnix_command(&sys, &config, &["install"]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !disk.formatted(),
        "the installer went on without its deploy key"
    );
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    // As scp may leave it: readable by others until the installer tightens it.
    fs::write(&key, fs::read(sshd.deploy_key()).unwrap()).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = child.wait_with_output().unwrap();
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    assert!(log.contains("waiting for the deploy key"), "{log}");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_link(disk.in_target("/nix/var/nix/profiles/system-1-link")).unwrap(),
        system
    );
    // The installed system got the key it needs for the same ssh remote, and the host key pin
    // the installer trusted, so that its own first fetch does not trust the first answer.
    assert_eq!(
        fs::read(disk.in_target("/var/lib/pullnix/deploy-key")).unwrap(),
        fs::read(sshd.deploy_key()).unwrap()
    );
    let pin = disk.in_target("/var/lib/pullnix/known_hosts");
    assert_eq!(
        fs::read(&pin).unwrap(),
        fs::read(sshd.known_hosts()).unwrap()
    );
    assert_eq!(
        fs::metadata(&pin).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn a_remote_without_ssh_does_not_wait_for_a_deploy_key() {
    let Setup { repo, sys, disk } = Setup::new();
    repo.commit("good chroot no-key");
    let key = sys.root().join("run/keys/pullnix-deploy");
    let config = installer_config(
        &sys,
        &repo.file_url(),
        &disk,
        &format!(
            "[repo]\ndeploy_key = {:?}\n[install]\nwait_for_deploy_key = true\n",
            key.display().to_string()
        ),
    );
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    assert!(!log.contains("waiting for the deploy key"), "{log}");
    assert!(!disk.in_target("/var/lib/pullnix/deploy-key").exists());
}

/// `pullnix pxe-api` with `--state`, as the provisioner runs it: boot requests on one port,
/// reports (the `{report}` URL) on another.
struct Provisioner {
    child: Option<std::process::Child>,
    hosts: PathBuf,
    state: PathBuf,
    boot_port: u16,
    report_port: u16,
}

impl Provisioner {
    fn start(hosts: &Path, state: &Path) -> Provisioner {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        for _ in 0..5 {
            let mut p = Provisioner {
                child: None,
                hosts: hosts.to_owned(),
                state: state.to_owned(),
                boot_port: free_port(),
                report_port: free_port(),
            };
            if p.boot_port != p.report_port && p.restart() {
                return p;
            }
        }
        panic!("pxe-api did not start");
    }

    /// Starts it (again) on the same ports; false if it did not come up.
    fn restart(&mut self) -> bool {
        self.stop();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .args(["pxe-api", "--hosts"])
            .arg(&self.hosts)
            .args(["--listen", &format!("127.0.0.1:{}", self.boot_port)])
            .args([
                "--report-listen",
                &format!("127.0.0.1:{}", self.report_port),
            ])
            .arg("--state")
            .arg(&self.state)
            .args([
                "--public-url",
                &format!("http://127.0.0.1:{}", self.report_port),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                return false; // a port was taken in between
            }
            let up = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.boot_port) && up(self.report_port) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The provisioner goes away (a restart, a crash, a power cut): its state stays.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// pixiecore's question for a MAC address: the status and, for 200, the boot spec.
    fn boot(&self, mac: &str) -> (u16, serde_json::Value) {
        let (status, body) = common::http_get(self.boot_port, &format!("/v1/boot/{mac}")).unwrap();
        let spec = if status == 200 {
            serde_json::from_slice(&body).unwrap()
        } else {
            serde_json::Value::Null
        };
        (status, spec)
    }

    fn installed(&self) -> serde_json::Value {
        let listed = run_ok(
            Command::new(env!("CARGO_BIN_EXE_pullnix"))
                .args(["pxe-api", "installed", "--json", "--state"])
                .arg(&self.state),
        );
        serde_json::from_str(&listed).unwrap()
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A provisioner for the default host, and the installer booted by it: the kernel command
/// line pxe-api gave, with its report URL.
fn provisioned(sys: &TestSystem, dir: &TempDir) -> (Provisioner, String) {
    let hosts = dir.join("hosts.toml");
    fs::write(
        &hosts,
        format!(
            "[defaults]\nkernel = \"file:///srv/netboot/bzImage\"\n\
             cmdline = \"init=/nix/store/x-installer/init pullnix.host={{host}} pullnix.report={{report}}\"\n\
             [hosts.{}]\nmac = \"52:54:00:12:34:56\"\n",
            common::DEFAULT_HOST
        ),
    )
    .unwrap();
    let api = Provisioner::start(&hosts, &dir.join("state"));
    // The machine network-boots: pixiecore gets the kernel command line from pxe-api, and the
    // installer's kernel has it in /proc/cmdline.
    let (status, spec) = api.boot("52:54:00:12:34:56");
    assert_eq!(status, 200);
    let cmdline = spec["cmdline"].as_str().unwrap().to_owned();
    let report = format!(
        "pullnix.report=http://127.0.0.1:{}/v1/installed/52:54:00:12:34:56?token=",
        api.report_port
    );
    assert!(cmdline.contains(&report), "{cmdline}");
    set_kernel_cmdline(sys, &cmdline);
    (api, cmdline)
}

#[test]
fn the_provisioner_stops_offering_the_installer_once_told() {
    let Setup { repo, sys, disk } = Setup::new();
    let (sha, _) = repo.commit_and_build("good chroot provisioned");
    let provisioning = TempDir::new("provisioning");
    let (api, cmdline) = provisioned(&sys, &provisioning);
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    assert!(
        log.contains("reported to the provisioner (HTTP 200)"),
        "{log}"
    );
    // The token is on the kernel command line, not in the journal.
    let token = cmdline.rsplit("token=").next().unwrap();
    assert!(!log.contains(token), "{log}");
    assert!(sys.root().join("rebooted").exists());
    let state = installed_state(&disk.target);
    assert_eq!(state["deployed"]["commit"], sha.as_str());

    // Its next network boot is ignored (404), so the firmware goes on to the disk.
    assert_eq!(api.boot("52:54:00:12:34:56").0, 404);
    let listed = api.installed();
    assert_eq!(listed[0]["host"], common::DEFAULT_HOST, "{listed}");
}

/// The provisioner is down when the install is done (restarting, or the network is not up) for
/// longer than today's five tries over 20 s, after which the installer rebooted unreported, into
/// the installer again. Now it keeps trying, with backoff, and reboots only once it is heard.
#[test]
fn a_report_that_does_not_get_through_is_retried_until_it_does() {
    let Setup { repo, sys, disk } = Setup::new();
    repo.commit_and_build("good chroot provisioned-late");
    let provisioning = TempDir::new("provisioning-down");
    let (mut api, _) = provisioned(&sys, &provisioning);
    api.stop();
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let mut child = common::pullnix_command(&sys, &config, &["install"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("did not get through") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    // The first failed try; the provisioner comes back 24 s later.
    let first = rx.recv_timeout(PULLNIX_TIMEOUT);
    if first.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no failed report try:\n{}", reader.join().unwrap());
    }
    std::thread::sleep(std::time::Duration::from_secs(24));
    assert!(
        !sys.root().join("rebooted").exists(),
        "rebooted unreported:\n{}",
        {
            let _ = child.kill();
            let _ = child.wait();
            reader.join().unwrap()
        }
    );
    assert!(api.restart(), "pxe-api did not come back");
    // The next try is at most a minute away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "not done 90 s after pxe-api came back:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("reported to the provisioner (HTTP 200, at attempt"),
        "{log}"
    );
    assert!(sys.root().join("rebooted").exists(), "{log}");
    assert_eq!(api.boot("52:54:00:12:34:56").0, 404);
}

/// A report the provisioner refuses (here: `pxe-api forget` ran during the install, so the
/// token is gone) is not lost quietly: exit 14, and no reboot into a reinstall. Today's
/// installer logged an error and rebooted.
#[test]
fn a_refused_report_is_exit_14_and_does_not_reboot() {
    let Setup { repo, sys, disk } = Setup::new();
    repo.commit_and_build("good chroot provisioned-refused");
    let provisioning = TempDir::new("provisioning-refused");
    let (api, _) = provisioned(&sys, &provisioning);
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .args(["pxe-api", "forget", "--state"])
            .arg(provisioning.join("state"))
            .arg("52:54:00:12:34:56"),
    );
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 14, "{log}");
    assert!(log.contains("refused the report"), "{log}");
    assert!(log.contains("HTTP 403"), "{log}");
    assert!(!sys.root().join("rebooted").exists(), "{log}");
    // The system is installed all the same.
    assert!(installed_state(&disk.target)["deployed"]["commit"].is_string());
    assert_eq!(api.installed(), serde_json::json!([]));
}

// ---------------------------------------------------------------------------------------------
// Closure mode: the system and the disk script are prebuilt, signed and substituted
// ---------------------------------------------------------------------------------------------

/// What CI does for an installable host: build its system (a `chroot` variant) and its disk
/// script (for `disk`, baked into the script at build time) from one commit, publish both to
/// `cache` (the disk script unsigned unless `script_signed`), forget both locally, and commit
/// the two pins on top of a commit whose flake does not even evaluate, so that anything but
/// substitution fails. Returns that commit, the system and the disk script.
fn ci_publishes_install(
    repo: &FlakeRepo,
    disk: &Disk,
    cache: &Cache,
    variant: &str,
    script_signed: bool,
) -> (String, PathBuf, PathBuf) {
    repo.write_file("disk", &disk.spec());
    let (built_from, system) = repo.commit_and_build(&format!("good chroot {variant}"));
    let script = common::nix_build(
        &format!(
            "{}#nixosConfigurations.\"{}\".config.system.build.diskoScript",
            repo.flake_ref(&built_from),
            repo.host()
        ),
        &repo.scratch("xdg-cache"),
    )
    .expect_out();
    assert!(
        fs::read_to_string(&script)
            .unwrap()
            .contains(&format!("mkfs.ext4 -q -F -L nixos '{}'", disk.device)),
        "the disk script is not for this disk"
    );
    cache.publish(&system, true);
    cache.publish(&script, script_signed);
    forget(&system);
    forget(&script);
    fs::create_dir_all(repo.work_tree().join(repo.flake_dir()).join("closures")).unwrap();
    repo.write_file(
        &format!("closures/{}", repo.host()),
        &format!("# built by CI\n{}\n", system.display()),
    );
    repo.write_file(
        &format!("closures/{}.disk-script", repo.host()),
        &format!("# built by CI\n{}\n", script.display()),
    );
    let sha = repo.commit(&format!("eval-error {variant}"));
    (sha, system, script)
}

#[test]
fn closure_mode_installs_a_signed_prebuilt_system_without_evaluating() {
    let Setup { repo, sys, disk } = Setup::new();
    let cache = Cache::new("ci-install-1");
    let (sha, system, script) = ci_publishes_install(&repo, &disk, &cache, "closure-install", true);
    // The pinned commit's flake throws on evaluation: build mode cannot install it.
    assert!(
        !repo.build(&sha).status.success(),
        "the pinned commit evaluates"
    );
    let config = installer_config(&sys, &repo.file_url(), &disk, &cache.closure_toml());

    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    for pinned in [&system, &script] {
        assert!(
            log.contains(&format!("nix-store --realise {}", pinned.display())),
            "{log}"
        );
    }
    assert!(!log.contains("nix build"), "evaluated: {log}");
    assert!(!log.contains(common::EVAL_ERROR_MESSAGE), "{log}");
    // Both came from the cache, signature checked.
    assert!(valid(&system) && valid(&script));
    assert!(disk.formatted());
    assert_eq!(
        mounts_below(&disk.target),
        [disk.target.display().to_string()]
    );

    assert_eq!(
        fs::read_link(disk.in_target("/nix/var/nix/profiles/system")).unwrap(),
        Path::new("system-1-link")
    );
    assert_eq!(
        fs::read_link(disk.in_target("/nix/var/nix/profiles/system-1-link")).unwrap(),
        system
    );
    let entry =
        fs::read_to_string(disk.in_target("/boot/loader/entries/nixos-generation-1.conf")).unwrap();
    assert!(
        entry.contains(&format!("init={}/init", system.display())),
        "{entry}"
    );
    let state = installed_state(&disk.target);
    assert_eq!(state["deployed"]["commit"], sha.as_str());
    assert_eq!(state["deployed"]["system"], system.display().to_string());
    assert!(sys.root().join("rebooted").exists(), "no reboot requested");
}

#[test]
fn closure_mode_refuses_an_unsigned_disk_script_before_touching_the_disk() {
    let Setup { repo, sys, disk } = Setup::new();
    let cache = Cache::new("ci-install-2");
    let (_, system, script) =
        ci_publishes_install(&repo, &disk, &cache, "closure-unsigned-script", false);
    let config = installer_config(&sys, &repo.file_url(), &disk, &cache.closure_toml());

    let out = install(&sys, &config, &[]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 6, "{log}");
    assert!(
        log.contains("is not signed by any of the keys in 'trusted-public-keys'"),
        "{log}"
    );
    // The (signed) system was substituted first; the unsigned script never entered the store.
    assert!(valid(&system));
    assert!(!valid(&script), "{} entered the store", script.display());
    assert!(
        !disk.formatted(),
        "the disk was formatted for an unsigned disk script"
    );
    assert!(mounts_below(&disk.target).is_empty());
    assert!(!sys.root().join("rebooted").exists());
}

/// Lazily unmounts (recursively) on drop.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.0)
            .output();
    }
}

#[test]
fn a_bind_mounted_target_counts_as_mounted_and_a_rerun_converges() {
    // partitioning = "none" onto a bind mount of a directory of the same file system: the
    // device numbers of the target and its parent are equal, yet it is a mount point.
    let repo = FlakeRepo::new();
    let sys = installer(&repo);
    let tmp = TempDir::new("bind-target");
    let target = tmp.join("mnt");
    fs::create_dir_all(&target).unwrap();
    run_ok(
        Command::new("mount")
            .arg("--bind")
            .arg(&target)
            .arg(&target),
    );
    let _unmount = Unmount(target.clone());
    let (_, system) = repo.commit_and_build("good chroot bind");
    let config = common::write_config(
        &sys,
        &repo.file_url(),
        &format!(
            "[install]\ntarget = {:?}\npartitioning = \"none\"\nreboot = false\n",
            target.display().to_string()
        ),
    );
    let out = install(&sys, &config, &[]);
    assert_eq!(exit_code(&out), 0, "{}", stderr_text(&out));
    assert_eq!(
        fs::read_link(target.join("nix/var/nix/profiles/system-1-link")).unwrap(),
        system
    );

    // Run again onto the same, unwiped target (an install cut short and restarted by hand):
    // the same generation, the same record, a usable repository.
    let partial = target.join("var/lib/pullnix/repo.git.partial");
    fs::create_dir_all(&partial).unwrap();
    fs::remove_dir_all(target.join("var/lib/pullnix/repo.git")).unwrap();
    let again = install(&sys, &config, &[]);
    assert_eq!(exit_code(&again), 0, "{}", stderr_text(&again));
    assert!(!target.join("nix/var/nix/profiles/system-2-link").exists());
    assert!(!partial.exists());
    let state = installed_state(&target);
    assert_eq!(state["deployed"]["generation"], 1);
    let first_sync = sync_installed(&sys, &config, &target);
    let text = stderr_text(&first_sync);
    assert_eq!(exit_code(&first_sync), 0, "{text}");
    assert!(text.contains("up to date"), "{text}");
}

#[test]
fn a_dry_run_builds_everything_and_touches_no_disk() {
    let Setup { repo, sys, disk } = Setup::new();
    let (sha, system) = repo.commit_and_build("good chroot dry-run");
    let config = installer_config(&sys, &repo.file_url(), &disk, "");
    let out = install(&sys, &config, &["--dry-run", "--json"]);
    let log = stderr_text(&out);
    assert_eq!(exit_code(&out), 0, "{log}");
    assert!(log.contains("dry run: would run"), "{log}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["commit"], sha.as_str());
    assert_eq!(plan["system"], system.display().to_string());
    assert_eq!(plan["host"], common::DEFAULT_HOST);
    assert_eq!(plan["installed"], false);
    assert_eq!(plan["target_mounted"], false);
    assert_eq!(plan["reboot"], true);
    let script = PathBuf::from(plan["disk_script"].as_str().unwrap());
    assert!(
        fs::read_to_string(&script).unwrap().contains(&disk.device),
        "{}",
        script.display()
    );
    assert!(!disk.formatted(), "a dry run formatted the disk");
    assert!(!disk.target.exists());
    assert!(!sys.root().join("rebooted").exists());

    // The real run prints the same plan, now installed.
    let out = install(&sys, &config, &["--json", "--no-reboot"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr_text(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["installed"], true);
    assert_eq!(done["target_mounted"], true);
    assert_eq!(done["reboot"], false);
    assert!(!sys.root().join("rebooted").exists());
}

#[test]
fn a_branch_from_the_kernel_command_line_cannot_add_parameters_to_the_flake_url() {
    // Whoever answers the network boot writes the kernel command line: `pullnix.branch=` is a
    // valid git branch name here, and would also pick the flake's directory in the flake URL.
    let repo = FlakeRepo::new();
    let sys = installer(&repo);
    repo.commit("good chroot");
    let config = common::write_config(&sys, &repo.file_url(), "[install]\nreboot = false\n");
    set_kernel_cmdline(
        &sys,
        "init=/nix/store/x-installer/init pullnix.host=testhost pullnix.branch=x&submodules=1&dir=sub",
    );
    let out = install(&sys, &config, &[]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("repo.branch"),
        "{}",
        stderr_text(&out)
    );
    assert!(!sys.state_dir().join("repo.git").exists(), "fetched anyway");
}

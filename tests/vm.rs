//! Boot mode on real firmware: every scenario boots a UEFI virtual machine (qemu in software
//! emulation, OVMF, systemd-boot with real `+N` boot counting, Debian 12's kernel and initrd,
//! systemd 252 as PID 1) whose system is a fake NixOS (`tests/vm/flake`) installed with the
//! guest's own Nix 2.8, and in which pullnix (the binary cargo built) runs from its units as
//! `nix/render-units.nix` renders them with `bootCounting = true`. pullnix does the real work in
//! the guest: it fetches the fixture repository, builds the commit with Nix, switches, reboots,
//! counts boots, confirms, blesses and reverts; systemd-boot counts down and falls back, and
//! `systemd-bless-boot` blesses at `boot-complete.target`.
//!
//! Layout: `tests/vm/image.sh` builds the cached base image (debootstrap, once), `tests/vm/disk.sh`
//! makes each scenario's disks and installs the fake NixOS into them, `tests/vm/guest/` is what
//! runs in the guest besides pullnix (the scenario runner, the power-cut hold points, `lib.sh`),
//! and `tests/vm/scenarios/NAME.sh` is the guest side of each scenario: it runs at every boot
//! that reaches userspace, drives pullnix like an operator (push, poll) and snapshots what the
//! machine looks like into the results share. This file boots the VM and powers it on again,
//! on the same disks and NVRAM, after every reset (qemu runs with `-no-reboot`: a reboot or a
//! kernel panic ends it) and every power cut (qemu killed with SIGKILL at a hold point the guest reached),
//! lists every boot from the serial console (including those that die in a kernel panic), and
//! asserts on the snapshots: the state file, the system profile, the ESP's entries, what
//! booted (`/proc/cmdline`, `/run/booted-system`, systemd-boot's `LoaderEntrySelected`) and the
//! guest's journal.
//!
//! Needs root (debootstrap, overlayfs, systemd-nspawn), qemu-system-x86, ovmf, dosfstools,
//! mtools and fdisk (`.ci/run` installs them). The image is cached in `PULLNIX_VM_CACHE`
//! (default `/var/cache/pullnix-vm`); at most `PULLNIX_VM_JOBS` (default 2) machines run at a
//! time, each on one emulated CPU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{TempDir, describe, git_in, run_ok, run_with_timeout};

const CONFIG: &str = "/etc/pullnix/config.toml";
const HOST: &str = "civm";

fn vm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm")
}

/// The cached base root file system (built once per test process, cached across runs).
fn image() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let mut cmd = Command::new("bash");
        cmd.arg(vm_dir().join("image.sh"));
        let out = run_with_timeout(&mut cmd, Duration::from_secs(1200));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{}` failed:\n{}",
            describe(&cmd),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("image.sh printed no path")
                .trim(),
        )
    })
}

/// At most `PULLNIX_VM_JOBS` machines at a time (software emulation is CPU-bound, and each
/// machine has one CPU), the longest scenarios first: a free slot goes to the waiting scenario
/// with the most boots ahead of it, so that the suite's wall time is not one long scenario
/// started last. The first slot is handed out a moment after the first request, once the
/// scenarios cargo runs in parallel have all asked.
struct Slots {
    state: Mutex<SlotState>,
    cv: Condvar,
}

struct SlotState {
    free: usize,
    waiting: Vec<u32>,
    first_request: Option<Instant>,
}

struct Slot(&'static Slots);

impl Slots {
    fn get() -> &'static Slots {
        static SLOTS: OnceLock<Slots> = OnceLock::new();
        SLOTS.get_or_init(|| Slots {
            state: Mutex::new(SlotState {
                free: std::env::var("PULLNIX_VM_JOBS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
                waiting: Vec::new(),
                first_request: None,
            }),
            cv: Condvar::new(),
        })
    }

    fn acquire(weight: u32) -> Slot {
        const GATHER: Duration = Duration::from_secs(3);
        let slots = Slots::get();
        let mut st = slots
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = *st.first_request.get_or_insert_with(Instant::now);
        st.waiting.push(weight);
        loop {
            let gathered = first.elapsed() >= GATHER;
            let mine = st.waiting.iter().max() == Some(&weight);
            if gathered && mine && st.free > 0 {
                let i = st.waiting.iter().position(|w| *w == weight).unwrap();
                st.waiting.swap_remove(i);
                st.free -= 1;
                // Others may be next in line for another free slot.
                slots.cv.notify_all();
                return Slot(slots);
            }
            st = slots
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .free += 1;
        self.0.cv.notify_all();
    }
}

/// One scenario: the guest script `tests/vm/scenarios/NAME.sh`, the fixture commits `c0`, `c1`,
/// … (variants of `tests/vm/flake`; `c0` is installed, `main` points at it), and the settings.
struct Scenario {
    name: &'static str,
    variants: &'static [&'static str],
    /// `switch.mode`.
    mode: &'static str,
    /// `confirm.timeout` (and the confirm unit's start timeout).
    confirm_timeout: u32,
    /// The whole run, all boots and restarts.
    limit: Duration,
    /// About how many boots it takes (the longest scenarios get a machine first).
    boots: u32,
}

impl Scenario {
    fn new(name: &'static str, variants: &'static [&'static str], boots: u32) -> Scenario {
        Scenario {
            boots,
            name,
            variants,
            mode: "boot",
            confirm_timeout: 60,
            limit: Duration::from_secs(900),
        }
    }
}

fn config_toml(s: &Scenario) -> String {
    format!(
        r#"host = "{HOST}"

[repo]
url = "file:///srv/git/fleet.git"
branch = "main"

[switch]
systemd_run = true
mode = "{mode}"

[confirm]
timeout = {timeout}
interval = 3
boot_tries = 3
unit = "pullnix-confirm.service"

[health]
remote = true
units = ["fixture-app.service"]

[[health.command]]
name = "healthy-marker"
argv = ["/bin/sh", "-c", "test -e /run/current-system/healthy"]
timeout = 10

# Lets a scenario hold the confirmation window open: fails while the file exists.
[[health.command]]
name = "gate"
argv = ["/bin/sh", "-c", "! test -e /var/lib/ci/hold-confirm"]
timeout = 10

[boot]
entries_dir = "/boot/loader/entries"
counting = true
"#,
        mode = s.mode,
        timeout = s.confirm_timeout,
    )
}

/// The unit files nix/render-units.nix renders for the guest, with boot counting.
fn render_units(s: &Scenario) -> Vec<(String, String)> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.args(["--eval", "--strict", "--json"])
        .arg(vm_dir().join("../../nix/render-units.nix"))
        .args(["--argstr", "pullnix", "/usr/local/bin/pullnix"])
        .args(["--argstr", "configFile", CONFIG])
        .args(["--argstr", "confirmTimeout", &s.confirm_timeout.to_string()])
        .args(["--argstr", "watchdogSec", "30"])
        .args(["--argstr", "bootCounting", "true"]);
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&run_ok(&mut cmd)).expect("render-units.nix printed no object");
    json.into_iter()
        .map(|(name, text)| (name, text.as_str().unwrap().to_owned()))
        .collect()
}

const FLAKE_FILES: &[(&str, &str)] = &[
    ("flake.nix", include_str!("vm/flake/flake.nix")),
    ("init.sh", include_str!("vm/flake/init.sh")),
    (
        "switch-to-configuration.sh",
        include_str!("vm/flake/switch-to-configuration.sh"),
    ),
    (
        "systemd-boot-builder.sh",
        include_str!("vm/flake/systemd-boot-builder.sh"),
    ),
];

/// A fixture commit: its id and the store path of the system it builds.
struct Commit {
    sha: String,
    system: String,
}

/// One commit per variant on branches c0, c1, … of a repository cloned bare to `dest`. The
/// systems are evaluated on the host: the same Nix and the same flake give the same store paths
/// as in the guest, so the test knows which generation booted.
fn fixture_repo(work: &Path, dest: &Path, variants: &[&str]) -> Vec<Commit> {
    fs::create_dir_all(work).unwrap();
    run_ok(git_in(work).args(["init", "-q"]));
    let mut commits = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        for (name, text) in FLAKE_FILES {
            let path = work.join(name);
            fs::write(&path, text).unwrap();
        }
        fs::write(work.join("variant"), variant).unwrap();
        run_ok(git_in(work).args(["add", "-A"]));
        run_ok(git_in(work).args(["commit", "-q", "-m", &format!("c{i}: {variant}")]));
        run_ok(git_in(work).args(["branch", "-f", &format!("c{i}")]));
        let sha = run_ok(git_in(work).args(["rev-parse", "HEAD"]))
            .trim()
            .to_owned();
        let system = run_ok(
            Command::new("nix")
                .args(["--extra-experimental-features", "nix-command flakes"])
                .args(["eval", "--raw"])
                .arg(format!(
                    "git+file://{}?ref=c{i}&rev={sha}#nixosConfigurations.{HOST}.config.system.build.toplevel.outPath",
                    work.display()
                ))
                .env("XDG_CACHE_HOME", work.join("../xdg-cache")),
        );
        commits.push(Commit { sha, system });
    }
    run_ok(git_in(work).args(["clone", "-q", "--bare", "."]).arg(dest));
    commits
}

/// One boot as the serial console shows it.
#[derive(Debug, Clone)]
struct Boot {
    /// The configuration the entry started (`init=` of the entry, reported by its stage 2).
    system: String,
    /// systemd-boot's `LoaderEntrySelected`: the entry's file name when it was chosen.
    entry: String,
    /// The number the scenario runner gave this boot, if it reached userspace.
    userspace: Option<u32>,
    /// How it ended: "reboot", "power off", "kernel panic", "power cut at POINT", "?".
    end: String,
    /// Seconds since the scenario's first power-on when it ended.
    ended_at: f64,
}

fn parse_boots(serial: &str) -> Vec<Boot> {
    let mut boots: Vec<Boot> = Vec::new();
    for stamped in serial.lines() {
        // "[   12.3] text", see Machine::start.
        let Some((at, line)) = stamped
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .and_then(|(t, l)| Some((t.trim().parse::<f64>().ok()?, l)))
        else {
            continue;
        };
        if let Some((_, rest)) = line.split_once("pullnix-vm: stage 2 of ") {
            let (system, rest) = rest.split_once(" (entry ").unwrap_or((rest, ""));
            let entry = rest.split_once(',').map_or("", |(e, _)| e);
            boots.push(Boot {
                system: system.trim().to_owned(),
                entry: entry.to_owned(),
                userspace: None,
                end: "?".to_owned(),
                ended_at: at,
            });
            continue;
        }
        let Some(last) = boots.last_mut() else {
            continue;
        };
        let end = if line.contains("Kernel panic - not syncing") {
            "kernel panic".to_owned()
        } else if let Some((_, n)) = line.split_once("pullnix-vm: userspace boot ") {
            last.userspace = n.split(':').next().and_then(|n| n.trim().parse().ok());
            continue;
        } else if line.contains("reboot: Restarting system") && last.end != "kernel panic" {
            "reboot".to_owned()
        } else if line.contains("reboot: Power down") {
            "power off".to_owned()
        } else if let Some((_, point)) = line.split_once("pullnix-vm-host: power cut at ") {
            format!("power cut at {}", point.trim())
        } else {
            continue;
        };
        last.end = end;
        last.ended_at = at;
    }
    boots
}

/// What a finished scenario left behind.
struct Outcome {
    name: &'static str,
    tmp: TempDir,
    results: PathBuf,
    commits: Vec<Commit>,
    boots: Vec<Boot>,
    elapsed: Duration,
}

impl Outcome {
    /// `c0`, `c1`, … for a fixture system, else the path itself.
    fn label(&self, system: &str) -> String {
        self.commits
            .iter()
            .position(|c| c.system == system)
            .map_or_else(|| system.to_owned(), |i| format!("c{i}"))
    }

    fn snap(&self, tag: &str) -> Snapshot {
        let dir = self.results.join(tag);
        assert!(
            dir.is_dir(),
            "scenario {} took no snapshot {tag:?}",
            self.name
        );
        Snapshot { dir }
    }

    fn sha(&self, i: usize) -> &str {
        &self.commits[i].sha
    }

    fn system(&self, i: usize) -> &str {
        &self.commits[i].system
    }

    /// The boots as `c0 nixos-generation-1+3.conf reboot`-like strings, in order.
    fn boot_list(&self) -> Vec<String> {
        self.boots
            .iter()
            .map(|b| format!("{} {} {}", self.label(&b.system), b.entry, b.end))
            .collect()
    }

    fn report(&self) -> String {
        let mut s = format!(
            "vm scenario {}: {} boots in {:.0?}\n",
            self.name,
            self.boots.len(),
            self.elapsed
        );
        let mut since = 0.0;
        for (i, b) in self.boots.iter().enumerate() {
            let _ = writeln!(
                s,
                "  boot {} ({:.0} s): {} from entry {}{}, ended by {}",
                i + 1,
                b.ended_at - since,
                self.label(&b.system),
                b.entry,
                b.userspace.map_or_else(
                    || ", never reached userspace".to_owned(),
                    |n| format!(", userspace boot {n}")
                ),
                b.end
            );
            since = b.ended_at;
        }
        s
    }

    #[track_caller]
    fn assert_boots(&self, want: &[&str]) {
        assert_eq!(self.boot_list(), want, "{}", self.report());
    }
}

/// One snapshot the guest took (`snapshot TAG` in tests/vm/guest/lib.sh).
struct Snapshot {
    dir: PathBuf,
}

impl Snapshot {
    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("{}/{name}: {e}", self.dir.display()))
            .trim()
            .to_owned()
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.file("state.json"))
            .unwrap_or_else(|e| panic!("{}/state.json: {e}", self.dir.display()))
    }

    fn entries(&self) -> Vec<String> {
        let mut e: Vec<String> = self
            .file("entries.txt")
            .lines()
            .map(str::to_owned)
            .collect();
        e.sort();
        e
    }

    fn journal(&self) -> String {
        self.file("journal.txt")
    }

    /// The entry the builder made the default: the one whose sort key sorts first.
    fn default_entry(&self) -> String {
        let mut found = Vec::new();
        for entry in fs::read_dir(self.dir.join("entries")).unwrap() {
            let entry = entry.unwrap();
            let text = fs::read_to_string(entry.path()).unwrap();
            if text.lines().any(|l| l == "sort-key nixor-default") {
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        assert_eq!(
            found.len(),
            1,
            "{}: default entries {found:?}",
            self.dir.display()
        );
        found.remove(0)
    }

    /// The system profile's current generation.
    fn generation(&self) -> u32 {
        let link = self.file("profile-link");
        link.strip_prefix("system-")
            .and_then(|l| l.strip_suffix("-link"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: profile link {link:?}", self.dir.display()))
    }

    /// pullnix-boot-check.service did not fail in this boot.
    #[track_caller]
    fn assert_boot_check_ok(&self) {
        let units = self.file("units.txt");
        let check = units
            .split("\n\n")
            .find(|u| u.contains("Id=pullnix-boot-check.service"))
            .unwrap_or_else(|| panic!("{}: no boot-check in units.txt", self.dir.display()));
        assert!(
            check.contains("Result=success"),
            "{}: pullnix-boot-check.service failed:\n{check}",
            self.dir.display()
        );
    }

    /// The line number of the first journal line containing `needle`.
    #[track_caller]
    fn journal_line(&self, needle: &str) -> usize {
        self.journal()
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("the journal of {} has no {needle:?}", self.dir.display()))
    }

    /// The system that booted and runs, by every witness: `init=` on the kernel command line,
    /// `/run/booted-system` (written by the fake stage 2) and `/run/current-system`.
    #[track_caller]
    fn assert_runs(&self, system: &str) {
        let cmdline = self.file("cmdline");
        assert!(
            cmdline.contains(&format!("init={system}/init ")),
            "{}: /proc/cmdline is {cmdline:?}, expected init={system}/init",
            self.dir.display()
        );
        assert_eq!(
            self.file("booted"),
            system,
            "{}: booted",
            self.dir.display()
        );
        assert_eq!(
            self.file("current"),
            system,
            "{}: current",
            self.dir.display()
        );
    }

    /// The system profile is at generation `n`, which is `system`.
    #[track_caller]
    fn assert_profile(&self, n: u32, system: &str) {
        assert_eq!(
            self.file("profile-link"),
            format!("system-{n}-link"),
            "{}: profile",
            self.dir.display()
        );
        assert_eq!(
            self.file("profile"),
            system,
            "{}: profile",
            self.dir.display()
        );
    }
}

/// How a run of qemu ended.
enum Restart {
    /// The guest powered off: the scenario is over.
    No,
    /// The guest reset (reboot, kernel panic): qemu ended (`-no-reboot`), power on again.
    AfterReset,
    /// The guest asked for a power cut and got it (qemu killed): power on again.
    AfterPowerCut,
}

/// The files the guest gets on its `ci` share (see tests/vm/disk.sh), in `tmp/payload`; returns
/// the fixture commits.
fn make_payload(s: &Scenario, tmp: &TempDir) -> Vec<Commit> {
    let payload = tmp.join("payload");
    fs::create_dir_all(payload.join("units")).unwrap();
    for (name, text) in render_units(s) {
        fs::write(payload.join("units").join(name), text).unwrap();
    }
    fs::write(
        payload.join("enable"),
        "pullnix-boot-check.service\npullnix-confirm.service\nci-driver.service\nfixture-app.service\n",
    )
    .unwrap();
    fs::copy(env!("CARGO_BIN_EXE_pullnix"), payload.join("pullnix")).unwrap();
    fs::copy(vm_dir().join("guest/lib.sh"), payload.join("lib.sh")).unwrap();
    fs::copy(
        vm_dir().join(format!("scenarios/{}.sh", s.name)),
        payload.join("test.sh"),
    )
    .unwrap();
    fs::write(payload.join("config.toml"), config_toml(s)).unwrap();
    fixture_repo(&tmp.join("work"), &payload.join("repo.git"), s.variants)
}

/// Builds the payload and the disks, then boots until the guest powers off; every power cut the
/// guest asks for kills qemu, and the machine is started again on the same disks.
fn run_scenario(s: &Scenario) -> Outcome {
    let rootfs = image();
    let tmp = TempDir::new(&format!("vm-{}", s.name));
    let commits = make_payload(s, &tmp);
    let results = tmp.join("results");
    let work = tmp.join("disk");
    fs::create_dir_all(&results).unwrap();
    fs::create_dir_all(&work).unwrap();

    let slot = Slots::acquire(s.boots);
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(vm_dir().join("disk.sh"))
        .arg(rootfs)
        .arg(tmp.join("payload"))
        .arg(&work);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "`{}` failed:\n{}",
        describe(&cmd),
        String::from_utf8_lossy(&out.stderr)
    );
    boot_until_power_off(s, &tmp, started);
    let elapsed = started.elapsed();
    drop(slot);

    let verdict = fs::read_to_string(results.join("verdict")).unwrap_or_default();
    let outcome = Outcome {
        name: s.name,
        boots: parse_boots(&fs::read_to_string(tmp.join("serial.log")).unwrap_or_default()),
        tmp,
        results,
        commits,
        elapsed,
    };
    println!("{}", outcome.report());
    assert_eq!(
        verdict.trim(),
        "pass",
        "scenario {} failed\n{}\n{}",
        s.name,
        outcome.report(),
        diagnostics(outcome.tmp.path(), &outcome.results)
    );
    outcome
}

/// Powers the machine on, and on again after every reset and power cut, until the scenario
/// runner has written its verdict and powered off.
fn boot_until_power_off(s: &Scenario, tmp: &TempDir, started: Instant) {
    let (payload, results, work) = (tmp.join("payload"), tmp.join("results"), tmp.join("disk"));
    let serial = tmp.join("serial.log");
    let deadline = Instant::now() + s.limit;
    let (mut cuts, mut resets) = (0, 0);
    loop {
        let mut machine = Machine::start(&work, &payload, &results, &serial, started);
        let next = loop {
            if let Some(status) = machine.child.try_wait().unwrap() {
                let _ = machine.console.join();
                assert!(
                    status.success(),
                    "qemu failed ({status}):\n{}",
                    fs::read_to_string(work.join("qemu.log")).unwrap_or_default()
                );
                // The scenario runner writes its verdict before it powers off; without one,
                // the guest reset itself (a reboot, a kernel panic): power it on again.
                break if results.join("verdict").exists() {
                    Restart::No
                } else {
                    Restart::AfterReset
                };
            }
            let request = results.join("cut-request");
            if let Ok(point) = fs::read_to_string(&request)
                && point.ends_with('\n')
            {
                machine.kill();
                fs::remove_file(&request).unwrap();
                let mut log = fs::OpenOptions::new().append(true).open(&serial).unwrap();
                std::io::Write::write_all(
                    &mut log,
                    format!(
                        "[{:7.1}] pullnix-vm-host: power cut at {point}",
                        started.elapsed().as_secs_f64()
                    )
                    .as_bytes(),
                )
                .unwrap();
                break Restart::AfterPowerCut;
            }
            if Instant::now() > deadline {
                machine.kill();
                panic!(
                    "scenario {} did not finish within {:?}\n{}",
                    s.name,
                    s.limit,
                    diagnostics(tmp.path(), &results)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        match next {
            Restart::No => return,
            Restart::AfterPowerCut => cuts += 1,
            Restart::AfterReset => resets += 1,
        }
        // Never a loop: no scenario needs this many.
        assert!(
            cuts + resets <= 12,
            "scenario {}: {cuts} power cuts and {resets} resets\n{}",
            s.name,
            diagnostics(tmp.path(), &results)
        );
    }
}

/// The machine: q35, one CPU, OVMF with the scenario's own NVRAM, the ESP disk and the root
/// disk (cache=unsafe: guest flushes are not forwarded, which only matters if the host itself
/// crashes; killing qemu keeps everything qemu has written), the payload and results shares.
/// Its serial console is copied to `serial`, every line stamped with the seconds since `t0`.
struct Machine {
    child: std::process::Child,
    console: std::thread::JoinHandle<()>,
}

impl Machine {
    fn start(work: &Path, payload: &Path, results: &Path, serial: &Path, t0: Instant) -> Machine {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("qemu.log"))
            .unwrap();
        let mut cmd = Command::new("qemu-system-x86_64");
        // -no-reboot: a reset of the guest (reboot, kernel panic) ends qemu, and the caller
        // starts it again on the same disks and NVRAM. That is a reset as the firmware sees it,
        // and under software emulation qemu's in-process reset makes the next boot two to four
        // times slower (about 100 s instead of 30 s in firmware, boot loader and kernel).
        cmd.args([
            "-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", "1024",
        ])
        .arg("-no-reboot")
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-user-config", "-nodefaults", "-net", "none"])
        .args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,file={}",
            work.join("vars.fd").display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            work.join("esp.img").display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            work.join("root.img").display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=ci,security_model=none,readonly=on",
            payload.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            results.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(&cmd)));
        let stdout = child.stdout.take().unwrap();
        let serial = serial.to_path_buf();
        let console = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(serial)
                .unwrap();
            let mut input = std::io::BufReader::new(stdout);
            let mut line = Vec::new();
            while input.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line);
                let _ = writeln!(
                    out,
                    "[{:7.1}] {}",
                    t0.elapsed().as_secs_f64(),
                    text.trim_end()
                );
                line.clear();
            }
        });
        Machine { child, console }
    }

    /// Pulls the plug (SIGKILL: no shutdown, the guest's caches are lost).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.console.join();
    }
}

/// The scenario's logs for a failure message.
fn diagnostics(tmp: &Path, results: &Path) -> String {
    let mut text = String::new();
    for n in 1..=12 {
        if let Ok(log) = fs::read_to_string(results.join(format!("test-boot-{n}.log"))) {
            let _ = write!(text, "--- test-boot-{n}.log ---\n{log}");
        }
    }
    if let Ok(journal) = fs::read_to_string(results.join("fail/journal.txt")) {
        text.push_str("--- journal of the failing boot (pullnix, boot assessment) ---\n");
        for line in journal.lines().filter(|l| {
            l.contains("pullnix")
                || l.contains("bless")
                || l.contains("boot-complete")
                || l.contains("ci-driver")
        }) {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Ok(serial) = fs::read_to_string(tmp.join("serial.log")) {
        text.push_str("--- serial console (last 40 lines) ---\n");
        let lines: Vec<&str> = serial.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn last_result(state: &serde_json::Value) -> (&str, &str) {
    (
        state["last"]["result"].as_str().unwrap_or(""),
        state["last"]["message"].as_str().unwrap_or(""),
    )
}

#[test]
fn healthy_candidate_boots_counted_is_confirmed_before_boot_complete_and_blessed() {
    let o = run_scenario(&Scenario::new("healthy", &["good 0", "good 1"], 2));
    o.assert_boots(&[
        "c0 nixos-generation-1+3.conf reboot",
        "c1 nixos-generation-2+3.conf power off",
    ]);
    let installed = o.snap("installed");
    installed.assert_runs(o.system(0));
    installed.assert_profile(1, o.system(0));
    // The installer wrote the first entry counted; systemd-bless-boot blessed its first boot.
    assert_eq!(installed.entries(), ["nixos-generation-1.conf"]);

    let deployed = o.snap("deployed");
    deployed.assert_runs(o.system(1));
    deployed.assert_profile(2, o.system(1));
    assert_eq!(
        deployed.file("boot-count-path"),
        "\\loader\\entries\\nixos-generation-2+2-1.conf"
    );
    let state = deployed.state();
    assert_eq!(state["deployed"]["commit"], o.sha(1));
    assert_eq!(state["deployed"]["generation"], 2);
    assert!(state["pending"].is_null());
    assert_eq!(last_result(&state).0, "deployed");
    assert_eq!(
        deployed.entries(),
        ["nixos-generation-1.conf", "nixos-generation-2.conf"]
    );
    assert_eq!(deployed.default_entry(), "nixos-generation-2.conf");
    deployed.assert_boot_check_ok();
    // pullnix confirmed before the boot counted as complete, and systemd-bless-boot ran after.
    let confirmed = deployed.journal_line(&format!("deployed {} as generation 2", o.sha(1)));
    let complete = deployed.journal_line("Reached target boot-complete.target");
    assert!(
        confirmed < complete,
        "boot-complete.target was reached before pullnix confirmed"
    );
    assert!(deployed.journal_line("boot-check: booted unconfirmed candidate") < confirmed);

    let noop = o.snap("noop");
    assert_eq!(noop.file("state.json"), deployed.file("state.json"));
    assert!(noop.journal().contains("up to date at"));
}

#[test]
fn candidate_that_does_not_boot_is_counted_down_by_systemd_boot_and_recorded_bad() {
    let o = run_scenario(&Scenario::new("no-boot", &["good 0", "no-boot 1"], 4));
    o.assert_boots(&[
        "c0 nixos-generation-1+3.conf reboot",
        "c1 nixos-generation-2+3.conf kernel panic",
        "c1 nixos-generation-2+2-1.conf kernel panic",
        "c1 nixos-generation-2+1-2.conf kernel panic",
        "c0 nixos-generation-1.conf power off",
    ]);
    let fallback = o.snap("fallback");
    fallback.assert_runs(o.system(0));
    fallback.assert_profile(1, o.system(0));
    // pullnix deleted the candidate's generation (a generation that failed is never a fallback
    // or rollback target), so the builder removed its entry, which systemd-boot had counted
    // down to +0-3; and generation 1 is the builder's default again, not only the profile's.
    assert_eq!(fallback.entries(), ["nixos-generation-1.conf"]);
    assert_eq!(fallback.default_entry(), "nixos-generation-1.conf");
    fallback.assert_boot_check_ok();
    let state = fallback.state();
    assert!(state["pending"].is_null());
    let (result, message) = last_result(&state);
    assert_eq!(result, "reverted", "{message}");
    assert!(message.contains("did not boot"), "{message}");
    assert_eq!(state["bad"][0]["commit"], o.sha(1));

    let noop = o.snap("noop");
    assert_eq!(noop.file("state.json"), fallback.file("state.json"));
    assert!(noop.journal().contains("recorded as bad"));
}

#[test]
fn unhealthy_candidate_is_never_blessed_and_pullnix_reboots_back() {
    let o = run_scenario(&Scenario::new("unhealthy", &["good 0", "unhealthy 1"], 4));
    o.assert_boots(&[
        "c0 nixos-generation-1+3.conf reboot",
        "c1 nixos-generation-2+3.conf reboot",
        "c0 nixos-generation-1.conf power off",
    ]);
    let trying = o.snap("trying");
    trying.assert_runs(o.system(1));
    trying.assert_profile(2, o.system(1));
    let state = trying.state();
    assert_eq!(state["pending"]["phase"], "activated");
    assert_eq!(state["pending"]["boot_tries_left"], 2);

    let reverted = o.snap("reverted");
    reverted.assert_runs(o.system(0));
    reverted.assert_profile(1, o.system(0));
    // Never blessed, and gone: the revert deleted the candidate's generation, and the builder
    // its entry (which still had the counter systemd-boot left, 2+2-1, when the machine
    // rebooted back; `trying` above saw it counted).
    assert_eq!(reverted.entries(), ["nixos-generation-1.conf"]);
    assert_eq!(reverted.default_entry(), "nixos-generation-1.conf");
    reverted.assert_boot_check_ok();
    let state = reverted.state();
    assert!(state["pending"].is_null());
    let (result, message) = last_result(&state);
    assert_eq!(result, "reverted", "{message}");
    assert!(
        message.contains("still failing at the deadline"),
        "{message}"
    );
    assert_eq!(state["bad"][0]["commit"], o.sha(1));
    // In the candidate's boot, boot-complete.target was never reached, so systemd-bless-boot
    // never ran.
    let candidate_boot = reverted.file("journal-previous-boot.txt");
    assert!(!candidate_boot.contains("Reached target boot-complete.target"));
    assert!(!candidate_boot.contains("Marked boot as"));

    let noop = o.snap("noop");
    assert_eq!(noop.file("state.json"), reverted.file("state.json"));
    assert!(noop.journal().contains("recorded as bad"));
}

#[test]
fn power_cut_during_switch_to_configuration_boot_ends_deployed_without_a_loop() {
    let o = run_scenario(&Scenario::new("cut-in-switch", &["good 0", "good 1"], 3));
    let boots = o.boot_list();
    assert_eq!(
        boots[0],
        "c0 nixos-generation-1+3.conf power cut at builder-entries-written",
        "{}",
        o.report()
    );
    // Whatever reached the ESP before the cut decides the next boot; both ways end on c1.
    let rest: Vec<&str> = boots[1..].iter().map(String::as_str).collect();
    let via_candidate = ["c1 nixos-generation-2+3.conf power off"];
    let via_retry = [
        "c0 nixos-generation-1.conf reboot",
        "c1 nixos-generation-3+3.conf power off",
    ];
    assert!(
        rest == via_candidate || rest == via_retry,
        "unexpected boots after the cut:\n{}",
        o.report()
    );
    let after = o.snap("boot2");
    after.assert_boot_check_ok();
    if rest == via_retry {
        // Back on c0, still the default: an interrupted attempt, not a bad commit.
        after.assert_runs(o.system(0));
        let state = after.state();
        let (result, message) = last_result(&state);
        assert_eq!(result, "reverted", "{message}");
        assert_eq!(state["attempts"]["count"], 1);
        assert_eq!(state["bad"], serde_json::json!([]));
        assert_eq!(after.default_entry(), "nixos-generation-1.conf");
    }
    let deployed = o.snap("deployed");
    deployed.assert_runs(o.system(1));
    let n = deployed.generation();
    deployed.assert_profile(n, o.system(1));
    let state = deployed.state();
    assert_eq!(state["deployed"]["commit"], o.sha(1));
    assert_eq!(state["deployed"]["generation"], n);
    assert!(state["pending"].is_null());
    let blessed = format!("nixos-generation-{n}.conf");
    assert!(
        deployed.entries().contains(&blessed),
        "{:?}",
        deployed.entries()
    );
    assert_eq!(deployed.default_entry(), blessed);
}

#[test]
fn power_cuts_in_the_window_before_the_bless_and_in_systemd_bless_boot_converge() {
    let o = run_scenario(&Scenario::new(
        "cut-in-window-and-bless",
        &["good 0", "good 1"],
        5,
    ));
    o.assert_boots(&[
        "c0 nixos-generation-1+3.conf reboot",
        "c1 nixos-generation-2+3.conf power cut at confirmation-window",
        "c1 nixos-generation-2+2-1.conf power cut at builder-entries-written",
        "c1 nixos-generation-2+1-2.conf power cut at systemd-bless-boot",
        "c1 nixos-generation-2.conf power off",
    ]);
    let window = o.snap("window");
    window.assert_runs(o.system(1));
    assert_eq!(window.state()["pending"]["phase"], "activated");
    assert_eq!(window.state()["pending"]["boot_tries_left"], 2);
    let again = o.snap("window-again");
    again.assert_runs(o.system(1));
    assert_eq!(again.state()["pending"]["boot_tries_left"], 1);
    assert_eq!(
        again.file("boot-count-path"),
        "\\loader\\entries\\nixos-generation-2+1-2.conf"
    );
    let deployed = o.snap("deployed");
    deployed.assert_runs(o.system(1));
    deployed.assert_profile(2, o.system(1));
    deployed.assert_boot_check_ok();
    let state = deployed.state();
    assert_eq!(state["deployed"]["commit"], o.sha(1));
    assert!(state["pending"].is_null());
    assert_eq!(state["bad"], serde_json::json!([]));
    assert_eq!(
        deployed.entries(),
        ["nixos-generation-1.conf", "nixos-generation-2.conf"]
    );
    assert_eq!(deployed.default_entry(), "nixos-generation-2.conf");
}

#[test]
fn test_mode_power_cut_in_the_window_comes_back_on_the_previous_generation_and_retries() {
    let mut s = Scenario::new("test-mode-cut", &["good 0", "good 1"], 3);
    s.mode = "test";
    let o = run_scenario(&s);
    o.assert_boots(&[
        "c0 nixos-generation-1+3.conf power cut at test-mode-window",
        "c0 nixos-generation-1.conf reboot",
        "c1 nixos-generation-2.conf power off",
    ]);
    let window = o.snap("window");
    assert_eq!(window.file("current"), o.system(1));
    assert_eq!(window.file("booted"), o.system(0));
    window.assert_profile(1, o.system(0));
    assert_eq!(window.state()["pending"]["phase"], "activated");
    assert_eq!(window.entries(), ["nixos-generation-1.conf"]);

    let after = o.snap("after-cut");
    after.assert_runs(o.system(0));
    after.assert_profile(1, o.system(0));
    after.assert_boot_check_ok();
    let state = after.state();
    let (result, message) = last_result(&state);
    assert_eq!(result, "reverted", "{message}");
    assert!(message.contains("rebooted before"), "{message}");
    assert_eq!(state["attempts"]["count"], 1);
    assert_eq!(state["bad"], serde_json::json!([]));
    assert_eq!(after.default_entry(), "nixos-generation-1.conf");

    let deployed = o.snap("deployed");
    assert_eq!(deployed.file("current"), o.system(1));
    deployed.assert_profile(2, o.system(1));
    assert_eq!(deployed.state()["deployed"]["commit"], o.sha(1));
    // Written counted by the builder, blessed by pullnix at once: it was seen healthy.
    assert_eq!(
        deployed.entries(),
        ["nixos-generation-1.conf", "nixos-generation-2.conf"]
    );
    assert_eq!(deployed.default_entry(), "nixos-generation-2.conf");

    let rebooted = o.snap("rebooted");
    rebooted.assert_runs(o.system(1));
    assert_eq!(rebooted.file("boot-count-path"), "");
}

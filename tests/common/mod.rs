//! Shared support for pullnix's integration tests.
//!
//! The tests run the real `pullnix` binary against real tools: Nix 2.8 builds a fixture flake,
//! `nix-env` manages the system profile, `git daemon` and lighttpd serve the repository, and
//! vulnix scans against a local NVD mirror. Only the machine itself is fake: a [`TestSystem`]
//! is a directory that pullnix is pointed at with `--root`, and the fixture's
//! `switch-to-configuration` acts on that directory (found through the `TEST_ROOT` environment
//! variable) the way NixOS's real script acts on `/`.
//!
//! Everything here is isolated per test: every helper owns its own temporary directory and
//! every server its own port, because cargo runs the tests of one file in parallel threads.
//! Only the Nix store is shared, which is safe because store paths are immutable and Nix locks
//! concurrent builds of the same derivation.
//!
//! This module is compiled once per test file, and no file uses all of it.
//!
//! # vulnix 1.10.1, offline (measured; see also `tests/fixtures/VULNIX.md`)
//!
//! ```text
//! vulnix --json -m http://127.0.0.1:PORT/ -c CACHE_DIR [-w WHITELIST.toml]... STORE_PATH
//! ```
//!
//! * `-m` may end in `/` or not (vulnix appends one). It downloads
//!   `nvdcve-1.1-{year}.json.gz` for the current year and the five before it; if the cache in
//!   `-c` was updated less than 7 days ago it fetches only `nvdcve-1.1-modified.json.gz`, and
//!   less than 2 hours ago nothing at all. A fresh `-c` per test keeps runs independent.
//! * vulnix looks up the path's deriver (`nix-store -qd`), takes the closure of that `.drv`
//!   (`nix-store -qR`), and matches every derivation whose name splits into `pname-version` by
//!   exact CPE product and version. So the `.drv` files must exist (built locally: fine).
//! * stdout with `--json` is a JSON array (pretty-printed, indent 1), `[]` when clean:
//!
//!   ```json
//!   [{"name": "openssl-1.0.1", "pname": "openssl", "version": "1.0.1",
//!     "derivation": "/nix/store/…-openssl-1.0.1.drv",
//!     "affected_by": ["CVE-2099-0001"], "whitelisted": [],
//!     "cvssv3_basescore": {"CVE-2099-0001": 9.8},
//!     "description": {"CVE-2099-0001": "…"}}]
//!   ```
//!
//!   A fully whitelisted package is left out unless `-s`/`--show-whitelisted` is given, then it
//!   appears with its CVEs under `whitelisted` and an empty `affected_by`.
//! * Exit codes: 0 clean (or all whitelisted), 2 unwhitelisted findings, 1 only whitelisted
//!   findings with `-s`; but also 2 with empty stdout for a path that does not exist, and 1 with
//!   a Python traceback and empty stdout when the mirror is unreachable or a path has no
//!   deriver. Hence: judge from the parsed JSON, never from the exit code.
//! * A cache updated less than 2 hours ago is used even when the mirror is down.
//! * Whitelist (`-w FILE`, TOML): one table per package, `"name-version"` or `"name"` for all
//!   versions, optional `cve` (string or list; without it every CVE of the package is masked),
//!   `comment`, `until = "YYYY-MM-DD"`, `issue_url`:
//!
//!   ```toml
//!   ["openssl-1.0.1"]
//!   cve = ["CVE-2099-0001"]
//!   comment = "accepted for the test"
//!   ```

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Temporary directories and running commands
// ---------------------------------------------------------------------------------------------

/// A directory of its own for one test object, deleted when dropped.
///
/// Hand-rolled instead of a crate to keep the dependency list as it is. Set
/// `PULLNIX_KEEP_TMP` (any value) to keep the directories of a failing test for inspection;
/// their paths are then printed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/pullnix-LABEL-PID-N-NANOS`. The process id and a process-wide counter
    /// make the name unique among parallel tests and concurrent `cargo test` runs; the path is
    /// canonical so it compares equal to what pullnix and the scripts see.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!(
                "pullnix-{label}-{}-{n}-{nanos:08x}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let path = fs::canonicalize(&path).unwrap();
                    return TempDir { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!(
                    "cannot create a temporary directory in {}: {e}",
                    base.display()
                ),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`, for brevity.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PULLNIX_KEEP_TMP").is_some() {
            eprintln!("PULLNIX_KEEP_TMP: keeping {}", self.path.display());
        } else {
            // Best effort: a failure to clean up must not turn a passing test into a panic
            // (and a panic in drop during unwinding would abort the whole test binary).
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `program arg arg …` for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin from /dev/null and captured output. Panics only if
/// the program cannot be started: the caller judges the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

/// Runs `cmd`, panics with its stdout and stderr unless it exits 0, returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "`{}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("command output is not UTF-8")
}

/// Runs `cmd` like [`run`], but kills it and panics once `limit` has passed, so that a hung
/// child fails its test instead of hanging the whole suite.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    // Drain both pipes concurrently so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "`{}` did not finish within {limit:?}; stderr so far:\n{}",
                describe(cmd),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Environment variables that would make a child `git` operate on some other repository,
/// e.g. when the tests run from inside a git hook.
const GIT_ENV_LEAKS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// A `git` command isolated from the machine's git configuration: no system or global config,
/// a fixed identity and default branch, and none of the `GIT_*` variables a hook would leak.
pub fn git() -> Command {
    let mut cmd = Command::new("git");
    for var in GIT_ENV_LEAKS {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "user.name=pullnix fixture",
            "-c",
            "user.email=fixture@pullnix.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ]);
    cmd
}

/// `git --exec-path`: where git's helper programs live (computed once).
fn git_exec_path() -> &'static Path {
    static EXEC_PATH: OnceLock<PathBuf> = OnceLock::new();
    EXEC_PATH.get_or_init(|| PathBuf::from(run_ok(git().arg("--exec-path")).trim()))
}

/// `git -C dir …`, see [`git`].
pub fn git_in(dir: &Path) -> Command {
    let mut cmd = git();
    cmd.arg("-C").arg(dir);
    cmd
}

/// Replaces the symlink `link` by one pointing at `target` through a rename, so that a
/// concurrent reader never finds it missing (the same discipline the fixture scripts use).
fn replace_symlink(link: &Path, target: &Path) {
    let tmp = link.with_file_name(format!(
        ".{}.tmp",
        link.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

/// The target of a symlink, or `None` if `link` does not exist or is not a symlink.
fn read_link_opt(link: &Path) -> Option<PathBuf> {
    fs::read_link(link).ok()
}

// ---------------------------------------------------------------------------------------------
// The fixture flake
// ---------------------------------------------------------------------------------------------

/// The host name the fixture flake is configured for unless [`FlakeRepo::set_host`] changes it
/// (and the one [`write_config`] puts into the config).
pub const DEFAULT_HOST: &str = "testhost";

/// The branch the fixture repository publishes.
pub const BRANCH: &str = "main";

/// The fixture flake's files, embedded so the tests do not depend on their working directory.
const FLAKE_FILES: &[(&str, &str)] = &[
    ("flake.nix", include_str!("../fixtures/flake/flake.nix")),
    ("builder.sh", include_str!("../fixtures/flake/builder.sh")),
    (
        "switch-to-configuration.sh",
        include_str!("../fixtures/flake/switch-to-configuration.sh"),
    ),
    (
        "chroot-switch.sh",
        include_str!("../fixtures/flake/chroot-switch.sh"),
    ),
    (
        "chroot-activate.sh",
        include_str!("../fixtures/flake/chroot-activate.sh"),
    ),
    (
        "disk-script.sh",
        include_str!("../fixtures/flake/disk-script.sh"),
    ),
];

/// Every variant the fixture flake knows (the first word of the `variant` file).
/// See `tests/fixtures/flake/flake.nix` for what each one does.
pub const VARIANTS: &[&str] = &[
    "good",
    "health-fail",
    "switch-fail",
    "build-fail",
    "eval-error",
    "missing-attr",
    "vuln",
    "lowvuln",
    "no-switch",
];

/// The message the `eval-error` variant throws.
pub const EVAL_ERROR_MESSAGE: &str = "pullnix-fixture: deliberate evaluation error";
/// The line the `build-fail` variant's builder prints on stderr.
pub const BUILD_ERROR_MESSAGE: &str = "pullnix-fixture: deliberate build failure";
/// The line the `switch-fail` variant's `switch-to-configuration` prints on stderr.
pub const SWITCH_ERROR_MESSAGE: &str = "pullnix-fixture: deliberate activation failure";

/// A git repository holding the fixture flake, published as a bare repository that pullnix
/// fetches from (directly through `file://`, or through [`GitDaemon`] / [`HttpGit`]).
///
/// The work tree and the bare repository are separate, like a developer's checkout and the
/// server, so that force-pushes and rewinds look to pullnix exactly as they would in reality.
/// The bare repository's name carries a unique token: a server that answers on a port is
/// then provably this test's server (see [`wait_for_server`]).
pub struct FlakeRepo {
    tmp: TempDir,
    work: PathBuf,
    serve_dir: PathBuf,
    name: String,
    host: String,
    flake_dir: String,
    commits: Cell<u32>,
}

impl FlakeRepo {
    /// An empty published repository (branch `main` does not exist until the first
    /// [`commit`](Self::commit)) with the flake at the top level.
    pub fn new() -> FlakeRepo {
        FlakeRepo::with_flake_dir("")
    }

    /// Like [`new`](Self::new), with the flake in the subdirectory `flake_dir` (for pullnix's
    /// `repo.flake_dir`); `""` is the top level.
    pub fn with_flake_dir(flake_dir: &str) -> FlakeRepo {
        let tmp = TempDir::new("repo");
        let work = tmp.join("work");
        let serve_dir = tmp.join("srv");
        fs::create_dir_all(&serve_dir).unwrap();
        // The directory name already makes the path unique; the token in the repository name
        // makes its URL unique across servers too.
        let token = tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("pullnix-repo-")
            .to_owned();
        let name = format!("fleet-{token}");
        let repo = FlakeRepo {
            tmp,
            work,
            serve_dir,
            name,
            host: DEFAULT_HOST.to_owned(),
            flake_dir: flake_dir.trim_matches('/').to_owned(),
            commits: Cell::new(0),
        };
        run_ok(git().arg("init").arg("--bare").arg(repo.bare()));
        run_ok(git().arg("init").arg(&repo.work));
        run_ok(
            git_in(&repo.work)
                .args(["remote", "add", "origin"])
                .arg(repo.bare()),
        );
        repo
    }

    /// Makes later commits configure the host `host` instead of [`DEFAULT_HOST`], i.e. the
    /// flake then defines `nixosConfigurations.<host>`.
    pub fn set_host(&mut self, host: &str) {
        host.clone_into(&mut self.host);
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn flake_dir(&self) -> &str {
        &self.flake_dir
    }

    /// The repository's name on the servers, without `.git`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The published bare repository.
    pub fn bare(&self) -> PathBuf {
        self.serve_dir.join(format!("{}.git", self.name))
    }

    /// The directory the servers export (`--base-path`); it holds only [`bare`](Self::bare).
    pub fn serve_dir(&self) -> &Path {
        &self.serve_dir
    }

    /// The non-bare source repository the commits are made in.
    pub fn work_tree(&self) -> &Path {
        &self.work
    }

    /// A scratch directory that lives as long as the repository (e.g. for clones).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.tmp.join("scratch").join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `file:///…/NAME.git`.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare().display())
    }

    /// Commits the fixture with `variant` as the content of its `variant` file and pushes it to
    /// the published branch `main`. Returns the commit id.
    ///
    /// The first word picks the behaviour (one of [`VARIANTS`]); the rest only makes the
    /// output distinct, e.g. `"good 2"` builds a different system than `"good 1"`. Committing
    /// the same text twice makes two distinct commits that build the same system.
    pub fn commit(&self, variant: &str) -> String {
        let first = variant.split_whitespace().next().unwrap_or("");
        assert!(
            VARIANTS.contains(&first),
            "unknown fixture variant {variant:?}; known: {VARIANTS:?}"
        );
        let dir = self.work.join(&self.flake_dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, text) in FLAKE_FILES {
            fs::write(dir.join(name), text).unwrap();
        }
        fs::write(dir.join("variant"), variant).unwrap();
        fs::write(dir.join("host"), format!("{}\n", self.host)).unwrap();
        let n = self.commits.get() + 1;
        self.commits.set(n);
        run_ok(git_in(&self.work).args(["add", "-A"]));
        // The counter keeps commits with equal trees distinct even within one second.
        run_ok(git_in(&self.work).args([
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            &format!("fixture commit {n}: {variant}"),
        ]));
        run_ok(git_in(&self.work).args(["push", "-q", "origin", "HEAD:refs/heads/main"]));
        self.head().unwrap()
    }

    /// Writes `name` (relative to the flake directory) into the work tree; the next
    /// [`commit`](Self::commit) publishes it. The `disk` file is read by the fixture's disk
    /// script (see `tests/fixtures/flake/flake.nix`).
    pub fn write_file(&self, name: &str, text: &str) {
        let dir = self.work.join(&self.flake_dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), text).unwrap();
    }

    /// Replaces the published head by the same commit signed with the SSH private key `key`
    /// (git's `gpg.format = ssh`, `commit -S`), force-pushed; returns the signed commit.
    pub fn sign_head(&self, key: &Path) -> String {
        run_ok(git_in(&self.work).args([
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={}", key.display()),
            "commit",
            "-q",
            "--amend",
            "--no-edit",
            "-S",
        ]));
        run_ok(git_in(&self.work).args(["push", "-q", "-f", "origin", "HEAD:refs/heads/main"]));
        self.head().unwrap()
    }

    /// Rewinds the published branch (and the work tree) to `sha` with a force-push, as someone
    /// reverting a bad push would. Later commits build on `sha`.
    pub fn force_push_reset(&self, sha: &str) {
        run_ok(git_in(&self.work).args(["reset", "-q", "--hard", sha]));
        run_ok(git_in(&self.work).args([
            "push",
            "-q",
            "--force",
            "origin",
            "HEAD:refs/heads/main",
        ]));
    }

    /// The commit the published branch points at, `None` before the first commit.
    pub fn head(&self) -> Option<String> {
        let out =
            run(git_in(&self.bare()).args(["rev-parse", "--verify", "-q", "refs/heads/main"]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The flake reference for commit `sha` of the published repository, as pullnix should
    /// build it: `git+file:///…/NAME.git?ref=refs/heads/main&rev=SHA[&dir=…]`.
    pub fn flake_ref(&self, sha: &str) -> String {
        let mut r = format!(
            "git+file://{}?ref=refs/heads/{BRANCH}&rev={sha}",
            self.bare().display()
        );
        if !self.flake_dir.is_empty() {
            write!(r, "&dir={}", self.flake_dir).unwrap();
        }
        r
    }

    /// `FLAKE_REF#nixosConfigurations.<host>.config.system.build.toplevel`.
    pub fn installable(&self, sha: &str) -> String {
        format!("{}#{}", self.flake_ref(sha), toplevel_attr(&self.host))
    }

    /// Builds commit `sha` with real `nix build` (see [`nix_build`]). Nix's caches go to this
    /// repository's temporary directory, not to the user's home.
    pub fn build(&self, sha: &str) -> NixBuild {
        nix_build(&self.installable(sha), &self.tmp.join("xdg-cache"))
    }

    /// Commits `variant`, builds it and returns the commit and the built system; panics if
    /// the build fails. The usual way to get the systems a test needs.
    pub fn commit_and_build(&self, variant: &str) -> (String, PathBuf) {
        let sha = self.commit(variant);
        let out = self.build(&sha).expect_out();
        (sha, out)
    }
}

/// The attribute pullnix builds for `host`.
pub fn toplevel_attr(host: &str) -> String {
    format!("nixosConfigurations.{host}.config.system.build.toplevel")
}

/// The outcome of one `nix build --no-link --json`.
#[derive(Debug)]
pub struct NixBuild {
    pub status: ExitStatus,
    /// The `out` output, if the build succeeded.
    pub out: Option<PathBuf>,
    /// The derivation, if the build succeeded.
    pub drv: Option<PathBuf>,
    pub stderr: String,
}

impl NixBuild {
    /// The built system; panics with nix's stderr if the build failed.
    pub fn expect_out(&self) -> PathBuf {
        match &self.out {
            Some(out) if self.status.success() => out.clone(),
            _ => panic!("nix build failed ({}):\n{}", self.status, self.stderr),
        }
    }
}

/// Builds `installable` with the real `nix build --no-link --json` (Nix 2.8 has no
/// `--print-out-paths`) and parses its `[{"drvPath":…,"outputs":{"out":…}}]`.
///
/// `cache_home` becomes `XDG_CACHE_HOME`, where Nix keeps its copy of every git repository it
/// fetched from: per test, so that nothing accumulates in the user's home.
pub fn nix_build(installable: &str, cache_home: &Path) -> NixBuild {
    let out = run(Command::new("nix")
        .args(["build", "--no-link", "--json", installable])
        .env("XDG_CACHE_HOME", cache_home));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (mut drv, mut path) = (None, None);
    if out.status.success() {
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("nix build printed no JSON ({e}): {stderr}"));
        let first = &json[0];
        drv = first["drvPath"].as_str().map(PathBuf::from);
        path = first["outputs"]["out"].as_str().map(PathBuf::from);
    }
    NixBuild {
        status: out.status,
        out: path,
        drv,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------
// The fake system
// ---------------------------------------------------------------------------------------------

/// A NixOS "machine" in a temporary directory ROOT, for `pullnix --root ROOT`:
///
/// ```text
/// ROOT/nix/var/nix/profiles/system     the system profile (real nix-env generations)
/// ROOT/run/current-system              the running system
/// ROOT/run/booted-system               the system that was booted
/// ROOT/proc/sys/kernel/random/boot_id  the kernel's id of this boot: a new one at every reboot
/// ROOT/boot/default                    what the boot loader boots next (a store path)
/// ROOT/boot/loader/entries/            systemd-boot entries
/// ROOT/boot/counting                   if present: boot counting on, holds the tries
/// ROOT/var/lib/pullnix/                pullnix's state directory
/// ROOT/switch.log                      every switch-to-configuration call, "ACTION OUT"
/// ROOT/home/                           HOME for pullnix and the commands it runs
/// ```
///
/// Only the profile is managed by Nix itself; `run/`, `boot/` and `switch.log` are maintained
/// by the fixture's `switch-to-configuration` (model in `tests/fixtures/flake/flake.nix`) and
/// by [`reboot`](Self::reboot), which plays the boot loader.
pub struct TestSystem {
    tmp: TempDir,
    root: PathBuf,
}

impl TestSystem {
    /// A freshly installed system running `initial` (a built fixture toplevel) as generation 1:
    /// the profile holds it, it is running and booted, and the boot loader points at it
    /// (`boot/default` and `nixos-generation-1.conf`, as the installer would leave it).
    /// `switch.log` starts empty.
    pub fn new(initial: &Path) -> TestSystem {
        let tmp = TempDir::new("system");
        let root = tmp.join("root");
        for dir in [
            "nix/var/nix/profiles",
            "run",
            "boot/loader/entries",
            "var/lib/pullnix",
            "home",
            "etc/pullnix",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let sys = TestSystem { tmp, root };
        sys.set_profile(initial);
        assert_eq!(sys.profile_generation(), Some(1));
        replace_symlink(&sys.current_system_link(), initial);
        replace_symlink(&sys.booted_system_link(), initial);
        sys.new_boot_id();
        fs::write(
            sys.boot_dir().join("default"),
            format!("{}\n", initial.display()),
        )
        .unwrap();
        fs::write(
            sys.entries_dir().join("nixos-generation-1.conf"),
            boot_entry_text(1, initial),
        )
        .unwrap();
        sys
    }

    /// ROOT, the value of `--root` and `TEST_ROOT`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A scratch directory outside ROOT that lives as long as the system.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.tmp.join("scratch").join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// ROOT/nix/var/nix/profiles/system.
    pub fn profile(&self) -> PathBuf {
        self.root.join("nix/var/nix/profiles/system")
    }

    /// ROOT/var/lib/pullnix (pullnix's default `state_dir` below the root).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/pullnix")
    }

    /// ROOT/var/lib/pullnix/state.json.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// The parsed state file, `None` if it does not exist.
    pub fn state_json(&self) -> Option<serde_json::Value> {
        let text = fs::read(self.state_file()).ok()?;
        Some(serde_json::from_slice(&text).expect("state.json is not valid JSON"))
    }

    /// ROOT/home, the HOME of pullnix runs.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    pub fn boot_dir(&self) -> PathBuf {
        self.root.join("boot")
    }

    /// ROOT/boot/loader/entries.
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join("boot/loader/entries")
    }

    pub fn current_system_link(&self) -> PathBuf {
        self.root.join("run/current-system")
    }

    pub fn booted_system_link(&self) -> PathBuf {
        self.root.join("run/booted-system")
    }

    /// What ROOT/run/current-system points at.
    pub fn current_system(&self) -> Option<PathBuf> {
        read_link_opt(&self.current_system_link())
    }

    /// What ROOT/run/booted-system points at.
    pub fn booted_system(&self) -> Option<PathBuf> {
        read_link_opt(&self.booted_system_link())
    }

    /// The profile's current generation number, from `system -> system-N-link`.
    pub fn profile_generation(&self) -> Option<u32> {
        let link = read_link_opt(&self.profile())?;
        generation_number(link.file_name()?.to_str()?)
    }

    /// The store path of the profile's current generation.
    pub fn profile_target(&self) -> Option<PathBuf> {
        self.generation_target(self.profile_generation()?)
    }

    /// The store path of generation `n` of the profile, if that generation exists.
    pub fn generation_target(&self, n: u32) -> Option<PathBuf> {
        read_link_opt(&self.profile().with_file_name(format!("system-{n}-link")))
    }

    /// All existing generation numbers of the profile, ascending.
    pub fn generations(&self) -> Vec<u32> {
        let mut gens: Vec<u32> = fs::read_dir(self.profile().parent().unwrap())
            .unwrap()
            .filter_map(|e| generation_number(e.ok()?.file_name().to_str()?))
            .collect();
        gens.sort_unstable();
        gens
    }

    /// Makes `path` the profile's newest generation with the real
    /// `nix-env -p PROFILE --set PATH` (which adds no generation if it is already current).
    /// For setting up scenarios; this is what pullnix does on confirmation.
    pub fn set_profile(&self, path: &Path) {
        run_ok(
            Command::new("nix-env")
                .arg("-p")
                .arg(self.profile())
                .arg("--set")
                .arg(path),
        );
    }

    /// The lines of ROOT/switch.log ("ACTION STOREPATH"), empty if there were no calls.
    pub fn switch_log(&self) -> Vec<String> {
        fs::read_to_string(self.root.join("switch.log"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Runs `SYSTEM/bin/switch-to-configuration ACTION` on this system (with `TEST_ROOT`), as
    /// pullnix would. For setting up scenarios and for the fixture self-test.
    pub fn switch_to_configuration(&self, system: &Path, action: &str) -> Output {
        run(Command::new(system.join("bin/switch-to-configuration"))
            .arg(action)
            .env("TEST_ROOT", &self.root))
    }

    /// The store path ROOT/boot/default names: what the boot loader boots next.
    pub fn boot_default(&self) -> Option<PathBuf> {
        let text = fs::read_to_string(self.boot_dir().join("default")).ok()?;
        Some(PathBuf::from(text.trim()))
    }

    /// Turns on systemd-boot style boot counting: from now on, new entries are written as
    /// `nixos-generation-N+TRIES.conf`.
    pub fn enable_boot_counting(&self, tries: u32) {
        fs::write(self.boot_dir().join("counting"), format!("{tries}\n")).unwrap();
    }

    /// The file names in ROOT/boot/loader/entries, sorted.
    pub fn boot_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.entries_dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| Path::new(n).extension().is_some_and(|e| e == "conf"))
            .collect();
        names.sort();
        names
    }

    /// The system an entry boots, from its `options init=SYSTEM/init` line.
    pub fn boot_entry_target(&self, entry: &str) -> Option<PathBuf> {
        let text = fs::read_to_string(self.entries_dir().join(entry)).ok()?;
        text.lines().find_map(|line| {
            let init = line
                .strip_prefix("options ")?
                .split_whitespace()
                .find_map(|o| o.strip_prefix("init="))?;
            Some(Path::new(init).parent()?.to_path_buf())
        })
    }

    /// Simulates a reboot: the boot loader boots ROOT/boot/default if the installer ever wrote
    /// it, else the profile's current generation; that becomes both the booted and the running
    /// system. Returns the booted system.
    pub fn reboot(&self) -> PathBuf {
        let next = self
            .boot_default()
            .or_else(|| self.profile_target())
            .expect("nothing to boot: no boot/default and no profile");
        self.reboot_into(&next);
        next
    }

    /// Simulates booting `system` explicitly, e.g. a boot-counted entry being tried or a
    /// generation picked from the boot menu.
    pub fn reboot_into(&self, system: &Path) {
        self.new_boot_id();
        replace_symlink(&self.booted_system_link(), system);
        replace_symlink(&self.current_system_link(), system);
    }

    /// `ROOT/proc/sys/kernel/random/boot_id`, where pullnix reads the id of the running boot.
    pub fn boot_id_file(&self) -> PathBuf {
        self.root.join("proc/sys/kernel/random/boot_id")
    }

    /// The id of the running (fake) boot.
    pub fn boot_id(&self) -> String {
        fs::read_to_string(self.boot_id_file())
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A boot starts: the kernel picks a random id for it (a fresh UUID from the host's kernel).
    fn new_boot_id(&self) {
        let id = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
        fs::create_dir_all(self.boot_id_file().parent().unwrap()).unwrap();
        fs::write(self.boot_id_file(), id).unwrap();
    }

    /// Simulates systemd-boot trying the counted entry `entry` (`NAME+LEFT[-DONE].conf`):
    /// the counter is renamed to `+(LEFT-1)-(DONE+1)` before the boot, then the entry's system
    /// is booted. Returns the entry's new file name.
    pub fn try_boot_entry(&self, entry: &str) -> String {
        let (base, left, done) = parse_counted_entry(entry)
            .unwrap_or_else(|| panic!("{entry} is not a boot-counted entry"));
        let renamed = format!("{base}+{}-{}.conf", left.saturating_sub(1), done + 1);
        let system = self
            .boot_entry_target(entry)
            .unwrap_or_else(|| panic!("{entry} has no init= option"));
        fs::rename(
            self.entries_dir().join(entry),
            self.entries_dir().join(&renamed),
        )
        .unwrap();
        self.reboot_into(&system);
        renamed
    }
}

/// `system-N-link` -> N.
fn generation_number(name: &str) -> Option<u32> {
    name.strip_prefix("system-")?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// Splits `NAME+LEFT-DONE.conf` or `NAME+LEFT.conf` into (NAME, LEFT, DONE).
pub fn parse_counted_entry(entry: &str) -> Option<(String, u32, u32)> {
    let stem = entry.strip_suffix(".conf")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
        None => (counter.parse().ok()?, 0),
    };
    Some((base.to_owned(), left, done))
}

/// The body of a boot entry for generation `n` booting `system`, in the form the fixture's
/// `switch-to-configuration` writes.
fn boot_entry_text(n: u32, system: &Path) -> String {
    let s = system.display();
    format!(
        "title NixOS (Generation {n})\nversion Generation {n}\nlinux {s}/kernel\noptions init={s}/init\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago (nothing listens on it once this returns). Another process may take it before the server binds;
/// [`wait_for_server`] detects that and the caller starts over on a new port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the freshly spawned `child` serves on `port`, proven by `probe` (which must only
/// succeed against this very server, e.g. by asking for a uniquely named resource).
/// Returns false if the child exited or never answered within 10 s; the child is then killed.
fn wait_for_server(child: &mut Child, port: u16, probe: &dyn Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            if probe() {
                return true;
            }
            // Someone else's server holds the port: ours is about to fail to bind.
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Starts a server on a free port: `spawn(port)` starts it, `probe(port)` proves it is ours.
/// Retries on a new port when the chosen one was taken in between.
fn start_server(
    what: &str,
    spawn: &dyn Fn(u16) -> Child,
    probe: &dyn Fn(u16) -> bool,
) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn(port);
        if wait_for_server(&mut child, port, &|| probe(port)) {
            return (child, port);
        }
    }
    panic!("{what} did not start serving");
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// True if `git ls-remote URL` succeeds.
fn git_answers(url: &str) -> bool {
    run(git().args(["ls-remote", url])).status.success()
}

/// A minimal HTTP/1.0 GET: the status code and the body, or `None` if the connection failed.
/// Enough to probe the test servers without another dependency.
pub fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response[head_end + 4..].to_vec()))
}

/// `git daemon` serving a [`FlakeRepo`] at `git://127.0.0.1:PORT/NAME.git`; killed on drop.
pub struct GitDaemon {
    child: Option<Child>,
    port: u16,
    url: String,
}

impl GitDaemon {
    /// Starts the daemon and returns once it answers `git ls-remote` for this repository.
    pub fn start(repo: &FlakeRepo) -> GitDaemon {
        let url_for = |port: u16| format!("git://127.0.0.1:{port}/{}.git", repo.name());
        let (child, port) = start_server(
            "git daemon",
            &|port| {
                // The helper itself, not `git daemon`: the `git` wrapper runs non-builtin
                // commands as a child process, which killing the wrapper would orphan.
                let mut cmd = Command::new(git_exec_path().join("git-daemon"));
                for var in GIT_ENV_LEAKS {
                    cmd.env_remove(var);
                }
                cmd.env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .arg("--listen=127.0.0.1")
                    .arg(format!("--port={port}"))
                    .arg(format!("--base-path={}", repo.serve_dir().display()))
                    .arg("--export-all")
                    .arg("--reuseaddr")
                    .arg("--informative-errors")
                    .arg(repo.serve_dir())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot start git daemon")
            },
            &|port| git_answers(&url_for(port)),
        );
        GitDaemon {
            child: Some(child),
            port,
            url: url_for(port),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops serving (the remote becomes unreachable); also done on drop.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The CGI program behind smart HTTP: the one of the `git` on PATH, else Debian's.
fn git_http_backend() -> PathBuf {
    let candidate = git_exec_path().join("git-http-backend");
    if candidate.exists() {
        candidate
    } else {
        PathBuf::from("/usr/lib/git-core/git-http-backend")
    }
}

/// lighttpd running `git-http-backend` (smart HTTP) for a [`FlakeRepo`] at
/// `http://127.0.0.1:PORT/NAME.git`; killed on drop.
pub struct HttpGit {
    child: Option<Child>,
    port: u16,
    url: String,
    dir: TempDir,
    /// The certificate and key of a TLS server.
    tls: Option<TempDir>,
}

impl HttpGit {
    /// Starts lighttpd and returns once it serves this repository's ref advertisement.
    pub fn start(repo: &FlakeRepo) -> HttpGit {
        HttpGit::start_inner(repo, None, None)
    }

    /// The same over TLS with a fresh self-signed certificate for 127.0.0.1 (made with the real
    /// `openssl`); `url()` is then `https://…` and `ca_file()` the certificate to trust.
    pub fn start_tls(repo: &FlakeRepo) -> HttpGit {
        HttpGit::start_inner(repo, Some(self_signed_certificate()), None)
    }

    /// [`start_tls`](Self::start_tls) with HTTP basic authentication (lighttpd's `mod_auth`):
    /// every request needs `user` and `password`.
    pub fn start_tls_with_auth(repo: &FlakeRepo, user: &str, password: &str) -> HttpGit {
        HttpGit::start_inner(
            repo,
            Some(self_signed_certificate()),
            Some((user, password)),
        )
    }

    /// The CA certificate of a TLS server.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|c| c.join("cert.pem"))
    }

    fn start_inner(repo: &FlakeRepo, tls: Option<TempDir>, auth: Option<(&str, &str)>) -> HttpGit {
        let dir = TempDir::new("lighttpd");
        if let Some((user, password)) = auth {
            fs::write(dir.join("users"), format!("{user}:{password}\n")).unwrap();
        }
        let backend = git_http_backend();
        let (child, port) = start_server(
            "lighttpd",
            &|port| {
                let conf = dir.join(format!("lighttpd-{port}.conf"));
                let mut text = lighttpd_config(port, repo.serve_dir(), &backend, dir.path());
                if auth.is_some() {
                    // mod_auth before the handlers, so it sees every request first.
                    text = text.replacen(
                        "server.modules = ( ",
                        "server.modules = ( \"mod_auth\", \"mod_authn_file\", ",
                        1,
                    );
                    write!(
                        text,
                        "auth.backend = \"plain\"\nauth.backend.plain.userfile = \"{}\"\n\
                         auth.require = ( \"/\" => ( \"method\" => \"basic\", \"realm\" => \"fleet\", \"require\" => \"valid-user\" ) )\n",
                        dir.join("users").display()
                    )
                    .unwrap();
                }
                if let Some(certs) = &tls {
                    write!(
                        text,
                        "server.modules += (\"mod_openssl\")\nssl.engine = \"enable\"\nssl.pemfile = \"{}\"\nssl.privkey = \"{}\"\n",
                        certs.join("cert.pem").display(),
                        certs.join("key.pem").display()
                    )
                    .unwrap();
                }
                fs::write(&conf, text).unwrap();
                Command::new("lighttpd")
                    .arg("-D")
                    .arg("-f")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot start lighttpd")
            },
            &|port| {
                let path = format!("/{}.git/info/refs?service=git-upload-pack", repo.name());
                if let Some(certs) = &tls {
                    // No TLS client here: the real curl asks, trusting only this certificate.
                    let mut curl = Command::new("curl");
                    if let Some((user, password)) = auth {
                        curl.args(["-u", &format!("{user}:{password}")]);
                    }
                    curl.args(["-fsS", "-o", "/dev/null", "--cacert"])
                        .arg(certs.join("cert.pem"))
                        .arg(format!("https://127.0.0.1:{port}{path}"))
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                } else {
                    matches!(http_get(port, &path), Some((200, _)))
                }
            },
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        HttpGit {
            child: Some(child),
            port,
            url: format!("{scheme}://127.0.0.1:{port}/{}.git", repo.name()),
            dir,
            tls,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// lighttpd's error log (CGI errors land here).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Stops serving (the remote becomes unreachable); also done on drop.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh self-signed certificate for 127.0.0.1 (made with the real `openssl`): `cert.pem` and
/// `key.pem` in the returned directory.
fn self_signed_certificate() -> TempDir {
    let certs = TempDir::new("tls");
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-days",
                "2",
                "-keyout",
            ])
            .arg(certs.join("key.pem"))
            .arg("-out")
            .arg(certs.join("cert.pem")),
    );
    certs
}

/// A lighttpd configuration that hands every request to `git-http-backend` as CGI: the alias
/// maps `/NAME.git/…` onto the backend program plus a path, and lighttpd passes the part after
/// the program as `PATH_INFO`, which the backend resolves below `GIT_PROJECT_ROOT`.
fn lighttpd_config(port: u16, project_root: &Path, backend: &Path, dir: &Path) -> String {
    format!(
        r#"server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{dir}/error.log"
server.modules = ( "mod_alias", "mod_cgi", "mod_setenv" )
alias.url = ( "/" => "{backend}/" )
cgi.assign = ( "" => "" )
setenv.set-environment = (
  "GIT_PROJECT_ROOT" => "{root}",
  "GIT_HTTP_EXPORT_ALL" => "1",
  "GIT_CONFIG_NOSYSTEM" => "1",
  "GIT_CONFIG_GLOBAL" => "/dev/null",
)
"#,
        root = project_root.display(),
        dir = dir.display(),
        backend = backend.display(),
    )
}

// ---------------------------------------------------------------------------------------------
// The NVD mirror for vulnix
// ---------------------------------------------------------------------------------------------

/// One crafted advisory of the test NVD feeds.
#[derive(Debug, Clone, Copy)]
pub struct Advisory {
    pub cve: &'static str,
    /// CPE vendor and product; vulnix matches the product against the package name.
    pub vendor: &'static str,
    pub product: &'static str,
    pub version: &'static str,
    pub cvss3: f64,
    /// The derivation name a closure must contain to be affected.
    pub package: &'static str,
}

/// Critical (9.8) advisory against `openssl-1.0.1`, which the `vuln` variant contains.
pub const CRITICAL: Advisory = Advisory {
    cve: "CVE-2099-0001",
    vendor: "openssl",
    product: "openssl",
    version: "1.0.1",
    cvss3: 9.8,
    package: "openssl-1.0.1",
};

/// Low (3.1) advisory against `fixturelib-2.0.1`, which the `lowvuln` variant contains.
pub const LOW: Advisory = Advisory {
    cve: "CVE-2099-0002",
    vendor: "pullnix-fixture",
    product: "fixturelib",
    version: "2.0.1",
    cvss3: 3.1,
    package: "fixturelib-2.0.1",
};

/// A critical advisory against a version no fixture contains (`openssl-1.0.2`): proves that
/// the version has to match, not just the name.
pub const DECOY: Advisory = Advisory {
    cve: "CVE-2099-0003",
    vendor: "openssl",
    product: "openssl",
    version: "1.0.2",
    cvss3: 9.1,
    package: "openssl-1.0.2",
};

/// All advisories the mirror serves.
pub const ADVISORIES: &[Advisory] = &[CRITICAL, LOW, DECOY];

/// A local NVD mirror for `vulnix -m`: `python3 -m http.server` on 127.0.0.1 serving
/// `nvdcve-1.1-{year}.json.gz` (NVD JSON 1.1 schema) around the current year plus
/// `nvdcve-1.1-modified.json.gz`, with the [`ADVISORIES`]. Killed on drop.
pub struct NvdMirror {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl NvdMirror {
    /// Writes the feeds and starts the server; returns once it serves them.
    pub fn start() -> NvdMirror {
        let dir = TempDir::new("nvd");
        let feeds = dir.join("feeds");
        fs::create_dir(&feeds).unwrap();
        write_nvd_feeds(&feeds);
        // Only this mirror has this file, which proves that the port answers for us.
        let token = format!(
            "{}.token",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        fs::write(feeds.join(&token), "pullnix nvd mirror\n").unwrap();
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let (child, port) = start_server(
            "NVD mirror",
            &|port| {
                Command::new(python)
                    .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
                    .arg(&feeds)
                    .arg(port.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot start python3 -m http.server")
            },
            &|port| matches!(http_get(port, &format!("/{token}")), Some((200, _))),
        );
        NvdMirror {
            child: Some(child),
            port,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT/`, for `vulnix -m` and pullnix's `scan.mirror`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh, empty directory for `vulnix -c` (vulnix skips downloads for two hours after an
    /// update, so sharing a cache would couple tests).
    pub fn new_cache_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join("caches").join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Stops serving; also done on drop.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for NvdMirror {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The current year by the system clock, as vulnix computes it (`date.today().year`).
fn current_year() -> i64 {
    let out = run_ok(Command::new("date").arg("+%Y"));
    out.trim().parse().expect("date +%Y printed no year")
}

/// One CVE item of the NVD JSON 1.1 feed schema, with the fields vulnix reads (ID,
/// description, `configurations.nodes[].cpe_match[]`, `impact.baseMetricV3.cvssV3.baseScore`)
/// and the surrounding ones a real feed has.
fn nvd_item(a: &Advisory) -> serde_json::Value {
    serde_json::json!({
        "cve": {
            "data_type": "CVE",
            "data_format": "MITRE",
            "data_version": "4.0",
            "CVE_data_meta": { "ID": a.cve, "ASSIGNER": "fixture@pullnix.invalid" },
            "problemtype": { "problemtype_data": [ { "description": [] } ] },
            "references": { "reference_data": [] },
            "description": { "description_data": [ {
                "lang": "en",
                "value": format!("pullnix test fixture: crafted advisory for {}", a.package),
            } ] },
        },
        "configurations": {
            "CVE_data_version": "4.0",
            "nodes": [ {
                "operator": "OR",
                "children": [],
                "cpe_match": [ {
                    "vulnerable": true,
                    "cpe23Uri": format!(
                        "cpe:2.3:a:{}:{}:{}:*:*:*:*:*:*:*", a.vendor, a.product, a.version
                    ),
                    "cpe_name": [],
                } ],
            } ],
        },
        "impact": {
            "baseMetricV3": {
                "cvssV3": {
                    "version": "3.1",
                    "baseScore": a.cvss3,
                    "baseSeverity": if a.cvss3 >= 9.0 { "CRITICAL" } else if a.cvss3 >= 7.0 {
                        "HIGH" } else if a.cvss3 >= 4.0 { "MEDIUM" } else { "LOW" },
                },
                "exploitabilityScore": 3.9,
                "impactScore": 5.9,
            },
        },
        "publishedDate": "2026-01-01T00:00Z",
        "lastModifiedDate": "2026-01-01T00:00Z",
    })
}

/// Writes the gzipped feeds into `dir`: years current-6 ..= current+1 (vulnix wants the
/// current year and the five before; the margin covers a New Year's Eve run) and `modified`.
/// The advisories are in the current year's feed and in `modified`; the other years are empty.
fn write_nvd_feeds(dir: &Path) {
    let year = current_year();
    let mut names: Vec<String> = (year - 6..=year + 1).map(|y| y.to_string()).collect();
    names.push("modified".to_owned());
    for name in names {
        let items: Vec<serde_json::Value> = if name == year.to_string() || name == "modified" {
            ADVISORIES.iter().map(nvd_item).collect()
        } else {
            Vec::new()
        };
        let feed = serde_json::json!({
            "CVE_data_type": "CVE",
            "CVE_data_format": "MITRE",
            "CVE_data_version": "4.0",
            "CVE_data_numberOfCVEs": items.len().to_string(),
            "CVE_data_timestamp": "2026-11-23T00:00Z",
            "CVE_Items": items,
        });
        let json = dir.join(format!("nvdcve-1.1-{name}.json"));
        fs::write(&json, serde_json::to_vec(&feed).unwrap()).unwrap();
        // gzip(1) replaces FOO.json by FOO.json.gz; -n keeps the output reproducible.
        run_ok(Command::new("gzip").arg("-n").arg("-f").arg(&json));
    }
}

/// `vulnix --json -m MIRROR -c CACHE [-w WL]… PATH`, the offline command line that works
/// (see the module documentation).
pub fn vulnix_command(
    mirror: &str,
    cache_dir: &Path,
    whitelists: &[&Path],
    path: &Path,
) -> Command {
    let mut cmd = Command::new("vulnix");
    cmd.arg("--json")
        .arg("-m")
        .arg(mirror)
        .arg("-c")
        .arg(cache_dir);
    for wl in whitelists {
        cmd.arg("-w").arg(wl);
    }
    cmd.arg(path);
    cmd
}

/// A vulnix TOML whitelist masking `cves` of the package `name` (`"pname-version"`, or
/// `"pname"` for all versions).
pub fn vulnix_whitelist(name: &str, cves: &[&str], comment: &str) -> String {
    let list: Vec<String> = cves.iter().map(|c| toml_string(c)).collect();
    format!(
        "[{}]\ncve = [{}]\ncomment = {}\n",
        toml_string(name),
        list.join(", "),
        toml_string(comment)
    )
}

// ---------------------------------------------------------------------------------------------
// Running pullnix
// ---------------------------------------------------------------------------------------------

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => write!(out, "\\u{:04X}", u32::from(c)).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The health check the tests configure: the running system has the fixture's `healthy`
/// marker, which every variant but `health-fail` builds.
pub const HEALTH_ARGV: [&str; 3] = [
    "/bin/sh",
    "-c",
    "test -e \"$TEST_ROOT/run/current-system/healthy\"",
];

/// The base configuration [`write_config`] starts from.
pub fn base_config(repo_url: &str) -> String {
    let argv: Vec<String> = HEALTH_ARGV.iter().map(|a| toml_string(a)).collect();
    format!(
        r#"host = {host}

[repo]
url = {url}
branch = {branch}

[confirm]
timeout = 6
interval = 1

[health]
remote = true

[[health.command]]
name = "healthy-marker"
argv = [{argv}]
timeout = 10
"#,
        host = toml_string(DEFAULT_HOST),
        url = toml_string(repo_url),
        branch = toml_string(BRANCH),
        argv = argv.join(", "),
    )
}

/// Writes ROOT/etc/pullnix/config.toml for `sys` and returns its path: [`base_config`]
/// (host `testhost`, the repository, a 6 s confirmation window polled every second, the
/// remote and the `healthy` marker as health checks, everything else at its default) merged
/// with `extra_toml` by [`merge_toml`].
///
/// Example: `write_config(&sys, &url, "[scan]\nenable = true\n[confirm]\ntimeout = 3\n")`.
pub fn write_config(sys: &TestSystem, repo_url: &str, extra_toml: &str) -> PathBuf {
    let path = sys.root().join("etc/pullnix/config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, merge_toml(&base_config(repo_url), extra_toml)).unwrap();
    path
}

/// A TOML document as its sections in order: the header line (`""` for the top level) and the
/// lines below it.
fn toml_sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sections = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            sections.push((line.trim().to_owned(), Vec::new()));
        } else {
            sections.last_mut().unwrap().1.push(line.to_owned());
        }
    }
    sections
}

/// The key a `key = value` line sets.
fn toml_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    Some(t.split_once('=')?.0.trim())
}

/// Overlays `extra` on `base` line by line, so that tests state only what differs from the
/// base configuration without producing duplicate tables (which TOML forbids):
///
/// * a key in a table (or at the top level) that `base` also has replaces the base's line;
/// * other keys, and tables `base` lacks, are added;
/// * `[[array]]` tables in `extra` replace all of the base's entries of that array (so
///   `[[health.command]]` in `extra` means "these commands instead").
///
/// Values must fit on one line, which is all the tests need.
pub fn merge_toml(base: &str, extra: &str) -> String {
    let mut merged = toml_sections(base);
    let mut replaced_arrays: Vec<String> = Vec::new();
    for (header, lines) in toml_sections(extra) {
        if header.starts_with("[[") {
            if !replaced_arrays.contains(&header) {
                merged.retain(|(h, _)| *h != header);
                replaced_arrays.push(header.clone());
            }
            merged.push((header, lines));
            continue;
        }
        let index = if let Some(i) = merged.iter().position(|(h, _)| *h == header) {
            i
        } else {
            merged.push((header, Vec::new()));
            merged.len() - 1
        };
        let target = &mut merged[index].1;
        for line in lines {
            if let Some(key) = toml_key(&line) {
                target.retain(|l| toml_key(l) != Some(key));
            }
            target.push(line);
        }
    }
    // Keep the top-level keys first; `[[…]]` entries of one array stay in their order.
    let mut out = String::new();
    for (header, lines) in merged {
        if !header.is_empty() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(&header);
            out.push('\n');
        }
        for line in lines.iter().filter(|l| !l.trim().is_empty()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// How long [`pullnix`] lets one run take before failing the test.
pub const PULLNIX_TIMEOUT: Duration = Duration::from_secs(120);

/// The command for `pullnix --config CONFIG --root ROOT ARGS…` on `sys`: `TEST_ROOT=ROOT`
/// (inherited by switch-to-configuration and the health checks), `HOME=ROOT/home` and no XDG
/// overrides (so Nix's and vulnix's caches stay inside the test), no `PULLNIX_CONFIG`, and
/// none of the `GIT_*` variables a hook would leak. For tests that need to spawn it
/// (concurrency, kills); most use [`pullnix`].
pub fn pullnix_command(sys: &TestSystem, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullnix"));
    cmd.arg("--config")
        .arg(config)
        .arg("--root")
        .arg(sys.root())
        .args(args)
        .env("TEST_ROOT", sys.root())
        .env("HOME", sys.home())
        .env_remove("PULLNIX_CONFIG")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_STATE_HOME");
    for var in GIT_ENV_LEAKS {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs pullnix on `sys` (see [`pullnix_command`]) and returns its output; fails the test if
/// it runs longer than [`PULLNIX_TIMEOUT`].
pub fn pullnix(sys: &TestSystem, config: &Path, args: &[&str]) -> Output {
    run_with_timeout(&mut pullnix_command(sys, config, args), PULLNIX_TIMEOUT)
}

/// The exit code, or a panic naming the signal that killed the process.
pub fn exit_code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}", out.status))
}

/// stderr as text, for assertions and failure messages.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `path`'s file name as text, e.g. to compare store path names.
pub fn file_name(path: &Path) -> &str {
    path.file_name().and_then(OsStr::to_str).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------------------------

/// The OpenSSH server binary.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Makes sure `/usr/sbin/sshd` exists (installing Debian's openssh-server if it does not, as
/// `.ci/run` does) and that its privilege separation directory exists.
pub fn ensure_sshd() {
    if !Path::new(SSHD).exists() {
        let _ = run(Command::new("apt-get").args(["update", "-qq"]));
        let out = run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "openssh-server"])
            .env("DEBIAN_FRONTEND", "noninteractive"));
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing and could not be installed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Debian's sshd refuses to start without it ("Missing privilege separation directory");
    // the ssh.service unit normally creates it.
    let privsep = Path::new("/run/sshd");
    if !privsep.exists() {
        let _ = fs::create_dir_all(privsep);
    }
}

/// Keys and server configuration shared by the sshd instances of one test: one host key, the
/// client key that `authorized_keys` accepts (the deploy key, or the fleet's `identity`), a
/// valid key it does not accept, and a `known_hosts` file that gains a line per server started.
pub struct SshKeys {
    dir: TempDir,
    pub user: String,
}

impl SshKeys {
    pub fn new() -> SshKeys {
        ensure_sshd();
        let dir = TempDir::new("sshd");
        for key in ["host_key", "client_key", "stranger_key"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(dir.join(key)),
            );
        }
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        fs::write(dir.join("known_hosts"), "").unwrap();
        let user = run_ok(Command::new("id").arg("-un")).trim().to_owned();
        fs::write(
            dir.join("sshd_config"),
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
        SshKeys { dir, user }
    }

    /// Where the keys, the config and every server's log live (tests may put files there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The key `authorized_keys` accepts.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    /// A valid key that is not in `authorized_keys`.
    pub fn stranger_key(&self) -> PathBuf {
        self.dir.join("stranger_key")
    }

    /// `[127.0.0.1]:PORT <host key>` for every server started with these keys.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
}

/// A real `sshd -D` on a free 127.0.0.1 port with [`SshKeys`]; killed on drop.
pub struct SshServer {
    child: Option<Child>,
    pub port: u16,
}

impl SshServer {
    pub fn start(keys: &SshKeys) -> SshServer {
        let host_key = fs::read_to_string(keys.dir.join("host_key.pub")).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut known = fs::read_to_string(keys.known_hosts()).unwrap();
            write!(known, "[127.0.0.1]:{port} {host_key}").unwrap();
            fs::write(keys.known_hosts(), known).unwrap();
            let log = fs::File::create(keys.dir.join(format!("sshd-{port}.log"))).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(keys.dir.join("sshd_config"))
                .arg("-p")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("cannot start sshd");
            if ssh_serving(&mut child, port, keys) {
                return SshServer {
                    child: Some(child),
                    port,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start serving");
    }

    /// What this server logged (to stderr, `-e`).
    pub fn log(&self, keys: &SshKeys) -> String {
        fs::read_to_string(keys.dir.join(format!("sshd-{}.log", self.port))).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for sshd's banner on `port`, then proves the server is ours: the client key gets in,
/// with the host key checked strictly against our `known_hosts`.
fn ssh_serving(child: &mut Child, port: u16, keys: &SshKeys) -> bool {
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
            return run(Command::new("ssh")
                .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
                .arg(keys.client_key())
                .args(["-o", "StrictHostKeyChecking=yes", "-o"])
                .arg(format!(
                    "UserKnownHostsFile={}",
                    keys.known_hosts().display()
                ))
                .args([
                    "-p",
                    &port.to_string(),
                    "-l",
                    &keys.user,
                    "127.0.0.1",
                    "true",
                ]))
            .status
            .success();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// One sshd with keys of its own, serving [`FlakeRepo`]s over `ssh://`: accepts only
/// [`Sshd::deploy_key`] for the current user.
pub struct Sshd {
    keys: SshKeys,
    server: SshServer,
}

impl Sshd {
    pub fn start() -> Sshd {
        let keys = SshKeys::new();
        let server = SshServer::start(&keys);
        Sshd { keys, server }
    }

    pub fn deploy_key(&self) -> PathBuf {
        self.keys.client_key()
    }

    /// A valid key that is not in `authorized_keys`.
    pub fn stranger_key(&self) -> PathBuf {
        self.keys.stranger_key()
    }

    /// `[127.0.0.1]:PORT <host key>`.
    pub fn known_hosts(&self) -> PathBuf {
        self.keys.known_hosts()
    }

    /// A `known_hosts` file that names this server with another key: a man in the middle, as
    /// far as ssh knows.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let wrong = self.keys.dir.join("wrong_known_hosts");
        fs::write(
            &wrong,
            format!(
                "[127.0.0.1]:{} {}",
                self.server.port,
                fs::read_to_string(self.keys.dir.join("stranger_key.pub")).unwrap()
            ),
        )
        .unwrap();
        wrong
    }

    /// `ssh://USER@127.0.0.1:PORT/ABS/PATH/NAME.git`.
    pub fn url(&self, repo: &FlakeRepo) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.keys.user,
            self.server.port,
            repo.bare().display()
        )
    }

    /// The config overlay for an ssh remote: the deploy key and the `known_hosts` file.
    pub fn repo_toml(key: &Path, known_hosts: &Path) -> String {
        format!(
            "[repo]\ndeploy_key = {}\nknown_hosts = {}\n",
            toml_string(&key.display().to_string()),
            toml_string(&known_hosts.display().to_string())
        )
    }

    /// What sshd logged (to stderr, `-e`).
    pub fn log(&self) -> String {
        self.server.log(&self.keys)
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Signed binary caches (closure mode)
// ---------------------------------------------------------------------------------------------

/// A binary cache directory and a signing key pair made by real `nix key`.
pub struct Cache {
    dir: TempDir,
    secret: PathBuf,
    pub public: String,
}

impl Cache {
    pub fn new(name: &str) -> Cache {
        let dir = TempDir::new("cache");
        let secret = dir.join("secret.key");
        let key = run_ok(Command::new("nix").args(["key", "generate-secret", "--key-name", name]));
        fs::write(&secret, &key).unwrap();
        let public = run_ok(Command::new("sh").arg("-c").arg(format!(
            "nix key convert-secret-to-public < {}",
            secret.display()
        )));
        Cache {
            dir,
            secret,
            public: public.trim().to_owned(),
        }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.store().display())
    }

    /// `nix copy` of `path` into the cache, signed on the way unless `signed` is false.
    pub fn publish(&self, path: &Path, signed: bool) {
        let to = if signed {
            format!("{}?secret-key={}", self.url(), self.secret.display())
        } else {
            self.url()
        };
        run_ok(Command::new("nix").args(["copy", "--to", &to]).arg(path));
    }

    /// A `[closure]` table that substitutes from this cache and trusts its key.
    pub fn closure_toml(&self) -> String {
        format!(
            "[closure]\nenable = true\nsubstituters = [{}]\ntrusted_public_keys = [{}]\n",
            toml_string(&self.url()),
            toml_string(&self.public)
        )
    }

    pub fn narinfo(&self, path: &Path) -> PathBuf {
        let name = path.file_name().unwrap().to_string_lossy();
        self.store().join(format!("{}.narinfo", &name[..32]))
    }
}

/// Whether `path` is a valid path of the local store (a failed import can leave files behind
/// under an invalid path; only validity counts).
pub fn valid(path: &Path) -> bool {
    run(Command::new("nix-store").arg("--check-validity").arg(path))
        .status
        .success()
}

/// Removes `path` from the local store, so that only the cache can provide it again.
pub fn forget(path: &Path) {
    let out = run(Command::new("nix-store").arg("--delete").arg(path));
    assert!(
        !path.exists() && !valid(path),
        "could not delete {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

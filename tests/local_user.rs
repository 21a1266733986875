//! What a local unprivileged user (here: `nobody`, through `setpriv`) could do to a device's
//! pullnix, reproduced against the real binary: read the record, stop every deployment by
//! holding the lock, or make root overwrite a file of their choice through a symlink planted in
//! a directory pullnix writes to. Each of these worked before (security review, issue 10).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run, stderr_text};
use harness::{Machine, assert_exit, assert_stderr_has, describe_run};

const NOBODY: &str = "65534";

/// `argv` run as uid/gid 65534 without supplementary groups; whether it succeeded.
fn as_nobody(argv: &[&str]) -> bool {
    run(Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .args(argv))
    .status
    .success()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_state_directory_is_private_even_when_it_was_left_open() {
    let m = Machine::new("");
    let state_dir = m.sys.state_dir();
    // What `bootstrap` and earlier versions left behind: a world-readable state directory.
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let (sha, g2) = m.commit_and_build("good private-1");
    m.sync_deploys(&sha, &g2, 2);
    assert_eq!(mode(&state_dir), 0o700);
    for file in ["lock", "state.json", "journal.jsonl"] {
        assert_eq!(mode(&state_dir.join(file)), 0o600, "{file}");
    }
    let state_file = m.sys.state_file();
    let lock = state_dir.join("lock");
    // The parents stay traversable: it is pullnix's own directory that keeps others out.
    assert!(as_nobody(&["test", "-d", m.sys.root().to_str().unwrap()]));
    assert!(
        !as_nobody(&["cat", state_file.to_str().unwrap()]),
        "nobody reads the record"
    );
    assert!(
        !as_nobody(&["flock", "-n", "-s", lock.to_str().unwrap(), "true"]),
        "nobody can take the lock"
    );
}

#[test]
fn a_lock_held_by_someone_else_is_visible_and_fails_the_sync_after_the_bound() {
    let m = Machine::new(
        "lock_stalled_after = 3\n[report]\ntextfile = \"/var/lib/node-exporter/pullnix.prom\"\n",
    );
    let (sha, g2) = m.commit_and_build("good lock-1");
    m.sync_deploys(&sha, &g2, 2);
    // A process holding a read-only descriptor of the lock (one opened before the directory
    // was made private, or any root process) takes it and never lets go.
    let lock = m.sys.state_dir().join("lock");
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 9<'{}'; flock 9 && echo locked && exec sleep 600",
            lock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut said,
    )
    .unwrap();
    assert_eq!(said, "locked\n");
    m.commit_and_build("good lock-2");

    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 3, "lock taken, within the bound");
    let status = m.status_json();
    let since = status["lock_busy_since"].as_u64();
    assert!(since.is_some(), "{status:#}");
    let text = common::stdout_text(&m.pullnix(&["status"]));
    assert!(text.contains("taken by another process since"), "{text}");
    let metrics =
        fs::read_to_string(m.sys.root().join("var/lib/node-exporter/pullnix.prom")).unwrap();
    assert!(
        metrics.contains("# TYPE pullnix_lock_busy_seconds gauge"),
        "{metrics}"
    );

    // Seen taken for longer than lock_stalled_after: a failure the unit reports as one.
    std::thread::sleep(Duration::from_secs(4));
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 15, "lock taken for longer than the bound");
    assert_stderr_has(&out, "deployments are stalled", "what it means");
    assert_stderr_has(&out, "lock_stalled_after", "the setting");
    assert_eq!(m.status_json()["lock_busy_since"].as_u64(), since);
    let metrics =
        fs::read_to_string(m.sys.root().join("var/lib/node-exporter/pullnix.prom")).unwrap();
    let busy: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pullnix_lock_busy_seconds{host=\"testhost\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(busy >= 4, "{metrics}");

    // Once the holder is gone, the next sync deploys and the stall is over.
    let _ = holder.kill();
    let _ = holder.wait();
    let out = m.pullnix(&["sync"]);
    assert_exit(&out, 0, "lock free again");
    assert!(
        m.status_json()["lock_busy_since"].is_null(),
        "{}",
        describe_run(&out)
    );
}

#[test]
fn a_symlink_planted_in_the_metrics_directory_does_not_make_root_overwrite_its_target() {
    let m = Machine::new("[report]\ntextfile = \"/var/lib/node-exporter/pullnix.prom\"\n");
    // node-exporter's user owns its textfile directory and plants links to a root-only file,
    // at the temporary name pullnix used to write through and at the file itself.
    let dir = m.sys.root().join("var/lib/node-exporter");
    fs::create_dir_all(&dir).unwrap();
    let victim = m.sys.scratch("secrets").join("shadow");
    fs::write(&victim, "root:$y$j9T$secret:19000::::::\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    for name in [".pullnix.prom.tmp", "pullnix.prom"] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    chown(&dir, 65534);

    let (sha, g2) = m.commit_and_build("good metrics-link");
    let out = m.sync_deploys(&sha, &g2, 2);
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "root:$y$j9T$secret:19000::::::\n",
        "root wrote through the planted link\n{}",
        describe_run(&out)
    );
    assert_eq!(mode(&victim), 0o600);
    // The deployment went on; the metrics are refused with the reason, as a warning.
    let log = stderr_text(&out);
    assert!(
        log.contains("<4>report: ") && log.contains("refusing to write in"),
        "{log}"
    );

    // Given back to root (node-exporter only reads it), the links are replaced, not followed.
    chown(&dir, 0);
    let (sha, g3) = m.commit_and_build("good metrics-link-2");
    m.sync_deploys(&sha, &g3, 3);
    let text = fs::read_to_string(dir.join("pullnix.prom")).unwrap();
    assert!(
        text.contains("pullnix_generation{host=\"testhost\"} 3"),
        "{text}"
    );
    assert!(
        !fs::symlink_metadata(dir.join("pullnix.prom"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(mode(&dir.join("pullnix.prom")), 0o644);
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "root:$y$j9T$secret:19000::::::\n"
    );
    assert_eq!(fs::metadata(&dir).unwrap().uid(), 0);
}

fn chown(path: &Path, uid: u32) {
    common::run_ok(Command::new("chown").arg(uid.to_string()).arg(path));
}

//! What pullnix tells the outside world: the append-only deployment journal, metrics for
//! node-exporter's textfile collector (read back through a real node-exporter), and the report
//! command that gets `status --json` on stdin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, http_get, toml_string};
use harness::{Machine, SHORT_CONFIRM, assert_exit};

fn journal(m: &Machine) -> Vec<serde_json::Value> {
    fs::read_to_string(m.sys.state_dir().join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal line is not JSON"))
        .collect()
}

#[test]
fn journal_is_an_append_only_line_per_event() {
    let m = Machine::new(SHORT_CONFIRM);
    let (good, g2) = m.commit_and_build("good journal-1");
    m.sync_deploys(&good, &g2, 2);
    let first = fs::read(m.sys.state_dir().join("journal.jsonl")).unwrap();
    let events = journal(&m);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["result"], "deployed");
    assert_eq!(events[0]["commit"], good.as_str());
    assert!(events[0]["at"].as_u64().is_some());

    // A no-op poll is not an event.
    assert_exit(&m.pullnix(&["sync"]), 0, "no-op");
    assert_eq!(journal(&m).len(), 1);

    let bad = m.repo.commit("health-fail journal-2");
    assert_exit(&m.pullnix(&["sync"]), 9, "unhealthy");
    m.repo.commit("build-fail journal-3");
    assert_exit(&m.pullnix(&["sync"]), 6, "build failure");
    let events = journal(&m);
    let results: Vec<&str> = events
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["deployed", "reverted", "build-failed"],
        "{events:#?}"
    );
    assert_eq!(events[1]["commit"], bad.as_str());
    // Appended, never rewritten.
    let now = fs::read(m.sys.state_dir().join("journal.jsonl")).unwrap();
    assert!(now.starts_with(&first));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn textfile_metrics_are_read_by_a_real_node_exporter() {
    let exporter = "/usr/bin/prometheus-node-exporter";
    if !std::path::Path::new(exporter).exists() {
        // .ci/run installs it; a developer machine may not have it.
        common::run_ok(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "prometheus-node-exporter",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
    }
    let m = Machine::new("[report]\ntextfile = \"/var/lib/node-exporter/pullnix.prom\"\n");
    let (sha, g2) = m.commit_and_build("good metrics-1");
    m.sync_deploys(&sha, &g2, 2);
    let dir = m.sys.root().join("var/lib/node-exporter");
    let text = fs::read_to_string(dir.join("pullnix.prom")).unwrap();
    assert!(
        text.contains("pullnix_last_result{host=\"testhost\",result=\"deployed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pullnix_generation{host=\"testhost\"} 2"),
        "{text}"
    );

    let port = free_port();
    let mut child = Command::new(exporter)
        .args([
            "--collector.disable-defaults",
            "--collector.textfile",
            &format!("--collector.textfile.directory={}", dir.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some((200, body)) = http_get(port, "/metrics") {
            break String::from_utf8(body).unwrap();
        }
        assert!(Instant::now() < deadline, "node-exporter did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    // node-exporter parsed our file: no scrape error, and the samples are exported.
    assert!(body.contains("node_textfile_scrape_error 0"), "{body}");
    assert!(
        body.contains(&format!(
            "pullnix_deployed_info{{commit=\"{sha}\",host=\"testhost\",system=\"{}\"}} 1",
            g2.display()
        )),
        "{body}"
    );
    assert!(
        body.contains("pullnix_pending{host=\"testhost\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("pullnix_rollbacks_total{host=\"testhost\"} 0"),
        "{body}"
    );
}

#[test]
fn report_command_gets_the_status_json_after_each_run_and_cannot_fail_it() {
    let out_dir = TempDir::new("report");
    let sink = out_dir.join("reports.jsonl");
    let script = format!("cat >> {}; echo >> {}", sink.display(), sink.display());
    let m = Machine::new(&format!(
        "{SHORT_CONFIRM}[report]\ncommand = [\"/bin/sh\", \"-c\", {}]\ntimeout = 10\n",
        toml_string(&script)
    ));
    let (sha, g2) = m.commit_and_build("good report-1");
    m.sync_deploys(&sha, &g2, 2);
    m.repo.commit("build-fail report-2");
    assert_exit(&m.pullnix(&["sync"]), 6, "build failure");
    let reports: Vec<serde_json::Value> = fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["deployed"]["commit"], sha.as_str());
    assert_eq!(reports[1]["last"]["result"], "build-failed");
    // `status` reports nothing (it changes nothing).
    assert_exit(&m.pullnix(&["status"]), 0, "status");
    assert_eq!(fs::read_to_string(&sink).unwrap().lines().count(), 2);

    // A failing report command is a warning, not a failed deployment.
    m.reconfigure(
        &m.repo.file_url(),
        &format!("{SHORT_CONFIRM}[report]\ncommand = [\"/bin/false\"]\n"),
    );
    let (sha3, g3) = m.commit_and_build("good report-3");
    let out = m.sync_deploys(&sha3, &g3, 3);
    assert!(
        common::stderr_text(&out).contains("<4>report command failed"),
        "{}",
        common::stderr_text(&out)
    );
}

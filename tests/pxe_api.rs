//! `pullnix pxe-api`: the real binary serves pixiecore's boot API on a free 127.0.0.1 port and
//! is asked with curl (what pixiecore's Go HTTP client does, minus Go) and with raw requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TempDir, run_with_timeout};
use harness::{assert_all_lines_prefixed, assert_exit, assert_stderr_has};
use serde_json::{Value, json};

const HOSTS: &str = r#"
[defaults]
kernel = "file:///srv/netboot/bzImage"
initrd = ["file:///srv/netboot/initrd"]
cmdline = "init=/nix/store/x-installer/init pullnix.host={host} pullnix.mac={mac} loglevel=4"

[hosts.edge-01]
mac = "52:54:00:12:34:56"

[hosts.edge-02]
mac = "52-54-00-AB-CD-EF"
flake_attr = "edge-two"
kernel = "http://10.0.0.1/bzImage"
initrd = ["http://10.0.0.1/initrd", "http://10.0.0.1/extra.cpio"]
"#;

/// The server, killed when dropped; its stderr is collected by a thread.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(hosts: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .args(["pxe-api", "--listen", "127.0.0.1:0", "--hosts"])
            .arg(hosts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pullnix pxe-api");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        let addr = first
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("no listening address in {first:?}"))
            .to_owned();
        assert!(first.starts_with("<5>"), "{first}");
        let log = Arc::new(Mutex::new(first));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Server { child, addr, log }
    }

    /// `curl` GET of `path`: (status, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = run_with_timeout(
            Command::new("curl")
                .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
                .args(args)
                .arg(format!("http://{}{path}", self.addr)),
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_owned())
    }

    /// Sends `request` as is and returns the whole answer.
    fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(request).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    /// The log so far, once it has `lines` lines (or after 5 s).
    fn log(&self, lines: usize) -> String {
        let start = Instant::now();
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.lines().count() >= lines || start.elapsed() > Duration::from_secs(5) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hosts_file(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.join("provision.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn boot_spec_for_known_macs_whatever_the_spelling() {
    let dir = TempDir::new("pxe-api");
    let server = Server::start(&hosts_file(&dir, HOSTS));

    let edge01 = json!({
        "kernel": "file:///srv/netboot/bzImage",
        "initrd": ["file:///srv/netboot/initrd"],
        "cmdline": "init=/nix/store/x-installer/init pullnix.host=edge-01 \
                    pullnix.mac=52:54:00:12:34:56 loglevel=4",
    });
    // pixiecore's own spelling, then others.
    for mac in [
        "52:54:00:12:34:56",
        "52-54-00-12-34-56",
        "525400123456",
        "52:54:00:12:34:56".to_uppercase().as_str(),
    ] {
        let (code, body) = server.curl(&[], &format!("/v1/boot/{mac}"));
        assert_eq!(code, 200, "{mac}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, edge01, "{mac}");
    }
    let (code, body) = server.curl(&["-i"], "/v1/boot/52:54:00:ab:cd:ef");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{body}"
    );
    let json_body = body.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(json_body).unwrap();
    assert_eq!(
        v,
        json!({
            "kernel": "http://10.0.0.1/bzImage",
            "initrd": ["http://10.0.0.1/initrd", "http://10.0.0.1/extra.cpio"],
            "cmdline": "init=/nix/store/x-installer/init pullnix.host=edge-two \
                        pullnix.mac=52:54:00:ab:cd:ef loglevel=4",
        })
    );

    // Anything else is not a boot: pixiecore ignores machines answered with non-200.
    for path in [
        "/v1/boot/52:54:00:12:34:57",
        "/v1/boot/not-a-mac",
        "/v1/boot/",
        "/",
        "/v1/boot/52:54:00:12:34:56/extra",
    ] {
        assert_eq!(server.curl(&[], path).0, 404, "{path}");
    }
    assert_eq!(
        server.curl(&["-X", "POST"], "/v1/boot/52:54:00:12:34:56").0,
        405
    );
    let answer = server.raw(b"NONSENSE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = server.raw(b"GET /v1/boot/525400123456 HTTP/1.0\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");

    // One line per request, with the MAC and the answer; 1 startup line + 13 requests.
    let log = server.log(14);
    for line in log.lines() {
        assert!(line.len() > 3 && line.as_bytes()[0] == b'<', "{line:?}");
    }
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 14, "{log}");
    assert!(
        lines.iter().any(|l| l.starts_with("<6>")
            && l.contains("\"/v1/boot/525400123456\" -> 200 52:54:00:12:34:56 is edge-01")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("-> 404 52:54:00:12:34:57 unknown")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.contains("-> 405")), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("bad request")),
        "{log}"
    );
}

#[test]
fn parallel_clients_are_all_answered() {
    let dir = TempDir::new("pxe-api-par");
    let server = Server::start(&hosts_file(&dir, HOSTS));
    // A silent client holds a connection open (until the server's read timeout); others must
    // still be served meanwhile.
    let _idle = TcpStream::connect(&server.addr).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(b"GET /v1/boot/52:54:00:12:34:56 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut a = String::new();
                s.read_to_string(&mut a).unwrap();
                a
            })
        })
        .collect();
    for t in threads {
        let a = t.join().unwrap();
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
        assert!(a.contains("pullnix.host=edge-01"), "{a}");
    }
}

#[test]
fn bad_hosts_files_are_usage_errors_naming_key_and_line() {
    let dir = TempDir::new("pxe-api-bad");
    let pullnix = |args: &[&str]| {
        run_with_timeout(
            Command::new(env!("CARGO_BIN_EXE_pullnix"))
                .arg("pxe-api")
                .args(["--listen", "127.0.0.1:0"])
                .args(args),
            Duration::from_secs(20),
        )
    };
    for (text, needles) in [
        (
            "[defaults]\nkernel = \"/k\"\n\n[hosts.a]\nmac = \"52:54:00:12:34:56\"\nflake = \"a\"\n",
            &["line 6", "flake"][..],
        ),
        (
            "[defaults]\nkernel = \"/k\"\n\n[hosts.a]\nmac = \"52:54:00:12:34:56\"\n\n\
             [hosts.b]\nmac = \"52-54-00-12-34-56\"\n",
            &["hosts.b.mac", "line 8", "already used by host \"a\""][..],
        ),
        (
            "[hosts.a]\nmac = \"52:54:00:12:34:5\"\nkernel = \"/k\"\n",
            &["line 2", "not a MAC address"][..],
        ),
        (
            "[hosts.a]\nmac = \"52:54:00:12:34:56\"\n",
            &["hosts.a.kernel", "defaults.kernel"][..],
        ),
        ("[defaults]\ninitrd = \"/i\"\n", &["line 2", "initrd"][..]),
    ] {
        let path = hosts_file(&dir, text);
        let out = pullnix(&["--hosts", path.to_str().unwrap()]);
        assert_exit(&out, 2, text);
        assert_all_lines_prefixed(&out);
        assert_stderr_has(&out, "invalid hosts file", text);
        for n in needles {
            assert_stderr_has(&out, n, text);
        }
    }
    let out = pullnix(&["--hosts", dir.join("missing.toml").to_str().unwrap()]);
    assert_exit(&out, 2, "missing hosts file");
    assert_stderr_has(&out, "missing.toml", "missing hosts file");
    let out = pullnix(&[]);
    assert_exit(&out, 2, "no --hosts");
    assert_stderr_has(&out, "--hosts FILE", "no --hosts");
}

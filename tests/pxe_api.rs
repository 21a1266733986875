//! `pullnix pxe-api`: the real binary serves pixiecore's boot API on a free 127.0.0.1 port and
//! is asked with curl (what pixiecore's Go HTTP client does, minus Go) and with raw requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
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
    /// The boot listener (pixiecore's).
    addr: String,
    /// The report listener (installers'), when started with `--report-listen`.
    report_addr: Option<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(hosts: &Path) -> Server {
        Server::start_with(hosts, &[])
    }

    /// Started with further options (`--state`, `--public-url`, `--report-listen`).
    fn start_with(hosts: &Path, options: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .args(["pxe-api", "--listen", "127.0.0.1:0", "--hosts"])
            .arg(hosts)
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pullnix pxe-api");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        let word_after = |marker: &str| {
            first
                .split(marker)
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_owned)
        };
        let addr = word_after("listening on ")
            .unwrap_or_else(|| panic!("no listening address in {first:?}"));
        let report_addr = word_after(" and on ");
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
        Server {
            child,
            addr,
            report_addr,
            log,
        }
    }

    /// Started as the provisioner runs it: reports recorded in `state`.
    fn start_reporting(hosts: &Path, state: &Path) -> Server {
        let server = Server::start_with(
            hosts,
            &[
                "--state",
                state.to_str().unwrap(),
                "--public-url",
                PUBLIC_URL,
                "--report-listen",
                "127.0.0.1:0",
            ],
        );
        assert!(server.report_addr.is_some(), "no report listener");
        server
    }

    fn report_addr(&self) -> &str {
        self.report_addr.as_deref().expect("a report listener")
    }

    /// `curl` of `path` on the boot listener: (status, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        curl_at(&self.addr, args, path)
    }

    /// `curl` of `path` on the report listener: (status, body).
    fn curl_report(&self, args: &[&str], path: &str) -> (u16, String) {
        curl_at(self.report_addr(), args, path)
    }

    /// Sends `request` as is to the boot listener and returns the whole answer.
    fn raw(&self, request: &[u8]) -> String {
        raw_at(&self.addr, request)
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

/// `curl` of `path` at `addr`: (status, body).
fn curl_at(addr: &str, args: &[&str], path: &str) -> (u16, String) {
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("http://{addr}{path}")),
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

/// Sends `request` as is to `addr` and returns the whole answer.
fn raw_at(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
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

/// The hosts file of the report tests: both installers are told where to report.
const REPORT_HOSTS: &str = r#"
[defaults]
kernel = "file:///srv/netboot/bzImage"
cmdline = "init=/x pullnix.host={host} pullnix.report={report} loglevel=4"

[hosts.edge-01]
mac = "52:54:00:12:34:56"

[hosts.edge-02]
mac = "52:54:00:ab:cd:ef"
"#;

const PUBLIC_URL: &str = "http://10.0.0.1:8080";

/// `pullnix pxe-api ARGS` (forget, installed) run to its end.
fn pxe_api(args: &[&str]) -> std::process::Output {
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .arg("pxe-api")
            .args(args),
        Duration::from_secs(20),
    )
}

/// Asks for the boot of `mac`, expecting 200, and returns the report URL's path and token.
fn boot_token(server: &Server, mac: &str) -> (String, String) {
    let (code, body) = server.curl(&[], &format!("/v1/boot/{mac}"));
    assert_eq!(code, 200, "{mac}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let cmdline = v["cmdline"].as_str().unwrap();
    let url = cmdline
        .split(' ')
        .find_map(|w| w.strip_prefix("pullnix.report="))
        .unwrap_or_else(|| panic!("no report URL in {cmdline:?}"));
    let path = url
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("{url:?} does not start with {PUBLIC_URL}"));
    let (_, token) = path.split_once("?token=").unwrap();
    assert_eq!(token.len(), 32, "{url}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
    (path.to_owned(), token.to_owned())
}

#[test]
fn installed_machines_stop_booting_until_forgotten() {
    let dir = TempDir::new("pxe-api-report");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let state = dir.join("state");
    let st = state.to_str().unwrap();
    let server = Server::start_reporting(&hosts, &state);
    let mac = "52:54:00:12:34:56";

    // The token is made on the first boot request and handed out again on later ones, so an
    // installer booted earlier can still report.
    let (path, token) = boot_token(&server, mac);
    assert_eq!(path, format!("/v1/installed/{mac}?token={token}"));
    assert_eq!(boot_token(&server, "52-54-00-12-34-56").1, token);
    let token_file = state.join("tokens").join(mac);
    assert_eq!(fs::read_to_string(&token_file).unwrap().trim(), token);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&state.join("tokens")), 0o700);
    // Another machine gets a token of its own.
    assert_ne!(boot_token(&server, "52:54:00:ab:cd:ef").1, token);

    // Only the right token marks the machine installed.
    let post = |path: &str| server.curl_report(&["-X", "POST"], path).0;
    let wrong = format!("{:032x}", 0xdead_beef_u128);
    assert_eq!(post(&format!("/v1/installed/{mac}?token={wrong}")), 403);
    assert_eq!(post(&format!("/v1/installed/{mac}")), 403);
    assert_eq!(post(&format!("/v1/installed/{mac}?token=")), 403);
    assert_eq!(
        post(&format!("/v1/installed/52:54:00:12:34:57?token={token}")),
        404
    );
    assert_eq!(post(&format!("/v1/installed/nonsense?token={token}")), 404);
    assert_eq!(server.curl_report(&[], &path).0, 405);
    assert!(!state.join("installed").join(mac).exists());
    assert_eq!(
        boot_token(&server, mac).1,
        token,
        "still boots after refusals"
    );

    // The right one, with a request body that must be read and ignored.
    let before = now();
    let (code, body) = server.curl_report(&["-X", "POST", "--data", "status=done"], &path);
    assert_eq!(code, 200, "{body}");
    let marker: Value =
        serde_json::from_str(&fs::read_to_string(state.join("installed").join(mac)).unwrap())
            .unwrap();
    let at = marker["at"].as_u64().unwrap();
    assert!(at >= before && at <= now(), "{marker}");
    assert_eq!(
        marker,
        json!({"mac": mac, "host": "edge-01", "at": at, "peer": "127.0.0.1", "token": token})
    );
    assert!(!token_file.exists(), "the token is spent");
    // The installer retrying a report whose answer it lost is told it is recorded; any other
    // token is still refused.
    assert_eq!(post(&path), 200, "the same report again");
    assert_eq!(post(&format!("/v1/installed/{mac}?token={wrong}")), 403);

    // Installed: pixiecore is told 404, so the firmware goes on to the disk.
    for spelling in [mac, "525400123456"] {
        assert_eq!(server.curl(&[], &format!("/v1/boot/{spelling}")).0, 404);
    }
    assert_eq!(server.curl(&["-I"], &format!("/v1/boot/{mac}")).0, 404);
    boot_token(&server, "52:54:00:ab:cd:ef");
    // 1 startup line + 17 requests.
    let log = server.log(18);
    assert_eq!(log.lines().count(), 18, "{log}");
    assert!(
        log.lines().any(
            |l| l.contains(&format!("-> 404 {mac} is edge-01, installed since "))
                && l.contains("pullnix pxe-api forget")
        ),
        "{log}"
    );
    assert!(!log.contains(&token), "the token is never logged\n{log}");

    // `installed` lists it, as JSON and as a table.
    let out = pxe_api(&["installed", "--state", st, "--json"]);
    assert_exit(&out, 0, "installed --json");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Everything but the token, which stays in the state directory.
    let mut shown = marker.clone();
    shown.as_object_mut().unwrap().remove("token");
    assert_eq!(list, json!([shown]));
    let out = pxe_api(&["installed", "--state", st]);
    assert_exit(&out, 0, "installed");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(mac) && l.contains("edge-01") && l.contains("127.0.0.1")),
        "{table}"
    );

    let h = hosts.to_str().unwrap();
    mistakes_forget_nothing(&state, h, mac);

    // Forgotten, it installs again, with a new token; forgetting what is not installed is fine.
    let out = pxe_api(&["forget", "--state", st, "--hosts", h, "edge-01", "edge-02"]);
    assert_exit(&out, 0, "forget");
    assert_all_lines_prefixed(&out);
    assert_stderr_has(
        &out,
        "<5>pxe-api: forgot that edge-01 (52:54:00:12:34:56) is installed",
        "forget",
    );
    assert_stderr_has(
        &out,
        "edge-02 (52:54:00:ab:cd:ef) is not marked installed",
        "forget",
    );
    let (_, again) = boot_token(&server, mac);
    assert_ne!(again, token);
    let out = pxe_api(&["installed", "--state", st, "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
}

/// `forget` with a mistake in any argument is exit 2 and leaves the marker of `mac` alone.
fn mistakes_forget_nothing(state: &Path, h: &str, mac: &str) {
    let st = state.to_str().unwrap();
    for (args, needle) in [
        (&["--hosts", h, "edge-01", "edge-99"][..], "\"edge-99\""),
        (&[mac, "52:54:00:12:34"][..], "\"52:54:00:12:34\""),
        (&["edge-01"][..], "--hosts"),
    ] {
        let mut all = vec!["forget", "--state", st];
        all.extend(args);
        let out = pxe_api(&all);
        assert_exit(&out, 2, &format!("{all:?}"));
        assert_stderr_has(&out, needle, &format!("{all:?}"));
        assert!(state.join("installed").join(mac).exists(), "{all:?}");
    }
    let missing = state.with_file_name("nope");
    let out = pxe_api(&["forget", "--state", missing.to_str().unwrap(), mac]);
    assert_exit(&out, 2, "forget in a missing state directory");
    assert_stderr_has(&out, "nope", "forget in a missing state directory");
}

#[test]
fn report_needs_state_public_url_and_a_report_listener() {
    let dir = TempDir::new("pxe-api-report-opts");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let h = hosts.to_str().unwrap();
    let st = dir.join("state");
    let st = st.to_str().unwrap();
    let rl = "127.0.0.1:0";
    for (options, needle) in [
        (
            &[][..],
            "--state DIR and --report-listen ADDR:PORT and --public-url URL",
        ),
        (
            &["--public-url", PUBLIC_URL, "--report-listen", rl][..],
            "needs --state DIR",
        ),
        (
            &["--state", st, "--report-listen", rl][..],
            "needs --public-url URL",
        ),
        (
            &["--state", st, "--public-url", PUBLIC_URL][..],
            "needs --report-listen ADDR:PORT",
        ),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0", "--hosts", h];
        all.extend(options);
        let out = pxe_api(&all);
        assert_exit(&out, 2, &format!("{all:?}"));
        assert_all_lines_prefixed(&out);
        assert_stderr_has(&out, "{report}", &format!("{all:?}"));
        assert_stderr_has(&out, needle, &format!("{all:?}"));
    }

    // Without --state there is nothing to report to, and nowhere to record it.
    let plain = hosts_file(&dir, HOSTS);
    let out = pxe_api(&[
        "--listen",
        "127.0.0.1:0",
        "--hosts",
        plain.to_str().unwrap(),
        "--report-listen",
        rl,
    ]);
    assert_exit(&out, 2, "--report-listen without --state");
    assert_stderr_has(&out, "--report-listen needs --state DIR", "no --state");
    let server = Server::start(&plain);
    let (code, _) = server.curl(
        &["-X", "POST"],
        "/v1/installed/52:54:00:12:34:56?token=00000000000000000000000000000000",
    );
    assert_eq!(code, 404);
    assert_eq!(server.curl(&[], "/v1/boot/52:54:00:12:34:56").0, 200);
}

/// The attack: today's single listener hands every listed machine's report token to anyone
/// who can reach it. Boot answers now come only from the boot listener, which must be
/// loopback while they carry tokens; the listener installers reach answers reports only.
#[test]
fn report_tokens_are_handed_out_only_on_the_loopback_boot_listener() {
    let dir = TempDir::new("pxe-api-split");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let state = dir.join("state");
    let server = Server::start_reporting(&hosts, &state);
    let mac = "52:54:00:12:34:56";
    assert_ne!(server.addr, server.report_addr());

    // An installer's (or anyone's) view of the report listener: no boot answer, no token.
    for args in [&[][..], &["-I"][..], &["-X", "POST"][..]] {
        let (code, body) = server.curl_report(args, &format!("/v1/boot/{mac}"));
        assert_eq!(code, 404, "{args:?}: {body}");
        assert!(!body.contains("token"), "{args:?}: {body}");
    }
    assert!(
        !state.join("tokens").join(mac).exists(),
        "asking the report listener must not even make a token"
    );
    // pixiecore's view: the boot answer with the token; the report goes elsewhere.
    let (path, token) = boot_token(&server, mac);
    assert_eq!(server.curl(&["-X", "POST"], &path).0, 404);
    assert!(!state.join("installed").join(mac).exists());
    assert_eq!(server.curl_report(&["-X", "POST"], &path).0, 200);
    assert!(state.join("installed").join(mac).exists());
    let log = server.log(7);
    assert!(!log.contains(&token), "{log}");
    assert!(
        log.contains("boot requests are answered only on the boot listener"),
        "{log}"
    );

    // A boot listener others can reach is refused while boot answers carry tokens, unless the
    // operator says so in as many words.
    let h = hosts.to_str().unwrap();
    let st = state.to_str().unwrap();
    for listen in ["0.0.0.0:0", "[::]:0", "10.0.0.1:0"] {
        let out = pxe_api(&[
            "--listen",
            listen,
            "--hosts",
            h,
            "--state",
            st,
            "--public-url",
            PUBLIC_URL,
            "--report-listen",
            "127.0.0.1:0",
        ]);
        assert_exit(&out, 2, listen);
        assert_stderr_has(&out, "is not a loopback address", listen);
        assert_stderr_has(&out, "--expose-report-tokens", listen);
    }
}

/// Ambiguous requests (what two HTTP parsers may read differently) are refused, on the
/// listener installers reach. Today's server took bare LF line ends, any `HTTP/1.x`, `+5` and
/// duplicate `Content-Length`s, control characters in the target.
#[test]
fn ambiguous_requests_are_refused() {
    let dir = TempDir::new("pxe-api-strict");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let server = Server::start_reporting(&hosts, &dir.join("state"));
    let report = server.report_addr().to_owned();
    let post = "POST /v1/installed/52:54:00:12:34:56?token=x";
    let many = "X-Pad: y\r\n".repeat(40);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{post} HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello"),
            "400",
        ),
        (
            format!("{post} HTTP/1.1\r\nHost: x\nContent-Length: 0\r\n\r\n"),
            "400",
        ),
        (
            format!(
                "{post} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
            ),
            "400",
        ),
        (
            format!(
                "{post} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello"
            ),
            "400",
        ),
        (
            format!("{post} HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello"),
            "400",
        ),
        (
            format!("{post} HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello"),
            "400",
        ),
        (
            format!(
                "{post} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"
            ),
            "400",
        ),
        (format!("{post} HTTP/1.2\r\nHost: x\r\n\r\n"), "400"),
        (format!("{post} HTTP/2.0\r\nHost: x\r\n\r\n"), "400"),
        (
            format!("{post} HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n"),
            "400",
        ),
        (
            format!("{post}\u{1b}[2J HTTP/1.1\r\nHost: x\r\n\r\n"),
            "400",
        ),
        (format!("{post} HTTP/1.1\r\nHost: x\r\n{many}\r\n"), "431"),
        (
            format!(
                "{post} HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            "431",
        ),
    ];
    for (request, status) in &cases {
        let answer = raw_at(&report, request.as_bytes());
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}\n-> {answer}"
        );
    }
    // And what clients really send still works (curl above, Go's net/http shape here).
    let answer = raw_at(
        &report,
        format!(
            "{post} HTTP/1.1\r\nHost: {report}\r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Length: 0\r\nAccept-Encoding: gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
}

/// Nothing a client sent reaches the log raw: not a bad request line, not a token, not a body.
#[test]
fn request_bytes_and_tokens_never_reach_the_log() {
    let dir = TempDir::new("pxe-api-log");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let server = Server::start_reporting(&hosts, &dir.join("state"));
    let report = server.report_addr().to_owned();
    // The first bad request of a kind is logged (later ones within 10 s are counted).
    let answer = raw_at(
        &report,
        b"GET /\x1b]52;c;MARKER-LINE\x07 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let (code, _) = server.curl_report(
        &["-X", "POST", "--data", "MARKER-BODY"],
        "/v1/installed/52:54:00:12:34:56?token=MARKER-TOKEN",
    );
    assert_eq!(code, 403);
    let log = server.log(3);
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(log.contains("bad request, answered 400"), "{log}");
    assert!(
        log.contains("\"/v1/installed/52:54:00:12:34:56?…\" -> 403"),
        "{log}"
    );
    for secret in ["MARKER", "\u{1b}", "52;c"] {
        assert!(!log.contains(secret), "{secret:?} in\n{log}");
    }
}

/// Holds slow connections to `addr` from each of `sources` (`per_source` each, reopened when
/// closed), each sending one byte of a request every `interval` seconds, for `seconds`. Prints
/// one JSON object per connection: source, when it was opened and closed (seconds since the
/// start, null if still open at the end) and the first line of what it got.
const SLOW_FLOOD: &str = r#"
import json, select, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
sources, per_source = sys.argv[2].split(","), int(sys.argv[3])
interval, seconds = float(sys.argv[4]), float(sys.argv[5])
request = b"POST /v1/installed/52:54:00:12:34:56?token=x HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
t0 = time.monotonic()
now = lambda: round(time.monotonic() - t0, 2)
live, done = {}, []
def open_one(src):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
    except OSError as e:
        done.append({"src": src, "opened": now(), "closed": now(), "got": "connect: %s" % e})
        s.close()
        return
    s.setblocking(False)
    live[s] = {"src": src, "opened": now(), "closed": None, "got": "", "sent": 0}
def close(s, got):
    c = live.pop(s)
    c["closed"], c["got"] = now(), got
    done.append(c)
    s.close()
for src in sources:
    for _ in range(per_source):
        open_one(src)
next_tick = 0.0
while now() < seconds:
    if now() >= next_tick:
        next_tick += interval
        for s, c in list(live.items()):
            try:
                s.send(request[c["sent"]:c["sent"] + 1])
                c["sent"] += 1
            except OSError as e:
                close(s, "send: %s" % e)
        for src in sources:
            for _ in range(per_source - sum(1 for c in live.values() if c["src"] == src)):
                if now() < seconds - 1:
                    open_one(src)
    readable, _, _ = select.select(list(live), [], [], max(0.0, min(next_tick, seconds) - now()))
    for s in readable:
        try:
            data = s.recv(4096)
        except OSError as e:
            close(s, "recv: %s" % e)
            continue
        close(s, data.split(b"\r\n")[0].decode("latin-1") if data else "closed")
for s in list(live):
    c = live.pop(s)
    done.append(c)
    s.close()
for c in done:
    c.pop("sent", None)
    print(json.dumps(c))
"#;

#[derive(Debug)]
struct SlowConn {
    src: String,
    opened: f64,
    closed: Option<f64>,
    got: String,
}

/// Starts [`SLOW_FLOOD`] in the background.
fn slow_flood(
    addr: &str,
    sources: &[String],
    per_source: usize,
    seconds: u32,
) -> std::thread::JoinHandle<Vec<SlowConn>> {
    let child = Command::new("python3")
        .args(["-c", SLOW_FLOOD, addr])
        .arg(sources.join(","))
        .arg(per_source.to_string())
        .args(["2", &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the python3 slow-client flood");
    std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the flood script failed");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                SlowConn {
                    src: v["src"].as_str().unwrap().to_owned(),
                    opened: v["opened"].as_f64().unwrap(),
                    closed: v["closed"].as_f64(),
                    got: v["got"].as_str().unwrap().to_owned(),
                }
            })
            .collect()
    })
}

/// Reports of a legitimate installer, from `source`, while the flood runs: each must be
/// answered 200 within 3 s. Returns how many were made.
fn legitimate_reports(server: &Server, source: &str, path: &str, until: Instant) -> usize {
    let mut n = 0;
    while Instant::now() < until {
        let start = Instant::now();
        let (code, body) = server.curl_report(&["--interface", source, "-X", "POST"], path);
        let took = start.elapsed();
        assert_eq!(code, 200, "report #{n} from {source}: {body}");
        assert!(took < Duration::from_secs(3), "report #{n} took {took:?}");
        n += 1;
        std::thread::sleep(Duration::from_millis(1500));
    }
    n
}

/// What the flood saw: every connection the server took was cut at its deadline (10 s, plus
/// one 2 s send interval and slack), although it kept sending; the server held at most
/// `held_per_source` connections of any source at once.
fn check_flood(conns: &[SlowConn], end: f64, held_per_source: usize) {
    assert!(!conns.is_empty());
    for c in conns {
        let lived = c.closed.unwrap_or(end) - c.opened;
        assert!(lived < 13.0, "{c:?} was not cut at the deadline");
    }
    let held: Vec<&SlowConn> = conns.iter().filter(|c| c.got.contains(" 408 ")).collect();
    assert!(
        !held.is_empty(),
        "no connection was answered 408 at its deadline"
    );
    for c in &held {
        let lived = c.closed.unwrap() - c.opened;
        assert!(lived > 9.0, "{c:?} cut before its deadline");
        let at_once = held
            .iter()
            .filter(|o| o.src == c.src && o.opened <= c.opened && o.closed.unwrap() > c.opened)
            .count();
        assert!(at_once <= held_per_source, "{at_once} held from {}", c.src);
    }
}

/// The attack of issue 10: 64 connections from one address that each send a byte every 2 s.
/// Today's server (a 10 s timeout per read, 64 connections in all) answers everybody else 503
/// for as long as the flood lasts. Now the flooder gets 8 slots, each cut at a 10 s deadline
/// for the whole request, and an installer on another address reports within 3 s throughout.
#[test]
fn a_slow_flood_from_one_address_stalls_nobody_else() {
    let dir = TempDir::new("pxe-api-flood-one");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let server = Server::start_reporting(&hosts, &dir.join("state"));
    let (path, _) = boot_token(&server, "52:54:00:12:34:56");
    let flood = slow_flood(server.report_addr(), &["127.0.0.1".to_owned()], 64, 16);
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let n = legitimate_reports(&server, "127.0.0.2", &path, start + Duration::from_secs(12));
    assert!(n >= 5, "{n}");
    // pixiecore's listener is not touched at all.
    assert_eq!(server.curl(&[], "/v1/boot/52:54:00:ab:cd:ef").0, 200);
    let conns = flood.join().unwrap();
    check_flood(&conns, 16.0, 8);
    let refused = conns.iter().filter(|c| c.got.contains(" 503 ")).count();
    assert!(
        refused > 0,
        "the ninth connection and later were not refused"
    );
    // One warning per kind and 10 s, not one per connection.
    let log = server.log(0);
    let warnings = log.lines().filter(|l| l.starts_with("<4>")).count();
    assert!(
        warnings <= 12,
        "{warnings} warnings for {} connections:\n{log}",
        conns.len()
    );
    assert!(log.contains("more like it"), "{log}");
}

/// The same from 40 loopback addresses with 8 connections each: more than the server's 256
/// slots, so newcomers take the oldest slot of the busiest address, and the installer on yet
/// another address is still answered within 3 s.
#[test]
fn a_slow_flood_from_many_addresses_stalls_nobody_else() {
    let dir = TempDir::new("pxe-api-flood-many");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let server = Server::start_reporting(&hosts, &dir.join("state"));
    let (path, _) = boot_token(&server, "52:54:00:12:34:56");
    let sources: Vec<String> = (10..50).map(|i| format!("127.0.0.{i}")).collect();
    let flood = slow_flood(server.report_addr(), &sources, 8, 16);
    std::thread::sleep(Duration::from_secs(3));
    let start = Instant::now();
    let n = legitimate_reports(
        &server,
        "127.0.0.250",
        &path,
        start + Duration::from_secs(10),
    );
    assert!(n >= 4, "{n}");
    let conns = flood.join().unwrap();
    check_flood(&conns, 16.0, 8);
    let log = server.log(0);
    assert!(log.contains("closed its oldest to serve"), "{log}");
}

#[test]
fn oversized_and_chunked_bodies_are_refused() {
    let dir = TempDir::new("pxe-api-bodies");
    let hosts = hosts_file(&dir, REPORT_HOSTS);
    let server = Server::start_reporting(&hosts, &dir.join("state"));
    let report = server.report_addr().to_owned();
    let answer = raw_at(
        &report,
        b"POST /v1/installed/52:54:00:12:34:56?token=x HTTP/1.1\r\nHost: x\r\n\
          Content-Length: 10000000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let answer = raw_at(
        &report,
        b"POST /v1/installed/52:54:00:12:34:56?token=x HTTP/1.1\r\nHost: x\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    // A body sent together with the head is read past, and the answer still arrives.
    let answer = raw_at(
        &report,
        b"POST /v1/installed/52:54:00:12:34:56?token=x HTTP/1.1\r\nHost: x\r\n\
          Content-Length: 5\r\n\r\nhello",
    );
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

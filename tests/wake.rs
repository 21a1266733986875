//! `pullnix wake`: the real binary sends its magic packets inside a network namespace of the
//! test's own, over a veth pair, and a UDP socket in the peer namespace captures them, so the
//! assertions are about the exact bytes on the wire. Nothing leaves the two namespaces, which
//! are removed when the test ends, passing or not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{TempDir, run, run_with_timeout};
use harness::{assert_all_lines_prefixed, assert_exit, assert_stderr_has, describe_run};

const SENDER_IP: &str = "10.77.0.1";
const BROADCAST: &str = "10.77.0.255";

/// Two fresh namespaces joined by a veth pair (`wol0` in the sender, `wol1` in the receiver),
/// 10.77.0.1/24 and 10.77.0.2/24. The pair is created directly inside the namespaces, so no
/// interface name ever exists in the host's namespace; deleting the namespaces removes it.
struct NetnsPair {
    sender: String,
    receiver: String,
}

impl NetnsPair {
    fn new() -> NetnsPair {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("pullnix-wake-{}-{n}", std::process::id());
        let pair = NetnsPair {
            sender: format!("{base}-tx"),
            receiver: format!("{base}-rx"),
        };
        // From here on, Drop cleans up whatever part was created.
        for ns in [&pair.sender, &pair.receiver] {
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link",
            "add",
            "wol0",
            "netns",
            &pair.sender,
            "type",
            "veth",
            "peer",
            "name",
            "wol1",
            "netns",
            &pair.receiver,
        ]);
        for (ns, dev, addr) in [
            (&pair.sender, "wol0", "10.77.0.1/24"),
            (&pair.receiver, "wol1", "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "brd", "+", "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// `ip netns exec NS …`
    fn exec(ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }

    /// Runs `pullnix ARGS` in the sender namespace.
    fn wake(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Self::exec(&self.sender);
        cmd.arg(env!("CARGO_BIN_EXE_pullnix"))
            .arg("wake")
            .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// Starts a UDP listener on `port` in the receiver namespace, returning once it is bound.
    fn listen(&self, port: u16) -> Listener {
        // Prints "ready" once bound, then one "SOURCE_IP PAYLOAD_HEX" line per datagram, until
        // 5 s pass without one.
        let script = "import socket, sys\n\
                      s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                      s.bind(('0.0.0.0', int(sys.argv[1])))\n\
                      s.settimeout(5)\n\
                      print('ready', flush=True)\n\
                      while True:\n\
                      \x20   try:\n\
                      \x20       data, (src, _) = s.recvfrom(4096)\n\
                      \x20   except socket.timeout:\n\
                      \x20       break\n\
                      \x20   print(src, data.hex(), flush=True)\n";
        let mut child = Self::exec(&self.receiver)
            .args(["python3", "-c", script, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the python3 UDP listener");
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "ready", "the UDP listener did not start");
        Listener { child, lines }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.receiver] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "`ip {}` failed (network namespaces need root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Listener {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Listener {
    /// The next `count` datagrams as (source address, payload hex).
    fn receive(&mut self, count: usize) -> Vec<(String, String)> {
        let mut got = Vec::new();
        for _ in 0..count {
            let mut line = String::new();
            self.lines.read_line(&mut line).unwrap();
            let Some((src, hex)) = line.trim().split_once(' ') else {
                break;
            };
            got.push((src.to_owned(), hex.to_owned()));
        }
        got
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The expected payload, built independently of pullnix: 6 x ff, then the MAC 16 times.
fn magic_hex(mac_hex: &str) -> String {
    let mut s = "ff".repeat(6);
    for _ in 0..16 {
        s.push_str(mac_hex);
    }
    assert_eq!(s.len(), 2 * 102);
    s
}

#[test]
fn magic_packets_on_the_wire_for_every_mac_spelling() {
    let net = NetnsPair::new();
    let mut rx = net.listen(9);
    let out = net.wake(&[
        "52:54:00:12:34:56",
        "52-54-00-AB-CD-EF",
        "0a1B2c3D4e5F",
        "--broadcast",
        BROADCAST,
    ]);
    assert_exit(&out, 0, "wake three machines");
    assert_all_lines_prefixed(&out);
    let got = rx.receive(3);
    let want: Vec<(String, String)> = ["525400123456", "525400abcdef", "0a1b2c3d4e5f"]
        .iter()
        .map(|m| (SENDER_IP.to_owned(), magic_hex(m)))
        .collect();
    assert_eq!(got, want, "{}", describe_run(&out));
    let sent: Vec<&str> = out
        .stderr
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| l.contains("sent magic packet"))
        .collect();
    assert_eq!(
        sent.len(),
        3,
        "one log line per packet\n{}",
        describe_run(&out)
    );
    assert!(sent[1].starts_with("<6>"), "{}", sent[1]);
    assert!(
        sent[1].contains("52:54:00:ab:cd:ef") && sent[1].contains("10.77.0.255:9"),
        "{}",
        sent[1]
    );
}

#[test]
fn host_names_from_the_hosts_file_through_an_interface() {
    let net = NetnsPair::new();
    let dir = TempDir::new("wake-hosts");
    let hosts = dir.join("provision.toml");
    fs::write(
        &hosts,
        "[defaults]\nkernel = \"file:///srv/bzImage\"\n\n\
         [hosts.edge-01]\nmac = \"52:54:00:12:34:56\"\n\n\
         [hosts.edge-02]\nmac = \"52:54:00:12:34:57\"\n",
    )
    .unwrap();
    let mut rx = net.listen(4000);
    // No --broadcast: the interface's own broadcast address (10.77.0.255) is used.
    let out = net.wake(&[
        "--hosts",
        hosts.to_str().unwrap(),
        "--interface",
        "wol0",
        "--port",
        "4000",
        "edge-02",
        "52:54:00:12:34:56",
    ]);
    assert_exit(&out, 0, "wake by name via wol0");
    assert_all_lines_prefixed(&out);
    assert_eq!(
        rx.receive(2),
        [
            (SENDER_IP.to_owned(), magic_hex("525400123457")),
            (SENDER_IP.to_owned(), magic_hex("525400123456")),
        ],
        "{}",
        describe_run(&out)
    );
    assert_stderr_has(
        &out,
        "sent magic packet for edge-02 (52:54:00:12:34:57) to 10.77.0.255:4000 via wol0",
        "named host",
    );
    // A MAC that is in the file is logged with its name too.
    assert_stderr_has(&out, "edge-01 (52:54:00:12:34:56)", "MAC of a known host");

    // The limited broadcast leaves through the interface whose address the socket is bound to.
    let out = net.wake(&[
        "--interface",
        "wol0",
        "--broadcast",
        "255.255.255.255",
        "--port",
        "4000",
        "52:54:00:00:00:01",
    ]);
    assert_exit(&out, 0, "limited broadcast via wol0");
    assert_eq!(
        rx.receive(1),
        [(SENDER_IP.to_owned(), magic_hex("525400000001"))]
    );
}

#[test]
fn bad_arguments_are_usage_errors_and_send_nothing() {
    let net = NetnsPair::new();
    let dir = TempDir::new("wake-bad");
    let hosts = dir.join("provision.toml");
    fs::write(
        &hosts,
        "[hosts.edge-01]\nmac = \"52:54:00:12:34:56\"\nkernel = \"/k\"\n",
    )
    .unwrap();
    let bad_hosts = dir.join("bad.toml");
    fs::write(&bad_hosts, "[hosts.edge-01]\nmac = \"52:54:00:12:34\"\n").unwrap();
    let mut rx = net.listen(9);
    let h = hosts.to_str().unwrap();
    for (args, needle) in [
        (&["52:54:00:12:34"][..], "\"52:54:00:12:34\""),
        (
            &["52:54:00:12:34:56", "5254.0012.3456"][..],
            "\"5254.0012.3456\"",
        ),
        (&["52:54:00:12:34:zz"][..], "\"52:54:00:12:34:zz\""),
        (&["edge-01"][..], "--hosts"),
        (
            &["--hosts", h, "52:54:00:12:34:56", "edge-99"][..],
            "\"edge-99\"",
        ),
        (
            &["--hosts", bad_hosts.to_str().unwrap(), "edge-01"][..],
            "line 2",
        ),
        (
            &["--interface", "nosuchif0", "52:54:00:12:34:56"][..],
            "\"nosuchif0\"",
        ),
        (
            &["--broadcast", "10.77.0", "52:54:00:12:34:56"][..],
            "10.77.0",
        ),
        (&[][..], "MAC"),
    ] {
        let mut all = args.to_vec();
        all.extend(
            ["--broadcast", BROADCAST]
                .iter()
                .filter(|_| !args.contains(&"--broadcast")),
        );
        let out = net.wake(&all);
        assert_exit(&out, 2, &format!("wake {all:?}"));
        assert_stderr_has(&out, needle, &format!("wake {all:?}"));
        assert_all_lines_prefixed(&out);
    }
    // None of the runs above sent anything (the listener gives up after 5 s of silence).
    assert_eq!(rx.receive(1), []);
}

/// A fresh namespace with nothing but loopback: no route leads anywhere else.
struct LoneNetns(String);

impl LoneNetns {
    fn new() -> LoneNetns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = LoneNetns(format!("pullnix-wake-lone-{}-{n}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for LoneNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_packet_that_cannot_be_sent_is_exit_13() {
    let ns = LoneNetns::new();
    let wake = |args: &[&str]| {
        let mut cmd = NetnsPair::exec(&ns.0);
        cmd.arg(env!("CARGO_BIN_EXE_pullnix"))
            .arg("wake")
            .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(30))
    };
    // No route to 10.9.9.0/24 (nor to the limited broadcast): sendto(2) fails with ENETUNREACH.
    for args in [
        &["--broadcast", "10.9.9.255", "52:54:00:12:34:56"][..],
        &["52:54:00:12:34:56"][..],
    ] {
        let out = wake(args);
        assert_exit(&out, 13, &format!("wake {args:?} without a route"));
        assert_all_lines_prefixed(&out);
        assert_stderr_has(&out, "could not send", &format!("{args:?}"));
        assert_stderr_has(
            &out,
            "sending the magic packet for 52:54:00:12:34:56",
            &format!("{args:?}"),
        );
        assert_stderr_has(&out, "unreachable", &format!("{args:?}"));
    }
    // The arguments are still checked first: a typo stays a usage error.
    let out = wake(&["--broadcast", "10.9.9.255", "52:54:00:12:34"]);
    assert_exit(&out, 2, "bad MAC without a route");
}

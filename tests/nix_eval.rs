//! The NixOS side of pullnix, evaluated.
//!
//! Two layers:
//!
//! 1. Without nixpkgs (always runs): the unit data of nix/units.nix, as nix/unit-options.nix
//!    maps it onto NixOS's unit options, evaluated by a bare `nix-instantiate`
//!    (nix/tests/eval-units.nix).
//!
//! 2. Through the real NixOS module system (`modules_*` tests; the nixpkgs they need is found as
//!    tests/nixpkgs/mod.rs says): nix/tests/nixos.nix evaluates `nixosModules.default`,
//!    nix/module.nix with the flake's overlay, `nixosModules.provisioner` and
//!    `nixosModules.netboot` with the README's configurations (cut out of README.md below) and
//!    variations: vulnerability scan on, boot mode with `boot.loader.systemd-boot.bootCounting`
//!    declared, health checks of each kind, tuned timings, disabled, and one configuration per
//!    assertion and warning. It forces every value the modules put into the system (services,
//!    timers, /etc files, packages; derivations to their .drv paths). These tests then check:
//!    * the unit files, rendered by NixOS's own serviceToUnit / timerToUnit, equal key by key
//!      the ones nix/render-units.nix renders from the same parameters, which tests/systemd.rs
//!      runs under a real systemd; only NixOS's `Environment=` (PATH, HOME, nix's variables) is
//!      NixOS's own, and is checked separately;
//!    * every TOML file the modules generate is accepted by the real pullnix (its parser
//!      rejects unknown keys): config.toml and the installer's install.toml by `pullnix status`,
//!      the provisioner's hosts file by `pullnix pxe-api forget`;
//!    * each assertion and warning fires on its configuration with its message (with the values
//!      its remedy suggests), and none on the others;
//!    * nix/lib.nix, which the modules share, decides as the Rust code does: a URL's transport
//!      as gix's parser, an address pxe-api can listen on as std's `SocketAddr`.
//!
//! What is real and what is declared by hand: with the subset of ../shared/nixpkgs, the module
//! system, option types, unit renderer, unit types and options, `assertions`, the pixiecore
//! module and pkgs.formats are nixpkgs' own code; the other NixOS options the modules touch are
//! declared by hand with nixpkgs' types, packages are stand-in derivations that are never built,
//! and the netboot-minimal profile is a stand-in (nix/tests/nixos-subset.nix lists it all). With
//! `NIXPKGS=/path/to/nixpkgs` nothing is declared by hand: nixos/lib/eval-config.nix evaluates
//! all of NixOS, and the flake's package, clippy and rustfmt checks are instantiated too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod nixpkgs;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use common::TempDir;

fn eval_units() -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/tests/eval-units.nix");
    let out = nixpkgs::nix_instantiate(&["--eval", "--strict", "--json", file.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).expect("nix-instantiate printed no JSON")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn pullnix_service_survives_its_own_switch() {
    let v = eval_units();
    for set in ["plain", "counted"] {
        // All three: a restarted boot-check would wait for the lock the switching sync holds
        // while the switch waits for boot-check (found under a real systemd, tests/systemd.rs).
        for name in ["pullnix", "pullnix-confirm", "pullnix-boot-check"] {
            let s = &v[set]["services"][name];
            // NixOS writes X-RestartIfChanged=false into [Service] itself for
            // restartIfChanged = false; the raw directive must not also be in serviceConfig
            // (it would be written twice).
            assert_eq!(
                s["restartIfChanged"],
                Value::Bool(false),
                "{set}.{name}: {s}"
            );
            assert!(
                s["serviceConfig"].get("X-RestartIfChanged").is_none(),
                "{s}"
            );
            assert!(s["unitConfig"].get("X-RestartIfChanged").is_none(), "{s}");
            // X-StopOnRemoval has no NixOS option: it stays a raw [Unit] directive.
            assert_eq!(
                s["unitConfig"]["X-StopOnRemoval"],
                Value::Bool(false),
                "{s}"
            );
        }
    }
}

#[test]
fn service_types_commands_and_install() {
    let all = eval_units();
    let svc = &all["plain"]["services"];
    let exe = "/nix/store/00000000000000000000000000000000-pullnix/bin/pullnix --config \
               /nix/store/00000000000000000000000000000000-pullnix.toml";
    assert_eq!(svc["pullnix"]["serviceConfig"]["Type"], "oneshot");
    assert_eq!(
        svc["pullnix"]["serviceConfig"]["ExecStart"],
        format!("{exe} sync")
    );
    assert_eq!(
        svc["pullnix"]["serviceConfig"]["SuccessExitStatus"],
        serde_json::json!([3])
    );
    assert_eq!(
        svc["pullnix"]["description"],
        "pullnix: deploy the configured branch"
    );
    assert_eq!(
        strings(&svc["pullnix"]["after"]),
        ["network-online.target", "pullnix-boot-check.service"]
    );
    assert_eq!(strings(&svc["pullnix"]["wants"]), ["network-online.target"]);
    // The sync service is started by its timer only.
    assert!(svc["pullnix"].get("wantedBy").is_none());

    let confirm = &svc["pullnix-confirm"];
    // Type=notify: its start job ends at pullnix's READY=1, sent with the verdict when the
    // verdict decides the boot (what boot-complete.target waits for), at once otherwise.
    assert_eq!(confirm["serviceConfig"]["Type"], "notify");
    assert_eq!(confirm["serviceConfig"]["NotifyAccess"], "main");
    assert_eq!(
        confirm["serviceConfig"]["ExecStart"],
        format!("{exe} confirm")
    );
    assert_eq!(confirm["serviceConfig"]["WatchdogSec"], 45);
    assert_eq!(confirm["serviceConfig"]["TimeoutStartSec"], 120 + 60);
    assert_eq!(strings(&confirm["wantedBy"]), ["multi-user.target"]);
    // Not ordered before multi-user.target: the default dependencies are spelled out instead.
    assert_eq!(confirm["unitConfig"]["DefaultDependencies"], false);
    assert_eq!(strings(&confirm["requires"]), ["sysinit.target"]);
    assert_eq!(strings(&confirm["conflicts"]), ["shutdown.target"]);
    assert_eq!(strings(&confirm["before"]), ["shutdown.target"]);
    assert_eq!(
        strings(&confirm["after"]),
        [
            "sysinit.target",
            "basic.target",
            "network-online.target",
            "pullnix-boot-check.service"
        ]
    );

    let check = &svc["pullnix-boot-check"];
    assert_eq!(
        check["serviceConfig"]["ExecStart"],
        format!("{exe} boot-check")
    );
    // Default dependencies (after basic.target): a revert from here runs systemd-run.
    assert!(check["unitConfig"].get("DefaultDependencies").is_none());
    assert_eq!(strings(&check["wantedBy"]), ["multi-user.target"]);

    let timer = &all["plain"]["timers"]["pullnix"];
    assert_eq!(timer["timerConfig"]["OnUnitActiveSec"], "7min");
    assert_eq!(timer["timerConfig"]["RandomizedDelaySec"], "30s");
    assert_eq!(strings(&timer["wantedBy"]), ["timers.target"]);
}

#[test]
fn boot_counting_orders_confirm_before_boot_complete() {
    let v = eval_units();
    let plain = &v["plain"]["services"];
    let counted = &v["counted"]["services"];
    assert!(plain["pullnix-confirm"].get("requiredBy").is_none());
    assert_eq!(
        strings(&plain["pullnix-confirm"]["before"]),
        ["shutdown.target"]
    );
    assert_eq!(
        strings(&counted["pullnix-confirm"]["requiredBy"]),
        ["boot-complete.target"]
    );
    assert_eq!(
        strings(&counted["pullnix-confirm"]["before"]),
        ["shutdown.target", "boot-complete.target"]
    );
    assert!(strings(&counted["pullnix-boot-check"]["before"]).contains(&"boot-complete.target"));
    assert!(!strings(&plain["pullnix-boot-check"]["before"]).contains(&"boot-complete.target"));
}

/// `[Section]` -> directive -> values, from a rendered unit file.
fn parse_rendered(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            s.clone_into(&mut section);
        } else {
            let (k, v) = line.split_once('=').expect("directive line");
            out.entry(section.clone())
                .or_default()
                .entry(k.to_owned())
                .or_default()
                .push(v.to_owned());
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

fn values(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(scalar).collect(),
        other => vec![scalar(other)],
    }
}

/// Every directive of the unit files the nspawn tests run (nix/render-units.nix, defaults) is
/// carried by the option attrsets the module hands to NixOS, under the option NixOS renders it
/// from, and nothing is carried twice.
#[test]
fn module_options_carry_every_rendered_directive() {
    let v = eval_units();
    let rendered = v["rendered"].as_object().unwrap();
    // render-units.nix uses the defaults of units.nix; compare against an evaluation with them.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/units.nix");
    let expr = format!(
        "import {}/nix/unit-options.nix (import {} {{ pullnix = \"/nix/store/00000000000000000000000000000000-pullnix/bin/pullnix\"; configFile = \"/nix/store/00000000000000000000000000000000-pullnix.toml\"; }})",
        env!("CARGO_MANIFEST_DIR"),
        file.display()
    );
    let out = nixpkgs::nix_instantiate(&["--eval", "--strict", "--json", "-E", &expr]);
    let opts: Value = serde_json::from_slice(&out.stdout).unwrap();

    let unit_lists = [
        ("After", "after"),
        ("Wants", "wants"),
        ("Before", "before"),
        ("Requires", "requires"),
        ("Conflicts", "conflicts"),
    ];
    for (file_name, text) in rendered {
        let (name, kind) = file_name.rsplit_once('.').unwrap();
        let o = &opts[if kind == "service" {
            "services"
        } else {
            "timers"
        }][name];
        assert!(o.is_object(), "{file_name} has no options");
        let unit = parse_rendered(text.as_str().unwrap());
        let mut carried = 0;
        for (section, directives) in &unit {
            for (key, vals) in directives {
                let found: Vec<String> = match (section.as_str(), key.as_str()) {
                    ("Unit", "Description") => values(&o["description"]),
                    ("Service", "X-RestartIfChanged") => {
                        assert_eq!(o["restartIfChanged"], Value::Bool(false), "{file_name}");
                        vec!["false".into()]
                    }
                    ("Unit", k) if unit_lists.iter().any(|(d, _)| *d == k) => {
                        let opt = unit_lists.iter().find(|(d, _)| *d == k).unwrap().1;
                        assert!(o["unitConfig"].get(k).is_none(), "{file_name}: {k} twice");
                        values(&o[opt])
                    }
                    ("Unit", k) => values(&o["unitConfig"][k]),
                    ("Service", k) => values(&o["serviceConfig"][k]),
                    ("Timer", k) => values(&o["timerConfig"][k]),
                    ("Install", "WantedBy") => values(&o["wantedBy"]),
                    ("Install", "RequiredBy") => values(&o["requiredBy"]),
                    (s, k) => panic!("{file_name}: unexpected [{s}] {k}"),
                };
                assert_eq!(&found, vals, "{file_name}: [{section}] {key}");
                carried += 1;
            }
        }
        assert!(carried > 3, "{file_name}: rendered almost nothing: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Layer 2: the modules through the real NixOS module system.

/// The configurations the README shows, as NixOS modules: "A complete minimal configuration"
/// (a module as it stands) and the `services.pullnix-provisioner` block of "A complete example"
/// (inside a flake there, so it is cut out by its braces).
fn readme_configurations(dir: &Path) -> (String, String) {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let marker = "A complete minimal configuration:";
    let after = &readme[readme.find(marker).expect(marker)..];
    let start = after.find("```nix\n").expect("nix block") + "```nix\n".len();
    let agent = &after[start..start + after[start..].find("```").unwrap()];

    let marker = "services.pullnix-provisioner = {";
    let from = readme.find(marker).expect(marker);
    let mut depth = 0;
    let mut end = from;
    for (i, c) in readme[from..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = from + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    let provisioner = format!("{{\n{};\n}}\n", &readme[from..end]);

    let agent_file = dir.join("readme-agent.nix");
    let provisioner_file = dir.join("readme-provisioner.nix");
    fs::write(&agent_file, agent).unwrap();
    fs::write(&provisioner_file, provisioner).unwrap();
    (
        agent_file.display().to_string(),
        provisioner_file.display().to_string(),
    )
}

/// nix/tests/nixos.nix, evaluated once for all tests of this file (about a second).
fn modules() -> Option<&'static Value> {
    static EVAL: OnceLock<Option<Value>> = OnceLock::new();
    EVAL.get_or_init(|| {
        let nixpkgs = nixpkgs::locate()?;
        let tmp = TempDir::new("nixos-eval");
        let (agent, provisioner) = readme_configurations(tmp.path());
        let expr = nixpkgs::manifest_dir().join("nix/tests/nixos.nix");
        let path = nixpkgs.path().display().to_string();
        let probes =
            serde_json::json!({ "urls": PROBE_URLS, "addresses": PROBE_ADDRESSES }).to_string();
        let out = nixpkgs::nix_instantiate(&[
            "--eval",
            "--strict",
            "--json",
            expr.to_str().unwrap(),
            "--argstr",
            if nixpkgs.is_full() {
                "nixpkgs"
            } else {
                "subset"
            },
            &path,
            "--argstr",
            "readme",
            &agent,
            "--argstr",
            "readmeProvisioner",
            &provisioner,
            "--argstr",
            "probes",
            &probes,
        ]);
        Some(serde_json::from_slice(&out.stdout).unwrap())
    })
    .as_ref()
}

/// Repository URLs for nix/lib.nix's `isSsh` / `isPlainText`, which must agree with gix's
/// parser (`src/repo_url.rs` decides the transport with it at run time).
const PROBE_URLS: &[&str] = &[
    "ssh://git@git.example.org/fleet.git",
    "ssh://git.example.org:2222/fleet.git",
    "git+ssh://git@git.example.org/fleet.git",
    "ssh+git://git@git.example.org/fleet.git",
    "git@git.example.org:fleet.git",
    "git.example.org:fleet.git",
    "git@git.example.org:/srv/fleet.git",
    "git://git.example.org/fleet.git",
    "git://127.0.0.1:9418/fleet.git",
    "http://git.example.org/fleet.git",
    "http://user:pw@git.example.org/fleet.git",
    "https://git.example.org/fleet.git",
    "https://deploy:tok@git.example.org/fleet.git",
    "file:///srv/fleet.git",
    "/srv/fleet.git",
    "./fleet:with-colon.git",
    "fleet.git",
];

/// `listenAddress` values for nix/lib.nix's parser, which must accept exactly what pxe-api's
/// (std's `SocketAddr`, of `ADDRESS:PORT` with IPv6 in brackets) accepts, minus link-local IPv6
/// (not bindable without a zone) and zones.
const PROBE_ADDRESSES: &[&str] = &[
    "10.0.0.1",
    "0.0.0.0",
    "127.0.0.1",
    "127.8.9.10",
    "255.255.255.255",
    "256.1.1.1",
    "01.2.3.4",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1..3.4",
    "",
    "localhost",
    "provisioner.lan",
    "::",
    "::1",
    "0:0:0:0:0:0:0:1",
    "0000:0000:0000:0000:0000:0000:0000:0001",
    "fd00::1",
    "FD00::1",
    "2001:db8::8:800:200c:417a",
    "2001:db8:0:0:8:800:200c:417a",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8::",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    ":::",
    "1:::2",
    ":1::",
    "12345::1",
    "g::1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:0.0.0.0",
    "::10.0.0.1",
    "1:2:3:4:5:6:10.0.0.1",
    "1:2:3:4:5:6:7:10.0.0.1",
    "1:2:3:4:5::10.0.0.1",
    "1:2:3:4:5:6::10.0.0.1",
    "10.0.0.1::",
    "::ffff:256.0.0.1",
    "fe80::1",
    "fe80::1%eth1",
    "fe80::1%2",
    "febf::1",
    "fec0::1",
    "[::1]",
    "10.0.0.1:8080",
];

/// Dependency directives hold space-separated lists: NixOS writes one line
/// (`After=a b`), nix/render-units.nix one line per value; systemd reads both the same.
const LISTS: &[&str] = &[
    "After",
    "Before",
    "Wants",
    "Requires",
    "Requisite",
    "BindsTo",
    "PartOf",
    "Conflicts",
    "Upholds",
    "OnFailure",
    "OnSuccess",
    "WantedBy",
    "RequiredBy",
];

type Unit = BTreeMap<(String, String), Vec<String>>;

/// `(section, key) -> values` of a unit file (continuation lines joined).
fn parse_unit(name: &str, text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(first) = lines.next() {
        let mut line = first.to_owned();
        while line.ends_with('\\') {
            line.pop();
            line.push_str(lines.next().unwrap_or(""));
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            s.clone_into(&mut section);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: not a directive: {line:?}"));
        let values = unit.entry((section.clone(), key.to_owned())).or_default();
        if LISTS.contains(&key) {
            values.extend(value.split_whitespace().map(str::to_owned));
        } else {
            values.push(value.to_owned());
        }
    }
    unit
}

/// A unit as NixOS installs it: its file, plus `RequiredBy=`, which NixOS does not write into
/// [Install] but links as a `.requires` symlink (nixos/lib/systemd-lib.nix, generateUnits);
/// the nspawn tests get the same link from `systemctl enable` reading `[Install] RequiredBy=`.
fn nixos_unit(name: &str, u: &Value) -> Unit {
    let mut unit = parse_unit(name, u["text"].as_str().unwrap());
    let wanted: Vec<String> = strings(&u["wantedBy"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        unit.get(&("Install".into(), "WantedBy".into()))
            .cloned()
            .unwrap_or_default(),
        wanted,
        "{name}: [Install] WantedBy= and wantedBy differ"
    );
    let required: Vec<String> = strings(&u["requiredBy"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !required.is_empty() {
        unit.insert(("Install".into(), "RequiredBy".into()), required);
    }
    unit
}

fn get<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(&(section.to_owned(), key.to_owned()))
        .map_or(&[], Vec::as_slice)
}

/// `Environment=` values of a NixOS unit, as NAME -> value.
fn environment(unit: &Unit) -> BTreeMap<String, String> {
    get(unit, "Service", "Environment")
        .iter()
        .map(|quoted| {
            // NixOS writes each as a JSON string (systemd-lib.nix: toJSON "NAME=value").
            let assignment: String = serde_json::from_str(quoted).unwrap();
            let (k, v) = assignment.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The packages of a PATH, by store path name (`<hash>-git-2.44.0/bin` -> has "git").
fn path_has(path: &str, package: &str) -> bool {
    path.split(':').any(|dir| {
        dir.strip_prefix("/nix/store/")
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(_, name)| {
                name.starts_with(&format!("{package}-")) && dir.ends_with("/bin")
            })
    })
}

/// The agent's units as NixOS renders them against the nspawn-tested renderings, key by key.
fn compare_agent_units(case: &str, c: &Value, scan: bool) {
    let nixos = c["units"].as_object().unwrap();
    let rendered = c["rendered"].as_object().unwrap();
    let names: BTreeSet<&String> = nixos.keys().chain(rendered.keys()).collect();
    let mut differences = Vec::new();
    for name in names {
        let (Some(n), Some(r)) = (nixos.get(name), rendered.get(name)) else {
            differences.push(format!(
                "{name}: only in {}",
                if nixos.contains_key(name) {
                    "NixOS"
                } else {
                    "nix/render-units.nix"
                }
            ));
            continue;
        };
        let n = nixos_unit(name, n);
        let r = parse_unit(name, r.as_str().unwrap());
        let keys: BTreeSet<&(String, String)> = n.keys().chain(r.keys()).collect();
        for key in keys {
            // NixOS's own: PATH from `path`, HOME and nix's variables; checked below.
            if *key == ("Service".to_owned(), "Environment".to_owned()) {
                continue;
            }
            let (nv, rv) = (n.get(key), r.get(key));
            if nv != rv {
                differences.push(format!(
                    "{name} [{}] {}: NixOS {nv:?}, nspawn tests {rv:?}",
                    key.0, key.1
                ));
            }
        }
        if name.ends_with(".service") {
            let env = environment(&n);
            let path = env.get("PATH").map_or("", String::as_str);
            // curl: the README's `services.pullnix.path`, for its health command.
            let mut wanted = vec!["nix", "git", "openssh", "systemd", "coreutils", "curl"];
            if scan {
                wanted.push("vulnix");
            }
            for package in wanted {
                assert!(
                    path_has(path, package),
                    "{case}: {name}: no {package} in PATH={path}"
                );
            }
            assert_eq!(
                path_has(path, "vulnix"),
                scan,
                "{case}: {name}: PATH={path}"
            );
            // boot-check runs before the network and nix matter; the others get root's HOME.
            let home = env.get("HOME").map(String::as_str);
            let want = (name != "pullnix-boot-check.service").then_some("/root");
            assert_eq!(home, want, "{case}: {name}: HOME");
        }
    }
    assert!(
        differences.is_empty(),
        "{case}: the units NixOS installs differ from the ones tests/systemd.rs runs:\n{}",
        differences.join("\n")
    );
}

/// `pullnix --config FILE status --json` with the TOML pkgs.formats.toml makes of `json`:
/// the real parser, which rejects unknown keys and bad values. Returns the parsed JSON.
fn pullnix_accepts_config(label: &str, json: &Value) -> Value {
    pullnix_accepts_settings(label, serde_json::from_str(json.as_str().unwrap()).unwrap())
}

fn pullnix_accepts_settings(label: &str, settings: Value) -> Value {
    let tmp = TempDir::new("nixos-config");
    let file = tmp.join("config.toml");
    fs::write(&file, toml::to_string(&settings).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullnix"))
        .arg("--config")
        .arg(&file)
        .arg("--root")
        .arg(tmp.join("root"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: pullnix refuses the generated configuration:\n{}\n{}",
        fs::read_to_string(&file).unwrap(),
        String::from_utf8_lossy(&out.stderr)
    );
    settings
}

/// nix/lib.nix decides at evaluation what the Rust code decides at run time: the transport of
/// a repository URL (gix) and whether pxe-api can listen on an address (std's parser).
#[test]
fn modules_lib_parsers_agree_with_pullnix() {
    use std::net::{IpAddr, SocketAddr};
    let Some(all) = modules() else { return };
    let lib = &all["lib"];
    for (i, url) in PROBE_URLS.iter().enumerate() {
        let scheme = gix::url::parse(url.as_bytes())
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .scheme;
        assert_eq!(
            lib["ssh"][i].as_bool().unwrap(),
            scheme == gix::url::Scheme::Ssh,
            "isSsh {url:?} (gix: {scheme:?})"
        );
        assert_eq!(
            lib["plainText"][i].as_bool().unwrap(),
            matches!(scheme, gix::url::Scheme::Git | gix::url::Scheme::Http),
            "isPlainText {url:?} (gix: {scheme:?})"
        );
    }
    let mut refused = 0;
    for (i, address) in PROBE_ADDRESSES.iter().enumerate() {
        let nix = &lib["addresses"][i];
        // As the module passes it to --report-listen (hostPort in nix/provisioner.nix).
        let host_port = if address.contains(':') {
            format!("[{address}]:8080")
        } else {
            format!("{address}:8080")
        };
        let pxe_api = host_port.parse::<SocketAddr>().ok();
        let zone = address.contains('%');
        let expected = match pxe_api.map(|a| a.ip()) {
            _ if zone => None,
            Some(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80 => None,
            Some(ip) => Some(ip.to_canonical()),
            None => None,
        };
        match expected {
            None => {
                refused += 1;
                assert!(
                    nix["error"].is_string(),
                    "listenAddress {address:?}: pxe-api says {pxe_api:?}, nix/lib.nix {nix}"
                );
            }
            Some(IpAddr::V4(v4)) => assert_eq!(
                nix["v4"],
                serde_json::json!(v4.octets()),
                "listenAddress {address:?}"
            ),
            Some(IpAddr::V6(v6)) => assert_eq!(
                nix["v6"],
                serde_json::json!(v6.segments()),
                "listenAddress {address:?}"
            ),
        }
    }
    assert!(refused > 10 && refused < PROBE_ADDRESSES.len() - 10);
}

/// pxe-api runs as a `DynamicUser` with no capabilities, unless a port below 1024 needs
/// `CAP_NET_BIND_SERVICE`; an IPv6 `listenAddress` is bracketed where a port follows it.
#[test]
fn modules_provisioner_listens_where_it_can() {
    let Some(all) = modules() else { return };
    let api = |name: &str| {
        let c = case(all, "provisioner", name);
        no_messages("provisioner", name, c);
        nixos_unit(
            "pullnix-pxe-api.service",
            &c["units"]["pullnix-pxe-api.service"],
        )
    };
    for name in [
        "readme",
        "reinstall",
        "ipv6-listen",
        "reinstall-unused-listen",
    ] {
        let unit = api(name);
        assert_eq!(
            get(&unit, "Service", "CapabilityBoundingSet"),
            [""],
            "{name}"
        );
        assert!(
            get(&unit, "Service", "AmbientCapabilities").is_empty(),
            "{name}"
        );
    }
    for name in ["low-port", "low-boot-port"] {
        let unit = api(name);
        for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
            assert_eq!(
                get(&unit, "Service", key),
                ["CAP_NET_BIND_SERVICE"],
                "{name}: {key}"
            );
        }
        assert_eq!(get(&unit, "Service", "DynamicUser"), ["true"], "{name}");
    }
    let exec = get(&api("ipv6-listen"), "Service", "ExecStart").join(" ");
    for part in [
        "--report-listen '[fd00::1]:8080'",
        "--public-url 'http://[fd00::1]:8080'",
    ] {
        assert!(exec.contains(part), "{exec} lacks {part}");
    }
    // Without installOnce, listenAddress is not used at all.
    let exec = get(&api("reinstall-unused-listen"), "Service", "ExecStart").join(" ");
    assert!(!exec.contains("provisioner.lan"), "{exec}");
}

fn case<'a>(all: &'a Value, group: &str, name: &str) -> &'a Value {
    let c = &all[group][name];
    assert!(c.is_object(), "no configuration {group}.{name}");
    assert_eq!(c["forced"], Value::Bool(true), "{group}.{name} not forced");
    c
}

fn no_messages(group: &str, name: &str, c: &Value) {
    assert_eq!(
        c["failedAssertions"],
        serde_json::json!([]),
        "{group}.{name}"
    );
    assert_eq!(c["warnings"], serde_json::json!([]), "{group}.{name}");
}

#[test]
fn modules_readme_configuration_installs_the_units_the_nspawn_tests_run() {
    let Some(all) = modules() else { return };
    let mut agent_cases = vec!["readme", "readme-overlay", "scan", "health", "tuned"];
    if all["hasBootCounting"] == Value::Bool(true) {
        agent_cases.push("boot-counting");
    }
    for name in agent_cases {
        let c = case(all, "agent", name);
        no_messages("agent", name, c);
        assert_eq!(c["enable"], Value::Bool(true));
        compare_agent_units(name, c, name == "scan");
        assert!(
            c["packageInstalled"].as_bool().unwrap(),
            "{name}: pullnix not in systemPackages"
        );
        assert_eq!(
            c["etc"],
            serde_json::json!(["pullnix/config.toml", "pullnix/known_hosts"]),
            "{name}"
        );
        // The sync runs the package's binary with the generated file.
        let sync = nixos_unit("pullnix.service", &c["units"]["pullnix.service"]);
        assert_eq!(
            get(&sync, "Service", "ExecStart"),
            [format!(
                "{} --config {} sync",
                c["package"].as_str().unwrap(),
                c["configFile"].as_str().unwrap()
            )],
            "{name}"
        );
    }
    // The flake's module and the plain module with the overlay build the same package.
    assert_eq!(
        all["agent"]["readme"]["units"],
        all["agent"]["readme-overlay"]["units"]
    );
}

#[test]
fn modules_generated_configurations_are_accepted_by_pullnix() {
    let Some(all) = modules() else { return };
    let readme = pullnix_accepts_config("agent.readme", &case(all, "agent", "readme")["settings"]);
    assert_eq!(readme["host"], "edge-01");
    assert_eq!(
        readme["repo"]["url"],
        "ssh://git@git.example.org/fleet/nixos.git"
    );
    assert_eq!(readme["repo"]["deploy_key"], "/run/keys/pullnix-deploy");
    assert_eq!(readme["repo"]["known_hosts"], "/etc/pullnix/known_hosts");
    assert_eq!(
        readme["health"]["units"],
        serde_json::json!(["nginx.service"])
    );
    assert_eq!(readme["health"]["command"][0]["timeout"], 10);
    assert_eq!(readme["confirm"]["unit"], "pullnix-confirm.service");
    assert_eq!(readme["switch"]["systemd_run"], true);
    assert_eq!(readme["boot"]["counting"], false);
    assert_eq!(readme["scan"]["enable"], false);

    let scan = pullnix_accepts_config("agent.scan", &case(all, "agent", "scan")["settings"]);
    assert_eq!(scan["scan"]["enable"], true);

    let health = pullnix_accepts_config("agent.health", &case(all, "agent", "health")["settings"]);
    assert_eq!(health["health"]["system_running"], true);
    let commands = health["health"]["command"].as_array().unwrap();
    assert_eq!(commands.len(), 2);
    let disk = commands.iter().find(|c| c["name"] == "disk").unwrap();
    assert_eq!(disk["timeout"], 30, "the default timeout");

    // Remotes with a pin, signatures, an opt-out or a credentials file: what evaluation lets
    // through, pullnix accepts too.
    for name in [
        "ssh-opt-out",
        "plaintext-signed",
        "plaintext-opt-out",
        "https-credentials",
    ] {
        let settings = pullnix_accepts_config(
            &format!("agent.{name}"),
            &case(all, "agent", name)["settings"],
        );
        if name == "https-credentials" {
            assert_eq!(
                settings["repo"]["credentials_file"],
                "/run/keys/pullnix-credentials"
            );
        }
    }

    let tuned = pullnix_accepts_config("agent.tuned", &case(all, "agent", "tuned")["settings"]);
    assert_eq!(tuned["confirm"]["timeout"], 600);
    assert_eq!(tuned["confirm"]["interval"], 7);

    if all["hasBootCounting"] == Value::Bool(true) {
        let boot = pullnix_accepts_config(
            "agent.boot-counting",
            &case(all, "agent", "boot-counting")["settings"],
        );
        assert_eq!(boot["boot"]["counting"], true);
        assert_eq!(boot["switch"]["mode"], "boot");
    }

    for name in ["generic", "readme", "pre-install"] {
        let json = case(all, "netboot", name)["install"].as_str().unwrap();
        let mut install: Value = serde_json::from_str(json).unwrap();
        // `pullnix install` reads the file unchecked and fills in repo.url from `pullnix.repo=`
        // on the kernel command line before it validates (src/install.rs); so does this test
        // for the generic image, whose file has no repository.
        if install["repo"]["url"] == "" {
            install["repo"]["url"] = "https://10.0.0.1/fleet.git".into();
        }
        pullnix_accepts_settings(&format!("netboot.{name}"), install);
    }

    for name in ["readme", "reinstall"] {
        let c = case(all, "provisioner", name);
        let hosts: Value = serde_json::from_str(c["hosts"].as_str().unwrap()).unwrap();
        let tmp = TempDir::new("nixos-hosts");
        let file = tmp.join("hosts.toml");
        fs::write(&file, toml::to_string(&hosts).unwrap()).unwrap();
        fs::create_dir(tmp.join("state")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pullnix"))
            .args(["pxe-api", "forget", "--state"])
            .arg(tmp.join("state"))
            .arg("--hosts")
            .arg(&file)
            .arg("edge-01")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "provisioner.{name}: pxe-api refuses the generated hosts file:\n{}\n{}",
            fs::read_to_string(&file).unwrap(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every assertion and warning of the modules, on the configuration that triggers it: each
/// inner list holds what one message must say.
type Expected = (
    &'static str,
    &'static str,
    &'static [&'static [&'static str]],
    &'static [&'static [&'static str]],
);

const MESSAGES: &[Expected] = &[
    // nix/module.nix
    (
        "agent",
        "no-url",
        &[&["services.pullnix.settings.repo.url is empty"]],
        &[],
    ),
    (
        "agent",
        "short-window",
        &[&[
            "confirm.timeout (8 s)",
            "confirm.interval (5 s)",
            "fewer than two",
            "Raise services.pullnix.confirmTimeout to at least 10,",
            "confirm.interval to at most 4.",
        ]],
        &[],
    ),
    (
        "agent",
        "watchdog-not-below-window",
        &[&[
            "watchdogSec (60) is not below confirm.timeout (60)",
            // Above the longest silence of confirm: the README's 10 s curl.
            "Lower services.pullnix.watchdogSec to between 11 and 59,",
            "outlasts the longest health command timeout (10 s)",
            "raise services.pullnix.confirmTimeout to at least 61.",
        ]],
        &[],
    ),
    // "at least 10" would have been refused by the watchdog assertion; the setting that
    // decides the timeout is the one to raise.
    (
        "agent",
        "timeout-below-watchdog",
        &[
            &[
                "confirm.timeout (9 s)",
                "Raise services.pullnix.settings.confirm.timeout to at least 61 (it must stay above watchdogSec, 60)",
                "confirm.interval to at most 4.",
            ],
            &[
                "watchdogSec (60) is not below confirm.timeout (9)",
                "No watchdogSec below 9 outlasts the longest health command timeout (10 s)",
                "raise services.pullnix.settings.confirm.timeout to at least 61.",
            ],
        ],
        &[],
    ),
    (
        "agent",
        "watchdog-no-room",
        &[&[
            "watchdogSec (60) is not below confirm.timeout (10)",
            "No watchdogSec below 10 outlasts the longest health command timeout (20 s)",
            "raise services.pullnix.confirmTimeout to at least 61.",
        ]],
        &[],
    ),
    (
        "agent",
        "watchdog-below-round",
        &[
            &[
                "watchdogSec (31) is not below confirm.timeout (30)",
                "the longest health command timeout (35 s)",
                "raise services.pullnix.watchdogSec to at least 36 and services.pullnix.confirmTimeout to at least 37.",
            ],
            &[
                "health command timeouts not below watchdogSec (31): \"slow\" (35 s)",
                "Lower those timeouts below 31",
                "or raise services.pullnix.watchdogSec to 40 and services.pullnix.confirmTimeout to at least 41",
            ],
        ],
        &[],
    ),
    (
        "agent",
        "slow-health-command",
        &[&[
            "health command timeouts not below watchdogSec (60): \"slow\" (90 s)",
            "Lower those timeouts below 60",
            "raise services.pullnix.watchdogSec to 95",
        ]],
        &[],
    ),
    (
        "agent",
        "setting-overrides-shortcut",
        &[&[
            "watchdogSec (60) is not below confirm.timeout (20)",
            "to between 11 and 19,",
            "raise services.pullnix.settings.confirm.timeout to at least 61.",
        ]],
        &[&[
            "confirmTimeout has no effect, as settings.confirm.timeout is set too and wins",
            "Set only one of the two.",
        ]],
    ),
    (
        "agent",
        "command-not-on-path",
        &[],
        &[&[
            "health check \"http\" runs \"curl\", which is not known to be on the PATH",
            "services.pullnix.path = [ pkgs.curl ];",
            "\"${pkgs.curl}/bin/curl\"",
        ]],
    ),
    (
        "agent",
        "command-relative",
        &[],
        &[&[
            "health check \"local\" runs \"scripts/check\", a relative path",
            "give argv[0] as an absolute path",
        ]],
    ),
    (
        "agent",
        "key-in-store",
        &[&[
            "services.pullnix.deployKeyFile: the deploy key would be in the Nix store",
            "00000000000000000000000000000000-deploy-key is inside the Nix store",
            "agenix, sops-nix",
        ]],
        &[],
    ),
    (
        "agent",
        "key-path",
        &[&[
            "services.pullnix.deployKeyFile: the deploy key would be in the Nix store",
            "it is a Nix path (",
        ]],
        &[],
    ),
    (
        "agent",
        "key-setting-path",
        &[&[
            "services.pullnix.settings.repo.deploy_key: the deploy key would be in the Nix store",
            "it is a Nix path (",
        ]],
        &[],
    ),
    (
        "agent",
        "key-in-etc",
        &[&[
            "services.pullnix.deployKeyFile: the deploy key would be in the Nix store",
            "/etc/pullnix//./deploy-key is environment.etc.\"pullnix/deploy-key\"",
            "never write it with environment.etc",
        ]],
        &[],
    ),
    (
        "agent",
        "key-in-etc-directory",
        &[&["/etc/pullnix-keys/fleet/deploy-key is environment.etc.\"pullnix-keys\""]],
        &[],
    ),
    (
        "agent",
        "not-switchable",
        &[&["system.switch.enable = true"]],
        &[],
    ),
    (
        "agent",
        "ssh-without-key",
        &[],
        &[&["ssh remote but no deploy key is set"]],
    ),
    (
        "agent",
        "boot-without-counting",
        &[],
        &[&["switch.mode = \"auto\" without boot.loader.systemd-boot.bootCounting"]],
    ),
    (
        "agent",
        "ssh-unpinned",
        &[&[
            "repo.url (ssh://git@git.example.org/fleet.git) is an ssh remote without a pinned host key",
            "insecure_accept_new_host_keys = true",
        ]],
        &[&["ssh remote but no deploy key is set"]],
    ),
    (
        "agent",
        "git-ssh-unpinned",
        &[&[
            "(git+ssh://git@git.example.org/fleet.git) is an ssh remote without a pinned host key",
        ]],
        &[&["ssh remote but no deploy key is set"]],
    ),
    (
        "agent",
        "ssh-git-unpinned",
        &[&[
            "(ssh+git://git@git.example.org/fleet.git) is an ssh remote without a pinned host key",
        ]],
        &[&["ssh remote but no deploy key is set"]],
    ),
    (
        "agent",
        "scp-like-unpinned",
        &[&["(git@git.example.org:fleet.git) is an ssh remote without a pinned host key"]],
        &[&["ssh remote but no deploy key is set"]],
    ),
    (
        "agent",
        "plaintext-git",
        &[&[
            "(git://git.example.org/fleet.git) is a plain-text transport",
            "settings.repo.allowed_signers",
            "insecure_plaintext_without_signatures = true",
        ]],
        &[],
    ),
    (
        "agent",
        "plaintext-http",
        &[&["(http://git.example.org/fleet.git) is a plain-text transport"]],
        &[],
    ),
    (
        "agent",
        "password-in-url",
        &[&[
            "repo.url contains a password",
            "services.pullnix.credentialsFile",
        ]],
        &[],
    ),
    (
        "agent",
        "credentials-in-store",
        &[&[
            "services.pullnix.credentialsFile: the git login would be in the Nix store",
            "00000000000000000000000000000000-creds is inside the Nix store",
        ]],
        &[],
    ),
    (
        "agent",
        "credentials-setting-path",
        &[&[
            "services.pullnix.settings.repo.credentials_file: the git login would be in the Nix store",
            "it is a Nix path (",
        ]],
        &[],
    ),
    (
        "agent",
        "ssh-opt-out",
        &[],
        &[&["ssh remote but no deploy key is set"]],
    ),
    // nix/provisioner.nix
    (
        "provisioner",
        "bad-mac",
        &[&["not a MAC address in edge-02.mac = \"52:54:00:12:34\""]],
        &[],
    ),
    (
        "provisioner",
        "duplicate-mac",
        &[&["one MAC address for several hosts (edge-01, edge-02)"]],
        &[],
    ),
    (
        "provisioner",
        "blank-flake-attr",
        &[&["hosts.edge-02.flake_attr = \"edge two\" contains blanks: set it to the name"]],
        &[],
    ),
    (
        "provisioner",
        "empty-flake-attr",
        &[&[
            "hosts.edge-02.flake_attr is empty: remove it (the host's name, edge-02, is then used) or set it",
        ]],
        &[],
    ),
    (
        "provisioner",
        "blank-host-name",
        &[&[
            "hosts.\"edge 02\" has no flake_attr, and its name, which stands in for it, contains blanks: set flake_attr",
        ]],
        &[],
    ),
    (
        "provisioner",
        "port-clash",
        &[&["port (8080) is also pixiecore's port", "(e.g. 8082)"]],
        &[],
    ),
    (
        "provisioner",
        "boot-port-clash",
        &[&["bootPort (8080) is also pixiecore's port", "(e.g. 8081)"]],
        &[],
    ),
    (
        "provisioner",
        "host-name-listen",
        &[&[
            "listenAddress = \"provisioner.lan\" is not an IP address",
            "publicUrl = \"http://provisioner.lan:8080\"",
        ]],
        &[],
    ),
    (
        "provisioner",
        "zone-listen",
        &[&["listenAddress = \"fe80::1%eth1\" is an IPv6 address with a zone (\"%eth1\")"]],
        &[],
    ),
    (
        "provisioner",
        "link-local-listen",
        &[&["listenAddress = \"fe80::1\" is a link-local IPv6 address"]],
        &[],
    ),
    (
        "provisioner",
        "wildcard-without-url",
        &[&[
            "installOnce needs to know how installers reach pxe-api, which listens on every address (\"0.0.0.0\")",
        ]],
        &[],
    ),
    (
        "provisioner",
        "null-public-url",
        &[&[
            "and publicUrl is null: leave it unset (it then follows from listenAddress: \"http://10.0.0.1:8080\")",
        ]],
        &[],
    ),
    (
        "provisioner",
        "loopback",
        &[&["listenAddress = \"127.0.0.1\" is a loopback address"]],
        &[],
    ),
    // Only the loopback message: asking for publicUrl would not help.
    (
        "provisioner",
        "loopback-v6",
        &[&[
            "listenAddress = \"::1\" is a loopback address",
            "or on \"0.0.0.0\" together with publicUrl = \"http://10.0.0.1:8080\"",
        ]],
        &[],
    ),
    (
        "provisioner",
        "loopback-mapped",
        &[&["listenAddress = \"::ffff:127.0.0.1\" is a loopback address"]],
        &[],
    ),
    (
        "provisioner",
        "bad-public-url",
        &[&["publicUrl = \"ftp://10.0.0.1/pxe\" is not an http:// or https:// URL"]],
        &[],
    ),
    (
        "provisioner",
        "report-without-install-once",
        &[&["{report} in hosts.edge-02.cmdline needs installOnce = true"]],
        &[],
    ),
    ("provisioner", "no-hosts", &[], &[&["hosts is empty"]]),
    (
        "provisioner",
        "own-cmdline",
        &[],
        &[&[
            "hosts with their own cmdline without pullnix.report={report}",
            "(edge-02)",
        ]],
    ),
    // nix/netboot.nix
    (
        "netboot",
        "baked-key",
        &[],
        &[&["deployKeyFile is set: the deploy key is inside the netboot initrd"]],
    ),
    (
        "netboot",
        "nobody-can-copy-the-key",
        &[],
        &[&["waitForDeployKey is on but authorizedKeys is empty"]],
    ),
    (
        "netboot",
        "ssh-unpinned",
        &[&[
            "pullnix.installer.repo (ssh://git@git.example.org/fleet.git) is an ssh remote",
            "knownHosts is empty",
            "insecure_accept_new_host_keys = true",
        ]],
        &[],
    ),
    (
        "netboot",
        "plaintext",
        &[&[
            "pullnix.installer.repo (git://10.0.0.1/fleet.git) is a plain-text transport",
            "insecure_plaintext_without_signatures = true",
        ]],
        &[],
    ),
    (
        "netboot",
        "key-setting-path",
        &[&[
            "pullnix.installer.settings.repo.deploy_key: the deploy key would be in the Nix store, and so in the netboot image",
            "it is a Nix path (",
            "copy the key there over ssh after boot",
        ]],
        &[],
    ),
    (
        "netboot",
        "key-path-in-etc",
        &[&[
            "pullnix.installer.deployKeyPath: the deploy key would be in the Nix store",
            "/etc/pullnix/deploy-key is environment.etc.\"pullnix/deploy-key\"",
            "(the default, /run/keys/pullnix-deploy)",
        ]],
        &[],
    ),
    (
        "netboot",
        "credentials-in-store",
        &[&[
            "pullnix.installer.settings.repo.credentials_file: the git login would be in the Nix store",
            "systemctl restart pullnix-install",
        ]],
        &[],
    ),
    (
        "netboot",
        "no-partitioning",
        &[],
        &[&[
            "partitioning = \"none\" without preInstall",
            "mounted at /target.",
        ]],
    ),
];

/// Cases of MESSAGES that fire an assertion another case already fires (other spellings of
/// an ssh URL, other ways into the store, other timings and addresses), left out when
/// assertions are counted.
const REPEATS: &[(&str, &str)] = &[
    ("agent", "git-ssh-unpinned"),
    ("agent", "ssh-git-unpinned"),
    ("agent", "scp-like-unpinned"),
    ("agent", "plaintext-http"),
    ("agent", "timeout-below-watchdog"),
    ("agent", "watchdog-no-room"),
    ("agent", "watchdog-below-round"),
    ("agent", "setting-overrides-shortcut"),
    ("agent", "key-path"),
    ("agent", "key-setting-path"),
    ("agent", "key-in-etc"),
    ("agent", "key-in-etc-directory"),
    ("agent", "credentials-setting-path"),
    ("provisioner", "empty-flake-attr"),
    ("provisioner", "blank-host-name"),
    ("provisioner", "zone-listen"),
    ("provisioner", "link-local-listen"),
    ("provisioner", "null-public-url"),
    ("provisioner", "loopback-v6"),
    ("provisioner", "loopback-mapped"),
    ("netboot", "key-path-in-etc"),
];

/// The messages of a configuration, with NixOS's line breaks inside them folded to spaces.
fn messages(c: &Value, kind: &str) -> Vec<String> {
    c[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_str()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn check_messages(label: &str, got: &[String], expected: &[&[&str]]) {
    assert_eq!(got.len(), expected.len(), "{label}: {got:#?}");
    for (message, parts) in got.iter().zip(expected) {
        for part in *parts {
            assert!(
                message.contains(part),
                "{label}: {message:?} does not say {part:?}"
            );
        }
    }
}

#[test]
fn modules_assertions_and_warnings_fire_with_their_messages() {
    let Some(all) = modules() else { return };
    for (group, name, assertions, warnings) in MESSAGES {
        let c = case(all, group, name);
        check_messages(
            &format!("{group}.{name} assertions"),
            &messages(c, "failedAssertions"),
            assertions,
        );
        check_messages(
            &format!("{group}.{name} warnings"),
            &messages(c, "warnings"),
            warnings,
        );
    }

    // Every assertion of the modules has its configuration above.
    for (group, file) in [
        ("agent", "nix/module.nix"),
        ("provisioner", "nix/provisioner.nix"),
        ("netboot", "nix/netboot.nix"),
    ] {
        let source = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let declared = source.matches("assertion =").count();
        let tested: usize = MESSAGES
            .iter()
            .filter(|(g, n, ..)| g == &group && !REPEATS.contains(&(*g, *n)))
            .map(|(_, _, a, _)| a.len())
            .sum();
        assert_eq!(
            declared, tested,
            "{file} has {declared} assertions, {tested} are triggered here"
        );
    }

    // The other configurations are clean.
    for group in ["agent", "provisioner", "netboot"] {
        for (name, c) in all[group].as_object().unwrap() {
            if c.is_null() || MESSAGES.iter().any(|(g, n, ..)| *g == group && n == name) {
                continue;
            }
            no_messages(group, name, c);
        }
    }
}

#[test]
fn modules_disabled_agent_adds_nothing() {
    let Some(all) = modules() else { return };
    let c = case(all, "agent", "disabled");
    assert_eq!(c["enable"], Value::Bool(false));
    assert_eq!(c["units"], serde_json::json!({}));
    assert_eq!(c["etc"], serde_json::json!([]));
    no_messages("agent", "disabled", c);
}

#[test]
fn modules_provisioner_runs_pxe_api_behind_pixiecore() {
    let Some(all) = modules() else { return };
    let c = case(all, "provisioner", "readme");
    let hosts_file = c["hostsFile"].as_str().unwrap();
    assert_eq!(
        c["hostsOption"], c["hostsFile"],
        "hostsFile is the file in /etc"
    );

    let api = nixos_unit(
        "pullnix-pxe-api.service",
        &c["units"]["pullnix-pxe-api.service"],
    );
    let exec = get(&api, "Service", "ExecStart").join(" ");
    for part in [
        "pxe-api --hosts",
        hosts_file,
        "--state /var/lib/pullnix-provisioner",
        "--public-url http",
    ] {
        assert!(exec.contains(part), "pxe-api ExecStart={exec} lacks {part}");
    }
    assert_eq!(
        get(&api, "Service", "StateDirectory"),
        ["pullnix-provisioner"]
    );
    assert_eq!(get(&api, "Service", "DynamicUser"), ["true"]);
    // startLimitIntervalSec = 0, rendered by NixOS's own unitConfig.
    assert_eq!(get(&api, "Unit", "StartLimitIntervalSec"), ["0"]);
    assert_eq!(get(&api, "Install", "WantedBy"), ["multi-user.target"]);

    // nixpkgs' pixiecore module, in API mode, asking pxe-api, ordered after it.
    let pixie = nixos_unit("pixiecore.service", &c["units"]["pixiecore.service"]);
    let exec = get(&pixie, "Service", "ExecStart").join(" ");
    let api_server = c["apiServer"].as_str().unwrap();
    assert!(exec.contains(&format!("api {api_server}")), "{exec}");
    assert!(exec.contains("--dhcp-no-bind"), "{exec}");
    for key in ["Wants", "After"] {
        assert!(
            get(&pixie, "Unit", key).contains(&"pullnix-pxe-api.service".to_owned()),
            "pixiecore {key}"
        );
    }
    let ports = |proto: &str| -> BTreeSet<u64> {
        c["firewall"][proto]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect()
    };
    assert_eq!(ports("tcp"), BTreeSet::from([80, 8080]));
    assert_eq!(ports("udp"), BTreeSet::from([67, 69, 4011]));

    let hosts: Value = serde_json::from_str(c["hosts"].as_str().unwrap()).unwrap();
    let defaults = &hosts["defaults"];
    assert!(
        defaults["kernel"]
            .as_str()
            .unwrap()
            .starts_with("file:///nix/store/")
    );
    let cmdline = defaults["cmdline"].as_str().unwrap();
    for part in [
        "init=/nix/store/",
        "pullnix.host={host} pullnix.mac={mac}",
        "pullnix.report={report}",
    ] {
        assert!(cmdline.contains(part), "{cmdline}");
    }
    assert_eq!(hosts["hosts"]["edge-02"]["flake_attr"], "edge-two");
    assert!(
        hosts["hosts"]["edge-01"].get("flake_attr").is_none(),
        "nulls are left out"
    );

    // Installing again on every network boot: no state, no report URL, pxe-api on loopback.
    let c = case(all, "provisioner", "reinstall");
    let api = nixos_unit(
        "pullnix-pxe-api.service",
        &c["units"]["pullnix-pxe-api.service"],
    );
    let exec = get(&api, "Service", "ExecStart").join(" ");
    assert!(
        !exec.contains("--state") && exec.contains("--listen 127.0.0.1:8081"),
        "{exec}"
    );
    assert!(!c["hosts"].as_str().unwrap().contains("{report}"));
}

#[test]
fn modules_netboot_installer_runs_pullnix_install_once_per_boot() {
    let Some(all) = modules() else { return };
    let c = case(all, "netboot", "generic");
    let unit = nixos_unit(
        "pullnix-install.service",
        &c["units"]["pullnix-install.service"],
    );
    assert_eq!(
        get(&unit, "Unit", "ConditionKernelCommandLine"),
        ["pullnix.host"]
    );
    assert_eq!(get(&unit, "Service", "Type"), ["oneshot"]);
    assert_eq!(get(&unit, "Service", "X-RestartIfChanged"), ["false"]);
    assert!(
        get(&unit, "Service", "Restart").is_empty(),
        "one attempt per boot"
    );
    assert!(get(&unit, "Service", "ExecStartPre").is_empty());
    assert!(
        get(&unit, "Service", "ExecStart")[0]
            .ends_with("/bin/pullnix --config /etc/pullnix/install.toml install")
    );
    assert_eq!(get(&unit, "Install", "WantedBy"), ["multi-user.target"]);
    assert!(strings(&c["experimentalFeatures"]).contains(&"flakes"));
    assert_eq!(c["sshd"]["enable"], true);
    assert_eq!(c["sshd"]["PermitRootLogin"], "prohibit-password");
    assert_eq!(c["sshd"]["PasswordAuthentication"], false);

    // The README's installer: the key is copied in after boot, never baked into the image.
    let c = case(all, "netboot", "readme");
    let install: Value = serde_json::from_str(c["install"].as_str().unwrap()).unwrap();
    assert_eq!(install["repo"]["deploy_key"], "/run/keys/pullnix-deploy");
    assert_eq!(install["install"]["wait_for_deploy_key"], true);
    assert!(
        install["repo"]["known_hosts"]
            .as_str()
            .unwrap()
            .starts_with("/nix/store/")
    );
    assert_eq!(
        strings(&c["rootKeys"]),
        ["ssh-ed25519 AAAA… admin@example.org"]
    );

    // preInstall runs before pullnix; the scan puts vulnix on the unit's PATH.
    let c = case(all, "netboot", "pre-install");
    let unit = nixos_unit(
        "pullnix-install.service",
        &c["units"]["pullnix-install.service"],
    );
    assert_eq!(get(&unit, "Service", "ExecStartPre").len(), 1);
    assert!(path_has(&environment(&unit)["PATH"], "vulnix"));
}

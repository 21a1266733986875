//! The NixOS VM tests of vm-tests/ need KVM and nixpkgs, neither of which CI has. What CI can
//! check is that their Python scripts, as the test driver would receive them
//! (nix/tests/vm-scripts.nix builds them with the real nixpkgs lib), only use what the driver
//! has: every method called on a machine and every keyword argument exists in nixpkgs'
//! driver (nixos/lib/test-driver/src/test_driver/machine/__init__.py and driver.py, read for
//! this list); `wait_for_console_text` has a timeout (without one it waits forever); a test
//! whose machine reboots (pullnix's boot mode) starts it with `allow_reboot=True` before
//! `start_all()`, which would give qemu `-no-reboot`; every fixture flake a script commits
//! exists; and no test relies on `boot.initrd.preLVMCommands`, which systemd in stage 1 (the
//! default on recent nixpkgs) refuses. Python's own `ast` parses the scripts, so a syntax error in the Nix-built text fails
//! here too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nixpkgs;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Reads the scripts from stdin (JSON: name -> {script, flakes}), prints name -> findings.
const CHECKER: &str = r#"
import ast, json, sys

# Machine methods and their keyword arguments, from nixpkgs
# nixos/lib/test-driver/src/test_driver/machine/__init__.py (class Machine).
METHODS = {
    "start": {"allow_reboot"},
    "shutdown": set(),
    "crash": set(),
    "reboot": set(),
    "wait_for_shutdown": set(),
    "execute": {"check_return", "check_output", "timeout"},
    "succeed": {"timeout"},
    "fail": {"timeout"},
    "wait_until_succeeds": {"timeout"},
    "wait_until_fails": {"timeout"},
    "wait_for_unit": {"user", "timeout"},
    "wait_for_console_text": {"timeout"},
    "wait_for_open_port": {"addr", "timeout"},
    "wait_for_closed_port": {"addr", "timeout"},
    "wait_for_file": {"timeout"},
    "systemctl": {"user"},
    "get_unit_info": {"user"},
    "get_unit_property": {"user"},
    "require_unit_state": set(),
    "copy_from_host": set(),
    "copy_from_vm": set(),
    "get_console_log": set(),
    "send_console": set(),
    "sleep": set(),
    "block": set(),
    "unblock": set(),
}
ATTRIBUTES = {"connected", "booted", "state_dir", "name"}
REQUIRED = {"wait_for_console_text": "timeout"}
# driver.py (Driver.test_symbols, create_machine).
DRIVER = {"start_all": set(), "join_all": set(), "subtest": set(), "create_machine": {"name", "keep_vm_state"}}

def check(script, flakes, nodes):
    tree = ast.parse(script)
    machines = set(nodes)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "create_machine"):
            machines.update(t.id for t in node.targets if isinstance(t, ast.Name))
    findings, early_reboot_starts, start_all = [], [], None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "start_all":
            start_all = node.lineno if start_all is None else min(start_all, node.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in machines:
            if node.attr not in METHODS and node.attr not in ATTRIBUTES:
                findings.append(f"line {node.lineno}: {node.value.id}.{node.attr} is not in the driver")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        kwargs = {k.arg for k in node.keywords}
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in machines:
            allowed = METHODS.get(f.attr)
            if allowed is None:
                continue
            for k in kwargs - allowed:
                findings.append(f"line {node.lineno}: {f.value.id}.{f.attr}() has no argument {k}")
            if f.attr in REQUIRED and REQUIRED[f.attr] not in kwargs:
                findings.append(f"line {node.lineno}: {f.value.id}.{f.attr}() without {REQUIRED[f.attr]}= waits forever")
            reboot = [k for k in node.keywords if k.arg == "allow_reboot"]
            if f.attr == "start" and reboot and isinstance(reboot[0].value, ast.Constant) and reboot[0].value.value is True:
                if start_all is None or node.lineno < start_all:
                    early_reboot_starts.append(f.value.id)
                else:
                    findings.append(f"line {node.lineno}: {f.value.id}.start(allow_reboot=True) after start_all() does nothing")
        elif isinstance(f, ast.Name) and f.id in DRIVER:
            for k in kwargs - DRIVER[f.id]:
                findings.append(f"line {node.lineno}: {f.id}() has no argument {k}")
        elif isinstance(f, ast.Name) and f.id == "commit" and len(node.args) >= 2:
            flake = node.args[1]
            if isinstance(flake, ast.Constant) and flake.value not in flakes:
                findings.append(f"line {node.lineno}: commit() of {flake.value!r}, which is no fixture flake of this test")
    return {"findings": findings, "reboot_starts": early_reboot_starts}

tests = json.load(sys.stdin)
print(json.dumps({name: check(t["script"], t["flakes"], t["nodes"]) for name, t in tests.items()}))
"#;

/// vm-tests/default.nix: test name -> file.
fn test_files(dir: &Path) -> BTreeMap<String, String> {
    let listing = fs::read_to_string(dir.join("default.nix")).unwrap();
    listing
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" = call ./")?;
            Some((name.to_owned(), rest.trim_end_matches(';').to_owned()))
        })
        .collect()
}

/// The names after `variants.` in a test file, and v1 (mkTest's baseline).
fn variants(source: &str) -> Vec<String> {
    let mut names = vec!["v1".to_owned()];
    for (i, _) in source.match_indices("variants.") {
        let name: String = source[i + "variants.".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[test]
fn vm_test_scripts_use_only_what_the_nixos_test_driver_has() {
    let Some(nixpkgs) = nixpkgs::locate() else {
        return;
    };
    let lib = nixpkgs.path().display().to_string();
    let dir = nixpkgs::manifest_dir().join("vm-tests");
    let files = test_files(&dir);
    assert!(files.len() >= 9, "vm-tests/default.nix lists {files:?}");
    let sources: BTreeMap<&String, String> = files
        .iter()
        .map(|(name, file)| (name, fs::read_to_string(dir.join(file)).unwrap()))
        .collect();
    let wanted: BTreeMap<&String, Vec<String>> =
        sources.iter().map(|(n, s)| (*n, variants(s))).collect();
    let expr = nixpkgs::manifest_dir().join("nix/tests/vm-scripts.nix");
    let out = nixpkgs::nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        expr.to_str().unwrap(),
        "--argstr",
        "subset",
        &lib,
        "--argstr",
        "variants",
        &serde_json::to_string(&wanted).unwrap(),
    ]);
    let mut scripts: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        scripts.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    for (name, test) in &mut scripts {
        // The nodes of the test: mkTest's two, or the provisioner of vm-netboot.
        let nodes = if sources[name].contains("mkTest") {
            serde_json::json!(["machine", "server"])
        } else {
            serde_json::json!(["provisioner"])
        };
        test["nodes"] = nodes;
    }

    let mut python = Command::new("python3")
        .args(["-c", CHECKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&scripts).unwrap().as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the VM test scripts do not parse:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();

    let mut problems = Vec::new();
    for (name, result) in &results {
        for finding in result["findings"].as_array().unwrap() {
            problems.push(format!("{name}: {}", finding.as_str().unwrap()));
        }
        // pullnix reboots the machine in boot mode ("boot", or "auto" with a kernel change).
        let reboots = sources[name].contains("switch.mode = \"auto\"")
            || sources[name].contains("switch.mode = \"boot\"");
        let started = result["reboot_starts"]
            .as_array()
            .unwrap()
            .contains(&Value::from("machine"));
        // Refused by an assertion when systemd runs stage 1, the default on recent nixpkgs.
        if sources[name]
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("boot.initrd.preLVMCommands"))
        {
            problems.push(format!(
                "{name}: boot.initrd.preLVMCommands does not exist with systemd in stage 1"
            ));
        }
        if reboots && !started {
            problems.push(format!(
                "{name}: pullnix reboots the machine, but it is not started with \
                 machine.start(allow_reboot=True) before start_all() (qemu -no-reboot)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

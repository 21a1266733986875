//! The NixOS module's unit mapping (`nix/unit-options.nix` over `nix/units.nix`), evaluated by
//! the real `nix-instantiate` without nixpkgs. The module passes exactly these attrsets to
//! `systemd.services` / `systemd.timers`, so checking them here checks what NixOS renders
//! (option semantics: nixpkgs nixos/lib/systemd-unit-options.nix and systemd-lib.nix).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn eval() -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/tests/eval-units.nix");
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(&file)
        .output()
        .expect("cannot run nix-instantiate (README: Testing)");
    assert!(
        out.status.success(),
        "nix-instantiate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let v = eval();
    for set in ["plain", "counted"] {
        // All three: a restarted boot-check would wait for the lock the switching sync holds
        // while the switch waits for boot-check (found under a real systemd, tests/systemd.rs).
        for name in ["pullnix", "pullnix-confirm", "pullnix-boot-check"] {
            let s = &v[set]["services"][name];
            // NixOS writes X-RestartIfChanged=false itself for restartIfChanged = false; the raw
            // directive must not also be in unitConfig (it would be written twice).
            assert_eq!(
                s["restartIfChanged"],
                Value::Bool(false),
                "{set}.{name}: {s}"
            );
            assert!(s["unitConfig"].get("X-RestartIfChanged").is_none(), "{s}");
            // X-StopOnRemoval has no NixOS option: it stays a raw unit directive.
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
    let all = eval();
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
    // A oneshot: its start job ends with the verdict (what boot-complete.target waits for).
    assert_eq!(confirm["serviceConfig"]["Type"], "oneshot");
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
    let v = eval();
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
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
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
    let v = eval();
    let rendered = v["rendered"].as_object().unwrap();
    // render-units.nix uses the defaults of units.nix; compare against an evaluation with them.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/units.nix");
    let expr = format!(
        "import {}/nix/unit-options.nix (import {} {{ pullnix = \"/nix/store/00000000000000000000000000000000-pullnix/bin/pullnix\"; configFile = \"/nix/store/00000000000000000000000000000000-pullnix.toml\"; }})",
        env!("CARGO_MANIFEST_DIR"),
        file.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        let unit = parse_unit(text.as_str().unwrap());
        let mut carried = 0;
        for (section, directives) in &unit {
            for (key, vals) in directives {
                let found: Vec<String> = match (section.as_str(), key.as_str()) {
                    ("Unit", "Description") => values(&o["description"]),
                    ("Unit", "X-RestartIfChanged") => {
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

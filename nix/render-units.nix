# Renders nix/units.nix into unit files without nixpkgs:
#
#   nix-instantiate --eval --strict --json nix/render-units.nix \
#     --argstr pullnix /usr/local/bin/pullnix --argstr configFile /etc/pullnix/config.toml
#
# prints {"pullnix.service": "<text>", ...}. Used by the systemd tests (tests/systemd.rs) to run the
# units the NixOS module installs under a real systemd.
{ pullnix, configFile, onBoot ? "1min", interval ? "5min", randomizedDelay ? "1min", accuracy ? "1min", confirmTimeout ? "300", watchdogSec ? "60", bootCounting ? "false" }:
let
  units = import ./units.nix {
    inherit pullnix configFile onBoot interval randomizedDelay accuracy;
    confirmTimeout = builtins.fromJSON confirmTimeout;
    watchdogSec = builtins.fromJSON watchdogSec;
    bootCounting = bootCounting == "true";
  };
  value = v:
    if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isInt v then toString v
    else v;
  line = name: v:
    if builtins.isList v then builtins.concatStringsSep "" (map (x: "${name}=${value x}\n") v)
    else "${name}=${value v}\n";
  section = title: attrs:
    if attrs == { } then ""
    else "[${title}]\n" + builtins.concatStringsSep "" (map (n: line n attrs.${n}) (builtins.attrNames attrs));
  render = kind: u:
    section "Unit" (u.unit or { })
    + section kind (u.${builtins.replaceStrings [ "S" "T" ] [ "s" "t" ] kind} or { })
    + section "Install" (u.install or { });
  named = suffix: kind: set:
    builtins.listToAttrs (map (n: { name = "${n}.${suffix}"; value = render kind set.${n}; }) (builtins.attrNames set));
in
named "service" "Service" units.services // named "timer" "Timer" units.timers

# The Python test scripts of vm-tests/, as the NixOS test driver would get them, without nixpkgs
# (tests/vm_scripts.rs checks them against the driver's methods):
#
#   nix-instantiate --eval --strict --json nix/tests/vm-scripts.nix \
#     --argstr subset ../shared/nixpkgs --argstr variants '{"deploy":["v1","v2"],...}'
#
# Only the real nixpkgs lib; pkgs is a stand-in whose runNixOSTest hands back its arguments, so
# each test's `testScript` can be called. Its `nodes` argument is the one thing the scripts
# read from the evaluated machines: the candidates, one stand-in toplevel per variant
# (`variants`, parsed from the test files by the caller). Returns, per test, the script and
# the names FLAKES (the fixture flakes the script commits) holds.
{
  subset,
  variants,
}:
let
  lib = import (subset + "/lib");
  system = "x86_64-linux";
  standIn =
    name:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [
        "-c"
        "exit 1"
      ];
    };
  pkgs =
    lib.genAttrs [
      "bash"
      "coreutils"
      "curl"
      "e2fsprogs"
      "git"
      "parted"
      "python3"
      "qemu_test"
      "systemd"
      "util-linux"
    ] (name: standIn "${name}-stand-in")
    // {
      inherit lib;
      stdenv.hostPlatform.system = system;
      writeText = name: text: standIn name // { inherit text; };
      writeShellScript = name: _: standIn name;
      # Only what the test files read at their top level: the option tree (does this nixpkgs
      # have boot counting? yes) and a system's toplevel.
      nixos = _: {
        options.boot.loader.systemd-boot.bootCounting = { };
        config.system.build.toplevel = standIn "nixos-system-stand-in";
      };
      testers.runNixOSTest = args: args;
    };
  self = { };
  tests = import ../../vm-tests { inherit pkgs self; };
  inherit (import ../../vm-tests/lib.nix { inherit pkgs self; }) rawFlakes;
  wanted = builtins.fromJSON variants;

  script =
    name: test:
    let
      variantsOf = wanted.${name} or [ ];
      nodes.machine.pullnixTest.candidates = lib.genAttrs variantsOf (v: standIn "nixos-system-${v}");
    in
    {
      script = if builtins.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
      flakes = variantsOf ++ lib.attrNames rawFlakes;
    };
in
lib.mapAttrs script tests

# Evaluates the NixOS modules nix/module.nix (services.pullnix) and nix/netboot.nix
# (pullnix.installer) with the real module system of nixpkgs' lib, the real `assertions` module
# and the real pkgs.formats.toml (the nixpkgs subset in ../shared/nixpkgs), for tests/nix_eval.rs:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix \
#     --arg nixpkgs ../shared/nixpkgs --arg which '"module"' --arg configuration '{ … }'
#
# prints { failed = [ messages of failing assertions ]; warnings = [ … ]; repo = settings.repo }.
#
# Declared by hand (not in the nixpkgs subset): the options of other NixOS modules that these
# two read or define (host name, systemd-boot, nix, systemd, environment, openssh, users), with
# permissive types; packages are stub derivations that are never built.
{
  nixpkgs,
  which ? "module",
  configuration ? { },
}:
let
  lib = import (nixpkgs + "/lib");
  stub =
    name:
    derivation {
      inherit name;
      system = "x86_64-linux";
      builder = "/bin/sh";
    }
    // {
      meta.mainProgram = name;
    };
  pkgs = {
    formats = import (nixpkgs + "/pkgs/pkgs-lib/formats-toml-excerpt.nix") { inherit lib pkgs; };
    writeText = name: text: builtins.toFile name text;
    writeShellScript = name: text: builtins.toFile name text;
    callPackage = _: _: stub "pullnix";
  }
  // lib.genAttrs [
    "pullnix"
    "vulnix"
    "git"
    "openssh"
    "coreutils"
    "curl"
    "util-linux"
  ] stub;
  anything = lib.mkOption {
    type = lib.types.anything;
    default = { };
  };
  others = {
    options = {
      networking.hostName = lib.mkOption {
        type = lib.types.str;
        default = "edge-01";
      };
      networking.proxy.envVars = anything;
      boot.loader.systemd-boot.enable = lib.mkOption {
        type = lib.types.bool;
        default = false;
      };
      system.switch.enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
      };
      nix.package = lib.mkOption { default = stub "nix"; };
      nix.envVars = anything;
      nix.settings = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
      systemd.package = lib.mkOption { default = stub "systemd"; };
      systemd.services = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
      systemd.timers = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
      environment.systemPackages = lib.mkOption {
        type = lib.types.listOf lib.types.anything;
        default = [ ];
      };
      environment.etc = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
      services.openssh = anything;
      users.users = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
    };
  };
  eval = lib.evalModules {
    modules = [
      others
      (nixpkgs + "/nixos/modules/misc/assertions.nix")
      (if which == "module" then ../module.nix else ../netboot.nix)
      configuration
    ];
    specialArgs = {
      inherit pkgs;
      modulesPath = ./modules;
    };
  };
  config = eval.config;
in
{
  failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  repo =
    if which == "module" then
      config.services.pullnix.settings.repo
    else
      config.pullnix.installer.settings.repo;
}

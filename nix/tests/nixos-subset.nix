# The NixOS that nix/tests/nixos.nix evaluates the pullnix modules in when only the nixpkgs
# subset of ../shared/nixpkgs is at hand (with a whole nixpkgs it uses
# nixos/lib/eval-config.nix instead, and nothing of this file).
#
# REAL, unchanged nixpkgs code, from the subset:
#   lib/                                         the module system (evalModules), option types,
#                                                mkPackageOption, cleanSourceWith, callPackageWith
#   nixos/lib/systemd-lib.nix                    serviceToUnit/timerToUnit (how NixOS writes unit
#                                                files) and the unit submodules' own config
#                                                (name, unitConfig from after/wants/..., PATH)
#   nixos/lib/systemd-types.nix                  the types of systemd.services / systemd.timers
#   nixos/lib/systemd-unit-options.nix           the unit options (a 2023 copy; it calls
#                                                lib.mdDoc, removed from lib since, so mdDoc is
#                                                given back to it as the identity)
#   nixos/modules/misc/assertions.nix            `assertions`, `warnings`
#   nixos/modules/services/networking/pixiecore.nix
#   pkgs/pkgs-lib/formats-toml-excerpt.nix       pkgs.formats.json / pkgs.formats.toml
#
# DECLARED HERE BY HAND, each with the type nixpkgs gives it (some with fewer sub-options):
#   * the options the pullnix modules read or set that live in NixOS modules outside the subset:
#     environment.etc / systemPackages, networking.hostName / firewall, nix.package / settings,
#     boot.kernelParams / loader.systemd-boot.enable, system.switch.enable / build /
#     boot.loader.kernelFile, users, services.openssh, systemd.package / globalEnvironment /
#     enableStrictShellChecks, nixpkgs.overlays, meta;
#   * the five unit options systemd-lib.nix reads that the 2023 option file predates (name,
#     upholds, upheldBy, enableStrictShellChecks, notSocketActivated);
#   * the glue systemd.nix would be: `units` renders every service and timer with the real
#     serviceToUnit / timerToUnit; `utils.systemdUtils` as nixos/lib/utils.nix builds it;
#   * pkgs: packages are stand-in derivations (real `derivation`s, so types.package, getExe,
#     string context and drvPath behave, but never built); runCommand / writeText are plain
#     derivations whose attributes (e.g. the JSON that pkgs.formats.toml converts) can be read
#     back; callPackage is lib.callPackageWith; `nixos` evaluates a module with this file;
#   * stand-in-modules/: modulesPath, i.e. the netboot-minimal profile nix/netboot.nix imports.
#
# boot.loader.systemd-boot.bootCounting is declared only by the configurations that ask for it
# (`bootCountingOption` below): the pullnix module must work with and without it.
{
  lib,
  subset,
  system,
}:

let
  inherit (lib) mkOption types;

  # A package that evaluates like one and is never built.
  standIn =
    name: attrs:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [
        "-c"
        "echo '${name}: a stand-in of tests/nix_eval.rs, not buildable' >&2; exit 1"
      ];
    }
    // attrs;

  tool =
    name:
    standIn "${name}-stand-in" {
      pname = name;
      meta.mainProgram = name;
    };

  # runCommand as a bare derivation: every attribute stays readable (`value` of a
  # pkgs.formats.toml file is the JSON its builder would convert).
  runCommand =
    name: env: buildCommand:
    derivation (
      removeAttrs env [
        "passthru"
        "meta"
      ]
      // {
        inherit name system buildCommand;
        builder = "/bin/sh";
        args = [
          "-c"
          buildCommand
        ];
      }
    )
    // (env.passthru or { })
    // {
      meta = env.meta or { };
    };

  basePkgs =
    pkgs:
    lib.genAttrs [
      "bash"
      "coreutils"
      "curl"
      "findutils"
      "git"
      "gnugrep"
      "gnused"
      "jq"
      "nix"
      "openssh"
      "pixiecore"
      "remarshal"
      "systemd"
      "util-linux"
      "vulnix"
    ] tool
    // {
      inherit lib runCommand;
      callPackage = lib.callPackageWith pkgs;
      formats = import (subset + "/pkgs/pkgs-lib/formats-toml-excerpt.nix") { inherit lib pkgs; };
      writeText =
        name: text:
        runCommand name {
          inherit text;
          passAsFile = [ "text" ];
        } "cp \"$textPath\" \"$out\"";
      writeShellScript =
        name: text:
        runCommand name {
          inherit text;
          passAsFile = [ "text" ];
        } "cp \"$textPath\" \"$out\"; chmod +x \"$out\"";
      # What nix/package.nix hands to buildRustPackage, as a stand-in package (its source is
      # built for real by tests/package_source.rs).
      rustPlatform.buildRustPackage =
        args:
        let
          a = if builtins.isFunction args then lib.fix args else args;
        in
        standIn "${a.pname}-${a.version}" { inherit (a) pname version meta; };
      pkg-config = tool "pkg-config";
      openssl = tool "openssl";
      zlib = tool "zlib";
      # pkgs.nixos (nixpkgs pkgs/top-level/all-packages.nix): a NixOS system of one module.
      nixos = module: (eval [ module ]).config.system.build // eval [ module ];
    };

  mkPkgs = overlays: lib.fix (lib.foldl' (lib.flip lib.extends) basePkgs overlays);

  # The unit options newer than the 2023 systemd-unit-options.nix that systemd-lib.nix reads.
  # Declared a second time next to the real type; the module system merges the submodules.
  newerUnitOptions =
    { utils, ... }:
    let
      unit = {
        options = {
          name = mkOption {
            type = types.str;
            description = "Name of the unit file, with its suffix (set by systemd-lib.nix).";
          };
          upholds = mkOption {
            type = types.listOf utils.systemdUtils.lib.unitNameType;
            default = [ ];
            description = "Upholds= of the unit.";
          };
          upheldBy = mkOption {
            type = types.listOf utils.systemdUtils.lib.unitNameType;
            default = [ ];
            description = "Units that uphold this one (.upholds symlinks).";
          };
        };
      };
      service = {
        options = {
          enableStrictShellChecks = mkOption {
            type = types.bool;
            description = "Check the unit's scripts with shellcheck (default from systemd-lib.nix).";
          };
          notSocketActivated = mkOption {
            type = types.bool;
            default = false;
            description = "Writes X-NotSocketActivated=true.";
          };
        };
      };
    in
    {
      options.systemd.services = mkOption {
        type = types.attrsOf (
          types.submodule [
            unit
            service
          ]
        );
      };
      options.systemd.timers = mkOption { type = types.attrsOf (types.submodule unit); };
    };

  # (pkgs from the enclosing module: submodules do not get the system's module arguments.)
  etcEntry =
    pkgs:
    {
      name,
      config,
      options,
      ...
    }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether the file is linked.";
        };
        target = mkOption {
          type = types.str;
          description = "Path below /etc (the attribute name).";
        };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
          description = "Contents of the file.";
        };
        source = mkOption {
          type = types.path;
          description = "File to link.";
        };
        mode = mkOption {
          type = types.str;
          default = "symlink";
          description = "symlink, or a mode for a copy.";
        };
      };
      config = {
        target = lib.mkDefault name;
        source = lib.mkIf (config.text != null) (
          lib.mkDerivedConfig options.text (pkgs.writeText "etc-${baseNameOf name}")
        );
      };
    };

  user = {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
        description = "GECOS field.";
      };
      group = mkOption {
        type = types.str;
        default = "";
        description = "Primary group.";
      };
      isSystemUser = mkOption {
        type = types.bool;
        default = false;
        description = "A system user.";
      };
      openssh.authorizedKeys.keys = mkOption {
        type = types.listOf types.singleLineStr;
        default = [ ];
        description = "Keys allowed to log in.";
      };
    };
  };

  declared =
    {
      config,
      pkgs,
      utils,
      ...
    }:
    {
      options = {
        nixpkgs.overlays = mkOption {
          type = types.listOf types.raw;
          default = [ ];
          description = "Overlays applied to pkgs.";
        };
        meta = mkOption {
          type = types.lazyAttrsOf types.raw;
          default = { };
          description = "Module metadata (maintainers, ...); never evaluated here.";
        };

        systemd.package = mkOption {
          type = types.package;
          default = pkgs.systemd;
          description = "The systemd package.";
        };
        systemd.globalEnvironment = mkOption {
          type = types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          );
          default = { };
          description = "Environment of every unit.";
        };
        systemd.enableStrictShellChecks = mkOption {
          type = types.bool;
          default = false;
          description = "Default of the units' enableStrictShellChecks.";
        };
        systemd.services = mkOption {
          type = utils.systemdUtils.types.services;
          default = { };
          description = "Service units.";
        };
        systemd.timers = mkOption {
          type = utils.systemdUtils.types.timers;
          default = { };
          description = "Timer units.";
        };

        environment.etc = mkOption {
          type = types.attrsOf (types.submodule (etcEntry pkgs));
          default = { };
          description = "Files in /etc.";
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
          description = "Packages in the system profile.";
        };

        networking.hostName = mkOption {
          type = types.str;
          default = "nixos";
          description = "Host name.";
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
          description = "Open TCP ports.";
        };
        networking.firewall.allowedUDPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
          description = "Open UDP ports.";
        };

        nix.package = mkOption {
          type = types.package;
          default = pkgs.nix;
          description = "The Nix package.";
        };
        nix.settings = mkOption {
          type = types.submodule {
            freeformType = types.attrsOf (
              types.oneOf [
                types.bool
                types.int
                types.str
                (types.listOf types.str)
              ]
            );
            options.experimental-features = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "nix.conf experimental-features.";
            };
          };
          default = { };
          description = "nix.conf.";
        };

        boot.kernelParams = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Kernel command line.";
        };
        boot.loader.systemd-boot.enable = mkOption {
          type = types.bool;
          default = false;
          description = "systemd-boot as the boot loader.";
        };

        system.switch.enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether the system has switch-to-configuration.";
        };
        system.build = mkOption {
          type = types.lazyAttrsOf types.unspecified;
          default = { };
          description = "Build products of the system.";
        };
        system.boot.loader.kernelFile = mkOption {
          type = types.str;
          default = "bzImage";
          description = "Name of the kernel file.";
        };

        users.users = mkOption {
          type = types.attrsOf (types.submodule user);
          default = { };
          description = "Users.";
        };
        users.groups = mkOption {
          type = types.attrsOf (types.submodule { });
          default = { };
          description = "Groups.";
        };

        services.openssh.enable = mkOption {
          type = types.bool;
          default = false;
          description = "sshd.";
        };
        services.openssh.settings = mkOption {
          type = types.submodule {
            freeformType = types.attrsOf (
              types.nullOr (
                types.oneOf [
                  types.bool
                  types.int
                  types.str
                ]
              )
            );
          };
          default = { };
          description = "sshd_config.";
        };
      };

      # Like nixos/modules/misc/nixpkgs.nix and extra-arguments.nix: pkgs with the configured
      # overlays, and utils.systemdUtils as nixos/lib/utils.nix builds it.
      config._module.args = {
        pkgs = mkPkgs config.nixpkgs.overlays;
        utils = rec {
          systemdUtils = {
            lib = import (subset + "/nixos/lib/systemd-lib.nix") {
              inherit
                lib
                config
                pkgs
                utils
                ;
            };
            unitOptions = import (subset + "/nixos/lib/systemd-unit-options.nix") {
              lib = lib // {
                mdDoc = text: text;
              };
              inherit systemdUtils;
            };
            types = import (subset + "/nixos/lib/systemd-types.nix") {
              inherit lib systemdUtils pkgs;
            };
          };
        };
      };
    };

  eval =
    modules:
    lib.evalModules {
      specialArgs.modulesPath = ./stand-in-modules;
      modules = [
        declared
        newerUnitOptions
        (subset + "/nixos/modules/misc/assertions.nix")
        (subset + "/nixos/modules/services/networking/pixiecore.nix")
      ]
      ++ modules;
    };
in
{
  inherit eval;

  # The unit files of a system, by file name, as systemd.nix makes them: the real
  # serviceToUnit / timerToUnit of every service and timer.
  units =
    os:
    let
      inherit (os._module.args.utils.systemdUtils.lib) serviceToUnit timerToUnit;
      byName = toUnit: lib.mapAttrs' (_: def: lib.nameValuePair def.name (toUnit def));
    in
    byName serviceToUnit os.config.systemd.services // byName timerToUnit os.config.systemd.timers;

  # boot.loader.systemd-boot.bootCounting as recent nixpkgs declares it (boot-counting.md).
  bootCountingOption = {
    options.boot.loader.systemd-boot.bootCounting = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Boot counting of systemd-boot entries.";
      };
      tries = mkOption {
        type = types.ints.positive;
        default = 3;
        description = "Tries of a new entry.";
      };
    };
  };
}

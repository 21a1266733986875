# NixOS module: services.pullnix-provisioner (README "Provisioning").
#
# The machine that network-boots new hosts: nixpkgs' services.pixiecore in API mode
# (nixos/modules/services/networking/pixiecore.nix) asks `pullnix pxe-api` which MAC addresses
# to boot and with what. The hosts file pxe-api reads is rendered from `hosts` with
# pkgs.formats.toml, in the schema of src/hosts.rs: `[defaults]` (kernel, initrd, cmdline) and
# `[hosts.<name>]` (mac, flake_attr, and per-host kernel/initrd/cmdline overrides).
#
# `[defaults]` is the netboot installer of nix/netboot.nix: `file://` URLs of its kernel and
# initrd (pixiecore reads them from this machine's store and serves them itself; they are in
# this system's closure because the hosts file refers to them) and a command line with
# `init=<installer>/init`, the installer's kernel parameters and `pullnix.host={host}
# pullnix.mac={mac}`, which pxe-api fills in per machine.
#
# pixiecore only answers PXE clients (proxyDHCP); an ordinary DHCP server must hand out
# addresses on the same network. `dhcpNoBind` (default here) lets both run on one machine.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkOption
    mkEnableOption
    mkPackageOption
    mkIf
    mkDefault
    types
    literalExpression
    ;

  cfg = config.services.pullnix-provisioner;
  pixie = config.services.pixiecore;

  toml = pkgs.formats.toml { };

  # The installer image, evaluated with this machine's nixpkgs.
  installer =
    (pkgs.nixos {
      imports = [
        ./netboot.nix
        cfg.installer
      ];
    }).config;
  installerBuild = installer.system.build;

  hostType = types.submodule (
    { name, ... }:
    {
      # Closed, like pxe-api's own parser (deny_unknown_fields): a typo fails evaluation.
      options = {
        mac = mkOption {
          type = types.str;
          example = "52:54:00:12:34:56";
          description = "MAC address: aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff.";
        };
        flake_attr = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "`nixosConfigurations.<flake_attr>` to install (null: the attribute name, ${name}).";
        };
        kernel = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Kernel URL for this host (null: the installer's).";
        };
        initrd = mkOption {
          type = types.nullOr (types.listOf types.str);
          default = null;
          description = "Initrd URLs for this host (null: the installer's).";
        };
        cmdline = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Kernel command line for this host (null: the default); `{host}`/`{mac}` are filled in.";
        };
      };
    }
  );

  defaults = {
    kernel = "file://${cfg.netboot.kernel}";
    initrd = map (i: "file://${i}") cfg.netboot.initrd;
    cmdline = lib.concatStringsSep " " (
      lib.filter (s: s != "") [
        cfg.netboot.cmdline
        "pullnix.host={host} pullnix.mac={mac}"
        cfg.extraCmdline
      ]
    );
  };

  clean = lib.filterAttrsRecursive (_: v: v != null);
  hostsFile = toml.generate "pullnix-provisioning-hosts.toml" {
    inherit defaults;
    hosts = lib.mapAttrs (_: clean) cfg.hosts;
  };

  # MAC addresses as pxe-api compares them: 12 lower-case hex digits.
  normalMac = mac: lib.toLower (lib.replaceStrings [ ":" "-" ] [ "" "" ] mac);
  validMac =
    mac:
    builtins.match "([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}|([0-9a-fA-F]{2}-){5}[0-9a-fA-F]{2}|[0-9a-fA-F]{12}" mac
    != null;
  badMacs = lib.filterAttrs (_: h: !validMac h.mac) cfg.hosts;
  macOwners = lib.foldlAttrs (
    acc: name: h:
    acc // { ${normalMac h.mac} = (acc.${normalMac h.mac} or [ ]) ++ [ name ]; }
  ) { } cfg.hosts;
  duplicateMacs = lib.filterAttrs (_: names: lib.length names > 1) macOwners;
  badAttrs = lib.filterAttrs (
    _: h: h.flake_attr != null && builtins.match "[^[:space:]]+" h.flake_attr == null
  ) cfg.hosts;

  listenAddr = "127.0.0.1:${toString cfg.port}";
in
{
  options.services.pullnix-provisioner = {
    enable = mkEnableOption "network installation of the hosts of `hosts` (pixiecore in API mode + pullnix pxe-api)";

    package = mkPackageOption pkgs "pullnix" { };

    hosts = mkOption {
      type = types.attrsOf hostType;
      default = { };
      example = literalExpression ''
        {
          edge-01.mac = "52:54:00:12:34:56";
          edge-02 = { mac = "52-54-00-12-34-57"; flake_attr = "edge-two"; };
        }
      '';
      description = ''
        Machines to network-boot, by name: the `[hosts.<name>]` tables of pullnix's hosts file
        (README "Provisioning"). Any other MAC address is ignored by pixiecore.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 8080;
      description = "Port of `pullnix pxe-api` on 127.0.0.1 (pixiecore's apiServer).";
    };

    installer = mkOption {
      type = types.deferredModule;
      default = { };
      example = literalExpression ''
        {
          pullnix.installer.repo = "ssh://git@git.example.org/fleet/nixos.git";
          pullnix.installer.authorizedKeys = [ "ssh-ed25519 AAAA… admin@example.org" ];
        }
      '';
      description = ''
        NixOS module for the installer image (options `pullnix.installer.*` of nix/netboot.nix),
        which the defaults of `netboot` are built from.
      '';
    };

    netboot = {
      kernel = mkOption {
        type = types.str;
        default = "${installerBuild.kernel}/${installer.system.boot.loader.kernelFile}";
        defaultText = literalExpression ''"''${installer.system.build.kernel}/bzImage"'';
        description = "Kernel image served to every host (a path on this machine).";
      };
      initrd = mkOption {
        type = types.listOf types.str;
        default = [ "${installerBuild.netbootRamdisk}/initrd" ];
        defaultText = literalExpression ''[ "''${installer.system.build.netbootRamdisk}/initrd" ]'';
        description = "Initrds served to every host (paths on this machine).";
      };
      cmdline = mkOption {
        type = types.str;
        default = "init=${installerBuild.toplevel}/init ${toString installer.boot.kernelParams}";
        defaultText = literalExpression ''"init=''${installer.system.build.toplevel}/init ''${toString installer.boot.kernelParams}"'';
        description = "Kernel command line of the installer; `pullnix.host={host} pullnix.mac={mac}` is appended.";
      };
    };

    extraCmdline = mkOption {
      type = types.str;
      default = "";
      example = "pullnix.repo=ssh://git@git.example.org/fleet/nixos.git pullnix.branch=main";
      description = "Appended to the default command line (e.g. `pullnix.repo=` for a generic installer).";
    };

    hostsFile = mkOption {
      type = types.path;
      readOnly = true;
      default = hostsFile;
      defaultText = literalExpression "the rendered hosts file";
      description = "The rendered hosts file (also at /etc/pullnix/provisioning-hosts.toml, for `pullnix wake --hosts`).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open pixiecore's ports (DHCP 67, TFTP 69, proxyDHCP 4011, HTTP port and status port).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = badMacs == { };
        message = "services.pullnix-provisioner.hosts: not a MAC address in ${lib.concatStringsSep ", " (lib.mapAttrsToList (n: h: "${n}.mac = \"${h.mac}\"") badMacs)}; write aa:bb:cc:dd:ee:ff.";
      }
      {
        assertion = duplicateMacs == { };
        message = "services.pullnix-provisioner.hosts: one MAC address for several hosts (${lib.concatStringsSep "; " (lib.mapAttrsToList (_: ns: lib.concatStringsSep ", " ns) duplicateMacs)}); each machine needs its own entry.";
      }
      {
        assertion = badAttrs == { };
        message = "services.pullnix-provisioner.hosts: flake_attr with blanks in ${lib.concatStringsSep ", " (lib.attrNames badAttrs)}; use the name of a nixosConfigurations attribute.";
      }
      {
        assertion = cfg.port != pixie.port && cfg.port != pixie.statusPort;
        message = "services.pullnix-provisioner.port (${toString cfg.port}) is also pixiecore's port or statusPort; pick another port for pxe-api (e.g. 8080) or move services.pixiecore.port.";
      }
    ];

    warnings = lib.optional (cfg.hosts == { }) "services.pullnix-provisioner.hosts is empty: no machine will be network-booted.";

    environment.systemPackages = [ cfg.package ];
    environment.etc."pullnix/provisioning-hosts.toml".source = hostsFile;

    services.pixiecore = {
      enable = true;
      mode = "api";
      apiServer = "http://${listenAddr}";
      dhcpNoBind = mkDefault true;
      openFirewall = cfg.openFirewall;
    };
    # nixpkgs' pixiecore module opens 4011 for TCP only; proxyDHCP is UDP.
    networking.firewall.allowedUDPPorts = mkIf cfg.openFirewall [ 4011 ];

    systemd.services.pixiecore = {
      wants = [ "pullnix-pxe-api.service" ];
      after = [ "pullnix-pxe-api.service" ];
    };

    systemd.services.pullnix-pxe-api = {
      description = "pullnix pxe-api: which machines pixiecore network-boots";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      # A new hosts file is a new ExecStart, so a switch restarts the service (it reads the file
      # once at start).
      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} pxe-api --hosts ${hostsFile} --listen ${listenAddr}";
        Restart = "always";
        RestartSec = 2;
        DynamicUser = true;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        CapabilityBoundingSet = "";
      };
    };
  };
}

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
# pxe-api answers pixiecore's boot requests on 127.0.0.1:`bootPort` only (pixiecore's
# apiServer): with installOnce those answers carry every machine's report token.
#
# Install once (`installOnce`, the default): the command line also carries
# `pullnix.report={report}`, and pxe-api runs with `--state /var/lib/pullnix-provisioner` and
# `--public-url` (`publicUrl`), so `{report}` becomes `<publicUrl>/v1/installed/<mac>?token=…`.
# The installer's `pullnix install` POSTs there when it is done, and from then on pxe-api answers
# 404 for that MAC: pixiecore ignores the machine and its firmware boots from disk. For that,
# pxe-api has a second listener, for reports only, where the installers reach it
# (`--report-listen`: `listenAddress`, port `port`; the only port `openFirewall` opens for it).
# `pullnix pxe-api installed|forget --state /var/lib/pullnix-provisioner` list the installed
# machines and let one install again.
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
          description = "Kernel command line for this host (null: the default); `{host}`/`{mac}` are filled in, and `{report}` by pxe-api (keep `pullnix.report={report}` in it with `installOnce`).";
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
        (lib.optionalString cfg.installOnce "pullnix.report={report}")
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
  # What pxe-api installs for a host (src/hosts.rs): flake_attr, or the host's name; neither may
  # be empty or hold white space.
  goodAttr = a: builtins.match "[^[:space:]]+" a != null;
  badAttrs = lib.filterAttrs (name: h: !goodAttr (if h.flake_attr != null then h.flake_attr else name)) cfg.hosts;
  badAttrText =
    name: h:
    let
      setIt = "set it to the name of a nixosConfigurations attribute of the fleet flake";
    in
    if h.flake_attr == null then
      "hosts.\"${name}\" has no flake_attr, and its name, which stands in for it, contains blanks: set flake_attr to the name of a nixosConfigurations attribute of the fleet flake"
    else if h.flake_attr == "" then
      "hosts.${name}.flake_attr is empty: ${
        lib.optionalString (goodAttr name) "remove it (the host's name, ${name}, is then used) or "
      }${setIt}"
    else
      "hosts.${name}.flake_attr = \"${h.flake_attr}\" contains blanks: ${setIt}";
  # A port to suggest in a remedy: one that none of `taken` uses (the default may be the clash).
  freePort = taken: lib.findFirst (p: !(lib.elem p taken)) 8083 [ 8080 8081 8082 ];

  # Where installers' reports go and pxe-api's state: see the header.
  stateDir = "/var/lib/pullnix-provisioner";

  shared = import ./lib.nix { inherit lib; };
  # listenAddress as pxe-api will parse and bind it (lib.nix): { v4 } / { v6 } or { error }.
  listen = shared.listenAddress cfg.listenAddress;
  listenOk = !(listen ? error);
  isLoopback = shared.isLoopbackAddress listen;
  isWildcard = shared.isWildcardAddress listen;
  # A host name the user may have meant, for the publicUrl of a remedy.
  hostName = if builtins.match "[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?" cfg.listenAddress != null then cfg.listenAddress else "10.0.0.1";
  # Binding a port below 1024 needs CAP_NET_BIND_SERVICE (capabilities(7);
  # net.ipv4.ip_unprivileged_port_start is 1024 by default), which pxe-api, a DynamicUser with
  # an empty bounding set, has only when it is granted.
  lowPort = (cfg.installOnce && cfg.port < 1024) || cfg.bootPort < 1024;
  # ADDRESS:PORT as pxe-api's --report-listen and URLs take it (IPv6 in brackets).
  hostPort = a: if lib.hasInfix ":" a then "[${a}]:${toString cfg.port}" else "${a}:${toString cfg.port}";
  listenAddr = hostPort cfg.listenAddress;
  # The boot listener: pixiecore runs on this machine, and nobody else may ask (pxe-api refuses
  # a non-loopback one while boot answers carry report tokens).
  bootAddr = "127.0.0.1:${toString cfg.bootPort}";
  reachable = !isLoopback;
  waitForAddress = cfg.installOnce && reachable && !isWildcard;

  # What pxe-api's --public-url accepts (src/pxe.rs): http(s)://, no blanks, query or fragment.
  validPublicUrl =
    u: builtins.match "https?://[^[:space:]?#\"/]+(/[^[:space:]?#\"]*)?" u != null;
  # `{report}` anywhere but in the default command line (which follows installOnce).
  reportIn = s: s != null && lib.hasInfix "{report}" s;
  reportHosts = lib.attrNames (lib.filterAttrs (_: h: reportIn h.cmdline) cfg.hosts);
  ownCmdlineHosts = lib.attrNames (
    lib.filterAttrs (_: h: h.cmdline != null && !reportIn h.cmdline) cfg.hosts
  );
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
      # Not 0: installers are told this port (publicUrl), so it cannot be an ephemeral one.
      type = types.ints.between 1 65535;
      default = 8080;
      description = "Port where installers report to `pullnix pxe-api` (with `installOnce`; on `listenAddress`).";
    };

    bootPort = mkOption {
      # Not 0: pixiecore is told this port (its apiServer).
      type = types.ints.between 1 65535;
      default = 8081;
      description = ''
        Port on 127.0.0.1 where `pullnix pxe-api` answers pixiecore's boot requests (pixiecore's
        apiServer). Never opened in the firewall: with `installOnce` the answers carry the report
        tokens of all hosts.
      '';
    };

    installOnce = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Boot each machine into the installer only until it has installed: the command line gets
        `pullnix.report={report}`, and pxe-api remembers in ${stateDir} which machines reported a
        finished install and answers 404 for them from then on, so their firmware falls through
        to the disk. Needs `publicUrl`. `pullnix pxe-api forget --state ${stateDir} --hosts
        /etc/pullnix/provisioning-hosts.toml HOST` lets a machine install again. false: every
        network boot of a listed machine installs it again (put the disk first in its boot order).
      '';
    };

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "10.0.0.1";
      description = ''
        Address where `pullnix pxe-api` takes installers' reports (with `installOnce`; nothing
        else is served there). The installers must reach it: this machine's address on the
        provisioning network (then `publicUrl` follows from it), or a wildcard.
      '';
    };

    publicUrl = mkOption {
      type = types.nullOr types.str;
      default =
        if listenOk && reachable && !isWildcard then "http://${listenAddr}" else null;
      defaultText = literalExpression ''"http://''${listenAddress}:''${toString port}" (null for a wildcard or loopback listenAddress, or one that is not an IP address)'';
      example = "http://10.0.0.1:8080";
      description = ''
        Base URL under which installers reach pxe-api (`--public-url`): `{report}` becomes
        `<publicUrl>/v1/installed/<mac>?token=…`. http:// or https://, no query.
      '';
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
        description = "Kernel command line of the installer; `pullnix.host={host} pullnix.mac={mac}` (and with `installOnce` `pullnix.report={report}`) is appended.";
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
      description = ''
        Open pixiecore's ports (DHCP 67, TFTP 69, proxyDHCP 4011, HTTP port and status port),
        and with `installOnce` pxe-api's `port` (TCP), where installers report.
      '';
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
        message = "services.pullnix-provisioner: ${lib.concatStringsSep "; " (lib.mapAttrsToList badAttrText badAttrs)} (pxe-api refuses the hosts file otherwise, and exits at every start).";
      }
      {
        assertion = cfg.port != pixie.port && cfg.port != pixie.statusPort;
        # The suggested port must be free itself (8080 is the default, and may be the clash).
        message = "services.pullnix-provisioner.port (${toString cfg.port}) is also pixiecore's port or statusPort; pick another port for pxe-api (e.g. ${
          toString (freePort [ pixie.port pixie.statusPort cfg.bootPort ])
        }) or move services.pixiecore.port.";
      }
      {
        assertion = cfg.bootPort != pixie.port && cfg.bootPort != pixie.statusPort && cfg.bootPort != cfg.port;
        message = "services.pullnix-provisioner.bootPort (${toString cfg.bootPort}) is also pixiecore's port or statusPort, or pxe-api's report port; pick another (e.g. ${
          toString (freePort [ pixie.port pixie.statusPort cfg.port ])
        }).";
      }
      {
        # pxe-api parses --report-listen with std's SocketAddr and exits 2 on anything else; under
        # Restart=always that is a restart every two seconds, forever.
        assertion = !cfg.installOnce || listenOk;
        message = ''
          services.pullnix-provisioner.listenAddress = "${cfg.listenAddress}" is ${listen.error or ""}.
          Use this machine's address on the provisioning network (e.g. "10.0.0.1" or "fd00::1"; publicUrl
          follows from it), or "0.0.0.0" (or "::") together with publicUrl = "http://${hostName}:${toString cfg.port}".
        '';
      }
      {
        # (A loopback or malformed listenAddress has an assertion of its own.)
        assertion = !cfg.installOnce || !reachable || !listenOk || cfg.publicUrl != null;
        message =
          if isWildcard then
            ''
              services.pullnix-provisioner.installOnce needs to know how installers reach pxe-api, which
              listens on every address ("${cfg.listenAddress}"): set publicUrl = "http://<this machine's address
              on the provisioning network>:${toString cfg.port}", or set listenAddress to that address (e.g.
              "10.0.0.1"; publicUrl follows), or installOnce = false (machines then reinstall on every
              network boot).
            ''
          else
            ''
              services.pullnix-provisioner.installOnce needs to know how installers reach pxe-api, and publicUrl
              is null: leave it unset (it then follows from listenAddress: "http://${listenAddr}"), or set it,
              or set installOnce = false (machines then reinstall on every network boot).
            '';
      }
      {
        assertion = !cfg.installOnce || reachable;
        message = ''
          services.pullnix-provisioner.listenAddress = "${cfg.listenAddress}" is a loopback address, which
          installers cannot reach, and they must report to pxe-api (installOnce): listen on this machine's
          address on the provisioning network (e.g. "10.0.0.1"; publicUrl follows${
            lib.optionalString (cfg.publicUrl != null) " unless set"
          }), or on "0.0.0.0"${
            lib.optionalString (cfg.publicUrl == null) " together with publicUrl = \"http://10.0.0.1:${toString cfg.port}\""
          }, or set installOnce = false.
        '';
      }
      {
        assertion = cfg.publicUrl == null || validPublicUrl cfg.publicUrl;
        message = ''services.pullnix-provisioner.publicUrl = "${toString cfg.publicUrl}" is not an http:// or https:// URL without blanks, query or fragment (e.g. "http://10.0.0.1:${toString cfg.port}").'';
      }
      {
        assertion = cfg.installOnce || (reportHosts == [ ] && !reportIn cfg.extraCmdline);
        message = ''
          services.pullnix-provisioner: {report} in ${
            lib.concatStringsSep ", " (
              map (n: "hosts.${n}.cmdline") reportHosts ++ lib.optional (reportIn cfg.extraCmdline) "extraCmdline"
            )
          } needs installOnce = true (pxe-api refuses {report} without --state and --public-url); remove it,
          or enable installOnce (with a listenAddress installers can reach).
        '';
      }
    ];

    warnings =
      lib.optional (cfg.hosts == { }) "services.pullnix-provisioner.hosts is empty: no machine will be network-booted."
      ++ lib.optional (cfg.installOnce && ownCmdlineHosts != [ ]) ''
        services.pullnix-provisioner: hosts with their own cmdline without pullnix.report={report}
        (${lib.concatStringsSep ", " ownCmdlineHosts}): their installers cannot report, so these machines
        install again on every network boot. Add pullnix.report={report} to those cmdlines.
      '';

    environment.systemPackages = [ cfg.package ];
    environment.etc."pullnix/provisioning-hosts.toml".source = hostsFile;

    services.pixiecore = {
      enable = true;
      mode = "api";
      apiServer = "http://${bootAddr}";
      dhcpNoBind = mkDefault true;
      openFirewall = cfg.openFirewall;
    };
    # proxyDHCP is UDP 4011. nixpkgs' pixiecore module opens it for UDP now; older revisions
    # opened 4011 for TCP only, so it is listed here as well (a duplicate port is harmless).
    networking.firewall.allowedUDPPorts = mkIf cfg.openFirewall [ 4011 ];
    # Installers report to pxe-api; its boot port stays closed.
    networking.firewall.allowedTCPPorts = mkIf (cfg.openFirewall && cfg.installOnce && reachable) [
      cfg.port
    ];

    systemd.services.pixiecore = {
      wants = [ "pullnix-pxe-api.service" ];
      after = [ "pullnix-pxe-api.service" ];
    };

    systemd.services.pullnix-pxe-api = {
      description = "pullnix pxe-api: which machines pixiecore network-boots";
      wantedBy = [ "multi-user.target" ];
      # A specific report address must be configured before pxe-api can bind it.
      wants = lib.optional waitForAddress "network-online.target";
      after = [ "network.target" ] ++ lib.optional waitForAddress "network-online.target";
      # Until the address is up, binding fails; keep retrying rather than give up after five.
      startLimitIntervalSec = 0;
      # A new hosts file is a new ExecStart, so a switch restarts the service (it reads the file
      # once at start).
      serviceConfig = {
        ExecStart = lib.escapeShellArgs (
          [
            (lib.getExe cfg.package)
            "pxe-api"
            "--hosts"
            "${hostsFile}"
            "--listen"
            bootAddr
          ]
          ++ lib.optionals cfg.installOnce [
            "--report-listen"
            listenAddr
            "--state"
            stateDir
            "--public-url"
            (toString cfg.publicUrl) # null only when the assertion above fails
          ]
        );
        # ${stateDir}: the report tokens and the installed machines (kept across restarts).
        StateDirectory = lib.mkIf cfg.installOnce "pullnix-provisioner";
        StateDirectoryMode = lib.mkIf cfg.installOnce "0700";
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
        # Nothing, or only what binding a port below 1024 takes (see lowPort).
        CapabilityBoundingSet = if lowPort then "CAP_NET_BIND_SERVICE" else "";
        AmbientCapabilities = lib.mkIf lowPort "CAP_NET_BIND_SERVICE";
      };
    };
  };
}

# Every NixOS module of pullnix, evaluated through the real module system (tests/nix_eval.rs):
#
#   nix-instantiate --eval --strict --json nix/tests/nixos.nix --argstr subset ../shared/nixpkgs \
#     --argstr readme AGENT.nix --argstr readmeProvisioner PROVISIONER.nix
#
# AGENT.nix and PROVISIONER.nix are the configurations of README.md ("A complete minimal
# configuration", and `services.pullnix-provisioner` of "A complete example"), cut out of the
# README by the test, so the README's examples are what is evaluated.
#
# With `--argstr subset`: lib.evalModules of the real nixpkgs lib over the subset of
# ../shared/nixpkgs, plus the options declared by hand in nixos-subset.nix (which says what is
# real and what is not). With `--argstr nixpkgs /path/to/nixpkgs` instead: nixpkgs'
# nixos/lib/eval-config.nix, i.e. all of NixOS, and nothing declared by hand.
#
# It also gives nix/lib.nix's answers for the `probes`.
#
# Each configuration gives its failed assertions and warnings, the unit files of the module's
# services and timers (real serviceToUnit / timerToUnit), the JSON its TOML files are generated
# from, and `forced`: every value of its services, timers, /etc files and packages evaluated
# (derivations down to their .drv paths). Agent configurations also give the unit files
# nix/render-units.nix renders from the same parameters: the ones the nspawn tests
# (tests/systemd.rs) run under a real systemd.
{
  subset ? null,
  nixpkgs ? null,
  readme,
  readmeProvisioner,
  # JSON { urls = [ … ]; addresses = [ … ]; }: inputs for nix/lib.nix's parsers, whose answers
  # tests/nix_eval.rs compares with the Rust code that decides the same at run time.
  probes ? ''{ "urls": [], "addresses": [] }'',
  system ? "x86_64-linux",
}:

let
  full = nixpkgs != null;
  lib = import ((if full then nixpkgs else subset) + "/lib");
  inherit (lib) mkForce;

  subsetOs = import ./nixos-subset.nix { inherit lib subset system; };

  # A whole NixOS also checks the parts of a system the modules under test do not touch.
  fullBoilerplate = {
    fileSystems."/" = {
      device = "/dev/vda";
      fsType = "ext4";
    };
    boot.loader.grub.enable = false;
    system.stateVersion = lib.trivial.release;
  };

  # Which options of a unit are defined. nixpkgs declares a few without a default
  # (startLimitBurst, startLimitIntervalSec), and NixOS reads those only when they are defined;
  # forcing "every value" of a unit means every defined one. Declared next to the real unit
  # types, as the module system merges submodules.
  definedOptions =
    let
      probe =
        { options, ... }:
        {
          options.pullnixTestDefined = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            internal = true;
            readOnly = true;
            default = lib.attrNames (
              lib.filterAttrs (n: o: n != "pullnixTestDefined" && lib.isOption o && o.isDefined) options
            );
            description = "Names of the defined options of this unit (tests/nix_eval.rs).";
          };
        };
    in
    {
      options.systemd.services = lib.mkOption { type = lib.types.attrsOf (lib.types.submodule probe); };
      options.systemd.timers = lib.mkOption { type = lib.types.attrsOf (lib.types.submodule probe); };
    };

  evalNixos =
    modules:
    if full then
      import (nixpkgs + "/nixos/lib/eval-config.nix") {
        inherit system;
        modules = [
          fullBoilerplate
          definedOptions
        ]
        ++ modules;
      }
    else
      subsetOs.eval ([ definedOptions ] ++ modules);

  unitsOf = os: if full then os.config.systemd.units else subsetOs.units os;

  # The flake's own outputs (nixosModules, overlays), with this nixpkgs as its input.
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs =
      if full then
        {
          lib = lib // {
            nixosSystem = args: import (nixpkgs + "/nixos/lib/eval-config.nix") ({ inherit lib; } // args);
          };
          legacyPackages.${system} = import nixpkgs { inherit system; };
        }
      else
        { inherit lib; };
  };

  hasBootCounting = !full || (evalNixos [ ]).options.boot.loader.systemd-boot ? bootCounting;
  bootCountingOption = if full then { } else subsetOs.bootCountingOption;

  # Down to strings: derivations to their .drv paths (which instantiates them), and never into
  # a submodule's _module (its arguments are all of pkgs and the whole configuration).
  force =
    v:
    if lib.isDerivation v then
      v.drvPath
    else if builtins.isAttrs v then
      lib.mapAttrs (_: force) (removeAttrs v [ "_module" ])
    else if builtins.isList v then
      map force v
    else if builtins.isFunction v then
      null
    else
      v;
  forced = v: builtins.deepSeq (force v) true;

  named = prefixes: lib.filterAttrs (n: _: lib.any (p: lib.hasPrefix p n) prefixes);

  # Failed assertions and warnings. A whole NixOS has others of its own: only pullnix's count.
  messages =
    c:
    let
      ours = if full then lib.filter (lib.hasInfix "pullnix") else lib.id;
    in
    {
      failedAssertions = ours (map (a: a.message) (lib.filter (a: !a.assertion) c.assertions));
      warnings = ours c.warnings;
    };

  unitFiles =
    os: prefixes:
    lib.mapAttrs (_: u: {
      inherit (u) text wantedBy requiredBy;
    }) (named prefixes (unitsOf os));

  definedValues = lib.mapAttrs (_: unit: lib.genAttrs unit.pullnixTestDefined (n: unit.${n}));

  # Everything a configuration put into the system, evaluated.
  forcedSystem =
    c: prefixes:
    forced {
      services = definedValues (named prefixes c.systemd.services);
      timers = definedValues (named prefixes c.systemd.timers);
      etc = named [ "pullnix" ] c.environment.etc;
      packages = c.environment.systemPackages;
    };

  viaModule = {
    # The flake's module: the package built from this source with the machine's nixpkgs.
    default = [ flake.nixosModules.default ];
    # The plain module, its package from the overlay.
    overlay = [
      ../module.nix
      { nixpkgs.overlays = [ flake.overlays.default ]; }
    ];
  };

  agent =
    {
      modules,
      via ? "default",
      bootCounting ? false,
    }:
    let
      os = evalNixos (viaModule.${via} ++ modules);
      c = os.config;
      cfg = c.services.pullnix;
      configFile = c.environment.etc."pullnix/config.toml".source;
    in
    messages c
    // {
      inherit (cfg) enable;
      units = unitFiles os [ "pullnix" ];
      forced = forcedSystem c [ "pullnix" ];
      etc = lib.attrNames (named [ "pullnix" ] c.environment.etc);
    }
    // lib.optionalAttrs cfg.enable {
      package = lib.getExe cfg.package;
      packageInstalled = lib.any (p: p.outPath == cfg.package.outPath) c.environment.systemPackages;
      configFile = "${configFile}";
      # What pkgs.formats.toml turns into /etc/pullnix/config.toml (and --config).
      settings = configFile.value;
      # The same unit data through the renderer of the nspawn tests, with the parameters the
      # module passed to nix/units.nix.
      rendered = import ../render-units.nix {
        pullnix = lib.getExe cfg.package;
        configFile = "${configFile}";
        inherit (cfg) interval randomizedDelay;
        confirmTimeout = toString cfg.settings.confirm.timeout;
        watchdogSec = toString cfg.watchdogSec;
        bootCounting = lib.boolToString bootCounting;
      };
    };

  readmeAgent = import readme;
  readmeProvisionerModule = import readmeProvisioner;

  agentCases = {
    readme = agent { modules = [ readmeAgent ]; };
    readme-overlay = agent {
      via = "overlay";
      modules = [ readmeAgent ];
    };
    scan = agent {
      modules = [
        readmeAgent
        { services.pullnix.scan.enable = true; }
      ];
    };
    health = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.healthChecks = {
            systemRunning = true;
            commands = [
              {
                name = "disk";
                argv = [
                  "test"
                  "-w"
                  "/var"
                ];
              }
            ];
          };
        }
      ];
    };
    tuned = agent {
      modules = [
        readmeAgent
        {
          services.pullnix = {
            interval = "17min";
            randomizedDelay = "3min";
            confirmTimeout = 600;
            watchdogSec = 90;
            settings.confirm.interval = 7;
          };
        }
      ];
    };
    boot-counting =
      if hasBootCounting then
        agent {
          bootCounting = true;
          modules = [
            readmeAgent
            bootCountingOption
            {
              services.pullnix.settings.switch.mode = "boot";
              boot.loader.systemd-boot.enable = true;
              boot.loader.systemd-boot.bootCounting.enable = true;
            }
          ];
        }
      else
        null;
    disabled = agent { modules = [ { services.pullnix.enable = false; } ]; };

    # One configuration per assertion and warning of nix/module.nix.
    no-url = agent { modules = [ { services.pullnix.enable = true; } ]; };
    short-window = agent {
      modules = [
        readmeAgent
        {
          services.pullnix = {
            confirmTimeout = 8;
            watchdogSec = 4;
            settings.confirm.interval = 5;
            # The README's command may run 10 s, longer than this watchdog (slow-health-command).
            healthChecks.commands = mkForce [ ];
          };
        }
      ];
    };
    watchdog-not-below-window = agent {
      modules = [
        readmeAgent
        { services.pullnix.confirmTimeout = 60; }
      ];
    };
    # A window too short for the default watchdog: the remedy must clear both assertions
    # ("at least 10" was refused by the watchdog's), and name the option that decides it.
    timeout-below-watchdog = agent {
      modules = [
        readmeAgent
        { services.pullnix.settings.confirm.timeout = 9; }
      ];
    };
    # No watchdogSec below the window outlasts the slowest command (20 s): the message must not
    # offer an empty range.
    watchdog-no-room = agent {
      modules = [
        readmeAgent
        (command "slow" [ "true" ] 20)
        { services.pullnix.confirmTimeout = 10; }
      ];
    };
    # The watchdog does not outlast the slowest command either: both must grow (and the
    # command's own assertion fires too).
    watchdog-below-round = agent {
      modules = [
        readmeAgent
        (command "slow" [ "true" ] 35)
        {
          services.pullnix.confirmTimeout = 30;
          services.pullnix.watchdogSec = 31;
        }
      ];
    };
    # settings.confirm.timeout wins over confirmTimeout: the message must say which one to raise,
    # and a warning that confirmTimeout does nothing.
    setting-overrides-shortcut = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.settings.confirm.timeout = lib.mkIf true 20;
          services.pullnix.confirmTimeout = 600;
        }
      ];
    };
    # Health commands the units could not run.
    command-not-on-path = agent {
      modules = [
        readmeAgent
        { services.pullnix.path = mkForce [ ]; }
      ];
    };
    command-relative = agent {
      modules = [
        readmeAgent
        (command "local" [ "scripts/check" ] 5)
      ];
    };
    slow-health-command = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.healthChecks.commands = [
            { name = "slow"; argv = [ "true" ]; timeout = 90; }
          ];
        }
      ];
    };
    key-in-store = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.deployKeyFile = mkForce "${builtins.storeDir}/00000000000000000000000000000000-deploy-key";
        }
      ];
    };
    # Deploy keys that Nix would copy into the store. Any file will do: it is only copied.
    key-path = agent {
      modules = [
        readmeAgent
        { services.pullnix.deployKeyFile = mkForce ./nixos.nix; }
      ];
    };
    key-setting-path = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.deployKeyFile = mkForce null;
          services.pullnix.settings.repo.deploy_key = ./nixos.nix;
        }
      ];
    };
    # A key written by environment.etc (to a path spelled differently), and one inside a
    # directory linked there: both are store files.
    key-in-etc = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.deployKeyFile = mkForce "/etc/pullnix//./deploy-key";
          environment.etc."pullnix/deploy-key".text = "-----BEGIN OPENSSH PRIVATE KEY-----";
        }
      ];
    };
    key-in-etc-directory = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.deployKeyFile = mkForce "/etc/pullnix-keys/fleet/deploy-key";
          environment.etc."pullnix-keys".source = ./stand-in-modules;
        }
      ];
    };
    # An /etc link to a file outside the store is fine.
    key-etc-link-out-of-store = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.deployKeyFile = mkForce "/etc/pullnix/deploy-key";
          environment.etc."pullnix/deploy-key".source = "/run/agenix/pullnix-deploy";
        }
      ];
    };
    credentials-setting-path = agent {
      modules = [
        (unpinned "https://git.example.org/fleet.git")
        { services.pullnix.settings.repo.credentials_file = ./nixos.nix; }
      ];
    };
    # The README's example with an absolute health command and no `path`: nothing to say.
    absolute-command = agent {
      modules = [
        readmeAgent
        {
          services.pullnix.path = mkForce [ ];
          services.pullnix.healthChecks.commands = mkForce [
            {
              name = "http";
              argv = [
                "/run/current-system/sw/bin/curl"
                "-fsS"
                "http://127.0.0.1/health"
              ];
            }
          ];
        }
      ];
    };
    not-switchable = agent {
      modules = [
        readmeAgent
        { system.switch.enable = false; }
      ];
    };
    ssh-without-key = agent {
      modules = [
        readmeAgent
        { services.pullnix.deployKeyFile = mkForce null; }
      ];
    };
    boot-without-counting = agent {
      modules = [
        readmeAgent
        { services.pullnix.settings.switch.mode = "auto"; }
      ];
    };
    # An ssh remote in every spelling pullnix treats as ssh, without a pinned host key.
    ssh-unpinned = agent { modules = [ (unpinned "ssh://git@git.example.org/fleet.git") ]; };
    git-ssh-unpinned = agent { modules = [ (unpinned "git+ssh://git@git.example.org/fleet.git") ]; };
    ssh-git-unpinned = agent { modules = [ (unpinned "ssh+git://git@git.example.org/fleet.git") ]; };
    scp-like-unpinned = agent { modules = [ (unpinned "git@git.example.org:fleet.git") ]; };
    plaintext-git = agent { modules = [ (unpinned "git://git.example.org/fleet.git") ]; };
    plaintext-http = agent { modules = [ (unpinned "http://git.example.org/fleet.git") ]; };
    password-in-url = agent { modules = [ (unpinned "https://deploy:tok@git.example.org/fleet.git") ]; };
    credentials-in-store = agent {
      modules = [
        (unpinned "https://git.example.org/fleet.git")
        {
          services.pullnix.credentialsFile = "${builtins.storeDir}/00000000000000000000000000000000-creds";
        }
      ];
    };
    # The same remotes with a pin or with the loudly named opt-out: accepted.
    ssh-opt-out = agent {
      modules = [
        (unpinned "git@git.example.org:fleet.git")
        { services.pullnix.settings.repo.insecure_accept_new_host_keys = true; }
      ];
    };
    plaintext-signed = agent {
      modules = [
        (unpinned "git://git.example.org/fleet.git")
        { services.pullnix.settings.repo.allowed_signers = "/etc/pullnix/allowed_signers"; }
      ];
    };
    plaintext-opt-out = agent {
      modules = [
        (unpinned "http://git.example.org/fleet.git")
        { services.pullnix.settings.repo.insecure_plaintext_without_signatures = true; }
      ];
    };
    https-credentials = agent {
      modules = [
        (unpinned "https://git.example.org/fleet.git")
        { services.pullnix.credentialsFile = "/run/keys/pullnix-credentials"; }
      ];
    };
  };

  # One more health command (besides the README's `curl`, 10 s).
  command = name: argv: timeout: {
    services.pullnix.healthChecks.commands = [ { inherit name argv timeout; } ];
  };

  # pullnix with only a repository URL (no pins, no deploy key).
  unpinned = url: {
    networking.hostName = "edge-01";
    services.pullnix = {
      enable = true;
      settings.repo.url = url;
    };
  };

  provisioner =
    modules:
    let
      os = evalNixos ([ flake.nixosModules.provisioner ] ++ modules);
      c = os.config;
      hostsFile = c.environment.etc."pullnix/provisioning-hosts.toml".source;
      enabled = c.services.pullnix-provisioner.enable;
    in
    messages c
    // {
      units = unitFiles os [
        "pullnix"
        "pixiecore"
      ];
      forced = forcedSystem c [
        "pullnix"
        "pixiecore"
      ];
      firewall = {
        tcp = c.networking.firewall.allowedTCPPorts;
        udp = c.networking.firewall.allowedUDPPorts;
      };
    }
    // lib.optionalAttrs enabled {
      hostsFile = "${hostsFile}";
      hostsOption = "${c.services.pullnix-provisioner.hostsFile}";
      hosts = hostsFile.value;
      apiServer = c.services.pixiecore.apiServer;
    };

  # A provisioner the assertion cases below vary.
  provisionerBase = {
    services.pullnix-provisioner = {
      enable = true;
      listenAddress = "10.0.0.1";
      hosts.edge-01.mac = "52:54:00:12:34:56";
    };
  };
  varied = settings: provisioner [
    provisionerBase
    { services.pullnix-provisioner = settings; }
  ];

  provisionerCases = {
    readme = provisioner [ readmeProvisionerModule ];
    reinstall = provisioner [
      {
        services.pullnix-provisioner = {
          enable = true;
          installOnce = false;
          hosts.edge-01.mac = "52:54:00:12:34:56";
        };
      }
    ];

    # One configuration per assertion and warning of nix/provisioner.nix.
    bad-mac = varied { hosts.edge-02.mac = "52:54:00:12:34"; };
    duplicate-mac = varied { hosts.edge-02.mac = "52-54-00-12-34-56"; };
    blank-flake-attr = varied {
      hosts.edge-02 = {
        mac = "52:54:00:12:34:57";
        flake_attr = "edge two";
      };
    };
    empty-flake-attr = varied {
      hosts.edge-02 = {
        mac = "52:54:00:12:34:57";
        flake_attr = "";
      };
    };
    blank-host-name = varied { hosts."edge 02".mac = "52:54:00:12:34:57"; };
    # pxe-api on its default port 8080, pixiecore moved there: the remedy must name another.
    port-clash = provisioner [
      provisionerBase
      { services.pixiecore.port = 8080; }
    ];
    # pixiecore's boot API on the report port: the remedy must name a port nobody uses.
    boot-port-clash = varied { bootPort = 8080; };
    wildcard-without-url = varied { listenAddress = mkForce "0.0.0.0"; };
    loopback = varied {
      listenAddress = mkForce "127.0.0.1";
      publicUrl = "http://10.0.0.1:8080";
    };
    bad-public-url = varied { publicUrl = "ftp://10.0.0.1/pxe"; };
    # Addresses pxe-api cannot listen on (it would exit 2 and be restarted forever).
    host-name-listen = varied { listenAddress = mkForce "provisioner.lan"; };
    zone-listen = varied { listenAddress = mkForce "fe80::1%eth1"; };
    link-local-listen = varied { listenAddress = mkForce "fe80::1"; };
    # Loopback in IPv6 spellings, publicUrl left to its default: one message, not also the one
    # that asks for publicUrl (which would not help).
    loopback-v6 = varied { listenAddress = mkForce "::1"; };
    loopback-mapped = varied { listenAddress = mkForce "::ffff:127.0.0.1"; };
    # publicUrl explicitly null with a usable address.
    null-public-url = varied { publicUrl = null; };
    # Accepted: an IPv6 address (bracketed in --report-listen and publicUrl), an unused
    # listenAddress (without installOnce), and ports below 1024 (granted the capability).
    ipv6-listen = varied { listenAddress = mkForce "fd00::1"; };
    reinstall-unused-listen = varied {
      installOnce = false;
      listenAddress = mkForce "provisioner.lan";
    };
    low-port = varied { port = 81; };
    low-boot-port = varied {
      installOnce = false;
      bootPort = 1000;
    };
    report-without-install-once = varied {
      installOnce = false;
      listenAddress = mkForce "127.0.0.1";
      hosts.edge-02 = {
        mac = "52:54:00:12:34:57";
        cmdline = "init=/x pullnix.host={host} pullnix.report={report}";
      };
    };
    no-hosts = provisioner [
      {
        services.pullnix-provisioner = {
          enable = true;
          listenAddress = "10.0.0.1";
        };
      }
    ];
    own-cmdline = varied {
      hosts.edge-02 = {
        mac = "52:54:00:12:34:57";
        cmdline = "init=/x pullnix.host={host}";
      };
    };
  };

  netboot =
    modules:
    let
      os = evalNixos ([ flake.nixosModules.netboot ] ++ modules);
      c = os.config;
    in
    messages c
    // {
      units = unitFiles os [ "pullnix" ];
      forced = forcedSystem c [ "pullnix" ];
      install = c.environment.etc."pullnix/install.toml".source.value;
      experimentalFeatures = c.nix.settings.experimental-features;
      sshd = {
        inherit (c.services.openssh) enable;
        inherit (c.services.openssh.settings) PermitRootLogin PasswordAuthentication;
      };
      rootKeys = c.users.users.root.openssh.authorizedKeys.keys;
    };

  netbootCases = {
    generic = netboot [ ];
    readme = netboot [ readmeProvisionerModule.services.pullnix-provisioner.installer ];
    pre-install = netboot [
      {
        pullnix.installer = {
          partitioning = "none";
          preInstall = ''mount /dev/disk/by-label/nixos "$target"'';
          settings.scan.enable = true;
        };
      }
    ];

    # One configuration per warning of nix/netboot.nix.
    baked-key = netboot [
      {
        pullnix.installer = {
          repo = "ssh://git@git.example.org/fleet/nixos.git";
          knownHosts = "git.example.org ssh-ed25519 AAAA";
          authorizedKeys = [ "ssh-ed25519 AAAA admin@example.org" ];
          # Any file will do: it is only copied into the image.
          deployKeyFile = ./nixos.nix;
        };
      }
    ];
    nobody-can-copy-the-key = netboot [
      {
        pullnix.installer.repo = "ssh://git@git.example.org/fleet/nixos.git";
        pullnix.installer.knownHosts = "git.example.org ssh-ed25519 AAAA";
      }
    ];
    no-partitioning = netboot [
      {
        pullnix.installer.partitioning = "none";
        pullnix.installer.settings.install.target = "/target";
      }
    ];
    # One configuration per assertion of nix/netboot.nix, and the accepted variants.
    ssh-unpinned = netboot [ (installer "ssh://git@git.example.org/fleet.git" { }) ];
    ssh-pinned = netboot [
      (installer "ssh://git@git.example.org/fleet.git" {
        knownHosts = "git.example.org ssh-ed25519 AAAA";
      })
    ];
    ssh-opt-out = netboot [
      (installer "ssh://git@git.example.org/fleet.git" {
        settings.repo.insecure_accept_new_host_keys = true;
      })
    ];
    plaintext = netboot [ (installer "git://10.0.0.1/fleet.git" { }) ];
    plaintext-opt-out = netboot [
      (installer "git://10.0.0.1/fleet.git" {
        settings.repo.insecure_plaintext_without_signatures = true;
      })
    ];
    # Secrets that would be in the image's store.
    key-setting-path = netboot [
      (installer "https://10.0.0.1/fleet.git" { settings.repo.deploy_key = ./nixos.nix; })
    ];
    key-path-in-etc = netboot [
      (installer "ssh://git@git.example.org/fleet.git" {
        knownHosts = "git.example.org ssh-ed25519 AAAA";
        deployKeyPath = "/etc/pullnix/deploy-key";
      })
      { environment.etc."pullnix/deploy-key".text = "-----BEGIN OPENSSH PRIVATE KEY-----"; }
    ];
    credentials-in-store = netboot [
      (installer "https://10.0.0.1/fleet.git" {
        settings.repo.credentials_file = "${builtins.storeDir}/00000000000000000000000000000000-creds";
      })
    ];
  };

  # An installer with a repository in its image (a root key, so nobody-can-copy-the-key is quiet).
  installer = repo: extra: {
    pullnix.installer = {
      inherit repo;
      authorizedKeys = [ "ssh-ed25519 AAAA admin@example.org" ];
    }
    // extra;
  };

  shared = import ../lib.nix { inherit lib; };
  probed = builtins.fromJSON probes;
in
{
  mode = if full then "nixpkgs" else "subset";
  lib = {
    ssh = map shared.isSsh probed.urls;
    plainText = map shared.isPlainText probed.urls;
    addresses = map shared.listenAddress probed.addresses;
  };
  inherit hasBootCounting;
  agent = agentCases;
  provisioner = provisionerCases;
  netboot = netbootCases;
}
// lib.optionalAttrs full {
  # The flake's non-VM checks, instantiated (building them needs a NixOS machine).
  flakeChecks = lib.mapAttrs (_: check: check.drvPath) (
    lib.getAttrs [ "package" "clippy" "rustfmt" ] flake.checks.${system}
  );
}

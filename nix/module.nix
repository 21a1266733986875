# NixOS module: services.pullnix.
#
# The units themselves are nix/units.nix (shared with the systemd tests, which render the same
# data with nix/render-units.nix); nix/unit-options.nix maps them onto systemd.services /
# systemd.timers. This file adds the NixOS-only parts: options, the rendered config file, PATH,
# environment and assertions.
{
  config,
  options,
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

  cfg = config.services.pullnix;

  # pkgs.formats.toml: nixpkgs pkgs/pkgs-lib/formats.nix. Its `type` is the freeform type for
  # everything we do not declare; `generate` writes the file (TOML has no null, so nulls are
  # removed first: an unset optional key means "use pullnix's default").
  toml = pkgs.formats.toml { };
  settingsFile = toml.generate "pullnix.toml" (
    lib.filterAttrsRecursive (_: v: v != null) cfg.settings
  );

  # boot.loader.systemd-boot.bootCounting exists only in some nixpkgs revisions; `or` keeps this
  # module evaluating on the others (the option tree simply has no such attribute there).
  bootCounting =
    config.boot.loader.systemd-boot.enable && (config.boot.loader.systemd-boot.bootCounting.enable or false);

  units = import ./unit-options.nix (
    import ./units.nix {
      pullnix = lib.getExe cfg.package;
      configFile = settingsFile;
      inherit (cfg) interval randomizedDelay watchdogSec;
      confirmTimeout = cfg.settings.confirm.timeout;
      inherit bootCounting;
    }
  );

  # What pullnix runs by name (README "How a sync works"): nix and nix-env, git (nix's git
  # fetcher execs it for git+file://), ssh for ssh:// remotes, systemctl/systemd-run, vulnix.
  runtimePath = [
    config.nix.package
    pkgs.git
    pkgs.openssh
    config.systemd.package
    pkgs.coreutils
  ]
  ++ lib.optional cfg.settings.scan.enable cfg.scan.package
  ++ cfg.path;

  # Same environment nixos-upgrade.service gets (nixpkgs nixos/modules/tasks/auto-upgrade.nix):
  # nix's own variables and proxies, and a HOME for nix's caches.
  serviceEnvironment =
    (config.nix.envVars or { })
    // {
      HOME = "/root";
    }
    // (config.networking.proxy.envVars or { });

  healthCommand = types.submodule {
    options = {
      name = mkOption {
        type = types.str;
        description = "Name of the check, used in the log and in the state file.";
      };
      argv = mkOption {
        type = types.nonEmptyListOf types.str;
        example = [
          "curl"
          "-fsS"
          "http://127.0.0.1/health"
        ];
        description = ''
          Program and arguments; the check passes when it exits 0. A program named without a
          path is looked up in the PATH of pullnix's units: add its package to
          `services.pullnix.path`, or give an absolute path.
        '';
      };
      timeout = mkOption {
        type = types.ints.positive;
        default = 30;
        description = "Seconds the command may run before it counts as failed.";
      };
    };
  };

  # A submodule that accepts any TOML value besides its declared options, so every key of the
  # README's configuration table can be set even when it has no typed option here.
  section =
    options:
    mkOption {
      type = types.submodule {
        freeformType = toml.type;
        inherit options;
      };
      default = { };
      description = "See the README's configuration table; unknown keys are rejected by pullnix.";
    };

  shared = import ./lib.nix { inherit lib; };
  inherit (shared) isSsh isPlainText hasPassword;
  repoSetting = name: cfg.settings.repo.${name} or null;

  # Whether the user set a key of `settings` (at `path`) themselves, rather than leaving it at
  # the default a shortcut option gives it. Messages name the option that decides the value.
  settingSet = path: lib.any (shared.definesAttr path) options.services.pullnix.settings.definitions;
  shortcutSet = name: (lib.attrByPath name { highestPrio = 1500; } options.services.pullnix).highestPrio < 1500;
  timeoutOption =
    if settingSet [ "confirm" "timeout" ] then
      "services.pullnix.settings.confirm.timeout"
    else
      "services.pullnix.confirmTimeout";
  # Shortcut options and the setting each one is the default of.
  shortcuts = [
    {
      shortcut = [ "confirmTimeout" ];
      setting = [ "confirm" "timeout" ];
    }
    {
      shortcut = [ "bootTries" ];
      setting = [ "confirm" "boot_tries" ];
    }
    {
      shortcut = [ "healthChecks" "units" ];
      setting = [ "health" "units" ];
    }
    {
      shortcut = [ "healthChecks" "commands" ];
      setting = [ "health" "command" ];
    }
    {
      shortcut = [ "healthChecks" "systemRunning" ];
      setting = [ "health" "system_running" ];
    }
    {
      shortcut = [ "scan" "enable" ];
      setting = [ "scan" "enable" ];
    }
  ];
  overridden = lib.filter (s: shortcutSet s.shortcut && settingSet s.setting) shortcuts;

  # The confirmation timing (README "Units"): confirm pings the watchdog once per health check
  # round, and a round lasts up to the interval plus every command's timeout (they run one
  # after another), so a watchdog that is to outlast a round needs more than that.
  timing = rec {
    timeout = cfg.settings.confirm.timeout;
    interval = cfg.settings.confirm.interval;
    # The longest confirm goes without WATCHDOG=1: it pings before each health command and every
    # second while it waits between rounds (src/confirm.rs), so one command's run at most.
    longestCommand = lib.foldl' lib.max 0 (map (c: c.timeout) cfg.settings.health.command);
    round = lib.max 1 longestCommand;
    roundText =
      if longestCommand > 0 then
        "the longest health command timeout (${toString longestCommand} s)"
      else
        "confirm's one-second pings";
    watchdog = cfg.watchdogSec;
    # The smallest confirm.timeout every timing assertion accepts with this watchdogSec.
    minTimeout = lib.max (2 * interval) (watchdog + 1);
  };

  # Health commands the units may not find: a relative path, or a bare name that nothing on the
  # units' PATH is known to provide (lib.nix, defaultPathPrograms; the packages of `path` by
  # name and meta.mainProgram). Evaluation cannot list a package's programs without building it.
  pathPrograms =
    shared.defaultPathPrograms
    ++ lib.optional cfg.settings.scan.enable "vulnix"
    ++ lib.concatMap (p: [ (lib.getName p) ] ++ lib.optional (p ? meta.mainProgram) p.meta.mainProgram) cfg.path;
  unfoundCommands = lib.filter (
    c:
    let
      program = lib.head c.argv;
    in
    !lib.hasPrefix "/" program && (lib.hasInfix "/" program || !lib.elem program pathPrograms)
  ) cfg.settings.health.command;

  # Secrets whose file would be readable by every user (lib.nix, secretExposure).
  exposure = shared.secretExposure config.environment.etc;
  secret =
    option: setting:
    let
      fromOption = cfg.${option} != null;
      value = if fromOption then cfg.${option} else repoSetting setting;
    in
    {
      name = if fromOption then "services.pullnix.${option}" else "services.pullnix.settings.repo.${setting}";
      reason = exposure value;
    };
  deployKey = secret "deployKeyFile" "deploy_key";
  credentials = secret "credentialsFile" "credentials_file";
  secretRemedy = what: example: ''
    Keep the ${what} out of the store and name it by a string: let a secret manager put it there
    (agenix, sops-nix: e.g. "/run/agenix/pullnix-${example}") or copy it to the machine out of band
    (e.g. to "/var/lib/pullnix/${example}", mode 0600, owned by root); never write it with environment.etc,
    pkgs.writeText, builtins.readFile or a Nix path (./file). A secret that has been in a store
    before, or that is committed to a repository, is public: replace it.'';
in
{
  options.services.pullnix = {
    enable = mkEnableOption "pullnix, the pull-based deployment agent (timer, confirm and boot-check units)";

    package = mkPackageOption pkgs "pullnix" { };

    settings = mkOption {
      description = ''
        pullnix's configuration, rendered to TOML and passed with `--config` (it is also linked
        to /etc/pullnix/config.toml for `pullnix status`). Any key of the README's
        "Configuration" section may be set; pullnix rejects unknown keys.
      '';
      default = { };
      type = types.submodule {
        freeformType = toml.type;
        options = {
          host = mkOption {
            type = types.nullOr types.str;
            default = if config.networking.hostName != "" then config.networking.hostName else null;
            defaultText = literalExpression "config.networking.hostName";
            description = "Attribute of `nixosConfigurations` to build (null: the kernel hostname).";
          };

          repo = section {
            url = mkOption {
              type = types.str;
              default = "";
              example = "ssh://git@git.example.org/fleet/nixos.git";
              description = "Repository holding the flake (file://, path, git://, http(s)://, ssh://).";
            };
            branch = mkOption {
              type = types.str;
              default = "main";
              description = "Branch to deploy.";
            };
            allow_non_fast_forward = mkOption {
              type = types.bool;
              default = false;
              description = "Deploy a commit that does not descend from the deployed one (force-push).";
            };
          };

          build = section {
            extra_args = mkOption {
              type = types.listOf types.str;
              # pullnix runs `nix build` on a flake; this works whether or not the machine
              # enables the features in nix.conf.
              default = [
                "--extra-experimental-features"
                "nix-command flakes"
              ];
              description = "Arguments appended to `nix build`.";
            };
          };

          scan = section {
            enable = mkOption {
              type = types.bool;
              default = cfg.scan.enable;
              defaultText = literalExpression "config.services.pullnix.scan.enable";
              description = "Block candidates with vulnerabilities (vulnix).";
            };
          };

          switch = section {
            mode = mkOption {
              type = types.enum [
                "test"
                "boot"
                "auto"
              ];
              default = "test";
              description = ''
                `test`: activate with switch-to-configuration test, no reboot. `boot`: always
                make the candidate the (boot-counted) boot default and reboot into it. `auto`:
                reboot only when kernel, initrd or kernel parameters change.
              '';
            };
            systemd_run = mkOption {
              type = types.bool;
              default = true;
              description = ''
                Run switch-to-configuration in a transient unit, as nixos-rebuild does, so a
                switch that touches pullnix's own units still runs to its end.
              '';
            };
          };

          confirm = section {
            timeout = mkOption {
              type = types.ints.positive;
              default = cfg.confirmTimeout;
              defaultText = literalExpression "config.services.pullnix.confirmTimeout";
              description = "Seconds from activation to the confirmation deadline.";
            };
            interval = mkOption {
              type = types.ints.positive;
              default = 5;
              description = "Seconds between health check rounds.";
            };
            boot_tries = mkOption {
              type = types.ints.positive;
              default = cfg.bootTries;
              defaultText = literalExpression "config.services.pullnix.bootTries";
              description = "Boots of an unconfirmed candidate before boot-check reverts.";
            };
            unit = mkOption {
              type = types.str;
              default = "pullnix-confirm.service";
              description = ''
                Unit that sync starts to confirm. The default makes the new generation's pullnix
                and config do the confirming; "" confirms inside the sync process.
              '';
            };
          };

          health = section {
            units = mkOption {
              type = types.listOf types.str;
              default = cfg.healthChecks.units;
              defaultText = literalExpression "config.services.pullnix.healthChecks.units";
              description = "Units that must be active.";
            };
            system_running = mkOption {
              type = types.bool;
              default = cfg.healthChecks.systemRunning;
              defaultText = literalExpression "config.services.pullnix.healthChecks.systemRunning";
              description = "Require `systemctl is-system-running` to say running.";
            };
            command = mkOption {
              type = types.listOf healthCommand;
              default = cfg.healthChecks.commands;
              defaultText = literalExpression "config.services.pullnix.healthChecks.commands";
              description = "Commands that must exit 0.";
            };
          };

          boot = section {
            counting = mkOption {
              type = types.bool;
              default = bootCounting;
              defaultText = literalExpression "boot.loader.systemd-boot.bootCounting.enable (if that option exists)";
              description = "Bless boot-counted systemd-boot entries on confirmation.";
            };
          };
        };
      };
      example = literalExpression ''
        {
          repo.url = "ssh://git@git.example.org/fleet/nixos.git";
          repo.known_hosts = "/etc/pullnix/known_hosts";
          switch.mode = "auto";
          health.command = [ { name = "http"; argv = [ "''${pkgs.curl}/bin/curl" "-fsS" "http://127.0.0.1/health" ]; } ];
        }
      '';
    };

    deployKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/pullnix-deploy";
      description = ''
        SSH private key for an ssh:// remote (mode 0600 or 0400, owned by root). Given as a
        string so it is never copied into the world-readable Nix store; sets
        `settings.repo.deploy_key`.
      '';
    };

    credentialsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/pullnix-credentials";
      description = ''
        For an https:// remote that needs a login: a file with `username=…` and `password=…`
        lines (mode 0600, owned by root), so that the secret is neither in `repo.url` nor in
        the world-readable Nix store. Given as a string, never as a Nix path; sets
        `settings.repo.credentials_file`.
      '';
    };

    path = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.curl ]";
      description = ''
        Packages added to the PATH of pullnix's units, for the health commands
        (`healthChecks.commands`) named without a path. The units already have nix, git,
        openssh, systemd, coreutils, findutils, gnugrep and gnused (and vulnix with the scan).
      '';
    };

    interval = mkOption {
      type = types.str;
      default = "5min";
      description = "Time between polls (OnUnitActiveSec of pullnix.timer, systemd.time(7)).";
    };

    randomizedDelay = mkOption {
      type = types.str;
      default = "1min";
      description = ''
        RandomizedDelaySec of pullnix.timer: each poll comes up to this much later than
        `interval` (a random delay, never earlier), so a fleet does not poll in lockstep.
      '';
    };

    confirmTimeout = mkOption {
      type = types.ints.positive;
      default = 300;
      description = "Default of `settings.confirm.timeout` (seconds to confirm a candidate).";
    };

    bootTries = mkOption {
      type = types.ints.positive;
      default = 3;
      description = "Default of `settings.confirm.boot_tries`.";
    };

    watchdogSec = mkOption {
      type = types.ints.positive;
      default = 60;
      description = ''
        WatchdogSec of pullnix-confirm.service: a confirm that stops reporting progress this
        long is killed and restarted, and then reverts once the deadline has passed.
      '';
    };

    healthChecks = {
      units = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "nginx.service" ];
        description = "Units that must be active for a candidate to be kept.";
      };
      commands = mkOption {
        type = types.listOf healthCommand;
        default = [ ];
        description = "Commands that must exit 0 for a candidate to be kept.";
      };
      systemRunning = mkOption {
        type = types.bool;
        default = false;
        description = "Require `systemctl is-system-running` to answer `running`.";
      };
    };

    scan = {
      enable = mkEnableOption "the vulnix gate (vulnix is added to pullnix's PATH)";
      package = mkPackageOption pkgs "vulnix" { };
    };
  };

  config = mkIf cfg.enable {
    services.pullnix.settings.repo.deploy_key = mkIf (cfg.deployKeyFile != null) (
      toString cfg.deployKeyFile
    );
    services.pullnix.settings.repo.credentials_file = mkIf (cfg.credentialsFile != null) (
      toString cfg.credentialsFile
    );

    assertions = [
      {
        assertion = cfg.settings.repo.url != "";
        message = "services.pullnix.settings.repo.url is empty: set it to the repository holding your fleet's flake.";
      }
      {
        assertion = timing.timeout >= 2 * timing.interval;
        # Every suggested value must pass the other timing assertions too: a timeout above
        # watchdogSec, or an interval of at least a second.
        message = ''
          services.pullnix: confirm.timeout (${toString timing.timeout} s) leaves room for fewer than two
          health check rounds of confirm.interval (${toString timing.interval} s); a single slow start would
          revert every deployment. Raise ${timeoutOption} to at least ${toString timing.minTimeout}${
            lib.optionalString (timing.minTimeout > 2 * timing.interval) " (it must stay above watchdogSec, ${toString timing.watchdog})"
          }${
            lib.optionalString (timing.timeout >= 2) ", or lower services.pullnix.settings.confirm.interval to at most ${toString (timing.timeout / 2)}"
          }.
        '';
      }
      {
        assertion = timing.watchdog < timing.timeout;
        # The suggestions must be valid themselves: a watchdogSec below the timeout that outlasts
        # a check round (confirm pings the watchdog once per round), or else a longer timeout.
        message =
          let
            wMin = timing.round + 1;
            wNew = lib.max timing.watchdog wMin;
            tNew = lib.max (wNew + 1) (2 * timing.interval);
            lower =
              if wMin == timing.timeout - 1 then
                "to ${toString wMin}"
              else
                "to between ${toString wMin} and ${toString (timing.timeout - 1)}";
          in
          ''
            services.pullnix: watchdogSec (${toString timing.watchdog}) is not below confirm.timeout (${toString timing.timeout}):
            a hung confirm would reach its deadline before the watchdog could kill it, so the watchdog is
            useless. ${
              if wMin < timing.timeout then
                "Lower services.pullnix.watchdogSec ${lower}, so that it still outlasts ${timing.roundText}, or raise ${timeoutOption} to at least ${toString tNew}."
              else if timing.watchdog >= wMin then
                "No watchdogSec below ${toString timing.timeout} outlasts ${timing.roundText}: raise ${timeoutOption} to at least ${toString tNew}."
              else
                "No watchdogSec below ${toString timing.timeout} outlasts ${timing.roundText}: raise services.pullnix.watchdogSec to at least ${toString wMin} and ${timeoutOption} to at least ${toString tNew}."
            }
          '';
      }
      (
        # confirm sends WATCHDOG=1 before each health check and while it waits between rounds
        # (src/health.rs, src/watchdog.rs), but not while a command runs: a command allowed to
        # run as long as the watchdog would get a healthy, merely slow confirm killed.
        let
          commands = cfg.settings.health.command;
          slow = lib.filter (c: c.timeout >= cfg.watchdogSec) commands;
          longest = lib.foldl' lib.max 0 (map (c: c.timeout) commands);
          raised = longest + 5;
        in
        {
          assertion = slow == [ ];
          message = ''
            services.pullnix: health command timeouts not below watchdogSec (${toString cfg.watchdogSec}): ${
              lib.concatMapStringsSep ", " (c: "\"${c.name}\" (${toString c.timeout} s)") slow
            }. confirm cannot report progress while a command runs, so its watchdog would kill a healthy
            confirm whose check is merely slow. Lower those timeouts below ${toString cfg.watchdogSec}
            (services.pullnix.healthChecks.commands.*.timeout)${
              if raised < cfg.settings.confirm.timeout then
                ", or raise services.pullnix.watchdogSec to ${toString raised} (it must stay below ${timeoutOption}, ${toString cfg.settings.confirm.timeout})"
              else
                ", or raise services.pullnix.watchdogSec to ${toString raised} and ${timeoutOption} to at least ${toString (raised + 1)} (the watchdog must stay below it)"
            }.
          '';
        }
      )
      {
        # pullnix refuses the same at run time (src/config.rs); failing here says it before a
        # machine is deployed with a configuration its own pullnix would then refuse.
        assertion =
          !isSsh cfg.settings.repo.url
          || repoSetting "known_hosts" != null
          || (repoSetting "insecure_accept_new_host_keys") == true;
        message = ''
          services.pullnix: repo.url (${cfg.settings.repo.url}) is an ssh remote without a pinned host key:
          ssh would trust whichever host answers first, and that host would choose what runs as root.
          Pin the server's key, e.g.
            services.pullnix.settings.repo.known_hosts = "/etc/pullnix/known_hosts";
            environment.etc."pullnix/known_hosts".text = "git.example.org ssh-ed25519 AAAA…";
          (the output of `ssh-keyscan git.example.org`, checked out of band), or point it at
          /var/lib/pullnix/known_hosts, where `pullnix install` and `pullnix bootstrap` leave the pin
          they were given. To accept the risk instead: settings.repo.insecure_accept_new_host_keys = true.
        '';
      }
      {
        assertion =
          !isPlainText cfg.settings.repo.url
          || repoSetting "allowed_signers" != null
          || (repoSetting "insecure_plaintext_without_signatures") == true;
        message = ''
          services.pullnix: repo.url (${cfg.settings.repo.url}) is a plain-text transport (git:// or http://):
          anyone on the network path could serve a configuration of their own, which this machine would
          then run as root. Use https:// or ssh://, or require signed commits with
          settings.repo.allowed_signers (an OpenSSH allowed signers file), or accept the risk with
          settings.repo.insecure_plaintext_without_signatures = true.
        '';
      }
      {
        assertion = !hasPassword cfg.settings.repo.url;
        message = ''
          services.pullnix: repo.url contains a password. The rendered configuration is in the Nix store,
          which every user can read: the secret is public now, so revoke it. Put the login into a file
          outside the store instead: services.pullnix.credentialsFile = "/run/keys/pullnix-credentials";
          with the lines username=… and password=… (mode 0600, owned by root).
        '';
      }
      {
        # The store is world-readable (and copied whole to every machine that gets the closure).
        assertion = deployKey.reason == null;
        message = ''
          ${deployKey.name}: the deploy key would be in the Nix store, readable by every user: ${toString deployKey.reason}.
          ${secretRemedy "deploy key" "deploy-key"}
        '';
      }
      {
        assertion = credentials.reason == null;
        message = ''
          ${credentials.name}: the git login would be in the Nix store, readable by every user: ${toString credentials.reason}.
          ${secretRemedy "credentials file" "credentials"}
        '';
      }
      {
        # Test VMs and images may build without switch-to-configuration; pullnix cannot activate
        # anything there (nixpkgs nixos/modules/system/activation/switchable-system.nix).
        assertion = config.system.switch.enable or true;
        message = "services.pullnix needs switch-to-configuration: set system.switch.enable = true.";
      }
    ];

    warnings =
      lib.optional (isSsh cfg.settings.repo.url && repoSetting "deploy_key" == null)
        "services.pullnix: repo.url is an ssh remote but no deploy key is set (services.pullnix.deployKeyFile); ssh will only find root's default keys."
      ++ lib.optional (cfg.settings.switch.mode != "test" && !bootCounting)
        "services.pullnix: switch.mode = \"${cfg.settings.switch.mode}\" without boot.loader.systemd-boot.bootCounting: a candidate that does not boot at all is only left when someone picks another boot entry."
      # Measured on real firmware (tests/vm.rs): in the candidate's counted boot,
      # boot-complete.target waits for pullnix-confirm, so the system stays "starting".
      ++ lib.optional (cfg.settings.switch.mode != "test" && bootCounting && cfg.settings.health.system_running)
        "services.pullnix: healthChecks.systemRunning with boot mode and boot counting reverts every candidate: its boot is not complete (systemctl is-system-running says \"starting\") until pullnix-confirm has decided. Check the important units with healthChecks.units instead."
      # A command that cannot be found fails its check, and every deployment is reverted.
      ++ map (
        c:
        let
          program = lib.head c.argv;
        in
        if lib.hasInfix "/" program then
          ''
            services.pullnix: health check "${c.name}" runs "${program}", a relative path, which the check
            would look up in the working directory of pullnix's units (/): give argv[0] as an absolute path.
          ''
        else
          ''
            services.pullnix: health check "${c.name}" runs "${program}", which is not known to be on the PATH
            of pullnix's units (nix, git, openssh, systemd, coreutils, findutils, gnugrep, gnused${lib.optionalString cfg.settings.scan.enable ", vulnix"},
            and the packages of services.pullnix.path by name and meta.mainProgram): if it is not there,
            the check fails and every deployment is reverted. Add the package that provides it to
            services.pullnix.path (e.g. services.pullnix.path = [ pkgs.curl ]; for curl), or give argv[0]
            as an absolute path (e.g. "''${pkgs.curl}/bin/curl").
          ''
      ) unfoundCommands
      ++ lib.optional (overridden != [ ]) ''
        services.pullnix: ${
          lib.concatMapStringsSep "; " (
            s:
            "${lib.concatStringsSep "." s.shortcut} has no effect, as settings.${lib.concatStringsSep "." s.setting} is set too and wins"
          ) overridden
        }. Set only one of ${if lib.length overridden > 1 then "each pair" else "the two"}.
      '';

    environment.systemPackages = [ cfg.package ];
    # `pullnix status` and friends read this by default (README "Commands").
    environment.etc."pullnix/config.toml".source = settingsFile;

    systemd.services = lib.mapAttrs (
      name: unit:
      unit
      // {
        path = runtimePath;
      }
      // lib.optionalAttrs (name != "pullnix-boot-check") {
        environment = serviceEnvironment;
      }
    ) units.services;

    systemd.timers = units.timers;
  };
}

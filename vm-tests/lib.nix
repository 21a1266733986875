# Shared pieces of the NixOS VM tests (see vm-tests/README.md).
#
# Two nodes: `server` serves the fleet repository over git:// (services.gitDaemon), `machine`
# runs pullnix against it with the flake's NixOS module. The machine is offline: no
# substituters, and every candidate it deploys was built on the host together with the VM.
#
# How a candidate reaches the VM. A candidate is the machine's own configuration extended by a
# small module (`variants`), evaluated with `extendModules` (the same mechanism as
# nixpkgs nixos/modules/system/activation/specialisation.nix), so it keeps the test driver's
# backdoor, disks and network. Its toplevel and the closure of its .drv are added to the VM's
# store (system.extraDependencies). The fixture flake committed to the repository then says
#
#   nixosConfigurations.machine.config.system.build.toplevel = import /nix/store/…-nixos-system-….drv;
#
# and pullnix's `nix build` finds the output valid and builds nothing. Importing a store path
# needs `--impure` in `build.extra_args`; that is the one test-only setting. Evaluating real
# nixpkgs inside the VM instead would need the whole build-time closure in the VM
# (system.includeBuildDependencies) and a configuration that reproduces the test driver's own
# node modules exactly, or the "candidate" would rebuild half of nixpkgs offline.
#
# Candidates that must be built *inside* the VM (a failing build; the vulnix fixture, whose
# deriver vulnix must find in the VM's database) are raw derivations over bash and coreutils
# from the VM's store.
{ pkgs, self }:

let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;

  # A store path as it is written into the fixture flake: the plain string, no Nix context (the
  # machine's extraDependencies carries the real dependency).
  plain = p: builtins.unsafeDiscardStringContext (toString p);

  candidateFlake = name: toplevel: ''
    {
      description = "pullnix VM test fixture, candidate ${name}";
      # The candidate was built on the host with the VM (vm-tests/lib.nix); importing its .drv
      # gives `nix build` a derivation whose output is already in the store.
      outputs = { self }: {
        nixosConfigurations.machine.config.system.build.toplevel =
          import ${plain (builtins.unsafeDiscardOutputDependency toplevel.drvPath)};
      };
    }
  '';

  # A derivation built inside the VM. builtins.storePath (impure) makes bash and coreutils
  # inputs of the build, so they are visible in the build sandbox.
  rawFlake = name: body: ''
    {
      description = "pullnix VM test fixture, ${name}";
      outputs = { self }:
        let
          bash = builtins.storePath "${plain pkgs.bash}";
          coreutils = builtins.storePath "${plain pkgs.coreutils}";
          run = name: script: derivation {
            inherit name;
            system = "${system}";
            builder = "''${bash}/bin/bash";
            args = [ "-euc" script ];
            PATH = "''${coreutils}/bin";
          };
          ${body}
        in
        {
          nixosConfigurations.machine.config.system.build.toplevel = toplevel;
        };
    }
  '';

  rawFlakes = {
    # Evaluates, then fails to build.
    broken-build = rawFlake "failing build" ''
      toplevel = run "nixos-system-machine-broken" "echo 'pullnix-fixture: this build fails on purpose' >&2; exit 1";
    '';
    # A "system" whose build closure contains vulnfixture-1.0.1, which the crafted NVD feed of
    # vulnix-block.nix marks critical. Its switch-to-configuration fails, so activating it
    # (which must not happen) would be visible.
    vulnerable = rawFlake "vulnerable dependency" ''
      vuln = run "vulnfixture-1.0.1" "echo fixture > $out";
      toplevel = run "nixos-system-machine-vulnerable" '''
        mkdir -p $out/bin
        echo ''${vuln} > $out/vulnerable-dependency
        printf '#!/bin/sh\necho never activate me >&2\nexit 1\n' > $out/bin/switch-to-configuration
        chmod +x $out/bin/switch-to-configuration
      ''';
    '';
  };

  serverNode =
    { pkgs, ... }:
    {
      services.gitDaemon = {
        enable = true;
        basePath = "/srv/git";
        exportAll = true;
      };
      networking.firewall.allowedTCPPorts = [ 9418 ];
      # The repository is written by root and served by the git-daemon user; git refuses
      # repositories owned by someone else unless told otherwise.
      programs.git = {
        enable = true;
        config.safe.directory = "*";
      };
      environment.systemPackages = [ pkgs.git ];
    };

  # The machine. `variants`: name -> NixOS module; each becomes a deployable candidate.
  machineModule =
    variants:
    {
      config,
      lib,
      pkgs,
      extendModules,
      ...
    }:
    let
      candidates = lib.mapAttrs (
        name: module:
        (extendModules {
          modules = [
            module
            {
              pullnixTest.isCandidate = true;
              environment.etc."pullnix-fixture".text = lib.mkOverride 90 name;
            }
          ];
        }).config.system.build.toplevel
      ) variants;
    in
    {
      imports = [ self.nixosModules.default ];

      options.pullnixTest = {
        isCandidate = lib.mkOption {
          type = lib.types.bool;
          default = false;
          internal = true;
          description = "Set in candidates, so that they do not carry candidates themselves.";
        };
        candidates = lib.mkOption {
          type = lib.types.lazyAttrsOf lib.types.raw;
          default = { };
          internal = true;
          description = "Toplevels of the candidates, by variant name.";
        };
      };

      config = {
        pullnixTest.candidates = lib.mkIf (!config.pullnixTest.isCandidate) candidates;

        system.extraDependencies = lib.mkIf (!config.pullnixTest.isCandidate) (
          [
            pkgs.bash
            pkgs.coreutils
          ]
          ++ lib.concatMap (t: [
            t
            (builtins.unsafeDiscardOutputDependency t.drvPath)
          ]) (lib.attrValues candidates)
        );

        # Offline, writable store, switchable (the test profile turns switching off).
        nix.settings.substituters = lib.mkForce [ ];
        virtualisation.writableStore = true;
        virtualisation.memorySize = 2048;
        system.switch.enable = true;

        environment.etc."pullnix-fixture".text = "base";
        environment.systemPackages = [ pkgs.git ];

        # A service the health checks watch; the `unhealthy` variant breaks it.
        systemd.services.fixture-app = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
        };

        services.pullnix = {
          enable = true;
          settings.repo.url = "git://server/fleet.git";
          # The test network has only the two nodes; the scenarios are about deployment, not
          # about signed commits (without this the module refuses a git:// remote).
          settings.repo.insecure_plaintext_without_signatures = true;
          settings.build.extra_args = [
            "--extra-experimental-features"
            "nix-command flakes"
            "--impure"
          ];
          settings.confirm.interval = 2;
          confirmTimeout = 60;
          watchdogSec = 20;
          healthChecks.units = [ "fixture-app.service" ];
          healthChecks.commands = [
            {
              name = "fixture marker";
              argv = [
                "test"
                "-s"
                "/etc/pullnix-fixture"
              ];
              timeout = 5;
            }
          ];
        };
        # The test script starts every sync itself; a timer firing in between would make the
        # journal assertions racy.
        systemd.timers.pullnix.wantedBy = lib.mkForce [ ];
      };
    };

  # Python run before every test script. The test driver's start_all() starts machines with
  # allow_reboot=False, i.e. qemu -no-reboot (nixpkgs nixos/lib/test-driver/src/test_driver/
  # machine/__init__.py, StartCommand.cmd): a guest that reboots ends its qemu. A test in which
  # pullnix reboots the machine starts it itself first (`allowReboot`); start_all() then leaves
  # it alone (Machine.start returns at once for a booted machine).
  prelude = flakesFile: allowReboot: ''
    import json
    import shlex
    import time

    FLAKES = json.load(open("${flakesFile}"))

    def commit(message, flake=None, reset_to=None, force=False):
        """Commits FLAKES[flake] as flake.nix on the server and pushes it; returns the sha."""
        lines = ["set -eu", "cd /root/work"]
        if reset_to:
            lines.append(f"git reset -q --hard {reset_to}")
        if flake is not None:
            lines.append(f"cat > flake.nix <<'PULLNIX_EOF'\n{FLAKES[flake]}\nPULLNIX_EOF")
            lines.append("git add flake.nix")
        lines.append(f"git commit -q --allow-empty -m {shlex.quote(message)}")
        lines.append(
            f"git push -q {'--force ' if force else '''}/srv/git/fleet.git HEAD:refs/heads/main"
        )
        lines.append("git rev-parse HEAD")
        return server.succeed("\n".join(lines)).strip().splitlines()[-1]

    def status():
        return json.loads(machine.succeed("pullnix status --json"))

    def sync():
        """One run of pullnix.service, as the timer would start it; returns pullnix's exit code."""
        machine.execute("systemctl start pullnix.service")
        return int(machine.succeed("systemctl show -P ExecMainStatus pullnix.service").strip())

    def settled(timeout=300):
        """Waits until no deployment is in flight and the confirm unit is done; returns the status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = status()
            # A oneshot: "activating" while it checks (nix/units.nix).
            confirming = machine.execute("systemctl is-active pullnix-confirm.service")[1].strip() in (
                "active",
                "activating",
                "deactivating",
            )
            if s["pending"] is None and not confirming:
                return s
            time.sleep(2)
        print(machine.execute("journalctl -u pullnix -u pullnix-confirm --no-pager")[1])
        raise Exception("pullnix did not settle")

    def marker():
        return machine.succeed("cat /etc/pullnix-fixture").strip()

    def journal_since(t, units=("pullnix", "pullnix-confirm")):
        args = " ".join(f"-u {u}" for u in units)
        return machine.succeed(f"journalctl {args} --since @{t} -o cat --no-pager")

    def now():
        return machine.succeed("date +%s").strip()

    def bad_commits():
        return [b["commit"] for b in status()["bad_commits"]]

    def deploy_baseline():
        """Deploys candidate v1, so every test starts from a deployed commit."""
        sha = commit("v1", "v1")
        assert sync() == 0, "the baseline sync failed"
        s = settled()
        assert s["deployed"]["commit"] == sha, s
        assert marker() == "v1", marker()
        return sha

    ${lib.optionalString allowReboot "machine.start(allow_reboot=True)"}
    start_all()
    server.wait_for_unit("git-daemon.service")
    server.succeed(
        "git init -q --bare -b main /srv/git/fleet.git",
        "git init -q -b main /root/work",
        "git -C /root/work config user.name fixture",
        "git -C /root/work config user.email fixture@pullnix.invalid",
    )
    machine.wait_for_unit("multi-user.target")
    machine.wait_until_succeeds("git ls-remote git://server/fleet.git")
  '';
in
{
  inherit serverNode machineModule rawFlakes;

  # name: test name; variants: name -> module (v1 is always there: the baseline);
  # machine: extra module for the machine; allowReboot: the machine may reboot (pullnix's boot
  # mode) and qemu must survive that; testScript: Python after the prelude.
  mkTest =
    {
      name,
      variants ? { },
      machine ? { },
      allowReboot ? false,
      testScript,
    }:
    pkgs.testers.runNixOSTest {
      name = "pullnix-${name}";
      nodes.server = serverNode;
      nodes.machine = {
        imports = [
          (machineModule ({ v1 = { }; } // variants))
          machine
        ];
      };
      testScript =
        { nodes, ... }:
        let
          flakes = lib.mapAttrs candidateFlake nodes.machine.pullnixTest.candidates // rawFlakes;
          flakesFile = pkgs.writeText "pullnix-fixture-flakes.json" (
            builtins.unsafeDiscardStringContext (builtins.toJSON flakes)
          );
        in
        prelude flakesFile allowReboot + testScript;
    };
}

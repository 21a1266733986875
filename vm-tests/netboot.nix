# Network install, end to end: a machine with an empty disk PXE-boots the pullnix installer,
# installs the configuration the fleet repository holds for it, reports to the provisioner,
# reboots, and comes up from its disk managed by pullnix.
#
# Modelled on nixpkgs' PXE tests (nixos/tests/boot.nix makeNetbootTest, nixos/tests/pixiecore.nix:
# a bare qemu whose NIC ROM is iPXE, and images that include test-instrumentation.nix so the
# driver can talk to them), but served the way a fleet serves it:
#
#   provisioner  services.pullnix-provisioner (flake nixosModules.provisioner): pixiecore in API
#                mode + `pullnix pxe-api` with one host, `client`, installing once (boot requests
#                on 127.0.0.1:8081, reports on 192.168.1.1:8080 with --state and --public-url);
#                dnsmasq hands out addresses (pixiecore is proxyDHCP only, with --dhcp-no-bind
#                next to dnsmasq); a git daemon serves the fleet repository (vm-tests/lib.nix
#                serverNode).
#   client       not a NixOS node: a qemu with an empty 8 GiB disk on VLAN 1, MAC
#                52:54:00:12:34:99, network first and disk second in its boot order
#                (create_machine).
#
# The fleet flake. Nothing is evaluated from nixpkgs inside the VMs (see vm-tests/lib.nix): the
# client's installed configuration (`installed` below: qemu-guest + test-instrumentation, GRUB on
# /dev/vda, ext4 root labelled "nixos", services.pullnix on the same repository) and its disk
# script (a hand-written `system.build.diskoScript`: parted, mkfs.ext4, mount under /mnt; no
# disko input) are built on the host with the VMs. The installer image carries both outputs and
# their .drv closures (system.extraDependencies), and the committed flake.nix says
#
#   nixosConfigurations.client.config.system.build.toplevel = import /nix/store/…-nixos-system-client-….drv;
#   nixosConfigurations.client.config.system.build.diskoScript = import /nix/store/…-client-disk-script.drv;
#
# so the installer's `nix build --impure` finds both outputs valid and builds nothing.
#
# What it proves: pxe-api hands the client the installer with `pullnix.host=client` and a
# `pullnix.report=` URL; pullnix-install.service runs `pullnix install`, which fetches over
# git://, "builds", runs the disk script, copies the system onto the disk, installs GRUB,
# seeds /var/lib/pullnix, POSTs the report and reboots; pxe-api then lists the MAC as installed
# and answers 404 for it, so the client's firmware falls through to the disk; the client runs
# the installed system, `pullnix status` names the installed commit, and its first sync is a
# no-op; `pullnix pxe-api forget` makes pxe-api offer the installer again.
#
# Not verifiable where this was written (no KVM, no nixpkgs): that SeaBIOS goes on to the disk
# after iPXE finds nothing to boot (bootindex order), that the installer's RAM (-m 6144) holds
# the image with the installed system in it, and the timeouts. vm-tests/README.md says so too.
{ pkgs, self }:
let
  inherit (pkgs) lib;
  testLib = import ./lib.nix { inherit pkgs self; };

  clientMac = "52:54:00:12:34:99";
  # The test framework numbers nodes in name order; the only node gets 192.168.1.1 on VLAN 1.
  provisionerIp = "192.168.1.1";
  fleetUrl = "git://${provisionerIp}/fleet.git";
  # Installers report here; boot requests are answered only on loopback (pixiecore's apiServer).
  api = "http://${provisionerIp}:8080";
  bootApi = "http://127.0.0.1:8081";

  # A store path as the fixture flake names it: the plain string (the installer's
  # extraDependencies carry the real dependency).
  plain = p: builtins.unsafeDiscardStringContext (toString p);
  drvOf = p: builtins.unsafeDiscardOutputDependency p.drvPath;

  # Partitions, formats and mounts the client's disk under /mnt, as disko's diskoScript would.
  diskScript = pkgs.writeShellScript "client-disk-script" ''
    set -euo pipefail
    export PATH=${
      lib.makeBinPath [
        pkgs.parted
        pkgs.e2fsprogs
        pkgs.util-linux
        pkgs.coreutils
        pkgs.systemd
      ]
    }
    parted --script /dev/vda -- mklabel msdos mkpart primary ext4 1MiB 100%
    udevadm settle
    mkfs.ext4 -q -F -L nixos /dev/vda1
    mkdir -p /mnt
    mount /dev/vda1 /mnt
  '';

  # The client's configuration in the fleet: what ends up on its disk.
  installed =
    (pkgs.nixos (
      { modulesPath, lib, ... }:
      {
        imports = [
          (modulesPath + "/profiles/qemu-guest.nix")
          (modulesPath + "/testing/test-instrumentation.nix")
          self.nixosModules.default
        ];
        networking.hostName = "client";
        boot.loader.grub.device = "/dev/vda";
        fileSystems."/" = {
          device = "/dev/disk/by-label/nixos";
          fsType = "ext4";
        };
        system.switch.enable = true;
        system.stateVersion = lib.trivial.release;
        documentation.enable = false;
        nix.settings.substituters = lib.mkForce [ ];
        environment.systemPackages = [ pkgs.git ];
        environment.etc."pullnix-fixture".text = "installed";

        services.pullnix = {
          enable = true;
          settings.repo.url = fleetUrl;
          # A closed test network (the module refuses git:// without signed commits otherwise).
          settings.repo.insecure_plaintext_without_signatures = true;
          settings.build.extra_args = [
            "--extra-experimental-features"
            "nix-command flakes"
            "--impure"
          ];
        };
        # The test starts the one sync it checks itself.
        systemd.timers.pullnix.wantedBy = lib.mkForce [ ];
      }
    )).config;
  installedToplevel = installed.system.build.toplevel;

  fleetFlake = pkgs.writeText "pullnix-netboot-fleet-flake.nix" ''
    {
      description = "pullnix VM test fleet: the network-installed client";
      # Built on the host with the VMs and carried by the installer image (vm-tests/netboot.nix).
      outputs = { self }: {
        nixosConfigurations.client.config.system.build = {
          toplevel = import ${plain (drvOf installedToplevel)};
          diskoScript = import ${plain (drvOf diskScript)};
        };
      };
    }
  '';

  qemu = "${pkgs.qemu_test}/bin/qemu-system-x86_64";
  # The driver adds its own monitor, backdoor console and serial options (and -no-reboot: a
  # reboot of the guest ends qemu, and the test starts it again). The NIC is on the driver's
  # VLAN 1 (vde_switch socket in $QEMU_VDE_SOCKET_1, which the driver exports); qemu runs in
  # the machine's state directory, where the test creates disk.raw.
  clientStart = lib.concatStringsSep " " [
    qemu
    "-machine accel=kvm:tcg"
    "-m 6144"
    "-netdev vde,id=net0,sock=$QEMU_VDE_SOCKET_1"
    "-device virtio-net-pci,netdev=net0,mac=${clientMac},bootindex=1"
    "-drive file=disk.raw,format=raw,if=none,id=disk0"
    "-device virtio-blk-pci,drive=disk0,bootindex=2"
  ];
in
pkgs.testers.runNixOSTest {
  name = "pullnix-netboot";

  nodes.provisioner =
    { pkgs, ... }:
    {
      imports = [
        self.nixosModules.provisioner
        testLib.serverNode
      ];
      virtualisation.memorySize = 2048;
      environment.systemPackages = [ pkgs.curl ];

      services.dnsmasq = {
        enable = true;
        resolveLocalQueries = false;
        settings = {
          port = 0; # DHCP only
          interface = "eth1";
          dhcp-range = [ "192.168.1.100,192.168.1.200,255.255.255.0,1h" ];
        };
      };
      networking.firewall.allowedUDPPorts = [ 67 ];

      services.pullnix-provisioner = {
        enable = true;
        openFirewall = true;
        # installOnce (the default) with publicUrl derived: http://192.168.1.1:8080.
        listenAddress = provisionerIp;
        hosts.client.mac = clientMac;
        # The installer as users get it, plus the driver's backdoor, the fleet's repository,
        # `--impure` for the imported .drv files, and the client's system in its store.
        installer =
          { modulesPath, lib, ... }:
          {
            imports = [ (modulesPath + "/testing/test-instrumentation.nix") ];
            pullnix.installer.repo = fleetUrl;
            pullnix.installer.settings.repo.insecure_plaintext_without_signatures = true;
            pullnix.installer.nixFlags = [ "--impure" ];
            nix.settings.substituters = lib.mkForce [ ];
            system.extraDependencies = [
              installedToplevel
              (drvOf installedToplevel)
              diskScript
              (drvOf diskScript)
            ];
          };
      };
    };

  testScript = ''
    import json
    import os
    import time

    FLEET = open("${fleetFlake}").read()
    API = "${api}"
    BOOT = "${bootApi}"
    STATE = "/var/lib/pullnix-provisioner"
    HOSTS = "/etc/pullnix/provisioning-hosts.toml"

    def installed_machines():
        out = provisioner.succeed(f"pullnix pxe-api installed --state {STATE} --json")
        return [(m["mac"], m["host"]) for m in json.loads(out)]

    def boot_status(mac):
        return provisioner.succeed(
            f"curl -s -o /dev/null -w '%{{http_code}}' {BOOT}/v1/boot/{mac}"
        ).strip()

    provisioner.start()
    provisioner.wait_for_unit("dnsmasq.service")
    provisioner.wait_for_unit("git-daemon.service")
    provisioner.wait_for_unit("pullnix-pxe-api.service")
    provisioner.wait_for_unit("pixiecore.service")
    provisioner.wait_for_open_port(8080, "${provisionerIp}")
    provisioner.wait_for_open_port(8081, "127.0.0.1")

    with subtest("the fleet repository holds the client's configuration"):
        provisioner.succeed(
            "git init -q --bare -b main /srv/git/fleet.git",
            "git init -q -b main /root/work",
            "git -C /root/work config user.name fixture",
            "git -C /root/work config user.email fixture@pullnix.invalid",
        )
        provisioner.succeed(f"cat > /root/work/flake.nix <<'PULLNIX_EOF'\n{FLEET}\nPULLNIX_EOF")
        provisioner.succeed(
            "git -C /root/work add flake.nix",
            "git -C /root/work commit -q -m client",
            "git -C /root/work push -q /srv/git/fleet.git HEAD:refs/heads/main",
        )
        head = provisioner.succeed("git -C /root/work rev-parse HEAD").strip()
        provisioner.succeed(f"git ls-remote ${fleetUrl} | grep -F {head}")

    with subtest("pxe-api answers for the client's MAC, in any spelling, with a report URL"):
        spec = json.loads(provisioner.succeed(f"curl -fsS {BOOT}/v1/boot/52-54-00-12-34-99"))
        assert spec["kernel"].startswith("file:///nix/store/"), spec
        assert len(spec["initrd"]) == 1, spec
        assert "pullnix.host=client" in spec["cmdline"], spec
        assert "pullnix.mac=${clientMac}" in spec["cmdline"], spec
        assert "init=/nix/store/" in spec["cmdline"], spec
        assert f"pullnix.report={API}/v1/installed/${clientMac}?token=" in spec["cmdline"], spec
        assert boot_status("52:54:00:00:00:01") == "404"
        assert installed_machines() == [], installed_machines()
        # The address installers reach answers reports only: no boot answer, no token there.
        code = provisioner.succeed(
            f"curl -s -o /dev/null -w '%{{http_code}}' {API}/v1/boot/${clientMac}"
        ).strip()
        assert code == "404", code

    with subtest("the bare client PXE-boots the installer, which installs it and reboots"):
        # create_machine(start_command, *, name=...) of the current driver (driver.py); the
        # name is the log prefix and the state directory, vm-state-client, where disk.raw goes.
        client = create_machine("${clientStart}", name="client")
        with open(os.path.join(client.state_dir, "disk.raw"), "wb") as disk:
            disk.truncate(8 * 1024**3)
        client.start()
        cmdline = client.succeed("cat /proc/cmdline")
        assert "pullnix.host=client" in cmdline, cmdline
        assert f"pullnix.report={API}/v1/installed/${clientMac}?token=" in cmdline, cmdline
        client.succeed("test -s /etc/pullnix/install.toml")
        provisioner.succeed(
            "journalctl -u pullnix-pxe-api -o cat | grep -F '${clientMac} is client (installs client)'"
        )

        # The install ends with the report and a reboot, which ends qemu (-no-reboot); watch
        # for the report on the provisioner, and for a failed unit in the installer meanwhile.
        deadline = time.monotonic() + 2400
        while not installed_machines():
            if time.monotonic() > deadline:
                raise Exception("the installer did not report a finished install")
            try:
                failed = client.execute("systemctl is-failed --quiet pullnix-install.service")[0] == 0
            except Exception:
                failed = False  # it went down between the two looks: reported and rebooting
            if failed:
                print(client.execute("journalctl -u pullnix-install -o cat --no-pager")[1])
                raise Exception("pullnix-install failed in the installer")
            time.sleep(5)
        client.wait_for_shutdown()

    with subtest("the report marked the client installed; pxe-api no longer boots it"):
        assert installed_machines() == [("${clientMac}", "client")], installed_machines()
        assert boot_status("${clientMac}") == "404"
        provisioner.succeed("journalctl -u pullnix-pxe-api -o cat | grep -F 'installed (reported from 192.168.1.'")

    with subtest("the client boots its installed system from disk"):
        client.start()
        client.wait_for_unit("multi-user.target", timeout=1200)
        assert "pullnix.host" not in client.succeed("cat /proc/cmdline")
        assert client.succeed("cat /etc/pullnix-fixture").strip() == "installed"
        assert client.succeed("readlink -f /run/current-system").strip() == "${plain installedToplevel}"
        client.succeed("findmnt -n -o SOURCE / | grep -F /dev/vda1")

    with subtest("pullnix on the client knows the installed commit; its first sync is a no-op"):
        before = json.loads(client.succeed("pullnix status --json"))
        assert before["deployed"]["commit"] == head, before
        client.wait_until_succeeds("git ls-remote ${fleetUrl}", timeout=300)
        t = client.succeed("date +%s").strip()
        client.execute("systemctl start pullnix.service")
        rc = client.succeed("systemctl show -P ExecMainStatus pullnix.service").strip()
        log = client.succeed(f"journalctl -u pullnix --since @{t} -o cat --no-pager")
        assert rc == "0", log
        assert "nix build" not in log, log
        after = json.loads(client.succeed("pullnix status --json"))
        assert after["deployed"] == before["deployed"], (before, after)

    with subtest("forget makes pxe-api offer the installer again"):
        provisioner.succeed(f"pullnix pxe-api forget --state {STATE} --hosts {HOSTS} client")
        assert installed_machines() == [], installed_machines()
        spec = json.loads(provisioner.succeed(f"curl -fsS {BOOT}/v1/boot/${clientMac}"))
        assert "pullnix.host=client" in spec["cmdline"], spec

    client.shutdown()
    provisioner.shutdown()
  '';
}

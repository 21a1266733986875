# Network install, first half: a machine with nothing on it PXE-boots the pullnix installer.
#
# Modelled on nixpkgs' netboot tests (nixos/tests/boot.nix, makeNetbootTest: a bare qemu started
# with `-boot order=n` whose NIC ROM is iPXE, and a netboot image that includes
# test-instrumentation.nix so the driver can talk to it), but served the way a fleet serves it:
#
#   provisioner  services.pullnix-provisioner (flake nixosModules.provisioner): pixiecore in API
#                mode + `pullnix pxe-api` with one host, `client`; dnsmasq hands out addresses
#                (pixiecore is proxyDHCP only, with --dhcp-no-bind next to dnsmasq).
#   client       not a NixOS node: a qemu with an empty disk-less machine on VLAN 1, MAC
#                52:54:00:12:34:99, booting from the network (create_machine).
#
# What it proves: pixiecore asks pxe-api for the client's MAC, pxe-api answers with the
# installer built from nix/netboot.nix, pixiecore serves that kernel and initrd, the client boots
# it with `pullnix.host=client pullnix.mac=…` on its kernel command line, and the installer's
# pullnix-install.service reads the host from there. An unknown MAC gets 404. The install itself
# (clone, disko, nixos-install, reboot) is not run: the image has no repository configured, so
# pullnix-install stops after naming the host, which the test checks.
{ pkgs, self }:
let
  clientMac = "52:54:00:12:34:99";
  qemu = "${pkgs.qemu_test}/bin/qemu-system-x86_64";
  # The driver adds its own monitor, backdoor console and serial options; the NIC is on the
  # driver's VLAN 1 (vde_switch socket in $QEMU_VDE_SOCKET_1, which the driver exports).
  clientStart = pkgs.lib.concatStringsSep " " [
    qemu
    "-machine accel=kvm:tcg"
    "-m 4096"
    "-netdev vde,id=net0,sock=$QEMU_VDE_SOCKET_1"
    "-device virtio-net-pci,netdev=net0,mac=${clientMac}"
    "-boot order=n"
  ];
in
pkgs.testers.runNixOSTest {
  name = "pullnix-netboot";

  nodes.provisioner =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.provisioner ];
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
        hosts.client.mac = clientMac;
        # The installer as users get it, plus the driver's backdoor.
        installer =
          { modulesPath, ... }:
          {
            imports = [ (modulesPath + "/testing/test-instrumentation.nix") ];
          };
      };
    };

  testScript = ''
    import json

    provisioner.start()
    provisioner.wait_for_unit("dnsmasq.service")
    provisioner.wait_for_unit("pullnix-pxe-api.service")
    provisioner.wait_for_unit("pixiecore.service")
    provisioner.wait_for_open_port(8080)

    with subtest("pxe-api answers for the client's MAC, in any spelling, and only for it"):
        spec = json.loads(provisioner.succeed("curl -fsS http://127.0.0.1:8080/v1/boot/52-54-00-12-34-99"))
        assert spec["kernel"].startswith("file:///nix/store/"), spec
        assert len(spec["initrd"]) == 1, spec
        assert "pullnix.host=client" in spec["cmdline"], spec
        assert "pullnix.mac=${clientMac}" in spec["cmdline"], spec
        assert "init=/nix/store/" in spec["cmdline"], spec
        status = provisioner.succeed(
            "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/v1/boot/52:54:00:00:00:01"
        )
        assert status == "404", status

    with subtest("the client PXE-boots the installer with its host on the command line"):
        client = create_machine("${clientStart}")
        client.start()
        client.wait_for_unit("multi-user.target", timeout=1200)
        cmdline = client.succeed("cat /proc/cmdline")
        assert "pullnix.host=client" in cmdline, cmdline
        assert "pullnix.mac=${clientMac}" in cmdline, cmdline
        client.succeed("pullnix --version")
        client.succeed("systemctl is-enabled sshd.service || systemctl is-active sshd.service")
        provisioner.succeed(
            "journalctl -u pullnix-pxe-api -o cat | grep -F '${clientMac} is client (installs client)'"
        )

    with subtest("pullnix-install read the host from /proc/cmdline"):
        client.wait_until_succeeds("journalctl -u pullnix-install -o cat | grep -F 'pullnix-install: host client'")
        client.wait_until_succeeds("journalctl -u pullnix-install -o cat | grep -F 'no repository'")

    client.shutdown()
    provisioner.shutdown()
  '';
}

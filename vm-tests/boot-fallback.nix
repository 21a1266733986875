# Boot mode with systemd-boot boot counting: a candidate whose kernel parameters change is
# deployed by reboot (switch.mode = "auto"). The candidate's kernel cannot start its initrd, so
# it panics and reboots (panic=1); systemd-boot counts the tries down, marks the entry bad and
# boots the previous generation; pullnix-boot-check sees the machine up on something other than
# the candidate, restores profile and boot default and records the commit bad.
#
# How the candidate fails: `rdinit=` names a program that is not in the initrd. The kernel then
# does not run the initrd at all and tries to mount a root file system itself (NixOS passes it
# none it could mount), and panics with "VFS: Unable to mount root fs". That happens before
# either stage 1 (scripted or systemd, the default on recent nixpkgs, which refuses
# boot.initrd.preLVMCommands) gets to run, so the test does not depend on which one the
# nixpkgs in use has.
#
# Needs boot.loader.systemd-boot.bootCounting in the nixpkgs used; vm-tests/default.nix only
# lists this test when the option exists.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "boot-fallback";
  # pullnix reboots the guest; under start_all() alone qemu would exit instead (-no-reboot).
  allowReboot = true;
  machine =
    { lib, ... }:
    {
      virtualisation.useBootLoader = true;
      virtualisation.useEFIBoot = true;
      boot.loader.systemd-boot.enable = true;
      boot.loader.efi.canTouchEfiVariables = true;
      boot.loader.systemd-boot.bootCounting = {
        enable = true;
        tries = 2;
      };
      services.pullnix.settings.switch.mode = "auto";
      services.pullnix.bootTries = 2;
    };
  variants.broken-boot = {
    # panic=1 (test-instrumentation.nix sets it too): reboot a second after the panic.
    boot.kernelParams = [
      "rdinit=/pullnix-vm-test/no-such-init"
      "panic=1"
    ];
  };
  testScript = ''
    v1 = deploy_baseline()
    v1_system = machine.succeed("readlink -f /run/current-system").strip()
    # The baseline was confirmed in test mode and is the (blessed) boot default.
    machine.succeed("bootctl list --no-pager >&2")

    bad = commit("candidate that does not boot", "broken-boot")
    # pullnix reboots the machine itself (switch.reboot_command); the driver loses its shell.
    machine.execute("systemctl start --no-block pullnix.service")
    machine.wait_for_console_text("Kernel panic - not syncing", timeout=900)
    # Through the failed boots of the candidate back to the previous generation: the next
    # command waits for the backdoor shell of the boot that comes up.
    machine.connected = False
    machine.wait_for_unit("multi-user.target", timeout=900)
    machine.wait_for_unit("pullnix-boot-check.service")

    s = settled()
    assert marker() == "v1", marker()
    assert machine.succeed("readlink -f /run/booted-system").strip() == v1_system
    assert bad in bad_commits(), s
    assert s["deployed"]["commit"] == v1, s
    # Profile and boot default are the previous generation again.
    machine.succeed(
        f'test "$(readlink -f /nix/var/nix/profiles/system)" = {v1_system}'
    )
    machine.succeed("bootctl list --no-pager >&2")

    # The next poll does not retry the bad commit (no reboot loop).
    t = now()
    assert sync() == 0
    assert "nix build" not in journal_since(t, units=("pullnix",))
  '';
}

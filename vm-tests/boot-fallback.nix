# Boot mode with systemd-boot boot counting: a candidate whose kernel parameters and initrd
# change is deployed by reboot (switch.mode = "auto"). The candidate's stage 1 exits, the
# kernel panics and reboots (panic=1); systemd-boot counts the tries down, marks the entry bad
# and boots the previous generation; pullnix-boot-check sees the machine up on something other
# than the candidate, restores profile and boot default and records the commit bad.
#
# Needs boot.loader.systemd-boot.bootCounting in the nixpkgs used; vm-tests/default.nix only
# lists this test when the option exists.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "boot-fallback";
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
  variants.broken-boot =
    { lib, ... }:
    {
      boot.kernelParams = [ "panic=1" ];
      # Scripted stage 1 (nixpkgs nixos/modules/system/boot/stage-1-init.sh): init exiting
      # makes the kernel panic, which reboots after a second because of panic=1.
      boot.initrd.preLVMCommands = lib.mkAfter ''
        echo "pullnix VM test: this candidate does not boot"
        exit 1
      '';
    };
  testScript = ''
    v1 = deploy_baseline()
    v1_system = machine.succeed("readlink -f /run/current-system").strip()
    # The baseline was confirmed in test mode and is the (blessed) boot default.
    machine.succeed("bootctl list --no-pager >&2")

    bad = commit("candidate that does not boot", "broken-boot")
    # pullnix reboots the machine itself (switch.reboot_command); the driver loses its shell.
    machine.execute("systemctl start --no-block pullnix.service")
    machine.wait_for_console_text("this candidate does not boot")
    # Through the failed boots of the candidate back to the previous generation.
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

# pullnix deploys a commit that changes pullnix itself (its package and its units). The switch
# must not kill the running sync (restartIfChanged = false, X-StopOnRemoval = false, the switch
# in a transient unit), and the confirmation must be done by the new generation's
# pullnix-confirm.service.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "self-update";
  variants.self-update =
    { config, pkgs, ... }:
    {
      # Same program, new store path: a wrapper package with a marker file.
      services.pullnix.package = pkgs.symlinkJoin {
        name = "pullnix-self-update";
        paths = [ (pkgs.callPackage ../nix/package.nix { }) ];
        postBuild = "echo self-update > $out/pullnix-self-update";
        meta.mainProgram = "pullnix";
      };
      # A changed unit as well.
      systemd.services.pullnix-confirm.environment.PULLNIX_VM_TEST = "self-update";
      services.pullnix.randomizedDelay = "2min";
    };
  testScript = ''
    v1 = deploy_baseline()
    old_exec = machine.succeed("systemctl show -P ExecStart pullnix-confirm.service")
    assert "pullnix-self-update" not in old_exec

    t = now()
    new = commit("pullnix updates itself", "self-update")
    assert sync() == 0, "the sync survived its own switch"
    assert machine.succeed("systemctl show -P Result pullnix.service").strip() == "success"
    s = settled()
    assert s["deployed"]["commit"] == new, s
    assert s["last"]["result"] == "deployed", s
    assert marker() == "self-update"

    # The units on disk and in systemd are the new ones ...
    machine.succeed("systemctl show -P ExecStart pullnix-confirm.service | grep -q pullnix-self-update")
    machine.succeed("systemctl show -P Environment pullnix-confirm.service | grep -q PULLNIX_VM_TEST=self-update")
    machine.succeed("systemctl cat pullnix.timer | grep -q RandomizedDelaySec=2min")
    # ... and the process that confirmed ran the new binary.
    machine.succeed(
        f"journalctl -u pullnix-confirm.service --since @{t} -o verbose --no-pager"
        " | grep '_CMDLINE=' | grep -q pullnix-self-update"
    )

    # The new pullnix keeps working: a no-op poll with the new unit.
    assert sync() == 0
    assert status()["deployed"]["commit"] == new
  '';
}

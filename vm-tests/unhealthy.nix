# A candidate that activates but fails its health checks (fixture-app.service dies) is reverted
# when confirm.timeout expires: the previous generation runs again, the commit is recorded bad
# and never retried, and the profile never pointed at the candidate.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "unhealthy";
  variants.unhealthy =
    { lib, pkgs, ... }:
    {
      systemd.services.fixture-app.serviceConfig.ExecStart = lib.mkForce "${pkgs.coreutils}/bin/false";
    };
  testScript = ''
    v1 = deploy_baseline()
    before = status()

    bad = commit("unhealthy", "unhealthy")
    assert sync() == 0, "sync hands over to pullnix-confirm and succeeds"
    machine.wait_until_succeeds("test \"$(cat /etc/pullnix-fixture)\" = unhealthy", timeout=60)
    s = settled(timeout=240)
    assert s["deployed"]["commit"] == v1, s
    assert s["last"]["result"] == "reverted", s
    assert bad in bad_commits(), s
    assert s["profile_generation"] == before["profile_generation"], s
    assert marker() == "v1"
    machine.wait_for_unit("fixture-app.service")
    # pullnix-confirm exits 9 (reverted): a real failure of that unit.
    assert machine.succeed("systemctl show -P ExecMainStatus pullnix-confirm.service").strip() == "9"

    # The bad commit is not tried again.
    t = now()
    assert sync() == 0
    assert "nix build" not in journal_since(t, units=("pullnix",))
    assert marker() == "v1"
  '';
}

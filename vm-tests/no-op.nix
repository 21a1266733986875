# A poll that finds the branch where it was ends after the fetch: no evaluation, no build, no
# new generation, no state change.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "no-op";
  testScript = ''
    v1 = deploy_baseline()
    before = status()
    state = machine.succeed("cat /var/lib/pullnix/state.json")

    t = now()
    for _ in range(3):
        assert sync() == 0
    log = journal_since(t, units=("pullnix",))
    assert "nix build" not in log, log
    assert "switch-to-configuration" not in log, log

    after = status()
    assert after["deployed"] == before["deployed"], (before, after)
    assert after["profile_generation"] == before["profile_generation"], (before, after)
    assert machine.succeed("cat /var/lib/pullnix/state.json") == state, "a no-op poll rewrote the state"
    assert marker() == "v1"
  '';
}

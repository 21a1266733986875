# A new commit is deployed: fetched, built (nothing to build: the candidate is in the store),
# activated with switch-to-configuration test, confirmed by pullnix-confirm.service, then made
# the system profile's newest generation and the boot default.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "deploy";
  variants.v2 = { };
  testScript = ''
    deploy_baseline()
    generation = status()["profile_generation"]

    t = now()
    v2 = commit("v2", "v2")
    assert sync() == 0
    s = settled()
    assert s["deployed"]["commit"] == v2, s
    assert s["last"]["result"] == "deployed", s
    assert marker() == "v2"
    assert s["profile_generation"] > generation, s
    machine.succeed(
        'test "$(readlink -f /run/current-system)" = "$(readlink -f /nix/var/nix/profiles/system)"'
    )
    log = journal_since(t)
    assert "running: nix build" in log, log
    # The switch ran in its own transient unit and the confirm unit did the confirming.
    assert "pullnix-switch-to-configuration" in log, log
    machine.succeed(f"journalctl -u pullnix-confirm --since @{t} -o cat | grep -q .")
    machine.succeed("systemctl is-active fixture-app.service")
  '';
}

# A commit whose system does not build changes nothing: the running system, the profile and the
# deployed commit stay; the failure is recorded with nix's stderr, and the next poll does not
# rebuild it (build.retry_failed_after).
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "build-failure";
  testScript = ''
    v1 = deploy_baseline()
    generation = status()["profile_generation"]

    broken = commit("broken build", "broken-build")
    assert sync() == 6, "exit 6: evaluation or build failed"
    s = status()
    assert s["deployed"]["commit"] == v1, s
    assert s["pending"] is None, s
    assert s["failed_build"]["commit"] == broken, s
    assert "this build fails on purpose" in s["failed_build"]["error"], s
    assert s["profile_generation"] == generation, s
    assert marker() == "v1"

    # The next poll skips the failed commit instead of building it again.
    t = now()
    assert sync() == 0
    assert "nix build" not in journal_since(t, units=("pullnix",))

    # A fix on top is deployed.
    fixed = commit("fixed", "v2")
    assert sync() == 0
    assert settled()["deployed"]["commit"] == fixed
    assert marker() == "v2"
  '';
  variants.v2 = { };
}

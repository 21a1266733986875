# A branch rewound by a force-push to a commit that does not descend from the deployed one is
# refused (exit 5) and nothing changes; a commit on top of the deployed one is deployed again.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "force-push";
  variants.v2 = { };
  variants.v3 = { };
  testScript = ''
    v1 = deploy_baseline()
    v2 = commit("v2", "v2")
    assert sync() == 0
    assert settled()["deployed"]["commit"] == v2

    # Rewrite history: a different commit on top of v1 replaces v2.
    rewritten = commit("v3 instead of v2", "v3", reset_to=v1, force=True)
    t = now()
    assert sync() == 5, "exit 5: refused"
    s = status()
    assert s["deployed"]["commit"] == v2, s
    assert s["last"]["result"] == "refused", s
    assert "does not descend" in journal_since(t, units=("pullnix",))
    assert "nix build" not in journal_since(t, units=("pullnix",))
    assert marker() == "v2"

    # Someone pushes v2 back and a new commit on top: deployed.
    server.succeed(f"cd /root/work && git reset -q --hard {v2}")
    v3 = commit("v3 on top of v2", "v3", force=True)
    assert sync() == 0
    assert settled()["deployed"]["commit"] == v3
    assert marker() == "v3"
  '';
}

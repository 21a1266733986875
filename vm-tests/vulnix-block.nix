# The vulnerability gate: a candidate whose build closure contains a package with a critical
# advisory is built, scanned with vulnix against an offline NVD mirror (crafted feeds served by
# python's http.server on the machine), blocked (exit 7) and recorded bad; it is never
# activated. With the mirror down the scan fails closed (exit 7) without marking the commit.
{ pkgs, self }:
(import ./lib.nix { inherit pkgs self; }).mkTest {
  name = "vulnix-block";
  machine =
    { pkgs, ... }:
    {
      services.pullnix.scan.enable = true;
      services.pullnix.settings.scan = {
        mirror = "http://127.0.0.1:8000/";
        cache_dir = "/var/cache/pullnix-vulnix";
      };
      environment.systemPackages = [
        pkgs.python3
        pkgs.curl
      ];
      # vulnix calls `nix show-derivation` / `nix derivation show`, which need nix-command.
      nix.settings.experimental-features = [
        "nix-command"
        "flakes"
      ];
    };
  testScript = ''
    v1 = deploy_baseline()

    # Mirror down first: no verdict, blocked for this pass only.
    vulnerable = commit("vulnerable dependency", "vulnerable")
    assert sync() == 7, "exit 7: no verdict blocks"
    s = status()
    assert s["deployed"]["commit"] == v1, s
    assert vulnerable not in bad_commits(), s
    # Whatever vulnix cached from the failed download must not count as up to date.
    machine.succeed("rm -rf /var/cache/pullnix-vulnix")

    machine.succeed(
        "python3 ${./nvd-feeds.py} /srv/nvd",
        "systemd-run --unit=nvd-mirror python3 -m http.server --bind 127.0.0.1 --directory /srv/nvd 8000",
    )
    machine.wait_until_succeeds("curl -fsS -o /dev/null http://127.0.0.1:8000/nvdcve-1.1-modified.json.gz")

    t = now()
    assert sync() == 7, "exit 7: blocked by the scan"
    s = status()
    assert s["deployed"]["commit"] == v1, s
    assert s["last"]["result"] == "blocked", s
    assert vulnerable in bad_commits(), s
    log = journal_since(t, units=("pullnix",))
    assert "CVE-2099-0001" in log, log
    assert "switch-to-configuration" not in log, log
    assert marker() == "v1"
  '';
}

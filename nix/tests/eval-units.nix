# Evaluates the unit mapping of the NixOS module (nix/unit-options.nix over nix/units.nix)
# without nixpkgs, for tests/nix_eval.rs:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-units.nix
#
# prints { plain = <options>; counted = <options with bootCounting>; rendered = <unit files> }.
let
  args = {
    pullnix = "/nix/store/00000000000000000000000000000000-pullnix/bin/pullnix";
    configFile = "/nix/store/00000000000000000000000000000000-pullnix.toml";
    interval = "7min";
    randomizedDelay = "30s";
    confirmTimeout = 120;
    watchdogSec = 45;
  };
  options = bootCounting: import ../unit-options.nix (import ../units.nix (args // { inherit bootCounting; }));
in
{
  plain = options false;
  counted = options true;
  # The same data through the nspawn renderer, so the test can check both consumers agree.
  rendered = import ../render-units.nix {
    inherit (args) pullnix configFile;
  };
}

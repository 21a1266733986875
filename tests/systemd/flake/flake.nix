# Fixture flake for the systemd tests (tests/systemd.rs): a fake NixOS configuration for the
# container's real root. Like tests/fixtures/flake it has no inputs and builds offline in a
# fraction of a second, but its switch-to-configuration acts on the real / of the container
# (which runs a real systemd), not on $TEST_ROOT.
#
# ./variant picks the behaviour (first word; the rest makes the output distinct):
#
#   good          /run/current-system -> out, (re)starts fixture-app.service, has `healthy`.
#   unhealthy     the same without `healthy`: fixture-app.service fails 3 s after it started,
#                 health checks fail.
#   broken        without `healthy`, and fixture-app.service fails as it starts, so the switch
#                 itself fails (exit 4: a unit failed), as NixOS's does.
#   own-units     like good, and treats pullnix's own units as changed the way NixOS's
#                 switch-to-configuration does: daemon-reload, then restart every changed unit
#                 unless its unit file says X-RestartIfChanged=false.
#   stop-agent    like good, but stops pullnix.service in the middle of the switch (as a switch
#                 would for a changed unit without X-RestartIfChanged=false), then finishes the
#                 activation and starts pullnix-confirm.service. Only the first time: the file
#                 /var/lib/fixture/stopped-agent remembers it.
#
# A word `no-pullnix` in the variant text makes a generation without pullnix's units (a system
# that does not enable services.pullnix yet); see switch-to-configuration.sh.
{
  description = "pullnix systemd test fixture";

  outputs = { self }:
    let
      variantText = builtins.readFile ./variant;
      variant = builtins.head (builtins.split "[[:space:]]+" variantText);
      known = [ "good" "unhealthy" "broken" "own-units" "stop-agent" ];
      toplevel =
        if !(builtins.elem variant known) then throw "fixture: unknown variant '${variant}'"
        else derivation {
          name = "nixos-system-ci";
          system = "x86_64-linux";
          inherit variant variantText;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          switchScript = ./switch-to-configuration.sh;
          args = [ "-c" ''
            set -eu
            mkdir -p $out/bin
            printf '%s' "$variantText" > $out/variant
            echo 26.11.pullnix-systemd-fixture > $out/nixos-version
            echo "fixture kernel" > $out/kernel
            sed -e "s|@out@|$out|g" -e "s|@variant@|$variant|g" $switchScript > $out/bin/switch-to-configuration
            chmod +x $out/bin/switch-to-configuration
            case "$variant" in
              unhealthy) ;;
              broken) echo broken > $out/broken ;;
              *) echo ok > $out/healthy ;;
            esac
          '' ];
        };
    in
    {
      nixosConfigurations.ci.config.system.build.toplevel = toplevel;
    };
}

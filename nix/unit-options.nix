# Maps the unit data of nix/units.nix onto NixOS `systemd.services.<name>` /
# `systemd.timers.<name>` option values. Plain builtins, no nixpkgs, so that
# nix/tests/eval-units.nix (run by tests/nix_eval.rs) can check the mapping with a bare
# `nix-instantiate --eval`.
#
# The option names are those of nixpkgs nixos/lib/systemd-unit-options.nix (`description`,
# `after`, `wants`, `before`, `requires`, `conflicts`, `wantedBy`, `requiredBy`, `unitConfig`,
# `serviceConfig`, `timerConfig`, `restartIfChanged`) and are rendered by
# nixos/lib/systemd-lib.nix: lists become repeated directives, booleans "true"/"false".
units:
let
  # Dependency directives that NixOS models as list options of their own; putting them into
  # unitConfig as well would emit them twice.
  listOptions = {
    After = "after";
    Wants = "wants";
    Before = "before";
    Requires = "requires";
    Conflicts = "conflicts";
  };
  # Directives that are options of their own, not raw unitConfig keys.
  special = builtins.attrNames listOptions ++ [ "Description" ];

  common =
    u:
    let
      unit = u.unit or { };
      install = u.install or { };
      lists = builtins.listToAttrs (
        map (d: {
          name = listOptions.${d};
          value = unit.${d};
        }) (builtins.filter (d: unit ? ${d}) (builtins.attrNames listOptions))
      );
    in
    lists
    // {
      # X-StopOnRemoval (and anything else) stays a raw unit directive: NixOS has no option for
      # it, and switch-to-configuration reads it from the unit file.
      unitConfig = removeAttrs unit special;
    }
    // (if unit ? Description then { description = unit.Description; } else { })
    // (if install ? WantedBy then { wantedBy = install.WantedBy; } else { })
    // (if install ? RequiredBy then { requiredBy = install.RequiredBy; } else { });

  service =
    u:
    common u
    // {
      serviceConfig = removeAttrs (u.service or { }) [ "X-RestartIfChanged" ];
    }
    # NixOS writes X-RestartIfChanged=false into [Service] itself for `restartIfChanged = false`
    # (nixos/lib/systemd-lib.nix); setting both would emit the directive twice.
    // (
      if (u.service or { }).X-RestartIfChanged or true then { } else { restartIfChanged = false; }
    );

  timer = u: common u // { timerConfig = u.timer or { }; };
in
{
  services = builtins.mapAttrs (_: service) (units.services or { });
  timers = builtins.mapAttrs (_: timer) (units.timers or { });
}

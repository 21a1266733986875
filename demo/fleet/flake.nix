# The demo's fleet repository: one host, "demo", whose "NixOS system" is small enough to build
# anywhere Nix runs, without nixpkgs and without network.
#
# pullnix builds nixosConfigurations.demo.config.system.build.toplevel, the attribute a real
# NixOS configuration provides. Here it is a derivation built by Nix's built-in `buildenv`
# builder (no shell, no coreutils, so it builds in any sandbox) over the directory ./system:
#
#   system/app                               what the "web app" of this generation does
#   system/bin/switch-to-configuration       the activation script pullnix runs (test, boot,
#                                            switch), acting on the demo's fake root
#
# Every commit that changes ./system gives a new store path, i.e. a new generation.
{
  description = "pullnix demo fleet";

  outputs = { self }:
    let
      files = builtins.path { path = ./system; name = "demo-system-files"; };
      toplevel = derivation {
        name = "nixos-system-demo";
        # Written by demo/run.sh: the machine's own platform (flakes cannot ask for it).
        system = builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile ./platform);
        builder = "builtin:buildenv";
        derivations = "true 5 1 ${files}";
        manifest = builtins.toFile "manifest.nix" "[ ]";
      };
    in
    {
      nixosConfigurations.demo.config.system.build = { inherit toplevel; };
    };
}

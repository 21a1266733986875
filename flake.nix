{
  description = "pullnix: pull-based (GitOps) deployment agent for NixOS";

  # Only nixpkgs. There is no flake.lock in the repository yet (it was written offline); the first
  # `nix flake check` / `nix build` creates it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: {
        pullnix = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        pullnix = pkgs.callPackage ./nix/package.nix { };
        default = pullnix;
      });

      # The module with its package defaulted to this flake's source, built with the machine's
      # own nixpkgs (so any system works, not only the two above). No overlay is applied:
      # `nixpkgs.overlays` cannot be set on machines that pass a read-only `nixpkgs.pkgs`.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.pullnix.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
        };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            pkg-config
            openssl
            zlib
            nix
            git
            vulnix
          ];
        };
      });

      # `nix flake check` builds the package and runs every NixOS VM test of vm-tests/
      # (vm-tests/default.nix lists them; they need KVM).
      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
        // import ./vm-tests { inherit pkgs self; }
      );
    };
}

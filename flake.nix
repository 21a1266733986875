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

        # The generic netboot installer (nix/netboot.nix with no settings): bzImage (Image on
        # aarch64), initrd, netboot.ipxe and `cmdline` (init=… and the image's kernel
        # parameters). No authorized key, no repository: the kernel command line must carry
        # pullnix.host= and pullnix.repo=. Build your own with lib.mkNetbootInstaller.
        netboot =
          let
            installer = (self.lib.mkNetbootInstaller { system = pkgs.stdenv.hostPlatform.system; }).config;
            build = installer.system.build;
          in
          pkgs.symlinkJoin {
            name = "pullnix-netboot";
            paths = [
              build.kernel
              build.netbootRamdisk
              build.netbootIpxeScript
              (pkgs.writeTextDir "cmdline" "init=${build.toplevel}/init ${toString installer.boot.kernelParams}")
            ];
          };
      });

      # The netboot installer as a NixOS system: nix/netboot.nix (options `pullnix.installer.*`)
      # plus your modules. Its config.system.build.{kernel,netbootRamdisk,netbootIpxeScript} are
      # what a PXE server serves.
      lib.mkNetbootInstaller =
        {
          system ? "x86_64-linux",
          modules ? [ ],
        }:
        nixpkgs.lib.nixosSystem {
          inherit system;
          modules = [ ./nix/netboot.nix ] ++ modules;
        };

      # The module with its package defaulted to this flake's source, built with the machine's
      # own nixpkgs (so any system works, not only the two above). No overlay is applied:
      # `nixpkgs.overlays` cannot be set on machines that pass a read-only `nixpkgs.pkgs`.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.pullnix.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
        };

      # services.pullnix-provisioner: pixiecore in API mode + `pullnix pxe-api` from a hosts
      # attrset, serving the installer of nix/netboot.nix (README "Provisioning").
      nixosModules.provisioner =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/provisioner.nix ];
          services.pullnix-provisioner.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
        };

      # The installer module alone, for your own nixosSystem (lib.mkNetbootInstaller wraps it).
      nixosModules.netboot = ./nix/netboot.nix;

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

      # `nix flake check` builds the package (running its unit tests), lints and format-checks
      # the crate, and runs every NixOS VM test of vm-tests/ (vm-tests/default.nix lists them;
      # they need KVM).
      checks = forAllSystems (
        pkgs:
        let
          pullnix = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        in
        {
          package = pullnix;

          # clippy as .ci/run runs it (Cargo.toml's [lints], pedantic; warnings are errors), on
          # the package's own source and vendored dependencies. clippy.toml (unwrap/expect
          # allowed in tests) is not part of the package's source, so it is copied in.
          clippy = pullnix.overrideAttrs (old: {
            pname = "pullnix-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            dontCargoBuild = true;
            dontCargoInstall = true;
            doCheck = false;
            buildPhase = ''
              runHook preBuild
              cp ${./clippy.toml} clippy.toml
              cargo clippy --offline --all-targets --features fault-injection -- -D warnings
              runHook postBuild
            '';
            installPhase = "touch $out";
          });

          # rustfmt follows the `mod` declarations from main.rs through all of src/; the
          # edition is the one of Cargo.toml, as `cargo fmt` would pass it.
          rustfmt =
            pkgs.runCommand "pullnix-rustfmt"
              {
                nativeBuildInputs = [ pkgs.rustfmt ];
              }
              ''
                rustfmt --check --edition ${(pkgs.lib.importTOML ./Cargo.toml).package.edition} ${pullnix.src}/src/main.rs
                touch $out
              '';
        }
        // import ./vm-tests { inherit pkgs self; }
      );
    };
}

# Every VM test, by name; the flake puts them into `checks.<system>`.
# Calling convention: each file is `{ pkgs, self }: <test derivation>`, where `self` is this
# flake (for nixosModules.default) and `pkgs` a nixpkgs package set for the host system.
{ pkgs, self }:
let
  call = file: import file { inherit pkgs self; };

  # boot.loader.systemd-boot.bootCounting is not in every nixpkgs revision (it was added and
  # later removed again); the boot fallback test depends on it. Only the option tree of an empty
  # configuration is evaluated here, which is cheap.
  hasBootCounting = (pkgs.nixos { }).options.boot.loader.systemd-boot ? bootCounting;
in
{
  vm-deploy = call ./deploy.nix;
  vm-no-op = call ./no-op.nix;
  vm-build-failure = call ./build-failure.nix;
  vm-unhealthy = call ./unhealthy.nix;
  vm-force-push = call ./force-push.nix;
  vm-vulnix-block = call ./vulnix-block.nix;
  vm-self-update = call ./self-update.nix;
}
// pkgs.lib.optionalAttrs hasBootCounting {
  vm-boot-fallback = call ./boot-fallback.nix;
}
// pkgs.lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
  # PXE boot of the netboot installer through services.pullnix-provisioner (BIOS iPXE ROM).
  vm-netboot = call ./netboot.nix;
}

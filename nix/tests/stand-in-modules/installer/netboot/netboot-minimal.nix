# Stand-in for nixpkgs nixos/modules/installer/netboot/netboot-minimal.nix, which is not in the
# nixpkgs subset (nix/tests/nixos-subset.nix): only the outputs nix/netboot.nix and
# nix/provisioner.nix read, as derivations that are never built, and a kernel parameter so
# that the installer's command line is not empty.
{ pkgs, ... }:
let
  standIn = name: pkgs.runCommand "${name}-stand-in" { } "exit 1";
in
{
  system.build = {
    kernel = standIn "linux";
    netbootRamdisk = standIn "initrd";
    netbootIpxeScript = standIn "netboot.ipxe";
    toplevel = standIn "nixos-system-installer";
  };
  boot.kernelParams = [ "loglevel=4" ];
}

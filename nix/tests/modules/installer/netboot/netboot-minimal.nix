# Stand-in for nixpkgs' nixos/modules/installer/netboot/netboot-minimal.nix, which is not among
# the nixpkgs files the tests have (../../../README of /work/shared/nixpkgs): nix/netboot.nix
# only imports it, and nothing the evaluation tests look at comes from it.
{ }

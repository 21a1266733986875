# What nix/package.nix hands to nixpkgs' rustPlatform.buildRustPackage, evaluated with a real
# nixpkgs `lib` (tests/package_source.rs copies `src` and builds it with cargo):
#
#   nix-instantiate --eval --strict --json --read-write-mode nix/tests/package-source.nix \
#     --argstr nixpkgs ../shared/nixpkgs
#
# `nixpkgs` is either the subset in ../shared/nixpkgs (only its lib/ is read; the other inputs of
# package.nix are never looked at, so they are null here) or, with `full = true`, a whole nixpkgs
# checkout, whose real callPackage and buildRustPackage then produce the derivation.
# Interpolating `src` copies the filtered tree into the store, which is why --read-write-mode.
{
  nixpkgs,
  full ? false,
}:
let
  lib = import (nixpkgs + "/lib");
  # buildRustPackage takes an attrset or (newer nixpkgs) a function of the final attrs.
  arguments = a: if builtins.isFunction a then lib.fix a else a;
  package =
    if full then
      (import nixpkgs { }).callPackage ../package.nix { }
    else
      import ../package.nix {
        inherit lib;
        rustPlatform.buildRustPackage = arguments;
        pkg-config = null;
        openssl = null;
        zlib = null;
      };
in
{
  src = "${package.src}";
  version = package.version;
  doCheck = package.doCheck or true;
  checkFlags = package.checkFlags or [ ];
}

# pullnix as a nixpkgs-style package: `callPackage ./nix/package.nix { }` (the flake's overlay
# does exactly that). Builder: nixpkgs pkgs/build-support/rust/build-rust-package/default.nix.
{
  lib,
  rustPlatform,
  pkg-config,
  openssl,
  zlib,
}:

let
  root = ../.;
  # Only what `cargo build` reads. Anything else (README, tests, bench, vm-tests, nix/) changing
  # must not rebuild the package, so the source is filtered to Cargo.toml, Cargo.lock and src/.
  wanted =
    path: type:
    let
      rel = lib.removePrefix (toString root + "/") (toString path);
    in
    rel == "Cargo.toml"
    || rel == "Cargo.lock"
    || rel == "src"
    || lib.hasPrefix "src/" rel;
in
rustPlatform.buildRustPackage {
  pname = "pullnix";
  version = (lib.importTOML ../Cargo.toml).package.version;

  src = lib.cleanSourceWith {
    src = root;
    filter = wanted;
    name = "pullnix-source";
  };

  cargoLock.lockFile = ../Cargo.lock;

  # gix's https transport is curl + OpenSSL (Cargo.toml). openssl-sys finds OpenSSL through
  # pkg-config. curl-sys builds its bundled libcurl (there is no libcurl in buildInputs on
  # purpose: one TLS stack, the one we test with), and that libcurl links zlib through libz-sys,
  # which also asks pkg-config; without zlib here libz-sys would compile its own copy.
  nativeBuildInputs = [ pkg-config ];
  buildInputs = [
    openssl
    zlib
  ];

  # The unit tests (the `#[cfg(test)]` modules of src/) run in the build, in release mode as
  # buildRustPackage's check phase does. The integration tests (tests/, not in this source) run
  # the real binary against real Nix, git servers, sshd and vulnix, some as root (README
  # "Testing"): they run in CI (.ci/run), and the NixOS VM tests (vm-tests/) exercise this very
  # package. tests/package_source.rs runs these unit tests with these flags as an unprivileged
  # user without a network, like the build sandbox; a unit test that needs root or a network
  # goes here as `"--skip=module::tests::name"`.
  doCheck = true;
  checkFlags = [ ];

  meta = {
    description = "Pull-based (GitOps) deployment agent for NixOS with rollback-armed activation";
    license = [
      lib.licenses.mit
      lib.licenses.asl20
    ];
    mainProgram = "pullnix";
    platforms = lib.platforms.linux;
  };
}

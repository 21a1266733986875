# Fixture flake of the boot-mode VM tests (tests/vm.rs): a fake NixOS just big enough to be booted
# by real firmware. Built by the real Nix 2.8 inside the guest (no inputs, offline), so pullnix
# there builds and switches for real. Its toplevel has what NixOS's toplevel has for booting
# (nixpkgs nixos/modules/system/activation/top-level.nix): `kernel` and `initrd` (store paths of
# their own, shared by every generation, as an unchanged kernel is on NixOS), `kernel-params`,
# `init` (stage 2), and `bin/switch-to-configuration`, whose `boot` action runs a systemd-boot
# builder that names entries as nixpkgs' does with boot counting (systemd-boot-builder.sh).
#
# ./variant picks the behaviour (first word; the rest only makes the output distinct):
#
#   good        boots, has the `healthy` marker, fixture-app.service runs.
#   unhealthy   boots, but without the marker: fixture-app.service fails, health checks fail.
#   no-boot     its stage 2 fails at once: the kernel panics and (panic=1) the machine resets.
{
  description = "pullnix VM test fixture";

  outputs = { self }:
    let
      system = "x86_64-linux";
      variantText = builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile ./variant);
      variant = builtins.head (builtins.split "[[:space:]]+" variantText);
      known = [ "good" "unhealthy" "no-boot" ];
      # The guest's Debian kernel and initrd (tests/vm/image.sh puts them there), copied into the
      # store: the build runs unsandboxed, as the guest's nix.conf says.
      copy = name: file: derivation {
        inherit name system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" "mkdir $out && cp /usr/lib/pullnix-vm/${file} $out/${file}" ];
      };
      linux = copy "linux-6.1-pullnix-vm" "bzImage";
      initrd = copy "initrd-pullnix-vm" "initrd";
      # boot.kernelParams of the fake configuration. panic=1: an unattended device resets on a
      # kernel panic instead of hanging, so systemd-boot gets to count the next try.
      kernelParams = "root=LABEL=root rw console=ttyS0 panic=1 quiet fsck.mode=skip mitigations=off";
      toplevel =
        if !(builtins.elem variant known) then throw "fixture: unknown variant '${variant}'"
        else derivation {
          name = "nixos-system-civm-26.11.pullnix-vm";
          inherit system variant variantText kernelParams;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          initScript = ./init.sh;
          switchScript = ./switch-to-configuration.sh;
          bootBuilder = ./systemd-boot-builder.sh;
          args = [ "-c" ''
            set -eu
            mkdir -p $out/bin
            printf '%s' "$variantText" > $out/variant
            echo "26.11.pullnix-vm ($variantText)" > $out/nixos-version
            ln -s ${linux}/bzImage $out/kernel
            ln -s ${initrd}/initrd $out/initrd
            printf '%s' "$kernelParams" > $out/kernel-params
            subst() { sed -e "s|@out@|$out|g" -e "s|@variant@|$variant|g" -e "s|@builder@|$out/bin/systemd-boot-builder|g" "$1" > "$2"; chmod +x "$2"; }
            subst $initScript $out/init
            subst $switchScript $out/bin/switch-to-configuration
            subst $bootBuilder $out/bin/systemd-boot-builder
            if [ "$variant" != unhealthy ]; then echo ok > $out/healthy; fi
          '' ];
        };
    in
    {
      nixosConfigurations.civm.config.system.build.toplevel = toplevel;
    };
}

# NixOS module: the pullnix network-boot installer (README "Provisioning").
#
# An image built on nixpkgs' netboot-minimal profile (nixos/modules/installer/netboot/), which
# provides config.system.build.{kernel,netbootRamdisk,netbootIpxeScript}: the whole system is a
# squashfs inside the initrd, so kernel + initrd is all a machine needs. On top of it:
#
#   * pullnix, git and nix with flakes;
#   * sshd with root login by key only (`pullnix.installer.authorizedKeys`);
#   * pullnix-install.service, which runs once per boot when the kernel command line carries
#     `pullnix.host=<name>` (pullnix pxe-api puts it there from the hosts file), and then:
#       1. clones `repo` (kernel parameter `pullnix.repo=` wins over the option) with the deploy
#          key, if the remote is ssh;
#       2. partitions, formats and mounts the disks under /mnt by running
#          `nixosConfigurations.<name>.config.system.build.diskoScript` of that flake, the script
#          disko's NixOS module (disko.nixosModules.disko) builds from the host's own
#          `disko.devices` (set `partitioning = "none"` and a `preInstall` script to do it yourself);
#       3. copies the deploy key into the installed system (`installDeployKeyTo`), so its
#          services.pullnix can fetch the same repository;
#       4. `nixos-install --flake <clone>#<name> --no-root-passwd`, then reboots into it.
#
# The deploy key. A file named by `deployKeyFile` is copied into the Nix store and so into the
# initrd: anyone who can PXE-boot a machine on that network (pixiecore hands the initrd to every
# MAC of the hosts file, and the HTTP download itself is unauthenticated) can read it. The
# default is therefore no key in the image: the installer waits until the key appears at
# `deployKeyPath` (a tmpfs), put there over ssh with the authorized key, e.g.
#   scp -o StrictHostKeyChecking=no deploy-key root@<installer-ip>:/run/keys/pullnix-deploy
# A repository reachable without a key (https, git://, a local mirror) needs neither.
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:

let
  inherit (lib) mkOption types literalExpression;

  cfg = config.pullnix.installer;

  # The key as the image carries it, if the user asked for that (see the header).
  bakedKey =
    if cfg.deployKeyFile == null then
      null
    else
      builtins.path {
        path = cfg.deployKeyFile;
        name = "pullnix-installer-deploy-key";
      };

  knownHostsFile = pkgs.writeText "pullnix-installer-known-hosts" cfg.knownHosts;

  installScript = pkgs.writeShellScript "pullnix-install" ''
    set -euo pipefail
    log() { echo "pullnix-install: $*" >&2; }

    host=""
    repo=${lib.escapeShellArg cfg.repo}
    branch=${lib.escapeShellArg cfg.branch}
    # /proc/cmdline: words separated by blanks; pxe-api filled in {host} and {mac}.
    for word in $(cat /proc/cmdline); do
      case "$word" in
        pullnix.host=*) host="''${word#pullnix.host=}" ;;
        pullnix.repo=*) repo="''${word#pullnix.repo=}" ;;
        pullnix.branch=*) branch="''${word#pullnix.branch=}" ;;
      esac
    done
    if ! [[ "$host" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
      log "kernel parameter pullnix.host=\"$host\" is not a configuration name; nothing installed"
      exit 2
    fi
    log "host $host"
    if [ -z "$repo" ]; then
      log "no repository: set pullnix.installer.repo or put pullnix.repo=URL on the kernel command line (hosts file cmdline)"
      exit 2
    fi
    log "repository $repo, branch $branch"

    key=${lib.escapeShellArg cfg.deployKeyPath}
    ${lib.optionalString (bakedKey != null) ''
      install -D -m 0600 ${bakedKey} "$key"
    ''}
    ssh_opts="-o BatchMode=yes ${
      if cfg.knownHosts != "" then
        "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=${knownHostsFile}"
      else
        "-o StrictHostKeyChecking=accept-new"
    }"
    case "$repo" in
      ssh://* | *@*:*)
        waited=0
        while [ ! -s "$key" ]; do
          if [ $((waited % 60)) -eq 0 ]; then
            log "waiting for the deploy key at $key (scp it there as root; it stays on tmpfs)"
          fi
          sleep 5
          waited=$((waited + 5))
        done
        chmod 0600 "$key"
        export GIT_SSH_COMMAND="ssh $ssh_opts -i $key -o IdentitiesOnly=yes"
        ;;
    esac

    work=/tmp/pullnix-install
    rm -rf "$work"
    mkdir -p "$work"
    git clone --quiet --depth 1 --branch "$branch" "$repo" "$work/repo"
    flake="$work/repo"
    log "cloned $(git -C "$flake" rev-parse HEAD)"

    nixflags=(--extra-experimental-features "nix-command flakes" ${lib.escapeShellArgs cfg.nixFlags})

    ${
      if cfg.partitioning == "disko" then
        ''
          attr="nixosConfigurations.$host.config.system.build.diskoScript"
          if ! disko=$(nix "''${nixflags[@]}" build --no-link --print-out-paths "$flake#$attr"); then
            log "cannot build $attr: the host's configuration must import disko.nixosModules.disko and set disko.devices (or use pullnix.installer.partitioning = \"none\")"
            exit 3
          fi
          log "partitioning with $disko (destroys the disks it names)"
          "$disko"
        ''
      else
        ''
          log "partitioning = none: expecting the target file systems mounted under /mnt"
        ''
    }
    ${cfg.preInstall}
    if ! mountpoint -q /mnt; then
      log "/mnt is not a mount point; refusing to install into the installer's tmpfs"
      exit 3
    fi

    ${lib.optionalString (cfg.installDeployKeyTo != null) ''
      if [ -s "$key" ]; then
        install -D -m 0600 "$key" "/mnt${cfg.installDeployKeyTo}"
        log "deploy key copied to ${cfg.installDeployKeyTo} of the installed system"
      fi
    ''}

    log "nixos-install --flake $flake#$host"
    nixos-install --flake "$flake#$host" --no-root-passwd --no-channel-copy \
      --option extra-experimental-features "nix-command flakes" ${lib.escapeShellArgs cfg.nixFlags}
    log "installed $host"
    ${lib.optionalString cfg.reboot ''
      log "rebooting into the installed system"
      systemctl --no-block reboot
    ''}
  '';
in
{
  imports = [ (modulesPath + "/installer/netboot/netboot-minimal.nix") ];

  options.pullnix.installer = {
    package = mkOption {
      type = types.package;
      default = pkgs.pullnix or (pkgs.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.pullnix or (pkgs.callPackage ./nix/package.nix { })";
      description = "pullnix carried by the image (for `pullnix status` checks and by hand).";
    };

    repo = mkOption {
      type = types.str;
      default = "";
      example = "ssh://git@git.example.org/fleet/nixos.git";
      description = ''
        Fleet repository (a flake with `nixosConfigurations.<host>`). The kernel parameter
        `pullnix.repo=URL` overrides it, so one image can serve several fleets. Empty: the
        kernel parameter is required.
      '';
    };

    branch = mkOption {
      type = types.str;
      default = "main";
      description = "Branch to install from; the kernel parameter `pullnix.branch=` overrides it.";
    };

    authorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAA… admin@example.org" ];
      description = "SSH public keys allowed to log in as root to the installer (key only, no password).";
    };

    deployKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = ''
        Private key copied into the image at build time. Anyone who can network-boot the image
        can read it; prefer the default (null) and copy the key to `deployKeyPath` over ssh.
      '';
    };

    deployKeyPath = mkOption {
      type = types.str;
      default = "/run/keys/pullnix-deploy";
      description = "Where the installer expects the deploy key for an ssh remote (tmpfs).";
    };

    knownHosts = mkOption {
      type = types.lines;
      default = "";
      example = "git.example.org ssh-ed25519 AAAA…";
      description = ''
        known_hosts lines for the git server. Empty: the first host key seen is accepted
        (trust on first use, in a network you boot machines from).
      '';
    };

    installDeployKeyTo = mkOption {
      type = types.nullOr types.str;
      default = "/var/lib/pullnix/deploy-key";
      description = ''
        Path in the installed system the deploy key is copied to (mode 0600); point that host's
        `services.pullnix.deployKeyFile` at it. null: do not copy.
      '';
    };

    partitioning = mkOption {
      type = types.enum [
        "disko"
        "none"
      ];
      default = "disko";
      description = ''
        `disko`: run `nixosConfigurations.<host>.config.system.build.diskoScript` of the fleet
        flake (disko's NixOS module provides it), which wipes, partitions, formats and mounts
        under /mnt. `none`: `preInstall` must leave the target mounted under /mnt.
      '';
    };

    preInstall = mkOption {
      type = types.lines;
      default = "";
      description = "Shell run after partitioning, before nixos-install (`$host`, `$flake` are set).";
    };

    nixFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--option"
        "substituters"
        "http://cache.lan"
      ];
      description = "Extra arguments for nix build and nixos-install.";
    };

    reboot = mkOption {
      type = types.bool;
      default = true;
      description = "Reboot into the installed system when nixos-install succeeded.";
    };
  };

  config = {
    warnings = lib.optional (cfg.deployKeyFile != null) ''
      pullnix.installer.deployKeyFile is set: the deploy key is inside the netboot initrd, readable by
      anyone who can PXE-boot this image. Prefer copying it to ${cfg.deployKeyPath} over ssh.
    '';

    environment.systemPackages = [
      cfg.package
      pkgs.git
    ];
    nix.settings.experimental-features = [
      "nix-command"
      "flakes"
    ];

    services.openssh = {
      enable = true;
      settings.PermitRootLogin = lib.mkForce "prohibit-password";
      settings.PasswordAuthentication = lib.mkForce false;
    };
    users.users.root.openssh.authorizedKeys.keys = cfg.authorizedKeys;

    systemd.services.pullnix-install = {
      description = "pullnix: install the configuration named by pullnix.host= on the kernel command line";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      unitConfig.ConditionKernelCommandLine = "pullnix.host";
      path = [
        config.nix.package
        (config.system.build.nixos-install or pkgs.nixos-install)
        pkgs.git
        pkgs.openssh
        pkgs.util-linux
        pkgs.coreutils
        config.systemd.package
      ];
      environment.HOME = "/root";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = installScript;
        StandardOutput = "journal+console";
        StandardError = "journal+console";
      };
    };
  };
}

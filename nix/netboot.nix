# NixOS module: the pullnix network-boot installer (README "Provisioning").
#
# An image built on nixpkgs' netboot-minimal profile (nixos/modules/installer/netboot/), which
# provides config.system.build.{kernel,netbootRamdisk,netbootIpxeScript}: the whole system is a
# squashfs inside the initrd, so kernel + initrd is all a machine needs. On top of it:
#
#   * pullnix, git and nix with flakes;
#   * sshd with root login by key only (`pullnix.installer.authorizedKeys`);
#   * /etc/pullnix/install.toml: an ordinary pullnix configuration file (README "Configuration")
#     rendered from the options below, with `pullnix.installer.settings` on top (closure mode, a
#     CA file, signed commits, the vulnerability scan, … work as for `pullnix sync`);
#   * pullnix-install.service, which runs once per boot when the kernel command line carries
#     `pullnix.host=<name>` (pullnix pxe-api puts it there from the hosts file) and runs
#     `pullnix --config /etc/pullnix/install.toml install`. pullnix itself reads `pullnix.host=`,
#     `pullnix.repo=`, `pullnix.branch=` and `pullnix.report=` from /proc/cmdline, fetches and
#     builds the host's system in this installer's store, and only then runs the host's disk
#     script (`partitioning = "disko"`: `nixosConfigurations.<name>.config.system.build.diskoScript`
#     of the fleet flake), copies the system onto the disks under /mnt, installs its boot loader,
#     seeds its /var/lib/pullnix, tells the provisioner (`pullnix.report=`) and reboots
#     (README "Installing: `pullnix install`"). The unit is a oneshot without restarts: a failed
#     install stays failed, with pullnix's message in the journal and on the console. Being a
#     oneshot it has no start timeout either, which the report relies on: it is retried until
#     the provisioner hears it, since a reboot before that boots this installer again.
#
# The deploy key. A file named by `deployKeyFile` is copied into the Nix store and so into the
# initrd: anyone who can PXE-boot a machine on that network (pixiecore hands the initrd to every
# MAC of the hosts file, and the HTTP download itself is unauthenticated) can read it. The
# default is therefore no key in the image: for an ssh remote (or a repository that only the
# kernel command line names, on an image you can log in to) pullnix waits until the key appears
# at `deployKeyPath` (a tmpfs), put there over ssh with the authorized key, e.g.
#   scp -o StrictHostKeyChecking=no deploy-key root@<installer-ip>:/run/keys/pullnix-deploy
# and copies it to `installDeployKeyTo` in the installed system. A repository reachable without
# a key (https, git://, a local mirror) needs neither.
{
  config,
  options,
  lib,
  pkgs,
  modulesPath,
  ...
}:

let
  inherit (lib)
    mkOption
    mkDefault
    types
    literalExpression
    ;

  cfg = config.pullnix.installer;

  toml = pkgs.formats.toml { };

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

  shared = import ./lib.nix { inherit lib; };
  inherit (shared) isSsh isPlainText;
  repoSetting = name: cfg.settings.repo.${name} or null;

  # Secrets of the installer's configuration whose file would be in the store, and so in the
  # initrd every machine on the provisioning network can download (lib.nix, secretExposure).
  # The key of `deployKeyFile` is baked in on purpose (a warning says so); it is installed at
  # `deployKeyPath` at boot, which is what repo.deploy_key names then.
  secret =
    setting: via:
    let
      value = repoSetting setting;
    in
    {
      name =
        if via != null && value == cfg.${via} then
          "pullnix.installer.${via}"
        else
          "pullnix.installer.settings.repo.${setting}";
      reason = shared.secretExposure config.environment.etc value;
    };
  deployKey = secret "deploy_key" "deployKeyPath";
  credentials = secret "credentials_file" null;
  secretMessage = s: what: how: ''
    ${s.name}: the ${what} would be in the Nix store, and so in the netboot image that anyone on the
    provisioning network can download: ${toString s.reason}. Leave the file out of the image and name
    it by a string: ${how}. Never write it with environment.etc, pkgs.writeText or a Nix path
    (./file); a secret that has been in a store or an image before is public: replace it.
  '';

  # Whether repo.deploy_key is set at all (pullnix uses and checks it only for ssh remotes).
  useKey = cfg.deployKeyFile != null || cfg.waitForDeployKey;

  configFile = toml.generate "pullnix-install.toml" cfg.settings;

  # Runs before pullnix (ExecStartPre): puts a baked-in key in place, then the user's preInstall.
  needPre = bakedKey != null || cfg.preInstall != "";
  preScript = pkgs.writeShellScript "pullnix-install-pre" ''
    set -euo pipefail
    ${lib.optionalString (bakedKey != null) ''
      install -D -m 0600 ${bakedKey} ${lib.escapeShellArg cfg.deployKeyPath}
    ''}
    # For preInstall: the host pxe-api named, and where pullnix expects the new root.
    host=""
    for word in $(cat /proc/cmdline); do
      case "$word" in
        pullnix.host=*) host="''${word#pullnix.host=}" ;;
      esac
    done
    target=${lib.escapeShellArg (toString (cfg.settings.install.target or "/mnt"))}
    export host target
    ${cfg.preInstall}
  '';
in
{
  imports = [ (modulesPath + "/installer/netboot/netboot-minimal.nix") ];

  options.pullnix.installer = {
    package = mkOption {
      type = types.package;
      default = pkgs.pullnix or (pkgs.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.pullnix or (pkgs.callPackage ./nix/package.nix { })";
      description = "pullnix carried by the image; pullnix-install.service runs its `install`.";
    };

    repo = mkOption {
      type = types.str;
      default = "";
      example = "ssh://git@git.example.org/fleet/nixos.git";
      description = ''
        Fleet repository (a flake with `nixosConfigurations.<host>`), `repo.url` of the
        installer's configuration. The kernel parameter `pullnix.repo=URL` overrides it, so one
        image can serve several fleets. Empty: the kernel parameter is required.
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
      description = ''
        `repo.deploy_key` of the installer when it uses a key (`waitForDeployKey`, or
        `deployKeyFile`): where the key is expected (a tmpfs).
      '';
    };

    waitForDeployKey = mkOption {
      type = types.bool;
      default =
        cfg.deployKeyFile == null && (isSsh cfg.repo || (cfg.repo == "" && cfg.authorizedKeys != [ ]));
      defaultText = lib.literalMD "on when `deployKeyFile` is null and `repo` is an ssh remote, or `repo` is empty and `authorizedKeys` is not";
      description = ''
        Use a deploy key copied in after boot: `repo.deploy_key = deployKeyPath` and
        `install.wait_for_deploy_key = true`, so pullnix waits (logging once a minute) until the
        key is there. The default is on for an ssh `repo`, and for an empty `repo` (the
        kernel command line names it) on an image someone can log in to. pullnix only waits
        for, and checks, the key when the repository is an ssh remote, so an https or git://
        URL on the kernel command line installs without one.
      '';
    };

    knownHosts = mkOption {
      type = types.lines;
      default = "";
      example = "git.example.org ssh-ed25519 AAAA…";
      description = ''
        known_hosts lines for the git server (`repo.known_hosts`); `pullnix install` copies them
        to /var/lib/pullnix/known_hosts in the installed system (`install.known_hosts_to`). Empty:
        an ssh repository is refused, here at evaluation and by pullnix for one named on the
        kernel command line, unless `settings.repo.insecure_accept_new_host_keys = true`
        (trust on first use).
      '';
    };

    installDeployKeyTo = mkOption {
      type = types.nullOr types.str;
      default = "/var/lib/pullnix/deploy-key";
      description = ''
        Path in the installed system the deploy key is copied to (mode 0600,
        `install.deploy_key_to`); point that host's `services.pullnix.deployKeyFile` at it.
        null: do not copy.
      '';
    };

    partitioning = mkOption {
      type = types.enum [
        "disko"
        "none"
      ];
      default = "disko";
      description = ''
        `disko`: pullnix builds `nixosConfigurations.<host>.config.system.build.diskoScript` of
        the fleet flake (disko's NixOS module provides it; `install.disk_script` names another
        attribute) and runs it after the system has built; it wipes, partitions, formats and
        mounts under /mnt. `none`: the new root must already be mounted at /mnt (see `preInstall`).
      '';
    };

    preInstall = mkOption {
      type = types.lines;
      default = "";
      example = ''
        mkfs.ext4 -F -L nixos /dev/sda1
        mount /dev/disk/by-label/nixos "$target"
      '';
      description = ''
        Shell run as root before `pullnix install` (ExecStartPre of pullnix-install.service),
        with `$host` (from `pullnix.host=`) and `$target` (the install target, /mnt) set; a
        failure stops the install. Meant for `partitioning = "none"`, where it must mount the new
        root at `$target`. Unlike a disk script it runs before the system is fetched and built.
      '';
    };

    nixFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--option"
        "substituters"
        "http://cache.lan"
      ];
      description = "Extra arguments for `nix build` (`build.extra_args`, after the flakes feature flags).";
    };

    reboot = mkOption {
      type = types.bool;
      default = true;
      description = "Reboot into the installed system when the install succeeded (`install.reboot`).";
    };

    settings = mkOption {
      type = types.submodule { freeformType = toml.type; };
      default = { };
      example = literalExpression ''
        {
          closure = {
            enable = true;
            substituters = [ "https://cache.example.org" ];
            trusted_public_keys = [ "cache.example.org-1:…" ];
          };
          repo.allowed_signers = "/etc/pullnix/allowed_signers";
        }
      '';
      description = ''
        pullnix's configuration for the install, rendered to /etc/pullnix/install.toml (tables
        and keys as in the README's "Configuration", including `[install]`). The options above
        fill in their keys as defaults; anything set here wins over them.
      '';
    };
  };

  config = {
    assertions = [
      {
        assertion =
          !isSsh cfg.repo
          || cfg.knownHosts != ""
          || repoSetting "known_hosts" != null
          || (repoSetting "insecure_accept_new_host_keys") == true;
        message = ''
          pullnix.installer.repo (${cfg.repo}) is an ssh remote, and pullnix.installer.knownHosts is empty:
          the installer would trust whichever host answers first and install what it serves. Set
          knownHosts to the server's key (`ssh-keyscan HOST`, checked out of band), or accept the risk with
          pullnix.installer.settings.repo.insecure_accept_new_host_keys = true.
        '';
      }
      {
        assertion =
          !isPlainText cfg.repo
          || repoSetting "allowed_signers" != null
          || (repoSetting "insecure_plaintext_without_signatures") == true;
        message = ''
          pullnix.installer.repo (${cfg.repo}) is a plain-text transport (git:// or http://): anyone on the
          provisioning network could serve the installer a configuration of their own. Use https:// or
          ssh://, or require signed commits with pullnix.installer.settings.repo.allowed_signers, or accept
          the risk with pullnix.installer.settings.repo.insecure_plaintext_without_signatures = true.
        '';
      }
      {
        assertion = deployKey.reason == null;
        message = secretMessage deployKey "deploy key" "keep deployKeyPath on a tmpfs (the default, ${options.pullnix.installer.deployKeyPath.default}) and copy the key there over ssh after boot (with waitForDeployKey = true, pullnix waits for it)";
      }
      {
        assertion = credentials.reason == null;
        message = secretMessage credentials "git login" "copy it to the installer over ssh after boot (e.g. to /run/keys/pullnix-credentials), then `systemctl restart pullnix-install`";
      }
    ];

    warnings =
      lib.optional (cfg.deployKeyFile != null) ''
        pullnix.installer.deployKeyFile is set: the deploy key is inside the netboot initrd, readable by
        anyone who can PXE-boot this image. Prefer copying it to ${cfg.deployKeyPath} over ssh.
      ''
      ++ lib.optional (cfg.waitForDeployKey && cfg.authorizedKeys == [ ]) ''
        pullnix.installer.waitForDeployKey is on but authorizedKeys is empty: nobody can log in to copy the
        key to ${cfg.deployKeyPath}, so the installer would wait forever. Add an authorized key, or set
        waitForDeployKey = false (a repository that needs no key), or put the key there in preInstall.
      ''
      ++ lib.optional (cfg.partitioning == "none" && cfg.preInstall == "") ''
        pullnix.installer.partitioning = "none" without preInstall: pullnix-install fails at once unless
        the new root is already mounted at ${toString (cfg.settings.install.target or "/mnt")}. Mount it in preInstall, or by hand over ssh and then
        `systemctl restart pullnix-install`.
      '';

    pullnix.installer.settings = {
      repo =
        {
          url = mkDefault cfg.repo;
          branch = mkDefault cfg.branch;
        }
        // lib.optionalAttrs useKey { deploy_key = mkDefault cfg.deployKeyPath; }
        // lib.optionalAttrs (cfg.knownHosts != "") { known_hosts = mkDefault "${knownHostsFile}"; };
      build.extra_args = mkDefault (
        [
          "--extra-experimental-features"
          "nix-command flakes"
        ]
        ++ cfg.nixFlags
      );
      # Not waiting for the reboot job lets pullnix, and the unit, finish with success.
      switch.reboot_command = mkDefault [
        "systemctl"
        "--no-block"
        "reboot"
      ];
      install = {
        partitioning = mkDefault cfg.partitioning;
        deploy_key_to = mkDefault (if cfg.installDeployKeyTo == null then "" else cfg.installDeployKeyTo);
        wait_for_deploy_key = mkDefault cfg.waitForDeployKey;
        reboot = mkDefault cfg.reboot;
      };
    };

    environment.etc."pullnix/install.toml".source = configFile;

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
      # What `pullnix install` runs: nix (build, copy, nix-env; git for nix's git fetcher),
      # mount/umount, chroot/cp, curl (the report), ssh (ssh remotes), systemctl (reboot).
      path = [
        config.nix.package
        pkgs.git
        pkgs.util-linux
        pkgs.coreutils
        pkgs.curl
        pkgs.openssh
        config.systemd.package
      ] ++ lib.optional (cfg.settings.scan.enable or false) pkgs.vulnix;
      environment.HOME = "/root";
      # A switch of the installer itself must not start a second install.
      restartIfChanged = false;
      serviceConfig = {
        # One attempt per boot: no Restart=, and a oneshot has no start timeout, so a long build
        # or a wait for the deploy key is not cut short. A failure leaves the unit failed.
        Type = "oneshot";
        ExecStartPre = lib.mkIf needPre "${preScript}";
        ExecStart = "${lib.getExe cfg.package} --config /etc/pullnix/install.toml install";
        StandardOutput = "journal+console";
        StandardError = "journal+console";
      };
    };
  };
}

# pullnix's systemd units as plain data, with no dependency on nixpkgs.
#
# This file is the one description of the units. nix/module.nix turns it into
# `systemd.services`/`systemd.timers` options; nix/render-units.nix turns it into unit files so the
# very same units run under a real systemd in CI (tests/systemd.rs). Sections are attrsets of
# directive -> value (string, number, bool, or list for repeated directives).
{
  # The pullnix binary, e.g. "${pkgs.pullnix}/bin/pullnix".
  pullnix,
  # The rendered TOML config file.
  configFile,
  # OnBootSec of the timer: the first poll after boot.
  onBoot ? "1min",
  # OnUnitActiveSec of the timer: time between polls.
  interval ? "5min",
  # RandomizedDelaySec of the timer, so a fleet does not poll in lockstep.
  randomizedDelay ? "1min",
  # AccuracySec of the timer: systemd may postpone an elapsed timer by up to this much to batch
  # wakeups (systemd.timer(5)); a minute is nothing for a 5-minute poll, tests want seconds.
  accuracy ? "1min",
  # confirm.timeout from the config, in seconds; the confirm unit may run that long.
  confirmTimeout ? 300,
  # WatchdogSec of the confirm unit: a confirm that stops sending WATCHDOG=1 is killed.
  watchdogSec ? 60,
  # Order confirm (and boot-check) before boot-complete.target, so that systemd-bless-boot only
  # blesses a boot in which pullnix confirmed (boot.loader.systemd-boot.bootCounting).
  bootCounting ? false,
}:
let
  exec = args: "${pullnix} --config ${configFile} ${args}";
  # switch-to-configuration must never stop or restart these units in the middle of their own
  # switch (what killed the bash prototype): X-StopOnRemoval=false makes it leave a removed unit
  # alone, X-RestartIfChanged=false a changed one. It reads the first from [Unit] and the second
  # from [Service] (nixpkgs pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs,
  # parse_systemd_bool), which is also where NixOS writes them (nixos/lib/systemd-lib.nix).
  survivesSwitch = {
    X-StopOnRemoval = false;
  };
  notRestartedBySwitch = {
    X-RestartIfChanged = false;
  };
in
{
  services = {
    pullnix = {
      unit = survivesSwitch // {
        Description = "pullnix: deploy the configured branch";
        Wants = [ "network-online.target" ];
        After = [ "network-online.target" "pullnix-boot-check.service" ];
      };
      service = notRestartedBySwitch // {
        Type = "oneshot";
        ExecStart = exec "sync";
        # 3: another pullnix holds the lock (a confirm in its window): not a failure of this poll.
        # A lock taken for longer than lock_stalled_after is exit 15, which is one.
        SuccessExitStatus = [ 3 ];
        # A build can take long; the timer does not start a second run while this one is active.
        TimeoutStartSec = "infinity";
      };
    };

    pullnix-confirm = {
      unit = survivesSwitch // {
        Description = "pullnix: confirm or revert the activated candidate";
        Wants = [ "network-online.target" ];
        # The default dependencies of a service, spelled out, minus one: a service wanted by
        # multi-user.target is otherwise also ordered before it (systemd.target(5)), and as a
        # oneshot (below) it would hold multi-user.target for the whole confirmation window.
        DefaultDependencies = false;
        Requires = [ "sysinit.target" ];
        After = [ "sysinit.target" "basic.target" "network-online.target" "pullnix-boot-check.service" ];
        Conflicts = [ "shutdown.target" ];
        Before = [ "shutdown.target" ] ++ (if bootCounting then [ "boot-complete.target" ] else [ ]);
      };
      service = notRestartedBySwitch // {
        # Type=notify: the start job ends at pullnix's READY=1, which `pullnix confirm` sends
        # with the verdict when the verdict decides whether this boot is good (the machine
        # booted an unconfirmed boot-mode candidate): READY=1 when it is confirmed, never when
        # it is reverted (exit 9). So boot-complete.target, which requires this unit, is reached
        # only after pullnix confirmed, and systemd-bless-boot never blesses a reverted
        # candidate's boot. In every other case (nothing to confirm, a test-mode candidate, a
        # record another pullnix is busy with) READY=1 comes at once: every
        # switch-to-configuration starts the active targets, and so this unit, and waits for
        # those jobs, and boot-complete.target's job waits for this unit's. A start job that
        # lasted a whole test-mode confirmation deadlocked its own revert (the revert's switch
        # waited for boot-complete.target, which waited for the confirm running that switch)
        # and held up any other switch for the window: that was the oneshot this unit was
        # before. READY=1 sent before any health check, as before that, blessed every candidate
        # that came up, healthy or not, on real firmware (tests/vm.rs).
        Type = "notify";
        # READY=1, STATUS= and WATCHDOG=1 come from pullnix itself.
        NotifyAccess = "main";
        ExecStart = exec "confirm";
        WatchdogSec = watchdogSec;
        # A confirm killed by the watchdog starts again; it then finds the deadline passed and
        # reverts. Exit 9 (reverted) is a real failure and is not restarted.
        Restart = "on-abnormal";
        RestartSec = 5;
        TimeoutStartSec = confirmTimeout + 60;
      };
      install = {
        # Runs at every boot: after a boot-mode reboot into a candidate it does the confirming;
        # otherwise it finds nothing to confirm and exits. Any switch starts it again; it then
        # waits for STATE/lock only for a candidate in its confirmation window, and leaves
        # everything else to the pullnix holding the lock (src/confirm.rs, `command`).
        WantedBy = [ "multi-user.target" ];
      } // (if bootCounting then { RequiredBy = [ "boot-complete.target" ]; } else { });
    };

    pullnix-boot-check = {
      # Also survives a switch: restarted by a switch (as NixOS does for a changed active unit,
      # and RemainAfterExit keeps it active), it would wait for the lock that the sync running
      # this very switch holds (a deadlock until its start times out, failing the switch), and
      # run mid-deployment it would count the switch as an interrupted boot.
      #
      # Any switch that starts multi-user.target while this unit is not active (it failed at
      # boot, or it is new in the generation: the deployment that enables pullnix) starts it
      # again, and multi-user.target's job waits for it, while the pullnix running the switch
      # holds STATE/lock. So it compares the kernel's boot id with the one in the record and
      # does nothing (without the lock) in the boot that wrote the record (src/confirm.rs,
      # `boot_check`).
      #
      # It runs with a service's default dependencies, i.e. after basic.target, not early in
      # sysinit: when it reverts, it restores the boot default with switch-to-configuration,
      # which pullnix runs through systemd-run (switch.systemd_run). Before sysinit.target there
      # is no D-Bus socket yet ("Failed to connect to bus", seen on real firmware in
      # tests/vm.rs: the boot-check failed with exit 8 and left the old boot default), and a
      # transient unit would wait for basic.target, which waited for the boot-check. Nothing is
      # lost by running later: pullnix.service and pullnix-confirm.service are ordered after it,
      # and systemd-boot counts the try in the firmware anyway.
      unit = survivesSwitch // {
        Description = "pullnix: account for a boot of an unconfirmed candidate";
        Before = if bootCounting then [ "boot-complete.target" ] else [ ];
      };
      service = notRestartedBySwitch // {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = exec "boot-check";
        # 9: it closed the record of a candidate the reboot left unconfirmed, i.e. did its job.
        # As a failure it would leave the unit failed until the next boot, the system
        # "degraded", and every later candidate failing health.system_running.
        SuccessExitStatus = [ 9 ];
      };
      install.WantedBy = [ "multi-user.target" ];
    };
  };

  timers.pullnix = {
    unit.Description = "pullnix: poll the configured branch";
    timer = {
      # The first poll comes OnBootSec after boot, so a poll missed while the machine was off is
      # caught up then. (No Persistent=: it only applies to OnCalendar= timers.)
      OnBootSec = onBoot;
      OnUnitActiveSec = interval;
      RandomizedDelaySec = randomizedDelay;
      AccuracySec = accuracy;
    };
    install.WantedBy = [ "timers.target" ];
  };
}

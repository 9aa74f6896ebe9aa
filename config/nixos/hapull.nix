# NixOS module for hapull on the backup machine: `services.hapull`.
#
# Import it (imports = [ ./hapull.nix ];) and set, for example:
#
#   services.hapull = {
#     enable = true;
#     package = pkgs.callPackage ./package.nix { };   # or a flake's packages.${system}.default
#     tokenFile = "/run/secrets/ha_token";            # agenix / sops-nix; never a store path
#     settings = {
#       home_assistant.url = "http://homeassistant.lan:8123";
#       ssh = {
#         host = "homeassistant.lan";
#         user = "backup";
#         identity_file = "/var/lib/hapull/id_ed25519";   # `hapull init --dir /var/lib/hapull` makes it
#         known_hosts = "/var/lib/hapull/known_hosts";
#       };
#       schedule.timezone = "Europe/Berlin";
#       store = { keep_last = 24; keep_daily = 7; keep_weekly = 4; keep_monthly = 12; };
#     };
#   };
#
# `settings` is written to /etc/hapull/hapull.toml as is (keys as in config/hapull.example.toml);
# secrets go in files referenced by *_file keys, never into `settings` (the Nix store is world-readable).
# Written from nixpkgs' usual module patterns without a Nix evaluator at hand: check it with
# `nixos-rebuild build` before relying on it.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.hapull;
  format = pkgs.formats.toml { };

  defaultSettings = {
    home_assistant = lib.optionalAttrs (cfg.tokenFile != null) {
      # Where systemd puts the LoadCredential copy for a system service.
      token_file = "/run/credentials/hapull.service/ha_token";
    };
    store.dir = "/var/lib/hapull/archives";
    audit.path = "/var/lib/hapull/audit.jsonl";
    schedule.state_file = "/var/lib/hapull/state.json";
  };

  configFile = format.generate "hapull.toml" (lib.recursiveUpdate defaultSettings cfg.settings);
in
{
  options.services.hapull = {
    enable = lib.mkEnableOption "hapull, which pulls verified Home Assistant backups to this machine";

    package = lib.mkOption {
      type = lib.types.package;
      description = "The hapull package to use.";
    };

    rclonePackage = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = pkgs.rclone;
      defaultText = lib.literalExpression "pkgs.rclone";
      description = ''
        rclone, for [[offsite]] targets: put on the service's PATH (hapull runs `rclone` unless a
        target sets `rclone = "/path"`). Keep rclone's own config (it may hold tokens) out of the Nix
        store, e.g. settings.offsite = [ { remote = "b2:bucket/ha"; config = "/var/lib/hapull/rclone.conf"; } ].
        null: no rclone.
      '';
    };

    settings = lib.mkOption {
      type = format.type;
      default = { };
      description = ''
        hapull's configuration, written to /etc/hapull/hapull.toml. See config/hapull.example.toml
        for every key. Do not put secrets here: use tokenFile and the *_file keys.
      '';
    };

    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/ha_token";
      description = ''
        A file holding Home Assistant's long-lived access token. It is passed to the service with
        systemd's LoadCredential, so it may be readable by root only. When null, set
        settings.home_assistant.token_file yourself.
      '';
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = "hapull";
      description = "The user hapull runs as.";
    };

    group = lib.mkOption {
      type = lib.types.str;
      default = "hapull";
      description = "The group hapull runs as.";
    };

    shutdownTimeout = lib.mkOption {
      type = lib.types.str;
      default = "3min";
      description = ''
        How long systemd waits after SIGTERM before killing hapull. Keep it longer than
        settings.schedule.shutdown_grace (default 2m), which a running transfer may use to finish.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."hapull/hapull.toml".source = configFile;
    environment.systemPackages = [ cfg.package ] ++ lib.optional (cfg.rclonePackage != null) cfg.rclonePackage;

    users.users = lib.mkIf (cfg.user == "hapull") {
      hapull = {
        isSystemUser = true;
        group = cfg.group;
        home = "/var/lib/hapull";
      };
    };
    users.groups = lib.mkIf (cfg.group == "hapull") { hapull = { }; };

    systemd.services.hapull = {
      description = "hapull: pull verified Home Assistant backups";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      path = lib.optional (cfg.rclonePackage != null) cfg.rclonePackage;

      serviceConfig = {
        Type = "exec";
        User = cfg.user;
        Group = cfg.group;
        ExecStart = "${lib.getExe' cfg.package "hapull"} -c /etc/hapull/hapull.toml run";
        LoadCredential = lib.optional (cfg.tokenFile != null) "ha_token:${cfg.tokenFile}";
        KillSignal = "SIGTERM";
        KillMode = "mixed";
        TimeoutStopSec = cfg.shutdownTimeout;
        Restart = "on-failure";
        RestartSec = "30s";
        # Exit code 2 is a configuration error: restarting cannot fix it.
        RestartPreventExitStatus = 2;

        StateDirectory = "hapull";
        StateDirectoryMode = "0750";
        ReadWritePaths = [ "/var/lib/hapull" ];
        UMask = "0077";

        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}

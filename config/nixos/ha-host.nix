# NixOS, on the Home Assistant host: the read-only SFTP account hapull pulls archives from.
# Import it next to services.home-assistant and put the line `hapull init` printed into
# authorizedKeys below. Written from nixpkgs' usual patterns without a Nix evaluator at hand.
{ lib, ... }:

{
  users.users."hapull-sftp" = {
    isSystemUser = true;
    # Home Assistant's group: the archives are hass:hass and group-readable (UMask below).
    group = "hass";
    # No password, not locked: sshd refuses locked accounts even with a key.
    hashedPassword = "*";
    # nologin is enough: ForceCommand internal-sftp never starts a shell.
    openssh.authorizedKeys.keys = [
      ''restrict,from="192.0.2.10" ssh-ed25519 AAAA...replace-me... hapull@backuphost''
    ];
  };

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
    extraConfig = ''
      Match User hapull-sftp
          AuthenticationMethods publickey
          ForceCommand internal-sftp -R
          AllowTcpForwarding no
          AllowAgentForwarding no
          AllowStreamLocalForwarding no
          PermitTunnel no
          X11Forwarding no
          PermitTTY no
          PermitUserRC no
    '';
  };

  # nixpkgs runs Home Assistant with UMask 0077: archives 0600 in a 0700 folder, unreadable by its
  # group. 0027 lets the group read what Home Assistant writes from now on.
  systemd.services.home-assistant.serviceConfig.UMask = lib.mkForce "0027";

  # The folders: the group may enter. (If the home-assistant unit manages /var/lib/hass as its
  # StateDirectory, systemd resets the mode at each start; this keeps it at 0750. Harmless otherwise.)
  systemd.services.home-assistant.serviceConfig.StateDirectoryMode = lib.mkForce "0750";
  systemd.tmpfiles.rules = [
    "z /var/lib/hass 0750 hass hass - -"
    "z /var/lib/hass/backups 0750 hass hass - -"
  ];
  # Archives that already exist: once, by hand, `chmod -R g+rX /var/lib/hass/backups`
  # (capital -R; the widely copied lowercase `chmod -r g+rx` REMOVES read permission).
}

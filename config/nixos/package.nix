# hapull as a Nix package: `pkgs.callPackage ./config/nixos/package.nix { }` from the source tree.
# Written from nixpkgs' usual buildRustPackage pattern without a Nix evaluator at hand.
{ lib, rustPlatform, installShellFiles, openssh }:

rustPlatform.buildRustPackage {
  pname = "hapull";
  version = (lib.importTOML ../../Cargo.toml).package.version;
  src = lib.cleanSource ../..;
  cargoLock.lockFile = ../../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];
  # The SFTP tests start a real OpenSSH sshd.
  nativeCheckInputs = [ openssh ];

  postInstall = ''
    installShellCompletion --cmd hapull \
      --bash <($out/bin/hapull completions bash) \
      --zsh <($out/bin/hapull completions zsh) \
      --fish <($out/bin/hapull completions fish)
    $out/bin/hapull man > hapull.1
    installManPage hapull.1
  '';

  meta = {
    description = "Pull verified Home Assistant backups to a separate machine";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "hapull";
    platforms = lib.platforms.linux;
  };
}

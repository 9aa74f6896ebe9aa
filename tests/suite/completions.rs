//! `hapull completions <shell>` and `hapull man`: generated from the command line, so every subcommand
//! a user can type shows up in them.

use std::process::Command;

const SUBCOMMANDS: &[&str] = &[
    "check",
    "events",
    "run",
    "health",
    "once",
    "pull",
    "list",
    "verify",
    "prune",
    "trust-host",
    "audit",
    "init",
    "completions",
    "man",
];

fn hapull(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completion_scripts_know_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = hapull(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
}

#[test]
fn bash_completion_script_is_valid_bash() {
    let script = hapull(&["completions", "bash"]);
    let status = Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn man_page_documents_every_subcommand_and_the_exit_codes() {
    let page = hapull(&["man"]);
    assert!(page.contains(".TH hapull 1"), "{page}");
    for sub in SUBCOMMANDS {
        let escaped = sub.replace('-', "\\-");
        assert!(
            page.contains(&format!("\\fBhapull {escaped}\\fR")),
            "man page lacks {sub}"
        );
    }
    assert!(page.contains(".SH EXIT STATUS"));
}

#[test]
fn unknown_shell_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

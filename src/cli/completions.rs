//! `hapull completions <shell>` and `hapull man`: shell completion scripts and a roff man page, both
//! generated from the command-line definition so they cannot drift from it. Both only write to
//! standard output; installing them is left to the packager or the user.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, EXIT_OK};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {}

/// Writes the completion script, e.g. `hapull completions bash > /etc/bash_completion.d/hapull`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "hapull", &mut buf);
    write_stdout(&buf)?;
    Ok(ExitCode::from(EXIT_OK))
}

/// Writes hapull(1), e.g. `hapull man > /usr/local/share/man/man1/hapull.1`.
pub fn man(_args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render_title(&mut buf)
        .and_then(|_| render_body(&cmd, &mut buf))
        .context("rendering the man page")?;
    write_stdout(&buf)?;
    Ok(ExitCode::from(EXIT_OK))
}

/// The page's sections, with one SUBCOMMANDS entry per command carrying its own options, so `man hapull`
/// documents every command without a page per subcommand.
fn render_body(cmd: &clap::Command, out: &mut Vec<u8>) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        writeln!(out, ".TP\n\\fBhapull {}\\fR", roff_escape(name))?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            writeln!(out, "{}", roff_escape(&about.to_string()))?;
        }
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
        {
            let flag = match (arg.get_short(), arg.get_long()) {
                (Some(s), Some(l)) => format!("-{s}, --{l}"),
                (None, Some(l)) => format!("--{l}"),
                (Some(s), None) => format!("-{s}"),
                (None, None) => format!("<{}>", arg.get_id()),
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            writeln!(
                out,
                ".RS\n.TP\n{}\n{}\n.RE",
                roff_escape(&flag),
                roff_escape(&help)
            )?;
        }
        for nested in sub.get_subcommands() {
            let about = nested
                .get_about()
                .map(|a| a.to_string())
                .unwrap_or_default();
            writeln!(
                out,
                ".RS\n.TP\n\\fBhapull {} {}\\fR\n{}\n.RE",
                roff_escape(name),
                roff_escape(nested.get_name()),
                roff_escape(&about)
            )?;
        }
    }
    writeln!(
        out,
        ".SH EXIT STATUS\n.TP\n0\nSuccess.\n.TP\n1\nThe command ran and failed (a check failed, no archive was committed, ...).\n.TP\n2\nBad usage or configuration: nothing was attempted."
    )?;
    writeln!(
        out,
        ".SH FILES\n.TP\n/etc/hapull/hapull.toml\nThe configuration (\\fB--config\\fR, \\fBHAPULL_CONFIG\\fR); \\fBhapull init\\fR writes a commented one."
    )?;
    man.render_version_section(out)?;
    Ok(())
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would read as a request.
fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    s.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_stdout(buf: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(buf).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // `hapull man | head` closing the pipe early is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

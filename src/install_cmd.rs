//! What a package installs beside the binary: shell completion scripts and man pages, generated
//! from the same clap definition that parses the arguments (so they never drift from `--help`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Command;

/// Prints the completion script for `shell` to stdout.
pub fn completions(mut cmd: Command, shell: clap_complete::Shell) -> ExitCode {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Prints `diskstream.1` to stdout, or with `dir` writes `diskstream.1` and one
/// `diskstream-COMMAND[-SUBCOMMAND].1` page per command into it.
pub fn man(cmd: Command, dir: Option<&Path>) -> ExitCode {
    let res = match dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout().lock()),
        Some(d) => write_pages(cmd, d),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        // `diskstream man | head`: the reader has what it wanted.
        Err(e) if dir.is_none() && e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "diskstream: error: writing man pages{}: {e}",
                dir.map(|d| format!(" into {}", d.display())).unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    }
}

/// Writes the page of `cmd` and, recursively, of each of its subcommands (named
/// `parent-child`, as git and cargo name theirs); `help` and hidden commands are skipped. Each
/// page replaces its file atomically (a new file renamed over the name): a symlink planted
/// under a page's name is replaced, never followed.
fn write_pages(cmd: Command, dir: &Path) -> std::io::Result<()> {
    let cmd = cmd.disable_help_subcommand(true);
    cmd.clone().build();
    let mut stack = vec![(cmd.get_name().to_string(), cmd)];
    while let Some((name, cmd)) = stack.pop() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_name = format!("{name}-{}", sub.get_name());
            stack.push((sub_name.clone(), sub.clone().name(sub_name)));
        }
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        diskstream_orchestrator::fsutil::atomic_write(&dir.join(format!("{name}.1")), &buf, 0o644)?;
    }
    Ok(())
}

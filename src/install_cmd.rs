//! What a package installs beside the binary: shell completion scripts and man pages, generated
//! from the same clap definition that parses the arguments (so they never drift from `--help`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Command;

/// Prints the completion script for `shell` to stdout.
pub fn completions(mut cmd: Command, shell: clap_complete::Shell) -> ExitCode {
    let name = cmd.get_name().to_string();
    // Into memory first: clap_complete panics on a failed write (`| head`, a full disk).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `diskstream completions fish | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "diskstream: error: writing the completion script: {e}"
            );
            ExitCode::FAILURE
        }
    }
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
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(std::io::Error::other("it is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(std::io::Error::other("no such directory (create it first)"))
        }
        Err(e) => return Err(e),
    }
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
        let page = dir.join(format!("{name}.1"));
        diskstream_orchestrator::fsutil::atomic_write(&page, &buf, 0o644)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", page.display())))?;
    }
    Ok(())
}

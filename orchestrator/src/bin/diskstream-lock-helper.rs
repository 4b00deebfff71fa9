//! `diskstream-lock-helper`: holds locks from the command line until stdin closes.
//!
//! Usage: `diskstream-lock-helper LOCKDIR LABEL [--timeout SECS] LEVEL:NAME[,NAME...]:MODE...`
//!
//! Acquires each spec in order (the BGL must come first, as for any owner), prints `granted`
//! on stdout, then holds everything until stdin reaches end of file or reads a `release` line.
//! On failure it prints `error: <message>` and exits 1. The cross-process locking tests use it
//! as "another diskstream"; it is also handy to reproduce a stuck lock by hand.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use diskstream_orchestrator::locking::{LockLevel, LockManager, LockMode};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            println!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: diskstream-lock-helper LOCKDIR LABEL [--timeout SECS] LEVEL:NAMES:MODE...";
    let dir = args.next().ok_or(usage)?;
    let label = args.next().ok_or(usage)?;
    let mut timeout = Duration::from_secs(10);
    let mut specs = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--timeout" {
            let secs: f64 = args
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("--timeout needs a number of seconds")?;
            timeout = Duration::from_secs_f64(secs);
            continue;
        }
        let mut parts = arg.splitn(3, ':');
        let (Some(level), Some(names), Some(mode)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("bad lock spec '{arg}' ({usage})"));
        };
        let level: LockLevel = level.parse()?;
        let mode: LockMode = mode.parse()?;
        let names: Vec<String> = names.split(',').map(String::from).collect();
        specs.push((level, names, mode));
    }
    let manager = LockManager::new(dir).map_err(|e| e.to_string())?;
    let mut owner = manager.owner(label);
    for (level, names, mode) in &specs {
        owner
            .acquire(*level, names, *mode, timeout)
            .map_err(|e| e.to_string())?;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "granted").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in io::stdin().lock().lines() {
        match line {
            Ok(l) if l.trim() == "release" => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(owner);
    Ok(())
}

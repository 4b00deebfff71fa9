//! [`tune`]: glibc's large copies without `rep movsb` on AMD CPUs, for the processes that move
//! disk data over TLS (the agent, `net-rate`).
//!
//! glibc's `memcpy`/`memmove` switch to `rep movsb` from 4 KiB up (`x86_rep_movsb_threshold`).
//! On AMD Zen CPUs that instruction is slow for some relative alignments of source and
//! destination, and which one a run gets depends on where its heap buffers fall: rustls copies
//! every record it decrypts (about 16 KiB) into a new buffer and again out of it, and a
//! receiving TLS stream cost 1.6–2.9 CPU s per 2 GiB from one run to the next, the same binary
//! and data (docs/performance.md, "glibc's rep movsb"). With the threshold raised, glibc's
//! vector loops do the copies and every run costs 1.5–1.7.
//!
//! The dynamic loader reads `GLIBC_TUNABLES` once, before `main`, so [`tune`] re-executes the
//! process (same PID, arguments and descriptors) with the tunable added, once, before any
//! thread starts. The re-executed process then takes the variable out of its environment, so
//! that what it runs (hooks, instances) gets the environment it would have had. Nothing is
//! done on other CPUs, with another libc, when the user's `GLIBC_TUNABLES` already names the
//! threshold, or with `DISKSTREAM_GLIBC_TUNE=0`.

/// The tunable and the value that keeps `rep movsb` out of every copy below glibc's
/// non-temporal threshold.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=4294967295";

/// Set in the re-executed process's environment (with the `GLIBC_TUNABLES` that was there
/// before, if any): it restores that and removes itself.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
const BEFORE: &str = "DISKSTREAM_GLIBC_TUNABLES_BEFORE";

/// Re-executes this process with glibc's `rep movsb` threshold raised, where that applies (see
/// the module docs); returns when it does not apply, when this already is the re-executed
/// process, or when the re-execution failed (the process then goes on as it is). Call it first
/// in `main`, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        use std::os::unix::process::CommandExt;
        if let Some(before) = std::env::var_os(BEFORE) {
            // The re-executed process: the tunable took effect; what it runs gets the
            // environment as it was.
            std::env::remove_var(BEFORE);
            match before.is_empty() {
                true => std::env::remove_var("GLIBC_TUNABLES"),
                false => std::env::set_var("GLIBC_TUNABLES", before),
            }
            return;
        }
        // Not text: the user's, left alone.
        let Ok(tunables) = std::env::var("GLIBC_TUNABLES").or_else(|e| match e {
            std::env::VarError::NotPresent => Ok(String::new()),
            std::env::VarError::NotUnicode(_) => Err(()),
        }) else {
            return;
        };
        let off = std::env::var_os("DISKSTREAM_GLIBC_TUNE").is_some_and(|v| v == "0");
        if off || tunables.contains("x86_rep_movsb_threshold") || !amd() {
            return;
        }
        let (Ok(exe), Some(arg0)) = (std::env::current_exe(), std::env::args_os().next()) else {
            return;
        };
        let value = match tunables.is_empty() {
            true => TUNABLE.to_string(),
            false => format!("{tunables}:{TUNABLE}"),
        };
        // Returns only if it failed.
        let _ = std::process::Command::new(exe)
            .arg0(arg0)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", value)
            .env(BEFORE, &tunables)
            .exec();
    }
}

/// Whether this CPU is AMD's (`vendor_id` in `/proc/cpuinfo`).
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn amd() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("vendor_id"))
            .is_some_and(|l| l.ends_with("AuthenticAMD"))
    })
}

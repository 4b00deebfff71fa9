//! What the lock manager reads about other processes (`/proc/locks`, a process's command line
//! and start time) and the UTC time format of lock side files.

use std::fs;

use super::level::LockMode;

/// The granted `flock` holders of the file with this device and inode, from `/proc/locks`.
pub(super) fn proc_locks_holders(dev: u64, ino: u64) -> Vec<(u32, LockMode)> {
    let Ok(text) = fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let want = format!("{:02x}:{:02x}:{ino}", rustix::fs::major(dev), rustix::fs::minor(dev));
    let mut out = Vec::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:10010887 0 EOF"; waiters have "->" after "1:".
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] != "FLOCK" || fields[5] != want {
            continue;
        }
        let mode = match fields[3] {
            "WRITE" => LockMode::Exclusive,
            "READ" => LockMode::Shared,
            _ => continue,
        };
        if let Ok(pid) = fields[4].parse() {
            out.push((pid, mode));
        }
    }
    out.sort_unstable_by_key(|(pid, _)| *pid);
    out.dedup();
    out
}

/// The command line of a process, spaces between arguments.
pub(super) fn proc_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`); with the
/// pid it identifies a process even after pid reuse.
pub(super) fn proc_start_time(pid: u32) -> Option<u64> {
    crate::fsutil::proc_state(pid).map(|(_, start)| start)
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(secs: u64) -> String {
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

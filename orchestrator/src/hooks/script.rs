//! Running one hook script: a reset environment, its own process group, output kept to a
//! tail, the per-script timeout, the stop flag, and a guard process that kills the group if
//! diskstream dies first.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, Signal};

use super::{HooksRunner, Note, Ran, Report, Tail, HOOKS_PATH, OUTPUT_TAIL, POLL};

/// How long, once a script has exited, processes it left behind may keep its output open
/// before its process group is killed and the output is cut off. Ganeti's `RunCmd` waits for
/// the end of the output without a limit; a hook that starts a daemon without redirecting its
/// output would then hold the operation for as long as the daemon lives.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A guard process that kills a script's process group if diskstream dies before disarming
/// it: it waits for a line on a pipe whose only writer is this process.
struct DeathGuard {
    child: std::process::Child,
}

impl DeathGuard {
    fn spawn(pgid: Pid) -> io::Result<Self> {
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg("read x || kill -s KILL -- -\"$1\"")
            .arg("diskstream-hook-guard")
            .arg(pgid.as_raw_nonzero().to_string())
            .env_clear()
            .env("PATH", HOOKS_PATH)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Self { child })
    }

    /// The script's group is gone (or was killed by us): the guard exits without killing.
    fn disarm(mut self) {
        if let Some(mut w) = self.child.stdin.take() {
            let _ = w.write_all(b"done\n");
        }
        let _ = self.child.wait();
    }
}

impl HooksRunner {
    pub(super) fn run_script(
        &self,
        path: &Path,
        env: &BTreeMap<String, String>,
        report: Report<'_>,
    ) -> io::Result<Ran> {
        let timeout = self.timeout;
        let (read_end, write_end) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let stderr_end = write_end.try_clone()?;
        let mut child = {
            let mut cmd = Command::new(path);
            cmd.env_clear()
                .envs(env)
                .env("PATH", HOOKS_PATH)
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::from(write_end))
                .stderr(Stdio::from(stderr_end))
                .process_group(0);
            spawn_retrying_busy(&mut cmd)?
            // `cmd` drops here, closing our copies of the pipe's write end.
        };
        let started = Instant::now();
        let pgid = Pid::from_child(&child);
        let kill_group = || {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        };
        let guard = match DeathGuard::spawn(pgid) {
            Ok(g) => Some(g),
            Err(e) => {
                kill_group();
                let _ = child.wait();
                return Err(io::Error::other(format!("cannot start the hook's guard /bin/sh: {e}")));
            }
        };

        let output = Arc::new(Mutex::new(Tail::new(OUTPUT_TAIL)));
        let out = read_into(fs::File::from(read_end), Arc::clone(&output));
        let (exit_tx, exit_rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = exit_tx.send(child.wait());
        });

        let mut timed_out = false;
        let mut interrupted = false;
        let mut next_report = self.report_interval;
        let status = loop {
            match exit_rx.recv_timeout(POLL) {
                Ok(status) => break status,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(io::Error::other("waiter thread vanished"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let elapsed = started.elapsed();
            if self.stopped() || elapsed >= timeout {
                interrupted = self.stopped();
                timed_out = !interrupted;
                kill_group();
                break exit_rx.recv().map_err(|_| io::Error::other("waiter thread vanished"))?;
            }
            if elapsed >= next_report {
                report(Note::info(format!(
                    "still running after {} s (timeout {} s)",
                    elapsed.as_secs(),
                    timeout.as_secs_f64()
                )));
                next_report += self.report_interval;
            }
        };
        let end = if timed_out || interrupted {
            // The group was killed: its output ends now.
            out.end_or_abandon(Duration::from_secs(1));
            OutputEnd::Closed
        } else {
            self.await_output_end(&out, started, &kill_group, report)
        };
        interrupted |= matches!(end, OutputEnd::Stopped);
        let cut_off = match end {
            OutputEnd::CutOff { escaped } => Some(escaped),
            _ => None,
        };
        if let Some(g) = guard {
            g.disarm();
        }
        let status = status?;
        let mut text = output.lock().expect("reader").text();
        if let (Some(note), false, false) = (killed_note(&status), timed_out, interrupted) {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&note);
        }
        Ok(Ran {
            success: status.success() && !timed_out && !interrupted,
            output: with_note(text, timed_out, interrupted, cut_off, timeout),
        })
    }
}

impl HooksRunner {
    /// Waits for the end of a script's output once the script has exited. Processes the script
    /// left behind may keep it open: they get [`OUTPUT_GRACE`] (never past the script's timeout,
    /// nor once the stop flag is set), then the script's process group is killed and the output
    /// ends there, and `report` is told.
    fn await_output_end(&self, out: &Output, started: Instant, kill_group: &dyn Fn(), report: Report<'_>) -> OutputEnd {
        let exited = Instant::now();
        loop {
            match out.eof.recv_timeout(POLL) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return OutputEnd::Closed,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let stopped = self.stopped();
            if stopped || started.elapsed() >= self.timeout || exited.elapsed() >= OUTPUT_GRACE {
                kill_group();
                // A process that left the group (`setsid`) survives the kill and keeps the
                // output open: then it is not read any more, and said to still run.
                let escaped = !out.end_or_abandon(Duration::from_secs(1));
                if stopped {
                    return OutputEnd::Stopped;
                }
                let fate = if escaped {
                    "those in its process group were killed, one that left it (setsid) still runs"
                } else {
                    "they were killed"
                };
                report(Note::warning(format!(
                    "exited, leaving processes behind still running with its output open; {fate} \
                     after {:.1}s and its output was cut off",
                    OUTPUT_GRACE.as_secs_f64()
                )));
                return OutputEnd::CutOff { escaped };
            }
        }
    }
}

/// How a script's output ended after the script exited.
enum OutputEnd {
    /// Every process closed it.
    Closed,
    /// Processes left behind kept it open past the grace (or the timeout) and were killed.
    CutOff {
        /// Whether one of them had left the script's process group and was not killed.
        escaped: bool,
    },
    /// The stop flag was set while they kept it open; they were killed.
    Stopped,
}

/// A script's output being read on a thread of its own ([`read_into`]).
struct Output {
    /// Told when every writer closed the pipe (or the reader gave up).
    eof: mpsc::Receiver<()>,
    /// Set: the reader stops within [`POLL`] and closes its end of the pipe.
    abandon: Arc<AtomicBool>,
}

impl Output {
    /// Waits at most `limit` for the end of the output, then stops reading it: a process that
    /// left the script's process group (`setsid`) and holds the pipe open would otherwise keep
    /// the reader thread and the pipe for as long as it lives (in an agent, for ever).
    /// Whether the output ended (every writer closed it).
    fn end_or_abandon(&self, limit: Duration) -> bool {
        let ended = self.eof.recv_timeout(limit).is_ok();
        if !ended {
            self.abandon.store(true, Ordering::SeqCst);
        }
        ended
    }
}

/// Reads `reader` into `output` on a thread, waking every [`POLL`] to see whether it was
/// abandoned ([`Output::end_or_abandon`]).
fn read_into(mut reader: fs::File, output: Arc<Mutex<Tail>>) -> Output {
    let (eof_tx, eof) = mpsc::channel();
    let abandon = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&abandon);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let wake = Timespec::try_from(POLL).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        });
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(&reader, PollFlags::IN)];
            match poll(&mut fds, Some(&wake)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) if e == rustix::io::Errno::INTR => continue,
                Err(_) => break,
            }
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => output.lock().expect("reader").push(&buf[..n]),
            }
        }
        let _ = eof_tx.send(());
    });
    Output { eof, abandon }
}

/// A script's output with a last line saying why it was killed, if it was.
/// For a script killed by a signal that we did not send (the OOM killer, an operator): which,
/// as its output may not say.
fn killed_note(status: &std::process::ExitStatus) -> Option<String> {
    let sig = std::os::unix::process::ExitStatusExt::signal(status)?;
    let name = Signal::from_named_raw(sig)
        .map(|s| format!(" ({})", format!("{s:?}").replace("Signal::", "SIG").replace('"', "")))
        .unwrap_or_default();
    Some(format!("Hook script killed by signal {sig}{name}"))
}

/// `cut_off`: the output was cut off after the script exited, `Some(escaped)` where a process
/// that left its process group still runs.
fn with_note(mut text: String, timed_out: bool, interrupted: bool, cut_off: Option<bool>, timeout: Duration) -> String {
    let note = if timed_out {
        Some(format!(
            "Hook script killed after the {:.1}s timeout",
            timeout.as_secs_f64()
        ))
    } else if interrupted {
        Some("Hook script killed: diskstream was interrupted".to_string())
    } else if let Some(escaped) = cut_off {
        let fate = if escaped {
            "those in its process group killed (one that left it, with setsid, still runs)"
        } else {
            "those processes killed"
        };
        Some(format!(
            "Hook script exited, but processes it left behind kept its output open: output cut off \
             and {fate} after {:.1}s",
            OUTPUT_GRACE.as_secs_f64()
        ))
    } else {
        None
    };
    if let Some(note) = note {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&note);
    }
    text
}

/// Spawns `cmd`, retrying briefly on `ETXTBSY`: a script that was just written may still be
/// open for writing in a child forked meanwhile by another thread, until that child execs.
fn spawn_retrying_busy(cmd: &mut Command) -> io::Result<std::process::Child> {
    let busy = rustix::io::Errno::TXTBSY.raw_os_error();
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(busy) && attempts < 50 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

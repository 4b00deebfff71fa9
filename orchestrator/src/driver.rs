//! Instance drivers: how an instance is started, stopped and asked whether it runs.
//!
//! Ganeti's `instance_start` / `instance_shutdown` RPCs go to the hypervisor on the primary
//! node. Here an instance's `[instances.driver]` says how:
//!
//! * `process` ([`ProcessDriver`]): the instance *is* a process, started from the configured
//!   command in its own process group (so it outlives the `diskstream` that started it and a
//!   `kill -9` of that `diskstream` does not take it down). Its pid and start time go to
//!   `<primary root>/var/run/ganeti/instances/<name>.pid`; it runs while that pid is alive, not
//!   a zombie and has that start time (pid reuse is not mistaken for the instance). A pid file
//!   of any other form is an error naming it, never read as "not running". Stopping sends
//!   SIGTERM to the group, then SIGKILL after the shutdown timeout.
//! * `command` ([`CommandDriver`]): start, stop and status shell commands (e.g. wrapping
//!   `virsh`); `status` exits 0 while the instance runs. Stopping runs `stop` and waits up to the
//!   shutdown timeout for `status` to say it stopped.
//!
//! An instance without a driver cannot be started; stopping it is a no-op and it never runs.
//! Commands get `DISKSTREAM_INSTANCE` (the name), `DISKSTREAM_DISK_COUNT` and
//! `DISKSTREAM_DISK<i>` (the backing paths) in their environment.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::cluster::{Cluster, CommandSpec, Driver, Instance};
use crate::fsutil;

/// How long SIGKILL is given to take effect before a stop is declared failed.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Why an instance could not be started, stopped or queried. The texts are the ones operators
/// have always seen after "Could not start instance X: ".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A file of the driver (pid file, log file, their directories) could not be written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The start command is empty.
    #[error("empty start command")]
    EmptyCommand,
    /// The instance's program could not be run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The pipe that releases the instance process could not be made.
    #[error("no pipe to the instance process")]
    NoPipe,
    /// The instance process exited right after it was started.
    #[error("the instance process exited at once ({status}); see {}", log.display())]
    ExitedAtOnce {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// The instance process did not die of SIGKILL.
    #[error("process {pid} survived SIGKILL")]
    SurvivedKill {
        /// Its pid.
        pid: u32,
    },
    /// A `command` driver's command exited non-zero.
    #[error("{what} command failed: {output}")]
    CommandFailed {
        /// `start` or `stop`.
        what: &'static str,
        /// Its stdout and stderr, trimmed.
        output: String,
    },
    /// A `command` driver's command could not be run.
    #[error("{what} command could not run: {source}")]
    CommandNotRun {
        /// `start`, `stop` or `status`.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The instance still ran when the shutdown timeout passed.
    #[error("still running {secs}s after the stop command")]
    StillRunning {
        /// The timeout in seconds.
        secs: u64,
    },
    /// The instance's pid file is not one this driver wrote: whether it runs cannot be told.
    #[error(
        "pid file {} is damaged ({why}): check whether the instance still runs, stop it if \
         it does, and remove the file",
        path.display()
    )]
    DamagedPidFile {
        /// The pid file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The instance has no driver, so it cannot be started.
    #[error("instance {0} has no [instances.driver] in the cluster config")]
    NoDriver(String),
}

/// Starts, stops and queries one instance.
pub trait InstanceDriver: Send + Sync {
    /// Starts the instance; starting a running instance is a no-op.
    fn start(&self) -> Result<(), DriverError>;
    /// Stops the instance, forcibly once `timeout` has passed; stopping a stopped instance is
    /// a no-op.
    fn stop(&self, timeout: Duration) -> Result<(), DriverError>;
    /// Whether the instance runs.
    fn is_running(&self) -> Result<bool, DriverError>;
    /// [`InstanceDriver::stop`], cut short once `cancel` is set (SIGINT/SIGTERM of diskstream):
    /// the instance is then stopped at once as far as the driver can force it, so that it can
    /// be started again right away. The default cannot force anything and waits as `stop`.
    fn stop_cancellable(&self, timeout: Duration, _cancel: &AtomicBool) -> Result<(), DriverError> {
        self.stop(timeout)
    }
}

/// The driver of `inst` as the cluster config describes it.
pub fn driver_for(cluster: &Cluster, inst: &Instance) -> Box<dyn InstanceDriver> {
    let env = instance_command_env(cluster, inst);
    match &inst.driver {
        Some(Driver::Process { start }) => {
            let node = cluster.node(&inst.primary_node).expect("validated primary node");
            Box::new(ProcessDriver {
                argv: start.argv(),
                pid_file: cluster
                    .run_dir(node)
                    .join("instances")
                    .join(format!("{}.pid", inst.name)),
                log_file: cluster
                    .log_dir(node)
                    .join("instances")
                    .join(format!("{}.log", inst.name)),
                env,
            })
        }
        Some(Driver::Command { start, stop, status }) => Box::new(CommandDriver {
            start: start.clone(),
            stop: stop.clone(),
            status: status.clone(),
            env,
        }),
        None => Box::new(NoDriver {
            name: inst.name.clone(),
        }),
    }
}

fn instance_command_env(cluster: &Cluster, inst: &Instance) -> Vec<(String, String)> {
    let mut env = vec![
        ("DISKSTREAM_INSTANCE".to_string(), inst.name.clone()),
        ("DISKSTREAM_DISK_COUNT".to_string(), inst.disks.len().to_string()),
    ];
    for (i, d) in inst.disks.iter().enumerate() {
        env.push((
            format!("DISKSTREAM_DISK{i}"),
            cluster.disk_path(d).display().to_string(),
        ));
    }
    env
}

/// An instance that is a process.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    /// The command that becomes the instance.
    pub argv: Vec<String>,
    /// `pid start_time` of the running instance.
    pub pid_file: PathBuf,
    /// Where the instance's stdout and stderr go (appended).
    pub log_file: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// The longest pid file this driver writes, with room to spare: `<pid> <start time>\n`.
const PID_FILE_MAX: u64 = 64;

impl ProcessDriver {
    /// The pid of the running instance, if it runs. A pid file naming no process, a zombie or a
    /// process started at another time (the pid reused) is stale: `None`. A pid file this
    /// driver cannot have written (not a regular file, not `<pid> <start time>`, a pid below
    /// 2) is an error naming it: whether the instance runs cannot be told, and guessing "not
    /// running" would let an export copy a disk that is in use.
    pub fn running_pid(&self) -> Result<Option<u32>, DriverError> {
        let damaged = |why: String| DriverError::DamagedPidFile {
            path: self.pid_file.clone(),
            why,
        };
        // Opened without following a link or waiting on a FIFO, then checked by its handle: what
        // is read is what was checked.
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = match rustix::fs::open(&self.pid_file, flags, Mode::empty()) {
            Ok(fd) => fs::File::from(fd),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => return Err(damaged("a symbolic link".into())),
            Err(e) => {
                return Err(DriverError::File {
                    path: self.pid_file.clone(),
                    source: e.into(),
                })
            }
        };
        let meta = file.metadata().map_err(|e| damaged(e.to_string()))?;
        if !meta.is_file() {
            return Err(damaged(format!(
                "{}, not a regular file",
                diskstream_engine::input::kind_name(&meta.file_type())
            )));
        }
        if meta.len() > PID_FILE_MAX {
            return Err(damaged(format!("{} bytes long", meta.len())));
        }
        let mut text = String::new();
        io::Read::read_to_string(&mut io::Read::take(&file, PID_FILE_MAX), &mut text)
            .map_err(|e| damaged(e.to_string()))?;
        let (pid, start) = parse_pid_file(&text).map_err(|why| damaged(format!("{why} in {text:?}")))?;
        let Some((state, st)) = proc_state(pid) else {
            return Ok(None);
        };
        if matches!(state, 'Z' | 'X' | 'x') || st != start {
            return Ok(None); // Gone, or the pid was reused by another process.
        }
        Ok(Some(pid))
    }
}

/// `<pid> <start time>\n` as [`InstanceDriver::start`] writes it; the pid is never 0 or 1 (an
/// instance is never init, and `kill(-1)` would signal every process on the machine).
fn parse_pid_file(text: &str) -> Result<(u32, u64), &'static str> {
    let mut it = text.split_whitespace();
    let pid: u32 = it.next().ok_or("no pid")?.parse().map_err(|_| "no valid pid")?;
    if pid <= 1 {
        return Err("pid 0 or 1");
    }
    if i32::try_from(pid).is_err() {
        return Err("a pid out of range");
    }
    let start = it
        .next()
        .ok_or("no start time")?
        .parse()
        .map_err(|_| "no valid start time")?;
    if it.next().is_some() {
        return Err("more than a pid and a start time");
    }
    Ok((pid, start))
}

impl InstanceDriver for ProcessDriver {
    fn start(&self) -> Result<(), DriverError> {
        if self.running_pid()?.is_some() {
            return Ok(());
        }
        let (program, args) = self.argv.split_first().ok_or(DriverError::EmptyCommand)?;
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DriverError::File { path, source }
        };
        for p in [&self.pid_file, &self.log_file] {
            let dir = fsutil::parent_dir(p);
            fs::create_dir_all(dir).map_err(file_err(dir))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(file_err(&self.log_file))?;
        let log2 = log.try_clone().map_err(file_err(&self.log_file))?;
        // The child waits on a pipe until its pid file is written, then execs the command (same
        // pid). If we die before that (kill -9), the pipe closes, `read` fails and the child
        // exits: an instance process without a pid file never exists.
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("read go && exec \"$@\" </dev/null")
            .arg("diskstream-instance")
            .arg(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir("/")
            .process_group(0)
            .spawn()
            .map_err(|source| DriverError::Spawn {
                program: program.clone(),
                source,
            })?;
        let pid = child.id();
        let start = proc_state(pid).map(|(_, s)| s).unwrap_or(0);
        let mut go = child.stdin.take().ok_or(DriverError::NoPipe)?;
        if let Err(e) = fsutil::atomic_write(&self.pid_file, format!("{pid} {start}\n").as_bytes(), 0o644) {
            drop(go);
            let _ = child.wait();
            return Err(file_err(&self.pid_file)(e));
        }
        let _ = std::io::Write::write_all(&mut go, b"go\n");
        drop(go);
        // A command that fails at once (missing program, bad arguments) is a failed start.
        thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(&self.pid_file);
            return Err(DriverError::ExitedAtOnce {
                status,
                log: self.log_file.clone(),
            });
        }
        // The instance outlives a command that started it; a long-running agent reaps it when
        // it ends (else every stop left a zombie under the agent). A thread that cannot start
        // only leaves that zombie.
        let _ = thread::Builder::new().name("instance-reaper".into()).spawn(move || {
            let _ = child.wait();
        });
        Ok(())
    }

    fn stop(&self, timeout: Duration) -> Result<(), DriverError> {
        self.stop_cancellable(timeout, &AtomicBool::new(false))
    }

    /// SIGTERM, then SIGKILL after `timeout`, or as soon as `cancel` is set.
    fn stop_cancellable(&self, timeout: Duration, cancel: &AtomicBool) -> Result<(), DriverError> {
        let Some(pid) = self.running_pid()? else {
            let _ = fs::remove_file(&self.pid_file);
            return Ok(());
        };
        signal_group(pid, Signal::TERM);
        if !self.wait_gone(timeout, cancel)? {
            signal_group(pid, Signal::KILL);
            if !self.wait_gone(KILL_GRACE, &AtomicBool::new(false))? {
                return Err(DriverError::SurvivedKill { pid });
            }
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(())
    }

    fn is_running(&self) -> Result<bool, DriverError> {
        Ok(self.running_pid()?.is_some())
    }
}

impl ProcessDriver {
    /// Waits until the process is gone (`true`), `timeout` passed or `cancel` is set (`false`).
    fn wait_gone(&self, timeout: Duration, cancel: &AtomicBool) -> Result<bool, DriverError> {
        let deadline = deadline_after(timeout);
        loop {
            if self.running_pid()?.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline || cancel.load(Ordering::SeqCst) {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Signals the instance's process group if the process still leads it, else the process alone
/// (a group of that number would be someone else's). Never pid 0 or 1: `kill(-1)` signals every
/// process there is.
fn signal_group(pid: u32, sig: Signal) {
    let Some(p) = i32::try_from(pid).ok().filter(|&p| p > 1).and_then(Pid::from_raw) else {
        return;
    };
    let leads = rustix::process::getpgid(Some(p)).is_ok_and(|g| g == p);
    if !leads || rustix::process::kill_process_group(p, sig).is_err() {
        let _ = rustix::process::kill_process(p, sig);
    }
}

pub use crate::fsutil::proc_state;

/// An instance driven by commands.
#[derive(Debug, Clone)]
pub struct CommandDriver {
    /// Starts the instance; must exit 0.
    pub start: CommandSpec,
    /// Stops the instance; must exit 0.
    pub stop: CommandSpec,
    /// Exits 0 while the instance runs.
    pub status: CommandSpec,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl CommandDriver {
    fn run(&self, c: &CommandSpec) -> io::Result<(bool, String)> {
        let argv = c.argv();
        let (program, args) = argv.split_first().ok_or_else(|| io::Error::other("empty command"))?;
        let out = Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text.trim().to_string()))
    }

    fn checked(&self, c: &CommandSpec, what: &'static str) -> Result<(), DriverError> {
        match self.run(c) {
            Ok((true, _)) => Ok(()),
            Ok((false, output)) => Err(DriverError::CommandFailed { what, output }),
            Err(source) => Err(DriverError::CommandNotRun { what, source }),
        }
    }
}

impl InstanceDriver for CommandDriver {
    fn start(&self) -> Result<(), DriverError> {
        if self.is_running()? {
            return Ok(());
        }
        self.checked(&self.start, "start")
    }

    fn stop(&self, timeout: Duration) -> Result<(), DriverError> {
        if !self.is_running()? {
            return Ok(());
        }
        self.checked(&self.stop, "stop")?;
        let deadline = deadline_after(timeout);
        while self.is_running()? {
            if Instant::now() >= deadline {
                return Err(DriverError::StillRunning {
                    secs: timeout.as_secs(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn is_running(&self) -> Result<bool, DriverError> {
        self.run(&self.status)
            .map(|(ok, _)| ok)
            .map_err(|source| DriverError::CommandNotRun { what: "status", source })
    }
}

/// An instance without a driver: never runs, cannot be started.
#[derive(Debug, Clone)]
pub struct NoDriver {
    name: String,
}

impl InstanceDriver for NoDriver {
    fn start(&self) -> Result<(), DriverError> {
        Err(DriverError::NoDriver(self.name.clone()))
    }

    fn stop(&self, _timeout: Duration) -> Result<(), DriverError> {
        Ok(())
    }

    fn is_running(&self) -> Result<bool, DriverError> {
        Ok(false)
    }
}

/// Paths of a `process` instance, for tools and tests: `(pid file, log file)`.
pub fn process_paths(cluster: &Cluster, inst: &Instance) -> Option<(PathBuf, PathBuf)> {
    let node = cluster.node(&inst.primary_node)?;
    Some((
        cluster
            .run_dir(node)
            .join("instances")
            .join(format!("{}.pid", inst.name)),
        cluster
            .log_dir(node)
            .join("instances")
            .join(format!("{}.log", inst.name)),
    ))
}

/// Whether `path` names an existing file or device (a disk is "activated" if it does).
pub fn disk_present(path: &Path) -> bool {
    fs::metadata(path).is_ok()
}

/// `timeout` from now, or as far as the clock goes (a timeout too long to add is no limit).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(dir: &Path, argv: &[&str]) -> ProcessDriver {
        ProcessDriver {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            pid_file: dir.join("run/i.pid"),
            log_file: dir.join("log/i.log"),
            env: vec![("DISKSTREAM_INSTANCE".into(), "i".into())],
        }
    }

    #[test]
    fn process_starts_stops_with_term_and_reports_status() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path(), &["/bin/sleep", "1000"]);
        assert!(!d.is_running().unwrap());
        d.start().unwrap();
        assert!(d.is_running().unwrap());
        d.start().unwrap(); // idempotent
        let pid = d.running_pid().unwrap().unwrap();
        d.stop(Duration::from_secs(5)).unwrap();
        assert!(!d.is_running().unwrap());
        // Reaped by the process that started it (a long-running agent kept a zombie per stop).
        let t0 = std::time::Instant::now();
        while let Some((state, _)) = proc_state(pid) {
            assert!(t0.elapsed() < Duration::from_secs(5), "{pid} left as {state}");
            thread::sleep(Duration::from_millis(10));
        }
        d.stop(Duration::from_secs(1)).unwrap(); // idempotent
    }

    #[test]
    fn a_damaged_pid_file_is_an_error_naming_it_and_nothing_is_signalled() {
        // `kill(-1)` would signal every process on the machine: a pid file saying 1 (hand
        // edited, damaged) must not make a stop do that. Nor may a pid without its start time
        // (this test's own pid: signalling it would end the test) be trusted, nor a file that
        // is not one this driver writes be read as "not running".
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path(), &["/bin/sleep", "1000"]);
        fs::create_dir_all(dir.path().join("run")).unwrap();
        let me = std::process::id();
        let (_, my_start) = proc_state(me).unwrap();
        let texts = [
            "1\n".to_string(),
            "1 1\n".into(),
            "0 5\n".into(),
            "-1\n".into(),
            "-4242 7\n".into(),
            "4294967295 7\n".into(),
            "x\n".into(),
            String::new(),
            format!("{me}\n"),
            format!("{me} x\n"),
            format!("{me} {my_start} {me}\n"),
            format!("{me} {my_start}{}\n", " ".repeat(80)),
        ];
        let check = |what: &str| {
            let e = d.running_pid().unwrap_err().to_string();
            assert!(e.contains("run/i.pid") && e.contains("damaged"), "{what}: {e}");
            assert!(d.is_running().is_err(), "{what}");
            assert!(d.start().is_err(), "{what}: no second instance beside one that may run");
            let e = d.stop(Duration::ZERO).unwrap_err().to_string();
            assert!(e.contains("damaged"), "{what}: {e}");
            assert!(fs::symlink_metadata(&d.pid_file).is_ok(), "{what}: the file is kept");
        };
        for text in &texts {
            fs::write(&d.pid_file, text).unwrap();
            check(&format!("{text:?}"));
        }
        // Not a regular file: a FIFO (a read would wait forever), a directory, a symbolic link
        // (even to a valid pid file of a live process).
        fs::remove_file(&d.pid_file).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &d.pid_file,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        check("a FIFO");
        fs::remove_file(&d.pid_file).unwrap();
        fs::create_dir(&d.pid_file).unwrap();
        check("a directory");
        fs::remove_dir(&d.pid_file).unwrap();
        let real = dir.path().join("real.pid");
        fs::write(&real, format!("{me} {my_start}\n")).unwrap();
        std::os::unix::fs::symlink(&real, &d.pid_file).unwrap();
        check("a symbolic link");
    }

    #[test]
    fn a_stale_pid_file_is_not_running_and_a_stop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path(), &["/bin/sleep", "1000"]);
        fs::create_dir_all(dir.path().join("run")).unwrap();
        let me = std::process::id();
        let (_, my_start) = proc_state(me).unwrap();
        // A pid no process has (past pid_max), and this test's own pid with another start
        // time (the pid reused by a process that is not the instance).
        for text in [format!("{} 7\n", u32::MAX / 2), format!("{me} {}\n", my_start + 1)] {
            fs::write(&d.pid_file, &text).unwrap();
            assert_eq!(d.running_pid().unwrap(), None, "{text:?}");
            assert!(!d.is_running().unwrap(), "{text:?}");
            d.stop(Duration::ZERO).unwrap();
            assert!(!d.pid_file.exists(), "{text:?}: the stale pid file is removed");
        }
        // And a live one of ours is this process.
        fs::write(&d.pid_file, format!("{me} {my_start}\n")).unwrap();
        assert_eq!(d.running_pid().unwrap(), Some(me));
    }

    #[test]
    fn a_process_that_does_not_lead_its_group_is_signalled_alone() {
        // A child of this test, in the test's own process group: stopping it must not signal
        // that group (this test would die with it).
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path(), &["/bin/sleep", "1000"]);
        let mut child = std::process::Command::new("/bin/sleep").arg("1000").spawn().unwrap();
        let (_, start) = proc_state(child.id()).unwrap();
        fs::create_dir_all(dir.path().join("run")).unwrap();
        fs::write(&d.pid_file, format!("{} {start}\n", child.id())).unwrap();
        assert_eq!(d.running_pid().unwrap(), Some(child.id()));
        // Its zombie counts as gone, so the stop returns before this test reaps it.
        let stopped = d.stop(Duration::from_secs(5));
        let status = child.try_wait().unwrap();
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        stopped.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(15),
            "SIGTERM, to the process: {status:?}"
        );
    }

    #[test]
    fn process_ignoring_term_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(
            dir.path(),
            &["/bin/sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"],
        );
        d.start().unwrap();
        thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        d.stop(Duration::from_millis(300)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(!d.is_running().unwrap());
        assert!(fs::read_to_string(dir.path().join("log/i.log")).unwrap().contains("up"));
    }

    #[test]
    fn cancelled_stop_kills_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(
            dir.path(),
            &["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"],
        );
        d.start().unwrap();
        thread::sleep(Duration::from_millis(100));
        let cancel = AtomicBool::new(false);
        let t = Instant::now();
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(Duration::from_millis(200));
                cancel.store(true, Ordering::SeqCst);
            });
            d.stop_cancellable(Duration::from_secs(60), &cancel).unwrap();
        });
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        assert!(!d.is_running().unwrap());
    }

    #[test]
    fn failing_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path(), &["/bin/sh", "-c", "exit 3"]);
        assert!(d.start().unwrap_err().to_string().contains("exited at once"));
        assert!(!d.is_running().unwrap());
    }

    #[test]
    fn command_driver_uses_status_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("running");
        let f = flag.display();
        let d = CommandDriver {
            start: CommandSpec::Shell(format!("touch {f}")),
            stop: CommandSpec::Shell(format!("rm -f {f}")),
            status: CommandSpec::Shell(format!("test -e {f}")),
            env: Vec::new(),
        };
        assert!(!d.is_running().unwrap());
        d.start().unwrap();
        assert!(d.is_running().unwrap());
        d.stop(Duration::from_secs(1)).unwrap();
        assert!(!d.is_running().unwrap());
        let stuck = CommandDriver {
            stop: CommandSpec::Shell("true".into()),
            ..d.clone()
        };
        stuck.start().unwrap();
        assert!(stuck
            .stop(Duration::from_millis(100))
            .unwrap_err()
            .to_string()
            .contains("still running"));
    }
}

//! `--ionice` and `--nice`: how much of the disk and the CPUs a run may take from the host's
//! other work (the VMs a hypervisor runs), set once for the process before its threads start.
//!
//! The I/O priority (`ioprio_set`) is what the kernel's I/O schedulers (BFQ; mq-deadline's
//! priority classes since Linux 5.14) act on; io_uring requests without their own priority carry
//! the submitting task's. With the `none` scheduler (common on NVMe) it changes nothing: then the
//! cgroup's io controller, or `--bwlimit`, is the tool.

use std::fmt;
use std::str::FromStr;

/// An I/O scheduling class and level, as `ionice` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPriority {
    /// Only when no one else wants the disk (`ionice -c3`).
    Idle,
    /// The normal class with a level 0 (highest) to 7 (lowest) (`ionice -c2 -nN`).
    BestEffort(u8),
}

impl IoPriority {
    /// The kernel's encoding: class in the top 3 bits of 16, level below.
    pub fn value(self) -> u16 {
        match self {
            Self::Idle => 3 << 13,
            Self::BestEffort(level) => (2 << 13) | u16::from(level.min(7)),
        }
    }
}

impl FromStr for IoPriority {
    type Err = String;

    /// `idle`, `best-effort` (level 4, the kernel's default) or `best-effort:N` with N in 0..=7.
    /// The realtime class is not offered: it can starve everything else on the disk.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an I/O priority: use idle, best-effort or best-effort:0..7");
        match s.split_once(':') {
            None if s == "idle" => Ok(Self::Idle),
            None if s == "best-effort" => Ok(Self::BestEffort(4)),
            Some(("best-effort", n)) => match n.parse::<u8>() {
                Ok(l) if l <= 7 => Ok(Self::BestEffort(l)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for IoPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => f.write_str("idle"),
            Self::BestEffort(l) => write!(f, "best-effort:{l}"),
        }
    }
}

/// Sets the calling thread's I/O priority; threads started afterwards inherit it.
pub fn set_io_priority(p: IoPriority) -> std::io::Result<()> {
    crate::sys::set_io_priority(p.value())
}

/// The calling thread's I/O priority value (the kernel's encoding; 0 when never set).
pub fn io_priority_value() -> std::io::Result<u16> {
    crate::sys::io_priority()
}

/// Sets the calling thread's nice value (-20..=19; raising it needs no privilege); threads
/// started afterwards inherit it.
pub fn set_nice(n: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(None, n).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_ionice_names_and_refuses_the_rest() {
        assert_eq!("idle".parse(), Ok(IoPriority::Idle));
        assert_eq!("best-effort".parse(), Ok(IoPriority::BestEffort(4)));
        assert_eq!("best-effort:7".parse(), Ok(IoPriority::BestEffort(7)));
        for bad in [
            "",
            "realtime",
            "best-effort:8",
            "best-effort:-1",
            "idle:3",
            "IDLE",
            "best-effort:",
        ] {
            let e = bad.parse::<IoPriority>().expect_err(bad);
            assert!(e.contains("is not an I/O priority"), "{e}");
        }
        assert_eq!(IoPriority::Idle.value(), 0x6000);
        assert_eq!(IoPriority::BestEffort(7).value(), 0x4007);
    }

    #[test]
    fn a_thread_gets_the_priority_and_its_children_inherit_it() {
        std::thread::spawn(|| {
            set_io_priority(IoPriority::Idle).expect("ioprio_set");
            assert_eq!(io_priority_value().expect("ioprio_get"), IoPriority::Idle.value());
            let child = std::thread::spawn(|| io_priority_value().expect("ioprio_get"))
                .join()
                .expect("child");
            assert_eq!(child, IoPriority::Idle.value(), "a thread started after inherits it");
        })
        .join()
        .expect("thread");
    }
}

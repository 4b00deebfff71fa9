//! `diskstream_agent::copies::tune` on a real process (`net-rate serve`, which calls it first
//! as the agent does): on an AMD CPU with glibc, the process runs with glibc's `rep movsb`
//! threshold raised, its arguments as given, the user's own tunables kept, and not at all
//! with `DISKSTREAM_GLIBC_TUNE=0`; and the dynamic loader takes the value. Elsewhere: skipped
//! with a message.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NET_RATE: &str = env!("CARGO_BIN_EXE_net-rate");
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=4294967295";

fn amd_with_glibc() -> bool {
    let amd = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .any(|l| l.starts_with("vendor_id") && l.ends_with("AuthenticAMD"))
    });
    amd && cfg!(all(target_env = "gnu", target_arch = "x86_64"))
}

/// `net-rate serve` on a loopback port with `env`, killed on drop.
struct Served(Child);

impl Served {
    fn start(pki: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(NET_RATE);
        c.args(["serve", "--node", "b", "--allow", "a", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pki")
            .arg(pki)
            .env_remove("GLIBC_TUNABLES")
            .env_remove("DISKSTREAM_GLIBC_TUNE")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        Self::wait(c.spawn().expect("spawn net-rate serve"), port)
    }

    /// `child`, once it listens on `port`.
    fn wait(child: Child, port: u16) -> Self {
        let served = Served(child);
        // Listening means the re-execution (if any) is done.
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "net-rate serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// The environment its program image started with, and its arguments.
    fn proc(&self, what: &str) -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{}/{what}", self.0.id())).unwrap();
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agents_processes_copy_without_rep_movsb_on_amd() {
    if !amd_with_glibc() {
        eprintln!("skipped: not an AMD CPU with glibc");
        return;
    }
    // The loader takes the value (an out-of-range one would be ignored without a word).
    let ld = Command::new("/lib64/ld-linux-x86-64.so.2")
        .arg("--list-tunables")
        .env("GLIBC_TUNABLES", TUNABLE)
        .output()
        .expect("ld.so --list-tunables");
    let listed = String::from_utf8_lossy(&ld.stdout);
    assert!(
        listed.contains("glibc.cpu.x86_rep_movsb_threshold: 0xffffffff"),
        "{listed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let made = Command::new(NET_RATE)
        .args(["pki", "--nodes", "a", "b", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    // Re-executed with the tunable, arguments unchanged.
    let s = Served::start(&pki, port, &[]);
    let env = s.proc("environ");
    assert!(env.contains(&format!("GLIBC_TUNABLES={TUNABLE}")), "{env:?}");
    let args = s.proc("cmdline");
    assert_eq!(
        &args[1..],
        [
            "serve",
            "--node",
            "b",
            "--allow",
            "a",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pki",
            pki.to_str().unwrap()
        ]
    );
    drop(s);

    // The user's own tunables are kept, ours added. (The loader cuts the variable's string
    // where it parsed it, as `/proc/PID/environ` shows: ours follows the user's.)
    let s = Served::start(&pki, port, &[("GLIBC_TUNABLES", "glibc.malloc.check=0")]);
    let env = s.proc("environ");
    let at = env.iter().position(|v| v == "GLIBC_TUNABLES=glibc.malloc.check=0");
    assert!(
        at.is_some_and(|i| env.get(i + 1).is_some_and(|v| v == TUNABLE)),
        "{env:?}"
    );
    drop(s);

    // A user's GLIBC_TUNABLES that is not text is left alone: not re-executed.
    {
        use std::os::unix::ffi::OsStrExt;
        let mut c = Command::new(NET_RATE);
        c.args(["serve", "--node", "b", "--allow", "a", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pki")
            .arg(&pki)
            .env(
                "GLIBC_TUNABLES",
                std::ffi::OsStr::from_bytes(b"glibc.malloc.check=0\xff"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let s = Served::wait(c.spawn().unwrap(), port);
        assert!(
            !s.proc("environ").iter().any(|v| v.contains(TUNABLE)),
            "{:?}",
            s.proc("environ")
        );
    }

    // Turned off: not re-executed.
    let s = Served::start(&pki, port, &[("DISKSTREAM_GLIBC_TUNE", "0")]);
    assert!(
        !s.proc("environ").iter().any(|v| v.starts_with("GLIBC_TUNABLES=")),
        "{:?}",
        s.proc("environ")
    );
}

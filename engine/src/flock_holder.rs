//! Test support (`testing` feature): another process holding an exclusive `flock` on a file, as
//! a writer of one of our temporary files would (`sink::partial`).

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A process (`sh`, become `sleep`, holding the file open on fd 9 after util-linux's `flock`
/// locked it) that holds the lock from [`FlockHolder::lock`]'s return until the guard drops:
/// the process is killed then, also when a test fails, and the lock goes with it.
#[derive(Debug)]
pub struct FlockHolder(Child);

impl FlockHolder {
    /// Takes the lock on `path` in a new process; panics if it cannot.
    pub fn lock(path: &Path) -> Self {
        use std::io::BufRead;
        let mut c = Command::new("sh")
            .args([
                "-c",
                "exec 9<\"$1\" && flock -n -x 9 && echo held && exec sleep 600",
                "sh",
            ])
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh and flock (util-linux)");
        let mut line = String::new();
        let read = std::io::BufReader::new(c.stdout.as_mut().expect("piped stdout")).read_line(&mut line);
        let holder = Self(c);
        assert!(
            read.is_ok() && line.trim() == "held",
            "flock did not take the lock on {}",
            path.display()
        );
        holder
    }
}

impl Drop for FlockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

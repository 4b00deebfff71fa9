//! Lock manager tests: golden scenarios, ordering, cross-process exclusion, release on death,
//! and a randomized concurrent stress run.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use diskstream_orchestrator::locking::{LockError, LockLevel, LockManager, LockMode, LockOwner, BGL};

const SHORT: Duration = Duration::from_millis(100);
const LONG: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Golden scenarios (testdata/locking/*.txt; format in testdata/locking/README.md).

enum Slot {
    Idle(LockOwner),
    Waiting(JoinHandle<(LockOwner, Result<(), LockError>)>),
}

fn check_outcome(result: Result<(), LockError>, expect: &str, at: &str) {
    match (expect, result) {
        ("granted", Ok(())) => {}
        (e, Err(LockError::Timeout { holders, .. })) if e.starts_with("blocked") => {
            if let Some(who) = e.strip_prefix("blocked by ") {
                let mut want: Vec<&str> = who.split(',').collect();
                want.sort_unstable();
                let mut got: Vec<String> = holders.iter().filter_map(|h| h.command.clone()).collect();
                got.sort();
                assert_eq!(got, want, "{at}: holders {holders:?}");
                assert!(holders.iter().all(|h| h.pid == std::process::id()), "{at}: {holders:?}");
            }
        }
        (e, Err(err)) if e.starts_with("error: ") => {
            let text = err.to_string();
            assert!(
                !matches!(err, LockError::Timeout { .. }),
                "{at}: wanted a refusal, got a timeout: {text}"
            );
            assert!(text.contains(&e["error: ".len()..]), "{at}: error {text:?} lacks {e:?}");
        }
        (e, got) => panic!("{at}: expected {e}, got {got:?}"),
    }
}

fn run_script(manager: &LockManager, path: &Path) {
    let text = fs::read_to_string(path).unwrap();
    let mut owners: BTreeMap<String, Slot> = BTreeMap::new();
    let mut commands = 0;
    for (lineno, raw) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), lineno + 1);
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        commands += 1;
        let (cmd, expect) = match line.split_once("->") {
            Some((c, e)) => (c.trim(), e.trim()),
            None => (line, "granted"),
        };
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let who = words[0].to_string();
        let slot = owners
            .remove(&who)
            .unwrap_or_else(|| Slot::Idle(manager.owner(who.clone())));
        let slot = match (words[1], slot) {
            ("acquire", Slot::Idle(mut owner)) => {
                let level: LockLevel = words[2].parse().unwrap();
                let names: Vec<String> = words[3].split(',').map(String::from).collect();
                let mode: LockMode = words[4].parse().unwrap();
                if words.get(5) == Some(&"&") {
                    Slot::Waiting(thread::spawn(move || {
                        let r = owner.acquire(level, &names, mode, LONG);
                        (owner, r)
                    }))
                } else {
                    let r = owner.acquire(level, &names, mode, SHORT);
                    check_outcome(r, expect, &at);
                    Slot::Idle(owner)
                }
            }
            ("pending", Slot::Waiting(handle)) => {
                thread::sleep(SHORT);
                assert!(!handle.is_finished(), "{at}: {who} is no longer waiting");
                Slot::Waiting(handle)
            }
            ("wait", Slot::Waiting(handle)) => {
                let (owner, r) = handle.join().unwrap();
                check_outcome(r, expect, &at);
                Slot::Idle(owner)
            }
            ("release", Slot::Idle(mut owner)) => {
                owner.release(words[2].parse().unwrap());
                Slot::Idle(owner)
            }
            ("release-all", Slot::Idle(mut owner)) => {
                owner.release_all();
                Slot::Idle(owner)
            }
            ("owned", Slot::Idle(owner)) => {
                let level: LockLevel = words[2].parse().unwrap();
                let got = owner.owned(level).join(",");
                let got = if got.is_empty() { "none".into() } else { got };
                assert_eq!(got, expect, "{at}");
                Slot::Idle(owner)
            }
            (other, _) => panic!("{at}: bad command '{other}' (or owner busy/idle)"),
        };
        owners.insert(who, slot);
    }
    assert!(commands > 0, "{}: empty scenario", path.display());
    for (who, slot) in owners {
        assert!(
            matches!(slot, Slot::Idle(_)),
            "{}: {who} still waiting at the end",
            path.display()
        );
    }
}

#[test]
fn golden_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/locking");
    let mut scripts: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "scenarios missing in {}", dir.display());
    for script in scripts {
        let lockdir = tempfile::tempdir().unwrap();
        let manager = LockManager::new(lockdir.path()).unwrap();
        run_script(&manager, &script);
    }
}

// ---------------------------------------------------------------------------------------------
// Ordering.

#[test]
fn out_of_order_acquisition_is_refused_and_holds_nothing_new() {
    let lockdir = tempfile::tempdir().unwrap();
    let manager = LockManager::new(lockdir.path()).unwrap();
    let mut p = manager.owner("p");
    p.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, SHORT).unwrap();
    p.acquire(LockLevel::NodeRes, &["n1"], LockMode::Exclusive, SHORT)
        .unwrap();
    for level in [
        LockLevel::Cluster,
        LockLevel::Instance,
        LockLevel::NodeGroup,
        LockLevel::Node,
        LockLevel::NodeRes,
    ] {
        let err = p.acquire(level, &["x"], LockMode::Exclusive, SHORT).unwrap_err();
        assert!(matches!(err, LockError::Order(_)), "{level}: {err}");
        assert!(p.owned(level).iter().all(|n| *n != "x"));
    }
    // The refused requests took nothing: another owner gets "x" everywhere at once.
    let mut q = manager.owner("q");
    q.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, SHORT).unwrap();
    q.acquire(LockLevel::Instance, &["x"], LockMode::Exclusive, SHORT)
        .unwrap();
    q.acquire(LockLevel::Node, &["x"], LockMode::Exclusive, SHORT).unwrap();
    // And the higher level is still allowed for p.
    p.acquire(LockLevel::Network, &["net"], LockMode::Shared, SHORT)
        .unwrap();
}

#[test]
fn dropping_an_owner_releases_in_reverse_order_and_removes_side_files() {
    let lockdir = tempfile::tempdir().unwrap();
    let manager = LockManager::new(lockdir.path()).unwrap();
    let mut p = manager.owner("p");
    p.acquire(LockLevel::Cluster, &[BGL], LockMode::Exclusive, SHORT)
        .unwrap();
    p.acquire(LockLevel::Instance, &["i1", "i2"], LockMode::Exclusive, SHORT)
        .unwrap();
    let side = lockdir.path().join("instance/i1.holders");
    assert_eq!(fs::read_dir(&side).unwrap().count(), 1);
    assert_eq!(manager.holders(LockLevel::Instance, "i1").unwrap().len(), 1);
    drop(p);
    assert_eq!(fs::read_dir(&side).unwrap().count(), 0);
    assert_released(&manager, LockLevel::Instance, "i1");
    assert_released(&manager, LockLevel::Cluster, BGL);
}

/// The kernel lists no holder of the lock. Another test of this binary that spawns a process at
/// the moment of the release holds a copy of every descriptor between its fork and its exec
/// (close-on-exec closes them only at the exec), and an flock lives as long as any copy: so the
/// kernel may show the lock for those microseconds. Wait up to 2 s for that, never longer.
fn assert_released(manager: &LockManager, level: LockLevel, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let holders = manager.holders(level, name).unwrap();
        if holders.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{level:?}/{name} still held 2 s after its owner was dropped: {holders:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Across processes, with the helper binary as the other process.

/// A helper process holding locks; killed (and reaped) on drop, so a failing test leaves no
/// process behind.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Helper {
    fn spawn(lockdir: &Path, label: &str, specs: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream-lock-helper"))
            .arg(lockdir)
            .arg(label)
            .args(specs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut helper = Self { child, stdin };
        let mut line = String::new();
        BufReader::new(helper.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "granted", "helper {label} failed");
        helper
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the helper to release and exit, and waits for it.
    fn release(mut self) {
        let mut stdin = self.stdin.take().unwrap();
        writeln!(stdin, "release").unwrap();
        drop(stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bgl_and_instance(manager: &LockManager, name: &str, mode: LockMode, t: Duration) -> LockOwner {
    let mut p = manager.owner("test");
    p.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).unwrap();
    match p.acquire(LockLevel::Instance, &[name], mode, t) {
        Ok(()) => p,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn another_process_is_excluded_and_named_then_released_when_killed() {
    let lockdir = tempfile::tempdir().unwrap();
    let manager = LockManager::new(lockdir.path()).unwrap();
    let mut helper = Helper::spawn(
        lockdir.path(),
        "diskstream export inst1.example.com",
        &["cluster:BGL:shared", "instance:inst1.example.com:exclusive"],
    );

    let mut p = manager.owner("test");
    p.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, SHORT).unwrap();
    let err = p
        .acquire(
            LockLevel::Instance,
            &["inst1.example.com"],
            LockMode::Shared,
            Duration::from_millis(300),
        )
        .unwrap_err();
    let LockError::Timeout { holders, waited, .. } = &err else {
        panic!("expected a timeout, got {err}");
    };
    assert!(*waited >= Duration::from_millis(300));
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].pid, helper.pid());
    assert_eq!(holders[0].mode, LockMode::Exclusive);
    assert_eq!(
        holders[0].command.as_deref(),
        Some("diskstream export inst1.example.com")
    );
    assert!(holders[0].since.is_some());
    let text = err.to_string();
    assert!(
        text.starts_with("Could not acquire lock instance/inst1.example.com (shared) within 0.3s: held by pid "),
        "{text}"
    );
    assert!(text.contains("(diskstream export inst1.example.com) exclusive since 20"));

    // SIGKILL: the helper cannot clean up, yet the kernel frees the lock and the stale side
    // file is never reported.
    helper.child.kill().unwrap();
    helper.child.wait().unwrap();
    assert!(manager
        .holders(LockLevel::Instance, "inst1.example.com")
        .unwrap()
        .is_empty());
    let start = Instant::now();
    p.acquire(LockLevel::Instance, &["inst1.example.com"], LockMode::Exclusive, SHORT)
        .unwrap();
    assert!(start.elapsed() < SHORT);
    // Acquiring removed the dead holder's side file.
    let side = lockdir.path().join("instance/inst1.example.com.holders");
    let pids: Vec<String> = fs::read_dir(side)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pids.len(), 1);
    assert!(pids[0].starts_with(&format!("{}-", std::process::id())));
}

#[test]
fn shared_across_processes_and_a_waiter_gets_the_lock_on_release() {
    let lockdir = tempfile::tempdir().unwrap();
    let manager = LockManager::new(lockdir.path()).unwrap();
    let specs = ["cluster:BGL:shared", "node:node1,node2:shared"];
    let a = Helper::spawn(lockdir.path(), "reader-a", &specs);
    let b = Helper::spawn(lockdir.path(), "reader-b", &specs);
    let mut holders = manager.holders(LockLevel::Node, "node2").unwrap();
    holders.sort_by_key(|h| h.pid);
    let mut want = vec![(a.pid(), "reader-a"), (b.pid(), "reader-b")];
    want.sort();
    let got: Vec<(u32, &str)> = holders.iter().map(|h| (h.pid, h.command.as_deref().unwrap())).collect();
    assert_eq!(got, want);
    assert!(holders.iter().all(|h| h.mode == LockMode::Shared));

    // A shared request in this process is granted alongside them.
    let reader = bgl_and_instance(&manager, "i", LockMode::Shared, SHORT);
    drop(reader);

    // An exclusive waiter is granted once both processes released.
    let waiter = {
        let manager = manager.clone();
        thread::spawn(move || {
            let mut p = manager.owner("writer");
            p.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, LONG)?;
            p.acquire(LockLevel::Node, &["node2"], LockMode::Exclusive, LONG)?;
            Ok::<_, LockError>(Instant::now())
        })
    };
    thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "writer got the lock while readers held it");
    a.release();
    thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "writer got the lock while reader-b held it");
    let released = Instant::now();
    b.release();
    let granted = waiter.join().unwrap().unwrap();
    assert!(granted.duration_since(released) < Duration::from_millis(500));
}

// ---------------------------------------------------------------------------------------------
// Randomized stress: owners acquiring random level-ordered sets concurrently.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test believes is held: per lock, (exclusive holders, shared holders).
type Ledger = Mutex<HashMap<(LockLevel, String), (u32, u32)>>;

fn ledger_take(ledger: &Ledger, level: LockLevel, names: &[String], mode: LockMode) {
    let mut l = ledger.lock().unwrap();
    for name in names {
        let e = l.entry((level, name.clone())).or_default();
        match mode {
            LockMode::Exclusive => {
                assert_eq!(*e, (0, 0), "{level}/{name} granted exclusively while held");
                e.0 = 1;
            }
            LockMode::Shared => {
                assert_eq!(e.0, 0, "{level}/{name} granted shared while held exclusively");
                e.1 += 1;
            }
        }
    }
}

fn ledger_drop(ledger: &Ledger, level: LockLevel, names: &[String], mode: LockMode) {
    let mut l = ledger.lock().unwrap();
    for name in names {
        let e = l.get_mut(&(level, name.clone())).unwrap();
        match mode {
            LockMode::Exclusive => e.0 -= 1,
            LockMode::Shared => e.1 -= 1,
        }
    }
}

#[test]
fn randomized_stress_has_mutual_exclusion_and_no_deadlock() {
    let seed = std::env::var("LOCK_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("stress seed: {seed} (set LOCK_STRESS_SEED to replay)");
    let lockdir = tempfile::tempdir().unwrap();
    let manager = LockManager::new(lockdir.path()).unwrap();
    let ledger: Arc<Ledger> = Arc::default();
    let started = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let manager = manager.clone();
            let ledger = Arc::clone(&ledger);
            thread::spawn(move || {
                let mut rng = XorShift(seed.wrapping_mul(t + 1) | 1);
                let mut rounds = 0;
                for round in 0..40 {
                    let mut owner = manager.owner(format!("thread {t} round {round}"));
                    let mut held: Vec<(LockLevel, Vec<String>, LockMode)> = Vec::new();
                    let plan = [
                        (LockLevel::Cluster, vec![BGL.to_string()]),
                        (LockLevel::Instance, pick(&mut rng, "inst")),
                        (LockLevel::Node, pick(&mut rng, "node")),
                        (LockLevel::NodeRes, pick(&mut rng, "node")),
                    ];
                    for (level, names) in plan {
                        if names.is_empty() {
                            continue;
                        }
                        let mode = if level == LockLevel::Cluster || rng.below(2) == 0 {
                            LockMode::Shared
                        } else {
                            LockMode::Exclusive
                        };
                        if let Err(e) = owner.acquire(level, &names, mode, LONG) {
                            panic!("thread {t} round {round}: {e} (a deadlock?)");
                        }
                        ledger_take(&ledger, level, &names, mode);
                        held.push((level, names, mode));
                    }
                    thread::sleep(Duration::from_micros(rng.below(1500)));
                    for (level, names, mode) in held.iter().rev() {
                        ledger_drop(&ledger, *level, names, *mode);
                        owner.release(*level);
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let rounds: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(rounds, 160);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stress run took {:?}",
        started.elapsed()
    );
    assert!(ledger.lock().unwrap().values().all(|v| *v == (0, 0)));
}

fn pick(rng: &mut XorShift, prefix: &str) -> Vec<String> {
    (0..4)
        .filter(|_| rng.below(3) == 0)
        .map(|i| format!("{prefix}{i}"))
        .collect()
}

#[test]
fn a_lock_directory_others_may_write_or_own_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    LockManager::new(&locks).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&locks), 0o700);
    assert_eq!(mode(&locks.join("cluster")), 0o700);
    // Writable by others (a shared /tmp-like directory): a planted link could make a holder
    // file overwrite any file.
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o1777)).unwrap();
    let e = LockManager::new(&locks).unwrap_err().to_string();
    assert!(
        e.contains(&format!("lock directory {}: mode 1777", locks.display())),
        "{e}"
    );
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(locks.join("node"), fs::Permissions::from_mode(0o777)).unwrap();
    let e = LockManager::new(&locks).unwrap_err().to_string();
    assert!(e.contains("/node: mode 777") && e.contains("refusing to use it"), "{e}");
    fs::set_permissions(locks.join("node"), fs::Permissions::from_mode(0o700)).unwrap();
    // Owned by another user (who could plant links in it).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(locks.join("instance"), Some(65534), Some(65534)).unwrap();
        let e = LockManager::new(&locks).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(locks.join("instance"), Some(0), Some(0)).unwrap();
    }
    LockManager::new(&locks).unwrap();
}

#[test]
fn lock_and_holder_files_are_private_and_links_in_their_place_are_never_followed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let manager = LockManager::new(&locks).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    // A lock file that is a link: refused, the file it leads to untouched.
    std::os::unix::fs::symlink(&victim, locks.join("instance/linked.lock")).unwrap();
    let mut op = manager.owner("test");
    let t = Duration::from_millis(100);
    op.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).unwrap();
    assert!(op
        .acquire(LockLevel::Instance, &["linked"], LockMode::Exclusive, t)
        .is_err());
    drop(op);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    // Holder files named as this process's next owners would name theirs (`<pid>-<owner id>`,
    // ids counted up): links to the victim.
    let holders = locks.join("instance/i1.holders");
    let mut probe = manager.owner("probe");
    probe.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).unwrap();
    let side = fs::read_dir(locks.join("cluster/BGL.holders"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let name = side.file_name().into_string().unwrap();
    let (pid, id) = name.split_once('-').unwrap();
    let id: u64 = id.parse().unwrap();
    drop(probe);
    fs::create_dir_all(&holders).unwrap();
    for next in id + 1..id + 1000 {
        std::os::unix::fs::symlink(&victim, holders.join(format!("{pid}-{next}"))).unwrap();
    }
    let links = || {
        fs::read_dir(&holders)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_symlink())
            .count()
    };
    let mut op = manager.owner("test");
    op.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).unwrap();
    op.acquire(LockLevel::Instance, &["i1"], LockMode::Exclusive, t)
        .unwrap();
    assert_eq!(links(), 998, "the holder file took the place of one planted link");
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "keep",
        "a holder file was written through a link"
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&locks.join("instance/i1.lock")), 0o600);
    let own: Vec<_> = fs::read_dir(&holders)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .collect();
    assert_eq!(own.len(), 1, "the holder file is a new file of its own");
    assert_eq!(mode(&own[0].path()), 0o600);
    drop(op);
    // A lock file an older version made 0644 (any user could flock it and hold every
    // operation up) is made private when it is next used.
    fs::set_permissions(locks.join("instance/i1.lock"), fs::Permissions::from_mode(0o644)).unwrap();
    let mut op = manager.owner("test");
    op.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).unwrap();
    op.acquire(LockLevel::Instance, &["i1"], LockMode::Shared, t).unwrap();
    assert_eq!(mode(&locks.join("instance/i1.lock")), 0o600);
}

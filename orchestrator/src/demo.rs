//! `diskstream demo`: a self-contained three-node cluster in a directory, exported twice.
//!
//! It writes `cluster.toml` (three nodes whose roots are subdirectories, one `process`
//! instance with two sample disks: one with realistic mixed content, one mostly sparse),
//! starts the instance, exports it to node2 with progress, lists the exports, verifies every
//! dump against its manifest with the engine, exports again to node3 (which removes the old
//! export on node2), and stops the instance. It needs no root: the disks are files in the
//! demo directory. If that file system can clone files (XFS, btrfs) the export snapshots the
//! running instance; otherwise the instance stays down during the transfer (`--long-sleep`),
//! which the demo says.
//!
//! [`run`] runs every node in-process. [`build_cluster`] with addresses and [`run_built`] with
//! other [`DemoOps`] are the same demo through node agents (`diskstream demo --agents`, which
//! starts the agents in between).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diskstream_engine::ops::{self, VerifyOptions};

use crate::backup::{self, ExportLu, ExportOp, ExportResult, NodeExports};
use crate::cluster::Cluster;
use crate::driver;
use crate::error::OpError;
use crate::feedback::Feedback;
use crate::hooks::env::py_bool;
use crate::lu::RunOptions;
use crate::snapshot;

/// Runs an export LU on the cluster config at a path (how the demo's master reaches the nodes).
pub type ExportFn<'a> =
    &'a dyn Fn(&Path, &mut ExportLu, &dyn Feedback, &RunOptions) -> Result<Option<ExportResult>, OpError>;
/// Lists the exports of every node of a cluster.
pub type ListFn<'a> = &'a dyn Fn(&Cluster) -> Result<Vec<NodeExports>, OpError>;

/// How the demo's steps reach the nodes, and what stops them.
pub struct DemoOps<'a> {
    /// Runs an export.
    pub export: ExportFn<'a>,
    /// Lists the exports.
    pub list: ListFn<'a>,
    /// Set by SIGINT/SIGTERM: the running export stops and no further step starts.
    pub stop: Arc<AtomicBool>,
}

impl DemoOps<'static> {
    /// Every node in-process (the plain demo).
    pub fn local() -> Self {
        Self {
            export: &local_export,
            list: &local_list,
            stop: Arc::default(),
        }
    }
}

fn local_export(
    cfg: &Path,
    lu: &mut ExportLu,
    fb: &dyn Feedback,
    opts: &RunOptions,
) -> Result<Option<ExportResult>, OpError> {
    backup::run_on_cluster(cfg, lu, fb, opts)
}

fn local_list(c: &Cluster) -> Result<Vec<NodeExports>, OpError> {
    backup::list(c, &[])
}

/// The instance of the demo cluster.
pub const DEMO_INSTANCE: &str = "inst1.example.com";

/// The variable that holds the demo's pid in its environment (and so in its agents' and its
/// instance's): the demo's instance process ends when that process is gone (`tail --pid`),
/// so that a SIGKILLed demo, which runs no clean-up, leaves no instance running. Without it
/// (the demo's cluster used by hand) the instance runs until stopped.
pub const DEMO_PID_ENV: &str = "DISKSTREAM_DEMO_PID";

/// Writes the demo cluster into `dir` (disks of `size` bytes each) and returns the config path.
/// `addresses` is empty, or one agent address (`host:port`) per node: node1, node2, node3.
pub fn build_cluster(dir: &Path, size: u64, addresses: &[String]) -> Result<PathBuf, String> {
    if !addresses.is_empty() && addresses.len() != 3 {
        return Err(format!(
            "the demo cluster has 3 nodes, got {} addresses",
            addresses.len()
        ));
    }
    let created = prepare_dir(dir, size)?;
    write_cluster(dir, size, addresses).inspect_err(|_| {
        // What this run wrote is removed (a full file system is left as it was found).
        let _ = crate::fsutil::remove_tree(&dir.join("vc"));
        let _ = fs::remove_file(dir.join("cluster.toml"));
        if created {
            let _ = fs::remove_dir(dir);
        }
    })
}

/// The demo builds only in a directory it creates, or in an empty one that belongs to this
/// user and that no one else can write to: it runs the hook scripts and writes the disks it
/// finds there (and a directory in /tmp that another user made first could hold anything), and
/// a directory in use would have its `cluster.toml` replaced. Refuses a disk size the file
/// system has no room for. Returns whether it created the directory.
fn prepare_dir(dir: &Path, size: u64) -> Result<bool, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
    }
    let created = match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(err(dir, e)),
    };
    let refuse = |why: String| {
        Err(format!(
            "{}: {why}; the demo builds its cluster only in a new directory or in an empty one of yours",
            dir.display()
        ))
    };
    if !created {
        let m = match fs::metadata(dir) {
            Ok(m) => m,
            Err(_) if fs::symlink_metadata(dir).is_ok_and(|l| l.file_type().is_symlink()) => {
                let to = fs::read_link(dir).unwrap_or_default();
                return refuse(format!("a symbolic link to {}, which does not exist", to.display()));
            }
            Err(e) => return Err(err(dir, e)),
        };
        let me = rustix::process::geteuid().as_raw();
        if !m.is_dir() {
            return refuse("not a directory".into());
        } else if m.uid() != me {
            return refuse(format!("owned by uid {}, not by this user (uid {me})", m.uid()));
        } else if m.mode() & 0o022 != 0 {
            return refuse(format!("others can write to it (mode {:o})", m.mode() & 0o7777));
        } else if fs::read_dir(dir).map_err(|e| err(dir, e))?.next().is_some() {
            return refuse("not empty".into());
        }
    }
    // The sample disks hold data in ~43 % of their size (the rest is holes), and the demo keeps
    // them and, for a moment, two exports of them: about 1.3 × size, 1.5 × with some margin.
    let st = rustix::fs::statvfs(dir).map_err(|e| err(dir, e.into()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let need = size.saturating_mul(3) / 2;
    if need > free {
        if created {
            let _ = fs::remove_dir(dir);
        }
        return Err(format!(
            "{}: the demo needs about {} MiB there for two {} MiB disks and their exports; the file system has {} MiB free",
            dir.display(),
            need >> 20,
            size >> 20,
            free >> 20
        ));
    }
    Ok(created)
}

/// [`build_cluster`]'s writing, in a directory [`prepare_dir`] accepted.
fn write_cluster(dir: &Path, size: u64, addresses: &[String]) -> Result<PathBuf, String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let disks = dir.join("vc/node1/disks");
    fs::create_dir_all(&disks).map_err(|e| err(&disks, e))?;
    let d0 = disks.join("inst1-root.img");
    let d1 = disks.join("inst1-data.img");
    diskstream_engine::write_sample_disk(&d0, size, 40, 1).map_err(|e| err(&d0, e))?;
    diskstream_engine::write_sample_disk(&d1, size, 3, 2).map_err(|e| err(&d1, e))?;
    for i in 1..=3 {
        let ed = dir.join(format!("vc/node{i}")).join(crate::cluster::EXPORT_SUBDIR);
        fs::create_dir_all(&ed).map_err(|e| err(&ed, e))?;
    }
    let mib = size.div_ceil(1 << 20);
    let mut text = String::from(
        "# The diskstream demo cluster: three nodes under vc/, one instance that is a process.\n\
         [cluster]\nname = \"demo.example.com\"\nmaster = \"node1.example.com\"\n\
         compression_tools = [\"gzip\", \"gzip-fast\", \"gzip-slow\", \"lz4\"]\n",
    );
    for i in 1..=3 {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"node{i}.example.com\"\nuuid = \"d3e0a000-0000-4000-8000-00000000000{i}\"\nroot = \"vc/node{i}\"\n"
        ));
        if let Some(a) = addresses.get(i - 1) {
            text.push_str(&format!("address = \"{a}\"\n"));
        }
    }
    text.push_str(&format!(
        r#"
[[instances]]
name = "{DEMO_INSTANCE}"
uuid = "d3e0b000-0000-4000-8000-000000000001"
primary_node = "node1.example.com"
os = "debootstrap+default"
hypervisor = "kvm"
admin_state = "up"
tags = ["demo"]

[instances.beparams]
maxmem = 1024
minmem = 512
vcpus = 2

[instances.hvparams]
boot_order = "disk"

[instances.osparams]
dhcp = "yes"

[[instances.nics]]
mac = "aa:00:00:11:22:33"
name = "eth0"
link = "br0"

[[instances.disks]]
uuid = "d3e0c000-0000-4000-8000-000000000001"
name = "root"
size = {mib}
template = "file"
path = "vc/node1/disks/inst1-root.img"

[[instances.disks]]
uuid = "d3e0c000-0000-4000-8000-000000000002"
name = "data"
size = {mib}
template = "file"
path = "vc/node1/disks/inst1-data.img"

[instances.driver]
kind = "process"
# Under `diskstream demo` (DISKSTREAM_DEMO_PID set, also in its agents) the instance ends with
# the demo, even a SIGKILLed one (started after the demo died, it ends at once); started by
# hand it runs until stopped.
start = ["/bin/sh", "-c", "echo \"instance $DISKSTREAM_INSTANCE running\"; if [ -n \"$DISKSTREAM_DEMO_PID\" ]; then exec tail -f -s 0.2 --pid=\"$DISKSTREAM_DEMO_PID\" /dev/null; fi; exec sleep 2147483647"]
"#
    ));
    let path = dir.join("cluster.toml");
    crate::fsutil::atomic_write(&path, text.as_bytes(), 0o600).map_err(|e| err(&path, e))?;
    Ok(path)
}

/// Runs the demo in `dir`: `say` gets the narration, `fb` the job messages.
pub fn run(dir: &Path, size: u64, fb: &dyn Feedback, say: &dyn Fn(&str)) -> Result<(), String> {
    say(&format!(
        "demo: building a three-node cluster in {} (instance {DEMO_INSTANCE}, two {} MiB disks)",
        dir.display(),
        size >> 20
    ));
    let cfg = build_cluster(dir, size, &[])?;
    run_built(&cfg, &DemoOps::local(), fb, say)?;
    say(&done_line(&cfg));
    Ok(())
}

/// The demo's last line: where the cluster is and what to try.
pub fn done_line(cfg: &Path) -> String {
    format!(
        "demo: done; the cluster is in {} (try: diskstream list --cluster {})",
        crate::fsutil::parent_dir(cfg).display(),
        cfg.display()
    )
}

/// Runs the demo on the cluster [`build_cluster`] wrote at `cfg`, reaching the nodes with `ops`.
pub fn run_built(cfg: &Path, ops: &DemoOps<'_>, fb: &dyn Feedback, say: &dyn Fn(&str)) -> Result<(), String> {
    let cluster = Cluster::load(cfg).map_err(|e| e.to_string())?;
    let inst = cluster.instance(DEMO_INSTANCE).expect("demo instance").clone();
    let drv = driver::driver_for(&cluster, &inst);
    drv.start().map_err(|e| e.to_string())?;
    say(&format!(
        "demo: instance {DEMO_INSTANCE} is running (a process on node1)"
    ));
    let result = run_steps(cfg, &cluster, ops, fb, say);
    say(&format!("demo: stopping instance {DEMO_INSTANCE}"));
    let stopped = drv.stop(Duration::from_secs(10));
    result?;
    stopped.map_err(|e| e.to_string())?;
    Ok(())
}

fn run_steps(
    cfg: &Path,
    cluster: &Cluster,
    ops: &DemoOps<'_>,
    fb: &dyn Feedback,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let stopped = || -> Result<(), String> {
        if ops.stop.load(Ordering::SeqCst) {
            Err("interrupted: stopped between the demo's steps".into())
        } else {
            Ok(())
        }
    };
    let inst = cluster.instance(DEMO_INSTANCE).expect("demo instance");
    let disk_dir = cluster.disk_path(&inst.disks[0]);
    let reflink = snapshot::reflink_probe(crate::fsutil::parent_dir(&disk_dir)).unwrap_or(false);
    let long_sleep = !reflink;
    if reflink {
        say("demo: this file system clones files, so the export snapshots the disks and restarts the instance at once");
    } else {
        say(
            "demo: this file system cannot clone files (no reflinks, e.g. ext4), so disks cannot be \
             snapshotted: the export uses --long-sleep, keeping the instance down during the transfer",
        );
    }
    let flag = if long_sleep { " --long-sleep" } else { "" };
    let export = |target: &str| -> Result<ExportResult, String> {
        stopped()?;
        say(&format!(
            "\n$ diskstream export -n {target}{flag} --cluster {} {DEMO_INSTANCE}",
            cfg.display()
        ));
        let mut op = ExportOp::new(DEMO_INSTANCE, target);
        op.long_sleep = long_sleep;
        op.progress_interval = Duration::from_secs(1);
        let mut lu = ExportLu::new(op);
        let opts = backup::RunOptions {
            lock_timeout: Duration::from_secs(60),
            stop: Arc::clone(&ops.stop),
            ..RunOptions::new("diskstream demo")
        };
        let r = (ops.export)(cfg, &mut lu, fb, &opts)
            .map_err(|e: OpError| e.ganeti_report())?
            .expect("not a dry run");
        say(&format!(
            "result: ({}, [{}]) -> {}",
            py_bool(r.fin_resu),
            r.dresults.iter().map(|b| py_bool(*b)).collect::<Vec<_>>().join(", "),
            r.export_dir.display()
        ));
        Ok(r)
    };
    let list = |say: &dyn Fn(&str)| -> Result<(), String> {
        stopped()?;
        say(&format!("\n$ diskstream list --cluster {}", cfg.display()));
        let c = Cluster::load(cfg).map_err(|e| e.to_string())?;
        let rows = (ops.list)(&c).map_err(|e| e.ganeti_report())?;
        say(backup::format_table(&rows, true, None).trim_end());
        Ok(())
    };
    let r = export("node2.example.com")?;
    list(say)?;
    say("\ndemo: verifying every dump against its manifest (every chunk's digest)");
    for d in &r.disks {
        stopped()?;
        let dump = r.export_dir.join(&d.dump);
        let progress = Default::default();
        let rep = ops::verify(&dump, &VerifyOptions::default(), &progress).map_err(|e| e.to_string())?;
        let created = d.report.as_ref().map_err(ToString::to_string)?;
        if rep.digest != created.digest {
            return Err(format!("{}: digest changed after the export", dump.display()));
        }
        say(&format!(
            "  {}: {} chunks ok, {} MiB disk, {} MiB stored, {} {}",
            d.label,
            rep.chunks,
            created.disk_size >> 20,
            created.bytes_stored >> 20,
            rep.checksum,
            rep.digest
        ));
    }
    export("node3.example.com")?;
    list(say)?;
    say("demo: the second export removed the old export on node2 (\"Removing old exports\")");
    Ok(())
}

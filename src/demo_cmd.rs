//! `diskstream demo` and `demo --agents`: the three-node cluster of
//! [`diskstream_orchestrator::demo`], exported twice, with every node in-process or through one
//! node agent per node.
//!
//! With `--agents`, every node of the demo cluster gets an `address`, the cluster PKI is made
//! (`pki init`), and one `diskstream agent` child per node is started (this executable). As root
//! with iproute2, each agent runs in its own network namespace on a bridge in a hub namespace
//! ([`diskstream_agent::netns::Hub`]); the master (this process) stays in its own namespace and
//! reaches the agents through one more veth into the bridge, so nothing has to re-enter a
//! namespace. As an ordinary user, the agents listen on 127.0.0.1 ports that were free at the
//! start. The master runs the steps through [`AgentNodes`](diskstream_agent::remote::AgentNodes)
//! (as `export` does for a cluster with addresses), so disk data goes agent to agent. The agents
//! are killed and waited for, and the namespaces deleted, when the guards drop: at the end, on
//! an error, and after SIGINT/SIGTERM (the handler only sets the flag the steps poll). After a
//! SIGKILL no guard runs: the agents still die with this process (`--exit-with-parent`), and the
//! next `demo --agents` deletes the namespaces of demos that are no longer running; the
//! instance ends with this process too ([`before_threads`]).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diskstream_agent::netns::{self, Hub};
use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::demo::{self, DemoOps};

use crate::contract::{self, AgentsMode, DemoAgent, DemoAgents, DemoResult, Failed, Kind, Op};
use crate::interrupt::Interrupt;
use crate::jobs::Printer;

/// The port every agent listens on in netns mode (each has its own address there).
const NETNS_PORT: u16 = 1811;
/// How long an agent may take to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(30);

/// A demo disk size: a whole number of MiB, at least 1 MiB (the cluster config gives disk sizes
/// in MiB, and a disk of another size would fail the export's size check).
pub fn parse_size(s: &str) -> Result<u64, String> {
    match crate::units::parse_size(s)? {
        b if b > 0 && b % (1 << 20) == 0 => Ok(b),
        _ => Err(format!(
            "{s:?}: the demo's disks are a whole number of MiB, at least 1M"
        )),
    }
}

/// Called before any thread runs (the environment is the process's): puts this process's pid
/// in its environment under [`demo::DEMO_PID_ENV`], so that the demo's instance, started here
/// or by its agents, ends with this process, even a SIGKILLed one.
pub fn before_threads() {
    std::env::set_var(demo::DEMO_PID_ENV, std::process::id().to_string());
}

/// Runs `diskstream demo [--agents]`.
pub fn demo(dir: Option<PathBuf>, size: u64, agents: bool, json: bool) -> ExitCode {
    // The default is a new directory with a name no one can take first; `build_cluster` creates
    // it (0700) and refuses one that exists and is not an empty one of this user's.
    let dir = dir.unwrap_or_else(|| {
        let tag = diskstream_orchestrator::fsutil::new_uuid().unwrap_or_default();
        std::env::temp_dir().join(format!(
            "diskstream-demo-{}-{}",
            std::process::id(),
            &tag[..tag.len().min(8)]
        ))
    });
    let interrupt = match Interrupt::install() {
        Ok(i) => i,
        Err(e) => {
            let msg = format!("cannot install the SIGINT/SIGTERM handlers: {e}");
            return crate::output::fail_msg(Op::Demo, Kind::Error, &msg, json);
        }
    };
    let printer = Printer::new(Op::Demo, false, json, None);
    // The demo's own text has line breaks (a blank line before each command it shows): one
    // line each, since a line's control characters are escaped (`Printer::line`).
    let say = |s: &str| s.split('\n').for_each(|l| printer.line(l));
    tracing::info!(dir = %dir.display(), size_bytes = size, agents, "demo started");
    let res = if agents {
        run_agents(&dir, size, &printer, &say, interrupt.flag()).map(Some)
    } else {
        say(&format!(
            "demo: building a three-node cluster in {} (instance {}, two {} MiB disks)",
            dir.display(),
            demo::DEMO_INSTANCE,
            size >> 20
        ));
        let ops = DemoOps {
            stop: interrupt.flag(),
            ..DemoOps::local()
        };
        demo::build_cluster(&dir, size, &[])
            .and_then(|cfg| demo::run_built(&cfg, &ops, &printer, &say).map(|()| cfg))
            .map(|cfg| {
                say(&demo::done_line(&cfg));
                None
            })
    };
    match res {
        Ok(agents) => contract::done(Op::Demo, DemoResult { dir, agents }, json),
        Err(e) if interrupt.signal().is_some() => {
            let sig = interrupt.signal_name();
            errln!("diskstream demo: interrupted by {sig}: {e}");
            Failed::new(Op::Demo, Kind::Interrupted, e)
                .signal(sig, interrupt.code())
                .emit(json)
        }
        Err(e) => {
            errln!("diskstream demo: {e}");
            Failed::new(Op::Demo, Kind::Error, e).emit(json)
        }
    }
}

/// The demo through agents; returns where they ran. The agents are stopped and the namespaces
/// removed before it returns, whatever happened.
fn run_agents(
    dir: &Path,
    size: u64,
    printer: &Printer,
    say: &dyn Fn(&str),
    stop: Arc<AtomicBool>,
) -> Result<DemoAgents, String> {
    let hub = make_hub(say);
    let addresses = match &hub {
        Some(h) => (1..=3).map(|n| SocketAddr::from((h.addr(n), NETNS_PORT))).collect(),
        None => free_loopback_ports(3)?,
    };
    let info = DemoAgents {
        mode: if hub.is_some() {
            AgentsMode::Netns
        } else {
            AgentsMode::Loopback
        },
        nodes: (1..=3)
            .map(|n| DemoAgent {
                node: format!("node{n}.example.com"),
                address: addresses[n - 1].to_string(),
                namespace: hub.as_ref().map(|h| h.nodes[n - 1].clone()),
            })
            .collect(),
    };
    say(&format!(
        "demo: building a three-node cluster in {} (instance {}, two {} MiB disks), every node with an agent address",
        dir.display(),
        demo::DEMO_INSTANCE,
        size >> 20
    ));
    let texts: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let cfg = demo::build_cluster(dir, size, &texts)?;
    let cluster = Cluster::load(&cfg).map_err(|e| e.to_string())?;
    let pki = crate::agent_cmd::pki_init(&cluster, true)?;
    say(&format!(
        "demo: made the cluster CA and the node certificates in {} (diskstream pki init)",
        pki.pki_dir.display()
    ));
    // Declared after the hub: dropped (killed) before the namespaces are deleted.
    let mut agents = Agents::default();
    for (n, a) in info.nodes.iter().enumerate() {
        agents.start(&cfg, &a.node, hub.as_ref().map(|h| h.exec_prefix(n + 1)))?;
    }
    agents.wait_listening(&addresses, &stop)?;
    for a in &info.nodes {
        let ns = a
            .namespace
            .as_ref()
            .map(|n| format!(" in namespace {n}"))
            .unwrap_or_default();
        say(&format!("demo: agent of {} listening on {}{ns}", a.node, a.address));
    }
    let ops = DemoOps {
        export: &|cfg, lu, fb, opts| crate::agent_cmd::run_on_cluster(cfg, lu, fb, opts),
        list: &|c| crate::agent_cmd::list(c, &[]),
        stop,
    };
    demo::run_built(&cfg, &ops, printer, say)?;
    say(
        "demo: every node was reached through its agent over mutual TLS: the disk data went agent to agent \
         (node1's agent streamed each disk to the target node's agent), not through this process",
    );
    agents.stop();
    say("demo: stopped the agents");
    if let Some(h) = hub {
        let names = format!("{}, {}", h.hub, h.nodes.join(", "));
        drop(h);
        say(&format!("demo: removed the network namespaces {names} and their links"));
    }
    say(&format!(
        "demo: done; the cluster is in {} (the agents' logs are in {}/agents)",
        dir.display(),
        dir.display()
    ));
    Ok(info)
}

/// The agents' namespaces as root with `ip netns` (after deleting those of killed demos), else
/// none: loopback. A failure to build them (no CAP_SYS_ADMIN in a container, say) is said and
/// falls back to loopback; what was half built is deleted.
fn make_hub(say: &dyn Fn(&str)) -> Option<Hub> {
    if !netns::available() {
        say("demo: not root (or no `ip netns`): every agent listens on 127.0.0.1, on a port free at the start");
        return None;
    }
    let swept = netns::sweep_dead();
    if !swept.is_empty() {
        say(&format!(
            "demo: deleted the network namespaces of demos that were killed: {}",
            swept.join(", ")
        ));
    }
    match Hub::new(&format!("ds{}", std::process::id()), 3) {
        Ok(h) => {
            say(&format!(
                "demo: running as root: one network namespace per node ({}), on a bridge in namespace {}; \
                 this process (the master) reaches them on {}/24 through veth {}",
                h.nodes.join(", "),
                h.hub,
                h.subnet,
                h.outer
            ));
            Some(h)
        }
        Err(e) => {
            say(&format!(
                "demo: cannot build the agents' network namespaces ({e}): every agent listens on 127.0.0.1 instead"
            ));
            None
        }
    }
}

/// `n` 127.0.0.1 ports free now (held together while chosen, so they differ).
fn free_loopback_ports(n: usize) -> Result<Vec<SocketAddr>, String> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}")))
        .collect::<Result<_, _>>()?;
    held.iter()
        .map(|l| l.local_addr().map_err(|e| format!("127.0.0.1 port: {e}")))
        .collect()
}

/// The agent children: killed and waited for on drop.
#[derive(Default)]
struct Agents {
    children: Vec<(String, Child, PathBuf)>,
}

impl Agents {
    /// Starts `diskstream agent --cluster CFG --node NODE` (under `prefix`, e.g. `ip netns exec
    /// NS`), its output in `<cfg dir>/agents/NODE.log`.
    fn start(&mut self, cfg: &Path, node: &str, prefix: Option<[String; 4]>) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let logs = cfg.parent().unwrap_or(Path::new(".")).join("agents");
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let log = logs.join(format!("{node}.log"));
        let f = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = match &prefix {
            Some(p) => {
                let mut c = Command::new(&p[0]);
                c.args(&p[1..]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("agent").arg("--cluster").arg(cfg).args(["--node", node]);
        // Even a SIGKILL of this process (no guard runs) then takes the agent down.
        cmd.args(["--exit-with-parent", &std::process::id().to_string()]);
        // Its own process group: a Ctrl-C on the terminal reaches this process alone, which
        // stops the export cleanly through the agents (they undo their part) before killing them.
        cmd.process_group(0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("cannot start the agent of {node} ({}): {e}", exe.display()))?;
        self.children.push((node.to_string(), child, log));
        Ok(())
    }

    /// Waits until every agent says in its log that it listens at its address (in order).
    fn wait_listening(&mut self, addrs: &[SocketAddr], stop: &AtomicBool) -> Result<(), String> {
        let t0 = Instant::now();
        for ((node, child, log), addr) in self.children.iter_mut().zip(addrs) {
            let said = format!("node {node} listening on {addr}");
            loop {
                if stop.load(Ordering::SeqCst) {
                    return Err("interrupted while waiting for the agents to listen".into());
                }
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                if text.contains(&said) {
                    break;
                }
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!(
                        "the agent of {node} exited ({st}) before listening on {addr}; its log {}: {}",
                        log.display(),
                        text.trim()
                    ));
                }
                if t0.elapsed() > LISTEN_WAIT {
                    return Err(format!(
                        "the agent of {node} did not listen on {addr} within {} s (log: {})",
                        LISTEN_WAIT.as_secs(),
                        log.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills and waits for every agent.
    fn stop(&mut self) {
        for (node, mut c, _) in self.children.drain(..) {
            let _ = c.kill();
            if let Err(e) = c.wait() {
                tracing::warn!("agent of {node}: cannot wait for it: {e}");
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop();
    }
}

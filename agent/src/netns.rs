//! Network namespaces for node agents on one machine (`diskstream demo --agents` as root): a hub
//! namespace with a Linux bridge, one namespace per node on a veth into the bridge, and a veth
//! from the caller's namespace into the bridge so that the caller (the master) reaches every
//! agent by its address. [`Hub`] deletes everything it made when dropped, also after a failure
//! half-way through building it. Built with `ip` (iproute2); needs root. [`exit_with_parent`]
//! ties an agent's life to the process that started it (also through `ip netns exec`, which
//! execs), so that even a SIGKILL of that process leaves no agent behind.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Runs `ip ARGS`; the error names the command and `ip`'s message.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Asks the kernel to SIGKILL this process when its parent, which must be `parent`, exits
/// (`PR_SET_PDEATHSIG`); an error if the parent is already another process (it died first).
pub fn exit_with_parent(parent: u32) -> Result<(), String> {
    use rustix::process::{getppid, set_parent_process_death_signal, Signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| format!("cannot ask to exit with the parent process {parent}: {e}"))?;
    // Checked after the request: a parent that dies from here on kills us.
    let now = getppid().map_or(0, |p| p.as_raw_pid() as u32);
    if now != parent {
        return Err(format!("the parent process {parent} is gone (the parent is now {now})"));
    }
    Ok(())
}

/// Whether this process can build namespaces: its effective uid is 0 and `ip netns` works.
pub fn available() -> bool {
    euid_is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Whether the effective uid (second field of `Uid:` in `/proc/self/status`) is 0.
pub fn euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The hub and its node namespaces; everything is deleted on drop.
#[derive(Debug)]
pub struct Hub {
    /// The hub namespace (holds the bridge `br0`).
    pub hub: String,
    /// One namespace per node, in order.
    pub nodes: Vec<String>,
    /// The veth end left in the caller's namespace (addressed `.254`).
    pub outer: String,
    /// The /24 every address is in.
    pub subnet: Ipv4Addr,
    made: Vec<String>,
    outer_made: bool,
}

impl Hub {
    /// Builds a hub for `count` nodes (at most 250) named after `tag` (short: interface names
    /// hold 15 bytes) on the first free 10.80.X.0/24: node N (from 1) gets 10.80.X.N in its
    /// namespace `{tag}n{N}`, the caller 10.80.X.254 on veth `{tag}o`.
    pub fn new(tag: &str, count: usize) -> Result<Self, String> {
        if count == 0 || count > 250 {
            return Err(format!("cannot build {count} node namespaces (1 to 250)"));
        }
        let subnet = free_subnet()?;
        let mut h = Hub {
            hub: format!("{tag}h"),
            nodes: (1..=count).map(|n| format!("{tag}n{n}")).collect(),
            outer: format!("{tag}o"),
            subnet,
            made: Vec::new(),
            outer_made: false,
        };
        // From here on, Drop removes whatever was made.
        h.build(tag)?;
        Ok(h)
    }

    /// The address of node N (from 1).
    pub fn addr(&self, node: usize) -> Ipv4Addr {
        let o = self.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], node as u8)
    }

    fn cidr(&self, host: u8) -> String {
        let o = self.subnet.octets();
        format!("{}.{}.{}.{host}/24", o[0], o[1], o[2])
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.made.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    fn build(&mut self, tag: &str) -> Result<(), String> {
        let hub = self.hub.clone();
        self.add_ns(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, ns) in self.nodes.clone().iter().enumerate() {
            self.add_ns(ns)?;
            let (inner, port) = (format!("{tag}v{}", i + 1), format!("{tag}b{}", i + 1));
            ip(&[
                "link", "add", &inner, "netns", ns, "type", "veth", "peer", "name", &port, "netns", &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
            ip(&["-n", ns, "addr", "add", &self.cidr(i as u8 + 1), "dev", &inner])?;
            ip(&["-n", ns, "link", "set", &inner, "up"])?;
        }
        let port = format!("{tag}b0");
        ip(&[
            "link",
            "add",
            &self.outer,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &hub,
        ])?;
        self.outer_made = true;
        ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", &port, "up"])?;
        ip(&["addr", "add", &self.cidr(254), "dev", &self.outer])?;
        ip(&["link", "set", &self.outer, "up"])
    }

    /// `ip netns exec NS` for node N (from 1), to put before a command.
    pub fn exec_prefix(&self, node: usize) -> [String; 4] {
        ["ip".into(), "netns".into(), "exec".into(), self.nodes[node - 1].clone()]
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them their peers; the
        // outer veth is deleted by name too, in case its peer never reached the hub.
        if self.outer_made {
            let _ = ip(&["link", "del", &self.outer]);
        }
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Deletes the namespaces `ds<PID>h` and `ds<PID>n<N>` ([`Hub`]s named by `demo --agents` after
/// its pid) whose process no longer exists (killed with SIGKILL); returns their names.
pub fn sweep_dead() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut gone = Vec::new();
    for name in text.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = hub_pid(name) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() && ip(&["netns", "del", name]).is_ok() {
            gone.push(name.to_string());
        }
    }
    gone
}

/// The pid in a namespace name of a demo's [`Hub`]: `ds<PID>h` or `ds<PID>n<N>`.
fn hub_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ds")?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let (pid, kind) = rest.split_at(digits);
    let node = kind
        .strip_prefix('n')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if kind == "h" || node {
        pid.parse().ok()
    } else {
        None
    }
}

/// The first 10.80.X.0/24 (X from 1 to 250) that no route of this namespace mentions.
fn free_subnet() -> Result<Ipv4Addr, String> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map_err(|e| format!("cannot run ip route: {e}"))?;
    let routes = String::from_utf8_lossy(&out.stdout);
    let start = std::process::id() % 250;
    (0..250)
        .map(|i| (start + i) % 250 + 1)
        .find(|x| !routes.contains(&format!("10.80.{x}.")))
        .map(|x| Ipv4Addr::new(10, 80, x as u8, 0))
        .ok_or_else(|| "no free subnet in 10.80.0.0/16 for the agents' namespaces".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a demo's own names are swept: not the tests' (`dsr123a`, `dsi123m`) nor others'.
    #[test]
    fn hub_names_carry_the_pid() {
        assert_eq!(hub_pid("ds4242h"), Some(4242));
        assert_eq!(hub_pid("ds4242n3"), Some(4242));
        for other in [
            "dsr4242a",
            "dsi4242m",
            "dspa",
            "ds4242",
            "ds4242n",
            "ds4242o",
            "dsh",
            "x4242h",
            "ds4242n1x",
        ] {
            assert_eq!(hub_pid(other), None, "{other}");
        }
    }
}

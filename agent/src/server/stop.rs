//! The agent's orderly stop (SIGTERM from its service manager, SIGINT): it stops taking
//! connections and refuses new calls, stops what runs (a send at its next chunk and a hook
//! script through the call's stop flag, a receive at its next frame through the agent's
//! `LocalNodeOps` stop flag: the peer of each stream is told at once and partial dumps are
//! removed), waits a while for the calls and receives to end, and then removes the staging
//! exports on its node, which no master can finish once the agent is gone (they would otherwise
//! wait for its next start). If something still runs after the wait (a finalize swapping
//! exports on a slow disk), it removes nothing under it and leaves that to the next start. A
//! shutdown in progress is left to the driver (a process instance's shutdown goes on by
//! itself; the agent does not kill it on its way out).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diskstream_orchestrator::node::NodeOps;

use super::Agent;

/// How often the accept loop and a call waiting for its work look at the stop flag.
pub const POLL: Duration = Duration::from_millis(100);

/// How long the agent waits for the calls and receives it stopped to end.
const WAIT: Duration = Duration::from_secs(10);

/// One call being run, counted while this lives.
pub struct Running<'a>(&'a Agent);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Agent {
    /// Whether the agent is stopping.
    pub fn stopping(&self) -> bool {
        self.local.stop_flag().load(Ordering::SeqCst)
    }

    /// Counts a call that begins, unless the agent is stopping (`None`: refuse it).
    pub fn call_begins(&self) -> Option<Running<'_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let running = Running(self);
        (!self.stopping()).then_some(running)
    }

    /// After the accept loop ended on the stop flag: waits (at most [`WAIT`]) for the calls
    /// and receives to end, then removes this node's staging exports.
    pub fn wind_down(&self) {
        let t0 = Instant::now();
        let busy = || (self.calls.load(Ordering::SeqCst), self.leases.open());
        let (calls, receives) = busy();
        say!(
            "diskstream agent: node {}: stopping ({calls} calls and {receives} receives in progress are stopped)",
            self.node
        );
        while busy() != (0, 0) && t0.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (calls, receives) = busy();
        if calls + receives > 0 {
            // A finalize still swapping exports, or a receive still writing: the staging
            // exports are left to the next start's sweep, never swept under them.
            say!(
                "diskstream agent: node {}: {calls} calls and {receives} receives still running after {} s: \
                 stopping without removing the staging exports (the next start does)",
                self.node,
                WAIT.as_secs()
            );
        } else {
            for i in self.cluster.instances() {
                self.local.sweep_export_leftovers(&self.node, &i.name);
            }
        }
        say!("diskstream agent: node {}: stopped", self.node);
    }
}

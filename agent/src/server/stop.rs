//! The agent's orderly stop (SIGTERM from its service manager, SIGINT, SIGHUP): calls that
//! would start new work are refused, those that put things back or finish are still taken
//! ([`taken_while_stopping`]: the master's clean-up after a stream the stop ended); what runs is
//! stopped (a send at its next chunk and a hook script through the call's stop flag, a receive
//! at its next frame through the agent's `LocalNodeOps` stop flag, a read or write blocked on a
//! silent peer at its next wake-up: the peer of each stream is told and partial dumps are
//! removed). Once nothing has run for a moment (at most [`WAIT`]) it removes the staging exports
//! and deletes the snapshots it holds, which no master can finish once the agent is gone; if
//! something still runs after the wait (a finalize on a slow disk), it removes nothing under it
//! and leaves that to the next start. A shutdown in progress is left to the driver: the instance
//! got its SIGTERM, but the driver's kill after the timeout does not come once the agent exits.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Agent;
use crate::proto::Call;

/// How often the accept loop and a call waiting for its work look at the stop flag.
pub const POLL: Duration = Duration::from_millis(100);

/// How long the agent waits for the calls and receives it stopped to end.
const WAIT: Duration = Duration::from_secs(10);

/// How long no call must begin (and none run) before the stop goes on: the master's clean-up
/// calls that follow a stream the stop ended (remove the snapshot, abandon the staging export,
/// start the instance again) get in first.
const QUIET: Duration = Duration::from_millis(500);

/// One call being run, counted while this lives.
pub struct Running<'a>(&'a Agent);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether `call` is taken while the agent stops: what puts things back, looks, or finishes
/// (snapshot and staging removal, starting an instance again, a finalize, progress and results,
/// an immediate stop), not what starts new work (hooks, a shutdown wait, snapshots, streams).
fn taken_while_stopping(call: &Call) -> bool {
    use Call::*;
    match call {
        RemoveSnapshot { .. }
        | AbandonExport { .. }
        | StartInstance { .. }
        | InstanceRunning { .. }
        | ForgetInstance { .. }
        | RemoveDisks { .. }
        | FinalizeExport { .. }
        | Progress { .. }
        | ReceiveResult { .. }
        | ListExports { .. }
        | ExportListing { .. }
        | SweepExportLeftovers { .. } => true,
        StopInstance { timeout_ms, .. } => *timeout_ms == 0,
        RunHooks { .. }
        | BackingSize { .. }
        | ActivateDisks { .. }
        | SweepStaleSnapshots { .. }
        | SnapshotCapability { .. }
        | CreateSnapshot { .. }
        | BeginExport { .. }
        | OpenReceive { .. }
        | Send { .. }
        | RemoveExport { .. } => false,
    }
}

impl Agent {
    /// Whether the agent is stopping.
    pub fn stopping(&self) -> bool {
        self.local.stop_flag().load(Ordering::SeqCst)
    }

    /// Whether the stop is over (the accept loop ends).
    pub fn stop_is_over(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Counts `call` as it begins (`None`: refused, the agent is stopping and the call would
    /// start new work).
    pub fn call_begins(&self, call: &Call) -> Option<Running<'_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.begun.fetch_add(1, Ordering::SeqCst);
        let running = Running(self);
        (!self.stopping() || taken_while_stopping(call)).then_some(running)
    }

    /// Waits for the stop flag, then winds down ([`Agent::wind_down`]) and ends the stop.
    pub fn wind_down_on_stop(&self) {
        while !self.stopping() {
            std::thread::sleep(POLL);
        }
        self.wind_down();
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Waits (at most [`WAIT`]) until no call or receive runs and none began for [`QUIET`],
    /// then removes the staging exports and snapshots this agent holds (never one a finalize
    /// took). If something still runs, it removes nothing under it: the next start sweeps.
    fn wind_down(&self) {
        // Receives watch their own halt (the engine at its next frame, blocked reads at their
        // next wake-up), and no new one begins.
        self.leases.halt_all();
        let t0 = Instant::now();
        let busy = || (self.calls.load(Ordering::SeqCst), self.leases.open());
        let (calls, receives) = busy();
        say!(
            "diskstream agent: node {}: stopping ({calls} calls and {receives} receives in progress are stopped)",
            self.node
        );
        let (mut begun, mut quiet_since) = (self.begun.load(Ordering::SeqCst), Instant::now());
        while t0.elapsed() < WAIT {
            let now = self.begun.load(Ordering::SeqCst);
            if busy() != (0, 0) || now != begun {
                (begun, quiet_since) = (now, Instant::now());
            } else if quiet_since.elapsed() >= QUIET {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (calls, receives) = busy();
        if calls + receives > 0 {
            say!(
                "diskstream agent: node {}: {calls} calls and {receives} receives still running after {} s: \
                 stopping without removing the staging exports and snapshots (the next start does)",
                self.node,
                WAIT.as_secs()
            );
        } else {
            self.local.release_all();
        }
        say!("diskstream agent: node {}: stopped", self.node);
    }
}

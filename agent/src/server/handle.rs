//! One [`Call`] run on the agent's own node through [`LocalNodeOps`](diskstream_orchestrator::node::local::LocalNodeOps),
//! after [`crate::server::Agent`] checked it: the method's result as JSON.

use std::time::Duration;

use diskstream_engine::ops::StopFlag;
use diskstream_orchestrator::node::NodeOps;
use serde::Serialize;
use serde_json::Value;

use crate::proto::{Call, WireError};
use crate::server::Agent;

fn json<T: Serialize>(v: T) -> Result<Value, WireError> {
    serde_json::to_value(v).map_err(|e| WireError::new("failed", e.to_string()))
}

fn node_result<T: Serialize>(r: Result<T, diskstream_orchestrator::node::NodeError>) -> Result<Value, WireError> {
    match r {
        Ok(v) => json(v),
        Err(e) => Err(WireError::node(&e)),
    }
}

/// Runs `call` (already checked) on `agent`'s node; `cancel` (see [`Agent::dispatch`]) stops
/// a send at its next chunk and kills a running hook script (a shutdown wait is cut short by a
/// second `StopInstance` with no wait instead: [`Agent::stop_instance`]).
pub fn run(agent: &'static Agent, call: Call, cancel: &StopFlag) -> Result<Value, WireError> {
    let l = agent.local();
    use Call::*;
    match call {
        RunHooks {
            node,
            hpath,
            phase,
            env,
        } => json(l.run_hooks_until(
            &node,
            &hpath,
            phase,
            &env,
            &|m| {
                say!(
                    "diskstream agent: {}{}",
                    if m.warning { "warning: " } else { "" },
                    m.text
                )
            },
            cancel,
        )),
        InstanceRunning { node, instance } => node_result(l.instance_running(&node, &instance)),
        StopInstance {
            node: _,
            instance,
            timeout_ms,
        } => agent.stop_instance(&instance, Duration::from_millis(timeout_ms)),
        StartInstance { node, instance } => node_result(l.start_instance(&node, &instance)),
        ForgetInstance { node, instance } => {
            l.forget_instance(&node, &instance);
            json(())
        }
        BackingSize { node, instance, disk } => node_result(l.backing_size(&node, &instance, disk)),
        ActivateDisks { node, instance } => node_result(l.activate_disks(&node, &instance)),
        RemoveDisks { node, instance } => {
            let failed: Vec<(usize, String)> = l
                .remove_disks(&node, &instance)
                .into_iter()
                .map(|(i, e)| (i, e.to_string()))
                .collect();
            json(failed)
        }
        SweepStaleSnapshots { node, instance } => json(l.sweep_stale_snapshots(&node, &instance)),
        SnapshotCapability { node, instance, disk } => json(l.snapshot_capability(&node, &instance, disk)),
        CreateSnapshot { node, instance, disk } => node_result(l.create_snapshot(&node, &instance, disk)),
        RemoveSnapshot { node, snapshot } => node_result(l.remove_snapshot(&node, &snapshot)),
        BeginExport { node, instance, room } => {
            node_result(l.begin_export(&node, &instance).map(|free| free.filter(|_| room)))
        }
        OpenReceive { req } => agent.open_receive(req),
        Send {
            req,
            port,
            token,
            lanes,
        } => agent.send(&req, port, token, lanes, cancel),
        ReceiveResult { token, .. } => agent.receive_result(&token),
        Progress { token, .. } => Ok(agent.progress(&token)),
        FinalizeExport {
            node,
            instance,
            config_ini,
            id,
        } => node_result(l.finalize_export(&node, &instance, &config_ini, &id)),
        AbandonExport { node, instance } => {
            l.abandon_export(&node, &instance);
            json(())
        }
        SweepExportLeftovers { node, instance } => {
            l.sweep_export_leftovers(&node, &instance);
            json(())
        }
        ListExports { node } => node_result(l.list_exports(&node)),
        ExportListing { node, instance } => json(l.export_listing(&node, &instance)),
        RemoveExport { node, instance, keep } => node_result(l.remove_export(&node, &instance, &keep)),
    }
}

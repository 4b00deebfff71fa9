//! The logical-unit runner: Ganeti's `mcpu` order, with the phases as types.
//!
//! [`run`] drives a [`LogicalUnit`] exactly in Ganeti's order (`lib/mcpu.py`):
//!
//! 1. the BGL (`cluster/BGL`) **shared**;
//! 2. [`LogicalUnit::check_arguments`];
//! 3. [`LogicalUnit::expand_names`], which returns the locks it needs;
//! 4. for every level from `instance` to `network`: [`LogicalUnit::declare_locks`], then the
//!    level's locks, sorted (the lock manager refuses any other order);
//! 5. the cluster config read again under the locks: if an operation this one waited for
//!    changed it, the locks are released and the LU starts again at 2 on the current config
//!    (names expanded and locks declared anew: a removed instance is then `Instance 'X' not
//!    known`); then [`LogicalUnit::check_prereq`] on that config, which returns the LU's
//!    [`LogicalUnit::Prereq`] value;
//! 6. hooks nodes and environment from that value, then the pre hooks (a failure aborts);
//! 7. on `dry_run`, stop here;
//! 8. [`LogicalUnit::exec`], which *consumes* the prerequisite value: it cannot be called
//!    without what `check_prereq` produced, and not twice;
//! 9. the post hooks (failures are warnings), and the `config-update` hook on the master if
//!    Exec changed the cluster config;
//! 10. locks released level by level (highest first), then the BGL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::error::OpError;
use crate::feedback::Feedback;
use crate::hooks::env::{phase_env, Env, HookContext};
use crate::hooks::{check_pre_results, post_warnings, HooksRunner, NodeHookResults, Note, Phase};
use crate::locking::{LockError, LockLevel, LockManager, LockMode, LockOwner, BGL};
use crate::node::local::LocalNodeOps;
use crate::node::NodeOps;

/// How long the first, quiet attempt at a lock waits before the operator is told who holds it.
const QUIET_WAIT: Duration = Duration::from_millis(500);

/// What an operation runs with.
pub struct Context<'a> {
    /// The cluster config.
    pub cluster: &'a Cluster,
    /// The cluster's locks.
    pub locks: &'a LockManager,
    /// The nodes: every hook, instance, disk and export operation goes through them.
    pub nodes: &'a dyn NodeOps,
    /// Where job messages go.
    pub feedback: &'a dyn Feedback,
    /// The longest wait for any one level of locks.
    pub lock_timeout: Duration,
    /// Stop after the pre hooks.
    pub dry_run: bool,
    /// Describes the operation to lock waiters (e.g. `diskstream export inst1`).
    pub command: String,
    /// Set by SIGINT/SIGTERM: the operation stops, undoing what it started. The lock manager
    /// and the nodes should have the same flag (see [`run_on_cluster`]).
    pub stop: Arc<AtomicBool>,
}

impl<'a> Context<'a> {
    /// The same context on another cluster config.
    pub fn with_cluster<'b>(&self, cluster: &'b Cluster) -> Context<'b>
    where
        'a: 'b,
    {
        Context {
            cluster,
            locks: self.locks,
            nodes: self.nodes,
            feedback: self.feedback,
            lock_timeout: self.lock_timeout,
            dry_run: self.dry_run,
            command: self.command.clone(),
            stop: Arc::clone(&self.stop),
        }
    }

    /// Whether the operation was asked to stop (SIGINT/SIGTERM).
    pub fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The locks an LU needs: per level, the names and the mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeededLocks {
    levels: BTreeMap<LockLevel, (Vec<String>, LockMode)>,
}

impl NeededLocks {
    /// Sets the locks of a level (replacing what was there).
    pub fn set(&mut self, level: LockLevel, names: Vec<String>, mode: LockMode) {
        self.levels.insert(level, (names, mode));
    }

    /// The locks of a level.
    pub fn get(&self, level: LockLevel) -> Option<&(Vec<String>, LockMode)> {
        self.levels.get(&level)
    }
}

/// Where and with what environment an LU's hooks run.
#[derive(Debug, Clone)]
pub struct HooksSpec {
    /// Hook context (opcode, hooks path, cluster, master).
    pub context: HookContext,
    /// Node names to run on, in order.
    pub nodes: Vec<String>,
    /// The LU's environment (unprefixed).
    pub env: Env,
}

/// One of Ganeti's logical units.
pub trait LogicalUnit {
    /// What `check_prereq` establishes and `exec` consumes.
    type Prereq;
    /// What `exec` returns.
    type Output;

    /// `CheckArguments`: checks that need no cluster state.
    fn check_arguments(&mut self, ctx: &Context<'_>) -> Result<(), OpError>;
    /// `ExpandNames`: resolves names and says which locks are needed.
    fn expand_names(&mut self, ctx: &Context<'_>) -> Result<NeededLocks, OpError>;
    /// `DeclareLocks`: adjusts the locks of `level` just before it is acquired, knowing what
    /// is held already.
    fn declare_locks(&mut self, _ctx: &Context<'_>, _level: LockLevel, _needed: &mut NeededLocks, _owner: &LockOwner) {}
    /// `CheckPrereq`: checks the cluster state under the locks.
    fn check_prereq(&mut self, ctx: &Context<'_>, owner: &LockOwner) -> Result<Self::Prereq, OpError>;
    /// `BuildHooksNodes` and `BuildHooksEnv` for the pre phase; `None` for an LU without hooks.
    fn hooks(&self, _ctx: &Context<'_>, _prereq: &Self::Prereq) -> Option<HooksSpec> {
        None
    }
    /// `Exec`. It owns the prerequisite value and may change the locks it holds (e.g. release
    /// the nodes it is done with and lock others, always upwards from a released level).
    fn exec(&mut self, ctx: &Context<'_>, prereq: Self::Prereq, owner: &mut LockOwner)
        -> Result<Self::Output, OpError>;
    /// `BuildHooksEnv` after Exec, for the post phase (default: the pre environment).
    fn post_hooks_env(&self, _ctx: &Context<'_>, pre: &HooksSpec) -> Env {
        pre.env.clone()
    }
    /// Whether Exec changed the cluster config (runs the `config-update` hook).
    fn config_changed(&self) -> bool {
        false
    }
    /// Records `warning` (a post hook that failed) in Exec's output, for an LU whose output
    /// lists what went wrong without failing it; it is in the job's log either way.
    fn add_warning(&self, _output: &mut Self::Output, _warning: &str) {}
}

/// Acquires `names` at `level`, telling the operator once who holds them if the first short
/// attempt fails. The whole wait, both attempts together, is at most `ctx.lock_timeout`, and a
/// timeout reports that whole wait.
pub fn acquire(
    ctx: &Context<'_>,
    owner: &mut LockOwner,
    level: LockLevel,
    names: &[String],
    mode: LockMode,
) -> Result<(), OpError> {
    let start = std::time::Instant::now();
    match owner.acquire(level, names, mode, QUIET_WAIT.min(ctx.lock_timeout)) {
        Ok(()) => Ok(()),
        Err(LockError::Timeout { name, holders, .. }) if ctx.lock_timeout > QUIET_WAIT => {
            let who: Vec<String> = holders.iter().map(ToString::to_string).collect();
            ctx.feedback.info(format!(
                "Waiting for lock {level}/{name} ({mode}), held by {}",
                if who.is_empty() {
                    "another operation".into()
                } else {
                    who.join(", ")
                }
            ));
            let rest = ctx.lock_timeout.saturating_sub(start.elapsed());
            owner.acquire(level, names, mode, rest).map_err(|e| match e {
                LockError::Timeout {
                    level,
                    name,
                    mode,
                    holders,
                    ..
                } => LockError::Timeout {
                    level,
                    name,
                    mode,
                    waited: start.elapsed(),
                    holders,
                },
                other => other,
            })?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// How many times an LU starts again because the cluster config changed while it waited for
/// its locks, before it gives up.
const MAX_CONFIG_RETRIES: usize = 3;

/// What one pass through Ganeti's order ended with.
enum Pass<O> {
    /// It ran to the end (`None`: a dry run that stopped after the pre hooks).
    Ran(Option<O>),
    /// Once its locks were held, the cluster config was not the one its names and locks were
    /// worked out on (an operation it waited for changed it): nothing was checked or run, the
    /// locks are released, and the LU starts again on this config.
    Stale(Box<Cluster>),
}

/// The message when the config changed while the locks were acquired.
fn config_changed_info(ctx: &Context<'_>) {
    ctx.feedback.info(
        "The cluster config changed while this operation waited for its locks; starting again \
         with the current config"
            .to_string(),
    );
}

fn config_kept_changing() -> OpError {
    OpError::lock(
        crate::error::Ecode::TempNoRes,
        format!(
            "The cluster config changed each time this operation had acquired its locks \
             ({} times); nothing was done, try again",
            MAX_CONFIG_RETRIES + 1
        ),
    )
}

/// Runs `lu` in Ganeti's order. `Ok(None)` is a dry run that stopped after the pre hooks.
///
/// Once the locks are held, the cluster config is read again: if it is not the config the
/// names were expanded and the locks declared on (an operation this one waited for changed
/// it, e.g. removed the instance), the locks are released and the LU starts again from
/// `check_arguments` on the current config (where a removed instance is `Instance 'X' not
/// known`), so that `check_prereq` always sees the config as it is under the locks. The nodes
/// of `ctx` are kept: use [`run_on_cluster_with`] for nodes made from the config.
pub fn run<L: LogicalUnit>(lu: &mut L, ctx: &Context<'_>) -> Result<Option<L::Output>, OpError> {
    let mut current: Option<Box<Cluster>> = None;
    for _ in 0..=MAX_CONFIG_RETRIES {
        let pass = match &current {
            None => run_pass(lu, ctx)?,
            Some(c) => run_pass(lu, &ctx.with_cluster(c))?,
        };
        match pass {
            Pass::Ran(out) => return Ok(out),
            Pass::Stale(c) => {
                config_changed_info(ctx);
                current = Some(c);
            }
        }
    }
    Err(config_kept_changing())
}

/// One pass through Ganeti's order on `ctx`'s config.
fn run_pass<L: LogicalUnit>(lu: &mut L, ctx: &Context<'_>) -> Result<Pass<L::Output>, OpError> {
    let mut owner = ctx.locks.owner(ctx.command.clone());
    acquire(
        ctx,
        &mut owner,
        LockLevel::Cluster,
        &[BGL.to_string()],
        LockMode::Shared,
    )?;
    lu.check_arguments(ctx)?;
    let mut needed = lu.expand_names(ctx)?;
    for level in LockLevel::ALL.into_iter().skip(1) {
        lu.declare_locks(ctx, level, &mut needed, &owner);
        if let Some((names, mode)) = needed.get(level).cloned() {
            acquire(ctx, &mut owner, level, &names, mode)?;
        }
    }
    // CheckPrereq runs under the locks on the current config: the one read above may be older
    // than an operation we waited for (an export that removed the instance).
    let current = Cluster::load(ctx.cluster.path())?;
    if current.config() != ctx.cluster.config() {
        return Ok(Pass::Stale(Box::new(current)));
    }
    let prereq = lu.check_prereq(ctx, &owner)?;
    let hooks = lu.hooks(ctx, &prereq);
    if let Some(h) = &hooks {
        let env = phase_env(&h.context, Phase::Pre, &h.env, None);
        let results = run_hooks(ctx, h, Phase::Pre, &h.context.hpath, &env);
        if ctx.interrupted() {
            return Err(OpError::interrupted(
                "stopped during the pre hooks (their processes were killed); nothing was changed",
            ));
        }
        check_pre_results(&results)?;
    }
    if ctx.dry_run {
        return Ok(Pass::Ran(None));
    }
    if ctx.interrupted() {
        return Err(OpError::interrupted("stopped before Exec; nothing was changed"));
    }
    let mut output = lu.exec(ctx, prereq, &mut owner)?;
    if let Some(h) = &hooks {
        let post = lu.post_hooks_env(ctx, h);
        let env = phase_env(&h.context, Phase::Post, &post, Some(&h.env));
        for w in post_warnings(&run_hooks(ctx, h, Phase::Post, &h.context.hpath, &env)) {
            lu.add_warning(&mut output, &w);
            ctx.feedback.warning(w);
        }
        if lu.config_changed() {
            let cu = HookContext {
                hpath: "config-update".into(),
                ..h.context.clone()
            };
            let env = phase_env(&cu, Phase::Post, &Env::new(), Some(&h.env));
            let master = HooksSpec {
                context: cu,
                nodes: vec![ctx.cluster.master().name.clone()],
                env: Env::new(),
            };
            for w in post_warnings(&run_hooks(ctx, &master, Phase::Post, "config-update", &env)) {
                lu.add_warning(&mut output, &w);
                ctx.feedback.warning(w);
            }
        }
    }
    owner.release_all();
    Ok(Pass::Ran(Some(output)))
}

/// Runs a hooks phase on each of `h`'s nodes in order. Offline nodes are skipped, as Ganeti
/// ignores them; once the operation is stopped, the remaining nodes are not run.
fn run_hooks(ctx: &Context<'_>, h: &HooksSpec, phase: Phase, hpath: &str, env: &Env) -> Vec<NodeHookResults> {
    let report = |n: Note| {
        if n.warning {
            ctx.feedback.warning(n.text)
        } else {
            ctx.feedback.info(n.text)
        }
    };
    let mut out = Vec::new();
    for n in h
        .nodes
        .iter()
        .filter_map(|n| ctx.cluster.node(n))
        .filter(|n| !n.offline)
    {
        if ctx.interrupted() {
            break;
        }
        out.push(NodeHookResults {
            node: n.name.clone(),
            results: ctx.nodes.run_hooks(&n.name, hpath, phase, env, &report),
        });
    }
    out
}

/// How [`run_on_cluster`] runs an LU.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after the pre hooks.
    pub dry_run: bool,
    /// The longest wait for any one level of locks.
    pub lock_timeout: Duration,
    /// Describes the operation to lock waiters.
    pub command: String,
    /// Set by SIGINT/SIGTERM: lock waits, hooks, the shutdown wait and transfers stop, and
    /// what was started is undone.
    pub stop: Arc<AtomicBool>,
    /// The per-script hook timeout (default: the cluster's `hooks_timeout`, else 15 minutes).
    pub hooks_timeout: Option<Duration>,
}

impl RunOptions {
    /// Options for `command`: no dry run, an hour's lock timeout, a stop flag nobody sets.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            dry_run: false,
            lock_timeout: Duration::from_secs(3600),
            command: command.into(),
            stop: Arc::default(),
            hooks_timeout: None,
        }
    }
}

/// Runs an LU against the cluster config at `cluster_path`: loads it, opens its lock
/// directory, and runs `lu` with Ganeti's order on this machine's nodes ([`LocalNodeOps`]).
pub fn run_on_cluster<L: LogicalUnit>(
    cluster_path: &std::path::Path,
    lu: &mut L,
    feedback: &dyn Feedback,
    opts: &RunOptions,
) -> Result<Option<L::Output>, OpError> {
    run_on_cluster_with(cluster_path, lu, feedback, opts, |cluster, hooks, stop| {
        Ok(Box::new(LocalNodeOps::new(cluster, hooks, stop)))
    })
}

/// [`run_on_cluster`] with the nodes made by `make_nodes` from the loaded cluster config, the
/// hooks runner and the stop flag (the CLI picks agents for nodes with an `address`). If the
/// config changed while the LU waited for its locks, everything (locks, hooks runner, nodes) is
/// made again from the current config and the LU starts again (see [`run`]).
pub fn run_on_cluster_with<L, F>(
    cluster_path: &std::path::Path,
    lu: &mut L,
    feedback: &dyn Feedback,
    opts: &RunOptions,
    mut make_nodes: F,
) -> Result<Option<L::Output>, OpError>
where
    L: LogicalUnit,
    F: for<'c> FnMut(&'c Cluster, HooksRunner, Arc<AtomicBool>) -> Result<Box<dyn NodeOps + 'c>, OpError>,
{
    let mut cluster = Cluster::load(cluster_path)?;
    for _ in 0..=MAX_CONFIG_RETRIES {
        let locks = LockManager::new(cluster.lock_dir())?.with_stop(Arc::clone(&opts.stop));
        let hooks = HooksRunner::new(opts.hooks_timeout.unwrap_or_else(|| cluster.hooks_timeout()))
            .with_report_interval(cluster.hooks_report_interval())
            .with_stop(Arc::clone(&opts.stop));
        let nodes = make_nodes(&cluster, hooks, Arc::clone(&opts.stop))?;
        let ctx = Context {
            cluster: &cluster,
            locks: &locks,
            nodes: nodes.as_ref(),
            feedback,
            lock_timeout: opts.lock_timeout,
            dry_run: opts.dry_run,
            command: opts.command.clone(),
            stop: Arc::clone(&opts.stop),
        };
        let current = match run_pass(lu, &ctx)? {
            Pass::Ran(out) => return Ok(out),
            Pass::Stale(current) => {
                config_changed_info(&ctx);
                current
            }
        };
        drop(ctx);
        drop(nodes);
        cluster = *current;
    }
    Err(config_kept_changing())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::Collector;
    use std::sync::Mutex;

    struct Traced<'t> {
        trace: &'t Mutex<Vec<String>>,
        fail_prereq: bool,
    }

    struct Checked(u32);

    impl Traced<'_> {
        fn log(&self, s: impl Into<String>) {
            self.trace.lock().unwrap().push(s.into());
        }
    }

    impl LogicalUnit for Traced<'_> {
        type Prereq = Checked;
        type Output = u32;

        fn check_arguments(&mut self, _ctx: &Context<'_>) -> Result<(), OpError> {
            self.log("check_arguments");
            Ok(())
        }
        fn expand_names(&mut self, _ctx: &Context<'_>) -> Result<NeededLocks, OpError> {
            self.log("expand_names");
            let mut n = NeededLocks::default();
            n.set(LockLevel::Instance, vec!["i1".into()], LockMode::Exclusive);
            Ok(n)
        }
        fn declare_locks(&mut self, _ctx: &Context<'_>, level: LockLevel, n: &mut NeededLocks, owner: &LockOwner) {
            self.log(format!("declare {level}"));
            if level == LockLevel::Node {
                assert_eq!(owner.owned(LockLevel::Instance), ["i1"]);
                n.set(level, vec!["n2".into(), "n1".into()], LockMode::Exclusive);
            }
        }
        fn check_prereq(&mut self, _ctx: &Context<'_>, owner: &LockOwner) -> Result<Checked, OpError> {
            self.log(format!("check_prereq {:?}", owner.owned(LockLevel::Node)));
            if self.fail_prereq {
                return Err(OpError::prereq(crate::Ecode::State, "no"));
            }
            Ok(Checked(7))
        }
        fn exec(&mut self, _ctx: &Context<'_>, p: Checked, _o: &mut LockOwner) -> Result<u32, OpError> {
            self.log("exec");
            Ok(p.0)
        }
    }

    /// A one-node cluster config written to `dir`: `run` reads it again under the locks.
    fn cluster(dir: &std::path::Path) -> Cluster {
        let text = format!(
            "[cluster]\nname = \"c\"\nmaster = \"n1\"\n[[nodes]]\nname = \"n1\"\nuuid = \"u1\"\nroot = \"{}\"\n",
            dir.join("n1").display()
        );
        std::fs::write(dir.join("cluster.toml"), text).unwrap();
        Cluster::load(dir.join("cluster.toml")).unwrap()
    }

    /// A lock that stays busy: the timeout names the whole wait (the quiet first attempt and
    /// the one after "Waiting for lock"), against the timeout that was given.
    #[test]
    fn a_lock_timeout_reports_the_whole_wait() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let locks = LockManager::new(dir.path().join("locks")).unwrap();
        let mut holder = locks.owner("holder");
        holder
            .acquire(LockLevel::Cluster, &[BGL], LockMode::Exclusive, Duration::ZERO)
            .unwrap();
        let nodes = crate::node::fake::FakeNodes::new();
        let fb = Collector::default();
        let ctx = Context {
            cluster: &c,
            locks: &locks,
            nodes: &nodes,
            feedback: &fb,
            lock_timeout: Duration::from_millis(1500),
            dry_run: false,
            command: "test".into(),
            stop: Arc::default(),
        };
        let mut owner = locks.owner("waiter");
        let t = std::time::Instant::now();
        let e = acquire(
            &ctx,
            &mut owner,
            LockLevel::Cluster,
            &[BGL.to_string()],
            LockMode::Shared,
        )
        .unwrap_err();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(fb.lines()[0].starts_with("Waiting for lock cluster/BGL (shared), held by"));
        let waited: f64 = e
            .msg
            .strip_prefix("Could not acquire lock cluster/BGL (shared) within ")
            .and_then(|m| m.split_once("s: "))
            .map(|(n, _)| n.parse().unwrap())
            .unwrap_or_else(|| panic!("{}", e.msg));
        assert!(waited >= 1.5 && waited <= took.as_secs_f64() + 0.05, "{}", e.msg);
    }

    #[test]
    fn runs_in_ganetis_order_and_dry_run_stops_before_exec() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let locks = LockManager::new(dir.path().join("locks")).unwrap();
        let nodes = crate::node::fake::FakeNodes::new();
        let fb = Collector::default();
        let mut ctx = Context {
            cluster: &c,
            locks: &locks,
            nodes: &nodes,
            feedback: &fb,
            lock_timeout: Duration::from_secs(1),
            dry_run: false,
            command: "test".into(),
            stop: Arc::default(),
        };
        let trace = Mutex::new(Vec::new());
        let mut lu = Traced {
            trace: &trace,
            fail_prereq: false,
        };
        assert_eq!(run(&mut lu, &ctx).unwrap(), Some(7));
        assert_eq!(
            *trace.lock().unwrap(),
            [
                "check_arguments",
                "expand_names",
                "declare instance",
                "declare nodegroup",
                "declare node",
                "declare node-res",
                "declare network",
                "check_prereq [\"n1\", \"n2\"]",
                "exec"
            ]
        );
        trace.lock().unwrap().clear();
        ctx.dry_run = true;
        assert_eq!(run(&mut lu, &ctx).unwrap(), None);
        assert!(!trace.lock().unwrap().contains(&"exec".to_string()));
        lu.fail_prereq = true;
        ctx.dry_run = false;
        trace.lock().unwrap().clear();
        assert_eq!(run(&mut lu, &ctx).unwrap_err().msg, "no");
        assert!(!trace.lock().unwrap().contains(&"exec".to_string()));
        // Locks were released in every case: an exclusive BGL can be taken now.
        let mut o = locks.owner("probe");
        o.acquire(LockLevel::Cluster, &[BGL], LockMode::Exclusive, Duration::ZERO)
            .unwrap();
    }
}

//! One reconcile: observe → plan → apply → verify, and the status of each instance. The
//! command line, the controller loop and the library API all converge a node through here.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::dataplane::{Dataplane, DataplaneError};
use crate::names;
use crate::observed::Observed;
use crate::plan::{Action, Plan, Scope, Step, plan, plan_teardown, uplink};
use crate::spec::{self, Desired, Diagnostics, Spec};

/// Why the desired state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The directory has errors: every one, with its file and position.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// Files or folders others can write: one line each.
    #[error("{}", .0.iter().map(|d| format!("{d} (refusing to use it)")).collect::<Vec<_>>().join("\n"))]
    Unsafe(Vec<spec::Diagnostic>),
    /// No node of the directory can be managed here (none named, or no match for the host).
    #[error("{0}")]
    Node(spec::Invalid),
}

/// Loads `dir`, refusing files others can write, and selects the node to manage.
pub fn load_desired(dir: &Path, node: Option<&str>) -> Result<(Spec, Desired), DesiredError> {
    let unsafe_paths = spec::unsafe_permissions(dir);
    if !unsafe_paths.is_empty() {
        return Err(DesiredError::Unsafe(unsafe_paths));
    }
    let spec = spec::load(dir).map_err(DesiredError::Invalid)?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok());
    let node = spec
        .select_node(node, hostname.as_deref())
        .map_err(DesiredError::Node)?;
    let desired = spec.desired_for(node);
    Ok((spec, desired))
}

/// An action that failed, what it was for, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The instance the action was for, or the node as a whole.
    pub scope: Scope,
    /// The action that failed.
    pub action: Action,
    /// Why it failed.
    pub error: DataplaneError,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// What a converge did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Actions applied successfully, in order.
    pub applied: Vec<Action>,
    /// Actions that failed.
    pub failures: Vec<Failure>,
    /// What still differs after applying: empty when the node matches the desired state.
    pub remaining: Plan,
    /// The node as observed at the end.
    pub observed: Observed,
}

impl Outcome {
    /// Whether the node matches its desired state: nothing left to do and no conflict.
    pub fn converged(&self) -> bool {
        self.remaining.is_empty() && self.remaining.conflicts.is_empty()
    }
}

/// Passes over the node before giving up on converging it: the second absorbs what the
/// kernel did meanwhile (a link coming up late), more would only repeat a real failure.
const PASSES: usize = 2;

/// What a converge or a teardown is busy with when it has nothing to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Reading the node before planning.
    Observing,
    /// Reading the node again after applying, to see what still differs.
    Verifying,
    /// Waiting for the kernel to finish removals it carries out after acknowledging them
    /// (interfaces of deleted namespaces).
    Settling,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Observing => "observing the node",
            Stage::Verifying => "verifying the node",
            Stage::Settling => "waiting for the kernel to finish removing interfaces",
        })
    }
}

/// Told what a [`converge`] or [`teardown`] does while it works, to show its progress or
/// log its actions. Every method does nothing unless implemented; a closure
/// `FnMut(&Action)` is told about each applied action, and [`NoProgress`] about nothing.
pub trait Progress {
    /// A stage without a count starts.
    fn stage(&mut self, _stage: Stage) {}
    /// A pass is about to apply `actions` actions (a converge may make two passes).
    fn planned(&mut self, _actions: usize) {}
    /// An action succeeded.
    fn applied(&mut self, _action: &Action) {}
    /// An action failed (the outcome's `failures` hold it too).
    fn failed(&mut self, _failure: &Failure) {}
}

/// Progress nobody follows.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

impl<F: FnMut(&Action)> Progress for F {
    fn applied(&mut self, action: &Action) {
        self(action)
    }
}

/// Converges the node to `desired`: observe, plan, apply every action (a failure does not
/// stop the others), and observe again to verify; repeats once if something still differs.
/// Actions for an instance in `held_back` (one waiting out its retry backoff) are left for
/// later; actions for the node as a whole never are. `progress` is told what happens as it
/// happens.
pub fn converge(
    dataplane: &mut dyn Dataplane,
    desired: &Desired,
    held_back: &BTreeSet<Scope>,
    progress: &mut dyn Progress,
) -> Result<Outcome, DataplaneError> {
    progress.stage(Stage::Observing);
    dataplane.read_others_namespaces(desired.others_namespaces());
    let mut outcome = Outcome {
        observed: dataplane.observe()?,
        ..Outcome::default()
    };
    let wanted = |step: &&Step| step.scope.is_node() || !held_back.contains(&step.scope);
    for _ in 0..PASSES {
        let planned = plan(desired, &outcome.observed);
        if !planned.steps.iter().any(|step| wanted(&step)) {
            outcome.remaining = planned;
            return Ok(outcome);
        }
        dataplane.check_can_change()?;
        for step in planned.steps.iter().filter(wanted) {
            dataplane.check_can_apply(&step.action)?;
        }
        outcome.failures.clear();
        progress.planned(planned.steps.iter().filter(wanted).count());
        let mut nftables_failed = false;
        for Step { scope, action } in planned.steps.iter().filter(wanted) {
            if nftables_failed && action.clears_iptables_nat() {
                // Left for when kudonet's table is in place (it stays in the plan).
                continue;
            }
            match dataplane.apply(action) {
                Ok(()) => {
                    progress.applied(action);
                    outcome.applied.push(action.clone());
                }
                Err(error) => {
                    nftables_failed |= matches!(action, Action::SyncNftables { .. });
                    let failure = Failure {
                        scope: scope.clone(),
                        action: action.clone(),
                        error,
                    };
                    progress.failed(&failure);
                    outcome.failures.push(failure);
                }
            }
        }
        settle(dataplane, &outcome.applied, progress)?;
        progress.stage(Stage::Verifying);
        outcome.observed = dataplane.observe()?;
        outcome.remaining = plan(desired, &outcome.observed);
        if !outcome.remaining.steps.iter().any(|step| wanted(&step)) {
            break;
        }
    }
    Ok(outcome)
}

/// Removes everything kudonet owns on the node and nothing else (`kudonet teardown`,
/// `clean_node`): observe, check the node can be changed, apply every action (a failure
/// does not stop the others), observe again. `remaining` is what is still kudonet's.
/// `progress` is told what happens as it happens.
pub fn teardown(
    dataplane: &mut dyn Dataplane,
    progress: &mut dyn Progress,
) -> Result<Outcome, DataplaneError> {
    progress.stage(Stage::Observing);
    let planned = plan_teardown(&dataplane.observe()?);
    if !planned.is_empty() {
        dataplane.check_can_change()?;
        progress.planned(planned.steps.len());
    }
    let mut outcome = Outcome::default();
    for Step { scope, action } in planned.steps {
        match dataplane.apply(&action) {
            Ok(()) => {
                progress.applied(&action);
                outcome.applied.push(action);
            }
            Err(error) => {
                let failure = Failure {
                    scope,
                    action,
                    error,
                };
                progress.failed(&failure);
                outcome.failures.push(failure);
            }
        }
    }
    settle(dataplane, &outcome.applied, progress)?;
    progress.stage(Stage::Verifying);
    outcome.observed = dataplane.observe()?;
    outcome.remaining = plan_teardown(&outcome.observed);
    Ok(outcome)
}

/// Waits for the kernel to finish what the applied actions set going (see
/// [`Dataplane::settle`]), saying so when namespaces were deleted (what it waits for).
fn settle(
    dataplane: &mut dyn Dataplane,
    applied: &[Action],
    progress: &mut dyn Progress,
) -> Result<(), DataplaneError> {
    if applied
        .iter()
        .any(|action| matches!(action, Action::DeleteNamespace { .. }))
    {
        progress.stage(Stage::Settling);
    }
    dataplane.settle()
}

/// The status document, as `status --output json` prints it and `run --status-file`
/// writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument {
    /// The name of the node this is about.
    pub node: String,
    /// Whether the desired state is valid.
    pub valid: bool,
    /// Why the desired state is invalid, one line each.
    pub errors: Vec<String>,
    /// RFC 3339, UTC.
    pub observed_at: String,
    /// What stands in the way of the node as a whole (see [`node_conditions`]).
    pub conditions: Vec<Condition>,
    /// One entry per instance of the node, by name.
    pub instances: Vec<InstanceStatus>,
}

/// Something about the node as a whole that breaks or may break kudonet's promises and
/// that kudonet does not own, so it reports it instead of fixing it. `kind` is one of:
///
/// - `Conflict`: a foreign object stands where a node-wide object of kudonet's must be
///   (the bridge, the overlay device, a route to a peer node);
/// - `UplinkMissing`: the Node's `uplink:` interface does not exist;
/// - `UplinkOverlap`: the node's subnet holds an address of its uplink, or a whole network
///   of it (`plan`, `apply` and `run` refuse such a node);
/// - `UplinkShadowed`: the node's subnet lies inside a wider network of its uplink, whose
///   hosts there the node cannot reach (a warning);
/// - `StaleOtherBackend`: kudonet's chains are left in the other iptables backend (until
///   an apply removes them; one that cannot is logged, and the node still works);
/// - `ForwardBlocked`: a firewall rule of someone else drops forwarded traffic whatever
///   kudonet's rules accept (a FORWARD policy of DROP in the other iptables backend, an
///   nftables forward chain with a drop policy or reject rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// One of [`CONDITION_TYPES`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The condition, in one line.
    pub message: String,
}

/// Every type a [`Condition`] can have.
pub const CONDITION_TYPES: &[&str] = &[
    "Conflict",
    "UplinkMissing",
    "UplinkOverlap",
    "UplinkShadowed",
    "ForwardBlocked",
    "StaleOtherBackend",
];

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// The node-wide conditions of a node observed as `observed`, given its `plan`.
pub fn node_conditions(desired: &Desired, observed: &Observed, plan: &Plan) -> Vec<Condition> {
    let mut conditions: Vec<Condition> = plan
        .conflicts
        .iter()
        .filter(|conflict| conflict.scope.is_node())
        .map(|conflict| Condition {
            kind: conflict.kind,
            message: conflict.message.clone(),
        })
        .collect();
    if let Some(named) = &desired.node.uplink
        && !observed.links.contains_key(named)
    {
        conditions.push(Condition {
            kind: "UplinkMissing",
            message: format!(
                "uplink {named} of Node {:?} does not exist: instances cannot reach the outside \
                 and ports published on it are unreachable",
                desired.node.name
            ),
        });
    }
    let overlaps = conditions.iter().any(|c| c.kind == "UplinkOverlap");
    if !overlaps
        && let Some(uplink) = uplink(desired, observed)
        && let Some(link) = observed.links.get(uplink)
        && let Some(shadowed) = desired
            .node
            .uplink_shadowed(uplink, link.addresses.iter().copied())
    {
        conditions.push(Condition {
            kind: "UplinkShadowed",
            message: shadowed,
        });
    }
    for action in plan.actions() {
        if let Action::PurgeOtherBackend { table } = action {
            conditions.push(Condition {
                kind: "StaleOtherBackend",
                message: format!(
                    "kudonet's chains in table {table} of the other iptables backend are still \
                     there: they may forward ports of removed instances (apply removes them; \
                     the log says why it could not)"
                ),
            });
        }
    }
    conditions.extend(observed.forward_blockers.iter().map(|blocker| Condition {
        kind: "ForwardBlocked",
        message: blocker.clone(),
    }));
    conditions
}

/// The checks of the desired state that need the machine: the managed node's subnet must
/// not overlap a network of its uplink. Reported like any invalid file, at the Node's
/// `cidr`, before anything is changed.
pub fn check_against_node(
    spec: &Spec,
    desired: &Desired,
    observed: &Observed,
) -> Result<(), DesiredError> {
    let Some(uplink) = uplink(desired, observed) else {
        return Ok(());
    };
    let Some(link) = observed.links.get(uplink) else {
        return Ok(());
    };
    match spec.check_uplink_overlap(&desired.node, uplink, link.addresses.iter().copied()) {
        Some(diagnostic) => Err(DesiredError::Invalid(Diagnostics(vec![diagnostic]))),
        None => Ok(()),
    }
}

/// Now, as the status document writes it.
pub fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The lifecycle phase of an instance, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Everything it needs is in place.
    Ready,
    /// Not created yet.
    Pending,
    /// Created, but something differs from the desired state.
    Drifted,
    /// Cannot be converged: a conflict or a failed action, see the message.
    Failed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Phase::Ready => "Ready",
            Phase::Pending => "Pending",
            Phase::Drifted => "Drifted",
            Phase::Failed => "Failed",
        })
    }
}

/// One instance in the status document (docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The Instance name.
    pub name: String,
    /// Where the instance is ([`Phase`]).
    pub phase: Phase,
    /// Its first address with prefix, as desired (`10.0.0.2/24`): the IPv4 one when it has
    /// one.
    pub address: String,
    /// Every address with prefix, as desired, IPv4 first (`["10.0.0.2/24",
    /// "fd00:10::2/64"]`).
    pub addresses: Vec<String>,
    /// The path of its namespace: in the netns directory, or the `netns` path of one
    /// someone else owns.
    pub netns: String,
    /// The host end of its veth pair.
    pub host_interface: String,
    /// Why it is not `Ready`; empty when it is.
    pub message: String,
}

/// The status of every instance of `desired` on a node observed as `observed`.
/// `failures` are errors of the last apply, reported on the instances they are for.
pub fn instance_status(
    desired: &Desired,
    observed: &Observed,
    netns_dir: &Path,
    failures: &[Failure],
) -> Vec<InstanceStatus> {
    let remaining = plan(desired, observed);
    // The remaining actions, conflicts and failures of each instance, read once from
    // their scope.
    let mut node_actions: Vec<&Action> = Vec::new();
    let mut own_actions: HashMap<&str, Vec<&Action>> = HashMap::new();
    for step in &remaining.steps {
        match step.scope.instance_name() {
            // Clean-up of what kudonet does not use is a node condition, not drift.
            None if step.action.is_best_effort() => {}
            None => node_actions.push(&step.action),
            Some(name) => own_actions.entry(name).or_default().push(&step.action),
        }
    }
    let mut conflicts = HashMap::new();
    for conflict in &remaining.conflicts {
        if let Some(name) = conflict.scope.instance_name() {
            conflicts.entry(name).or_insert(conflict);
        }
    }
    let mut failed = HashMap::new();
    for failure in failures {
        if let Some(name) = failure.scope.instance_name() {
            failed.entry(name).or_insert(failure);
        }
    }
    // A node-wide conflict is a node condition; it holds instances back only when it
    // blocks the whole node (nothing about them could be planned).
    let node_conflict = remaining
        .conflicts
        .iter()
        .find(|conflict| remaining.blocked && conflict.scope.is_node());
    desired
        .instances
        .iter()
        .map(|instance| {
            let netns = instance.namespace();
            let name = instance.name.as_str();
            let own_actions = own_actions.get(name).map(Vec::as_slice).unwrap_or_default();
            let conflict = conflicts.get(name).copied().or(node_conflict);
            let failure = failed.get(name);
            let (phase, message) = if let Some(conflict) = conflict {
                (Phase::Failed, conflict.message.clone())
            } else if let Some(failure) = failure {
                (Phase::Failed, failure.to_string())
            } else if !observed.namespaces.contains_key(&netns) {
                (Phase::Pending, "not created yet".to_string())
            } else if !own_actions.is_empty() || !node_actions.is_empty() {
                let pending: Vec<String> = own_actions
                    .iter()
                    .chain(&node_actions)
                    .map(|action| action.summary())
                    .collect();
                (
                    Phase::Drifted,
                    format!("{} pending: {}", pending.len(), pending.join("; ")),
                )
            } else {
                (Phase::Ready, String::new())
            };
            // Its own addresses, else those allocated to it.
            let addresses = match instance.addresses.as_slice() {
                [] => remaining
                    .allocated
                    .get(name)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
                named => named,
            };
            InstanceStatus {
                name: instance.name.clone(),
                phase,
                address: addresses
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                addresses: addresses.iter().map(ToString::to_string).collect(),
                netns: netns_dir.join(&netns).display().to_string(),
                host_interface: names::host_interface_name(&instance.name),
                message,
            }
        })
        .collect()
}

/// The instances kudonet has on a node, read from the kernel alone: what is in force when
/// the desired state cannot be read.
pub fn instances_in_force(observed: &Observed, netns_dir: &Path) -> Vec<InstanceStatus> {
    observed
        .namespaces
        .iter()
        .filter(|(_, namespace)| namespace.owned)
        .filter_map(|(netns, namespace)| {
            let name = netns.strip_prefix(names::NAMESPACE_PREFIX)?;
            let eth0 = namespace.links.get(names::INSTANCE_INTERFACE);
            let addresses: Vec<String> = eth0
                .map(|eth0| eth0.addresses.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            // Up, addressed, and a default route for each family it has an address of.
            let working = eth0.is_some_and(|eth0| {
                eth0.up
                    && !eth0.addresses.is_empty()
                    && eth0.addresses.iter().all(|address| {
                        namespace
                            .default_gateways
                            .iter()
                            .any(|gateway| gateway.is_ipv4() == address.is_ipv4())
                    })
            });
            Some(InstanceStatus {
                name: name.to_string(),
                phase: if working {
                    Phase::Ready
                } else {
                    Phase::Drifted
                },
                address: addresses.first().cloned().unwrap_or_default(),
                addresses,
                netns: netns_dir.join(netns).display().to_string(),
                host_interface: names::host_interface_name(name),
                message: "desired state unreadable: showing what is in force".to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::memory::MemoryDataplane;

    fn desired() -> Desired {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.yaml"),
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n---\nkind: Instance\nname: web\naddress: 10.0.0.2\n---\nkind: Instance\nname: db\naddress: 10.0.0.3\n",
        )
        .unwrap();
        load_desired(dir.path(), None).unwrap().1
    }

    #[test]
    fn held_back_instances_wait_and_the_status_reads_the_scope() {
        let desired = desired();
        let mut dataplane = MemoryDataplane::new(Observed::default());
        // The node is never held back, even when asked to.
        let held_back = BTreeSet::from([Scope::instance("web"), Scope::Node]);
        let outcome = converge(&mut dataplane, &desired, &held_back, &mut NoProgress).unwrap();
        assert!(outcome.failures.is_empty());
        // Everything left is web's own work; the node's and db's is done.
        assert!(!outcome.remaining.is_empty());
        assert!(
            outcome
                .remaining
                .steps
                .iter()
                .all(|step| step.scope == Scope::instance("web")),
            "{}",
            outcome.remaining
        );
        let statuses = instance_status(&desired, &outcome.observed, Path::new("/run/netns"), &[]);
        let phase = |name: &str| statuses.iter().find(|s| s.name == name).unwrap().phase;
        assert_eq!((phase("web"), phase("db")), (Phase::Pending, Phase::Ready));

        // A failure is reported on the instance it is for, and on no other.
        let failure = Failure {
            scope: Scope::instance("db"),
            action: Action::CreateNamespace {
                name: "kudo-db".into(),
            },
            error: DataplaneError::Unavailable(crate::dataplane::Cause::refusal("boom")),
        };
        let statuses = instance_status(
            &desired,
            &outcome.observed,
            Path::new("/run/netns"),
            &[failure],
        );
        let db = statuses.iter().find(|s| s.name == "db").unwrap();
        assert_eq!((db.phase, db.message.as_str()), (Phase::Failed, "boom"));
        let web = statuses.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.phase, Phase::Pending);
    }

    /// What a converge or teardown told its progress, one line per call.
    #[derive(Default)]
    struct Recorded(Vec<String>);

    impl Progress for Recorded {
        fn stage(&mut self, stage: Stage) {
            self.0.push(format!("stage: {stage}"));
        }
        fn planned(&mut self, actions: usize) {
            self.0.push(format!("planned: {actions}"));
        }
        fn applied(&mut self, action: &Action) {
            self.0.push(format!("applied: {}", action.summary()));
        }
        fn failed(&mut self, failure: &Failure) {
            self.0.push(format!("failed: {failure}"));
        }
    }

    /// What a progress hears of a pass that applied `outcome.applied`: the stages, the
    /// count, each action, and the wait for the kernel when `settling`.
    fn heard(outcome: &Outcome, settling: bool) -> Vec<String> {
        let mut expected = vec![
            "stage: observing the node".to_string(),
            format!("planned: {}", outcome.applied.len()),
        ];
        expected.extend(
            outcome
                .applied
                .iter()
                .map(|action| format!("applied: {}", action.summary())),
        );
        if settling {
            expected.push(format!("stage: {}", Stage::Settling));
        }
        expected.push("stage: verifying the node".to_string());
        expected
    }

    #[test]
    fn progress_hears_each_stage_the_count_and_every_action() {
        let desired = desired();
        let mut dataplane = MemoryDataplane::new(Observed::default());
        let mut recorded = Recorded::default();
        let outcome = converge(&mut dataplane, &desired, &BTreeSet::new(), &mut recorded).unwrap();
        assert!(outcome.converged() && outcome.failures.is_empty());
        // Nothing was removed: no wait for the kernel.
        assert_eq!(recorded.0, heard(&outcome, false));

        // Nothing to do: the node is read, and no count is announced.
        let mut recorded = Recorded::default();
        converge(&mut dataplane, &desired, &BTreeSet::new(), &mut recorded).unwrap();
        assert_eq!(recorded.0, ["stage: observing the node"]);

        let mut recorded = Recorded::default();
        let outcome = teardown(&mut dataplane, &mut recorded).unwrap();
        assert!(outcome.remaining.is_empty() && !outcome.applied.is_empty());
        // Namespaces were deleted: the wait for the kernel to destroy their veths shows.
        assert_eq!(recorded.0, heard(&outcome, true));

        // A closure hears about each applied action.
        let mut applied = Vec::new();
        let outcome = converge(
            &mut dataplane,
            &desired,
            &BTreeSet::new(),
            &mut |action: &Action| applied.push(action.clone()),
        )
        .unwrap();
        assert_eq!(applied, outcome.applied);
    }

    /// A dataplane whose nftables cannot be written (a kernel without `nft_nat`, say).
    struct NoNftables(MemoryDataplane);

    impl Dataplane for NoNftables {
        fn observe(&mut self) -> Result<Observed, DataplaneError> {
            self.0.observe()
        }

        fn apply(&mut self, action: &Action) -> Result<(), DataplaneError> {
            match action {
                Action::SyncNftables { .. } => Err(DataplaneError::action(
                    action,
                    crate::dataplane::Cause::new(std::io::Error::from_raw_os_error(95), false),
                )),
                _ => self.0.apply(action),
            }
        }
    }

    #[test]
    fn iptables_keeps_kudonets_translations_while_the_nftables_table_cannot_be_written() {
        let mut desired = desired();
        let mut dataplane = NoNftables(MemoryDataplane::new(Observed::default()));
        converge(&mut dataplane, &desired, &BTreeSet::new(), &mut NoProgress).unwrap();
        let nat = crate::observed::TableId::new(crate::spec::Family::Ipv4, crate::names::NAT);
        let built = dataplane.0.state.firewall[&nat].clone();
        assert!(built.has_kudonet_rules());

        desired.firewall = crate::spec::FirewallBackend::Nftables;
        let outcome =
            converge(&mut dataplane, &desired, &BTreeSet::new(), &mut NoProgress).unwrap();
        assert_eq!(
            outcome.failures[0].to_string(),
            "+ nftables table inet kudonet: Operation not supported (os error 95)"
        );
        // The nat rules stay in iptables (and in the plan); the forward accepts, which
        // nothing drops here, go.
        assert_eq!(dataplane.0.state.firewall[&nat], built);
        assert!(
            outcome
                .remaining
                .actions()
                .any(|action| action.clears_iptables_nat())
        );
        let filter = crate::observed::TableId::new(crate::spec::Family::Ipv4, crate::names::FILTER);
        assert!(!dataplane.0.state.firewall[&filter].has_kudonet_rules());
    }
}

//! Golden plans: each folder of `tests/golden/` is a case with
//!
//! - `desired/`: a desired-state directory (absent for a teardown case);
//! - `observed.yaml`: the node as observed (an `Observed`; `{}` for an empty machine);
//! - `node`: optional, the node to plan for (`--node`);
//! - `bridge-instances`: optional, how many instances a bridge holds (500 but here), so that
//!   a case has segments with few instances;
//! - `firewall`: optional, the firewall backend (`nftables`; else iptables);
//! - `expected.plan`: the plan, exactly as `kudonet plan` prints it.
//!
//! `UPDATE_GOLDEN=1 cargo test --test plan_golden` rewrites the expectations; review the diff.

use std::fs;
use std::path::Path;

use kudonet::observed::Observed;
use kudonet::plan::{BRIDGE_INSTANCES, plan_teardown, plan_with_bridge_instances};
use kudonet::spec;

fn run_case(case: &Path) -> Result<(), String> {
    // Required, so that a misnamed file cannot pass as an empty machine (write `{}`).
    let text = fs::read_to_string(case.join("observed.yaml"))
        .map_err(|e| format!("observed.yaml: {e}"))?;
    let observed: Observed =
        serde_saphyr::from_str(&text).map_err(|e| format!("observed.yaml: {e}"))?;
    let desired_dir = case.join("desired");
    let actual = if desired_dir.exists() {
        let spec = spec::load(&desired_dir).map_err(|e| format!("desired/: {e}"))?;
        let node_name = fs::read_to_string(case.join("node")).ok();
        let node = spec.select_node(node_name.as_deref().map(str::trim), None)?;
        let bridge_instances = match fs::read_to_string(case.join("bridge-instances")) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| format!("bridge-instances: {e}"))?,
            Err(_) => BRIDGE_INSTANCES,
        };
        let mut desired = spec.desired_for(node);
        desired.firewall = match fs::read_to_string(case.join("firewall"))
            .as_deref()
            .map(str::trim)
        {
            Ok("nftables") => spec::FirewallBackend::Nftables,
            Ok(other) => return Err(format!("firewall: {other:?} is not nftables")),
            Err(_) => spec::FirewallBackend::Iptables,
        };
        plan_with_bridge_instances(&desired, &observed, bridge_instances).to_string()
    } else {
        plan_teardown(&observed).to_string()
    };
    let expected_path = case.join("expected.plan");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&expected_path, &actual).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected = fs::read_to_string(&expected_path).map_err(|e| format!("expected.plan: {e}"))?;
    if actual != expected {
        return Err(format!(
            "plan differs.\n--- expected\n{expected}\n--- actual\n{actual}"
        ));
    }
    Ok(())
}

#[test]
fn golden_plans() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "golden cases missing in {}",
        root.display()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            run_case(case)
                .err()
                .map(|error| format!("{}: {error}", case.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

//! The planner on a large node: `plan(&Desired, &Observed)` for 10,000 instances (each with
//! one published port), against an empty node (a cold start after a reboot) and against a
//! converged one (every resync of a controller that has nothing to do). The converged
//! `Observed` is built by applying the first plan on the in-memory dataplane. Loading and
//! validating the desired-state directory of that size is measured too: every pass does it.
//! No privileges needed.
//!   cargo bench --bench planner

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::observed::Observed;
use kudonet::plan::plan;
use kudonet::reconcile::load_desired;

mod shared;
use shared::bench_state;

const INSTANCES: usize = 10_000;

fn planner(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.yaml"), bench_state(INSTANCES)).unwrap();
    let (_, desired) = load_desired(dir.path(), None).expect("a valid desired state");

    let empty = Observed::default();
    let cold = plan(&desired, &empty);
    let mut dataplane = MemoryDataplane::new(Observed::default());
    dataplane
        .apply_all(&cold.to_actions())
        .expect("the plan applies");
    let converged = dataplane.observe().unwrap();
    assert!(
        plan(&desired, &converged).is_empty(),
        "the converged node needs nothing"
    );
    eprintln!(
        "planner: {INSTANCES} instances, {} actions on an empty node",
        cold.steps.len()
    );

    let mut group = c.benchmark_group("planner_10k");
    group.sample_size(20);
    group.bench_function("plan_empty_node", |b| {
        b.iter(|| plan(black_box(&desired), black_box(&empty)))
    });
    group.bench_function("plan_converged_node", |b| {
        b.iter(|| plan(black_box(&desired), black_box(&converged)))
    });
    group.bench_function("load_and_validate", |b| {
        b.iter(|| load_desired(black_box(dir.path()), None).unwrap())
    });
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);

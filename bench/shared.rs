//! What the benches share: the desired state they measure and the median of their samples.

// Each bench uses part of it.
#![allow(dead_code)]

/// The desired state of bench/baselines/desired.sh with `instances` instances, as one file:
/// Node "bench" (10.200.0.1/16) and instances i0.. at 10.200.x.y, each publishing
/// 20000+i -> 80/tcp.
pub fn bench_state(instances: usize) -> String {
    let mut state = String::from("kind: Node\nname: bench\ncidr: 10.200.0.1/16\n");
    for index in 0..instances {
        let host = index + 2;
        state.push_str(&format!(
            "---\nkind: Instance\nname: i{index}\naddress: 10.200.{}.{}/16\nports:\n  - hostPort: {}\n    instancePort: 80\n",
            host / 256,
            host % 256,
            20_000 + index
        ));
    }
    state
}

/// The median of `values` (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

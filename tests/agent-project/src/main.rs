//! The Kudo node agent's use of the original network library, written as the agent writes it:
//! the library is the crate `network`, imported by the paths it was published with, and the
//! addresses are `cidr::Ipv4Inet` of the cidr version the manifest names. `cidr02/` and
//! `cidr03/` build this same file against kudonet with cidr 0.2 and 0.3; tests/compat.rs builds
//! both and runs them in a throwaway namespace.
//!
//! `agent start` does what the agent does at every start: a fresh node id, `setup_node` from a
//! tokio task, unwrapped; then it sets up an instance with an id of the agent's scheduler,
//! checks its namespace and cleans it. `agent stop NODE_ID` cleans the node.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use cidr::Ipv4Inet;
use network::node::request::SetupNodeRequest;
use network::node::setup_node;

/// The workload manager's side.
mod workload {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use cidr::Ipv4Inet;
    use network::error::KudoNetworkError;
    use network::instance::request::{CleanInstanceRequest, SetupInstanceRequest};
    use network::instance::response::SetupInstanceResponse;
    use network::instance::{clean_instance, setup_instance};
    use network::port::Port;
    use network::utils::namespace_name;

    pub fn run(node_id: String) -> Result<(), KudoNetworkError> {
        let instance_id = "default.web-Ab3xZ".to_string();
        let instance_ip_cidr = Ipv4Inet::new(Ipv4Addr::new(10, 0, 0, 2), 24).unwrap();
        let port = Port::new(80, 8080);
        let (source, destination): (i32, i32) = (port.source, port.destination);
        let request = SetupInstanceRequest::new(
            node_id,
            Ipv4Addr::new(10, 0, 0, 1),
            instance_id.clone(),
            instance_ip_cidr,
            vec![port],
        );
        let response: SetupInstanceResponse = setup_instance(request)?;
        let expected =
            SetupInstanceResponse::new("eth0".to_string(), namespace_name(instance_id.clone()));
        println!(
            "instance {instance_id}: {} in {} (expected {} in {}), port {source} -> {destination}, namespace exists: {}",
            response.interface_name,
            response.namespace_name,
            expected.interface_name,
            expected.namespace_name,
            Path::new("/run/netns")
                .join(&response.namespace_name)
                .exists()
        );
        let request = CleanInstanceRequest::new(
            instance_id,
            vec![Port::new(source, destination)],
            instance_ip_cidr,
        );
        clean_instance(request)?;
        Ok(())
    }
}

/// The agent's node side.
mod node {
    use network::node::response::SetupNodeResponse;
    use network::node::{
        clean_node,
        request::{CleanNodeRequest, SetupNodeRequest},
    };
    use network::utils::bridge_name;

    pub fn bridge(node_id: String) -> String {
        bridge_name(node_id)
    }

    pub fn stop(node_id: String) {
        let _request_type: Option<SetupNodeRequest> = None;
        let _response_type = SetupNodeResponse::new(bridge_name(node_id.clone()));
        clean_node(CleanNodeRequest::new(node_id)).unwrap();
    }
}

/// A fresh UUID-shaped node id, as the agent makes with `Uuid::new_v4()` at every start.
fn fresh_node_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let pid = u128::from(std::process::id());
    let bits = nanos ^ (pid << 64);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (bits >> 96) as u32,
        (bits >> 80) as u16,
        (bits >> 68) as u16 & 0xfff,
        (bits >> 56) as u16 & 0xfff,
        bits as u64 & 0xffff_ffff_ffff
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("start") => {
            let node_id = fresh_node_id();
            let client = tokio::spawn(async move {
                let node_ip_addr = Ipv4Addr::from_str("10.0.0.1").unwrap();
                let node_ip_cidr = Ipv4Inet::new(node_ip_addr, 24).unwrap();
                let request = SetupNodeRequest::new(node_id.to_string(), node_ip_cidr);
                let response = setup_node(request).unwrap();
                println!(
                    "node: bridge {} (bridge_name: {})",
                    response.interface_name,
                    node::bridge(node_id.clone())
                );
                workload::run(node_id.clone()).unwrap();
                println!("node id: {node_id}");
            });
            client.await.unwrap();
        }
        Some("stop") => node::stop(args[2].clone()),
        _ => panic!("usage: agent start | agent stop NODE_ID"),
    }
}

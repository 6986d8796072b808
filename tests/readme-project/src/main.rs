//! The examples of the original Kudo network library's README, unchanged (each in a
//! function; only the imports are added), built against kudonet.
//!
//! Run as root: `main` sets up the node and the instance, then cleans both.

use std::net::Ipv4Addr;
use std::str::FromStr;

use cidr::Ipv4Inet;
use kudonet::instance::{
    clean_instance, setup_instance, CleanInstanceRequest, Port, SetupInstanceRequest,
};
use kudonet::node::{
    clean_node, setup_iptables, setup_node, CleanNodeRequest, SetupIptablesRequest,
    SetupNodeRequest,
};
use kudonet::utils::get_namespace_name;

fn setup_node_example() {
    let node_id = "node";
    let node_ip_addr = Ipv4Addr::from_str("10.0.0.1").unwrap();
    let node_ip_cidr = Ipv4Inet::new(node_ip_addr, 24).unwrap();

    let request = SetupNodeRequest::new(node_id.to_string(), node_ip_cidr);
    let response = setup_node(request).unwrap();
    println!("CNI name: {}", response.interface_name);
}

fn setup_iptables_example() {
    let node_id = "node";
    let request = SetupIptablesRequest::new(node_id.to_string());

    setup_iptables(request).unwrap();
}

fn setup_instance_example() {
    let node_id = "node";
    let node_ip_addr = Ipv4Addr::from_str("10.0.0.1").unwrap();
    let instance_id = "instance";
    let instance_ip_addr = Ipv4Addr::from_str("10.0.0.2").unwrap();
    let instance_ip_cidr = Ipv4Inet::new(instance_ip_addr, 24).unwrap();
    let ports = vec![Port::new(80, 8080)];

    let request = SetupInstanceRequest::new(
        node_id.to_string(),
        node_ip_addr,
        instance_id.to_string(),
        instance_ip_cidr,
        ports,
    );
    let response = setup_instance(request).unwrap();
    println!("Instance default interface: {}", response.interface_name);
    println!("Network namespace: {}", response.namespace_name);
}

fn get_namespace_name_example() {
    let instance_id = "instance";
    let namespace_name = get_namespace_name(instance_id.to_string());
    println!("Namespace of {}: {}", instance_id, namespace_name);
}

fn clean_node_example() {
    let node_id = "node";
    let request = CleanNodeRequest::new(node_id.to_string());
    clean_node(request).unwrap();
}

fn clean_instance_example() {
    let instance_id = "instance";
    let instance_ip_addr = Ipv4Addr::from_str("10.0.0.2").unwrap();
    let instance_ip_cidr = Ipv4Inet::new(instance_ip_addr, 24).unwrap();
    let ports = vec![Port::new(80, 8080)];
    let request = CleanInstanceRequest::new(
        instance_id.to_string(),
        ports,
        instance_ip_cidr,
    );
    clean_instance(request).unwrap();
}

fn main() {
    setup_node_example();
    setup_iptables_example();
    setup_instance_example();
    get_namespace_name_example();
    clean_instance_example();
    clean_node_example();
}

//! Address allocation on a real kernel, in a sandbox: instances without `address` get the
//! lowest free address of each of the node's families, keep it for as long as they exist
//! (read back from the kernel, not from a database), never take an address a document
//! names, and show it in `status`; real packets flow between them.

mod common;

use common::cli::kudonet;
use common::{StateDir, netns, seen};

use kudonet::probe;
use kudonet::spec::Protocol::Tcp;

const NODE: &str = "\
kind: Node
name: node-a
cidr: [10.0.0.1/24, \"fd00:10::1/64\"]
";

fn instance(name: &str) -> String {
    format!("kind: Instance\nname: {name}\n")
}

/// `kudonet status DIR` rows, `NAME PHASE ADDRESS`, one space apart, without the header.
fn status(state: &StateDir) -> Vec<String> {
    let run = kudonet(&["status", state.path(), "--output", "json"]);
    run.expect_success();
    let document: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    document["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| {
            format!(
                "{} {} {}",
                instance["name"].as_str().unwrap(),
                instance["phase"].as_str().unwrap(),
                instance["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|address| address.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect()
}

/// The addresses of `eth0` in `kudo-NAME`, both families.
fn kernel_addresses(name: &str) -> String {
    common::sh(&format!(
        "ip -n kudo-{name} -o addr show dev eth0 scope global | awk '{{print $4}}' | sort | paste -sd,"
    ))
    .trim()
    .to_string()
}

#[test]
fn instances_without_an_address_get_the_lowest_free_one_and_keep_it() {
    common::sandboxed(
        "instances_without_an_address_get_the_lowest_free_one_and_keep_it",
        || {
            let state = StateDir::new(NODE);
            // web names 10.0.0.2; a and b name nothing.
            state.write(
                "web.yaml",
                "kind: Instance\nname: web\naddress: [10.0.0.2, \"fd00:10::2\"]\n",
            );
            state.write("b.yaml", &instance("b"));
            state.write("a.yaml", &instance("a"));
            kudonet(&["apply", state.path()]).expect_success();
            assert_eq!(
                status(&state),
                [
                    "a Ready 10.0.0.3/24,fd00:10::3/64",
                    "b Ready 10.0.0.4/24,fd00:10::4/64",
                    "web Ready 10.0.0.2/24,fd00:10::2/64",
                ]
            );
            assert_eq!(kernel_addresses("a"), "10.0.0.3/24,fd00:10::3/64");
            assert_eq!(kernel_addresses("b"), "10.0.0.4/24,fd00:10::4/64");
            kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");

            // Real packets between allocated instances, each seen as itself.
            let _server = probe::serve(
                &netns("kudo-b"),
                Tcp,
                "0.0.0.0:7777".parse::<std::net::SocketAddr>().unwrap(),
            )
            .unwrap();
            assert_eq!(seen(&netns("kudo-a"), Tcp, "10.0.0.4:7777"), "10.0.0.3");

            // a goes; aa comes, before b in name order: it gets a's old address, and b
            // keeps the one it holds.
            std::fs::remove_file(state.file("a.yaml")).unwrap();
            state.write("aa.yaml", &instance("aa"));
            kudonet(&["apply", state.path()]).expect_success();
            assert_eq!(
                status(&state),
                [
                    "aa Ready 10.0.0.3/24,fd00:10::3/64",
                    "b Ready 10.0.0.4/24,fd00:10::4/64",
                    "web Ready 10.0.0.2/24,fd00:10::2/64",
                ]
            );

            // A document naming b's address wins: b moves to the lowest free one.
            state.write(
                "web.yaml",
                "kind: Instance\nname: web\naddress: [10.0.0.4, \"fd00:10::2\"]\n",
            );
            kudonet(&["apply", state.path()]).expect_success();
            assert_eq!(
                status(&state),
                [
                    "aa Ready 10.0.0.3/24,fd00:10::3/64",
                    "b Ready 10.0.0.2/24,fd00:10::4/64",
                    "web Ready 10.0.0.4/24,fd00:10::2/64",
                ]
            );
            assert_eq!(kernel_addresses("b"), "10.0.0.2/24,fd00:10::4/64");
            kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
            kudonet(&["teardown"]).expect_success();
        },
    );
}

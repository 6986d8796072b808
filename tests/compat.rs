//! The library API of the original Kudo network library against a real kernel,
//! each test in its own sandbox (see `common::sandboxed`): the README's flow with real
//! packets, idempotence, one instance cleaned without disturbing another, errors in the
//! caller's terms, a reboot restored by `setup_iptables`, prefixes kept as asked, ids that are
//! not DNS labels, an agent restarting with a fresh node id from a tokio task, loopback nodes
//! refused, and the README's examples and the Kudo node agent's code built unchanged as
//! separate projects (cidr 0.2 and 0.3) and run.
//!
//! Inside a sandbox the library's state directory is `/run/kudonet-test/state` (the
//! sandbox's private `/run`), set through `KUDONET_STATE_DIR`.

mod common;

use common::{KUDONET, addr};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use cidr::Ipv4Inet;
use kudonet::instance::{
    CleanInstanceRequest, Port, SetupInstanceRequest, clean_instance, setup_instance,
};
use kudonet::names;
use kudonet::node::{
    CleanNodeRequest, NetworkError, SetupIptablesRequest, SetupNodeRequest, clean_node,
    setup_iptables, setup_node,
};
use kudonet::probe::{self, Place};
use kudonet::spec::Protocol::{Tcp, Udp};
use kudonet::utils::get_namespace_name;

const STATE_DIR: &str = "/run/kudonet-test/state";

/// Points the library at the sandbox's state directory.
fn use_sandbox_state_dir() {
    // SAFETY: a sandboxed test runs alone in its process (`--test-threads=1`), before it
    // starts any thread.
    unsafe { std::env::set_var("KUDONET_STATE_DIR", STATE_DIR) };
}

fn inet(text: &str) -> Ipv4Inet {
    Ipv4Inet::from_str(text).unwrap()
}

fn node_request() -> SetupNodeRequest {
    SetupNodeRequest::new("node".to_string(), inet("10.0.0.1/24"))
}

fn instance_request(id: &str, address: &str, ports: Vec<Port>) -> SetupInstanceRequest {
    SetupInstanceRequest::new(
        "node".to_string(),
        Ipv4Addr::new(10, 0, 0, 1),
        id.to_string(),
        inet(address),
        ports,
    )
}

fn clean_request(id: &str, address: &str, ports: Vec<Port>) -> CleanInstanceRequest {
    CleanInstanceRequest::new(id.to_string(), ports, inet(address))
}

fn netns(instance: &str) -> PathBuf {
    Path::new("/run/netns").join(get_namespace_name(instance.to_string()))
}

/// Serves TCP and UDP on `port` inside `instance`'s namespace.
fn serve(instance: &str, port: u16) -> [probe::EchoServer; 2] {
    let place = Place::netns(netns(instance));
    let address = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    [
        probe::serve(&place, Tcp, address).unwrap(),
        probe::serve(&place, Udp, address).unwrap(),
    ]
}

/// Whether `target` answers from the node, over TCP and over UDP (both or neither).
fn answers(target: &str) -> bool {
    let tcp = probe::ask(&Place::Here, Tcp, addr(target)).is_ok();
    let udp = probe::ask(&Place::Here, Udp, addr(target)).is_ok();
    assert_eq!(tcp, udp, "{target}: TCP answers {tcp}, UDP answers {udp}");
    tcp
}

fn kudonet(args: &[&str]) -> (bool, String) {
    let output = Command::new(KUDONET).args(args).output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The row of `instance` in `kudonet status` output, without its name, one space apart.
fn phase(status: &str, instance: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let mut cells = line.split_whitespace();
        (cells.next() == Some(instance)).then(|| cells.collect::<Vec<_>>().join(" "))
    })
}

/// Everything of kudonet's the kernel has: links, namespaces, chains and jump rules.
fn kudonet_leftovers() -> String {
    common::sh(
        "{ ip -o link show | grep -E 'kudo0|kv[0-9a-f]{13}|kudonet' || true; \
           ls /run/netns 2>/dev/null | grep kudo- || true; \
           iptables-save | grep -E 'KUDO|kudonet' || true; }",
    )
}

fn state_files() -> String {
    common::sh(&format!(
        "cd {STATE_DIR} 2>/dev/null && find . -type f | sort || true"
    ))
}

#[test]
fn readme_flow_publishes_ports_and_cleans_up_completely() {
    common::sandboxed(
        "readme_flow_publishes_ports_and_cleans_up_completely",
        || {
            use_sandbox_state_dir();
            let response = setup_node(node_request()).unwrap();
            assert_eq!(response.interface_name, "kudo0");
            assert_eq!(response.interface_name(), "kudo0");
            setup_iptables(SetupIptablesRequest::new("node".to_string())).unwrap();

            let response = setup_instance(instance_request(
                "instance",
                "10.0.0.2/24",
                vec![Port::new(80, 8080)],
            ))
            .unwrap();
            assert_eq!(
                (response.interface_name(), response.namespace_name()),
                ("eth0", "kudo-instance")
            );
            assert_eq!(
                (
                    response.interface_name.as_str(),
                    response.namespace_name.as_str()
                ),
                ("eth0", "kudo-instance")
            );
            assert_eq!(state_files(), "./instances/instance.yaml\n./node.yaml\n");

            // Host port 80 reaches instance port 8080, TCP and UDP, from the node's localhost
            // and its bridge address.
            let servers = serve("instance", 8080);
            assert!(answers("127.0.0.1:80"));
            assert!(answers("10.0.0.1:80"));
            assert!(
                !answers("127.0.0.1:8080"),
                "8080 is the instance's port, not the node's"
            );

            // The same node as the command line sees it.
            let (ok, status) = kudonet(&["status", STATE_DIR]);
            assert!(ok, "{status}");
            assert_eq!(
                phase(&status, "instance").as_deref(),
                Some("Ready 10.0.0.2/24 /run/netns/kudo-instance"),
                "{status}"
            );

            // Repeated calls are harmless: nothing changes, not even a file.
            let before = common::sh(&format!("ls -l --time-style=full-iso -R {STATE_DIR}"));
            setup_node(node_request()).unwrap();
            setup_iptables(SetupIptablesRequest::new("node".to_string())).unwrap();
            setup_instance(instance_request(
                "instance",
                "10.0.0.2/24",
                vec![Port::new(80, 8080)],
            ))
            .unwrap();
            assert_eq!(
                common::sh(&format!("ls -l --time-style=full-iso -R {STATE_DIR}")),
                before
            );
            assert_eq!(
                kudonet(&["plan", STATE_DIR]),
                (true, "No changes.\n".into())
            );
            assert!(answers("127.0.0.1:80"));

            // clean_instance removes its namespace, veth and port rules, and its file.
            clean_instance(clean_request(
                "instance",
                "10.0.0.2/24",
                vec![Port::new(80, 8080)],
            ))
            .unwrap();
            drop(servers);
            assert!(!netns("instance").exists());
            let veth = names::host_interface_name("instance");
            assert!(!common::run("ip", &["link", "show", &veth]).status.success());
            let nat = common::run_ok("iptables-save", &["-t", "nat"]);
            assert!(!nat.contains("-j DNAT"), "{nat}");
            assert!(!answers("127.0.0.1:80"));
            assert_eq!(state_files(), "./node.yaml\n");
            clean_instance(clean_request("instance", "10.0.0.2/24", vec![])).unwrap();
            clean_instance(clean_request("never-existed", "10.0.0.9/24", vec![])).unwrap();

            // clean_node leaves nothing of kudonet's, and is harmless when repeated.
            clean_node(CleanNodeRequest::new("node".to_string())).unwrap();
            assert_eq!(kudonet_leftovers(), "");
            assert_eq!(state_files(), "");
            clean_node(CleanNodeRequest::new("node".to_string())).unwrap();
            assert_eq!(kudonet_leftovers(), "");
        },
    );
}

#[test]
fn the_original_api_keeps_working_on_a_dual_stack_node() {
    common::sandboxed(
        "the_original_api_keeps_working_on_a_dual_stack_node",
        || {
            use_sandbox_state_dir();
            setup_node(node_request()).unwrap();
            // The operator gives the node IPv6 in its file; the agent restarts and sets the
            // node up again with the IPv4 it knows.
            let node_file = Path::new(STATE_DIR).join("node.yaml");
            let recorded = std::fs::read_to_string(&node_file).unwrap();
            let dual = recorded.replace(
                "cidr: 10.0.0.1/24",
                "cidr: [10.0.0.1/24, \"fd00:10::1/64\"]",
            );
            assert_ne!(dual, recorded, "{recorded}");
            std::fs::write(&node_file, &dual).unwrap();
            setup_node(node_request()).unwrap();
            assert!(
                std::fs::read_to_string(&node_file)
                    .unwrap()
                    .contains("cidr: [10.0.0.1/24, \"fd00:10::1/64\"]"),
                "the node keeps its IPv6 subnet"
            );
            assert!(
                common::run_ok("ip", &["-6", "-o", "addr", "show", "dev", "kudo0"])
                    .contains("inet6 fd00:10::1/64 scope global"),
            );
            // An agent restarting with a new node id re-keys the node; its IPv6 stays too.
            setup_node(SetupNodeRequest::new(
                "node-2".to_string(),
                inet("10.0.0.1/24"),
            ))
            .unwrap();
            let rekeyed = std::fs::read_to_string(&node_file).unwrap();
            assert!(
                rekeyed.contains("cidr: [10.0.0.1/24, \"fd00:10::1/64\"]"),
                "{rekeyed}"
            );
            setup_node(node_request()).unwrap();

            // Instances of the original API are IPv4, as they were.
            setup_instance(instance_request(
                "web",
                "10.0.0.2/24",
                vec![Port::new(80, 8080)],
            ))
            .unwrap();
            let _web = serve("web", 8080);
            assert!(answers("127.0.0.1:80"));
            let (ok, status) = kudonet(&["status", STATE_DIR]);
            assert!(ok, "{status}");
            assert_eq!(
                phase(&status, "web"),
                Some("Ready 10.0.0.2/24 /run/netns/kudo-web".into())
            );
            clean_node(CleanNodeRequest::new("node".to_string())).unwrap();
            assert_eq!(kudonet_leftovers(), "");
            assert!(!common::sh("ip6tables-save").contains("KUDO"));
        },
    );
}

#[test]
fn kudonet_firewall_puts_the_librarys_rules_in_nftables() {
    common::sandboxed(
        "kudonet_firewall_puts_the_librarys_rules_in_nftables",
        || {
            use_sandbox_state_dir();
            // SAFETY: as in `use_sandbox_state_dir`.
            unsafe { std::env::set_var("KUDONET_FIREWALL", "nftables") };
            setup_node(node_request()).unwrap();
            setup_instance(instance_request(
                "web",
                "10.0.0.2/24",
                vec![Port::new(80, 8080)],
            ))
            .unwrap();
            let _web = serve("web", 8080);
            assert!(answers("127.0.0.1:80"));
            let ports = common::run_ok("nft", &["list", "map", "inet", "kudonet", "ports4"]);
            assert!(
                ports.contains("tcp . 80 comment \"web\" : 10.0.0.2 . 8080"),
                "{ports}"
            );
            assert!(!common::run_ok("iptables-save", &[]).contains("KUDO-"));
            // The command line with the same backend agrees: nothing to change.
            let (ok, plan) = kudonet(&["--firewall", "nftables", "plan", STATE_DIR]);
            assert!(ok, "{plan}");
            assert_eq!(plan, "No changes.\n");

            // Another value is refused before anything changes.
            unsafe { std::env::set_var("KUDONET_FIREWALL", "pf") };
            let error = setup_instance(instance_request("db", "10.0.0.3/24", vec![])).unwrap_err();
            assert_eq!(
                error.to_string(),
                "invalid request: KUDONET_FIREWALL=\"pf\": expected iptables or nftables"
            );
            assert!(!netns("db").exists());

            unsafe { std::env::set_var("KUDONET_FIREWALL", "nftables") };
            clean_node(CleanNodeRequest::new("node".to_string())).unwrap();
            assert!(
                !common::run("nft", &["list", "table", "inet", "kudonet"])
                    .status
                    .success(),
                "the table is gone"
            );
        },
    );
}

#[test]
fn cleaning_one_instance_leaves_the_other_untouched() {
    common::sandboxed("cleaning_one_instance_leaves_the_other_untouched", || {
        use_sandbox_state_dir();
        setup_node(node_request()).unwrap();
        setup_instance(instance_request(
            "web",
            "10.0.0.2/24",
            vec![Port::new(80, 8080)],
        ))
        .unwrap();
        setup_instance(instance_request(
            "db",
            "10.0.0.3/24",
            vec![Port::new(81, 9090)],
        ))
        .unwrap();
        let _web = serve("web", 8080);
        let _db = serve("db", 9090);
        assert!(answers("127.0.0.1:80") && answers("127.0.0.1:81"));
        let db_veth = names::host_interface_name("db");
        let db_link = || common::run_ok("ip", &["-o", "link", "show", &db_veth]);
        let db_before = db_link();

        clean_instance(clean_request(
            "web",
            "10.0.0.2/24",
            vec![Port::new(80, 8080)],
        ))
        .unwrap();
        assert!(!netns("web").exists());
        assert!(!answers("127.0.0.1:80"));
        assert!(answers("127.0.0.1:81"), "db still published");
        assert_eq!(db_link(), db_before, "db's veth was not recreated");
        let (ok, status) = kudonet(&["status", STATE_DIR]);
        assert!(ok, "{status}");
        assert_eq!(
            phase(&status, "db"),
            Some("Ready 10.0.0.3/24 /run/netns/kudo-db".into())
        );
        assert_eq!(phase(&status, "web"), None, "{status}");

        // Changing one instance's ports leaves the other alone too.
        setup_instance(instance_request("web", "10.0.0.2/24", vec![])).unwrap();
        assert_eq!(db_link(), db_before);
        assert!(answers("127.0.0.1:81"));
    });
}

#[test]
fn errors_say_what_failed_and_change_nothing() {
    common::sandboxed("errors_say_what_failed_and_change_nothing", || {
        use_sandbox_state_dir();
        let message = |error: NetworkError| error.to_string();

        // No node yet.
        let error = setup_instance(instance_request("web", "10.0.0.2/24", vec![])).unwrap_err();
        assert!(
            matches!(error, NetworkError::NodeNotSetUp { .. }),
            "{error:?}"
        );
        assert_eq!(
            message(error),
            format!("no node is set up in {STATE_DIR}: call node::setup_node first")
        );
        let error = setup_iptables(SetupIptablesRequest::new("node".into())).unwrap_err();
        assert!(
            matches!(error, NetworkError::NodeNotSetUp { .. }),
            "{error:?}"
        );
        assert_eq!(kudonet_leftovers(), "", "nothing was set up");

        setup_node(node_request()).unwrap();
        setup_instance(instance_request(
            "web",
            "10.0.0.2/24",
            vec![Port::new(80, 8080)],
        ))
        .unwrap();
        let files = || {
            common::sh(&format!(
                "cat {STATE_DIR}/node.yaml {STATE_DIR}/instances/*"
            ))
        };
        let recorded = files();
        // Without the comments: they carry the time of the save.
        let nat = || {
            common::run_ok("iptables-save", &["-t", "nat"])
                .lines()
                .filter(|line| !line.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let nat_before = nat();

        // Every message names the request's values, never a file or position the caller
        // never wrote.
        let error = setup_instance(instance_request("web 1", "10.0.0.4/24", vec![])).unwrap_err();
        assert_eq!(
            message(error),
            "invalid request: instance_id \"web 1\": Instance id \"web 1\" must not contain \
             whitespace"
        );
        let error = setup_instance(instance_request("db", "10.0.1.3/24", vec![])).unwrap_err();
        assert!(
            matches!(error, NetworkError::InvalidRequest { .. }),
            "{error:?}"
        );
        assert_eq!(
            message(error),
            "invalid request: instance_ip_cidr 10.0.1.3/24: address 10.0.1.3 is outside Node \
             \"node\"'s subnet 10.0.0.0/24"
        );
        let error = setup_instance(instance_request("db", "10.0.0.2/24", vec![])).unwrap_err();
        assert_eq!(
            message(error),
            "invalid request: instance_ip_cidr 10.0.0.2/24: address 10.0.0.2 is already used by \
             instance \"web\""
        );
        let error = setup_instance(instance_request(
            "db",
            "10.0.0.3/24",
            vec![Port::new(80, 9090)],
        ))
        .unwrap_err();
        assert_eq!(
            message(error),
            "invalid request: ports[0] (source 80, destination 9090): host port 0.0.0.0:80/tcp \
             on Node \"node\" is already published by Instance \"web\"; ports[0] (source 80, \
             destination 9090): host port 0.0.0.0:80/udp on Node \"node\" is already published \
             by Instance \"web\""
        );
        for (source, destination) in [(70000, 80), (80, 0), (-1, 80)] {
            let error = setup_instance(instance_request(
                "db",
                "10.0.0.3/24",
                vec![Port::new(81, 81), Port::new(source, destination)],
            ))
            .unwrap_err();
            assert_eq!(
                message(error),
                format!(
                    "invalid request: ports[1] (source {source}, destination {destination}): \
                     a port is a number in 1..=65535"
                )
            );
        }

        let mut wrong_gateway = instance_request("db", "10.0.0.3/24", vec![]);
        wrong_gateway.node_ip_addr = Ipv4Addr::new(10, 0, 0, 254);
        assert_eq!(
            message(setup_instance(wrong_gateway).unwrap_err()),
            "invalid request: node_ip_addr 10.0.0.254 is not the gateway of node \"node\", \
             which is 10.0.0.1"
        );
        let mut wrong_node = instance_request("db", "10.0.0.3/24", vec![]);
        wrong_node.node_id = "other".into();
        let error = setup_instance(wrong_node).unwrap_err();
        assert!(
            matches!(error, NetworkError::DifferentNode { .. }),
            "{error:?}"
        );
        assert_eq!(
            message(error),
            format!(
                "node \"other\" is not the node set up in {STATE_DIR} (\"node\"); \
                 call node::clean_node for \"node\" first"
            )
        );
        let other_node = SetupNodeRequest::new("other".into(), inet("10.0.1.1/24"));
        let error = setup_node(other_node).unwrap_err();
        assert!(matches!(error, NetworkError::NodeInUse { .. }), "{error:?}");
        assert_eq!(
            message(error),
            format!(
                "node \"other\" cannot replace node \"node\" set up in {STATE_DIR}: its \
                 instances \"web\" are still set up; clean them with instance::clean_instance, \
                 or call node::clean_node for \"node\", first"
            )
        );
        assert!(matches!(
            clean_node(CleanNodeRequest::new("other".into())).unwrap_err(),
            NetworkError::DifferentNode { .. }
        ));
        // web would fall outside the new subnet.
        assert_eq!(
            message(
                setup_node(SetupNodeRequest::new("node".into(), inet("10.1.0.1/24"))).unwrap_err()
            ),
            "invalid request: instance \"web\": address 10.0.0.2 is outside Node \"node\"'s \
             subnet 10.1.0.0/24"
        );
        assert_eq!(
            message(clean_instance(clean_request("../etc", "10.0.0.2/24", vec![])).unwrap_err()),
            "invalid request: instance_id \"../etc\": Instance id \"../etc\" must not contain \
             `/` or `..`"
        );

        // None of these changed a file or a rule.
        assert_eq!(files(), recorded);
        assert_eq!(nat(), nat_before);
        assert_eq!(
            kudonet(&["plan", STATE_DIR]),
            (true, "No changes.\n".into())
        );
        assert_eq!(
            common::sh(&format!("ls -A {STATE_DIR} {STATE_DIR}/instances")),
            format!("{STATE_DIR}:\ninstances\nnode.yaml\n\n{STATE_DIR}/instances:\nweb.yaml\n")
        );
    });
}

#[test]
fn setup_iptables_restores_the_node_after_a_reboot() {
    common::sandboxed("setup_iptables_restores_the_node_after_a_reboot", || {
        use_sandbox_state_dir();
        setup_node(node_request()).unwrap();
        setup_instance(instance_request(
            "web",
            "10.0.0.2/24",
            vec![Port::new(80, 8080)],
        ))
        .unwrap();
        let rules = || {
            common::run_ok("iptables-save", &[])
                .lines()
                .filter(|l| l.contains("KUDO"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let rules_before = rules();

        // A reboot: the firewall, links, namespaces and /run are gone; the state is not.
        common::sh(
            "for table in filter nat; do iptables -t $table -F; iptables -t $table -X; done
             ip link delete kudo0
             for ns in /run/netns/*; do umount $ns; rm $ns; done
             rm -rf /run/kudonet",
        );
        assert_eq!(kudonet_leftovers(), "");

        setup_iptables(SetupIptablesRequest::new("node".to_string())).unwrap();
        assert_eq!(rules(), rules_before);
        let _web = serve("web", 8080);
        assert!(answers("127.0.0.1:80"));
        assert_eq!(
            kudonet(&["plan", STATE_DIR]),
            (true, "No changes.\n".into())
        );
    });
}

/// Builds the consumer project of `manifest` (relative to the crate) offline, from the local
/// registry, as a separate project would, and returns the path of its binary `bin`. The
/// projects share one target folder, so kudonet is built once for all of them.
fn build_consumer(manifest: &str, bin: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/consumer-projects");
    if !common::inside_sandbox() {
        let output = Command::new(env!("CARGO"))
            // Not --locked: the projects' lockfiles follow kudonet's own dependencies.
            .args(["build", "--offline", "--manifest-path"])
            .arg(root.join(manifest))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{manifest} does not build:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target.join("debug").join(bin)
}

/// Runs a consumer binary with the sandbox's state directory; its stdout, once it succeeded.
fn run_consumer(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .env("KUDONET_STATE_DIR", STATE_DIR)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?}: {stdout}{}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The README's examples, unchanged, built against this crate as separate projects with cidr
/// 0.3 and with cidr 0.2 (the version the original library was published with), then run in a
/// throwaway namespace.
#[test]
fn readme_examples_build_unchanged_as_a_separate_project_and_run() {
    let binaries = [
        build_consumer("tests/readme-project/Cargo.toml", "kudonet-readme-examples"),
        build_consumer(
            "tests/readme-project/cidr02/Cargo.toml",
            "kudonet-readme-examples-cidr02",
        ),
    ];
    common::sandboxed(
        "readme_examples_build_unchanged_as_a_separate_project_and_run",
        || {
            for binary in &binaries {
                assert_eq!(
                    run_consumer(binary, &[]),
                    "CNI name: kudo0\nInstance default interface: eth0\n\
                     Network namespace: kudo-instance\nNamespace of instance: kudo-instance\n"
                );
                assert_eq!(kudonet_leftovers(), "", "the examples end with clean_node");
            }
        },
    );
}

/// The Kudo node agent's import lines and calls (tests/agent-project/src/main.rs: the library
/// named `network`, its published paths, `setup_node` unwrapped in a tokio task with a fresh
/// node id at every start, an instance id of its scheduler) build unchanged against this crate
/// with cidr 0.2 and with cidr 0.3, and work, restarts included.
#[test]
fn the_agents_calls_build_with_cidr_02_and_03_and_survive_restarts() {
    let binaries = [
        build_consumer("tests/agent-project/cidr02/Cargo.toml", "agent-cidr02"),
        build_consumer("tests/agent-project/cidr03/Cargo.toml", "agent-cidr03"),
    ];
    common::sandboxed(
        "the_agents_calls_build_with_cidr_02_and_03_and_survive_restarts",
        || {
            for binary in &binaries {
                let mut node_ids = Vec::new();
                // Two starts, each with a fresh node id, as after a restart of the agent.
                for _ in 0..2 {
                    let stdout = run_consumer(binary, &["start"]);
                    let lines: Vec<&str> = stdout.lines().collect();
                    assert_eq!(
                        lines[..2],
                        [
                            "node: bridge kudo0 (bridge_name: kudo0)",
                            "instance default.web-Ab3xZ: eth0 in kudo-default.web-Ab3xZ \
                             (expected eth0 in kudo-default.web-Ab3xZ), port 80 -> 8080, \
                             namespace exists: true",
                        ],
                        "{stdout}"
                    );
                    node_ids.push(lines[2].strip_prefix("node id: ").unwrap().to_string());
                }
                assert_ne!(node_ids[0], node_ids[1]);
                assert_eq!(state_files(), "./node.yaml\n");
                run_consumer(binary, &["stop", &node_ids[1]]);
                assert_eq!(kudonet_leftovers(), "");
                assert_eq!(state_files(), "");
            }
        },
    );
}

#[test]
fn library_calls_work_beside_a_controller_watching_their_directory() {
    common::sandboxed(
        "library_calls_work_beside_a_controller_watching_their_directory",
        || {
            use_sandbox_state_dir();
            setup_node(node_request()).unwrap();
            let mut controller = Command::new(KUDONET)
                .args(["run", STATE_DIR, "--resync", "60", "-q"])
                .spawn()
                .expect("kudonet run starts");
            // The controller takes the node lock for each pass only: calls take turns with it.
            setup_instance(instance_request(
                "web",
                "10.0.0.2/24",
                vec![Port::new(80, 8080)],
            ))
            .unwrap();
            let _web = serve("web", 8080);
            assert!(answers("127.0.0.1:80"));
            clean_instance(clean_request("web", "10.0.0.2/24", vec![])).unwrap();
            assert!(!netns("web").exists());

            // An id that is not a DNS label is an instance like any other to the controller:
            // its veth, deleted behind kudonet's back, comes back in its namespace kudo-<id>.
            let id = "default.web-Ab3xZ";
            setup_instance(instance_request(id, "10.0.0.3/24", vec![])).unwrap();
            let veth = names::host_interface_name("default-web-ab3xz-c575252d");
            let index = || common::link(None, &veth).map(|link| link["ifindex"].clone());
            let before = index().expect("the instance's veth");
            common::run_ok("ip", &["link", "delete", &veth]);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while index().is_none_or(|now| now == before)
                || common::addresses(Some("kudo-default.web-Ab3xZ"), "eth0").is_empty()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the controller did not repair {id}'s veth"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert_eq!(
                common::addresses(Some("kudo-default.web-Ab3xZ"), "eth0"),
                ["10.0.0.3/24"]
            );
            clean_instance(clean_request(id, "10.0.0.3/24", vec![])).unwrap();
            assert!(!netns(id).exists());

            let pid = nix::unistd::Pid::from_raw(controller.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            assert!(controller.wait().unwrap().success());
            assert_eq!(
                kudonet(&["plan", STATE_DIR]),
                (true, "No changes.\n".to_string())
            );
        },
    );
}

/// The same call from a tokio task on a multi-threaded runtime, as the Kudo node agent makes
/// it from its gRPC client task.
fn in_a_tokio_task<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { tokio::spawn(async move { call() }).await.unwrap() })
}

/// Item: the request's prefix is recorded as asked, so a /32 on a /24 node is refused, in
/// the request's terms, and nothing changes.
#[test]
fn an_instance_keeps_the_prefix_it_asks_for_and_a_32_is_refused() {
    common::sandboxed(
        "an_instance_keeps_the_prefix_it_asks_for_and_a_32_is_refused",
        || {
            use_sandbox_state_dir();
            setup_node(node_request()).unwrap();
            let error = setup_instance(instance_request("web", "10.0.0.2/32", vec![])).unwrap_err();
            assert!(
                matches!(error, NetworkError::InvalidRequest { .. }),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                "invalid request: instance_ip_cidr 10.0.0.2/32: prefix /32 of address 10.0.0.2 \
                 differs from the /24 of Node \"node\"'s subnet 10.0.0.0/24"
            );
            assert_eq!(state_files(), "./node.yaml\n");
            assert!(!netns("web").exists());

            setup_instance(instance_request("web", "10.0.0.2/24", vec![])).unwrap();
            let recorded = common::sh(&format!("cat {STATE_DIR}/instances/web.yaml"));
            assert!(recorded.contains("\naddress: 10.0.0.2/24\n"), "{recorded}");
            assert_eq!(common::addresses(Some("kudo-web"), "eth0"), ["10.0.0.2/24"]);
            // A /32 asked for again is still refused; the instance keeps its /24.
            let error = setup_instance(instance_request("web", "10.0.0.2/32", vec![])).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("invalid request: instance_ip_cidr 10.0.0.2/32: "),
                "{error}"
            );
            assert_eq!(
                common::sh(&format!("cat {STATE_DIR}/instances/web.yaml")),
                recorded
            );
        },
    );
}

/// Item: ids the original library accepted (capitals, dots) work; the namespace is
/// `kudo-<id>`, as `utils::namespace_name` says, and the id is an ordinary instance to
/// `kudonet status` and `plan`.
#[test]
fn ids_the_original_accepted_name_their_namespace() {
    common::sandboxed("ids_the_original_accepted_name_their_namespace", || {
        use_sandbox_state_dir();
        setup_node(node_request()).unwrap();
        let id = "default.web-Ab3xZ";
        let request = || instance_request(id, "10.0.0.2/24", vec![Port::new(80, 8080)]);
        let response = setup_instance(request()).unwrap();
        assert_eq!(response.namespace_name, "kudo-default.web-Ab3xZ");
        assert_eq!(
            kudonet::utils::namespace_name(id.to_string()),
            response.namespace_name
        );
        assert_eq!(get_namespace_name(id.to_string()), response.namespace_name);
        assert_eq!(
            common::addresses(Some("kudo-default.web-Ab3xZ"), "eth0"),
            ["10.0.0.2/24"]
        );
        let _web = serve(id, 8080);
        assert!(answers("127.0.0.1:80"));

        // An id differing only in case is another instance, with its own namespace.
        setup_instance(instance_request("default.web-ab3xz", "10.0.0.3/24", vec![])).unwrap();
        assert_eq!(
            common::addresses(Some("kudo-default.web-ab3xz"), "eth0"),
            ["10.0.0.3/24"]
        );
        assert_eq!(
            common::sh(&format!(
                "cat {STATE_DIR}/instances/default-web-ab3xz-c575252d.yaml"
            )),
            "# Recorded by the kudonet library (kudonet::instance::setup_instance).\n\
             kind: Instance\nname: \"default-web-ab3xz-c575252d\"\nid: \"default.web-Ab3xZ\"\n\
             node: \"node\"\naddress: 10.0.0.2/24\nports:\n\
             \x20 - hostPort: 80\n    instancePort: 8080\n    protocol: tcp\n\
             \x20 - hostPort: 80\n    instancePort: 8080\n    protocol: udp\n"
        );
        let (ok, status) = kudonet(&["status", STATE_DIR]);
        assert!(ok, "{status}");
        assert_eq!(
            phase(&status, "default-web-ab3xz-c575252d").as_deref(),
            Some("Ready 10.0.0.2/24 /run/netns/kudo-default.web-Ab3xZ"),
            "{status}"
        );
        setup_instance(request()).unwrap();
        assert_eq!(
            kudonet(&["plan", STATE_DIR]),
            (true, "No changes.\n".into())
        );

        // A DNS-label id spelled like that name is another instance, which may not take the
        // record over, and whose clean-up leaves the record alone.
        let error = setup_instance(instance_request(
            "default-web-ab3xz-c575252d",
            "10.0.0.4/24",
            vec![],
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid request: instance_id \"default-web-ab3xz-c575252d\": its Instance name \
             \"default-web-ab3xz-c575252d\" is already instance \"default.web-Ab3xZ\"'s"
        );
        clean_instance(clean_request(
            "default-web-ab3xz-c575252d",
            "10.0.0.4/24",
            vec![],
        ))
        .unwrap();
        assert!(netns(id).exists());
        assert!(answers("127.0.0.1:80"));

        clean_instance(clean_request(id, "10.0.0.2/24", vec![])).unwrap();
        assert!(!netns(id).exists());
        assert!(!answers("127.0.0.1:80"));
        assert!(
            netns("default.web-ab3xz").exists(),
            "the other id is untouched"
        );
        clean_instance(clean_request("default.web-ab3xz", "10.0.0.3/24", vec![])).unwrap();
        assert_eq!(state_files(), "./node.yaml\n");
        assert_eq!(common::namespaces(), Vec::<String>::new());
    });
}

/// Item: the Kudo node agent calls setup_node from a tokio task with a fresh UUID as node id
/// at every start, and unwraps the result.
#[test]
fn a_restarted_agent_with_a_fresh_node_id_is_not_refused() {
    common::sandboxed(
        "a_restarted_agent_with_a_fresh_node_id_is_not_refused",
        || {
            use_sandbox_state_dir();
            let start = |node_id: &'static str| {
                in_a_tokio_task(move || {
                    setup_node(SetupNodeRequest::new(
                        node_id.to_string(),
                        inet("10.0.0.1/24"),
                    ))
                })
            };
            let first = "6f0c9a52-4b8e-4c4f-9d57-3f1e2a7b9c01";
            let second = "b2d4e6f8-0a1c-4e3b-8d5f-7a9c1e3b5d02";
            assert_eq!(start(first).unwrap().interface_name, "kudo0");
            let bridge = || common::link(None, "kudo0").unwrap()["ifindex"].clone();
            let before = bridge();

            // A restart: the node is re-keyed, and nothing in the kernel changes.
            assert_eq!(start(second).unwrap().interface_name, "kudo0");
            assert_eq!(bridge(), before);
            let node = common::sh(&format!("cat {STATE_DIR}/node.yaml"));
            assert!(node.contains(&format!("name: \"{second}\"\n")), "{node}");
            assert_eq!(kudonet::utils::bridge_name(second.to_string()), "kudo0");
            assert_eq!(
                kudonet(&["plan", STATE_DIR]),
                (true, "No changes.\n".into())
            );

            // With an instance set up, another id is refused: a second agent sharing the
            // state directory must not take the node over.
            let mut request = instance_request("web", "10.0.0.2/24", vec![]);
            request.node_id = second.to_string();
            setup_instance(request).unwrap();
            let third = "c3e5a7b9-1d2f-4a6c-9e8b-0f2d4a6c8e03";
            let error = start(third).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "node \"{third}\" cannot replace node \"{second}\" set up in {STATE_DIR}: its \
                     instances \"web\" are still set up; clean them with \
                     instance::clean_instance, or call node::clean_node for \"{second}\", first"
                )
            );
            assert!(netns("web").exists());
            clean_instance(clean_request("web", "10.0.0.2/24", vec![])).unwrap();
            start(third).unwrap();
            assert_eq!(bridge(), before);
            clean_node(CleanNodeRequest::new(third.to_string())).unwrap();
            assert_eq!(kudonet_leftovers(), "");
        },
    );
}

/// Item: the agent's own tests set up a node on 127.0.0.1/32 from two tests at once. A
/// loopback address with a host prefix cannot be the instances' gateway: both get the same
/// clear error, and nothing is recorded or created.
#[test]
fn a_loopback_node_is_refused_for_every_caller() {
    common::sandboxed("a_loopback_node_is_refused_for_every_caller", || {
        use_sandbox_state_dir();
        let errors: Vec<String> = std::thread::scope(|scope| {
            let callers: Vec<_> = ["agent-test-1", "agent-test-2"]
                .into_iter()
                .map(|node_id| {
                    scope.spawn(move || {
                        setup_node(SetupNodeRequest::new(
                            node_id.to_string(),
                            inet("127.0.0.1/32"),
                        ))
                        .unwrap_err()
                        .to_string()
                    })
                })
                .collect();
            callers
                .into_iter()
                .map(|caller| caller.join().unwrap())
                .collect()
        });
        let expected = "invalid request: node_ip_cidr 127.0.0.1/32: cidr \"127.0.0.1/32\": a \
                        loopback address cannot be a node's bridge address, the gateway of its \
                        instances";
        assert_eq!(errors, [expected, expected]);
        assert_eq!(state_files(), "");
        assert_eq!(kudonet_leftovers(), "");
    });
}

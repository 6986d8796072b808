//! The kudonet binary as a CNI plugin, driven as a runtime drives it: CNI_* variables and
//! the network configuration on stdin, in a sandbox where the test creates the
//! "container" namespaces itself (`ip netns add`). Results, error documents and exit codes
//! are asserted exactly; real packets cross the bridge and published ports.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use common::cli::Run;
use common::controller::Controller;
use common::{StateDir, kudo_lines, link, netns, sandboxed, seen_tcp, sh};

const NETWORK: &str = "kudonet-test";

/// A dual-stack node.
const DUAL_STACK_NODE: &str = "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, \"fd00:10::1/64\"]\n";

/// An IPv4 node.
const NODE: &str = "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n";

/// Every variable the plugin reads: a call sets exactly those it is given.
const VARIABLES: [&str; 8] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "KUDONET_FIREWALL",
    "KUDONET_LOG",
];

/// Starts the plugin with `env` and `stdin`, as a runtime does.
fn spawn(env: &[(&str, &str)], stdin: &str) -> Child {
    let mut command = Command::new(common::KUDONET);
    for variable in VARIABLES {
        command.env_remove(variable);
    }
    let mut child = command
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kudonet starts");
    // A plugin that fails early may not read it all.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child
}

fn finish(child: Child) -> Run {
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn cni(env: &[(&str, &str)], stdin: &str) -> Run {
    finish(spawn(env, stdin))
}

/// The network configuration of `NETWORK` in `version`, with `extra` keys (`,"k":v...`).
fn config(state: &StateDir, version: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"{NETWORK}","type":"kudonet","stateDir":"{}"{extra}}}"#,
        state.path()
    )
}

/// A container of the test: its id (64 hex digits, as podman's), its namespace
/// `/run/netns/NAME` and the interface it is attached on.
struct Container {
    id: String,
    name: String,
    ifname: String,
}

impl Container {
    /// Container `number`, attached on `ifname`; its namespace is created.
    fn new(number: u32, ifname: &str) -> Container {
        let container = Container::without_namespace(number, ifname);
        sh(&format!("ip netns add {}", container.name));
        container
    }

    fn without_namespace(number: u32, ifname: &str) -> Container {
        Container {
            id: format!("{number:04x}{}", "c0ffee".repeat(10)),
            name: format!("c{number}"),
            ifname: ifname.to_string(),
        }
    }

    fn netns(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The Instance name kudonet gives the attachment.
    fn instance(&self) -> String {
        kudonet::cni::instance_name(&self.id, &self.ifname)
    }

    /// The host end of its veth pair.
    fn host(&self) -> String {
        kudonet::names::host_interface_name(&self.instance())
    }

    /// Its document in `state`.
    fn document(&self, state: &StateDir) -> std::path::PathBuf {
        state.file(&format!("cni/{NETWORK}/{}.yaml", self.instance()))
    }

    fn env<'a>(&'a self, command: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &self.id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=test"),
        ]
    }

    /// `command` for this attachment with `stdin`.
    fn call(&self, command: &str, stdin: &str) -> Run {
        cni(&self.env(command, &self.netns()), stdin)
    }

    fn spawn(&self, command: &str, stdin: &str) -> Child {
        spawn(&self.env(command, &self.netns()), stdin)
    }

    /// ADD in `version` with `extra` configuration; must succeed: its result.
    #[track_caller]
    fn add(&self, state: &StateDir, version: &str, extra: &str) -> Value {
        let run = self.call("ADD", &config(state, version, extra));
        result(&run)
    }

    /// DEL; must succeed silently.
    #[track_caller]
    fn del(&self, state: &StateDir) {
        self.call("DEL", &config(state, "1.0.0", ""))
            .expect(0, "", "");
    }

    /// What ADD reports for it in `version`, with `addresses` and the node's gateways:
    /// the bridge, the host end and the container's interface with the MAC addresses the
    /// kernel has.
    fn expected(&self, version: &str, addresses: &[&str]) -> Value {
        let mac = |netns: Option<&str>, name: &str| {
            link(netns, name).unwrap_or_else(|| panic!("no link {name}"))["address"].clone()
        };
        let instance_mac = kudonet::names::instance_mac(&self.instance())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(mac(Some(&self.name), &self.ifname), instance_mac.as_str());
        let ips: Vec<Value> = addresses
            .iter()
            .map(|address| {
                let v6 = address.contains(':');
                let mut ip = json!({
                    "address": address,
                    "gateway": if v6 { "fd00:10::1" } else { "10.0.0.1" },
                    "interface": 2,
                });
                if version == "0.4.0" {
                    ip["version"] = json!(if v6 { "6" } else { "4" });
                }
                ip
            })
            .collect();
        let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
        if addresses.iter().any(|address| address.contains(':')) {
            routes.push(json!({"dst": "::/0"}));
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "kudo0", "mac": mac(None, "kudo0")},
                {"name": self.host(), "mac": mac(None, &self.host())},
                {"name": self.ifname, "mac": instance_mac, "sandbox": self.netns()},
            ],
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }
}

/// The result of a call that must have succeeded with one line of JSON on stdout.
#[track_caller]
fn result(run: &Run) -> Value {
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (0, ""),
        "stdout: {}",
        run.stdout
    );
    assert!(run.stdout.ends_with('\n') && run.stdout.lines().count() == 1);
    serde_json::from_str(&run.stdout).unwrap()
}

/// Asserts a failed call printed exactly `document` (one line) and exited 1.
#[track_caller]
fn expect_error(run: &Run, document: &str) {
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (1, format!("{document}\n").as_str()),
        "stderr: {}",
        run.stderr
    );
}

/// The address the container's interface has, of each family.
fn container_addresses(container: &Container) -> String {
    sh(&format!(
        "ip -n {} -o addr show dev {} scope global | awk '{{print $4}}' | sort | paste -sd,",
        container.name, container.ifname
    ))
    .trim()
    .to_string()
}

#[test]
fn version_lists_the_versions_kudonet_speaks() {
    cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#).expect(
        0,
        "{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n",
        "",
    );
    // The answer is in the version the request states; without one, kudonet's newest.
    // The other variables (runtimes pass dummies) do not matter.
    cni(&[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")], "").expect(
        0,
        "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n",
        "",
    );
}

#[test]
fn status_says_whether_the_state_directory_has_a_node() {
    let state = StateDir::empty();
    expect_error(
        &cni(&[("CNI_COMMAND", "STATUS")], &config(&state, "1.1.0", "")),
        &format!(
            r#"{{"cniVersion":"1.1.0","code":50,"msg":"plugin not available","details":"{}: no Node: at least one document of kind Node is required"}}"#,
            state.path(),
        ),
    );
    state.write("node.yaml", NODE);
    cni(&[("CNI_COMMAND", "STATUS")], &config(&state, "1.1.0", "")).expect(0, "", "");
    // STATUS came with 1.1.0.
    expect_error(
        &cni(&[("CNI_COMMAND", "STATUS")], &config(&state, "1.0.0", "")),
        r#"{"cniVersion":"1.0.0","code":1,"msg":"config version does not allow STATUS","details":"config is \"1.0.0\", STATUS needs 1.1.0"}"#,
    );
}

#[test]
fn requests_kudonet_cannot_serve_are_error_documents_and_change_nothing() {
    sandboxed(
        "requests_kudonet_cannot_serve_are_error_documents_and_change_nothing",
        || {
            let state = StateDir::new(NODE);
            let c1 = Container::new(1, "eth0");
            let add = config(&state, "1.0.0", "");
            let netns = c1.netns();
            let mut env = c1.env("ADD", &netns);

            env.retain(|(name, _)| *name != "CNI_NETNS");
            expect_error(
                &cni(&env, &add),
                r#"{"cniVersion":"1.0.0","code":4,"msg":"required env variables [CNI_NETNS] missing"}"#,
            );
            expect_error(
                &cni(&[("CNI_COMMAND", "FOO")], &add),
                r#"{"cniVersion":"1.0.0","code":4,"msg":"unknown CNI_COMMAND: FOO"}"#,
            );
            expect_error(
                &c1.call("ADD", r#"{"cniVersion":"1.0.0","name":"#),
                r#"{"cniVersion":"1.1.0","code":6,"msg":"cannot decode the network configuration","details":"EOF while parsing a value at line 1 column 29"}"#,
            );
            expect_error(
                &c1.call("ADD", r#"{"cniVersion":"1.0.0","type":"kudonet"}"#),
                r#"{"cniVersion":"1.0.0","code":7,"msg":"missing network name"}"#,
            );
            expect_error(
                &c1.call("ADD", &config(&state, "9.9.9", "")),
                r#"{"cniVersion":"9.9.9","code":1,"msg":"incompatible CNI versions","details":"config is \"9.9.9\", plugin supports [\"0.4.0\", \"1.0.0\", \"1.1.0\"]"}"#,
            );
            let mac = cni(
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", &c1.id),
                    ("CNI_NETNS", &netns),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "IgnoreUnknown=1;MAC=02:00:00:00:00:09"),
                ],
                &add,
            );
            expect_error(
                &mac,
                r#"{"cniVersion":"1.0.0","code":2,"msg":"unsupported field CNI_ARGS MAC: \"02:00:00:00:00:09\"","details":"kudonet derives each interface's MAC address from its instance name"}"#,
            );
            let missing = cni(&c1.env("ADD", "/run/netns/gone"), &add);
            expect_error(
                &missing,
                r#"{"cniVersion":"1.0.0","code":4,"msg":"invalid CNI_NETNS","details":"/run/netns/gone does not exist"}"#,
            );
            let file = state.beside("not-a-namespace");
            std::fs::write(&file, "").unwrap();
            let plain = cni(&c1.env("ADD", file.to_str().unwrap()), &add);
            expect_error(
                &plain,
                &format!(
                    r#"{{"cniVersion":"1.0.0","code":4,"msg":"invalid CNI_NETNS","details":"{} is not a network namespace"}}"#,
                    file.display()
                ),
            );
            // The node's own namespace, however named.
            let own = cni(&c1.env("ADD", "/proc/self/ns/net"), &add);
            expect_error(
                &own,
                r#"{"cniVersion":"1.0.0","code":4,"msg":"invalid CNI_NETNS","details":"/proc/self/ns/net is the node's own network namespace"}"#,
            );
            // An address outside the node's subnet: refused before anything is written.
            expect_error(
                &c1.call(
                    "ADD",
                    &config(&state, "1.0.0", r#","runtimeConfig":{"ips":["10.0.1.5"]}"#),
                ),
                r#"{"cniVersion":"1.0.0","code":101,"msg":"request refused","details":"invalid request: runtimeConfig.ips[0] \"10.0.1.5\": address 10.0.1.5 is outside Node \"node-a\"'s subnet 10.0.0.0/24"}"#,
            );
            assert!(!state.file("cni").exists(), "a document was written");

            // A state directory without a Node cannot take an attachment.
            let empty = StateDir::empty();
            expect_error(
                &c1.call("ADD", &config(&empty, "1.0.0", "")),
                &format!(
                    r#"{{"cniVersion":"1.0.0","code":100,"msg":"node not set up","details":"{}: no Node: at least one document of kind Node is required"}}"#,
                    empty.path(),
                ),
            );
            assert!(!empty.file("cni").exists());
            assert_eq!(common::link_names(Some("c1")), ["lo"]);
        },
    );
}

#[test]
fn add_attaches_containers_that_reach_each_other_and_publishes_their_ports() {
    sandboxed(
        "add_attaches_containers_that_reach_each_other_and_publishes_their_ports",
        || {
            common::setup_outside_dual_stack();
            let state = StateDir::new(DUAL_STACK_NODE);
            let c1 = Container::new(1, "eth0");
            let c2 = Container::new(2, "eth0");
            let c3 = Container::new(3, "net1");
            let ports = r#","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;
            let first = c1.add(&state, "1.0.0", ports);
            assert_eq!(
                first,
                c1.expected("1.0.0", &["10.0.0.2/24", "fd00:10::2/64"])
            );
            assert_eq!(
                c2.add(&state, "0.4.0", ""),
                c2.expected("0.4.0", &["10.0.0.3/24", "fd00:10::3/64"])
            );
            assert_eq!(
                c3.add(&state, "1.1.0", ""),
                c3.expected("1.1.0", &["10.0.0.4/24", "fd00:10::4/64"])
            );
            assert_eq!(container_addresses(&c1), "10.0.0.2/24,fd00:10::2/64");
            assert_eq!(container_addresses(&c3), "10.0.0.4/24,fd00:10::4/64");

            // The document records the attachment.
            assert_eq!(
                std::fs::read_to_string(c3.document(&state)).unwrap(),
                format!(
                    "# Recorded by the kudonet CNI plugin; DEL, CHECK and GC read the next three lines.
# network: \"{NETWORK}\"
# containerID: \"{}\"
# ifname: \"net1\"
kind: Instance
name: \"{}\"
node: \"node-a\"
netns: \"/run/netns/c3\"
interface: \"net1\"
address:
  - \"10.0.0.4/24\"
  - \"fd00:10::4/64\"
",
                    c3.id,
                    c3.instance()
                )
            );

            // Through the bridge, each seen as itself.
            sh("ip netns exec c2 ping -c1 -W2 10.0.0.2 >/dev/null");
            let _server = common::probes::serve(&netns("c1"), kudonet::spec::Protocol::Tcp, 80);
            assert_eq!(seen_tcp(&netns("c3"), "10.0.0.2:80"), "10.0.0.4");
            // The published port, from outside the node.
            assert_eq!(
                seen_tcp(&netns("outside"), "192.0.2.10:8080"),
                "192.0.2.254"
            );

            // The same ADD again: the interface exists, which the spec makes an error.
            let again = c1.call("ADD", &config(&state, "1.0.0", ports));
            expect_error(
                &again,
                r#"{"cniVersion":"1.0.0","code":4,"msg":"invalid CNI_IFNAME","details":"interface \"eth0\" already exists in /run/netns/c1"}"#,
            );
            assert_eq!(container_addresses(&c1), "10.0.0.2/24,fd00:10::2/64");
            kudonet_status_lists(&state, &[&c1, &c2, &c3]);
        },
    );
}

/// `kudonet status` shows the attachments as Ready, by instance name.
fn kudonet_status_lists(state: &StateDir, containers: &[&Container]) {
    let run = common::cli::kudonet(&["status", state.path(), "--output", "json"]);
    run.expect_success();
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    let mut expected: Vec<(String, String)> = containers
        .iter()
        .map(|container| (container.instance(), "Ready".to_string()))
        .collect();
    expected.sort();
    assert_eq!(common::controller::phases(&status), expected);
}

#[test]
fn del_is_idempotent_and_leaves_nothing_of_the_attachment() {
    sandboxed(
        "del_is_idempotent_and_leaves_nothing_of_the_attachment",
        || {
            let state = StateDir::new(NODE);
            let c1 = Container::new(1, "eth0");
            let ports =
                r#","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80}]}"#;
            c1.add(&state, "1.0.0", ports);
            assert!(c1.document(&state).exists());
            assert!(link(None, &c1.host()).is_some());
            assert!(kudo_lines(false).contains("--dport 8080"));

            c1.del(&state);
            assert!(!c1.document(&state).exists());
            assert!(link(None, &c1.host()).is_none());
            assert!(link(Some("c1"), "eth0").is_none());
            assert!(
                !kudo_lines(false).contains("--dport 8080"),
                "{}",
                kudo_lines(false)
            );
            // The namespace is the runtime's: it stays.
            assert!(common::namespaces().contains(&"c1".to_string()));
            c1.del(&state);

            // The namespace deleted before DEL (the veth pair went with it).
            let c2 = Container::new(2, "eth0");
            c2.add(&state, "1.0.0", ports);
            sh("ip netns del c2");
            c2.del(&state);
            c2.del(&state);
            assert!(!c2.document(&state).exists());
            assert!(link(None, &c2.host()).is_none());
            assert!(!kudo_lines(false).contains("--dport 8080"));

            // No CNI_NETNS at all.
            let c3 = Container::new(3, "eth0");
            c3.add(&state, "1.0.0", "");
            let mut env = c3.env("DEL", "");
            env.retain(|(name, _)| *name != "CNI_NETNS");
            cni(&env, &config(&state, "1.0.0", "")).expect(0, "", "");
            cni(&c3.env("DEL", ""), &config(&state, "1.0.0", "")).expect(0, "", "");
            assert!(!c3.document(&state).exists());
            assert!(link(None, &c3.host()).is_none());
            assert!(link(Some("c3"), "eth0").is_none());

            // The attachment's address is free again: the next one gets the lowest.
            let c4 = Container::new(4, "eth0");
            c4.add(&state, "1.0.0", "");
            assert_eq!(container_addresses(&c4), "10.0.0.2/24");

            // A state directory without a Node: the document alone goes.
            let orphan = StateDir::empty();
            let document = orphan.file(&format!("cni/{NETWORK}/{}.yaml", c4.instance()));
            std::fs::create_dir_all(document.parent().unwrap()).unwrap();
            std::fs::copy(c4.document(&state), &document).unwrap();
            let run = c4.call("DEL", &config(&orphan, "1.0.0", ""));
            assert_eq!((run.code, run.stdout.as_str()), (0, ""));
            // Said on stderr, which runtimes log.
            assert!(
                run.stderr.ends_with(&format!(
                    "WARN kudonet::cni::commands: node not set up; {}: no Node: at least one \
                     document of kind Node is required; {}:7:7: Instance {:?} is on Node \
                     \"node-a\", which does not exist: removing the document of instance {} \
                     only\n",
                    orphan.path(),
                    document.display(),
                    c4.instance(),
                    c4.instance()
                )),
                "{}",
                run.stderr
            );
            assert!(!document.exists());
            assert!(c4.document(&state).exists());
        },
    );
}

#[test]
fn check_compares_the_attachment_with_its_add_result() {
    sandboxed("check_compares_the_attachment_with_its_add_result", || {
        let state = StateDir::new(NODE);
        let c1 = Container::new(1, "eth0");
        let added = c1.add(&state, "1.0.0", "");
        let with_prev = config(&state, "1.0.0", &format!(r#","prevResult":{added}"#));
        c1.call("CHECK", &with_prev).expect(0, "", "");

        expect_error(
            &c1.call("CHECK", &config(&state, "1.0.0", "")),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"required prevResult missing","details":"CHECK compares the attachment with the result of its ADD"}"#,
        );
        let stranger = Container::without_namespace(9, "eth0");
        let run = cni(&stranger.env("CHECK", &c1.netns()), &with_prev);
        expect_error(
            &run,
            &format!(
                r#"{{"cniVersion":"1.0.0","code":3,"msg":"container unknown","details":"no attachment (CNI_CONTAINERID \"{}\", CNI_IFNAME \"eth0\") on network \"{NETWORK}\""}}"#,
                stranger.id
            ),
        );

        // A prevResult that is not what the attachment has.
        let mut other = added.clone();
        other["ips"][0]["address"] = json!("10.0.0.7/24");
        expect_error(
            &c1.call(
                "CHECK",
                &config(&state, "1.0.0", &format!(r#","prevResult":{other}"#)),
            ),
            &format!(
                r#"{{"cniVersion":"1.0.0","code":103,"msg":"check failed","details":"prevResult gives eth0 the addresses 10.0.0.7/24, instance {} has 10.0.0.2/24"}}"#,
                c1.instance()
            ),
        );

        // Someone deletes the address inside the container.
        sh("ip -n c1 addr del 10.0.0.2/24 dev eth0");
        expect_error(
            &c1.call("CHECK", &with_prev),
            r#"{"cniVersion":"1.0.0","code":103,"msg":"check failed","details":"still differs: + address 10.0.0.2/24 on /run/netns/c1/eth0; still differs: ~ route default via 10.0.0.1 in /run/netns/c1"}"#,
        );
        // CHECK changes nothing.
        assert_eq!(container_addresses(&c1), "");
    });
}

#[test]
fn gc_removes_the_attachments_the_runtime_no_longer_lists() {
    sandboxed(
        "gc_removes_the_attachments_the_runtime_no_longer_lists",
        || {
            let state = StateDir::new(NODE);
            let (a, b, c) = (
                Container::new(1, "eth0"),
                Container::new(2, "eth0"),
                Container::new(3, "eth0"),
            );
            for container in [&a, &b, &c] {
                container.add(&state, "1.1.0", "");
            }
            // An attachment of another network on the same node is not this GC's.
            let d = Container::new(4, "eth0");
            let other = format!(
                r#"{{"cniVersion":"1.1.0","name":"other","type":"kudonet","stateDir":"{}"}}"#,
                state.path()
            );
            result(&d.call("ADD", &other));
            let valid = format!(
                r#","cni.dev/valid-attachments":[{{"containerID":"{}","ifname":"eth0"}},{{"containerID":"{}","ifname":"eth0"}}]"#,
                a.id, c.id
            );
            cni(
                &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
                &config(&state, "1.1.0", &valid),
            )
            .expect(0, "", "");
            assert!(!b.document(&state).exists());
            assert!(link(None, &b.host()).is_none());
            for container in [&a, &c] {
                assert!(container.document(&state).exists());
                assert!(link(None, &container.host()).is_some());
            }
            assert!(
                state
                    .file(&format!("cni/other/{}.yaml", d.instance()))
                    .exists()
            );
            assert!(link(None, &d.host()).is_some());
            expect_error(
                &cni(&[("CNI_COMMAND", "GC")], &config(&state, "1.1.0", "")),
                r#"{"cniVersion":"1.1.0","code":7,"msg":"missing cni.dev/valid-attachments","details":"GC removes the attachments that list does not name"}"#,
            );
        },
    );
}

#[test]
fn an_add_that_cannot_converge_is_rolled_back() {
    sandboxed("an_add_that_cannot_converge_is_rolled_back", || {
        let state = StateDir::new(NODE);
        let c1 = Container::new(1, "eth0");
        // The runtime's namespace already has an eth0: refused before anything is written.
        sh("ip -n c1 link add eth0 type veth peer name peer0");
        let run = c1.call("ADD", &config(&state, "1.0.0", ""));
        expect_error(
            &run,
            r#"{"cniVersion":"1.0.0","code":4,"msg":"invalid CNI_IFNAME","details":"interface \"eth0\" already exists in /run/netns/c1"}"#,
        );
        assert!(!c1.document(&state).exists());
        assert!(link(None, &c1.host()).is_none());
        assert_eq!(common::link_names(Some("c1")), ["lo", "peer0", "eth0"]);
        sh("ip -n c1 link del eth0");

        // It routes through another network of the runtime's: kudonet cannot give the
        // attachment its default route, and takes back what it made.
        sh("ip -n c1 link add x0 type veth peer name x1
            ip -n c1 link set x0 up
            ip -n c1 link set x1 up
            ip -n c1 addr add 192.168.9.2/24 dev x0
            ip -n c1 route add default via 192.168.9.1");
        let run = c1.call("ADD", &config(&state, "1.0.0", ""));
        expect_error(
            &run,
            &format!(
                r#"{{"cniVersion":"1.0.0","code":102,"msg":"not converged","details":"node node-a did not converge: conflict: namespace /run/netns/c1 has a default route of someone else's via 192.168.9.1: kudonet leaves it alone, so instance \"{}\" reaches its own subnet only"}}"#,
                c1.instance()
            ),
        );
        assert!(!c1.document(&state).exists());
        assert!(link(None, &c1.host()).is_none());
        assert!(link(Some("c1"), "eth0").is_none());
        assert_eq!(
            sh("ip -n c1 route show default").trim(),
            "default via 192.168.9.1 dev x0"
        );
        // Once the runtime's route is gone, the attachment is made.
        sh("ip -n c1 route del default");
        c1.add(&state, "1.0.0", "");
        assert_eq!(container_addresses(&c1), "10.0.0.2/24");
    });
}

#[test]
fn concurrent_adds_all_succeed_with_distinct_addresses() {
    sandboxed(
        "concurrent_adds_all_succeed_with_distinct_addresses",
        || {
            let state = StateDir::new(NODE);
            let containers: Vec<Container> = (1..=8).map(|n| Container::new(n, "eth0")).collect();
            let stdin = config(&state, "1.0.0", "");
            let children: Vec<Child> = containers
                .iter()
                .map(|container| container.spawn("ADD", &stdin))
                .collect();
            let mut addresses: Vec<String> = children
                .into_iter()
                .zip(&containers)
                .map(|(child, container)| {
                    let result = result(&finish(child));
                    let address = result["ips"][0]["address"].as_str().unwrap().to_string();
                    // What each ADD reports is what its own container has.
                    assert_eq!(container_addresses(container), address);
                    address
                })
                .collect();
            addresses.sort_by_key(|address| {
                address
                    .split(['.', '/'])
                    .nth(3)
                    .unwrap()
                    .parse::<u8>()
                    .unwrap()
            });
            let expected: Vec<String> = (2..=9).map(|n| format!("10.0.0.{n}/24")).collect();
            assert_eq!(addresses, expected);
        },
    );
}

#[test]
fn a_container_can_neither_take_nor_deny_another_ones_address() {
    sandboxed(
        "a_container_can_neither_take_nor_deny_another_ones_address",
        || {
            let state = StateDir::new("kind: Node\nname: node-a\ncidr: 10.0.0.1/29\n");
            let victim = Container::new(1, "eth0");
            victim.add(&state, "1.0.0", "");
            assert_eq!(container_addresses(&victim), "10.0.0.2/29");

            // Asked for by another attachment: refused, nothing written.
            let thief = Container::new(2, "eth0");
            let asks = r#","runtimeConfig":{"ips":["10.0.0.2"]}"#;
            let run = thief.call("ADD", &config(&state, "1.0.0", asks));
            expect_error(
                &run,
                &format!(
                    r#"{{"cniVersion":"1.0.0","code":101,"msg":"request refused","details":"invalid request: runtimeConfig.ips[0] \"10.0.0.2\": address 10.0.0.2 is already used by instance \"{}\""}}"#,
                    victim.instance()
                ),
            );
            assert!(!thief.document(&state).exists());

            // A container with CAP_NET_ADMIN claims the address on its own interface, and
            // marks its loopback as kudonet's marks its namespaces, with more addresses on a
            // link of its own: the next attachment still gets the lowest free address, and
            // the victim keeps its own.
            let tenant = Container::new(3, "eth0");
            tenant.add(&state, "1.0.0", "");
            assert_eq!(container_addresses(&tenant), "10.0.0.3/29");
            sh("ip -n c3 addr add 10.0.0.2/29 dev eth0
                ip -n c3 link set lo alias kudonet
                ip -n c3 link add x0 type veth peer name x1
                ip -n c3 addr add 10.0.0.4/29 dev x0
                ip -n c3 addr add 10.0.0.5/29 dev x0");
            let next = Container::new(4, "eth0");
            next.add(&state, "1.0.0", "");
            assert_eq!(container_addresses(&next), "10.0.0.4/29");
            assert_eq!(container_addresses(&victim), "10.0.0.2/29");
            // The converge put the tenant's interface back as recorded; its own link is its own.
            assert_eq!(container_addresses(&tenant), "10.0.0.3/29");
            assert_eq!(
                common::addresses(Some("c3"), "x0"),
                ["10.0.0.4/29", "10.0.0.5/29"]
            );
        },
    );
}

#[test]
fn a_lock_held_too_long_is_try_again_later_and_del_still_removes_the_document() {
    sandboxed(
        "a_lock_held_too_long_is_try_again_later_and_del_still_removes_the_document",
        || {
            let state = StateDir::new(NODE);
            let c1 = Container::new(1, "eth0");
            let c2 = Container::new(2, "eth0");
            c1.add(&state, "1.0.0", "");
            // Another kudonet (this test) changes the node for longer than a call waits.
            let lock_dir = std::path::Path::new(kudonet::lock::LOCK_DIR);
            let held = kudonet::lock::try_lock(lock_dir, "node-a").unwrap();
            let stdin = config(&state, "1.0.0", "");
            let add = c2.spawn("ADD", &stdin);
            let del = c1.spawn("DEL", &stdin);
            let busy = format!(
                r#"{{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"another kudonet is changing node node-a (pid {}, lock {})"}}"#,
                std::process::id(),
                kudonet::lock::lock_path(lock_dir).display()
            );
            let add = finish(add);
            assert_eq!((add.code, add.stdout.trim()), (1, busy.as_str()));
            assert!(!c2.document(&state).exists(), "nothing recorded");
            assert!(link(Some("c2"), "eth0").is_none());
            let del = finish(del);
            assert_eq!((del.code, del.stdout.trim()), (1, busy.as_str()));
            // The runtime may never call DEL again: the document went all the same...
            assert!(!c1.document(&state).exists());
            // ... and the next change of the node removes the rest.
            drop(held);
            assert!(link(None, &c1.host()).is_some());
            c2.add(&state, "1.0.0", "");
            assert!(link(None, &c1.host()).is_none());
            assert_eq!(container_addresses(&c2), "10.0.0.2/24");
        },
    );
}

#[test]
fn kudonet_run_repairs_an_attachment() {
    sandboxed("kudonet_run_repairs_an_attachment", || {
        let state = StateDir::new(NODE);
        let kudonet = Controller::start(&state, &["--resync", "60"]);
        let c1 = Container::new(1, "eth0");
        c1.add(&state, "1.0.0", "");
        kudonet.wait_ready(&[&c1.instance()]);
        // Someone deletes the host end; the container's end goes with it.
        sh(&format!("ip link del {}", c1.host()));
        kudonet.wait_until("the attachment is rebuilt", || {
            link(None, &c1.host()).is_some() && container_addresses(&c1) == "10.0.0.2/24"
        });
        sh("ip netns exec c1 ping -c1 -W2 10.0.0.1 >/dev/null");
        c1.del(&state);
        kudonet.wait_ready(&[]);
        kudonet.stop();
    });
}

#[test]
fn the_firewall_is_the_configurations_else_kudonet_firewall() {
    sandboxed(
        "the_firewall_is_the_configurations_else_kudonet_firewall",
        || {
            let state = StateDir::new(NODE);
            let c1 = Container::new(1, "eth0");
            let ports =
                r#","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80}]}"#;
            // The runtime's environment says nftables; the configuration has the last word.
            let stdin = config(
                &state,
                "1.0.0",
                &format!(r#","firewall":"nftables"{ports}"#),
            );
            let mut env = c1.env("ADD", "/run/netns/c1");
            env.push(("KUDONET_FIREWALL", "iptables"));
            result(&cni(&env, &stdin));
            let table = common::nft_kudonet().expect("kudonet's nftables table");
            assert!(table.contains("8080"), "{table}");
            assert_eq!(kudo_lines(false), "");

            // Without the key, KUDONET_FIREWALL.
            let mut env = c1.env("DEL", "/run/netns/c1");
            env.push(("KUDONET_FIREWALL", "nftables"));
            cni(&env, &config(&state, "1.0.0", "")).expect(0, "", "");
            let table = common::nft_kudonet().expect("kudonet's nftables table");
            assert!(!table.contains("8080"), "{table}");
            assert_eq!(kudo_lines(false), "");
        },
    );
}

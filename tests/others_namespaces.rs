//! Instances in namespaces someone else owns (`netns:`), on a real kernel, in a sandbox:
//! kudonet puts the instance's interface inside and keeps it converged, never creates or
//! deletes the namespace, and when the namespace goes, reports the instance and leaves
//! nothing of it on the node.

mod common;

use common::cli::kudonet;
use common::controller::Controller;
use common::{StateDir, addresses, firewall, is_up, link, namespaces, netns, seen_tcp, sh};

use kudonet::names::host_interface_name;
use kudonet::spec::Protocol::Tcp;

const NODE: &str = "\
kind: Node
name: node-a
cidr: 10.0.0.1/24
";

/// A runtime's container: no address named (allocated), its own interface name, a
/// published port.
const CONTAINER: &str = "\
kind: Instance
name: c1
netns: /run/netns/c1
interface: eth1
ports:
  - hostPort: 8080
    instancePort: 7777
";

const WEB: &str = "kind: Instance\nname: web\naddress: 10.0.0.10\n";

#[test]
fn an_instance_lives_in_a_namespace_someone_else_owns_and_kudonet_never_makes_or_deletes_it() {
    common::sandboxed(
        "an_instance_lives_in_a_namespace_someone_else_owns_and_kudonet_never_makes_or_deletes_it",
        || {
            let state = StateDir::new(NODE);
            state.write("web.yaml", WEB);
            state.write("c1.yaml", CONTAINER);
            let host = host_interface_name("c1");

            // Before the runtime made the namespace: reported, not created.
            kudonet(&["apply", state.path()]).expect(
                1,
                "",
                "conflict: namespace /run/netns/c1 of instance \"c1\" does not exist (or is not a \
                 network namespace other than the node's): its owner made none there or deleted \
                 it; kudonet removed what it made for the instance on the node and waits for the \
                 namespace\n\
                 Apply incomplete: 5 added, 11 changed, 0 destroyed; the node does not match the \
                 desired state.\n",
            );
            assert_eq!(namespaces(), ["kudo-web"]);

            // The runtime's namespace: its own loopback, down.
            sh("ip netns add c1");
            kudonet(&["apply", state.path()]).expect_success();
            assert_eq!(addresses(Some("c1"), "eth1"), ["10.0.0.2/24"]);
            assert!(
                !is_up(&link(Some("c1"), "lo").unwrap()),
                "their loopback is theirs"
            );
            assert_eq!(
                sh("ip -n c1 route show default").trim(),
                "default via 10.0.0.1 dev eth1 proto 75"
            );
            kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
            sh("ip netns exec c1 ip link set lo up");
            let _server = common::probes::serve(&netns("c1"), Tcp, 7777);
            assert_eq!(seen_tcp(&netns("kudo-web"), "10.0.0.2:7777"), "10.0.0.10");
            // The published port, from another instance through the node (hairpin).
            assert_eq!(seen_tcp(&netns("kudo-web"), "10.0.0.1:8080"), "10.0.0.1");

            // Drift inside and on the node is repaired by the controller.
            let controller = Controller::start(&state, &[]);
            controller.wait_ready(&["c1", "web"]);
            sh(&format!("ip link del {host}"));
            controller.wait_until("c1 rebuilt after its host veth was deleted", || {
                addresses(Some("c1"), "eth1") == ["10.0.0.2/24"]
                    && link(None, &host).is_some()
                    && controller
                        .instance("c1")
                        .is_some_and(|c1| c1["phase"] == "Ready")
            });
            assert_eq!(seen_tcp(&netns("kudo-web"), "10.0.0.2:7777"), "10.0.0.10");

            // The runtime deletes its namespace: the instance is reported, the others are
            // fine, and nothing of it is left on the node: no veth, no published port.
            drop(_server);
            sh("ip netns del c1");
            controller.wait_until("c1 reported gone and undone on the node", || {
                link(None, &host).is_none()
                    && !firewall().contains("8080")
                    && controller.instance("c1").is_some_and(|c1| {
                        c1["phase"] == "Failed"
                            && c1["message"].as_str().unwrap().starts_with(
                                "namespace /run/netns/c1 of instance \"c1\" does not exist",
                            )
                    })
            });
            assert_eq!(controller.instance("web").unwrap()["phase"], "Ready");
            assert_eq!(namespaces(), ["kudo-web"], "never made by kudonet");

            // Made anew: entered again.
            sh("ip netns add c1");
            controller.wait_until("c1 built again in its new namespace", || {
                addresses(Some("c1"), "eth1") == ["10.0.0.2/24"]
                    && controller
                        .instance("c1")
                        .is_some_and(|c1| c1["phase"] == "Ready")
            });
            controller.stop();

            // The node's own namespace is never an instance's: its routes would be the
            // instance's.
            sh("touch /run/netns/node && mount --bind /proc/self/ns/net /run/netns/node");
            state.write(
                "c2.yaml",
                "kind: Instance\nname: c2\nnetns: /run/netns/node\ninterface: c2eth\n",
            );
            let run = kudonet(&["apply", state.path()]);
            assert_eq!(run.code, 1);
            assert!(
                run.stderr.starts_with(
                    "conflict: namespace /run/netns/node of instance \"c2\" does not exist (or \
                     is not a network namespace other than the node's)"
                ),
                "{}",
                run.stderr
            );
            assert!(link(None, "c2eth").is_none());
            std::fs::remove_file(state.file("c2.yaml")).unwrap();
            sh("umount /run/netns/node && rm /run/netns/node");

            // Teardown takes kudonet's interface out, and leaves the namespace to its owner.
            kudonet(&["teardown"]).expect_success();
            assert_eq!(namespaces(), ["c1"]);
            assert_eq!(common::link_names(Some("c1")), ["lo"]);
        },
    );
}

//! kudonet as the CNI plugin of a real container runtime: Podman 4 (its CNI backend) runs
//! busybox containers on the network of `examples/cni/kudonet.conflist`, whose one plugin
//! is the kudonet binary, in a sandbox with its own PID namespace
//! (`common::sandboxed_with_pids`, `common::podman`). Each ADD writes an Instance document
//! under `DIR/cni/kudonet/` and converges it; each DEL removes it. Real packets prove what
//! an instance is promised: an allocated address, container to container, egress
//! masqueraded behind the node's uplink, a published port from outside; `kudonet status`,
//! `plan` and `run` see and heal the containers' instances, and `podman rm` leaves nothing
//! of a container behind.
//!
//! The sandbox's own namespace is the node; "outside" is a namespace behind its uplink
//! `eth0` (203.0.113.1/24; outside is 203.0.113.254). A podman command costs about 0.4 s:
//! the scenarios share their containers rather than starting more.

mod common;

use common::cli::kudonet;
use common::controller::Controller;
use common::podman::Podman;
use common::probes::serve;
use common::{
    StateDir, addr, kudo_lines, link, link_names, namespaces, netns, seen_tcp as seen,
    setup_outside,
};

use std::path::{Path, PathBuf};

use kudonet::names;
use kudonet::probe::{self, Place};
use kudonet::spec::Protocol::Tcp;
use serde_json::Value;

/// The node: its bridge kudo0 is the containers' gateway, its uplink eth0 the way out.
const NODE: &str = "\
kind: Node
name: node
cidr: 10.77.0.1/24
uplink: eth0
";

/// The network podman's containers join: `examples/cni/kudonet.conflist`, with `DIR` as its
/// stateDir.
fn conflist(state: &StateDir) -> String {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cni/kudonet.conflist");
    let mut conflist: Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    conflist["plugins"][0]["stateDir"] = state.path().into();
    conflist.to_string()
}

/// The instances of `kudonet status DIR --output json`.
fn instances(state: &StateDir) -> Vec<Value> {
    let run = kudonet(&["status", state.path(), "--output", "json"]);
    run.expect_success();
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    status["instances"].as_array().unwrap().clone()
}

/// The contents of every file the plugin keeps below `DIR/cni`, in name order.
fn cni_documents(state: &StateDir) -> Vec<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&state.file("cni"), &mut files);
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap())
        .collect()
}

/// The IPv4 addresses of `eth0` in container `name`, as busybox's `ip` inside shows them.
fn eth0(podman: &Podman, name: &str) -> String {
    podman
        .exec(name, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .collect::<Vec<_>>()
        .join(",")
}

/// What kudonet makes of a container's attachment (`eth0` on the network).
struct Attachment {
    /// The container's id, as podman gave it to the plugin (`CNI_CONTAINERID`).
    id: String,
    /// Its instance: `<short id>-eth0-<hash>`.
    name: String,
    /// The container's namespace (`CNI_NETNS`), podman's.
    netns: String,
    /// The host end of its veth pair.
    veth: String,
}

impl Attachment {
    fn of(podman: &Podman, container: &str) -> Attachment {
        let id = podman.inspect(container, "{{.Id}}");
        let name = kudonet::cni::instance_name(&id, "eth0");
        assert!(
            name.starts_with(&format!("{}-eth0-", &id[..12])),
            "the instance is named after the short id podman shows: {name}"
        );
        Attachment {
            veth: names::host_interface_name(&name),
            netns: podman.sandbox_key(container),
            id,
            name,
        }
    }

    /// Its instance in `kudonet status --output json`, Ready at `address`.
    fn ready(&self, address: &str) -> Value {
        serde_json::json!({
            "name": self.name, "phase": "Ready", "address": address, "addresses": [address],
            "netns": self.netns, "hostInterface": self.veth, "message": "",
        })
    }

    /// Its document, as the plugin records it, ending with `ports` (YAML lines).
    /// Its document: the address kudonet allocated, recorded, and `ports`.
    fn document(&self, address: &str, ports: &str) -> String {
        format!(
            "# Recorded by the kudonet CNI plugin; DEL, CHECK and GC read the next three lines.\n\
             # network: \"kudonet\"\n\
             # containerID: \"{id}\"\n\
             # ifname: \"eth0\"\n\
             kind: Instance\n\
             name: \"{name}\"\n\
             node: \"node\"\n\
             netns: \"{netns}\"\n\
             address:\n  - \"{address}\"\n{ports}",
            id = self.id,
            name = self.name,
            netns = self.netns,
        )
    }

    /// The name of its namespace's file in /run/netns.
    fn netns_file(&self) -> String {
        self.netns.trim_start_matches("/run/netns/").to_string()
    }
}

#[test]
fn podman_containers_on_a_kudonet_network() {
    common::sandboxed_with_pids("podman_containers_on_a_kudonet_network", || {
        setup_outside();
        let state = StateDir::new(NODE);
        let podman = Podman::new(&conflist(&state));
        std::fs::write(podman.rootfs().join("www/index.html"), "hello from web\n").unwrap();
        podman.run(
            "web",
            &["8080:80"],
            &["httpd", "-f", "-p", "80", "-h", "/www"],
        );
        podman.run("client", &[], &["sleep", "600"]);
        let web = Attachment::of(&podman, "web");
        let client = Attachment::of(&podman, "client");

        // The lowest free addresses, in the order of the ADDs: podman shows what the
        // plugin's result said, and the container's eth0 and kudonet's status agree.
        assert_eq!(podman.address("web"), "10.77.0.2/24");
        assert_eq!(podman.address("client"), "10.77.0.3/24");
        assert_eq!(eth0(&podman, "web"), "10.77.0.2/24");
        assert_eq!(eth0(&podman, "client"), "10.77.0.3/24");
        let mut expected = [
            (&web.name, web.ready("10.77.0.2/24")),
            (&client.name, client.ready("10.77.0.3/24")),
        ];
        expected.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(instances(&state), expected.map(|(_, instance)| instance));
        // One document per container (`<instance>.yaml`), web's with its published port;
        // the kernel has their veths on the bridge and kudonet's DNAT rule for web.
        let web_ports = "ports:\n  - hostPort: 8080\n    instancePort: 80\n    protocol: tcp\n";
        let mut documents = [
            (&web.name, web.document("10.77.0.2/24", web_ports)),
            (&client.name, client.document("10.77.0.3/24", "")),
        ];
        documents.sort();
        assert_eq!(
            cni_documents(&state),
            documents.map(|(_, document)| document)
        );
        for attachment in [&web, &client] {
            assert_eq!(link(None, &attachment.veth).unwrap()["master"], "kudo0");
        }
        let dnat = format!(
            "-A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment {} -j DNAT --to-destination 10.77.0.2:80\n",
            web.name
        );
        assert!(kudo_lines(false).contains(&dnat), "{}", kudo_lines(false));
        // Each ADD converged the node: nothing is left to do.
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        let client_place = Place::netns(&client.netns);
        let _client_echo = serve(&client_place, Tcp, 7777);
        let _outside_echo = serve(&netns("outside"), Tcp, 9000);
        // Container <-> container, each seen as itself: busybox's wget to web's httpd, and
        // its nc to an echo server in client's namespace.
        assert_eq!(
            podman.exec("client", &["wget", "-qO-", "http://10.77.0.2/"]),
            "hello from web\n"
        );
        assert_eq!(podman.seen("web", "10.77.0.3:7777"), "10.77.0.2");
        // The node reaches a container from its gateway.
        assert_eq!(seen(&Place::Here, "10.77.0.3:7777"), "10.77.0.1");
        // Egress, masqueraded behind the node's uplink address.
        assert_eq!(podman.seen("web", "203.0.113.254:9000"), "203.0.113.1");
        assert_eq!(seen(&client_place, "203.0.113.254:9000"), "203.0.113.1");
        // The published port, from outside (with the busybox of the containers' rootfs).
        let wget = format!("{}/bin/wget", podman.rootfs().display());
        let outside_get = [
            "netns",
            "exec",
            "outside",
            &wget,
            "-qO-",
            "http://203.0.113.1:8080/",
        ];
        assert_eq!(common::run_ok("ip", &outside_get), "hello from web\n");

        // podman rm: the plugin's DEL takes everything of web, podman its namespace.
        podman.rm(&["web"]);
        assert_eq!(cni_documents(&state), [client.document("10.77.0.3/24", "")]);
        assert_eq!(instances(&state), [client.ready("10.77.0.3/24")]);
        assert!(link(None, &web.veth).is_none(), "web's host veth is gone");
        assert!(
            !kudo_lines(false).contains("--dport 8080"),
            "{}",
            kudo_lines(false)
        );
        assert_eq!(namespaces(), [client.netns_file(), "outside".into()]);
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");
        // Nothing answers at 8080 any more (the node itself listens there for nothing).
        assert!(probe::ask(&client_place, Tcp, addr("203.0.113.1:8080")).is_err());

        // The next container gets the lowest free address: the one web left.
        podman.run("next", &[], &["sleep", "600"]);
        assert_eq!(podman.address("next"), "10.77.0.2/24");
        assert_eq!(podman.seen("next", "10.77.0.3:7777"), "10.77.0.2");

        podman.rm(&["client", "next"]);
        assert_eq!(cni_documents(&state), Vec::<String>::new());
        assert_eq!(instances(&state), Vec::<Value>::new());
        assert_eq!(namespaces(), ["outside"]);
        assert_eq!(link_names(None), ["lo", "eth0", "kudo0"]);
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");
    });
}

#[test]
fn kudonet_run_heals_a_podman_container() {
    common::sandboxed_with_pids("kudonet_run_heals_a_podman_container", || {
        setup_outside();
        let state = StateDir::new(NODE);
        let podman = Podman::new(&conflist(&state));
        podman.run("web", &["8080:7777"], &["sleep", "600"]);
        let web = Attachment::of(&podman, "web");
        let _echo = serve(&Place::netns(&web.netns), Tcp, 7777);
        let outside = netns("outside");
        assert_eq!(seen(&outside, "203.0.113.1:8080"), "203.0.113.254");

        // Without a controller, the plan shows what the container lost with its veth.
        common::run_ok("ip", &["link", "del", &web.veth]);
        let (veth, inside) = (&web.veth, format!("{}/eth0", web.netns));
        kudonet(&["plan", state.path()]).expect(
            0,
            &format!(
                "+ veth {veth} <-> {inside} for instance {name}\n\
                 ~ link {veth}: attach to bridge kudo0\n\
                 ~ link {veth}: hairpin on\n\
                 ~ link {veth}: up\n\
                 + address 10.77.0.2/24 on {inside}\n\
                 ~ link {inside}: up\n\
                 ~ route default via 10.77.0.1 in {netns}\n\
                 Plan: 2 to add, 5 to change, 0 to destroy.\n",
                name = web.name,
                netns = web.netns,
            ),
            "",
        );
        // The controller repairs it as it starts...
        let controller = Controller::start(&state, &[]);
        controller.wait_ready(&[&web.name]);
        controller.wait_until("web answers again", || {
            probe::ask(&outside, Tcp, addr("203.0.113.1:8080")).is_ok()
        });
        assert_eq!(seen(&outside, "203.0.113.1:8080"), "203.0.113.254");
        // ...and, while it runs, from the kernel's event.
        common::run_ok("ip", &["link", "del", &web.veth]);
        controller.wait_until("web answers again", || {
            probe::ask(&outside, Tcp, addr("203.0.113.1:8080")).is_ok()
        });
        assert_eq!(seen(&outside, "203.0.113.1:8080"), "203.0.113.254");
        assert_eq!(seen(&Place::Here, "10.77.0.2:7777"), "10.77.0.1");
        // The same address, in the namespace podman made, as podman knows it.
        assert_eq!(eth0(&podman, "web"), "10.77.0.2/24");
        assert_eq!(podman.address("web"), "10.77.0.2/24");
        assert_eq!(instances(&state), [web.ready("10.77.0.2/24")]);
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        // podman rm beside the controller: the instance goes, and the controller does not
        // bring it back.
        podman.rm(&["web"]);
        controller.wait_until("web's instance is gone", || {
            controller
                .status()
                .is_some_and(|status| status["instances"] == serde_json::json!([]))
        });
        assert!(link(None, &web.veth).is_none());
        assert_eq!(cni_documents(&state), Vec::<String>::new());
        assert_eq!(namespaces(), ["outside"]);
        controller.stop();
    });
}

//! `kudonet validate DIR` end to end: the built binary on directories written to a temp dir,
//! asserting the exact exit code and the exact stderr lines: the desired-state file format
//! and the validation rules, one `FILE:LINE:COLUMN: message` line per error.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NODE: &str = "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n";

/// Hostile input must be rejected in bounded time, even by a debug build on a busy machine.
const QUICK: Duration = Duration::from_secs(5);

fn run(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kudonet"))
        .arg("validate")
        .arg(dir)
        .output()
        .expect("run kudonet")
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kudonet-validate-")
        .tempdir()
        .expect("temp dir")
}

/// Writes `files` (path relative to the directory, content) below a fresh directory.
fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
}

/// The stderr lines of `output`, with the directory's path replaced by `$DIR`.
fn stderr_lines(dir: &Path, output: &Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    stderr
        .lines()
        .map(|line| line.replace(&dir.display().to_string(), "$DIR"))
        .collect()
}

/// Validates `dir`; expects exit 1 and exactly `expected` on stderr (`$DIR` standing for the
/// directory), or exit 0 and nothing on stderr when `expected` is empty.
fn assert_validate(dir: &Path, expected: &[&str]) -> Output {
    let output = run(dir);
    let lines = stderr_lines(dir, &output);
    assert_eq!(lines, expected, "stderr of kudonet validate");
    let code = if expected.is_empty() { 0 } else { 1 };
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit code; stderr: {lines:?}"
    );
    output
}

/// One case: a directory holding `files`, and the stderr lines it must give.
fn case(files: &[(&str, &str)], expected: &[&str]) {
    let dir = temp_dir();
    write(dir.path(), files);
    assert_validate(dir.path(), expected);
}

/// A case with the Node above plus one Instance file, `i.yaml`.
fn instance_case(instance: &str, expected: &[&str]) {
    case(&[("node.yaml", NODE), ("i.yaml", instance)], expected);
}

fn instance(name: &str, address: &str) -> String {
    format!("kind: Instance\nname: {name}\naddress: {address}\n")
}

// ---- the bundled example --------------------------------------------------------------

#[test]
fn the_bundled_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/desired-state");
    let output = Command::new(env!("CARGO_BIN_EXE_kudonet"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["validate", "examples/desired-state"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "examples/desired-state: valid (1 node, 4 instances)\n"
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(dir.join("node.yaml").is_file());
}

#[test]
fn a_valid_directory_prints_a_summary_on_stdout() {
    let dir = temp_dir();
    write(
        dir.path(),
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: 10.0.0.0/16\n",
            ),
            ("node.yaml", NODE),
            ("web.yaml", &instance("web", "10.0.0.2/24")),
        ],
    );
    let output = assert_validate(dir.path(), &[]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{}: valid (1 node, 1 instance, cluster)\n",
            dir.path().display()
        )
    );
}

// ---- syntax, kinds, fields, types -----------------------------------------------------

#[test]
fn syntax_errors_are_reported_at_their_position() {
    instance_case(
        "kind: Instance\nname: \"web\naddress: 10.0.0.2\n",
        &["$DIR/i.yaml:2:7: unclosed quote"],
    );
    instance_case(
        "kind: Instance\n  name: web\n",
        &["$DIR/i.yaml:2:7: mapping values are not allowed in this context"],
    );
}

#[test]
fn documents_need_a_known_kind() {
    instance_case(
        "kind: Pod\nname: web\n",
        &["$DIR/i.yaml:1:7: unknown kind \"Pod\": expected Cluster, Node or Instance"],
    );
    instance_case(
        "name: web\naddress: 10.0.0.2\n",
        &["$DIR/i.yaml:1:1: document has no `kind` (expected Cluster, Node or Instance)"],
    );
    instance_case(
        "just a string\n",
        &["$DIR/i.yaml:1:1: a document must be a mapping of fields, such as `kind: Node`"],
    );
}

#[test]
fn api_version_must_be_kudonet_v1() {
    case(
        &[("node.yaml", &format!("apiVersion: v1\n{NODE}"))],
        &["$DIR/node.yaml:1:13: unsupported apiVersion \"v1\": expected kudonet/v1"],
    );
    case(
        &[("node.yaml", &format!("apiVersion: kudonet/v1\n{NODE}"))],
        &[],
    );
}

#[test]
fn unknown_fields_are_errors() {
    instance_case(
        "kind: Instance\nname: web\naddress: 10.0.0.2\nadress: 10.0.0.3\n",
        &[
            "$DIR/i.yaml:4:1: unknown field `adress` in an Instance, expected one of apiVersion, \
             kind, name, node, address, ports, id, netns, interface (did you mean `address`?)",
        ],
    );
    instance_case(
        "kind: Instance\nname: web\naddress: 10.0.0.2\nports:\n  - hostPort: 80\n    instancePort: 80\n    proto: udp\n",
        &[
            "$DIR/i.yaml:7:5: unknown field `proto`, expected one of hostPort, instancePort, \
             protocol, hostIp",
        ],
    );
}

#[test]
fn a_field_of_another_kind_is_reported_at_its_key() {
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nports:\n  - hostPort: 80\n    instancePort: 80\n",
        )],
        &[
            "$DIR/node.yaml:4:1: field `ports` is not allowed in a Node (it is a field of \
             Instance), expected one of apiVersion, kind, name, cidr, externalIp, bridge, uplink, \
             masquerade, mtu",
        ],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nmode: vxlan\n",
        )],
        &[
            "$DIR/node.yaml:4:1: field `mode` is not allowed in a Node (it is a field of \
             Cluster), expected one of apiVersion, kind, name, cidr, externalIp, bridge, uplink, \
             masquerade, mtu",
        ],
    );
}

#[test]
fn wrong_types_name_the_field() {
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nmtu: big\n",
        )],
        &["$DIR/node.yaml:4:6: `mtu` must be an integer"],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nmasquerade: maybe\n",
        )],
        &["$DIR/node.yaml:4:13: `masquerade` must be true or false"],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: [node-a]\ncidr: 10.0.0.1/24\n",
        )],
        &["$DIR/node.yaml:2:7: `name` must be a string"],
    );
    instance_case(
        "kind: Instance\nname: web\naddress: 10.0.0.2\nports: 80\n",
        &["$DIR/i.yaml:4:8: `ports` must be a list"],
    );
    instance_case(
        "kind: Instance\nname: web\naddress: 10.0.0.2\nports:\n  - hostPort: 80\n    instancePort: http\n",
        &["$DIR/i.yaml:6:19: `instancePort` must be an integer"],
    );
}

#[test]
fn a_broken_node_causes_no_further_errors() {
    // Not also "no Node", nor "Node does not exist" for its instances.
    case(
        &[
            (
                "node.yaml",
                "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nmtu: big\n",
            ),
            (
                "i.yaml",
                "kind: Instance\nname: web\nnode: node-a\naddress: 10.0.0.2\n",
            ),
        ],
        &["$DIR/node.yaml:4:6: `mtu` must be an integer"],
    );
}

#[test]
fn required_fields_are_reported_at_their_document() {
    case(
        &[
            ("node.yaml", "kind: Node\n"),
            ("i.yaml", "kind: Instance\n"),
        ],
        &[
            "$DIR/i.yaml:1:1: Instance is missing required field `name`",
            "$DIR/node.yaml:1:1: Node is missing required field `cidr`",
            "$DIR/node.yaml:1:1: Node is missing required field `name`",
        ],
    );
    instance_case(
        "kind: Instance\nname: web\naddress: 10.0.0.2\nports:\n  - protocol: udp\n",
        &[
            "$DIR/i.yaml:5:5: port is missing required field `hostPort`",
            "$DIR/i.yaml:5:5: port is missing required field `instancePort`",
        ],
    );
}

// ---- names -----------------------------------------------------------------------------

const NOT_A_LABEL: &str = "is not a DNS label: lowercase letters, digits and `-`, starting and \
                           ending with a letter or digit, at most 63 characters";

#[test]
fn instance_names_are_dns_labels() {
    for name in ["Web", "-web", "web-", "web_1", "wéb"] {
        instance_case(
            &instance(name, "10.0.0.2"),
            &[&format!(
                "$DIR/i.yaml:2:7: Instance name {name:?} {NOT_A_LABEL}"
            )],
        );
    }
    instance_case(
        &instance(&"a".repeat(64), "10.0.0.2"),
        &["$DIR/i.yaml:2:7: Instance name is 64 characters long, over the DNS label limit of 63"],
    );
    instance_case(&instance(&"a".repeat(63), "10.0.0.2"), &[]);
    instance_case(&instance("web-1", "10.0.0.2"), &[]);
}

/// An `id` (what the library records for an orchestrator's id that is not a DNS label) names
/// the namespace; it follows the rules of names, and takes no other instance's namespace.
#[test]
fn an_instance_id_names_its_namespace_once() {
    let with_id = |name: &str, id: &str, address: &str| {
        format!("kind: Instance\nname: {name}\nid: {id}\naddress: {address}\n")
    };
    instance_case(
        &with_id("default-web-ab3xz", "\"default.web-Ab3xZ\"", "10.0.0.2"),
        &[],
    );
    for (id, message) in [
        ("\"a b\"", "Instance id \"a b\" must not contain whitespace"),
        (
            "\"../etc\"",
            "Instance id \"../etc\" must not contain `/` or `..`",
        ),
        ("\"\"", "Instance id must not be empty"),
    ] {
        instance_case(
            &with_id("web", id, "10.0.0.2"),
            &[&format!("$DIR/i.yaml:3:5: {message}")],
        );
    }
    instance_case(
        &with_id("web", &"a".repeat(251), "10.0.0.2"),
        &["$DIR/i.yaml:3:5: Instance id is 251 characters long, over the limit of 250"],
    );
    // An id equal to another instance's name would share its namespace, kudo-web.
    case(
        &[
            ("node.yaml", NODE),
            ("a.yaml", &instance("web", "10.0.0.2")),
            ("b.yaml", &with_id("other", "web", "10.0.0.3")),
        ],
        &[
            "$DIR/b.yaml:3:5: namespace kudo-web of Instance \"other\" is already the namespace of \
           Instance \"web\" at $DIR/a.yaml:2:7",
        ],
    );
}

#[test]
fn names_reject_slash_dots_whitespace_and_control_characters() {
    let node = |name: &str| format!("kind: Node\nname: {name}\ncidr: 10.0.0.1/24\n");
    for (name, message) in [
        ("a/b", "Node name \"a/b\" must not contain `/` or `..`"),
        ("a..b", "Node name \"a..b\" must not contain `/` or `..`"),
        ("\"a b\"", "Node name \"a b\" must not contain whitespace"),
        (
            "\"a\\0b\"",
            "Node name \"a\\0b\" contains a control character (U+0000)",
        ),
        (
            "\"a\\tb\"",
            "Node name \"a\\tb\" contains a control character (U+0009)",
        ),
        (
            "\"a\\e[31mb\"",
            "Node name \"a\\u{1b}[31mb\" contains a control character (U+001B)",
        ),
        (
            "\"a\\nb\"",
            "Node name \"a\\nb\" contains a control character (U+000A)",
        ),
    ] {
        case(
            &[("node.yaml", &node(name))],
            &[&format!("$DIR/node.yaml:2:7: {message}")],
        );
    }
    instance_case(
        "kind: Instance\nname: \"web\\0\"\naddress: 10.0.0.2\n",
        &["$DIR/i.yaml:2:7: Instance name \"web\\0\" contains a control character (U+0000)"],
    );
    instance_case(
        &instance("a/b", "10.0.0.2"),
        &["$DIR/i.yaml:2:7: Instance name \"a/b\" must not contain `/` or `..`"],
    );
}

#[test]
fn bridge_names_of_kernel_pseudo_devices_and_kudonets_own_links_are_refused() {
    let node =
        |bridge: &str| format!("kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nbridge: {bridge}\n");
    for (bridge, reason) in [
        (
            "all",
            "is reserved by the kernel for settings of every interface",
        ),
        (
            "default",
            "is reserved by the kernel for settings of every interface",
        ),
        ("lo", "is the loopback interface"),
        (
            "kudonet-1234567",
            "is in kudonet's pattern for links it is creating (`kudonet-…`)",
        ),
        (
            "kudonet-br",
            "is in kudonet's pattern for links it is creating (`kudonet-…`)",
        ),
        (
            "kv0e11948721ef1",
            "is in kudonet's pattern for host veths (`kv` and 13 hex digits)",
        ),
        ("kudo-vxlan", "is kudonet's overlay device"),
        (
            "kudo-seg1",
            "is in kudonet's pattern for a node's extra bridges (`kudo-seg…`)",
        ),
        (
            "kudo-segment",
            "is in kudonet's pattern for a node's extra bridges (`kudo-seg…`)",
        ),
    ] {
        case(
            &[("node.yaml", &node(bridge))],
            &[&format!(
                "$DIR/node.yaml:4:9: bridge \"{bridge}\" {reason}; choose another name"
            )],
        );
    }
    for bridge in ["kudo0", "br-kudo", "kv0", "alls", "lo0", "kudo-se"] {
        case(&[("node.yaml", &node(bridge))], &[]);
    }
}

/// `count` Instances on node-a, one a line of YAML each, at consecutive addresses from
/// 10.0.0.2.
fn instances(count: u32) -> String {
    (0..count)
        .map(|i| {
            let address =
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 2)) + i);
            format!("---\n{{kind: Instance, name: i{i}, address: {address}}}\n")
        })
        .collect()
}

#[test]
fn a_node_with_more_instances_than_it_holds_is_refused_at_the_node() {
    // 100 bridges of 500 instances; the /16 has addresses for more. (The boundary itself is
    // the subnet case's below, on fewer instances.)
    let node = "kind: Node\nname: node-a\ncidr: 10.0.0.1/16\n";
    case(
        &[("node.yaml", node), ("i.yaml", &instances(50_001))],
        &[
            "$DIR/node.yaml:2:7: Node \"node-a\" has 50001 instances, more than a node holds: \
           50000 (100 bridges of 500)",
        ],
    );
}

#[test]
fn a_node_with_more_instances_than_its_subnet_has_addresses_is_refused_at_its_cidr() {
    // A /29 has addresses for 5 instances (8 less network, broadcast and gateway).
    let node = "kind: Node\nname: node-a\ncidr: 10.0.0.1/29\n";
    case(&[("node.yaml", node), ("i.yaml", &instances(5))], &[]);
    case(
        &[("node.yaml", node), ("i.yaml", &instances(6))],
        &[
            "$DIR/i.yaml:12:37: address 10.0.0.7 is the broadcast address of subnet 10.0.0.0/29",
            "$DIR/node.yaml:3:7: Node \"node-a\" has 6 instances, more than its subnet \
             10.0.0.0/29 has addresses for (5)",
        ],
    );
}

#[test]
fn an_instance_without_address_gets_one_of_each_node_family_and_counts_for_capacity() {
    // Allocated: no address needed, a hostIp of a family the node has is fine.
    instance_case(
        "kind: Instance\nname: web\nports:\n  - hostPort: 8080\n    instancePort: 80\n    hostIp: 0.0.0.0\n",
        &[],
    );
    // ... but not one of a family the node lacks (NODE is IPv4 only).
    instance_case(
        "kind: Instance\nname: web\nports:\n  - hostPort: 8080\n    instancePort: 80\n    hostIp: \"::\"\n",
        &["$DIR/i.yaml:6:13: hostIp :: is IPv6 and Instance \"web\" has no IPv6 address"],
    );
    // An empty list is still an error: leave the field out to have one allocated.
    instance_case(
        "kind: Instance\nname: web\naddress: []\n",
        &["$DIR/i.yaml:3:10: `address` must not be an empty list"],
    );
    // A /29 has addresses for 5 instances, allocated or not.
    let node = "kind: Node\nname: node-a\ncidr: 10.0.0.1/29\n";
    let allocated = |count: usize| {
        (0..count)
            .map(|index| format!("kind: Instance\nname: a{index}\n"))
            .collect::<Vec<_>>()
            .join("---\n")
    };
    case(&[("node.yaml", node), ("i.yaml", &allocated(5))], &[]);
    case(
        &[("node.yaml", node), ("i.yaml", &allocated(6))],
        &[
            "$DIR/node.yaml:3:7: Node \"node-a\" has 6 instances, more than its subnet \
           10.0.0.0/29 has addresses for (5)",
        ],
    );
}

#[test]
fn an_instance_in_a_namespace_of_someone_elses_names_a_plain_path_and_an_interface() {
    instance_case(
        "kind: Instance\nname: c1\nnetns: /run/netns/cni-1234\ninterface: eth1\n",
        &[],
    );
    instance_case(
        "kind: Instance\nname: c1\nnetns: run/netns/x\n---\nkind: Instance\nname: c2\nnetns: /run/netns/../x\n---\nkind: Instance\nname: c3\nnetns: /run/netns/x/\n",
        &[
            "$DIR/i.yaml:3:8: netns \"run/netns/x\" is not a plain absolute path (such as \
             /run/netns/cni-1234: no `.` or `..` parts, no trailing `/`, at most 4095 bytes)",
            "$DIR/i.yaml:7:8: netns \"/run/netns/../x\" is not a plain absolute path (such as \
             /run/netns/cni-1234: no `.` or `..` parts, no trailing `/`, at most 4095 bytes)",
            "$DIR/i.yaml:11:8: netns \"/run/netns/x/\" is not a plain absolute path (such as \
             /run/netns/cni-1234: no `.` or `..` parts, no trailing `/`, at most 4095 bytes)",
        ],
    );
    instance_case(
        "kind: Instance\nname: c1\nnetns: /proc/1234/ns/net\n",
        &[
            "$DIR/i.yaml:3:8: netns \"/proc/1234/ns/net\" names a process's namespace, which \
           another process's becomes once the process ends and its id is reused: name a bind \
           mount of it instead (ip netns attach, or the runtime's /run/netns/...)",
        ],
    );
    instance_case(
        "kind: Instance\nname: c1\nnetns: /run/netns/kudo-c1\n",
        &[
            "$DIR/i.yaml:3:8: netns \"/run/netns/kudo-c1\": names starting with kudo- are those \
           of kudonet's own namespaces, which it creates and deletes; name the namespace \
           otherwise",
        ],
    );
    // `id` names a namespace kudonet creates.
    instance_case(
        "kind: Instance\nname: c1\nid: C1\nnetns: /run/netns/x\n",
        &[
            "$DIR/i.yaml:3:5: an Instance with `netns` has no `id` (the id names a namespace \
           kudonet creates)",
        ],
    );
    instance_case(
        "kind: Instance\nname: c1\ninterface: lo\n---\nkind: Instance\nname: c2\ninterface: a b\n",
        &[
            "$DIR/i.yaml:3:12: interface \"lo\" is the namespace's loopback; choose another name",
            "$DIR/i.yaml:7:12: interface \"a b\" is not an interface name (1..15 characters, \
             no `/`, `:` or whitespace)",
        ],
    );
    // One namespace holds one instance.
    instance_case(
        "kind: Instance\nname: c1\nnetns: /run/netns/x\n---\nkind: Instance\nname: c2\nnetns: /run/netns/x\n",
        &[
            "$DIR/i.yaml:7:8: namespace /run/netns/x of Instance \"c2\" is already the \
           namespace of Instance \"c1\" at $DIR/i.yaml:3:8",
        ],
    );
}

#[test]
fn a_newline_in_a_file_name_cannot_forge_another_diagnostic() {
    let dir = temp_dir();
    write(
        dir.path(),
        &[
            ("node.yaml", NODE),
            (
                "x\n/etc/passwd:1:1: fake.yaml",
                "kind: Instance\nname: Web\naddress: 10.0.0.2\n",
            ),
        ],
    );
    assert_validate(
        dir.path(),
        &[
            "$DIR/x\\n/etc/passwd:1:1: fake.yaml:2:7: Instance name \"Web\" is not a DNS label: \
           lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 \
           characters",
        ],
    );
}

#[test]
fn duplicate_names_name_both_files() {
    case(
        &[
            ("node.yaml", NODE),
            ("a.yaml", &instance("web", "10.0.0.2")),
            ("b.yaml", &instance("web", "10.0.0.3")),
        ],
        &["$DIR/b.yaml:2:7: duplicate Instance name \"web\": also defined at $DIR/a.yaml:2:7"],
    );
    case(
        &[
            (
                "a.yaml",
                "kind: Node\nname: n\ncidr: 10.0.0.1/24\nexternalIp: 192.168.0.1\n",
            ),
            (
                "b.yaml",
                "kind: Node\nname: n\ncidr: 10.0.1.1/24\nexternalIp: 192.168.0.2\n",
            ),
        ],
        &["$DIR/b.yaml:2:7: duplicate Node name \"n\": also defined at $DIR/a.yaml:2:7"],
    );
    // The same name in different kinds is fine.
    instance_case(&instance("node-a", "10.0.0.2"), &[]);
}

// ---- addresses and subnets -------------------------------------------------------------

#[test]
fn node_cidrs_must_parse() {
    for (cidr, message) in [
        (
            "10.0.0.300/24",
            "cidr \"10.0.0.300/24\" is not a CIDR such as 10.0.0.1/24 or fd00::1/64",
        ),
        (
            "10.0.0.1",
            "cidr \"10.0.0.1\" needs a prefix length, as in 10.0.0.1/24 or fd00::1/64",
        ),
        (
            "10.0.0.1/33",
            "cidr \"10.0.0.1/33\" has an invalid prefix length (0..32)",
        ),
        (
            "10.0.0.0/24",
            "cidr \"10.0.0.0/24\" is the network address of 10.0.0.0/24, not a usable bridge \
             address (e.g. 10.0.0.1/24)",
        ),
        (
            "127.0.0.1/32",
            "cidr \"127.0.0.1/32\": a loopback address cannot be a node's bridge address, the \
             gateway of its instances",
        ),
        (
            "127.1.0.1/24",
            "cidr \"127.1.0.1/24\": a loopback address cannot be a node's bridge address, the \
             gateway of its instances",
        ),
        (
            "10.0.0.1/32",
            "cidr \"10.0.0.1/32\": a node subnet needs a prefix of at most /30 to hold instances",
        ),
    ] {
        case(
            &[("node.yaml", &format!("kind: Node\nname: n\ncidr: {cidr}\n"))],
            &[&format!("$DIR/node.yaml:3:7: {message}")],
        );
    }
}

#[test]
fn instance_addresses_must_parse_and_lie_in_the_node_subnet() {
    for (address, message) in [
        ("10.0.0", "address \"10.0.0\" is not an IP address"),
        (
            "fd00::2",
            "address fd00::2 is IPv6 and Node \"node-a\" has no IPv6 subnet",
        ),
        (
            "10.0.1.2",
            "address 10.0.1.2 is outside Node \"node-a\"'s subnet 10.0.0.0/24",
        ),
        (
            "10.0.0.0",
            "address 10.0.0.0 is the network address of subnet 10.0.0.0/24",
        ),
        (
            "10.0.0.255/24",
            "address 10.0.0.255 is the broadcast address of subnet 10.0.0.0/24",
        ),
        (
            "10.0.0.1",
            "address 10.0.0.1 is Node \"node-a\"'s gateway (its bridge address)",
        ),
        (
            "10.0.0.2/16",
            "prefix /16 of address 10.0.0.2 differs from the /24 of Node \"node-a\"'s subnet \
             10.0.0.0/24",
        ),
    ] {
        instance_case(
            &instance("web", address),
            &[&format!("$DIR/i.yaml:3:10: {message}")],
        );
    }
    instance_case(&instance("web", "10.0.0.254/24"), &[]);
}

#[test]
fn an_address_is_used_once() {
    case(
        &[
            ("node.yaml", NODE),
            ("a.yaml", &instance("a", "10.0.0.2")),
            ("b.yaml", &instance("b", "10.0.0.2/24")),
        ],
        &["$DIR/b.yaml:3:10: address 10.0.0.2 is already used at $DIR/a.yaml:3:10"],
    );
}

fn peer(name: &str, cidr: &str, external_ip: &str) -> String {
    format!("kind: Node\nname: {name}\ncidr: {cidr}\nexternalIp: {external_ip}\n")
}

#[test]
fn node_subnets_do_not_overlap() {
    case(
        &[
            ("a.yaml", &peer("a", "10.0.0.1/24", "192.168.56.11")),
            ("b.yaml", &peer("b", "10.0.0.129/25", "192.168.56.12")),
        ],
        &[
            "$DIR/b.yaml:3:7: subnet 10.0.0.128/25 of Node \"b\" overlaps subnet 10.0.0.0/24 of \
             Node \"a\" at $DIR/a.yaml:3:7",
        ],
    );
    case(
        &[
            ("a.yaml", &peer("a", "10.0.0.1/24", "192.168.56.11")),
            ("b.yaml", &peer("b", "10.0.1.1/24", "192.168.56.12")),
        ],
        &[],
    );
}

#[test]
fn node_subnets_lie_inside_the_cluster_cidr() {
    case(
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: 10.0.0.0/16\n",
            ),
            ("a.yaml", &peer("a", "10.1.0.1/24", "192.168.56.11")),
        ],
        &[
            "$DIR/a.yaml:3:7: subnet 10.1.0.0/24 of Node \"a\" is outside the Cluster cidr 10.0.0.0/16",
        ],
    );
}

#[test]
fn at_most_one_cluster() {
    case(
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: 10.0.0.0/16\n---\nkind: Cluster\nname: other\n",
            ),
            ("node.yaml", NODE),
        ],
        &["$DIR/cluster.yaml:5:1: more than one Cluster: the first is at $DIR/cluster.yaml:1:1"],
    );
}

// ---- ports -----------------------------------------------------------------------------

fn with_ports(name: &str, address: &str, ports: &str) -> String {
    format!("kind: Instance\nname: {name}\naddress: {address}\nports:\n{ports}")
}

#[test]
fn ports_lie_in_1_to_65535() {
    instance_case(
        &with_ports(
            "web",
            "10.0.0.2",
            "  - hostPort: 0\n    instancePort: 65536\n  - hostPort: -1\n    instancePort: 80\n",
        ),
        &[
            "$DIR/i.yaml:5:15: hostPort 0 is outside 1..65535",
            "$DIR/i.yaml:6:19: instancePort 65536 is outside 1..65535",
            "$DIR/i.yaml:7:15: hostPort -1 is outside 1..65535",
        ],
    );
    instance_case(
        &with_ports(
            "web",
            "10.0.0.2",
            "  - hostPort: 65535\n    instancePort: 1\n",
        ),
        &[],
    );
    instance_case(
        &with_ports(
            "web",
            "10.0.0.2",
            "  - hostPort: 80\n    instancePort: 80\n    protocol: sctp\n",
        ),
        &["$DIR/i.yaml:7:15: unknown protocol \"sctp\": expected tcp or udp"],
    );
}

#[test]
fn a_host_port_is_published_once_per_protocol_and_address() {
    // tcp and udp on the same port are distinct.
    instance_case(
        &with_ports(
            "web",
            "10.0.0.2",
            "  - hostPort: 53\n    instancePort: 53\n  - hostPort: 53\n    instancePort: 53\n    protocol: udp\n",
        ),
        &[],
    );
    case(
        &[
            ("node.yaml", NODE),
            (
                "a.yaml",
                &with_ports("a", "10.0.0.2", "  - hostPort: 80\n    instancePort: 80\n"),
            ),
            (
                "b.yaml",
                &with_ports(
                    "b",
                    "10.0.0.3",
                    "  - hostPort: 80\n    instancePort: 8080\n    protocol: tcp\n",
                ),
            ),
        ],
        &[
            "$DIR/b.yaml:5:5: host port 0.0.0.0:80/tcp on Node \"node-a\" is already published by \
             Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    // 0.0.0.0 is every address, so it clashes with a specific one.
    case(
        &[
            ("node.yaml", NODE),
            (
                "a.yaml",
                &with_ports(
                    "a",
                    "10.0.0.2",
                    "  - hostPort: 80\n    instancePort: 80\n    hostIp: 0.0.0.0\n",
                ),
            ),
            (
                "b.yaml",
                &with_ports(
                    "b",
                    "10.0.0.3",
                    "  - hostPort: 80\n    instancePort: 80\n    hostIp: 10.0.0.1\n",
                ),
            ),
        ],
        &[
            "$DIR/b.yaml:5:5: host port 10.0.0.1:80/tcp on Node \"node-a\" is already published \
             on 0.0.0.0:80/tcp by Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    // Two different specific addresses do not clash.
    case(
        &[
            ("node.yaml", NODE),
            (
                "a.yaml",
                &with_ports(
                    "a",
                    "10.0.0.2",
                    "  - hostPort: 80\n    instancePort: 80\n    hostIp: 192.168.56.11\n",
                ),
            ),
            (
                "b.yaml",
                &with_ports(
                    "b",
                    "10.0.0.3",
                    "  - hostPort: 80\n    instancePort: 80\n    hostIp: 10.0.0.1\n",
                ),
            ),
        ],
        &[],
    );
    instance_case(
        &with_ports(
            "web",
            "10.0.0.2",
            "  - hostPort: 80\n    instancePort: 80\n    hostIp: localhost\n",
        ),
        &["$DIR/i.yaml:7:13: hostIp \"localhost\" is not an IP address"],
    );
}

// ---- dual stack ------------------------------------------------------------------------

/// A dual-stack node: its IPv6 entry is at 3:21.
const DUAL_NODE: &str = "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, fd00:10::1/64]\n";
/// An IPv6-only node, written as a single string.
const IPV6_NODE: &str = "kind: Node\nname: node-a\ncidr: fd00:10::1/64\n";

/// A case with `node` plus one Instance file, `i.yaml`.
fn node_case(node: &str, instance: &str, expected: &[&str]) {
    case(&[("node.yaml", node), ("i.yaml", instance)], expected);
}

#[test]
fn cidr_address_and_external_ip_take_a_string_or_a_list_of_one_per_family() {
    let dir = temp_dir();
    write(
        dir.path(),
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: [10.0.0.0/16, \"fd00:10::/48\"]\n",
            ),
            (
                "node.yaml",
                "kind: Node\nname: node-a\ncidr:\n  - 10.0.0.1/24\n  - fd00:10::1/64\n\
                 externalIp: [192.168.56.11, 2001:db8::11]\n",
            ),
            ("web.yaml", &instance("web", "[10.0.0.2/24, fd00:10::2/64]")),
            ("db.yaml", &instance("db", "fd00:10::3")),
            ("cache.yaml", &instance("cache", "[10.0.0.4]")),
            ("api.yaml", &instance("api", "[\"fd00:10::5\", 10.0.0.5]")),
        ],
    );
    let output = assert_validate(dir.path(), &[]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{}: valid (1 node, 4 instances, cluster)\n",
            dir.path().display()
        )
    );
}

#[test]
fn two_entries_of_one_family_are_refused_at_the_second() {
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, 10.0.1.1/24]\n",
        )],
        &[
            "$DIR/node.yaml:3:21: `cidr` has two IPv4 entries (\"10.0.1.1/24\" here, and at \
           $DIR/node.yaml:3:8): at most one per family",
        ],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr:\n  - fd00:10::1/64\n  - fd00:11::1/64\n",
        )],
        &[
            "$DIR/node.yaml:5:5: `cidr` has two IPv6 entries (\"fd00:11::1/64\" here, and at \
           $DIR/node.yaml:4:5): at most one per family",
        ],
    );
    node_case(
        DUAL_NODE,
        &instance("web", "[fd00:10::2, fd00:10::3]"),
        &[
            "$DIR/i.yaml:3:23: `address` has two IPv6 entries (\"fd00:10::3\" here, and at \
           $DIR/i.yaml:3:11): at most one per family",
        ],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nexternalIp: [192.168.56.11, 192.168.56.12]\n",
        )],
        &[
            "$DIR/node.yaml:4:29: `externalIp` has two IPv4 entries (\"192.168.56.12\" here, and \
           at $DIR/node.yaml:4:14): at most one per family",
        ],
    );
    case(
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: [fd00:10::/48, fd00:20::/48]\n",
            ),
            ("node.yaml", NODE),
        ],
        &[
            "$DIR/cluster.yaml:3:22: `cidr` has two IPv6 entries (\"fd00:20::/48\" here, and at \
           $DIR/cluster.yaml:3:8): at most one per family",
        ],
    );
}

#[test]
fn an_empty_list_is_refused() {
    case(
        &[("node.yaml", "kind: Node\nname: node-a\ncidr: []\n")],
        &["$DIR/node.yaml:3:7: `cidr` must not be an empty list"],
    );
    instance_case(
        &instance("web", "[]"),
        &["$DIR/i.yaml:3:10: `address` must not be an empty list"],
    );
    // Not also "missing `externalIp`".
    case(
        &[
            ("a.yaml", &peer("a", "10.0.0.1/24", "[]")),
            ("b.yaml", &peer("b", "10.0.1.1/24", "192.168.56.12")),
        ],
        &["$DIR/a.yaml:4:13: `externalIp` must not be an empty list"],
    );
    case(
        &[
            ("cluster.yaml", "kind: Cluster\ncidr: []\n"),
            ("node.yaml", NODE),
        ],
        &["$DIR/cluster.yaml:2:7: `cidr` must not be an empty list"],
    );
}

#[test]
fn wrong_types_of_address_fields_name_the_field() {
    case(
        &[("node.yaml", "kind: Node\nname: node-a\ncidr: {a: b}\n")],
        &["$DIR/node.yaml:3:7: `cidr` must be a string or a list of strings, not a mapping"],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr:\n  ipv4: 10.0.0.1/24\n",
        )],
        &["$DIR/node.yaml:4:3: `cidr` must be a string or a list of strings, not a mapping"],
    );
    case(
        &[("node.yaml", "kind: Node\nname: node-a\ncidr: true\n")],
        &["$DIR/node.yaml:3:7: `cidr` must be a string or a list of strings, not a boolean"],
    );
    instance_case(
        &instance("web", "42"),
        &["$DIR/i.yaml:3:10: `address` must be a string or a list of strings, not a number"],
    );
    instance_case(
        &instance("web", "[10.0.0.2, 7]"),
        &["$DIR/i.yaml:3:21: each entry of `address` must be a string, not a number"],
    );
    instance_case(
        &instance("web", "[[10.0.0.2]]"),
        &["$DIR/i.yaml:3:11: each entry of `address` must be a string, not a list"],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nexternalIp: [192.168.56.11, {a: b}]\n",
        )],
        &["$DIR/node.yaml:4:29: each entry of `externalIp` must be a string, not a mapping"],
    );
    case(
        &[
            ("cluster.yaml", "kind: Cluster\ncidr: 10\n"),
            ("node.yaml", NODE),
        ],
        &["$DIR/cluster.yaml:2:7: `cidr` must be a string or a list of strings, not a number"],
    );
}

#[test]
fn an_unquoted_ipv6_address_ending_in_two_colons_is_explained() {
    // YAML reads the last colon as a key's.
    node_case(
        DUAL_NODE,
        &instance("web", "fd00:10::"),
        &[
            "$DIR/i.yaml:3:18: mapping values are not allowed in this context: an IPv6 address \
           ending in `::` must be quoted, as in \"fd00:10::\"",
        ],
    );
    node_case(
        DUAL_NODE,
        "kind: Instance\nname: web\naddress:\n  - 10.0.0.2\n  - fd00:10::\n",
        &[
            "$DIR/i.yaml:5:5: each entry of `address` must be a string, not a mapping (an IPv6 \
           address ending in `::` must be quoted, as in \"fd00:10::\")",
        ],
    );
    node_case(
        DUAL_NODE,
        &with_ports(
            "web",
            "fd00:10::2",
            "  - hostPort: 80\n    instancePort: 80\n    hostIp: ::\n",
        ),
        &[
            "$DIR/i.yaml:7:14: mapping values are not allowed in this context: an IPv6 address \
           ending in `::` must be quoted, as in \"::\"",
        ],
    );
}

#[test]
fn ipv6_node_cidrs_must_parse() {
    for (cidr, message) in [
        (
            "fd00:10::1/127",
            "cidr \"fd00:10::1/127\": a node subnet needs a prefix of at most /126 to hold \
             instances",
        ),
        (
            "fd00:10::1/129",
            "cidr \"fd00:10::1/129\" has an invalid prefix length (0..128)",
        ),
        (
            "fd00:10::g/64",
            "cidr \"fd00:10::g/64\" is not a CIDR such as 10.0.0.1/24 or fd00::1/64",
        ),
        (
            "fd00:10::/64",
            "cidr \"fd00:10::/64\" is the network address of fd00:10::/64, not a usable bridge \
             address (e.g. fd00:10::1/64)",
        ),
        (
            "fe80::1/64",
            "cidr \"fe80::1/64\": a link-local, multicast or unspecified address cannot be a \
             node's bridge address",
        ),
        (
            "ff02::1/64",
            "cidr \"ff02::1/64\": a link-local, multicast or unspecified address cannot be a \
             node's bridge address",
        ),
        (
            "::1/128",
            "cidr \"::1/128\": a loopback address cannot be a node's bridge address, the \
             gateway of its instances",
        ),
    ] {
        case(
            &[("node.yaml", &format!("kind: Node\nname: n\ncidr: {cidr}\n"))],
            &[&format!("$DIR/node.yaml:3:7: {message}")],
        );
        // The same as a list's IPv6 entry.
        case(
            &[(
                "node.yaml",
                &format!("kind: Node\nname: n\ncidr: [10.0.0.1/24, {cidr}]\n"),
            )],
            &[&format!("$DIR/node.yaml:3:21: {message}")],
        );
    }
    // An IPv6-only node; IPv6 has no broadcast address, so the last one may be the bridge's.
    case(&[("node.yaml", IPV6_NODE)], &[]);
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: n\ncidr: fd00:10::ffff:ffff:ffff:ffff/64\n",
        )],
        &[],
    );
}

#[test]
fn ipv6_instance_addresses_lie_in_the_node_subnet() {
    for (address, message) in [
        (
            "\"fd00:10::\"",
            "address fd00:10:: is the network address of subnet fd00:10::/64",
        ),
        (
            "fd00:10::1",
            "address fd00:10::1 is Node \"node-a\"'s gateway (its bridge address)",
        ),
        (
            "fd00:11::2",
            "address fd00:11::2 is outside Node \"node-a\"'s subnet fd00:10::/64",
        ),
        (
            "fd00:10::2/48",
            "prefix /48 of address fd00:10::2 differs from the /64 of Node \"node-a\"'s subnet \
             fd00:10::/64",
        ),
        (
            "fd00:10::2/129",
            "address \"fd00:10::2/129\" has an invalid prefix length (0..128)",
        ),
        (
            "fd00::10::2",
            "address \"fd00::10::2\" is not an IP address",
        ),
    ] {
        node_case(
            DUAL_NODE,
            &instance("web", address),
            &[&format!("$DIR/i.yaml:3:10: {message}")],
        );
        node_case(
            DUAL_NODE,
            &instance("web", &format!("[10.0.0.2, {address}]")),
            &[&format!("$DIR/i.yaml:3:21: {message}")],
        );
        node_case(
            IPV6_NODE,
            &instance("web", address),
            &[&format!("$DIR/i.yaml:3:10: {message}")],
        );
    }
    // No broadcast address in IPv6: the last address of the subnet is an instance's.
    node_case(
        DUAL_NODE,
        &instance("web", "[10.0.0.2, fd00:10::ffff:ffff:ffff:ffff/64]"),
        &[],
    );
    node_case(IPV6_NODE, &instance("web", "fd00:10::2/64"), &[]);
}

#[test]
fn an_instance_address_needs_its_family_on_the_node() {
    instance_case(
        &instance("web", "[10.0.0.2, fd00:10::2]"),
        &["$DIR/i.yaml:3:21: address fd00:10::2 is IPv6 and Node \"node-a\" has no IPv6 subnet"],
    );
    node_case(
        IPV6_NODE,
        &instance("web", "10.0.0.2"),
        &["$DIR/i.yaml:3:10: address 10.0.0.2 is IPv4 and Node \"node-a\" has no IPv4 subnet"],
    );
    // An instance may have fewer families than its node.
    node_case(DUAL_NODE, &instance("web", "10.0.0.2"), &[]);
    node_case(DUAL_NODE, &instance("web", "fd00:10::2"), &[]);
}

#[test]
fn an_ipv6_address_is_used_once() {
    case(
        &[
            ("node.yaml", DUAL_NODE),
            ("a.yaml", &instance("a", "[10.0.0.2, fd00:10::2]")),
            ("b.yaml", &instance("b", "[10.0.0.3, fd00:10::2/64]")),
        ],
        &["$DIR/b.yaml:3:21: address fd00:10::2 is already used at $DIR/a.yaml:3:21"],
    );
}

#[test]
fn node_subnets_do_not_overlap_within_a_family() {
    case(
        &[
            (
                "a.yaml",
                &peer(
                    "a",
                    "[10.0.0.1/24, fd00:10::1/64]",
                    "[192.168.56.11, 2001:db8::11]",
                ),
            ),
            (
                "b.yaml",
                &peer(
                    "b",
                    "[10.0.1.1/24, fd00:10::8001/65]",
                    "[192.168.56.12, 2001:db8::12]",
                ),
            ),
        ],
        &[
            "$DIR/b.yaml:3:21: subnet fd00:10::/65 of Node \"b\" overlaps subnet fd00:10::/64 of \
           Node \"a\" at $DIR/a.yaml:3:21",
        ],
    );
    // An IPv4-only and an IPv6-only node.
    case(
        &[
            ("a.yaml", &peer("a", "10.0.0.1/24", "192.168.56.11")),
            ("b.yaml", &peer("b", "fd00:10::1/64", "2001:db8::12")),
        ],
        &[],
    );
}

#[test]
fn node_subnets_lie_inside_the_cluster_cidr_of_their_family() {
    let node = peer(
        "a",
        "[10.0.0.1/24, fd00:20::1/64]",
        "[192.168.56.11, 2001:db8::11]",
    );
    case(
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: [10.0.0.0/16, fd00:10::/48]\n",
            ),
            ("a.yaml", &node),
        ],
        &[
            "$DIR/a.yaml:3:21: subnet fd00:20::/64 of Node \"a\" is outside the Cluster cidr \
           fd00:10::/48",
        ],
    );
    // A Cluster without an IPv6 cidr says nothing of IPv6 subnets.
    case(
        &[
            (
                "cluster.yaml",
                "kind: Cluster\nname: demo\ncidr: 10.0.0.0/16\n",
            ),
            ("a.yaml", &node),
        ],
        &[],
    );
}

#[test]
fn a_host_ip_needs_its_family_on_the_instance() {
    let port =
        |host_ip: &str| format!("  - hostPort: 80\n    instancePort: 80\n    hostIp: {host_ip}\n");
    node_case(
        DUAL_NODE,
        &with_ports("web", "10.0.0.2", &port("2001:db8::10")),
        &[
            "$DIR/i.yaml:7:13: hostIp 2001:db8::10 is IPv6 and Instance \"web\" has no IPv6 \
           address",
        ],
    );
    node_case(
        DUAL_NODE,
        &with_ports("web", "fd00:10::2", &port("0.0.0.0")),
        &["$DIR/i.yaml:7:13: hostIp 0.0.0.0 is IPv4 and Instance \"web\" has no IPv4 address"],
    );
    node_case(
        IPV6_NODE,
        &with_ports("web", "fd00:10::2", &port("192.0.2.10")),
        &[
            "$DIR/i.yaml:7:13: hostIp 192.0.2.10 is IPv4 and Instance \"web\" has no IPv4 \
           address",
        ],
    );
    node_case(
        IPV6_NODE,
        &with_ports("web", "fd00:10::2", &port("\"::\"")),
        &[],
    );
    node_case(
        DUAL_NODE,
        &with_ports("web", "[10.0.0.2, fd00:10::2]", &port("2001:db8::10")),
        &[],
    );
    // Nothing reaches an instance through IPv6's loopback.
    node_case(
        DUAL_NODE,
        &with_ports("web", "[10.0.0.2, fd00:10::2]", &port("::1")),
        &[
            "$DIR/i.yaml:7:13: hostIp ::1: a port cannot be published on IPv6's loopback (the \
           kernel forwards no traffic from it to an instance); use 127.0.0.1, or the node's \
           IPv6 addresses",
        ],
    );
}

/// Two instances `a` and `b` on the dual-stack node, each with one port 80/tcp on
/// `host_ip` (none when empty).
fn two_publishers(a: (&str, &str), b: (&str, &str), expected: &[&str]) {
    let file = |name: &str, (address, host_ip): (&str, &str)| {
        let host_ip = match host_ip {
            "" => String::new(),
            ip => format!("    hostIp: {ip}\n"),
        };
        with_ports(
            name,
            address,
            &format!("  - hostPort: 80\n    instancePort: 80\n{host_ip}"),
        )
    };
    case(
        &[
            ("node.yaml", DUAL_NODE),
            ("a.yaml", &file("a", a)),
            ("b.yaml", &file("b", b)),
        ],
        expected,
    );
}

#[test]
fn a_host_port_is_published_once_per_family() {
    const DUAL: &str = "[10.0.0.2, fd00:10::2]";
    const DUAL_B: &str = "[10.0.0.3, fd00:10::3]";
    // An IPv4-only and an IPv6-only instance share a host port.
    two_publishers(("10.0.0.2", ""), ("fd00:10::3", ""), &[]);
    // No hostIp: every family the instance has.
    two_publishers(
        (DUAL, ""),
        ("fd00:10::3", ""),
        &[
            "$DIR/b.yaml:5:5: host port [::]:80/tcp on Node \"node-a\" is already published by \
           Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    two_publishers(
        (DUAL, ""),
        ("10.0.0.3", ""),
        &[
            "$DIR/b.yaml:5:5: host port 0.0.0.0:80/tcp on Node \"node-a\" is already published \
           by Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    // 0.0.0.0 is every IPv4 address only, :: every IPv6 address only.
    two_publishers((DUAL, "0.0.0.0"), (DUAL_B, "\"::\""), &[]);
    two_publishers(
        (DUAL, "\"::\""),
        (DUAL_B, ""),
        &[
            "$DIR/b.yaml:5:5: host port [::]:80/tcp on Node \"node-a\" is already published by \
           Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    two_publishers(
        (DUAL, "2001:db8::10"),
        (DUAL_B, "\"::\""),
        &[
            "$DIR/b.yaml:5:5: host port [::]:80/tcp on Node \"node-a\" is already published on \
           [2001:db8::10]:80/tcp by Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    two_publishers(
        (DUAL, ""),
        (DUAL_B, "2001:db8::10"),
        &[
            "$DIR/b.yaml:5:5: host port [2001:db8::10]:80/tcp on Node \"node-a\" is already \
           published on [::]:80/tcp by Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    two_publishers(
        (DUAL, "2001:db8::10"),
        (DUAL_B, "2001:db8::10"),
        &[
            "$DIR/b.yaml:5:5: host port [2001:db8::10]:80/tcp on Node \"node-a\" is already \
           published by Instance \"a\" at $DIR/a.yaml:5:5",
        ],
    );
    // Two addresses of one family, or one of each, do not clash.
    two_publishers((DUAL, "2001:db8::10"), (DUAL_B, "2001:db8::11"), &[]);
    two_publishers((DUAL, "2001:db8::10"), (DUAL_B, "192.0.2.10"), &[]);
    two_publishers((DUAL, "2001:db8::10"), ("10.0.0.3", ""), &[]);
    // One instance, one host port on each family.
    node_case(
        DUAL_NODE,
        &with_ports(
            "web",
            DUAL,
            "  - hostPort: 80\n    instancePort: 80\n    hostIp: 0.0.0.0\n\
             \x20 - hostPort: 80\n    instancePort: 8080\n    hostIp: \"::\"\n",
        ),
        &[],
    );
}

#[test]
fn a_routed_cluster_needs_an_external_ip_of_each_subnet_family() {
    let dual = "[10.0.0.1/24, fd00:10::1/64]";
    case(
        &[
            ("a.yaml", &peer("a", dual, "192.168.56.11")),
            ("b.yaml", &peer("b", "10.0.1.1/24", "192.168.56.12")),
        ],
        &[
            "$DIR/a.yaml:3:21: Node \"a\" has an IPv6 subnet and no IPv6 `externalIp`: a routed \
           cluster routes each subnet via the peer's address of its family",
        ],
    );
    case(
        &[
            ("a.yaml", &peer("a", "fd00:10::1/64", "2001:db8::11")),
            (
                "b.yaml",
                &peer("b", "[10.0.1.1/24, fd00:11::1/64]", "2001:db8::12"),
            ),
        ],
        &[
            "$DIR/b.yaml:3:8: Node \"b\" has an IPv4 subnet and no IPv4 `externalIp`: a routed \
           cluster routes each subnet via the peer's address of its family",
        ],
    );
    case(
        &[
            ("a.yaml", &peer("a", dual, "[192.168.56.11, 2001:db8::11]")),
            ("b.yaml", &peer("b", "fd00:11::1/64", "2001:db8::12")),
        ],
        &[],
    );
    // A vxlan cluster tunnels every family over one underlay; a single node routes nothing.
    case(
        &[
            ("cluster.yaml", "kind: Cluster\nmode: vxlan\n"),
            ("a.yaml", &peer("a", dual, "192.168.56.11")),
            ("b.yaml", &peer("b", "10.0.1.1/24", "192.168.56.12")),
        ],
        &[],
    );
    case(&[("a.yaml", &peer("a", dual, "192.168.56.11"))], &[]);
    case(
        &[
            ("a.yaml", &peer("a", "fd00:10::1/64", "2001:db8::11")),
            ("b.yaml", &peer("b", "fd00:11::1/64", "2001:db8::11")),
        ],
        &["$DIR/b.yaml:4:13: externalIp 2001:db8::11 is also used at $DIR/a.yaml:4:13"],
    );
}

#[test]
fn a_vxlan_cluster_needs_one_underlay_family_on_every_node() {
    let vxlan = ("cluster.yaml", "kind: Cluster\nmode: vxlan\n");
    // Node c has no IPv4 externalIp: the underlay is IPv6, which a and b lack.
    case(
        &[
            vxlan,
            ("a.yaml", &peer("a", "10.0.0.1/24", "192.168.56.11")),
            (
                "b.yaml",
                &peer("b", "10.0.1.1/24", "[192.168.56.12, 2001:db8::12]"),
            ),
            ("c.yaml", &peer("c", "10.0.2.1/24", "2001:db8::13")),
        ],
        &[
            "$DIR/a.yaml:4:13: Node \"a\" has no IPv6 `externalIp`: a vxlan cluster tunnels over \
             one family, IPv6 here since Node \"c\" has no IPv4 `externalIp`; give every Node an \
             `externalIp` of one family",
        ],
    );
    // Every node has IPv4, or every node has IPv6: either is an underlay.
    case(
        &[
            vxlan,
            (
                "a.yaml",
                &peer("a", "10.0.0.1/24", "[192.168.56.11, 2001:db8::11]"),
            ),
            ("b.yaml", &peer("b", "10.0.1.1/24", "192.168.56.12")),
        ],
        &[],
    );
    case(
        &[
            vxlan,
            (
                "a.yaml",
                &peer("a", "10.0.0.1/24", "[192.168.56.11, 2001:db8::11]"),
            ),
            ("b.yaml", &peer("b", "10.0.1.1/24", "2001:db8::12")),
        ],
        &[],
    );
}

#[test]
fn a_node_holds_as_many_instances_of_a_family_as_its_subnet_of_it_has_addresses_for() {
    // A /126 has addresses for 2 instances (4 less network and gateway: no broadcast).
    let node = "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, fd00:10::1/126]\n";
    let ipv6 = |count: u8| -> String {
        (0..count)
            .map(|i| {
                format!(
                    "---\n{{kind: Instance, name: i{i}, address: fd00:10::{}}}\n",
                    i + 2
                )
            })
            .collect()
    };
    case(&[("node.yaml", node), ("i.yaml", &ipv6(2))], &[]);
    case(
        &[("node.yaml", node), ("i.yaml", &ipv6(3))],
        &[
            "$DIR/i.yaml:6:37: address fd00:10::4 is outside Node \"node-a\"'s subnet \
             fd00:10::/126",
            "$DIR/node.yaml:3:21: Node \"node-a\" has 3 instances, more than its subnet \
             fd00:10::/126 has addresses for (2)",
        ],
    );
    // IPv4-only instances do not use the IPv6 subnet.
    case(&[("node.yaml", node), ("i.yaml", &instances(5))], &[]);
}

#[test]
fn a_wrong_entry_gives_one_error_not_more() {
    // Not also "no IPv6 subnet" for the instance.
    node_case(
        "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, fd00:10::1/200]\n",
        &instance("web", "fd00:10::2"),
        &["$DIR/node.yaml:3:21: cidr \"fd00:10::1/200\" has an invalid prefix length (0..128)"],
    );
    // Not also "missing `externalIp`".
    case(
        &[
            ("a.yaml", &peer("a", "10.0.0.1/24", "[bogus]")),
            ("b.yaml", &peer("b", "10.0.1.1/24", "192.168.56.12")),
        ],
        &["$DIR/a.yaml:4:14: externalIp \"bogus\" is not an IP address"],
    );
    // Not also "hostIp is IPv6 and the instance has no IPv6 address".
    node_case(
        DUAL_NODE,
        &with_ports(
            "web",
            "[10.0.0.2, bogus]",
            "  - hostPort: 80\n    instancePort: 80\n    hostIp: 2001:db8::10\n",
        ),
        &["$DIR/i.yaml:3:21: address \"bogus\" is not an IP address"],
    );
}

// ---- nodes -----------------------------------------------------------------------------

#[test]
fn an_instance_needs_an_existing_node() {
    instance_case(
        "kind: Instance\nname: web\nnode: node-b\naddress: 10.0.0.2\n",
        &["$DIR/i.yaml:3:7: Instance \"web\" is on Node \"node-b\", which does not exist"],
    );
}

#[test]
fn several_nodes_need_external_ips_and_instances_a_node() {
    case(
        &[
            ("a.yaml", "kind: Node\nname: a\ncidr: 10.0.0.1/24\n"),
            ("b.yaml", "kind: Node\nname: b\ncidr: 10.0.1.1/24\n"),
            ("i.yaml", &instance("web", "10.0.0.2")),
        ],
        &[
            "$DIR/a.yaml:1:1: Node \"a\" is missing `externalIp`, required when the directory \
             describes several nodes",
            "$DIR/b.yaml:1:1: Node \"b\" is missing `externalIp`, required when the directory \
             describes several nodes",
            "$DIR/i.yaml:1:1: Instance \"web\" is missing `node`, required when the directory \
             describes several nodes",
        ],
    );
}

#[test]
fn a_directory_without_a_node_is_invalid() {
    case(
        &[("i.yaml", &instance("web", "10.0.0.2"))],
        &["$DIR: no Node: at least one document of kind Node is required"],
    );
    case(
        &[],
        &["$DIR: no Node: at least one document of kind Node is required"],
    );
}

#[test]
fn a_missing_directory_is_one_error() {
    let dir = temp_dir();
    let missing = dir.path().join("missing");
    let output = run(&missing);
    assert_eq!(
        stderr_lines(dir.path(), &output),
        [
            "$DIR/missing: cannot read desired-state directory: No such file or directory (os error 2)"
        ]
    );
    assert_eq!(output.status.code(), Some(1));
}

// ---- which files are read --------------------------------------------------------------

#[test]
fn hidden_files_editor_leftovers_and_other_extensions_are_skipped() {
    case(
        &[
            ("node.yml", NODE),
            (".hidden.yaml", "{{{ not yaml"),
            ("x.yaml~", "{{{ not yaml"),
            ("x.yaml.swp", "{{{ not yaml"),
            ("x.tmp", "{{{ not yaml"),
            ("x.yaml.tmp", "{{{ not yaml"),
            ("README.md", "{{{ not yaml"),
            (".git/config.yaml", "{{{ not yaml"),
            ("instances/team/web.yaml", &instance("web", "10.0.0.2")),
        ],
        &[],
    );
    // Proof that the nested file was read.
    case(
        &[
            ("node.yaml", NODE),
            ("instances/team/web.yaml", &instance("Web", "10.0.0.2")),
        ],
        &[&format!(
            "$DIR/instances/team/web.yaml:2:7: Instance name \"Web\" {NOT_A_LABEL}"
        )],
    );
}

#[test]
fn a_file_holds_several_documents_and_empty_ones_are_ignored() {
    case(
        &[(
            "all.yaml",
            &format!(
                "---\n{NODE}---\n---\n# only a comment\n---\n{}---\n{}...\n",
                instance("web", "10.0.0.2"),
                instance("Bad", "10.0.0.3")
            ),
        )],
        &[&format!(
            "$DIR/all.yaml:14:7: Instance name \"Bad\" {NOT_A_LABEL}"
        )],
    );
}

#[test]
fn a_kubernetes_configmap_mount_is_read_once() {
    let dir = temp_dir();
    let root = dir.path();
    let data = "..2026_11_28_10_00_00.123";
    write(
        root,
        &[
            (&format!("{data}/node.yaml"), NODE),
            (&format!("{data}/web.yaml"), &instance("web", "10.0.0.2")),
        ],
    );
    symlink(data, root.join("..data")).unwrap();
    symlink("..data/node.yaml", root.join("node.yaml")).unwrap();
    symlink("..data/web.yaml", root.join("web.yaml")).unwrap();
    let output = assert_validate(root, &[]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}: valid (1 node, 1 instance)\n", root.display())
    );
}

#[test]
fn a_symlink_loop_between_folders_ends() {
    let dir = temp_dir();
    let root = dir.path();
    write(
        root,
        &[
            ("node.yaml", NODE),
            ("a/web.yaml", &instance("web", "10.0.0.2")),
        ],
    );
    fs::create_dir(root.join("b")).unwrap();
    symlink("../b", root.join("a/to-b")).unwrap();
    symlink("../a", root.join("b/to-a")).unwrap();
    let started = Instant::now();
    let output = assert_validate(root, &[]);
    assert!(started.elapsed() < QUICK);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}: valid (1 node, 1 instance)\n", root.display())
    );
}

#[test]
fn a_dangling_symlink_named_like_state_is_an_error() {
    let dir = temp_dir();
    write(dir.path(), &[("node.yaml", NODE)]);
    symlink("gone.yaml", dir.path().join("web.yaml")).unwrap();
    assert_validate(
        dir.path(),
        &["$DIR/web.yaml: cannot read: No such file or directory (os error 2)"],
    );
}

// ---- hostile input ---------------------------------------------------------------------

/// Validates `files` and expects exit 1 with exactly `expected`, quickly and without a panic.
fn hostile_case(files: &[(&str, &[u8])], expected: &[&str]) {
    let dir = temp_dir();
    for (path, content) in files {
        fs::write(dir.path().join(path), content).unwrap();
    }
    let started = Instant::now();
    assert_validate(dir.path(), expected);
    assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
}

#[test]
fn an_alias_bomb_is_rejected_quickly() {
    let mut bomb = String::from(
        "kind: Instance\nname: web\naddress: 10.0.0.2\na: &a [x, x, x, x, x, x, x, x, x]\n",
    );
    for (anchor, alias) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!(
            "{anchor}: &{anchor} [{}]\n",
            vec![format!("*{alias}"); 9].join(", ")
        ));
    }
    hostile_case(
        &[
            ("node.yaml", NODE.as_bytes()),
            ("bomb.yaml", bomb.as_bytes()),
        ],
        &[
            "$DIR/bomb.yaml:4:1: unknown field `a`, expected one of apiVersion, kind, name, cidr, mode, externalIp, bridge, uplink, masquerade, mtu, node, address, ports, id, netns, interface",
        ],
    );
}

#[test]
fn deep_nesting_is_rejected_quickly() {
    let deep = format!(
        "kind: Instance\nname: web\naddress: 10.0.0.2\nports: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    hostile_case(
        &[
            ("node.yaml", NODE.as_bytes()),
            ("deep.yaml", deep.as_bytes()),
        ],
        &["$DIR/deep.yaml:4:263: nesting too deep (recursion limit exceeded)"],
    );
    let deep_name = format!(
        "kind: Instance\nname: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    hostile_case(
        &[
            ("node.yaml", NODE.as_bytes()),
            ("deep.yaml", deep_name.as_bytes()),
        ],
        &["$DIR/deep.yaml:2:7: `name` must be a string"],
    );
}

#[test]
fn a_file_over_16_mib_is_rejected_unread() {
    let dir = temp_dir();
    write(dir.path(), &[("node.yaml", NODE)]);
    let big = fs::File::create(dir.path().join("big.yaml")).unwrap();
    big.set_len(16 * 1024 * 1024 + 1).unwrap();
    let started = Instant::now();
    assert_validate(
        dir.path(),
        &["$DIR/big.yaml: file is 16777217 bytes, over the limit of 16777216 bytes (16 MiB)"],
    );
    assert!(started.elapsed() < QUICK);
}

#[test]
fn bytes_that_are_not_utf8_are_reported_at_their_position() {
    hostile_case(
        &[
            ("node.yaml", NODE.as_bytes()),
            (
                "i.yaml",
                b"kind: Instance\nname: caf\xc3\xa9\xff\naddress: 10.0.0.2\n",
            ),
        ],
        &["$DIR/i.yaml:2:11: file is not valid UTF-8 (byte 0xff)"],
    );
}

#[test]
fn a_huge_name_is_rejected_quickly() {
    let huge = instance(&"a".repeat(1 << 20), "10.0.0.2");
    hostile_case(
        &[("node.yaml", NODE.as_bytes()), ("i.yaml", huge.as_bytes())],
        &[
            "$DIR/i.yaml:2:7: Instance name is 1048576 characters long, over the DNS label limit of 63",
        ],
    );
    let huge_node = format!(
        "kind: Node\nname: {}\ncidr: 10.0.0.1/24\n",
        "a".repeat(1 << 20)
    );
    hostile_case(
        &[("node.yaml", huge_node.as_bytes())],
        &["$DIR/node.yaml:2:7: Node name is 1048576 characters long, over the limit of 253"],
    );
}

// ---- permissions -----------------------------------------------------------------------

#[test]
fn a_world_writable_file_is_a_warning_only() {
    let dir = temp_dir();
    write(dir.path(), &[("node.yaml", NODE)]);
    fs::set_permissions(
        dir.path().join("node.yaml"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let output = run(dir.path());
    assert_eq!(
        stderr_lines(dir.path(), &output),
        ["warning: $DIR/node.yaml: is writable by every user (mode 0666); run chmod o-w on it"]
    );
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn a_world_writable_folder_is_a_warning_next_to_the_errors() {
    let dir = temp_dir();
    write(
        dir.path(),
        &[
            ("node.yaml", NODE),
            ("sub/i.yaml", &instance("Web", "10.0.0.2")),
        ],
    );
    fs::set_permissions(dir.path().join("sub"), fs::Permissions::from_mode(0o777)).unwrap();
    assert_validate(
        dir.path(),
        &[
            "warning: $DIR/sub: is writable by every user (mode 0777); run chmod o-w on it",
            &format!("$DIR/sub/i.yaml:2:7: Instance name \"Web\" {NOT_A_LABEL}"),
        ],
    );
}

#[test]
fn a_node_with_ipv6_needs_an_mtu_ipv6_works_with() {
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, \"fd00:10::1/64\"]\nmtu: 1200\n",
        )],
        &[
            "$DIR/node.yaml:4:6: mtu 1200 is below 1280, the least IPv6 works with, and the Node \
             has an IPv6 subnet",
        ],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\nmtu: 1200\n",
        )],
        &[],
    );
    case(
        &[(
            "node.yaml",
            "kind: Node\nname: node-a\ncidr: \"fd00:10::1/64\"\nmtu: 1280\n",
        )],
        &[],
    );
}

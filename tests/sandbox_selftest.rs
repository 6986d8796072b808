//! The sandbox itself: what a test does inside must not be visible outside.

mod common;

#[test]
fn sandbox_is_a_private_network_and_run_directory() {
    common::sandboxed("sandbox_is_a_private_network_and_run_directory", || {
        let links = common::run_ok("ip", &["-o", "link", "show"]);
        assert_eq!(
            links.lines().count(),
            1,
            "only lo in a fresh sandbox: {links}"
        );
        common::sh("ip link add kudotest0 type bridge && ip netns add kudo-selftest");
        assert!(std::path::Path::new("/run/netns/kudo-selftest").exists());
    });
    if common::inside_sandbox() {
        return;
    }
    // Outside, none of it exists.
    let output = common::run("ip", &["link", "show", "kudotest0"]);
    assert!(!output.status.success());
    assert!(!std::path::Path::new("/run/netns/kudo-selftest").exists());
}

//! `kudonet generate`: the man page and shell completions come from the command line's own
//! definition, so they name every command and option the binary has.

use std::process::Command;

fn generate(what: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kudonet"))
        .args(["generate", what])
        .output()
        .expect("run kudonet");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stderr.is_empty());
    String::from_utf8(output.stdout).expect("UTF-8")
}

const COMMANDS: &[&str] = &[
    "validate", "plan", "apply", "status", "run", "teardown", "demo", "generate",
];

#[test]
fn the_man_page_is_kudonet_8_and_names_every_command_and_global_option() {
    let man = generate("man");
    assert!(man.contains("\n.TH kudonet 8 "), "{man}");
    for command in COMMANDS {
        assert!(
            man.contains(&format!("kudonet\\-{command}(8)")),
            "{command} missing"
        );
    }
    for option in [
        "netns\\-dir",
        "firewall",
        "log\\-format",
        "verbose",
        "quiet",
    ] {
        assert!(
            man.contains(&format!("\\fB\\-\\-{option}\\fR")),
            "--{option} missing"
        );
    }
}

#[test]
fn completions_know_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F _kudonet"),
        ("zsh", "#compdef kudonet"),
        ("fish", "complete -c kudonet"),
    ] {
        let script = generate(shell);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in COMMANDS {
            assert!(script.contains(command), "{shell}: {command} missing");
        }
    }
}

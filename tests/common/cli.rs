//! Running the kudonet binary and reading what it printed.

use std::process::{Command, Output};

use super::KUDONET;

/// How a command ended: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code and both outputs, exactly.
    #[track_caller]
    pub fn expect(&self, code: i32, stdout: &str, stderr: &str) {
        assert_eq!(
            (self.code, self.stdout.as_str(), self.stderr.as_str()),
            (code, stdout, stderr),
            "exit code, stdout, stderr"
        );
    }
}

impl Run {
    /// Asserts that the command succeeded, showing what it printed if not.
    #[track_caller]
    pub fn expect_success(&self) {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Runs `command` to its end (it must exit, not be killed).
pub fn run_command(command: &mut Command) -> Run {
    let output = command.output().expect("kudonet runs");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `kudonet ARGS...`.
pub fn kudonet(args: &[&str]) -> Run {
    run_command(Command::new(KUDONET).args(args))
}

/// `kudonet ARGS...`, its output as it is.
pub fn kudonet_output(args: &[&str]) -> Output {
    super::run(KUDONET, args)
}

/// The stdout of `output`, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Bytes a command printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

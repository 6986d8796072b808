//! A `kudonet run` child process: start, wait, status document, metrics, HTTP, stop.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::KUDONET;
use super::state::StateDir;

/// How often and how long to wait for something the controller should do.
pub const POLL: Duration = Duration::from_millis(20);
pub const LIMIT: Duration = Duration::from_secs(10);

/// Where `Controller::start` has the controller write its status document.
pub const STATUS_FILE: &str = "/run/kudonet-status.json";

/// A running `kudonet run`; killed if a test fails before stopping it.
pub struct Controller {
    pub child: RefCell<Child>,
    log: PathBuf,
    metrics: Option<String>,
    _log_dir: tempfile::TempDir,
}

impl Controller {
    /// Starts `kudonet run DIR --status-file STATUS_FILE ARGS...`.
    pub fn start(state: &StateDir, args: &[&str]) -> Controller {
        // A status file of an earlier controller must not pass for this one's.
        let _ = std::fs::remove_file(STATUS_FILE);
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("kudonet.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(KUDONET)
            .args(["run", state.path(), "--status-file", STATUS_FILE])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("kudonet run starts");
        let metrics = args
            .iter()
            .position(|arg| *arg == "--metrics-addr")
            .map(|at| args[at + 1].to_string());
        Controller {
            child: RefCell::new(child),
            log,
            metrics,
            _log_dir: log_dir,
        }
    }

    /// A controller started otherwise (its output piped, not logged): for its bounded wait
    /// and its kill on failure.
    pub fn adopt(child: Child) -> Controller {
        Controller {
            child: RefCell::new(child),
            log: PathBuf::new(),
            metrics: None,
            _log_dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.borrow().id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status document, once the controller has written one.
    pub fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(STATUS_FILE).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|error| {
            panic!("the status file is always a whole document: {error}\n{text}")
        }))
    }

    /// Waits until `done` holds, failing after LIMIT (or when the controller exits).
    #[track_caller]
    pub fn wait_until(&self, what: &str, done: impl FnMut() -> bool) {
        self.wait_for(what, LIMIT, done);
    }

    #[track_caller]
    pub fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if done() {
                return;
            }
            if let Some(exit) = self.child.borrow_mut().try_wait().unwrap() {
                panic!(
                    "kudonet run exited ({exit}) while waiting until {what}\nlog:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "gave up after {limit:?} waiting until {what}\nstatus file: {}\nlog:\n{}",
                    self.status()
                        .map(|status| serde_json::to_string_pretty(&status).unwrap())
                        .unwrap_or_else(|| "none".into()),
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the status file shows a valid desired state with exactly `instances`,
    /// all Ready.
    #[track_caller]
    pub fn wait_ready(&self, instances: &[&str]) {
        self.wait_until(&format!("{instances:?} are all Ready"), || {
            self.status().is_some_and(|status| {
                status["valid"] == true
                    && phases(&status)
                        == instances
                            .iter()
                            .map(|name| (name.to_string(), "Ready".to_string()))
                            .collect::<Vec<_>>()
            })
        });
    }

    /// The instance `name` of the status document, when listed.
    pub fn instance(&self, name: &str) -> Option<Value> {
        self.status()?["instances"]
            .as_array()?
            .iter()
            .find(|instance| instance["name"] == name)
            .cloned()
    }

    /// GET `path` from the metrics address: (status code, body); None while not listening.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let address = self.metrics.as_ref().expect("started with --metrics-addr");
        http_get(address, path)
    }

    /// The value of the metric line starting with `series` (name and labels, exactly).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (code, body) = self.get("/metrics")?;
        assert_eq!(code, 200, "{body}");
        metric(&body, series)
    }

    /// SIGTERM; asserts that the controller exits 0 and returns its log.
    #[track_caller]
    pub fn stop(self) -> String {
        self.signal(Signal::SIGTERM);
        let exit = self.wait_exit();
        let log = self.log();
        assert_eq!(
            exit.code(),
            Some(0),
            "kudonet run after SIGTERM; log:\n{log}"
        );
        assert!(
            log.contains("stopping; the network stays as it is"),
            "log:\n{log}"
        );
        log
    }

    #[track_caller]
    pub fn wait_exit(&self) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(exit) = self.child.borrow_mut().try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "kudonet run did not exit within {LIMIT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// (name, phase) of each instance of a status document, in its order (by name).
pub fn phases(status: &Value) -> Vec<(String, String)> {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| {
            (
                instance["name"].as_str().unwrap().to_string(),
                instance["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// GET `path` from the HTTP server at `address` (one request per connection): (status
/// code, body); None while nothing listens there.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Whether the controller serving metrics at `address` answers /readyz with 200.
pub fn is_ready(address: &str) -> bool {
    http_get(address, "/readyz").is_some_and(|(code, _)| code == 200)
}

/// The value of the sample `series` (`name{labels}` exactly as exposed) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The samples of metric `name` in `text`, by label set: `{result="converged"}` -> 12 (the
/// empty string for a sample without labels).
pub fn metric_samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| Some((labels.to_string(), value.parse().ok()?)))?
        })
        .collect()
}

/// The sum of every sample of metric `name` (all label sets) in `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    metric_samples(text, name).values().sum()
}

/// SIGTERM to a controller started by other means than `Controller::start`; waits for it
/// to exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    child.wait().unwrap()
}

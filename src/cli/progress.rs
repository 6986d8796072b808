//! What `apply` and `teardown` show while they work.
//!
//! On a terminal (stderr is one, `-q` not given) a line on stderr shows the stage a command
//! is in, or a bar over the actions of the pass, with the time elapsed; it is cleared when
//! the work ends, so what stays is the summary. Anywhere else (a pipe, a file, a log)
//! nothing is drawn and the output is plain lines. `-v` prints each applied action on
//! stdout, above the bar on a terminal.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kudonet::plan::Action;
use kudonet::reconcile::{Failure, Progress, Stage};

/// The bar being drawn, if any: log lines written meanwhile go above it (see [`stderr`]).
static DRAWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How often the line is redrawn while nothing is counted (the spinner, the elapsed time).
const TICK: Duration = Duration::from_millis(100);

/// The progress of one `apply` or `teardown`. Dropping it clears what it drew.
pub(crate) struct Report {
    /// The line drawn on the terminal; `None` when stderr is not one (or `-q`).
    bar: Option<ProgressBar>,
    /// Whether each applied action is printed (`-v`).
    verbose: bool,
    /// How the line looks in a stage without a count.
    spinner: ProgressStyle,
    /// How it looks while actions are applied.
    counter: ProgressStyle,
}

impl Report {
    /// `quiet`: `-q`, which draws nothing; `verbose`: `-v`, which prints each action.
    pub(crate) fn new(verbose: bool, quiet: bool) -> Self {
        let drawn = !quiet && io::IsTerminal::is_terminal(&io::stderr());
        let bar = drawn.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            *DRAWN
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(bar.clone());
            bar
        });
        Report {
            bar,
            verbose,
            spinner: style("{spinner} {msg} ({elapsed})").tick_chars("|/-\\ "),
            counter: style("applying {human_pos}/{human_len} actions [{bar:30}] ({elapsed})")
                .progress_chars("=> "),
        }
    }
}

/// The style of `template`; the templates are constants, checked by the tests that draw them.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress for Report {
    fn stage(&mut self, stage: Stage) {
        if let Some(bar) = &self.bar {
            bar.set_style(self.spinner.clone());
            bar.set_message(stage.to_string());
            bar.enable_steady_tick(TICK);
        }
    }

    fn planned(&mut self, actions: usize) {
        if let Some(bar) = &self.bar {
            // The bar moves with each action; a steady tick would only redraw it.
            bar.disable_steady_tick();
            bar.set_style(self.counter.clone());
            bar.set_length(actions as u64);
            bar.set_position(0);
        }
    }

    fn applied(&mut self, action: &Action) {
        if self.verbose {
            match &self.bar {
                Some(bar) => bar.suspend(|| println!("{action}")),
                None => println!("{action}"),
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn failed(&mut self, _failure: &Failure) {
        // Failures are reported with the summary, once the work is done.
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            *DRAWN
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
            bar.finish_and_clear();
        }
    }
}

/// stderr for log lines: while a bar is drawn, each line is written above it instead of
/// through it. The `tracing` writer of the command line.
pub(crate) fn stderr() -> Stderr {
    Stderr
}

/// See [`stderr`].
pub(crate) struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Cloned out, so that the lock is not held while writing.
        let drawn = DRAWN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match drawn {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

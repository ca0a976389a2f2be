//! What commands print: one JSON document with --json, text otherwise, and progress bars on
//! a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// How a command reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

impl Output {
    /// Prints `value` as JSON when --json was given, else the text `human` makes.
    pub(crate) fn emit<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
        } else {
            let text = human();
            if !text.is_empty() {
                writeln!(stdout, "{}", text.trim_end())?;
            }
        }
        stdout.flush()
    }

    /// A progress bar on stderr when it is a terminal and --quiet was not given; otherwise a
    /// bar that draws nothing.
    pub(crate) fn progress(&self, message: &'static str, unit: Unit) -> Arc<Bar> {
        let bar = ProgressBar::hidden();
        if !self.quiet && std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            let template = match unit {
                Unit::Bytes => {
                    "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
                }
                Unit::Items => "{msg:>10} [{bar:30}] {pos}/{len} eta {eta}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(message);
        }
        Arc::new(Bar(bar))
    }
}

/// What a progress bar counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    Bytes,
    Items,
}

/// A progress bar the store reports to.
#[derive(Debug)]
pub(crate) struct Bar(ProgressBar);

impl Bar {
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl blockyard_store::Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn note(&self, message: &str) {
        // A hidden bar means --quiet, or no terminal to watch; logs carry the note there.
        if !self.0.is_hidden() {
            self.0.println(message);
        }
    }
}

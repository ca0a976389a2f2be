//! Runs a pipeline's update command on its volume, with its output in the run's log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result};

use super::report::UpdateOutcome;

/// Bytes of the log's end read for the tail kept in the report.
const TAIL_BYTES: u64 = 4096;

/// Lines of output kept in the report.
const TAIL_LINES: usize = 20;

/// Runs `command` (its first element the program, no shell) with every `{volume}` in it and
/// `BLOCKYARD_VOLUME` in its environment set to `volume`, in `folder`. Its stdout and stderr
/// are appended, interleaved, to `log`. Returns how it ended; an error only when it could
/// not be started.
pub(crate) async fn run(
    command: &[String],
    volume: &Path,
    folder: &Path,
    log: &Path,
) -> Result<UpdateOutcome> {
    let volume_text = volume.to_string_lossy();
    let arguments: Vec<String> = command
        .iter()
        .map(|argument| argument.replace("{volume}", &volume_text))
        .collect();
    let Some((program, rest)) = arguments.split_first() else {
        anyhow::bail!("the update command is empty");
    };

    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    writeln!(file, "$ {}", arguments.join(" "))
        .with_context(|| format!("cannot write the log {}", log.display()))?;
    let start = file.metadata().map(|m| m.len()).unwrap_or(0);
    let stderr = file
        .try_clone()
        .with_context(|| format!("cannot share the log {}", log.display()))?;

    let status = tokio::process::Command::new(program)
        .args(rest)
        .current_dir(folder)
        .env("BLOCKYARD_VOLUME", volume)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("cannot start the update command {program:?}"))?;

    Ok(UpdateOutcome {
        exit_code: status.code(),
        signal: status.signal(),
        tail: tail(log, start).unwrap_or_else(|e| format!("(the log cannot be read: {e})")),
    })
}

impl UpdateOutcome {
    /// Whether the command exited with status 0.
    pub(crate) fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// How the command ended, for people: `exit status 3`, `killed by signal 9`.
    pub(crate) fn describe(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "an unknown status".to_owned(),
        }
    }
}

/// The last lines the command wrote to `log` after byte `start`.
fn tail(log: &Path, start: u64) -> std::io::Result<String> {
    let mut file = File::open(log)?;
    let end = file.metadata()?.len();
    let from = end.saturating_sub(TAIL_BYTES).max(start);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len().saturating_sub(TAIL_LINES);
    Ok(lines[keep..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|&s| s.to_owned()).collect()
    }

    #[tokio::test]
    async fn the_command_sees_its_volume_and_its_output_is_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("disk.raw");
        let log = dir.path().join("logs/update.log");
        let script = "echo arg=$0; echo env=$BLOCKYARD_VOLUME; echo oops >&2";
        let outcome = run(
            &command(&["sh", "-c", script, "{volume}"]),
            &volume,
            dir.path(),
            &log,
        )
        .await
        .expect("run");
        assert!(outcome.succeeded());
        assert_eq!(outcome.exit_code, Some(0));
        let shown = volume.display();
        assert_eq!(outcome.tail, format!("arg={shown}\nenv={shown}\noops"));
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.starts_with("$ sh -c "), "{text}");
    }

    #[tokio::test]
    async fn a_failure_keeps_its_status_and_only_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("update.log");
        let script = "for i in $(seq 1 100); do echo line $i; done; exit 3";
        let outcome = run(
            &command(&["sh", "-c", script]),
            Path::new("/nonexistent"),
            dir.path(),
            &log,
        )
        .await
        .expect("run");
        assert!(!outcome.succeeded());
        assert_eq!(outcome.describe(), "exit status 3");
        let lines: Vec<&str> = outcome.tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last(), Some(&"line 100"));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = run(
            &command(&["no-such-updater"]),
            Path::new("/nonexistent"),
            dir.path(),
            &dir.path().join("log"),
        )
        .await
        .expect_err("missing program");
        assert!(
            format!("{error:#}").contains("no-such-updater"),
            "{error:#}"
        );
    }
}

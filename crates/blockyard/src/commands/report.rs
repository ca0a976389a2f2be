//! `blockyard report`: a bake run's report as text, as JSON, or as an HTML page.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::bake::html;
use crate::bake::report::RunReport;
use crate::cli::ReportArgs;
use crate::output::Output;

/// What `--json` prints once the page is written.
#[derive(Serialize)]
struct Written<'a> {
    html: &'a Path,
}

pub(crate) fn run(args: &ReportArgs, out: Output) -> Result<()> {
    if let Err(e) = std::fs::metadata(&args.file)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        bail!(
            "there is no run report {}; bake writes one per run as runs/RUN.json in its work \
             folder (.bake beside the pipeline file unless --work names another)",
            args.file.display()
        );
    }
    let report = RunReport::read(&args.file)?;

    let Some(target) = &args.html else {
        out.emit(&report, || crate::bake::describe(&report, &args.file))?;
        return Ok(());
    };
    write_whole(target, html::render(&report).as_bytes())?;
    out.emit(&Written { html: target }, || target.display().to_string())?;
    Ok(())
}

/// Writes `bytes` to a temporary file beside `target` and renames it over `target`, so that
/// a reader (a browser reloading the page, a CI job collecting it) never sees half a page.
fn write_whole(target: &Path, bytes: &[u8]) -> Result<()> {
    let Some(name) = target.file_name() else {
        bail!(
            "--html {} names no file; give one such as run.html",
            target.display()
        );
    };
    let folder = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(".tmp");
    let temporary: PathBuf = folder.join(temporary_name);

    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, target));
    if written.is_err() {
        // The temporary file is ours and worthless now; the error below is what matters.
        let _ = std::fs::remove_file(&temporary);
    }
    written.with_context(|| format!("cannot write the page {}", target.display()))
}

//! `blockyard bake`: runs a pipeline file's pipelines, resumes a run, or checks the file.

use std::fmt::Write as _;

use anyhow::{Result, bail};

use crate::bake::Bake;
use crate::bake::report::Status;
use crate::cli::BakeArgs;
use crate::output::Output;
use crate::pipeline::{self, Pipeline, PipelineFile};
use crate::settings::ConfigFile;

pub(crate) async fn run(args: &BakeArgs, config: &ConfigFile, out: Output) -> Result<()> {
    let mut file = pipeline::load(&args.file, config)?;

    if let Some(only) = &args.only {
        if !file.pipelines.iter().any(|p| &p.name == only) {
            let names: Vec<&str> = file.pipelines.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "{} has no pipeline {only:?}; it has {}",
                args.file.display(),
                names.join(", ")
            );
        }
        file.pipelines.retain(|p| &p.name == only);
    }

    if args.check {
        out.emit(&file, || summary(&file))?;
        return Ok(());
    }

    let work = match &args.work {
        Some(work) => work.clone(),
        None => crate::bake::folder_of(&args.file).join(".bake"),
    };
    let bake = Bake {
        file: &args.file,
        pipelines: &file,
        config,
        work,
        out,
    };
    let (report, path) = match &args.resume {
        Some(run) => bake.resume(run).await?,
        None => bake.start().await?,
    };
    out.emit(&report, || crate::bake::describe(&report, &path))?;
    if report.status != Status::Succeeded {
        let failed: Vec<&str> = report
            .pipelines
            .iter()
            .filter(|p| p.status != Status::Succeeded)
            .map(|p| p.name.as_str())
            .collect();
        bail!(
            "run {} failed in pipeline {}; `blockyard bake {} --resume {}` carries on",
            report.run,
            failed.join(", "),
            args.file.display(),
            report.run
        );
    }
    Ok(())
}

/// The pipelines as text, a paragraph each.
fn summary(file: &PipelineFile) -> String {
    let mut text = String::new();
    for pipeline in &file.pipelines {
        describe(&mut text, pipeline);
        text.push('\n');
    }
    text
}

fn describe(text: &mut String, p: &Pipeline) {
    let _ = writeln!(
        text,
        "{}: family {} from {}@latest",
        p.name, p.family, p.base.family
    );
    if let Some(import) = &p.base.first_import {
        let format = import.format.as_deref().unwrap_or("detected format");
        let _ = writeln!(text, "  first time: import {} ({format})", import.from);
    }
    let volume = match p.volume {
        pipeline::VolumeKind::Raw => "raw copy",
        pipeline::VolumeKind::Qcow2 => "qcow2 overlay",
    };
    let _ = writeln!(text, "  update: {:?} on a {volume}", p.command);
    let _ = writeln!(
        text,
        "  home: {}; regions: {}",
        p.home,
        p.regions.join(", ")
    );
    let within = match p.retention.keep_within {
        Some(duration) => format!(", and all within {}", short_duration(duration.as_secs())),
        None => String::new(),
    };
    let _ = writeln!(text, "  keep: the newest {}{within}", p.retention.keep_last);
    let prices = &p.prices;
    let _ = writeln!(
        text,
        "  prices: ${}/GB-month stored, ${}/GB moved, ${} per 1,000 requests",
        prices.per_gb_stored, prices.per_gb_moved, prices.per_1000_requests
    );
}

/// Seconds in the largest unit `parse_duration` takes that divides them: 14d, 36h, 90s.
fn short_duration(seconds: u64) -> String {
    match seconds {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

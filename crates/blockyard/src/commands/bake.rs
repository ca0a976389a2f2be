//! `blockyard bake`: for now only `--check`, which reads and validates a pipeline file.

use std::fmt::Write as _;

use anyhow::{Result, bail};

use crate::cli::BakeArgs;
use crate::output::Output;
use crate::pipeline::{self, Pipeline, PipelineFile};
use crate::settings::ConfigFile;

pub(crate) fn run(args: &BakeArgs, config: &ConfigFile, out: Output) -> Result<()> {
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

    // Running a pipeline needs the update runner and the fan-out, which do not exist yet; a
    // file that passes --check today will be the one bake runs.
    if !args.check {
        bail!(
            "running pipelines is not built yet; `blockyard bake {} --check` validates the file",
            args.file.display()
        );
    }

    out.emit(&file, || summary(&file))?;
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

//! The pipeline file that `blockyard bake` reads: parsing and validation.
//!
//! One file holds one or more pipelines. Each one takes the latest image of a family (or,
//! the first time, imports an image file), runs an update command on its disk, stores the
//! result in its home store, and fans it out to its regions:
//!
//! ```toml
//! [[pipeline]]
//! name = "adas"                          # unique in the file
//! family = "adas"                        # the family the new image joins
//! base = "adas@latest"                   # FAMILY@latest: what each run starts from
//! first_import = { from = "images/base.qcow2", format = "qcow2" }  # when base has no latest
//! command = ["ansible-playbook", "-i", "{volume},", "update.yml"]
//! volume = "raw"                         # or "qcow2": an overlay on the base
//! home = "home"                          # a store named in the config file
//! regions = ["eu", "us"]                 # stores named in the config file
//!
//! [pipeline.retention]
//! keep_last = 7
//! keep_within = "14d"
//!
//! [pipeline.prices]                      # for the cost estimate, in dollars
//! per_gb_stored = 0.023
//! per_gb_moved = 0.02
//! per_1000_requests = 0.005
//! ```
//!
//! The command is a list of arguments run without a shell; write `["sh", "-c", "..."]` for
//! one. Every `{volume}` in an argument becomes the path of the disk being updated, which is
//! also in the environment as `BLOCKYARD_VOLUME`.
//!
//! Stores are named only by their names in the config file, never by a path or URL: a
//! pipeline runs unattended, and the config file is where a store's key and options live.
//! Relative `first_import` paths are relative to the pipeline file's folder.
//!
//! Every error names the file, the line and the column, so `bake --check` can run in review
//! before a nightly job ever does.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::settings::ConfigFile;

/// Images kept when a pipeline's file gives no `retention.keep_last`: a week of nightlies.
const DEFAULT_KEEP_LAST: usize = 7;

/// Default price of a GB stored for a month, in dollars: S3 Standard's list price in
/// us-east-1.
const DEFAULT_PER_GB_STORED: f64 = 0.023;

/// Default price of a GB moved between regions, in dollars: AWS's inter-region transfer
/// list price.
const DEFAULT_PER_GB_MOVED: f64 = 0.02;

/// Default price of 1,000 requests, in dollars: S3 Standard's list price for PUT, the
/// dearer kind and the one a copy makes.
const DEFAULT_PER_1000_REQUESTS: f64 = 0.005;

/// A pipeline file, checked against the config file.
#[derive(Debug, Serialize)]
pub(crate) struct PipelineFile {
    pub(crate) pipelines: Vec<Pipeline>,
}

/// One pipeline, checked.
#[derive(Debug, Serialize)]
pub(crate) struct Pipeline {
    pub(crate) name: String,
    /// The family each run's image joins.
    pub(crate) family: String,
    pub(crate) base: Base,
    /// The update command's arguments, run without a shell; `{volume}` is the disk's path.
    pub(crate) command: Vec<String>,
    pub(crate) volume: VolumeKind,
    /// The config file's name of the store each run writes to first.
    pub(crate) home: String,
    /// The config file's names of the stores each run is copied to.
    pub(crate) regions: Vec<String>,
    pub(crate) retention: Retention,
    pub(crate) prices: Prices,
}

/// What a run starts from.
#[derive(Debug, Serialize)]
pub(crate) struct Base {
    /// The family whose latest image is the starting point.
    pub(crate) family: String,
    /// The image file to import when that family has no latest image yet.
    pub(crate) first_import: Option<FirstImport>,
}

/// An image file imported once, before a family has any image.
#[derive(Debug, Serialize)]
pub(crate) struct FirstImport {
    /// A path (relative ones resolved against the pipeline file's folder) or an s3:// URL.
    pub(crate) from: String,
    /// Its format's canonical name (`qcow2`, `vmdk`, ...); none means detect it on import.
    pub(crate) format: Option<String>,
}

/// The disk the update command works on.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VolumeKind {
    /// A full raw copy of the base: simple, and costs the base's size in local disk.
    #[default]
    Raw,
    /// A qcow2 overlay on the base: small, but the command must understand qcow2.
    Qcow2,
}

/// Which of the family's images a run keeps, as `blockyard retain`.
#[derive(Debug, Serialize)]
pub(crate) struct Retention {
    pub(crate) keep_last: usize,
    /// Also keep the images registered within this long, in seconds in JSON.
    #[serde(serialize_with = "seconds")]
    pub(crate) keep_within: Option<Duration>,
}

/// Prices for the cost estimate, in dollars.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Prices {
    /// A GB stored for a month.
    pub(crate) per_gb_stored: f64,
    /// A GB moved between stores.
    pub(crate) per_gb_moved: f64,
    /// 1,000 requests to a store.
    pub(crate) per_1000_requests: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            per_gb_stored: DEFAULT_PER_GB_STORED,
            per_gb_moved: DEFAULT_PER_GB_MOVED,
            per_1000_requests: DEFAULT_PER_1000_REQUESTS,
        }
    }
}

fn seconds<S: serde::Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => s.serialize_some(&duration.as_secs()),
        None => s.serialize_none(),
    }
}

/// A mistake in a pipeline file, at a place in it.
#[derive(Debug)]
pub(crate) struct PipelineError {
    pub(crate) file: PathBuf,
    /// 1-based; 0 when the mistake has no place (the file cannot be read).
    pub(crate) line: usize,
    /// 1-based, in characters.
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            let (file, line, column) = (self.file.display(), self.line, self.column);
            write!(f, "{file}:{line}:{column}: {}", self.message)
        }
    }
}

impl std::error::Error for PipelineError {}

// The file as written, with the places of the values that validation may reject.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pipeline: Vec<RawPipeline>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    family: Spanned<String>,
    base: Spanned<String>,
    first_import: Option<RawFirstImport>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    volume: VolumeKind,
    home: Spanned<String>,
    regions: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    retention: RawRetention,
    prices: Option<Spanned<Prices>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirstImport {
    from: Spanned<String>,
    format: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<Spanned<usize>>,
    keep_within: Option<Spanned<String>>,
}

/// Reads and checks a pipeline file against the stores `config` names.
pub(crate) fn load(path: &Path, config: &ConfigFile) -> Result<PipelineFile, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read the pipeline file: {e}"),
    })?;
    parse(path, &text, config)
}

/// Parses and checks the text of a pipeline file; `path` only names it in errors.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    config: &ConfigFile,
) -> Result<PipelineFile, PipelineError> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = line_and_column(text, span.start);
        PipelineError {
            file: path.to_owned(),
            line,
            column,
            message,
        }
    };

    let raw: RawFile = toml::from_str(text).map_err(|e| {
        // toml's message may end in a newline; the place goes in front instead. serde says
        // "field" where a TOML user thinks "key".
        let mut message = e.message().trim_end().replace('`', "\"");
        if message.starts_with("unknown field") {
            message = message
                .replace("unknown field", "unknown key")
                .replace(", expected one of", "; known keys:")
                .replace(", expected", "; known keys:");
        }
        let span = e.span().unwrap_or(0..0);
        match pipeline_name_at(text, span.start) {
            Some(name) => at(span, format!("in pipeline {name:?}: {message}")),
            None => at(span, message),
        }
    })?;
    if raw.pipeline.is_empty() {
        return Err(at(
            0..0,
            "no pipelines; start one with [[pipeline]]".to_owned(),
        ));
    }

    let mut names = BTreeSet::new();
    let mut pipelines = Vec::with_capacity(raw.pipeline.len());
    for pipeline in raw.pipeline {
        if !names.insert(pipeline.name.get_ref().clone()) {
            let name = pipeline.name.get_ref();
            return Err(at(
                pipeline.name.span(),
                format!("a second pipeline named {name:?}; names must differ"),
            ));
        }
        pipelines.push(check(pipeline, config, &at)?);
    }
    Ok(PipelineFile { pipelines })
}

/// Checks one pipeline as written and returns it typed.
fn check(
    raw: RawPipeline,
    config: &ConfigFile,
    at: &impl Fn(Range<usize>, String) -> PipelineError,
) -> Result<Pipeline, PipelineError> {
    let name = raw.name.get_ref().clone();
    let label = |span: Range<usize>, what: &str, value: &str, folder: bool| {
        blockyard_store::validate_label(what, value, folder)
            .map_err(|e| at(span, format!("in pipeline {name:?}: {e}")))
    };
    label(raw.name.span(), "pipeline name", &name, false)?;
    label(raw.family.span(), "family", raw.family.get_ref(), true)?;

    // Only FAMILY@latest for now: a pinned FAMILY@N would never move, which is no pipeline.
    let base = match raw.base.get_ref().strip_suffix("@latest") {
        Some(family) => {
            label(raw.base.span(), "base family", family, true)?;
            family.to_owned()
        }
        None => {
            return Err(at(
                raw.base.span(),
                format!(
                    "in pipeline {name:?}: base {:?} is not FAMILY@latest",
                    raw.base.get_ref()
                ),
            ));
        }
    };
    let first_import = match raw.first_import {
        Some(import) if import.from.get_ref().trim().is_empty() => {
            return Err(at(
                import.from.span(),
                format!("in pipeline {name:?}: first_import.from is empty"),
            ));
        }
        Some(import) => {
            let format = match import.format {
                Some(format) => Some(
                    format
                        .get_ref()
                        .parse::<blockyard_formats::Format>()
                        .map_err(|e| at(format.span(), format!("in pipeline {name:?}: {e}")))?
                        .name()
                        .to_owned(),
                ),
                None => None,
            };
            Some(FirstImport {
                from: import.from.into_inner(),
                format,
            })
        }
        None => None,
    };

    let command_span = raw.command.span();
    let command = raw.command.into_inner();
    if command
        .first()
        .is_none_or(|program| program.trim().is_empty())
    {
        return Err(at(
            command_span,
            format!("in pipeline {name:?}: the command needs a program to run"),
        ));
    }

    // Every store by name, so keys and options come from the config file and nowhere else.
    let store = |value: &Spanned<String>, role: &str| {
        let wanted = value.get_ref();
        if config.stores.contains_key(wanted) {
            return Ok(wanted.clone());
        }
        let known = if config.stores.is_empty() {
            "the config file names no stores; add a [stores.NAME] table".to_owned()
        } else {
            let list: Vec<&str> = config.stores.keys().map(String::as_str).collect();
            format!("the config file names {}", list.join(", "))
        };
        Err(at(
            value.span(),
            format!(
                "in pipeline {name:?}: {role} {wanted:?} is no store in the config file; {known}"
            ),
        ))
    };
    let home = store(&raw.home, "home")?;
    let regions_span = raw.regions.span();
    let mut regions: Vec<String> = Vec::new();
    for region in raw.regions.get_ref() {
        let found = store(region, "region")?;
        if found == home {
            return Err(at(
                region.span(),
                format!(
                    "in pipeline {name:?}: region {found:?} is the home store; the image is \
                     there already"
                ),
            ));
        }
        if regions.contains(&found) {
            return Err(at(
                region.span(),
                format!("in pipeline {name:?}: region {found:?} is listed twice"),
            ));
        }
        regions.push(found);
    }
    if regions.is_empty() {
        return Err(at(
            regions_span,
            format!("in pipeline {name:?}: regions is empty; name at least one store"),
        ));
    }

    let keep_last = match raw.retention.keep_last {
        Some(keep) if *keep.get_ref() == 0 => {
            return Err(at(
                keep.span(),
                format!("in pipeline {name:?}: keep_last is 0; keep at least the newest image"),
            ));
        }
        Some(keep) => keep.into_inner(),
        None => DEFAULT_KEEP_LAST,
    };
    let keep_within = match raw.retention.keep_within {
        Some(text) => Some(crate::units::parse_duration(text.get_ref()).map_err(|e| {
            at(
                text.span(),
                format!("in pipeline {name:?}: keep_within {e}"),
            )
        })?),
        None => None,
    };

    // A bad price is reported at its [pipeline.prices] table, not its own line: the prices
    // are plain numbers so that their defaults need no span.
    let (prices_span, prices) = match raw.prices {
        Some(prices) => (prices.span(), prices.into_inner()),
        None => (raw.name.span(), Prices::default()),
    };
    for (key, price) in [
        ("per_gb_stored", prices.per_gb_stored),
        ("per_gb_moved", prices.per_gb_moved),
        ("per_1000_requests", prices.per_1000_requests),
    ] {
        if !(price.is_finite() && price >= 0.0) {
            return Err(at(
                prices_span.clone(),
                format!("in pipeline {name:?}: prices.{key} is {price}; a price is 0 or more"),
            ));
        }
    }

    Ok(Pipeline {
        name,
        family: raw.family.into_inner(),
        base: Base {
            family: base,
            first_import,
        },
        command,
        volume: raw.volume,
        home,
        regions,
        retention: Retention {
            keep_last,
            keep_within,
        },
        prices,
    })
}

/// The name of the `[[pipeline]]` table that byte `offset` of `text` lies in, when the text
/// is valid TOML and that table has a name; for errors that serde reports without it.
///
/// It counts header lines, so a multi-line string holding a line that starts with
/// `[[pipeline]]` would make it name the wrong pipeline; the line and column stay right.
/// Walking `toml::de::DeTable`'s spans would be exact, at some more code.
fn pipeline_name_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let headers = before
        .lines()
        .filter(|line| line.replace(' ', "").starts_with("[[pipeline]]"))
        .count();
    let table: toml::Table = text.parse().ok()?;
    let pipeline = table
        .get("pipeline")?
        .as_array()?
        .get(headers.checked_sub(1)?)?;
    Some(pipeline.get("name")?.as_str()?.to_owned())
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;

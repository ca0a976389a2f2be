//! `blockyard export`: a snapshot written out as a disk image.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blockyard_formats::export::{BlockFeed, ExportLayout, ImageIdentity, write_raw};
use blockyard_formats::qcow2::{self, Qcow2WriteOptions};
use blockyard_formats::vhd::{self, VhdSubformat, VhdWriteOptions};
use blockyard_formats::vhdx::{self, VhdxWriteOptions};
use blockyard_formats::vmdk::{self, VmdkSubformat, VmdkWriteOptions};
use blockyard_formats::{FileSink, Format, FormatError, ImageSink, StreamSink};
use blockyard_store::{ObjectUpload, Store, export};
use serde_json::json;

use crate::cli::ExportArgs;
use crate::output::{Output, Unit};
use crate::settings::ConfigFile;
use crate::units::bytes;

/// Buffer in front of standard output: a pipe takes 64 KiB at a time.
const STDOUT_BUFFER: usize = 4 << 20;

/// A format writer with its options, chosen from the command line.
#[derive(Debug, Clone)]
enum Writer {
    Raw,
    Qcow2(Qcow2WriteOptions),
    Vmdk(VmdkWriteOptions),
    Vhd(VhdWriteOptions),
    Vhdx(VhdxWriteOptions),
}

impl Writer {
    fn choose(args: &ExportArgs) -> Result<(Format, Self)> {
        let format = match args.format {
            Some(format) => format,
            None => Path::new(&args.output)
                .extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse().ok())
                .unwrap_or(Format::Raw),
        };
        let subformat = args.subformat.as_deref().map(str::to_ascii_lowercase);
        let wrong_subformat = |expected: &str| {
            anyhow::anyhow!(
                "--subformat {} does not apply to {format}; {expected}",
                args.subformat.as_deref().unwrap_or_default()
            )
        };
        if args.compress && format != Format::Qcow2 {
            bail!("--compress applies to qcow2 only; VMDK streamOptimized is always compressed");
        }
        let writer = match format {
            Format::Raw | Format::Qcow2 | Format::Vhdx if subformat.is_some() => {
                return Err(wrong_subformat("only vmdk and vhd have subformats"));
            }
            Format::Raw => Writer::Raw,
            Format::Qcow2 => Writer::Qcow2(Qcow2WriteOptions {
                compress: args.compress,
                ..Qcow2WriteOptions::default()
            }),
            Format::Vmdk => Writer::Vmdk(VmdkWriteOptions {
                subformat: match subformat.as_deref() {
                    None | Some("monolithicsparse") => VmdkSubformat::MonolithicSparse,
                    Some("streamoptimized") => VmdkSubformat::StreamOptimized,
                    Some(_) => {
                        return Err(wrong_subformat(
                            "vmdk is written as streamOptimized or monolithicSparse",
                        ));
                    }
                },
            }),
            Format::Vhd => Writer::Vhd(VhdWriteOptions {
                subformat: match subformat.as_deref() {
                    None | Some("dynamic") => VhdSubformat::Dynamic,
                    Some("fixed") => VhdSubformat::Fixed,
                    Some(_) => return Err(wrong_subformat("vhd is written as dynamic or fixed")),
                },
            }),
            Format::Vhdx => Writer::Vhdx(VhdxWriteOptions::default()),
            Format::Ova => bail!("blockyard does not write OVA archives; export each disk"),
        };
        Ok((format, writer))
    }

    fn write(
        &self,
        layout: &ExportLayout,
        feed: &mut dyn BlockFeed,
        sink: &mut dyn ImageSink,
        identity: &ImageIdentity,
    ) -> Result<(), FormatError> {
        match self {
            Writer::Raw => write_raw(layout, feed, sink),
            Writer::Qcow2(options) => qcow2::write(layout, feed, sink, options, identity),
            Writer::Vmdk(options) => vmdk::write(layout, feed, sink, options, identity),
            Writer::Vhd(options) => vhd::write(layout, feed, sink, options, identity),
            Writer::Vhdx(options) => vhdx::write(layout, feed, sink, options, identity),
        }
    }
}

/// Where the image goes.
enum Target {
    File(FileSink),
    Stdout,
    Upload(ObjectUpload),
}

pub(crate) async fn run(
    args: &ExportArgs,
    store: &Store,
    out: Output,
    config: &ConfigFile,
) -> Result<()> {
    let started = Instant::now();
    let id = super::resolve_snapshot(store, &args.snapshot).await?;
    let (format, writer) = Writer::choose(args)?;
    let record = store.snapshot(&id).await?;
    let to_stdout = args.output == "-";
    if to_stdout && out.json {
        bail!("--json prints to standard output, where the image goes; drop one of them");
    }

    let target = if to_stdout {
        Target::Stdout
    } else if args.output.starts_with("s3://") {
        let options = config.s3_options_for(&args.output);
        Target::Upload(ObjectUpload::create(&args.output, &options, record.size).await?)
    } else {
        let path = Path::new(&args.output);
        if path.exists() && !args.force {
            bail!("{} exists; give --force to replace it", path.display());
        }
        Target::File(FileSink::create(path)?)
    };

    let identity = ImageIdentity {
        unique_id: ulid::Ulid::new().to_bytes(),
        created_unix: u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0),
    };
    let output_name = args.output.clone();
    let write = move |layout: &ExportLayout, feed: &mut dyn BlockFeed| -> Result<(), FormatError> {
        match target {
            Target::File(mut sink) => writer.write(layout, feed, &mut sink, &identity),
            Target::Stdout => {
                let stdout = BufWriter::with_capacity(STDOUT_BUFFER, std::io::stdout());
                let mut sink = StreamSink::new(stdout, "standard output");
                writer.write(layout, feed, &mut sink, &identity)
            }
            Target::Upload(upload) => {
                let mut sink = StreamSink::new(upload, output_name.clone());
                let written = writer.write(layout, feed, &mut sink, &identity);
                let upload = sink.into_inner();
                match written {
                    Ok(()) => upload.complete().map_err(|e| FormatError::Write {
                        name: output_name,
                        offset: 0,
                        source: std::io::Error::other(e),
                    }),
                    Err(e) => {
                        upload.abort();
                        Err(e)
                    }
                }
            }
        }
    };
    let bar = out.progress("export", Unit::Bytes);
    let summary = export(store, &id, write, bar.clone())
        .await
        .with_context(|| format!("cannot export {id} to {}", args.output));
    bar.finish();
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            // Leave no half-written file that looks like an image.
            if !to_stdout && !args.output.starts_with("s3://") {
                let _ = std::fs::remove_file(&args.output);
            }
            return Err(e);
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if to_stdout {
        std::io::stdout().flush()?;
        return Ok(());
    }
    let written = std::fs::metadata(&args.output).ok().map(|m| m.len());
    out.emit(
        &json!({
            "snapshot": id.to_string(),
            "output": args.output,
            "format": format.name(),
            "size": summary.size,
            "blocks_data": summary.blocks_data,
            "bytes_data": summary.bytes_data,
            "file_size": written,
            "seconds": seconds,
        }),
        || {
            format!(
                "exported {id} to {} ({format}) in {seconds:.2} s: {} of data in a {} disk",
                args.output,
                bytes(summary.bytes_data),
                bytes(summary.size),
            )
        },
    )?;
    Ok(())
}

//! `blockyard image register|list|show|deregister|protect|unprotect|deprecate|share|unshare|
//! promote`.

use anyhow::{Context, Result};
use blockyard_store::{
    Device, ImageRecord, NewImage, Store, deregister_image, images, promote, register_image,
    resolve_image, update_image, validate_label,
};
use serde_json::json;

use crate::cli::{ImageCommand, RegisterArgs};
use crate::output::Output;

pub(crate) async fn run(command: &ImageCommand, store: &Store, out: Output) -> Result<()> {
    match command {
        ImageCommand::Register(args) => {
            let record = register_image(store, new_image(args)?).await?;
            emit(out, &record, "registered")?;
        }
        ImageCommand::List { family, tags } => {
            let records: Vec<ImageRecord> = images(store)
                .await?
                .into_iter()
                .filter(|r| family.is_none() || r.family == *family)
                .filter(|r| tags.iter().all(|(k, v)| r.tags.get(k) == Some(v)))
                .collect();
            out.emit(&json!({ "images": &records }), || {
                records
                    .iter()
                    .map(|r| {
                        format!(
                            "{}  {}  {}  {}",
                            r.id,
                            r.family.as_deref().unwrap_or("-"),
                            r.name,
                            r.created.format("%Y-%m-%d %H:%M:%S")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        ImageCommand::Show { image } => {
            let record = resolve_image(store, image).await?;
            emit(out, &record, "")?;
        }
        ImageCommand::Deregister { image } => {
            let record = resolve_image(store, image).await?;
            let record = deregister_image(store, &record.id).await?;
            emit(out, &record, "deregistered")?;
        }
        ImageCommand::Protect { image } | ImageCommand::Unprotect { image } => {
            let protect = matches!(command, ImageCommand::Protect { .. });
            let id = resolve_image(store, image).await?.id;
            let record = update_image(store, &id, |r| {
                r.protected = protect;
                Ok(())
            })
            .await?;
            emit(
                out,
                &record,
                if protect { "protected" } else { "unprotected" },
            )?;
        }
        ImageCommand::Deprecate { image, at } => {
            let id = resolve_image(store, image).await?.id;
            let record = update_image(store, &id, |r| {
                r.deprecate_at = Some(*at);
                Ok(())
            })
            .await?;
            emit(out, &record, "deprecated")?;
        }
        ImageCommand::Share { image, account } | ImageCommand::Unshare { image, account } => {
            let share = matches!(command, ImageCommand::Share { .. });
            validate_label("account", account, false)?;
            let id = resolve_image(store, image).await?.id;
            let record = update_image(store, &id, |r| {
                if share {
                    r.shared_with.insert(account.clone());
                } else {
                    r.shared_with.remove(account);
                }
                Ok(())
            })
            .await?;
            emit(out, &record, if share { "shared" } else { "unshared" })?;
        }
        ImageCommand::Promote { image } => {
            let record = resolve_image(store, image).await?;
            let reference = promote(store, &record.id).await?;
            out.emit(
                &json!({ "image": record.id, "family": record.family, "ref": reference }),
                || {
                    format!(
                        "{} is now {}@latest",
                        record.id,
                        record.family.as_deref().unwrap_or_default()
                    )
                },
            )?;
        }
    }
    Ok(())
}

fn new_image(args: &RegisterArgs) -> Result<NewImage> {
    let devices = args
        .snapshots
        .iter()
        .map(|(device, snapshot)| {
            Ok(Device {
                name: device.clone(),
                snapshot: super::snapshot_id(snapshot)
                    .with_context(|| format!("in --snapshot {device}={snapshot}"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NewImage {
        name: args.name.clone(),
        family: args.family.clone(),
        devices,
        architecture: args.arch,
        boot_mode: args.boot_mode,
        description: args.description.clone(),
        tags: args.tags.iter().cloned().collect(),
    })
}

/// Prints an image's record: JSON, or a summary line led by `done` when not empty.
fn emit(out: Output, record: &ImageRecord, done: &str) -> Result<()> {
    out.emit(record, || {
        let mut text = String::new();
        if !done.is_empty() {
            text.push_str(&format!("{done} {}\n", record.id));
        }
        text.push_str(&format!(
            "name:        {}\nfamily:      {}\ncreated:     {}\ndevices:     {}\n\
             arch:        {:?}\nboot mode:   {:?}\nprotected:   {}\ndeprecated:  {}\n\
             shared with: {}",
            record.name,
            record.family.as_deref().unwrap_or("-"),
            record.created.to_rfc3339(),
            record
                .devices
                .iter()
                .map(|d| format!("{}={}", d.name, d.snapshot))
                .collect::<Vec<_>>()
                .join(", "),
            record.architecture,
            record.boot_mode,
            if record.protected { "yes" } else { "no" },
            record
                .deprecate_at
                .map_or_else(|| "no".to_owned(), |at| format!("from {}", at.to_rfc3339())),
            record
                .shared_with
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        ));
        text
    })?;
    Ok(())
}

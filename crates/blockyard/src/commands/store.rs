//! `blockyard store init|info`.

use anyhow::{Context, Result, bail};
use blockyard_store::{InitOptions, Location, Store};
use serde_json::json;

use crate::cli::{Global, StoreCommand};
use crate::output::Output;
use crate::settings::{ConfigFile, master_key};
use crate::units::bytes;

pub(crate) async fn run(
    command: &StoreCommand,
    config: &ConfigFile,
    global: &Global,
    out: Output,
) -> Result<()> {
    match command {
        StoreCommand::Init(args) => {
            let choice = config.choose(global, args.location.as_deref())?;
            let key = master_key(&choice.key)?;
            if let Some(like) = &args.like {
                let source = config.choose_with_key(like, &args.like_key.to_key_args())?;
                // Joining an encrypted domain needs the source's secret, hence its key;
                // an unencrypted source opens without one.
                let like_store = super::open(&source).await.with_context(|| {
                    format!("cannot open {like}, whose key domain the new store would join")
                })?;
                let store = Store::init_like(&choice.location, &like_store, key).await?;
                return report_init(&store, &choice.location, Some(&source.location), out);
            }
            if args.encrypt && key.is_none() {
                bail!(
                    "--encrypt needs a master key: give --key-file, --passphrase-env or \
                     --key-command"
                );
            }
            if !args.encrypt && key.is_some() {
                bail!("a master key was given without --encrypt; add --encrypt to use it");
            }
            let options = InitOptions {
                block_size: args.block_size,
                master_key: key,
            };
            let store = Store::init(&choice.location, options).await?;
            report_init(&store, &choice.location, None, out)?;
        }
        StoreCommand::Info => {
            let choice = config.choose(global, None)?;
            let store = super::open(&choice).await?;
            let config = store.config();
            let snapshots = store.snapshot_ids().await?.len();
            out.emit(
                &json!({
                    "store": choice.location.to_string(),
                    "format_version": config.version,
                    "block_size": config.block_size,
                    "segment_blocks": config.segment_blocks,
                    "encrypted": config.key_domain.encrypted,
                    "key_domain": config.key_domain.id.to_string(),
                    "required_features": config.required_features,
                    "snapshots": snapshots,
                }),
                || {
                    format!(
                        "store:      {}\nformat:     version {}\nblock size: {}\n\
                         encrypted:  {}\nkey domain: {}\nsnapshots:  {snapshots}",
                        choice.location,
                        config.version,
                        bytes(config.block_size),
                        if config.key_domain.encrypted {
                            "yes (AES-256-GCM-SIV)"
                        } else {
                            "no"
                        },
                        config.key_domain.id,
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// Prints what `store init` created; `like` is the store whose key domain it joined.
fn report_init(
    store: &Store,
    location: &Location,
    like: Option<&Location>,
    out: Output,
) -> Result<()> {
    let config = store.config();
    let kind = if config.key_domain.encrypted {
        "an encrypted"
    } else {
        "an unencrypted"
    };
    out.emit(
        &json!({
            "store": location.to_string(),
            "block_size": config.block_size,
            "encrypted": config.key_domain.encrypted,
            "key_domain": config.key_domain.id.to_string(),
            "like": like.map(ToString::to_string),
        }),
        || {
            let joined = like
                .map(|like| format!(", in the key domain of {like}"))
                .unwrap_or_default();
            format!(
                "created {kind} store at {location} with {} blocks{joined}",
                bytes(config.block_size)
            )
        },
    )?;
    Ok(())
}

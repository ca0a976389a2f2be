//! `blockyard key list|add|remove|rotate`.
//!
//! A store's blocks are sealed with data keys derived from its domain secret; the secret is
//! wrapped once per master key in a *slot*. Adding or removing a master key touches only
//! slots; rotating makes a new data key current for what is sealed from then on. Neither
//! rewrites a block.

use anyhow::{Context, Result};
use blockyard_store::Store;
use serde_json::json;

use crate::cli::KeyCommand;
use crate::output::Output;
use crate::settings::master_key;

pub(crate) async fn run(command: &KeyCommand, store: &Store, out: Output) -> Result<()> {
    let location = store.location().to_string();
    match command {
        KeyCommand::List => {
            let slots = store.key_slots().await?;
            let keys = store.keys();
            let current = keys.is_encrypted().then(|| keys.current_key_id());
            out.emit(
                &json!({
                    "store": location,
                    "encrypted": keys.is_encrypted(),
                    "slots": slots,
                    "current_data_key": current,
                }),
                || match current {
                    None => format!("{location} is not encrypted; it has no keys"),
                    Some(current) => format!(
                        "slots:            {}\ncurrent data key: {current}",
                        slots.join(", ")
                    ),
                },
            )?;
        }
        KeyCommand::Add(new) => {
            let key = master_key(&new.to_key_args())?.context(
                "give the new master key with --new-key-file, --new-passphrase-env or \
                 --new-key-command",
            )?;
            let slot = store.add_key_slot(&key).await?;
            out.emit(&json!({"store": location, "added": slot}), || {
                format!("added key slot {slot} to {location}")
            })?;
        }
        KeyCommand::Remove { slot } => {
            store.remove_key_slot(slot).await?;
            out.emit(&json!({"store": location, "removed": slot}), || {
                format!("removed key slot {slot} from {location}")
            })?;
        }
        KeyCommand::Rotate => {
            let key_id = store.rotate_data_key().await?;
            out.emit(
                &json!({"store": location, "current_data_key": key_id}),
                || {
                    format!(
                        "data key {key_id} is now current for new blocks in {location}; \
                         older blocks keep their keys"
                    )
                },
            )?;
        }
    }
    Ok(())
}

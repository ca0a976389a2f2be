//! `blockyard recycle list|restore|purge`.

use anyhow::Result;
use blockyard_store::{Store, purge_recycled, recycle_bin, restore_recycled};
use serde_json::json;

use crate::cli::RecycleCommand;
use crate::output::Output;

pub(crate) async fn run(command: &RecycleCommand, store: &Store, out: Output) -> Result<()> {
    match command {
        RecycleCommand::List => {
            let items = recycle_bin(store).await?;
            out.emit(&json!({ "recycled": &items }), || {
                items
                    .iter()
                    .map(|item| format!("{}  deleted {}", item.id, item.deleted.to_rfc3339()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        RecycleCommand::Restore { id } => {
            restore_recycled(store, id).await?;
            out.emit(&json!({ "restored": id }), || format!("restored {id}"))?;
        }
        RecycleCommand::Purge { older_than } => {
            let purged = purge_recycled(store, *older_than).await?;
            out.emit(&json!({ "purged": &purged }), || {
                format!(
                    "purged {} item{} from the recycle bin; garbage collection frees their blocks",
                    purged.len(),
                    if purged.len() == 1 { "" } else { "s" }
                )
            })?;
        }
    }
    Ok(())
}

//! What resolving `FAMILY@latest` and `FAMILY@10` costs in a family of many promoted
//! images: listing calls, listing requests as S3 serves them, image record reads and time,
//! printed as a Markdown table. `bench/latest.sh` runs it.
//!
//! ```text
//! cargo run --release -p blockyard-store --example latest -- [IMAGES]   (default 10000)
//! ```
//!
//! It measures memory and a local folder (a temporary one), and S3 under a fresh prefix
//! when `BLOCKYARD_TEST_S3_BUCKET` and the `AWS_*` variables name a server, as the env file
//! of `scripts/garage.sh` does. The S3 objects are left in the bucket.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockyard_store::{
    Location, SnapshotId, SnapshotOptions, SnapshotWriter, Store, resolve_image,
};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;

#[path = "../tests/suite/families.rs"]
mod families;

use families::{LARGE_FAMILY, PageCounter, promote_family};

/// The block size of the measured stores; the one snapshot they hold is a single block.
const BLOCK_SIZE: u64 = 64 << 10;

/// [`BLOCK_SIZE`] as a buffer length.
const BLOCK: usize = 64 << 10;

type Outcome<T> = Result<T, Box<dyn Error>>;

#[tokio::main]
async fn main() -> Outcome<()> {
    let images = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .map_err(|_| format!("IMAGES must be a count of images, not {text:?}"))?,
        None => LARGE_FAMILY,
    };

    println!(
        "| backend | images | reference | listing calls | S3 list requests | image reads | \
         time |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|");

    let pages = PageCounter::new(Arc::new(InMemory::new()));
    let objects = Arc::clone(&pages) as Arc<dyn ObjectStore>;
    measure("memory", Location::Memory, objects, Some(&pages), images).await?;

    let folder = tempfile::tempdir()?;
    let objects = Arc::new(LocalFileSystem::new_with_prefix(folder.path())?);
    let location = Location::Local(folder.path().to_owned());
    measure("local", location, objects, None, images).await?;

    if let Some((location, client)) = s3_from_env()? {
        let pages = PageCounter::new(client);
        let objects = Arc::clone(&pages) as Arc<dyn ObjectStore>;
        measure("S3", location, objects, Some(&pages), images).await?;
    } else {
        eprintln!("no S3 server configured (BLOCKYARD_TEST_S3_BUCKET); S3 not measured");
    }
    Ok(())
}

/// Fills a new store on `objects` with a family of `images` promoted images, then
/// resolves `bench@latest` and `bench@10` and prints a row for each, and a row for listing
/// every ref, which is what resolution cost when it listed the whole family. `pages`, when
/// given, sits under the store and counts its listing requests as S3 would serve them.
async fn measure(
    backend: &str,
    location: Location,
    objects: Arc<dyn ObjectStore>,
    pages: Option<&PageCounter>,
    images: usize,
) -> Outcome<()> {
    let store = Store::init_on(Arc::clone(&objects), location, BLOCK_SIZE, None).await?;
    let snapshot = one_block_snapshot(&store).await?;
    promote_family(&store, "bench", snapshot, images).await;

    for reference in ["bench@latest", "bench@10"] {
        let requests = store.requests();
        let listed = pages.map(PageCounter::pages);
        let started = Instant::now();
        resolve_image(&store, reference).await?;
        let took = started.elapsed();

        let after = store.requests();
        println!(
            "| {backend} | {images} | `{reference}` | {} | {} | {} | {} |",
            after.list.total() - requests.list.total(),
            s3_requests(pages, listed),
            after.get.total() - requests.get.total(),
            milliseconds(took),
        );
    }

    let listed = pages.map(PageCounter::pages);
    let started = Instant::now();
    let refs: Vec<_> = objects
        .list(Some(&Path::from("refs/bench")))
        .try_collect()
        .await?;
    let took = started.elapsed();
    println!(
        "| {backend} | {images} | every ref listed ({} refs), as before | 1 | {} | — | {} |",
        refs.len(),
        s3_requests(pages, listed),
        milliseconds(took),
    );
    Ok(())
}

/// The S3 listing requests counted since `listed`, or why there are none.
fn s3_requests(pages: Option<&PageCounter>, listed: Option<u64>) -> String {
    match (pages, listed) {
        (Some(pages), Some(listed)) => (pages.pages() - listed).to_string(),
        _ => "none (a folder walk)".to_owned(),
    }
}

fn milliseconds(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// A snapshot of one block, for the images to name.
async fn one_block_snapshot(store: &Store) -> Outcome<SnapshotId> {
    let options = SnapshotOptions {
        size: BLOCK_SIZE,
        ..SnapshotOptions::default()
    };
    let writer = SnapshotWriter::begin(store, options).await?;
    writer.put_block(0, vec![0x5a; BLOCK]).await?;
    Ok(writer.commit().await?.id)
}

/// A fresh prefix of the bucket the environment names, and a client on it; `None` when no
/// bucket is named.
fn s3_from_env() -> Outcome<Option<(Location, Arc<dyn ObjectStore>)>> {
    let bucket = match std::env::var("BLOCKYARD_TEST_S3_BUCKET") {
        Ok(bucket) if !bucket.is_empty() => bucket,
        _ => return Ok(None),
    };
    let prefix = format!("bench-latest-{}", ulid::Ulid::new());
    let client = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .build()?;
    let location = Location::S3 {
        bucket,
        prefix: prefix.clone(),
        options: BTreeMap::new(),
    };
    Ok(Some((location, Arc::new(PrefixStore::new(client, prefix)))))
}

//! Image families: promotion, and resolving `FAMILY@latest` and `FAMILY@N`.
//!
//! ```text
//! refs/<family>/<promotion key>-<img-id>   envelope(kind image, the image id): a promotion
//!
//! <promotion key>   32 lowercase hex digits of u128::MAX minus the promotion's ULID,
//!                   so that the newest promotions sort first
//! ```
//!
//! Promotion never overwrites anything. `promote` writes a new ref object under the
//! family's folder, so two machines promoting at once both succeed and neither corrupts
//! the other. The promotion key is a ULID (the promoting machine's clock in milliseconds,
//! then randomness) taken from `u128::MAX`: fixed-width, so that name order is numeric
//! order, and inverted, so that a listing, which every object store gives in name order,
//! starts with the newest promotions.
//!
//! Which promotion is newest is decided by the store's own time of writing (its
//! `last_modified`), never by a client clock, among the first page of the listing; see
//! [`family_images`] for the rule and where it stops holding.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use blockyard_crypto::ObjectKind;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use ulid::{Generator, Ulid};

use crate::catalog::{ImageId, ImageRecord, image, validate_label};
use crate::error::{Result, StoreError};
use crate::store::Store;

/// Refs read per listing call: one page of an S3 listing, whose server answers at most
/// 1000 keys per ListObjectsV2 request, so that reading a page is one request.
pub(crate) const REFS_PAGE: usize = 1000;

/// Length of a promotion key in a ref's name: a `u128` in hex digits.
const PROMOTION_KEY_LEN: usize = 32;

/// The ULIDs this process promotes under. One generator for the process makes them
/// strictly increasing even within one millisecond, so that promotions made here one after
/// another are named in the order they were made; stores that time writes to the second
/// then still order them right.
static PROMOTION_ULIDS: Mutex<Generator> = Mutex::new(Generator::new());

fn promotion_ulid() -> Ulid {
    let mut generator = PROMOTION_ULIDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // The generator fails only after 2^80 promotions within one millisecond.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

fn refs_prefix(family: &str) -> Path {
    Path::from(format!("refs/{family}"))
}

/// The name of the ref promoting `id` under `promotion`.
fn ref_name(promotion: Ulid, id: &ImageId) -> String {
    format!("{:032x}-{id}", u128::MAX - promotion.0)
}

/// The image a ref's name promotes, if the name is one [`ref_name`] makes.
pub(crate) fn ref_image(name: &str) -> Option<ImageId> {
    let (key, id) = name.split_at_checked(PROMOTION_KEY_LEN)?;
    if !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    id.strip_prefix('-')?.parse().ok()
}

/// Makes an image its family's latest by writing a new ref; returns the ref's name.
pub async fn promote(store: &Store, id: &ImageId) -> Result<String> {
    let record = image(store, id).await?;
    let Some(family) = &record.family else {
        return Err(StoreError::InvalidArgument(format!(
            "image {id} belongs to no family; register it with --family to promote it"
        )));
    };
    let name = ref_name(promotion_ulid(), id);
    let path = Path::from(format!("refs/{family}/{name}"));
    let sealed = store.keys().seal(
        ObjectKind::Image,
        path.as_ref().as_bytes(),
        id.to_string().as_bytes(),
        false,
    );
    store.raw().put(&path, Bytes::from(sealed)).await?;
    Ok(name)
}

/// The images of `family` as promoted, newest promotion first, each once, skipping images
/// deregistered, deprecated at `now` or moved to another family; at most `limit` of them.
///
/// Refs are listed a page of 1000 names (one S3 listing request) at a time, newest names
/// first. A page is ordered by the store's time of writing each ref (newest first, the
/// newest name breaking ties, which matters on stores that time writes to the second) and
/// walked, reading one image record per image, until `limit` images are found; only a
/// full page walked to its end without finding them makes the next page be listed. So
/// `FAMILY@latest` costs one listing and normally one read however many refs the family
/// holds, and `FAMILY@N` beyond the first page still finds its image, at a listing per
/// page.
///
/// The rule, then: the newest promotion by the store's clock wins among the thousand
/// newest refs by name. The store's clock decides within a page, the promoting machines'
/// clocks between pages, and that is where the rule stops being the one the store's clock
/// alone would give. A machine whose clock lags behind the others' by more than the span
/// of the family's last thousand promotions writes a ref that is the newest by the store's
/// clock yet lies beyond the first page: `@latest` passes it over (an `@N` reaching that
/// page still finds it). A machine whose clock runs ahead writes refs named before
/// everyone's; each competes by the store's clock as any other, but keeps a place on the
/// first page until a thousand newer names exist, and a thousand such refs would hide
/// every promotion made by correct clocks.
pub async fn family_images(
    store: &Store,
    family: &str,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<ImageRecord>> {
    family_images_paged(store, family, now, limit, REFS_PAGE).await
}

/// [`family_images`], listing refs `page_size` (at least one) at a time.
pub(crate) async fn family_images_paged(
    store: &Store,
    family: &str,
    now: DateTime<Utc>,
    limit: usize,
    page_size: usize,
) -> Result<Vec<ImageRecord>> {
    validate_label("family", family, true)?;
    let prefix = refs_prefix(family);
    let page_size = page_size.max(1);
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut after = None;

    while found.len() < limit {
        let mut refs = store
            .raw()
            .list_page(&prefix, after.as_ref(), page_size)
            .await?;
        // The page is in name order: the next one starts after its last name, and there
        // is none when this one came short.
        let last_page = refs.len() < page_size;
        after = refs.last().map(|meta| meta.location.clone());

        refs.sort_by(|a, b| {
            b.last_modified
                .cmp(&a.last_modified)
                .then_with(|| a.location.cmp(&b.location))
        });
        for meta in refs {
            if found.len() >= limit {
                break;
            }
            let Some(id) = meta.location.filename().and_then(ref_image) else {
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            match image(store, &id).await {
                Ok(record)
                    if !record.is_deprecated(now) && record.family.as_deref() == Some(family) =>
                {
                    found.push(record);
                }
                Ok(_) => {}
                // A deregistered image leaves its refs behind; they name nothing now.
                Err(StoreError::ImageNotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }

        if last_page {
            break;
        }
    }
    Ok(found)
}

/// Resolves an image reference: `img-…`, `FAMILY@latest` or `FAMILY@N` (`@1` is latest).
pub async fn resolve_image(store: &Store, reference: &str) -> Result<ImageRecord> {
    let Some((family, which)) = reference.split_once('@') else {
        let id: ImageId = reference.parse()?;
        return image(store, &id).await;
    };
    let n: usize = match which {
        "latest" => 1,
        number => match number.parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(StoreError::InvalidArgument(format!(
                    "{reference:?}: after @ give latest or a number from 1 (the newest)"
                )));
            }
        },
    };
    let found = family_images(store, family, Utc::now(), n).await?;
    let count = found.len();
    found.into_iter().nth(n - 1).ok_or_else(|| {
        StoreError::InvalidArgument(format!(
            "{reference}: family {family} has {count} promoted image{} that is not \
             deprecated; `image promote` makes one its latest",
            if count == 1 { "" } else { "s" }
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::catalog::{
        Architecture, BootMode, Device, deregister_image, put_image, update_image,
    };
    use crate::config::DEFAULT_BLOCK_SIZE;
    use crate::location::Location;
    use crate::snapshot::SnapshotId;

    async fn memory_store() -> Store {
        let objects = Arc::new(InMemory::new());
        Store::init_on(objects, Location::Memory, DEFAULT_BLOCK_SIZE, None)
            .await
            .expect("init")
    }

    /// Registers `count` images of family "ci" and promotes each in turn; returns their
    /// ids, the last promoted last. The records name a snapshot the store does not hold,
    /// which resolution never looks at.
    async fn promoted_family(store: &Store, count: usize) -> Vec<ImageId> {
        let mut ids = Vec::new();
        for n in 0..count {
            let record = ImageRecord {
                id: ImageId::generate(),
                name: format!("night-{n}"),
                family: Some("ci".to_owned()),
                created: Utc::now(),
                devices: vec![Device {
                    name: "/dev/xvda".to_owned(),
                    snapshot: SnapshotId::from_bytes([7; 16]),
                }],
                architecture: Architecture::X86_64,
                boot_mode: BootMode::Uefi,
                description: String::new(),
                tags: BTreeMap::new(),
                protected: false,
                deprecate_at: None,
                shared_with: BTreeSet::new(),
            };
            put_image(store, &record).await.expect("put image");
            promote(store, &record.id).await.expect("promote");
            ids.push(record.id);
        }
        ids
    }

    /// The ids `family_images_paged` finds, and the listing calls it made.
    async fn resolve(store: &Store, limit: usize, page_size: usize) -> (Vec<ImageId>, u64) {
        let before = store.requests().list.total();
        let found = family_images_paged(store, "ci", Utc::now(), limit, page_size)
            .await
            .expect("family images");
        let listings = store.requests().list.total() - before;
        (found.iter().map(|record| record.id).collect(), listings)
    }

    #[test]
    fn a_later_promotion_is_named_before_an_earlier_one_at_a_fixed_width() {
        let id = ImageId::generate();
        let earlier = Ulid::from_parts(1_000, u128::MAX >> 48);
        let later = Ulid::from_parts(1_001, 0);

        let (earlier, later) = (ref_name(earlier, &id), ref_name(later, &id));

        assert!(later < earlier, "{later} sorts after {earlier}");
        assert_eq!(earlier.len(), later.len());
        assert_eq!(ref_image(&later), Some(id));
    }

    #[test]
    fn names_not_made_by_promotion_name_no_image() {
        let id = ImageId::generate();
        for name in [
            format!("{id}"),
            format!("0123-{id}"),
            format!("{}-{id}", "g".repeat(32)),
            format!("{}_{id}", "0".repeat(32)),
            format!("{}-img-0", "0".repeat(32)),
        ] {
            assert_eq!(ref_image(&name), None, "{name}");
        }
    }

    #[tokio::test]
    async fn latest_passes_over_deprecated_and_deregistered_images_onto_the_next_page() {
        let store = memory_store().await;
        let ids = promoted_family(&store, 10).await;
        for id in &ids[6..] {
            update_image(&store, id, |record| {
                record.deprecate_at = Some(Utc::now());
                Ok(())
            })
            .await
            .expect("deprecate");
        }
        deregister_image(&store, &ids[5]).await.expect("deregister");

        let (found, listings) = resolve(&store, 1, 3).await;

        // Pages of three: 9, 8, 7 are deprecated; 6 is deprecated and 5 deregistered.
        assert_eq!(found, [ids[4]]);
        assert_eq!(listings, 2);
    }

    #[tokio::test]
    async fn the_newest_images_take_one_listing_and_the_oldest_a_listing_per_page() {
        let store = memory_store().await;
        let ids = promoted_family(&store, 10).await;
        let newest_first: Vec<ImageId> = ids.iter().rev().copied().collect();

        let latest = resolve(&store, 1, 3).await;
        let first_page = resolve(&store, 3, 3).await;
        let all = resolve(&store, 10, 3).await;
        let more_than_there_are = resolve(&store, 11, 3).await;

        assert_eq!(latest, (newest_first[..1].to_vec(), 1));
        assert_eq!(first_page, (newest_first[..3].to_vec(), 1));
        // Pages of 3, 3, 3 and 1; the short one shows there is nothing after it.
        assert_eq!(all, (newest_first.clone(), 4));
        assert_eq!(more_than_there_are, (newest_first, 4));
    }

    #[tokio::test]
    async fn a_page_that_comes_exactly_full_is_followed_by_one_empty_listing() {
        let store = memory_store().await;
        let ids = promoted_family(&store, 6).await;

        let (found, listings) = resolve(&store, 7, 3).await;

        assert_eq!(found.len(), ids.len());
        assert_eq!(listings, 3);
    }

    #[tokio::test]
    async fn an_image_promoted_again_is_found_once_at_its_newest_promotion() {
        let store = memory_store().await;
        let ids = promoted_family(&store, 5).await;
        promote(&store, &ids[1]).await.expect("promote again");

        let (found, _) = resolve(&store, 5, 2).await;

        assert_eq!(found, [ids[1], ids[4], ids[3], ids[2], ids[0]]);
    }

    #[tokio::test]
    async fn a_lagging_clock_is_honoured_on_the_first_page_and_passed_over_beyond_it() {
        let store = memory_store().await;
        let ids = promoted_family(&store, 5).await;
        // A machine whose clock is an hour behind promotes image 0: its ref is written
        // last, by the store's clock, but named as if an hour ago.
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let name = ref_name(Ulid::from_datetime(an_hour_ago), &ids[0]);
        let path = Path::from(format!("refs/ci/{name}"));
        store
            .raw()
            .put(&path, Bytes::from_static(b"lagging"))
            .await
            .expect("ref");

        let (wide, _) = resolve(&store, 1, 10).await;
        let (narrow, _) = resolve(&store, 1, 3).await;

        assert_eq!(wide, [ids[0]]);
        assert_eq!(narrow, [ids[4]]);
    }
}

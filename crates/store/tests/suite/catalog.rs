//! The image catalog on every backend: families resolve with one listing, promotions never
//! overwrite, and deprecated or deregistered images drop out of `@latest`.

use blockyard_store::{
    Architecture, BootMode, Device, ImageRecord, NewImage, deregister_image, promote,
    register_image, resolve_image, update_image,
};

use super::Backend;
use super::families::{LARGE_FAMILY, PageCounter, promote_family};
use super::support::two_snapshots;

async fn register(store: &blockyard_store::Store, name: &str, device: Device) -> ImageRecord {
    register_image(
        store,
        NewImage {
            name: name.to_owned(),
            family: Some("ci".to_owned()),
            devices: vec![device],
            architecture: Architecture::X86_64,
            boot_mode: BootMode::Uefi,
            description: String::new(),
            tags: Default::default(),
        },
    )
    .await
    .expect("register")
}

pub(crate) async fn family_latest_resolves_with_one_listing_and_follows_promotions(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let (a, b) = two_snapshots(&store).await;
    let mut promoted = Vec::new();
    for n in 0..12 {
        let snapshot = if n % 2 == 0 { a.id } else { b.id };
        let name = format!("night-{n}");
        let device = Device {
            name: "/dev/xvda".to_owned(),
            snapshot,
        };
        let image = register(&store, &name, device).await;
        promote(&store, &image.id).await.expect("promote");
        promoted.push(image.id);
        // Object stores time their writes to the second or finer; promotions a moment
        // apart must still order by the store's clock.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let before = store.requests();
    let latest = resolve_image(&store, "ci@latest").await.expect("latest");
    let after = store.requests();

    assert_eq!(latest.id, promoted[11]);
    assert_eq!(
        after.list.total() - before.list.total(),
        1,
        "one listing of the refs"
    );
    let third = resolve_image(&store, "ci@3").await.expect("third newest");
    assert_eq!(third.id, promoted[9]);

    // Deprecated and deregistered images drop out; promoting an older one again makes it
    // the latest without touching any earlier ref.
    update_image(&store, &promoted[11], |r| {
        r.deprecate_at = Some(chrono::Utc::now());
        Ok(())
    })
    .await
    .expect("deprecate");
    deregister_image(&store, &promoted[10])
        .await
        .expect("deregister");
    let latest = resolve_image(&store, "ci@latest").await.expect("latest");
    assert_eq!(latest.id, promoted[9]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    promote(&store, &promoted[2]).await.expect("promote again");
    let latest = resolve_image(&store, "ci@latest").await.expect("latest");
    assert_eq!(latest.id, promoted[2]);
}

/// `FAMILY@latest` in a family of [`LARGE_FAMILY`] promoted images takes one listing call
/// and one image record read; `FAMILY@10` the same listing and ten reads. With `pages`,
/// the counter under the store, each listing must also be one S3 request.
pub(crate) async fn latest_of_a_large_family_reads_one_page_of_refs(
    backend: &Backend,
    pages: Option<&PageCounter>,
) {
    let store = backend.plain_store().await;
    let (a, _) = two_snapshots(&store).await;
    let promoted = promote_family(&store, "ci", a.id, LARGE_FAMILY).await;
    let pages_before = pages.map(PageCounter::pages);

    let before = store.requests();
    let latest = resolve_image(&store, "ci@latest").await.expect("latest");
    let middle = store.requests();
    let tenth = resolve_image(&store, "ci@10").await.expect("tenth newest");
    let after = store.requests();

    assert_eq!(latest.id, promoted[LARGE_FAMILY - 1]);
    assert_eq!(tenth.id, promoted[LARGE_FAMILY - 10]);
    assert_eq!(
        middle.list.total() - before.list.total(),
        1,
        "listings for @latest"
    );
    assert_eq!(
        middle.get.total() - before.get.total(),
        1,
        "reads for @latest"
    );
    assert_eq!(
        after.list.total() - middle.list.total(),
        1,
        "listings for @10"
    );
    assert_eq!(after.get.total() - middle.get.total(), 10, "reads for @10");
    if let (Some(pages), Some(before)) = (pages, pages_before) {
        assert_eq!(pages.pages() - before, 2, "S3 requests for @latest and @10");
    }
}

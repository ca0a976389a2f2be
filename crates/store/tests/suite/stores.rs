//! Creating and opening stores: configs, key domains, master keys, and what encryption hides.

use std::collections::BTreeMap;

use blockyard_crypto::MasterKey;
use blockyard_store::{SnapshotOptions, StoreError};

use crate::Backend;
use crate::support::{
    BLOCK, BLOCK_SIZE, KEY, block_path, contains, expected_blocks, noise, passphrase, raw_key,
    read_every_block, small_blocks, write_snapshot, zero_fill,
};

/// Text that an encrypted store must never hold in clear.
const MARKER: &[u8] = b"BLOCKYARD-PLAINTEXT-MARKER-7f3a9c";

pub(crate) async fn init_then_open_gives_the_same_block_size_and_key_domain(backend: &Backend) {
    let created = backend.plain_store().await;

    let opened = backend.open(None).await.expect("open");

    assert_eq!(opened.block_size(), BLOCK_SIZE);
    assert_eq!(opened.block_size(), created.block_size());
    assert_eq!(opened.keys().domain_id(), created.keys().domain_id());
    assert_eq!(
        opened.config().key_domain.id,
        created.config().key_domain.id
    );
    // The same domain secret came back: both name a block alike.
    let block = noise(1, BLOCK);
    assert_eq!(opened.block_id(&block), created.block_id(&block));
}

pub(crate) async fn init_on_an_existing_store_fails_with_already_exists_and_changes_nothing(
    backend: &Backend,
) {
    let first = backend.plain_store().await;

    let second = backend.init(small_blocks(None)).await;

    assert!(
        matches!(second, Err(StoreError::AlreadyExists { .. })),
        "{second:?}"
    );
    let opened = backend.open(None).await.expect("open");
    assert_eq!(opened.keys().domain_id(), first.keys().domain_id());
}

pub(crate) async fn opening_an_empty_location_fails_with_not_a_store_that_says_to_run_init(
    backend: &Backend,
) {
    let result = backend.open(None).await;

    let error = result.expect_err("nothing to open");
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    let message = error.to_string();
    let advice = format!("`blockyard store init {}`", backend.location);
    assert!(message.contains(&advice), "{message}");
}

pub(crate) async fn an_encrypted_store_refuses_to_open_without_a_key(backend: &Backend) {
    backend.encrypted_store().await;

    let result = backend.open(None).await;

    assert!(
        matches!(result, Err(StoreError::KeyRequired { .. })),
        "{result:?}"
    );
}

pub(crate) async fn an_encrypted_store_refuses_a_wrong_key(backend: &Backend) {
    backend.encrypted_store().await;
    let mut wrong = KEY;
    wrong[31] ^= 1;

    let result = backend.open(Some(&raw_key(wrong))).await;

    assert!(
        matches!(result, Err(StoreError::WrongKey { .. })),
        "{result:?}"
    );
}

pub(crate) async fn an_encrypted_store_opens_with_its_key_and_reads_its_snapshots(
    backend: &Backend,
) {
    let created = backend.encrypted_store().await;
    let blocks = [(1, noise(9, BLOCK))];
    let record = write_snapshot(&created, zero_fill(2 * BLOCK_SIZE), &blocks).await;

    let opened = backend.open(Some(&raw_key(KEY))).await.expect("open");

    assert!(opened.keys().is_encrypted());
    assert_eq!(opened.keys().domain_id(), created.keys().domain_id());
    assert_eq!(
        read_every_block(&opened, &record.id).await,
        expected_blocks(2, &blocks)
    );
}

pub(crate) async fn a_passphrase_store_opens_with_the_passphrase_only(backend: &Backend) {
    let phrase = "correct horse battery staple";
    let created = backend
        .init(small_blocks(Some(passphrase(phrase))))
        .await
        .expect("init");

    let with_phrase = backend.open(Some(&passphrase(phrase))).await;
    let with_other_phrase = backend.open(Some(&passphrase("wrong horse"))).await;
    let with_phrase_as_raw_key = backend
        .open(Some(
            &MasterKey::from_key_bytes(phrase.as_bytes().to_vec()).expect("long enough"),
        ))
        .await;
    let without_key = backend.open(None).await;

    let opened = with_phrase.expect("the passphrase opens the store");
    assert_eq!(opened.keys().domain_id(), created.keys().domain_id());
    assert!(
        matches!(with_other_phrase, Err(StoreError::WrongKey { .. })),
        "{with_other_phrase:?}"
    );
    assert!(
        matches!(with_phrase_as_raw_key, Err(StoreError::WrongKey { .. })),
        "{with_phrase_as_raw_key:?}"
    );
    assert!(
        matches!(without_key, Err(StoreError::KeyRequired { .. })),
        "{without_key:?}"
    );
}

pub(crate) async fn a_config_of_a_newer_format_version_is_refused_with_upgrade_advice(
    backend: &Backend,
) {
    backend.plain_store().await;
    backend
        .edit_config(|config| config["version"] = 99.into())
        .await;

    let error = backend.open(None).await.expect_err("version 99");

    let StoreError::UnsupportedVersion {
        found, supported, ..
    } = &error
    else {
        panic!("not UnsupportedVersion: {error:?}");
    };
    assert_eq!((*found, *supported), (99, 1));
    let message = error.to_string();
    assert!(message.contains("version 99"), "{message}");
    assert!(message.contains("upgrade blockyard"), "{message}");
}

pub(crate) async fn a_config_requiring_an_unknown_feature_is_refused_naming_the_feature(
    backend: &Backend,
) {
    backend.plain_store().await;
    backend
        .edit_config(|config| {
            config["required_features"]
                .as_array_mut()
                .expect("required_features is a list")
                .push("teleport".into());
        })
        .await;

    let error = backend.open(None).await.expect_err("unknown feature");

    let StoreError::MissingFeatures { missing, .. } = &error else {
        panic!("not MissingFeatures: {error:?}");
    };
    assert_eq!(missing, "teleport");
    let message = error.to_string();
    assert!(message.contains("needs teleport"), "{message}");
    assert!(message.contains("upgrade"), "{message}");
}

/// A block of noise with [`MARKER`] every 4 KiB: too random for zstd to shrink by the 3%
/// that would make the store compress it, so any plaintext copy keeps the marker intact.
fn marked_block() -> Vec<u8> {
    let mut block = noise(7, BLOCK);
    for start in (0..BLOCK).step_by(4096) {
        block[start..start + MARKER.len()].copy_from_slice(MARKER);
    }
    block
}

fn marked_options() -> SnapshotOptions {
    let marker = String::from_utf8(MARKER.to_vec()).expect("ASCII");
    SnapshotOptions {
        description: format!("description {marker}"),
        tags: BTreeMap::from([("owner".to_owned(), marker)]),
        ..zero_fill(2 * BLOCK_SIZE)
    }
}

/// The control for the next case: shows that the scan would see plaintext if it were there.
pub(crate) async fn an_unencrypted_store_keeps_incompressible_blocks_as_they_are(
    backend: &Backend,
) {
    let store = backend.plain_store().await;
    let block = marked_block();
    write_snapshot(&store, marked_options(), &[(1, block.clone())]).await;

    let objects = backend.all_objects().await;

    let path = block_path(&store.block_id(&block));
    assert!(contains(&objects[&path], &block));
}

pub(crate) async fn an_encrypted_store_holds_no_plaintext_of_blocks_or_descriptions(
    backend: &Backend,
) {
    let store = backend.encrypted_store().await;
    let block = marked_block();
    let record = write_snapshot(&store, marked_options(), &[(1, block.clone())]).await;

    let objects = backend.all_objects().await;

    assert!(objects.contains_key(&block_path(&store.block_id(&block))));
    assert!(objects.contains_key(&format!("snapshots/{}", record.id)));
    for (path, bytes) in &objects {
        assert!(!contains(bytes, MARKER), "{path} holds plaintext");
    }
    let opened = backend.open(Some(&raw_key(KEY))).await.expect("open");
    let reread = opened.snapshot(&record.id).await.expect("record");
    assert!(
        reread
            .description
            .ends_with(std::str::from_utf8(MARKER).expect("ASCII"))
    );
}

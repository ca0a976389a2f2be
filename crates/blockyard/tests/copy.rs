//! `blockyard copy`, `store init --like` and `blockyard key`, driven end to end on local
//! stores holding mkfs.ext4 images.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{Fixture, random_bytes};
use serde_json::Value;

/// Writes a 32-byte master key to `name` in the fixture and returns its path.
fn key_file(fx: &Fixture, name: &str, seed: u64) -> PathBuf {
    let path = fx.path(name);
    std::fs::write(&path, random_bytes(32, seed)).expect("key file");
    path
}

/// Night 2: night 1 with a few scattered regions rewritten, as a rebuild with new
/// dependencies would leave it.
fn next_night(fx: &Fixture, night1: &Path, name: &str) -> PathBuf {
    let night2 = fx.path(name);
    std::fs::copy(night1, &night2).expect("copy night 1");
    let file = File::options().write(true).open(&night2).expect("open");
    for (i, offset) in [3u64 << 20, 9 << 20, 17 << 20].into_iter().enumerate() {
        file.write_all_at(&random_bytes(150_000, 70 + i as u64), offset)
            .expect("write");
    }
    night2
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The one destination report of a copy's JSON.
fn only_destination(report: &Value) -> &Value {
    let destinations = report["destinations"].as_array().expect("destinations");
    assert_eq!(destinations.len(), 1, "{report}");
    &destinations[0]
}

fn number(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

/// Restores `snapshot` from `store` and asserts it equals `image`.
fn assert_restores_to(
    fx: &Fixture,
    store: &Path,
    key: Option<&Path>,
    snapshot: &str,
    image: &Path,
) {
    let out = fx.path(&format!("restored-{snapshot}"));
    let mut args = Vec::new();
    if let Some(key) = key {
        args.extend(["--key-file", path_str(key)]);
    }
    args.extend(["restore", snapshot, path_str(&out), "--force"]);
    fx.ok_at(store, &args);
    assert!(
        std::fs::read(&out).expect("restored") == std::fs::read(image).expect("image"),
        "snapshot {snapshot} restored from {} differs from {}",
        store.display(),
        image.display()
    );
}

#[test]
fn a_copy_within_a_key_domain_needs_no_key_and_moves_only_what_is_missing() {
    let fx = Fixture::new();
    let source_key = key_file(&fx, "source.key", 1);
    let dest_key = key_file(&fx, "dest.key", 2);
    let dest = fx.path("dest");
    let key = path_str(&source_key);
    fx.ok(&[
        "--key-file",
        key,
        "store",
        "init",
        "--encrypt",
        "--block-size",
        "64K",
    ]);
    fx.ok(&[
        "--key-file",
        path_str(&dest_key),
        "store",
        "init",
        path_str(&dest),
        "--like",
        path_str(&fx.store()),
        "--like-key-file",
        key,
    ]);
    let night1 = fx.ext4_image("night1.img", 48, 5);
    let night2 = next_night(&fx, &night1, "night2.img");
    let first = fx.snapshot(&night1, &["--key-file", key])["snapshot"]
        .as_str()
        .expect("id")
        .to_owned();

    // No --key-file, no config file, no environment: the process holds no key at all.
    let copied = fx.json(&["copy", &first, "--to", path_str(&dest)]);
    let report = only_destination(&copied);
    assert_eq!(report["mode"], "verbatim", "{copied}");
    assert!(report["error"].is_null(), "{copied}");
    let night1_blocks = number(report, "blocks_copied");
    assert!(night1_blocks > 0, "{copied}");

    let second = fx.snapshot(&night2, &["--key-file", key, "--parent", &first])["snapshot"]
        .as_str()
        .expect("id")
        .to_owned();
    let copied = fx.json(&["copy", &second, "--to", path_str(&dest)]);
    let report = only_destination(&copied);
    let night2_blocks = number(report, "blocks_copied");
    assert!(
        night2_blocks > 0 && night2_blocks * 4 < night1_blocks,
        "night 2 changed a few regions, yet {night2_blocks} blocks moved against \
         {night1_blocks} for night 1: {copied}"
    );
    assert!(number(report, "blocks_present") > 0, "{copied}");

    // A snapshot the destination holds moves nothing; the copies open with the
    // destination's own key and restore exactly.
    let again = fx.json(&["copy", &second, "--to", path_str(&dest)]);
    assert_eq!(only_destination(&again)["already_present"], true, "{again}");
    let dest_key = path_str(&dest_key);
    fx.ok_at(&dest, &["--key-file", dest_key, "check", "--read-data"]);
    assert_restores_to(&fx, &dest, Some(Path::new(dest_key)), &second, &night2);
    assert_restores_to(&fx, &dest, Some(Path::new(dest_key)), &first, &night1);
}

#[test]
fn a_copy_across_key_domains_reseals_and_a_later_copy_moves_only_new_blocks() {
    let fx = Fixture::new();
    fx.init();
    let dest = fx.path("vault");
    let dest_key = key_file(&fx, "vault.key", 3);
    let dest_key = path_str(&dest_key);
    fx.ok(&[
        "--key-file",
        dest_key,
        "store",
        "init",
        path_str(&dest),
        "--encrypt",
        "--block-size",
        "64K",
    ]);
    let night1 = fx.ext4_image("night1.img", 48, 9);
    let night2 = next_night(&fx, &night1, "night2.img");
    let first = fx.snapshot_id(&night1);
    let second = fx.snapshot(&night2, &["--parent", &first])["snapshot"]
        .as_str()
        .expect("id")
        .to_owned();

    // Sealing for another domain needs the destination's key, and says so.
    let refused = fx.fails(&["copy", &first, "--to", path_str(&dest)]);
    assert!(refused.contains("key"), "{refused}");

    let copied = fx.json(&[
        "copy",
        &first,
        "--to",
        path_str(&dest),
        "--to-key-file",
        dest_key,
    ]);
    let report = only_destination(&copied);
    assert_eq!(report["mode"], "reseal", "{copied}");
    let night1_blocks = number(report, "blocks_copied");

    let copied = fx.json(&[
        "copy",
        &second,
        "--to",
        path_str(&dest),
        "--to-key-file",
        dest_key,
    ]);
    let report = only_destination(&copied);
    let night2_blocks = number(report, "blocks_copied");
    assert!(
        night2_blocks > 0 && night2_blocks * 4 < night1_blocks,
        "the second copy across domains moved {night2_blocks} blocks against \
         {night1_blocks} for the first: {copied}"
    );
    fx.ok_at(&dest, &["--key-file", dest_key, "check", "--read-data"]);
    assert_restores_to(&fx, &dest, Some(Path::new(dest_key)), &second, &night2);
}

#[test]
fn a_copy_to_several_stores_reports_the_one_that_failed_and_completes_the_others() {
    let fx = Fixture::new();
    fx.init();
    let (east, west) = (fx.path("east"), fx.path("west"));
    for store in [&east, &west] {
        fx.ok(&[
            "store",
            "init",
            path_str(store),
            "--like",
            path_str(&fx.store()),
        ]);
    }
    let missing = fx.path("not-a-store");
    let night1 = fx.ext4_image("night1.img", 32, 4);
    let id = fx.snapshot_id(&night1);
    let targets = format!(
        "{},{},{}",
        path_str(&east),
        path_str(&missing),
        path_str(&west)
    );

    let output = fx.run(&["--json", "copy", &id, "--to", &targets]);
    assert!(
        !output.status.success(),
        "a failed destination must fail the command"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not-a-store") && stderr.contains("1 of 3"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let destinations = report["destinations"].as_array().expect("destinations");
    assert_eq!(destinations.len(), 3, "{report}");
    assert!(destinations[0]["error"].is_null(), "{report}");
    assert!(destinations[1]["error"].is_string(), "{report}");
    assert!(destinations[2]["error"].is_null(), "{report}");
    // Both good destinations received the same blocks, each read once from the source.
    assert_eq!(
        destinations[0]["blocks_copied"],
        destinations[2]["blocks_copied"]
    );
    assert_restores_to(&fx, &east, None, &id, &night1);
    assert_restores_to(&fx, &west, None, &id, &night1);
}

#[test]
fn a_copy_run_again_after_an_interruption_moves_only_what_had_not_landed() {
    let fx = Fixture::new();
    fx.init();
    let dest = fx.path("dest");
    fx.ok(&[
        "store",
        "init",
        path_str(&dest),
        "--like",
        path_str(&fx.store()),
    ]);
    let night1 = fx.ext4_image("night1.img", 32, 6);
    let id = fx.snapshot_id(&night1);
    let copied = fx.json(&["copy", &id, "--to", path_str(&dest)]);
    let all = number(only_destination(&copied), "blocks_copied");

    // What a copy killed while moving blocks leaves: some blocks, and neither segments nor
    // the commit record, which are stored only once every block has landed.
    std::fs::remove_file(dest.join("snapshots").join(&id)).expect("remove the record");
    std::fs::remove_dir_all(dest.join("manifests")).expect("remove the segments");
    let mut blocks = block_files(&dest);
    blocks.sort();
    let lost = blocks.len() / 3;
    for block in &blocks[..lost] {
        std::fs::remove_file(block).expect("remove a block");
    }
    let shown = fx
        .command_at(&dest, &["snapshot", "show", &id])
        .output()
        .expect("run");
    assert!(!shown.status.success(), "the record was removed");

    let resumed = fx.json(&["copy", &id, "--to", path_str(&dest)]);
    let report = only_destination(&resumed);
    assert_eq!(number(report, "blocks_copied"), lost as u64, "{resumed}");
    assert_eq!(
        number(report, "blocks_present"),
        all - lost as u64,
        "{resumed}"
    );
    assert_restores_to(&fx, &dest, None, &id, &night1);
}

#[test]
fn copy_refuses_a_snapshot_the_source_lacks_and_the_source_as_destination() {
    let fx = Fixture::new();
    fx.init();
    let night1 = fx.ext4_image("night1.img", 32, 2);
    let id = fx.snapshot_id(&night1);
    let unknown = "snap-00000000000000000000000000000001";
    let stderr = fx.fails(&["copy", unknown, "--to", path_str(&fx.path("x"))]);
    assert!(stderr.contains("has no snapshot"), "{stderr}");

    let stderr = fx.fails(&["copy", &id, "--to", path_str(&fx.store())]);
    assert!(stderr.contains("source store itself"), "{stderr}");
}

#[test]
fn key_slots_are_added_and_removed_but_never_the_last() {
    let fx = Fixture::new();
    let first = key_file(&fx, "first.key", 11);
    let second = key_file(&fx, "second.key", 12);
    let (first, second) = (path_str(&first), path_str(&second));
    fx.ok(&[
        "--key-file",
        first,
        "store",
        "init",
        "--encrypt",
        "--block-size",
        "64K",
    ]);

    let listed = fx.json(&["--key-file", first, "key", "list"]);
    assert_eq!(
        listed["slots"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let added = fx.json(&["--key-file", first, "key", "add", "--new-key-file", second]);
    let slot = added["added"].as_str().expect("slot name").to_owned();

    // The new key opens the store; once the first slot is gone, the first key does not.
    fx.ok(&["--key-file", second, "store", "info"]);
    let old_slot = listed["slots"][0].as_str().expect("slot").to_owned();
    fx.ok(&["--key-file", second, "key", "remove", &old_slot]);
    let refused = fx.fails(&["--key-file", first, "store", "info"]);
    assert!(refused.contains("key"), "{refused}");
    let refused = fx.fails(&["--key-file", second, "key", "remove", &slot]);
    assert!(refused.contains("last key slot"), "{refused}");
    let refused = fx.fails(&["--key-file", second, "key", "remove", "slot-9"]);
    assert!(refused.contains("no key slot slot-9"), "{refused}");
}

#[test]
fn a_rotated_data_key_seals_new_blocks_and_old_blocks_still_open() {
    let fx = Fixture::new();
    let key = key_file(&fx, "store.key", 21);
    let key = path_str(&key);
    fx.ok(&[
        "--key-file",
        key,
        "store",
        "init",
        "--encrypt",
        "--block-size",
        "64K",
    ]);
    let night1 = fx.ext4_image("night1.img", 32, 3);
    let night2 = next_night(&fx, &night1, "night2.img");
    let first = fx.snapshot(&night1, &["--key-file", key])["snapshot"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = block_files(&fx.store());

    let rotated = fx.json(&["--key-file", key, "key", "rotate"]);
    assert_eq!(rotated["current_data_key"], 2, "{rotated}");
    let second = fx.snapshot(&night2, &["--key-file", key, "--parent", &first])["snapshot"]
        .as_str()
        .expect("id")
        .to_owned();

    // Every block's envelope names the data key that sealed it (bytes 8..12).
    let after = block_files(&fx.store());
    let new: Vec<&PathBuf> = after.iter().filter(|b| !before.contains(b)).collect();
    assert!(!new.is_empty());
    for block in &before {
        assert_eq!(sealing_key(block), 1, "{}", block.display());
    }
    for block in new {
        assert_eq!(sealing_key(block), 2, "{}", block.display());
    }
    fx.ok(&["--key-file", key, "check", "--read-data"]);
    assert_restores_to(&fx, &fx.store(), Some(Path::new(key)), &first, &night1);
    assert_restores_to(&fx, &fx.store(), Some(Path::new(key)), &second, &night2);
}

fn block_files(store: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(store.join("blocks")).expect("blocks") {
        for block in std::fs::read_dir(shard.expect("shard").path()).expect("shard") {
            files.push(block.expect("block").path());
        }
    }
    files
}

fn sealing_key(block: &Path) -> u32 {
    let bytes = std::fs::read(block).expect("block");
    u32::from_le_bytes(bytes[8..12].try_into().expect("a 24-byte header"))
}

/// Writes `./blockyard.toml` in the fixture's folder (where the binary runs) naming
/// `stores`, each a name, a path and the backend options to give it.
fn config_file(fx: &Fixture, stores: &[(&str, &Path, &str)]) {
    let mut text = String::new();
    for (name, path, options) in stores {
        text.push_str(&format!(
            "[stores.{name}]\nurl = \"{}\"\noptions = {{ {options} }}\n\n",
            path.display()
        ));
    }
    std::fs::write(fx.path("blockyard.toml"), text).expect("config file");
}

#[test]
fn a_flaky_destination_is_retried_until_the_copy_lands() {
    let fx = Fixture::new();
    fx.init();
    let flaky = fx.path("flaky");
    fx.ok(&[
        "store",
        "init",
        path_str(&flaky),
        "--like",
        path_str(&fx.store()),
    ]);
    config_file(
        &fx,
        &[(
            "flaky",
            &flaky,
            r#"inject_error_rate = "0.2", inject_seed = "7""#,
        )],
    );
    let night1 = fx.ext4_image("night1.img", 32, 8);
    let id = fx.snapshot_id(&night1);

    let copied = fx.json(&["copy", &id, "--to", "flaky"]);

    let report = only_destination(&copied);
    assert!(report["error"].is_null(), "{copied}");
    assert_restores_to(&fx, &flaky, None, &id, &night1);
}

#[test]
fn a_destination_that_stays_down_fails_alone_and_holds_no_half_snapshot() {
    let fx = Fixture::new();
    fx.init();
    let (down, up) = (fx.path("down"), fx.path("up"));
    for store in [&down, &up] {
        fx.ok(&[
            "store",
            "init",
            path_str(store),
            "--like",
            path_str(&fx.store()),
        ]);
    }
    config_file(&fx, &[("down", &down, r#"inject_down = "true""#)]);
    let night1 = fx.ext4_image("night1.img", 32, 12);
    let id = fx.snapshot_id(&night1);

    let output = fx.run(&[
        "--json",
        "copy",
        &id,
        "--to",
        &format!("down,{}", path_str(&up)),
    ]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 of 2") && stderr.contains("down"),
        "{stderr}"
    );
    assert_restores_to(&fx, &up, None, &id, &night1);
    assert!(
        !down.join("snapshots").join(&id).exists(),
        "the store that was down must hold no commit record"
    );
}

#[test]
fn an_image_copies_after_its_snapshots_keylessly_by_id_and_resealed_by_family() {
    let fx = Fixture::new();
    let key = key_file(&fx, "source.key", 31);
    let (dest, vault) = (fx.path("dest"), fx.path("vault"));
    let dest_key = key_file(&fx, "dest.key", 32);
    let vault_key = key_file(&fx, "vault.key", 33);
    let (key, dest_key, vault_key) = (path_str(&key), path_str(&dest_key), path_str(&vault_key));
    fx.ok(&[
        "--key-file",
        key,
        "store",
        "init",
        "--encrypt",
        "--block-size",
        "64K",
    ]);
    fx.ok(&[
        "--key-file",
        dest_key,
        "store",
        "init",
        path_str(&dest),
        "--like",
        path_str(&fx.store()),
        "--like-key-file",
        key,
    ]);
    fx.ok_at(
        &vault,
        &[
            "--key-file",
            vault_key,
            "store",
            "init",
            "--encrypt",
            "--block-size",
            "64K",
        ],
    );
    let night1 = fx.ext4_image("night1.img", 32, 17);
    let imported = fx.json(&[
        "--key-file",
        key,
        "import",
        path_str(&night1),
        "--name",
        "n1",
        "--family",
        "ci",
    ]);
    let image = imported["image"].as_str().expect("image id").to_owned();
    fx.json(&["--key-file", key, "image", "promote", &image]);

    // By id, within the key domain: no key at all.
    let copied = fx.json(&["copy", &image, "--to", path_str(&dest)]);
    assert_eq!(copied["image"], image.as_str(), "{copied}");
    assert_eq!(copied["destinations"][0]["image_copied"], true, "{copied}");
    let shown = fx.ok_at(
        &dest,
        &["--json", "--key-file", dest_key, "image", "show", &image],
    );
    let shown: Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!(shown["name"], "n1");
    assert_restores_to(&fx, &dest, Some(Path::new(dest_key)), &image, &night1);

    // By family, into another key domain: both keys, and the record sealed again.
    let copied = fx.json(&[
        "--key-file",
        key,
        "copy",
        "ci@latest",
        "--to",
        path_str(&vault),
        "--to-key-file",
        vault_key,
    ]);
    assert_eq!(copied["destinations"][0]["image_copied"], true, "{copied}");
    assert_restores_to(&fx, &vault, Some(Path::new(vault_key)), &image, &night1);

    // Without the source's key, a family cannot be resolved, and says why.
    let refused = fx.fails(&["copy", "ci@latest", "--to", path_str(&dest)]);
    assert!(refused.contains("need the source's key"), "{refused}");
}

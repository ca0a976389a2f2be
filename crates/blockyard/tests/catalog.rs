//! `blockyard image`: registering images from snapshots, families and `FAMILY@latest`,
//! protection, deprecation and sharing, driven end to end.

mod common;

use common::Fixture;
use serde_json::Value;

/// A store with two snapshots of small qemu-img images; returns their ids.
fn two_snapshots(fx: &Fixture) -> (String, String) {
    fx.init();
    let first = fx.qemu_raw_image("a.img", 1 << 20, &[(0, vec![1; 4096])]);
    let second = fx.qemu_raw_image("b.img", 1 << 20, &[(0, vec![2; 4096])]);
    (fx.snapshot_id(&first), fx.snapshot_id(&second))
}

fn register(fx: &Fixture, name: &str, family: &str, snapshot: &str) -> String {
    let device = format!("/dev/xvda={snapshot}");
    let record = fx.json(&[
        "image",
        "register",
        "--name",
        name,
        "--family",
        family,
        "--snapshot",
        &device,
        "--tag",
        "team=adas",
    ]);
    record["id"].as_str().expect("an image id").to_owned()
}

fn id_of(value: &Value) -> &str {
    value["id"].as_str().expect("an image id")
}

#[test]
fn family_latest_follows_promotions_and_skips_deprecated_images() {
    let fx = Fixture::new();
    let (snap1, snap2) = two_snapshots(&fx);
    let night1 = register(&fx, "adas-1", "adas", &snap1);
    let night2 = register(&fx, "adas-2", "adas", &snap2);

    // Registered is not promoted: the family has no latest yet.
    let refused = fx.fails(&["image", "show", "adas@latest"]);
    assert!(refused.contains("image promote"), "{refused}");

    fx.json(&["image", "promote", &night1]);
    assert_eq!(id_of(&fx.json(&["image", "show", "adas@latest"])), night1);
    fx.json(&["image", "promote", &night2]);
    assert_eq!(id_of(&fx.json(&["image", "show", "adas@latest"])), night2);
    assert_eq!(id_of(&fx.json(&["image", "show", "adas@2"])), night1);

    fx.json(&["image", "deprecate", "adas@latest", "--at", "now"]);
    assert_eq!(id_of(&fx.json(&["image", "show", "adas@latest"])), night1);
    let refused = fx.fails(&["image", "show", "adas@2"]);
    assert!(refused.contains("1 promoted image"), "{refused}");
}

#[test]
fn a_protected_image_cannot_be_deregistered_until_unprotected() {
    let fx = Fixture::new();
    let (snap1, _) = two_snapshots(&fx);
    let image = register(&fx, "base", "base", &snap1);

    let protected = fx.json(&["image", "protect", &image]);
    assert_eq!(protected["protected"], true);
    let refused = fx.fails(&["image", "deregister", &image]);
    assert!(refused.contains("protected"), "{refused}");

    let refused = fx.fails(&["snapshot", "delete", &snap1]);
    assert!(refused.contains("deregister the image first"), "{refused}");

    fx.json(&["image", "unprotect", &image]);
    fx.json(&["image", "deregister", &image]);
    let gone = fx.fails(&["image", "show", &image]);
    assert!(gone.contains("not found"), "{gone}");
    // The snapshot stays.
    fx.json(&["snapshot", "show", &snap1]);
}

#[test]
fn images_list_by_family_and_tag_and_record_their_shares() {
    let fx = Fixture::new();
    let (snap1, snap2) = two_snapshots(&fx);
    let a = register(&fx, "a", "alpha", &snap1);
    let b = register(&fx, "b", "beta", &snap2);

    let shared = fx.json(&["image", "share", &b, "--account", "team-eu"]);
    assert_eq!(shared["shared_with"], serde_json::json!(["team-eu"]));
    let unshared = fx.json(&["image", "unshare", &b, "--account", "team-eu"]);
    assert_eq!(unshared["shared_with"], serde_json::json!([]));

    let alpha = fx.json(&["image", "list", "--family", "alpha"]);
    let ids: Vec<&str> = alpha["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, [a.as_str()]);
    let tagged = fx.json(&["image", "list", "--tag", "team=adas"]);
    assert_eq!(tagged["images"].as_array().map(Vec::len), Some(2));
    let none = fx.json(&["image", "list", "--tag", "team=other"]);
    assert_eq!(none["images"].as_array().map(Vec::len), Some(0));
}

#[test]
fn bad_image_requests_get_clear_errors() {
    let fx = Fixture::new();
    let (snap1, _) = two_snapshots(&fx);
    let missing = "snap-00000000000000000000000000000001";

    let refused = fx.fails(&[
        "image",
        "register",
        "--name",
        "x",
        "--snapshot",
        &format!("/dev/xvda={missing}"),
    ]);
    assert!(refused.contains("not found"), "{refused}");
    let refused = fx.fails(&[
        "image",
        "register",
        "--name",
        "x",
        "--family",
        "../etc",
        "--snapshot",
        &format!("/dev/xvda={snap1}"),
    ]);
    assert!(refused.contains("may hold only letters"), "{refused}");
    let twice = format!("d={snap1}");
    let refused = fx.fails(&[
        "image",
        "register",
        "--name",
        "x",
        "--snapshot",
        &twice,
        "--snapshot",
        &twice,
    ]);
    assert!(refused.contains("named twice"), "{refused}");
    let refused = fx.fails(&["image", "show", "adas@0"]);
    assert!(refused.contains("a number from 1"), "{refused}");
    let refused = fx.fails(&["image", "show", "img-nothex"]);
    assert!(refused.contains("bad image id"), "{refused}");
    let image = register(&fx, "solo", "solo", &snap1);
    let no_family = fx.json(&[
        "image",
        "register",
        "--name",
        "loose",
        "--snapshot",
        &format!("d={snap1}"),
    ]);
    let refused = fx.fails(&["image", "promote", id_of(&no_family)]);
    assert!(refused.contains("no family"), "{refused}");
    let refused = fx.fails(&["image", "deprecate", &image, "--at", "tomorrow"]);
    assert!(refused.contains("not a time"), "{refused}");
}

#[test]
fn an_import_registers_its_image_and_family_latest_names_it_everywhere() {
    let fx = Fixture::new();
    fx.init();
    let raw = fx.qemu_raw_image("disk.img", 2 << 20, &[(4096, vec![7; 70_000])]);
    let qcow2 = fx.path("disk.qcow2");
    common::run_tool(std::process::Command::new("qemu-img").args([
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().expect("utf-8"),
        qcow2.to_str().expect("utf-8"),
    ]));

    let imported = fx.json(&[
        "import",
        qcow2.to_str().expect("utf-8"),
        "--name",
        "ci-base",
        "--family",
        "ci",
        "--arch",
        "aarch64",
    ]);
    let image = imported["image"].as_str().expect("an image id").to_owned();
    let snapshot = imported["snapshots"][0]["snapshot"].as_str().expect("id");
    let record = fx.json(&["image", "show", &image]);
    assert_eq!(record["devices"][0]["snapshot"], snapshot);
    assert_eq!(record["architecture"], "aarch64");
    fx.json(&["image", "promote", &image]);

    // The family's latest stands for its one snapshot wherever a snapshot is named.
    let out = fx.path("restored.img");
    fx.ok(&["restore", "ci@latest", out.to_str().expect("utf-8")]);
    assert!(std::fs::read(&out).expect("restored") == std::fs::read(&raw).expect("raw"));
    let shown = fx.json(&["snapshot", "show", &format!("{image}:disk0")]);
    assert_eq!(shown["id"], snapshot, "{shown}");
    let refused = fx.fails(&["snapshot", "show", &format!("{image}:nvme9")]);
    assert!(refused.contains("no device nvme9"), "{refused}");
}

#[test]
fn deleted_snapshots_and_images_wait_in_the_recycle_bin_until_purged() {
    let fx = Fixture::new();
    let (snap1, _) = two_snapshots(&fx);
    let image = register(&fx, "base", "base", &snap1);

    fx.json(&["image", "deregister", &image]);
    fx.fails(&["image", "show", &image]);
    let bin = fx.json(&["recycle", "list"]);
    assert_eq!(bin["recycled"][0]["id"], image.as_str(), "{bin}");
    fx.json(&["recycle", "restore", &image]);
    assert_eq!(id_of(&fx.json(&["image", "show", &image])), image);

    fx.json(&["image", "deregister", &image]);
    fx.json(&["snapshot", "delete", &snap1]);
    fx.fails(&["snapshot", "show", &snap1]);
    assert_eq!(
        fx.json(&["recycle", "list"])["recycled"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Within the window nothing is purged, and a snapshot comes back whole.
    let purged = fx.json(&["recycle", "purge"]);
    assert_eq!(
        purged["purged"].as_array().map(Vec::len),
        Some(0),
        "{purged}"
    );
    fx.json(&["recycle", "restore", &snap1]);
    fx.ok(&["check", "--read-data"]);
    let out = fx.path("back.img");
    fx.ok(&["restore", &snap1, out.to_str().expect("utf-8")]);
    assert!(std::fs::read(&out).expect("restored") == std::fs::read(fx.path("a.img")).expect("a"));

    fx.json(&["snapshot", "delete", &snap1]);
    let purged = fx.json(&["recycle", "purge", "--older-than", "0s"]);
    assert_eq!(
        purged["purged"].as_array().map(Vec::len),
        Some(2),
        "{purged}"
    );
    let refused = fx.fails(&["recycle", "restore", &snap1]);
    assert!(refused.contains("not in the recycle bin"), "{refused}");
    fx.ok(&["check"]);
}

#[test]
fn retention_keeps_the_newest_the_protected_and_the_latest_and_bins_the_rest() {
    let fx = Fixture::new();
    fx.init();
    let mut snaps = Vec::new();
    for n in 0..5u8 {
        let image = fx.qemu_raw_image(&format!("n{n}.img"), 1 << 20, &[(0, vec![n + 1; 4096])]);
        snaps.push(fx.snapshot_id(&image));
    }
    // Five nights; night 4 shares night 3's snapshot.
    let mut images = Vec::new();
    for (n, snap) in [&snaps[0], &snaps[1], &snaps[2], &snaps[3], &snaps[3]]
        .iter()
        .enumerate()
    {
        images.push(register(&fx, &format!("night-{n}"), "ci", snap));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    fx.json(&["image", "protect", &images[0]]);
    fx.json(&["image", "promote", &images[1]]);

    let planned = fx.json(&["retain", "--family", "ci", "--keep-last", "1", "--dry-run"]);
    assert_eq!(
        planned["deregistered"].as_array().map(Vec::len),
        Some(2),
        "{planned}"
    );
    assert_eq!(
        fx.json(&["image", "list"])["images"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );

    let done = fx.json(&["retain", "--family", "ci", "--keep-last", "1"]);

    // Kept: the newest (4), the protected (0) and the latest (1). Gone: 2 and 3. Night 3's
    // snapshot stays because night 4 uses it; night 2's goes.
    let mut gone: Vec<&str> = done["deregistered"]
        .as_array()
        .expect("deregistered")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    gone.sort_unstable();
    let mut expected = vec![images[2].as_str(), images[3].as_str()];
    expected.sort_unstable();
    assert_eq!(gone, expected, "{done}");
    assert_eq!(
        done["snapshots_deleted"],
        serde_json::json!([snaps[2]]),
        "{done}"
    );
    fx.fails(&["snapshot", "show", &snaps[2]]);
    fx.json(&["snapshot", "show", &snaps[3]]);
    assert_eq!(id_of(&fx.json(&["image", "show", "ci@latest"])), images[1]);
    let bin = fx.json(&["recycle", "list"]);
    assert_eq!(bin["recycled"].as_array().map(Vec::len), Some(3), "{bin}");

    // Everything is kept while it is young enough.
    let young = fx.json(&[
        "retain",
        "--family",
        "ci",
        "--keep-last",
        "0",
        "--keep-within",
        "1h",
    ]);
    assert_eq!(
        young["deregistered"].as_array().map(Vec::len),
        Some(0),
        "{young}"
    );
}

#[test]
fn gc_frees_the_blocks_of_purged_snapshots_only_and_a_dry_run_frees_nothing() {
    let fx = Fixture::new();
    fx.init();
    // Half a MiB: eight of the store's 64 KiB blocks each.
    let shared = common::random_bytes(1 << 19, 7);
    let own = common::random_bytes(1 << 19, 8);
    let kept_image = fx.qemu_raw_image("kept.img", 4 << 20, &[(0, shared.clone())]);
    let doomed_image = fx.qemu_raw_image("doomed.img", 4 << 20, &[(0, shared), (1 << 20, own)]);
    let kept = fx.snapshot_id(&kept_image);
    let doomed = fx.snapshot_id(&doomed_image);
    fx.ok(&["snapshot", "delete", &doomed]);
    // Binned is still referenced: nothing to condemn yet.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let binned = fx.json(&["gc", "--grace", "0s"]);
    assert_eq!(binned["blocks_deleted"], 0, "{binned}");

    fx.ok(&["recycle", "purge", "--older-than", "0s"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dry = fx.json(&["gc", "--grace", "0s", "--dry-run"]);
    assert_eq!(dry["blocks_condemned"], 8, "{dry}");
    assert_eq!(dry["blocks_deleted"], 0, "{dry}");
    let young = fx.json(&["gc", "--grace", "1h"]);
    assert_eq!(young["blocks_deleted"], 0, "{young}");

    let report = fx.json(&["gc", "--grace", "0s"]);
    assert_eq!(report["blocks_deleted"], 8, "{report}");
    assert_eq!(report["segments_deleted"], 1, "{report}");
    let text = fx.ok(&["check", "--read-data"]);
    assert!(text.contains("no problems"), "{text}");
    let out = fx.path("kept.out");
    fx.ok(&["restore", &kept, out.to_str().expect("utf-8 path")]);
    assert_eq!(
        std::fs::read(&out).expect("restored"),
        std::fs::read(&kept_image).expect("source")
    );
}

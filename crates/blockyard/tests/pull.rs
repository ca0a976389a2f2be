//! `blockyard pull`: writing an image while reusing the blocks an older output, seed files
//! and the block cache hold, driven end to end.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, allocated, pseudo_text, run_tool};
use serde_json::Value;

/// The store's block size (`Fixture::init`).
const BLOCK: u64 = 64 << 10;

/// Blocks night 2 rewrites, by index.
const CHANGED: [u64; 3] = [80, 150, 300];

/// Two nights of one image: night 2 is night 1 with the blocks in `CHANGED` rewritten.
struct Nights {
    night1: PathBuf,
    night2: PathBuf,
    snap1: String,
    snap2: String,
}

fn two_nights(fx: &Fixture) -> Nights {
    fx.init();
    let night1 = fx.ext4_image("night1.img", 32, 1);
    let night2 = fx.path("night2.img");
    std::fs::copy(&night1, &night2).expect("copy night 1");
    let file = std::fs::File::options()
        .write(true)
        .open(&night2)
        .expect("open night 2");
    for (n, index) in CHANGED.iter().enumerate() {
        let bytes = pseudo_text(BLOCK, 1000 + n as u64);
        file.write_all_at(&bytes, index * BLOCK)
            .expect("write night 2");
    }
    let snap1 = fx.snapshot_id(&night1);
    let snap2 = fx.snapshot_id(&night2);
    Nights {
        night1,
        night2,
        snap1,
        snap2,
    }
}

/// Registers `snapshot` as an image of family `ci` and promotes it.
fn promote(fx: &Fixture, name: &str, snapshot: &str) {
    let device = format!("/dev/xvda={snapshot}");
    let image = fx.json(&[
        "image",
        "register",
        "--name",
        name,
        "--family",
        "ci",
        "--snapshot",
        &device,
    ]);
    let id = image["id"].as_str().expect("an image id");
    fx.json(&["image", "promote", id]);
}

fn pull(fx: &Fixture, image: &str, output: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["pull", image, output.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    fx.json(&args)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

fn assert_same_bytes(got: &Path, want: &Path) {
    let (got_bytes, want_bytes) = (
        std::fs::read(got).expect("read output"),
        std::fs::read(want).expect("read source"),
    );
    assert_eq!(
        got_bytes.len(),
        want_bytes.len(),
        "size of {}",
        got.display()
    );
    assert!(
        got_bytes == want_bytes,
        "{} differs from {}",
        got.display(),
        want.display()
    );
}

#[test]
fn pulling_a_newer_night_over_the_older_output_fetches_only_the_changed_blocks() {
    let fx = Fixture::new();
    let nights = two_nights(&fx);
    let output = fx.path("runner/disk.img");
    std::fs::create_dir_all(fx.path("runner")).expect("folder");

    promote(&fx, "ci-1", &nights.snap1);
    let first = pull(&fx, "ci@latest", &output, &[]);
    assert_same_bytes(&output, &nights.night1);
    assert_eq!(
        count(&first, "blocks_fetched"),
        count(&first, "blocks_data")
    );
    assert_eq!(count(&first, "blocks_from_output"), 0);

    let read_only = std::fs::Permissions::from_mode(0o440);
    std::fs::set_permissions(&output, read_only).expect("chmod");

    promote(&fx, "ci-2", &nights.snap2);
    let second = pull(&fx, "ci@latest", &output, &[]);
    assert_same_bytes(&output, &nights.night2);
    assert_eq!(second["snapshot"], nights.snap2.as_str());
    assert_eq!(count(&second, "blocks_fetched"), CHANGED.len() as u64);
    assert!(
        count(&second, "bytes_fetched") <= CHANGED.len() as u64 * BLOCK,
        "{second}"
    );
    assert_eq!(
        count(&second, "blocks_from_output"),
        count(&second, "blocks_data") - CHANGED.len() as u64
    );
    let leftovers: Vec<_> = std::fs::read_dir(fx.path("runner"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["disk.img"], "no temporary file stays behind");
    let mode = std::fs::metadata(&output)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o440,
        "the new image keeps the old one's permissions"
    );
}

#[test]
fn a_seed_is_reused_by_position_and_a_shifted_seed_by_content() {
    let fx = Fixture::new();
    let nights = two_nights(&fx);
    let night1 = nights.night1.to_str().expect("utf-8 path");

    let by_position = pull(&fx, &nights.snap2, &fx.path("a.img"), &["--seed", night1]);
    assert_same_bytes(&fx.path("a.img"), &nights.night2);
    assert_eq!(count(&by_position, "blocks_fetched"), CHANGED.len() as u64);
    assert_eq!(
        by_position["blocks_from_seeds"]["by_position"].as_u64(),
        Some(count(&by_position, "blocks_data") - CHANGED.len() as u64)
    );

    // The same disk one block further into the file: no block sits at its position.
    let mut shifted = pseudo_text(BLOCK, 77);
    shifted.extend(std::fs::read(&nights.night1).expect("read night 1"));
    std::fs::write(fx.path("shifted.img"), shifted).expect("write the shifted seed");
    let by_content = pull(
        &fx,
        &nights.snap2,
        &fx.path("b.img"),
        &["--seed", "shifted.img"],
    );
    assert_same_bytes(&fx.path("b.img"), &nights.night2);
    assert_eq!(count(&by_content, "blocks_fetched"), CHANGED.len() as u64);
    let seeds = &by_content["blocks_from_seeds"];
    let by_content_count = seeds["by_content"].as_u64().expect("by_content");
    let by_position_count = seeds["by_position"].as_u64().expect("by_position");
    assert!(by_content_count > 0, "{by_content}");
    assert_eq!(
        by_content_count + by_position_count,
        count(&by_content, "blocks_data") - CHANGED.len() as u64
    );
}

#[test]
fn a_sparse_seed_of_an_odd_length_is_found_by_content_around_its_holes() {
    let fx = Fixture::new();
    let nights = two_nights(&fx);

    // Night 1 one block further in, written page by page so its zero pages stay holes,
    // and a tail of 1000 bytes so the seed's length is no multiple of the block size.
    let night1 = std::fs::read(&nights.night1).expect("read night 1");
    let seed_path = fx.path("sparse-seed.img");
    let seed = std::fs::File::create(&seed_path).expect("create the seed");
    let len = BLOCK + night1.len() as u64 + 1000;
    seed.set_len(len).expect("size the seed");
    for (n, page) in night1.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            seed.write_all_at(page, BLOCK + n as u64 * 4096)
                .expect("write the seed");
        }
    }
    seed.write_all_at(&pseudo_text(1000, 5), len - 1000)
        .expect("write the tail");
    seed.sync_all().expect("sync the seed");
    assert!(allocated(&seed_path) < len / 2, "the seed is mostly hole");

    let report = pull(
        &fx,
        &nights.snap2,
        &fx.path("out.img"),
        &["--seed", "sparse-seed.img"],
    );

    assert_same_bytes(&fx.path("out.img"), &nights.night2);
    assert_eq!(count(&report, "blocks_fetched"), CHANGED.len() as u64);
    let seeds = &report["blocks_from_seeds"];
    let by_content = seeds["by_content"].as_u64().expect("by_content");
    let by_position = seeds["by_position"].as_u64().expect("by_position");
    assert!(by_content > 0, "{report}");
    assert_eq!(
        by_content + by_position,
        count(&report, "blocks_data") - CHANGED.len() as u64
    );
}

#[test]
fn the_cache_serves_a_second_pull_and_keeps_within_its_bound() {
    let fx = Fixture::new();
    let nights = two_nights(&fx);

    let first = pull(&fx, &nights.snap1, &fx.path("a.img"), &["--cache", "cache"]);
    assert_eq!(count(&first, "blocks_from_cache"), 0);
    let second = pull(&fx, &nights.snap1, &fx.path("b.img"), &["--cache", "cache"]);
    assert_same_bytes(&fx.path("b.img"), &nights.night1);
    assert_eq!(count(&second, "bytes_fetched"), 0);
    assert_eq!(
        count(&second, "blocks_from_cache"),
        count(&second, "blocks_data")
    );

    // Night 2 adds three blocks; a bound of 256 KiB keeps only the newest few.
    let bounded = pull(
        &fx,
        &nights.snap2,
        &fx.path("c.img"),
        &["--cache", "cache", "--cache-size", "256K"],
    );
    assert_same_bytes(&fx.path("c.img"), &nights.night2);
    assert!(count(&bounded["cache"], "evicted_blocks") > 0, "{bounded}");
    assert!(count(&bounded["cache"], "bytes") <= 256 << 10, "{bounded}");
    assert!(directory_bytes(&fx.path("cache")) <= 256 << 10);
}

#[test]
fn a_damaged_cache_entry_is_not_used_but_fetched_again() {
    let fx = Fixture::new();
    let nights = two_nights(&fx);
    pull(&fx, &nights.snap1, &fx.path("a.img"), &["--cache", "cache"]);

    for path in files_under(&fx.path("cache")) {
        let mut bytes = std::fs::read(&path).expect("read a cached block");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, bytes).expect("damage a cached block");
    }
    let again = pull(&fx, &nights.snap1, &fx.path("b.img"), &["--cache", "cache"]);
    assert_same_bytes(&fx.path("b.img"), &nights.night1);
    assert_eq!(count(&again, "blocks_from_cache"), 0);
    assert_eq!(
        count(&again, "blocks_fetched"),
        count(&again, "blocks_data")
    );
}

#[test]
fn holes_stay_holes_in_the_output() {
    let fx = Fixture::new();
    fx.init();
    let size = 64 << 20;
    let image = fx.qemu_raw_image(
        "sparse.img",
        size,
        &[
            (0, pseudo_text(4096, 1)),
            (40 << 20, pseudo_text(100_000, 2)),
        ],
    );
    let snapshot = fx.snapshot_id(&image);

    let report = pull(&fx, &snapshot, &fx.path("out.img"), &[]);
    assert_same_bytes(&fx.path("out.img"), &image);
    assert_eq!(count(&report, "blocks_data"), 3);
    assert_eq!(count(&report, "blocks_zero"), size / BLOCK - 3);
    assert!(allocated(&fx.path("out.img")) <= 4 * BLOCK);

    // --from names the store when --store names another.
    let store = fx.store();
    let elsewhere = fx.path("no-store-here");
    fx.ok_at(
        &elsewhere,
        &[
            "pull",
            &snapshot,
            "from.img",
            "--from",
            store.to_str().expect("utf-8 path"),
        ],
    );
    assert_same_bytes(&fx.path("from.img"), &image);
}

#[test]
fn a_qcow2_pull_reads_back_as_the_image() {
    let fx = Fixture::new();
    let nights = two_nights(&fx);
    let night1 = nights.night1.to_str().expect("utf-8 path");
    let report = pull(
        &fx,
        &nights.snap2,
        &fx.path("out.qcow2"),
        &["--format", "qcow2", "--seed", night1],
    );
    assert_eq!(report["format"], "qcow2");
    assert_eq!(count(&report, "blocks_fetched"), CHANGED.len() as u64);
    run_tool(
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
            .arg(fx.path("out.qcow2"))
            .arg(&nights.night2),
    );
}

#[test]
fn pull_refuses_a_directory_output_and_a_missing_seed() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.qemu_raw_image("small.img", 1 << 20, &[(0, vec![3; 4096])]);
    let snapshot = fx.snapshot_id(&image);

    std::fs::create_dir(fx.path("folder")).expect("folder");
    let refused = fx.fails(&["pull", &snapshot, "folder"]);
    assert!(refused.contains("is a directory"), "{refused}");

    let refused = fx.fails(&["pull", &snapshot, "out.img", "--seed", "nowhere.img"]);
    assert!(
        refused.contains("seed nowhere.img is not a file"),
        "{refused}"
    );
    assert!(!fx.path("out.img").exists());

    // A seed of another size is fine: what fits is used.
    std::fs::write(fx.path("short.img"), vec![3u8; 1000]).expect("short seed");
    let report = pull(
        &fx,
        &snapshot,
        &fx.path("out.img"),
        &["--seed", "short.img"],
    );
    assert_same_bytes(&fx.path("out.img"), &image);
    assert_eq!(count(&report, "blocks_fetched"), 1);
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn directory_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|path| std::fs::metadata(path).expect("metadata").len())
        .sum()
}

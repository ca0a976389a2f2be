//! The binary against a real S3 server: stores, copies, imports and exports on the Garage
//! instance that `scripts/test.sh` starts (its AWS_* variables reach the binary unchanged).
//!
//! Without `BLOCKYARD_TEST_S3_BUCKET` these tests note that no server is running and pass,
//! unless `BLOCKYARD_REQUIRE_S3=1` (set by `scripts/test.sh`), when they fail: CI can never
//! skip them silently.

mod common;

use std::path::Path;

use common::Fixture;
use serde_json::Value;

/// The test bucket, or `None` when no S3 server is configured and none is required.
fn bucket() -> Option<String> {
    match std::env::var("BLOCKYARD_TEST_S3_BUCKET") {
        Ok(bucket) if !bucket.is_empty() => Some(bucket),
        _ => {
            assert!(
                std::env::var("BLOCKYARD_REQUIRE_S3").as_deref() != Ok("1"),
                "BLOCKYARD_REQUIRE_S3=1 but BLOCKYARD_TEST_S3_BUCKET is unset: Garage is not \
                 running (scripts/test.sh starts it)"
            );
            eprintln!("no S3 server configured (BLOCKYARD_TEST_S3_BUCKET); skipping");
            None
        }
    }
}

/// A fresh prefix in the test bucket.
fn s3_url(bucket: &str, what: &str) -> String {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("s3://{bucket}/cli-{what}-{unique}-{}", std::process::id())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn field(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} in {value}"))
        .to_owned()
}

#[test]
fn a_snapshot_copies_to_an_s3_store_and_restores_from_it() {
    let Some(bucket) = bucket() else { return };
    let fx = Fixture::new();
    fx.init();
    let remote = s3_url(&bucket, "copy");
    fx.ok(&["store", "init", &remote, "--like", path_str(&fx.store())]);
    let night1 = fx.ext4_image("night1.img", 32, 14);
    let id = fx.snapshot_id(&night1);

    let copied = fx.json(&["copy", &id, "--to", &remote]);
    let again = fx.json(&["copy", &id, "--to", &remote]);

    assert!(copied["destinations"][0]["error"].is_null(), "{copied}");
    let report = &copied["destinations"][0];
    let count = |field: &str| report.pointer(field).and_then(Value::as_u64).unwrap_or(0);
    assert!(count("/blocks_copied") > 0, "{copied}");
    // One PUT per moved block, plus the segments and the commit record, and the two writes
    // of the writer session that keeps gc away (its start and its heartbeat before the
    // commit); nothing else.
    assert_eq!(
        count("/requests/put"),
        count("/blocks_copied") + count("/segments_copied") + 1 + 2,
        "{copied}"
    );
    assert_eq!(again["destinations"][0]["already_present"], true, "{again}");
    let remote_dir = Path::new(&remote);
    let restored = fx.path("restored.img");
    fx.ok_at(remote_dir, &["check", "--read-data"]);
    fx.ok_at(remote_dir, &["restore", &id, path_str(&restored)]);
    assert!(std::fs::read(&restored).expect("restored") == std::fs::read(&night1).expect("image"));
}

#[test]
fn an_image_exported_to_s3_imports_from_s3_to_the_same_blocks() {
    let Some(bucket) = bucket() else { return };
    let fx = Fixture::new();
    fx.init();
    let night1 = fx.ext4_image("night1.img", 32, 15);
    let id = fx.snapshot_id(&night1);
    let object = format!("{}/night1.vmdk", s3_url(&bucket, "export"));

    fx.ok(&[
        "export",
        &id,
        &object,
        "--format",
        "vmdk",
        "--subformat",
        "streamOptimized",
    ]);
    let imported = fx.json(&["import", &object, "--name", "night1-from-s3"]);

    let copy = field(&imported, "/snapshots/0/snapshot");
    let diff = fx.json(&["snapshot", "diff", &id, &copy]);
    assert_eq!(diff["changed"].as_array().map(Vec::len), Some(0), "{diff}");
}

#[test]
fn bake_fans_out_to_an_s3_region_and_a_runner_pulls_from_it() {
    let Some(bucket) = bucket() else { return };
    let fx = Fixture::new();
    fx.init();
    let (cloud, eu) = (s3_url(&bucket, "bake"), fx.path("eu"));
    for store in [cloud.as_str(), path_str(&eu)] {
        fx.ok(&["store", "init", store, "--like", path_str(&fx.store())]);
    }
    let config = format!(
        "[stores.home]\nurl = \"{}\"\n\n[stores.eu]\nurl = \"{}\"\n\n\
         [stores.cloud]\nurl = \"{}\"\n",
        fx.store().display(),
        eu.display(),
        cloud
    );
    std::fs::write(fx.path("blockyard.toml"), config).expect("config file");
    fx.ext4_image("base.img", 32, 16);
    let pipeline = "[[pipeline]]\nname = \"ci\"\nfamily = \"ci\"\nbase = \"ci@latest\"\n\
         first_import = { from = \"base.img\", format = \"raw\" }\n\
         command = [\"sh\", \"-c\", \"head -c 200000 /dev/urandom | \
         dd of={volume} bs=65536 seek=100 conv=notrunc && cp {volume} produced.img\"]\n\
         home = \"home\"\nregions = [\"eu\", \"cloud\"]\n";
    std::fs::write(fx.path("pipeline.toml"), pipeline).expect("pipeline file");

    for night in 1..=2 {
        let report = fx.json(&["bake", "pipeline.toml"]);
        let ci = &report["pipelines"][0];
        assert_eq!(ci["status"], "succeeded", "night {night}: {ci}");
        let cloud_run = ci["regions"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["store"] == "cloud"))
            .unwrap_or_else(|| panic!("no cloud region in {ci}"));
        assert_eq!(cloud_run["promoted"], true, "{cloud_run}");
        if night == 2 {
            // Four 64 KiB blocks were rewritten: they, and the records, are all that moves.
            let copied = cloud_run["blocks_copied"].as_u64().expect("blocks copied");
            assert!((1..=4).contains(&copied), "{cloud_run}");
        }
        let pulled = fx.path(&format!("pulled-{night}.img"));
        fx.ok(&["pull", "ci@latest", path_str(&pulled), "--from", "cloud"]);
        let produced = std::fs::read(fx.path("produced.img")).expect("produced");
        assert!(
            std::fs::read(&pulled).expect("pulled") == produced,
            "night {night}"
        );
    }
}

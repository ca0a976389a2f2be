//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/`.
//!
//! Most of the targets' interesting paths sit behind a checksum, a tag or a JSON shape that
//! mutation alone almost never finds; the seeds are valid inputs to start from. They are
//! made by the code under test and the fixtures in `src/lib.rs`, so they follow the format
//! as it is now rather than as it was when someone saved a file.
//!
//! Run from `fuzz/`: `cargo run --example seed_corpus`.

use std::fs;
use std::path::Path;

use blockyard_crypto::{KeyDomain, ObjectId, ObjectKind};
use blockyard_fuzz::{OpenInput, RecordFixture};
use blockyard_store::Segment;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (target, seeds) in seeds() {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        for (number, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{number:02}")), seed)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", corpus.display());
    Ok(())
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let fixture = blockyard_fuzz::runtime().block_on(RecordFixture::build());
    vec![
        ("segment_decode", segment_seeds()),
        ("envelope_parse", envelope_seeds()),
        ("envelope_open", open_seeds()),
        ("slot_unwrap", vec![blockyard_fuzz::slot_json()]),
        (
            "config_parse",
            vec![
                blockyard_fuzz::config_json(false, 4096, 4),
                blockyard_fuzz::config_json(true, 512 << 10, 4096),
            ],
        ),
        (
            "record_parse",
            vec![
                RecordFixture::record_json(&fixture.base),
                RecordFixture::record_json(&fixture.child),
                RecordFixture::record_json(&fixture.wide),
            ],
        ),
        ("block_decode", block_seeds()),
        ("raw_blocks", raw_seeds()),
    ]
}

fn segment_seeds() -> Vec<Vec<u8>> {
    let mut mixed = Segment::zeroed(11);
    mixed.set(0, Some(ObjectId::from_bytes([1; 32])));
    mixed.set(9, Some(ObjectId::from_bytes([2; 32])));
    let mut full = Segment::zeroed(8);
    for position in 0u8..8 {
        full.set(
            usize::from(position),
            Some(ObjectId::from_bytes([position; 32])),
        );
    }
    [Segment::zeroed(1), Segment::zeroed(4096), mixed, full]
        .iter()
        .map(Segment::encode)
        .collect()
}

/// A sealed envelope with what it was sealed as.
struct Sealed {
    kind: ObjectKind,
    encrypted: bool,
    compressed: bool,
    name: Vec<u8>,
    envelope: Vec<u8>,
}

/// Envelopes of every kind from both domains, and one sealed with data key 2.
fn sealed_envelopes() -> Vec<Sealed> {
    let mut out = Vec::new();
    for (letter, kind) in (b'a'..).zip(ObjectKind::ALL) {
        let number = usize::from(letter - b'a');
        for encrypted in [false, true] {
            let keys = blockyard_fuzz::key_domain(encrypted);
            let compressed = number % 2 == 1;
            let name = vec![letter; 32];
            let payload = b"a payload of a few bytes".repeat(number + 1);
            let envelope = keys.seal(kind, &name, &payload, compressed);
            out.push(Sealed {
                kind,
                encrypted,
                compressed,
                name,
                envelope,
            });
        }
    }

    let older_key = KeyDomain::new(
        blockyard_fuzz::domain_id(),
        &blockyard_fuzz::secret(),
        true,
        2,
    );
    let name = blockyard_fuzz::SNAPSHOT_ID.as_bytes().to_vec();
    let envelope = older_key.seal(ObjectKind::Snapshot, &name, b"{}", false);
    out.push(Sealed {
        kind: ObjectKind::Snapshot,
        encrypted: true,
        compressed: false,
        name,
        envelope,
    });
    out
}

fn envelope_seeds() -> Vec<Vec<u8>> {
    sealed_envelopes()
        .into_iter()
        .map(|sealed| sealed.envelope)
        .collect()
}

fn open_seeds() -> Vec<Vec<u8>> {
    sealed_envelopes()
        .iter()
        .map(|sealed| {
            let input = OpenInput {
                kind: sealed.kind,
                encrypted: sealed.encrypted,
                compressed: sealed.compressed,
                name: &sealed.name,
                envelope: &sealed.envelope,
            };
            input.join()
        })
        .collect()
}

/// zstd frames of a block, and the block itself named by its hash.
fn block_seeds() -> Vec<Vec<u8>> {
    let block: Vec<u8> = (0..4096u32).map(|i| (i / 64).to_le_bytes()[0]).collect();
    let frame = zstd::bulk::compress(&block, 1).expect("zstd compresses");
    let short = zstd::bulk::compress(b"a short block", 3).expect("zstd compresses");
    vec![
        [&[0b01][..], &frame].concat(),
        [&[0b01][..], &short].concat(),
        [&[0b10][..], &block].concat(),
    ]
}

fn raw_seeds() -> Vec<Vec<u8>> {
    let keep = (1u64 << 63).to_le_bytes();
    let three_blocks_and_a_bit = (3 * 4096 + 100u64).to_le_bytes();
    let sixty_four_mib = (64u64 << 20).to_le_bytes();
    vec![
        [&keep[..], b"hello, disk"].concat(),
        [&three_blocks_and_a_bit[..], &[0xab; 5000]].concat(),
        [&sixty_four_mib[..], &[0; 4096], &[1; 10]].concat(),
        b"short".to_vec(),
    ]
}

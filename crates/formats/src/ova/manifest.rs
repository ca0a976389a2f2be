//! The manifest: a digest per file of the package (DSP0243 §5.1 "Package").
//!
//! ```text
//!   SHA256(vm.ovf)= 3f2a...e9     one line per file: algorithm, file name, hex digest
//!   SHA1(disk1.vmdk)= 8c1d...02   SHA1, SHA256 and SHA512 are written by ovftool
//! ```
//!
//! Only the descriptor's digest is checked: it is in memory anyway. Checking a disk's would
//! mean reading every byte of it up front, while importing reads only the parts the disk
//! format says hold data.

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::FormatError;

/// Bytes of manifest read into memory. A line is about 100 bytes and packages hold a handful
/// of files.
pub const MAX_MANIFEST_LEN: u64 = 1024 * 1024;

/// The format's name in errors.
const FORMAT: &str = "OVA";

/// A digest algorithm a manifest line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Self::Sha1),
            "SHA256" => Some(Self::Sha256),
            "SHA512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => Sha1::digest(bytes).to_vec(),
            Self::Sha256 => Sha256::digest(bytes).to_vec(),
            Self::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }
}

/// One line of the manifest.
#[derive(Debug)]
struct Line<'a> {
    algorithm: &'a str,
    file: &'a str,
    hex: &'a str,
    /// Offset of the line within the manifest.
    at: usize,
}

/// Checks the descriptor `descriptor`, named `descriptor_name` in the archive, against the
/// manifest `manifest`, the member `manifest_name` at offset `base` of `archive`.
///
/// A manifest that lists no digest for the descriptor, or a wrong one, is refused: either
/// the descriptor was edited after the package was made, or the manifest belongs to another.
pub(super) fn verify_descriptor(
    manifest: &[u8],
    manifest_name: &str,
    archive: &str,
    base: u64,
    descriptor: &[u8],
    descriptor_name: &str,
) -> Result<(), FormatError> {
    let corrupt = |field: &'static str, at: usize, problem: String| FormatError::Corrupt {
        format: FORMAT,
        name: archive.to_owned(),
        field,
        offset: base.saturating_add(at as u64),
        problem: format!("manifest {manifest_name}: {problem}"),
    };
    let text = std::str::from_utf8(manifest)
        .map_err(|e| corrupt("manifest", e.valid_up_to(), "it is not UTF-8 text".into()))?;

    // Names in the manifest are the descriptor's href-style name: its last path component.
    let short_name = descriptor_name
        .rsplit('/')
        .next()
        .unwrap_or(descriptor_name);
    let mut found = None;
    for line in lines(text) {
        let line = line.map_err(|(at, problem)| corrupt("manifest line", at, problem))?;
        if line.file == descriptor_name || line.file == short_name {
            if found.is_some() {
                let problem = format!("the descriptor {descriptor_name} is listed twice");
                return Err(corrupt("manifest line", line.at, problem));
            }
            found = Some(line);
        }
    }
    let Some(line) = found else {
        let problem = format!("no digest is listed for the descriptor {descriptor_name}");
        return Err(corrupt("manifest", 0, problem));
    };

    let Some(algorithm) = Algorithm::from_name(line.algorithm) else {
        return Err(FormatError::Unsupported {
            format: FORMAT,
            name: archive.to_owned(),
            feature: format!(
                "the manifest's {} digest of the descriptor {descriptor_name}",
                line.algorithm
            ),
            advice: "re-create the manifest with SHA256 digests (sha256sum, or ovftool)",
        });
    };
    let expected = decode_hex(line.hex).ok_or_else(|| {
        corrupt(
            "manifest digest",
            line.at,
            format!("{:?} is not hex", line.hex),
        )
    })?;
    let actual = algorithm.digest(descriptor);
    if expected != actual {
        let problem = format!(
            "the descriptor {descriptor_name} has {} digest {}, not {}; it was changed after \
             the manifest was written",
            line.algorithm,
            encode_hex(&actual),
            line.hex
        );
        return Err(corrupt("manifest digest", line.at, problem));
    }
    Ok(())
}

/// The manifest's lines, each `ALGORITHM(file)= hex`, blank lines skipped. An error carries
/// the offending line's offset and the problem.
fn lines(text: &str) -> impl Iterator<Item = Result<Line<'_>, (usize, String)>> {
    let mut at = 0usize;
    text.split_inclusive('\n').filter_map(move |raw| {
        let line_at = at;
        at += raw.len();
        let line = raw.trim();
        if line.is_empty() {
            return None;
        }
        let parsed = line.split_once('(').and_then(|(algorithm, rest)| {
            let (file, hex) = rest.rsplit_once(")=")?;
            Some(Line {
                algorithm: algorithm.trim(),
                file: file.trim(),
                hex: hex.trim(),
                at: line_at,
            })
        });
        Some(parsed.ok_or_else(|| (line_at, format!("{line:?} is not ALGORITHM(file)= digest"))))
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &[u8] = b"<Envelope/>";

    fn manifest(algorithm: &str, digest: &[u8]) -> String {
        format!(
            "SHA1(disk.vmdk)= 00\n{algorithm}(vm.ovf)= {}\n",
            encode_hex(digest)
        )
    }

    #[test]
    fn descriptor_digests_of_each_algorithm_verify() {
        for (name, algorithm) in [
            ("SHA1", Algorithm::Sha1),
            ("SHA256", Algorithm::Sha256),
            ("SHA512", Algorithm::Sha512),
        ] {
            let text = manifest(name, &algorithm.digest(OVF));
            verify_descriptor(text.as_bytes(), "vm.mf", "x.ova", 0, OVF, "vm.ovf")
                .expect("matching digest");
        }
    }

    #[test]
    fn a_wrong_or_missing_descriptor_digest_is_refused() {
        let text = manifest("SHA256", &[0u8; 32]);
        let err = verify_descriptor(text.as_bytes(), "vm.mf", "x.ova", 0, OVF, "vm.ovf")
            .expect_err("wrong digest");
        assert!(err.to_string().contains("manifest digest"), "{err}");

        let err = verify_descriptor(b"SHA1(other)= 00\n", "vm.mf", "x.ova", 0, OVF, "vm.ovf")
            .expect_err("missing");
        assert!(err.to_string().contains("no digest"), "{err}");

        let err = verify_descriptor(b"garbage\n", "vm.mf", "x.ova", 0, OVF, "vm.ovf")
            .expect_err("malformed");
        assert!(err.to_string().contains("manifest line"), "{err}");
    }
}

//! What a garbage-collection run has condemned, and the objects through which writers and
//! the run coordinate without locks.
//!
//! ```text
//! gc/runs/<run>/condemned-<n>         sorted ids of blocks or segments the run may delete
//! gc/runs/<run>/marked                written after every list: from now on the run exists
//! gc/runs/<run>/revived/<kind>-<id>   a writer is about to depend on this condemned object
//! gc/runs/<run>/sweeping              the run has started deleting (refreshed while it does)
//! gc/runs/<run>/done                  the run deleted what it would; writers ignore it
//! gc/expired/<session>                gc judged this session dead; it must not commit
//! ```
//!
//! A list is binary and checksummed: magic `BYGC`, version 1, the kind (1 block, 2
//! segment), two reserved bytes, the id count (u32 LE), the ids, then BLAKE3 of all that.
//! See `docs/architecture.md` ("Garbage collection") for the protocol.

use std::collections::BTreeMap;

use blockyard_crypto::ObjectId;
use bytes::{BufMut, Bytes, BytesMut};
use object_store::path::Path;

use crate::error::{Result, StoreError};
use crate::raw::{RawStore, store_second};

const MAGIC: &[u8; 4] = b"BYGC";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 12;
const CHECKSUM_LEN: usize = 32;

/// Ids in one list object: 2 MiB of ids, so that no read of a list is unbounded.
pub(crate) const IDS_PER_LIST: usize = 65_536;

/// What a condemned id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// A block.
    Block = 1,
    /// A manifest segment.
    Segment = 2,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Self::Block => 'b',
            Self::Segment => 's',
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Block),
            2 => Some(Self::Segment),
            _ => None,
        }
    }
}

/// The folder holding every run.
pub(crate) fn runs() -> Path {
    Path::from("gc/runs")
}

fn run_path(run: &str, name: &str) -> Path {
    Path::from(format!("gc/runs/{run}/{name}"))
}

pub(crate) fn list_path(run: &str, number: usize) -> Path {
    run_path(run, &format!("condemned-{number:06}"))
}

pub(crate) fn marked_path(run: &str) -> Path {
    run_path(run, "marked")
}

pub(crate) fn sweeping_path(run: &str) -> Path {
    run_path(run, "sweeping")
}

pub(crate) fn done_path(run: &str) -> Path {
    run_path(run, "done")
}

pub(crate) fn revived_folder(run: &str) -> Path {
    run_path(run, "revived")
}

pub(crate) fn revived_path(run: &str, kind: Kind, id: &ObjectId) -> Path {
    run_path(run, &format!("revived/{}-{}", kind.letter(), id.to_hex()))
}

/// The tombstone of a session judged dead.
pub(crate) fn expired_path(session: &str) -> Path {
    Path::from(format!("gc/expired/{session}"))
}

/// The kind and id a revived marker's name gives.
pub(crate) fn parse_revived(name: &str) -> Option<(Kind, ObjectId)> {
    let (letter, hex) = name.split_once('-')?;
    let kind = match letter {
        "b" => Kind::Block,
        "s" => Kind::Segment,
        _ => return None,
    };
    Some((kind, hex.parse().ok()?))
}

/// Encodes one list of condemned ids.
pub(crate) fn encode_list(kind: Kind, ids: &[ObjectId]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + ids.len() * 32 + CHECKSUM_LEN);
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u16_le(0);
    out.put_u32_le(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for id in ids {
        out.put_slice(id.as_bytes());
    }
    let checksum = blake3::hash(&out);
    out.put_slice(checksum.as_bytes());
    out.freeze()
}

/// Decodes one list, checking its form, its size against the limit and its checksum.
pub(crate) fn decode_list(bytes: &[u8]) -> std::result::Result<(Kind, Vec<ObjectId>), String> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(format!("{} bytes is too short for a list", bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err("it does not start with BYGC".to_owned());
    }
    if bytes[4] != VERSION {
        return Err(format!(
            "list version {} is not one this blockyard knows",
            bytes[4]
        ));
    }
    let kind = Kind::from_byte(bytes[5]).ok_or_else(|| format!("unknown kind {}", bytes[5]))?;
    let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if count > IDS_PER_LIST {
        return Err(format!(
            "it claims {count} ids; a list holds at most {IDS_PER_LIST}"
        ));
    }
    let body_len = HEADER_LEN + count * 32;
    if bytes.len() != body_len + CHECKSUM_LEN {
        return Err(format!(
            "{} ids need {} bytes; it has {}",
            count,
            body_len + CHECKSUM_LEN,
            bytes.len()
        ));
    }
    if blake3::hash(&bytes[..body_len]).as_bytes() != &bytes[body_len..] {
        return Err("its checksum does not match".to_owned());
    }
    let ids = bytes[HEADER_LEN..body_len]
        .chunks_exact(32)
        .map(|chunk| {
            let mut id = [0u8; 32];
            id.copy_from_slice(chunk);
            ObjectId::from_bytes(id)
        })
        .collect();
    Ok((kind, ids))
}

/// What one run condemned, each list sorted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Condemned {
    pub(crate) blocks: Vec<ObjectId>,
    pub(crate) segments: Vec<ObjectId>,
}

impl Condemned {
    pub(crate) fn contains(&self, kind: Kind, id: &ObjectId) -> bool {
        let ids = match kind {
            Kind::Block => &self.blocks,
            Kind::Segment => &self.segments,
        };
        ids.binary_search(id).is_ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.segments.is_empty()
    }
}

/// The state of every run found under `gc/runs/`, by run name.
#[derive(Debug, Default)]
pub(crate) struct RunState {
    pub(crate) lists: usize,
    pub(crate) marked: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) sweeping: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) done: bool,
    /// The newest write of any of its objects.
    pub(crate) newest: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every run in the store, from one listing of `gc/runs/`, revived markers left out.
pub(crate) async fn run_states(raw: &RawStore) -> Result<BTreeMap<String, RunState>> {
    let mut states: BTreeMap<String, RunState> = BTreeMap::new();
    for meta in raw.list(&runs()).await? {
        let mut parts = meta.location.parts();
        let (Some(_gc), Some(_runs), Some(run), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let state = states.entry(run.as_ref().to_owned()).or_default();
        let written = store_second(meta.last_modified);
        state.newest = state.newest.max(Some(written));
        match name.as_ref() {
            "marked" => state.marked = Some(written),
            "sweeping" => state.sweeping = Some(written),
            "done" => state.done = true,
            other if other.starts_with("condemned-") => state.lists += 1,
            _ => {}
        }
    }
    Ok(states)
}

/// Reads every list of `run`; `lists` is how many the run wrote.
pub(crate) async fn read_condemned(raw: &RawStore, run: &str, lists: usize) -> Result<Condemned> {
    let mut condemned = Condemned::default();
    for number in 0..lists {
        let path = list_path(run, number);
        let bytes = raw.get(&path).await?.ok_or_else(|| StoreError::Corrupt {
            what: "gc list",
            name: path.to_string(),
            reason: "the run is marked but this list is missing".to_owned(),
        })?;
        let (kind, ids) = decode_list(&bytes).map_err(|reason| StoreError::Corrupt {
            what: "gc list",
            name: path.to_string(),
            reason,
        })?;
        match kind {
            Kind::Block => condemned.blocks.extend(ids),
            Kind::Segment => condemned.segments.extend(ids),
        }
    }
    condemned.blocks.sort_unstable();
    condemned.segments.sort_unstable();
    Ok(condemned)
}

/// The revived markers of a run.
pub(crate) async fn revived(raw: &RawStore, run: &str) -> Result<Vec<(Kind, ObjectId)>> {
    Ok(raw
        .list(&revived_folder(run))
        .await?
        .iter()
        .filter_map(|meta| parse_revived(meta.location.filename()?))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> ObjectId {
        ObjectId::from_bytes([byte; 32])
    }

    #[test]
    fn lists_round_trip() {
        let ids = vec![id(1), id(2), id(9)];
        let bytes = encode_list(Kind::Segment, &ids);
        assert_eq!(decode_list(&bytes).expect("decodes"), (Kind::Segment, ids));
    }

    #[test]
    fn damaged_lists_are_refused() {
        let bytes = encode_list(Kind::Block, &[id(1), id(2)]).to_vec();
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(
            decode_list(&flipped)
                .expect_err("flipped")
                .contains("checksum")
        );
        assert!(decode_list(&bytes[..bytes.len() - 1]).is_err());
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_list(&huge).expect_err("huge").contains("at most"));
        let mut kind = bytes;
        kind[5] = 7;
        assert!(decode_list(&kind).expect_err("kind").contains("kind"));
        assert!(decode_list(b"short").is_err());
    }

    #[test]
    fn revived_names_parse() {
        let name = format!("b-{}", id(3).to_hex());
        assert_eq!(parse_revived(&name), Some((Kind::Block, id(3))));
        assert_eq!(parse_revived("x-00"), None);
        assert_eq!(parse_revived("s-zz"), None);
    }
}

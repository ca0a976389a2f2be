//! L1 and L2 entries, and the cache of L2 tables a reader keeps.
//!
//! ```text
//!  L1 entry   63: refcount is one   56-62: reserved   9-55: L2 table offset   0-8: reserved
//!
//!  L2 entry   63: refcount is one   62: compressed
//!   standard    56-61: reserved   9-55: host cluster offset   1-8: reserved   0: zero flag
//!   compressed  x-61: extra 512-byte sectors   0-(x-1): host byte offset
//!               where x = 62 - (cluster_bits - 8)
//!
//!  extended L2 bitmap (second u64)   32-63: subcluster reads as zeros   0-31: allocated
//! ```

use std::collections::HashMap;

/// Bits 9-55 of an L1 entry or a standard L2 entry: the offset of an L2 table or of a host
/// cluster (spec "Cluster mapping").
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// L2 entry bit 63: the cluster's refcount is one. With an external data file it also
/// marks a cluster at host offset 0 as allocated.
pub(super) const COPIED: u64 = 1 << 63;

/// L2 entry bit 62: the cluster is compressed.
pub(super) const COMPRESSED: u64 = 1 << 62;

/// Standard cluster descriptor bit 0: the cluster reads as zeros (version 3 only).
pub(super) const ZERO_FLAG: u64 = 1;

/// Subclusters per cluster with extended L2 entries (spec "Extended L2 Entries").
pub(super) const SUBCLUSTERS: u64 = 32;

/// The unit compressed lengths count in (spec "Compressed Clusters Descriptor").
pub(super) const SECTOR: u64 = 512;

/// Host offsets lie below 2^56 (spec "Cluster mapping").
const HOST_OFFSET_LIMIT: u64 = 1 << 56;

/// Memory the L2 cache may hold, in bytes. 16 MiB of 64 KiB tables maps 128 GiB of disk,
/// enough that a sequential read loads each table once.
const L2_CACHE_BYTES: u64 = 16 << 20;

/// Fewest tables the cache keeps, whatever the cluster size: a read that crosses from one
/// table into the next needs both.
const MIN_L2_CACHE_TABLES: u64 = 2;

/// Most tables the cache keeps: eviction scans them all, so small clusters must not make
/// the cache long.
const MAX_L2_CACHE_TABLES: u64 = 1024;

/// What the image says about the files a guest cluster may point into.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    /// log2 of the cluster size.
    pub(super) cluster_bits: u32,
    /// The header's version: the zero flag exists from version 3.
    pub(super) version: u32,
    /// L2 entries carry subcluster bitmaps.
    pub(super) extended_l2: bool,
    /// Guest clusters live in an external data file, at their guest offsets.
    pub(super) external_data: bool,
    /// Length of the image file: L2 tables and compressed data lie in it.
    pub(super) image_len: u64,
    /// Length of the file holding normal clusters: the image, or the external data file.
    pub(super) data_len: u64,
}

/// What one guest cluster holds, as its L2 entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cluster {
    /// Nothing: read the backing file, or zeros without one.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored whole at `host` in the data file.
    Normal {
        /// Host offset of the cluster.
        host: u64,
    },
    /// Compressed, `len` bytes at `host` in the image file (the last sector may be short).
    Compressed {
        /// Host byte offset of the compressed data.
        host: u64,
        /// Bytes the entry covers from `host`, to the end of its last sector.
        len: u64,
    },
    /// Extended L2 entries: each subcluster is allocated (at `host` plus its offset), zero
    /// or unallocated.
    Subclusters {
        /// Host offset of the cluster, if it has one.
        host: Option<u64>,
        /// Bit n: subcluster n is allocated.
        allocated: u32,
        /// Bit n: subcluster n reads as zeros.
        zero: u32,
    },
}

impl Geometry {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The L2 table an L1 entry points to, or `None` if it points to none. The error is the
    /// problem with the entry.
    pub(super) fn l2_table_offset(&self, entry: u64) -> Result<Option<u64>, String> {
        let offset = entry & OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        let cluster_size = self.cluster_size();
        if !offset.is_multiple_of(cluster_size) {
            return Err(format!(
                "L2 table offset {offset} is not a multiple of the cluster size {cluster_size}"
            ));
        }
        if offset.saturating_add(cluster_size) > self.image_len {
            return Err(format!(
                "L2 table at {offset} runs past the end of the {}-byte file",
                self.image_len
            ));
        }
        Ok(Some(offset))
    }

    /// Decodes the L2 entry (and, with extended L2 entries, the bitmap) of the guest
    /// cluster at `guest`. The error is the problem with the entry.
    pub(super) fn cluster(&self, entry: u64, bitmap: u64, guest: u64) -> Result<Cluster, String> {
        if entry & COMPRESSED != 0 {
            return self.compressed(entry);
        }
        let host = entry & OFFSET_MASK;
        // With an external data file, bit 63 marks an allocated cluster even at offset 0.
        let allocated = host != 0 || (self.external_data && entry & COPIED != 0);

        if !self.extended_l2 {
            if entry & ZERO_FLAG != 0 {
                if self.version < 3 {
                    return Err("the zero flag is set in a version 2 image".to_owned());
                }
                return Ok(Cluster::Zero);
            }
            if !allocated {
                return Ok(Cluster::Unallocated);
            }
            self.check_host(host, guest)?;
            return Ok(Cluster::Normal { host });
        }

        // The low half of the bitmap marks allocated subclusters, the high half zero ones.
        let [z0, z1, z2, z3, a0, a1, a2, a3] = bitmap.to_be_bytes();
        let alloc_bits = u32::from_be_bytes([a0, a1, a2, a3]);
        let zero_bits = u32::from_be_bytes([z0, z1, z2, z3]);
        if alloc_bits & zero_bits != 0 {
            return Err(format!(
                "subclusters {:#010x} are marked both allocated and zero",
                alloc_bits & zero_bits
            ));
        }
        if !allocated {
            if alloc_bits != 0 {
                return Err(format!(
                    "subclusters {alloc_bits:#010x} are allocated in a cluster with no host \
                     offset"
                ));
            }
            return Ok(match zero_bits {
                0 => Cluster::Unallocated,
                u32::MAX => Cluster::Zero,
                _ => Cluster::Subclusters {
                    host: None,
                    allocated: 0,
                    zero: zero_bits,
                },
            });
        }
        self.check_host(host, guest)?;
        Ok(match (alloc_bits, zero_bits) {
            (u32::MAX, _) => Cluster::Normal { host },
            (0, u32::MAX) => Cluster::Zero,
            (0, 0) => Cluster::Unallocated,
            _ => Cluster::Subclusters {
                host: Some(host),
                allocated: alloc_bits,
                zero: zero_bits,
            },
        })
    }

    /// A compressed cluster descriptor (spec "Compressed Clusters Descriptor").
    fn compressed(&self, entry: u64) -> Result<Cluster, String> {
        if self.external_data {
            return Err("a compressed cluster in an image with an external data file".into());
        }
        // cluster_bits is 9 to 21, so the sector count has 1 to 13 bits below bit 62.
        let sector_bits = self.cluster_bits - 8;
        let offset_bits = 62 - sector_bits;
        let host = entry & ((1u64 << offset_bits) - 1);
        let extra_sectors = (entry >> offset_bits) & ((1u64 << sector_bits) - 1);
        if host >= HOST_OFFSET_LIMIT {
            return Err(format!(
                "compressed data offset {host} is not below 2^56; its high bits must be zero"
            ));
        }
        if host >= self.image_len {
            return Err(format!(
                "compressed data at {host} lies past the end of the {}-byte file",
                self.image_len
            ));
        }
        let len = (extra_sectors + 1) * SECTOR - (host % SECTOR);
        Ok(Cluster::Compressed { host, len })
    }

    /// Checks the host offset of a normal cluster.
    fn check_host(&self, host: u64, guest: u64) -> Result<(), String> {
        let cluster_size = self.cluster_size();
        if !host.is_multiple_of(cluster_size) {
            return Err(format!(
                "host offset {host} is not a multiple of the cluster size {cluster_size}"
            ));
        }
        if self.external_data && host != guest {
            return Err(format!(
                "host offset {host} in the external data file differs from the guest offset \
                 {guest}"
            ));
        }
        if host >= self.data_len {
            return Err(format!(
                "host cluster {host} lies past the end of the {}-byte {}",
                self.data_len,
                if self.external_data {
                    "external data file"
                } else {
                    "file"
                }
            ));
        }
        Ok(())
    }
}

/// The L2 tables a reader loaded last, evicting the least recently used.
#[derive(Debug)]
pub(super) struct L2Cache {
    tables: HashMap<u64, CachedTable>,
    capacity: usize,
    clock: u64,
}

#[derive(Debug)]
struct CachedTable {
    /// The table's u64 words in host order: entries, or entry and bitmap pairs.
    words: Vec<u64>,
    last_used: u64,
}

impl L2Cache {
    /// A cache for tables of `cluster_size` bytes.
    pub(super) fn new(cluster_size: u64) -> Self {
        let capacity =
            (L2_CACHE_BYTES / cluster_size).clamp(MIN_L2_CACHE_TABLES, MAX_L2_CACHE_TABLES);
        Self {
            tables: HashMap::new(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            clock: 0,
        }
    }

    /// Whether the table at `offset` is loaded.
    pub(super) fn contains(&self, offset: u64) -> bool {
        self.tables.contains_key(&offset)
    }

    /// Word `index` of the table at `offset`, if the table is loaded.
    pub(super) fn word(&mut self, offset: u64, index: usize) -> Option<u64> {
        self.clock += 1;
        let table = self.tables.get_mut(&offset)?;
        table.last_used = self.clock;
        table.words.get(index).copied()
    }

    /// Keeps the table read from `offset`, making room if the cache is full.
    pub(super) fn insert(&mut self, offset: u64, bytes: &[u8]) {
        if self.tables.len() >= self.capacity {
            let oldest = self
                .tables
                .iter()
                .min_by_key(|(_, table)| table.last_used)
                .map(|(&offset, _)| offset);
            if let Some(oldest) = oldest {
                self.tables.remove(&oldest);
            }
        }
        let words = bytes
            .chunks_exact(8)
            .map(|word| {
                let mut be = [0u8; 8];
                be.copy_from_slice(word);
                u64::from_be_bytes(be)
            })
            .collect();
        self.clock += 1;
        self.tables.insert(
            offset,
            CachedTable {
                words,
                last_used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(cluster_bits: u32, extended_l2: bool) -> Geometry {
        Geometry {
            cluster_bits,
            version: 3,
            extended_l2,
            external_data: false,
            image_len: 1 << 30,
            data_len: 1 << 30,
        }
    }

    #[test]
    fn compressed_descriptors_split_at_the_cluster_size_dependent_bit() {
        // 64 KiB clusters: x = 62 - 8 = 54; offset 1000 plus 3 extra sectors.
        let g = geometry(16, false);
        let entry = COMPRESSED | (3u64 << 54) | 1000;
        assert_eq!(
            g.cluster(entry, 0, 0),
            Ok(Cluster::Compressed {
                host: 1000,
                len: 4 * 512 - 1000 % 512
            })
        );
    }

    #[test]
    fn extended_entries_with_mixed_subclusters_keep_their_bitmaps() {
        let g = geometry(16, true);
        let entry = 5 << 16;
        assert_eq!(
            g.cluster(entry, 0x0000_0002_0000_0001, 0),
            Ok(Cluster::Subclusters {
                host: Some(5 << 16),
                allocated: 1,
                zero: 2
            })
        );
        assert!(g.cluster(entry, 0x0000_0001_0000_0001, 0).is_err());
        assert!(g.cluster(0, 1, 0).is_err());
        assert_eq!(g.cluster(0, 0xffff_ffff_0000_0000, 0), Ok(Cluster::Zero));
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_table() {
        let mut cache = L2Cache::new(L2_CACHE_BYTES);
        assert_eq!(cache.capacity, 2);
        cache.insert(1, &[0, 0, 0, 0, 0, 0, 0, 7]);
        cache.insert(2, &[0; 8]);
        assert_eq!(cache.word(1, 0), Some(7));
        cache.insert(3, &[0; 8]);
        assert!(cache.contains(1) && cache.contains(3) && !cache.contains(2));
    }
}

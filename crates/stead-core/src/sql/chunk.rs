//! How a database chunk is stored: whole, or with its longest run of zero bytes left out.
//!
//! A b-tree page keeps its header and cell pointers at the start and its cells at the end,
//! with free space between; freed space is zeroed (`secure_delete`). A page of a small
//! table is mostly that gap, so leaving it out stores a few hundred bytes instead of 4 KiB,
//! and the backend's row stays small.
//!
//! A stored chunk is either the chunk itself (exactly [`CHUNK`] bytes) or, shorter:
//! the gap's offset and length (two little-endian `u16`s), then the bytes before the gap,
//! then the bytes after it.

use std::borrow::Cow;

use super::vfs::CHUNK;

/// Gaps shorter than this are kept: leaving them out would save too little.
const MIN_GAP: usize = 64;

/// The chunk as stored.
pub(crate) fn encode(chunk: &[u8]) -> Cow<'_, [u8]> {
    debug_assert_eq!(chunk.len(), CHUNK);
    let (at, len) = longest_zero_run(chunk);
    if len < MIN_GAP {
        return Cow::Borrowed(chunk);
    }
    let mut out = Vec::with_capacity(4 + CHUNK - len);
    out.extend_from_slice(&(at as u16).to_le_bytes());
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&chunk[..at]);
    out.extend_from_slice(&chunk[at + len..]);
    Cow::Owned(out)
}

/// The chunk a stored value holds, or `None` if it is not one this module wrote.
pub(crate) fn decode(stored: &[u8]) -> Option<Cow<'_, [u8]>> {
    if stored.len() == CHUNK {
        return Some(Cow::Borrowed(stored));
    }
    if stored.len() < 4 {
        return None;
    }
    let at = usize::from(u16::from_le_bytes([stored[0], stored[1]]));
    let len = usize::from(u16::from_le_bytes([stored[2], stored[3]]));
    let rest = &stored[4..];
    if at > rest.len() || rest.len() + len != CHUNK {
        return None;
    }
    let mut out = Vec::with_capacity(CHUNK);
    out.extend_from_slice(&rest[..at]);
    out.resize(at + len, 0);
    out.extend_from_slice(&rest[at..]);
    Some(Cow::Owned(out))
}

/// Where the longest run of zero bytes starts, and its length. Eight bytes at a time: a
/// word of zeros extends the run, a word without a zero byte ends it, and only words with
/// both are looked at byte by byte.
fn longest_zero_run(b: &[u8]) -> (usize, usize) {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let (mut best_at, mut best_len) = (0, 0);
    let (mut at, mut len) = (0, 0);
    let mut end_run = |at: usize, len: usize| {
        if len > best_len {
            (best_at, best_len) = (at, len);
        }
    };
    for (w, word) in b.chunks_exact(8).enumerate() {
        let x = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
        let i = w * 8;
        if x == 0 {
            if len == 0 {
                at = i;
            }
            len += 8;
        } else if x.wrapping_sub(LOW) & !x & HIGH == 0 {
            end_run(at, len);
            len = 0;
        } else {
            for (j, &byte) in word.iter().enumerate() {
                if byte == 0 {
                    if len == 0 {
                        at = i + j;
                    }
                    len += 1;
                } else {
                    end_run(at, len);
                    len = 0;
                }
            }
        }
    }
    for (j, &byte) in b.chunks_exact(8).remainder().iter().enumerate() {
        let i = b.len() / 8 * 8 + j;
        if byte == 0 {
            if len == 0 {
                at = i;
            }
            len += 1;
        } else {
            end_run(at, len);
            len = 0;
        }
    }
    end_run(at, len);
    (best_at, best_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip() {
        let mut page = vec![0u8; CHUNK];
        page[..12].copy_from_slice(b"header+ptrs.");
        page[CHUNK - 20..].copy_from_slice(&[7; 20]);
        let stored = encode(&page);
        assert_eq!(stored.len(), 4 + 12 + 20);
        assert_eq!(decode(&stored).unwrap(), &page[..]);
        // Without a long gap, the chunk is stored whole.
        let full: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8 | 1).collect();
        assert!(matches!(encode(&full), Cow::Borrowed(_)));
        assert_eq!(decode(&encode(&full)).unwrap(), &full[..]);
        // All zeros, and a gap at either end.
        for page in [
            vec![0u8; CHUNK],
            {
                let mut p = vec![0u8; CHUNK];
                p[0] = 1;
                p
            },
            {
                let mut p = vec![0u8; CHUNK];
                p[CHUNK - 1] = 1;
                p
            },
        ] {
            assert_eq!(decode(&encode(&page)).unwrap(), &page[..]);
        }
        // Runs of every length at every offset are found.
        for start in [0, 1, 7, 8, 9, 100, 4000] {
            for len in [64, 65, 71, 72, 96 - (start % 8)] {
                if start + len > CHUNK {
                    continue;
                }
                let mut p = vec![1u8; CHUNK];
                p[start..start + len].fill(0);
                p[3000] = 0; // a shorter run elsewhere
                assert_eq!(longest_zero_run(&p), (start, len), "{start} {len}");
                assert_eq!(decode(&encode(&p)).unwrap(), &p[..]);
            }
        }
        // Values that are not stored chunks are refused.
        assert!(decode(&[1, 2]).is_none());
        assert!(decode(&[0, 0, 0, 0, 9]).is_none());
        assert!(decode(&[255, 255, 0, 16, 1, 2, 3]).is_none());
    }
}

//! Incremental Internet checksum updates (RFC 1624, eqn. 3):
//! `HC' = ~(~HC + ~m + m')` over the 16-bit words that changed.
//!
//! Values are big-endian byte arrays as they sit in the packet; the checksum
//! is the field's value read big-endian.

/// Returns the checksum after the bytes `old` became `new` in the covered
/// data. `N` must be even (whole 16-bit words).
#[inline(always)]
pub fn update<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = u32::from(!check);
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// Adds `data`'s 16-bit words to the ones' complement sum `sum` (fold it
/// with [`fold`] at the end; 32 bits hold the sum of thousands of words).
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, data: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    sum
}

/// Folds a 32-bit ones' complement sum into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The seed a TCP or UDP checksum field holds while the checksum itself is
/// left to the NIC or to segmentation (Linux's `CHECKSUM_PARTIAL`, which
/// every GSO packet is): the ones' complement sum of the pseudo-header,
/// folded, not complemented. `src` and `dst` are IPv4-mapped for IPv4;
/// `l4_len` is the TCP or UDP length (header and payload, all segments).
#[inline(always)]
pub fn partial_seed(src: &[u8; 16], dst: &[u8; 16], ipv6: bool, proto: u8, l4_len: u32) -> u16 {
    let mut sum = u32::from(proto) + (l4_len >> 16) + (l4_len & 0xffff);
    if ipv6 {
        sum = add_words(sum, src);
        sum = add_words(sum, dst);
    } else {
        sum = add_words(sum, &[src[12], src[13], src[14], src[15]]);
        sum = add_words(sum, &[dst[12], dst[13], dst[14], dst[15]]);
    }
    fold(sum)
}

/// The checksum of `data` from scratch (for tests and fixtures).
pub fn compute(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum = u32::from(fold(sum + u32::from(word)));
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte stream for test data.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        (0..n as u64)
            .map(|i| (crate::hash::mix64(seed ^ i) >> 7) as u8)
            .collect()
    }

    #[test]
    fn incremental_update_matches_recompute() {
        for seed in 0..500u64 {
            let mut data = bytes(seed, 40);
            data[10..12].copy_from_slice(&[0, 0]); // the checksum field
            let check = compute(&data);
            data[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(compute(&data), 0, "a correct checksum sums to zero");

            let old: [u8; 16] = data[20..36].try_into().unwrap();
            let new: [u8; 16] = bytes(seed + 1000, 16).try_into().unwrap();
            let updated = update(check, &old, &new);
            data[20..36].copy_from_slice(&new);
            data[10..12].copy_from_slice(&[0, 0]);
            let recomputed = compute(&data);
            // 0x0000 and 0xffff are the same value in ones' complement.
            assert!(
                updated == recomputed
                    || (updated == 0xffff && recomputed == 0)
                    || (updated == 0 && recomputed == 0xffff),
                "seed {seed}: {updated:#06x} != {recomputed:#06x}"
            );
        }
    }

    /// A NIC completes a partial checksum by summing the segment with the
    /// seed in the field: the result must be the segment's full checksum.
    #[test]
    fn a_partial_seed_completes_to_the_full_checksum() {
        for (seed, ipv6) in (0..200u64).map(|s| (s, s % 2 == 1)) {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&bytes(seed, 16));
            dst.copy_from_slice(&bytes(seed + 7, 16));
            let mut segment = bytes(seed + 13, 20 + (seed as usize % 1400));
            segment[16..18].copy_from_slice(&[0, 0]); // the TCP checksum field
            let len = segment.len() as u32;
            let mut pseudo = Vec::new();
            if ipv6 {
                pseudo.extend_from_slice(&src);
                pseudo.extend_from_slice(&dst);
                pseudo.extend_from_slice(&len.to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 6]);
            } else {
                pseudo.extend_from_slice(&src[12..]);
                pseudo.extend_from_slice(&dst[12..]);
                pseudo.extend_from_slice(&[0, 6]);
                pseudo.extend_from_slice(&(len as u16).to_be_bytes());
            }
            let full = compute(&[pseudo, segment.clone()].concat());
            let seed_value = partial_seed(&src, &dst, ipv6, 6, len);
            segment[16..18].copy_from_slice(&seed_value.to_be_bytes());
            if segment.len() % 2 == 1 {
                segment.push(0);
            }
            assert_eq!(compute(&segment), full, "seed {seed}, ipv6 {ipv6}");
        }
    }

    #[test]
    fn known_ipv4_header() {
        // Example header from RFC 1071-style walkthroughs (checksum 0xb861).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(compute(&header), 0xb861);
    }
}

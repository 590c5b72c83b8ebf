//! Hashing shared by the data plane and the table builder.

/// 64-bit hash of `bytes` with `seed`: FNV-1a over the bytes, finished with
/// the SplitMix64 mixer so every input bit reaches every output bit.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The draw a new flow's backend search makes after `draw` when that pick
/// was out (the first draw is the flow's hash): see
/// [`NEW_FLOW_PICKS`](crate::service::NEW_FLOW_PICKS).
#[inline(always)]
pub const fn next_draw(draw: u32) -> u32 {
    (mix64(draw as u64) >> 32) as u32
}

/// SplitMix64 finalizer.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

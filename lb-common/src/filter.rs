//! The address filter (`ADDRESS_ROLES`): what lets a frame that is neither
//! for a service nor a backend's reply skip both map lookups.
//!
//! Each address hashes to one of [`ADDRESS_SLOTS`] slots; the agent sets a
//! slot's [`ROLE_VIP`] bit for every service address and its
//! [`ROLE_BACKEND`] bit for every backend address a flow may still name. A
//! frame is looked up in `SERVICES` and `FLOWS` only if its destination's
//! slot has `ROLE_VIP`, in `REPLIES` only if its source's slot has
//! `ROLE_BACKEND` (every reply comes from a backend, in `nat` and `dnat`
//! mode alike), in `REPLY_SERVICES` (before `REPLIES`) only if that slot
//! also has [`ROLE_REPLY_SERVICE`], and in `STATELESS_REPLIES` after a
//! `REPLIES` miss only if it also has [`ROLE_STATELESS`]. Two addresses may share a slot:
//! the filter then lets a frame through to the lookups it would have had
//! anyway, never the other way.
//!
//! A slot is one byte, eight to an entry of the array ([`ADDRESS_WORDS`]
//! 64-bit words): an array entry takes 8 bytes whatever its value's size,
//! so the 32 768 slots take the 32 KiB that 4 096 one-byte entries took:
//! the bench's 1 000 services of 4 backends mark 15 % of them, against 91 %
//! of 4 096, so far fewer frames for other addresses share a slot with one
//! of theirs.

/// log2 of [`ADDRESS_SLOTS`].
pub const ADDRESS_SLOT_BITS: u32 = 15;
/// Slots of the filter, one byte each.
pub const ADDRESS_SLOTS: u32 = 1 << ADDRESS_SLOT_BITS;
/// Slots in one entry of `ADDRESS_ROLES` (a `u64`).
pub const SLOTS_PER_WORD: u32 = 8;
/// Entries of `ADDRESS_ROLES`.
pub const ADDRESS_WORDS: u32 = ADDRESS_SLOTS / SLOTS_PER_WORD;

/// The entry of `ADDRESS_ROLES` that holds `slot`.
#[inline(always)]
pub const fn word_of(slot: u32) -> u32 {
    slot / SLOTS_PER_WORD
}

/// `slot`'s roles out of its entry `word` ([`word_of`]): byte
/// `slot % 8` of the number, least significant first.
#[inline(always)]
pub const fn roles_in(word: u64, slot: u32) -> u8 {
    (word >> (slot % SLOTS_PER_WORD * 8)) as u8
}

/// The roles of every slot (a byte each) in the entries `words`: the
/// inverse of [`pack`].
#[cfg(any(feature = "std", test))]
pub fn unpack(words: &[u64]) -> alloc::vec::Vec<u8> {
    words.iter().flat_map(|word| word.to_le_bytes()).collect()
}

/// The entries of `ADDRESS_ROLES` for `roles`, a byte per slot: the
/// inverse of [`roles_in`].
#[cfg(any(feature = "std", test))]
pub fn pack(roles: &[u8]) -> alloc::vec::Vec<u64> {
    roles
        .chunks(SLOTS_PER_WORD as usize)
        .map(|slots| {
            let mut bytes = [0u8; 8];
            bytes[..slots.len()].copy_from_slice(slots);
            u64::from_le_bytes(bytes)
        })
        .collect()
}

/// Some service's address hashes to the slot.
pub const ROLE_VIP: u8 = 1;
/// Some backend's address hashes to the slot.
pub const ROLE_BACKEND: u8 = 2;
/// Some backend of a service with `stateless_replies` hashes to the slot.
pub const ROLE_STATELESS: u8 = 4;
/// Some backend in `REPLY_SERVICES` (its `dnat` flows keep no reply entry)
/// hashes to the slot.
pub const ROLE_REPLY_SERVICE: u8 = 8;

/// The slot of `addr` (16 bytes, IPv4-mapped for IPv4): the four 32-bit
/// words folded, then spread by a multiplicative hash.
#[inline(always)]
pub const fn address_slot(addr: &[u8; 16]) -> u32 {
    let folded = word(addr, 0) ^ word(addr, 4) ^ word(addr, 8) ^ word(addr, 12);
    folded.wrapping_mul(0x9E37_79B1) >> (32 - ADDRESS_SLOT_BITS)
}

#[inline(always)]
const fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[a, b, c, d]);
        addr
    }

    #[test]
    fn slots_are_in_range_and_differ_for_neighbouring_addresses() {
        let mut seen = std::collections::HashSet::new();
        for d in 0..=255 {
            let slot = address_slot(&v4(10, 0, 0, d));
            assert!(slot < ADDRESS_SLOTS);
            seen.insert(slot);
        }
        // A /24 of VIPs or backends keeps its addresses apart.
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn a_subnet_of_4096_addresses_takes_nearly_a_slot_each() {
        let slots: std::collections::HashSet<u32> = (0..4096u32)
            .map(|i| address_slot(&v4(10, 1, (i >> 8) as u8, i as u8)))
            .collect();
        assert!(slots.len() > 4096 * 9 / 10, "{} slots used", slots.len());
    }

    #[test]
    fn each_slot_reads_back_its_own_roles_from_the_packed_words() {
        let roles: alloc::vec::Vec<u8> = (0..ADDRESS_SLOTS).map(|s| (s % 251) as u8).collect();
        let words = pack(&roles);
        assert_eq!(words.len(), ADDRESS_WORDS as usize);
        assert_eq!(unpack(&words), roles);
        for slot in 0..ADDRESS_SLOTS {
            let word = words[word_of(slot) as usize];
            assert_eq!(roles_in(word, slot), roles[slot as usize], "slot {slot}");
        }
    }

    #[test]
    fn a_thousand_services_of_four_backends_mark_under_a_fifth_of_the_slots() {
        // 1 000 VIPs in 10.100.0.0/16 and 4 000 backends in 10.50.0.0/16,
        // as the bench's "1,000 services": a frame for any other address
        // passes the filter unlooked-up at least four times in five.
        let vips = (0..1_000u32).map(|i| v4(10, 100, (i / 250) as u8, (i % 250 + 1) as u8));
        let backends = (1..=4_000u32).map(|n| v4(10, 50, (n >> 8) as u8, n as u8));
        let marked: std::collections::HashSet<u32> =
            vips.chain(backends).map(|a| address_slot(&a)).collect();
        let share = marked.len() as f64 / f64::from(ADDRESS_SLOTS);
        assert!(share < 0.2, "{:.0} % of the slots marked", share * 100.0);
    }

    #[test]
    fn ipv6_addresses_use_every_word() {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        let mut b = a;
        b[7] = 1;
        assert_ne!(address_slot(&a), address_slot(&b));
    }
}

//! The address filter (`ADDRESS_ROLES`): what lets a frame that is neither
//! for a service nor a backend's reply skip both map lookups.
//!
//! Each address hashes to one of [`ADDRESS_SLOTS`] slots; the agent sets a
//! slot's [`ROLE_VIP`] bit for every service address and its
//! [`ROLE_BACKEND`] bit for every backend address a flow may still name. A
//! frame is looked up in `SERVICES` and `FLOWS` only if its destination's
//! slot has `ROLE_VIP`, in `REPLIES` only if its source's slot has
//! `ROLE_BACKEND` (every reply comes from a backend, in `nat` and `dnat`
//! mode alike), and in `STATELESS_REPLIES` after a `REPLIES` miss only if
//! that slot also has [`ROLE_STATELESS`]. Two addresses may share a slot:
//! the filter then lets a frame through to the lookups it would have had
//! anyway, never the other way.

/// log2 of [`ADDRESS_SLOTS`].
pub const ADDRESS_SLOT_BITS: u32 = 12;
/// Slots of `ADDRESS_ROLES`, one byte each.
pub const ADDRESS_SLOTS: u32 = 1 << ADDRESS_SLOT_BITS;

/// Some service's address hashes to the slot.
pub const ROLE_VIP: u8 = 1;
/// Some backend's address hashes to the slot.
pub const ROLE_BACKEND: u8 = 2;
/// Some backend of a service with `stateless_replies` hashes to the slot.
pub const ROLE_STATELESS: u8 = 4;

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
    fn a_subnet_of_4096_addresses_spreads_over_most_slots() {
        let slots: std::collections::HashSet<u32> = (0..4096u32)
            .map(|i| address_slot(&v4(10, 1, (i >> 8) as u8, i as u8)))
            .collect();
        assert!(slots.len() > 4096 / 2, "{} slots used", slots.len());
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

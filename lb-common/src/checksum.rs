//! Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates).
//!
//! The ones' complement sum is independent of byte order, so these work on values exactly as
//! they sit in the packet (`_be` fields loaded natively) as long as old and new are treated alike.

/// Folds a 64-bit accumulator to 16 bits. Unrolled: the data path may not loop on data.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 32-bit field changed from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
pub fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    let sum = (!csum) as u64
        + (old >> 16) as u64
        + (old & 0xffff) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    !fold(sum)
}

/// New checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace2(csum: u16, old: u16, new: u16) -> u16 {
    let sum = (!csum) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}

/// Ones' complement sum of `data` as 16-bit big-endian words (odd tail padded with zero),
/// added to `initial`. Not for the data path: tests and packet builders use it.
pub fn sum_be(data: &[u8], initial: u64) -> u64 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_be_bytes([*last, 0]) as u64;
    }
    sum
}

/// The IPv4 header checksum of `header` (its checksum field must be zero, or the result is the
/// verification value: 0 for a correct header).
pub fn ipv4_header(header: &[u8]) -> u16 {
    !fold(sum_be(header, 0))
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment` (checksum field zeroed, or 0 when
/// verifying a correct segment). Addresses are in network byte order as 4-byte arrays.
pub fn l4_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut sum = sum_be(&src, 0);
    sum = sum_be(&dst, sum);
    sum += proto as u64;
    sum += segment.len() as u64;
    !fold(sum_be(segment, sum))
}

/// The TCP/UDP checksum of `segment` (its checksum field zero) over IPv6's pseudo-header.
pub fn l4_ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, segment: &[u8]) -> u16 {
    let mut sum = sum_be(&src, 0);
    sum = sum_be(&dst, sum);
    sum += proto as u64;
    sum += segment.len() as u64;
    !fold(sum_be(segment, sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 20] {
        [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 250,
        ]
    }

    fn with_csum(mut h: [u8; 20]) -> [u8; 20] {
        h[10] = 0;
        h[11] = 0;
        let c = ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn full_checksum_verifies_to_zero() {
        let h = with_csum(header());
        assert_eq!(ipv4_header(&h), 0);
    }

    #[test]
    fn incremental_address_update_matches_recompute() {
        // Exhaustive-ish over many address pairs, including ones that carry around.
        let mut seed = 0x1234_5678u32;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let old_h = with_csum(header());
            let mut h = old_h;
            let old = u32::from_ne_bytes(h[16..20].try_into().unwrap());
            let new_bytes = seed.to_be_bytes();
            h[16..20].copy_from_slice(&new_bytes);
            let new = u32::from_ne_bytes(new_bytes);
            let csum = u16::from_ne_bytes([old_h[10], old_h[11]]);
            let updated = replace4(csum, old, new);
            h[10..12].copy_from_slice(&updated.to_ne_bytes());
            assert_eq!(h, with_csum(h), "address {new_bytes:?}");
        }
    }

    #[test]
    fn incremental_port_update_matches_recompute() {
        let src = [10, 0, 0, 1];
        let dst = [10, 0, 0, 250];
        let mut seg = [0u8; 24];
        seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
        seg[2..4].copy_from_slice(&22u16.to_be_bytes());
        seg[20] = 0xde;
        let c = l4_ipv4(src, dst, 6, &seg);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        for port in [0u16, 1, 22, 0xffff, 10000, 59999, 0x8000] {
            let mut s = seg;
            let old = u16::from_ne_bytes([s[0], s[1]]);
            s[0..2].copy_from_slice(&port.to_be_bytes());
            let new = u16::from_ne_bytes([s[0], s[1]]);
            let csum = u16::from_ne_bytes([s[16], s[17]]);
            let upd = replace2(csum, old, new);
            s[16..18].copy_from_slice(&upd.to_ne_bytes());
            assert_eq!(l4_ipv4(src, dst, 6, &s), 0, "port {port}");
        }
    }
}

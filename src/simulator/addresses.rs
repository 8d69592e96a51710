//! Guest addresses from configurable pools: a stable function of an instance's UID, so the
//! launcher Pod and the instance agree without storing anything.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// An IPv4 and an IPv6 prefix.
#[derive(Clone, Debug)]
pub struct Pools {
    v4: (u32, u8),
    v6: (u128, u8),
}

impl Pools {
    pub fn parse(v4: &str, v6: &str) -> Result<Pools> {
        let (a, l) = v4.split_once('/').context("IPv4 pool must be a CIDR")?;
        let (b, m) = v6.split_once('/').context("IPv6 pool must be a CIDR")?;
        let (l, m): (u8, u8) = (l.parse()?, m.parse()?);
        if !(8..=30).contains(&l) || !(64..=124).contains(&m) {
            bail!("pools must be /8../30 (IPv4) and /64../124 (IPv6)");
        }
        Ok(Pools { v4: (u32::from(a.parse::<Ipv4Addr>()?), l), v6: (u128::from(b.parse::<Ipv6Addr>()?), m) })
    }

    /// The IPv4 and IPv6 address of the instance with this UID.
    pub fn for_uid(&self, uid: &str) -> (String, String) {
        let digest = Sha256::digest(uid.as_bytes());
        let n = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        let host_bits4 = 32 - u32::from(self.v4.1);
        let size4 = 1u64 << host_bits4;
        // Skip the network and broadcast addresses.
        let host4 = 1 + (n as u64 % (size4 - 2)) as u32;
        let net4 = self.v4.0 & !((1u32 << host_bits4) - 1);
        let host_bits6 = 128 - u32::from(self.v6.1);
        let host6 = 1 + (n % ((1u128 << host_bits6) - 1));
        let net6 = self.v6.0 & !((1u128 << host_bits6) - 1);
        (Ipv4Addr::from(net4 | host4).to_string(), Ipv6Addr::from(net6 | host6).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_and_inside_the_pools() {
        let pools = Pools::parse("198.18.0.0/17", "2001:db8:200::/64").unwrap();
        let (a4, a6) = pools.for_uid("uid-1");
        assert_eq!(pools.for_uid("uid-1"), (a4.clone(), a6.clone()));
        assert_ne!(pools.for_uid("uid-2").0, a4);
        assert!(a4.starts_with("198.18."), "{a4}");
        assert!(a6.starts_with("2001:db8:200:"), "{a6}");
        assert!(!a4.ends_with(".0") || a4.split('.').nth(2) != Some("0"));
    }

    #[test]
    fn bad_pools_are_refused() {
        assert!(Pools::parse("198.18.0.0", "2001:db8::/64").is_err());
        assert!(Pools::parse("198.18.0.0/32", "2001:db8::/64").is_err());
    }
}

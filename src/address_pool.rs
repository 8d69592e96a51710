//! A location's address pools as arithmetic, shared by the operator (which gives addresses
//! out) and the gateway (which shows what is left): the usable offsets of a pool, the IPv4
//! and IPv6 address and the MAC at an offset, and the cloud-init network configuration
//! (version 2) a guest configures them from. Pure: no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{AddressPool, LocationNetwork, VpsAddressSpec};

/// A location's pools, parsed.
#[derive(Clone, Debug)]
pub struct Pools {
    v4: Subnet<u32>,
    v6: Option<Subnet<u128>>,
    /// First octet after the locally administered `02`: from the location, so two
    /// locations on one segment do not hand out the same MAC.
    mac_tag: u8,
}

#[derive(Clone, Debug)]
struct Subnet<T> {
    network: T,
    prefix: u8,
    gateway: T,
    dns: Vec<String>,
    excluded: Vec<(T, T)>,
}

/// The addresses at one offset of the pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: String,
}

impl Pools {
    /// The pools of `location`'s network, or why they cannot be used.
    pub fn parse(location: &str, network: &LocationNetwork) -> Result<Pools, String> {
        let v4 = parse_v4(&network.ipv4).map_err(|e| format!("ipv4: {e}"))?;
        let v6 = network.ipv6.as_ref().map(parse_v6).transpose().map_err(|e| format!("ipv6: {e}"))?;
        if let Some(v6) = &v6
            && 128 - u32::from(v6.prefix) < 32 - u32::from(v4.prefix)
        {
            return Err("ipv6: the subnet must be at least as large as the IPv4 one".into());
        }
        Ok(Pools { v4, v6, mac_tag: Sha256::digest(location.as_bytes())[0] })
    }

    /// The offsets inside the IPv4 subnet, network and broadcast addresses left out.
    fn offsets(&self) -> std::ops::Range<u32> {
        1..(1u32 << (32 - u32::from(self.v4.prefix))) - 1
    }

    /// The addresses at `offset`, unless one of them is excluded or a gateway.
    pub fn at(&self, offset: u32) -> Option<Assignment> {
        let ipv4 = self.v4.network | offset;
        if ipv4 == self.v4.gateway || self.v4.excluded.iter().any(|(a, b)| (*a..=*b).contains(&ipv4)) {
            return None;
        }
        let ipv6 = match &self.v6 {
            Some(v6) => {
                let a = v6.network | u128::from(offset);
                if a == v6.gateway || v6.excluded.iter().any(|(x, y)| (*x..=*y).contains(&a)) {
                    return None;
                }
                Some(Ipv6Addr::from(a))
            }
            None => None,
        };
        let [a, b, c, d] = offset.to_be_bytes();
        let mac = format!("02:{:02x}:{a:02x}:{b:02x}:{c:02x}:{d:02x}", self.mac_tag);
        Some(Assignment { ipv4: Ipv4Addr::from(ipv4), ipv6, mac })
    }

    /// Every assignment the pools can give, in order.
    pub fn assignments(&self) -> impl Iterator<Item = Assignment> + '_ {
        self.offsets().filter_map(|o| self.at(o))
    }

    /// Whether `ipv4` is one of the addresses the pools give out.
    pub fn contains(&self, ipv4: &str) -> bool {
        let Ok(a) = ipv4.parse::<Ipv4Addr>() else { return false };
        let a = u32::from(a);
        let mask = !((1u32 << (32 - u32::from(self.v4.prefix))) - 1);
        a & mask == self.v4.network && self.offsets().contains(&(a & !mask)) && self.at(a & !mask).is_some()
    }

    /// The cloud-init network configuration (version 2) of a server holding `address`: the
    /// interface with its MAC, its addresses, default routes and name servers.
    pub fn network_data(&self, address: &VpsAddressSpec) -> String {
        let mut addresses = vec![format!("{}/{}", address.ipv4, self.v4.prefix)];
        let mut routes = vec![Route { to: "0.0.0.0/0".into(), via: Ipv4Addr::from(self.v4.gateway).to_string() }];
        let mut dns = self.v4.dns.clone();
        if let (Some(v6), Some(ipv6)) = (&self.v6, &address.ipv6) {
            addresses.push(format!("{ipv6}/{}", v6.prefix));
            routes.push(Route { to: "::/0".into(), via: Ipv6Addr::from(v6.gateway).to_string() });
            dns.extend(v6.dns.iter().cloned());
        }
        let ethernet = Ethernet {
            matches: Match { macaddress: address.mac.clone() },
            set_name: INTERFACE.into(),
            addresses,
            routes,
            nameservers: (!dns.is_empty()).then_some(Nameservers { addresses: dns }),
        };
        let config = NetworkConfig { version: 2, ethernets: BTreeMap::from([(INTERFACE.to_string(), ethernet)]) };
        serde_yaml::to_string(&config).expect("the network config serializes")
    }
}

/// The guest's name for its one interface.
pub const INTERFACE: &str = "eth0";

#[derive(Serialize)]
struct NetworkConfig {
    version: u8,
    ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matches: Match,
    #[serde(rename = "set-name")]
    set_name: String,
    addresses: Vec<String>,
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
}

#[derive(Serialize)]
struct Match {
    macaddress: String,
}

#[derive(Serialize)]
struct Route {
    to: String,
    via: String,
}

#[derive(Serialize)]
struct Nameservers {
    addresses: Vec<String>,
}

/// The addresses (without prefix length) a version-2 network configuration gives its first
/// interface, and that interface's MAC: what a guest configures itself with.
pub fn configured(network_data: &str) -> Option<(String, Vec<String>)> {
    let config: serde_yaml::Value = serde_yaml::from_str(network_data).ok()?;
    let (_, ethernet) = config.get("ethernets")?.as_mapping()?.iter().next()?;
    let mac = ethernet.get("match")?.get("macaddress")?.as_str()?.to_string();
    let addresses = ethernet
        .get("addresses")?
        .as_sequence()?
        .iter()
        .filter_map(|a| a.as_str()?.split('/').next().map(String::from))
        .collect();
    Some((mac, addresses))
}

fn split_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let (address, prefix) = cidr.split_once('/').ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
    let address = address.parse::<IpAddr>().map_err(|_| format!("{address:?} is not an address"))?;
    let prefix = prefix.parse::<u8>().map_err(|_| format!("{prefix:?} is not a prefix length"))?;
    Ok((address, prefix))
}

fn parse_v4(pool: &AddressPool) -> Result<Subnet<u32>, String> {
    let (IpAddr::V4(address), prefix) = split_cidr(&pool.cidr)? else { return Err("not an IPv4 subnet".into()) };
    if !(16..=30).contains(&prefix) {
        return Err(format!("/{prefix}: the subnet must be /16 to /30"));
    }
    let mask = !((1u32 << (32 - u32::from(prefix))) - 1);
    let network = u32::from(address) & mask;
    let one = |s: &str| s.parse::<Ipv4Addr>().map(u32::from).map_err(|_| format!("{s:?} is not an IPv4 address"));
    let gateway = one(&pool.gateway)?;
    if gateway & mask != network {
        return Err(format!("the gateway {} is outside {}", pool.gateway, pool.cidr));
    }
    Ok(Subnet { network, prefix, gateway, dns: checked_dns(&pool.dns)?, excluded: ranges(&pool.excluded, one)? })
}

fn parse_v6(pool: &AddressPool) -> Result<Subnet<u128>, String> {
    let (IpAddr::V6(address), prefix) = split_cidr(&pool.cidr)? else { return Err("not an IPv6 subnet".into()) };
    if !(64..=126).contains(&prefix) {
        return Err(format!("/{prefix}: the subnet must be /64 to /126"));
    }
    let mask = !((1u128 << (128 - u32::from(prefix))) - 1);
    let network = u128::from(address) & mask;
    let one = |s: &str| s.parse::<Ipv6Addr>().map(u128::from).map_err(|_| format!("{s:?} is not an IPv6 address"));
    let gateway = one(&pool.gateway)?;
    if gateway & mask != network {
        return Err(format!("the gateway {} is outside {}", pool.gateway, pool.cidr));
    }
    Ok(Subnet { network, prefix, gateway, dns: checked_dns(&pool.dns)?, excluded: ranges(&pool.excluded, one)? })
}

fn checked_dns(dns: &[String]) -> Result<Vec<String>, String> {
    dns.iter()
        .map(|d| {
            d.parse::<IpAddr>().map(|a| a.to_string()).map_err(|_| format!("the name server {d:?} is not an address"))
        })
        .collect()
}

fn ranges<T: PartialOrd + Copy>(
    excluded: &[String],
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<(T, T)>, String> {
    excluded
        .iter()
        .map(|e| {
            let (a, b) = match e.split_once('-') {
                Some((a, b)) => (one(a.trim())?, one(b.trim())?),
                None => (one(e.trim())?, one(e.trim())?),
            };
            if b < a { Err(format!("the range {e:?} ends before it starts")) } else { Ok((a, b)) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AddressHolder;

    fn pool(cidr: &str, gateway: &str, excluded: &[&str]) -> AddressPool {
        AddressPool {
            cidr: cidr.into(),
            gateway: gateway.into(),
            dns: vec!["192.0.2.53".into()],
            excluded: excluded.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn network() -> LocationNetwork {
        LocationNetwork {
            attachment: "vps-system/public".into(),
            ipv4: pool("203.0.113.0/29", "203.0.113.1", &["203.0.113.2-203.0.113.3"]),
            ipv6: Some(AddressPool { dns: vec![], ..pool("2001:db8:7::/64", "2001:db8:7::1", &["2001:db8:7::5"]) }),
        }
    }

    #[test]
    fn the_pools_skip_network_broadcast_gateway_and_exclusions() {
        let pools = Pools::parse("eu", &network()).unwrap();
        let given: Vec<String> = pools.assignments().map(|a| a.ipv4.to_string()).collect();
        // .0 network, .1 gateway, .2-.3 excluded, .5 excluded on the IPv6 side, .7 broadcast.
        assert_eq!(given, ["203.0.113.4", "203.0.113.6"]);
        let first = pools.at(4).unwrap();
        assert_eq!(first.ipv6, Some("2001:db8:7::4".parse().unwrap()), "the same offset in both pools");
        assert!(first.mac.starts_with("02:"), "{}", first.mac);
        assert_ne!(pools.at(6).unwrap().mac, first.mac);
        assert!(pools.contains("203.0.113.4") && !pools.contains("203.0.113.2") && !pools.contains("203.0.114.4"));
    }

    #[test]
    fn bad_pools_say_what_is_wrong() {
        let mut n = network();
        n.ipv4.gateway = "198.51.100.1".into();
        assert!(Pools::parse("eu", &n).unwrap_err().contains("outside"));
        n = network();
        n.ipv4.cidr = "203.0.113.0/8".into();
        assert!(Pools::parse("eu", &n).unwrap_err().contains("/16 to /30"));
        n = network();
        n.ipv6.as_mut().unwrap().cidr = "2001:db8:7::/127".into();
        assert!(Pools::parse("eu", &n).is_err());
        n = network();
        n.ipv4.excluded = vec!["203.0.113.9-203.0.113.4".into()];
        assert!(Pools::parse("eu", &n).unwrap_err().contains("ends before"));
    }

    #[test]
    fn the_network_data_is_what_the_guest_reads_back() {
        let pools = Pools::parse("eu", &network()).unwrap();
        let a = pools.at(4).unwrap();
        let spec = VpsAddressSpec {
            location: "eu".into(),
            ipv4: a.ipv4.to_string(),
            ipv6: a.ipv6.map(|a| a.to_string()),
            mac: a.mac.clone(),
            server: AddressHolder { namespace: "n".into(), name: "s".into(), uid: "u".into() },
            reusable_after: None,
        };
        let data = pools.network_data(&spec);
        let yaml: serde_yaml::Value = serde_yaml::from_str(&data).unwrap();
        assert_eq!(yaml["version"], 2);
        let eth = &yaml["ethernets"]["eth0"];
        assert_eq!(eth["match"]["macaddress"].as_str(), Some(a.mac.as_str()));
        assert_eq!(eth["addresses"][0], "203.0.113.4/29");
        assert_eq!(eth["addresses"][1], "2001:db8:7::4/64");
        assert_eq!(eth["routes"][0]["via"], "203.0.113.1");
        assert_eq!(eth["nameservers"]["addresses"][0], "192.0.2.53");
        assert_eq!(configured(&data), Some((a.mac, vec!["203.0.113.4".into(), "2001:db8:7::4".into()])));
    }
}

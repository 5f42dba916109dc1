//! Which addresses an mDNS announcement may make this appliance call. Anyone on the LAN can
//! announce a record, so an announced address is a request to connect somewhere: only a
//! unicast address of another host on one of our own subnets is accepted, never this host
//! (`0.0.0.0`, loopback, IPv4-mapped forms of them, our own interface addresses), nor
//! link-local, multicast or broadcast ones, nor port 0.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// Why an announced address was refused.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum Refused {
    #[error("not a unicast address of another host")]
    Special,
    #[error("an address of this host")]
    Own,
    #[error("not on a subnet of this host's interfaces")]
    OffLink,
    #[error("port 0")]
    Port,
}

/// A subnet one of this host's interfaces is on (an address and its prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    /// Whether `ip` is on this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32)));
                let mask = mask.unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix.min(128)));
                let mask = mask.unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The subnets of this host's interfaces but loopback (empty when they cannot be read: then
/// no announced address is accepted).
pub fn own_subnets() -> Vec<Subnet> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    ifaces
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => Subnet {
                ip: IpAddr::V4(a.ip),
                prefix: a.prefixlen,
            },
            if_addrs::IfAddr::V6(a) => Subnet {
                ip: IpAddr::V6(a.ip),
                prefix: a.prefixlen,
            },
        })
        .collect()
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// True for addresses no peer may be reached on: unspecified, loopback, link-local,
/// multicast, broadcast, "this network" (0/8) and IPv4-compatible IPv6 (`::a.b.c.d`).
fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => v4_special(a),
        IpAddr::V6(a) => v6_special(a),
    }
}

fn v4_special(a: Ipv4Addr) -> bool {
    a.is_unspecified()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.octets()[0] == 0
}

fn v6_special(a: Ipv6Addr) -> bool {
    let s = a.segments();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80
        || s[..6].iter().all(|&x| x == 0)
}

/// Checks an announced `ip`:`port` against this host's `own` subnets (and their addresses);
/// the address to call.
pub fn check(ip: IpAddr, port: u16, own: &[Subnet]) -> Result<IpAddr, Refused> {
    if port == 0 {
        return Err(Refused::Port);
    }
    let ip = canonical(ip);
    if special(ip) {
        return Err(Refused::Special);
    }
    if own.iter().any(|s| canonical(s.ip) == ip) {
        return Err(Refused::Own);
    }
    if !own.iter().any(|s| s.contains(ip)) {
        return Err(Refused::OffLink);
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lan() -> Vec<Subnet> {
        vec![
            Subnet {
                ip: ip("10.78.0.1"),
                prefix: 24,
            },
            Subnet {
                ip: ip("fd00:1::1"),
                prefix: 64,
            },
        ]
    }

    #[test]
    fn accepts_other_hosts_on_our_subnets() {
        assert_eq!(check(ip("10.78.0.2"), 8080, &lan()), Ok(ip("10.78.0.2")));
        assert_eq!(check(ip("fd00:1::2"), 8080, &lan()), Ok(ip("fd00:1::2")));
        // An IPv4-mapped form of a LAN address is the LAN address.
        assert_eq!(
            check(ip("::ffff:10.78.0.9"), 8080, &lan()),
            Ok(ip("10.78.0.9"))
        );
    }

    #[test]
    fn refuses_this_host_and_special_addresses() {
        for a in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "0.1.2.3",
            "169.254.1.1",
            "fe80::1",
            "224.0.0.251",
            "ff02::fb",
            "255.255.255.255",
        ] {
            assert_eq!(check(ip(a), 8080, &lan()), Err(Refused::Special), "{a}");
        }
        assert_eq!(check(ip("10.78.0.1"), 8080, &lan()), Err(Refused::Own));
        assert_eq!(check(ip("::ffff:10.78.0.1"), 80, &lan()), Err(Refused::Own));
    }

    #[test]
    fn refuses_other_subnets_and_port_zero() {
        for a in [
            "10.78.1.2",
            "192.168.1.1",
            "8.8.8.8",
            "fd00:2::1",
            "2001:db8::1",
        ] {
            assert_eq!(check(ip(a), 8080, &lan()), Err(Refused::OffLink), "{a}");
        }
        assert_eq!(check(ip("10.78.0.2"), 0, &lan()), Err(Refused::Port));
        assert_eq!(
            check(ip("10.78.0.2"), 8080, &[]),
            Err(Refused::OffLink),
            "no known interfaces: nothing accepted"
        );
    }

    #[test]
    fn subnet_edges() {
        let all = Subnet {
            ip: ip("10.0.0.1"),
            prefix: 0,
        };
        assert!(all.contains(ip("192.0.2.1")));
        let one = Subnet {
            ip: ip("10.0.0.1"),
            prefix: 32,
        };
        assert!(one.contains(ip("10.0.0.1")) && !one.contains(ip("10.0.0.2")));
        assert!(!one.contains(ip("::1")));
    }
}

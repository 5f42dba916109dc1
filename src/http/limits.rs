//! Connection admission: a global connection limit, a per-client-IP limit, and a small
//! reserve beyond the global limit that keeps `/healthz` and friends answering while the
//! regular slots are taken. A refused connection is closed at once, so the accept loop keeps
//! draining the kernel's queue and the process never runs out of file descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Connections beyond `--max-connections` that may still be accepted, each for one request
/// of a cheap route (health, readiness, metrics, cache info; everything else gets 503), with a
/// short header timeout. Enough for probes and a few curls; too few to matter for memory.
pub const RESERVE: usize = 64;

/// How often a refusal is logged at most (with the count since the last line).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The connection bounds (`--max-connections`, `--max-connections-per-ip`, `--send-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Regular connections open at once.
    pub max: usize,
    /// Connections one client address holds at once (IPv6: one /64), reserve included.
    pub per_ip: usize,
    /// A connection whose client accepts no bytes for this long is dropped.
    pub send_timeout: Duration,
}

pub use crate::metrics::{ConnSlot as Slot, Refusal as Refused};

#[derive(Default)]
struct Counts {
    regular: usize,
    reserve: usize,
    per_ip: HashMap<IpAddr, usize>,
    refused: u64,
    last_log: Option<Instant>,
}

/// Counts open connections; [`Gate::admit`] hands out a [`Permit`] that gives the slot back
/// when the connection ends.
pub struct Gate {
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    counts: Mutex<Counts>,
}

/// An admitted connection's slot, released on drop.
pub struct Permit {
    gate: Arc<Gate>,
    key: IpAddr,
    slot: Slot,
}

impl Permit {
    /// The kind of slot held.
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        match self.slot {
            Slot::Regular => c.regular -= 1,
            Slot::Reserve => c.reserve -= 1,
        }
        if let Some(n) = c.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.key);
            }
        }
        self.gate.publish(&c);
    }
}

/// The address a client is counted under: IPv4 (also when mapped into IPv6), or the /64 of
/// an IPv6 address (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl Gate {
    /// A gate with nothing open.
    pub fn new(limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            metrics,
            counts: Mutex::default(),
        })
    }

    /// A slot for a connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let key = client_key(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = c.per_ip.get(&key).copied().unwrap_or(0);
        let slot = if held >= self.limits.per_ip {
            Err(Refused::PerIp)
        } else if c.regular < self.limits.max {
            c.regular += 1;
            Ok(Slot::Regular)
        } else if c.reserve < RESERVE {
            c.reserve += 1;
            Ok(Slot::Reserve)
        } else {
            Err(Refused::Global)
        };
        match slot {
            Ok(slot) => {
                *c.per_ip.entry(key).or_default() += 1;
                self.publish(&c);
                Ok(Permit {
                    gate: self.clone(),
                    key,
                    slot,
                })
            }
            Err(why) => {
                self.metrics.refused(why);
                c.refused += 1;
                let now = Instant::now();
                if c.last_log.is_none_or(|t| now - t >= LOG_EVERY) {
                    tracing::warn!(
                        reason = ?why, client = %key, refused = c.refused,
                        open = c.regular, reserve = c.reserve,
                        "connection refused: over the connection limit"
                    );
                    c.last_log = Some(now);
                    c.refused = 0;
                }
                Err(why)
            }
        }
    }

    fn publish(&self, c: &Counts) {
        self.metrics
            .set_connections(Slot::Regular, c.regular as u64);
        self.metrics
            .set_connections(Slot::Reserve, c.reserve as u64);
    }

    /// Regular and reserve connections open now.
    pub fn open(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.regular, c.reserve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, per_ip: usize) -> Arc<Gate> {
        let limits = ConnLimits {
            max,
            per_ip,
            send_timeout: Duration::from_secs(1),
        };
        Gate::new(limits, Arc::default())
    }

    #[test]
    fn per_ip_limit_then_global_then_reserve() {
        let g = gate(4, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| g.admit(a).unwrap()).collect();
        assert_eq!(g.admit(a).err(), Some(Refused::PerIp));
        let b1 = g.admit(b).unwrap();
        assert_eq!(b1.slot(), Slot::Regular);
        assert_eq!(g.admit(b).unwrap().slot(), Slot::Reserve);
        assert_eq!(g.open(), (4, 0), "the reserve permit above was dropped");
        drop(held);
        assert_eq!(g.open(), (1, 0));
        assert!(g.admit(a).is_ok());
    }

    #[test]
    fn reserve_is_bounded_and_ipv6_counts_per_64() {
        let g = gate(1, 1000);
        let _r = g.admit("10.0.0.1".parse().unwrap()).unwrap();
        let extra: Vec<_> = (0..RESERVE)
            .map(|_| g.admit("10.0.0.1".parse().unwrap()).unwrap())
            .collect();
        assert!(extra.iter().all(|p| p.slot() == Slot::Reserve));
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(g.admit(ip).err(), Some(Refused::Global));
        let g = gate(100, 2);
        let _x = g.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _y = g.admit("2001:db8::2".parse().unwrap()).unwrap();
        let z = "2001:db8::ffff:3".parse().unwrap();
        assert_eq!(g.admit(z).err(), Some(Refused::PerIp));
        assert!(g.admit("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }
}

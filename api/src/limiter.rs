//! Per-client request budgets (the public listener, console sign-in): a fixed window per client
//! key, IPv6 clients counted per /64 (one host owns a whole /64), bounded memory by evicting one
//! window at a time (never the ones over budget first) rather than forgetting everyone.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered at most by default.
pub const MAX_CLIENTS: usize = 10_000;

/// At most `budget` requests per client per `window`.
#[derive(Debug)]
pub struct RateLimiter {
    budget: u32,
    window: Duration,
    max_clients: usize,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The key a client is counted under: its IPv4 address (also when written IPv4-mapped), or its
/// IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RateLimiter {
    /// At most `per_minute` requests per client per minute.
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60), MAX_CLIENTS)
    }

    /// At most `budget` requests per client per `window`, remembering `max_clients` clients.
    pub fn with_window(budget: u32, window: Duration, max_clients: usize) -> Self {
        Self {
            budget,
            window,
            max_clients: max_clients.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request from `client`; false once it is over its budget for this window.
    pub fn allow(&self, client: IpAddr) -> bool {
        self.count(client, 1)
    }

    /// When `client`'s window ends, if it is over its budget now.
    pub fn retry_after(&self, client: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let windows = self.lock();
        let (start, count) = windows.get(&client_key(client))?;
        let elapsed = now.duration_since(*start);
        (*count >= self.budget && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Counts `n` requests from `client`; false once it is over its budget.
    fn count(&self, client: IpAddr, n: u32) -> bool {
        let key = client_key(client);
        let now = Instant::now();
        let mut windows = self.lock();
        if !windows.contains_key(&key) && windows.len() >= self.max_clients {
            windows.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if windows.len() >= self.max_clients {
                // Still full of live windows: one goes, the oldest of those still within their
                // budget (forgetting one costs it at most a fresh budget); a client over its
                // budget is forgotten only when every client is.
                let budget = self.budget;
                let evicted = windows
                    .iter()
                    .min_by_key(|(_, (start, count))| (*count >= budget, *start))
                    .map(|(k, _)| *k);
                if let Some(evicted) = evicted {
                    windows.remove(&evicted);
                }
            }
        }
        let (start, count) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(n);
        *count <= self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn each_client_gets_its_own_budget() {
        let limiter = RateLimiter::new(3);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!((0..3).all(|_| limiter.allow(a)));
        assert!(!limiter.allow(a), "the fourth in a minute is refused");
        assert!(limiter.allow(b), "another client is not affected");
        assert!(
            limiter
                .retry_after(a)
                .is_some_and(|d| d <= Duration::from_secs(60))
        );
        assert_eq!(limiter.retry_after(b), None);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = RateLimiter::new(2);
        assert!(limiter.allow(ip("2001:db8:1:2::1")));
        assert!(limiter.allow(ip("2001:db8:1:2:ffff::9")));
        assert!(
            !limiter.allow(ip("2001:db8:1:2:dead:beef:0:1")),
            "another address of the same /64 shares the budget"
        );
        assert!(limiter.allow(ip("2001:db8:1:3::1")), "another /64 does not");
        assert!(limiter.allow(ip("198.51.100.7")));
        assert!(limiter.allow(ip("::ffff:198.51.100.7")));
        assert!(
            !limiter.allow(ip("198.51.100.7")),
            "the mapped form is the same client"
        );
    }

    #[test]
    fn a_flood_of_new_clients_does_not_make_it_forget_the_one_over_its_budget() {
        let limiter = RateLimiter::with_window(2, Duration::from_secs(60), 100);
        let abuser = ip("203.0.113.66");
        assert!(limiter.allow(abuser) && limiter.allow(abuser));
        assert!(!limiter.allow(abuser));
        // The abuser keeps trying while 10,000 other addresses come and go.
        for n in 0..10_000_u32 {
            let [a, b, c, d] = (0x0a00_0000 + n).to_be_bytes();
            limiter.allow(IpAddr::from([a, b, c, d]));
            if n % 50 == 0 {
                assert!(!limiter.allow(abuser), "forgotten after {n} new clients");
            }
        }
        assert!(limiter.lock().len() <= 100, "bounded");
    }
}

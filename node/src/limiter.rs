//! Failed logins, rate-limited per account and per client address, before any hashing.
//!
//! Each account and each address has a token bucket. A login attempt takes one token
//! from both before its password is checked (so that a burst of concurrent attempts is
//! limited too, not only the failures already counted) and gives them back when the
//! password was right: only failures spend the allowance (and attempts whose client hung
//! up before the answer, which cannot be told apart from an attacker's). An attempt with either bucket
//! empty is refused at once with RESOURCE_EXHAUSTED and how long to wait: not
//! UNAVAILABLE, which clients retry by themselves, when the point is to slow them down.
//!
//! The state is this node's alone (not replicated): after a failover the new leader
//! starts with full buckets, which at most doubles an attacker's allowance for a moment.
//! A limit per account lets anyone who knows a name keep its owner from logging in while
//! they flood it (at [`ACCOUNT_FAILURES_BURST`] wrong guesses per refill); that is the
//! usual price of bounding guesses per account, and the owner's tokens keep working. A
//! limit per address covers every client behind one NAT; IPv6 clients are counted per
//! /64, the block one subscriber usually gets.
//!
//! Both maps are bounded ([`ACCOUNTS_TRACKED_MAX`], [`ADDRESSES_TRACKED_MAX`]): when one
//! is full, the buckets that have refilled completely (they carry no information) go
//! first, then the least recently used one, so the limiter itself cannot be grown
//! without bound by inventing names or addresses.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Wrong passwords an account takes at once...
pub const ACCOUNT_FAILURES_BURST: u32 = 5;
/// ...and then one more per interval: 5 per 10 s sustained.
pub const ACCOUNT_REFILL_INTERVAL: Duration = Duration::from_secs(2);
/// Wrong passwords one address may send at once...
pub const ADDRESS_FAILURES_BURST: u32 = 20;
/// ...and then one more per interval: 20 per 10 s sustained.
pub const ADDRESS_REFILL_INTERVAL: Duration = Duration::from_millis(500);
/// Accounts and addresses tracked at most: about 100 bytes each, so 2 MB in all.
pub const ACCOUNTS_TRACKED_MAX: usize = 10_000;
pub const ADDRESSES_TRACKED_MAX: usize = 10_000;

// An address must be allowed more than one account's worth, or one user who mistypes
// their password a few times would also lock out everyone behind the same NAT.
const _: () = assert!(ADDRESS_FAILURES_BURST > ACCOUNT_FAILURES_BURST);
const _: () = assert!(ACCOUNT_FAILURES_BURST >= 1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Limited {
    #[error(
        "too many failed logins for this account; retry in {} s",
        retry_after.as_secs().max(1)
    )]
    Account { retry_after: Duration },
    #[error(
        "too many failed logins from this address; retry in {} s",
        retry_after.as_secs().max(1)
    )]
    Address { retry_after: Duration },
}

/// The key of a client address: the IPv4 address, or the /64 of an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressKey(u128);

impl AddressKey {
    pub fn of(address: IpAddr) -> AddressKey {
        match address {
            IpAddr::V4(v4) => AddressKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(u128::from(u32::from(v4))),
                // The top bit keeps /64 prefixes apart from IPv4 addresses.
                None => AddressKey((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

/// A login attempt that holds one token of its account and (when known) its address.
#[derive(Debug)]
#[must_use = "report how the attempt ended: a right password gives its tokens back"]
pub struct Attempt {
    account: String,
    address: Option<AddressKey>,
}

/// The limiter of one node. Callers keep it behind a mutex; every call is a few hash
/// map operations (an eviction scan only when a map is full).
pub struct LoginLimiter {
    accounts: Buckets<String>,
    addresses: Buckets<AddressKey>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            accounts: Buckets::new(
                ACCOUNT_FAILURES_BURST,
                ACCOUNT_REFILL_INTERVAL,
                ACCOUNTS_TRACKED_MAX,
            ),
            addresses: Buckets::new(
                ADDRESS_FAILURES_BURST,
                ADDRESS_REFILL_INTERVAL,
                ADDRESSES_TRACKED_MAX,
            ),
        }
    }
}

impl LoginLimiter {
    /// Takes a token from the account and from the address, or neither: a refusal for
    /// one does not spend the other's allowance. `now` is passed in so tests need no
    /// sleeping.
    pub fn begin(
        &mut self,
        account: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt, Limited> {
        let address = address.map(AddressKey::of);
        let account_wait = self.accounts.wait(account, now);
        let address_wait = address.and_then(|key| self.addresses.wait(&key, now));
        if let Some(retry_after) = address_wait {
            return Err(Limited::Address { retry_after });
        }
        if let Some(retry_after) = account_wait {
            return Err(Limited::Account { retry_after });
        }
        self.accounts.take(account, now);
        if let Some(key) = address {
            self.addresses.take(&key, now);
        }
        Ok(Attempt {
            account: account.to_owned(),
            address,
        })
    }

    /// The password was right, or it was never checked (the node could not tell):
    /// the tokens go back, only wrong passwords count.
    pub fn refund(&mut self, attempt: Attempt) {
        self.accounts.give_back(&attempt.account);
        if let Some(key) = attempt.address {
            self.addresses.give_back(&key);
        }
    }

    /// The password was wrong: the tokens stay spent.
    pub fn failed(&mut self, attempt: Attempt) {
        drop(attempt);
    }
}

/// Token buckets by key, at most `keys_max` of them.
struct Buckets<K> {
    burst: u32,
    refill_interval: Duration,
    keys_max: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// When `tokens` was last brought up to date: refills are counted from here.
    refilled_at: Instant,
    used_at: Instant,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(burst: u32, refill_interval: Duration, keys_max: usize) -> Buckets<K> {
        assert!(burst >= 1);
        assert!(!refill_interval.is_zero());
        assert!(keys_max >= 1);
        Buckets {
            burst,
            refill_interval,
            keys_max,
            buckets: HashMap::new(),
        }
    }

    /// How long until `key` has a token; None if it has one now.
    fn wait<Q>(&mut self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (burst, interval) = (self.burst, self.refill_interval);
        let bucket = self.buckets.get_mut(key)?;
        bucket.refill(burst, interval, now);
        (bucket.tokens == 0).then(|| (bucket.refilled_at + interval).saturating_duration_since(now))
    }

    /// Takes one token from `key` (which [`Buckets::wait`] said has one).
    fn take<Q>(&mut self, key: &Q, now: Instant)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (burst, interval) = (self.burst, self.refill_interval);
        if !self.buckets.contains_key(key) {
            self.make_room(now);
            self.buckets.insert(
                key.to_owned(),
                Bucket {
                    tokens: burst,
                    refilled_at: now,
                    used_at: now,
                },
            );
        }
        // Just made sure it is there.
        let bucket = self.buckets.get_mut(key).expect("bucket inserted above");
        bucket.refill(burst, interval, now);
        debug_assert!(bucket.tokens > 0, "take after a wait that found a token");
        bucket.tokens = bucket.tokens.saturating_sub(1);
        bucket.used_at = now;
    }

    fn give_back<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Evicted meanwhile: it is as good as full already.
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1).min(self.burst);
        }
    }

    /// Frees a slot when the map is full: every bucket refilled to the brim first (a
    /// missing key means exactly that), else the least recently used one.
    fn make_room(&mut self, now: Instant) {
        if self.buckets.len() < self.keys_max {
            return;
        }
        let (burst, interval) = (self.burst, self.refill_interval);
        self.buckets.retain(|_, bucket| {
            bucket.refill(burst, interval, now);
            bucket.tokens < burst
        });
        if self.buckets.len() < self.keys_max {
            return;
        }
        let stalest = self
            .buckets
            .iter()
            .min_by_key(|(_, bucket)| bucket.used_at)
            .map(|(key, _)| key.clone());
        if let Some(key) = stalest {
            self.buckets.remove(&key);
        }
        debug_assert!(self.buckets.len() < self.keys_max);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

impl Bucket {
    fn refill(&mut self, burst: u32, interval: Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / interval.as_nanos();
        let missing = burst - self.tokens;
        if earned >= u128::from(missing) {
            self.tokens = burst;
            self.refilled_at = now;
        } else {
            // `earned < missing <= burst`, a u32.
            let earned = u32::try_from(earned).expect("earned is below the burst");
            self.tokens += earned;
            // Keep the part of an interval already waited for the next token.
            self.refilled_at += interval * earned;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const USER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    fn address(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn an_account_takes_its_burst_then_one_per_interval() {
        let mut limiter = LoginLimiter::default();
        let t0 = Instant::now();
        // From different addresses, so only the account's bucket can refuse.
        for i in 0..ACCOUNT_FAILURES_BURST {
            let attempt = limiter
                .begin("alice", Some(address(i)), t0)
                .expect("allowed");
            limiter.failed(attempt);
        }
        let refused = limiter.begin("alice", Some(address(99)), t0);
        assert_eq!(
            refused.expect_err("over the limit"),
            Limited::Account {
                retry_after: ACCOUNT_REFILL_INTERVAL
            }
        );
        // Another account is not affected.
        let bob = limiter.begin("bob", Some(address(99)), t0).expect("bob");
        limiter.refund(bob);

        let later = t0 + ACCOUNT_REFILL_INTERVAL;
        let attempt = limiter
            .begin("alice", Some(address(99)), later)
            .expect("refilled");
        limiter.failed(attempt);
        assert!(limiter.begin("alice", Some(address(99)), later).is_err());
        let much_later = later + ACCOUNT_REFILL_INTERVAL * ACCOUNT_FAILURES_BURST;
        for _ in 0..ACCOUNT_FAILURES_BURST {
            let attempt = limiter
                .begin("alice", None, much_later)
                .expect("full again");
            limiter.failed(attempt);
        }
        assert!(limiter.begin("alice", None, much_later).is_err());
    }

    #[test]
    fn only_failures_count() {
        let mut limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..10 * ADDRESS_FAILURES_BURST {
            let attempt = limiter.begin("alice", Some(USER), t0).expect("allowed");
            limiter.refund(attempt);
        }
    }

    #[test]
    fn an_address_is_limited_across_accounts_and_others_still_log_in() {
        let mut limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..ADDRESS_FAILURES_BURST {
            let attempt = limiter
                .begin(&format!("victim{i}"), Some(ATTACKER), t0)
                .expect("allowed");
            limiter.failed(attempt);
        }
        let refused = limiter.begin("victim99", Some(ATTACKER), t0);
        assert_eq!(
            refused.expect_err("over the limit"),
            Limited::Address {
                retry_after: ADDRESS_REFILL_INTERVAL
            }
        );
        // The refusal did not spend victim99's allowance.
        for _ in 0..ACCOUNT_FAILURES_BURST {
            let attempt = limiter.begin("victim99", Some(USER), t0).expect("allowed");
            limiter.failed(attempt);
        }
        // A legitimate user elsewhere is untouched.
        let attempt = limiter.begin("carol", Some(USER), t0).expect("carol");
        limiter.refund(attempt);
        // Refills continue from partial intervals: half an interval, then another half.
        let half = ADDRESS_REFILL_INTERVAL / 2;
        assert!(limiter.begin("x", Some(ATTACKER), t0 + half).is_err());
        let attempt = limiter
            .begin("x", Some(ATTACKER), t0 + 2 * half)
            .expect("one token back");
        limiter.failed(attempt);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().expect("v6").into();
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse::<Ipv6Addr>()
            .expect("v6")
            .into();
        let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().expect("v6").into();
        assert_eq!(AddressKey::of(a), AddressKey::of(b));
        assert_ne!(AddressKey::of(a), AddressKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse::<Ipv6Addr>().expect("v6").into();
        assert_eq!(AddressKey::of(mapped), AddressKey::of(ATTACKER));
    }

    #[test]
    fn the_maps_stay_bounded() {
        let mut limiter = LoginLimiter::default();
        let t0 = Instant::now();
        let names = ACCOUNTS_TRACKED_MAX + 100;
        for i in 0..names {
            let now = t0 + Duration::from_micros(i as u64);
            // A million addresses' worth of attempts would be needed to keep every
            // bucket non-full; here each is touched once (one token short of full).
            let attempt = limiter
                .begin(&format!("name{i}"), Some(address(i as u32)), now)
                .expect("allowed");
            limiter.failed(attempt);
            assert!(limiter.accounts.len() <= ACCOUNTS_TRACKED_MAX);
            assert!(limiter.addresses.len() <= ADDRESSES_TRACKED_MAX);
        }
        // The newest account kept its state: the least recently used went first.
        let end = t0 + Duration::from_micros(names as u64);
        let newest = format!("name{}", names - 1);
        for _ in 1..ACCOUNT_FAILURES_BURST {
            let attempt = limiter.begin(&newest, None, end).expect("allowed");
            limiter.failed(attempt);
        }
        assert!(limiter.begin(&newest, None, end).is_err());
        assert!(!limiter.accounts.buckets.contains_key("name0"));

        // Once buckets have refilled, they make room without evicting anyone in use.
        let refilled = t0 + ADDRESS_REFILL_INTERVAL * ADDRESS_FAILURES_BURST;
        let attempt = limiter
            .begin("fresh", Some(address(1_000_000)), refilled)
            .expect("allowed");
        limiter.failed(attempt);
        assert_eq!(limiter.addresses.len(), 1, "only the new address is left");
    }
}

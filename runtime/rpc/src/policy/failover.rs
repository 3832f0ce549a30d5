//! [`Failover`]: one logical channel over several endpoints of a service; calls go to the
//! preferred healthy endpoint and move to the next when one fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::interceptor::{Next, StreamCall, StreamFuture, StreamNext, UnaryCall, Wrap, WrapFuture};
use crate::{Channel, ChannelBuilder, Code, Codec, Error};

/// Endpoints of one service, tried in order of weight (highest first): a unary call goes to
/// the first, and moves to the next when an endpoint answers `unavailable` (it cannot be
/// reached, or its circuit breaker is open). Each endpoint has a channel of its own, built by
/// the `configure` closure: give each a [`CircuitBreaker`](super::CircuitBreaker) there, so a
/// dead endpoint is skipped in microseconds until it has recovered.
///
/// ```no_run
/// use connect_plugin_rpc::policy::{CircuitBreaker, Failover, Retry};
///
/// let channel = Failover::new(
///     [("http://10.0.0.5:8080", 10), ("http://10.0.0.6:8080", 1)],
///     |endpoint| endpoint.wrap(CircuitBreaker::new()),
/// )?
/// .channel(|logical| logical.wrap(Retry::new()))?;
/// # Ok::<(), connect_plugin_rpc::Error>(())
/// ```
///
/// Streams fail over the same way while they fail to open and no message of them has gone out
/// ([`StreamCall::replayable`](crate::interceptor::StreamCall::replayable)).
///
/// With [`Failover::spread_load`], calls are spread over the preferred endpoints instead of
/// all going to the first: a weight is read as a tier (its upper 16 bits) and a share (its
/// lower 16 bits, as in a DNS SRV record's priority and weight); each call starts at an
/// endpoint of the highest tier picked at random in proportion to its share, then fails over
/// through the rest in order.
///
/// Cheap to clone: clones share the endpoints, so a clone kept aside can
/// [update](Failover::set_endpoints) them while the channel is in use (what a refreshing
/// discovery does).
#[derive(Clone)]
pub struct Failover {
    shared: Arc<Shared>,
}

type Configure = Box<dyn Fn(ChannelBuilder) -> ChannelBuilder + Send + Sync>;

struct Shared {
    /// By weight, highest first (ties in the given order).
    endpoints: RwLock<Arc<[Member]>>,
    codec: Codec,
    configure: Configure,
    /// Whether calls are spread over the highest tier (see [`Failover::spread_load`]).
    spread: AtomicBool,
    /// The state of the random pick among the highest tier.
    pick: AtomicU64,
}

#[derive(Clone)]
struct Member {
    url: String,
    weight: u32,
    channel: Channel,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field(
                "endpoints",
                &self
                    .endpoints()
                    .iter()
                    .map(|m| m.url.clone())
                    .collect::<Vec<_>>(),
            )
            .field("spread_load", &self.shared.spread.load(Ordering::Relaxed))
            .finish()
    }
}

impl Failover {
    /// The endpoints `(base URL, weight)`, each with a channel `configure` builds.
    ///
    /// # Errors
    /// `invalid_argument` for no endpoint or a bad URL.
    pub fn new<I, S>(
        endpoints: I,
        configure: impl Fn(ChannelBuilder) -> ChannelBuilder + Send + Sync + 'static,
    ) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        Self::with_codec(endpoints, Codec::Proto, configure)
    }

    /// [`Failover::new`] with another codec than protobuf (the logical channel uses it too).
    ///
    /// # Errors
    /// As for [`Failover::new`].
    pub fn with_codec<I, S>(
        endpoints: I,
        codec: Codec,
        configure: impl Fn(ChannelBuilder) -> ChannelBuilder + Send + Sync + 'static,
    ) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let failover = Self {
            shared: Arc::new(Shared {
                endpoints: RwLock::new(Arc::from(Vec::new())),
                codec,
                configure: Box::new(configure),
                spread: AtomicBool::new(false),
                pick: AtomicU64::new(seed()),
            }),
        };
        failover.set_endpoints(endpoints)?;
        Ok(failover)
    }

    /// Spreads calls over the endpoints of the highest tier in proportion to their shares
    /// (see the [type docs](Failover)) instead of sending them all to the first.
    #[must_use]
    pub fn spread_load(self, spread: bool) -> Self {
        self.shared.spread.store(spread, Ordering::Relaxed);
        self
    }

    /// The endpoints, and the one a call tries first (the others follow in order).
    fn order(&self) -> (Arc<[Member]>, usize) {
        let endpoints = self.endpoints();
        if !self.shared.spread.load(Ordering::Relaxed) || endpoints.len() < 2 {
            return (endpoints, 0);
        }
        let tier = endpoints[0].weight >> 16;
        let group = endpoints
            .iter()
            .take_while(|m| m.weight >> 16 == tier)
            .count();
        let share = |m: &Member| u64::from(m.weight & 0xFFFF);
        let total: u64 = endpoints[..group].iter().map(share).sum();
        let roll = next_random(&self.shared.pick);
        let first = if total == 0 {
            // No shares given: all alike.
            (roll % group as u64) as usize
        } else {
            let mut at = roll % total;
            endpoints[..group]
                .iter()
                .position(|m| {
                    let share = share(m);
                    at < share || {
                        at -= share;
                        false
                    }
                })
                .unwrap_or(0)
        };
        (endpoints, first)
    }

    /// A handle that does not keep the endpoints alive: what a background refresh holds, so
    /// it ends with the channel.
    pub fn downgrade(&self) -> WeakFailover {
        WeakFailover(Arc::downgrade(&self.shared))
    }

    fn endpoints(&self) -> Arc<[Member]> {
        Arc::clone(
            &self
                .shared
                .endpoints
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the endpoints (a discovery refreshed them). Endpoints kept keep their channel,
    /// and so their connection and breaker state.
    ///
    /// # Errors
    /// `invalid_argument` for no endpoint or a bad URL; the endpoints are then unchanged.
    pub fn set_endpoints<I, S>(&self, endpoints: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let current = self.endpoints();
        let mut members: Vec<Member> = Vec::new();
        for (url, weight) in endpoints {
            let url = url.into();
            let channel = match current.iter().find(|m| m.url == url) {
                Some(kept) => kept.channel.clone(),
                None => {
                    (self.shared.configure)(Channel::builder(url.as_str()).codec(self.shared.codec))
                        .build()?
                }
            };
            members.push(Member {
                url,
                weight,
                channel,
            });
        }
        if members.is_empty() {
            return Err(Error::invalid_argument(
                "Failover needs at least one endpoint",
            ));
        }
        members.sort_by_key(|m| std::cmp::Reverse(m.weight));
        *self
            .shared
            .endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(members);
        Ok(())
    }

    /// The logical channel: calls through it fail over between the endpoints. `configure`
    /// adds what wraps the whole call (a retry, outermost).
    ///
    /// # Errors
    /// As for [`ChannelBuilder::build`].
    pub fn channel(
        self,
        configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder,
    ) -> Result<Channel, Error> {
        let first = self.endpoints()[0].url.clone();
        let codec = self.shared.codec;
        configure(Channel::builder(first).codec(codec))
            .wrap(self)
            .build()
    }
}

/// A [`Failover`] that may be gone ([`Failover::downgrade`]).
#[derive(Clone)]
pub struct WeakFailover(std::sync::Weak<Shared>);

impl std::fmt::Debug for WeakFailover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakFailover")
    }
}

impl WeakFailover {
    /// The failover, while a channel still uses it.
    pub fn upgrade(&self) -> Option<Failover> {
        self.0.upgrade().map(|shared| Failover { shared })
    }
}

/// A random number (splitmix64 over a shared counter): good enough to spread load; no
/// secret depends on it.
fn next_random(state: &AtomicU64) -> u64 {
    let mut x = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed that differs between processes and instances.
fn seed() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()))
}

impl Wrap for Failover {
    fn stream<'a>(&'a self, call: StreamCall, _: StreamNext<'a>) -> StreamFuture<'a> {
        Box::pin(async move {
            let mut last = None;
            let (endpoints, first) = self.order();
            let tried = std::iter::once(first).chain((0..endpoints.len()).filter(|&i| i != first));
            for member in tried.map(|i| &endpoints[i]) {
                if last.is_some() && !call.replayable() {
                    break;
                }
                match member.channel.call_stream(call.clone()).await {
                    Err(error) if error.code() == Code::Unavailable => {
                        tracing::debug!(endpoint = %member.url, "failing over: {error}");
                        last = Some(error);
                    }
                    outcome => return outcome,
                }
            }
            Err(last.unwrap_or_else(|| Error::unavailable("no endpoint answered")))
        })
    }

    fn unary<'a>(&'a self, call: UnaryCall, _: Next<'a>) -> WrapFuture<'a> {
        Box::pin(async move {
            let mut last = None;
            let (endpoints, first) = self.order();
            let tried = std::iter::once(first).chain((0..endpoints.len()).filter(|&i| i != first));
            for member in tried.map(|i| &endpoints[i]) {
                match member.channel.call_unary(call.clone()).await {
                    Err(error) if error.code() == Code::Unavailable => {
                        tracing::debug!(endpoint = %member.url, "failing over: {error}");
                        last = Some(error);
                    }
                    outcome => return outcome,
                }
            }
            Err(last.unwrap_or_else(|| Error::unavailable("no endpoint answered")))
        })
    }
}

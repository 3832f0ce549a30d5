//! [`Failover`]: one logical channel over several endpoints of a service; calls go to the
//! preferred healthy endpoint and move to the next when one fails.

use std::sync::{Arc, RwLock};

use crate::interceptor::{Next, UnaryCall, Wrap, WrapFuture};
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
/// Unary calls only; streams go to the first endpoint. Cheap to clone: clones share the
/// endpoints, so a clone kept aside can [update](Failover::set_endpoints) them while the
/// channel is in use (what a refreshing discovery does).
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
            }),
        };
        failover.set_endpoints(endpoints)?;
        Ok(failover)
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

impl Wrap for Failover {
    fn unary<'a>(&'a self, call: UnaryCall, _: Next<'a>) -> WrapFuture<'a> {
        Box::pin(async move {
            let mut last = None;
            let endpoints = self.endpoints();
            for member in endpoints.iter() {
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

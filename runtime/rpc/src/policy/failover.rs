//! [`Failover`]: one logical channel over several endpoints of a service; calls go to the
//! preferred healthy endpoint and move to the next when one fails.

use std::sync::Arc;

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
/// Unary calls only; streams go to the first endpoint.
pub struct Failover {
    /// By weight, highest first (ties in the given order).
    endpoints: Arc<[Member]>,
    codec: Codec,
}

struct Member {
    url: String,
    channel: Channel,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field(
                "endpoints",
                &self.endpoints.iter().map(|m| &m.url).collect::<Vec<_>>(),
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
        configure: impl Fn(ChannelBuilder) -> ChannelBuilder,
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
        configure: impl Fn(ChannelBuilder) -> ChannelBuilder,
    ) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let mut weighted: Vec<(u32, Member)> = Vec::new();
        for (url, weight) in endpoints {
            let url = url.into();
            let channel = configure(Channel::builder(url.as_str()).codec(codec)).build()?;
            weighted.push((weight, Member { url, channel }));
        }
        if weighted.is_empty() {
            return Err(Error::invalid_argument(
                "Failover needs at least one endpoint",
            ));
        }
        weighted.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
        Ok(Self {
            endpoints: weighted.into_iter().map(|(_, m)| m).collect(),
            codec,
        })
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
        let first = self.endpoints[0].url.clone();
        let codec = self.codec;
        configure(Channel::builder(first).codec(codec))
            .wrap(self)
            .build()
    }
}

impl Wrap for Failover {
    fn unary<'a>(&'a self, call: UnaryCall, _: Next<'a>) -> WrapFuture<'a> {
        Box::pin(async move {
            let mut last = None;
            for member in self.endpoints.iter() {
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

//! [`DnsDiscovery`]: endpoints from DNS, as a headless Kubernetes Service or any DNS server
//! publishes them: SRV records (`_service._tcp.name`: priority, weight, port and target, the
//! target's addresses from the answer's additional records or A/AAAA queries), or the A and
//! AAAA records of `name:port`.
//!
//! A small DNS client over UDP: one query per record type, a timeout, answers checked against
//! the query's id and bounded in size. It looks records up when asked; callers that want
//! fresh endpoints ask again (a [`failover_channel`](super::failover_channel) takes them once).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use super::{Discovery, Endpoint};
use crate::{Code, Error};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;

/// Endpoints from a DNS server: SRV records (`_service._tcp.name`: priority, weight, port,
/// target) or the A and AAAA records of `host:port`.
#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    server: SocketAddr,
    scheme: &'static str,
    timeout: Duration,
}

impl DnsDiscovery {
    /// Asks the DNS server at `server`.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            scheme: "http",
            timeout: Duration::from_secs(2),
        }
    }

    /// Asks the first name server of `/etc/resolv.conf`.
    ///
    /// # Errors
    /// `unavailable` when the file has none.
    pub fn system() -> Result<Self, Error> {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let server = conf
            .lines()
            .filter_map(|line| line.trim().strip_prefix("nameserver"))
            .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .ok_or_else(|| Error::unavailable("no nameserver in /etc/resolv.conf"))?;
        Ok(Self::new(SocketAddr::new(server, 53)))
    }

    /// Endpoints as `https://` URLs (default `http://`).
    #[must_use]
    pub fn https(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// How long one query may take (default 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn url(&self, ip: IpAddr, port: u16) -> String {
        match ip {
            IpAddr::V4(ip) => format!("{}://{ip}:{port}", self.scheme),
            IpAddr::V6(ip) => format!("{}://[{ip}]:{port}", self.scheme),
        }
    }

    async fn query(&self, name: &str, record: u16) -> Result<Answer, Error> {
        let id = u16::from_be_bytes(crate::identity::random_bytes::<2>(
            &ring::rand::SystemRandom::new(),
        )?);
        let packet = encode_query(id, name, record)?;
        let bind = if self.server.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let unreachable = |e: std::io::Error| {
            Error::unavailable(format!("DNS server {} unreachable: {e}", self.server))
        };
        let socket = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(unreachable)?;
        socket.connect(self.server).await.map_err(unreachable)?;
        socket.send(&packet).await.map_err(unreachable)?;
        let mut buf = [0u8; 4096];
        let read = async {
            loop {
                let n = socket.recv(&mut buf).await.map_err(unreachable)?;
                // Someone else's answer (a stale or forged one) is ignored.
                if n >= 2 && buf[..2] == id.to_be_bytes() {
                    return decode_answer(&buf[..n]);
                }
            }
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| {
                Error::new(
                    Code::DeadlineExceeded,
                    format!(
                        "DNS server {} did not answer for {name} within {} ms",
                        self.server,
                        self.timeout.as_millis()
                    ),
                )
            })?
    }

    /// The addresses of `host` (A and AAAA).
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, Error> {
        let mut ips = self.query(host, TYPE_A).await?.addresses;
        if let Ok(v6) = self.query(host, TYPE_AAAA).await {
            ips.extend(v6.addresses);
        }
        Ok(ips)
    }

    async fn endpoints(&self, service: &str) -> Result<Vec<Endpoint>, Error> {
        let mut endpoints = Vec::new();
        if service.starts_with('_') {
            let answer = self.query(service, TYPE_SRV).await?;
            let mut resolved: Vec<(String, Vec<IpAddr>)> = Vec::new();
            for srv in &answer.services {
                // "." says the service is not available there (RFC 2782).
                if srv.target.is_empty() {
                    continue;
                }
                let known: Vec<IpAddr> = answer
                    .additional
                    .iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(&srv.target))
                    .map(|(_, ip)| *ip)
                    .collect();
                let ips = if !known.is_empty() {
                    known
                } else if let Some((_, ips)) = resolved
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(&srv.target))
                {
                    ips.clone()
                } else {
                    // One target that does not resolve does not hide the others.
                    let ips = self.addresses(&srv.target).await.unwrap_or_else(|error| {
                        tracing::warn!(target = %srv.target, "SRV target not resolved: {error}");
                        Vec::new()
                    });
                    resolved.push((srv.target.clone(), ips.clone()));
                    ips
                };
                // Lower priority first, then higher weight: one number, higher wins.
                let weight = (u32::from(u16::MAX - srv.priority) << 16) | u32::from(srv.weight);
                for ip in ips {
                    endpoints.push(Endpoint {
                        weight,
                        ..Endpoint::new(self.url(ip, srv.port))
                    });
                }
            }
        } else {
            let (host, port) = service
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "{service:?} is neither an SRV name (_service._tcp.name) nor host:port"
                    ))
                })?;
            for ip in self.addresses(host).await? {
                endpoints.push(Endpoint::new(self.url(ip, port)));
            }
        }
        if endpoints.is_empty() {
            return Err(Error::not_found(format!(
                "DNS server {} has no records for {service:?}",
                self.server
            )));
        }
        Ok(endpoints)
    }
}

impl Discovery for DnsDiscovery {
    fn discover<'a>(
        &'a self,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Endpoint>, Error>> + Send + 'a>> {
        // However many targets an SRV answer names, a discovery ends in bounded time.
        let overall = self.timeout.saturating_mul(5);
        Box::pin(async move {
            tokio::time::timeout(overall, self.endpoints(service))
                .await
                .map_err(|_| {
                    Error::new(
                        Code::DeadlineExceeded,
                        format!(
                            "discovering {service:?} with DNS server {} took over {} ms",
                            self.server,
                            overall.as_millis()
                        ),
                    )
                })?
        })
    }
}

fn encode_query(id: u16, name: &str, record: u16) -> Result<Vec<u8>, Error> {
    let mut packet = Vec::with_capacity(32 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // a standard query, recursion desired
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // one question, one OPT record
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(Error::invalid_argument(format!(
                "{name:?} is not a DNS name (empty label, or one longer than 63 bytes)"
            )));
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&record.to_be_bytes());
    packet.extend_from_slice(&[0, 1]); // class IN
    // EDNS0: answers up to 4 KiB over UDP (a large SRV set fits, not truncated at 512 bytes).
    packet.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    Ok(packet)
}

#[derive(Debug, Default)]
struct Answer {
    addresses: Vec<IpAddr>,
    services: Vec<Srv>,
    /// Addresses from the additional section, by name.
    additional: Vec<(String, IpAddr)>,
}

#[derive(Debug)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

fn malformed() -> Error {
    Error::new(Code::Unavailable, "malformed DNS answer")
}

/// Reads a (possibly compressed) name at `*at`, moving `*at` past it.
fn read_name(packet: &[u8], at: &mut usize) -> Result<String, Error> {
    let mut labels: Vec<String> = Vec::new();
    let mut pos = *at;
    let mut jumped = false;
    // Bounded: a pointer loop cannot spin.
    for _ in 0..128 {
        let len = *packet.get(pos).ok_or_else(malformed)?;
        if len == 0 {
            if !jumped {
                *at = pos + 1;
            }
            return Ok(labels.join("."));
        }
        if len & 0xC0 == 0x40 || len & 0xC0 == 0x80 {
            return Err(malformed()); // reserved label types
        }
        if len & 0xC0 == 0xC0 {
            let low = *packet.get(pos + 1).ok_or_else(malformed)?;
            if !jumped {
                *at = pos + 2;
            }
            jumped = true;
            pos = (usize::from(len & 0x3F) << 8) | usize::from(low);
            continue;
        }
        let end = pos + 1 + usize::from(len);
        let label = packet.get(pos + 1..end).ok_or_else(malformed)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos = end;
    }
    Err(malformed())
}

fn read_u16(packet: &[u8], at: usize) -> Result<u16, Error> {
    let bytes = packet.get(at..at + 2).ok_or_else(malformed)?;
    Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn decode_answer(packet: &[u8]) -> Result<Answer, Error> {
    if packet.len() < 12 {
        return Err(malformed());
    }
    if packet[2] & 0x02 != 0 {
        tracing::warn!("the DNS answer was truncated: some endpoints may be missing");
    }
    let rcode = packet[3] & 0x0F;
    if rcode == 3 {
        return Ok(Answer::default()); // NXDOMAIN: no records
    }
    if rcode != 0 {
        return Err(Error::unavailable(format!(
            "the DNS server answered with error code {rcode}"
        )));
    }
    let questions = read_u16(packet, 4)?;
    let answers = read_u16(packet, 6)?;
    let authority = read_u16(packet, 8)?;
    let additional = read_u16(packet, 10)?;
    let mut at = 12;
    for _ in 0..questions {
        read_name(packet, &mut at)?;
        at += 4;
    }
    let mut out = Answer::default();
    let total = u32::from(answers) + u32::from(authority) + u32::from(additional);
    for index in 0..total {
        let name = read_name(packet, &mut at)?;
        let kind = read_u16(packet, at)?;
        let length = usize::from(read_u16(packet, at + 8)?);
        let data_at = at + 10;
        let data = packet
            .get(data_at..data_at + length)
            .ok_or_else(malformed)?;
        at = data_at + length;
        let in_answer = index < u32::from(answers);
        let in_additional = index >= u32::from(answers) + u32::from(authority);
        let ip = match (kind, data.len()) {
            (TYPE_A, 4) => Some(IpAddr::from([data[0], data[1], data[2], data[3]])),
            (TYPE_AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                Some(IpAddr::from(octets))
            }
            _ => None,
        };
        match (kind, ip) {
            (_, Some(ip)) if in_answer => out.addresses.push(ip),
            (_, Some(ip)) if in_additional => out.additional.push((name, ip)),
            (TYPE_SRV, None) if in_answer && length >= 7 => {
                let mut target_at = data_at + 6;
                out.services.push(Srv {
                    priority: read_u16(packet, data_at)?,
                    weight: read_u16(packet, data_at + 2)?,
                    port: read_u16(packet, data_at + 4)?,
                    target: read_name(packet, &mut target_at)?,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_answers_are_errors_not_panics() {
        for packet in [
            &[][..],
            &[0; 11],
            &[0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xC0, 0x0C],
            &[
                0, 0, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1,
            ],
        ] {
            assert!(decode_answer(packet).is_err(), "{packet:?}");
        }
        // A pointer to itself does not loop.
        let mut at = 0;
        assert!(read_name(&[0xC0, 0x00], &mut at).is_err());
        assert!(encode_query(1, "a..b", TYPE_A).is_err());
    }
}

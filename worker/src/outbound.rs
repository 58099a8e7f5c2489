//! The HTTP client Herald calls outside receivers with (webhooks): the URL rule of
//! [`herald_shared::outbound`] applied before every request and again by the resolver when each
//! connection is made, no redirects, and an answer read no further than what is kept of it.

use std::sync::Arc;
use std::time::Duration;

use herald_shared::outbound::{self, Lookup, UrlPolicy, check_url_with};

/// The webhook client behind the URL rule: every POST checks its URL again (a literal address
/// never reaches a resolver), and every name is resolved through [`PublicOnly`], so a name cannot
/// pass the check with a public address and then connect to a private one (DNS rebinding).
#[derive(Debug, Clone)]
pub struct Outbound {
    http: reqwest::Client,
    policy: UrlPolicy,
    lookup: Arc<dyn Lookup>,
}

/// Why a POST got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The URL breaks the rule (an internal address, http in production…): nothing was sent, and
    /// sending again would not change that.
    #[error("refused by the URL rule: {0}")]
    Refused(String),
    /// No answer: no connection (a name resolving to an internal address when connecting is one),
    /// a timeout, a broken exchange.
    #[error("no answer: {0}")]
    NoAnswer(String),
}

impl Outbound {
    /// A client with `timeout` per request, no redirects (a receiver answers where it was
    /// registered) and the guard of `policy`.
    pub fn new(
        timeout: Duration,
        policy: UrlPolicy,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, reqwest::Error> {
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Herald-Webhooks/1");
        if !policy.allow_private {
            http = http.dns_resolver(Arc::new(PublicOnly(lookup.clone())));
        }
        Ok(Self {
            http: http.build()?,
            policy,
            lookup,
        })
    }

    /// POSTs `body` to `url` with `headers` after checking the URL; the answer's status and at
    /// most [`EXCERPT_CHARS`] characters of its body (never more than [`EXCERPT_BYTES`] read).
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, String), PostError> {
        check_url_with(url, self.policy, self.lookup.as_ref())
            .await
            .map_err(|e| PostError::Refused(e.to_string()))?;
        let mut req = self.http.post(url).body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let res = req
            .send()
            .await
            .map_err(|e| PostError::NoAnswer(herald_shared::telemetry::error_chain(&e)))?;
        let code = res.status().as_u16();
        Ok((code, read_excerpt(res).await))
    }
}

/// Characters of a receiver's answer kept with an attempt.
pub const EXCERPT_CHARS: usize = 512;
/// Bytes of a receiver's answer read at most (512 characters of up to 4 bytes); the rest is never
/// read: the response is dropped, which closes the connection.
pub const EXCERPT_BYTES: usize = EXCERPT_CHARS * 4;

/// The first characters of an answer's body, reading no more than [`EXCERPT_BYTES`].
async fn read_excerpt(mut res: reqwest::Response) -> String {
    let mut kept: Vec<u8> = Vec::new();
    while kept.len() < EXCERPT_BYTES {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // The end, or a body that broke off: keep what came.
            Ok(None) | Err(_) => break,
        }
    }
    drop(res);
    // A character cut at the byte limit is left out rather than shown as U+FFFD.
    let text = match std::str::from_utf8(&kept) {
        Ok(t) => t.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&kept[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(&kept).into_owned(),
    };
    text.chars().take(EXCERPT_CHARS).collect()
}

/// The resolver of the guarded client: a name with any internal address is refused when the
/// connection is made.
#[derive(Debug)]
struct PublicOnly(Arc<dyn Lookup>);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.0.clone();
        Box::pin(async move {
            let found = outbound::public_addresses(lookup.as_ref(), name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(found.into_iter().map(|ip| std::net::SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use herald_shared::outbound::{
        Lookup, LookupFuture, REFUSED_EXAMPLES, SystemLookup, UrlPolicy, example_lookup,
        refused_name_examples,
    };
    use reqwest::dns::Resolve as _;

    use super::{Outbound, PostError, PublicOnly};

    fn guarded(lookup: Arc<dyn Lookup>) -> Outbound {
        let policy = UrlPolicy {
            allow_private: false,
            require_https: false,
        };
        Outbound::new(Duration::from_secs(5), policy, lookup).expect("client")
    }

    #[tokio::test]
    async fn the_guarded_resolver_refuses_a_name_for_an_internal_address() {
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let err = match PublicOnly(Arc::new(SystemLookup)).resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("internal address"), "{err}");
    }

    #[tokio::test]
    async fn every_refused_destination_is_refused_again_at_connect_time() {
        let out = guarded(Arc::new(example_lookup()));
        let by_name: Vec<String> = refused_name_examples()
            .into_iter()
            .map(|(name, _)| format!("http://{name}/hook"))
            .collect();
        assert!(by_name.len() >= 40);
        for url in REFUSED_EXAMPLES
            .iter()
            .copied()
            .chain(by_name.iter().map(String::as_str))
        {
            let err = out.post(url, &[], b"{}".to_vec()).await.expect_err(url);
            assert!(
                matches!(&err, PostError::Refused(why) if why.contains("internal address")),
                "{url}: {err}"
            );
        }
    }

    /// Answers a public address to the URL check and loopback to the connection after it.
    #[derive(Debug, Default)]
    struct Rebinding(AtomicUsize);

    impl Lookup for Rebinding {
        fn lookup(&self, _host: String, _port: u16) -> LookupFuture {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            let ip = if n == 0 { "93.184.216.34" } else { "127.0.0.1" };
            Box::pin(async move { Ok(vec![ip.parse().expect("ip")]) })
        }
    }

    #[tokio::test]
    async fn a_name_that_rebinds_to_loopback_after_the_check_is_not_connected_to() {
        // A receiver on loopback that would answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        let out = guarded(Arc::new(Rebinding::default()));
        let err = out
            .post(&format!("http://rebind.test:{port}/hook"), &[], Vec::new())
            .await
            .expect_err("refused at connect time");
        assert!(
            matches!(&err, PostError::NoAnswer(why) if why.contains("internal address")),
            "{err}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "never connected");
    }
}

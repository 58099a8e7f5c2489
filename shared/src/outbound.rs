//! Which URLs Herald may call on a user's behalf (webhook receivers): only globally routable
//! destinations, always, checked when a URL is registered and again when each connection is made.
//! Loopback and private targets are opened only by `WEBHOOK_ALLOW_PRIVATE_URLS=true`, which
//! production refuses.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{AppEnv, ConfigError, Env, parse_or};

/// Why an outbound URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not an absolute http(s) URL with a host.
    #[error("url must be an absolute http(s) URL: {0}")]
    Malformed(String),
    /// `http` in production.
    #[error("url must use https when APP_ENV=production")]
    NotHttps,
    /// User name or password in the URL.
    #[error("url must not carry a user name or password")]
    Credentials,
    /// The host is (or resolves to) an address that is not globally routable.
    #[error(
        "url's host resolves to a loopback, link-local, private or otherwise internal address ({0}); \
         only globally routable destinations are called"
    )]
    Internal(IpAddr),
    /// The host does not resolve.
    #[error("url's host does not resolve: {0}")]
    Unresolved(String),
}

/// The rule a binary applies to outbound URLs, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `WEBHOOK_ALLOW_PRIVATE_URLS` (default false): also call loopback and private targets
    /// (local runs and tests); refused when `APP_ENV=production`.
    pub allow_private: bool,
    /// https only (production).
    pub require_https: bool,
}

impl UrlPolicy {
    /// The strict rule: public https destinations only.
    pub const STRICT: Self = Self {
        allow_private: false,
        require_https: true,
    };

    /// Reads `WEBHOOK_ALLOW_PRIVATE_URLS` for `app_env`.
    pub fn from_source(env: &impl Env, app_env: AppEnv) -> Result<Self, ConfigError> {
        let allow_private = parse_or(env, "WEBHOOK_ALLOW_PRIVATE_URLS", false)?;
        if allow_private && app_env.is_production() {
            return Err(ConfigError::Invalid {
                var: "WEBHOOK_ALLOW_PRIVATE_URLS",
                reason: "true is for local runs and tests only; refused when APP_ENV=production"
                    .into(),
            });
        }
        Ok(Self {
            allow_private,
            require_https: app_env.is_production(),
        })
    }
}

/// Whether `ip` is one Herald must not call: anything that is not a globally routable unicast
/// address (IANA's special-purpose registries), and IPv4 written inside IPv6 in any form.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4_global(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => !v4_global(v4),
            None => !v6_global(v6),
        },
    }
}

fn v4_global(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || a == 127
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn v6_global(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Global unicast is 2000::/3; everything else (loopback, unspecified, IPv4-compatible,
    // NAT64, discard, ULA, link-local, site-local, multicast) is not.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let special = match s[0] {
        // 2001::/23 (Teredo, benchmarking, ORCHID…) and 2001:db8::/32 (documentation).
        0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
        // 6to4: any IPv4 address behind it.
        0x2002 => true,
        // 3fff::/20: documentation.
        first => first & 0xfff0 == 0x3ff0,
    };
    !special
}

/// A boxed lookup answer.
pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves host names (the system resolver in production; a table in tests).
pub trait Lookup: Send + Sync + std::fmt::Debug {
    /// Every address `host` stands for.
    fn lookup(&self, host: String, port: u16) -> LookupFuture;
}

/// The system resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String, port: u16) -> LookupFuture {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Checks a URL against `policy` with the system resolver.
pub async fn check_url(raw: &str, policy: UrlPolicy) -> Result<url::Url, UrlError> {
    check_url_with(raw, policy, &SystemLookup).await
}

/// Checks a URL: absolute http(s) with a host and no credentials; https when the policy says so;
/// unless private targets are allowed, every address the host resolves to globally routable.
/// Returns the URL as parsed (normalised: `http://2130706433/` is `http://127.0.0.1/`).
pub async fn check_url_with(
    raw: &str,
    policy: UrlPolicy,
    lookup: &dyn Lookup,
) -> Result<url::Url, UrlError> {
    let url = url::Url::parse(raw.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::Malformed("scheme and host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if policy.require_https && url.scheme() != "https" {
        return Err(UrlError::NotHttps);
    }
    if !policy.allow_private {
        for ip in resolve(&url, lookup).await? {
            if is_internal(ip) {
                return Err(UrlError::Internal(ip));
            }
        }
    }
    Ok(url)
}

/// Every address `url`'s host stands for (an IP literal is itself).
async fn resolve(url: &url::Url, lookup: &dyn Lookup) -> Result<Vec<IpAddr>, UrlError> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => Ok(vec![IpAddr::V4(ip)]),
        Some(url::Host::Ipv6(ip)) => Ok(vec![IpAddr::V6(ip)]),
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            let found = lookup
                .lookup(name.to_owned(), port)
                .await
                .map_err(|e| UrlError::Unresolved(e.to_string()))?;
            if found.is_empty() {
                Err(UrlError::Unresolved(name.to_owned()))
            } else {
                Ok(found)
            }
        }
        None => Err(UrlError::Malformed("no host".into())),
    }
}

/// The addresses of `host` a connection may use: all of them, or an error naming the first
/// internal one (a name with any internal address is refused whole, so DNS rebinding between the
/// check and the connection gains nothing).
pub async fn public_addresses(
    lookup: &dyn Lookup,
    host: &str,
) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let found = lookup.lookup(host.to_owned(), 0).await?;
    if let Some(bad) = found.iter().find(|ip| is_internal(**ip)) {
        return Err(format!("{host} resolves to an internal address ({bad})").into());
    }
    if found.is_empty() {
        return Err(format!("{host} resolves to no address").into());
    }
    Ok(found)
}

/// A fixed table of names (tests): each name stands for the addresses given.
#[derive(Debug, Clone, Default)]
pub struct TableLookup(pub Arc<std::collections::HashMap<String, Vec<IpAddr>>>);

impl Lookup for TableLookup {
    fn lookup(&self, host: String, _port: u16) -> LookupFuture {
        let found = self.0.get(&host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, host))
        })
    }
}

/// Destinations that must never be called, written every way a URL can carry them (the tests
/// try each at registration and at connect time; the names resolve through [`example_lookup`]).
pub const REFUSED_EXAMPLES: [&str; 48] = [
    // IPv4 private, CGNAT, link-local, loopback, "this network"
    "https://10.1.2.3/",
    "https://172.16.0.1/",
    "https://172.31.255.254/",
    "https://192.168.1.1/",
    "https://100.64.0.1/",
    "https://100.127.255.254/",
    "https://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1/",
    "https://127.255.255.254/",
    "https://0.0.0.0/",
    // benchmark, documentation, protocol assignments, relay anycast
    "https://198.18.0.1/",
    "https://198.19.255.1/",
    "https://192.0.2.10/",
    "https://198.51.100.7/",
    "https://203.0.113.9/",
    "https://192.0.0.8/",
    "https://192.88.99.1/",
    // multicast, reserved, broadcast
    "https://224.0.0.1/",
    "https://239.255.255.250/",
    "https://240.0.0.1/",
    "https://255.255.255.255/",
    // decimal, octal, hex and short IPv4 forms (WHATWG parsing)
    "https://2130706433/",
    "https://0177.0.0.1/",
    "https://0x7f.1/",
    "https://127.1/",
    "https://0xa9fea9fe/",
    // IPv6 loopback, unspecified, mapped, compatible, NAT64
    "https://[::1]/",
    "https://[::]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:a9fe:a9fe]/",
    "https://[::127.0.0.1]/",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[64:ff9b:1::a00:1]/",
    // 6to4, Teredo, site-local, ULA, link-local, documentation, multicast, discard, ORCHID
    "https://[2002:7f00:1::1]/",
    "https://[2002:c0a8:101::1]/",
    "https://[2001:0:a9fe:a9fe::1]/",
    "https://[fec0::1]/",
    "https://[fc00::1]/",
    "https://[fd12:3456::1]/",
    "https://[fe80::1]/",
    "https://[2001:db8::1]/",
    "https://[3fff::1]/",
    "https://[ff02::1]/",
    "https://[100::1]/",
    "https://[2001:10::1]/",
    // names resolving to internal addresses (the table below)
    "https://metadata.test/",
    "https://loop6.test/",
    "https://mixed.test/",
];

/// The address of each [`REFUSED_EXAMPLES`] URL written with an IP literal (in any form), with
/// the name `a<n>.test` [`example_lookup`] resolves to it: the same destinations reached by name.
pub fn refused_name_examples() -> Vec<(String, IpAddr)> {
    REFUSED_EXAMPLES
        .iter()
        .filter_map(|raw| match url::Url::parse(raw).ok()?.host()? {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        })
        .enumerate()
        .map(|(n, ip)| (format!("a{n}.test"), ip))
        .collect()
}

/// The names [`REFUSED_EXAMPLES`] and [`refused_name_examples`] use, and `public.test` (a public
/// address).
pub fn example_lookup() -> TableLookup {
    let entries = [
        ("metadata.test", vec!["169.254.169.254"]),
        ("loop6.test", vec!["::1"]),
        // One public, one private address: refused whole.
        ("mixed.test", vec!["93.184.216.34", "10.0.0.1"]),
        ("public.test", vec!["93.184.216.34", "2606:4700::1111"]),
    ];
    let mut names: std::collections::HashMap<String, Vec<IpAddr>> = entries
        .into_iter()
        .map(|(n, ips)| {
            (
                n.to_owned(),
                ips.into_iter()
                    .map(|i| i.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
                    .collect(),
            )
        })
        .collect();
    names.extend(
        refused_name_examples()
            .into_iter()
            .map(|(name, ip)| (name, vec![ip])),
    );
    TableLookup(Arc::new(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_globally_routable_destinations_pass_whatever_the_environment() {
        let lookup = example_lookup();
        for policy in [
            UrlPolicy::STRICT,
            UrlPolicy {
                allow_private: false,
                require_https: false,
            },
        ] {
            for url in REFUSED_EXAMPLES {
                let got = check_url_with(url, policy, &lookup).await;
                assert!(
                    matches!(got, Err(UrlError::Internal(_))),
                    "{url} under {policy:?}: {got:?}"
                );
            }
            for url in [
                "https://93.184.216.34/hook",
                "https://[2606:4700::1111]/hook",
                "https://[::ffff:8.8.8.8]/",
                "https://public.test/hook",
            ] {
                assert!(check_url_with(url, policy, &lookup).await.is_ok(), "{url}");
            }
        }
    }

    #[tokio::test]
    async fn each_name_is_checked_again_when_connecting() {
        let lookup = example_lookup();
        for name in ["metadata.test", "loop6.test", "mixed.test"] {
            let err = public_addresses(&lookup, name).await.expect_err(name);
            assert!(err.to_string().contains("internal address"), "{err}");
        }
        assert_eq!(
            public_addresses(&lookup, "public.test")
                .await
                .expect("public")
                .len(),
            2
        );
        assert!(public_addresses(&lookup, "unknown.test").await.is_err());
    }

    #[tokio::test]
    async fn production_wants_https_and_private_targets_need_an_explicit_setting() {
        let lookup = example_lookup();
        assert_eq!(
            check_url_with("http://hooks.example.com/x", UrlPolicy::STRICT, &lookup).await,
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check_url_with("https://user:pw@public.test/", UrlPolicy::STRICT, &lookup).await,
            Err(UrlError::Credentials)
        );
        assert!(matches!(
            check_url_with("ftp://example.com/", UrlPolicy::STRICT, &lookup).await,
            Err(UrlError::Malformed(_))
        ));
        let local = UrlPolicy {
            allow_private: true,
            require_https: false,
        };
        assert!(
            check_url_with("http://127.0.0.1:9000/hook", local, &lookup)
                .await
                .is_ok()
        );

        let dev = UrlPolicy::from_source(&[("APP_ENV", "development")], AppEnv::Development)
            .expect("default");
        assert!(!dev.allow_private, "the guard is on by default");
        let opened = UrlPolicy::from_source(
            &[("WEBHOOK_ALLOW_PRIVATE_URLS", "true")],
            AppEnv::Development,
        )
        .expect("opened");
        assert!(opened.allow_private && !opened.require_https);
        let err = UrlPolicy::from_source(
            &[("WEBHOOK_ALLOW_PRIVATE_URLS", "true")],
            AppEnv::Production,
        )
        .expect_err("refused in production");
        assert!(
            err.to_string().starts_with("WEBHOOK_ALLOW_PRIVATE_URLS"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_name_for_any_refused_address_is_refused_at_registration_and_when_connecting() {
        let lookup = example_lookup();
        let names = refused_name_examples();
        assert!(names.len() >= 40, "{} names", names.len());
        for (name, ip) in names {
            let url = format!("https://{name}/hook");
            assert_eq!(
                check_url_with(&url, UrlPolicy::STRICT, &lookup).await,
                Err(UrlError::Internal(ip)),
                "{url}"
            );
            let err = public_addresses(&lookup, &name).await.expect_err(&name);
            assert!(
                err.to_string().contains("internal address"),
                "{name}: {err}"
            );
        }
    }
}

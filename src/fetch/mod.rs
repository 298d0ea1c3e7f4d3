//! Server-side HTTP fetches of client-given URLs (input images and audio, webhook deliveries):
//! http/https only, a bounded number of redirects, connect/read/total timeouts, a byte limit
//! enforced while the body streams in, and the [`guard`] address policy applied to every
//! connection (its DNS answers) and every redirect target.

pub mod guard;

use crate::config::FetchArgs;
use guard::{AddressPolicy, Allowed};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a fetch did not produce a body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The URL, or an address it resolves or redirects to, is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The fetch itself failed (DNS, connection, timeout, status, too many redirects).
    #[error("{0}")]
    Failed(String),
    /// Not a URL at all.
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than the limit (from Content-Length, or counted while streaming).
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(u64),
}

/// Marker error carried through reqwest's error chain by the resolver and the redirect policy.
#[derive(Debug)]
struct Refused(String);

/// How a [`Refused`] reads, so it is recognised even where a wrapper hides its type.
const REFUSED: &str = "address refused: ";

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{REFUSED}{}", self.0)
    }
}

impl std::error::Error for Refused {}

/// A URL for messages and logs: scheme, host, port and path; never the query or user info
/// (they may carry tokens).
pub fn shown(url: &Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{port}{}", url.scheme(), url.host_str().unwrap_or(""), url.path())
}

/// Scheme and literal-address check of one URL (names are checked when they resolve).
fn check_static(policy: &AddressPolicy, url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("only http and https URLs are fetched, not {}:", url.scheme()));
    }
    let literal: Option<IpAddr> = match url.host() {
        None => return Err("the URL has no host".into()),
        Some(url::Host::Ipv4(a)) => Some(a.into()),
        Some(url::Host::Ipv6(a)) => Some(a.into()),
        Some(url::Host::Domain(_)) => None,
    };
    match literal {
        Some(ip) => policy.check(url.host_str().unwrap_or(""), ip),
        None => Ok(()),
    }
}

/// DNS through the system resolver, refusing names with any address the policy forbids.
struct GuardedResolver(Arc<AddressPolicy>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (policy, host) = (self.0.clone(), name.as_str().to_string());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            for a in &addrs {
                if let Err(why) = policy.check(&host, a.ip()) {
                    let refused: Box<dyn std::error::Error + Send + Sync> = Box::new(Refused(why));
                    return Err(refused);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The client and policy every server-side fetch goes through.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// For webhook deliveries: the same guard, no redirects (a 3xx is a failed delivery).
    hooks: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("policy", &self.policy).finish()
    }
}

impl Fetcher {
    pub fn new(args: &FetchArgs) -> anyhow::Result<Self> {
        let allow: Vec<Allowed> = args
            .fetch_allow
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Allowed::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("VIPAVATAR_FETCH_ALLOW: {e}"))?;
        let policy = Arc::new(AddressPolicy { allow_private: args.fetch_allow_private, allow });
        let max_redirects = args.fetch_max_redirects;
        let redirect_policy = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                let msg = format!("more than {max_redirects} redirects");
                return attempt.error(msg);
            }
            match check_static(&redirect_policy, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => {
                    let why = format!("redirected to {}: {why}", shown(attempt.url()));
                    attempt.error(Refused(why))
                }
            }
        });
        let builder = || {
            reqwest::Client::builder()
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
                .connect_timeout(Duration::from_millis(args.fetch_connect_timeout_ms.max(1)))
                .read_timeout(Duration::from_secs(args.fetch_read_timeout_secs.max(1)))
                .timeout(Duration::from_secs(args.fetch_timeout_secs.max(1)))
                .user_agent(concat!("vipavatar/", env!("CARGO_PKG_VERSION")))
        };
        let client = builder().redirect(redirects).build()?;
        let hooks = builder().redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Self { client, hooks, policy })
    }

    /// Parse and check a URL the client gave (scheme, literal addresses); names are checked
    /// again on every connection.
    pub fn check_url(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = Url::parse(url.trim()).map_err(|e| FetchError::Invalid(format!("not a valid URL: {e}")))?;
        check_static(&self.policy, &parsed).map_err(FetchError::Forbidden)?;
        Ok(parsed)
    }

    /// The client for webhook deliveries (guarded resolver, no redirects).
    pub fn hooks(&self) -> &reqwest::Client {
        &self.hooks
    }

    /// GET `url`, refusing bodies over `max_bytes` without reading past the limit.
    pub async fn get(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        let parsed = self.check_url(url)?;
        let name = shown(&parsed);
        let mut resp = self.client.get(parsed).send().await.map_err(|e| classify(&name, e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Failed(format!("GET {name} answered {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&name, e))? {
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A reqwest error as a [`FetchError`]: refusals by the guard stay refusals.
pub fn classify(name: &str, e: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return FetchError::Forbidden(r.0.clone());
        }
        if let Some(why) = s.to_string().split_once(REFUSED).map(|(_, w)| w.to_string()) {
            return FetchError::Forbidden(why);
        }
        source = s.source();
    }
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_redirect() {
        "redirect failed".to_string()
    } else {
        "failed".to_string()
    };
    // The innermost cause says most (DNS failure, refused connection); it never holds the query.
    let mut cause = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let cause = if cause.is_empty() { String::new() } else { format!(": {cause}") };
    FetchError::Failed(format!("GET {name} {what}{cause}"))
}

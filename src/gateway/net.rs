//! How the program reaches the network: which certificates it trusts and which proxy it goes
//! through. Every outgoing ureq agent (the gateway's API calls, downloads, header probes,
//! uploads) starts from [`agent_builder`], so they all trust and route the same way.
//!
//! Trust: the bundled web PKI roots, plus the machine's trust store (`SSL_CERT_FILE` and
//! `SSL_CERT_DIR` replace the platform's store when set, as OpenSSL does), plus the
//! certificates of `--ca-cert FILE`. Proxies: `ALL_PROXY`, then `HTTPS_PROXY`, then
//! `HTTP_PROXY` (either case), with `NO_PROXY`; an http(s) proxy is always used as a CONNECT
//! tunnel, never as a forwarding proxy, so the proxy sees a https request's host and port
//! and nothing of its headers. A plain-http URL through a proxy would cross it in clear, so
//! the key is never sent that way ([`NetConfig::key_in_clear`]).
//!
//! Names: every agent built by [`NetConfig::agent`] shares one [`HostCache`], which keeps the
//! addresses of a host:port for [`RESOLVE_TTL`]. ureq asks its resolver before every
//! request, pooled connection or not, and its own resolver starts a thread per lookup; with
//! the cache a batch resolves each host once a minute instead of four times per job.
//!
//! Connections: each agent keeps up to [`IDLE_PER_HOST`] idle connections to a host (the
//! default concurrency and far beyond), so that the workers of a batch reuse their connections
//! instead of opening one per request. ureq's own default keeps 3, which at concurrency 8
//! closes most connections after one request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq::config::{Config, ConfigBuilder};
use ureq::http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::typestate::AgentScope;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::{Agent, Proxy};

/// How long the addresses of a host:port are used before it is looked up again.
pub const RESOLVE_TTL: Duration = Duration::from_secs(60);

/// Idle connections an agent keeps open to one host:port for the next request.
pub const IDLE_PER_HOST: usize = 64;

/// Idle connections an agent keeps open over all hosts (inputs may live on many).
pub const IDLE_TOTAL: usize = 256;

/// Hosts kept at most; past it, the expired ones go, then all.
const MAX_HOSTS: usize = 256;

/// What the network setup trusts and goes through, built once per process from the
/// environment and `--ca-cert`.
#[derive(Clone)]
pub struct NetConfig {
    roots: Arc<Vec<Certificate<'static>>>,
    /// What was loaded, for `doctor` and error messages.
    pub trust: Trust,
    proxy: Option<Proxy>,
    hosts: HostCache,
}

/// Where the trusted certificates came from.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Certificates of the machine's store (or of `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    pub machine: usize,
    /// Problems met while reading the machine's store (an unreadable `SSL_CERT_FILE`, ...).
    pub machine_errors: Vec<String>,
    /// The `--ca-cert` file and how many certificates it holds.
    pub ca_cert: Option<(PathBuf, usize)>,
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("trust", &self.trust)
            .field("proxy", &self.proxy.as_ref().map(redacted))
            .finish()
    }
}

/// A `--ca-cert` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--ca-cert {}: {reason}", path.display())]
pub struct CaCertError {
    pub path: PathBuf,
    pub reason: String,
}

impl NetConfig {
    /// The environment's trust store and proxy, plus the certificates of `ca_cert`.
    pub fn from_env(ca_cert: Option<&Path>) -> Result<NetConfig, CaCertError> {
        let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let native = rustls_native_certs::load_native_certs();
        let mut trust = Trust {
            machine: native.certs.len(),
            machine_errors: native.errors.iter().map(|e| e.to_string()).collect(),
            ca_cert: None,
        };
        roots.extend(
            native
                .certs
                .into_iter()
                .map(|der| Certificate::from_der(der.as_ref()).to_owned()),
        );
        if let Some(path) = ca_cert {
            let extra = read_ca_file(path)?;
            trust.ca_cert = Some((path.to_path_buf(), extra.len()));
            roots.extend(extra);
        }
        Ok(NetConfig {
            roots: Arc::new(roots),
            trust,
            proxy: Proxy::try_from_env(),
            hosts: HostCache::default(),
        })
    }

    /// Reads a `--ca-cert` file to check that it holds certificates.
    pub fn check_ca_file(path: &Path) -> Result<(), CaCertError> {
        read_ca_file(path).map(|_| ())
    }

    /// The environment's setup without `--ca-cert` (the library's default).
    pub fn from_env_only() -> NetConfig {
        Self::from_env(None).expect("no --ca-cert file to read")
    }

    /// The same trust, through `proxy` instead of the environment's.
    pub fn with_proxy(mut self, proxy: Option<Proxy>) -> Self {
        self.proxy = proxy;
        self
    }

    /// The proxy a request to `url` goes through, if any (`NO_PROXY` applied exactly as
    /// ureq applies it when it connects, so this never says "direct" for a proxied request).
    pub fn proxy_for(&self, url: &str) -> Option<&Proxy> {
        let proxy = self.proxy.as_ref()?;
        match url.parse::<ureq::http::Uri>() {
            Ok(uri) if proxy.is_no_proxy(&uri) => None,
            _ => Some(proxy),
        }
    }

    /// The proxy for `url` in words, without any `user:password@`.
    pub fn describe_proxy(&self, url: &str) -> String {
        match (&self.proxy, self.proxy_for(url)) {
            (None, _) => "none (no ALL_PROXY, HTTPS_PROXY or HTTP_PROXY set)".into(),
            (Some(p), None) => format!("none for this host (NO_PROXY), else {}", redacted(p)),
            (Some(_), Some(p))
                if matches!(
                    p.protocol(),
                    ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https
                ) =>
            {
                format!("{} (a CONNECT tunnel)", redacted(p))
            }
            (Some(_), Some(p)) => redacted(p),
        }
    }

    /// Why the key must not be sent to `url`, if it must not: a plain-http URL through a
    /// proxy would carry the key across the proxy in clear.
    pub fn key_in_clear(&self, url: &str) -> Option<String> {
        let proxy = self.proxy_for(url)?;
        url.starts_with("http://").then(|| {
            format!(
                "the base URL {url} is plain http and would go through the proxy {}, which would see the API key in clear; use an https base URL, or add its host to NO_PROXY",
                redacted(proxy)
            )
        })
    }

    /// An agent of `config` (started from [`agent_builder`]) that resolves names through the
    /// cache this setup's agents share.
    pub fn agent(&self, config: Config) -> Agent {
        Agent::with_parts(config, DefaultConnector::default(), self.hosts.clone())
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig::builder()
            .root_certs(RootCerts::Specific(self.roots.clone()))
            .build()
    }
}

/// The agent settings every outgoing request shares: trust, proxy, user agent, idle pool.
/// Callers add their own timeouts and redirect policy.
pub fn agent_builder(net: &NetConfig) -> ConfigBuilder<AgentScope> {
    Agent::config_builder()
        .tls_config(net.tls())
        .proxy(net.proxy.clone())
        .max_idle_connections(IDLE_TOTAL)
        .max_idle_connections_per_host(IDLE_PER_HOST)
        .user_agent(concat!("codeformer-ledger/", env!("CARGO_PKG_VERSION")))
}

/// A resolver that remembers: the addresses ureq's own resolver found for a host:port (and IP
/// family), reused for [`RESOLVE_TTL`]. Failed lookups are not kept. The proxy's host goes
/// through it too (ureq resolves the proxy, or for SOCKS4 the target, with the same resolver).
#[derive(Clone, Default)]
pub struct HostCache {
    found: Arc<Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>>,
}

impl std::fmt::Debug for HostCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCache").finish_non_exhaustive()
    }
}

impl Resolver for HostCache {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => DefaultResolver::host_and_port(scheme, authority)
                .map(|at| format!("{at} {:?}", config.ip_family())),
            _ => None,
        };
        let Some(key) = key else {
            // Not a full URL: ureq's resolver gives the error.
            return DefaultResolver::default().resolve(uri, config, timeout);
        };
        let now = Instant::now();
        if let Some((at, addrs)) = self.lock().get(&key) {
            if now.duration_since(*at) < RESOLVE_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut found = self.lock();
        if found.len() >= MAX_HOSTS {
            found.retain(|_, (at, _)| now.duration_since(*at) < RESOLVE_TTL);
            if found.len() >= MAX_HOSTS {
                found.clear();
            }
        }
        found.insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

impl HostCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ResolvedSocketAddrs)>> {
        // A panic while holding the map cannot leave it half-written: entries are whole.
        self.found.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A proxy's URL without credentials.
pub fn redacted(proxy: &Proxy) -> String {
    let scheme = match proxy.protocol() {
        ureq::ProxyProtocol::Http => "http",
        ureq::ProxyProtocol::Https => "https",
        ureq::ProxyProtocol::Socks4 => "socks4",
        ureq::ProxyProtocol::Socks4A => "socks4a",
        ureq::ProxyProtocol::Socks5 => "socks5",
        _ => "socks5h",
    };
    format!("{scheme}://{}:{}", proxy.host(), proxy.port())
}

fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, CaCertError> {
    let error = |reason: String| CaCertError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot be read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(error(format!("is not valid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(error(
            "holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)".into(),
        ));
    }
    Ok(certs)
}

/// Whether a transport error happened before the request reached the server: no connection,
/// a refused CONNECT, or a TLS handshake that failed. Only a failure *during* the handshake
/// proves that nothing was sent, so only the rustls errors that the handshake alone raises
/// count (an untrusted or invalid certificate, nothing in common to negotiate, a handshake
/// alert); errors after it (a record that fails to decrypt, a close) may follow a request.
pub fn handshake_failure(error: &ureq::Error) -> Option<String> {
    match error {
        ureq::Error::Io(io) => {
            let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
            handshake_only(tls).then(|| tls.to_string())
        }
        // Building the TLS session (before any byte) or an invalid server name.
        ureq::Error::Rustls(e) => Some(e.to_string()),
        ureq::Error::Tls(e) => Some(e.to_string()),
        _ => None,
    }
}

fn handshake_only(error: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match error {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::PeerIncompatible(_) => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            A::HandshakeFailure
                | A::ProtocolVersion
                | A::InsufficientSecurity
                | A::UnrecognisedName
                | A::BadCertificate
                | A::UnknownCA
        ),
        _ => false,
    }
}

/// Whether `error` says the server's certificate is not trusted (the fix is `--ca-cert`).
pub fn untrusted_certificate(error: &ureq::Error) -> bool {
    matches!(error, ureq::Error::Io(io) if io
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_prove_nothing_was_sent_and_others_do_not() {
        let io = |e: rustls::Error| {
            ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        };
        let unknown = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(handshake_failure(&unknown)
            .unwrap()
            .contains("UnknownIssuer"));
        assert!(untrusted_certificate(&unknown));
        assert!(handshake_failure(&io(rustls::Error::DecryptError)).is_none());
        assert!(handshake_failure(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CloseNotify
        )))
        .is_none());
        let reset = ureq::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(handshake_failure(&reset).is_none());
    }

    fn no_timeout() -> NextTimeout {
        NextTimeout::default()
    }

    fn seed(cache: &HostCache, key: &str, age: Duration, addr: &str) {
        let mut addrs = DefaultResolver::default().empty();
        addrs.push(addr.parse().unwrap());
        let at = Instant::now().checked_sub(age).unwrap();
        cache.lock().insert(key.to_string(), (at, addrs));
    }

    #[test]
    fn a_host_is_looked_up_once_per_ttl_and_again_after_it() {
        let cache = HostCache::default();
        let config = Config::default();
        let key = |host_port: &str| format!("{host_port} {:?}", config.ip_family());
        let uri: Uri = "http://localhost:8787/v1/x".parse().unwrap();
        let first = cache.resolve(&uri, &config, no_timeout()).unwrap();
        assert!(first
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8787));
        assert_eq!(cache.lock().len(), 1);
        // A fresh entry answers without a lookup: the seeded address comes back.
        seed(
            &cache,
            &key("localhost:8787"),
            Duration::ZERO,
            "10.9.9.9:8787",
        );
        let hit = cache.resolve(&uri, &config, no_timeout()).unwrap();
        assert_eq!(
            hit.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.9.9.9:8787"]
        );
        // The scheme's default port is part of the key.
        seed(
            &cache,
            &key("localhost:443"),
            Duration::ZERO,
            "10.9.9.8:443",
        );
        let https: Uri = "https://localhost/".parse().unwrap();
        let other = cache.resolve(&https, &config, no_timeout()).unwrap();
        assert_eq!(other[0].to_string(), "10.9.9.8:443");
        // An expired entry is looked up again.
        seed(&cache, &key("localhost:8787"), RESOLVE_TTL, "10.9.9.9:8787");
        let again = cache.resolve(&uri, &config, no_timeout()).unwrap();
        assert!(again.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn failed_lookups_are_not_kept_and_clones_share_the_cache() {
        let cache = HostCache::default();
        let config = Config::default();
        let bad: Uri = "foo://some:42/123".parse().unwrap();
        assert!(cache.resolve(&bad, &config, no_timeout()).is_err());
        assert!(cache.lock().is_empty());
        let net = NetConfig::from_env_only();
        let twin = net.clone();
        let uri: Uri = "http://127.0.0.1:9/".parse().unwrap();
        net.hosts.resolve(&uri, &config, no_timeout()).unwrap();
        assert_eq!(twin.hosts.lock().len(), 1);
        for i in 0..MAX_HOSTS + 5 {
            let uri: Uri = format!("http://127.0.0.1:{}/", 10_000 + i).parse().unwrap();
            cache.resolve(&uri, &config, no_timeout()).unwrap();
        }
        assert!(cache.lock().len() <= MAX_HOSTS);
    }

    #[test]
    fn proxies_are_shown_without_credentials_and_never_carry_the_key_in_clear() {
        let proxy = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
            .host("proxy.test")
            .port(3128)
            .username("user")
            .password("s3cret")
            .no_proxy("127.0.0.1")
            .build()
            .unwrap();
        let net = NetConfig::from_env_only().with_proxy(Some(proxy));
        let shown = net.describe_proxy("https://gateway.pixazo.ai");
        assert_eq!(shown, "http://proxy.test:3128 (a CONNECT tunnel)");
        assert!(!format!("{net:?}").contains("s3cret"));
        assert!(net.key_in_clear("https://gateway.pixazo.ai").is_none());
        assert!(net.key_in_clear("http://gateway.test").is_some());
        assert!(net.key_in_clear("http://127.0.0.1:8787").is_none());
        assert!(net
            .describe_proxy("http://127.0.0.1:8787")
            .starts_with("none for this host"));
    }
}

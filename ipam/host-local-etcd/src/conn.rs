//! The connection of one call to the etcd cluster, with the call's deadline, and what each
//! attempt of a request came to ([`Outcome`]).
//!
//! Every reply is classified by its gRPC code ([`tonic::Code`]), never by the text of a
//! message: an unreachable member, "no leader", a timeout are [`Outcome::Retry`] (another
//! member, or the same one a moment later, may succeed); a definite refusal of etcd (its
//! NOSPACE alarm, permission denied, invalid auth, a request too large, a certificate refused)
//! is [`Outcome::Fatal`] and is reported at once, never retried. The few gRPC codes that etcd
//! uses for both kinds are told apart by etcd's own error descriptions (the table of its
//! `rpctypes` package), as etcd's Go client does.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::{Duration, Instant};

use cni::{Error, Result};
use etcd_client::{Client, ConnectOptions, KvClient};
use tonic::Code;

use host_local::etcd::EtcdConfig;

/// One attempt of a request never takes longer than this, so that a request stuck on a
/// member that just died is retried on another within the call's deadline.
const ATTEMPT_CAP: Duration = Duration::from_millis(2000);
/// The largest reply accepted.
const MAX_REPLY: usize = 256 << 20;

/// etcd's descriptions of the errors that share a gRPC code with errors of the other kind
/// (`go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes`).
const ETCD_NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
const ETCD_TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
const ETCD_NOT_LEADER: &str = "etcdserver: not leader";
const ETCD_REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
const ETCD_AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";

/// Why etcd refused a request: a definite answer, which another try would get again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The NOSPACE alarm is raised: the database reached its quota (`--quota-backend-bytes`).
    NoSpace,
    /// The client's user has no permission on the keys (etcd auth, RBAC).
    PermissionDenied(String),
    /// The client's credentials (token, user, password) were refused.
    InvalidAuth(String),
    /// The request (or its reply) is larger than a member or this client accepts.
    TooLarge(String),
    /// A certificate was refused in the TLS handshake (either way).
    Tls(String),
    /// Any other definite refusal, by its gRPC code.
    Other(Code, String),
    /// The client could not be set up (an endpoint URL it cannot use): nothing was sent.
    Client(String),
}

impl Refusal {
    /// What a person reads: the cause and what to do.
    pub fn explain(&self) -> String {
        match self {
            Refusal::NoSpace => format!(
                "refused: etcd's database is full (its NOSPACE alarm is raised: \"{ETCD_NO_SPACE}\"); nothing was \
                 written. Free space (etcdctl compact, etcdctl defrag) and clear the alarm (etcdctl alarm disarm)"
            ),
            Refusal::PermissionDenied(m) => format!(
                "refused: permission denied ({m}): the client's etcd user needs a role with readwrite on the prefix"
            ),
            Refusal::InvalidAuth(m) => {
                format!("refused: invalid authentication ({m}): check the client certificate (ipam.store.tls)")
            }
            Refusal::TooLarge(m) => format!("refused: the request is too large ({m})"),
            Refusal::Tls(m) => format!(
                "TLS handshake failed, check ipam.store.tls (ca, cert, key) against the members' certificates: {m}"
            ),
            Refusal::Other(code, m) => format!("refused by etcd ({code:?}): {m}"),
            Refusal::Client(m) => format!("cannot set up the etcd client: {m}"),
        }
    }
}

/// A failed attempt that another may fix.
#[derive(Debug, Clone)]
pub struct Trouble {
    pub code: Code,
    /// Whether the request may have reached a member (`false`: the connection failed first,
    /// nothing was sent).
    pub sent: bool,
    pub text: String,
}

/// What one attempt of a request came to.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// Failed; another attempt (on the next member) may succeed.
    Retry(Trouble),
    /// etcd refused: never retried.
    Fatal(Refusal),
    /// The call's deadline passed before an answer.
    Deadline,
}

/// An error with its whole chain of causes (tonic's "transport error" alone says nothing).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Every error of the chain of `e`, `e` first. An `io::Error` is followed by the error it
/// wraps (its `source()` skips that one).
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut v = Vec::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        v.push(c);
        if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            v.push(inner);
        }
        cur = c.source();
        if v.len() > 32 {
            break;
        }
    }
    v
}

/// The TLS error in the chain of `e`, if any: a handshake refused either way.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    causes(e).into_iter().find_map(|c| c.downcast_ref::<rustls::Error>())
}

/// Whether the chain of `e` says that the connection could not be made (nothing was sent).
fn connect_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).into_iter().any(|c| c.is::<tonic::ConnectError>())
}

/// What an etcd client error means.
pub fn classify(e: &etcd_client::Error) -> std::result::Result<Trouble, Refusal> {
    // The client's error has no source(): its causes start at what it wraps.
    let inner: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::IoError(io) => io,
        other => other,
    };
    let mut text = e.to_string();
    for c in causes(inner).into_iter().skip(1) {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
    }
    if let Some(t) = tls_error(inner) {
        return Err(Refusal::Tls(t.to_string()));
    }
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        // Before any request: the client's own setup (a URI, an argument).
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::EndpointError(_)
        | etcd_client::Error::InvalidMetadataValue(_) => return Err(Refusal::Client(text)),
        etcd_client::Error::TransportError(t) => {
            return Ok(Trouble {
                code: Code::Unavailable,
                sent: !connect_failed(t),
                text,
            })
        }
        _ => {
            return Ok(Trouble {
                code: Code::Unknown,
                sent: true,
                text,
            })
        }
    };
    let msg = status.message();
    let code = status.code();
    let retry = |sent: bool| {
        Ok(Trouble {
            code,
            sent,
            text: text.clone(),
        })
    };
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::Aborted => {
            let sent = !std::error::Error::source(status).is_some_and(connect_failed);
            retry(sent)
        }
        Code::ResourceExhausted if msg == ETCD_TOO_MANY_REQUESTS => retry(true),
        Code::ResourceExhausted if msg == ETCD_NO_SPACE => Err(Refusal::NoSpace),
        // gRPC's own limit on a message (ours on a reply, or the member's).
        Code::ResourceExhausted => Err(Refusal::TooLarge(msg.to_string())),
        Code::FailedPrecondition if msg == ETCD_NOT_LEADER => retry(true),
        Code::PermissionDenied => Err(Refusal::PermissionDenied(msg.to_string())),
        Code::Unauthenticated => Err(Refusal::InvalidAuth(msg.to_string())),
        Code::InvalidArgument if msg == ETCD_AUTH_FAILED => Err(Refusal::InvalidAuth(msg.to_string())),
        Code::InvalidArgument if msg == ETCD_REQUEST_TOO_LARGE => Err(Refusal::TooLarge(msg.to_string())),
        _ => Err(Refusal::Other(code, msg.to_string())),
    }
}

/// A connection to the cluster with the call's deadline.
pub struct Conn {
    rt: tokio::runtime::Runtime,
    opts: ConnectOptions,
    tls: Option<etcd_client::TlsOptions>,
    /// One client per endpoint, made when first used: a call talks to one member at a time
    /// (a client balanced over all of them connects to every one first, which costs more
    /// than the request) and moves on to the next after a failure.
    clients: RefCell<Vec<Option<Client>>>,
    /// The endpoint in use.
    cur: Cell<usize>,
    conf: EtcdConfig,
    deadline: Cell<Instant>,
}

impl Conn {
    /// Connects (lazily: the first request makes the connections).
    pub fn open(conf: &EtcdConfig) -> Result<Conn> {
        let deadline = Instant::now() + conf.timeout;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the etcd client runtime", e))?;
        let opts = ConnectOptions::new().with_require_leader(true);
        let mut tls_opts = None;
        if let Some(t) = &conf.tls {
            let read = |what: &str, p: &std::path::Path| {
                std::fs::read(p).map_err(|e| Error::io(format!("reading ipam.store.tls.{what} {}", p.display()), e))
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &t.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("ca", ca)?));
            }
            if let (Some(c), Some(k)) = (&t.cert, &t.key) {
                tls = tls.identity(etcd_client::Identity::from_pem(read("cert", c)?, read("key", k)?));
            }
            tls_opts = Some(tls);
        }
        let n = conf.endpoints.len();
        Ok(Conn {
            rt,
            opts,
            tls: tls_opts,
            clients: RefCell::new(vec![None; n]),
            // Concurrent calls start on different members.
            cur: Cell::new(std::process::id() as usize % n.max(1)),
            conf: conf.clone(),
            deadline: Cell::new(deadline),
        })
    }

    pub fn conf(&self) -> &EtcdConfig {
        &self.conf
    }

    /// A new deadline of `ipam.store.timeout` from now (each batch of an operator command
    /// has its own).
    pub fn renew_deadline(&self) {
        self.deadline.set(Instant::now() + self.conf.timeout);
    }

    fn endpoints(&self) -> String {
        self.conf.endpoints.join(",")
    }

    /// The client of the endpoint in use, made when first used: one HTTP/2 connection to that
    /// member (no balancer), connected here within `left` (TCP, TLS, HTTP/2: the trace step
    /// "etcd connect").
    fn client(&self, left: Duration) -> std::result::Result<Client, etcd_client::Error> {
        let i = self.cur.get();
        if let Some(c) = &self.clients.borrow()[i] {
            return Ok(c.clone());
        }
        let cap = ATTEMPT_CAP.min(self.conf.timeout).min(left);
        let mut ep = tonic::transport::Endpoint::from_shared(self.conf.endpoints[i].clone())?
            .connect_timeout(cap)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(ATTEMPT_CAP.min(self.conf.timeout))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        let c = self.rt.block_on(async {
            let ch = match tokio::time::timeout(cap, ep.connect()).await {
                Ok(ch) => ch?,
                Err(_) => {
                    // Nothing was sent.
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {}: no connection within {cap:?}", self.conf.endpoints[i]),
                    );
                    return Err(etcd_client::Error::GRpcStatus(tonic::Status::from_error(Box::new(
                        tonic::ConnectError(Box::new(e)),
                    ))));
                }
            };
            Client::from_channel(etcd_client::Channel::Tonic(ch), Some(self.opts.clone())).await
        })?;
        cni::trace::step("etcd connect");
        self.clients.borrow_mut()[i] = Some(c.clone());
        Ok(c)
    }

    /// After a failure: the next member.
    fn next_endpoint(&self) {
        self.cur.set((self.cur.get() + 1) % self.conf.endpoints.len());
    }

    /// One attempt of a request, bounded by the deadline and `ATTEMPT_CAP`.
    pub fn attempt<T, F, Fut>(&self, f: &mut F) -> Outcome<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let left = self.deadline.get().saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Deadline;
        }
        let r = match self.client(left) {
            Ok(client) => {
                let fut = f(client);
                self.rt
                    .block_on(async { tokio::time::timeout(left.min(ATTEMPT_CAP), fut).await })
            }
            Err(e) => Ok(Err(e)),
        };
        match r {
            Ok(Ok(v)) => Outcome::Done(v),
            Ok(Err(e)) => match classify(&e) {
                Ok(t) => {
                    self.next_endpoint();
                    Outcome::Retry(t)
                }
                Err(refusal) => Outcome::Fatal(refusal),
            },
            Err(_) => {
                self.next_endpoint();
                Outcome::Retry(Trouble {
                    code: Code::DeadlineExceeded,
                    sent: true,
                    text: "request timed out".into(),
                })
            }
        }
    }

    /// The error of a refused request, at once: code 5 (an I/O failure of the store), or 7
    /// for a client that cannot be set up from `ipam.store`.
    pub fn refused(&self, what: &str, r: &Refusal) -> Error {
        let msg = format!("etcd ({}): {what}: {}", self.endpoints(), r.explain());
        match r {
            Refusal::Client(_) => Error::invalid_config(format!("ipam.store: {msg}")),
            _ => Error::io_failure(msg),
        }
    }

    /// The error of a call that ran out of time (code 11).
    pub fn trouble(&self, what: &str, last: &str) -> Error {
        Error::try_again_later(format!(
            "etcd ({}): {what}: no success within the deadline of {:.1}s (ipam.store.timeout): {last}",
            self.endpoints(),
            self.conf.timeout.as_secs_f64()
        ))
    }

    /// Waits a little before attempt `n + 1` (never past the deadline).
    pub fn pause(&self, n: u32) {
        let d = Duration::from_millis((20u64 << n.min(4)).min(300));
        let left = self.deadline.get().saturating_duration_since(Instant::now());
        std::thread::sleep(d.min(left));
    }

    /// A request that is safe to repeat (a read, a compare-guarded write whose first try can
    /// only have failed whole), retried until the deadline; a refusal ends it at once.
    pub fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = String::from("no attempt made");
        // What a member that answered said ("no leader") tells more than a dead member's
        // refused connection.
        let mut answered: Option<String> = None;
        let mut n = 0;
        loop {
            match self.attempt(&mut f) {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fatal(r) => return Err(self.refused(what, &r)),
                Outcome::Deadline => return Err(self.trouble(what, answered.as_deref().unwrap_or(&last))),
                Outcome::Retry(t) => {
                    if t.sent {
                        answered = Some(t.text.clone());
                    }
                    last = t.text;
                }
            }
            self.pause(n);
            n += 1;
        }
    }

    /// The KV client of `c` (replies up to `MAX_REPLY`).
    pub fn kv(c: Client) -> KvClient {
        c.kv_client().max_decoding_message_size(MAX_REPLY)
    }

    /// The NOSPACE alarm, when a member has it raised (read through the cluster: needs a
    /// quorum).
    pub fn no_space_alarm(&self) -> Result<bool> {
        use etcd_client::{AlarmAction, AlarmType};
        let r = self.retry("reading the alarms", |mut c| async move {
            c.alarm(AlarmAction::Get, AlarmType::None, None).await
        })?;
        Ok(r.alarms().iter().any(|a| a.alarm() == AlarmType::Nospace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn definite_refusals_are_fatal_and_trouble_is_retried() {
        assert_eq!(
            classify(&status(Code::ResourceExhausted, ETCD_NO_SPACE)).unwrap_err(),
            Refusal::NoSpace
        );
        assert!(classify(&status(Code::ResourceExhausted, ETCD_TOO_MANY_REQUESTS)).is_ok());
        assert!(matches!(
            classify(&status(Code::PermissionDenied, "etcdserver: permission denied")),
            Err(Refusal::PermissionDenied(_))
        ));
        assert!(matches!(
            classify(&status(Code::Unauthenticated, "etcdserver: invalid auth token")),
            Err(Refusal::InvalidAuth(_))
        ));
        assert!(matches!(
            classify(&status(Code::InvalidArgument, ETCD_AUTH_FAILED)),
            Err(Refusal::InvalidAuth(_))
        ));
        assert!(matches!(
            classify(&status(Code::InvalidArgument, ETCD_REQUEST_TOO_LARGE)),
            Err(Refusal::TooLarge(_))
        ));
        assert!(matches!(
            classify(&status(
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            )),
            Err(Refusal::Other(Code::InvalidArgument, _))
        ));
        let t = classify(&status(Code::Unavailable, "etcdserver: no leader")).unwrap();
        assert!(t.sent);
        assert!(classify(&status(Code::FailedPrecondition, ETCD_NOT_LEADER)).is_ok());
        assert!(classify(&status(Code::DeadlineExceeded, "context deadline exceeded")).is_ok());
        // A connection that could not be made: nothing was sent.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let s = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(s.code(), Code::Unavailable);
        let t = classify(&etcd_client::Error::GRpcStatus(s)).unwrap();
        assert!(!t.sent, "{t:?}");
        // A certificate refused in the handshake, wrapped as the TLS connector wraps it.
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, bad);
        let s = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert!(matches!(
            classify(&etcd_client::Error::GRpcStatus(s)),
            Err(Refusal::Tls(_))
        ));
    }

    #[test]
    fn a_refusal_says_what_to_do() {
        let m = Refusal::NoSpace.explain();
        assert!(
            m.contains("database space exceeded") && m.contains("alarm disarm"),
            "{m}"
        );
    }
}

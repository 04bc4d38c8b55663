//! The etcd lease store in the key layout of the versions before the address-sorted one
//! ([`crate::v2`]): it serves a network whose keys are still in this layout until
//! `host-local migrate` moves them (see the crate's module doc), with the same protocol as
//! those versions, so that hosts can be upgraded one by one. Its writes also compare that the
//! network has no layout marker (a migration started stops them).
//!
//! ```text
//! <prefix>/<network>/ips/<ip>      a lease: {"containerId","ifname","host","token","claim","time"}
//! <prefix>/<network>/last/<n>      the address last reserved in range set n (shared round robin)
//! <prefix>/<network>/boot/<host>   the boot id of the host's last call (reboot handling)
//! ```
//!
//! **One transaction per call, no lock.** A call reads the network's leases once (one
//! linearizable read), decides in memory as the on-disk store does, and writes everything it
//! decided at the end of [`Store::transact`] in one transaction: each new lease under the compare
//! `create_revision == 0` (nobody holds it), each release under `mod_revision == <seen>` (it is
//! still the lease we saw). A dual-stack ADD is one transaction. When a compare fails another
//! call won a race: nothing was written, the call reads again and moves on to the next free
//! candidate, starting a random step further on so that losers spread out instead of
//! colliding again.
//!
//! **Unknown outcomes.** Every call writes a random token into its leases. When a write's
//! reply is lost, the call reads the keys back: our token there means the write committed.
//!
//! **etcd trouble.** Every request requires a leader (`hasleader`), so "no leader" comes back at
//! once instead of hanging. A call talks to one member (concurrent calls start on different
//! ones); a failed request is retried on the next member (a dead member costs a retry) until
//! the call's deadline (`ipam.store.timeout`), then the call fails with code 11 having written
//! nothing. A definite refusal (the NOSPACE alarm, permission denied, ...) is code 5 at once
//! (see [`crate::conn`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use cni::{Error, Result};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

pub use crate::conn::Conn;
use crate::conn::{Outcome, Refusal};
pub use host_local::etcd::EtcdConfig;
use host_local::store::{GcReport, Owner, Store};

/// After lost races, the allocator skips at most this many free candidates.
const MAX_SPREAD: u64 = 64;
/// At most this many lost races in one call.
const MAX_ROUNDS: usize = 200;

/// A lease as stored in etcd (this layout leaves out its `ip`: the key has it).
pub use crate::layout::Lease;

/// A lease read from etcd.
#[derive(Debug, Clone)]
pub struct Held {
    pub lease: Lease,
    pub mod_revision: i64,
}

/// Leases, last reserved addresses, this host's boot record.
type Snapshot = (BTreeMap<IpAddr, Held>, BTreeMap<usize, IpAddr>, Option<(String, i64)>);

impl Conn {
    fn net_prefix(&self, network: &str) -> String {
        format!("{}/{network}/", self.conf().prefix)
    }

    pub fn lease_key(&self, network: &str, ip: IpAddr) -> String {
        format!("{}ips/{ip}", self.net_prefix(network))
    }

    fn last_key(&self, network: &str, idx: usize) -> String {
        format!("{}last/{idx}", self.net_prefix(network))
    }

    /// The layout marker of a network (absent in this layout: see [`crate::layout`]).
    fn marker_key(&self, network: &str) -> String {
        format!("{}layout", self.net_prefix(network))
    }

    fn boot_key(&self, network: &str) -> String {
        format!("{}boot/{}", self.net_prefix(network), self.conf().host)
    }

    /// Every lease of `network`, and the last reserved address of each range set.
    pub fn snapshot(&self, network: &str) -> Result<(BTreeMap<IpAddr, Held>, BTreeMap<usize, IpAddr>)> {
        self.snapshot_with_boot(network).map(|(l, r, _)| (l, r))
    }

    /// [`Conn::snapshot`] and this host's boot record: (boot id, mod revision). A network whose
    /// layout marker appeared (`host-local migrate` started) is code 11: the next call uses the
    /// new layout.
    fn snapshot_with_boot(&self, network: &str) -> Result<Snapshot> {
        let ips = format!("{}ips/", self.net_prefix(network));
        let last = format!("{}last/", self.net_prefix(network));
        let boot = self.boot_key(network);
        let marker = self.marker_key(network);
        let resp = self.retry("reading the leases", |c| {
            let mut c = Conn::kv(c);
            let txn = Txn::new().and_then([
                TxnOp::get(ips.clone(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(last.clone(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(boot.clone(), None),
                TxnOp::get(marker.clone(), None),
            ]);
            async move { c.txn(txn).await }
        })?;
        let mut leases = BTreeMap::new();
        let mut lasts = BTreeMap::new();
        let mut boot_rec = None;
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = op else { continue };
            for kv in g.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                if i == 0 {
                    let Some(ip) = key.strip_prefix(&ips).and_then(|s| s.parse::<IpAddr>().ok()) else {
                        continue;
                    };
                    match serde_json::from_slice::<Lease>(kv.value()) {
                        Ok(lease) => {
                            leases.insert(
                                ip,
                                Held {
                                    lease,
                                    mod_revision: kv.mod_revision(),
                                },
                            );
                        }
                        Err(e) => cni::log!("host-local: ignoring etcd key {key}: not a lease: {e}"),
                    }
                } else if i == 3 {
                    return Err(Error::try_again_later(format!(
                        "etcd: network {network} is being migrated to the key layout of this version (host-local migrate); try again"
                    )));
                } else if i == 2 {
                    boot_rec = Some((
                        String::from_utf8_lossy(kv.value()).trim().to_string(),
                        kv.mod_revision(),
                    ));
                } else if let Some(idx) = key.strip_prefix(&last).and_then(|s| s.parse::<usize>().ok()) {
                    if let Ok(ip) = String::from_utf8_lossy(kv.value()).trim().parse() {
                        lasts.insert(idx, ip);
                    }
                }
            }
        }
        Ok((leases, lasts, boot_rec))
    }
}

/// The etcd store of one network for one call.
pub struct EtcdStore {
    conn: Conn,
    network: String,
    token: String,
    leases: BTreeMap<IpAddr, Held>,
    last: BTreeMap<usize, IpAddr>,
    /// Reservations of this call: address → (lease, range set).
    new: BTreeMap<IpAddr, (Lease, usize)>,
    /// Releases of this call: address → the revision we saw.
    gone: BTreeMap<IpAddr, i64>,
    /// Leases of the attachment this call claims (see [`Store::claim`]).
    claims: BTreeMap<IpAddr, Held>,
    /// After a lost race: how many free candidates the next round may skip (at most).
    spread: u64,
    rounds: usize,
    /// This host's boot record as read: (boot id, mod revision).
    boot_rec: Option<(String, i64)>,
    /// The boot record to write in this call's transaction (a new boot), with what
    /// [`Store::reconcile_boot`] was asked, to redo it after a lost race.
    boot_new: Option<(String, bool)>,
}

impl EtcdStore {
    pub fn open(conf: &EtcdConfig, network: &str) -> Result<EtcdStore> {
        let conn = Conn::open(conf)?;
        Self::open_with(conn, network)
    }

    /// [`EtcdStore::open`] on a connection made.
    pub fn open_with(conn: Conn, network: &str) -> Result<EtcdStore> {
        let (leases, last, boot_rec) = conn.snapshot_with_boot(network)?;
        cni::trace::step("etcd read");
        Ok(EtcdStore {
            conn,
            network: network.to_string(),
            token: cni::ids::random_hex::<16>(),
            leases,
            last,
            new: BTreeMap::new(),
            gone: BTreeMap::new(),
            claims: BTreeMap::new(),
            spread: 0,
            rounds: 0,
            boot_rec,
            boot_new: None,
        })
    }

    fn host(&self) -> &str {
        &self.conn.conf().host
    }

    fn held(&self, ip: IpAddr) -> bool {
        self.new.contains_key(&ip) || (self.leases.contains_key(&ip) && !self.gone.contains_key(&ip))
    }

    fn matching(&self, id: &str, ifname: Option<&str>) -> Vec<IpAddr> {
        let id = id.trim();
        let mut v: Vec<IpAddr> = self
            .leases
            .iter()
            .filter(|(ip, _)| !self.gone.contains_key(ip))
            .filter(|(_, h)| h.lease.container_id == id && h.lease.ifname.as_deref() == ifname)
            .map(|(ip, _)| *ip)
            .collect();
        v.extend(
            self.new
                .iter()
                .filter(|(_, (l, _))| l.container_id == id && l.ifname.as_deref() == ifname)
                .map(|(ip, _)| *ip),
        );
        v
    }

    /// `e`, saying that the call's write may still be committed.
    fn unknown_outcome(&self, e: Error) -> Error {
        if self.new.is_empty() {
            return e;
        }
        let id = self
            .new
            .values()
            .next()
            .map(|(l, _)| l.container_id.as_str())
            .unwrap_or("");
        e.context(format!(
            "the outcome of the write is unknown (a lease it made, if any, names container {id} and goes with its DEL or GC)"
        ))
    }

    /// The one transaction of the call. `Ok(false)`: a compare failed, nothing was written.
    fn write(&mut self) -> Result<bool> {
        // Still this layout: `host-local migrate` did not start.
        let mut cmp = vec![Compare::version(
            self.conn.marker_key(&self.network),
            CompareOp::Equal,
            0,
        )];
        let mut ops = Vec::new();
        for (ip, (lease, _)) in &self.new {
            let key = self.conn.lease_key(&self.network, *ip);
            // An address whose lease this call releases (an earlier boot's) is taken over in
            // place: still the lease we read, instead of nobody's.
            match self.gone.get(ip) {
                Some(rev) => cmp.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)),
                None => cmp.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
            }
            ops.push(TxnOp::put(
                key,
                serde_json::to_vec(lease).expect("a lease serializes"),
                None,
            ));
        }
        for (ip, rev) in self.gone.iter().filter(|(ip, _)| !self.new.contains_key(ip)) {
            let key = self.conn.lease_key(&self.network, *ip);
            cmp.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
            ops.push(TxnOp::delete(key, None));
        }
        for (ip, h) in self.claims.iter().filter(|(ip, _)| !self.gone.contains_key(ip)) {
            let key = self.conn.lease_key(&self.network, *ip);
            cmp.push(Compare::mod_revision(key.clone(), CompareOp::Equal, h.mod_revision));
            let mut l = h.lease.clone();
            l.claim = Some(self.token.clone());
            ops.push(TxnOp::put(
                key,
                serde_json::to_vec(&l).expect("a lease serializes"),
                None,
            ));
        }
        let mut lasts: BTreeMap<usize, IpAddr> = BTreeMap::new();
        for (ip, (_, idx)) in &self.new {
            lasts.insert(*idx, *ip);
        }
        for (idx, ip) in lasts {
            ops.push(TxnOp::put(self.conn.last_key(&self.network, idx), ip.to_string(), None));
        }
        if let Some((boot, _)) = &self.boot_new {
            let key = self.conn.boot_key(&self.network);
            match &self.boot_rec {
                Some((_, rev)) => cmp.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)),
                None => cmp.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
            }
            ops.push(TxnOp::put(key, boot.clone(), None));
        }
        let txn = Txn::new().when(cmp).and_then(ops);
        let what = "writing the leases";
        // Whether an attempt that may have reached etcd failed without an answer: its write
        // may still commit, and a give-up says so.
        let mut unknown = false;
        let mut n = 0;
        loop {
            let mut send = |c| {
                let mut c = Conn::kv(c);
                let t = txn.clone();
                async move { c.txn(t).await }
            };
            let outcome = self.conn.attempt(&mut send);
            let fail = |e: Error| if unknown { self.unknown_outcome(e) } else { e };
            match outcome {
                Outcome::Done(resp) => return Ok(resp.succeeded()),
                // A refusal is definite: nothing of this attempt was written.
                Outcome::Fatal(r) => return Err(fail(self.conn.refused(what, &r))),
                Outcome::Deadline => return Err(fail(self.conn.trouble(what, "deadline reached"))),
                Outcome::Retry(t) if !t.sent => {
                    cni::log!("host-local: etcd write not sent ({}); trying the next member", t.text);
                }
                Outcome::Retry(t) => {
                    // The reply is lost: the write may have committed. Our token in the leases
                    // says it did; without reservations the compares make a repeat harmless.
                    cni::log!(
                        "host-local: etcd write failed ({}); checking whether it committed",
                        t.text
                    );
                    unknown = !self.new.is_empty();
                    if unknown {
                        let (now, _) = self.conn.snapshot(&self.network).map_err(|e| self.unknown_outcome(e))?;
                        let ours = self
                            .new
                            .keys()
                            .any(|ip| now.get(ip).is_some_and(|h| h.lease.token == self.token));
                        if ours {
                            return Ok(true);
                        }
                    }
                }
            }
            self.conn.pause(n);
            n += 1;
        }
    }
}

impl Store for EtcdStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool> {
        if self.held(ip) {
            return Ok(false);
        }
        // Taking back a lease this call released (the undo of a replaced static lease).
        if let Some(h) = self.leases.get(&ip) {
            if self.gone.contains_key(&ip)
                && h.lease.container_id == id.trim()
                && h.lease.ifname.as_deref() == Some(ifname)
            {
                self.gone.remove(&ip);
                return Ok(true);
            }
        }
        let lease = Lease {
            ip: None,
            container_id: id.trim().to_string(),
            ifname: Some(ifname.to_string()),
            host: self.host().to_string(),
            token: self.token.clone(),
            claim: None,
            time: crate::now_secs(),
        };
        self.new.insert(ip, (lease, range_set));
        Ok(true)
    }

    fn release(&mut self, id: &str, ifname: &str, ip: IpAddr) -> Result<bool> {
        if let Some((l, _)) = self.new.get(&ip) {
            if l.container_id == id.trim() && l.ifname.as_deref() == Some(ifname) {
                self.new.remove(&ip);
                return Ok(true);
            }
            return Ok(false);
        }
        match self.leases.get(&ip) {
            Some(h) if h.lease.container_id == id.trim() && h.lease.ifname.as_deref() == Some(ifname) => {
                self.gone.insert(ip, h.mod_revision);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn is_reserved(&mut self, ip: IpAddr) -> Result<bool> {
        Ok(self.held(ip))
    }

    fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>> {
        if let Some((l, _)) = self.new.get(&ip) {
            return Ok(Some(l.owner()));
        }
        if self.gone.contains_key(&ip) {
            return Ok(None);
        }
        Ok(self.leases.get(&ip).map(|h| h.lease.owner()))
    }

    fn reconcile_boot(&mut self, boot_id: &str, release: bool) -> Result<Vec<IpAddr>> {
        let recorded = self.boot_rec.as_ref().map(|(b, _)| b.as_str());
        if recorded == Some(boot_id) {
            self.boot_new = None;
            return Ok(Vec::new());
        }
        let mut released = Vec::new();
        if release && recorded.is_some() {
            // Only this host's leases: the other hosts did not reboot.
            let host = self.host().to_string();
            for (ip, h) in &self.leases {
                if h.lease.host == host && !self.gone.contains_key(ip) {
                    released.push(*ip);
                }
            }
            for ip in &released {
                let rev = self.leases[ip].mod_revision;
                self.gone.insert(*ip, rev);
            }
            if !released.is_empty() {
                cni::log!(
                    "host-local: host {host} rebooted since its last call on network {}; releasing its {} lease(s)",
                    self.network,
                    released.len()
                );
            }
        }
        self.boot_new = Some((boot_id.to_string(), release));
        Ok(released)
    }

    fn last_reserved(&mut self, range_set: usize) -> Result<Option<IpAddr>> {
        let last = self
            .new
            .iter()
            .filter(|(_, (_, i))| *i == range_set)
            .map(|(ip, _)| *ip)
            .next_back()
            .or_else(|| self.last.get(&range_set).copied());
        Ok(last)
    }

    fn spread(&mut self, _range_set: usize) -> usize {
        if self.spread == 0 {
            return 0;
        }
        cni::ids::random_below(self.spread) as usize
    }

    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut ips = self.matching(id, Some(ifname));
        for ip in self.matching(id, None) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(ips)
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut ips = self.matching(id, Some(ifname));
        if ips.is_empty() {
            ips = self.matching(id, None);
        }
        for ip in &ips {
            if self.new.remove(ip).is_none() {
                if let Some(h) = self.leases.get(ip) {
                    self.gone.insert(*ip, h.mod_revision);
                }
            }
        }
        Ok(ips)
    }

    /// Interim: the etcd store does not yet tell the calls of one attachment apart, so an undo
    /// releases what the attachment holds (as before the claim was introduced).
    /// As in this version's layout ([`crate::v2`]): the call `token` claims the attachment's
    /// leases (`claim` in each, under its `mod_revision`), and its new leases carry it.
    fn claim(&mut self, id: &str, ifname: &str, token: &str) -> Result<()> {
        self.token = token.to_string();
        let mut ips = self.matching(id, Some(ifname));
        ips.extend(self.matching(id, None));
        for ip in ips {
            if let Some(h) = self.leases.get(&ip) {
                if h.lease.claim.as_deref() != Some(token) {
                    self.claims.insert(ip, h.clone());
                }
            }
        }
        Ok(())
    }

    /// Releases the attachment's leases that the ADD `token` made, unless claimed since.
    fn release_for_undo(&mut self, id: &str, ifname: &str, token: &str) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for ip in self.matching(id, Some(ifname)) {
            let Some(h) = self.leases.get(&ip) else { continue };
            if h.lease.token == token && h.lease.claim.as_deref().is_none_or(|c| c == token) {
                self.claims.remove(&ip);
                self.gone.insert(ip, h.mod_revision);
                released.push(ip);
            }
        }
        Ok(released)
    }

    fn gc(&mut self, keep: &dyn Fn(&Owner) -> bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        let host = self.host().to_string();
        for (ip, h) in &self.leases {
            if h.lease.host != host || self.gone.contains_key(ip) {
                continue;
            }
            if keep(&h.lease.owner()) {
                report.kept += 1;
            } else {
                report.released.push(*ip);
            }
        }
        for ip in &report.released {
            let rev = self.leases[ip].mod_revision;
            self.gone.insert(*ip, rev);
        }
        Ok(report)
    }

    fn check_writable(&mut self) -> Result<()> {
        // The linearizable read at open needed a leader and a quorum; a full database refuses
        // every write that adds.
        if self.conn.no_space_alarm()? {
            return Err(self.conn.refused("STATUS", &Refusal::NoSpace));
        }
        Ok(())
    }

    /// `f`, then the call's transaction; after a lost race, `f` again on the store as it is
    /// now (at most `MAX_ROUNDS` rounds, within the deadline).
    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn Store) -> Result<()>) -> Result<()> {
        loop {
            f(self)?;
            if self.try_commit()? {
                return Ok(());
            }
            self.refresh()?;
        }
    }
}

impl EtcdStore {
    /// Writes what the call staged. `Ok(false)`: another call changed what it relied on
    /// first; nothing was written, and [`EtcdStore::refresh`] starts the next round.
    fn try_commit(&mut self) -> Result<bool> {
        if self.new.is_empty() && self.gone.is_empty() && self.claims.is_empty() && self.boot_new.is_none() {
            return Ok(true);
        }
        let ok = self.write()?;
        cni::trace::step("etcd write");
        if ok {
            self.new.clear();
            self.gone.clear();
            self.claims.clear();
            self.boot_new = None;
        }
        Ok(ok)
    }

    /// After a lost race: drops what the call staged and takes in the store as it is now.
    fn refresh(&mut self) -> Result<()> {
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(Error::try_again_later(format!(
                "etcd: lost the race for an address {MAX_ROUNDS} times in one call; try again"
            )));
        }
        let (leases, last, boot_rec) = self.conn.snapshot_with_boot(&self.network)?;
        // Leases that appeared since the last read: about as many callers as won meanwhile,
        // so at least that many are contending.
        let appeared = leases.keys().filter(|ip| !self.leases.contains_key(ip)).count() as u64;
        self.leases = leases;
        self.last = last;
        self.boot_rec = boot_rec;
        self.new.clear();
        self.gone.clear();
        self.claims.clear();
        if let Some((boot, release)) = self.boot_new.take() {
            self.reconcile_boot(&boot, release)?;
        }
        self.spread = (1u64 << (2 * self.rounds.min(3))).max(2 * appeared).min(MAX_SPREAD);
        Ok(())
    }
}

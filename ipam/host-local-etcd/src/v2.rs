//! The etcd store in the layout sortable by address, with its two indexes (see the crate's
//! module doc for the layout and the protocol).
//!
//! A call knows only what it read: the attachment's leases (its index entry), the round-robin
//! pointers, this host's boot record, and windows of lease keys it read on the way. An address
//! it knows nothing about is reserved on speculation (the commit's `create_revision == 0`
//! decides); when that fails, the failed transaction's other branch has already read the
//! window of keys after it, so the next round picks from what is really there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use cni::{Error, Result};
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};

use host_local::store::{GcReport, Owner, Store};

use crate::conn::{Conn, Outcome, Refusal};
use crate::layout::{num, prefix_end, Fam, Held, Keys, Lease, LAYOUT_MIGRATING, LAYOUT_V2};

/// The first window read from an address holds at most this many keys.
const WINDOW: i64 = 64;
/// A window read after a full one holds up to this many.
const MAX_WINDOW: i64 = 4096;
/// After lost races, the allocator skips at most this many free candidates.
const MAX_SPREAD: u64 = 1024;
/// A window read covers at most this many addresses (its keys at most [`WINDOW`], or more
/// after a full one): in a sparse range one window tells about all of them.
const SPAN: u128 = 1024;
/// At most this many lost races in one call.
const MAX_ROUNDS: usize = 200;
/// Sub-transactions per transaction of a sweep (releases that stand alone: GC, a reboot).
const SWEEP_BATCH: usize = 100;
/// Index entries per page when a host's leases are read.
const PAGE: i64 = 1000;

fn lease_of(kv: &KeyValue) -> Option<Held> {
    serde_json::from_slice::<Lease>(kv.value()).ok().map(|lease| Held {
        lease,
        mod_revision: kv.mod_revision(),
    })
}

fn text(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.value()).trim().to_string()
}

/// What the network's layout marker and today's keys say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Marked as this layout.
    V2,
    /// No marker and no lease of today's layout: nobody used the network yet; the first write
    /// marks it.
    Fresh,
    /// Leases of today's layout, not migrated: served by [`crate::store`].
    Old,
    /// `host-local migrate` is moving the leases.
    Migrating,
    /// A marker this version does not know (a later version's layout).
    Unknown,
}

impl Layout {
    /// What the marker's value (absent: `None`) and the probe of today's keys say.
    pub fn of(marker: Option<&str>, old_keys: bool) -> Layout {
        match marker {
            Some(LAYOUT_V2) => Layout::V2,
            Some(LAYOUT_MIGRATING) => Layout::Migrating,
            Some(_) => Layout::Unknown,
            None if old_keys => Layout::Old,
            None => Layout::Fresh,
        }
    }
}

/// Windows of lease keys read: the addresses in each interval are known, held or free.
#[derive(Debug, Default, Clone)]
struct Windows {
    /// Per family: interval start → end (inclusive), not overlapping.
    known: BTreeMap<(Fam, u128), u128>,
    held: BTreeSet<(Fam, u128)>,
    /// Keys created after the call's first read (another call won a race).
    appeared: usize,
}

impl Windows {
    /// `Some(held)` when `ip` lies in a window read.
    fn get(&self, ip: IpAddr) -> Option<bool> {
        let (f, v) = (Fam::of(ip), num(ip));
        let (&(kf, lo), &hi) = self.known.range(..=(f, v)).next_back()?;
        (kf == f && lo <= v && v <= hi).then(|| self.held.contains(&(f, v)))
    }

    /// Records that [lo, hi] of family `f` holds exactly the keys `keys`.
    fn add(&mut self, f: Fam, lo: u128, hi: u128, keys: &[u128]) {
        let inside: Vec<(Fam, u128)> = self.held.range((f, lo)..=(f, hi)).copied().collect();
        for k in inside {
            self.held.remove(&k);
        }
        for &k in keys {
            self.held.insert((f, k));
        }
        let (mut lo, mut hi) = (lo, hi);
        // Merge with the intervals it touches.
        let touching: Vec<(Fam, u128)> = self
            .known
            .range((f, 0)..=(f, hi.saturating_add(1)))
            .filter(|(&(_, a), &b)| b.saturating_add(1) >= lo && a <= hi.saturating_add(1))
            .map(|(k, _)| *k)
            .collect();
        for k in touching {
            let b = self.known.remove(&k).expect("listed");
            lo = lo.min(k.1);
            hi = hi.max(b);
        }
        self.known.insert((f, lo), hi);
    }

    fn set(&mut self, ip: IpAddr, held: bool) {
        let k = (Fam::of(ip), num(ip));
        if held {
            self.held.insert(k);
        } else {
            self.held.remove(&k);
        }
    }
}

/// A reservation of this call.
#[derive(Debug, Clone)]
struct New {
    lease: Lease,
    set: usize,
    /// The lease it replaces in place (an earlier boot's, released in the same call).
    over: Option<Held>,
}

/// One read of a read set, in the order sent.
#[derive(Debug, Clone)]
enum Read {
    Marker,
    OldProbe,
    Att(String),
    Last,
    Boot,
    Point(IpAddr),
    /// Keys from this address on, at most `limit`, below `end` (inclusive).
    Window(IpAddr, u128, i64),
}

/// The etcd store of one network for one call.
pub struct EtcdStore {
    conn: Conn,
    keys: Keys,
    network: String,
    token: String,
    layout: Layout,
    /// The revision of the call's first read.
    rev0: i64,
    /// The container whose attachment index was read, and its leases (all its interfaces),
    /// and the revision of that read.
    att_id: Option<String>,
    att_rev: i64,
    /// Every key of the container's attachment index as read, with its `mod_revision`.
    att_keys: BTreeMap<Vec<u8>, i64>,
    /// Whether the attachment index was read through the cluster (linearizable), or only
    /// from one member (the first read): then the call's transaction checks it, and a call
    /// that writes nothing checks it with a read-only transaction.
    att_checked: bool,
    att: BTreeMap<IpAddr, Held>,
    /// Addresses read one by one: whether a key is there, and its lease (`None` also for a
    /// value that is not a lease).
    point: BTreeMap<IpAddr, (bool, Option<Held>)>,
    windows: Windows,
    last: BTreeMap<usize, IpAddr>,
    boot_rec: Option<(String, i64)>,
    new: BTreeMap<IpAddr, New>,
    gone: BTreeMap<IpAddr, Held>,
    claims: BTreeMap<IpAddr, Held>,
    /// Releases that stand alone (GC, a reboot), written in their own transactions first.
    sweep: BTreeMap<IpAddr, Held>,
    /// The boot record to write (a new boot), with what [`Store::reconcile_boot`] was asked.
    boot_new: Option<(String, bool)>,
    spread: u64,
    rounds: usize,
    /// What the other branch of a failed commit read, for [`Store::refresh`].
    reread: Option<(Vec<Read>, TxnResponse)>,
    /// The size of the next window read after a full one.
    window: i64,
    /// Whether the last window read returned as many keys as it asked for.
    last_full: bool,
}

/// The first read of a call: the marker, a probe of today's layout, the attachment's index
/// (when the call names one), the pointers, this host's boot record.
fn first_reads(att: Option<&str>) -> Vec<Read> {
    let mut v = vec![Read::Marker, Read::OldProbe, Read::Last, Read::Boot];
    if let Some(id) = att {
        v.push(Read::Att(id.to_string()));
    }
    v
}

impl EtcdStore {
    fn host(&self) -> &str {
        &self.conn.conf().host
    }

    /// The request of read `r`; `ser`: served by the member from its own state (no round of
    /// the cluster), for the first read, whose decisions every write checks anyway.
    fn op(&self, r: &Read, ser: bool) -> TxnOp {
        let o = |g: GetOptions| Some(if ser { g.with_serializable() } else { g });
        let k = &self.keys;
        match r {
            Read::Marker => TxnOp::get(k.marker(), o(GetOptions::new())),
            Read::OldProbe => TxnOp::get(
                k.old_prefix(),
                o(GetOptions::new().with_prefix().with_keys_only().with_limit(1)),
            ),
            Read::Att(id) => TxnOp::get(k.att_prefix(id), o(GetOptions::new().with_prefix())),
            Read::Last => TxnOp::get(k.last_prefix(), o(GetOptions::new().with_prefix())),
            Read::Boot => TxnOp::get(k.boot(self.host()), o(GetOptions::new())),
            Read::Point(ip) => TxnOp::get(k.lease(*ip), o(GetOptions::new())),
            Read::Window(ip, end, limit) => {
                let f = Fam::of(*ip);
                let end_key = if *end >= f.max() {
                    k.fam_end(f).into_bytes()
                } else {
                    k.lease(f.ip(end + 1)).into_bytes()
                };
                TxnOp::get(
                    k.lease(*ip),
                    o(GetOptions::new()
                        .with_range(end_key)
                        .with_keys_only()
                        .with_limit(*limit)),
                )
            }
        }
    }

    /// Reads `reads` in one read-only transaction (one linearizable read).
    fn read(conn: &Conn, ops: Vec<TxnOp>) -> Result<TxnResponse> {
        conn.retry("reading the leases", |c| {
            let mut c = Conn::kv(c);
            let t = Txn::new().and_then(ops.clone());
            async move { c.txn(t).await }
        })
    }

    /// Takes in what `reads` returned.
    fn apply(&mut self, reads: &[Read], resp: &TxnResponse) {
        let mut marker = None;
        let mut old = false;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        for (r, op) in reads.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(g) = op else { continue };
            let kvs = g.kvs();
            match r {
                Read::Marker => marker = kvs.first().map(text),
                Read::OldProbe => old = !kvs.is_empty(),
                Read::Att(id) => {
                    self.att_id = Some(id.clone());
                    self.att_rev = rev;
                    self.att_checked = true;
                    self.att.clear();
                    self.att_keys = kvs.iter().map(|kv| (kv.key().to_vec(), kv.mod_revision())).collect();
                    for kv in kvs {
                        let key = String::from_utf8_lossy(kv.key());
                        match (Keys::parse_index(&key), lease_of(kv)) {
                            (Some(ip), Some(h)) => {
                                self.att.insert(ip, h);
                            }
                            _ => cni::log!("host-local: ignoring etcd key {key}: not an index entry"),
                        }
                    }
                }
                Read::Last => {
                    self.last.clear();
                    for kv in kvs {
                        let key = String::from_utf8_lossy(kv.key());
                        let idx = key
                            .strip_prefix(&self.keys.last_prefix())
                            .and_then(|s| s.parse::<usize>().ok());
                        if let (Some(idx), Ok(ip)) = (idx, text(kv).parse::<IpAddr>()) {
                            self.last.insert(idx, ip);
                        }
                    }
                }
                Read::Boot => self.boot_rec = kvs.first().map(|kv| (text(kv), kv.mod_revision())),
                Read::Point(ip) => {
                    let h = kvs.first().and_then(lease_of);
                    self.point.insert(*ip, (!kvs.is_empty(), h));
                }
                Read::Window(ip, end, limit) => {
                    let f = Fam::of(*ip);
                    let ks: Vec<u128> = kvs
                        .iter()
                        .filter_map(|kv| self.keys.parse_lease(&String::from_utf8_lossy(kv.key())))
                        .map(num)
                        .collect();
                    self.windows.appeared += kvs.iter().filter(|kv| kv.create_revision() > self.rev0).count();
                    self.last_full = kvs.len() as i64 >= *limit;
                    let hi = if self.last_full {
                        ks.last().copied().unwrap_or(*end)
                    } else {
                        *end
                    };
                    self.windows.add(f, num(*ip), hi, &ks);
                    // What a window says is newer than an address read alone earlier.
                    let (lo, held) = (num(*ip), &self.windows.held);
                    self.point.retain(|p, (exists, _)| {
                        let v = num(*p);
                        Fam::of(*p) != f || v < lo || v > hi || *exists == held.contains(&(f, v))
                    });
                }
            }
        }
        if reads.iter().any(|r| matches!(r, Read::Marker)) {
            self.layout = Layout::of(marker.as_deref(), old);
        }
    }

    /// Opens the network's store: one read. `Err` with the layout when the network is not in
    /// this layout (today's, or being migrated).
    pub fn open(
        conn: Conn,
        network: &str,
        att: Option<&str>,
    ) -> Result<std::result::Result<EtcdStore, (Conn, Layout)>> {
        let keys = Keys::new(&conn.conf().prefix, network);
        let mut s = EtcdStore {
            conn,
            keys,
            network: network.to_string(),
            token: cni::ids::random_hex::<16>(),
            layout: Layout::Fresh,
            rev0: 0,
            att_id: None,
            att_rev: 0,
            att_keys: BTreeMap::new(),
            att_checked: true,
            att: BTreeMap::new(),
            point: BTreeMap::new(),
            windows: Windows::default(),
            last: BTreeMap::new(),
            boot_rec: None,
            new: BTreeMap::new(),
            gone: BTreeMap::new(),
            claims: BTreeMap::new(),
            sweep: BTreeMap::new(),
            boot_new: None,
            spread: 0,
            rounds: 0,
            reread: None,
            window: WINDOW,
            last_full: false,
        };
        let reads = first_reads(att);
        let ops = reads.iter().map(|r| s.op(r, true)).collect();
        let resp = Self::read(&s.conn, ops)?;
        s.rev0 = resp.header().map(|h| h.revision()).unwrap_or(0);
        s.apply(&reads, &resp);
        s.att_checked = att.is_none();
        cni::trace::step("etcd read");
        match s.layout {
            Layout::V2 | Layout::Fresh => Ok(Ok(s)),
            other => Ok(Err((s.conn, other))),
        }
    }

    /// The call's token (written into its leases; see [`Store::claim`]).
    pub fn set_token(&mut self, token: &str) {
        self.token = token.to_string();
    }

    /// Reads `reads` now and takes them in.
    fn read_now(&mut self, reads: Vec<Read>) -> Result<()> {
        let ops = reads.iter().map(|r| self.op(r, false)).collect();
        let resp = Self::read(&self.conn, ops)?;
        self.apply(&reads, &resp);
        Ok(())
    }

    /// The attachment index of container `id` (read when the call did not name it first).
    fn need_att(&mut self, id: &str) -> Result<()> {
        if self.att_id.as_deref() != Some(id) {
            self.read_now(vec![Read::Att(id.to_string())])?;
        }
        Ok(())
    }

    /// What is known of `ip`, without a read: `Some(held)`.
    fn known(&self, ip: IpAddr) -> Option<bool> {
        if self.new.contains_key(&ip) {
            return Some(true);
        }
        if self.gone.contains_key(&ip) || self.sweep.contains_key(&ip) {
            return Some(false);
        }
        if self.att.contains_key(&ip) || self.claims.contains_key(&ip) {
            return Some(true);
        }
        if let Some((exists, _)) = self.point.get(&ip) {
            return Some(*exists);
        }
        self.windows.get(ip)
    }

    /// Reads the window of keys from `ip` on (growing after a full one).
    fn read_window(&mut self, ip: IpAddr) -> Result<()> {
        let f = Fam::of(ip);
        let limit = self.window;
        let end = num(ip).saturating_add(SPAN.max(4 * limit as u128) - 1).min(f.max());
        self.read_now(vec![Read::Window(ip, end, limit)])?;
        // The next read after a window that came back full is larger.
        self.window = if self.last_full {
            (limit * 4).min(MAX_WINDOW)
        } else {
            WINDOW
        };
        Ok(())
    }

    /// The lease at `ip`, read if not known.
    fn lease_at(&mut self, ip: IpAddr) -> Result<Option<Held>> {
        if let Some(h) = self.att.get(&ip) {
            return Ok(Some(h.clone()));
        }
        if !self.point.contains_key(&ip) {
            self.read_now(vec![Read::Point(ip)])?;
        }
        Ok(self.point.get(&ip).and_then(|(_, h)| h.clone()))
    }

    fn matching(&self, id: &str, ifname: Option<&str>) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .att
            .iter()
            .filter(|(ip, _)| !self.gone.contains_key(ip) && !self.sweep.contains_key(ip))
            .filter(|(_, h)| h.lease.is_of(id, ifname))
            .map(|(ip, _)| *ip)
            .collect();
        v.extend(
            self.new
                .iter()
                .filter(|(_, n)| n.lease.is_of(id, ifname))
                .map(|(ip, _)| *ip),
        );
        v
    }

    /// `e`, saying that the call's write may still be committed.
    fn unknown_outcome(&self, e: Error) -> Error {
        let Some(n) = self.new.values().next() else { return e };
        e.context(format!(
            "the outcome of the write is unknown (a lease it made, if any, names container {} and goes with its DEL or GC)",
            n.lease.container_id
        ))
    }

    fn lease_ops(&self, ip: IpAddr, l: &Lease, ops: &mut Vec<TxnOp>) {
        let v = l.to_json();
        ops.push(TxnOp::put(self.keys.lease(ip), v.clone(), None));
        ops.push(TxnOp::put(
            self.keys.att(&l.container_id, l.ifname.as_deref(), ip),
            v.clone(),
            None,
        ));
        ops.push(TxnOp::put(self.keys.host(&l.host, ip), v, None));
    }

    fn delete_ops(keys: &Keys, ip: IpAddr, l: &Lease, ops: &mut Vec<TxnOp>) {
        ops.push(TxnOp::delete(keys.lease(ip), None));
        ops.push(TxnOp::delete(keys.att(&l.container_id, l.ifname.as_deref(), ip), None));
        ops.push(TxnOp::delete(keys.host(&l.host, ip), None));
    }

    /// The compares that every write of this layout makes on the marker: it still says this
    /// layout, or (a fresh network) there is none and no lease of today's layout either.
    fn marker_cmp(&self) -> Vec<Compare> {
        let m = self.keys.marker();
        match self.layout {
            Layout::Fresh => vec![
                Compare::version(m, CompareOp::Equal, 0),
                // A range compare: no key under the prefix.
                Compare::create_revision(self.keys.old_prefix(), CompareOp::Equal, 0)
                    .with_range(prefix_end(&self.keys.old_prefix())),
            ],
            _ => vec![Compare::value(m, CompareOp::Equal, LAYOUT_V2)],
        }
    }

    /// What the call decided from the container's attachment index still holds: every entry
    /// read is unchanged and none appeared since (two ADDs of one attachment at once: one
    /// reserves, the other finds its lease in the next round; a first read served by a member
    /// that lagged behind is found out).
    fn att_cmp(&self) -> Vec<Compare> {
        let Some(id) = &self.att_id else { return Vec::new() };
        let p = self.keys.att_prefix(id);
        let mut cmp =
            vec![Compare::mod_revision(p.clone(), CompareOp::Less, self.att_rev + 1).with_range(prefix_end(&p))];
        for (k, rev) in &self.att_keys {
            cmp.push(Compare::mod_revision(k.clone(), CompareOp::Equal, *rev));
        }
        cmp
    }

    /// The reads that the other branch of a transaction makes for the next round.
    fn next_round_reads(&self) -> Vec<Read> {
        let mut reads = vec![Read::Marker, Read::OldProbe, Read::Last, Read::Boot];
        if let Some(id) = &self.att_id {
            reads.push(Read::Att(id.clone()));
        }
        reads
    }

    /// A call that writes nothing checks, through the cluster, what it read from one member:
    /// `Ok(false)` when the attachment index changed (the other branch read it again).
    fn verify(&mut self) -> Result<bool> {
        let reads = self.next_round_reads();
        let other: Vec<TxnOp> = reads.iter().map(|r| self.op(r, false)).collect();
        let txn = Txn::new().when(self.att_cmp()).or_else(other);
        let resp = self.conn.retry("checking the leases", |c| {
            let mut c = Conn::kv(c);
            let t = txn.clone();
            async move { c.txn(t).await }
        })?;
        if resp.succeeded() {
            self.att_checked = true;
            return Ok(true);
        }
        self.reread = Some((reads, resp));
        Ok(false)
    }

    /// The sweeps: releases that stand alone, in batches of sub-transactions (each lease
    /// under its own compare), before the call's own transaction. A reboot's sweep applies
    /// only while the boot record is still the one read.
    fn write_sweep(&mut self) -> Result<bool> {
        if self.sweep.is_empty() {
            return Ok(true);
        }
        let items: Vec<(IpAddr, Held)> = self.sweep.iter().map(|(ip, h)| (*ip, h.clone())).collect();
        for chunk in items.chunks(SWEEP_BATCH) {
            let mut subs = Vec::new();
            for (ip, h) in chunk {
                let mut ops = Vec::new();
                Self::delete_ops(&self.keys, *ip, &h.lease, &mut ops);
                subs.push(TxnOp::txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            self.keys.lease(*ip),
                            CompareOp::Equal,
                            h.mod_revision,
                        )])
                        .and_then(ops),
                ));
            }
            let mut cmp = self.marker_cmp();
            if self.boot_new.is_some() {
                let key = self.keys.boot(self.host());
                match &self.boot_rec {
                    Some((_, rev)) => cmp.push(Compare::mod_revision(key, CompareOp::Equal, *rev)),
                    None => cmp.push(Compare::create_revision(key, CompareOp::Equal, 0)),
                }
            }
            let txn = Txn::new().when(cmp).and_then(subs);
            // Every sub-transaction is guarded: repeating a batch whose reply was lost is
            // harmless.
            let resp = self.conn.retry("releasing leases", |c| {
                let mut c = Conn::kv(c);
                let t = txn.clone();
                async move { c.txn(t).await }
            })?;
            if !resp.succeeded() {
                return Ok(false);
            }
            for (ip, _) in chunk {
                let h = self.sweep.remove(ip).expect("listed");
                self.windows.set(*ip, false);
                self.point.insert(*ip, (false, None));
                self.att.remove(ip);
                // A reservation that took the address over now creates it.
                if let Some(n) = self.new.get_mut(ip) {
                    if n.over.as_ref().is_some_and(|o| o.mod_revision == h.mod_revision) {
                        n.over = None;
                    }
                }
            }
        }
        Ok(true)
    }

    /// The one transaction of the call. `Ok(false)`: a compare failed, nothing was written;
    /// the other branch read what [`Store::refresh`] takes in.
    fn write(&mut self) -> Result<bool> {
        let mut cmp = self.marker_cmp();
        cmp.extend(self.att_cmp());
        let mut ops = Vec::new();
        if self.layout == Layout::Fresh {
            ops.push(TxnOp::put(self.keys.marker(), LAYOUT_V2, None));
        }
        for (ip, n) in &self.new {
            let key = self.keys.lease(*ip);
            match &n.over {
                Some(o) => {
                    cmp.push(Compare::mod_revision(key, CompareOp::Equal, o.mod_revision));
                    // The old lease's index entries go, unless the new lease has the same keys
                    // (a transaction never names a key twice).
                    let l = &o.lease;
                    let att = self.keys.att(&l.container_id, l.ifname.as_deref(), *ip);
                    if att != self.keys.att(&n.lease.container_id, n.lease.ifname.as_deref(), *ip) {
                        ops.push(TxnOp::delete(att, None));
                    }
                    if l.host != n.lease.host {
                        ops.push(TxnOp::delete(self.keys.host(&l.host, *ip), None));
                    }
                }
                None => cmp.push(Compare::create_revision(key, CompareOp::Equal, 0)),
            }
            self.lease_ops(*ip, &n.lease, &mut ops);
        }
        for (ip, h) in self.gone.iter().filter(|(ip, _)| !self.new.contains_key(ip)) {
            cmp.push(Compare::mod_revision(
                self.keys.lease(*ip),
                CompareOp::Equal,
                h.mod_revision,
            ));
            Self::delete_ops(&self.keys, *ip, &h.lease, &mut ops);
        }
        for (ip, h) in &self.claims {
            cmp.push(Compare::mod_revision(
                self.keys.lease(*ip),
                CompareOp::Equal,
                h.mod_revision,
            ));
            let mut l = h.lease.clone();
            l.claim = Some(self.token.clone());
            self.lease_ops(*ip, &l, &mut ops);
        }
        let mut lasts: BTreeMap<usize, IpAddr> = BTreeMap::new();
        for (ip, n) in &self.new {
            lasts.insert(n.set, *ip);
        }
        for (idx, ip) in lasts {
            ops.push(TxnOp::put(self.keys.last(idx), ip.to_string(), None));
        }
        if let Some((boot, _)) = &self.boot_new {
            let key = self.keys.boot(self.host());
            match &self.boot_rec {
                Some((_, rev)) => cmp.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)),
                None => cmp.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
            }
            ops.push(TxnOp::put(key, boot.clone(), None));
        }
        // The other branch: what the next round needs.
        let mut reads = self.next_round_reads();
        for ip in self.new.keys() {
            let f = Fam::of(*ip);
            reads.push(Read::Point(*ip));
            let end = num(*ip).saturating_add(SPAN - 1).min(f.max());
            reads.push(Read::Window(*ip, end, WINDOW));
        }
        for ip in self.gone.keys().chain(self.claims.keys()) {
            if !self.new.contains_key(ip) {
                reads.push(Read::Point(*ip));
            }
        }
        let other: Vec<TxnOp> = reads.iter().map(|r| self.op(r, false)).collect();
        let txn = Txn::new().when(cmp).and_then(ops).or_else(other);

        let what = "writing the leases";
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
                Outcome::Done(resp) => {
                    if resp.succeeded() {
                        return Ok(true);
                    }
                    self.reread = Some((reads, resp));
                    return Ok(false);
                }
                Outcome::Fatal(r) => return Err(fail(self.conn.refused(what, &r))),
                Outcome::Deadline => return Err(fail(self.conn.trouble(what, "deadline reached"))),
                Outcome::Retry(t) if !t.sent => {
                    cni::log!("host-local: etcd write not sent ({}); trying the next member", t.text);
                }
                Outcome::Retry(t) => {
                    // The reply is lost: the write may have committed. Our token in a new
                    // lease says it did; without reservations the compares make a repeat
                    // harmless.
                    cni::log!(
                        "host-local: etcd write failed ({}); checking whether it committed",
                        t.text
                    );
                    unknown = !self.new.is_empty();
                    if unknown {
                        let ips: Vec<IpAddr> = self.new.keys().copied().collect();
                        let ops = ips.iter().map(|ip| TxnOp::get(self.keys.lease(*ip), None)).collect();
                        let resp = Self::read(&self.conn, ops).map_err(|e| self.unknown_outcome(e))?;
                        let ours = resp.op_responses().iter().any(|op| match op {
                            TxnOpResponse::Get(g) => g
                                .kvs()
                                .first()
                                .and_then(lease_of)
                                .is_some_and(|h| h.lease.token == self.token),
                            _ => false,
                        });
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

    /// This host's leases and its boot record, read together (one snapshot), page by page.
    fn host_leases(&mut self) -> Result<BTreeMap<IpAddr, Held>> {
        let prefix = self.keys.host_prefix(self.host());
        let end = prefix_end(&prefix);
        let boot = self.keys.boot(self.host());
        let mut out = BTreeMap::new();
        let mut from = prefix.clone().into_bytes();
        loop {
            let (f, e) = (from.clone(), end.clone());
            let b = boot.clone();
            let resp = self.conn.retry("reading the host's leases", |c| {
                let mut c = Conn::kv(c);
                let t = Txn::new().and_then([
                    TxnOp::get(b.clone(), None),
                    TxnOp::get(
                        f.clone(),
                        Some(GetOptions::new().with_range(e.clone()).with_limit(PAGE)),
                    ),
                ]);
                async move { c.txn(t).await }
            })?;
            let r = resp.op_responses();
            if let Some(TxnOpResponse::Get(g)) = r.first() {
                self.boot_rec = g.kvs().first().map(|kv| (text(kv), kv.mod_revision()));
            }
            let Some(TxnOpResponse::Get(g)) = r.get(1) else { break };
            for kv in g.kvs() {
                if let (Some(ip), Some(h)) = (Keys::parse_index(&String::from_utf8_lossy(kv.key())), lease_of(kv)) {
                    out.insert(ip, h);
                }
            }
            match g.kvs().last() {
                Some(kv) if g.kvs().len() as i64 >= PAGE => {
                    from = kv.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

impl Store for EtcdStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool> {
        let id = id.trim();
        // Taking back a lease this call released (the undo of a replaced static lease).
        if let Some(h) = self.gone.get(&ip) {
            if h.lease.is_of(id, Some(ifname)) {
                self.gone.remove(&ip);
                return Ok(true);
            }
        }
        let over = match self.known(ip) {
            Some(true) => return Ok(false),
            Some(false) => self.sweep.get(&ip).or(self.gone.get(&ip)).cloned(),
            None => {
                // After a held address the next one is likely held too: read instead of
                // speculating.
                let prev = num(ip).checked_sub(1).map(|v| Fam::of(ip).ip(v));
                if prev.is_some_and(|p| self.windows.get(p) == Some(true)) {
                    self.read_window(ip)?;
                    if self.known(ip) == Some(true) {
                        return Ok(false);
                    }
                }
                None
            }
        };
        let lease = Lease {
            ip: Some(ip),
            container_id: id.to_string(),
            ifname: Some(ifname.to_string()),
            host: self.host().to_string(),
            token: self.token.clone(),
            claim: None,
            time: crate::now_secs(),
        };
        self.new.insert(
            ip,
            New {
                lease,
                set: range_set,
                over,
            },
        );
        Ok(true)
    }

    fn release(&mut self, id: &str, ifname: &str, ip: IpAddr) -> Result<bool> {
        let id = id.trim();
        if let Some(n) = self.new.get(&ip) {
            if n.lease.is_of(id, Some(ifname)) {
                self.new.remove(&ip);
                return Ok(true);
            }
            return Ok(false);
        }
        match self.att.get(&ip) {
            Some(h) if h.lease.is_of(id, Some(ifname)) => {
                self.claims.remove(&ip);
                self.gone.insert(ip, h.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn is_reserved(&mut self, ip: IpAddr) -> Result<bool> {
        if let Some(k) = self.known(ip) {
            return Ok(k);
        }
        self.read_window(ip)?;
        Ok(self.known(ip).unwrap_or(true))
    }

    fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>> {
        if let Some(n) = self.new.get(&ip) {
            return Ok(Some(n.lease.owner()));
        }
        if self.gone.contains_key(&ip) || self.sweep.contains_key(&ip) {
            return Ok(None);
        }
        Ok(self.lease_at(ip)?.map(|h| h.lease.owner()))
    }

    fn reconcile_boot(&mut self, boot_id: &str, release: bool) -> Result<Vec<IpAddr>> {
        let recorded = self.boot_rec.as_ref().map(|(b, _)| b.clone());
        if recorded.as_deref() == Some(boot_id) {
            self.boot_new = None;
            return Ok(Vec::new());
        }
        let mut released = Vec::new();
        if release && recorded.is_some() {
            // Only this host's leases (the host index): the other hosts did not reboot.
            let mine = self.host_leases()?;
            // Read with the leases: another call of this host may have recorded the boot.
            if self.boot_rec.as_ref().map(|(b, _)| b.as_str()) == Some(boot_id) {
                self.boot_new = None;
                return Ok(Vec::new());
            }
            for (ip, h) in mine {
                if !self.gone.contains_key(&ip) {
                    released.push(ip);
                    self.sweep.insert(ip, h);
                }
            }
            if !released.is_empty() {
                cni::log!(
                    "host-local: host {} rebooted since its last call on network {}; releasing its {} lease(s)",
                    self.host(),
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
            .filter(|(_, n)| n.set == range_set)
            .map(|(ip, _)| *ip)
            .next_back()
            .or_else(|| self.last.get(&range_set).copied());
        Ok(last)
    }

    fn spread(&mut self, _range_set: usize) -> usize {
        cni::ids::random_below(self.spread) as usize
    }

    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let id = id.trim();
        self.need_att(id)?;
        let mut ips = self.matching(id, Some(ifname));
        for ip in self.matching(id, None) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(ips)
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let id = id.trim();
        self.need_att(id)?;
        let mut ips = self.matching(id, Some(ifname));
        if ips.is_empty() {
            ips = self.matching(id, None);
        }
        for ip in &ips {
            if self.new.remove(ip).is_none() {
                if let Some(h) = self.att.get(ip) {
                    self.claims.remove(ip);
                    self.gone.insert(*ip, h.clone());
                }
            }
        }
        Ok(ips)
    }

    /// The call `token` holds the attachment's leases from now on: each gets `claim: token`
    /// (under its `mod_revision`), so that the undo of an earlier call of the attachment
    /// releases nothing of it. The token is also the one the call's new leases carry.
    fn claim(&mut self, id: &str, ifname: &str, token: &str) -> Result<()> {
        let id = id.trim();
        self.token = token.to_string();
        self.need_att(id)?;
        for ip in self
            .matching(id, Some(ifname))
            .into_iter()
            .chain(self.matching(id, None))
        {
            if let Some(h) = self.att.get(&ip) {
                if h.lease.claim.as_deref() != Some(token) {
                    self.claims.insert(ip, h.clone());
                }
            }
        }
        Ok(())
    }

    /// The undo of the failed ADD `token`: releases the attachment's leases that call made
    /// (`token` is their creator) unless a later call claimed them (`claim` is another's);
    /// each under its `mod_revision`, in the call's one transaction.
    fn release_for_undo(&mut self, id: &str, ifname: &str, token: &str) -> Result<Vec<IpAddr>> {
        let id = id.trim();
        self.need_att(id)?;
        let mut released = Vec::new();
        for ip in self.matching(id, Some(ifname)) {
            let Some(h) = self.att.get(&ip) else { continue };
            let l = &h.lease;
            if l.token == token && l.claim.as_deref().is_none_or(|c| c == token) {
                self.claims.remove(&ip);
                self.gone.insert(ip, h.clone());
                released.push(ip);
            }
        }
        Ok(released)
    }

    fn gc(&mut self, keep: &dyn Fn(&Owner) -> bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        for (ip, h) in self.host_leases()? {
            if self.gone.contains_key(&ip) || self.sweep.contains_key(&ip) {
                continue;
            }
            if keep(&h.lease.owner()) {
                report.kept += 1;
            } else {
                report.released.push(ip);
                self.sweep.insert(ip, h);
            }
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
        if !self.write_sweep()? {
            self.reread = None;
            return Ok(false);
        }
        if self.new.is_empty() && self.gone.is_empty() && self.claims.is_empty() && self.boot_new.is_none() {
            return if self.att_checked { Ok(true) } else { self.verify() };
        }
        let ok = self.write()?;
        cni::trace::step("etcd write");
        if ok {
            self.new.clear();
            self.gone.clear();
            self.claims.clear();
            self.boot_new = None;
            self.att_checked = true;
            if self.layout == Layout::Fresh {
                self.layout = Layout::V2;
            }
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
        self.windows.appeared = 0;
        self.new.clear();
        self.gone.clear();
        self.claims.clear();
        self.sweep.clear();
        self.point.clear();
        match self.reread.take() {
            Some((reads, resp)) => self.apply(&reads, &resp),
            None => {
                let reads = self.next_round_reads();
                self.read_now(reads)?;
            }
        }
        if !matches!(self.layout, Layout::V2 | Layout::Fresh) {
            return Err(crate::layout_error(&self.network, self.layout));
        }
        let appeared = self.windows.appeared as u64;
        if let Some((boot, release)) = self.boot_new.take() {
            self.reconcile_boot(&boot, release)?;
        }
        // The losers of a round spread over more free candidates each round (4, 16, 64, ...),
        // and over at least four times as many as won since the call began.
        self.spread = (4u64 << (2 * self.rounds.min(4) - 2)).max(4 * appeared).min(MAX_SPREAD);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn windows_know_what_they_read() {
        let mut w = Windows::default();
        let n = |s: &str| num(ip(s));
        w.add(Fam::V4, n("10.0.0.2"), n("10.0.0.9"), &[n("10.0.0.3"), n("10.0.0.5")]);
        assert_eq!(w.get(ip("10.0.0.1")), None);
        assert_eq!(w.get(ip("10.0.0.2")), Some(false));
        assert_eq!(w.get(ip("10.0.0.3")), Some(true));
        assert_eq!(w.get(ip("10.0.0.9")), Some(false));
        assert_eq!(w.get(ip("10.0.0.10")), None);
        // The same addresses in the other family are not known.
        assert_eq!(w.get(ip("::a00:3")), None);
        // A later read of an overlapping window replaces what it covers and merges.
        w.add(Fam::V4, n("10.0.0.5"), n("10.0.0.20"), &[n("10.0.0.6")]);
        assert_eq!(w.get(ip("10.0.0.5")), Some(false));
        assert_eq!(w.get(ip("10.0.0.6")), Some(true));
        assert_eq!(w.get(ip("10.0.0.3")), Some(true));
        assert_eq!(w.get(ip("10.0.0.20")), Some(false));
        assert_eq!(w.known.len(), 1);
        // Adjacent intervals merge too.
        w.add(Fam::V4, n("10.0.0.21"), n("10.0.0.30"), &[]);
        assert_eq!(w.known.len(), 1);
        w.add(Fam::V4, n("10.0.0.40"), n("10.0.0.50"), &[]);
        assert_eq!(w.known.len(), 2);
        assert_eq!(w.get(ip("10.0.0.35")), None);
    }
}

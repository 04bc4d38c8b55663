//! The on-disk lease store, in the reference's layout so that either plugin can take over the
//! other's leases:
//!
//! ```text
//! <dataDir>/<network>/lock                 flock(2)ed for the whole call
//! <dataDir>/<network>/<ip>                 a lease: "<container id>\r\n<ifname>" (no newline)
//! <dataDir>/<network>/last_reserved_ip.<n> the address last reserved in range set n
//! ```
//!
//! Our additions, which the reference ignores (it reads every file of the directory tree, and
//! none of these can pass for a lease of a valid container id):
//!
//! ```text
//! <dataDir>/<network>/.tmp-*               a lease being written (only while the lock is held)
//! <dataDir>/<network>/.by-id/<id>:<ifname> index: the addresses of an attachment
//! <dataDir>/<network>/.by-id/<id>:         index: the addresses of an old-format lease owner
//! <dataDir>/<network>/.by-id/.stamp        the network directory's mtime and ctime the index matches
//! <dataDir>/<network>/.last_reserved_undo the last_reserved_ip values the last ADD replaced
//! <dataDir>/<network>/.boot_id             the kernel boot id of the last boot the store was used in
//! ```
//!
//! **Atomic leases.** A lease is written to a temp file first and then `link(2)`ed to its
//! address's name: the link is the reservation (it fails with `EEXIST` if the address is
//! held), and the lease appears with its whole content or not at all. The leases one call
//! makes for one attachment (one per range set) share that inode: nothing ever writes a lease
//! after creating it, and creating inodes is the dearest step on some filesystems.
//!
//! **Cost.** ADD probes candidate names with `link` (one syscall each), DEL and CHECK look the
//! attachment up in the index and verify the lease files it names; neither reads the other
//! leases. The index is *complete* when `.stamp` equals the network directory's mtime and
//! ctime: every call of ours that changes the directory updates the index and then sets the
//! directory's mtime to a value in the past (now − 10 s) and records both times. Setting the
//! mtime sets the ctime to the current time, so the recorded pair is about 10 s apart.
//! Anything else that adds or removes a file there (the reference plugin, a person) sets both
//! to the same current time, and the ctime can never be set back by anyone: such a pair never
//! equals the recorded one, whatever the clock does (stepped back onto the recorded mtime, it
//! still gives a ctime equal to that mtime). The next call of ours then rebuilds the index
//! with one full scan. When the index is complete, a missing index entry means "holds
//! nothing".
//! Index entries are verified against the lease files they name before they are used.
//!
//! **Crash safety of the index.** Index files are rewritten in place, once per call (the
//! changes are buffered until [`DiskStore::commit`]), and always after the stamp has been made
//! invalid in that call (by a change to the network directory, or by truncating `.stamp`). A
//! crash at any point therefore leaves an index that the next call rebuilds.
//!
//! **Safety.** The network name must be a valid container-id-like name, the network directory
//! must not be a symlink, and every file is opened relative to the directory's descriptor with
//! `O_NOFOLLOW`: a symlink planted in the store is refused, never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cni::env::valid_name;
use cni::{Error, Result};

use crate::store::{GcReport, Owner, Store};
use crate::sys::{self, Dir};

pub const LOCK_FILE: &str = "lock";
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
pub const INDEX_DIR: &str = ".by-id";
pub const STAMP_FILE: &str = ".stamp";
pub const TMP_PREFIX: &str = ".tmp-";
/// The kernel boot id of the last boot in which the store was used.
pub const BOOT_FILE: &str = ".boot_id";
/// What the last ADD that moved a round-robin pointer replaced (see [`DiskStore::undo_add`]).
pub const UNDO_FILE: &str = ".last_reserved_undo";
const UNDO_HEADER: &str = "# host-local: last_reserved_ip values before the last ADD (not a lease)";
/// The record of the ADD that last claimed an attachment: `.claim-<id>:<ifname>` (see
/// [`DiskStore::claim`]).
pub const CLAIM_PREFIX: &str = ".claim-";
const CLAIM_HEADER: &str = "# host-local: the ADD that last claimed this attachment (not a lease)";
/// How long a call waits for the store's lock before it gives up with code 11: a call holds
/// it for a few milliseconds, so only a holder that hangs (stopped, or stuck on a dead disk)
/// keeps it that long.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
/// Lease and index files are tiny; anything bigger is not ours.
const MAX_READ: u64 = 64 * 1024;
/// How far in the past we set the network directory's mtime (see the module doc).
const STAMP_BACKDATE: Duration = Duration::from_secs(10);
const INDEX_HEADER: &str = "# host-local lease index (not a lease)";

/// The index key of an attachment, or of an old-format owner (`ifname` `None`): a valid file
/// name that no lease, temp or stamp name can be. `None` when it would be too long.
fn index_key(id: &str, ifname: Option<&str>) -> Option<String> {
    let id = id.trim();
    let key = format!("{id}:{}", ifname.unwrap_or(""));
    let ok = valid_name(id) && key.len() <= 250 && !key.contains('/') && !key.contains('\0');
    ok.then_some(key)
}

/// The content of `.stamp` for the network directory's status: its mtime and ctime, fixed
/// width, so that rewriting it in place never needs a truncation.
fn stamp_text(st: &sys::Stat) -> String {
    format!(
        "v2 {:020} {:09} {:020} {:09}\n",
        st.mtime.0, st.mtime.1, st.ctime.0, st.ctime.1
    )
}

/// The content of an index entry.
fn index_text(ips: &BTreeSet<IpAddr>) -> String {
    let mut content = format!("{INDEX_HEADER}\n");
    for ip in ips {
        content.push_str(&format!("{ip}\n"));
    }
    content
}

/// The boot id a `.boot_id` record holds: `None` for an empty, truncated or foreign record
/// (the kernel's boot id is a UUID: 36 hex digits and dashes).
fn parse_boot_record(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?.trim();
    let ok = s.len() == 36 && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-');
    ok.then(|| s.to_string())
}

/// The file name of the claim record of attachment (`id`, `ifname`): `.claim-<id>:<ifname>`,
/// or, when that would be too long for a file name, `.claim-h<FNV-1a of the pair>` (the record
/// names its attachment, so a collision is seen when it is read).
fn claim_name(id: &str, ifname: &str) -> String {
    match index_key(id, Some(ifname)) {
        Some(key) if CLAIM_PREFIX.len() + key.len() <= 255 => format!("{CLAIM_PREFIX}{key}"),
        _ => format!(
            "{CLAIM_PREFIX}h{:016x}",
            cni::ids::fnv1a(&[id.trim().as_bytes(), ifname.as_bytes()])
        ),
    }
}

/// A claim record: which ADD (its token) last claimed attachment (`id`, `ifname`), and the
/// addresses the attachment held when it did.
fn claim_text(id: &str, ifname: &str, token: &str, held: &[IpAddr]) -> String {
    let held: String = held.iter().map(|ip| format!(" {ip}")).collect();
    format!(
        "{CLAIM_HEADER}\nattachment {} {ifname}\ntoken {token}\nheld{}\n",
        id.trim(),
        held
    )
}

/// The token and the held addresses of a claim record of (`id`, `ifname`); `None` for a
/// record of another attachment or one that is not whole.
fn parse_claim(text: &[u8], id: &str, ifname: &str) -> Option<(String, Vec<IpAddr>)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines();
    if lines.next()? != CLAIM_HEADER || lines.next()? != format!("attachment {} {ifname}", id.trim()) {
        return None;
    }
    let token = lines.next()?.strip_prefix("token ")?.to_string();
    let held = lines
        .next()?
        .strip_prefix("held")?
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<Vec<IpAddr>>>()?;
    Some((token, held))
}

/// The name of the lease file of `ip`.
pub fn lease_name(ip: IpAddr) -> String {
    ip.to_string()
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> Error {
    Error::io(what, e)
}

/// The on-disk store of one network, locked while it lives.
#[derive(Debug)]
pub struct DiskStore {
    dir: Dir,
    path: PathBuf,
    _lock: File,
    index: Option<Dir>,
    /// The index is complete (checked against the stamp, or rebuilt in this call).
    complete: bool,
    /// The network directory changed in this call: the index must be stamped at commit.
    dir_changed: bool,
    /// `.stamp` on disk no longer matches (we truncated it, or the directory changed).
    stamp_invalid: bool,
    /// Index entries changed in this call, written at commit: key → all its addresses.
    pending: BTreeMap<String, BTreeSet<IpAddr>>,
    /// A temp file holding `(content, name)`, ready to be linked as a lease.
    tmp: Option<(String, String)>,
    counter: u32,
    /// The `last_reserved_ip.<n>` files as they were before this call first rewrote them
    /// (`None`: there was none), and as they were when read in this call.
    prior_last: BTreeMap<usize, Option<Vec<u8>>>,
    /// The `.last_reserved_undo` this call wrote (before it moved a pointer), if it did.
    undo_written: Option<String>,
    seen_last: BTreeMap<usize, Option<Vec<u8>>>,
}

impl DiskStore {
    /// Opens (with `create`, making it if needed) the store of `network` under `data_dir` and
    /// takes its lock. Without `create`, `Ok(None)` when the store does not exist.
    pub fn open(data_dir: &Path, network: &str, create: bool) -> Result<Option<DiskStore>> {
        cni::env::check_network_name(network)?;
        if network.len() > 200 {
            return Err(Error::invalid_config(format!(
                "invalid network name \"{}\": the lease store takes at most 200 bytes",
                network.escape_debug()
            )));
        }
        let path = data_dir.join(network);
        if create {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(data_dir)
                .map_err(|e| io_err(format!("creating data dir {}", data_dir.display()), e))?;
        }
        let data = match Dir::open(data_dir) {
            Ok(d) => d,
            Err(e) if !create && sys::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err(format!("opening data dir {}", data_dir.display()), e)),
        };
        if create {
            data.mkdir(network, DIR_MODE)
                .map_err(|e| io_err(format!("creating {}", path.display()), e))?;
        }
        let dir = match data.open_dir(network) {
            Ok(d) => d,
            Err(e) if !create && sys::is_not_found(&e) => return Ok(None),
            Err(e) if sys::is_symlink_refusal(&e) => {
                return Err(Error::io_failure(format!(
                    "refusing lease store {}: it is a symlink or not a directory",
                    path.display()
                )))
            }
            Err(e) => return Err(io_err(format!("opening {}", path.display()), e)),
        };
        let lock = dir
            .open_file(LOCK_FILE, libc::O_RDONLY | libc::O_CREAT, FILE_MODE)
            .map_err(|e| io_err(format!("opening {}/{LOCK_FILE}", path.display()), e))?;
        let locked = cni::lockfile::lock_within(&lock, LOCK_WAIT)
            .map_err(|e| io_err(format!("locking {}/{LOCK_FILE}", path.display()), e))?;
        if !locked {
            let by = cni::lockfile::held_by(&lock)
                .map(|p| format!(" by {p}"))
                .unwrap_or_default();
            return Err(Error::try_again_later(format!(
                "the lease store {} is locked{by} for more than {}s ({LOCK_FILE}): another call holds it and does not finish (stopped or hung?)",
                path.display(),
                LOCK_WAIT.as_secs()
            )));
        }
        cni::trace::step("lock");

        let _ = dir.mkdir(INDEX_DIR, DIR_MODE);
        let index = dir.open_dir(INDEX_DIR).ok();
        let mut store = DiskStore {
            dir,
            path,
            _lock: lock,
            index,
            complete: false,
            dir_changed: false,
            stamp_invalid: false,
            pending: BTreeMap::new(),
            tmp: None,
            counter: 0,
            prior_last: BTreeMap::new(),
            undo_written: None,
            seen_last: BTreeMap::new(),
        };
        store.complete = store.stamp_matches();
        store.stamp_invalid = !store.complete;
        Ok(Some(store))
    }

    /// Finishes the bookkeeping of the call (the lease index); the lock is released when the
    /// store is dropped.
    pub fn commit(&mut self) -> Result<()> {
        self.drop_tmp();
        if self.index.is_none() || !self.dir_changed {
            return Ok(());
        }
        if !self.complete {
            // The directory changed in a call that did not need the index (a first call, a
            // static address): bring the index up to date now, once.
            if let Err(e) = self.ensure_index() {
                cni::log!("host-local: rebuilding the lease index: {e}");
                return Ok(());
            }
        }
        let r = self.flush_index().and_then(|_| self.write_stamp());
        if let Err(e) = r {
            self.note_index_error(e);
        }
        self.dir_changed = false;
        Ok(())
    }

    /// The network directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every lease of the store with its owner and the time it was written (its mtime, in
    /// seconds), sorted by address; empty leases are left out. The operators' read of an
    /// on-disk store (`host-local leases`, `import`): under the store's lock and through its
    /// descriptor, like every read of the store.
    pub fn leases(&self) -> Result<Vec<(IpAddr, Owner, Option<u64>)>> {
        let mut v = Vec::new();
        for (ip, content) in self.scan()? {
            let Some(owner) = Owner::parse(&content) else { continue };
            let mtime = self
                .dir
                .stat_at(&lease_name(ip))
                .ok()
                .flatten()
                .and_then(|s| u64::try_from(s.mtime.0).ok());
            v.push((ip, owner, mtime));
        }
        v.sort_by_key(|(ip, _, _)| *ip);
        Ok(v)
    }

    /// Whether the index is known complete (for tests and diagnostics).
    pub fn index_complete(&self) -> bool {
        self.complete
    }

    fn stamp_matches(&self) -> bool {
        let Some(index) = &self.index else {
            return false;
        };
        let Ok(Some(stamp)) = index.read_small(STAMP_FILE, 256) else {
            return false;
        };
        let Ok(st) = self.dir.stat() else {
            return false;
        };
        stamp == stamp_text(&st).as_bytes()
    }

    fn next_tmp_name(&mut self) -> String {
        self.counter += 1;
        format!("{TMP_PREFIX}{}-{}", std::process::id(), self.counter)
    }

    /// Notes a change of the network directory (which also invalidates the stamp).
    fn changed(&mut self) {
        self.dir_changed = true;
        self.stamp_invalid = true;
    }

    /// Reads the lease of `ip`: `None` if there is none; a symlink or other non-regular file
    /// at that name is an error.
    fn read_lease(&self, ip: IpAddr) -> io::Result<Option<Vec<u8>>> {
        self.dir.read_small(&lease_name(ip), MAX_READ)
    }

    fn lease_matches_new(content: &[u8], id: &str, ifname: &str) -> bool {
        String::from_utf8_lossy(content).trim() == Owner::lease_content(id, ifname)
    }

    fn lease_matches_old(content: &[u8], id: &str) -> bool {
        String::from_utf8_lossy(content).trim() == id.trim()
    }

    /// The addresses the index entry `key` names (with this call's changes). An entry that is
    /// not a regular file is refused (code 5); one that cannot be read otherwise names nothing.
    fn hint(&self, key: &str) -> Result<BTreeSet<IpAddr>> {
        if let Some(p) = self.pending.get(key) {
            return Ok(p.clone());
        }
        let Some(index) = &self.index else {
            return Ok(BTreeSet::new());
        };
        match index.read_small(key, MAX_READ) {
            Ok(Some(b)) => Ok(String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()),
            Err(e) if sys::is_not_regular(&e) => {
                Err(io_err(format!("reading {}/{INDEX_DIR}/{key}", self.path.display()), e))
            }
            _ => Ok(BTreeSet::new()),
        }
    }

    /// Index changes of this call. An entry that cannot be read counts as empty here: it is
    /// replaced at commit, or refused then, which makes the index rebuild.
    fn hint_add(&mut self, id: &str, ifname: Option<&str>, ip: IpAddr) {
        if let Some(key) = index_key(id, ifname) {
            let mut ips = self.hint(&key).unwrap_or_default();
            ips.insert(ip);
            self.pending.insert(key, ips);
        }
    }

    fn hint_remove(&mut self, id: &str, ifname: Option<&str>, gone: &[IpAddr]) {
        if let Some(key) = index_key(id, ifname) {
            let mut ips = self.hint(&key).unwrap_or_default();
            ips.retain(|ip| !gone.contains(ip));
            self.pending.insert(key, ips);
        }
    }

    /// Makes sure `.stamp` does not match before the index is written.
    fn invalidate_stamp(&mut self) -> io::Result<()> {
        if self.stamp_invalid {
            return Ok(());
        }
        if let Some(index) = &self.index {
            // No stamp starts with "x".
            index.overwrite_start(STAMP_FILE, b"x")?;
        }
        self.stamp_invalid = true;
        Ok(())
    }

    fn write_index_entry(index: &Dir, tmp: &str, key: &str, ips: &BTreeSet<IpAddr>) -> io::Result<()> {
        if ips.is_empty() {
            return match index.unlink(key) {
                Err(e) if !sys::is_not_found(&e) => Err(e),
                _ => Ok(()),
            };
        }
        index.write_atomic(key, tmp, index_text(ips).as_bytes(), FILE_MODE)
    }

    /// Writes this call's index changes.
    fn flush_index(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.invalidate_stamp()?;
        let pending = std::mem::take(&mut self.pending);
        let tmp = self.next_tmp_name();
        if let Some(index) = &self.index {
            for (key, ips) in &pending {
                Self::write_index_entry(index, &tmp, key, ips)?;
            }
        }
        Ok(())
    }

    /// A failed index update makes the index incomplete: the next call rebuilds it.
    fn note_index_error(&mut self, e: io::Error) {
        cni::log!(
            "host-local: updating the lease index in {}: {e}; it will be rebuilt",
            self.path.display()
        );
        self.complete = false;
        if let Some(index) = &self.index {
            let _ = index.unlink(STAMP_FILE);
        }
    }

    /// Every lease of the directory: (address, content). Non-regular files named like an
    /// address are skipped (and reported).
    fn scan(&self) -> Result<Vec<(IpAddr, Vec<u8>)>> {
        let names = self
            .dir
            .names()
            .map_err(|e| io_err(format!("listing {}", self.path.display()), e))?;
        let mut out = Vec::new();
        for name in names {
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            match self.dir.read_small(&name, MAX_READ) {
                Ok(Some(content)) => out.push((ip, content)),
                Ok(None) => {}
                // A FIFO, socket, device or directory named like a lease is no lease of anyone's
                // and nothing we may remove: the store needs a person's look.
                Err(e) if sys::is_not_regular(&e) => {
                    return Err(io_err(
                        format!("reading lease {}/{name} (remove it)", self.path.display()),
                        e,
                    ))
                }
                // A symlink named like a lease is skipped, never followed.
                Err(e) => cni::log!("host-local: ignoring {}/{name}: {e}", self.path.display()),
            }
        }
        Ok(out)
    }

    /// Rewrites the index from `leases` and marks it complete (to be stamped at commit).
    fn rewrite_index(&mut self, leases: &[(IpAddr, Vec<u8>)]) -> Result<()> {
        let mut by_key: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for (ip, content) in leases {
            if let Some(o) = Owner::parse(content) {
                if let Some(key) = index_key(&o.container_id, o.ifname.as_deref()) {
                    by_key.entry(key).or_default().insert(*ip);
                }
            }
        }
        self.pending.clear();
        if self.index.is_none() {
            return Ok(());
        }
        self.invalidate_stamp().map_err(|e| {
            io_err(
                format!("invalidating {}/{INDEX_DIR}/{STAMP_FILE}", self.path.display()),
                e,
            )
        })?;
        let tmp = self.next_tmp_name();
        let index = self.index.as_ref().expect("checked above");
        let existing = index
            .names()
            .map_err(|e| io_err(format!("listing {}/{INDEX_DIR}", self.path.display()), e))?;
        for name in existing {
            if name != STAMP_FILE && (name.starts_with('.') || !by_key.contains_key(&name)) {
                let _ = index.unlink(&name);
            }
        }
        for (key, ips) in &by_key {
            // Entries that are right already are left alone (after a foreign change, most are).
            if index.read_small(key, MAX_READ).ok().flatten().as_deref() == Some(index_text(ips).as_bytes()) {
                continue;
            }
            Self::write_index_entry(index, &tmp, key, ips)
                .map_err(|e| io_err(format!("writing {}/{INDEX_DIR}/{key}", self.path.display()), e))?;
        }
        self.complete = true;
        // Stamp it even when the directory did not change.
        self.dir_changed = true;
        cni::trace::step("rebuild index");
        Ok(())
    }

    /// Removes the temp files a writer killed before it could link or remove them left in the
    /// network directory. Every writer holds the lock, which we hold now: any temp file that is
    /// not this process's own is such a leftover.
    fn remove_stale_temps(&mut self) -> Result<()> {
        let names = self
            .dir
            .names()
            .map_err(|e| io_err(format!("listing {}", self.path.display()), e))?;
        let own = format!("{TMP_PREFIX}{}-", std::process::id());
        for name in names
            .iter()
            .filter(|n| n.starts_with(TMP_PREFIX) && !n.starts_with(&own))
        {
            match self.dir.unlink(name) {
                Ok(()) => self.changed(),
                Err(e) if sys::is_not_found(&e) => {}
                Err(e) => cni::log!("host-local: removing {}/{name}: {e}", self.path.display()),
            }
        }
        Ok(())
    }

    /// Makes the index complete if it is not; `false` when there is no index at all.
    fn ensure_index(&mut self) -> Result<bool> {
        if self.index.is_none() {
            return Ok(false);
        }
        if !self.complete {
            // The directory changed behind the index's back: a good time to drop what a
            // killed writer left, before the full scan.
            self.remove_stale_temps()?;
            let leases = self.scan()?;
            self.rewrite_index(&leases)?;
        }
        Ok(true)
    }

    /// The verified addresses of (`id`, `ifname`) — or of old-format owner `id` when
    /// `ifname` is `None` — by the index when it can answer, else by a full scan.
    fn lookup(&mut self, id: &str, ifname: Option<&str>) -> Result<Vec<IpAddr>> {
        let matches = |c: &[u8]| match ifname {
            Some(ifn) => Self::lease_matches_new(c, id, ifn),
            None => Self::lease_matches_old(c, id),
        };
        if let Some(key) = index_key(id, ifname) {
            if self.ensure_index()? {
                // Entries whose lease is gone or names someone else are skipped; they are
                // dropped when the entry is next rewritten.
                let found = self
                    .hint(&key)?
                    .into_iter()
                    .filter(|ip| matches!(self.read_lease(*ip), Ok(Some(c)) if matches(&c)))
                    .collect();
                return Ok(found);
            }
        }
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(_, c)| matches(c))
            .map(|(ip, _)| ip)
            .collect())
    }

    fn remove_lease(&mut self, ip: IpAddr) -> Result<()> {
        match self.dir.unlink(&lease_name(ip)) {
            Ok(()) => {
                self.changed();
                Ok(())
            }
            Err(e) if sys::is_not_found(&e) => Ok(()),
            Err(e) => Err(io_err(format!("removing lease {}/{ip}", self.path.display()), e)),
        }
    }

    /// A temp file holding `content`, created on first use and reused for every probe and for
    /// every lease of the same content in this call.
    fn tmp_with(&mut self, content: &str) -> Result<String> {
        if let Some((c, name)) = &self.tmp {
            if c == content {
                return Ok(name.clone());
            }
        }
        self.drop_tmp();
        let name = self.next_tmp_name();
        self.dir
            .create_new(&name, content.as_bytes(), FILE_MODE)
            .map_err(|e| io_err(format!("writing {}/{name}", self.path.display()), e))?;
        self.changed();
        self.tmp = Some((content.to_string(), name.clone()));
        Ok(name)
    }

    fn drop_tmp(&mut self) {
        if let Some((_, name)) = self.tmp.take() {
            let _ = self.dir.unlink(&name);
        }
    }

    /// Writes the bookkeeping file `name` of the network directory atomically (see
    /// [`Dir::write_atomic`]).
    fn write_bookkeeping(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.next_tmp_name();
        self.dir.write_atomic(name, &tmp, data, FILE_MODE)?;
        self.changed();
        Ok(())
    }

    /// Sets the directory's mtime to a past value and records it in `.stamp`.
    fn write_stamp(&mut self) -> io::Result<()> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        let back = SystemTime::now()
            .checked_sub(STAMP_BACKDATE)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.dir.set_mtime(back.as_secs() as i64, back.subsec_nanos() as i64)?;
        let st = self.dir.stat()?;
        let tmp = format!("{TMP_PREFIX}{}-stamp", std::process::id());
        index.write_atomic(STAMP_FILE, &tmp, stamp_text(&st).as_bytes(), FILE_MODE)?;
        self.stamp_invalid = false;
        Ok(())
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool> {
        let content = Owner::lease_content(id, ifname);
        let tmp = self.tmp_with(&content)?;
        let name = lease_name(ip);
        match self.dir.link(&tmp, &name) {
            Ok(()) => {}
            Err(e) if sys::is_exists(&e) => return Ok(false),
            Err(e) => return Err(io_err(format!("reserving {}/{name}", self.path.display()), e)),
        }
        self.changed();
        let last = format!("{LAST_RESERVED_PREFIX}{range_set}");
        if !self.prior_last.contains_key(&range_set) {
            let before = match self.seen_last.get(&range_set) {
                Some(b) => b.clone(),
                None => self.dir.read_small(&last, 256).ok().flatten(),
            };
            self.prior_last.insert(range_set, before);
            // The record of what this ADD moves goes first: an ADD killed right after the
            // pointer moved is undone with it, pointer included.
            if let Err(e) = self.write_undo_record(id, ifname) {
                let _ = self.dir.unlink(&name);
                return Err(e);
            }
        }
        if let Err(e) = self.write_bookkeeping(&last, name.as_bytes()) {
            // Fail whole: no lease without its bookkeeping.
            let _ = self.dir.unlink(&name);
            return Err(io_err(format!("writing {}/{last}", self.path.display()), e));
        }
        cni::fault::point("host-local:pointer-moved");
        self.hint_add(id, Some(ifname), ip);
        Ok(true)
    }

    fn release(&mut self, id: &str, ifname: &str, ip: IpAddr) -> Result<bool> {
        match self.read_lease(ip) {
            Ok(Some(c)) if Self::lease_matches_new(&c, id, ifname) => {
                self.remove_lease(ip)?;
                self.hint_remove(id, Some(ifname), &[ip]);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn is_reserved(&mut self, ip: IpAddr) -> Result<bool> {
        self.dir
            .stat_at(&lease_name(ip))
            .map(|s| s.is_some())
            .map_err(|e| io_err(format!("checking {}/{ip}", self.path.display()), e))
    }

    fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>> {
        match self.read_lease(ip) {
            Ok(Some(c)) => Ok(Owner::parse(&c)),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err(format!("reading lease {}/{ip}", self.path.display()), e)),
        }
    }

    fn reconcile_boot(&mut self, boot_id: &str, release: bool) -> Result<Vec<IpAddr>> {
        let recorded = match self.dir.read_small(BOOT_FILE, 256) {
            Ok(Some(b)) => match parse_boot_record(&b) {
                Some(id) => Some(id),
                // Empty (a write that failed half way, by an older version) or not a boot id: no
                // record. Taking it for another boot would release every living container's
                // lease on a guess.
                None => {
                    cni::log!(
                        "host-local: {}/{BOOT_FILE} holds no boot id; adopting the store, releasing nothing",
                        self.path.display()
                    );
                    None
                }
            },
            Ok(None) => None,
            Err(e) if sys::is_not_regular(&e) => {
                return Err(io_err(format!("reading {}/{BOOT_FILE}", self.path.display()), e))
            }
            // Unreadable (a symlink planted there, say): no record, replaced below.
            Err(e) => {
                cni::log!("host-local: ignoring {}/{BOOT_FILE}: {e}", self.path.display());
                None
            }
        };
        if recorded.as_deref() == Some(boot_id) {
            return Ok(Vec::new());
        }
        let mut released = Vec::new();
        if release && recorded.is_some() {
            let report = self.gc(&|_| false)?;
            released = report.released;
            released.extend(report.empty_removed);
            if !released.is_empty() {
                cni::log!(
                    "host-local: {} was last used in another boot; released its {} lease(s)",
                    self.path.display(),
                    released.len()
                );
            }
        }
        self.write_bookkeeping(BOOT_FILE, format!("{boot_id}\n").as_bytes())
            .map_err(|e| io_err(format!("writing {}/{BOOT_FILE}", self.path.display()), e))?;
        Ok(released)
    }

    fn last_reserved(&mut self, range_set: usize) -> Result<Option<IpAddr>> {
        let name = format!("{LAST_RESERVED_PREFIX}{range_set}");
        match self.dir.read_small(&name, 256) {
            Ok(Some(b)) => {
                let ip = String::from_utf8_lossy(&b).trim().parse().ok();
                self.seen_last.insert(range_set, Some(b));
                Ok(ip)
            }
            Ok(None) => {
                self.seen_last.insert(range_set, None);
                Ok(None)
            }
            Err(e) if sys::is_not_regular(&e) => Err(io_err(format!("reading {}/{name}", self.path.display()), e)),
            // As the reference: a bad last-reserved file only costs the round robin.
            Err(e) => {
                cni::log!("host-local: ignoring {}/{name}: {e}", self.path.display());
                Ok(None)
            }
        }
    }

    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut ips = self.lookup(id, Some(ifname))?;
        for ip in self.lookup(id, None)? {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(ips)
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut owner_ifname = Some(ifname);
        let mut ips = self.lookup(id, owner_ifname)?;
        if ips.is_empty() {
            owner_ifname = None;
            ips = self.lookup(id, None)?;
        }
        for ip in &ips {
            self.remove_lease(*ip)?;
        }
        if !ips.is_empty() {
            self.hint_remove(id, owner_ifname, &ips);
        }
        self.remove_claim(id, ifname)?;
        Ok(ips)
    }

    fn gc(&mut self, keep: &dyn Fn(&Owner) -> bool) -> Result<GcReport> {
        self.drop_tmp();
        let names = self
            .dir
            .names()
            .map_err(|e| io_err(format!("listing {}", self.path.display()), e))?;
        // Temp files of ours left by a crash: nobody else writes while we hold the lock.
        for name in names.iter().filter(|n| n.starts_with(TMP_PREFIX)) {
            if self.dir.unlink(name).is_ok() {
                self.changed();
            }
        }
        let mut report = GcReport::default();
        let mut kept = Vec::new();
        for (ip, content) in self.scan()? {
            match Owner::parse(&content) {
                None => {
                    self.remove_lease(ip)?;
                    report.empty_removed.push(ip);
                }
                Some(o) if !keep(&o) => {
                    self.remove_lease(ip)?;
                    report.released.push(ip);
                }
                Some(_) => kept.push((ip, content)),
            }
        }
        report.kept = kept.len();
        // Claim records of attachments GC does not keep (see [`DiskStore::claim`]).
        for name in names.iter().filter(|n| n.starts_with(CLAIM_PREFIX)) {
            let owner = match self.dir.read_small(name, MAX_READ) {
                Ok(Some(t)) => String::from_utf8_lossy(&t).lines().nth(1).and_then(|l| {
                    let mut w = l.strip_prefix("attachment ")?.splitn(2, ' ');
                    Some(Owner {
                        container_id: w.next()?.to_string(),
                        ifname: Some(w.next()?.to_string()),
                    })
                }),
                _ => None,
            };
            if owner.is_none_or(|o| !keep(&o)) && self.dir.unlink(name).is_ok() {
                self.changed();
            }
        }
        self.rewrite_index(&kept)?;
        Ok(report)
    }

    fn check_writable(&mut self) -> Result<()> {
        let name = self.next_tmp_name();
        self.dir
            .create_new(&name, b"probe", FILE_MODE)
            .map_err(|e| io_err(format!("cannot write in {}", self.path.display()), e))?;
        self.changed();
        self.dir
            .unlink(&name)
            .map_err(|e| io_err(format!("cannot remove files in {}", self.path.display()), e))
    }

    fn restore_last_reserved(&mut self) -> Result<()> {
        DiskStore::restore_last_reserved(self)
    }

    fn record_add(&mut self, id: &str, ifname: &str) -> Result<()> {
        DiskStore::record_add(self, id, ifname)
    }

    fn claim(&mut self, id: &str, ifname: &str, token: &str) -> Result<()> {
        DiskStore::claim(self, id, ifname, token)
    }

    fn release_for_undo(&mut self, id: &str, ifname: &str, token: &str) -> Result<Vec<IpAddr>> {
        DiskStore::release_for_undo(self, id, ifname, token)
    }

    /// `f` once, under the lock this store holds since it was opened; then the bookkeeping.
    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn Store) -> Result<()>) -> Result<()> {
        let r = f(self);
        let c = self.commit();
        r.and(c)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.drop_tmp();
    }
}

/// The round-robin pointers of a failed ADD. A failed ADD must leave the store as it found
/// it, `last_reserved_ip.<n>` included, or the next container gets another address than it
/// would have. Within one call [`DiskStore::restore_last_reserved`] puts the files back. When
/// the plugin that delegated to us fails after our ADD succeeded, it runs our DEL with
/// [`cni::env::UNDO_ENV`] set: the ADD recorded what it replaced in [`UNDO_FILE`] (see
/// [`DiskStore::record_add`]), and [`DiskStore::undo_add`] puts back each pointer that still
/// names the address that ADD reserved for this attachment (a pointer moved on by a later ADD
/// is left alone). A DEL without the variable releases as the reference does and leaves the
/// pointers where they are.
impl DiskStore {
    fn restore_one(&mut self, set: usize, before: &Option<Vec<u8>>) -> io::Result<()> {
        let name = format!("{LAST_RESERVED_PREFIX}{set}");
        match before {
            Some(b) => self.write_bookkeeping(&name, b),
            None => match self.dir.unlink(&name) {
                Ok(()) => {
                    self.changed();
                    Ok(())
                }
                Err(e) if sys::is_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// Before an ADD of (`id`, `ifname`) allocates: records that the ADD `token` now holds the
    /// attachment, with the addresses it holds already. The record is written (atomically)
    /// before anything is reserved, so an ADD killed at any point is undone by its token.
    ///
    /// This is what makes an undo release only what its own call made: two ADDs of one
    /// attachment at once (a runtime that retries) both succeed in host-local, one getting the
    /// other's lease back, and one of them then fails to make the interface and undoes. The
    /// undo of the ADD that reserved the lease, after the other one claimed it, finds another
    /// token here and releases nothing; the undo of the ADD that got the lease back releases
    /// nothing, as the lease is among the held ones. (Both failing leaves the lease to the
    /// runtime's DEL or GC: a lease too many, never an address for two containers.)
    pub fn claim(&mut self, id: &str, ifname: &str, token: &str) -> Result<()> {
        let held = self.get_by_id(id, ifname)?;
        let name = claim_name(id, ifname);
        self.write_bookkeeping(&name, claim_text(id, ifname, token, &held).as_bytes())
            .map_err(|e| io_err(format!("writing {}/{name}", self.path.display()), e))
    }

    /// The DEL that undoes the failed ADD `token` of (`id`, `ifname`): releases the leases
    /// of the attachment that this ADD reserved, if it is still the last to have claimed the
    /// attachment (see [`DiskStore::claim`]), puts back the round-robin pointers it moved, and
    /// drops its claim. Anything else (a lease held before that ADD, or claimed since by another
    /// call) stays. Returns what it released.
    pub fn release_for_undo(&mut self, id: &str, ifname: &str, token: &str) -> Result<Vec<IpAddr>> {
        let name = claim_name(id, ifname);
        let record = match self.dir.read_small(&name, MAX_READ) {
            Ok(r) => r,
            Err(e) if sys::is_not_regular(&e) => {
                return Err(io_err(format!("reading {}/{name}", self.path.display()), e))
            }
            Err(_) => None,
        };
        let held = match record.as_deref().and_then(|r| parse_claim(r, id, ifname)) {
            Some((t, held)) if t == token => held,
            found => {
                // A lease of the attachment that this undo may not release is worth a line; an
                // ADD killed before it claimed anything left nothing to say.
                if !self.lookup(id, Some(ifname))?.is_empty() {
                    let why = match found {
                        Some(_) => "another ADD of the attachment claimed it since",
                        None => "no record of that ADD",
                    };
                    cni::log!(
                        "host-local: undoing a failed ADD of {} {ifname} in {}: keeping the attachment's lease ({why})",
                        id.trim(),
                        self.path.display()
                    );
                }
                return Ok(Vec::new());
            }
        };
        let ips: Vec<IpAddr> = self
            .lookup(id, Some(ifname))?
            .into_iter()
            .filter(|ip| !held.contains(ip))
            .collect();
        for ip in &ips {
            self.remove_lease(*ip)?;
        }
        if !ips.is_empty() {
            self.hint_remove(id, Some(ifname), &ips);
        }
        self.undo_add(id, ifname, &ips)?;
        self.remove_claim(id, ifname)?;
        Ok(ips)
    }

    fn remove_claim(&mut self, id: &str, ifname: &str) -> Result<()> {
        self.remove_bookkeeping(&claim_name(id, ifname))
    }

    /// Removes the bookkeeping file `name` of the network directory; a missing one is fine.
    fn remove_bookkeeping(&mut self, name: &str) -> Result<()> {
        match self.dir.unlink(name) {
            Ok(()) => {
                self.changed();
                Ok(())
            }
            Err(e) if sys::is_not_found(&e) => Ok(()),
            Err(e) => Err(io_err(format!("removing {}/{name}", self.path.display()), e)),
        }
    }

    /// Puts the `last_reserved_ip.<n>` files this call rewrote back as they were.
    pub fn restore_last_reserved(&mut self) -> Result<()> {
        for (set, before) in std::mem::take(&mut self.prior_last) {
            self.restore_one(set, &before).map_err(|e| {
                io_err(
                    format!("restoring {}/{LAST_RESERVED_PREFIX}{set}", self.path.display()),
                    e,
                )
            })?;
        }
        // The record written before the pointers moved has nothing left to undo.
        if self.undo_written.take().is_some() {
            self.remove_bookkeeping(UNDO_FILE)?;
        }
        Ok(())
    }

    /// The record of the pointers this ADD of (`id`, `ifname`) moved and what they held before.
    fn undo_text(&self, id: &str, ifname: &str) -> String {
        let mut text = format!("{UNDO_HEADER}\nattachment {id} {ifname}\n");
        for (set, before) in &self.prior_last {
            let before = match before {
                Some(b) => String::from_utf8_lossy(b).trim().to_string(),
                None => "-".into(),
            };
            // `before` may be anything a person wrote there: it is restored only if it is an
            // address (or absent), as the reference reads nothing else.
            text.push_str(&format!("{set} {before}\n"));
        }
        text
    }

    /// Writes [`DiskStore::undo_text`] as `.last_reserved_undo` unless this call wrote it so.
    fn write_undo_record(&mut self, id: &str, ifname: &str) -> Result<()> {
        let text = self.undo_text(id, ifname);
        if self.undo_written.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.write_bookkeeping(UNDO_FILE, text.as_bytes())
            .map_err(|e| io_err(format!("writing {}/{UNDO_FILE}", self.path.display()), e))?;
        self.undo_written = Some(text);
        Ok(())
    }

    /// After a successful ADD of (`id`, `ifname`): records the pointers it moved and what they
    /// held before, replacing the record of an earlier ADD (also when this one moved none).
    /// The record is written before the first pointer moves (see [`Store::reserve`]); this
    /// writes it only if it has changed since.
    pub fn record_add(&mut self, id: &str, ifname: &str) -> Result<()> {
        if self.prior_last.is_empty() {
            return self.remove_bookkeeping(UNDO_FILE);
        }
        self.write_undo_record(id, ifname)
    }

    /// DEL of a failed ADD of (`id`, `ifname`) that released `released`: puts back each pointer
    /// the ADD's record names that still names one of `released`, and drops the record.
    fn undo_add(&mut self, id: &str, ifname: &str, released: &[IpAddr]) -> Result<()> {
        let text = match self.dir.read_small(UNDO_FILE, MAX_READ) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(()),
            Err(e) if sys::is_not_regular(&e) => {
                return Err(io_err(format!("reading {}/{UNDO_FILE}", self.path.display()), e))
            }
            Err(_) => return Ok(()),
        };
        let text = String::from_utf8_lossy(&text);
        let mut lines = text.lines();
        let ours =
            lines.next() == Some(UNDO_HEADER) && lines.next() == Some(format!("attachment {id} {ifname}").as_str());
        if !ours {
            return Ok(());
        }
        for line in lines {
            let Some((set, before)) = line.split_once(' ') else {
                continue;
            };
            let Ok(set) = set.parse::<usize>() else { continue };
            let before = match before {
                "-" => None,
                b if b.parse::<IpAddr>().is_ok() => Some(b.as_bytes().to_vec()),
                _ => continue,
            };
            let now = self.last_reserved(set)?;
            if now.is_some_and(|ip| released.contains(&ip)) {
                self.restore_one(set, &before).map_err(|e| {
                    io_err(
                        format!("restoring {}/{LAST_RESERVED_PREFIX}{set}", self.path.display()),
                        e,
                    )
                })?;
            }
        }
        self.remove_bookkeeping(UNDO_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn open(dir: &Path) -> DiskStore {
        DiskStore::open(dir, "net", true).unwrap().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Plants a lease as the reference writes it, which changes the directory's mtime.
    fn plant(dir: &Path, ip: &str, content: &str) {
        std::fs::write(dir.join("net").join(ip), content).unwrap();
    }

    #[test]
    fn lease_layout_is_the_reference_one() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        assert!(s.reserve(" c1 ", "eth0", ip("10.1.0.2"), 0).unwrap());
        assert!(s.reserve("c1", "eth0", ip("fd00::2"), 1).unwrap());
        s.commit().unwrap();
        drop(s);
        let net = t.path().join("net");
        assert_eq!(std::fs::read(net.join("10.1.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(std::fs::read(net.join("fd00::2")).unwrap(), b"c1\r\neth0");
        assert_eq!(std::fs::read(net.join("last_reserved_ip.0")).unwrap(), b"10.1.0.2");
        assert_eq!(std::fs::read(net.join("last_reserved_ip.1")).unwrap(), b"fd00::2");
        // No temp file is left, and nothing is writable by others; the record of the moved
        // pointers is written before they move.
        assert_eq!(
            names(&net),
            [
                ".by-id",
                ".last_reserved_undo",
                "10.1.0.2",
                "fd00::2",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
        for n in names(&net) {
            let mode = std::fs::symlink_metadata(net.join(&n)).unwrap().permissions().mode();
            assert_eq!(mode & 0o022, 0, "{n} has mode {mode:o}");
        }
    }

    #[test]
    fn reserve_never_overwrites_an_existing_file() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        // An empty lease left by a writer that crashed is still a held address.
        plant(t.path(), "10.1.0.2", "");
        assert!(!s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap());
        assert!(s.reserve("c1", "eth0", ip("10.1.0.3"), 0).unwrap());
        s.commit().unwrap();
        let net = t.path().join("net");
        assert_eq!(std::fs::read(net.join("10.1.0.2")).unwrap(), b"");
        assert!(!names(&net).iter().any(|n| n.starts_with(TMP_PREFIX)));
    }

    #[test]
    fn temp_files_are_no_leases_and_gc_removes_them() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        // What a crash between writing the temp and linking it leaves.
        plant(t.path(), ".tmp-999-1", "c9\r\neth0");
        assert!(s.get_by_id("c9", "eth0").unwrap().is_empty());
        s.gc(&|_| true).unwrap();
        s.commit().unwrap();
        assert!(!names(&t.path().join("net")).contains(&".tmp-999-1".to_string()));
    }

    #[test]
    fn temp_files_of_a_killed_writer_go_with_the_next_rebuild() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        // What a writer killed between writing its temp file and linking it leaves (which
        // also moves the directory's mtime, as any change by another process).
        plant(t.path(), ".tmp-999999-1", "c9\r\neth0");
        let mut s = open(t.path());
        assert!(!s.index_complete());
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        s.commit().unwrap();
        drop(s);
        assert!(!names(&t.path().join("net")).iter().any(|n| n.starts_with(TMP_PREFIX)));
        // An ADD alone (which needs no index lookup) removes them at commit too.
        plant(t.path(), ".tmp-999999-2", "");
        let mut s = open(t.path());
        assert!(s.reserve("c2", "eth0", ip("10.1.0.3"), 0).unwrap());
        s.commit().unwrap();
        drop(s);
        assert!(!names(&t.path().join("net")).iter().any(|n| n.starts_with(TMP_PREFIX)));
        let mut s = open(t.path());
        assert!(s.index_complete());
        assert_eq!(s.get_by_id("c2", "eth0").unwrap(), [ip("10.1.0.3")]);
    }

    #[test]
    fn index_answers_without_a_scan_when_complete() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        let s = open(t.path());
        assert!(s.index_complete(), "our own change keeps the index complete");
        drop(s);
        // A lease rewritten in place (which changes nothing in the directory itself) is not
        // seen under its new owner: lookups use the index, not a scan of the leases.
        std::fs::write(t.path().join("net/10.1.0.2"), "ghost\r\neth0").unwrap();
        let mut s = open(t.path());
        assert!(s.index_complete());
        assert!(s.release_by_id("ghost", "eth0").unwrap().is_empty());
        s.commit().unwrap();
    }

    /// The reference writes into the store while the clock has been stepped back so that its
    /// change lands on the very mtime our stamp recorded: the index must not look complete.
    #[test]
    fn a_foreign_change_at_the_stamped_mtime_still_rebuilds_the_index() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        let net = t.path().join("net");
        let stamped = std::fs::metadata(&net).unwrap().modified().unwrap();
        plant(t.path(), "10.1.0.9", "ghost\r\neth0");
        std::fs::File::open(&net).unwrap().set_modified(stamped).unwrap();
        assert_eq!(std::fs::metadata(&net).unwrap().modified().unwrap(), stamped);
        let mut s = open(t.path());
        assert!(!s.index_complete(), "the ctime tells the change apart");
        assert_eq!(s.release_by_id("ghost", "eth0").unwrap(), [ip("10.1.0.9")]);
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        s.commit().unwrap();
        drop(s);
        assert!(open(t.path()).index_complete());
    }

    #[test]
    fn foreign_changes_make_the_index_rebuild() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        // The reference adds a lease (new format) and an old-format one.
        plant(t.path(), "10.1.0.3", "c2\r\neth0");
        plant(t.path(), "10.1.0.4", "  c3 \n");
        let mut s = open(t.path());
        assert!(!s.index_complete());
        assert_eq!(s.get_by_id("c2", "eth0").unwrap(), [ip("10.1.0.3")]);
        assert!(s.index_complete(), "rebuilt by the lookup");
        assert_eq!(s.release_by_id("c3", "eth0").unwrap(), [ip("10.1.0.4")]);
        s.commit().unwrap();
        drop(s);
        let mut s = open(t.path());
        assert!(s.index_complete());
        assert_eq!(s.release_by_id("c2", "eth0").unwrap(), [ip("10.1.0.3")]);
        s.commit().unwrap();
        drop(s);
        // The reference removes a lease of ours: the index notices (and does not lie).
        std::fs::remove_file(t.path().join("net/10.1.0.2")).unwrap();
        let mut s = open(t.path());
        assert!(!s.index_complete());
        assert!(s.get_by_id("c1", "eth0").unwrap().is_empty());
    }

    #[test]
    fn new_format_first_then_old_format() {
        let t = tempfile::tempdir().unwrap();
        plant_dir(t.path());
        plant(t.path(), "10.1.0.2", "c1\r\neth0");
        plant(t.path(), "10.1.0.3", "c1");
        let mut s = open(t.path());
        assert_eq!(s.get_by_id("c1", "eth0").unwrap().len(), 2);
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.1.0.3")]);
        assert!(s.release_by_id("c1", "eth0").unwrap().is_empty());
    }

    fn plant_dir(dir: &Path) {
        std::fs::create_dir_all(dir.join("net")).unwrap();
    }

    #[test]
    fn stale_index_entries_are_verified() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        // The lease now names someone else, rewritten in place (which no plugin does, and
        // which leaves the directory's mtime alone): the index entry of c1 is stale and the
        // lease must not be released for c1.
        std::fs::write(t.path().join("net/10.1.0.2"), "c2\r\neth0").unwrap();
        let mut s = open(t.path());
        assert!(s.index_complete());
        assert!(s.release_by_id("c1", "eth0").unwrap().is_empty());
        assert!(t.path().join("net/10.1.0.2").exists());
        // GC rebuilds the index from the leases themselves.
        s.gc(&|_| true).unwrap();
        assert_eq!(s.release_by_id("c2", "eth0").unwrap(), [ip("10.1.0.2")]);
    }

    #[test]
    fn long_ids_fall_back_to_a_scan() {
        let t = tempfile::tempdir().unwrap();
        let id = "x".repeat(300);
        let mut s = open(t.path());
        s.reserve(&id, "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        let mut s = open(t.path());
        assert_eq!(s.release_by_id(&id, "eth0").unwrap(), [ip("10.1.0.2")]);
    }

    #[test]
    fn gc_keeps_valid_releases_invalid_and_empty() {
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("keep", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.reserve("gone", "eth0", ip("10.1.0.3"), 0).unwrap();
        s.reserve("keep", "eth1", ip("10.1.0.4"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        plant(t.path(), "10.1.0.5", "");
        plant(t.path(), "10.1.0.6", "keep");
        plant(t.path(), "10.1.0.7", "old");
        let mut s = open(t.path());
        let keep = |o: &Owner| o.container_id == "keep" && o.ifname.as_deref().is_none_or(|i| i == "eth0");
        let mut r = s.gc(&keep).unwrap();
        r.released.sort();
        assert_eq!(r.released, [ip("10.1.0.3"), ip("10.1.0.4"), ip("10.1.0.7")]);
        assert_eq!(r.empty_removed, [ip("10.1.0.5")]);
        assert_eq!(r.kept, 2);
        s.commit().unwrap();
        drop(s);
        let mut s = open(t.path());
        assert!(s.index_complete());
        assert_eq!(s.get_by_id("keep", "eth0").unwrap().len(), 2);
        assert!(s.get_by_id("gone", "eth0").unwrap().is_empty());
    }

    #[test]
    fn symlinks_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // A symlinked network directory.
        symlink(elsewhere.path(), t.path().join("net")).unwrap();
        let e = DiskStore::open(t.path(), "net", true).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

        // A symlinked lock file.
        let t = tempfile::tempdir().unwrap();
        plant_dir(t.path());
        symlink(elsewhere.path().join("x"), t.path().join("net/lock")).unwrap();
        assert!(DiskStore::open(t.path(), "net", true).is_err());
        assert!(!elsewhere.path().join("x").exists());

        // A symlink where a lease or last_reserved_ip file would be.
        let t = tempfile::tempdir().unwrap();
        plant_dir(t.path());
        let target = elsewhere.path().join("target");
        std::fs::write(&target, "c1\r\neth0").unwrap();
        symlink(&target, t.path().join("net/10.1.0.2")).unwrap();
        symlink(&target, t.path().join("net/last_reserved_ip.0")).unwrap();
        let mut s = open(t.path());
        assert!(!s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap());
        assert!(s.get_by_id("c1", "eth0").unwrap().is_empty());
        // The symlinked last_reserved_ip.0 is replaced, not followed.
        assert!(s.reserve("c1", "eth0", ip("10.1.0.3"), 0).unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"c1\r\neth0");
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.1.0.3")]);
        s.commit().unwrap();
        assert!(target.exists());
        let net = t.path().join("net");
        assert!(std::fs::symlink_metadata(net.join("last_reserved_ip.0"))
            .unwrap()
            .is_file());
        // The symlink named like a lease is never read, written or removed by us.
        assert!(std::fs::symlink_metadata(net.join("10.1.0.2")).unwrap().is_symlink());

        // Symlinks planted in the index: replaced, never followed.
        let t = tempfile::tempdir().unwrap();
        let mut s = open(t.path());
        s.reserve("c1", "eth0", ip("10.1.0.2"), 0).unwrap();
        s.commit().unwrap();
        drop(s);
        let idx = t.path().join("net").join(INDEX_DIR);
        std::fs::remove_file(idx.join("c1:eth0")).unwrap();
        symlink(&target, idx.join("c1:eth0")).unwrap();
        std::fs::remove_file(idx.join(STAMP_FILE)).unwrap();
        symlink(&target, idx.join(STAMP_FILE)).unwrap();
        let mut s = open(t.path());
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        s.commit().unwrap();
        drop(s);
        assert_eq!(std::fs::read(&target).unwrap(), b"c1\r\neth0");
        assert!(open(t.path()).index_complete());
    }

    #[test]
    fn bad_network_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["..", ".", "a/b", "", "-x", ".hidden"] {
            let e = DiskStore::open(t.path(), bad, true).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}: {e}");
        }
    }

    #[test]
    fn missing_store_is_none_without_create() {
        let t = tempfile::tempdir().unwrap();
        assert!(DiskStore::open(&t.path().join("nope"), "net", false).unwrap().is_none());
        assert!(DiskStore::open(t.path(), "net", false).unwrap().is_none());
        assert!(!t.path().join("nope").exists() && !t.path().join("net").exists());
    }
}

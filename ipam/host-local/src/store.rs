//! What the allocator needs from a lease store: the on-disk store ([`crate::disk`]) and the
//! etcd store ([`crate::etcd`]) implement it.

use std::net::IpAddr;

use cni::Result;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub container_id: String,
    /// `None` for leases of the reference's old format, which hold only the container id.
    pub ifname: Option<String>,
}

impl Owner {
    /// Parses a lease file's content: `<id>\r\n<ifname>`, or `<id>` (old format); surrounding
    /// whitespace is ignored, as the reference does. `None` for an empty lease.
    pub fn parse(content: &[u8]) -> Option<Owner> {
        let s = String::from_utf8_lossy(content);
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        Some(match s.split_once("\r\n") {
            Some((id, ifname)) => Owner {
                container_id: id.to_string(),
                ifname: Some(ifname.to_string()),
            },
            None => Owner {
                container_id: s.to_string(),
                ifname: None,
            },
        })
    }

    /// The lease file content the reference writes (and matches after trimming).
    pub fn lease_content(id: &str, ifname: &str) -> String {
        format!("{}\r\n{}", id.trim(), ifname)
    }
}

/// What a GC pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Leases of attachments that are no longer valid.
    pub released: Vec<IpAddr>,
    /// Empty lease files (a writer that crashed between create and write).
    pub empty_removed: Vec<IpAddr>,
    /// Leases kept.
    pub kept: usize,
}

/// A lease store. A call's work is one [`Store::transact`]: all its range sets, and the
/// rollback of a failed ADD, are one transaction for the other callers (the disk store holds
/// its lock from open until it is dropped; the etcd store commits lock-free, under compares).
pub trait Store {
    /// Reserves `ip` for (`id`, `ifname`) and records it as the last address reserved in range
    /// set `range_set`. `Ok(false)` when `ip` is already held.
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool>;

    /// Releases `ip` if (`id`, `ifname`) holds it (the rollback of a failed ADD).
    fn release(&mut self, id: &str, ifname: &str, ip: IpAddr) -> Result<bool>;

    /// Whether `ip` is held by anyone.
    fn is_reserved(&mut self, ip: IpAddr) -> Result<bool>;

    /// Who holds `ip` (`None`: nobody, or a lease too damaged to say).
    fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>>;

    /// The last address reserved in range set `range_set`, where round robin resumes.
    fn last_reserved(&mut self, range_set: usize) -> Result<Option<IpAddr>>;

    /// The addresses (`id`, `ifname`) holds, including old-format leases of `id`.
    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>>;

    /// Releases what (`id`, `ifname`) holds; when it holds nothing, what old-format leases of
    /// `id` hold (the reference's rule). Returns the addresses released.
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>>;

    /// Before an ADD of (`id`, `ifname`) allocates: from now on the ADD `token` holds the
    /// attachment. An undo of an earlier ADD of the attachment releases nothing of what it
    /// holds now, and an undo of this one releases only what it reserves after this point.
    fn claim(&mut self, id: &str, ifname: &str, token: &str) -> Result<()>;

    /// The DEL that undoes the failed ADD `token` of (`id`, `ifname`): releases the leases
    /// that ADD reserved, unless another ADD of the attachment claimed it since; puts back the
    /// round-robin pointers the ADD moved (disk). Returns what it released. A lease that
    /// existed before that ADD, or that another call holds, is never released here.
    fn release_for_undo(&mut self, id: &str, ifname: &str, token: &str) -> Result<Vec<IpAddr>>;

    /// Releases every lease whose owner `keep` refuses, and empty leases.
    fn gc(&mut self, keep: &dyn Fn(&Owner) -> bool) -> Result<GcReport>;

    /// The boot bookkeeping of the store, done once per call right after it is opened (under
    /// the lock): when the store was last used in another boot of this host (`boot_id`, the
    /// kernel's), every lease of this host it holds is from a container that cannot exist any
    /// more; with `release` they are released. A store that has no boot record yet (written by
    /// the reference, or by an older version of ours) is adopted as written in this boot. The
    /// current boot is recorded either way. Returns the addresses released.
    fn reconcile_boot(&mut self, boot_id: &str, release: bool) -> Result<Vec<IpAddr>>;

    /// Fails when new leases cannot be written.
    fn check_writable(&mut self) -> Result<()>;

    /// The one transactional entry point: runs `f`, which stages the call's work through the
    /// other methods, and makes it durable as one transaction for the other callers. The
    /// disk store runs `f` once under its lock, then finishes its bookkeeping (the lease
    /// index). A store without a lock (etcd) writes what `f` staged at the end, under
    /// compares; when another caller changed what `f` relied on first, nothing was written:
    /// it drops what was staged, reads again and runs `f` again (so `f` must start from
    /// scratch each time), until it commits, fails, or its deadline passes. An error of `f`
    /// ends it with that error: the disk store finishes the bookkeeping of what `f` did and
    /// put back (its own rollback); a store that stages writes nothing.
    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn Store) -> Result<()>) -> Result<()>;

    /// Puts back the round-robin pointers this call moved (the rollback of a failed ADD).
    /// The etcd store writes nothing before the commit, so it has nothing to put back.
    fn restore_last_reserved(&mut self) -> Result<()> {
        Ok(())
    }

    /// After a successful ADD of (`id`, `ifname`): records the round-robin pointers it moved,
    /// which [`Store::release_for_undo`] puts back (disk). The etcd store keeps no such record: its round robin is
    /// shared by the hosts, and moves on.
    fn record_add(&mut self, _id: &str, _ifname: &str) -> Result<()> {
        Ok(())
    }

    /// How many free candidates the allocator skips in range set `range_set` before it
    /// reserves one: 0, except after a lost race in [`Store::transact`], when a small random
    /// number spreads the losers over different addresses.
    fn spread(&mut self, _range_set: usize) -> usize {
        0
    }
}

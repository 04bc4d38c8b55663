//! Lock files: an exclusive `flock(2)` taken with a deadline, and who holds one.

use std::fs::File;
use std::io;

/// Takes the exclusive `flock(2)` of `f`, waiting at most `deadline`: `Ok(false)` when another
/// holder kept it that long. The wait polls, starting at 50 µs and doubling up to 2 ms, so a
/// lock held for a call's few milliseconds is taken soon after its release.
pub fn lock_within(f: &File, deadline: std::time::Duration) -> io::Result<bool> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(50);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - waited));
        pause = (pause * 2).min(std::time::Duration::from_millis(2));
    }
}

/// The pids that hold a `flock(2)` on the file `f` is open on, as `/proc/locks` tells them
/// (empty when it cannot be read). A pid there is of the process that took the lock, which may
/// have passed it on to a child.
pub fn flock_holders(f: &File) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = f.metadata() else {
        return Vec::new();
    };
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    parse_flock_holders(&locks, major, minor, m.ino())
}

/// Who holds the `flock(2)` of `f`, for a message: `pid 4242` (or `pid 4242, 4343`), or
/// `None` when `/proc/locks` does not tell.
pub fn held_by(f: &File) -> Option<String> {
    let pids = flock_holders(f);
    (!pids.is_empty()).then(|| {
        format!(
            "pid {}",
            pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The holders (not the waiters, `->`) of `FLOCK`s on inode `ino` of device `major:minor`
/// in the text of `/proc/locks`, whose lines read `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF`.
fn parse_flock_holders(locks: &str, major: u32, minor: u32, ino: u64) -> Vec<u32> {
    let want = (major as u64, minor as u64, ino);
    let mut pids: Vec<u32> = locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[1] != "FLOCK" {
                return None;
            }
            let mut id = f[5].split(':');
            let dev_major = u64::from_str_radix(id.next()?, 16).ok()?;
            let dev_minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let inode = id.next()?.parse::<u64>().ok()?;
            ((dev_major, dev_minor, inode) == want)
                .then(|| f[4].parse().ok())
                .flatten()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_name_their_holders() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4343 fd:01:1234 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 fd:01:1234 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 77 fd:01:999 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 78 00:1f:1234 0 EOF\n";
        assert_eq!(parse_flock_holders(text, 0xfd, 1, 1234), [4242]);
        assert_eq!(parse_flock_holders(text, 0, 0x1f, 1234), [78]);
        assert!(parse_flock_holders(text, 0xfd, 2, 1234).is_empty());
    }
}

//! The one way the firewall code runs a tool: the binary found in `$PATH` or the standard
//! sbin/bin directories, an argument list (never a shell), an optional script on stdin
//! (`nft -f -`), and one error for a failure: code 105 with the command and its stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Where binaries are looked for after `$PATH` (runtimes may call plugins with a PATH that
/// lacks the sbin directories).
pub(super) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The binary `name` in an absolute directory of `$PATH`, else of [`DEFAULT_PATH`].
pub(super) fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(DEFAULT_PATH))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// What a finished command said.
#[derive(Debug)]
pub(super) struct Output {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for the error.
    cmd: String,
}

impl Output {
    /// The error of this (failed) command: code 105, the command line and its stderr (or
    /// exit status when it printed nothing).
    pub fn error(&self) -> Error {
        let msg = if self.stderr.is_empty() {
            format!("exit status {:?}", self.code)
        } else {
            self.stderr.clone()
        };
        Error::firewall(format!("{}: {msg}", self.cmd))
    }

    /// Its stdout if it succeeded, else its [`error`](Output::error).
    pub fn checked(self) -> Result<String> {
        if self.ok {
            Ok(self.stdout)
        } else {
            Err(self.error())
        }
    }
}

/// Runs `bin` with `args`, `stdin` (if any) written to its standard input. A command that
/// could not be started is an error; one that failed is an [`Output`] with `ok` false.
pub(super) fn run(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let name = bin.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let cmd = std::iter::once(name.as_ref())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::firewall(format!("running {}: {e}", bin.display())))?;
    if let (Some(s), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows as the command's own failure below.
        let _ = pipe.write_all(s.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::firewall(format!("waiting for {}: {e}", bin.display())))?;
    Ok(Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        cmd,
    })
}

/// Whether the failed command says that the kernel or the binary cannot do this family or
/// API at all (IPv6 disabled, no nf_tables): nothing of ours can be there.
///
/// The one place that reads meaning from a tool's words, because nothing else tells: iptables
/// and nft exit 1 for this as for any other failure, with the kernel's errno only as
/// `strerror` text (nft's JSON mode has no error objects), and go-iptables and knftables
/// match the same messages. Everything else is read from listings: whether a table, chain
/// or rule exists (`nft -j list tables`, `nft -j list table`, `iptables -S`), also after a
/// command failed, to tell "someone removed it first" from a real error.
pub(super) fn unavailable(out: &Output) -> bool {
    !out.ok
        && [
            "Address family not supported",
            "Protocol not supported",
            "do you need to insmod",
            "Operation not supported",
        ]
        .iter()
        .any(|m| out.stderr.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_found_in_path_or_sbin() {
        assert!(find_bin("cat").is_some_and(|p| p.is_absolute()));
        assert!(find_bin("no-such-tool-here").is_none());
    }

    #[test]
    fn stdin_is_fed_and_failures_are_code_105_with_stderr() {
        let out = run(&find_bin("cat").unwrap(), &[], Some("add table x\n")).unwrap();
        assert!(out.ok);
        assert_eq!(out.checked().unwrap(), "add table x\n");
        let out = run(&find_bin("ls").unwrap(), &["/no/such/dir"], None).unwrap();
        assert!(!out.ok && !out.stderr.is_empty());
        let e = out.error();
        assert_eq!(e.code(), 105);
        assert!(e.to_string().starts_with("ls /no/such/dir: "), "{e}");
        assert!(e.to_string().contains(&out.stderr), "{e}");
        let e = run(&find_bin("false").unwrap(), &[], None)
            .unwrap()
            .checked()
            .unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (105, "false: exit status Some(1)".to_string())
        );
        let e = run(Path::new("/no/such/nft"), &["-f", "-"], Some("x")).unwrap_err();
        assert_eq!(e.code(), 105);
    }
}

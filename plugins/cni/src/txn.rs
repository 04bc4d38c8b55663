//! One ADD as a transaction: every step that changes the node registers its undo right after
//! it succeeds; [`Txn::commit`] keeps the changes, and a transaction dropped without it undoes
//! them, newest first, on every way out — an error returned with `?`, or a panic unwinding
//! (which skel then reports as code 100).
//!
//! ```no_run
//! # use cni::txn::Txn;
//! # fn make_link() -> cni::Result<u32> { Ok(7) }
//! # fn del_link(_: u32) -> cni::Result<()> { Ok(()) }
//! # fn more() -> cni::Result<()> { Ok(()) }
//! let mut txn = Txn::new("bridge");
//! let index = make_link()?;
//! txn.undo(format!("link {index}"), move || del_link(index));
//! more()?; // on failure: the link is deleted
//! txn.commit();
//! # Ok::<(), cni::Error>(())
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Errors, Result};

type Undo<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

/// The undo steps of one ADD.
pub struct Txn<'a> {
    plugin: &'static str,
    steps: Vec<(String, Undo<'a>)>,
}

impl<'a> Txn<'a> {
    /// A transaction of `plugin` (named in the report of a failed undo).
    pub fn new(plugin: &'static str) -> Txn<'a> {
        Txn {
            plugin,
            steps: Vec::new(),
        }
    }

    /// The plugin whose ADD this is.
    pub fn plugin(&self) -> &'static str {
        self.plugin
    }

    /// Registers the undo of a step that has just changed the node.
    pub fn undo(&mut self, what: impl Into<String>, f: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what.into(), Box::new(f)));
    }

    /// Keeps every change: nothing is undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Undoes every step, newest first (on drop); each runs even when another failed or
    /// panicked. Errors go to stderr: the caller's own error is what the runtime gets.
    fn run_undo(&mut self) {
        let mut errs = Errors::new();
        while let Some((what, f)) = self.steps.pop() {
            let r = match catch_unwind(AssertUnwindSafe(f)) {
                Ok(r) => r,
                Err(_) => Err(Error::internal("panicked")),
            };
            errs.note(r.map_err(|e| e.context(format!("undoing {what}"))));
        }
        if let Err(e) = errs.into_result() {
            crate::log!("{}: cleaning up after a failed ADD: {e}", self.plugin);
        }
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        self.run_undo();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn undoes_newest_first_when_dropped_and_nothing_after_commit() {
        let log = RefCell::new(Vec::new());
        {
            let mut t = Txn::new("test");
            t.undo("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            t.undo("b", || {
                log.borrow_mut().push("b");
                Err(Error::io_failure("b failed"))
            });
            t.undo("c", || {
                log.borrow_mut().push("c");
                Ok(())
            });
        }
        assert_eq!(*log.borrow(), ["c", "b", "a"], "every step runs, also after a failure");
        let mut t = Txn::new("test");
        t.undo("d", || {
            log.borrow_mut().push("d");
            Ok(())
        });
        t.commit();
        assert_eq!(log.borrow().len(), 3);
    }

    #[test]
    fn undoes_on_panic_and_survives_a_panicking_undo() {
        let log = RefCell::new(Vec::new());
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut t = Txn::new("test");
            t.undo("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            t.undo("b", || panic!("undo b"));
            panic!("a step panicked");
        }));
        assert!(r.is_err());
        assert_eq!(*log.borrow(), ["a"]);
    }
}

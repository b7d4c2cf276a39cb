//! SQLite's session extension on the writer: the one place in corral with
//! `unsafe` code. rusqlite's `Session` borrows its connection, so it cannot
//! be kept with the connection across the statements of a transaction
//! that a guest runs over several calls; this keeps the raw session beside
//! the connection instead, in the `Conn` that holds both, and deletes it
//! before the `Conn` gives the connection up.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::ptr;

use rusqlite::ffi;

use crate::capabilities::bindings::corral::service::sqlite::Error;

/// The changes a write transaction made so far: a session of SQLite's
/// session extension on the writer, attached to every table.
pub(super) struct Recording(*mut ffi::sqlite3_session);

// The session belongs to the writer's connection, which moves between
// threads with the `Conn` that holds both, never used from two at once.
unsafe impl Send for Recording {}

impl Recording {
    pub(super) fn start(conn: &rusqlite::Connection) -> Result<Recording, Error> {
        let mut session = ptr::null_mut();
        // SAFETY: the connection is open, and the session is deleted
        // (`Drop`) before the `Conn` that holds the connection gives it up.
        let created = unsafe { ffi::sqlite3session_create(conn.handle(), c"main".as_ptr(), &mut session) };
        if created != ffi::SQLITE_OK {
            return Err(Error::Io(format!(
                "cannot record the transaction's changes (SQLite error {created})"
            )));
        }
        let recording = Recording(session);
        // SAFETY: a null table name attaches every table.
        let attached = unsafe { ffi::sqlite3session_attach(session, ptr::null()) };
        if attached != ffi::SQLITE_OK {
            return Err(Error::Io(format!(
                "cannot record the transaction's changes (SQLite error {attached})"
            )));
        }
        Ok(recording)
    }

    /// Every row changed so far, as a changeset.
    pub(super) fn changeset(&self) -> Result<Vec<u8>, Error> {
        let (mut size, mut bytes): (c_int, *mut c_void) = (0, ptr::null_mut());
        // SAFETY: the session is live; SQLite allocates the buffer, freed below.
        let made = unsafe { ffi::sqlite3session_changeset(self.0, &mut size, &mut bytes) };
        let copy = if bytes.is_null() || size <= 0 {
            Vec::new()
        } else {
            // SAFETY: SQLite wrote `size` bytes at `bytes`.
            unsafe { std::slice::from_raw_parts(bytes as *const u8, size as usize) }.to_vec()
        };
        // SAFETY: allocated by SQLite (or null, which it ignores).
        unsafe { ffi::sqlite3_free(bytes) };
        if made != ffi::SQLITE_OK {
            return Err(Error::Io(format!(
                "cannot read the transaction's changes to replicate them (SQLite error {made}); \
                 a transaction that changes a table's columns after writing to it cannot be replicated"
            )));
        }
        Ok(copy)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // SAFETY: created by `start`, deleted once.
        unsafe { ffi::sqlite3session_delete(self.0) };
    }
}

//! A spool's temporary file: unlinked as soon as it is made (nothing is left behind
//! by a crash), appended to by the pump and read from the front by the reader, and
//! emptied each time the reader catches up, so it holds only what is unread.
//!
//! Reads and writes are plain positioned system calls on the task's thread, as nginx
//! does its temporary files without aio: they go to the page cache, and only answers
//! that outgrow memory take this path.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use super::{Usage, add, sub};

/// The most one read hands the client.
const READ_CHUNK: u64 = 64 * 1024;

/// An unlinked temporary file holding `[read, written)` of a spool.
pub struct SpoolFile {
    file: File,
    read: u64,
    written: u64,
}

impl SpoolFile {
    /// A new, empty file in `dir`.
    pub fn create(dir: &Path, usage: &Usage) -> io::Result<SpoolFile> {
        let file = tempfile::tempfile_in(dir)?;
        add(&usage.files, 1);
        Ok(SpoolFile { file, read: 0, written: 0 })
    }

    /// Bytes written and not yet read.
    pub fn unread(&self) -> u64 {
        self.written - self.read
    }

    /// Whether the reader has everything written so far.
    pub fn is_drained(&self) -> bool {
        self.read == self.written
    }

    /// Appends `data`.
    pub fn append(&mut self, data: &[u8], usage: &Usage) -> io::Result<()> {
        self.file.write_all_at(data, self.written)?;
        self.written += data.len() as u64;
        add(&usage.file, data.len() as u64);
        Ok(())
    }

    /// The next bytes from the front (at most [`READ_CHUNK`]).
    pub fn read(&mut self, usage: &Usage) -> io::Result<Bytes> {
        let n = self.unread().min(READ_CHUNK) as usize;
        let mut buf = BytesMut::zeroed(n);
        self.file.read_exact_at(&mut buf, self.read)?;
        self.read += n as u64;
        sub(&usage.file, n as u64);
        if self.is_drained() {
            // Caught up: the disk space goes back, and the next bytes start at 0.
            self.file.set_len(0)?;
            (self.read, self.written) = (0, 0);
        }
        Ok(buf.freeze())
    }

    /// Closes the file, giving back what it held.
    pub fn close(self, usage: &Usage) {
        sub(&usage.file, self.unread());
        sub(&usage.files, 1);
    }
}

//! The file system SQLite sees for objects' databases: each database is a buffer in memory
//! that remembers which 4 KiB chunks were written since it was last asked. A turn that
//! commits hands those chunks to the object's storage, so the database is stored as the
//! object's own data, in whichever backend keeps the object, and commits in the turn's batch.
//!
//! This is the one room of the runtime with `unsafe` code: the callbacks SQLite calls through
//! its C interface. Each of them touches only the file it is given and the buffer behind it.

#![allow(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rusqlite::ffi;

/// The unit a database is stored in: one stored entry per chunk of the file.
pub(crate) const CHUNK: usize = 4096;
/// The name the VFS is registered under.
pub(crate) const VFS_NAME: &CStr = c"stead-object";
const FILE_PREFIX: &str = "stead-object-";

/// One database file, in memory.
#[derive(Debug, Default)]
pub(crate) struct MemFile {
    pub(crate) data: Vec<u8>,
    /// Chunks written (or cut short) since the last [`take_dirty`](Self::take_dirty).
    pub(crate) dirty: BTreeSet<u32>,
}

impl MemFile {
    fn write(&mut self, offset: usize, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        let end = offset + buf.len();
        if self.data.len() < end {
            let old = self.data.len();
            self.grow_to(end);
            self.mark(old.min(offset), end);
        }
        self.data[offset..end].copy_from_slice(buf);
        self.mark(offset, end);
    }

    fn truncate(&mut self, size: usize) {
        if size < self.data.len() {
            self.data.truncate(size);
            if !size.is_multiple_of(CHUNK) {
                self.dirty.insert((size / CHUNK) as u32);
            }
        } else if size > self.data.len() {
            let old = self.data.len();
            self.grow_to(size);
            self.mark(old, size);
        }
    }

    /// Lengthens the file with zeros, its buffer growing by a quarter at a time (not
    /// doubling: a database is kept whole in memory, and half of a doubled buffer would be
    /// memory held for nothing).
    fn grow_to(&mut self, end: usize) {
        if end > self.data.capacity() {
            let extra = (end - self.data.len()).max(self.data.len() / 4);
            self.data.reserve_exact(extra);
        }
        self.data.resize(end, 0);
    }

    fn mark(&mut self, from: usize, to: usize) {
        if to > from {
            for c in from / CHUNK..=(to - 1) / CHUNK {
                self.dirty.insert(c as u32);
            }
        }
    }

    /// How many chunks the file has.
    pub(crate) fn chunks(&self) -> u32 {
        self.data.len().div_ceil(CHUNK) as u32
    }

    /// The bytes of chunk `i` (the last one may be short).
    pub(crate) fn chunk(&self, i: u32) -> &[u8] {
        let from = i as usize * CHUNK;
        &self.data[from..(from + CHUNK).min(self.data.len())]
    }
}

/// A database file shared between its connection (through SQLite) and the runtime.
pub(crate) type SharedFile = Arc<Mutex<MemFile>>;

pub(crate) fn lock(file: &Mutex<MemFile>) -> MutexGuard<'_, MemFile> {
    file.lock().unwrap_or_else(|e| e.into_inner())
}

/// Files waiting to be opened, by the number in their name.
fn waiting() -> &'static Mutex<HashMap<u64, SharedFile>> {
    static WAITING: OnceLock<Mutex<HashMap<u64, SharedFile>>> = OnceLock::new();
    WAITING.get_or_init(Default::default)
}

/// Makes `file` the next database a connection opens by the returned name (the name is
/// good for one open).
pub(crate) fn offer(file: SharedFile) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    waiting()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(n, file);
    format!("{FILE_PREFIX}{n}")
}

/// Forgets an offered file that was not opened (its open failed).
pub(crate) fn withdraw(name: &str) {
    if let Some(n) = name.strip_prefix(FILE_PREFIX).and_then(|n| n.parse().ok()) {
        waiting()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
    }
}

/// Asks SQLite, before it first starts in this process, not to allocate a block of page
/// cache up front for every connection (20 pages, some 83 KiB: with a connection per object
/// in memory, that block would cost more than the object's whole database). Pages are then
/// allocated as a connection uses them. SQLite takes such settings only before it starts:
/// the runtime builder calls this before its backend opens anything; if something else in
/// the process started SQLite first, this does nothing.
pub(crate) fn configure_sqlite() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: SQLITE_CONFIG_PAGECACHE takes a buffer pointer and two ints; a null buffer
        // with zero sizes means "no preallocated page cache". SQLite refuses (SQLITE_MISUSE)
        // if it has started already, which is harmless.
        unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PAGECACHE,
                ptr::null_mut::<c_void>(),
                0 as c_int,
                0 as c_int,
            );
        }
    });
}

/// Registers the VFS with SQLite, once per process.
pub(crate) fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    configure_sqlite();
    let rc = *REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find initialises SQLite and returns the default VFS, which lives
        // as long as the process. The struct handed to sqlite3_vfs_register is leaked, so it
        // outlives every connection, as SQLite requires.
        unsafe {
            let base = ffi::sqlite3_vfs_find(ptr::null());
            if base.is_null() {
                return ffi::SQLITE_ERROR;
            }
            let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                iVersion: 2,
                szOsFile: size_of::<Handle>() as c_int,
                mxPathname: 512,
                pNext: ptr::null_mut(),
                zName: VFS_NAME.as_ptr(),
                pAppData: base.cast::<c_void>(),
                xOpen: Some(x_open),
                xDelete: Some(x_delete),
                xAccess: Some(x_access),
                xFullPathname: Some(x_full_pathname),
                xDlOpen: None,
                xDlError: None,
                xDlSym: None,
                xDlClose: None,
                xRandomness: Some(x_randomness),
                xSleep: Some(x_sleep),
                xCurrentTime: Some(x_current_time),
                xGetLastError: Some(x_get_last_error),
                xCurrentTimeInt64: Some(x_current_time_int64),
                xSetSystemCall: None,
                xGetSystemCall: None,
                xNextSystemCall: None,
            }));
            ffi::sqlite3_vfs_register(vfs, 0)
        }
    });
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!("SQLite refused the object VFS (code {rc})"))
    }
}

/// Turns off the connection's lookaside memory (a per-connection pool SQLite allocates up
/// front): an object's connection lives as long as the object is in memory, and with many
/// objects the pools would cost more than they save.
pub(crate) fn without_lookaside(conn: &rusqlite::Connection) -> Result<(), String> {
    // SAFETY: the handle is the open connection's own, used on this thread only, and
    // SQLITE_DBCONFIG_LOOKASIDE with a null buffer and zero sizes asks SQLite for no pool;
    // no statement runs on the connection yet.
    let rc = unsafe {
        ffi::sqlite3_db_config(
            conn.handle(),
            ffi::SQLITE_DBCONFIG_LOOKASIDE,
            ptr::null_mut::<c_void>(),
            0 as c_int,
            0 as c_int,
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!(
            "SQLite refused to configure the connection (code {rc})"
        ))
    }
}

/// Whether `sql` ends with a complete statement (SQLite's own reading: strings, comments
/// and trigger bodies taken into account).
pub(crate) fn is_complete(sql: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(sql) else {
        return false;
    };
    // SAFETY: a NUL-terminated string that lives across the call.
    unsafe { ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

/// What SQLite allocates for an open file (`szOsFile` bytes): its methods, then ours.
#[repr(C)]
struct Handle {
    base: ffi::sqlite3_file,
    /// From `Arc::into_raw`; given back in `x_close`.
    file: *const Mutex<MemFile>,
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_lock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The file behind an open handle.
///
/// # Safety
/// `f` must be a file this VFS opened and has not closed.
unsafe fn file_of<'a>(f: *mut ffi::sqlite3_file) -> &'a Mutex<MemFile> {
    // SAFETY: x_open wrote a Handle at `f` whose `file` came from Arc::into_raw; it stays
    // valid until x_close.
    unsafe { &*(*f.cast::<Handle>()).file }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // The main database is the file offered under its name; anything else SQLite opens
    // (a journal or temporary file, were the pragmas to allow one) is private and in memory.
    let main = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
    let offered = if main && !name.is_null() {
        // SAFETY: SQLite passes a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        name.strip_prefix(FILE_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
            .and_then(|n| {
                waiting()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&n)
            })
    } else {
        None
    };
    if main && offered.is_none() {
        // SAFETY: xOpen must set pMethods even when it fails.
        unsafe { (*f).pMethods = ptr::null() };
        return ffi::SQLITE_CANTOPEN;
    }
    let file = offered.unwrap_or_default();
    // SAFETY: SQLite gives `szOsFile` bytes at `f`, room for a Handle.
    unsafe {
        ptr::write(
            f.cast::<Handle>(),
            Handle {
                base: ffi::sqlite3_file {
                    pMethods: &IO_METHODS,
                },
                file: Arc::into_raw(file),
            },
        );
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the handle was written by x_open; its Arc is taken back once, here.
    unsafe {
        let h = f.cast::<Handle>();
        if !(*h).file.is_null() {
            drop(Arc::from_raw((*h).file));
            (*h).file = ptr::null();
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), usize::try_from(offset)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: SQLite gives a buffer of `amount` bytes and a file this VFS opened.
    let (out, file) = unsafe {
        (
            std::slice::from_raw_parts_mut(buf.cast::<u8>(), amount),
            file_of(f),
        )
    };
    let file = lock(file);
    let have = file.data.len().saturating_sub(offset).min(amount);
    if have > 0 {
        out[..have].copy_from_slice(&file.data[offset..offset + have]);
    }
    if have < amount {
        out[have..].fill(0);
        return ffi::SQLITE_IOERR_SHORT_READ;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), usize::try_from(offset)) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite gives `amount` readable bytes and a file this VFS opened.
    let (data, file) = unsafe {
        (
            std::slice::from_raw_parts(buf.cast::<u8>(), amount),
            file_of(f),
        )
    };
    lock(file).write(offset, data);
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let Ok(size) = usize::try_from(size) else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    // SAFETY: a file this VFS opened.
    lock(unsafe { file_of(f) }).truncate(size);
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_sync(_f: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // Durability is the turn's commit, not the file's.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: a file this VFS opened and a place for the answer.
    unsafe { *size = lock(file_of(f)).data.len() as i64 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(_f: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    // One connection per database, used by one turn at a time: there is no one to lock out.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(_f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: a place for the answer.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    _f: *mut ffi::sqlite3_file,
    _op: c_int,
    _a: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_f: *mut ffi::sqlite3_file) -> c_int {
    CHUNK as c_int
}

unsafe extern "C" fn x_device_characteristics(_f: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_ATOMIC
        | ffi::SQLITE_IOCAP_SAFE_APPEND
        | ffi::SQLITE_IOCAP_SEQUENTIAL
        | ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _sync: c_int,
) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    // No journal or side file ever exists: journals are kept in memory.
    // SAFETY: a place for the answer.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: a NUL-terminated name in, `n_out` bytes of room out.
    unsafe {
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > n_out as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len());
    }
    ffi::SQLITE_OK
}

/// The default VFS, which this one asks for time and randomness.
///
/// # Safety
/// `vfs` must be this VFS (its app data is the default VFS, set in [`register`]).
unsafe fn base(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: see the function's contract.
    unsafe { (*vfs).pAppData.cast() }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: the default VFS's own method, with its own pointer.
    unsafe {
        let b = base(vfs);
        match (*b).xRandomness {
            Some(f) => f(b, n, out),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: as above.
    unsafe {
        let b = base(vfs);
        match (*b).xSleep {
            Some(f) => f(b, micros),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: as above.
    unsafe {
        let b = base(vfs);
        match (*b).xCurrentTime {
            Some(f) => f(b, out),
            None => ffi::SQLITE_ERROR,
        }
    }
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    // SAFETY: as above.
    unsafe {
        let b = base(vfs);
        match (*b).xCurrentTimeInt64 {
            Some(f) => f(b, out),
            None => ffi::SQLITE_ERROR,
        }
    }
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_mark_the_chunks_they_touch() {
        let mut f = MemFile::default();
        f.write(0, &[1; CHUNK]);
        f.write(CHUNK * 2 + 10, &[2; 10]);
        assert_eq!(f.chunks(), 3);
        assert_eq!(f.dirty.iter().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        f.dirty.clear();
        f.write(CHUNK - 1, &[3; 2]);
        assert_eq!(f.dirty.iter().copied().collect::<Vec<_>>(), vec![0, 1]);
        f.dirty.clear();
        f.truncate(CHUNK + 5);
        assert_eq!(f.chunks(), 2);
        assert_eq!(f.chunk(1).len(), 5);
        assert_eq!(f.dirty.iter().copied().collect::<Vec<_>>(), vec![1]);
    }
}

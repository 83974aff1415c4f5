//! A shard's commit log (`shard-NN.log`).
//!
//! The writer appends each group of batches here as one record and syncs the file before it
//! acknowledges the group; it applies the group to a SQLite transaction that stays open and
//! is committed every few tens of milliseconds. Appending a record costs one write of its
//! own bytes, where a SQLite commit per group wrote a 4 KiB page per changed row and updated
//! the WAL index. After each SQLite commit the log starts again from its beginning,
//! overwriting the old records (overwriting an allocated file is cheaper to sync than
//! growing one).
//!
//! A record is a 16-byte header (body length and CRC-32 as little-endian `u32`s, then the
//! sequence number as a `u64`) followed by the body. The database stores the sequence number
//! of the last record it has applied (`meta.log_seq`), in the same transaction as the
//! record's changes. When a shard opens, the records that follow it are applied again: they
//! start at the first record numbered one more than that, and end at the first record that
//! is torn, fails its checksum, or does not carry the next number (older records left behind
//! by an overwrite).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::Change;
use crate::backend::{AlarmChange, CommitBatch, Value};
use crate::id::ObjectId;

const HEADER: usize = 16;

const CLEAR: u8 = 1;
const ALARM_SET: u8 = 2;
const ALARM_DELETE: u8 = 4;
const REGISTER: u8 = 8;
const REGISTER_NAMED: u8 = 16;

/// The append side of the log.
pub(super) struct CommitLog {
    file: File,
    /// Where the next record goes.
    end: u64,
    /// The sequence number of the next record.
    next_seq: u64,
    buf: Vec<u8>,
}

/// The records found in a log, in order: each one's sequence number and body.
pub(super) struct Records {
    bytes: Vec<u8>,
    found: Vec<(u64, std::ops::Range<usize>)>,
}

impl Records {
    /// The sequence number of the last record, if any.
    pub(super) fn last_seq(&self) -> Option<u64> {
        self.found.last().map(|(s, _)| *s)
    }

    /// Where the last record ends (0 without records).
    pub(super) fn end(&self) -> u64 {
        self.found.last().map_or(0, |(_, r)| r.end as u64)
    }

    /// Each record's changes, decoded.
    pub(super) fn decoded(&self) -> io::Result<Vec<Vec<Change<'_>>>> {
        self.found
            .iter()
            .map(|(_, r)| decode(&self.bytes[r.clone()]))
            .collect()
    }
}

impl CommitLog {
    /// Opens (creating if needed) the log at `path`. Nothing is read yet.
    pub(super) fn open(path: &Path) -> io::Result<CommitLog> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if created {
            // Make the new file's directory entry durable, so that a record synced into it
            // cannot be lost with the entry.
            file.sync_all()?;
            #[cfg(unix)]
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(CommitLog {
            file,
            end: 0,
            next_seq: 1,
            buf: Vec::new(),
        })
    }

    /// The records after `applied`, read from the first `limit` bytes of the file (the
    /// whole file with `None`).
    pub(super) fn records_after(
        &mut self,
        applied: u64,
        limit: Option<u64>,
    ) -> io::Result<Records> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        match limit {
            Some(n) => (&mut self.file).take(n).read_to_end(&mut bytes)?,
            None => self.file.read_to_end(&mut bytes)?,
        };
        let found = scan(&bytes, applied);
        Ok(Records { bytes, found })
    }

    /// Where the next record goes and its number; `next_seq` follows the last record
    /// that the database has applied or that is still to be applied.
    pub(super) fn position(&mut self, end: u64, next_seq: u64) {
        self.end = end;
        self.next_seq = next_seq;
    }

    /// The end of the last record written.
    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// Appends one record holding `batches`; returns its sequence number. Not yet synced.
    /// On an error the log's position and numbering stay as they were: the bytes written, if
    /// any, do not form a record whose checksum holds (a failed write leaves part of it),
    /// and the next record goes over them.
    pub(super) fn append(&mut self, batches: &[CommitBatch]) -> io::Result<u64> {
        self.buf.clear();
        self.buf.resize(HEADER, 0);
        encode(&mut self.buf, batches)?;
        let seq = self.next_seq;
        let body_len = u32::try_from(self.buf.len() - HEADER)
            .map_err(|_| io::Error::other("a commit group is over 4 GiB"))?;
        self.buf[0..4].copy_from_slice(&body_len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = checksum(&self.buf[8..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        write_at(&mut self.file, &self.buf, self.end)?;
        self.end += self.buf.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every record written so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Takes back the last record appended, which started at `start`: its header is zeroed
    /// and synced, so that it can never be applied, and the next record takes its place and
    /// its number.
    pub(super) fn undo(&mut self, start: u64) -> io::Result<()> {
        write_at(&mut self.file, &[0; HEADER], start)?;
        self.file.sync_data()?;
        self.end = start;
        self.next_seq -= 1;
        Ok(())
    }

    /// Makes every later write fail (the file is reopened read-only) or, with `false`,
    /// work again: for tests of a failing disk.
    #[cfg(test)]
    pub(super) fn fail_writes(&mut self, path: &Path, fail: bool) {
        self.file = OpenOptions::new()
            .read(true)
            .write(!fail)
            .open(path)
            .unwrap();
    }

    /// Starts again from the beginning of the file, once the database holds every record.
    pub(super) fn restart(&mut self) {
        self.end = 0;
    }
}

/// Writes `bytes` at `offset` (one system call where the platform has positioned writes).
fn write_at(file: &mut File, bytes: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }
    #[cfg(not(unix))]
    {
        file.seek(SeekFrom::Start(offset))?;
        io::Write::write_all(file, bytes)
    }
}

fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Finds the records after `applied`: see the module docs.
fn scan(bytes: &[u8], applied: u64) -> Vec<(u64, std::ops::Range<usize>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let h = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let body = at + HEADER;
        if bytes.len() - body < len || checksum(&bytes[at + 8..body + len]) != crc {
            break;
        }
        let expected = found.last().map_or(applied, |(s, _)| *s) + 1;
        if seq == expected {
            found.push((seq, body..body + len));
        } else if !(found.is_empty() && seq <= applied) {
            break;
        }
        at = body + len;
    }
    found
}

fn put_len(buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let n = u32::try_from(n).map_err(|_| io::Error::other("a value is over 4 GiB"))?;
    buf.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) -> io::Result<()> {
    put_len(buf, b.len())?;
    buf.extend_from_slice(b);
    Ok(())
}

fn encode(buf: &mut Vec<u8>, batches: &[CommitBatch]) -> io::Result<()> {
    put_len(buf, batches.len())?;
    for b in batches {
        put_bytes(buf, b.object.class.as_bytes())?;
        buf.extend_from_slice(b.object.id.as_bytes());
        let mut flags = 0;
        if b.clear {
            flags |= CLEAR;
        }
        match b.alarm {
            AlarmChange::Set(_) => flags |= ALARM_SET,
            AlarmChange::Clear => flags |= ALARM_DELETE,
            AlarmChange::Keep => {}
        }
        match &b.register {
            Some(Some(_)) => flags |= REGISTER | REGISTER_NAMED,
            Some(None) => flags |= REGISTER,
            None => {}
        }
        buf.push(flags);
        if let AlarmChange::Set(at) = b.alarm {
            buf.extend_from_slice(&at.to_le_bytes());
        }
        if let Some(Some(name)) = &b.register {
            put_bytes(buf, name.as_bytes())?;
        }
        put_len(buf, b.writes.len())?;
        for (k, v) in &b.writes {
            put_bytes(buf, k.as_bytes())?;
            match v {
                Some(v) => {
                    buf.push(1);
                    put_bytes(buf, v)?;
                }
                None => buf.push(0),
            }
        }
    }
    Ok(())
}

/// Reads a record body back; a body that passed its checksum but does not parse is an
/// error (a bug or a foreign file), never silently skipped.
fn decode(mut b: &[u8]) -> io::Result<Vec<Change<'_>>> {
    fn bad() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "malformed commit log record")
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
        if b.len() < n {
            return Err(bad());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> io::Result<usize> {
        Ok(u32::from_le_bytes(take(b, 4)?.try_into().unwrap()) as usize)
    }
    fn bytes<'a>(b: &mut &'a [u8]) -> io::Result<&'a [u8]> {
        let n = len(b)?;
        take(b, n)
    }
    fn text<'a>(b: &mut &'a [u8]) -> io::Result<&'a str> {
        std::str::from_utf8(bytes(b)?).map_err(|_| bad())
    }
    let count = len(&mut b)?;
    let mut out = Vec::with_capacity(count.min(b.len()));
    for _ in 0..count {
        let class = text(&mut b)?;
        let id = ObjectId::from_bytes(take(&mut b, 32)?.try_into().unwrap());
        let flags = take(&mut b, 1)?[0];
        let alarm = if flags & ALARM_SET != 0 {
            AlarmChange::Set(i64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap()))
        } else if flags & ALARM_DELETE != 0 {
            AlarmChange::Clear
        } else {
            AlarmChange::Keep
        };
        let register = if flags & REGISTER_NAMED != 0 {
            Some(Some(Arc::<str>::from(text(&mut b)?)))
        } else if flags & REGISTER != 0 {
            Some(None)
        } else {
            None
        };
        let n = len(&mut b)?;
        let mut writes = Vec::with_capacity(n.min(b.len()));
        for _ in 0..n {
            let key = text(&mut b)?.to_owned();
            let value = match take(&mut b, 1)?[0] {
                0 => None,
                1 => Some(Value::from(bytes(&mut b)?)),
                _ => return Err(bad()),
            };
            writes.push((key, value));
        }
        out.push(Change {
            class,
            id,
            clear: flags & CLEAR != 0,
            writes,
            alarm,
            register,
        });
    }
    if !b.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::batch;
    use super::*;

    fn log(dir: &Path) -> CommitLog {
        CommitLog::open(&dir.join("shard-00.log")).unwrap()
    }

    fn seqs(log: &mut CommitLog, applied: u64) -> Vec<u64> {
        let r = log.records_after(applied, None).unwrap();
        r.found.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = log(dir.path());
        let mut named = batch(1, true, &[("k", Some("v")), ("gone", None), ("", Some(""))]);
        named.alarm = AlarmChange::Set(-42);
        named.register = Some(Some(Arc::from("a name")));
        let mut plain = batch(2, false, &[]);
        plain.alarm = AlarmChange::Clear;
        plain.register = Some(None);
        let untouched = batch(3, false, &[("x", Some("y"))]);
        assert_eq!(l.append(&[named, plain, untouched]).unwrap(), 1);
        let records = l.records_after(0, None).unwrap();
        assert_eq!(records.last_seq(), Some(1));
        assert_eq!(records.end(), l.end());
        let groups = records.decoded().unwrap();
        assert_eq!(groups.len(), 1);
        let seen: Vec<_> = groups[0]
            .iter()
            .map(|c| {
                let writes: Vec<_> = c
                    .writes
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str(),
                            v.as_deref().map(|v| std::str::from_utf8(v).unwrap()),
                        )
                    })
                    .collect();
                (
                    c.class,
                    c.id.as_bytes()[0],
                    c.clear,
                    writes,
                    c.alarm,
                    c.register.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "test",
                    1,
                    true,
                    vec![("k", Some("v")), ("gone", None), ("", Some(""))],
                    AlarmChange::Set(-42),
                    Some(Some(Arc::from("a name")))
                ),
                ("test", 2, false, vec![], AlarmChange::Clear, Some(None)),
                (
                    "test",
                    3,
                    false,
                    vec![("x", Some("y"))],
                    AlarmChange::Keep,
                    None
                ),
            ]
        );
    }

    #[test]
    fn reading_stops_at_a_torn_or_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00.log");
        let mut l = log(dir.path());
        for _ in 0..3 {
            l.append(&[batch(1, false, &[("k", Some("some value"))])])
                .unwrap();
        }
        let whole = l.end();
        assert_eq!(seqs(&mut l, 0), vec![1, 2, 3]);
        // A torn last record: the file ends inside it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole - 3).unwrap();
        assert_eq!(seqs(&mut l, 0), vec![1, 2]);
        // A flipped byte in the second record's body.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = (whole / 3) as usize;
        bytes[second + HEADER + 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(seqs(&mut l, 0), vec![1]);
    }

    #[test]
    fn reading_skips_applied_records_and_stops_at_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = log(dir.path());
        for _ in 0..4 {
            l.append(&[batch(1, false, &[("k", Some("a longer value"))])])
                .unwrap();
        }
        // Records the database already holds are skipped.
        assert_eq!(seqs(&mut l, 2), vec![3, 4]);
        assert_eq!(seqs(&mut l, 4), Vec::<u64>::new());
        // Once the database holds all four, the log starts over: the new record 5 is
        // followed by what is left of 2, 3 and 4, which must not be read as its successors.
        // (A record of the same size, so that the next header is exactly the old record 2.)
        l.restart();
        l.append(&[batch(1, false, &[("k", Some("a longer value"))])])
            .unwrap();
        assert_eq!(seqs(&mut l, 4), vec![5]);
        // A record that skips a number ends the log too.
        l.position(l.end(), 7);
        l.append(&[batch(1, false, &[])]).unwrap();
        assert_eq!(seqs(&mut l, 4), vec![5]);
    }

    #[test]
    fn an_undone_record_is_never_read_and_its_number_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = log(dir.path());
        l.append(&[batch(1, false, &[("k", Some("1"))])]).unwrap();
        let start = l.end();
        l.append(&[batch(1, false, &[("k", Some("2"))])]).unwrap();
        l.undo(start).unwrap();
        assert_eq!(l.end(), start);
        assert_eq!(seqs(&mut l, 0), vec![1]);
        assert_eq!(l.append(&[batch(1, false, &[])]).unwrap(), 2);
        assert_eq!(seqs(&mut l, 0), vec![1, 2]);
    }
}

//! The ids of a run's exported records, for a source's after-commit hook
//! (Fyle's export-status write-back). A backfill of a million records must
//! not hold a million strings: ids go to an unnamed temporary file as they
//! pass and are read back, in order, when the hook is staged.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};

/// Bytes of ids held in memory before they are written to the file.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Exported record ids, spooled to disk.
#[derive(Debug)]
pub struct ExportedIds {
    file: BufWriter<File>,
    count: u64,
}

impl ExportedIds {
    /// An empty list backed by an unnamed temporary file (gone when dropped, even after a crash).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            file: BufWriter::with_capacity(BUFFER_BYTES, tempfile::tempfile()?),
            count: 0,
        })
    }

    /// Appends one id (as a JSON string, so any character survives).
    pub fn push(&mut self, id: &str) -> io::Result<()> {
        serde_json::to_writer(&mut self.file, id)?;
        self.file.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Ids appended so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no id was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of ids held in memory now (bounded by [`BUFFER_BYTES`]).
    pub fn buffered_bytes(&self) -> usize {
        self.file.buffer().len()
    }

    /// Calls `each` with every id, in the order appended.
    pub fn for_each(&mut self, mut each: impl FnMut(&str) -> io::Result<()>) -> io::Result<()> {
        self.file.flush()?;
        let mut file = self.file.get_ref().try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let mut read = 0;
        while reader.read_line(&mut line)? > 0 {
            let id: String = serde_json::from_str(line.trim_end()).map_err(io::Error::other)?;
            each(&id)?;
            read += 1;
            line.clear();
        }
        // The shared file offset is left at the end, where the next push writes.
        if read != self.count {
            return Err(io::Error::other(format!(
                "the exported-ids spool holds {read} ids, {} were written",
                self.count
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_back_in_order_whatever_their_characters() {
        let mut ids = ExportedIds::new().unwrap();
        let odd = ["tx1", "a,b", "with\nnewline", "quote\"d", "ünï"];
        for id in odd {
            ids.push(id).unwrap();
        }
        let mut back = Vec::new();
        ids.for_each(|id| {
            back.push(id.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(back, odd);
        // Still appendable after reading.
        ids.push("tx2").unwrap();
        let mut n = 0;
        ids.for_each(|_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 6);
    }

    #[test]
    fn memory_stays_bounded_while_a_million_ids_go_to_disk() {
        let mut ids = ExportedIds::new().unwrap();
        for i in 0..1_000_000u32 {
            ids.push(&format!("txExpense{i:08}")).unwrap();
            assert!(ids.buffered_bytes() <= BUFFER_BYTES);
        }
        assert_eq!(ids.len(), 1_000_000);
        let mut last = String::new();
        let mut n = 0u32;
        ids.for_each(|id| {
            n += 1;
            last = id.to_string();
            Ok(())
        })
        .unwrap();
        assert_eq!((n, last.as_str()), (1_000_000, "txExpense00999999"));
    }
}

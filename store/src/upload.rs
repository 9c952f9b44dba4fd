//! Bodies for [`crate::ObjectStore::put_source`]: large objects that are read part by part
//! instead of being held in memory, and can be read again when an upload is retried.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// A body of known length that can be read at any offset, any number of times.
pub trait UploadSource: Send + Sync {
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// The whole body in memory (what backends without multipart upload do).
    fn to_bytes(&self) -> io::Result<Bytes> {
        let len = usize::try_from(self.len()).map_err(|_| io::Error::other("body too large for memory"))?;
        let mut buf = vec![0; len];
        self.read_exact_at(0, &mut buf)?;
        Ok(Bytes::from(buf))
    }
}

impl UploadSource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end =
            start.checked_add(buf.len()).filter(|end| *end <= Bytes::len(self)).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }

    fn to_bytes(&self) -> io::Result<Bytes> {
        Ok(self.clone())
    }
}

/// Reads a whole body into memory off the async threads, for stores that upload in one
/// request.
pub async fn read_all(key: &str, body: std::sync::Arc<dyn UploadSource>) -> Result<Bytes, crate::StoreError> {
    use crate::{StoreError, StoreErrorKind};
    tokio::task::spawn_blocking(move || body.to_bytes())
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Other, key, format!("reading the upload body failed: {e}")))?
        .map_err(|e| StoreError::new(StoreErrorKind::Other, key, "reading the upload body failed").with_source(e))
}

/// A file whose length was fixed when it was wrapped (a sealed segment on disk).
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }

    /// The file, for in-place patches (`FileExt::write_all_at`) between uploads. A patch
    /// must not change the length.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// BLAKE3 of the whole file.
    pub fn blake3(&self) -> io::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0; 1 << 20];
        let mut offset = 0;
        while offset < self.len {
            let n = usize::try_from((self.len - offset).min(buf.len() as u64)).unwrap_or(buf.len());
            FileExt::read_exact_at(&self.file, &mut buf[..n], offset)?;
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(hasher.finalize())
    }
}

impl UploadSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn files_and_bytes_read_the_same() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let sources: [Box<dyn UploadSource>; 2] =
            [Box::new(FileSource::new(file).unwrap()), Box::new(Bytes::from(data.clone()))];
        for source in sources {
            assert_eq!(source.len(), 10_000);
            let mut part = vec![0; 100];
            source.read_exact_at(9_900, &mut part).unwrap();
            assert_eq!(part, data[9_900..]);
            assert!(source.read_exact_at(9_901, &mut part).is_err(), "past the end");
            assert_eq!(source.to_bytes().unwrap(), data);
        }
    }
}

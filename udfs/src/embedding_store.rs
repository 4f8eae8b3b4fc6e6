//! Persisted embeddings for `ai_search`: one file per (model, table, column) under
//! `MURAKKAB_HOME/embeddings`, holding each distinct text's vector keyed by a hash of the text.
//!
//! A search embeds only texts the file does not hold yet, so the first search over a column pays
//! for the whole column, later ones for new or changed rows only. Files are written to a temporary
//! name and renamed, and end with a SHA-256 of their contents: a torn or corrupted file is
//! recomputed, never trusted.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MKEMB01\n";

/// Identity of one text: the first 16 bytes of its SHA-256.
pub(crate) type TextKey = [u8; 16];

/// The key of `text`.
pub(crate) fn text_key(text: &str) -> TextKey {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Where the vectors of `column` of `table` under `model` live.
pub(crate) fn store_path(
    home: &std::path::Path,
    model: &str,
    table: &str,
    column: &str,
) -> PathBuf {
    let digest = Sha256::digest(format!("{table}\u{0}{column}").as_bytes());
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    home.join("embeddings").join(model).join(format!("{name}.bin"))
}

/// Reads a store; a missing, short, foreign or corrupted file is an empty store.
pub(crate) fn load(path: &std::path::Path, dim: usize) -> HashMap<TextKey, Vec<f32>> {
    let Ok(bytes) = std::fs::read(path) else { return HashMap::new() };
    parse(&bytes, dim).unwrap_or_default()
}

fn parse(bytes: &[u8], dim: usize) -> Option<HashMap<TextKey, Vec<f32>>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, checksum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != checksum || !body.starts_with(MAGIC) {
        return None;
    }
    let header = &body[MAGIC.len()..];
    let stored_dim = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    let count = u64::from_le_bytes(header.get(4..12)?.try_into().ok()?) as usize;
    let entry = 16 + 4 * dim;
    let entries = header.get(12..)?;
    if stored_dim != dim || entries.len() != count.checked_mul(entry)? {
        return None;
    }
    let mut out = HashMap::with_capacity(count);
    for chunk in entries.chunks_exact(entry) {
        let key: TextKey = chunk[..16].try_into().ok()?;
        let vector =
            chunk[16..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        out.insert(key, vector.collect());
    }
    Some(out)
}

/// Writes `vectors` atomically (temporary file, fsync, rename).
pub(crate) fn save(
    path: &std::path::Path,
    dim: usize,
    vectors: &HashMap<TextKey, Vec<f32>>,
) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(MAGIC.len() + 12 + vectors.len() * (16 + 4 * dim) + 32);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&(dim as u32).to_le_bytes());
    body.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
    for (key, vector) in vectors {
        body.extend_from_slice(key);
        for x in vector {
            body.extend_from_slice(&x.to_le_bytes());
        }
    }
    let checksum = Sha256::digest(&body);
    body.extend_from_slice(&checksum);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "m", "t", "c");
        let mut v = HashMap::new();
        v.insert(text_key("a"), vec![1.0, 2.0]);
        v.insert(text_key("b"), vec![3.0, -4.5]);
        save(&path, 2, &v).unwrap();
        assert_eq!(load(&path, 2), v);
        assert!(load(&path, 3).is_empty(), "another width is another store");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load(&path, 2).is_empty(), "a corrupted file is not trusted");
    }
}

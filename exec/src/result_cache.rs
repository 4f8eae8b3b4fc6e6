//! The persistent result cache: a model's answer for an exact request is computed once.
//!
//! Content-addressed under `MURAKKAB_HOME/cache/results`: the key is a SHA-256 of the model's
//! identity (its file hashes, or size and modification time for a local file without one), the
//! operation and its parameters (labels, generation limits, extraction fields), and the full
//! prompt text (instruction, row and, for calibrated scoring, the reference row), so a changed
//! prompt template, model file or parameter is a different key by construction. Each entry is
//! one file written to a temporary name and renamed, holding its value and a SHA-256 of it:
//! concurrent writers race harmlessly (same content), and a torn or corrupted entry fails its
//! checksum and is recomputed, never returned. Only usable answers are stored; failures are
//! retried next time.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use murakkab_catalog::{ModelCard, MurakkabHome, Task, find_model};
use murakkab_udfs::{AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::in_flight::InFlight;

/// Bumped when the entry format or key recipe changes.
const FORMAT: &str = "murakkab-result/1";

/// Hits and misses since the cache was created.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Rows answered from the cache.
    pub hits: AtomicU64,
    /// Rows sent to the model.
    pub misses: AtomicU64,
}

/// An [`AiBackend`] that answers repeated requests from disk and sends only new ones on.
#[derive(Debug)]
pub struct CachedBackend {
    inner: Arc<dyn AiBackend>,
    dir: PathBuf,
    stats: CacheStats,
    /// Model identities already worked out (fixed for the process, like loaded weights).
    identities: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Keys a concurrent call is computing now.
    in_flight: InFlight,
}

impl CachedBackend {
    /// Caches `inner`'s answers under `home`'s cache directory.
    pub fn new(inner: Arc<dyn AiBackend>, home: &MurakkabHome) -> Self {
        Self {
            inner,
            dir: home.cache_dir().join("results"),
            stats: CacheStats::default(),
            identities: std::sync::Mutex::new(std::collections::HashMap::new()),
            in_flight: InFlight::default(),
        }
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// What identifies the weights of `model`, worked out once per model.
    fn model_identity(&self, model: &str) -> String {
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(identity) = identities.get(model) {
            return identity.clone();
        }
        let home = self.inner.home();
        let Ok(card) = find_model(home, model) else { return model.to_string() };
        let dir = home.model_dir(model);
        let identity = card
            .files
            .iter()
            .map(|f| match &f.sha256 {
                Some(sha) => format!("{}={sha}", f.name),
                None => {
                    let meta = std::fs::metadata(dir.join(&f.name)).ok();
                    let size = meta.as_ref().map_or(0, |m| m.len());
                    let mtime = meta
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    format!("{}:{size}:{mtime}", f.name)
                }
            })
            .collect::<Vec<_>>()
            .join(";");
        identities.insert(model.to_string(), identity.clone());
        identity
    }

    fn key(&self, identity: &str, operation: &str, parameters: &str, parts: &[&str]) -> String {
        let mut h = Sha256::new();
        for piece in [FORMAT, identity, operation, parameters].iter().chain(parts) {
            h.update((piece.len() as u64).to_le_bytes());
            h.update(piece.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(&key[2..])
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let (body, checksum) = bytes.split_at(bytes.len().checked_sub(32)?);
        if Sha256::digest(body).as_slice() != checksum {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) {
        // A failed write only costs a recomputation later.
        let _ = (|| -> std::io::Result<()> {
            let path = self.path(key);
            let Some(dir) = path.parent() else { return Ok(()) };
            std::fs::create_dir_all(dir)?;
            let mut body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
            let checksum = Sha256::digest(&body);
            body.extend_from_slice(&checksum);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::File::create(&tmp)?.write_all(&body)?;
            std::fs::rename(&tmp, &path)
        })();
    }

    /// Each row's cached answer, computing and counting nothing; all `None` where reuse is off.
    fn lookup<T: DeserializeOwned>(
        &self,
        model: &str,
        operation: &str,
        parameters: &str,
        batch: &ChatBatch,
    ) -> Vec<Option<T>> {
        if !murakkab_udfs::reuse_allowed() {
            return batch.rows.iter().map(|_| None).collect();
        }
        let identity = self.model_identity(model);
        let calibration = batch.calibration_row.as_deref().unwrap_or("");
        batch
            .rows
            .iter()
            .map(|row| {
                self.get(&self.key(
                    &identity,
                    operation,
                    parameters,
                    &[&batch.shared, row, calibration],
                ))
            })
            .collect()
    }

    /// [`Self::lookup`] for answers that are used: the rows found count as hits.
    fn known<T: DeserializeOwned>(
        &self,
        model: &str,
        operation: &str,
        parameters: &str,
        batch: &ChatBatch,
    ) -> Vec<Option<T>> {
        let known: Vec<Option<T>> = self.lookup(model, operation, parameters, batch);
        let hits = known.iter().filter(|k| k.is_some()).count();
        self.stats.hits.fetch_add(hits as u64, Ordering::Relaxed);
        crate::call_stats::record(|s| s.cache_hits += hits as u64);
        known
    }

    /// Answers the rows of `batch` from the cache and sends the rest to `compute` as one
    /// smaller batch (same instruction), storing what comes back.
    fn through<T: Serialize + DeserializeOwned + Clone>(
        &self,
        model: &str,
        operation: &str,
        parameters: &str,
        batch: &ChatBatch,
        compute: impl Fn(&ChatBatch) -> Result<BatchOutput<T>, String>,
    ) -> Result<BatchOutput<T>, String> {
        if !murakkab_udfs::reuse_allowed() {
            return compute(batch);
        }
        let identity = self.model_identity(model);
        let calibration = batch.calibration_row.as_deref().unwrap_or("");
        let keys: Vec<String> = batch
            .rows
            .iter()
            .map(|row| {
                self.key(&identity, operation, parameters, &[&batch.shared, row, calibration])
            })
            .collect();
        let mut rows: Vec<Option<Result<T, String>>> =
            keys.iter().map(|k| self.get::<T>(k).map(Ok)).collect();
        let mut hits = rows.iter().filter(|r| r.is_some()).count();
        let missing: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_none()).collect();
        // Compute what no concurrent caller is computing; then take the rest from the cache
        // once they are done (see `in_flight`), computing only what they failed to.
        let wanted: Vec<&str> = missing.iter().map(|&i| keys[i].as_str()).collect();
        let (claim, held) = self.in_flight.claim(&wanted);
        let held_by = |mine: bool| -> Vec<usize> {
            missing.iter().zip(&held).filter(|(_, h)| **h == mine).map(|(&i, _)| i).collect()
        };
        let (mine, theirs) = (held_by(true), held_by(false));
        let mut computed = mine.len();
        let mut truncated = self.compute_into(&mut rows, &mine, &keys, batch, &compute)?;
        drop(claim);
        if !theirs.is_empty() {
            let waited: Vec<&str> = theirs.iter().map(|&i| keys[i].as_str()).collect();
            self.in_flight.wait_for(&waited);
            let mut left = Vec::new();
            for &i in &theirs {
                match self.get::<T>(&keys[i]) {
                    Some(value) => {
                        rows[i] = Some(Ok(value));
                        hits += 1;
                    }
                    None => left.push(i),
                }
            }
            computed += left.len();
            truncated += self.compute_into(&mut rows, &left, &keys, batch, &compute)?;
        }
        self.stats.hits.fetch_add(hits as u64, Ordering::Relaxed);
        crate::call_stats::record(|s| s.cache_hits += hits as u64);
        self.stats.misses.fetch_add(computed as u64, Ordering::Relaxed);
        Ok(BatchOutput {
            rows: rows
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err("the model returned no result".into())))
                .collect(),
            truncated,
        })
    }
}

impl CachedBackend {
    /// Computes rows `which` of `batch` as one smaller batch (same instruction), storing each
    /// usable answer under its key and placing it in `rows`; returns the truncated count.
    fn compute_into<T: Serialize>(
        &self,
        rows: &mut [Option<Result<T, String>>],
        which: &[usize],
        keys: &[String],
        batch: &ChatBatch,
        compute: &impl Fn(&ChatBatch) -> Result<BatchOutput<T>, String>,
    ) -> Result<usize, String> {
        if which.is_empty() {
            return Ok(0);
        }
        let sub = ChatBatch {
            shared: batch.shared.clone(),
            rows: which.iter().map(|&i| batch.rows[i].clone()).collect(),
            calibration_row: batch.calibration_row.clone(),
            whole_labels: batch.whole_labels,
        };
        let out = compute(&sub)?;
        for (&i, value) in which.iter().zip(out.rows) {
            if let Ok(v) = &value {
                self.put(&keys[i], v);
            }
            rows[i] = Some(value);
        }
        Ok(out.truncated)
    }
}

/// The key parameters of a label-scoring request: its labels.
fn label_parameters(labels: &[String], batch: &ChatBatch) -> String {
    let labels = serde_json::to_string(labels).unwrap_or_default();
    // Whole labels score other tokens than their distinguishing starts: another answer.
    if batch.whole_labels { format!("{labels} whole") } else { labels }
}

/// `FieldValue` as stored in the cache.
#[derive(Serialize, serde::Deserialize, Clone)]
enum StoredValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

fn to_stored(values: &[Option<FieldValue>]) -> Vec<Option<StoredValue>> {
    values
        .iter()
        .map(|v| {
            v.as_ref().map(|v| match v {
                FieldValue::Text(s) => StoredValue::Text(s.clone()),
                FieldValue::Integer(i) => StoredValue::Integer(*i),
                FieldValue::Float(f) => StoredValue::Float(*f),
                FieldValue::Boolean(b) => StoredValue::Boolean(*b),
            })
        })
        .collect()
}

fn from_stored(values: Vec<Option<StoredValue>>) -> Vec<Option<FieldValue>> {
    values
        .into_iter()
        .map(|v| {
            v.map(|v| match v {
                StoredValue::Text(s) => FieldValue::Text(s),
                StoredValue::Integer(i) => FieldValue::Integer(i),
                StoredValue::Float(f) => FieldValue::Float(f),
                StoredValue::Boolean(b) => FieldValue::Boolean(b),
            })
        })
        .collect()
}

impl AiBackend for CachedBackend {
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        self.inner.resolve_model(requested, task)
    }

    fn largest_model(&self, task: Task) -> Result<ModelCard, String> {
        self.inner.largest_model(task)
    }

    fn candidate_models(&self, task: Task) -> Vec<ModelCard> {
        self.inner.candidate_models(task)
    }

    fn is_loaded(&self, model: &str) -> bool {
        self.inner.is_loaded(model)
    }

    fn has_matrix_units(&self) -> bool {
        self.inner.has_matrix_units()
    }

    fn embed(&self, model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        let batch = ChatBatch {
            shared: String::new(),
            rows: texts.iter().map(|t| t.to_string()).collect(),
            calibration_row: None,
            whole_labels: false,
        };
        self.through(model, "embed", "", &batch, |b| {
            let texts: Vec<&str> = b.rows.iter().map(String::as_str).collect();
            self.inner.embed(model, &texts)
        })
    }

    fn score_labels(
        &self,
        model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        self.through(model, "score_labels", &label_parameters(labels, batch), batch, |b| {
            self.inner.score_labels(model, b, labels)
        })
    }

    fn known_label_scores(
        &self,
        model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Vec<Option<Vec<f32>>> {
        self.known(model, "score_labels", &label_parameters(labels, batch), batch)
    }

    fn known_label_rows(&self, model: &str, batch: &ChatBatch, labels: &[String]) -> usize {
        let found: Vec<Option<Vec<f32>>> =
            self.lookup(model, "score_labels", &label_parameters(labels, batch), batch);
        found.iter().flatten().count()
    }

    fn complete(
        &self,
        model: &str,
        batch: &ChatBatch,
        options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        let parameters = format!("{}/{}/{}", options.max_tokens, options.temperature, options.seed);
        self.through(model, "complete", &parameters, batch, |b| {
            self.inner.complete(model, b, options)
        })
    }

    fn extract(
        &self,
        model: &str,
        batch: &ChatBatch,
        fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        let parameters = format!("{fields:?}");
        let out = self.through(model, "extract", &parameters, batch, |b| {
            let out = self.inner.extract(model, b, fields)?;
            Ok(BatchOutput {
                rows: out.rows.into_iter().map(|r| r.map(|v| to_stored(&v))).collect(),
                truncated: out.truncated,
            })
        })?;
        Ok(BatchOutput {
            rows: out.rows.into_iter().map(|r| r.map(from_stored)).collect(),
            truncated: out.truncated,
        })
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<usize, String> {
        self.inner.count_tokens(model, text)
    }

    fn context_length(&self, model: &str) -> Result<usize, String> {
        self.inner.context_length(model)
    }

    fn home(&self) -> &MurakkabHome {
        self.inner.home()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeds each text as `[len]` and counts the texts it was asked for.
    #[derive(Debug)]
    struct Counting {
        home: MurakkabHome,
        asked: AtomicU64,
    }

    impl AiBackend for Counting {
        fn resolve_model(&self, _: Option<&str>, _: Task) -> Result<ModelCard, String> {
            Err("unused".into())
        }
        fn embed(&self, _: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
            self.asked.fetch_add(texts.len() as u64, Ordering::SeqCst);
            // Slow enough that concurrent callers overlap.
            std::thread::sleep(std::time::Duration::from_millis(30));
            Ok(BatchOutput {
                rows: texts.iter().map(|t| Ok(vec![t.len() as f32])).collect(),
                truncated: 0,
            })
        }
        fn score_labels(
            &self,
            _: &str,
            batch: &ChatBatch,
            _: &[String],
        ) -> Result<BatchOutput<Vec<f32>>, String> {
            self.asked.fetch_add(batch.rows.len() as u64, Ordering::SeqCst);
            // Whole labels score other tokens: 100 more, so a test sees which was asked.
            let whole = if batch.whole_labels { 100.0 } else { 0.0 };
            Ok(BatchOutput {
                rows: batch.rows.iter().map(|r| Ok(vec![r.len() as f32 + whole])).collect(),
                truncated: 0,
            })
        }
        fn complete(
            &self,
            _: &str,
            _: &ChatBatch,
            _: &CompletionOptions,
        ) -> Result<BatchOutput<String>, String> {
            Err("unused".into())
        }
        fn extract(
            &self,
            _: &str,
            _: &ChatBatch,
            _: &[(String, FieldType)],
        ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
            Err("unused".into())
        }
        fn count_tokens(&self, _: &str, _: &str) -> Result<usize, String> {
            Ok(0)
        }
        fn context_length(&self, _: &str) -> Result<usize, String> {
            Ok(0)
        }
        fn home(&self) -> &MurakkabHome {
            &self.home
        }
    }

    /// A cache in a fresh home over a backend that counts the rows it is asked (the directory
    /// lives as long as the returned guard).
    fn counting_cache() -> (tempfile::TempDir, Arc<Counting>, CachedBackend) {
        let dir = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(dir.path());
        let inner = Arc::new(Counting { home: home.clone(), asked: AtomicU64::new(0) });
        let cache = CachedBackend::new(Arc::clone(&inner) as Arc<dyn AiBackend>, &home);
        (dir, inner, cache)
    }

    #[test]
    fn repeats_come_from_disk_and_a_corrupt_entry_is_recomputed() {
        let (_dir, inner, cache) = counting_cache();
        let first = cache.embed("m", &["a", "bb"]).unwrap();
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2);
        let again = cache.embed("m", &["bb", "a"]).unwrap();
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2, "both answered from the cache");
        assert_eq!(again.rows[0], first.rows[1]);
        assert_eq!(cache.embed("other-model", &["a"]).unwrap().rows.len(), 1);
        assert_eq!(inner.asked.load(Ordering::SeqCst), 3, "another model is another key");

        // Flip a byte in every stored entry: each fails its checksum and is recomputed.
        for shard in std::fs::read_dir(inner.home.cache_dir().join("results")).unwrap() {
            for entry in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let path = entry.unwrap().path();
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[0] ^= 0x20;
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let healed = cache.embed("m", &["a"]).unwrap();
        assert_eq!(healed.rows[0], Ok(vec![1.0]));
        assert_eq!(inner.asked.load(Ordering::SeqCst), 4);
        assert_eq!(cache.stats().hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn known_answers_count_as_hits_only_when_used() {
        let (_dir, inner, cache) = counting_cache();
        let labels = vec!["a".to_string(), "b".to_string()];
        let batch = ChatBatch {
            shared: "which? ".into(),
            rows: vec!["x".into(), "yy".into()],
            calibration_row: None,
            whole_labels: false,
        };
        let unseen = ChatBatch { rows: vec!["zzz".into()], ..batch.clone() };
        cache.score_labels("m", &batch, &labels).unwrap();
        assert_eq!(cache.known_label_rows("m", &batch, &labels), 2);
        assert_eq!(cache.known_label_rows("m", &unseen, &labels), 0);
        assert_eq!(cache.stats().hits.load(Ordering::SeqCst), 0, "looking is not using");
        let known = cache.known_label_scores("m", &batch, &labels);
        assert_eq!(known, vec![Some(vec![1.0]), Some(vec![2.0])]);
        assert_eq!(cache.stats().hits.load(Ordering::SeqCst), 2);
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2, "nothing computed twice");
    }

    #[test]
    fn whole_labels_reach_the_model_and_are_another_key() {
        let (_dir, inner, cache) = counting_cache();
        let labels = vec!["It is so".to_string(), "It is not so".to_string()];
        let cut = ChatBatch {
            shared: "describe ".into(),
            rows: vec!["x".into()],
            calibration_row: None,
            whole_labels: false,
        };
        let whole = ChatBatch { whole_labels: true, ..cut.clone() };
        assert_eq!(cache.score_labels("m", &cut, &labels).unwrap().rows[0], Ok(vec![1.0]));
        // Not the cut labels' cached answer, and the row sent on keeps the flag.
        assert_eq!(cache.score_labels("m", &whole, &labels).unwrap().rows[0], Ok(vec![101.0]));
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_identical_requests_are_computed_once() {
        let (_dir, inner, cache) = counting_cache();
        let cache = Arc::new(cache);
        let texts: Vec<String> = (0..50).map(|i| format!("text {i}")).collect();
        let answers: Vec<_> = (0..4)
            .map(|_| {
                let (cache, texts) = (Arc::clone(&cache), texts.clone());
                std::thread::spawn(move || {
                    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                    cache.embed("m", &texts).unwrap()
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(inner.asked.load(Ordering::SeqCst), 50, "each text embedded once");
        assert!(answers.iter().all(|a| a == &answers[0] && a.rows.iter().all(Result::is_ok)));
        assert_eq!(cache.stats().hits.load(Ordering::SeqCst), 150);
    }
}

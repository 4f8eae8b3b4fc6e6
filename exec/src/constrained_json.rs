//! `ai_extract`'s generation: a JSON object whose values always have their declared types.
//!
//! We write the JSON skeleton (`{"field": ` ... `, "next": `) ourselves and let the model
//! produce only the values, under a token mask: at each step it may choose only tokens that keep
//! the value valid for its type (digits for an integer, `true`/`false` for a boolean, a quoted
//! string for text) or `null`. So the output always parses, and `null` is how the model says a
//! field cannot be filled.
//!
//! Rows advance in lockstep (`extract_batch`): each row is a small state machine that, step by
//! step, either feeds a token of the skeleton or chooses one from the logits; every unfinished
//! row feeds exactly one token per step, so a chunk of rows shares one batch KV cache and one
//! decode pass per step, as free generation does.

use std::collections::VecDeque;

use candle_core::Tensor;
use murakkab_udfs::{FieldType, FieldValue};

use crate::error::ModelError;
use crate::kv_cache::SeqCache;
use crate::language_model::LanguageModel;

/// Most tokens generated for one text value.
const MAX_TEXT_TOKENS: usize = 48;
/// Most tokens generated for one number.
const MAX_NUMBER_TOKENS: usize = 12;

/// Token ids grouped by what they can stand for inside a JSON value.
#[derive(Debug, Default)]
pub(crate) struct TokenClasses {
    /// All ASCII digits (`7`, `42`).
    digits: Vec<u32>,
    /// Digits with one decimal point (`.5`, `3.`), for decimals.
    decimal: Vec<u32>,
    /// A minus sign.
    minus: Vec<u32>,
    /// Tokens that begin with `"`: the start of a string.
    quote_start: Vec<u32>,
    /// Tokens that end a number: `,`, `}`, whitespace.
    number_end: Vec<u32>,
    /// First tokens of `null`, `true` and `false`.
    null: Option<u32>,
    yes: Option<u32>,
    no: Option<u32>,
}

impl TokenClasses {
    /// Classifies every token of `lm`'s vocabulary by its text.
    pub(crate) fn of(lm: &LanguageModel) -> Result<Self, ModelError> {
        let mut classes = Self::default();
        for (id, text) in lm.vocabulary_texts().iter().enumerate() {
            let id = id as u32;
            if text.is_empty() {
                continue;
            }
            let digits = text.bytes().all(|b| b.is_ascii_digit());
            let dots = text.bytes().filter(|&b| b == b'.').count();
            if digits {
                classes.digits.push(id);
            } else if dots == 1 && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                classes.decimal.push(id);
            }
            if text == "-" {
                classes.minus.push(id);
            }
            if text.starts_with('"') {
                classes.quote_start.push(id);
            }
            if text.starts_with([',', '}', '\n', ' ']) {
                classes.number_end.push(id);
            }
        }
        let first = |word: &str| -> Result<Option<u32>, ModelError> {
            Ok(lm.encode(word)?.first().copied())
        };
        classes.null = first("null")?;
        classes.yes = first("true")?;
        classes.no = first("false")?;
        Ok(classes)
    }
}

/// Tokens to reserve after the prompt for the JSON of `fields`.
pub(crate) fn tokens_needed(fields: &[(String, FieldType)]) -> usize {
    fields
        .iter()
        .map(|(name, t)| {
            name.len() / 2
                + 6
                + match t {
                    FieldType::Text => MAX_TEXT_TOKENS + 1,
                    FieldType::Integer | FieldType::Float => MAX_NUMBER_TOKENS,
                    FieldType::Boolean => 1,
                }
        })
        .sum()
}

/// The best token among `allowed` and its logit.
fn best(logits: &[f32], allowed: &[u32]) -> Option<(u32, f32)> {
    allowed.iter().filter_map(|&id| logits.get(id as usize).map(|&l| (id, l))).fold(
        None,
        |b, (id, l)| match b {
            Some((_, bl)) if bl >= l => b,
            _ => Some((id, l)),
        },
    )
}

/// Whether `null` beats the best value token.
fn is_null(logits: &[f32], classes: &TokenClasses, best_value: Option<(u32, f32)>) -> bool {
    match (classes.null.and_then(|n| logits.get(n as usize)), best_value) {
        (Some(&null), Some((_, value))) => null > value,
        (_, None) => true,
        (None, _) => false,
    }
}

/// Where one row's JSON is: what it feeds next and what it is choosing.
#[derive(Debug)]
enum Phase {
    /// Choosing a value's first token, or `null`.
    ValueStart,
    /// Inside a string: each step picks the next token until one closes it.
    Text { ids: Vec<u32> },
    /// Inside a number: each step picks another digit or ends it (`tokens` chosen so far).
    Number { out: String, tokens: usize },
    /// Every field has its value.
    Done,
}

/// One row's extraction as a state machine driven one token at a time, so a batch of rows can
/// advance in lockstep through one batch KV cache (see [`extract_batch`]).
struct RowJob<'a> {
    lm: &'a LanguageModel,
    classes: &'a TokenClasses,
    fields: &'a [(String, FieldType)],
    /// The field being filled.
    field: usize,
    /// Tokens to feed before the next choice (the skeleton we write ourselves).
    forced: VecDeque<u32>,
    phase: Phase,
    values: Vec<Option<FieldValue>>,
    /// Tokens the model chose (the skeleton we force not counted).
    chosen: usize,
}

impl<'a> RowJob<'a> {
    fn new(
        lm: &'a LanguageModel,
        classes: &'a TokenClasses,
        fields: &'a [(String, FieldType)],
    ) -> Self {
        Self {
            lm,
            classes,
            fields,
            field: 0,
            forced: VecDeque::new(),
            phase: Phase::ValueStart,
            values: Vec::with_capacity(fields.len()),
            chosen: 0,
        }
    }

    /// The text that opens field `i`'s value: `{"name": ` or `, "name": `.
    fn opening(fields: &[(String, FieldType)], i: usize) -> String {
        let name = &fields[i].0;
        let key = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
        format!("{}{key}: ", if i == 0 { "{" } else { ", " })
    }

    fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Whether the next step needs the logits after the last token fed.
    fn needs_logits(&self) -> bool {
        self.forced.is_empty() && !self.done()
    }

    fn force(&mut self, text: &str) -> Result<(), ModelError> {
        if text.is_empty() {
            return Ok(());
        }
        self.forced.extend(self.lm.encode(text)?);
        Ok(())
    }

    /// Records the current field's value and opens the next field (or finishes). `closing` is
    /// text that must follow the value before the next key (`null`, `true`, a closing quote).
    fn finish_field(&mut self, value: Option<FieldValue>, closing: &str) -> Result<(), ModelError> {
        self.values.push(value);
        self.field += 1;
        if self.field == self.fields.len() {
            // Nothing after the last value changes any value: stop without feeding it.
            self.forced.clear();
            self.phase = Phase::Done;
            return Ok(());
        }
        // Encoded apart, as each piece is fed apart in a one-row pass.
        self.force(closing)?;
        self.force(&Self::opening(self.fields, self.field))?;
        self.phase = Phase::ValueStart;
        Ok(())
    }

    /// The next token to feed, given the logits after the last one when [`Self::needs_logits`];
    /// `None` once the row is done.
    fn next(&mut self, logits: Option<&[f32]>) -> Result<Option<u32>, ModelError> {
        if let Some(token) = self.forced.pop_front() {
            return Ok(Some(token));
        }
        let Some(logits) = logits else {
            return Ok(None);
        };
        let classes = self.classes;
        match &mut self.phase {
            Phase::Done => Ok(None),
            Phase::ValueStart => match self.fields[self.field].1 {
                FieldType::Boolean => {
                    let options: Vec<u32> =
                        [classes.yes, classes.no].into_iter().flatten().collect();
                    let choice = best(logits, &options);
                    if is_null(logits, classes, choice) {
                        self.finish_field(None, "null")?;
                    } else {
                        let value = choice.is_some_and(|(id, _)| Some(id) == classes.yes);
                        let word = if value { "true" } else { "false" };
                        self.finish_field(Some(FieldValue::Boolean(value)), word)?;
                    }
                    // The forced text is fed before anything else is chosen.
                    self.next(None)
                }
                field_type @ (FieldType::Integer | FieldType::Float) => {
                    let mut start: Vec<u32> =
                        classes.digits.iter().chain(&classes.minus).copied().collect();
                    if field_type == FieldType::Float {
                        start.extend(&classes.decimal);
                    }
                    let first = best(logits, &start);
                    match first {
                        Some((id, _)) if !is_null(logits, classes, first) => {
                            let out = self.lm.vocabulary_texts()[id as usize].clone();
                            self.phase = Phase::Number { out, tokens: 1 };
                            self.chosen += 1;
                            Ok(Some(id))
                        }
                        _ => {
                            self.finish_field(None, "null")?;
                            self.next(None)
                        }
                    }
                }
                FieldType::Text => {
                    let first = best(logits, &classes.quote_start);
                    if is_null(logits, classes, first) {
                        self.finish_field(None, "null")?;
                    } else {
                        // A string it is: open it ourselves, so the model's first choice
                        // is the value's content (otherwise a token such as `",` would
                        // close an empty string at once).
                        self.force("\"")?;
                        self.phase = Phase::Text { ids: Vec::new() };
                    }
                    self.next(None)
                }
            },
            Phase::Number { out, tokens } => {
                let decimal = self.fields[self.field].1 == FieldType::Float;
                let mut more: Vec<u32> = classes.digits.clone();
                if decimal && !out.contains('.') {
                    more.extend(&classes.decimal);
                }
                let go_on = best(logits, &more);
                let stop = best(logits, &classes.number_end);
                let next = match (go_on, stop) {
                    (Some(g), Some(s)) if g.1 > s.1 => Some(g.0),
                    (Some(g), None) => Some(g.0),
                    _ => None,
                };
                if let Some(id) = next.filter(|_| *tokens < MAX_NUMBER_TOKENS) {
                    out.push_str(&self.lm.vocabulary_texts()[id as usize]);
                    *tokens += 1;
                    self.chosen += 1;
                    return Ok(Some(id));
                }
                let value = if decimal {
                    out.parse::<f64>().ok().filter(|v| v.is_finite()).map(FieldValue::Float)
                } else {
                    out.parse::<i64>().ok().map(FieldValue::Integer)
                };
                self.finish_field(value, "")?;
                self.next(None)
            }
            Phase::Text { ids } => {
                let texts = self.lm.vocabulary_texts();
                let id = logits
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| texts.get(*i).is_some_and(|t| !t.is_empty()))
                    .fold(
                        (0usize, f32::NEG_INFINITY),
                        |b, (i, &l)| if l > b.1 { (i, l) } else { b },
                    )
                    .0 as u32;
                let piece = &texts[id as usize];
                let closed = piece.contains('"') || piece.contains('\n');
                ids.push(id);
                self.chosen += 1;
                if !closed && ids.len() < MAX_TEXT_TOKENS {
                    return Ok(Some(id));
                }
                let raw = self.lm.decode(ids)?;
                let value = raw.split(['"', '\n']).next().unwrap_or("").trim().to_string();
                let value = (!value.is_empty()).then_some(FieldValue::Text(value));
                // The chosen token is fed first, then a closing quote when it did not close.
                self.finish_field(value, if closed { "" } else { "\"" })?;
                if !self.done() {
                    self.forced.push_front(id);
                }
                self.next(None)
            }
        }
    }
}

/// One row's values, one per field (`None`: NULL), and the tokens the model chose for them.
pub type Extraction = (Vec<Option<FieldValue>>, usize);

/// Generates the values of `fields` for each row prompt (after the shared `prefix`), the rows
/// advancing together: one prompt pass for all of them, then one decode step per token with
/// every unfinished row in it. A row that forces its own skeleton text (`, "next": `) feeds it a
/// token per step like a generated one. Returns each row's values and the tokens the model
/// chose for them.
pub(crate) fn extract_batch(
    lm: &LanguageModel,
    prefix: &SeqCache,
    rows: &[&[u32]],
    fields: &[(String, FieldType)],
) -> Result<Vec<Extraction>, ModelError> {
    if rows.is_empty() || fields.is_empty() {
        return Ok(vec![(vec![None; fields.len()], 0); rows.len()]);
    }
    let classes = lm.json_token_classes()?;
    // Every row opens with the first key: it goes in with the prompt.
    let opening = lm.encode(&RowJob::opening(fields, 0))?;
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| [*r, opening.as_slice()].concat()).collect();
    let prompt_refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let decoder = lm.decoder();
    let (mut last, caches) = lm.prefill(prefix, &prompt_refs, true)?;
    let mut batch =
        decoder.batch_cache(&caches.iter().collect::<Vec<_>>(), tokens_needed(fields))?;
    drop(caches);
    let mut jobs: Vec<RowJob> = rows.iter().map(|_| RowJob::new(lm, classes, fields)).collect();
    let mut active: Vec<usize> = (0..rows.len()).collect();
    loop {
        if crate::scheduler::cancelled() {
            return Err(ModelError::Cancelled);
        }
        // Logits only for the rows about to choose (the vocabulary projection is the largest
        // matrix of a small model).
        let choosing: Vec<u32> = (0..active.len())
            .filter(|&slot| jobs[active[slot]].needs_logits())
            .map(|slot| slot as u32)
            .collect();
        let logits = if choosing.is_empty() {
            Vec::new()
        } else {
            let index = Tensor::new(choosing.as_slice(), last.device())?;
            decoder.logits(&last.index_select(&index, 0)?)?.to_vec2::<f32>()?
        };
        let (mut next_active, mut tokens, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, &row) in active.iter().enumerate() {
            let row_logits =
                choosing.iter().position(|&c| c as usize == slot).map(|k| logits[k].as_slice());
            let token = jobs[row].next(row_logits)?;
            if let Some(token) = token.filter(|_| !jobs[row].done()) {
                next_active.push(row);
                tokens.push(token);
                kept.push(slot);
            }
        }
        if next_active.is_empty() {
            break;
        }
        batch.retain(&kept)?;
        last = decoder.decode_batch_step(&tokens, &mut batch)?;
        active = next_active;
    }
    // A row that stopped early (it cannot, but a value must never go missing) is NULL-padded.
    Ok(jobs
        .into_iter()
        .map(|mut job| {
            job.values.resize(fields.len(), None);
            (job.values, job.chosen)
        })
        .collect())
}

//! `ai_extract`'s generation: a JSON object whose values always have their declared types.
//!
//! We write the JSON skeleton (`{"field": ` ... `, "next": `) ourselves and let the model
//! produce only the values, under a token mask: at each step it may choose only tokens that keep
//! the value valid for its type (digits for an integer, `true`/`false` for a boolean, a quoted
//! string for text) or `null`. So the output always parses, and `null` is how the model says a
//! field cannot be filled.

use candle_core::Tensor;
use murakkab_udfs::{FieldType, FieldValue};

use crate::error::ModelError;
use crate::gguf_decoder::SeqCache;
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

/// One sequence being extended token by token.
struct Cursor<'a> {
    lm: &'a LanguageModel,
    cache: SeqCache,
    last: Tensor,
}

impl Cursor<'_> {
    fn logits(&self) -> Result<Vec<f32>, ModelError> {
        Ok(self.lm.decoder().logits(&self.last)?.to_vec2::<f32>()?.remove(0))
    }

    /// Feeds `ids` (forced text) to the model.
    fn feed(&mut self, ids: &[u32]) -> Result<(), ModelError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (last, caches) = if ids.len() == 1 {
            self.lm.decoder().decode_step(&[ids], &[&self.cache])?
        } else {
            let (last, _, caches) = self.lm.decoder().forward(&[ids], &[&self.cache], false)?;
            (last, caches)
        };
        self.last = last;
        self.cache = caches.into_iter().next().ok_or_else(|| ModelError::Unsupported {
            id: self.lm.id().to_string(),
            reason: "no cache returned".into(),
        })?;
        Ok(())
    }

    fn feed_text(&mut self, text: &str) -> Result<(), ModelError> {
        let ids = self.lm.encode(text)?;
        self.feed(&ids)
    }
}

/// Generates the values of `fields` for one row prompt (after the shared `prefix`).
pub(crate) fn extract(
    lm: &LanguageModel,
    prefix: &SeqCache,
    row: &[u32],
    fields: &[(String, FieldType)],
) -> Result<Vec<Option<FieldValue>>, ModelError> {
    let classes = lm.json_token_classes()?;
    let (last, _, caches) = lm.decoder().forward(&[row], &[prefix], false)?;
    let cache = caches.into_iter().next().ok_or_else(|| ModelError::Unsupported {
        id: lm.id().to_string(),
        reason: "no cache returned".into(),
    })?;
    let mut cursor = Cursor { lm, cache, last };
    let mut values = Vec::with_capacity(fields.len());
    for (i, (name, field_type)) in fields.iter().enumerate() {
        let key = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
        cursor.feed_text(&format!("{}{key}: ", if i == 0 { "{" } else { ", " }))?;
        let value = match field_type {
            FieldType::Boolean => boolean(&mut cursor, classes)?,
            FieldType::Integer | FieldType::Float => number(&mut cursor, classes, *field_type)?,
            FieldType::Text => text(&mut cursor, classes)?,
        };
        values.push(value);
    }
    Ok(values)
}

fn is_null(logits: &[f32], classes: &TokenClasses, best_value: Option<(u32, f32)>) -> bool {
    match (classes.null.and_then(|n| logits.get(n as usize)), best_value) {
        (Some(&null), Some((_, value))) => null > value,
        (_, None) => true,
        (None, _) => false,
    }
}

fn boolean(c: &mut Cursor, classes: &TokenClasses) -> Result<Option<FieldValue>, ModelError> {
    let logits = c.logits()?;
    let options: Vec<u32> = [classes.yes, classes.no].into_iter().flatten().collect();
    let choice = best(&logits, &options);
    if is_null(&logits, classes, choice) {
        c.feed_text("null")?;
        return Ok(None);
    }
    let value = choice.map(|(id, _)| Some(id) == classes.yes).unwrap_or(false);
    c.feed_text(if value { "true" } else { "false" })?;
    Ok(Some(FieldValue::Boolean(value)))
}

fn number(
    c: &mut Cursor,
    classes: &TokenClasses,
    field_type: FieldType,
) -> Result<Option<FieldValue>, ModelError> {
    let decimal = field_type == FieldType::Float;
    let texts = c.lm.vocabulary_texts();
    let mut start: Vec<u32> = classes.digits.iter().chain(&classes.minus).copied().collect();
    if decimal {
        start.extend(&classes.decimal);
    }
    let logits = c.logits()?;
    let first = best(&logits, &start);
    if is_null(&logits, classes, first) {
        c.feed_text("null")?;
        return Ok(None);
    }
    let mut out = String::new();
    let mut next = first;
    for _ in 0..MAX_NUMBER_TOKENS {
        let Some((id, _)) = next else { break };
        out.push_str(&texts[id as usize]);
        c.feed(&[id])?;
        let logits = c.logits()?;
        let has_dot = out.contains('.');
        let mut more: Vec<u32> = classes.digits.clone();
        if decimal && !has_dot {
            more.extend(&classes.decimal);
        }
        let go_on = best(&logits, &more);
        let stop = best(&logits, &classes.number_end);
        next = match (go_on, stop) {
            (Some(g), Some(s)) if g.1 > s.1 => Some(g),
            (Some(g), None) => Some(g),
            _ => None,
        };
    }
    let value = if decimal {
        out.parse::<f64>().ok().filter(|v| v.is_finite()).map(FieldValue::Float)
    } else {
        out.parse::<i64>().ok().map(FieldValue::Integer)
    };
    Ok(value)
}

fn text(c: &mut Cursor, classes: &TokenClasses) -> Result<Option<FieldValue>, ModelError> {
    let texts = c.lm.vocabulary_texts();
    let logits = c.logits()?;
    let first = best(&logits, &classes.quote_start);
    if is_null(&logits, classes, first) {
        c.feed_text("null")?;
        return Ok(None);
    }
    // A string it is: open it ourselves, so the model's first choice is the value's content
    // (otherwise a token such as `",` would close an empty string at once).
    c.feed_text("\"")?;
    let mut ids = Vec::new();
    let mut closed = false;
    while !closed && ids.len() < MAX_TEXT_TOKENS {
        let logits = c.logits()?;
        let id = logits
            .iter()
            .enumerate()
            .filter(|(i, _)| texts.get(*i).is_some_and(|t| !t.is_empty()))
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b })
            .0 as u32;
        let piece = &texts[id as usize];
        closed = piece.contains('"') || piece.contains('\n');
        ids.push(id);
        c.feed(&[id])?;
    }
    let raw = c.lm.decode(&ids)?;
    let value = raw.split(['"', '\n']).next().unwrap_or("").trim().to_string();
    if !closed {
        c.feed_text("\"")?;
    }
    Ok((!value.is_empty()).then_some(FieldValue::Text(value)))
}

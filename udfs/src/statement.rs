//! An `ai_filter` condition as the two statements its model weighs: the condition and its
//! negation ("The review is negative" / "The review is not negative").
//!
//! Why statements and not a yes/no answer: the small models answer "yes" by the text's tone,
//! not by the condition. On 160 UCI sentences qwen2.5-coder-0.5b's "yes" to "The review is
//! negative" ranked the negative sentences *below* the positive ones (AUC 0.07, accuracy 0.51)
//! and SmolLM2 did the same (0.28); asked to generate, qwen2.5 wrote "No. The review is clearly
//! negative." about a negative review. The statement it goes on to write is right, so that is
//! what is scored: how much more likely the text makes each statement than an empty text does
//! (see `prompts::filter`). Against the statement's negation, what the text makes likely in
//! general (its tone, its topic) cancels out.
//!
//! The negation is made by rule, in this order: a `not` after the first auxiliary or copula
//! (`is`, `are`, `can`, `has`, ...; an existing `not` after it is removed instead); `does not`
//! before the first verb in the third person ("mentions rain" → "does not mention rain");
//! otherwise "It is not true that ...". A condition that starts with an auxiliary ("is about
//! sport") gets "The text" as its subject.

/// Auxiliaries and copulas after which `not` negates an English statement.
const AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "am", "can", "could", "will", "would", "should", "shall", "must",
    "may", "might", "does", "do", "did", "has", "have", "had",
];

/// Words that make the next word a noun rather than a verb ("the news", "its results").
const DETERMINERS: &[&str] = &[
    "the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her", "my", "our",
    "your", "some", "any", "no", "every", "each",
];

/// The statement that the condition holds and the one that it does not, in that order.
pub fn statements(condition: &str) -> [String; 2] {
    let words: Vec<&str> = condition.split_whitespace().collect();
    let starts_with_auxiliary = words.first().is_some_and(|w| AUXILIARIES.contains(&&*bare(w)));
    let words: Vec<String> = if starts_with_auxiliary {
        ["The", "text"].into_iter().chain(words).map(String::from).collect()
    } else {
        words.into_iter().map(String::from).collect()
    };
    let statement = capitalized(&words.join(" "));
    [statement.clone(), capitalized(&negated(&words).unwrap_or_else(|| not_true(&statement)))]
}

/// `words` negated by an auxiliary's `not` or by `does not`, if either applies.
fn negated(words: &[String]) -> Option<String> {
    if let Some(at) = words.iter().position(|w| AUXILIARIES.contains(&&*bare(w))) {
        let mut out = words.to_vec();
        if words.get(at + 1).is_some_and(|w| bare(w) == "not") {
            out.remove(at + 1);
        } else {
            out.insert(at + 1, "not".into());
        }
        return Some(out.join(" "));
    }
    let verb = (0..words.len()).find(|&i| {
        let word = trimmed(&words[i]);
        let w = word.to_lowercase();
        let after_determiner = i > 0 && DETERMINERS.contains(&&*bare(&words[i - 1]));
        let subject_before = i > 0 || words.len() > 1;
        w.len() > 3
            && w.ends_with('s')
            && !w.ends_with("ss")
            && !w.ends_with("us")
            && !w.ends_with("is")
            && !after_determiner
            && subject_before
            && word.chars().all(|c| c.is_ascii_lowercase())
    })?;
    let mut out = words.to_vec();
    out[verb] = format!("does not {}", base_form(&out[verb]));
    Some(out.join(" "))
}

/// `w` without the punctuation around it.
fn trimmed(w: &str) -> &str {
    w.trim_matches(|c: char| !c.is_alphanumeric())
}

/// `w` without its punctuation, in lower case: how it is looked up in the word lists.
fn bare(w: &str) -> String {
    trimmed(w).to_lowercase()
}

/// A third-person verb's base form: "carries" → "carry", "watches" → "watch", "asks" → "ask".
fn base_form(verb: &str) -> String {
    if let Some(stem) = verb.strip_suffix("ies") {
        return format!("{stem}y");
    }
    for ending in ["sses", "shes", "ches", "xes", "zes", "oes"] {
        if verb.ends_with(ending) {
            return verb[..verb.len() - 2].to_string();
        }
    }
    verb.strip_suffix('s').unwrap_or(verb).to_string()
}

/// The fallback negation of a statement no rule applies to.
fn not_true(statement: &str) -> String {
    let mut chars = statement.chars();
    let first = chars.next().map(|c| c.to_lowercase().collect::<String>()).unwrap_or_default();
    format!("It is not true that {first}{}", chars.as_str())
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negation(condition: &str) -> String {
        statements(condition)[1].clone()
    }

    #[test]
    fn not_goes_after_the_first_auxiliary() {
        assert_eq!(
            statements("the review is negative"),
            ["The review is negative".to_string(), "The review is not negative".to_string()]
        );
        assert_eq!(
            negation("A and B are the same restaurant"),
            "A and B are not the same restaurant"
        );
        assert_eq!(negation("The author has visited Paris"), "The author has not visited Paris");
    }

    #[test]
    fn a_negated_condition_loses_its_not() {
        assert_eq!(negation("The email is not spam"), "The email is spam");
    }

    #[test]
    fn a_condition_without_a_subject_gets_one() {
        assert_eq!(
            statements("is about sport"),
            ["The text is about sport".to_string(), "The text is not about sport".to_string()]
        );
    }

    #[test]
    fn a_third_person_verb_takes_does_not() {
        assert_eq!(negation("It mentions rain"), "It does not mention rain");
        assert_eq!(negation("The news mentions rain"), "The news does not mention rain");
        assert_eq!(negation("The email asks for money"), "The email does not ask for money");
        assert_eq!(negation("The story discusses taxes"), "The story does not discuss taxes");
        assert_eq!(negation("The letter carries bad news"), "The letter does not carry bad news");
        assert_eq!(negation("mentions rain"), "Does not mention rain");
    }

    #[test]
    fn anything_else_is_not_true() {
        assert_eq!(negation("Positive sentiment"), "It is not true that positive sentiment");
        assert_eq!(negation("spam"), "It is not true that spam");
    }
}

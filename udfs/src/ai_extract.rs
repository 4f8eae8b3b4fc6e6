//! `ai_extract(text, schema [, model])`: typed fields pulled out of text, as a STRUCT.
//!
//! The schema is a literal JSON object of field names and types, e.g.
//! `'{"product": "text", "price": "float", "in_stock": "bool"}'`; the STRUCT's fields follow it
//! in order. The backend generates the JSON under a token mask so every value has its type;
//! a field the model cannot fill is NULL.

use std::fmt;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StructBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};
use murakkab_catalog::Task;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::backend::{FieldType, FieldValue};
use crate::docs::ai_doc;
use crate::prompts;

const NAME: &str = "ai_extract";
const PARAMS: &[Param] = &[
    required("text", Kind::Text),
    required("schema", Kind::ConstText),
    optional("model", Kind::ConstText),
];
/// Most fields one call may ask for.
const MAX_FIELDS: usize = 32;

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "Pulls typed fields out of text into a STRUCT. The schema is a constant JSON object of \
         field names and types (text, int, float, bool); the model's JSON is generated under a \
         constraint, so every value has its declared type. A field the text does not give is \
         NULL. NULL text: NULL.",
        "ai_extract(text, schema [, model => 'auto'])",
        "> SELECT ai_extract('Alice is 31 and lives in Oslo.', '{\"name\": \"text\", \"age\": \"int\"}') AS p;\n\
         +----------------------------+\n\
         | p                          |\n\
         +----------------------------+\n\
         | {name: Alice, age: 31}     |\n\
         +----------------------------+",
        &[
            ("text", "The text to read."),
            ("schema", "A constant JSON object: {\"field\": \"text|int|float|bool\", ...}."),
            ("model", "'auto' (default) or a model id that can generate (see \\models)."),
        ],
    )
});

/// The `ai_extract` function.
#[derive(Debug)]
pub struct AiExtract {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiExtract {
    /// The function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

args::impl_eq_by_context!(AiExtract);

/// Reads a JSON object's entries in their written order (serde_json's map would sort them).
struct OrderedEntries;

impl<'de> Visitor<'de> for OrderedEntries {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of field names and type names")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = map.next_entry::<String, String>()? {
            out.push(entry);
        }
        Ok(out)
    }
}

fn field_type(name: &str) -> Option<FieldType> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "text" | "string" | "str" | "varchar" => FieldType::Text,
        "int" | "integer" | "bigint" | "long" => FieldType::Integer,
        "float" | "double" | "number" | "real" | "decimal" => FieldType::Float,
        "bool" | "boolean" => FieldType::Boolean,
        _ => return None,
    })
}

/// The fields a schema literal asks for, checked.
pub fn parse_schema(schema: &str) -> Result<Vec<(String, FieldType)>> {
    let entries = serde_json::Deserializer::from_str(schema)
        .deserialize_map(OrderedEntries)
        .or_else(|e| {
            plan_err!(
                "{NAME}: schema must be a JSON object like '{{\"name\": \"text\", \"age\": \"int\"}}': {e}"
            )
        })?;
    if entries.is_empty() || entries.len() > MAX_FIELDS {
        return plan_err!(
            "{NAME}: schema must name 1 to {MAX_FIELDS} fields, got {}",
            entries.len()
        );
    }
    let mut fields: Vec<(String, FieldType)> = Vec::with_capacity(entries.len());
    for (name, type_name) in entries {
        if name.trim().is_empty() {
            return plan_err!("{NAME}: schema field names must not be empty");
        }
        if fields.iter().any(|(n, _)| *n == name) {
            return plan_err!("{NAME}: schema names field '{name}' twice");
        }
        let Some(t) = field_type(&type_name) else {
            return plan_err!(
                "{NAME}: field '{name}' has unknown type '{type_name}'; use text, int, float or bool"
            );
        };
        fields.push((name, t));
    }
    Ok(fields)
}

fn arrow_fields(fields: &[(String, FieldType)]) -> Fields {
    fields
        .iter()
        .map(|(name, t)| {
            let dt = match t {
                FieldType::Text => DataType::Utf8,
                FieldType::Integer => DataType::Int64,
                FieldType::Float => DataType::Float64,
                FieldType::Boolean => DataType::Boolean,
            };
            Field::new(name, dt, true)
        })
        .collect()
}

fn append(builder: &mut StructBuilder, index: usize, t: FieldType, v: Option<&FieldValue>) {
    match t {
        FieldType::Text => {
            if let Some(b) = builder.field_builder::<StringBuilder>(index) {
                b.append_option(match v {
                    Some(FieldValue::Text(s)) => Some(s.as_str()),
                    _ => None,
                });
            }
        }
        FieldType::Integer => {
            if let Some(b) = builder.field_builder::<Int64Builder>(index) {
                b.append_option(match v {
                    Some(FieldValue::Integer(i)) => Some(*i),
                    _ => None,
                });
            }
        }
        FieldType::Float => {
            if let Some(b) = builder.field_builder::<Float64Builder>(index) {
                b.append_option(match v {
                    Some(FieldValue::Float(f)) => Some(*f),
                    Some(FieldValue::Integer(i)) => Some(*i as f64),
                    _ => None,
                });
            }
        }
        FieldType::Boolean => {
            if let Some(b) = builder.field_builder::<BooleanBuilder>(index) {
                b.append_option(match v {
                    Some(FieldValue::Boolean(x)) => Some(*x),
                    _ => None,
                });
            }
        }
    }
}

impl ScalarUDFImpl for AiExtract {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        args::coerce(NAME, PARAMS, arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("{NAME}: the return type depends on the schema; use return_field_from_args")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args::check_constants(NAME, PARAMS, args.scalar_arguments)?;
        let Some(schema) = args::literal_text(args.scalar_arguments, 1) else {
            return plan_err!("{NAME}: schema must be a constant JSON string, not NULL");
        };
        let fields = parse_schema(&schema)?;
        let model = args::literal_text(args.scalar_arguments, 2);
        args::check_model(NAME, &self.context, model.as_deref(), Task::Generate)?;
        Ok(Arc::new(Field::new(NAME, DataType::Struct(arrow_fields(&fields)), true)))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.number_rows;
        let texts = args::texts(&call.args, 0, rows)?;
        let Some(schema) = args::const_text(&call.args, 1) else {
            return exec_err!("{NAME}: schema must be a constant JSON string");
        };
        let fields = parse_schema(&schema)?;
        let model = args::const_text(&call.args, 2);
        let keys = (0..rows).map(|i| (!texts.is_null(i)).then(|| texts.value(i))).collect();
        let values = args::run_distinct(NAME, &self.context, &call.config_options, keys, |reps| {
            let card = args::model_for(
                &self.context,
                &call.config_options,
                model.as_deref(),
                Task::Generate,
            )?;
            let batch: Vec<&str> = reps.iter().map(|&r| texts.value(r)).collect();
            self.context.backend.extract(&card.id, &prompts::extract(&batch, &fields), &fields)
        })?;
        let struct_fields = arrow_fields(&fields);
        let builders: Vec<Box<dyn ArrayBuilder>> = fields
            .iter()
            .map(|(_, t)| -> Box<dyn ArrayBuilder> {
                match t {
                    FieldType::Text => Box::new(StringBuilder::new()),
                    FieldType::Integer => Box::new(Int64Builder::new()),
                    FieldType::Float => Box::new(Float64Builder::new()),
                    FieldType::Boolean => Box::new(BooleanBuilder::new()),
                }
            })
            .collect();
        let mut out = StructBuilder::new(struct_fields, builders);
        for row in values {
            for (i, (_, t)) in fields.iter().enumerate() {
                let v = row.as_ref().and_then(|r| r.get(i)).and_then(Option::as_ref);
                append(&mut out, i, *t, v);
            }
            out.append(row.is_some());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_keeps_field_order_and_checks_types() {
        let f =
            parse_schema(r#"{"zeta": "text", "alpha": "int", "m": "Float", "b": "bool"}"#).unwrap();
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "m", "b"]);
        assert_eq!(f[1].1, FieldType::Integer);
        let err = parse_schema(r#"{"a": "date"}"#).unwrap_err().to_string();
        assert!(err.contains("field 'a' has unknown type 'date'; use text, int, float or bool"));
        let err = parse_schema("[1]").unwrap_err().to_string();
        assert!(err.contains("ai_extract: schema must be a JSON object"), "{err}");
        let err = parse_schema(r#"{"a": "int", "a": "text"}"#).unwrap_err().to_string();
        assert!(err.contains("names field 'a' twice"), "{err}");
    }
}

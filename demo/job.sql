-- A batch job: every sentence with its word count, written as Parquet parts plus a manifest.
CREATE EXTERNAL TABLE sentences STORED AS JSON LOCATION 'data/uci-sentiment.jsonl';

SELECT id, source, label, text,
       cardinality(string_to_array(text, ' ')) AS words
FROM sentences
ORDER BY id;

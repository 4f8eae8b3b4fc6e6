-- A batch job: every sentence with a model's sentiment label and its word count, written as
-- Parquet parts plus a manifest. Read it back with SELECT * FROM 'data/demo-output.parquet/'.
CREATE EXTERNAL TABLE sentences STORED AS JSON LOCATION 'data/uci-sentiment.jsonl';

SELECT id, source, label, text,
       ai_classify(text, ['positive', 'negative']) AS predicted,
       cardinality(string_to_array(text, ' ')) AS words
FROM sentences
WHERE id % 10 = 1
ORDER BY id;

-- The UCI sentiment sentences (Amazon, IMDB, Yelp reviews), fetched by scripts/fetch-data.sh.
CREATE EXTERNAL TABLE sentences STORED AS JSON LOCATION 'data/uci-sentiment.jsonl';

-- How the labeled data is spread across sources.
SELECT source,
       count(*) AS sentences,
       sum(label) AS positive,
       round(avg(length(text)), 1) AS avg_chars
FROM sentences
GROUP BY source
ORDER BY source;

-- A sample of 150 sentences (every 20th) for the model queries below.
CREATE TABLE sample AS SELECT * FROM sentences WHERE id % 20 = 7;

-- Zero-shot sentiment with smollm2-135m-instruct: labels are scored, never parsed from text.
-- Accuracy against the human labels, per source.
SELECT source,
       count(*) AS rows,
       round(avg(CASE WHEN ai_classify(text, ['positive', 'negative'])
                      = CASE WHEN label = 1 THEN 'positive' ELSE 'negative' END
                 THEN 1.0 ELSE 0.0 END), 3) AS accuracy
FROM sample
GROUP BY source
ORDER BY source;

-- Semantic search with all-minilm-l6-v2 over all 3,000 sentences (embeddings are computed once
-- and kept under MURAKKAB_HOME; run it again and it answers at once).
SELECT id, source, text, round(score, 3) AS score
FROM ai_search('sentences', 'text', 'the battery does not last', 5);

-- A top-k over an AI filter: the sentences are sorted by length first and the model reads
-- them longest first until 3 pass (EXPLAIN ANALYZE shows the rows it read), not all 3,000.
-- The human label (0 = negative) shows how well the model judged them.
SELECT id, source, label, length(text) AS chars, substr(text, 1, 60) AS opening
FROM sentences
WHERE ai_classify(text, ['positive', 'negative']) = 'negative'
ORDER BY chars DESC, id
LIMIT 3;

-- Typed fields out of free text, generated under a JSON constraint.
SELECT ai_extract('The Acme X2 phone costs $199.99 and is in stock.',
                  '{"product": "text", "price": "float", "in_stock": "bool"}') AS extracted;

-- One summary per source, over every sentence of the sample (map-reduce over the context).
SELECT source, ai_summarize_agg(text) AS summary
FROM sample
WHERE label = 0
GROUP BY source
ORDER BY source;

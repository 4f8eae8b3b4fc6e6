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

-- The shortest positive and negative reviews.
SELECT label, text
FROM (SELECT label, text, row_number() OVER (PARTITION BY label ORDER BY length(text), id) AS r
      FROM sentences)
WHERE r <= 3
ORDER BY label, r;

